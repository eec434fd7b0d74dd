/* Daemon test tools (see serve_client.h). */
#include "tests/serve_client.h"

#include "tests/harness.h"
#include "tools/mkmodel.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Sanitizer builds run the daemon several times slower (and CI runs two tests at once on
 * two cores): FLASHBOX_TEST_TIME_SCALE (1 to 20, default 1; `make sanitize` sets it)
 * stretches the client's request timeout and the wait for the daemon to stop. Only the
 * limits past which a test gives up grow; no test asserts a speed. */
static int time_scale(void)
{
    const char *s = getenv("FLASHBOX_TEST_TIME_SCALE");
    int v = s ? atoi(s) : 1;
    return v < 1 ? 1 : v > 20 ? 20 : v;
}

/* The curl --max-time argument (30 s, stretched as above) into buf. */
static const char *curl_max_time(char buf[16])
{
    snprintf(buf, 16, "%d", 30 * time_scale());
    return buf;
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

uint64_t serve_now_ms(void) { return now_ms(); }

const char *serve_test_model(void)
{
    static char path[600];
    snprintf(path, sizeof path, "%s/tiny.gguf", test_tmpdir());
    if (access(path, R_OK) == 0) return path;
    struct mkmodel_config c;
    mkmodel_defaults(&c);
    char err[256];
    if (mkmodel_write(&c, path, err, sizeof err)) {
        test_fail_at(__FILE__, __LINE__, "mkmodel: %s", err);
        return NULL;
    }
    return path;
}

/* Runs argv with stdout to a pipe; returns the exit status (or -1) and the output. */
static int run_capture(char *const argv[], char **out)
{
    int p[2];
    *out = NULL;
    if (pipe(p)) return -1;
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        dup2(p[1], 1);
        close(p[0]);
        close(p[1]);
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0) dup2(devnull, 2);
        execvp(argv[0], argv);
        _exit(127);
    }
    close(p[1]);
    size_t len = 0, cap = 4096;
    char *buf = malloc(cap);
    for (;;) {
        if (len + 1 >= cap) buf = realloc(buf, cap *= 2);
        ssize_t n = read(p[0], buf + len, cap - len - 1);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        len += (size_t)n;
    }
    buf[len] = 0;
    close(p[0]);
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
    *out = buf;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

int serve_curl_as(const char *sock, int uid, const char *method, const char *path, const char *body, char **out)
{
    char url[512], bodyfile[700], uidarg[64], gidarg[64], max_time[16];
    snprintf(url, sizeof url, "http://localhost%s", path);
    const char *argv[40];
    int n = 0;
    if (uid >= 0) {
        snprintf(uidarg, sizeof uidarg, "--reuid=%d", uid);
        snprintf(gidarg, sizeof gidarg, "--regid=%d", uid);
        argv[n++] = "setpriv";
        argv[n++] = uidarg;
        argv[n++] = gidarg;
        argv[n++] = "--clear-groups";
    }
    argv[n++] = "curl";
    argv[n++] = "-sS";
    argv[n++] = "--max-time";
    argv[n++] = curl_max_time(max_time);
    argv[n++] = "--unix-socket";
    argv[n++] = sock;
    argv[n++] = "-X";
    argv[n++] = method;
    argv[n++] = "-w";
    argv[n++] = "\n%{http_code}";
    if (body) {
        /* Through a file, so any bytes (invalid UTF-8, megabytes) travel unchanged. */
        snprintf(bodyfile, sizeof bodyfile, "%s/body-%d-%llu", test_tmpdir(), (int)getpid(), (unsigned long long)now_ms());
        static unsigned seq;
        size_t l = strlen(bodyfile);
        snprintf(bodyfile + l, sizeof bodyfile - l, "-%u", seq++);
        FILE *f = fopen(bodyfile, "wb");
        if (!f) return -1;
        fwrite(body, 1, strlen(body), f);
        fclose(f);
        chmod(bodyfile, 0644);
        static char dataarg[720];
        snprintf(dataarg, sizeof dataarg, "@%s", bodyfile);
        argv[n++] = "-H";
        argv[n++] = "Content-Type: application/json";
        argv[n++] = "--data-binary";
        argv[n++] = dataarg;
    }
    argv[n++] = url;
    argv[n] = NULL;
    char *text;
    int rc = run_capture((char *const *)argv, &text);
    if (body) unlink(bodyfile);
    if (rc != 0 || !text) {
        free(text);
        *out = NULL;
        return -1;
    }
    char *nl = strrchr(text, '\n');
    if (!nl) {
        free(text);
        *out = NULL;
        return -1;
    }
    int status = atoi(nl + 1);
    *nl = 0;
    *out = text;
    return status;
}

int serve_curl(const struct served *s, const char *method, const char *path, const char *body, char **out,
               const char *const *extra)
{
    if (!extra) return serve_curl_as(s->sock, -1, method, path, body, out);
    /* Extra arguments: build the command directly (used for streaming with -N). */
    char url[512], max_time[16];
    snprintf(url, sizeof url, "http://localhost%s", path);
    const char *argv[48];
    int n = 0;
    argv[n++] = "curl";
    argv[n++] = "-sS";
    argv[n++] = "--max-time";
    argv[n++] = curl_max_time(max_time);
    argv[n++] = "--unix-socket";
    argv[n++] = s->sock;
    argv[n++] = "-X";
    argv[n++] = method;
    argv[n++] = "-w";
    argv[n++] = "\n%{http_code}";
    for (int i = 0; extra[i] && n < 40; i++) argv[n++] = extra[i];
    if (body) {
        argv[n++] = "--data-binary";
        argv[n++] = body;
    }
    argv[n++] = url;
    argv[n] = NULL;
    char *text;
    int rc = run_capture((char *const *)argv, &text);
    if (rc != 0 || !text) {
        free(text);
        *out = NULL;
        return -1;
    }
    char *nl = strrchr(text, '\n');
    int status = nl ? atoi(nl + 1) : -1;
    if (nl) *nl = 0;
    *out = text;
    return status;
}

int serve_start(struct served *s, const char *const *sets)
{
    memset(s, 0, sizeof *s);
    snprintf(s->dir, sizeof s->dir, "%s", test_tmpdir());
    snprintf(s->sock, sizeof s->sock, "%s/run/api.sock", s->dir);
    snprintf(s->audit, sizeof s->audit, "%s/audit.jsonl", s->dir);
    snprintf(s->log, sizeof s->log, "%s/serve.log", s->dir);
    const char *model = serve_test_model();
    if (!model) return -1;
    snprintf(s->model, sizeof s->model, "%s", model);
    static char auditset[700];
    snprintf(auditset, sizeof auditset, "audit.log=%s", s->audit);
    const char *argv[64];
    int n = 0;
    argv[n++] = test_flashbox_bin();
    argv[n++] = "serve";
    argv[n++] = "-m";
    argv[n++] = s->model;
    argv[n++] = "--socket";
    argv[n++] = s->sock;
    argv[n++] = "--set";
    argv[n++] = auditset;
    for (int i = 0; sets && sets[i] && n < 60; i++) {
        argv[n++] = "--set";
        argv[n++] = sets[i];
    }
    argv[n] = NULL;
    s->pid = fork();
    if (s->pid < 0) return -1;
    if (s->pid == 0) {
        int fd = open(s->log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    uint64_t t0 = now_ms();
    int exit_status = -1;
    /* 60 s: a Vulkan daemon on lavapipe under ASan on a shared 2-core machine needs more than 20. */
    while (now_ms() - t0 < 60000) {
        int st;
        if (waitpid(s->pid, &st, WNOHANG) == s->pid) {
            s->pid = 0;
            exit_status = st;
            break;
        }
        char *out = NULL;
        if (access(s->sock, F_OK) == 0 && serve_curl(s, "GET", "/health", NULL, &out, NULL) == 200) {
            free(out);
            return 0;
        }
        free(out);
        usleep(20000);
    }
    char *log = NULL;
    FILE *f = fopen(s->log, "r");
    if (f) {
        log = calloc(1, 8192);
        if (log) fread(log, 1, 8191, f);
        fclose(f);
    }
    test_fail_at(__FILE__, __LINE__, "daemon did not become ready (%s %d); log:\n%s",
                 exit_status < 0 ? "still running, wait status" : WIFSIGNALED(exit_status) ? "killed by signal" : "exit",
                 exit_status < 0 ? -1 : WIFSIGNALED(exit_status) ? WTERMSIG(exit_status) : WEXITSTATUS(exit_status),
                 log ? log : "(none)");
    free(log);
    if (s->pid > 0) serve_stop(s, SIGKILL, 5000);
    return -1;
}

/* Prints the last 4 KiB of the daemon's log to stderr: what it said before an exit the
 * test did not expect (a sanitizer report, a shutdown that gave up) shows in the test
 * output, also where the scratch directory is gone (CI). */
static void print_log_tail(const struct served *s, const char *why)
{
    char tail[4097];
    size_t n = 0;
    FILE *f = fopen(s->log, "r");
    if (f) {
        if (fseek(f, -(long)(sizeof tail - 1), SEEK_END) != 0) rewind(f);
        n = fread(tail, 1, sizeof tail - 1, f);
        fclose(f);
    }
    tail[n] = 0;
    fprintf(stderr, "daemon %s; the end of its log (%s):\n%s\n", why, s->log, n ? tail : "(empty)");
}

int serve_stop(struct served *s, int sig, int timeout_ms)
{
    if (s->pid <= 0) return -1;
    timeout_ms *= time_scale();
    kill(s->pid, sig);
    uint64_t t0 = now_ms();
    for (;;) {
        int st;
        pid_t r = waitpid(s->pid, &st, WNOHANG);
        if (r == s->pid) {
            s->pid = 0;
            if (sig != SIGKILL && !(WIFEXITED(st) && WEXITSTATUS(st) == 0))
                print_log_tail(s, WIFSIGNALED(st) ? "killed by a signal" : "exited with a non-zero status");
            return st;
        }
        if (now_ms() - t0 > (uint64_t)timeout_ms) {
            print_log_tail(s, "did not stop in time and is killed");
            kill(s->pid, SIGKILL);
            waitpid(s->pid, &st, 0);
            s->pid = 0;
            return -1;
        }
        usleep(10000);
    }
}

int serve_connect(const char *sock)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", sock);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

size_t serve_read_all(int fd, int timeout_ms, char **out)
{
    size_t len = 0, cap = 4096;
    char *buf = malloc(cap);
    uint64_t t0 = now_ms();
    for (;;) {
        int left = timeout_ms - (int)(now_ms() - t0);
        if (left <= 0) break;
        struct pollfd p = { .fd = fd, .events = POLLIN };
        if (poll(&p, 1, left) <= 0) break;
        if (len + 1 >= cap) buf = realloc(buf, cap *= 2);
        ssize_t n = read(fd, buf + len, cap - len - 1);
        if (n <= 0) break;
        len += (size_t)n;
    }
    buf[len] = 0;
    *out = buf;
    return len;
}

int serve_load_start(const struct served *s)
{
    pid_t pid = fork();
    if (pid == 0) {
        char *o = NULL;
        int st = serve_curl(s, "POST", "/v1/chat/completions",
                            "{\"messages\":[{\"role\":\"user\",\"content\":\"Write a long story\"}],\"max_tokens\":120,\"seed\":2}",
                            &o, NULL);
        _exit(st == 200 ? 0 : 1);
    }
    return (int)pid;
}

int serve_load_wait(int pid)
{
    int status = 0;
    if (pid <= 0 || waitpid(pid, &status, 0) != pid) return -1;
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

int serve_wait_idle(const struct served *s, int timeout_ms)
{
    uint64_t t0 = now_ms();
    while (now_ms() - t0 < (uint64_t)timeout_ms) {
        char *out = NULL;
        int st = serve_curl(s, "GET", "/health", NULL, &out, NULL);
        int idle = st == 200 && out && strstr(out, "\"slots_busy\":0,") && strstr(out, "\"queue_depth\":0");
        free(out);
        if (idle) return 0;
        usleep(20000);
    }
    return -1;
}

double serve_metric(const struct served *s, const char *name)
{
    char *out = NULL;
    if (serve_curl(s, "GET", "/metrics", NULL, &out, NULL) != 200 || !out) {
        free(out);
        return -1;
    }
    double v = -1;
    size_t nl = strlen(name);
    for (char *line = out; line && *line;) {
        char *next = strchr(line, '\n');
        if (!strncmp(line, name, nl) && line[nl] == ' ') {
            v = strtod(line + nl + 1, NULL);
            break;
        }
        line = next ? next + 1 : NULL;
    }
    free(out);
    return v;
}

/* ---- a fake systemd notify socket ---- */

#define NOTIFY_MAX 8192          /* messages kept (a ping per 50 ms for ~7 minutes); later ones are dropped */

struct serve_notify {
    int fd;
    char path[600];
    pthread_t thread;
    pthread_mutex_t lock;
    int stop;                    /* under lock: close asked the thread to drain and end */
    size_t n;                    /* under lock */
    struct {
        uint64_t t_ms;           /* arrival, serve_now_ms */
        char text[48];           /* the message's start */
    } msg[NOTIFY_MAX];
};

static void *notify_main(void *arg)
{
    struct serve_notify *n = arg;
    for (;;) {
        pthread_mutex_lock(&n->lock);
        int stop = n->stop;
        pthread_mutex_unlock(&n->lock);
        struct pollfd p = { .fd = n->fd, .events = POLLIN };
        if (!stop && poll(&p, 1, 50) <= 0) continue;
        char buf[512];
        ssize_t got = recv(n->fd, buf, sizeof buf - 1, MSG_DONTWAIT);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) {
            if (stop) break; /* drained */
            continue;
        }
        buf[got] = 0;
        pthread_mutex_lock(&n->lock);
        if (n->n < NOTIFY_MAX) {
            n->msg[n->n].t_ms = now_ms();
            size_t keep = (size_t)got < sizeof n->msg[n->n].text - 1 ? (size_t)got : sizeof n->msg[n->n].text - 1;
            memcpy(n->msg[n->n].text, buf, keep);
            n->msg[n->n].text[keep] = 0;
            n->n++;
        }
        pthread_mutex_unlock(&n->lock);
    }
    return NULL;
}

struct serve_notify *serve_notify_open(void)
{
    struct serve_notify *n = calloc(1, sizeof *n);
    if (!n) return NULL;
    snprintf(n->path, sizeof n->path, "%s/notify.sock", test_tmpdir());
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(n->path) >= sizeof sa.sun_path) {
        test_fail_at(__FILE__, __LINE__, "notify socket path too long for sun_path: %s", n->path);
        free(n);
        return NULL;
    }
    memcpy(sa.sun_path, n->path, strlen(n->path) + 1);
    n->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (n->fd < 0 || bind(n->fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        test_fail_at(__FILE__, __LINE__, "notify socket %s: %s", n->path, strerror(errno));
        if (n->fd >= 0) close(n->fd);
        free(n);
        return NULL;
    }
    pthread_mutex_init(&n->lock, NULL);
    if (pthread_create(&n->thread, NULL, notify_main, n)) {
        close(n->fd);
        pthread_mutex_destroy(&n->lock);
        free(n);
        return NULL;
    }
    setenv("NOTIFY_SOCKET", n->path, 1);
    return n;
}

void serve_notify_stop(struct serve_notify *n)
{
    if (!n || n->fd < 0) return;
    unsetenv("NOTIFY_SOCKET");
    pthread_mutex_lock(&n->lock);
    n->stop = 1;
    pthread_mutex_unlock(&n->lock);
    pthread_join(n->thread, NULL);
    close(n->fd);
    n->fd = -1;
    unlink(n->path);
}

void serve_notify_free(struct serve_notify *n)
{
    if (!n) return;
    serve_notify_stop(n);
    pthread_mutex_destroy(&n->lock);
    free(n);
}

int serve_notify_count(struct serve_notify *n, const char *needle, uint64_t since_ms)
{
    int count = 0;
    pthread_mutex_lock(&n->lock);
    for (size_t i = 0; i < n->n; i++)
        count += n->msg[i].t_ms >= since_ms && strstr(n->msg[i].text, needle) != NULL;
    pthread_mutex_unlock(&n->lock);
    return count;
}

uint64_t serve_notify_longest_gap(struct serve_notify *n, const char *needle, uint64_t from_ms, uint64_t to_ms)
{
    uint64_t longest = 0, prev = 0;
    bool have_prev = false;
    pthread_mutex_lock(&n->lock);
    for (size_t i = 0; i <= n->n; i++) {
        if (i < n->n && !strstr(n->msg[i].text, needle)) continue;
        uint64_t t = i < n->n ? n->msg[i].t_ms : now_ms(); /* past the last: the gap so far */
        if (have_prev && t > from_ms && prev < to_ms && t - prev > longest) longest = t - prev;
        prev = t;
        have_prev = true;
    }
    pthread_mutex_unlock(&n->lock);
    return longest;
}

char *serve_slurp(const char *path)
{
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    FILE *f = fopen(path, "r");
    while (buf && f) {
        len += fread(buf + len, 1, cap - 1 - len, f);
        if (len < cap - 1) break;
        char *grown = realloc(buf, cap * 2);
        if (!grown) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = grown;
        cap *= 2;
    }
    if (f) fclose(f);
    if (buf) buf[len] = 0;
    return buf;
}
