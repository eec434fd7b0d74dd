/* The daemon's text side (see textgen.h): a thin layer that maps a parsed request onto
 * engine/text/chat.h, engine/text/sampler.h and the tokenizer's streaming decoder. Control tokens
 * are decoded as their text (TOK_DECODE_SPECIAL, as `flashbox run` shows them), so a
 * thinking answer keeps its </think> boundary; EOS stops the answer and is never shown. */
#include "firmware/textgen.h"

#include "engine/engine.h"
#include "common/errmsg.h"
#include "firmware/request_parse.h"
#include "firmware/request_tools.h"

#include <jansson.h>

#include <math.h>
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
    const struct dsml_grammar *calls; /* a forced tool call's grammar, or NULL */
    bool calls_on;             /* the call grammar holds the answer (forced, or a strict tool's
                                * block the model opened: "\n\n<" then the DSML token) */
    int32_t dsml_tok;
    char tail[3];              /* the last bytes of text fed, oldest first */
    struct dsml_matcher *call_matcher; /* NULL when the vocabulary has no DSML token */
    bool grammar_on;           /* the answer has begun (after </think> when thinking) */
    int32_t eos;
    uint32_t max_tokens;
    bool logprobs;             /* this request wants them */
    uint32_t top_logprobs;
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

/* A call's arguments as DSML parameters, as the official encoder writes them: the JSON
 * object's members in order, strings as they are (string="true"), anything else as JSON
 * (string="false"); arguments that are not a JSON object become one string parameter
 * "arguments". Values and names point into *keep (free with json_decref) or vals. */
static int call_params(const struct req_tool_call *tc, struct chat_tool_param **out, size_t *n, json_t **keep,
                       char ***vals, char *err, size_t err_len)
{
    *out = NULL;
    *n = 0;
    *vals = NULL;
    *keep = json_loadb(tc->arguments, strlen(tc->arguments), JSON_ALLOW_NUL | JSON_DECODE_ANY, NULL);
    if (!json_is_object(*keep)) {
        json_decref(*keep);
        *keep = NULL;
        *out = calloc(1, sizeof **out);
        if (!*out) return errf(err, err_len, "tool_calls: out of memory");
        (*out)[0] = (struct chat_tool_param){ "arguments", tc->arguments, true, 0 };
        *n = 1;
        return 0;
    }
    size_t k = json_object_size(*keep), i = 0;
    *out = calloc(k ? k : 1, sizeof **out);
    *vals = calloc(k ? k : 1, sizeof **vals);
    if (!*out || !*vals) return errf(err, err_len, "tool_calls: out of memory");
    const char *key;
    json_t *x;
    json_object_foreach(*keep, key, x) {
        struct chat_tool_param *p = &(*out)[i];
        p->name = key;
        if (json_is_string(x)) {
            p->value = json_string_value(x);
            p->value_len = json_string_length(x);
            p->is_string = true;
        } else {
            (*vals)[i] = req_json_python(x, &p->value_len);
            if (!(*vals)[i]) return errf(err, err_len, "tool_calls: out of memory");
            p->value = (*vals)[i];
        }
        i++;
    }
    *n = k;
    return 0;
}

/* The chat encoder's view of a request: messages, calls and tool schemas pointing into req. */
struct chat_view {
    struct chat_message *msgs;          /* [n_messages] */
    struct chat_tool_call *calls;       /* every message's calls, in order */
    json_t **keep;                      /* [n_calls] parsed arguments */
    char ***vals;                       /* [n_calls] python-written values */
    struct chat_tool_param **params;    /* [n_calls] */
    const char **schemas;               /* [n_tools] */
    size_t n_calls;
};

static void chat_view_free(struct chat_view *v)
{
    for (size_t c = 0; c < v->n_calls; c++) {
        size_t np = v->calls ? v->calls[c].n_params : 0;
        for (size_t p = 0; v->vals && v->vals[c] && p < np; p++) free(v->vals[c][p]);
        if (v->vals) free(v->vals[c]);
        if (v->params) free(v->params[c]);
        if (v->keep) json_decref(v->keep[c]);
    }
    free(v->msgs);
    free(v->calls);
    free(v->keep);
    free(v->vals);
    free(v->params);
    free(v->schemas);
}

static int chat_view_build(const struct gen_request *req, struct chat_view *v, char *err, size_t err_len)
{
    memset(v, 0, sizeof *v);
    size_t total = 0;
    for (uint32_t i = 0; i < req->n_messages; i++) total += req->messages[i].n_tool_calls;
    v->msgs = calloc(req->n_messages ? req->n_messages : 1, sizeof *v->msgs);
    v->calls = calloc(total ? total : 1, sizeof *v->calls);
    v->keep = calloc(total ? total : 1, sizeof *v->keep);
    v->vals = calloc(total ? total : 1, sizeof *v->vals);
    v->params = calloc(total ? total : 1, sizeof *v->params);
    v->schemas = calloc(req->n_tools ? req->n_tools : 1, sizeof *v->schemas);
    if (!v->msgs || !v->calls || !v->keep || !v->vals || !v->params || !v->schemas)
        return errf(err, err_len, "messages: out of memory");
    for (uint32_t i = 0; i < req->n_tools; i++) v->schemas[i] = req->tools[i].schema;
    for (uint32_t i = 0; i < req->n_messages; i++) {
        const struct req_message *rm = &req->messages[i];
        struct chat_message *m = &v->msgs[i];
        m->role = rm->role == REQ_ROLE_SYSTEM ? CHAT_ROLE_SYSTEM
                : rm->role == REQ_ROLE_USER   ? CHAT_ROLE_USER
                : rm->role == REQ_ROLE_TOOL   ? CHAT_ROLE_TOOL
                                              : CHAT_ROLE_ASSISTANT;
        m->content = rm->content;
        m->content_len = rm->content_len;
        m->reasoning = rm->reasoning;
        m->reasoning_len = rm->reasoning_len;
        m->tool_call_id = rm->tool_call_id;
        m->tool_calls = v->calls + v->n_calls;
        m->n_tool_calls = rm->n_tool_calls;
        for (uint32_t c = 0; c < rm->n_tool_calls; c++) {
            size_t k = v->n_calls++;
            struct chat_tool_call *call = &v->calls[k];
            call->id = rm->tool_calls[c].id;
            call->name = rm->tool_calls[c].name;
            if (call_params(&rm->tool_calls[c], &v->params[k], &call->n_params, &v->keep[k], &v->vals[k], err,
                            err_len))
                return -1;
            call->params = v->params[k];
        }
    }
    return 0;
}

static struct chat_options chat_opts(const struct gen_request *req, const struct chat_view *cv, bool tools)
{
    return (struct chat_options){
        .thinking = req->thinking,
        .add_generation_prompt = true,
        .reasoning_max = req->reasoning_max,
        .tool_schemas = tools ? cv->schemas : NULL,
        .n_tools = tools ? req->n_tools : 0,
    };
}

int textgen_chat_text(const struct gen_request *req, char **text, size_t *len, char *err, size_t err_len)
{
    struct chat_view cv;
    int rc = chat_view_build(req, &cv, err, err_len);
    if (!rc) {
        struct chat_options co = chat_opts(req, &cv, req->n_tools > 0 && req->tool_choice != REQ_TOOL_NONE);
        rc = chat_render_text(cv.msgs, req->n_messages, &co, text, len, err, err_len);
    }
    chat_view_free(&cv);
    return rc;
}

int textgen_prompt(const struct textgen *tg, const struct gen_request *req, int32_t **ids, uint32_t *n, char *err,
                   size_t err_len)
{
    struct tok_vec v = { 0 };
    int rc;
    for (uint32_t i = 0; i < req->n_logit_bias; i++)
        if ((uint32_t)req->logit_bias[i].tok >= tg->n_vocab)
            return errf(err, err_len, "logit_bias: token %d is not in the vocabulary [0, %u)", req->logit_bias[i].tok,
                        tg->n_vocab);
    if (req->kind == REQ_CHAT) {
        bool tools = req->n_tools > 0 && req->tool_choice != REQ_TOOL_NONE;
        bool history_calls = false;
        for (uint32_t i = 0; i < req->n_messages; i++) history_calls |= req->messages[i].n_tool_calls > 0;
        if ((tools || history_calls) && tok_find_special(tg->tok, CHAT_DSML) < 0)
            return errf(err, err_len, "tools: the model's vocabulary has no DSML control token (\"%s\"), so it was "
                        "not trained to call tools", CHAT_DSML);
        struct chat_view cv;
        rc = chat_view_build(req, &cv, err, err_len);
        if (!rc) {
            struct chat_options co = chat_opts(req, &cv, tools);
            rc = chat_render(tg->tok, cv.msgs, req->n_messages, &co, &v, err, err_len);
        }
        chat_view_free(&cv);
    } else if (req->suffix && req->suffix[0]) {
        /* fill in the middle: <｜fim▁begin｜>prefix<｜fim▁hole｜>suffix<｜fim▁end｜>, the model
         * writes the hole */
        static const char *const fim[3] = { "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>" };
        int32_t id[3];
        for (int k = 0; k < 3; k++)
            if ((id[k] = tok_find_special(tg->tok, fim[k])) < 0)
                return errf(err, err_len, "suffix: the model's vocabulary has no fill-in-the-middle token \"%s\"", fim[k]);
        int32_t bos = tok_bos(tg->tok);
        rc = (bos >= 0 && tok_vec_push(&v, bos)) || tok_vec_push(&v, id[0]) ? errf(err, err_len, "prompt: out of memory") : 0;
        if (!rc) rc = tok_encode(tg->tok, req->prompt, strlen(req->prompt), 0, &v, err, err_len);
        if (!rc && tok_vec_push(&v, id[1])) rc = errf(err, err_len, "prompt: out of memory");
        if (!rc) rc = tok_encode(tg->tok, req->suffix, strlen(req->suffix), 0, &v, err, err_len);
        if (!rc && tok_vec_push(&v, id[2])) rc = errf(err, err_len, "prompt: out of memory");
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

const char *textgen_token_piece(const struct textgen *tg, int32_t tok, size_t *len)
{
    const char *p = tok_piece(tg->tok, tok, TOK_DECODE_SPECIAL, len);
    return p ? p : "";
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
    int32_t dsml = tok_find_special(tg->tok, CHAT_DSML);
    if (!s->piece || !s->allow || jg_matcher_create(&s->matcher, tg->vocab, err, err_len) ||
        (dsml >= 0 && dsml_matcher_create(&s->call_matcher, tg->vocab, tg->tok, dsml, err, err_len))) {
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
    dsml_matcher_destroy(s->call_matcher);
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
    /* OpenAI's penalties count every token generated so far (never the prompt's): the
     * window is the whole answer */
    sp.presence_penalty = req->presence_penalty;
    sp.frequency_penalty = req->frequency_penalty;
    sp.penalty_last_n = req->presence_penalty != 0 || req->frequency_penalty != 0 ? req->max_tokens : 0;
    /* struct req_logit_bias and struct sampler_bias are laid out alike, but copy by field */
    struct sampler_bias bias[64];
    struct sampler_bias *bp = req->n_logit_bias <= 64 ? bias : malloc(req->n_logit_bias * sizeof *bp);
    if (!bp) return errf(err, err_len, "logit_bias: out of memory");
    for (uint32_t i = 0; i < req->n_logit_bias; i++) bp[i] = (struct sampler_bias){ req->logit_bias[i].tok, req->logit_bias[i].bias };
    sp.bias = bp;
    sp.n_bias = req->n_logit_bias;
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
    int rc = sampler_create(&s->sampler, s->tg->n_vocab, &sp, err, err_len);
    if (bp != bias) free(bp);
    if (rc || stopper_create(&s->stopper, &stp, err, err_len)) return -1;
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
    s->calls = req->kind == REQ_CHAT ? req->calls : NULL;
    s->calls_on = s->calls && !req->calls_on_demand;
    s->dsml_tok = tok_find_special(s->tg->tok, CHAT_DSML);
    memset(s->tail, 0, sizeof s->tail);
    if (s->calls) {
        if (eos < 0 || !s->call_matcher)
            return errf(err, err_len, "tool_choice: the model has no %s to end a call with",
                        eos < 0 ? "end token" : "DSML control token");
        if (s->calls_on) dsml_matcher_start(s->call_matcher, s->calls, false);
    }
    s->logprobs = req->logprobs;
    s->top_logprobs = req->top_logprobs < 20 ? req->top_logprobs : 20;
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
    uint32_t least = s->calls ? dsml_grammar_min_tokens(s->calls) : jg_schema_min_bytes(s->schema);
    bool close = (uint64_t)remaining <= (uint64_t)least + 2;
    memset(s->allow, close ? 0 : 0xFF, words * sizeof *s->allow);
    if (close) s->allow[(uint32_t)s->think_end_tok >> 5] |= 1u << ((uint32_t)s->think_end_tok & 31);
    else s->allow[(uint32_t)s->eos >> 5] &= ~(1u << ((uint32_t)s->eos & 31));
}

/* log-softmax of the raw logits at tok, and the k best (insertion into a short sorted
 * list: k <= 20, one pass over the vocabulary, nothing allocated). NaN counts as -inf. */
static void logprob_of(const float *logits, uint32_t n, int32_t tok, uint32_t k, struct textgen_logprob *lp)
{
    float max = -INFINITY;
    for (uint32_t i = 0; i < n; i++)
        if (logits[i] > max) max = logits[i];
    double sum = 0;
    for (uint32_t i = 0; i < n; i++)
        if (logits[i] > -INFINITY) sum += exp((double)logits[i] - max);
    float lse = max + (float)log(sum);
    lp->tok = tok;
    lp->logprob = logits[tok] > -INFINITY ? logits[tok] - lse : -INFINITY;
    lp->n_top = 0;
    for (uint32_t i = 0; i < n && k; i++) {
        float l = logits[i];
        if (!(l > -INFINITY)) continue;
        if (lp->n_top == k && l <= lp->top_logprob[k - 1]) continue;
        uint32_t at = lp->n_top < k ? lp->n_top++ : k - 1;
        while (at > 0 && lp->top_logprob[at - 1] < l) {
            lp->top_logprob[at] = lp->top_logprob[at - 1];
            lp->top_tok[at] = lp->top_tok[at - 1];
            at--;
        }
        lp->top_logprob[at] = l;
        lp->top_tok[at] = (int32_t)i;
    }
    for (uint32_t i = 0; i < lp->n_top; i++) lp->top_logprob[i] -= lse;
}

int32_t textgen_seq_sample(struct textgen_seq *s, const float *logits, struct textgen_logprob *lp)
{
    const uint32_t *allow = NULL;
    bool shaped = s->schema || s->calls_on;
    if (shaped) {
        uint32_t n = stopper_n_tokens(s->stopper);
        uint32_t remaining = s->max_tokens > n ? s->max_tokens - n : 1;
        if (!s->grammar_on) think_mask(s, remaining);
        else if (s->calls) dsml_mask(s->call_matcher, remaining, s->eos, s->allow);
        else jg_mask(s->matcher, remaining, s->eos, s->allow);
        allow = s->allow;
    }
    int32_t tok = sampler_sample_masked(s->sampler, logits, allow);
    if (tok < 0) return tok;
    sampler_accept(s->sampler, tok);
    if (lp && s->logprobs) logprob_of(logits, s->tg->n_vocab, tok, s->top_logprobs, lp);
    if (!s->grammar_on && tok == s->think_end_tok) {
        s->grammar_on = true;
    } else if (shaped && s->grammar_on && tok != s->eos) {
        if (s->calls_on ? dsml_matcher_accept(s->call_matcher, tok) : jg_matcher_accept(s->matcher, tok)) return -1;
    } else if (s->calls && s->grammar_on && tok == s->dsml_tok && !memcmp(s->tail, "\n\n<", 3)) {
        /* a strict tool's block, opened by the model: held to the grammar from here on */
        s->calls_on = true;
        dsml_matcher_start(s->call_matcher, s->calls, true);
    }
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
        for (int k = 0; k < n; k++) {
            memmove(s->tail, s->tail + 1, sizeof s->tail - 1);
            s->tail[sizeof s->tail - 1] = s->piece[k];
        }
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

int textgen_seq_stop_index(const struct textgen_seq *s) { return stopper_matched(s->stopper); }

void textgen_seq_finish(struct textgen_seq *s, const char **text, size_t *len)
{
    /* Held stop-string prefix first (it precedes the tail in the text), then a held
     * incomplete UTF-8 tail as U+FFFD. */
    size_t n = stopper_flush(s->stopper, s->released, s->released_cap);
    int k = tok_stream_flush(&s->stream, s->released + n, s->released_cap - n);
    *text = s->released;
    *len = n + (k > 0 ? (size_t)k : 0);
}
