/* Faults around the appliance (issue 21): paths that are not regular files are refused at
 * once (safe_open and every user-named file behind it); a lost or wedged GPU (Vulkan fault
 * injection on lavapipe) fails the step with a clear error and a reopened backend answers
 * as before, and a step wedged in its fence wait stops the daemon's watchdog pings; expert
 * reads that fail or return other bytes fail the step, never the answer. The daemon's
 * GPU-loss tests (serve_gpu_loss_*) are here too; its update-operation faults (a stalled
 * install, SIGTERM during one) live in test_serve_admin.c. */
#include "common/safe_open.h"
#include "engine/engine.h"
#include "engine/model/gguf.h"
#include "engine/experts/expert_store.h"
#include "engine/vulkan/vk_device.h"
#include "firmware/config.h"
#include "tests/harness.h"
#include "tests/serve_client.h"
#include "tests/update_support.h"
#include "tools/mkmodel.h"

#include <errno.h>
#include <signal.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

/* A listening Unix socket bound at path (kept open by the caller). */
static int bind_socket(const char *path)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof sa.sun_path) return -1;
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(fd, 1) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

TEST(safe_open_refuses_fifo_dir_socket_device_and_says_what_it_is)
{
    const char *t = test_tmpdir();
    char fifo[600], sock[600], file[600], link[600], err[1024];
    snprintf(fifo, sizeof fifo, "%s/pipe", t);
    snprintf(sock, sizeof sock, "/tmp/flashbox-faults-%d.sock", (int)getpid()); /* sun_path: 108 bytes */
    snprintf(file, sizeof file, "%s/plain", t);
    snprintf(link, sizeof link, "%s/link", t);
    REQUIRE(mkfifo(fifo, 0600) == 0);
    int lfd = bind_socket(sock);
    REQUIRE(lfd >= 0);
    FILE *f = fopen(file, "w");
    REQUIRE(f != NULL);
    fputs("x", f);
    fclose(f);
    REQUIRE(symlink(file, link) == 0);

    /* A FIFO with no writer: a plain open() would block here forever. Read and write side. */
    CHECK_EQ_INT(safe_open(fifo, O_RDONLY, 0, err, sizeof err), -1);
    CHECK(strstr(err, fifo) != NULL && strstr(err, "is a FIFO (named pipe), not a regular file") != NULL);
    CHECK_EQ_INT(errno, EINVAL);
    CHECK_EQ_INT(safe_open(fifo, O_WRONLY | O_TRUNC, 0, err, sizeof err), -1);
    CHECK(strstr(err, "is a FIFO") != NULL);
    CHECK_EQ_INT(safe_open(t, O_RDONLY, 0, err, sizeof err), -1);
    CHECK(strstr(err, "is a directory") != NULL);
    CHECK_EQ_INT(safe_open(t, O_WRONLY, 0, err, sizeof err), -1);
    CHECK(strstr(err, "is a directory") != NULL);
    CHECK_EQ_INT(safe_open(sock, O_RDONLY, 0, err, sizeof err), -1);
    CHECK(strstr(err, "is a socket") != NULL);
    CHECK_EQ_INT(safe_open("/dev/null", O_RDONLY, 0, err, sizeof err), -1);
    CHECK(strstr(err, "/dev/null: is a character device") != NULL);
    /* A missing file keeps open's errno and message. */
    char missing[700];
    snprintf(missing, sizeof missing, "%s/none", t);
    CHECK_EQ_INT(safe_open(missing, O_RDONLY, 0, err, sizeof err), -1);
    CHECK_EQ_INT(errno, ENOENT);
    CHECK(strstr(err, "No such file") != NULL);
    /* A symlink: followed by default, refused with O_NOFOLLOW (a managed directory). */
    int fd = safe_open(link, O_RDONLY, 0, err, sizeof err);
    CHECK(fd >= 0);
    if (fd >= 0) close(fd);
    CHECK_EQ_INT(safe_open(link, O_WRONLY | O_TRUNC | O_NOFOLLOW, 0, err, sizeof err), -1);
    CHECK(strstr(err, "is a symbolic link") != NULL);
    /* A regular file opens, and its descriptor is blocking and close-on-exec again. */
    fd = safe_open(file, O_RDWR, 0, err, sizeof err);
    REQUIRE(fd >= 0);
    CHECK_EQ_INT(fcntl(fd, F_GETFL) & O_NONBLOCK, 0);
    CHECK(fcntl(fd, F_GETFD) & FD_CLOEXEC);
    close(fd);
    close(lfd);
    unlink(sock);
}

TEST(config_file_that_is_a_fifo_is_refused_at_once)
{
    char fifo[600], err[1024];
    snprintf(fifo, sizeof fifo, "%s/flashbox.conf", test_tmpdir());
    REQUIRE(mkfifo(fifo, 0600) == 0);
    struct serve_config c;
    config_default(&c);
    CHECK_EQ_INT(config_load_file(&c, fifo, err, sizeof err), -1);
    CHECK(strstr(err, "is a FIFO") != NULL);
}

TEST(update_verify_of_a_fifo_returns_at_once_with_a_clear_error)
{
    struct upd_box b;
    REQUIRE(upd_box_init(&b) == 0);
    char fifo[700], out[4096];
    snprintf(fifo, sizeof fifo, "%s/bundle.fbx", test_tmpdir());
    REQUIRE(mkfifo(fifo, 0600) == 0);
    /* `timeout` turns the old hang into exit status 124 instead of a stuck test run. */
    int rc = upd_sh(out, sizeof out, "timeout 30 %s update verify %s --data-dir %s --keys %s", test_flashbox_bin(), fifo,
                    b.data, b.keys);
    CHECK_EQ_INT(rc, 1);
    CHECK(strstr(out, "is a FIFO (named pipe), not a regular file") != NULL);
    if (test_failed()) fprintf(stderr, "output: %s\n", out);
    /* The same for install, and for a key file that is a FIFO in the key directory's place. */
    rc = upd_sh(out, sizeof out, "timeout 30 %s update install %s --data-dir %s --keys %s", test_flashbox_bin(), fifo,
                b.data, b.keys);
    CHECK_EQ_INT(rc, 1);
    CHECK(strstr(out, "is a FIFO") != NULL);
    rc = upd_sh(out, sizeof out, "timeout 30 %s bundle create --key %s --product p --version 1 --epoch 1 --model %s "
                "--out %s/x.fbx", test_flashbox_bin(), fifo, fifo, test_tmpdir());
    CHECK(rc != 0 && rc != 124);
    CHECK(strstr(out, "is a FIFO") != NULL);
    if (test_failed()) fprintf(stderr, "output: %s\n", out);
}

/* ---- the GPU can be lost (Vulkan fault injection on lavapipe) ---- */

enum { FAULT_N_TOK = 5 };

/* The default tiny model at <tmpdir>/tiny.gguf; its path into path. */
static int write_tiny(char *path, size_t path_len)
{
    char err[512];
    snprintf(path, path_len, "%s/tiny.gguf", test_tmpdir());
    struct mkmodel_config c;
    mkmodel_defaults(&c);
    if (mkmodel_write(&c, path, err, sizeof err) == 0) return 0;
    test_fail_at(__FILE__, __LINE__, "mkmodel: %s", err);
    return -1;
}

static int open_vk(struct engine **e, const char *path, char *err, size_t err_len)
{
    struct engine_options o;
    engine_options_default(&o);
    o.model_path = path;
    o.backend = ENGINE_BACKEND_VULKAN;
    if (engine_open(e, &o, err, err_len) == 0) return 0;
    if (strstr(err, "no Vulkan driver") || strstr(err, "no Vulkan device")) test_skip(err);
    return -1;
}

/* Logits of FAULT_N_TOK fixed tokens fed one at a time (each a submit and a fence wait). */
static int eval_tokens(struct engine *e, float *logits, uint32_t n_vocab, char *err, size_t err_len)
{
    static const int32_t toks[FAULT_N_TOK] = { 1, 7, 19, 3, 11 };
    struct session *s;
    if (session_create(e, 64, &s, err, err_len)) return -1;
    int rc = 0;
    for (int i = 0; i < FAULT_N_TOK && !rc; i++)
        rc = session_eval(s, &toks[i], 1, logits + (size_t)i * n_vocab, false, err, err_len);
    session_destroy(s);
    return rc;
}

TEST(vk_device_loss_fails_the_step_and_a_reopened_backend_answers_the_same)
{
    char path[600], err[512];
    REQUIRE(write_tiny(path, sizeof path) == 0);
    struct engine *e;
    REQUIRE(open_vk(&e, path, err, sizeof err) == 0);
    struct engine_info info;
    engine_get_info(e, &info);
    size_t n = (size_t)FAULT_N_TOK * info.n_vocab;
    float *good = malloc(n * sizeof *good), *again = malloc(n * sizeof *again);
    REQUIRE(good && again);
    REQUIRE(eval_tokens(e, good, info.n_vocab, err, sizeof err) == 0);

    /* The 2nd submit from now on reports VK_ERROR_DEVICE_LOST: the step fails, naming it. */
    vk_fault_configure("submit:2+");
    CHECK_EQ_INT(eval_tokens(e, again, info.n_vocab, err, sizeof err), -1);
    CHECK(strstr(err, "GPU device lost: vkQueueSubmit: VK_ERROR_DEVICE_LOST") != NULL);
    /* Lost stays lost, even with the injection off: nothing is submitted to it again. */
    vk_fault_configure("");
    CHECK_EQ_INT(eval_tokens(e, again, info.n_vocab, err, sizeof err), -1);
    CHECK(strstr(err, "lost earlier") != NULL);
    if (test_failed()) fprintf(stderr, "error: %s\n", err);
    engine_close(e); /* teardown of a lost backend returns */

    /* A fence that never signals within the timeout counts as a loss too. */
    REQUIRE(open_vk(&e, path, err, sizeof err) == 0);
    vk_fault_configure("fence:1");
    CHECK_EQ_INT(eval_tokens(e, again, info.n_vocab, err, sizeof err), -1);
    CHECK(strstr(err, "vkWaitForFences: VK_TIMEOUT") != NULL);
    vk_fault_configure("");
    engine_close(e);

    /* So does a wedged one (the wait held until the 1 s fence timeout): the 3rd wait. */
    REQUIRE(open_vk(&e, path, err, sizeof err) == 0);
    setenv("FLASHBOX_VK_FENCE_TIMEOUT_S", "1", 1);
    vk_fault_configure("stall:3");
    CHECK_EQ_INT(eval_tokens(e, again, info.n_vocab, err, sizeof err), -1);
    CHECK(strstr(err, "vkWaitForFences: VK_TIMEOUT (the GPU did not finish within the fence timeout)") != NULL);
    vk_fault_configure("");
    unsetenv("FLASHBOX_VK_FENCE_TIMEOUT_S");
    engine_close(e);

    /* An allocation failure at open is a clean error, not a crash. */
    vk_fault_configure("alloc:1");
    CHECK_EQ_INT(open_vk(&e, path, err, sizeof err), -1);
    CHECK(strstr(err, "VK_ERROR_OUT_OF_DEVICE_MEMORY") != NULL);
    vk_fault_configure("");

    /* Reopened (weights uploaded again), the backend answers bit for bit as before. */
    REQUIRE(open_vk(&e, path, err, sizeof err) == 0);
    CHECK_EQ_INT(eval_tokens(e, again, info.n_vocab, err, sizeof err), 0);
    CHECK(memcmp(good, again, n * sizeof *good) == 0);
    engine_close(e);
    free(good);
    free(again);
}

TEST(vk_fault_switch_in_the_environment_fails_a_run_with_a_clear_error)
{
    char path[600], out[8192], cmd[2048];
    REQUIRE(write_tiny(path, sizeof path) == 0);
    snprintf(cmd, sizeof cmd, "FLASHBOX_VK_FAULT=submit:1+ timeout 120 %s logits -m %s --backend vulkan --tokens 1,2 --top 1 2>&1",
             test_flashbox_bin(), path);
    int rc = test_run_cmd(cmd, out, sizeof out);
    if (strstr(out, "no Vulkan")) test_skip("no Vulkan");
    CHECK(rc != 0 && rc != 124);
    CHECK(strstr(out, "VK_ERROR_DEVICE_LOST") != NULL);
    if (test_failed()) fprintf(stderr, "output: %s\n", out);
}

/* ---- the daemon on a lost GPU ---- */

/* Polls /health until its body contains want (up to 60 s); returns the last body. */
static char *health_until(const struct served *d, const char *want)
{
    char *out = NULL;
    for (int i = 0; i < 600; i++) {
        free(out);
        out = NULL;
        serve_curl(d, "GET", "/health", NULL, &out, NULL);
        if (out && strstr(out, want)) break;
        usleep(100000);
    }
    return out;
}

static const char *const GPU_REQ = "{\"prompt\":\"hello\",\"max_tokens\":6,\"temperature\":0,\"ignore_eos\":true}";

/* Starts the daemon on Vulkan with one slot (and extra, a --set, or NULL) under
 * FLASHBOX_VK_FAULT=fault; skips the test where there is no Vulkan driver. 0 or -1. */
static int serve_vk_fault(struct served *d, const char *fault, const char *extra)
{
    const char *sets[] = { "model.backend=vulkan", "server.slots=1", extra, NULL };
    setenv("FLASHBOX_VK_FAULT", fault, 1);
    int started = serve_start(d, sets);
    unsetenv("FLASHBOX_VK_FAULT");
    if (started && access("/usr/share/vulkan/icd.d", F_OK) != 0) test_skip("no Vulkan driver");
    return started;
}

TEST(serve_gpu_loss_fails_with_503_and_the_backend_reopens)
{
    /* Each request is a few forward steps (a prefill chunk, then one per token): the 10th
     * step submit of the daemon, in the second request, reports VK_ERROR_DEVICE_LOST. */
    struct served d;
    REQUIRE(serve_vk_fault(&d, "submit:10", NULL) == 0);
    char *first = NULL, *out = NULL;
    CHECK_EQ_INT(serve_curl(&d, "POST", "/v1/completions", GPU_REQ, &first, NULL), 200);
    CHECK_EQ_INT(serve_curl(&d, "POST", "/v1/completions", GPU_REQ, &out, NULL), 503);
    CHECK(out && strstr(out, "\"code\":\"device_lost\"") && strstr(out, "VK_ERROR_DEVICE_LOST"));
    if (test_failed()) fprintf(stderr, "answer: %s\n", out ? out : "(none)");
    free(out);
    /* /health said degraded (a reason naming the loss) until the backend was reopened. */
    char *h = health_until(&d, "\"status\":\"ready\"");
    CHECK(h && strstr(h, "\"status\":\"ready\""));
    free(h);
    /* The reopened backend answers exactly as before the loss. */
    CHECK_EQ_INT(serve_curl(&d, "POST", "/v1/completions", GPU_REQ, &out, NULL), 200);
    const char *a = first ? strstr(first, "\"text\":") : NULL, *b = out ? strstr(out, "\"text\":") : NULL;
    CHECK(a && b && strncmp(a, b, strcspn(a, "}")) == 0);
    free(first);
    free(out);
    CHECK_EQ_INT(WEXITSTATUS(serve_stop(&d, SIGTERM, 20000)), 0);
    char *audit = serve_slurp(d.audit);
    CHECK(audit && strstr(audit, "\"event\":\"device_lost\"") && strstr(audit, "\"event\":\"device_recovered\""));
    free(audit);
}

TEST(serve_gpu_loss_stays_degraded_when_reopen_fails)
{
    /* The model file is gone by the time the backend is reopened (the running engine
     * keeps its mapping): two tries fail, /health stays degraded and says why. */
    struct served d;
    REQUIRE(serve_vk_fault(&d, "submit:3+", "server.device_recover_tries=2") == 0);
    REQUIRE(unlink(d.model) == 0);
    char *out = NULL;
    CHECK_EQ_INT(serve_curl(&d, "POST", "/v1/completions", GPU_REQ, &out, NULL), 503);
    free(out);
    char *h = health_until(&d, "did not reopen in 2 tries");
    CHECK(h && strstr(h, "\"status\":\"degraded\"") && strstr(h, "did not reopen in 2 tries") &&
          strstr(h, "No such file"));
    if (test_failed()) fprintf(stderr, "health: %s\n", h ? h : "(none)");
    free(h);
    /* Still degraded, still answering (503, not a hang), and it stops when asked. */
    CHECK_EQ_INT(serve_curl(&d, "POST", "/v1/completions", GPU_REQ, &out, NULL), 503);
    free(out);
    CHECK_EQ_INT(WEXITSTATUS(serve_stop(&d, SIGTERM, 20000)), 0);
}

/* Counts occurrences of needle in hay. */
static int count_of(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay; p && (p = strstr(p, needle)); p += strlen(needle)) n++;
    return n;
}

/* Waits (up to 60 s) for the nth reopen in the audit log (an answer can come before
 * /health turns degraded), then checks that /health is ready. */
static void wait_reopened(const struct served *d, int nth)
{
    int reopened = 0;
    for (int i = 0; i < 600 && reopened < nth; i++) {
        char *audit = serve_slurp(d->audit);
        reopened = count_of(audit, "\"event\":\"device_recovered\"");
        free(audit);
        if (reopened < nth) usleep(100000);
    }
    CHECK_EQ_INT(reopened, nth);
    char *h = health_until(d, "\"status\":\"ready\"");
    CHECK(h && strstr(h, "\"status\":\"ready\""));
    free(h);
}

/* POSTs body to path on a daemon whose GPU is lost at every step, as its nth request;
 * checks the HTTP status and waits for the nth reopen. Returns the answer (free() it),
 * printed when the test has failed so far. */
static char *lost_request(const struct served *d, int nth, const char *path, const char *body, bool stream, int want)
{
    char b[256], *out = NULL;
    snprintf(b, sizeof b, "%s%s}", body, stream ? ",\"stream\":true" : "");
    CHECK_EQ_INT(serve_curl(d, "POST", path, b, &out, NULL), want);
    wait_reopened(d, nth);
    if (test_failed()) fprintf(stderr, "%s %s: %s\n", path, stream ? "stream" : "whole", out ? out : "(none)");
    return out;
}

TEST(serve_gpu_loss_in_the_anthropic_and_responses_shapes)
{
    /* A device that is lost again at every step (submit:3+: the first request's third step
     * on): each request below meets a loss, the backend is reopened after each (weights
     * uploaded again), and each answer carries the loss in its own API's error shape. */
    struct served d;
    REQUIRE(serve_vk_fault(&d, "submit:3+", NULL) == 0);
    static const char *const msg = "{\"model\":\"m\",\"max_tokens\":6,\"messages\":[{\"role\":\"user\",\"content\":\"hello\"}]";
    static const char *const resp = "{\"max_output_tokens\":6,\"input\":\"hello\"";

    /* Anthropic, whole answer: 503 and {"type":"error","error":{"type":...,"message":...}}. */
    char *out = lost_request(&d, 1, "/v1/messages", msg, false, 503);
    CHECK(out && strstr(out, "{\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":") &&
          strstr(out, "VK_ERROR_DEVICE_LOST"));
    free(out);

    /* Anthropic stream: message_start, then `event: error` in that shape, no message_stop. */
    out = lost_request(&d, 2, "/v1/messages", msg, true, 200);
    const char *e = out ? strstr(out, "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\"") : NULL;
    CHECK(e && strstr(e, "VK_ERROR_DEVICE_LOST") && strstr(out, "event: message_start") && !strstr(out, "message_stop"));
    free(out);

    /* Responses, whole answer: 503 and {"error":{"message","type","code":"device_lost"}}. */
    out = lost_request(&d, 3, "/v1/responses", resp, false, 503);
    CHECK(out && strstr(out, "\"code\":\"device_lost\"") && strstr(out, "\"type\":\"server_error\"") &&
          strstr(out, "VK_ERROR_DEVICE_LOST"));
    free(out);

    /* Responses stream: an `error` event with code device_lost, then `response.failed` whose
     * response has status failed and the same error; never response.completed. */
    out = lost_request(&d, 4, "/v1/responses", resp, true, 200);
    e = out ? strstr(out, "event: error\ndata: {\"code\":\"device_lost\"") : NULL;
    const char *failed = e ? strstr(e, "event: response.failed\ndata: ") : NULL;
    CHECK(failed && strstr(failed, "\"status\":\"failed\"") &&
          strstr(failed, "\"error\":{\"code\":\"device_lost\",\"message\":") && strstr(failed, "VK_ERROR_DEVICE_LOST") &&
          !strstr(out, "response.completed"));
    free(out);

    CHECK_EQ_INT(WEXITSTATUS(serve_stop(&d, SIGTERM, 20000)), 0);
    /* Four losses, four reopens. */
    char *audit = serve_slurp(d.audit);
    CHECK_EQ_INT(count_of(audit, "\"event\":\"device_lost\""), 4);
    CHECK_EQ_INT(count_of(audit, "\"event\":\"device_recovered\""), 4);
    free(audit);
}

TEST(serve_gpu_loss_wedged_step_stops_the_watchdog_pings)
{
    /* systemd restarts a daemon whose watchdog pings stop for WatchdogSec; the pings must
     * come from the scheduler's progress, so that a GPU wedged mid-step stops them. Here
     * they are due every 100 ms (WATCHDOG_USEC 200 ms), and the first request's second step
     * meets a fence that never signals (stall:2), held for the 4 s fence timeout: no ping
     * can come while that step is stuck, so the pings around the request must show a gap
     * of far more than their interval (1.5 s asked, against 4 s of stall). Then the step
     * fails as a timeout (503 device_lost), the backend reopens and the pings resume. */
    struct serve_notify *nt = serve_notify_open();
    REQUIRE(nt != NULL);
    setenv("WATCHDOG_USEC", "200000", 1);
    setenv("FLASHBOX_VK_FENCE_TIMEOUT_S", "4", 1);
    struct served d;
    int started = serve_vk_fault(&d, "stall:2", NULL);
    unsetenv("NOTIFY_SOCKET");
    unsetenv("WATCHDOG_USEC");
    unsetenv("FLASHBOX_VK_FENCE_TIMEOUT_S");
    if (started) serve_notify_free(nt);
    REQUIRE(started == 0);

    /* Idle, the daemon pings (else "no ping during the stall" would prove nothing). */
    for (int i = 0; i < 600 && serve_notify_count(nt, "WATCHDOG=1", 0) < 3; i++) usleep(100000);
    CHECK(serve_notify_count(nt, "WATCHDOG=1", 0) >= 3);

    uint64_t t_sent = serve_now_ms();
    char *out = NULL;
    CHECK_EQ_INT(serve_curl(&d, "POST", "/v1/completions", GPU_REQ, &out, NULL), 503);
    uint64_t t_answered = serve_now_ms();
    CHECK(out && strstr(out, "\"code\":\"device_lost\"") && strstr(out, "vkWaitForFences: VK_TIMEOUT"));
    uint64_t gap = serve_notify_longest_gap(nt, "WATCHDOG=1", t_sent, t_answered);
    CHECK(gap >= 1500);

    /* The backend reopens and the loop pings again. */
    wait_reopened(&d, 1);
    uint64_t t_ready = serve_now_ms();
    for (int i = 0; i < 600 && serve_notify_count(nt, "WATCHDOG=1", t_ready) < 3; i++) usleep(100000);
    int resumed = serve_notify_count(nt, "WATCHDOG=1", t_ready);
    CHECK(resumed >= 3);
    if (test_failed())
        fprintf(stderr, "answer: %s\nlongest gap between pings while the request ran: %llu ms (%llu ms request); "
                "pings after the reopen: %d\n", out ? out : "(none)", (unsigned long long)gap,
                (unsigned long long)(t_answered - t_sent), resumed);
    free(out);
    CHECK_EQ_INT(WEXITSTATUS(serve_stop(&d, SIGTERM, 20000)), 0);
    serve_notify_free(nt);
}

/* ---- storage faults in expert paging ---- */

static int open_paged(struct engine **e, const char *path, bool verify, char *err, size_t err_len)
{
    struct engine_options o;
    engine_options_default(&o);
    o.model_path = path;
    o.backend = ENGINE_BACKEND_REF;
    o.expert_cache_mb = 1; /* a few experts at a time: every step reads experts from the file */
    o.expert_verify = verify;
    /* Only the loads a step needs, in the step's order: a speculative load on the loader
     * thread would take the Nth read the fault is aimed at, at a time that depends on the
     * machine's load, and its failure only drops the guess. */
    o.expert_no_prefetch = true;
    return engine_open(e, &o, err, err_len);
}

/* The tiny model written to path and opened paged with expert_verify; *good holds its
 * logits for the fault tokens, *again room for as many (free() both). 0 or -1. */
static int paged_first_answer(char *path, size_t path_len, struct engine **e, struct engine_info *info, float **good,
                              float **again)
{
    char err[512];
    *good = *again = NULL;
    if (write_tiny(path, path_len)) return -1;
    if (open_paged(e, path, true, err, sizeof err)) {
        test_fail_at(__FILE__, __LINE__, "open: %s", err);
        return -1;
    }
    engine_get_info(*e, info);
    size_t n = (size_t)FAULT_N_TOK * info->n_vocab;
    *good = malloc(n * sizeof **good);
    *again = malloc(n * sizeof **again);
    if (*good && *again && eval_tokens(*e, *good, info->n_vocab, err, sizeof err) == 0) return 0;
    test_fail_at(__FILE__, __LINE__, "first answer: %s", *good && *again ? err : "out of memory");
    return -1;
}

TEST(expert_read_faults_fail_the_step_and_never_serve_wrong_weights)
{
    char path[600], err[512];
    struct engine *e;
    struct engine_info info;
    float *good, *again;
    REQUIRE(paged_first_answer(path, sizeof path, &e, &info, &good, &again) == 0);
    size_t n = (size_t)FAULT_N_TOK * info.n_vocab;

    /* EIO, a short read, a changed byte: each fails the step with what happened, and the
     * store serves the next request from the file as before (bit for bit). */
    static const struct { const char *spec, *want; } cases[] = {
        { "eio:2", "Input/output error" },
        { "short:1", "end of file" },
        { "flip:3", "differ from the ones checksummed at load" },
        /* every read fails: the request gives up at its first failed expert while its other
         * loads are still queued; they fail after it, and the next request must read them
         * again rather than find their failures (resident_slot) */
        { "eio:1+", "Input/output error" },
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        expert_store_fault_configure(cases[k].spec);
        CHECK_EQ_INT(eval_tokens(e, again, info.n_vocab, err, sizeof err), -1);
        CHECK(strstr(err, cases[k].want) != NULL && strstr(err, "expert") != NULL);
        if (test_failed()) fprintf(stderr, "%s: %s\n", cases[k].spec, err);
        expert_store_fault_configure("");
        CHECK_EQ_INT(eval_tokens(e, again, info.n_vocab, err, sizeof err), 0);
        CHECK(memcmp(good, again, n * sizeof *good) == 0);
    }
    engine_close(e);

    /* Without expert_verify the changed byte goes unnoticed: the answer differs. (This is
     * what the checksum is for; the test shows the injection really corrupts.) */
    REQUIRE(open_paged(&e, path, false, err, sizeof err) == 0);
    expert_store_fault_configure("flip:1+");
    CHECK_EQ_INT(eval_tokens(e, again, info.n_vocab, err, sizeof err), 0);
    CHECK(memcmp(good, again, n * sizeof *good) != 0);
    expert_store_fault_configure("");
    engine_close(e);
    free(good);
    free(again);
}

/* XORs every byte of the model file's routed-expert tensors (ffn_*_exps) with x, in place
 * (the same inode: what a careless copy onto a mounted file does). Returns how many. */
static int rewrite_experts(const char *path, uint8_t x)
{
    struct gguf_file *g;
    char err[512];
    if (gguf_open(&g, path, err, sizeof err)) {
        test_fail_at(__FILE__, __LINE__, "%s", err);
        return -1;
    }
    int fd = open(path, O_RDWR), n = 0;
    for (uint64_t i = 0; fd >= 0 && i < g->n_tensors; i++) {
        const struct gguf_tensor *t = &g->tensors[i];
        if (!strstr(t->name, "_exps")) continue;
        uint8_t *b = malloc(t->nbytes);
        off_t at = (off_t)(g->data_offset + t->offset);
        if (b && pread(fd, b, t->nbytes, at) == (ssize_t)t->nbytes) {
            for (uint64_t k = 0; k < t->nbytes; k++) b[k] ^= x;
            if (pwrite(fd, b, t->nbytes, at) == (ssize_t)t->nbytes) n++;
        }
        free(b);
    }
    if (fd >= 0) close(fd);
    gguf_close(g);
    return n;
}

TEST(expert_bytes_rewritten_or_file_replaced_under_the_engine)
{
    char path[600], other[700], err[512];
    struct engine *e;
    struct engine_info info;
    float *good, *again;
    REQUIRE(paged_first_answer(path, sizeof path, &e, &info, &good, &again) == 0);
    size_t n = (size_t)FAULT_N_TOK * info.n_vocab;

    /* The file's expert bytes changed in place: the step fails on the checksum (no wrong
     * weights served); once the bytes are back, the same engine answers as before. */
    REQUIRE(rewrite_experts(path, 0x5a) > 0);
    CHECK_EQ_INT(eval_tokens(e, again, info.n_vocab, err, sizeof err), -1);
    CHECK(strstr(err, "differ from the ones checksummed at load") && strstr(err, "expert"));
    if (test_failed()) fprintf(stderr, "rewritten: %s\n", err);
    REQUIRE(rewrite_experts(path, 0x5a) > 0);
    CHECK_EQ_INT(eval_tokens(e, again, info.n_vocab, err, sizeof err), 0);
    CHECK(memcmp(good, again, n * sizeof *good) == 0);

    /* Another model renamed over the path (what an update tool does): the engine keeps
     * reading the file it opened, so its answers do not change. */
    snprintf(other, sizeof other, "%s/other.gguf", test_tmpdir());
    struct mkmodel_config c;
    mkmodel_defaults(&c);
    c.seed = 7;
    REQUIRE(mkmodel_write(&c, other, err, sizeof err) == 0);
    REQUIRE(rename(other, path) == 0);
    CHECK_EQ_INT(eval_tokens(e, again, info.n_vocab, err, sizeof err), 0);
    CHECK(memcmp(good, again, n * sizeof *good) == 0);
    engine_close(e);
    free(good);
    free(again);
}
