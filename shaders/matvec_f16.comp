/* Matrix-vector / matrix-matrix product over F16 weights (see matvec.glsl). */
#version 450
#extension GL_GOOGLE_include_directive : require
#define W_TYPE ABI_WTYPE_F16
#include "matvec.glsl"
