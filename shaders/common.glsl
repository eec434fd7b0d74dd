/* Shared prologue of the non-matvec kernels: extensions, the ABI header and workgroup
 * reductions (subgroupAdd, then across subgroups through a small shared array). */
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#include "abi.h"

/* ABI_WG_SIZE invocations unless the host specializes the size (vk_ops.c: one subgroup on
 * CPU drivers); the row kernels stride by gl_WorkGroupSize.x, never by the constant. */
layout(local_size_x = ABI_WG_SIZE, local_size_x_id = ABI_SPEC_WG_SIZE) in;

shared float red_partial[ABI_WG_SIZE];

/* Sum of v over the workgroup; every invocation gets the result. Contains barriers: call
 * from uniform control flow only. */
float wg_sum(float v)
{
    v = subgroupAdd(v);
    barrier();
    if (subgroupElect()) red_partial[gl_SubgroupID] = v;
    barrier();
    float total = 0.0;
    for (uint s = 0u; s < gl_NumSubgroups; s++) total += red_partial[s];
    return total;
}

float wg_max(float v)
{
    v = subgroupMax(v);
    barrier();
    if (subgroupElect()) red_partial[gl_SubgroupID] = v;
    barrier();
    float total = red_partial[0];
    for (uint s = 1u; s < gl_NumSubgroups; s++) total = max(total, red_partial[s]);
    return total;
}

float sigmoid(float x) { return 1.0 / (1.0 + exp(-x)); }
