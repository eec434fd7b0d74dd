/* The official -> llama.cpp mapping (spec §2 and §5.1.1): which GGUF tensor is made from
 * which checkpoint tensors, with which shapes, and the check of every source's name, dtype
 * and shape against config.json. PyTorch shapes are [rows][cols]; GGUF stores them
 * reversed ([cols, rows], innermost first), so the bytes of a row-major matrix map over
 * unchanged, and wo_a's [groups*rank][group_in] rows are already the [group_in, rank,
 * groups] view llama.cpp takes. */
#include "tools/convert_plan.h"
#include "common/errmsg.h"
#include "tools/ckpt_formats.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void conv_plan_free(struct conv_plan *p)
{
    for (size_t i = 0; i < p->n_items; i++) free(p->items[i].src);
    free(p->items);
    memset(p, 0, sizeof *p);
}

/* Appends an item; names are printf-formatted by the caller. */
static struct conv_item *add_item(struct conv_plan *p, enum conv_kind kind, uint32_t src_dims, uint64_t rows,
                                  uint64_t cols)
{
    if (p->n_items == p->cap_items) {
        size_t cap = p->cap_items ? 2 * p->cap_items : 64;
        struct conv_item *grown = realloc(p->items, cap * sizeof *grown);
        if (!grown) return NULL;
        p->items = grown;
        p->cap_items = cap;
    }
    struct conv_item *it = &p->items[p->n_items++];
    memset(it, 0, sizeof *it);
    it->kind = kind;
    it->src_dims = src_dims;
    it->rows = rows;
    it->cols = cols;
    return it;
}

struct builder {
    struct conv_plan *p;
    bool oom;
};

static void fmt_to(char *dst, size_t n, const char *fmt, va_list ap) { vsnprintf(dst, n, fmt, ap); }

static struct conv_item *item(struct builder *b, enum conv_kind kind, uint32_t dims, uint64_t rows, uint64_t cols,
                              const char *src, const char *gguf_fmt, ...) __attribute__((format(printf, 7, 8)));
static struct conv_item *item(struct builder *b, enum conv_kind kind, uint32_t dims, uint64_t rows, uint64_t cols,
                              const char *src, const char *gguf_fmt, ...)
{
    struct conv_item *it = add_item(b->p, kind, dims, rows, cols);
    if (!it) {
        b->oom = true;
        return NULL;
    }
    va_list ap;
    va_start(ap, gguf_fmt);
    fmt_to(it->name, sizeof it->name, gguf_fmt, ap);
    va_end(ap);
    snprintf(it->src_name, sizeof it->src_name, "%s", src);
    return it;
}

/* One block (trunk layer or MTP block): official prefix P ("layers.3." / "mtp.0."). */
static void add_block(struct builder *b, const struct conv_config *c, const char *P, uint32_t N, uint32_t ratio,
                      bool hash)
{
    char s[CONV_NAME_LEN];
    const uint64_t d = c->n_embd, hd = c->head_dim, mix = (2ull + c->n_hc) * c->n_hc, hcd = (uint64_t)c->n_hc * d;
#define SRC(suffix) (snprintf(s, sizeof s, "%s%s", P, suffix), s)
#define VEC(gg, src, n) item(b, CONV_VECTOR, 1, 1, n, SRC(src), "blk.%u." gg, N)
#define VEC2(gg, src, r_, c_) item(b, CONV_VECTOR, 2, r_, c_, SRC(src), "blk.%u." gg, N)
#define MAT(gg, src, r_, c_) item(b, CONV_MATRIX, 2, r_, c_, SRC(src), "blk.%u." gg, N)
    VEC("attn_norm.weight", "attn_norm.weight", d);
    VEC("attn_sinks.weight", "attn.attn_sink", c->n_head);
    MAT("attn_q_a.weight", "attn.wq_a.weight", c->q_rank, d);
    VEC("attn_q_a_norm.weight", "attn.q_norm.weight", c->q_rank);
    MAT("attn_q_b.weight", "attn.wq_b.weight", (uint64_t)c->n_head * hd, c->q_rank);
    MAT("attn_kv.weight", "attn.wkv.weight", hd, d);
    VEC("attn_kv_a_norm.weight", "attn.kv_norm.weight", hd);
    MAT("attn_output_a.weight", "attn.wo_a.weight", (uint64_t)c->o_groups * c->o_rank, (uint64_t)c->n_head * hd / c->o_groups);
    MAT("attn_output_b.weight", "attn.wo_b.weight", d, (uint64_t)c->o_groups * c->o_rank);
    VEC2("hc_attn_fn.weight", "hc_attn_fn", mix, hcd);
    VEC("hc_attn_base.weight", "hc_attn_base", mix);
    VEC("hc_attn_scale.weight", "hc_attn_scale", 3);
    VEC2("hc_ffn_fn.weight", "hc_ffn_fn", mix, hcd);
    VEC("hc_ffn_base.weight", "hc_ffn_base", mix);
    VEC("hc_ffn_scale.weight", "hc_ffn_scale", 3);
    if (ratio) {
        const uint64_t coff = ratio == 4 ? 2 : 1;
        MAT("attn_compressor_kv.weight", "attn.compressor.wkv.weight", coff * hd, d);
        MAT("attn_compressor_gate.weight", "attn.compressor.wgate.weight", coff * hd, d);
        VEC2("attn_compressor_ape.weight", "attn.compressor.ape", ratio, coff * hd);
        VEC("attn_compressor_norm.weight", "attn.compressor.norm.weight", hd);
    }
    if (ratio == 4) {
        const uint64_t id = c->ix_dim;
        MAT("indexer.attn_q_b.weight", "attn.indexer.wq_b.weight", (uint64_t)c->ix_head * id, c->q_rank);
        MAT("indexer.proj.weight", "attn.indexer.weights_proj.weight", c->ix_head, d);
        MAT("indexer_compressor_kv.weight", "attn.indexer.compressor.wkv.weight", 2 * id, d);
        MAT("indexer_compressor_gate.weight", "attn.indexer.compressor.wgate.weight", 2 * id, d);
        VEC2("indexer_compressor_ape.weight", "attn.indexer.compressor.ape", 4, 2 * id);
        VEC("indexer_compressor_norm.weight", "attn.indexer.compressor.norm.weight", id);
    }
    const uint64_t E = c->n_expert, F = c->n_ff_exp;
    VEC("ffn_norm.weight", "ffn_norm.weight", d);
    MAT("ffn_gate_inp.weight", "ffn.gate.weight", E, d);
    if (hash)
        item(b, CONV_TID2EID, 2, c->n_vocab, c->n_expert_used, SRC("ffn.gate.tid2eid"), "blk.%u.ffn_gate_tid2eid.weight", N);
    else
        item(b, CONV_VECTOR, 1, 1, E, SRC("ffn.gate.bias"), "blk.%u.exp_probs_b.bias", N);
    static const struct {
        const char *gguf, *w;
        bool down;
    } exps[3] = { { "ffn_gate_exps.weight", "w1", false }, { "ffn_up_exps.weight", "w3", false },
                  { "ffn_down_exps.weight", "w2", true } };
    for (int k = 0; k < 3; k++) {
        struct conv_item *it = item(b, CONV_EXPERTS, 2, exps[k].down ? d : F, exps[k].down ? F : d,
                                    SRC("ffn.experts"), "blk.%u.%s", N, exps[k].gguf);
        if (it) snprintf(it->src_suffix, sizeof it->src_suffix, "%s", exps[k].w);
    }
    MAT("ffn_gate_shexp.weight", "ffn.shared_experts.w1.weight", F, d);
    MAT("ffn_up_shexp.weight", "ffn.shared_experts.w3.weight", F, d);
    MAT("ffn_down_shexp.weight", "ffn.shared_experts.w2.weight", d, F);
#undef SRC
#undef VEC
#undef VEC2
#undef MAT
}

/* ---- resolution against the shards ---- */

struct resolver {
    struct conv_shards *s;
    const struct conv_config *c;
    enum convert_dense dense;
    char *err;
    size_t len;
};

static void shape_str(char *dst, size_t n, uint32_t nd, const uint64_t *shape)
{
    size_t k = (size_t)snprintf(dst, n, "[");
    for (uint32_t i = 0; i < nd && k < n; i++) k += (size_t)snprintf(dst + k, n - k, "%s%" PRIu64, i ? ", " : "", shape[i]);
    if (k < n) snprintf(dst + k, n - k, "]");
}

/* Finds name, checks its shape, marks it used. */
static int want(struct resolver *r, const char *name, uint32_t nd, uint64_t d0, uint64_t d1, struct conv_entry **out)
{
    struct conv_entry *e = conv_shards_find(r->s, name);
    if (!e) return errf(r->err, r->len, "%s: missing from the checkpoint", name);
    const uint64_t exp[2] = { d0, d1 };
    if (e->t->n_dims != nd || e->t->shape[0] != d0 || (nd > 1 && e->t->shape[1] != d1)) {
        char got[128], wanted[64];
        shape_str(got, sizeof got, e->t->n_dims, e->t->shape);
        shape_str(wanted, sizeof wanted, nd, exp);
        return errf(r->err, r->len, "%s: shape %s, expected %s from config.json", name, got, wanted);
    }
    e->used = true;
    *out = e;
    return 0;
}

static enum gguf_type dense_type(enum convert_dense d)
{
    return d == CONVERT_DENSE_BF16 ? GGUF_TYPE_BF16 : d == CONVERT_DENSE_F16 ? GGUF_TYPE_F16 : GGUF_TYPE_Q8_0;
}

/* A dense matrix source [rows][cols]: FP8 with its scale grid, or BF16 / F16 / F32.
 * Sets *out_type to what it becomes. */
static int want_matrix(struct resolver *r, const char *wname, uint64_t rows, uint64_t cols, struct conv_src *src,
                       enum gguf_type *out_type)
{
    if (want(r, wname, 2, rows, cols, &src->w)) return -1;
    const enum st_dtype dt = src->w->t->dtype;
    switch (dt) {
    case ST_F8_E4M3: {
        char sname[CONV_NAME_LEN + 8];
        size_t n = strlen(wname);
        if (n < 7 || strcmp(wname + n - 7, ".weight") != 0) return errf(r->err, r->len, "%s: FP8 weight without a .weight name", wname);
        snprintf(sname, sizeof sname, "%.*s.scale", (int)(n - 7), wname);
        if (want(r, sname, 2, (rows + CKPT_FP8_BLOCK - 1) / CKPT_FP8_BLOCK, (cols + CKPT_FP8_BLOCK - 1) / CKPT_FP8_BLOCK,
                 &src->scale))
            return -1;
        if (src->scale->t->dtype != ST_F8_E8M0)
            return errf(r->err, r->len, "%s: dtype %s, expected F8_E8M0", sname, st_dtype_name(src->scale->t->dtype));
        *out_type = dense_type(r->dense);
        break;
    }
    case ST_BF16: *out_type = GGUF_TYPE_BF16; break;
    case ST_F16: *out_type = GGUF_TYPE_F16; break;
    case ST_F32: *out_type = dense_type(r->dense); break;
    default:
        return errf(r->err, r->len, "%s: dtype %s, expected F8_E4M3 (with .scale), BF16, F16 or F32", wname, st_dtype_name(dt));
    }
    if (*out_type == GGUF_TYPE_Q8_0 && cols % QK8_0)
        return errf(r->err, r->len, "%s: %" PRIu64 " columns, Q8_0 needs a multiple of %d (use --dense bf16)", wname, cols, QK8_0);
    return 0;
}

static int resolve_item(struct resolver *r, struct conv_item *it)
{
    const uint64_t rows = it->rows, cols = it->cols;
    it->n_src = it->kind == CONV_EXPERTS ? r->c->n_expert : 1;
    it->src = calloc(it->n_src, sizeof *it->src);
    if (!it->src) return errf(r->err, r->len, "out of memory");
    switch (it->kind) {
    case CONV_VECTOR:
        if (it->src_dims == 1 ? want(r, it->src_name, 1, cols, 0, &it->src[0].w) : want(r, it->src_name, 2, rows, cols, &it->src[0].w))
            return -1;
        it->src_dtype = it->src[0].w->t->dtype;
        if (it->src_dtype != ST_F32 && it->src_dtype != ST_BF16 && it->src_dtype != ST_F16)
            return errf(r->err, r->len, "%s: dtype %s, expected F32, BF16 or F16", it->src_name, st_dtype_name(it->src_dtype));
        it->type = GGUF_TYPE_F32;
        break;
    case CONV_MATRIX:
        if (want_matrix(r, it->src_name, rows, cols, &it->src[0], &it->type)) return -1;
        it->src_dtype = it->src[0].w->t->dtype;
        break;
    case CONV_TID2EID:
        if (want(r, it->src_name, 2, rows, cols, &it->src[0].w)) return -1;
        it->src_dtype = it->src[0].w->t->dtype;
        if (it->src_dtype != ST_I64 && it->src_dtype != ST_I32)
            return errf(r->err, r->len, "%s: dtype %s, expected I64 or I32", it->src_name, st_dtype_name(it->src_dtype));
        it->type = GGUF_TYPE_I32;
        break;
    case CONV_EXPERTS:
        for (uint32_t e = 0; e < it->n_src; e++) {
            char wname[CONV_NAME_LEN + 64];
            snprintf(wname, sizeof wname, "%s.%u.%s.weight", it->src_name, e, it->src_suffix);
            struct conv_entry *probe = conv_shards_find(r->s, wname);
            if (!probe) return errf(r->err, r->len, "%s: missing from the checkpoint", wname);
            if (e == 0) it->src_dtype = probe->t->dtype;
            if (probe->t->dtype != it->src_dtype)
                return errf(r->err, r->len, "%s: dtype %s, expected %s like expert 0", wname, st_dtype_name(probe->t->dtype),
                            st_dtype_name(it->src_dtype));
            if (it->src_dtype == ST_I8) {
                /* FP4 e2m1, two per byte, scales per 32 columns. */
                if (cols % CKPT_FP4_BLOCK)
                    return errf(r->err, r->len, "%s: %" PRIu64 " columns, FP4 experts need a multiple of %d", wname, cols, CKPT_FP4_BLOCK);
                char sname[CONV_NAME_LEN + 64];
                snprintf(sname, sizeof sname, "%s.%u.%s.scale", it->src_name, e, it->src_suffix);
                if (want(r, wname, 2, rows, cols / 2, &it->src[e].w) ||
                    want(r, sname, 2, rows, cols / CKPT_FP4_BLOCK, &it->src[e].scale))
                    return -1;
                if (it->src[e].scale->t->dtype != ST_F8_E8M0)
                    return errf(r->err, r->len, "%s: dtype %s, expected F8_E8M0", sname, st_dtype_name(it->src[e].scale->t->dtype));
                it->type = GGUF_TYPE_MXFP4;
            } else if (want_matrix(r, wname, rows, cols, &it->src[e], &it->type)) {
                return -1;
            }
        }
        break;
    }
    /* GGUF shape: the official one reversed; stacked experts add the expert dimension. */
    if (it->kind == CONV_VECTOR && it->src_dims == 1) {
        it->n_dims = 1;
        it->ne[0] = cols;
    } else {
        it->n_dims = 2;
        it->ne[0] = cols;
        it->ne[1] = rows;
        if (it->kind == CONV_EXPERTS) {
            it->n_dims = 3;
            it->ne[2] = it->n_src;
        }
    }
    uint64_t n = 1;
    for (uint32_t i = 0; i < it->n_dims; i++) n *= it->ne[i]; /* config sizes are capped: no overflow */
    if (gguf_type_nbytes(it->type, n, &it->out_bytes))
        return errf(r->err, r->len, "%s: %" PRIu64 " elements do not fill %s blocks", it->name, n, gguf_type_name(it->type));
    for (uint32_t k = 0; k < it->n_src; k++)
        it->src_bytes += it->src[k].w->t->nbytes + (it->src[k].scale ? it->src[k].scale->t->nbytes : 0);
    return 0;
}

int conv_plan_build(struct conv_plan *p, const struct conv_config *c, struct conv_shards *s, bool include_mtp,
                    enum convert_dense dense, char *err, size_t len)
{
    memset(p, 0, sizeof *p);
    struct builder b = { p, false };
    const uint64_t d = c->n_embd, hcd = (uint64_t)c->n_hc * d;
    item(&b, CONV_MATRIX, 2, c->n_vocab, d, "embed.weight", "token_embd.weight");
    for (uint32_t il = 0; il < c->n_layer; il++) {
        char P[32];
        snprintf(P, sizeof P, "layers.%u.", il);
        add_block(&b, c, P, il, c->ratio[il], il < c->n_hash_layer);
    }
    p->mtp = include_mtp && c->n_nextn > 0 && conv_shards_find(s, "mtp.0.e_proj.weight");
    if (p->mtp) {
        /* llama.cpp's nextn layout (llama_model_deepseek4's loader): the MTP block is block
         * n_layer with the usual block names, its extra tensors under blk.N.nextn.*, e_proj
         * and h_proj kept apart; embed and head are shared with the trunk. */
        const uint32_t N = c->n_layer;
        add_block(&b, c, "mtp.0.", N, c->n_ratio > N ? c->ratio[N] : 0, false);
        item(&b, CONV_MATRIX, 2, d, d, "mtp.0.e_proj.weight", "blk.%u.nextn.e_proj.weight", N);
        item(&b, CONV_MATRIX, 2, d, d, "mtp.0.h_proj.weight", "blk.%u.nextn.h_proj.weight", N);
        item(&b, CONV_VECTOR, 1, 1, d, "mtp.0.enorm.weight", "blk.%u.nextn.enorm.weight", N);
        item(&b, CONV_VECTOR, 1, 1, d, "mtp.0.hnorm.weight", "blk.%u.nextn.hnorm.weight", N);
        item(&b, CONV_VECTOR, 1, 1, d, "mtp.0.norm.weight", "blk.%u.nextn.shared_head_norm.weight", N);
        item(&b, CONV_VECTOR, 2, c->n_hc, hcd, "mtp.0.hc_head_fn", "blk.%u.nextn.hc_head_fn.weight", N);
        item(&b, CONV_VECTOR, 1, 1, c->n_hc, "mtp.0.hc_head_base", "blk.%u.nextn.hc_head_base.weight", N);
        item(&b, CONV_VECTOR, 1, 1, 1, "mtp.0.hc_head_scale", "blk.%u.nextn.hc_head_scale.weight", N);
    }
    p->n_blocks = c->n_layer + (p->mtp ? 1 : 0);
    item(&b, CONV_VECTOR, 1, 1, d, "norm.weight", "output_norm.weight");
    item(&b, CONV_MATRIX, 2, c->n_vocab, d, "head.weight", "output.weight");
    item(&b, CONV_VECTOR, 2, c->n_hc, hcd, "hc_head_fn", "output_hc_fn.weight");
    item(&b, CONV_VECTOR, 1, 1, c->n_hc, "hc_head_base", "output_hc_base.weight");
    item(&b, CONV_VECTOR, 1, 1, 1, "hc_head_scale", "output_hc_scale.weight");
    if (b.oom) {
        conv_plan_free(p);
        return errf(err, len, "out of memory");
    }
    struct resolver r = { s, c, dense, err, len };
    for (size_t i = 0; i < p->n_items; i++)
        if (resolve_item(&r, &p->items[i])) {
            errf_prefix(err, len, "%s", p->items[i].name);
            conv_plan_free(p);
            return -1;
        }
    for (size_t i = 0; i < s->n_entries; i++) {
        struct conv_entry *e = &s->entries[i];
        if (!e->used && !p->mtp && !strncmp(e->name, "mtp.", 4) && c->n_nextn > 0) e->used = true; /* dropped */
        if (!e->used) {
            errf(err, len, "unknown tensor %s (%s %s) in %s: not part of the deepseek4 layout for this config.json",
                 e->name, st_dtype_name(e->t->dtype), "tensor", e->file->path);
            conv_plan_free(p);
            return -1;
        }
    }
    return 0;
}
