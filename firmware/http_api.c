/* HTTP routes of the daemon (see http_api.h). libmicrohttpd runs one thread per
 * connection, so a handler may block waiting for its job; while it waits it polls the
 * socket for the client hanging up and cancels the job at once when it does. */
#include "firmware/http_api.h"

#include "engine/errmsg.h"
#include "firmware/audit.h"
#include "firmware/metrics.h"
#include "firmware/peer.h"
#include "firmware/request_parse.h"
#include "firmware/scheduler.h"
#include "firmware/textgen.h"

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
    /* SSE state. */
    size_t sent;                  /* job text bytes already sent */
    char *out;                    /* pending event bytes [out_len] */
    size_t out_len, out_off;
    int stream_ended, role_sent;
    uint64_t last_event_ns;
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
    if (status == 429 || status == 503) MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, "1");
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
    json_t *o = json_pack("{s:{s:o,s:s,s:s}}", "error", "message", m, "type", type, "code", code);
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
        r->tokens_out = r->job->n_out;
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
        .prompt = r->cfg.log_prompts ? r->audit_prompt : NULL,
    };
    audit_write(&ar);
    free(r->body);
    free(r->out);
    free(r->audit_prompt);
    free(r);
    *req_cls = NULL;
}

/* ---- simple routes ---- */

static const char *state_word(struct api *a, int *http_status)
{
    int st = atomic_load(&a->state);
    *http_status = 503;
    if (st == API_LOADING) return "loading";
    if (st == API_STOPPING) return "stopping";
    if (st == API_FAILED) return "failed";
    struct sched_stats ss;
    scheduler_stats(a->sched, &ss);
    if (ss.last_eval_failed) return "degraded";
    *http_status = 200;
    return "ready";
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
    if (o && atomic_load(&r->api->state) == API_READY) {
        struct sched_stats ss;
        scheduler_stats(r->api->sched, &ss);
        json_object_set_new(o, "slots_busy", json_integer(ss.busy));
        json_object_set_new(o, "slots_total", json_integer(ss.slots));
        json_object_set_new(o, "queue_depth", json_integer(ss.queued));
        json_object_set_new(o, "context_length", json_integer(scheduler_n_ctx(r->api->sched)));
        if (ss.swapping) json_object_set_new(o, "reloading", json_true());
    }
    return send_json(c, r, status, o);
}

static enum MHD_Result route_models(struct MHD_Connection *c, struct req *r)
{
    if (atomic_load(&r->api->state) != API_READY) return send_error(c, r, 503, "loading", "the model is not loaded yet");
    json_t *o = json_pack("{s:s,s:[{s:s,s:s,s:I,s:s,s:s,s:I}]}", "object", "list", "data", "id", r->model_id, "object",
                          "model", "created", (json_int_t)(r->api->id_base / 1000000000ull), "owned_by", "flashbox",
                          "slot", r->cfg.slot, "context_length", (json_int_t)scheduler_n_ctx(r->api->sched));
    return send_json(c, r, 200, o);
}

static enum MHD_Result route_metrics(struct MHD_Connection *c, struct req *r)
{
    struct metrics_gauges g = { 0 };
    int st = atomic_load(&r->api->state);
    g.ready = st == API_READY ? 1 : st == API_LOADING ? 0 : -1;
    g.model_id = r->model_id;
    g.slot = r->cfg.slot;
    if (st == API_READY) {
        struct sched_stats ss;
        scheduler_stats(r->api->sched, &ss);
        g.queue_depth = ss.queued;
        g.queue_capacity = ss.queue_capacity;
        g.slots_busy = ss.busy;
        g.prefill_waiting = ss.prefill_waiting;
        g.slots_total = ss.slots;
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
    int rc = textgen_tokenize(r->api->tg, content, strlen(content), add_special, &ids, &n, err, sizeof err);
    pthread_rwlock_unlock(&r->api->model_lock);
    free(content);
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
    int rc = textgen_detokenize(r->api->tg, ids, n, &text, &len, err, sizeof err);
    pthread_rwlock_unlock(&r->api->model_lock);
    free(ids);
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
        return json_pack("{s:i,s:o,s:o}", "index", 0, "delta", delta, "finish_reason", fin);
    }
    return json_pack("{s:i,s:o,s:n,s:o}", "index", 0, "text", content ? content : json_string(""), "logprobs", "finish_reason", fin);
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

/* Produces the next SSE events into r->out; returns -1 when the client is gone. */
static int sse_produce(struct req *r)
{
    struct job *j = r->job;
    if (!r->role_sent) {
        r->role_sent = 1;
        if (r->chat) return out_event(r, chunk_json(r, stream_choice(r, NULL, 0, 1, NULL, 0)));
    }
    for (;;) {
        pthread_mutex_lock(&j->lock);
        if (j->model_id[0]) memcpy(r->model_id, j->model_id, sizeof r->model_id); /* queued across a model swap */
        if (j->committed > r->sent) {
            /* Thinking mode: up to the end of the reasoning (all of it while that end is
             * unknown) the text is reasoning; one event never mixes the two. */
            size_t upto = j->committed;
            int reasoning = 0;
            if (j->thinking && (!j->reasoning_known || r->sent < j->reasoning_end)) {
                reasoning = 1;
                if (j->reasoning_known && j->reasoning_end < upto) upto = j->reasoning_end;
            }
            size_t n = upto - r->sent;
            char *delta = malloc(n ? n : 1);
            if (delta) memcpy(delta, j->text + r->sent, n);
            r->sent = upto;
            pthread_mutex_unlock(&j->lock);
            if (!delta) return -1;
            int rc = n ? out_event(r, chunk_json(r, stream_choice(r, delta, n, 0, NULL, reasoning))) : 0;
            free(delta);
            return rc;
        }
        if (j->finish != JOB_RUNNING) {
            enum job_finish f = j->finish;
            uint32_t n_out = j->n_out;
            pthread_mutex_unlock(&j->lock);
            r->tokens_out = n_out;
            r->finish = job_finish_name(f);
            if (f == JOB_STOP || f == JOB_LENGTH) {
                out_event(r, chunk_json(r, stream_choice(r, NULL, 0, 0, openai_finish(f), 0)));
            } else {
                const char *msg = f == JOB_ERROR ? "generation failed" : f == JOB_DEADLINE ? "request deadline passed"
                                : f == JOB_SHUTDOWN ? "the server is shutting down"
                                : f == JOB_RELOAD ? "cancelled while the model was replaced; retry" : "cancelled";
                out_event(r, json_pack("{s:{s:s,s:s,s:s}}", "error", "message", msg, "type", "server_error", "code",
                                       job_finish_name(f)));
            }
            if (r->job->req.include_usage) {
                json_t *o = chunk_json(r, NULL);
                if (o) json_object_set_new(o, "usage", usage_json(r, n_out));
                out_event(r, o);
            }
            r->stream_ended = 1;
            return out_raw(r, "data: [DONE]\n\n");
        }
        wait_job_slice(j);
        pthread_mutex_unlock(&j->lock);
        if (client_gone(r->conn->fd)) {
            scheduler_cancel(r->api->sched, j);
            return -1;
        }
        if (sched_now_ns() - r->last_event_ns > (uint64_t)r->cfg.sse_ping_s * 1000000000ull)
            return out_raw(r, ": ping\n\n");
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

/* Non-streaming: waits for the job in this connection's thread. */
static enum MHD_Result finish_blocking(struct MHD_Connection *c, struct req *r)
{
    struct job *j = r->job;
    pthread_mutex_lock(&j->lock);
    while (j->finish == JOB_RUNNING) {
        wait_job_slice(j);
        if (j->finish != JOB_RUNNING) break;
        pthread_mutex_unlock(&j->lock);
        if (client_gone(r->conn->fd)) {
            scheduler_cancel(r->api->sched, j);
            r->finish = "cancelled";
            return MHD_NO; /* nobody to answer; MHD closes the connection */
        }
        pthread_mutex_lock(&j->lock);
    }
    enum job_finish f = j->finish;
    uint32_t n_out = j->n_out;
    char why[sizeof j->error + 64];
    snprintf(why, sizeof why, "the engine failed during generation: %s", j->error);
    if (j->model_id[0]) memcpy(r->model_id, j->model_id, sizeof r->model_id); /* queued across a model swap */
    /* Thinking mode: the reasoning (all of the text if it never ended) is separate. */
    size_t split = !j->thinking ? 0 : j->reasoning_known && j->reasoning_end < j->text_len ? j->reasoning_end : j->text_len;
    json_t *text = json_stringn(j->text + split, j->text_len - split);
    json_t *reasoning = j->thinking ? json_stringn(j->text, split) : NULL;
    pthread_mutex_unlock(&j->lock);
    r->tokens_out = n_out;
    r->finish = job_finish_name(f);
    if (f == JOB_ERROR) {
        json_decref(text);
        return send_error(c, r, 500, "generation_failed", why);
    }
    if (f == JOB_DEADLINE) {
        json_decref(text);
        return send_error(c, r, 504, "deadline", "the request deadline passed before the answer was complete");
    }
    if (f == JOB_RELOAD) {
        json_decref(text);
        return send_error(c, r, 503, "model_reload", "cancelled while the model was replaced; retry");
    }
    if (f == JOB_SHUTDOWN || f == JOB_CANCELLED) {
        json_decref(text);
        return send_error(c, r, 503, "shutdown", "the server is shutting down");
    }
    if (!text) text = json_string("");
    json_t *choice = r->chat ? json_pack("{s:i,s:{s:s,s:o},s:s}", "index", 0, "message", "role", "assistant", "content",
                                         text, "finish_reason", openai_finish(f))
                             : json_pack("{s:i,s:o,s:n,s:s}", "index", 0, "text", text, "logprobs", "finish_reason",
                                         openai_finish(f));
    if (reasoning && choice) json_object_set_new(json_object_get(choice, "message"), "reasoning_content", reasoning);
    else json_decref(reasoning);
    json_t *o = json_pack("{s:s+,s:s,s:I,s:s,s:[o],s:o}", "id", r->chat ? "chatcmpl-" : "cmpl-", r->id, "object",
                          r->chat ? "chat.completion" : "text_completion", "created", (json_int_t)r->created, "model",
                          r->model_id, "choices", choice, "usage", usage_json(r, n_out));
    return send_json(c, r, 200, o);
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
    r->chat = r->ep == METRICS_EP_CHAT;
    int rc = r->chat ? request_parse_chat(r->body, r->body_len, &lim, &gr, err, sizeof err)
                     : request_parse_completion(r->body, r->body_len, &lim, &gr, err, sizeof err);
    if (rc) return send_error(c, r, 400, "invalid_request", err);
    int32_t *prompt;
    uint32_t n_prompt;
    /* The tokenizer's generation travels with the job: one queued across a model swap is
     * encoded again by the scheduler with the new model's tokenizer. */
    pthread_rwlock_rdlock(&a->model_lock);
    uint32_t model_gen = a->model_gen;
    rc = textgen_prompt(a->tg, &gr, &prompt, &n_prompt, err, sizeof err);
    pthread_rwlock_unlock(&a->model_lock);
    if (rc) {
        gen_request_free(&gr);
        return send_error(c, r, 400, "invalid_request", err);
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
    atomic_fetch_add(&a->in_flight, 1);
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
        if (!r->conn || r->conn->peer_err) return send_error(c, r, 403, "forbidden", "peer credentials unavailable");
        if (!peer_allowed(&r->conn->peer, r->cfg.allow_uids, r->cfg.n_allow_uids, r->cfg.allow_gids, r->cfg.n_allow_gids)) {
            r->denied = 1;
            metrics_rejected("forbidden");
            return send_error(c, r, 403, "forbidden", "this peer is not allowed to use the API");
        }
        if (!r->conn->peer.is_unix && !host_ok(c)) return send_error(c, r, 403, "forbidden", "Host must be a loopback name");
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
        return send_error(c, r, 503, st == API_LOADING ? "loading" : "unavailable",
                          st == API_LOADING ? "the model is still loading" : "the server is not serving");
    }
    switch (r->ep) {
    case METRICS_EP_MODELS: return route_models(c, r);
    case METRICS_EP_TOKENIZE: return route_tokenize(c, r);
    case METRICS_EP_DETOKENIZE: return route_detokenize(c, r);
    case METRICS_EP_CHAT:
    case METRICS_EP_COMPLETIONS: return route_generate(c, r);
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
