/* Internals shared by the Vulkan backend's files: the engine (device, kernels, weights)
 * and the session (device state and activations). Not for use outside engine/vulkan/vk_*.c and
 * the Vulkan tests. */
#ifndef FLASHBOX_ENGINE_VK_INTERNAL_H
#define FLASHBOX_ENGINE_VK_INTERNAL_H

#include "engine/experts/expert_store.h"
#include "engine/model/model.h"
#include "engine/vulkan/vk_forward.h"
#include "shaders/abi.h"

/* The projections of a layer's attention input a, stored back to back so that one matvec
 * computes all of them into one row per token: q_a, kv, then (ratio != 0) the compressor's
 * kv and gate, then (ratio 4) the indexer compressor's kv and gate and the indexer weights.
 * col[] gives each part's first column in that row. */
enum vk_proj_part { VK_PROJ_Q, VK_PROJ_KV, VK_PROJ_CKV, VK_PROJ_CG, VK_PROJ_ICKV, VK_PROJ_ICG, VK_PROJ_IXW, VK_PROJ_COUNT };
struct vk_proj {
    uint32_t col[VK_PROJ_COUNT];
    uint32_t width;             /* columns of the whole row */
    bool fused;                 /* one weight span (same type and row length): one dispatch */
    struct vk_weight w;         /* the concatenated weight when fused */
};

/* A layer's MoE weights arranged for few dispatches: the router, shared gate and shared up
 * back to back (one matvec gives a row [n_expert | gate | up] per token), and the routed
 * gate and up expert tensors back to back (one matvec with ids computes both halves). */
struct vk_moe {
    bool proj_fused, gu_fused;
    struct vk_weight proj;      /* [n_embd, n_expert + 2*n_ff_exp] when proj_fused */
    struct vk_weight gu;        /* [n_embd, n_ff_exp, 2*n_expert] when gu_fused */
    uint32_t width;             /* n_expert + 2*n_ff_exp */
    /* grouped expert lists may walk the LANES tiles of group_tile tokens: the down and the
     * gate/up (the fused pair, else gate and up apart) expert weights group in small tiles
     * (vk_weight_groups_in_small_tiles). Planned once at load; false when experts are paged. */
    bool small_tiles;
};

/* The hc mixes of one block hc site (decode and prefill alike): hc_fn as a K-split view of
 * `parts` slices (see vk_weight_split_k), so each slice is its own workgroup; parts 1 where
 * fn does not split, and the mixes are one matvec of fn. Planned once at load. */
#define VK_HC_MAX_PARTS 32
struct vk_hc_split {
    struct vk_weight w;
    uint32_t parts;
};

struct expert_store;

struct vk_engine {
    const struct model *m;
    /* Routed experts paged through the expert store (engine option expert_cache_mb): not
     * uploaded; three slot tensors in host-visible memory that the store's loader writes
     * into, slot_w[0] gate and slot_w[1] up [n_embd, n_ff_exp, n_slots], slot_w[2] down
     * [n_ff_exp, n_embd, n_slots]. experts is NULL when every expert is resident. */
    struct expert_store *experts;
    struct vk_arena *slot_arena;
    struct vk_weight slot_w[3];
    uint32_t max_batch;          /* tokens per batch: VK_BATCH, or fewer so a batch's experts fit the slots */
    bool paging;
    _Atomic uint64_t session_bytes; /* device memory of the open sessions */
    struct vk_device *d;
    struct vk_ops ops;
    struct vk_arena *weights;
    struct vk_span *tspans;      /* [n_tensors] of the file, in file order */
    uint64_t weight_bytes;
    struct vk_proj *proj;        /* [n_layer] */
    struct vk_moe *moe;          /* [n_layer] */
    struct vk_hc_split (*hc_split)[2]; /* [n_layer][attention site, ffn site] */
    uint32_t proj_width_max;
    uint32_t attn_chunk;         /* keys per attention chunk: 0 = ABI_ATTN_CHUNK (tests set small ones) */
    uint32_t ix_chunk, ix_group; /* the indexer's chunk and merge width: ABI_INDEXER_CHUNK, _GROUP (tests set small ones) */
    uint64_t submit_work;        /* a submit's depth work at most, multiply-adds (vk_token_work); 0: no bound */
};

/* The multiply-adds of the kernels whose work grows with the context, for one token at
 * position pos: the indexer's scores over every CSA entry before it, and each layer's
 * attention over its window and its selection (CSA) or entries (HCA). What a prefill
 * batch costs on top of its weights' work; vk_step bounds it per submit. */
uint64_t vk_token_work(const struct model_hparams *hp, uint32_t pos);
/* Default bound of a submit's depth work on a CPU device (lavapipe): 2^31 multiply-adds,
 * 3 tokens of the tiny model at 1M positions (539 x 10^6 each) or 31 at 128K, which
 * lavapipe ran in about 7 s of CPU time (20 s of wall time with the machine's 2 cores
 * loaded 7 to 19 deep), well inside the fence timeout (VK_FENCE_TIMEOUT_S); a whole
 * 32-token batch at 1M positions did not finish inside it. GPUs run a step in one submit. */
#define VK_CPU_SUBMIT_WORK (2048ull << 20)

/* The tensors of each projection part of layer il (NULL where the layer has none). */
void vk_proj_tensors(const struct model *m, uint32_t il, tensor_ref out[VK_PROJ_COUNT]);

struct vk_layer_state {
    struct vk_span ring;         /* [ring_len][head_dim]: kv of position p in row p % ring_len */
    struct vk_span comp;         /* [n_ctx/ratio][kv_entry_words(head_dim)]: compressed entries as stored (the last
                                  * completes at n_ctx - 1) */
    struct vk_span kvc;          /* main compressor: kv [n_rows][coff*head_dim], then score rows */
    struct vk_span ix_keys;      /* [n_ctx/4][kv_entry_words(ix_dim)] as stored */
    struct vk_span ixc;          /* indexer compressor: kv [8][2*ix_dim], then score rows */
};

/* Entries one compressor completes in a batch at most: VK_BATCH / 4, and one more when the
 * batch starts inside a block. */
#define VK_KV_RAW_ROWS (VK_BATCH / 4 + 1)

#define VK_N_SCRATCH 22 /* activation buffers of a session (vk_session_buffers) */
#define VK_N_HOST 5     /* host-visible ones */

struct vk_session {
    struct vk_engine *e;
    uint32_t n_ctx, pos;
    enum engine_kv_type kv;      /* storage of entries and indexer keys (engine/kv_store.h) */
    struct vk_span kv_raw;       /* f16/fp8: [VK_KV_RAW_ROWS][head_dim], then [VK_KV_RAW_ROWS][ix_dim] float32: a
                                  * step's completed entries and keys before norm_rope packs them */
    uint32_t ring_len;           /* window + VK_BATCH, so one batch never overwrites keys it needs */
    bool needs_reset;            /* compressor state is cleared at the start of the next eval */
    struct vk_arena *arena;      /* device state and activations */
    struct vk_arena *host;       /* host-visible: embeddings in, tokens, logits out */
    struct vk_recorder *rec;
    struct vk_layer_state *layers; /* [n_layer] */
    struct vk_span rope_swa, rope_comp; /* [vk_rope_rows(n_ctx)][rope_dim/2] of (cos, sin), factored (abi.h) */
    /* activations of up to VK_BATCH tokens */
    struct vk_span x;            /* [B][n_hc][n_embd] residual streams */
    struct vk_span hc;           /* [B][n_hc + n_hc^2] post, comb of the current site */
    struct vk_span mix;          /* [B][VK_HC_MAX_PARTS][ABI_HC_MAX_MIX] at most: fn . X of a batch's hc site, [t][part][mix] */
    struct vk_span a;            /* [B][n_embd] normed sublayer input */
    struct vk_span qr;           /* [B][q_rank] */
    struct vk_span q;            /* [B][n_head][head_dim] */
    struct vk_span proj;         /* [B][proj_width_max]: the attention input's projections */
    struct vk_span o;            /* [B][n_head][head_dim] */
    struct vk_span z;            /* [B][o_groups*o_rank] */
    struct vk_span f;            /* [B][n_embd] attention output */
    struct vk_span ixq;          /* [B][ix_head][ix_dim] */
    uint32_t ix_rows;            /* tokens per indexer selection: vk_indexer_rows(ix_pairs) */
    uint64_t ix_pairs[2];        /* a token's pairs in each area of ixs (vk_indexer_levels at n_ctx / 4) */
    struct vk_span ixs;          /* [ix_rows][ix_pairs[0]] then [ix_rows][ix_pairs[1]] (order key, index) pairs:
                                  * the indexer's sorted lists */
    struct vk_span sel;          /* [B][ix_topk] int32 */
    struct vk_span mp;           /* [B][n_expert + 2*n_ff_exp]: router logits (then scores), shared gate, up */
    struct vk_span ids;          /* [B][n_expert_used] int32 */
    struct vk_span grp;          /* [2*n_expert + 1 + B*n_expert_used] int32: moe_group lists */
    struct vk_span rw;           /* [B][n_expert_used] routing weights */
    struct vk_span gu;           /* [2][B*K][n_ff_exp]: routed gate rows t*K+k, then up rows */
    struct vk_span yd;           /* [B*(K+1)][n_embd]: routed outputs t*K+k, then the shared ones */
    struct vk_span slot_ids;     /* host: [B][n_expert_used] int32, the slot of each routed expert (paging) */
    int32_t *ids_host;           /* [B][n_expert_used] the router's choices read back (paging) */
    /* Paging guesses: layer il + 1 + j's router applied to layer il's MoE input (j <
     * EXPERT_STORE_LOOKAHEAD), recorded with layer il's router and read back with its ids. */
    struct vk_span guess_mp;     /* [LOOKAHEAD][B][n_expert] router logits, then scores */
    struct vk_span guess_ids;    /* [LOOKAHEAD][B][n_expert_used] int32 */
    struct vk_span guess_rw;     /* [LOOKAHEAD][B][n_expert_used] weights (unused) */
    int32_t *guess_host;         /* [LOOKAHEAD][B][n_expert_used] guesses read back */
    bool guessed[EXPERT_STORE_LOOKAHEAD]; /* which guesses the current layer recorded */
    int32_t pinned_layer;        /* layer whose slots stay pinned until the GPU has used them, or -1 */
    uint32_t n_dispatch_flushed; /* dispatches of this step already submitted by a paging flush */
    uint64_t counted_bytes;      /* device bytes this session added to e->session_bytes */
    struct vk_span in_embd;      /* host: [B][n_embd] */
    struct vk_span tokens;       /* host: [B] int32 */
    struct vk_span pos_rows;     /* host: [B] int32, the position of each row of the step (norm_rope's table) */
    struct vk_span logits;       /* host: [B][n_vocab] */
    float *embd_row;             /* [n_embd] host scratch */
    VkBufferCopy *copies;        /* [B*n_hc] embedding -> stream copies */
    struct vk_profile *prof;     /* &profile once profiling was asked for */
    struct vk_profile profile;
    uint8_t *kinds;              /* [max dispatches] kind of each timed dispatch */
    int *stamps;                 /* [max dispatches] timestamp after it */
    uint32_t n_timed;
    uint64_t weight_bytes_step;
};

/* Rows of a session's factored rope table (abi.h, ABI_ROPE_LO_ROWS) for n_ctx positions. */
static inline uint32_t vk_rope_rows(uint32_t n_ctx) { return ABI_ROPE_LO_ROWS + (n_ctx >> ABI_ROPE_LO_BITS) + 1; }
/* Fills the factored table's rows (cos, sin of p * freqs[i], computed in double). */
void vk_rope_fill(const double *freqs, uint32_t half, uint32_t rows, float *tab);
/* The indexer's selection over up to n_vis entries a token (shaders/abi.h): level 0 sorts
 * chunks of `chunk` entries, each later level merges `group` lists, until one is left (the
 * selection). A list of level L covers chunk * group^L entries and holds at most topk of
 * them; even levels' lists go to a token's first area, odd levels' to its second. Returns
 * the merge levels; pairs[2]: the (key, index) pairs a token's two areas hold at most. */
static inline uint32_t vk_indexer_levels(uint64_t n_vis, uint32_t topk, uint32_t chunk, uint32_t group, uint64_t pairs[2])
{
    uint32_t level = 0;
    pairs[0] = pairs[1] = 0;
    for (uint64_t span = chunk, lists = (n_vis + chunk - 1) / chunk; lists > 1;
         span *= group, lists = (lists + group - 1) / group, level++) {
        const uint64_t p = lists * (span < topk ? span : topk);
        if (p > pairs[level % 2]) pairs[level % 2] = p;
    }
    return level;
}
/* Tokens whose indexer lists are held at once (one selection each group): VK_BATCH, or
 * fewer so that they stay within VK_INDEXER_LIST_BYTES at long contexts. */
#define VK_INDEXER_LIST_BYTES (32ull << 20)
static inline uint32_t vk_indexer_rows(const uint64_t pairs[2])
{
    const uint64_t per = (pairs[0] + pairs[1]) * 8;
    const uint64_t rows = per ? VK_INDEXER_LIST_BYTES / per : VK_BATCH;
    return rows < 1 ? 1 : rows > VK_BATCH ? VK_BATCH : (uint32_t)rows;
}

const struct vk_span *vk_tensor_span(const struct vk_engine *e, tensor_ref t);
int vk_weight_of(const struct vk_engine *e, tensor_ref t, uint32_t n_mat_split, struct vk_weight *w, char *err,
                 size_t err_len);

int vk_engine_open(const struct model *m, const struct engine_options *opt, void **ctx, char *err, size_t err_len);
void vk_engine_close(void *ctx);
int vk_session_create(void *ctx, const struct model *m, uint32_t n_ctx, enum engine_kv_type kv, void **state, char *err,
                      size_t err_len);
void vk_session_destroy(void *state);
void vk_session_reset(void *state);
int vk_eval(void *ctx, void *state, const int32_t *tokens, uint32_t n, float *logits, bool all_logits,
            char *err, size_t err_len);
int vk_step(void *ctx, const struct backend_step *items, uint32_t n_items, char *err, size_t err_len);

int vk_state_save(void *state, uint32_t *data, char *err, size_t err_len);
int vk_state_load(void *state, uint32_t pos, const uint32_t *data, char *err, size_t err_len);

/* engine/vulkan/vk_experts.c: expert paging */
int vk_experts_open(struct vk_engine *e, const struct engine_options *opt, char *err, size_t err_len);
void vk_experts_close(struct vk_engine *e);
/* After the router of layer il ran (and was waited for): pins the n_routed experts it chose,
 * starts the loads of the guesses for later layers recorded with it (s->guessed), waits for
 * its own and writes their slots into s->slot_ids. Releases the previously pinned layer
 * first; drops layer il's guesses that were wrong. */
int vk_experts_map(struct vk_engine *e, struct vk_session *s, uint32_t il, uint32_t n_routed, char *err, size_t err_len);
/* Starts loads of the hash layers' experts for tokens[nt] before the batch runs. */
void vk_experts_prefetch_hash(struct vk_engine *e, const int32_t *tokens, uint32_t nt, int32_t *scratch);
void vk_experts_release(struct vk_engine *e, struct vk_session *s);
int vk_expert_counters(void *ctx, struct expert_counters *out);
int vk_device_memory(void *ctx, uint64_t *used, uint64_t *total);

/* Loop iterations one invocation of the indexer or attention kernels runs at most at
 * position pos (workgroups of wg, the indexer's chunk and merge width): CPU drivers stop
 * loops past 65,535 (vk_forward.c). */
uint64_t vk_cpu_loop_iterations(const struct model_hparams *hp, uint32_t wg, uint32_t chunk, uint32_t group, uint32_t pos);

/* engine/vulkan/vk_bench.c */
int vk_copy_bandwidth(void *ctx, double *bytes_per_s, char *err, size_t err_len);
int vk_bench_kernels(void *ctx, const struct model *m, FILE *out, char *err, size_t err_len);

#endif
