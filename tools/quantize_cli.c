/* `flashbox quantize`: the command line over tools/quantize.c (entry point listed in
 * firmware/commands.h, like the other tools' mains). */
#include "tools/quantize.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *out)
{
    fprintf(out,
            "usage: flashbox quantize -m IN.gguf -o OUT.gguf --recipe NAME|FILE [--imatrix FILE] [--report]\n"
            "                         [--threads N] [--tokens 1,2,3 | --tokens-file FILE] [--quiet]\n"
            "  --recipe NAME|FILE  a named recipe (below) or a pattern file of PATTERN=TYPE lines,\n"
            "                      e.g. blk.*.ffn_down_exps=q2_k ('*' spans dots, first match wins); types:\n"
            "                      q2_k..q6_k, iq2_xxs, iq2_xs, iq2_s, iq3_xxs, iq1_s, iq1_m, iq4_nl, iq4_xs,\n"
            "                      q8_0, mxfp4, f16, bf16, f32\n"
            "  --imatrix FILE      llama.cpp importance matrix (GGUF or legacy .dat); weights the K-quant, IQ1/IQ2/IQ3 and IQ4 fits\n"
            "  --threads N         quantize on N threads (default: the online CPUs, here %u); the output\n"
            "                      is the same bytes for any N\n"
            "  --report            then compare OUT's logits with IN's on the reference backend:\n"
            "                      mean and max KL divergence per position, top-1 agreement; overall\n"
            "                      and, when OUT has several new types, with only each type quantized\n"
            "  --tokens, --tokens-file  the report's token ids (default: 64 fixed ids below 256)\n"
            "recipes:\n",
            quantize_default_threads());
    for (int i = 0; quant_recipe_names[i]; i++) fprintf(out, "  %-6s %s\n", quant_recipe_names[i], quant_recipe_about[i]);
}

int tool_quantize_main(int argc, char **argv)
{
    const char *in = NULL, *out = NULL, *recipe_arg = NULL, *imatrix_path = NULL, *tokens = NULL, *tokens_file = NULL;
    bool report = false, quiet = false;
    uint32_t n_threads = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--report")) report = true;
        else if (!strcmp(a, "--quiet")) quiet = true;
        else if (v && (!strcmp(a, "-m") || !strcmp(a, "--model"))) in = argv[++i];
        else if (v && (!strcmp(a, "-o") || !strcmp(a, "--out"))) out = argv[++i];
        else if (v && !strcmp(a, "--recipe")) recipe_arg = argv[++i];
        else if (v && !strcmp(a, "--imatrix")) imatrix_path = argv[++i];
        else if (v && !strcmp(a, "--threads")) {
            char *end;
            errno = 0;
            const unsigned long n = strtoul(v, &end, 10);
            if (end == v || *end || errno || n < 1 || n > QUANTIZE_MAX_THREADS || *v == '-') {
                fprintf(stderr, "flashbox quantize: --threads: '%s' is not a count from 1 to %d\n", v, QUANTIZE_MAX_THREADS);
                return 2;
            }
            n_threads = (uint32_t)n;
            i++;
        } else if (v && !strcmp(a, "--tokens")) tokens = argv[++i];
        else if (v && !strcmp(a, "--tokens-file")) tokens_file = argv[++i];
        else {
            fprintf(stderr, "flashbox quantize: unknown or incomplete argument '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!in || !out || !recipe_arg) {
        fprintf(stderr, "flashbox quantize: -m IN.gguf, -o OUT.gguf and --recipe are required\n");
        usage(stderr);
        return 2;
    }
    if (!strcmp(in, out)) {
        fprintf(stderr, "flashbox quantize: the output would replace the input (%s)\n", in);
        return 2;
    }
    char err[512];
    static struct quant_recipe recipe;
    struct quant_imatrix im = { 0 };
    static int32_t ids[4096];
    uint32_t n_ids = 64;
    for (int i = 0; i < 64; i++) ids[i] = (17 * i + 3) % 256;
    if (tokens_file) {
        int32_t *file_ids;
        if (quant_read_ids_file(tokens_file, 64 * 1024, &file_ids, &n_ids, err, sizeof err) == 0 && n_ids > 4096) {
            free(file_ids);
            snprintf(err, sizeof err, "%s: %u ids, at most 4096", tokens_file, n_ids);
            n_ids = 0;
        } else if (n_ids) {
            memcpy(ids, file_ids, n_ids * sizeof *ids);
            free(file_ids);
        }
        if (!n_ids) {
            fprintf(stderr, "flashbox quantize: %s\n", err);
            return 1;
        }
    } else if (tokens) {
        long n = quant_parse_ids(tokens, ids, 4096, err, sizeof err);
        if (n <= 0) {
            fprintf(stderr, "flashbox quantize: %s\n", n ? err : "no tokens given");
            return 1;
        }
        n_ids = (uint32_t)n;
    }
    if (quant_recipe_load(recipe_arg, &recipe, err, sizeof err)) {
        fprintf(stderr, "flashbox quantize: %s\n", err);
        return 1;
    }
    if (imatrix_path && quant_imatrix_load(imatrix_path, &im, err, sizeof err)) {
        fprintf(stderr, "flashbox quantize: %s\n", err);
        return 1;
    }
    struct quantize_opts o = { .in = in, .out = out, .recipe = &recipe, .imatrix = imatrix_path ? &im : NULL,
                               .log = quiet ? NULL : stderr, .n_threads = n_threads };
    struct quantize_stats st;
    int rc = quantize_model(&o, &st, err, sizeof err);
    quant_imatrix_free(&im);
    if (rc) {
        fprintf(stderr, "flashbox quantize: %s (nothing written)\n", err);
        return 1;
    }
    printf("quantized %s -> %s (recipe %s): %u of %u tensors rewritten (%u fell back, %u with the imatrix), "
           "%.1f -> %.1f MB in %.2f s on %u threads (quantizing %.1f M elements in %.2f s: %.1f M elements/s; "
           "copying the other tensors %.2f s)\n",
           in, out, recipe.name, st.n_changed, st.n_tensors, st.n_fallback, st.n_imatrix, (double)st.bytes_in / 1e6,
           (double)st.bytes_out / 1e6, st.seconds, st.n_threads, (double)st.elems_quantized / 1e6, st.quant_seconds,
           st.quant_seconds > 0 ? (double)st.elems_quantized / st.quant_seconds / 1e6 : 0.0, st.copy_seconds);
    if (!report) return 0;
    struct quantize_report rep;
    if (quantize_report_run(in, out, ids, (uint32_t)n_ids, &rep, err, sizeof err)) {
        fprintf(stderr, "flashbox quantize: report: %s\n", err);
        return 1;
    }
    printf("report: %u positions: KL mean %.6f max %.6f nats, top-1 agreement %u/%u (%.1f%%)\n", rep.n_positions,
           rep.all.kl_mean, rep.all.kl_max, rep.all.top1_same, rep.n_positions, 100.0 * rep.all.top1_same / rep.n_positions);
    for (uint32_t k = 0; k < rep.n_types; k++) {
        const struct quantize_report_type *t = &rep.per_type[k];
        printf("report: only the %u %s tensors: KL mean %.6f max %.6f nats, top-1 agreement %u/%u (%.1f%%)\n", t->n_tensors,
               gguf_type_name(t->type), t->kl.kl_mean, t->kl.kl_max, t->kl.top1_same, rep.n_positions,
               100.0 * t->kl.top1_same / rep.n_positions);
    }
    return 0;
}
