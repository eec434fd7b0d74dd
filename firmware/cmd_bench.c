/* `flashbox bench`: prefill and decode speed of a model on a backend, GPU time per kernel
 * kind (timestamp queries, in a separate profiled run so timing does not slow the measured
 * one), weight bytes read per decoded token and the bandwidth that achieves, against the
 * device's copy bandwidth measured here. Prints a table, then one JSON line. */
#include "engine/engine.h"
#include "common/mono_clock.h"
#include "common/safe_open.h"
#include "common/errmsg.h"
#include "firmware/backend_pick.h"
#include "firmware/bench_sessions.h"
#include "firmware/commands.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Longer prompts skip the profiled rerun of the prefill. */
#define BENCH_PROFILE_MAX_PROMPT 4096u

static void usage(FILE *out)
{
    fprintf(out, "usage: flashbox bench -m MODEL.gguf [--prompt N (64)] [--gen N (16)] [--backend auto|ref|vulkan (auto)]\n"
                 "                      [--device N] [--kernels] [--runs N (1)]\n"
                 "  --kernels   also time each matvec/matmul kernel alone on the model's shapes\n"
                 "  --runs N    repeat the measured prefill and decode N times and keep the fastest\n"
                 "              (one run when experts are paged or --cold)\n"
                 "  --expert-cache-mb N   page routed experts through a cache of N MiB\n"
                 "  --kv T                storage of compressed entries and indexer keys: f32 (default), f16 or fp8\n"
                 "  --expert-read auto|pagecache|direct   how paged experts are read\n"
                 "  --no-prefetch   turn speculative expert loads off (hash-layer prefetch and next-layer\n"
                 "                  router guesses), to see the stall they hide\n"
                 "  --cold      drop the model file's pages from the page cache before the measured run\n"
                 "  --json-schema FILE   also decode --gen tokens sampled with and without the mask of\n"
                 "              this JSON Schema (structured output) and print both speeds\n"
                 "  --tool-schema FILE   the same with the mask of a forced tool call whose parameters\n"
                 "              are this JSON Schema (tool_choice required / named)\n"
                 "  --prompt N  a prompt of 1024 or more also times its first and last 256 tokens apart:\n"
                 "              the per-token prefill cost at the start and at depth N\n"
                 "  --at P      start the measured prompt at position P from a zero state (the cost of a\n"
                 "              position does not depend on the values), next to the same prompt at 0;\n"
                 "              decode is then timed at depth P + N\n"
                 "  --reuse T   time to first token of a next turn of T tokens after the prompt, prefilled\n"
                 "              from scratch and resumed from the prompt's saved session state\n"
                 "  --sessions N   instead: decode 1, 2, 4, ... N conversations at once (engine_step):\n"
                 "                 aggregate tok/s and inter-token latency; then the time to first token of a\n"
                 "                 --short-prompt N (16) request beside a --long-prompt N (4096; 0 = skip) being\n"
                 "                 read in steps of --step-tokens N (128)\n");
}

/* Structured output's cost: --gen decode steps sampled (temperature 1, seed 1) plainly and
 * through the schema's mask, each the fastest of `runs`; a finished JSON value restarts the
 * grammar so both loops run the same number of forward steps. Wall and CPU time both, since
 * the mask is CPU work whatever the backend. With `call`, the schema is a tool's parameters
 * and the mask is the forced call's (a DSML block calling tool "f", --tool-schema). */
static int bench_json_schema(struct engine *e, struct session *s, const char *path, bool call, uint32_t n_gen,
                             uint32_t runs, char *err, size_t err_len)
{
    const struct tokenizer *tok = engine_tokenizer(e);
    int fd = safe_open(path, O_RDONLY, 0, err, err_len); /* a FIFO or device is refused, not waited on */
    if (fd < 0) return -1;
    FILE *f = fdopen(fd, "rb");
    if (!f) {
        close(fd);
        return errf(err, err_len, "%s: cannot open", path);
    }
    char text[1 << 16];
    size_t len = fread(text, 1, sizeof text, f);
    fclose(f);
    struct jg_schema *g = NULL;
    struct jg_vocab *v = NULL;
    struct jg_matcher *m = NULL;
    struct dsml_grammar *cg = NULL;
    struct dsml_matcher *cm = NULL;
    struct dsml_tool tool = { "f", text, 0 };
    int32_t dsml = tok_find_special(tok, CHAT_DSML);
    struct sampler *smp = NULL;
    uint32_t n_vocab = tok_n_vocab(tok);
    float *logits = malloc(n_vocab * sizeof *logits);
    uint32_t *allow = NULL;
    int rc = -1;
    struct sampler_params sp;
    sampler_params_default(&sp);
    sp.seed = 1;
    tool.parameters_len = len;
    if (call && dsml < 0) {
        rc = errf(err, err_len, "tool-schema bench: the vocabulary has no DSML token");
        goto out;
    }
    if (!logits || (call ? dsml_grammar_compile(&cg, &tool, 1, 1, err, err_len) : jg_schema_compile(&g, text, len, err, err_len)) ||
        jg_vocab_create(&v, tok, err, err_len) || jg_matcher_create(&m, v, err, err_len) ||
        (call && dsml_matcher_create(&cm, v, tok, dsml, err, err_len)) || sampler_create(&smp, n_vocab, &sp, err, err_len))
        goto out;
    uint32_t per_value = call ? dsml_grammar_min_tokens(cg) + 64 : 64; /* the token budget of one value */
    if (!(allow = malloc(jg_mask_words(v) * sizeof *allow))) goto out;
    int32_t eos = tok_eos(tok), bos = tok_bos(tok) >= 0 ? tok_bos(tok) : 0;
    double best[2] = { 1e30, 1e30 }, best_cpu[2] = { 1e30, 1e30 }, mask_s = 1e30;
    uint32_t values = 0;
    for (uint32_t run = 0; run < runs; run++)
        for (int masked = 0; masked < 2; masked++) {
            session_reset(s);
            sampler_reset(smp);
            if (call) dsml_matcher_start(cm, cg, false);
            else jg_matcher_start(m, g);
            int32_t t = bos;
            uint32_t used = 0, done = 0;
            double in_mask = 0, t0 = mono_s(), c0 = bench_cpu_s();
            for (uint32_t i = 0; i < n_gen; i++) {
                if (session_eval(s, &t, 1, logits, false, err, err_len)) goto out;
                if (masked) {
                    double m0 = mono_s();
                    if (call) dsml_mask(cm, per_value - used, eos, allow);
                    else jg_mask(m, per_value - used, eos, allow);
                    in_mask += mono_s() - m0;
                }
                t = sampler_sample_masked(smp, logits, masked ? allow : NULL);
                if (t < 0) {
                    rc = errf(err, err_len, "json-schema bench: no token allowed");
                    goto out;
                }
                if (!masked) continue;
                if (t == eos) {
                    if (call) dsml_matcher_start(cm, cg, false);
                    else jg_matcher_start(m, g);
                    used = 0;
                    done++;
                } else if (call ? dsml_matcher_accept(cm, t) : jg_matcher_accept(m, t)) {
                    rc = errf(err, err_len, "json-schema bench: a masked token left the grammar");
                    goto out;
                } else {
                    used++;
                }
            }
            double dt = mono_s() - t0, dc = bench_cpu_s() - c0;
            if (dt < best[masked]) best[masked] = dt;
            if (dc < best_cpu[masked]) best_cpu[masked] = dc;
            if (masked && in_mask < mask_s) mask_s = in_mask, values = done;
        }
    printf("%s  %s: decode %.2f tok/s plain, %.2f tok/s masked (%+.1f%%; cpu %+.1f%%), mask %.1f us/token over "
           "%u tokens, %u %s completed\n", call ? "tool-schema" : "json-schema", path, n_gen / best[0], n_gen / best[1], 100 * (best[1] / best[0] - 1),
           100 * (best_cpu[1] / best_cpu[0] - 1), 1e6 * mask_s / n_gen, n_vocab, values, call ? "calls" : "values");
    rc = 0;
out:
    free(allow);
    free(logits);
    sampler_destroy(smp);
    jg_matcher_destroy(m);
    dsml_matcher_destroy(cm);
    dsml_grammar_free(cg);
    jg_vocab_destroy(v);
    jg_schema_free(g);
    return rc;
}

/* Sequential read bandwidth of the file's device: up to 256 MiB read with O_DIRECT in 4 MiB
 * requests (falls back to buffered reads where O_DIRECT is refused). Bytes per second. */
static double storage_read_bandwidth(const char *path)
{
    int fd = safe_open(path, O_RDONLY | O_DIRECT, 0, NULL, 0);
    if (fd < 0) fd = safe_open(path, O_RDONLY, 0, NULL, 0);
    if (fd < 0) return 0;
    const size_t chunk = 4u << 20;
    void *buf = NULL;
    if (posix_memalign(&buf, 4096, chunk)) {
        close(fd);
        return 0;
    }
    uint64_t total = 0;
    double t0 = mono_s();
    for (off_t off = 0; total < (256u << 20);) {
        ssize_t n = pread(fd, buf, chunk, off);
        if (n <= 0) break;
        total += (uint64_t)n;
        off += n;
    }
    double dt = mono_s() - t0;
    free(buf);
    close(fd);
    return dt > 0 ? (double)total / dt : 0;
}

/* Drops the file's clean pages so the next reads come from storage. */
static void drop_file_pages(const char *path)
{
    int fd = safe_open(path, O_RDONLY, 0, NULL, 0);
    if (fd < 0) return;
    fdatasync(fd);
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
}

int cmd_bench(int argc, char **argv)
{
    struct engine_options opt;
    engine_options_default(&opt);
    opt.backend = ENGINE_BACKEND_AUTO;
    uint32_t n_prompt = 64, n_gen = 16, runs = 1, at = 0, reuse = 0;
    struct bench_sessions_options bs = { .long_prompt = 4096, .short_prompt = 16, .step_tokens = 128 };
    bool kernels = false, cold = false;
    const char *json_schema = NULL, *tool_schema = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if ((!strcmp(a, "-m") || !strcmp(a, "--model")) && v) opt.model_path = argv[++i];
        else if (!strcmp(a, "--prompt") && v) n_prompt = (uint32_t)strtoul(argv[++i], NULL, 10);
        else if (!strcmp(a, "--at") && v) at = (uint32_t)strtoul(argv[++i], NULL, 10);
        else if (!strcmp(a, "--reuse") && v) reuse = (uint32_t)strtoul(argv[++i], NULL, 10);
        else if (!strcmp(a, "--gen") && v) n_gen = (uint32_t)strtoul(argv[++i], NULL, 10);
        else if (!strcmp(a, "--runs") && v) runs = (uint32_t)strtoul(argv[++i], NULL, 10);
        else if (!strcmp(a, "--device") && v) opt.device_index = atoi(argv[++i]);
        else if (!strcmp(a, "--sessions") && v) bs.max_sessions = (uint32_t)strtoul(argv[++i], NULL, 10);
        else if (!strcmp(a, "--long-prompt") && v) bs.long_prompt = (uint32_t)strtoul(argv[++i], NULL, 10);
        else if (!strcmp(a, "--short-prompt") && v) bs.short_prompt = (uint32_t)strtoul(argv[++i], NULL, 10);
        else if (!strcmp(a, "--step-tokens") && v) bs.step_tokens = (uint32_t)strtoul(argv[++i], NULL, 10);
        else if (!strcmp(a, "--kernels")) kernels = true;
        else if (!strcmp(a, "--cold")) cold = true;
        else if (!strcmp(a, "--json-schema") && v) json_schema = argv[++i];
        else if (!strcmp(a, "--tool-schema") && v) tool_schema = argv[++i];
        else if (!strcmp(a, "--no-prefetch")) opt.expert_no_prefetch = true;
        else if (!strcmp(a, "--expert-cache-mb") && v) opt.expert_cache_mb = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(a, "--expert-read") && v) {
            const char *r = argv[++i];
            if (!strcmp(r, "auto")) opt.expert_read = ENGINE_EXPERT_READ_AUTO;
            else if (!strcmp(r, "pagecache")) opt.expert_read = ENGINE_EXPERT_READ_PAGECACHE;
            else if (!strcmp(r, "direct")) opt.expert_read = ENGINE_EXPERT_READ_DIRECT;
            else {
                fprintf(stderr, "flashbox bench: --expert-read: '%s', expected auto, pagecache or direct\n", r);
                return 2;
            }
        }
        else if (!strcmp(a, "--backend") && v) {
            if (engine_backend_parse(argv[++i], &opt.backend)) {
                fprintf(stderr, "flashbox bench: unknown backend '%s'\n", argv[i]);
                return 2;
            }
        } else if (!strcmp(a, "--kv") && v) {
            if (engine_kv_parse(argv[++i], &opt.kv)) {
                fprintf(stderr, "flashbox bench: --kv: '%s', expected f32, f16 or fp8\n", argv[i]);
                return 2;
            }
        } else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (!opt.model_path || n_prompt == 0 || runs == 0) {
        usage(stderr);
        return 2;
    }
    backend_resolve(&opt);
    char err[512];
    struct engine *e;
    if (engine_open(&e, &opt, err, sizeof err)) {
        fprintf(stderr, "flashbox bench: %s\n", err);
        return 1;
    }
    if (bs.max_sessions) {
        bs.n_prompt = n_prompt;
        bs.n_gen = n_gen ? n_gen : 1;
        bs.runs = runs;
        if (bs.short_prompt == 0 || bs.step_tokens == 0) {
            usage(stderr);
            engine_close(e);
            return 2;
        }
        int brc = bench_sessions(e, &bs, err, sizeof err);
        if (brc) fprintf(stderr, "flashbox bench: %s\n", err);
        engine_close(e);
        return brc ? 1 : 0;
    }
    struct engine_info info;
    engine_get_info(e, &info);
    struct session *s = NULL;
    int rc = 1;
    void *state = NULL;
    int32_t *toks = malloc((size_t)(n_prompt + n_gen + reuse + 1) * sizeof *toks);
    float *logits = malloc((size_t)info.n_vocab * sizeof *logits);
    if (!toks || !logits) goto out;
    for (uint32_t i = 0; i < n_prompt + n_gen + reuse + 1; i++) toks[i] = (int32_t)((i * 2654435761u) % info.n_vocab);
    if (session_create(e, at + n_prompt + n_gen + reuse + 8, &s, err, sizeof err)) goto fail;

    /* warm-up (first-use costs), then the measured runs */
    if (session_eval(s, toks, 1, logits, false, err, sizeof err)) goto fail;
    session_reset(s);
    if (cold) drop_file_pages(opt.model_path);
    struct expert_counters ec0, ec1, ecm;
    bool paged = engine_expert_counters(e, &ec0) == 0;
    /* Paged runs measure one pass (a second would find the first one's experts); others
     * keep the fastest of `runs` passes, since a shared machine's noise only ever slows. */
    if (paged || cold) runs = 1;
    double t_prefill = 1e30, t_decode = 1e30, cpu_prefill = 1e30, cpu_decode = 1e30;
    /* A long prompt's first and last EDGE tokens are timed on their own (whole batches, so
     * the batching is the same): the per-token cost at the start and at the prompt's depth. */
    const uint32_t EDGE = 256, edge = !at && n_prompt >= 4 * EDGE ? EDGE : 0;
    double t_first = 1e30, t_last = 1e30;
    /* --at: the same prompt from position 0 (the short prompt's cost), then the measured
     * runs from a zero state at position `at` */
    double t_short = 1e30;
    if (at) {
        for (uint32_t run = 0; run < runs; run++) {
            session_reset(s);
            double t0 = mono_s();
            if (session_eval(s, toks, n_prompt, logits, false, err, sizeof err)) goto fail;
            if (mono_s() - t0 < t_short) t_short = mono_s() - t0;
        }
    }
    for (uint32_t run = 0; run < runs; run++) {
        if (run || at) session_reset(s);
        if (at && session_seek_zero(s, at, err, sizeof err)) goto fail;
        double t0 = mono_s(), c0 = bench_cpu_s(), tf = 0, tl = 0;
        if (edge) {
            if (session_eval(s, toks, edge, NULL, false, err, sizeof err)) goto fail;
            tf = mono_s() - t0;
            if (session_eval(s, toks + edge, n_prompt - 2 * edge, NULL, false, err, sizeof err)) goto fail;
            double tm = mono_s();
            if (session_eval(s, toks + n_prompt - edge, edge, logits, false, err, sizeof err)) goto fail;
            tl = mono_s() - tm;
        } else if (session_eval(s, toks, n_prompt, logits, false, err, sizeof err)) {
            goto fail;
        }
        double tp = mono_s() - t0, cp = bench_cpu_s() - c0;
        if (edge && tf < t_first) t_first = tf;
        if (edge && tl < t_last) t_last = tl;
        if (tp < t_prefill) t_prefill = tp;
        if (cp < cpu_prefill) cpu_prefill = cp;
        if (paged) engine_expert_counters(e, &ecm); /* splits the stall into prefill and decode */
        session_profile(s, false); /* clears the byte counters: count decode only */
        t0 = mono_s();
        c0 = bench_cpu_s();
        for (uint32_t i = 0; i < n_gen; i++)
            if (session_eval(s, toks + n_prompt + i, 1, logits, false, err, sizeof err)) goto fail;
        double td = mono_s() - t0, cd = bench_cpu_s() - c0;
        if (td < t_decode) t_decode = td;
        if (cd < cpu_decode) cpu_decode = cd;
    }
    if (paged) engine_expert_counters(e, &ec1);
    struct engine_profile pd;
    session_get_profile(s, &pd);

    /* profiled run: the same prefill and decode steps with timestamps around every dispatch
     * (not for long prompts, whose prefill it would repeat) */
    struct engine_profile pf, pp;
    memset(&pf, 0, sizeof pf);
    memset(&pp, 0, sizeof pp);
    if (n_prompt <= BENCH_PROFILE_MAX_PROMPT && !at) {
        session_reset(s);
        session_profile(s, true);
        if (session_eval(s, toks, n_prompt, NULL, false, err, sizeof err)) goto fail;
        session_get_profile(s, &pf);
        session_profile(s, true);
        for (uint32_t i = 0; i < n_gen; i++)
            if (session_eval(s, toks + n_prompt + i, 1, logits, false, err, sizeof err)) goto fail;
        session_get_profile(s, &pp);
        session_profile(s, false);
    }

    /* --reuse T: a next turn of T tokens after the prompt, its time to first token from
     * scratch (prefill of prompt + turn) and from the prompt's saved state (load + turn) */
    double t_cold = 0, t_warm = 0;
    uint64_t state_bytes = 0;
    if (reuse) {
        session_reset(s);
        double t0 = mono_s();
        if (session_eval(s, toks, n_prompt + reuse, logits, false, err, sizeof err)) goto fail;
        t_cold = mono_s() - t0;
        session_reset(s);
        if (session_eval(s, toks, n_prompt, NULL, false, err, sizeof err)) goto fail;
        state_bytes = session_state_bytes(s, n_prompt);
        if (!(state = malloc(state_bytes))) {
            snprintf(err, sizeof err, "out of memory for %llu bytes of state", (unsigned long long)state_bytes);
            goto fail;
        }
        if (session_state_save(s, state, state_bytes, err, sizeof err)) goto fail;
        session_reset(s);
        t0 = mono_s();
        if (session_state_load(s, state, state_bytes, err, sizeof err) ||
            session_eval(s, toks + n_prompt, reuse, logits, false, err, sizeof err))
            goto fail;
        t_warm = mono_s() - t0;
    }

    double copy_bw = 0;
    if (engine_copy_bandwidth(e, &copy_bw, err, sizeof err)) copy_bw = 0;

    double prefill_tps = n_prompt / t_prefill, decode_tps = n_gen ? n_gen / t_decode : 0;
    double bytes_tok = n_gen ? (double)pd.weight_bytes / n_gen : 0;
    double gbs = bytes_tok * decode_tps / 1e9;
    printf("model        %s (%s backend)%s\n", info.model_name, info.backend_name, runs > 1 ? ", best of the runs" : "");
    printf("prefill      %u tokens  %.2f tok/s\n", n_prompt, prefill_tps);
    if (edge)
        printf("prefill per token  %.4f ms at positions 0..%u, %.4f ms at %u..%u (%.2fx)\n", 1e3 * t_first / edge, edge - 1,
               1e3 * t_last / edge, n_prompt - edge, n_prompt - 1, t_last / t_first);
    if (at)
        printf("prefill per token  %.4f ms at positions 0..%u, %.4f ms at %u..%u (%.2fx; from a zero state)\n",
               1e3 * t_short / n_prompt, n_prompt - 1, 1e3 * t_prefill / n_prompt, at, at + n_prompt - 1, t_prefill / t_short);
    printf("decode       %u tokens  %.2f tok/s  (%.2f ms/token) at depth %u\n", n_gen, decode_tps,
           n_gen ? 1e3 * t_decode / n_gen : 0, at + n_prompt);
    if (reuse)
        printf("next turn    %u tokens after %u: first token in %.1f ms from scratch, %.1f ms from the saved state "
               "(%.2f MiB, load included)\n", reuse, n_prompt, 1e3 * t_cold, 1e3 * t_warm, (double)state_bytes / (1 << 20));
    printf("prefill/decode per-token speed-up  %.2fx\n", decode_tps > 0 ? prefill_tps / decode_tps : 0);
    double cpu_p_ms = 1e3 * cpu_prefill / n_prompt, cpu_d_ms = n_gen ? 1e3 * cpu_decode / n_gen : 0;
    printf("cpu time     prefill %.2f ms/token, decode %.2f ms/token, speed-up %.2fx (all threads)\n", cpu_p_ms, cpu_d_ms,
           cpu_p_ms > 0 ? cpu_d_ms / cpu_p_ms : 0);
    printf("weights/token %.2f MB   achieved %.2f GB/s   device copy %.2f GB/s   fraction %.3f\n", bytes_tok / 1e6, gbs,
           copy_bw / 1e9, copy_bw > 0 ? gbs * 1e9 / copy_bw : 0);
    printf("dispatches per decode step  %u\n", pd.last_dispatch_count);
    double total = 0;
    for (uint32_t k = 0; k < pp.n_kinds; k++) total += pp.gpu_ns[k];
    double total_pf = 0;
    for (uint32_t k = 0; k < pf.n_kinds; k++) total_pf += pf.gpu_ns[k];
    if (pp.n_kinds)
        printf("%-12s %12s %10s %8s | %16s %8s\n", "kernel kind", "decode ms/tok", "dispatches", "share", "prefill ms/tok", "share");
    for (uint32_t k = 0; k < pp.n_kinds; k++)
        if (pp.dispatches[k] || pf.dispatches[k])
            printf("%-12s %12.3f %10.1f %7.1f%% | %16.3f %7.1f%%\n", pp.kind[k], n_gen ? pp.gpu_ns[k] / 1e6 / n_gen : 0,
                   n_gen ? (double)pp.dispatches[k] / n_gen : 0, total > 0 ? 100 * pp.gpu_ns[k] / total : 0,
                   pf.gpu_ns[k] / 1e6 / n_prompt, total_pf > 0 ? 100 * pf.gpu_ns[k] / total_pf : 0);
    /* the forward against its kernels: a decode step should cost at most 1.5x its kernels'
     * GPU time plus a fixed cost per dispatch (10 us, lavapipe's). Each kernel's time is
     * the gap between the timestamps around it in the profiled step: dispatches run one
     * after another there, so that is the kernel alone, with the step's caches. */
    double step_ms = n_gen ? 1e3 * t_decode / n_gen : 0, kernels_ms = n_gen ? total / 1e6 / n_gen : 0;
    double budget_ms = kernels_ms + 0.010 * pd.last_dispatch_count, step_ratio = budget_ms > 0 ? step_ms / budget_ms : 0;
    if (pp.n_kinds && n_gen)
        printf("decode step  %.2f ms against %.2f ms of kernels + 10 us x %u dispatches (%.1f per layer): %.2fx, %s 1.5x\n",
               step_ms, kernels_ms, pd.last_dispatch_count, info.n_layer ? (double)pd.last_dispatch_count / info.n_layer : 0,
               step_ratio, step_ratio <= 1.5 ? "within" : "over");
    printf("{\"model\":\"%s\",\"backend\":\"%s\",\"prompt\":%u,\"gen\":%u,\"prefill_tok_s\":%.3f,\"decode_tok_s\":%.3f,"
           "\"weight_bytes_per_token\":%.0f,\"achieved_gb_s\":%.3f,\"copy_gb_s\":%.3f,\"bandwidth_fraction\":%.4f,"
           "\"dispatches_per_step\":%u,\"cpu_ms_per_token\":{\"prefill\":%.3f,\"decode\":%.3f},\"gpu_ms_per_token\":{",
           info.model_name, info.backend_name, n_prompt, n_gen, prefill_tps, decode_tps, bytes_tok, gbs, copy_bw / 1e9,
           copy_bw > 0 ? gbs * 1e9 / copy_bw : 0, pd.last_dispatch_count, cpu_p_ms, cpu_d_ms);
    for (uint32_t k = 0, first = 1; k < pp.n_kinds; k++)
        if (pp.dispatches[k]) {
            printf("%s\"%s\":%.4f", first ? "" : ",", pp.kind[k], pp.gpu_ns[k] / 1e6 / n_gen);
            first = 0;
        }
    printf("}");
    if (edge)
        printf(",\"prefill_ms_per_token_first\":%.5f,\"prefill_ms_per_token_last\":%.5f", 1e3 * t_first / edge,
               1e3 * t_last / edge);
    if (at)
        printf(",\"at\":%u,\"prefill_ms_per_token_first\":%.5f,\"prefill_ms_per_token_last\":%.5f", at,
               1e3 * t_short / n_prompt, 1e3 * t_prefill / n_prompt);
    printf("}\n");
    if (paged) {
        /* counters of the measured prefill + decode only */
        uint64_t hit = ec1.hits[0] + ec1.hits[1] - ec0.hits[0] - ec0.hits[1];
        uint64_t miss = ec1.misses[0] + ec1.misses[1] - ec0.misses[0] - ec0.misses[1];
        uint64_t hash_q = ec1.hits[0] + ec1.misses[0] - ec0.hits[0] - ec0.misses[0];
        uint64_t learned_q = ec1.hits[1] + ec1.misses[1] - ec0.hits[1] - ec0.misses[1];
        double n_tok = n_prompt + n_gen;
        double read_tok = (double)(ec1.bytes_read - ec0.bytes_read) / n_tok;
        double stall_ms = (double)(ec1.stall_ns - ec0.stall_ns) / 1e6;
        uint64_t pf = ec1.prefetch_issued - ec0.prefetch_issued, pfu = ec1.prefetch_used - ec0.prefetch_used;
        double disk_bw = storage_read_bandwidth(opt.model_path);
        double bound = read_tok > 0 && disk_bw > 0 ? disk_bw / read_tok : 0;
        printf("experts      %u slots of %.1f KiB (%s reads%s), hit rate %.3f (hash %.3f, learned %.3f)\n", ec1.n_slots,
               ec1.slot_bytes / 1024.0, ec1.read_path == ENGINE_EXPERT_READ_DIRECT ? "direct" : "page-cache",
               cold ? ", cold" : "", hit + miss ? (double)hit / (hit + miss) : 0,
               hash_q ? (double)(ec1.hits[0] - ec0.hits[0]) / hash_q : 0,
               learned_q ? (double)(ec1.hits[1] - ec0.hits[1]) / learned_q : 0);
        double stall_dec = (double)(ec1.stall_ns - ecm.stall_ns) / 1e6;
        uint64_t pfh = ec1.prefetch_issued_kind[0] - ec0.prefetch_issued_kind[0];
        uint64_t pfl = ec1.prefetch_issued_kind[1] - ec0.prefetch_issued_kind[1];
        uint64_t pfhu = ec1.prefetch_used_kind[0] - ec0.prefetch_used_kind[0];
        uint64_t pflu = ec1.prefetch_used_kind[1] - ec0.prefetch_used_kind[1];
        uint64_t pfd = ec1.prefetch_dropped - ec0.prefetch_dropped;
        printf("             %.1f KiB read per token, stalled %.1f ms in all (%.2f ms/token; decode %.2f ms/token)\n",
               read_tok / 1024, stall_ms, stall_ms / n_tok, n_gen ? stall_dec / n_gen : 0);
        printf("             prefetch %llu issued %llu used (accuracy %.3f; hash %.3f of %llu, learned %.3f of %llu), "
               "%llu dropped unread\n",
               (unsigned long long)pf, (unsigned long long)pfu, pf ? (double)pfu / pf : 0, pfh ? (double)pfhu / pfh : 0,
               (unsigned long long)pfh, pfl ? (double)pflu / pfl : 0, (unsigned long long)pfl, (unsigned long long)pfd);
        printf("             storage %.2f GB/s sequential: bound %.1f tok/s at this read rate\n", disk_bw / 1e9, bound);
        printf("{\"experts\":{\"slots\":%u,\"hit_rate\":%.4f,\"bytes_read_per_token\":%.0f,\"stall_ms\":%.3f,"
               "\"decode_stall_ms_per_token\":%.3f,\"prefetch_issued\":%llu,\"prefetch_used\":%llu,\"storage_gb_s\":%.3f,\"storage_bound_tok_s\":%.2f,"
               "\"cold\":%s,\"read_path\":\"%s\"}}\n",
               ec1.n_slots, hit + miss ? (double)hit / (hit + miss) : 0, read_tok, stall_ms, n_gen ? stall_dec / n_gen : 0,
               (unsigned long long)pf,
               (unsigned long long)pfu, disk_bw / 1e9, bound, cold ? "true" : "false",
               ec1.read_path == ENGINE_EXPERT_READ_DIRECT ? "direct" : "pagecache");
    }
    if (kernels && engine_bench_kernels(e, stdout, err, sizeof err)) goto fail;
    if (json_schema && bench_json_schema(e, s, json_schema, false, n_gen, runs, err, sizeof err)) goto fail;
    if (tool_schema && bench_json_schema(e, s, tool_schema, true, n_gen, runs, err, sizeof err)) goto fail;
    rc = 0;
    goto out;
fail:
    fprintf(stderr, "flashbox bench: %s\n", err);
out:
    session_destroy(s);
    engine_close(e);
    free(state);
    free(toks);
    free(logits);
    return rc;
}
