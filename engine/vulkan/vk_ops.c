/* Pipeline set and per-operation recording (see vk_ops.h). */
#include "engine/vulkan/vk_ops.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/errmsg.h"
#include "engine/model/quant.h"
#include "shaders/abi.h"

static const char *const matvec_names[VK_N_WTYPES] = {
    [ABI_WTYPE_F32] = "matvec_f32", [ABI_WTYPE_F16] = "matvec_f16", [ABI_WTYPE_BF16] = "matvec_bf16",
    [ABI_WTYPE_Q8_0] = "matvec_q8_0", [ABI_WTYPE_MXFP4] = "matvec_mxfp4",
    [ABI_WTYPE_Q2_K] = "matvec_q2_k", [ABI_WTYPE_Q3_K] = "matvec_q3_k", [ABI_WTYPE_Q4_K] = "matvec_q4_k",
    [ABI_WTYPE_Q5_K] = "matvec_q5_k", [ABI_WTYPE_Q6_K] = "matvec_q6_k", [ABI_WTYPE_IQ2_XXS] = "matvec_iq2_xxs",
    [ABI_WTYPE_IQ2_XS] = "matvec_iq2_xs", [ABI_WTYPE_IQ2_S] = "matvec_iq2_s", [ABI_WTYPE_IQ3_XXS] = "matvec_iq3_xxs",
    [ABI_WTYPE_IQ1_S] = "matvec_iq1_s", [ABI_WTYPE_IQ1_M] = "matvec_iq1_m", [ABI_WTYPE_IQ4_NL] = "matvec_iq4_nl",
    [ABI_WTYPE_IQ4_XS] = "matvec_iq4_xs",
};
_Static_assert(VK_N_WTYPES == ABI_WTYPE_COUNT, "one matvec kernel slot per ABI weight type");
/* ggml's K-quants and i-quants have the subgroup kernel (matvec.glsl with
 * dequant_ggml.glsl); Q4_K and Q5_K also a LANES one (dequant_lanes_k.glsl), the others run
 * the subgroup kernel on CPU drivers too. */
static bool wtype_is_ggml(int t) { return t >= ABI_WTYPE_Q2_K; }
/* The i-quants with a lattice grid read it from a fifth binding (ABI_MATVEC_BIND_GRID). */
static bool wtype_has_grid(int t) { return t >= ABI_WTYPE_IQ2_XXS && t <= ABI_WTYPE_IQ1_M; }
static const char *const lanes_names[VK_N_WTYPES] = {
    [ABI_WTYPE_F32] = "matvec_lanes_f32", [ABI_WTYPE_F16] = "matvec_lanes_f16", [ABI_WTYPE_BF16] = "matvec_lanes_bf16",
    [ABI_WTYPE_Q8_0] = "matvec_lanes_q8_0", [ABI_WTYPE_MXFP4] = "matvec_lanes_mxfp4",
    [ABI_WTYPE_Q4_K] = "matvec_lanes_q4_k", [ABI_WTYPE_Q5_K] = "matvec_lanes_q5_k",
};
static const char *const ksplit_names[VK_N_WTYPES] = {
    [ABI_WTYPE_F32] = "matmul_ksplit_f32", [ABI_WTYPE_Q8_0] = "matmul_ksplit_q8_0", [ABI_WTYPE_MXFP4] = "matmul_ksplit_mxfp4",
};
/* LANES texel bindings: weights and x. */
#define LANES_TEXEL_MASK ((1u << ABI_MATVEC_BIND_W) | (1u << ABI_MATVEC_BIND_X))

int vk_wtype(enum gguf_type type)
{
    switch (type) {
    case GGUF_TYPE_F32: return ABI_WTYPE_F32;
    case GGUF_TYPE_F16: return ABI_WTYPE_F16;
    case GGUF_TYPE_BF16: return ABI_WTYPE_BF16;
    case GGUF_TYPE_Q8_0: return ABI_WTYPE_Q8_0;
    case GGUF_TYPE_MXFP4: return ABI_WTYPE_MXFP4;
    case GGUF_TYPE_Q2_K: return ABI_WTYPE_Q2_K;
    case GGUF_TYPE_Q3_K: return ABI_WTYPE_Q3_K;
    case GGUF_TYPE_Q4_K: return ABI_WTYPE_Q4_K;
    case GGUF_TYPE_Q5_K: return ABI_WTYPE_Q5_K;
    case GGUF_TYPE_Q6_K: return ABI_WTYPE_Q6_K;
    case GGUF_TYPE_IQ2_XXS: return ABI_WTYPE_IQ2_XXS;
    case GGUF_TYPE_IQ2_XS: return ABI_WTYPE_IQ2_XS;
    case GGUF_TYPE_IQ2_S: return ABI_WTYPE_IQ2_S;
    case GGUF_TYPE_IQ3_XXS: return ABI_WTYPE_IQ3_XXS;
    case GGUF_TYPE_IQ1_S: return ABI_WTYPE_IQ1_S;
    case GGUF_TYPE_IQ1_M: return ABI_WTYPE_IQ1_M;
    case GGUF_TYPE_IQ4_NL: return ABI_WTYPE_IQ4_NL;
    case GGUF_TYPE_IQ4_XS: return ABI_WTYPE_IQ4_XS;
    default: return -1;
    }
}

static int build(struct vk_ops *ops, struct vk_kernel *k, char *err, size_t err_len);
static uint32_t div_up(uint32_t a, uint32_t b) { return (a + b - 1) / b; }

/* The matvec pipeline of weight type t for token tile 1 << tile in the SUBGROUP layout
 * (matvec.glsl) or the LANES one (matvec_lanes.glsl; grouped: with the one-token tail),
 * built on first use; NULL with err. */
static struct vk_kernel *tile_kernel(struct vk_ops *ops, int t, uint32_t tile, bool lanes, bool grouped, char *err,
                                     size_t err_len)
{
    struct vk_kernel *k = !lanes ? &ops->matvec[t][tile] : grouped ? &ops->lanes_grouped[t][tile] : &ops->lanes[t][tile];
    if (k->pipe) return k;
    const uint32_t spec[ABI_SPEC_TAIL_TILE + 1] = {
        [ABI_SPEC_TOK_TILE] = 1u << tile, [ABI_SPEC_WG_SIZE] = lanes ? ops->lanes_wg : ops->wg,
        [ABI_SPEC_ROWS_PER_LANE] = ops->lanes_rows[tile], [ABI_SPEC_TAIL_TILE] = lanes && grouped,
    };
    const int rc = lanes ? vk_kernel_create_texel(ops->d, k, lanes_names[t], 4, LANES_TEXEL_MASK, sizeof(struct abi_matvec_push),
                                                  spec, ABI_SPEC_TAIL_TILE + 1, err, err_len)
                         : vk_kernel_create(ops->d, k, matvec_names[t], wtype_has_grid(t) ? 5 : 4, sizeof(struct abi_matvec_push), spec,
                                            ABI_SPEC_WG_SIZE + 1, err, err_len);
    return rc ? NULL : k;
}

int vk_ops_prepare_matvec(struct vk_ops *ops, enum gguf_type type, char *err, size_t err_len)
{
    int t = vk_wtype(type);
    if (t < 0) return errf(err, err_len, "weight type %s: no Vulkan kernel reads it", gguf_type_name(type));
    if (ops->matvec[t][0].pipe) return 0;
    if (wtype_has_grid(t) && !ops->grid_arena) {
        uint16_t table[QUANT_IQ_GRID_ENTRIES]; /* 8 KiB */
        const uint64_t bytes = sizeof table;
        quant_iq_grid_table(table);
        if (vk_arena_create(&ops->grid_arena, ops->d, VK_MEM_DEVICE, bytes, err, err_len) ||
            vk_arena_alloc(ops->grid_arena, bytes, 16, &ops->grid, err, err_len) ||
            vk_span_upload(ops->d, &ops->grid, 0, table, bytes, err, err_len)) {
            if (ops->grid_arena) vk_arena_destroy(ops->grid_arena);
            ops->grid_arena = NULL;
            return errf_prefix(err, err_len, "the i-quant grids");
        }
    }
    /* decode's tile and the prefill tile now; the tiles of 2 and 4 tokens (steps of a few
     * sessions) on first use */
    const uint32_t tiles[2] = { 0, VK_N_TILES - 1 };
    for (int i = 0; i < 2; i++)
        if (!tile_kernel(ops, t, tiles[i], false, false, err, err_len) ||
            (ops->layout == VK_MATVEC_LANES && lanes_names[t] && !tile_kernel(ops, t, tiles[i], true, false, err, err_len)))
            goto fail;
    return 0;
fail:
    for (int i = 0; i < VK_N_TILES; i++) {
        vk_kernel_destroy(ops->d, &ops->matvec[t][i]);
        vk_kernel_destroy(ops->d, &ops->lanes[t][i]);
        vk_kernel_destroy(ops->d, &ops->lanes_grouped[t][i]);
    }
    return -1;
}

int vk_ops_create(struct vk_ops *ops, struct vk_device *d, char *err, size_t err_len)
{
    memset(ops, 0, sizeof *ops);
    ops->d = d;
    /* Subgroups work on four rows at once (best on lavapipe, where one row per invocation
     * measured 2.5-4x slower for F32/BF16 because every lane's loads differ). The matvec
     * pipelines are built per weight type on first need (vk_ops_prepare_matvec). */
    ops->wg = ABI_WG_SIZE < d->subgroup_size ? d->subgroup_size : ABI_WG_SIZE;
    ops->rows_per_wg = 4 * (ops->wg / d->subgroup_size);
    /* LANES on CPU drivers: a workgroup is one SIMD register of rows, each invocation
     * walks 16 rows so every x fetch serves 16 rows (measured best on lavapipe). */
    ops->layout = d->props.deviceType == VK_PHYSICAL_DEVICE_TYPE_CPU ? VK_MATVEC_LANES : VK_MATVEC_SUBGROUP;
    /* FLASHBOX_VK_LAYOUT=subgroup runs the GPU kernels on any device: how the tests cover
     * the whole-model path of real GPUs on a CPU driver */
    const char *lay = getenv("FLASHBOX_VK_LAYOUT");
    if (lay && !strcmp(lay, "subgroup")) ops->layout = VK_MATVEC_SUBGROUP;
    ops->lanes_wg = d->subgroup_size;
    /* rows per invocation: 32 for prefill tiles; 16 for decode and the small tiles of a few
     * sessions' step, whose latency counts and whose short matrices (256 rows) need two
     * workgroups or more to keep two cores busy */
    for (int i = 0; i < VK_N_TILES; i++) ops->lanes_rows[i] = i == VK_N_TILES - 1 ? 32 : 16;
    /* The K-split kernels: batch invariance needs decode and token tiles to reduce every
     * output in one order, so they run for both or neither. As a token tile K-split beats
     * a row per lane from 4 units of K on (0.71-0.80 of the row-per-lane tile's time at
     * K = 256), but for one token it reads the block types as words, four times the
     * fetches of the row-per-lane kernel's 16-byte texels: on the small model decode took
     * 1.4-1.6x the CPU time. Decode matters more, so they are off unless
     * FLASHBOX_VK_KSPLIT=on (from 4 units) or =all (from one unit on: how the tests run
     * them on the tiny model's short rows). docs/performance.md has the figures. */
    ops->ksplit_min_units = UINT32_MAX;
    const char *ks = getenv("FLASHBOX_VK_KSPLIT");
    if (ks && !strcmp(ks, "on")) ops->ksplit_min_units = 4;
    if (ks && !strcmp(ks, "all")) ops->ksplit_min_units = 1;
    /* Row kernels (a workgroup per row or token, striding over it) run one subgroup per
     * workgroup on CPU drivers: lavapipe runs a workgroup's subgroups one after another and
     * switches between them at every barrier, so ABI_WG_SIZE invocations there cost 8
     * subgroups' barriers and idle lanes in the serial parts. One subgroup took the small
     * model's 64-token prefill from 56 to 60-62 tok/s (hc most of it). GPUs keep
     * ABI_WG_SIZE. */
    const uint32_t row_wg = ops->layout == VK_MATVEC_LANES && d->subgroup_size <= ABI_WG_SIZE ? d->subgroup_size : 0;
    const struct { struct vk_kernel *k; const char *name; uint32_t n_bind, push, texel_mask, wg; } simple[] = {
        { &ops->rmsnorm, "rmsnorm", 3, sizeof(struct abi_rmsnorm_push), 0, row_wg },
        { &ops->hc, "hc", 8, sizeof(struct abi_hc_push), 0, row_wg },
        { &ops->hc_texel, "hc_texel", 10, sizeof(struct abi_hc_push), 1u << ABI_HC_BIND_X_TEX | 1u << ABI_HC_BIND_SRC_TEX, row_wg },
        { &ops->norm_rope, "norm_rope", 5, sizeof(struct abi_norm_rope_push), 0, row_wg },
        { &ops->compress, "compress", 5, sizeof(struct abi_compress_push), 0, 0 },
        { &ops->indexer, "indexer", 5, sizeof(struct abi_indexer_push), 0, row_wg },
        { &ops->indexer_texel, "indexer_texel", 5, sizeof(struct abi_indexer_push),
          1u << ABI_INDEXER_BIND_Q | 1u << ABI_INDEXER_BIND_KEYS, row_wg },
        { &ops->indexer_merge, "indexer_merge", 2, sizeof(struct abi_indexer_merge_push), 0, row_wg },
        { &ops->attention, "attention", 7, sizeof(struct abi_attn_push), 0, 0 },
        { &ops->attention_texel, "attention_texel", 7, sizeof(struct abi_attn_push),
          1u << ABI_ATTN_BIND_Q | 1u << ABI_ATTN_BIND_RING | 1u << ABI_ATTN_BIND_COMP, 0 },
        { &ops->router, "router", 5, sizeof(struct abi_router_push), 0, row_wg },
        { &ops->swiglu, "swiglu", 3, sizeof(struct abi_swiglu_push), 0, 0 },
        { &ops->moe_group, "moe_group", 2, sizeof(struct abi_moe_group_push), 0, 0 },
    };
    /* declared here, built on first use or by vk_ops_prepare_all (compiling a pipeline is
     * the slow part of opening on lavapipe; a kernel test needs only its own) */
    for (size_t i = 0; i < sizeof simple / sizeof simple[0]; i++) {
        simple[i].k->name = simple[i].name;
        simple[i].k->n_bind = simple[i].n_bind;
        simple[i].k->push_size = simple[i].push;
        simple[i].k->texel_mask = simple[i].texel_mask;
        simple[i].k->wg = simple[i].wg;
    }
    /* attention's q registers: as many float4 per lane as the longest head row needs */
    ops->attention.attn_kv4 = ops->attention_texel.attn_kv4 = div_up(ABI_ATTN_MAX_HEAD_DIM / 4, d->subgroup_size);
    (void)err, (void)err_len;
    return 0;
}

void vk_ops_destroy(struct vk_ops *ops)
{
    if (!ops->d) return;
    for (int t = 0; t < VK_N_WTYPES; t++) {
        for (int i = 0; i < VK_N_TILES; i++) {
            vk_kernel_destroy(ops->d, &ops->matvec[t][i]);
            vk_kernel_destroy(ops->d, &ops->lanes[t][i]);
            vk_kernel_destroy(ops->d, &ops->lanes_grouped[t][i]);
        }
        for (int g = 0; g < VK_KSPLIT_KINDS; g++)
            for (int v = 0; v < VK_KSPLIT_VARIANTS; v++) vk_kernel_destroy(ops->d, &ops->ksplit[t][g][v]);
    }
    for (size_t g = 0; g < sizeof ops->attention_heads / sizeof ops->attention_heads[0]; g++)
        vk_kernel_destroy(ops->d, &ops->attention_heads[g]);
    if (ops->grid_arena) vk_arena_destroy(ops->grid_arena);
    ops->grid_arena = NULL;
    struct vk_kernel *simple[] = { &ops->rmsnorm, &ops->hc, &ops->hc_texel, &ops->norm_rope, &ops->compress,
                                   &ops->indexer, &ops->indexer_texel, &ops->indexer_merge, &ops->attention, &ops->attention_texel, &ops->router, &ops->swiglu, &ops->moe_group };
    for (size_t i = 0; i < sizeof simple / sizeof simple[0]; i++) vk_kernel_destroy(ops->d, simple[i]);
    ops->d = NULL;
}

int vk_weight_init(struct vk_weight *w, const struct vk_span *span, enum gguf_type type, uint32_t n_in, uint32_t n_out,
                   uint32_t n_mat, char *err, size_t err_len)
{
    memset(w, 0, sizeof *w);
    if (vk_wtype(type) < 0) return errf(err, err_len, "weight type %s: no Vulkan kernel reads it", gguf_type_name(type));
    uint32_t be = gguf_type_block_elems(type), bb = gguf_type_block_bytes(type);
    if (n_in % be) return errf(err, err_len, "weight rows of %u %s elements: expected a multiple of %u", n_in, gguf_type_name(type), be);
    w->span = *span;
    w->type = type;
    w->n_in = n_in;
    w->n_out = n_out;
    w->n_mat = n_mat ? n_mat : 1;
    w->row_bytes = n_in / be * bb;
    w->mat_bytes = (uint64_t)w->row_bytes * n_out;
    if (w->mat_bytes * w->n_mat > span->size)
        return errf(err, err_len, "weight [%u, %u, %u] %s needs %llu bytes, span holds %llu", n_in, n_out, w->n_mat,
                    gguf_type_name(type), (unsigned long long)(w->mat_bytes * w->n_mat), (unsigned long long)span->size);
    /* Q8_0 and 16-bit rows are read as 2-byte aligned words; MXFP4 rows at any byte. */
    if (w->row_bytes % 2 && type != GGUF_TYPE_MXFP4)
        return errf(err, err_len, "weight rows of %u bytes: kernels need an even row size", w->row_bytes);
    return 0;
}

uint64_t vk_weight_extent(const struct vk_weight *w)
{
    return (uint64_t)(w->n_mat - 1) * w->mat_bytes + (uint64_t)w->n_out * w->row_bytes;
}

int vk_weight_split_k(const struct vk_weight *w, uint32_t parts, struct vk_weight *out, char *err, size_t err_len)
{
    const bool float_type = w->type == GGUF_TYPE_F32 || w->type == GGUF_TYPE_F16 || w->type == GGUF_TYPE_BF16;
    const uint32_t part_bytes = parts ? w->row_bytes / parts : 0;
    if (!float_type || w->n_mat != 1 || parts == 0 || w->row_bytes % parts || part_bytes % ABI_LANES_FLOAT_CHUNK_BYTES)
        return errf(err, err_len, "%s rows of %u bytes (%u matrices) do not split into %u parts of whole %u-byte chunks",
                    gguf_type_name(w->type), w->row_bytes, w->n_mat, parts, ABI_LANES_FLOAT_CHUNK_BYTES);
    *out = *w;
    out->n_in = w->n_in / parts;
    out->n_mat = parts;
    out->mat_bytes = part_bytes; /* matrix z starts z parts into every row */
    return 0;
}

/* Whether the vectorised path may run: x vectors start on 16 bytes and the weight rows,
 * matrices and start offset are aligned for the type's wide loads. */
static bool vec_ok(const struct abi_matvec_push *p, enum gguf_type type)
{
    if (wtype_is_ggml(vk_wtype(type))) return false;
    if ((p->x_off | p->x_tstride | p->x_zstride) % 4) return false;
    uint32_t align = type == GGUF_TYPE_F32 ? 16 : (type == GGUF_TYPE_F16 || type == GGUF_TYPE_BF16) ? 8 : 1;
    return (p->row_bytes | p->w_off | p->w_zstride) % align == 0;
}

/* The token tile of a call (1 << tile tokens): the smallest that holds its tokens, the
 * largest for more (vk_op_matvec gives a call of more only whole largest tiles, or the
 * grouped MoE lists, which walk tiles of their own). */
static uint32_t tile_of(const struct vk_matvec_args *a)
{
    uint32_t i = 0;
    while (i + 1 < VK_N_TILES && (a->grouped || (1u << i) < a->n_tok)) i++;
    return i;
}

/* The push block both layouts share; the caller adds where w, x, y and ids start in their
 * bindings (x_off, y_off, ids_off as given here are the caller's own offsets). */
static struct abi_matvec_push matvec_push(const struct vk_matvec_args *a, uint32_t rows_per_wg)
{
    const struct vk_weight *w = a->w;
    return (struct abi_matvec_push){
        .n_in = w->n_in, .n_out = w->n_out, .n_tok = a->n_tok, .rows_per_wg = rows_per_wg, .row_bytes = w->row_bytes,
        .w_zstride = (uint32_t)w->mat_bytes,
        .x_off = a->x_off, .x_tstride = a->x_tstride, .x_zstride = a->x_zstride, .x_zdiv = a->x_zdiv ? a->x_zdiv : 1,
        .y_off = a->y_off, .y_tstride = a->y_tstride, .y_zstride = a->y_zstride, .ids_off = a->ids_off,
        .ids_wrap = a->ids_wrap, .mat_add = a->mat_add, .y_wrap_add = a->y_wrap_add,
        .flags = (a->accumulate ? ABI_MATVEC_FLAG_ACCUMULATE : 0) | (a->ids ? ABI_MATVEC_FLAG_IDS : 0) |
                 (a->grouped ? ABI_MATVEC_FLAG_GROUPED : 0),
        .scale = a->scale,
    };
}

/* K split across the lanes (matmul_ksplit; F32 and the block types): lanes per row (the
 * subgroup, or the largest power of two that K's units fill) and units of K per lane per
 * pass; lpr 0 where the row-per-lane kernels run instead. Two units (passes of 1024
 * elements) measured 10-25% faster than one for Q8_0 once K fills them.
 *
 * Batch invariance: the shape depends on the weight alone, never on the number of tokens,
 * and decode (one token) runs the same K-split kernel with a token tile of 1, so every
 * output element is reduced in one order whether its token came alone, in a prefill tile
 * or in a grouped MoE list (the kernels' per-token arithmetic does not depend on the
 * tile). The row-per-lane kernels likewise run one shader for decode and tiles. */
struct ksplit_shape { uint32_t lpr, units; };

static struct ksplit_shape ksplit_shape(const struct vk_ops *ops, const struct vk_weight *w)
{
    struct ksplit_shape k = { 0, 0 };
    const int t = vk_wtype(w->type);
    if (ops->layout != VK_MATVEC_LANES || !ops->d->subgroup_shuffle || t < 0 || !ksplit_names[t] ||
        w->n_in % ABI_KSPLIT_UNIT_ELEMS || (t == ABI_WTYPE_F32 && (w->span.off | w->mat_bytes) % 16))
        return k;
    const uint32_t units = w->n_in / ABI_KSPLIT_UNIT_ELEMS;
    if (units < ops->ksplit_min_units) return k;
    k.lpr = ops->lanes_wg;
    while (k.lpr > 1 && units < k.lpr) k.lpr /= 2;
    k.units = k.lpr == ops->lanes_wg && units >= 2 * k.lpr ? 2 : 1;
    return k;
}

/* Its pipeline: [VK_KSPLIT_*][0] two units a lane, [..][1 + i] one unit and lanes_wg >> i
 * lanes per row. */
static struct vk_kernel *ksplit_kernel(struct vk_ops *ops, int t, struct ksplit_shape k, const struct vk_matvec_args *a,
                                       uint32_t tile)
{
    uint32_t i = 0;
    while ((ops->lanes_wg >> i) > k.lpr) i++;
    return &ops->ksplit[t][a->grouped ? VK_KSPLIT_GROUPED : (int)tile][k.units == 2 ? 0 : 1 + i];
}

/* The K-split kernels read the block types as 32-bit words (F32: 16-byte texels), the
 * row-per-lane kernels every type as 16-byte texels. */
static bool lanes_reads_words(const struct vk_weight *w, struct ksplit_shape shape)
{
    return shape.lpr && (w->type == GGUF_TYPE_Q8_0 || w->type == GGUF_TYPE_MXFP4);
}

/* Whether the LANES kernels take weight w, given its K-split shape. */
static bool lanes_fit_weight(const struct vk_ops *ops, const struct vk_weight *w, struct ksplit_shape shape)
{
    const int t = vk_wtype(w->type);
    if (ops->layout != VK_MATVEC_LANES || t < 0 || !lanes_names[t]) return false;
    /* rows of whole chunks (64-element units, whose MXFP4 rows may start 2 bytes into a
     * word, for the K-split kernels; Q4_K / Q5_K: super-blocks) from an aligned start */
    const bool words = lanes_reads_words(w, shape);
    const bool block_type = w->type == GGUF_TYPE_Q8_0 || w->type == GGUF_TYPE_MXFP4;
    const uint32_t unit = wtype_is_ggml(t) ? gguf_type_block_bytes(w->type)
                          : block_type    ? ABI_LANES_BLOCK_CHUNK_BYTES
                                          : ABI_LANES_FLOAT_CHUNK_BYTES;
    const bool rows_fit = shape.lpr || w->row_bytes % unit == 0;
    return (words ? w->span.texels_u32 : w->span.texels_u32x4) && rows_fit && w->span.off % (words ? 4 : 16) == 0 &&
           w->span.off + vk_weight_extent(w) <= UINT32_MAX;
}

bool vk_matvec_x_in_lanes(const struct vk_ops *ops, const struct vk_matvec_args *a)
{
    /* x vectors of whole float4 */
    return ops->layout == VK_MATVEC_LANES && a->x->texels_f32x4 && a->x->off % 16 == 0 &&
           (a->x_off | a->x_tstride | a->x_zstride) % 4 == 0 && a->x->off / 4 + a->x_off <= UINT32_MAX;
}

bool vk_matvec_uses_lanes(const struct vk_ops *ops, const struct vk_matvec_args *a)
{
    return lanes_fit_weight(ops, a->w, ksplit_shape(ops, a->w)) && vk_matvec_x_in_lanes(ops, a);
}

bool vk_weight_groups_in_small_tiles(const struct vk_ops *ops, const struct vk_weight *w)
{
    const struct ksplit_shape shape = ksplit_shape(ops, w);
    return !shape.lpr && lanes_fit_weight(ops, w, shape);
}

/* The LANES kernels read weights and x through the chunks' texel views, so a weight of any
 * size is one binding; only y is a storage range. */
static int matvec_lanes(struct vk_recorder *r, struct vk_ops *ops, const struct vk_matvec_args *a, int t,
                        struct ksplit_shape shape, uint32_t tile_i, char *err, size_t err_len)
{
    const struct vk_weight *w = a->w;
    const uint32_t tile = 1u << tile_i;
    const struct vk_kernel *k = NULL;
    if (shape.lpr) {
        struct vk_kernel *ks = ksplit_kernel(ops, t, shape, a, tile_i);
        const uint32_t spec[ABI_SPEC_TAIL_TILE + 1] = {
            [ABI_SPEC_TOK_TILE] = tile, [ABI_SPEC_WG_SIZE] = ops->lanes_wg, [ABI_SPEC_KSPLIT_UNITS] = shape.units,
            [ABI_SPEC_KSPLIT_LPR] = shape.lpr, [ABI_SPEC_TAIL_TILE] = a->grouped,
        };
        if (!ks->pipe && vk_kernel_create_texel(ops->d, ks, ksplit_names[t], 4, LANES_TEXEL_MASK, sizeof(struct abi_matvec_push),
                                                spec, ABI_SPEC_TAIL_TILE + 1, err, err_len))
            return -1;
        k = ks;
    } else {
        /* grouped lists walk the tile the caller asked for, then their last token alone */
        if (a->grouped && a->group_tile)
            for (tile_i = 0; tile_i + 1 < VK_N_TILES && (1u << tile_i) < a->group_tile;) tile_i++;
        if (!(k = tile_kernel(ops, t, tile_i, true, a->grouped, err, err_len))) return -1;
    }
    VkDescriptorBufferInfo b[4] = { 0 };
    VkBufferView v[4] = { lanes_reads_words(w, shape) ? w->span.texels_u32 : w->span.texels_u32x4, a->x->texels_f32x4,
                          VK_NULL_HANDLE, VK_NULL_HANDLE };
    uint64_t rel_y, rel_i = 0;
    if (vk_span_range(ops->d, a->y, 0, a->y->size, &b[2], &rel_y, err, err_len)) return errf_prefix(err, err_len, "matvec output");
    const struct vk_span *ids = a->ids ? a->ids : a->y; /* bound but unread without ids */
    if (vk_span_range(ops->d, ids, 0, ids->size, &b[3], &rel_i, err, err_len)) return errf_prefix(err, err_len, "matvec ids");
    struct abi_matvec_push p = matvec_push(a, ops->lanes_wg * ops->lanes_rows[tile_i]);
    /* texel views cover the whole chunk: weights and x start at their span's place in it */
    p.w_off = (uint32_t)w->span.off;
    p.x_off += (uint32_t)(a->x->off / 4);
    p.y_off += (uint32_t)(rel_y / 4);
    p.ids_off += (uint32_t)(rel_i / 4);
    uint32_t n_slot = a->n_slot ? a->n_slot : 1;
    uint32_t gy = a->grouped ? 1 : div_up(a->n_tok, tile);
    return vk_recorder_dispatch_texel(r, k, b, v, &p, div_up(w->n_out, p.rows_per_wg), gy, n_slot, err, err_len);
}

/* One dispatch (or one per row range) of the call's tile. */
static int matvec_tile(struct vk_recorder *r, struct vk_ops *ops, const struct vk_matvec_args *a, int t, char *err,
                       size_t err_len)
{
    const struct vk_weight *w = a->w;
    const struct vk_device *d = ops->d;
    const uint32_t tile_i = tile_of(a), tile = 1u << tile_i;
    const struct ksplit_shape shape = ksplit_shape(ops, w);
    if (lanes_fit_weight(ops, w, shape) && vk_matvec_x_in_lanes(ops, a))
        return matvec_lanes(r, ops, a, t, shape, tile_i, err, err_len);
    const struct vk_kernel *k = tile_kernel(ops, t, tile_i, false, false, err, err_len);
    if (!k) return -1;

    VkDescriptorBufferInfo b[5];
    uint64_t rel_x, rel_y, rel_i = 0;
    if (k->n_bind > ABI_MATVEC_BIND_GRID) { /* the i-quant grids, whole, at offset 0 of their own buffer */
        uint64_t rel_g;
        if (vk_span_range(d, &ops->grid, 0, ops->grid.size, &b[ABI_MATVEC_BIND_GRID], &rel_g, err, err_len))
            return errf_prefix(err, err_len, "matvec i-quant grids");
        if (rel_g) return errf(err, err_len, "matvec: the i-quant grids are bound %u bytes into their range, expected 0", (unsigned)rel_g);
    }
    if (vk_span_range(d, a->x, 0, a->x->size, &b[1], &rel_x, err, err_len) ||
        vk_span_range(d, a->y, 0, a->y->size, &b[2], &rel_y, err, err_len))
        return errf_prefix(err, err_len, "matvec activations");
    const struct vk_span *ids = a->ids ? a->ids : a->x; /* bound but unread without ids */
    if (vk_span_range(d, ids, 0, ids->size, &b[3], &rel_i, err, err_len)) return errf_prefix(err, err_len, "matvec ids");

    struct abi_matvec_push p = matvec_push(a, ops->rows_per_wg);
    p.x_off += (uint32_t)(rel_x / 4);
    p.ids_off += (uint32_t)(rel_i / 4);
    uint32_t n_slot = a->n_slot ? a->n_slot : 1;
    if (a->ids || n_slot > 1) {
        /* Expert matrices are picked on the device: the whole tensor is one binding. */
        uint64_t rel_w;
        if (vk_span_range(d, &w->span, 0, vk_weight_extent(w), &b[0], &rel_w, err, err_len))
            return errf_prefix(err, err_len, "matvec expert weights");
        if (vk_weight_extent(w) > UINT32_MAX) return errf(err, err_len, "matvec: expert tensor over 4 GiB");
        p.w_off = (uint32_t)rel_w;
        p.y_off = a->y_off + (uint32_t)(rel_y / 4);
        if (vec_ok(&p, w->type)) p.flags |= ABI_MATVEC_FLAG_VEC;
        /* grouped slots walk their own token tiles: one workgroup row per expert */
        uint32_t gy = a->grouped ? 1 : div_up(a->n_tok, tile);
        return vk_recorder_dispatch(r, k, b, &p, div_up(w->n_out, p.rows_per_wg), gy, n_slot, err, err_len);
    }
    /* One matrix: split the rows so every binding stays under maxStorageBufferRange. */
    uint64_t fit = (d->max_range - d->storage_align) / w->row_bytes;
    if (fit == 0) return errf(err, err_len, "matvec: one row of %u bytes exceeds the binding limit", w->row_bytes);
    uint32_t chunk_rows = fit >= w->n_out ? w->n_out : (uint32_t)(fit / ops->rows_per_wg * ops->rows_per_wg);
    if (chunk_rows == 0) chunk_rows = (uint32_t)fit;
    for (uint32_t row0 = 0; row0 < w->n_out; row0 += chunk_rows) {
        uint32_t rows = w->n_out - row0 < chunk_rows ? w->n_out - row0 : chunk_rows;
        uint64_t rel_w;
        if (vk_span_range(d, &w->span, (uint64_t)row0 * w->row_bytes, (uint64_t)rows * w->row_bytes, &b[0], &rel_w, err, err_len))
            return errf_prefix(err, err_len, "matvec weights");
        p.w_off = (uint32_t)rel_w;
        p.n_out = rows;
        p.y_off = a->y_off + (uint32_t)(rel_y / 4) + row0;
        p.flags = (p.flags & ~ABI_MATVEC_FLAG_VEC) | (vec_ok(&p, w->type) ? ABI_MATVEC_FLAG_VEC : 0);
        if (vk_recorder_dispatch(r, k, b, &p, div_up(rows, p.rows_per_wg), div_up(a->n_tok, tile), 1, err, err_len)) return -1;
    }
    return 0;
}

int vk_op_matvec(struct vk_recorder *r, struct vk_ops *ops, const struct vk_matvec_args *a, char *err, size_t err_len)
{
    const int t = vk_wtype(a->w->type);
    if (t < 0 || a->n_tok == 0) return errf(err, err_len, "matvec: bad weight type or zero tokens");
    if (vk_ops_prepare_matvec(ops, a->w->type, err, err_len)) return -1;
    const uint32_t whole = a->n_tok / VK_MATMUL_TILE * VK_MATMUL_TILE;
    if (a->grouped || whole == 0 || whole == a->n_tok) return matvec_tile(r, ops, a, t, err, err_len);
    /* whole tiles, then the rest in the smallest tile that holds it (both dispatches write
     * disjoint rows of y and read x only) */
    struct vk_matvec_args head = *a, rest = *a;
    head.n_tok = whole;
    rest.n_tok = a->n_tok - whole;
    rest.x_off += whole * a->x_tstride;
    rest.y_off += whole * a->y_tstride;
    return matvec_tile(r, ops, &head, t, err, err_len) || matvec_tile(r, ops, &rest, t, err, err_len) ? -1 : 0;
}

int vk_op_rmsnorm(struct vk_recorder *r, struct vk_ops *ops, const struct vk_span *x, uint32_t x_off,
                  uint32_t x_stride, const struct vk_span *y, uint32_t y_off, uint32_t y_stride,
                  const struct vk_span *w, uint32_t w_off, uint32_t n, uint32_t n_rows, float eps,
                  char *err, size_t err_len)
{
    VkDescriptorBufferInfo b[3];
    uint64_t rx, ry, rw;
    const struct vk_span *ws = w ? w : x;
    if (vk_span_range(ops->d, x, 0, x->size, &b[0], &rx, err, err_len) ||
        vk_span_range(ops->d, y, 0, y->size, &b[1], &ry, err, err_len) ||
        vk_span_range(ops->d, ws, 0, ws->size, &b[2], &rw, err, err_len))
        return errf_prefix(err, err_len, "rmsnorm");
    struct abi_rmsnorm_push p = {
        .n = n, .n_rows = n_rows, .x_off = x_off + (uint32_t)(rx / 4), .x_stride = x_stride,
        .y_off = y_off + (uint32_t)(ry / 4), .y_stride = y_stride, .w_off = w_off + (uint32_t)(rw / 4),
        .flags = w ? ABI_RMSNORM_FLAG_WEIGHT : 0, .eps = eps,
    };
    if (build(ops, &ops->rmsnorm, err, err_len)) return -1;
    return vk_recorder_dispatch(r, &ops->rmsnorm, b, &p, n_rows, 1, 1, err, err_len);
}

int vk_op_swiglu(struct vk_recorder *r, struct vk_ops *ops, const struct vk_span *const *spans, struct abi_swiglu_push *p,
                 char *err, size_t err_len)
{
    const bool vec4 = (p->n_ff | p->u_off | p->sh_off | p->sh_tstride) % 4 == 0;
    p->flags = vec4 ? ABI_SWIGLU_FLAG_VEC4 : 0;
    const uint32_t per_wg = ABI_WG_SIZE * (vec4 ? 4 : 1);
    return vk_op_dispatch(r, ops, &ops->swiglu, spans, p, div_up(p->n_ff, per_wg), p->n_rows, 1, err, err_len);
}

static int build(struct vk_ops *ops, struct vk_kernel *k, char *err, size_t err_len)
{
    if (k->pipe) return 0;
    /* creation starts the kernel afresh */
    const uint32_t texel_mask = k->texel_mask, wg = k->wg, attn_kv4 = k->attn_kv4;
    /* ids 0..n-1 are all given; those the shader lacks are ignored, and a workgroup size of
     * 0 is not allowed, so unspecialized kernels get ABI_WG_SIZE, their default */
    const uint32_t spec[ABI_SPEC_ATTN_KV4 + 1] = { [ABI_SPEC_WG_SIZE] = wg ? wg : ABI_WG_SIZE, [ABI_SPEC_ATTN_KV4] = attn_kv4 };
    const uint32_t n_spec = attn_kv4 ? ABI_SPEC_ATTN_KV4 + 1 : wg ? ABI_SPEC_WG_SIZE + 1 : 0;
    if (vk_kernel_create_texel(ops->d, k, k->name, k->n_bind, texel_mask, k->push_size, n_spec ? spec : NULL, n_spec, err,
                               err_len))
        return -1;
    k->wg = wg;
    k->attn_kv4 = attn_kv4;
    return 0;
}

int vk_ops_attention_heads(struct vk_ops *ops, uint32_t head_dim, uint32_t n_head, uint32_t n_tok, struct vk_kernel **k,
                           uint32_t *heads, char *err, size_t err_len)
{
    *k = NULL;
    const uint32_t sg = ops->lanes_wg;
    if (ops->layout != VK_MATVEC_LANES || !ops->d->subgroup_shuffle || head_dim % (4 * sg) || head_dim > ABI_ATTN_MAX_HEAD_DIM ||
        (ops->attention_heads_dim && ops->attention_heads_dim != head_dim))
        return 0;
    /* up to 8 heads share each key fetch; fewer while that leaves under two workgroups
     * (lavapipe runs workgroups on all cores, a workgroup on one) */
    uint32_t g = 3;
    while (g > 0 && (n_head % (1u << g) || (n_head >> g) * n_tok < 2)) g--;
    struct vk_kernel *kk = &ops->attention_heads[g];
    if (!kk->pipe) {
        const uint32_t spec[ABI_SPEC_ATTN_KV4 + 1] = { [ABI_SPEC_WG_SIZE] = sg, [ABI_SPEC_ATTN_HEADS] = 1u << g,
                                                       [ABI_SPEC_ATTN_KV4] = head_dim / 4 / sg };
        if (vk_kernel_create_texel(ops->d, kk, "attention_heads", 7,
                                   1u << ABI_ATTN_BIND_Q | 1u << ABI_ATTN_BIND_RING | 1u << ABI_ATTN_BIND_COMP,
                                   sizeof(struct abi_attn_push), spec, ABI_SPEC_ATTN_KV4 + 1, err, err_len))
            return -1;
        ops->attention_heads_dim = head_dim;
    }
    *k = kk;
    *heads = 1u << g;
    return 0;
}

int vk_ops_prepare_all(struct vk_ops *ops, char *err, size_t err_len)
{
    struct vk_kernel *all[] = { &ops->rmsnorm, &ops->hc, &ops->norm_rope, &ops->compress, &ops->indexer,
                                &ops->indexer_merge, &ops->attention, &ops->router, &ops->swiglu, &ops->moe_group };
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (build(ops, all[i], err, err_len)) return -1;
    /* the texel variants run only in the LANES layout (CPU drivers) */
    if (ops->layout == VK_MATVEC_LANES && (build(ops, &ops->hc_texel, err, err_len) || build(ops, &ops->attention_texel, err, err_len) ||
                                           build(ops, &ops->indexer_texel, err, err_len)))
        return -1;
    return 0;
}

int vk_op_indexer_level(struct vk_recorder *r, struct vk_ops *ops, const struct vk_span *const spans[5],
                        const struct abi_indexer_push *p, uint32_t group, const uint64_t pairs[2], uint64_t area1,
                        uint32_t level, uint32_t n_levels, char *err, size_t err_len)
{
    const uint64_t n_vis = ((uint64_t)p->pos0 + p->n_tok) / 4; /* the last token's: the most lists */
    const uint32_t flags = level == n_levels ? ABI_INDEXER_FLAG_FINAL : 0;
    const uint64_t off[2] = { 0, area1 };
    /* the input lists of this level (level 0: the chunks) */
    uint64_t span = p->chunk, lists = (n_vis + p->chunk - 1) / p->chunk;
    for (uint32_t l = 1; l < level; l++) {
        span *= group;
        lists = (lists + group - 1) / group;
    }
    const uint64_t wg = ops->indexer_merge.wg ? ops->indexer_merge.wg : ABI_WG_SIZE;
    const uint64_t stride = span < p->topk ? span : p->topk, out_span = span * group;
    /* a merge spreads an output list's candidates over `parts` workgroups */
    const uint64_t parts = (group * stride + wg * ABI_INDEXER_MERGE_PER_INVOCATION - 1) / (wg * ABI_INDEXER_MERGE_PER_INVOCATION);
    const uint64_t gx = level ? (lists + group - 1) / group * parts : lists;
    if (gx > VK_MAX_GROUPS_X)
        return errf(err, err_len, "indexer level %u: %llu workgroups, past the %u a dispatch may have (%llu entries in chunks of %u)",
                    level, (unsigned long long)gx, VK_MAX_GROUPS_X, (unsigned long long)n_vis, p->chunk);
    if (level == 0) {
        struct abi_indexer_push q = *p;
        q.list_off = 0;
        q.list_tstride = (uint32_t)pairs[0];
        q.flags = flags;
        /* CPU drivers read q and float32 keys through their chunks' float4 texel views (the
         * score loop is the indexer's time deep in the context; the views cannot unpack
         * stored f16/fp8 keys, which indexer.comp does) */
        const struct vk_span *sq = spans[ABI_INDEXER_BIND_Q], *sk = spans[ABI_INDEXER_BIND_KEYS];
        const bool texel = ops->layout == VK_MATVEC_LANES && p->kv == ABI_KV_F32 && p->dim % 4 == 0 &&
                           p->key_words % 4 == 0 && p->q_off % 4 == 0 && p->keys_off % 4 == 0 && sq->texels_f32x4 &&
                           sk->texels_f32x4 && sq->off % 16 == 0 && sk->off % 16 == 0 &&
                           sq->off / 4 + p->q_off <= INT32_MAX && sk->off / 4 + p->keys_off <= INT32_MAX;
        if (texel) {
            q.q_off += (uint32_t)(sq->off / 4);
            q.keys_off += (uint32_t)(sk->off / 4);
        }
        return vk_op_dispatch(r, ops, texel ? &ops->indexer_texel : &ops->indexer, spans, &q, (uint32_t)gx, p->n_tok, 1, err,
                              err_len);
    }
    struct abi_indexer_merge_push m = {
        .topk = p->topk, .pos0 = p->pos0, .n_tok = p->n_tok, .span = (uint32_t)span, .group = group, .parts = (uint32_t)parts,
        .in_off = (uint32_t)off[(level - 1) % 2], .in_tstride = (uint32_t)pairs[(level - 1) % 2],
        .out_off = (uint32_t)off[level % 2], .out_tstride = (uint32_t)pairs[level % 2],
        .out_stride = (uint32_t)(out_span < p->topk ? out_span : p->topk), .sel_off = p->sel_off, .flags = flags,
    };
    const struct vk_span *b[2] = { spans[ABI_INDEXER_BIND_LISTS], spans[ABI_INDEXER_BIND_SEL] };
    return vk_op_dispatch(r, ops, &ops->indexer_merge, b, &m, (uint32_t)gx, p->n_tok, 1, err, err_len);
}

int vk_op_dispatch(struct vk_recorder *r, struct vk_ops *ops, struct vk_kernel *k,
                   const struct vk_span *const *spans, const void *push, uint32_t gx, uint32_t gy, uint32_t gz,
                   char *err, size_t err_len)
{
    if (build(ops, k, err, err_len)) return -1;
    VkDescriptorBufferInfo b[VK_KERNEL_MAX_BINDINGS] = { 0 };
    VkBufferView v[VK_KERNEL_MAX_BINDINGS] = { 0 };
    for (uint32_t i = 0; i < k->n_bind; i++) {
        if ((k->texel_mask >> i) & 1u) {
            v[i] = spans[i]->texels_f32x4;
            if (!v[i]) return errf(err, err_len, "%s binding %u: the span's chunk has no float4 texel view", k->name, i);
            continue;
        }
        uint64_t rel;
        if (vk_span_range(ops->d, spans[i], 0, spans[i]->size, &b[i], &rel, err, err_len))
            return errf_prefix(err, err_len, "%s binding %u", k->name, i);
        if (rel) return errf(err, err_len, "%s binding %u: span not aligned to the storage alignment", k->name, i);
    }
    return vk_recorder_dispatch_texel(r, k, b, k->texel_mask ? v : NULL, push, gx, gy, gz, err, err_len);
}
