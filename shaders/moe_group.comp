/* Groups a prefill batch's routed slots by expert (counting sort, by one invocation: a few
 * hundred slots), so each expert's matrices are read once for all its tokens. */
#version 450
#extension GL_GOOGLE_include_directive : require
#include "abi.h"

layout(local_size_x = 1) in;
ABI_PUSH(ABI_MOE_GROUP_FIELDS)

layout(std430, binding = ABI_MOE_GROUP_BIND_IDS) readonly buffer ids_buf { int ids[]; };
layout(std430, binding = ABI_MOE_GROUP_BIND_OUT) buffer out_buf { int grp[]; };

void main()
{
    const uint E = pc.n_expert;
    for (uint e = 0u; e <= E; e++) grp[e] = 0;
    for (uint z = 0u; z < pc.n_slots; z++) grp[uint(ids[z]) + 1u] += 1;   /* counts, shifted by one */
    for (uint e = 0u; e < E; e++) grp[e + 1u] += grp[e];                  /* first index of each expert */
    /* fill in slot order; grp[e] is advanced as a cursor and restored afterwards */
    for (uint z = 0u; z < pc.n_slots; z++) {
        const uint e = uint(ids[z]);
        grp[E + 1u + uint(grp[e])] = int(z);
        grp[e] += 1;
    }
    for (uint e = E; e > 0u; e--) grp[e] = grp[e - 1u];
    grp[0] = 0;
}
