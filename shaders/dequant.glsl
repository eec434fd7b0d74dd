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
/* E2M1 codes (4 bits each) times two, so every value is a small integer; the block scale
 * 2^(e-128) undoes the doubling. e = 0 gives m; otherwise 2^e * (1 + m/2), built as float
 * bits. */
vec4 e2m1_x2(uvec4 c)
{
    const uvec4 e = (c >> 1) & 3u, m = c & 1u, s = c >> 3;
    const uvec4 normal = ((e + 127u) << 23) | (m << 22);
    const uvec4 bits = mix(m * 0x3f800000u, normal, greaterThan(e, uvec4(0u)));
    return uintBitsToFloat(bits | (s << 31));
}
#endif
