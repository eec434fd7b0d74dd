/* Sparse attention (spec §3.9) for CPU drivers: one workgroup, one subgroup, per group of
 * HEADS heads of one token, in a single pass over the keys with an online softmax.
 *
 * Every head of a token attends to the same keys (one key/value row per position, value =
 * key), so here each key row is fetched once for HEADS heads: lane l holds float4s l,
 * l + SG, ... of the row (KV4 of them), of each head's q, and of each head's running
 * output. Per key: the HEADS scores (a subgroup sum each, lanes_sum), the online softmax
 * update (the running maximum starts at the sink's logit, which joins the denominator with
 * no value), and the outputs rescaled and accumulated. attention.glsl's layout (a workgroup per head,
 * scores then probabilities through shared memory) fetches each row once per head, and on
 * lavapipe its shared-memory reads are per-lane loops.
 *
 * Same bindings and push block as attention.glsl with ATTN_TEXELS (q and the key rows
 * through float4 texel views of their chunks); dispatch (n_head / HEADS, n_tok, 1). */
#version 450
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#extension GL_KHR_shader_subgroup_basic : require
#include "abi.h"

/* one subgroup a workgroup: the same constant sizes the workgroup and lanes_sum (as a plain
 * constant: lanes_sum.glsl says why not gl_WorkGroupSize) */
layout(constant_id = ABI_SPEC_WG_SIZE) const uint SUBGROUP_LANES = 8;
layout(local_size_x_id = ABI_SPEC_WG_SIZE) in;
layout(constant_id = ABI_SPEC_ATTN_HEADS) const uint HEADS = 8;
layout(constant_id = ABI_SPEC_ATTN_KV4) const uint KV4 = 16; /* float4 per lane: head_dim / 4 / subgroup size */
#define LANES_SUM_WIDTH SUBGROUP_LANES
#include "lanes_sum.glsl"

ABI_PUSH(ABI_ATTN_FIELDS)

layout(binding = ABI_ATTN_BIND_Q) uniform samplerBuffer q_tex;
layout(binding = ABI_ATTN_BIND_RING) uniform samplerBuffer ring_tex;
layout(binding = ABI_ATTN_BIND_COMP) uniform samplerBuffer comp_tex;
#include "attention_common.glsl"

/* One key row k (this lane's float4s) for every head: score, online softmax update, output. */
void attend(vec4 k[KV4], const uint lane, const uint hd4, const vec4 q[HEADS][KV4], inout vec4 acc[HEADS][KV4],
            inout float run_max[HEADS], inout float den[HEADS])
{
    [[unroll]] for (uint m = 0u; m < KV4; m++) if (lane + m * gl_SubgroupSize >= hd4) k[m] = vec4(0.0);
    [[unroll]] for (uint h = 0u; h < HEADS; h++) {
        vec4 d4 = q[h][0] * k[0];
        [[unroll]] for (uint m = 1u; m < KV4; m++) d4 += q[h][m] * k[m];
        const float s = lanes_sum((d4.x + d4.y) + (d4.z + d4.w)) * pc.scale;
        const float mx = max(run_max[h], s), corr = exp(run_max[h] - mx), p = exp(s - mx);
        run_max[h] = mx;
        den[h] = den[h] * corr + p;
        [[unroll]] for (uint m = 0u; m < KV4; m++) acc[h][m] = acc[h][m] * corr + p * k[m];
    }
}

void main()
{
    const uint h0 = gl_WorkGroupID.x * HEADS, t = gl_WorkGroupID.y, lane = gl_SubgroupInvocationID, SG = gl_SubgroupSize;
    const uint hd4 = pc.head_dim / 4u, pos = pc.pos0 + t;
    uint first, n_win, n_comp;
    attn_keys(pos, first, n_win, n_comp);

    /* q of each head and the running state: maximum (from the sink), denominator, output */
    vec4 q[HEADS][KV4], acc[HEADS][KV4];
    float run_max[HEADS], den[HEADS];
    [[unroll]] for (uint h = 0u; h < HEADS; h++) {
        const uint qb4 = (pc.q_off + (t * pc.n_head + h0 + h) * pc.head_dim) / 4u;
        [[unroll]] for (uint m = 0u; m < KV4; m++) {
            const uint i4 = min(lane + m * SG, hd4 - 1u);
            q[h][m] = lane + m * SG < hd4 ? texelFetch(q_tex, int(qb4 + i4)) : vec4(0.0);
            acc[h][m] = vec4(0.0);
        }
        run_max[h] = sinks[pc.sinks_off + h0 + h];
        den[h] = 1.0;
    }
    /* the window's keys, then the compressed entries: two loops, not a branch per key (a
     * CPU driver runs both sides of a branch whose condition it cannot prove uniform) */
    for (uint j = 0u; j < n_win; j++) {
        const uint kb4 = (pc.ring_off + ((first + j) % pc.ring_len) * pc.head_dim) / 4u;
        vec4 k[KV4];
        [[unroll]] for (uint m = 0u; m < KV4; m++) k[m] = texelFetch(ring_tex, int(kb4 + min(lane + m * SG, hd4 - 1u)));
        attend(k, lane, hd4, q, acc, run_max, den);
    }
    for (uint c = 0u; c < n_comp; c++) {
        const uint e = pc.ratio == 4u ? uint(sel[pc.sel_off + t * pc.topk + c]) : c;
        const uint kb4 = (pc.comp_off + e * pc.head_dim) / 4u;
        vec4 k[KV4];
        [[unroll]] for (uint m = 0u; m < KV4; m++) k[m] = texelFetch(comp_tex, int(kb4 + min(lane + m * SG, hd4 - 1u)));
        attend(k, lane, hd4, q, acc, run_max, den);
    }
    /* normalise, undo the rope, write */
    [[unroll]] for (uint h = 0u; h < HEADS; h++) {
        const uint ob4 = (pc.o_off + (t * pc.n_head + h0 + h) * pc.head_dim) / 4u;
        [[unroll]] for (uint m = 0u; m < KV4; m++) {
            const uint i4 = lane + m * SG;
            if (i4 < hd4) o4[ob4 + i4] = attn_unrope4(acc[h][m] / den[h], i4, pos);
        }
    }
}
