/* The order of the indexer's selection (indexer.comp, indexer_merge.comp): entries as
 * (order key of the score, index) pairs, the larger score first, ties to the lower index,
 * as the reference's top-k (engine/ref). */

/* An unsigned key with the float order (-0 counts as +0; scores are never NaN). */
uint order_key(float v)
{
    const uint u = floatBitsToUint(v == 0.0 ? 0.0 : v);
    return (u & 0x80000000u) != 0u ? ~u : u | 0x80000000u;
}

/* Whether entry a comes before entry b in the selection. */
bool ix_before(uvec2 a, uvec2 b) { return a.x > b.x || (a.x == b.x && a.y < b.y); }
