/* Weight number formats: conversions, dequantization, reference quantizers. */
#include "engine/model/quant.h"

#include <math.h>
#include <stddef.h>
#include <string.h>

#include "common/rng.h"

const int8_t mxfp4_code_x2[16] = { 0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12 };

float fp16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    float f;
    if (exp == 0) {
        f = ldexpf((float)man, -24); /* zero and subnormals: man * 2^-24 */
        uint32_t bits;
        memcpy(&bits, &f, 4);
        bits |= sign;
        memcpy(&f, &bits, 4);
        return f;
    }
    uint32_t bits = exp == 31 ? sign | 0x7f800000u | (man << 13)
                              : sign | ((exp + 112) << 23) | (man << 13);
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t f32_to_fp16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return sign | 0x7e00;            /* NaN */
    if (ax >= 0x477ff000u) return sign | 0x7c00;           /* rounds to >= 65536: inf */
    if (ax < 0x38800000u) {                                 /* below 2^-14: subnormal half */
        float a;
        memcpy(&a, &ax, 4);
        /* a * 2^24 rounded to nearest even gives the subnormal mantissa */
        float m = nearbyintf(a * 16777216.0f);
        return sign | (uint16_t)m;
    }
    uint32_t exp = (ax >> 23) - 112, man = ax & 0x7fffff;
    uint32_t h = (exp << 10) | (man >> 13);
    uint32_t rem = man & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;   /* carries into the exponent correctly */
    return sign | (uint16_t)h;
}

float bf16_to_f32(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t f32_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40);
    x += 0x7fff + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}

float e8m0_to_f32_half(uint8_t e) { return ldexpf(1.0f, (int)e - 128); }

int dequant_row(enum gguf_type type, const void *src, float *dst, uint64_t n)
{
    switch (type) {
    case GGUF_TYPE_F32:
        memcpy(dst, src, n * 4);
        return 0;
    case GGUF_TYPE_F16:
    case GGUF_TYPE_BF16: {
        float (*to_f32)(uint16_t) = type == GGUF_TYPE_F16 ? fp16_to_f32 : bf16_to_f32;
        const uint8_t *p = src;
        for (uint64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            dst[i] = to_f32(h);
        }
        return 0;
    }
    case GGUF_TYPE_I32: {
        const uint8_t *p = src;
        for (uint64_t i = 0; i < n; i++) {
            int32_t v;
            memcpy(&v, p + 4 * i, 4);
            dst[i] = (float)v;
        }
        return 0;
    }
    case GGUF_TYPE_Q8_0: {
        const struct block_q8_0 *b = src;
        for (uint64_t i = 0; i < n / QK8_0; i++) {
            uint16_t dh;
            memcpy(&dh, &b[i].d, 2);
            float d = fp16_to_f32(dh);
            for (int j = 0; j < QK8_0; j++) dst[i * QK8_0 + j] = (float)b[i].qs[j] * d;
        }
        return 0;
    }
    case GGUF_TYPE_MXFP4: {
        const struct block_mxfp4 *b = src;
        for (uint64_t i = 0; i < n / QK_MXFP4; i++) {
            float d = e8m0_to_f32_half(b[i].e);
            for (int j = 0; j < QK_MXFP4 / 2; j++) {
                dst[i * QK_MXFP4 + j] = (float)mxfp4_code_x2[b[i].qs[j] & 0xf] * d;
                dst[i * QK_MXFP4 + j + 16] = (float)mxfp4_code_x2[b[i].qs[j] >> 4] * d;
            }
        }
        return 0;
    }
    default:
        break;
    }
    if (dequant_row_k(type, src, dst, n) == 0) return 0;
    return dequant_row_iq(type, src, dst, n);
}

int quant_random_blocks(enum gguf_type type, void *dst, uint64_t n_blocks, uint64_t *seed, uint16_t d_half)
{
    size_t d_off = 0, dmin_off = SIZE_MAX;
    switch (type) {
    case GGUF_TYPE_Q2_K: d_off = offsetof(struct block_q2_k, d); dmin_off = offsetof(struct block_q2_k, dmin); break;
    case GGUF_TYPE_Q3_K: d_off = offsetof(struct block_q3_k, d); break;
    case GGUF_TYPE_Q4_K: dmin_off = offsetof(struct block_q4_k, dmin); break;
    case GGUF_TYPE_Q5_K: dmin_off = offsetof(struct block_q5_k, dmin); break;
    case GGUF_TYPE_Q6_K: d_off = offsetof(struct block_q6_k, d); break;
    case GGUF_TYPE_IQ2_XXS: case GGUF_TYPE_IQ2_XS: case GGUF_TYPE_IQ2_S: case GGUF_TYPE_IQ3_XXS:
    case GGUF_TYPE_IQ1_S: case GGUF_TYPE_IQ1_M: case GGUF_TYPE_IQ4_NL: case GGUF_TYPE_IQ4_XS:
        break; /* d first (IQ1_M: spread over its scales, below) */
    default:
        return -1;
    }
    const uint32_t bb = gguf_type_block_bytes(type);
    uint8_t *p = dst;
    for (uint64_t i = 0; i < n_blocks; i++, p += bb) {
        for (uint32_t k = 0; k < bb; k += 8) {
            uint64_t r = rng_splitmix64(seed);
            for (uint32_t j = 0; j < 8 && k + j < bb; j++) p[k + j] = (uint8_t)(r >> 8 * j);
        }
        if (type == GGUF_TYPE_IQ1_M) {
            /* the half's four nibbles are the top nibbles of the four 16-bit scale words */
            uint8_t *sc = p + offsetof(struct block_iq1_m, scales);
            for (int w = 0; w < 4; w++) sc[2 * w + 1] = (uint8_t)((sc[2 * w + 1] & 0x0f) | ((d_half >> 4 * w) & 0xf) << 4);
            continue;
        }
        memcpy(p + d_off, &d_half, 2);
        if (dmin_off != SIZE_MAX) memcpy(p + dmin_off, &d_half, 2);
    }
    return 0;
}

void quantize_row_q8_0(const float *src, struct block_q8_0 *dst, uint64_t n)
{
    for (uint64_t i = 0; i < n / QK8_0; i++) {
        float amax = 0.0f;
        for (int j = 0; j < QK8_0; j++) amax = fmaxf(amax, fabsf(src[i * QK8_0 + j]));
        float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        dst[i].d = f32_to_fp16(d);
        for (int j = 0; j < QK8_0; j++) dst[i].qs[j] = (int8_t)roundf(src[i * QK8_0 + j] * id);
    }
}

static uint8_t best_mxfp4_code(float x, float d)
{
    uint8_t best = 0;
    float best_err = fabsf((float)mxfp4_code_x2[0] * d - x);
    for (uint8_t c = 1; c < 16; c++) {
        float e = fabsf((float)mxfp4_code_x2[c] * d - x);
        if (e < best_err) {
            best = c;
            best_err = e;
        }
    }
    return best;
}

void quantize_row_mxfp4(const float *src, struct block_mxfp4 *dst, uint64_t n)
{
    for (uint64_t i = 0; i < n / QK_MXFP4; i++) {
        const float *x = src + i * QK_MXFP4;
        float amax = 0.0f;
        for (int j = 0; j < QK_MXFP4; j++) amax = fmaxf(amax, fabsf(x[j]));
        uint8_t e = amax > 0.0f ? (uint8_t)(floorf(log2f(amax)) - 2 + 127) : 0;
        float d = e8m0_to_f32_half(e);
        dst[i].e = e;
        for (int j = 0; j < QK_MXFP4 / 2; j++)
            dst[i].qs[j] = (uint8_t)(best_mxfp4_code(x[j], d) | best_mxfp4_code(x[j + 16], d) << 4);
    }
}
