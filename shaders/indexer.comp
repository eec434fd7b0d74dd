/* The indexer's chunk scores and sort, q and keys through storage buffers (see indexer.glsl). */
#version 450
#extension GL_GOOGLE_include_directive : require
#include "indexer.glsl"
