/* Sparse attention of one head for one token (spec §3.9): keys are the sliding window (a
 * ring of ring_len rows) plus compressed entries (every completed one for HCA, the
 * indexer's selection for CSA); value = key; a per-head sink joins the softmax; the output
 * gets the inverse rotation of its rope dims (§3.10.1).
 *
 * Rows are read as float4 (head_dim and every row offset are multiples of 4; the host
 * checks): one load per four elements matters on CPU drivers, where each load is a
 * per-lane loop. Keys go in chunks (abi.h, ABI_ATTN_CHUNK): each key's row offset is found
 * once (a CSA key needs the indexer's selection) and kept in shared memory with its
 * probability; the chunk's partial softmax is folded into a running maximum, denominator
 * and output, so the number of keys is unbounded. q stays in registers.
 *
 * Included by attention.comp (rows through storage buffers) and attention_texel.comp
 * (ATTN_TEXELS: q and the key rows through float4 texel views of their whole chunk, for
 * CPU drivers, where a texel fetch is a plain gather and a storage load a per-lane loop;
 * the host adds each span's place in its chunk to q_off, ring_off and comp_off). */
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#include "common.glsl"

ABI_PUSH(ABI_ATTN_FIELDS)

#ifdef ATTN_TEXELS
layout(binding = ABI_ATTN_BIND_Q) uniform samplerBuffer q_tex;
layout(binding = ABI_ATTN_BIND_RING) uniform samplerBuffer ring_tex;
layout(binding = ABI_ATTN_BIND_COMP) uniform samplerBuffer comp_tex;
#define Q4(i) texelFetch(q_tex, int(i))
#define RING4(i) texelFetch(ring_tex, int(i))
#define COMP4(i) texelFetch(comp_tex, int(i))
#else
layout(std430, binding = ABI_ATTN_BIND_Q) readonly buffer q_buf { vec4 q4[]; };
layout(std430, binding = ABI_ATTN_BIND_RING) readonly buffer ring_buf { vec4 ring4[]; };
layout(std430, binding = ABI_ATTN_BIND_COMP) readonly buffer comp_buf { vec4 comp4[]; };
layout(std430, binding = ABI_ATTN_BIND_COMP) readonly buffer compw_buf { uint compw[]; }; /* the same, as stored */
#define Q4(i) q4[i]
#define RING4(i) ring4[i]
#define COMP4(i) comp4[i]
#define KV_WORD(i) compw[i]
#endif
#include "kv.glsl"
#include "attention_common.glsl"

shared float att[ABI_ATTN_CHUNK];    /* one chunk's scores, then its probabilities */
shared uint key_row[ABI_ATTN_CHUNK]; /* float4 index of the key's row (a stored entry's first
                                      * word when kv is not f32); top bit: compressed */

#define COMP_BIT 0x80000000u
/* float4 of a head row held per lane (q) and per invocation (output). The host sets q's
 * to ABI_ATTN_MAX_HEAD_DIM / 4 over its subgroup size (vk_ops.c): 4 on a GPU of 32 lanes,
 * where the default, enough for 4 lanes, would hold 128 registers a lane for q alone.
 * The output's two are enough for ABI_ATTN_MAX_HEAD_DIM with workgroups of ABI_WG_SIZE. */
layout(constant_id = ABI_SPEC_ATTN_KV4) const uint Q_VEC4_PER_LANE = ABI_ATTN_MAX_HEAD_DIM / 16;
#define O_VEC4_PER_INVOCATION 2u

vec4 key4(uint kr, uint i4)
{
    if ((kr & COMP_BIT) == 0u) return RING4(kr + i4);
#ifndef ATTN_TEXELS
    if (pc.kv != ABI_KV_F32) return kv_load4(pc.kv, kr & ~COMP_BIT, i4, pc.head_dim);
#endif
    return COMP4((kr & ~COMP_BIT) + i4);
}

void main()
{
    const uint h = gl_WorkGroupID.x, t = gl_WorkGroupID.y, tid = gl_LocalInvocationID.x;
    const uint hd4 = pc.head_dim / 4u, pos = pc.pos0 + t;
    uint first, n_win, n_comp;
    attn_keys(pos, first, n_win, n_comp);
    const uint n_keys = n_win + n_comp;
    const uint chunk = pc.chunk == 0u ? ABI_ATTN_CHUNK : min(pc.chunk, ABI_ATTN_CHUNK);

    const uint lane = gl_SubgroupInvocationID, sg = gl_SubgroupSize;
    const uint qb4 = (pc.q_off + (t * pc.n_head + h) * pc.head_dim) / 4u;
    vec4 qr[Q_VEC4_PER_LANE];
    [[unroll]] for (uint m = 0u; m < Q_VEC4_PER_LANE; m++) {
        const uint i4 = lane + m * sg;
        qr[m] = i4 < hd4 ? Q4(qb4 + i4) : vec4(0.0);
    }
    /* the running softmax: maximum from the sink's logit, which joins the denominator with
     * no value; invocation tid owns float4 tid, tid + WG, ... of the output row */
    float run_max = sinks[pc.sinks_off + h], run_den = 1.0;
    vec4 acc[O_VEC4_PER_INVOCATION];
    [[unroll]] for (uint r = 0u; r < O_VEC4_PER_INVOCATION; r++) acc[r] = vec4(0.0);

    for (uint c0 = 0u; c0 < n_keys; c0 += chunk) {
        const uint nk = min(chunk, n_keys - c0);
        for (uint jj = tid; jj < nk; jj += ABI_WG_SIZE) {
            const uint j = c0 + jj;
            if (j < n_win) {
                key_row[jj] = (pc.ring_off + ((first + j) % pc.ring_len) * pc.head_dim) / 4u;
            } else {
                const uint c = j - n_win;
                const uint e = pc.ratio == 4u ? uint(sel[pc.sel_off + t * pc.topk + c]) : c;
                key_row[jj] = (pc.kv == ABI_KV_F32 ? (pc.comp_off + e * pc.head_dim) / 4u : pc.comp_off + e * pc.comp_words) |
                              COMP_BIT;
            }
        }
        barrier();

        /* scores: one subgroup per key, lanes across the row's float4 */
        for (uint jj = gl_SubgroupID; jj < nk; jj += gl_NumSubgroups) {
            const uint kr = key_row[jj];
            float dot_sum = 0.0;
            [[unroll]] for (uint m = 0u; m < Q_VEC4_PER_LANE; m++) {
                if (m * sg >= hd4) break;
                const uint i4 = lane + m * sg;
                if (i4 < hd4) dot_sum += dot(qr[m], key4(kr, i4));
            }
            dot_sum = subgroupAdd(dot_sum);
            if (subgroupElect()) att[jj] = dot_sum * pc.scale;
        }
        barrier();

        /* the chunk's partial softmax against the new running maximum */
        float mx = run_max;
        for (uint jj = tid; jj < nk; jj += ABI_WG_SIZE) mx = max(mx, att[jj]);
        mx = wg_max(mx);
        float sum = 0.0;
        for (uint jj = tid; jj < nk; jj += ABI_WG_SIZE) {
            const float p = exp(att[jj] - mx);
            att[jj] = p;
            sum += p;
        }
        sum = wg_sum(sum);
        barrier();

        /* fold it into the running state: rescale, then add the chunk's weighted values */
        const float corr = exp(run_max - mx);
        run_max = mx;
        run_den = run_den * corr + sum;
        [[unroll]] for (uint r = 0u; r < O_VEC4_PER_INVOCATION; r++) acc[r] *= corr;
        for (uint jj = 0u; jj < nk; jj++) {
            const float p = att[jj];
            const uint kr = key_row[jj];
            [[unroll]] for (uint r = 0u; r < O_VEC4_PER_INVOCATION; r++) {
                const uint i4 = tid + r * ABI_WG_SIZE;
                if (i4 < hd4) acc[r] += p * key4(kr, i4);
            }
        }
        barrier(); /* the next chunk overwrites key_row and att */
    }
    const uint ob4 = (pc.o_off + (t * pc.n_head + h) * pc.head_dim) / 4u;
    [[unroll]] for (uint r = 0u; r < O_VEC4_PER_INVOCATION; r++) {
        const uint i4 = tid + r * ABI_WG_SIZE;
        if (i4 < hd4) o4[ob4 + i4] = attn_unrope4(acc[r] / run_den, i4, pos);
    }
}
