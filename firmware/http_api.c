/* HTTP routes of the daemon (see http_api.h). libmicrohttpd runs one thread per
 * connection, so a handler may block waiting for its job; while it waits it polls the
 * socket for the client hanging up and cancels the job at once when it does. */
#include "firmware/http_api.h"
#include "firmware/backend_pick.h"

#include "common/errmsg.h"
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

enum { WAIT_SLICE_MS = 50 };

/* One connection: who is on the other end (fixed at accept). */
struct conn {
    struct peer peer;
    int fd;
    int peer_err;
    struct conn *prev, *next; /* in api->conns */
};

/* One request on a connection. */
struct req {
    struct api *api;
    struct conn *conn;
    struct serve_config cfg;      /* snapshot at request start */
    char model_id[128];           /* the served model's name at request start */
    enum metrics_endpoint ep;
    const char *method, *path;
    char id[40];
    uint64_t t0_ns;
    char *body;                   /* [body_cap] */
    size_t body_len, body_cap;
    int body_too_large;
    int status;
    const char *finish;
    uint64_t tokens_in, tokens_out;
    uint64_t tokens_reused;     /* prompt tokens resumed from the prefix cache */
    char *audit_prompt;           /* only with audit.log_prompts */
    int denied;
    int uid_counted;              /* holds one of its uid's per_uid slots */

    /* Generation. */
    struct job *job;
    int chat;
    int64_t created;
    /* SSE state: per choice (n > 1 streams every choice, its chunks carrying its index);
     * cur is the choice being produced. */
    struct choice_stream {
        size_t sent;              /* job text bytes already sent */
        uint32_t lp_sent;         /* tokens whose logprobs were streamed */
        size_t lp_offset;         /* completions: text_offset of the next token */
        uint32_t calls_named;     /* streamed calls whose name delta went out */
        size_t args_sent[16];     /* per streamed call: argument bytes sent */
        int role_sent, ended;
        uint32_t n_out;
    } cs[REQ_MAX_N];
    uint32_t cur;
    char *out;                    /* pending event bytes [out_len] */
    size_t out_len, out_off;
    int stream_ended, role_sent;  /* role_sent: Anthropic / Responses start events */
    uint64_t last_event_ns;
    /* Tool calls (chat with tools offered): the answer is read back for a DSML block. */
    int tools;
    struct job *more[REQ_MAX_N - 1]; /* n > 1: the other choices' jobs, [n_more] */
    uint32_t n_more;
    int deadline_partial;         /* header Flashbox-Deadline: partial (finish_reason "length" at the deadline) */
    enum { FLAVOR_OPENAI, FLAVOR_ANTHROPIC, FLAVOR_RESPONSES } flavor; /* the API shape of the answer */
    struct api_stream st;         /* Anthropic / Responses stream state */
    char model_path[160];         /* GET /v1/models/{id}: the id asked for */
    char detail[320];             /* audit note, e.g. why model output did not parse as a call */
};

static void uid_release(struct api *a, struct req *r);

/* ---- small helpers ---- */

static void snapshot_cfg(struct api *a, struct req *r)
{
    pthread_mutex_lock(&a->lock);
    r->cfg = a->cfg;
    memcpy(r->model_id, a->model_id, sizeof r->model_id);
    pthread_mutex_unlock(&a->lock);
}

static enum MHD_Result send_text(struct MHD_Connection *c, struct req *r, int status, const char *ctype, char *text,
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

static enum MHD_Result send_json(struct MHD_Connection *c, struct req *r, int status, json_t *obj)
{
    char *s = obj ? json_dumps(obj, JSON_COMPACT) : NULL;
    json_decref(obj);
    if (!s) return send_text(c, r, 500, "text/plain", strdup("out of memory\n"), 14);
    size_t n = strlen(s);
    char *t = realloc(s, n + 2);
    if (!t) {
        free(s);
        return MHD_NO;
    }
    t[n] = '\n';
    t[n + 1] = 0;
    return send_text(c, r, status, "application/json", t, n + 1);
}

/* OpenAI-style error body. Messages name the field, never a path or internal state. */
static enum MHD_Result send_error(struct MHD_Connection *c, struct req *r, int status, const char *code, const char *msg)
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
    return send_json(c, r, status, o);
}

/* True when the client has closed its end (or the socket failed). */
static int client_gone(int fd)
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
        if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK && f != JOB_RUNNING && r->status == 200) r->finish = "client_gone";
        job_release(r->job);
        atomic_fetch_sub(&a->in_flight, 1);
    }
    for (uint32_t k = 0; k < r->n_more; k++) {
        scheduler_cancel(a->sched, r->more[k]); /* no-op once finished */
        job_release(r->more[k]);
    }
    uid_release(a, r);
    uint64_t now = sched_now_ns();
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

static bool is_device_lost(const char *engine_err)
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
    return send_json(c, r, status, o);
}

static enum MHD_Result route_models(struct MHD_Connection *c, struct req *r)
{
    if (atomic_load(&r->api->state) != API_READY) return send_error(c, r, 503, "loading", "the model is not loaded yet");
    json_t *m = json_pack("{s:s,s:s,s:I,s:s,s:s,s:I}", "id", r->model_id, "object", "model", "created",
                          (json_int_t)(r->api->id_base / 1000000000ull), "owned_by", "flashbox", "slot", r->cfg.slot,
                          "context_length", (json_int_t)scheduler_n_ctx(r->api->sched));
    if (r->model_path[0]) { /* GET /v1/models/{id}: the one model served, by its name */
        if (strcmp(r->model_path, r->model_id)) {
            json_decref(m);
            char msg[256];
            snprintf(msg, sizeof msg, "model '%.100s' is not served here (this server serves '%.100s')", r->model_path,
                     r->model_id);
            return send_error(c, r, 404, "model_not_found", msg);
        }
        return send_json(c, r, 200, m);
    }
    return send_json(c, r, 200, json_pack("{s:s,s:[o]}", "object", "list", "data", m));
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
    if (metrics_render(&g, &text, &len)) return send_error(c, r, 500, "internal", "out of memory");
    return send_text(c, r, 200, "text/plain; version=0.0.4", text, len);
}

static enum MHD_Result route_tokenize(struct MHD_Connection *c, struct req *r)
{
    char err[256];
    char *content;
    bool add_special;
    if (request_parse_tokenize(r->body, r->body_len, &content, &add_special, err, sizeof err))
        return send_error(c, r, 400, "invalid_request", err);
    int32_t *ids;
    uint32_t n;
    pthread_rwlock_rdlock(&r->api->model_lock);
    int rc = r->api->tg ? textgen_tokenize(r->api->tg, content, strlen(content), add_special, &ids, &n, err, sizeof err) : 1;
    pthread_rwlock_unlock(&r->api->model_lock);
    free(content);
    if (rc == 1) return send_error(c, r, 503, "paused", API_PAUSED_MESSAGE);
    if (rc) return send_error(c, r, 400, "invalid_request", err);
    json_t *arr = json_array();
    for (uint32_t i = 0; arr && i < n; i++) json_array_append_new(arr, json_integer(ids[i]));
    free(ids);
    r->tokens_in = n;
    return send_json(c, r, 200, json_pack("{s:o}", "tokens", arr));
}

static enum MHD_Result route_detokenize(struct MHD_Connection *c, struct req *r)
{
    char err[256];
    int32_t *ids;
    uint32_t n;
    pthread_rwlock_rdlock(&r->api->model_lock);
    if (request_parse_detokenize(r->body, r->body_len, r->api->n_vocab, 1u << 20, &ids, &n, err, sizeof err)) {
        pthread_rwlock_unlock(&r->api->model_lock);
        return send_error(c, r, 400, "invalid_request", err);
    }
    char *text;
    size_t len;
    int rc = r->api->tg ? textgen_detokenize(r->api->tg, ids, n, &text, &len, err, sizeof err) : 1;
    pthread_rwlock_unlock(&r->api->model_lock);
    free(ids);
    if (rc == 1) return send_error(c, r, 503, "paused", API_PAUSED_MESSAGE);
    if (rc) return send_error(c, r, 400, "invalid_request", err);
    json_t *s = json_stringn(text, len);
    free(text);
    if (!s) return send_error(c, r, 500, "internal", "detokenized text is not valid UTF-8");
    r->tokens_in = n;
    return send_json(c, r, 200, json_pack("{s:o}", "content", s));
}

/* ---- generation ---- */

static json_t *usage_json(const struct req *r, uint32_t n_out)
{
    return json_pack("{s:I,s:I,s:I}", "prompt_tokens", (json_int_t)r->tokens_in, "completion_tokens", (json_int_t)n_out,
                     "total_tokens", (json_int_t)(r->tokens_in + n_out));
}

static json_t *chunk_json(const struct req *r, json_t *choice)
{
    json_t *o = json_pack("{s:s+,s:s,s:I,s:s,s:[]}", "id", r->chat ? "chatcmpl-" : "cmpl-", r->id, "object",
                          r->chat ? "chat.completion.chunk" : "text_completion", "created", (json_int_t)r->created,
                          "model", r->model_id, "choices");
    if (o && choice) json_array_append_new(json_object_get(o, "choices"), choice);
    else json_decref(choice);
    return o;
}

/* A streaming choice carrying text (or, for chat, a role) and a finish reason. Chat text
 * before the end of the model's reasoning goes in delta.reasoning_content. */
static json_t *stream_choice(const struct req *r, const char *text, size_t len, int with_role, const char *finish,
                             int reasoning)
{
    json_t *fin = finish ? json_string(finish) : json_null();
    json_t *content = text ? json_stringn(text, len) : NULL;
    if (text && !content) content = json_string("\xef\xbf\xbd");
    if (r->chat) {
        json_t *delta = json_object();
        if (with_role) json_object_set_new(delta, "role", json_string("assistant"));
        if (content) json_object_set_new(delta, reasoning ? "reasoning_content" : "content", content);
        return json_pack("{s:i,s:o,s:o}", "index", (int)r->cur, "delta", delta, "finish_reason", fin);
    }
    return json_pack("{s:i,s:o,s:n,s:o}", "index", (int)r->cur, "text", content ? content : json_string(""), "logprobs",
                     "finish_reason", fin);
}

/* Attaches the logprobs of tokens [from, to) to a choice (chat or completion shape). */
static void attach_logprobs(struct req *r, const struct job *j, json_t *choice, uint32_t from, uint32_t to)
{
    if (!choice || !j->logprobs || to <= from) return;
    size_t offset0 = 0, *offset = r->job->req.stream ? &r->cs[r->cur].lp_offset : j == r->job ? &r->cs[0].lp_offset : &offset0;
    pthread_rwlock_rdlock(&r->api->model_lock);
    json_t *lp = !r->api->tg ? NULL /* released meanwhile (a pause cuts this job off anyway) */
                 : r->chat   ? logprobs_chat_json(r->api->tg, j->logprobs + from, to - from)
                             : logprobs_completion_json(r->api->tg, j->logprobs + from, to - from, offset);
    pthread_rwlock_unlock(&r->api->model_lock);
    json_object_set_new(choice, "logprobs", lp);
}

/* Appends "data: <json>\n\n" to the pending output. */
static int out_event(struct req *r, json_t *o)
{
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!s) return -1;
    size_t n = strlen(s);
    char *p = realloc(r->out, r->out_len + n + 8);
    if (!p) {
        free(s);
        return -1;
    }
    r->out = p;
    memcpy(r->out + r->out_len, "data: ", 6);
    memcpy(r->out + r->out_len + 6, s, n);
    memcpy(r->out + r->out_len + 6 + n, "\n\n", 2);
    r->out_len += n + 8;
    free(s);
    return 0;
}

static int out_raw(struct req *r, const char *s)
{
    size_t n = strlen(s);
    char *p = realloc(r->out, r->out_len + n);
    if (!p) return -1;
    r->out = p;
    memcpy(r->out + r->out_len, s, n);
    r->out_len += n;
    return 0;
}

/* Writes [name, data] pairs as "event: name\ndata: json\n\n" (Anthropic and Responses
 * streams name their events). Consumes events. */
static int out_named(struct req *r, json_t *events)
{
    int rc = 0;
    size_t i;
    json_t *ev;
    json_array_foreach(events, i, ev) {
        char head[96];
        snprintf(head, sizeof head, "event: %s\n", json_string_value(json_array_get(ev, 0)));
        if (out_raw(r, head) || out_event(r, json_incref(json_array_get(ev, 1)))) rc = -1;
    }
    json_decref(events);
    return rc;
}

/* The parts of a result known before the end (ids, model, prompt size). */
static struct api_result result_head(const struct req *r)
{
    return (struct api_result){ .id = r->id, .model = r->model_id, .created = r->created, .n_in = r->tokens_in };
}

static const char *openai_finish(enum job_finish f)
{
    return f == JOB_STOP ? "stop" : f == JOB_LENGTH ? "length" : job_finish_name(f);
}

/* Waits on the job's condition (lock held) for at most WAIT_SLICE_MS, so the caller can look
 * at the client between slices. */
static void wait_job_slice(struct job *j)
{
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_nsec += WAIT_SLICE_MS * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&j->cond, &j->lock, &until);
}

/* The answer (text after the reasoning) read back for tool calls; on output that starts a
 * block but does not parse, no calls and the reason goes to the audit log. */
static void read_tool_calls(struct req *r, const char *answer, size_t len, struct tool_output *o)
{
    const struct gen_request *g = &r->job->req;
    const char *names[128];
    uint32_t n = g->n_tools < 128 ? g->n_tools : 128;
    for (uint32_t i = 0; i < n; i++) names[i] = g->tools[i].name;
    char err[256];
    if (tool_output_parse(answer, len, names, n, o, err, sizeof err)) {
        snprintf(r->detail, sizeof r->detail, "model output returned as text: %s", err);
        return;
    }
    if (!g->parallel_tool_calls && o->n_calls > 1) { /* the first call only, as asked */
        for (uint32_t i = 1; i < o->n_calls; i++) {
            free(o->calls[i].name);
            free(o->calls[i].arguments);
        }
        o->n_calls = 1;
    }
}

/* OpenAI's tool_calls array; with stream_index, the deltas' form (index, and arguments
 * left for a later delta). */
static json_t *tool_calls_json(const struct req *r, const struct tool_output *o, uint32_t i0, uint32_t n, int stream)
{
    json_t *a = json_array();
    for (uint32_t i = i0; a && i < i0 + n; i++) {
        char id[64];
        snprintf(id, sizeof id, "call_%s_%u", r->id, i);
        json_t *fn = json_pack("{s:s,s:s}", "name", o->calls[i].name, "arguments", stream ? "" : o->calls[i].arguments);
        json_t *c = json_pack("{s:s,s:s,s:o}", "id", id, "type", "function", "function", fn);
        if (c && stream) json_object_set_new(c, "index", json_integer(i));
        json_array_append_new(a, c);
    }
    return a;
}

/* Streamed call deltas as OpenAI sends them: index, id, type and name first, then argument
 * fragments. */
static int stream_call_name(struct req *r, uint32_t i, const char *name)
{
    char id[64];
    snprintf(id, sizeof id, "call_%s_%u", r->id, i);
    json_t *c = stream_choice(r, NULL, 0, 0, NULL, 0);
    json_object_set_new(json_object_get(c, "delta"), "tool_calls",
                        json_pack("[{s:I,s:s,s:s,s:{s:s,s:s}}]", "index", (json_int_t)i, "id", id, "type", "function",
                                  "function", "name", name, "arguments", ""));
    return out_event(r, chunk_json(r, c));
}

static int stream_call_args(struct req *r, uint32_t i, const char *args, size_t n)
{
    json_t *c = stream_choice(r, NULL, 0, 0, NULL, 0);
    json_object_set_new(json_object_get(c, "delta"), "tool_calls",
                        json_pack("[{s:I,s:{s:s%}}]", "index", (json_int_t)i, "function", "arguments", args, n));
    return out_event(r, chunk_json(r, c));
}

/* While a call block streams in (the job's lock held, everything before the block sent):
 * the deltas of what is new in it. 1 when something went out, 0 when nothing did, -1 when
 * the client is gone. */
static int sse_tool_call_deltas(struct req *r, const char *answer, size_t len)
{
    const struct gen_request *g = &r->job->req;
    const char *names[128];
    struct choice_stream *c = &r->cs[r->cur];
    uint32_t n = g->n_tools < 128 ? g->n_tools : 128, max = g->parallel_tool_calls ? 16 : 1;
    for (uint32_t i = 0; i < n; i++) names[i] = g->tools[i].name;
    struct tool_call_partial calls[16];
    uint32_t k = tool_output_partial(answer, len, names, n, calls, max);
    int rc = 0;
    for (uint32_t i = 0; i < k && rc >= 0; i++) {
        if (i >= c->calls_named) {
            if (stream_call_name(r, i, calls[i].name)) rc = -1;
            c->calls_named = i + 1;
            c->args_sent[i] = 0;
            if (rc == 0) rc = 1;
        }
        if (rc >= 0 && calls[i].args_len > c->args_sent[i]) {
            if (stream_call_args(r, i, calls[i].args + c->args_sent[i], calls[i].args_len - c->args_sent[i])) rc = -1;
            else rc = 1;
            c->args_sent[i] = calls[i].args_len;
        }
    }
    tool_output_partial_free(calls, k);
    return rc;
}

/* Streaming: the end of a tools answer. The text past what was sent is content up to the
 * block; then each call as OpenAI streams it: id, type and name first, then the arguments. */
static int sse_tool_calls(struct req *r, const char *answer, size_t answer_len, size_t answer_sent,
                          const char **finish)
{
    struct tool_output o;
    read_tool_calls(r, answer, answer_len, &o);
    if (o.content_len > answer_sent &&
        out_event(r, chunk_json(r, stream_choice(r, answer + answer_sent, o.content_len - answer_sent, 0, NULL, 0))))
        goto fail;
    for (uint32_t i = 0; i < o.n_calls; i++) {
        /* what streamed while the block came in (tool_output_partial) is a prefix of this */
        const struct choice_stream *c = &r->cs[r->cur];
        size_t done = i < c->calls_named ? c->args_sent[i] : 0, total = strlen(o.calls[i].arguments);
        if (i >= c->calls_named && stream_call_name(r, i, o.calls[i].name)) goto fail;
        if (done < total && stream_call_args(r, i, o.calls[i].arguments + done, total - done)) goto fail;
    }
    if (o.n_calls) *finish = "tool_calls";
    tool_output_free(&o);
    return 0;
fail:
    tool_output_free(&o);
    return -1;
}

static const char *failure_message(enum job_finish f)
{
    return f == JOB_ERROR ? "generation failed" : f == JOB_DEADLINE ? "request deadline passed"
         : f == JOB_SHUTDOWN ? "the server is shutting down"
         : f == JOB_RELOAD ? "cancelled while the model was replaced; retry" : "cancelled";
}

/* The end of an Anthropic or Responses stream (job finished, its lock held): the rest of
 * the answer up to any call block, the calls, and the closing events; or an error event. */
static int sse_end_other(struct req *r)
{
    struct job *j = r->job;
    enum job_finish f = j->finish;
    r->tokens_out = j->n_out;
    r->finish = job_finish_name(f);
    r->stream_ended = 1;
    if (f == JOB_DEADLINE && r->deadline_partial) f = JOB_LENGTH; /* asked for what was produced */
    json_t *events = json_array();
    if (f != JOB_STOP && f != JOB_LENGTH) {
        /* A lost GPU is named (503, code device_lost) as in the OpenAI shape: the daemon reopens it. */
        bool lost = f == JOB_ERROR && is_device_lost(j->error);
        int status = lost ? 503 : f == JOB_DEADLINE ? 504 : f == JOB_ERROR ? 500 : 503;
        const char *code = lost ? "device_lost" : job_finish_name(f);
        char msg[sizeof j->error + 64];
        snprintf(msg, sizeof msg, lost ? "the engine failed during generation: %s" : "%s",
                 lost ? j->error : failure_message(f));
        if (lost) r->finish = "device_lost";
        if (r->flavor == FLAVOR_ANTHROPIC) {
            json_array_append_new(events, json_pack("[s,o]", "error", anthropic_error_json(status, msg)));
        } else {
            struct api_result head = result_head(r);
            head.n_out = j->n_out;
            responses_stream_failed(&r->st, &head, code, msg, events);
        }
        return out_named(r, events);
    }
    size_t a0 = j->thinking ? (j->reasoning_known ? j->reasoning_end : j->text_len) : 0;
    const char *answer = j->text + a0;
    size_t len = j->text_len - a0, sent = r->cs[0].sent > a0 ? r->cs[0].sent - a0 : 0;
    struct tool_output o = { .content_len = len };
    if (r->tools && f == JOB_STOP) read_tool_calls(r, answer, len, &o);
    struct api_result res = result_head(r);
    if (j->thinking) {
        res.reasoning = j->text;
        res.reasoning_len = a0;
    }
    if (o.content_len > sent) {
        if (r->flavor == FLAVOR_ANTHROPIC) anthropic_stream_delta(&r->st, false, answer + sent, o.content_len - sent, events);
        else responses_stream_delta(&r->st, &res, false, answer + sent, o.content_len - sent, events);
    }
    r->cs[0].sent = j->text_len;
    int si = j->stop_index;
    bool by_string = si >= 0 && (uint32_t)si < j->req.n_stop;
    res.content = answer;
    res.content_len = o.content_len;
    res.calls = &o;
    res.end = o.n_calls ? API_END_TOOL_CALLS : f == JOB_LENGTH ? API_END_LENGTH : by_string ? API_END_STOP_STRING : API_END_STOP;
    res.stop_string = by_string ? j->req.stop[si] : NULL;
    res.n_out = j->n_out;
    if (r->flavor == FLAVOR_ANTHROPIC) anthropic_stream_end(&r->st, &res, events);
    else responses_stream_end(&r->st, &res, events);
    tool_output_free(&o);
    return out_named(r, events);
}

static struct job *choice_job(const struct req *r, uint32_t k) { return k ? r->more[k - 1] : r->job; }

/* OpenAI streams with n > 1: once every choice has ended, the usage chunk and [DONE]; else
 * the next choice not ended becomes current. */
static int sse_next_choice(struct req *r)
{
    uint32_t n = r->n_more + 1;
    for (uint32_t step = 1; step <= n; step++) {
        uint32_t k = (r->cur + step) % n;
        if (!r->cs[k].ended) {
            r->cur = k;
            return 0;
        }
    }
    uint64_t total = 0;
    for (uint32_t k = 0; k < n; k++) total += r->cs[k].n_out;
    r->tokens_out = total;
    if (r->job->req.include_usage) {
        json_t *o = chunk_json(r, NULL);
        if (o) json_object_set_new(o, "usage", usage_json(r, (uint32_t)total));
        out_event(r, o);
    }
    r->stream_ended = 1;
    return out_raw(r, "data: [DONE]\n\n");
}

/* Produces the next SSE events into r->out; returns -1 when the client is gone. With n > 1
 * (OpenAI shapes), the choices take turns: each produces what it has, and the wait is on
 * one choice only once none had anything. */
static int sse_produce(struct req *r)
{
    if (!r->role_sent) {
        r->role_sent = 1;
        if (r->flavor != FLAVOR_OPENAI) {
            json_t *events = json_array();
            struct api_result head = result_head(r);
            if (r->flavor == FLAVOR_ANTHROPIC) anthropic_stream_start(&r->st, &head, events);
            else responses_stream_start(&r->st, &head, events);
            return out_named(r, events);
        }
    }
    uint32_t idle = 0;
    for (;;) {
        struct job *j = choice_job(r, r->cur);
        struct choice_stream *c = &r->cs[r->cur];
        if (r->flavor == FLAVOR_OPENAI && r->chat && !c->role_sent) {
            c->role_sent = 1;
            return out_event(r, chunk_json(r, stream_choice(r, NULL, 0, 1, NULL, 0)));
        }
        pthread_mutex_lock(&j->lock);
        if (j->model_id[0]) memcpy(r->model_id, j->model_id, sizeof r->model_id); /* queued across a model swap */
        size_t upto = j->committed;
        int reasoning = 0;
        if (upto > c->sent) {
            /* Thinking mode: up to the end of the reasoning (all of it while that end is
             * unknown) the text is reasoning; one event never mixes the two. */
            if (j->thinking && (!j->reasoning_known || c->sent < j->reasoning_end)) {
                reasoning = 1;
                if (j->reasoning_known && j->reasoning_end < upto) upto = j->reasoning_end;
            } else if (r->tools) {
                /* answer text that may start a call block waits for the end */
                size_t a0 = j->thinking ? j->reasoning_end : 0;
                upto = a0 + tool_output_safe_prefix(j->text + a0, upto - a0);
            }
        }
        if (upto > c->sent) {
            size_t n = upto - c->sent;
            char *delta = malloc(n);
            if (delta) memcpy(delta, j->text + c->sent, n);
            c->sent = upto;
            uint32_t lp_to = j->n_out; /* entries below n_out no longer change */
            if (r->flavor != FLAVOR_OPENAI) {
                /* under the lock: a Responses reasoning item closes with the reasoning text */
                json_t *events = json_array();
                struct api_result head = result_head(r);
                head.reasoning = j->text;
                head.reasoning_len = j->reasoning_known ? j->reasoning_end : j->text_len;
                if (delta && r->flavor == FLAVOR_ANTHROPIC) anthropic_stream_delta(&r->st, reasoning, delta, n, events);
                else if (delta) responses_stream_delta(&r->st, &head, reasoning, delta, n, events);
                pthread_mutex_unlock(&j->lock);
                free(delta);
                return delta ? out_named(r, events) : (json_decref(events), -1);
            }
            pthread_mutex_unlock(&j->lock);
            if (!delta) return -1;
            json_t *choice = stream_choice(r, delta, n, 0, NULL, reasoning);
            attach_logprobs(r, j, choice, c->lp_sent, lp_to);
            c->lp_sent = lp_to;
            int rc = out_event(r, chunk_json(r, choice));
            free(delta);
            return rc;
        }
        if (r->tools && r->flavor == FLAVOR_OPENAI && r->chat && upto == c->sent && upto < j->committed &&
            (!j->thinking || j->reasoning_known)) {
            /* everything before a call block is out: the block's deltas as it comes */
            size_t a0 = j->thinking ? j->reasoning_end : 0;
            int rc = c->sent >= a0 ? sse_tool_call_deltas(r, j->text + a0, j->committed - a0) : 0;
            if (rc) {
                pthread_mutex_unlock(&j->lock);
                return rc < 0 ? -1 : 0;
            }
        }
        if (j->finish != JOB_RUNNING && r->flavor != FLAVOR_OPENAI) {
            int rc = sse_end_other(r);
            pthread_mutex_unlock(&j->lock);
            return rc;
        }
        if (j->finish != JOB_RUNNING) {
            enum job_finish f = j->finish;
            if (f == JOB_DEADLINE && r->deadline_partial) f = JOB_LENGTH; /* asked for what was produced */
            uint32_t n_out = j->n_out;
            bool lost = f == JOB_ERROR && is_device_lost(j->error);
            char lost_msg[sizeof j->error];
            memcpy(lost_msg, j->error, sizeof lost_msg);
            const char *finish = openai_finish(f);
            if (r->tools && (f == JOB_STOP || f == JOB_LENGTH)) {
                /* the job is finished: its text no longer changes */
                size_t a0 = j->thinking ? (j->reasoning_known ? j->reasoning_end : j->text_len) : 0;
                if (c->sent >= a0 && sse_tool_calls(r, j->text + a0, j->text_len - a0, c->sent - a0, &finish)) {
                    pthread_mutex_unlock(&j->lock);
                    return -1;
                }
                c->sent = j->text_len;
                if (f == JOB_LENGTH) finish = "length";
            }
            pthread_mutex_unlock(&j->lock);
            c->ended = 1;
            c->n_out = n_out;
            r->finish = lost ? "device_lost" : job_finish_name(f);
            if (f == JOB_STOP || f == JOB_LENGTH) {
                json_t *choice = stream_choice(r, NULL, 0, 0, finish, 0);
                attach_logprobs(r, j, choice, c->lp_sent, n_out < j->req.max_tokens ? n_out : j->req.max_tokens);
                out_event(r, chunk_json(r, choice));
            } else {
                const char *msg = lost ? lost_msg : failure_message(f);
                out_event(r, json_pack("{s:{s:s,s:s,s:s}}", "error", "message", msg, "type", "server_error", "code",
                                       lost ? "device_lost" : job_finish_name(f)));
                for (uint32_t k = 0; k <= r->n_more; k++) { /* an error ends the stream */
                    if (!r->cs[k].ended) scheduler_cancel(r->api->sched, choice_job(r, k));
                    r->cs[k].ended = 1;
                }
            }
            return sse_next_choice(r);
        }
        if (r->n_more && ++idle <= r->n_more) { /* another choice may have something */
            pthread_mutex_unlock(&j->lock);
            sse_next_choice(r);
            continue;
        }
        idle = 0;
        wait_job_slice(j);
        pthread_mutex_unlock(&j->lock);
        if (client_gone(r->conn->fd)) {
            for (uint32_t k = 0; k <= r->n_more; k++) scheduler_cancel(r->api->sched, choice_job(r, k));
            return -1;
        }
        if (sched_now_ns() - r->last_event_ns > (uint64_t)r->cfg.sse_ping_s * 1000000000ull)
            return out_raw(r, r->flavor == FLAVOR_ANTHROPIC ? "event: ping\ndata: {\"type\": \"ping\"}\n\n" : ": ping\n\n");
    }
}

static ssize_t sse_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    struct req *r = cls;
    if (r->out_off == r->out_len) {
        r->out_len = r->out_off = 0;
        if (r->stream_ended) return MHD_CONTENT_READER_END_OF_STREAM;
        if (sse_produce(r)) return MHD_CONTENT_READER_END_WITH_ERROR;
        r->last_event_ns = sched_now_ns();
    }
    size_t n = r->out_len - r->out_off;
    if (n > max) n = max;
    memcpy(buf, r->out + r->out_off, n);
    r->out_off += n;
    return (ssize_t)n;
}

/* Waits for a job in this connection's thread; -1 when the client left (every job of the
 * request is then cancelled). */
static int wait_job(struct req *r, struct job *j)
{
    pthread_mutex_lock(&j->lock);
    while (j->finish == JOB_RUNNING) {
        wait_job_slice(j);
        if (j->finish != JOB_RUNNING) break;
        pthread_mutex_unlock(&j->lock);
        if (client_gone(r->conn->fd)) {
            scheduler_cancel(r->api->sched, r->job);
            for (uint32_t k = 0; k < r->n_more; k++) scheduler_cancel(r->api->sched, r->more[k]);
            r->finish = "cancelled";
            return -1;
        }
        pthread_mutex_lock(&j->lock);
    }
    pthread_mutex_unlock(&j->lock);
    return 0;
}

/* A finished job's answer as an OpenAI choice (index k), or its API shape for the other
 * flavours (*shaped). NULL with *status and *code set when the job failed. */
static json_t *finished_answer(struct req *r, struct job *j, uint32_t k, int *status, const char **code, char *why,
                               size_t why_len)
{
    pthread_mutex_lock(&j->lock); /* finished: nothing changes any more, the lock is for the memory order */
    enum job_finish f = j->finish;
    uint32_t n_out = j->n_out;
    bool lost = f == JOB_ERROR && is_device_lost(j->error);
    if (j->model_id[0]) memcpy(r->model_id, j->model_id, sizeof r->model_id); /* queued across a model swap */
    /* Thinking mode: the reasoning (all of the text if it never ended) is separate. */
    size_t split = !j->thinking ? 0 : j->reasoning_known && j->reasoning_end < j->text_len ? j->reasoning_end : j->text_len;
    json_t *text = json_stringn(j->text + split, j->text_len - split);
    json_t *reasoning = j->thinking ? json_stringn(j->text, split) : NULL;
    snprintf(why, why_len, "the engine failed during generation: %s", j->error);
    pthread_mutex_unlock(&j->lock);
    r->tokens_out += n_out;
    r->finish = job_finish_name(f);
    /* a deadline answers with what was produced when the client asked for that */
    bool partial = f == JOB_DEADLINE && r->deadline_partial;
    if (partial) f = JOB_LENGTH;
    if (f != JOB_STOP && f != JOB_LENGTH) {
        json_decref(text);
        json_decref(reasoning);
        /* A lost GPU is not this request's fault and not for good: the daemon reopens the backend. */
        *status = lost ? 503 : f == JOB_ERROR ? 500 : f == JOB_DEADLINE ? 504 : 503;
        *code = lost ? "device_lost" : f == JOB_ERROR ? "generation_failed" : f == JOB_DEADLINE ? "deadline"
              : f == JOB_RELOAD ? "model_reload" : "shutdown";
        if (f == JOB_DEADLINE) snprintf(why, why_len, "the request deadline passed before the answer was complete");
        else if (f == JOB_RELOAD) snprintf(why, why_len, "cancelled while the model was replaced; retry");
        else if (f != JOB_ERROR) snprintf(why, why_len, "the server is shutting down");
        return NULL;
    }
    if (!text) text = json_string("");
    json_t *calls = NULL;
    const char *finish = openai_finish(f);
    struct tool_output o = { .content_len = json_string_length(text) };
    if (r->tools && f == JOB_STOP) read_tool_calls(r, json_string_value(text), json_string_length(text), &o);
    if (r->flavor != FLAVOR_OPENAI) {
        int si = j->stop_index;
        struct api_result res = {
            .id = r->id, .model = r->model_id, .created = r->created,
            .reasoning = reasoning ? json_string_value(reasoning) : NULL,
            .reasoning_len = reasoning ? json_string_length(reasoning) : 0,
            .content = json_string_value(text), .content_len = o.content_len, .calls = &o,
            .end = o.n_calls ? API_END_TOOL_CALLS : f == JOB_LENGTH ? API_END_LENGTH
                 : si >= 0 && (uint32_t)si < j->req.n_stop ? API_END_STOP_STRING : API_END_STOP,
            .stop_string = si >= 0 && (uint32_t)si < j->req.n_stop ? j->req.stop[si] : NULL,
            .n_in = r->tokens_in, .n_out = n_out,
        };
        json_t *out = r->flavor == FLAVOR_ANTHROPIC ? anthropic_message_json(&res)
                                                    : responses_json(&res, f == JOB_LENGTH ? "incomplete" : "completed");
        tool_output_free(&o);
        json_decref(text);
        json_decref(reasoning);
        return out;
    }
    if (o.n_calls) {
        calls = tool_calls_json(r, &o, 0, o.n_calls, 0);
        json_t *content = o.content_len ? json_stringn(json_string_value(text), o.content_len) : json_null();
        json_decref(text);
        text = content;
        finish = "tool_calls";
    }
    tool_output_free(&o);
    json_t *choice = r->chat ? json_pack("{s:I,s:{s:s,s:o},s:s}", "index", (json_int_t)k, "message", "role", "assistant",
                                         "content", text, "finish_reason", finish)
                             : json_pack("{s:I,s:o,s:n,s:s}", "index", (json_int_t)k, "text", text, "logprobs",
                                         "finish_reason", finish);
    if (reasoning && choice) json_object_set_new(json_object_get(choice, "message"), "reasoning_content", reasoning);
    else json_decref(reasoning);
    if (calls && choice) json_object_set_new(json_object_get(choice, "message"), "tool_calls", calls);
    else json_decref(calls);
    attach_logprobs(r, j, choice, 0, n_out < j->req.max_tokens ? n_out : j->req.max_tokens);
    return choice;
}

/* Non-streaming: waits for the request's jobs (one per choice) in this connection's thread. */
static enum MHD_Result finish_blocking(struct MHD_Connection *c, struct req *r)
{
    json_t *choices = json_array();
    r->tokens_out = 0;
    for (uint32_t k = 0; k <= r->n_more; k++) {
        struct job *j = k ? r->more[k - 1] : r->job;
        if (wait_job(r, j)) {
            json_decref(choices);
            return MHD_NO; /* nobody to answer; MHD closes the connection */
        }
        int status = 0;
        const char *code = NULL;
        char why[sizeof j->error + 64];
        json_t *a = finished_answer(r, j, k, &status, &code, why, sizeof why);
        if (!a) {
            json_decref(choices);
            for (uint32_t m = 0; m < r->n_more; m++) scheduler_cancel(r->api->sched, r->more[m]);
            return send_error(c, r, status, code, why);
        }
        if (r->flavor != FLAVOR_OPENAI) {
            json_decref(choices);
            return send_json(c, r, 200, a);
        }
        json_array_append_new(choices, a);
    }
    json_t *resp = json_pack("{s:s+,s:s,s:I,s:s,s:o,s:o}", "id", r->chat ? "chatcmpl-" : "cmpl-", r->id, "object",
                             r->chat ? "chat.completion" : "text_completion", "created", (json_int_t)r->created, "model",
                             r->model_id, "choices", choices, "usage", usage_json(r, (uint32_t)r->tokens_out));
    return send_json(c, r, 200, resp);
}

/* Takes one of the peer uid's in-flight places; 0 when over the cap (or the table is full). */
static int uid_acquire(struct api *a, struct req *r)
{
    if (!r->cfg.max_requests_per_uid || !r->conn->peer.is_unix) return 1;
    uint32_t uid = (uint32_t)r->conn->peer.uid;
    int ok = 0;
    pthread_mutex_lock(&a->conns_lock);
    int free_i = -1, at = -1;
    for (int i = 0; i < 64; i++) {
        if (a->per_uid[i].n && a->per_uid[i].uid == uid) at = i;
        if (!a->per_uid[i].n && free_i < 0) free_i = i;
    }
    if (at < 0 && free_i >= 0) {
        at = free_i;
        a->per_uid[at].uid = uid;
    }
    if (at >= 0 && a->per_uid[at].n < r->cfg.max_requests_per_uid) {
        a->per_uid[at].n++;
        r->uid_counted = 1;
        ok = 1;
    }
    pthread_mutex_unlock(&a->conns_lock);
    return ok;
}

static void uid_release(struct api *a, struct req *r)
{
    if (!r->uid_counted) return;
    pthread_mutex_lock(&a->conns_lock);
    for (int i = 0; i < 64; i++)
        if (a->per_uid[i].n && a->per_uid[i].uid == (uint32_t)r->conn->peer.uid) {
            a->per_uid[i].n--;
            break;
        }
    pthread_mutex_unlock(&a->conns_lock);
    r->uid_counted = 0;
}

static enum MHD_Result route_generate(struct MHD_Connection *c, struct req *r)
{
    struct api *a = r->api;
    char err[256];
    struct req_limits lim = {
        .max_body_bytes = r->cfg.max_body_bytes,
        .max_tokens = r->cfg.max_tokens,
        .default_max_tokens = r->cfg.default_max_tokens,
        .max_stop = r->cfg.max_stop,
        .max_stop_len = r->cfg.max_stop_len,
        .max_messages = r->cfg.max_messages,
    };
    struct gen_request gr;
    r->chat = r->ep != METRICS_EP_COMPLETIONS;
    int rc;
    if (r->flavor != FLAVOR_OPENAI) {
        /* another API's body, translated into the chat body it means, then parsed as one */
        if (r->body_len > lim.max_body_bytes) return send_error(c, r, 413, "body_too_large", "request body too large");
        json_t *chat = r->flavor == FLAVOR_ANTHROPIC ? anthropic_to_chat(r->body, r->body_len, err, sizeof err)
                                                     : responses_to_chat(r->body, r->body_len, err, sizeof err);
        if (!chat) return send_error(c, r, 400, "invalid_request", err);
        char *body = json_dumps(chat, JSON_COMPACT);
        json_decref(chat);
        if (!body) return send_error(c, r, 500, "internal", "out of memory");
        lim.max_body_bytes = (uint64_t)strlen(body) + 1; /* the client's body was checked above */
        rc = request_parse_chat(body, strlen(body), &lim, &gr, err, sizeof err);
        free(body);
    } else {
        rc = r->chat ? request_parse_chat(r->body, r->body_len, &lim, &gr, err, sizeof err)
                     : request_parse_completion(r->body, r->body_len, &lim, &gr, err, sizeof err);
    }
    if (rc) return send_error(c, r, 400, "invalid_request", err);
    if (gr.n > 1) {
        /* each choice decodes in its own slot: no more choices than slots; streamed in the OpenAI
         * shapes only (chunks carry the choice's index) */
        struct sched_stats st;
        scheduler_stats(a->sched, &st);
        const char *why = gr.stream && r->flavor != FLAVOR_OPENAI ? "n > 1 is not supported in this API's stream" : NULL;
        char msg[128];
        if (!why && gr.n > st.slots) {
            snprintf(msg, sizeof msg, "n: %u, at most %u here (one decoding slot per choice: server.slots)", gr.n, st.slots);
            why = msg;
        }
        if (why) {
            gen_request_free(&gr);
            return send_error(c, r, 400, "invalid_request", why);
        }
    }
    const char *dl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Flashbox-Deadline");
    r->deadline_partial = dl && !strcmp(dl, "partial");
    int32_t *prompt;
    uint32_t n_prompt;
    /* The tokenizer's generation travels with the job: one queued across a model swap is
     * encoded again by the scheduler with the new model's tokenizer. */
    pthread_rwlock_rdlock(&a->model_lock);
    uint32_t model_gen = a->model_gen;
    rc = a->tg ? textgen_prompt(a->tg, &gr, &prompt, &n_prompt, err, sizeof err) : 1;
    pthread_rwlock_unlock(&a->model_lock);
    if (rc) {
        gen_request_free(&gr);
        return rc == 1 ? send_error(c, r, 503, "paused", API_PAUSED_MESSAGE) : send_error(c, r, 400, "invalid_request", err);
    }
    uint32_t n_ctx = scheduler_n_ctx(a->sched);
    uint32_t cap = r->cfg.max_prompt_tokens && r->cfg.max_prompt_tokens < n_ctx ? r->cfg.max_prompt_tokens : n_ctx - 1;
    if (n_prompt == 0 || n_prompt > cap) {
        snprintf(err, sizeof err, "prompt: %u tokens, the limit is %u (context %u)", n_prompt, cap, n_ctx);
        free(prompt);
        gen_request_free(&gr);
        return send_error(c, r, 400, n_prompt ? "context_length_exceeded" : "invalid_request", err);
    }
    r->tokens_in = n_prompt;
    if (!uid_acquire(a, r)) {
        free(prompt);
        gen_request_free(&gr);
        metrics_rejected("peer_quota");
        return send_error(c, r, 429, "peer_quota", "this peer has limits.max_requests_per_uid requests in flight");
    }
    if (r->cfg.log_prompts) r->audit_prompt = strndup(r->body, r->body_len);
    struct job *j = job_create(&gr, prompt, n_prompt, r->cfg.request_deadline_s);
    if (!j) {
        uid_release(a, r);
        free(prompt);
        gen_request_free(&gr);
        return send_error(c, r, 500, "internal", "out of memory");
    }
    j->model_gen = model_gen;
    enum sched_submit sr = scheduler_submit(a->sched, j);
    if (sr != SCHED_OK) {
        uid_release(a, r);
        job_release(j);
        metrics_rejected(sr == SCHED_FULL ? "queue_full" : "shutdown");
        return sr == SCHED_FULL ? send_error(c, r, 429, "queue_full", "too many requests waiting; retry later")
                                : send_error(c, r, 503, "shutdown", "the server is shutting down");
    }
    r->job = j;
    r->tools = r->chat && j->req.n_tools > 0 && j->req.tool_choice != REQ_TOOL_NONE;
    atomic_fetch_add(&a->in_flight, 1);
    /* n > 1: the other choices, each its own job on the same prompt (the body parsed again:
     * the same request), seeded seed + i when the request is seeded */
    for (uint32_t k = 1; k < j->req.n; k++) {
        struct gen_request gk;
        rc = r->chat ? request_parse_chat(r->body, r->body_len, &lim, &gk, err, sizeof err)
                     : request_parse_completion(r->body, r->body_len, &lim, &gk, err, sizeof err);
        int32_t *pk = rc ? NULL : malloc((size_t)n_prompt * sizeof *pk);
        struct job *jk = NULL;
        if (pk) {
            memcpy(pk, j->prompt, (size_t)n_prompt * sizeof *pk);
            gk.seed += k;
            jk = job_create(&gk, pk, n_prompt, r->cfg.request_deadline_s);
        }
        if (jk) jk->model_gen = model_gen;
        if (!jk || scheduler_submit(a->sched, jk) != SCHED_OK) {
            if (!jk) {
                free(pk);
                if (!rc) gen_request_free(&gk);
            }
            job_release(jk);
            scheduler_cancel(a->sched, j);
            for (uint32_t m = 0; m < r->n_more; m++) scheduler_cancel(a->sched, r->more[m]);
            metrics_rejected("queue_full");
            return send_error(c, r, 429, "queue_full", "not enough room in the queue for every choice; retry later");
        }
        r->more[r->n_more++] = jk;
    }
    r->created = (int64_t)time(NULL);
    if (!j->req.stream) return finish_blocking(c, r);
    r->last_event_ns = sched_now_ns();
    struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, sse_reader, r, NULL);
    if (!resp) return MHD_NO;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    MHD_add_response_header(resp, "X-Request-Id", r->id);
    r->status = 200;
    enum MHD_Result ret = MHD_queue_response(c, 200, resp);
    MHD_destroy_response(resp);
    return ret;
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
        r->t0_ns = sched_now_ns();
        snprintf(r->id, sizeof r->id, "%016llx%08llx", (unsigned long long)a->id_base,
                 (unsigned long long)atomic_fetch_add(&a->next_id, 1));
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
        r->conn = ci ? ci->socket_context : NULL;
        snapshot_cfg(a, r);
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
        if (!r->conn || r->conn->peer_err) return send_error(c, r, 403, "forbidden", "peer credentials unavailable");
        if (!peer_allowed(&r->conn->peer, r->cfg.allow_uids, r->cfg.n_allow_uids, r->cfg.allow_gids, r->cfg.n_allow_gids)) {
            r->denied = 1;
            metrics_rejected("forbidden");
            return send_error(c, r, 403, "forbidden", "this peer is not allowed to use the API");
        }
        if (!r->conn->peer.is_unix && !host_ok(c)) return send_error(c, r, 403, "forbidden", "Host must be a loopback name");
        if (!want && !strcmp(url, "/v1/embeddings"))
            return send_error(c, r, 404, "not_found", "no embeddings: the model has no embedding head");
        if (!want) return send_error(c, r, 404, "not_found", "no such endpoint");
        if (strcmp(method, want)) return send_error(c, r, 405, "method_not_allowed", "method not allowed on this endpoint");
        if (!strcmp(want, "POST")) {
            const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
            if (cl && strtoull(cl, NULL, 10) > r->cfg.max_body_bytes) {
                metrics_rejected("too_large");
                return send_error(c, r, 413, "body_too_large", "request body larger than limits.max_body_bytes");
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
        return send_error(c, r, 413, "body_too_large", "request body larger than limits.max_body_bytes");
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
        if (st == API_PAUSED) return send_error(c, r, 503, "paused", API_PAUSED_MESSAGE);
        return send_error(c, r, 503, st == API_LOADING ? "loading" : "unavailable",
                          st == API_LOADING ? "the model is still loading" : "the server is not serving");
    }
    switch (r->ep) {
    case METRICS_EP_MODELS: return route_models(c, r);
    case METRICS_EP_TOKENIZE: return route_tokenize(c, r);
    case METRICS_EP_DETOKENIZE: return route_detokenize(c, r);
    case METRICS_EP_CHAT:
    case METRICS_EP_COMPLETIONS:
    case METRICS_EP_MESSAGES:
    case METRICS_EP_RESPONSES: return route_generate(c, r);
    default: return send_error(c, r, 404, "not_found", "no such endpoint");
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
