/* The lattice i-quant quantizers (IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ1_S, IQ1_M;
 * engine/model/quantize_iq.c): their blocks read back through the bit-exact dequantizer closer
 * than a plain nearest-grid quantizer and within a stated factor of Q2_K, importance weights
 * pull the weighted columns closer, the format's sign parity holds (IQ2_S: x's own signs), and
 * malformed rows are refused. */
#include <math.h>
#include <string.h>

#include "engine/model/quant.h"
#include "shaders/iq_grids.h"
#include "tests/harness.h"

#define N_ROWS 16

/* Irwin-Hall gaussians from an LCG: fixed, portable inputs. */
static void gaussian_rows(float *x, int n, uint64_t seed)
{
    for (int i = 0; i < n; i++) {
        double u = 0;
        for (int k = 0; k < 12; k++) {
            seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
            u += (double)(seed >> 11) / (double)(1ULL << 53);
        }
        x[i] = (float)(u - 6);
    }
}

/* Importance weights that vary inside every block of 16 (a weight constant over a block
 * would not change that block's fit). */
static float column_weight(int j) { return (float)(1 + (j * 7) % 13) * (j % 5 == 0 ? 8.f : 1.f); }

/* sum w (x - y)^2 over n values of x quantized as type and read back; w NULL: 1. */
static double round_trip_error(enum gguf_type type, const float *x, int n, const float *qw, const float *w)
{
    static uint8_t blocks[N_ROWS * QK_K * 4];
    static float y[N_ROWS * QK_K];
    const uint32_t bb = gguf_type_block_bytes(type);
    for (int r = 0; r < n / QK_K; r++)
        if (quant_quantize_row(type, x + r * QK_K, blocks + r * bb, QK_K, qw ? qw + r * QK_K : NULL)) return INFINITY;
    if (dequant_row(type, blocks, y, (uint64_t)n)) return INFINITY;
    double e = 0;
    for (int i = 0; i < n; i++) e += (w ? w[i] : 1.0) * (double)(x[i] - y[i]) * (x[i] - y[i]);
    return e;
}

/* A plain quantizer, in floats (so also spared the 4-bit scale and f16 rounding): signs from
 * x with the smallest magnitude of an odd group flipped (IQ2_S: x's), one scale per 32 values at
 * amax / the largest level, and per grid entry the one nearest in plain squared distance. */
static double nearest_grid_error(enum gguf_type type, const float *x, int n, const float *w)
{
    static const float l2[3] = { 8, 25, 43 }, l3[8] = { 4, 12, 20, 28, 36, 44, 52, 62 };
    const bool iq3 = type == GGUF_TYPE_IQ3_XXS;
    const bool iq2s = type == GGUF_TYPE_IQ2_S;
    const uint16_t *grid = iq3 ? iq3xxs_grid : iq2s ? iq2s_grid : type == GGUF_TYPE_IQ2_XS ? iq2xs_grid : iq2xxs_grid;
    const int n_grid = iq2s ? 1024 : type == GGUF_TYPE_IQ2_XS ? 512 : 256, gs = iq3 ? 4 : 8, bits = iq3 ? 3 : 2;
    const float *lv = iq3 ? l3 : l2, top = iq3 ? 62 : 43;
    double e = 0;
    for (int b = 0; b < n; b += 32) {
        float t[32], amax = 0;
        for (int g = 0; g < 32; g += 8) {
            int neg = 0, small = g;
            for (int j = g; j < g + 8; j++) {
                neg += x[b + j] < 0;
                if (fabsf(x[b + j]) < fabsf(x[b + small])) small = j;
            }
            for (int j = g; j < g + 8; j++) t[j] = !iq2s && (neg & 1) && j == small ? -fabsf(x[b + j]) : fabsf(x[b + j]);
        }
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, t[j]);
        const float s = amax / top;
        for (int g = 0; g < 32; g += gs) {
            double best = INFINITY;
            int pick = 0;
            for (int k = 0; k < n_grid; k++) {
                double d = 0;
                for (int j = 0; j < gs; j++) {
                    const double v = s * lv[(grid[k] >> bits * j) & ((1 << bits) - 1)] - t[g + j];
                    d += v * v;
                }
                if (d < best) best = d, pick = k;
            }
            for (int j = 0; j < gs; j++) {
                const double v = s * lv[(grid[pick] >> bits * j) & ((1 << bits) - 1)] - t[g + j];
                e += (w ? w[b + g + j] : 1.0) * v * v;
            }
        }
    }
    return e;
}

/* The 1-bit types' plain quantizer, in floats: per 32 values the scale 1.5 x mean |x| (about
 * the best ternary level for gaussian values; IQ1_M has one per 16), and per group of 8 the
 * grid entry nearest in plain squared distance over all 2048 entries, for each delta sign,
 * the sign kept that is nearer per 32 values (IQ1_S) or per group (IQ1_M). */
static double nearest_grid_error_iq1(enum gguf_type type, const float *x, int n, const float *w)
{
    const int unit = type == GGUF_TYPE_IQ1_S ? 32 : 8;
    double e = 0;
    for (int b = 0; b < n; b += 32) {
        float s = 0;
        for (int j = 0; j < 32; j++) s += fabsf(x[b + j]);
        s *= 1.5f / 32;
        for (int u = b; u < b + 32; u += unit) {
            double best_d = INFINITY, best_e = 0;
            for (int sg = 0; sg < 2; sg++) {
                const float delta = sg ? -0.125f : 0.125f;
                double d_unit = 0, e_unit = 0;
                for (int g = u; g < u + unit; g += 8) {
                    double best = INFINITY;
                    int pick = 0;
                    for (int k = 0; k < 2048; k++) {
                        double d = 0;
                        for (int j = 0; j < 8; j++) {
                            const double v = s * ((float)(iq1s_grid[k] >> 2 * j & 3) - 1 + delta) - x[g + j];
                            d += v * v;
                        }
                        if (d < best) best = d, pick = k;
                    }
                    d_unit += best;
                    for (int j = 0; j < 8; j++) {
                        const double v = s * ((float)(iq1s_grid[pick] >> 2 * j & 3) - 1 + delta) - x[g + j];
                        e_unit += (w ? w[g + j] : 1.0) * v * v;
                    }
                }
                if (d_unit < best_d) best_d = d_unit, best_e = e_unit;
            }
            e += best_e;
        }
    }
    return e;
}

static bool is_iq1(enum gguf_type t) { return t == GGUF_TYPE_IQ1_S || t == GGUF_TYPE_IQ1_M; }

static const enum gguf_type iq_types[] = { GGUF_TYPE_IQ2_XXS, GGUF_TYPE_IQ2_XS, GGUF_TYPE_IQ3_XXS,
                                           GGUF_TYPE_IQ2_S,   GGUF_TYPE_IQ1_S,  GGUF_TYPE_IQ1_M };

TEST(iq_quantizers_beat_a_nearest_grid_quantizer_and_stay_near_q2_k)
{
    static float x[N_ROWS * QK_K], qw[N_ROWS * QK_K], w[N_ROWS * QK_K];
    const int n = N_ROWS * QK_K;
    gaussian_rows(x, n, 19);
    for (int i = 0; i < n; i++) {
        qw[i] = column_weight(i % QK_K);
        w[i] = qw[i];
    }
    double x2 = 0;
    for (int i = 0; i < n; i++) x2 += (double)x[i] * x[i];
    /* the plain quantizer sees the true scale, not the 4-bit one: 5% better suffices without
     * weights (measured 0.78-0.91x), 20% with (it ignores them; measured 0.49-0.58x). IQ1's
     * plain quantizer has a float scale near the best ternary one, and ours weights the large
     * values more (plain rms is not what it fits): better at all suffices (measured IQ1_S
     * 0.992x, IQ1_M 0.930x), 20% with weights (0.740x, 0.571x). Relative rms error without
     * weights, measured when written: IQ2_XXS 0.336, IQ2_XS 0.290, IQ3_XXS 0.175, IQ2_S 0.245,
     * IQ1_S 0.449, IQ1_M 0.420 (Q2_K 0.29; the best 3-level quantizer of a gaussian, any
     * 3 levels per value: 0.436): bounds about 1.1x */
    static const double rel_bound[] = { 0.37, 0.32, 0.20, 0.27, 0.49, 0.46 };
    for (size_t k = 0; k < sizeof iq_types / sizeof iq_types[0]; k++) {
        const enum gguf_type t = iq_types[k];
        const double plain = round_trip_error(t, x, n, NULL, NULL);
        const double naive = is_iq1(t) ? nearest_grid_error_iq1(t, x, n, NULL) : nearest_grid_error(t, x, n, NULL);
        const double weighted = round_trip_error(t, x, n, qw, w);
        const double naive_w = is_iq1(t) ? nearest_grid_error_iq1(t, x, n, w) : nearest_grid_error(t, x, n, w);
        const double rel = sqrt(plain / x2);
        if (!(plain < (is_iq1(t) ? 1.0 : 0.95) * naive && weighted < 0.8 * naive_w && rel < rel_bound[k]))
            test_fail_at(__FILE__, __LINE__, "%s: error %g (nearest grid %g, relative rms %.4f, bound %.2f), weighted %g (%g)",
                         gguf_type_name(t), plain, naive, rel, rel_bound[k], weighted, naive_w);
    }
    /* IQ2_XXS at 2.06 bits against Q2_K at 2.63, both weighted by the same imatrix: measured
     * 1.56x Q2_K's weighted error (1.29x without weights) when written */
    const double q2 = round_trip_error(GGUF_TYPE_Q2_K, x, n, qw, w), iq2 = round_trip_error(GGUF_TYPE_IQ2_XXS, x, n, qw, w);
    if (!(iq2 < 1.8 * q2)) test_fail_at(__FILE__, __LINE__, "IQ2_XXS weighted error %g, Q2_K %g: over 1.8x", iq2, q2);
    const double q2p = round_trip_error(GGUF_TYPE_Q2_K, x, n, NULL, NULL), iq2p = round_trip_error(GGUF_TYPE_IQ2_XXS, x, n, NULL, NULL);
    if (!(iq2p < 1.45 * q2p)) test_fail_at(__FILE__, __LINE__, "IQ2_XXS error %g, Q2_K %g: over 1.45x", iq2p, q2p);
}

TEST(iq_quantizers_fit_the_weighted_columns_closer)
{
    /* the same rows with and without importance weights: the weighted error is smaller with them */
    static float x[N_ROWS * QK_K], qw[N_ROWS * QK_K];
    const int n = N_ROWS * QK_K;
    gaussian_rows(x, n, 7);
    for (int i = 0; i < n; i++) qw[i] = column_weight(i % QK_K);
    for (size_t k = 0; k < sizeof iq_types / sizeof iq_types[0]; k++) {
        const double with = round_trip_error(iq_types[k], x, n, qw, qw), without = round_trip_error(iq_types[k], x, n, NULL, qw);
        if (!(with < 0.9 * without))
            test_fail_at(__FILE__, __LINE__, "%s: weighted error %g with the imatrix, %g without", gguf_type_name(iq_types[k]),
                         with, without);
    }
}

TEST(iq_quantizers_keep_the_sign_parity_and_x_s_signs)
{
    /* every group of 8 read back has an even count of negatives (the eighth sign is implied);
     * it has x's signs where x's count is even, and all but one where it is odd; IQ2_S stores
     * all eight: x's signs everywhere (IQ1's levels -1, 0, 1 carry no sign bits: not here) */
    static float x[N_ROWS * QK_K], y[QK_K];
    gaussian_rows(x, N_ROWS * QK_K, 3);
    uint8_t blocks[QK_K];
    for (size_t k = 0; k < sizeof iq_types / sizeof iq_types[0]; k++)
        for (int r = 0; r < N_ROWS && !is_iq1(iq_types[k]); r++) {
            const float *xr = x + r * QK_K;
            REQUIRE(quant_quantize_row(iq_types[k], xr, blocks, QK_K, NULL) == 0);
            REQUIRE(dequant_row(iq_types[k], blocks, y, QK_K) == 0);
            for (int g = 0; g < QK_K; g += 8) {
                int neg_x = 0, neg_y = 0, differ = 0;
                for (int j = g; j < g + 8; j++) {
                    neg_x += xr[j] < 0;
                    neg_y += y[j] < 0;
                    differ += (xr[j] < 0) != (y[j] < 0);
                    if (y[j] == 0) test_fail_at(__FILE__, __LINE__, "%s: a zero read back", gguf_type_name(iq_types[k]));
                }
                const bool all = iq_types[k] == GGUF_TYPE_IQ2_S;
                if (all ? differ != 0 : neg_y % 2 || differ != neg_x % 2) {
                    test_fail_at(__FILE__, __LINE__, "%s row %d group %d: %d negatives in x, %d read back, %d signs differ",
                                 gguf_type_name(iq_types[k]), r, g / 8, neg_x, neg_y, differ);
                    return;
                }
            }
        }
}

TEST(iq_quantizers_refuse_non_finite_and_partial_rows_and_zero_rows_read_back_zero)
{
    static float x[2 * QK_K], y[2 * QK_K];
    static uint8_t blocks[4 * QK_K], before[4 * QK_K];
    for (size_t k = 0; k < sizeof iq_types / sizeof iq_types[0]; k++) {
        const enum gguf_type t = iq_types[k];
        gaussian_rows(x, 2 * QK_K, 5);
        memset(blocks, 0xa5, sizeof blocks);
        memcpy(before, blocks, sizeof blocks);
        const float bad[] = { NAN, INFINITY, -INFINITY };
        for (int b = 0; b < 3; b++) {
            x[QK_K + 17] = bad[b]; /* in the second super-block: the first must not be written either */
            CHECK(quant_quantize_row(t, x, blocks, 2 * QK_K, NULL) == -1);
            CHECK(memcmp(blocks, before, sizeof blocks) == 0);
        }
        gaussian_rows(x, 2 * QK_K, 5);
        CHECK(quant_quantize_row(t, x, blocks, QK_K + 32, NULL) == -1); /* not whole super-blocks */
        CHECK(memcmp(blocks, before, sizeof blocks) == 0);
        /* the typed entry points say the same */
        x[3] = NAN;
        int rc = t == GGUF_TYPE_IQ2_XXS ? quantize_row_iq2_xxs(x, (void *)blocks, QK_K, NULL)
               : t == GGUF_TYPE_IQ2_XS  ? quantize_row_iq2_xs(x, (void *)blocks, QK_K, NULL)
               : t == GGUF_TYPE_IQ2_S   ? quantize_row_iq2_s(x, (void *)blocks, QK_K, NULL)
               : t == GGUF_TYPE_IQ1_S   ? quantize_row_iq1_s(x, (void *)blocks, QK_K, NULL)
               : t == GGUF_TYPE_IQ1_M   ? quantize_row_iq1_m(x, (void *)blocks, QK_K, NULL)
                                        : quantize_row_iq3_xxs(x, (void *)blocks, QK_K, NULL);
        CHECK(rc == -1 && memcmp(blocks, before, sizeof blocks) == 0);
        /* an all-zero super-block (here next to a non-zero one) reads back as zeros, with or without weights */
        gaussian_rows(x, QK_K, 9);
        memset(x + QK_K, 0, QK_K * sizeof *x);
        static float qz[2 * QK_K]; /* |x| as weights: the zero half has all-zero weights */
        for (int j = 0; j < 2 * QK_K; j++) qz[j] = fabsf(x[j]);
        const float *qw_cases[2] = { NULL, qz };
        for (int c = 0; c < 2; c++) {
            REQUIRE(quant_quantize_row(t, x, blocks, 2 * QK_K, qw_cases[c]) == 0);
            REQUIRE(dequant_row(t, blocks, y, 2 * QK_K) == 0);
            for (int j = QK_K; j < 2 * QK_K; j++)
                if (y[j] != 0) {
                    test_fail_at(__FILE__, __LINE__, "%s: zero value %d read back as %g", gguf_type_name(t), j, y[j]);
                    break;
                }
        }
    }
    /* the block types refuse a NaN in quant_quantize_row too; the float types keep it */
    x[0] = NAN;
    CHECK(quant_quantize_row(GGUF_TYPE_Q2_K, x, blocks, QK_K, NULL) == -1);
    CHECK(quant_quantize_row(GGUF_TYPE_Q8_0, x, blocks, QK_K, NULL) == -1);
    CHECK(quant_quantize_row(GGUF_TYPE_F16, x, blocks, QK_K, NULL) == 0);
}
