/* The one ABI between the C host (engine/vk_*.c) and the GLSL kernels (the .comp files):
 * push-constant layouts, descriptor binding slots, workgroup sizes and specialization
 * constant ids. Valid C11 and valid GLSL 450: each push block is written once as a field
 * list macro, expanded into a C struct (with _Static_assert on its size) and into the
 * shader's push_constant block. Every field is a 32-bit scalar, so std430/push-constant
 * offsets equal C offsets with no padding. */
#ifndef FLASHBOX_SHADERS_ABI_H
#define FLASHBOX_SHADERS_ABI_H

#ifdef VULKAN /* defined by glslangValidator when compiling for Vulkan */
#define ABI_U32 uint
#define ABI_F32 float
#define ABI_PUSH(fields) layout(push_constant) uniform push_block { fields(ABI_U32, ABI_F32) } pc;
#else
#include <stdint.h>
#define ABI_U32 uint32_t
#define ABI_F32 float
#define ABI_STRUCT(name, fields) struct name { fields(ABI_U32, ABI_F32) };
#endif

/* Every kernel works in workgroups of this many invocations (one or more subgroups). */
#define ABI_WG_SIZE 64

/* Specialization constant ids. */
#define ABI_SPEC_TOK_TILE 0 /* matvec: tokens processed per weight load (1 decode, 8 prefill) */

/* Weight types of the matvec family (values of the W_TYPE define in the .comp files). */
#define ABI_WTYPE_F32 0
#define ABI_WTYPE_F16 1
#define ABI_WTYPE_BF16 2
#define ABI_WTYPE_Q8_0 3
#define ABI_WTYPE_MXFP4 4

/* ---- matvec / matmul: y[z][t][o] (+)= scale * sum_i W_z[o][i] * x[z][t][i] -------------
 * Bindings: weights as raw 32-bit words (file format), x and y float32, ids int32.
 * Workgroup (gx, 1, gz): gx covers rows_per_wg rows each, gz the expert slots (or 1).
 * The weight matrix of slot z starts at byte w_off + (ids ? ids[ids_off + z] : z) * w_zstride;
 * row o at + o * row_bytes. */
#define ABI_MATVEC_BIND_W 0
#define ABI_MATVEC_BIND_X 1
#define ABI_MATVEC_BIND_Y 2
#define ABI_MATVEC_BIND_IDS 3
#define ABI_MATVEC_FLAG_ACCUMULATE 1u /* y += ... instead of y = ... */
#define ABI_MATVEC_FLAG_IDS 2u        /* pick slot z's matrix through ids[] */

#define ABI_MATVEC_FIELDS(U, F) \
    U n_in;          /* elements per row */ \
    U n_out;         /* rows */ \
    U n_tok;         /* tokens */ \
    U rows_per_wg;   /* rows one workgroup covers */ \
    U w_off;         /* bytes: start of the (first) matrix in the weight binding */ \
    U row_bytes;     /* bytes per row in the file format */ \
    U w_zstride;     /* bytes between expert matrices */ \
    U x_off;         /* floats */ \
    U x_tstride;     /* floats between tokens */ \
    U x_zstride;     /* floats between slots (0: every slot reads the same x) */ \
    U y_off;         /* floats */ \
    U y_tstride; \
    U y_zstride; \
    U ids_off;       /* ints */ \
    U flags;         /* ABI_MATVEC_FLAG_* */ \
    F scale;         /* multiplies the dot product */

#ifndef VULKAN
ABI_STRUCT(abi_matvec_push, ABI_MATVEC_FIELDS)
_Static_assert(sizeof(struct abi_matvec_push) == 16 * 4, "matvec push block: 16 words");
_Static_assert(sizeof(struct abi_matvec_push) <= 128, "push constants fit the guaranteed 128 bytes");
#endif

/* ---- rmsnorm: y[t][i] = x[t][i] / sqrt(mean_i x^2 + eps) * (w ? w[i] : 1) -------------
 * One workgroup per row (token, or head when rows are heads). Bindings: x, y, w. */
#define ABI_RMSNORM_BIND_X 0
#define ABI_RMSNORM_BIND_Y 1
#define ABI_RMSNORM_BIND_W 2
#define ABI_RMSNORM_FLAG_WEIGHT 1u

#define ABI_RMSNORM_FIELDS(U, F) \
    U n;             /* elements per row */ \
    U n_rows; \
    U x_off;  U x_stride; /* floats */ \
    U y_off;  U y_stride; \
    U w_off;         /* floats */ \
    U flags; \
    F eps;

#ifndef VULKAN
ABI_STRUCT(abi_rmsnorm_push, ABI_RMSNORM_FIELDS)
_Static_assert(sizeof(struct abi_rmsnorm_push) == 9 * 4, "rmsnorm push block: 9 words");
#endif

#endif
