/* OpenAI's Responses API, stateless (see api_shapes.h). The input items become chat
 * messages: message items by role, function_call items assistant tool_calls (consecutive
 * calls join one assistant message), function_call_output items tool messages, reasoning
 * items the next assistant message's reasoning_content. Not supported, with a 400 naming
 * them: previous_response_id and conversation (nothing is stored), store true, built-in
 * tools (web search, file search, computer use...), non-text formats (left to
 * response_format / structured output), and image or file inputs. */
#include "firmware/api_shapes.h"

#include "common/errmsg.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Text of an input message's content: a string or input_text / output_text parts. */
static json_t *input_text(json_t *v, size_t i, char *err, size_t err_len)
{
    static const char *const text_parts[] = { "input_text", "output_text", "text", NULL };
    static const char *const media[] = { "input_image", "input_file", "input_audio", NULL };
    char name[48];
    snprintf(name, sizeof name, "input[%zu].content", i);
    return api_text_parts(v, name, text_parts, media, err, err_len);
}

static int convert_tools(json_t *v, json_t *out, char *err, size_t err_len)
{
    if (!json_is_array(v)) return errf(err, err_len, "tools: expected an array");
    json_t *tools = json_array();
    size_t i;
    json_t *t;
    json_array_foreach(v, i, t) {
        const char *type = json_string_value(json_object_get(t, "type"));
        if (!type || strcmp(type, "function")) {
            json_decref(tools);
            return errf(err, err_len, "tools[%zu].type: '%.32s' is not supported, only function tools", i, type ? type : "");
        }
        json_t *fn = json_object();
        const char *key;
        json_t *x;
        json_object_foreach(t, key, x) {
            if (!strcmp(key, "type")) continue;
            if (strcmp(key, "name") && strcmp(key, "description") && strcmp(key, "parameters") && strcmp(key, "strict")) {
                json_decref(fn);
                json_decref(tools);
                return errf(err, err_len, "tools[%zu].%.64s: unknown field", i, key);
            }
            json_object_set(fn, key, x);
        }
        json_array_append_new(tools, json_pack("{s:s,s:o}", "type", "function", "function", fn));
    }
    json_object_set_new(out, "tools", tools);
    return 0;
}

static int convert_input(json_t *input, json_t *msgs, char *err, size_t err_len)
{
    if (json_is_string(input)) {
        json_array_append_new(msgs, json_pack("{s:s,s:O}", "role", "user", "content", input));
        return 0;
    }
    if (!json_is_array(input)) return errf(err, err_len, "input: expected a string or an array of items");
    json_t *pending_reasoning = NULL, *last_calls = NULL; /* the assistant message calls join */
    size_t i;
    json_t *it;
    int rc = 0;
    json_array_foreach(input, i, it) {
        const char *type = json_string_value(json_object_get(it, "type"));
        const char *role = json_string_value(json_object_get(it, "role"));
        if (!json_is_object(it)) { rc = errf(err, err_len, "input[%zu]: expected an object", i); break; }
        if (!type || !strcmp(type, "message")) {
            if (!role || (strcmp(role, "user") && strcmp(role, "system") && strcmp(role, "developer") &&
                          strcmp(role, "assistant"))) {
                rc = errf(err, err_len, "input[%zu].role: expected user, system, developer or assistant", i);
                break;
            }
            json_t *c = input_text(json_object_get(it, "content"), i, err, err_len);
            if (!c) { rc = -1; break; }
            json_t *m = json_pack("{s:s,s:o}", "role", role, "content", c);
            if (!strcmp(role, "assistant") && pending_reasoning) {
                json_object_set_new(m, "reasoning_content", pending_reasoning);
                pending_reasoning = NULL;
            }
            json_array_append_new(msgs, m);
            last_calls = !strcmp(role, "assistant") ? m : NULL;
        } else if (!strcmp(type, "function_call")) {
            json_t *id = json_object_get(it, "call_id"), *nm = json_object_get(it, "name"), *args = json_object_get(it, "arguments");
            if (!json_is_string(id) || !json_is_string(nm) || !json_is_string(args)) {
                rc = errf(err, err_len, "input[%zu]: a function_call needs call_id, name and arguments strings", i);
                break;
            }
            if (!last_calls) {
                last_calls = json_pack("{s:s,s:s}", "role", "assistant", "content", "");
                if (pending_reasoning) {
                    json_object_set_new(last_calls, "reasoning_content", pending_reasoning);
                    pending_reasoning = NULL;
                }
                json_array_append_new(msgs, last_calls);
            }
            json_t *calls = json_object_get(last_calls, "tool_calls");
            if (!calls) {
                calls = json_array();
                json_object_set_new(last_calls, "tool_calls", calls);
            }
            json_array_append_new(calls, json_pack("{s:O,s:s,s:{s:O,s:O}}", "id", id, "type", "function", "function",
                                                   "name", nm, "arguments", args));
        } else if (!strcmp(type, "function_call_output")) {
            json_t *id = json_object_get(it, "call_id"), *o = json_object_get(it, "output");
            if (!json_is_string(id)) { rc = errf(err, err_len, "input[%zu].call_id: expected a string", i); break; }
            json_t *c = input_text(o, i, err, err_len);
            if (!c) { rc = -1; break; }
            json_array_append_new(msgs, json_pack("{s:s,s:O,s:o}", "role", "tool", "tool_call_id", id, "content", c));
            last_calls = NULL;
        } else if (!strcmp(type, "reasoning")) {
            /* its text (content reasoning_text parts, else the summary) goes back as reasoning */
            json_t *parts = json_object_get(it, "content");
            if (!json_array_size(parts)) parts = json_object_get(it, "summary");
            json_t *text = json_string("");
            size_t k;
            json_t *p;
            json_array_foreach(parts, k, p) {
                json_t *t = json_object_get(p, "text");
                if (!json_is_string(t)) continue;
                json_t *joined = json_sprintf("%s%s", json_string_value(text), json_string_value(t));
                json_decref(text);
                text = joined ? joined : json_string("");
            }
            json_decref(pending_reasoning);
            pending_reasoning = text;
        } else {
            rc = errf(err, err_len, "input[%zu].type: '%.32s' is not supported", i, type);
            break;
        }
    }
    json_decref(pending_reasoning);
    return rc;
}

json_t *responses_to_chat(const char *body, size_t len, char *err, size_t err_len)
{
    json_t *in = api_body_object(body, len, err, err_len);
    if (!in) return NULL;
    json_t *out = json_object(), *msgs = json_array();
    json_object_set_new(out, "messages", msgs);
    int rc = 0;
    const char *key;
    json_t *x, *input = NULL, *instructions = NULL;
    json_object_foreach(in, key, x) {
        if (!strcmp(key, "input")) input = x;
        else if (!strcmp(key, "instructions")) instructions = x;
        else if (!strcmp(key, "model") || !strcmp(key, "temperature") || !strcmp(key, "top_p") ||
                 !strcmp(key, "stream") || !strcmp(key, "parallel_tool_calls") || !strcmp(key, "user") ||
                 !strcmp(key, "top_logprobs"))
            json_object_set(out, key, x);
        else if (!strcmp(key, "max_output_tokens")) json_object_set(out, "max_tokens", x);
        else if (!strcmp(key, "store")) {
            if (json_is_true(x)) { rc = errf(err, err_len, "store: only false is supported (nothing is stored, the API is stateless here)"); break; }
        } else if (!strcmp(key, "previous_response_id") || !strcmp(key, "conversation")) {
            if (!json_is_null(x)) { rc = errf(err, err_len, "%s: not supported: nothing is stored, send the whole conversation as input", key); break; }
        } else if (!strcmp(key, "metadata") || !strcmp(key, "include") || !strcmp(key, "truncation") ||
                   !strcmp(key, "service_tier") || !strcmp(key, "prompt_cache_key") || !strcmp(key, "safety_identifier")) {
            /* bookkeeping fields: no effect on the answer */
        } else if (!strcmp(key, "reasoning")) {
            if (json_is_null(x)) continue;
            const char *effort = json_string_value(json_object_get(x, "effort"));
            if (!json_is_object(x)) { rc = errf(err, err_len, "reasoning: expected an object"); break; }
            /* asking for reasoning turns thinking on; "minimal"/"none" keep it off */
            bool think = !effort || (strcmp(effort, "minimal") && strcmp(effort, "none"));
            json_object_set_new(out, "thinking", json_boolean(think));
            if (effort && think) json_object_set_new(out, "reasoning_effort", json_string(effort));
        } else if (!strcmp(key, "text")) {
            json_t *fmt = json_object_get(x, "format");
            const char *ft = json_string_value(json_object_get(fmt, "type"));
            if (fmt && (!ft || strcmp(ft, "text"))) {
                rc = errf(err, err_len, "text.format: only {\"type\": \"text\"} is supported here");
                break;
            }
        } else if (!strcmp(key, "tools")) {
            if ((rc = convert_tools(x, out, err, err_len))) break;
        } else if (!strcmp(key, "tool_choice")) {
            const char *t = json_string_value(x);
            if (t) json_object_set(out, "tool_choice", x);
            else if (json_is_object(x) && json_is_string(json_object_get(x, "name")))
                json_object_set_new(out, "tool_choice", json_pack("{s:s,s:{s:O}}", "type", "function", "function", "name",
                                                                  json_object_get(x, "name")));
            else { rc = errf(err, err_len, "tool_choice: expected auto, none, required or {\"type\": \"function\", \"name\": ...}"); break; }
        } else {
            rc = errf(err, err_len, "%.64s: unknown field", key);
            break;
        }
    }
    if (!rc && instructions && !json_is_null(instructions)) {
        if (!json_is_string(instructions)) rc = errf(err, err_len, "instructions: expected a string");
        else json_array_append_new(msgs, json_pack("{s:s,s:O}", "role", "system", "content", instructions));
    }
    if (!rc && !input) rc = errf(err, err_len, "input: missing");
    if (!rc) rc = convert_input(input, msgs, err, err_len);
    json_decref(in);
    if (rc) {
        json_decref(out);
        return NULL;
    }
    return out;
}

/* ---- answers ---- */

static json_t *usage(const struct api_result *res)
{
    return json_pack("{s:I,s:{s:i},s:I,s:{s:i},s:I}", "input_tokens", (json_int_t)res->n_in, "input_tokens_details",
                     "cached_tokens", 0, "output_tokens", (json_int_t)res->n_out, "output_tokens_details",
                     "reasoning_tokens", 0, "total_tokens", (json_int_t)(res->n_in + res->n_out));
}

static json_t *item_id(const char *prefix, const struct api_result *res, int k)
{
    return json_sprintf("%s_%s_%d", prefix, res->id, k);
}

static json_t *reasoning_item(const struct api_result *res, int k, const char *text, size_t n, const char *status)
{
    (void)status;
    return json_pack("{s:s,s:o,s:[],s:[{s:s,s:s%}]}", "type", "reasoning", "id", item_id("rs", res, k), "summary",
                     "content", "type", "reasoning_text", "text", text, n);
}

static json_t *message_item(const struct api_result *res, int k, const char *text, size_t n, const char *status)
{
    json_t *content = text ? json_pack("[{s:s,s:s%,s:[]}]", "type", "output_text", "text", text, n, "annotations")
                           : json_array();
    return json_pack("{s:s,s:o,s:s,s:s,s:o}", "type", "message", "id", item_id("msg", res, k), "status", status,
                     "role", "assistant", "content", content);
}

static json_t *call_item(const struct api_result *res, int k, uint32_t i, const char *args, const char *status)
{
    char call_id[80];
    snprintf(call_id, sizeof call_id, "call_%s_%u", res->id, i);
    return json_pack("{s:s,s:o,s:s,s:s,s:s,s:s}", "type", "function_call", "id", item_id("fc", res, k), "call_id",
                     call_id, "name", res->calls->calls[i].name, "arguments", args, "status", status);
}

static json_t *response_object(const struct api_result *res, const char *status, json_t *output)
{
    char id[64];
    snprintf(id, sizeof id, "resp_%s", res->id);
    bool done = strcmp(status, "in_progress") != 0;
    json_t *o = json_pack("{s:s,s:s,s:I,s:s,s:o,s:n,s:s,s:o,s:b,s:n,s:o}", "id", id, "object", "response",
                          "created_at", (json_int_t)res->created, "status", status, "incomplete_details",
                          !strcmp(status, "incomplete") ? json_pack("{s:s}", "reason", "max_output_tokens") : json_null(),
                          "error", "model", res->model, "output", output, "store", 0, "previous_response_id",
                          "usage", done ? usage(res) : json_null());
    return o;
}

json_t *responses_json(const struct api_result *res, const char *status)
{
    json_t *out = json_array();
    int k = 0;
    if (res->reasoning) json_array_append_new(out, reasoning_item(res, k++, res->reasoning, res->reasoning_len, "completed"));
    if (res->content_len || !res->calls || !res->calls->n_calls)
        json_array_append_new(out, message_item(res, k++, res->content, res->content_len, "completed"));
    for (uint32_t i = 0; res->calls && i < res->calls->n_calls; i++)
        json_array_append_new(out, call_item(res, k++, i, res->calls->calls[i].arguments, "completed"));
    json_t *o = response_object(res, status, out);
    size_t n = res->content_len;
    json_object_set_new(o, "output_text", json_stringn(res->content ? res->content : "", n));
    return o;
}

static void event(struct api_stream *st, json_t *events, const char *name, json_t *data)
{
    json_object_set_new(data, "type", json_string(name));
    json_object_set_new(data, "sequence_number", json_integer((json_int_t)st->seq++));
    json_array_append_new(events, json_pack("[s,o]", name, data));
}

void responses_stream_start(struct api_stream *st, const struct api_result *head, json_t *events)
{
    memset(st, 0, sizeof *st);
    st->block = -1;
    event(st, events, "response.created", json_pack("{s:o}", "response", response_object(head, "in_progress", json_array())));
    event(st, events, "response.in_progress", json_pack("{s:o}", "response", response_object(head, "in_progress", json_array())));
}

/* The open item (reasoning 1, message 2) is done: its closing events carry the whole text,
 * which the caller keeps (the stream passes only deltas), so done events carry the text
 * of [text, text + len) given. */
static void close_item(struct api_stream *st, const struct api_result *res, const char *text, size_t len, json_t *events)
{
    if (st->block < 0) return;
    int k = st->block;
    if (st->open == 2) {
        event(st, events, "response.output_text.done",
              json_pack("{s:o,s:i,s:i,s:s%}", "item_id", item_id("msg", res, k), "output_index", k, "content_index", 0,
                        "text", text, len));
        event(st, events, "response.content_part.done",
              json_pack("{s:o,s:i,s:i,s:{s:s,s:s%,s:[]}}", "item_id", item_id("msg", res, k), "output_index", k,
                        "content_index", 0, "part", "type", "output_text", "text", text, len, "annotations"));
        event(st, events, "response.output_item.done",
              json_pack("{s:i,s:o}", "output_index", k, "item", message_item(res, k, text, len, "completed")));
    } else {
        event(st, events, "response.reasoning_text.done",
              json_pack("{s:o,s:i,s:i,s:s%}", "item_id", item_id("rs", res, k), "output_index", k, "content_index", 0,
                        "text", text, len));
        event(st, events, "response.output_item.done",
              json_pack("{s:i,s:o}", "output_index", k, "item", reasoning_item(res, k, text, len, "completed")));
    }
    st->block = -1;
    st->open = 0;
}

void responses_stream_delta(struct api_stream *st, const struct api_result *head, bool reasoning, const char *text,
                            size_t n, json_t *events)
{
    int kind = reasoning ? 1 : 2;
    if (st->open != kind) {
        /* leaving the reasoning: its item closes with the reasoning text */
        if (st->open == 1) close_item(st, head, head->reasoning, head->reasoning_len, events);
        st->block = st->next_block++;
        st->open = kind;
        int k = st->block;
        if (kind == 2) {
            event(st, events, "response.output_item.added",
                  json_pack("{s:i,s:o}", "output_index", k, "item", message_item(head, k, NULL, 0, "in_progress")));
            event(st, events, "response.content_part.added",
                  json_pack("{s:o,s:i,s:i,s:{s:s,s:s,s:[]}}", "item_id", item_id("msg", head, k), "output_index", k,
                            "content_index", 0, "part", "type", "output_text", "text", "", "annotations"));
        } else {
            event(st, events, "response.output_item.added",
                  json_pack("{s:i,s:o}", "output_index", k, "item",
                            json_pack("{s:s,s:o,s:[]}", "type", "reasoning", "id", item_id("rs", head, k), "summary")));
        }
    }
    int k = st->block;
    if (!reasoning) st->text_len += n + 1; /* nonzero once a message item is open */
    if (reasoning)
        event(st, events, "response.reasoning_text.delta",
              json_pack("{s:o,s:i,s:i,s:s%}", "item_id", item_id("rs", head, k), "output_index", k, "content_index", 0,
                        "delta", text, n));
    else
        event(st, events, "response.output_text.delta",
              json_pack("{s:o,s:i,s:i,s:s%,s:[]}", "item_id", item_id("msg", head, k), "output_index", k,
                        "content_index", 0, "delta", text, n, "logprobs"));
}

void responses_stream_end(struct api_stream *st, const struct api_result *res, json_t *events)
{
    if (st->open == 1) close_item(st, res, res->reasoning, res->reasoning_len, events);
    if (!st->text_len && (!res->calls || !res->calls->n_calls))
        responses_stream_delta(st, res, false, "", 0, events); /* an empty answer is still a message */
    if (st->open == 2) close_item(st, res, res->content, res->content_len, events);
    for (uint32_t i = 0; res->calls && i < res->calls->n_calls; i++) {
        int k = st->next_block++;
        event(st, events, "response.output_item.added",
              json_pack("{s:i,s:o}", "output_index", k, "item", call_item(res, k, i, "", "in_progress")));
        event(st, events, "response.function_call_arguments.delta",
              json_pack("{s:o,s:i,s:s}", "item_id", item_id("fc", res, k), "output_index", k, "delta",
                        res->calls->calls[i].arguments));
        event(st, events, "response.function_call_arguments.done",
              json_pack("{s:o,s:i,s:s}", "item_id", item_id("fc", res, k), "output_index", k, "arguments",
                        res->calls->calls[i].arguments));
        event(st, events, "response.output_item.done",
              json_pack("{s:i,s:o}", "output_index", k, "item", call_item(res, k, i, res->calls->calls[i].arguments, "completed")));
    }
    const char *status = res->end == API_END_LENGTH ? "incomplete" : "completed";
    event(st, events, !strcmp(status, "completed") ? "response.completed" : "response.incomplete",
          json_pack("{s:o}", "response", responses_json(res, status)));
}

/* A stream whose generation failed (device lost, deadline, shutdown, model swap): an
 * `error` event (what SDKs raise), then `response.failed` carrying the same code and message
 * in the response's `error`, so a client that only follows response.* events sees the end
 * too. Items already opened are left as they were: the response failed as a whole. */
void responses_stream_failed(struct api_stream *st, const struct api_result *head, const char *code,
                             const char *message, json_t *events)
{
    event(st, events, "error", json_pack("{s:s,s:s,s:n}", "code", code, "message", message, "param"));
    json_t *o = response_object(head, "failed", json_array());
    json_object_set_new(o, "error", json_pack("{s:s,s:s}", "code", code, "message", message));
    event(st, events, "response.failed", json_pack("{s:o}", "response", o));
}
