/* JSON Schema (the subset in json_grammar.h) -> struct jg_schema: one node per schema
 * object reached from the root, $ref targets compiled once (so recursion is a cycle of
 * node indices), then two fixpoints over the node graph: the bytes each node's instances may
 * start with (anyOf dispatch) and the size of each node's smallest instance (the budget).
 * The one parsed form of a schema in flashbox: the grammar (json_grammar.c) generates from
 * it and the validator (json_validate.c) checks answers against it, so both support and
 * refuse the same keywords with the same messages. */
#include "engine/text/json_grammar_impl.h"

#include "common/errmsg.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

enum { MAX_NODES = 4096, MAX_NESTING = JG_MAX_DEPTH, MAX_LITERALS = 4096, MAX_TEXT = 1u << 20, MAX_LENGTH = 1u << 20 };

enum type_bits { T_NULL = 1, T_BOOL = 2, T_OBJECT = 4, T_ARRAY = 8, T_NUMBER = 16, T_INTEGER = 32, T_STRING = 64 };

struct memo {
    const json_t *schema;
    uint32_t node;
};

struct compiler {
    struct jg_schema *g;
    const json_t *doc;     /* the whole schema document ($ref "#" and "#/$defs/...") */
    struct memo *memo;     /* [n_memo] schema objects already compiled */
    uint32_t n_memo, cap_memo;
    uint32_t pending;      /* memo slot of the schema being compiled, until claimed */
    char *err;
    size_t err_len;
};

static bool grow(void **p, uint32_t *cap, uint32_t need, size_t elem)
{
    if (need <= *cap) return true;
    uint32_t c = *cap ? *cap : 16;
    while (c < need) c *= 2;
    void *q = realloc(*p, (size_t)c * elem);
    if (!q) return false;
    *p = q;
    *cap = c;
    return true;
}

static uint32_t new_node(struct compiler *c, enum jg_kind kind, const char *path)
{
    struct jg_schema *g = c->g;
    if (g->n_nodes >= MAX_NODES) {
        errf(c->err, c->err_len, "%s: more than %d schema nodes", path, MAX_NODES);
        return JG_INF;
    }
    if (!grow((void **)&g->nodes, &g->cap_nodes, g->n_nodes + 1, sizeof *g->nodes)) {
        errf(c->err, c->err_len, "%s: out of memory", path);
        return JG_INF;
    }
    struct jg_node *n = &g->nodes[g->n_nodes];
    memset(n, 0, sizeof *n);
    n->kind = (uint8_t)kind;
    n->value = JG_INF;
    n->max = JG_INF;
    n->minval = JG_INF;
    return g->n_nodes++;
}

static int add_text(struct compiler *c, const char *s, size_t len, uint32_t *off, const char *path)
{
    struct jg_schema *g = c->g;
    if (len > MAX_TEXT || g->n_text + len > MAX_TEXT)
        return errf(c->err, c->err_len, "%s: schema strings exceed %u bytes", path, MAX_TEXT);
    if (!grow((void **)&g->text, &g->cap_text, g->n_text + (uint32_t)len + 1, 1))
        return errf(c->err, c->err_len, "%s: out of memory", path);
    memcpy(g->text + g->n_text, s, len);
    *off = g->n_text;
    g->n_text += (uint32_t)len;
    return 0;
}

/* Literal order: bytewise, a prefix before its extensions, so the literals that share a
 * prefix are a contiguous range with the one equal to the prefix (if any) first. The text
 * comes as qsort_r's argument: HTTP threads compile schemas concurrently. */
static int lit_cmp(const void *x, const void *y, void *text)
{
    const struct jg_lit *a = x, *b = y;
    size_t n = a->len < b->len ? a->len : b->len;
    int r = memcmp((const char *)text + a->off, (const char *)text + b->off, n);
    return r ? r : (a->len > b->len) - (a->len < b->len);
}

/* A LITERALS node of the given values (serialized compactly), sorted and deduplicated. */
static uint32_t literal_node(struct compiler *c, json_t *const *vals, size_t n_vals, const char *path)
{
    struct jg_schema *g = c->g;
    if (n_vals == 0) {
        errf(c->err, c->err_len, "%s: no allowed value", path);
        return JG_INF;
    }
    if (n_vals > MAX_LITERALS || g->n_lits + n_vals > MAX_LITERALS) {
        errf(c->err, c->err_len, "%s: more than %d enum values", path, MAX_LITERALS);
        return JG_INF;
    }
    uint32_t id = new_node(c, JG_LITERALS, path);
    if (id == JG_INF) return JG_INF;
    if (!grow((void **)&g->lits, &g->cap_lits, g->n_lits + (uint32_t)n_vals, sizeof *g->lits)) {
        errf(c->err, c->err_len, "%s: out of memory", path);
        return JG_INF;
    }
    uint32_t first = g->n_lits;
    for (size_t i = 0; i < n_vals; i++) {
        char *s = json_dumps(vals[i], JSON_COMPACT | JSON_ENCODE_ANY | JSON_SORT_KEYS);
        if (!s) {
            errf(c->err, c->err_len, "%s: cannot serialize an enum value", path);
            return JG_INF;
        }
        struct jg_lit *l = &g->lits[g->n_lits];
        l->len = (uint32_t)strlen(s);
        int rc = add_text(c, s, l->len, &l->off, path);
        free(s);
        if (rc) return JG_INF;
        g->n_lits++;
    }
    qsort_r(g->lits + first, g->n_lits - first, sizeof *g->lits, lit_cmp, g->text);
    uint32_t k = first + 1;
    for (uint32_t i = first + 1; i < g->n_lits; i++)
        if (lit_cmp(&g->lits[i], &g->lits[k - 1], g->text)) g->lits[k++] = g->lits[i];
    g->n_lits = k;
    g->nodes[id].first = first;
    g->nodes[id].count = k - first;
    return id;
}

static uint32_t anyof_node(struct compiler *c, const uint32_t *alts, uint32_t n, const char *path)
{
    struct jg_schema *g = c->g;
    if (n == 1) return alts[0];
    uint32_t id = new_node(c, JG_ANYOF, path);
    if (id == JG_INF) return JG_INF;
    if (!grow((void **)&g->alts, &g->cap_alts, g->n_alts + n, sizeof *g->alts)) {
        errf(c->err, c->err_len, "%s: out of memory", path);
        return JG_INF;
    }
    g->nodes[id].first = g->n_alts;
    g->nodes[id].count = n;
    memcpy(g->alts + g->n_alts, alts, n * sizeof *alts);
    g->n_alts += n;
    return id;
}

static bool is_annotation(const char *k)
{
    static const char *const names[] = { "title", "description", "default", "examples", "$schema", "$id",
                                         "$comment", "deprecated", "readOnly", "writeOnly", "$defs",
                                         "definitions" };
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        if (!strcmp(k, names[i])) return true;
    return false;
}

static bool is_supported(const char *k)
{
    static const char *const names[] = { "type", "properties", "required", "additionalProperties", "items",
                                         "minItems", "maxItems", "enum", "const", "anyOf", "oneOf", "allOf",
                                         "$ref", "minLength", "maxLength", "format", "uniqueItems" };
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        if (!strcmp(k, names[i])) return true;
    return is_annotation(k);
}

static uint32_t compile(struct compiler *c, json_t *s, const char *path, int nesting);

/* An object or array node now stands for s: references to s compiled from here on (its
 * own properties or items) reach it, so recursive schemas become cycles of nodes. */
static void claim(struct compiler *c, const json_t *s, uint32_t id)
{
    if (c->pending != JG_INF && c->memo[c->pending].schema == s) c->memo[c->pending].node = id;
    c->pending = JG_INF;
}

static int get_count(struct compiler *c, json_t *s, const char *key, uint32_t *out, const char *path)
{
    json_t *v = json_object_get(s, key);
    if (!v) return 0;
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > MAX_LENGTH)
        return errf(c->err, c->err_len, "%s.%s: expected an integer in [0, %u]", path, key, MAX_LENGTH);
    *out = (uint32_t)json_integer_value(v);
    return 0;
}

/* "#", "#/$defs/Name" or "#/definitions/Name" (with ~0 ~1 escapes) in this document. */
static json_t *resolve_ref(struct compiler *c, json_t *ref, const char *path)
{
    const char *r = json_string_value(ref);
    if (!r) {
        errf(c->err, c->err_len, "%s.$ref: expected a string", path);
        return NULL;
    }
    if (!strcmp(r, "#")) return (json_t *)c->doc;
    const char *name = NULL, *defs = NULL;
    if (!strncmp(r, "#/$defs/", 8)) defs = "$defs", name = r + 8;
    else if (!strncmp(r, "#/definitions/", 14)) defs = "definitions", name = r + 14;
    if (!name || !*name || strchr(name, '/')) {
        errf(c->err, c->err_len, "%s.$ref: '%.64s' is not supported (only \"#\", \"#/$defs/name\" and "
             "\"#/definitions/name\")", path, r);
        return NULL;
    }
    char key[256];
    size_t k = 0;
    for (const char *p = name; *p && k + 1 < sizeof key; p++) {
        if (p[0] == '~' && (p[1] == '0' || p[1] == '1')) {
            key[k++] = p[1] == '0' ? '~' : '/';
            p++;
        } else {
            key[k++] = *p;
        }
    }
    key[k] = 0;
    json_t *target = json_object_get(json_object_get(c->doc, defs), key);
    if (!target) errf(c->err, c->err_len, "%s.$ref: '%.64s' not found", path, r);
    return target;
}

static uint32_t object_node(struct compiler *c, json_t *s, const char *path, int nesting)
{
    struct jg_schema *g = c->g;
    json_t *props = json_object_get(s, "properties"), *req = json_object_get(s, "required");
    json_t *addl = json_object_get(s, "additionalProperties");
    char sub[256];
    if (props && !json_is_object(props)) {
        errf(c->err, c->err_len, "%s.properties: expected an object", path);
        return JG_INF;
    }
    if (req && !json_is_array(req)) {
        errf(c->err, c->err_len, "%s.required: expected an array of property names", path);
        return JG_INF;
    }
    if (addl && !json_is_boolean(addl) && !json_is_object(addl)) {
        errf(c->err, c->err_len, "%s.additionalProperties: expected true, false or a schema", path);
        return JG_INF;
    }
    size_t n_props = props ? json_object_size(props) : 0;
    if (n_props > JG_MAX_PROPS) {
        errf(c->err, c->err_len, "%s.properties: %zu properties, at most %d", path, n_props, JG_MAX_PROPS);
        return JG_INF;
    }
    size_t i;
    json_t *r;
    json_array_foreach(req, i, r) {
        if (!json_is_string(r) || !json_object_get(props, json_string_value(r))) {
            errf(c->err, c->err_len, "%s.required[%zu]: expected the name of a declared property", path, i);
            return JG_INF;
        }
    }
    uint32_t id = new_node(c, JG_OBJECT, path);
    if (id == JG_INF) return JG_INF;
    claim(c, s, id);
    g->nodes[id].first_bytes['{' >> 5] |= 1u << ('{' & 31);
    if (n_props == 0) {
        /* A map: any keys (never more than the schema allows: none when false). */
        uint32_t v = g->any;
        if (json_is_false(addl)) v = JG_INF;
        else if (json_is_object(addl)) {
            snprintf(sub, sizeof sub, "%s.additionalProperties", path);
            if ((v = compile(c, addl, sub, nesting + 1)) == JG_INF) return JG_INF;
        }
        g->nodes[id].map = true;
        g->nodes[id].value = v;
        return id;
    }
    /* Declared properties: the automaton emits only these, so additionalProperties (true,
     * false or a schema) never comes into play there; the validator checks undeclared
     * members against it (value: the any node, JG_INF for false, or the schema's node). */
    uint32_t extra = json_is_false(addl) ? JG_INF : g->any;
    if (json_is_object(addl)) {
        snprintf(sub, sizeof sub, "%s.additionalProperties", path);
        if ((extra = compile(c, addl, sub, nesting + 1)) == JG_INF) return JG_INF;
    }
    g->nodes[id].value = extra;
    uint32_t first = g->n_props;
    if (!grow((void **)&g->props, &g->cap_props, g->n_props + (uint32_t)n_props, sizeof *g->props)) {
        errf(c->err, c->err_len, "%s: out of memory", path);
        return JG_INF;
    }
    g->n_props += (uint32_t)n_props;
    g->nodes[id].first = first;
    g->nodes[id].count = (uint32_t)n_props;
    const char *key;
    json_t *ps;
    uint32_t k = first;
    json_object_foreach(props, key, ps) {
        snprintf(sub, sizeof sub, "%s.properties.%.64s", path, key);
        json_t *name = json_string(key);
        char *esc = name ? json_dumps(name, JSON_ENCODE_ANY) : NULL;
        json_decref(name);
        if (!esc) {
            errf(c->err, c->err_len, "%s: out of memory", sub);
            return JG_INF;
        }
        uint32_t off;
        int rc = add_text(c, esc + 1, strlen(esc) - 2, &off, sub); /* without the quotes */
        size_t key_len = strlen(esc) - 2;
        free(esc);
        if (rc) return JG_INF;
        uint32_t node = compile(c, ps, sub, nesting + 1);
        if (node == JG_INF) return JG_INF;
        bool required = false;
        json_array_foreach(req, i, r) required |= !strcmp(json_string_value(r), key);
        g->props[k++] = (struct jg_prop){ .key = off, .key_len = (uint32_t)key_len, .node = node, .required = required };
    }
    return id;
}

static uint32_t typed_node(struct compiler *c, json_t *s, unsigned type, const char *path, int nesting)
{
    struct jg_schema *g = c->g;
    char sub[256];
    switch (type) {
    case T_NULL: return literal_node(c, (json_t *[]){ json_null() }, 1, path);
    case T_BOOL: return literal_node(c, (json_t *[]){ json_false(), json_true() }, 2, path);
    case T_NUMBER: return new_node(c, JG_NUMBER, path);
    case T_INTEGER: return new_node(c, JG_INTEGER, path);
    case T_OBJECT: return object_node(c, s, path, nesting);
    case T_ARRAY: {
        json_t *items = json_object_get(s, "items"), *uniq = json_object_get(s, "uniqueItems");
        if (uniq && !json_is_false(uniq)) {
            errf(c->err, c->err_len, "%s: keyword 'uniqueItems' is not supported (only false)", path);
            return JG_INF;
        }
        if (items && json_is_array(items)) {
            errf(c->err, c->err_len, "%s.items: an array of schemas (tuple items) is not supported", path);
            return JG_INF;
        }
        uint32_t mn = 0, mx = JG_INF;
        if (get_count(c, s, "minItems", &mn, path) || get_count(c, s, "maxItems", &mx, path)) return JG_INF;
        if (mn > mx) {
            errf(c->err, c->err_len, "%s: minItems %u > maxItems %u", path, mn, mx);
            return JG_INF;
        }
        uint32_t id = new_node(c, JG_ARRAY, path);
        if (id == JG_INF) return JG_INF;
        claim(c, s, id);
        uint32_t item = g->any;
        if (items) {
            snprintf(sub, sizeof sub, "%s.items", path);
            if ((item = compile(c, items, sub, nesting + 1)) == JG_INF) return JG_INF;
        }
        g->nodes[id].value = item;
        g->nodes[id].min = mn;
        g->nodes[id].max = mx;
        return id;
    }
    case T_STRING: {
        uint32_t mn = 0, mx = JG_INF;
        if (get_count(c, s, "minLength", &mn, path) || get_count(c, s, "maxLength", &mx, path)) return JG_INF;
        if (mn > mx) {
            errf(c->err, c->err_len, "%s: minLength %u > maxLength %u", path, mn, mx);
            return JG_INF;
        }
        uint8_t fmt = JG_FMT_NONE;
        json_t *f = json_object_get(s, "format");
        if (f) {
            const char *fs = json_string_value(f);
            if (!fs) {
                errf(c->err, c->err_len, "%s.format: expected a string", path);
                return JG_INF;
            }
            if (!strcmp(fs, "date")) fmt = JG_FMT_DATE;
            else if (!strcmp(fs, "time")) fmt = JG_FMT_TIME;
            else if (!strcmp(fs, "date-time")) fmt = JG_FMT_DATE_TIME;
            else if (!strcmp(fs, "uuid")) fmt = JG_FMT_UUID;
            else {
                errf(c->err, c->err_len, "%s.format: '%.32s' is not supported (date, time, date-time, uuid)", path, fs);
                return JG_INF;
            }
            if (json_object_get(s, "minLength") || json_object_get(s, "maxLength")) {
                errf(c->err, c->err_len, "%s: minLength / maxLength with a format are not supported", path);
                return JG_INF;
            }
        }
        uint32_t id = new_node(c, JG_STRING, path);
        if (id == JG_INF) return JG_INF;
        g->nodes[id].min = mn;
        g->nodes[id].max = mx;
        g->nodes[id].format = fmt;
        return id;
    }
    }
    return JG_INF;
}

static int parse_type(struct compiler *c, json_t *t, unsigned *out, const char *path)
{
    static const struct { const char *name; unsigned bit; } names[] = {
        { "null", T_NULL }, { "boolean", T_BOOL }, { "object", T_OBJECT }, { "array", T_ARRAY },
        { "number", T_NUMBER }, { "integer", T_INTEGER }, { "string", T_STRING },
    };
    json_t *one[1] = { t };
    size_t n = 1;
    json_t **items = one;
    if (json_is_array(t)) {
        n = json_array_size(t);
        items = NULL;
        if (n == 0) return errf(c->err, c->err_len, "%s.type: empty array", path);
    }
    *out = 0;
    for (size_t i = 0; i < n; i++) {
        const char *s = json_string_value(items ? items[i] : json_array_get(t, i));
        unsigned bit = 0;
        for (size_t k = 0; s && k < sizeof names / sizeof *names; k++)
            if (!strcmp(s, names[k].name)) bit = names[k].bit;
        if (!bit && s)
            return errf(c->err, c->err_len, "%s.type: unknown type \"%.40s\" (expected null, boolean, object, array, number, "
                        "integer or string)", path, s);
        if (!bit) return errf(c->err, c->err_len, "%s.type: expected null, boolean, object, array, number, integer or string", path);
        *out |= bit;
    }
    return 0;
}

static bool literal_has_type(json_t *v, unsigned types)
{
    switch (json_typeof(v)) {
    case JSON_NULL: return types & T_NULL;
    case JSON_TRUE:
    case JSON_FALSE: return types & T_BOOL;
    case JSON_OBJECT: return types & T_OBJECT;
    case JSON_ARRAY: return types & T_ARRAY;
    case JSON_STRING: return types & T_STRING;
    case JSON_INTEGER: return types & (T_INTEGER | T_NUMBER);
    case JSON_REAL: return types & T_NUMBER;
    }
    return false;
}

static uint32_t compile_object(struct compiler *c, json_t *s, const char *path, int nesting)
{
    struct jg_schema *g = c->g;
    char sub[256];
    const char *key;
    json_t *v;
    json_object_foreach(s, key, v) {
        if (!is_supported(key)) {
            errf(c->err, c->err_len, "%s: keyword '%.64s' is not supported", path, key);
            return JG_INF;
        }
    }
    json_t *ref = json_object_get(s, "$ref"), *all = json_object_get(s, "allOf");
    json_t *any = json_object_get(s, "anyOf");
    if (!any) any = json_object_get(s, "oneOf");
    json_t *en = json_object_get(s, "enum"), *cn = json_object_get(s, "const"), *type = json_object_get(s, "type");
    unsigned n_forms = !!ref + !!all + !!any + (json_object_get(s, "anyOf") && json_object_get(s, "oneOf"));
    if (n_forms > 1) {
        errf(c->err, c->err_len, "%s: $ref, allOf, anyOf and oneOf together are not supported", path);
        return JG_INF;
    }
    if (ref || all || any) {
        json_object_foreach(s, key, v) {
            if (!is_annotation(key) && strcmp(key, "$ref") && strcmp(key, "allOf") && strcmp(key, "anyOf") && strcmp(key, "oneOf")) {
                errf(c->err, c->err_len, "%s: keyword '%.64s' beside %s is not supported", path, key,
                     ref ? "$ref" : all ? "allOf" : "anyOf/oneOf");
                return JG_INF;
            }
        }
    }
    if (ref) {
        json_t *target = resolve_ref(c, ref, path);
        if (!target) return JG_INF;
        snprintf(sub, sizeof sub, "%.200s", json_string_value(ref));
        return compile(c, target, sub, nesting + 1);
    }
    if (all) {
        if (!json_is_array(all) || json_array_size(all) != 1) {
            errf(c->err, c->err_len, "%s.allOf: only one schema is supported", path);
            return JG_INF;
        }
        snprintf(sub, sizeof sub, "%s.allOf[0]", path);
        return compile(c, json_array_get(all, 0), sub, nesting + 1);
    }
    if (any) {
        const char *kw = json_object_get(s, "anyOf") ? "anyOf" : "oneOf";
        if (!json_is_array(any) || json_array_size(any) == 0 || json_array_size(any) > 16) {
            errf(c->err, c->err_len, "%s.%s: expected an array of 1 to 16 schemas", path, kw);
            return JG_INF;
        }
        uint32_t alts[16];
        size_t i;
        json_array_foreach(any, i, v) {
            snprintf(sub, sizeof sub, "%s.%s[%zu]", path, kw, i);
            if ((alts[i] = compile(c, v, sub, nesting + 1)) == JG_INF) return JG_INF;
        }
        snprintf(sub, sizeof sub, "%s.%s", path, kw);
        return anyof_node(c, alts, (uint32_t)json_array_size(any), sub);
    }
    unsigned types = 0;
    if (type && parse_type(c, type, &types, path)) return JG_INF;
    if (en || cn) {
        if (en && cn) {
            errf(c->err, c->err_len, "%s: enum and const together are not supported", path);
            return JG_INF;
        }
        if (en && !json_is_array(en)) {
            errf(c->err, c->err_len, "%s.enum: expected an array", path);
            return JG_INF;
        }
        size_t n = en ? json_array_size(en) : 1, k = 0;
        if (n > MAX_LITERALS) {
            errf(c->err, c->err_len, "%s.enum: more than %d values", path, MAX_LITERALS);
            return JG_INF;
        }
        json_t **vals = malloc((n ? n : 1) * sizeof *vals);
        if (!vals) {
            errf(c->err, c->err_len, "%s: out of memory", path);
            return JG_INF;
        }
        for (size_t i = 0; i < n; i++) {
            json_t *x = en ? json_array_get(en, i) : cn;
            if (!type || literal_has_type(x, types)) vals[k++] = x;
        }
        snprintf(sub, sizeof sub, "%s.%s", path, en ? "enum" : "const");
        uint32_t id = literal_node(c, vals, k, sub);
        free(vals);
        return id;
    }
    if (!type) {
        /* No type: the keywords present say which one (an instance of another type would
         * also be valid, but generating only this one is). */
        if (json_object_get(s, "properties") || json_object_get(s, "required") || json_object_get(s, "additionalProperties"))
            types = T_OBJECT;
        else if (json_object_get(s, "items") || json_object_get(s, "minItems") || json_object_get(s, "maxItems"))
            types = T_ARRAY;
        else if (json_object_get(s, "minLength") || json_object_get(s, "maxLength") || json_object_get(s, "format"))
            types = T_STRING;
        else
            return g->any;
    }
    if ((types & T_INTEGER) && (types & T_NUMBER)) types &= ~(unsigned)T_INTEGER; /* integers are numbers */
    uint32_t alts[7], n = 0;
    for (unsigned bit = 1; bit <= T_STRING; bit <<= 1) {
        if (!(types & bit)) continue;
        if ((alts[n++] = typed_node(c, s, bit, path, nesting)) == JG_INF) return JG_INF;
    }
    snprintf(sub, sizeof sub, "%s.type", path);
    return anyof_node(c, alts, n, sub);
}

static uint32_t compile(struct compiler *c, json_t *s, const char *path, int nesting)
{
    if (nesting > MAX_NESTING) {
        errf(c->err, c->err_len, "schema: nested deeper than %d (at %.80s...)", MAX_NESTING, path);
        return JG_INF;
    }
    if (json_is_true(s)) return c->g->any;
    if (json_is_false(s)) {
        errf(c->err, c->err_len, "%s: the schema false allows no value", path);
        return JG_INF;
    }
    if (!json_is_object(s)) {
        errf(c->err, c->err_len, "%s: expected a schema (an object)", path);
        return JG_INF;
    }
    for (uint32_t i = 0; i < c->n_memo; i++)
        if (c->memo[i].schema == s) {
            if (c->memo[i].node == JG_INF)
                errf(c->err, c->err_len, "%s: a $ref cycle without an object or array between", path);
            return c->memo[i].node;
        }
    /* JG_INF while compiling, until an object or array node for s exists (claim): a
     * reference back to s before that is a cycle no instance could close ("$ref": "#" at the
     * top, or through anyOf alone). */
    if (!grow((void **)&c->memo, &c->cap_memo, c->n_memo + 1, sizeof *c->memo)) {
        errf(c->err, c->err_len, "%s: out of memory", path);
        return JG_INF;
    }
    uint32_t slot = c->n_memo++;
    c->memo[slot] = (struct memo){ s, JG_INF };
    c->pending = slot;
    uint32_t id = compile_object(c, s, path, nesting);
    c->memo[slot].node = id;
    return id;
}

static void set_bit(uint32_t *set, uint8_t c) { set[c >> 5] |= 1u << (c & 31); }

static uint32_t sat_add(uint32_t a, uint32_t b) { return a > JG_INF - b ? JG_INF : a + b; }
static uint32_t sat_mul(uint32_t a, uint32_t b) { return b && a > JG_INF / b ? JG_INF : a * b; }

/* Bytes a property needs: "key":value */
static uint32_t prop_cost(const struct jg_schema *g, const struct jg_prop *p)
{
    return sat_add(p->key_len + 3, g->nodes[p->node].minval);
}

static uint32_t fmt_min_bytes(uint8_t fmt)
{
    switch (fmt) {
    case JG_FMT_DATE: return 10;        /* 2024-01-01 */
    case JG_FMT_TIME: return 9;         /* 00:00:00Z */
    case JG_FMT_DATE_TIME: return 20;   /* 2024-01-01T00:00:00Z */
    case JG_FMT_UUID: return 36;
    }
    return 0;
}

static uint32_t node_minval(const struct jg_schema *g, const struct jg_node *n)
{
    switch ((enum jg_kind)n->kind) {
    case JG_ANY:
    case JG_NUMBER:
    case JG_INTEGER: return 1;
    case JG_STRING: return sat_add(2, n->format ? fmt_min_bytes(n->format) : n->min);
    case JG_LITERALS: {
        uint32_t best = JG_INF;
        for (uint32_t i = 0; i < n->count; i++)
            if (g->lits[n->first + i].len < best) best = g->lits[n->first + i].len;
        return best;
    }
    case JG_ANYOF: {
        uint32_t best = JG_INF;
        for (uint32_t i = 0; i < n->count; i++)
            if (g->nodes[g->alts[n->first + i]].minval < best) best = g->nodes[g->alts[n->first + i]].minval;
        return best;
    }
    case JG_ARRAY: {
        if (n->min == 0) return 2;
        uint32_t item = g->nodes[n->value].minval;
        if (item == JG_INF) return JG_INF;
        return sat_add(sat_add(2, sat_mul(n->min, item)), n->min - 1);
    }
    case JG_OBJECT: {
        if (n->map) return 2;
        uint32_t sum = 2, k = 0;
        for (uint32_t i = 0; i < n->count; i++) {
            const struct jg_prop *p = &g->props[n->first + i];
            if (!p->required) continue;
            sum = sat_add(sum, prop_cost(g, p));
            k++;
        }
        return k ? sat_add(sum, k - 1) : sum;
    }
    }
    return JG_INF;
}

static void node_first_bytes(const struct jg_schema *g, const struct jg_node *n, uint32_t *set)
{
    switch ((enum jg_kind)n->kind) {
    case JG_OBJECT: set_bit(set, '{'); break;
    case JG_ARRAY: set_bit(set, '['); break;
    case JG_STRING: set_bit(set, '"'); break;
    case JG_NUMBER:
    case JG_INTEGER:
        set_bit(set, '-');
        for (uint8_t d = '0'; d <= '9'; d++) set_bit(set, d);
        break;
    case JG_LITERALS:
        for (uint32_t i = 0; i < n->count; i++) set_bit(set, (uint8_t)g->text[g->lits[n->first + i].off]);
        break;
    case JG_ANY:
        for (uint32_t k = 0; k < 8; k++) set[k] |= g->nodes[g->any_object].first_bytes[k] | g->nodes[g->any_array].first_bytes[k] |
                                                 g->nodes[g->any_string].first_bytes[k] | g->nodes[g->any_number].first_bytes[k] |
                                                 g->nodes[g->any_literal].first_bytes[k];
        break;
    case JG_ANYOF:
        for (uint32_t i = 0; i < n->count; i++)
            for (uint32_t k = 0; k < 8; k++) set[k] |= g->nodes[g->alts[n->first + i]].first_bytes[k];
        break;
    }
}

/* The two fixpoints, the anyOf check and the per-object required-rest tables. */
static int finish(struct compiler *c)
{
    struct jg_schema *g = c->g;
    for (bool changed = true; changed;) {
        changed = false;
        for (uint32_t i = 0; i < g->n_nodes; i++) {
            struct jg_node *n = &g->nodes[i];
            uint32_t mv = node_minval(g, n), set[8] = { 0 };
            node_first_bytes(g, n, set);
            for (uint32_t k = 0; k < 8; k++) set[k] |= n->first_bytes[k];
            if (mv < n->minval) n->minval = mv, changed = true;
            if (memcmp(set, n->first_bytes, sizeof set)) memcpy(n->first_bytes, set, sizeof set), changed = true;
        }
    }
    for (uint32_t i = 0; i < g->n_nodes; i++) {
        const struct jg_node *n = &g->nodes[i];
        if (n->kind != JG_ANYOF) continue;
        for (uint32_t a = 0; a < n->count; a++)
            for (uint32_t b = a + 1; b < n->count; b++)
                for (unsigned byte = 0; byte < 256; byte++)
                    if (jg_bit(g->nodes[g->alts[n->first + a]].first_bytes, (uint8_t)byte) &&
                        jg_bit(g->nodes[g->alts[n->first + b]].first_bytes, (uint8_t)byte))
                        return errf(c->err, c->err_len, "schema: anyOf/oneOf alternatives %u and %u can both start with "
                                    "'%c': alternatives must differ in JSON type (or in their first enum byte)", a, b,
                                    byte >= 0x20 && byte < 0x7f ? byte : '?');
    }
    if (g->nodes[g->root].minval == JG_INF)
        return errf(c->err, c->err_len, "schema: no finite instance (required properties or minItems recurse forever)");
    g->req_first = malloc((g->n_nodes ? g->n_nodes : 1) * sizeof *g->req_first);
    g->req_rest = malloc(((size_t)g->n_props + g->n_nodes + 1) * sizeof *g->req_rest);
    if (!g->req_first || !g->req_rest) return errf(c->err, c->err_len, "schema: out of memory");
    uint32_t at = 0;
    for (uint32_t i = 0; i < g->n_nodes; i++) {
        const struct jg_node *n = &g->nodes[i];
        g->req_first[i] = at;
        if (n->kind != JG_OBJECT || n->map) continue;
        uint32_t *rest = g->req_rest + at;
        rest[n->count] = 0;
        for (uint32_t k = n->count; k-- > 0;) {
            const struct jg_prop *p = &g->props[n->first + k];
            rest[k] = p->required ? sat_add(rest[k + 1], sat_add(1, prop_cost(g, p))) : rest[k + 1];
        }
        at += n->count + 1;
    }
    return 0;
}

static int builtins(struct compiler *c)
{
    struct jg_schema *g = c->g;
    if ((g->any = new_node(c, JG_ANY, "schema")) == JG_INF) return -1;
    if ((g->any_object = new_node(c, JG_OBJECT, "schema")) == JG_INF) return -1;
    g->nodes[g->any_object].map = true;
    g->nodes[g->any_object].value = g->any;
    if ((g->any_array = new_node(c, JG_ARRAY, "schema")) == JG_INF) return -1;
    g->nodes[g->any_array].value = g->any;
    if ((g->any_string = new_node(c, JG_STRING, "schema")) == JG_INF) return -1;
    if ((g->any_number = new_node(c, JG_NUMBER, "schema")) == JG_INF) return -1;
    g->any_literal = literal_node(c, (json_t *[]){ json_false(), json_null(), json_true() }, 3, "schema");
    return g->any_literal == JG_INF ? -1 : 0;
}

static int compile_doc(struct jg_schema **out, json_t *doc, bool any_object, char *err, size_t err_len)
{
    *out = NULL;
    struct jg_schema *g = calloc(1, sizeof *g);
    if (!g) return errf(err, err_len, "schema: out of memory");
    struct compiler c = { .g = g, .doc = doc, .pending = JG_INF, .err = err, .err_len = err_len };
    int rc = builtins(&c);
    if (!rc) {
        g->root = any_object ? g->any_object : compile(&c, doc, "schema", 0);
        rc = g->root == JG_INF ? -1 : finish(&c);
    }
    free(c.memo);
    if (rc) {
        jg_schema_free(g);
        return -1;
    }
    *out = g;
    return 0;
}

int jg_schema_compile(struct jg_schema **out, const char *json, size_t len, char *err, size_t err_len)
{
    *out = NULL;
    json_error_t je;
    json_t *doc = json_loadb(json, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &je);
    if (!doc) return errf(err, err_len, "schema: invalid JSON at byte %d: %s", je.position, je.text);
    int rc = compile_doc(out, doc, false, err, err_len);
    json_decref(doc);
    return rc;
}

int jg_schema_any_object(struct jg_schema **out, char *err, size_t err_len)
{
    return compile_doc(out, NULL, true, err, err_len);
}

void jg_schema_free(struct jg_schema *g)
{
    if (!g) return;
    free(g->nodes);
    free(g->props);
    free(g->req_rest);
    free(g->req_first);
    free(g->lits);
    free(g->alts);
    free(g->text);
    free(g);
}

uint32_t jg_schema_min_bytes(const struct jg_schema *g) { return g->nodes[g->root].minval; }
