/* Number formats against hand-computed values and ggml's block layouts. */
#include "engine/model/quant.h"
#include "tests/harness.h"

TEST(fp16_round_trips_every_finite_half)
{
    for (uint32_t h = 0; h < 65536; h++) {
        if ((h & 0x7c00) == 0x7c00) continue; /* inf/NaN */
        uint16_t back = f32_to_fp16(fp16_to_f32((uint16_t)h));
        if (back != h) {
            CHECK_EQ_INT(back, h);
            return;
        }
    }
    CHECK(fp16_to_f32(0x3c00) == 1.0f && fp16_to_f32(0xc000) == -2.0f && fp16_to_f32(0x0001) == 0x1p-24f);
    CHECK_EQ_INT(f32_to_fp16(65520.0f), 0x7c00);           /* rounds up to inf */
    CHECK_EQ_INT(f32_to_fp16(1.0f + 0x1p-11f), 0x3c00);    /* tie to even */
    CHECK_EQ_INT(f32_to_fp16(1.0f + 0x1p-11f + 0x1p-20f), 0x3c01);
}

TEST(bf16_rounds_to_nearest_even)
{
    CHECK_EQ_INT(f32_to_bf16(1.0f), 0x3f80);
    CHECK_EQ_INT(f32_to_bf16(1.0f + 0x1p-8f), 0x3f80);  /* tie: stays even */
    CHECK_EQ_INT(f32_to_bf16(1.0f + 0x1p-7f + 0x1p-8f), 0x3f82); /* tie: up to even */
    CHECK(bf16_to_f32(0xc040) == -3.0f);
}

TEST(q8_0_dequantizes_scale_times_int8)
{
    struct block_q8_0 b;
    b.d = f32_to_fp16(0.5f);
    for (int i = 0; i < 32; i++) b.qs[i] = (int8_t)(i - 16);
    float out[32];
    CHECK(dequant_row(GGUF_TYPE_Q8_0, &b, out, 32) == 0);
    for (int i = 0; i < 32; i++) CHECK(out[i] == 0.5f * (float)(i - 16));
}

TEST(mxfp4_low_nibble_is_element_j_high_nibble_j_plus_16)
{
    struct block_mxfp4 b;
    b.e = 127; /* scale 2^-1 on the doubled codes: plain E2M1 values */
    memset(b.qs, 0, sizeof b.qs);
    b.qs[0] = 0x7F; /* element 0: code 15 = -6; element 16: code 7 = 6 */
    b.qs[3] = 0x29; /* element 3: code 9 = -0.5; element 19: code 2 = 1 */
    float out[32];
    CHECK(dequant_row(GGUF_TYPE_MXFP4, &b, out, 32) == 0);
    CHECK(out[0] == -6.0f && out[16] == 6.0f && out[3] == -0.5f && out[19] == 1.0f && out[1] == 0.0f);
    b.e = 130; /* x 2^2 relative to e = 128 */
    dequant_row(GGUF_TYPE_MXFP4, &b, out, 32);
    CHECK(out[0] == -48.0f && out[19] == 8.0f);
}

TEST(mxfp4_quantizer_round_trips_representable_values)
{
    const float e2m1[8] = { 0, 0.5f, 1, 1.5f, 2, 3, 4, 6 };
    float in[32], out[32];
    for (int i = 0; i < 32; i++) in[i] = e2m1[i % 8] * (i & 8 ? -1.0f : 1.0f) * 4.0f;
    struct block_mxfp4 b;
    quantize_row_mxfp4(in, &b, 32);
    dequant_row(GGUF_TYPE_MXFP4, &b, out, 32);
    for (int i = 0; i < 32; i++) CHECK(out[i] == in[i]);
}
