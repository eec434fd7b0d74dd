/* The admin socket's parsers on hand-written input: the install request body and the
 * `flashbox update --admin-socket` client's HTTP response parser, good and malformed. */
#include "firmware/admin.h"
#include "firmware/admin_client.h"
#include "tests/harness.h"

#include <string.h>

static int install(const char *body, char *path, size_t cap, char *err)
{
    return admin_parse_install(body, strlen(body), path, cap, err, 256);
}

TEST(admin_install_body_takes_one_absolute_bundle_path)
{
    char path[64], err[256];
    CHECK_EQ_INT(install("{\"bundle\":\"/var/tmp/u.fbx\"}", path, sizeof path, err), 0);
    CHECK_STR(path, "/var/tmp/u.fbx");
    CHECK_EQ_INT(install(" { \"bundle\" : \"/a\" } ", path, sizeof path, err), 0);
    CHECK_STR(path, "/a");
}

TEST(admin_install_body_refusals_name_the_problem)
{
    static const struct {
        const char *body, *says;
    } bad[] = {
        { "", "not JSON" },
        { "{\"bundle\":", "not JSON" },
        { "[\"/a\"]", "expected an object" },
        { "{}", "bundle: expected a string" },
        { "{\"bundle\":null}", "bundle: expected a string" },
        { "{\"bundle\":7}", "bundle: expected a string" },
        { "{\"bundle\":\"\"}", "not an absolute path" },
        { "{\"bundle\":\"rel/u.fbx\"}", "not an absolute path" },
        { "{\"bundle\":\"/a\\u0000b\"}", "NUL" },
        { "{\"bundle\":\"/a\",\"force\":true}", "unknown field \"force\"" },
        { "{\"bundle\":\"/a\",\"bundle\":\"/b\"}", "not JSON" }, /* duplicate key */
        { "{\"bundle\":\"/0123456789012345678901234567890123456789012345678901234567890123\"}", "at most 63" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char path[64] = "untouched", err[256] = "";
        CHECK_EQ_INT(install(bad[i].body, path, sizeof path, err), -1);
        if (!strstr(err, bad[i].says)) test_fail_at(__FILE__, __LINE__, "body %s: message '%s' lacks '%s'", bad[i].body, err, bad[i].says);
        CHECK_STR(path, "untouched");
    }
}

static int response(const char *r, int *status, size_t *off, size_t *n, char *err)
{
    return admin_client_parse(r, strlen(r), status, off, n, err, 256);
}

TEST(admin_client_reads_status_and_body_by_content_length_or_to_eof)
{
    int st;
    size_t off, n;
    char err[256];
    const char *r = "HTTP/1.1 409 Conflict\r\ncontent-length:  5 \r\nConnection: close\r\n\r\n{\"a\"}trailing";
    CHECK_EQ_INT(response(r, &st, &off, &n, err), 0);
    CHECK_EQ_INT(st, 409);
    CHECK_EQ_INT(n, 5);
    CHECK(!memcmp(r + off, "{\"a\"}", 5));
    r = "HTTP/1.0 200\r\n\r\nbody to the end";
    CHECK_EQ_INT(response(r, &st, &off, &n, err), 0);
    CHECK_EQ_INT(st, 200);
    CHECK_EQ_INT(n, strlen("body to the end"));
    r = "HTTP/1.1 204 No Content\r\nTransfer-Encoding: identity\r\n\r\n";
    CHECK_EQ_INT(response(r, &st, &off, &n, err), 0);
    CHECK_EQ_INT(n, 0);
}

TEST(admin_client_refuses_malformed_responses)
{
    static const struct {
        const char *r, *says;
    } bad[] = {
        { "", "status line" },
        { "HTTP/2 200 OK\r\n\r\n", "status line" },
        { "HTTP/1.1 2x0 OK\r\n\r\n", "three digits" },
        { "HTTP/1.1 099 Odd\r\n\r\n", "malformed status" },
        { "HTTP/1.1 2000 OK\r\n\r\n", "malformed status" },
        { "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n", "no end of headers" },
        { "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "Content-Length says 10" },
        { "HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\nab", "not a number" },
        { "HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\nab", "not a number" },
        { "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999\r\n\r\nab", "not a number" },
        { "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n", "chunked is not supported" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int st = -7;
        size_t off, n;
        char err[256] = "";
        CHECK_EQ_INT(response(bad[i].r, &st, &off, &n, err), -1);
        if (!strstr(err, bad[i].says)) test_fail_at(__FILE__, __LINE__, "response %zu: message '%s' lacks '%s'", i, err, bad[i].says);
        CHECK_EQ_INT(st, -7);
    }
}
