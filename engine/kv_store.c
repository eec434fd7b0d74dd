/* KV storage types (kv_store.h): packing and unpacking entries. */
#include "engine/kv_store.h"
#include "engine/model/quant.h"

#include <math.h>
#include <string.h>

float kv_fp8_scale(float amax)
{
    /* the smallest 2^k with amax <= 448 * 2^k, found on the exponent: amax = f * 2^e with
     * f in [0.5, 1), 448 = 0.875 * 2^9; no division, so the GPU finds the same k */
    int e;
    const float f = frexpf(fmaxf(amax, 1e-4f), &e);
    return ldexpf(1.0f, f <= 0.875f ? e - 9 : e - 8);
}

uint8_t kv_e4m3_code(float v)
{
    uint32_t bits;
    memcpy(&bits, &v, 4);
    const uint8_t sign = (uint8_t)(bits >> 31 << 7);
    const float a = fabsf(v);
    if (a < 0.015625f) { /* below 2^-6: subnormal, steps of 2^-9 (a * 512 is exact) */
        const float m = nearbyintf(a * 512.0f); /* to nearest even; 8 is 2^-6, code 0x08 */
        return (uint8_t)(sign | (uint8_t)m);
    }
    uint32_t ab = bits & 0x7fffffffu;
    ab = (ab + 0x7ffffu + ((ab >> 20) & 1u)) & ~0xfffffu; /* 3 mantissa bits, ties to even */
    const uint32_t e = (ab >> 23) - 127u + 7u, m = (ab >> 20) & 7u;
    if (e > 15u || (e == 15u && m == 7u)) return (uint8_t)(sign | 0x7e); /* saturate at 448 */
    return (uint8_t)(sign | e << 3 | m);
}

float kv_e4m3_value(uint8_t code)
{
    const uint32_t e = (code >> 3) & 15u, m = code & 7u;
    const float a = e ? ldexpf((float)(8u + m), (int)e - 10) : ldexpf((float)m, -9);
    return code & 0x80 ? -a : a;
}

void kv_pack(enum engine_kv_type kv, const float *x, uint32_t width, uint32_t *words)
{
    const uint32_t nw = kv_entry_words(kv, width);
    if (kv == ENGINE_KV_F32) {
        memcpy(words, x, (uint64_t)width * 4);
        return;
    }
    memset(words, 0, (uint64_t)nw * 4);
    if (kv == ENGINE_KV_F16) {
        for (uint32_t i = 0; i < width; i++) words[i / 2] |= (uint32_t)f32_to_fp16(x[i]) << (16 * (i % 2));
        return;
    }
    float amax = 0.0f;
    for (uint32_t i = 0; i < width; i++) amax = fmaxf(amax, fabsf(x[i]));
    const float scale = kv_fp8_scale(amax);
    for (uint32_t i = 0; i < width; i++) words[i / 4] |= (uint32_t)kv_e4m3_code(x[i] / scale) << (8 * (i % 4));
    memcpy(&words[nw - 1], &scale, 4);
}

void kv_unpack(enum engine_kv_type kv, const uint32_t *words, uint32_t width, float *x)
{
    if (kv == ENGINE_KV_F32) {
        memcpy(x, words, (uint64_t)width * 4);
    } else if (kv == ENGINE_KV_F16) {
        for (uint32_t i = 0; i < width; i++) x[i] = fp16_to_f32((uint16_t)(words[i / 2] >> (16 * (i % 2))));
    } else {
        float scale;
        memcpy(&scale, &words[kv_entry_words(kv, width) - 1], 4);
        for (uint32_t i = 0; i < width; i++) x[i] = kv_e4m3_value((uint8_t)(words[i / 4] >> (8 * (i % 4)))) * scale;
    }
}
