/* Lane-per-row matrix-vector / matrix-matrix product over Q5_K weights (see matvec_lanes.glsl,
 * dequant_lanes_k.glsl). */
#version 450
#extension GL_GOOGLE_include_directive : require
#define W_TYPE ABI_WTYPE_Q5_K
#include "matvec_lanes.glsl"
