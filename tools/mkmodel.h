/* The random-weight deepseek4 model generator (test and default models). */
#ifndef FLASHBOX_TOOLS_MKMODEL_H
#define FLASHBOX_TOOLS_MKMODEL_H

#include <stddef.h>
#include <stdint.h>

#include "engine/model/gguf.h"

#define MKMODEL_MAX_LAYERS 128

enum mkmodel_quant {
    MKMODEL_F32,         /* every weight F32 */
    MKMODEL_MIXED,       /* Q8_0 matrices, MXFP4 routed experts, F32 vectors, I32 tid2eid */
    MKMODEL_F32_DEQUANT, /* F32 holding the dequantized values of the mixed file, same seed */
    MKMODEL_META,        /* metadata and tokenizer only, no tensors: a model's shape for `flashbox plan` */
};

struct mkmodel_config {
    uint32_t n_embd, n_layer, ratio[MKMODEL_MAX_LAYERS];
    uint32_t n_head, head_dim, rope_dim, q_rank, o_groups, o_rank, window;
    uint32_t ix_head, ix_dim, ix_topk;
    uint32_t n_expert, n_expert_used, n_ff_exp, n_vocab, n_hash_layer, n_ctx;
    uint64_t seed;
    enum mkmodel_quant quant;
    /* routed experts' type in mixed / f32-dequant files: MXFP4 (quantized from the F32
     * values) or one of ggml's K-quants / i-quants (random valid blocks with the F32 values'
     * spread per expert, see mkmodel.c) */
    enum gguf_type expert_type;
    char name[64];
};

/* The spec's tiny configuration (architecture spec §6), seed 42, F32. */
void mkmodel_defaults(struct mkmodel_config *c);
/* Writes the model atomically to path (path.tmp then rename). */
int mkmodel_write(const struct mkmodel_config *c, const char *path, char *err, size_t err_len);

#endif
