/* DeepSeek-V4 chat rendering (see chat.h). One walk over the messages writes into a sink
 * that either collects text or tokenizes: literal text is gathered and encoded without
 * special-token parsing, control tokens are pushed as ids, so nothing a user writes can
 * become a control token. */
#include "engine/text/chat.h"

#include "common/errmsg.h"

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
    put_control(s, CHAT_DSML, -1, true);
    put_str(s, tag);
}

/* Text of the format itself (not the client's): its DSML, <think> and </think> become
 * control tokens, as the official encoder's string does once tokenized. */
static void put_format_text(struct sink *s, const char *text)
{
    static const char *const marks[] = { CHAT_DSML, CHAT_THINK, CHAT_THINK_END };
    while (*text && !s->failed) {
        const char *best = NULL;
        size_t which = 0;
        for (size_t k = 0; k < 3; k++) {
            const char *p = strstr(text, marks[k]);
            if (p && (!best || p < best)) best = p, which = k;
        }
        if (!best) {
            put_str(s, text);
            return;
        }
        put_text(s, text, (size_t)(best - text));
        put_control(s, marks[which], -1, true);
        text = best + strlen(marks[which]);
    }
}

/* The model's trained prompt texts, byte for byte as DeepSeek's encoding_dsv4.py writes
 * them (a format fact: any other wording is a different prompt). */
static const char tools_head[] =
    "## Tools\n\nYou have access to a set of tools to help answer the user's question. You can invoke tools by "
    "writing a \"<｜DSML｜tool_calls>\" block like the following:\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke "
    "name=\"$TOOL_NAME\">\n<｜DSML｜parameter name=\"$PARAMETER_NAME\" string=\"true|false\">$PARAMETER_VALUE"
    "</｜DSML｜parameter>\n...\n</｜DSML｜invoke>\n<｜DSML｜invoke name=\"$TOOL_NAME2\">\n...\n</｜DSML｜invoke>\n"
    "</｜DSML｜tool_calls>\n\nString parameters should be specified as is and set `string=\"true\"`. For all other "
    "types (numbers, booleans, arrays, objects), pass the value in JSON format and set `string=\"false\"`.\n\n"
    "If thinking_mode is enabled (triggered by <think>), you MUST output your complete reasoning inside "
    "<think>...</think> BEFORE any tool calls or final response.\n\nOtherwise, output directly after </think> "
    "with tool calls or final response.\n\n### Available Tool Schemas\n\n";
static const char tools_tail[] =
    "\n\nYou MUST strictly follow the above defined tool name and parameter schemas to invoke tool calls.\n";
static const char reasoning_max[] =
    "Reasoning Effort: Absolute maximum with no shortcuts permitted.\nYou MUST be very thorough in your thinking "
    "and comprehensively decompose the problem to resolve the root cause, rigorously stress-testing your logic "
    "against all potential paths, edge cases, and adversarial scenarios.\nExplicitly write out your entire "
    "deliberation process, documenting every intermediate step, considered alternative, and rejected hypothesis "
    "to ensure absolutely no assumption is left unchecked.\n\n";

static void put_tools(struct sink *s, const struct chat_options *opt)
{
    put_str(s, "\n\n");
    put_format_text(s, tools_head);
    for (size_t i = 0; i < opt->n_tools; i++) {
        if (i) put_str(s, "\n");
        put_str(s, opt->tool_schemas[i]); /* the client's JSON: literal text */
    }
    put_str(s, tools_tail);
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
            put_text(s, par->value, par->value_len ? par->value_len : strlen(par->value));
            put_dsml_open(s, "</", "parameter>");
        }
        put_str(s, "\n");
        put_dsml_open(s, "</", "invoke>");
    }
    put_str(s, "\n");
    put_dsml_open(s, "</", "tool_calls>");
}

static void put_content(struct sink *s, const char *text, size_t len)
{
    if (text) put_text(s, text, len ? len : strlen(text));
}

/* A turn of the encoding: one message, or a run of user and tool messages, which the
 * official encoder merges into one user turn (blocks joined by a blank line). */
struct unit {
    enum chat_role role;  /* CHAT_ROLE_USER for a merged run */
    size_t first, end;    /* msgs[first, end) */
};

/* Where a tool result goes among its run's results: the position of its call in the last
 * assistant message that made calls (0 when not found), as the official encoder sorts. */
static size_t call_rank(const struct chat_message *calls_msg, const char *id)
{
    if (!calls_msg || !id || !*id) return 0;
    for (size_t c = 0; c < calls_msg->n_tool_calls; c++)
        if (calls_msg->tool_calls[c].id && !strcmp(calls_msg->tool_calls[c].id, id)) return c;
    return 0;
}

static void put_user_run(struct sink *s, const struct chat_message *msgs, const struct unit *u,
                         const struct chat_message *calls_msg, size_t *order)
{
    /* tool results in call order (a stable insertion sort by rank), only when the last
     * call message had ids and the run holds more than one result */
    size_t n_tool = 0;
    bool any_id = false;
    for (size_t c = 0; calls_msg && c < calls_msg->n_tool_calls; c++)
        if (calls_msg->tool_calls[c].id && calls_msg->tool_calls[c].id[0]) any_id = true;
    for (size_t i = u->first; i < u->end; i++)
        if (msgs[i].role == CHAT_ROLE_TOOL) order[n_tool++] = i;
    if (n_tool > 1 && any_id) {
        for (size_t a = 1; a < n_tool; a++) {
            size_t x = order[a], b = a;
            size_t rx = call_rank(calls_msg, msgs[x].tool_call_id);
            while (b > 0 && call_rank(calls_msg, msgs[order[b - 1]].tool_call_id) > rx) {
                order[b] = order[b - 1];
                b--;
            }
            order[b] = x;
        }
    }
    put_control(s, CHAT_USER, -1, true);
    size_t t = 0;
    for (size_t i = u->first; i < u->end; i++) {
        if (i > u->first) put_str(s, "\n\n");
        if (msgs[i].role == CHAT_ROLE_TOOL) {
            const struct chat_message *m = &msgs[order[t++]];
            put_str(s, "<tool_result>");
            put_content(s, m->content, m->content_len);
            put_str(s, "</tool_result>");
        } else {
            put_content(s, msgs[i].content, msgs[i].content_len);
        }
    }
}

static int render(struct sink *s, const struct chat_message *msgs, size_t n, const struct chat_options *opt)
{
    static const struct chat_options defaults = { .add_generation_prompt = true };
    if (!opt) opt = &defaults;
    int32_t bos = s->t ? tok_bos(s->t) : -1, eos = s->t ? tok_eos(s->t) : -1;
    for (size_t i = 0; i < n; i++)
        if (msgs[i].role > CHAT_ROLE_TOOL)
            return errf(s->err, s->err_len, "chat: message %zu: role %d, expected system, user, assistant or tool",
                        i, (int)msgs[i].role);
    struct unit *units = malloc((n ? n : 1) * sizeof *units);
    size_t *order = malloc((n ? n : 1) * sizeof *order);
    if (!units || !order) {
        free(units);
        free(order);
        return errf(s->err, s->err_len, "chat: out of memory");
    }
    size_t n_units = 0, last_user = SIZE_MAX;
    for (size_t i = 0; i < n; i++) {
        bool userish = msgs[i].role == CHAT_ROLE_USER || msgs[i].role == CHAT_ROLE_TOOL;
        if (userish && n_units && units[n_units - 1].role == CHAT_ROLE_USER) {
            units[n_units - 1].end = i + 1;
        } else {
            units[n_units++] = (struct unit){ userish ? CHAT_ROLE_USER : msgs[i].role, i, i + 1 };
        }
        if (userish) last_user = n_units - 1;
    }
    /* reasoning of turns before the last user turn is dropped, unless tools are present */
    bool keep_all = opt->keep_all_reasoning || opt->n_tools > 0;
    if (!opt->omit_bos) put_control(s, CHAT_BOS, bos, true);
    if (opt->thinking && opt->reasoning_max) put_str(s, reasoning_max);
    /* tools join the first message when it is a system message, else an empty one */
    bool tools_pending = opt->n_tools > 0;
    if (tools_pending && !(n_units && units[0].role == CHAT_ROLE_SYSTEM)) {
        put_tools(s, opt);
        tools_pending = false;
    }
    const struct chat_message *calls_msg = NULL; /* the last assistant message with calls */
    for (size_t k = 0; k < n_units && !s->failed; k++) {
        const struct unit *u = &units[k];
        const struct chat_message *m = &msgs[u->first];
        switch (u->role) {
        case CHAT_ROLE_SYSTEM:
            put_content(s, m->content, m->content_len);
            if (tools_pending) put_tools(s, opt);
            tools_pending = false;
            break;
        case CHAT_ROLE_USER:
        case CHAT_ROLE_TOOL:
            put_user_run(s, msgs, u, calls_msg, order);
            break;
        case CHAT_ROLE_ASSISTANT:
            /* <｜Assistant｜> and the think marker came with the user turn before (after
             * anything else the official encoder writes none) */
            if (opt->thinking && (keep_all || last_user == SIZE_MAX || k > last_user)) {
                put_content(s, m->reasoning, m->reasoning_len);
                put_control(s, CHAT_THINK_END, -1, true);
            }
            put_content(s, m->content, m->content_len);
            if (m->n_tool_calls) {
                put_tool_calls(s, m);
                calls_msg = m;
            }
            put_control(s, CHAT_EOS, eos, true);
            break;
        }
        /* after a user turn comes the assistant's opening: <｜Assistant｜> and the think
         * marker of the turn that follows (or of the generation) */
        bool last = k + 1 == n_units;
        if (u->role == CHAT_ROLE_USER && (last ? opt->add_generation_prompt : units[k + 1].role == CHAT_ROLE_ASSISTANT)) {
            put_control(s, CHAT_ASSISTANT, -1, true);
            put_control(s, opt->thinking && (keep_all || k >= last_user) ? CHAT_THINK : CHAT_THINK_END, -1, true);
        }
    }
    free(units);
    free(order);
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
