/* Number formats of the official DeepSeek-V4 checkpoint (spec §2.3) and their conversion to
 * GGUF blocks: FP8 e4m3 weights with e8m0 scales per 128x128 block, FP4 e2m1 experts packed
 * two per byte with e8m0 scales per 32 along the row. Only the converter needs them. */
#ifndef FLASHBOX_TOOLS_CKPT_FORMATS_H
#define FLASHBOX_TOOLS_CKPT_FORMATS_H

#include <stdbool.h>
#include <stdint.h>

#include "engine/model/quant.h"

#define CKPT_FP8_BLOCK 128   /* FP8 weight scale block: 128 rows x 128 columns */
#define CKPT_FP4_BLOCK 32    /* FP4 expert scale block: 32 columns of one row */

/* e4m3fn: sign, 4 exponent bits (bias 7), 3 mantissa bits; 0x7f / 0xff are NaN. */
float ckpt_fp8_e4m3_to_f32(uint8_t code);
static inline bool ckpt_fp8_e4m3_is_nan(uint8_t code) { return (code & 0x7f) == 0x7f; }
/* ue8m0: 2^(e-127); 255 is NaN. */
float ckpt_e8m0_to_f32(uint8_t e);
/* e2m1 code (low 4 bits) to its value: 0, 0.5, 1, 1.5, 2, 3, 4, 6 and negatives. */
float ckpt_fp4_e2m1_to_f32(uint8_t code);

/* Dequantizes rows [row0, row0 + n_rows) of an FP8 matrix with n_cols columns.
 * q:      [n_rows][n_cols] e4m3 codes of those rows
 * scales: [ceil(n_rows_total/128)][ceil(n_cols/128)] e8m0, the whole scale grid
 * dst:    [n_rows][n_cols] float32
 * Returns -1 (and the flat index of the bad element in *bad) on a NaN code or NaN scale. */
int ckpt_fp8_dequant_rows(const uint8_t *q, const uint8_t *scales, uint64_t row0, uint64_t n_rows,
                          uint64_t n_cols, float *dst, uint64_t *bad);

/* Repacks FP4 expert rows into MXFP4 blocks, losslessly: the checkpoint pairs columns
 * (2j, 2j+1) in the (low, high) nibbles of byte j, ggml pairs (j, j+16) of each 32-block.
 * packed: [n_rows][n_cols/2] bytes, scales: [n_rows][n_cols/32] e8m0,
 * dst:    [n_rows][n_cols/32] MXFP4 blocks. n_cols % 32 == 0.
 * The e8m0 byte carries over unchanged (ggml scales doubled codes by 2^(e-128)).
 * Returns -1 (flat index of the scale in *bad) on a NaN scale (255). */
int ckpt_fp4_repack_mxfp4(const uint8_t *packed, const uint8_t *scales, uint64_t n_rows, uint64_t n_cols,
                          struct block_mxfp4 *dst, uint64_t *bad);

/* Dequantizes FP4 rows the way the checkpoint defines them (for tests and diagnostics).
 * dst: [n_rows][n_cols] float32. */
void ckpt_fp4_dequant_rows(const uint8_t *packed, const uint8_t *scales, uint64_t n_rows, uint64_t n_cols,
                           float *dst);

#endif
