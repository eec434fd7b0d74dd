/* Hyper-connections (spec §3.2), one dispatch per site (decode): the previous sublayer's
 * exit (hc_post, ABI_HC_FLAG_POST), then this sublayer's entry: the mixes of the flattened
 * streams, sigmoid gates, Sinkhorn normalisation of comb (all iterations inside this
 * dispatch), the weighted stream sum and the sublayer's RMSNorm. With ABI_HC_FLAG_HEAD it
 * is hc_head (pre gates only) followed by the final norm. Prefill batches split a site in
 * three (ABI_HC_FLAG_MIXES_GIVEN in abi.h): hc_post alone, the mixes as a matmul, then the
 * rest here.
 *
 * Included by hc.comp (storage buffers) and hc_texel.comp (HC_TEXELS: X and the sources
 * read through float4 texel views, a gather where a storage load is a per-lane loop on CPU
 * drivers; only for prefill's POST_ONLY and MIXES_GIVEN dispatches, whose reads of X see
 * it as it was when the dispatch began). */
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#include "common.glsl"

ABI_PUSH(ABI_HC_FIELDS)

layout(std430, binding = ABI_HC_BIND_X) coherent buffer x4_buf { vec4 X4[]; };
layout(std430, binding = ABI_HC_BIND_FN) readonly buffer fn_buf { vec4 fn4[]; };
layout(std430, binding = ABI_HC_BIND_FN) readonly buffer mix_buf { float mix_in[]; }; /* ABI_HC_FLAG_MIXES_GIVEN */
layout(std430, binding = ABI_HC_BIND_BASE) readonly buffer base_buf { float base_v[]; };
layout(std430, binding = ABI_HC_BIND_SCALE) readonly buffer scale_buf { float scale_v[]; };
layout(std430, binding = ABI_HC_BIND_NORM) readonly buffer norm_buf { float norm_w[]; };
layout(std430, binding = ABI_HC_BIND_Y) buffer y_buf { vec4 y4[]; };
layout(std430, binding = ABI_HC_BIND_HC) buffer hc_buf { float hc[]; };
layout(std430, binding = ABI_HC_BIND_SRC) readonly buffer src_buf { vec4 src4[]; };
#ifdef HC_TEXELS
layout(binding = ABI_HC_BIND_X_TEX) uniform samplerBuffer x_tex;
layout(binding = ABI_HC_BIND_SRC_TEX) uniform samplerBuffer src_tex;
#define X_READ(i4) texelFetch(x_tex, int(pc.x_tex_off / 4u + (i4)))
#define SRC_READ(i4) texelFetch(src_tex, int(pc.src_tex_off / 4u + (i4)))
#else
#define X_READ(i4) X4[i4]
#define SRC_READ(i4) src4[i4]
#endif

shared float mixes[ABI_HC_MAX_MIX];
/* per subgroup: its sum of squares, then its partial mixes (one barrier for all of them) */
shared float sg_part[ABI_WG_SIZE][1 + ABI_HC_MAX_MIX];
shared float old_hc[ABI_HC_MAX_STREAMS + ABI_HC_MAX_STREAMS * ABI_HC_MAX_STREAMS];
shared float pre_s[ABI_HC_MAX_STREAMS];

void main()
{
    const uint t = gl_WorkGroupID.x, tid = gl_LocalInvocationID.x;
    const uint n = pc.n_hc, d = pc.n_embd, width = n * d;
    const bool head = (pc.flags & ABI_HC_FLAG_HEAD) != 0u;
    const uint n_mix = head ? n : (2u + n) * n;
    const uint xb = pc.x_off + t * width;
    const uint hb = pc.hc_off + t * (n + n * n);

    if ((pc.flags & ABI_HC_FLAG_POST) != 0u) {
        /* the previous sublayer's hc_post; each invocation owns float4 i4 of every stream
         * (every offset here is a multiple of 4 floats, as n_embd is: the host checks) */
        if (tid == 0u)
            for (uint j = 0u; j < n + n * n; j++) old_hc[j] = hc[hb + j];
        barrier();
        /* the coefficients into registers (constant indices after unrolling): inside the
         * loop each shared-memory read is a per-lane loop on CPU drivers */
        float post_w[ABI_HC_MAX_STREAMS], comb[ABI_HC_MAX_STREAMS * ABI_HC_MAX_STREAMS];
        [[unroll]] for (uint k = 0u; k < ABI_HC_MAX_STREAMS; k++) {
            post_w[k] = k < n ? old_hc[k] : 0.0;
            [[unroll]] for (uint j = 0u; j < ABI_HC_MAX_STREAMS; j++)
                comb[j * ABI_HC_MAX_STREAMS + k] = j < n && k < n ? old_hc[n + j * n + k] : 0.0;
        }
        const uint d4 = d / 4u, xb4 = xb / 4u;
        for (uint i4 = tid; i4 < d4; i4 += gl_WorkGroupSize.x) {
            vec4 f = vec4(0.0);
            for (uint s = 0u; s < pc.n_src; s++) f += SRC_READ((pc.src_off + t * pc.src_tstride + s * pc.src_sstride) / 4u + i4);
            if (pc.extra_tstride != 0u) f += SRC_READ((pc.extra_off + t * pc.extra_tstride) / 4u + i4);
            vec4 old[ABI_HC_MAX_STREAMS];
            [[unroll]] for (uint j = 0u; j < ABI_HC_MAX_STREAMS; j++) old[j] = j < n ? X_READ(xb4 + j * d4 + i4) : vec4(0.0);
            [[unroll]] for (uint k = 0u; k < ABI_HC_MAX_STREAMS; k++) {
                if (k >= n) break;
                vec4 v = post_w[k] * f;
                [[unroll]] for (uint j = 0u; j < ABI_HC_MAX_STREAMS; j++) v += comb[j * ABI_HC_MAX_STREAMS + k] * old[j];
                X4[xb4 + k * d4 + i4] = v;
            }
        }
        if ((pc.flags & ABI_HC_FLAG_POST_ONLY) != 0u) return;
        memoryBarrierBuffer();
        barrier();
    }
#ifdef HC_TEXELS
    /* the texel variant runs only prefill's POST_ONLY and MIXES_GIVEN dispatches, so the
     * mixes are always given: as a constant the fn product below compiles away, where a
     * test of the flag left it running masked on lavapipe (which runs a branch on a
     * uniform value with the lanes masked off instead of jumping over it) */
    const bool given = true;
#else
    const bool given = (pc.flags & ABI_HC_FLAG_MIXES_GIVEN) != 0u;
#endif

    /* mixes: every invocation accumulates its strided share of all rows at once, reading
     * float4 (n_embd is a multiple of 4, the host checks): on CPU drivers each load is a
     * per-lane loop, so four elements per load matter */
    float acc[ABI_HC_MAX_MIX];
    [[unroll]] for (uint r = 0u; r < ABI_HC_MAX_MIX; r++) acc[r] = 0.0;
    float ss = 0.0;
    const uint width4 = width / 4u;
    for (uint i4 = tid; i4 < width4; i4 += gl_WorkGroupSize.x) {
        const vec4 xv = X_READ(xb / 4u + i4);
        ss += dot(xv, xv);
        if (given) continue;
        [[unroll]] for (uint r = 0u; r < ABI_HC_MAX_MIX; r++)
            if (r < n_mix) acc[r] += dot(fn4[r * width4 + i4], xv);
    }
    ss = subgroupAdd(ss);
    if (!given) /* a subgroup reduction is far from free on CPU drivers: skip the unused 24 */
        [[unroll]] for (uint r = 0u; r < ABI_HC_MAX_MIX; r++) acc[r] = subgroupAdd(acc[r]);
    if (subgroupElect()) {
        sg_part[gl_SubgroupID][0] = ss;
        if (!given)
            [[unroll]] for (uint r = 0u; r < ABI_HC_MAX_MIX; r++) sg_part[gl_SubgroupID][1u + r] = acc[r];
    }
    barrier();
    if (tid == 0u) {
        float total_ss = 0.0;
        for (uint g = 0u; g < gl_NumSubgroups; g++) total_ss += sg_part[g][0];
        const float rms = 1.0 / sqrt(total_ss / float(width) + pc.rms_eps);
        for (uint r = 0u; r < n_mix; r++) {
            float m = 0.0;
            if (given)
                for (uint part = 0u; part < max(pc.mix_parts, 1u); part++)
                    m += mix_in[pc.mix_off + t * pc.mix_tstride + part * n_mix + r];
            else
                for (uint g = 0u; g < gl_NumSubgroups; g++) m += sg_part[g][1u + r];
            mixes[r] = m * rms;
        }
    }
    barrier();

    if (tid == 0u) {
        for (uint j = 0u; j < n; j++) pre_s[j] = sigmoid(mixes[j] * scale_v[0] + base_v[j]) + pc.hc_eps;
        if (!head) {
            for (uint j = 0u; j < n; j++) hc[hb + j] = 2.0 * sigmoid(mixes[n + j] * scale_v[1] + base_v[n + j]);
            /* comb[j][k] in rows of ABI_HC_MAX_STREAMS and loops unrolled to that bound, so
             * every index is a constant (a register), not a per-lane array access */
#define M ABI_HC_MAX_STREAMS
            float c[M * M];
            [[unroll]] for (uint j = 0u; j < M; j++)
                [[unroll]] for (uint k = 0u; k < M; k++)
                    c[j * M + k] = j < n && k < n ? mixes[2u * n + j * n + k] * scale_v[2] + base_v[2u * n + j * n + k] : 0.0;
            [[unroll]] for (uint j = 0u; j < M; j++) { /* row softmax over destinations, + eps */
                if (j >= n) break;
                float mx = c[j * M];
                [[unroll]] for (uint k = 1u; k < M; k++) if (k < n) mx = max(mx, c[j * M + k]);
                float s = 0.0;
                [[unroll]] for (uint k = 0u; k < M; k++) if (k < n) s += exp(c[j * M + k] - mx);
                [[unroll]] for (uint k = 0u; k < M; k++) if (k < n) c[j * M + k] = exp(c[j * M + k] - mx) / s + pc.hc_eps;
            }
            for (uint it = 0u; it < pc.sinkhorn_iters; it++) {
                if (it > 0u)
                    [[unroll]] for (uint j = 0u; j < M; j++) {
                        float s = 0.0;
                        [[unroll]] for (uint k = 0u; k < M; k++) if (k < n) s += c[j * M + k];
                        [[unroll]] for (uint k = 0u; k < M; k++) c[j * M + k] /= s + pc.hc_eps;
                    }
                [[unroll]] for (uint k = 0u; k < M; k++) {
                    float s = 0.0;
                    [[unroll]] for (uint j = 0u; j < M; j++) if (j < n) s += c[j * M + k];
                    [[unroll]] for (uint j = 0u; j < M; j++) c[j * M + k] /= s + pc.hc_eps;
                }
            }
            [[unroll]] for (uint j = 0u; j < M; j++)
                [[unroll]] for (uint k = 0u; k < M; k++)
                    if (j < n && k < n) hc[hb + n + j * n + k] = c[j * M + k];
#undef M
        }
    }
    barrier();

    /* y = sum_j pre_j X_j, then RMSNorm with the sublayer's weight */
    const uint d4 = d / 4u, xb4 = xb / 4u, yb4 = (pc.y_off + t * d) / 4u;
    float pre[ABI_HC_MAX_STREAMS]; /* in registers, as post_w above */
    [[unroll]] for (uint j = 0u; j < ABI_HC_MAX_STREAMS; j++) pre[j] = j < n ? pre_s[j] : 0.0;
    float ss2 = 0.0;
    for (uint i4 = tid; i4 < d4; i4 += gl_WorkGroupSize.x) {
        vec4 v = vec4(0.0);
        [[unroll]] for (uint j = 0u; j < ABI_HC_MAX_STREAMS; j++)
            if (j < n) v += pre[j] * X_READ(xb4 + j * d4 + i4);
        y4[yb4 + i4] = v;
        ss2 += dot(v, v);
    }
    const float inv = 1.0 / sqrt(wg_sum(ss2) / float(d) + pc.rms_eps);
    for (uint i4 = tid; i4 < d4; i4 += gl_WorkGroupSize.x)
        y4[yb4 + i4] *= inv * vec4(norm_w[4u * i4], norm_w[4u * i4 + 1u], norm_w[4u * i4 + 2u], norm_w[4u * i4 + 3u]);
}
