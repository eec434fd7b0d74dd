/* Matrix-vector / matrix-matrix product over MXFP4 weights (see matvec.glsl). */
#version 450
#extension GL_GOOGLE_include_directive : require
#define W_TYPE ABI_WTYPE_MXFP4
#include "matvec.glsl"
