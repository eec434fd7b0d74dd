/* The lightning indexer of CSA layers (spec §3.8), one workgroup per token: the score of
 * every visible compressed entry, then the top-k (ties to the lower index), written in
 * descending order like the reference.
 *
 * The selection costs passes over the scores, not their square (a 1M-position session has
 * 262,144 entries): the k-th largest score is found bit by bit on an order-preserving key
 * (32 counting passes), then each invocation collects the entries above it from its own
 * contiguous range, and the ties at it lowest index first, into shared memory in index
 * order (a prefix sum places them), and the k kept are ordered by rank counting. Every
 * count is an integer summed without atomics, so the result does not depend on the order
 * in which invocations run. */
#version 450
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#include "common.glsl" /* the row kernels' workgroup layout */

ABI_PUSH(ABI_INDEXER_FIELDS)

layout(std430, binding = ABI_INDEXER_BIND_Q) readonly buffer q_buf { float q[]; };
layout(std430, binding = ABI_INDEXER_BIND_W) readonly buffer w_buf { float hw[]; };
layout(std430, binding = ABI_INDEXER_BIND_KEYS) readonly buffer k_buf { uint keys[]; }; /* as stored (kv.glsl) */
layout(std430, binding = ABI_INDEXER_BIND_SCORE) coherent buffer s_buf { float score[]; };
layout(std430, binding = ABI_INDEXER_BIND_SEL) writeonly buffer sel_buf { int sel[]; };
#define KV_WORD(i) keys[i]
#include "kv.glsl"

shared uint count_partial[ABI_WG_SIZE];
shared uint scan_gt[ABI_WG_SIZE], scan_tie[ABI_WG_SIZE];
shared uint kept[ABI_INDEXER_MAX_TOPK]; /* the selection in index order */

/* An unsigned key with the float order (-0 counts as +0; scores are never NaN). */
uint order_key(float v)
{
    const uint u = floatBitsToUint(v == 0.0 ? 0.0 : v);
    return (u & 0x80000000u) != 0u ? ~u : u | 0x80000000u;
}

/* Sum of a count over the workgroup (barriers inside: uniform control flow only). */
uint wg_count(uint v)
{
    v = subgroupAdd(v);
    barrier();
    if (subgroupElect()) count_partial[gl_SubgroupID] = v;
    barrier();
    uint total = 0u;
    for (uint s = 0u; s < gl_NumSubgroups; s++) total += count_partial[s];
    return total;
}

void main()
{
    const uint t = gl_WorkGroupID.x, tid = gl_LocalInvocationID.x, wg = gl_WorkGroupSize.x;
    const uint pos = pc.pos0 + t, n_vis = (pos + 1u) / 4u;
    const uint H = pc.n_head, D = pc.dim;
    const uint qb = pc.q_off + t * H * D, sb = pc.score_off + t * pc.score_tstride;
    for (uint b = tid; b < n_vis; b += wg) {
        const uint kb = pc.keys_off + b * pc.key_words;
        float s = 0.0;
        for (uint h = 0u; h < H; h++) {
            float dot = 0.0;
            /* sixteen products a loop pass, summed in order (the same sums as one at a
             * time): CPU drivers count loop passes against their limit (vk_forward.c),
             * and unrolled ones are not passes */
            uint i = 0u;
            if (pc.kv == ABI_KV_F32) {
                for (; i + 16u <= D; i += 16u)
                    [[unroll]] for (uint c = 0u; c < 16u; c++) dot += q[qb + h * D + i + c] * uintBitsToFloat(keys[kb + i + c]);
                for (; i < D; i++) dot += q[qb + h * D + i] * uintBitsToFloat(keys[kb + i]);
            } else { /* unpacked four at a time */
                for (; i + 16u <= D; i += 16u)
                    [[unroll]] for (uint j = 0u; j < 4u; j++) {
                        const vec4 k4 = kv_load4(pc.kv, kb, i / 4u + j, D);
                        [[unroll]] for (uint c = 0u; c < 4u; c++) dot += q[qb + h * D + i + 4u * j + c] * k4[c];
                    }
                for (; i < D; i += 4u) {
                    const vec4 k4 = kv_load4(pc.kv, kb, i / 4u, D);
                    [[unroll]] for (uint c = 0u; c < 4u; c++) dot += q[qb + h * D + i + c] * k4[c];
                }
            }
            s += hw[pc.w_off + t * pc.w_tstride + h] * pc.scale * max(dot, 0.0);
        }
        score[sb + b] = s;
    }
    memoryBarrierBuffer();
    barrier();
    const uint k = min(n_vis, pc.topk);
    if (k == 0u) return; /* uniform: every invocation leaves */

    /* thr: the k-th largest key, the largest value with at least k keys at or above it,
     * found bit by bit from the top (32 counting passes) */
    uint thr = 0u;
    if (k < n_vis) {
        for (int bit = 31; bit >= 0; bit--) {
            const uint cand = thr | (1u << uint(bit));
            uint cnt = 0u;
            for (uint b = tid; b < n_vis; b += wg) cnt += order_key(score[sb + b]) >= cand ? 1u : 0u;
            if (wg_count(cnt) >= k) thr = cand;
        }
    }
    /* keys above thr are kept, and the first ties at it until k are (k == n_vis: all) */
    const uint per = (n_vis + wg - 1u) / wg, b0 = min(tid * per, n_vis), b1 = min(b0 + per, n_vis);
    uint n_gt = 0u, n_tie = 0u;
    for (uint b = b0; b < b1; b++) {
        const uint kb = order_key(score[sb + b]);
        n_gt += (k == n_vis || kb > thr) ? 1u : 0u;
        n_tie += (k < n_vis && kb == thr) ? 1u : 0u;
    }
    scan_gt[tid] = n_gt;
    scan_tie[tid] = n_tie;
    barrier();
    uint gt_before = 0u, tie_before = 0u, gt_total = 0u;
    for (uint i = 0u; i < wg; i++) {
        gt_before += i < tid ? scan_gt[i] : 0u;
        tie_before += i < tid ? scan_tie[i] : 0u;
        gt_total += scan_gt[i];
    }
    const uint need_ties = k - gt_total;
    uint dst = gt_before + min(tie_before, need_ties), tie_i = tie_before;
    for (uint b = b0; b < b1; b++) {
        const uint kb = order_key(score[sb + b]);
        bool take = k == n_vis || kb > thr;
        if (k < n_vis && kb == thr) {
            take = tie_i < need_ties;
            tie_i++;
        }
        if (take) kept[dst++] = b;
    }
    barrier();
    /* descending score, ties to the lower index: each kept entry's rank among the kept */
    for (uint i = tid; i < k; i += wg) {
        const uint b = kept[i];
        const float v = score[sb + b];
        uint rank = 0u;
        for (uint j = 0u; j < k; j++) {
            const uint o = kept[j];
            const float u = score[sb + o];
            rank += (u > v || (u == v && o < b)) ? 1u : 0u;
        }
        sel[pc.sel_off + t * pc.topk + rank] = int(b);
    }
}
