/* The lightning indexer's selection (spec §3.8), merge levels: each output list is the
 * first min(topk, ...) entries of `group` consecutive sorted lists of the level below
 * (indexer.comp writes level 0, a list per chunk), in the same order (indexer_order.glsl).
 * Dispatch (output lists * parts, n_tok): the candidates of one output list (every entry
 * of its input lists) are spread over `parts` workgroups, ABI_INDEXER_MERGE_PER_INVOCATION
 * a invocation. A candidate's rank in the union is its place in its own list plus, in each
 * other list, the count of entries before it (a binary search), so each is placed
 * independently and no loop grows with the context. With ABI_INDEXER_FLAG_FINAL the one
 * output list is the token's selection, written as indices into sel.
 *
 * The input list l of a token with n_vis entries holds min(topk, its span's visible
 * entries) of entries [l * span, (l + 1) * span), at pair in_off + t * in_tstride +
 * l * min(topk, span); output list o at out_off + t * out_tstride + o * out_stride. */
#version 450
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

ABI_PUSH(ABI_INDEXER_MERGE_FIELDS)

layout(std430, binding = ABI_INDEXER_MERGE_BIND_LISTS) buffer l_buf { uvec2 lists[]; }; /* in and out: disjoint areas */
layout(std430, binding = ABI_INDEXER_MERGE_BIND_SEL) writeonly buffer sel_buf { int sel[]; };
#include "indexer_order.glsl"

/* Entries of input list l for a token with n_vis visible entries. */
uint list_len(const uint n_vis, const uint l)
{
    const uint s0 = l * pc.span;
    return s0 >= n_vis ? 0u : min(pc.topk, min(pc.span, n_vis - s0));
}

/* Entries of the sorted list at pair `base` (len of them) that come before v: a binary
 * search of at most log2(ABI_INDEXER_MAX_TOPK) + 1 passes. */
uint count_before(const uint base, const uint len, const uvec2 v)
{
    uint lo = 0u, hi = len;
    while (lo < hi) {
        const uint mid = (lo + hi) / 2u;
        if (ix_before(lists[base + mid], v)) lo = mid + 1u;
        else hi = mid;
    }
    return lo;
}

void main()
{
    const uint t = gl_WorkGroupID.y, tid = gl_LocalInvocationID.x, wg = gl_WorkGroupSize.x;
    const uint o = gl_WorkGroupID.x / pc.parts, part = gl_WorkGroupID.x % pc.parts;
    const uint n_vis = (pc.pos0 + t + 1u) / 4u, l0 = o * pc.group, stride = min(pc.topk, pc.span);
    if (l0 * pc.span >= n_vis) return; /* uniform: this token has no such list */
    const uint in_base = pc.in_off + t * pc.in_tstride + l0 * stride;
    const uint c_end = (part + 1u) * wg * ABI_INDEXER_MERGE_PER_INVOCATION;
    for (uint c = part * wg * ABI_INDEXER_MERGE_PER_INVOCATION + tid; c < c_end; c += wg) {
        const uint g = c / stride, p = c % stride;
        if (g >= pc.group || p >= list_len(n_vis, l0 + g)) continue;
        const uvec2 v = lists[in_base + g * stride + p];
        uint rank = p;
        for (uint g2 = 0u; g2 < pc.group; g2++)
            if (g2 != g) rank += count_before(in_base + g2 * stride, list_len(n_vis, l0 + g2), v);
        if (rank >= pc.topk) continue;
        if ((pc.flags & ABI_INDEXER_FLAG_FINAL) != 0u) sel[pc.sel_off + t * pc.topk + rank] = int(v.y);
        else lists[pc.out_off + t * pc.out_tstride + o * pc.out_stride + rank] = v;
    }
}
