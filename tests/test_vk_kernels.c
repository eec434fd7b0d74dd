/* Every Vulkan kernel against the CPU reference on random inputs over edge shapes (sizes
 * that are not multiples of the workgroup or block, one token, many tokens), with guard
 * words around outputs to catch out-of-range writes. Skipped without any Vulkan device. */
#include <stdlib.h>

#include "engine/quant.h"
#include "tests/vk_fixture.h"

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
        default: break;
        }
        dequant_row(type, dst, src, n_in);
    }
    *bytes = (uint64_t)n_rows * row_bytes;
    return q;
}

struct mv_case {
    uint32_t n_in, n_out, n_tok, n_mat, n_slot;
    bool use_ids, accumulate;
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
        { 32, 1, 1, 0, 0, false, false },     /* one block, one row */
        { 96, 37, 1, 0, 0, false, false },    /* rows not a multiple of the workgroup */
        { 37, 19, 1, 0, 0, false, false },    /* float types: odd row length, tail loop */
        { 1024, 70, 1, 0, 0, false, true },   /* long rows, accumulate into y */
        { 256, 67, 3, 0, 0, false, false },   /* a few tokens (decode kernel per token) */
    };
    check_cases(&f, cases, sizeof cases / sizeof cases[0], false);
    vk_fixture_close(&f);
}

TEST(vk_matmul_matches_reference_for_many_tokens)
{
    struct vk_fixture f;
    if (vk_fixture_open(&f)) return;
    static const struct mv_case cases[] = {
        { 160, 33, 8, 0, 0, false, false },   /* exactly one token tile */
        { 64, 45, 21, 0, 0, false, true },    /* tiles with a remainder, accumulate */
        { 45, 13, 9, 0, 0, false, false },    /* float types: odd rows in the tiled kernel */
    };
    check_cases(&f, cases, sizeof cases / sizeof cases[0], false);
    vk_fixture_close(&f);
}

TEST(vk_matvec_picks_expert_matrices_through_ids)
{
    struct vk_fixture f;
    if (vk_fixture_open(&f)) return;
    static const struct mv_case cases[] = {
        { 64, 24, 1, 8, 3, true, false },     /* three experts of eight, shared x (gate/up) */
        { 96, 17, 1, 5, 4, true, true },      /* per-slot x (down), accumulate */
    };
    check_cases(&f, cases, sizeof cases / sizeof cases[0], false);
    vk_fixture_close(&f);
}

TEST(vk_matvec_splits_weights_larger_than_one_binding)
{
    struct vk_fixture f;
    if (vk_fixture_open(&f)) return;
    /* Pretend the device binds at most 6 KiB so a [128, 70] matrix needs several ranges,
     * most starting at offsets that are not aligned to the storage alignment. */
    f.d->max_range = 6144;
    static const struct mv_case cases[] = { { 128, 70, 1, 0, 0, false, false }, { 128, 29, 9, 0, 0, false, false } };
    check_cases(&f, cases, sizeof cases / sizeof cases[0], false);
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
