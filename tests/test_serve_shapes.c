/* The other API shapes end to end over the Unix socket: Anthropic Messages and OpenAI
 * Responses requests answer exactly what the equivalent chat completions request answers
 * (same prompt size, same greedy text), in their own shapes, streamed with their own event
 * sequences; their errors have their shapes; GET /v1/models/{id} and /v1/embeddings. */
#include "engine/engine.h"
#include "tests/harness.h"
#include "tests/serve_client.h"

#include <jansson.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *const sets[] = { "server.slots=2", NULL };

static json_t *parse(const char *s)
{
    json_t *o = s ? json_loads(s, JSON_ALLOW_NUL, NULL) : NULL; /* answers may hold U+0000 */
    if (!o) test_fail_at(__FILE__, __LINE__, "not JSON: %.200s", s ? s : "null");
    return o;
}

/* The blocking chat answer's text and prompt size for a chat body. */
static char *chat_answer(struct served *d, const char *body, long long *prompt_tokens)
{
    char *out;
    if (serve_curl(d, "POST", "/v1/chat/completions", body, &out, NULL) != 200) {
        test_fail_at(__FILE__, __LINE__, "chat: %s", out ? out : "");
        free(out);
        return NULL;
    }
    json_t *o = parse(out);
    free(out);
    json_t *msg = json_object_get(json_array_get(json_object_get(o, "choices"), 0), "message");
    char *text = strdup(json_string_value(json_object_get(msg, "content")) ? json_string_value(json_object_get(msg, "content")) : "");
    *prompt_tokens = json_integer_value(json_object_get(json_object_get(o, "usage"), "prompt_tokens"));
    json_decref(o);
    return text;
}

/* The SSE events of a stream as [name, data] pairs (name "" when the event has none). */
static json_t *sse_events(const char *out)
{
    json_t *evs = json_array();
    const char *p = out;
    while (p && *p) {
        const char *end = strstr(p, "\n\n");
        if (!end) break;
        char name[64] = "";
        const char *ev = p;
        if (!strncmp(ev, "event: ", 7)) {
            const char *nl = strchr(ev, '\n');
            snprintf(name, sizeof name, "%.*s", (int)(nl - ev - 7), ev + 7);
            ev = nl + 1;
        }
        if (!strncmp(ev, "data: ", 6) && ev < end) {
            char *data = strndup(ev + 6, (size_t)(end - ev - 6));
            json_t *d = json_loads(data, JSON_ALLOW_NUL, NULL);
            if (d) json_array_append_new(evs, json_pack("[s,o]", name, d));
            free(data);
        }
        p = end + 2;
    }
    return evs;
}

static const char *const stream_args[] = { "-N", NULL };

/* The chat request the Anthropic and Responses requests below are equivalent to. */
#define BRIEF_HI "{\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},{\"role\":\"user\",\"content\":" \
                 "\"Hi there\"}],\"max_tokens\":6,\"temperature\":0}"

/* A streaming request with body plus "stream": true; its events. */
static json_t *stream_events(struct served *d, const char *path, const char *body)
{
    char sbody[1024], *out;
    snprintf(sbody, sizeof sbody, "%.*s,\"stream\":true}", (int)strlen(body) - 1, body);
    CHECK_EQ_INT(serve_curl(d, "POST", path, sbody, &out, stream_args), 200);
    json_t *evs = sse_events(out);
    free(out);
    return evs;
}

TEST(serve_anthropic_messages_answer_as_the_chat_equivalent)
{
    struct served d;
    REQUIRE(serve_start(&d, sets) == 0);
    long long n_prompt;
    char *want = chat_answer(&d, BRIEF_HI, &n_prompt);
    REQUIRE(want);
    const char *body = "{\"model\":\"tiny\",\"max_tokens\":6,\"temperature\":0,\"system\":\"Be brief.\","
                       "\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"Hi \"},"
                       "{\"type\":\"text\",\"text\":\"there\",\"cache_control\":{\"type\":\"ephemeral\"}}]}],"
                       "\"metadata\":{\"user_id\":\"u1\"}}";
    char *out;
    CHECK_EQ_INT(serve_curl(&d, "POST", "/v1/messages", body, &out, NULL), 200);
    json_t *o = parse(out);
    CHECK_STR(json_string_value(json_object_get(o, "type")), "message");
    CHECK_STR(json_string_value(json_object_get(o, "role")), "assistant");
    json_t *block = json_array_get(json_object_get(o, "content"), 0);
    CHECK_STR(json_string_value(json_object_get(block, "type")), "text");
    CHECK_STR(json_string_value(json_object_get(block, "text")), want);
    CHECK_EQ_INT(json_integer_value(json_object_get(json_object_get(o, "usage"), "input_tokens")), n_prompt);
    const char *sr = json_string_value(json_object_get(o, "stop_reason"));
    CHECK(sr && (!strcmp(sr, "end_turn") || !strcmp(sr, "max_tokens")));
    json_decref(o);
    free(out);

    /* streamed: message_start, one text block, message_delta, message_stop */
    json_t *evs = stream_events(&d, "/v1/messages", body);
    char text[2048] = "";
    const char *order[8];
    size_t n_order = 0;
    for (size_t i = 0; i < json_array_size(evs); i++) {
        const char *name = json_string_value(json_array_get(json_array_get(evs, i), 0));
        json_t *data = json_array_get(json_array_get(evs, i), 1);
        CHECK_STR(json_string_value(json_object_get(data, "type")), name); /* Anthropic: event name = data.type */
        if (!strcmp(name, "content_block_delta"))
            strncat(text, json_string_value(json_object_get(json_object_get(data, "delta"), "text")), sizeof text - strlen(text) - 1);
        else if (n_order < 8 && strcmp(name, "ping")) order[n_order++] = name;
    }
    REQUIRE(n_order == 5);
    CHECK_STR(order[0], "message_start");
    CHECK_STR(order[1], "content_block_start");
    CHECK_STR(order[2], "content_block_stop");
    CHECK_STR(order[3], "message_delta");
    CHECK_STR(order[4], "message_stop");
    CHECK_STR(text, want);
    json_decref(evs);

    /* a stop sequence is named in stop_sequence */
    CHECK_EQ_INT(serve_curl(&d, "POST", "/v1/messages",
                            "{\"max_tokens\":1,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stop_sequences\":[\"zz\"]}",
                            &out, NULL), 200);
    free(out);

    /* errors in Anthropic's shape */
    CHECK_EQ_INT(serve_curl(&d, "POST", "/v1/messages", "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", &out, NULL), 400);
    o = parse(out);
    CHECK_STR(json_string_value(json_object_get(o, "type")), "error");
    CHECK_STR(json_string_value(json_object_get(json_object_get(o, "error"), "type")), "invalid_request_error");
    CHECK(strstr(json_string_value(json_object_get(json_object_get(o, "error"), "message")), "max_tokens") != NULL);
    json_decref(o);
    free(out);
    CHECK_EQ_INT(serve_curl(&d, "POST", "/v1/messages",
                            "{\"max_tokens\":5,\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image\",\"source\":{}}]}]}",
                            &out, NULL), 400);
    CHECK(out && strstr(out, "no vision"));
    free(out);
    free(want);
    serve_stop(&d, SIGTERM, 10000);
}

/* A tool conversation in Anthropic's blocks renders the same prompt as in OpenAI's. */
TEST(serve_anthropic_tool_blocks_prompt_as_openai_tool_messages)
{
    struct served d;
    REQUIRE(serve_start(&d, sets) == 0);
    long long n_chat;
    char *want = chat_answer(&d,
        "{\"max_tokens\":4,\"temperature\":0,\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\","
        "\"description\":\"Weather\",\"parameters\":{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\"}}}}}],"
        "\"messages\":[{\"role\":\"user\",\"content\":\"Oslo?\"},"
        "{\"role\":\"assistant\",\"content\":\"Checking.\",\"tool_calls\":[{\"id\":\"t1\",\"type\":\"function\","
        "\"function\":{\"name\":\"get_weather\",\"arguments\":\"{\\\"city\\\": \\\"Oslo\\\"}\"}}]},"
        "{\"role\":\"tool\",\"tool_call_id\":\"t1\",\"content\":\"cold\"},{\"role\":\"user\",\"content\":\"Thanks\"}]}", &n_chat);
    REQUIRE(want);
    char *out;
    CHECK_EQ_INT(serve_curl(&d, "POST", "/v1/messages",
        "{\"max_tokens\":4,\"temperature\":0,\"tools\":[{\"name\":\"get_weather\",\"description\":\"Weather\","
        "\"input_schema\":{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\"}}}}],"
        "\"tool_choice\":{\"type\":\"auto\"},"
        "\"messages\":[{\"role\":\"user\",\"content\":\"Oslo?\"},"
        "{\"role\":\"assistant\",\"content\":[{\"type\":\"text\",\"text\":\"Checking.\"},"
        "{\"type\":\"tool_use\",\"id\":\"t1\",\"name\":\"get_weather\",\"input\":{\"city\":\"Oslo\"}}]},"
        "{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\",\"tool_use_id\":\"t1\",\"content\":\"cold\"},"
        "{\"type\":\"text\",\"text\":\"Thanks\"}]}]}", &out, NULL), 200);
    json_t *o = parse(out);
    CHECK_EQ_INT(json_integer_value(json_object_get(json_object_get(o, "usage"), "input_tokens")), n_chat);
    CHECK_STR(json_string_value(json_object_get(json_array_get(json_object_get(o, "content"), 0), "text")), want);
    json_decref(o);
    free(out);
    free(want);
    serve_stop(&d, SIGTERM, 10000);
}

TEST(serve_responses_answer_as_the_chat_equivalent)
{
    struct served d;
    REQUIRE(serve_start(&d, sets) == 0);
    long long n_prompt;
    char *want = chat_answer(&d, BRIEF_HI, &n_prompt);
    REQUIRE(want);
    const char *body = "{\"model\":\"tiny\",\"instructions\":\"Be brief.\",\"input\":[{\"role\":\"user\",\"content\":"
                       "[{\"type\":\"input_text\",\"text\":\"Hi there\"}]}],\"max_output_tokens\":6,\"temperature\":0,"
                       "\"store\":false}";
    char *out;
    CHECK_EQ_INT(serve_curl(&d, "POST", "/v1/responses", body, &out, NULL), 200);
    json_t *o = parse(out);
    CHECK_STR(json_string_value(json_object_get(o, "object")), "response");
    json_t *item = json_array_get(json_object_get(o, "output"), 0);
    CHECK_STR(json_string_value(json_object_get(item, "type")), "message");
    CHECK_STR(json_string_value(json_object_get(json_array_get(json_object_get(item, "content"), 0), "text")), want);
    CHECK_STR(json_string_value(json_object_get(o, "output_text")), want);
    CHECK_EQ_INT(json_integer_value(json_object_get(json_object_get(o, "usage"), "input_tokens")), n_prompt);
    json_decref(o);
    free(out);

    json_t *evs = stream_events(&d, "/v1/responses", body);
    char text[2048] = "";
    const char *first = NULL, *last = NULL;
    long long seq = -1;
    for (size_t i = 0; i < json_array_size(evs); i++) {
        const char *name = json_string_value(json_array_get(json_array_get(evs, i), 0));
        json_t *data = json_array_get(json_array_get(evs, i), 1);
        CHECK_STR(json_string_value(json_object_get(data, "type")), name);
        CHECK_EQ_INT(json_integer_value(json_object_get(data, "sequence_number")), seq + 1);
        seq = json_integer_value(json_object_get(data, "sequence_number"));
        if (!strcmp(name, "response.output_text.delta"))
            strncat(text, json_string_value(json_object_get(data, "delta")), sizeof text - strlen(text) - 1);
        if (!first) first = name;
        last = name;
    }
    CHECK(first && !strcmp(first, "response.created"));
    CHECK(last && (!strcmp(last, "response.completed") || !strcmp(last, "response.incomplete")));
    CHECK_STR(text, want);
    json_decref(evs);

    CHECK_EQ_INT(serve_curl(&d, "POST", "/v1/responses", "{\"input\":\"x\",\"previous_response_id\":\"resp_1\"}", &out, NULL), 400);
    CHECK(out && strstr(out, "previous_response_id"));
    free(out);
    CHECK_EQ_INT(serve_curl(&d, "POST", "/v1/responses", "{\"input\":\"x\",\"tools\":[{\"type\":\"web_search\"}]}", &out, NULL), 400);
    CHECK(out && strstr(out, "only function tools"));
    free(out);
    free(want);
    serve_stop(&d, SIGTERM, 10000);
}

TEST(serve_model_by_id_and_no_embeddings)
{
    struct served d;
    REQUIRE(serve_start(&d, sets) == 0);
    char *out;
    CHECK_EQ_INT(serve_curl(&d, "GET", "/v1/models", NULL, &out, NULL), 200);
    json_t *o = parse(out);
    char id[256];
    snprintf(id, sizeof id, "/v1/models/%s", json_string_value(json_object_get(json_array_get(json_object_get(o, "data"), 0), "id")));
    json_decref(o);
    free(out);
    CHECK_EQ_INT(serve_curl(&d, "GET", id, NULL, &out, NULL), 200);
    o = parse(out);
    CHECK_STR(json_string_value(json_object_get(o, "object")), "model");
    json_decref(o);
    free(out);
    CHECK_EQ_INT(serve_curl(&d, "GET", "/v1/models/gpt-4o", NULL, &out, NULL), 404);
    CHECK(out && strstr(out, "model_not_found"));
    free(out);
    CHECK_EQ_INT(serve_curl(&d, "POST", "/v1/embeddings", "{\"input\":\"x\"}", &out, NULL), 404);
    o = parse(out);
    CHECK(strstr(json_string_value(json_object_get(json_object_get(o, "error"), "message")), "embedding head") != NULL);
    json_decref(o);
    free(out);
    serve_stop(&d, SIGTERM, 10000);
}

/* ---- forced tool calls end to end ----
 * With tool_choice named or required, the random tiny model must answer with a call: the
 * sampler is held to the DSML block (engine/text/dsml_grammar.h). Each shape's calls are
 * checked against the tool's schema by the engine's validator (json_validate.h). */

#define WEATHER_SCHEMA "{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\",\"maxLength\":10}," \
                       "\"unit\":{\"enum\":[\"c\",\"f\"]},\"days\":{\"type\":\"integer\"}},\"required\":[\"city\"]," \
                       "\"additionalProperties\":false}"
#define PING_SCHEMA "{\"type\":\"object\",\"properties\":{},\"additionalProperties\":false}"

static bool args_validate(const char *name, const char *args_text, const json_t *args_obj)
{
    const char *st = !strcmp(name, "get_weather") ? WEATHER_SCHEMA : PING_SCHEMA;
    char *args = args_obj ? json_dumps(args_obj, JSON_COMPACT) : strdup(args_text ? args_text : "");
    char why[256] = "no arguments";
    struct jg_schema *schema = NULL;
    bool ok = args && jg_schema_compile(&schema, st, strlen(st), why, sizeof why) == 0 &&
              jg_schema_validate(schema, args, strlen(args), why, sizeof why) == 0;
    if (!ok) test_fail_at(__FILE__, __LINE__, "%s(%s): %s", name, args_text ? args_text : "(object)", why);
    jg_schema_free(schema);
    free(args);
    return ok;
}

#define CHAT_TOOLS "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"parameters\":" WEATHER_SCHEMA \
                   "}},{\"type\":\"function\",\"function\":{\"name\":\"ping\",\"parameters\":" PING_SCHEMA "}}]"

TEST(serve_forced_tool_calls_validate_in_every_shape)
{
    struct served d;
    REQUIRE(serve_start(&d, sets) == 0);
    static const char *const choices[] = { "{\"type\":\"function\",\"function\":{\"name\":\"get_weather\"}}", "\"required\"" };
    for (int c = 0; c < 2; c++) {
        for (int seed = 1; seed <= 3; seed++) {
            char body[2048], *out;
            snprintf(body, sizeof body, "{\"messages\":[{\"role\":\"user\",\"content\":\"Weather in Oslo?\"}],"
                     "\"max_tokens\":200,\"seed\":%d,\"temperature\":1," CHAT_TOOLS ",\"tool_choice\":%s}", seed, choices[c]);
            CHECK_EQ_INT(serve_curl(&d, "POST", "/v1/chat/completions", body, &out, NULL), 200);
            json_t *o = parse(out);
            json_t *ch = json_array_get(json_object_get(o, "choices"), 0);
            json_t *calls = json_object_get(json_object_get(ch, "message"), "tool_calls");
            CHECK_STR(json_string_value(json_object_get(ch, "finish_reason")), "tool_calls");
            CHECK(json_array_size(calls) >= 1);
            for (size_t i = 0; i < json_array_size(calls); i++) {
                json_t *fn = json_object_get(json_array_get(calls, i), "function");
                const char *name = json_string_value(json_object_get(fn, "name"));
                CHECK(name && (!strcmp(name, "get_weather") || (c == 1 && !strcmp(name, "ping"))));
                if (name) args_validate(name, json_string_value(json_object_get(fn, "arguments")), NULL);
            }
            char *blocking = json_dumps(calls, JSON_COMPACT);
            json_decref(o);
            free(out);

            /* streamed: the deltas reassemble to the same calls */
            json_t *evs = stream_events(&d, "/v1/chat/completions", body);
            json_t *got = json_array();
            const char *finish = NULL;
            int fragments = 0; /* argument deltas: more than one per call when they stream as they come */
            for (size_t i = 0; i < json_array_size(evs); i++) {
                json_t *sch = json_array_get(json_object_get(json_array_get(json_array_get(evs, i), 1), "choices"), 0);
                json_t *tc = json_object_get(json_object_get(sch, "delta"), "tool_calls");
                for (size_t k = 0; k < json_array_size(tc); k++) {
                    json_t *dlt = json_array_get(tc, k), *fn = json_object_get(dlt, "function");
                    size_t idx = (size_t)json_integer_value(json_object_get(dlt, "index"));
                    while (json_array_size(got) <= idx)
                        json_array_append_new(got, json_pack("{s:s,s:s}", "name", "", "arguments", ""));
                    json_t *g = json_array_get(got, idx);
                    for (int f = 0; f < 2; f++) {
                        const char *key = f ? "arguments" : "name";
                        const char *piece = json_string_value(json_object_get(fn, key));
                        if (!piece) continue;
                        fragments += f && piece[0];
                        char *joined = NULL;
                        if (asprintf(&joined, "%s%s", json_string_value(json_object_get(g, key)), piece) < 0) continue;
                        json_object_set_new(g, key, json_string(joined));
                        free(joined);
                    }
                }
                if (json_is_string(json_object_get(sch, "finish_reason")))
                    finish = json_string_value(json_object_get(sch, "finish_reason"));
            }
            CHECK(finish && !strcmp(finish, "tool_calls"));
            CHECK(fragments > (int)json_array_size(got));
            json_t *want = json_loads(blocking, 0, NULL);
            CHECK_EQ_INT(json_array_size(got), json_array_size(want));
            for (size_t i = 0; i < json_array_size(got) && i < json_array_size(want); i++) {
                json_t *wf = json_object_get(json_array_get(want, i), "function"), *g = json_array_get(got, i);
                CHECK_STR(json_string_value(json_object_get(g, "name")), json_string_value(json_object_get(wf, "name")));
                CHECK_STR(json_string_value(json_object_get(g, "arguments")), json_string_value(json_object_get(wf, "arguments")));
            }
            json_decref(want);
            json_decref(got);
            json_decref(evs);
            free(blocking);
        }
    }

    /* Anthropic: tool_choice tool, a tool_use block with an input that validates */
    char *out;
    CHECK_EQ_INT(serve_curl(&d, "POST", "/v1/messages",
        "{\"max_tokens\":200,\"messages\":[{\"role\":\"user\",\"content\":\"Weather?\"}],"
        "\"tools\":[{\"name\":\"get_weather\",\"input_schema\":" WEATHER_SCHEMA "}],"
        "\"tool_choice\":{\"type\":\"tool\",\"name\":\"get_weather\"}}", &out, NULL), 200);
    json_t *o = parse(out);
    if (!json_object_get(o, "stop_reason")) test_fail_at(__FILE__, __LINE__, "messages: %.300s", out);
    CHECK_STR(json_string_value(json_object_get(o, "stop_reason")), "tool_use");
    json_t *block = NULL;
    for (size_t i = 0; i < json_array_size(json_object_get(o, "content")); i++)
        if (!strcmp(json_string_value(json_object_get(json_array_get(json_object_get(o, "content"), i), "type")), "tool_use"))
            block = json_array_get(json_object_get(o, "content"), i);
    CHECK(block != NULL);
    if (block) args_validate("get_weather", NULL, json_object_get(block, "input"));
    json_decref(o);
    free(out);

    /* Responses: a function_call item whose arguments validate */
    CHECK_EQ_INT(serve_curl(&d, "POST", "/v1/responses",
        "{\"max_output_tokens\":200,\"input\":\"Weather?\",\"store\":false,"
        "\"tools\":[{\"type\":\"function\",\"name\":\"get_weather\",\"parameters\":" WEATHER_SCHEMA "},"
        "{\"type\":\"function\",\"name\":\"ping\",\"parameters\":" PING_SCHEMA "}],\"tool_choice\":\"required\"}", &out, NULL), 200);
    o = parse(out);
    size_t n_calls = 0;
    for (size_t i = 0; i < json_array_size(json_object_get(o, "output")); i++) {
        json_t *item = json_array_get(json_object_get(o, "output"), i);
        if (strcmp(json_string_value(json_object_get(item, "type")), "function_call")) continue;
        n_calls++;
        args_validate(json_string_value(json_object_get(item, "name")), json_string_value(json_object_get(item, "arguments")), NULL);
    }
    CHECK(n_calls >= 1);
    json_decref(o);
    free(out);
    serve_stop(&d, SIGTERM, 10000);
}

/* A seeded forced call is the same call alone and with another request sharing the batch. */
static char *forced_call(struct served *d, const char *body)
{
    char *out = NULL, *s = NULL;
    if (serve_curl(d, "POST", "/v1/chat/completions", body, &out, NULL) == 200) {
        json_t *o = parse(out);
        json_t *calls = json_object_get(json_object_get(json_array_get(json_object_get(o, "choices"), 0), "message"), "tool_calls");
        json_t *fns = json_array();
        for (size_t i = 0; i < json_array_size(calls); i++)
            json_array_append(fns, json_object_get(json_array_get(calls, i), "function"));
        s = json_array_size(fns) ? json_dumps(fns, JSON_COMPACT) : NULL;
        json_decref(fns);
        json_decref(o);
    }
    free(out);
    return s;
}

TEST(serve_forced_tool_call_seeded_same_alone_and_loaded)
{
    struct served d;
    REQUIRE(serve_start(&d, sets) == 0);
    const char *body = "{\"messages\":[{\"role\":\"user\",\"content\":\"Weather in Oslo?\"}],\"max_tokens\":200,\"seed\":7,"
                       CHAT_TOOLS ",\"tool_choice\":\"required\"}";
    char *alone = forced_call(&d, body);
    int other = serve_load_start(&d); /* a second unconstrained request sharing the batch */
    char *loaded = forced_call(&d, body);
    CHECK(serve_load_wait(other) == 0);
    CHECK(alone != NULL);
    CHECK_STR(alone, loaded);
    free(alone);
    free(loaded);
    serve_stop(&d, SIGTERM, 10000);
}
