/* Number formats of weights: half/bfloat conversion, Q8_0 and MXFP4 blocks (bit-exact with
 * ggml's layouts), dequantization of rows to float32 and the reference quantizers used by
 * the model generator. */
#ifndef FLASHBOX_ENGINE_QUANT_H
#define FLASHBOX_ENGINE_QUANT_H

#include <stdint.h>

#include "engine/gguf.h"

#define QK8_0 32
#define QK_MXFP4 32

struct block_q8_0 {
    uint16_t d;         /* f16 scale */
    int8_t qs[QK8_0];   /* value j = qs[j] * d */
};

struct block_mxfp4 {
    uint8_t e;              /* e8m0 exponent: scale 2^(e-128) for the doubled codes below */
    uint8_t qs[QK_MXFP4 / 2]; /* element j in the low nibble of qs[j], j+16 in the high one */
};

_Static_assert(sizeof(struct block_q8_0) == 34, "Q8_0 block is 34 bytes");
_Static_assert(sizeof(struct block_mxfp4) == 17, "MXFP4 block is 17 bytes");

/* E2M1 codes times two (ggml's kvalues_mxfp4): value = code_x2[n] * 2^(e-128). */
extern const int8_t mxfp4_code_x2[16];

float fp16_to_f32(uint16_t h);
uint16_t f32_to_fp16(float f);      /* round to nearest even, saturating to inf */
float bf16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f);      /* round to nearest even */
float e8m0_to_f32_half(uint8_t e);  /* 2^(e-128), what ggml multiplies MXFP4 codes by */

/* Dequantizes n elements (a multiple of the type's block) starting at src. I32 converts
 * the integers. Returns -1 for an unknown type. */
int dequant_row(enum gguf_type type, const void *src, float *dst, uint64_t n);

/* ggml's reference quantizers (quantize_row_q8_0_ref, quantize_row_mxfp4_ref). n % 32 == 0. */
void quantize_row_q8_0(const float *src, struct block_q8_0 *dst, uint64_t n);
void quantize_row_mxfp4(const float *src, struct block_mxfp4 *dst, uint64_t n);

#endif
