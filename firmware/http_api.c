/* The daemon's HTTP layer (see http_api.h): connections and their peers, request
 * lifecycle, dispatch, and the simple routes (health, models, metrics, tokenize). The
 * generation routes are in http_generate.c. libmicrohttpd runs one thread per connection,
 * so a handler may block waiting for its job; while it waits it polls the socket for the
 * client hanging up and cancels the job at once when it does. */
#include "firmware/http_api.h"
#include "firmware/http_internal.h"
#include "firmware/backend_pick.h"

#include "common/errmsg.h"
#include "common/mono_clock.h"
#include "firmware/api_logprobs.h"
#include "firmware/api_shapes.h"
#include "firmware/audit.h"
#include "firmware/metrics.h"
#include "firmware/peer.h"
#include "firmware/request_parse.h"
#include "firmware/scheduler.h"
#include "firmware/textgen.h"
#include "firmware/tool_output.h"
#include "update/update.h"

#include <jansson.h>
#include <microhttpd.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>


/* ---- small helpers ---- */

void http_snapshot_cfg(struct api *a, struct req *r)
{
    pthread_mutex_lock(&a->lock);
    r->cfg = a->cfg;
    memcpy(r->model_id, a->model_id, sizeof r->model_id);
    pthread_mutex_unlock(&a->lock);
}

enum MHD_Result http_send_text(struct MHD_Connection *c, struct req *r, int status, const char *ctype, char *text,
                                 size_t len)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    if (r) MHD_add_response_header(resp, "X-Request-Id", r->id);
    /* A pause for an update's evaluation lasts minutes, not a moment: ask for a longer wait. */
    bool paused = status == 503 && r && atomic_load(&r->api->state) == API_PAUSED;
    if (status == 429 || status == 503)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, paused ? API_PAUSED_RETRY_AFTER : "1");
    if (status == 405) {
        const char *allow = r && (r->ep == METRICS_EP_CHAT || r->ep == METRICS_EP_COMPLETIONS || r->ep == METRICS_EP_TOKENIZE ||
                                  r->ep == METRICS_EP_DETOKENIZE) ? "POST" : "GET";
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, allow);
    }
    if (r) r->status = status;
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)status, resp);
    MHD_destroy_response(resp);
    return ret;
}

enum MHD_Result http_send_json(struct MHD_Connection *c, struct req *r, int status, json_t *obj)
{
    char *s = obj ? json_dumps(obj, JSON_COMPACT) : NULL;
    json_decref(obj);
    if (!s) return http_send_text(c, r, 500, "text/plain", strdup("out of memory\n"), 14);
    size_t n = strlen(s);
    char *t = realloc(s, n + 2);
    if (!t) {
        free(s);
        return MHD_NO;
    }
    t[n] = '\n';
    t[n + 1] = 0;
    return http_send_text(c, r, status, "application/json", t, n + 1);
}

/* OpenAI-style error body. Messages name the field, never a path or internal state. */
enum MHD_Result http_send_error(struct MHD_Connection *c, struct req *r, int status, const char *code, const char *msg)
{
    const char *type = status == 429 ? "rate_limit_error"
                     : status >= 500 ? "server_error"
                     : status == 403 ? "permission_error"
                     : status == 404 ? "not_found_error"
                                     : "invalid_request_error";
    json_t *m = json_string(msg);
    if (!m) m = json_string("invalid request");
    json_t *o = r && r->flavor == FLAVOR_ANTHROPIC ? anthropic_error_json(status, json_string_value(m))
              : json_pack("{s:{s:O,s:s,s:s}}", "error", "message", m, "type", type, "code", code);
    json_decref(m);
    if (r) r->finish = code;
    return http_send_json(c, r, status, o);
}

/* True when the client has closed its end (or the socket failed). */
int http_client_gone(int fd)
{
    struct pollfd p = { .fd = fd, .events = POLLIN | POLLRDHUP };
    if (poll(&p, 1, 0) <= 0) return 0;
    if (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) return 1;
    /* Readable without RDHUP: a pipelined request; peek to tell EOF from data. */
    char b;
    return recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

static const struct {
    const char *path;
    enum metrics_endpoint ep;
    const char *method;
} routes[] = {
    { "/health", METRICS_EP_HEALTH, "GET" },
    { "/v1/models", METRICS_EP_MODELS, "GET" },
    { "/v1/chat/completions", METRICS_EP_CHAT, "POST" },
    { "/v1/completions", METRICS_EP_COMPLETIONS, "POST" },
    { "/tokenize", METRICS_EP_TOKENIZE, "POST" },
    { "/detokenize", METRICS_EP_DETOKENIZE, "POST" },
    { "/metrics", METRICS_EP_METRICS, "GET" },
    { "/v1/messages", METRICS_EP_MESSAGES, "POST" },
    { "/v1/responses", METRICS_EP_RESPONSES, "POST" },
};

/* ---- connection and request lifecycle ---- */

static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context, enum MHD_ConnectionNotificationCode code)
{
    struct api *a = cls;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        struct conn *k = calloc(1, sizeof *k);
        if (!k) return;
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        k->fd = ci ? ci->connect_fd : -1;
        char err[128];
        k->peer_err = k->fd < 0 || peer_from_fd(k->fd, &k->peer, err, sizeof err) != 0;
        pthread_mutex_lock(&a->conns_lock);
        k->next = a->conns;
        if (a->conns) a->conns->prev = k;
        a->conns = k;
        pthread_mutex_unlock(&a->conns_lock);
        *socket_context = k;
    } else if (code == MHD_CONNECTION_NOTIFY_CLOSED) {
        struct conn *k = *socket_context;
        if (!k) return;
        pthread_mutex_lock(&a->conns_lock);
        if (k->prev) k->prev->next = k->next;
        else a->conns = k->next;
        if (k->next) k->next->prev = k->prev;
        pthread_mutex_unlock(&a->conns_lock);
        free(k);
        *socket_context = NULL;
    }
}

static void on_completed(void *cls, struct MHD_Connection *c, void **req_cls, enum MHD_RequestTerminationCode toe)
{
    (void)c;
    struct api *a = cls;
    struct req *r = *req_cls;
    if (!r) return;
    if (r->job) {
        pthread_mutex_lock(&r->job->lock);
        enum job_finish f = r->job->finish;
        if (!r->n_more) r->tokens_out = r->job->n_out; /* n > 1: the choices' sum, counted as they end */
        r->tokens_reused = r->job->n_reused;
        pthread_mutex_unlock(&r->job->lock);
        if (f == JOB_RUNNING) {
            /* The client left (or the write failed) before the end: stop generating now. */
            scheduler_cancel(a->sched, r->job);
            r->finish = "cancelled";
        } else if (!r->finish) {
            r->finish = job_finish_name(f);
        }
        if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK && f != JOB_RUNNING && r->status == 200) r->finish = "http_client_gone";
        job_release(r->job);
        atomic_fetch_sub(&a->in_flight, 1);
    }
    for (uint32_t k = 0; k < r->n_more; k++) {
        scheduler_cancel(a->sched, r->more[k]); /* no-op once finished */
        job_release(r->more[k]);
    }
    http_uid_release(a, r);
    uint64_t now = mono_ns();
    if (!r->status) r->status = 499; /* never answered: client gone before a response */
    metrics_request_done(r->ep, r->status);
    struct audit_record ar = {
        .event = r->denied ? "denied" : "request",
        .peer = r->conn && !r->conn->peer_err ? &r->conn->peer : NULL,
        .request_id = r->id,
        .method = r->method,
        .endpoint = r->ep == METRICS_EP_OTHER ? "other" : metrics_endpoint_name(r->ep),
        .model = r->model_id[0] ? r->model_id : NULL,
        .slot = r->cfg.slot,
        .tokens_in = r->tokens_in,
        .tokens_out = r->tokens_out,
        .tokens_reused = r->tokens_reused,
        .status = r->status,
        .duration_ms = (double)(now - r->t0_ns) / 1e6,
        .finish = r->finish,
        .detail = r->detail[0] ? r->detail : NULL,
        .prompt = r->cfg.log_prompts ? r->audit_prompt : NULL,
    };
    audit_write(&ar);
    free(r->body);
    free(r->out);
    free(r->audit_prompt);
    free(r);
    *req_cls = NULL;
}

bool http_is_device_lost(const char *engine_err)
{
    return strstr(engine_err, ENGINE_ERR_DEVICE_LOST) != NULL;
}

/* ---- simple routes ---- */

static const char *state_word(struct api *a, int *http_status)
{
    int st = atomic_load(&a->state);
    *http_status = 503;
    if (st == API_LOADING) return "loading";
    if (st == API_STOPPING) return "stopping";
    if (st == API_FAILED) return "failed";
    if (st == API_PAUSED) return "paused";
    struct sched_stats ss;
    scheduler_stats(a->sched, &ss);
    if (ss.last_eval_failed) return "degraded";
    *http_status = 200;
    return "ready";
}

/* The slot store's site evaluations (update.data_dir set): 0, or -1 when there are none. */
static int read_evals(const struct req *r, struct update_eval_record ev[2])
{
    if (!r->cfg.update_data_dir[0]) return -1;
    struct update_config uc;
    update_config_default(&uc);
    uc.data_dir = r->cfg.update_data_dir;
    char err[256];
    return update_read_evals(&uc, ev, err, sizeof err);
}

static enum MHD_Result route_health(struct MHD_Connection *c, struct req *r)
{
    int status;
    const char *w = state_word(r->api, &status);
    char degraded[256];
    pthread_mutex_lock(&r->api->lock);
    memcpy(degraded, r->api->degraded, sizeof degraded);
    pthread_mutex_unlock(&r->api->lock);
    /* Still serving, but not what the slot store says is active (a hot reload failed). */
    if (degraded[0] && status == 200) w = "degraded";
    json_t *o = json_pack("{s:s,s:s,s:s}", "status", w, "model", r->model_id, "slot", r->cfg.slot);
    if (o && degraded[0]) json_object_set_new(o, "reason", json_string(degraded));
    char pick[512];
    backend_pick_reason(pick, sizeof pick);
    const char *colon = strchr(pick, ':');
    if (o && colon) {
        /* "vulkan: auto, a discrete GPU (...)": the backend, then why it was picked. */
        json_object_set_new(o, "backend", json_stringn(pick, (size_t)(colon - pick)));
        json_object_set_new(o, "backend_reason", json_string(colon[1] == ' ' ? colon + 2 : colon + 1));
    }
    if (o && atomic_load(&r->api->state) == API_READY) {
        struct sched_stats ss;
        scheduler_stats(r->api->sched, &ss);
        json_object_set_new(o, "slots_busy", json_integer(ss.busy));
        json_object_set_new(o, "slots_total", json_integer(ss.slots));
        if (ss.slots_short[0]) { /* server.slots asked for more than could be allocated */
            json_object_set_new(o, "slots_configured", json_integer(ss.slots_configured));
            json_object_set_new(o, "slots_error", json_string(ss.slots_short));
        }
        json_object_set_new(o, "queue_depth", json_integer(ss.queued));
        json_object_set_new(o, "context_length", json_integer(scheduler_n_ctx(r->api->sched)));
        if (ss.swapping) json_object_set_new(o, "reloading", json_true());
    }
    struct update_eval_record ev[2];
    int served = !strcmp(r->cfg.slot, "a") ? 0 : !strcmp(r->cfg.slot, "b") ? 1 : -1;
    if (o && served >= 0 && read_evals(r, ev) == 0 && ev[served].verdict[0])
        json_object_set_new(o, "evaluation", json_pack("{s:s,s:f,s:f,s:i,s:s}", "verdict", ev[served].verdict, "score",
                                                       ev[served].score, "threshold", ev[served].threshold, "cases",
                                                       (json_int_t)ev[served].cases, "set_sha256", ev[served].set_sha256));
    return http_send_json(c, r, status, o);
}

static enum MHD_Result route_models(struct MHD_Connection *c, struct req *r)
{
    if (atomic_load(&r->api->state) != API_READY) return http_send_error(c, r, 503, "loading", "the model is not loaded yet");
    json_t *m = json_pack("{s:s,s:s,s:I,s:s,s:s,s:I}", "id", r->model_id, "object", "model", "created",
                          (json_int_t)(r->api->id_base / 1000000000ull), "owned_by", "flashbox", "slot", r->cfg.slot,
                          "context_length", (json_int_t)scheduler_n_ctx(r->api->sched));
    if (r->model_path[0]) { /* GET /v1/models/{id}: the one model served, by its name */
        if (strcmp(r->model_path, r->model_id)) {
            json_decref(m);
            char msg[256];
            snprintf(msg, sizeof msg, "model '%.100s' is not served here (this server serves '%.100s')", r->model_path,
                     r->model_id);
            return http_send_error(c, r, 404, "model_not_found", msg);
        }
        return http_send_json(c, r, 200, m);
    }
    return http_send_json(c, r, 200, json_pack("{s:s,s:[o]}", "object", "list", "data", m));
}

static enum MHD_Result route_metrics(struct MHD_Connection *c, struct req *r)
{
    struct metrics_gauges g = { 0 };
    int st = atomic_load(&r->api->state);
    g.ready = st == API_READY ? 1 : st == API_LOADING ? 0 : -1;
    g.model_id = r->model_id;
    g.slot = r->cfg.slot;
    struct update_eval_record ev[2];
    if (read_evals(r, ev) == 0)
        for (int i = 0; i < 2; i++)
            if (!strcmp(ev[i].verdict, "pass") || !strcmp(ev[i].verdict, "fail")) {
                g.have_eval_score[i] = 1;
                g.eval_score[i] = ev[i].score;
            }
    if (st == API_READY) {
        struct sched_stats ss;
        scheduler_stats(r->api->sched, &ss);
        g.queue_depth = ss.queued;
        g.queue_capacity = ss.queue_capacity;
        g.slots_busy = ss.busy;
        g.prefill_waiting = ss.prefill_waiting;
        g.slots_total = ss.slots;
        g.slots_configured = ss.slots_configured;
        if (ss.last_eval_failed) g.ready = -1;
        g.have_device = ss.have_device;
        g.device_used = ss.device_used;
        g.device_total = ss.device_total;
        if (ss.have_experts) {
            g.have_expert_stats = 1;
            for (int k = 0; k < 2; k++) {
                g.expert_hits[k] = ss.experts.hits[k];
                g.expert_misses[k] = ss.experts.misses[k];
            }
            g.expert_bytes_read = ss.experts.bytes_read;
            g.expert_loads = ss.experts.loads;
            g.expert_evictions = ss.experts.evictions;
            g.expert_stall_ns = ss.experts.stall_ns;
            g.expert_prefetch_issued = ss.experts.prefetch_issued;
            g.expert_prefetch_used = ss.experts.prefetch_used;
            for (int k = 0; k < 2; k++) {
                g.expert_prefetch_issued_kind[k] = ss.experts.prefetch_issued_kind[k];
                g.expert_prefetch_used_kind[k] = ss.experts.prefetch_used_kind[k];
            }
            g.expert_prefetch_dropped = ss.experts.prefetch_dropped;
            g.expert_cache_bytes = (uint64_t)ss.experts.n_slots * ss.experts.slot_bytes;
        }
        if (ss.have_prefix) {
            g.have_prefix = 1;
            g.prefix = ss.prefix;
        }
    }
    char *text;
    size_t len;
    if (metrics_render(&g, &text, &len)) return http_send_error(c, r, 500, "internal", "out of memory");
    return http_send_text(c, r, 200, "text/plain; version=0.0.4", text, len);
}

static enum MHD_Result route_tokenize(struct MHD_Connection *c, struct req *r)
{
    char err[256];
    char *content;
    bool add_special;
    if (request_parse_tokenize(r->body, r->body_len, &content, &add_special, err, sizeof err))
        return http_send_error(c, r, 400, "invalid_request", err);
    int32_t *ids;
    uint32_t n;
    pthread_rwlock_rdlock(&r->api->model_lock);
    int rc = r->api->tg ? textgen_tokenize(r->api->tg, content, strlen(content), add_special, &ids, &n, err, sizeof err) : 1;
    pthread_rwlock_unlock(&r->api->model_lock);
    free(content);
    if (rc == 1) return http_send_error(c, r, 503, "paused", API_PAUSED_MESSAGE);
    if (rc) return http_send_error(c, r, 400, "invalid_request", err);
    json_t *arr = json_array();
    for (uint32_t i = 0; arr && i < n; i++) json_array_append_new(arr, json_integer(ids[i]));
    free(ids);
    r->tokens_in = n;
    return http_send_json(c, r, 200, json_pack("{s:o}", "tokens", arr));
}

static enum MHD_Result route_detokenize(struct MHD_Connection *c, struct req *r)
{
    char err[256];
    int32_t *ids;
    uint32_t n;
    pthread_rwlock_rdlock(&r->api->model_lock);
    if (request_parse_detokenize(r->body, r->body_len, r->api->n_vocab, 1u << 20, &ids, &n, err, sizeof err)) {
        pthread_rwlock_unlock(&r->api->model_lock);
        return http_send_error(c, r, 400, "invalid_request", err);
    }
    char *text;
    size_t len;
    int rc = r->api->tg ? textgen_detokenize(r->api->tg, ids, n, &text, &len, err, sizeof err) : 1;
    pthread_rwlock_unlock(&r->api->model_lock);
    free(ids);
    if (rc == 1) return http_send_error(c, r, 503, "paused", API_PAUSED_MESSAGE);
    if (rc) return http_send_error(c, r, 400, "invalid_request", err);
    json_t *s = json_stringn(text, len);
    free(text);
    if (!s) return http_send_error(c, r, 500, "internal", "detokenized text is not valid UTF-8");
    r->tokens_in = n;
    return http_send_json(c, r, 200, json_pack("{s:o}", "content", s));
}

/* ---- dispatch ---- */

/* DNS rebinding defence for loopback TCP: only loopback names in Host. */
static int host_ok(struct MHD_Connection *c)
{
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_HOST);
    if (!h) return 0;
    size_t n = strcspn(h, ":");
    if (h[0] == '[') n = strcspn(h, "]") + 1;
    return (n == 9 && !strncmp(h, "localhost", 9)) || (n == 9 && !strncmp(h, "127.0.0.1", 9)) ||
           (n == 5 && !strncmp(h, "[::1]", 5));
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_data_size, void **req_cls)
{
    (void)version;
    struct api *a = cls;
    struct req *r = *req_cls;
    if (!r) {
        r = calloc(1, sizeof *r);
        if (!r) return MHD_NO;
        *req_cls = r;
        r->api = a;
        r->t0_ns = mono_ns();
        snprintf(r->id, sizeof r->id, "%016llx%08llx", (unsigned long long)a->id_base,
                 (unsigned long long)atomic_fetch_add(&a->next_id, 1));
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
        r->conn = ci ? ci->socket_context : NULL;
        http_snapshot_cfg(a, r);
        r->method = !strcmp(method, "GET") ? "GET" : !strcmp(method, "POST") ? "POST" : "other";
        r->ep = METRICS_EP_OTHER;
        const char *want = NULL;
        for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
            if (!strcmp(url, routes[i].path)) {
                r->ep = routes[i].ep;
                want = routes[i].method;
            }
        if (!strncmp(url, "/v1/models/", 11) && url[11] && strlen(url + 11) < sizeof r->model_path) {
            r->ep = METRICS_EP_MODELS;
            want = "GET";
            snprintf(r->model_path, sizeof r->model_path, "%s", url + 11);
        }
        if (r->ep == METRICS_EP_MESSAGES) r->flavor = FLAVOR_ANTHROPIC;
        if (r->ep == METRICS_EP_RESPONSES) r->flavor = FLAVOR_RESPONSES;
        if (!r->conn || r->conn->peer_err) return http_send_error(c, r, 403, "forbidden", "peer credentials unavailable");
        if (!peer_allowed(&r->conn->peer, r->cfg.allow_uids, r->cfg.n_allow_uids, r->cfg.allow_gids, r->cfg.n_allow_gids)) {
            r->denied = 1;
            metrics_rejected("forbidden");
            return http_send_error(c, r, 403, "forbidden", "this peer is not allowed to use the API");
        }
        if (!r->conn->peer.is_unix && !host_ok(c)) return http_send_error(c, r, 403, "forbidden", "Host must be a loopback name");
        if (!want && !strcmp(url, "/v1/embeddings"))
            return http_send_error(c, r, 404, "not_found", "no embeddings: the model has no embedding head");
        if (!want) return http_send_error(c, r, 404, "not_found", "no such endpoint");
        if (strcmp(method, want)) return http_send_error(c, r, 405, "method_not_allowed", "method not allowed on this endpoint");
        if (!strcmp(want, "POST")) {
            const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
            if (cl && strtoull(cl, NULL, 10) > r->cfg.max_body_bytes) {
                metrics_rejected("too_large");
                return http_send_error(c, r, 413, "body_too_large", "request body larger than limits.max_body_bytes");
            }
        }
        return MHD_YES;
    }
    if (r->status) { /* answered early; drop the rest of the body */
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (*upload_data_size) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (r->body_too_large || r->body_len + n > r->cfg.max_body_bytes) {
            r->body_too_large = 1;
            return MHD_YES;
        }
        if (r->body_len + n + 1 > r->body_cap) {
            size_t cap = r->body_cap ? r->body_cap : 4096;
            while (cap < r->body_len + n + 1) cap *= 2;
            char *b = realloc(r->body, cap);
            if (!b) return MHD_NO;
            r->body = b;
            r->body_cap = cap;
        }
        memcpy(r->body + r->body_len, upload_data, n);
        r->body_len += n;
        r->body[r->body_len] = 0;
        return MHD_YES;
    }
    if (r->body_too_large) {
        metrics_rejected("too_large");
        return http_send_error(c, r, 413, "body_too_large", "request body larger than limits.max_body_bytes");
    }
    if (!r->body) {
        r->body = strdup("");
        if (!r->body) return MHD_NO;
    }
    switch (r->ep) {
    case METRICS_EP_HEALTH: return route_health(c, r);
    case METRICS_EP_METRICS: return route_metrics(c, r);
    default: break;
    }
    if (atomic_load(&a->state) != API_READY) {
        int st = atomic_load(&a->state);
        if (st == API_PAUSED) return http_send_error(c, r, 503, "paused", API_PAUSED_MESSAGE);
        return http_send_error(c, r, 503, st == API_LOADING ? "loading" : "unavailable",
                          st == API_LOADING ? "the model is still loading" : "the server is not serving");
    }
    switch (r->ep) {
    case METRICS_EP_MODELS: return route_models(c, r);
    case METRICS_EP_TOKENIZE: return route_tokenize(c, r);
    case METRICS_EP_DETOKENIZE: return route_detokenize(c, r);
    case METRICS_EP_CHAT:
    case METRICS_EP_COMPLETIONS:
    case METRICS_EP_MESSAGES:
    case METRICS_EP_RESPONSES: return http_route_generate(c, r);
    default: return http_send_error(c, r, 404, "not_found", "no such endpoint");
    }
}

static struct MHD_Daemon *start_one(struct api *a, int fd, const struct serve_config *cfg)
{
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ITC;
    return MHD_start_daemon(flags, 0, NULL, NULL, on_request, a,
                            MHD_OPTION_LISTEN_SOCKET, (MHD_socket)fd,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)cfg->max_connections,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)cfg->connection_timeout_s,
                            MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)64 * 1024,
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, a,
                            MHD_OPTION_NOTIFY_CONNECTION, on_connection, a,
                            MHD_OPTION_END);
}

int api_start(struct api *a, const struct serve_config *cfg, int unix_fd, int tcp_fd, char *err, size_t err_len)
{
    pthread_mutex_init(&a->lock, NULL);
    pthread_mutex_init(&a->conns_lock, NULL);
    pthread_rwlock_init(&a->model_lock, NULL);
    a->model_gen = 0;
    a->degraded[0] = 0;
    a->conns = NULL;
    memset(a->per_uid, 0, sizeof a->per_uid);
    a->cfg = *cfg;
    atomic_store(&a->state, API_LOADING);
    atomic_store(&a->next_id, 1);
    atomic_store(&a->in_flight, 0);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    a->id_base = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
    a->unix_d = start_one(a, unix_fd, cfg);
    if (!a->unix_d) return errf(err, err_len, "HTTP server on %s did not start", cfg->socket_path);
    if (tcp_fd >= 0) {
        a->tcp_d = start_one(a, tcp_fd, cfg);
        if (!a->tcp_d) {
            MHD_stop_daemon(a->unix_d);
            a->unix_d = NULL;
            return errf(err, err_len, "HTTP server on %s did not start", cfg->listen);
        }
    }
    return 0;
}

void api_set_ready(struct api *a, struct scheduler *sched, struct textgen *tg, uint32_t n_vocab, const char *model_id)
{
    a->sched = sched;
    a->tg = tg;
    a->n_vocab = n_vocab;
    pthread_mutex_lock(&a->lock);
    snprintf(a->model_id, sizeof a->model_id, "%s", model_id);
    pthread_mutex_unlock(&a->lock);
    atomic_store(&a->state, API_READY);
}

void api_swap_model(struct api *a, struct textgen *tg, uint32_t n_vocab, uint32_t gen, const char *model_id,
                    const char *slot)
{
    pthread_rwlock_wrlock(&a->model_lock); /* waits for tokenizations in progress on the old one */
    a->tg = tg;
    a->n_vocab = n_vocab;
    a->model_gen = gen;
    pthread_mutex_lock(&a->lock);
    snprintf(a->model_id, sizeof a->model_id, "%s", model_id);
    snprintf(a->cfg.slot, sizeof a->cfg.slot, "%s", slot);
    a->degraded[0] = 0;
    pthread_mutex_unlock(&a->lock);
    pthread_rwlock_unlock(&a->model_lock);
}

void api_set_degraded(struct api *a, const char *reason)
{
    pthread_mutex_lock(&a->lock);
    snprintf(a->degraded, sizeof a->degraded, "%s", reason ? reason : "");
    pthread_mutex_unlock(&a->lock);
}

void api_get_model(struct api *a, char *model_id, size_t model_len, char *slot, size_t slot_len, char *degraded,
                   size_t degraded_len)
{
    pthread_mutex_lock(&a->lock);
    if (model_id) snprintf(model_id, model_len, "%s", a->model_id);
    if (slot) snprintf(slot, slot_len, "%s", a->cfg.slot);
    if (degraded) snprintf(degraded, degraded_len, "%s", a->degraded);
    pthread_mutex_unlock(&a->lock);
}

void api_set_config(struct api *a, const struct serve_config *cfg)
{
    pthread_mutex_lock(&a->lock);
    a->cfg = *cfg;
    pthread_mutex_unlock(&a->lock);
}

void api_quiesce(struct api *a)
{
    struct MHD_Daemon *ds[2] = { a->unix_d, a->tcp_d };
    for (int i = 0; i < 2; i++) {
        if (!ds[i]) continue;
        MHD_socket fd = MHD_quiesce_daemon(ds[i]);
        if (fd != MHD_INVALID_SOCKET) close(fd);
    }
}

struct stopper {
    struct api *a;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int done;
};

static void *stop_daemons(void *arg)
{
    struct stopper *st = arg;
    if (st->a->tcp_d) MHD_stop_daemon(st->a->tcp_d);
    if (st->a->unix_d) MHD_stop_daemon(st->a->unix_d);
    pthread_mutex_lock(&st->lock);
    st->done = 1;
    pthread_cond_signal(&st->cond);
    pthread_mutex_unlock(&st->lock);
    return NULL;
}

int api_stop(struct api *a, uint32_t timeout_ms)
{
    /* Requests whose jobs ended are still sending their last bytes: let them finish. */
    for (uint32_t waited = 0; atomic_load(&a->in_flight) > 0 && waited < timeout_ms / 2; waited += 10) {
        struct timespec ten = { .tv_nsec = 10000000L };
        nanosleep(&ten, NULL);
    }
    /* Idle keep-alive connections sit in select() until their timeout; shutting their
     * sockets down wakes them so the daemons stop now. */
    pthread_mutex_lock(&a->conns_lock);
    for (struct conn *k = a->conns; k; k = k->next)
        if (k->fd >= 0) shutdown(k->fd, SHUT_RDWR);
    pthread_mutex_unlock(&a->conns_lock);
    /* A connection whose client stopped reading waits in select() for room to write, which
     * shutdown() does not end; MHD_stop_daemon would wait for it until its idle timeout.
     * Stop in a helper thread and give up waiting after timeout_ms (the process is exiting). */
    static struct stopper st = { .lock = PTHREAD_MUTEX_INITIALIZER };
    st.a = a;
    st.done = 0;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&st.cond, &ca);
    pthread_condattr_destroy(&ca);
    pthread_t t;
    if (pthread_create(&t, NULL, stop_daemons, &st)) {
        stop_daemons(&st);
        a->tcp_d = a->unix_d = NULL;
        return 0;
    }
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += timeout_ms / 1000;
    until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&st.lock);
    while (!st.done && pthread_cond_timedwait(&st.cond, &st.lock, &until) == 0) {}
    int done = st.done;
    pthread_mutex_unlock(&st.lock);
    if (!done) {
        pthread_detach(t);
        return -1;
    }
    pthread_join(t, NULL);
    a->tcp_d = a->unix_d = NULL;
    return 0;
}
