/* Matrix-vector (decode, TOK_TILE = 1) and matrix-matrix (prefill) product for CPU drivers
 * (lavapipe), included by matvec_lanes_<type>.comp with W_TYPE defined. Same ABI and slot
 * logic as matvec.glsl (shared through matvec_main.glsl); a different layout:
 *
 * One row per invocation, ROWS_PER_LANE rows each (rows lane, lane + WG, ... of the
 * workgroup's block). On a CPU driver a subgroup is one SIMD register, and what costs is
 * the number of memory operations per element, not their pattern: weights and x are
 * bound as texel buffers (a texel fetch is a plain gather; a storage-buffer load is a
 * per-lane loop with bounds checks there), weights read 16 bytes per fetch. Every lane
 * walks its rows in step, so a block's position inside the 16-byte texels is the same for
 * all lanes and, with the block loop unrolled, a compile-time constant: the unpacking is
 * constant shifts. Each x value is fetched once per ROWS_PER_LANE rows and tokens reuse a
 * decoded block.
 *
 * Requires rows that start on 16 bytes and hold whole chunks (ABI_LANES_*_CHUNK_BYTES), x
 * vectors on 16 bytes; vk_matvec_uses_lanes checks. */
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#include "abi.h"
#include "dequant.glsl"

layout(local_size_x_id = ABI_SPEC_WG_SIZE) in;
layout(constant_id = ABI_SPEC_TOK_TILE) const uint TOK_TILE = 1;
layout(constant_id = ABI_SPEC_ROWS_PER_LANE) const uint ROWS_PER_LANE = 16;

ABI_PUSH(ABI_MATVEC_FIELDS)

layout(binding = ABI_MATVEC_BIND_W) uniform usamplerBuffer w_tex;   /* the file's bytes as 16-byte texels */
layout(binding = ABI_MATVEC_BIND_X) uniform samplerBuffer x_tex;    /* float4 texels */
layout(std430, binding = ABI_MATVEC_BIND_Y) buffer y_buf { float y[]; };
layout(std430, binding = ABI_MATVEC_BIND_IDS) readonly buffer ids_buf { int ids[]; };

/* Word i of a window of texels t[] and the 32 bits starting at byte b (i, b compile-time
 * constants after unrolling, so this is at most two shifts and an or). */
#define WORD(t, i) (t[(i) >> 2][(i) & 3u])
#define BYTES4(t, b) (((b) & 3u) == 0u ? WORD(t, (b) >> 2) : \
    (WORD(t, (b) >> 2) >> (8u * ((b) & 3u))) | (WORD(t, ((b) >> 2) + 1u) << (32u - 8u * ((b) & 3u))))

/* A chunk is CHUNK_BLOCKS blocks = CHUNK_TEXELS texels (ABI_LANES_*_CHUNK_BYTES); rows
 * hold whole chunks. x of a chunk is fetched once for every row, then each row fetches the
 * chunk's texels and dots them. The chunk loop must stay a plain loop around the row loop:
 * unrolling anything that holds the row loop made LLVM take minutes to compile. */
#define WIN_TEXELS (ABI_LANES_BLOCK_CHUNK_BYTES / 16u) /* texels of the longest chunk */
#if W_TYPE == ABI_WTYPE_Q8_0 || W_TYPE == ABI_WTYPE_MXFP4 /* BLOCK_BYTES, DECODE_BLOCK: dequant.glsl */
#define BLOCK_ELEMS 32u
#define CHUNK_BLOCKS (ABI_LANES_BLOCK_CHUNK_BYTES / BLOCK_BYTES)
#elif W_TYPE == ABI_WTYPE_Q4_K || W_TYPE == ABI_WTYPE_Q5_K
#include "dequant_lanes_k.glsl" /* a chunk is a super-block: BLOCK_*, CHUNK_BLOCKS, DECODE_BLOCK */
#else /* float types: a "block" is one texel */
#define BLOCK_BYTES 16u
#define CHUNK_BLOCKS (ABI_LANES_FLOAT_CHUNK_BYTES / 16u)
#if W_TYPE == ABI_WTYPE_F32
#define BLOCK_ELEMS 4u
#define DECODE_BLOCK(B4, o, v) decode_f32(uvec4(B4(o), B4((o) + 4u), B4((o) + 8u), B4((o) + 12u)), v)
float decode_f32(const uvec4 u, out vec4 v[8]) { v[0] = uintBitsToFloat(u); return 1.0; }
#else
#define BLOCK_ELEMS 8u
#define DECODE_BLOCK(B4, o, v) decode_f16(uvec4(B4(o), B4((o) + 4u), B4((o) + 8u), B4((o) + 12u)), v)
float decode_f16(const uvec4 u, out vec4 v[8])
{
    v[0] = vec4(unpack2(u.x), unpack2(u.y));
    v[1] = vec4(unpack2(u.z), unpack2(u.w));
    return 1.0;
}
#endif
#endif

#define BLOCK_VEC4 (BLOCK_ELEMS / 4u)
#define CHUNK_TEXELS (CHUNK_BLOCKS * BLOCK_BYTES / 16u)
#define CHUNK_VEC4 (CHUNK_BLOCKS * BLOCK_VEC4)

/* A full token tile, and one token for an expert's last token in a grouped MoE list
 * (matvec_main.glsl): in a decode step of a few sessions most chosen experts have one or
 * two tokens, and a tile's unused places cost what used ones do on a CPU driver. Only the
 * grouped pipelines set TAIL_TILE: the second copy doubles the code LLVM compiles. */
layout(constant_id = ABI_SPEC_TAIL_TILE) const uint TAIL_TILE = 0;
#define LT_TOKENS TOK_TILE
#define LT_FN compute_tile
#include "matvec_lanes_tile.glsl"
#undef LT_TOKENS
#undef LT_FN
const uint TAIL_TOK_TILE = 1u; /* matvec_main.glsl's name for the tail tile's tokens */
#define LT_TOKENS TAIL_TOK_TILE
#define LT_FN compute_tail_tile
#include "matvec_lanes_tile.glsl"
#define HAS_TAIL_TILE /* matvec_main.glsl: the layout has compute_tail_tile and TAIL_TILE */

#include "matvec_main.glsl"
