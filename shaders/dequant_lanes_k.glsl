/* Q4_K and Q5_K for the CPU-driver kernel (matvec_lanes.glsl), included there: a chunk is one
 * super-block (256 elements; Q4_K 144 bytes = 9 texels, Q5_K 176 = 11), a "block" one of its
 * eight 32-element sub-blocks, at byte o = BLOCK_BYTES * c of the window (BLOCK_BYTES is a
 * super-block's bytes / 8, so o / BLOCK_BYTES gives c back as a constant). DECODE_BLOCK
 * gathers the header and the sub-block's 32 quant bytes (Q5_K: and the 32 high-bit bytes)
 * as words at constant offsets and decodes them with the CPU reference's float operations
 * (engine/model/quant_k.c: dl = d * scale, ml = dmin * min, dl * q - ml), returning 1.0 as
 * the block's factor. */
#define BLOCK_ELEMS 32u
#define CHUNK_BLOCKS 8u
#if W_TYPE == ABI_WTYPE_Q4_K
#define BLOCK_BYTES 18u      /* 144 / 8: { f16 d, dmin; u8 scales[12]; u8 qs[128]; } */
#define K_QS 16u
#else
#define BLOCK_BYTES 22u      /* 176 / 8: { f16 d, dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]; } */
#define K_QS 48u
#endif

/* dm: d and dmin; scw: the 12 scale bytes; q_lo, q_hi: the quant bytes of elements 0-15 and
 * 16-31 (low nibbles for even c, high for odd); Q5_K's h_lo, h_hi: the high-bit bytes */
float decode_k_sub(const uint c, const uint dm, const uvec3 scw, const uvec4 q_lo, const uvec4 q_hi,
#if W_TYPE == ABI_WTYPE_Q5_K
                   const uvec4 h_lo, const uvec4 h_hi,
#endif
                   out vec4 v[8])
{
#define K_SCALE(j) ((scw[(j) >> 2] >> (8u * ((j) & 3u))) & 0xffu)
    uint sc, m;
    if (c < 4u) {
        sc = K_SCALE(c) & 63u;
        m = K_SCALE(c + 4u) & 63u;
    } else {
        sc = (K_SCALE(c + 4u) & 15u) | ((K_SCALE(c - 4u) >> 6) << 4);
        m = (K_SCALE(c + 4u) >> 4) | ((K_SCALE(c) >> 6) << 4);
    }
#undef K_SCALE
    const float dl = unpackHalf2x16(dm).x * float(sc), ml = unpackHalf2x16(dm >> 16).x * float(m);
    const uvec4 sh = uvec4(0u, 8u, 16u, 24u) + 4u * (c & 1u);
    for (uint k = 0u; k < 4u; k++) { /* constant trip count: unrolled */
        uvec4 lo = (uvec4(q_lo[k]) >> sh) & 15u, hi = (uvec4(q_hi[k]) >> sh) & 15u;
#if W_TYPE == ABI_WTYPE_Q5_K
        const uvec4 hs = uvec4(0u, 8u, 16u, 24u) + c;
        lo += ((uvec4(h_lo[k]) >> hs) & 1u) << 4;
        hi += ((uvec4(h_hi[k]) >> hs) & 1u) << 4;
#endif
        v[k] = dl * vec4(lo) - ml;
        v[4u + k] = dl * vec4(hi) - ml;
    }
    return 1.0;
}

/* the four words from byte b on */
#define K_WORDS4(B4, b) uvec4(B4(b), B4((b) + 4u), B4((b) + 8u), B4((b) + 12u))
#define K_QS_AT(o) (K_QS + 32u * (((o) / BLOCK_BYTES) >> 1))
#if W_TYPE == ABI_WTYPE_Q4_K
#define DECODE_BLOCK(B4, o, v) \
    decode_k_sub((o) / BLOCK_BYTES, B4(0u), uvec3(B4(4u), B4(8u), B4(12u)), K_WORDS4(B4, K_QS_AT(o)), \
                 K_WORDS4(B4, K_QS_AT(o) + 16u), v)
#else
#define DECODE_BLOCK(B4, o, v) \
    decode_k_sub((o) / BLOCK_BYTES, B4(0u), uvec3(B4(4u), B4(8u), B4(12u)), K_WORDS4(B4, K_QS_AT(o)), \
                 K_WORDS4(B4, K_QS_AT(o) + 16u), K_WORDS4(B4, 16u), K_WORDS4(B4, 32u), v)
#endif
