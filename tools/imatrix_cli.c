/* `flashbox imatrix`: the command line over tools/imatrix.c (entry point listed in
 * firmware/commands.h, like the other tools' mains). */
#include "tools/imatrix.h"
#include "tools/quantize.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *out)
{
    fprintf(out,
            "usage: flashbox imatrix -m MODEL.gguf --tokens FILE -o OUT.imatrix [--ctx N] [--chunks N] [--quiet]\n"
            "  runs MODEL on the reference backend over the token ids of FILE (separated by commas, spaces\n"
            "  or newlines) and writes, for every matrix it multiplies (the routed experts per expert), the\n"
            "  mean squared input per input column: an importance matrix in llama.cpp's legacy format, for\n"
            "  `flashbox quantize --imatrix OUT.imatrix` (or llama.cpp's quantize)\n"
            "  --ctx N     tokens per chunk, each from a fresh context (default 512)\n"
            "  --chunks N  stop after N chunks (default: every token of FILE)\n"
            "  --quiet     no progress on stderr\n");
}

static int count_arg(const char *flag, const char *v, uint32_t *out)
{
    char *end;
    errno = 0;
    const unsigned long n = strtoul(v, &end, 10);
    if (end == v || *end || errno || n < 1 || n > 1u << 20 || *v == '-') {
        fprintf(stderr, "flashbox imatrix: %s: '%s' is not a count from 1 to %u\n", flag, v, 1u << 20);
        return -1;
    }
    *out = (uint32_t)n;
    return 0;
}

int tool_imatrix_main(int argc, char **argv)
{
    const char *model = NULL, *out = NULL, *tokens_file = NULL;
    uint32_t n_ctx = 0, max_chunks = 0;
    bool quiet = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--quiet")) quiet = true;
        else if (v && (!strcmp(a, "-m") || !strcmp(a, "--model"))) model = argv[++i];
        else if (v && (!strcmp(a, "-o") || !strcmp(a, "--out"))) out = argv[++i];
        else if (v && (!strcmp(a, "--tokens") || !strcmp(a, "--tokens-file"))) tokens_file = argv[++i];
        else if (v && !strcmp(a, "--ctx")) {
            if (count_arg(a, argv[++i], &n_ctx)) return 2;
        } else if (v && !strcmp(a, "--chunks")) {
            if (count_arg(a, argv[++i], &max_chunks)) return 2;
        } else {
            fprintf(stderr, "flashbox imatrix: unknown or incomplete argument '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!model || !out || !tokens_file) {
        fprintf(stderr, "flashbox imatrix: -m MODEL.gguf, --tokens FILE and -o OUT.imatrix are required\n");
        usage(stderr);
        return 2;
    }
    char err[512];
    int32_t *ids;
    uint32_t n_ids;
    if (quant_read_ids_file(tokens_file, (size_t)256 << 20, &ids, &n_ids, err, sizeof err)) {
        fprintf(stderr, "flashbox imatrix: %s\n", err);
        return 1;
    }
    struct imatrix_opts o = { .model = model, .out = out, .tokens = ids, .n_tokens = n_ids, .n_ctx = n_ctx,
                              .max_chunks = max_chunks, .dataset = tokens_file, .log = quiet ? NULL : stderr };
    struct imatrix_stats st;
    int rc = imatrix_compute(&o, &st, err, sizeof err);
    free(ids);
    if (rc) {
        fprintf(stderr, "flashbox imatrix: %s (nothing written)\n", err);
        return 1;
    }
    printf("imatrix %s -> %s: %u tokens in %u chunks, %u matrices (%u routed-expert tensors, %u of their experts never "
           "reached: written as ones) in %.1f s\n",
           model, out, st.n_tokens, st.n_chunks, st.n_entries, st.n_expert_entries, st.n_experts_unused, st.seconds);
    return 0;
}
