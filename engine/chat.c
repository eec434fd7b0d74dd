/* DeepSeek-V4 chat rendering (see chat.h). One walk over the messages writes into a sink
 * that either collects text or tokenizes: literal text is gathered and encoded without
 * special-token parsing, control tokens are pushed as ids, so nothing a user writes can
 * become a control token. */
#include "engine/chat.h"

#include "engine/errmsg.h"

#include <stdlib.h>
#include <string.h>

struct sink {
    const struct tokenizer *t; /* NULL: text mode */
    struct tok_vec *out;       /* token mode: ids */
    char *buf;                 /* text mode: the text; token mode: literal text not yet encoded */
    size_t len, cap;
    int failed;
    char *err;
    size_t err_len;
};

static void put_text(struct sink *s, const char *text, size_t n)
{
    if (s->failed || n == 0) return;
    if (s->len + n + 1 > s->cap) {
        size_t cap = (s->len + n + 1) * 2;
        char *b = realloc(s->buf, cap);
        if (!b) {
            s->failed = errf(s->err, s->err_len, "chat: out of memory");
            return;
        }
        s->buf = b;
        s->cap = cap;
    }
    memcpy(s->buf + s->len, text, n);
    s->len += n;
    s->buf[s->len] = 0;
}

static void put_str(struct sink *s, const char *text) { put_text(s, text ? text : "", text ? strlen(text) : 0); }

static void flush_literal(struct sink *s)
{
    if (s->failed || !s->t || s->len == 0) return;
    if (tok_encode(s->t, s->buf, s->len, 0, s->out, s->err, s->err_len)) s->failed = -1;
    s->len = 0;
}

/* A control token of the format. Token mode: id fallback (-1: look the text up); when
 * the vocabulary lacks it, required -> error, else the text goes in literally. */
static void put_control(struct sink *s, const char *text, int32_t id, bool required)
{
    if (s->failed) return;
    if (!s->t) {
        put_str(s, text);
        return;
    }
    if (id < 0) id = tok_find_special(s->t, text);
    if (id < 0) {
        if (required) s->failed = errf(s->err, s->err_len, "chat: the vocabulary has no control token \"%s\"", text);
        else put_str(s, text);
        return;
    }
    flush_literal(s);
    if (!s->failed && tok_vec_push(s->out, id)) s->failed = errf(s->err, s->err_len, "chat: out of memory");
}

/* "<｜DSML｜" + tag: the DSML marker is a control token in V4's vocabulary, the rest text. */
static void put_dsml_open(struct sink *s, const char *before, const char *tag)
{
    put_str(s, before);
    put_control(s, CHAT_DSML, -1, false);
    put_str(s, tag);
}

static void put_tool_calls(struct sink *s, const struct chat_message *m)
{
    put_str(s, "\n\n");
    put_dsml_open(s, "<", "tool_calls>\n");
    for (size_t c = 0; c < m->n_tool_calls; c++) {
        const struct chat_tool_call *call = &m->tool_calls[c];
        if (c) put_str(s, "\n");
        put_dsml_open(s, "<", "invoke name=\"");
        put_str(s, call->name);
        put_str(s, "\">\n");
        for (size_t p = 0; p < call->n_params; p++) {
            const struct chat_tool_param *par = &call->params[p];
            if (p) put_str(s, "\n");
            put_dsml_open(s, "<", "parameter name=\"");
            put_str(s, par->name);
            put_str(s, par->is_string ? "\" string=\"true\">" : "\" string=\"false\">");
            put_str(s, par->value);
            put_dsml_open(s, "</", "parameter>");
        }
        put_str(s, "\n");
        put_dsml_open(s, "</", "invoke>");
    }
    put_str(s, "\n");
    put_dsml_open(s, "</", "tool_calls>");
}

static int render(struct sink *s, const struct chat_message *msgs, size_t n, const struct chat_options *opt)
{
    static const struct chat_options defaults = { .add_generation_prompt = true };
    if (!opt) opt = &defaults;
    int32_t bos = s->t ? tok_bos(s->t) : -1, eos = s->t ? tok_eos(s->t) : -1;
    size_t last_user = SIZE_MAX;
    for (size_t i = 0; i < n; i++) {
        if (msgs[i].role > CHAT_ROLE_TOOL)
            return errf(s->err, s->err_len, "chat: message %zu: role %d, expected system, user, assistant or tool",
                        i, (int)msgs[i].role);
        if (msgs[i].role == CHAT_ROLE_USER) last_user = i;
    }
    if (!opt->omit_bos) put_control(s, CHAT_BOS, bos, true);
    size_t first = 0;
    if (opt->tools_prompt) {
        /* the tools description joins the leading system text */
        for (; first < n && msgs[first].role == CHAT_ROLE_SYSTEM; first++) {
            if (first) put_str(s, "\n\n");
            put_str(s, msgs[first].content);
        }
        if (first) put_str(s, "\n\n");
        put_str(s, opt->tools_prompt);
    }
    for (size_t i = first; i < n && !s->failed; i++) {
        const struct chat_message *m = &msgs[i];
        switch (m->role) {
        case CHAT_ROLE_SYSTEM:
            put_str(s, m->content);
            break;
        case CHAT_ROLE_USER:
            put_control(s, CHAT_USER, -1, true);
            put_str(s, m->content);
            break;
        case CHAT_ROLE_TOOL:
            if (i > 0 && msgs[i - 1].role == CHAT_ROLE_TOOL) put_str(s, "\n\n");
            else put_control(s, CHAT_USER, -1, true);
            put_str(s, "<tool_result>");
            put_str(s, m->content);
            put_str(s, "</tool_result>");
            break;
        case CHAT_ROLE_ASSISTANT: {
            /* the spec: reasoning stays for the turn being answered, and everywhere once
             * tools are present */
            bool keep = opt->thinking && (opt->keep_all_reasoning || opt->tools_prompt || last_user == SIZE_MAX ||
                                          i > last_user);
            put_control(s, CHAT_ASSISTANT, -1, true);
            if (keep && m->reasoning) {
                put_control(s, CHAT_THINK, -1, true);
                put_str(s, m->reasoning);
            }
            put_control(s, CHAT_THINK_END, -1, true);
            put_str(s, m->content);
            if (m->n_tool_calls) put_tool_calls(s, m);
            put_control(s, CHAT_EOS, eos, true);
            break;
        }
        }
    }
    if (opt->add_generation_prompt && (n == 0 || msgs[n - 1].role != CHAT_ROLE_ASSISTANT)) {
        put_control(s, CHAT_ASSISTANT, -1, true);
        put_control(s, opt->thinking ? CHAT_THINK : CHAT_THINK_END, -1, true);
    }
    flush_literal(s);
    return s->failed ? -1 : 0;
}

int chat_render(const struct tokenizer *t, const struct chat_message *msgs, size_t n, const struct chat_options *opt,
                struct tok_vec *out, char *err, size_t err_len)
{
    struct sink s = { .t = t, .out = out, .err = err, .err_len = err_len };
    size_t n_before = out->n;
    int rc = render(&s, msgs, n, opt);
    if (rc) out->n = n_before;
    free(s.buf);
    return rc;
}

int chat_render_text(const struct chat_message *msgs, size_t n, const struct chat_options *opt, char **out,
                     size_t *len, char *err, size_t err_len)
{
    struct sink s = { .err = err, .err_len = err_len };
    *out = NULL;
    *len = 0;
    if (render(&s, msgs, n, opt)) {
        free(s.buf);
        return -1;
    }
    if (!s.buf) {
        s.buf = calloc(1, 1);
        if (!s.buf) return errf(err, err_len, "chat: out of memory");
    }
    *out = s.buf;
    *len = s.len;
    return 0;
}
