/* `flashbox bench --sessions N` (firmware/cmd_bench.c): many conversations at once through
 * engine_step, the way the daemon's scheduler runs them. */
#ifndef FLASHBOX_FIRMWARE_BENCH_SESSIONS_H
#define FLASHBOX_FIRMWARE_BENCH_SESSIONS_H

#include <stdint.h>

#include "engine/engine.h"

struct bench_sessions_options {
    uint32_t max_sessions;  /* streams 1, 2, 4, ... up to this */
    uint32_t n_prompt;      /* prompt tokens of each stream, evaluated before the measured decode */
    uint32_t n_gen;         /* decode steps measured */
    uint32_t runs;          /* best of this many */
    uint32_t long_prompt;   /* the long prompt read while a short request arrives (0: skip) */
    uint32_t short_prompt;  /* ... the short request's prompt */
    uint32_t step_tokens;   /* the scheduler's tokens per step (server.step_tokens) */
};

/* CPU seconds of every thread of this process (a CPU
 * device's worker threads included): on a CPU device that is the work itself, which time
 * stolen by other guests on a shared machine does not inflate, unlike wall time (mono_s). */
double bench_cpu_s(void);

/* Prints a table and JSON lines: per stream count, aggregate decode tok/s, the inter-token
 * latency every stream sees (one step) and CPU time per token; then the time to first
 * token of a short request alone and in a step beside a long prompt's chunk. */
int bench_sessions(struct engine *e, const struct bench_sessions_options *o, char *err, size_t err_len);

#endif
