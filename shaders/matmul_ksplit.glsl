/* Matrix-matrix product (prefill token tiles) for CPU drivers over the block types, K split
 * across the lanes of a subgroup. Included by matmul_ksplit_<type>.comp with W_TYPE
 * defined; same ABI and slot logic as matvec.glsl (through matvec_main.glsl).
 *
 * Why not one row per lane as in matvec_lanes.glsl: with a row per lane, every row's
 * partial sums for the tile go to y after each short step of K, and on lavapipe a store or
 * load whose address differs per lane is a loop over the lanes with bounds checks. That
 * read-modify-write was 35-40% of the Q8_0 tile. Here the lanes of a subgroup share each
 * row: lane l takes units l, l + SG, ... of a pass over K (a unit is 64 elements: two
 * blocks), so the x it needs for the whole pass is its own (no copy of x per lane) and is
 * fetched once for all of the workgroup's rows. A row's sums are reduced across the lanes
 * (lanes_sum), lane j of each group of SG rows keeps row j's, and the group's y is
 * written once per pass: one lane loop per token for SG rows.
 *
 * Requires n_in a multiple of 64, the matrices on 4 bytes and x vectors on 16
 * (vk_matvec_uses_lanes and ksplit_units in engine/vk_ops.c check); lanes past the last
 * unit read x as zero. Q8_0 units are 17 whole words. An MXFP4 unit is 34 bytes, so every
 * other one starts 2 bytes into a word: it is read as 9 words and shifted, and the 9th
 * word may reach 2 bytes past the matrix, still inside its chunk (chunks are whole
 * multiples of 256 bytes). */
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#extension GL_KHR_shader_subgroup_basic : require
#include "abi.h"
#include "dequant.glsl"
#include "lanes_sum.glsl"

layout(local_size_x_id = ABI_SPEC_WG_SIZE) in; /* one subgroup (lanes_sum needs it) */
layout(constant_id = ABI_SPEC_TOK_TILE) const uint TOK_TILE = 8;
layout(constant_id = ABI_SPEC_KSPLIT_UNITS) const uint SEG_UNITS = 2; /* units per lane per pass */

ABI_PUSH(ABI_MATVEC_FIELDS)

layout(binding = ABI_MATVEC_BIND_W) uniform usamplerBuffer w_words;  /* the file's bytes as 32-bit words */
layout(binding = ABI_MATVEC_BIND_X) uniform samplerBuffer x_tex;     /* float4 texels */
layout(std430, binding = ABI_MATVEC_BIND_Y) buffer y_buf { float y[]; };
layout(std430, binding = ABI_MATVEC_BIND_IDS) readonly buffer ids_buf { int ids[]; };

#define UNIT_ELEMS uint(ABI_KSPLIT_UNIT_ELEMS)
#define UNIT_VEC4 (UNIT_ELEMS / 4u)
/* the 32 bits at byte b of a word window u[] (b a compile-time constant after unrolling) */
#define WIN4(u, b) (((b) & 3u) == 0u ? u[(b) >> 2] : \
    (u[(b) >> 2] >> (8u * ((b) & 3u))) | (u[((b) >> 2) + 1u] << (32u - 8u * ((b) & 3u))))
#define U_B4(b) WIN4(u, b) /* the window of compute_tile */

/* a unit is two blocks (BLOCK_BYTES, DECODE_BLOCK: dequant.glsl) */
#if W_TYPE == ABI_WTYPE_Q8_0
#define UNIT_WORDS 17u
#elif W_TYPE == ABI_WTYPE_MXFP4
#define UNIT_WORDS 9u        /* 34 bytes from a word start or 2 bytes into one */
#else
#error "matmul_ksplit: Q8_0 and MXFP4 only"
#endif

void compute_tile(const uint mat, const uint xt[TOK_TILE], const uint yt[TOK_TILE], const bool tv[TOK_TILE])
{
    const uint SG = gl_SubgroupSize, lane = gl_SubgroupInvocationID;
    const uint wg_row0 = gl_WorkGroupID.x * pc.rows_per_wg;
    const uint wg_rows = min(pc.rows_per_wg, pc.n_out - min(wg_row0, pc.n_out));
    const uint mat_byte = pc.w_off + mat * pc.w_zstride;
    const bool accumulate = (pc.flags & ABI_MATVEC_FLAG_ACCUMULATE) != 0u;
    const uint n_units = pc.n_in / UNIT_ELEMS, pass_units = SG * SEG_UNITS;
    for (uint p0 = 0u; p0 < n_units; p0 += pass_units) {
        /* this lane's units of the pass: p0 + j * SG + lane; x for every token, fetched once */
        vec4 xv[TOK_TILE][SEG_UNITS * UNIT_VEC4];
        uint unit_byte[SEG_UNITS];
        [[unroll]] for (uint j = 0u; j < SEG_UNITS; j++) {
            const uint un = p0 + j * SG + lane;
            /* past the end: read a real unit with x zero (a multiply: a conditional fetch
             * made LLVM take seconds longer to compile the pipeline) */
            const uint uc = min(un, n_units - 1u);
            const float x_on = un < n_units ? 1.0 : 0.0;
            unit_byte[j] = uc * 2u * BLOCK_BYTES;
            [[unroll]] for (uint t = 0u; t < TOK_TILE; t++)
                [[unroll]] for (uint k = 0u; k < UNIT_VEC4; k++)
                    xv[t][j * UNIT_VEC4 + k] = texelFetch(x_tex, int((xt[t] >> 2) + uc * UNIT_VEC4 + k)) * x_on;
        }
        for (uint g = 0u; g < wg_rows; g += SG) { /* groups of SG rows */
            const uint g_rows = min(SG, wg_rows - g);
            float kept[TOK_TILE];           /* after the group: row g + lane's sums */
            [[unroll]] for (uint t = 0u; t < TOK_TILE; t++) kept[t] = 0.0;
            for (uint jr = 0u; jr < g_rows; jr++) {
                const uint row_byte = mat_byte + (wg_row0 + g + jr) * pc.row_bytes;
                float s[TOK_TILE];
                [[unroll]] for (uint t = 0u; t < TOK_TILE; t++) s[t] = 0.0;
                [[unroll]] for (uint j = 0u; j < SEG_UNITS; j++) {
                    const uint b0 = row_byte + unit_byte[j];
                    uint u[UNIT_WORDS];
                    [[unroll]] for (uint i = 0u; i < UNIT_WORDS; i++) u[i] = texelFetch(w_words, int((b0 >> 2) + i)).x;
#if W_TYPE == ABI_WTYPE_MXFP4
                    const bool odd = (b0 & 2u) != 0u;  /* the unit starts 2 bytes into its first word */
                    [[unroll]] for (uint i = 0u; i + 1u < UNIT_WORDS; i++) u[i] = odd ? (u[i] >> 16) | (u[i + 1u] << 16) : u[i];
                    u[UNIT_WORDS - 1u] = odd ? u[UNIT_WORDS - 1u] >> 16 : u[UNIT_WORDS - 1u];
#endif
                    [[unroll]] for (uint bb = 0u; bb < 2u; bb++) {
                        vec4 v[8];
                        const float d = DECODE_BLOCK(U_B4, BLOCK_BYTES * bb, v);
                        const uint xk = (j * 2u + bb) * 8u;
                        [[unroll]] for (uint t = 0u; t < TOK_TILE; t++) {
                            vec4 q = v[0] * xv[t][xk];
                            [[unroll]] for (uint k = 1u; k < 8u; k++) q += v[k] * xv[t][xk + k];
                            s[t] += d * ((q.x + q.y) + (q.z + q.w));
                        }
                    }
                }
                [[unroll]] for (uint t = 0u; t < TOK_TILE; t++) {
                    const float r = lanes_sum(s[t]);
                    kept[t] = lane == jr ? r : kept[t];
                }
            }
            if (lane < g_rows) {
                const uint row = wg_row0 + g + lane;
                for (uint t = 0u; t < TOK_TILE; t++)
                    if (tv[t]) {
                        const uint yi = yt[t] + row;
                        y[yi] = (p0 == 0u && !accumulate ? 0.0 : y[yi]) + kept[t] * pc.scale;
                    }
            }
        }
    }
}

#include "matvec_main.glsl"
