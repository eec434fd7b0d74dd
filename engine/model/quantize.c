/* Quantizers for ggml's K-quants (Q2_K .. Q6_K) and IQ4_NL / IQ4_XS: the same output bytes as
 * ggml's quantize_row_*_ref and, for whole rows, as what llama.cpp's quantize writes with or
 * without an importance matrix (ggml's quantize_* with or without weights; with weights the
 * K-quants fit their sub-blocks and their scales by other rules, below).
 *
 * Same bytes means the same float operations in the same order: every sum below is
 * accumulated in ggml's order and each product is grouped as ggml groups it (w * x * l is
 * (w * x) * l); regrouping changes the last bit of a scale and then a whole block's bytes.
 * The fits are facts of the formats' design (least squares over a handful of candidate
 * scales); the code is ours. Block layouts: engine/quant.h. Tested against vectors written by
 * ggml's own code (tests/test_quant_ggml.c). */
#include "engine/model/quant.h"

#include <math.h>
#include <stdbool.h>
#include <string.h>

#include "shaders/iq_grids.h"

/* ggml's nearest_int: adding 1.5 * 2^23 leaves round-half-even(f) in the low mantissa bits
 * (exact for |f| < 2^22; beyond that the same wrapped value ggml gets). */
static int round_even(float f)
{
    float v = f + 12582912.f;
    int32_t i;
    memcpy(&i, &v, 4);
    return (i & 0x007fffff) - 0x00400000;
}

static int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

static void put_half(uint16_t *dst, float f)
{
    uint16_t h = f32_to_fp16(f);
    memcpy(dst, &h, 2);
}

static float get_half(const uint16_t *src)
{
    uint16_t h;
    memcpy(&h, src, 2);
    return fp16_to_f32(h);
}

#define GROUP_MAX_EPS 1e-15f /* a group whose largest magnitude is below this is all zero */

/* ---- fits ---- */

/* Squared (or, with use_abs, absolute) weighted error of x ~ scale * q + min. */
static float fit_error(int n, const float *x, const float *w, const uint8_t *q, float scale, float min, bool use_abs)
{
    float err = 0;
    for (int i = 0; i < n; i++) {
        float diff = scale * q[i] + min - x[i];
        diff = use_abs ? fabsf(diff) : diff * diff;
        err += w[i] * diff;
    }
    return err;
}

/* Fits x[n] ~ scale * q + min with integer q in [0, nmax] and min <= 0 by weighted least
 * squares over nstep + 1 candidate grids (inverse scales (nmax + rmin + k*rdelta) / range),
 * keeping the one of least weighted error; q in q[n], -min in *neg_min; returns scale
 * (ggml's make_qkx2_quants). */
static float fit_scale_min(int n, int nmax, const float *x, const float *w, uint8_t *q, float *neg_min, uint8_t *q_try,
                           float rmin, float rdelta, int nstep, bool use_abs)
{
    float min = x[0], max = x[0], sum_w = w[0], sum_x = sum_w * x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if (min > 0) min = 0;
    if (max == min) {
        memset(q, 0, (size_t)n);
        *neg_min = -min;
        return 0.f;
    }
    float iscale = nmax / (max - min), scale = 1 / iscale;
    for (int i = 0; i < n; i++) q[i] = (uint8_t)clampi(round_even(iscale * (x[i] - min)), 0, nmax);
    float best = fit_error(n, x, w, q, scale, min, use_abs);
    for (int k = 0; k <= nstep; k++) {
        iscale = (rmin + rdelta * k + nmax) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; i++) {
            int l = clampi(round_even(iscale * (x[i] - min)), 0, nmax);
            q_try[i] = (uint8_t)l;
            sum_l += w[i] * l;
            sum_l2 += w[i] * l * l;
            sum_xl += w[i] * l * x[i];
        }
        float det = sum_w * sum_l2 - sum_l * sum_l;
        if (!(det > 0)) continue;
        float s = (sum_w * sum_xl - sum_x * sum_l) / det, m = (sum_l2 * sum_x - sum_l * sum_xl) / det;
        if (m > 0) {
            m = 0;
            s = sum_xl / sum_l2;
        }
        float e = fit_error(n, x, w, q_try, s, m, use_abs);
        if (e < best) {
            memcpy(q, q_try, (size_t)n);
            best = e;
            scale = s;
            min = m;
        }
    }
    *neg_min = -min;
    return scale;
}

/* Index of v's nearest entry in the sorted table val[n] (ties to the upper one only when
 * strictly nearer): ggml's best_index_int8. */
static int nearest_value(int n, const int8_t *val, float v)
{
    if (v <= val[0]) return 0;
    if (v >= val[n - 1]) return n - 1;
    int lo = 0, hi = n - 1;
    while (hi - lo > 1) {
        int mid = (lo + hi) / 2;
        if (v < val[mid]) hi = mid;
        else lo = mid;
    }
    return v - val[hi - 1] < val[hi] - v ? hi - 1 : hi;
}

/* The value of largest magnitude in x[n] (the first such), its magnitude in *amax. */
static float largest_magnitude(int n, const float *x, float *amax)
{
    float max = 0;
    *amax = 0;
    for (int i = 0; i < n; i++)
        if (fabsf(x[i]) > *amax) {
            *amax = fabsf(x[i]);
            max = x[i];
        }
    return max;
}

/* The first step of both symmetric fits: q = round(x * -nmax / max) in [-nmax, nmax - 1]
 * (stored plus q_offset) and the sums over it weighted by qw[n] (NULL: x^2). Returns 0, with q
 * zeroed, for a group that is all zero. */
static int fit_signed_start(int n, int nmax, const float *x, const float *qw, int8_t *q, int q_offset, float *max,
                            float *sumlx, float *suml2)
{
    float amax;
    *max = largest_magnitude(n, x, &amax);
    *sumlx = *suml2 = 0;
    if (amax < GROUP_MAX_EPS) {
        memset(q, 0, (size_t)n);
        return 0;
    }
    const float iscale = -nmax / *max;
    for (int i = 0; i < n; i++) {
        int l = clampi(round_even(iscale * x[i]), -nmax, nmax - 1);
        q[i] = (int8_t)(l + q_offset);
        float w = qw ? qw[i] : x[i] * x[i];
        *sumlx += w * x[i] * l;
        *suml2 += w * l * l;
    }
    return 1;
}

/* Symmetric fit x[n] ~ scale * q, q in [-nmax, nmax - 1], weights qw[n] (NULL: x^2): the
 * scale of the largest magnitude, then 18 nearby inverse scales (nmax + k/10) / -max, keeping
 * the one that maximises (sum w x q)^2 / sum w q^2 (ggml's make_qx_quants with rmse_type 1).
 * q + nmax is written to q[n]. */
static float fit_signed(int n, int nmax, const float *x, const float *qw, int8_t *q)
{
    float max, sumlx, suml2, iscale;
    if (!fit_signed_start(n, nmax, x, qw, q, nmax, &max, &sumlx, &suml2)) return 0.f;
    float scale = suml2 ? sumlx / suml2 : 0.0f, best = scale * sumlx;
    for (int is = -9; is <= 9; is++) {
        if (is == 0) continue;
        iscale = -(nmax + 0.1f * is) / max;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; i++) {
            int l = clampi(round_even(iscale * x[i]), -nmax, nmax - 1);
            float w = qw ? qw[i] : x[i] * x[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; i++) q[i] = (int8_t)(nmax + clampi(round_even(iscale * x[i]), -nmax, nmax - 1));
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

/* Q3_K's sub-block fit: q in [-nmax, nmax - 1] from the largest magnitude, then up to five
 * passes that move single q to the value that raises (sum w x q)^2 / sum w q^2 (weights x^2;
 * ggml's make_q3_quants with do_rmse). q + nmax is written to q[n]. */
static float fit_q3(int n, int nmax, const float *x, int8_t *q)
{
    float max, sumlx, suml2;
    if (!fit_signed_start(n, nmax, x, NULL, q, 0, &max, &sumlx, &suml2)) return 0.f;
    for (int pass = 0; pass < 5; pass++) {
        int n_changed = 0;
        for (int i = 0; i < n; i++) {
            float w = x[i] * x[i], slx = sumlx - w * x[i] * q[i];
            if (!(slx > 0)) continue;
            float sl2 = suml2 - w * q[i] * q[i];
            int l = clampi(round_even(x[i] * sl2 / slx), -nmax, nmax - 1);
            if (l == q[i]) continue;
            slx += w * x[i] * l;
            sl2 += w * l * l;
            if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
                q[i] = (int8_t)l;
                sumlx = slx;
                suml2 = sl2;
                n_changed++;
            }
        }
        if (!n_changed) break;
    }
    for (int i = 0; i < n; i++) q[i] = (int8_t)(q[i] + nmax);
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

/* Fits non-negative x[n] (a super-block's sub-block scales or mins) ~ scale * q with integer
 * q in [0, nmax], weighted by w[n]: the largest value's grid and 8 nearby inverse scales
 * (nmax + k/10) / max, keeping the least weighted squared error, then up to five passes that
 * move single q to the value that raises (sum w x q)^2 / sum w q^2 (ggml's make_qp_quants).
 * Like ggml, q is only clamped from above: a negative x wraps in the uint8_t. Returns scale. */
static float fit_positive(int n, int nmax, const float *x, uint8_t *q, const float *w)
{
    float max = 0;
    for (int i = 0; i < n; i++) max = max > x[i] ? max : x[i];
    if (max < GROUP_MAX_EPS) {
        memset(q, 0, (size_t)n);
        return 0.f;
    }
    float iscale = nmax / max;
    for (int i = 0; i < n; i++) q[i] = (uint8_t)round_even(iscale * x[i]);
    float scale = 1 / iscale, best = 0;
    for (int i = 0; i < n; i++) {
        float diff = x[i] - scale * q[i];
        best += w[i] * diff * diff;
    }
    for (int k = -4; k <= 4; k++) {
        if (k == 0) continue;
        const float iscale_k = (0.1f * k + nmax) / max, scale_k = 1 / iscale_k;
        float err = 0;
        for (int i = 0; i < n; i++) {
            int l = round_even(iscale_k * x[i]);
            if (l > nmax) l = nmax;
            float diff = x[i] - scale_k * l;
            err += w[i] * diff * diff;
        }
        if (err < best) {
            best = err;
            iscale = iscale_k;
        }
    }
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        int l = round_even(iscale * x[i]);
        if (l > nmax) l = nmax;
        q[i] = (uint8_t)l;
        sumlx += w[i] * x[i] * l;
        suml2 += w[i] * l * l;
    }
    for (int pass = 0; pass < 5; pass++) {
        int n_changed = 0;
        for (int i = 0; i < n; i++) {
            float slx = sumlx - w[i] * x[i] * q[i], sl2 = suml2 - w[i] * q[i] * q[i];
            if (!(slx > 0 && sl2 > 0)) continue;
            int l = round_even(x[i] * sl2 / slx);
            if (l > nmax) l = nmax;
            if (l == q[i]) continue;
            slx += w[i] * x[i] * l;
            sl2 += w[i] * l * l;
            if (slx * slx * suml2 > sumlx * sumlx * sl2) {
                q[i] = (uint8_t)l;
                sumlx = slx;
                suml2 = sl2;
                n_changed++;
            }
        }
        if (!n_changed) break;
    }
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

static float sum_squares(const float *x, int n)
{
    float s = 0;
    for (int i = 0; i < n; i++) s += x[i] * x[i];
    return s;
}

/* A sub-block's fitting weights when an imatrix is given: w[l] = qw[l] * sqrt(sigma2 + x[l]^2)
 * (sigma2 a multiple of the super-block's mean x^2: the imatrix says which columns matter,
 * the square root keeps large elements from being lost in a quiet column); their sum in *sum_w. */
static void importance_weights(int n, const float *x, const float *qw, float sigma2, float *w, float *sum_w)
{
    *sum_w = 0;
    for (int l = 0; l < n; l++) w[l] = qw[l] * sqrtf(sigma2 + x[l] * x[l]);
    for (int l = 0; l < n; l++) *sum_w += w[l];
}

/* ---- K-quants ----
 *
 * Each type in two steps: a fit that writes the block's scales (and d, dmin) and a first q,
 * without importance weights (ggml's _ref) or with them (what quantize_* does given an
 * imatrix); then the same requantization of x against the rounded scales and packing. */

/* Q2_K without weights: sub-blocks of 16 fitted with weights |x|, their scales and mins
 * rounded to 4 bits against the largest of each. */
static void fit_q2_k(const float *x, struct block_q2_k *b, uint8_t q[QK_K])
{
    uint8_t q_try[16];
    float w[16], scales[QK_K / 16], mins[QK_K / 16], max_scale = 0, max_min = 0;
    for (int j = 0; j < QK_K / 16; j++) {
        for (int l = 0; l < 16; l++) w[l] = fabsf(x[16 * j + l]);
        scales[j] = fit_scale_min(16, 3, x + 16 * j, w, q + 16 * j, &mins[j], q_try, -0.5f, 0.1f, 15, true);
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    /* 4-bit sub-block scales (low nibble) and mins (high nibble) against d and dmin */
    memset(b->scales, 0, sizeof b->scales);
    if (max_scale > 0)
        for (int j = 0; j < QK_K / 16; j++) b->scales[j] = (uint8_t)round_even(15.f / max_scale * scales[j]);
    put_half(&b->d, max_scale > 0 ? max_scale / 15.f : 0.f);
    if (max_min > 0)
        for (int j = 0; j < QK_K / 16; j++) b->scales[j] |= (uint8_t)(round_even(15.f / max_min * mins[j]) << 4);
    put_half(&b->dmin, max_min > 0 ? max_min / 15.f : 0.f);
}

/* Q2_K with importance weights qw[QK_K]: sub-blocks fitted over 37 candidate grids, then the
 * 16 scales and the 16 mins each fitted to 4 bits by fit_positive, weighted by the
 * sub-blocks' total weight. */
static void fit_q2_k_weighted(const float *x, const float *qw, struct block_q2_k *b, uint8_t q[QK_K])
{
    uint8_t q_try[16], ls[QK_K / 16], lm[QK_K / 16];
    float w[16], sw[QK_K / 16], scales[QK_K / 16], mins[QK_K / 16];
    const float sigma2 = sum_squares(x, QK_K) / QK_K;
    for (int j = 0; j < QK_K / 16; j++) {
        importance_weights(16, x + 16 * j, qw + 16 * j, sigma2, w, &sw[j]);
        scales[j] = fit_scale_min(16, 3, x + 16 * j, w, q + 16 * j, &mins[j], q_try, -0.9f, 0.05f, 36, false);
    }
    put_half(&b->d, fit_positive(QK_K / 16, 15, scales, ls, sw));
    put_half(&b->dmin, fit_positive(QK_K / 16, 15, mins, lm, sw));
    for (int j = 0; j < QK_K / 16; j++) b->scales[j] = (uint8_t)(ls[j] | lm[j] << 4);
}

/* 2-bit q: element 128h + 32s + l goes to qs[32h + l] bits 2s */
static void pack_2bit(const uint8_t *q, uint8_t qs[QK_K / 4])
{
    for (int h = 0; h < 2; h++)
        for (int l = 0; l < 32; l++) {
            const uint8_t *s = q + 128 * h + l;
            qs[32 * h + l] = (uint8_t)(s[0] | s[32] << 2 | s[64] << 4 | s[96] << 6);
        }
}

void quantize_row_q2_k(const float *x, struct block_q2_k *y, uint64_t n, const float *qw)
{
    uint8_t q[QK_K];
    for (uint64_t ib = 0; ib < n / QK_K; ib++, x += QK_K) {
        struct block_q2_k *b = &y[ib];
        if (qw) fit_q2_k_weighted(x, qw + QK_K * ib, b, q);
        else fit_q2_k(x, b, q);
        /* requantize against the rounded scales */
        const float d = get_half(&b->d), dmin = get_half(&b->dmin);
        for (int j = 0; j < QK_K / 16; j++) {
            const float dl = d * (b->scales[j] & 0xf);
            if (!dl) continue;
            const float ml = dmin * (b->scales[j] >> 4);
            for (int l = 0; l < 16; l++) q[16 * j + l] = (uint8_t)clampi(round_even((x[16 * j + l] + ml) / dl), 0, 3);
        }
        pack_2bit(q, b->qs);
    }
}

/* Q3_K's 16 six-bit scales (stored l + 32 = ls[j]) packed as q3_k_scale reads them. */
static void pack_q3_k_scales(const int *ls, uint8_t scales[12])
{
    memset(scales, 0, 12);
    for (int j = 0; j < QK_K / 16; j++) {
        const int l = ls[j];
        if (j < 8) scales[j] = (uint8_t)(l & 0xf);
        else scales[j - 8] |= (uint8_t)((l & 0xf) << 4);
        scales[j % 4 + 8] |= (uint8_t)((l >> 4) << 2 * (j / 4));
    }
}

/* Q3_K without weights: sub-blocks by fit_q3, scales rounded against d = max_scale / -32. */
static void fit_q3_k(const float *x, struct block_q3_k *b, int8_t q[QK_K])
{
    float scales[QK_K / 16], max_scale = 0, amax = 0;
    int ls[QK_K / 16];
    for (int j = 0; j < QK_K / 16; j++) {
        scales[j] = fit_q3(16, 4, x + 16 * j, q + 16 * j);
        if (fabsf(scales[j]) > amax) {
            amax = fabsf(scales[j]);
            max_scale = scales[j];
        }
    }
    if (!max_scale) {
        memset(b->scales, 0, sizeof b->scales);
        put_half(&b->d, 0.f);
        return;
    }
    const float iscale = -32.f / max_scale;
    for (int j = 0; j < QK_K / 16; j++) ls[j] = clampi(round_even(iscale * scales[j]), -32, 31) + 32;
    pack_q3_k_scales(ls, b->scales);
    put_half(&b->d, 1 / iscale);
}

/* Q3_K with importance weights qw[QK_K]: sub-blocks by fit_signed with them, the 16 scales by
 * fit_signed again, weighted by the sub-blocks' total weight. */
static void fit_q3_k_weighted(const float *x, const float *qw, struct block_q3_k *b, int8_t q[QK_K])
{
    float w[16], sw[QK_K / 16], scales[QK_K / 16];
    int8_t l6[QK_K / 16];
    int ls[QK_K / 16];
    const float sigma2 = 2 * sum_squares(x, QK_K) / QK_K;
    for (int j = 0; j < QK_K / 16; j++) {
        importance_weights(16, x + 16 * j, qw + 16 * j, sigma2, w, &sw[j]);
        scales[j] = fit_signed(16, 4, x + 16 * j, w, q + 16 * j);
    }
    const float d = fit_signed(QK_K / 16, 32, scales, sw, l6);
    for (int j = 0; j < QK_K / 16; j++) ls[j] = l6[j];
    pack_q3_k_scales(ls, b->scales);
    put_half(&b->d, d);
}

void quantize_row_q3_k(const float *x, struct block_q3_k *y, uint64_t n, const float *qw)
{
    int8_t q[QK_K];
    for (uint64_t ib = 0; ib < n / QK_K; ib++, x += QK_K) {
        struct block_q3_k *b = &y[ib];
        if (qw) fit_q3_k_weighted(x, qw + QK_K * ib, b, q);
        else fit_q3_k(x, b, q);
        const float d = get_half(&b->d);
        for (int j = 0; j < QK_K / 16; j++) {
            int lo = j < 8 ? b->scales[j] & 0xf : b->scales[j - 8] >> 4;
            int sc = (lo | ((b->scales[8 + j % 4] >> 2 * (j / 4)) & 3) << 4) - 32;
            const float dl = d * sc;
            if (!dl) continue;
            for (int l = 0; l < 16; l++) q[16 * j + l] = (int8_t)(clampi(round_even(x[16 * j + l] / dl), -4, 3) + 4);
        }
        /* the high bit of element j goes to hmask[j % 32], bit j / 32 */
        memset(b->hmask, 0, sizeof b->hmask);
        for (int j = 0; j < QK_K; j++)
            if (q[j] > 3) {
                b->hmask[j % 32] |= (uint8_t)(1u << j / 32);
                q[j] -= 4;
            }
        pack_2bit((const uint8_t *)q, b->qs);
    }
}

/* Q4_K and Q5_K: eight sub-blocks of 32, their scales and mins rounded to 6 bits against d
 * and dmin (packed as quant_k4_scale_min reads them), then q requantized against the rounded
 * values; q[QK_K] receives the integers in [0, nmax]. Without weights (qw NULL) the
 * sub-blocks are fitted with weights rms(x) + |x| and the scales rounded against the
 * largest; with them, over 37 grids and the scales by fit_positive. clamp63: Q5_K clamps the
 * weighted fit's 6-bit values, Q4_K does not (ggml's difference, kept for its bytes). */
static void quantize_q45_k(const float *x, const float *qw, int nmax, float rmin, int nstep, bool clamp63,
                           uint8_t scales6[12], uint16_t *d_out, uint16_t *dmin_out, uint8_t q[QK_K])
{
    uint8_t q_try[32], ls[QK_K / 32], lm[QK_K / 32];
    float w[32], sw[QK_K / 32], scales[QK_K / 32], mins[QK_K / 32], max_scale = 0, max_min = 0;
    const float sigma2 = qw ? 2 * sum_squares(x, QK_K) / QK_K : 0.f;
    for (int j = 0; j < QK_K / 32; j++) {
        if (qw) {
            importance_weights(32, x + 32 * j, qw + 32 * j, sigma2, w, &sw[j]);
            scales[j] = fit_scale_min(32, nmax, x + 32 * j, w, q + 32 * j, &mins[j], q_try, -0.9f, 0.05f, 36, false);
            continue;
        }
        const float av_x = sqrtf(sum_squares(x + 32 * j, 32) / 32);
        for (int l = 0; l < 32; l++) w[l] = av_x + fabsf(x[32 * j + l]);
        scales[j] = fit_scale_min(32, nmax, x + 32 * j, w, q + 32 * j, &mins[j], q_try, rmin, 0.1f, nstep, false);
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    float d, dmin;
    if (qw) {
        d = fit_positive(QK_K / 32, 63, scales, ls, sw);
        dmin = fit_positive(QK_K / 32, 63, mins, lm, sw);
        if (clamp63)
            for (int j = 0; j < QK_K / 32; j++) {
                if (ls[j] > 63) ls[j] = 63;
                if (lm[j] > 63) lm[j] = 63;
            }
    } else {
        const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f, inv_min = max_min > 0 ? 63.f / max_min : 0.f;
        for (int j = 0; j < QK_K / 32; j++) {
            ls[j] = (uint8_t)round_even(inv_scale * scales[j]);
            lm[j] = (uint8_t)round_even(inv_min * mins[j]);
            if (ls[j] > 63) ls[j] = 63;
            if (lm[j] > 63) lm[j] = 63;
        }
        d = max_scale / 63.f;
        dmin = max_min / 63.f;
    }
    memset(scales6, 0, 12);
    for (int j = 0; j < QK_K / 32; j++) {
        if (j < 4) {
            scales6[j] = ls[j];
            scales6[j + 4] = lm[j];
        } else {
            scales6[j + 4] = (uint8_t)((ls[j] & 0xf) | (lm[j] & 0xf) << 4);
            scales6[j - 4] |= (uint8_t)((ls[j] >> 4) << 6);
            scales6[j] |= (uint8_t)((lm[j] >> 4) << 6);
        }
    }
    put_half(d_out, d);
    put_half(dmin_out, dmin);
    for (int j = 0; j < QK_K / 32; j++) {
        uint8_t sc, m;
        quant_k4_scale_min(scales6, j, &sc, &m);
        const float dl = get_half(d_out) * sc;
        if (!dl) continue;
        const float ml = get_half(dmin_out) * m;
        for (int l = 0; l < 32; l++) q[32 * j + l] = (uint8_t)clampi(round_even((x[32 * j + l] + ml) / dl), 0, nmax);
    }
}

void quantize_row_q4_k(const float *x, struct block_q4_k *y, uint64_t n, const float *qw)
{
    uint8_t q[QK_K];
    for (uint64_t ib = 0; ib < n / QK_K; ib++, x += QK_K) {
        struct block_q4_k *b = &y[ib];
        quantize_q45_k(x, qw ? qw + QK_K * ib : NULL, 15, -1.f, 20, false, b->scales, &b->d, &b->dmin, q);
        for (int c = 0; c < 4; c++)
            for (int l = 0; l < 32; l++) b->qs[32 * c + l] = (uint8_t)(q[64 * c + l] | q[64 * c + l + 32] << 4);
    }
}

void quantize_row_q5_k(const float *x, struct block_q5_k *y, uint64_t n, const float *qw)
{
    uint8_t q[QK_K];
    for (uint64_t ib = 0; ib < n / QK_K; ib++, x += QK_K) {
        struct block_q5_k *b = &y[ib];
        quantize_q45_k(x, qw ? qw + QK_K * ib : NULL, 31, -0.5f, 15, true, b->scales, &b->d, &b->dmin, q);
        /* chunk c of 64: low nibbles from elements 64c + l, high from 64c + 32 + l; the fifth
         * bits go to qh[l] bits 2c and 2c + 1 */
        memset(b->qh, 0, sizeof b->qh);
        for (int c = 0; c < 4; c++)
            for (int l = 0; l < 32; l++) {
                int l1 = q[64 * c + l], l2 = q[64 * c + l + 32];
                if (l1 > 15) {
                    l1 -= 16;
                    b->qh[l] |= (uint8_t)(1u << 2 * c);
                }
                if (l2 > 15) {
                    l2 -= 16;
                    b->qh[l] |= (uint8_t)(2u << 2 * c);
                }
                b->qs[32 * c + l] = (uint8_t)(l1 | l2 << 4);
            }
    }
}

/* Q6_K: sub-blocks of 16 by fit_signed (weights x^2, or the imatrix's qw as they are: ggml
 * does not scale them here), scales rounded to int8 against the largest. */
void quantize_row_q6_k(const float *x, struct block_q6_k *y, uint64_t n, const float *qw)
{
    int8_t q[QK_K];
    float scales[QK_K / 16];
    for (uint64_t ib = 0; ib < n / QK_K; ib++, x += QK_K) {
        struct block_q6_k *b = &y[ib];
        float max_scale = 0, max_abs_scale = 0;
        for (int j = 0; j < QK_K / 16; j++) {
            scales[j] = fit_signed(16, 32, x + 16 * j, qw ? qw + QK_K * ib + 16 * j : NULL, q + 16 * j);
            if (fabsf(scales[j]) > max_abs_scale) {
                max_abs_scale = fabsf(scales[j]);
                max_scale = scales[j];
            }
        }
        if (max_abs_scale < GROUP_MAX_EPS) {
            memset(b, 0, sizeof *b);
            continue;
        }
        const float iscale = -128.f / max_scale;
        put_half(&b->d, 1 / iscale);
        for (int j = 0; j < QK_K / 16; j++) {
            int s = round_even(iscale * scales[j]);
            b->scales[j] = (int8_t)(s < 127 ? s : 127);
        }
        const float d = get_half(&b->d);
        for (int j = 0; j < QK_K / 16; j++) {
            const float dl = d * b->scales[j];
            if (!dl) continue;
            for (int l = 0; l < 16; l++) q[16 * j + l] = (int8_t)(clampi(round_even(x[16 * j + l] / dl), -32, 31) + 32);
        }
        /* the inverse of dequant_q6_k's element order */
        for (int h = 0; h < 2; h++) {
            uint8_t *ql = b->ql + 64 * h, *qh = b->qh + 32 * h;
            const int8_t *s = q + 128 * h;
            for (int l = 0; l < 32; l++) {
                ql[l] = (uint8_t)((s[l] & 0xf) | (s[l + 64] & 0xf) << 4);
                ql[l + 32] = (uint8_t)((s[l + 32] & 0xf) | (s[l + 96] & 0xf) << 4);
                qh[l] = (uint8_t)((s[l] >> 4) | (s[l + 32] >> 4) << 2 | (s[l + 64] >> 4) << 4 | (s[l + 96] >> 4) << 6);
            }
        }
    }
}

/* ---- IQ4_NL / IQ4_XS ---- */

/* One IQ4 super-block of sb elements (32 for IQ4_NL, 256 for IQ4_XS) in blocks of 32: per block
 * the scale that best maps x onto the 16 non-linear values (weighted least squares, trying
 * 2*ntry + 1 inverse scales around the largest magnitude's), then for IQ4_XS the 6-bit block
 * scales against one f16 d; ntry <= 0 is ggml's _ref variant (one candidate, no requantize
 * for IQ4_NL). qw: importance weights [sb] or NULL (then x^2). L[sb] keeps its contents from
 * the previous call for blocks that are all zero, as ggml's buffer does. */
static void quantize_iq4(int sb, const float *x, const float *qw, int ntry, uint16_t *dh, uint8_t *q4,
                         uint16_t *scales_h, uint8_t *scales_l, uint8_t *L)
{
    const int8_t *values = iq4nl_values;
    float scales[QK_K / 32], weight[32], sigma2 = 0, max_scale = 0, amax_scale = 0;
    for (int j = 0; j < sb; j++) sigma2 += x[j] * x[j];
    sigma2 *= 2.f / sb;
    memset(q4, 0, (size_t)sb / 2);
    put_half(dh, 0.f);
    for (int ib = 0; ib < sb / 32; ib++) {
        const float *xb = x + 32 * ib;
        uint8_t *Lb = L + 32 * ib;
        for (int j = 0; j < 32; j++) weight[j] = qw ? qw[32 * ib + j] * sqrtf(sigma2 + xb[j] * xb[j]) : xb[j] * xb[j];
        float amax, max = largest_magnitude(32, xb, &amax);
        if (amax < GROUP_MAX_EPS) {
            scales[ib] = 0;
            continue;
        }
        float d = ntry > 0 ? -max / values[0] : max / values[0], id = 1 / d, sumqx = 0, sumq2 = 0;
        for (int j = 0; j < 32; j++) {
            int l = nearest_value(16, values, id * xb[j]);
            Lb[j] = (uint8_t)l;
            float qv = values[l], w = weight[j];
            sumqx += w * qv * xb[j];
            sumq2 += w * qv * qv;
        }
        d = sumq2 > 0 ? sumqx / sumq2 : 0.f;
        float best = d * sumqx;
        for (int t = -ntry; t <= ntry; t++) {
            id = (t + values[0]) / max;
            sumqx = sumq2 = 0;
            for (int j = 0; j < 32; j++) {
                float qv = values[nearest_value(16, values, id * xb[j])], w = weight[j];
                sumqx += w * qv * xb[j];
                sumq2 += w * qv * qv;
            }
            if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
                d = sumqx / sumq2;
                best = d * sumqx;
            }
        }
        scales[ib] = d;
        if (fabsf(d) > amax_scale) {
            amax_scale = fabsf(d);
            max_scale = d;
        }
    }
    if (sb > 32) {
        memset(scales_h, 0, 2);
        const float d = -max_scale / 32, id = d ? 1 / d : 0.f;
        put_half(dh, d);
        for (int ib = 0; ib < sb / 32; ib++) {
            int l = clampi(round_even(id * scales[ib]), -32, 31);
            const float dl = d * l, idl = dl ? 1 / dl : 0.f;
            for (int j = 0; j < 32; j++) L[32 * ib + j] = (uint8_t)nearest_value(16, values, idl * x[32 * ib + j]);
            l += 32;
            if (ib % 2 == 0) scales_l[ib / 2] = (uint8_t)(l & 0xf);
            else scales_l[ib / 2] |= (uint8_t)((l & 0xf) << 4);
            uint16_t h;
            memcpy(&h, scales_h, 2);
            h |= (uint16_t)((l >> 4) << 2 * (ib % 8));
            memcpy(scales_h, &h, 2);
        }
    } else {
        put_half(dh, scales[0]);
        if (ntry > 0) {
            const float id = scales[0] ? 1 / scales[0] : 0;
            for (int j = 0; j < sb; j++) L[j] = (uint8_t)nearest_value(16, values, id * x[j]);
        }
    }
    for (int i = 0; i < sb / 32; i++)
        for (int j = 0; j < 16; j++) q4[16 * i + j] = (uint8_t)(L[32 * i + j] | L[32 * i + 16 + j] << 4);
}

void quantize_row_iq4_nl(const float *x, struct block_iq4_nl *y, uint64_t n, const float *qw, int ntry)
{
    uint8_t L[QK4_NL] = { 0 };
    for (uint64_t ib = 0; ib < n / QK4_NL; ib++)
        quantize_iq4(QK4_NL, x + QK4_NL * ib, qw ? qw + QK4_NL * ib : NULL, ntry, &y[ib].d, y[ib].qs, NULL, NULL, L);
}

void quantize_row_iq4_xs(const float *x, struct block_iq4_xs *y, uint64_t n, const float *qw)
{
    uint8_t L[QK_K] = { 0 };
    for (uint64_t ib = 0; ib < n / QK_K; ib++)
        quantize_iq4(QK_K, x + QK_K * ib, qw ? qw + QK_K * ib : NULL, 7, &y[ib].d, y[ib].qs, &y[ib].scales_h,
                     y[ib].scales_l, L);
}

/* ---- one row, as llama.cpp's quantize writes it ---- */

bool quant_can_quantize(enum gguf_type type)
{
    /* every type written here takes importance weights or, as in ggml, ignores them */
    switch (type) {
    case GGUF_TYPE_Q2_K: case GGUF_TYPE_Q3_K: case GGUF_TYPE_Q4_K: case GGUF_TYPE_Q5_K: case GGUF_TYPE_Q6_K:
    case GGUF_TYPE_IQ4_NL: case GGUF_TYPE_IQ4_XS:
    case GGUF_TYPE_IQ2_XXS: case GGUF_TYPE_IQ2_XS: case GGUF_TYPE_IQ2_S: case GGUF_TYPE_IQ3_XXS:
    case GGUF_TYPE_IQ1_S: case GGUF_TYPE_IQ1_M:
    case GGUF_TYPE_Q8_0: case GGUF_TYPE_MXFP4: /* these take no importance weights in ggml either */
    case GGUF_TYPE_F32: case GGUF_TYPE_F16: case GGUF_TYPE_BF16:
        return true;
    default:
        return false;
    }
}

int quant_quantize_row(enum gguf_type type, const float *src, void *dst, uint64_t n, const float *imatrix)
{
    const uint32_t be = gguf_type_block_elems(type);
    if (!be || n % be || !quant_can_quantize(type)) return -1;
    if (type != GGUF_TYPE_F32 && type != GGUF_TYPE_F16 && type != GGUF_TYPE_BF16)
        for (uint64_t i = 0; i < n; i++)
            if (!isfinite(src[i])) return -1;
    switch (type) {
    case GGUF_TYPE_F32: memcpy(dst, src, n * 4); break;
    case GGUF_TYPE_F16:
        for (uint64_t i = 0; i < n; i++) ((uint16_t *)dst)[i] = f32_to_fp16(src[i]);
        break;
    case GGUF_TYPE_BF16:
        for (uint64_t i = 0; i < n; i++) ((uint16_t *)dst)[i] = f32_to_bf16(src[i]);
        break;
    case GGUF_TYPE_Q8_0: quantize_row_q8_0(src, dst, n); break;
    case GGUF_TYPE_MXFP4: quantize_row_mxfp4(src, dst, n); break;
    case GGUF_TYPE_Q2_K: quantize_row_q2_k(src, dst, n, imatrix); break;
    case GGUF_TYPE_Q3_K: quantize_row_q3_k(src, dst, n, imatrix); break;
    case GGUF_TYPE_Q4_K: quantize_row_q4_k(src, dst, n, imatrix); break;
    case GGUF_TYPE_Q5_K: quantize_row_q5_k(src, dst, n, imatrix); break;
    case GGUF_TYPE_Q6_K: quantize_row_q6_k(src, dst, n, imatrix); break;
    case GGUF_TYPE_IQ4_NL: quantize_row_iq4_nl(src, dst, n, imatrix, 7); break;
    case GGUF_TYPE_IQ4_XS: quantize_row_iq4_xs(src, dst, n, imatrix); break;
    case GGUF_TYPE_IQ2_XXS: return quantize_row_iq2_xxs(src, dst, n, imatrix);
    case GGUF_TYPE_IQ2_XS: return quantize_row_iq2_xs(src, dst, n, imatrix);
    case GGUF_TYPE_IQ2_S: return quantize_row_iq2_s(src, dst, n, imatrix);
    case GGUF_TYPE_IQ3_XXS: return quantize_row_iq3_xxs(src, dst, n, imatrix);
    case GGUF_TYPE_IQ1_S: return quantize_row_iq1_s(src, dst, n, imatrix);
    case GGUF_TYPE_IQ1_M: return quantize_row_iq1_m(src, dst, n, imatrix);
    default: return -1;
    }
    return 0;
}
