/* Attention on the CPU (spec §3.4–3.10): q/kv projections, the sliding-window ring, the
 * CSA/HCA compressors, the lightning indexer, sparse attention with sinks, inverse RoPE
 * and the grouped output projection. No QAT simulation (FP8/FP4 rounding of KV and
 * indexer values is not applied), except that entries and indexer keys are stored as the
 * session's KV type says (kv_store.h), so FP8 storage rounds them as §3.16 does. */
#include "engine/ref/ref.h"
#include "engine/model/quant.h"
#include "engine/ref/ref_ops.h"
#include "engine/kv_store.h"

#include <math.h>
#include <string.h>

static const float *f32(tensor_ref t) { return (const float *)t->data; }

/* Stored entry or key b of a buffer of entries of width values, as floats: the stored
 * words themselves for f32, else unpacked into scratch. */
static const float *stored_row(const struct ref_state *st, const uint32_t *buf, uint64_t b, uint32_t width, float *scratch)
{
    const uint32_t *w = buf + b * kv_entry_words(st->kv, width);
    if (st->kv == ENGINE_KV_F32) return (const float *)w;
    kv_unpack(st->kv, w, width, scratch);
    return scratch;
}

bool ref_compressor_step(struct ref_compressor *c, const struct model_hparams *hp, tensor_ref wkv,
                         tensor_ref wgate, tensor_ref ape, tensor_ref norm, const double *freqs,
                         const float *a, uint32_t pos, struct ref_scratch *s, float *entry)
{
    const uint32_t w = c->width, cw = c->coff * w, m = c->ratio;
    const uint32_t in_block = pos % m;
    /* ratio 4 writes the current block's rows 4..7; other ratios rows 0..m-1 */
    const uint32_t row = (c->coff == 2 ? m : 0) + in_block;
    float *kv = c->kv + (uint64_t)row * cw, *score = c->score + (uint64_t)row * cw;
    ref_observe(s, wkv, -1, a);
    ref_matvec(wkv, 0, cw, a, kv, s->rowbuf);
    ref_observe(s, wgate, -1, a);
    ref_matvec(wgate, 0, cw, a, score, s->rowbuf);
    const float *ape_row = f32(ape) + (uint64_t)in_block * cw;
    for (uint32_t i = 0; i < cw; i++) score[i] += ape_row[i];
    if (in_block != m - 1) return false;

    /* Per-channel softmax over the candidate rows, weighted sum of their values. For ratio
     * 4: rows 0..m-1 (previous block) use columns [0, w), rows m..2m-1 columns [w, 2w). */
    for (uint32_t i = 0; i < w; i++) {
        double mx = -INFINITY;
        for (uint32_t r = 0; r < c->n_rows; r++) {
            uint32_t col = c->coff == 2 ? (r < m ? i : w + i) : i;
            mx = fmax(mx, c->score[(uint64_t)r * cw + col]);
        }
        double num = 0.0, den = 0.0;
        for (uint32_t r = 0; r < c->n_rows; r++) {
            uint32_t col = c->coff == 2 ? (r < m ? i : w + i) : i;
            double e = exp(c->score[(uint64_t)r * cw + col] - mx);
            num += e * c->kv[(uint64_t)r * cw + col];
            den += e;
        }
        entry[i] = (float)(num / den);
    }
    if (c->coff == 2) { /* the current block becomes the previous one */
        memcpy(c->kv, c->kv + (uint64_t)m * cw, (uint64_t)m * cw * sizeof(float));
        memcpy(c->score, c->score + (uint64_t)m * cw, (uint64_t)m * cw * sizeof(float));
    }
    ref_rmsnorm(entry, f32(norm), w, hp->rms_eps, entry);
    ref_rope(entry, w, hp->rope_dim, freqs, (uint64_t)(pos - in_block), false);
    return true;
}

/* Indexer (spec §3.8): fills s->ix_sel with the selected compressed entries of a CSA layer
 * for the query at pos; returns how many. */
static uint32_t indexer_select(struct ref_state *st, uint32_t il, const float *a, uint32_t pos)
{
    const struct model_hparams *hp = &st->m->hp;
    const struct layer_weights *lw = &st->m->layers[il];
    struct ref_layer_state *ls = &st->layers[il];
    struct ref_scratch *s = &st->s;
    const uint32_t n_vis = (pos + 1) / 4, H = hp->ix_head, D = hp->ix_dim;
    if (n_vis == 0) return 0;
    ref_observe(s, lw->ix_q_b, -1, s->qr);
    ref_matvec(lw->ix_q_b, 0, (uint64_t)H * D, s->qr, s->ixq, s->rowbuf);
    for (uint32_t h = 0; h < H; h++) ref_rope(s->ixq + (uint64_t)h * D, D, hp->rope_dim, s->freqs_comp, pos, false);
    ref_observe(s, lw->ix_proj, -1, a);
    ref_matvec(lw->ix_proj, 0, H, a, s->ixw, s->rowbuf);
    const double wscale = 1.0 / sqrt((double)D * H);
    for (uint32_t b = 0; b < n_vis; b++) {
        const float *k = stored_row(st, ls->ix_keys, b, D, s->key);
        double score = 0.0;
        for (uint32_t h = 0; h < H; h++) {
            double dot = 0.0;
            for (uint32_t i = 0; i < D; i++) dot += (double)s->ixq[(uint64_t)h * D + i] * k[i];
            score += (double)s->ixw[h] * wscale * fmax(dot, 0.0);
        }
        s->ix_score[b] = (float)score;
    }
    uint32_t k = n_vis < hp->ix_topk ? n_vis : hp->ix_topk;
    ref_topk(s->ix_score, n_vis, k, s->ix_sel);
    return k;
}

void ref_attention(struct ref_state *st, uint32_t il, const float *a, uint32_t pos, float *out)
{
    const struct model_hparams *hp = &st->m->hp;
    const struct layer_weights *lw = &st->m->layers[il];
    struct ref_layer_state *ls = &st->layers[il];
    struct ref_scratch *s = &st->s;
    const uint32_t ratio = hp->ratio[il], hd = hp->head_dim, H = hp->n_head, W = hp->window;
    const double *freqs = ratio ? s->freqs_comp : s->freqs_swa;

    /* 3.4: projections */
    ref_observe(s, lw->attn_q_a, -1, a);
    ref_matvec(lw->attn_q_a, 0, hp->q_rank, a, s->qr, s->rowbuf);
    ref_rmsnorm(s->qr, f32(lw->attn_q_a_norm), hp->q_rank, hp->rms_eps, s->qr);
    ref_observe(s, lw->attn_q_b, -1, s->qr);
    ref_matvec(lw->attn_q_b, 0, (uint64_t)H * hd, s->qr, s->q, s->rowbuf);
    for (uint32_t h = 0; h < H; h++) {
        float *qh = s->q + (uint64_t)h * hd;
        ref_rmsnorm(qh, NULL, hd, hp->rms_eps, qh);
        ref_rope(qh, hd, hp->rope_dim, freqs, pos, false);
    }
    ref_observe(s, lw->attn_kv, -1, a);
    ref_matvec(lw->attn_kv, 0, hd, a, s->kv, s->rowbuf);
    ref_rmsnorm(s->kv, f32(lw->attn_kv_a_norm), hd, hp->rms_eps, s->kv);
    ref_rope(s->kv, hd, hp->rope_dim, freqs, pos, false);
    memcpy(ls->ring + (uint64_t)(pos % W) * hd, s->kv, hd * sizeof(float));

    /* 3.7/3.8: compressors run before attending, so an entry completed now is visible */
    uint32_t n_sel = 0;
    const int32_t *sel = NULL;
    if (ratio) {
        if (ratio == 4 &&
            ref_compressor_step(&ls->ixc, hp, lw->ix_comp_kv, lw->ix_comp_gate, lw->ix_comp_ape, lw->ix_comp_norm,
                                s->freqs_comp, a, pos, s, s->entry)) {
            kv_pack(st->kv, s->entry, hp->ix_dim, ls->ix_keys + (uint64_t)(pos / 4) * kv_entry_words(st->kv, hp->ix_dim));
        }
        if (ref_compressor_step(&ls->kvc, hp, lw->comp_kv, lw->comp_gate, lw->comp_ape, lw->comp_norm,
                                s->freqs_comp, a, pos, s, s->entry)) {
            kv_pack(st->kv, s->entry, hd, ls->comp + (uint64_t)(pos / ratio) * kv_entry_words(st->kv, hd));
        }
        if (ratio == 4) {
            n_sel = indexer_select(st, il, a, pos);
            sel = s->ix_sel;
            st->last_ix_visible[il] = (pos + 1) / 4;
            st->last_ix_selected[il] = n_sel;
        } else {
            n_sel = (pos + 1) / ratio; /* HCA: every completed entry */
        }
    }

    /* 3.9: sparse attention over the window plus the selected compressed entries */
    const uint32_t first = pos + 1 > W ? pos + 1 - W : 0, n_win = pos + 1 - first;
    const float *sinks = f32(lw->attn_sinks);
    const double scale = 1.0 / sqrt((double)hd);
    for (uint32_t h = 0; h < H; h++) {
        const float *qh = s->q + (uint64_t)h * hd;
        float *oh = s->o + (uint64_t)h * hd;
        uint32_t n_keys = n_win + n_sel;
        double mx = sinks[h];
        for (uint32_t j = 0; j < n_keys; j++) {
            const float *v = j < n_win ? ls->ring + (uint64_t)((first + j) % W) * hd
                                       : stored_row(st, ls->comp, sel ? (uint32_t)sel[j - n_win] : j - n_win, hd, s->key);
            double dot = 0.0;
            for (uint32_t i = 0; i < hd; i++) dot += (double)qh[i] * v[i];
            s->att[j] = (float)(dot * scale);
            mx = fmax(mx, s->att[j]);
        }
        double den = exp(sinks[h] - mx);
        double *acc = s->acc;
        for (uint32_t i = 0; i < hd; i++) acc[i] = 0.0;
        for (uint32_t j = 0; j < n_keys; j++) {
            const float *v = j < n_win ? ls->ring + (uint64_t)((first + j) % W) * hd
                                       : stored_row(st, ls->comp, sel ? (uint32_t)sel[j - n_win] : j - n_win, hd, s->key);
            double e = exp(s->att[j] - mx);
            den += e;
            for (uint32_t i = 0; i < hd; i++) acc[i] += e * v[i];
        }
        for (uint32_t i = 0; i < hd; i++) oh[i] = (float)(acc[i] / den);
        /* 3.10.1: undo the rotation of the value's rope dims */
        ref_rope(oh, hd, hp->rope_dim, freqs, pos, true);
    }

    /* 3.10: grouped low-rank output projection */
    const uint64_t group_in = (uint64_t)H * hd / hp->o_groups;
    for (uint32_t g = 0; g < hp->o_groups; g++) {
        ref_observe(s, lw->attn_output_a, -1, s->o + g * group_in);
        ref_matvec(lw->attn_output_a, (uint64_t)g * hp->o_rank, hp->o_rank, s->o + g * group_in,
                   s->z + (uint64_t)g * hp->o_rank, s->rowbuf);
    }
    ref_observe(s, lw->attn_output_b, -1, s->z);
    ref_matvec(lw->attn_output_b, 0, hp->n_embd, s->z, out, s->rowbuf);
}
