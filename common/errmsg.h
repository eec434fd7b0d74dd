/* Error messages: library functions return 0 or a negative value and describe the failure
 * in a caller-provided buffer (conventions.md, Errors). One helper for every folder
 * (board/, engine/, update/, tools/, firmware/); libc only. */
#ifndef FLASHBOX_COMMON_ERRMSG_H
#define FLASHBOX_COMMON_ERRMSG_H
#include <stddef.h>

/* Formats into err (if non-NULL) and returns -1, so callers can `return errf(...)`. */
int errf(char *err, size_t err_len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Prefixes an existing message in place: "prefix: old message". Returns -1. */
int errf_prefix(char *err, size_t err_len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
