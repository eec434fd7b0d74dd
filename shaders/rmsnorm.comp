/* RMSNorm of n_rows rows: y = x / sqrt(mean(x^2) + eps) (* w). One workgroup per row; the
 * sum of squares is reduced per subgroup, then across subgroups through shared memory. */
#version 450
#extension GL_GOOGLE_include_directive : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#include "abi.h"

layout(local_size_x = ABI_WG_SIZE, local_size_x_id = ABI_SPEC_WG_SIZE) in; /* see common.glsl */
ABI_PUSH(ABI_RMSNORM_FIELDS)

layout(std430, binding = ABI_RMSNORM_BIND_X) readonly buffer x_buf { float x[]; };
layout(std430, binding = ABI_RMSNORM_BIND_Y) writeonly buffer y_buf { float y[]; };
layout(std430, binding = ABI_RMSNORM_BIND_W) readonly buffer w_buf { float w[]; };

shared float partial[ABI_WG_SIZE];

void main()
{
    const uint row = gl_WorkGroupID.x, tid = gl_LocalInvocationID.x;
    const uint xb = pc.x_off + row * pc.x_stride, yb = pc.y_off + row * pc.y_stride;
    float ss = 0.0;
    for (uint i = tid; i < pc.n; i += gl_WorkGroupSize.x) ss += x[xb + i] * x[xb + i];
    ss = subgroupAdd(ss);
    if (subgroupElect()) partial[gl_SubgroupID] = ss;
    barrier();
    float total = 0.0;
    for (uint s = 0u; s < gl_NumSubgroups; s++) total += partial[s];
    const float inv = 1.0 / sqrt(total / float(pc.n) + pc.eps);
    const bool weighted = (pc.flags & ABI_RMSNORM_FLAG_WEIGHT) != 0u;
    for (uint i = tid; i < pc.n; i += gl_WorkGroupSize.x)
        y[yb + i] = x[xb + i] * inv * (weighted ? w[pc.w_off + i] : 1.0);
}
