/* The DSML tool-call parser: the official encoder's own rendering of calls reads back to
 * the calls it came from (arguments as the official decoder writes them), and truncated or
 * malformed blocks are refused with a reason, never half read. */
#include "firmware/tool_output.h"
#include "tests/harness.h"

#include <stdlib.h>
#include <string.h>

#define D "｜DSML｜"
static const char *const names[] = { "get_weather", "search", "now" };

/* From the official encoder's test case 1 (tests/data/chat-golden-dsv4.jsonl): the
 * answer is empty, one call; the official decoder gives these arguments. */
TEST(tool_output_reads_the_official_encoders_calls)
{
    const char *text = "\n\n<" D "tool_calls>\n<" D "invoke name=\"get_weather\">\n<" D
                       "parameter name=\"location\" string=\"true\">Beijing</" D "parameter>\n<" D
                       "parameter name=\"unit\" string=\"true\">celsius</" D "parameter>\n</" D "invoke>\n</" D
                       "tool_calls>";
    struct tool_output out;
    char err[256] = "";
    REQUIRE(tool_output_parse(text, strlen(text), names, 3, &out, err, sizeof err) == 0);
    CHECK_EQ_INT(out.content_len, 0);
    REQUIRE(out.n_calls == 1);
    CHECK_STR(out.calls[0].name, "get_weather");
    CHECK_STR(out.calls[0].arguments, "{\"location\": \"Beijing\", \"unit\": \"celsius\"}");
    tool_output_free(&out);

    /* text before, two calls, JSON values, a quoted multi-line string, a call with none */
    text = "Checking both.\n\n<" D "tool_calls>\n<" D "invoke name=\"search\">\n<" D
           "parameter name=\"query\" string=\"true\">\xc3\x86 \"q\"\nline</" D "parameter>\n<" D
           "parameter name=\"filters\" string=\"false\">{\"lang\": [\"no\"], \"max\": null}</" D "parameter>\n</" D
           "invoke>\n<" D "invoke name=\"now\">\n</" D "invoke>\n</" D "tool_calls>";
    REQUIRE(tool_output_parse(text, strlen(text), names, 3, &out, err, sizeof err) == 0);
    CHECK_EQ_INT(out.content_len, strlen("Checking both."));
    REQUIRE(out.n_calls == 2);
    CHECK_STR(out.calls[0].arguments, "{\"query\": \"\xc3\x86 \\\"q\\\"\\nline\", \"filters\": {\"lang\": [\"no\"], \"max\": null}}");
    CHECK_STR(out.calls[1].name, "now");
    CHECK_STR(out.calls[1].arguments, "{}");
    tool_output_free(&out);

    /* a call with no parameters as engine/text/chat.c renders it (the join of none, then
     * "\n</invoke>"), which the forced-call grammar writes too */
    text = "\n\n<" D "tool_calls>\n<" D "invoke name=\"now\">\n\n</" D "invoke>\n</" D "tool_calls>";
    REQUIRE(tool_output_parse(text, strlen(text), names, 3, &out, err, sizeof err) == 0);
    REQUIRE(out.n_calls == 1);
    CHECK_STR(out.calls[0].arguments, "{}");
    tool_output_free(&out);

    /* no block: all of it is the answer */
    REQUIRE(tool_output_parse("plain", 5, names, 3, &out, err, sizeof err) == 0);
    CHECK_EQ_INT(out.n_calls, 0);
    CHECK_EQ_INT(out.content_len, 5);
}

TEST(tool_output_refuses_truncated_and_malformed_blocks)
{
    const char *good = "x\n\n<" D "tool_calls>\n<" D "invoke name=\"now\">\n<" D
                       "parameter name=\"a\" string=\"false\">1</" D "parameter>\n</" D "invoke>\n</" D "tool_calls>";
    size_t n = strlen(good), start = 1;
    /* every truncation that keeps the start marker fails; shorter ones have no block */
    for (size_t k = 0; k < n; k++) {
        struct tool_output out;
        char err[256] = "";
        int rc = tool_output_parse(good, k, names, 3, &out, err, sizeof err);
        if (k < start + strlen(TOOL_CALLS_START)) {
            CHECK(rc == 0 && out.n_calls == 0 && out.content_len == k);
        } else if (rc == 0) {
            test_fail_at(__FILE__, __LINE__, "prefix of %zu bytes parsed", k);
        } else {
            CHECK(err[0] != 0 && out.content_len == k);
        }
        tool_output_free(&out);
    }
    static const struct {
        const char *text, *needle;
    } bad[] = {
        { "\n\n<" D "tool_calls>\n<" D "invoke name=\"rm_rf\">\n</" D "invoke>\n</" D "tool_calls>", "not an offered tool" },
        { "\n\n<" D "tool_calls>\n<" D "invoke name=\"now\">\n<" D "parameter name=\"a\" string=\"true\">1</" D
          "parameter>\n<" D "parameter name=\"a\" string=\"true\">2</" D "parameter>\n</" D "invoke>\n</" D "tool_calls>",
          "twice" },
        { "\n\n<" D "tool_calls>\n<" D "invoke name=\"now\">\n<" D "parameter name=\"a\" string=\"false\">{oops</" D
          "parameter>\n</" D "invoke>\n</" D "tool_calls>", "not JSON" },
        { "\n\n<" D "tool_calls>\n<" D "invoke name=\"now\">\n<" D "parameter name=\"a\">1</" D "parameter>\n</" D
          "invoke>\n</" D "tool_calls>", "string=" },
        { "\n\n<" D "tool_calls>\n<" D "invoke name=\"now\">\n</" D "invoke>\n</" D "tool_calls>more", "after the block" },
        { "\n\n<" D "tool_calls> \n<" D "invoke name=\"now\">\n</" D "invoke>\n</" D "tool_calls>", "'>\\n'" },
        { "\n\n<" D "tool_calls>\n<" D "invoke nam=\"now\">\n</" D "invoke>\n</" D "tool_calls>", "invoke name" },
        { "\n\n<" D "tool_calls>\n<" D "invoke name=\"now\">\n\n\n</" D "invoke>\n</" D "tool_calls>", "invoke name" },
        { "\n\n<" D "tool_calls>\n<" D "invoke name=\"now\">\n\n<" D "parameter name=\"a\" string=\"true\">1</" D
          "parameter>\n</" D "invoke>\n</" D "tool_calls>", "invoke name" },
        { "\n\n<" D "tool_calls>\n<" D "invoke name=\"\">\n\n</" D "invoke>\n</" D "tool_calls>", "invoke name" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct tool_output out;
        char err[256] = "";
        int rc = tool_output_parse(bad[i].text, strlen(bad[i].text), names, 3, &out, err, sizeof err);
        if (rc == 0 || !strstr(err, bad[i].needle))
            test_fail_at(__FILE__, __LINE__, "case %zu: rc %d, \"%s\", expected \"%s\"", i, rc, err, bad[i].needle);
        tool_output_free(&out);
    }
}

TEST(tool_output_safe_prefix_holds_back_a_possible_block_start)
{
    CHECK_EQ_INT(tool_output_safe_prefix("hello", 5), 5);
    CHECK_EQ_INT(tool_output_safe_prefix("hello\n", 6), 5);
    CHECK_EQ_INT(tool_output_safe_prefix("hello\n\n<", 8), 5);
    const char *t = "hi\n\n<" D "tool";
    CHECK_EQ_INT(tool_output_safe_prefix(t, strlen(t)), 2);
    t = "hi\n\n<" D "tool_calls>\n<" D "invoke";
    CHECK_EQ_INT(tool_output_safe_prefix(t, strlen(t)), 2);
    CHECK_EQ_INT(tool_output_safe_prefix("a\n\nb", 4), 4);
}

/* While a block streams in, every prefix of it reads as a prefix of the final calls (the
 * names, then the arguments as they grow), and the whole block reads as the calls. */
TEST(tool_output_partial_reads_prefixes_of_the_final_calls)
{
    static const char *const blocks[] = {
        "\n\n<" D "tool_calls>\n<" D "invoke name=\"search\">\n<" D "parameter name=\"query\" string=\"true\">"
        "\xc3\x86 \"q\"\nl</ine</" D "parameter>\n<" D "parameter name=\"filters\" string=\"false\">{\"lang\": [\"no\"]}</"
        D "parameter>\n</" D "invoke>\n<" D "invoke name=\"now\">\n\n</" D "invoke>\n</" D "tool_calls>",
        "Text first.\n\n<" D "tool_calls>\n<" D "invoke name=\"get_weather\">\n<" D "parameter name=\"a\" string=\"false\">"
        "12</" D "parameter>\n</" D "invoke>\n</" D "tool_calls>",
    };
    for (size_t b = 0; b < 2; b++) {
        const char *text = blocks[b];
        size_t n = strlen(text);
        struct tool_output out;
        char err[256];
        REQUIRE(tool_output_parse(text, n, names, 3, &out, err, sizeof err) == 0);
        size_t grew = 0, last = 0;
        for (size_t cut = 0; cut <= n; cut++) {
            struct tool_call_partial part[4];
            uint32_t k = tool_output_partial(text, cut, names, 3, part, 4);
            size_t total = 0;
            for (uint32_t i = 0; i < k && i < out.n_calls; i++) {
                CHECK_STR(part[i].name, out.calls[i].name);
                if (part[i].args_len > strlen(out.calls[i].arguments) ||
                    memcmp(part[i].args, out.calls[i].arguments, part[i].args_len))
                    test_fail_at(__FILE__, __LINE__, "block %zu cut %zu: '%.*s' is not a prefix of '%s'", b, cut,
                                 (int)part[i].args_len, part[i].args, out.calls[i].arguments);
                total += part[i].args_len;
            }
            CHECK(k <= out.n_calls);
            if (cut == n) {
                CHECK_EQ_INT(k, out.n_calls);
                for (uint32_t i = 0; i < k && i < out.n_calls; i++)
                    CHECK(part[i].args_len == strlen(out.calls[i].arguments));
            }
            grew += total > last;
            last = total;
            tool_output_partial_free(part, k);
        }
        CHECK(grew >= 4); /* the arguments came in steps, not at once */
        tool_output_free(&out);
    }
    /* no block, a block not yet begun, an unknown tool: nothing */
    struct tool_call_partial part[2];
    CHECK_EQ_INT(tool_output_partial("plain", 5, names, 3, part, 2), 0);
    const char *unknown = "\n\n<" D "tool_calls>\n<" D "invoke name=\"rm\">\n";
    CHECK_EQ_INT(tool_output_partial(unknown, strlen(unknown), names, 3, part, 2), 0);
    /* at most max calls */
    const char *two = "\n\n<" D "tool_calls>\n<" D "invoke name=\"now\">\n\n</" D "invoke>\n<" D "invoke name=\"now\">\n";
    uint32_t k = tool_output_partial(two, strlen(two), names, 3, part, 1);
    CHECK_EQ_INT(k, 1);
    tool_output_partial_free(part, k);
}
