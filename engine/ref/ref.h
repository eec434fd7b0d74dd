/* The CPU reference forward pass of deepseek4 (spec §3), one function per step, float32
 * storage with double accumulation. It is the correctness oracle: the Vulkan backend's
 * kernels and whole-model logits are compared against it.
 *
 * Batch prefill and token-by-token decode share one state machine: ref_forward runs a
 * batch layer by layer (every token through layer 0, then layer 1, ...), which must give
 * the same logits as feeding the tokens one at a time. */
#ifndef FLASHBOX_ENGINE_REF_H
#define FLASHBOX_ENGINE_REF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/engine.h"
#include "engine/model/model.h"

/* A KV compressor's per-token state machine (spec §3.7). ratio 4 overlaps blocks
 * (coff 2: rows 0..3 the previous block, rows 4..7 the current one); any other ratio
 * pools one block of `ratio` rows (coff 1). */
struct ref_compressor {
    uint32_t ratio;
    uint32_t width;     /* output entry width: head_dim (main) or ix_dim (indexer) */
    uint32_t coff;      /* 2 for ratio 4, else 1 */
    uint32_t n_rows;    /* 2*ratio for ratio 4, else ratio */
    float *kv;          /* [n_rows][coff*width] */
    float *score;       /* [n_rows][coff*width] */
};

struct ref_layer_state {
    float *ring;                /* [window][head_dim]: kv of position p in row p % window */
    uint32_t *comp;             /* [n_ctx/ratio][kv_entry_words(head_dim)]: compressed entries, as stored */
    struct ref_compressor kvc;  /* main compressor (ratio != 0) */
    uint32_t *ix_keys;          /* [n_ctx/4][kv_entry_words(ix_dim)]: indexer keys (ratio 4), as stored */
    struct ref_compressor ixc;  /* indexer compressor (ratio 4) */
};

/* Scratch for one token through one layer, sized from the hyper-parameters at creation. */
struct ref_scratch {
    float *rowbuf;      /* [max row length] dequantized weight row */
    float *a;           /* [n_embd] sublayer input */
    float *f;           /* [n_embd] sublayer output */
    float *qr;          /* [q_rank] */
    float *q;           /* [n_head][head_dim] */
    float *kv;          /* [head_dim] */
    float *o;           /* [n_head][head_dim] attention output */
    float *z;           /* [o_groups*o_rank] */
    float *entry;       /* [head_dim] pooled entry */
    float *key;         /* [max(head_dim, ix_dim)] a stored entry or key unpacked (f16, fp8) */
    float *ixq;         /* [ix_head][ix_dim] */
    float *ixw;         /* [ix_head] */
    float *ix_score;    /* [n_ctx/4] */
    int32_t *ix_sel;    /* [ix_topk] selected entries */
    float *att;         /* [window + n_ctx/4 + n_ctx/128] attention logits of one head */
    double *acc;        /* [head_dim] attention output accumulator */
    float *gate_logits; /* [n_expert] router scores */
    float *router_biased; /* [n_expert] scores + selection bias */
    float *guess_scores; /* [n_expert] a later layer's router scores (expert prefetch guesses) */
    float *expert_h;    /* [n_ff_exp] */
    float *expert_u;    /* [n_ff_exp] */
    float *expert_y;    /* [n_embd] */
    float *hc_mix;      /* [(2+n_hc)*n_hc] */
    float *hc_post;     /* [n_hc] */
    float *hc_comb;     /* [n_hc][n_hc] */
    float *x_old;       /* [n_hc][n_embd] residual before the sublayer */
    double *freqs_swa;  /* [rope_dim/2] */
    double *freqs_comp; /* [rope_dim/2] */
    /* not scratch: the session's product observer (session_observe), NULL when none, and the
     * model file's tensor table that its tensor indices count from */
    const struct engine_observer *obs;
    const struct gguf_tensor *obs_tensors;
};

/* Shows the observer, if any, the input x of a product with weight w (expert: the routed
 * expert, -1 for any other matrix). One test of a pointer when no observer is set. */
static inline void ref_observe(const struct ref_scratch *s, tensor_ref w, int32_t expert, const float *x)
{
    if (s->obs) s->obs->fn(s->obs->ctx, (uint32_t)(w - s->obs_tensors), expert, x, (uint32_t)w->ne[0]);
}

#define REF_BATCH 32 /* tokens per layer-major chunk */

struct expert_store;

struct ref_state {
    const struct model *m;
    struct expert_store *experts;   /* NULL: routed experts read from the mapped file */
    uint32_t n_ctx;
    uint32_t pos;                   /* next position */
    enum engine_kv_type kv;         /* storage of entries and indexer keys (kv_store.h) */
    struct ref_layer_state *layers; /* [n_layer] */
    struct ref_scratch s;
    float *x_batch;                 /* [REF_BATCH][n_hc][n_embd] residual streams */
    /* what the last token did, for tests */
    int32_t last_experts[MODEL_MAX_LAYERS][64];     /* selected routed experts */
    uint32_t last_ix_visible[MODEL_MAX_LAYERS];     /* compressed entries the indexer saw */
    uint32_t last_ix_selected[MODEL_MAX_LAYERS];    /* entries it kept */
};

int ref_state_create(const struct model *m, uint32_t n_ctx, struct ref_state **out, char *err, size_t err_len);
/* The same with entries and keys stored as kv says (ref_state_create: float32). */
int ref_state_create_kv(const struct model *m, uint32_t n_ctx, enum engine_kv_type kv, struct ref_state **out, char *err,
                        size_t err_len);
void ref_state_destroy(struct ref_state *st);
void ref_state_reset(struct ref_state *st);

/* Runs tokens[n] at positions st->pos.. and advances st->pos. logits: NULL, [n_vocab] of
 * the last token, or [n][n_vocab] when all_logits. Fails (state untouched) when a token is
 * out of range or the context would overflow. */
int ref_forward(struct ref_state *st, const int32_t *tokens, uint32_t n, float *logits, bool all_logits,
                char *err, size_t err_len);

/* ---- steps (exposed for differential tests) ---- */

/* hc_pre (spec §3.2): X [n_hc][n_embd] -> y [n_embd], post [n_hc], comb [n_hc][n_hc]
 * (comb[j][k]: source stream j to destination k). fn [mix][n_hc*n_embd], base [mix],
 * scale [3], mix = (2+n_hc)*n_hc. mix_out: [mix] scratch. */
void ref_hc_pre(const struct model_hparams *hp, const float *X, const float *fn, const float *base,
                const float *scale, float *y, float *post, float *comb, float *mix_out);
/* Sinkhorn normalisation of comb [n][n] in place (row softmax, then alternating column and
 * row normalisation, column last). */
void ref_sinkhorn(float *comb, uint32_t n, uint32_t iters, float eps);
/* Xnew[k] = post[k]*F + sum_j comb[j][k]*Xold[j] for every stream k. */
void ref_hc_post(const struct model_hparams *hp, const float *F, const float *Xold, const float *post,
                 const float *comb, float *Xnew);
/* hc_head: X [n_hc][n_embd] -> y [n_embd]. fn [n_hc][n_hc*n_embd]. */
void ref_hc_head(const struct model_hparams *hp, const float *X, const float *fn, const float *base,
                 const float *scale, float *y);

/* Attention sublayer of layer il for the normed input a at position pos: out [n_embd]. */
void ref_attention(struct ref_state *st, uint32_t il, const float *a, uint32_t pos, float *out);
/* One compressor step for input a at pos; returns true and writes entry [width] (pooled,
 * normed, rotated at the block's first position) when pos completes a block. */
bool ref_compressor_step(struct ref_compressor *c, const struct model_hparams *hp, tensor_ref wkv,
                         tensor_ref wgate, tensor_ref ape, tensor_ref norm, const double *freqs,
                         const float *a, uint32_t pos, struct ref_scratch *s, float *entry);

/* MoE sublayer of layer il for the normed input f and token tok: out [n_embd]; the
 * selected experts go to experts_out [n_expert_used]. Fails only when paged experts cannot
 * be read. */
int ref_moe(struct ref_state *st, uint32_t il, const float *f, int32_t tok, float *out, int32_t *experts_out,
            char *err, size_t err_len);

#endif
