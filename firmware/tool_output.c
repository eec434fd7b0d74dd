/* Parsing V4's DSML tool-call block (see tool_output.h). */
#include "firmware/tool_output.h"

#include "common/errmsg.h"
#include "firmware/request_tools.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define DSML "｜DSML｜"

static const char *find(const char *p, const char *end, const char *needle)
{
    size_t n = strlen(needle);
    if ((size_t)(end - p) < n) return NULL;
    return memmem(p, (size_t)(end - p), needle, n);
}

size_t tool_output_safe_prefix(const char *text, size_t len)
{
    const char *hit = find(text, text + len, TOOL_CALLS_START);
    if (hit) return (size_t)(hit - text);
    size_t m = strlen(TOOL_CALLS_START);
    for (size_t k = m - 1; k > 0; k--) /* the longest tail that is a prefix of the marker */
        if (k <= len && !memcmp(text + len - k, TOOL_CALLS_START, k)) return len - k;
    return len;
}

/* The earliest of two tags at or after p: which (0/1) and where, NULL when neither. */
static const char *first_of(const char *p, const char *end, const char *a, const char *b, int *which)
{
    const char *x = find(p, end, a), *y = b ? find(p, end, b) : NULL;
    if (x && (!y || x <= y)) {
        *which = 0;
        return x;
    }
    *which = 1;
    return y;
}

struct param {
    const char *name, *value;
    size_t name_len, value_len;
    bool is_string;
};

static int append(char **s, size_t *len, const char *p, size_t n)
{
    char *x = realloc(*s, *len + n + 1);
    if (!x) return -1;
    memcpy(x + *len, p, n);
    *len += n;
    x[*len] = 0;
    *s = x;
    return 0;
}

/* {"name": value, ...} as the official decoder builds it: string values JSON-quoted as
 * Python writes them, other values as the model wrote them, which must then be JSON. */
static char *arguments_json(const struct param *ps, size_t n, char *err, size_t err_len)
{
    char *s = NULL;
    size_t len = 0;
    int bad = append(&s, &len, "{", 1);
    for (size_t i = 0; i < n && !bad; i++) {
        json_t *k = json_stringn(ps[i].name, ps[i].name_len);
        size_t kl = 0, vl = 0;
        char *ks = k ? req_json_python(k, &kl) : NULL;
        json_decref(k);
        char *vs = NULL;
        if (ps[i].is_string) {
            json_t *v = json_stringn(ps[i].value, ps[i].value_len);
            vs = v ? req_json_python(v, &vl) : NULL;
            json_decref(v);
        }
        bad = !ks || (ps[i].is_string && !vs) || (i && append(&s, &len, ", ", 2)) || append(&s, &len, ks, kl) ||
              append(&s, &len, ": ", 2) ||
              (vs ? append(&s, &len, vs, vl) : append(&s, &len, ps[i].value, ps[i].value_len));
        free(ks);
        free(vs);
    }
    if (bad || append(&s, &len, "}", 1)) {
        free(s);
        errf(err, err_len, "tool call: out of memory (or a name that is not UTF-8)");
        return NULL;
    }
    json_t *check = json_loadb(s, len, JSON_ALLOW_NUL, NULL);
    if (!json_is_object(check)) {
        json_decref(check);
        free(s);
        errf(err, err_len, "tool call: a string=\"false\" parameter is not JSON");
        return NULL;
    }
    json_decref(check);
    return s;
}

void tool_output_free(struct tool_output *out)
{
    for (uint32_t i = 0; i < out->n_calls; i++) {
        free(out->calls[i].name);
        free(out->calls[i].arguments);
    }
    free(out->calls);
    memset(out, 0, sizeof *out);
}

static int push_call(struct tool_output *out, const char *name, size_t name_len, char *args)
{
    struct tool_call_out *c = realloc(out->calls, (out->n_calls + 1) * sizeof *c);
    if (!c) return -1;
    out->calls = c;
    c[out->n_calls].name = strndup(name, name_len);
    c[out->n_calls].arguments = args;
    if (!c[out->n_calls].name) return -1;
    out->n_calls++;
    return 0;
}

int tool_output_parse(const char *text, size_t len, const char *const *names, size_t n_names,
                      struct tool_output *out, char *err, size_t err_len)
{
    memset(out, 0, sizeof *out);
    const char *end = text + len;
    const char *start = find(text, end, TOOL_CALLS_START);
    out->content_len = start ? (size_t)(start - text) : len;
    if (!start) return 0;
    const char *p = start + strlen(TOOL_CALLS_START); /* at the ">" after tool_calls, if the block is right */
    struct param *ps = NULL;
    size_t n_ps = 0, cap_ps = 0;
    int which;
    for (;;) {
        /* ">\n" then an invoke, or the end of the block */
        const char *t = first_of(p, end, "<" DSML "invoke", "</" DSML "tool_calls>", &which);
        if (!t) { errf(err, err_len, "tool call: the block is not closed"); goto fail; }
        if (t - p != 2 || memcmp(p, ">\n", 2)) { errf(err, err_len, "tool call: expected '>\\n' at byte %zu", (size_t)(p - text)); goto fail; }
        if (which == 1) {
            p = t + strlen("</" DSML "tool_calls>");
            break;
        }
        p = t + strlen("<" DSML "invoke");
        /* name="N">\n, then parameters or the invoke's end */
        t = first_of(p, end, "<" DSML "parameter", "</" DSML "invoke", &which);
        if (!t) { errf(err, err_len, "tool call: an invoke is not closed"); goto fail; }
        const char *q = p;
        while (q < t && (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r')) q++;
        /* name="N">\n before a parameter; before the end of an invoke without parameters,
         * name="N">\n\n as the encoder's join writes it (no parameters joined, then
         * "\n</invoke>"), or name="N">\n */
        size_t tail = which == 1 && t - q >= 4 && !memcmp(t - 4, "\">\n\n", 4) ? 4 : 3;
        if ((size_t)(t - q) < 6 + tail + 1 || memcmp(q, "name=\"", 6) || memcmp(t - tail, "\">\n\n", tail)) {
            errf(err, err_len, "tool call: bad invoke name at byte %zu", (size_t)(p - text));
            goto fail;
        }
        const char *name = q + 6;
        size_t name_len = (size_t)(t - tail - name);
        bool known = false;
        for (size_t k = 0; k < n_names && !known; k++) known = strlen(names[k]) == name_len && !memcmp(names[k], name, name_len);
        if (!known) { errf(err, err_len, "tool call: '%.*s' is not an offered tool", (int)(name_len > 64 ? 64 : name_len), name); goto fail; }
        n_ps = 0;
        p = t;
        while (which == 0) {
            p += strlen("<" DSML "parameter");
            const char *close = find(p, end, "/" DSML "parameter");
            if (!close) { errf(err, err_len, "tool call: a parameter is not closed"); goto fail; }
            /* ' name="K" string="true|false">V<' ; K is the shortest match, as the official regex */
            const char *body = p, *bend = close;
            if ((size_t)(bend - body) < 8 || memcmp(body, " name=\"", 7) || bend[-1] != '<') {
                errf(err, err_len, "tool call: bad parameter at byte %zu", (size_t)(p - text));
                goto fail;
            }
            const char *k0 = body + 7, *sep = NULL;
            bool is_str = false;
            for (const char *x = k0; x + 1 < bend; x++) {
                if (*x != '"') continue;
                if ((size_t)(bend - x) >= 16 && !memcmp(x, "\" string=\"true\">", 16)) { sep = x; is_str = true; break; }
                if ((size_t)(bend - x) >= 17 && !memcmp(x, "\" string=\"false\">", 17)) { sep = x; break; }
            }
            if (!sep) { errf(err, err_len, "tool call: a parameter lacks string=\"true|false\""); goto fail; }
            if (n_ps == cap_ps) {
                struct param *np = realloc(ps, (cap_ps = cap_ps ? cap_ps * 2 : 8) * sizeof *ps);
                if (!np) { errf(err, err_len, "tool call: out of memory"); goto fail; }
                ps = np;
            }
            struct param *pp = &ps[n_ps];
            pp->name = k0;
            pp->name_len = (size_t)(sep - k0);
            pp->is_string = is_str;
            pp->value = sep + (is_str ? 16 : 17);
            pp->value_len = (size_t)(bend - 1 - pp->value);
            for (size_t k = 0; k < n_ps; k++)
                if (ps[k].name_len == pp->name_len && !memcmp(ps[k].name, pp->name, pp->name_len)) {
                    errf(err, err_len, "tool call: parameter '%.*s' twice", (int)(pp->name_len > 64 ? 64 : pp->name_len), pp->name);
                    goto fail;
                }
            n_ps++;
            p = close + strlen("/" DSML "parameter");
            t = first_of(p, end, "<" DSML "parameter", "</" DSML "invoke", &which);
            if (!t || t - p != 2 || memcmp(p, ">\n", 2)) { errf(err, err_len, "tool call: expected '>\\n' after a parameter"); goto fail; }
            p = t;
        }
        p += strlen("</" DSML "invoke");
        char *args = arguments_json(ps, n_ps, err, err_len);
        if (!args) goto fail;
        if (push_call(out, name, name_len, args)) {
            free(args);
            errf(err, err_len, "tool call: out of memory");
            goto fail;
        }
    }
    if (p != end) { errf(err, err_len, "tool call: text after the block"); goto fail; }
    free(ps);
    return 0;
fail:
    free(ps);
    tool_output_free(out);
    out->content_len = len;
    return -1;
}

/* ---- reading a block as it streams ---- */

/* p starts with s (all of it in the text): 1; the text ends inside s: 0; else -1. */
static int expect(const char *p, const char *end, const char *s)
{
    size_t n = strlen(s), have = (size_t)(end - p);
    if (have >= n) return memcmp(p, s, n) ? -1 : 1;
    return memcmp(p, s, have) ? -1 : 0;
}

/* Bytes of value[0, n) that no later text changes: not a tail that may begin the parameter's
 * closing "</｜DSML｜parameter>", and not an incomplete UTF-8 sequence. */
static size_t value_safe(const char *v, size_t n)
{
    static const char close[] = "</" DSML "parameter>"; /* found whole, the value is complete */
    size_t m = strlen(close);
    for (size_t k = m - 1; k > 0; k--)
        if (k <= n && !memcmp(v + n - k, close, k)) {
            n -= k;
            break;
        }
    size_t i = n;
    while (i > 0 && ((unsigned char)v[i - 1] & 0xC0) == 0x80 && n - i < 3) i--;
    if (i > 0 && (unsigned char)v[i - 1] >= 0xC0) {
        unsigned char c = (unsigned char)v[i - 1];
        size_t want = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
        if (n - (i - 1) < want) n = i - 1;
    }
    return n;
}

/* A JSON string's text from raw bytes, as the final parse writes it; without its closing
 * quote when open. */
static int append_string(char **s, size_t *len, const char *v, size_t n, bool open)
{
    json_t *j = json_stringn(v, n);
    size_t l = 0;
    char *q = j ? req_json_python(j, &l) : NULL;
    json_decref(j);
    int bad = !q || append(s, len, q, open ? l - 1 : l);
    free(q);
    return bad ? -1 : 0;
}

uint32_t tool_output_partial(const char *text, size_t len, const char *const *names, size_t n_names,
                             struct tool_call_partial *out, uint32_t max)
{
    const char *end = text + len;
    const char *p = find(text, end, TOOL_CALLS_START);
    uint32_t n = 0;
    if (!p) return 0;
    p += strlen(TOOL_CALLS_START);
    if (expect(p, end, ">\n") < 1) return 0;
    p += 2;
    while (n < max) {
        if (expect(p, end, "<" DSML "invoke name=\"") < 1) break;
        p += strlen("<" DSML "invoke name=\"");
        const char *q = memchr(p, '"', (size_t)(end - p));
        if (!q || (size_t)(end - q) < 3) break;
        if (memcmp(q, "\">\n", 3)) break;
        bool known = false;
        for (size_t k = 0; k < n_names && !known; k++) known = strlen(names[k]) == (size_t)(q - p) && !memcmp(names[k], p, (size_t)(q - p));
        if (!known) break;
        struct tool_call_partial *c = &out[n];
        memset(c, 0, sizeof *c);
        if (!(c->name = strndup(p, (size_t)(q - p))) || append(&c->args, &c->args_len, "{", 1)) {
            tool_output_partial_free(out, n + 1);
            return 0;
        }
        n++;
        p = q + 3;
        bool first = true, closed = false;
        for (;;) {
            /* after '>\n': a parameter, or the end of the invoke (maybe after one more '\n'
             * when it has none) */
            const char *r = p;
            if (first && r < end && *r == '\n') r++;
            if (expect(r, end, "</" DSML "invoke>") == 1) {
                p = r + strlen("</" DSML "invoke>");
                closed = true;
                break;
            }
            if (expect(p, end, "<" DSML "parameter name=\"") < 1) break;
            const char *k0 = p + strlen("<" DSML "parameter name=\""), *sep = NULL;
            bool is_str = false;
            for (const char *x = k0; x < end; x++) {
                if (*x != '"') continue;
                if (expect(x, end, "\" string=\"true\">") == 1) { sep = x; is_str = true; break; }
                if (expect(x, end, "\" string=\"false\">") == 1) { sep = x; break; }
                if (expect(x, end, "\" string=\"") == 0 || expect(x, end, "\" string=\"true\">") == 0 ||
                    expect(x, end, "\" string=\"false\">") == 0)
                    break; /* the tag is still coming */
            }
            if (!sep) break;
            const char *v = sep + (is_str ? 16 : 17);
            const char *vclose = find(v, end, "</" DSML "parameter>");
            size_t vn = vclose ? (size_t)(vclose - v) : value_safe(v, (size_t)(end - v));
            size_t before = c->args_len;
            if ((!first && append(&c->args, &c->args_len, ", ", 2)) || append_string(&c->args, &c->args_len, k0, (size_t)(sep - k0), false) ||
                append(&c->args, &c->args_len, ": ", 2) ||
                (is_str ? append_string(&c->args, &c->args_len, v, vn, !vclose) : append(&c->args, &c->args_len, v, vn))) {
                c->args_len = before; /* out of memory or not UTF-8: send nothing more of it */
                break;
            }
            if (!vclose) break;
            first = false;
            p = vclose + strlen("</" DSML "parameter>");
            if (expect(p, end, "\n") < 1) break;
            p++;
        }
        if (!closed) break;
        if (append(&c->args, &c->args_len, "}", 1)) break;
        if (expect(p, end, "\n") < 1) break;
        p++;
    }
    return n;
}

void tool_output_partial_free(struct tool_call_partial *calls, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        free(calls[i].name);
        free(calls[i].args);
    }
}
