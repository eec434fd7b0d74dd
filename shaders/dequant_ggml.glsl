/* ggml's K-quants and i-quants for matvec.glsl: load_block(row_byte, b, v) decodes the row's
 * 32-element chunk b (super-block b / 8, its chunk b % 8; IQ4_NL: block b) into v, with the
 * CPU reference's float operations in its order (engine/model/quant_k.c, engine/model/quant_iq.c: the
 * sub-block scale first, then scale * integer, then the sign or the min). Every block size
 * is even, so 16-bit fields are whole halves of a word. Include after w[] is declared. */
#define BLK 32u
#define QUANT 1

uint byte_at(uint a) { return (w[a >> 2] >> ((a & 3u) * 8u)) & 0xffu; }
uint u16_at(uint a) { return (w[a >> 2] >> ((a & 2u) * 8u)) & 0xffffu; }
float half_at(uint a) { return unpackHalf2x16(u16_at(a)).x; }
uint u32_at(uint a) { return u16_at(a) | (u16_at(a + 2u) << 16); }

#if W_TYPE >= ABI_WTYPE_IQ2_XXS
#if W_TYPE == ABI_WTYPE_IQ4_NL || W_TYPE == ABI_WTYPE_IQ4_XS
#define IQ_WANT_IQ4NL
#else
/* The grids (shaders/iq_grids.h) from a buffer, two entries a word; off is the grid's
 * IQ_GRID_OFF_*, even */
layout(std430, binding = ABI_MATVEC_BIND_GRID) readonly buffer iq_grid_buf { uint iq_grid[]; };
#define IQ_GRID(off, i) ((iq_grid[((off) >> 1) + ((i) >> 1)] >> (((i) & 1u) * 16u)) & 0xffffu)
#endif
#include "iq_grids.h"
/* IQ2 magnitudes 8, 25, 43 by 2-bit code, a byte each in a register */
float iq2_level(uint code) { return float((0x2b1908u >> (8u * code)) & 0xffu); }
/* IQ3 magnitudes 4, 12, ..., 52, 62 by 3-bit code */
float iq3_level(uint code) { return float(code == 7u ? 62u : 8u * code + 4u); }
/* 7 stored sign bits; the eighth makes the count of minus signs even */
uint signs_from7(uint s7) { s7 &= 127u; return s7 | ((uint(bitCount(s7)) & 1u) << 7); }
float sign_of(uint signs, uint j) { return ((signs >> j) & 1u) != 0u ? -1.0 : 1.0; }
void iq2_group(float db, uint entry, uint signs, inout float v[BLK], uint o)
{
    for (uint j = 0u; j < 8u; j++) v[o + j] = db * iq2_level((entry >> (2u * j)) & 3u) * sign_of(signs, j);
}
#endif

#if W_TYPE == ABI_WTYPE_Q2_K
/* { u8 scales[16]; u8 qs[64]; f16 d, dmin; }: chunk c is pass c%4 (bit pair) over half c/4 */
void load_block(uint row_byte, uint b, out float v[BLK])
{
    const uint a = row_byte + (b >> 3) * 84u, c = b & 7u, h = c >> 2, pass = c & 3u;
    const float d = half_at(a + 80u), dmin = half_at(a + 82u);
    for (uint g = 0u; g < 2u; g++) {
        const uint sc = byte_at(a + 8u * h + 2u * pass + g);
        const float dl = d * float(sc & 15u), ml = dmin * float(sc >> 4);
        for (uint l = 0u; l < 16u; l++)
            v[16u * g + l] = dl * float((byte_at(a + 16u + 32u * h + 16u * g + l) >> (2u * pass)) & 3u) - ml;
    }
}

#elif W_TYPE == ABI_WTYPE_Q3_K
/* { u8 hmask[32]; u8 qs[64]; u8 scales[12]; f16 d; } */
int q3_k_scale(uint a, uint k)
{
    const uint lo = k < 8u ? byte_at(a + 96u + k) & 15u : byte_at(a + 96u + k - 8u) >> 4;
    const uint hi = (byte_at(a + 104u + (k & 3u)) >> (2u * (k >> 2))) & 3u;
    return int(lo | (hi << 4)) - 32;
}
void load_block(uint row_byte, uint b, out float v[BLK])
{
    const uint a = row_byte + (b >> 3) * 110u, c = b & 7u, h = c >> 2, pass = c & 3u;
    const float d = half_at(a + 108u);
    const uint bit = 1u << (4u * h + pass);
    for (uint g = 0u; g < 2u; g++) {
        const float dl = d * float(q3_k_scale(a, 8u * h + 2u * pass + g));
        for (uint l = 0u; l < 16u; l++) {
            const int q = int((byte_at(a + 32u + 32u * h + 16u * g + l) >> (2u * pass)) & 3u);
            v[16u * g + l] = dl * float(q - ((byte_at(a + 16u * g + l) & bit) != 0u ? 0 : 4));
        }
    }
}

#elif W_TYPE == ABI_WTYPE_Q4_K || W_TYPE == ABI_WTYPE_Q5_K
/* { f16 d, dmin; u8 scales[12]; [Q5_K: u8 qh[32];] u8 qs[128]; }: chunk c reads the low
 * (c even) or high nibbles of qs[32*(c/2) ..]; Q5_K's fifth bit is bit c of qh[l] */
void load_block(uint row_byte, uint b, out float v[BLK])
{
#if W_TYPE == ABI_WTYPE_Q4_K
    const uint bb = 144u, qs = 16u;
#else
    const uint bb = 176u, qs = 48u;
#endif
    const uint a = row_byte + (b >> 3) * bb, c = b & 7u, s = a + 4u;
    uint sc, m;
    if (c < 4u) {
        sc = byte_at(s + c) & 63u;
        m = byte_at(s + c + 4u) & 63u;
    } else {
        sc = (byte_at(s + c + 4u) & 15u) | ((byte_at(s + c - 4u) >> 6) << 4);
        m = (byte_at(s + c + 4u) >> 4) | ((byte_at(s + c) >> 6) << 4);
    }
    const float dl = half_at(a) * float(sc), ml = half_at(a + 2u) * float(m);
    for (uint l = 0u; l < 32u; l++) {
        uint q = (byte_at(a + qs + 32u * (c >> 1) + l) >> (4u * (c & 1u))) & 15u;
#if W_TYPE == ABI_WTYPE_Q5_K
        q += ((byte_at(a + 16u + l) >> c) & 1u) << 4;
#endif
        v[l] = dl * float(q) - ml;
    }
}

#elif W_TYPE == ABI_WTYPE_Q6_K
/* { u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d; }: chunk c = 4*h + s of half h */
void load_block(uint row_byte, uint b, out float v[BLK])
{
    const uint a = row_byte + (b >> 3) * 210u, c = b & 7u, h = c >> 2, s = c & 3u;
    const float d = half_at(a + 208u);
    for (uint l = 0u; l < 32u; l++) {
        const uint lo = (byte_at(a + 64u * h + l + 32u * (s & 1u)) >> (4u * (s >> 1))) & 15u;
        const int q = int(lo | (((byte_at(a + 128u + 32u * h + l) >> (2u * s)) & 3u) << 4)) - 32;
        const int sc = bitfieldExtract(int(byte_at(a + 192u + 8u * h + l / 16u + 2u * s)), 0, 8);
        v[l] = d * float(sc) * float(q);
    }
}

#elif W_TYPE == ABI_WTYPE_IQ2_XXS
/* { f16 d; u16 qs[32]; }: per 32, 4 grid index bytes then a word of 4 x 7 sign bits and a
 * 4-bit scale */
void load_block(uint row_byte, uint b, out float v[BLK])
{
    const uint a = row_byte + (b >> 3) * 66u, q = a + 2u + 8u * (b & 7u);
    const uint meta = u32_at(q + 4u);
    const float db = half_at(a) * (0.5 + float(meta >> 28)) * 0.25;
    for (uint l = 0u; l < 4u; l++) iq2_group(db, IQ_GRID(IQ_GRID_OFF_IQ2XXS, byte_at(q + l)), signs_from7(meta >> (7u * l)), v, 8u * l);
}

#elif W_TYPE == ABI_WTYPE_IQ2_XS
/* { f16 d; u16 qs[32] (9-bit index, 7 sign bits); u8 scales[8]; } */
void load_block(uint row_byte, uint b, out float v[BLK])
{
    const uint a = row_byte + (b >> 3) * 74u, ib = b & 7u;
    const float d = half_at(a);
    const uint sc = byte_at(a + 66u + ib);
    const float db[2] = float[2](d * (0.5 + float(sc & 15u)) * 0.25, d * (0.5 + float(sc >> 4)) * 0.25);
    for (uint l = 0u; l < 4u; l++) {
        const uint q = u16_at(a + 2u + 2u * (4u * ib + l));
        iq2_group(db[l / 2u], IQ_GRID(IQ_GRID_OFF_IQ2XS, q & 511u), signs_from7(q >> 9), v, 8u * l);
    }
}

#elif W_TYPE == ABI_WTYPE_IQ2_S
/* { f16 d; u8 qs[64] (index low bytes, then sign bytes); u8 qh[8]; u8 scales[8]; } */
void load_block(uint row_byte, uint b, out float v[BLK])
{
    const uint a = row_byte + (b >> 3) * 82u, ib = b & 7u;
    const float d = half_at(a);
    const uint sc = byte_at(a + 74u + ib), qh = byte_at(a + 66u + ib);
    const float db[2] = float[2](d * (0.5 + float(sc & 15u)) * 0.25, d * (0.5 + float(sc >> 4)) * 0.25);
    for (uint l = 0u; l < 4u; l++) {
        const uint idx = byte_at(a + 2u + 4u * ib + l) | (((qh >> (2u * l)) & 3u) << 8);
        iq2_group(db[l / 2u], IQ_GRID(IQ_GRID_OFF_IQ2S, idx), byte_at(a + 34u + 4u * ib + l), v, 8u * l);
    }
}

#elif W_TYPE == ABI_WTYPE_IQ3_XXS
/* { f16 d; u8 qs[96]: 64 index bytes, then per 32 a word of 4 x 7 sign bits and a scale } */
void load_block(uint row_byte, uint b, out float v[BLK])
{
    const uint a = row_byte + (b >> 3) * 98u, ib = b & 7u;
    const uint meta = u32_at(a + 66u + 4u * ib);
    const float db = half_at(a) * (0.5 + float(meta >> 28)) * 0.5;
    for (uint l = 0u; l < 4u; l++) {
        const uint s = signs_from7(meta >> (7u * l));
        for (uint half_ = 0u; half_ < 2u; half_++) {
            const uint entry = IQ_GRID(IQ_GRID_OFF_IQ3XXS, byte_at(a + 2u + 8u * ib + 2u * l + half_));
            for (uint j = 0u; j < 4u; j++)
                v[8u * l + 4u * half_ + j] = db * iq3_level((entry >> (3u * j)) & 7u) * sign_of(s, 4u * half_ + j);
        }
    }
}

#elif W_TYPE == ABI_WTYPE_IQ1_S || W_TYPE == ABI_WTYPE_IQ1_M
/* 8 values dl * (g + delta) of grid entry idx */
void iq1_group(float dl, float delta, uint idx, inout float v[BLK], uint o)
{
    const uint entry = IQ_GRID(IQ_GRID_OFF_IQ1S, idx);
    for (uint j = 0u; j < 8u; j++) v[o + j] = dl * (float(int((entry >> (2u * j)) & 3u) - 1) + delta);
}
#if W_TYPE == ABI_WTYPE_IQ1_S
/* { f16 d; u8 qs[32]; u16 qh[8]; }: per 32, 4 index low bytes and a word of 4 x 3 index
 * bits, a 3-bit scale and the delta's sign */
void load_block(uint row_byte, uint b, out float v[BLK])
{
    const uint a = row_byte + (b >> 3) * 50u, ib = b & 7u;
    const uint qh = u16_at(a + 34u + 2u * ib);
    const float dl = half_at(a) * float(2u * ((qh >> 12) & 7u) + 1u);
    const float delta = (qh & 0x8000u) != 0u ? -0.125 : 0.125;
    for (uint l = 0u; l < 4u; l++) iq1_group(dl, delta, byte_at(a + 2u + 4u * ib + l) | (((qh >> (3u * l)) & 7u) << 8), v, 8u * l);
}
#else
/* { u8 qs[32]; u8 qh[16]; u8 scales[8]; }: the f16 super-block scale is the top nibbles of
 * the four scale words; per 32, two 3-bit scales, per 8 a nibble of 3 index bits and the
 * delta's sign */
void load_block(uint row_byte, uint b, out float v[BLK])
{
    const uint a = row_byte + (b >> 3) * 56u, ib = b & 7u;
    const uint s0 = u16_at(a + 48u), s1 = u16_at(a + 50u), s2 = u16_at(a + 52u), s3 = u16_at(a + 54u);
    const float d = unpackHalf2x16((s0 >> 12) | ((s1 >> 8) & 0xf0u) | ((s2 >> 4) & 0xf00u) | (s3 & 0xf000u)).x;
    const uint sc = u16_at(a + 48u + 2u * (ib >> 1)) >> (6u * (ib & 1u));
    const float dl[2] = float[2](d * float(2u * (sc & 7u) + 1u), d * float(2u * ((sc >> 3) & 7u) + 1u));
    for (uint l = 0u; l < 4u; l++) {
        const uint h = byte_at(a + 32u + 2u * ib + l / 2u) >> (4u * (l & 1u));
        iq1_group(dl[l / 2u], (h & 8u) != 0u ? -0.125 : 0.125, byte_at(a + 4u * ib + l) | ((h & 7u) << 8), v, 8u * l);
    }
}
#endif

#elif W_TYPE == ABI_WTYPE_IQ4_NL || W_TYPE == ABI_WTYPE_IQ4_XS
/* IQ4_NL { f16 d; u8 qs[16]; } per 32; IQ4_XS { f16 d; u16 scales_h; u8 scales_l[4];
 * u8 qs[128]; } per 256 with a 6-bit scale per 32 */
void load_block(uint row_byte, uint b, out float v[BLK])
{
#if W_TYPE == ABI_WTYPE_IQ4_NL
    const uint a = row_byte + b * 18u, q = a + 2u;
    const float dl = half_at(a);
#else
    const uint a = row_byte + (b >> 3) * 136u, ib = b & 7u, q = a + 8u + 16u * ib;
    const uint ls = ((byte_at(a + 4u + ib / 2u) >> (4u * (ib & 1u))) & 15u) | (((u16_at(a + 2u) >> (2u * ib)) & 3u) << 4);
    const float dl = half_at(a) * float(int(ls) - 32);
#endif
    for (uint j = 0u; j < 16u; j++) {
        const uint x = byte_at(q + j);
        v[j] = dl * float(iq4nl_values[x & 15u]);
        v[j + 16u] = dl * float(iq4nl_values[x >> 4]);
    }
}
#endif
