/* The daemon's text side (see textgen.h): a thin layer that maps a parsed request onto
 * engine/chat.h, engine/sampler.h and the tokenizer's streaming decoder. Control tokens
 * are decoded as their text (TOK_DECODE_SPECIAL, as `flashbox run` shows them), so a
 * thinking answer keeps its </think> boundary; EOS stops the answer and is never shown. */
#include "firmware/textgen.h"

#include "engine/chat.h"
#include "engine/engine.h"
#include "engine/errmsg.h"
#include "engine/json_grammar.h"
#include "engine/sampler.h"
#include "engine/tokenizer.h"
#include "firmware/request_parse.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

struct textgen {
    const struct tokenizer *tok;
    uint32_t n_vocab;
    struct jg_vocab *vocab;    /* the token trie structured output masks with */
};

struct textgen_seq {
    const struct textgen *tg;
    struct sampler *sampler;   /* per request: its parameters and seed */
    struct stopper *stopper;   /* per request: its stop strings and max_tokens */
    struct tok_stream stream;
    char *piece;               /* [piece_cap] one token's bytes */
    size_t piece_cap;
    char *released;            /* [released_cap] text the stopper lets out */
    size_t released_cap;
    bool thinking;             /* this request's prompt opened <think> */
    bool reasoning_known;      /* </think> seen: reasoning_end is set */
    size_t reasoning_end;      /* bytes of text before </think> */
    size_t fed;                /* bytes given to the stopper so far (all released in order) */
    int32_t think_end_tok;     /* </think>, or -1 */
    /* structured output (response_format): */
    const struct jg_schema *schema; /* the request's grammar, or NULL */
    struct jg_matcher *matcher;
    uint32_t *allow;           /* [jg_mask_words] the tokens allowed at this step */
    bool grammar_on;           /* the answer has begun (after </think> when thinking) */
    int32_t eos;
    uint32_t max_tokens;
};

int textgen_open(struct textgen **out, const struct engine *e, char *err, size_t err_len)
{
    *out = NULL;
    struct textgen *tg = calloc(1, sizeof *tg);
    if (!tg) return errf(err, err_len, "textgen: out of memory");
    tg->tok = engine_tokenizer(e);
    if (!tg->tok) {
        free(tg);
        return errf(err, err_len, "the model file has no tokenizer");
    }
    tg->n_vocab = tok_n_vocab(tg->tok);
    if (jg_vocab_create(&tg->vocab, tg->tok, err, err_len)) {
        free(tg);
        return -1;
    }
    *out = tg;
    return 0;
}

void textgen_close(struct textgen *tg)
{
    if (!tg) return;
    jg_vocab_destroy(tg->vocab);
    free(tg);
}
uint32_t textgen_n_vocab(const struct textgen *tg) { return tg->n_vocab; }

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
    if (req->kind == REQ_CHAT) {
        struct chat_message *msgs = calloc(req->n_messages, sizeof *msgs);
        if (!msgs) return errf(err, err_len, "messages: out of memory");
        for (uint32_t i = 0; i < req->n_messages; i++) {
            msgs[i].content = req->messages[i].content;
            msgs[i].role = req->messages[i].role == REQ_ROLE_SYSTEM ? CHAT_ROLE_SYSTEM
                         : req->messages[i].role == REQ_ROLE_USER   ? CHAT_ROLE_USER
                                                                    : CHAT_ROLE_ASSISTANT;
        }
        struct chat_options co = { .thinking = req->thinking, .add_generation_prompt = true };
        rc = chat_render(tg->tok, msgs, req->n_messages, &co, &v, err, err_len);
        free(msgs);
    } else {
        int32_t bos = tok_bos(tg->tok);
        rc = bos >= 0 && tok_vec_push(&v, bos) ? errf(err, err_len, "prompt: out of memory") : 0;
        if (!rc) rc = tok_encode(tg->tok, req->prompt, strlen(req->prompt), 0, &v, err, err_len);
    }
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
    int32_t bos = tok_bos(tg->tok);
    if ((add_special && bos >= 0 && tok_vec_push(&v, bos)) || tok_encode(tg->tok, text, len, 0, &v, err, err_len)) {
        tok_vec_free(&v);
        return errf(err, err_len, "content: cannot tokenize");
    }
    return vec_out(&v, ids, n, err, err_len);
}

int textgen_detokenize(const struct textgen *tg, const int32_t *ids, uint32_t n, char **text, size_t *len, char *err,
                       size_t err_len)
{
    /* The streaming decoder turns invalid bytes into U+FFFD, so the result is JSON-safe. */
    struct tok_stream st;
    tok_stream_init(&st, tg->tok, TOK_DECODE_SPECIAL);
    size_t piece = tok_stream_buf_size(tg->tok);
    size_t cap = (size_t)n * piece + piece + 1, off = 0;
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

int textgen_seq_create(const struct textgen *tg, struct textgen_seq **out, char *err, size_t err_len)
{
    *out = NULL;
    struct textgen_seq *s = calloc(1, sizeof *s);
    if (!s) return errf(err, err_len, "sequence: out of memory");
    s->tg = tg;
    s->piece_cap = tok_stream_buf_size(tg->tok);
    s->piece = malloc(s->piece_cap);
    s->allow = malloc(jg_mask_words(tg->vocab) * sizeof *s->allow);
    if (!s->piece || !s->allow || jg_matcher_create(&s->matcher, tg->vocab, err, err_len)) {
        textgen_seq_destroy(s);
        return errf(err, err_len, "sequence: out of memory");
    }
    *out = s;
    return 0;
}

void textgen_seq_destroy(struct textgen_seq *s)
{
    if (!s) return;
    sampler_destroy(s->sampler);
    stopper_destroy(s->stopper);
    free(s->piece);
    free(s->released);
    free(s->allow);
    jg_matcher_destroy(s->matcher);
    free(s);
}

int textgen_seq_start(struct textgen_seq *s, const struct gen_request *req, char *err, size_t err_len)
{
    struct sampler_params sp;
    sampler_params_default(&sp);
    sp.temperature = req->temperature;
    sp.top_p = req->top_p;
    sp.top_k = (int32_t)req->top_k;
    sp.min_p = req->min_p;
    if (req->has_seed) {
        sp.seed = req->seed;
    } else {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        sp.seed = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 30) ^ (uint64_t)(uintptr_t)s;
    }
    int32_t eos = tok_eos(s->tg->tok);
    struct stopper_params stp = {
        .stop_tokens = &eos,
        .n_stop_tokens = eos >= 0 && !req->ignore_eos ? 1 : 0,
        .stop_strings = (const char *const *)req->stop,
        .n_stop_strings = req->n_stop,
        .max_tokens = req->max_tokens,
        .max_text_per_token = s->piece_cap,
    };
    /* New per request (parameters and stop strings differ); not on the per-token path. */
    sampler_destroy(s->sampler);
    stopper_destroy(s->stopper);
    s->sampler = NULL;
    s->stopper = NULL;
    if (sampler_create(&s->sampler, s->tg->n_vocab, &sp, err, err_len) || stopper_create(&s->stopper, &stp, err, err_len))
        return -1;
    size_t need = stopper_buf_size(s->stopper) + s->piece_cap;
    if (need > s->released_cap) {
        char *r = realloc(s->released, need);
        if (!r) return errf(err, err_len, "sequence: out of memory");
        s->released = r;
        s->released_cap = need;
    }
    tok_stream_init(&s->stream, s->tg->tok, TOK_DECODE_SPECIAL);
    s->thinking = req->kind == REQ_CHAT && req->thinking;
    s->think_end_tok = tok_find_special(s->tg->tok, CHAT_THINK_END);
    s->reasoning_known = false;
    s->reasoning_end = 0;
    s->fed = 0;
    s->schema = req->schema;
    s->eos = eos;
    s->max_tokens = req->max_tokens;
    s->grammar_on = !s->thinking || s->think_end_tok < 0;
    if (s->schema) {
        if (eos < 0) return errf(err, err_len, "response_format: the model has no end token to end the JSON with");
        jg_matcher_start(s->matcher, s->schema);
    }
    return 0;
}

bool textgen_seq_reasoning_end(const struct textgen_seq *s, size_t *end)
{
    *end = s->reasoning_end;
    return s->reasoning_known;
}

/* While the model still reasons: anything but the end token, and only </think> once the
 * rest of the budget is what the smallest answer needs. */
static void think_mask(struct textgen_seq *s, uint32_t remaining)
{
    size_t words = jg_mask_words(s->tg->vocab);
    bool close = (uint64_t)remaining <= (uint64_t)jg_schema_min_bytes(s->schema) + 2;
    memset(s->allow, close ? 0 : 0xFF, words * sizeof *s->allow);
    if (close) s->allow[(uint32_t)s->think_end_tok >> 5] |= 1u << ((uint32_t)s->think_end_tok & 31);
    else s->allow[(uint32_t)s->eos >> 5] &= ~(1u << ((uint32_t)s->eos & 31));
}

int32_t textgen_seq_sample(struct textgen_seq *s, const float *logits)
{
    const uint32_t *allow = NULL;
    if (s->schema) {
        uint32_t n = stopper_n_tokens(s->stopper);
        uint32_t remaining = s->max_tokens > n ? s->max_tokens - n : 1;
        if (s->grammar_on) jg_mask(s->matcher, remaining, s->eos, s->allow);
        else think_mask(s, remaining);
        allow = s->allow;
    }
    int32_t tok = sampler_sample_masked(s->sampler, logits, allow);
    if (tok < 0) return tok;
    sampler_accept(s->sampler, tok);
    if (s->schema && !s->grammar_on && tok == s->think_end_tok) s->grammar_on = true;
    else if (s->schema && s->grammar_on && tok != s->eos && jg_matcher_accept(s->matcher, tok)) return -1;
    return tok;
}

enum textgen_stop textgen_seq_feed(struct textgen_seq *s, int32_t tok, const char **text, size_t *len)
{
    int n;
    if (s->thinking && !s->reasoning_known && tok == s->think_end_tok) {
        /* The end of the reasoning: every byte fed so far is reasoning (the stopper may
         * still hold some back, but releases them in order), and the marker is no text. */
        s->reasoning_known = true;
        s->reasoning_end = s->fed;
        n = 0;
    } else {
        n = tok_stream_feed(&s->stream, tok, s->piece, s->piece_cap);
        if (n < 0) n = 0; /* the sampler only returns ids of the vocabulary */
        s->fed += (size_t)n;
    }
    enum stop_reason why = stopper_feed(s->stopper, tok, s->piece, (size_t)n, s->released, s->released_cap, len);
    *text = s->released;
    switch (why) {
    case STOP_TOKEN: return TEXTGEN_END_TOKEN;
    case STOP_STRING: return TEXTGEN_STOP_STRING;
    case STOP_LENGTH: return TEXTGEN_LENGTH;
    default: return TEXTGEN_GO;
    }
}

void textgen_seq_finish(struct textgen_seq *s, const char **text, size_t *len)
{
    /* Held stop-string prefix first (it precedes the tail in the text), then a held
     * incomplete UTF-8 tail as U+FFFD. */
    size_t n = stopper_flush(s->stopper, s->released, s->released_cap);
    int k = tok_stream_flush(&s->stream, s->released + n, s->released_cap - n);
    *text = s->released;
    *len = n + (k > 0 ? (size_t)k : 0);
}
