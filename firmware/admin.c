/* The update admin socket (see admin.h). libmicrohttpd, one thread per connection, every
 * answer closes its connection (no idle keep-alive to wait for at shutdown). Lock order:
 * the admin lock is never held while an operation runs, only to start, observe and end it.
 * Every operation has a deadline (update.operation_timeout_s) and is cancelled at its next
 * cancellation point once past it, or once SIGTERM's grace period is over. */
#include "firmware/admin.h"

#include "common/errmsg.h"
#include "firmware/audit.h"
#include "firmware/backend_pick.h"
#include "firmware/eval_gate.h"
#include "firmware/http_api.h"
#include "firmware/peer.h"
#include "firmware/reload.h"
#include "firmware/scheduler.h"
#include "firmware/selftest.h"
#include "update/update.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <microhttpd.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { ADMIN_BODY_MAX = 8192, ADMIN_PATH_MAX = 4096 };

struct admin {
    struct MHD_Daemon *d;
    struct serve_config cfg;      /* the update store's settings live here */
    struct update_config uc;      /* points into cfg */
    struct selftest_opts so;      /* install self-test: the daemon's backend */
    struct eval_policy policy;    /* the site's evaluation of a new slot (update.eval_*) */
    volatile int cancel;          /* set by admin_stop: an evaluation in progress gives up */
    uid_t self_uid;

    pthread_mutex_t lock;         /* guards everything below */
    pthread_cond_t cond;          /* an operation ended */
    struct model_host *host;      /* NULL until the first model is loaded */
    bool stopping;
    bool busy;                    /* an operation is running */
    char kind[16];                /* "install" or "rollback" */
    char bundle[ADMIN_PATH_MAX];
    char phase[16];               /* hash, verify, write, selftest, evaluate, activate, reload; "" = none yet */
    char what[128];
    uint64_t done, total;         /* bytes of what, in phase (evaluate: cases) */
    uint64_t seq_started, seq_finished;
    int last_status;              /* HTTP status of the last operation's result */
    char *last_result;            /* its JSON text; NULL before the first */
    pthread_t thread;
    bool thread_joinable;
    struct timespec deadline;     /* CLOCK_MONOTONIC: the running operation is cancelled after it */
    bool grace_over;              /* admin_stop: the grace period is over, stop at the next point */
    bool abandoned;               /* admin_stop gave up waiting: requests waiting on it answer 503 */
};

/* One request. */
struct areq {
    int fd;
    struct peer peer;
    bool peer_ok;
    const char *route;            /* "status", "install", "rollback" or NULL */
    char *body;                   /* [cap] */
    size_t len, cap;
    bool too_large;
    int status;
    char detail[256];             /* audit: bundle path or error */
};

static const char *phase_name(enum update_phase p)
{
    switch (p) {
    case UPDATE_PHASE_HASH: return "hash";
    case UPDATE_PHASE_VERIFY: return "verify";
    case UPDATE_PHASE_WRITE: return "write";
    case UPDATE_PHASE_SELFTEST: return "selftest";
    case UPDATE_PHASE_EVALUATE: return "evaluate";
    case UPDATE_PHASE_ACTIVATE: return "activate";
    }
    return "?";
}

int admin_parse_install(const char *body, size_t len, char *path, size_t path_cap, char *err, size_t err_len)
{
    json_error_t je;
    json_t *o = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
    if (!o) return errf(err, err_len, "body: not JSON (%s at byte %d)", je.text, je.position);
    int rc = 0;
    const char *key;
    json_t *v;
    if (!json_is_object(o)) rc = errf(err, err_len, "body: expected an object {\"bundle\": \"/path\"}");
    else json_object_foreach(o, key, v) {
        if (strcmp(key, "bundle")) {
            rc = errf(err, err_len, "body: unknown field \"%.64s\" (only \"bundle\")", key);
            break;
        }
    }
    json_t *b = rc ? NULL : json_object_get(o, "bundle");
    if (!rc && !json_is_string(b)) rc = errf(err, err_len, "bundle: expected a string (absolute path of the .fbx file)");
    if (!rc) {
        const char *s = json_string_value(b);
        size_t n = json_string_length(b);
        if (n != strlen(s)) rc = errf(err, err_len, "bundle: contains a NUL byte");
        else if (n == 0 || s[0] != '/') rc = errf(err, err_len, "bundle: \"%.100s\" is not an absolute path", s);
        else if (n >= path_cap) rc = errf(err, err_len, "bundle: path of %zu bytes, at most %zu", n, path_cap - 1);
        else memcpy(path, s, n + 1);
    }
    json_decref(o);
    return rc;
}

/* ---- responses ---- */

static enum MHD_Result send_body(struct MHD_Connection *c, struct areq *q, int status, char *text)
{
    size_t n = strlen(text);
    struct MHD_Response *resp = MHD_create_response_from_buffer(n, text, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    q->status = status;
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)status, resp);
    MHD_destroy_response(resp);
    return ret;
}

static enum MHD_Result send_json(struct MHD_Connection *c, struct areq *q, int status, json_t *o)
{
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!s) return MHD_NO;
    char *t = realloc(s, strlen(s) + 2);
    if (!t) {
        free(s);
        return MHD_NO;
    }
    strcat(t, "\n");
    return send_body(c, q, status, t);
}

static enum MHD_Result send_error(struct MHD_Connection *c, struct areq *q, int status, const char *code, const char *msg)
{
    snprintf(q->detail, sizeof q->detail, "%.255s", msg);
    return send_json(c, q, status, json_pack("{s:b,s:{s:s,s:s}}", "ok", 0, "error", "code", code, "message", msg));
}

/* ---- status ---- */

static json_t *slot_json(const struct update_slot_status *s)
{
    json_t *o = json_pack("{s:s,s:s,s:b,s:b}", "name", s->name, "path", s->path, "active", s->active, "valid", s->valid);
    if (!o) return NULL;
    if (s->valid) {
        json_object_set_new(o, "product", json_string(s->product));
        json_object_set_new(o, "version", json_string(s->version));
        json_object_set_new(o, "epoch", json_integer((json_int_t)s->epoch));
        json_object_set_new(o, "created", json_integer((json_int_t)s->created));
        if (s->provenance[0]) json_object_set_new(o, "provenance", json_string(s->provenance));
    } else {
        json_object_set_new(o, "why_invalid", json_string(s->why_invalid));
    }
    if (s->eval.verdict[0])
        json_object_set_new(o, "evaluation", json_pack("{s:s,s:f,s:f,s:i,s:s}", "verdict", s->eval.verdict, "score",
                                                       s->eval.score, "threshold", s->eval.threshold, "cases",
                                                       (json_int_t)s->eval.cases, "set_sha256", s->eval.set_sha256));
    return o;
}

static enum MHD_Result route_status(struct MHD_Connection *c, struct admin *ad, struct areq *q)
{
    static __thread struct update_status st; /* 10 KiB: off the connection thread's stack */
    char err[512];
    if (update_get_status(&ad->uc, &st, err, sizeof err)) return send_error(c, q, 500, "store", err);
    json_t *slots = json_array();
    for (int i = 0; i < 2; i++) json_array_append_new(slots, slot_json(&st.slots[i]));
    json_t *store = json_pack("{s:s,s:s,s:I,s:o,s:o,s:i,s:s,s:o}", "data_dir", ad->cfg.update_data_dir, "keys",
                              st.keys_source, "epoch_floor", (json_int_t)st.epoch_floor, "active",
                              st.active < 0 ? json_null() : json_string(st.slots[st.active].name), "trial",
                              st.trial < 0 ? json_null() : json_string(st.slots[st.trial].name), "boot_attempts",
                              (int)st.boot_attempts, "last_fallback", st.last_fallback, "slots", slots);
    pthread_mutex_lock(&ad->lock);
    struct model_host *h = ad->host;
    json_t *op = json_pack("{s:b}", "running", ad->busy);
    if (op && ad->busy) {
        json_object_set_new(op, "kind", json_string(ad->kind));
        if (ad->bundle[0]) json_object_set_new(op, "bundle", json_string(ad->bundle));
        if (ad->phase[0]) {
            json_object_set_new(op, "phase", json_string(ad->phase));
            json_object_set_new(op, "what", json_string(ad->what));
            json_object_set_new(op, "done", json_integer((json_int_t)ad->done));
            json_object_set_new(op, "total", json_integer((json_int_t)ad->total));
        }
    }
    json_t *last = ad->last_result ? json_loads(ad->last_result, 0, NULL) : json_null();
    pthread_mutex_unlock(&ad->lock);
    json_t *serving = json_null();
    if (h) {
        char model[128], slot[16], degraded[256];
        api_get_model(h->api, model, sizeof model, slot, sizeof slot, degraded, sizeof degraded);
        serving = json_pack("{s:s,s:s,s:s}", "model", model, "slot", slot, "status", degraded[0] ? "degraded" : "ready");
        if (serving && degraded[0]) json_object_set_new(serving, "reason", json_string(degraded));
    }
    return send_json(c, q, 200, json_pack("{s:b,s:o,s:o,s:o,s:o}", "ok", 1, "serving", serving, "operation", op,
                                          "last_result", last ? last : json_null(), "store", store));
}

/* ---- operations ---- */

static void op_progress(void *user, enum update_phase phase, const char *what, uint64_t done, uint64_t total)
{
    struct admin *ad = user;
    pthread_mutex_lock(&ad->lock);
    snprintf(ad->phase, sizeof ad->phase, "%s", phase_name(phase));
    snprintf(ad->what, sizeof ad->what, "%s", what ? what : "");
    ad->done = done;
    ad->total = total;
    pthread_mutex_unlock(&ad->lock);
}

/* Cancellation point (update_hooks.cancelled): the daemon is stopping, or the deadline passed. */
static int op_cancelled(void *user, char *why, size_t why_len)
{
    struct admin *ad = user;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    pthread_mutex_lock(&ad->lock);
    int stop = ad->grace_over;
    bool late = now.tv_sec > ad->deadline.tv_sec || (now.tv_sec == ad->deadline.tv_sec && now.tv_nsec >= ad->deadline.tv_nsec);
    pthread_mutex_unlock(&ad->lock);
    if (stop) snprintf(why, why_len, "the daemon is stopping (server.shutdown_grace_s is over)");
    else if (late) snprintf(why, why_len, "it ran longer than update.operation_timeout_s = %u s", ad->cfg.update_operation_timeout_s);
    return stop || late;
}

/* update.pause_serving before the new slot's model is opened (self-test, evaluation): auto
 * compares the memory plan of what is about to open (n_slots sessions of n_ctx) with what
 * is free beside the served model (the device's free memory on Vulkan, MemAvailable on the
 * reference) and releases the served model when it does not fit (model_host_pause); always
 * releases it; never keeps it. op_main serves again afterwards, whatever the outcome. */
static int make_room(struct admin *ad, const char *path, enum engine_backend backend, uint32_t n_ctx, uint32_t n_slots,
                     const char *what, char *err, size_t err_len)
{
    pthread_mutex_lock(&ad->lock);
    struct model_host *h = ad->host;
    pthread_mutex_unlock(&ad->lock);
    if (!h || h->paused || !strcmp(ad->cfg.update_pause_serving, "never")) return 0;
    char why[400];
    snprintf(why, sizeof why, "update.pause_serving = always (%s)", what);
    if (strcmp(ad->cfg.update_pause_serving, "always")) {
        struct engine_options eo;
        engine_options_default(&eo);
        eo.model_path = path;
        eo.backend = backend;
        backend_resolve(&eo);
        uint64_t free_bytes = 0;
        struct sched_stats ss;
        scheduler_stats(h->sched, &ss);
        if (eo.backend == ENGINE_BACKEND_VULKAN && ss.have_device && ss.device_total > ss.device_used)
            free_bytes = ss.device_total - ss.device_used;
        if (!free_bytes) free_bytes = engine_host_memory_available();
        struct engine_plan plan;
        char perr[256];
        int prc = engine_plan_file(path, eo.backend, eo.kv, n_ctx, n_slots, 0, &plan, perr, sizeof perr);
        if (!prc && plan.total <= free_bytes) return 0; /* fits beside: serving goes on */
        if (prc) snprintf(why, sizeof why, "%s: no memory plan (%.200s)", what, perr);
        else
            snprintf(why, sizeof why, "%s needs %" PRIu64 " MiB, %" PRIu64 " MiB are free beside the served model", what,
                     plan.total >> 20, free_bytes >> 20);
    }
    return model_host_pause(h, why, err, err_len);
}

static int op_selftest(void *user, const struct update_selftest *t, char *err, size_t err_len)
{
    struct admin *ad = user;
    if (make_room(ad, t->model_path, ad->so.backend, t->n_prompt + t->n_expected + 1, 1, "the self-test", err, err_len))
        return errf_prefix(err, err_len, "pausing serving for the self-test");
    return selftest_run(&ad->so, t, err, err_len);
}

/* Sessions of the evaluation engines: the context session_create gives with 0 (capped at
 * 4096 positions), one per job. */
static int op_evaluate(void *user, const struct update_eval *e, struct update_eval_result *r, char *err, size_t err_len)
{
    struct admin *ad = user;
    memset(r, 0, sizeof *r);
    uint32_t jobs = ad->policy.jobs ? ad->policy.jobs : 1;
    if (make_room(ad, e->model_path, ad->policy.backend, 4096, jobs, "the evaluation", err, err_len))
        return errf_prefix(err, err_len, "pausing serving for the evaluation");
    return eval_gate_evaluate(&ad->policy, e, r, err, err_len);
}

static json_t *info_json(const struct update_bundle_info *in)
{
    return json_pack("{s:s,s:s,s:I,s:I,s:s,s:i}", "product", in->product, "version", in->version, "epoch",
                     (json_int_t)in->epoch, "created", (json_int_t)in->created, "key", in->key_fingerprint,
                     "selftest_tokens", (int)in->n_expected);
}

static void *op_main(void *arg)
{
    struct admin *ad = arg;
    char kind[16], bundle[ADMIN_PATH_MAX];
    pthread_mutex_lock(&ad->lock);
    memcpy(kind, ad->kind, sizeof kind);
    memcpy(bundle, ad->bundle, sizeof bundle);
    struct model_host *h = ad->host;
    pthread_mutex_unlock(&ad->lock);

    static char err[1024]; /* one operation at a time */
    struct update_bundle_info info;
    memset(&info, 0, sizeof info);
    bool install = !strcmp(kind, "install");
    int rc;
    if (install) {
        struct update_hooks hooks = { .progress = op_progress, .selftest = op_selftest, .user = ad,
                                      .evaluate = ad->policy.set_path[0] ? op_evaluate : NULL, .eval_user = ad,
                                      .cancelled = op_cancelled };
        rc = update_install(&ad->uc, bundle, &hooks, &info, err, sizeof err);
    } else {
        rc = update_rollback(&ad->uc, err, sizeof err);
    }
    json_t *res = json_pack("{s:s,s:b}", "operation", kind, "ok", rc == 0);
    int status = 200;
    bool paused = h && h->paused; /* update.pause_serving released the served model */
    if (paused) json_object_set_new(res, "serving_paused", json_true());
    if (rc) {
        /* Refused or failed before the switch: the active slot and the served model are
         * unchanged (the same model is opened again after a pause). */
        status = 422;
        pthread_mutex_lock(&ad->lock);
        bool stopping = ad->stopping;
        pthread_mutex_unlock(&ad->lock);
        if (paused && !stopping) { /* a daemon that stops serves nothing more */
            struct reload_result rr;
            model_host_resume(h, &rr);
            json_t *rj = json_pack("{s:b,s:s,s:s}", "ok", rr.ok, "slot", rr.slot, "model", rr.model_id);
            if (rj && !rr.ok) json_object_set_new(rj, "error", json_string(rr.error));
            json_object_set_new(res, "resume", rj);
        }
        json_object_set_new(res, "error", json_pack("{s:s,s:s}", "code", install ? "install_refused" : "rollback_refused",
                                                    "message", err));
        json_object_set_new(res, "active_slot_changed", json_false());
    } else {
        if (install) json_object_set_new(res, "bundle", info_json(&info));
        json_object_set_new(res, "active_slot_changed", json_true());
        pthread_mutex_lock(&ad->lock);
        bool stopping = ad->stopping;
        snprintf(ad->phase, sizeof ad->phase, "reload");
        snprintf(ad->what, sizeof ad->what, "the new active slot");
        ad->done = ad->total = 0;
        pthread_mutex_unlock(&ad->lock);
        struct reload_result rr;
        if (stopping) {
            memset(&rr, 0, sizeof rr);
            snprintf(rr.error, sizeof rr.error, "the daemon is stopping; the new active slot loads at the next start");
            api_get_model(h->api, rr.model_id, sizeof rr.model_id, rr.slot, sizeof rr.slot, NULL, 0);
        } else {
            model_host_reload(h, &rr);
        }
        json_t *rj = json_pack("{s:b,s:s,s:s,s:i}", "ok", rr.ok, "slot", rr.slot, "model", rr.model_id,
                               "cancelled_generations", rr.cancelled);
        if (rj && !rr.ok) json_object_set_new(rj, "error", json_string(rr.error));
        json_object_set_new(res, "reload", rj);
        /* The update itself succeeded; ok says whether the daemon serves it now. */
        json_object_set_new(res, "ok", json_boolean(rr.ok));
    }
    char *text = res ? json_dumps(res, JSON_COMPACT) : NULL;
    json_decref(res);
    struct audit_record ar = { .event = install ? "update_install" : "update_rollback", .status = status,
                               .detail = rc ? err : install ? bundle : NULL };
    audit_write(&ar);
    pthread_mutex_lock(&ad->lock);
    free(ad->last_result);
    ad->last_result = text;
    ad->last_status = status;
    ad->seq_finished = ad->seq_started;
    ad->busy = false;
    ad->phase[0] = 0;
    pthread_cond_broadcast(&ad->cond);
    pthread_mutex_unlock(&ad->lock);
    return NULL;
}

static int client_gone(int fd)
{
    struct pollfd p = { .fd = fd, .events = POLLIN | POLLRDHUP };
    if (poll(&p, 1, 0) <= 0) return 0;
    return (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0;
}

static enum MHD_Result run_op(struct MHD_Connection *c, struct admin *ad, struct areq *q, const char *kind,
                              const char *bundle)
{
    pthread_mutex_lock(&ad->lock);
    if (ad->stopping || !ad->host) {
        pthread_mutex_unlock(&ad->lock);
        return send_error(c, q, 503, ad->stopping ? "stopping" : "loading",
                          ad->stopping ? "the daemon is stopping" : "the model is still loading; retry when /health is ready");
    }
    if (ad->busy) {
        char msg[200];
        snprintf(msg, sizeof msg, "an update operation (%s) is already in progress; one at a time", ad->kind);
        pthread_mutex_unlock(&ad->lock);
        return send_error(c, q, 409, "busy", msg);
    }
    if (ad->thread_joinable) pthread_join(ad->thread, NULL); /* the previous one ended (busy is false) */
    ad->thread_joinable = false;
    ad->busy = true;
    ad->phase[0] = 0;
    snprintf(ad->kind, sizeof ad->kind, "%s", kind);
    snprintf(ad->bundle, sizeof ad->bundle, "%s", bundle ? bundle : "");
    uint64_t mine = ++ad->seq_started;
    clock_gettime(CLOCK_MONOTONIC, &ad->deadline);
    ad->deadline.tv_sec += (time_t)ad->cfg.update_operation_timeout_s;
    if (pthread_create(&ad->thread, NULL, op_main, ad)) {
        ad->busy = false;
        ad->seq_finished = mine;
        pthread_mutex_unlock(&ad->lock);
        return send_error(c, q, 500, "internal", "cannot start the operation thread");
    }
    ad->thread_joinable = true;
    while (ad->seq_finished < mine) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += 200000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&ad->cond, &ad->lock, &until);
        if (ad->seq_finished < mine && ad->abandoned) { /* the daemon exits without it */
            pthread_mutex_unlock(&ad->lock);
            return send_error(c, q, 503, "stopping", "the daemon is stopping; the operation did not end in time and was abandoned");
        }
        if (ad->seq_finished < mine && client_gone(q->fd)) {
            pthread_mutex_unlock(&ad->lock);
            snprintf(q->detail, sizeof q->detail, "client left; the %s goes on", kind);
            return MHD_NO; /* the operation goes on; status shows its result */
        }
    }
    /* Only this operation could have finished since: it is the last result. */
    char *text = ad->last_result ? strdup(ad->last_result) : NULL;
    int status = ad->last_status;
    pthread_mutex_unlock(&ad->lock);
    if (!text) return send_error(c, q, 500, "internal", "out of memory");
    char *t = realloc(text, strlen(text) + 2);
    if (!t) {
        free(text);
        return MHD_NO;
    }
    strcat(t, "\n");
    return send_body(c, q, status, t);
}

/* ---- dispatch ---- */

static void on_completed(void *cls, struct MHD_Connection *c, void **req_cls, enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)c;
    (void)toe;
    struct areq *q = *req_cls;
    if (!q) return;
    struct audit_record ar = {
        .event = q->status == 403 ? "denied" : "admin",
        .peer = q->peer_ok ? &q->peer : NULL,
        .endpoint = q->route ? q->route : "other",
        .status = q->status ? q->status : 499,
        .detail = q->detail[0] ? q->detail : NULL,
    };
    audit_write(&ar);
    free(q->body);
    free(q);
    *req_cls = NULL;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_data_size, void **req_cls)
{
    (void)version;
    struct admin *ad = cls;
    struct areq *q = *req_cls;
    if (!q) {
        q = calloc(1, sizeof *q);
        if (!q) return MHD_NO;
        *req_cls = q;
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        q->fd = ci ? ci->connect_fd : -1;
        char err[128];
        q->peer_ok = q->fd >= 0 && peer_from_fd(q->fd, &q->peer, err, sizeof err) == 0 && q->peer.is_unix;
        /* The socket file is 0600 already; SO_PEERCRED is the check that does not depend on it. */
        if (!q->peer_ok || (q->peer.uid != 0 && q->peer.uid != ad->self_uid))
            return send_error(c, q, 403, "forbidden", "the admin socket takes only root or the daemon's own uid");
        const char *want = NULL;
        if (!strcmp(url, "/admin/update/status")) q->route = "/admin/update/status", want = "GET";
        else if (!strcmp(url, "/admin/update/install")) q->route = "/admin/update/install", want = "POST";
        else if (!strcmp(url, "/admin/update/rollback")) q->route = "/admin/update/rollback", want = "POST";
        if (!want) return send_error(c, q, 404, "not_found", "no such admin endpoint");
        if (strcmp(method, want)) return send_error(c, q, 405, "method_not_allowed", "method not allowed on this endpoint");
        return MHD_YES;
    }
    if (q->status) {
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (*upload_data_size) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (q->too_large || q->len + n > ADMIN_BODY_MAX) {
            q->too_large = true;
            return MHD_YES;
        }
        if (q->len + n + 1 > q->cap) {
            size_t cap = q->cap ? q->cap * 2 : 1024;
            while (cap < q->len + n + 1) cap *= 2;
            char *b = realloc(q->body, cap);
            if (!b) return MHD_NO;
            q->body = b;
            q->cap = cap;
        }
        memcpy(q->body + q->len, upload_data, n);
        q->len += n;
        q->body[q->len] = 0;
        return MHD_YES;
    }
    if (q->too_large) return send_error(c, q, 413, "body_too_large", "admin request bodies are at most 8192 bytes");
    if (!strcmp(q->route, "/admin/update/status")) return route_status(c, ad, q);
    if (!strcmp(q->route, "/admin/update/rollback")) return run_op(c, ad, q, "rollback", NULL);
    char path[ADMIN_PATH_MAX], err[256];
    if (admin_parse_install(q->body ? q->body : "", q->len, path, sizeof path, err, sizeof err))
        return send_error(c, q, 400, "invalid_request", err);
    snprintf(q->detail, sizeof q->detail, "%.255s", path);
    return run_op(c, ad, q, "install", path);
}

int admin_start(struct admin **out, const struct serve_config *cfg, int fd, char *err, size_t err_len)
{
    *out = NULL;
    struct admin *ad = calloc(1, sizeof *ad);
    if (!ad) return errf(err, err_len, "admin: out of memory");
    ad->cfg = *cfg;
    ad->uc = (struct update_config){ .data_dir = ad->cfg.update_data_dir, .keys_dir = ad->cfg.update_keys_dir,
                                     .product = ad->cfg.update_product,
                                     .max_boot_attempts = ad->cfg.update_max_boot_attempts };
    /* the self-test compares greedy tokens that `bundle create` recorded on the reference */
    if (engine_backend_parse(cfg->backend, &ad->so.backend) || ad->so.backend == ENGINE_BACKEND_AUTO)
        ad->so.backend = ENGINE_BACKEND_REF;
    /* The evaluation runs on the backend the daemon serves with (model.backend, as the site
     * recorded its set with flashbox eval), the self-test on the reference. */
    if (engine_backend_parse(cfg->backend, &ad->policy.backend)) ad->policy.backend = ENGINE_BACKEND_AUTO;
    enum engine_backend eval_backend = ad->policy.backend;
    ad->policy = (struct eval_policy){ .set_path = ad->cfg.update_eval_set, .min_score = cfg->update_eval_min_score,
                                       .max_regression = cfg->update_eval_max_regression, .backend = eval_backend,
                                       .jobs = cfg->update_eval_jobs, .cancel = &ad->cancel };
    ad->self_uid = geteuid();
    pthread_mutex_init(&ad->lock, NULL);
    pthread_cond_init(&ad->cond, NULL);
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ITC;
    ad->d = MHD_start_daemon(flags, 0, NULL, NULL, on_request, ad, MHD_OPTION_LISTEN_SOCKET, (MHD_socket)fd,
                             MHD_OPTION_CONNECTION_LIMIT, 8u, MHD_OPTION_CONNECTION_TIMEOUT, 30u,
                             MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)32 * 1024, MHD_OPTION_NOTIFY_COMPLETED,
                             on_completed, ad, MHD_OPTION_END);
    if (!ad->d) {
        pthread_mutex_destroy(&ad->lock);
        pthread_cond_destroy(&ad->cond);
        free(ad);
        return errf(err, err_len, "HTTP server on the admin socket %s did not start", cfg->admin_socket);
    }
    *out = ad;
    return 0;
}

void admin_set_host(struct admin *ad, struct model_host *h)
{
    pthread_mutex_lock(&ad->lock);
    ad->host = h;
    pthread_mutex_unlock(&ad->lock);
}

/* Waits (lock held) until no operation runs or ms passed. */
static void wait_idle(struct admin *ad, uint32_t ms)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += (time_t)(ms / 1000);
    until.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    while (ad->busy)
        if (pthread_cond_timedwait(&ad->cond, &ad->lock, &until) == ETIMEDOUT) break;
}

int admin_stop(struct admin *ad, uint32_t grace_ms)
{
    if (!ad) return 0;
    pthread_mutex_lock(&ad->lock);
    ad->stopping = true;
    ad->cancel = 1; /* an evaluation stops at its next token: the new slot is refused, the old one stays */
    pthread_mutex_unlock(&ad->lock);
    MHD_socket lfd = MHD_quiesce_daemon(ad->d);
    if (lfd != MHD_INVALID_SOCKET) close(lfd);
    pthread_mutex_lock(&ad->lock);
    wait_idle(ad, grace_ms);
    if (ad->busy) { /* grace is over: stop at the next cancellation point */
        ad->grace_over = true;
        wait_idle(ad, ADMIN_CANCEL_BOUND_MS);
    }
    bool stuck = ad->busy;
    ad->abandoned = stuck;
    bool join = ad->thread_joinable && !stuck;
    if (join) ad->thread_joinable = false;
    pthread_mutex_unlock(&ad->lock);
    if (stuck) {
        /* The operation sits in a call that does not return (a stalled read). The process
         * is about to exit, which leaves the store as a kill there would: consistent. The
         * waiting requests answer 503 now; the server stops; ad stays for the thread. */
        MHD_stop_daemon(ad->d);
        return 1;
    }
    if (join) pthread_join(ad->thread, NULL);
    MHD_stop_daemon(ad->d);
    free(ad->last_result);
    pthread_mutex_destroy(&ad->lock);
    pthread_cond_destroy(&ad->cond);
    free(ad);
    return 0;
}
