/* Groups a batch's routed slots by expert (counting sort, by one invocation: a few hundred
 * slots) into one list per expert used (layout: abi.h, moe_group), so each expert's
 * matrices are read once for all its tokens and no workgroup waits on an unused expert. */
#version 450
#extension GL_GOOGLE_include_directive : require
#include "abi.h"

layout(local_size_x = 1) in;
ABI_PUSH(ABI_MOE_GROUP_FIELDS)

layout(std430, binding = ABI_MOE_GROUP_BIND_IDS) readonly buffer ids_buf { int ids[]; };
layout(std430, binding = ABI_MOE_GROUP_BIND_OUT) buffer out_buf { int grp[]; };

shared int first[ABI_ROUTER_MAX_EXPERTS + 1]; /* per expert: counts, then first list index */

void main()
{
    const uint E = pc.n_expert, S = pc.n_slots, G = pc.n_grp;
    for (uint e = 0u; e <= E; e++) first[e] = 0;
    for (uint z = 0u; z < S; z++) first[uint(ids[z]) + 1u] += 1;   /* counts, shifted by one */
    for (uint e = 0u; e < E; e++) first[e + 1u] += first[e];       /* first index of each expert */
    /* the used experts' lists in expert order, then empty ones up to G */
    uint g = 0u;
    for (uint e = 0u; e < E; e++)
        if (first[e + 1u] > first[e]) {
            grp[g] = first[e];
            grp[G + 1u + S + g] = int(e);
            g++;
        }
    for (; g <= G; g++) grp[g] = int(S);
    /* fill in slot order; first[e] is advanced as a cursor */
    for (uint z = 0u; z < S; z++) {
        const uint e = uint(ids[z]);
        grp[G + 1u + uint(first[e])] = int(z);
        first[e] += 1;
    }
}
