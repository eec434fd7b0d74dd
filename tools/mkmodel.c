/* `flashbox mkmodel`: writes a deterministic (seeded) random-weight deepseek4 GGUF with the
 * llama.cpp names, shapes, keys and types, plus a small byte-level BPE tokenizer, so the
 * file is a complete model. Defaults are the spec's tiny configuration (§6); weight scales
 * follow §6.2 so routing, the indexer and both SwiGLU clamps are really exercised.
 * Tensors are generated and streamed one at a time: memory stays bounded by the largest. */
#include "tools/mkmodel.h"
#include "common/errmsg.h"
#include "engine/model/gguf.h"
#include "engine/model/quant.h"
#include "common/rng.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void mkmodel_defaults(struct mkmodel_config *c)
{
    memset(c, 0, sizeof *c);
    c->n_embd = 128;
    c->n_layer = 5;
    const uint32_t ratios[] = { 0, 0, 4, 128, 4 };
    memcpy(c->ratio, ratios, sizeof ratios);
    c->n_head = 2;
    c->head_dim = 128;
    c->rope_dim = 64;
    c->q_rank = 128;
    c->o_groups = 2;
    c->o_rank = 128;
    c->window = 16;
    c->ix_head = 8;
    c->ix_dim = 128;
    c->ix_topk = 4;
    c->n_expert = 8;
    c->n_expert_used = 2;
    c->n_ff_exp = 128;
    c->n_vocab = 512;
    c->n_hash_layer = 3;
    c->n_ctx = 4096;
    c->seed = 42;
    c->quant = MKMODEL_F32;
    c->expert_type = GGUF_TYPE_MXFP4;
    snprintf(c->name, sizeof c->name, "flashbox-tiny-random");
}

/* ---- deterministic random numbers (common/rng.h) and normal deviates ---- */

struct rng {
    uint64_t s[4];
    bool have_spare;
    double spare;
};

static void mk_rng_seed(struct rng *r, uint64_t seed)
{
    rng_seed(r->s, seed);
    r->have_spare = false;
    r->spare = 0.0;
}

static double rng_uniform(struct rng *r) { return rng_unit(r->s); } /* [0, 1) */

static double rng_normal(struct rng *r)
{
    if (r->have_spare) {
        r->have_spare = false;
        return r->spare;
    }
    double u, v, s;
    do { /* Marsaglia's polar method */
        u = 2 * rng_uniform(r) - 1;
        v = 2 * rng_uniform(r) - 1;
        s = u * u + v * v;
    } while (s >= 1 || s == 0);
    double f = sqrt(-2 * log(s) / s);
    r->spare = v * f;
    r->have_spare = true;
    return u * f;
}

/* ---- the tensor list ---- */

enum init {
    INIT_PROJ,      /* N(0, 1/in): projections */
    INIT_ROUTER,    /* N(0, 16/in): decisive top-k */
    INIT_NORM,      /* 1 + N(0, 0.1^2) */
    INIT_HC_FN,     /* N(0, 0.05^2) */
    INIT_HC_SCALE,  /* 1 + N(0, 0.1^2) */
    INIT_HC_BASE,   /* N(0, 0.5^2): non-trivial Sinkhorn */
    INIT_SINK,      /* N(0, 1) */
    INIT_APE,       /* N(0, 0.5^2) */
    INIT_BIAS,      /* N(0, 0.1^2) */
    INIT_EMBED,     /* N(0, 1) */
    INIT_EXP_GATE,  /* projection, one or two experts x8 so the gate clamp fires */
    INIT_EXP_UP,    /* projection x4 so the up clamp fires */
    INIT_TID2EID,   /* distinct random experts per token */
};

enum tclass { TC_VECTOR, TC_MATRIX, TC_EXPERT, TC_I32 };

struct tspec {
    char name[96];
    uint32_t n_dims;
    uint64_t ne[3];
    enum init init;
    enum tclass cls;
};

struct tlist {
    struct tspec *t;
    size_t n, cap;
};

static int tl_add(struct tlist *l, enum init init, enum tclass cls, uint32_t n_dims, uint64_t ne0, uint64_t ne1,
                  uint64_t ne2, const char *fmt, int il)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 256;
        struct tspec *n = realloc(l->t, cap * sizeof *n);
        if (!n) return -1;
        l->t = n;
        l->cap = cap;
    }
    struct tspec *t = &l->t[l->n++];
    snprintf(t->name, sizeof t->name, fmt, il);
    t->n_dims = n_dims;
    t->ne[0] = ne0;
    t->ne[1] = ne1;
    t->ne[2] = ne2;
    t->init = init;
    t->cls = cls;
    return 0;
}

static int build_list(const struct mkmodel_config *c, struct tlist *l)
{
    const uint64_t d = c->n_embd, hd = c->head_dim, H = c->n_head, hc = 4, mix = (2 + hc) * hc;
    const uint64_t E = c->n_expert, F = c->n_ff_exp;
    int rc = tl_add(l, INIT_EMBED, TC_MATRIX, 2, d, c->n_vocab, 1, "token_embd.weight", 0);
    for (uint32_t il = 0; il < c->n_layer && !rc; il++) {
        const uint32_t r = c->ratio[il];
        const int i = (int)il;
        rc |= tl_add(l, INIT_NORM, TC_VECTOR, 1, d, 1, 1, "blk.%d.attn_norm.weight", i);
        rc |= tl_add(l, INIT_SINK, TC_VECTOR, 1, H, 1, 1, "blk.%d.attn_sinks.weight", i);
        rc |= tl_add(l, INIT_PROJ, TC_MATRIX, 2, d, c->q_rank, 1, "blk.%d.attn_q_a.weight", i);
        rc |= tl_add(l, INIT_NORM, TC_VECTOR, 1, c->q_rank, 1, 1, "blk.%d.attn_q_a_norm.weight", i);
        rc |= tl_add(l, INIT_PROJ, TC_MATRIX, 2, c->q_rank, H * hd, 1, "blk.%d.attn_q_b.weight", i);
        rc |= tl_add(l, INIT_PROJ, TC_MATRIX, 2, d, hd, 1, "blk.%d.attn_kv.weight", i);
        rc |= tl_add(l, INIT_NORM, TC_VECTOR, 1, hd, 1, 1, "blk.%d.attn_kv_a_norm.weight", i);
        rc |= tl_add(l, INIT_PROJ, TC_MATRIX, 2, H * hd / c->o_groups, (uint64_t)c->o_groups * c->o_rank, 1,
                     "blk.%d.attn_output_a.weight", i);
        rc |= tl_add(l, INIT_PROJ, TC_MATRIX, 2, (uint64_t)c->o_groups * c->o_rank, d, 1, "blk.%d.attn_output_b.weight", i);
        rc |= tl_add(l, INIT_HC_FN, TC_VECTOR, 2, hc * d, mix, 1, "blk.%d.hc_attn_fn.weight", i);
        rc |= tl_add(l, INIT_HC_BASE, TC_VECTOR, 1, mix, 1, 1, "blk.%d.hc_attn_base.weight", i);
        rc |= tl_add(l, INIT_HC_SCALE, TC_VECTOR, 1, 3, 1, 1, "blk.%d.hc_attn_scale.weight", i);
        rc |= tl_add(l, INIT_HC_FN, TC_VECTOR, 2, hc * d, mix, 1, "blk.%d.hc_ffn_fn.weight", i);
        rc |= tl_add(l, INIT_HC_BASE, TC_VECTOR, 1, mix, 1, 1, "blk.%d.hc_ffn_base.weight", i);
        rc |= tl_add(l, INIT_HC_SCALE, TC_VECTOR, 1, 3, 1, 1, "blk.%d.hc_ffn_scale.weight", i);
        if (r) {
            uint64_t coff = r == 4 ? 2 : 1;
            rc |= tl_add(l, INIT_PROJ, TC_MATRIX, 2, d, coff * hd, 1, "blk.%d.attn_compressor_kv.weight", i);
            rc |= tl_add(l, INIT_PROJ, TC_MATRIX, 2, d, coff * hd, 1, "blk.%d.attn_compressor_gate.weight", i);
            rc |= tl_add(l, INIT_APE, TC_VECTOR, 2, coff * hd, r, 1, "blk.%d.attn_compressor_ape.weight", i);
            rc |= tl_add(l, INIT_NORM, TC_VECTOR, 1, hd, 1, 1, "blk.%d.attn_compressor_norm.weight", i);
        }
        if (r == 4) {
            const uint64_t id = c->ix_dim;
            rc |= tl_add(l, INIT_PROJ, TC_MATRIX, 2, c->q_rank, (uint64_t)c->ix_head * id, 1, "blk.%d.indexer.attn_q_b.weight", i);
            rc |= tl_add(l, INIT_PROJ, TC_MATRIX, 2, d, c->ix_head, 1, "blk.%d.indexer.proj.weight", i);
            rc |= tl_add(l, INIT_PROJ, TC_MATRIX, 2, d, 2 * id, 1, "blk.%d.indexer_compressor_kv.weight", i);
            rc |= tl_add(l, INIT_PROJ, TC_MATRIX, 2, d, 2 * id, 1, "blk.%d.indexer_compressor_gate.weight", i);
            rc |= tl_add(l, INIT_APE, TC_VECTOR, 2, 2 * id, 4, 1, "blk.%d.indexer_compressor_ape.weight", i);
            rc |= tl_add(l, INIT_NORM, TC_VECTOR, 1, id, 1, 1, "blk.%d.indexer_compressor_norm.weight", i);
        }
        rc |= tl_add(l, INIT_NORM, TC_VECTOR, 1, d, 1, 1, "blk.%d.ffn_norm.weight", i);
        rc |= tl_add(l, INIT_ROUTER, TC_MATRIX, 2, d, E, 1, "blk.%d.ffn_gate_inp.weight", i);
        if (il < c->n_hash_layer)
            rc |= tl_add(l, INIT_TID2EID, TC_I32, 2, c->n_expert_used, c->n_vocab, 1, "blk.%d.ffn_gate_tid2eid.weight", i);
        else
            rc |= tl_add(l, INIT_BIAS, TC_VECTOR, 1, E, 1, 1, "blk.%d.exp_probs_b.bias", i);
        rc |= tl_add(l, INIT_EXP_GATE, TC_EXPERT, 3, d, F, E, "blk.%d.ffn_gate_exps.weight", i);
        rc |= tl_add(l, INIT_EXP_UP, TC_EXPERT, 3, d, F, E, "blk.%d.ffn_up_exps.weight", i);
        rc |= tl_add(l, INIT_PROJ, TC_EXPERT, 3, F, d, E, "blk.%d.ffn_down_exps.weight", i);
        rc |= tl_add(l, INIT_PROJ, TC_MATRIX, 2, d, F, 1, "blk.%d.ffn_gate_shexp.weight", i);
        rc |= tl_add(l, INIT_EXP_UP, TC_MATRIX, 2, d, F, 1, "blk.%d.ffn_up_shexp.weight", i);
        rc |= tl_add(l, INIT_PROJ, TC_MATRIX, 2, F, d, 1, "blk.%d.ffn_down_shexp.weight", i);
    }
    rc |= tl_add(l, INIT_HC_FN, TC_VECTOR, 2, hc * d, hc, 1, "output_hc_fn.weight", 0);
    rc |= tl_add(l, INIT_HC_BASE, TC_VECTOR, 1, hc, 1, 1, "output_hc_base.weight", 0);
    rc |= tl_add(l, INIT_HC_SCALE, TC_VECTOR, 1, 1, 1, 1, "output_hc_scale.weight", 0);
    rc |= tl_add(l, INIT_NORM, TC_VECTOR, 1, d, 1, 1, "output_norm.weight", 0);
    rc |= tl_add(l, INIT_PROJ, TC_MATRIX, 2, d, c->n_vocab, 1, "output.weight", 0);
    return rc ? -1 : 0;
}

/* The type a tensor has in a `mixed` file: Q8_0 matrices, MXFP4 routed experts, F32
 * vectors (and matrices whose rows are not whole 32-element blocks), I32 tid2eid. */
static enum gguf_type mixed_type(const struct mkmodel_config *c, const struct tspec *t)
{
    if (t->cls == TC_I32) return GGUF_TYPE_I32;
    if (t->cls == TC_EXPERT && t->ne[0] % gguf_type_block_elems(c->expert_type) == 0) return c->expert_type;
    if (t->cls == TC_VECTOR || t->ne[0] % 32) return GGUF_TYPE_F32;
    return t->cls == TC_EXPERT ? GGUF_TYPE_MXFP4 : GGUF_TYPE_Q8_0;
}

static enum gguf_type storage_type(const struct mkmodel_config *c, const struct tspec *t)
{
    if (c->quant == MKMODEL_MIXED || t->cls == TC_I32) return mixed_type(c, t);
    return GGUF_TYPE_F32;
}

/* ggml's K-quants and i-quants have no quantizer here (the i-quants need an importance
 * matrix): their experts are random valid blocks (quant_random_blocks) whose super-block
 * scale gives each expert matrix the root-mean-square of its F32 values, so the model keeps
 * its shape (gate clamp on experts 0 and 1, output magnitudes) whatever the type. */
static void random_expert_blocks(const struct mkmodel_config *c, const struct tspec *t, size_t ti, const float *master,
                                 uint8_t *packed)
{
    const uint64_t per = t->ne[0] * t->ne[1], blocks = per / gguf_type_block_elems(c->expert_type);
    const uint64_t mat_bytes = blocks * gguf_type_block_bytes(c->expert_type);
    float probe[QK_K];
    for (uint64_t e = 0; e < t->ne[2]; e++) {
        double want = 0, got = 0;
        for (uint64_t i = 0; i < per; i++) want += (double)master[e * per + i] * master[e * per + i];
        uint64_t seed = c->seed * 1000003u + ti * 1009u + e, probe_seed = seed;
        uint8_t *dst = packed + e * mat_bytes;
        /* the blocks at scale 1 first, to measure their spread */
        quant_random_blocks(c->expert_type, dst, blocks, &probe_seed, 0x3c00);
        for (uint64_t b = 0; b < blocks; b++) {
            const uint32_t be = gguf_type_block_elems(c->expert_type);
            dequant_row(c->expert_type, dst + b * gguf_type_block_bytes(c->expert_type), probe, be);
            for (uint32_t i = 0; i < be; i++) got += (double)probe[i] * probe[i];
        }
        const float scale = got > 0 ? (float)sqrt(want / got) : 0.0f;
        quant_random_blocks(c->expert_type, dst, blocks, &seed, f32_to_fp16(scale));
    }
}

/* Fills v[n] with the tensor's master values (float) in row-major GGUF order. */
static void generate(struct rng *r, const struct mkmodel_config *c, const struct tspec *t, float *v, uint64_t n)
{
    const double in = (double)t->ne[0];
    double sd = 1.0 / sqrt(in), mean = 0.0;
    switch (t->init) {
    case INIT_PROJ: case INIT_EXP_GATE: break;
    case INIT_EXP_UP: sd *= 4.0; break;
    case INIT_ROUTER: sd *= 4.0; break;
    case INIT_NORM: case INIT_HC_SCALE: mean = 1.0; sd = 0.1; break;
    case INIT_HC_FN: sd = 0.05; break;
    case INIT_HC_BASE: case INIT_APE: sd = 0.5; break;
    case INIT_SINK: case INIT_EMBED: sd = 1.0; break;
    case INIT_BIAS: sd = 0.1; break;
    case INIT_TID2EID: {
        const uint32_t k = c->n_expert_used;
        int32_t *ids = (int32_t *)v;
        for (uint64_t row = 0; row < n / k; row++) {
            for (uint32_t j = 0; j < k; j++) { /* distinct experts in each row */
                int32_t e;
                bool dup;
                do {
                    e = (int32_t)(rng_next(r->s) % c->n_expert);
                    dup = false;
                    for (uint32_t q = 0; q < j; q++) dup |= ids[row * k + q] == e;
                } while (dup);
                ids[row * k + j] = e;
            }
        }
        return;
    }
    }
    for (uint64_t i = 0; i < n; i++) v[i] = (float)(mean + sd * rng_normal(r));
    if (t->init == INIT_EXP_GATE) {
        /* experts 0 and 1 get x8 gates so the one-sided gate clamp fires (spec §6.2) */
        const uint64_t per_expert = t->ne[0] * t->ne[1];
        for (uint64_t e = 0; e < 2 && e < t->ne[2]; e++)
            for (uint64_t i = 0; i < per_expert; i++) v[e * per_expert + i] *= 8.0f;
    }
}

static int write_tokenizer(struct gguf_writer *w, const struct mkmodel_config *c, char *err, size_t err_len);

int mkmodel_write(const struct mkmodel_config *c, const char *path, char *err, size_t err_len)
{
    if (c->n_layer == 0 || c->n_layer > MKMODEL_MAX_LAYERS) return errf(err, err_len, "--layers: %u, expected 1..%d", c->n_layer, MKMODEL_MAX_LAYERS);
    if (c->n_expert_used == 0 || c->n_expert_used > c->n_expert) return errf(err, err_len, "--experts-used must be 1..--experts");
    if (c->n_hash_layer > c->n_layer) return errf(err, err_len, "--hash-layers exceeds --layers");
    if (c->o_groups == 0 || c->n_head % c->o_groups) return errf(err, err_len, "--o-groups must divide --heads");
    if (c->rope_dim > c->head_dim || c->rope_dim % 2 || c->rope_dim > c->ix_dim) return errf(err, err_len, "--rope-dim must be even and <= --head-dim and --index-dim");
    uint64_t probe_seed = 0;
    const uint32_t eb = gguf_type_block_elems(c->expert_type);
    if (c->expert_type != GGUF_TYPE_MXFP4 && c->expert_type != GGUF_TYPE_Q8_0 &&
        quant_random_blocks(c->expert_type, NULL, 0, &probe_seed, 0))
        return errf(err, err_len, "--expert-type %s: expected MXFP4, Q8_0 or one of ggml's K-quants / i-quants",
                    gguf_type_name(c->expert_type));
    if (c->expert_type != GGUF_TYPE_MXFP4 && (c->n_embd % eb || c->n_ff_exp % eb))
        return errf(err, err_len, "--expert-type %s: --dim (%u) and --ff (%u) must be multiples of its block (%u)",
                    gguf_type_name(c->expert_type), c->n_embd, c->n_ff_exp, eb);
    for (uint32_t il = 0; il < c->n_layer; il++)
        if (c->ratio[il] != 0 && c->ratio[il] != 4 && c->ratio[il] != 128)
            return errf(err, err_len, "--ratios: layer %u has %u, expected 0, 4 or 128", il, c->ratio[il]);

    struct tlist l = { 0 };
    struct gguf_writer *w = gguf_writer_create();
    float *master = NULL;
    void *packed = NULL;
    int rc = -1;
    if (!w || build_list(c, &l)) {
        errf(err, err_len, "out of memory");
        goto done;
    }
    float clamp[MKMODEL_MAX_LAYERS];
    int32_t ratios[MKMODEL_MAX_LAYERS];
    for (uint32_t il = 0; il < c->n_layer; il++) {
        ratios[il] = (int32_t)c->ratio[il];
        clamp[il] = 10.0f;
    }
#define K(s) "deepseek4." s
    int m = 0;
    m |= gguf_writer_add_str(w, "general.architecture", "deepseek4");
    m |= gguf_writer_add_str(w, "general.name", c->name);
    m |= gguf_writer_add_u32(w, "general.alignment", 32);
    m |= gguf_writer_add_u32(w, K("context_length"), c->n_ctx);
    m |= gguf_writer_add_u32(w, K("embedding_length"), c->n_embd);
    m |= gguf_writer_add_u32(w, K("block_count"), c->n_layer);
    m |= gguf_writer_add_u32(w, K("vocab_size"), c->n_vocab);
    m |= gguf_writer_add_u32(w, K("attention.head_count"), c->n_head);
    m |= gguf_writer_add_u32(w, K("attention.head_count_kv"), 1);
    m |= gguf_writer_add_u32(w, K("attention.key_length"), c->head_dim);
    m |= gguf_writer_add_u32(w, K("attention.value_length"), c->head_dim);
    m |= gguf_writer_add_f32(w, K("attention.layer_norm_rms_epsilon"), 1e-6f);
    m |= gguf_writer_add_u32(w, K("attention.q_lora_rank"), c->q_rank);
    m |= gguf_writer_add_u32(w, K("attention.output_group_count"), c->o_groups);
    m |= gguf_writer_add_u32(w, K("attention.output_lora_rank"), c->o_rank);
    m |= gguf_writer_add_u32(w, K("attention.sliding_window"), c->window);
    m |= gguf_writer_add_arr(w, K("attention.compress_ratios"), GGUF_VAL_INT32, ratios, c->n_layer);
    m |= gguf_writer_add_f32(w, K("attention.compress_rope_freq_base"), 160000.0f);
    m |= gguf_writer_add_u32(w, K("attention.indexer.head_count"), c->ix_head);
    m |= gguf_writer_add_u32(w, K("attention.indexer.key_length"), c->ix_dim);
    m |= gguf_writer_add_u32(w, K("attention.indexer.top_k"), c->ix_topk);
    m |= gguf_writer_add_u32(w, K("rope.dimension_count"), c->rope_dim);
    m |= gguf_writer_add_f32(w, K("rope.freq_base"), 10000.0f);
    m |= gguf_writer_add_str(w, K("rope.scaling.type"), "yarn");
    m |= gguf_writer_add_f32(w, K("rope.scaling.factor"), 16.0f);
    m |= gguf_writer_add_u32(w, K("rope.scaling.original_context_length"), 65536);
    m |= gguf_writer_add_f32(w, K("rope.scaling.yarn_beta_fast"), 32.0f);
    m |= gguf_writer_add_f32(w, K("rope.scaling.yarn_beta_slow"), 1.0f);
    m |= gguf_writer_add_u32(w, K("expert_count"), c->n_expert);
    m |= gguf_writer_add_u32(w, K("expert_used_count"), c->n_expert_used);
    m |= gguf_writer_add_u32(w, K("expert_shared_count"), 1);
    m |= gguf_writer_add_u32(w, K("expert_feed_forward_length"), c->n_ff_exp);
    m |= gguf_writer_add_f32(w, K("expert_weights_scale"), 1.5f);
    m |= gguf_writer_add_bool(w, K("expert_weights_norm"), true);
    m |= gguf_writer_add_u32(w, K("expert_gating_func"), 4); /* sqrt-softplus */
    m |= gguf_writer_add_arr(w, K("swiglu_clamp_exp"), GGUF_VAL_FLOAT32, clamp, c->n_layer);
    m |= gguf_writer_add_arr(w, K("swiglu_clamp_shexp"), GGUF_VAL_FLOAT32, clamp, c->n_layer);
    m |= gguf_writer_add_u32(w, K("hyper_connection.count"), 4);
    m |= gguf_writer_add_u32(w, K("hyper_connection.sinkhorn_iterations"), 20);
    m |= gguf_writer_add_f32(w, K("hyper_connection.epsilon"), 1e-6f);
    m |= gguf_writer_add_u32(w, K("hash_layer_count"), c->n_hash_layer);
#undef K
    if (m || write_tokenizer(w, c, err, err_len)) {
        if (m) errf(err, err_len, "out of memory building metadata");
        goto done;
    }
    if (c->quant == MKMODEL_META) { /* no tensors */
        rc = gguf_writer_begin(w, path, err, err_len) ? -1 : gguf_writer_finish(w, true, err, err_len);
        goto done;
    }
    uint64_t max_n = 0;
    for (size_t i = 0; i < l.n; i++) {
        const struct tspec *t = &l.t[i];
        uint64_t n = t->ne[0] * t->ne[1] * t->ne[2];
        if (n > max_n) max_n = n;
        if (gguf_writer_add_tensor(w, t->name, storage_type(c, t), t->n_dims, t->ne, NULL)) {
            errf(err, err_len, "%s: invalid shape for its type", t->name);
            goto done;
        }
    }
    master = malloc(max_n * sizeof *master);
    packed = malloc(max_n * sizeof(float));
    if (!master || !packed) {
        errf(err, err_len, "out of memory: largest tensor has %" PRIu64 " elements", max_n);
        goto done;
    }
    if (gguf_writer_begin(w, path, err, err_len)) goto done;
    struct rng r;
    mk_rng_seed(&r, c->seed);
    for (size_t i = 0; i < l.n; i++) {
        const struct tspec *t = &l.t[i];
        const uint64_t n = t->ne[0] * t->ne[1] * t->ne[2];
        generate(&r, c, t, master, n);
        const enum gguf_type qt = mixed_type(c, t);
        const void *data = master;
        uint64_t nbytes = n * 4;
        if (c->quant != MKMODEL_F32 && qt != GGUF_TYPE_F32 && qt != GGUF_TYPE_I32) {
            if (qt == GGUF_TYPE_Q8_0) quantize_row_q8_0(master, packed, n);
            else if (qt == GGUF_TYPE_MXFP4) quantize_row_mxfp4(master, packed, n);
            else random_expert_blocks(c, t, i, master, packed);
            if (c->quant == MKMODEL_MIXED) {
                gguf_type_nbytes(qt, n, &nbytes);
                data = packed;
            } else { /* f32-dequant: F32 holding exactly what the mixed file stores */
                dequant_row(qt, packed, master, n);
            }
        }
        if (gguf_writer_stream_tensor(w, data, nbytes, err, err_len)) {
            gguf_writer_finish(w, false, NULL, 0);
            goto done;
        }
    }
    rc = gguf_writer_finish(w, true, err, err_len);
done:
    free(master);
    free(packed);
    free(l.t);
    gguf_writer_destroy(w);
    return rc;
}

/* ---- tokenizer: 3 control tokens, the 256 byte symbols (GPT-2's byte-to-unicode order),
 * a fixed list of merges, the V4 chat control tokens, placeholders up to n_vocab. ---- */

static const char *const merges_list[] = {
    "Ġ t", "h e", "Ġt he", "Ġ a", "i n", "Ġ o", "r e", "e r", "Ġ s", "o n", "a t", "e n", "Ġ w", "o r", "Ġ i", "e s",
    "Ġ c", "i s", "Ġ f", "Ġ b", "a n", "Ġ p", "i t", "Ġ m", "a r", "e d", "Ġo f", "Ġ d", "Ġa n", "Ġan d", "Ġ h",
    "Ġt o", "Ġi n", "l l", "o u", "i ng", "Ġ l", "H e", "He ll", "Hell o",
};
#define N_MERGES (sizeof merges_list / sizeof merges_list[0])

/* The chat control tokens of spec §4: roles, the think markers, the DSML marker of tool
 * calls, and the reminder and quick-task markers of the official encoder. */
static const char *const chat_tokens[] = {
    "<｜User｜>", "<｜Assistant｜>", "<think>", "</think>", "｜DSML｜", "<｜latest_reminder｜>", "<｜action｜>",
    "<｜query｜>", "<｜authority｜>", "<｜domain｜>", "<｜title｜>", "<｜extracted_url｜>", "<｜read_url｜>",
};
#define N_CHAT_TOKENS (sizeof chat_tokens / sizeof chat_tokens[0])

/* UTF-8 of GPT-2's unicode stand-in for byte b. */
static void byte_symbol(unsigned b, char out[4])
{
    /* printable bytes map to themselves; the rest, in order, to U+0100 + n */
    unsigned cp;
    if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)) {
        cp = b;
    } else {
        unsigned n = 0;
        for (unsigned x = 0; x < b; x++)
            if (!((x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF))) n++;
        cp = 256 + n;
    }
    if (cp < 0x80) {
        out[0] = (char)cp;
        out[1] = 0;
    } else {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        out[2] = 0;
    }
}

/* GPT-2 order of the 256 byte symbols: printable ranges first, then the rest. */
static unsigned byte_at(unsigned i)
{
    unsigned k = 0;
    for (unsigned pass = 0; pass < 2; pass++)
        for (unsigned b = 0; b < 256; b++) {
            bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            if (printable == (pass == 0) && k++ == i) return b;
        }
    return 0;
}

static int write_tokenizer(struct gguf_writer *w, const struct mkmodel_config *c, char *err, size_t err_len)
{
    const uint32_t fixed = 3 + 256 + N_MERGES + N_CHAT_TOKENS;
    if (c->n_vocab < fixed)
        return errf(err, err_len, "--vocab: %u, expected at least %u (control, byte, merge and chat tokens)", c->n_vocab, fixed);
    char **toks = calloc(c->n_vocab, sizeof *toks);
    int32_t *types = calloc(c->n_vocab, sizeof *types);
    int rc = -1;
    if (!toks || !types) goto done;
    uint32_t n = 0;
    const char *control[] = { "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>" };
    for (int i = 0; i < 3; i++) {
        types[n] = 3;
        if (!(toks[n++] = strdup(control[i]))) goto done;
    }
    for (unsigned i = 0; i < 256; i++) {
        char sym[4];
        byte_symbol(byte_at(i), sym);
        types[n] = 1;
        if (!(toks[n++] = strdup(sym))) goto done;
    }
    for (size_t i = 0; i < N_MERGES; i++) { /* the merged token is the pair without the space */
        char buf[64];
        size_t k = 0;
        for (const char *p = merges_list[i]; *p && k + 1 < sizeof buf; p++)
            if (*p != ' ') buf[k++] = *p;
        buf[k] = 0;
        types[n] = 1;
        if (!(toks[n++] = strdup(buf))) goto done;
    }
    for (size_t i = 0; i < N_CHAT_TOKENS; i++) {
        types[n] = 3;
        if (!(toks[n++] = strdup(chat_tokens[i]))) goto done;
    }
    for (uint32_t i = 0; n < c->n_vocab; i++) {
        char buf[64];
        snprintf(buf, sizeof buf, "<｜place▁holder▁no▁%u｜>", i);
        types[n] = 5;
        if (!(toks[n++] = strdup(buf))) goto done;
    }
    int m = 0;
    m |= gguf_writer_add_str(w, "tokenizer.ggml.model", "gpt2");
    m |= gguf_writer_add_str(w, "tokenizer.ggml.pre", "joyai-llm");
    m |= gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)toks, c->n_vocab);
    m |= gguf_writer_add_arr(w, "tokenizer.ggml.token_type", GGUF_VAL_INT32, types, c->n_vocab);
    m |= gguf_writer_add_arr_str(w, "tokenizer.ggml.merges", merges_list, N_MERGES);
    m |= gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", 0);
    m |= gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", 1);
    m |= gguf_writer_add_u32(w, "tokenizer.ggml.padding_token_id", 1);
    m |= gguf_writer_add_bool(w, "tokenizer.ggml.add_bos_token", false);
    m |= gguf_writer_add_bool(w, "tokenizer.ggml.add_eos_token", false);
    rc = m ? -1 : 0;
done:
    if (rc) errf(err, err_len, "out of memory building the tokenizer");
    for (uint32_t i = 0; toks && i < c->n_vocab; i++) free(toks[i]);
    free(toks);
    free(types);
    return rc;
}
