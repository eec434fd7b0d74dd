/* `flashbox imatrix`: an importance matrix from the model's own activations. The model runs
 * on the reference backend over a token file in chunks; for every matrix product it makes (the
 * routed experts per expert, and every other weight it multiplies) the mean squared input per
 * input column is accumulated, and the result is written in llama.cpp's legacy imatrix format,
 * which `flashbox quantize --imatrix` (tools/quantize.c) and llama.cpp's quantize read. */
#ifndef FLASHBOX_TOOLS_IMATRIX_H
#define FLASHBOX_TOOLS_IMATRIX_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

struct imatrix_opts {
    const char *model, *out;
    const int32_t *tokens;  /* [n_tokens] */
    uint32_t n_tokens;
    uint32_t n_ctx;         /* tokens per chunk (each chunk starts a fresh context); 0: 512 */
    uint32_t max_chunks;    /* 0: every chunk (the last may be shorter) */
    const char *dataset;    /* recorded in the file (llama.cpp: the calibration text's name); NULL: "" */
    FILE *log;              /* progress every few seconds; NULL: quiet */
};

struct imatrix_stats {
    uint32_t n_chunks, n_tokens;    /* run */
    uint32_t n_entries;             /* matrices written */
    uint32_t n_expert_entries;      /* of which routed-expert tensors */
    uint32_t n_experts_unused;      /* (tensor, expert) pairs no token reached: written as ones */
    double seconds;
};

/* Runs and writes o->out (through OUT.tmp, renamed when complete; nothing is left behind on
 * an error). Errors: unreadable model, a token outside the vocabulary (before any work), no
 * routed expert reached. */
int imatrix_compute(const struct imatrix_opts *o, struct imatrix_stats *st, char *err, size_t err_len);

/* `flashbox imatrix ARGS` (tools/imatrix_cli.c); argv[0] is the command name. */
int tool_imatrix_main(int argc, char **argv);

#endif
