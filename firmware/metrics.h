/* The daemon's Prometheus metrics: request counts by endpoint and status, tokens in/out,
 * time-to-first-token and per-token latency histograms, cancellations and rejections;
 * gauges (queue depth, busy slots, state) are read from the scheduler when rendered.
 * Thread-safe; observing a value takes one mutex and allocates nothing. */
#ifndef FLASHBOX_FIRMWARE_METRICS_H
#define FLASHBOX_FIRMWARE_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "firmware/prefix_cache.h"

enum metrics_endpoint {
    METRICS_EP_HEALTH, METRICS_EP_MODELS, METRICS_EP_CHAT, METRICS_EP_COMPLETIONS, METRICS_EP_TOKENIZE,
    METRICS_EP_DETOKENIZE, METRICS_EP_METRICS, METRICS_EP_MESSAGES, METRICS_EP_RESPONSES, METRICS_EP_OTHER,
    METRICS_EP_COUNT
};

struct metrics_gauges {
    uint32_t queue_depth, queue_capacity;
    uint32_t slots_busy, slots_total;
    uint32_t slots_configured;    /* server.slots (more than slots_total when not all could be allocated) */
    uint64_t prefill_waiting;     /* prompt tokens not yet evaluated (running and queued requests) */
    int ready;                    /* 1 ready, 0 loading, -1 degraded */
    const char *model_id, *slot;
    /* The site evaluation score per update slot (a, b), where one was recorded. */
    int have_eval_score[2];
    double eval_score[2];
    /* Device memory, reported only for a backend with a device (have_device). */
    int have_device;
    uint64_t device_used, device_total;
    /* Expert-cache counters, reported only when experts are paged (have_expert_stats). */
    int have_expert_stats;
    uint64_t expert_hits[2], expert_misses[2]; /* [hash, learned] layers */
    uint64_t expert_bytes_read, expert_loads, expert_evictions, expert_stall_ns;
    uint64_t expert_prefetch_issued, expert_prefetch_used, expert_cache_bytes;
    uint64_t expert_prefetch_issued_kind[2], expert_prefetch_used_kind[2], expert_prefetch_dropped;
    /* Prefix reuse, reported only when it is on (have_prefix). */
    int have_prefix;
    struct prefix_cache_stats prefix;
};

const char *metrics_endpoint_name(enum metrics_endpoint ep);
void metrics_reset(void);
void metrics_request_done(enum metrics_endpoint ep, int http_status);
void metrics_tokens(uint64_t prompt_tokens, uint64_t completion_tokens);
void metrics_time_to_first_token(double seconds);
void metrics_token_latency(double seconds);
/* One scheduler step: how many sessions it held and how many tokens it evaluated. */
void metrics_step(uint32_t sessions, uint32_t tokens);
void metrics_cancelled(void);
/* reason: "queue_full", "peer_quota", "forbidden", "too_large", "deadline", "shutdown" */
void metrics_rejected(const char *reason);
/* Renders the text exposition format into a malloc'd buffer. */
int metrics_render(const struct metrics_gauges *g, char **out, size_t *out_len);

#endif
