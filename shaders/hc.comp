/* Hyper-connections, rows through storage buffers (see hc.glsl). */
#version 450
#extension GL_GOOGLE_include_directive : require
#include "hc.glsl"
