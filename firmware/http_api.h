/* The HTTP API: libmicrohttpd daemons on the Unix socket (and loopback TCP when asked),
 * the routes (/health, /v1/models, /v1/chat/completions, /v1/completions, /tokenize,
 * /detokenize, /metrics), peer checks, body caps, OpenAI JSON and SSE responses, the
 * per-request audit record and metrics. No model management lives here: updates come
 * through the update module's own admin socket. */
#ifndef FLASHBOX_FIRMWARE_HTTP_API_H
#define FLASHBOX_FIRMWARE_HTTP_API_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "firmware/config.h"

struct scheduler;
struct textgen;
struct MHD_Daemon;
struct conn;

/* API_PAUSED: the served model is released while an update's self-test and evaluation run
 * (update.pause_serving; firmware/reload.c): requests get 503 "paused" with Retry-After. */
enum api_state { API_LOADING = 0, API_READY = 1, API_STOPPING = 2, API_FAILED = 3, API_PAUSED = 4 };
#define API_PAUSED_RETRY_AFTER "30"
#define API_PAUSED_MESSAGE \
    "serving is paused while an update is tested on the site's evaluation set (the served model is released so " \
    "the new one fits in memory); retry later"


struct api {
    pthread_mutex_t lock;        /* guards cfg (SIGHUP swaps it), model_id and degraded */
    struct serve_config cfg;
    atomic_int state;            /* enum api_state */
    struct scheduler *sched;     /* set before state becomes READY */
    /* tg, n_vocab and model_gen change together in a model swap: read them under
     * model_lock's read side for as long as the tokenizer is in use. */
    pthread_rwlock_t model_lock;
    struct textgen *tg;
    uint32_t n_vocab;
    uint32_t model_gen;
    char model_id[128];
    char degraded[256];          /* why the served model is not the active slot's; "" = fine */
    struct MHD_Daemon *unix_d, *tcp_d;
    pthread_mutex_t conns_lock;  /* guards conns */
    struct conn *conns;          /* open connections, so api_stop can wake idle ones */
    atomic_uint_fast64_t next_id;
    atomic_int in_flight;        /* generation requests not yet completed */
    /* Generation requests in flight per peer uid (limits.max_requests_per_uid), guarded by
     * conns_lock; a small table, since only a few client programs talk to one box. */
    struct { uint32_t uid, n; } per_uid[64];
    uint64_t id_base;
};

/* Starts serving on the listening sockets (tcp_fd -1 = none); state is LOADING until
 * api_set_ready. The api struct must outlive api_stop. */
int api_start(struct api *a, const struct serve_config *cfg, int unix_fd, int tcp_fd, char *err, size_t err_len);
void api_set_ready(struct api *a, struct scheduler *sched, struct textgen *tg, uint32_t n_vocab, const char *model_id);
/* After scheduler_swap_engine: serve tg (generation gen) as model_id from slot; waits
 * for requests tokenizing with the old one, then the caller may close it. Clears degraded. */
void api_swap_model(struct api *a, struct textgen *tg, uint32_t n_vocab, uint32_t gen, const char *model_id,
                    const char *slot);
/* /health says "degraded" with this reason (NULL or "" clears it) while still serving. */
void api_set_degraded(struct api *a, const char *reason);
/* Copies of what is served now (any pointer may be NULL). */
void api_get_model(struct api *a, char *model_id, size_t model_len, char *slot, size_t slot_len, char *degraded,
                   size_t degraded_len);
/* Applies a reloaded config (limits, access lists, audit flags). */
void api_set_config(struct api *a, const struct serve_config *cfg);
/* Stops accepting connections and closes the listening sockets; open connections go on. */
void api_quiesce(struct api *a);
/* Closes every connection and stops the daemons. Returns -1 when a connection (a client
 * that stopped reading) kept them from stopping within timeout_ms: the caller must then
 * leave everything the API uses alive and just exit. */
int api_stop(struct api *a, uint32_t timeout_ms);

#endif
