/* The CPU reference's elementary operations: matrix-vector products over any weight type,
 * RMSNorm, RoPE with YaRN, and the scalar functions whose numerics matter (softplus).
 * Slow and obvious on purpose: these are the oracle the Vulkan kernels are compared with. */
#ifndef FLASHBOX_ENGINE_REF_OPS_H
#define FLASHBOX_ENGINE_REF_OPS_H

#include <stdbool.h>
#include <stdint.h>

#include "engine/model/model.h"

/* y[r] = sum_i W[row0 + r][i] x[i] for r < n_rows, where W is w viewed as rows of ne0
 * elements (a 3-D expert tensor [n_in, n_out, n_expert] has expert e's rows at
 * e*n_out). Accumulates in double. rowbuf: [w->ne[0]] scratch. */
void ref_matvec(tensor_ref w, uint64_t row0, uint64_t n_rows, const float *x, float *y, float *rowbuf);

/* One row of w dequantized to float (token embedding lookup). */
void ref_get_row(tensor_ref w, uint64_t row, float *out);

/* y = x / sqrt(mean(x^2) + eps) (* weight when weight != NULL); y may alias x. */
void ref_rmsnorm(const float *x, const float *weight, uint32_t n, float eps, float *y);

/* Rotation frequencies of a layer kind, [rope_dim/2]: base^(-2i/rope_dim), with YaRN's
 * ramp toward freq/factor when yarn is set (compressed layers). */
void ref_rope_freqs(const struct model_hparams *hp, bool compressed, double *freqs);

/* Rotates the last rope_dim values of x[dim] in interleaved pairs by angle pos*freq
 * (or -pos*freq when inverse). */
void ref_rope(float *x, uint32_t dim, uint32_t rope_dim, const double *freqs, uint64_t pos, bool inverse);

/* log(1 + e^x) without losing precision for very negative x (where e^x underflows 1+). */
double ref_softplus(double x);
double ref_sigmoid(double x);
double ref_silu(double x);

/* Indices of the k largest values of v[n] into idx[k], ties to the lower index, in
 * descending order of value. */
void ref_topk(const float *v, uint32_t n, uint32_t k, int32_t *idx);

#endif
