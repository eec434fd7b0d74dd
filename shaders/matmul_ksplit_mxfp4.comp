/* K-split token tile over MXFP4 weights (see matmul_ksplit.glsl). */
#version 450
#extension GL_GOOGLE_include_directive : require
#define W_TYPE ABI_WTYPE_MXFP4
#include "matmul_ksplit.glsl"
