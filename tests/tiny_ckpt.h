/* A tiny DeepSeek-V4 checkpoint in the official format and naming (spec §2, shape of spec
 * §6.1): config.json, FP8 e4m3 weights with e8m0 128x128 block scales, FP4 experts packed
 * in I8 with e8m0 scales per 32, BF16 norms and compressor weights, F32 hc/ape/sinks/bias,
 * I64 tid2eid, an MTP block, sharded with model.safetensors.index.json, and a small
 * tokenizer.json. Alongside it, an F32 GGUF with llama.cpp names holding exactly the
 * dequantized values: the independent reference a converted file must match.
 *
 * The quantizers here are written from the spec's formulas on their own (value first, then
 * the bit pattern), so they share no code with the converter's decoders. */
#ifndef FLASHBOX_TESTS_TINY_CKPT_H
#define FLASHBOX_TESTS_TINY_CKPT_H

#include <stdint.h>

#define TINY_VOCAB 512
#define TINY_EMBD 128
#define TINY_LAYERS 5
#define TINY_EXPERTS 8

/* What to write: the official layout, a legitimate variant, or a planted fault for the
 * malformed-input tests. */
enum tiny_variant {
    TINY_OFFICIAL,
    TINY_FP8_EXPERTS,         /* routed experts FP8 + 128x128 scales, as in V4-Flash-Base */
    TINY_FAULT_OVERLAP,       /* two tensors' data_offsets share bytes */
    TINY_FAULT_DTYPE,         /* layers.0.attn.attn_sink written as I64 */
    TINY_FAULT_SHAPE,         /* layers.1.attn.q_norm.weight is [100], config says [128] */
    TINY_FAULT_UNKNOWN_NAME,  /* an extra tensor layers.0.attn.bogus.weight */
    TINY_FAULT_TID2EID_RANGE, /* a tid2eid entry names expert 8 of 8 */
};

/* Writes the checkpoint into dir (created) with n_shards shards, and, when ref_gguf is not
 * NULL, the F32 reference GGUF. Returns 0 or -1 (message on stderr). */
int tiny_ckpt_write(const char *dir, const char *ref_gguf, int n_shards, uint64_t seed, enum tiny_variant fault);
/* Same with n_expert routed experts (>= 2): routed experts are ~97% of the real checkpoint,
 * so many of them make a checkpoint of realistic composition for throughput figures. */
int tiny_ckpt_write_experts(const char *dir, const char *ref_gguf, int n_shards, uint64_t seed, enum tiny_variant fault,
                            int n_expert);

#endif
