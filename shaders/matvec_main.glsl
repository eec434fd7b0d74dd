/* The entry point shared by the matvec layouts (matvec.glsl, matvec_lanes.glsl): which
 * matrix, x and y rows each workgroup slice works on (plain, expert slots through ids,
 * fused gate+up, grouped prefill MoE), handed to the layout's compute_tile. */
void main()
{
    const uint z = gl_WorkGroupID.z;
    uint xt[TOK_TILE], yt[TOK_TILE]; /* per token of the tile: x and y offsets */
    bool tv[TOK_TILE];               /* token t of the tile exists (else clamped, not written) */
    if ((pc.flags & ABI_MATVEC_FLAG_GROUPED) != 0u) {
        /* Grouped MoE (moe_group's lists): slot z is list e = z % n_grp, whose expert is
         * ids[ids_off + n_grp + 1 + n_slots + e] (gate; up at z >= n_grp, mat_add further);
         * its tokens are the list ids[ids_off + n_grp + 1 + first ..] of slot indices s (token
         * s / x_zdiv, output row s), first = ids[ids_off + e], count = ids[ids_off + e + 1] -
         * first. The workgroup walks all of the list's tiles; an empty list (fewer experts
         * used than lists) exits at once. */
        const uint n_grp = pc.ids_wrap, e = z % n_grp;
        const uint first = uint(ids[pc.ids_off + e]), cnt = uint(ids[pc.ids_off + e + 1u]) - first;
        if (cnt == 0u) return; /* the same for the whole workgroup */
        const uint n_slots = uint(ids[pc.ids_off + n_grp]);
        const uint mat = uint(ids[pc.ids_off + n_grp + 1u + n_slots + e]) + (z >= n_grp ? pc.mat_add : 0u);
        /* the x and y offsets of the expert's tokens t0 .. t0 + n - 1 (past its count:
         * its last token again, not written) */
#define GROUPED_TILE(n, xt, yt, tv) \
            for (uint t = 0u; t < (n); t++) { \
                const uint slot = uint(ids[pc.ids_off + n_grp + 1u + first + min(t0 + t, cnt - 1u)]); \
                xt[t] = pc.x_off + (slot / max(pc.x_zdiv, 1u)) * pc.x_zstride; \
                yt[t] = pc.y_off + slot * pc.y_zstride + (z >= n_grp ? pc.y_wrap_add : 0u); \
                tv[t] = t0 + t < cnt; \
            }
        uint t0 = 0u;
#ifdef HAS_TAIL_TILE
        /* the layout has compute_tail_tile (where the TAIL_TILE specialization constant is
         * set): full tiles while more than TAIL_TOK_TILE tokens are left, then tiles of
         * TAIL_TOK_TILE (K-split: half a tile, at most one; LANES: one token) (loops, not a
         * branch: a CPU driver skips a loop that no lane enters but runs both sides of a
         * branch) */
        const uint full_past = TAIL_TILE != 0u ? TAIL_TOK_TILE : 0u;
#else
        const uint full_past = 0u;
#endif
        for (; t0 + full_past < cnt; t0 += TOK_TILE) {
            GROUPED_TILE(TOK_TILE, xt, yt, tv)
            compute_tile(mat, xt, yt, tv);
        }
#ifdef HAS_TAIL_TILE
        if (TAIL_TILE != 0u) /* compiled away where the constant is 0 */
            for (; t0 < cnt; t0 += TAIL_TOK_TILE) {
                uint xh[TAIL_TOK_TILE], yh[TAIL_TOK_TILE];
                bool th[TAIL_TOK_TILE];
                GROUPED_TILE(TAIL_TOK_TILE, xh, yh, th)
                compute_tail_tile(mat, xh, yh, th);
            }
#endif
        return;
    }
    const uint t0 = gl_WorkGroupID.y * TOK_TILE;
    const bool second = pc.ids_wrap != 0u && z >= pc.ids_wrap;   /* the up half of a fused gate+up */
    const uint zz = second ? z - pc.ids_wrap : z;
    const uint mat = (pc.flags & ABI_MATVEC_FLAG_IDS) != 0u ? uint(ids[pc.ids_off + zz]) + (second ? pc.mat_add : 0u) : z;
    const uint x_base = pc.x_off + (zz / max(pc.x_zdiv, 1u)) * pc.x_zstride;
    const uint y_base = pc.y_off + z * pc.y_zstride + (second ? pc.y_wrap_add : 0u);
    /* token offsets clamped to the last token so the inner loop needs no branch; rows of
     * clamped tokens are computed twice and written once */
    for (uint t = 0u; t < TOK_TILE; t++) {
        xt[t] = x_base + min(t0 + t, pc.n_tok - 1u) * pc.x_tstride;
        yt[t] = y_base + (t0 + t) * pc.y_tstride;
        tv[t] = t0 + t < pc.n_tok;
    }
    compute_tile(mat, xt, yt, tv);
}
