/* What the attention kernels share (attention.glsl, attention_heads.comp): the bindings
 * after the key rows, which keys a token attends to, and the inverse rotation of the
 * output. Include after the ABI_ATTN_FIELDS push block. */
layout(std430, binding = ABI_ATTN_BIND_SEL) readonly buffer sel_buf { int sel[]; };
layout(std430, binding = ABI_ATTN_BIND_SINKS) readonly buffer sinks_buf { float sinks[]; };
layout(std430, binding = ABI_ATTN_BIND_ROPE) readonly buffer rope_buf { vec2 rope[]; };
layout(std430, binding = ABI_ATTN_BIND_O) writeonly buffer o_buf { vec4 o4[]; };
#include "rope.glsl"

/* The keys of the token at position pos (spec §3.9): the window from position first
 * (n_win of them), then n_comp compressed entries (every completed one for HCA, the
 * indexer's selection for CSA). */
void attn_keys(const uint pos, out uint first, out uint n_win, out uint n_comp)
{
    first = pos + 1u > pc.window ? pos + 1u - pc.window : 0u;
    n_win = pos + 1u - first;
    n_comp = 0u;
    if (pc.ratio == 4u) n_comp = min((pos + 1u) / 4u, pc.topk);
    else if (pc.ratio != 0u) n_comp = (pos + 1u) / pc.ratio;
}

/* Float4 i4 of an output row at position pos with the rotation of its rope dims (the last
 * rope_dim, in interleaved pairs) undone: angle -pos*freq (spec §3.10.1). */
vec4 attn_unrope4(vec4 v, const uint i4, const uint pos)
{
    const uint first_rot = pc.head_dim - pc.rope_dim, half_dim = pc.rope_dim / 2u;
    for (uint pr = 0u; pr < 2u; pr++) { /* the two interleaved pairs of this float4 */
        const uint i0 = 4u * i4 + 2u * pr;
        if (i0 < first_rot) continue;
        const vec2 cs = rope_cs(pos, (i0 - first_rot) / 2u, half_dim);
        const float a = v[2u * pr], b = v[2u * pr + 1u];
        v[2u * pr] = a * cs.x + b * cs.y;
        v[2u * pr + 1u] = -a * cs.y + b * cs.x;
    }
    return v;
}
