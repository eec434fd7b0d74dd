/* The daemon under load and at the edges of a request's life: 32 concurrent clients, a
 * seeded request answered the same alone and among 8 (continuous batching),
 * a client that disconnects mid-stream, a full queue, SIGTERM during generation, SIGHUP,
 * and peers that are not on the allow-list. */
#include "tests/harness.h"
#include "tests/serve_client.h"
#include "tests/update_support.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CHAT "/v1/chat/completions"

/* Sends a streaming chat request on a raw connection and reads until the first content
 * chunk arrived, so the request is known to be generating. Returns the fd or -1. */
static int start_stream(const char *sock, int max_tokens)
{
    int fd = serve_connect(sock);
    if (fd < 0) return -1;
    char body[256], req[512];
    int bl = snprintf(body, sizeof body,
                      "{\"messages\":[{\"role\":\"user\",\"content\":\"go on\"}],\"max_tokens\":%d,\"temperature\":0,\"ignore_eos\":true,\"stream\":true}",
                      max_tokens);
    int rl = snprintf(req, sizeof req, "POST " CHAT " HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                      "Content-Length: %d\r\n\r\n%s", bl, body);
    if (write(fd, req, (size_t)rl) != rl) {
        close(fd);
        return -1;
    }
    char buf[8192];
    size_t got = 0;
    time_t t0 = time(NULL);
    while (got < sizeof buf - 1 && time(NULL) - t0 < 10) {
        ssize_t n = read(fd, buf + got, sizeof buf - 1 - got);
        if (n <= 0) break;
        got += (size_t)n;
        buf[got] = 0;
        if (strstr(buf, "\"content\"")) return fd;
    }
    close(fd);
    return -1;
}

/* Waits for n client processes; returns how many exited 0. */
static int wait_kids(const pid_t *kids, int n)
{
    int good = 0;
    for (int i = 0; i < n; i++) {
        int st;
        waitpid(kids[i], &st, 0);
        good += WIFEXITED(st) && WEXITSTATUS(st) == 0;
    }
    return good;
}

static int status_of(const struct served *d, const char *body, char **out)
{
    return serve_curl(d, "POST", CHAT, body, out, NULL);
}

TEST(serve_32_concurrent_clients_all_get_their_answer)
{
    const char *sets[] = { "server.slots=4", "server.queue_depth=32", NULL };
    struct served d;
    REQUIRE(serve_start(&d, sets) == 0);
    /* Four different prompts; each answer is first taken alone, then 32 clients at once
     * must get exactly the same greedy text. */
    const char *prompts[4] = { "alpha", "bravo charlie", "delta echo foxtrot", "golf" };
    char *want[4];
    char body[4][256];
    for (int p = 0; p < 4; p++) {
        snprintf(body[p], sizeof body[p], "{\"messages\":[{\"role\":\"user\",\"content\":\"%s\"}],\"max_tokens\":4,\"temperature\":0}", prompts[p]);
        char *out;
        REQUIRE(status_of(&d, body[p], &out) == 200);
        json_t *o = json_loads(out, 0, NULL);
        want[p] = strdup(json_string_value(json_object_get(json_object_get(json_array_get(json_object_get(o, "choices"), 0), "message"), "content")));
        json_decref(o);
        free(out);
    }
    pid_t kids[32];
    for (int i = 0; i < 32; i++) {
        kids[i] = fork();
        REQUIRE(kids[i] >= 0);
        if (kids[i] == 0) {
            char *out;
            int st = status_of(&d, body[i % 4], &out);
            int ok = 0;
            if (st == 200) {
                json_t *o = json_loads(out, 0, NULL);
                const char *got = json_string_value(json_object_get(json_object_get(json_array_get(json_object_get(o, "choices"), 0), "message"), "content"));
                ok = got && !strcmp(got, want[i % 4]);
            }
            _exit(ok ? 0 : 1);
        }
    }
    CHECK_EQ_INT(wait_kids(kids, 32), 32);
    CHECK_EQ_INT(serve_metric(&d, "flashbox_requests_total{endpoint=\"/v1/chat/completions\",status=\"200\"}"), 36);
    for (int p = 0; p < 4; p++) free(want[p]);
    CHECK_EQ_INT(WEXITSTATUS(serve_stop(&d, SIGTERM, 10000)), 0);
}

TEST(serve_client_gone_mid_stream_frees_its_slot)
{
    const char *sets[] = { "server.slots=1", NULL };
    struct served d;
    REQUIRE(serve_start(&d, sets) == 0);
    int fd = start_stream(d.sock, 4096);
    REQUIRE(fd >= 0);
    close(fd);
    /* The only slot comes free without the 4096 tokens being generated. */
    CHECK_EQ_INT(serve_wait_idle(&d, 10000), 0);
    CHECK_EQ_INT(serve_metric(&d, "flashbox_cancelled_total"), 1);
    double generated = serve_metric(&d, "flashbox_completion_tokens_total");
    CHECK(generated >= 1 && generated < 4000);
    char *out;
    CHECK_EQ_INT(status_of(&d, "{\"messages\":[{\"role\":\"user\",\"content\":\"next\"}],\"max_tokens\":2}", &out), 200);
    free(out);
    serve_stop(&d, SIGTERM, 10000);
}

TEST(serve_full_queue_answers_429_with_a_json_error)
{
    const char *sets[] = { "server.slots=1", "server.queue_depth=0", NULL };
    struct served d;
    REQUIRE(serve_start(&d, sets) == 0);
    int fd = start_stream(d.sock, 4096);
    REQUIRE(fd >= 0);
    char *out;
    CHECK_EQ_INT(status_of(&d, "{\"messages\":[{\"role\":\"user\",\"content\":\"me too\"}],\"max_tokens\":2}", &out), 429);
    json_t *o = json_loads(out ? out : "", 0, NULL);
    CHECK_STR(json_string_value(json_object_get(json_object_get(o, "error"), "code")), "queue_full");
    CHECK_STR(json_string_value(json_object_get(json_object_get(o, "error"), "type")), "rate_limit_error");
    json_decref(o);
    free(out);
    CHECK_EQ_INT(serve_metric(&d, "flashbox_rejected_total{reason=\"queue_full\"}"), 1);
    close(fd);
    CHECK_EQ_INT(serve_wait_idle(&d, 10000), 0);
    CHECK_EQ_INT(status_of(&d, "{\"messages\":[{\"role\":\"user\",\"content\":\"now\"}],\"max_tokens\":2}", &out), 200);
    free(out);
    serve_stop(&d, SIGTERM, 10000);
}

TEST(serve_sigterm_during_generation_exits_0_within_the_grace_period)
{
    const char *sets[] = { "server.slots=2", "server.shutdown_grace_s=1", NULL };
    struct served d;
    REQUIRE(serve_start(&d, sets) == 0);
    /* Two generations in flight: curl reading its stream, and a raw client that stopped
     * reading after the first chunk (its socket buffer fills up). */
    char outpath[700];
    snprintf(outpath, sizeof outpath, "%s/stream.out", d.dir);
    pid_t reader = fork();
    REQUIRE(reader >= 0);
    if (reader == 0) {
        int fd = open(outpath, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(fd, 1);
        execlp("curl", "curl", "-sN", "--max-time", "30", "--unix-socket", d.sock, "http://localhost" CHAT, "--data-binary",
               "{\"messages\":[{\"role\":\"user\",\"content\":\"go\"}],\"max_tokens\":4096,\"ignore_eos\":true,\"stream\":true}",
               (char *)NULL);
        _exit(127);
    }
    int stalled = start_stream(d.sock, 4096);
    REQUIRE(stalled >= 0);
    for (int i = 0; i < 500; i++) { /* until curl has received content */
        FILE *f = fopen(outpath, "r");
        char buf[4096] = "";
        if (f) {
            size_t n = fread(buf, 1, sizeof buf - 1, f);
            buf[n] = 0;
            fclose(f);
        }
        if (strstr(buf, "\"content\"")) break;
        usleep(10000);
    }
    /* Grace 1 s, then the generations are cancelled; 10 s is the test's outer bound only. */
    int st = serve_stop(&d, SIGTERM, 10000);
    CHECK(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    int rst;
    waitpid(reader, &rst, 0);
    CHECK(WIFEXITED(rst) && WEXITSTATUS(rst) == 0);
    /* curl's stream ended properly: an error event saying why, then [DONE]. */
    FILE *f = fopen(outpath, "r");
    REQUIRE(f != NULL);
    static char all[1 << 20];
    size_t n = fread(all, 1, sizeof all - 1, f);
    all[n] = 0;
    fclose(f);
    CHECK(strstr(all, "\"code\":\"shutdown\"") != NULL);
    CHECK(n > 14 && !strcmp(all + n - 14, "data: [DONE]\n\n"));
    close(stalled);
    CHECK(access(d.sock, F_OK) != 0); /* socket file removed */
    f = fopen(d.audit, "r");
    REQUIRE(f != NULL);
    char line[2048];
    int stop_line = 0;
    while (fgets(line, sizeof line, f))
        if (strstr(line, "\"event\":\"stop\"") && strstr(line, "2 requests cancelled")) stop_line = 1;
    fclose(f);
    CHECK(stop_line);
}

TEST(serve_request_past_its_deadline_gets_504_and_frees_the_slot)
{
    const char *sets[] = { "server.slots=1", "server.request_deadline_s=1", NULL };
    struct served d;
    REQUIRE(serve_start(&d, sets) == 0);
    char *out;
    CHECK_EQ_INT(status_of(&d, "{\"messages\":[{\"role\":\"user\",\"content\":\"long\"}],\"max_tokens\":4096,\"ignore_eos\":true}", &out), 504);
    json_t *o = json_loads(out ? out : "", 0, NULL);
    CHECK_STR(json_string_value(json_object_get(json_object_get(o, "error"), "code")), "deadline");
    json_decref(o);
    free(out);
    CHECK_EQ_INT(serve_wait_idle(&d, 5000), 0);
    CHECK(serve_metric(&d, "flashbox_completion_tokens_total") < 4096);
    CHECK_EQ_INT(status_of(&d, "{\"messages\":[{\"role\":\"user\",\"content\":\"short\"}],\"max_tokens\":2}", &out), 200);
    free(out);
    /* asked for it, the deadline answers with what was produced, finish_reason "length" */
    static const char *const partial[] = { "-H", "Flashbox-Deadline: partial", NULL };
    CHECK_EQ_INT(serve_curl(&d, "POST", CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"long\"}],"
                            "\"max_tokens\":4096,\"ignore_eos\":true}", &out, partial), 200);
    o = json_loads(out ? out : "", JSON_ALLOW_NUL, NULL); /* the random model's text may hold U+0000 */
    if (!o) test_fail_at(__FILE__, __LINE__, "not JSON: %.300s", out ? out : "(none)");
    json_t *choice = json_array_get(json_object_get(o, "choices"), 0);
    if (!choice) test_fail_at(__FILE__, __LINE__, "no choice: %.300s", out ? out : "(none)");
    CHECK_STR(json_string_value(json_object_get(choice, "finish_reason")), "length");
    json_int_t n_out = json_integer_value(json_object_get(json_object_get(o, "usage"), "completion_tokens"));
    CHECK(n_out >= 1 && n_out < 4096);
    json_decref(o);
    free(out);
    serve_stop(&d, SIGTERM, 10000);
}

TEST(serve_socket_file_gets_the_configured_mode_and_group)
{
    if (getuid() != 0) test_skip("changing the socket's group needs root");
    const char *sets[] = { "server.socket_mode=0640", "server.socket_group=nogroup", NULL };
    struct served d;
    REQUIRE(serve_start(&d, sets) == 0);
    struct stat st;
    REQUIRE(stat(d.sock, &st) == 0);
    CHECK(S_ISSOCK(st.st_mode));
    CHECK_EQ_INT(st.st_mode & 0777, 0640);
    CHECK_EQ_INT(st.st_gid, 65534); /* Debian's nogroup */
    serve_stop(&d, SIGTERM, 10000);
}

TEST(serve_peer_not_on_the_allow_list_is_refused)
{
    char uids[64];
    snprintf(uids, sizeof uids, "access.allow_uids=%u", (unsigned)getuid() + 1);
    const char *sets[] = { uids, NULL };
    /* Started by hand: serve_start waits for a 200 from /health, which this peer never gets. */
    struct served d2;
    memset(&d2, 0, sizeof d2);
    snprintf(d2.sock, sizeof d2.sock, "%s/run2/api.sock", test_tmpdir());
    snprintf(d2.audit, sizeof d2.audit, "%s/audit2.jsonl", test_tmpdir());
    char auditset[700];
    snprintf(auditset, sizeof auditset, "audit.log=%s", d2.audit);
    d2.pid = fork();
    REQUIRE(d2.pid >= 0);
    if (d2.pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        dup2(devnull, 2);
        execl(test_flashbox_bin(), test_flashbox_bin(), "serve", "-m", serve_test_model(), "--socket", d2.sock, "--set",
              auditset, "--set", sets[0], (char *)NULL);
        _exit(127);
    }
    char *out = NULL;
    int st = -1;
    for (int i = 0; i < 500 && st != 403; i++) {
        free(out);
        out = NULL;
        usleep(10000);
        if (access(d2.sock, F_OK) == 0) st = serve_curl(&d2, "GET", "/health", NULL, &out, NULL);
    }
    CHECK_EQ_INT(st, 403);
    json_t *o = json_loads(out ? out : "", 0, NULL);
    CHECK_STR(json_string_value(json_object_get(json_object_get(o, "error"), "code")), "forbidden");
    json_decref(o);
    free(out);
    CHECK_EQ_INT(serve_curl(&d2, "POST", CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", &out, NULL), 403);
    free(out);
    serve_stop(&d2, SIGTERM, 10000);
    FILE *f = fopen(d2.audit, "r");
    REQUIRE(f != NULL);
    char line[2048];
    int denied = 0;
    while (fgets(line, sizeof line, f))
        if (strstr(line, "\"event\":\"denied\"")) denied++;
    fclose(f);
    CHECK(denied >= 2);
}

TEST(serve_peer_of_another_uid_is_refused_by_so_peercred)
{
    if (getuid() != 0) test_skip("needs root to run the client under another uid");
    if (access("/usr/bin/setpriv", X_OK) != 0) test_skip("setpriv not installed");
    /* A socket every uid can reach, so only the SO_PEERCRED allow-list decides. */
    char dir[128];
    snprintf(dir, sizeof dir, "/tmp/flashbox-peer-%d", (int)getpid());
    mkdir(dir, 0755);
    chmod(dir, 0755);
    char sockset[200], audit[200], auditset[220];
    snprintf(sockset, sizeof sockset, "%s/api.sock", dir);
    snprintf(audit, sizeof audit, "%s/audit.jsonl", test_tmpdir());
    snprintf(auditset, sizeof auditset, "audit.log=%s", audit);
    struct served d = { 0 };
    snprintf(d.sock, sizeof d.sock, "%s", sockset);
    d.pid = fork();
    REQUIRE(d.pid >= 0);
    if (d.pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        dup2(devnull, 2);
        execl(test_flashbox_bin(), test_flashbox_bin(), "serve", "-m", serve_test_model(), "--socket", sockset, "--set",
              auditset, "--set", "server.socket_mode=0666", "--set", "access.allow_uids=0", (char *)NULL);
        _exit(127);
    }
    char *out = NULL;
    int st = -1;
    for (int i = 0; i < 500 && st != 200; i++) {
        free(out);
        out = NULL;
        usleep(10000);
        if (access(sockset, F_OK) == 0) st = serve_curl(&d, "GET", "/health", NULL, &out, NULL);
    }
    CHECK_EQ_INT(st, 200);
    free(out);
    CHECK_EQ_INT(serve_curl_as(sockset, 65534, "GET", "/health", NULL, &out), 403);
    free(out);
    serve_stop(&d, SIGTERM, 10000);
    rmdir(dir);
    FILE *f = fopen(audit, "r");
    REQUIRE(f != NULL);
    char line[2048];
    int denied = 0;
    while (fgets(line, sizeof line, f))
        if (strstr(line, "\"event\":\"denied\"") && strstr(line, "\"peer_uid\":65534")) denied = 1;
    fclose(f);
    CHECK(denied);
}

TEST(serve_sighup_reloads_the_allow_list)
{
    char conf[700];
    snprintf(conf, sizeof conf, "%s/serve.conf", test_tmpdir());
    FILE *f = fopen(conf, "w");
    REQUIRE(f != NULL);
    fprintf(f, "[access]\nallow_uids = %u\n", (unsigned)getuid());
    fclose(f);
    struct served d;
    char *out;
    /* --config goes through --set's neighbour: start by hand with the file. */
    memset(&d, 0, sizeof d);
    snprintf(d.sock, sizeof d.sock, "%s/run/api.sock", test_tmpdir());
    d.pid = fork();
    REQUIRE(d.pid >= 0);
    if (d.pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        dup2(devnull, 2);
        execl(test_flashbox_bin(), test_flashbox_bin(), "serve", "--config", conf, "-m", serve_test_model(), "--socket",
              d.sock, (char *)NULL);
        _exit(127);
    }
    int st = -1;
    for (int i = 0; i < 500 && st != 200; i++) {
        usleep(10000);
        out = NULL;
        if (access(d.sock, F_OK) == 0) st = serve_curl(&d, "GET", "/health", NULL, &out, NULL);
        free(out);
    }
    CHECK_EQ_INT(st, 200);
    f = fopen(conf, "w");
    REQUIRE(f != NULL);
    fprintf(f, "[access]\nallow_uids = %u\n", (unsigned)getuid() + 1);
    fclose(f);
    kill(d.pid, SIGHUP);
    for (int i = 0; i < 300 && st != 403; i++) {
        usleep(10000);
        st = serve_curl(&d, "GET", "/health", NULL, &out, NULL);
        free(out);
    }
    CHECK_EQ_INT(st, 403);
    /* A broken file on reload keeps the running config. */
    f = fopen(conf, "w");
    REQUIRE(f != NULL);
    fprintf(f, "[access]\nno_such_key = 1\n");
    fclose(f);
    kill(d.pid, SIGHUP);
    usleep(300000);
    CHECK_EQ_INT(serve_curl(&d, "GET", "/health", NULL, &out, NULL), 403);
    free(out);
    CHECK_EQ_INT(WEXITSTATUS(serve_stop(&d, SIGTERM, 10000)), 0);
}

TEST(serve_runs_the_active_update_slot_and_ends_its_boot_trial)
{
    /* A slot store with one signed release installed (slot a, under boot trial). */
    struct upd_box b;
    REQUIRE(upd_box_init(&b) == 0);
    char bundle[1024], out[8192];
    snprintf(bundle, sizeof bundle, "%s/v1.fbx", b.root);
    REQUIRE(upd_make_bundle(&b, bundle, "1.0", 1, serve_test_model(), NULL) == 0);
    REQUIRE(upd_cli(&b, out, sizeof out, "install", bundle) == 0);
    struct update_status st;
    REQUIRE(update_get_status(&b.cfg, &st, out, sizeof out) == 0);
    CHECK_EQ_INT(st.trial, 0);

    char data[700], keys[700], product[200];
    snprintf(data, sizeof data, "update.data_dir=%s", b.data);
    snprintf(keys, sizeof keys, "update.keys_dir=%s", b.keys);
    snprintf(product, sizeof product, "update.product=%s", b.cfg.product);
    /* No admin socket: as root its default path is shared by every daemon on the machine. */
    const char *sets[] = { data, keys, product, "server.slots=1", "server.admin_socket=none", NULL };
    struct served d;
    REQUIRE(serve_start(&d, sets) == 0);
    char *body;
    CHECK_EQ_INT(serve_curl(&d, "GET", "/health", NULL, &body, NULL), 200);
    CHECK(body && strstr(body, "\"slot\":\"a\"") != NULL);
    free(body);
    CHECK_EQ_INT(status_of(&d, "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":2}", &body), 200);
    free(body);
    /* Ready ended the trial (right after READY=1; allow the daemon a moment). */
    for (int i = 0; i < 200; i++) {
        if (update_get_status(&b.cfg, &st, out, sizeof out) == 0 && st.trial == -1) break;
        usleep(10000);
    }
    CHECK_EQ_INT(st.trial, -1);
    CHECK_EQ_INT(WEXITSTATUS(serve_stop(&d, SIGTERM, 10000)), 0);
    FILE *f = fopen(d.audit, "r");
    REQUIRE(f != NULL);
    char line[2048];
    int slot_a = 0;
    while (fgets(line, sizeof line, f))
        if (strstr(line, "\"endpoint\":\"/v1/chat/completions\"") && strstr(line, "\"slot\":\"a\"")) slot_a = 1;
    fclose(f);
    CHECK(slot_a);
}

TEST(serve_caps_requests_in_flight_per_peer_uid)
{
    const char *sets[] = { "server.slots=2", "limits.max_requests_per_uid=1", NULL };
    struct served d;
    REQUIRE(serve_start(&d, sets) == 0);
    int fd = start_stream(d.sock, 4096);
    REQUIRE(fd >= 0);
    /* A slot is free, but this uid already has its one request running. */
    char *out;
    CHECK_EQ_INT(status_of(&d, "{\"messages\":[{\"role\":\"user\",\"content\":\"two\"}],\"max_tokens\":2}", &out), 429);
    json_t *o = json_loads(out ? out : "", 0, NULL);
    CHECK_STR(json_string_value(json_object_get(json_object_get(o, "error"), "code")), "peer_quota");
    json_decref(o);
    free(out);
    close(fd);
    CHECK_EQ_INT(serve_wait_idle(&d, 10000), 0);
    /* Released with the connection: the next one goes through. */
    int st = -1;
    for (int i = 0; i < 100 && st != 200; i++) {
        st = status_of(&d, "{\"messages\":[{\"role\":\"user\",\"content\":\"three\"}],\"max_tokens\":2}", &out);
        free(out);
        if (st != 200) usleep(20000);
    }
    CHECK_EQ_INT(st, 200);
    serve_stop(&d, SIGTERM, 10000);
}

TEST(serve_stream_waiting_in_the_queue_gets_sse_keepalives)
{
    const char *sets[] = { "server.slots=1", "server.sse_ping_s=1", NULL };
    struct served d;
    REQUIRE(serve_start(&d, sets) == 0);
    int busy = start_stream(d.sock, 4096);
    REQUIRE(busy >= 0);
    /* A second stream waits for the only slot: its client hears ": ping" comments, so
     * proxies and idle timeouts keep the connection, and no content yet. */
    int fd = serve_connect(d.sock);
    REQUIRE(fd >= 0);
    const char *body = "{\"messages\":[{\"role\":\"user\",\"content\":\"wait\"}],\"max_tokens\":2,\"stream\":true}";
    char req[512];
    int n = snprintf(req, sizeof req, "POST " CHAT " HTTP/1.1\r\nHost: localhost\r\nContent-Length: %zu\r\n\r\n%s", strlen(body), body);
    CHECK(write(fd, req, (size_t)n) == n);
    char *got;
    serve_read_all(fd, 2500, &got);
    CHECK(strstr(got, ": ping\n\n") != NULL);
    CHECK(strstr(got, "\"content\"") == NULL);
    free(got);
    close(fd);
    close(busy);
    serve_stop(&d, SIGTERM, 10000);
}

/* The text of a blocking chat answer, or NULL. */
static char *answer_of(const struct served *d, const char *body)
{
    char *out = NULL, *text = NULL;
    if (status_of(d, body, &out) == 200) {
        json_t *o = json_loads(out, 0, NULL);
        const char *got = json_string_value(
            json_object_get(json_object_get(json_array_get(json_object_get(o, "choices"), 0), "message"), "content"));
        if (got) text = strdup(got);
        json_decref(o);
    }
    free(out);
    return text;
}

/* Continuous batching must not change answers: a seeded, sampled request gives the same
 * text alone and among 8 concurrent clients (other prompts, other seeds, a long prompt
 * being read meanwhile), and the steps really held several sessions. */
static void seeded_text_same_alone_and_under_load(const char *backend)
{
    char backend_set[64];
    snprintf(backend_set, sizeof backend_set, "model.backend=%s", backend);
    const char *sets[] = { "server.slots=8", "server.queue_depth=32", "server.step_tokens=16", backend_set, NULL };
    struct served d;
    REQUIRE(serve_start(&d, sets) == 0);
    const char *seeded = "{\"messages\":[{\"role\":\"user\",\"content\":\"tell me about the sea\"}],\"max_tokens\":24,"
                         "\"temperature\":1.0,\"top_p\":0.95,\"seed\":4242,\"ignore_eos\":true}";
    char *alone = answer_of(&d, seeded);
    REQUIRE(alone != NULL && alone[0]);
    pid_t kids[8];
    for (int i = 0; i < 8; i++) {
        kids[i] = fork();
        REQUIRE(kids[i] >= 0);
        if (kids[i] == 0) {
            if (i % 2 == 0) {
                char *got = answer_of(&d, seeded);
                _exit(got && !strcmp(got, alone) ? 0 : 1);
            }
            /* load: other seeds and prompts, one of them long enough to take many steps */
            char body[4096], content[3000] = "";
            for (int k = 0; k < (i == 1 ? 120 : 2); k++) strcat(content, "waves ");
            snprintf(body, sizeof body, "{\"messages\":[{\"role\":\"user\",\"content\":\"%s%d\"}],\"max_tokens\":24,"
                                        "\"temperature\":0.8,\"seed\":%d,\"ignore_eos\":true}", content, i, i);
            char *got = answer_of(&d, body);
            _exit(got ? 0 : 1);
        }
    }
    CHECK_EQ_INT(wait_kids(kids, 8), 8);
    /* some steps evaluated several sessions together */
    const double steps = serve_metric(&d, "flashbox_step_sessions_count");
    const double single = serve_metric(&d, "flashbox_step_sessions_bucket{le=\"1\"}");
    CHECK(steps > 0 && single < steps);
    printf("  %s: %.0f steps, %.0f of one session, %.1f sessions and %.1f tokens a step on average\n", backend, steps, single,
           serve_metric(&d, "flashbox_step_sessions_sum") / steps, serve_metric(&d, "flashbox_step_tokens_sum") / steps);
    CHECK(serve_metric(&d, "flashbox_step_tokens_sum") >= 9 * 24);
    CHECK(serve_metric(&d, "flashbox_prefill_tokens_waiting") == 0);
    free(alone);
    CHECK_EQ_INT(WEXITSTATUS(serve_stop(&d, SIGTERM, 10000)), 0);
}

TEST(serve_seeded_text_is_the_same_alone_and_among_8_clients_ref)
{
    seeded_text_same_alone_and_under_load("ref");
}

TEST(serve_seeded_text_is_the_same_alone_and_among_8_clients_vulkan)
{
    seeded_text_same_alone_and_under_load("vulkan");
}

/* server.slots larger than the memory allows: sessions of 1M positions (about 0.6 GiB each
 * on the tiny model) do not all fit a CPU driver's 2 GiB of device memory, so a later slot
 * cannot be allocated. The daemon says so clearly (log, /health, /metrics, audit), serves
 * the slots it has, and queued requests beyond them still get their answers. Skipped on a
 * device large enough to hold all eight. */
TEST(serve_slots_past_memory_are_reported_the_rest_serve)
{
    const char *sets[] = { "model.backend=vulkan", "model.n_ctx=1048576", "server.slots=8", "server.queue_depth=16", NULL };
    struct served d;
    REQUIRE(serve_start(&d, sets) == 0);
    char *out = NULL;
    REQUIRE(serve_curl(&d, "GET", "/health", NULL, &out, NULL) == 200);
    json_t *h = json_loads(out, 0, NULL);
    free(out);
    REQUIRE(h != NULL);
    const int n = (int)json_integer_value(json_object_get(h, "slots_total"));
    if (n == 8) {
        json_decref(h);
        serve_stop(&d, SIGTERM, 10000);
        test_skip("the device holds eight 1M-position sessions: nothing to refuse");
        return;
    }
    CHECK(n >= 1 && n < 8);
    CHECK_EQ_INT(json_integer_value(json_object_get(h, "slots_configured")), 8);
    const char *why = json_string_value(json_object_get(h, "slots_error"));
    CHECK(why && strstr(why, "cannot be allocated") && strstr(why, "1048576-position session needs") &&
          strstr(why, "device memory free"));
    char expect[64];
    snprintf(expect, sizeof expect, "slot %d cannot be allocated", n);
    CHECK(why && strstr(why, expect));
    json_decref(h);
    CHECK_EQ_INT(serve_metric(&d, "flashbox_slots_total"), n);
    CHECK_EQ_INT(serve_metric(&d, "flashbox_slots_configured"), 8);
    char *log = serve_slurp(d.log);
    CHECK(log && strstr(log, expect) != NULL);
    char ready[64];
    snprintf(ready, sizeof ready, ", %d slots)", n); /* "ready (MODEL, N slots)" */
    CHECK(log && strstr(log, ready) != NULL);
    free(log);
    /* the whole audit file: a slow start puts many /health polls before the event */
    char *audit = serve_slurp(d.audit);
    CHECK(audit && strstr(audit, "\"event\":\"slots_short\"") != NULL);
    free(audit);
    /* twice as many requests as slots at once: every one answered, in full */
    pid_t kids[16];
    const int n_req = 2 * n;
    REQUIRE(n_req <= 16);
    for (int i = 0; i < n_req; i++) {
        kids[i] = fork();
        REQUIRE(kids[i] >= 0);
        if (kids[i] == 0) {
            char body[256], *resp = NULL;
            snprintf(body, sizeof body, "{\"messages\":[{\"role\":\"user\",\"content\":\"slot %d\"}],\"max_tokens\":4,"
                                        "\"ignore_eos\":true,\"temperature\":0}", i);
            int ok = status_of(&d, body, &resp) == 200 && resp && strstr(resp, "\"completion_tokens\":4");
            _exit(ok ? 0 : 1);
        }
    }
    CHECK_EQ_INT(wait_kids(kids, n_req), n_req);
    CHECK_EQ_INT(WEXITSTATUS(serve_stop(&d, SIGTERM, 10000)), 0);
}

/* A short request arriving while a long prompt is read gets a step of its own: its whole
 * prompt (6 tokens here) without the long prompt's next chunk, which waits a step, so its
 * first token costs about its own prompt and not the step budget. Seen in the step-tokens
 * histogram: the long prompt's steps hold 16 tokens each, the short request's step 8 or
 * fewer (16 if the long chunk had filled it). */
TEST(serve_first_token_step_defers_a_long_prompt_chunk)
{
    const char *sets[] = { "model.backend=ref", "server.slots=2", "server.step_tokens=16", NULL };
    struct served d;
    REQUIRE(serve_start(&d, sets) == 0);
    pid_t kid = fork();
    REQUIRE(kid >= 0);
    if (kid == 0) {
        static char body[8192], content[6000];
        content[0] = 0;
        for (int k = 0; k < 700; k++) strcat(content, "waves "); /* about 2800 tokens */
        snprintf(body, sizeof body, "{\"messages\":[{\"role\":\"user\",\"content\":\"%s\"}],\"max_tokens\":1}", content);
        char *out = NULL;
        _exit(status_of(&d, body, &out) == 200 ? 0 : 1);
    }
    /* the long prompt is being read */
    double waiting = 0;
    for (int i = 0; i < 1000 && waiting < 1000; i++) {
        waiting = serve_metric(&d, "flashbox_prefill_tokens_waiting");
        if (waiting < 1000) usleep(10000);
    }
    CHECK(waiting >= 1000);
    const double small0 = serve_metric(&d, "flashbox_step_tokens_bucket{le=\"8\"}");
    CHECK_EQ_INT(small0, 0);
    char *out = NULL;
    CHECK_EQ_INT(status_of(&d, "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":1}", &out), 200);
    CHECK(out && strstr(out, "\"prompt_tokens\":6"));
    free(out);
    /* the long prompt was still being read when the short request got its answer */
    CHECK(serve_metric(&d, "flashbox_prefill_tokens_waiting") > 0);
    CHECK_EQ_INT(serve_metric(&d, "flashbox_step_tokens_bucket{le=\"8\"}"), 1);
    CHECK_EQ_INT(wait_kids(&kid, 1), 1);
    CHECK_EQ_INT(WEXITSTATUS(serve_stop(&d, SIGTERM, 10000)), 0);
}
