/* The one ABI between the C host (engine/vulkan/vk_*.c) and the GLSL kernels (the .comp files):
 * push-constant layouts, descriptor binding slots, workgroup sizes and specialization
 * constant ids. Valid C11 and valid GLSL 450: each push block is written once as a field
 * list macro, expanded into a C struct (with _Static_assert on its size) and into the
 * shader's push_constant block. Every field is a 32-bit scalar, so std430/push-constant
 * offsets equal C offsets with no padding. */
#ifndef FLASHBOX_SHADERS_ABI_H
#define FLASHBOX_SHADERS_ABI_H

#ifdef VULKAN /* defined by glslangValidator when compiling for Vulkan */
#define ABI_U32 uint
#define ABI_F32 float
#define ABI_PUSH(fields) layout(push_constant) uniform push_block { fields(ABI_U32, ABI_F32) } pc;
#else
#include <stdint.h>
#define ABI_U32 uint32_t
#define ABI_F32 float
#define ABI_STRUCT(name, fields) struct name { fields(ABI_U32, ABI_F32) };
#endif

/* Every kernel works in workgroups of this many invocations (one or more subgroups). */
#define ABI_WG_SIZE 64

/* Specialization constant ids. */
#define ABI_SPEC_TOK_TILE 0 /* matvec: tokens processed per weight load (1 decode, 8 prefill) */
#define ABI_SPEC_WG_SIZE 1  /* matvec: invocations per workgroup (a multiple of the subgroup size) */
#define ABI_SPEC_ROWS_PER_LANE 2 /* matvec_lanes: rows each invocation computes */
#define ABI_SPEC_KSPLIT_UNITS 2  /* matmul_ksplit: units of K per lane per pass (ROWS_PER_LANE's id; it has no rows per lane) */
#define ABI_SPEC_ATTN_HEADS 3    /* attention_heads: heads per workgroup */
#define ABI_SPEC_ATTN_KV4 4      /* attention, attention_heads: float4 of a head row per lane */
#define ABI_SPEC_KSPLIT_LPR 6    /* matmul_ksplit: lanes per row */
#define ABI_SPEC_TAIL_TILE 7     /* matmul_ksplit, matvec_lanes: 1 in grouped MoE pipelines, whose lists end in tail tiles
                                    (matmul_ksplit: half the token tile; matvec_lanes: one token); 0 elsewhere */

/* Weight types of the matvec family (values of the W_TYPE define in the .comp files). */
#define ABI_WTYPE_F32 0
#define ABI_WTYPE_F16 1
#define ABI_WTYPE_BF16 2
#define ABI_WTYPE_Q8_0 3
#define ABI_WTYPE_MXFP4 4
/* ggml's K-quants and i-quants (super-blocks of 256; IQ4_NL blocks of 32): read by the
 * subgroup matvec kernel (dequant_ggml.glsl), 32 elements at a time; Q4_K and Q5_K also by
 * the LANES kernel (dequant_lanes_k.glsl), a super-block per chunk. */
#define ABI_WTYPE_Q2_K 5
#define ABI_WTYPE_Q3_K 6
#define ABI_WTYPE_Q4_K 7
#define ABI_WTYPE_Q5_K 8
#define ABI_WTYPE_Q6_K 9
#define ABI_WTYPE_IQ2_XXS 10
#define ABI_WTYPE_IQ2_XS 11
#define ABI_WTYPE_IQ2_S 12
#define ABI_WTYPE_IQ3_XXS 13
#define ABI_WTYPE_IQ1_S 14
#define ABI_WTYPE_IQ1_M 15
#define ABI_WTYPE_IQ4_NL 16
#define ABI_WTYPE_IQ4_XS 17
#define ABI_WTYPE_COUNT 18

/* ---- matvec / matmul: y[z][t][o] (+)= scale * sum_i W_z[o][i] * x[z][t][i] -------------
 * Bindings: weights as raw 32-bit words (file format), x and y float32, ids int32.
 * Workgroup (gx, 1, gz): gx covers rows_per_wg rows each, gz the expert slots (or 1).
 * The weight matrix of slot z starts at byte w_off + (ids ? ids[ids_off + z] : z) * w_zstride;
 * row o at + o * row_bytes. */
#define ABI_MATVEC_BIND_W 0
/* matvec_lanes: rows are walked in chunks of whole 16-byte texels: 272 bytes for the block
 * types (8 Q8_0 or 16 MXFP4 blocks), 128 bytes for the float types, a super-block for Q4_K
 * (144) and Q5_K (176). */
#define ABI_LANES_BLOCK_CHUNK_BYTES 272
#define ABI_LANES_FLOAT_CHUNK_BYTES 128
/* matmul_ksplit: the block types' token tile with K split across a subgroup's lanes, in
 * units of 64 elements (two blocks: 68 bytes of Q8_0, 34 of MXFP4). */
#define ABI_KSPLIT_UNIT_ELEMS 64
#define ABI_MATVEC_BIND_X 1
#define ABI_MATVEC_BIND_Y 2
#define ABI_MATVEC_BIND_IDS 3
/* The i-quants with a grid (IQ2_*, IQ3_XXS, IQ1_*) only: every grid, one table two entries a
 * word (shaders/iq_grids.h), uploaded once per device: as GLSL constants lavapipe took
 * seconds to minutes per dispatch */
#define ABI_MATVEC_BIND_GRID 4
#define ABI_MATVEC_FLAG_ACCUMULATE 1u /* y += ... instead of y = ... */
#define ABI_MATVEC_FLAG_IDS 2u        /* pick slot z's matrix through ids[] */
#define ABI_MATVEC_FLAG_VEC 4u        /* aligned rows and x: the vectorised path */
#define ABI_MATVEC_FLAG_GROUPED 8u    /* prefill MoE: slot z = expert, tokens from grouped lists */

#define ABI_MATVEC_FIELDS(U, F) \
    U n_in;          /* elements per row */ \
    U n_out;         /* rows */ \
    U n_tok;         /* tokens */ \
    U rows_per_wg;   /* rows one workgroup covers */ \
    U w_off;         /* bytes: start of the (first) matrix in the weight binding */ \
    U row_bytes;     /* bytes per row in the file format */ \
    U w_zstride;     /* bytes between expert matrices */ \
    U x_off;         /* floats */ \
    U x_tstride;     /* floats between tokens */ \
    U x_zstride;     /* floats between x vectors of consecutive slot groups */ \
    U x_zdiv;        /* slots per x vector: slot z reads x vector z / x_zdiv (>= 1) */ \
    U y_off;         /* floats */ \
    U y_tstride; \
    U y_zstride; \
    U ids_off;       /* ints */ \
    U ids_wrap;      /* with ids: slots from ids_wrap on reuse ids[z - ids_wrap] (0: none) */ \
    U mat_add;       /* ... and take matrix ids[...] + mat_add (gate and up stored back to back) */ \
    U y_wrap_add;    /* ... and write mat_add's rows y_wrap_add floats further */ \
    U flags;         /* ABI_MATVEC_FLAG_* */ \
    F scale;         /* multiplies the dot product */

#ifndef VULKAN
ABI_STRUCT(abi_matvec_push, ABI_MATVEC_FIELDS)
_Static_assert(sizeof(struct abi_matvec_push) == 20 * 4, "matvec push block: 20 words");
_Static_assert(sizeof(struct abi_matvec_push) <= 128, "push constants fit the guaranteed 128 bytes");
#endif

/* ---- rmsnorm: y[t][i] = x[t][i] / sqrt(mean_i x^2 + eps) * (w ? w[i] : 1) -------------
 * One workgroup per row (token, or head when rows are heads). Bindings: x, y, w. */
#define ABI_RMSNORM_BIND_X 0
#define ABI_RMSNORM_BIND_Y 1
#define ABI_RMSNORM_BIND_W 2
#define ABI_RMSNORM_FLAG_WEIGHT 1u

#define ABI_RMSNORM_FIELDS(U, F) \
    U n;             /* elements per row */ \
    U n_rows; \
    U x_off;  U x_stride; /* floats */ \
    U y_off;  U y_stride; \
    U w_off;         /* floats */ \
    U flags; \
    F eps;

#ifndef VULKAN
ABI_STRUCT(abi_rmsnorm_push, ABI_RMSNORM_FIELDS)
_Static_assert(sizeof(struct abi_rmsnorm_push) == 9 * 4, "rmsnorm push block: 9 words");
#endif

/* ---- hc (one workgroup per token), spec §3.2: with ABI_HC_FLAG_POST it first finishes the
 * previous sublayer (hc_post) in place: X[k][i] = post[k] * F[i] + sum_j comb[j][k] X[j][i],
 * where F[i] sums n_src parts of the token's sublayer output (src_off + t*src_tstride +
 * s*src_sstride) plus, when extra_tstride != 0, one more at extra_off + t*extra_tstride (the
 * shared expert), and post/comb are the token's previous hc row. Then hc_pre: mixes
 * m = rms(X) * (fn . X), pre = sigmoid(m*scale0 + base) + hc_eps, post = 2 sigmoid(...),
 * comb = Sinkhorn(...) (all iterations here), y = rmsnorm(sum_j pre_j X_j) * norm; or, with
 * ABI_HC_FLAG_HEAD, hc_head (pre mixes only) and the final norm. One dispatch per site. */
#define ABI_HC_MAX_STREAMS 4 /* n_hc */
#define ABI_HC_MAX_MIX 24 /* (2 + n_hc) * n_hc for n_hc <= 4 */
#define ABI_HC_BIND_X 0       /* [n_tok][n_hc][n_embd] */
#define ABI_HC_BIND_FN 1      /* [mix][n_hc*n_embd] */
#define ABI_HC_BIND_BASE 2    /* [mix] */
#define ABI_HC_BIND_SCALE 3   /* [3] */
#define ABI_HC_BIND_NORM 4    /* [n_embd] */
#define ABI_HC_BIND_Y 5       /* [n_tok][n_embd] */
#define ABI_HC_BIND_HC 6      /* [n_tok][n_hc + n_hc*n_hc]: post, then comb[j][k] */
#define ABI_HC_BIND_SRC 7     /* the previous sublayer's output parts */
/* hc_texel (CPU drivers, prefill's split dispatches only): X and SRC read through float4
 * texel views of their chunks, which start x_tex_off / src_tex_off floats before the
 * bindings above (reads of X there see it as it was when the dispatch began) */
#define ABI_HC_BIND_X_TEX 8
#define ABI_HC_BIND_SRC_TEX 9
#define ABI_HC_FLAG_HEAD 1u   /* hc_head: only the pre mixes, no post/comb */
#define ABI_HC_FLAG_POST 2u   /* apply the previous sublayer's hc_post first */
#define ABI_HC_FLAG_POST_ONLY 4u   /* stop after hc_post */
/* The mixes fn . X (before the rms scale) are read at mix_off + t * mix_tstride from the
 * buffer bound at ABI_HC_BIND_FN (fn itself is not needed then) instead of computed here:
 * the sum of mix_parts (0 counts as 1) partial rows of (2 + n_hc) * n_hc, one after the
 * other. Prefill batches take this split: hc_post, the mixes as one token-tiled matmul (fn
 * read once per tile, not once per token), then this; decode takes it with the mixes'
 * K split into parts, so many workgroups share fn's read instead of one (vk_forward.c). */
#define ABI_HC_FLAG_MIXES_GIVEN 8u

#define ABI_HC_FIELDS(U, F) \
    U n_embd; U n_hc; U n_tok; U sinkhorn_iters; \
    U x_off; U y_off; U hc_off;   /* floats */ \
    U flags; \
    U src_off; U src_tstride; U src_sstride; U n_src; U extra_off; U extra_tstride; \
    F rms_eps; F hc_eps; \
    U mix_off; U mix_tstride; U mix_parts; /* floats, floats, partial rows summed */ \
    U x_tex_off; U src_tex_off;   /* floats (hc_texel) */

/* ---- norm_rope: per (row h, token t) workgroup: optional RMSNorm (optional weight) over n,
 * then RoPE on the last rope_dim elements in interleaved pairs at position
 * pos_base + t * pos_step, reading the cos/sin table rope[pos][rope_dim/2][2] at rope_off.
 * Output row: y_off + ((y_row0 + t) % y_tmod) * y_tstride + h * y_hstride.
 * With ABI_NORM_ROPE_FLAG_POS_ROWS token t's position is instead pos_rows[pos_base + t *
 * pos_step] (int32, binding ABI_NORM_ROPE_BIND_POS): rows of several sessions at unrelated
 * positions in one dispatch. Every dispatch binds all five (any span where a flag is off). */
#define ABI_NORM_ROPE_BIND_X 0
#define ABI_NORM_ROPE_BIND_Y 1
#define ABI_NORM_ROPE_BIND_W 2
#define ABI_NORM_ROPE_BIND_ROPE 3
#define ABI_NORM_ROPE_BIND_POS 4
#define ABI_NORM_ROPE_FLAG_NORM 1u
#define ABI_NORM_ROPE_FLAG_WEIGHT 2u
#define ABI_NORM_ROPE_FLAG_ROPE 4u
#define ABI_NORM_ROPE_FLAG_POS_ROWS 8u
/* The rope table (cos, sin of pos * freq_i, rows of rope_dim/2 pairs) is factored so that
 * it does not grow with the context: rows [0, ABI_ROPE_LO_ROWS) hold positions 0..1023,
 * row ABI_ROPE_LO_ROWS + h holds position h * ABI_ROPE_LO_ROWS, and a kernel multiplies the
 * two (angle addition) for pos = h * ABI_ROPE_LO_ROWS + l (rope.glsl). Below 1024 the
 * high row is (1, 0), so those positions read exactly the stored value. */
#define ABI_ROPE_LO_BITS 10
#define ABI_ROPE_LO_ROWS (1u << ABI_ROPE_LO_BITS)
/* KV storage of compressed entries and indexer keys (engine.h, enum engine_kv_type;
 * layout in engine/kv_store.h, shaders/kv.glsl): an entry is a whole number of 32-bit words. */
#define ABI_KV_F32 0u
#define ABI_KV_F16 1u
#define ABI_KV_FP8 2u
/* kv != ABI_KV_F32: y is a buffer of stored entries (rows of y_tstride words) and each
 * normed, rotated row is packed into it (compressed entries and indexer keys). */
#define ABI_NORM_ROPE_FIELDS(U, F) \
    U n; U rope_dim; U flags; \
    U x_off; U x_tstride; U x_hstride; \
    U y_off; U y_tstride; U y_hstride; U y_row0; U y_tmod; \
    U w_off; U rope_off; U pos_base; U pos_step; \
    F eps; U kv;

/* ---- compress: a compressor's state machine for n_tok tokens, one invocation per channel
 * (spec §3.7). kv/score rows of the batch [n_tok][coff*width] come from matmuls; the state
 * holds n_rows rows of kv then n_rows rows of score. Completed blocks write the pooled,
 * not yet normalised entry to out[pos / ratio - out_row0][width] (out_row0: 0 into the
 * entries themselves, float32 storage; else a staging row that norm_rope packs). */
#define ABI_COMPRESS_BIND_KV 0
#define ABI_COMPRESS_BIND_SCORE 1
#define ABI_COMPRESS_BIND_APE 2
#define ABI_COMPRESS_BIND_STATE 3
#define ABI_COMPRESS_BIND_OUT 4
#define ABI_COMPRESS_FIELDS(U, F) \
    U width; U ratio; U coff; U pos0; U n_tok; \
    U kv_off; U score_off; U in_tstride; U ape_off; U state_off; U out_off; U out_row0;

/* ---- indexer (spec §3.8): score[b] = sum_h w_h * scale * relu(q_h . k_b) over the visible
 * entries b < (pos+1)/4, then the top-k (descending, ties to the lower index) into sel
 * [n_tok][topk] from sel_off. indexer.comp scores and sorts chunks of `chunk` entries (a
 * power of two up to ABI_INDEXER_MAX_CHUNK; dispatch (chunks, n_tok)); indexer_merge.comp
 * merges `group` sorted lists at a time, level after level, until one is left
 * (engine/vulkan/vk_ops.c, vk_op_indexer_level). Lists are (order key, index) pairs, a
 * token's at pair list_off + t * list_tstride; ABI_INDEXER_FLAG_FINAL writes the selection
 * instead. Keys are stored as kv says, key_words words each, from word keys_off. */
#define ABI_INDEXER_BIND_Q 0
#define ABI_INDEXER_BIND_W 1
#define ABI_INDEXER_BIND_KEYS 2
#define ABI_INDEXER_BIND_LISTS 3
#define ABI_INDEXER_BIND_SEL 4
#define ABI_INDEXER_MAX_TOPK 2048   /* a merge's binary search takes at most 12 passes */
#define ABI_INDEXER_CHUNK 64        /* entries a chunk unless a test asks (FLASHBOX_VK_INDEX_CHUNK) */
#define ABI_INDEXER_MAX_CHUNK 256   /* the sort's shared memory */
#define ABI_INDEXER_GROUP 8         /* lists a merge takes unless a test asks (FLASHBOX_VK_INDEX_GROUP) */
#define ABI_INDEXER_MAX_GROUP 16
#define ABI_INDEXER_FLAG_FINAL 1u
#define ABI_INDEXER_FIELDS(U, F) \
    U n_head; U dim; U topk; U pos0; U n_tok; \
    U q_off; U w_off; U w_tstride; U keys_off; U list_off; U list_tstride; U sel_off; \
    F scale; U kv; U key_words; U chunk; U flags;
/* indexer_merge: input lists of `span` entries each (min(topk, span) pairs apart) from pair
 * in_off + t * in_tstride, output lists out_stride pairs apart from out_off + t * out_tstride;
 * `parts` workgroups per output list, ABI_INDEXER_MERGE_PER_INVOCATION candidates each
 * invocation. */
#define ABI_INDEXER_MERGE_BIND_LISTS 0
#define ABI_INDEXER_MERGE_BIND_SEL 1
#define ABI_INDEXER_MERGE_PER_INVOCATION 8u
#define ABI_INDEXER_MERGE_FIELDS(U, F) \
    U topk; U pos0; U n_tok; U span; U group; U parts; U in_off; U in_tstride; U out_off; U out_tstride; \
    U out_stride; U sel_off; U flags;

/* ---- attention: one workgroup per (head, token): softmax with a sink over the window
 * (ring rows p % ring_len) and the compressed entries (all completed ones, or the
 * indexer's selection when ratio == 4), value = key, then inverse RoPE of the output. */
#define ABI_ATTN_BIND_Q 0
#define ABI_ATTN_BIND_RING 1
#define ABI_ATTN_BIND_COMP 2
#define ABI_ATTN_BIND_SEL 3
#define ABI_ATTN_BIND_SINKS 4
#define ABI_ATTN_BIND_ROPE 5
#define ABI_ATTN_BIND_O 6
/* Keys are taken in chunks of `chunk` (push field; 0 means ABI_ATTN_CHUNK, larger values are
 * clamped to it): each chunk's scores and probabilities live in shared memory, its partial
 * softmax (maximum, sum, weighted values) is folded into the running one in chunk order, so
 * any number of keys is attended and the order of the sums depends only on the key count. */
#define ABI_ATTN_CHUNK 2048
#define ABI_ATTN_MAX_HEAD_DIM 512 /* rows are float4; q per lane, output per invocation in registers */
/* Compressed entries are stored as kv says, comp_words words each from word comp_off;
 * kv != ABI_KV_F32 only with attention.comp (storage buffers), which unpacks them. */
#define ABI_ATTN_FIELDS(U, F) \
    U head_dim; U n_head; U rope_dim; U window; U ring_len; U ratio; U topk; U pos0; U n_tok; \
    U q_off; U ring_off; U comp_off; U sel_off; U sinks_off; U rope_off; U o_off; \
    F scale; U chunk; U kv; U comp_words;

/* ---- moe_group: one invocation sorts the batch's n_slots routed slots (slot z = t*k + j
 * picks expert ids[z]) by expert into n_grp = min(n_expert, n_slots) lists, one per expert
 * used, in expert order (so a grouped matvec dispatches n_grp workgroup slices, not
 * n_expert): out[g] = first list index of list g (lists past the experts used are empty;
 * out[n_grp] = n_slots), then out[n_grp + 1 + i] = the slots in list order, ascending
 * within one, then out[n_grp + 1 + n_slots + g] = list g's expert. */
#define ABI_MOE_GROUP_BIND_IDS 0
#define ABI_MOE_GROUP_BIND_OUT 1
#define ABI_MOE_GROUP_FIELDS(U, F) \
    U n_expert; U n_slots; U n_grp;

/* ---- router: one workgroup per token: score = sqrt(softplus(logit)); experts from
 * tid2eid[tok] (hash layers) or the top-k of score + bias; weights renormalised (flag) and
 * scaled. Writes ids [n_tok][k] and weights [n_tok][k]. */
#define ABI_ROUTER_BIND_LOGITS 0
#define ABI_ROUTER_BIND_BIAS 1   /* bias [n_expert], or tid2eid [n_vocab][k] with FLAG_HASH */
#define ABI_ROUTER_BIND_TOKENS 2
#define ABI_ROUTER_BIND_IDS 3
#define ABI_ROUTER_BIND_WEIGHTS 4
#define ABI_ROUTER_FLAG_HASH 1u
#define ABI_ROUTER_FLAG_NORM 2u
#define ABI_ROUTER_MAX_EXPERTS 1024
#define ABI_ROUTER_MAX_K 16
#define ABI_ROUTER_FIELDS(U, F) \
    U n_expert; U k; U n_tok; U flags; U logits_off; U logits_tstride; U bias_off; U tokens_off; U ids_off; \
    U weights_off; F scale;

/* ---- swiglu: h = silu(min(g, lim)) * clamp(u, -lim, lim) * weight for rows r < n_rows of
 * n_ff, in place on g. Rows below n_routed are routed experts: g at gu[r*n_ff], u at
 * gu[u_off + r*n_ff], weights[r], lim_routed. The others are the shared expert of token
 * t = r - n_routed: g at sh[sh_off + t*sh_tstride], u n_ff further, weight 1, lim_shared.
 * A limit <= 0 disables the clamp. With ABI_SWIGLU_FLAG_VEC4 (n_ff, u_off, sh_off and
 * sh_tstride multiples of 4) each invocation does four adjacent elements: on CPU drivers a
 * load or store is a loop over the lanes, so one float4 access replaces four. */
#define ABI_SWIGLU_FLAG_VEC4 1u
#define ABI_SWIGLU_BIND_GU 0
#define ABI_SWIGLU_BIND_SHARED 1
#define ABI_SWIGLU_BIND_WEIGHTS 2
#define ABI_SWIGLU_FIELDS(U, F) \
    U n_ff; U n_rows; U n_routed; U weights_off; U u_off; U sh_off; U sh_tstride; U flags; \
    F lim_routed; F lim_shared;

#ifndef VULKAN
ABI_STRUCT(abi_hc_push, ABI_HC_FIELDS)
ABI_STRUCT(abi_norm_rope_push, ABI_NORM_ROPE_FIELDS)
ABI_STRUCT(abi_compress_push, ABI_COMPRESS_FIELDS)
ABI_STRUCT(abi_indexer_push, ABI_INDEXER_FIELDS)
ABI_STRUCT(abi_indexer_merge_push, ABI_INDEXER_MERGE_FIELDS)
ABI_STRUCT(abi_attn_push, ABI_ATTN_FIELDS)
ABI_STRUCT(abi_router_push, ABI_ROUTER_FIELDS)
ABI_STRUCT(abi_swiglu_push, ABI_SWIGLU_FIELDS)
ABI_STRUCT(abi_moe_group_push, ABI_MOE_GROUP_FIELDS)
_Static_assert(sizeof(struct abi_moe_group_push) == 3 * 4, "moe_group push block");
_Static_assert(sizeof(struct abi_hc_push) == 21 * 4, "hc push block");
_Static_assert(sizeof(struct abi_norm_rope_push) == 17 * 4, "norm_rope push block");
_Static_assert(sizeof(struct abi_compress_push) == 12 * 4, "compress push block");
_Static_assert(sizeof(struct abi_indexer_push) == 17 * 4, "indexer push block");
_Static_assert(sizeof(struct abi_indexer_merge_push) == 13 * 4, "indexer_merge push block");
_Static_assert(sizeof(struct abi_attn_push) == 20 * 4, "attention push block");
_Static_assert(sizeof(struct abi_router_push) == 11 * 4, "router push block");
_Static_assert(sizeof(struct abi_swiglu_push) == 10 * 4, "swiglu push block");
#endif

#endif
