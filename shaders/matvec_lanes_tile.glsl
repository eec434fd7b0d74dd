/* The row-per-lane tile for LT_TOKENS tokens as function LT_FN: included twice by
 * matvec_lanes.glsl (a full token tile, and one token for the tail of a grouped MoE list).
 * A token's sums are formed in the same order whatever LT_TOKENS is. */
void LT_FN(const uint mat, const uint xt[LT_TOKENS], const uint yt[LT_TOKENS], const bool tv[LT_TOKENS])
{
    const uint wg = gl_WorkGroupSize.x, wg_row0 = gl_WorkGroupID.x * pc.rows_per_wg;
    const uint row0 = wg_row0 + gl_LocalInvocationIndex;      /* this lane's rows: row0 + r * wg */
    const uint mat_texel = (pc.w_off + mat * pc.w_zstride) >> 4;
    const uint row_texels = pc.row_bytes >> 4;
    const bool accumulate = (pc.flags & ABI_MATVEC_FLAG_ACCUMULATE) != 0u;
    const uint n_chunks = pc.n_in / (BLOCK_ELEMS * CHUNK_BLOCKS);
    for (uint c = 0u; c < n_chunks; c++) {
        /* the chunk's x for every token, fetched once for all rows */
        vec4 xv[LT_TOKENS][CHUNK_VEC4];
        [[unroll]] for (uint t = 0u; t < LT_TOKENS; t++)
            [[unroll]] for (uint k = 0u; k < CHUNK_VEC4; k++) xv[t][k] = texelFetch(x_tex, int((xt[t] >> 2) + c * CHUNK_VEC4 + k));
        for (uint r = 0u; r < ROWS_PER_LANE; r++) {
            if (wg_row0 + r * wg >= pc.n_out) break;               /* the same for the whole workgroup */
            /* a lane past n_out repeats the last row so all lanes stay in step; it writes nothing */
            const uint row = min(row0 + r * wg, pc.n_out - 1u);
            const uint tex0 = mat_texel + row * row_texels + c * CHUNK_TEXELS;
            uvec4 win[WIN_TEXELS];
            [[unroll]] for (uint i = 0u; i < CHUNK_TEXELS; i++) win[i] = texelFetch(w_tex, int(tex0 + i));
            float s[LT_TOKENS];
            [[unroll]] for (uint t = 0u; t < LT_TOKENS; t++) s[t] = 0.0;
            [[unroll]] for (uint bb = 0u; bb < CHUNK_BLOCKS; bb++) {
                vec4 v[8];
#define WIN_B4(b) BYTES4(win, b)
                const float d = DECODE_BLOCK(WIN_B4, BLOCK_BYTES * bb, v);
                [[unroll]] for (uint t = 0u; t < LT_TOKENS; t++) {
                    vec4 p = v[0] * xv[t][bb * BLOCK_VEC4];
                    [[unroll]] for (uint k = 1u; k < BLOCK_VEC4; k++) p += v[k] * xv[t][bb * BLOCK_VEC4 + k];
                    s[t] += d * ((p.x + p.y) + (p.z + p.w));
                }
            }
            /* partial sums go straight to y: no per-row accumulators to index */
            if (row0 + r * wg < pc.n_out)
                for (uint t = 0u; t < LT_TOKENS; t++)
                    if (tv[t]) {
                        const uint yi = yt[t] + row;
                        y[yi] = (c == 0u && !accumulate ? 0.0 : y[yi]) + s[t] * pc.scale;
                    }
        }
    }
}
