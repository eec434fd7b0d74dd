/* Evaluation sets: the JSON Schema subset validator (the engine's, json_validate.h), the set parser (malformed sets get a
 * message naming the line), the text scorers, and whole runs on tiny models: a set
 * recorded from model A scores 1 on A, lower on a model with other weights, the same with
 * any number of jobs, and the SHA-256 is that of the bytes evaluated. */
#include "firmware/eval_run.h"
#include "firmware/eval_set.h"
#include "tests/harness.h"
#include "tools/mkmodel.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static json_t *js(const char *text)
{
    json_error_t je;
    json_t *v = json_loads(text, JSON_DECODE_ANY, &je);
    if (!v) test_fail_at(__FILE__, __LINE__, "bad test JSON %s: %s", text, je.text);
    return v;
}

/* 0 when the schema compiles (*g then owned by the caller), else -1 with err. */
static int schema_compile(const char *schema, struct jg_schema **g, char *err, size_t err_len)
{
    return jg_schema_compile(g, schema, strlen(schema), err, err_len);
}

/* 1 when instance validates under schema, 0 when not, -1 when the schema is refused. */
static int validates(const char *schema, const char *instance)
{
    json_decref(js(instance)); /* the test's own JSON is well formed */
    struct jg_schema *g;
    char err[256];
    if (schema_compile(schema, &g, err, sizeof err)) return -1;
    int r = jg_schema_validate(g, instance, strlen(instance), err, sizeof err) == 0;
    jg_schema_free(g);
    return r;
}

TEST(json_schema_checks_each_keyword)
{
    CHECK_EQ_INT(validates("{\"type\":\"integer\"}", "3"), 1);
    CHECK_EQ_INT(validates("{\"type\":\"integer\"}", "3.0"), 1); /* integral numbers are integers */
    CHECK_EQ_INT(validates("{\"type\":\"integer\"}", "3.5"), 0);
    CHECK_EQ_INT(validates("{\"type\":\"number\"}", "\"3\""), 0);
    CHECK_EQ_INT(validates("{\"type\":[\"string\",\"null\"]}", "null"), 1);
    CHECK_EQ_INT(validates("{\"type\":[\"string\",\"null\"]}", "true"), 0);
    const char *obj = "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"string\"},\"n\":{\"type\":\"integer\"}},"
                      "\"required\":[\"a\"],\"additionalProperties\":false}";
    CHECK_EQ_INT(validates(obj, "{\"a\":\"x\",\"n\":2}"), 1);
    CHECK_EQ_INT(validates(obj, "{\"n\":2}"), 0);              /* required */
    CHECK_EQ_INT(validates(obj, "{\"a\":\"x\",\"z\":1}"), 0);  /* additionalProperties false */
    CHECK_EQ_INT(validates(obj, "{\"a\":1}"), 0);              /* property's type */
    CHECK_EQ_INT(validates("{\"additionalProperties\":{\"type\":\"integer\"}}", "{\"q\":1}"), 1);
    CHECK_EQ_INT(validates("{\"additionalProperties\":{\"type\":\"integer\"}}", "{\"q\":\"1\"}"), 0);
    CHECK_EQ_INT(validates("{\"enum\":[\"red\",2,null]}", "2.0"), 1); /* numbers by value */
    CHECK_EQ_INT(validates("{\"enum\":[\"red\",2,null]}", "\"blue\""), 0);
    CHECK_EQ_INT(validates("{\"const\":{\"k\":[1,2]}}", "{\"k\":[1,2.0]}"), 1);
    CHECK_EQ_INT(validates("{\"const\":{\"k\":[1,2]}}", "{\"k\":[2,1]}"), 0);
    const char *arr = "{\"type\":\"array\",\"items\":{\"type\":\"boolean\"},\"minItems\":1,\"maxItems\":2}";
    CHECK_EQ_INT(validates(arr, "[true]"), 1);
    CHECK_EQ_INT(validates(arr, "[]"), 0);
    CHECK_EQ_INT(validates(arr, "[true,false,true]"), 0);
    CHECK_EQ_INT(validates(arr, "[true,1]"), 0);
    const char *any = "{\"anyOf\":[{\"type\":\"string\"},{\"type\":\"integer\",\"enum\":[7]}]}";
    CHECK_EQ_INT(validates(any, "\"s\""), 1);
    CHECK_EQ_INT(validates(any, "7"), 1);
    CHECK_EQ_INT(validates(any, "8"), 0);
}

TEST(json_schema_refuses_what_it_cannot_check)
{
    CHECK_EQ_INT(validates("{\"type\":\"object\",\"pattern\":\"x\"}", "{}"), -1);  /* unsupported keyword */
    CHECK_EQ_INT(validates("{\"type\":\"int\"}", "1"), -1);                       /* unknown type */
    CHECK_EQ_INT(validates("{\"minItems\":-1}", "[]"), -1);
    CHECK_EQ_INT(validates("{\"minItems\":3,\"maxItems\":2}", "[]"), -1);
    CHECK_EQ_INT(validates("{\"anyOf\":[]}", "1"), -1);
    CHECK_EQ_INT(validates("[]", "1"), -1);
    CHECK_EQ_INT(validates("{\"title\":\"t\",\"description\":\"d\",\"type\":\"null\"}", "null"), 1);
    /* The place of the bad keyword is named. */
    struct jg_schema *g = NULL;
    char err[256];
    CHECK(schema_compile("{\"properties\":{\"a\":{\"items\":{\"type\":\"nope\"}}}}", &g, err, sizeof err) != 0);
    CHECK(strstr(err, "properties.a.items.type") != NULL);
    /* Depth is bounded. */
    char deep[4096] = "";
    for (int i = 0; i < 40; i++) strcat(deep, "{\"items\":");
    strcat(deep, "{}");
    for (int i = 0; i < 40; i++) strcat(deep, "}");
    CHECK_EQ_INT(validates(deep, "[]"), -1);
}

/* Where the eval validator and the structured-output compiler used to differ (two modules
 * then): each keyword is now supported by both or refused by both, and what the grammar
 * generates always validates. */
TEST(json_schema_one_subset_for_grammar_and_validator)
{
    /* supported now by the validator too (it refused them): checked, not ignored */
    CHECK_EQ_INT(validates("{\"type\":\"string\",\"maxLength\":3}", "\"abc\""), 1);
    CHECK_EQ_INT(validates("{\"type\":\"string\",\"maxLength\":3}", "\"abcd\""), 0);
    CHECK_EQ_INT(validates("{\"type\":\"string\",\"minLength\":2}", "\"\u00e9\""), 0); /* characters, not bytes */
    CHECK_EQ_INT(validates("{\"type\":\"string\",\"format\":\"date\"}", "\"2024-02-29\""), 1);
    CHECK_EQ_INT(validates("{\"type\":\"string\",\"format\":\"date\"}", "\"2023-02-29\""), 0);
    CHECK_EQ_INT(validates("{\"type\":\"string\",\"format\":\"uuid\"}", "\"123e4567-e89b-12d3-a456-426614174000\""), 1);
    CHECK_EQ_INT(validates("{\"type\":\"string\",\"format\":\"date-time\"}", "\"2024-05-06T10:00:00\""), 0);
    const char *tree = "{\"$defs\":{\"N\":{\"type\":\"object\",\"properties\":{\"v\":{\"type\":\"integer\"},"
                       "\"k\":{\"type\":\"array\",\"items\":{\"$ref\":\"#/$defs/N\"}}},\"required\":[\"v\"]}},\"$ref\":\"#/$defs/N\"}";
    CHECK_EQ_INT(validates(tree, "{\"k\":[{\"v\":2}],\"v\":1}"), 1); /* any order, unlike what the grammar writes */
    CHECK_EQ_INT(validates(tree, "{\"v\":1,\"k\":[{}]}"), 0);
    CHECK_EQ_INT(validates("{\"oneOf\":[{\"type\":\"boolean\"},{\"type\":\"array\"}]}", "[1]"), 1);
    CHECK_EQ_INT(validates("{\"allOf\":[{\"type\":\"boolean\"}]}", "1"), 0);
    CHECK_EQ_INT(validates("{\"type\":\"array\",\"uniqueItems\":false}", "[1,1]"), 1);
    CHECK_EQ_INT(validates("{\"$comment\":\"c\",\"deprecated\":true,\"type\":\"null\"}", "null"), 1);
    /* declared properties with additionalProperties absent, a schema, or false */
    const char *decl = "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"}}}";
    CHECK_EQ_INT(validates(decl, "{\"a\":1,\"z\":[true]}"), 1);
    const char *typed = "{\"type\":\"object\",\"properties\":{\"a\":{}},\"additionalProperties\":{\"type\":\"string\"}}";
    CHECK_EQ_INT(validates(typed, "{\"a\":1,\"z\":\"s\"}"), 1);
    CHECK_EQ_INT(validates(typed, "{\"a\":1,\"z\":2}"), 0);
    /* refused now by the validator too (it accepted them): overlapping anyOf alternatives,
     * required naming an undeclared property, nesting past the automaton's depth */
    CHECK_EQ_INT(validates("{\"anyOf\":[{\"type\":\"integer\"},{\"type\":\"number\"}]}", "1"), -1);
    CHECK_EQ_INT(validates("{\"required\":[\"a\"]}", "{\"a\":1}"), -1);
    CHECK_EQ_INT(validates("{\"type\":\"string\",\"format\":\"email\"}", "\"a@b\""), -1);
    CHECK_EQ_INT(validates("{\"type\":\"integer\",\"minimum\":0}", "1"), -1);
    /* keywords name their type when "type" is missing, for both */
    CHECK_EQ_INT(validates("{\"properties\":{\"a\":{}}}", "5"), 0);
    CHECK_EQ_INT(validates("{\"items\":{\"type\":\"integer\"}}", "[1]"), 1);
    /* every complete instance the grammar takes validates */
    static const char *const pairs[][2] = {
        { "{\"type\":\"object\",\"properties\":{\"n\":{\"type\":\"number\"},\"s\":{\"type\":\"string\",\"maxLength\":4}},"
          "\"required\":[\"n\"],\"additionalProperties\":false}", "{ \"n\" : -0.5e+3 , \"s\":\"\\u00e9\\n\"}" },
        { "{\"enum\":[1,\"x\",[true],{\"k\":null}]}", "{\"k\":null}" },
        { "{\"type\":[\"integer\",\"null\"]}", "null" },
        { "{\"type\":\"string\",\"format\":\"time\"}", "\"23:59:59.5-01:00\"" },
    };
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
        struct jg_schema *g;
        char err[256];
        if (schema_compile(pairs[i][0], &g, err, sizeof err)) {
            test_fail_at(__FILE__, __LINE__, "%s: %s", pairs[i][0], err);
            continue;
        }
        struct jg_state st;
        jg_state_init(&st);
        bool ok = true;
        for (const char *p = pairs[i][1]; *p && ok; p++) ok = jg_state_step(g, &st, (uint8_t)*p);
        CHECK(ok && jg_state_accepting(g, &st));
        if (jg_schema_validate(g, pairs[i][1], strlen(pairs[i][1]), err, sizeof err))
            test_fail_at(__FILE__, __LINE__, "%s under %s: %s", pairs[i][1], pairs[i][0], err);
        jg_schema_free(g);
    }
    /* the failing place is named from the root */
    struct jg_schema *g;
    char err[256] = "";
    CHECK_EQ_INT(schema_compile("{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"array\",\"items\":{\"type\":\"string\"}}}}", &g,
                                err, sizeof err), 0);
    const char *bad = "{\"a\":[\"x\",\"y\",3]}";
    CHECK(jg_schema_validate(g, bad, strlen(bad), err, sizeof err) != 0);
    CHECK(strstr(err, "$.a[2]: expected a string, got an integer") != NULL);
    CHECK(jg_schema_validate(g, "{\"a\":", 5, err, sizeof err) != 0);
    CHECK(strstr(err, "not JSON") != NULL);
    jg_schema_free(g);
}

#define MSG "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]"

/* Parses text as a set; returns 0 or -1, with the message in err. */
static int parse(const char *text, bool recording, char *err, size_t err_len)
{
    struct eval_set s;
    int rc = eval_set_parse(text, strlen(text), "site.jsonl", recording, &s, err, err_len);
    if (!rc) eval_set_free(&s);
    return rc;
}

/* A malformed set is refused with a message that names the line and says what is wrong. */
static void expect_refused(const char *text, const char *where, const char *what, int line)
{
    char err[512] = "";
    if (parse(text, false, err, sizeof err) == 0) {
        test_fail_at(__FILE__, line, "accepted: %s", text);
        return;
    }
    if (!strstr(err, where) || !strstr(err, what)) test_fail_at(__FILE__, line, "message \"%s\" lacks \"%s\" / \"%s\"", err, where, what);
}

TEST(eval_set_malformed_lines_are_named)
{
    const char *ok = "{\"id\":\"a\"," MSG ",\"scorer\":\"exact\",\"expected\":\"x\"}\n";
    char text[2048];
    snprintf(text, sizeof text, "%s\n{\"id\":\"b\"," MSG ",\"scorer\":\"exact\",\"expected\":\"x\"}\n{\"id\":\"c\"," MSG ",\"scorer\":\"exact\",\"expected\":\"x\"\n", ok);
    expect_refused(text, "site.jsonl:4:", "invalid JSON", __LINE__);
    snprintf(text, sizeof text, "%s[1,2]\n", ok);
    expect_refused(text, "site.jsonl:2:", "one JSON object per line", __LINE__);
    expect_refused("{\"id\":\"a\"," MSG ",\"scorer\":\"fuzzy\",\"expected\":\"x\"}", "site.jsonl:1:", "\"fuzzy\" is not one of", __LINE__);
    expect_refused("{\"id\":\"a\"," MSG ",\"scorer\":\"exact\"}", ":1: expected: missing", "--record", __LINE__);
    expect_refused("{\"id\":\"a\"," MSG ",\"scorer\":\"regex\"}", ":1:", "expected: missing", __LINE__);
    expect_refused("{\"id\":\"a\"," MSG ",\"scorer\":\"regex\",\"expected\":\"a(\"}", ":1:", "does not compile", __LINE__);
    expect_refused("{\"id\":\"a\"," MSG ",\"scorer\":\"json_schema\",\"expected\":{\"type\":\"objekt\"}}", ":1:", "expected: type: unknown type", __LINE__);
    expect_refused("{\"id\":\"a\"," MSG ",\"scorer\":\"choice\",\"options\":[\"x\"],\"expected\":\"x\"}", ":1:", "options", __LINE__);
    expect_refused("{\"id\":\"a\"," MSG ",\"scorer\":\"choice\",\"options\":[\"x\",\"y\"],\"expected\":\"z\"}", ":1:", "one of the options", __LINE__);
    expect_refused("{\"id\":\"a\"," MSG ",\"scorer\":\"choice\",\"options\":[\"x\",\"x\"],\"expected\":0}", ":1:", "repeats", __LINE__);
    expect_refused("{\"id\":\"a\"," MSG ",\"scorer\":\"exact\",\"expected\":\"x\",\"options\":[\"a\",\"b\"]}", ":1:", "only the choice", __LINE__);
    expect_refused("{\"id\":\"a\"," MSG ",\"scorer\":\"reference_logprob\",\"expected\":\"x\"}", ":1:", "reference_logprob: missing", __LINE__);
    expect_refused("{\"id\":\"a\"," MSG ",\"scorer\":\"reference_logprob\",\"expected\":\"x\",\"reference_logprob\":0.5}", ":1:", "<= 0", __LINE__);
    expect_refused("{\"id\":\"a\"," MSG ",\"scorer\":\"exact\",\"expected\":\"x\",\"colour\":1}", ":1:", "colour: unknown field", __LINE__);
    expect_refused("{\"id\":\"a\"," MSG ",\"scorer\":\"exact\",\"expected\":\"x\",\"max_tokens\":0}", ":1:", "max_tokens", __LINE__);
    expect_refused("{\"id\":\"a\",\"messages\":[{\"role\":\"wizard\",\"content\":\"x\"}],\"scorer\":\"exact\",\"expected\":\"x\"}", ":1:", "role", __LINE__);
    expect_refused("{\"id\":\"a\",\"scorer\":\"exact\",\"expected\":\"x\"}", ":1:", "messages: missing", __LINE__);
    expect_refused("{" MSG ",\"scorer\":\"exact\",\"expected\":\"x\"}", ":1:", "id:", __LINE__);
    snprintf(text, sizeof text, "%s%s", ok, ok);
    expect_refused(text, "site.jsonl:2:", "already used on line 1", __LINE__);
    expect_refused("{\"id\":\"a\"," MSG ",\"scorer\":\"exact\",\"expected\":\"x\",\"expected\":\"y\"}", ":1:", "duplicate", __LINE__);
    expect_refused("\n  \n", "site.jsonl", "no cases", __LINE__);
    expect_refused("", "site.jsonl", "no cases", __LINE__);
}

TEST(eval_set_parses_every_scorer)
{
    const char *text =
        "{\"id\":\"e\"," MSG ",\"scorer\":\"exact\",\"expected\":\"x\",\"max_tokens\":3}\r\n"
        "\n"
        "{\"id\":\"c\"," MSG ",\"scorer\":\"contains\",\"expected\":\"x\"}\n"
        "{\"id\":\"r\"," MSG ",\"scorer\":\"regex\",\"expected\":\"^[0-9]+$\"}\n"
        "{\"id\":\"j\"," MSG ",\"scorer\":\"json_schema\",\"expected\":{\"type\":\"object\"}}\n"
        "{\"id\":\"ch\"," MSG ",\"scorer\":\"choice\",\"options\":[\"yes\",\"no\"],\"expected\":1}\n"
        "{\"id\":\"l\"," MSG ",\"scorer\":\"reference_logprob\",\"expected\":\"ref\",\"reference_logprob\":-2,\"tolerance\":0.5}";
    struct eval_set s;
    char err[512];
    REQUIRE(eval_set_parse(text, strlen(text), "t", false, &s, err, sizeof err) == 0);
    CHECK_EQ_INT(s.n, 6);
    CHECK_EQ_INT(s.cases[0].line, 1);
    CHECK_EQ_INT(s.cases[1].line, 3); /* blank lines count */
    CHECK_EQ_INT(s.cases[0].req.max_tokens, 3);
    CHECK_EQ_INT(s.cases[1].req.max_tokens, EVAL_DEFAULT_MAX_TOKENS);
    CHECK(s.cases[0].req.temperature == 0.0f && s.cases[0].req.has_seed);
    CHECK_EQ_INT(s.cases[4].expected_option, 1);
    CHECK(s.cases[5].baseline_logprob == -2.0 && s.cases[5].tolerance == 0.5);
    for (int k = 0; k < EVAL_SCORER_COUNT; k++) CHECK_EQ_INT(s.per_scorer[k], 1);
    eval_set_free(&s);
    /* Recording: answers a trusted model can give may be missing. */
    CHECK_EQ_INT(parse("{\"id\":\"a\"," MSG ",\"scorer\":\"exact\"}\n{\"id\":\"b\"," MSG ",\"scorer\":\"choice\",\"options\":[\"p\",\"q\"]}\n"
                       "{\"id\":\"c\"," MSG ",\"scorer\":\"reference_logprob\"}", true, err, sizeof err), 0);
    /* ... but not what only the site can write. */
    CHECK(parse("{\"id\":\"a\"," MSG ",\"scorer\":\"regex\"}", true, err, sizeof err) != 0);
}

/* Scores answer with a one-case set of the given scorer and expected (JSON text). */
static int score(const char *scorer, const char *expected, const char *answer)
{
    char text[1024], err[512];
    snprintf(text, sizeof text, "{\"id\":\"a\"," MSG ",\"scorer\":\"%s\",\"expected\":%s}", scorer, expected);
    struct eval_set s;
    if (eval_set_parse(text, strlen(text), "t", false, &s, err, sizeof err)) {
        test_fail_at(__FILE__, __LINE__, "%s", err);
        return -1;
    }
    char why[256];
    int r = eval_score_text(&s.cases[0], answer, strlen(answer), why, sizeof why);
    if (r == 0 && !why[0]) test_fail_at(__FILE__, __LINE__, "a failing score without a reason");
    eval_set_free(&s);
    return r;
}

TEST(eval_text_scorers)
{
    CHECK_EQ_INT(score("exact", "\"Paris\"", "Paris"), 1);
    CHECK_EQ_INT(score("exact", "\"Paris\"", "Paris."), 0);
    CHECK_EQ_INT(score("exact", "\"Paris\"", "paris"), 0);
    CHECK_EQ_INT(score("contains", "\"Paris\"", "It is Paris."), 1);
    CHECK_EQ_INT(score("contains", "\"Paris\"", "It is Lyon."), 0);
    CHECK_EQ_INT(score("regex", "\"^total: [0-9]+ EUR$\"", "total: 120 EUR"), 1);
    CHECK_EQ_INT(score("regex", "\"^total: [0-9]+ EUR$\"", "total: 12O EUR"), 0);
    CHECK_EQ_INT(score("regex", "\"\\\\p{Lu}\\\\p{Ll}+\"", "ok Émile"), 1); /* UTF-8, Unicode classes */
    const char *schema = "{\"type\":\"object\",\"properties\":{\"ok\":{\"type\":\"boolean\"}},\"required\":[\"ok\"]}";
    CHECK_EQ_INT(score("json_schema", schema, " {\"ok\": true}\n"), 1);
    CHECK_EQ_INT(score("json_schema", schema, "{\"ok\": 1}"), 0);
    CHECK_EQ_INT(score("json_schema", schema, "sure: {\"ok\": true}"), 0); /* not JSON */
    CHECK_EQ_INT(score("json_schema", schema, "{\"ok\":true,\"ok\":false}"), 0); /* duplicate keys */
}

/* ---- whole runs on tiny models ---- */

static const char *tiny_model(const char *name, uint64_t seed)
{
    static char paths[2][600];
    char *path = paths[seed == 42 ? 0 : 1];
    snprintf(path, 600, "%s/%s", test_tmpdir(), name);
    struct mkmodel_config c;
    mkmodel_defaults(&c);
    c.seed = seed;
    char err[256];
    if (mkmodel_write(&c, path, err, sizeof err)) test_fail_at(__FILE__, __LINE__, "mkmodel: %s", err);
    return path;
}

/* Twenty cases of every scorer; the expected answers are left to --record. */
static void write_set(const char *path)
{
    FILE *f = fopen(path, "w");
    for (int i = 0; i < 20; i++) {
        const char *kinds[] = { "exact", "contains", "choice", "reference_logprob", "regex", "json_schema" };
        const char *k = kinds[i % 6];
        fprintf(f, "{\"id\":\"case-%02d\",\"messages\":[{\"role\":\"user\",\"content\":\"question %d about the site\"}],"
                   "\"scorer\":\"%s\",\"max_tokens\":6", i, i * 7, k);
        if (!strcmp(k, "choice")) fprintf(f, ",\"options\":[\"yes\",\"no\",\"maybe so\"]");
        if (!strcmp(k, "regex")) fprintf(f, ",\"expected\":\"(?s).+\"");
        if (!strcmp(k, "json_schema")) fprintf(f, ",\"expected\":{\"type\":\"number\"}");
        fprintf(f, "}\n");
    }
    fclose(f);
}

static int run_set(const char *model, const char *set_path, uint32_t jobs, struct eval_set *s, struct eval_result *r)
{
    char err[512];
    if (eval_set_load(set_path, false, s, err, sizeof err)) {
        test_fail_at(__FILE__, __LINE__, "%s", err);
        return -1;
    }
    struct eval_run_opts o = { .model_path = model, .backend = ENGINE_BACKEND_REF, .jobs = jobs };
    if (eval_run(s, &o, r, err, sizeof err)) {
        test_fail_at(__FILE__, __LINE__, "%s", err);
        eval_set_free(s);
        return -1;
    }
    return 0;
}

/* A recording run of the set at set_path on model (expected answers may be missing); every
 * case must run. */
static int record_run(const char *model, const char *set_path, struct eval_set *s, struct eval_result *r)
{
    char err[512];
    if (eval_set_load(set_path, true, s, err, sizeof err)) {
        test_fail_at(__FILE__, __LINE__, "%s", err);
        return -1;
    }
    struct eval_run_opts o = { .model_path = model, .backend = ENGINE_BACKEND_REF, .jobs = 1 };
    if (eval_run(s, &o, r, err, sizeof err)) {
        test_fail_at(__FILE__, __LINE__, "%s", err);
        eval_set_free(s);
        return -1;
    }
    for (uint32_t i = 0; i < r->n; i++)
        if (r->cases[i].error) test_fail_at(__FILE__, __LINE__, "case %u: %s", i, r->cases[i].why);
    return 0;
}

TEST(eval_recorded_set_passes_its_model_and_fails_other_weights)
{
    const char *a = tiny_model("a.gguf", 42);
    char set_path[600], rec_path[600], err[512];
    snprintf(set_path, sizeof set_path, "%s/set.jsonl", test_tmpdir());
    snprintf(rec_path, sizeof rec_path, "%s/recorded.jsonl", test_tmpdir());
    write_set(set_path);
    struct eval_set s;
    struct eval_result r;
    REQUIRE(record_run(a, set_path, &s, &r) == 0);
    REQUIRE(eval_record_write(rec_path, &s, &r, err, sizeof err) == 0);
    eval_result_free(&r);
    eval_set_free(&s);

    /* Model A on its own recording: every case but the site's own json_schema ones (a random
     * model's answer is no number) passes, and again with three jobs, identically. */
    REQUIRE(run_set(a, rec_path, 1, &s, &r) == 0);
    CHECK_EQ_INT(r.scorer_score[EVAL_SCORER_EXACT] == 1.0, 1);
    CHECK_EQ_INT(r.scorer_score[EVAL_SCORER_CONTAINS] == 1.0, 1);
    CHECK_EQ_INT(r.scorer_score[EVAL_SCORER_CHOICE] == 1.0, 1);
    CHECK_EQ_INT(r.scorer_score[EVAL_SCORER_REFERENCE_LOGPROB] == 1.0, 1);
    CHECK_EQ_INT(r.scorer_score[EVAL_SCORER_REGEX] == 1.0, 1);
    CHECK_EQ_INT(r.scorer_score[EVAL_SCORER_JSON_SCHEMA] == 0.0, 1);
    struct eval_set s3;
    struct eval_result r3;
    REQUIRE(run_set(a, rec_path, 3, &s3, &r3) == 0);
    for (uint32_t i = 0; i < r.n; i++) {
        CHECK_EQ_INT(r3.cases[i].score, r.cases[i].score);
        CHECK((r.cases[i].answer == NULL) == (r3.cases[i].answer == NULL));
        if (r.cases[i].answer && r3.cases[i].answer) CHECK(!strcmp(r.cases[i].answer, r3.cases[i].answer));
        CHECK(r3.cases[i].logprob == r.cases[i].logprob);
    }
    CHECK(r3.score == r.score);
    eval_result_free(&r3);
    eval_set_free(&s3);
    double score_a = r.score;
    eval_result_free(&r);
    eval_set_free(&s);

    /* Model B (other weights): the recorded answers are not its answers. */
    const char *b = tiny_model("b.gguf", 7);
    REQUIRE(run_set(b, rec_path, 1, &s, &r) == 0);
    CHECK(r.score < score_a - 0.3);
    CHECK(r.scorer_score[EVAL_SCORER_EXACT] < 1.0);
    uint32_t idx[5];
    uint32_t n = eval_worst_cases(&s, &r, idx, 5);
    CHECK_EQ_INT(n, 5);
    char summary[2048];
    eval_worst_summary(&s, &r, 5, summary, sizeof summary);
    CHECK(strstr(summary, s.cases[idx[0]].id) != NULL);
    eval_result_free(&r);
    eval_set_free(&s);
}

/* Cases that offer tools: a forced call (tool_choice required or named, held to the DSML
 * call grammar) is scored as its calls' JSON; the site's json_schema over that JSON checks
 * the name and the arguments; a recorded call is reproduced by its model; tool_choice none
 * is scored as text. */
TEST(eval_tool_cases_score_the_call)
{
    const char *a = tiny_model("a.gguf", 42);
    char set_path[600], rec_path[600], err[512];
    snprintf(set_path, sizeof set_path, "%s/tools.jsonl", test_tmpdir());
    snprintf(rec_path, sizeof rec_path, "%s/tools-rec.jsonl", test_tmpdir());
#define TOOLS "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"parameters\":{\"type\":\"object\"," \
              "\"properties\":{\"city\":{\"type\":\"string\",\"maxLength\":8}},\"required\":[\"city\"],\"additionalProperties\":false}}}]"
    FILE *f = fopen(set_path, "w");
    REQUIRE(f != NULL);
    fprintf(f, "{\"id\":\"named\"," MSG "," TOOLS ",\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"get_weather\"}},"
               "\"max_tokens\":200,\"scorer\":\"json_schema\",\"expected\":{\"type\":\"array\",\"minItems\":1,\"maxItems\":1,"
               "\"items\":{\"type\":\"object\",\"properties\":{\"name\":{\"const\":\"get_weather\"},\"arguments\":{\"type\":\"object\","
               "\"properties\":{\"city\":{\"type\":\"string\",\"maxLength\":8}},\"required\":[\"city\"],\"additionalProperties\":false}},"
               "\"required\":[\"name\",\"arguments\"],\"additionalProperties\":false}}}\n");
    fprintf(f, "{\"id\":\"required\"," MSG "," TOOLS ",\"tool_choice\":\"required\",\"max_tokens\":200,\"scorer\":\"exact\"}\n");
    fprintf(f, "{\"id\":\"none\"," MSG "," TOOLS ",\"tool_choice\":\"none\",\"max_tokens\":6,\"scorer\":\"exact\"}\n");
    fclose(f);
#undef TOOLS
    struct eval_set s;
    struct eval_result r;
    REQUIRE(record_run(a, set_path, &s, &r) == 0);
    CHECK_EQ_INT(r.cases[0].score, 1);
    if (!r.cases[0].score) test_fail_at(__FILE__, __LINE__, "named: %s (answer %s)", r.cases[0].why, r.cases[0].answer);
    REQUIRE(r.cases[1].answer != NULL);
    CHECK(!strncmp(r.cases[1].answer, "[{\"name\":\"get_weather\",\"arguments\":{\"city\":", 43));
    REQUIRE(r.cases[2].answer != NULL);
    CHECK(r.cases[2].answer[0] != '['); /* none: text */
    REQUIRE(eval_record_write(rec_path, &s, &r, err, sizeof err) == 0);
    eval_result_free(&r);
    eval_set_free(&s);
    REQUIRE(run_set(a, rec_path, 1, &s, &r) == 0);
    CHECK(r.score == 1.0);
    eval_result_free(&r);
    eval_set_free(&s);
    /* Other weights call with other arguments: the recorded call does not match. */
    const char *b = tiny_model("b.gguf", 7);
    REQUIRE(run_set(b, rec_path, 1, &s, &r) == 0);
    CHECK_EQ_INT(r.cases[0].score, 1); /* the schema holds whatever the city */
    CHECK_EQ_INT(r.cases[1].score, 0);
    eval_result_free(&r);
    eval_set_free(&s);
}

TEST(eval_set_sha256_is_of_the_bytes_evaluated)
{
    const char *a = tiny_model("a.gguf", 42);
    char path[600], err[512];
    snprintf(path, sizeof path, "%s/set.jsonl", test_tmpdir());
    const char *v1 = "{\"id\":\"x\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"scorer\":\"regex\",\"expected\":\".\",\"max_tokens\":2}\n";
    FILE *f = fopen(path, "w");
    fputs(v1, f);
    fclose(f);
    struct eval_set s;
    REQUIRE(eval_set_load(path, false, &s, err, sizeof err) == 0);
    /* The file changes on disk after it was read (as during a long run). */
    f = fopen(path, "w");
    fputs("{\"id\":\"y\",\"messages\":[{\"role\":\"user\",\"content\":\"other\"}],\"scorer\":\"regex\",\"expected\":\"z\"}\n", f);
    fclose(f);
    struct eval_run_opts o = { .model_path = a, .backend = ENGINE_BACKEND_REF, .jobs = 1 };
    struct eval_result r;
    REQUIRE(eval_run(&s, &o, &r, err, sizeof err) == 0);
    json_t *rep = eval_report_json(a, path, &s, &r);
    unsigned char md[32];
    unsigned int md_len;
    REQUIRE(EVP_Digest(v1, strlen(v1), md, &md_len, EVP_sha256(), NULL));
    char hex[65];
    for (int i = 0; i < 32; i++) snprintf(hex + 2 * i, 3, "%02x", md[i]);
    CHECK(!strcmp(s.sha256, hex));
    CHECK(!strcmp(json_string_value(json_object_get(json_object_get(rep, "set"), "sha256")), hex));
    CHECK(!strcmp(json_string_value(json_object_get(json_array_get(json_object_get(rep, "cases"), 0), "id")), "x"));
    json_decref(rep);
    eval_result_free(&r);
    eval_set_free(&s);
}

TEST(eval_cli_runs_records_and_reports)
{
    const char *a = tiny_model("a.gguf", 42);
    char set_path[600], cmd[4096], out[8192];
    snprintf(set_path, sizeof set_path, "%s/set.jsonl", test_tmpdir());
    write_set(set_path);
    const char *t = test_tmpdir(), *fb = test_flashbox_bin();
    snprintf(cmd, sizeof cmd, "%s eval --record -m %s --set %s --out %s/rec.jsonl --backend ref 2>/dev/null", fb, a, set_path, t);
    REQUIRE(test_run_cmd(cmd, out, sizeof out) == 0);
    CHECK(strstr(out, "recorded 20 cases") != NULL);
    snprintf(cmd, sizeof cmd, "%s eval -m %s --set %s/rec.jsonl --backend ref --jobs 2 --report %s/rep.json --min-score 0.8 2>/dev/null",
             fb, a, t, t);
    CHECK_EQ_INT(test_run_cmd(cmd, out, sizeof out), 0);
    CHECK(strstr(out, "PASS case-00 (line 1, exact)") != NULL);
    CHECK(strstr(out, "scorer choice") != NULL);
    char rep[700];
    snprintf(rep, sizeof rep, "%s/rep.json", t);
    json_error_t je;
    json_t *o = json_load_file(rep, 0, &je);
    REQUIRE(o != NULL);
    CHECK_EQ_INT((int)json_array_size(json_object_get(o, "cases")), 20);
    CHECK(json_real_value(json_object_get(o, "score")) > 0.8);
    json_decref(o);
    /* --min-score above what the model reaches: status 1. */
    snprintf(cmd, sizeof cmd, "%s eval -m %s --set %s/rec.jsonl --backend ref --min-score 1 >/dev/null 2>&1", fb, a, t);
    CHECK_EQ_INT(test_run_cmd(cmd, out, sizeof out), 1);
    /* A malformed set: status 1, nothing run. */
    snprintf(cmd, sizeof cmd, "printf '{\"id\":1}\\n' > %s/bad.jsonl; %s eval -m %s --set %s/bad.jsonl 2>&1", t, fb, a, t);
    CHECK_EQ_INT(test_run_cmd(cmd, out, sizeof out), 1);
    CHECK(strstr(out, "bad.jsonl:1: id:") != NULL);
}
