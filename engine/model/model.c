/* deepseek4 hyper-parameters and tensor binding. See model.h. */
#include "engine/model/model.h"
#include "common/errmsg.h"
#include "engine/model/quant.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KEY(suffix) "deepseek4." suffix

static int get_u32(const struct gguf_file *f, const char *key, uint32_t *out, char *err, size_t len)
{
    return gguf_get_u32(f, key, out, err, len);
}

static int get_u32_or(const struct gguf_file *f, const char *key, uint32_t dflt, uint32_t *out, char *err, size_t len)
{
    if (!gguf_find_kv(f, key)) {
        *out = dflt;
        return 0;
    }
    return gguf_get_u32(f, key, out, err, len);
}

static int get_f32_or(const struct gguf_file *f, const char *key, float dflt, float *out, char *err, size_t len)
{
    if (!gguf_find_kv(f, key)) {
        *out = dflt;
        return 0;
    }
    return gguf_get_f32(f, key, out, err, len);
}

/* Reads a per-layer numeric array with at least n entries. */
static int get_layer_arr(const struct gguf_file *f, const char *key, uint32_t n, bool is_float,
                         uint32_t *u_out, float *f_out, char *err, size_t len)
{
    const struct gguf_kv *kv = gguf_find_kv(f, key);
    if (!kv) return errf(err, len, "%s: missing", key);
    if (kv->type != GGUF_VAL_ARRAY || kv->arr_strs)
        return errf(err, len, "%s: expected a numeric array", key);
    if (kv->arr_count < n)
        return errf(err, len, "%s: %" PRIu64 " entries, expected at least %u (one per block)", key, kv->arr_count, n);
    for (uint32_t i = 0; i < n; i++) {
        if (is_float) {
            double v;
            if (gguf_arr_get_f64(kv, i, &v)) return errf(err, len, "%s[%u]: not a number", key, i);
            f_out[i] = (float)v;
        } else {
            int64_t v;
            if (gguf_arr_get_i64(kv, i, &v) || v < 0 || v > UINT32_MAX)
                return errf(err, len, "%s[%u]: expected a non-negative integer", key, i);
            u_out[i] = (uint32_t)v;
        }
    }
    return 0;
}

int model_read_hparams(const struct gguf_file *f, struct model_hparams *hp, char *err, size_t len)
{
    memset(hp, 0, sizeof *hp);
    char arch[64];
    if (gguf_get_str(f, "general.architecture", arch, sizeof arch, err, len)) return -1;
    if (strcmp(arch, "deepseek4") != 0)
        return errf(err, len, "general.architecture: \"%s\", expected \"deepseek4\"", arch);
    if (gguf_find_kv(f, "general.name")) {
        if (gguf_get_str(f, "general.name", hp->name, sizeof hp->name, err, len)) return -1;
    } else {
        snprintf(hp->name, sizeof hp->name, "deepseek4");
    }
    uint32_t block_count, head_count_kv, key_length, value_length, gating;
    if (get_u32(f, KEY("block_count"), &block_count, err, len) ||
        get_u32_or(f, KEY("nextn_predict_layers"), 0, &hp->n_nextn, err, len) ||
        get_u32(f, KEY("embedding_length"), &hp->n_embd, err, len) ||
        get_u32(f, KEY("context_length"), &hp->n_ctx_train, err, len) ||
        get_u32(f, KEY("attention.head_count"), &hp->n_head, err, len) ||
        get_u32_or(f, KEY("attention.head_count_kv"), 1, &head_count_kv, err, len) ||
        get_u32(f, KEY("attention.key_length"), &key_length, err, len) ||
        get_u32_or(f, KEY("attention.value_length"), key_length, &value_length, err, len) ||
        get_u32(f, KEY("rope.dimension_count"), &hp->rope_dim, err, len) ||
        get_u32(f, KEY("attention.q_lora_rank"), &hp->q_rank, err, len) ||
        get_u32(f, KEY("attention.output_group_count"), &hp->o_groups, err, len) ||
        get_u32(f, KEY("attention.output_lora_rank"), &hp->o_rank, err, len) ||
        get_u32(f, KEY("attention.sliding_window"), &hp->window, err, len) ||
        get_u32(f, KEY("attention.indexer.head_count"), &hp->ix_head, err, len) ||
        get_u32(f, KEY("attention.indexer.key_length"), &hp->ix_dim, err, len) ||
        get_u32(f, KEY("attention.indexer.top_k"), &hp->ix_topk, err, len) ||
        get_u32(f, KEY("expert_count"), &hp->n_expert, err, len) ||
        get_u32(f, KEY("expert_used_count"), &hp->n_expert_used, err, len) ||
        get_u32_or(f, KEY("expert_shared_count"), 1, &hp->n_expert_shared, err, len) ||
        get_u32(f, KEY("expert_feed_forward_length"), &hp->n_ff_exp, err, len) ||
        get_u32(f, KEY("expert_gating_func"), &gating, err, len) ||
        get_u32_or(f, KEY("hash_layer_count"), 0, &hp->n_hash_layer, err, len) ||
        get_u32(f, KEY("hyper_connection.count"), &hp->n_hc, err, len) ||
        get_u32(f, KEY("hyper_connection.sinkhorn_iterations"), &hp->hc_sinkhorn_iters, err, len) ||
        get_f32_or(f, KEY("hyper_connection.epsilon"), 1e-6f, &hp->hc_eps, err, len) ||
        gguf_get_f32(f, KEY("attention.layer_norm_rms_epsilon"), &hp->rms_eps, err, len) ||
        get_f32_or(f, KEY("rope.freq_base"), 10000.0f, &hp->rope_base, err, len) ||
        gguf_get_f32(f, KEY("attention.compress_rope_freq_base"), &hp->compress_rope_base, err, len) ||
        get_f32_or(f, KEY("rope.scaling.factor"), 1.0f, &hp->yarn_factor, err, len) ||
        get_u32_or(f, KEY("rope.scaling.original_context_length"), hp->n_ctx_train, &hp->yarn_orig_ctx, err, len) ||
        get_f32_or(f, KEY("rope.scaling.yarn_beta_fast"), 32.0f, &hp->yarn_beta_fast, err, len) ||
        get_f32_or(f, KEY("rope.scaling.yarn_beta_slow"), 1.0f, &hp->yarn_beta_slow, err, len) ||
        get_f32_or(f, KEY("expert_weights_scale"), 1.0f, &hp->expert_weights_scale, err, len))
        return -1;
    hp->expert_weights_norm = true;
    if (gguf_find_kv(f, KEY("expert_weights_norm")) &&
        gguf_get_bool(f, KEY("expert_weights_norm"), &hp->expert_weights_norm, err, len))
        return -1;

    if (hp->n_nextn >= block_count)
        return errf(err, len, KEY("nextn_predict_layers") ": %u, expected fewer than block_count %u", hp->n_nextn, block_count);
    hp->n_layer = block_count - hp->n_nextn;
    if (hp->n_layer < 1 || block_count > MODEL_MAX_LAYERS)
        return errf(err, len, KEY("block_count") ": %u, expected 1..%d", block_count, MODEL_MAX_LAYERS);
    if (get_layer_arr(f, KEY("attention.compress_ratios"), hp->n_layer, false, hp->ratio, NULL, err, len) ||
        get_layer_arr(f, KEY("swiglu_clamp_exp"), hp->n_layer, true, NULL, hp->swiglu_clamp_exp, err, len))
        return -1;
    if (gguf_find_kv(f, KEY("swiglu_clamp_shexp"))) {
        if (get_layer_arr(f, KEY("swiglu_clamp_shexp"), hp->n_layer, true, NULL, hp->swiglu_clamp_shexp, err, len))
            return -1;
    } else {
        /* llama.cpp's fallback and the current official code: clamp the shared expert like
         * the routed ones. */
        memcpy(hp->swiglu_clamp_shexp, hp->swiglu_clamp_exp, sizeof hp->swiglu_clamp_exp);
    }
    const struct gguf_kv *toks = gguf_find_kv(f, "tokenizer.ggml.tokens");
    if (gguf_find_kv(f, KEY("vocab_size"))) {
        if (get_u32(f, KEY("vocab_size"), &hp->n_vocab, err, len)) return -1;
    } else if (toks) {
        hp->n_vocab = (uint32_t)toks->arr_count;
    }
    if (get_u32_or(f, "tokenizer.ggml.bos_token_id", 0, &hp->bos, err, len) ||
        get_u32_or(f, "tokenizer.ggml.eos_token_id", 1, &hp->eos, err, len))
        return -1;

    /* Validation: what the forward pass relies on. */
    if (head_count_kv != 1) return errf(err, len, KEY("attention.head_count_kv") ": %u, expected 1 (one shared latent KV)", head_count_kv);
    if (value_length != key_length)
        return errf(err, len, KEY("attention.value_length") ": %u, expected key_length %u (K and V are one vector)", value_length, key_length);
    hp->head_dim = key_length;
    if (gating != 4) return errf(err, len, KEY("expert_gating_func") ": %u, expected 4 (sqrt-softplus)", gating);
#define NONZERO(x) if (!(hp->x)) return errf(err, len, "hyper-parameter " #x " is 0")
    NONZERO(n_embd); NONZERO(n_vocab); NONZERO(n_head); NONZERO(head_dim); NONZERO(q_rank);
    NONZERO(o_groups); NONZERO(o_rank); NONZERO(window); NONZERO(n_expert); NONZERO(n_expert_used);
    NONZERO(n_ff_exp); NONZERO(n_hc); NONZERO(n_ctx_train);
#undef NONZERO
    if (hp->rope_dim == 0 || hp->rope_dim % 2 || hp->rope_dim > hp->head_dim)
        return errf(err, len, KEY("rope.dimension_count") ": %u, expected an even number <= head_dim %u", hp->rope_dim, hp->head_dim);
    if (hp->n_head % hp->o_groups)
        return errf(err, len, KEY("attention.output_group_count") ": %u does not divide head_count %u", hp->o_groups, hp->n_head);
    if (hp->n_expert_used > hp->n_expert)
        return errf(err, len, KEY("expert_used_count") ": %u, expected <= expert_count %u", hp->n_expert_used, hp->n_expert);
    if (hp->n_expert_shared != 1)
        return errf(err, len, KEY("expert_shared_count") ": %u, expected 1", hp->n_expert_shared);
    if (hp->n_hash_layer > hp->n_layer)
        return errf(err, len, KEY("hash_layer_count") ": %u, expected <= block_count %u", hp->n_hash_layer, hp->n_layer);
    if (hp->hc_sinkhorn_iters < 1 || hp->hc_sinkhorn_iters > 1000)
        return errf(err, len, KEY("hyper_connection.sinkhorn_iterations") ": %u, expected 1..1000", hp->hc_sinkhorn_iters);
    if (hp->n_hc > 64) return errf(err, len, KEY("hyper_connection.count") ": %u, expected 1..64", hp->n_hc);
    if (hp->n_expert_used > 64) return errf(err, len, KEY("expert_used_count") ": %u, expected <= 64", hp->n_expert_used);
    if (!(hp->rms_eps > 0) || !(hp->hc_eps > 0) || !(hp->rope_base > 1) || !(hp->compress_rope_base > 1) || !(hp->yarn_factor >= 1))
        return errf(err, len, "epsilon, rope base or YaRN factor out of range");
    bool any_csa = false;
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        uint32_t r = hp->ratio[il];
        if (r != 0 && r != 4 && r != 128)
            return errf(err, len, KEY("attention.compress_ratios") "[%u]: %u, expected 0, 4 or 128", il, r);
        if (r == 4) any_csa = true;
    }
    if (any_csa && (hp->ix_head == 0 || hp->ix_dim == 0 || hp->ix_topk == 0 || hp->ix_dim < hp->rope_dim))
        return errf(err, len, "indexer: head_count %u, key_length %u, top_k %u; expected non-zero and key_length >= rope dims %u",
                    hp->ix_head, hp->ix_dim, hp->ix_topk, hp->rope_dim);
    return 0;
}

/* ---- binding ---- */

struct binder {
    struct gguf_file *f;           /* F16/BF16 vectors are widened in place (bind_widen) */
    char *err;
    size_t len;
};

enum { TYPES_FLOAT = 1, TYPES_MATRIX = 2, TYPES_EXPERT = 4, TYPES_I32 = 8 };

/* ggml's K-quants and i-quants: what community low-bit files store their matrices in. */
static bool type_is_k_or_i_quant(enum gguf_type t)
{
    switch (t) {
    case GGUF_TYPE_Q2_K: case GGUF_TYPE_Q3_K: case GGUF_TYPE_Q4_K: case GGUF_TYPE_Q5_K: case GGUF_TYPE_Q6_K:
    case GGUF_TYPE_IQ2_XXS: case GGUF_TYPE_IQ2_XS: case GGUF_TYPE_IQ2_S: case GGUF_TYPE_IQ3_XXS:
    case GGUF_TYPE_IQ1_S: case GGUF_TYPE_IQ1_M: case GGUF_TYPE_IQ4_NL: case GGUF_TYPE_IQ4_XS:
        return true;
    default:
        return false;
    }
}

static bool type_allowed(enum gguf_type t, int allowed)
{
    if (allowed & TYPES_FLOAT) return t == GGUF_TYPE_F32 || t == GGUF_TYPE_F16 || t == GGUF_TYPE_BF16;
    if (allowed & TYPES_I32) return t == GGUF_TYPE_I32;
    if (allowed & TYPES_MATRIX)
        return t == GGUF_TYPE_F32 || t == GGUF_TYPE_F16 || t == GGUF_TYPE_BF16 || t == GGUF_TYPE_Q8_0 ||
               type_is_k_or_i_quant(t) || (t == GGUF_TYPE_MXFP4 && (allowed & TYPES_EXPERT));
    return false;
}

/* The vectors and small matrices the kernels read as F32 (norms, sinks, biases, the
 * hyper-connection weights, the compressors' position biases) may be stored as F16 or
 * BF16: the files published for ds4 store hc_*_fn and *_compressor_ape as F16. They are
 * widened once here, exactly (every F16 and BF16 value is an F32), into a copy the file's
 * entry then owns and points at, so both backends, the plan and the uploads see an F32
 * tensor and no token pays for the conversion. */
static int bind_widen(struct binder *b, tensor_ref *out, const char *name)
{
    struct gguf_tensor *t = &b->f->tensors[*out - b->f->tensors];
    uint64_t nbytes;
    if (gguf_type_nbytes(GGUF_TYPE_F32, t->n_elements, &nbytes) || nbytes > SIZE_MAX)
        return errf(b->err, b->len, "%s: %" PRIu64 " elements are too many to widen to F32", name, t->n_elements);
    float *wide = malloc(nbytes ? (size_t)nbytes : 1);
    if (!wide) return errf(b->err, b->len, "%s: out of memory widening %s to F32", name, gguf_type_name(t->type));
    if (dequant_row(t->type, t->data, wide, t->n_elements)) {
        free(wide);
        return errf(b->err, b->len, "%s: cannot widen %s to F32", name, gguf_type_name(t->type));
    }
    t->owned = wide;
    t->data = wide;
    t->type = GGUF_TYPE_F32;
    t->nbytes = nbytes;
    return 0;
}

/* Binds name (printf-style with the layer index) with the expected shape. n_dims counts
 * the listed dims; trailing dims must be 1. Optional tensors that are absent bind NULL. */
static int bind(struct binder *b, tensor_ref *out, bool required, int allowed, uint32_t n_dims,
                uint64_t ne0, uint64_t ne1, uint64_t ne2, const char *fmt, int il)
{
    char name[128];
    snprintf(name, sizeof name, fmt, il);
    const struct gguf_tensor *t = gguf_find_tensor(b->f, name);
    *out = t;
    if (!t) return required ? errf(b->err, b->len, "%s: missing", name) : 0;
    uint64_t want[GGUF_MAX_DIMS] = { ne0, n_dims > 1 ? ne1 : 1, n_dims > 2 ? ne2 : 1, 1 };
    if (memcmp(want, t->ne, sizeof want) != 0) {
        char got[96], exp[96];
        snprintf(got, sizeof got, "[%" PRIu64 ", %" PRIu64 ", %" PRIu64 "]", t->ne[0], t->ne[1], t->ne[2]);
        snprintf(exp, sizeof exp, "[%" PRIu64 ", %" PRIu64 ", %" PRIu64 "]", want[0], want[1], want[2]);
        return errf(b->err, b->len, "%s: shape %s, expected %s", name, got, exp);
    }
    if (!type_allowed(t->type, allowed))
        return errf(b->err, b->len, "%s: type %s is not allowed here%s", name, gguf_type_name(t->type),
                    (allowed & TYPES_FLOAT) ? " (expected F32, F16 or BF16)" : "");
    if ((allowed & TYPES_FLOAT) && t->type != GGUF_TYPE_F32) return bind_widen(b, out, name);
    return 0;
}

#define F32V(field, n, name) bind(&b, &field, true, TYPES_FLOAT, 1, n, 1, 1, name, il)
#define MAT(field, in, out, name) bind(&b, &field, true, TYPES_MATRIX, 2, in, out, 1, name, il)

static int bind_layer(struct binder bb, const struct model_hparams *hp, uint32_t il, struct layer_weights *w)
{
    struct binder b = bb;
    const uint64_t d = hp->n_embd, hd = hp->head_dim, mix = (2ull + hp->n_hc) * hp->n_hc;
    const uint32_t r = hp->ratio[il];
    int rc = 0;
    rc = rc ? rc : F32V(w->attn_norm, d, "blk.%d.attn_norm.weight");
    rc = rc ? rc : F32V(w->attn_sinks, hp->n_head, "blk.%d.attn_sinks.weight");
    rc = rc ? rc : MAT(w->attn_q_a, d, hp->q_rank, "blk.%d.attn_q_a.weight");
    rc = rc ? rc : F32V(w->attn_q_a_norm, hp->q_rank, "blk.%d.attn_q_a_norm.weight");
    rc = rc ? rc : MAT(w->attn_q_b, hp->q_rank, (uint64_t)hp->n_head * hd, "blk.%d.attn_q_b.weight");
    rc = rc ? rc : MAT(w->attn_kv, d, hd, "blk.%d.attn_kv.weight");
    rc = rc ? rc : F32V(w->attn_kv_a_norm, hd, "blk.%d.attn_kv_a_norm.weight");
    rc = rc ? rc : MAT(w->attn_output_a, (uint64_t)hp->n_head * hd / hp->o_groups, (uint64_t)hp->o_groups * hp->o_rank,
                       "blk.%d.attn_output_a.weight");
    rc = rc ? rc : MAT(w->attn_output_b, (uint64_t)hp->o_groups * hp->o_rank, d, "blk.%d.attn_output_b.weight");
    rc = rc ? rc : bind(&b, &w->hc_attn_fn, true, TYPES_FLOAT, 2, hp->n_hc * d, mix, 1, "blk.%d.hc_attn_fn.weight", il);
    rc = rc ? rc : F32V(w->hc_attn_base, mix, "blk.%d.hc_attn_base.weight");
    rc = rc ? rc : F32V(w->hc_attn_scale, 3, "blk.%d.hc_attn_scale.weight");
    rc = rc ? rc : bind(&b, &w->hc_ffn_fn, true, TYPES_FLOAT, 2, hp->n_hc * d, mix, 1, "blk.%d.hc_ffn_fn.weight", il);
    rc = rc ? rc : F32V(w->hc_ffn_base, mix, "blk.%d.hc_ffn_base.weight");
    rc = rc ? rc : F32V(w->hc_ffn_scale, 3, "blk.%d.hc_ffn_scale.weight");
    if (r) {
        uint64_t coff = r == 4 ? 2 : 1;
        rc = rc ? rc : MAT(w->comp_kv, d, coff * hd, "blk.%d.attn_compressor_kv.weight");
        rc = rc ? rc : MAT(w->comp_gate, d, coff * hd, "blk.%d.attn_compressor_gate.weight");
        rc = rc ? rc : bind(&b, &w->comp_ape, true, TYPES_FLOAT, 2, coff * hd, r, 1, "blk.%d.attn_compressor_ape.weight", il);
        rc = rc ? rc : F32V(w->comp_norm, hd, "blk.%d.attn_compressor_norm.weight");
    }
    if (r == 4) {
        const uint64_t id = hp->ix_dim;
        rc = rc ? rc : MAT(w->ix_q_b, hp->q_rank, (uint64_t)hp->ix_head * id, "blk.%d.indexer.attn_q_b.weight");
        rc = rc ? rc : MAT(w->ix_proj, d, hp->ix_head, "blk.%d.indexer.proj.weight");
        rc = rc ? rc : MAT(w->ix_comp_kv, d, 2 * id, "blk.%d.indexer_compressor_kv.weight");
        rc = rc ? rc : MAT(w->ix_comp_gate, d, 2 * id, "blk.%d.indexer_compressor_gate.weight");
        rc = rc ? rc : bind(&b, &w->ix_comp_ape, true, TYPES_FLOAT, 2, 2 * id, 4, 1, "blk.%d.indexer_compressor_ape.weight", il);
        rc = rc ? rc : F32V(w->ix_comp_norm, id, "blk.%d.indexer_compressor_norm.weight");
    }
    const uint64_t E = hp->n_expert, F = hp->n_ff_exp;
    rc = rc ? rc : F32V(w->ffn_norm, d, "blk.%d.ffn_norm.weight");
    rc = rc ? rc : MAT(w->ffn_gate_inp, d, E, "blk.%d.ffn_gate_inp.weight");
    if (il < hp->n_hash_layer)
        rc = rc ? rc : bind(&b, &w->tid2eid, true, TYPES_I32, 2, hp->n_expert_used, hp->n_vocab, 1, "blk.%d.ffn_gate_tid2eid.weight", il);
    else
        rc = rc ? rc : F32V(w->exp_probs_b, E, "blk.%d.exp_probs_b.bias");
    rc = rc ? rc : bind(&b, &w->ffn_gate_exps, true, TYPES_MATRIX | TYPES_EXPERT, 3, d, F, E, "blk.%d.ffn_gate_exps.weight", il);
    rc = rc ? rc : bind(&b, &w->ffn_up_exps, true, TYPES_MATRIX | TYPES_EXPERT, 3, d, F, E, "blk.%d.ffn_up_exps.weight", il);
    rc = rc ? rc : bind(&b, &w->ffn_down_exps, true, TYPES_MATRIX | TYPES_EXPERT, 3, F, d, E, "blk.%d.ffn_down_exps.weight", il);
    rc = rc ? rc : MAT(w->ffn_gate_shexp, d, F, "blk.%d.ffn_gate_shexp.weight");
    rc = rc ? rc : MAT(w->ffn_up_shexp, d, F, "blk.%d.ffn_up_shexp.weight");
    rc = rc ? rc : MAT(w->ffn_down_shexp, F, d, "blk.%d.ffn_down_shexp.weight");
    if (rc) return rc;
    /* tid2eid entries index the experts: check them once here, not on every token. */
    if (w->tid2eid) {
        const uint8_t *p = w->tid2eid->data;
        for (uint64_t i = 0; i < w->tid2eid->n_elements; i++) {
            int32_t e;
            memcpy(&e, p + 4 * i, 4);
            if (e < 0 || (uint32_t)e >= hp->n_expert)
                return errf(b.err, b.len, "blk.%u.ffn_gate_tid2eid.weight: entry %" PRIu64 " is expert %d, expected 0..%u",
                            il, i, e, hp->n_expert - 1);
        }
    }
    return 0;
}

int model_bind(struct model **out, struct gguf_file *f, char *err, size_t len)
{
    *out = NULL;
    struct model *m = calloc(1, sizeof *m);
    if (!m) return errf(err, len, "out of memory");
    if (model_read_hparams(f, &m->hp, err, len)) goto fail;
    const struct model_hparams *hp = &m->hp;
    m->layers = calloc(hp->n_layer, sizeof *m->layers);
    if (!m->layers) {
        errf(err, len, "out of memory");
        goto fail;
    }
    struct binder b = { f, err, len };
    const uint64_t d = hp->n_embd;
    int il = 0;
    if (MAT(m->token_embd, d, hp->n_vocab, "token_embd.weight") ||
        F32V(m->output_norm, d, "output_norm.weight") ||
        MAT(m->output, d, hp->n_vocab, "output.weight") ||
        bind(&b, &m->output_hc_fn, true, TYPES_FLOAT, 2, hp->n_hc * d, hp->n_hc, 1, "output_hc_fn.weight", il) ||
        F32V(m->output_hc_base, hp->n_hc, "output_hc_base.weight") ||
        F32V(m->output_hc_scale, 1, "output_hc_scale.weight"))
        goto fail;
    for (uint32_t l = 0; l < hp->n_layer; l++)
        if (bind_layer(b, hp, l, &m->layers[l])) goto fail;
    m->file = f;
    *out = m;
    return 0;
fail:
    free(m->layers);
    free(m);
    return -1;
}

int model_open(struct model **out, const char *path, char *err, size_t len)
{
    struct gguf_file *f;
    if (gguf_open(&f, path, err, len)) return -1;
    if (model_bind(out, f, err, len)) {
        gguf_close(f);
        return errf_prefix(err, len, "%s", path);
    }
    return 0;
}

void model_close(struct model *m)
{
    if (!m) return;
    gguf_close(m->file);
    free(m->layers);
    free(m);
}

uint64_t model_expert_bytes(const struct model *m, uint32_t il)
{
    const struct layer_weights *w = &m->layers[il];
    uint64_t E = m->hp.n_expert;
    return (w->ffn_gate_exps->nbytes + w->ffn_up_exps->nbytes + w->ffn_down_exps->nbytes) / E;
}
