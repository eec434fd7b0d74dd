/* Updates gated on the site's evaluation set, end to end on tiny models: a 20-case set
 * recorded from model A; an update with A's weights passes, one with other weights (another
 * seed) is refused with its score, threshold and worst cases, and A stays active; the same
 * through the admin socket of a running daemon (status shows the evaluate phase, A keeps
 * serving, /health and /metrics show the scores, the audit log has the set's SHA-256);
 * kill -9 during the evaluation leaves the old slot active and a later install works; and
 * SIGTERM to the daemon mid-evaluation leaves the new slot unactivated. */
#include "tests/harness.h"
#include "tests/serve_client.h"
#include "tests/update_support.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct gate_box {
    struct upd_box b;
    char model_a[700], model_b[700];
    char set[700];                /* recorded from A */
    char v1[700], v2[700], v2b[700], v3[700]; /* A, A again (two versions), B */
    char sha[65];
};


/* Models, the 20-case set recorded from A (exact, contains, choice, reference_logprob),
 * four bundles, and v1 (A) installed without any policy. */
static int gate_setup(struct gate_box *x)
{
    memset(x, 0, sizeof *x);
    if (upd_box_init(&x->b)) return -1;
    const char *t = test_tmpdir();
    snprintf(x->model_a, sizeof x->model_a, "%s/a.gguf", t);
    snprintf(x->model_b, sizeof x->model_b, "%s/b.gguf", t);
    if (upd_write_model(x->model_a, "model-A", 42, 0) || upd_write_model(x->model_b, "model-B", 7, 0)) return -1;
    char raw[700];
    snprintf(raw, sizeof raw, "%s/site-raw.jsonl", t);
    snprintf(x->set, sizeof x->set, "%s/site.jsonl", t);
    FILE *f = fopen(raw, "w");
    if (!f) return -1;
    const char *kinds[] = { "exact", "contains", "choice", "reference_logprob" };
    for (int i = 0; i < 20; i++) {
        fprintf(f, "{\"id\":\"q%02d\",\"messages\":[{\"role\":\"system\",\"content\":\"You answer for the site.\"},"
                   "{\"role\":\"user\",\"content\":\"request %d from production\"}],\"scorer\":\"%s\",\"max_tokens\":5%s}\n",
                i, i * 13, kinds[i % 4], i % 4 == 2 ? ",\"options\":[\"approve\",\"deny\",\"escalate\"]" : "");
    }
    fclose(f);
    char out[8192];
    if (upd_sh(out, sizeof out, "%s eval --record -m %s --set %s --out %s --backend ref", test_flashbox_bin(), x->model_a,
               raw, x->set)) {
        test_fail_at(__FILE__, __LINE__, "record: %s", out);
        return -1;
    }
    if (upd_sh(out, sizeof out, "sha256sum %s", x->set)) return -1;
    snprintf(x->sha, sizeof x->sha, "%.64s", out);
    snprintf(x->v1, sizeof x->v1, "%s/v1.fbx", t);
    snprintf(x->v2, sizeof x->v2, "%s/v2.fbx", t);
    snprintf(x->v2b, sizeof x->v2b, "%s/v2b.fbx", t);
    snprintf(x->v3, sizeof x->v3, "%s/v3.fbx", t);
    if (upd_make_bundle(&x->b, x->v1, "1.0", 1, x->model_a, NULL) ||
        upd_make_bundle(&x->b, x->v2, "2.0", 2, x->model_a, NULL) ||
        upd_make_bundle(&x->b, x->v2b, "2.1", 2, x->model_a, NULL) ||
        upd_make_bundle(&x->b, x->v3, "3.0", 3, x->model_b, NULL))
        return -1;
    if (upd_cli(&x->b, out, sizeof out, "install", x->v1)) {
        test_fail_at(__FILE__, __LINE__, "install v1: %s", out);
        return -1;
    }
    return 0;
}

static int gated_install(const struct gate_box *x, const char *bundle, const char *min, char *out, size_t cap)
{
    return upd_sh(out, cap, "%s update install %s --data-dir %s --keys %s --eval-set %s --eval-min-score %s",
                  test_flashbox_bin(), bundle, x->b.data, x->b.keys, x->set, min);
}

TEST(update_eval_gate_passes_same_weights_and_refuses_other_weights)
{
    struct gate_box x;
    REQUIRE(gate_setup(&x) == 0);
    static char out[16384];
    /* Same weights: every recorded answer is reproduced. */
    CHECK_EQ_INT(gated_install(&x, x.v2, "0.9", out, sizeof out), 0);
    CHECK(strstr(out, "site evaluation passed; now active") != NULL);
    CHECK(strstr(out, "\"event\":\"update_evaluate\"") != NULL && strstr(out, x.sha) != NULL); /* audited */
    CHECK_EQ_INT(upd_active_slot(&x.b), 1);
    struct update_status st;
    char err[512];
    REQUIRE(update_get_status(&x.b.cfg, &st, err, sizeof err) == 0);
    CHECK_STR(st.slots[1].eval.verdict, "pass");
    CHECK(st.slots[1].eval.score == 1.0);
    CHECK_EQ_INT(st.slots[1].eval.cases, 20);
    CHECK_STR(st.slots[1].eval.set_sha256, x.sha);

    /* Other weights: refused with the score, the threshold and five worst cases; the
     * active slot stays b, and the refused slot is no rollback target. */
    CHECK_EQ_INT(gated_install(&x, x.v3, "0.9", out, sizeof out), 1);
    CHECK(strstr(out, "REFUSED: site evaluation of slot a refused it: score 0.") != NULL);
    CHECK(strstr(out, "below the threshold 0.9000") != NULL);
    CHECK(strstr(out, "worst cases: case \"q") != NULL);
    const char *w = strstr(out, "worst cases:");
    int n_worst = 0;
    for (const char *p = w; p && (p = strstr(p, "case \"q")); p++) n_worst++;
    CHECK_EQ_INT(n_worst, 5);
    CHECK(strstr(out, "active slot unchanged") != NULL);
    CHECK_EQ_INT(upd_active_slot(&x.b), 1);
    REQUIRE(update_get_status(&x.b.cfg, &st, err, sizeof err) == 0);
    CHECK_STR(st.slots[0].eval.verdict, "fail");
    CHECK(st.slots[0].eval.score < 0.5);
    CHECK(!st.slots[0].valid);
    CHECK(upd_cli(&x.b, out, sizeof out, "rollback", NULL) != 0);
    CHECK_EQ_INT(upd_active_slot(&x.b), 1);
    /* update status shows both evaluations. */
    CHECK_EQ_INT(upd_cli(&x.b, out, sizeof out, "status", NULL), 0);
    CHECK(strstr(out, "evaluation pass: score 1.0000, threshold 0.9000, 20 cases") != NULL);
    CHECK(strstr(out, "evaluation fail: score 0.") != NULL);

    /* The operator changes the policy (threshold 0): the same bundle is accepted. */
    CHECK_EQ_INT(gated_install(&x, x.v3, "0", out, sizeof out), 0);
    CHECK_EQ_INT(upd_active_slot(&x.b), 0);

}

TEST(update_eval_gate_max_regression_uses_the_active_score)
{
    struct gate_box x;
    REQUIRE(gate_setup(&x) == 0);
    static char out[16384];
    CHECK_EQ_INT(gated_install(&x, x.v2, "0", out, sizeof out), 0); /* b: score 1 recorded */
    /* B, threshold 0 but at most 0.2 below the active slot's 1.0: refused. */
    CHECK_EQ_INT(upd_sh(out, sizeof out, "%s update install %s --data-dir %s --keys %s --eval-set %s --eval-min-score 0 "
                                         "--eval-max-regression 0.2",
                        test_flashbox_bin(), x.v3, x.b.data, x.b.keys, x.set), 1);
    CHECK(strstr(out, "below the threshold 0.8000 (the active slot's score less eval_max_regression)") != NULL);
    CHECK_EQ_INT(upd_active_slot(&x.b), 1);
    /* A policy from the config file applies the same way. */
    char conf[800];
    snprintf(conf, sizeof conf, "%s/flashbox.conf", test_tmpdir());
    FILE *f = fopen(conf, "w");
    REQUIRE(f != NULL);
    fprintf(f, "[update]\ndata_dir = %s\nkeys_dir = %s\neval_set = %s\neval_min_score = 0.95\n[audit]\nlog = %s/audit.jsonl\n",
            x.b.data, x.b.keys, x.set, test_tmpdir());
    fclose(f);
    CHECK_EQ_INT(upd_sh(out, sizeof out, "%s update install %s --config %s", test_flashbox_bin(), x.v3, conf), 1);
    CHECK(strstr(out, "below the threshold 0.9500 (eval_min_score)") != NULL);
    CHECK_EQ_INT(upd_sh(out, sizeof out, "grep -c '\"event\":\"update_evaluate\".*%s' %s/audit.jsonl", x.sha, test_tmpdir()), 0);
    CHECK(atoi(out) == 1);
}

/* eval_max_regression when the active slot was never evaluated (v1 went in without a
 * policy): the gate evaluates the active slot first on the same set bytes, records its
 * score in the active slot's record, and compares with it; the next install reuses the
 * recorded score instead of running the active slot again. */
TEST(update_eval_gate_max_regression_evaluates_an_unscored_active_slot_once)
{
    struct gate_box x;
    REQUIRE(gate_setup(&x) == 0);
    static char out[16384];
    struct update_status st;
    char err[512];
    REQUIRE(update_get_status(&x.b.cfg, &st, err, sizeof err) == 0);
    CHECK_STR(st.slots[0].eval.verdict, ""); /* a: active, never evaluated */
    const char *cmd = "%s update install %s --data-dir %s --keys %s --eval-set %s --eval-min-score 0 --eval-max-regression 0.2";
    CHECK_EQ_INT(upd_sh(out, sizeof out, cmd, test_flashbox_bin(), x.v3, x.b.data, x.b.keys, x.set), 1);
    CHECK(strstr(out, "regression baseline): score 1.0000 over 20 cases") != NULL); /* audited */
    CHECK(strstr(out, "below the threshold 0.8000 (the active slot's score less eval_max_regression)") != NULL);
    CHECK_EQ_INT(upd_active_slot(&x.b), 0);
    REQUIRE(update_get_status(&x.b.cfg, &st, err, sizeof err) == 0);
    CHECK_STR(st.slots[0].eval.verdict, "pass");
    CHECK(st.slots[0].eval.score == 1.0);
    CHECK_STR(st.slots[0].eval.set_sha256, x.sha);
    CHECK_STR(st.slots[1].eval.verdict, "fail");
    /* The same weights pass, and the baseline is not run again. */
    CHECK_EQ_INT(upd_sh(out, sizeof out, cmd, test_flashbox_bin(), x.v2, x.b.data, x.b.keys, x.set), 0);
    CHECK(strstr(out, "regression baseline") == NULL);
    CHECK_EQ_INT(upd_active_slot(&x.b), 1);
}

static int wait_exit(pid_t pid)
{
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR) return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static pid_t start_gated_install(const struct gate_box *x, const char *bundle, const char *log)
{
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid != 0) return pid;
    int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
        close(fd);
    }
    setenv("FLASHBOX_EVAL_TEST_DELAY_US", "15000", 1); /* 20 cases: about 0.3 s of evaluation */
    execl(test_flashbox_bin(), test_flashbox_bin(), "update", "install", bundle, "--data-dir", x->b.data, "--keys",
          x->b.keys, "--eval-set", x->set, "--eval-min-score", "0.9", (char *)NULL);
    _exit(127);
}

/* True once the state file records the evaluation as running. */
static bool evaluating(const struct gate_box *x)
{
    char path[800], buf[2048] = "";
    snprintf(path, sizeof path, "%s/state", x->b.data);
    FILE *f = fopen(path, "r");
    if (!f) return false;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = 0;
    fclose(f);
    return strstr(buf, " running\n") != NULL;
}

/* kill -9 at random points inside the evaluation (FLASHBOX_EVAL_KILLS of them, default 4,
 * 2 under ASan; scripts/eval-kill-test.sh runs 20): the active slot is always the old one, the killed
 * install's slot can not be rolled back to, and the rerun installs and activates. */
TEST(update_eval_gate_kill9_during_evaluation_keeps_the_old_slot)
{
    struct gate_box x;
    REQUIRE(gate_setup(&x) == 0);
    const char *env = getenv("FLASHBOX_EVAL_KILLS");
    int want = env ? atoi(env) : 4;
#if defined(__SANITIZE_ADDRESS__)
    if (!env) want = 2; /* gcc's ASan: each gated install is ten times slower */
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
    if (!env) want = 2; /* clang's ASan (make sanitize): each gated install is ten times slower */
#endif
#endif
    char log[800];
    static char out[16384];
    snprintf(log, sizeof log, "%s/install.log", test_tmpdir());
    srand(2020);
    int kills = 0;
    for (int attempt = 0; kills < want && attempt < want * 4; attempt++) {
        const char *bundle = attempt % 2 ? x.v2b : x.v2;
        int old = upd_active_slot(&x.b);
        pid_t pid = start_gated_install(&x, bundle, log);
        bool seen = false;
        for (int i = 0; i < 4000 && !seen; i++) {
            seen = evaluating(&x);
            if (!seen && waitpid(pid, NULL, WNOHANG) == pid) break; /* ended (it should not have) */
            if (!seen) usleep(2000);
        }
        if (!seen) {
            kill(pid, SIGKILL);
            wait_exit(pid);
            test_fail_at(__FILE__, __LINE__, "attempt %d: the evaluation never started: %s", attempt, log);
            return;
        }
        usleep((useconds_t)(rand() % 300000));
        kill(pid, SIGKILL);
        int rc = wait_exit(pid);
        /* Killed while the evaluation had not finished (the state still says running):
         * the old slot must be active, and the unevaluated one no rollback target. A kill
         * that came after the evaluation (or an install that finished) is not counted. */
        bool unfinished = rc == 128 + SIGKILL && evaluating(&x);
        if (seen && unfinished) kills++;
        if (unfinished && upd_active_slot(&x.b) != old) {
            test_fail_at(__FILE__, __LINE__, "kill %d: active slot %d, was %d", attempt, upd_active_slot(&x.b), old);
            return;
        }
        if (unfinished) CHECK(upd_cli(&x.b, out, sizeof out, "rollback", NULL) != 0);
        if (unfinished) CHECK_EQ_INT(upd_active_slot(&x.b), old);
        if (!unfinished && upd_active_slot(&x.b) != old) continue; /* it completed: nothing to redo */
        /* A later install works and activates the other slot. */
        int again = gated_install(&x, bundle, "0.9", out, sizeof out);
        if (again != 0) {
            test_fail_at(__FILE__, __LINE__, "install after kill %d: %d: %s", attempt, again, out);
            return;
        }
        CHECK_EQ_INT(upd_active_slot(&x.b), 1 - old);
    }
    CHECK_EQ_INT(kills, want);
}

/* ---- through the admin socket of a running daemon ---- */

static json_t *status_json(const char *admin)
{
    char *out = NULL;
    json_t *o = NULL;
    if (serve_curl_as(admin, -1, "GET", "/admin/update/status", NULL, &out) == 200 && out) o = json_loads(out, 0, NULL);
    free(out);
    return o;
}

/* Starts the daemon on the box's store with the site policy (and one more setting, or
 * NULL); admin socket path in admin. */
static int start_daemon_with(const struct gate_box *x, struct served *d, char *admin, size_t admin_len, const char *extra)
{
    static char sets[8][800];
    static const char *list[10];
    snprintf(admin, admin_len, "%s/run/adm.sock", test_tmpdir());
    snprintf(sets[0], sizeof sets[0], "update.data_dir=%s", x->b.data);
    snprintf(sets[1], sizeof sets[1], "update.keys_dir=%s", x->b.keys);
    snprintf(sets[2], sizeof sets[2], "update.product=%s", x->b.cfg.product);
    snprintf(sets[3], sizeof sets[3], "server.admin_socket=%s", admin);
    snprintf(sets[4], sizeof sets[4], "update.eval_set=%s", x->set);
    snprintf(sets[5], sizeof sets[5], "update.eval_min_score=0.9");
    snprintf(sets[6], sizeof sets[6], "update.reload_grace_s=5");
    for (int i = 0; i < 7; i++) list[i] = sets[i];
    list[7] = extra;
    list[8] = NULL;
    return serve_start(d, list);
}

/* An install through the admin socket in a child, whose exit status is 0 when it was
 * refused below the daemon's threshold 0.9 with the worst cases (the command line client
 * waits as long as the install takes; curl would give up). */
static pid_t start_refused_install(const char *bundle, const char *admin)
{
    fflush(stdout);
    fflush(stderr);
    pid_t p = fork();
    if (p == 0) {
        static char o[16384];
        int st = upd_sh(o, sizeof o, "%s update install %s --admin-socket %s", test_flashbox_bin(), bundle, admin);
        _exit(st == 1 && strstr(o, "REFUSED") && strstr(o, "below the threshold 0.9000") && strstr(o, "worst cases") ? 0 : 1);
    }
    return p;
}

static int start_daemon(const struct gate_box *x, struct served *d, char *admin, size_t admin_len)
{
    return start_daemon_with(x, d, admin, admin_len, NULL);
}

/* The greedy text of a fixed completion request (NULL when it did not answer 200). */
static char *completion_text(const struct served *d, int *status)
{
    char *out = NULL;
    *status = serve_curl(d, "POST", "/v1/completions", "{\"prompt\":\"the same answer?\",\"max_tokens\":8,\"temperature\":0}",
                         &out, NULL);
    json_t *o = *status == 200 && out ? json_loads(out, 0, NULL) : NULL;
    const char *t = json_string_value(json_object_get(json_array_get(json_object_get(o, "choices"), 0), "text"));
    char *text = t ? strdup(t) : NULL;
    json_decref(o);
    free(out);
    return text;
}

/* update.pause_serving = always (what auto does when the new model does not fit beside the
 * served one): during the self-test and evaluation the API answers 503 "paused" with a
 * Retry-After, the served model is released; after the refusal the same model serves again
 * and answers exactly as before. */
TEST(admin_install_paused_serving_answers_503_then_the_same_answers)
{
    struct gate_box x;
    REQUIRE(gate_setup(&x) == 0);
    setenv("FLASHBOX_EVAL_TEST_DELAY_US", "30000", 1);
    struct served d;
    char admin[800];
    REQUIRE(start_daemon_with(&x, &d, admin, sizeof admin, "update.pause_serving=always") == 0);
    int status;
    char *before = completion_text(&d, &status);
    REQUIRE(before != NULL);
    pid_t p = start_refused_install(x.v3, admin);
    bool saw_paused = false;
    char *out = NULL;
    for (int i = 0; i < 3000 && !saw_paused; i++) {
        json_t *o = status_json(admin);
        const char *phase = json_string_value(json_object_get(json_object_get(o, "operation"), "phase"));
        bool evaluating_now = phase && !strcmp(phase, "evaluate");
        json_decref(o);
        if (evaluating_now) {
            const char *hdr[] = { "-D", "-", NULL }; /* headers then body on stdout */
            int st = serve_curl(&d, "POST", "/v1/completions", "{\"prompt\":\"x\",\"max_tokens\":2}", &out, hdr);
            saw_paused = st == 503 && out && strstr(out, "\"paused\"") && strcasestr(out, "Retry-After: 30");
            if (!saw_paused && st != 503) test_fail_at(__FILE__, __LINE__, "during the evaluation: %d %s", st, out ? out : "");
            free(out);
            out = NULL;
            CHECK_EQ_INT(serve_curl(&d, "GET", "/health", NULL, &out, NULL), 503);
            CHECK(out && strstr(out, "paused"));
            free(out);
            out = NULL;
        }
        if (!saw_paused) usleep(5000);
    }
    CHECK(saw_paused);
    CHECK_EQ_INT(wait_exit(p), 0);
    CHECK_EQ_INT(upd_active_slot(&x.b), 0);
    char *after = completion_text(&d, &status);
    CHECK_EQ_INT(status, 200);
    CHECK(after && !strcmp(after, before));
    CHECK_EQ_INT(serve_curl(&d, "GET", "/health", NULL, &out, NULL), 200);
    CHECK(out && strstr(out, "\"model\":\"model-A\"") && strstr(out, "\"slot\":\"a\""));
    free(out);
    free(before);
    free(after);
    /* Same weights: accepted after a pause, the new slot serves (a reload ends the pause). */
    static char cli[16384];
    CHECK_EQ_INT(upd_sh(cli, sizeof cli, "%s update install %s --admin-socket %s", test_flashbox_bin(), x.v2, admin), 0);
    CHECK_EQ_INT(upd_active_slot(&x.b), 1);
    CHECK_EQ_INT(serve_curl(&d, "GET", "/health", NULL, &out, NULL), 200);
    CHECK(out && strstr(out, "\"slot\":\"b\""));
    free(out);
    after = completion_text(&d, &status);
    CHECK_EQ_INT(status, 200);
    free(after);
    CHECK(serve_stop(&d, SIGTERM, 20000) >= 0);
    char *audit = serve_slurp(d.audit);
    CHECK(strstr(audit, "\"event\":\"serving_paused\"") != NULL);
    CHECK(strstr(audit, "\"event\":\"serving_resumed\"") != NULL);
    free(audit);
    unsetenv("FLASHBOX_EVAL_TEST_DELAY_US");
}

TEST(admin_install_gated_on_site_eval_shows_the_evaluate_phase)
{
    struct gate_box x;
    REQUIRE(gate_setup(&x) == 0);
    setenv("FLASHBOX_EVAL_TEST_DELAY_US", "30000", 1); /* the daemon inherits it: a visible evaluate phase */
    struct served d;
    char admin[800];
    REQUIRE(start_daemon(&x, &d, admin, sizeof admin) == 0);
    char *out = NULL;

    /* Other weights, through the admin socket: the status shows the evaluate phase with
     * cases done of 20 while it runs; then 422, and model A keeps serving from slot a. */
    pid_t p = start_refused_install(x.v3, admin);
    bool saw_phase = false;
    for (int i = 0; i < 3000 && !saw_phase; i++) {
        json_t *o = status_json(admin);
        json_t *op = json_object_get(o, "operation");
        const char *phase = json_string_value(json_object_get(op, "phase"));
        if (phase && !strcmp(phase, "evaluate") && json_integer_value(json_object_get(op, "total")) == 20 &&
            json_integer_value(json_object_get(op, "done")) < 20)
            saw_phase = true;
        json_decref(o);
        if (!saw_phase) usleep(5000);
    }
    CHECK(saw_phase);
    CHECK_EQ_INT(wait_exit(p), 0);
    CHECK_EQ_INT(upd_active_slot(&x.b), 0);
    double refused = serve_metric(&d, "flashbox_eval_score{slot=\"b\"}");
    CHECK(refused >= 0 && refused < 0.5);
    CHECK_EQ_INT(serve_curl(&d, "GET", "/health", NULL, &out, NULL), 200);
    CHECK(out && strstr(out, "\"model\":\"model-A\"") && strstr(out, "\"slot\":\"a\""));
    free(out);
    CHECK_EQ_INT(serve_curl(&d, "POST", "/v1/completions", "{\"prompt\":\"still there?\",\"max_tokens\":3}", &out, NULL), 200);
    CHECK(out && strstr(out, "\"model\":\"model-A\""));
    free(out);

    /* Same weights: accepted, the daemon serves slot b, whose score is in /health and /metrics. */
    static char cli[16384];
    CHECK_EQ_INT(upd_sh(cli, sizeof cli, "%s update install %s --admin-socket %s", test_flashbox_bin(), x.v2, admin), 0);
    CHECK_EQ_INT(upd_active_slot(&x.b), 1);
    CHECK_EQ_INT(serve_curl(&d, "GET", "/health", NULL, &out, NULL), 200);
    CHECK(out && strstr(out, "\"slot\":\"b\"") && strstr(out, "\"verdict\":\"pass\"") && strstr(out, x.sha));
    free(out);
    CHECK(serve_metric(&d, "flashbox_eval_score{slot=\"b\"}") == 1.0);
    CHECK(serve_metric(&d, "flashbox_eval_score{slot=\"a\"}") < 0); /* a was never evaluated */
    json_t *st = status_json(admin);
    json_t *slots = json_object_get(json_object_get(st, "store"), "slots");
    CHECK_STR(json_string_value(json_object_get(json_object_get(json_array_get(slots, 1), "evaluation"), "verdict")), "pass");
    json_decref(st);
    CHECK(serve_stop(&d, SIGTERM, 20000) >= 0);
    /* Both runs are audit events with the set's SHA-256. */
    char *audit = serve_slurp(d.audit);
    int n = 0;
    for (const char *q = audit; (q = strstr(q, "\"event\":\"update_evaluate\"")); q++) n++;
    CHECK_EQ_INT(n, 2);
    CHECK(strstr(audit, x.sha) != NULL);
    free(audit);
}

TEST(admin_sigterm_during_evaluation_leaves_the_new_slot_unactivated)
{
    struct gate_box x;
    REQUIRE(gate_setup(&x) == 0);
    setenv("FLASHBOX_EVAL_TEST_DELAY_US", "100000", 1); /* 20 cases: 2 s of evaluation */
    struct served d;
    char admin[800];
    REQUIRE(start_daemon(&x, &d, admin, sizeof admin) == 0);
    fflush(stdout);
    fflush(stderr);
    pid_t p = fork();
    if (p == 0) {
        static char o[16384];
        upd_sh(o, sizeof o, "%s update install %s --admin-socket %s", test_flashbox_bin(), x.v2, admin);
        _exit(0);
    }
    bool evaluating_now = false;
    for (int i = 0; i < 3000 && !evaluating_now; i++) {
        evaluating_now = evaluating(&x);
        if (!evaluating_now) usleep(5000);
    }
    REQUIRE(evaluating_now);
    usleep(300000);
    CHECK(serve_stop(&d, SIGTERM, 30000) >= 0);
    wait_exit(p);
    /* Slot a stays active; b was not activated (nor left as a rollback target). */
    CHECK_EQ_INT(upd_active_slot(&x.b), 0);
    struct update_status st;
    char err[512];
    REQUIRE(update_get_status(&x.b.cfg, &st, err, sizeof err) == 0);
    CHECK(st.slots[0].valid);
    CHECK(!st.slots[1].valid || !strcmp(st.slots[1].eval.verdict, "running"));
    static char out[16384];
    CHECK(upd_cli(&x.b, out, sizeof out, "rollback", NULL) != 0);
    /* A later install (no delay) works. */
    unsetenv("FLASHBOX_EVAL_TEST_DELAY_US");
    CHECK_EQ_INT(gated_install(&x, x.v2, "0.9", out, sizeof out), 0);
    CHECK_EQ_INT(upd_active_slot(&x.b), 1);
}

/* ---- the slot store's record of evaluations (state file version 2) ---- */

#include "update/store.h"

TEST(update_state_records_evaluations_and_refuses_malformed_ones)
{
    char err[256];
    struct store_state st;
    /* Version 1 (no evaluation yet) still reads, with no records. */
    const char *v1 = "flashbox-update-state 1\nepoch_floor 3\ntrial -\nboot_attempts 0\nlast_fallback \n";
    REQUIRE(store_parse_state(v1, strlen(v1), &st, err, sizeof err) == 0);
    CHECK(!st.eval[0].verdict[0] && !st.eval[1].verdict[0]);
    const char *sha = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    char v2[1024];
    snprintf(v2, sizeof v2,
             "flashbox-update-state 2\nepoch_floor 3\ntrial b\nboot_attempts 1\nlast_fallback \neval_a running\n"
             "eval_b pass 0.950000 0.900000 20 %s\n", sha);
    REQUIRE(store_parse_state(v2, strlen(v2), &st, err, sizeof err) == 0);
    CHECK_STR(st.eval[0].verdict, "running");
    CHECK_STR(st.eval[1].verdict, "pass");
    CHECK(st.eval[1].score == 0.95 && st.eval[1].threshold == 0.9);
    CHECK_EQ_INT(st.eval[1].cases, 20);
    CHECK_STR(st.eval[1].set_sha256, sha);
    /* Written back, it reads the same; with no records it is written as version 1. */
    struct upd_box b;
    REQUIRE(upd_box_init(&b) == 0);
    REQUIRE(mkdir(b.data, 0755) == 0);
    REQUIRE(store_write_state(&b.cfg, &st, err, sizeof err) == 0);
    struct store_state back;
    REQUIRE(store_read_state(&b.cfg, &back, err, sizeof err) == 0);
    CHECK(!memcmp(&back.eval, &st.eval, sizeof st.eval));
    memset(&st.eval, 0, sizeof st.eval);
    REQUIRE(store_write_state(&b.cfg, &st, err, sizeof err) == 0);
    char path[800], text[512] = "";
    snprintf(path, sizeof path, "%s/state", b.data);
    FILE *f = fopen(path, "r");
    REQUIRE(f != NULL);
    text[fread(text, 1, sizeof text - 1, f)] = 0;
    fclose(f);
    CHECK(!strncmp(text, "flashbox-update-state 1\n", 24));
    /* Malformed records are refused with the line named. */
    const char *bad[] = {
        "eval_a pass 0.9 0.9 20\neval_b -\n",                        /* no SHA-256 */
        "eval_a pass 1.5 0.9 20 %s\neval_b -\n",                     /* score over 1 */
        "eval_a pass -0.5 0.9 20 %s\neval_b -\n",                    /* negative */
        "eval_a pass 0.9 0.9 twenty %s\neval_b -\n",                 /* count */
        "eval_a maybe 0.9 0.9 20 %s\neval_b -\n",                    /* verdict */
        "eval_a pass 0.9 0.9 20 %s extra\neval_b -\n",               /* trailing field */
        "eval_b -\neval_a -\n",                                      /* order */
        "eval_a -\n",                                                /* a line short */
        "eval_a pass 0.9 0.9 20 %.63s\neval_b -\n",                  /* short hash */
        "eval_a pass 1e-1 0.9 20 %s\neval_b -\n",                    /* exponent */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char tail[400], whole[1024];
        snprintf(tail, sizeof tail, bad[i], sha);
        snprintf(whole, sizeof whole, "flashbox-update-state 2\nepoch_floor 3\ntrial -\nboot_attempts 0\nlast_fallback \n%s", tail);
        err[0] = 0;
        if (store_parse_state(whole, strlen(whole), &st, err, sizeof err) == 0)
            test_fail_at(__FILE__, __LINE__, "accepted bad state %zu: %s", i, tail);
        else CHECK(strstr(err, "state file") != NULL);
    }
}
