/* Prometheus counters and histograms for the daemon (see metrics.h). Names follow the
 * Prometheus conventions: *_total for counters, *_seconds for durations, cumulative `le`
 * buckets ending in +Inf. */
#include "firmware/metrics.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const int status_codes[] = { 200, 400, 403, 404, 405, 408, 413, 429, 499, 500, 503, 504 };
enum { N_STATUS = sizeof status_codes / sizeof status_codes[0], STATUS_OTHER = N_STATUS };

/* Bucket upper bounds in seconds: the tiny model on the CPU reference answers in
 * milliseconds, the real model on a GPU in tens of milliseconds per token, a long prefill
 * in seconds. */
static const double ttft_bounds[] = { 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30 };
static const double tok_bounds[] = { 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1 };
enum { N_TTFT = sizeof ttft_bounds / sizeof ttft_bounds[0], N_TOK = sizeof tok_bounds / sizeof tok_bounds[0] };
/* Scheduler steps: sessions (up to server.slots, at most 256) and tokens per step. */
static const double step_sessions_bounds[] = { 1, 2, 4, 8, 16, 32, 64, 128, 256 };
static const double step_tokens_bounds[] = { 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096 };
enum { N_STEP_SESSIONS = sizeof step_sessions_bounds / sizeof step_sessions_bounds[0],
       N_STEP_TOKENS = sizeof step_tokens_bounds / sizeof step_tokens_bounds[0] };

struct histogram {
    uint64_t counts[16]; /* per bucket (not cumulative); last = above every bound */
    uint64_t n;
    double sum;
};

static const char *reasons[] = { "queue_full", "peer_quota", "forbidden", "too_large", "deadline", "shutdown" };
enum { N_REASONS = sizeof reasons / sizeof reasons[0] };

static struct {
    pthread_mutex_t lock;
    uint64_t requests[METRICS_EP_COUNT][N_STATUS + 1];
    uint64_t prompt_tokens, completion_tokens, cancelled;
    uint64_t rejected[N_REASONS];
    struct histogram ttft, tok, step_sessions, step_tokens;
} m = { .lock = PTHREAD_MUTEX_INITIALIZER };

static const char *ep_names[METRICS_EP_COUNT] = {
    "/health", "/v1/models", "/v1/chat/completions", "/v1/completions", "/tokenize", "/detokenize", "/metrics",
    "/v1/messages", "/v1/responses", "other",
};

const char *metrics_endpoint_name(enum metrics_endpoint ep) { return ep < METRICS_EP_COUNT ? ep_names[ep] : "other"; }

void metrics_reset(void)
{
    pthread_mutex_lock(&m.lock);
    memset(m.requests, 0, sizeof m.requests);
    m.prompt_tokens = m.completion_tokens = m.cancelled = 0;
    memset(m.rejected, 0, sizeof m.rejected);
    memset(&m.ttft, 0, sizeof m.ttft);
    memset(&m.tok, 0, sizeof m.tok);
    memset(&m.step_sessions, 0, sizeof m.step_sessions);
    memset(&m.step_tokens, 0, sizeof m.step_tokens);
    pthread_mutex_unlock(&m.lock);
}

void metrics_request_done(enum metrics_endpoint ep, int http_status)
{
    int si = STATUS_OTHER;
    for (int i = 0; i < N_STATUS; i++)
        if (status_codes[i] == http_status) si = i;
    if (ep >= METRICS_EP_COUNT) ep = METRICS_EP_OTHER;
    pthread_mutex_lock(&m.lock);
    m.requests[ep][si]++;
    pthread_mutex_unlock(&m.lock);
}

void metrics_tokens(uint64_t prompt_tokens, uint64_t completion_tokens)
{
    pthread_mutex_lock(&m.lock);
    m.prompt_tokens += prompt_tokens;
    m.completion_tokens += completion_tokens;
    pthread_mutex_unlock(&m.lock);
}

static void observe(struct histogram *h, const double *bounds, int n_bounds, double v)
{
    int b = 0;
    while (b < n_bounds && v > bounds[b]) b++;
    pthread_mutex_lock(&m.lock);
    h->counts[b]++;
    h->n++;
    h->sum += v;
    pthread_mutex_unlock(&m.lock);
}

void metrics_time_to_first_token(double s) { observe(&m.ttft, ttft_bounds, N_TTFT, s); }
void metrics_token_latency(double s) { observe(&m.tok, tok_bounds, N_TOK, s); }
void metrics_step(uint32_t sessions, uint32_t tokens)
{
    observe(&m.step_sessions, step_sessions_bounds, N_STEP_SESSIONS, sessions);
    observe(&m.step_tokens, step_tokens_bounds, N_STEP_TOKENS, tokens);
}

void metrics_cancelled(void)
{
    pthread_mutex_lock(&m.lock);
    m.cancelled++;
    pthread_mutex_unlock(&m.lock);
}

void metrics_rejected(const char *reason)
{
    pthread_mutex_lock(&m.lock);
    for (int i = 0; i < N_REASONS; i++)
        if (!strcmp(reasons[i], reason)) m.rejected[i]++;
    pthread_mutex_unlock(&m.lock);
}

/* A growable text buffer; rendering is not on the per-token path. */
struct text {
    char *p;
    size_t len, cap;
    int oom;
};

static void put(struct text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(struct text *t, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        size_t room = t->cap - t->len;
        int n = t->oom ? 0 : vsnprintf(t->p ? t->p + t->len : NULL, t->p ? room : 0, fmt, ap);
        va_end(ap);
        if (t->oom || n < 0) return;
        if (t->p && (size_t)n < room) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = t->cap ? t->cap * 2 : 8192;
        while (cap < t->len + (size_t)n + 1) cap *= 2;
        char *np = realloc(t->p, cap);
        if (!np) {
            t->oom = 1;
            return;
        }
        t->p = np;
        t->cap = cap;
    }
}

static void put_hist(struct text *t, const char *name, const char *help, const struct histogram *h,
                     const double *bounds, int n_bounds)
{
    put(t, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    uint64_t cum = 0;
    for (int b = 0; b < n_bounds; b++) {
        cum += h->counts[b];
        put(t, "%s_bucket{le=\"%g\"} %llu\n", name, bounds[b], (unsigned long long)cum);
    }
    put(t, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.9g\n%s_count %llu\n", name, (unsigned long long)h->n, name, h->sum,
        name, (unsigned long long)h->n);
}

/* Label values come from the model file: escape \, " and newline as the format requires. */
static void put_label(struct text *t, const char *v)
{
    for (const char *p = v ? v : ""; *p; p++) {
        if (*p == '\\' || *p == '"') put(t, "\\%c", *p);
        else if (*p == '\n') put(t, "\\n");
        else put(t, "%c", *p);
    }
}

int metrics_render(const struct metrics_gauges *g, char **out, size_t *out_len)
{
    struct text t = { 0 };
    pthread_mutex_lock(&m.lock);
    put(&t, "# HELP flashbox_requests_total HTTP requests answered, by endpoint and status.\n"
            "# TYPE flashbox_requests_total counter\n");
    for (int ep = 0; ep < METRICS_EP_COUNT; ep++)
        for (int s = 0; s <= N_STATUS; s++) {
            if (!m.requests[ep][s]) continue;
            if (s < N_STATUS) put(&t, "flashbox_requests_total{endpoint=\"%s\",status=\"%d\"} %llu\n", ep_names[ep], status_codes[s], (unsigned long long)m.requests[ep][s]);
            else put(&t, "flashbox_requests_total{endpoint=\"%s\",status=\"other\"} %llu\n", ep_names[ep], (unsigned long long)m.requests[ep][s]);
        }
    put(&t, "# HELP flashbox_prompt_tokens_total Prompt tokens evaluated.\n# TYPE flashbox_prompt_tokens_total counter\n"
            "flashbox_prompt_tokens_total %llu\n", (unsigned long long)m.prompt_tokens);
    put(&t, "# HELP flashbox_completion_tokens_total Tokens generated.\n# TYPE flashbox_completion_tokens_total counter\n"
            "flashbox_completion_tokens_total %llu\n", (unsigned long long)m.completion_tokens);
    put(&t, "# HELP flashbox_cancelled_total Generations cancelled (client gone, deadline, shutdown).\n"
            "# TYPE flashbox_cancelled_total counter\nflashbox_cancelled_total %llu\n", (unsigned long long)m.cancelled);
    put(&t, "# HELP flashbox_rejected_total Requests refused before generation, by reason.\n# TYPE flashbox_rejected_total counter\n");
    for (int i = 0; i < N_REASONS; i++)
        put(&t, "flashbox_rejected_total{reason=\"%s\"} %llu\n", reasons[i], (unsigned long long)m.rejected[i]);
    put_hist(&t, "flashbox_time_to_first_token_seconds", "From request accepted to first generated token.", &m.ttft, ttft_bounds, N_TTFT);
    put_hist(&t, "flashbox_token_latency_seconds", "Time between consecutive generated tokens of one request.", &m.tok, tok_bounds, N_TOK);
    put_hist(&t, "flashbox_step_sessions", "Sessions evaluated together per scheduler step (batch size).", &m.step_sessions,
             step_sessions_bounds, N_STEP_SESSIONS);
    put_hist(&t, "flashbox_step_tokens", "Tokens evaluated per scheduler step (decode tokens and prompt chunks).", &m.step_tokens,
             step_tokens_bounds, N_STEP_TOKENS);
    pthread_mutex_unlock(&m.lock);

    put(&t, "# HELP flashbox_queue_depth Requests waiting for a slot.\n# TYPE flashbox_queue_depth gauge\nflashbox_queue_depth %u\n", g->queue_depth);
    put(&t, "# HELP flashbox_queue_capacity Requests that may wait before 429.\n# TYPE flashbox_queue_capacity gauge\nflashbox_queue_capacity %u\n", g->queue_capacity);
    put(&t, "# HELP flashbox_slots_busy Slots generating now.\n# TYPE flashbox_slots_busy gauge\nflashbox_slots_busy %u\n", g->slots_busy);
    put(&t, "# HELP flashbox_prefill_tokens_waiting Prompt tokens not yet evaluated (running and queued requests).\n"
            "# TYPE flashbox_prefill_tokens_waiting gauge\nflashbox_prefill_tokens_waiting %llu\n",
        (unsigned long long)g->prefill_waiting);
    put(&t, "# HELP flashbox_slots_total Slots (sessions) allocated and served.\n# TYPE flashbox_slots_total gauge\nflashbox_slots_total %u\n", g->slots_total);
    put(&t, "# HELP flashbox_slots_configured Slots asked for (server.slots); more than flashbox_slots_total when not all "
            "could be allocated.\n# TYPE flashbox_slots_configured gauge\nflashbox_slots_configured %u\n", g->slots_configured);
    put(&t, "# HELP flashbox_ready 1 ready, 0 loading, -1 degraded.\n# TYPE flashbox_ready gauge\nflashbox_ready %d\n", g->ready);
    put(&t, "# HELP flashbox_model_info The served model and update slot.\n# TYPE flashbox_model_info gauge\nflashbox_model_info{model=\"");
    put_label(&t, g->model_id);
    put(&t, "\",slot=\"");
    put_label(&t, g->slot);
    put(&t, "\"} 1\n");
    if (g->have_eval_score[0] || g->have_eval_score[1]) {
        put(&t, "# HELP flashbox_eval_score The slot's last score on the site's evaluation set (0 to 1).\n# TYPE flashbox_eval_score gauge\n");
        for (int i = 0; i < 2; i++)
            if (g->have_eval_score[i]) put(&t, "flashbox_eval_score{slot=\"%s\"} %.6f\n", i ? "b" : "a", g->eval_score[i]);
    }
    if (g->have_device) {
        put(&t, "# HELP flashbox_device_memory_used_bytes Device memory held: weights, expert slots, sessions.\n"
                "# TYPE flashbox_device_memory_used_bytes gauge\nflashbox_device_memory_used_bytes %llu\n",
            (unsigned long long)g->device_used);
        put(&t, "# HELP flashbox_device_memory_total_bytes The device's local memory.\n"
                "# TYPE flashbox_device_memory_total_bytes gauge\nflashbox_device_memory_total_bytes %llu\n",
            (unsigned long long)g->device_total);
    }
    if (g->have_expert_stats) {
        static const char *kinds[2] = { "hash", "learned" };
        put(&t, "# HELP flashbox_expert_cache_hits_total Routed-expert lookups served from the cache.\n# TYPE flashbox_expert_cache_hits_total counter\n");
        for (int k = 0; k < 2; k++) put(&t, "flashbox_expert_cache_hits_total{layer=\"%s\"} %llu\n", kinds[k], (unsigned long long)g->expert_hits[k]);
        put(&t, "# HELP flashbox_expert_cache_misses_total Routed-expert lookups that loaded from storage.\n# TYPE flashbox_expert_cache_misses_total counter\n");
        for (int k = 0; k < 2; k++) put(&t, "flashbox_expert_cache_misses_total{layer=\"%s\"} %llu\n", kinds[k], (unsigned long long)g->expert_misses[k]);
        put(&t, "# TYPE flashbox_expert_bytes_read_total counter\nflashbox_expert_bytes_read_total %llu\n", (unsigned long long)g->expert_bytes_read);
        put(&t, "# TYPE flashbox_expert_loads_total counter\nflashbox_expert_loads_total %llu\n", (unsigned long long)g->expert_loads);
        put(&t, "# TYPE flashbox_expert_evictions_total counter\nflashbox_expert_evictions_total %llu\n", (unsigned long long)g->expert_evictions);
        put(&t, "# TYPE flashbox_expert_stall_seconds_total counter\nflashbox_expert_stall_seconds_total %.9g\n", (double)g->expert_stall_ns / 1e9);
        put(&t, "# TYPE flashbox_expert_prefetch_issued_total counter\nflashbox_expert_prefetch_issued_total %llu\n", (unsigned long long)g->expert_prefetch_issued);
        put(&t, "# TYPE flashbox_expert_prefetch_used_total counter\nflashbox_expert_prefetch_used_total %llu\n", (unsigned long long)g->expert_prefetch_used);
        put(&t, "# HELP flashbox_expert_prefetch_by_layer_issued_total Speculative expert loads queued, by the kind of layer they guess for.\n# TYPE flashbox_expert_prefetch_by_layer_issued_total counter\n");
        for (int k = 0; k < 2; k++) put(&t, "flashbox_expert_prefetch_by_layer_issued_total{layer=\"%s\"} %llu\n", kinds[k], (unsigned long long)g->expert_prefetch_issued_kind[k]);
        put(&t, "# HELP flashbox_expert_prefetch_by_layer_used_total Speculative expert loads whose expert was then used.\n# TYPE flashbox_expert_prefetch_by_layer_used_total counter\n");
        for (int k = 0; k < 2; k++) put(&t, "flashbox_expert_prefetch_by_layer_used_total{layer=\"%s\"} %llu\n", kinds[k], (unsigned long long)g->expert_prefetch_used_kind[k]);
        put(&t, "# HELP flashbox_expert_prefetch_dropped_total Speculative expert loads dropped unread once their layer had chosen.\n# TYPE flashbox_expert_prefetch_dropped_total counter\nflashbox_expert_prefetch_dropped_total %llu\n", (unsigned long long)g->expert_prefetch_dropped);
        put(&t, "# HELP flashbox_expert_cache_bytes Bytes of the expert cache (slots x slot size).\n# TYPE flashbox_expert_cache_bytes gauge\nflashbox_expert_cache_bytes %llu\n", (unsigned long long)g->expert_cache_bytes);
    }
    if (g->have_prefix) {
        put(&t, "# HELP flashbox_prefix_hits_total Requests that resumed from a saved prompt prefix.\n# TYPE flashbox_prefix_hits_total counter\nflashbox_prefix_hits_total %llu\n", (unsigned long long)g->prefix.hits);
        put(&t, "# TYPE flashbox_prefix_misses_total counter\nflashbox_prefix_misses_total %llu\n", (unsigned long long)g->prefix.misses);
        put(&t, "# HELP flashbox_prefix_tokens_reused_total Prompt tokens not prefilled again.\n# TYPE flashbox_prefix_tokens_reused_total counter\nflashbox_prefix_tokens_reused_total %llu\n", (unsigned long long)g->prefix.tokens_reused);
        put(&t, "# HELP flashbox_prefix_bytes_read_total Saved-state bytes loaded into sessions.\n# TYPE flashbox_prefix_bytes_read_total counter\nflashbox_prefix_bytes_read_total %llu\n", (unsigned long long)g->prefix.bytes_read);
        put(&t, "# TYPE flashbox_prefix_saves_total counter\nflashbox_prefix_saves_total %llu\n", (unsigned long long)g->prefix.saves);
        put(&t, "# TYPE flashbox_prefix_evictions_total counter\nflashbox_prefix_evictions_total %llu\n", (unsigned long long)g->prefix.evictions);
        put(&t, "# HELP flashbox_prefix_cache_bytes Saved-state bytes held now.\n# TYPE flashbox_prefix_cache_bytes gauge\nflashbox_prefix_cache_bytes %llu\n", (unsigned long long)g->prefix.bytes_held);
        put(&t, "# TYPE flashbox_prefix_cache_entries gauge\nflashbox_prefix_cache_entries %llu\n", (unsigned long long)g->prefix.entries);
    }
    if (t.oom) {
        free(t.p);
        return -1;
    }
    *out = t.p;
    *out_len = t.len;
    return 0;
}
