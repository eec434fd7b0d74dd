/* The JSON Schema subset validator (see json_schema.h). Two passes by design: the schema is
 * checked once when it is loaded (so a typo is the author's error, reported with its place),
 * and validation then trusts its shape. Places are written as a path: "$" is the root of
 * the instance, ".name" a member, "[i]" an element. */
#include "firmware/json_schema.h"

#include "common/errmsg.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

static const char *const type_names[] = { "null", "boolean", "object", "array", "number", "integer", "string" };

static bool known_type(const char *t)
{
    for (size_t i = 0; i < sizeof type_names / sizeof type_names[0]; i++)
        if (!strcmp(t, type_names[i])) return true;
    return false;
}

static bool is_count(const json_t *v) { return json_is_integer(v) && json_integer_value(v) >= 0; }

static int check_at(const json_t *s, const char *where, int depth, char *err, size_t err_len);

/* where + "." + key, cut to fit (only for messages). */
static void join(char *out, size_t cap, const char *where, const char *key)
{
    snprintf(out, cap, "%.160s%s%.80s", where, where[0] ? "." : "", key);
}

static int check_keyword(const char *key, const json_t *v, const char *where, int depth, char *err, size_t err_len)
{
    char here[256];
    join(here, sizeof here, where, key);
    if (!strcmp(key, "type")) {
        if (json_is_string(v)) {
            if (!known_type(json_string_value(v))) return errf(err, err_len, "%s: unknown type \"%.40s\"", here, json_string_value(v));
            return 0;
        }
        if (!json_is_array(v) || json_array_size(v) == 0)
            return errf(err, err_len, "%s: expected a type name or a non-empty list of them", here);
        size_t i;
        json_t *t;
        json_array_foreach(v, i, t) {
            if (!json_is_string(t) || !known_type(json_string_value(t)))
                return errf(err, err_len, "%s[%zu]: expected one of null, boolean, object, array, number, integer, string", here, i);
        }
        return 0;
    }
    if (!strcmp(key, "properties")) {
        if (!json_is_object(v)) return errf(err, err_len, "%s: expected an object of schemas", here);
        const char *name;
        json_t *sub;
        json_object_foreach((json_t *)v, name, sub) {
            char inner[256];
            join(inner, sizeof inner, here, name);
            if (check_at(sub, inner, depth + 1, err, err_len)) return -1;
        }
        return 0;
    }
    if (!strcmp(key, "required")) {
        if (!json_is_array(v)) return errf(err, err_len, "%s: expected a list of property names", here);
        size_t i;
        json_t *n;
        json_array_foreach(v, i, n) {
            if (!json_is_string(n)) return errf(err, err_len, "%s[%zu]: expected a property name", here, i);
        }
        return 0;
    }
    if (!strcmp(key, "additionalProperties")) {
        if (json_is_boolean(v)) return 0;
        return check_at(v, here, depth + 1, err, err_len);
    }
    if (!strcmp(key, "enum")) {
        if (!json_is_array(v) || json_array_size(v) == 0) return errf(err, err_len, "%s: expected a non-empty list", here);
        return 0;
    }
    if (!strcmp(key, "const")) return 0;
    if (!strcmp(key, "items")) return check_at(v, here, depth + 1, err, err_len);
    if (!strcmp(key, "minItems") || !strcmp(key, "maxItems")) {
        if (!is_count(v)) return errf(err, err_len, "%s: expected a non-negative integer", here);
        return 0;
    }
    if (!strcmp(key, "anyOf")) {
        if (!json_is_array(v) || json_array_size(v) == 0)
            return errf(err, err_len, "%s: expected a non-empty list of schemas", here);
        size_t i;
        json_t *sub;
        json_array_foreach(v, i, sub) {
            char inner[256];
            snprintf(inner, sizeof inner, "%.200s[%zu]", here, i);
            if (check_at(sub, inner, depth + 1, err, err_len)) return -1;
        }
        return 0;
    }
    if (!strcmp(key, "title") || !strcmp(key, "description") || !strcmp(key, "default") || !strcmp(key, "examples") ||
        !strcmp(key, "$schema"))
        return 0; /* annotations: they check nothing */
    return errf(err, err_len, "%s: keyword not supported (supported: type, properties, required, additionalProperties, "
                "enum, const, items, minItems, maxItems, anyOf)", here);
}

static int check_at(const json_t *s, const char *where, int depth, char *err, size_t err_len)
{
    if (depth > JSON_SCHEMA_MAX_DEPTH)
        return errf(err, err_len, "%s: schemas nested deeper than %d", where[0] ? where : "schema", JSON_SCHEMA_MAX_DEPTH);
    if (!json_is_object(s)) return errf(err, err_len, "%s: expected a schema object", where[0] ? where : "schema");
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)s, key, v) {
        if (check_keyword(key, v, where, depth, err, err_len)) return -1;
    }
    const json_t *lo = json_object_get(s, "minItems"), *hi = json_object_get(s, "maxItems");
    if (lo && hi && json_integer_value(lo) > json_integer_value(hi))
        return errf(err, err_len, "%s%sminItems %lld is above maxItems %lld", where, where[0] ? ": " : "",
                    (long long)json_integer_value(lo), (long long)json_integer_value(hi));
    return 0;
}

int json_schema_check(const json_t *schema, char *err, size_t err_len) { return check_at(schema, "", 0, err, err_len); }

int json_schema_equal(const json_t *a, const json_t *b)
{
    if (json_is_number(a) && json_is_number(b)) {
        if (json_is_integer(a) && json_is_integer(b)) return json_integer_value(a) == json_integer_value(b);
        return json_number_value(a) == json_number_value(b);
    }
    if (json_typeof(a) != json_typeof(b)) return 0;
    if (json_is_array(a)) {
        if (json_array_size(a) != json_array_size(b)) return 0;
        for (size_t i = 0; i < json_array_size(a); i++)
            if (!json_schema_equal(json_array_get(a, i), json_array_get(b, i))) return 0;
        return 1;
    }
    if (json_is_object(a)) {
        if (json_object_size(a) != json_object_size(b)) return 0;
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)a, k, v) {
            const json_t *w = json_object_get(b, k);
            if (!w || !json_schema_equal(v, w)) return 0;
        }
        return 1;
    }
    return json_equal((json_t *)a, (json_t *)b); /* strings, true, false, null */
}

static const char *kind_of(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

static bool has_type(const json_t *v, const char *t)
{
    if (!strcmp(t, "null")) return json_is_null(v);
    if (!strcmp(t, "boolean")) return json_is_boolean(v);
    if (!strcmp(t, "object")) return json_is_object(v);
    if (!strcmp(t, "array")) return json_is_array(v);
    if (!strcmp(t, "string")) return json_is_string(v);
    if (!strcmp(t, "number")) return json_is_number(v);
    if (!strcmp(t, "integer")) {
        if (json_is_integer(v)) return true;
        double x = json_is_real(v) ? json_real_value(v) : NAN;
        return isfinite(x) && x == floor(x);
    }
    return false;
}

static int validate_at(const json_t *s, const json_t *v, const char *where, char *err, size_t err_len);

static int check_type(const json_t *t, const json_t *v, const char *where, char *err, size_t err_len)
{
    if (json_is_string(t)) {
        if (has_type(v, json_string_value(t))) return 0;
        return errf(err, err_len, "%s: expected type %s, got %s", where, json_string_value(t), kind_of(v));
    }
    size_t i;
    json_t *one;
    json_array_foreach(t, i, one) {
        if (has_type(v, json_string_value(one))) return 0;
    }
    return errf(err, err_len, "%s: %s is none of the allowed types", where, kind_of(v));
}

static int check_object(const json_t *s, const json_t *v, const char *where, char *err, size_t err_len)
{
    const json_t *props = json_object_get(s, "properties"), *req = json_object_get(s, "required"),
                 *extra = json_object_get(s, "additionalProperties");
    size_t i;
    json_t *n;
    json_array_foreach(req, i, n) {
        if (!json_object_get(v, json_string_value(n)))
            return errf(err, err_len, "%s: required property \"%.60s\" is missing", where, json_string_value(n));
    }
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)v, key, val) {
        char here[256];
        snprintf(here, sizeof here, "%.160s.%.80s", where, key);
        const json_t *sub = props ? json_object_get(props, key) : NULL;
        if (sub) {
            if (validate_at(sub, val, here, err, err_len)) return -1;
        } else if (json_is_false(extra)) {
            return errf(err, err_len, "%s: property \"%.60s\" is not allowed (additionalProperties is false)", where, key);
        } else if (json_is_object(extra)) {
            if (validate_at(extra, val, here, err, err_len)) return -1;
        }
    }
    return 0;
}

static int check_array(const json_t *s, const json_t *v, const char *where, char *err, size_t err_len)
{
    const json_t *lo = json_object_get(s, "minItems"), *hi = json_object_get(s, "maxItems"), *items = json_object_get(s, "items");
    size_t n = json_array_size(v);
    if (lo && (json_int_t)n < json_integer_value(lo))
        return errf(err, err_len, "%s: %zu items, at least %lld expected", where, n, (long long)json_integer_value(lo));
    if (hi && (json_int_t)n > json_integer_value(hi))
        return errf(err, err_len, "%s: %zu items, at most %lld expected", where, n, (long long)json_integer_value(hi));
    if (!items) return 0;
    for (size_t i = 0; i < n; i++) {
        char here[256];
        snprintf(here, sizeof here, "%.200s[%zu]", where, i);
        if (validate_at(items, json_array_get(v, i), here, err, err_len)) return -1;
    }
    return 0;
}

static int validate_at(const json_t *s, const json_t *v, const char *where, char *err, size_t err_len)
{
    const json_t *t = json_object_get(s, "type");
    if (t && check_type(t, v, where, err, err_len)) return -1;
    const json_t *c = json_object_get(s, "const");
    if (c && !json_schema_equal(c, v)) return errf(err, err_len, "%s: not the constant the schema requires", where);
    const json_t *e = json_object_get(s, "enum");
    if (e) {
        bool found = false;
        for (size_t i = 0; i < json_array_size(e) && !found; i++) found = json_schema_equal(json_array_get(e, i), v);
        if (!found) return errf(err, err_len, "%s: not one of the %zu values of enum", where, json_array_size(e));
    }
    if (json_is_object(v) && check_object(s, v, where, err, err_len)) return -1;
    if (json_is_array(v) && check_array(s, v, where, err, err_len)) return -1;
    const json_t *any = json_object_get(s, "anyOf");
    if (any) {
        char first[256] = "";
        for (size_t i = 0; i < json_array_size(any); i++) {
            char why[256];
            if (validate_at(json_array_get(any, i), v, where, why, sizeof why) == 0) return 0;
            if (i == 0) snprintf(first, sizeof first, "%s", why);
        }
        return errf(err, err_len, "%s: matches none of the %zu anyOf schemas (the first says: %.200s)", where,
                    json_array_size(any), first);
    }
    return 0;
}

int json_schema_validate(const json_t *schema, const json_t *instance, char *err, size_t err_len)
{
    return validate_at(schema, instance, "$", err, err_len);
}
