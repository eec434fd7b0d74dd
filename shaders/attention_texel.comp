/* Sparse attention, q and key rows through texel views (see attention.glsl). */
#version 450
#extension GL_GOOGLE_include_directive : require
#define ATTN_TEXELS 1
#include "attention.glsl"
