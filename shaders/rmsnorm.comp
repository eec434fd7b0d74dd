/* RMSNorm of n_rows rows: y = x / sqrt(mean(x^2) + eps) (* w). One workgroup per row; the
 * sum of squares through wg_sum (common.glsl). */
#version 450
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

ABI_PUSH(ABI_RMSNORM_FIELDS)

layout(std430, binding = ABI_RMSNORM_BIND_X) readonly buffer x_buf { float x[]; };
layout(std430, binding = ABI_RMSNORM_BIND_Y) writeonly buffer y_buf { float y[]; };
layout(std430, binding = ABI_RMSNORM_BIND_W) readonly buffer w_buf { float w[]; };

void main()
{
    const uint row = gl_WorkGroupID.x, tid = gl_LocalInvocationID.x;
    const uint xb = pc.x_off + row * pc.x_stride, yb = pc.y_off + row * pc.y_stride;
    float ss = 0.0;
    for (uint i = tid; i < pc.n; i += gl_WorkGroupSize.x) ss += x[xb + i] * x[xb + i];
    const float inv = 1.0 / sqrt(wg_sum(ss) / float(pc.n) + pc.eps);
    const bool weighted = (pc.flags & ABI_RMSNORM_FLAG_WEIGHT) != 0u;
    for (uint i = tid; i < pc.n; i += gl_WorkGroupSize.x)
        y[yb + i] = x[xb + i] * inv * (weighted ? w[pc.w_off + i] : 1.0);
}
