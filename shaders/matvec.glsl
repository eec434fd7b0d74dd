/* Matrix-vector (decode, TOK_TILE = 1) and matrix-matrix (prefill, TOK_TILE > 1) product
 * over weights in their file format, included by matvec_<type>.comp with W_TYPE defined.
 * One subgroup per row: each lane walks the row's blocks with stride gl_SubgroupSize,
 * dequantizes a block in registers and dots it with up to TOK_TILE token vectors, so every
 * weight is read once per token tile; a subgroupAdd finishes the row (no shared memory,
 * which is expensive on lavapipe). Weights are bound as raw 32-bit words and unpacked by
 * hand: Q8_0 blocks are 34 bytes (2-byte aligned) and MXFP4 blocks 17 bytes (any byte). */
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#extension GL_GOOGLE_include_directive : require
#include "abi.h"
#include "dequant.glsl"

layout(local_size_x_id = ABI_SPEC_WG_SIZE) in;
layout(constant_id = ABI_SPEC_TOK_TILE) const uint TOK_TILE = 1;

ABI_PUSH(ABI_MATVEC_FIELDS)

layout(std430, binding = ABI_MATVEC_BIND_W) readonly buffer w_buf { uint w[]; };
layout(std430, binding = ABI_MATVEC_BIND_W) readonly buffer w4_buf { uvec4 w4[]; };
layout(std430, binding = ABI_MATVEC_BIND_W) readonly buffer w2_buf { uvec2 w2[]; };
layout(std430, binding = ABI_MATVEC_BIND_X) readonly buffer x_buf { float x[]; };
layout(std430, binding = ABI_MATVEC_BIND_X) readonly buffer x4_buf { vec4 x4[]; };
layout(std430, binding = ABI_MATVEC_BIND_Y) buffer y_buf { float y[]; };
layout(std430, binding = ABI_MATVEC_BIND_IDS) readonly buffer ids_buf { int ids[]; };

/* 32 bits starting at a 2-byte aligned byte address. */
uint load_u32_a2(uint byte_addr)
{
    uint i = byte_addr >> 2;
    if ((byte_addr & 2u) == 0u) return w[i];
    return (w[i] >> 16) | (w[i + 1u] << 16);
}

/* 32 bits starting at any byte address. */
uint load_u32_a1(uint byte_addr)
{
    uint i = byte_addr >> 2, s = (byte_addr & 3u) * 8u;
    if (s == 0u) return w[i];
    return (w[i] >> s) | (w[i + 1u] << (32u - s));
}

#if W_TYPE == ABI_WTYPE_F32
#define BLK 4u
void load_block(uint row_byte, uint b, out float v[BLK])
{
    uint i = (row_byte >> 2) + b * 4u;
    v[0] = uintBitsToFloat(w[i]); v[1] = uintBitsToFloat(w[i + 1u]);
    v[2] = uintBitsToFloat(w[i + 2u]); v[3] = uintBitsToFloat(w[i + 3u]);
}
float load_elem(uint row_byte, uint e) { return uintBitsToFloat(w[(row_byte >> 2) + e]); }

#elif W_TYPE == ABI_WTYPE_F16 || W_TYPE == ABI_WTYPE_BF16
#define BLK 4u
void load_block(uint row_byte, uint b, out float v[BLK])
{
    uint a = row_byte + b * 8u;
    vec2 lo = unpack2(load_u32_a2(a)), hi = unpack2(load_u32_a2(a + 4u));
    v[0] = lo.x; v[1] = lo.y; v[2] = hi.x; v[3] = hi.y;
}
float load_elem(uint row_byte, uint e)
{
    uint a = row_byte + e * 2u;
    uint u = w[a >> 2];
    return unpack2((a & 2u) != 0u ? (u >> 16) : u).x;
}

#elif W_TYPE == ABI_WTYPE_Q8_0
#define BLK 32u
#define QUANT 1
void load_block(uint row_byte, uint b, out float v[BLK])
{
    uint a = row_byte + b * 34u;          /* { f16 d; int8 qs[32]; } */
    uint first = w[a >> 2];
    float d = unpackHalf2x16((a & 2u) != 0u ? (first >> 16) : first).x;
    for (uint k = 0u; k < 8u; k++) {
        int q = int(load_u32_a2(a + 2u + 4u * k));
        v[4u * k + 0u] = d * float(bitfieldExtract(q, 0, 8));
        v[4u * k + 1u] = d * float(bitfieldExtract(q, 8, 8));
        v[4u * k + 2u] = d * float(bitfieldExtract(q, 16, 8));
        v[4u * k + 3u] = d * float(bitfieldExtract(q, 24, 8));
    }
}

#elif W_TYPE == ABI_WTYPE_MXFP4
#define BLK 32u
#define QUANT 1
/* E2M1 codes times two; the block scale 2^(e-128) undoes the doubling. */
const float mxfp4_x2[16] = float[16](0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0,
                                     0.0, -1.0, -2.0, -3.0, -4.0, -6.0, -8.0, -12.0);

void load_block(uint row_byte, uint b, out float v[BLK])
{
    uint a = row_byte + b * 17u;          /* { uint8 e; uint8 qs[16]; } */
    float d = ldexp(1.0, int(load_u32_a1(a) & 0xffu) - 128);
    for (uint k = 0u; k < 4u; k++) {
        uint q = load_u32_a1(a + 1u + 4u * k);
        for (uint j = 0u; j < 4u; j++) {
            uint byte_val = (q >> (8u * j)) & 0xffu;
            v[4u * k + j] = d * mxfp4_x2[byte_val & 15u];        /* element 4k+j */
            v[4u * k + j + 16u] = d * mxfp4_x2[byte_val >> 4];   /* element 4k+j+16 */
        }
    }
}
#elif W_TYPE >= ABI_WTYPE_Q2_K && W_TYPE < ABI_WTYPE_COUNT
#include "dequant_ggml.glsl"   /* ggml's K-quants and i-quants: no vectorised path (load_group) */
#else
#error "W_TYPE must be one of ABI_WTYPE_*"
#endif


/* Fast path (ABI_MATVEC_FLAG_VEC: rows hold whole 4-element groups at 16-byte aligned x
 * and suitably aligned weights): the lanes of a subgroup read consecutive words of one row
 * and x as vec4, so loads are contiguous and few per element (what lavapipe's per-lane
 * buffer loads need). Each lane handles 4 consecutive elements per step (Q8_0: one qs word;
 * MXFP4: one qs word = elements 4w..4w+3 and 16+4w..16+4w+3). Returns the lane's partial dot
 * for token offset xo (in vec4 units). */
#if W_TYPE == ABI_WTYPE_MXFP4
#define GROUPS_PER_ROW(n_in) ((n_in) / 8u)   /* a group is 8 elements: 4 low + 4 high nibbles */
#else
#define GROUPS_PER_ROW(n_in) ((n_in) / 4u)
#endif

vec4 load_group(uint row_byte, uint g, out vec4 hi)
{
    hi = vec4(0.0);
#if W_TYPE == ABI_WTYPE_F32
    return uintBitsToFloat(w4[(row_byte >> 4) + g]);
#elif W_TYPE == ABI_WTYPE_F16 || W_TYPE == ABI_WTYPE_BF16
    uvec2 u = w2[(row_byte >> 3) + g];
    vec2 a = unpack2(u.x), b = unpack2(u.y);
    return vec4(a, b);
#elif W_TYPE == ABI_WTYPE_Q8_0
    uint blk = g >> 3, wi = g & 7u;
    uint a = row_byte + blk * 34u;
    uint first = w[a >> 2];
    float d = unpackHalf2x16((a & 2u) != 0u ? (first >> 16) : first).x;
    /* sign-extend the four bytes with vector shifts */
    const ivec4 q = ivec4(uvec4(load_u32_a2(a + 2u + 4u * wi)) << uvec4(24u, 16u, 8u, 0u)) >> 24;
    return d * vec4(q);
#elif W_TYPE == ABI_WTYPE_MXFP4
    uint blk = g >> 2, wi = g & 3u;
    uint a = row_byte + blk * 17u;
    float d = ldexp(1.0, int(load_u32_a1(a) & 0xffu) - 128);
    uint q = load_u32_a1(a + 1u + 4u * wi);
    const uvec4 sh = uvec4(0u, 8u, 16u, 24u);
    hi = d * e2m1_x2((uvec4(q) >> (sh + 4u)) & 15u);
    return d * e2m1_x2((uvec4(q) >> sh) & 15u);
#else
    return vec4(0.0); /* the ggml types never take the vectorised path (vk_ops.c: vec_ok) */
#endif
}

/* x vec4 index of group g's (low) elements, relative to the token's first vec4. */
uint group_x4(uint g)
{
#if W_TYPE == ABI_WTYPE_MXFP4
    return (g >> 2) * 8u + (g & 3u);        /* block base 32 elements = 8 vec4; high half at +4 */
#else
    return g;
#endif
}

/* Rows of this workgroup for one tile of tokens: matrix mat, x and y offsets per token,
 * tv[t] false for clamped duplicates (computed, not written). */
void compute_tile(const uint mat, const uint xt[TOK_TILE], const uint yt[TOK_TILE], const bool tv[TOK_TILE])
{
    const uint lane = gl_SubgroupInvocationID, sg_size = gl_SubgroupSize;
    const uint n_blk = pc.n_in / BLK;
    const uint w_base = pc.w_off + mat * pc.w_zstride;

    if ((pc.flags & ABI_MATVEC_FLAG_VEC) != 0u) {
        /* Four rows per subgroup at once: one x load serves four weight groups and one
         * vec4 subgroupAdd finishes four rows (per-row reductions dominate short rows on
         * lavapipe). Rows past n_out repeat the last row and are not written. */
        const uint n_groups = GROUPS_PER_ROW(pc.n_in);
        for (uint r0 = gl_SubgroupID * 4u; r0 < pc.rows_per_wg; r0 += gl_NumSubgroups * 4u) {
            const uint row0 = gl_WorkGroupID.x * pc.rows_per_wg + r0;
            if (row0 >= pc.n_out) break;
            uint rb[4];
            for (uint k = 0u; k < 4u; k++) rb[k] = w_base + min(row0 + k, pc.n_out - 1u) * pc.row_bytes;
            vec4 acc4[TOK_TILE];
            for (uint t = 0u; t < TOK_TILE; t++) acc4[t] = vec4(0.0);
            for (uint g = lane; g < n_groups; g += sg_size) {
                vec4 hi0, hi1, hi2, hi3;
                const vec4 w0 = load_group(rb[0], g, hi0), w1 = load_group(rb[1], g, hi1);
                const vec4 w2 = load_group(rb[2], g, hi2), w3 = load_group(rb[3], g, hi3);
                const uint gx = group_x4(g);
                for (uint t = 0u; t < TOK_TILE; t++) {
                    const uint xq = (xt[t] >> 2) + gx;
                    const vec4 xv = x4[xq];
                    acc4[t] += vec4(dot(w0, xv), dot(w1, xv), dot(w2, xv), dot(w3, xv));
#if W_TYPE == ABI_WTYPE_MXFP4
                    const vec4 xh = x4[xq + 4u];
                    acc4[t] += vec4(dot(hi0, xh), dot(hi1, xh), dot(hi2, xh), dot(hi3, xh));
#endif
                }
            }
            for (uint t = 0u; t < TOK_TILE; t++) {
                const vec4 s4 = subgroupAdd(acc4[t]) * pc.scale;
                if (lane == 0u && tv[t])
                    for (uint k = 0u; k < 4u && row0 + k < pc.n_out; k++) {
                        const uint yi = yt[t] + row0 + k;
                        y[yi] = (pc.flags & ABI_MATVEC_FLAG_ACCUMULATE) != 0u ? y[yi] + s4[k] : s4[k];
                    }
            }
        }
        return;
    }
    for (uint r = gl_SubgroupID; r < pc.rows_per_wg; r += gl_NumSubgroups) {
        const uint row = gl_WorkGroupID.x * pc.rows_per_wg + r;
        if (row >= pc.n_out) break;
        const uint row_byte = w_base + row * pc.row_bytes;
        float acc[TOK_TILE];
        for (uint t = 0u; t < TOK_TILE; t++) acc[t] = 0.0;

        for (uint b = lane; b < n_blk; b += sg_size) {
            float v[BLK];
            load_block(row_byte, b, v);
            for (uint t = 0u; t < TOK_TILE; t++) {
                const uint xb = xt[t] + b * BLK;
                float s = 0.0;
                for (uint j = 0u; j < BLK; j++) s += v[j] * x[xb + j];
                acc[t] += s;
            }
        }
#ifndef QUANT
        for (uint e = n_blk * BLK + lane; e < pc.n_in; e += sg_size) {
            const float v = load_elem(row_byte, e);
            for (uint t = 0u; t < TOK_TILE; t++) acc[t] += v * x[xt[t] + e];
        }
#endif
        for (uint t = 0u; t < TOK_TILE; t++) {
            const float s = subgroupAdd(acc[t]) * pc.scale;
            if (lane == 0u && tv[t]) {
                const uint yi = yt[t] + row;
                y[yi] = (pc.flags & ABI_MATVEC_FLAG_ACCUMULATE) != 0u ? y[yi] + s : s;
            }
        }
    }
}

#include "matvec_main.glsl"
