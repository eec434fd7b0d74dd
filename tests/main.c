/* The test runner: runs every registered test (or those whose name contains argv[1]) in a
 * forked child with a scratch directory, prints one line per failure and the totals. */
#include "tests/harness.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { EXIT_PASS = 0, EXIT_FAIL = 1, EXIT_SKIP = 77 };

static struct test_case *g_tests;
static int g_failed;
static char g_tmpdir[512];

void test_register(struct test_case *tc)
{
    tc->next = g_tests;
    g_tests = tc;
}

void test_fail_at(const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "FAIL %s:%d: ", file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    g_failed++;
}

int test_failed(void) { return g_failed; }

void test_heavy_variant(const char *covered_by)
{
    const char *skip = getenv("FLASHBOX_TEST_SKIP_HEAVY");
    if (!skip || strcmp(skip, "1") != 0) return;
    char why[256];
    snprintf(why, sizeof why, "heavy variant (FLASHBOX_TEST_SKIP_HEAVY=1); %s runs its host code", covered_by);
    test_skip(why);
}

void test_skip(const char *why)
{
    fprintf(stderr, "  skipped: %s\n", why);
    fflush(stderr);
    _exit(EXIT_SKIP);
}

const char *test_fixtures_dir(void)
{
    const char *d = getenv("FLASHBOX_FIXTURES");
    return d && *d ? d : "../shared/fixtures";
}

const char *test_fixture(const char *relpath)
{
    static char path[4096];
    snprintf(path, sizeof path, "%s/%s", test_fixtures_dir(), relpath);
    if (access(path, R_OK) == 0) return path;
    const char *ci = getenv("CI");
    if (ci && strcmp(ci, "true") == 0) {
        test_fail_at(__FILE__, __LINE__, "fixture %s missing while CI=true", path);
        _exit(EXIT_FAIL);
    }
    char why[4200];
    snprintf(why, sizeof why, "fixture %s absent", path);
    test_skip(why);
    return NULL;
}

const char *test_tmpdir(void) { return g_tmpdir; }

const char *test_flashbox_bin(void)
{
    const char *b = getenv("FLASHBOX");
    return b && *b ? b : "build/flashbox";
}

int test_run_cmd(const char *cmd, char *out, size_t cap)
{
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = 0;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

struct running {
    pid_t pid;
    struct test_case *tc;
    char dir[512];
    struct timespec t0;
};

/* Each test runs in its own process group, so what it started (a daemon, a client) and
 * left running when it failed half-way is ended with it, not left behind by the run. */
static struct running g_run[64];
static int g_n_run;

/* Ctrl-C or a kill of the runner ends the running tests' groups too. The table is changed
 * only with these signals blocked, so the handler never sees a slot half-copied. */
static sigset_t g_stop_signals;

static void stop_signals(int how) { sigprocmask(how, &g_stop_signals, NULL); }

static void end_groups_and_exit(int sig)
{
    for (int k = 0; k < g_n_run; k++)
        if (g_run[k].pid > 0) kill(-g_run[k].pid, SIGKILL);
    signal(sig, SIG_DFL);
    raise(sig);
}

/* Forks the test with its output going to DIR/log; the parent reports it when it ends. */
static int start_one(struct test_case *tc, const char *tmproot, int idx, struct running *r)
{
    snprintf(r->dir, sizeof r->dir, "%s/%d-%s", tmproot, idx, tc->name);
    if (mkdir(r->dir, 0700) != 0 && errno != EEXIST) return -1;
    r->tc = tc;
    clock_gettime(CLOCK_MONOTONIC, &r->t0);
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        setpgid(0, 0);
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        stop_signals(SIG_UNBLOCK); /* forked while the parent had them blocked */
        char log[600];
        snprintf(log, sizeof log, "%s/log", r->dir);
        if (!freopen(log, "w", stdout) || dup2(fileno(stdout), 2) < 0) _exit(EXIT_FAIL);
        setvbuf(stdout, NULL, _IOLBF, 0);
        snprintf(g_tmpdir, sizeof g_tmpdir, "%s", r->dir);
        /* a hung test is a failure, not a hung run (FLASHBOX_TEST_TIMEOUT seconds, default 600) */
        const char *to = getenv("FLASHBOX_TEST_TIMEOUT");
        alarm(to && atoi(to) > 0 ? (unsigned)atoi(to) : 600u);
        g_failed = 0;
        tc->fn();
        fflush(stdout);
        fflush(stderr);
        _exit(g_failed ? EXIT_FAIL : EXIT_PASS);
    }
    setpgid(pid, pid); /* also here: the group exists before the parent may signal it */
    r->pid = pid;
    return 0;
}

/* Prints the finished test's line and its output; returns its outcome. */
static int finish_one(struct running *r, int status)
{
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ms = (t1.tv_sec - r->t0.tv_sec) * 1e3 + (t1.tv_nsec - r->t0.tv_nsec) / 1e6;
    kill(-r->pid, SIGKILL); /* whatever the test left running in its group */
    int rc;
    if (WIFSIGNALED(status)) rc = EXIT_FAIL;
    else rc = WEXITSTATUS(status) == EXIT_PASS || WEXITSTATUS(status) == EXIT_SKIP ? WEXITSTATUS(status) : EXIT_FAIL;
    const char *word = rc == EXIT_PASS ? "ok  " : rc == EXIT_SKIP ? "skip" : "FAIL";
    printf("%s %-60s %8.1f ms\n", word, r->tc->name, ms);
    char log[600], line[4096];
    snprintf(log, sizeof log, "%s/log", r->dir);
    FILE *f = fopen(log, "r");
    while (f && fgets(line, sizeof line, f)) fputs(line, stdout);
    if (f) fclose(f);
    if (WIFSIGNALED(status)) printf("FAIL %s (%s): killed by signal %d\n", r->tc->name, r->tc->file, WTERMSIG(status));
    else if (rc == EXIT_FAIL) printf("FAIL %s (%s)\n", r->tc->name, r->tc->file);
    fflush(stdout);
    if (rc != EXIT_FAIL) {
        char cmd[700];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", r->dir);
        if (system(cmd) != 0) {}
    }
    return rc;
}

int main(int argc, char **argv)
{
    const char *filter = argc > 1 ? argv[1] : NULL;
    /* Registration order is reversed by the list; restore file order. */
    struct test_case *rev = NULL;
    while (g_tests) {
        struct test_case *n = g_tests->next;
        g_tests->next = rev;
        rev = g_tests;
        g_tests = n;
    }
    char tmproot[] = "/tmp/flashbox-test.XXXXXX";
    if (!mkdtemp(tmproot)) {
        perror("mkdtemp");
        return 2;
    }
    /* FLASHBOX_TEST_JOBS tests at a time (default: the number of CPUs) */
    long jobs = sysconf(_SC_NPROCESSORS_ONLN);
    const char *j = getenv("FLASHBOX_TEST_JOBS");
    if (j && atoi(j) > 0) jobs = atoi(j);
    if (jobs < 1) jobs = 1;
    if (jobs > 64) jobs = 64;
    struct running *run = g_run;
    int passed = 0, failed = 0, skipped = 0, idx = 0;
    sigemptyset(&g_stop_signals);
    sigaddset(&g_stop_signals, SIGINT);
    sigaddset(&g_stop_signals, SIGTERM);
    signal(SIGINT, end_groups_and_exit);
    signal(SIGTERM, end_groups_and_exit);
    struct test_case *next = rev;
    for (;;) {
        stop_signals(SIG_BLOCK);
        while (g_n_run < jobs && next) {
            struct test_case *tc = next;
            next = next->next;
            if (filter && !strstr(tc->name, filter)) continue;
            if (start_one(tc, tmproot, idx++, &run[g_n_run]) != 0) {
                printf("FAIL %s: cannot start: %s\n", tc->name, strerror(errno));
                failed++;
                continue;
            }
            g_n_run++;
        }
        stop_signals(SIG_UNBLOCK);
        if (g_n_run == 0) break;
        int status = 0;
        pid_t pid = wait(&status);
        if (pid < 0) {
            if (errno == EINTR) continue;
            break;
        }
        stop_signals(SIG_BLOCK);
        for (int k = 0; k < g_n_run; k++) {
            if (run[k].pid != pid) continue;
            int rc = finish_one(&run[k], status);
            if (rc == EXIT_PASS) passed++;
            else if (rc == EXIT_SKIP) skipped++;
            else failed++;
            run[k] = run[--g_n_run];
            break;
        }
        stop_signals(SIG_UNBLOCK);
    }
    if (failed == 0) {
        char cmd[600];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmproot);
        if (system(cmd) != 0) {}
    } else {
        printf("scratch directories of failed tests kept under %s\n", tmproot);
    }
    if (skipped) printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
    else printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
