/* The indexer's chunk scores and sort, q and float32 keys through texel views (see indexer.glsl). */
#version 450
#extension GL_GOOGLE_include_directive : require
#define INDEXER_TEXELS 1
#include "indexer.glsl"
