/* Stored compressed entries and indexer keys (engine/kv_store.h has the layout and the C
 * side of the same bits): f32 one value a word; f16 two (element 2k in the low half); fp8
 * four E4M3 codes (element 4k in the low byte), then a power-of-two scale as a float32
 * word. Packing is integer work on the float's bits and unpacking is exact, so both sides
 * store and read the same values. Define KV_WORD(i) (word i of the entry buffer) before
 * including it to read entries. */

/* The value of an E4M3 code, built from its bits. */
float kv_e4m3_value(const uint code)
{
    const uint e = (code >> 3u) & 15u, m = code & 7u;
    const float a = e != 0u ? uintBitsToFloat(((e + 120u) << 23u) | (m << 20u)) : float(m) * (1.0 / 512.0);
    return (code & 0x80u) != 0u ? -a : a;
}

/* The smallest power of two s with amax <= 448 s (amax at least 1e-4), from the exponent. */
float kv_fp8_scale(const float amax)
{
    int e;
    const float f = frexp(max(amax, 1e-4), e);
    return uintBitsToFloat(uint((f <= 0.875 ? e - 9 : e - 8) + 127) << 23u);
}

/* The E4M3 code of v (|v| <= 448), to nearest even. */
uint kv_e4m3_code(const float v)
{
    const uint bits = floatBitsToUint(v), sign = (bits >> 31u) << 7u;
    const float a = abs(v);
    if (a < 0.015625) return sign | uint(roundEven(a * 512.0)); /* subnormal: steps of 2^-9 */
    uint ab = bits & 0x7fffffffu;
    ab = (ab + 0x7ffffu + ((ab >> 20u) & 1u)) & ~0xfffffu;
    const uint e = (ab >> 23u) - 120u, m = (ab >> 20u) & 7u;
    if (e > 15u || (e == 15u && m == 7u)) return sign | 0x7eu;
    return sign | (e << 3u) | m;
}

/* The float16 bits of f, to nearest even (as engine/model/quant.c's f32_to_fp16). */
uint kv_f16_bits(const float f)
{
    const uint x = floatBitsToUint(f), sign = (x >> 16u) & 0x8000u, ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return sign | 0x7e00u;
    if (ax >= 0x477ff000u) return sign | 0x7c00u;
    if (ax < 0x38800000u) return sign | uint(roundEven(uintBitsToFloat(ax) * 16777216.0));
    uint h = (((ax >> 23u) - 112u) << 10u) | ((ax & 0x7fffffu) >> 13u);
    const uint rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u) != 0u)) h++;
    return sign | h;
}

#ifdef KV_WORD
/* Values 4 i4 .. 4 i4 + 3 of the entry of width values stored from word base. */
vec4 kv_load4(const uint kv, const uint base, const uint i4, const uint width)
{
    if (kv == ABI_KV_F16)
        return vec4(unpackHalf2x16(KV_WORD(base + 2u * i4)), unpackHalf2x16(KV_WORD(base + 2u * i4 + 1u)));
    if (kv == ABI_KV_FP8) {
        const uint w = KV_WORD(base + i4);
        const float s = uintBitsToFloat(KV_WORD(base + (width + 3u) / 4u));
        return vec4(kv_e4m3_value(w & 255u), kv_e4m3_value((w >> 8u) & 255u), kv_e4m3_value((w >> 16u) & 255u),
                    kv_e4m3_value(w >> 24u)) * s;
    }
    const uint b = base + 4u * i4;
    return uintBitsToFloat(uvec4(KV_WORD(b), KV_WORD(b + 1u), KV_WORD(b + 2u), KV_WORD(b + 3u)));
}
#endif
