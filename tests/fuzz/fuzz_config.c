/* libFuzzer target for the daemon's config file parser (firmware/config.c). Any bytes must
 * either parse or be refused with a message; a file that parses must print (`serve
 * --print-config`) as a file that parses back to the same settings: the printed file is
 * what operators copy, so the printer and the parser may not drift apart. */
#include "firmware/config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int ok)
{
    if (!ok) __builtin_trap();
}

/* The printed file as a malloc'd string (caller frees), or NULL. */
static char *printed(const struct serve_config *c, size_t *len)
{
    char *buf = NULL;
    FILE *f = open_memstream(&buf, len);
    if (!f) return NULL;
    config_print(c, f);
    fclose(f);
    return buf;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct serve_config c;
    char err[512];
    config_default(&c);
    err[0] = 0;
    if (config_parse(&c, (const char *)data, size, "fuzz", err, sizeof err)) {
        check(err[0] != 0);
        return 0;
    }
    (void)config_validate(&c, err, sizeof err);
    size_t len1 = 0, len2 = 0;
    char *p1 = printed(&c, &len1);
    if (!p1) return 0;
    struct serve_config again;
    config_default(&again);
    int rc = config_parse(&again, p1, len1, "printed", err, sizeof err);
    check(rc == 0);
    char *p2 = printed(&again, &len2);
    if (p2) check(len1 == len2 && memcmp(p1, p2, len1) == 0);
    free(p1);
    free(p2);
    return 0;
}
