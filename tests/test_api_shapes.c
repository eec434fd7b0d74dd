/* The Anthropic and Responses request translations: a well-formed body becomes exactly the
 * chat body it means; malformed or unsupported bodies are refused naming the field. */
#include "firmware/api_shapes.h"
#include "tests/harness.h"

#include <stdlib.h>
#include <string.h>

static void check_translation(json_t *(*fn)(const char *, size_t, char *, size_t), const char *in, const char *want,
                              int line)
{
    char err[256] = "";
    json_t *got = fn(in, strlen(in), err, sizeof err);
    json_t *w = json_loads(want, 0, NULL);
    if (!got || !w || !json_equal(got, w)) {
        char *g = got ? json_dumps(got, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
        test_fail_at(__FILE__, line, "got %s (%s)\n  want %s", g ? g : "NULL", err, want);
        free(g);
    }
    json_decref(got);
    json_decref(w);
}

TEST(api_shapes_translate_anthropic_and_responses_bodies_to_chat)
{
    check_translation(anthropic_to_chat,
        "{\"model\":\"m\",\"max_tokens\":5,\"system\":[{\"type\":\"text\",\"text\":\"s\",\"cache_control\":{\"type\":\"ephemeral\"}}],"
        "\"stop_sequences\":[\"x\"],\"thinking\":{\"type\":\"enabled\",\"budget_tokens\":64},"
        "\"tools\":[{\"name\":\"f\",\"description\":\"d\",\"input_schema\":{\"type\":\"object\"}}],"
        "\"tool_choice\":{\"type\":\"auto\",\"disable_parallel_tool_use\":true},"
        "\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"},"
        "{\"role\":\"assistant\",\"content\":[{\"type\":\"thinking\",\"thinking\":\"t\",\"signature\":\"\"},"
        "{\"type\":\"text\",\"text\":\"A\"},{\"type\":\"tool_use\",\"id\":\"a\",\"name\":\"f\",\"input\":{\"x\":1}}]},"
        "{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\",\"tool_use_id\":\"a\",\"content\":\"ok\"},"
        "{\"type\":\"text\",\"text\":\"more\"}]}]}",
        "{\"model\":\"m\",\"max_tokens\":5,\"stop\":[\"x\"],\"thinking\":true,\"parallel_tool_calls\":false,"
        "\"tool_choice\":\"auto\",\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"description\":\"d\","
        "\"parameters\":{\"type\":\"object\"}}}],\"messages\":[{\"role\":\"system\",\"content\":[{\"type\":\"text\",\"text\":\"s\"}]},"
        "{\"role\":\"user\",\"content\":\"Hi\"},{\"role\":\"assistant\",\"content\":\"A\",\"reasoning_content\":\"t\","
        "\"tool_calls\":[{\"id\":\"a\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":{\"x\":1}}}]},"
        "{\"role\":\"tool\",\"tool_call_id\":\"a\",\"content\":\"ok\"},{\"role\":\"user\",\"content\":\"more\"}]}",
        __LINE__);
    check_translation(responses_to_chat,
        "{\"instructions\":\"s\",\"max_output_tokens\":4,\"store\":false,\"reasoning\":{\"effort\":\"high\"},"
        "\"tools\":[{\"type\":\"function\",\"name\":\"f\",\"parameters\":{}}],\"tool_choice\":{\"type\":\"function\",\"name\":\"f\"},"
        "\"input\":[{\"role\":\"user\",\"content\":[{\"type\":\"input_text\",\"text\":\"Hi\"}]},"
        "{\"type\":\"reasoning\",\"summary\":[{\"type\":\"summary_text\",\"text\":\"r\"}]},"
        "{\"type\":\"function_call\",\"call_id\":\"c\",\"name\":\"f\",\"arguments\":\"{}\"},"
        "{\"type\":\"function_call_output\",\"call_id\":\"c\",\"output\":\"ok\"}]}",
        "{\"max_tokens\":4,\"thinking\":true,\"reasoning_effort\":\"high\","
        "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{}}}],"
        "\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"f\"}},"
        "\"messages\":[{\"role\":\"system\",\"content\":\"s\"},{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"Hi\"}]},"
        "{\"role\":\"assistant\",\"content\":\"\",\"reasoning_content\":\"r\",\"tool_calls\":[{\"id\":\"c\",\"type\":\"function\","
        "\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]},{\"role\":\"tool\",\"tool_call_id\":\"c\",\"content\":\"ok\"}]}",
        __LINE__);
}

TEST(api_shapes_refuse_malformed_and_unsupported_bodies)
{
    static const struct {
        int anthropic;
        const char *body, *needle;
    } bad[] = {
        { 1, "{\"max_tokens\":5,\"messages\":[", "invalid JSON" },
        { 1, "[]", "JSON object" },
        { 1, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", "max_tokens: missing" },
        { 1, "{\"max_tokens\":5,\"messages\":{}}", "messages: expected an array" },
        { 1, "{\"max_tokens\":5,\"messages\":[{\"role\":\"system\",\"content\":\"x\"}]}", "messages[0].role" },
        { 1, "{\"max_tokens\":5,\"messages\":[{\"role\":\"user\",\"content\":\"x\",\"x\":1}]}", "messages[0].x: unknown field" },
        { 1, "{\"max_tokens\":5,\"messages\":[{\"role\":\"user\"}]}", "messages[0].content: missing" },
        { 1, "{\"max_tokens\":5,\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image\"}]}]}", "no vision" },
        { 1, "{\"max_tokens\":5,\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"tool_use\",\"id\":\"a\",\"name\":\"f\",\"input\":{}}]}]}", "not supported in a user message" },
        { 1, "{\"max_tokens\":5,\"messages\":[{\"role\":\"assistant\",\"content\":[{\"type\":\"tool_use\",\"id\":\"a\",\"name\":\"f\",\"input\":[]}]}]}", "input object" },
        { 1, "{\"max_tokens\":5,\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\"}]}]}", "tool_use_id" },
        { 1, "{\"max_tokens\":5,\"messages\":[],\"tools\":[{\"type\":\"web_search_20250305\",\"name\":\"w\"}]}", "server tool" },
        { 1, "{\"max_tokens\":5,\"messages\":[],\"tools\":[{\"name\":\"f\"}]}", "input_schema" },
        { 1, "{\"max_tokens\":5,\"messages\":[],\"tool_choice\":{\"type\":\"sometimes\"}}", "tool_choice.type" },
        { 1, "{\"max_tokens\":5,\"messages\":[],\"thinking\":{\"type\":\"deep\"}}", "thinking.type" },
        { 1, "{\"max_tokens\":5,\"messages\":[],\"frobnicate\":1}", "frobnicate: unknown field" },
        { 0, "{}", "input: missing" },
        { 0, "{\"input\":5}", "input: expected" },
        { 0, "{\"input\":[{\"role\":\"tool\",\"content\":\"x\"}]}", "input[0].role" },
        { 0, "{\"input\":[{\"role\":\"user\",\"content\":[{\"type\":\"input_image\"}]}]}", "no vision" },
        { 0, "{\"input\":[{\"type\":\"function_call\",\"name\":\"f\"}]}", "call_id" },
        { 0, "{\"input\":[{\"type\":\"item_reference\",\"id\":\"x\"}]}", "not supported" },
        { 0, "{\"input\":\"x\",\"previous_response_id\":\"r\"}", "previous_response_id" },
        { 0, "{\"input\":\"x\",\"store\":true}", "store" },
        { 0, "{\"input\":\"x\",\"tools\":[{\"type\":\"file_search\"}]}", "only function tools" },
        { 0, "{\"input\":\"x\",\"text\":{\"format\":{\"type\":\"json_object\"}}}", "text.format" },
        { 0, "{\"input\":\"x\",\"frobnicate\":1}", "frobnicate: unknown field" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char err[256] = "";
        json_t *got = bad[i].anthropic ? anthropic_to_chat(bad[i].body, strlen(bad[i].body), err, sizeof err)
                                       : responses_to_chat(bad[i].body, strlen(bad[i].body), err, sizeof err);
        if (got || !strstr(err, bad[i].needle))
            test_fail_at(__FILE__, __LINE__, "case %zu: %s, \"%s\", expected \"%s\"", i, got ? "accepted" : "refused", err,
                         bad[i].needle);
        json_decref(got);
    }
}
