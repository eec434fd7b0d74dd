/* Test-side UTF-8 structure check, written independently of the engine's own decoder so
 * tests and fuzz targets can judge its output. */
#ifndef FLASHBOX_TESTS_UTF8_CHECK_H
#define FLASHBOX_TESTS_UTF8_CHECK_H

#include <stddef.h>
#include <stdint.h>

/* 1 when s[n] is a sequence of complete UTF-8 characters (lead byte + continuations). */
static inline int valid_utf8(const char *s, size_t n)
{
    const uint8_t *p = (const uint8_t *)s;
    for (size_t i = 0; i < n;) {
        size_t len = p[i] < 0x80 ? 1 : (p[i] & 0xE0) == 0xC0 ? 2 : (p[i] & 0xF0) == 0xE0 ? 3 : (p[i] & 0xF8) == 0xF0 ? 4 : 0;
        if (!len || i + len > n) return 0;
        for (size_t k = 1; k < len; k++)
            if ((p[i + k] & 0xC0) != 0x80) return 0;
        i += len;
    }
    return 1;
}

#endif
