/* The MoE router (spec §3.11) for one token per workgroup: sqrt(softplus(logit)) scores,
 * the experts from the token's tid2eid row (hash layers) or the top-k of score + bias
 * (ties to the lower index), then weights from the unbiased scores, renormalised and
 * scaled. One invocation does the selection: k and n_expert are small. */
#version 450
#extension GL_GOOGLE_include_directive : require
#include "common.glsl" /* the row kernels' workgroup layout */

ABI_PUSH(ABI_ROUTER_FIELDS)

layout(std430, binding = ABI_ROUTER_BIND_LOGITS) buffer l_buf { float logits[]; };
layout(std430, binding = ABI_ROUTER_BIND_BIAS) readonly buffer b_buf { float bias[]; };
layout(std430, binding = ABI_ROUTER_BIND_TOKENS) readonly buffer t_buf { int tokens[]; };
layout(std430, binding = ABI_ROUTER_BIND_IDS) writeonly buffer i_buf { int ids[]; };
layout(std430, binding = ABI_ROUTER_BIND_WEIGHTS) writeonly buffer w_buf { float weights[]; };

float softplus(float x) { return max(x, 0.0) + log(1.0 + exp(-abs(x))); }

void main()
{
    const uint t = gl_WorkGroupID.x, tid = gl_LocalInvocationID.x;
    const uint E = pc.n_expert, K = pc.k, lb = pc.logits_off + t * pc.logits_tstride;
    for (uint e = tid; e < E; e += gl_WorkGroupSize.x) logits[lb + e] = sqrt(softplus(logits[lb + e]));
    memoryBarrierBuffer();
    barrier();
    if (tid != 0u) return;
    int idx[ABI_ROUTER_MAX_K];
    if ((pc.flags & ABI_ROUTER_FLAG_HASH) != 0u) {
        const uint tok = uint(tokens[pc.tokens_off + t]);
        for (uint k = 0u; k < K; k++) idx[k] = floatBitsToInt(bias[pc.bias_off + tok * K + k]);
    } else {
        for (uint k = 0u; k < K; k++) {
            int best = -1;
            float best_v = 0.0;
            for (uint e = 0u; e < E; e++) {
                bool taken = false;
                for (uint q = 0u; q < k; q++) taken = taken || idx[q] == int(e);
                if (taken) continue;
                const float v = logits[lb + e] + bias[pc.bias_off + e];
                if (best < 0 || v > best_v) { best = int(e); best_v = v; }
            }
            idx[k] = best;
        }
    }
    float sum = 0.0;
    for (uint k = 0u; k < K; k++) sum += logits[lb + uint(idx[k])];
    for (uint k = 0u; k < K; k++) {
        float wgt = logits[lb + uint(idx[k])];
        if ((pc.flags & ABI_ROUTER_FLAG_NORM) != 0u) wgt /= sum;
        ids[pc.ids_off + t * K + k] = idx[k];
        weights[pc.weights_off + t * K + k] = wgt * pc.scale;
    }
}
