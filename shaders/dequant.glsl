/* Element decoders shared by the matvec layouts (matvec.glsl, matvec_lanes.glsl), written
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
