/* The request queue in front of the engine and the one worker thread that owns it.
 *
 * A job is one generation request, shared by the HTTP connection thread that waits for its
 * text and the worker that produces it (reference counted; whichever lets go last frees
 * it). The worker holds a fixed set of slots, one engine session each; every step it admits
 * queued jobs into free slots, then advances every busy slot in one engine_step. Cancellation
 * (client gone, deadline, shutdown) is checked at every step and frees the slot at once.
 *
 * Continuous batching: a step holds the next token of every decoding slot and, up to
 * step_tokens tokens in all, chunks of the prompts still being read (shortest remaining
 * first), so streams keep flowing while a long prompt is prefilled; a new request joins at
 * the next step, a finished one leaves without stalling the others. */
#ifndef FLASHBOX_FIRMWARE_SCHEDULER_H
#define FLASHBOX_FIRMWARE_SCHEDULER_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/engine.h"
#include "firmware/prefix_cache.h"
#include "firmware/request_parse.h"
#include "firmware/textgen.h"

struct engine;
struct textgen;
struct scheduler;

enum job_finish {
    JOB_RUNNING = 0,
    JOB_STOP,       /* end token or a stop string */
    JOB_LENGTH,     /* max_tokens reached */
    JOB_CANCELLED,  /* client went away */
    JOB_DEADLINE,   /* request_deadline_s passed */
    JOB_SHUTDOWN,   /* daemon stopping after the grace period */
    JOB_ERROR,      /* engine failure; message in error */
    JOB_RELOAD,     /* cancelled after the grace period of a model swap (scheduler_swap_engine) */
};

struct job {
    /* Inputs, fixed once submitted. */
    struct gen_request req;
    int32_t *prompt;            /* [n_prompt] token ids */
    uint32_t n_prompt;
    uint64_t t_submit_ns;       /* CLOCK_MONOTONIC */
    uint64_t deadline_ns;
    uint32_t model_gen;         /* generation of the tokenizer the prompt came from (see swap) */

    /* Shared state, guarded by lock; cond signals every change. */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int refs;
    bool cancel;                /* set by the HTTP side */
    char *text;                 /* [text_cap] generated UTF-8 (stop string cut off) */
    size_t text_len, text_cap;
    size_t committed;           /* text[0, committed) can no longer change: safe to send */
    uint32_t n_out;             /* tokens generated */
    uint32_t n_reused;          /* prompt tokens resumed from the prefix cache, not prefilled */
    enum job_finish finish;
    int slot;                   /* slot index while running, -1 otherwise */
    uint64_t t_first_ns;        /* first token; 0 before */
    bool thinking;              /* chat in thinking mode: text starts with the reasoning */
    bool reasoning_known;       /* the reasoning ended: text[0, reasoning_end) is reasoning */
    char model_id[128];         /* the model that runs it, set when it gets a slot ("" before) */
    size_t reasoning_end;
    char error[256];
    int stop_index;             /* JOB_STOP by a stop string: which one (req.stop[i]); -1 otherwise */
    struct textgen_logprob *logprobs; /* [req.max_tokens] when asked: one per generated token (n_out of them) */

    /* Queue links, guarded by the scheduler's lock. */
    struct job *next;
    bool queued;
};

/* A job with one reference (the caller's). Takes ownership of req's contents and prompt. */
struct job *job_create(struct gen_request *req, int32_t *prompt, uint32_t n_prompt, uint32_t deadline_s);
void job_release(struct job *j);
const char *job_finish_name(enum job_finish f); /* OpenAI finish_reason or our own word */

struct sched_options {
    uint32_t slots;        /* sessions decoded together (at create: as many as can be allocated,
                            * one at least; scheduler_stats says how many and why not more) */
    uint32_t queue_depth;  /* waiting jobs before submit says full */
    uint32_t n_ctx;        /* per session; 0 = engine default */
    uint32_t step_tokens;  /* tokens per step across all slots (decode tokens always go in; prompt
                            * chunks fill the rest); 0 = 128 */
    uint32_t prefill_chunk;/* prefix reuse saves a prompt's state at its last multiple of this
                            * before its last token; 0 = 128 */
    /* systemd's watchdog ping: called from the worker loop as it makes progress, after a
     * step returns or while idle (then at least every heartbeat_ms), at most every
     * heartbeat_ms / 2. Never from a timer: a step stuck in the engine (a wedged GPU)
     * stops it until the step fails or ends. */
    void (*heartbeat)(void *ctx);
    void *heartbeat_ctx;
    uint32_t heartbeat_ms;
    const char *model_id;  /* the served model's name, copied into each job it runs */
    struct prefix_cache_options prefix; /* prefix reuse; mem_bytes 0 = off (dir borrowed during create) */
};

int scheduler_create(struct scheduler **out, struct engine *e, struct textgen *tg, const struct sched_options *opt,
                     char *err, size_t err_len);
/* Cancels everything, joins the worker, destroys the sessions. */
void scheduler_destroy(struct scheduler *s);
uint32_t scheduler_n_ctx(struct scheduler *s);

enum sched_submit { SCHED_OK = 0, SCHED_FULL = -1, SCHED_DRAINING = -2 };
/* Queues j (the scheduler takes its own reference). */
enum sched_submit scheduler_submit(struct scheduler *s, struct job *j);
/* Marks j cancelled; a queued job leaves the queue now, a running one frees its slot at
 * the worker's next step. */
void scheduler_cancel(struct scheduler *s, struct job *j);
/* Stops admitting new jobs (submit says DRAINING), waits up to grace_ms for queued and
 * running jobs to finish, then cancels what is left (JOB_SHUTDOWN). Returns the number
 * cancelled. */
int scheduler_drain(struct scheduler *s, uint32_t grace_ms);

/* Replaces the engine the worker runs without closing the queue (hot reload after an
 * update switched slots). The new sessions are built first, here, while the old engine
 * serves; then the worker stops admitting queued jobs, gives running ones grace_ms to
 * finish and ends the rest with JOB_RELOAD, swaps in e and tg, and resumes. Requests
 * submitted meanwhile wait in the queue. A queued job whose model_gen differs from gen
 * (tokenized for the old model) is re-tokenized with tg when it is admitted. On success
 * the old engine and textgen are no longer used by the scheduler (the caller closes them
 * once nothing else does) and *n_cancelled says how many jobs the grace period cut off.
 * On error nothing changed and the old engine keeps serving. */
int scheduler_swap_engine(struct scheduler *s, struct engine *e, struct textgen *tg, uint32_t gen, const char *model_id,
                          uint32_t grace_ms, int *n_cancelled, char *err, size_t err_len);
/* e NULL (and tg NULL) releases the engine the same way (running jobs get grace_ms, then
 * JOB_RELOAD) so the caller can close it and free its memory: queued and new jobs wait
 * until a later swap brings an engine (firmware/reload.c pauses serving so for an update's
 * self-test and evaluation). */

struct sched_stats {
    uint32_t queued, queue_capacity, busy, slots;
    uint32_t slots_configured;    /* server.slots: more than slots when only `slots` could be allocated */
    char slots_short[400];        /* why fewer ("" when all were allocated) */
    uint64_t prefill_waiting;     /* prompt tokens not yet evaluated: running jobs' and queued ones' */
    uint64_t engine_errors;
    bool last_eval_failed;
    bool device_lost;             /* the engine's GPU is gone until a swap replaces the engine */
    char device_lost_why[200];
    bool swapping;                /* a model swap waits for running work; the queue holds */
    bool have_device;             /* the backend has a device: the two below are live */
    uint64_t device_used, device_total; /* bytes of device memory held / the device's local memory */
    bool have_experts;            /* experts are paged: counters below are live */
    struct expert_counters experts; /* as of the worker's last step */
    bool have_prefix;             /* prefix reuse is on: the counters below are live */
    struct prefix_cache_stats prefix;
};
void scheduler_stats(struct scheduler *s, struct sched_stats *st);


#endif
