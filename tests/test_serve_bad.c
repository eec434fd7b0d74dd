/* The daemon against bad input: every case gets a 4xx JSON error (or, for a request that
 * never completes, a closed connection) and the daemon answers the next request. */
#include "tests/harness.h"
#include "tests/serve_client.h"

#include <jansson.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define CHAT "/v1/chat/completions"
#define MSGS "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]"

struct bad_case {
    const char *method, *path, *body;
    int status;
    const char *code; /* expected error.code, NULL = any */
};

static const struct bad_case cases[] = {
    { "POST", CHAT, "{\"messages\": [", 400, "invalid_request" },                     /* malformed / truncated JSON */
    { "POST", CHAT, "", 400, "invalid_request" },                                     /* empty body */
    { "POST", CHAT, "[1,2]", 400, "invalid_request" },                                /* not an object */
    { "POST", CHAT, "{\"messages\":\"hi\"}", 400, "invalid_request" },               /* wrong types */
    { "POST", CHAT, "{" MSGS ",\"max_tokens\":\"5\"}", 400, NULL },
    { "POST", CHAT, "{" MSGS ",\"temperature\":\"hot\"}", 400, NULL },
    { "POST", CHAT, "{" MSGS ",\"stream\":1}", 400, NULL },
    { "POST", CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":7}]}", 400, NULL },
    { "POST", CHAT, "{\"messages\":[{\"role\":\"robot\",\"content\":\"x\"}]}", 400, NULL },
    { "POST", CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":\"x\"}}]}]}", 400, NULL },
    { "POST", CHAT, "{\"messages\":[]}", 400, NULL },
    { "POST", CHAT, "{" MSGS ",\"max_tokens\":99999999999999999999999}", 400, NULL }, /* huge numbers */
    { "POST", CHAT, "{" MSGS ",\"max_tokens\":1e300}", 400, NULL },
    { "POST", CHAT, "{" MSGS ",\"max_tokens\":4097}", 400, NULL },
    { "POST", CHAT, "{" MSGS ",\"temperature\":1e308}", 400, NULL },
    { "POST", CHAT, "{" MSGS ",\"top_k\":4294967296}", 400, NULL },
    { "POST", CHAT, "{" MSGS ",\"seed\":1.5}", 400, NULL },
    { "POST", CHAT, "{" MSGS ",\"top_p\":0}", 400, NULL },
    { "POST", CHAT, "{" MSGS ",\"max_tokens\":-1}", 400, NULL },                     /* negative / zero */
    { "POST", CHAT, "{" MSGS ",\"max_tokens\":0}", 400, NULL },
    { "POST", CHAT, "{" MSGS ",\"max_completion_tokens\":-5}", 400, NULL },
    { "POST", CHAT, "{" MSGS ",\"frobnicate\":true}", 400, NULL },                   /* unknown fields */
    { "POST", CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\",\"extra\":1}]}", 400, NULL },
    { "POST", CHAT, "{" MSGS ",\"stream_options\":{\"x\":1}}", 400, NULL },
    { "POST", CHAT, "{" MSGS ",\"n\":2}", 400, NULL },
    { "POST", CHAT, "{" MSGS ",\"logprobs\":\"yes\"}", 400, NULL },
    { "POST", CHAT, "{" MSGS ",\"logprobs\":true,\"top_logprobs\":21}", 400, NULL },
    { "POST", CHAT, "{" MSGS "," MSGS "}", 400, NULL },                               /* duplicate key */
    { "POST", CHAT, "{" MSGS ",\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\",\"f\",\"g\",\"h\",\"i\",\"j\",\"k\",\"l\",\"m\",\"n\",\"o\",\"p\",\"q\"]}", 400, NULL }, /* stop caps */
    { "POST", CHAT, "{" MSGS ",\"stop\":\"0123456789012345678901234567890123456789012345678901234567890123456789\"}", 400, NULL },
    { "POST", CHAT, "{" MSGS ",\"stop\":[\"\"]}", 400, NULL },
    { "POST", CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"\xff\xfe bad\"}]}", 400, NULL }, /* invalid UTF-8 */
    { "POST", CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"\\ud800\"}]}", 400, NULL },
    { "POST", "/v1/completions", "{\"prompt\":[1,2,3]}", 400, NULL },
    { "POST", "/v1/completions", "{\"max_tokens\":3}", 400, NULL },
    { "POST", "/tokenize", "{\"content\":5}", 400, NULL },
    { "POST", "/detokenize", "{\"tokens\":[1,-2]}", 400, NULL },
    { "POST", "/detokenize", "{\"tokens\":[100000000]}", 400, NULL },
    { "POST", "/detokenize", "{\"tokens\":\"1\"}", 400, NULL },
    { "GET", "/v1/nothing", NULL, 404, "not_found" },                                  /* unknown path / method */
    { "GET", "/../etc/passwd", NULL, 404, "not_found" },
    { "GET", CHAT, NULL, 405, "method_not_allowed" },
    { "DELETE", "/health", NULL, 405, "method_not_allowed" },
    { "POST", "/metrics", "{}", 405, "method_not_allowed" },
};

/* Each answer must be an OpenAI error object with a message. */
static void check_error_body(const char *body, const char *code, int idx)
{
    json_error_t je;
    json_t *o = json_loads(body ? body : "", 0, &je);
    json_t *e = json_object_get(o, "error");
    if (!json_is_string(json_object_get(e, "message")))
        test_fail_at(__FILE__, __LINE__, "case %d: not an error object: %.200s", idx, body ? body : "(null)");
    if (code && (!json_string_value(json_object_get(e, "code")) || strcmp(json_string_value(json_object_get(e, "code")), code)))
        test_fail_at(__FILE__, __LINE__, "case %d: code %s, expected %s", idx, json_string_value(json_object_get(e, "code")), code);
    json_decref(o);
}

static void check_still_serving(const struct served *d, int idx)
{
    char *out;
    int st = serve_curl(d, "GET", "/health", NULL, &out, NULL);
    if (st != 200) test_fail_at(__FILE__, __LINE__, "after case %d: /health answered %d", idx, st);
    free(out);
}

TEST(serve_bad_requests_get_4xx_json_and_the_daemon_keeps_serving)
{
    const char *sets[] = { "limits.max_body_bytes=4096", "model.n_ctx=64", "server.slots=1", NULL };
    struct served d;
    REQUIRE(serve_start(&d, sets) == 0);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *out = NULL;
        int st = serve_curl(&d, cases[i].method, cases[i].path, cases[i].body, &out, NULL);
        if (st != cases[i].status)
            test_fail_at(__FILE__, __LINE__, "case %zu (%s %s %.60s): status %d, expected %d; body %.200s", i,
                         cases[i].method, cases[i].path, cases[i].body ? cases[i].body : "", st, cases[i].status,
                         out ? out : "");
        check_error_body(out, cases[i].code, (int)i);
        free(out);
        check_still_serving(&d, (int)i);
    }

    /* Body over the cap: 413 before the body is read. */
    char *big = malloc(8192);
    memset(big, ' ', 8191);
    big[0] = '{';
    big[8190] = '}';
    big[8191] = 0;
    char *out;
    CHECK_EQ_INT(serve_curl(&d, "POST", CHAT, big, &out, NULL), 413);
    check_error_body(out, "body_too_large", 100);
    free(out);
    free(big);
    check_still_serving(&d, 100);

    /* The same body in chunked transfer encoding (no Content-Length to refuse up front):
     * counted while it arrives, 413 at the end. */
    big = malloc(8192);
    memset(big, ' ', 8191);
    big[0] = '{';
    big[8190] = '}';
    big[8191] = 0;
    const char *chunked[] = { "-H", "Transfer-Encoding: chunked", "-H", "Content-Type: application/json", NULL };
    CHECK_EQ_INT(serve_curl(&d, "POST", CHAT, big, &out, chunked), 413);
    check_error_body(out, "body_too_large", 104);
    free(out);
    free(big);
    check_still_serving(&d, 104);

    /* Prompt over the context (n_ctx 64): 400 with the OpenAI code. */
    char longp[2048];
    int off = snprintf(longp, sizeof longp, "{\"prompt\":\"");
    for (int i = 0; i < 120; i++) off += snprintf(longp + off, sizeof longp - off, "w%d ", i);
    snprintf(longp + off, sizeof longp - off, "\"}");
    CHECK_EQ_INT(serve_curl(&d, "POST", "/v1/completions", longp, &out, NULL), 400);
    check_error_body(out, "context_length_exceeded", 101);
    free(out);
    check_still_serving(&d, 101);

    /* Headers larger than the connection's memory: refused by libmicrohttpd with 431. */
    char *hdr = malloc(100 * 1024);
    memcpy(hdr, "X-Big: ", 7);
    memset(hdr + 7, 'a', 100 * 1024 - 8);
    hdr[100 * 1024 - 1] = 0;
    const char *extra[] = { "-H", hdr, NULL };
    int st = serve_curl(&d, "GET", "/health", NULL, &out, extra);
    CHECK(st >= 400 && st < 500);
    free(out);
    free(hdr);
    check_still_serving(&d, 102);

    /* A body cut short: Content-Length promises more than arrives, then the client closes
     * its sending side. The daemon gives up on that connection and serves the next. */
    int fd = serve_connect(d.sock);
    REQUIRE(fd >= 0);
    const char *partial = "POST " CHAT " HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n{\"messages\":";
    CHECK(write(fd, partial, strlen(partial)) == (ssize_t)strlen(partial));
    shutdown(fd, SHUT_WR);
    char *resp;
    serve_read_all(fd, 3000, &resp);
    CHECK(strstr(resp, " 200 ") == NULL);
    free(resp);
    close(fd);
    check_still_serving(&d, 103);

    /* The daemon still generates after all of it. */
    CHECK_EQ_INT(serve_curl(&d, "POST", CHAT, "{" MSGS ",\"max_tokens\":2}", &out, NULL), 200);
    free(out);
    CHECK_EQ_INT(WEXITSTATUS(serve_stop(&d, SIGTERM, 10000)), 0);
}

TEST(serve_slow_headers_are_cut_off_while_others_are_served)
{
    const char *sets[] = { "server.connection_timeout_s=1", NULL };
    struct served d;
    REQUIRE(serve_start(&d, sets) == 0);
    /* Slowloris: half a request line of headers, then silence. */
    int fds[4];
    for (int i = 0; i < 4; i++) {
        fds[i] = serve_connect(d.sock);
        REQUIRE(fds[i] >= 0);
        const char *slow = "POST " CHAT " HTTP/1.1\r\nHost: localhost\r\nContent-Ty";
        CHECK(write(fds[i], slow, strlen(slow)) == (ssize_t)strlen(slow));
    }
    char *out;
    CHECK_EQ_INT(serve_curl(&d, "POST", CHAT, "{" MSGS ",\"max_tokens\":2}", &out, NULL), 200);
    free(out);
    /* The silent connections are closed by the daemon (read sees end of stream well before
     * this test's own 8 s limit). */
    for (int i = 0; i < 4; i++) {
        char *resp;
        serve_read_all(fds[i], 8000, &resp);
        char b;
        CHECK(recv(fds[i], &b, 1, MSG_DONTWAIT) == 0);
        free(resp);
        close(fds[i]);
    }
    check_still_serving(&d, 0);
    serve_stop(&d, SIGTERM, 10000);
}
