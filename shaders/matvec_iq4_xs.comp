/* Matrix-vector / matrix-matrix product over IQ4_XS weights (see matvec.glsl, dequant_ggml.glsl). */
#version 450
#extension GL_GOOGLE_include_directive : require
#define W_TYPE ABI_WTYPE_IQ4_XS
#include "matvec.glsl"
