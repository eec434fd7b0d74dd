/* The audit log: one JSON object per line (a file, or stderr for journald) for every API
 * request and for service events (start, stop, reload, refusals). Records who (peer
 * uid/gid/pid), what (endpoint, model id, update slot), how much (tokens in/out), the
 * outcome (HTTP status) and how long; never prompt text unless the config enables it. */
#ifndef FLASHBOX_FIRMWARE_AUDIT_H
#define FLASHBOX_FIRMWARE_AUDIT_H

#include <stddef.h>
#include <stdint.h>

struct peer;

struct audit_record {
    const char *event;        /* "request", "start", "stop", "reload", "denied", ... */
    const struct peer *peer;  /* NULL for service events */
    const char *request_id;
    const char *method, *endpoint;
    const char *model, *slot;
    uint64_t tokens_in, tokens_out;
    uint64_t tokens_reused;   /* prompt tokens resumed from the prefix cache, not prefilled */
    int status;               /* HTTP status; 0 for service events */
    double duration_ms;
    const char *finish;       /* finish reason or error code; NULL if none */
    const char *detail;       /* free text for service events; NULL if none */
    const char *prompt;       /* only set by callers when audit.log_prompts is on */
};

/* dest: "stderr" or a file path opened for append (O_APPEND, 0640). Reopening (SIGHUP,
 * log rotation) swaps the destination atomically for concurrent writers. */
int audit_open(const char *dest, char *err, size_t err_len);
void audit_close(void);
/* Writes one line and flushes it; errors are counted, not fatal. */
void audit_write(const struct audit_record *r);
uint64_t audit_write_errors(void);

#endif
