/* `flashbox bench` end to end on the tiny fixture model: the report's table and JSON line
 * agree on the pass counts, --runs keeps the best pass and says so, bad flags are usage
 * errors. Timing is printed, never judged. */
#include "tests/harness.h"

#include <stdlib.h>

/* The number after "key": in the JSON text js, or -1 when the key is absent. */
static double json_num(const char *js, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *p = strstr(js, pat);
    return p ? strtod(p + strlen(pat), NULL) : -1;
}

TEST(bench_reports_prefill_and_decode_as_table_and_json)
{
    const char *model = test_fixture("model/v4-tiny-f32.gguf");
    char cmd[8192], out[16384];
    snprintf(cmd, sizeof cmd, "%s bench -m %s --backend ref --prompt 5 --gen 3 --runs 2 2>&1", test_flashbox_bin(), model);
    REQUIRE(test_run_cmd(cmd, out, sizeof out) == 0);
    CHECK(strstr(out, "best of the runs") != NULL);
    CHECK(strstr(out, "prefill      5 tokens") != NULL);
    CHECK(strstr(out, "decode       3 tokens") != NULL);
    const char *js = strstr(out, "{\"model\":");
    REQUIRE(js != NULL);
    CHECK(strstr(js, "\"prompt\":5,\"gen\":3") != NULL);
    CHECK(json_num(js, "prefill_tok_s") > 0);
    CHECK(json_num(js, "decode_tok_s") > 0);
    /* CPU time per token: the work, positive for both phases */
    const char *cpu = strstr(js, "\"cpu_ms_per_token\":{");
    REQUIRE(cpu != NULL);
    CHECK(json_num(cpu, "prefill") > 0);
    CHECK(json_num(cpu, "decode") > 0);
    CHECK(strstr(out, "cpu time     prefill") != NULL);

    /* one pass: no "best of" claim */
    snprintf(cmd, sizeof cmd, "%s bench -m %s --backend ref --prompt 3 --gen 1 2>&1", test_flashbox_bin(), model);
    REQUIRE(test_run_cmd(cmd, out, sizeof out) == 0);
    CHECK(strstr(out, "best of the runs") == NULL);
}

/* Long-context options: --at times the prompt at a depth next to the same prompt at 0,
 * --reuse a next turn from scratch and from the saved state; a 1024-token prompt times its
 * first and last 256 tokens. */
TEST(bench_reports_the_cost_at_a_depth_and_of_a_reused_prefix)
{
    const char *model = test_fixture("model/v4-tiny-f32.gguf");
    char cmd[8192], out[16384];
    snprintf(cmd, sizeof cmd, "%s bench -m %s --backend ref --prompt 8 --gen 2 --at 600 --reuse 4 2>&1", test_flashbox_bin(),
             model);
    REQUIRE(test_run_cmd(cmd, out, sizeof out) == 0);
    CHECK(strstr(out, "at positions 0..7") != NULL && strstr(out, "at 600..607") != NULL);
    CHECK(strstr(out, "at depth 608") != NULL);
    CHECK(strstr(out, "next turn    4 tokens after 8: first token in") != NULL);
    const char *js = strstr(out, "{\"model\":");
    REQUIRE(js != NULL);
    CHECK(json_num(js, "at") == 600);
    CHECK(json_num(js, "prefill_ms_per_token_last") > 0);
    snprintf(cmd, sizeof cmd, "%s bench -m %s --backend ref --prompt 1024 --gen 1 2>&1", test_flashbox_bin(), model);
    REQUIRE(test_run_cmd(cmd, out, sizeof out) == 0);
    CHECK(strstr(out, "at positions 0..255") != NULL && strstr(out, "at 768..1023") != NULL);
}

TEST(bench_refuses_zero_runs_and_a_missing_model)
{
    const char *model = test_fixture("model/v4-tiny-f32.gguf");
    char cmd[8192], out[16384];
    snprintf(cmd, sizeof cmd, "%s bench -m %s --runs 0 2>&1", test_flashbox_bin(), model);
    CHECK(test_run_cmd(cmd, out, sizeof out) == 2);
    CHECK(strstr(out, "usage:") != NULL);
    snprintf(cmd, sizeof cmd, "%s bench -m %s/missing.gguf --backend ref 2>&1", test_flashbox_bin(), test_tmpdir());
    CHECK(test_run_cmd(cmd, out, sizeof out) == 1);
    CHECK(strstr(out, "missing.gguf") != NULL);
}

TEST(bench_sessions_reports_every_stream_count_and_the_time_to_first_token)
{
    const char *model = test_fixture("model/v4-tiny-f32.gguf");
    char cmd[8192], out[16384];
    snprintf(cmd, sizeof cmd, "%s bench -m %s --backend ref --sessions 3 --prompt 4 --gen 2 --long-prompt 40 "
                              "--short-prompt 3 --step-tokens 8 2>&1", test_flashbox_bin(), model);
    REQUIRE(test_run_cmd(cmd, out, sizeof out) == 0);
    /* streams 1, 2, then 3 (the doubling stops at the count asked for) */
    CHECK(strstr(out, "{\"streams\":1,") != NULL);
    CHECK(strstr(out, "{\"streams\":2,") != NULL);
    CHECK(strstr(out, "{\"streams\":3,") != NULL);
    CHECK(strstr(out, "{\"streams\":4,") == NULL);
    const char *s3 = strstr(out, "{\"streams\":3,");
    CHECK(s3 && json_num(s3, "decode_tok_s") > 0 && json_num(s3, "inter_token_ms") > 0);
    const char *tt = strstr(out, "{\"ttft\":");
    REQUIRE(tt != NULL);
    CHECK(json_num(tt, "short_prompt") == 3 && json_num(tt, "long_prompt") == 40 && json_num(tt, "step_tokens") == 8);
    CHECK(json_num(tt, "alone_ms") > 0 && json_num(tt, "own_step_ms") > 0 && json_num(tt, "long_step_ms") > 0);
    CHECK(json_num(tt, "mean_ms") > json_num(tt, "own_step_ms") && json_num(tt, "worst_ms") > json_num(tt, "mean_ms"));
    /* the short prompt must fit a step */
    snprintf(cmd, sizeof cmd, "%s bench -m %s --backend ref --sessions 1 --short-prompt 8 --step-tokens 8 2>&1",
             test_flashbox_bin(), model);
    CHECK(test_run_cmd(cmd, out, sizeof out) == 1);
    CHECK(strstr(out, "--short-prompt 8 must be under --step-tokens 8") != NULL);
}
