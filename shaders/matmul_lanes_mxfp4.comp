/* Lane-per-row matrix-matrix product (token tiles) over MXFP4 weights read as words (see matvec_lanes.glsl). */
#version 450
#extension GL_GOOGLE_include_directive : require
#define W_TYPE ABI_WTYPE_MXFP4
#define LANES_WORDS 1
#include "matvec_lanes.glsl"
