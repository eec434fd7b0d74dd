/* `flashbox quantize`: rewrites a model's matrices into smaller ggml types by a recipe
 * (named, or a pattern file of `glob=type` lines), optionally weighted by an importance
 * matrix (llama.cpp's imatrix, GGUF or legacy .dat), in bounded memory (a chunk of rows at a time, on several threads),
 * writing the result atomically; and the report that compares the logits of the result with
 * the source's (KL divergence, top-1 agreement). */
#ifndef FLASHBOX_TOOLS_QUANTIZE_H
#define FLASHBOX_TOOLS_QUANTIZE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "engine/model/gguf.h"

#define QUANT_MAX_RULES 64

struct quant_rule {
    char pattern[128];      /* shell glob over the tensor name without ".weight" ('*' spans dots) */
    enum gguf_type type;
    uint32_t line;          /* in the pattern file; 0 for named recipes */
};

struct quant_recipe {
    char name[64];
    uint32_t n_rules;
    struct quant_rule rules[QUANT_MAX_RULES]; /* the first that matches a tensor wins */
};

/* The built-in recipes, NULL-terminated: names and one-line descriptions. */
extern const char *const quant_recipe_names[];
extern const char *const quant_recipe_about[];

/* A named recipe, or else the pattern file at name_or_path. */
int quant_recipe_load(const char *name_or_path, struct quant_recipe *r, char *err, size_t err_len);
/* Pattern text: one `glob=type` per line, '#' comments, blank lines; types by ggml's names
 * (q2_k, iq4_xs, q8_0, f16, ...). Errors name the line. */
int quant_recipe_parse(const char *text, size_t len, struct quant_recipe *r, char *err, size_t err_len);
/* The rule for a tensor name, or NULL. */
const struct quant_rule *quant_recipe_match(const struct quant_recipe *r, const char *tensor_name);

struct quant_imatrix_entry {
    char *name;         /* tensor name as ggml names it ("blk.0.ffn_down_exps.weight") */
    uint64_t n_val;     /* ne[0] of the tensor, times its experts for 3-D ones */
    float *val;         /* mean squared activation per input column */
};

struct quant_imatrix {
    uint32_t n;
    struct quant_imatrix_entry *e;
};

/* Parses an importance matrix from memory: llama.cpp's GGUF imatrix (`NAME.in_sum2` and
 * `NAME.counts` tensors) or its legacy binary format. Every count and length is checked. */
int quant_imatrix_parse(const void *buf, size_t len, struct quant_imatrix *m, char *err, size_t err_len);
int quant_imatrix_load(const char *path, struct quant_imatrix *m, char *err, size_t err_len);
void quant_imatrix_free(struct quant_imatrix *m);
const struct quant_imatrix_entry *quant_imatrix_find(const struct quant_imatrix *m, const char *tensor_name);

struct quantize_opts {
    const char *in, *out;
    const struct quant_recipe *recipe;
    const struct quant_imatrix *imatrix;    /* NULL: none */
    FILE *log;                              /* progress and per-tensor lines; NULL: quiet */
    uint32_t n_threads;                     /* threads that quantize rows; 0: the online CPUs (the bytes do not depend on it) */
    uint64_t chunk_elems;                   /* elements quantized per chunk; 0: about 4 M (the bytes do not depend on it) */
};

struct quantize_stats {
    uint32_t n_tensors, n_changed, n_fallback, n_imatrix, n_threads;
    uint64_t bytes_in, bytes_out, elems_quantized;   /* elems_quantized: of the n_changed tensors */
    double seconds;                                  /* the whole run: open, plan, rewrite, finish */
    double quant_seconds;                            /* rewriting the n_changed tensors (read, quantize, write) */
    double copy_seconds;                             /* streaming the tensors kept as they are */
};

#define QUANTIZE_MAX_THREADS 256

/* The online CPUs, at least 1 and at most QUANTIZE_MAX_THREADS. */
uint32_t quantize_default_threads(void);

int quantize_model(const struct quantize_opts *o, struct quantize_stats *st, char *err, size_t err_len);

#define QUANTIZE_REPORT_MAX_TYPES 16

/* How far a model's logits are from the source's over the report's tokens. */
struct quantize_kl {
    double kl_mean, kl_max;     /* KL(source || model) per position, nats */
    uint32_t top1_same;         /* positions whose argmax agrees */
};

struct quantize_report {
    uint32_t n_positions;
    struct quantize_kl all;     /* the quantized file */
    /* per type the quantized file writes (where the source had another): a model that takes
     * only that type's tensors from the quantized file and every other from the source */
    uint32_t n_types;
    struct quantize_report_type {
        enum gguf_type type;
        uint32_t n_tensors;
        struct quantize_kl kl;
    } per_type[QUANTIZE_REPORT_MAX_TYPES];
};

/* Runs the source, the quantized file and, when it writes more than one type, one mixed model
 * per type (written next to quantized as QUANTIZED.only-TYPE, removed after) over tokens (one
 * session each, all positions) on the reference backend. */
int quantize_report_run(const char *src, const char *quantized, const int32_t *tokens, uint32_t n_tokens,
                        struct quantize_report *rep, char *err, size_t err_len);

/* Reads a file a user named (through safe_open: a FIFO or a device is refused at once) of at
 * most max bytes into *buf (malloc'd, NUL-terminated; the caller frees it). */
int quant_read_file(const char *path, size_t max, uint8_t **buf, size_t *len, char *err, size_t err_len);

/* Token ids separated by commas or white space (`--tokens`, token files): up to cap of them
 * into ids; returns the count, or -1 with a message quoting the bad text. */
long quant_parse_ids(const char *s, int32_t *ids, long cap, char *err, size_t err_len);
/* A token file of such ids, at most max_bytes: *ids malloc'd (the caller frees it), *n > 0;
 * a NUL byte, a bad id or no id at all is an error naming the file. */
int quant_read_ids_file(const char *path, size_t max_bytes, int32_t **ids, uint32_t *n, char *err, size_t err_len);

/* `flashbox quantize ARGS` (tools/quantize_cli.c); argv[0] is the command name. */
int tool_quantize_main(int argc, char **argv);

#endif
