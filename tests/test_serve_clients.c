/* The official client libraries end to end: tests/e2e/clients.mjs drives the daemon over
 * its Unix socket with the openai and @anthropic-ai/sdk npm packages (pinned in
 * tests/e2e/package-lock.json, installed into build/npm by scripts/npm-clients.sh) and
 * checks every parsed answer against the raw HTTP answer. Skipped, saying why, when node
 * or the packages are absent. */
#include "tests/harness.h"
#include "tests/serve_client.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

TEST(serve_official_npm_clients_chat_stream_tools_messages)
{
    if (system("command -v node >/dev/null 2>&1") != 0) test_skip("node is not installed (scripts/deps.sh installs it)");
    if (access("build/npm/node_modules/openai/package.json", R_OK) ||
        access("build/npm/node_modules/@anthropic-ai/sdk/package.json", R_OK))
        test_skip("the npm clients are not installed (run scripts/npm-clients.sh)");
    static const char *const sets[] = { "server.slots=2", NULL };
    struct served d;
    REQUIRE(serve_start(&d, sets) == 0);
    char cmd[1024], out[16384];
    snprintf(cmd, sizeof cmd, "timeout 120 node tests/e2e/clients.mjs '%s' build/npm 2>&1", d.sock);
    int rc = test_run_cmd(cmd, out, sizeof out);
    if (rc != 0 || !strstr(out, "all client checks passed"))
        test_fail_at(__FILE__, __LINE__, "clients.mjs (exit %d):\n%s", rc, out);
    serve_stop(&d, SIGTERM, 10000);
}
