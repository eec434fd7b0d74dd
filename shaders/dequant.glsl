/* Element decoders shared by the matvec layouts (matvec.glsl, matvec_lanes.glsl,
 * matmul_ksplit.glsl), written
 * without tables: a table indexed per lane is a gather on CPU drivers. Include after
 * W_TYPE is defined. */
#if W_TYPE == ABI_WTYPE_F16 || W_TYPE == ABI_WTYPE_BF16
/* Two 16-bit floats of a word, low half first. */
vec2 unpack2(uint u)
{
#if W_TYPE == ABI_WTYPE_F16
    return unpackHalf2x16(u);
#else
    return vec2(uintBitsToFloat(u << 16), uintBitsToFloat(u & 0xffff0000u));
#endif
}
#endif

#if W_TYPE == ABI_WTYPE_MXFP4
/* Magnitudes of the E2M1 codes 0..7 times two (0 1 2 3 4 6 8 12), a nibble each: a table
 * in a register, indexed by a shift. */
#define E2M1_X2_NIBBLES 0xC8643210u
/* E2M1 codes (4 bits each) times two, so every value is a small integer; the block scale
 * 2^(e-128) undoes the doubling. The sign is bit 3 of the code, moved to the float's. */
vec4 e2m1_x2(uvec4 c)
{
    const uvec4 mag = (uvec4(E2M1_X2_NIBBLES) >> ((c & 7u) << 2)) & 15u;
    return uintBitsToFloat(floatBitsToUint(vec4(mag)) | ((c & 8u) << 28));
}
#endif

/* Whole blocks from 32-bit words, for the CPU-driver kernels (matvec_lanes.glsl,
 * matmul_ksplit.glsl), which gather a block's words at constant byte offsets: its 32
 * values as eight vec4 in element order into v; evaluates to the block's scale.
 * DECODE_BLOCK(B4, o, v) decodes the block at byte o of a window whose 32 bits at byte b
 * are B4(b) (o and b compile-time constants after unrolling, so B4 is a few shifts). */
#if W_TYPE == ABI_WTYPE_Q8_0
/* lo, hi: the int8 values' words; d_word: the f16 scale in its low half */
float decode_q8_0_words(const uvec4 lo, const uvec4 hi, const uint d_word, out vec4 v[8])
{
    for (uint k = 0u; k < 4u; k++) { /* constant trip count: unrolled */
        v[k] = vec4(ivec4(uvec4(lo[k]) << uvec4(24u, 16u, 8u, 0u)) >> 24);
        v[4u + k] = vec4(ivec4(uvec4(hi[k]) << uvec4(24u, 16u, 8u, 0u)) >> 24);
    }
    return unpackHalf2x16(d_word).x;
}
#define BLOCK_BYTES 34u      /* f16 d, 32 int8 */
#define DECODE_BLOCK(B4, o, v) \
    decode_q8_0_words(uvec4(B4((o) + 2u), B4((o) + 6u), B4((o) + 10u), B4((o) + 14u)), \
                      uvec4(B4((o) + 18u), B4((o) + 22u), B4((o) + 26u), B4((o) + 30u)), B4(o), v)
#elif W_TYPE == ABI_WTYPE_MXFP4
/* q: the 16 nibble bytes (the low nibble of byte j is element j, the high nibble element
 * j + 16); e_word: the e8m0 scale in its low byte */
float decode_mxfp4_words(const uvec4 q, const uint e_word, out vec4 v[8])
{
    const uvec4 sh = uvec4(0u, 8u, 16u, 24u);
    for (uint k = 0u; k < 4u; k++) { /* constant trip count: unrolled */
        v[k] = e2m1_x2((uvec4(q[k]) >> sh) & 15u);
        v[4u + k] = e2m1_x2((uvec4(q[k]) >> (sh + 4u)) & 15u);
    }
    return ldexp(1.0, int(e_word & 0xffu) - 128);
}
#define BLOCK_BYTES 17u      /* e8m0 scale, 16 bytes of nibbles */
#define DECODE_BLOCK(B4, o, v) \
    decode_mxfp4_words(uvec4(B4((o) + 1u), B4((o) + 5u), B4((o) + 9u), B4((o) + 13u)), B4(o), v)
#endif
