/* The test runner: runs every registered test (or those whose name contains argv[1]) in a
 * forked child with a scratch directory, prints one line per failure and the totals. */
#include "tests/harness.h"

#include <errno.h>
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

static int run_one(struct test_case *tc, const char *tmproot, int idx)
{
    snprintf(g_tmpdir, sizeof g_tmpdir, "%s/%d-%s", tmproot, idx, tc->name);
    if (mkdir(g_tmpdir, 0700) != 0 && errno != EEXIST) {
        fprintf(stderr, "FAIL %s: cannot create %s: %s\n", tc->name, g_tmpdir, strerror(errno));
        return EXIT_FAIL;
    }
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) return EXIT_FAIL;
    if (pid == 0) {
        g_failed = 0;
        tc->fn();
        fflush(stdout);
        fflush(stderr);
        _exit(g_failed ? EXIT_FAIL : EXIT_PASS);
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    if (WIFSIGNALED(status)) {
        fprintf(stderr, "FAIL %s (%s): killed by signal %d\n", tc->name, tc->file, WTERMSIG(status));
        return EXIT_FAIL;
    }
    int rc = WEXITSTATUS(status);
    if (rc == EXIT_FAIL || (rc != EXIT_PASS && rc != EXIT_SKIP)) {
        fprintf(stderr, "FAIL %s (%s)\n", tc->name, tc->file);
        return EXIT_FAIL;
    }
    if (rc == EXIT_PASS) {
        char cmd[700];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmpdir);
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
    int passed = 0, failed = 0, skipped = 0, idx = 0;
    for (struct test_case *tc = rev; tc; tc = tc->next) {
        if (filter && !strstr(tc->name, filter)) continue;
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        int rc = run_one(tc, tmproot, idx++);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double ms = (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6;
        const char *word = rc == EXIT_PASS ? "ok  " : rc == EXIT_SKIP ? "skip" : "FAIL";
        printf("%s %-60s %8.1f ms\n", word, tc->name, ms);
        fflush(stdout);
        if (rc == EXIT_PASS) passed++;
        else if (rc == EXIT_SKIP) skipped++;
        else failed++;
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
