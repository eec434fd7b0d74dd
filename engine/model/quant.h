/* Number formats of weights: half/bfloat conversion, Q8_0 and MXFP4 blocks (bit-exact with
 * ggml's layouts), dequantization of rows to float32 and the reference quantizers used by
 * the model generator. The K-quants live in quant_k.c, the i-quants in quant_iq.c; their
 * block layouts are below (ggml's, byte for byte; f16 fields are little-endian halves). */
#ifndef FLASHBOX_ENGINE_QUANT_H
#define FLASHBOX_ENGINE_QUANT_H

#include <stdbool.h>
#include <stdint.h>

#include "engine/model/gguf.h"

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

/* Super-blocks of 256 elements (ggml's QK_K). Sub-blocks are 16 or 32 elements with their own
 * small integer scale, multiplied by the f16 super-block scale d (and dmin for the mins). */
#define QK_K 256
#define QK4_NL 32

struct block_q2_k {           /* 2.625 bits: x = d*sc*q - dmin*m, 16 sub-blocks of 16 */
    uint8_t scales[QK_K / 16]; /* low nibble sc, high nibble m */
    uint8_t qs[QK_K / 4];      /* 2-bit q, 4 per byte (see dequant_row_k) */
    uint16_t d, dmin;
};
struct block_q3_k {            /* 3.4375 bits: x = d*(sc-32)*(q-4*!h), 16 sub-blocks of 16 */
    uint8_t hmask[QK_K / 8];   /* the high bit h of q */
    uint8_t qs[QK_K / 4];      /* low 2 bits of q */
    uint8_t scales[12];        /* 16 x 6-bit sc */
    uint16_t d;
};
struct block_q4_k {            /* 4.5 bits: x = d*sc*q - dmin*m, 8 sub-blocks of 32 */
    uint16_t d, dmin;
    uint8_t scales[12];        /* 8 x 6-bit sc and 8 x 6-bit m */
    uint8_t qs[QK_K / 2];      /* 4-bit q */
};
struct block_q5_k {            /* 5.5 bits: as Q4_K with a fifth bit of q */
    uint16_t d, dmin;
    uint8_t scales[12];
    uint8_t qh[QK_K / 8];
    uint8_t qs[QK_K / 2];
};
struct block_q6_k {            /* 6.5625 bits: x = d*sc*(q-32), 16 sub-blocks of 16 */
    uint8_t ql[QK_K / 2];      /* low 4 bits of q */
    uint8_t qh[QK_K / 4];      /* high 2 bits of q */
    int8_t scales[QK_K / 16];
    uint16_t d;
};
struct block_iq2_xxs {         /* 2.0625 bits: per 32, 4 grid indices (8 bits) + 4x7 sign bits + 4-bit scale */
    uint16_t d;
    uint16_t qs[QK_K / 8];
};
struct block_iq2_xs {          /* 2.3125 bits: 9-bit grid index + 7 sign bits per 8, 4-bit scales per 16 */
    uint16_t d;
    uint16_t qs[QK_K / 8];
    uint8_t scales[QK_K / 32];
};
struct block_iq2_s {           /* 2.5625 bits: 10-bit grid index, 8 explicit sign bits per 8 */
    uint16_t d;
    uint8_t qs[QK_K / 4];      /* [0, 32): index low bytes, [32, 64): sign bytes */
    uint8_t qh[QK_K / 32];     /* index high bits, 2 per group of 8 */
    uint8_t scales[QK_K / 32];
};
struct block_iq3_xxs {         /* 3.0625 bits: per 32, 8 grid indices (4 values each) + signs + scale */
    uint16_t d;
    uint8_t qs[3 * QK_K / 8];  /* [0, 64): indices, [64, 96): 8 x uint32 of signs and scale */
};
struct block_iq1_s {           /* 1.5625 bits: 11-bit grid index per 8, 3-bit scale + delta sign per 32 */
    uint16_t d;
    uint8_t qs[QK_K / 8];
    uint16_t qh[QK_K / 32];
};
struct block_iq1_m {           /* 1.75 bits: no d field: the f16 scale is spread over scales' top nibbles */
    uint8_t qs[QK_K / 8];
    uint8_t qh[QK_K / 16];
    uint8_t scales[QK_K / 32];
};
struct block_iq4_nl {          /* 4.5 bits: x = d * kvalues_iq4nl[q], blocks of 32 */
    uint16_t d;
    uint8_t qs[QK4_NL / 2];
};
struct block_iq4_xs {          /* 4.25 bits: x = d * (ls-32) * kvalues_iq4nl[q], 6-bit ls per 32 */
    uint16_t d;
    uint16_t scales_h;
    uint8_t scales_l[QK_K / 64];
    uint8_t qs[QK_K / 2];
};

_Static_assert(sizeof(struct block_q2_k) == 84, "Q2_K block is 84 bytes");
_Static_assert(sizeof(struct block_q3_k) == 110, "Q3_K block is 110 bytes");
_Static_assert(sizeof(struct block_q4_k) == 144, "Q4_K block is 144 bytes");
_Static_assert(sizeof(struct block_q5_k) == 176, "Q5_K block is 176 bytes");
_Static_assert(sizeof(struct block_q6_k) == 210, "Q6_K block is 210 bytes");
_Static_assert(sizeof(struct block_iq2_xxs) == 66, "IQ2_XXS block is 66 bytes");
_Static_assert(sizeof(struct block_iq2_xs) == 74, "IQ2_XS block is 74 bytes");
_Static_assert(sizeof(struct block_iq2_s) == 82, "IQ2_S block is 82 bytes");
_Static_assert(sizeof(struct block_iq3_xxs) == 98, "IQ3_XXS block is 98 bytes");
_Static_assert(sizeof(struct block_iq1_s) == 50, "IQ1_S block is 50 bytes");
_Static_assert(sizeof(struct block_iq1_m) == 56, "IQ1_M block is 56 bytes");
_Static_assert(sizeof(struct block_iq4_nl) == 18, "IQ4_NL block is 18 bytes");
_Static_assert(sizeof(struct block_iq4_xs) == 136, "IQ4_XS block is 136 bytes");

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

/* The K-quant and i-quant halves of dequant_row (same contract); -1 for a type they do not own. */
int dequant_row_k(enum gguf_type type, const void *src, float *dst, uint64_t n);
int dequant_row_iq(enum gguf_type type, const void *src, float *dst, uint64_t n);

/* Every i-quant grid in one table of QUANT_IQ_GRID_ENTRIES u16 entries, each grid at its
 * IQ_GRID_OFF_* (shaders/iq_grids.h): what the Vulkan backend uploads once per device for
 * its shaders, which as GLSL constants cost lavapipe seconds to minutes per dispatch. */
#define QUANT_IQ_GRID_ENTRIES 4096
void quant_iq_grid_table(uint16_t *dst);

/* Fills n_blocks blocks of a K-quant or i-quant type with random bytes drawn from *seed
 * (splitmix64) and sets every block's f16 scale (d, and dmin where the type has one) to
 * d_half: valid blocks of arbitrary content, for generated test models and kernel tests.
 * Returns -1 for other types. */
int quant_random_blocks(enum gguf_type type, void *dst, uint64_t n_blocks, uint64_t *seed, uint16_t d_half);

/* ggml's reference quantizers (quantize_row_q8_0_ref, quantize_row_mxfp4_ref). n % 32 == 0. */
void quantize_row_q8_0(const float *src, struct block_q8_0 *dst, uint64_t n);
void quantize_row_mxfp4(const float *src, struct block_mxfp4 *dst, uint64_t n);
/* engine/model/quantize.c, byte for byte: with qw NULL ggml's quantize_row_q{2,3,4,5,6}_K_ref;
 * with importance weights qw[n] (one per column) ggml's quantize_q*_K for one row of n.
 * n % 256 == 0. */
void quantize_row_q2_k(const float *src, struct block_q2_k *dst, uint64_t n, const float *qw);
void quantize_row_q3_k(const float *src, struct block_q3_k *dst, uint64_t n, const float *qw);
void quantize_row_q4_k(const float *src, struct block_q4_k *dst, uint64_t n, const float *qw);
void quantize_row_q5_k(const float *src, struct block_q5_k *dst, uint64_t n, const float *qw);
void quantize_row_q6_k(const float *src, struct block_q6_k *dst, uint64_t n, const float *qw);
/* IQ4_NL (n % 32 == 0) and IQ4_XS (n % 256 == 0) with importance weights qw[n] or NULL:
 * ggml's quantize_iq4_nl / quantize_iq4_xs for one row (ntry 7); IQ4_NL with ntry -1 is
 * ggml's quantize_row_iq4_nl_ref. */
void quantize_row_iq4_nl(const float *src, struct block_iq4_nl *dst, uint64_t n, const float *qw, int ntry);
void quantize_row_iq4_xs(const float *src, struct block_iq4_xs *dst, uint64_t n, const float *qw);

/* engine/model/quantize_iq.c: IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ1_S and IQ1_M by a weighted
 * least-squares search over the grid (valid blocks for dequant_row; not ggml's bytes: its
 * search is a heuristic of its own), with importance weights qw[n] or NULL (then x^2).
 * n % 256 == 0 and every value finite, else -1 and nothing written. */
int quantize_row_iq2_xxs(const float *src, struct block_iq2_xxs *dst, uint64_t n, const float *qw);
int quantize_row_iq2_xs(const float *src, struct block_iq2_xs *dst, uint64_t n, const float *qw);
int quantize_row_iq2_s(const float *src, struct block_iq2_s *dst, uint64_t n, const float *qw);
int quantize_row_iq3_xxs(const float *src, struct block_iq3_xxs *dst, uint64_t n, const float *qw);
int quantize_row_iq1_s(const float *src, struct block_iq1_s *dst, uint64_t n, const float *qw);
int quantize_row_iq1_m(const float *src, struct block_iq1_m *dst, uint64_t n, const float *qw);

/* Whether quant_quantize_row writes type (each one with or without an importance matrix). */
bool quant_can_quantize(enum gguf_type type);
/* One row of n elements (a multiple of the type's block) into type, the bytes llama.cpp's
 * quantize writes for it: F32/F16/BF16, Q8_0, MXFP4 (these ignore imatrix, as ggml does), the
 * K-quants and IQ4_NL / IQ4_XS (imatrix[n] or NULL); IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ1_S and
 * IQ1_M by our own search (above). Returns -1 when !quant_can_quantize, and for a block type
 * when a value is NaN or infinite (a block cannot hold it; F32/F16/BF16 keep it). */
int quant_quantize_row(enum gguf_type type, const float *src, void *dst, uint64_t n, const float *imatrix);

/* Q4_K / Q5_K's sub-block j scale and min from their 12 packed bytes (engine/model/quant_k.c). */
void quant_k4_scale_min(const uint8_t *scales, int j, uint8_t *sc, uint8_t *m);

#endif
