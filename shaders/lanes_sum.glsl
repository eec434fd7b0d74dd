/* Sum over a subgroup for the CPU-driver kernels (matmul_ksplit.glsl, attention_heads.comp):
 * butterfly shuffles, xor LANES_SUM_WIDTH / 2 down to 1, so every lane gets the total of
 * its aligned group of LANES_SUM_WIDTH lanes (the whole subgroup, or fewer). On lavapipe a
 * shuffle by lane ^ constant unrolls into one vector shuffle, where subgroupAdd is a loop
 * over the lanes that tests each one's execution mask: the K-split tile ran 5-20% faster
 * this way.
 *
 * The includer defines LANES_SUM_WIDTH as a specialization constant (matmul_ksplit: its
 * lanes per row; attention_heads: the subgroup size), so the untaken steps vanish at
 * pipeline creation: as a loop over gl_SubgroupSize the tile ran 1.4-1.7x slower, and
 * tests of gl_WorkGroupSize gave wrong sums on lavapipe. Needs
 * VK_SUBGROUP_FEATURE_SHUFFLE_BIT (the host checks). */
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_shuffle : require

float lanes_sum(float v)
{
    /* written out: a loop halving the offset stayed a loop even with a constant bound */
    if (LANES_SUM_WIDTH > 32u) v += subgroupShuffleXor(v, 32u);
    if (LANES_SUM_WIDTH > 16u) v += subgroupShuffleXor(v, 16u);
    if (LANES_SUM_WIDTH > 8u) v += subgroupShuffleXor(v, 8u);
    if (LANES_SUM_WIDTH > 4u) v += subgroupShuffleXor(v, 4u);
    if (LANES_SUM_WIDTH > 2u) v += subgroupShuffleXor(v, 2u);
    if (LANES_SUM_WIDTH > 1u) v += subgroupShuffleXor(v, 1u);
    return v;
}
