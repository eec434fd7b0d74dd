/* Error message formatting shared by every module. */
#include "common/errmsg.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int errf(char *err, size_t err_len, const char *fmt, ...)
{
    if (err && err_len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, err_len, fmt, ap);
        va_end(ap);
    }
    return -1;
}

int errf_prefix(char *err, size_t err_len, const char *fmt, ...)
{
    if (!err || !err_len) return -1;
    char old[1024];
    snprintf(old, sizeof old, "%s", err);
    char pre[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pre, sizeof pre, fmt, ap);
    va_end(ap);
    snprintf(err, err_len, "%s: %s", pre, old);
    return -1;
}
