/* K-split token tile over F32 weights (see matmul_ksplit.glsl). */
#version 450
#extension GL_GOOGLE_include_directive : require
#define W_TYPE ABI_WTYPE_F32
#include "matmul_ksplit.glsl"
