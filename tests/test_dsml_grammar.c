/* Forced tool calls (engine/text/dsml_grammar.h): the compiler's refusals, and generation
 * with the tiny random-weight model held to the call grammar under "required" and named
 * choices. Every answer is read back by firmware/tool_output.c (the parser the daemon uses)
 * and its arguments checked by engine/text/json_validate.c (the evaluation sets' validator):
 * the parser shares no code with the grammar, the validator only the compiled schema (it
 * walks parsed JSON values, not the byte automaton). */
#include "engine/engine.h"
#include "engine/text/chat.h"
#include "engine/text/dsml_grammar.h"
#include "engine/text/json_grammar.h"
#include "engine/text/json_validate.h"
#include "firmware/tool_output.h"
#include "tests/grammar_gen.h"
#include "tests/harness.h"
#include "tests/serve_client.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct tool_def {
    const char *name;
    const char *params; /* NULL: none */
};

static const struct tool_def tools[] = {
    { "get_weather", "{\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\", \"maxLength\": 12}, "
                     "\"unit\": {\"enum\": [\"c\", \"f\"]}, \"days\": {\"type\": \"integer\"}}, \"required\": [\"city\"]}" },
    { "ping", NULL },
    { "set_flags", "{\"type\": \"object\", \"properties\": {\"flags\": {\"type\": \"array\", \"items\": {\"type\": "
                   "\"boolean\"}, \"maxItems\": 3}, \"note\": {\"anyOf\": [{\"type\": \"string\", \"maxLength\": 8}, "
                   "{\"type\": \"null\"}]}, \"level\": {\"type\": \"number\"}}, \"required\": [\"flags\", \"level\"], "
                   "\"additionalProperties\": false}" },
    { "book", "{\"type\": \"object\", \"properties\": {\"who\": {\"type\": \"object\", \"properties\": {\"first\": "
              "{\"type\": \"string\", \"maxLength\": 6}, \"age\": {\"type\": \"integer\"}}, \"required\": [\"first\"]}, "
              "\"tags\": {\"type\": \"array\", \"items\": {\"type\": \"string\", \"maxLength\": 4}, \"maxItems\": 2}}, "
              "\"required\": [\"who\"]}" },
    { "get", "{\"type\": \"object\", \"properties\": {\"q\": {\"const\": \"a\\\"b\"}}, \"required\": [\"q\"]}" },
};
enum { N_TOOLS = sizeof tools / sizeof tools[0] };

static struct dsml_grammar *compile_some(const size_t *which, size_t n, uint32_t max_calls)
{
    struct dsml_tool d[N_TOOLS];
    for (size_t i = 0; i < n; i++) {
        const struct tool_def *t = &tools[which[i]];
        d[i] = (struct dsml_tool){ t->name, t->params, t->params ? strlen(t->params) : 0 };
    }
    char err[256];
    struct dsml_grammar *g;
    if (dsml_grammar_compile(&g, d, n, max_calls, err, sizeof err)) {
        test_fail_at(__FILE__, __LINE__, "compile: %s", err);
        return NULL;
    }
    return g;
}

static void refuses(const char *params, const char *needle, int line)
{
    struct dsml_tool d = { "t", params, strlen(params) };
    struct dsml_grammar *g = NULL;
    char err[256] = "";
    if (!dsml_grammar_compile(&g, &d, 1, 1, err, sizeof err)) {
        test_fail_at(__FILE__, line, "'%s' compiled", params);
        dsml_grammar_free(g);
    } else if (!strstr(err, needle)) {
        test_fail_at(__FILE__, line, "'%s': error '%s' lacks '%s'", params, err, needle);
    }
}

TEST(dsml_grammar_refuses_what_it_cannot_write)
{
    refuses("{\"type\": \"array\"}", "top level must be an object", __LINE__);
    refuses("{\"type\": \"string\"}", "top level must be an object", __LINE__);
    refuses("{\"type\": \"object\", \"properties\": {\"a\": {\"type\": \"integer\", \"minimum\": 3}}}", "minimum", __LINE__);
    refuses("{\"type\": \"object\", \"properties\": {\"a<b\": {}}}", "DSML parameter name", __LINE__);
    refuses("{\"type\": \"object\", \"properties\": {\"a\\\"\": {}}}", "DSML parameter name", __LINE__);
    refuses("{\"type\": \"object\", \"properties\": {\"\": {}}}", "DSML parameter name", __LINE__);
    refuses("{\"type\": \"object\", \"properties\": {\"a\": {\"enum\": []}}, \"required\": [\"a\"]}", "", __LINE__);
    refuses("{\"type\": ", "", __LINE__);
    refuses("[]", "", __LINE__);
    struct dsml_grammar *g = NULL;
    char err[128];
    CHECK(dsml_grammar_compile(&g, NULL, 0, 1, err, sizeof err) != 0);
}

/* ---- generation ---- */

struct gen {
    struct grammar_gen b;
    struct dsml_matcher *m;
    int32_t dsml;
};

static int gen_open(struct gen *G)
{
    char err[256];
    G->m = NULL;
    if (grammar_gen_open(&G->b, 512)) return -1;
    G->dsml = tok_find_special(G->b.tok, CHAT_DSML);
    if (G->dsml < 0) {
        test_fail_at(__FILE__, __LINE__, "the test model has no DSML token");
        return -1;
    }
    if (dsml_matcher_create(&G->m, G->b.vocab, G->b.tok, G->dsml, err, sizeof err)) {
        test_fail_at(__FILE__, __LINE__, "grammar: %s", err);
        return -1;
    }
    return 0;
}

static void gen_close(struct gen *G)
{
    dsml_matcher_destroy(G->m);
    grammar_gen_close(&G->b);
}

/* 1 when the block closed and EOS came within max_tokens, 0 at max_tokens, -1 on a fault;
 * the text (the marker as its text, as the daemon decodes it) goes to out. */
static int generate(struct gen *G, const struct dsml_grammar *g, bool opened, uint64_t seed, float temperature,
                    uint32_t max_tokens, char *out, size_t cap, size_t *len)
{
    char err[256];
    struct sampler_params sp;
    sampler_params_default(&sp);
    sp.temperature = temperature;
    sp.seed = seed;
    struct sampler *smp;
    if (sampler_create(&smp, G->b.n_vocab, &sp, err, sizeof err)) return -1;
    session_reset(G->b.sess);
    dsml_matcher_start(G->m, g, opened);
    int32_t bos = tok_bos(G->b.tok), eos = tok_eos(G->b.tok);
    int rc = session_eval(G->b.sess, &bos, 1, G->b.logits, false, err, sizeof err) ? -1 : 0;
    *len = 0;
    if (opened) /* the model wrote "\n\n<" and the marker itself (a strict tool under auto) */
        *len = (size_t)snprintf(out, cap, "\n\n<%s", CHAT_DSML);
    for (uint32_t n = 0; !rc && n < max_tokens; n++) {
        dsml_mask(G->m, max_tokens - n, eos, G->b.allow);
        int32_t t = sampler_sample_masked(smp, G->b.logits, G->b.allow);
        if (t < 0) { rc = -1; break; }
        if (t == eos) { rc = dsml_matcher_done(G->m) ? 1 : -1; break; }
        if (dsml_matcher_accept(G->m, t)) { rc = -1; break; }
        size_t pl;
        const char *p = tok_piece(G->b.tok, t, TOK_DECODE_SPECIAL, &pl);
        if (*len + pl >= cap) { rc = -1; break; }
        memcpy(out + *len, p, pl);
        *len += pl;
        if (session_eval(G->b.sess, &t, 1, G->b.logits, false, err, sizeof err)) rc = -1;
    }
    out[*len] = 0;
    sampler_destroy(smp);
    return rc;
}

/* The text parses as a block of 1..max_calls calls to the offered tools, with arguments
 * that validate against each tool's parameters. */
static bool call_ok(const size_t *which, size_t n, uint32_t max_calls, const char *text, size_t len, char *why, size_t cap)
{
    const char *names[N_TOOLS];
    for (size_t i = 0; i < n; i++) names[i] = tools[which[i]].name;
    struct tool_output o;
    if (tool_output_parse(text, len, names, n, &o, why, cap)) return false;
    bool ok = o.content_len == 0 && o.n_calls >= 1 && o.n_calls <= max_calls;
    if (!ok) snprintf(why, cap, "%u calls after %zu bytes of text", o.n_calls, o.content_len);
    for (uint32_t c = 0; ok && c < o.n_calls; c++) {
        const char *params = NULL;
        for (size_t i = 0; i < n; i++)
            if (!strcmp(tools[which[i]].name, o.calls[c].name)) params = tools[which[i]].params;
        const char *st = params ? params : "{\"type\": \"object\", \"additionalProperties\": false}";
        struct jg_schema *schema = NULL;
        if (jg_schema_compile(&schema, st, strlen(st), why, cap) ||
            jg_schema_validate(schema, o.calls[c].arguments, strlen(o.calls[c].arguments), why, cap))
            ok = false;
        jg_schema_free(schema);
    }
    tool_output_free(&o);
    return ok;
}

static void run_set(struct gen *G, const size_t *which, size_t n, uint32_t max_calls, uint32_t slack, int seeds,
                    bool opened, int line)
{
    struct dsml_grammar *g = compile_some(which, n, max_calls);
    if (!g) return;
    uint32_t max_tokens = dsml_grammar_min_tokens(g) + slack;
    static char text[16384];
    for (int k = 0; k < seeds; k++) {
        size_t len;
        float temp = k % 4 == 0 ? 0.0f : 0.8f + 0.3f * (float)(k % 3);
        int rc = generate(G, g, opened, (uint64_t)(line * 100 + k), temp, max_tokens, text, sizeof text, &len);
        char why[256] = "";
        if (rc != 1) test_fail_at(__FILE__, line, "seed %d: rc %d within %u tokens, text '%s'", k, rc, max_tokens, text);
        else if (!call_ok(which, n, max_calls, text, len, why, sizeof why))
            test_fail_at(__FILE__, line, "seed %d: %s in '%s'", k, why, text);
    }
    dsml_grammar_free(g);
}

TEST(dsml_grammar_random_model_calls_parse_and_validate)
{
    struct gen G;
    REQUIRE(gen_open(&G) == 0);
    REQUIRE(jg_vocab_has_ascii_bytes(G.b.vocab));
    static const size_t all[] = { 0, 1, 2, 3, 4 };
    for (size_t t = 0; t < N_TOOLS; t++) run_set(&G, &all[t], 1, 1, 24, 4, false, __LINE__); /* named */
    run_set(&G, all, N_TOOLS, 1, 40, 8, false, __LINE__);                                       /* required */
    run_set(&G, all, N_TOOLS, 3, 80, 4, false, __LINE__);                                       /* parallel */
    run_set(&G, all, N_TOOLS, 1, 1, 4, false, __LINE__); /* the tightest budget: the call and EOS */
    run_set(&G, all, N_TOOLS, 2, 40, 4, true, __LINE__); /* a block the model opened (strict, auto) */
    gen_close(&G);
}

TEST(dsml_grammar_refuses_tokens_off_the_grammar)
{
    struct gen G;
    REQUIRE(gen_open(&G) == 0);
    static const size_t one[] = { 1 };
    struct dsml_grammar *g = compile_some(one, 1, 1);
    REQUIRE(g);
    struct tok_vec v = { 0 };
    char err[128];
    REQUIRE(tok_encode(G.b.tok, "x", 1, 0, &v, err, sizeof err) == 0 && v.n == 1);
    dsml_matcher_start(G.m, g, false);
    CHECK(dsml_matcher_accept(G.m, v.ids[0]) == -1);
    /* the marker alone at the start is off the grammar too ("\n\n<" comes first) */
    dsml_matcher_start(G.m, g, false);
    CHECK(dsml_matcher_accept(G.m, G.dsml) == -1);
    /* and the end token is allowed only once the block is closed */
    dsml_matcher_start(G.m, g, false);
    dsml_mask(G.m, 100, tok_eos(G.b.tok), G.b.allow);
    int32_t eos = tok_eos(G.b.tok);
    CHECK(!(G.b.allow[(uint32_t)eos >> 5] >> ((uint32_t)eos & 31) & 1));
    CHECK(!(G.b.allow[(uint32_t)G.dsml >> 5] >> ((uint32_t)G.dsml & 31) & 1));
    tok_vec_free(&v);
    dsml_grammar_free(g);
    gen_close(&G);
}
