/* Matrix-vector / matrix-matrix product over Q3_K weights (see matvec.glsl, dequant_ggml.glsl). */
#version 450
#extension GL_GOOGLE_include_directive : require
#define W_TYPE ABI_WTYPE_Q3_K
#include "matvec.glsl"
