/* The deepseek4 model: hyper-parameters read and validated from GGUF metadata (the keys
 * llama.cpp uses, spec §5.1), and every tensor bound by its llama.cpp name, shape and
 * allowed types into plain structs. Nothing is hard-wired to Flash's sizes. After
 * model_bind() succeeds, no code looks a tensor up by name again.
 *
 * Shapes below are written GGUF-style, innermost first: [ne0, ne1, ne2]. A 2-D weight
 * [n_in, n_out] holds n_out rows of n_in elements; y = W x means y[o] = sum_i W[o][i] x[i]. */
#ifndef FLASHBOX_ENGINE_MODEL_H
#define FLASHBOX_ENGINE_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "engine/model/gguf.h"

#define MODEL_MAX_LAYERS 256
#define MODEL_NAME_LEN 128

struct model_hparams {
    uint32_t n_embd;            /* d */
    uint32_t n_layer;           /* trunk blocks (block_count minus MTP blocks) */
    uint32_t n_nextn;           /* MTP blocks after the trunk (tensors optional, not run) */
    uint32_t n_vocab;
    uint32_t n_ctx_train;
    uint32_t n_head;
    uint32_t head_dim;          /* key_length == value_length */
    uint32_t rope_dim;          /* rotated dims: the last rope_dim of each head */
    uint32_t q_rank;
    uint32_t o_groups;
    uint32_t o_rank;
    uint32_t window;
    uint32_t ratio[MODEL_MAX_LAYERS]; /* 0 (SWA), 4 (CSA), 128 (HCA) per trunk layer */
    uint32_t ix_head, ix_dim, ix_topk;
    uint32_t n_expert, n_expert_used, n_expert_shared, n_ff_exp;
    uint32_t n_hash_layer;
    uint32_t n_hc;
    uint32_t hc_sinkhorn_iters;
    float hc_eps;
    float rms_eps;
    float rope_base;            /* ratio-0 layers */
    float compress_rope_base;   /* compressed layers (with YaRN) */
    float yarn_factor;
    uint32_t yarn_orig_ctx;
    float yarn_beta_fast, yarn_beta_slow;
    float expert_weights_scale;
    bool expert_weights_norm;
    float swiglu_clamp_exp[MODEL_MAX_LAYERS];
    float swiglu_clamp_shexp[MODEL_MAX_LAYERS];
    uint32_t bos, eos;
    char name[MODEL_NAME_LEN];
};

/* A bound tensor. */
typedef const struct gguf_tensor *tensor_ref;

struct layer_weights {
    tensor_ref attn_norm;        /* [n_embd] F32 */
    tensor_ref attn_sinks;       /* [n_head] F32 */
    tensor_ref attn_q_a;         /* [n_embd, q_rank] */
    tensor_ref attn_q_a_norm;    /* [q_rank] F32 */
    tensor_ref attn_q_b;         /* [q_rank, n_head*head_dim] */
    tensor_ref attn_kv;          /* [n_embd, head_dim] */
    tensor_ref attn_kv_a_norm;   /* [head_dim] F32 */
    tensor_ref attn_output_a;    /* [n_head*head_dim/o_groups, o_groups*o_rank] */
    tensor_ref attn_output_b;    /* [o_groups*o_rank, n_embd] */
    tensor_ref hc_attn_fn;       /* [n_hc*n_embd, (2+n_hc)*n_hc] F32 */
    tensor_ref hc_attn_base;     /* [(2+n_hc)*n_hc] F32 */
    tensor_ref hc_attn_scale;    /* [3] F32 */
    tensor_ref hc_ffn_fn, hc_ffn_base, hc_ffn_scale; /* same shapes */
    /* ratio != 0; coff = 2 for ratio 4, else 1 */
    tensor_ref comp_kv;          /* [n_embd, coff*head_dim] */
    tensor_ref comp_gate;        /* [n_embd, coff*head_dim] */
    tensor_ref comp_ape;         /* [coff*head_dim, ratio] F32 */
    tensor_ref comp_norm;        /* [head_dim] F32 */
    /* ratio == 4 */
    tensor_ref ix_q_b;           /* [q_rank, ix_head*ix_dim] */
    tensor_ref ix_proj;          /* [n_embd, ix_head] */
    tensor_ref ix_comp_kv;       /* [n_embd, 2*ix_dim] */
    tensor_ref ix_comp_gate;     /* [n_embd, 2*ix_dim] */
    tensor_ref ix_comp_ape;      /* [2*ix_dim, 4] F32 */
    tensor_ref ix_comp_norm;     /* [ix_dim] F32 */
    /* MoE */
    tensor_ref ffn_norm;         /* [n_embd] F32 */
    tensor_ref ffn_gate_inp;     /* [n_embd, n_expert] */
    tensor_ref exp_probs_b;      /* [n_expert] F32, learned-router layers only */
    tensor_ref tid2eid;          /* [n_expert_used, n_vocab] I32, hash layers only */
    tensor_ref ffn_gate_exps;    /* [n_embd, n_ff_exp, n_expert] */
    tensor_ref ffn_up_exps;      /* [n_embd, n_ff_exp, n_expert] */
    tensor_ref ffn_down_exps;    /* [n_ff_exp, n_embd, n_expert] */
    tensor_ref ffn_gate_shexp;   /* [n_embd, n_ff_exp] */
    tensor_ref ffn_up_shexp;     /* [n_embd, n_ff_exp] */
    tensor_ref ffn_down_shexp;   /* [n_ff_exp, n_embd] */
};

struct model {
    struct gguf_file *file;      /* owned */
    struct model_hparams hp;
    tensor_ref token_embd;       /* [n_embd, n_vocab] */
    tensor_ref output_norm;      /* [n_embd] F32 */
    tensor_ref output;           /* [n_embd, n_vocab] */
    tensor_ref output_hc_fn;     /* [n_hc*n_embd, n_hc] F32 */
    tensor_ref output_hc_base;   /* [n_hc] F32 */
    tensor_ref output_hc_scale;  /* [1] F32 */
    struct layer_weights *layers; /* [n_layer] */
};

/* Opens path, reads and validates the hyper-parameters and binds every tensor. */
int model_open(struct model **out, const char *path, char *err, size_t err_len);
/* Same on an already parsed file; takes ownership of f on success. */
int model_bind(struct model **out, struct gguf_file *f, char *err, size_t err_len);
void model_close(struct model *m);

/* Reads and validates the hyper-parameters only. */
int model_read_hparams(const struct gguf_file *f, struct model_hparams *hp, char *err, size_t err_len);

/* Weight bytes of one routed expert's three matrices (gate, up, down) in layer il. */
uint64_t model_expert_bytes(const struct model *m, uint32_t il);

#endif
