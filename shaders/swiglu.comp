/* Clamped SwiGLU of the experts' hidden rows (spec §3.11.4), in place on the gate rows:
 * h = silu(min(g, lim)) * clamp(u, -lim, lim) * routing weight. Routed rows come first;
 * the shared expert's rows (weight 1, its own limit) live in the MoE projection rows.
 * An invocation does one element, or four adjacent ones with ABI_SWIGLU_FLAG_VEC4. */
#version 450
#extension GL_GOOGLE_include_directive : require
#include "abi.h"

layout(local_size_x = ABI_WG_SIZE) in;
ABI_PUSH(ABI_SWIGLU_FIELDS)

layout(std430, binding = ABI_SWIGLU_BIND_GU) buffer gu_buf { float gu[]; };
layout(std430, binding = ABI_SWIGLU_BIND_GU) buffer gu4_buf { vec4 gu4[]; };
layout(std430, binding = ABI_SWIGLU_BIND_SHARED) buffer sh_buf { float sh[]; };
layout(std430, binding = ABI_SWIGLU_BIND_SHARED) buffer sh4_buf { vec4 sh4[]; };
layout(std430, binding = ABI_SWIGLU_BIND_WEIGHTS) readonly buffer w_buf { float weights[]; };

vec4 swiglu(vec4 g, vec4 u, float lim, float wgt)
{
    if (lim > 0.0) { g = min(g, lim); u = clamp(u, -lim, lim); }
    return g / (1.0 + exp(-g)) * u * wgt;
}

void main()
{
    const bool vec4_on = (pc.flags & ABI_SWIGLU_FLAG_VEC4) != 0u;
    const uint i = gl_GlobalInvocationID.x * (vec4_on ? 4u : 1u), r = gl_WorkGroupID.y;
    if (i >= pc.n_ff || r >= pc.n_rows) return;
    const bool routed = r < pc.n_routed;
    const float lim = routed ? pc.lim_routed : pc.lim_shared;
    const float wgt = routed ? weights[pc.weights_off + r] : 1.0;
    const uint gi = routed ? r * pc.n_ff + i : pc.sh_off + (r - pc.n_routed) * pc.sh_tstride + i;
    const uint ui = routed ? pc.u_off + gi : gi + pc.n_ff;
    if (vec4_on) {
        const vec4 h = routed ? swiglu(gu4[gi / 4u], gu4[ui / 4u], lim, wgt) : swiglu(sh4[gi / 4u], sh4[ui / 4u], lim, wgt);
        if (routed) gu4[gi / 4u] = h; else sh4[gi / 4u] = h;
    } else {
        const float h = routed ? swiglu(vec4(gu[gi]), vec4(gu[ui]), lim, wgt).x : swiglu(vec4(sh[gi]), vec4(sh[ui]), lim, wgt).x;
        if (routed) gu[gi] = h; else sh[gi] = h;
    }
}
