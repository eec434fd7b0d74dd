/* Stop tokens, stop strings across token boundaries, and the token limit (sampler.h).
 * The held buffer is sized at creation for the longest stop string plus one token's
 * text, so feeding allocates nothing. */
#include "common/errmsg.h"
#include "engine/text/sampler.h"

#include <stdlib.h>
#include <string.h>

struct stopper {
    int32_t *stop_tokens; /* [n_stop_tokens] */
    size_t n_stop_tokens;
    char **stop_strings;  /* [n_stop_strings], copies */
    size_t *stop_lens;    /* [n_stop_strings] */
    size_t n_stop_strings;
    uint32_t max_tokens;
    uint32_t n_tokens;
    char *held;           /* [held_cap] text not released yet */
    size_t n_held, held_cap;
    int matched;          /* the stop string that ended the text, -1 before */
};

void stopper_destroy(struct stopper *s)
{
    if (!s) return;
    for (size_t i = 0; i < s->n_stop_strings; i++) free(s->stop_strings[i]);
    free(s->stop_strings);
    free(s->stop_lens);
    free(s->stop_tokens);
    free(s->held);
    free(s);
}

int stopper_create(struct stopper **out, const struct stopper_params *p, char *err, size_t err_len)
{
    *out = NULL;
    struct stopper *s = calloc(1, sizeof *s);
    if (!s) return errf(err, err_len, "stopper: out of memory");
    s->max_tokens = p->max_tokens;
    s->stop_tokens = malloc((p->n_stop_tokens + 1) * sizeof *s->stop_tokens);
    s->stop_strings = calloc(p->n_stop_strings + 1, sizeof *s->stop_strings);
    s->stop_lens = calloc(p->n_stop_strings + 1, sizeof *s->stop_lens);
    if (!s->stop_tokens || !s->stop_strings || !s->stop_lens) goto oom;
    if (p->n_stop_tokens) memcpy(s->stop_tokens, p->stop_tokens, p->n_stop_tokens * sizeof *s->stop_tokens);
    s->n_stop_tokens = p->n_stop_tokens;
    size_t longest = 0;
    for (size_t i = 0; i < p->n_stop_strings; i++) {
        const char *str = p->stop_strings[i];
        if (!str || !*str) {
            stopper_destroy(s);
            return errf(err, err_len, "stopper: stop string %zu is empty", i);
        }
        s->stop_strings[i] = strdup(str);
        if (!s->stop_strings[i]) goto oom;
        s->n_stop_strings = i + 1;
        s->stop_lens[i] = strlen(str);
        if (s->stop_lens[i] > longest) longest = s->stop_lens[i];
    }
    s->held_cap = longest + p->max_text_per_token + 1;
    s->held = malloc(s->held_cap);
    if (!s->held) goto oom;
    s->matched = -1;
    *out = s;
    return 0;
oom:
    stopper_destroy(s);
    return errf(err, err_len, "stopper: out of memory");
}

void stopper_reset(struct stopper *s)
{
    s->n_tokens = 0;
    s->n_held = 0;
    s->matched = -1;
}

int stopper_matched(const struct stopper *s) { return s->matched; }

size_t stopper_buf_size(const struct stopper *s) { return s->held_cap; }
uint32_t stopper_n_tokens(const struct stopper *s) { return s->n_tokens; }

/* Moves up to n held bytes (and at most cap) into out. */
static size_t release(struct stopper *s, size_t n, char *out, size_t cap)
{
    if (n > cap) n = cap;
    memcpy(out, s->held, n);
    memmove(s->held, s->held + n, s->n_held - n);
    s->n_held -= n;
    return n;
}

/* Longest suffix of the held text that is a proper prefix of some stop string. */
static size_t partial_stop_suffix(const struct stopper *s)
{
    size_t best = 0;
    for (size_t i = 0; i < s->n_stop_strings; i++) {
        size_t max = s->stop_lens[i] - 1 < s->n_held ? s->stop_lens[i] - 1 : s->n_held;
        for (size_t k = max; k > best; k--)
            if (!memcmp(s->held + s->n_held - k, s->stop_strings[i], k)) {
                best = k;
                break;
            }
    }
    return best;
}

enum stop_reason stopper_feed(struct stopper *s, int32_t tok, const char *text, size_t len, char *out, size_t cap,
                              size_t *out_len)
{
    *out_len = 0;
    s->n_tokens++;
    for (size_t i = 0; i < s->n_stop_tokens; i++)
        if (s->stop_tokens[i] == tok) {
            *out_len = release(s, s->n_held, out, cap);
            return STOP_TOKEN;
        }
    if (s->n_held + len > s->held_cap) {
        /* more text than promised at creation: grow rather than lose it (not the
         * per-token path of a caller that sized max_text_per_token right) */
        char *h = realloc(s->held, s->n_held + len);
        if (!h) return STOP_LENGTH;
        s->held = h;
        s->held_cap = s->n_held + len;
    }
    memcpy(s->held + s->n_held, text, len);
    s->n_held += len;
    size_t first = SIZE_MAX;
    for (size_t i = 0; i < s->n_stop_strings; i++) {
        char *hit = memmem(s->held, s->n_held, s->stop_strings[i], s->stop_lens[i]);
        if (hit && (size_t)(hit - s->held) < first) {
            first = (size_t)(hit - s->held);
            s->matched = (int)i;
        }
    }
    if (first != SIZE_MAX) {
        s->n_held = first; /* the stop string and what follows are dropped */
        *out_len = release(s, first, out, cap);
        return STOP_STRING;
    }
    if (s->max_tokens && s->n_tokens >= s->max_tokens) {
        *out_len = release(s, s->n_held, out, cap);
        return STOP_LENGTH;
    }
    *out_len = release(s, s->n_held - partial_stop_suffix(s), out, cap);
    return STOP_NONE;
}

size_t stopper_flush(struct stopper *s, char *out, size_t cap) { return release(s, s->n_held, out, cap); }
