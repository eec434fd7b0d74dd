/* ggml's K-quants (Q2_K .. Q6_K): dequantization bit-exact with ggml's dequantize_row_*, and
 * the Q2_K and Q4_K reference quantizers (same bytes as ggml's quantize_row_*_ref).
 *
 * Bit-exact means the same float operations in the same order: a sub-block's scale is
 * formed first (d * sc, dmin * m) and then applied to the integer (dl * q - ml), exactly as
 * ggml does it; reordering would change the last bit. Layouts: engine/quant.h. */
#include "engine/model/quant.h"

#include <math.h>
#include <stdbool.h>
#include <string.h>

static float half_at(const uint16_t *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return fp16_to_f32(h);
}

/* Q4_K / Q5_K pack 8 six-bit scales and 8 six-bit mins in 12 bytes: sub-blocks 0..3 hold
 * theirs in the low 6 bits of bytes 0..3 (scales) and 4..7 (mins); sub-blocks 4..7 keep
 * their low 4 bits in the nibbles of bytes 8..11 and their top 2 bits in the spare top bits
 * of bytes 0..7. */
static void k4_scale_min(const uint8_t *s, int j, uint8_t *sc, uint8_t *m)
{
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (uint8_t)((s[j + 4] & 0xf) | (s[j - 4] >> 6) << 4);
        *m = (uint8_t)((s[j + 4] >> 4) | (s[j] >> 6) << 4);
    }
}

/* Element order of Q2_K and Q3_K: each half of 128 elements reads 32 bytes of qs four times
 * (bit pairs 0-1, 2-3, 4-5, 6-7); each pass gives two sub-blocks of 16 (bytes 0..15, 16..31). */
static void dequant_q2_k(const struct block_q2_k *b, float *y)
{
    const float d = half_at(&b->d), dmin = half_at(&b->dmin);
    for (int h = 0; h < 2; h++)
        for (int pass = 0; pass < 4; pass++)
            for (int g = 0; g < 2; g++) {
                const uint8_t sc = b->scales[8 * h + 2 * pass + g];
                const float dl = d * (float)(sc & 0xf), ml = dmin * (float)(sc >> 4);
                const uint8_t *q = b->qs + 32 * h + 16 * g;
                for (int l = 0; l < 16; l++) *y++ = dl * (float)((q[l] >> 2 * pass) & 3) - ml;
            }
}

/* Q3_K's 16 six-bit scales: low nibbles in bytes 0..7 (sub-blocks 0..7 low nibble, 8..15 high
 * nibble), top two bits in bytes 8..11 (sub-block k: byte 8 + k%4, bits 2*(k/4)). */
static int q3_k_scale(const uint8_t *s, int k)
{
    int lo = k < 8 ? s[k] & 0xf : s[k - 8] >> 4;
    int hi = (s[8 + k % 4] >> 2 * (k / 4)) & 3;
    return (lo | hi << 4) - 32;
}

static void dequant_q3_k(const struct block_q3_k *b, float *y)
{
    const float d = half_at(&b->d);
    for (int h = 0; h < 2; h++)
        for (int pass = 0; pass < 4; pass++)
            for (int g = 0; g < 2; g++) {
                const float dl = d * (float)q3_k_scale(b->scales, 8 * h + 2 * pass + g);
                const uint8_t *q = b->qs + 32 * h + 16 * g, *hm = b->hmask + 16 * g;
                const uint8_t bit = (uint8_t)(1u << (4 * h + pass)); /* hmask is shared by both halves */
                for (int l = 0; l < 16; l++)
                    *y++ = dl * (float)(((q[l] >> 2 * pass) & 3) - (hm[l] & bit ? 0 : 4));
            }
}

/* Q4_K and Q5_K: four chunks of 64 elements; chunk c reads 32 bytes of qs, low nibbles are
 * sub-block 2c, high nibbles 2c+1; Q5_K's fifth bit of element l is bit 2c (2c+1) of qh[l]. */
static void dequant_q45_k(const uint8_t *scales, const uint8_t *qs, const uint8_t *qh, float d, float dmin, float *y)
{
    for (int c = 0; c < 4; c++) {
        uint8_t sc, m;
        k4_scale_min(scales, 2 * c, &sc, &m);
        const float d1 = d * (float)sc, m1 = dmin * (float)m;
        k4_scale_min(scales, 2 * c + 1, &sc, &m);
        const float d2 = d * (float)sc, m2 = dmin * (float)m;
        const uint8_t *q = qs + 32 * c;
        for (int l = 0; l < 32; l++) {
            int hi = qh ? (qh[l] >> 2 * c & 1) << 4 : 0;
            *y++ = d1 * (float)((q[l] & 0xf) + hi) - m1;
        }
        for (int l = 0; l < 32; l++) {
            int hi = qh ? (qh[l] >> (2 * c + 1) & 1) << 4 : 0;
            *y++ = d2 * (float)((q[l] >> 4) + hi) - m2;
        }
    }
}

/* Q6_K: two halves of 128; in a half, element 32*s + l (s = 0..3) takes its low nibble from
 * ql[l + 32*(s&1)] (high nibble when s >= 2), bits 2s..2s+1 of qh[l] on top, and scale
 * l/16 + 2s. */
static void dequant_q6_k(const struct block_q6_k *b, float *y)
{
    const float d = half_at(&b->d);
    for (int h = 0; h < 2; h++) {
        const uint8_t *ql = b->ql + 64 * h, *qh = b->qh + 32 * h;
        const int8_t *sc = b->scales + 8 * h;
        for (int s = 0; s < 4; s++)
            for (int l = 0; l < 32; l++) {
                int lo = (ql[l + 32 * (s & 1)] >> 4 * (s >> 1)) & 0xf;
                int q = (lo | ((qh[l] >> 2 * s) & 3) << 4) - 32;
                y[128 * h + 32 * s + l] = d * (float)sc[l / 16 + 2 * s] * (float)q;
            }
    }
}

int dequant_row_k(enum gguf_type type, const void *src, float *dst, uint64_t n)
{
    const uint8_t *p = src;
    const uint32_t bb = gguf_type_block_bytes(type);
    for (uint64_t i = 0; i < n / QK_K; i++, p += bb, dst += QK_K) {
        switch (type) {
        case GGUF_TYPE_Q2_K: dequant_q2_k((const struct block_q2_k *)p, dst); break;
        case GGUF_TYPE_Q3_K: dequant_q3_k((const struct block_q3_k *)p, dst); break;
        case GGUF_TYPE_Q4_K: {
            const struct block_q4_k *b = (const void *)p;
            dequant_q45_k(b->scales, b->qs, NULL, half_at(&b->d), half_at(&b->dmin), dst);
            break;
        }
        case GGUF_TYPE_Q5_K: {
            const struct block_q5_k *b = (const void *)p;
            dequant_q45_k(b->scales, b->qs, b->qh, half_at(&b->d), half_at(&b->dmin), dst);
            break;
        }
        case GGUF_TYPE_Q6_K: dequant_q6_k((const struct block_q6_k *)p, dst); break;
        default: return -1;
        }
    }
    return 0;
}

/* ---- reference quantizers (ggml's quantize_row_q2_K_ref / q4_K_ref, byte for byte) ---- */

/* Round half to even, what ggml's nearest_int does by adding 1.5 * 2^23 (|f| < 2^22). */
static int round_even(float f) { return (int)nearbyintf(f); }

static int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

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
 * keeping the one of least weighted error; q in q[n], -min in *neg_min; returns scale.
 * The float operations and their order are ggml's (make_qkx2_quants), so the bytes match. */
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

void quantize_row_q2_k(const float *x, struct block_q2_k *y, uint64_t n)
{
    uint8_t q[QK_K], q_try[16];
    float w[16], scales[QK_K / 16], mins[QK_K / 16];
    for (uint64_t ib = 0; ib < n / QK_K; ib++, x += QK_K) {
        struct block_q2_k *b = &y[ib];
        float max_scale = 0, max_min = 0;
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
        uint16_t d = f32_to_fp16(max_scale > 0 ? max_scale / 15.f : 0.f);
        if (max_min > 0)
            for (int j = 0; j < QK_K / 16; j++) b->scales[j] |= (uint8_t)(round_even(15.f / max_min * mins[j]) << 4);
        uint16_t dmin = f32_to_fp16(max_min > 0 ? max_min / 15.f : 0.f);
        memcpy(&b->d, &d, 2);
        memcpy(&b->dmin, &dmin, 2);
        /* requantize against the rounded scales */
        for (int j = 0; j < QK_K / 16; j++) {
            const float dl = fp16_to_f32(d) * (b->scales[j] & 0xf);
            if (!dl) continue;
            const float ml = fp16_to_f32(dmin) * (b->scales[j] >> 4);
            for (int l = 0; l < 16; l++) q[16 * j + l] = (uint8_t)clampi(round_even((x[16 * j + l] + ml) / dl), 0, 3);
        }
        for (int h = 0; h < 2; h++)
            for (int l = 0; l < 32; l++) {
                const uint8_t *s = q + 128 * h + l;
                b->qs[32 * h + l] = (uint8_t)(s[0] | s[32] << 2 | s[64] << 4 | s[96] << 6);
            }
    }
}

void quantize_row_q4_k(const float *x, struct block_q4_k *y, uint64_t n)
{
    uint8_t q[QK_K], q_try[32];
    float w[32], scales[QK_K / 32], mins[QK_K / 32];
    for (uint64_t ib = 0; ib < n / QK_K; ib++, x += QK_K) {
        struct block_q4_k *b = &y[ib];
        float max_scale = 0, max_min = 0;
        for (int j = 0; j < QK_K / 32; j++) {
            float sum_x2 = 0;
            for (int l = 0; l < 32; l++) sum_x2 += x[32 * j + l] * x[32 * j + l];
            const float av_x = sqrtf(sum_x2 / 32);
            for (int l = 0; l < 32; l++) w[l] = av_x + fabsf(x[32 * j + l]);
            scales[j] = fit_scale_min(32, 15, x + 32 * j, w, q + 32 * j, &mins[j], q_try, -1.f, 0.1f, 20, false);
            if (scales[j] > max_scale) max_scale = scales[j];
            if (mins[j] > max_min) max_min = mins[j];
        }
        /* 6-bit scales and mins packed as k4_scale_min reads them */
        const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f, inv_min = max_min > 0 ? 63.f / max_min : 0.f;
        for (int j = 0; j < QK_K / 32; j++) {
            uint8_t ls = (uint8_t)round_even(inv_scale * scales[j]), lm = (uint8_t)round_even(inv_min * mins[j]);
            if (ls > 63) ls = 63;
            if (lm > 63) lm = 63;
            if (j < 4) {
                b->scales[j] = ls;
                b->scales[j + 4] = lm;
            } else {
                b->scales[j + 4] = (uint8_t)((ls & 0xf) | (lm & 0xf) << 4);
                b->scales[j - 4] |= (uint8_t)((ls >> 4) << 6);
                b->scales[j] |= (uint8_t)((lm >> 4) << 6);
            }
        }
        const uint16_t d = f32_to_fp16(max_scale / 63.f), dmin = f32_to_fp16(max_min / 63.f);
        memcpy(&b->d, &d, 2);
        memcpy(&b->dmin, &dmin, 2);
        for (int j = 0; j < QK_K / 32; j++) {
            uint8_t sc, m;
            k4_scale_min(b->scales, j, &sc, &m);
            const float dl = fp16_to_f32(d) * sc;
            if (!dl) continue;
            const float ml = fp16_to_f32(dmin) * m;
            for (int l = 0; l < 32; l++) q[32 * j + l] = (uint8_t)clampi(round_even((x[32 * j + l] + ml) / dl), 0, 15);
        }
        for (int c = 0; c < 4; c++)
            for (int l = 0; l < 32; l++) b->qs[32 * c + l] = (uint8_t)(q[64 * c + l] | q[64 * c + l + 32] << 4);
    }
}
