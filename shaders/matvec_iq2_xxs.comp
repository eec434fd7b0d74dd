/* Matrix-vector / matrix-matrix product over IQ2_XXS weights (see matvec.glsl, dequant_ggml.glsl). */
#version 450
#extension GL_GOOGLE_include_directive : require
#define W_TYPE ABI_WTYPE_IQ2_XXS
#include "matvec.glsl"
