/* The CPU reference forward: per-session state, the block (spec §3.3) and the whole model
 * (embedding, layers, hc_head, final norm, LM head). Batches run layer-major in chunks of
 * REF_BATCH tokens; every buffer is allocated when the state is created. */
#include "engine/ref/ref.h"
#include "common/errmsg.h"
#include "engine/experts/expert_store.h"
#include "engine/ref/ref_ops.h"
#include "engine/kv_store.h"
#include "engine/session_plan.h"

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static const float *f32(tensor_ref t) { return (const float *)t->data; }

static uint32_t max_u32(uint32_t a, uint32_t b) { return a > b ? a : b; }

static void compressor_reset(struct ref_compressor *c)
{
    if (!c->kv) return;
    uint64_t n = (uint64_t)c->n_rows * c->coff * c->width;
    memset(c->kv, 0, n * sizeof(float));
    for (uint64_t i = 0; i < n; i++) c->score[i] = -INFINITY; /* absent previous block */
}

void ref_state_reset(struct ref_state *st)
{
    const struct model_hparams *hp = &st->m->hp;
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        compressor_reset(&st->layers[il].kvc);
        compressor_reset(&st->layers[il].ixc);
    }
    st->pos = 0;
}

static int compressor_alloc(struct ref_compressor *c, uint32_t ratio, uint32_t width)
{
    c->ratio = ratio;
    c->width = width;
    c->coff = ratio == 4 ? 2 : 1;
    c->n_rows = ratio == 4 ? 2 * ratio : ratio;
    uint64_t n = (uint64_t)c->n_rows * c->coff * width;
    c->kv = malloc(n * sizeof(float));
    c->score = malloc(n * sizeof(float));
    return c->kv && c->score ? 0 : -1;
}

void ref_state_destroy(struct ref_state *st)
{
    if (!st) return;
    if (st->layers) {
        for (uint32_t il = 0; il < st->m->hp.n_layer; il++) {
            struct ref_layer_state *ls = &st->layers[il];
            free(ls->ring);
            free(ls->comp);
            free(ls->kvc.kv);
            free(ls->kvc.score);
            free(ls->ix_keys);
            free(ls->ixc.kv);
            free(ls->ixc.score);
        }
    }
    free(st->layers);
    /* every scratch pointer was allocated separately */
    struct ref_scratch *s = &st->s;
    void *bufs[] = { s->rowbuf, s->a, s->f, s->qr, s->q, s->kv, s->o, s->z, s->entry, s->ixq,
                     s->ixw, s->ix_score, s->ix_sel, s->att, s->acc, s->gate_logits, s->router_biased, s->guess_scores, s->expert_h,
                     s->expert_u, s->expert_y, s->hc_mix, s->hc_post, s->hc_comb, s->x_old, s->freqs_swa,
                     s->freqs_comp, s->key };
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
    free(st->x_batch);
    free(st);
}

/* One scratch buffer of the reference state: where its pointer lives, element size, count. */
struct ref_scratch_buf {
    void *where;        /* the address of the pointer (a float *, double * or int32_t *) */
    size_t elem;
    uint64_t n;
};
#define REF_N_SCRATCH 29

/* Every scratch buffer of a state of n_ctx positions (s and x_batch give the pointers'
 * places; the plan passes a throwaway struct). */
static void ref_scratch_table(struct ref_scratch *s, float **x_batch, const struct model_hparams *hp, uint32_t n_ctx,
                              struct ref_scratch_buf out[REF_N_SCRATCH])
{
    const uint32_t hd = hp->head_dim;
    /* the longest weight row any matvec dequantizes */
    uint32_t max_row = max_u32(max_u32(hp->n_embd, hp->q_rank), max_u32(hp->n_ff_exp, hp->o_groups * hp->o_rank));
    max_row = max_u32(max_row, hp->n_head * hd / hp->o_groups);
    const uint32_t mix = (2 + hp->n_hc) * hp->n_hc;
    const uint64_t n_att = (uint64_t)hp->window + n_ctx / 4 + n_ctx / 128 + 2;
    int i = 0;
    (void)i;
#define BUF(ptr, count) out[i++] = (struct ref_scratch_buf){ (void *)&(ptr), sizeof *(ptr), (count) }
    BUF(s->rowbuf, max_row);
    BUF(s->a, hp->n_embd);
    BUF(s->f, hp->n_embd);
    BUF(s->qr, hp->q_rank);
    BUF(s->q, (uint64_t)hp->n_head * hd);
    BUF(s->kv, hd);
    BUF(s->o, (uint64_t)hp->n_head * hd);
    BUF(s->z, (uint64_t)hp->o_groups * hp->o_rank);
    BUF(s->entry, max_u32(hd, hp->ix_dim));
    BUF(s->key, max_u32(hd, hp->ix_dim));
    BUF(s->ixq, (uint64_t)max_u32(hp->ix_head, 1) * max_u32(hp->ix_dim, 1));
    BUF(s->ixw, max_u32(hp->ix_head, 1));
    BUF(s->ix_score, n_ctx / 4 + 1);
    BUF(s->ix_sel, max_u32(hp->ix_topk, 1));
    BUF(s->att, n_att);
    BUF(s->acc, hd);
    BUF(s->gate_logits, hp->n_expert);
    BUF(s->router_biased, hp->n_expert);
    BUF(s->guess_scores, hp->n_expert);
    BUF(s->expert_h, hp->n_ff_exp);
    BUF(s->expert_u, hp->n_ff_exp);
    BUF(s->expert_y, hp->n_embd);
    BUF(s->hc_mix, mix);
    BUF(s->hc_post, hp->n_hc);
    BUF(s->hc_comb, (uint64_t)hp->n_hc * hp->n_hc);
    BUF(s->x_old, (uint64_t)hp->n_hc * hp->n_embd);
    BUF(s->freqs_swa, hp->rope_dim / 2);
    BUF(s->freqs_comp, hp->rope_dim / 2);
    BUF(*x_batch, (uint64_t)REF_BATCH * hp->n_hc * hp->n_embd);
#undef BUF
}

void ref_session_plan(const struct model_hparams *hp, enum engine_kv_type kv, uint32_t n_ctx, uint64_t parts[ENGINE_PLAN_PARTS],
                      uint64_t *largest)
{
    memset(parts, 0, ENGINE_PLAN_PARTS * sizeof *parts);
    *largest = 0;
    const uint64_t hd = hp->head_dim;
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        const uint32_t r = hp->ratio[il];
        parts[ENGINE_PLAN_WINDOW] += (uint64_t)hp->window * hd * 4;
        if (r) {
            uint64_t c = (plan_comp_rows(r, n_ctx) + 1) * kv_entry_words(kv, (uint32_t)hd) * 4;
            parts[r == 4 ? ENGINE_PLAN_CSA_ENTRIES : ENGINE_PLAN_HCA_ENTRIES] += c;
            parts[ENGINE_PLAN_COMP_STATE] += plan_comp_state_floats(r, hd) * 4;
            if (c > *largest) *largest = c;
        }
        if (r == 4) {
            parts[ENGINE_PLAN_IX_KEYS] += (plan_ix_rows(r, n_ctx) + 1) * kv_entry_words(kv, hp->ix_dim) * 4;
            parts[ENGINE_PLAN_COMP_STATE] += plan_comp_state_floats(4, hp->ix_dim) * 4;
        }
    }
    struct ref_scratch s;
    float *x_batch;
    struct ref_scratch_buf bufs[REF_N_SCRATCH];
    ref_scratch_table(&s, &x_batch, hp, n_ctx, bufs);
    for (int i = 0; i < REF_N_SCRATCH; i++) parts[ENGINE_PLAN_SCRATCH] += (bufs[i].n ? bufs[i].n : 1) * bufs[i].elem;
}

int ref_state_create(const struct model *m, uint32_t n_ctx, struct ref_state **out, char *err, size_t err_len)
{
    return ref_state_create_kv(m, n_ctx, ENGINE_KV_F32, out, err, err_len);
}

int ref_state_create_kv(const struct model *m, uint32_t n_ctx, enum engine_kv_type kv, struct ref_state **out, char *err,
                        size_t err_len)
{
    *out = NULL;
    const struct model_hparams *hp = &m->hp;
    if (n_ctx == 0) return errf(err, err_len, "context length 0");
    struct ref_state *st = calloc(1, sizeof *st);
    if (!st) return errf(err, err_len, "out of memory");
    st->m = m;
    st->n_ctx = n_ctx;
    st->kv = kv;
    st->layers = calloc(hp->n_layer, sizeof *st->layers);
    if (!st->layers) goto oom;
    const uint32_t hd = hp->head_dim;
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        struct ref_layer_state *ls = &st->layers[il];
        uint32_t r = hp->ratio[il];
        ls->ring = calloc((uint64_t)hp->window * hd, sizeof(float));
        if (!ls->ring) goto oom;
        if (r) {
            ls->comp = calloc(plan_comp_rows(r, n_ctx) + 1, kv_entry_words(kv, hd) * sizeof(uint32_t));
            if (!ls->comp || compressor_alloc(&ls->kvc, r, hd)) goto oom;
        }
        if (r == 4) {
            ls->ix_keys = calloc(plan_ix_rows(r, n_ctx) + 1, kv_entry_words(kv, hp->ix_dim) * sizeof(uint32_t));
            if (!ls->ix_keys || compressor_alloc(&ls->ixc, 4, hp->ix_dim)) goto oom;
        }
    }
    struct ref_scratch_buf bufs[REF_N_SCRATCH];
    ref_scratch_table(&st->s, &st->x_batch, hp, n_ctx, bufs);
    for (int i = 0; i < REF_N_SCRATCH; i++) {
        void *mem = calloc(bufs[i].n ? bufs[i].n : 1, bufs[i].elem);
        if (!mem) goto oom;
        memcpy(bufs[i].where, &mem, sizeof mem); /* into a typed pointer: every object pointer has this form here */
    }
    struct ref_scratch *s = &st->s;
    ref_rope_freqs(hp, false, s->freqs_swa);
    ref_rope_freqs(hp, true, s->freqs_comp);
    ref_state_reset(st);
    *out = st;
    return 0;
oom:
    ref_state_destroy(st);
    return errf(err, err_len, "out of memory for a %u-token reference state", n_ctx);
}

/* One block (spec §3.3) for one token: X [n_hc][n_embd] updated in place. */
static int block_forward(struct ref_state *st, uint32_t il, float *X, int32_t tok, uint32_t pos, char *err, size_t err_len)
{
    const struct model_hparams *hp = &st->m->hp;
    const struct layer_weights *lw = &st->m->layers[il];
    struct ref_scratch *s = &st->s;
    const uint64_t xn = (uint64_t)hp->n_hc * hp->n_embd;

    /* hash layers know their experts from the token: load them while attention runs */
    if (st->experts && lw->tid2eid)
        expert_store_prefetch(st->experts, il, (const int32_t *)lw->tid2eid->data + (uint64_t)tok * hp->n_expert_used,
                              hp->n_expert_used, true);
    memcpy(s->x_old, X, xn * sizeof(float));
    ref_hc_pre(hp, X, f32(lw->hc_attn_fn), f32(lw->hc_attn_base), f32(lw->hc_attn_scale), s->a, s->hc_post,
               s->hc_comb, s->hc_mix);
    ref_rmsnorm(s->a, f32(lw->attn_norm), hp->n_embd, hp->rms_eps, s->a);
    ref_attention(st, il, s->a, pos, s->f);
    ref_hc_post(hp, s->f, s->x_old, s->hc_post, s->hc_comb, X);

    memcpy(s->x_old, X, xn * sizeof(float));
    ref_hc_pre(hp, X, f32(lw->hc_ffn_fn), f32(lw->hc_ffn_base), f32(lw->hc_ffn_scale), s->a, s->hc_post,
               s->hc_comb, s->hc_mix);
    ref_rmsnorm(s->a, f32(lw->ffn_norm), hp->n_embd, hp->rms_eps, s->a);
    if (ref_moe(st, il, s->a, tok, s->f, st->last_experts[il], err, err_len)) return -1;
    ref_hc_post(hp, s->f, s->x_old, s->hc_post, s->hc_comb, X);
    return 0;
}

/* Final head (spec §3.12) for one token's streams: logits [n_vocab]. */
static void head_forward(struct ref_state *st, const float *X, float *logits)
{
    const struct model *m = st->m;
    const struct model_hparams *hp = &m->hp;
    struct ref_scratch *s = &st->s;
    ref_hc_head(hp, X, f32(m->output_hc_fn), f32(m->output_hc_base), f32(m->output_hc_scale), s->a);
    ref_rmsnorm(s->a, f32(m->output_norm), hp->n_embd, hp->rms_eps, s->a);
    ref_observe(s, m->output, -1, s->a);
    ref_matvec(m->output, 0, hp->n_vocab, s->a, logits, s->rowbuf);
}

int ref_forward(struct ref_state *st, const int32_t *tokens, uint32_t n, float *logits, bool all_logits,
                char *err, size_t err_len)
{
    const struct model_hparams *hp = &st->m->hp;
    for (uint32_t t = 0; t < n; t++)
        if (tokens[t] < 0 || (uint32_t)tokens[t] >= hp->n_vocab)
            return errf(err, err_len, "token %u: id %" PRId32 " outside the vocabulary [0, %u)", t, tokens[t], hp->n_vocab);
    if (n > st->n_ctx - st->pos)
        return errf(err, err_len, "%u tokens at position %u exceed the context of %u", n, st->pos, st->n_ctx);
    const uint64_t xn = (uint64_t)hp->n_hc * hp->n_embd;
    for (uint32_t c0 = 0; c0 < n; c0 += REF_BATCH) {
        const uint32_t nc = n - c0 < REF_BATCH ? n - c0 : REF_BATCH;
        for (uint32_t t = 0; t < nc; t++) { /* 3.1: embedding copied into every stream */
            float *X = st->x_batch + t * xn;
            ref_get_row(st->m->token_embd, (uint64_t)tokens[c0 + t], X);
            for (uint32_t j = 1; j < hp->n_hc; j++) memcpy(X + (uint64_t)j * hp->n_embd, X, hp->n_embd * sizeof(float));
        }
        for (uint32_t il = 0; il < hp->n_layer; il++) {
            for (uint32_t t = 0; t < nc; t++)
                if (block_forward(st, il, st->x_batch + t * xn, tokens[c0 + t], st->pos + t, err, err_len))
                    return errf_prefix(err, err_len, "position %u (the session must be reset)", st->pos + t);
            /* every token of the chunk has chosen this layer's experts: drop wrong guesses */
            if (st->experts) expert_store_drop_speculation(st->experts, il);
        }
        for (uint32_t t = 0; t < nc; t++) {
            bool last = c0 + t == n - 1;
            if (logits && (all_logits || last))
                head_forward(st, st->x_batch + t * xn, logits + (all_logits ? (uint64_t)(c0 + t) * hp->n_vocab : 0));
        }
        st->pos += nc;
    }
    return 0;
}
