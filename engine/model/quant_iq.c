/* ggml's i-quants (IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ1_S, IQ1_M, IQ4_NL, IQ4_XS):
 * dequantization bit-exact with ggml's dequantize_row_*.
 *
 * The 2- and 3-bit types pick each group of 8 (IQ3: 4) magnitudes from a lattice grid
 * (shaders/iq_grids.h, shared with the shaders) and apply signs; the 1-bit types pick -1/0/+1
 * groups and add a delta of +-1/8. Float operations are ggml's, in ggml's order: the
 * sub-block scale first, then scale * magnitude, then the sign. Layouts: engine/quant.h. */
#include "engine/model/quant.h"

#include <string.h>

#include "shaders/iq_grids.h"

static const uint8_t iq2_levels[3] = { 8, 25, 43 };
static const uint8_t iq3_levels[8] = { 4, 12, 20, 28, 36, 44, 52, 62 };
#define IQ1_DELTA 0.125f

static float half_at(const void *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return fp16_to_f32(h);
}

static uint16_t u16_at(const void *p)
{
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

static uint32_t u32_at(const void *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* 7 stored sign bits per group of 8; the eighth makes the count of minus signs even. */
static uint8_t signs_from7(uint32_t s7)
{
    s7 &= 127;
    return (uint8_t)(s7 | (uint32_t)(__builtin_popcount(s7) & 1) << 7);
}

/* 8 values db * grid * sign from a 2-bit-coded IQ2 grid entry. */
static void iq2_group(float db, uint16_t entry, uint8_t signs, float *y)
{
    for (int j = 0; j < 8; j++)
        y[j] = db * (float)iq2_levels[(entry >> 2 * j) & 3] * (signs >> j & 1 ? -1.0f : 1.0f);
}

static void dequant_iq2_xxs(const struct block_iq2_xxs *b, float *y)
{
    const float d = half_at(&b->d);
    const uint8_t *q = (const uint8_t *)b->qs;
    for (int ib = 0; ib < QK_K / 32; ib++, q += 8) {
        const uint32_t meta = u32_at(q + 4); /* 4 x 7 sign bits, then the 4-bit scale */
        const float db = d * (0.5f + (float)(meta >> 28)) * 0.25f;
        for (int l = 0; l < 4; l++, y += 8) iq2_group(db, iq2xxs_grid[q[l]], signs_from7(meta >> 7 * l), y);
    }
}

static void dequant_iq2_xs(const struct block_iq2_xs *b, float *y)
{
    const float d = half_at(&b->d);
    for (int ib = 0; ib < QK_K / 32; ib++) {
        const float db[2] = { d * (0.5f + (float)(b->scales[ib] & 0xf)) * 0.25f,
                              d * (0.5f + (float)(b->scales[ib] >> 4)) * 0.25f };
        for (int l = 0; l < 4; l++, y += 8) {
            const uint16_t q = u16_at(&b->qs[4 * ib + l]); /* 9-bit grid index, 7 sign bits */
            iq2_group(db[l / 2], iq2xs_grid[q & 511], signs_from7(q >> 9), y);
        }
    }
}

static void dequant_iq2_s(const struct block_iq2_s *b, float *y)
{
    const float d = half_at(&b->d);
    const uint8_t *signs = b->qs + QK_K / 8;
    for (int ib = 0; ib < QK_K / 32; ib++) {
        const float db[2] = { d * (0.5f + (float)(b->scales[ib] & 0xf)) * 0.25f,
                              d * (0.5f + (float)(b->scales[ib] >> 4)) * 0.25f };
        for (int l = 0; l < 4; l++, y += 8) {
            const int idx = b->qs[4 * ib + l] | (b->qh[ib] >> 2 * l & 3) << 8;
            iq2_group(db[l / 2], iq2s_grid[idx], signs[4 * ib + l], y);
        }
    }
}

static void dequant_iq3_xxs(const struct block_iq3_xxs *b, float *y)
{
    const float d = half_at(&b->d);
    const uint8_t *q = b->qs;
    for (int ib = 0; ib < QK_K / 32; ib++, q += 8) {
        const uint32_t meta = u32_at(b->qs + QK_K / 4 + 4 * ib);
        const float db = d * (0.5f + (float)(meta >> 28)) * 0.5f;
        for (int l = 0; l < 4; l++, y += 8) {
            const uint8_t s = signs_from7(meta >> 7 * l);
            for (int half = 0; half < 2; half++) {
                const uint16_t entry = iq3xxs_grid[q[2 * l + half]];
                for (int j = 0; j < 4; j++)
                    y[4 * half + j] = db * (float)iq3_levels[(entry >> 3 * j) & 7] *
                                      (s >> (4 * half + j) & 1 ? -1.0f : 1.0f);
            }
        }
    }
}

/* 8 values dl * (g + delta), g in {-1, 0, 1} from a 2-bit-coded IQ1 grid entry. */
static void iq1_group(float dl, float delta, uint16_t entry, float *y)
{
    for (int j = 0; j < 8; j++) y[j] = dl * ((float)((int)((entry >> 2 * j) & 3) - 1) + delta);
}

static void dequant_iq1_s(const struct block_iq1_s *b, float *y)
{
    const float d = half_at(&b->d);
    for (int ib = 0; ib < QK_K / 32; ib++) {
        const uint16_t qh = u16_at(&b->qh[ib]); /* 4 x 3 index bits, 3-bit scale, delta sign */
        const float dl = d * (float)(2 * ((qh >> 12) & 7) + 1);
        const float delta = qh & 0x8000 ? -IQ1_DELTA : IQ1_DELTA;
        for (int l = 0; l < 4; l++, y += 8)
            iq1_group(dl, delta, iq1s_grid[b->qs[4 * ib + l] | ((qh >> 3 * l) & 7) << 8], y);
    }
}

static void dequant_iq1_m(const struct block_iq1_m *b, float *y)
{
    uint16_t sc[4];
    for (int k = 0; k < 4; k++) sc[k] = u16_at(b->scales + 2 * k);
    /* the f16 super-block scale is the top nibbles of the four scale words */
    const uint16_t dh = (uint16_t)((sc[0] >> 12) | ((sc[1] >> 8) & 0x00f0) | ((sc[2] >> 4) & 0x0f00) | (sc[3] & 0xf000));
    const float d = fp16_to_f32(dh);
    for (int ib = 0; ib < QK_K / 32; ib++) {
        const float dl[2] = { d * (float)(2 * ((sc[ib / 2] >> (6 * (ib % 2) + 0)) & 7) + 1),
                              d * (float)(2 * ((sc[ib / 2] >> (6 * (ib % 2) + 3)) & 7) + 1) };
        const uint8_t *qs = b->qs + 4 * ib, *qh = b->qh + 2 * ib;
        for (int l = 0; l < 4; l++, y += 8) {
            const uint8_t h = qh[l / 2] >> 4 * (l % 2); /* 3 index bits, then the delta sign */
            const float delta = h & 8 ? -IQ1_DELTA : IQ1_DELTA;
            iq1_group(dl[l / 2], delta, iq1s_grid[qs[l] | (h & 7) << 8], y);
        }
    }
}

static void iq4_32(float dl, const uint8_t *qs, float *y)
{
    for (int j = 0; j < 16; j++) {
        y[j] = dl * (float)iq4nl_values[qs[j] & 0xf];
        y[j + 16] = dl * (float)iq4nl_values[qs[j] >> 4];
    }
}

static void dequant_iq4_xs(const struct block_iq4_xs *b, float *y)
{
    const float d = half_at(&b->d);
    const uint16_t sh = u16_at(&b->scales_h);
    for (int ib = 0; ib < QK_K / 32; ib++, y += 32) {
        const int ls = ((b->scales_l[ib / 2] >> 4 * (ib % 2)) & 0xf) | ((sh >> 2 * ib) & 3) << 4;
        iq4_32(d * (float)(ls - 32), b->qs + 16 * ib, y);
    }
}

int dequant_row_iq(enum gguf_type type, const void *src, float *dst, uint64_t n)
{
    const uint8_t *p = src;
    const uint32_t be = gguf_type_block_elems(type), bb = gguf_type_block_bytes(type);
    if (!be) return -1;
    for (uint64_t i = 0; i < n / be; i++, p += bb, dst += be) {
        switch (type) {
        case GGUF_TYPE_IQ2_XXS: dequant_iq2_xxs((const void *)p, dst); break;
        case GGUF_TYPE_IQ2_XS: dequant_iq2_xs((const void *)p, dst); break;
        case GGUF_TYPE_IQ2_S: dequant_iq2_s((const void *)p, dst); break;
        case GGUF_TYPE_IQ3_XXS: dequant_iq3_xxs((const void *)p, dst); break;
        case GGUF_TYPE_IQ1_S: dequant_iq1_s((const void *)p, dst); break;
        case GGUF_TYPE_IQ1_M: dequant_iq1_m((const void *)p, dst); break;
        case GGUF_TYPE_IQ4_NL: iq4_32(half_at(p), p + 2, dst); break;
        case GGUF_TYPE_IQ4_XS: dequant_iq4_xs((const void *)p, dst); break;
        default: return -1;
        }
    }
    return 0;
}

void quant_iq_grid_table(uint16_t *dst)
{
    _Static_assert(QUANT_IQ_GRID_ENTRIES == IQ_GRID_ENTRIES, "one table size");
    static const struct { const uint16_t *grid; size_t n; uint32_t off; } g[] = {
        { iq2xxs_grid, sizeof iq2xxs_grid / 2, IQ_GRID_OFF_IQ2XXS }, { iq2xs_grid, sizeof iq2xs_grid / 2, IQ_GRID_OFF_IQ2XS },
        { iq2s_grid, sizeof iq2s_grid / 2, IQ_GRID_OFF_IQ2S }, { iq3xxs_grid, sizeof iq3xxs_grid / 2, IQ_GRID_OFF_IQ3XXS },
        { iq1s_grid, sizeof iq1s_grid / 2, IQ_GRID_OFF_IQ1S },
    };
    _Static_assert(IQ_GRID_OFF_IQ2XS == IQ_GRID_OFF_IQ2XXS + sizeof iq2xxs_grid / 2 &&
                   IQ_GRID_OFF_IQ2S == IQ_GRID_OFF_IQ2XS + sizeof iq2xs_grid / 2 &&
                   IQ_GRID_OFF_IQ3XXS == IQ_GRID_OFF_IQ2S + sizeof iq2s_grid / 2 &&
                   IQ_GRID_OFF_IQ1S == IQ_GRID_OFF_IQ3XXS + sizeof iq3xxs_grid / 2 &&
                   IQ_GRID_ENTRIES == IQ_GRID_OFF_IQ1S + sizeof iq1s_grid / 2, "the grids fill the table back to back");
    for (size_t i = 0; i < sizeof g / sizeof g[0]; i++) memcpy(dst + g[i].off, g[i].grid, g[i].n * sizeof(uint16_t));
}
