/* Many conversations at once (see bench_sessions.h). Decode: k sessions, each after its own
 * prompt, advance one token per engine_step; every stream waits one step per token, so the
 * step time is each stream's inter-token latency and k tokens per step the aggregate.
 * Time to first token: a new request arrives while a long prompt is read in steps of the
 * token budget; it waits for the step in flight, then the scheduler gives its whole short
 * prompt a step without the long prompt's next chunk (ttft below). */
#include "firmware/bench_sessions.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "common/errmsg.h"
#include "common/mono_clock.h"

double bench_cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Deterministic token ids: stream i, position p. */
static int32_t tok_at(uint32_t i, uint32_t p, uint32_t n_vocab) { return (int32_t)(((i + 1) * 2654435761u + p * 40503u) % n_vocab); }

/* k streams: prompts, then n_gen measured steps of one token each; best of runs. */
static int decode_streams(struct engine *e, const struct bench_sessions_options *o, uint32_t k, uint32_t n_vocab,
                          struct session **ss, struct session_step *items, int32_t *toks, int32_t *prompt, float *logits,
                          double *t_best, double *c_best, double *t_first, char *err, size_t err_len)
{
    *t_best = *c_best = 1e30;
    *t_first = 0;
    for (uint32_t run = 0; run < o->runs; run++) {
        for (uint32_t i = 0; i < k; i++) {
            session_reset(ss[i]);
            for (uint32_t p = 0; p < o->n_prompt; p++) prompt[p] = tok_at(i, p, n_vocab);
            if (session_eval(ss[i], prompt, o->n_prompt, NULL, false, err, err_len)) return -1;
            items[i] = (struct session_step){ .s = ss[i], .tokens = &toks[i], .n = 1, .logits = logits + (size_t)i * n_vocab };
        }
        /* a first step unmeasured: pipelines built on first use (per token count) */
        for (uint32_t i = 0; i < k; i++) toks[i] = tok_at(i, o->n_prompt, n_vocab);
        double t0 = mono_s();
        if (engine_step(e, items, k, err, err_len)) return -1;
        if (run == 0) *t_first = mono_s() - t0;
        t0 = mono_s();
        double c0 = bench_cpu_s();
        for (uint32_t g = 0; g < o->n_gen; g++) {
            for (uint32_t i = 0; i < k; i++) toks[i] = tok_at(i, o->n_prompt + 1 + g, n_vocab);
            if (engine_step(e, items, k, err, err_len)) return -1;
        }
        double dt = mono_s() - t0, dc = bench_cpu_s() - c0;
        if (dt < *t_best) *t_best = dt;
        if (dc < *c_best) *c_best = dc;
    }
    return 0;
}

/* The short request's time to first token alone, and arriving while the long prompt is read
 * in steps of step_tokens: it waits for the step in flight (half of one on average, all of
 * one at worst), then its whole prompt gets a step of its own (the scheduler defers the long
 * prompt's next chunk for a step that gives first tokens; firmware/scheduler.c). */
static int ttft(struct engine *e, const struct bench_sessions_options *o, uint32_t n_vocab, int32_t *prompt, float *logits,
                char *err, size_t err_len)
{
    struct session *sh = NULL, *lo = NULL;
    int rc = -1;
    const uint32_t n_short = o->short_prompt, n_long = o->long_prompt;
    if (n_short >= o->step_tokens)
        return errf(err, err_len, "--short-prompt %u must be under --step-tokens %u", n_short, o->step_tokens);
    int32_t *long_toks = malloc((size_t)n_long * sizeof *long_toks);
    if (!long_toks) return errf(err, err_len, "out of memory");
    for (uint32_t p = 0; p < n_long; p++) long_toks[p] = tok_at(1000, p, n_vocab);
    for (uint32_t p = 0; p < n_short; p++) prompt[p] = tok_at(2000, p, n_vocab);
    if (session_create(e, n_short + 8, &sh, err, err_len) || session_create(e, n_long + 8, &lo, err, err_len)) goto out;
    double alone = 1e30, own = 1e30, long_step = 1e30;
    const uint32_t chunk = o->step_tokens < n_long ? o->step_tokens : n_long;
    for (uint32_t run = 0; run < o->runs; run++) {
        session_reset(sh);
        double t0 = mono_s();
        if (session_eval(sh, prompt, n_short, logits, false, err, err_len)) goto out;
        double t = mono_s() - t0;
        if (t < alone) alone = t;
        /* the long prompt's step in flight when the request arrives, then the request's own */
        session_reset(sh);
        session_reset(lo);
        t0 = mono_s();
        if (session_eval(lo, long_toks, chunk, NULL, false, err, err_len)) goto out;
        t = mono_s() - t0;
        if (t < long_step) long_step = t;
        struct session_step item = { .s = sh, .tokens = prompt, .n = n_short, .logits = logits };
        t0 = mono_s();
        if (engine_step(e, &item, 1, err, err_len)) goto out;
        t = mono_s() - t0;
        if (t < own) own = t;
    }
    const double mean = long_step / 2 + own, worst = long_step + own;
    const double long_total = long_step * n_long / chunk;
    printf("ttft         %u-token request: %.1f ms alone; while a %u-token prompt is read in steps of %u (%.1f ms each): "
           "%.1f ms on average (%.2fx), %.1f ms at worst (%.2fx); waiting for that prompt instead: about %.1f s\n",
           n_short, 1e3 * alone, n_long, chunk, 1e3 * long_step, 1e3 * mean, alone > 0 ? mean / alone : 0, 1e3 * worst,
           alone > 0 ? worst / alone : 0, long_total);
    printf("{\"ttft\":{\"short_prompt\":%u,\"long_prompt\":%u,\"step_tokens\":%u,\"alone_ms\":%.2f,\"own_step_ms\":%.2f,"
           "\"long_step_ms\":%.2f,\"mean_ms\":%.2f,\"worst_ms\":%.2f,\"ratio\":%.3f,\"worst_ratio\":%.3f,"
           "\"long_prefill_s\":%.2f}}\n",
           n_short, n_long, chunk, 1e3 * alone, 1e3 * own, 1e3 * long_step, 1e3 * mean, 1e3 * worst,
           alone > 0 ? mean / alone : 0, alone > 0 ? worst / alone : 0, long_total);
    rc = 0;
out:
    session_destroy(sh);
    session_destroy(lo);
    free(long_toks);
    return rc;
}

int bench_sessions(struct engine *e, const struct bench_sessions_options *o, char *err, size_t err_len)
{
    struct engine_info info;
    engine_get_info(e, &info);
    const uint32_t N = o->max_sessions, n_vocab = info.n_vocab;
    const uint32_t n_pmax = o->n_prompt > o->short_prompt ? o->n_prompt : o->short_prompt;
    struct session **ss = calloc(N, sizeof *ss);
    struct session_step *items = calloc(N, sizeof *items);
    int32_t *toks = calloc(N, sizeof *toks), *prompt = calloc(n_pmax + 1, sizeof *prompt);
    float *logits = malloc((size_t)N * n_vocab * sizeof *logits);
    int rc = -1;
    if (!ss || !items || !toks || !prompt || !logits) {
        errf(err, err_len, "out of memory for %u sessions", N);
        goto out;
    }
    for (uint32_t i = 0; i < N; i++)
        if (session_create(e, o->n_prompt + o->n_gen + 16, &ss[i], err, err_len)) {
            errf_prefix(err, err_len, "session %u of %u", i + 1, N);
            goto out;
        }
    printf("model        %s (%s backend), %u-token prompts, %u decode steps, best of %u\n", info.model_name,
           info.backend_name, o->n_prompt, o->n_gen, o->runs);
    printf("%-8s %14s %12s %18s %16s %15s\n", "streams", "decode tok/s", "vs 1 stream", "inter-token ms", "cpu ms/token",
           "first step ms");
    double agg1 = 0, itl1 = 0;
    for (uint32_t k = 1;; k = k * 2 < N ? k * 2 : N) {
        double t, c, first;
        if (decode_streams(e, o, k, n_vocab, ss, items, toks, prompt, logits, &t, &c, &first, err, err_len)) goto out;
        const double agg = k * o->n_gen / t, itl = 1e3 * t / o->n_gen, cpu_ms = 1e3 * c / (k * o->n_gen);
        if (k == 1) agg1 = agg, itl1 = itl;
        /* the first step of a new token count builds that count's token-tile pipelines */
        printf("%-8u %14.2f %11.2fx %13.1f (%.2fx) %16.2f %15.1f\n", k, agg, agg / agg1, itl, itl / itl1, cpu_ms, 1e3 * first);
        printf("{\"streams\":%u,\"decode_tok_s\":%.3f,\"speedup\":%.3f,\"inter_token_ms\":%.2f,\"latency_ratio\":%.3f,"
               "\"cpu_ms_per_token\":%.3f,\"first_step_ms\":%.1f}\n", k, agg, agg / agg1, itl, itl / itl1, cpu_ms, 1e3 * first);
        /* one profiled step (GPU time per kernel kind; the first session is the step's workspace) */
        session_profile(ss[0], true);
        if (engine_step(e, items, k, err, err_len)) goto out;
        struct engine_profile pr;
        session_get_profile(ss[0], &pr);
        session_profile(ss[0], false);
        if (pr.n_kinds) {
            printf("         kernels ms/step:");
            for (uint32_t q = 0; q < pr.n_kinds; q++)
                if (pr.dispatches[q]) printf(" %s %.1f (%u)", pr.kind[q], pr.gpu_ns[q] / 1e6, pr.dispatches[q]);
            printf("\n");
        }
        if (k == N) break;
    }
    if (o->long_prompt && ttft(e, o, n_vocab, prompt, logits, err, err_len)) goto out;
    rc = 0;
out:
    for (uint32_t i = 0; ss && i < N; i++) session_destroy(ss[i]);
    free(ss);
    free(items);
    free(toks);
    free(prompt);
    free(logits);
    return rc;
}
