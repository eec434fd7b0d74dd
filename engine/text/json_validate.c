/* The validator over a compiled schema (see json_validate.h). It walks the parsed instance
 * and the node graph together; the place of a failure is kept in one path buffer that each
 * level extends and restores, so deep instances cost no stack per level beyond the call. */
#include "engine/text/json_validate.h"

#include "common/errmsg.h"
#include "engine/text/json_grammar_impl.h"

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct vctx {
    const struct jg_schema *g;
    char path[512];     /* "$", then ".key" and "[i]" per level (cut to fit) */
    size_t len;
    char *err;
    size_t err_len;
};

static int fail(struct vctx *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(struct vctx *v, const char *fmt, ...)
{
    char what[384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return errf(v->err, v->err_len, "%s: %s", v->path, what);
}

/* Appends to the path; returns the length to restore. */
static size_t push(struct vctx *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static size_t push(struct vctx *v, const char *fmt, ...)
{
    size_t old = v->len;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(v->path + old, sizeof v->path - old, fmt, ap);
    va_end(ap);
    if (n > 0) v->len = old + (size_t)n < sizeof v->path ? old + (size_t)n : sizeof v->path - 1;
    return old;
}

static void pop(struct vctx *v, size_t old)
{
    v->len = old;
    v->path[old] = 0;
}

static const char *kind_of(const json_t *x)
{
    switch (json_typeof(x)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "a value";
}

/* JSON equality with numbers compared by value (enum and const). */
static bool same_value(const json_t *a, const json_t *b)
{
    if (json_is_number(a) && json_is_number(b)) {
        if (json_is_integer(a) && json_is_integer(b)) return json_integer_value(a) == json_integer_value(b);
        return json_number_value(a) == json_number_value(b);
    }
    if (json_typeof(a) != json_typeof(b)) return false;
    if (json_is_array(a)) {
        if (json_array_size(a) != json_array_size(b)) return false;
        for (size_t i = 0; i < json_array_size(a); i++)
            if (!same_value(json_array_get(a, i), json_array_get(b, i))) return false;
        return true;
    }
    if (json_is_object(a)) {
        if (json_object_size(a) != json_object_size(b)) return false;
        const char *k;
        json_t *x;
        json_object_foreach((json_t *)a, k, x) {
            const json_t *y = json_object_get(b, k);
            if (!y || !same_value(x, y)) return false;
        }
        return true;
    }
    return json_equal((json_t *)a, (json_t *)b); /* strings, true, false, null */
}

static bool is_integral(const json_t *x)
{
    if (json_is_integer(x)) return true;
    double d = json_is_real(x) ? json_real_value(x) : NAN;
    return isfinite(d) && d == floor(d);
}

static int check(struct vctx *v, uint32_t node, const json_t *x, int depth);

static int check_literals(struct vctx *v, const struct jg_node *n, const json_t *x)
{
    const struct jg_schema *g = v->g;
    for (uint32_t i = 0; i < n->count; i++) {
        const struct jg_lit *l = &g->lits[n->first + i];
        json_t *lit = json_loadb(g->text + l->off, l->len, JSON_DECODE_ANY, NULL);
        bool eq = lit && same_value(lit, x);
        json_decref(lit);
        if (eq) return 0;
    }
    if (n->count == 1) return fail(v, "not the value the schema allows (%.*s)", (int)(g->lits[n->first].len < 60 ? g->lits[n->first].len : 60),
                                   g->text + g->lits[n->first].off);
    return fail(v, "not one of the %u values the schema allows", n->count);
}

static int check_string(struct vctx *v, uint32_t node, const struct jg_node *n, const json_t *x)
{
    const char *s = json_string_value(x);
    size_t bytes = json_string_length(x), chars = 0;
    for (size_t i = 0; i < bytes; i++) chars += ((uint8_t)s[i] & 0xc0) != 0x80;
    if (chars < n->min) return fail(v, "%zu characters, at least %u expected", chars, n->min);
    if (n->max != JG_INF && chars > n->max) return fail(v, "%zu characters, at most %u expected", chars, n->max);
    if (n->format == JG_FMT_NONE) return 0;
    /* A format is what the grammar's automaton takes between the quotes: plain ASCII. */
    static const char *const names[] = { "", "date", "time", "date-time", "uuid" };
    struct jg_state st;
    jg_state_init_node(&st, node);
    bool ok = jg_state_step(v->g, &st, '"');
    for (size_t i = 0; i < bytes && ok; i++) {
        uint8_t c = (uint8_t)s[i];
        ok = c >= 0x20 && c != '"' && c != '\\' && jg_state_step(v->g, &st, c);
    }
    ok = ok && jg_state_step(v->g, &st, '"') && jg_state_accepting(v->g, &st);
    if (!ok) return fail(v, "not a %s string", names[n->format]);
    return 0;
}

static int check_object(struct vctx *v, const struct jg_node *n, const json_t *x, int depth)
{
    const struct jg_schema *g = v->g;
    uint64_t seen = 0; /* declared properties present (at most JG_MAX_PROPS) */
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)x, key, val) {
        /* Declared keys are stored as the grammar writes them (JSON-escaped content). */
        json_t *name = json_string(key);
        char *esc = name ? json_dumps(name, JSON_ENCODE_ANY) : NULL;
        json_decref(name);
        if (!esc) return fail(v, "out of memory");
        size_t elen = strlen(esc) - 2;
        uint32_t child = n->value;
        for (uint32_t i = 0; !n->map && i < n->count; i++) {
            const struct jg_prop *p = &g->props[n->first + i];
            if (p->key_len == elen && !memcmp(esc + 1, g->text + p->key, elen)) {
                child = p->node;
                seen |= 1ull << i;
                break;
            }
        }
        free(esc);
        if (child == JG_INF) return fail(v, "property \"%.60s\" is not allowed (additionalProperties is false)", key);
        size_t old = push(v, ".%.80s", key);
        int rc = check(v, child, val, depth + 1);
        pop(v, old);
        if (rc) return -1;
    }
    for (uint32_t i = 0; !n->map && i < n->count; i++) {
        const struct jg_prop *p = &g->props[n->first + i];
        if (p->required && !(seen >> i & 1))
            return fail(v, "required property \"%.*s\" is missing", (int)(p->key_len < 60 ? p->key_len : 60), g->text + p->key);
    }
    return 0;
}

static int check_array(struct vctx *v, const struct jg_node *n, const json_t *x, int depth)
{
    size_t count = json_array_size(x);
    if (count < n->min) return fail(v, "%zu items, at least %u expected", count, n->min);
    if (n->max != JG_INF && count > n->max) return fail(v, "%zu items, at most %u expected", count, n->max);
    for (size_t i = 0; i < count; i++) {
        size_t old = push(v, "[%zu]", i);
        int rc = check(v, n->value, json_array_get(x, i), depth + 1);
        pop(v, old);
        if (rc) return -1;
    }
    return 0;
}

/* Alternatives differ in their first byte (the compiler checks it), so at most one can
 * match: anyOf and oneOf mean the same here. Out of line: its buffers stay off the frames of
 * the recursion through plain objects and arrays. */
static __attribute__((noinline)) int check_anyof(struct vctx *v, const struct jg_node *n, const json_t *x, int depth)
{
    char first[256] = "";
    char *err = v->err;
    size_t err_len = v->err_len;
    for (uint32_t i = 0; i < n->count; i++) {
        char why[256];
        v->err = why;
        v->err_len = sizeof why;
        int rc = check(v, v->g->alts[n->first + i], x, depth + 1);
        v->err = err;
        v->err_len = err_len;
        if (rc == 0) return 0;
        if (i == 0) snprintf(first, sizeof first, "%s", why);
    }
    return fail(v, "matches none of the %u alternatives (the first says: %.200s)", n->count, first);
}

static int check(struct vctx *v, uint32_t node, const json_t *x, int depth)
{
    const struct jg_schema *g = v->g;
    const struct jg_node *n = &g->nodes[node];
    if (depth > JG_VALIDATE_MAX_DEPTH) return fail(v, "nested deeper than %d", JG_VALIDATE_MAX_DEPTH);
    switch ((enum jg_kind)n->kind) {
    case JG_ANY:
        return 0;
    case JG_LITERALS:
        return check_literals(v, n, x);
    case JG_NUMBER:
        return json_is_number(x) ? 0 : fail(v, "expected a number, got %s", kind_of(x));
    case JG_INTEGER:
        if (json_is_number(x) && is_integral(x)) return 0;
        return fail(v, "expected an integer, got %s", json_is_number(x) ? "a fraction" : kind_of(x));
    case JG_STRING:
        return json_is_string(x) ? check_string(v, node, n, x) : fail(v, "expected a string, got %s", kind_of(x));
    case JG_OBJECT:
        return json_is_object(x) ? check_object(v, n, x, depth) : fail(v, "expected an object, got %s", kind_of(x));
    case JG_ARRAY:
        return json_is_array(x) ? check_array(v, n, x, depth) : fail(v, "expected an array, got %s", kind_of(x));
    case JG_ANYOF:
        return check_anyof(v, n, x, depth);
    }
    return fail(v, "schema node of an unknown kind");
}

int jg_schema_validate(const struct jg_schema *g, const char *json, size_t len, char *err, size_t err_len)
{
    json_error_t je;
    json_t *x = json_loadb(json, len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &je);
    if (!x) return errf(err, err_len, "not JSON (column %d: %s)", je.column, je.text);
    struct vctx v = { .g = g, .path = "$", .len = 1, .err = err, .err_len = err_len };
    int rc = check(&v, g->root, x, 0);
    json_decref(x);
    return rc;
}
