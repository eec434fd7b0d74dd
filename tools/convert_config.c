/* The checkpoint's config.json (HF style, spec §1.1) read into struct conv_config, and the
 * deepseek4 GGUF metadata written from it (spec §5.1, value types as llama.cpp writes
 * them). */
#include "tools/convert_plan.h"
#include "common/errmsg.h"

#include <jansson.h>
#include <math.h>
#include <string.h>

struct cfg_reader {
    json_t *root;
    const char *path;
    char *err;
    size_t len;
};

/* Required (or defaulted when dflt_ok) non-negative integer key, at most max. */
static int get_u32(struct cfg_reader *r, const char *key, bool dflt_ok, uint32_t dflt, uint32_t max, uint32_t *out)
{
    json_t *j = json_object_get(r->root, key);
    if (!j || json_is_null(j)) {
        if (dflt_ok) {
            *out = dflt;
            return 0;
        }
        return errf(r->err, r->len, "%s: key %s missing", r->path, key);
    }
    if (!json_is_integer(j) || json_integer_value(j) < 0 || json_integer_value(j) > (json_int_t)max)
        return errf(r->err, r->len, "%s: %s must be an integer in 0..%u", r->path, key, max);
    *out = (uint32_t)json_integer_value(j);
    return 0;
}

static int get_f32(struct cfg_reader *r, json_t *obj, const char *key, bool dflt_ok, float dflt, float *out)
{
    json_t *j = json_object_get(obj, key);
    if (!j || json_is_null(j)) {
        if (dflt_ok) {
            *out = dflt;
            return 0;
        }
        return errf(r->err, r->len, "%s: key %s missing", r->path, key);
    }
    if (!json_is_number(j) || !isfinite(json_number_value(j)))
        return errf(r->err, r->len, "%s: %s must be a number", r->path, key);
    *out = (float)json_number_value(j);
    return 0;
}

int conv_config_load(const char *path, struct conv_config *c, char *err, size_t len)
{
    memset(c, 0, sizeof *c);
    json_error_t jerr;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) return errf(err, len, "%s: %s (line %d)", path, jerr.text, jerr.line);
    struct cfg_reader r = { root, path, err, len };
    int rc = -1;
    if (!json_is_object(root)) {
        errf(err, len, "%s: not a JSON object", path);
        goto out;
    }
    const uint32_t BIG = 1u << 30;
    uint32_t n_kv_heads;
    if (get_u32(&r, "vocab_size", false, 0, BIG, &c->n_vocab) ||
        get_u32(&r, "hidden_size", false, 0, 1u << 20, &c->n_embd) ||
        get_u32(&r, "num_hidden_layers", false, 0, MODEL_MAX_LAYERS - 1, &c->n_layer) ||
        get_u32(&r, "num_nextn_predict_layers", true, 0, 1, &c->n_nextn) ||
        get_u32(&r, "max_position_embeddings", false, 0, UINT32_MAX, &c->n_ctx) ||
        get_u32(&r, "num_attention_heads", false, 0, 1u << 16, &c->n_head) ||
        get_u32(&r, "num_key_value_heads", true, 1, 1u << 16, &n_kv_heads) ||
        get_u32(&r, "head_dim", false, 0, 1u << 16, &c->head_dim) ||
        get_u32(&r, "qk_rope_head_dim", false, 0, 1u << 16, &c->rope_dim) ||
        get_u32(&r, "q_lora_rank", false, 0, 1u << 20, &c->q_rank) ||
        get_u32(&r, "o_groups", false, 0, 1u << 16, &c->o_groups) ||
        get_u32(&r, "o_lora_rank", false, 0, 1u << 20, &c->o_rank) ||
        get_u32(&r, "sliding_window", false, 0, BIG, &c->window) ||
        get_u32(&r, "index_n_heads", false, 0, 1u << 16, &c->ix_head) ||
        get_u32(&r, "index_head_dim", false, 0, 1u << 16, &c->ix_dim) ||
        get_u32(&r, "index_topk", false, 0, BIG, &c->ix_topk) ||
        get_u32(&r, "n_routed_experts", false, 0, 1u << 16, &c->n_expert) ||
        get_u32(&r, "num_experts_per_tok", false, 0, 1u << 16, &c->n_expert_used) ||
        get_u32(&r, "n_shared_experts", true, 1, 1u << 16, &c->n_expert_shared) ||
        get_u32(&r, "moe_intermediate_size", false, 0, 1u << 20, &c->n_ff_exp) ||
        get_u32(&r, "num_hash_layers", true, 0, MODEL_MAX_LAYERS, &c->n_hash_layer) ||
        get_u32(&r, "hc_mult", false, 0, 64, &c->n_hc) ||
        get_u32(&r, "hc_sinkhorn_iters", false, 0, 1000, &c->hc_sinkhorn_iters) ||
        get_u32(&r, "bos_token_id", true, 0, BIG, &c->bos) ||
        get_u32(&r, "eos_token_id", true, 1, BIG, &c->eos) ||
        get_f32(&r, root, "rms_norm_eps", false, 0, &c->rms_eps) ||
        get_f32(&r, root, "hc_eps", true, 1e-6f, &c->hc_eps) ||
        get_f32(&r, root, "rope_theta", false, 0, &c->rope_theta) ||
        get_f32(&r, root, "compress_rope_theta", false, 0, &c->compress_rope_theta) ||
        get_f32(&r, root, "routed_scaling_factor", false, 0, &c->routed_scale) ||
        get_f32(&r, root, "swiglu_limit", false, 0, &c->swiglu_limit))
        goto out;
    if (n_kv_heads != 1) {
        errf(err, len, "%s: num_key_value_heads %u, expected 1 (one shared latent KV)", path, n_kv_heads);
        goto out;
    }
    json_t *sf = json_object_get(root, "scoring_func");
    if (sf && (!json_is_string(sf) || strcmp(json_string_value(sf), "sqrtsoftplus") != 0)) {
        errf(err, len, "%s: scoring_func must be \"sqrtsoftplus\" for deepseek4", path);
        goto out;
    }
    /* FP8 scales are read as one e8m0 per 128x128 block (ckpt_formats.h); a checkpoint with
     * other blocks (V4.1 uses 32x32) must not be misread silently. */
    json_t *qc = json_object_get(root, "quantization_config");
    json_t *bs = json_is_object(qc) ? json_object_get(qc, "weight_block_size") : NULL;
    if (bs && (!json_is_array(bs) || json_array_size(bs) != 2 || json_integer_value(json_array_get(bs, 0)) != 128 ||
               json_integer_value(json_array_get(bs, 1)) != 128)) {
        errf(err, len, "%s: quantization_config.weight_block_size must be [128, 128] (the FP8 scale blocks this "
                       "converter reads)", path);
        goto out;
    }
    json_t *nt = json_object_get(root, "norm_topk_prob");
    c->norm_topk_prob = nt ? json_is_true(nt) : true;
    json_t *rs = json_object_get(root, "rope_scaling");
    if (rs && !json_is_null(rs)) {
        if (!json_is_object(rs)) {
            errf(err, len, "%s: rope_scaling must be an object", path);
            goto out;
        }
        json_t *ty = json_object_get(rs, "type");
        if (!ty) ty = json_object_get(rs, "rope_type");
        if (!json_is_string(ty) || strcmp(json_string_value(ty), "yarn") != 0) {
            errf(err, len, "%s: rope_scaling.type must be \"yarn\"", path);
            goto out;
        }
        float orig;
        c->has_yarn = true;
        if (get_f32(&r, rs, "factor", false, 0, &c->yarn_factor) ||
            get_f32(&r, rs, "original_max_position_embeddings", false, 0, &orig) ||
            get_f32(&r, rs, "beta_fast", true, 32.0f, &c->yarn_beta_fast) ||
            get_f32(&r, rs, "beta_slow", true, 1.0f, &c->yarn_beta_slow))
            goto out;
        if (!(orig >= 1 && orig <= 4294967295.0f)) {
            errf(err, len, "%s: rope_scaling.original_max_position_embeddings out of range", path);
            goto out;
        }
        c->yarn_orig_ctx = (uint32_t)orig;
    }
    json_t *cr = json_object_get(root, "compress_ratios");
    if (!json_is_array(cr) || json_array_size(cr) < c->n_layer || json_array_size(cr) > MODEL_MAX_LAYERS) {
        errf(err, len, "%s: compress_ratios must be an array with one entry per layer (%u, plus MTP)", path, c->n_layer);
        goto out;
    }
    c->n_ratio = (uint32_t)json_array_size(cr);
    for (uint32_t i = 0; i < c->n_ratio; i++) {
        json_t *v = json_array_get(cr, i);
        json_int_t x = json_is_integer(v) ? json_integer_value(v) : -1;
        if (x != 0 && x != 4 && x != 128) {
            errf(err, len, "%s: compress_ratios[%u] must be 0, 4 or 128", path, i);
            goto out;
        }
        c->ratio[i] = (uint32_t)x;
    }
    /* Sizes the plan multiplies together: everything non-zero and consistent. */
    if (!c->n_vocab || !c->n_embd || !c->n_layer || !c->n_head || !c->head_dim || !c->q_rank || !c->o_groups ||
        !c->o_rank || !c->n_expert || !c->n_expert_used || !c->n_ff_exp || !c->n_hc || !c->window || !c->n_ctx) {
        errf(err, len, "%s: a size (vocab, hidden, layers, heads, ranks, experts, window, context) is 0", path);
        goto out;
    }
    if (c->n_head % c->o_groups || c->n_expert_used > c->n_expert || c->n_hash_layer > c->n_layer ||
        c->rope_dim > c->head_dim) {
        errf(err, len, "%s: inconsistent sizes (o_groups must divide heads, experts_per_tok <= experts, "
                       "hash layers <= layers, rope dims <= head_dim)", path);
        goto out;
    }
    rc = 0;
out:
    json_decref(root);
    return rc;
}

#define K(suffix) "deepseek4." suffix

int conv_config_add_metadata(const struct conv_config *c, struct gguf_writer *w, uint32_t n_blocks,
                             const char *name, bool experts_mxfp4, char *err, size_t len)
{
    int32_t ratios[MODEL_MAX_LAYERS];
    float clamp[MODEL_MAX_LAYERS];
    for (uint32_t i = 0; i < n_blocks; i++) {
        /* The MTP block is SWA only (spec §1.3) when config.json lists no entry for it. */
        ratios[i] = i < c->n_ratio ? (int32_t)c->ratio[i] : 0;
        clamp[i] = c->swiglu_limit;
    }
    const uint32_t n_nextn = n_blocks - c->n_layer;
    int rc = 0;
    rc |= gguf_writer_add_str(w, "general.architecture", "deepseek4");
    rc |= gguf_writer_add_str(w, "general.name", name);
    rc |= gguf_writer_add_u32(w, "general.alignment", GGUF_DEFAULT_ALIGNMENT);
    /* llama_ftype: 38 = MOSTLY_MXFP4_MOE (experts MXFP4, the rest as listed per tensor). */
    if (experts_mxfp4) rc |= gguf_writer_add_u32(w, "general.file_type", 38);
    rc |= gguf_writer_add_u32(w, "general.quantization_version", 2);
    rc |= gguf_writer_add_u32(w, K("context_length"), c->n_ctx);
    rc |= gguf_writer_add_u32(w, K("embedding_length"), c->n_embd);
    rc |= gguf_writer_add_u32(w, K("block_count"), n_blocks);
    rc |= gguf_writer_add_u32(w, K("vocab_size"), c->n_vocab);
    if (n_nextn) rc |= gguf_writer_add_u32(w, K("nextn_predict_layers"), n_nextn);
    rc |= gguf_writer_add_u32(w, K("attention.head_count"), c->n_head);
    rc |= gguf_writer_add_u32(w, K("attention.head_count_kv"), 1);
    rc |= gguf_writer_add_u32(w, K("attention.key_length"), c->head_dim);
    rc |= gguf_writer_add_u32(w, K("attention.value_length"), c->head_dim);
    rc |= gguf_writer_add_f32(w, K("attention.layer_norm_rms_epsilon"), c->rms_eps);
    rc |= gguf_writer_add_u32(w, K("attention.q_lora_rank"), c->q_rank);
    rc |= gguf_writer_add_u32(w, K("attention.output_group_count"), c->o_groups);
    rc |= gguf_writer_add_u32(w, K("attention.output_lora_rank"), c->o_rank);
    rc |= gguf_writer_add_u32(w, K("attention.sliding_window"), c->window);
    rc |= gguf_writer_add_arr(w, K("attention.compress_ratios"), GGUF_VAL_INT32, ratios, n_blocks);
    rc |= gguf_writer_add_f32(w, K("attention.compress_rope_freq_base"), c->compress_rope_theta);
    rc |= gguf_writer_add_u32(w, K("attention.indexer.head_count"), c->ix_head);
    rc |= gguf_writer_add_u32(w, K("attention.indexer.key_length"), c->ix_dim);
    rc |= gguf_writer_add_u32(w, K("attention.indexer.top_k"), c->ix_topk);
    rc |= gguf_writer_add_u32(w, K("rope.dimension_count"), c->rope_dim);
    rc |= gguf_writer_add_f32(w, K("rope.freq_base"), c->rope_theta);
    if (c->has_yarn) {
        rc |= gguf_writer_add_str(w, K("rope.scaling.type"), "yarn");
        rc |= gguf_writer_add_f32(w, K("rope.scaling.factor"), c->yarn_factor);
        rc |= gguf_writer_add_u32(w, K("rope.scaling.original_context_length"), c->yarn_orig_ctx);
        rc |= gguf_writer_add_f32(w, K("rope.scaling.yarn_beta_fast"), c->yarn_beta_fast);
        rc |= gguf_writer_add_f32(w, K("rope.scaling.yarn_beta_slow"), c->yarn_beta_slow);
    }
    rc |= gguf_writer_add_u32(w, K("expert_count"), c->n_expert);
    rc |= gguf_writer_add_u32(w, K("expert_used_count"), c->n_expert_used);
    rc |= gguf_writer_add_u32(w, K("expert_shared_count"), c->n_expert_shared);
    rc |= gguf_writer_add_u32(w, K("expert_feed_forward_length"), c->n_ff_exp);
    rc |= gguf_writer_add_f32(w, K("expert_weights_scale"), c->routed_scale);
    rc |= gguf_writer_add_bool(w, K("expert_weights_norm"), c->norm_topk_prob);
    rc |= gguf_writer_add_u32(w, K("expert_gating_func"), 4); /* llama.cpp: 4 = sqrt(softplus) */
    /* No expert groups in V4 (topk_method noaux_tc without n_group): one group, used. */
    rc |= gguf_writer_add_u32(w, K("expert_group_count"), 1);
    rc |= gguf_writer_add_u32(w, K("expert_group_used_count"), 1);
    rc |= gguf_writer_add_arr(w, K("swiglu_clamp_exp"), GGUF_VAL_FLOAT32, clamp, n_blocks);
    /* The current official revision clamps the shared expert like the routed ones. */
    rc |= gguf_writer_add_arr(w, K("swiglu_clamp_shexp"), GGUF_VAL_FLOAT32, clamp, n_blocks);
    rc |= gguf_writer_add_u32(w, K("hyper_connection.count"), c->n_hc);
    rc |= gguf_writer_add_u32(w, K("hyper_connection.sinkhorn_iterations"), c->hc_sinkhorn_iters);
    rc |= gguf_writer_add_f32(w, K("hyper_connection.epsilon"), c->hc_eps);
    rc |= gguf_writer_add_u32(w, K("hash_layer_count"), c->n_hash_layer);
    return rc ? errf(err, len, "GGUF metadata: out of memory or a repeated key") : 0;
}
