/* The daemon's text side (see textgen.h): prompts to token ids through engine/tokenizer.h,
 * the DeepSeek-V4 chat encoding, the sampler and streaming detokenization.
 *
 * The chat encoding and the sampler here are the daemon's own small versions, written while
 * engine/chat.h and engine/sampler.h are in progress on another branch; when they land,
 * textgen_prompt and textgen_seq_sample call them instead and nothing above this file
 * changes. Chat format (v4flash-architecture.md §4):
 *   BOS system… <｜User｜>user <｜Assistant｜></think>answer EOS … <｜Assistant｜></think>
 * (thinking on: the prompt ends with <｜Assistant｜><think>). Markers are the vocabulary's
 * special tokens where it has them, else their literal text; message content is always
 * encoded literally, so no client text can forge a turn marker. */
#include "firmware/textgen.h"

#include "engine/errmsg.h"
#include "engine/tokenizer.h"
#include "firmware/request_parse.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct textgen {
    struct tokenizer *tok;
    int32_t bos, eos;
    int32_t user_tok;   /* <｜User｜> as one token, or -1 */
    size_t piece_cap;
};

struct cand {
    float p;
    int32_t id;
};

struct textgen_seq {
    const struct textgen *tg;
    struct tok_stream stream;
    struct cand *cand;  /* [n_vocab] candidates of one sampling step */
    uint32_t n_vocab;
    float temperature, top_p, min_p;
    uint32_t top_k;
    uint64_t rng[2];    /* xorshift128+ state */
};

int textgen_open(struct textgen **out, const char *model_path, char *err, size_t err_len)
{
    *out = NULL;
    struct textgen *tg = calloc(1, sizeof *tg);
    if (!tg) return errf(err, err_len, "textgen: out of memory");
    if (tok_create_from_file(&tg->tok, model_path, err, err_len)) {
        free(tg);
        return -1;
    }
    tg->bos = tok_bos(tg->tok);
    tg->eos = tok_eos(tg->tok);
    tg->user_tok = tok_find_special(tg->tok, "<\xef\xbd\x9cUser\xef\xbd\x9c>");
    tg->piece_cap = tok_stream_buf_size(tg->tok) + 8;
    *out = tg;
    return 0;
}

void textgen_close(struct textgen *tg)
{
    if (!tg) return;
    tok_destroy(tg->tok);
    free(tg);
}

uint32_t textgen_n_vocab(const struct textgen *tg) { return tok_n_vocab(tg->tok); }
size_t textgen_piece_cap(const struct textgen *tg) { return tg->piece_cap; }

bool textgen_is_end(const struct textgen *tg, int32_t tok)
{
    return tok == tg->eos || (tg->user_tok >= 0 && tok == tg->user_tok);
}

static int push(struct tok_vec *v, int32_t id, char *err, size_t err_len)
{
    return tok_vec_push(v, id) ? errf(err, err_len, "prompt: out of memory") : 0;
}

/* A structural marker: its special token if the vocabulary has one, else its text. */
static int marker(const struct textgen *tg, const char *text, struct tok_vec *v, char *err, size_t err_len)
{
    int32_t id = tok_find_special(tg->tok, text);
    if (id >= 0) return push(v, id, err, err_len);
    return tok_encode(tg->tok, text, strlen(text), 0, v, err, err_len);
}

static int literal(const struct textgen *tg, const char *text, struct tok_vec *v, char *err, size_t err_len)
{
    return tok_encode(tg->tok, text, strlen(text), 0, v, err, err_len);
}

#define USER_MARK "<\xef\xbd\x9cUser\xef\xbd\x9c>"
#define ASSISTANT_MARK "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>"

static int render_chat(const struct textgen *tg, const struct gen_request *req, struct tok_vec *v, char *err, size_t err_len)
{
    if (tg->bos >= 0 && push(v, tg->bos, err, err_len)) return -1;
    for (uint32_t i = 0; i < req->n_messages; i++) {
        const struct req_message *m = &req->messages[i];
        int rc = 0;
        switch (m->role) {
        case REQ_ROLE_SYSTEM: rc = literal(tg, m->content, v, err, err_len); break;
        case REQ_ROLE_USER:
            rc = marker(tg, USER_MARK, v, err, err_len) || literal(tg, m->content, v, err, err_len);
            break;
        case REQ_ROLE_ASSISTANT:
            /* Past assistant turns keep no reasoning: an empty closed think block. */
            rc = marker(tg, ASSISTANT_MARK, v, err, err_len) || marker(tg, "</think>", v, err, err_len) ||
                 literal(tg, m->content, v, err, err_len) || (tg->eos >= 0 && push(v, tg->eos, err, err_len));
            break;
        }
        if (rc) return -1;
    }
    if (marker(tg, ASSISTANT_MARK, v, err, err_len)) return -1;
    return marker(tg, req->thinking ? "<think>" : "</think>", v, err, err_len);
}

static int vec_out(struct tok_vec *v, int32_t **ids, uint32_t *n, char *err, size_t err_len)
{
    if (v->n > UINT32_MAX) {
        tok_vec_free(v);
        return errf(err, err_len, "prompt: too many tokens");
    }
    *n = (uint32_t)v->n;
    *ids = v->ids ? v->ids : malloc(sizeof **ids);
    if (!*ids) return errf(err, err_len, "prompt: out of memory");
    return 0;
}

int textgen_prompt(const struct textgen *tg, const struct gen_request *req, int32_t **ids, uint32_t *n, char *err,
                   size_t err_len)
{
    struct tok_vec v = { 0 };
    int rc;
    if (req->kind == REQ_CHAT) rc = render_chat(tg, req, &v, err, err_len);
    else rc = (tg->bos >= 0 && push(&v, tg->bos, err, err_len)) || literal(tg, req->prompt, &v, err, err_len);
    if (rc) {
        tok_vec_free(&v);
        return -1;
    }
    return vec_out(&v, ids, n, err, err_len);
}

int textgen_tokenize(const struct textgen *tg, const char *text, size_t len, bool add_special, int32_t **ids,
                     uint32_t *n, char *err, size_t err_len)
{
    struct tok_vec v = { 0 };
    if ((add_special && tg->bos >= 0 && push(&v, tg->bos, err, err_len)) ||
        tok_encode(tg->tok, text, len, 0, &v, err, err_len)) {
        tok_vec_free(&v);
        return -1;
    }
    return vec_out(&v, ids, n, err, err_len);
}

int textgen_detokenize(const struct textgen *tg, const int32_t *ids, uint32_t n, char **text, size_t *len, char *err,
                       size_t err_len)
{
    /* The streaming decoder turns invalid bytes into U+FFFD, so the result is JSON-safe. */
    struct tok_stream st;
    tok_stream_init(&st, tg->tok, 0);
    size_t cap = (size_t)n * tg->piece_cap + tg->piece_cap + 1, off = 0;
    char *out = malloc(cap);
    if (!out) return errf(err, err_len, "detokenize: out of memory");
    for (uint32_t i = 0; i < n; i++) {
        int k = tok_stream_feed(&st, ids[i], out + off, cap - off);
        if (k < 0) {
            free(out);
            return errf(err, err_len, "tokens[%u]: id %d out of range", i, ids[i]);
        }
        off += (size_t)k;
    }
    int k = tok_stream_flush(&st, out + off, cap - off);
    if (k > 0) off += (size_t)k;
    out[off] = 0;
    *text = out;
    *len = off;
    return 0;
}

/* ---- sequences: sampler + streaming detokenizer ---- */

int textgen_seq_create(const struct textgen *tg, struct textgen_seq **out, char *err, size_t err_len)
{
    *out = NULL;
    struct textgen_seq *s = calloc(1, sizeof *s);
    if (!s) return errf(err, err_len, "sequence: out of memory");
    s->tg = tg;
    s->n_vocab = tok_n_vocab(tg->tok);
    s->cand = malloc((size_t)s->n_vocab * sizeof *s->cand);
    if (!s->cand) {
        free(s);
        return errf(err, err_len, "sequence: out of memory for %u candidates", tok_n_vocab(tg->tok));
    }
    *out = s;
    return 0;
}

void textgen_seq_destroy(struct textgen_seq *s)
{
    if (!s) return;
    free(s->cand);
    free(s);
}

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double next_uniform(struct textgen_seq *s)
{
    uint64_t a = s->rng[0], b = s->rng[1];
    s->rng[0] = b;
    a ^= a << 23;
    s->rng[1] = a ^ b ^ (a >> 17) ^ (b >> 26);
    return (double)((s->rng[1] + b) >> 11) * (1.0 / 9007199254740992.0);
}

int textgen_seq_start(struct textgen_seq *s, const struct gen_request *req, char *err, size_t err_len)
{
    (void)err;
    (void)err_len;
    tok_stream_init(&s->stream, s->tg->tok, 0);
    s->temperature = req->temperature;
    s->top_p = req->top_p;
    s->top_k = req->top_k;
    s->min_p = req->min_p;
    uint64_t seed = req->seed;
    if (!req->has_seed) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        seed = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ (uint64_t)(uintptr_t)s;
    }
    s->rng[0] = splitmix64(&seed);
    s->rng[1] = splitmix64(&seed);
    return 0;
}

static int cand_desc(const void *a, const void *b)
{
    const struct cand *x = a, *y = b;
    if (x->p != y->p) return x->p > y->p ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

int32_t textgen_seq_sample(struct textgen_seq *s, const float *logits)
{
    uint32_t n = s->n_vocab;
    int32_t best = 0;
    for (uint32_t i = 1; i < n; i++)
        if (logits[i] > logits[best]) best = (int32_t)i; /* ties: the lowest id */
    if (s->temperature <= 0.0f) return best;
    /* Softmax at temperature, shifted by the maximum for range. */
    double sum = 0;
    for (uint32_t i = 0; i < n; i++) {
        float p = expf((logits[i] - logits[best]) / s->temperature);
        s->cand[i] = (struct cand){ p, (int32_t)i };
        sum += p;
    }
    uint32_t m = n;
    if (s->top_k || s->top_p < 1.0f || s->min_p > 0.0f) {
        qsort(s->cand, n, sizeof *s->cand, cand_desc);
        if (s->top_k && s->top_k < m) m = s->top_k;
        float floor = s->min_p * s->cand[0].p; /* min_p is relative to the most likely token */
        double kept = 0;
        uint32_t k = 0;
        for (; k < m; k++) {
            if (k > 0 && s->cand[k].p < floor) break;
            kept += s->cand[k].p;
            if (kept >= s->top_p * sum) {
                k++;
                break;
            }
        }
        m = k ? k : 1;
        sum = 0;
        for (uint32_t i = 0; i < m; i++) sum += s->cand[i].p;
    }
    double r = next_uniform(s) * sum, acc = 0;
    for (uint32_t i = 0; i < m; i++) {
        acc += s->cand[i].p;
        if (r < acc) return s->cand[i].id;
    }
    return s->cand[m - 1].id;
}

int textgen_seq_piece(struct textgen_seq *s, int32_t tok, char *out, size_t cap)
{
    return tok_stream_feed(&s->stream, tok, out, cap);
}

int textgen_seq_flush(struct textgen_seq *s, char *out, size_t cap)
{
    return tok_stream_flush(&s->stream, out, cap);
}
