/* Per-row RMSNorm (optional, optional weight) and interleaved RoPE of the last rope_dim
 * elements, fused: q heads (norm without weight, rope), the kv row (norm with weight, rope,
 * written into the window ring), compressed entries (norm, rope at their block start) and
 * indexer queries (rope only). cos/sin come from a factored table computed in double on the
 * host (rope.glsl). A row's position comes from the push block or, for the rows of several
 * sessions in one dispatch, from a table of positions (abi.h). With pc.kv other than f32
 * the rows are compressed entries or indexer keys packed into their storage type (kv.glsl)
 * as they are written. */
#version 450
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

ABI_PUSH(ABI_NORM_ROPE_FIELDS)

layout(std430, binding = ABI_NORM_ROPE_BIND_X) readonly buffer x_buf { float x[]; };
layout(std430, binding = ABI_NORM_ROPE_BIND_Y) buffer y_buf { float y[]; };
layout(std430, binding = ABI_NORM_ROPE_BIND_Y) buffer yw_buf { uint yw[]; }; /* the same, as stored entries */
layout(std430, binding = ABI_NORM_ROPE_BIND_W) readonly buffer w_buf { float w[]; };
layout(std430, binding = ABI_NORM_ROPE_BIND_ROPE) readonly buffer rope_buf { vec2 rope[]; };
layout(std430, binding = ABI_NORM_ROPE_BIND_POS) readonly buffer pos_buf { int pos_rows[]; };
#include "rope.glsl"
#include "kv.glsl"

/* Elements (2p, 2p+1) of the row at xb, normed (inv), weighted and rotated as flags say. */
vec2 row_pair(const uint xb, const uint p, const float inv, const uint pos)
{
    const uint i0 = 2u * p, first_rot = pc.n - pc.rope_dim;
    float a = x[xb + i0] * inv, b = x[xb + i0 + 1u] * inv;
    if ((pc.flags & ABI_NORM_ROPE_FLAG_WEIGHT) != 0u) { a *= w[pc.w_off + i0]; b *= w[pc.w_off + i0 + 1u]; }
    if ((pc.flags & ABI_NORM_ROPE_FLAG_ROPE) != 0u && i0 >= first_rot) {
        const vec2 cs = rope_cs(pos, (i0 - first_rot) / 2u, pc.rope_dim / 2u);
        const float ra = a * cs.x - b * cs.y, rb = a * cs.y + b * cs.x;
        a = ra; b = rb;
    }
    return vec2(a, b);
}

/* The row packed into its stored entry from word yb (n even; a multiple of 4 for fp8). */
void pack_row(const uint xb, const uint yb, const float inv, const uint pos)
{
    const uint tid = gl_LocalInvocationID.x, wg = gl_WorkGroupSize.x;
    if (pc.kv == ABI_KV_F16) {
        for (uint p = tid; p < pc.n / 2u; p += wg) {
            const vec2 v = row_pair(xb, p, inv, pos);
            yw[yb + p] = kv_f16_bits(v.x) | (kv_f16_bits(v.y) << 16u);
        }
        return;
    }
    float amax = 0.0;
    for (uint p = tid; p < pc.n / 2u; p += wg) {
        const vec2 v = row_pair(xb, p, inv, pos);
        amax = max(amax, max(abs(v.x), abs(v.y)));
    }
    const float s = kv_fp8_scale(wg_max(amax));
    const float inv_s = uintBitsToFloat((254u << 23u) - floatBitsToUint(s)); /* 1/s, exact */
    for (uint q = tid; q < pc.n / 4u; q += wg) {
        const vec2 lo = row_pair(xb, 2u * q, inv, pos) * inv_s, hi = row_pair(xb, 2u * q + 1u, inv, pos) * inv_s;
        yw[yb + q] = kv_e4m3_code(lo.x) | (kv_e4m3_code(lo.y) << 8u) | (kv_e4m3_code(hi.x) << 16u) |
                     (kv_e4m3_code(hi.y) << 24u);
    }
    if (tid == 0u) yw[yb + pc.n / 4u] = floatBitsToUint(s);
}

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
    /* a row's position: from the push block, or (rows of several sessions) from the table */
    const uint pos = (pc.flags & ABI_NORM_ROPE_FLAG_POS_ROWS) != 0u ? uint(pos_rows[pc.pos_base + t * pc.pos_step])
                                                                    : pc.pos_base + t * pc.pos_step;
    if (pc.kv != ABI_KV_F32) {
        pack_row(xb, yb, inv, pos);
        return;
    }
    const bool weighted = (pc.flags & ABI_NORM_ROPE_FLAG_WEIGHT) != 0u;
    const bool roped = (pc.flags & ABI_NORM_ROPE_FLAG_ROPE) != 0u;
    const uint first_rot = pc.n - pc.rope_dim, half_dim = pc.rope_dim / 2u;
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
