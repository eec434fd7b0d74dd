/* Mixture of experts on the CPU (spec §3.11): sqrt-softplus router, bias-corrected top-k
 * or hash routing through tid2eid, weight renormalisation and scale, clamped SwiGLU on the
 * routed and shared experts, weighted accumulation. With paged experts it also guesses the
 * next learned-router layers' experts from this layer's input, so their loads start early. */
#include "engine/ref/ref.h"
#include "engine/experts/expert_store.h"
#include "engine/ref/ref_ops.h"

#include <math.h>
#include <string.h>

/* The observer's view of an expert's products: the model's own tensors (a paged expert's
 * views are not in the file's table) and the expert's id, -1 for the shared expert. */
struct observed_expert {
    tensor_ref gate, up, down;
    int32_t id;
};

/* SwiGLU expert: h = silu(min(g, limit)) * clamp(u, -limit, limit) * weight, y = W2 h.
 * expert e selects rows of the stacked tensors (the shared expert is e = 0 of 2-D ones).
 * limit <= 0 disables the clamp. Accumulates y into out. */
static void swiglu_expert(struct ref_scratch *s, const struct model_hparams *hp, tensor_ref gate, tensor_ref up,
                          tensor_ref down, uint32_t e, const struct observed_expert *ob, float limit, double weight,
                          const float *x, float *out)
{
    const uint32_t F = hp->n_ff_exp, d = hp->n_embd;
    ref_observe(s, ob->gate, ob->id, x);
    ref_matvec(gate, (uint64_t)e * F, F, x, s->expert_h, s->rowbuf);
    ref_observe(s, ob->up, ob->id, x);
    ref_matvec(up, (uint64_t)e * F, F, x, s->expert_u, s->rowbuf);
    for (uint32_t i = 0; i < F; i++) {
        double g = s->expert_h[i], u = s->expert_u[i];
        if (limit > 0) {
            g = fmin(g, limit);
            u = fmax(fmin(u, limit), -limit);
        }
        /* the routing weight multiplies the hidden before the down projection (spec §3.11.4) */
        s->expert_h[i] = (float)(ref_silu(g) * u * weight);
    }
    ref_observe(s, ob->down, ob->id, s->expert_h);
    ref_matvec(down, (uint64_t)e * d, d, s->expert_h, s->expert_y, s->rowbuf);
    for (uint32_t i = 0; i < d; i++) out[i] += s->expert_y[i];
}

/* The router scores sqrt(softplus(logit)) of layer lw for input f into score [n_expert]. */
static void router_scores(struct ref_scratch *s, const struct model_hparams *hp, const struct layer_weights *lw,
                          const float *f, float *score)
{
    ref_matvec(lw->ffn_gate_inp, 0, hp->n_expert, f, score, s->rowbuf);
    for (uint32_t e = 0; e < hp->n_expert; e++) score[e] = (float)sqrt(ref_softplus(score[e]));
}

/* The learned router's selection (spec §3.11.1) of layer lw for input f: the top K of
 * score + bias into idx; score [n_expert] keeps the unbiased scores. */
static void learned_route(struct ref_scratch *s, const struct model_hparams *hp, const struct layer_weights *lw,
                          const float *f, float *score, int32_t *idx)
{
    const uint32_t E = hp->n_expert;
    router_scores(s, hp, lw, f, score);
    /* bias-corrected selection: the bias changes which experts, not their weights */
    const float *bias = (const float *)lw->exp_probs_b->data;
    for (uint32_t e = 0; e < E; e++) s->router_biased[e] = score[e] + bias[e];
    ref_topk(s->router_biased, E, hp->n_expert_used, idx);
}

/* Speculative loads for the learned-router layers after il: their routers applied to this
 * layer's input guess their experts (hash layers prefetch exactly elsewhere). */
static void guess_next_layers(struct ref_state *st, uint32_t il, const float *f)
{
    const struct model_hparams *hp = &st->m->hp;
    int32_t guess[64];
    for (uint32_t j = il + 1; j <= il + EXPERT_STORE_LOOKAHEAD && j < hp->n_layer; j++) {
        const struct layer_weights *next = &st->m->layers[j];
        if (next->tid2eid) continue;
        learned_route(&st->s, hp, next, f, st->s.guess_scores, guess);
        expert_store_prefetch(st->experts, j, guess, hp->n_expert_used, true);
    }
}

int ref_moe(struct ref_state *st, uint32_t il, const float *f, int32_t tok, float *out, int32_t *experts_out,
            char *err, size_t err_len)
{
    const struct model_hparams *hp = &st->m->hp;
    const struct layer_weights *lw = &st->m->layers[il];
    struct ref_scratch *s = &st->s;
    const uint32_t K = hp->n_expert_used;
    float *score = s->gate_logits;
    int32_t idx[64];
    ref_observe(s, lw->ffn_gate_inp, -1, f); /* here, not in router_scores: the guesses apply later layers' routers to f */
    if (lw->tid2eid) {
        router_scores(s, hp, lw, f, score);
        memcpy(idx, (const int32_t *)lw->tid2eid->data + (uint64_t)tok * K, K * sizeof(int32_t));
    } else {
        learned_route(s, hp, lw, f, score, idx);
    }
    double sum = 0.0;
    for (uint32_t k = 0; k < K; k++) sum += score[idx[k]];
    for (uint32_t i = 0; i < hp->n_embd; i++) out[i] = 0.0f;
    /* Paged experts: pin and start their loads, then (behind them in the loader's queue) the
     * guesses for the next layers; run the shared expert meanwhile, then wait. */
    struct expert_view views[64];
    if (st->experts) {
        if (expert_store_request(st->experts, il, idx, K, err, err_len)) return -1;
        if (expert_store_speculates(st->experts)) guess_next_layers(st, il, f);
    }
    const struct observed_expert shared = { lw->ffn_gate_shexp, lw->ffn_up_shexp, lw->ffn_down_shexp, -1 };
    swiglu_expert(s, hp, lw->ffn_gate_shexp, lw->ffn_up_shexp, lw->ffn_down_shexp, 0, &shared, hp->swiglu_clamp_shexp[il],
                  1.0, f, out);
    if (st->experts && expert_store_await_views(st->experts, il, views, K, err, err_len)) return -1;
    for (uint32_t k = 0; k < K; k++) {
        double w = hp->expert_weights_norm ? score[idx[k]] / sum : score[idx[k]];
        w *= hp->expert_weights_scale;
        const struct observed_expert routed = { lw->ffn_gate_exps, lw->ffn_up_exps, lw->ffn_down_exps, idx[k] };
        if (st->experts)
            swiglu_expert(s, hp, &views[k].gate, &views[k].up, &views[k].down, 0, &routed, hp->swiglu_clamp_exp[il], w,
                          f, out);
        else
            swiglu_expert(s, hp, lw->ffn_gate_exps, lw->ffn_up_exps, lw->ffn_down_exps, (uint32_t)idx[k], &routed,
                          hp->swiglu_clamp_exp[il], w, f, out);
        experts_out[k] = idx[k];
    }
    if (st->experts) expert_store_release(st->experts, il);
    return 0;
}
