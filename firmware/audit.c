/* JSON-lines audit log (see audit.h). Lines are built with jansson (so every string is
 * escaped correctly) and written with one write(2) each on an O_APPEND descriptor, so
 * concurrent lines never interleave and a crash loses at most the line being written. */
#include "firmware/audit.h"

#include "common/errmsg.h"
#include "firmware/peer.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int log_fd = 2;
static uint64_t write_errors;

int audit_open(const char *dest, char *err, size_t err_len)
{
    int fd = 2;
    if (strcmp(dest, "stderr")) {
        fd = open(dest, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0640);
        if (fd < 0) return errf(err, err_len, "audit log %s: %s", dest, strerror(errno));
    }
    pthread_mutex_lock(&lock);
    int old = log_fd;
    log_fd = fd;
    pthread_mutex_unlock(&lock);
    if (old != 2) close(old);
    return 0;
}

void audit_close(void)
{
    pthread_mutex_lock(&lock);
    if (log_fd != 2) {
        fsync(log_fd);
        close(log_fd);
    }
    log_fd = 2;
    pthread_mutex_unlock(&lock);
}

uint64_t audit_write_errors(void)
{
    pthread_mutex_lock(&lock);
    uint64_t n = write_errors;
    pthread_mutex_unlock(&lock);
    return n;
}

static void set_str(json_t *o, const char *k, const char *v)
{
    /* json_string refuses invalid UTF-8; fall back to a marker rather than dropping the key. */
    if (!v) return;
    json_t *s = json_string(v);
    json_object_set_new(o, k, s ? s : json_string("(invalid utf-8)"));
}

void audit_write(const struct audit_record *r)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char when[96];
    snprintf(when, sizeof when, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
             tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000);
    json_t *o = json_object();
    if (!o) return;
    set_str(o, "time", when);
    set_str(o, "event", r->event);
    set_str(o, "request_id", r->request_id);
    if (r->peer) {
        json_object_set_new(o, "transport", json_string(r->peer->is_unix ? "unix" : "tcp"));
        if (r->peer->is_unix) {
            json_object_set_new(o, "peer_uid", json_integer((json_int_t)r->peer->uid));
            json_object_set_new(o, "peer_gid", json_integer((json_int_t)r->peer->gid));
            json_object_set_new(o, "peer_pid", json_integer((json_int_t)r->peer->pid));
        }
    }
    set_str(o, "method", r->method);
    set_str(o, "endpoint", r->endpoint);
    set_str(o, "model", r->model);
    set_str(o, "slot", r->slot);
    if (r->status) {
        json_object_set_new(o, "tokens_in", json_integer((json_int_t)r->tokens_in));
        json_object_set_new(o, "tokens_out", json_integer((json_int_t)r->tokens_out));
        json_object_set_new(o, "tokens_reused", json_integer((json_int_t)r->tokens_reused));
        json_object_set_new(o, "status", json_integer(r->status));
        json_object_set_new(o, "duration_ms", json_real(r->duration_ms));
    }
    set_str(o, "finish", r->finish);
    set_str(o, "detail", r->detail);
    set_str(o, "prompt", r->prompt);
    char *line = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    if (!line) return;
    size_t n = strlen(line);
    line[n] = '\n'; /* json_dumps leaves the NUL; overwrite it and write n + 1 bytes */
    pthread_mutex_lock(&lock);
    ssize_t w = write(log_fd, line, n + 1);
    if (w != (ssize_t)(n + 1)) write_errors++;
    pthread_mutex_unlock(&lock);
    free(line);
}
