/* Test-side tools for the daemon end-to-end tests: make the tiny model, start
 * `flashbox serve` on a socket in the test's scratch directory, drive it with curl
 * (fork/exec, real Unix socket) or a raw socket, and stop it with a signal. */
#ifndef FLASHBOX_TESTS_SERVE_CLIENT_H
#define FLASHBOX_TESTS_SERVE_CLIENT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct served {
    pid_t pid;
    char dir[512];
    char sock[600];
    char model[600];
    char audit[600];
    char log[600];
};

/* Writes the default tiny model to <tmpdir>/tiny.gguf (once per test) and returns its path. */
const char *serve_test_model(void);
/* Starts the daemon with --set arguments (NULL-terminated list of "section.key=value"),
 * then waits until /health says ready. Returns 0 or -1 (with the log printed). */
int serve_start(struct served *s, const char *const *sets);
/* Sends sig and waits up to timeout_ms for the exit; returns the wait status or -1. */
int serve_stop(struct served *s, int sig, int timeout_ms);

/* Runs curl on the daemon's socket: method, path, and a body (NULL for none). The output
 * is the response body (malloc'd); returns the HTTP status, or -1 if curl failed. Extra
 * curl arguments may follow in extra (NULL-terminated, may be NULL). */
int serve_curl(const struct served *s, const char *method, const char *path, const char *body, char **out,
               const char *const *extra);
/* Same on any socket path, run as a given uid/gid through setpriv when uid >= 0. */
int serve_curl_as(const char *sock, int uid, const char *method, const char *path, const char *body, char **out);

/* Load beside a request under test: a long unconstrained seeded chat request in a child
 * process (serve_load_start), and its end (serve_load_wait: 0 when it was answered 200). */
int serve_load_start(const struct served *s);
int serve_load_wait(int pid);

/* Raw client: connects to the socket; -1 on failure. */
int serve_connect(const char *sock);
/* Reads until the peer closes or timeout_ms passes; returns bytes read (malloc'd in *out). */
size_t serve_read_all(int fd, int timeout_ms, char **out);
/* Waits until /health reports slots_busy == 0 (up to timeout_ms); returns 0 when it did. */
int serve_wait_idle(const struct served *s, int timeout_ms);
/* The value of a metric line "name value" (exact name incl. labels) in /metrics, or -1. */
double serve_metric(const struct served *s, const char *name);

/* A fake systemd notify socket at <tmpdir>/notify.sock, named by NOTIFY_SOCKET from
 * serve_notify_open until serve_notify_stop (or until the caller unsets it, once its
 * daemon started). A thread reads each message as it comes, with its arrival time
 * (serve_now_ms): sd_notify blocks once a few unread datagrams wait (net.unix.max_dgram_qlen,
 * 10 by default), so a socket read only at the end would stall the daemon's pings. */
struct serve_notify;
struct serve_notify *serve_notify_open(void);
/* Reads what is left, stops the thread, closes the socket; the messages stay for the
 * queries below until serve_notify_free (which stops first if need be). */
void serve_notify_stop(struct serve_notify *n);
void serve_notify_free(struct serve_notify *n);
/* Messages containing needle that arrived at or after since_ms (0: all). */
int serve_notify_count(struct serve_notify *n, const char *needle, uint64_t since_ms);
/* The longest time between two messages containing needle in a row, among the gaps that
 * overlap [from_ms, to_ms]; the last one's gap runs to now. 0 when none overlaps. */
uint64_t serve_notify_longest_gap(struct serve_notify *n, const char *needle, uint64_t from_ms, uint64_t to_ms);
/* The monotonic clock those times are on, in ms. */
uint64_t serve_now_ms(void);

#endif
