/* The lightning indexer of CSA layers (spec §3.8), one workgroup per token: the score of
 * every visible compressed entry, then the top-k by rank counting (each entry's rank is
 * the number of entries that beat it; ties go to the lower index), written in descending
 * order like the reference. */
#version 450
#extension GL_GOOGLE_include_directive : require
#include "common.glsl" /* the row kernels' workgroup layout */

ABI_PUSH(ABI_INDEXER_FIELDS)

layout(std430, binding = ABI_INDEXER_BIND_Q) readonly buffer q_buf { float q[]; };
layout(std430, binding = ABI_INDEXER_BIND_W) readonly buffer w_buf { float hw[]; };
layout(std430, binding = ABI_INDEXER_BIND_KEYS) readonly buffer k_buf { float keys[]; };
layout(std430, binding = ABI_INDEXER_BIND_SCORE) coherent buffer s_buf { float score[]; };
layout(std430, binding = ABI_INDEXER_BIND_SEL) writeonly buffer sel_buf { int sel[]; };

void main()
{
    const uint t = gl_WorkGroupID.x, tid = gl_LocalInvocationID.x;
    const uint pos = pc.pos0 + t, n_vis = (pos + 1u) / 4u;
    const uint H = pc.n_head, D = pc.dim;
    const uint qb = pc.q_off + t * H * D, sb = pc.score_off + t * pc.score_tstride;
    for (uint b = tid; b < n_vis; b += gl_WorkGroupSize.x) {
        const uint kb = pc.keys_off + b * D;
        float s = 0.0;
        for (uint h = 0u; h < H; h++) {
            float dot = 0.0;
            for (uint i = 0u; i < D; i++) dot += q[qb + h * D + i] * keys[kb + i];
            s += hw[pc.w_off + t * pc.w_tstride + h] * pc.scale * max(dot, 0.0);
        }
        score[sb + b] = s;
    }
    memoryBarrierBuffer();
    barrier();
    const uint k = min(n_vis, pc.topk);
    for (uint b = tid; b < n_vis; b += gl_WorkGroupSize.x) {
        const float v = score[sb + b];
        uint rank = 0u;
        for (uint o = 0u; o < n_vis; o++) {
            const float u = score[sb + o];
            rank += (u > v || (u == v && o < b)) ? 1u : 0u;
        }
        if (rank < k) sel[pc.sel_off + t * pc.topk + rank] = int(b);
    }
}
