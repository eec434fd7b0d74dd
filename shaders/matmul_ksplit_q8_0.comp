/* K-split token tile over Q8_0 weights (see matmul_ksplit.glsl). */
#version 450
#extension GL_GOOGLE_include_directive : require
#define W_TYPE ABI_WTYPE_Q8_0
#include "matmul_ksplit.glsl"
