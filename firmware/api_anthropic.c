/* Anthropic's Messages API over the chat pipeline (see api_shapes.h). The request's
 * content blocks become chat messages: text blocks a user or assistant text, thinking
 * blocks the assistant's reasoning_content, tool_use blocks assistant tool_calls (input as
 * arguments), tool_result blocks tool messages; the encoder then merges a user turn's
 * results and text as the official encoder does. */
#include "firmware/api_shapes.h"

#include "common/errmsg.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool one_of(const char *s, const char *const *list)
{
    for (; s && *list; list++)
        if (!strcmp(s, *list)) return true;
    return false;
}

json_t *api_text_parts(json_t *v, const char *name, const char *const *text_types, const char *const *media_types,
                       char *err, size_t err_len)
{
    if (json_is_string(v)) return json_incref(v);
    if (!json_is_array(v)) {
        errf(err, err_len, "%s: expected a string or an array of text parts", name);
        return NULL;
    }
    json_t *parts = json_array();
    size_t i;
    json_t *b;
    json_array_foreach(v, i, b) {
        const char *type = json_string_value(json_object_get(b, "type"));
        json_t *text = json_object_get(b, "text");
        if (!one_of(type, text_types) || !json_is_string(text)) {
            json_decref(parts);
            errf(err, err_len, "%s[%zu]: expected a %s part with text%s", name, i, text_types[0],
                 one_of(type, media_types) ? ": the model has no vision, audio or document input, only text" : "");
            return NULL;
        }
        json_array_append_new(parts, json_pack("{s:s,s:O}", "type", "text", "text", text));
    }
    return parts;
}

static const char *const text_block[] = { "text", NULL };
static const char *const media_blocks[] = { "image", "document", NULL };

static json_t *text_of(json_t *v, const char *name, char *err, size_t err_len)
{
    return api_text_parts(v, name, text_block, media_blocks, err, err_len);
}

static int add_blocks(json_t *msgs, const char *role, json_t *content, size_t mi, char *err, size_t err_len)
{
    char name[64];
    snprintf(name, sizeof name, "messages[%zu].content", mi);
    if (json_is_string(content)) {
        json_array_append_new(msgs, json_pack("{s:s,s:O}", "role", role, "content", content));
        return 0;
    }
    if (!json_is_array(content)) return errf(err, err_len, "%s: expected a string or an array of blocks", name);
    bool assistant = !strcmp(role, "assistant");
    json_t *text = NULL, *calls = json_array(), *reasoning = NULL;
    size_t i;
    json_t *b;
    int rc = 0;
    json_array_foreach(content, i, b) {
        const char *type = json_string_value(json_object_get(b, "type"));
        snprintf(name, sizeof name, "messages[%zu].content[%zu]", mi, i);
        if (!type) { rc = errf(err, err_len, "%s.type: expected a string", name); break; }
        if (!strcmp(type, "text")) {
            json_t *t = json_object_get(b, "text");
            if (!json_is_string(t)) { rc = errf(err, err_len, "%s.text: expected a string", name); break; }
            if (!text) text = json_string("");
            /* consecutive text blocks of one turn join without a separator, as chat parts do */
            json_t *joined = json_sprintf("%s%s", json_string_value(text), json_string_value(t));
            json_decref(text);
            text = joined;
            if (!text) { rc = errf(err, err_len, "%s: out of memory", name); break; }
        } else if (!strcmp(type, "thinking") && assistant) {
            json_t *t = json_object_get(b, "thinking");
            if (!json_is_string(t)) { rc = errf(err, err_len, "%s.thinking: expected a string", name); break; }
            json_decref(reasoning);
            reasoning = json_incref(t);
        } else if (!strcmp(type, "redacted_thinking") && assistant) {
            /* nothing to show the model: its reasoning was never ours */
        } else if (!strcmp(type, "tool_use") && assistant) {
            json_t *id = json_object_get(b, "id"), *nm = json_object_get(b, "name"), *input = json_object_get(b, "input");
            if (!json_is_string(id) || !json_is_string(nm) || !json_is_object(input)) {
                rc = errf(err, err_len, "%s: expected a tool_use block with id, name and an input object", name);
                break;
            }
            json_array_append_new(calls, json_pack("{s:O,s:s,s:{s:O,s:O}}", "id", id, "type", "function", "function",
                                                   "name", nm, "arguments", input));
        } else if (!strcmp(type, "tool_result") && !assistant) {
            json_t *id = json_object_get(b, "tool_use_id"), *c = json_object_get(b, "content");
            if (!json_is_string(id)) { rc = errf(err, err_len, "%s.tool_use_id: expected a string", name); break; }
            json_t *ct = c ? text_of(c, name, err, err_len) : json_string("");
            if (!ct) { rc = -1; break; }
            if (text) { /* text before the result is its own user message, in order */
                json_array_append_new(msgs, json_pack("{s:s,s:o}", "role", "user", "content", text));
                text = NULL;
            }
            json_array_append_new(msgs, json_pack("{s:s,s:O,s:o}", "role", "tool", "tool_call_id", id, "content", ct));
        } else if (!strcmp(type, "image") || !strcmp(type, "document")) {
            rc = errf(err, err_len, "%s: %s blocks are not supported: the model has no vision or document input, only text",
                      name, type);
            break;
        } else {
            rc = errf(err, err_len, "%s.type: '%.32s' is not supported in a %s message", name, type, role);
            break;
        }
    }
    if (!rc && (text || reasoning || json_array_size(calls) || json_array_size(content) == 0)) {
        json_t *m = json_pack("{s:s,s:o}", "role", role, "content", text ? text : json_string(""));
        text = NULL;
        if (reasoning) json_object_set(m, "reasoning_content", reasoning);
        if (json_array_size(calls)) json_object_set(m, "tool_calls", calls);
        json_array_append_new(msgs, m);
    }
    json_decref(text);
    json_decref(calls);
    json_decref(reasoning);
    return rc;
}

static int convert_tools(json_t *v, json_t *out, char *err, size_t err_len)
{
    if (!json_is_array(v)) return errf(err, err_len, "tools: expected an array");
    json_t *tools = json_array();
    size_t i;
    json_t *t;
    json_array_foreach(v, i, t) {
        json_t *nm = json_object_get(t, "name"), *schema = json_object_get(t, "input_schema");
        const char *type = json_string_value(json_object_get(t, "type"));
        if (type && strcmp(type, "custom")) {
            json_decref(tools);
            return errf(err, err_len, "tools[%zu].type: '%.32s' (a server tool) is not supported", i, type);
        }
        if (!json_is_string(nm) || !json_is_object(schema)) {
            json_decref(tools);
            return errf(err, err_len, "tools[%zu]: expected name and input_schema", i);
        }
        const char *key;
        json_t *x;
        json_object_foreach(t, key, x) {
            if (strcmp(key, "name") && strcmp(key, "description") && strcmp(key, "input_schema") &&
                strcmp(key, "cache_control") && strcmp(key, "type")) {
                json_decref(tools);
                return errf(err, err_len, "tools[%zu].%.64s: unknown field", i, key);
            }
        }
        /* the function as an OpenAI client would describe it: name, description, parameters */
        json_t *fn = json_pack("{s:O}", "name", nm);
        if (json_object_get(t, "description")) json_object_set(fn, "description", json_object_get(t, "description"));
        json_object_set(fn, "parameters", schema);
        json_array_append_new(tools, json_pack("{s:s,s:o}", "type", "function", "function", fn));
    }
    json_object_set_new(out, "tools", tools);
    return 0;
}

static int convert_tool_choice(json_t *v, json_t *out, char *err, size_t err_len)
{
    const char *type = json_string_value(json_object_get(v, "type"));
    if (!json_is_object(v) || !type) return errf(err, err_len, "tool_choice: expected {\"type\": auto|any|tool|none}");
    json_t *dp = json_object_get(v, "disable_parallel_tool_use");
    if (json_is_true(dp)) json_object_set_new(out, "parallel_tool_calls", json_false());
    if (!strcmp(type, "auto")) json_object_set_new(out, "tool_choice", json_string("auto"));
    else if (!strcmp(type, "none")) json_object_set_new(out, "tool_choice", json_string("none"));
    else if (!strcmp(type, "any")) json_object_set_new(out, "tool_choice", json_string("required"));
    else if (!strcmp(type, "tool") && json_is_string(json_object_get(v, "name")))
        json_object_set_new(out, "tool_choice", json_pack("{s:s,s:{s:O}}", "type", "function", "function", "name",
                                                          json_object_get(v, "name")));
    else return errf(err, err_len, "tool_choice.type: '%.32s', expected auto, any, tool (with name) or none", type);
    return 0;
}

json_t *api_body_object(const char *body, size_t len, char *err, size_t err_len)
{
    json_error_t je;
    json_t *in = json_loadb(body, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &je);
    if (json_is_object(in)) return in;
    if (in) errf(err, err_len, "body: expected a JSON object");
    else errf(err, err_len, "body: invalid JSON at byte %d: %s", je.position, je.text);
    json_decref(in);
    return NULL;
}

json_t *anthropic_to_chat(const char *body, size_t len, char *err, size_t err_len)
{
    json_t *in = api_body_object(body, len, err, err_len);
    if (!in) return NULL;
    json_t *out = json_object(), *msgs = json_array();
    json_object_set_new(out, "messages", msgs);
    json_t *messages = NULL, *system = NULL;
    int rc = 0;
    const char *key;
    json_t *x;
    bool have_max = false;
    json_object_foreach(in, key, x) {
        if (!strcmp(key, "messages")) messages = x;
        else if (!strcmp(key, "system")) system = x;
        else if (!strcmp(key, "model") || !strcmp(key, "temperature") || !strcmp(key, "top_p") ||
                 !strcmp(key, "top_k") || !strcmp(key, "stream"))
            json_object_set(out, key, x);
        else if (!strcmp(key, "max_tokens")) {
            json_object_set(out, key, x);
            have_max = true;
        } else if (!strcmp(key, "stop_sequences")) json_object_set(out, "stop", x);
        else if (!strcmp(key, "metadata")) {
            if (!json_is_object(x)) { rc = errf(err, err_len, "metadata: expected an object"); break; }
        } else if (!strcmp(key, "service_tier")) {
            if (!json_is_string(x)) { rc = errf(err, err_len, "service_tier: expected a string"); break; }
        } else if (!strcmp(key, "thinking")) {
            /* {"type": "enabled", "budget_tokens": N}: the budget cannot be enforced here
             * (max_tokens bounds reasoning and answer together) */
            const char *t = json_string_value(json_object_get(x, "type"));
            if (!t || (strcmp(t, "enabled") && strcmp(t, "disabled") && strcmp(t, "adaptive"))) {
                rc = errf(err, err_len, "thinking.type: expected enabled, adaptive or disabled");
                break;
            }
            json_object_set_new(out, "thinking", json_boolean(strcmp(t, "disabled") != 0));
        } else if (!strcmp(key, "tools")) {
            if ((rc = convert_tools(x, out, err, err_len))) break;
        } else if (!strcmp(key, "tool_choice")) {
            if ((rc = convert_tool_choice(x, out, err, err_len))) break;
        } else {
            rc = errf(err, err_len, "%.64s: unknown field", key);
            break;
        }
    }
    if (!rc && !have_max) rc = errf(err, err_len, "max_tokens: missing (the Messages API requires it)");
    if (!rc && system) {
        json_t *s = text_of(system, "system", err, err_len);
        if (!s) rc = -1;
        else json_array_append_new(msgs, json_pack("{s:s,s:o}", "role", "system", "content", s));
    }
    if (!rc && !json_is_array(messages)) rc = errf(err, err_len, "messages: expected an array");
    size_t i;
    json_t *m;
    if (!rc) json_array_foreach(messages, i, m) {
        const char *role = json_string_value(json_object_get(m, "role"));
        if (!json_is_object(m) || !role || (strcmp(role, "user") && strcmp(role, "assistant"))) {
            rc = errf(err, err_len, "messages[%zu].role: expected user or assistant", i);
            break;
        }
        json_object_foreach(m, key, x) {
            if (strcmp(key, "role") && strcmp(key, "content")) {
                rc = errf(err, err_len, "messages[%zu].%.64s: unknown field", i, key);
                break;
            }
        }
        if (rc) break;
        if (!json_object_get(m, "content")) { rc = errf(err, err_len, "messages[%zu].content: missing", i); break; }
        if ((rc = add_blocks(msgs, role, json_object_get(m, "content"), i, err, err_len))) break;
    }
    json_decref(in);
    if (rc) {
        json_decref(out);
        return NULL;
    }
    return out;
}

/* ---- answers ---- */

static const char *stop_reason(const struct api_result *res)
{
    return res->end == API_END_LENGTH ? "max_tokens" : res->end == API_END_STOP_STRING ? "stop_sequence"
         : res->end == API_END_TOOL_CALLS ? "tool_use" : "end_turn";
}

static json_t *tool_use_block(const struct api_result *res, uint32_t i, bool empty_input)
{
    char id[80];
    snprintf(id, sizeof id, "toolu_%s_%u", res->id, i);
    json_t *input = empty_input ? json_object() : json_loads(res->calls->calls[i].arguments, JSON_ALLOW_NUL, NULL);
    return json_pack("{s:s,s:s,s:s,s:o}", "type", "tool_use", "id", id, "name", res->calls->calls[i].name, "input",
                     input ? input : json_object());
}

static json_t *message_head(const struct api_result *res, json_t *content, bool final)
{
    char id[64];
    snprintf(id, sizeof id, "msg_%s", res->id);
    json_t *o = json_pack("{s:s,s:s,s:s,s:s,s:o,s:o,s:o,s:{s:I,s:I}}", "id", id, "type", "message", "role", "assistant",
                          "model", res->model, "content", content, "stop_reason",
                          final ? json_string(stop_reason(res)) : json_null(), "stop_sequence",
                          final && res->stop_string ? json_string(res->stop_string) : json_null(), "usage",
                          "input_tokens", (json_int_t)res->n_in, "output_tokens", (json_int_t)(final ? res->n_out : 0));
    return o;
}

json_t *anthropic_message_json(const struct api_result *res)
{
    json_t *content = json_array();
    if (res->reasoning)
        json_array_append_new(content, json_pack("{s:s,s:s%,s:s}", "type", "thinking", "thinking", res->reasoning,
                                                 res->reasoning_len, "signature", ""));
    if (res->content_len || !res->calls || !res->calls->n_calls)
        json_array_append_new(content, json_pack("{s:s,s:s%}", "type", "text", "text", res->content, res->content_len));
    for (uint32_t i = 0; res->calls && i < res->calls->n_calls; i++)
        json_array_append_new(content, tool_use_block(res, i, false));
    return message_head(res, content, true);
}

json_t *anthropic_error_json(int status, const char *message)
{
    const char *type = status == 400 || status == 413 ? "invalid_request_error" : status == 403 ? "permission_error"
                     : status == 404 ? "not_found_error" : status == 429 ? "rate_limit_error"
                     : status == 503 ? "overloaded_error" : status == 504 ? "timeout_error" : "api_error";
    return json_pack("{s:s,s:{s:s,s:s}}", "type", "error", "error", "type", type, "message", message);
}

static void event(json_t *events, const char *name, json_t *data)
{
    json_array_append_new(events, json_pack("[s,o]", name, data));
}

void anthropic_stream_start(struct api_stream *st, const struct api_result *head, json_t *events)
{
    memset(st, 0, sizeof *st);
    st->block = -1;
    event(events, "message_start", json_pack("{s:s,s:o}", "type", "message_start", "message",
                                             message_head(head, json_array(), false)));
}

static void close_block(struct api_stream *st, json_t *events)
{
    if (st->block < 0) return;
    if (st->open == 1)
        event(events, "content_block_delta", json_pack("{s:s,s:i,s:{s:s,s:s}}", "type", "content_block_delta", "index",
                                                       st->block, "delta", "type", "signature_delta", "signature", ""));
    event(events, "content_block_stop", json_pack("{s:s,s:i}", "type", "content_block_stop", "index", st->block));
    st->block = -1;
    st->open = 0;
}

static void open_block(struct api_stream *st, int kind, json_t *events)
{
    close_block(st, events);
    st->block = st->next_block++;
    st->open = kind;
    json_t *cb = kind == 1 ? json_pack("{s:s,s:s,s:s}", "type", "thinking", "thinking", "", "signature", "")
                           : json_pack("{s:s,s:s}", "type", "text", "text", "");
    event(events, "content_block_start", json_pack("{s:s,s:i,s:o}", "type", "content_block_start", "index", st->block,
                                                   "content_block", cb));
}

void anthropic_stream_delta(struct api_stream *st, bool reasoning, const char *text, size_t n, json_t *events)
{
    int kind = reasoning ? 1 : 2;
    if (st->open != kind) open_block(st, kind, events);
    json_t *d = reasoning ? json_pack("{s:s,s:s%}", "type", "thinking_delta", "thinking", text, n)
                          : json_pack("{s:s,s:s%}", "type", "text_delta", "text", text, n);
    event(events, "content_block_delta", json_pack("{s:s,s:i,s:o}", "type", "content_block_delta", "index", st->block,
                                                   "delta", d));
}

void anthropic_stream_end(struct api_stream *st, const struct api_result *res, json_t *events)
{
    if (st->next_block == 0 && (!res->calls || !res->calls->n_calls)) open_block(st, 2, events); /* an empty answer */
    close_block(st, events);
    for (uint32_t i = 0; res->calls && i < res->calls->n_calls; i++) {
        int idx = st->next_block++;
        event(events, "content_block_start", json_pack("{s:s,s:i,s:o}", "type", "content_block_start", "index", idx,
                                                       "content_block", tool_use_block(res, i, true)));
        event(events, "content_block_delta",
              json_pack("{s:s,s:i,s:{s:s,s:s}}", "type", "content_block_delta", "index", idx, "delta", "type",
                        "input_json_delta", "partial_json", res->calls->calls[i].arguments));
        event(events, "content_block_stop", json_pack("{s:s,s:i}", "type", "content_block_stop", "index", idx));
    }
    event(events, "message_delta", json_pack("{s:s,s:{s:s,s:o},s:{s:I}}", "type", "message_delta", "delta",
                                             "stop_reason", stop_reason(res), "stop_sequence",
                                             res->stop_string ? json_string(res->stop_string) : json_null(), "usage",
                                             "output_tokens", (json_int_t)res->n_out));
    event(events, "message_stop", json_pack("{s:s}", "type", "message_stop"));
}
