/* Matrix-vector / matrix-matrix product over IQ1_M weights (see matvec.glsl, dequant_ggml.glsl;
 * the grid comes from the ABI_MATVEC_BIND_GRID buffer). */
#version 450
#extension GL_GOOGLE_include_directive : require
#define W_TYPE ABI_WTYPE_IQ1_M
#include "matvec.glsl"
