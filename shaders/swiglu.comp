/* Clamped SwiGLU of the experts' hidden rows (spec §3.11.4), in place on the gate rows:
 * h = silu(min(g, lim)) * clamp(u, -lim, lim) * routing weight. Routed rows come first;
 * the shared expert's rows (weight 1, its own limit) live in the MoE projection rows. */
#version 450
#extension GL_GOOGLE_include_directive : require
#include "abi.h"

layout(local_size_x = ABI_WG_SIZE) in;
ABI_PUSH(ABI_SWIGLU_FIELDS)

layout(std430, binding = ABI_SWIGLU_BIND_GU) buffer gu_buf { float gu[]; };
layout(std430, binding = ABI_SWIGLU_BIND_SHARED) buffer sh_buf { float sh[]; };
layout(std430, binding = ABI_SWIGLU_BIND_WEIGHTS) readonly buffer w_buf { float weights[]; };

void main()
{
    const uint i = gl_GlobalInvocationID.x, r = gl_WorkGroupID.y;
    if (i >= pc.n_ff || r >= pc.n_rows) return;
    const bool routed = r < pc.n_routed;
    const float lim = routed ? pc.lim_routed : pc.lim_shared;
    const float wgt = routed ? weights[pc.weights_off + r] : 1.0;
    const uint gi = routed ? r * pc.n_ff + i : pc.sh_off + (r - pc.n_routed) * pc.sh_tstride + i;
    float gv = routed ? gu[gi] : sh[gi];
    float uv = routed ? gu[pc.u_off + gi] : sh[gi + pc.n_ff];
    if (lim > 0.0) { gv = min(gv, lim); uv = clamp(uv, -lim, lim); }
    const float h = gv / (1.0 + exp(-gv)) * uv * wgt;
    if (routed) gu[gi] = h; else sh[gi] = h;
}
