/* cos and sin of pos * freq of rope pair `pair` from the factored table (abi.h,
 * ABI_ROPE_LO_ROWS): the low row's angle plus the high row's, by angle addition. Include
 * after declaring the table as `rope` (vec2) and a push block with rope_off (floats). */
vec2 rope_cs(const uint pos, const uint pair, const uint half_dim)
{
    const uint base = pc.rope_off / 2u;
    const vec2 lo = rope[base + (pos & (ABI_ROPE_LO_ROWS - 1u)) * half_dim + pair];
    const vec2 hi = rope[base + (ABI_ROPE_LO_ROWS + (pos >> ABI_ROPE_LO_BITS)) * half_dim + pair];
    return vec2(lo.x * hi.x - lo.y * hi.y, lo.y * hi.x + lo.x * hi.y);
}
