/* `flashbox bench`: prefill and decode speed of a model on a backend, GPU time per kernel
 * kind (timestamp queries, in a separate profiled run so timing does not slow the measured
 * one), weight bytes read per decoded token and the bandwidth that achieves, against the
 * device's copy bandwidth measured here. Prints a table, then one JSON line. */
#include "engine/engine.h"
#include "firmware/commands.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void usage(FILE *out)
{
    fprintf(out, "usage: flashbox bench -m MODEL.gguf [--prompt N (64)] [--gen N (16)] [--backend ref|vulkan (vulkan)]\n"
                 "                      [--device N] [--kernels]\n"
                 "  --kernels   also time each matvec/matmul kernel alone on the model's shapes\n");
}

int cmd_bench(int argc, char **argv)
{
    struct engine_options opt;
    engine_options_default(&opt);
    opt.backend = ENGINE_BACKEND_VULKAN;
    uint32_t n_prompt = 64, n_gen = 16;
    bool kernels = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if ((!strcmp(a, "-m") || !strcmp(a, "--model")) && v) opt.model_path = argv[++i];
        else if (!strcmp(a, "--prompt") && v) n_prompt = (uint32_t)strtoul(argv[++i], NULL, 10);
        else if (!strcmp(a, "--gen") && v) n_gen = (uint32_t)strtoul(argv[++i], NULL, 10);
        else if (!strcmp(a, "--device") && v) opt.device_index = atoi(argv[++i]);
        else if (!strcmp(a, "--kernels")) kernels = true;
        else if (!strcmp(a, "--backend") && v) {
            if (engine_backend_parse(argv[++i], &opt.backend)) {
                fprintf(stderr, "flashbox bench: unknown backend '%s'\n", argv[i]);
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
    if (!opt.model_path || n_prompt == 0) {
        usage(stderr);
        return 2;
    }
    char err[512];
    struct engine *e;
    if (engine_open(&e, &opt, err, sizeof err)) {
        fprintf(stderr, "flashbox bench: %s\n", err);
        return 1;
    }
    struct engine_info info;
    engine_get_info(e, &info);
    struct session *s = NULL;
    int rc = 1;
    int32_t *toks = malloc((size_t)(n_prompt + n_gen + 1) * sizeof *toks);
    float *logits = malloc((size_t)info.n_vocab * sizeof *logits);
    if (!toks || !logits) goto out;
    for (uint32_t i = 0; i < n_prompt + n_gen + 1; i++) toks[i] = (int32_t)((i * 2654435761u) % info.n_vocab);
    if (session_create(e, n_prompt + n_gen + 8, &s, err, sizeof err)) goto fail;

    /* warm-up (first-use costs), then the measured runs */
    if (session_eval(s, toks, 1, logits, false, err, sizeof err)) goto fail;
    session_reset(s);
    double t0 = now_s();
    if (session_eval(s, toks, n_prompt, logits, false, err, sizeof err)) goto fail;
    double t_prefill = now_s() - t0;
    session_profile(s, false); /* clears the byte counters: count decode only */
    t0 = now_s();
    for (uint32_t i = 0; i < n_gen; i++)
        if (session_eval(s, toks + n_prompt + i, 1, logits, false, err, sizeof err)) goto fail;
    double t_decode = now_s() - t0;
    struct engine_profile pd;
    session_get_profile(s, &pd);

    /* profiled run: the same prefill and decode steps with timestamps around every dispatch */
    session_reset(s);
    session_profile(s, true);
    if (session_eval(s, toks, n_prompt, NULL, false, err, sizeof err)) goto fail;
    struct engine_profile pf;
    session_get_profile(s, &pf);
    session_profile(s, true);
    for (uint32_t i = 0; i < n_gen; i++)
        if (session_eval(s, toks + n_prompt + i, 1, logits, false, err, sizeof err)) goto fail;
    struct engine_profile pp;
    session_get_profile(s, &pp);
    session_profile(s, false);

    double copy_bw = 0;
    if (engine_copy_bandwidth(e, &copy_bw, err, sizeof err)) copy_bw = 0;

    double prefill_tps = n_prompt / t_prefill, decode_tps = n_gen ? n_gen / t_decode : 0;
    double bytes_tok = n_gen ? (double)pd.weight_bytes / n_gen : 0;
    double gbs = bytes_tok * decode_tps / 1e9;
    printf("model        %s (%s backend)\n", info.model_name, info.backend_name);
    printf("prefill      %u tokens  %.2f tok/s\n", n_prompt, prefill_tps);
    printf("decode       %u tokens  %.2f tok/s  (%.2f ms/token)\n", n_gen, decode_tps, n_gen ? 1e3 * t_decode / n_gen : 0);
    printf("prefill/decode per-token speed-up  %.2fx\n", decode_tps > 0 ? prefill_tps / decode_tps : 0);
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
    printf("{\"model\":\"%s\",\"backend\":\"%s\",\"prompt\":%u,\"gen\":%u,\"prefill_tok_s\":%.3f,\"decode_tok_s\":%.3f,"
           "\"weight_bytes_per_token\":%.0f,\"achieved_gb_s\":%.3f,\"copy_gb_s\":%.3f,\"bandwidth_fraction\":%.4f,"
           "\"dispatches_per_step\":%u,\"gpu_ms_per_token\":{",
           info.model_name, info.backend_name, n_prompt, n_gen, prefill_tps, decode_tps, bytes_tok, gbs, copy_bw / 1e9,
           copy_bw > 0 ? gbs * 1e9 / copy_bw : 0, pd.last_dispatch_count);
    for (uint32_t k = 0, first = 1; k < pp.n_kinds; k++)
        if (pp.dispatches[k]) {
            printf("%s\"%s\":%.4f", first ? "" : ",", pp.kind[k], pp.gpu_ns[k] / 1e6 / n_gen);
            first = 0;
        }
    printf("}}\n");
    if (kernels && engine_bench_kernels(e, stdout, err, sizeof err)) goto fail;
    rc = 0;
    goto out;
fail:
    fprintf(stderr, "flashbox bench: %s\n", err);
out:
    session_destroy(s);
    engine_close(e);
    free(toks);
    free(logits);
    return rc;
}
