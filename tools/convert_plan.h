/* Internals of the converter shared by its files: the checkpoint's configuration, the shard
 * set with its name table, and the plan (one item per GGUF tensor: its llama.cpp name,
 * shape and type, and the official tensors it is made from). */
#ifndef FLASHBOX_TOOLS_CONVERT_PLAN_H
#define FLASHBOX_TOOLS_CONVERT_PLAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/model/gguf.h"
#include "engine/model/model.h"
#include "tools/convert.h"
#include "tools/safetensors.h"

/* config.json (HF style), the keys the converter needs. */
struct conv_config {
    uint32_t n_vocab, n_embd, n_layer, n_nextn, n_ctx;
    uint32_t n_head, head_dim, rope_dim, q_rank, o_groups, o_rank, window;
    uint32_t ix_head, ix_dim, ix_topk;
    uint32_t n_expert, n_expert_used, n_expert_shared, n_ff_exp, n_hash_layer;
    uint32_t n_hc, hc_sinkhorn_iters;
    uint32_t n_ratio;                    /* entries in compress_ratios */
    uint32_t ratio[MODEL_MAX_LAYERS];    /* trunk layers, then MTP blocks */
    float rms_eps, hc_eps, rope_theta, compress_rope_theta, routed_scale, swiglu_limit;
    bool has_yarn;
    float yarn_factor, yarn_beta_fast, yarn_beta_slow;
    uint32_t yarn_orig_ctx;
    bool norm_topk_prob;
    uint32_t bos, eos;
};

int conv_config_load(const char *path, struct conv_config *c, char *err, size_t err_len);
/* Adds every deepseek4.* and general.* key; n_blocks counts the trunk and any MTP block
 * written. */
int conv_config_add_metadata(const struct conv_config *c, struct gguf_writer *w, uint32_t n_blocks,
                             const char *name, bool experts_mxfp4, char *err, size_t err_len);

/* Reads tokenizer.json and adds the tokenizer.ggml.* keys (vocabulary padded to n_vocab). */
int conv_tokenizer_add(const char *path, const struct conv_config *c, struct gguf_writer *w, char *err, size_t err_len);

/* ---- shards ---- */

struct conv_entry {
    const char *name;            /* points into the shard's tensor */
    struct st_file *file;
    const struct st_tensor *t;
    bool used;                   /* consumed by the plan */
};

struct conv_shards {
    size_t n_files;
    struct st_file **files;      /* [n_files] */
    size_t n_entries;
    struct conv_entry *entries;  /* [n_entries], sorted by name */
};

/* Opens every shard the index names (or model.safetensors when there is no index) and
 * checks that the index and the shard headers agree. */
int conv_shards_open(struct conv_shards *s, const char *hf_dir, char *err, size_t err_len);
void conv_shards_close(struct conv_shards *s);
struct conv_entry *conv_shards_find(struct conv_shards *s, const char *name);

/* ---- provenance (convert_provenance.c) ---- */

struct convert_opts;
/* SHA-256 of a whole file, as 64 lowercase hex digits. */
int conv_sha256_file(const char *path, char hex[65], char *err, size_t err_len);
/* Hashes every source file and adds CONVERT_PROVENANCE_KEY to the GGUF's metadata. */
int conv_provenance_add(const struct convert_opts *o, const struct conv_shards *s, struct gguf_writer *w, char *err,
                        size_t err_len);

/* ---- plan ---- */

enum conv_kind {
    CONV_VECTOR,   /* norms, hc, ape, sinks, bias: F32/BF16/F16 -> F32, any shape */
    CONV_MATRIX,   /* dense weight [rows][cols]: FP8 + scales -> dense type, BF16/F16 kept */
    CONV_EXPERTS,  /* n_expert weights [rows][cols] stacked: FP4 (I8) -> MXFP4, FP8 -> dense */
    CONV_TID2EID,  /* hash table [n_vocab][k] I64 -> I32, entries checked */
};

#define CONV_NAME_LEN 160

/* One official source tensor as the plan uses it. */
struct conv_src {
    struct conv_entry *w;        /* the weight */
    struct conv_entry *scale;    /* e8m0 scales of FP8 / FP4 weights, else NULL */
};

struct conv_item {
    char name[CONV_NAME_LEN];    /* GGUF (llama.cpp) name */
    enum conv_kind kind;
    char src_name[CONV_NAME_LEN];/* official name; experts: "prefix" of prefix.E.suffix */
    char src_suffix[32];         /* experts: "w1" / "w2" / "w3" */
    uint32_t src_dims;           /* expected official dims: 1 or 2 */
    uint64_t rows, cols;         /* official logical shape per source ([cols] when 1-D) */
    /* filled by conv_plan_resolve */
    uint32_t n_src;
    struct conv_src *src;        /* [n_src] */
    enum st_dtype src_dtype;
    enum gguf_type type;
    uint32_t n_dims;
    uint64_t ne[3];              /* GGUF shape, innermost first */
    uint64_t src_bytes;          /* checkpoint bytes read for this tensor */
    uint64_t out_bytes;
};

struct conv_plan {
    size_t n_items, cap_items;
    struct conv_item *items;
    uint32_t n_blocks;           /* trunk + MTP blocks written */
    bool mtp;
};

/* Builds the item list from the configuration (MTP block when the checkpoint has mtp.0.*
 * tensors and include_mtp), resolves every source in the shards (names, dtypes, shapes
 * against the configuration), picks output types, and fails on any checkpoint tensor the
 * plan does not use. */
int conv_plan_build(struct conv_plan *p, const struct conv_config *c, struct conv_shards *s, bool include_mtp,
                    enum convert_dense dense, char *err, size_t err_len);
void conv_plan_free(struct conv_plan *p);

#endif
