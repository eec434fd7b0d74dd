/* The backend's kernels as operations: the set of pipelines built at engine open, and one
 * recording function per operation that fills the ABI push block (shaders/abi.h), picks the
 * pipeline variant for the weight type and token count, splits weights that exceed one
 * binding into row ranges, and records the dispatch. Barriers are the caller's business. */
#ifndef FLASHBOX_ENGINE_VK_OPS_H
#define FLASHBOX_ENGINE_VK_OPS_H

#include "engine/model/gguf.h"
#include "engine/vulkan/vk_memory.h"
#include "engine/vulkan/vk_pipeline.h"
struct abi_swiglu_push;  /* shaders/abi.h */
struct abi_indexer_push; /* shaders/abi.h */

/* The matvec weight types, in ABI_WTYPE_* order. */
#define VK_N_WTYPES 18 /* ABI_WTYPE_COUNT (checked in vk_ops.c) */
/* Tokens per weight load in the prefill (matrix-matrix) pipelines. */
#define VK_MATMUL_TILE 8
/* Token tiles: every matvec layout has pipelines for tiles of 1, 2, 4 and VK_MATMUL_TILE
 * tokens ([i] holds 1 << i), so a step of a few sessions reads and decodes each weight
 * once for all of its tokens (vk_op_matvec: whole tiles of VK_MATMUL_TILE, then the
 * smallest tile that holds the rest). A token's sums are formed in the same order in
 * every tile, so the tile never changes a result. */
#define VK_N_TILES 4
_Static_assert(1 << (VK_N_TILES - 1) == VK_MATMUL_TILE, "the largest token tile is VK_MATMUL_TILE");
/* K-split tile pipelines per weight type: two units a lane, then one unit with 1, 1/2, ...
 * 1/64 of a subgroup per row (subgroups of up to 64 lanes) */
#define VK_KSPLIT_VARIANTS 8
/* ... by token tile: kinds 0 .. VK_N_TILES - 1 the tiles above, then a grouped MoE tile */
enum { VK_KSPLIT_GROUPED = VK_N_TILES, VK_KSPLIT_KINDS };

/* How the matvec kernels map rows to invocations. SUBGROUP (matvec.glsl): a subgroup per
 * four rows, lanes along the row, coalesced storage-buffer reads (GPUs). LANES
 * (matvec_lanes.glsl): an invocation per row, weights and x through texel fetches (CPU
 * drivers, where memory operations per element are what costs). */
enum vk_matvec_layout { VK_MATVEC_SUBGROUP, VK_MATVEC_LANES };

struct vk_ops {
    struct vk_device *d;
    /* [type][tile]: TOK_TILE = 1 << tile; tiles 1 and VK_MATMUL_TILE built by
     * vk_ops_prepare_matvec, 2 and 4 on first use */
    struct vk_kernel matvec[VK_N_WTYPES][VK_N_TILES];
    struct vk_kernel lanes[VK_N_WTYPES][VK_N_TILES];
    /* the same for grouped MoE lists, with a one-token tail tile (ABI_SPEC_TAIL_TILE), on first use */
    struct vk_kernel lanes_grouped[VK_N_WTYPES][VK_N_TILES];
    /* LANES kernels with K split across a subgroup's lanes (matmul_ksplit): [type]
     * [token tile 0 .. VK_N_TILES - 1, or VK_KSPLIT_GROUPED: a grouped MoE tile with the half tile]
     * [shape: two units of K a lane, or one and lanes_wg >> i lanes per row at 1 + i],
     * built on first use */
    struct vk_kernel ksplit[VK_N_WTYPES][VK_KSPLIT_KINDS][VK_KSPLIT_VARIANTS];
    uint32_t ksplit_min_units;              /* K-split from this many 64-element units of K */
    enum vk_matvec_layout layout;           /* chosen by device type; LANES falls back per call */
    uint32_t lanes_wg;                      /* LANES: invocations per workgroup */
    uint32_t lanes_rows[VK_N_TILES];        /* LANES: rows per invocation, by token tile */
    struct vk_kernel rmsnorm;
    struct vk_kernel hc;          /* hc_post of the previous sublayer + hc_pre / hc_head + norm */
    struct vk_kernel hc_texel;    /* the same reading X and the sources through texel views (LANES layout, prefill) */
    struct vk_kernel norm_rope;
    struct vk_kernel compress;
    struct vk_kernel indexer;       /* scores and sorts chunks of entries (selection level 0) */
    struct vk_kernel indexer_texel; /* the same, q and float32 keys through texel views (LANES layout) */
    struct vk_kernel indexer_merge; /* merges sorted lists (the later levels) */
    struct vk_kernel attention;
    struct vk_kernel attention_texel; /* q and key rows through texel views (LANES layout) */
    /* LANES layout: a subgroup per group of 1, 2, 4 or 8 heads ([log2]), built on first use
     * for the model's head_dim (vk_ops_attention_heads) */
    struct vk_kernel attention_heads[4];
    uint32_t attention_heads_dim;
    struct vk_kernel router;
    struct vk_kernel swiglu;
    struct vk_kernel moe_group;
    /* The i-quant grids (QUANT_IQ_GRID_ENTRIES u16, 8 KiB), uploaded on the first
     * vk_ops_prepare_matvec of a type that reads them, bound at ABI_MATVEC_BIND_GRID */
    struct vk_arena *grid_arena;
    struct vk_span grid;
    uint32_t rows_per_wg;                   /* matvec rows per workgroup on this device */
    uint32_t wg;                            /* matvec workgroup size */
};

/* A weight tensor on the device in its file format: n_mat matrices of n_out rows of n_in. */
struct vk_weight {
    struct vk_span span;
    enum gguf_type type;
    uint32_t n_in, n_out, n_mat;
    uint32_t row_bytes;
    uint64_t mat_bytes;
};

int vk_ops_create(struct vk_ops *ops, struct vk_device *d, char *err, size_t err_len);
void vk_ops_destroy(struct vk_ops *ops);

/* Maps a GGUF type to its ABI_WTYPE_*, or -1 when the kernels do not read it. */
int vk_wtype(enum gguf_type type);
/* Describes a tensor of shape [n_in, n_out(, n_mat)] already placed in span; checks the
 * type and that rows hold whole blocks. */
int vk_weight_init(struct vk_weight *w, const struct vk_span *span, enum gguf_type type, uint32_t n_in, uint32_t n_out,
                   uint32_t n_mat, char *err, size_t err_len);

/* Bytes of w's span that its kernels read: up to the end of the last matrix's last row. */
uint64_t vk_weight_extent(const struct vk_weight *w);
/* A K-split view of the one-matrix weight w: `parts` matrices, matrix z holding columns
 * [z, z + 1) * n_in / parts of every row (rows keep their stride), so a matvec over
 * n_slot = parts with x_zstride = n_in / parts writes each part's partial sums to its own
 * slot. Float types only, in parts of whole ABI_LANES_FLOAT_CHUNK_BYTES (what the CPU-driver
 * kernels step by); -1 with err otherwise. */
int vk_weight_split_k(const struct vk_weight *w, uint32_t parts, struct vk_weight *out, char *err, size_t err_len);

/* y[z][t][o] (+)= scale * sum_i W_m[o][i] x[z][t][i] for t < n_tok, z < n_slot, with
 * m = ids ? ids[ids_off + z] : z. Offsets and strides count floats. */
struct vk_matvec_args {
    const struct vk_weight *w;
    const struct vk_span *x, *y, *ids;      /* ids: NULL unless picking experts */
    uint32_t x_off, x_tstride, x_zstride, x_zdiv; /* slot z reads x vector z / x_zdiv */
    uint32_t y_off, y_tstride, y_zstride;
    uint32_t n_tok, n_slot, ids_off;
    uint32_t ids_wrap, mat_add, y_wrap_add; /* fused gate+up: see ABI_MATVEC_FIELDS */
    bool grouped;                           /* ids holds moe_group lists; ids_wrap = their count */
    uint32_t group_tile;                    /* grouped, row-per-lane LANES kernels: an expert's tokens
                                               per tile (1, 2, 4; 0 or more: VK_MATMUL_TILE), its
                                               last one alone; the others walk VK_MATMUL_TILE */
    float scale;
    bool accumulate;
};
int vk_op_matvec(struct vk_recorder *r, struct vk_ops *ops, const struct vk_matvec_args *a, char *err, size_t err_len);
/* Whether a matvec of these arguments would run on the LANES kernels (else SUBGROUP). */
bool vk_matvec_uses_lanes(const struct vk_ops *ops, const struct vk_matvec_args *a);
/* Whether the LANES kernels may read these arguments' x vectors (a->x, x_off and strides)
 * through the chunk's float4 texel view; with a weight they take, the call runs on them. */
bool vk_matvec_x_in_lanes(const struct vk_ops *ops, const struct vk_matvec_args *a);
/* Whether grouped lists over weight w walk the row-per-lane LANES tiles, so group_tile
 * applies, when their x vectors pass vk_matvec_x_in_lanes (else the K-split or SUBGROUP
 * tile of VK_MATMUL_TILE tokens). The weight and the device decide it: the engine asks once
 * per layer at load (struct vk_moe). */
bool vk_weight_groups_in_small_tiles(const struct vk_ops *ops, const struct vk_weight *w);
/* Builds the matvec and matmul pipelines of a weight type (once; vk_op_matvec calls it, the
 * engine calls it at open for every type its model uses, so no token pays for it). */
int vk_ops_prepare_matvec(struct vk_ops *ops, enum gguf_type type, char *err, size_t err_len);
/* Builds every non-matvec pipeline now (the engine does at open; tests build on use). */
int vk_ops_prepare_all(struct vk_ops *ops, char *err, size_t err_len);

/* y[t][i] = x[t][i] / sqrt(mean x^2 + eps) (* w[i]) for n_rows rows of n elements. */
int vk_op_rmsnorm(struct vk_recorder *r, struct vk_ops *ops, const struct vk_span *x, uint32_t x_off,
                  uint32_t x_stride, const struct vk_span *y, uint32_t y_off, uint32_t y_stride,
                  const struct vk_span *w, uint32_t w_off, uint32_t n, uint32_t n_rows, float eps,
                  char *err, size_t err_len);

/* swiglu (abi.h) over p's rows, spans as its bindings (gu, shared rows, weights): four
 * elements an invocation where the offsets allow (sets p->flags). */
int vk_op_swiglu(struct vk_recorder *r, struct vk_ops *ops, const struct vk_span *const *spans, struct abi_swiglu_push *p,
                 char *err, size_t err_len);

/* The attention_heads kernel for n_head heads of head_dim over n_tok tokens, and how many
 * heads each workgroup takes (*heads); *k = NULL where it does not apply (not the LANES
 * layout, or a row that does not split evenly over a subgroup). */
int vk_ops_attention_heads(struct vk_ops *ops, uint32_t head_dim, uint32_t n_head, uint32_t n_tok, struct vk_kernel **k,
                           uint32_t *heads, char *err, size_t err_len);

/* Workgroups a dispatch may have along x on any device (Vulkan's least maxComputeWorkGroupCount). */
#define VK_MAX_GROUPS_X 65535u

/* The indexer's selection (abi.h) for p->n_tok tokens from p->pos0, as levels 0..n_levels
 * (n_levels = vk_indexer_levels of the last token's visible entries, chunk p->chunk and
 * merge width `group`): records level `level`, whose lists are read before the next level
 * runs (the caller puts a barrier between levels). spans: q, head weights, keys, lists, sel
 * (ABI_INDEXER_BIND_*); a token's areas of the lists span hold pairs[0] pairs from pair 0
 * and pairs[1] from pair area1 on. Fields of p other than list_off, list_tstride and flags
 * are the caller's. */
int vk_op_indexer_level(struct vk_recorder *r, struct vk_ops *ops, const struct vk_span *const spans[5],
                        const struct abi_indexer_push *p, uint32_t group, const uint64_t pairs[2], uint64_t area1,
                        uint32_t level, uint32_t n_levels, char *err, size_t err_len);

/* Records kernel k with binding i = the whole of spans[i] (spans are allocated aligned, so
 * offsets in the push block count from each span's start). A binding in k->texel_mask is
 * instead the float4 texel view of spans[i]'s whole chunk: its offsets count from the
 * chunk's start (add spans[i]->off). */
int vk_op_dispatch(struct vk_recorder *r, struct vk_ops *ops, struct vk_kernel *k,
                   const struct vk_span *const *spans, const void *push, uint32_t gx, uint32_t gy, uint32_t gz,
                   char *err, size_t err_len);

#endif
