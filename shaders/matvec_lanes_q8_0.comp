/* Lane-per-row matrix-vector / matrix-matrix product over Q8_0 weights (see matvec_lanes.glsl). */
#version 450
#extension GL_GOOGLE_include_directive : require
#define W_TYPE ABI_WTYPE_Q8_0
#include "matvec_lanes.glsl"
