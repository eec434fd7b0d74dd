/* Sparse attention, rows through storage buffers (see attention.glsl). */
#version 450
#extension GL_GOOGLE_include_directive : require
#include "attention.glsl"
