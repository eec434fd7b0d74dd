/* Tools in chat requests (see request_tools.h). */
#include "firmware/request_tools.h"

#include "common/errmsg.h"
#include "engine/engine.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- Python-style JSON ---- */

struct buf {
    char *p;
    size_t len, cap;
    int oom;
};

static void put(struct buf *b, const char *s, size_t n)
{
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = (b->len + n + 1) * 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

static void put_s(struct buf *b, const char *s) { put(b, s, strlen(s)); }

/* json.dumps escapes only '"', '\\' and the C0 controls (short forms where JSON has one);
 * everything else, DEL and non-ASCII included, stays as it is with ensure_ascii=False. */
static void put_string(struct buf *b, const char *s, size_t n)
{
    put_s(b, "\"");
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') continue;
        put(b, s + run, i - run);
        run = i + 1;
        char esc[8];
        switch (c) {
        case '"': put_s(b, "\\\""); break;
        case '\\': put_s(b, "\\\\"); break;
        case '\n': put_s(b, "\\n"); break;
        case '\r': put_s(b, "\\r"); break;
        case '\t': put_s(b, "\\t"); break;
        case '\b': put_s(b, "\\b"); break;
        case '\f': put_s(b, "\\f"); break;
        default:
            snprintf(esc, sizeof esc, "\\u%04x", c);
            put_s(b, esc);
        }
    }
    put(b, s + run, n - run);
    put_s(b, "\"");
}

/* Python's float repr: the shortest digits that read back to x, written positionally when
 * the decimal exponent is in [-4, 16), else as d.ddde+XX; always with a '.' or an 'e'. */
static void put_real(struct buf *b, double x)
{
    if (isnan(x)) { put_s(b, "NaN"); return; }
    if (isinf(x)) { put_s(b, x > 0 ? "Infinity" : "-Infinity"); return; }
    char sci[40];
    for (int p = 1; p <= 17; p++) {
        snprintf(sci, sizeof sci, "%.*e", p - 1, x);
        if (strtod(sci, NULL) == x) break;
    }
    /* sci: [-]d[.ddd]e[+-]XX */
    char digits[24];
    size_t nd = 0;
    const char *q = sci;
    bool neg = *q == '-';
    if (neg) q++;
    for (; *q && *q != 'e'; q++)
        if (*q != '.') digits[nd++] = *q;
    int exp = atoi(q + 1);
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    char out[64];
    size_t o = 0;
    if (neg) out[o++] = '-';
    if (exp >= -4 && exp < 16) {
        if (exp < 0) {
            out[o++] = '0';
            out[o++] = '.';
            for (int z = 0; z < -exp - 1; z++) out[o++] = '0';
            for (size_t k = 0; k < nd; k++) out[o++] = digits[k];
        } else {
            for (int k = 0; k <= exp; k++) out[o++] = (size_t)k < nd ? digits[k] : '0';
            out[o++] = '.';
            if ((size_t)exp + 1 < nd)
                for (size_t k = (size_t)exp + 1; k < nd; k++) out[o++] = digits[k];
            else
                out[o++] = '0';
        }
        out[o] = 0;
    } else {
        out[o++] = digits[0];
        if (nd > 1) {
            out[o++] = '.';
            for (size_t k = 1; k < nd; k++) out[o++] = digits[k];
        }
        snprintf(out + o, sizeof out - o, "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
    }
    put_s(b, out);
}

static void put_value(struct buf *b, const json_t *v)
{
    char num[32];
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        put_s(b, "{");
        const char *key;
        json_t *x;
        bool first = true;
        json_object_foreach((json_t *)v, key, x) {
            if (!first) put_s(b, ", ");
            first = false;
            put_string(b, key, strlen(key));
            put_s(b, ": ");
            put_value(b, x);
        }
        put_s(b, "}");
        break;
    }
    case JSON_ARRAY:
        put_s(b, "[");
        for (size_t i = 0; i < json_array_size(v); i++) {
            if (i) put_s(b, ", ");
            put_value(b, json_array_get(v, i));
        }
        put_s(b, "]");
        break;
    case JSON_STRING: put_string(b, json_string_value(v), json_string_length(v)); break;
    case JSON_INTEGER:
        snprintf(num, sizeof num, "%lld", (long long)json_integer_value(v));
        put_s(b, num);
        break;
    case JSON_REAL: put_real(b, json_real_value(v)); break;
    case JSON_TRUE: put_s(b, "true"); break;
    case JSON_FALSE: put_s(b, "false"); break;
    case JSON_NULL: put_s(b, "null"); break;
    }
}

char *req_json_python(const json_t *v, size_t *len)
{
    struct buf b = { 0 };
    put_value(&b, v);
    if (b.oom || !b.p) {
        free(b.p);
        return NULL;
    }
    if (len) *len = b.len;
    return b.p;
}

/* ---- parsing ---- */

static int dup_str(json_t *v, const char *name, char **out, char *err, size_t err_len)
{
    if (!json_is_string(v)) return errf(err, err_len, "%s: expected a string", name);
    *out = strndup(json_string_value(v), json_string_length(v));
    return *out ? 0 : errf(err, err_len, "%s: out of memory", name);
}

/* A function name as OpenAI allows it: [a-zA-Z0-9_.-]{1,64} ('.' for namespaced tools).
 * Also keeps '"' and '<' out of the DSML the name is written into. */
static int check_name(const char *s, const char *field, char *err, size_t err_len)
{
    size_t n = strlen(s);
    if (n == 0 || n > 64) return errf(err, err_len, "%s: %zu bytes, expected 1 to 64", field, n);
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-' ||
              c == '.'))
            return errf(err, err_len, "%s: '%.64s': only letters, digits, '_', '-' and '.'", field, s);
    }
    return 0;
}

int req_parse_tools(json_t *v, struct gen_request *r, char *err, size_t err_len)
{
    if (json_is_null(v)) return 0;
    if (!json_is_array(v)) return errf(err, err_len, "tools: expected an array");
    size_t n = json_array_size(v);
    if (n == 0) return 0;
    if (n > 128) return errf(err, err_len, "tools: %zu, at most 128", n);
    r->tools = calloc(n, sizeof *r->tools);
    if (!r->tools) return errf(err, err_len, "tools: out of memory");
    for (size_t i = 0; i < n; i++) {
        json_t *t = json_array_get(v, i), *fn = NULL;
        r->n_tools = (uint32_t)i + 1; /* counted first, so a half-parsed entry is freed too */
        if (!json_is_object(t)) return errf(err, err_len, "tools[%zu]: expected an object", i);
        const char *key;
        json_t *x;
        json_object_foreach(t, key, x) {
            if (!strcmp(key, "type")) {
                if (!json_is_string(x) || strcmp(json_string_value(x), "function"))
                    return errf(err, err_len, "tools[%zu].type: expected \"function\"", i);
            } else if (!strcmp(key, "function")) {
                fn = x;
            } else {
                return errf(err, err_len, "tools[%zu].%.64s: unknown field", i, key);
            }
        }
        if (!json_is_object(fn)) return errf(err, err_len, "tools[%zu].function: expected an object", i);
        json_object_foreach(fn, key, x) {
            if (!strcmp(key, "name")) {
                char name[48];
                snprintf(name, sizeof name, "tools[%zu].function.name", i);
                if (dup_str(x, name, &r->tools[i].name, err, err_len) || check_name(r->tools[i].name, name, err, err_len))
                    return -1;
            } else if (!strcmp(key, "description")) {
                if (!json_is_string(x)) return errf(err, err_len, "tools[%zu].function.description: expected a string", i);
            } else if (!strcmp(key, "parameters")) {
                if (json_is_null(x)) continue;
                if (!json_is_object(x)) return errf(err, err_len, "tools[%zu].function.parameters: expected an object", i);
                free(r->tools[i].parameters);
                if (!(r->tools[i].parameters = req_json_python(x, NULL))) return errf(err, err_len, "tools: out of memory");
            } else if (!strcmp(key, "strict")) {
                if (!json_is_boolean(x) && !json_is_null(x))
                    return errf(err, err_len, "tools[%zu].function.strict: expected true or false", i);
                r->tools[i].strict = json_is_true(x);
            } else {
                return errf(err, err_len, "tools[%zu].function.%.64s: unknown field", i, key);
            }
        }
        if (!r->tools[i].name) return errf(err, err_len, "tools[%zu].function.name: missing", i);
        for (size_t k = 0; k < i; k++)
            if (!strcmp(r->tools[k].name, r->tools[i].name))
                return errf(err, err_len, "tools[%zu].function.name: '%s' offered twice", i, r->tools[i].name);
        r->tools[i].schema = req_json_python(fn, NULL);
        if (!r->tools[i].schema) return errf(err, err_len, "tools: out of memory");
    }
    return 0;
}

int req_parse_tool_choice(json_t *v, struct gen_request *r, char *err, size_t err_len)
{
    if (json_is_null(v)) return 0;
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        if (!strcmp(s, "auto")) r->tool_choice = REQ_TOOL_AUTO;
        else if (!strcmp(s, "none")) r->tool_choice = REQ_TOOL_NONE;
        else if (!strcmp(s, "required")) r->tool_choice = REQ_TOOL_REQUIRED;
        else return errf(err, err_len, "tool_choice: '%.32s', expected auto, none, required or a function", s);
        return 0;
    }
    json_t *type = json_object_get(v, "type"), *fn = json_object_get(v, "function");
    json_t *name = json_object_get(fn, "name");
    if (!json_is_object(v) || json_object_size(v) != 2 || !json_is_string(type) ||
        strcmp(json_string_value(type), "function") || !json_is_object(fn) || json_object_size(fn) != 1 ||
        !json_is_string(name))
        return errf(err, err_len, "tool_choice: expected a string or {\"type\": \"function\", \"function\": {\"name\": string}}");
    free(r->tool_choice_name);
    r->tool_choice_name = NULL;
    if (dup_str(name, "tool_choice.function.name", &r->tool_choice_name, err, err_len)) return -1;
    r->tool_choice = REQ_TOOL_NAMED;
    return 0;
}

int req_check_tools(struct gen_request *r, char *err, size_t err_len)
{
    if ((r->tool_choice == REQ_TOOL_REQUIRED || r->tool_choice == REQ_TOOL_NAMED) && r->n_tools == 0)
        return errf(err, err_len, "tool_choice: a call is required but no tools are offered");
    int named = -1;
    if (r->tool_choice == REQ_TOOL_NAMED) {
        for (uint32_t i = 0; i < r->n_tools && named < 0; i++)
            if (!strcmp(r->tools[i].name, r->tool_choice_name)) named = (int)i;
        if (named < 0)
            return errf(err, err_len, "tool_choice.function.name: '%.64s' is not among the tools", r->tool_choice_name);
    }
    bool strict = false;
    for (uint32_t i = 0; i < r->n_tools; i++) strict |= r->tools[i].strict;
    if (r->tool_choice == REQ_TOOL_NONE || (r->tool_choice == REQ_TOOL_AUTO && (!strict || r->schema))) return 0;
    /* A forced call: the answer is held to the DSML call block of the offered tools (or the
     * named one), arguments to each tool's parameter schema. With a strict tool and "auto",
     * the same grammar holds a block the model opens on its own (r->calls_on_demand). */
    if (r->schema)
        return errf(err, err_len, "tool_choice: a required call and response_format cannot both shape the answer");
    r->calls_on_demand = r->tool_choice == REQ_TOOL_AUTO;
    struct dsml_tool d[DSML_MAX_TOOLS];
    uint32_t n = 0;
    for (uint32_t i = 0; i < r->n_tools && n < DSML_MAX_TOOLS; i++) {
        if (named >= 0 && (int)i != named) continue;
        const struct req_tool *t = &r->tools[i];
        d[n++] = (struct dsml_tool){ t->name, t->parameters, t->parameters ? strlen(t->parameters) : 0 };
    }
    char e[256];
    if (dsml_grammar_compile(&r->calls, d, n, r->parallel_tool_calls ? REQ_MAX_CALLS : 1, e, sizeof e))
        return errf(err, err_len, "tools: %s", e);
    return 0;
}

int req_parse_tool_calls(json_t *v, size_t i, struct req_message *m, char *err, size_t err_len)
{
    if (json_is_null(v)) return 0;
    if (!json_is_array(v)) return errf(err, err_len, "messages[%zu].tool_calls: expected an array", i);
    size_t n = json_array_size(v);
    if (n == 0) return 0;
    if (n > 128) return errf(err, err_len, "messages[%zu].tool_calls: %zu, at most 128", i, n);
    m->tool_calls = calloc(n, sizeof *m->tool_calls);
    if (!m->tool_calls) return errf(err, err_len, "messages[%zu].tool_calls: out of memory", i);
    for (size_t c = 0; c < n; c++) {
        json_t *tc = json_array_get(v, c), *fn = NULL;
        struct req_tool_call *call = &m->tool_calls[c];
        m->n_tool_calls = (uint32_t)c + 1;
        char name[80];
        if (!json_is_object(tc)) return errf(err, err_len, "messages[%zu].tool_calls[%zu]: expected an object", i, c);
        const char *key;
        json_t *x;
        json_object_foreach(tc, key, x) {
            snprintf(name, sizeof name, "messages[%zu].tool_calls[%zu].%s", i, c, key);
            if (!strcmp(key, "id")) {
                if (dup_str(x, name, &call->id, err, err_len)) return -1;
            } else if (!strcmp(key, "type")) {
                if (!json_is_string(x) || strcmp(json_string_value(x), "function"))
                    return errf(err, err_len, "%s: expected \"function\"", name);
            } else if (!strcmp(key, "function")) {
                fn = x;
            } else if (!strcmp(key, "index")) { /* streamed deltas carry it; clients echo it back */
                if (!json_is_integer(x)) return errf(err, err_len, "%s: expected an integer", name);
            } else {
                return errf(err, err_len, "%s: unknown field", name);
            }
        }
        if (!json_is_object(fn)) return errf(err, err_len, "messages[%zu].tool_calls[%zu].function: expected an object", i, c);
        json_object_foreach(fn, key, x) {
            snprintf(name, sizeof name, "messages[%zu].tool_calls[%zu].function.%s", i, c, key);
            if (!strcmp(key, "name")) {
                if (dup_str(x, name, &call->name, err, err_len) || check_name(call->name, name, err, err_len)) return -1;
            } else if (!strcmp(key, "arguments")) {
                /* a JSON string, as OpenAI sends it; some clients send the object itself */
                if (json_is_object(x)) call->arguments = req_json_python(x, NULL);
                else if (dup_str(x, name, &call->arguments, err, err_len)) return -1;
                if (!call->arguments) return errf(err, err_len, "%s: out of memory", name);
            } else {
                return errf(err, err_len, "%s: unknown field", name);
            }
        }
        snprintf(name, sizeof name, "messages[%zu].tool_calls[%zu].function", i, c);
        if (!call->name) return errf(err, err_len, "%s.name: missing", name);
        if (!call->arguments && !(call->arguments = strdup("{}"))) return errf(err, err_len, "%s: out of memory", name);
        if (!call->id && !(call->id = strdup(""))) return errf(err, err_len, "%s: out of memory", name);
    }
    return 0;
}

void req_message_tools_free(struct req_message *m)
{
    for (uint32_t c = 0; c < m->n_tool_calls; c++) {
        free(m->tool_calls[c].id);
        free(m->tool_calls[c].name);
        free(m->tool_calls[c].arguments);
    }
    free(m->tool_calls);
    free(m->tool_call_id);
    m->tool_calls = NULL;
    m->n_tool_calls = 0;
    m->tool_call_id = NULL;
}

void req_tools_free(struct gen_request *r)
{
    for (uint32_t i = 0; r->tools && i < r->n_tools; i++) {
        free(r->tools[i].name);
        free(r->tools[i].schema);
        free(r->tools[i].parameters);
    }
    free(r->tools);
    free(r->tool_choice_name);
    r->tools = NULL;
    r->n_tools = 0;
    r->tool_choice_name = NULL;
}
