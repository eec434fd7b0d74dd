/* Hyper-connection exit (spec §3.2): the new streams from the sublayer output (summed over
 * its parts: one for attention, the routed experts plus the shared one for the MoE) and
 * the old streams mixed by comb. Each invocation owns one channel of every stream, so the
 * update is in place without races. */
#version 450
#extension GL_GOOGLE_include_directive : require
#extension GL_KHR_shader_subgroup_basic : require
#include "abi.h"

layout(local_size_x = ABI_WG_SIZE) in;
ABI_PUSH(ABI_HC_POST_FIELDS)

layout(std430, binding = ABI_HC_POST_BIND_X) buffer x_buf { float X[]; };
layout(std430, binding = ABI_HC_POST_BIND_SRC) readonly buffer src_buf { float src[]; };
layout(std430, binding = ABI_HC_POST_BIND_HC) readonly buffer hc_buf { float hc[]; };

void main()
{
    const uint i = gl_GlobalInvocationID.x, t = gl_WorkGroupID.y;
    const uint n = pc.n_hc, d = pc.n_embd;
    if (i >= d) return;
    float f = 0.0;
    for (uint s = 0u; s < pc.n_src; s++) f += src[pc.src_off + t * pc.src_tstride + s * pc.src_sstride + i];
    if (pc.extra_tstride != 0u) f += src[pc.extra_off + t * pc.extra_tstride + i];
    const uint xb = pc.x_off + t * n * d, hb = pc.hc_off + t * (n + n * n);
    float old[4];
    for (uint j = 0u; j < n; j++) old[j] = X[xb + j * d + i];
    for (uint k = 0u; k < n; k++) {
        float v = hc[hb + k] * f;
        for (uint j = 0u; j < n; j++) v += hc[hb + n + j * n + k] * old[j];
        X[xb + k * d + i] = v;
    }
}
