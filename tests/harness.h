/* The test harness: tests register themselves with TEST(name); the runner (tests/main.c)
 * runs each in a forked child so a crash is one failure, not the end of the run, and ends
 * with the line "N passed, N failed[, N skipped]". */
#ifndef FLASHBOX_TESTS_HARNESS_H
#define FLASHBOX_TESTS_HARNESS_H
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

struct test_case {
    const char *name;
    const char *file;
    void (*fn)(void);
    struct test_case *next;
};

void test_register(struct test_case *tc);
void test_fail_at(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void test_skip(const char *why); /* does not return */
int test_failed(void);           /* nonzero once a CHECK has failed in this test */
/* Marks a heavy variant: a test whose cost is numerics it repeats on another layout, type
 * or depth, while a lighter test (covered_by) runs the same host code. The plain run runs
 * it; with FLASHBOX_TEST_SKIP_HEAVY=1 (the sanitizer pass, where the reference backend it
 * compares against runs 3-4x slower) it is skipped, naming covered_by. Call it first. */
void test_heavy_variant(const char *covered_by);

/* Paths: the shared fixtures folder (FLASHBOX_FIXTURES or ../shared/fixtures) and a fresh
 * per-test scratch directory (removed by the runner when the test passes). */
const char *test_fixtures_dir(void);
/* Returns the fixture path or skips the test (fails it when CI=true) if absent. */
const char *test_fixture(const char *relpath);
const char *test_tmpdir(void);
/* The flashbox binary under test (FLASHBOX env var, default build/flashbox). */
const char *test_flashbox_bin(void);
/* Runs a shell command, keeping the first cap - 1 bytes of its standard output in out
 * (NUL-terminated); returns its exit status, or -1 when it could not run or was killed. */
int test_run_cmd(const char *cmd, char *out, size_t cap);

#define TEST(fn_name)                                                            \
    static void fn_name(void);                                                   \
    static struct test_case fn_name##_case_ = {#fn_name, __FILE__, fn_name, 0};  \
    __attribute__((constructor)) static void fn_name##_register_(void)          \
    {                                                                            \
        test_register(&fn_name##_case_);                                         \
    }                                                                            \
    static void fn_name(void)

#define CHECK(cond)                                                              \
    do {                                                                         \
        if (!(cond)) test_fail_at(__FILE__, __LINE__, "CHECK(%s)", #cond);        \
    } while (0)

/* Stops the test at the first failure of a precondition the rest depends on. */
#define REQUIRE(cond)                                                            \
    do {                                                                         \
        if (!(cond)) {                                                           \
            test_fail_at(__FILE__, __LINE__, "REQUIRE(%s)", #cond);              \
            return;                                                              \
        }                                                                        \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                       \
    do {                                                                         \
        long long a_ = (long long)(a), b_ = (long long)(b);                      \
        if (a_ != b_)                                                            \
            test_fail_at(__FILE__, __LINE__, "%s == %s: %lld != %lld", #a, #b,   \
                         a_, b_);                                                \
    } while (0)

#define CHECK_NEAR(a, b, tol)                                                    \
    do {                                                                         \
        double a_ = (double)(a), b_ = (double)(b);                               \
        if (!(fabs(a_ - b_) <= (tol)))                                           \
            test_fail_at(__FILE__, __LINE__, "%s ~ %s: %.9g vs %.9g (tol %g)",   \
                         #a, #b, a_, b_, (double)(tol));                         \
    } while (0)

#define CHECK_STR(a, b)                                                          \
    do {                                                                         \
        const char *a_ = (a), *b_ = (b);                                         \
        if (!a_ || !b_ || strcmp(a_, b_) != 0)                                   \
            test_fail_at(__FILE__, __LINE__, "%s == %s: \"%s\" != \"%s\"", #a,   \
                         #b, a_ ? a_ : "(null)", b_ ? b_ : "(null)");            \
    } while (0)

#endif
