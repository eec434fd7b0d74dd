/* libFuzzer target: the two parsers of the update admin socket. The first byte picks one:
 * the install request body ({"bundle": "/path"}) or the admin client's HTTP response
 * parser; the rest is the input. Accepted input must keep their promises: an absolute,
 * NUL-free path that fits; a status of three digits and a body inside the buffer. */
#include "firmware/admin.h"
#include "firmware/admin_client.h"

#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int ok)
{
    if (!ok) __builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    const char *in = (const char *)data + 1;
    size_t len = size - 1;
    char err[256];
    if (data[0] % 2 == 0) {
        char path[64];
        if (admin_parse_install(in, len, path, sizeof path, err, sizeof err) == 0) {
            size_t n = strnlen(path, sizeof path);
            check(n > 0 && n < sizeof path && path[0] == '/');
        } else {
            check(err[0] != 0);
        }
    } else {
        int status;
        size_t off, n;
        if (admin_client_parse(in, len, &status, &off, &n, err, sizeof err) == 0) {
            check(status >= 100 && status <= 999);
            check(off <= len && n <= len - off);
        } else {
            check(err[0] != 0);
        }
    }
    return 0;
}
