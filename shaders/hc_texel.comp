/* Hyper-connections, X and the sources read through texel views (see hc.glsl). */
#version 450
#extension GL_GOOGLE_include_directive : require
#define HC_TEXELS 1
#include "hc.glsl"
