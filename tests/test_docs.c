/* The documents stay true: the command blocks of README.md and the docs/ pages marked
 * `<!-- runnable -->` run against the flashbox under test (scripts/doc-check.sh), and the
 * generated configuration reference in docs/operating.md equals `flashbox serve
 * --print-config` (scripts/gen-docs.sh --check), their links resolve to files and headings
 * (scripts/check-links.sh), and every #include follows the folder rules
 * of docs/design.md (scripts/check-layout.sh). Run from the repository root, as make does. */
#include "tests/harness.h"

#include <unistd.h>

static char out[65536];

TEST(docs_runnable_blocks_run)
{
    if (access("scripts/doc-check.sh", R_OK)) test_skip("not run from the repository root");
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "sh scripts/doc-check.sh %s 2>&1", test_flashbox_bin());
    int rc = test_run_cmd(cmd, out, sizeof out);
    if (rc != 0) fprintf(stderr, "%s", out);
    CHECK_EQ_INT(rc, 0);
    CHECK(strstr(out, "blocks passed, 0 failed") != NULL);
}

TEST(docs_config_generated_from_print_config)
{
    if (access("scripts/gen-docs.sh", R_OK)) test_skip("not run from the repository root");
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "sh scripts/gen-docs.sh --check %s 2>&1", test_flashbox_bin());
    int rc = test_run_cmd(cmd, out, sizeof out);
    if (rc != 0) fprintf(stderr, "%s", out);
    CHECK_EQ_INT(rc, 0);
}

/* Runs a check script of scripts/ from the repository root; it must exit 0 and print want. */
static void check_script(const char *script, const char *want)
{
    if (access(script, R_OK)) test_skip("not run from the repository root");
    char cmd[256];
    snprintf(cmd, sizeof cmd, "sh %s 2>&1", script);
    int rc = test_run_cmd(cmd, out, sizeof out);
    if (rc != 0) fprintf(stderr, "%s", out);
    CHECK_EQ_INT(rc, 0);
    CHECK(strstr(out, want) != NULL);
}

TEST(layout_includes_follow_design)
{
    check_script("scripts/check-layout.sh", " 0 not allowed");
}

TEST(docs_links_resolve_to_files_and_headings)
{
    check_script("scripts/check-links.sh", " 0 broken");
}
