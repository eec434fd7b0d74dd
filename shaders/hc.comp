/* Hyper-connections (spec §3.2), one dispatch per site: the previous sublayer's exit
 * (hc_post, ABI_HC_FLAG_POST), then this sublayer's entry: the mixes of the flattened
 * streams, sigmoid gates, Sinkhorn normalisation of comb (all iterations inside this
 * dispatch), the weighted stream sum and the sublayer's RMSNorm. With ABI_HC_FLAG_HEAD it
 * is hc_head (pre gates only) followed by the final norm. */
#version 450
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#include "common.glsl"

ABI_PUSH(ABI_HC_FIELDS)

layout(std430, binding = ABI_HC_BIND_X) coherent buffer x_buf { float X[]; };
layout(std430, binding = ABI_HC_BIND_X) coherent buffer x4_buf { vec4 X4[]; };
layout(std430, binding = ABI_HC_BIND_FN) readonly buffer fn_buf { vec4 fn4[]; };
layout(std430, binding = ABI_HC_BIND_BASE) readonly buffer base_buf { float base_v[]; };
layout(std430, binding = ABI_HC_BIND_SCALE) readonly buffer scale_buf { float scale_v[]; };
layout(std430, binding = ABI_HC_BIND_NORM) readonly buffer norm_buf { float norm_w[]; };
layout(std430, binding = ABI_HC_BIND_Y) buffer y_buf { float y[]; };
layout(std430, binding = ABI_HC_BIND_HC) buffer hc_buf { float hc[]; };
layout(std430, binding = ABI_HC_BIND_SRC) readonly buffer src_buf { float src[]; };

shared float mixes[ABI_HC_MAX_MIX];
/* per subgroup: its sum of squares, then its partial mixes (one barrier for all of them) */
shared float sg_part[ABI_WG_SIZE][1 + ABI_HC_MAX_MIX];
shared float old_hc[4 + 16];
shared float pre_s[4];

void main()
{
    const uint t = gl_WorkGroupID.x, tid = gl_LocalInvocationID.x;
    const uint n = pc.n_hc, d = pc.n_embd, width = n * d;
    const bool head = (pc.flags & ABI_HC_FLAG_HEAD) != 0u;
    const uint n_mix = head ? n : (2u + n) * n;
    const uint xb = pc.x_off + t * width;
    const uint hb = pc.hc_off + t * (n + n * n);

    if ((pc.flags & ABI_HC_FLAG_POST) != 0u) {
        /* the previous sublayer's hc_post; each invocation owns channel i of every stream */
        if (tid == 0u)
            for (uint j = 0u; j < n + n * n; j++) old_hc[j] = hc[hb + j];
        barrier();
        for (uint i = tid; i < d; i += ABI_WG_SIZE) {
            float f = 0.0;
            for (uint s = 0u; s < pc.n_src; s++) f += src[pc.src_off + t * pc.src_tstride + s * pc.src_sstride + i];
            if (pc.extra_tstride != 0u) f += src[pc.extra_off + t * pc.extra_tstride + i];
            float old[4];
            for (uint j = 0u; j < n; j++) old[j] = X[xb + j * d + i];
            for (uint k = 0u; k < n; k++) {
                float v = old_hc[k] * f;
                for (uint j = 0u; j < n; j++) v += old_hc[n + j * n + k] * old[j];
                X[xb + k * d + i] = v;
            }
        }
        memoryBarrierBuffer();
        barrier();
    }

    /* mixes: every invocation accumulates its strided share of all rows at once, reading
     * float4 (n_embd is a multiple of 4, the host checks): on CPU drivers each load is a
     * per-lane loop, so four elements per load matter */
    float acc[ABI_HC_MAX_MIX];
    [[unroll]] for (uint r = 0u; r < ABI_HC_MAX_MIX; r++) acc[r] = 0.0;
    float ss = 0.0;
    const uint width4 = width / 4u;
    for (uint i4 = tid; i4 < width4; i4 += ABI_WG_SIZE) {
        const vec4 xv = X4[xb / 4u + i4];
        ss += dot(xv, xv);
        [[unroll]] for (uint r = 0u; r < ABI_HC_MAX_MIX; r++)
            if (r < n_mix) acc[r] += dot(fn4[r * width4 + i4], xv);
    }
    ss = subgroupAdd(ss);
    [[unroll]] for (uint r = 0u; r < ABI_HC_MAX_MIX; r++) acc[r] = subgroupAdd(acc[r]);
    if (subgroupElect()) {
        sg_part[gl_SubgroupID][0] = ss;
        [[unroll]] for (uint r = 0u; r < ABI_HC_MAX_MIX; r++) sg_part[gl_SubgroupID][1u + r] = acc[r];
    }
    barrier();
    if (tid == 0u) {
        float total_ss = 0.0;
        for (uint g = 0u; g < gl_NumSubgroups; g++) total_ss += sg_part[g][0];
        const float rms = 1.0 / sqrt(total_ss / float(width) + pc.rms_eps);
        for (uint r = 0u; r < n_mix; r++) {
            float m = 0.0;
            for (uint g = 0u; g < gl_NumSubgroups; g++) m += sg_part[g][1u + r];
            mixes[r] = m * rms;
        }
    }
    barrier();

    if (tid == 0u) {
        for (uint j = 0u; j < n; j++) pre_s[j] = sigmoid(mixes[j] * scale_v[0] + base_v[j]) + pc.hc_eps;
        if (!head) {
            for (uint j = 0u; j < n; j++) hc[hb + j] = 2.0 * sigmoid(mixes[n + j] * scale_v[1] + base_v[n + j]);
            float c[16];
            for (uint jk = 0u; jk < n * n; jk++) c[jk] = mixes[2u * n + jk] * scale_v[2] + base_v[2u * n + jk];
            for (uint j = 0u; j < n; j++) { /* row softmax over destinations, + eps */
                float mx = c[j * n];
                for (uint k = 1u; k < n; k++) mx = max(mx, c[j * n + k]);
                float s = 0.0;
                for (uint k = 0u; k < n; k++) s += exp(c[j * n + k] - mx);
                for (uint k = 0u; k < n; k++) c[j * n + k] = exp(c[j * n + k] - mx) / s + pc.hc_eps;
            }
            for (uint it = 0u; it < pc.sinkhorn_iters; it++) {
                if (it > 0u)
                    for (uint j = 0u; j < n; j++) {
                        float s = 0.0;
                        for (uint k = 0u; k < n; k++) s += c[j * n + k];
                        for (uint k = 0u; k < n; k++) c[j * n + k] /= s + pc.hc_eps;
                    }
                for (uint k = 0u; k < n; k++) {
                    float s = 0.0;
                    for (uint j = 0u; j < n; j++) s += c[j * n + k];
                    for (uint j = 0u; j < n; j++) c[j * n + k] /= s + pc.hc_eps;
                }
            }
            for (uint jk = 0u; jk < n * n; jk++) hc[hb + n + jk] = c[jk];
        }
    }
    barrier();

    /* y = sum_j pre_j X_j, then RMSNorm with the sublayer's weight */
    const uint yb = pc.y_off + t * d;
    float ss2 = 0.0;
    for (uint i = tid; i < d; i += ABI_WG_SIZE) {
        float v = 0.0;
        for (uint j = 0u; j < n; j++) v += pre_s[j] * X[xb + j * d + i];
        y[yb + i] = v;
        ss2 += v * v;
    }
    const float inv = 1.0 / sqrt(wg_sum(ss2) / float(d) + pc.rms_eps);
    for (uint i = tid; i < d; i += ABI_WG_SIZE) y[yb + i] = y[yb + i] * inv * norm_w[i];
}
