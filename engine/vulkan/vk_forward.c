/* The Vulkan forward schedule (spec §3.3, §3.12): for each step of up to VK_BATCH tokens
 * one command buffer runs the embedding copy, every layer (hc_pre, attention with its
 * compressors and indexer, hc_post, hc_pre, MoE, hc_post) and the head. Barriers sit only
 * between a kernel and the first one that reads what it wrote; independent kernels (the
 * projections of one input) share a barrier interval.
 *
 * A step holds the tokens of one or several sessions (engine_step): each session's tokens
 * are consecutive rows of the step's activations, which live in the first session's
 * buffers (the step's workspace). The weights' kernels (projections, hc, router, experts,
 * the head) run once over all rows; what reads or writes a session's own state (the kv
 * row into its ring, its compressors, the indexer, attention) is dispatched once per
 * session over its rows. q's and the indexer q's rope need only each row's position: they
 * run once over all rows, reading it from the step's table of positions (pos_rows). Every
 * kernel reduces a token's outputs in one order whatever the other rows hold, so a
 * session's logits are bitwise the same alone or in any step. */
#include "engine/vulkan/vk_internal.h"

#include <inttypes.h>
#include <math.h>
#include <string.h>

#include "common/errmsg.h"
#include "engine/kv_store.h"
#include "engine/model/quant.h"

_Static_assert(ENGINE_KV_F32 == ABI_KV_F32 && ENGINE_KV_F16 == ABI_KV_F16 && ENGINE_KV_FP8 == ABI_KV_FP8,
               "the KV storage types are numbered alike in C and in the shaders");

const char *const vk_kind_names[VK_KIND_COUNT] = {
    "matvec", "experts", "hc", "norm_rope", "compress", "indexer", "attention", "router", "swiglu", "other",
};

/* One session's share of a step: rows [t0, t0 + nt) at positions pos0...; logits of its rows
 * from t0 + first_logit on. */
struct fwd_part {
    struct vk_session *s;
    uint32_t t0, nt, pos0, first_logit;
};

/* One step being recorded. */
struct fwd {
    struct vk_session *s;       /* the workspace: activations, recorder, paging, profile */
    struct vk_engine *e;
    const struct model_hparams *hp;
    const struct fwd_part *parts;
    uint32_t n_parts;
    uint32_t nt;                /* rows of the step */
    uint32_t il;                /* layer being recorded */
    /* the finished sublayer whose hc_post the next hc dispatch applies first */
    bool post_pending;
    struct abi_hc_push post;    /* its src_* fields */
    const struct vk_span *post_src;
    char *err;
    size_t err_len;
};

static void after_dispatch(struct fwd *f, enum vk_kind kind)
{
    struct vk_session *s = f->s;
    if (!s->prof || !s->prof->enabled) return;
    int q = vk_recorder_timestamp(s->rec);
    if (q < 0) return;
    s->kinds[s->n_timed] = (uint8_t)kind;
    s->stamps[s->n_timed++] = q;
}

static int dispatch(struct fwd *f, enum vk_kind kind, struct vk_kernel *k, const struct vk_span *const *spans,
                    const void *push, uint32_t gx, uint32_t gy, uint32_t gz)
{
    if (vk_op_dispatch(f->s->rec, &f->e->ops, k, spans, push, gx, gy, gz, f->err, f->err_len)) return -1;
    after_dispatch(f, kind);
    return 0;
}

static void barrier(struct fwd *f) { vk_recorder_barrier(f->s->rec); }

/* Adds the timestamps recorded since the recording began to the session profile. */
static void collect_profile(struct vk_session *s)
{
    if (!s->prof) return;
    for (uint32_t i = 1; i < s->n_timed; i++) {
        double ns = vk_recorder_elapsed_ns(s->rec, s->stamps[i - 1], s->stamps[i]);
        s->prof->ns[s->kinds[i]] += ns;
        s->prof->dispatches[s->kinds[i]]++;
    }
    s->n_timed = 0;
}

/* Expert paging: runs what is recorded so far (through this layer's router), then pins the
 * experts it chose and records on in a fresh command buffer. */
static int page_in_experts(struct fwd *f, uint32_t il, uint32_t n_routed)
{
    struct vk_session *s = f->s;
    s->n_dispatch_flushed += s->rec->n_dispatch;
    if (vk_recorder_submit(s->rec, f->err, f->err_len)) return -1;
    collect_profile(s);
    if (vk_experts_map(f->e, s, il, n_routed, f->err, f->err_len) || vk_recorder_begin(s->rec, f->err, f->err_len))
        return -1;
    if (s->prof && s->prof->enabled) {
        s->stamps[s->n_timed] = vk_recorder_timestamp(s->rec);
        s->kinds[s->n_timed++] = VK_KIND_OTHER;
    }
    return 0;
}

/* y[t] = W x[t] for the batch's tokens (x, y rows of x_tstride / y_tstride floats). */
static int matvec(struct fwd *f, tensor_ref w, const struct vk_span *x, uint32_t x_tstride, const struct vk_span *y,
                  uint32_t y_off, uint32_t y_tstride, uint32_t n_tok, uint32_t x_off)
{
    struct vk_weight vw;
    if (vk_weight_of(f->e, w, 0, &vw, f->err, f->err_len)) return -1;
    struct vk_matvec_args a = {
        .w = &vw, .x = x, .y = y, .x_off = x_off, .x_tstride = x_tstride, .y_off = y_off, .y_tstride = y_tstride,
        .n_tok = n_tok, .scale = 1.0f,
    };
    if (vk_op_matvec(f->s->rec, &f->e->ops, &a, f->err, f->err_len)) return errf_prefix(f->err, f->err_len, "%s", w->name);
    f->s->weight_bytes_step += vw.mat_bytes;
    after_dispatch(f, VK_KIND_MATVEC);
    return 0;
}

static int norm_rope(struct fwd *f, const struct vk_span *x, const struct vk_span *y, const struct vk_span *w,
                     const struct vk_span *rope, struct abi_norm_rope_push p, uint32_t n_rows, uint32_t n_tok)
{
    if (p.y_tmod == 0) p.y_tmod = 0x7fffffffu;
    p.eps = f->hp->rms_eps;
    const struct vk_span *b[5] = { x, y, w ? w : x, rope, &f->s->pos_rows };
    return dispatch(f, VK_KIND_NORM_ROPE, &f->e->ops.norm_rope, b, &p, n_rows, n_tok, 1);
}

/* Whether a CPU-driver kernel may read span s through its chunk's float4 texel view: the
 * LANES layout, a view, and a float4-aligned place in the chunk that a 32-bit float index
 * (the push block's offsets, in floats) reaches. */
static bool texel_readable(const struct fwd *f, const struct vk_span *s)
{
    return f->e->ops.layout == VK_MATVEC_LANES && s->texels_f32x4 && s->off % 16 == 0 && s->off / 4 <= UINT32_MAX / 2;
}

/* hc_pre (or hc_head with head) for tokens [t0, t0 + n) into s->a, applying the pending
 * hc_post of the previous sublayer first (only those tokens' streams: the others are not
 * read again in this batch). */
static int hc_pre(struct fwd *f, tensor_ref fn, tensor_ref base, tensor_ref scale, tensor_ref norm,
                  const struct vk_hc_split *split, bool head, uint32_t t0, uint32_t n)
{
    struct vk_session *s = f->s;
    const struct model_hparams *hp = f->hp;
    struct abi_hc_push p = f->post;
    p.n_embd = hp->n_embd;
    p.n_hc = hp->n_hc;
    p.n_tok = n;
    p.sinkhorn_iters = hp->hc_sinkhorn_iters;
    p.x_off = t0 * hp->n_hc * hp->n_embd;
    p.y_off = t0 * hp->n_embd;
    p.hc_off = t0 * (hp->n_hc + hp->n_hc * hp->n_hc);
    p.flags = (head ? ABI_HC_FLAG_HEAD : 0) | (f->post_pending ? ABI_HC_FLAG_POST : 0);
    p.src_off += t0 * p.src_tstride;
    p.extra_off += t0 * p.extra_tstride;
    p.rms_eps = hp->rms_eps;
    p.hc_eps = hp->hc_eps;
    const struct vk_span *src = f->post_pending ? f->post_src : &s->f;
    const struct vk_span *b[10] = { &s->x, vk_tensor_span(f->e, fn), vk_tensor_span(f->e, base), vk_tensor_span(f->e, scale),
                                    vk_tensor_span(f->e, norm), &s->a, &s->hc, src, &s->x, src };
    f->post_pending = false;
    const uint32_t width = hp->n_hc * hp->n_embd, n_mix = (2 + hp->n_hc) * hp->n_hc;
    /* The head (only logits read its output) keeps the fused kernel, one workgroup per
     * token, for decode and prefill alike. */
    if (head) {
        s->weight_bytes_step += fn->nbytes; /* the fused kernel reads all of fn */
        return dispatch(f, VK_KIND_HC, &f->e->ops.hc, b, &p, n, 1, 1);
    }
    /* A block's site, decode and prefill alike (batch invariance: one reduction order for
     * a token's mixes however many tokens share the step): hc_post first, then the mixes as
     * a matvec of fn (where fn splits, split->parts > 1 planned at load: its K slices as
     * matrices of their own, many workgroups instead of the one a fused kernel would use on
     * one core of a CPU driver or one multiprocessor of a GPU), then the rest with the mixes
     * given, summing the parts in order. A prefill batch also reads fn once per token tile
     * this way instead of once per token. CPU drivers read X and the sources through texel
     * views (hc_texel). */
    const uint32_t parts = split ? split->parts : 1;
    const bool texel = texel_readable(f, &s->x) && texel_readable(f, src);
    struct vk_kernel *k = texel ? &f->e->ops.hc_texel : &f->e->ops.hc;
    if (texel) {
        p.x_tex_off = (uint32_t)(s->x.off / 4);
        p.src_tex_off = (uint32_t)(src->off / 4);
    }
    if (p.flags & ABI_HC_FLAG_POST) {
        struct abi_hc_push post = p;
        post.flags |= ABI_HC_FLAG_POST_ONLY;
        if (dispatch(f, VK_KIND_HC, k, b, &post, n, 1, 1)) return -1;
        barrier(f);
    }
    if (parts > 1) { /* mixes [n][parts][n_mix] from token t0's row of the mix buffer */
        struct vk_matvec_args a = { .w = &split->w, .x = &s->x, .y = &s->mix, .x_off = t0 * width, .x_tstride = width,
                                    .x_zstride = width / parts, .x_zdiv = 1, .y_off = t0 * parts * n_mix,
                                    .y_tstride = parts * n_mix, .y_zstride = n_mix, .n_tok = n, .n_slot = parts,
                                    .scale = 1.0f };
        if (vk_op_matvec(s->rec, &f->e->ops, &a, f->err, f->err_len)) return errf_prefix(f->err, f->err_len, "%s", fn->name);
        s->weight_bytes_step += vk_weight_extent(&split->w);
        after_dispatch(f, VK_KIND_MATVEC);
    } else if (matvec(f, fn, &s->x, width, &s->mix, t0 * n_mix, n_mix, n, t0 * width)) {
        return -1;
    }
    barrier(f);
    b[ABI_HC_BIND_FN] = &s->mix;
    p.flags = ABI_HC_FLAG_MIXES_GIVEN;
    p.mix_off = t0 * parts * n_mix;
    p.mix_tstride = parts * n_mix;
    p.mix_parts = parts;
    return dispatch(f, VK_KIND_HC, k, b, &p, n, 1, 1);
}

/* Marks the sublayer output in src as pending: the next hc dispatch adds it to the streams. */
static void hc_post_pending(struct fwd *f, const struct vk_span *src, uint32_t src_tstride, uint32_t src_sstride,
                            uint32_t n_src, uint32_t extra_off, uint32_t extra_tstride)
{
    memset(&f->post, 0, sizeof f->post);
    f->post.src_tstride = src_tstride;
    f->post.src_sstride = src_sstride;
    f->post.n_src = n_src;
    f->post.extra_off = extra_off;
    f->post.extra_tstride = extra_tstride;
    f->post_src = src;
    f->post_pending = true;
}

/* One compressor (main or indexer) over a session's rows of the step: state machine, then
 * norm + rope of the entries completed in this step. Its kv and score inputs are the
 * columns from kv_col and score_col of the projection rows (coff*width each). Float32
 * entries are pooled and finished in place; other KV types are pooled into the session's
 * staging rows (raw_off: the main or the indexer compressor's) and packed by norm_rope. */
static int compressor(struct fwd *f, const struct fwd_part *pt, uint32_t ratio, uint32_t width, uint32_t kv_col,
                      uint32_t score_col, tensor_ref ape, tensor_ref norm, const struct vk_span *state,
                      const struct vk_span *out, uint32_t raw_off, bool finish)
{
    const uint32_t coff = ratio == 4 ? 2 : 1, pw = f->e->proj[f->il].width;
    const uint32_t e0 = pt->pos0 / ratio, e1 = (pt->pos0 + pt->nt) / ratio;
    const bool packed = pt->s->kv != ENGINE_KV_F32;
    if (!finish) {
        struct abi_compress_push p = {
            .width = width, .ratio = ratio, .coff = coff, .pos0 = pt->pos0, .n_tok = pt->nt,
            .kv_off = kv_col + pt->t0 * pw, .score_off = score_col + pt->t0 * pw, .in_tstride = pw,
            .out_off = packed ? raw_off : 0, .out_row0 = packed ? e0 : 0,
        };
        const struct vk_span *b[5] = { &f->s->proj, &f->s->proj, vk_tensor_span(f->e, ape), state,
                                       packed ? &pt->s->kv_raw : out };
        return dispatch(f, VK_KIND_COMPRESS, &f->e->ops.compress, b, &p, (width + ABI_WG_SIZE - 1) / ABI_WG_SIZE, 1, 1);
    }
    if (e1 == e0) return 0;
    struct abi_norm_rope_push p = {
        .n = width, .rope_dim = f->hp->rope_dim,
        .flags = ABI_NORM_ROPE_FLAG_NORM | ABI_NORM_ROPE_FLAG_WEIGHT | ABI_NORM_ROPE_FLAG_ROPE,
        .x_off = packed ? raw_off : e0 * width, .x_tstride = width, .y_tstride = kv_entry_words(pt->s->kv, width),
        .y_row0 = e0, .pos_base = e0 * ratio, .pos_step = ratio, .kv = (uint32_t)pt->s->kv,
    };
    return norm_rope(f, packed ? &pt->s->kv_raw : out, out, vk_tensor_span(f->e, norm), &pt->s->rope_comp, p, 1, e1 - e0);
}

/* The kv row of a session's tokens into its ring and its compressors' state machines. */
static int attention_kv(struct fwd *f, const struct fwd_part *pt, uint32_t il)
{
    const struct model_hparams *hp = f->hp;
    const struct layer_weights *lw = &f->e->m->layers[il];
    const struct vk_proj *pj = &f->e->proj[il];
    struct vk_session *ps = pt->s;
    struct vk_layer_state *ls = &ps->layers[il];
    const uint32_t hd = hp->head_dim, ratio = hp->ratio[il], pw = pj->width;
    struct abi_norm_rope_push pk = {
        .n = hd, .rope_dim = hp->rope_dim,
        .flags = ABI_NORM_ROPE_FLAG_NORM | ABI_NORM_ROPE_FLAG_WEIGHT | ABI_NORM_ROPE_FLAG_ROPE,
        .x_off = pj->col[VK_PROJ_KV] + pt->t0 * pw, .x_tstride = pw, .y_tstride = hd, .y_row0 = pt->pos0 % ps->ring_len,
        .y_tmod = ps->ring_len, .pos_base = pt->pos0, .pos_step = 1,
    };
    if (norm_rope(f, &f->s->proj, &ls->ring, vk_tensor_span(f->e, lw->attn_kv_a_norm), ratio ? &ps->rope_comp : &ps->rope_swa,
                  pk, 1, pt->nt))
        return -1;
    if (ratio && compressor(f, pt, ratio, hd, pj->col[VK_PROJ_CKV], pj->col[VK_PROJ_CG], lw->comp_ape, lw->comp_norm,
                            &ls->kvc, &ls->comp, 0, false))
        return -1;
    if (ratio == 4 && compressor(f, pt, 4, hp->ix_dim, pj->col[VK_PROJ_ICKV], pj->col[VK_PROJ_ICG], lw->ix_comp_ape,
                                 lw->ix_comp_norm, &ls->ixc, &ls->ix_keys, VK_KV_RAW_ROWS * hd, false))
        return -1;
    return 0;
}

/* The entries a session's tokens completed: their norm and rope (and packing). */
static int attention_entries(struct fwd *f, const struct fwd_part *pt, uint32_t il)
{
    const struct model_hparams *hp = f->hp;
    const struct layer_weights *lw = &f->e->m->layers[il];
    struct vk_layer_state *ls = &pt->s->layers[il];
    const uint32_t hd = hp->head_dim, ratio = hp->ratio[il];
    if (ratio && compressor(f, pt, ratio, hd, 0, 0, NULL, lw->comp_norm, NULL, &ls->comp, 0, true)) return -1;
    if (ratio == 4 &&
        compressor(f, pt, 4, hp->ix_dim, 0, 0, NULL, lw->ix_comp_norm, NULL, &ls->ix_keys, VK_KV_RAW_ROWS * hd, true))
        return -1;
    return 0;
}

/* q's (and the indexer's q's) norm and rope for every row of the step in one dispatch
 * each, row t at position pos_rows[t]. The rope tables of all sessions hold the same
 * values in the same rows (vk_rope_fill) and differ only in how many rows they have
 * (vk_rope_rows of the session's n_ctx), so the table of the step's session with the
 * largest n_ctx serves every row, and a row's result is bitwise the one a dispatch of its
 * session alone at its pos_base gives. */
static int attention_q(struct fwd *f, uint32_t il)
{
    const struct model_hparams *hp = f->hp;
    struct vk_session *s = f->s, *big = f->parts[0].s;
    for (uint32_t i = 1; i < f->n_parts; i++)
        if (f->parts[i].s->n_ctx > big->n_ctx) big = f->parts[i].s;
    const uint32_t hd = hp->head_dim, H = hp->n_head, ratio = hp->ratio[il], nt = f->nt;
    const struct vk_span *rope = ratio ? &big->rope_comp : &big->rope_swa;
    struct abi_norm_rope_push p = {
        .n = hd, .rope_dim = hp->rope_dim, .flags = ABI_NORM_ROPE_FLAG_NORM | ABI_NORM_ROPE_FLAG_ROPE | ABI_NORM_ROPE_FLAG_POS_ROWS,
        .x_tstride = H * hd, .x_hstride = hd, .y_tstride = H * hd, .y_hstride = hd, .pos_step = 1,
    };
    if (norm_rope(f, &s->q, &s->q, NULL, rope, p, H, nt)) return -1;
    if (ratio == 4) {
        const uint32_t D = hp->ix_dim, IH = hp->ix_head;
        struct abi_norm_rope_push pi = {
            .n = D, .rope_dim = hp->rope_dim, .flags = ABI_NORM_ROPE_FLAG_ROPE | ABI_NORM_ROPE_FLAG_POS_ROWS,
            .x_tstride = IH * D, .x_hstride = D, .y_tstride = IH * D, .y_hstride = D, .pos_step = 1,
        };
        if (norm_rope(f, &s->ixq, &s->ixq, NULL, rope, pi, IH, nt)) return -1;
    }
    return 0;
}

/* The indexer's selection for a session's tokens (CSA layers), into its selection rows:
 * in groups of the session's ix_rows tokens, whose lists the next group reuses, each as the
 * chunk sort and the merge levels its last token needs (vk_op_indexer_level). */
static int attention_index(struct fwd *f, const struct fwd_part *pt, uint32_t il)
{
    const struct model_hparams *hp = f->hp;
    const struct vk_proj *pj = &f->e->proj[il];
    struct vk_session *ps = pt->s;
    const uint32_t D = hp->ix_dim, IH = hp->ix_head;
    const struct vk_span *b[5] = { &f->s->ixq, &f->s->proj, &ps->layers[il].ix_keys, &ps->ixs, &ps->sel };
    for (uint32_t g0 = 0; g0 < pt->nt; g0 += ps->ix_rows) {
        const uint32_t n = pt->nt - g0 < ps->ix_rows ? pt->nt - g0 : ps->ix_rows, t0 = pt->t0 + g0;
        struct abi_indexer_push ip = {
            .n_head = IH, .dim = D, .topk = hp->ix_topk, .pos0 = pt->pos0 + g0, .n_tok = n,
            .q_off = t0 * IH * D, .w_off = pj->col[VK_PROJ_IXW] + t0 * pj->width, .w_tstride = pj->width,
            .sel_off = g0 * hp->ix_topk, .scale = (float)(1.0 / sqrt((double)D * IH)),
            .kv = (uint32_t)ps->kv, .key_words = kv_entry_words(ps->kv, D), .chunk = f->e->ix_chunk,
        };
        uint64_t pairs[2];
        const uint32_t n_levels = vk_indexer_levels(((uint64_t)ip.pos0 + n) / 4, ip.topk, ip.chunk, f->e->ix_group, pairs);
        for (uint32_t lv = 0; lv <= n_levels; lv++) {
            if (g0 || lv) barrier(f);
            if (vk_op_indexer_level(f->s->rec, &f->e->ops, b, &ip, f->e->ix_group, ps->ix_pairs,
                                    (uint64_t)ps->ix_rows * ps->ix_pairs[0], lv, n_levels, f->err, f->err_len))
                return -1;
            after_dispatch(f, VK_KIND_INDEXER);
        }
    }
    return 0;
}

/* Attention of a session's tokens over its ring and compressed entries, into o. */
static int attention_heads(struct fwd *f, const struct fwd_part *pt, uint32_t il)
{
    const struct model_hparams *hp = f->hp;
    struct vk_engine *e = f->e;
    const struct layer_weights *lw = &e->m->layers[il];
    struct vk_session *s = f->s, *ps = pt->s;
    struct vk_layer_state *ls = &ps->layers[il];
    const uint32_t hd = hp->head_dim, H = hp->n_head, ratio = hp->ratio[il], nt = pt->nt;
    struct abi_attn_push p = {
        .head_dim = hd, .n_head = H, .rope_dim = hp->rope_dim, .window = hp->window, .ring_len = ps->ring_len,
        .ratio = ratio, .topk = hp->ix_topk, .pos0 = pt->pos0, .n_tok = nt, .q_off = pt->t0 * H * hd,
        .o_off = pt->t0 * H * hd, .scale = (float)(1.0 / sqrt((double)hd)), .chunk = e->attn_chunk,
        .kv = ratio ? (uint32_t)ps->kv : ABI_KV_F32, .comp_words = kv_entry_words(ps->kv, hd),
    };
    const struct vk_span *b[7] = { &s->q, &ls->ring, ratio ? &ls->comp : &ls->ring, &ps->sel,
                                   vk_tensor_span(e, lw->attn_sinks), ratio ? &ps->rope_comp : &ps->rope_swa, &s->o };
    /* CPU drivers read q and the key rows through their chunks' texel views (float32
     * entries: the float4 views cannot unpack stored f16/fp8 ones, which attention.comp does) */
    const bool texel = texel_readable(f, b[0]) && texel_readable(f, b[1]) && texel_readable(f, b[2]) && p.kv == ABI_KV_F32;
    if (texel) {
        p.q_off += (uint32_t)(b[0]->off / 4);
        p.ring_off += (uint32_t)(b[1]->off / 4);
        p.comp_off += (uint32_t)(b[2]->off / 4);
    }
    struct vk_kernel *heads_k = NULL;
    uint32_t heads = 1;
    if (texel && vk_ops_attention_heads(&e->ops, hd, H, nt, &heads_k, &heads, f->err, f->err_len)) return -1;
    if (heads_k) return dispatch(f, VK_KIND_ATTENTION, heads_k, b, &p, H / heads, nt, 1);
    return dispatch(f, VK_KIND_ATTENTION, texel ? &e->ops.attention_texel : &e->ops.attention, b, &p, H, nt, 1);
}

/* Runs call for every session of the step (as pt); their dispatches share a barrier
 * interval: they write disjoint rows and their own state. */
#define FOR_PARTS(f, call)                                                     \
    for (uint32_t pi_ = 0; pi_ < (f)->n_parts; pi_++) {                        \
        const struct fwd_part *pt = &(f)->parts[pi_];                          \
        if (call) return -1;                                                   \
    }

static int attention_layer(struct fwd *f, uint32_t il)
{
    struct vk_session *s = f->s;
    struct vk_engine *e = f->e;
    const struct model_hparams *hp = f->hp;
    const struct layer_weights *lw = &e->m->layers[il];
    const uint32_t nt = f->nt, hd = hp->head_dim, H = hp->n_head, ratio = hp->ratio[il];

    if (hc_pre(f, lw->hc_attn_fn, lw->hc_attn_base, lw->hc_attn_scale, lw->attn_norm, &e->hc_split[il][0], false, 0, nt))
        return -1;
    barrier(f);
    /* every projection of the normed input a: one dispatch when the weights are fused */
    const struct vk_proj *pj = &e->proj[il];
    const uint32_t pw = pj->width;
    if (pj->fused) {
        struct vk_matvec_args ma = { .w = &pj->w, .x = &s->a, .y = &s->proj, .x_tstride = hp->n_embd, .y_tstride = pw,
                                     .n_tok = nt, .scale = 1.0f };
        if (vk_op_matvec(s->rec, &e->ops, &ma, f->err, f->err_len)) return errf_prefix(f->err, f->err_len, "projections");
        s->weight_bytes_step += pj->w.mat_bytes;
        after_dispatch(f, VK_KIND_MATVEC);
    } else {
        tensor_ref t[VK_PROJ_COUNT];
        vk_proj_tensors(e->m, il, t);
        for (int i = 0; i < VK_PROJ_COUNT; i++)
            if (t[i] && matvec(f, t[i], &s->a, hp->n_embd, &s->proj, pj->col[i], pw, nt, 0)) return -1;
    }
    barrier(f);
    {   /* q's low-rank norm (no rope: any session's table serves) */
        struct abi_norm_rope_push p = { .n = hp->q_rank, .flags = ABI_NORM_ROPE_FLAG_NORM | ABI_NORM_ROPE_FLAG_WEIGHT,
                                        .x_off = pj->col[VK_PROJ_Q], .x_tstride = pw, .y_tstride = hp->q_rank };
        if (norm_rope(f, &s->proj, &s->qr, vk_tensor_span(e, lw->attn_q_a_norm), &s->rope_swa, p, 1, nt)) return -1;
    }
    FOR_PARTS(f, attention_kv(f, pt, il))
    barrier(f);
    /* projections of the normed qr; finishing the entries completed in this step */
    if (matvec(f, lw->attn_q_b, &s->qr, hp->q_rank, &s->q, 0, H * hd, nt, 0)) return -1;
    if (ratio == 4 && matvec(f, lw->ix_q_b, &s->qr, hp->q_rank, &s->ixq, 0, hp->ix_head * hp->ix_dim, nt, 0)) return -1;
    barrier(f);
    /* one barrier interval: each session's entries and every row's q are apart */
    FOR_PARTS(f, attention_entries(f, pt, il))
    if (attention_q(f, il)) return -1;
    if (ratio == 4) {
        barrier(f);
        FOR_PARTS(f, attention_index(f, pt, il))
    }
    barrier(f);
    FOR_PARTS(f, attention_heads(f, pt, il))
    barrier(f);
    {   /* grouped output projection: group g's heads times its block of rows */
        struct vk_weight vw;
        if (vk_weight_of(e, lw->attn_output_a, hp->o_groups, &vw, f->err, f->err_len)) return -1;
        const uint32_t group_in = H * hd / hp->o_groups;
        struct vk_matvec_args a = {
            .w = &vw, .x = &s->o, .y = &s->z, .x_tstride = H * hd, .x_zstride = group_in, .x_zdiv = 1,
            .y_tstride = hp->o_groups * hp->o_rank, .y_zstride = hp->o_rank, .n_tok = nt, .n_slot = hp->o_groups, .scale = 1.0f,
        };
        if (vk_op_matvec(s->rec, &e->ops, &a, f->err, f->err_len)) return -1;
        s->weight_bytes_step += vw.mat_bytes * vw.n_mat;
        after_dispatch(f, VK_KIND_MATVEC);
    }
    barrier(f);
    if (matvec(f, lw->attn_output_b, &s->z, hp->o_groups * hp->o_rank, &s->f, 0, hp->n_embd, nt, 0)) return -1;
    barrier(f);
    hc_post_pending(f, &s->f, hp->n_embd, 0, 1, 0, 0);
    return 0;
}

/* Paging guesses (see vk_session.guess_*): the routers of the learned-router layers after il
 * applied to layer il's MoE input, recorded beside its own projections and router so they
 * ride in the same submit. Marks which ones were recorded in s->guessed. */
static int guess_logits(struct fwd *f, uint32_t il)
{
    struct vk_session *s = f->s;
    const struct model_hparams *hp = f->hp;
    const bool on = f->e->experts && expert_store_speculates(f->e->experts);
    for (uint32_t j = 0; j < EXPERT_STORE_LOOKAHEAD; j++) {
        const uint32_t next = il + 1 + j;
        s->guessed[j] = on && next < hp->n_layer && !f->e->m->layers[next].tid2eid;
        if (s->guessed[j] && matvec(f, f->e->m->layers[next].ffn_gate_inp, &s->a, hp->n_embd, &s->guess_mp,
                                    j * VK_BATCH * hp->n_expert, hp->n_expert, f->nt, 0))
            return -1;
    }
    return 0;
}

static int guess_route(struct fwd *f)
{
    struct vk_session *s = f->s;
    const struct model_hparams *hp = f->hp;
    for (uint32_t j = 0; j < EXPERT_STORE_LOOKAHEAD; j++) {
        if (!s->guessed[j]) continue;
        const struct layer_weights *next = &f->e->m->layers[f->il + 1 + j];
        struct abi_router_push p = {
            .n_expert = hp->n_expert, .k = hp->n_expert_used, .n_tok = f->nt, .logits_tstride = hp->n_expert,
            .logits_off = j * VK_BATCH * hp->n_expert, .ids_off = j * VK_BATCH * hp->n_expert_used,
            .weights_off = j * VK_BATCH * hp->n_expert_used, .scale = 1.0f,
        };
        const struct vk_span *b[5] = { &s->guess_mp, vk_tensor_span(f->e, next->exp_probs_b), &s->tokens, &s->guess_ids,
                                       &s->guess_rw };
        if (dispatch(f, VK_KIND_ROUTER, &f->e->ops.router, b, &p, f->nt, 1, 1)) return -1;
    }
    return 0;
}

static int moe_layer(struct fwd *f, uint32_t il)
{
    struct vk_session *s = f->s;
    struct vk_engine *e = f->e;
    const struct model_hparams *hp = f->hp;
    const struct layer_weights *lw = &e->m->layers[il];
    const struct vk_moe *mo = &e->moe[il];
    const uint32_t nt = f->nt, K = hp->n_expert_used, F = hp->n_ff_exp, d = hp->n_embd, E = hp->n_expert;
    const uint32_t n_routed = nt * K, mw = mo->width; /* rows of routed experts; mp row width */

    if (hc_pre(f, lw->hc_ffn_fn, lw->hc_ffn_base, lw->hc_ffn_scale, lw->ffn_norm, &e->hc_split[il][1], false, 0, nt))
        return -1;
    barrier(f);
    /* router logits, shared gate, shared up: one row [E | F | F] per token */
    if (mo->proj_fused) {
        struct vk_matvec_args a = { .w = &mo->proj, .x = &s->a, .y = &s->mp, .x_tstride = d, .y_tstride = mw, .n_tok = nt,
                                    .scale = 1.0f };
        if (vk_op_matvec(s->rec, &e->ops, &a, f->err, f->err_len)) return errf_prefix(f->err, f->err_len, "moe projections");
        s->weight_bytes_step += mo->proj.mat_bytes;
        after_dispatch(f, VK_KIND_MATVEC);
    } else if (matvec(f, lw->ffn_gate_inp, &s->a, d, &s->mp, 0, mw, nt, 0) ||
               matvec(f, lw->ffn_gate_shexp, &s->a, d, &s->mp, E, mw, nt, 0) ||
               matvec(f, lw->ffn_up_shexp, &s->a, d, &s->mp, E + F, mw, nt, 0)) {
        return -1;
    }
    if (guess_logits(f, il)) return -1;
    barrier(f);
    {
        struct abi_router_push p = {
            .n_expert = E, .k = K, .n_tok = nt, .logits_tstride = mw,
            .flags = (lw->tid2eid ? ABI_ROUTER_FLAG_HASH : 0) | (hp->expert_weights_norm ? ABI_ROUTER_FLAG_NORM : 0),
            .scale = hp->expert_weights_scale,
        };
        const struct vk_span *b[5] = { &s->mp, vk_tensor_span(e, lw->tid2eid ? lw->tid2eid : lw->exp_probs_b), &s->tokens,
                                       &s->ids, &s->rw };
        if (dispatch(f, VK_KIND_ROUTER, &e->ops.router, b, &p, nt, 1, 1)) return -1;
    }
    if (guess_route(f)) return -1;
    barrier(f);
    /* Paged experts: wait for the router, pin the chosen experts' slots; the kernels then
     * read slot tensors through slot indices instead of the stacked expert tensors. */
    const bool paged = e->experts != NULL;
    if (paged && page_in_experts(f, il, n_routed)) return errf_prefix(f->err, f->err_len, "paging experts");
    /* Routed gate and up. Decode: slot z = t*K + k reads token t's input and expert ids[z];
     * the up half (slots n_routed..) lands n_routed rows further. Prefill: slots are grouped
     * by expert first, so each expert's matrices are read once for all of its tokens. */
    /* Grouping reads each chosen expert once for all of its tokens, in token tiles whose
     * unused places are computed and dropped. GPUs (bandwidth-bound) group from
     * VK_MOE_GROUP_MIN_TOKENS tokens on. CPU drivers, where that wasted arithmetic is the
     * cost, walk tiles of VK_MATMUL_TILE once experts average half a tile of tokens; below
     * that, from half as many slots as experts (a step of 8 sessions on the small model: 48
     * slots over about 35 experts), tiles of 2 and a last token alone, so nothing is
     * computed and dropped and an expert with two tokens decodes its weights once for both
     * (2 tokens cost 1.4-1.5x one on lavapipe). Fewer slots share too few experts to pay
     * for the grouping step; and experts that run the K-split or GPU-shaped kernels there
     * (FLASHBOX_VK_KSPLIT, ggml low-bit types) walk tiles of VK_MATMUL_TILE only. Every
     * tile reads a token's outputs in one order, so this choice never changes them. */
    const bool lanes = e->ops.layout == VK_MATVEC_LANES;
    bool small_tiles = false;
    if (mo->small_tiles && 2 * n_routed >= E && n_routed < E * VK_MATMUL_TILE / 2) {
        /* the weights were asked at load; the x vectors (this session's) are asked here */
        const struct vk_matvec_args xd = { .x = &s->gu, .x_zstride = F }, xgu = { .x = &s->a, .x_zstride = d };
        small_tiles = vk_matvec_x_in_lanes(&e->ops, &xd) && vk_matvec_x_in_lanes(&e->ops, &xgu);
    }
    const bool grouped = !paged && (lanes ? small_tiles || n_routed >= E * VK_MATMUL_TILE / 2 : nt >= VK_MOE_GROUP_MIN_TOKENS);
    const uint32_t group_tile = small_tiles ? 2 : 0;
    const uint32_t n_grp = n_routed < E ? n_routed : E; /* lists: one per expert used, at most */
    const struct vk_span *ids = paged ? &s->slot_ids : grouped ? &s->grp : &s->ids;
    if (grouped) {
        struct abi_moe_group_push gp = { .n_expert = E, .n_slots = n_routed, .n_grp = n_grp };
        const struct vk_span *b[2] = { &s->ids, &s->grp };
        if (dispatch(f, VK_KIND_ROUTER, &e->ops.moe_group, b, &gp, 1, 1, 1)) return -1;
        barrier(f);
    }
    if (mo->gu_fused) {
        struct vk_matvec_args a = {
            .w = &mo->gu, .x = &s->a, .y = &s->gu, .ids = ids, .x_zstride = d, .x_zdiv = K,
            .y_zstride = F, .n_tok = grouped ? nt : 1, .n_slot = grouped ? 2 * n_grp : 2 * n_routed,
            .ids_wrap = grouped ? n_grp : n_routed, .mat_add = E, .y_wrap_add = grouped ? n_routed * F : 0,
            .grouped = grouped, .group_tile = group_tile, .scale = 1.0f,
        };
        if (vk_op_matvec(s->rec, &e->ops, &a, f->err, f->err_len)) return errf_prefix(f->err, f->err_len, "gate/up experts");
        s->weight_bytes_step += 2 * mo->gu.mat_bytes * K;
        after_dispatch(f, VK_KIND_EXPERTS);
    } else {
        tensor_ref gu[2] = { lw->ffn_gate_exps, lw->ffn_up_exps };
        for (int i = 0; i < 2; i++) {
            struct vk_weight vw;
            if (paged) vw = e->slot_w[i];
            else if (vk_weight_of(e, gu[i], 0, &vw, f->err, f->err_len)) return -1;
            struct vk_matvec_args a = {
                .w = &vw, .x = &s->a, .y = &s->gu, .ids = ids, .x_zstride = d, .x_zdiv = K,
                .y_off = (uint32_t)i * n_routed * F, .y_zstride = F, .n_tok = grouped ? nt : 1,
                .n_slot = grouped ? n_grp : n_routed, .ids_wrap = grouped ? n_grp : 0, .grouped = grouped,
                .group_tile = group_tile, .scale = 1.0f,
            };
            if (vk_op_matvec(s->rec, &e->ops, &a, f->err, f->err_len)) return errf_prefix(f->err, f->err_len, "%s", gu[i]->name);
            s->weight_bytes_step += vw.mat_bytes * K;
            after_dispatch(f, VK_KIND_EXPERTS);
        }
    }
    barrier(f);
    {
        struct abi_swiglu_push p = { .n_ff = F, .n_rows = n_routed + nt, .n_routed = n_routed, .u_off = n_routed * F,
                                     .sh_off = E, .sh_tstride = mw,
                                     .lim_routed = hp->swiglu_clamp_exp[il], .lim_shared = hp->swiglu_clamp_shexp[il] };
        const struct vk_span *b[3] = { &s->gu, &s->mp, &s->rw };
        if (vk_op_swiglu(s->rec, &e->ops, b, &p, f->err, f->err_len)) return -1;
        after_dispatch(f, VK_KIND_SWIGLU);
    }
    barrier(f);
    {
        struct vk_weight vw;
        if (paged) vw = e->slot_w[2];
        else if (vk_weight_of(e, lw->ffn_down_exps, 0, &vw, f->err, f->err_len)) return -1;
        struct vk_matvec_args a = {
            .w = &vw, .x = &s->gu, .y = &s->yd, .ids = ids, .x_zstride = F, .x_zdiv = 1,
            .y_zstride = d, .n_tok = grouped ? nt : 1, .n_slot = grouped ? n_grp : n_routed, .ids_wrap = grouped ? n_grp : 0,
            .grouped = grouped, .group_tile = group_tile, .scale = 1.0f,
        };
        if (vk_op_matvec(s->rec, &e->ops, &a, f->err, f->err_len)) return errf_prefix(f->err, f->err_len, "down experts");
        s->weight_bytes_step += vw.mat_bytes * K;
        after_dispatch(f, VK_KIND_EXPERTS);
        if (matvec(f, lw->ffn_down_shexp, &s->mp, mw, &s->yd, n_routed * d, d, nt, E)) return -1;
    }
    barrier(f);
    hc_post_pending(f, &s->yd, K * d, d, K, n_routed * d, d);
    return 0;
}

/* Records and runs one step: parts[] of one session each, whose tokens fill rows 0.. in
 * order (tokens[t] for row t); logits of the rows each part asks for land in the
 * workspace's (parts[0]'s) logits rows of the same index. */
static int run_step(const struct fwd_part *parts, uint32_t n_parts, const int32_t *tokens, uint32_t nt, char *err,
                    size_t err_len)
{
    struct vk_session *s = parts[0].s;
    struct vk_engine *e = s->e;
    const struct model *m = e->m;
    const struct model_hparams *hp = &m->hp;
    struct fwd f = { .s = s, .e = e, .hp = hp, .parts = parts, .n_parts = n_parts, .nt = nt, .err = err, .err_len = err_len };
    const uint32_t d = hp->n_embd;

    /* 3.1: embedding rows on the host (straight from the mapped file), copied to every stream */
    for (uint32_t t = 0; t < nt; t++) {
        uint64_t n = m->token_embd->ne[0], row_bytes = m->token_embd->nbytes / m->token_embd->ne[1];
        dequant_row(m->token_embd->type, (const uint8_t *)m->token_embd->data + (uint64_t)tokens[t] * row_bytes,
                    (float *)s->in_embd.host + (uint64_t)t * d, n);
        ((int32_t *)s->tokens.host)[t] = tokens[t];
    }
    for (uint32_t i = 0; i < n_parts; i++) /* each row's position (q's rope) */
        for (uint32_t t = 0; t < parts[i].nt; t++) ((int32_t *)s->pos_rows.host)[parts[i].t0 + t] = (int32_t)(parts[i].pos0 + t);
    s->n_timed = 0;
    s->weight_bytes_step = 0;
    s->n_dispatch_flushed = 0;
    /* hash layers know their experts from the tokens: start those loads now */
    if (e->experts) vk_experts_prefetch_hash(e, tokens, nt, s->ids_host);
    if (vk_recorder_begin(s->rec, err, err_len)) return -1;
    VkCommandBuffer cb = s->rec->cb;
    for (uint32_t i = 0; i < n_parts; i++) {
        struct vk_session *ps = parts[i].s;
        if (!ps->needs_reset) continue;
        /* compressor state: kv rows 0, score rows -inf (no previous block) */
        for (uint32_t il = 0; il < hp->n_layer; il++) {
            struct vk_span *st[2] = { &ps->layers[il].kvc, &ps->layers[il].ixc };
            for (int k = 0; k < 2; k++) {
                if (!st[k]->buf) continue;
                uint64_t half = st[k]->size / 2;
                vkCmdFillBuffer(cb, st[k]->buf, st[k]->off, half, 0);
                vkCmdFillBuffer(cb, st[k]->buf, st[k]->off + half, half, 0xff800000u);
            }
        }
        ps->needs_reset = false;
    }
    for (uint32_t t = 0; t < nt; t++)
        for (uint32_t j = 0; j < hp->n_hc; j++)
            s->copies[t * hp->n_hc + j] = (VkBufferCopy){ .srcOffset = s->in_embd.off + (uint64_t)t * d * 4,
                                                          .dstOffset = s->x.off + ((uint64_t)t * hp->n_hc + j) * d * 4,
                                                          .size = (uint64_t)d * 4 };
    vkCmdCopyBuffer(cb, s->in_embd.buf, s->x.buf, nt * hp->n_hc, s->copies);
    vk_recorder_barrier(s->rec);
    if (s->prof && s->prof->enabled) {
        s->stamps[s->n_timed] = vk_recorder_timestamp(s->rec);
        s->kinds[s->n_timed++] = VK_KIND_OTHER;
    }

    for (uint32_t il = 0; il < hp->n_layer; il++)
        if ((f.il = il, attention_layer(&f, il)) || moe_layer(&f, il)) {
            errf_prefix(err, err_len, "layer %u", il);
            if (s->rec->recording) vk_recorder_abort(s->rec);
            vk_experts_release(e, s);
            return -1;
        }
    /* The head over each run of consecutive rows that want logits (one run when the
     * parts that want them are adjacent); each run applies the last layer's pending
     * hc_post to its own rows. */
    const bool post_pending = f.post_pending;
    const struct abi_hc_push post = f.post;
    const struct vk_span *post_src = f.post_src;
    for (uint32_t i = 0; i < n_parts;) {
        uint32_t r0 = parts[i].t0 + parts[i].first_logit, r1 = parts[i].t0 + parts[i].nt;
        for (i++; i < n_parts && r0 < r1 && parts[i].first_logit == 0 && parts[i].t0 == r1; i++) r1 += parts[i].nt;
        if (r0 >= r1) continue;
        f.post_pending = post_pending;
        f.post = post;
        f.post_src = post_src;
        if (hc_pre(&f, m->output_hc_fn, m->output_hc_base, m->output_hc_scale, m->output_norm, NULL, true, r0, r1 - r0)) {
            vk_recorder_abort(s->rec);
            return -1;
        }
        barrier(&f);
        if (matvec(&f, m->output, &s->a, d, &s->logits, r0 * hp->n_vocab, hp->n_vocab, r1 - r0, r0 * d)) {
            vk_recorder_abort(s->rec);
            return -1;
        }
    }
    uint32_t n_dispatch = s->n_dispatch_flushed + s->rec->n_dispatch;
    int rc = vk_recorder_submit(s->rec, err, err_len);
    vk_experts_release(e, s); /* the GPU is done with the last paged layer */
    if (rc) return -1;
    if (s->prof) {
        s->prof->n_dispatch = n_dispatch;
        s->prof->weight_bytes += s->weight_bytes_step;
        collect_profile(s);
    }
    return 0;
}

/* lavapipe (Mesa's CPU driver) ends the loops of a shader invocation after 65,535
 * iterations in all (LP_MAX_TGSI_LOOP_ITERATIONS, shared by every loop), silently: past
 * that a kernel returns wrong numbers. So no kernel's loops may grow with the context
 * without bound. The indexer's do not: a chunk's scores and sort (indexer.comp) and a
 * merge's candidates (indexer_merge.comp) depend on the chunk, the merge width, the top-k
 * and the indexer's heads, not on the entries. The attention's run about one per key:
 * window plus the selection (CSA) or every entry (HCA: 8,192 at 1M positions with V4's
 * ratio 128). This is the count at the last position a batch reaches, each score-loop pass
 * counted as if it took 4 values where it takes 16 (at 16 a pass the old indexer's count
 * let through positions where lavapipe already answered wrong, so lavapipe counts more
 * than the passes written). */
#define VK_CPU_LOOP_LIMIT 65535u
uint64_t vk_cpu_loop_iterations(const struct model_hparams *hp, uint32_t wg, uint32_t chunk, uint32_t group, uint32_t pos)
{
    uint64_t worst = 0;
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        const uint32_t r = hp->ratio[il];
        uint64_t keys = (uint64_t)(pos + 1 < hp->window ? pos + 1 : hp->window), it = 0;
        if (r == 4) {
            const uint64_t n_vis = (pos + 1) / 4, k = n_vis < hp->ix_topk ? n_vis : hp->ix_topk, per = (chunk + wg - 1) / wg;
            uint64_t log_c = 0, log_k = 0;
            while ((1ull << log_c) < chunk) log_c++;
            while ((1ull << log_k) < hp->ix_topk) log_k++;
            /* indexer.comp: scores (heads of ix_dim / 4 passes and the rest, plus 2), the
             * sort's stages of chunk / 2 pairs, the writes; indexer_merge.comp: the
             * candidates' binary searches in every list */
            const uint64_t head = hp->ix_dim / 4 + hp->ix_dim % 4 + 2, stages = log_c * (log_c + 1) / 2;
            const uint64_t score = per * ((uint64_t)hp->ix_head * head + 2) + stages * ((chunk / 2 + wg - 1) / wg + 1) + per;
            const uint64_t merge = ABI_INDEXER_MERGE_PER_INVOCATION * ((uint64_t)group * (log_k + 2) + 2);
            it = score > merge ? score : merge;
            keys += k;
        } else if (r) {
            keys += (pos + 1) / r;
        }
        if (keys * 2 > it) it = keys * 2;
        if (it > worst) worst = it;
    }
    return worst;
}

uint64_t vk_token_work(const struct model_hparams *hp, uint32_t pos)
{
    const uint64_t head = (uint64_t)hp->n_head * hp->head_dim, window = pos + 1 < hp->window ? pos + 1 : hp->window;
    uint64_t work = 0;
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        const uint32_t r = hp->ratio[il];
        uint64_t keys = window;
        if (r == 4) {
            const uint64_t n_vis = (pos + 1) / 4;
            work += n_vis * hp->ix_head * hp->ix_dim;
            keys += n_vis < hp->ix_topk ? n_vis : hp->ix_topk;
        } else if (r) {
            keys += (pos + 1) / r;
        }
        work += keys * head;
    }
    return work;
}

/* How many of n rows at positions pos.. fit a submit whose rows so far cost *work (adding
 * theirs); the first row of a submit (first) always does. */
static uint32_t rows_within(const struct model_hparams *hp, uint64_t budget, uint32_t pos, uint32_t n, bool first,
                            uint64_t *work)
{
    if (!budget) return n;
    for (uint32_t t = 0; t < n; t++) {
        const uint64_t w = vk_token_work(hp, pos + t);
        if (*work + w > budget && !(first && t == 0)) return t;
        *work += w;
    }
    return n;
}

/* Checks one session's tokens before any work. */
static int check_tokens(const struct vk_session *s, const int32_t *tokens, uint32_t n, char *err, size_t err_len)
{
    const struct model_hparams *hp = &s->e->m->hp;
    for (uint32_t t = 0; t < n; t++)
        if (tokens[t] < 0 || (uint32_t)tokens[t] >= hp->n_vocab)
            return errf(err, err_len, "token %u: id %" PRId32 " outside the vocabulary [0, %u)", t, tokens[t], hp->n_vocab);
    if (n > s->n_ctx - s->pos)
        return errf(err, err_len, "%u tokens at position %u exceed the context of %u", n, s->pos, s->n_ctx);
    if (s->e->d->props.deviceType == VK_PHYSICAL_DEVICE_TYPE_CPU && n) {
        const uint32_t wg = s->e->d->subgroup_size < ABI_WG_SIZE ? s->e->d->subgroup_size : ABI_WG_SIZE;
        uint64_t it = vk_cpu_loop_iterations(hp, wg, s->e->ix_chunk, s->e->ix_group, s->pos + n - 1);
        if (it > VK_CPU_LOOP_LIMIT)
            return errf(err, err_len, "position %u: the indexer/attention kernels would loop %llu times in one invocation, "
                        "past the CPU driver's %u (lavapipe stops loops there and answers wrong); use a GPU or the ref backend",
                        s->pos + n - 1, (unsigned long long)it, VK_CPU_LOOP_LIMIT);
    }
    return 0;
}

int vk_step(void *ctx, const struct backend_step *items, uint32_t n_items, char *err, size_t err_len)
{
    struct vk_engine *e = ctx;
    const uint32_t n_vocab = e->m->hp.n_vocab;
    for (uint32_t i = 0; i < n_items; i++)
        if (check_tokens(items[i].state, items[i].tokens, items[i].n, err, err_len))
            return n_items > 1 ? errf_prefix(err, err_len, "step item %u", i) : -1;
    /* Sub-steps of up to max_batch rows (fewer than VK_BATCH when paged experts must fit
     * the slots) and of depth work up to submit_work (a slow device deep in the context
     * runs a batch in several submits, each inside the fence timeout): items in order, an
     * item cut where a sub-step fills. A session's logits are the same however its tokens
     * are cut (batch invariance). */
    struct fwd_part parts[VK_BATCH];
    uint32_t part_item[VK_BATCH], part_off[VK_BATCH];
    int32_t tokens[VK_BATCH];
    const uint32_t B = e->max_batch;
    uint32_t item = 0, off = 0;
    while (item < n_items) {
        uint32_t nt = 0, n_parts = 0;
        uint64_t work = 0;
        for (; item < n_items && nt < B; off = 0, item++) {
            const struct backend_step *it = &items[item];
            struct vk_session *ps = it->state;
            uint32_t n = it->n - off < B - nt ? it->n - off : B - nt;
            n = rows_within(&e->m->hp, e->submit_work, ps->pos, n, nt == 0, &work);
            if (n == 0) break; /* the sub-step is full: this item opens the next one */
            const bool last = off + n == it->n;
            parts[n_parts] = (struct fwd_part){ .s = ps, .t0 = nt, .nt = n, .pos0 = ps->pos,
                                                .first_logit = !it->logits ? n : it->all_logits ? 0 : last ? n - 1 : n };
            part_item[n_parts] = item;
            part_off[n_parts++] = off;
            memcpy(tokens + nt, it->tokens + off, n * sizeof *tokens);
            nt += n;
            if (!last) { /* the rest of this item opens the next sub-step */
                off += n;
                break;
            }
        }
        if (run_step(parts, n_parts, tokens, nt, err, err_len)) {
            for (uint32_t i = 0; i < n_parts; i++) parts[i].s->needs_reset = true;
            return errf_prefix(err, err_len, "vulkan eval (session must be reset)");
        }
        const float *src = (const float *)parts[0].s->logits.host;
        for (uint32_t i = 0; i < n_parts; i++) {
            const struct fwd_part *pt = &parts[i];
            const struct backend_step *it = &items[part_item[i]];
            if (pt->first_logit < pt->nt) {
                float *dst = it->all_logits ? it->logits + (uint64_t)part_off[i] * n_vocab : it->logits;
                memcpy(dst, src + (uint64_t)(pt->t0 + pt->first_logit) * n_vocab,
                       (uint64_t)(pt->nt - pt->first_logit) * n_vocab * sizeof(float));
            }
            pt->s->pos += pt->nt;
        }
    }
    return 0;
}

int vk_eval(void *ctx, void *state, const int32_t *tokens, uint32_t n, float *logits, bool all_logits,
            char *err, size_t err_len)
{
    const struct backend_step item = { .state = state, .tokens = tokens, .n = n, .logits = logits, .all_logits = all_logits };
    return vk_step(ctx, &item, 1, err, err_len);
}

static void vk_profile_onoff(void *state, bool on)
{
    struct vk_session *s = state;
    memset(&s->profile, 0, sizeof s->profile);
    s->profile.enabled = on;
    s->prof = &s->profile;
}

static void vk_get_profile(const void *state, struct engine_profile *out)
{
    const struct vk_session *s = state;
    out->n_kinds = VK_KIND_COUNT;
    for (int k = 0; k < VK_KIND_COUNT; k++) {
        out->kind[k] = vk_kind_names[k];
        out->gpu_ns[k] = s->profile.ns[k];
        out->dispatches[k] = s->profile.dispatches[k];
    }
    out->weight_bytes = s->profile.weight_bytes;
    out->last_dispatch_count = s->profile.n_dispatch;
}

const struct backend_ops vk_backend_ops = {
    .profile = vk_profile_onoff,
    .get_profile = vk_get_profile,
    .copy_bandwidth = vk_copy_bandwidth,
    .bench_kernels = vk_bench_kernels,
    .name = "vulkan",
    .open = vk_engine_open,
    .close = vk_engine_close,
    .session_create = vk_session_create,
    .session_destroy = vk_session_destroy,
    .session_reset = vk_session_reset,
    .eval = vk_eval,
    .step = vk_step,
    .expert_counters = vk_expert_counters,
    .device_memory = vk_device_memory,
    .state_save = vk_state_save,
    .state_load = vk_state_load,
};
