/* How compressed entries and indexer keys are stored (enum engine_kv_type): float32,
 * float16, or FP8 E4M3 with one power-of-two scale per entry (spec §3.16's rounding of KV:
 * s = 2^ceil(log2(amax / 448)), amax at least 1e-4). An entry of `width` values is a whole
 * number of 32-bit words, so the session-state layout and device buffers index entries by
 * words: f32 one value a word; f16 two (element 2k in the low half); fp8 four (element 4k
 * in the low byte), then the scale as a float32 word. The Vulkan shaders pack and unpack
 * the same bits (shaders/kv.glsl): packing is exact integer work on both sides, so equal
 * inputs give equal words. Internal to engine/. */
#ifndef FLASHBOX_ENGINE_KV_STORE_H
#define FLASHBOX_ENGINE_KV_STORE_H

#include <stdint.h>

#include "engine/engine.h"

/* 32-bit words of one stored entry of width values. */
static inline uint32_t kv_entry_words(enum engine_kv_type kv, uint32_t width)
{
    return kv == ENGINE_KV_F16 ? (width + 1) / 2 : kv == ENGINE_KV_FP8 ? (width + 3) / 4 + 1 : width;
}

/* x[width] into words[kv_entry_words]; unpacked back to floats. For f32 both copy. */
void kv_pack(enum engine_kv_type kv, const float *x, uint32_t width, uint32_t *words);
void kv_unpack(enum engine_kv_type kv, const uint32_t *words, uint32_t width, float *x);

/* The power-of-two scale of an FP8 entry whose largest magnitude is amax; the E4M3 code of
 * v (|v| <= 448), rounded to nearest even; the value of a code. */
float kv_fp8_scale(float amax);
uint8_t kv_e4m3_code(float v);
float kv_e4m3_value(uint8_t code);

#endif
