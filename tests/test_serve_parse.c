/* The daemon's pure parts without a daemon: the request parser (every field's type and
 * range, against hand-written expectations), the config parser and printer, the peer
 * allow-list and the Prometheus rendering. */
#include "engine/engine.h"
#include "firmware/config.h"
#include "firmware/metrics.h"
#include "firmware/peer.h"
#include "firmware/request_parse.h"
#include "firmware/request_tools.h"
#include "tests/harness.h"

#include <stdlib.h>
#include <string.h>

static int parse_chat(const char *body, struct gen_request *r, char *err, size_t err_len)
{
    struct req_limits lim;
    req_limits_default(&lim);
    return request_parse_chat(body, strlen(body), &lim, r, err, err_len);
}

TEST(request_parse_reads_every_chat_field)
{
    struct gen_request r;
    char err[256] = "";
    const char *body = "{\"model\":\"m1\",\"messages\":[{\"role\":\"developer\",\"content\":\"sys\"},"
                       "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},{\"type\":\"text\",\"text\":\"b\"}],\"name\":\"u\"},"
                       "{\"role\":\"assistant\",\"content\":\"ok\"}],\"max_tokens\":9,\"max_completion_tokens\":7,"
                       "\"temperature\":0.5,\"top_p\":0.25,\"top_k\":3,\"min_p\":0.125,\"seed\":-1,\"stop\":[\"x\",\"yz\"],"
                       "\"stream\":true,\"stream_options\":{\"include_usage\":true},\"thinking\":{\"type\":\"enabled\"},"
                       "\"n\":1,\"user\":\"me\",\"presence_penalty\":0,\"logprobs\":false,\"ignore_eos\":true}";
    REQUIRE(parse_chat(body, &r, err, sizeof err) == 0);
    CHECK_EQ_INT(r.kind, REQ_CHAT);
    CHECK_STR(r.model, "m1");
    CHECK_EQ_INT(r.n_messages, 3);
    CHECK_EQ_INT(r.messages[0].role, REQ_ROLE_SYSTEM);
    CHECK_STR(r.messages[1].content, "ab");
    CHECK_EQ_INT(r.messages[2].role, REQ_ROLE_ASSISTANT);
    CHECK_EQ_INT(r.max_tokens, 7); /* max_completion_tokens wins */
    CHECK_NEAR(r.temperature, 0.5, 0);
    CHECK_NEAR(r.top_p, 0.25, 0);
    CHECK_EQ_INT(r.top_k, 3);
    CHECK_NEAR(r.min_p, 0.125, 0);
    CHECK(r.has_seed && r.seed == UINT64_MAX);
    CHECK_EQ_INT(r.n_stop, 2);
    CHECK_STR(r.stop[1], "yz");
    CHECK(r.stream && r.include_usage && r.thinking && r.ignore_eos);
    gen_request_free(&r);
}

TEST(request_parse_defaults_and_nulls)
{
    struct gen_request r;
    char err[256];
    REQUIRE(parse_chat("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"temperature\":null,\"stop\":null,"
                       "\"max_tokens\":null,\"chat_template_kwargs\":{\"enable_thinking\":true}}", &r, err, sizeof err) == 0);
    CHECK_EQ_INT(r.max_tokens, 256);
    CHECK_NEAR(r.temperature, 1.0, 0);
    CHECK_NEAR(r.top_p, 1.0, 0);
    CHECK_EQ_INT(r.n_stop, 0);
    CHECK(!r.stream && !r.has_seed && r.thinking);
    gen_request_free(&r);
    struct req_limits lim;
    req_limits_default(&lim);
    REQUIRE(request_parse_completion("{\"prompt\":[\"one\"],\"stop\":\"s\"}", 29, &lim, &r, err, sizeof err) == 0);
    CHECK_STR(r.prompt, "one");
    CHECK_STR(r.stop[0], "s");
    gen_request_free(&r);
}

/* What the openai SDK, LangChain, LiteLLM and the Vercel AI SDK send by default, and a
 * conversation that went through a tool call, are accepted with their OpenAI meaning. */
TEST(request_parse_accepts_what_clients_send_by_default)
{
    const char *body =
        "{\"model\":\"m\",\"messages\":["
        "{\"role\":\"system\",\"content\":[{\"type\":\"text\",\"text\":\"sys\",\"cache_control\":{\"type\":\"ephemeral\"}}]},"
        "{\"role\":\"user\",\"content\":\"a\\u0000b\",\"name\":null},"
        "{\"role\":\"assistant\",\"content\":null,\"reasoning_content\":\"think\",\"refusal\":null,"
        "\"tool_calls\":[{\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"{\\\"city\\\":\\\"Oslo\\\"}\"}}]},"
        "{\"role\":\"tool\",\"tool_call_id\":\"call_1\",\"content\":\"cold\"}],"
        "\"tools\":[],\"tool_choice\":\"none\",\"user\":null,\"logit_bias\":{},\"parallel_tool_calls\":false,"
        "\"store\":false,\"reasoning_effort\":\"medium\",\"presence_penalty\":0.5,\"frequency_penalty\":-1,"
        "\"stop\":[\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\"],\"top_logprobs\":null,\"seed\":null,\"n\":null}";
    struct gen_request r;
    char err[256] = "";
    REQUIRE(parse_chat(body, &r, err, sizeof err) == 0);
    CHECK_EQ_INT(r.n_messages, 4);
    CHECK_STR(r.messages[0].content, "sys");
    CHECK_EQ_INT(r.messages[1].content_len, 3);
    CHECK(memcmp(r.messages[1].content, "a\0b", 3) == 0);
    CHECK_EQ_INT(r.messages[2].role, REQ_ROLE_ASSISTANT);
    CHECK_STR(r.messages[2].content, "");
    CHECK_STR(r.messages[2].reasoning, "think");
    REQUIRE(r.messages[2].n_tool_calls == 1);
    CHECK_STR(r.messages[2].tool_calls[0].id, "call_1");
    CHECK_STR(r.messages[2].tool_calls[0].name, "get_weather");
    CHECK_STR(r.messages[2].tool_calls[0].arguments, "{\"city\":\"Oslo\"}");
    CHECK_EQ_INT(r.messages[3].role, REQ_ROLE_TOOL);
    CHECK_STR(r.messages[3].tool_call_id, "call_1");
    CHECK_EQ_INT(r.n_tools, 0);
    CHECK_EQ_INT(r.tool_choice, REQ_TOOL_NONE);
    CHECK(!r.parallel_tool_calls);
    CHECK(!r.reasoning_max);
    CHECK(r.presence_penalty == 0.5f && r.frequency_penalty == -1.0f);
    CHECK_EQ_INT(r.n_stop, 7);
    gen_request_free(&r);

    /* tools, a choice, logit_bias and the maximum effort */
    body = "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"reasoning_effort\":\"max\","
           "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"description\":\"d\",\"parameters\":"
           "{\"type\":\"object\",\"properties\":{\"x\":{\"type\":\"number\",\"default\":0.1}}},\"strict\":true}}],"
           "\"tool_choice\":\"auto\",\"logit_bias\":{\"7\":-100,\"9\":2.5}}";
    REQUIRE(parse_chat(body, &r, err, sizeof err) == 0);
    REQUIRE(r.n_tools == 1);
    CHECK_STR(r.tools[0].name, "f");
    /* as Python's json.dumps writes it, which the official encoder puts in the prompt */
    CHECK_STR(r.tools[0].schema, "{\"name\": \"f\", \"description\": \"d\", \"parameters\": {\"type\": \"object\", "
                                 "\"properties\": {\"x\": {\"type\": \"number\", \"default\": 0.1}}}, \"strict\": true}");
    CHECK_EQ_INT(r.tool_choice, REQ_TOOL_AUTO);
    CHECK(r.reasoning_max);
    REQUIRE(r.n_logit_bias == 2);
    CHECK(r.logit_bias[0].tok == 7 && r.logit_bias[0].bias == -100.0f);
    CHECK(r.logit_bias[1].tok == 9 && r.logit_bias[1].bias == 2.5f);
    CHECK(r.tools[0].strict);
    CHECK_STR(r.tools[0].parameters, "{\"type\": \"object\", \"properties\": {\"x\": {\"type\": \"number\", \"default\": 0.1}}}");
    CHECK(r.calls != NULL && r.calls_on_demand); /* a strict tool under auto: the grammar of a block the model opens */
    gen_request_free(&r);

    /* required and named choices compile the call grammar; none and auto do not */
    static const char *const forced[] = { "\"required\"", "{\"type\":\"function\",\"function\":{\"name\":\"g\"}}" };
    for (int k = 0; k < 2; k++) {
        char b[512];
        snprintf(b, sizeof b, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"type\":\"function\","
                 "\"function\":{\"name\":\"f\"}},{\"type\":\"function\",\"function\":{\"name\":\"g\",\"parameters\":"
                 "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"string\"}},\"required\":[\"a\"]}}}],"
                 "\"tool_choice\":%s}", forced[k]);
        REQUIRE(parse_chat(b, &r, err, sizeof err) == 0);
        CHECK(r.calls != NULL);
        CHECK(r.calls && dsml_grammar_min_tokens(r.calls) > 20);
        gen_request_free(&r);
    }

    struct req_limits lim;
    req_limits_default(&lim);
    const char *fim = "{\"prompt\":\"def f(\",\"suffix\":\"return 1\"}";
    REQUIRE(request_parse_completion(fim, strlen(fim), &lim, &r, err, sizeof err) == 0);
    CHECK_STR(r.suffix, "return 1");
    gen_request_free(&r);
}

/* Python's json.dumps (ensure_ascii=False) is what the official encoder writes tool
 * schemas and non-string arguments with; the expected strings below are its output. */
TEST(request_tools_write_json_as_python_does)
{
    static const struct {
        const char *in, *want;
    } cases[] = {
        { "[1.0, 0.1, 1e16, 1e15, 123456789.125, 1e-5, 0.0001, -2.5e-7, 3.14159, 1e300]",
          "[1.0, 0.1, 1e+16, 1000000000000000.0, 123456789.125, 1e-05, 0.0001, -2.5e-07, 3.14159, 1e+300]" },
        { "{\"k\":\"tab\\tnl\\nq\\\"bs\\\\ \\u0001 \\u007f é\"}", "{\"k\": \"tab\\tnl\\nq\\\"bs\\\\ \\u0001 \x7f é\"}" },
        { "{\"a\":[],\"b\":{},\"c\":null,\"d\":false,\"e\":-12}", "{\"a\": [], \"b\": {}, \"c\": null, \"d\": false, \"e\": -12}" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_t *v = json_loads(cases[i].in, JSON_DECODE_ANY, NULL);
        REQUIRE(v);
        char *got = req_json_python(v, NULL);
        REQUIRE(got);
        if (strcmp(got, cases[i].want))
            test_fail_at(__FILE__, __LINE__, "case %zu:\n  got  %s\n  want %s", i, got, cases[i].want);
        free(got);
        json_decref(v);
    }
}

TEST(request_parse_errors_name_the_field)
{
    static const struct {
        const char *body, *needle;
    } bad[] = {
        { "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":0}", "max_tokens: 0 out of range" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":-3}", "max_tokens: -3 out of range" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"top_p\":1.5}", "top_p" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"min_p\":1}", "min_p" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"temperature\":-0.1}", "temperature" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"top_k\":-1}", "top_k" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"frequency_penalty\":2.5}", "frequency_penalty" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"presence_penalty\":-3}", "presence_penalty" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tool\":[]}", "tool: unknown field" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":{}}", "tools: expected an array" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"type\":\"function\"}]}", "tools[0].function" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"type\":\"code\",\"function\":{\"name\":\"f\"}}]}", "tools[0].type" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"function\":{\"name\":\"a b\"}}]}", "tools[0].function.name" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"function\":{\"name\":\"f\",\"x\":1}}]}", "tools[0].function.x: unknown field" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"function\":{\"name\":\"f\"}},{\"function\":{\"name\":\"f\"}}]}", "offered twice" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tool_choice\":\"required\"}", "no tools are offered" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tool_choice\":\"sometimes\"}", "tool_choice" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"function\":{\"name\":\"f\",\"parameters\":{\"type\":\"array\"}}}],\"tool_choice\":\"required\"}", "tool 'f': parameters: the top level must be an object" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"function\":{\"name\":\"f\",\"parameters\":{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\",\"minimum\":1}}}}}],\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"f\"}}}", "minimum" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"function\":{\"name\":\"f\",\"parameters\":{\"type\":\"object\",\"properties\":{\"a<\":{}}}}}],\"tool_choice\":\"required\"}", "DSML parameter name" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"function\":{\"name\":\"f\"}}],\"tool_choice\":\"required\",\"response_format\":{\"type\":\"json_object\"}}", "cannot both shape" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"function\":{\"name\":\"f\",\"parameters\":7}}],\"tool_choice\":\"required\"}", "parameters: expected an object" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"function\":{\"name\":\"f\"}}],\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"g\"}}}", "'g' is not among the tools" },
        { "{\"messages\":[{\"role\":\"assistant\",\"tool_calls\":[{\"type\":\"function\",\"function\":{\"arguments\":\"{}\"}}]}]}", "messages[0].tool_calls[0].function.name: missing" },
        { "{\"messages\":[{\"role\":\"assistant\",\"tool_calls\":{}}]}", "messages[0].tool_calls: expected an array" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":\"x\",\"tool_calls\":[]}]}", "only assistant messages make calls" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":\"x\",\"tool_call_id\":\"c\"}]}", "only tool messages answer" },
        { "{\"messages\":[{\"role\":\"tool\",\"tool_call_id\":\"c\"}]}", "messages[0].content: missing" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"logit_bias\":{\"abc\":1}}", "logit_bias: key 'abc'" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"logit_bias\":{\"5\":101}}", "logit_bias.5" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"store\":true}", "store" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"reasoning_effort\":\"extreme\"}", "reasoning_effort" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":\"x\"}}]}]}", "no vision" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\",\"extra\":1}]}]}", "messages[0].content[0]" },
        { "{\"messages\":[{\"role\":\"user\"}]}", "messages[0].content: missing" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\"}]}]}", "messages[0].content[0]" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"thinking\":{\"type\":\"maybe\"}}", "thinking.type" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]", "invalid JSON" },
        { "{}", "messages: missing" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct gen_request r;
        char err[256] = "";
        int rc = parse_chat(bad[i].body, &r, err, sizeof err);
        if (rc == 0 || !strstr(err, bad[i].needle))
            test_fail_at(__FILE__, __LINE__, "case %zu: rc %d, message \"%s\", expected to contain \"%s\"", i, rc, err, bad[i].needle);
        if (rc == 0) gen_request_free(&r);
    }
}

TEST(request_parse_body_over_the_limit_is_refused_before_parsing)
{
    struct req_limits lim;
    req_limits_default(&lim);
    lim.max_body_bytes = 16;
    struct gen_request r;
    char err[256] = "";
    const char *body = "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}";
    CHECK(request_parse_chat(body, strlen(body), &lim, &r, err, sizeof err) != 0);
    CHECK(strstr(err, "at most 16") != NULL);
}

TEST(request_parse_detokenize_checks_ids_against_the_vocabulary)
{
    int32_t *ids;
    uint32_t n;
    char err[256];
    const char *ok = "{\"tokens\":[0,5,99]}";
    REQUIRE(request_parse_detokenize(ok, strlen(ok), 100, 10, &ids, &n, err, sizeof err) == 0);
    CHECK_EQ_INT(n, 3);
    CHECK_EQ_INT(ids[2], 99);
    free(ids);
    const char *bad = "{\"tokens\":[0,100]}";
    CHECK(request_parse_detokenize(bad, strlen(bad), 100, 10, &ids, &n, err, sizeof err) != 0);
    CHECK(strstr(err, "tokens[1]") != NULL);
    const char *many = "{\"tokens\":[1,2,3]}";
    CHECK(request_parse_detokenize(many, strlen(many), 100, 2, &ids, &n, err, sizeof err) != 0);
}

TEST(config_parses_sections_and_refuses_unknown_keys)
{
    struct serve_config c;
    config_default(&c);
    char err[256] = "";
    const char *text = "# comment\n[server]\nslots = 8\nsocket_mode = 0600\n\n[access]\nallow_uids = 0, 1000\n"
                       "allow_gids = 27\n[audit]\nlog_prompts = yes\nlog = \"/var/log/fb.jsonl\"\n";
    REQUIRE(config_parse(&c, text, strlen(text), "t.conf", err, sizeof err) == 0);
    CHECK_EQ_INT(c.slots, 8);
    CHECK_EQ_INT(c.socket_mode, 0600);
    CHECK_EQ_INT(c.n_allow_uids, 2);
    CHECK_EQ_INT(c.allow_uids[1], 1000);
    CHECK_EQ_INT(c.allow_gids[0], 27);
    CHECK(c.log_prompts);
    CHECK_STR(c.audit_log, "/var/log/fb.jsonl");
    static const struct {
        const char *text, *needle;
    } bad[] = {
        { "[server]\nslotz = 1\n", "t.conf:2: unknown setting 'server.slotz'" },
        { "[nope]\n", "unknown section [nope]" },
        { "slots = 1\n", "before any [section]" },
        { "[server]\nslots = 0\n", "out of range" },
        { "[server]\nslots = -1\n", "not a number" },
        { "[server]\nsocket_mode = 0999\n", "octal" },
        { "[audit]\nlog_prompts = maybe\n", "true or false" },
        { "[server]\nslots\n", "expected 'key = value'" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct serve_config k;
        config_default(&k);
        err[0] = 0;
        int rc = config_parse(&k, bad[i].text, strlen(bad[i].text), "t.conf", err, sizeof err);
        if (rc == 0 || !strstr(err, bad[i].needle))
            test_fail_at(__FILE__, __LINE__, "case %zu: rc %d, \"%s\" lacks \"%s\"", i, rc, err, bad[i].needle);
    }
}

TEST(config_validate_keeps_tcp_on_loopback)
{
    struct serve_config c;
    config_default(&c);
    char err[256];
    snprintf(c.model_path, sizeof c.model_path, "m.gguf");
    CHECK(config_validate(&c, err, sizeof err) == 0);
    snprintf(c.listen, sizeof c.listen, "0.0.0.0:8080");
    CHECK(config_validate(&c, err, sizeof err) != 0);
    snprintf(c.listen, sizeof c.listen, "127.0.0.1:70000");
    CHECK(config_validate(&c, err, sizeof err) != 0);
    snprintf(c.listen, sizeof c.listen, "127.0.0.1:8080");
    CHECK(config_validate(&c, err, sizeof err) == 0);
    c.default_max_tokens = c.max_tokens + 1;
    CHECK(config_validate(&c, err, sizeof err) != 0);
}

TEST(peer_allow_list_matches_uid_gid_and_groups)
{
    struct peer p = { .is_unix = true, .uid = 1000, .gid = 1000, .n_groups = 2, .groups = { 27, 44 } };
    uint32_t uids[] = { 0 }, gids[] = { 44 }, other[] = { 5 };
    CHECK(peer_allowed(&p, NULL, 0, NULL, 0));
    CHECK(!peer_allowed(&p, uids, 1, NULL, 0));
    CHECK(peer_allowed(&p, uids, 1, gids, 1)); /* a supplementary group */
    CHECK(!peer_allowed(&p, uids, 1, other, 1));
    p.uid = 0;
    CHECK(peer_allowed(&p, uids, 1, NULL, 0));
    struct peer tcp = { .is_unix = false, .uid = 0 };
    CHECK(!peer_allowed(&tcp, uids, 1, NULL, 0)); /* no identity: refused once a list exists */
}

/* The scheduler's step metrics (issue 18): sessions and tokens per step as histograms,
 * prompt tokens waiting, and slots served against slots asked for. */
TEST(metrics_render_step_histograms_prefill_waiting_and_slots)
{
    metrics_reset();
    metrics_step(1, 1);   /* one decoding session */
    metrics_step(3, 70);  /* three sessions, one of them reading a prompt chunk */
    metrics_step(8, 8);
    struct metrics_gauges g = { .slots_total = 3, .slots_configured = 8, .prefill_waiting = 4000, .ready = 1,
                                .model_id = "m", .slot = "a" };
    char *text;
    size_t len;
    REQUIRE(metrics_render(&g, &text, &len) == 0);
    CHECK(strstr(text, "# TYPE flashbox_step_sessions histogram\n") != NULL);
    CHECK(strstr(text, "flashbox_step_sessions_bucket{le=\"1\"} 1\n") != NULL);
    CHECK(strstr(text, "flashbox_step_sessions_bucket{le=\"2\"} 1\n") != NULL);
    CHECK(strstr(text, "flashbox_step_sessions_bucket{le=\"4\"} 2\n") != NULL);
    CHECK(strstr(text, "flashbox_step_sessions_bucket{le=\"8\"} 3\n") != NULL);
    CHECK(strstr(text, "flashbox_step_sessions_sum 12\n") != NULL);
    CHECK(strstr(text, "flashbox_step_sessions_count 3\n") != NULL);
    CHECK(strstr(text, "# TYPE flashbox_step_tokens histogram\n") != NULL);
    CHECK(strstr(text, "flashbox_step_tokens_bucket{le=\"8\"} 2\n") != NULL);
    CHECK(strstr(text, "flashbox_step_tokens_bucket{le=\"64\"} 2\n") != NULL);
    CHECK(strstr(text, "flashbox_step_tokens_bucket{le=\"128\"} 3\n") != NULL);
    CHECK(strstr(text, "flashbox_step_tokens_sum 79\n") != NULL);
    CHECK(strstr(text, "flashbox_prefill_tokens_waiting 4000\n") != NULL);
    CHECK(strstr(text, "flashbox_slots_total 3\n") != NULL);
    CHECK(strstr(text, "flashbox_slots_configured 8\n") != NULL);
    free(text);
}

TEST(metrics_render_counts_and_cumulative_buckets)
{
    metrics_reset();
    metrics_request_done(METRICS_EP_CHAT, 200);
    metrics_request_done(METRICS_EP_CHAT, 200);
    metrics_request_done(METRICS_EP_CHAT, 429);
    metrics_tokens(10, 3);
    metrics_time_to_first_token(0.003); /* bucket 0.005 */
    metrics_time_to_first_token(0.2);   /* bucket 0.25 */
    struct metrics_gauges g = { .queue_depth = 2, .slots_total = 4, .ready = 1, .model_id = "a\"b", .slot = "A" };
    char *text;
    size_t len;
    REQUIRE(metrics_render(&g, &text, &len) == 0);
    CHECK(strstr(text, "flashbox_requests_total{endpoint=\"/v1/chat/completions\",status=\"200\"} 2\n") != NULL);
    CHECK(strstr(text, "flashbox_requests_total{endpoint=\"/v1/chat/completions\",status=\"429\"} 1\n") != NULL);
    CHECK(strstr(text, "flashbox_prompt_tokens_total 10\n") != NULL);
    CHECK(strstr(text, "flashbox_completion_tokens_total 3\n") != NULL);
    CHECK(strstr(text, "flashbox_time_to_first_token_seconds_bucket{le=\"0.005\"} 1\n") != NULL);
    CHECK(strstr(text, "flashbox_time_to_first_token_seconds_bucket{le=\"0.1\"} 1\n") != NULL);
    CHECK(strstr(text, "flashbox_time_to_first_token_seconds_bucket{le=\"0.25\"} 2\n") != NULL);
    CHECK(strstr(text, "flashbox_time_to_first_token_seconds_bucket{le=\"+Inf\"} 2\n") != NULL);
    CHECK(strstr(text, "flashbox_time_to_first_token_seconds_count 2\n") != NULL);
    CHECK(strstr(text, "flashbox_queue_depth 2\n") != NULL);
    CHECK(strstr(text, "flashbox_model_info{model=\"a\\\"b\",slot=\"A\"} 1\n") != NULL);
    CHECK(strstr(text, "expert") == NULL); /* no paging: no expert counters */
    CHECK_EQ_INT(len, strlen(text));
    free(text);
}
