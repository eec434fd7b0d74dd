/* ggml's K-quants (Q2_K .. Q6_K): dequantization bit-exact with ggml's dequantize_row_*
 * (the quantizers are in engine/quantize.c).
 *
 * Bit-exact means the same float operations in the same order: a sub-block's scale is
 * formed first (d * sc, dmin * m) and then applied to the integer (dl * q - ml), exactly as
 * ggml does it; reordering would change the last bit. Layouts: engine/quant.h. */
#include "engine/model/quant.h"

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
void quant_k4_scale_min(const uint8_t *s, int j, uint8_t *sc, uint8_t *m)
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
        quant_k4_scale_min(scales, 2 * c, &sc, &m);
        const float d1 = d * (float)sc, m1 = dmin * (float)m;
        quant_k4_scale_min(scales, 2 * c + 1, &sc, &m);
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
    /* decide ownership before the loop: a row shorter than QK_K runs no iteration, and an
     * IQ4_NL row of 128 must still reach dequant_row_iq */
    if (type != GGUF_TYPE_Q2_K && type != GGUF_TYPE_Q3_K && type != GGUF_TYPE_Q4_K && type != GGUF_TYPE_Q5_K &&
        type != GGUF_TYPE_Q6_K)
        return -1;
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
