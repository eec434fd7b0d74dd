/* Per-row RMSNorm (optional, optional weight) and interleaved RoPE of the last rope_dim
 * elements, fused: q heads (norm without weight, rope), the kv row (norm with weight, rope,
 * written into the window ring), compressed entries (norm, rope at their block start) and
 * indexer queries (rope only). cos/sin come from a factored table computed in double on the
 * host (rope.glsl). */
#version 450
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

ABI_PUSH(ABI_NORM_ROPE_FIELDS)

layout(std430, binding = ABI_NORM_ROPE_BIND_X) readonly buffer x_buf { float x[]; };
layout(std430, binding = ABI_NORM_ROPE_BIND_Y) buffer y_buf { float y[]; };
layout(std430, binding = ABI_NORM_ROPE_BIND_W) readonly buffer w_buf { float w[]; };
layout(std430, binding = ABI_NORM_ROPE_BIND_ROPE) readonly buffer rope_buf { vec2 rope[]; };
#include "rope.glsl"

void main()
{
    const uint h = gl_WorkGroupID.x, t = gl_WorkGroupID.y, tid = gl_LocalInvocationID.x;
    const uint xb = pc.x_off + t * pc.x_tstride + h * pc.x_hstride;
    const uint yb = pc.y_off + ((pc.y_row0 + t) % pc.y_tmod) * pc.y_tstride + h * pc.y_hstride;
    float inv = 1.0;
    if ((pc.flags & ABI_NORM_ROPE_FLAG_NORM) != 0u) {
        float ss = 0.0;
        for (uint i = tid; i < pc.n; i += gl_WorkGroupSize.x) ss += x[xb + i] * x[xb + i];
        inv = 1.0 / sqrt(wg_sum(ss) / float(pc.n) + pc.eps);
    }
    const bool weighted = (pc.flags & ABI_NORM_ROPE_FLAG_WEIGHT) != 0u;
    const bool roped = (pc.flags & ABI_NORM_ROPE_FLAG_ROPE) != 0u;
    const uint first_rot = pc.n - pc.rope_dim, half_dim = pc.rope_dim / 2u;
    const uint pos = pc.pos_base + t * pc.pos_step;
    /* each invocation owns element pairs (2p, 2p+1), so in-place rotation is race-free */
    for (uint p = tid; p < pc.n / 2u; p += gl_WorkGroupSize.x) {
        const uint i0 = 2u * p;
        float a = x[xb + i0] * inv, b = x[xb + i0 + 1u] * inv;
        if (weighted) { a *= w[pc.w_off + i0]; b *= w[pc.w_off + i0 + 1u]; }
        if (roped && i0 >= first_rot) {
            const vec2 cs = rope_cs(pos, (i0 - first_rot) / 2u, half_dim);
            const float ra = a * cs.x - b * cs.y, rb = a * cs.y + b * cs.x;
            a = ra; b = rb;
        }
        y[yb + i0] = a;
        y[yb + i0 + 1u] = b;
    }
}
