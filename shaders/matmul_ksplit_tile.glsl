/* The K-split tile for KS_TOKENS tokens as function KS_FN: included twice by
 * matmul_ksplit.glsl (a full and a half token tile). */
void KS_FN(const uint mat, const uint xt[KS_TOKENS], const uint yt[KS_TOKENS], const bool tv[KS_TOKENS])
{
    const uint SG = gl_SubgroupSize, lane = gl_SubgroupInvocationID;
    /* a row's K is split over LPR lanes (KSPLIT_LPR); SG / LPR rows are worked on at once */
    const uint part = lane % KSPLIT_LPR, row_set = lane / KSPLIT_LPR;
    const uint wg_row0 = gl_WorkGroupID.x * pc.rows_per_wg;
    const uint wg_rows = min(pc.rows_per_wg, pc.n_out - min(wg_row0, pc.n_out));
    const uint mat_byte = pc.w_off + mat * pc.w_zstride;
    const bool accumulate = (pc.flags & ABI_MATVEC_FLAG_ACCUMULATE) != 0u;
    const uint n_units = pc.n_in / UNIT_ELEMS, pass_units = KSPLIT_LPR * SEG_UNITS;
    for (uint p0 = 0u; p0 < n_units; p0 += pass_units) {
        /* this lane's units of the pass: p0 + j * LPR + part; x for every token, fetched once */
        vec4 xv[KS_TOKENS][SEG_UNITS * UNIT_VEC4];
        uint unit_byte[SEG_UNITS];
        [[unroll]] for (uint j = 0u; j < SEG_UNITS; j++) {
            const uint un = p0 + j * KSPLIT_LPR + part;
            /* past the end: read a real unit with x zero (a multiply: a conditional fetch
             * made LLVM take seconds longer to compile the pipeline) */
            const uint uc = min(un, n_units - 1u);
            const float x_on = un < n_units ? 1.0 : 0.0;
            unit_byte[j] = uc * 2u * BLOCK_BYTES;
            [[unroll]] for (uint t = 0u; t < KS_TOKENS; t++)
                [[unroll]] for (uint k = 0u; k < UNIT_VEC4; k++)
                    xv[t][j * UNIT_VEC4 + k] = texelFetch(x_tex, int((xt[t] >> 2) + uc * UNIT_VEC4 + k)) * x_on;
        }
        for (uint g = 0u; g < wg_rows; g += SG) { /* groups of SG rows */
            const uint g_rows = min(SG, wg_rows - g);
            float kept[KS_TOKENS];           /* after the group: row g + lane's sums */
            [[unroll]] for (uint t = 0u; t < KS_TOKENS; t++) kept[t] = 0.0;
            /* step jr: the lanes of row set r work on row g + r * LPR + jr (a row past the
             * group's end repeats its last row and is not kept) */
            for (uint jr = 0u; jr < min(KSPLIT_LPR, g_rows); jr++) {
                const uint row_byte = mat_byte + (wg_row0 + g + min(row_set * KSPLIT_LPR + jr, g_rows - 1u)) * pc.row_bytes;
                float s[KS_TOKENS];
                [[unroll]] for (uint t = 0u; t < KS_TOKENS; t++) s[t] = 0.0;
                [[unroll]] for (uint j = 0u; j < SEG_UNITS; j++) {
                    const uint b0 = row_byte + unit_byte[j];
#if W_TYPE == ABI_WTYPE_F32
                    uvec4 tx[UNIT_TEXELS];
                    [[unroll]] for (uint i = 0u; i < UNIT_TEXELS; i++) tx[i] = texelFetch(w_words, int((b0 >> 4) + i));
#else
                    uint u[UNIT_WORDS];
                    [[unroll]] for (uint i = 0u; i < UNIT_WORDS; i++) u[i] = texelFetch(w_words, int((b0 >> 2) + i)).x;
#endif
#if W_TYPE == ABI_WTYPE_MXFP4
                    const bool odd = (b0 & 2u) != 0u;  /* the unit starts 2 bytes into its first word */
                    [[unroll]] for (uint i = 0u; i + 1u < UNIT_WORDS; i++) u[i] = odd ? (u[i] >> 16) | (u[i + 1u] << 16) : u[i];
                    u[UNIT_WORDS - 1u] = odd ? u[UNIT_WORDS - 1u] >> 16 : u[UNIT_WORDS - 1u];
#endif
                    [[unroll]] for (uint bb = 0u; bb < 2u; bb++) {
                        vec4 v[8];
#if W_TYPE == ABI_WTYPE_F32
                        [[unroll]] for (uint k = 0u; k < 8u; k++) v[k] = uintBitsToFloat(tx[bb * 8u + k]);
                        const float d = 1.0;
#else
                        const float d = DECODE_BLOCK(U_B4, BLOCK_BYTES * bb, v);
#endif
                        const uint xk = (j * 2u + bb) * 8u;
                        /* k outer, tokens inner: each float4 of weights is used by every
                         * token while in registers (0.86-0.97 of the time of tokens outer,
                         * which reloaded spilled weights for every token) */
                        vec4 q[KS_TOKENS];
                        [[unroll]] for (uint t = 0u; t < KS_TOKENS; t++) q[t] = v[0] * xv[t][xk];
                        [[unroll]] for (uint k = 1u; k < 8u; k++)
                            [[unroll]] for (uint t = 0u; t < KS_TOKENS; t++) q[t] += v[k] * xv[t][xk + k];
                        [[unroll]] for (uint t = 0u; t < KS_TOKENS; t++) s[t] += d * ((q[t].x + q[t].y) + (q[t].z + q[t].w));
                    }
                }
                [[unroll]] for (uint t = 0u; t < KS_TOKENS; t++) {
                    const float r = lanes_sum(s[t]);
                    kept[t] = part == jr ? r : kept[t];
                }
            }
            if (lane < g_rows) {
                const uint row = wg_row0 + g + lane;
                for (uint t = 0u; t < KS_TOKENS; t++)
                    if (tv[t]) {
                        const uint yi = yt[t] + row;
                        y[yi] = (p0 == 0u && !accumulate ? 0.0 : y[yi]) + kept[t] * pc.scale;
                    }
            }
        }
    }
}
