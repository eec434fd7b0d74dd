/* The KV compressor's state machine (spec §3.7) for a batch of tokens, one invocation per
 * output channel i: it owns columns i (and width + i for the overlapping ratio-4 kind) of
 * every state row, so tokens are processed in order without any synchronisation. A token
 * that completes a block pools the block per channel (softmax of the scores over the rows,
 * weighted sum of the kv values) into the raw entry; norm_rope finishes it. */
#version 450
#extension GL_GOOGLE_include_directive : require
#include "abi.h"

layout(local_size_x = ABI_WG_SIZE) in;
ABI_PUSH(ABI_COMPRESS_FIELDS)

layout(std430, binding = ABI_COMPRESS_BIND_KV) readonly buffer kv_buf { float kv_in[]; };
layout(std430, binding = ABI_COMPRESS_BIND_SCORE) readonly buffer score_buf { float score_in[]; };
layout(std430, binding = ABI_COMPRESS_BIND_APE) readonly buffer ape_buf { float ape[]; };
layout(std430, binding = ABI_COMPRESS_BIND_STATE) buffer state_buf { float st[]; };
layout(std430, binding = ABI_COMPRESS_BIND_OUT) writeonly buffer out_buf { float entries[]; };

void main()
{
    const uint i = gl_GlobalInvocationID.x;
    const uint w = pc.width, m = pc.ratio, coff = pc.coff, cw = coff * w;
    if (i >= w) return;
    const uint n_rows = coff == 2u ? 2u * m : m;
    const uint kv0 = pc.state_off, sc0 = pc.state_off + n_rows * cw; /* kv rows, then score rows */
    for (uint t = 0u; t < pc.n_tok; t++) {
        const uint pos = pc.pos0 + t, in_block = pos % m;
        const uint row = (coff == 2u ? m : 0u) + in_block;
        for (uint c = 0u; c < coff; c++) {
            const uint col = c * w + i;
            st[kv0 + row * cw + col] = kv_in[pc.kv_off + t * pc.in_tstride + col];
            st[sc0 + row * cw + col] = score_in[pc.score_off + t * pc.in_tstride + col] + ape[pc.ape_off + in_block * cw + col];
        }
        if (in_block != m - 1u) continue;
        float mx = -1.0 / 0.0;
        for (uint r = 0u; r < n_rows; r++) {
            const uint col = coff == 2u && r >= m ? w + i : i;
            mx = max(mx, st[sc0 + r * cw + col]);
        }
        float num = 0.0, den = 0.0;
        for (uint r = 0u; r < n_rows; r++) {
            const uint col = coff == 2u && r >= m ? w + i : i;
            const float e = exp(st[sc0 + r * cw + col] - mx);
            num += e * st[kv0 + r * cw + col];
            den += e;
        }
        entries[pc.out_off + (pos / m - pc.out_row0) * w + i] = num / den;
        if (coff == 2u) /* the current block becomes the previous one */
            for (uint r = 0u; r < m; r++)
                for (uint c = 0u; c < 2u; c++) {
                    const uint col = c * w + i;
                    st[kv0 + r * cw + col] = st[kv0 + (m + r) * cw + col];
                    st[sc0 + r * cw + col] = st[sc0 + (m + r) * cw + col];
                }
    }
}
