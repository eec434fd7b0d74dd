/* The lightning indexer of CSA layers (spec §3.8), first stage: one workgroup per chunk of
 * pc.chunk visible compressed entries of one token (dispatch (chunks, n_tok)). It scores
 * the chunk's entries, sorts them in shared memory by descending score, ties to the lower
 * index (a bitonic sort of (order key, index) pairs), and keeps the first min(topk, its
 * entries): as the token's selection when one chunk holds every visible entry
 * (ABI_INDEXER_FLAG_FINAL), else as a sorted list that indexer_merge.comp merges with the
 * other chunks' lists.
 *
 * No loop of an invocation grows with the context: CPU Vulkan drivers stop a shader's loops
 * after a fixed number of passes in all and then answer wrong (engine/vulkan/vk_forward.c),
 * so the entries are spread over workgroups, each bounded by the chunk, and the lists over
 * merge levels. The selection is the exact top-k under one total order, so it is the same
 * bits whatever the chunk, the merge width, or the tokens batched beside it.
 *
 * Included by indexer.comp (q and the keys through storage buffers, any storage type) and
 * indexer_texel.comp (INDEXER_TEXELS: q and float32 keys through float4 texel views of
 * their whole chunk, for CPU drivers, where a texel fetch is a plain gather and a storage
 * load a per-lane loop; the host adds each span's place in its chunk to q_off and
 * keys_off). Both sum a head's products one at a time in index order: the same bits. */
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#include "common.glsl" /* the row kernels' workgroup layout */

ABI_PUSH(ABI_INDEXER_FIELDS)

#ifdef INDEXER_TEXELS
layout(binding = ABI_INDEXER_BIND_Q) uniform samplerBuffer q_tex;
layout(binding = ABI_INDEXER_BIND_KEYS) uniform samplerBuffer k_tex; /* float32 keys only */
#else
layout(std430, binding = ABI_INDEXER_BIND_Q) readonly buffer q_buf { float q[]; };
layout(std430, binding = ABI_INDEXER_BIND_KEYS) readonly buffer k_buf { uint keys[]; }; /* as stored (kv.glsl) */
#define KV_WORD(i) keys[i]
#endif
layout(std430, binding = ABI_INDEXER_BIND_W) readonly buffer w_buf { float hw[]; };
layout(std430, binding = ABI_INDEXER_BIND_LISTS) writeonly buffer l_buf { uvec2 lists[]; };
layout(std430, binding = ABI_INDEXER_BIND_SEL) writeonly buffer sel_buf { int sel[]; };
#include "kv.glsl"
#include "indexer_order.glsl"

shared uvec2 ent[ABI_INDEXER_MAX_CHUNK]; /* the chunk's (order key, index), then sorted */

/* Score of entry b for token t: sum over heads of w_h * scale * relu(q_h . k_b). */
float entry_score(const uint t, const uint b)
{
    const uint H = pc.n_head, D = pc.dim, qb = pc.q_off + t * H * D, kb = pc.keys_off + b * pc.key_words;
    float s = 0.0;
    for (uint h = 0u; h < H; h++) {
        float dot = 0.0;
        /* sixteen products a loop pass, summed in order (the same sums as one at a time):
         * CPU drivers count loop passes against their limit, and unrolled ones are not
         * passes */
        uint i = 0u;
#ifdef INDEXER_TEXELS
        /* dim a multiple of 4 and both offsets float4-aligned (the host checks) */
        const uint qb4 = (qb + h * D) / 4u, kb4 = kb / 4u;
        for (; i + 16u <= D; i += 16u)
            [[unroll]] for (uint j = 0u; j < 4u; j++) {
                const vec4 q4 = texelFetch(q_tex, int(qb4 + i / 4u + j)), k4 = texelFetch(k_tex, int(kb4 + i / 4u + j));
                [[unroll]] for (uint c = 0u; c < 4u; c++) dot += q4[c] * k4[c];
            }
        for (; i < D; i += 4u) {
            const vec4 q4 = texelFetch(q_tex, int(qb4 + i / 4u)), k4 = texelFetch(k_tex, int(kb4 + i / 4u));
            [[unroll]] for (uint c = 0u; c < 4u; c++) dot += q4[c] * k4[c];
        }
#else
        if (pc.kv == ABI_KV_F32) {
            for (; i + 16u <= D; i += 16u)
                [[unroll]] for (uint c = 0u; c < 16u; c++) dot += q[qb + h * D + i + c] * uintBitsToFloat(keys[kb + i + c]);
            for (; i < D; i++) dot += q[qb + h * D + i] * uintBitsToFloat(keys[kb + i]);
        } else { /* unpacked four at a time */
            for (; i + 16u <= D; i += 16u)
                [[unroll]] for (uint j = 0u; j < 4u; j++) {
                    const vec4 k4 = kv_load4(pc.kv, kb, i / 4u + j, D);
                    [[unroll]] for (uint c = 0u; c < 4u; c++) dot += q[qb + h * D + i + 4u * j + c] * k4[c];
                }
            for (; i < D; i += 4u) {
                const vec4 k4 = kv_load4(pc.kv, kb, i / 4u, D);
                [[unroll]] for (uint c = 0u; c < 4u; c++) dot += q[qb + h * D + i + c] * k4[c];
            }
        }
#endif
        s += hw[pc.w_off + t * pc.w_tstride + h] * pc.scale * max(dot, 0.0);
    }
    return s;
}

void main()
{
    const uint j = gl_WorkGroupID.x, t = gl_WorkGroupID.y, tid = gl_LocalInvocationID.x, wg = gl_WorkGroupSize.x;
    const uint n_vis = (pc.pos0 + t + 1u) / 4u, C = pc.chunk, c0 = j * C;
    if (c0 >= n_vis || pc.topk == 0u) return; /* uniform: the whole workgroup leaves */

    /* past the last visible entry: key 0 and the largest index, after every real entry */
    for (uint i = tid; i < C; i += wg) {
        const uint b = c0 + i;
        ent[i] = b < n_vis ? uvec2(order_key(entry_score(t, b)), b) : uvec2(0u, 0xffffffffu);
    }
    barrier();
    /* bitonic sort of C (a power of two) pairs into ix_before order: blocks of `size`
     * alternate direction until the last, whose compare-exchanges run `half` apart */
    for (uint size = 2u; size <= C; size <<= 1u) {
        for (uint half_ = size >> 1u; half_ > 0u; half_ >>= 1u) {
            for (uint i = tid; i < C / 2u; i += wg) {
                const uint lo = 2u * i - (i & (half_ - 1u)), hi = lo + half_;
                const uvec2 a = ent[lo], b = ent[hi];
                if (ix_before(b, a) == ((lo & size) == 0u)) {
                    ent[lo] = b;
                    ent[hi] = a;
                }
            }
            barrier();
        }
    }
    const uint len = min(pc.topk, min(C, n_vis - c0));
    for (uint i = tid; i < len; i += wg) {
        if ((pc.flags & ABI_INDEXER_FLAG_FINAL) != 0u) sel[pc.sel_off + t * pc.topk + i] = int(ent[i].y);
        else lists[pc.list_off + t * pc.list_tstride + j * min(pc.topk, C) + i] = ent[i];
    }
}
