/* Matrix-vector (decode, TOK_TILE = 1) and matrix-matrix product (prefill token tiles) for
 * CPU drivers over F32 and the block types, K split across the lanes of a subgroup. Each
 * token's sums are formed in the same order whatever the tile, so decode and prefill give
 * bitwise the same results. Included by matmul_ksplit_<type>.comp with W_TYPE
 * defined; same ABI and slot logic as matvec.glsl (through matvec_main.glsl).
 *
 * Why not one row per lane as in matvec_lanes.glsl: with a row per lane, every row's
 * partial sums for the tile go to y after each short step of K, and on lavapipe a store or
 * load whose address differs per lane is a loop over the lanes with bounds checks. That
 * read-modify-write was 35-40% of the Q8_0 tile. Here the lanes of a subgroup share each
 * row: with LPR lanes per row (the subgroup, or fewer for short rows, SG / LPR rows at
 * once), lane l takes units l % LPR, + LPR, ... of a pass over K (a unit is 64 elements:
 * two blocks), so the x it needs for the whole pass is its own (no copy of x per lane) and
 * is fetched once for all of the workgroup's rows. A row's sums are reduced across its
 * lanes (lanes_sum), lane l of each group of SG rows keeps row l's, and the group's y is
 * written once per pass: one lane loop per token for SG rows.
 *
 * Requires n_in a multiple of 64, the matrices on 4 bytes (F32: 16) and x vectors on 16
 * (vk_matvec_uses_lanes and ksplit_shape in engine/vulkan/vk_ops.c check); lanes past the last
 * unit read x as zero. Q8_0 units are 17 whole words, F32 units 16 texels. An MXFP4 unit
 * is 34 bytes, so every other one starts 2 bytes into a word: it is read as 9 words and
 * shifted, and the 9th word may reach 2 bytes past the matrix, still inside its chunk
 * (chunks are whole multiples of 256 bytes). */
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#extension GL_KHR_shader_subgroup_basic : require
#include "abi.h"
#include "dequant.glsl"

layout(local_size_x_id = ABI_SPEC_WG_SIZE) in; /* one subgroup (lanes_sum needs it) */
layout(constant_id = ABI_SPEC_TOK_TILE) const uint TOK_TILE = 8;
layout(constant_id = ABI_SPEC_KSPLIT_UNITS) const uint SEG_UNITS = 2; /* units per lane per pass */
/* lanes that share a row: the subgroup size, or fewer for rows of fewer units; lanes_sum
 * sums over this many lanes */
layout(constant_id = ABI_SPEC_KSPLIT_LPR) const uint KSPLIT_LPR = 8;
#define LANES_SUM_WIDTH KSPLIT_LPR
#include "lanes_sum.glsl"

ABI_PUSH(ABI_MATVEC_FIELDS)

layout(binding = ABI_MATVEC_BIND_W) uniform usamplerBuffer w_words;  /* the file's bytes as 32-bit words (F32: 16-byte texels) */
layout(binding = ABI_MATVEC_BIND_X) uniform samplerBuffer x_tex;     /* float4 texels */
layout(std430, binding = ABI_MATVEC_BIND_Y) buffer y_buf { float y[]; };
layout(std430, binding = ABI_MATVEC_BIND_IDS) readonly buffer ids_buf { int ids[]; };

#define UNIT_ELEMS uint(ABI_KSPLIT_UNIT_ELEMS)
#define UNIT_VEC4 (UNIT_ELEMS / 4u)
/* the 32 bits at byte b of a word window u[] (b a compile-time constant after unrolling) */
#define WIN4(u, b) (((b) & 3u) == 0u ? u[(b) >> 2] : \
    (u[(b) >> 2] >> (8u * ((b) & 3u))) | (u[((b) >> 2) + 1u] << (32u - 8u * ((b) & 3u))))
#define U_B4(b) WIN4(u, b) /* the window of compute_tile */

/* a unit is two blocks (BLOCK_BYTES, DECODE_BLOCK: dequant.glsl); F32 "blocks" are 32
 * floats read as 16-byte texels (the weights' uvec4 view) */
#if W_TYPE == ABI_WTYPE_F32
#define BLOCK_BYTES 128u
#define UNIT_TEXELS 16u
#elif W_TYPE == ABI_WTYPE_Q8_0
#define UNIT_WORDS 17u
#elif W_TYPE == ABI_WTYPE_MXFP4
#define UNIT_WORDS 9u        /* 34 bytes from a word start or 2 bytes into one */
#else
#error "matmul_ksplit: F32, Q8_0 and MXFP4 only"
#endif

/* A full token tile, and a half one for an expert's last few tokens in a grouped prefill
 * MoE (matvec_main.glsl): about 6 tokens per expert at 64 a batch leave many tiles a
 * quarter or more empty, and a 4-token tile measured 0.62-0.69 of an 8-token one. Only the
 * grouped pipelines set TAIL_TILE: the half tile doubles the code LLVM compiles. */
layout(constant_id = ABI_SPEC_TAIL_TILE) const uint TAIL_TILE = 0;
#define KS_TOKENS TOK_TILE
#define KS_FN compute_tile
#include "matmul_ksplit_tile.glsl"
#undef KS_TOKENS
#undef KS_FN
/* one name: array types sized by it must match; never 0 (decode's pipelines have a tile of
 * one token and no half tile, but the arrays must still have a size) */
const uint TAIL_TOK_TILE = (TOK_TILE + 1u) / 2u;
#define KS_TOKENS TAIL_TOK_TILE
#define KS_FN compute_tail_tile
#include "matmul_ksplit_tile.glsl"
#define HAS_TAIL_TILE /* matvec_main.glsl: the layout has compute_tail_tile and TAIL_TILE */

#include "matvec_main.glsl"
