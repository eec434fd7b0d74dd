/* Every Vulkan kernel against the CPU reference on random inputs over edge shapes (sizes
 * that are not multiples of the workgroup or block, one token, many tokens), with guard
 * words around outputs to catch out-of-range writes. Skipped without any Vulkan device. */
#include <stdlib.h>

#include "engine/model/quant.h"
#include "engine/kv_store.h"
#include "engine/vulkan/vk_internal.h"
#include "tests/vk_fixture.h"
#include "shaders/abi.h"

/* Quantizes n_rows rows of n_in floats to type into a fresh buffer (*bytes long) and
 * replaces w by the dequantized values, which the reference then uses. */
static uint8_t *quantize_rows(float *w, uint32_t n_in, uint32_t n_rows, enum gguf_type type, uint64_t *bytes)
{
    uint32_t row_bytes = n_in / gguf_type_block_elems(type) * gguf_type_block_bytes(type);
    uint8_t *q = calloc(n_rows, row_bytes);
    for (uint32_t r = 0; r < n_rows; r++) {
        float *src = w + (size_t)r * n_in;
        uint8_t *dst = q + (size_t)r * row_bytes;
        switch (type) {
        case GGUF_TYPE_F32: memcpy(dst, src, (size_t)n_in * 4); break;
        case GGUF_TYPE_F16: for (uint32_t i = 0; i < n_in; i++) { uint16_t h = f32_to_fp16(src[i]); memcpy(dst + 2 * i, &h, 2); } break;
        case GGUF_TYPE_BF16: for (uint32_t i = 0; i < n_in; i++) { uint16_t h = f32_to_bf16(src[i]); memcpy(dst + 2 * i, &h, 2); } break;
        case GGUF_TYPE_Q8_0: quantize_row_q8_0(src, (struct block_q8_0 *)dst, n_in); break;
        case GGUF_TYPE_MXFP4: quantize_row_mxfp4(src, (struct block_mxfp4 *)dst, n_in); break;
        default: { /* ggml's K-quants and i-quants: random valid blocks, scale 1/64 */
            uint64_t seed = 0x9e37 + r;
            quant_random_blocks(type, dst, n_in / gguf_type_block_elems(type), &seed, f32_to_fp16(1.0f / 64));
            break;
        }
        }
        dequant_row(type, dst, src, n_in);
    }
    *bytes = (uint64_t)n_rows * row_bytes;
    return q;
}

struct mv_case {
    uint32_t n_in, n_out, n_tok, n_mat, n_slot;
    bool use_ids, accumulate;
    bool lanes;     /* shaped for the LANES kernels: must run on them when that layout is on */
};

/* Runs one matvec case of the given type; returns the NMSE (or 1e9 on a harness failure). */
static double run_matvec(struct vk_fixture *f, enum gguf_type type, struct mv_case c, uint64_t seed)
{
    uint64_t rng = seed;
    uint32_t n_mat = c.n_mat ? c.n_mat : 1, n_slot = c.n_slot ? c.n_slot : 1;
    size_t n_w = (size_t)n_mat * c.n_out * c.n_in;
    float *w = malloc(n_w * 4);
    for (size_t i = 0; i < n_w; i++) w[i] = vk_test_rand(&rng);
    uint64_t wbytes;
    uint8_t *wq = quantize_rows(w, c.n_in, n_mat * c.n_out, type, &wbytes);

    /* x: [n_slot][n_tok][n_in] (slot stride 0 when slots share x). */
    uint32_t x_slots = c.use_ids && c.n_slot > 1 ? n_slot : 1;
    size_t n_x = (size_t)x_slots * c.n_tok * c.n_in;
    float *x = malloc(n_x * 4);
    for (size_t i = 0; i < n_x; i++) x[i] = vk_test_rand(&rng);
    int32_t ids[16];
    for (uint32_t z = 0; z < n_slot; z++) ids[z] = (int32_t)((z * 7 + 3) % n_mat);

    size_t n_y = (size_t)n_slot * c.n_tok * c.n_out;
    float *y = malloc((n_y + 2 * VK_GUARD) * 4);
    double *ref = malloc(n_y * sizeof *ref);
    vk_guard_fill(y, n_y);
    for (size_t i = 0; i < n_y; i++) y[VK_GUARD + i] = vk_test_rand(&rng);
    for (uint32_t z = 0; z < n_slot; z++)
        for (uint32_t t = 0; t < c.n_tok; t++)
            for (uint32_t o = 0; o < c.n_out; o++) {
                uint32_t m = c.use_ids ? (uint32_t)ids[z] : z;
                const float *row = w + ((size_t)m * c.n_out + o) * c.n_in;
                const float *xv = x + ((size_t)(x_slots > 1 ? z : 0) * c.n_tok + t) * c.n_in;
                double s = 0;
                for (uint32_t i = 0; i < c.n_in; i++) s += (double)row[i] * xv[i];
                size_t yi = ((size_t)z * c.n_tok + t) * c.n_out + o;
                ref[yi] = 0.5 * s + (c.accumulate ? y[VK_GUARD + yi] : 0.0);
            }

    double nmse = 1e9;
    struct vk_span sw, sx, sy, si;
    struct vk_weight vw;
    if (vk_fixture_put(f, wq, wbytes, &sw) || vk_fixture_put(f, x, n_x * 4, &sx) ||
        vk_fixture_put(f, y, (n_y + 2 * VK_GUARD) * 4, &sy) || vk_fixture_put(f, ids, sizeof ids, &si) ||
        vk_weight_init(&vw, &sw, type, c.n_in, c.n_out, n_mat, f->err, sizeof f->err))
        goto out;
    struct vk_matvec_args a = {
        .w = &vw, .x = &sx, .y = &sy, .ids = c.use_ids ? &si : NULL,
        .x_tstride = c.n_in, .x_zstride = x_slots > 1 ? c.n_tok * c.n_in : 0,
        .y_off = VK_GUARD, .y_tstride = c.n_out, .y_zstride = c.n_tok * c.n_out,
        .n_tok = c.n_tok, .n_slot = n_slot, .scale = 0.5f, .accumulate = c.accumulate,
    };
    if (c.lanes && f->ops.layout == VK_MATVEC_LANES && !vk_matvec_uses_lanes(&f->ops, &a)) {
        test_fail_at(__FILE__, __LINE__, "%s [%u,%u] x %u tokens: expected the LANES kernel", gguf_type_name(type), c.n_in, c.n_out, c.n_tok);
        goto out;
    }
    if (vk_recorder_begin(f->rec, f->err, sizeof f->err) || vk_op_matvec(f->rec, &f->ops, &a, f->err, sizeof f->err) ||
        vk_recorder_submit(f->rec, f->err, sizeof f->err) ||
        vk_span_download(f->d, &sy, 0, y, (n_y + 2 * VK_GUARD) * 4, f->err, sizeof f->err))
        goto out;
    if (!vk_guard_intact(y, n_y)) {
        test_fail_at(__FILE__, __LINE__, "%s [%u,%u] x %u tokens: write outside the output", gguf_type_name(type), c.n_in, c.n_out, c.n_tok);
        goto out;
    }
    nmse = vk_test_nmse(y + VK_GUARD, ref, n_y);
out:
    if (nmse >= 1e9) test_fail_at(__FILE__, __LINE__, "%s", f->err);
    free(w); free(wq); free(x); free(y); free(ref);
    return nmse;
}

static const enum gguf_type all_types[] = { GGUF_TYPE_F32, GGUF_TYPE_F16, GGUF_TYPE_BF16, GGUF_TYPE_Q8_0, GGUF_TYPE_MXFP4 };

static void check_cases(struct vk_fixture *f, const struct mv_case *cases, size_t n_cases, bool quant_only)
{
    for (size_t ti = 0; ti < sizeof all_types / sizeof all_types[0]; ti++) {
        enum gguf_type type = all_types[ti];
        for (size_t ci = 0; ci < n_cases; ci++) {
            struct mv_case c = cases[ci];
            bool float_type = type == GGUF_TYPE_F32 || type == GGUF_TYPE_F16 || type == GGUF_TYPE_BF16;
            if (c.n_in % 32 && !float_type) continue;
            if (quant_only && float_type && c.n_in % 32 == 0 && ci % 2) continue;
            double e = run_matvec(f, type, c, 1000 + ci * 31 + ti);
            /* The weights are the same dequantized values on both sides; only float32
             * accumulation order differs from the float64 reference. */
            if (!(e < 1e-10))
                test_fail_at(__FILE__, __LINE__, "matvec %s [%u in, %u out] x %u tokens (mats %u, slots %u, ids %d, acc %d): nmse %.3g",
                             gguf_type_name(type), c.n_in, c.n_out, c.n_tok, c.n_mat, c.n_slot, c.use_ids, c.accumulate, e);
        }
    }
}

TEST(vk_matvec_matches_reference_for_every_weight_type_on_edge_shapes)
{
    struct vk_fixture f;
    if (vk_fixture_open(&f)) return;
    static const struct mv_case cases[] = {
        { 32, 1, 1, 0, 0, false, false, false },     /* one block, one row */
        { 96, 37, 1, 0, 0, false, false, false },    /* rows not a multiple of the workgroup */
        { 37, 19, 1, 0, 0, false, false, false },    /* float types: odd row length, tail loop */
        { 1024, 70, 1, 0, 0, false, true, false },   /* long rows, accumulate into y */
        { 256, 67, 3, 0, 0, false, false, false },   /* a few tokens (the 4-token tile, one clamped) */
        { 96, 37, 2, 0, 0, false, true, false },     /* two tokens (the 2-token tile), accumulate */
    };
    check_cases(&f, cases, sizeof cases / sizeof cases[0], false);
    vk_fixture_close(&f);
}

/* Every case for every type in the fixture's layout: the same dequantized values on both
 * sides, so only float32 accumulation order differs from the float64 reference. */
static void check_types(struct vk_fixture *f, const enum gguf_type *types, size_t n_types, const struct mv_case *cases,
                        size_t n_cases, uint64_t seed)
{
    for (size_t ti = 0; ti < n_types; ti++)
        for (size_t ci = 0; ci < n_cases; ci++) {
            const struct mv_case c = cases[ci];
            double e = run_matvec(f, types[ti], c, seed + ci * 17 + ti);
            if (!(e < 1e-10))
                test_fail_at(__FILE__, __LINE__, "matvec %s (%s layout) [%u in, %u out] x %u tokens (mats %u, slots %u, ids %d, acc %d): nmse %.3g",
                             gguf_type_name(types[ti]), f->ops.layout == VK_MATVEC_LANES ? "lanes" : "subgroup", c.n_in, c.n_out,
                             c.n_tok, c.n_mat, c.n_slot, c.use_ids, c.accumulate, e);
        }
}

/* ggml's K-quants and i-quants (the subgroup kernel with dequant_ggml.glsl): decode, token
 * tiles with a remainder, experts through ids with shared and per-slot x, accumulation, rows
 * that are not a multiple of the workgroup, more rows than one workgroup covers. */
TEST(vk_matvec_matches_reference_for_ggml_k_and_i_quants)
{
    struct vk_fixture f;
    if (vk_fixture_open(&f)) return;
    static const enum gguf_type ggml_types[] = {
        GGUF_TYPE_Q2_K, GGUF_TYPE_Q3_K, GGUF_TYPE_Q4_K, GGUF_TYPE_Q5_K, GGUF_TYPE_Q6_K,
        GGUF_TYPE_IQ2_XXS, GGUF_TYPE_IQ2_XS, GGUF_TYPE_IQ2_S, GGUF_TYPE_IQ3_XXS, GGUF_TYPE_IQ4_NL, GGUF_TYPE_IQ4_XS,
        GGUF_TYPE_IQ1_S, GGUF_TYPE_IQ1_M, /* their grid from a buffer */
    };
    static const struct mv_case cases[] = {
        { 256, 37, 1, 0, 0, false, false, false },   /* one super-block, odd rows */
        { 768, 70, 3, 0, 0, false, true, false },    /* three super-blocks, a few tokens, accumulate */
        { 512, 45, 21, 0, 0, false, false, false },  /* token tiles with a remainder */
        { 256, 24, 1, 8, 3, true, false, false },    /* experts through ids, shared x */
        { 512, 17, 9, 5, 4, true, true, false },     /* per-slot x, a tile, accumulate */
        { 256, 300, 1, 0, 0, false, false, false },  /* more rows than one workgroup covers */
    };
    check_types(&f, ggml_types, sizeof ggml_types / sizeof ggml_types[0], cases, sizeof cases / sizeof cases[0], 500);
    vk_fixture_close(&f);
}

/* Q4_K and Q5_K on both row layouts: the LANES kernel (a super-block per chunk; it must be
 * the one that runs where the device picks LANES) and the subgroup one, on decode, token
 * tiles with a remainder, the small tiles of a few sessions, experts through ids with shared
 * and per-slot x, accumulation and more rows than one workgroup covers. */
TEST(vk_matvec_lanes_q4_k_and_q5_k_match_reference)
{
    struct vk_fixture f;
    if (vk_fixture_open(&f)) return;
    static const enum gguf_type types[] = { GGUF_TYPE_Q4_K, GGUF_TYPE_Q5_K };
    static const struct mv_case cases[] = {
        { 256, 37, 1, 0, 0, false, false, true },    /* one super-block, odd rows */
        { 768, 70, 1, 0, 0, false, true, true },     /* three, accumulate */
        { 512, 45, 21, 0, 0, false, false, true },   /* token tiles with a remainder */
        { 512, 24, 1, 8, 3, true, false, true },     /* experts through ids, shared x */
        { 512, 17, 9, 5, 4, true, true, true },      /* per-slot x, a tile, accumulate */
        { 256, 300, 1, 0, 0, false, false, true },   /* more rows than one workgroup covers */
        { 512, 70, 2, 0, 0, false, false, true },    /* the 2-, 4- and 8-token tiles */
        { 1024, 37, 3, 0, 0, false, true, true },
        { 256, 45, 12, 0, 0, false, false, true },
    };
    for (int layout = 0; layout < 2; layout++) {
        f.ops.layout = layout ? VK_MATVEC_SUBGROUP : VK_MATVEC_LANES;
        check_types(&f, types, sizeof types / sizeof types[0], cases, sizeof cases / sizeof cases[0], 900 + 100 * layout);
    }
    vk_fixture_close(&f);
}

TEST(vk_matmul_matches_reference_for_many_tokens)
{
    struct vk_fixture f;
    if (vk_fixture_open(&f)) return;
    static const struct mv_case cases[] = {
        { 160, 33, 8, 0, 0, false, false, false },   /* exactly one token tile */
        { 64, 45, 21, 0, 0, false, true, false },    /* tiles with a remainder, accumulate */
        { 45, 13, 9, 0, 0, false, false, false },    /* float types: odd rows in the tiled kernel */
    };
    check_cases(&f, cases, sizeof cases / sizeof cases[0], false);
    vk_fixture_close(&f);
}

TEST(vk_matvec_picks_expert_matrices_through_ids)
{
    struct vk_fixture f;
    if (vk_fixture_open(&f)) return;
    static const struct mv_case cases[] = {
        { 64, 24, 1, 8, 3, true, false, false },     /* three experts of eight, shared x (gate/up) */
        { 96, 17, 1, 5, 4, true, true, false },      /* per-slot x (down), accumulate */
    };
    check_cases(&f, cases, sizeof cases / sizeof cases[0], false);
    vk_fixture_close(&f);
}

/* Both row layouts on the same cases, whichever the device would pick, the LANES one with
 * and without the K-split kernels (FLASHBOX_VK_KSPLIT=on: from 256 elements on, for decode
 * and token tiles alike): rows of whole chunks (272 bytes for the block types, 128 for the
 * float types), rows and tokens that are not multiples of the workgroup or tile, expert
 * slots through ids with per-slot x, accumulation. */
static void check_both_layouts(uint32_t lanes)
{
    struct vk_fixture f;
    if (vk_fixture_open(&f)) return;
    if (lanes && !vk_test_subgroups_as_asked(f.d, lanes)) {
        vk_fixture_close(&f);
        return;
    }
    static const struct mv_case cases[] = {
        { 512, 70, 1, 0, 0, false, false, true },    /* decode: 2 chunks of MXFP4, 4 of Q8_0 */
        { 1024, 37, 1, 0, 0, false, true, true },    /* accumulate, a partial row set */
        { 512, 45, 21, 0, 0, false, false, true },   /* token tiles with a remainder */
        { 512, 24, 1, 8, 3, true, false, true },     /* experts through ids, shared x */
        { 512, 17, 9, 5, 4, true, true, true },      /* per-slot x, tiles, accumulate */
        { 512, 300, 1, 0, 0, false, false, true },   /* more rows than one workgroup covers */
        /* the K-split tile: one unit of K per lane and pass, the last pass with one lane
         * (and MXFP4 rows of 306 bytes, every other one starting 2 bytes into a word) */
        { 576, 33, 9, 0, 0, false, true, true },
        { 1536, 45, 21, 0, 0, false, false, true },  /* two units per lane, a half-empty last pass */
        { 1024, 260, 17, 5, 4, true, true, true },   /* per-slot x through ids, a partial row group */
        { 256, 37, 9, 0, 0, false, true, true },     /* half a subgroup per row, two rows at once */
        { 320, 45, 21, 0, 0, false, false, true },   /* ... and a last pass with one lane of four */
        /* steps of a few sessions: the 2- and 4-token tiles (one token clamped), 5 tokens in
         * the 8-token tile, and a whole tile of 8 then a 4-token tile for the rest */
        { 512, 70, 2, 0, 0, false, false, true },
        { 1024, 37, 3, 0, 0, false, true, true },
        { 512, 45, 5, 0, 0, false, false, true },
        { 576, 33, 12, 0, 0, false, true, true },
    };
    static const struct mv_case float_cases[] = {
        { 128, 19, 1, 0, 0, false, false, true },
        { 64, 13, 9, 0, 0, false, true, true },
        { 512, 24, 9, 0, 0, false, true, true },     /* F32: the K-split tile (hc's mixes are this shape) */
        { 1216, 19, 21, 0, 0, false, false, true },  /* F32: two units a lane, a partial last pass */
        { 128, 19, 2, 0, 0, false, true, true },     /* the small token tiles, and 8 + 4 */
        { 512, 24, 3, 0, 0, false, false, true },
        { 64, 13, 11, 0, 0, false, false, true },
    };
    for (int layout = 0; layout < 3; layout++) { /* LANES with K-split, LANES without, SUBGROUP */
        f.ops.layout = layout == 2 ? VK_MATVEC_SUBGROUP : VK_MATVEC_LANES;
        f.ops.ksplit_min_units = layout == 0 ? 4 : UINT32_MAX;
        for (int t = 0; t < 5; t++) {
            enum gguf_type type = all_types[t];
            bool block_type = type == GGUF_TYPE_Q8_0 || type == GGUF_TYPE_MXFP4;
            const struct mv_case *cs = block_type ? cases : float_cases;
            size_t n = block_type ? sizeof cases / sizeof cases[0] : sizeof float_cases / sizeof float_cases[0];
            for (size_t ci = 0; ci < n; ci++) {
                struct mv_case c = cs[ci];
                if (!block_type && type != GGUF_TYPE_F32 && c.n_in % 64) c.n_in = 128; /* 128-byte chunks of 16-bit rows */
                /* without K-split, block rows of part of a chunk run the SUBGROUP kernels */
                const uint32_t row_bytes = c.n_in / gguf_type_block_elems(type) * gguf_type_block_bytes(type);
                if (layout == 1 && block_type && row_bytes % ABI_LANES_BLOCK_CHUNK_BYTES) c.lanes = false;
                double e = run_matvec(&f, type, c, 77 + ci * 13 + t);
                if (!(e < 1e-10))
                    test_fail_at(__FILE__, __LINE__, "%s layout %s [%u in, %u out] x %u tokens: nmse %.3g", gguf_type_name(type),
                                 layout == 2 ? "subgroup" : layout ? "lanes" : "lanes k-split", c.n_in, c.n_out, c.n_tok, e);
            }
        }
    }
    vk_fixture_close(&f);
}

TEST(vk_matvec_lanes_and_subgroup_layouts_match_reference)
{
    check_both_layouts(0);
}

/* The same with lavapipe's subgroups of 16 lanes (LP_NATIVE_VECTOR_WIDTH=512, its widest;
 * read once per process, and each test runs in its own): shapes against a subgroup twice
 * the usual 8, the way GPUs' 32 and 64 are. A real GPU ignores the variable. */
TEST(vk_matvec_layouts_match_reference_in_subgroups_of_16)
{
    test_heavy_variant("vk_matvec_lanes_and_subgroup_layouts_match_reference");
    setenv("LP_NATIVE_VECTOR_WIDTH", "512", 1);
    check_both_layouts(16);
}

/* Batch invariance at the kernel: each token's outputs bitwise the same whether it runs
 * alone (decode's tile of one) or in a step of 2 .. 13 tokens (the tiles of 2, 4 and 8, a
 * whole tile of 8 then a smaller one), in every matvec layout and for the float and block
 * types, with expert matrices through ids for the block types. */
TEST(vk_matvec_token_tiles_give_each_token_bitwise_its_one_token_result)
{
    struct vk_fixture f;
    if (vk_fixture_open(&f)) return;
    enum { N_IN = 1024, N_OUT = 70, N_TOK = 13, N_MAT = 3 };
    static const uint32_t steps[] = { 2, 3, 4, 5, 7, 8, 9, 13 };
    uint64_t rng = 4242;
    float *w = malloc((size_t)N_MAT * N_OUT * N_IN * 4), *x = malloc((size_t)N_TOK * N_IN * 4);
    float *alone = malloc((size_t)N_TOK * N_OUT * 4), *got = malloc((size_t)N_TOK * N_OUT * 4);
    for (size_t i = 0; i < (size_t)N_MAT * N_OUT * N_IN; i++) w[i] = vk_test_rand(&rng);
    for (size_t i = 0; i < (size_t)N_TOK * N_IN; i++) x[i] = vk_test_rand(&rng);
    const int32_t ids[1] = { 2 };
    struct vk_span sx, sy, si;
    if (vk_fixture_put(&f, x, (size_t)N_TOK * N_IN * 4, &sx) || vk_fixture_put(&f, NULL, (size_t)N_TOK * N_OUT * 4, &sy) ||
        vk_fixture_put(&f, ids, sizeof ids, &si)) {
        test_fail_at(__FILE__, __LINE__, "%s", f.err);
        goto out;
    }
    for (int ti = 0; ti < 5; ti++) {
        const enum gguf_type type = all_types[ti];
        const bool block_type = type == GGUF_TYPE_Q8_0 || type == GGUF_TYPE_MXFP4;
        uint64_t wbytes;
        float *wc = malloc((size_t)N_MAT * N_OUT * N_IN * 4);
        memcpy(wc, w, (size_t)N_MAT * N_OUT * N_IN * 4);
        uint8_t *wq = quantize_rows(wc, N_IN, N_MAT * N_OUT, type, &wbytes);
        struct vk_span sw;
        struct vk_weight vw;
        int rc = vk_fixture_put(&f, wq, wbytes, &sw) ||
                 vk_weight_init(&vw, &sw, type, N_IN, N_OUT, block_type ? N_MAT : 1, f.err, sizeof f.err);
        free(wc);
        free(wq);
        for (int layout = 0; layout < 3 && !rc; layout++) { /* LANES with K-split, LANES, SUBGROUP */
            f.ops.layout = layout == 2 ? VK_MATVEC_SUBGROUP : VK_MATVEC_LANES;
            f.ops.ksplit_min_units = layout == 0 ? 4 : UINT32_MAX;
            /* tokens t0 .. t0 + n - 1 into their rows of y */
#define RUN_TOKENS(t0, n, out) \
            do { \
                struct vk_matvec_args a = { .w = &vw, .x = &sx, .y = &sy, .ids = block_type ? &si : NULL, \
                                            .x_off = (t0) * N_IN, .x_tstride = N_IN, .y_off = (t0) * N_OUT, \
                                            .y_tstride = N_OUT, .n_tok = (n), .n_slot = 1, .scale = 0.5f }; \
                rc = vk_recorder_begin(f.rec, f.err, sizeof f.err) || vk_op_matvec(f.rec, &f.ops, &a, f.err, sizeof f.err) || \
                     vk_recorder_submit(f.rec, f.err, sizeof f.err) || \
                     vk_span_download(f.d, &sy, (uint64_t)(t0) * N_OUT * 4, (out) + (size_t)(t0) * N_OUT, \
                                      (size_t)(n) * N_OUT * 4, f.err, sizeof f.err); \
            } while (0)
            for (uint32_t t = 0; t < N_TOK && !rc; t++) RUN_TOKENS(t, 1, alone);
            for (size_t si2 = 0; si2 < sizeof steps / sizeof steps[0] && !rc; si2++) {
                const uint32_t n = steps[si2], t0 = N_TOK - n; /* the step's tokens end at the last one */
                RUN_TOKENS(t0, n, got);
                for (uint32_t t = t0; t < N_TOK && !rc; t++)
                    if (memcmp(alone + (size_t)t * N_OUT, got + (size_t)t * N_OUT, N_OUT * 4)) {
                        test_fail_at(__FILE__, __LINE__, "%s layout %s: token %u of a step of %u differs from it alone",
                                     gguf_type_name(type), layout == 2 ? "subgroup" : layout ? "lanes" : "lanes k-split", t - t0, n);
                        break;
                    }
            }
#undef RUN_TOKENS
        }
        if (rc) {
            test_fail_at(__FILE__, __LINE__, "%s: %s", gguf_type_name(type), f.err);
            break;
        }
    }
out:
    free(w); free(x); free(alone); free(got);
    vk_fixture_close(&f);
}

/* Batch invariance of the routed experts: the (token, expert) slots of a step grouped by
 * expert (moe_group's lists, one per expert used, built here on the host) give each slot
 * bitwise the result of the one-token slot kernel, which matches the float64 reference;
 * for experts with 0, 1, 2, 3 and 6 tokens and empty lists past the experts used, in the SUBGROUP layout and in the LANES row-per-lane kernels with tiles
 * of 2 and 8 tokens (each list ends with its last token alone where one is left). */
TEST(vk_grouped_expert_lists_give_each_slot_bitwise_its_one_token_result)
{
    struct vk_fixture f;
    if (vk_fixture_open(&f)) return;
    enum { N_IN = 512, N_OUT = 70, E = 16, K = 3, N_TOK = 4, N_SLOT = N_TOK * K, G = N_SLOT };
    /* slot z = t * K + k picks expert ids[z]: experts 1, 4, 9 and 15 with 6, 2, 3 and 1 tokens */
    static const int32_t ids[N_SLOT] = { 1, 9, 4, 1, 9, 15, 1, 4, 9, 1, 1, 1 };
    /* the lists (abi.h, moe_group): first index of each list, then the slots by list,
     * then each list's expert; lists 4 .. G - 1 empty */
    int32_t grp[G + 1 + N_SLOT + G];
    memset(grp, 0, sizeof grp);
    vk_test_group_lists(ids, E, N_SLOT, G, grp);
    uint64_t rng = 99;
    float *w = malloc((size_t)E * N_OUT * N_IN * 4), *x = malloc((size_t)N_TOK * N_IN * 4);
    float *alone = malloc((size_t)N_SLOT * N_OUT * 4), *got = malloc((size_t)N_SLOT * N_OUT * 4);
    double *ref = malloc((size_t)N_SLOT * N_OUT * sizeof *ref);
    for (size_t i = 0; i < (size_t)E * N_OUT * N_IN; i++) w[i] = vk_test_rand(&rng);
    for (size_t i = 0; i < (size_t)N_TOK * N_IN; i++) x[i] = vk_test_rand(&rng);
    struct vk_span sx, sy, si, sg;
    int rc = vk_fixture_put(&f, x, (size_t)N_TOK * N_IN * 4, &sx) || vk_fixture_put(&f, NULL, (size_t)N_SLOT * N_OUT * 4, &sy) ||
             vk_fixture_put(&f, ids, sizeof ids, &si) || vk_fixture_put(&f, grp, sizeof grp, &sg);
    static const enum gguf_type types[2] = { GGUF_TYPE_Q8_0, GGUF_TYPE_MXFP4 };
    for (int ti = 0; ti < 2 && !rc; ti++) {
        uint64_t wbytes;
        float *wc = malloc((size_t)E * N_OUT * N_IN * 4);
        memcpy(wc, w, (size_t)E * N_OUT * N_IN * 4);
        uint8_t *wq = quantize_rows(wc, N_IN, E * N_OUT, types[ti], &wbytes);
        for (int z = 0; z < N_SLOT; z++)
            for (int o = 0; o < N_OUT; o++) {
                double sum = 0;
                for (int i = 0; i < N_IN; i++)
                    sum += (double)wc[((size_t)ids[z] * N_OUT + o) * N_IN + i] * x[(size_t)(z / K) * N_IN + i];
                ref[(size_t)z * N_OUT + o] = sum;
            }
        struct vk_span sw;
        struct vk_weight vw;
        rc = vk_fixture_put(&f, wq, wbytes, &sw) || vk_weight_init(&vw, &sw, types[ti], N_IN, N_OUT, E, f.err, sizeof f.err);
        free(wc);
        free(wq);
        /* layouts: SUBGROUP, then LANES row per lane with group tiles of 2 (the 3-token
         * expert: a tile and its last token alone) and 8 (the 1-token expert alone); the
         * K-split grouped tile runs in the whole-model test with FLASHBOX_VK_KSPLIT=all */
        for (int run = 0; run < 3 && !rc; run++) {
            const uint32_t group_tile = run == 1 ? 2 : 0;
            f.ops.layout = run == 0 ? VK_MATVEC_SUBGROUP : VK_MATVEC_LANES;
            f.ops.ksplit_min_units = UINT32_MAX;
            struct vk_matvec_args a = { .w = &vw, .x = &sx, .y = &sy, .ids = &si, .x_zstride = N_IN, .x_zdiv = K,
                                        .y_zstride = N_OUT, .n_tok = 1, .n_slot = N_SLOT, .scale = 1.0f };
            rc = vk_recorder_begin(f.rec, f.err, sizeof f.err) || vk_op_matvec(f.rec, &f.ops, &a, f.err, sizeof f.err) ||
                 vk_recorder_submit(f.rec, f.err, sizeof f.err) ||
                 vk_span_download(f.d, &sy, 0, alone, (size_t)N_SLOT * N_OUT * 4, f.err, sizeof f.err);
            double nmse = rc ? 0 : vk_test_nmse(alone, ref, (size_t)N_SLOT * N_OUT);
            if (!rc && !(nmse < 1e-10))
                test_fail_at(__FILE__, __LINE__, "%s run %d: one-token slots nmse %.3g against the reference",
                             gguf_type_name(types[ti]), run, nmse);
            /* a slot the grouped run missed keeps this pattern (NaN), not the run above's */
            memset(got, 0xff, (size_t)N_SLOT * N_OUT * 4);
            rc = rc || vk_span_upload(f.d, &sy, 0, got, (size_t)N_SLOT * N_OUT * 4, f.err, sizeof f.err);
            a.ids = &sg;
            a.n_tok = N_TOK;
            a.n_slot = G;
            a.ids_wrap = G;
            a.grouped = true;
            a.group_tile = group_tile;
            rc = rc || vk_recorder_begin(f.rec, f.err, sizeof f.err) || vk_op_matvec(f.rec, &f.ops, &a, f.err, sizeof f.err) ||
                 vk_recorder_submit(f.rec, f.err, sizeof f.err) ||
                 vk_span_download(f.d, &sy, 0, got, (size_t)N_SLOT * N_OUT * 4, f.err, sizeof f.err);
            for (int z = 0; z < N_SLOT && !rc; z++)
                if (memcmp(alone + (size_t)z * N_OUT, got + (size_t)z * N_OUT, N_OUT * 4)) {
                    test_fail_at(__FILE__, __LINE__, "%s run %d (group tile %u): slot %d (expert %d) grouped differs from it alone",
                                 gguf_type_name(types[ti]), run, group_tile, z, ids[z]);
                    break;
                }
        }
    }
    if (rc) test_fail_at(__FILE__, __LINE__, "%s", f.err);
    free(w); free(x); free(alone); free(got); free(ref);
    vk_fixture_close(&f);
}

TEST(vk_matvec_splits_weights_larger_than_one_binding)
{
    struct vk_fixture f;
    if (vk_fixture_open(&f)) return;
    /* Pretend the device binds at most 6 KiB so a [128, 70] matrix needs several ranges,
     * most starting at offsets that are not aligned to the storage alignment. */
    f.d->max_range = 6144;
    static const struct mv_case cases[] = { { 128, 70, 1, 0, 0, false, false, false }, { 128, 29, 9, 0, 0, false, false, false } };
    check_cases(&f, cases, sizeof cases / sizeof cases[0], false);
    vk_fixture_close(&f);
}


/* The K-split view (decode's hc mixes): parts' partial sums, added on the host, equal the
 * whole product in both layouts, for one token and a few (under the token tile); rows
 * whose parts are not whole 128-byte chunks, block types and stacked matrices are refused
 * with a message. */
TEST(vk_matvec_k_split_view_parts_sum_to_the_product_or_are_refused)
{
    struct vk_fixture f;
    if (vk_fixture_open(&f)) return;
    const uint32_t n_in = 768, n_out = 24, parts = 6, n_tok = 3, part = n_in / parts;
    uint64_t rng = 5;
    float *w = vk_test_rand_vec(&rng, (size_t)n_out * n_in, 1, 0), *x = vk_test_rand_vec(&rng, (size_t)n_tok * n_in, 1, 0);
    size_t n_y = (size_t)n_tok * parts * n_out;
    float *y = malloc((n_y + 2 * VK_GUARD) * 4);
    struct vk_span sw, sx, sy;
    struct vk_weight whole, split;
    int rc = vk_fixture_put(&f, w, (size_t)n_out * n_in * 4, &sw) || vk_fixture_put(&f, x, (size_t)n_tok * n_in * 4, &sx) ||
             vk_fixture_put(&f, NULL, (n_y + 2 * VK_GUARD) * 4, &sy) ||
             vk_weight_init(&whole, &sw, GGUF_TYPE_F32, n_in, n_out, 1, f.err, sizeof f.err) ||
             vk_weight_split_k(&whole, parts, &split, f.err, sizeof f.err);
    if (rc) test_fail_at(__FILE__, __LINE__, "%s", f.err);
    for (int layout = 0; layout < 2 && !rc; layout++) {
        f.ops.layout = layout ? VK_MATVEC_SUBGROUP : VK_MATVEC_LANES;
        for (uint32_t nt = 1; nt <= n_tok; nt += n_tok - 1) {
            vk_guard_fill(y, n_y);
            struct vk_matvec_args a = { .w = &split, .x = &sx, .y = &sy, .x_tstride = n_in, .x_zstride = part, .x_zdiv = 1,
                                        .y_off = VK_GUARD, .y_tstride = parts * n_out, .y_zstride = n_out, .n_tok = nt,
                                        .n_slot = parts, .scale = 1.0f };
            if (vk_span_upload(f.d, &sy, 0, y, (n_y + 2 * VK_GUARD) * 4, f.err, sizeof f.err) ||
                vk_recorder_begin(f.rec, f.err, sizeof f.err) || vk_op_matvec(f.rec, &f.ops, &a, f.err, sizeof f.err) ||
                vk_recorder_submit(f.rec, f.err, sizeof f.err) ||
                vk_span_download(f.d, &sy, 0, y, (n_y + 2 * VK_GUARD) * 4, f.err, sizeof f.err)) {
                test_fail_at(__FILE__, __LINE__, "%s", f.err);
                rc = 1;
                break;
            }
            CHECK(vk_guard_intact(y, n_y));
            for (uint32_t t = 0; t < nt; t++)
                for (uint32_t o = 0; o < n_out; o++) {
                    double ref = 0, got = 0;
                    for (uint32_t i = 0; i < n_in; i++) ref += (double)w[(size_t)o * n_in + i] * x[(size_t)t * n_in + i];
                    for (uint32_t z = 0; z < parts; z++) got += y[VK_GUARD + ((size_t)t * parts + z) * n_out + o];
                    if (!(fabs(got - ref) < 1e-4 * (1 + fabs(ref))))
                        test_fail_at(__FILE__, __LINE__, "layout %d, %u tokens, token %u row %u: %g, expected %g", layout, nt,
                                     t, o, got, ref);
                }
        }
    }
    /* rows of 3072 bytes: 5 parts do not divide them, 48 parts of 64 bytes are half a
     * chunk, 12 parts of 256 bytes are two chunks */
    CHECK(vk_weight_split_k(&whole, 5, &split, f.err, sizeof f.err) == -1 && strstr(f.err, "5 parts"));
    CHECK(vk_weight_split_k(&whole, 48, &split, f.err, sizeof f.err) == -1 && strstr(f.err, "128-byte"));
    CHECK(vk_weight_split_k(&whole, 0, &split, f.err, sizeof f.err) == -1);
    CHECK(vk_weight_split_k(&whole, 12, &split, f.err, sizeof f.err) == 0 && split.n_in == 64 && split.n_mat == 12);
    struct vk_weight q8 = whole;
    q8.type = GGUF_TYPE_Q8_0;
    CHECK(vk_weight_split_k(&q8, 2, &split, f.err, sizeof f.err) == -1 && strstr(f.err, "Q8_0"));
    struct vk_weight stacked = whole;
    stacked.n_mat = 2;
    CHECK(vk_weight_split_k(&stacked, 2, &split, f.err, sizeof f.err) == -1 && strstr(f.err, "2 matrices"));
    free(w); free(x); free(y);
    vk_fixture_close(&f);
}

TEST(vk_rmsnorm_matches_reference_with_and_without_weight)
{
    struct vk_fixture f;
    if (vk_fixture_open(&f)) return;
    static const uint32_t shapes[][2] = { { 1, 1 }, { 37, 3 }, { 512, 5 }, { 1000, 2 } };
    for (size_t si = 0; si < 4; si++) {
        uint32_t n = shapes[si][0], rows = shapes[si][1];
        for (int weighted = 0; weighted < 2; weighted++) {
            uint64_t rng = 77 + si;
            float *x = malloc((size_t)n * rows * 4), *w = malloc((size_t)n * 4);
            float *y = malloc(((size_t)n * rows + 2 * VK_GUARD) * 4);
            double *ref = malloc((size_t)n * rows * sizeof *ref);
            for (size_t i = 0; i < (size_t)n * rows; i++) x[i] = 3 * vk_test_rand(&rng);
            for (size_t i = 0; i < n; i++) w[i] = 1 + 0.1f * vk_test_rand(&rng);
            for (uint32_t r = 0; r < rows; r++) {
                double ss = 0;
                for (uint32_t i = 0; i < n; i++) ss += (double)x[r * n + i] * x[r * n + i];
                double inv = 1 / sqrt(ss / n + 1e-6);
                for (uint32_t i = 0; i < n; i++) ref[r * n + i] = x[r * n + i] * inv * (weighted ? w[i] : 1.0);
            }
            vk_guard_fill(y, (size_t)n * rows);
            struct vk_span sx, sw, sy;
            int rc = vk_fixture_put(&f, x, (size_t)n * rows * 4, &sx) || vk_fixture_put(&f, w, (size_t)n * 4, &sw) ||
                     vk_fixture_put(&f, y, ((size_t)n * rows + 2 * VK_GUARD) * 4, &sy) ||
                     vk_recorder_begin(f.rec, f.err, sizeof f.err) ||
                     vk_op_rmsnorm(f.rec, &f.ops, &sx, 0, n, &sy, VK_GUARD, n, weighted ? &sw : NULL, 0, n, rows, 1e-6f, f.err, sizeof f.err) ||
                     vk_recorder_submit(f.rec, f.err, sizeof f.err) ||
                     vk_span_download(f.d, &sy, 0, y, ((size_t)n * rows + 2 * VK_GUARD) * 4, f.err, sizeof f.err);
            if (rc) test_fail_at(__FILE__, __LINE__, "%s", f.err);
            else {
                CHECK(vk_guard_intact(y, (size_t)n * rows));
                double e = vk_test_nmse(y + VK_GUARD, ref, (size_t)n * rows);
                if (!(e < 1e-12)) test_fail_at(__FILE__, __LINE__, "rmsnorm n=%u rows=%u weighted=%d: nmse %.3g", n, rows, weighted, e);
            }
            free(x); free(w); free(y); free(ref);
        }
    }
    vk_fixture_close(&f);
}

/* ---- the non-matvec kernels against the reference's per-step functions ---- */

#include "engine/ref/ref.h"
#include "engine/ref/ref_ops.h"

static struct model_hparams hc_hparams(uint32_t n_embd)
{
    struct model_hparams hp;
    memset(&hp, 0, sizeof hp);
    hp.n_embd = n_embd;
    hp.n_hc = 4;
    hp.hc_sinkhorn_iters = 20;
    hp.hc_eps = 1e-6f;
    hp.rms_eps = 1e-6f;
    return hp;
}

static double nmse_f(const float *a, const float *b, size_t n)
{
    double num = 0, den = 1e-30;
    for (size_t i = 0; i < n; i++) {
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        den += (double)b[i] * b[i];
    }
    return num / den;
}

TEST(vk_hc_pre_with_sinkhorn_and_norm_matches_reference_in_one_dispatch)
{
    struct vk_fixture f;
    if (vk_fixture_open(&f)) return;
    const uint32_t d = 200, n_tok = 3, n = 4, mix = (2 + n) * n; /* d not a multiple of the workgroup */
    struct model_hparams hp = hc_hparams(d);
    uint64_t rng = 5;
    float *X = vk_test_rand_vec(&rng, (size_t)n_tok * n * d, 2, 0), *fn = vk_test_rand_vec(&rng, (size_t)mix * n * d, 0.05f, 0);
    float *base = vk_test_rand_vec(&rng, mix, 0.5f, 0), *scale = vk_test_rand_vec(&rng, 3, 0.1f, 1), *norm = vk_test_rand_vec(&rng, d, 0.1f, 1);
    for (int head = 0; head < 2; head++) {
        size_t ny = (size_t)n_tok * d, nh = (size_t)n_tok * (n + n * n);
        float *y = calloc(ny + 2 * VK_GUARD, 4), *hc = calloc(nh, 4);
        vk_guard_fill(y, ny);
        struct vk_span sX, sfn, sb, ss, sn, sy, shc;
        int rc = vk_fixture_put(&f, X, (size_t)n_tok * n * d * 4, &sX) || vk_fixture_put(&f, fn, (size_t)mix * n * d * 4, &sfn) ||
                 vk_fixture_put(&f, base, mix * 4, &sb) || vk_fixture_put(&f, scale, 12, &ss) || vk_fixture_put(&f, norm, d * 4, &sn) ||
                 vk_fixture_put(&f, y, (ny + 2 * VK_GUARD) * 4, &sy) || vk_fixture_put(&f, NULL, nh * 4, &shc);
        struct abi_hc_push p = { .n_embd = d, .n_hc = n, .n_tok = n_tok, .sinkhorn_iters = 20, .y_off = VK_GUARD,
                                 .flags = head ? ABI_HC_FLAG_HEAD : 0, .rms_eps = 1e-6f, .hc_eps = 1e-6f };
        const struct vk_span *b[8] = { &sX, &sfn, &sb, &ss, &sn, &sy, &shc, &sX };
        rc = rc || vk_recorder_begin(f.rec, f.err, sizeof f.err) ||
             vk_op_dispatch(f.rec, &f.ops, &f.ops.hc, b, &p, n_tok, 1, 1, f.err, sizeof f.err) ||
             vk_recorder_submit(f.rec, f.err, sizeof f.err) ||
             vk_span_download(f.d, &sy, 0, y, (ny + 2 * VK_GUARD) * 4, f.err, sizeof f.err) ||
             vk_span_download(f.d, &shc, 0, hc, nh * 4, f.err, sizeof f.err);
        if (rc) test_fail_at(__FILE__, __LINE__, "%s", f.err);
        CHECK(vk_guard_intact(y, ny));
        for (uint32_t t = 0; t < n_tok && !rc; t++) {
            float ry[200], post[4], comb[16], mixo[24];
            const float *Xt = X + (size_t)t * n * d;
            if (head) ref_hc_head(&hp, Xt, fn, base, scale, ry);
            else ref_hc_pre(&hp, Xt, fn, base, scale, ry, post, comb, mixo);
            ref_rmsnorm(ry, norm, d, hp.rms_eps, ry);
            double e = nmse_f(y + VK_GUARD + t * d, ry, d);
            if (!(e < 1e-10)) test_fail_at(__FILE__, __LINE__, "hc head=%d token %u: y nmse %.3g", head, t, e);
            if (!head) {
                double ep = nmse_f(hc + t * (n + n * n), post, n), ec = nmse_f(hc + t * (n + n * n) + n, comb, n * n);
                if (!(ep < 1e-10 && ec < 1e-10)) test_fail_at(__FILE__, __LINE__, "hc token %u: post nmse %.3g comb nmse %.3g", t, ep, ec);
            }
        }
        free(y);
        free(hc);
    }
    free(X); free(fn); free(base); free(scale); free(norm);
    vk_fixture_close(&f);
}

/* How hc runs with a pending hc_post: fused (one dispatch, where fn does not split), split
 * (hc_post alone, the mixes as a matmul, the rest with the mixes given: prefill's), split
 * through hc_texel (prefill's on CPU drivers: X and the sources read through texel views),
 * or split with the mixes' K in parts, summed by hc (decode's). */
enum hc_mode { HC_FUSED, HC_SPLIT, HC_SPLIT_TEXEL, HC_SPLIT_PARTS };
#define HC_TEST_PARTS 19 /* 608-float rows: 19 parts of one 32-float chunk */

static int hc_post_then_pre(struct vk_fixture *f, enum hc_mode mode, struct abi_hc_push p, const struct vk_span *const b_in[8],
                            const struct vk_span *mixes, uint32_t n_tok)
{
    const struct vk_span *b[10];
    memcpy(b, b_in, 8 * sizeof b[0]);
    b[ABI_HC_BIND_X_TEX] = b[ABI_HC_BIND_X];
    b[ABI_HC_BIND_SRC_TEX] = b[ABI_HC_BIND_SRC];
    struct vk_kernel *k = mode == HC_SPLIT_TEXEL ? &f->ops.hc_texel : &f->ops.hc;
    if (mode == HC_SPLIT_TEXEL) {
        p.x_tex_off = (uint32_t)(b[ABI_HC_BIND_X]->off / 4);
        p.src_tex_off = (uint32_t)(b[ABI_HC_BIND_SRC]->off / 4);
    }
    if (vk_recorder_begin(f->rec, f->err, sizeof f->err)) return -1;
    if (mode == HC_FUSED) {
        if (vk_op_dispatch(f->rec, &f->ops, &f->ops.hc, b, &p, n_tok, 1, 1, f->err, sizeof f->err)) goto fail;
        return vk_recorder_submit(f->rec, f->err, sizeof f->err);
    }
    struct abi_hc_push post = p;
    post.flags |= ABI_HC_FLAG_POST_ONLY;
    if (vk_op_dispatch(f->rec, &f->ops, k, b, &post, n_tok, 1, 1, f->err, sizeof f->err)) goto fail;
    vk_recorder_barrier(f->rec);
    const uint32_t width = p.n_hc * p.n_embd, n_mix = (2 + p.n_hc) * p.n_hc;
    const uint32_t parts = mode == HC_SPLIT_PARTS ? HC_TEST_PARTS : 1;
    struct vk_weight fn, fn_parts;
    if (vk_weight_init(&fn, b[ABI_HC_BIND_FN], GGUF_TYPE_F32, width, n_mix, 1, f->err, sizeof f->err) ||
        vk_weight_split_k(&fn, parts, &fn_parts, f->err, sizeof f->err))
        goto fail;
    struct vk_matvec_args a = { .w = &fn_parts, .x = b[ABI_HC_BIND_X], .y = mixes, .x_tstride = width,
                                .x_zstride = width / parts, .x_zdiv = 1, .y_tstride = parts * n_mix, .y_zstride = n_mix,
                                .n_tok = n_tok, .n_slot = parts, .scale = 1.0f };
    if (vk_op_matvec(f->rec, &f->ops, &a, f->err, sizeof f->err)) goto fail;
    vk_recorder_barrier(f->rec);
    p.flags = ABI_HC_FLAG_MIXES_GIVEN;
    p.mix_tstride = parts * n_mix;
    p.mix_parts = parts;
    b[ABI_HC_BIND_FN] = mixes;
    if (vk_op_dispatch(f->rec, &f->ops, k, b, &p, n_tok, 1, 1, f->err, sizeof f->err)) goto fail;
    return vk_recorder_submit(f->rec, f->err, sizeof f->err);
fail:
    vk_recorder_abort(f->rec);
    return -1;
}

TEST(vk_hc_applies_the_previous_hc_post_summing_expert_parts_first_fused_or_split_from_buffers_or_texels_or_in_k_parts)
{
    struct vk_fixture f;
    if (vk_fixture_open(&f)) return;
    /* d a multiple of 4 (the host checks n_embd) but not of the workgroup; 9 tokens: one
     * token tile of the mixes matmul and a remainder */
    const uint32_t d = 152, n_tok = 9, n = 4, K = 3, mix = (2 + n) * n, hcw = n + n * n;
    struct model_hparams hp = hc_hparams(d);
    uint64_t rng = 9;
    float *X = vk_test_rand_vec(&rng, (size_t)n_tok * n * d, 1, 0), *src = vk_test_rand_vec(&rng, (size_t)n_tok * (K + 1) * d, 1, 0);
    float *hc = vk_test_rand_vec(&rng, (size_t)n_tok * hcw, 0.5f, 0.5f);
    float *fn = vk_test_rand_vec(&rng, (size_t)mix * n * d, 0.05f, 0), *base = vk_test_rand_vec(&rng, mix, 0.5f, 0);
    float *scale = vk_test_rand_vec(&rng, 3, 0.1f, 1), *norm = vk_test_rand_vec(&rng, d, 0.1f, 1);
    struct abi_hc_push p = { .n_embd = d, .n_hc = n, .n_tok = n_tok, .sinkhorn_iters = 20, .flags = ABI_HC_FLAG_POST,
                             .src_tstride = K * d, .src_sstride = d, .n_src = K, .extra_off = n_tok * K * d,
                             .extra_tstride = d, .rms_eps = 1e-6f, .hc_eps = 1e-6f };
    float *out = malloc((size_t)n_tok * n * d * 4), *y = malloc((size_t)n_tok * d * 4), *hc_out = malloc((size_t)n_tok * hcw * 4);
    for (int split = HC_FUSED; split <= HC_SPLIT_PARTS; split++) {
        struct vk_span sX, ssrc, shc, sfn, sb, ss, sn, sy, smix;
        const struct vk_span *b[8] = { &sX, &sfn, &sb, &ss, &sn, &sy, &shc, &ssrc };
        int rc = vk_fixture_put(&f, X, (size_t)n_tok * n * d * 4, &sX) || vk_fixture_put(&f, src, (size_t)n_tok * (K + 1) * d * 4, &ssrc) ||
                 vk_fixture_put(&f, hc, (size_t)n_tok * hcw * 4, &shc) || vk_fixture_put(&f, fn, (size_t)mix * n * d * 4, &sfn) ||
                 vk_fixture_put(&f, base, mix * 4, &sb) || vk_fixture_put(&f, scale, 12, &ss) || vk_fixture_put(&f, norm, d * 4, &sn) ||
                 vk_fixture_put(&f, NULL, (size_t)n_tok * d * 4, &sy) || vk_fixture_put(&f, NULL, (size_t)n_tok * HC_TEST_PARTS * mix * 4, &smix) ||
                 hc_post_then_pre(&f, (enum hc_mode)split, p, b, &smix, n_tok) ||
                 vk_span_download(f.d, &sX, 0, out, (size_t)n_tok * n * d * 4, f.err, sizeof f.err) ||
                 vk_span_download(f.d, &sy, 0, y, (size_t)n_tok * d * 4, f.err, sizeof f.err) ||
                 vk_span_download(f.d, &shc, 0, hc_out, (size_t)n_tok * hcw * 4, f.err, sizeof f.err);
        if (rc) test_fail_at(__FILE__, __LINE__, "split=%d: %s", split, f.err);
        for (uint32_t t = 0; t < n_tok && !rc; t++) {
            float F[152], ref[4 * 152], ry[152], post[4], comb[16], mixo[24];
            for (uint32_t i = 0; i < d; i++) {
                double sum = src[(size_t)n_tok * K * d + t * d + i];
                for (uint32_t k = 0; k < K; k++) sum += src[(size_t)t * K * d + k * d + i];
                F[i] = (float)sum;
            }
            const float *h = hc + t * hcw;
            ref_hc_post(&hp, F, X + (size_t)t * n * d, h, h + n, ref);
            double e = nmse_f(out + (size_t)t * n * d, ref, n * d);
            if (!(e < 1e-10)) test_fail_at(__FILE__, __LINE__, "split=%d hc_post token %u: nmse %.3g", split, t, e);
            ref_hc_pre(&hp, ref, fn, base, scale, ry, post, comb, mixo);
            ref_rmsnorm(ry, norm, d, hp.rms_eps, ry);
            double ey = nmse_f(y + t * d, ry, d), ep = nmse_f(hc_out + t * hcw, post, n), ec = nmse_f(hc_out + t * hcw + n, comb, n * n);
            if (!(ey < 1e-10 && ep < 1e-10 && ec < 1e-10))
                test_fail_at(__FILE__, __LINE__, "split=%d hc after post, token %u: y %.3g post %.3g comb %.3g", split, t, ey, ep, ec);
        }
    }
    free(X); free(src); free(hc); free(fn); free(base); free(scale); free(norm); free(out); free(y); free(hc_out);
    vk_fixture_close(&f);
}

/* The compressed layers' rope (rope_dim 64, YaRN) for n_pos positions: freqs[32] and the
 * factored table the kernels read ([*rows][32][2], malloc'd). */
static float *compressed_rope_table(uint32_t n_pos, double freqs[32], uint32_t *rows)
{
    struct model_hparams hp;
    memset(&hp, 0, sizeof hp);
    hp.rope_dim = 64; hp.rope_base = 10000; hp.compress_rope_base = 160000; hp.yarn_factor = 16;
    hp.yarn_orig_ctx = 65536; hp.yarn_beta_fast = 32; hp.yarn_beta_slow = 1;
    ref_rope_freqs(&hp, true, freqs);
    *rows = vk_rope_rows(n_pos);
    float *tab = malloc((size_t)*rows * 32 * 2 * 4);
    vk_rope_fill(freqs, 32, *rows, tab);
    return tab;
}

TEST(vk_norm_rope_matches_reference_rows_and_ring_write)
{
    struct vk_fixture f;
    if (vk_fixture_open(&f)) return;
    /* positions past 1024 read both halves of the factored table */
    const uint32_t n = 128, heads = 3, n_tok = 5, n_pos = 2048, pos0 = 1900, ring = 7;
    double freqs[32];
    uint32_t rows;
    float *tab = compressed_rope_table(n_pos, freqs, &rows);
    uint64_t rng = 3;
    float *x = vk_test_rand_vec(&rng, (size_t)n_tok * heads * n, 2, 0), *w = vk_test_rand_vec(&rng, n, 0.1f, 1);
    size_t ny = (size_t)ring * heads * n;
    float *y = calloc(ny + 2 * VK_GUARD, 4);
    vk_guard_fill(y, ny);
    struct vk_span sx, sy, sw, st;
    /* written into a ring of 7 rows: token t lands in row (pos0 + t) % 7 */
    struct abi_norm_rope_push p = {
        .n = n, .rope_dim = 64, .flags = ABI_NORM_ROPE_FLAG_NORM | ABI_NORM_ROPE_FLAG_WEIGHT | ABI_NORM_ROPE_FLAG_ROPE,
        .x_tstride = heads * n, .x_hstride = n, .y_off = VK_GUARD, .y_tstride = heads * n, .y_hstride = n,
        .y_row0 = pos0 % ring, .y_tmod = ring, .pos_base = pos0, .pos_step = 1, .eps = 1e-6f,
    };
    const struct vk_span *b[5] = { &sx, &sy, &sw, &st, &st }; /* no position table */
    int rc = vk_fixture_put(&f, x, (size_t)n_tok * heads * n * 4, &sx) || vk_fixture_put(&f, y, (ny + 2 * VK_GUARD) * 4, &sy) ||
             vk_fixture_put(&f, w, n * 4, &sw) || vk_fixture_put(&f, tab, (size_t)rows * 64 * 4, &st) ||
             vk_recorder_begin(f.rec, f.err, sizeof f.err) ||
             vk_op_dispatch(f.rec, &f.ops, &f.ops.norm_rope, b, &p, heads, n_tok, 1, f.err, sizeof f.err) ||
             vk_recorder_submit(f.rec, f.err, sizeof f.err) ||
             vk_span_download(f.d, &sy, 0, y, (ny + 2 * VK_GUARD) * 4, f.err, sizeof f.err);
    if (rc) test_fail_at(__FILE__, __LINE__, "%s", f.err);
    CHECK(vk_guard_intact(y, ny));
    for (uint32_t t = 0; t < n_tok && !rc; t++)
        for (uint32_t h = 0; h < heads; h++) {
            float ref[128];
            ref_rmsnorm(x + ((size_t)t * heads + h) * n, w, n, 1e-6f, ref);
            ref_rope(ref, n, 64, freqs, pos0 + t, false);
            const float *got = y + VK_GUARD + ((size_t)((pos0 + t) % ring) * heads + h) * n;
            double e = nmse_f(got, ref, n);
            if (!(e < 1e-10)) test_fail_at(__FILE__, __LINE__, "norm_rope token %u head %u: nmse %.3g", t, h, e);
        }
    free(tab); free(x); free(w); free(y);
    vk_fixture_close(&f);
}

/* norm_rope over the rows of several sessions in one dispatch (ABI_NORM_ROPE_FLAG_POS_ROWS:
 * each row's position from a table, as q's rope of a step runs) gives bitwise what a
 * dispatch of each row alone at pos_base = its position gives, for q (norm and rope) and
 * the indexer's q (rope only); positions on both sides of the factored table's 1024 and
 * out of order. A table with one position off by one changes that row (the test sees the
 * table at all). */
TEST(vk_norm_rope_position_table_equals_per_row_dispatches_bitwise)
{
    struct vk_fixture f;
    if (vk_fixture_open(&f)) return;
    enum { N_TOK = 4 };
    const uint32_t n = 128, heads = 3, n_pos = 4097, row = heads * n, ny = N_TOK * heads * n;
    /* the table's first entry is not a row's: pos_base 1 skips it */
    const int32_t pos[1 + N_TOK] = { 999, 5, 1030, 77, 4000 }, off_by_one[1 + N_TOK] = { 999, 5, 1031, 77, 4000 };
    double freqs[32];
    uint32_t rows;
    float *tab = compressed_rope_table(n_pos, freqs, &rows);
    uint64_t rng = 17;
    float *x = vk_test_rand_vec(&rng, ny, 2, 0);
    float *table_y = malloc(ny * 4), *row_y = malloc(ny * 4), *wrong_y = malloc(ny * 4);
    struct vk_span sx, st, sp, sp1, sy_table, sy_rows, sy_wrong;
    int rc = vk_fixture_put(&f, x, ny * 4, &sx) || vk_fixture_put(&f, tab, (size_t)rows * 64 * 4, &st) ||
             vk_fixture_put(&f, pos, sizeof pos, &sp) || vk_fixture_put(&f, off_by_one, sizeof off_by_one, &sp1) ||
             vk_fixture_put(&f, NULL, ny * 4, &sy_table) || vk_fixture_put(&f, NULL, ny * 4, &sy_rows) ||
             vk_fixture_put(&f, NULL, ny * 4, &sy_wrong);
    const uint32_t flag_sets[2] = { ABI_NORM_ROPE_FLAG_NORM | ABI_NORM_ROPE_FLAG_ROPE, ABI_NORM_ROPE_FLAG_ROPE };
    for (int fs = 0; fs < 2 && !rc; fs++) {
        const struct abi_norm_rope_push base = {
            .n = n, .rope_dim = 64, .flags = flag_sets[fs], .x_tstride = row, .x_hstride = n, .y_tstride = row,
            .y_hstride = n, .y_tmod = 0x7fffffffu, .eps = 1e-6f,
        };
        struct abi_norm_rope_push pt = base;
        pt.flags |= ABI_NORM_ROPE_FLAG_POS_ROWS;
        pt.pos_base = 1;
        pt.pos_step = 1;
        const struct vk_span *bt[5] = { &sx, &sy_table, &sx, &st, &sp }, *bw[5] = { &sx, &sy_wrong, &sx, &st, &sp1 };
        const struct vk_span *br[5] = { &sx, &sy_rows, &sx, &st, &st };
        rc = vk_recorder_begin(f.rec, f.err, sizeof f.err) ||
             vk_op_dispatch(f.rec, &f.ops, &f.ops.norm_rope, bt, &pt, heads, N_TOK, 1, f.err, sizeof f.err) ||
             vk_op_dispatch(f.rec, &f.ops, &f.ops.norm_rope, bw, &pt, heads, N_TOK, 1, f.err, sizeof f.err);
        for (uint32_t t = 0; t < N_TOK && !rc; t++) {
            struct abi_norm_rope_push p1 = base;
            p1.x_off = t * row;
            p1.y_row0 = t;
            p1.pos_base = (uint32_t)pos[1 + t];
            rc = vk_op_dispatch(f.rec, &f.ops, &f.ops.norm_rope, br, &p1, heads, 1, 1, f.err, sizeof f.err);
        }
        rc = rc || vk_recorder_submit(f.rec, f.err, sizeof f.err) ||
             vk_span_download(f.d, &sy_table, 0, table_y, ny * 4, f.err, sizeof f.err) ||
             vk_span_download(f.d, &sy_rows, 0, row_y, ny * 4, f.err, sizeof f.err) ||
             vk_span_download(f.d, &sy_wrong, 0, wrong_y, ny * 4, f.err, sizeof f.err);
        for (uint32_t t = 0; t < N_TOK && !rc; t++) {
            const size_t o = (size_t)t * row;
            if (memcmp(table_y + o, row_y + o, row * 4)) {
                uint32_t i = 0;
                while (!memcmp(&table_y[o + i], &row_y[o + i], 4)) i++;
                test_fail_at(__FILE__, __LINE__, "flags %u row %u (position %d) element %u: %.9g from the table, %.9g alone",
                             flag_sets[fs], t, pos[1 + t], i, table_y[o + i], row_y[o + i]);
            }
            /* the wrong table differs exactly in the row it moved */
            CHECK((memcmp(wrong_y + o, row_y + o, row * 4) != 0) == (pos[1 + t] != off_by_one[1 + t]));
            for (uint32_t h = 0; h < heads; h++) { /* and both are the reference's */
                float ref[128];
                const float *xr = x + o + (size_t)h * n;
                if (fs == 0) ref_rmsnorm(xr, NULL, n, 1e-6f, ref);
                else memcpy(ref, xr, n * 4);
                ref_rope(ref, n, 64, freqs, (uint64_t)pos[1 + t], false);
                double e = nmse_f(table_y + o + (size_t)h * n, ref, n);
                if (!(e < 1e-10)) test_fail_at(__FILE__, __LINE__, "flags %u row %u head %u: nmse %.3g", flag_sets[fs], t, h, e);
            }
        }
    }
    if (rc) test_fail_at(__FILE__, __LINE__, "%s", f.err);
    free(tab); free(x); free(table_y); free(row_y); free(wrong_y);
    vk_fixture_close(&f);
}

TEST(vk_router_matches_reference_for_biased_and_hash_routing)
{
    struct vk_fixture f;
    if (vk_fixture_open(&f)) return;
    const uint32_t E = 70, K = 6, n_tok = 4, n_vocab = 10;
    uint64_t rng = 11;
    float *logits = vk_test_rand_vec(&rng, (size_t)n_tok * E, 3, 0), *bias = vk_test_rand_vec(&rng, E, 0.1f, 0);
    int32_t tokens[4] = { 3, 9, 0, 3 }, tid2eid[10 * 6];
    for (uint32_t i = 0; i < n_vocab * K; i++) tid2eid[i] = (int32_t)((i * 37 + 5) % E);
    for (int hash = 0; hash < 2; hash++) {
        struct vk_span sl, sb, st, si, sw;
        int32_t ids[4 * 6];
        float wts[4 * 6];
        struct abi_router_push p = { .n_expert = E, .k = K, .n_tok = n_tok, .logits_tstride = E,
                                     .flags = ABI_ROUTER_FLAG_NORM | (hash ? ABI_ROUTER_FLAG_HASH : 0), .scale = 1.5f };
        const struct vk_span *b[5] = { &sl, &sb, &st, &si, &sw };
        int rc = vk_fixture_put(&f, logits, (size_t)n_tok * E * 4, &sl) ||
                 (hash ? vk_fixture_put(&f, tid2eid, sizeof tid2eid, &sb) : vk_fixture_put(&f, bias, E * 4, &sb)) ||
                 vk_fixture_put(&f, tokens, sizeof tokens, &st) || vk_fixture_put(&f, NULL, sizeof ids, &si) ||
                 vk_fixture_put(&f, NULL, sizeof wts, &sw) || vk_recorder_begin(f.rec, f.err, sizeof f.err) ||
                 vk_op_dispatch(f.rec, &f.ops, &f.ops.router, b, &p, n_tok, 1, 1, f.err, sizeof f.err) ||
                 vk_recorder_submit(f.rec, f.err, sizeof f.err) ||
                 vk_span_download(f.d, &si, 0, ids, sizeof ids, f.err, sizeof f.err) ||
                 vk_span_download(f.d, &sw, 0, wts, sizeof wts, f.err, sizeof f.err);
        if (rc) { test_fail_at(__FILE__, __LINE__, "%s", f.err); break; }
        for (uint32_t t = 0; t < n_tok; t++) {
            float score[70], biased[70];
            int32_t idx[6];
            for (uint32_t e = 0; e < E; e++) {
                score[e] = (float)sqrt(ref_softplus(logits[t * E + e]));
                biased[e] = score[e] + bias[e];
            }
            if (hash) memcpy(idx, tid2eid + tokens[t] * K, sizeof idx);
            else ref_topk(biased, E, K, idx);
            double sum = 0;
            for (uint32_t k = 0; k < K; k++) sum += score[idx[k]];
            for (uint32_t k = 0; k < K; k++) {
                CHECK_EQ_INT(ids[t * K + k], idx[k]);
                CHECK_NEAR(wts[t * K + k], score[idx[k]] / sum * 1.5, 1e-5);
            }
        }
    }
    free(logits); free(bias);
    vk_fixture_close(&f);
}

TEST(vk_swiglu_clamps_and_weights_routed_and_shared_rows_one_or_four_elements_an_invocation)
{
    struct vk_fixture f;
    if (vk_fixture_open(&f)) return;
    /* 4 routed rows in gu ([gate rows][up rows]) and 2 tokens' shared rows in a projection
     * buffer of rows [E | gate | up]: F = 77 runs an element per invocation, F = 80 with E = 4
     * (every offset a multiple of 4) four */
    const uint32_t shapes[2][2] = { { 77, 3 }, { 80, 4 } };
    for (int c = 0; c < 2; c++) {
        const uint32_t F = shapes[c][0], E = shapes[c][1], routed = 4, n_sh = 2, mw = E + 2 * F;
        uint64_t rng = 13;
        float *gu = vk_test_rand_vec(&rng, (size_t)2 * routed * F, 20, 0), *sh = vk_test_rand_vec(&rng, (size_t)n_sh * mw, 20, 0);
        float *w = vk_test_rand_vec(&rng, routed, 0.5f, 0.5f);
        float *out_gu = malloc((size_t)2 * routed * F * 4), *out_sh = malloc((size_t)n_sh * mw * 4);
        struct vk_span sgu, ssh, sw;
        struct abi_swiglu_push p = { .n_ff = F, .n_rows = routed + n_sh, .n_routed = routed, .u_off = routed * F, .sh_off = E,
                                     .sh_tstride = mw, .lim_routed = 10, .lim_shared = 0 };
        const struct vk_span *b[3] = { &sgu, &ssh, &sw };
        int rc = vk_fixture_put(&f, gu, (size_t)2 * routed * F * 4, &sgu) || vk_fixture_put(&f, sh, (size_t)n_sh * mw * 4, &ssh) ||
                 vk_fixture_put(&f, w, routed * 4, &sw) || vk_recorder_begin(f.rec, f.err, sizeof f.err) ||
                 vk_op_swiglu(f.rec, &f.ops, b, &p, f.err, sizeof f.err) || vk_recorder_submit(f.rec, f.err, sizeof f.err) ||
                 vk_span_download(f.d, &sgu, 0, out_gu, (size_t)2 * routed * F * 4, f.err, sizeof f.err) ||
                 vk_span_download(f.d, &ssh, 0, out_sh, (size_t)n_sh * mw * 4, f.err, sizeof f.err);
        if (rc) test_fail_at(__FILE__, __LINE__, "%s", f.err);
        CHECK(!rc && (p.flags == ABI_SWIGLU_FLAG_VEC4) == (c == 1));
        for (uint32_t r = 0; r < routed + n_sh && !rc; r++)
            for (uint32_t i = 0; i < F; i++) {
                bool is_routed = r < routed;
                size_t gi = is_routed ? (size_t)r * F + i : (size_t)(r - routed) * mw + E + i;
                double gv = is_routed ? gu[gi] : sh[gi], uv = is_routed ? gu[routed * F + gi] : sh[gi + F];
                double wt = is_routed ? w[r] : 1.0;
                if (is_routed) { gv = fmin(gv, 10); uv = fmax(fmin(uv, 10), -10); } /* shared: limit 0, no clamp */
                double ref = ref_silu(gv) * uv * wt, got = is_routed ? out_gu[gi] : out_sh[gi];
                if (!(fabs(got - ref) <= 1e-4 * (1 + fabs(ref)))) {
                    test_fail_at(__FILE__, __LINE__, "F %u swiglu row %u col %u: %.7g vs %.7g", F, r, i, got, ref);
                    r = routed + n_sh;
                    break;
                }
            }
        /* the routed up rows, the shared up columns and the columns before them are inputs only */
        CHECK(memcmp(out_gu + routed * F, gu + routed * F, (size_t)routed * F * 4) == 0);
        for (uint32_t t = 0; t < n_sh; t++) {
            CHECK(memcmp(out_sh + (size_t)t * mw, sh + (size_t)t * mw, E * 4) == 0);
            CHECK(memcmp(out_sh + (size_t)t * mw + E + F, sh + (size_t)t * mw + E + F, F * 4) == 0);
        }
        free(gu); free(sh); free(w); free(out_gu); free(out_sh);
    }
    vk_fixture_close(&f);
}

/* A float32 tensor over caller memory, for the reference's per-step functions. */
static struct gguf_tensor fake_f32(float *data, uint64_t ne0, uint64_t ne1)
{
    struct gguf_tensor t;
    memset(&t, 0, sizeof t);
    t.name = (char *)"test";
    t.n_dims = 2;
    t.ne[0] = ne0; t.ne[1] = ne1; t.ne[2] = 1; t.ne[3] = 1;
    t.type = GGUF_TYPE_F32;
    t.n_elements = ne0 * ne1;
    t.nbytes = t.n_elements * 4;
    t.data = data;
    return t;
}

/* The compressor state machine (compress + norm_rope finishing) fed in uneven chunks, for
 * the overlapping ratio-4 kind and a pooling-only ratio, against ref_compressor_step fed
 * token by token. */
static void check_compressor(struct vk_fixture *f, uint32_t ratio)
{
    const uint32_t d = 32, w = 64, coff = ratio == 4 ? 2 : 1, cw = coff * w, n_tok = 37, n_rows = ratio == 4 ? 8 : ratio;
    struct model_hparams hp;
    memset(&hp, 0, sizeof hp);
    hp.rope_dim = 32; hp.compress_rope_base = 160000; hp.yarn_factor = 16; hp.yarn_orig_ctx = 65536;
    hp.yarn_beta_fast = 32; hp.yarn_beta_slow = 1; hp.rms_eps = 1e-6f;
    double freqs[16];
    ref_rope_freqs(&hp, true, freqs);
    uint64_t rng = 21 + ratio;
    float *wkv = vk_test_rand_vec(&rng, (size_t)cw * d, 0.3f, 0), *wg = vk_test_rand_vec(&rng, (size_t)cw * d, 0.3f, 0);
    float *ape = vk_test_rand_vec(&rng, (size_t)ratio * cw, 0.5f, 0), *norm = vk_test_rand_vec(&rng, w, 0.1f, 1);
    float *a = vk_test_rand_vec(&rng, (size_t)n_tok * d, 1, 0);
    struct gguf_tensor t_kv = fake_f32(wkv, d, cw), t_g = fake_f32(wg, d, cw), t_ape = fake_f32(ape, cw, ratio), t_n = fake_f32(norm, w, 1);
    const uint32_t tab_rows = vk_rope_rows(n_tok);
    float *tab = malloc((size_t)tab_rows * 16 * 2 * 4);
    vk_rope_fill(freqs, 16, tab_rows, tab);
    /* reference, token by token */
    struct ref_compressor rc = { .ratio = ratio, .width = w, .coff = coff, .n_rows = n_rows };
    rc.kv = calloc((size_t)n_rows * cw, 4);
    rc.score = malloc((size_t)n_rows * cw * 4);
    for (size_t i = 0; i < (size_t)n_rows * cw; i++) rc.score[i] = -INFINITY;
    struct ref_scratch s;
    memset(&s, 0, sizeof s);
    s.rowbuf = malloc(d * 4);
    uint32_t n_ent = n_tok / ratio + 1;
    float *ref_ent = calloc((size_t)n_ent * w, 4), entry[64];
    for (uint32_t p = 0; p < n_tok; p++)
        if (ref_compressor_step(&rc, &hp, &t_kv, &t_g, &t_ape, &t_n, freqs, a + (size_t)p * d, p, &s, entry))
            memcpy(ref_ent + (size_t)(p / ratio) * w, entry, w * 4);
    /* device: kv/score rows from the CPU, the kernels on the device, in chunks 5, 3, 11, ... */
    float *kv_in = malloc((size_t)n_tok * cw * 4), *sc_in = malloc((size_t)n_tok * cw * 4);
    for (uint32_t p = 0; p < n_tok; p++)
        for (uint32_t o = 0; o < cw; o++) {
            double k = 0, g = 0;
            for (uint32_t i = 0; i < d; i++) { k += (double)wkv[o * d + i] * a[p * d + i]; g += (double)wg[o * d + i] * a[p * d + i]; }
            kv_in[p * cw + o] = (float)k;
            sc_in[p * cw + o] = (float)g;
        }
    float *state = malloc((size_t)2 * n_rows * cw * 4);
    for (size_t i = 0; i < (size_t)n_rows * cw; i++) { state[i] = 0; state[n_rows * cw + i] = -INFINITY; }
    struct vk_span skv, ssc, sape, sst, sout, snorm, stab;
    float *got = calloc((size_t)n_ent * w, 4);
    int rcode = vk_fixture_put(f, kv_in, (size_t)n_tok * cw * 4, &skv) || vk_fixture_put(f, sc_in, (size_t)n_tok * cw * 4, &ssc) ||
                vk_fixture_put(f, ape, (size_t)ratio * cw * 4, &sape) || vk_fixture_put(f, state, (size_t)2 * n_rows * cw * 4, &sst) ||
                vk_fixture_put(f, NULL, (size_t)n_ent * w * 4, &sout) || vk_fixture_put(f, norm, w * 4, &snorm) ||
                vk_fixture_put(f, tab, (size_t)tab_rows * 32 * 4, &stab);
    const uint32_t chunks[] = { 5, 3, 11, 1, 9, 8 };
    for (uint32_t pos = 0, ci = 0; pos < n_tok && !rcode; ci++) {
        uint32_t nt = chunks[ci % 6] < n_tok - pos ? chunks[ci % 6] : n_tok - pos;
        struct abi_compress_push p = { .width = w, .ratio = ratio, .coff = coff, .pos0 = pos, .n_tok = nt,
                                       .kv_off = pos * cw, .score_off = pos * cw, .in_tstride = cw };
        const struct vk_span *b[5] = { &skv, &ssc, &sape, &sst, &sout };
        rcode = vk_recorder_begin(f->rec, f->err, sizeof f->err) ||
                vk_op_dispatch(f->rec, &f->ops, &f->ops.compress, b, &p, 1, 1, 1, f->err, sizeof f->err);
        uint32_t e0 = pos / ratio, e1 = (pos + nt) / ratio;
        if (!rcode && e1 > e0) {
            vk_recorder_barrier(f->rec);
            struct abi_norm_rope_push q = {
                .n = w, .rope_dim = 32, .flags = ABI_NORM_ROPE_FLAG_NORM | ABI_NORM_ROPE_FLAG_WEIGHT | ABI_NORM_ROPE_FLAG_ROPE,
                .x_off = e0 * w, .x_tstride = w, .y_tstride = w, .y_row0 = e0, .y_tmod = 1u << 30,
                .pos_base = e0 * ratio, .pos_step = ratio, .eps = 1e-6f,
            };
            const struct vk_span *bq[5] = { &sout, &sout, &snorm, &stab, &stab };
            rcode = vk_op_dispatch(f->rec, &f->ops, &f->ops.norm_rope, bq, &q, 1, e1 - e0, 1, f->err, sizeof f->err);
        }
        rcode = rcode || vk_recorder_submit(f->rec, f->err, sizeof f->err);
        pos += nt;
    }
    rcode = rcode || vk_span_download(f->d, &sout, 0, got, (size_t)n_ent * w * 4, f->err, sizeof f->err);
    if (rcode) test_fail_at(__FILE__, __LINE__, "%s", f->err);
    for (uint32_t e = 0; e < n_tok / ratio && !rcode; e++) {
        double err = nmse_f(got + (size_t)e * w, ref_ent + (size_t)e * w, w);
        if (!(err < 1e-10)) test_fail_at(__FILE__, __LINE__, "compressor ratio %u entry %u: nmse %.3g", ratio, e, err);
    }
    free(wkv); free(wg); free(ape); free(norm); free(a); free(tab); free(rc.kv); free(rc.score); free(s.rowbuf);
    free(ref_ent); free(kv_in); free(sc_in); free(state); free(got);
}

TEST(vk_compressor_matches_reference_across_uneven_chunks)
{
    struct vk_fixture f;
    if (vk_fixture_open(&f)) return;
    check_compressor(&f, 4);
    check_compressor(&f, 8);
    vk_fixture_close(&f);
}

/* How the attention test runs the kernel: attention.comp, attention_texel.comp, or
 * attention_heads.comp (a subgroup per group of heads, one pass with an online softmax). */
enum attn_kernel { ATTN_BUFFERS, ATTN_TEXELS, ATTN_HEADS };
#define ATTN_TEST_HEAD_DIM 64
#define ATTN_TEST_MAX_HEAD_DIM ABI_ATTN_MAX_HEAD_DIM /* V4's 512: the most q registers a lane holds */

/* Attention of a few tokens over a wrapped window ring plus compressed entries (HCA: every
 * completed one; CSA: a given selection of topk), with a sink and the inverse rotation,
 * against a direct double-precision evaluation of spec §3.9-3.10.1; rows through storage
 * buffers or through their chunks' texel views. H heads of hd floats (<=
 * ATTN_TEST_MAX_HEAD_DIM), n_tok <= 4 tokens from pos0; keys in chunks of `chunk` (0: the
 * kernel's own). */
struct attn_case {
    uint32_t ratio, H, n_tok, hd, pos0, topk, chunk;
    enum engine_kv_type kv; /* storage of the compressed entries (ATTN_BUFFERS only for f16, fp8) */
};

/* norm_rope packing rows into stored entries (kv f16, fp8) gives bitwise the words that
 * kv_pack makes of the float32 rows the same kernel writes unpacked: the device's packing
 * is the host's. Rows of mixed magnitudes reach FP8's subnormals and f16's. */
TEST(vk_norm_rope_packs_entries_bitwise_as_the_host_does)
{
    struct vk_fixture f;
    if (vk_fixture_open(&f)) return;
    const uint32_t n = 128, n_rows = 6, ratio = 4, e0 = 300, n_pos = (e0 + n_rows) * ratio;
    double freqs[32];
    uint32_t rows;
    float *tab = compressed_rope_table(n_pos, freqs, &rows);
    uint64_t rng = 5;
    float *x = vk_test_rand_vec(&rng, (size_t)n_rows * n, 2, 0), *w = vk_test_rand_vec(&rng, n, 0.1f, 1);
    for (uint32_t i = 0; i < n; i += 3) w[i] *= 1e-4f; /* small values: subnormal codes */
    w[5] = 3e4f;                                       /* a large one: past f16's 2^-14 scale */
    float *y32 = calloc((size_t)n_rows * n, 4);
    uint32_t *yq = calloc((size_t)n_rows * n, 4), *want = calloc((size_t)n, 4);
    struct vk_span sx, sw, st, sy32, syq;
    int rc = vk_fixture_put(&f, x, (size_t)n_rows * n * 4, &sx) || vk_fixture_put(&f, w, n * 4, &sw) ||
             vk_fixture_put(&f, tab, (size_t)rows * 64 * 4, &st) || vk_fixture_put(&f, NULL, (size_t)n_rows * n * 4, &sy32) ||
             vk_fixture_put(&f, NULL, (size_t)n_rows * n * 4, &syq);
    for (int kv = ENGINE_KV_F16; kv <= ENGINE_KV_FP8 && !rc; kv++) {
        const uint32_t KW = kv_entry_words((enum engine_kv_type)kv, n);
        struct abi_norm_rope_push p = {
            .n = n, .rope_dim = 64, .flags = ABI_NORM_ROPE_FLAG_NORM | ABI_NORM_ROPE_FLAG_WEIGHT | ABI_NORM_ROPE_FLAG_ROPE,
            .x_tstride = n, .y_tstride = n, .y_row0 = e0, .y_tmod = 0x7fffffffu, .pos_base = e0 * ratio, .pos_step = ratio,
            .eps = 1e-6f,
        };
        struct abi_norm_rope_push pq = p;
        pq.y_tstride = KW;
        pq.y_row0 = 0;
        pq.kv = (uint32_t)kv;
        p.y_row0 = 0;
        const struct vk_span *b32[5] = { &sx, &sy32, &sw, &st, &st }, *bq[5] = { &sx, &syq, &sw, &st, &st };
        rc = vk_recorder_begin(f.rec, f.err, sizeof f.err) ||
             vk_op_dispatch(f.rec, &f.ops, &f.ops.norm_rope, b32, &p, 1, n_rows, 1, f.err, sizeof f.err) ||
             vk_op_dispatch(f.rec, &f.ops, &f.ops.norm_rope, bq, &pq, 1, n_rows, 1, f.err, sizeof f.err) ||
             vk_recorder_submit(f.rec, f.err, sizeof f.err) ||
             vk_span_download(f.d, &sy32, 0, y32, (size_t)n_rows * n * 4, f.err, sizeof f.err) ||
             vk_span_download(f.d, &syq, 0, yq, (size_t)n_rows * KW * 4, f.err, sizeof f.err);
        if (rc) break;
        for (uint32_t r = 0; r < n_rows; r++) {
            kv_pack((enum engine_kv_type)kv, y32 + (size_t)r * n, n, want);
            if (memcmp(want, yq + (size_t)r * KW, KW * 4)) {
                uint32_t i = 0;
                while (want[i] == yq[(size_t)r * KW + i]) i++;
                test_fail_at(__FILE__, __LINE__, "kv %s row %u word %u: 0x%08x packed on the device, 0x%08x on the host",
                             engine_kv_name((enum engine_kv_type)kv), r, i, yq[(size_t)r * KW + i], want[i]);
                break;
            }
        }
    }
    if (rc) test_fail_at(__FILE__, __LINE__, "%s", f.err);
    free(tab); free(x); free(w); free(y32); free(yq); free(want);
    vk_fixture_close(&f);
}

static void check_attention_case(struct vk_fixture *f, enum attn_kernel kernel, struct attn_case c)
{
    const bool texel = kernel != ATTN_BUFFERS;
    const uint32_t ratio = c.ratio, H = c.H, n_tok = c.n_tok, hd = c.hd, pos0 = c.pos0, topk = c.topk;
    const uint32_t rope = 32, W = 6, ring = W + 4;
    const uint32_t n_comp = (pos0 + n_tok) / (ratio ? ratio : 1) + 1, rows = vk_rope_rows(pos0 + n_tok);
    uint64_t rng = 31 + ratio;
    float *q = vk_test_rand_vec(&rng, (size_t)n_tok * H * hd, 1, 0), *ringv = vk_test_rand_vec(&rng, (size_t)ring * hd, 1, 0);
    float *comp = vk_test_rand_vec(&rng, (size_t)n_comp * hd, 1, 0), *sinks = vk_test_rand_vec(&rng, H, 1, 0);
    /* entries stored as c.kv says; the direct evaluation reads the stored values back */
    const uint32_t CW = kv_entry_words(c.kv, hd);
    uint32_t *stored = malloc((size_t)n_comp * CW * 4);
    for (uint32_t e = 0; e < n_comp; e++) {
        kv_pack(c.kv, comp + (size_t)e * hd, hd, stored + (size_t)e * CW);
        kv_unpack(c.kv, stored + (size_t)e * CW, hd, comp + (size_t)e * hd);
    }
    int32_t *sel = malloc((size_t)n_tok * topk * sizeof *sel);
    for (uint32_t i = 0; i < n_tok * topk; i++) sel[i] = (int32_t)(((uint64_t)i * 5 + 1) % ((pos0 + 1) / 4));
    double freqs[16];
    float *tab = malloc((size_t)rows * 16 * 2 * 4);
    for (uint32_t i = 0; i < 16; i++) freqs[i] = pow(10000.0, -2.0 * i / rope);
    vk_rope_fill(freqs, 16, rows, tab);
    size_t no = (size_t)n_tok * H * hd;
    float *o = calloc(no + 2 * VK_GUARD, 4);
    vk_guard_fill(o, no);
    struct vk_span sq, sr, sc, ss, ssk, st, so;
    struct abi_attn_push p = { .head_dim = hd, .n_head = H, .rope_dim = rope, .window = W, .ring_len = ring, .ratio = ratio,
                               .topk = topk, .pos0 = pos0, .n_tok = n_tok, .o_off = VK_GUARD, .scale = 0.125f,
                               .chunk = c.chunk, .kv = (uint32_t)c.kv, .comp_words = CW };
    const struct vk_span *b[7] = { &sq, &sr, &sc, &ss, &ssk, &st, &so };
    int rc = vk_fixture_put(f, q, no * 4, &sq) || vk_fixture_put(f, ringv, (size_t)ring * hd * 4, &sr) ||
             vk_fixture_put(f, stored, (size_t)n_comp * CW * 4, &sc) ||
             vk_fixture_put(f, sel, (size_t)n_tok * topk * sizeof *sel, &ss) ||
             vk_fixture_put(f, sinks, H * 4, &ssk) || vk_fixture_put(f, tab, (size_t)rows * 32 * 4, &st) ||
             vk_fixture_put(f, o, (no + 2 * VK_GUARD) * 4, &so);
    if (texel) { /* texel views span the whole chunk */
        p.q_off += (uint32_t)(sq.off / 4);
        p.ring_off += (uint32_t)(sr.off / 4);
        p.comp_off += (uint32_t)(sc.off / 4);
    }
    struct vk_kernel *k = kernel == ATTN_TEXELS ? &f->ops.attention_texel : &f->ops.attention;
    uint32_t heads = 1;
    if (kernel == ATTN_HEADS) {
        struct vk_kernel *kh = NULL;
        rc = rc || vk_ops_attention_heads(&f->ops, hd, H, n_tok, &kh, &heads, f->err, sizeof f->err);
        if (!rc && !kh) {
            test_fail_at(__FILE__, __LINE__, "attention_heads refused %u heads of %u", H, hd);
            rc = 1;
        }
        k = kh;
    }
    rc = rc || vk_recorder_begin(f->rec, f->err, sizeof f->err) ||
             vk_op_dispatch(f->rec, &f->ops, k, b, &p, H / heads, n_tok, 1, f->err, sizeof f->err) ||
             vk_recorder_submit(f->rec, f->err, sizeof f->err) ||
             vk_span_download(f->d, &so, 0, o, (no + 2 * VK_GUARD) * 4, f->err, sizeof f->err);
    if (rc) test_fail_at(__FILE__, __LINE__, "%s", f->err);
    CHECK(vk_guard_intact(o, no));
    const uint32_t max_keys = W + n_comp + topk;
    double *att = malloc(max_keys * sizeof *att);
    const float **keys = malloc(max_keys * sizeof *keys);
    for (uint32_t t = 0; t < n_tok && !rc; t++)
        for (uint32_t h = 0; h < H; h++) {
            const uint32_t pos = pos0 + t, first = pos + 1 > W ? pos + 1 - W : 0, n_win = pos + 1 - first;
            uint32_t nc = ratio == 4 ? ((pos + 1) / 4 < topk ? (pos + 1) / 4 : topk) : ratio ? (pos + 1) / ratio : 0;
            const float *qh = q + ((size_t)t * H + h) * hd;
            double mx = sinks[h], acc[ATTN_TEST_MAX_HEAD_DIM] = { 0 }, den;
            for (uint32_t j = 0; j < n_win + nc; j++) {
                keys[j] = j < n_win ? ringv + (size_t)((first + j) % ring) * hd
                                    : comp + (size_t)(ratio == 4 ? (uint32_t)sel[t * topk + j - n_win] : j - n_win) * hd;
                double dot = 0;
                for (uint32_t i = 0; i < hd; i++) dot += (double)qh[i] * keys[j][i];
                att[j] = dot * 0.125;
                mx = fmax(mx, att[j]);
            }
            den = exp(sinks[h] - mx);
            for (uint32_t j = 0; j < n_win + nc; j++) {
                double e = exp(att[j] - mx);
                den += e;
                for (uint32_t i = 0; i < hd; i++) acc[i] += e * keys[j][i];
            }
            float ref[ATTN_TEST_MAX_HEAD_DIM];
            for (uint32_t i = 0; i < hd; i++) ref[i] = (float)(acc[i] / den);
            ref_rope(ref, hd, rope, freqs, pos, true);
            double e = nmse_f(o + VK_GUARD + ((size_t)t * H + h) * hd, ref, hd);
            if (!(e < 1e-10))
                test_fail_at(__FILE__, __LINE__,
                             "attention kernel %d (%u heads a workgroup, chunk %u, kv %s) ratio %u pos %u, %u keys, head %u: "
                             "nmse %.3g", (int)kernel, heads, c.chunk, engine_kv_name(c.kv), ratio, pos, n_win + nc, h, e);
        }
    free(att); free(keys); free(sel);
    free(q); free(ringv); free(comp); free(sinks); free(tab); free(o); free(stored);
}

static void check_attention(struct vk_fixture *f, uint32_t ratio, enum attn_kernel kernel, uint32_t H, uint32_t n_tok,
                            uint32_t hd)
{
    check_attention_case(f, kernel, (struct attn_case){ .ratio = ratio, .H = H, .n_tok = n_tok, .hd = hd, .pos0 = 29, .topk = 3 });
}

TEST(vk_attention_matches_direct_evaluation_for_swa_csa_and_hca_from_buffers_and_texels)
{
    struct vk_fixture f;
    if (vk_fixture_open(&f)) return;
    for (int kernel = ATTN_BUFFERS; kernel <= ATTN_TEXELS; kernel++) {
        check_attention(&f, 0, kernel, 3, 4, ATTN_TEST_HEAD_DIM);
        check_attention(&f, 4, kernel, 3, 4, ATTN_TEST_HEAD_DIM);
        check_attention(&f, 8, kernel, 3, 4, ATTN_TEST_HEAD_DIM);
        check_attention(&f, 4, kernel, 2, 2, ATTN_TEST_MAX_HEAD_DIM); /* the longest rows the kernels take */
    }
    vk_fixture_close(&f);
}

TEST(vk_attention_heads_matches_direct_evaluation_for_every_head_grouping)
{
    struct vk_fixture f;
    if (vk_fixture_open(&f)) return;
    f.ops.layout = VK_MATVEC_LANES; /* the CPU-driver kernel, on any device */
    if (ATTN_TEST_HEAD_DIM % (4 * f.ops.lanes_wg)) {
        vk_fixture_close(&f);
        test_skip("head rows of 64 floats do not split over this device's subgroup (LANES runs on CPU drivers)");
    }
    static const uint32_t shapes[][2] = {
        { 8, 4 }, /* 8 heads a workgroup */
        { 8, 1 }, /* one token: 4 heads a workgroup, so two workgroups */
        { 6, 3 }, /* 2 heads a workgroup */
        { 3, 4 }, /* 1 head a workgroup */
    };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        for (uint32_t ratio = 0; ratio <= 8; ratio += 4) check_attention(&f, ratio, ATTN_HEADS, shapes[i][0], shapes[i][1], ATTN_TEST_HEAD_DIM);
    vk_fixture_close(&f);
}

/* Compressed entries stored in f16 and FP8: attention.comp unpacks them to the values the
 * host packed (the direct evaluation reads those), for SWA, CSA and HCA, in chunks too. */
TEST(vk_attention_reads_f16_and_fp8_entries_as_stored)
{
    struct vk_fixture f;
    if (vk_fixture_open(&f)) return;
    for (int kv = ENGINE_KV_F16; kv <= ENGINE_KV_FP8; kv++)
        for (uint32_t ratio = 0; ratio <= 8; ratio += 4) {
            check_attention_case(&f, ATTN_BUFFERS, (struct attn_case){ .ratio = ratio, .H = 3, .n_tok = 4, .hd = 64, .pos0 = 29,
                                                                       .topk = 3, .kv = (enum engine_kv_type)kv });
            check_attention_case(&f, ATTN_BUFFERS, (struct attn_case){ .ratio = ratio, .H = 2, .n_tok = 2, .hd = 64, .pos0 = 29,
                                                                       .topk = 3, .chunk = 3, .kv = (enum engine_kv_type)kv });
        }
    vk_fixture_close(&f);
}

/* Keys in chunks: tiny chunks on a few keys (every boundary: one key, a chunk per key, a
 * last chunk of one), and past the default chunk with more compressed entries than it holds
 * (HCA at position 300,000: 2,344 entries; CSA selecting 2,100), for both storage-buffer
 * kernels; the CPU-driver kernel (one pass, no chunks) on the long cases too. */
TEST(vk_attention_chunks_match_direct_evaluation_on_few_and_many_keys)
{
    struct vk_fixture f;
    if (vk_fixture_open(&f)) return;
    static const uint32_t chunks[] = { 1, 2, 3, 5, 7 };
    for (int kernel = ATTN_BUFFERS; kernel <= ATTN_TEXELS; kernel++) {
        for (size_t i = 0; i < sizeof chunks / sizeof chunks[0]; i++)
            for (uint32_t ratio = 0; ratio <= 8; ratio += 4)
                check_attention_case(&f, kernel, (struct attn_case){ .ratio = ratio, .H = 3, .n_tok = 4, .hd = 64, .pos0 = 29,
                                                                     .topk = 3, .chunk = chunks[i] });
        check_attention_case(&f, kernel, (struct attn_case){ .ratio = 128, .H = 2, .n_tok = 2, .hd = 64, .pos0 = 300000 });
        check_attention_case(&f, kernel, (struct attn_case){ .ratio = 4, .H = 2, .n_tok = 2, .hd = 64, .pos0 = 20000,
                                                             .topk = 2100, .chunk = 1000 });
    }
    f.ops.layout = VK_MATVEC_LANES;
    if (64 % (4 * f.ops.lanes_wg) == 0) {
        check_attention_case(&f, ATTN_HEADS, (struct attn_case){ .ratio = 128, .H = 2, .n_tok = 2, .hd = 64, .pos0 = 300000 });
        check_attention_case(&f, ATTN_HEADS, (struct attn_case){ .ratio = 4, .H = 2, .n_tok = 2, .hd = 64, .pos0 = 20000,
                                                                 .topk = 2100 });
    }
    vk_fixture_close(&f);
}
