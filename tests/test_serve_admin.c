/* The daemon's update admin socket end to end: real daemon, real sockets, real signed
 * bundles of two distinguishable models (model-A, model-B: other names and seeds, so their
 * self-test tokens differ too). Install and rollback through the admin socket (with the
 * `flashbox update --admin-socket` client and with curl) while a stream runs on the API
 * socket; the refusals (other uid, bad bundle, second operation); a new slot whose model
 * does not load in the daemon; the grace period cutting a stream off. */
#include "tests/harness.h"
#include "tests/serve_client.h"
#include "tests/update_support.h"
#include "tools/mkmodel.h"

#include <fcntl.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct admin_box {
    struct upd_box b;
    char admin[700];
    char model_a[700], model_b[700];
    char bundle_a[700], bundle_b[700];
    char set[8][800];
    const char *sets[12];
};

static int write_model(const char *path, const char *name, uint64_t seed, uint32_t n_ff_exp)
{
    return upd_write_model(path, name, seed, n_ff_exp);
}

/* Keys, models A and B, their bundles (same epoch, so either way is a legal rollback),
 * A installed and active, and the daemon's settings (extra ones appended). */
static int box_setup(struct admin_box *x, const char *admin_sock, const char *const *extra)
{
    memset(x, 0, sizeof *x);
    if (upd_box_init(&x->b)) return -1;
    const char *t = test_tmpdir();
    snprintf(x->admin, sizeof x->admin, "%s", admin_sock);
    snprintf(x->model_a, sizeof x->model_a, "%s/a.gguf", t);
    snprintf(x->model_b, sizeof x->model_b, "%s/b.gguf", t);
    snprintf(x->bundle_a, sizeof x->bundle_a, "%s/a.fbx", t);
    snprintf(x->bundle_b, sizeof x->bundle_b, "%s/b.fbx", t);
    if (write_model(x->model_a, "model-A", 42, 0) || write_model(x->model_b, "model-B", 7, 0)) return -1;
    if (upd_make_bundle(&x->b, x->bundle_a, "1.0", 1, x->model_a, NULL) ||
        upd_make_bundle(&x->b, x->bundle_b, "2.0", 1, x->model_b, NULL))
        return -1;
    char out[4096];
    if (upd_cli(&x->b, out, sizeof out, "install", x->bundle_a)) {
        test_fail_at(__FILE__, __LINE__, "install A: %s", out);
        return -1;
    }
    int n = 0, k = 0;
    snprintf(x->set[k], sizeof x->set[k], "update.data_dir=%s", x->b.data);
    x->sets[n++] = x->set[k++];
    snprintf(x->set[k], sizeof x->set[k], "update.keys_dir=%s", x->b.keys);
    x->sets[n++] = x->set[k++];
    snprintf(x->set[k], sizeof x->set[k], "update.product=%s", x->b.cfg.product);
    x->sets[n++] = x->set[k++];
    snprintf(x->set[k], sizeof x->set[k], "server.admin_socket=%s", x->admin);
    x->sets[n++] = x->set[k++];
    for (int i = 0; extra && extra[i] && n < 11; i++) x->sets[n++] = extra[i];
    x->sets[n] = NULL;
    return 0;
}

static json_t *parse(const char *s)
{
    json_error_t je;
    json_t *o = s ? json_loads(s, 0, &je) : NULL;
    if (!o) test_fail_at(__FILE__, __LINE__, "not JSON: %.300s", s ? s : "(null)");
    return o;
}

/* GET /health: the model and slot it names (and its status word). */
static int health(const struct served *d, char *model, char *slot, char *status, char *reason)
{
    char *out;
    int st = serve_curl(d, "GET", "/health", NULL, &out, NULL);
    json_t *o = parse(out);
    free(out);
    if (!o) return -1;
    snprintf(model, 128, "%s", json_string_value(json_object_get(o, "model")) ?: "");
    snprintf(slot, 16, "%s", json_string_value(json_object_get(o, "slot")) ?: "");
    if (status) snprintf(status, 32, "%s", json_string_value(json_object_get(o, "status")) ?: "");
    if (reason) snprintf(reason, 512, "%s", json_string_value(json_object_get(o, "reason")) ?: "");
    json_decref(o);
    return st;
}

/* Reads fd until needle arrived (or timeout_ms); returns the bytes (malloc'd). */
static char *read_until(int fd, const char *needle, int timeout_ms)
{
    size_t len = 0, cap = 1 << 16;
    char *buf = malloc(cap);
    buf[0] = 0;
    struct timespec t0, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        if (strstr(buf, needle)) break;
        clock_gettime(CLOCK_MONOTONIC, &now);
        int left = timeout_ms - (int)((now.tv_sec - t0.tv_sec) * 1000 + (now.tv_nsec - t0.tv_nsec) / 1000000);
        struct pollfd p = { .fd = fd, .events = POLLIN };
        if (left <= 0 || poll(&p, 1, left) <= 0) break;
        if (len + 4096 + 1 > cap) buf = realloc(buf, cap *= 2);
        ssize_t n = read(fd, buf + len, cap - len - 1);
        if (n <= 0) break;
        len += (size_t)n;
        buf[len] = 0;
    }
    return buf;
}

/* A streaming completion of max_tokens on a keep-alive connection; returns the fd once the
 * first text arrived (the job is running), -1 otherwise. */
static int start_stream(const char *sock, int max_tokens)
{
    int fd = serve_connect(sock);
    if (fd < 0) return -1;
    char body[256], req[512];
    int bl = snprintf(body, sizeof body,
                      "{\"prompt\":\"go on\",\"max_tokens\":%d,\"temperature\":0,\"ignore_eos\":true,\"stream\":true}",
                      max_tokens);
    int rl = snprintf(req, sizeof req,
                      "POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                      "Content-Length: %d\r\n\r\n%s", bl, body);
    if (write(fd, req, (size_t)rl) != rl) {
        close(fd);
        return -1;
    }
    char *got = read_until(fd, "\"text\":", 10000);
    int ok = strstr(got, "\"text\":") != NULL;
    free(got);
    if (!ok) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Runs `flashbox update SUB [ARG] --admin-socket SOCK` in a child; its output goes to
 * out_path. Returns the child's pid. */
static pid_t cli_async(const char *sock, const char *sub, const char *arg, const char *out_path)
{
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        if (arg) execl(test_flashbox_bin(), test_flashbox_bin(), "update", sub, arg, "--admin-socket", sock, (char *)NULL);
        else execl(test_flashbox_bin(), test_flashbox_bin(), "update", sub, "--admin-socket", sock, (char *)NULL);
        _exit(127);
    }
    return pid;
}

static int wait_exit(pid_t pid)
{
    int st;
    if (waitpid(pid, &st, 0) != pid) return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* HTTP request on an already open keep-alive connection; returns the raw answer. */
static char *request_on(int fd, const char *line)
{
    char req[256];
    int n = snprintf(req, sizeof req, "%s HTTP/1.1\r\nHost: localhost\r\n\r\n", line);
    if (write(fd, req, (size_t)n) != n) return strdup("");
    return read_until(fd, "}\n", 10000);
}

TEST(admin_install_while_streaming_then_rollback)
{
    struct admin_box x;
    char admin[700];
    snprintf(admin, sizeof admin, "%s/run/adm.sock", test_tmpdir());
    const char *extra[] = { "server.slots=2", "update.reload_grace_s=120", NULL };
    REQUIRE(box_setup(&x, admin, extra) == 0);
    struct served d;
    REQUIRE(serve_start(&d, x.sets) == 0);
    char model[128], slot[16], status[32];
    CHECK_EQ_INT(health(&d, model, slot, NULL, NULL), 200);
    CHECK_STR(model, "model-A");
    CHECK_STR(slot, "a");

    /* A long stream on the API socket, running on model A (600 tokens: a second or two
     * here, longer than the install of a 15 MB bundle; much longer under sanitizers). */
    int fd = start_stream(d.sock, 600);
    REQUIRE(fd >= 0);
    char log[800];
    snprintf(log, sizeof log, "%s/install.out", test_tmpdir());
    pid_t cli = cli_async(x.admin, "install", x.bundle_b, log);
    REQUIRE(cli > 0);
    /* While the swap waits for the stream, a new request queues and then runs on model B.
     * (Should the stream end before the install does, there is no such moment to test;
     * the rest still holds, so that part is skipped rather than failed.) */
    int reloading = 0, stream_over = 0;
    for (int i = 0; i < 3000 && !reloading && !stream_over; i++) {
        char *out;
        if (serve_curl(&d, "GET", "/health", NULL, &out, NULL) == 200 && out) {
            reloading = strstr(out, "\"reloading\":true") != NULL;
            stream_over = strstr(out, "\"slots_busy\":0,") != NULL;
        }
        free(out);
        usleep(5000);
    }
    CHECK(reloading || stream_over);
    if (reloading) {
        int q = serve_connect(d.sock);
        REQUIRE(q >= 0);
        const char *body = "{\"prompt\":\"queued\",\"max_tokens\":3}";
        char req[512];
        int n = snprintf(req, sizeof req, "POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Length: %zu\r\n\r\n%s",
                         strlen(body), body);
        CHECK(write(q, req, (size_t)n) == n);
        char *ans = read_until(q, "}}\n", 120000);
        CHECK(strstr(ans, "HTTP/1.1 200") != NULL);
        CHECK(strstr(ans, "\"model\":\"model-B\"") != NULL);
        free(ans);
        close(q);
    } else {
        fprintf(stderr, "note: the stream ended before the install; the queued-request check was skipped\n");
    }
    CHECK_EQ_INT(wait_exit(cli), 0);
    char *text = serve_slurp(log);
    CHECK(strstr(text, "now serves model-B from slot b") != NULL);
    if (test_failed()) fprintf(stderr, "install output: %s\n", text);
    free(text);

    /* The stream ran to its end on model A: finish_reason length, no error. */
    char *stream = read_until(fd, "data: [DONE]", 120000);
    CHECK(strstr(stream, "data: [DONE]") != NULL);
    CHECK(strstr(stream, "\"finish_reason\":\"length\"") != NULL);
    CHECK(strstr(stream, "\"error\"") == NULL);
    CHECK(strstr(stream, "\"model\":\"model-A\"") != NULL);
    free(stream);
    /* The same connection is still open and now reports slot b, model B. */
    char *h = request_on(fd, "GET /health");
    CHECK(strstr(h, "HTTP/1.1 200") != NULL);
    CHECK(strstr(h, "\"model\":\"model-B\"") != NULL);
    CHECK(strstr(h, "\"slot\":\"b\"") != NULL);
    free(h);
    /* Serving the slot ended its boot trial. */
    struct update_status st;
    char err[512];
    REQUIRE(update_get_status(&x.b.cfg, &st, err, sizeof err) == 0);
    CHECK_EQ_INT(st.active, 1);
    CHECK_EQ_INT(st.trial, -1);

    /* Rollback through the admin socket: model A from slot a again, same connection. */
    pid_t rb = cli_async(x.admin, "rollback", NULL, log);
    CHECK_EQ_INT(wait_exit(rb), 0);
    text = serve_slurp(log);
    CHECK(strstr(text, "now serves model-A from slot a") != NULL);
    free(text);
    h = request_on(fd, "GET /health");
    CHECK(strstr(h, "\"model\":\"model-A\"") != NULL);
    CHECK(strstr(h, "\"slot\":\"a\"") != NULL);
    free(h);
    close(fd);
    CHECK_EQ_INT(health(&d, model, slot, status, NULL), 200);
    CHECK_STR(status, "ready");
    CHECK_STR(model, "model-A");

    pid_t stp = cli_async(x.admin, "status", NULL, log);
    CHECK_EQ_INT(wait_exit(stp), 0);
    text = serve_slurp(log);
    CHECK(strstr(text, "serving:     model-A from slot a (ready)") != NULL);
    CHECK(strstr(text, "slot a*  valid") != NULL);
    CHECK(strstr(text, "version 2.0") != NULL);
    free(text);
    CHECK_EQ_INT(WEXITSTATUS(serve_stop(&d, SIGTERM, 10000)), 0);
    CHECK(access(x.admin, F_OK) != 0); /* the daemon removed its admin socket */
}

TEST(admin_refuses_other_uids_bad_bundles_and_a_second_operation)
{
    /* A directory every uid may traverse, so only the socket's mode and SO_PEERCRED decide. */
    char dir[128], admin[200];
    snprintf(dir, sizeof dir, "/tmp/flashbox-adm-%d", (int)getpid());
    mkdir(dir, 0755);
    chmod(dir, 0755);
    snprintf(admin, sizeof admin, "%s/admin.sock", dir);
    const char *extra[] = { "server.slots=1", NULL };
    struct admin_box x;
    REQUIRE(box_setup(&x, admin, extra) == 0);
    /* Slow chunks (update module's test hook) keep an install running long enough to overlap. */
    setenv("FLASHBOX_UPDATE_TEST_DELAY_US", "3000", 1);
    struct served d;
    int started = serve_start(&d, x.sets);
    unsetenv("FLASHBOX_UPDATE_TEST_DELAY_US");
    REQUIRE(started == 0);

    struct stat sst;
    REQUIRE(stat(admin, &sst) == 0);
    CHECK(S_ISSOCK(sst.st_mode));
    CHECK_EQ_INT(sst.st_mode & 0777, 0600);
    char *out;
    if (getuid() == 0 && access("/usr/bin/setpriv", X_OK) == 0) {
        /* Mode 0600: another uid cannot even connect. */
        CHECK_EQ_INT(serve_curl_as(admin, 65534, "GET", "/admin/update/status", NULL, &out), -1);
        free(out);
        /* With the mode opened up, SO_PEERCRED still refuses it. */
        REQUIRE(chmod(admin, 0666) == 0);
        CHECK_EQ_INT(serve_curl_as(admin, 65534, "GET", "/admin/update/status", NULL, &out), 403);
        json_t *o = parse(out);
        CHECK_STR(json_string_value(json_object_get(json_object_get(o, "error"), "code")), "forbidden");
        json_decref(o);
        free(out);
        CHECK_EQ_INT(serve_curl_as(admin, 65534, "POST", "/admin/update/rollback", "{}", &out), 403);
        free(out);
        chmod(admin, 0600);
    }
    /* Root (the daemon's own uid here) gets the status. */
    CHECK_EQ_INT(serve_curl_as(admin, -1, "GET", "/admin/update/status", NULL, &out), 200);
    json_t *o = parse(out);
    CHECK_STR(json_string_value(json_object_get(json_object_get(o, "store"), "active")), "a");
    CHECK_STR(json_string_value(json_object_get(json_object_get(o, "serving"), "model")), "model-A");
    json_decref(o);
    free(out);

    /* Malformed requests. */
    CHECK_EQ_INT(serve_curl_as(admin, -1, "POST", "/admin/update/install", "{\"bundle\":\"relative.fbx\"}", &out), 400);
    free(out);
    CHECK_EQ_INT(serve_curl_as(admin, -1, "POST", "/admin/update/install", "{\"bundle\":1}", &out), 400);
    free(out);
    CHECK_EQ_INT(serve_curl_as(admin, -1, "GET", "/admin/update/install", NULL, &out), 405);
    free(out);
    CHECK_EQ_INT(serve_curl_as(admin, -1, "GET", "/v1/models", NULL, &out), 404);
    free(out);

    /* One flipped payload byte: refused, and model A keeps serving from slot a. */
    char bad[800], body[1000];
    snprintf(bad, sizeof bad, "%s/bad.fbx", test_tmpdir());
    REQUIRE(upd_copy_file(x.bundle_b, bad) == 0);
    REQUIRE(upd_flip_byte(bad, upd_payload_offset(bad) + 70000) == 0);
    snprintf(body, sizeof body, "{\"bundle\":\"%s\"}", bad);
    CHECK_EQ_INT(serve_curl_as(admin, -1, "POST", "/admin/update/install", body, &out), 422);
    o = parse(out);
    json_t *e = json_object_get(o, "error");
    CHECK_STR(json_string_value(json_object_get(e, "code")), "install_refused");
    CHECK(strstr(json_string_value(json_object_get(e, "message")) ?: "", "chunk 1") != NULL);
    CHECK(json_is_false(json_object_get(o, "active_slot_changed")));
    json_decref(o);
    free(out);
    char model[128], slot[16];
    CHECK_EQ_INT(health(&d, model, slot, NULL, NULL), 200);
    CHECK_STR(model, "model-A");
    CHECK_STR(slot, "a");
    CHECK_EQ_INT(serve_curl(&d, "POST", "/v1/completions", "{\"prompt\":\"still\",\"max_tokens\":2}", &out, NULL), 200);
    CHECK(out && strstr(out, "\"model\":\"model-A\"") != NULL);
    free(out);
    CHECK_EQ_INT(upd_active_slot(&x.b), 0);

    /* A second operation while an install runs: 409, and the first one completes. */
    char log[800];
    snprintf(log, sizeof log, "%s/install.out", test_tmpdir());
    pid_t cli = cli_async(admin, "install", x.bundle_b, log);
    int running = 0;
    for (int i = 0; i < 1000 && !running; i++) {
        if (serve_curl_as(admin, -1, "GET", "/admin/update/status", NULL, &out) == 200 && out &&
            strstr(out, "\"running\":true"))
            running = 1;
        free(out);
        if (!running) usleep(5000);
    }
    CHECK(running);
    snprintf(body, sizeof body, "{\"bundle\":\"%s\"}", x.bundle_a);
    CHECK_EQ_INT(serve_curl_as(admin, -1, "POST", "/admin/update/install", body, &out), 409);
    o = parse(out);
    CHECK_STR(json_string_value(json_object_get(json_object_get(o, "error"), "code")), "busy");
    json_decref(o);
    free(out);
    CHECK_EQ_INT(serve_curl_as(admin, -1, "POST", "/admin/update/rollback", NULL, &out), 409);
    free(out);
    CHECK_EQ_INT(wait_exit(cli), 0);
    CHECK_EQ_INT(health(&d, model, slot, NULL, NULL), 200);
    CHECK_STR(model, "model-B");
    CHECK_STR(slot, "b");
    CHECK_EQ_INT(WEXITSTATUS(serve_stop(&d, SIGTERM, 10000)), 0);

    /* The audit log names the refused peer and the operations. */
    FILE *f = fopen(d.audit, "r");
    REQUIRE(f != NULL);
    char line[4096];
    int denied = 0, installs = 0;
    while (fgets(line, sizeof line, f)) {
        if (strstr(line, "\"event\":\"denied\"") && strstr(line, "\"peer_uid\":65534")) denied = 1;
        if (strstr(line, "\"event\":\"update_install\"")) installs++;
    }
    fclose(f);
    if (getuid() == 0 && access("/usr/bin/setpriv", X_OK) == 0) CHECK(denied);
    CHECK_EQ_INT(installs, 2); /* the refused one and the good one; not the 409 */
    rmdir(dir);
}

TEST(admin_unloadable_slot_keeps_old_model_degraded)
{
    /* The daemon pages experts through a 1 MiB cache: model A's experts (196 KiB) fit five
     * at a time, model C's (768 KiB, n_ff_exp 512) one, fewer than the two a token needs.
     * The install's self-test loads C without a cache and passes; the daemon cannot. */
    char admin[700];
    snprintf(admin, sizeof admin, "%s/run/adm.sock", test_tmpdir());
    const char *extra[] = { "server.slots=1", "model.expert_cache_mb=1", "update.reload_grace_s=0", NULL };
    struct admin_box x;
    REQUIRE(box_setup(&x, admin, extra) == 0);
    char model_c[800], bundle_c[800];
    snprintf(model_c, sizeof model_c, "%s/c.gguf", test_tmpdir());
    snprintf(bundle_c, sizeof bundle_c, "%s/c.fbx", test_tmpdir());
    REQUIRE(write_model(model_c, "model-C", 9, 512) == 0);
    REQUIRE(upd_make_bundle(&x.b, bundle_c, "3.0", 1, model_c, NULL) == 0);
    struct served d;
    REQUIRE(serve_start(&d, x.sets) == 0);

    char body[1000], *out;
    snprintf(body, sizeof body, "{\"bundle\":\"%s\"}", bundle_c);
    CHECK_EQ_INT(serve_curl_as(admin, -1, "POST", "/admin/update/install", body, &out), 200);
    json_t *o = parse(out);
    CHECK(json_is_false(json_object_get(o, "ok")));
    CHECK(json_is_true(json_object_get(o, "active_slot_changed")));
    json_t *r = json_object_get(o, "reload");
    CHECK(json_is_false(json_object_get(r, "ok")));
    CHECK_STR(json_string_value(json_object_get(r, "slot")), "a");
    CHECK_STR(json_string_value(json_object_get(r, "model")), "model-A");
    CHECK(strstr(json_string_value(json_object_get(r, "error")) ?: "", "expert cache") != NULL);
    json_decref(o);
    free(out);
    char model[128], slot[16], status[32], reason[512];
    CHECK_EQ_INT(health(&d, model, slot, status, reason), 200);
    CHECK_STR(status, "degraded");
    CHECK_STR(model, "model-A");
    CHECK_STR(slot, "a");
    CHECK(strstr(reason, "active slot b did not load") != NULL);
    CHECK_EQ_INT(serve_curl(&d, "POST", "/v1/completions", "{\"prompt\":\"still\",\"max_tokens\":2}", &out, NULL), 200);
    CHECK(out && strstr(out, "\"model\":\"model-A\"") != NULL);
    free(out);
    /* The CLI says so and fails. */
    char log[800];
    snprintf(log, sizeof log, "%s/cli.out", test_tmpdir());
    CHECK_EQ_INT(wait_exit(cli_async(admin, "status", NULL, log)), 0);
    char *text = serve_slurp(log);
    CHECK(strstr(text, "serving:     model-A from slot a (degraded)") != NULL);
    CHECK(strstr(text, "slot b*  valid") != NULL);
    free(text);

    /* Rollback with a zero grace period: the running stream is cut off with a "reload"
     * error event, and model A is opened again from slot a; /health is ready again. */
    int fd = start_stream(d.sock, 3000);
    REQUIRE(fd >= 0);
    CHECK_EQ_INT(wait_exit(cli_async(admin, "rollback", NULL, log)), 0);
    text = serve_slurp(log);
    CHECK(strstr(text, "now serves model-A from slot a (1 generation(s) cut off") != NULL);
    if (test_failed()) fprintf(stderr, "rollback output: %s\n", text);
    free(text);
    char *stream = read_until(fd, "data: [DONE]", 30000);
    CHECK(strstr(stream, "\"code\":\"reload\"") != NULL);
    CHECK(strstr(stream, "data: [DONE]") != NULL);
    free(stream);
    close(fd);
    CHECK_EQ_INT(health(&d, model, slot, status, reason), 200);
    CHECK_STR(status, "ready");
    CHECK_STR(reason, "");
    CHECK_STR(slot, "a");
    CHECK_EQ_INT(WEXITSTATUS(serve_stop(&d, SIGTERM, 10000)), 0);
}

TEST(admin_unloadable_slot_falls_back_after_failed_starts)
{
    /* Installed offline (no daemon running): model C becomes active under boot trial, but
     * this daemon's 1 MiB expert cache cannot hold it. Each start fails and counts; the
     * start after max_boot_attempts falls back to slot a and records why. */
    const char *extra[] = { "server.slots=1", "model.expert_cache_mb=1", "update.max_boot_attempts=2", NULL };
    struct admin_box x;
    REQUIRE(box_setup(&x, "none", extra) == 0);
    char model_c[800], bundle_c[800], out[8192];
    snprintf(model_c, sizeof model_c, "%s/c.gguf", test_tmpdir());
    snprintf(bundle_c, sizeof bundle_c, "%s/c.fbx", test_tmpdir());
    REQUIRE(write_model(model_c, "model-C", 9, 512) == 0);
    REQUIRE(upd_make_bundle(&x.b, bundle_c, "3.0", 1, model_c, NULL) == 0);
    REQUIRE(upd_cli(&x.b, out, sizeof out, "install", bundle_c) == 0);
    CHECK_EQ_INT(upd_active_slot(&x.b), 1);
    char args[4096];
    int off = 0;
    for (int i = 0; x.sets[i]; i++) off += snprintf(args + off, sizeof args - off, " --set '%s'", x.sets[i]);
    for (int attempt = 1; attempt <= 2; attempt++) {
        int rc = upd_sh(out, sizeof out, "timeout 60 %s serve -m %s --socket %s/f.sock%s", test_flashbox_bin(),
                        x.model_a, test_tmpdir(), args);
        CHECK_EQ_INT(rc, 1);
        CHECK(strstr(out, "expert cache") != NULL);
        struct update_status st;
        REQUIRE(update_get_status(&x.b.cfg, &st, out, sizeof out) == 0);
        CHECK_EQ_INT(st.trial, 1);
        CHECK_EQ_INT(st.boot_attempts, attempt);
    }
    struct served d;
    REQUIRE(serve_start(&d, x.sets) == 0);
    char model[128], slot[16], status[32];
    CHECK_EQ_INT(health(&d, model, slot, status, NULL), 200);
    CHECK_STR(model, "model-A");
    CHECK_STR(slot, "a");
    struct update_status st;
    REQUIRE(update_get_status(&x.b.cfg, &st, out, sizeof out) == 0);
    CHECK_EQ_INT(st.active, 0);
    CHECK_EQ_INT(st.trial, -1);
    CHECK(strstr(st.last_fallback, "slot b did not become ready in 2 starts; fell back to slot a") != NULL);
    CHECK_EQ_INT(WEXITSTATUS(serve_stop(&d, SIGTERM, 10000)), 0);
}

TEST(admin_fifo_bundle_refused_next_install_runs)
{
    /* Issue 21: a FIFO as the bundle used to block the operation thread in open() for ever,
     * every later install got 409 busy, and SIGTERM waited for it. */
    char admin[700];
    snprintf(admin, sizeof admin, "%s/run/adm.sock", test_tmpdir());
    const char *extra[] = { "server.slots=1", NULL };
    struct admin_box x;
    REQUIRE(box_setup(&x, admin, extra) == 0);
    char fifo[800], body[1000], *out;
    snprintf(fifo, sizeof fifo, "%s/stalled.fbx", test_tmpdir());
    REQUIRE(mkfifo(fifo, 0600) == 0);
    struct served d;
    REQUIRE(serve_start(&d, x.sets) == 0);
    snprintf(body, sizeof body, "{\"bundle\":\"%s\"}", fifo);
    CHECK_EQ_INT(serve_curl_as(admin, -1, "POST", "/admin/update/install", body, &out), 422);
    json_t *o = parse(out);
    json_t *e = json_object_get(o, "error");
    CHECK_STR(json_string_value(json_object_get(e, "code")), "install_refused");
    CHECK(strstr(json_string_value(json_object_get(e, "message")) ?: "", "is a FIFO (named pipe), not a regular file"));
    json_decref(o);
    free(out);
    /* The next install is not refused as busy, and it goes through. */
    snprintf(body, sizeof body, "{\"bundle\":\"%s\"}", x.bundle_b);
    CHECK_EQ_INT(serve_curl_as(admin, -1, "POST", "/admin/update/install", body, &out), 200);
    o = parse(out);
    CHECK(json_is_true(json_object_get(o, "ok")));
    json_decref(o);
    free(out);
    char model[128], slot[16];
    CHECK_EQ_INT(health(&d, model, slot, NULL, NULL), 200);
    CHECK_STR(model, "model-B");
    CHECK_EQ_INT(WEXITSTATUS(serve_stop(&d, SIGTERM, 10000)), 0);
}

/* Waits up to timeout_ms for a child; kills it after that. Its exit status, or -1. */
static int wait_exit_bounded(pid_t pid, int timeout_ms)
{
    for (int waited = 0;; waited += 10) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
        if (waited >= timeout_ms) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            return -1;
        }
        usleep(10000);
    }
}

/* Polls the admin status until an operation reports the write phase (up to 10 s). */
static int wait_phase_write(const char *admin)
{
    for (int i = 0; i < 1000; i++) {
        char *out;
        int hit = serve_curl_as(admin, -1, "GET", "/admin/update/status", NULL, &out) == 200 && out &&
                  strstr(out, "\"phase\":\"write\"");
        free(out);
        if (hit) return 1;
        usleep(10000);
    }
    return 0;
}

/* After a stopped install: slot a still active and valid, slot b invalid, no trial. */
static void check_store_unchanged(const struct admin_box *x)
{
    struct update_status st;
    char err[512];
    REQUIRE(update_get_status(&x->b.cfg, &st, err, sizeof err) == 0);
    CHECK_EQ_INT(st.active, 0);
    CHECK(st.slots[0].valid);
    CHECK(!st.slots[1].valid);
    CHECK_EQ_INT(st.trial, -1);
}

TEST(admin_sigterm_ends_daemon_despite_stalled_install)
{
    /* The 3rd chunk read never returns (update module's test hook), like a read from a
     * stalled mount: cancellation can not reach it, yet SIGTERM must end the daemon. */
    char admin[700];
    snprintf(admin, sizeof admin, "%s/run/adm.sock", test_tmpdir());
    const char *extra[] = { "server.slots=1", "server.shutdown_grace_s=1", NULL };
    struct admin_box x;
    REQUIRE(box_setup(&x, admin, extra) == 0);
    setenv("FLASHBOX_UPDATE_TEST_STALL_CHUNK", "3", 1);
    struct served d;
    int started = serve_start(&d, x.sets);
    unsetenv("FLASHBOX_UPDATE_TEST_STALL_CHUNK");
    REQUIRE(started == 0);
    char log[800];
    snprintf(log, sizeof log, "%s/install.out", test_tmpdir());
    pid_t cli = cli_async(admin, "install", x.bundle_b, log);
    REQUIRE(cli > 0);
    CHECK(wait_phase_write(admin));
    /* The bound is generous (sanitizers, a loaded machine): without the fix it never exits. */
    int ws = serve_stop(&d, SIGTERM, 30000);
    CHECK(ws != -1 && WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
    /* The waiting client got an answer (503 stopping) or a closed connection: it ends. */
    int crc = wait_exit_bounded(cli, 30000);
    CHECK(crc != 0 && crc != -1);
    char *text = serve_slurp(d.log);
    CHECK(strstr(text, "the update operation did not end after it was cancelled") != NULL);
    if (test_failed()) fprintf(stderr, "daemon log: %s\n", text);
    free(text);
    check_store_unchanged(&x);

    /* A later daemon installs the same bundle: no stale lock, no busy operation. */
    REQUIRE(serve_start(&d, x.sets) == 0);
    char body[1000], *out;
    snprintf(body, sizeof body, "{\"bundle\":\"%s\"}", x.bundle_b);
    CHECK_EQ_INT(serve_curl_as(admin, -1, "POST", "/admin/update/install", body, &out), 200);
    CHECK(out && strstr(out, "\"ok\":true") != NULL);
    free(out);
    char model[128], slot[16];
    CHECK_EQ_INT(health(&d, model, slot, NULL, NULL), 200);
    CHECK_STR(model, "model-B");
    CHECK_EQ_INT(WEXITSTATUS(serve_stop(&d, SIGTERM, 10000)), 0);
}

TEST(admin_install_cancelled_by_deadline_and_by_sigterm)
{
    /* Slow chunks (20 ms each, about 240 of them): the install runs for seconds. */
    char admin[700];
    snprintf(admin, sizeof admin, "%s/run/adm.sock", test_tmpdir());
    const char *extra[] = { "server.slots=1", "server.shutdown_grace_s=1", "update.operation_timeout_s=1", NULL };
    struct admin_box x;
    REQUIRE(box_setup(&x, admin, extra) == 0);
    setenv("FLASHBOX_UPDATE_TEST_DELAY_US", "20000", 1);
    struct served d;
    REQUIRE(serve_start(&d, x.sets) == 0);
    /* Past its 1 s deadline the install stops at the next chunk and says why. */
    char body[1000], *out;
    snprintf(body, sizeof body, "{\"bundle\":\"%s\"}", x.bundle_b);
    CHECK_EQ_INT(serve_curl_as(admin, -1, "POST", "/admin/update/install", body, &out), 422);
    CHECK(out && strstr(out, "install cancelled: it ran longer than update.operation_timeout_s = 1 s") != NULL);
    if (test_failed()) fprintf(stderr, "answer: %s\n", out ? out : "(none)");
    free(out);
    check_store_unchanged(&x);
    CHECK_EQ_INT(WEXITSTATUS(serve_stop(&d, SIGTERM, 10000)), 0);

    /* With the default deadline, SIGTERM cancels it after the 1 s grace period; the daemon
     * exits cleanly (the operation ended, nothing left behind). */
    x.sets[6] = NULL; /* drop update.operation_timeout_s */
    REQUIRE(serve_start(&d, x.sets) == 0);
    char log[800];
    snprintf(log, sizeof log, "%s/install.out", test_tmpdir());
    pid_t cli = cli_async(admin, "install", x.bundle_b, log);
    REQUIRE(cli > 0);
    CHECK(wait_phase_write(admin));
    int ws = serve_stop(&d, SIGTERM, 30000);
    unsetenv("FLASHBOX_UPDATE_TEST_DELAY_US");
    CHECK(ws != -1 && WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
    CHECK(wait_exit_bounded(cli, 30000) > 0);
    char *text = serve_slurp(d.log);
    CHECK(strstr(text, "did not end after it was cancelled") == NULL);
    free(text);
    text = serve_slurp(d.audit);
    CHECK(strstr(text, "install cancelled: the daemon is stopping") != NULL);
    if (test_failed()) fprintf(stderr, "audit: %s\n", text);
    free(text);
    check_store_unchanged(&x);
    /* The store takes the next install (offline here). */
    char cli_out[4096];
    CHECK_EQ_INT(upd_cli(&x.b, cli_out, sizeof cli_out, "install", x.bundle_b), 0);
    CHECK_EQ_INT(upd_active_slot(&x.b), 1);
}
