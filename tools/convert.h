/* `flashbox convert`: the official DeepSeek-V4 safetensors checkpoint (FP8 + FP4 shards,
 * config.json, tokenizer.json) to a deepseek4 GGUF that flashbox and llama.cpp load.
 * The conversion streams tensor by tensor, checks the result with model_open before it
 * commits, and never leaves a partial file under the output name. */
#ifndef FLASHBOX_TOOLS_CONVERT_H
#define FLASHBOX_TOOLS_CONVERT_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum convert_dense {
    CONVERT_DENSE_Q8_0, /* FP8 weights dequantized and requantized to Q8_0 (default) */
    CONVERT_DENSE_BF16, /* exact for FP8 weights */
    CONVERT_DENSE_F16,  /* exact while values stay in F16 range (checked) */
};

/* This tree's release, recorded as the writer of what convert and bundle create produce. */
#define FLASHBOX_VERSION "0.20.0"
/* GGUF metadata key of the conversion's provenance (JSON text, tools/convert_provenance.c). */
#define CONVERT_PROVENANCE_KEY "flashbox.provenance"

struct convert_opts {
    const char *hf_dir;        /* config.json, model.safetensors.index.json, shards */
    const char *out_path;      /* the GGUF to write */
    const char *tokenizer_dir; /* tokenizer.json; NULL: hf_dir */
    enum convert_dense dense;
    bool no_mtp;               /* drop the mtp.* tensors instead of writing the nextn block */
    bool quiet;                /* no progress lines */
    /* When set and it becomes non-zero (a signal handler's flag), the conversion stops at
     * the next chunk and removes its temporary file. */
    volatile sig_atomic_t *cancel;
};

struct convert_stats {
    uint64_t n_tensors;      /* GGUF tensors written */
    uint64_t bytes_read;     /* checkpoint bytes */
    uint64_t bytes_written;  /* GGUF file size */
    double seconds;
};

int convert_run(const struct convert_opts *o, struct convert_stats *stats, char *err, size_t err_len);
int tool_convert_main(int argc, char **argv);

#endif
