/* The daemon end to end, happy paths: every endpoint over the Unix socket with curl,
 * greedy answers equal to greedy decoding through engine.h, the SSE stream chunk by chunk,
 * usage numbers, stop strings, the audit log, --print-config and loopback TCP. */
#include "engine/engine.h"
#include "engine/text/tokenizer.h"
#include "firmware/config.h"
#include "tests/harness.h"
#include "tests/serve_client.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#define USER_MARK "<\xef\xbd\x9cUser\xef\xbd\x9c>"
#define ASSISTANT_MARK "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>"

static const char *const small_sets[] = { "server.slots=2", NULL };

/* Greedy decoding straight through engine.h and the tokenizer: the independent answer the
 * daemon must reproduce. Appends up to max_tokens tokens' text, stopping at EOS. */
static char *engine_greedy(const char *model, const int32_t *prompt, uint32_t n, uint32_t max_tokens, uint32_t *n_out)
{
    char err[256];
    struct engine_options eo;
    engine_options_default(&eo);
    eo.model_path = model;
    struct engine *e;
    struct session *s;
    struct tokenizer *t;
    if (engine_open(&e, &eo, err, sizeof err) || session_create(e, 0, &s, err, sizeof err) ||
        tok_create_from_file(&t, model, err, sizeof err)) {
        test_fail_at(__FILE__, __LINE__, "engine: %s", err);
        return NULL;
    }
    struct engine_info info;
    engine_get_info(e, &info);
    float *logits = malloc(info.n_vocab * sizeof *logits);
    size_t cap = tok_stream_buf_size(t) * (max_tokens + 2) + 1, len = 0;
    char *text = malloc(cap);
    struct tok_stream st;
    tok_stream_init(&st, t, TOK_DECODE_SPECIAL); /* control tokens as text, as the daemon sends them */
    int rc = session_eval(s, prompt, n, logits, false, err, sizeof err);
    *n_out = 0;
    while (!rc) {
        int32_t best = 0;
        for (uint32_t i = 1; i < info.n_vocab; i++)
            if (logits[i] > logits[best]) best = (int32_t)i;
        if (best == tok_eos(t)) break;
        len += (size_t)tok_stream_feed(&st, best, text + len, cap - len);
        if (++*n_out == max_tokens) break;
        rc = session_eval(s, &best, 1, logits, false, err, sizeof err);
    }
    len += (size_t)tok_stream_flush(&st, text + len, cap - len);
    text[len] = 0;
    if (rc) test_fail_at(__FILE__, __LINE__, "session_eval: %s", err);
    free(logits);
    tok_destroy(t);
    session_destroy(s);
    engine_close(e);
    return text;
}

/* BOS + parts, as the daemon's prompt should be: a part that is a special token's exact
 * text (the chat markers) is that token, any other part is encoded literally. */
static int32_t *encode_parts(const char *model, const char *const *parts, uint32_t *n)
{
    struct tokenizer *t;
    char err[256];
    if (tok_create_from_file(&t, model, err, sizeof err)) return NULL;
    struct tok_vec v = { 0 };
    tok_vec_push(&v, tok_bos(t));
    for (int i = 0; parts[i]; i++) {
        int32_t special = tok_find_special(t, parts[i]);
        if (special >= 0) tok_vec_push(&v, special);
        else tok_encode(t, parts[i], strlen(parts[i]), 0, &v, err, sizeof err);
    }
    tok_destroy(t);
    *n = (uint32_t)v.n;
    return v.ids;
}

static json_t *parse(const char *s)
{
    json_error_t je;
    json_t *o = s ? json_loads(s, JSON_ALLOW_NUL, &je) : NULL; /* answers may hold U+0000 */
    if (!o) test_fail_at(__FILE__, __LINE__, "not JSON (%s): %.200s", s ? je.text : "null", s ? s : "");
    return o;
}

TEST(serve_health_models_tokenize_metrics_over_unix_socket)
{
    struct served d;
    REQUIRE(serve_start(&d, small_sets) == 0);
    char *out;
    CHECK_EQ_INT(serve_curl(&d, "GET", "/health", NULL, &out, NULL), 200);
    json_t *o = parse(out);
    CHECK_STR(json_string_value(json_object_get(o, "status")), "ready");
    CHECK_STR(json_string_value(json_object_get(o, "model")), "flashbox-tiny-random");
    CHECK_STR(json_string_value(json_object_get(o, "slot")), "none");
    CHECK_EQ_INT(json_integer_value(json_object_get(o, "slots_total")), 2);
    /* model.n_ctx 0: the largest context whose memory plan fits, here the model's own */
    CHECK_EQ_INT(json_integer_value(json_object_get(o, "context_length")), 4096);
    json_decref(o);
    free(out);

    CHECK_EQ_INT(serve_curl(&d, "GET", "/v1/models", NULL, &out, NULL), 200);
    o = parse(out);
    CHECK_STR(json_string_value(json_object_get(o, "object")), "list");
    CHECK_STR(json_string_value(json_object_get(json_array_get(json_object_get(o, "data"), 0), "id")), "flashbox-tiny-random");
    CHECK_EQ_INT(json_integer_value(json_object_get(json_array_get(json_object_get(o, "data"), 0), "context_length")), 4096);
    json_decref(o);
    free(out);

    /* /tokenize against the tokenizer itself; /detokenize back to the text. */
    uint32_t n_ref;
    const char *parts[] = { "Hello world", NULL };
    int32_t *ref = encode_parts(d.model, parts, &n_ref);
    CHECK_EQ_INT(serve_curl(&d, "POST", "/tokenize", "{\"content\":\"Hello world\",\"add_special\":true}", &out, NULL), 200);
    o = parse(out);
    json_t *toks = json_object_get(o, "tokens");
    CHECK_EQ_INT(json_array_size(toks), n_ref);
    for (uint32_t i = 0; i < n_ref && i < json_array_size(toks); i++)
        CHECK_EQ_INT(json_integer_value(json_array_get(toks, i)), ref[i]);
    char body[512];
    int off = snprintf(body, sizeof body, "{\"tokens\":[");
    for (uint32_t i = 1; i < n_ref; i++) off += snprintf(body + off, sizeof body - off, "%s%d", i > 1 ? "," : "", ref[i]);
    snprintf(body + off, sizeof body - off, "]}");
    free(ref);
    json_decref(o);
    free(out);
    CHECK_EQ_INT(serve_curl(&d, "POST", "/detokenize", body, &out, NULL), 200);
    o = parse(out);
    CHECK_STR(json_string_value(json_object_get(o, "content")), "Hello world");
    json_decref(o);
    free(out);

    CHECK_EQ_INT(serve_curl(&d, "GET", "/metrics", NULL, &out, NULL), 200);
    CHECK(strstr(out, "# TYPE flashbox_requests_total counter") != NULL);
    CHECK(strstr(out, "flashbox_requests_total{endpoint=\"/tokenize\",status=\"200\"} 1") != NULL);
    CHECK(strstr(out, "flashbox_requests_total{endpoint=\"/health\",status=\"200\"}") != NULL);
    CHECK(strstr(out, "flashbox_time_to_first_token_seconds_bucket{le=\"+Inf\"} 0") != NULL);
    CHECK(strstr(out, "flashbox_slots_total 2") != NULL);
    CHECK(strstr(out, "flashbox_model_info{model=\"flashbox-tiny-random\",slot=\"none\"} 1") != NULL);
    free(out);
    CHECK_EQ_INT(WEXITSTATUS(serve_stop(&d, SIGTERM, 10000)), 0);
}

TEST(serve_greedy_completion_equals_engine_greedy)
{
    struct served d;
    REQUIRE(serve_start(&d, small_sets) == 0);
    uint32_t n_prompt, n_out;
    const char *parts[] = { "The quick brown fox", NULL };
    int32_t *prompt = encode_parts(d.model, parts, &n_prompt);
    char *want = engine_greedy(d.model, prompt, n_prompt, 12, &n_out);
    free(prompt);
    REQUIRE(want != NULL);
    char *out;
    CHECK_EQ_INT(serve_curl(&d, "POST", "/v1/completions",
                            "{\"prompt\":\"The quick brown fox\",\"max_tokens\":12,\"temperature\":0}", &out, NULL), 200);
    json_t *o = parse(out);
    json_t *ch = json_array_get(json_object_get(o, "choices"), 0);
    CHECK_STR(json_string_value(json_object_get(ch, "text")), want);
    CHECK_STR(json_string_value(json_object_get(ch, "finish_reason")), n_out == 12 ? "length" : "stop");
    CHECK_STR(json_string_value(json_object_get(o, "object")), "text_completion");
    json_t *u = json_object_get(o, "usage");
    CHECK_EQ_INT(json_integer_value(json_object_get(u, "prompt_tokens")), n_prompt);
    CHECK_EQ_INT(json_integer_value(json_object_get(u, "completion_tokens")), n_out);
    CHECK_EQ_INT(json_integer_value(json_object_get(u, "total_tokens")), n_prompt + n_out);
    json_decref(o);
    free(out);
    free(want);
    serve_stop(&d, SIGTERM, 10000);
}

TEST(serve_greedy_chat_equals_engine_greedy_on_the_v4_chat_encoding)
{
    struct served d;
    REQUIRE(serve_start(&d, small_sets) == 0);
    const char *parts[] = { "Be brief.", USER_MARK, "Hi there", ASSISTANT_MARK, "</think>", NULL };
    uint32_t n_prompt, n_out;
    int32_t *prompt = encode_parts(d.model, parts, &n_prompt);
    char *want = engine_greedy(d.model, prompt, n_prompt, 10, &n_out);
    free(prompt);
    REQUIRE(want != NULL);
    char *out;
    CHECK_EQ_INT(serve_curl(&d, "POST", "/v1/chat/completions",
                            "{\"model\":\"x\",\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},"
                            "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"Hi \"},{\"type\":\"text\",\"text\":\"there\"}]}],"
                            "\"max_tokens\":10,\"temperature\":0,\"thinking\":false}", &out, NULL), 200);
    json_t *o = parse(out);
    json_t *msg = json_object_get(json_array_get(json_object_get(o, "choices"), 0), "message");
    CHECK_STR(json_string_value(json_object_get(msg, "role")), "assistant");
    CHECK_STR(json_string_value(json_object_get(msg, "content")), want);
    CHECK_STR(json_string_value(json_object_get(o, "object")), "chat.completion");
    CHECK_EQ_INT(json_integer_value(json_object_get(json_object_get(o, "usage"), "prompt_tokens")), n_prompt);
    CHECK_EQ_INT(json_integer_value(json_object_get(json_object_get(o, "usage"), "completion_tokens")), n_out);
    json_decref(o);
    free(out);
    free(want);
    /* Thinking on ends the prompt with <think> instead: one more literal piece differs. */
    const char *tparts[] = { USER_MARK, "Hi", ASSISTANT_MARK, "<think>", NULL };
    prompt = encode_parts(d.model, tparts, &n_prompt);
    free(prompt);
    CHECK_EQ_INT(serve_curl(&d, "POST", "/v1/chat/completions",
                            "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"max_tokens\":1,"
                            "\"chat_template_kwargs\":{\"thinking\":true}}", &out, NULL), 200);
    o = parse(out);
    CHECK_EQ_INT(json_integer_value(json_object_get(json_object_get(o, "usage"), "prompt_tokens")), n_prompt);
    json_decref(o);
    free(out);
    serve_stop(&d, SIGTERM, 10000);
}

TEST(serve_stream_chunks_reassemble_to_the_blocking_answer_with_usage)
{
    struct served d;
    REQUIRE(serve_start(&d, small_sets) == 0);
    char *blocking;
    const char *req = "{\"messages\":[{\"role\":\"user\",\"content\":\"Count\"}],\"max_tokens\":16,\"temperature\":0%s}";
    char body[512];
    snprintf(body, sizeof body, req, "");
    REQUIRE(serve_curl(&d, "POST", "/v1/chat/completions", body, &blocking, NULL) == 200);
    json_t *bo = parse(blocking);
    const char *want = json_string_value(json_object_get(json_object_get(json_array_get(json_object_get(bo, "choices"), 0), "message"), "content"));
    json_int_t want_prompt = json_integer_value(json_object_get(json_object_get(bo, "usage"), "prompt_tokens"));
    json_int_t want_out = json_integer_value(json_object_get(json_object_get(bo, "usage"), "completion_tokens"));

    snprintf(body, sizeof body, req, ",\"stream\":true,\"stream_options\":{\"include_usage\":true}");
    const char *extra[] = { "-N", "-H", "Content-Type: application/json", NULL };
    char *sse;
    REQUIRE(serve_curl(&d, "POST", "/v1/chat/completions", body, &sse, extra) == 200);
    /* Event by event: "data: {json}\n\n", the same id throughout, role first, one finish,
     * the usage chunk (empty choices) last, then [DONE]. */
    char text[4096] = "";
    int events = 0, done = 0, finishes = 0, usage_seen = 0;
    const char *id0 = NULL;
    char idbuf[128] = "";
    for (char *ev = sse; ev && *ev;) {
        char *end = strstr(ev, "\n\n");
        CHECK(end != NULL);
        if (!end) break;
        *end = 0;
        CHECK(!strncmp(ev, "data: ", 6));
        CHECK(!done); /* nothing after [DONE] */
        if (!strcmp(ev + 6, "[DONE]")) {
            done = 1;
        } else {
            json_t *c = parse(ev + 6);
            events++;
            const char *id = json_string_value(json_object_get(c, "id"));
            if (!id0 && id) {
                snprintf(idbuf, sizeof idbuf, "%s", id);
                id0 = idbuf;
            }
            CHECK_STR(id, id0);
            CHECK_STR(json_string_value(json_object_get(c, "object")), "chat.completion.chunk");
            json_t *choices = json_object_get(c, "choices");
            if (json_array_size(choices) == 0) {
                json_t *u = json_object_get(c, "usage");
                CHECK_EQ_INT(json_integer_value(json_object_get(u, "prompt_tokens")), want_prompt);
                CHECK_EQ_INT(json_integer_value(json_object_get(u, "completion_tokens")), want_out);
                usage_seen = 1;
            } else {
                CHECK(!usage_seen);
                json_t *delta = json_object_get(json_array_get(choices, 0), "delta");
                if (events == 1) CHECK_STR(json_string_value(json_object_get(delta, "role")), "assistant");
                const char *piece = json_string_value(json_object_get(delta, "content"));
                if (piece) strncat(text, piece, sizeof text - strlen(text) - 1);
                json_t *fin = json_object_get(json_array_get(choices, 0), "finish_reason");
                if (!json_is_null(fin)) finishes++;
            }
            json_decref(c);
        }
        ev = end + 2;
    }
    CHECK(done);
    CHECK(usage_seen);
    CHECK_EQ_INT(finishes, 1);
    CHECK(events >= 3);
    CHECK_STR(text, want);
    json_decref(bo);
    free(blocking);
    free(sse);
    serve_stop(&d, SIGTERM, 10000);
}

TEST(serve_stop_string_cuts_the_answer_before_it)
{
    struct served d;
    REQUIRE(serve_start(&d, small_sets) == 0);
    char *out;
    const char *body = "{\"prompt\":\"abc\",\"max_tokens\":24,\"temperature\":0}";
    REQUIRE(serve_curl(&d, "POST", "/v1/completions", body, &out, NULL) == 200);
    json_t *o = parse(out);
    const char *full = json_string_value(json_object_get(json_array_get(json_object_get(o, "choices"), 0), "text"));
    REQUIRE(full && strlen(full) >= 4);
    /* A stop string taken from the middle of the known answer: one whole UTF-8 character. */
    size_t at = strlen(full) / 2;
    while (at > 0 && ((unsigned char)full[at] & 0xC0) == 0x80) at--;
    size_t clen = 1;
    while (full[at + clen] && ((unsigned char)full[at + clen] & 0xC0) == 0x80) clen++;
    char stop[8];
    snprintf(stop, sizeof stop, "%.*s", (int)clen, full + at);
    const char *first = strstr(full, stop);
    size_t cut = (size_t)(first - full);
    char want[512];
    snprintf(want, sizeof want, "%.*s", (int)cut, full);
    json_t *rq = json_pack("{s:s,s:i,s:i,s:[s,s]}", "prompt", "abc", "max_tokens", 24, "temperature", 0, "stop", "zzzz", stop);
    char *req = json_dumps(rq, 0);
    json_decref(rq);
    char *out2;
    REQUIRE(serve_curl(&d, "POST", "/v1/completions", req, &out2, NULL) == 200);
    json_t *o2 = parse(out2);
    json_t *ch = json_array_get(json_object_get(o2, "choices"), 0);
    CHECK_STR(json_string_value(json_object_get(ch, "text")), want);
    CHECK_STR(json_string_value(json_object_get(ch, "finish_reason")), "stop");
    json_decref(o);
    json_decref(o2);
    free(req);
    free(out);
    free(out2);
    serve_stop(&d, SIGTERM, 10000);
}

TEST(serve_audit_log_records_peer_and_tokens_but_not_prompts)
{
    struct served d;
    REQUIRE(serve_start(&d, small_sets) == 0);
    char *out;
    CHECK_EQ_INT(serve_curl(&d, "POST", "/v1/completions", "{\"prompt\":\"secret-words\",\"max_tokens\":3,\"temperature\":0}", &out, NULL), 200);
    free(out);
    CHECK_EQ_INT(WEXITSTATUS(serve_stop(&d, SIGTERM, 10000)), 0);
    FILE *f = fopen(d.audit, "r");
    REQUIRE(f != NULL);
    char line[4096];
    int found = 0, start = 0, stop = 0;
    while (fgets(line, sizeof line, f)) {
        CHECK(strstr(line, "secret-words") == NULL);
        json_t *o = parse(line);
        const char *ev = json_string_value(json_object_get(o, "event"));
        if (ev && !strcmp(ev, "start")) start = 1;
        if (ev && !strcmp(ev, "stop")) stop = 1;
        const char *ep = json_string_value(json_object_get(o, "endpoint"));
        if (ep && !strcmp(ep, "/v1/completions")) {
            found = 1;
            CHECK_EQ_INT(json_integer_value(json_object_get(o, "peer_uid")), getuid());
            CHECK_EQ_INT(json_integer_value(json_object_get(o, "peer_gid")), getgid());
            CHECK(json_integer_value(json_object_get(o, "peer_pid")) > 0);
            CHECK_EQ_INT(json_integer_value(json_object_get(o, "status")), 200);
            CHECK_EQ_INT(json_integer_value(json_object_get(o, "tokens_out")), 3);
            CHECK(json_integer_value(json_object_get(o, "tokens_in")) > 0);
            CHECK_STR(json_string_value(json_object_get(o, "model")), "flashbox-tiny-random");
            CHECK_STR(json_string_value(json_object_get(o, "slot")), "none");
            CHECK(json_is_real(json_object_get(o, "duration_ms")));
            CHECK(json_string_value(json_object_get(o, "time")) != NULL);
        }
        json_decref(o);
    }
    fclose(f);
    CHECK(found);
    CHECK(start);
    CHECK(stop);
}

TEST(serve_print_config_parses_back_to_the_defaults)
{
    char cmd[1024], path[700];
    snprintf(path, sizeof path, "%s/printed.conf", test_tmpdir());
    snprintf(cmd, sizeof cmd, "%s serve --print-config --set server.slots=7 > %s", test_flashbox_bin(), path);
    REQUIRE(system(cmd) == 0);
    struct serve_config want, got;
    config_default(&want);
    want.slots = 7;
    config_default(&got);
    got.slots = 1;
    char err[256];
    CHECK_EQ_INT(config_load_file(&got, path, err, sizeof err), 0);
    CHECK(memcmp(&want, &got, sizeof want) == 0);
}

TEST(serve_loopback_tcp_checks_the_host_header)
{
    int probe = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t sl = sizeof sa;
    REQUIRE(bind(probe, (struct sockaddr *)&sa, sizeof sa) == 0 && getsockname(probe, (struct sockaddr *)&sa, &sl) == 0);
    int port = ntohs(sa.sin_port);
    close(probe);
    char listen[64];
    snprintf(listen, sizeof listen, "server.listen=127.0.0.1:%d", port);
    const char *sets[] = { listen, NULL };
    struct served d;
    REQUIRE(serve_start(&d, sets) == 0);
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "curl -s -o /dev/null -w '%%{http_code}' http://127.0.0.1:%d/health > %s/code1", port, d.dir);
    CHECK(system(cmd) == 0);
    snprintf(cmd, sizeof cmd, "curl -s -o /dev/null -w '%%{http_code}' -H 'Host: evil.example' http://127.0.0.1:%d/health > %s/code2", port, d.dir);
    CHECK(system(cmd) == 0);
    char p1[700], p2[700], b1[8] = "", b2[8] = "";
    snprintf(p1, sizeof p1, "%s/code1", d.dir);
    snprintf(p2, sizeof p2, "%s/code2", d.dir);
    FILE *f1 = fopen(p1, "r"), *f2 = fopen(p2, "r");
    if (f1) { fgets(b1, sizeof b1, f1); fclose(f1); }
    if (f2) { fgets(b2, sizeof b2, f2); fclose(f2); }
    CHECK_STR(b1, "200");
    CHECK_STR(b2, "403");
    serve_stop(&d, SIGTERM, 10000);
}

/* `flashbox run` prints the answer, a newline and one stats line: the answer is what
 * precedes that last line. */
static char *run_answer(const char *model, const char *prompt, int n, int chat)
{
    const char *mode = chat == 2 ? "--think" : chat ? "--chat" : "";
    char cmd[2048], path[700];
    snprintf(path, sizeof path, "%s/run.out", test_tmpdir());
    snprintf(cmd, sizeof cmd, "%s run -m %s -p '%s' -n %d --temp 0 %s > %s", test_flashbox_bin(), model, prompt, n,
             mode, path);
    if (system(cmd) != 0) return NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    static char buf[65536];
    size_t len = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[len] = 0;
    if (len && buf[len - 1] == '\n') buf[--len] = 0;
    char *nl = strrchr(buf, '\n');
    if (!nl) return NULL;
    *nl = 0;
    return strdup(buf);
}

TEST(serve_greedy_answers_equal_flashbox_run)
{
    struct served d;
    REQUIRE(serve_start(&d, small_sets) == 0);
    char *want = run_answer(d.model, "Once upon a time", 10, 0);
    REQUIRE(want != NULL);
    char *out;
    CHECK_EQ_INT(serve_curl(&d, "POST", "/v1/completions", "{\"prompt\":\"Once upon a time\",\"max_tokens\":10,\"temperature\":0}", &out, NULL), 200);
    json_t *o = parse(out);
    CHECK_STR(json_string_value(json_object_get(json_array_get(json_object_get(o, "choices"), 0), "text")), want);
    json_decref(o);
    free(out);
    free(want);
    want = run_answer(d.model, "Hello", 10, 1);
    REQUIRE(want != NULL);
    CHECK_EQ_INT(serve_curl(&d, "POST", "/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"Hello\"}],\"max_tokens\":10,\"temperature\":0}", &out, NULL), 200);
    o = parse(out);
    CHECK_STR(json_string_value(json_object_get(json_object_get(json_array_get(json_object_get(o, "choices"), 0), "message"), "content")), want);
    json_decref(o);
    free(out);
    free(want);
    serve_stop(&d, SIGTERM, 10000);
}

TEST(serve_metrics_report_expert_cache_counters_when_paging)
{
    const char *sets[] = { "model.expert_cache_mb=1", "server.slots=1", NULL };
    struct served d;
    REQUIRE(serve_start(&d, sets) == 0);
    char *out;
    CHECK_EQ_INT(serve_curl(&d, "POST", "/v1/completions", "{\"prompt\":\"page the experts\",\"max_tokens\":4,\"temperature\":0}", &out, NULL), 200);
    free(out);
    double hits = serve_metric(&d, "flashbox_expert_cache_hits_total{layer=\"learned\"}") +
                  serve_metric(&d, "flashbox_expert_cache_hits_total{layer=\"hash\"}");
    double misses = serve_metric(&d, "flashbox_expert_cache_misses_total{layer=\"learned\"}") +
                    serve_metric(&d, "flashbox_expert_cache_misses_total{layer=\"hash\"}");
    CHECK(misses >= 1);
    CHECK(hits + misses >= 4); /* at least one routed lookup per generated token */
    CHECK(serve_metric(&d, "flashbox_expert_bytes_read_total") > 0);
    CHECK(serve_metric(&d, "flashbox_expert_cache_bytes") > 0);
    /* the learned layers' experts were guessed from the layer before; used never exceeds issued */
    double guessed = serve_metric(&d, "flashbox_expert_prefetch_by_layer_issued_total{layer=\"learned\"}");
    CHECK(guessed > 0);
    CHECK(serve_metric(&d, "flashbox_expert_prefetch_by_layer_used_total{layer=\"learned\"}") <= guessed);
    CHECK(serve_metric(&d, "flashbox_expert_prefetch_issued_total") ==
          guessed + serve_metric(&d, "flashbox_expert_prefetch_by_layer_issued_total{layer=\"hash\"}"));
    serve_stop(&d, SIGTERM, 10000);
}

TEST(serve_tells_systemd_ready_watchdog_and_stopping)
{
    struct serve_notify *nt = serve_notify_open();
    REQUIRE(nt != NULL);
    setenv("WATCHDOG_USEC", "200000", 1); /* pings expected every 100 ms */
    struct served d;
    int started = serve_start(&d, NULL);
    unsetenv("NOTIFY_SOCKET");
    unsetenv("WATCHDOG_USEC");
    if (started == 0) {
        usleep(600000);
        serve_stop(&d, SIGTERM, 10000);
    }
    serve_notify_stop(nt); /* the daemon is gone: read what it sent last */
    int ready = serve_notify_count(nt, "READY=1", 0), watchdog = serve_notify_count(nt, "WATCHDOG=1", 0);
    int stopping = serve_notify_count(nt, "STOPPING=1", 0), status = serve_notify_count(nt, "STATUS=", 0);
    serve_notify_free(nt);
    REQUIRE(started == 0);
    CHECK_EQ_INT(ready, 1);
    CHECK(watchdog >= 2);
    CHECK_EQ_INT(stopping, 1);
    CHECK(status >= 1);
}

TEST(serve_thinking_answers_split_reasoning_from_content)
{
    struct served d;
    REQUIRE(serve_start(&d, small_sets) == 0);
    /* flashbox run shows the whole answer, </think> included; the daemon must return the
     * part before it as reasoning_content and the part after it as content. The tiny
     * model's greedy answer to "Think" closes its reasoning within 40 tokens. */
    char *want = run_answer(d.model, "Think", 40, 2);
    REQUIRE(want != NULL);
    char *mark = strstr(want, "</think>");
    if (!mark) test_skip("this model's greedy answer never closes its reasoning");
    *mark = 0;
    const char *want_reasoning = want, *want_content = mark + strlen("</think>");
    const char *body = "{\"messages\":[{\"role\":\"user\",\"content\":\"Think\"}],\"max_tokens\":40,\"temperature\":0,"
                       "\"thinking\":true%s}";
    char req[256];
    snprintf(req, sizeof req, body, "");
    char *out;
    CHECK_EQ_INT(serve_curl(&d, "POST", "/v1/chat/completions", req, &out, NULL), 200);
    json_t *o = parse(out);
    json_t *msg = json_object_get(json_array_get(json_object_get(o, "choices"), 0), "message");
    CHECK_STR(json_string_value(json_object_get(msg, "reasoning_content")), want_reasoning);
    CHECK_STR(json_string_value(json_object_get(msg, "content")), want_content);
    json_decref(o);
    free(out);

    /* Streamed: reasoning deltas first, then content deltas, never both in one event. */
    snprintf(req, sizeof req, body, ",\"stream\":true");
    const char *extra[] = { "-N", "-H", "Content-Type: application/json", NULL };
    REQUIRE(serve_curl(&d, "POST", "/v1/chat/completions", req, &out, extra) == 200);
    static char reasoning[8192], content[8192];
    reasoning[0] = content[0] = 0;
    int content_started = 0;
    for (char *ev = strstr(out, "data: "); ev; ev = strstr(ev + 6, "data: ")) {
        char *end = strstr(ev, "\n\n");
        if (!end) break;
        *end = 0;
        if (strcmp(ev + 6, "[DONE]")) {
            json_t *c = parse(ev + 6);
            json_t *delta = json_object_get(json_array_get(json_object_get(c, "choices"), 0), "delta");
            const char *rp = json_string_value(json_object_get(delta, "reasoning_content"));
            const char *cp = json_string_value(json_object_get(delta, "content"));
            CHECK(!(rp && cp));
            if (rp) {
                CHECK(!content_started);
                strncat(reasoning, rp, sizeof reasoning - strlen(reasoning) - 1);
            }
            if (cp) {
                content_started = 1;
                strncat(content, cp, sizeof content - strlen(content) - 1);
            }
            json_decref(c);
        }
        *end = '\n';
    }
    CHECK_STR(reasoning, want_reasoning);
    CHECK_STR(content, want_content);
    free(out);
    free(want);
    serve_stop(&d, SIGTERM, 10000);
}

TEST(serve_takes_a_socket_from_systemd_activation)
{
    /* What systemd does for flashbox.socket: bind and listen, pass it as fd 3 with
     * LISTEN_FDS=1 and LISTEN_PID of the service. */
    struct served d = { 0 };
    snprintf(d.sock, sizeof d.sock, "%s/activated.sock", test_tmpdir());
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    REQUIRE(strlen(d.sock) < sizeof sa.sun_path);
    memcpy(sa.sun_path, d.sock, strlen(d.sock) + 1);
    REQUIRE(fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 && listen(fd, 16) == 0);
    const char *model = serve_test_model();
    char audit[700];
    snprintf(audit, sizeof audit, "audit.log=%s/audit.jsonl", test_tmpdir());
    d.pid = fork();
    REQUIRE(d.pid >= 0);
    if (d.pid == 0) {
        if (fd != 3) {
            dup2(fd, 3);
            close(fd);
        }
        char pid[32], log[700];
        snprintf(log, sizeof log, "%s/serve.log", test_tmpdir());
        int lfd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (lfd >= 0) dup2(lfd, 2);
        snprintf(pid, sizeof pid, "%d", (int)getpid());
        setenv("LISTEN_FDS", "1", 1);
        setenv("LISTEN_PID", pid, 1);
        execl(test_flashbox_bin(), test_flashbox_bin(), "serve", "-m", model, "--set", audit, (char *)NULL);
        _exit(127);
    }
    close(fd);
    char *out = NULL;
    int st = -1;
    for (int i = 0; i < 500 && st != 200; i++) {
        free(out);
        out = NULL;
        usleep(10000);
        st = serve_curl(&d, "GET", "/health", NULL, &out, NULL);
    }
    CHECK_EQ_INT(st, 200);
    free(out);
    CHECK_EQ_INT(serve_curl(&d, "POST", "/v1/completions", "{\"prompt\":\"hi\",\"max_tokens\":2}", &out, NULL), 200);
    free(out);
    CHECK_EQ_INT(WEXITSTATUS(serve_stop(&d, SIGTERM, 10000)), 0);
    CHECK(access(d.sock, F_OK) == 0); /* the socket stays: it belongs to systemd */
}

/* One case of tests/data/chat-golden-dsv4.jsonl: its request body (malloc'd JSON object)
 * and the prompt the official encoder renders for it. */
static json_t *golden_case(const char *name, char **want)
{
    FILE *f = fopen("tests/data/chat-golden-dsv4.jsonl", "r");
    char *line = NULL;
    size_t cap = 0;
    json_t *found = NULL;
    while (f && !found && getline(&line, &cap, f) > 0) {
        json_t *c = json_loads(line, 0, NULL);
        if (c && !strcmp(json_string_value(json_object_get(c, "name")), name)) {
            found = json_incref(json_object_get(c, "body"));
            *want = strdup(json_string_value(json_object_get(c, "want")));
        }
        json_decref(c);
    }
    free(line);
    if (f) fclose(f);
    return found;
}

/* A tools conversation as clients send it: the prompt has the official encoder's tokens
 * (its text split at the control tokens, as the official tokenizer does), and the answer is
 * greedy decoding of exactly that prompt, blocking and streamed alike. The tiny random model
 * writes no DSML block, so the answer comes back as content. */
TEST(serve_tools_prompt_is_official_answer_greedy)
{
    struct served d;
    REQUIRE(serve_start(&d, small_sets) == 0);
    char *want_text = NULL, err[256];
    json_t *body = golden_case("tools_without_system_message", &want_text); /* the shortest tools case */
    REQUIRE(body && want_text);
    struct tokenizer *t;
    REQUIRE(tok_create_from_file(&t, d.model, err, sizeof err) == 0);
    struct tok_vec v = { 0 };
    REQUIRE(tok_encode(t, want_text, strlen(want_text), TOK_ENCODE_PARSE_SPECIAL, &v, err, sizeof err) == 0);
    uint32_t n_out;
    char *want = engine_greedy(d.model, v.ids, (uint32_t)v.n, 8, &n_out);
    REQUIRE(want);
    json_object_set_new(body, "max_tokens", json_integer(8));
    json_object_set_new(body, "temperature", json_integer(0));
    json_object_set_new(body, "parallel_tool_calls", json_true());
    json_object_set_new(body, "tool_choice", json_string("auto"));
    char *req = json_dumps(body, 0), *out;
    CHECK_EQ_INT(serve_curl(&d, "POST", "/v1/chat/completions", req, &out, NULL), 200);
    json_t *o = parse(out);
    json_t *choice = json_array_get(json_object_get(o, "choices"), 0);
    CHECK_EQ_INT(json_integer_value(json_object_get(json_object_get(o, "usage"), "prompt_tokens")), v.n);
    CHECK_STR(json_string_value(json_object_get(json_object_get(choice, "message"), "content")), want);
    CHECK(json_object_get(json_object_get(choice, "message"), "tool_calls") == NULL);
    CHECK_STR(json_string_value(json_object_get(choice, "finish_reason")), n_out == 8 ? "length" : "stop");
    json_decref(o);
    free(out);
    free(req);
    /* streamed: the content deltas reassemble to the same answer */
    json_object_set_new(body, "stream", json_true());
    req = json_dumps(body, 0);
    CHECK_EQ_INT(serve_curl(&d, "POST", "/v1/chat/completions", req, &out, NULL), 200);
    char joined[4096] = "";
    const char *p = out, *finish = NULL;
    json_t *last = NULL;
    while (out && (p = strstr(p, "data: {"))) {
        const char *e = strstr(p, "\n\n");
        char *ev = strndup(p + 6, e ? (size_t)(e - p - 6) : strlen(p + 6));
        json_t *c = json_loads(ev, JSON_ALLOW_NUL, NULL);
        json_t *ch = json_array_get(json_object_get(c, "choices"), 0);
        const char *piece = json_string_value(json_object_get(json_object_get(ch, "delta"), "content"));
        if (piece) strncat(joined, piece, sizeof joined - strlen(joined) - 1);
        if (json_is_string(json_object_get(ch, "finish_reason"))) {
            json_decref(last);
            last = json_incref(c);
            finish = json_string_value(json_object_get(ch, "finish_reason"));
        }
        json_decref(c);
        free(ev);
        p += 6;
    }
    CHECK_STR(joined, want);
    CHECK(finish && !strcmp(finish, n_out == 8 ? "length" : "stop"));
    json_decref(last);
    free(out);
    free(req);
    free(want);
    json_decref(body);
    free(want_text);
    tok_vec_free(&v);
    tok_destroy(t);
    serve_stop(&d, SIGTERM, 10000);
}

/* Fields clients send by default are honoured: the daemon takes its own output back with
 * U+0000 in it; logit_bias +100 makes greedy decoding pick that token; penalties and many
 * stop strings are accepted; a suffix on a model without fill-in-the-middle tokens and an
 * image part get 400s that say why. */
TEST(serve_client_defaults_and_logit_bias)
{
    struct served d;
    REQUIRE(serve_start(&d, small_sets) == 0);
    char *out, err[256];
    CHECK_EQ_INT(serve_curl(&d, "POST", "/v1/chat/completions",
                            "{\"messages\":[{\"role\":\"user\",\"content\":\"a\\u0000b\",\"name\":null},"
                            "{\"role\":\"assistant\",\"content\":\"x\\u0000y\",\"reasoning_content\":null}"
                            ",{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"go\",\"cache_control\":{\"type\":\"ephemeral\"}}]}],"
                            "\"tools\":[],\"tool_choice\":\"none\",\"user\":null,\"logit_bias\":{},\"store\":false,"
                            "\"parallel_tool_calls\":true,\"reasoning_effort\":\"high\",\"presence_penalty\":1.5,"
                            "\"frequency_penalty\":0.5,\"stop\":[\"q1\",\"q2\",\"q3\",\"q4\",\"q5\",\"q6\",\"q7\"],"
                            "\"max_tokens\":4}", &out, NULL), 200);
    free(out);
    struct tokenizer *t;
    REQUIRE(tok_create_from_file(&t, d.model, err, sizeof err) == 0);
    struct tok_vec v = { 0 };
    REQUIRE(tok_encode(t, "Hello", 5, 0, &v, err, sizeof err) == 0);
    REQUIRE(v.n == 1);
    char req[256];
    snprintf(req, sizeof req, "{\"prompt\":\"x\",\"max_tokens\":1,\"temperature\":0,\"logit_bias\":{\"%d\":100}}", v.ids[0]);
    CHECK_EQ_INT(serve_curl(&d, "POST", "/v1/completions", req, &out, NULL), 200);
    json_t *o = parse(out);
    CHECK_STR(json_string_value(json_object_get(json_array_get(json_object_get(o, "choices"), 0), "text")), "Hello");
    json_decref(o);
    free(out);
    snprintf(req, sizeof req, "{\"prompt\":\"x\",\"max_tokens\":1,\"logit_bias\":{\"%u\":1}}", 1u << 30);
    CHECK_EQ_INT(serve_curl(&d, "POST", "/v1/completions", req, &out, NULL), 400);
    CHECK(out && strstr(out, "not in the vocabulary"));
    free(out);
    CHECK_EQ_INT(serve_curl(&d, "POST", "/v1/completions", "{\"prompt\":\"def f(\",\"suffix\":\"pass\"}", &out, NULL), 400);
    CHECK(out && strstr(out, "fill-in-the-middle"));
    free(out);
    CHECK_EQ_INT(serve_curl(&d, "POST", "/v1/chat/completions",
                            "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:,\"}}]}]}",
                            &out, NULL), 400);
    CHECK(out && strstr(out, "no vision"));
    free(out);
    /* n choices: seeded, choice i is what seed + i answers alone; the same seed, the same text */
    CHECK_EQ_INT(serve_curl(&d, "POST", "/v1/completions", "{\"prompt\":\"Hi\",\"max_tokens\":6,\"seed\":41,\"n\":2}",
                            &out, NULL), 200);
    o = parse(out);
    json_t *choices = json_object_get(o, "choices");
    REQUIRE(json_array_size(choices) == 2);
    CHECK_EQ_INT(json_integer_value(json_object_get(json_array_get(choices, 1), "index")), 1);
    char *second = strdup(json_string_value(json_object_get(json_array_get(choices, 1), "text")));
    json_decref(o);
    free(out);
    for (int k = 0; k < 2; k++) {
        CHECK_EQ_INT(serve_curl(&d, "POST", "/v1/completions", "{\"prompt\":\"Hi\",\"max_tokens\":6,\"seed\":42}", &out,
                                NULL), 200);
        o = parse(out);
        CHECK_STR(json_string_value(json_object_get(json_array_get(json_object_get(o, "choices"), 0), "text")), second);
        json_decref(o);
        free(out);
    }
    free(second);
    /* n choices streamed: the chunks carry each choice's index, each index reassembles to the
     * blocking answer's choice, each ends with its own finish_reason, and usage sums them */
    for (int chat = 0; chat < 2; chat++) {
        const char *path = chat ? "/v1/chat/completions" : "/v1/completions";
        const char *body = chat ? "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"max_tokens\":6,\"seed\":41,\"n\":2"
                                : "{\"prompt\":\"Hi\",\"max_tokens\":6,\"seed\":41,\"n\":2";
        char breq[256], sreq[320];
        snprintf(breq, sizeof breq, "%s}", body);
        snprintf(sreq, sizeof sreq, "%s,\"stream\":true,\"stream_options\":{\"include_usage\":true}}", body);
        CHECK_EQ_INT(serve_curl(&d, "POST", path, breq, &out, NULL), 200);
        o = parse(out);
        free(out);
        long long usage_want = json_integer_value(json_object_get(json_object_get(o, "usage"), "completion_tokens"));
        static const char *const sargs[] = { "-N", NULL };
        CHECK_EQ_INT(serve_curl(&d, "POST", path, sreq, &out, sargs), 200);
        char got[2][512] = { "", "" };
        int finishes[2] = { 0, 0 }, bad_index = 0;
        long long usage = -1;
        for (const char *p = out; p && (p = strstr(p, "data: {"));) {
            const char *e = strstr(p, "\n\n");
            char *ev = strndup(p + 6, e ? (size_t)(e - p - 6) : strlen(p + 6));
            json_t *c = json_loads(ev, JSON_ALLOW_NUL, NULL);
            json_t *ch = json_array_get(json_object_get(c, "choices"), 0);
            if (json_object_get(c, "usage")) usage = json_integer_value(json_object_get(json_object_get(c, "usage"), "completion_tokens"));
            if (ch) {
                long long i = json_integer_value(json_object_get(ch, "index"));
                if (i < 0 || i > 1) {
                    bad_index = 1;
                } else {
                    const char *piece = chat ? json_string_value(json_object_get(json_object_get(ch, "delta"), "content"))
                                             : json_string_value(json_object_get(ch, "text"));
                    if (piece) strncat(got[i], piece, sizeof got[i] - strlen(got[i]) - 1);
                    finishes[i] += json_is_string(json_object_get(ch, "finish_reason"));
                }
            }
            json_decref(c);
            free(ev);
            p += 6;
        }
        CHECK(!bad_index);
        CHECK(out && strstr(out, "data: [DONE]"));
        for (int i = 0; i < 2; i++) {
            json_t *want = json_array_get(json_object_get(o, "choices"), (size_t)i);
            CHECK_STR(got[i], chat ? json_string_value(json_object_get(json_object_get(want, "message"), "content"))
                                   : json_string_value(json_object_get(want, "text")));
            CHECK_EQ_INT(finishes[i], 1);
        }
        CHECK_EQ_INT(usage, usage_want);
        json_decref(o);
        free(out);
    }
    CHECK_EQ_INT(serve_curl(&d, "POST", "/v1/completions", "{\"prompt\":\"Hi\",\"n\":3}", &out, NULL), 400);
    CHECK(out && strstr(out, "server.slots"));
    free(out);
    tok_vec_free(&v);
    tok_destroy(t);
    serve_stop(&d, SIGTERM, 10000);
}

/* logprobs: one entry per generated token, the greedy token first among the alternatives,
 * and the first token's log probability equal to a log-softmax of the engine's own logits
 * for the same prompt. */
TEST(serve_logprobs_match_the_engines_logits)
{
    struct served d;
    REQUIRE(serve_start(&d, small_sets) == 0);
    const char *parts[] = { USER_MARK, "Hi", ASSISTANT_MARK, "</think>", NULL };
    uint32_t n_prompt;
    int32_t *prompt = encode_parts(d.model, parts, &n_prompt);
    REQUIRE(prompt);
    char err[256];
    struct engine_options eo;
    engine_options_default(&eo);
    eo.model_path = d.model;
    struct engine *e;
    struct session *s;
    REQUIRE(engine_open(&e, &eo, err, sizeof err) == 0);
    REQUIRE(session_create(e, 0, &s, err, sizeof err) == 0);
    struct engine_info info;
    engine_get_info(e, &info);
    float *logits = malloc(info.n_vocab * sizeof *logits);
    REQUIRE(session_eval(s, prompt, n_prompt, logits, false, err, sizeof err) == 0);
    double max = -1e30, sum = 0;
    uint32_t best = 0;
    for (uint32_t i = 0; i < info.n_vocab; i++) {
        if (logits[i] > max) max = logits[i];
        if (logits[i] > logits[best]) best = i;
    }
    for (uint32_t i = 0; i < info.n_vocab; i++) sum += exp((double)logits[i] - max);
    double want = logits[best] - max - log(sum);
    char *out;
    CHECK_EQ_INT(serve_curl(&d, "POST", "/v1/chat/completions",
                            "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"max_tokens\":4,\"temperature\":0,"
                            "\"logprobs\":true,\"top_logprobs\":3}", &out, NULL), 200);
    json_t *o = parse(out);
    json_t *choice = json_array_get(json_object_get(o, "choices"), 0);
    json_t *content = json_object_get(json_object_get(choice, "logprobs"), "content");
    CHECK_EQ_INT(json_array_size(content), json_integer_value(json_object_get(json_object_get(o, "usage"), "completion_tokens")));
    for (size_t i = 0; i < json_array_size(content); i++) {
        json_t *c = json_array_get(content, i), *top = json_object_get(c, "top_logprobs");
        REQUIRE(json_array_size(top) == 3);
        CHECK_STR(json_string_value(json_object_get(json_array_get(top, 0), "token")), json_string_value(json_object_get(c, "token")));
        double l0 = json_number_value(json_object_get(json_array_get(top, 0), "logprob"));
        double l1 = json_number_value(json_object_get(json_array_get(top, 1), "logprob"));
        CHECK(l0 <= 0 && l1 <= l0);
    }
    double got = json_number_value(json_object_get(json_array_get(content, 0), "logprob"));
    if (fabs(got - want) > 1e-4) test_fail_at(__FILE__, __LINE__, "logprob %g, engine %g", got, want);
    json_decref(o);
    free(out);
    /* completions: the legacy shape, one offset per token */
    CHECK_EQ_INT(serve_curl(&d, "POST", "/v1/completions", "{\"prompt\":\"Hi\",\"max_tokens\":3,\"temperature\":0,\"logprobs\":2}",
                            &out, NULL), 200);
    o = parse(out);
    json_t *lp = json_object_get(json_array_get(json_object_get(o, "choices"), 0), "logprobs");
    CHECK_EQ_INT(json_array_size(json_object_get(lp, "tokens")), json_array_size(json_object_get(lp, "text_offset")));
    CHECK_EQ_INT(json_object_size(json_array_get(json_object_get(lp, "top_logprobs"), 0)), 2);
    json_decref(o);
    free(out);
    free(logits);
    free(prompt);
    session_destroy(s);
    engine_close(e);
    serve_stop(&d, SIGTERM, 10000);
}

/* Prefix reuse: the second request with the same long prompt resumes from the state saved
 * where the first one's last whole prefill chunk ended, and answers exactly what the engine
 * answers from scratch; /metrics counts the hit and the tokens reused, the audit line says
 * how many. */
TEST(serve_prefix_reuse_answers_exactly_and_is_counted)
{
    struct served d;
    REQUIRE(serve_start(&d, small_sets) == 0);
    char text[1024] = "";
    for (int i = 0; i < 12; i++) strcat(text, "The quick brown fox jumps over the lazy dog. ");
    const char *parts[] = { text, NULL };
    uint32_t n_prompt, n_out;
    int32_t *prompt = encode_parts(d.model, parts, &n_prompt);
    REQUIRE(prompt != NULL && n_prompt > 129);
    char *want = engine_greedy(d.model, prompt, n_prompt, 8, &n_out);
    free(prompt);
    REQUIRE(want != NULL);
    char body[2048], *out;
    snprintf(body, sizeof body, "{\"prompt\":\"%s\",\"max_tokens\":8,\"temperature\":0}", text);
    for (int round = 0; round < 2; round++) {
        CHECK_EQ_INT(serve_curl(&d, "POST", "/v1/completions", body, &out, NULL), 200);
        json_t *o = parse(out);
        CHECK_STR(json_string_value(json_object_get(json_array_get(json_object_get(o, "choices"), 0), "text")), want);
        json_decref(o);
        free(out);
    }
    const uint32_t reused = (n_prompt - 1) / 128 * 128;
    CHECK_EQ_INT(serve_curl(&d, "GET", "/metrics", NULL, &out, NULL), 200);
    char line[128];
    CHECK(strstr(out, "flashbox_prefix_hits_total 1\n") != NULL);
    CHECK(strstr(out, "flashbox_prefix_misses_total 1\n") != NULL);
    snprintf(line, sizeof line, "flashbox_prefix_tokens_reused_total %u\n", reused);
    CHECK(strstr(out, line) != NULL);
    CHECK(strstr(out, "flashbox_prefix_cache_entries 1\n") != NULL);
    free(out);
    serve_stop(&d, SIGTERM, 10000);
    FILE *f = fopen(d.audit, "r");
    REQUIRE(f != NULL);
    char buf[65536];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    snprintf(line, sizeof line, "\"tokens_reused\":%u", reused);
    CHECK(strstr(buf, "\"tokens_reused\":0") != NULL); /* the first request */
    CHECK(strstr(buf, line) != NULL);
    free(want);
}
