/* JSON request bodies → struct gen_request (see request_parse.h). Every field is checked for
 * type and range here, once, so nothing downstream sees a negative count, a NaN, an
 * oversized string or a field it does not implement. */
#include "firmware/request_parse.h"
#include "firmware/request_tools.h"

#include "common/errmsg.h"
#include "engine/engine.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

void req_limits_default(struct req_limits *lim)
{
    lim->max_body_bytes = 1u << 20;
    lim->max_tokens = 4096;
    lim->default_max_tokens = 256;
    lim->max_stop = REQ_MAX_STOP; /* code assistants send 7 or more */
    lim->max_stop_len = 64;
    lim->max_messages = 256;
    lim->max_detok_tokens = 65536;
}

void gen_request_free(struct gen_request *r)
{
    free(r->prompt);
    for (uint32_t i = 0; r->messages && i <= r->n_messages; i++) {
        /* the entry past n_messages is the one a failed parse left half filled (calloc'd) */
        if (i == r->n_messages && i == r->messages_cap) break;
        free(r->messages[i].content);
        free(r->messages[i].reasoning);
        req_message_tools_free(&r->messages[i]);
    }
    free(r->messages);
    for (uint32_t i = 0; i < r->n_stop; i++) free(r->stop[i]);
    jg_schema_free(r->schema);
    dsml_grammar_free(r->calls);
    free(r->logit_bias);
    free(r->suffix);
    req_tools_free(r);
    memset(r, 0, sizeof *r);
}

static json_t *load(const char *body, size_t len, char *err, size_t err_len)
{
    json_error_t je;
    /* Duplicate keys are refused: two "max_tokens" would make the effective value depend on
     * the parser. jansson also refuses invalid UTF-8; \u0000 is allowed, since the daemon's
     * own answers may hold it and clients send them back as history. */
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &je);
    if (!root) {
        errf(err, err_len, "body: invalid JSON at byte %d: %s", je.position, je.text);
        return NULL;
    }
    if (!json_is_object(root)) {
        json_decref(root);
        errf(err, err_len, "body: expected a JSON object");
        return NULL;
    }
    return root;
}

static int get_uint(json_t *v, const char *name, uint64_t lo, uint64_t hi, uint32_t *out, char *err, size_t err_len)
{
    if (!json_is_integer(v)) return errf(err, err_len, "%s: expected an integer", name);
    json_int_t x = json_integer_value(v);
    if (x < (json_int_t)lo || (uint64_t)x > hi)
        return errf(err, err_len, "%s: %lld out of range [%llu, %llu]", name, (long long)x, (unsigned long long)lo,
                    (unsigned long long)hi);
    *out = (uint32_t)x;
    return 0;
}

/* Range with open/closed ends given by lo_open/hi_open. */
static int get_float(json_t *v, const char *name, double lo, bool lo_open, double hi, bool hi_open, float *out,
                     char *err, size_t err_len)
{
    if (!json_is_number(v)) return errf(err, err_len, "%s: expected a number", name);
    double x = json_number_value(v);
    if (!isfinite(x) || (lo_open ? x <= lo : x < lo) || (hi_open ? x >= hi : x > hi))
        return errf(err, err_len, "%s: %g out of range %c%g, %g%c", name, x, lo_open ? '(' : '[', lo, hi,
                    hi_open ? ')' : ']');
    *out = (float)x;
    return 0;
}

static int get_bool(json_t *v, const char *name, bool *out, char *err, size_t err_len)
{
    if (!json_is_boolean(v)) return errf(err, err_len, "%s: expected true or false", name);
    *out = json_is_true(v);
    return 0;
}

static int dup_string(json_t *v, const char *name, size_t max_len, char **out, char *err, size_t err_len)
{
    if (!json_is_string(v)) return errf(err, err_len, "%s: expected a string", name);
    size_t n = json_string_length(v);
    if (n > max_len) return errf(err, err_len, "%s: %zu bytes, at most %zu", name, n, max_len);
    *out = malloc(n + 1); /* memcpy, not strndup: the text may hold U+0000 */
    if (!*out) return errf(err, err_len, "%s: out of memory", name);
    memcpy(*out, json_string_value(v), n);
    (*out)[n] = 0;
    return 0;
}

static int parse_stop(json_t *v, const struct req_limits *lim, struct gen_request *r, char *err, size_t err_len)
{
    if (json_is_null(v)) return 0;
    json_t *one[1] = { v };
    json_t **items = one;
    size_t n = 1;
    if (json_is_array(v)) {
        n = json_array_size(v);
        items = NULL;
    } else if (!json_is_string(v)) {
        return errf(err, err_len, "stop: expected a string or an array of strings");
    }
    if (n > lim->max_stop || n > REQ_MAX_STOP)
        return errf(err, err_len, "stop: %zu strings, at most %u", n, lim->max_stop < REQ_MAX_STOP ? lim->max_stop : REQ_MAX_STOP);
    for (size_t i = 0; i < n; i++) {
        json_t *s = items ? items[i] : json_array_get(v, i);
        char name[32];
        snprintf(name, sizeof name, "stop[%zu]", i);
        if (dup_string(s, name, lim->max_stop_len, &r->stop[r->n_stop], err, err_len)) return -1;
        r->n_stop++;
        if (!r->stop[r->n_stop - 1][0]) return errf(err, err_len, "%s: empty string", name);
    }
    return 0;
}

static int parse_thinking(json_t *v, bool *out, char *err, size_t err_len)
{
    if (json_is_boolean(v)) {
        *out = json_is_true(v);
        return 0;
    }
    if (json_is_object(v)) {
        const char *key;
        json_t *x;
        json_object_foreach(v, key, x) {
            if (strcmp(key, "type")) return errf(err, err_len, "thinking.%s: unknown field", key);
            const char *t = json_string_value(x);
            if (t && !strcmp(t, "enabled")) *out = true;
            else if (t && !strcmp(t, "disabled")) *out = false;
            else return errf(err, err_len, "thinking.type: expected \"enabled\" or \"disabled\"");
        }
        return 0;
    }
    return errf(err, err_len, "thinking: expected true, false or {\"type\": \"enabled\"|\"disabled\"}");
}

/* Content is a string or an array of {"type":"text","text":...} parts (cache_control, an
 * Anthropic-style hint clients add, is accepted and has no effect), concatenated. */
static int parse_content(json_t *v, const char *name, char **out, size_t *out_len, char *err, size_t err_len)
{
    if (json_is_string(v)) {
        *out_len = json_string_length(v);
        return dup_string(v, name, SIZE_MAX, out, err, err_len);
    }
    if (!json_is_array(v)) return errf(err, err_len, "%s: expected a string or an array of text parts", name);
    size_t total = 0, i;
    json_t *part;
    json_array_foreach(v, i, part) {
        json_t *type = json_object_get(part, "type"), *text = json_object_get(part, "text");
        const char *ts = json_string_value(type);
        if (ts && (!strcmp(ts, "image_url") || !strcmp(ts, "image") || !strcmp(ts, "input_image") ||
                   !strcmp(ts, "input_audio") || !strcmp(ts, "file")))
            return errf(err, err_len, "%s[%zu]: %s parts are not supported: the model has no vision or audio "
                        "input, only text", name, i, ts);
        size_t extra = json_object_get(part, "cache_control") ? 1 : 0;
        if (!json_is_object(part) || json_object_size(part) != 2 + extra || !ts || strcmp(ts, "text") ||
            !json_is_string(text))
            return errf(err, err_len, "%s[%zu]: expected {\"type\": \"text\", \"text\": string}", name, i);
        total += json_string_length(text);
    }
    char *s = malloc(total + 1);
    if (!s) return errf(err, err_len, "%s: out of memory", name);
    size_t off = 0;
    json_array_foreach(v, i, part) {
        json_t *text = json_object_get(part, "text");
        memcpy(s + off, json_string_value(text), json_string_length(text));
        off += json_string_length(text);
    }
    s[off] = 0;
    *out = s;
    *out_len = off;
    return 0;
}

static int parse_messages(json_t *v, const struct req_limits *lim, struct gen_request *r, char *err, size_t err_len)
{
    if (!json_is_array(v)) return errf(err, err_len, "messages: expected an array");
    size_t n = json_array_size(v);
    if (n == 0) return errf(err, err_len, "messages: empty");
    if (n > lim->max_messages) return errf(err, err_len, "messages: %zu, at most %u", n, lim->max_messages);
    r->messages = calloc(n, sizeof *r->messages);
    if (!r->messages) return errf(err, err_len, "messages: out of memory");
    r->messages_cap = (uint32_t)n;
    for (size_t i = 0; i < n; i++) {
        json_t *m = json_array_get(v, i);
        char name[48];
        if (!json_is_object(m)) return errf(err, err_len, "messages[%zu]: expected an object", i);
        const char *key;
        json_t *x;
        json_t *role = NULL, *content = NULL, *tool_calls = NULL, *tool_call_id = NULL, *reasoning = NULL;
        json_object_foreach(m, key, x) {
            if (!strcmp(key, "role")) role = x;
            else if (!strcmp(key, "content")) content = x;
            else if (!strcmp(key, "tool_calls")) tool_calls = x;
            else if (!strcmp(key, "tool_call_id")) tool_call_id = x;
            else if (!strcmp(key, "reasoning_content") || !strcmp(key, "reasoning")) {
                if (reasoning && !json_is_null(reasoning) && !json_is_null(x))
                    return errf(err, err_len, "messages[%zu]: both reasoning and reasoning_content", i);
                if (!reasoning || json_is_null(reasoning)) reasoning = x;
            } else if (!strcmp(key, "name")) {
                if (!json_is_string(x) && !json_is_null(x)) return errf(err, err_len, "messages[%zu].name: expected a string", i);
            } else if (!strcmp(key, "refusal") || !strcmp(key, "annotations") || !strcmp(key, "audio") ||
                       !strcmp(key, "function_call")) {
                /* fields of OpenAI's own answers that clients echo back as history: null only */
                if (!json_is_null(x) && !(json_is_array(x) && json_array_size(x) == 0))
                    return errf(err, err_len, "messages[%zu].%s: only null is supported", i, key);
            } else return errf(err, err_len, "messages[%zu].%s: unknown field", i, key);
        }
        const char *rs = json_string_value(role);
        struct req_message *msg = &r->messages[i];
        if (!rs) return errf(err, err_len, "messages[%zu].role: expected a string", i);
        if (!strcmp(rs, "system") || !strcmp(rs, "developer")) msg->role = REQ_ROLE_SYSTEM;
        else if (!strcmp(rs, "user")) msg->role = REQ_ROLE_USER;
        else if (!strcmp(rs, "assistant")) msg->role = REQ_ROLE_ASSISTANT;
        else if (!strcmp(rs, "tool")) msg->role = REQ_ROLE_TOOL;
        else return errf(err, err_len, "messages[%zu].role: '%.32s', expected system, developer, user, assistant or tool", i, rs);
        if (tool_calls && !json_is_null(tool_calls) && msg->role != REQ_ROLE_ASSISTANT)
            return errf(err, err_len, "messages[%zu].tool_calls: only assistant messages make calls", i);
        if (reasoning && !json_is_null(reasoning) && msg->role != REQ_ROLE_ASSISTANT)
            return errf(err, err_len, "messages[%zu].reasoning_content: only assistant messages reason", i);
        if (tool_call_id && msg->role != REQ_ROLE_TOOL)
            return errf(err, err_len, "messages[%zu].tool_call_id: only tool messages answer a call", i);
        snprintf(name, sizeof name, "messages[%zu].content", i);
        /* an assistant message that only calls tools has content null (or none) */
        if (msg->role == REQ_ROLE_ASSISTANT && (!content || json_is_null(content))) {
            msg->content = strdup("");
            if (!msg->content) return errf(err, err_len, "%s: out of memory", name);
        } else {
            if (!content) return errf(err, err_len, "%s: missing", name);
            if (parse_content(content, name, &msg->content, &msg->content_len, err, err_len)) return -1;
        }
        if (reasoning && !json_is_null(reasoning)) {
            snprintf(name, sizeof name, "messages[%zu].reasoning_content", i);
            if (parse_content(reasoning, name, &msg->reasoning, &msg->reasoning_len, err, err_len)) return -1;
        }
        if (tool_call_id && !json_is_null(tool_call_id)) {
            snprintf(name, sizeof name, "messages[%zu].tool_call_id", i);
            if (dup_string(tool_call_id, name, 256, &msg->tool_call_id, err, err_len)) return -1;
        }
        if (tool_calls && req_parse_tool_calls(tool_calls, i, msg, err, err_len)) return -1;
        r->n_messages++;
    }
    return 0;
}

/* {"token id": bias}: OpenAI's map from token ids (as strings) to [-100, 100]. */
static int parse_logit_bias(json_t *v, struct gen_request *r, char *err, size_t err_len)
{
    if (json_is_null(v)) return 0;
    if (!json_is_object(v)) return errf(err, err_len, "logit_bias: expected an object of token id -> number");
    size_t n = json_object_size(v);
    if (n == 0) return 0;
    if (n > 1024) return errf(err, err_len, "logit_bias: %zu entries, at most 1024", n);
    r->logit_bias = calloc(n, sizeof *r->logit_bias);
    if (!r->logit_bias) return errf(err, err_len, "logit_bias: out of memory");
    const char *key;
    json_t *x;
    json_object_foreach(v, key, x) {
        char *end;
        long long id = strtoll(key, &end, 10);
        if (!*key || *end || id < 0 || id > INT32_MAX)
            return errf(err, err_len, "logit_bias: key '%.32s': expected a token id", key);
        char name[64];
        snprintf(name, sizeof name, "logit_bias.%.32s", key);
        struct req_logit_bias *b = &r->logit_bias[r->n_logit_bias];
        if (get_float(x, name, -100, false, 100, false, &b->bias, err, err_len)) return -1;
        b->tok = (int32_t)id;
        r->n_logit_bias++;
    }
    return 0;
}

/* Fields both endpoints share. Returns 1 when the key was one of them, 0 when not, -1 on
 * a bad value. */
static int parse_common(const char *key, json_t *x, const struct req_limits *lim, struct gen_request *r,
                        bool *max_tokens_seen, char *err, size_t err_len)
{
    if (!strcmp(key, "model")) {
        if (!json_is_string(x) || json_string_length(x) >= sizeof r->model)
            return errf(err, err_len, "model: expected a string of at most %zu bytes", sizeof r->model - 1);
        memcpy(r->model, json_string_value(x), json_string_length(x) + 1);
    } else if (!strcmp(key, "max_tokens") || !strcmp(key, "max_completion_tokens")) {
        if (json_is_null(x)) return 1;
        /* max_completion_tokens is the newer name; when both come, it wins. */
        if (*max_tokens_seen && !strcmp(key, "max_tokens")) {
            uint32_t ignored;
            return get_uint(x, key, 1, lim->max_tokens, &ignored, err, err_len) ? -1 : 1;
        }
        if (get_uint(x, key, 1, lim->max_tokens, &r->max_tokens, err, err_len)) return -1;
        *max_tokens_seen = !strcmp(key, "max_completion_tokens");
    } else if (!strcmp(key, "temperature")) {
        if (!json_is_null(x) && get_float(x, key, 0, false, 2, false, &r->temperature, err, err_len)) return -1;
    } else if (!strcmp(key, "top_p")) {
        if (!json_is_null(x) && get_float(x, key, 0, true, 1, false, &r->top_p, err, err_len)) return -1;
    } else if (!strcmp(key, "min_p")) {
        if (!json_is_null(x) && get_float(x, key, 0, false, 1, true, &r->min_p, err, err_len)) return -1;
    } else if (!strcmp(key, "top_k")) {
        if (!json_is_null(x) && get_uint(x, key, 0, 1u << 20, &r->top_k, err, err_len)) return -1;
    } else if (!strcmp(key, "seed")) {
        if (json_is_null(x)) return 1;
        if (!json_is_integer(x)) return errf(err, err_len, "seed: expected an integer");
        r->has_seed = true;
        r->seed = (uint64_t)json_integer_value(x);
    } else if (!strcmp(key, "stop")) {
        if (parse_stop(x, lim, r, err, err_len)) return -1;
    } else if (!strcmp(key, "stream")) {
        if (!json_is_null(x) && get_bool(x, key, &r->stream, err, err_len)) return -1;
    } else if (!strcmp(key, "stream_options")) {
        if (json_is_null(x)) return 1;
        if (!json_is_object(x)) return errf(err, err_len, "stream_options: expected an object");
        const char *k;
        json_t *y;
        json_object_foreach(x, k, y) {
            if (strcmp(k, "include_usage")) return errf(err, err_len, "stream_options.%s: unknown field", k);
            if (get_bool(y, "stream_options.include_usage", &r->include_usage, err, err_len)) return -1;
        }
    } else if (!strcmp(key, "ignore_eos")) {
        if (!json_is_null(x) && get_bool(x, key, &r->ignore_eos, err, err_len)) return -1;
    } else if (!strcmp(key, "n")) {
        if (!json_is_null(x) && get_uint(x, key, 1, REQ_MAX_N, &r->n, err, err_len)) return -1;
    } else if (!strcmp(key, "user")) {
        if (!json_is_string(x) && !json_is_null(x)) return errf(err, err_len, "user: expected a string");
    } else if (!strcmp(key, "presence_penalty")) {
        if (!json_is_null(x) && get_float(x, key, -2, false, 2, false, &r->presence_penalty, err, err_len)) return -1;
    } else if (!strcmp(key, "frequency_penalty")) {
        if (!json_is_null(x) && get_float(x, key, -2, false, 2, false, &r->frequency_penalty, err, err_len)) return -1;
    } else if (!strcmp(key, "logit_bias")) {
        if (parse_logit_bias(x, r, err, err_len)) return -1;
    } else if (!strcmp(key, "store")) {
        /* nothing is ever stored here: false (or null) is the only true answer */
        if (!json_is_null(x) && (!json_is_boolean(x) || json_is_true(x)))
            return errf(err, err_len, "store: only false is supported (this server keeps no completions)");
    } else if (!strcmp(key, "top_logprobs")) {
        if (!json_is_null(x) && get_uint(x, key, 0, REQ_MAX_TOP_LOGPROBS, &r->top_logprobs, err, err_len)) return -1;
    } else if (!strcmp(key, "logprobs")) {
        /* chat: true or false (top_logprobs says how many alternatives); completions: the
         * number of alternatives, as the legacy API has it */
        if (json_is_null(x)) return 1;
        if (json_is_boolean(x)) {
            r->logprobs = json_is_true(x);
        } else if (r->kind == REQ_COMPLETION && json_is_integer(x)) {
            if (get_uint(x, key, 0, REQ_MAX_TOP_LOGPROBS, &r->top_logprobs, err, err_len)) return -1;
            r->logprobs = true;
        } else {
            return errf(err, err_len, r->kind == REQ_CHAT ? "logprobs: expected true or false"
                                                          : "logprobs: expected an integer 0 to %d", REQ_MAX_TOP_LOGPROBS);
        }
    } else {
        return 0;
    }
    return 1;
}

/* ---- response_format (structured output) ----
 * {"type": "text"}, {"type": "json_object"} or {"type": "json_schema", "json_schema":
 * {"name": str, "description"?: str, "schema"?: object, "strict"?: bool}}. The schema is
 * compiled here, so an unsupported keyword is a 400 naming it before anything is queued.
 * (A json_schema without "schema" allows any JSON value.) */
static int parse_response_format(json_t *x, struct gen_request *r, char *err, size_t err_len)
{
    if (json_is_null(x)) return 0;
    json_t *type = json_object_get(x, "type");
    const char *t = json_string_value(type);
    if (!json_is_object(x) || !t)
        return errf(err, err_len, "response_format: expected {\"type\": \"text\" | \"json_object\" | \"json_schema\", ...}");
    const char *key;
    json_t *v;
    json_t *spec = NULL;
    json_object_foreach(x, key, v) {
        if (!strcmp(key, "type")) continue;
        if (!strcmp(t, "json_schema") && !strcmp(key, "json_schema")) spec = v;
        else return errf(err, err_len, "response_format.%.64s: unknown field", key);
    }
    if (!strcmp(t, "text")) return 0;
    if (!strcmp(t, "json_object")) return jg_schema_any_object(&r->schema, err, err_len);
    if (strcmp(t, "json_schema"))
        return errf(err, err_len, "response_format.type: '%.32s', expected text, json_object or json_schema", t);
    if (!json_is_object(spec)) return errf(err, err_len, "response_format.json_schema: expected an object");
    json_t *schema = NULL;
    json_object_foreach(spec, key, v) {
        if (!strcmp(key, "name")) {
            if (!json_is_string(v) || json_string_length(v) == 0 || json_string_length(v) > 64)
                return errf(err, err_len, "response_format.json_schema.name: expected a string of 1 to 64 bytes");
        } else if (!strcmp(key, "description")) {
            if (!json_is_string(v)) return errf(err, err_len, "response_format.json_schema.description: expected a string");
        } else if (!strcmp(key, "strict")) {
            if (!json_is_boolean(v) && !json_is_null(v))
                return errf(err, err_len, "response_format.json_schema.strict: expected true or false");
        } else if (!strcmp(key, "schema")) {
            schema = v;
        } else {
            return errf(err, err_len, "response_format.json_schema.%.64s: unknown field", key);
        }
    }
    if (!json_object_get(spec, "name")) return errf(err, err_len, "response_format.json_schema.name: missing");
    char *text = schema ? json_dumps(schema, JSON_COMPACT | JSON_ENCODE_ANY) : strdup("{}");
    if (!text) return errf(err, err_len, "response_format: out of memory");
    int rc = jg_schema_compile(&r->schema, text, strlen(text), err, err_len);
    free(text);
    return rc ? errf_prefix(err, err_len, "response_format.json_schema") : 0;
}
/* ---- end of response_format ---- */

static void defaults(struct gen_request *r, enum req_kind kind, const struct req_limits *lim)
{
    memset(r, 0, sizeof *r);
    r->kind = kind;
    r->max_tokens = lim->default_max_tokens;
    r->temperature = 1.0f;
    r->top_p = 1.0f;
    r->parallel_tool_calls = true;
    r->n = 1;
}

static int parse_request(const char *body, size_t len, enum req_kind kind, const struct req_limits *lim,
                         struct gen_request *out, char *err, size_t err_len)
{
    defaults(out, kind, lim);
    if (len > lim->max_body_bytes) return errf(err, err_len, "body: %zu bytes, at most %llu", len, (unsigned long long)lim->max_body_bytes);
    json_t *root = load(body, len, err, err_len);
    if (!root) return -1;
    bool max_seen = false, have_input = false;
    const char *key;
    json_t *x;
    int rc = 0;
    json_object_foreach(root, key, x) {
        int c = parse_common(key, x, lim, out, &max_seen, err, err_len);
        if (c < 0) { rc = -1; break; }
        if (c == 1) continue;
        if (kind == REQ_CHAT && !strcmp(key, "messages")) {
            if (parse_messages(x, lim, out, err, err_len)) { rc = -1; break; }
            have_input = true;
        } else if (kind == REQ_CHAT && !strcmp(key, "thinking")) {
            if (parse_thinking(x, &out->thinking, err, err_len)) { rc = -1; break; }
        } else if (kind == REQ_CHAT && !strcmp(key, "chat_template_kwargs")) {
            const char *k;
            json_t *y;
            if (!json_is_object(x)) { rc = errf(err, err_len, "chat_template_kwargs: expected an object"); break; }
            json_object_foreach(x, k, y) {
                if (strcmp(k, "thinking") && strcmp(k, "enable_thinking")) {
                    rc = errf(err, err_len, "chat_template_kwargs.%s: unknown field", k);
                    break;
                }
                if (get_bool(y, "chat_template_kwargs.thinking", &out->thinking, err, err_len)) { rc = -1; break; }
            }
            if (rc) break;
        } else if (!strcmp(key, "response_format")) {
            if (out->schema) { rc = errf(err, err_len, "response_format: given twice"); break; }
            if (parse_response_format(x, out, err, err_len)) { rc = -1; break; }
        } else if (kind == REQ_CHAT && !strcmp(key, "tools")) {
            if (req_parse_tools(x, out, err, err_len)) { rc = -1; break; }
        } else if (kind == REQ_CHAT && !strcmp(key, "tool_choice")) {
            if (req_parse_tool_choice(x, out, err, err_len)) { rc = -1; break; }
        } else if (kind == REQ_CHAT && !strcmp(key, "parallel_tool_calls")) {
            if (!json_is_null(x) && get_bool(x, key, &out->parallel_tool_calls, err, err_len)) { rc = -1; break; }
        } else if (kind == REQ_CHAT && !strcmp(key, "reasoning_effort")) {
            /* V4 knows one effort setting beyond the default: "max" (the official encoder's
             * paragraph); OpenAI's lower levels and "high" are its default */
            const char *e = json_string_value(x);
            if (json_is_null(x)) continue;
            if (!e || (strcmp(e, "minimal") && strcmp(e, "low") && strcmp(e, "medium") && strcmp(e, "high") &&
                       strcmp(e, "max") && strcmp(e, "xhigh"))) {
                rc = errf(err, err_len, "reasoning_effort: expected minimal, low, medium, high, xhigh or max");
                break;
            }
            out->reasoning_max = !strcmp(e, "max") || !strcmp(e, "xhigh");
        } else if (kind == REQ_COMPLETION && !strcmp(key, "suffix")) {
            if (!json_is_null(x) && dup_string(x, "suffix", SIZE_MAX, &out->suffix, err, err_len)) { rc = -1; break; }
        } else if (kind == REQ_COMPLETION && !strcmp(key, "prompt")) {
            json_t *p = x;
            if (json_is_array(x)) {
                if (json_array_size(x) != 1) { rc = errf(err, err_len, "prompt: arrays must hold exactly one string"); break; }
                p = json_array_get(x, 0);
            }
            if (dup_string(p, "prompt", SIZE_MAX, &out->prompt, err, err_len)) { rc = -1; break; }
            have_input = true;
        } else {
            rc = errf(err, err_len, "%.64s: unknown field", key);
            break;
        }
    }
    json_decref(root);
    if (!rc && !have_input) rc = errf(err, err_len, kind == REQ_CHAT ? "messages: missing" : "prompt: missing");
    if (!rc && out->schema && out->ignore_eos)
        rc = errf(err, err_len, "ignore_eos: cannot be combined with response_format (the answer ends where the JSON does)");
    if (!rc) rc = req_check_tools(out, err, err_len);
    if (!rc && out->top_logprobs && !out->logprobs && kind == REQ_CHAT)
        rc = errf(err, err_len, "top_logprobs: needs logprobs: true");
    if (rc) gen_request_free(out);
    return rc;
}

int request_parse_chat(const char *body, size_t len, const struct req_limits *lim, struct gen_request *out,
                       char *err, size_t err_len)
{
    return parse_request(body, len, REQ_CHAT, lim, out, err, err_len);
}

int request_parse_completion(const char *body, size_t len, const struct req_limits *lim, struct gen_request *out,
                             char *err, size_t err_len)
{
    return parse_request(body, len, REQ_COMPLETION, lim, out, err, err_len);
}

int request_parse_tokenize(const char *body, size_t len, char **content, bool *add_special, char *err, size_t err_len)
{
    *content = NULL;
    *add_special = false;
    json_t *root = load(body, len, err, err_len);
    if (!root) return -1;
    const char *key;
    json_t *x;
    int rc = 0;
    json_object_foreach(root, key, x) {
        if (!strcmp(key, "content")) {
            free(*content);
            *content = NULL;
            if (dup_string(x, "content", SIZE_MAX, content, err, err_len)) { rc = -1; break; }
        } else if (!strcmp(key, "add_special")) {
            if (get_bool(x, "add_special", add_special, err, err_len)) { rc = -1; break; }
        } else {
            rc = errf(err, err_len, "%.64s: unknown field", key);
            break;
        }
    }
    json_decref(root);
    if (!rc && !*content) rc = errf(err, err_len, "content: missing");
    if (rc) {
        free(*content);
        *content = NULL;
    }
    return rc;
}

int request_parse_detokenize(const char *body, size_t len, uint32_t n_vocab, uint32_t max_tokens, int32_t **tokens,
                             uint32_t *n_tokens, char *err, size_t err_len)
{
    *tokens = NULL;
    *n_tokens = 0;
    json_t *root = load(body, len, err, err_len);
    if (!root) return -1;
    int rc = 0;
    json_t *arr = NULL;
    const char *key;
    json_t *x;
    json_object_foreach(root, key, x) {
        if (!strcmp(key, "tokens")) arr = x;
        else { rc = errf(err, err_len, "%.64s: unknown field", key); break; }
    }
    if (!rc && !json_is_array(arr)) rc = errf(err, err_len, "tokens: expected an array of integers");
    if (!rc && json_array_size(arr) > max_tokens) rc = errf(err, err_len, "tokens: %zu ids, at most %u", json_array_size(arr), max_tokens);
    if (!rc) {
        size_t n = json_array_size(arr);
        *tokens = malloc((n ? n : 1) * sizeof **tokens);
        if (!*tokens) rc = errf(err, err_len, "tokens: out of memory");
        for (size_t i = 0; !rc && i < n; i++) {
            json_t *t = json_array_get(arr, i);
            if (!json_is_integer(t) || json_integer_value(t) < 0 || json_integer_value(t) >= (json_int_t)n_vocab)
                rc = errf(err, err_len, "tokens[%zu]: expected an integer in [0, %u)", i, n_vocab);
            else (*tokens)[i] = (int32_t)json_integer_value(t);
        }
        *n_tokens = (uint32_t)n;
    }
    json_decref(root);
    if (rc) {
        free(*tokens);
        *tokens = NULL;
        *n_tokens = 0;
    }
    return rc;
}
