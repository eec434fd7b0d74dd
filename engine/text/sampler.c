/* Token sampling on logits with buffers allocated once per sampler (see sampler.h). */
#include "engine/text/sampler.h"
#include "common/rng.h"

#include "common/errmsg.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct cand {
    float p;    /* logit, later unnormalized probability */
    int32_t id;
};

struct sampler {
    uint32_t n_vocab;
    struct sampler_params p;
    float *work;          /* [n_vocab] logits after penalties */
    struct cand *cand;    /* [n_vocab] candidates still in the running */
    uint32_t *count;      /* [n_vocab] occurrences among the recent tokens */
    uint8_t *penalized;   /* [n_vocab] scratch: 1 while a token's penalty is applied */
    int32_t *recent;      /* [penalty_last_n] ring of recent tokens */
    struct sampler_bias *bias; /* [p.n_bias] */
    uint32_t n_recent, recent_head;
    uint64_t rng[4];      /* xoshiro256** state */
};

void sampler_params_default(struct sampler_params *p)
{
    memset(p, 0, sizeof *p);
    p->temperature = 1.0f;
    p->top_p = 1.0f;
    p->repeat_penalty = 1.0f;
}

void sampler_reset(struct sampler *s)
{
    for (uint32_t i = 0; i < s->n_recent; i++) s->count[s->recent[i]] = 0;
    s->n_recent = s->recent_head = 0;
    rng_seed(s->rng, s->p.seed);
}

int sampler_create(struct sampler **out, uint32_t n_vocab, const struct sampler_params *p, char *err, size_t err_len)
{
    *out = NULL;
    if (n_vocab == 0 || n_vocab > INT32_MAX) return errf(err, err_len, "sampler: n_vocab %u, expected 1 .. %d", n_vocab, INT32_MAX);
    if (!(p->temperature == p->temperature) || !(p->top_p == p->top_p) || !(p->min_p == p->min_p) ||
        !(p->repeat_penalty > 0) || !isfinite(p->presence_penalty) || !isfinite(p->frequency_penalty))
        return errf(err, err_len, "sampler: temperature %g, top_p %g, min_p %g, repeat_penalty %g (expected > 0), "
                    "presence %g, frequency %g: expected numbers", (double)p->temperature, (double)p->top_p,
                    (double)p->min_p, (double)p->repeat_penalty, (double)p->presence_penalty,
                    (double)p->frequency_penalty);
    for (size_t i = 0; i < p->n_bias; i++)
        if (p->bias[i].tok < 0 || (uint32_t)p->bias[i].tok >= n_vocab || !isfinite(p->bias[i].bias))
            return errf(err, err_len, "sampler: bias %zu: token %d, bias %g; expected a token in [0, %u) and a number",
                        i, p->bias[i].tok, (double)p->bias[i].bias, n_vocab);
    struct sampler *s = calloc(1, sizeof *s);
    if (!s) return errf(err, err_len, "sampler: out of memory");
    s->n_vocab = n_vocab;
    s->p = *p;
    s->work = malloc((size_t)n_vocab * sizeof *s->work);
    s->cand = malloc((size_t)n_vocab * sizeof *s->cand);
    s->count = calloc(n_vocab, sizeof *s->count);
    s->penalized = calloc(n_vocab, 1);
    s->recent = malloc(((size_t)p->penalty_last_n + 1) * sizeof *s->recent);
    s->bias = malloc((p->n_bias + 1) * sizeof *s->bias);
    if (s->bias && p->n_bias) memcpy(s->bias, p->bias, p->n_bias * sizeof *s->bias);
    s->p.bias = s->bias;
    if (!s->work || !s->cand || !s->count || !s->penalized || !s->recent || !s->bias) {
        sampler_destroy(s);
        return errf(err, err_len, "sampler: out of memory for %u tokens", n_vocab);
    }
    sampler_reset(s);
    *out = s;
    return 0;
}

void sampler_destroy(struct sampler *s)
{
    if (!s) return;
    free(s->work);
    free(s->cand);
    free(s->count);
    free(s->penalized);
    free(s->recent);
    free(s->bias);
    free(s);
}

void sampler_accept(struct sampler *s, int32_t tok)
{
    uint32_t n = s->p.penalty_last_n;
    if (n == 0 || tok < 0 || (uint32_t)tok >= s->n_vocab) return;
    if (s->n_recent == n) { /* full: the oldest leaves the window */
        s->count[s->recent[s->recent_head]]--;
        s->recent[s->recent_head] = tok;
        s->recent_head = (s->recent_head + 1) % n;
    } else {
        s->recent[s->n_recent++] = tok;
    }
    s->count[tok]++;
}

static void apply_penalties(struct sampler *s)
{
    const struct sampler_params *p = &s->p;
    if (p->repeat_penalty == 1.0f && p->presence_penalty == 0.0f && p->frequency_penalty == 0.0f) return;
    for (uint32_t i = 0; i < s->n_recent; i++) {
        int32_t t = s->recent[i];
        if (s->penalized[t]) continue;
        s->penalized[t] = 1;
        float l = s->work[t];
        if (l == -INFINITY) continue;
        l = l > 0 ? l / p->repeat_penalty : l * p->repeat_penalty;
        s->work[t] = l - p->presence_penalty - p->frequency_penalty * (float)s->count[t];
    }
    for (uint32_t i = 0; i < s->n_recent; i++) s->penalized[s->recent[i]] = 0;
}

/* Candidate order: more likely first, lower id first among equals (a total order, so
 * every selection below is deterministic). */
static bool cand_before(const struct cand *a, const struct cand *b)
{
    return a->p != b->p ? a->p > b->p : a->id < b->id;
}

static int cand_cmp(const void *x, const void *y)
{
    const struct cand *a = x, *b = y;
    return cand_before(a, b) ? -1 : cand_before(b, a) ? 1 : 0;
}

/* Moves the k best candidates of c[0, n) to the front (any order): a heap of the k best
 * so far, worst on top, that each later candidate either replaces or skips. */
static void sift_down(struct cand *h, size_t k, size_t i)
{
    for (;;) {
        size_t w = i, l = 2 * i + 1, r = l + 1;
        if (l < k && cand_before(&h[w], &h[l])) w = l;
        if (r < k && cand_before(&h[w], &h[r])) w = r;
        if (w == i) return;
        struct cand t = h[i];
        h[i] = h[w];
        h[w] = t;
        i = w;
    }
}

static void select_top(struct cand *c, size_t n, size_t k)
{
    for (size_t i = k / 2; i-- > 0;) sift_down(c, k, i);
    for (size_t i = k; i < n; i++) {
        if (cand_before(&c[i], &c[0])) {
            c[0] = c[i];
            sift_down(c, k, 0);
        }
    }
}

int32_t sampler_sample(struct sampler *s, const float *logits) { return sampler_sample_masked(s, logits, NULL); }

int32_t sampler_sample_masked(struct sampler *s, const float *logits, const uint32_t *allow)
{
    const struct sampler_params *p = &s->p;
    uint32_t n = s->n_vocab;
    for (uint32_t i = 0; i < n; i++) s->work[i] = logits[i] == logits[i] ? logits[i] : -INFINITY;
    if (allow)
        for (uint32_t i = 0; i < n; i++)
            if (!(allow[i >> 5] >> (i & 31) & 1u)) s->work[i] = -INFINITY;
    for (size_t i = 0; i < p->n_bias; i++) s->work[s->bias[i].tok] += s->bias[i].bias;
    apply_penalties(s);

    if (!(p->temperature > 0)) {
        int32_t best = -1;
        for (uint32_t i = 0; i < n; i++)
            if (s->work[i] > -INFINITY && (best < 0 || s->work[i] > s->work[best])) best = (int32_t)i;
        return best;
    }

    size_t nc = 0;
    float max = -INFINITY;
    for (uint32_t i = 0; i < n; i++) {
        float l = s->work[i] / p->temperature;
        if (!(l > -INFINITY)) continue;
        s->cand[nc++] = (struct cand){ l, (int32_t)i };
        if (l > max) max = l;
    }
    if (nc == 0) return -1;
    if (max == INFINITY) { /* +inf logits: only they count, equally */
        size_t k = 0;
        for (size_t i = 0; i < nc; i++)
            if (s->cand[i].p == INFINITY) s->cand[k++] = (struct cand){ 0.0f, s->cand[i].id };
        nc = k;
        max = 0.0f;
    }
    if (p->top_k > 0 && (size_t)p->top_k < nc) {
        select_top(s->cand, nc, (size_t)p->top_k);
        nc = (size_t)p->top_k;
    }
    double total = 0;
    float p_max = 0;
    for (size_t i = 0; i < nc; i++) {
        float e = expf(s->cand[i].p - max);
        s->cand[i].p = e;
        total += e;
        if (e > p_max) p_max = e;
    }
    if (p->top_p < 1.0f) {
        /* Only candidates above eps can be in the nucleus: everything below it weighs
         * less than 1 - top_p in total, so sorting just the rest is exact. */
        double target = p->top_p > 0 ? p->top_p * total : 0;
        float eps = (float)((1.0 - (p->top_p > 0 ? p->top_p : 0)) * total / (double)nc * 0.99);
        size_t k = 0;
        for (size_t i = 0; i < nc; i++)
            if (s->cand[i].p >= eps) s->cand[k++] = s->cand[i];
        qsort(s->cand, k, sizeof *s->cand, cand_cmp);
        double cum = 0;
        size_t keep = k;
        for (size_t i = 0; i < k; i++) {
            cum += s->cand[i].p;
            if (cum >= target) {
                keep = i + 1;
                break;
            }
        }
        nc = keep ? keep : 1;
    }
    if (p->min_p > 0) {
        float p_floor = (p->min_p < 1 ? p->min_p : 1) * p_max; /* the most likely token always passes */
        size_t k = 0;
        for (size_t i = 0; i < nc; i++)
            if (s->cand[i].p >= p_floor) s->cand[k++] = s->cand[i];
        nc = k;
    }
    total = 0;
    for (size_t i = 0; i < nc; i++) total += s->cand[i].p;
    double u = rng_unit(s->rng) * total, cum = 0;
    for (size_t i = 0; i < nc; i++) {
        cum += s->cand[i].p;
        if (u < cum) return s->cand[i].id;
    }
    return s->cand[nc - 1].id; /* rounding left u at the very top */
}
