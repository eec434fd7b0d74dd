/* Sparse attention of one head for one token (spec §3.9): keys are the sliding window (a
 * ring of ring_len rows) plus compressed entries (every completed one for HCA, the
 * indexer's selection for CSA); value = key; a per-head sink joins the softmax; the output
 * gets the inverse rotation of its rope dims (§3.10.1). Scores live in shared memory. */
#version 450
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

ABI_PUSH(ABI_ATTN_FIELDS)

layout(std430, binding = ABI_ATTN_BIND_Q) readonly buffer q_buf { float q[]; };
layout(std430, binding = ABI_ATTN_BIND_RING) readonly buffer ring_buf { float ring[]; };
layout(std430, binding = ABI_ATTN_BIND_COMP) readonly buffer comp_buf { float comp[]; };
layout(std430, binding = ABI_ATTN_BIND_SEL) readonly buffer sel_buf { int sel[]; };
layout(std430, binding = ABI_ATTN_BIND_SINKS) readonly buffer sinks_buf { float sinks[]; };
layout(std430, binding = ABI_ATTN_BIND_ROPE) readonly buffer rope_buf { vec2 rope[]; };
layout(std430, binding = ABI_ATTN_BIND_O) writeonly buffer o_buf { float o[]; };

shared float att[ABI_ATTN_MAX_KEYS];

float ring_or_comp(bool in_ring, uint idx) { return in_ring ? ring[idx] : comp[idx]; }

uint key_base(uint j, uint first, uint n_win, uint t)
{
    if (j < n_win) return pc.ring_off + ((first + j) % pc.ring_len) * pc.head_dim;
    const uint c = j - n_win;
    const uint e = pc.ratio == 4u ? uint(sel[pc.sel_off + t * pc.topk + c]) : c;
    return pc.comp_off + e * pc.head_dim;
}

void main()
{
    const uint h = gl_WorkGroupID.x, t = gl_WorkGroupID.y, tid = gl_LocalInvocationID.x;
    const uint hd = pc.head_dim, pos = pc.pos0 + t;
    const uint first = pos + 1u > pc.window ? pos + 1u - pc.window : 0u, n_win = pos + 1u - first;
    uint n_comp = 0u;
    if (pc.ratio == 4u) n_comp = min((pos + 1u) / 4u, pc.topk);
    else if (pc.ratio != 0u) n_comp = (pos + 1u) / pc.ratio;
    const uint n_keys = min(n_win + n_comp, uint(ABI_ATTN_MAX_KEYS));
    const uint qb = pc.q_off + (t * pc.n_head + h) * hd;

    /* scores: one subgroup per key, lanes across the head dim */
    for (uint j = gl_SubgroupID; j < n_keys; j += gl_NumSubgroups) {
        const uint kb = key_base(j, first, n_win, t);
        float dot = 0.0;
        for (uint i = gl_SubgroupInvocationID; i < hd; i += gl_SubgroupSize) dot += q[qb + i] * ring_or_comp(j < n_win, kb + i);
        dot = subgroupAdd(dot);
        if (subgroupElect()) att[j] = dot * pc.scale;
    }
    barrier();
    const float sink = sinks[pc.sinks_off + h];
    float mx = sink;
    for (uint j = 0u; j < n_keys; j++) mx = max(mx, att[j]);
    float den = exp(sink - mx);
    for (uint j = 0u; j < n_keys; j++) den += exp(att[j] - mx);

    const uint first_rot = hd - pc.rope_dim, half_dim = pc.rope_dim / 2u;
    const uint ob = pc.o_off + (t * pc.n_head + h) * hd;
    for (uint p = tid; p < hd / 2u; p += ABI_WG_SIZE) {
        const uint i0 = 2u * p;
        float a = 0.0, b = 0.0;
        for (uint j = 0u; j < n_keys; j++) {
            const uint kb = key_base(j, first, n_win, t);
            const float e = exp(att[j] - mx);
            a += e * ring_or_comp(j < n_win, kb + i0);
            b += e * ring_or_comp(j < n_win, kb + i0 + 1u);
        }
        a /= den;
        b /= den;
        if (i0 >= first_rot) { /* inverse rotation: angle -pos*freq */
            const vec2 cs = rope[pc.rope_off / 2u + pos * half_dim + (i0 - first_rot) / 2u];
            const float ra = a * cs.x + b * cs.y, rb = -a * cs.y + b * cs.x;
            a = ra; b = rb;
        }
        o[ob + i0] = a;
        o[ob + i0 + 1u] = b;
    }
}
