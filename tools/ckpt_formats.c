/* Official checkpoint number formats: FP8 e4m3 / e8m0 / FP4 e2m1 decoding and the FP4 to
 * MXFP4 repack. See ckpt_formats.h. */
#include "tools/ckpt_formats.h"

#include <math.h>

float ckpt_fp8_e4m3_to_f32(uint8_t code)
{
    if (ckpt_fp8_e4m3_is_nan(code)) return NAN;
    int exp = (code >> 3) & 0xf, man = code & 7;
    /* exponent 0 is subnormal: 2^-6 * m/8; otherwise 2^(e-7) * (1 + m/8). Both exact in
     * float32. */
    float mag = exp == 0 ? ldexpf((float)man, -9) : ldexpf((float)(8 + man), exp - 10);
    return (code & 0x80) ? -mag : mag;
}

float ckpt_e8m0_to_f32(uint8_t e)
{
    if (e == 255) return NAN;
    return ldexpf(1.0f, (int)e - 127); /* 2^-127 is a float32 subnormal: still exact */
}

float ckpt_fp4_e2m1_to_f32(uint8_t code)
{
    static const float mag[8] = { 0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f };
    float v = mag[code & 7];
    return (code & 8) ? -v : v;
}

int ckpt_fp8_dequant_rows(const uint8_t *q, const uint8_t *scales, uint64_t row0, uint64_t n_rows,
                          uint64_t n_cols, float *dst, uint64_t *bad)
{
    /* Decoding the 256 codes once keeps the inner loop a table lookup and a multiply. */
    float lut[256];
    for (int c = 0; c < 256; c++) lut[c] = ckpt_fp8_e4m3_to_f32((uint8_t)c);
    const uint64_t n_col_blocks = (n_cols + CKPT_FP8_BLOCK - 1) / CKPT_FP8_BLOCK;
    for (uint64_t r = 0; r < n_rows; r++) {
        const uint8_t *srow = scales + ((row0 + r) / CKPT_FP8_BLOCK) * n_col_blocks;
        const uint8_t *qrow = q + r * n_cols;
        float *drow = dst + r * n_cols;
        for (uint64_t cb = 0; cb < n_col_blocks; cb++) {
            if (srow[cb] == 255) {
                *bad = r * n_cols + cb * CKPT_FP8_BLOCK;
                return -1;
            }
            const float s = ckpt_e8m0_to_f32(srow[cb]);
            const uint64_t c_end = cb * CKPT_FP8_BLOCK + CKPT_FP8_BLOCK < n_cols ? cb * CKPT_FP8_BLOCK + CKPT_FP8_BLOCK : n_cols;
            for (uint64_t c = cb * CKPT_FP8_BLOCK; c < c_end; c++) {
                if (ckpt_fp8_e4m3_is_nan(qrow[c])) {
                    *bad = r * n_cols + c;
                    return -1;
                }
                drow[c] = lut[qrow[c]] * s;
            }
        }
    }
    return 0;
}

int ckpt_fp4_repack_mxfp4(const uint8_t *packed, const uint8_t *scales, uint64_t n_rows, uint64_t n_cols,
                          struct block_mxfp4 *dst, uint64_t *bad)
{
    const uint64_t nb = n_cols / CKPT_FP4_BLOCK;
    for (uint64_t r = 0; r < n_rows; r++) {
        for (uint64_t b = 0; b < nb; b++) {
            const uint8_t e = scales[r * nb + b];
            if (e == 255) {
                *bad = r * nb + b;
                return -1;
            }
            /* The 16 source bytes of this block hold columns 0..31 in order, two per byte. */
            const uint8_t *src = packed + r * (n_cols / 2) + b * (CKPT_FP4_BLOCK / 2);
            uint8_t nib[CKPT_FP4_BLOCK];
            for (int j = 0; j < CKPT_FP4_BLOCK / 2; j++) {
                nib[2 * j] = src[j] & 0xf;
                nib[2 * j + 1] = src[j] >> 4;
            }
            struct block_mxfp4 *o = &dst[r * nb + b];
            o->e = e;
            for (int j = 0; j < QK_MXFP4 / 2; j++) o->qs[j] = (uint8_t)(nib[j] | nib[j + 16] << 4);
        }
    }
    return 0;
}

void ckpt_fp4_dequant_rows(const uint8_t *packed, const uint8_t *scales, uint64_t n_rows, uint64_t n_cols,
                           float *dst)
{
    const uint64_t nb = n_cols / CKPT_FP4_BLOCK;
    for (uint64_t r = 0; r < n_rows; r++)
        for (uint64_t c = 0; c < n_cols; c++) {
            uint8_t byte = packed[r * (n_cols / 2) + c / 2];
            uint8_t code = (c & 1) ? byte >> 4 : byte & 0xf;
            dst[r * n_cols + c] = ckpt_fp4_e2m1_to_f32(code) * ckpt_e8m0_to_f32(scales[r * nb + c / CKPT_FP4_BLOCK]);
        }
}
