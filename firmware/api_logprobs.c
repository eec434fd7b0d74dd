/* Log probabilities as JSON (see api_logprobs.h). */
#include "firmware/api_logprobs.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static json_t *token_string(const char *p, size_t n)
{
    json_t *s = json_stringn(p, n);
    if (s) return s;
    char buf[4 * 64 + 8] = "bytes:";
    size_t o = 6;
    for (size_t i = 0; i < n && o + 5 < sizeof buf; i++) o += (size_t)snprintf(buf + o, sizeof buf - o, "\\x%02x", (unsigned char)p[i]);
    return json_string(buf);
}

static json_t *bytes_array(const char *p, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; a && i < n; i++) json_array_append_new(a, json_integer((unsigned char)p[i]));
    return a;
}

/* JSON has no -inf: a token the model rules out gets OpenAI's floor, -9999. */
static double finite_lp(float x) { return isfinite(x) ? x : -9999.0; }

static json_t *one_token(const struct textgen *tg, int32_t tok, float logprob)
{
    size_t n;
    const char *p = textgen_token_piece(tg, tok, &n);
    return json_pack("{s:o,s:f,s:o}", "token", token_string(p, n), "logprob", finite_lp(logprob), "bytes",
                     bytes_array(p, n));
}

json_t *logprobs_chat_json(const struct textgen *tg, const struct textgen_logprob *lp, uint32_t n)
{
    json_t *content = json_array();
    for (uint32_t i = 0; content && i < n; i++) {
        json_t *t = one_token(tg, lp[i].tok, lp[i].logprob), *top = json_array();
        for (uint32_t k = 0; top && k < lp[i].n_top; k++)
            json_array_append_new(top, one_token(tg, lp[i].top_tok[k], lp[i].top_logprob[k]));
        if (t) json_object_set_new(t, "top_logprobs", top);
        else json_decref(top);
        json_array_append_new(content, t);
    }
    return json_pack("{s:o}", "content", content);
}

json_t *logprobs_completion_json(const struct textgen *tg, const struct textgen_logprob *lp, uint32_t n,
                                 size_t *offset)
{
    json_t *tokens = json_array(), *lps = json_array(), *tops = json_array(), *offs = json_array();
    for (uint32_t i = 0; i < n; i++) {
        size_t len;
        const char *p = textgen_token_piece(tg, lp[i].tok, &len);
        json_array_append_new(tokens, token_string(p, len));
        json_array_append_new(lps, json_real(finite_lp(lp[i].logprob)));
        json_array_append_new(offs, json_integer((json_int_t)*offset));
        *offset += len;
        json_t *top = json_object();
        for (uint32_t k = 0; top && k < lp[i].n_top; k++) {
            size_t tl;
            const char *tp = textgen_token_piece(tg, lp[i].top_tok[k], &tl);
            json_t *name = token_string(tp, tl);
            if (name) json_object_set_new(top, json_string_value(name), json_real(finite_lp(lp[i].top_logprob[k])));
            json_decref(name);
        }
        json_array_append_new(tops, top);
    }
    return json_pack("{s:o,s:o,s:o,s:o}", "tokens", tokens, "token_logprobs", lps, "top_logprobs", tops,
                     "text_offset", offs);
}
