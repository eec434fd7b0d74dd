/* Structured output: the schema compiler (every supported keyword, every refusal, malformed
 * schemas), the byte automaton on hand-written texts, the budget's shortest completion
 * (exact and reachable from random states), and generation with the tiny random-weight model
 * under 20 schemas: every answer is checked by an independent validator written here over
 * jansson's parse tree, not by the automaton. */
#include "engine/engine.h"
#include "engine/text/json_grammar.h"
#include "tests/grammar_gen.h"
#include "tests/harness.h"
#include "tests/serve_client.h"

#include <jansson.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- an independent validator for the supported subset ---- */

static const json_t *resolve(const json_t *doc, const json_t *s)
{
    const char *ref = json_string_value(json_object_get(s, "$ref"));
    if (!ref) return s;
    if (!strcmp(ref, "#")) return doc;
    const char *slash = strrchr(ref, '/');
    json_t *defs = json_object_get(doc, !strncmp(ref, "#/$defs/", 8) ? "$defs" : "definitions");
    return json_object_get(defs, slash + 1);
}

static bool utf8_len(const char *s, size_t n, size_t *chars)
{
    *chars = 0;
    for (size_t i = 0; i < n; i++) (*chars) += ((unsigned char)s[i] & 0xC0) != 0x80;
    return true;
}

static bool all_digits(const char *s, int n)
{
    for (int i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9') return false;
    return true;
}

static bool valid_date(const char *s)
{
    if (!all_digits(s, 4) || s[4] != '-' || !all_digits(s + 5, 2) || s[7] != '-' || !all_digits(s + 8, 2)) return false;
    int y = atoi(s), m = (s[5] - '0') * 10 + s[6] - '0', d = (s[8] - '0') * 10 + s[9] - '0';
    static const int days[] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
    if (m < 1 || m > 12 || d < 1) return false;
    int md = days[m - 1] + (m == 2 && y % 4 == 0 && (y % 100 || y % 400 == 0));
    return d <= md;
}

static bool valid_time(const char *s)
{
    if (!all_digits(s, 2) || s[2] != ':' || !all_digits(s + 3, 2) || s[5] != ':' || !all_digits(s + 6, 2)) return false;
    if (atoi(s) > 23 || atoi(s + 3) > 59 || atoi(s + 6) > 59) return false;
    s += 8;
    if (*s == '.') {
        int k = 0;
        while (s[1 + k] >= '0' && s[1 + k] <= '9') k++;
        if (k == 0) return false;
        s += 1 + k;
    }
    if (!strcmp(s, "Z")) return true;
    return (s[0] == '+' || s[0] == '-') && all_digits(s + 1, 2) && s[3] == ':' && all_digits(s + 4, 2) && !s[6] &&
           atoi(s + 1) <= 23 && atoi(s + 4) <= 59;
}

static bool valid_format(const char *f, const char *s)
{
    if (!strcmp(f, "date")) return strlen(s) == 10 && valid_date(s);
    if (!strcmp(f, "time")) return valid_time(s);
    if (!strcmp(f, "date-time")) return strlen(s) > 11 && valid_date(s) && s[10] == 'T' && valid_time(s + 11);
    if (!strcmp(f, "uuid")) {
        if (strlen(s) != 36) return false;
        for (int i = 0; i < 36; i++) {
            bool dash = i == 8 || i == 13 || i == 18 || i == 23;
            if (dash != (s[i] == '-') || (!dash && !strchr("0123456789abcdefABCDEF", s[i]))) return false;
        }
        return true;
    }
    return false;
}

static bool type_ok(const json_t *v, const char *t)
{
    if (!strcmp(t, "null")) return json_is_null(v);
    if (!strcmp(t, "boolean")) return json_is_boolean(v);
    if (!strcmp(t, "object")) return json_is_object(v);
    if (!strcmp(t, "array")) return json_is_array(v);
    if (!strcmp(t, "number")) return json_is_number(v);
    if (!strcmp(t, "integer")) return json_is_integer(v);
    if (!strcmp(t, "string")) return json_is_string(v);
    return false;
}

static bool validate(const json_t *doc, const json_t *s, const json_t *v)
{
    if (json_is_true(s)) return true;
    s = resolve(doc, s);
    if (!s) return false;
    json_t *x;
    size_t i;
    if ((x = json_object_get(s, "anyOf")) || (x = json_object_get(s, "oneOf"))) {
        int n = 0;
        json_t *alt;
        json_array_foreach(x, i, alt) n += validate(doc, alt, v);
        return json_object_get(s, "oneOf") ? n == 1 : n >= 1;
    }
    if ((x = json_object_get(s, "allOf")))
        for (i = 0; i < json_array_size(x); i++)
            if (!validate(doc, json_array_get(x, i), v)) return false;
    if ((x = json_object_get(s, "const")) && !json_equal(x, v)) return false;
    if ((x = json_object_get(s, "enum"))) {
        bool found = false;
        for (i = 0; i < json_array_size(x); i++) found |= json_equal(json_array_get(x, i), v);
        if (!found) return false;
    }
    if ((x = json_object_get(s, "type"))) {
        bool ok = false;
        if (json_is_string(x)) ok = type_ok(v, json_string_value(x));
        for (i = 0; json_is_array(x) && i < json_array_size(x); i++) ok |= type_ok(v, json_string_value(json_array_get(x, i)));
        if (!ok) return false;
    }
    if (json_is_object(v)) {
        json_t *props = json_object_get(s, "properties"), *addl = json_object_get(s, "additionalProperties");
        const char *k;
        json_t *val;
        json_object_foreach((json_t *)v, k, val) {
            json_t *ps = json_object_get(props, k);
            if (ps) {
                if (!validate(doc, ps, val)) return false;
            } else if (json_is_false(addl) || (json_is_object(addl) && !validate(doc, addl, val))) {
                return false;
            }
        }
        json_array_foreach(json_object_get(s, "required"), i, x)
            if (!json_object_get(v, json_string_value(x))) return false;
    }
    if (json_is_array(v)) {
        json_t *items = json_object_get(s, "items");
        json_t *it;
        json_array_foreach((json_t *)v, i, it)
            if (items && !validate(doc, items, it)) return false;
        if ((x = json_object_get(s, "minItems")) && json_array_size(v) < (size_t)json_integer_value(x)) return false;
        if ((x = json_object_get(s, "maxItems")) && json_array_size(v) > (size_t)json_integer_value(x)) return false;
    }
    if (json_is_string(v)) {
        size_t chars;
        utf8_len(json_string_value(v), json_string_length(v), &chars);
        if ((x = json_object_get(s, "minLength")) && chars < (size_t)json_integer_value(x)) return false;
        if ((x = json_object_get(s, "maxLength")) && chars > (size_t)json_integer_value(x)) return false;
        if ((x = json_object_get(s, "format")) && !valid_format(json_string_value(x), json_string_value(v))) return false;
    }
    return true;
}

/* text parses as JSON (no leftovers) and validates against schema_text. */
static bool parses_and_validates(const char *schema_text, const char *text, size_t len)
{
    json_t *doc = json_loads(schema_text, JSON_DECODE_ANY, NULL);
    json_t *v = json_loadb(text, len, JSON_DECODE_ANY, NULL);
    bool ok = doc && v && validate(doc, doc, v);
    json_decref(doc);
    json_decref(v);
    return ok;
}

/* ---- helpers over the automaton ---- */

static struct jg_schema *compile(const char *schema)
{
    struct jg_schema *g;
    char err[256];
    if (jg_schema_compile(&g, schema, strlen(schema), err, sizeof err)) {
        test_fail_at(__FILE__, __LINE__, "compile %s: %s", schema, err);
        return NULL;
    }
    return g;
}

/* 1: the whole text is an instance; 0: it dies or stops short. */
static int accepts(const char *schema, const char *text)
{
    struct jg_schema *g = compile(schema);
    if (!g) return -1;
    struct jg_state s;
    jg_state_init(&s);
    int ok = 1;
    for (const char *p = text; *p && ok; p++) ok = jg_state_step(g, &s, (uint8_t)*p);
    ok = ok && jg_state_accepting(g, &s);
    jg_schema_free(g);
    return ok;
}

static void refuses(const char *schema, const char *needle, int line)
{
    struct jg_schema *g = NULL;
    char err[256] = "";
    int rc = jg_schema_compile(&g, schema, strlen(schema), err, sizeof err);
    if (rc == 0) {
        test_fail_at(__FILE__, line, "compiled, expected a refusal naming '%s': %s", needle, schema);
        jg_schema_free(g);
    } else if (!strstr(err, needle)) {
        test_fail_at(__FILE__, line, "message '%s' does not name '%s'", err, needle);
    }
}
#define REFUSES(schema, needle) refuses(schema, needle, __LINE__)

TEST(json_grammar_types_and_literals)
{
    CHECK_EQ_INT(accepts("{\"type\":\"string\"}", "\"h\\u00e9 \\n \xc3\xa9\""), 1);
    CHECK_EQ_INT(accepts("{\"type\":\"string\"}", "\"a"), 0);
    CHECK_EQ_INT(accepts("{\"type\":\"string\"}", "\"\\u0000\""), 0);  /* jansson refuses it */
    CHECK_EQ_INT(accepts("{\"type\":\"string\"}", "\"\\ud800\""), 0);  /* lone surrogate */
    CHECK_EQ_INT(accepts("{\"type\":\"string\"}", "\"\xc0\xaf\""), 0); /* overlong */
    CHECK_EQ_INT(accepts("{\"type\":\"string\"}", "\"\xed\xa0\x80\""), 0); /* surrogate in UTF-8 */
    CHECK_EQ_INT(accepts("{\"type\":\"string\"}", "\"a\tb\""), 0);    /* raw control character */
    CHECK_EQ_INT(accepts("{\"type\":\"integer\"}", "-120"), 1);
    CHECK_EQ_INT(accepts("{\"type\":\"integer\"}", "012"), 0);
    CHECK_EQ_INT(accepts("{\"type\":\"integer\"}", "1.5"), 0);
    CHECK_EQ_INT(accepts("{\"type\":\"integer\"}", "1234567890123456"), 0); /* 16 digits */
    CHECK_EQ_INT(accepts("{\"type\":\"number\"}", "-0.25e+10"), 1);
    CHECK_EQ_INT(accepts("{\"type\":\"number\"}", "1e123"), 0);
    CHECK_EQ_INT(accepts("{\"type\":\"number\"}", "1."), 0);
    CHECK_EQ_INT(accepts("{\"type\":\"boolean\"}", "false"), 1);
    CHECK_EQ_INT(accepts("{\"type\":\"boolean\"}", "tru"), 0);
    CHECK_EQ_INT(accepts("{\"type\":\"null\"}", "null"), 1);
    CHECK_EQ_INT(accepts("{\"enum\":[\"red\",\"re\",1,10,[1,2],{\"a\":null}]}", "\"re\""), 1);
    CHECK_EQ_INT(accepts("{\"enum\":[\"red\",\"re\",1,10,[1,2],{\"a\":null}]}", "10"), 1);
    CHECK_EQ_INT(accepts("{\"enum\":[\"red\",\"re\",1,10,[1,2],{\"a\":null}]}", "[1,2]"), 1);
    CHECK_EQ_INT(accepts("{\"enum\":[\"red\",\"re\",1,10,[1,2],{\"a\":null}]}", "{\"a\":null}"), 1);
    CHECK_EQ_INT(accepts("{\"enum\":[\"red\",\"re\",1,10]}", "\"r\""), 0);
    CHECK_EQ_INT(accepts("{\"enum\":[\"red\",\"re\",1,10]}", "100"), 0);
    CHECK_EQ_INT(accepts("{\"const\":\"x\"}", "\"x\""), 1);
    CHECK_EQ_INT(accepts("{\"type\":\"string\",\"enum\":[\"a\",2]}", "2"), 0); /* enum filtered by type */
    CHECK_EQ_INT(accepts("{}", "[{\"k\": [true, null, -1.5, \"s\"]}]"), 1);
    CHECK_EQ_INT(accepts("true", "{}"), 1);
}

TEST(json_grammar_objects_arrays_and_whitespace)
{
    const char *person = "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\"},\"age\":{\"type\":\"integer\"},"
                         "\"tags\":{\"type\":\"array\",\"items\":{\"type\":\"string\"},\"minItems\":1,\"maxItems\":2}},"
                         "\"required\":[\"name\",\"tags\"],\"additionalProperties\":false}";
    CHECK_EQ_INT(accepts(person, "{\"name\":\"a\",\"age\":3,\"tags\":[\"x\"]}"), 1);
    CHECK_EQ_INT(accepts(person, "{ \"name\" : \"a\" ,\n  \"tags\" : [ \"x\" , \"y\" ] }"), 1); /* age optional */
    CHECK_EQ_INT(accepts(person, "{\"name\":\"a\",\"tags\":[]}"), 0);          /* minItems */
    CHECK_EQ_INT(accepts(person, "{\"name\":\"a\",\"tags\":[\"x\",\"y\",\"z\"]}"), 0); /* maxItems */
    CHECK_EQ_INT(accepts(person, "{\"name\":\"a\"}"), 0);                      /* required */
    CHECK_EQ_INT(accepts(person, "{\"tags\":[\"x\"],\"name\":\"a\"}"), 0);     /* declared order */
    CHECK_EQ_INT(accepts(person, "{\"name\":\"a\",\"name\":\"b\",\"tags\":[\"x\"]}"), 0); /* twice */
    CHECK_EQ_INT(accepts(person, "{\"name\":\"a\",\"x\":1,\"tags\":[\"x\"]}"), 0); /* undeclared */
    CHECK_EQ_INT(accepts(person, " {\"name\":\"a\",\"tags\":[\"x\"]}"), 0);     /* leading space */
    CHECK_EQ_INT(accepts(person, "{\"name\":\"a\",\"tags\":[\"x\"]} "), 0);     /* trailing space */
    CHECK_EQ_INT(accepts(person, "{\"name\":\"a\",\"tags\":[\"x\"],}"), 0);     /* trailing comma */
    CHECK_EQ_INT(accepts("{\"type\":\"object\"}", "{\"any\":{\"k\":[1]},\"b\":\"\"}"), 1);
    CHECK_EQ_INT(accepts("{\"type\":\"object\",\"additionalProperties\":false}", "{}"), 1);
    CHECK_EQ_INT(accepts("{\"type\":\"object\",\"additionalProperties\":false}", "{\"a\":1}"), 0);
    CHECK_EQ_INT(accepts("{\"type\":\"object\",\"additionalProperties\":{\"type\":\"integer\"}}", "{\"a\":1,\"b\":2}"), 1);
    CHECK_EQ_INT(accepts("{\"type\":\"object\",\"additionalProperties\":{\"type\":\"integer\"}}", "{\"a\":\"1\"}"), 0);
    CHECK_EQ_INT(accepts("{\"properties\":{\"a\\\"b\":{\"type\":\"null\"}}}", "{\"a\\\"b\":null}"), 1); /* escaped key */
    CHECK_EQ_INT(accepts("{\"type\":\"array\",\"maxItems\":0}", "[]"), 1);
    CHECK_EQ_INT(accepts("{\"type\":\"array\",\"maxItems\":0}", "[1]"), 0);
    /* whitespace runs are capped */
    char buf[256];
    snprintf(buf, sizeof buf, "[%*s1]", JG_MAX_WS, "");
    CHECK_EQ_INT(accepts("{\"type\":\"array\"}", buf), 1);
    snprintf(buf, sizeof buf, "[%*s1]", JG_MAX_WS + 1, "");
    CHECK_EQ_INT(accepts("{\"type\":\"array\"}", buf), 0);
}

TEST(json_grammar_anyof_refs_and_formats)
{
    const char *opt = "{\"anyOf\":[{\"type\":\"string\",\"maxLength\":3},{\"type\":\"null\"}]}";
    CHECK_EQ_INT(accepts(opt, "null"), 1);
    CHECK_EQ_INT(accepts(opt, "\"abc\""), 1);
    CHECK_EQ_INT(accepts(opt, "\"abcd\""), 0);
    CHECK_EQ_INT(accepts("{\"type\":[\"integer\",\"string\"]}", "\"7\""), 1);
    CHECK_EQ_INT(accepts("{\"type\":[\"integer\",\"string\"]}", "7"), 1);
    CHECK_EQ_INT(accepts("{\"oneOf\":[{\"type\":\"boolean\"},{\"type\":\"array\"}]}", "[true]"), 1);
    CHECK_EQ_INT(accepts("{\"allOf\":[{\"type\":\"boolean\"}]}", "true"), 1);
    CHECK_EQ_INT(accepts("{\"type\":\"string\",\"minLength\":2}", "\"\xc3\xa9\""), 0); /* one character */
    CHECK_EQ_INT(accepts("{\"type\":\"string\",\"minLength\":2}", "\"\xc3\xa9\\n\""), 1);
    const char *tree = "{\"$defs\":{\"Node\":{\"type\":\"object\",\"properties\":{\"v\":{\"type\":\"integer\"},"
                       "\"kids\":{\"type\":\"array\",\"items\":{\"$ref\":\"#/$defs/Node\"}}},\"required\":[\"v\"]}},"
                       "\"$ref\":\"#/$defs/Node\"}";
    CHECK_EQ_INT(accepts(tree, "{\"v\":1,\"kids\":[{\"v\":2},{\"v\":3,\"kids\":[]}]}"), 1);
    CHECK_EQ_INT(accepts(tree, "{\"v\":1,\"kids\":[{}]}"), 0);
    CHECK_EQ_INT(accepts("{\"type\":\"object\",\"properties\":{\"n\":{\"$ref\":\"#\"}}}", "{\"n\":{\"n\":{}}}"), 1);
    const char *date = "{\"type\":\"string\",\"format\":\"date\"}";
    CHECK_EQ_INT(accepts(date, "\"2024-02-29\""), 1);
    CHECK_EQ_INT(accepts(date, "\"2023-02-29\""), 0);
    CHECK_EQ_INT(accepts(date, "\"1900-02-29\""), 0);
    CHECK_EQ_INT(accepts(date, "\"2000-02-29\""), 1);
    CHECK_EQ_INT(accepts(date, "\"2024-04-31\""), 0);
    CHECK_EQ_INT(accepts(date, "\"2024-12-31\""), 1);
    CHECK_EQ_INT(accepts(date, "\"2024-13-01\""), 0);
    CHECK_EQ_INT(accepts(date, "\"2024-00-10\""), 0);
    const char *dt = "{\"type\":\"string\",\"format\":\"date-time\"}";
    CHECK_EQ_INT(accepts(dt, "\"2024-05-06T23:59:59.123+05:30\""), 1);
    CHECK_EQ_INT(accepts(dt, "\"2024-05-06T24:00:00Z\""), 0);
    CHECK_EQ_INT(accepts(dt, "\"2024-05-06T10:00:00\""), 0); /* offset required */
    CHECK_EQ_INT(accepts("{\"type\":\"string\",\"format\":\"time\"}", "\"08:30:00Z\""), 1);
    const char *uuid = "{\"type\":\"string\",\"format\":\"uuid\"}";
    CHECK_EQ_INT(accepts(uuid, "\"123e4567-e89b-12d3-A456-426614174000\""), 1);
    CHECK_EQ_INT(accepts(uuid, "\"123e4567e89b-12d3-a456-426614174000\""), 0);
}

TEST(json_schema_refuses_unsupported_keywords_by_name)
{
    REFUSES("{\"type\":\"integer\",\"minimum\":0}", "'minimum'");
    REFUSES("{\"type\":\"string\",\"pattern\":\"a+\"}", "'pattern'");
    REFUSES("{\"type\":\"object\",\"patternProperties\":{}}", "'patternProperties'");
    REFUSES("{\"not\":{}}", "'not'");
    REFUSES("{\"if\":{},\"then\":{}}", "'if'");
    REFUSES("{\"type\":\"array\",\"prefixItems\":[]}", "'prefixItems'");
    REFUSES("{\"type\":\"array\",\"uniqueItems\":true}", "uniqueItems");
    REFUSES("{\"type\":\"array\",\"items\":[{}]}", "tuple");
    REFUSES("{\"type\":\"string\",\"format\":\"email\"}", "'email'");
    REFUSES("{\"allOf\":[{},{}]}", "allOf");
    REFUSES("{\"anyOf\":[{\"type\":\"string\"},{\"enum\":[\"a\"]}]}", "alternatives 0 and 1");
    REFUSES("{\"anyOf\":[{\"type\":\"integer\"},{\"type\":\"number\"}]}", "alternatives 0 and 1");
    REFUSES("{\"$ref\":\"http://example.com/s.json\"}", "$ref");
    REFUSES("{\"$ref\":\"#/$defs/Missing\"}", "not found");
    REFUSES("{\"$ref\":\"#\"}", "cycle");
    REFUSES("{\"type\":\"object\",\"properties\":{\"a\":{\"$ref\":\"#\"}},\"required\":[\"a\"]}", "no finite instance");
    REFUSES("{\"type\":\"object\",\"properties\":{\"p\":{\"type\":\"string\",\"maxLength\":1,\"minimum\":3}}}",
            "schema.properties.p: keyword 'minimum'");
    REFUSES("{\"$ref\":\"#/$defs/A\",\"type\":\"string\",\"$defs\":{\"A\":{}}}", "beside $ref");
}

TEST(json_schema_refuses_malformed_schemas)
{
    REFUSES("{\"type\":", "invalid JSON");
    REFUSES("{\"type\":\"strin\"}", "type");
    REFUSES("{\"type\":[]}", "empty");
    REFUSES("{\"type\":7}", "type");
    REFUSES("[1]", "expected a schema");
    REFUSES("false", "allows no value");
    REFUSES("{\"properties\":[]}", "properties: expected an object");
    REFUSES("{\"properties\":{\"a\":7}}", "properties.a: expected a schema");
    REFUSES("{\"properties\":{\"a\":{}},\"required\":[\"b\"]}", "required[0]");
    REFUSES("{\"required\":\"a\"}", "required");
    REFUSES("{\"type\":\"array\",\"minItems\":-1}", "minItems");
    REFUSES("{\"type\":\"array\",\"minItems\":3,\"maxItems\":2}", "minItems 3 > maxItems 2");
    REFUSES("{\"type\":\"string\",\"maxLength\":1.5}", "maxLength");
    REFUSES("{\"enum\":[]}", "no allowed value");
    REFUSES("{\"enum\":{}}", "enum: expected an array");
    REFUSES("{\"type\":\"integer\",\"enum\":[\"a\"]}", "no allowed value");
    REFUSES("{\"anyOf\":[]}", "anyOf");
    REFUSES("{\"additionalProperties\":3}", "additionalProperties");
    REFUSES("{\"type\":\"string\",\"type\":\"integer\"}", "invalid JSON"); /* duplicate key */
    char deep[2048] = "";
    for (int i = 0; i < 80; i++) strcat(deep, "{\"items\":");
    strcat(deep, "{}");
    for (int i = 0; i < 80; i++) strcat(deep, "}");
    REFUSES(deep, "nested deeper");
}

/* From random reachable states: min_close is exact (some byte lowers it by one, none by
 * more) and following it ends in an accepting state that validates. */
static void check_min_close(const char *schema, uint64_t seed, int line)
{
    struct jg_schema *g = compile(schema);
    if (!g) return;
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    for (int walk = 0; walk < 40; walk++) {
        struct jg_state s, t;
        jg_state_init(&s);
        char text[4096];
        size_t len = 0;
        int steps = (int)(walk % 20);
        for (int k = 0; k < steps && !s.done; k++) { /* a random live byte */
            uint8_t ok[256];
            int n = 0;
            for (int c = 0; c < 256; c++) {
                jg_state_copy(&t, &s);
                if (jg_state_step(g, &t, (uint8_t)c)) ok[n++] = (uint8_t)c;
            }
            if (!n) break;
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            uint8_t c = ok[x % (uint64_t)n];
            jg_state_step(g, &s, c);
            text[len++] = (char)c;
        }
        for (;;) { /* the shortest completion, byte by byte */
            uint32_t need = jg_state_min_close(g, &s);
            if (need == 0) break;
            int found = -1;
            for (int c = 0; c < 256 && found < 0; c++) {
                jg_state_copy(&t, &s);
                if (!jg_state_step(g, &t, (uint8_t)c)) continue;
                uint32_t after = jg_state_min_close(g, &t);
                if (after + 1 < need) {
                    test_fail_at(__FILE__, line, "%s: min_close %u, byte %d gives %u", schema, need, c, after);
                    goto out;
                }
                if (after + 1 == need) found = c;
            }
            if (found < 0 || len >= sizeof text - 1) {
                test_fail_at(__FILE__, line, "%s: min_close %u but no byte lowers it after '%.*s'", schema, need, (int)len, text);
                goto out;
            }
            jg_state_step(g, &s, (uint8_t)found);
            text[len++] = (char)found;
        }
        if (!jg_state_accepting(g, &s) || !parses_and_validates(schema, text, len)) {
            test_fail_at(__FILE__, line, "%s: shortest completion '%.*s' is not a valid instance", schema, (int)len, text);
            break;
        }
    }
out:
    jg_schema_free(g);
}

/* The 20 schemas of the generation property test (and of the min_close test). */
static const char *const schemas[20] = {
    "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\"},\"age\":{\"type\":\"integer\"}},\"required\":[\"name\",\"age\"],\"additionalProperties\":false}",
    "{\"type\":\"array\",\"items\":{\"type\":\"number\"},\"minItems\":2,\"maxItems\":4}",
    "{\"enum\":[\"red\",\"green\",\"blue\",42,null]}",
    "{\"type\":\"string\",\"format\":\"date\"}",
    "{\"type\":\"string\",\"format\":\"date-time\"}",
    "{\"type\":\"string\",\"format\":\"uuid\"}",
    "{\"type\":\"object\"}",
    "{}",
    "{\"anyOf\":[{\"type\":\"string\",\"maxLength\":5},{\"type\":\"null\"},{\"type\":\"integer\"}]}",
    "{\"type\":\"object\",\"properties\":{\"ok\":{\"type\":\"boolean\"},\"items\":{\"type\":\"array\",\"items\":{\"type\":\"object\",\"properties\":{\"id\":{\"type\":\"integer\"},\"label\":{\"type\":\"string\",\"minLength\":1}},\"required\":[\"id\"]}}},\"required\":[\"ok\",\"items\"]}",
    "{\"$defs\":{\"N\":{\"type\":\"object\",\"properties\":{\"v\":{\"type\":\"integer\"},\"kids\":{\"type\":\"array\",\"items\":{\"$ref\":\"#/$defs/N\"},\"maxItems\":2}},\"required\":[\"v\"]}},\"$ref\":\"#/$defs/N\"}",
    "{\"type\":\"object\",\"additionalProperties\":{\"type\":\"integer\"}}",
    "{\"type\":\"string\",\"minLength\":3,\"maxLength\":6}",
    "{\"type\":[\"boolean\",\"array\"],\"items\":{\"const\":\"x\"}}",
    "{\"type\":\"object\",\"properties\":{\"when\":{\"type\":\"string\",\"format\":\"time\"},\"where\":{\"enum\":[\"home\",\"office\"]}},\"required\":[\"when\",\"where\"]}",
    "{\"type\":\"number\"}",
    "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"},\"b\":{\"type\":\"integer\"},\"c\":{\"type\":\"integer\"}}}",
    "{\"oneOf\":[{\"type\":\"object\",\"properties\":{\"kind\":{\"const\":\"circle\"},\"r\":{\"type\":\"number\"}},\"required\":[\"kind\",\"r\"]},{\"type\":\"array\",\"items\":{\"type\":\"integer\"},\"maxItems\":3}]}",
    "{\"type\":\"array\",\"items\":{\"type\":\"array\",\"items\":{\"type\":\"boolean\"},\"minItems\":1},\"minItems\":1,\"maxItems\":3}",
    "{\"type\":\"object\",\"properties\":{\"title\":{\"type\":\"string\",\"maxLength\":20},\"year\":{\"anyOf\":[{\"type\":\"integer\"},{\"type\":\"null\"}]},\"genres\":{\"type\":\"array\",\"items\":{\"enum\":[\"drama\",\"comedy\"]}}},\"required\":[\"title\",\"year\",\"genres\"],\"additionalProperties\":false}",
};

TEST(json_grammar_min_close_is_exact_and_completes_validly)
{
    for (int i = 0; i < 20; i++) check_min_close(schemas[i], (uint64_t)i + 1, __LINE__);
}

/* ---- generation with the tiny random-weight model ---- */

struct gen {
    struct grammar_gen b;
    struct jg_matcher *m;
};

/* One generation of at most max_tokens under g from the prompt "{" + BOS: returns 1 when it
 * ended with EOS, 0 at max_tokens; the text goes to out. */
static int generate(struct gen *G, const struct jg_schema *g, uint64_t seed, float temperature, uint32_t max_tokens,
                    char *out, size_t cap, size_t *len)
{
    char err[256];
    struct sampler_params sp;
    sampler_params_default(&sp);
    sp.temperature = temperature;
    sp.seed = seed;
    struct sampler *smp;
    if (sampler_create(&smp, G->b.n_vocab, &sp, err, sizeof err)) return -1;
    session_reset(G->b.sess);
    jg_matcher_start(G->m, g);
    int32_t bos = tok_bos(G->b.tok), eos = tok_eos(G->b.tok);
    int rc = session_eval(G->b.sess, &bos, 1, G->b.logits, false, err, sizeof err) ? -1 : 0;
    *len = 0;
    for (uint32_t n = 0; !rc && n < max_tokens; n++) {
        jg_mask(G->m, max_tokens - n, eos, G->b.allow);
        int32_t t = sampler_sample_masked(smp, G->b.logits, G->b.allow);
        if (t < 0) { rc = -1; break; }
        if (t == eos) { rc = 1; break; }
        if (jg_matcher_accept(G->m, t)) { rc = -1; break; }
        size_t pl;
        const char *p = tok_piece(G->b.tok, t, 0, &pl);
        if (*len + pl >= cap) { rc = -1; break; }
        memcpy(out + *len, p, pl);
        *len += pl;
        if (session_eval(G->b.sess, &t, 1, G->b.logits, false, err, sizeof err)) rc = -1;
    }
    out[*len] = 0;
    sampler_destroy(smp);
    return rc;
}

static int gen_open(struct gen *G)
{
    char err[256];
    G->m = NULL;
    if (grammar_gen_open(&G->b, 256)) return -1;
    if (jg_matcher_create(&G->m, G->b.vocab, err, sizeof err)) {
        test_fail_at(__FILE__, __LINE__, "grammar: %s", err);
        return -1;
    }
    return 0;
}

static void gen_close(struct gen *G)
{
    jg_matcher_destroy(G->m);
    grammar_gen_close(&G->b);
}

TEST(json_grammar_200_random_model_generations_under_20_schemas_all_validate)
{
    struct gen G;
    REQUIRE(gen_open(&G) == 0);
    REQUIRE(jg_vocab_has_ascii_bytes(G.b.vocab));
    int ended = 0, total = 0;
    char text[8192];
    for (int i = 0; i < 20; i++) {
        struct jg_schema *g = compile(schemas[i]);
        REQUIRE(g);
        uint32_t max_tokens = jg_schema_min_bytes(g) + 16; /* room for the smallest answer and some freedom */
        for (int k = 0; k < 10; k++) {
            size_t len;
            int rc = generate(&G, g, (uint64_t)(i * 10 + k), k % 5 == 0 ? 0.0f : 1.0f + 0.2f * (float)(k % 3), max_tokens,
                              text, sizeof text, &len);
            total++;
            ended += rc == 1;
            if (rc != 1) test_fail_at(__FILE__, __LINE__, "schema %d seed %d: rc %d, text '%s'", i, i * 10 + k, rc, text);
            else if (!parses_and_validates(schemas[i], text, len))
                test_fail_at(__FILE__, __LINE__, "schema %d seed %d: '%s' does not validate", i, i * 10 + k, text);
        }
        jg_schema_free(g);
    }
    CHECK_EQ_INT(ended, 200);
    CHECK_EQ_INT(total, 200);
    gen_close(&G);
}

TEST(json_grammar_mask_only_removes_tokens_and_same_seed_same_text)
{
    struct gen G;
    REQUIRE(gen_open(&G) == 0);
    struct jg_schema *g = compile(schemas[0]);
    REQUIRE(g);
    char a[4096], b[4096];
    size_t la, lb;
    CHECK_EQ_INT(generate(&G, g, 7, 1.0f, 60, a, sizeof a, &la), 1);
    CHECK_EQ_INT(generate(&G, g, 7, 1.0f, 60, b, sizeof b, &lb), 1);
    CHECK(la == lb && !memcmp(a, b, la));
    /* Every allowed token at the start begins an object; every other is refused. */
    jg_matcher_start(G.m, g);
    jg_mask(G.m, 60, tok_eos(G.b.tok), G.b.allow);
    int n_allowed = 0;
    for (uint32_t t = 0; t < G.b.n_vocab; t++) {
        bool on = G.b.allow[t >> 5] >> (t & 31) & 1;
        size_t pl;
        const char *p = tok_piece(G.b.tok, (int32_t)t, 0, &pl);
        n_allowed += on;
        if (on) CHECK(pl > 0 && p[0] == '{');
        if (pl == 1 && p[0] == '{') CHECK(on);
    }
    CHECK(n_allowed >= 1);
    CHECK(!(G.b.allow[(uint32_t)tok_eos(G.b.tok) >> 5] >> ((uint32_t)tok_eos(G.b.tok) & 31) & 1));
    jg_schema_free(g);
    gen_close(&G);
}

/* ---- end to end over the daemon's Unix socket ---- */

static const char *const json_sets[] = { "server.slots=2", NULL };

/* The answer's content (chat) or text (completion) and finish_reason of a 200 reply. */
static char *answer_of(const char *reply, const char **finish, json_t **root)
{
    *root = json_loads(reply, 0, NULL);
    json_t *ch = json_array_get(json_object_get(*root, "choices"), 0);
    json_t *msg = json_object_get(ch, "message");
    *finish = json_string_value(json_object_get(ch, "finish_reason"));
    return (char *)json_string_value(msg ? json_object_get(msg, "content") : json_object_get(ch, "text"));
}

#define PERSON_SCHEMA "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\",\"maxLength\":12},\"born\":{\"type\":\"string\",\"format\":\"date\"},\"tags\":{\"type\":\"array\",\"items\":{\"enum\":[\"a\",\"b\"]},\"maxItems\":3}},\"required\":[\"name\",\"born\",\"tags\"],\"additionalProperties\":false}"

TEST(serve_json_answers_validate_bad_schemas_400)
{
    struct served d;
    REQUIRE(serve_start(&d, json_sets) == 0);
    char *out = NULL, body[2048];
    const char *finish;
    json_t *root;
    for (int seed = 0; seed < 4; seed++) {
        snprintf(body, sizeof body,
                 "{\"model\":\"x\",\"messages\":[{\"role\":\"user\",\"content\":\"Extract the person as JSON\"}],"
                 "\"max_tokens\":80,\"seed\":%d,\"temperature\":%s,\"response_format\":{\"type\":\"json_schema\","
                 "\"json_schema\":{\"name\":\"person\",\"strict\":true,\"schema\":" PERSON_SCHEMA "}}}",
                 seed, seed ? "1.0" : "0");
        CHECK_EQ_INT(serve_curl(&d, "POST", "/v1/chat/completions", body, &out, NULL), 200);
        const char *text = answer_of(out, &finish, &root);
        CHECK(text && parses_and_validates(PERSON_SCHEMA, text, strlen(text)));
        CHECK_STR(finish, "stop");
        if (!text || !parses_and_validates(PERSON_SCHEMA, text, strlen(text))) test_fail_at(__FILE__, __LINE__, "reply %s", out);
        json_decref(root);
        free(out);
    }
    /* thinking: free reasoning, then the JSON after </think> as the content */
    snprintf(body, sizeof body,
             "{\"messages\":[{\"role\":\"user\",\"content\":\"Think, then answer\"}],\"thinking\":true,\"max_tokens\":90,"
             "\"seed\":5,\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"p\",\"schema\":" PERSON_SCHEMA "}}}");
    CHECK_EQ_INT(serve_curl(&d, "POST", "/v1/chat/completions", body, &out, NULL), 200);
    {
        const char *t = answer_of(out, &finish, &root);
        if (!t || !parses_and_validates(PERSON_SCHEMA, t, strlen(t))) test_fail_at(__FILE__, __LINE__, "thinking reply %s", out);
        CHECK_STR(finish, "stop");
        json_decref(root);
        free(out);
    }
    /* json_object on /v1/completions */
    CHECK_EQ_INT(serve_curl(&d, "POST", "/v1/completions",
                            "{\"prompt\":\"JSON:\",\"max_tokens\":40,\"seed\":3,\"response_format\":{\"type\":\"json_object\"}}",
                            &out, NULL), 200);
    const char *text = answer_of(out, &finish, &root);
    json_t *v = text ? json_loads(text, 0, NULL) : NULL;
    CHECK(json_is_object(v));
    CHECK_STR(finish, "stop");
    json_decref(v);
    json_decref(root);
    free(out);
    /* refusals name what is wrong */
    static const struct { const char *rf, *needle; } bad[] = {
        { "{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"n\",\"schema\":{\"type\":\"integer\",\"minimum\":1}}}", "minimum" },
        { "{\"type\":\"json_schema\",\"json_schema\":{\"schema\":{}}}", "name: missing" },
        { "{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"n\",\"schema\":{\"type\":\"strin\"}}}", "type" },
        { "{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"n\",\"extra\":1}}", "extra: unknown field" },
        { "{\"type\":\"xml\"}", "response_format.type" },
        { "\"json_object\"", "response_format" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        snprintf(body, sizeof body, "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"response_format\":%s}", bad[i].rf);
        CHECK_EQ_INT(serve_curl(&d, "POST", "/v1/chat/completions", body, &out, NULL), 400);
        if (!out || !strstr(out, bad[i].needle)) test_fail_at(__FILE__, __LINE__, "%s: reply %s lacks '%s'", bad[i].rf, out, bad[i].needle);
        free(out);
    }
    CHECK_EQ_INT(serve_curl(&d, "POST", "/v1/chat/completions",
                            "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"ignore_eos\":true,"
                            "\"response_format\":{\"type\":\"json_object\"}}", &out, NULL), 400);
    free(out);
    /* too few tokens for the smallest instance: what fits, cut off, finish_reason "length" */
    snprintf(body, sizeof body, "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":3,\"seed\":1,"
             "\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"p\",\"schema\":" PERSON_SCHEMA "}}}");
    CHECK_EQ_INT(serve_curl(&d, "POST", "/v1/chat/completions", body, &out, NULL), 200);
    answer_of(out, &finish, &root);
    CHECK_STR(finish, "length");
    json_decref(root);
    free(out);
    serve_stop(&d, SIGTERM, 10000);
}

TEST(serve_json_seeded_same_alone_and_loaded)
{
    struct served d;
    REQUIRE(serve_start(&d, json_sets) == 0);
    const char *body = "{\"messages\":[{\"role\":\"user\",\"content\":\"Extract\"}],\"max_tokens\":60,\"seed\":11,"
                       "\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"p\",\"schema\":" PERSON_SCHEMA "}}}";
    char *alone = NULL, *loaded = NULL;
    CHECK_EQ_INT(serve_curl(&d, "POST", "/v1/chat/completions", body, &alone, NULL), 200);
    int other = serve_load_start(&d); /* a second unconstrained request sharing the batch */
    CHECK_EQ_INT(serve_curl(&d, "POST", "/v1/chat/completions", body, &loaded, NULL), 200);
    CHECK(serve_load_wait(other) == 0);
    const char *fa, *fb;
    json_t *ra, *rb;
    const char *ta = answer_of(alone, &fa, &ra), *tb = answer_of(loaded, &fb, &rb);
    CHECK_STR(ta, tb);
    CHECK(ta && parses_and_validates(PERSON_SCHEMA, ta, strlen(ta)));
    /* streamed: the content deltas reassemble to the same answer */
    char sbody[2048];
    snprintf(sbody, sizeof sbody, "%.*s,\"stream\":true}", (int)strlen(body) - 1, body);
    static const char *const extra[] = { "-N", NULL };
    char *sse = NULL, text[4096] = "";
    CHECK_EQ_INT(serve_curl(&d, "POST", "/v1/chat/completions", sbody, &sse, extra), 200);
    for (char *ev = sse ? strstr(sse, "data: ") : NULL; ev; ev = strstr(ev + 6, "data: ")) {
        char *end = strstr(ev, "\n\n");
        if (!end) break;
        *end = 0;
        json_t *c = json_loads(ev + 6, 0, NULL);
        const char *piece = json_string_value(
            json_object_get(json_object_get(json_array_get(json_object_get(c, "choices"), 0), "delta"), "content"));
        if (piece) strncat(text, piece, sizeof text - strlen(text) - 1);
        json_decref(c);
        *end = '\n';
    }
    CHECK_STR(text, ta);
    free(sse);
    json_decref(ra);
    json_decref(rb);
    free(alone);
    free(loaded);
    serve_stop(&d, SIGTERM, 10000);
}
