/* The Vulkan backend's engine-wide part: device and kernels, every weight tensor uploaded
 * in its file format into a few large allocations, and the memory check that says how much
 * the model needs when the device has too little. */
#include "engine/vulkan/vk_internal.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "common/errmsg.h"

const struct vk_span *vk_tensor_span(const struct vk_engine *e, tensor_ref t)
{
    if (!t) return NULL;
    return &e->tspans[t - e->m->file->tensors];
}

struct vk_device *vk_engine_device(struct vk_engine *e) { return e->d; }
const struct vk_ops *vk_engine_ops(struct vk_engine *e) { return &e->ops; }
uint64_t vk_engine_weight_bytes(const struct vk_engine *e) { return e->weight_bytes; }

/* The largest device-local heap: where the weights must fit. */
static uint64_t device_local_bytes(const struct vk_device *d)
{
    uint64_t best = 0;
    for (uint32_t i = 0; i < d->mem.memoryHeapCount; i++)
        if ((d->mem.memoryHeaps[i].flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT) && d->mem.memoryHeaps[i].size > best)
            best = d->mem.memoryHeaps[i].size;
    return best;
}

static bool is_expert_tensor(const struct model *m, tensor_ref t)
{
    for (uint32_t il = 0; il < m->hp.n_layer; il++) {
        const struct layer_weights *lw = &m->layers[il];
        if (t == lw->ffn_gate_exps || t == lw->ffn_up_exps || t == lw->ffn_down_exps) return true;
    }
    return false;
}

void vk_proj_tensors(const struct model *m, uint32_t il, tensor_ref out[VK_PROJ_COUNT])
{
    const struct layer_weights *lw = &m->layers[il];
    const uint32_t r = m->hp.ratio[il];
    tensor_ref t[VK_PROJ_COUNT] = { lw->attn_q_a, lw->attn_kv, r ? lw->comp_kv : NULL, r ? lw->comp_gate : NULL,
                                    r == 4 ? lw->ix_comp_kv : NULL, r == 4 ? lw->ix_comp_gate : NULL,
                                    r == 4 ? lw->ix_proj : NULL };
    memcpy(out, t, sizeof t);
}

/* Places layer il's projection weights back to back in one span when they share type and
 * row length (then one dispatch computes them all), and records each part's columns. */
/* The hc split of one site (see struct vk_hc_split): a part per core a CPU driver is likely
 * to have (4), else 256 floats a part (V4: 64, the small model: 16), halved until the parts
 * are whole chunks and at most VK_HC_MAX_PARTS (the mix buffer holds that many per token). */
static void plan_hc_split(const struct vk_engine *e, tensor_ref fn, struct vk_hc_split *out)
{
    out->parts = 1;
    struct vk_weight w;
    char why[160];
    if (vk_weight_of(e, fn, 0, &w, why, sizeof why)) return; /* the fused kernel needs no view */
    uint32_t parts = e->ops.layout == VK_MATVEC_LANES ? 4 : w.n_in / 256;
    while (parts > 1 && (parts > VK_HC_MAX_PARTS || vk_weight_split_k(&w, parts, &out->w, why, sizeof why)))
        parts /= 2;
    if (parts > 1) out->parts = parts;
}

/* Whether layer il's grouped expert lists may walk small LANES tiles (struct vk_moe): the
 * down weight and the gate/up weights (the fused pair, else gate and up apart) all must.
 * Resident experts only; a weight with no view answers false, and the step reports its
 * error. */
static void plan_moe_tiles(struct vk_engine *e, uint32_t il)
{
    const struct layer_weights *lw = &e->m->layers[il];
    struct vk_moe *mo = &e->moe[il];
    struct vk_weight dw, gw, uw;
    char why[160];
    mo->small_tiles = false;
    if (e->paging || e->ops.layout != VK_MATVEC_LANES || vk_weight_of(e, lw->ffn_down_exps, 0, &dw, why, sizeof why))
        return;
    if (mo->gu_fused) gw = uw = mo->gu;
    else if (vk_weight_of(e, lw->ffn_gate_exps, 0, &gw, why, sizeof why) ||
             vk_weight_of(e, lw->ffn_up_exps, 0, &uw, why, sizeof why))
        return;
    mo->small_tiles = vk_weight_groups_in_small_tiles(&e->ops, &dw) && vk_weight_groups_in_small_tiles(&e->ops, &gw) &&
                      vk_weight_groups_in_small_tiles(&e->ops, &uw);
}

static int upload_proj(struct vk_engine *e, uint32_t il, bool *placed, char *err, size_t err_len)
{
    const struct model *m = e->m;
    struct vk_proj *p = &e->proj[il];
    tensor_ref t[VK_PROJ_COUNT];
    vk_proj_tensors(m, il, t);
    p->fused = true;
    uint64_t bytes = 0;
    for (int i = 0; i < VK_PROJ_COUNT; i++) {
        p->col[i] = p->width;
        if (!t[i]) continue;
        p->width += (uint32_t)t[i]->ne[1];
        bytes += t[i]->nbytes;
        if (t[i]->type != t[0]->type || t[i]->ne[0] != t[0]->ne[0] || vk_wtype(t[i]->type) < 0) p->fused = false;
    }
    if (p->width > e->proj_width_max) e->proj_width_max = p->width;
    if (bytes > e->d->max_range || bytes > e->d->max_alloc) p->fused = false; /* the matvec splits rows instead */
    if (!p->fused) return 0;
    struct vk_span all;
    if (vk_arena_alloc(e->weights, bytes, 256, &all, err, err_len)) return -1;
    uint64_t off = 0;
    for (int i = 0; i < VK_PROJ_COUNT; i++) {
        if (!t[i]) continue;
        uint64_t idx = (uint64_t)(t[i] - m->file->tensors);
        if (vk_span_upload(e->d, &all, off, t[i]->data, t[i]->nbytes, err, err_len))
            return errf_prefix(err, err_len, "uploading %s", t[i]->name);
        /* the tensor's own span is its part of the group */
        e->tspans[idx] = vk_span_sub(&all, off, t[i]->nbytes);
        placed[idx] = true;
        e->weight_bytes += t[i]->nbytes;
        off += t[i]->nbytes;
    }
    return vk_weight_init(&p->w, &all, t[0]->type, (uint32_t)t[0]->ne[0], p->width, 1, err, err_len);
}

/* Uploads tensors t[0..n) back to back into one span (when they share type and row length)
 * and points each tensor's own span at its part. Returns 1 when placed, 0 when not. */
static int upload_group(struct vk_engine *e, const tensor_ref *t, int n, bool *placed, struct vk_span *all,
                        char *err, size_t err_len)
{
    uint64_t bytes = 0;
    for (int i = 0; i < n; i++) {
        if (!t[i] || t[i]->type != t[0]->type || t[i]->ne[0] != t[0]->ne[0] || vk_wtype(t[i]->type) < 0) return 0;
        bytes += t[i]->nbytes;
    }
    /* a group bound whole must fit one binding and one allocation; else keep them apart */
    if (bytes > e->d->max_range || bytes > e->d->max_alloc) return 0;
    if (vk_arena_alloc(e->weights, bytes, 256, all, err, err_len)) return -1;
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        uint64_t idx = (uint64_t)(t[i] - e->m->file->tensors);
        if (vk_span_upload(e->d, all, off, t[i]->data, t[i]->nbytes, err, err_len))
            return errf_prefix(err, err_len, "uploading %s", t[i]->name);
        e->tspans[idx] = vk_span_sub(all, off, t[i]->nbytes);
        placed[idx] = true;
        e->weight_bytes += t[i]->nbytes;
        off += t[i]->nbytes;
    }
    return 1;
}

static int upload_moe(struct vk_engine *e, uint32_t il, bool *placed, char *err, size_t err_len)
{
    const struct model_hparams *hp = &e->m->hp;
    const struct layer_weights *lw = &e->m->layers[il];
    struct vk_moe *mo = &e->moe[il];
    mo->width = hp->n_expert + 2 * hp->n_ff_exp;
    struct vk_span all;
    tensor_ref proj[3] = { lw->ffn_gate_inp, lw->ffn_gate_shexp, lw->ffn_up_shexp };
    int rc = upload_group(e, proj, 3, placed, &all, err, err_len);
    if (rc < 0) return -1;
    if (rc > 0) {
        mo->proj_fused = true;
        if (vk_weight_init(&mo->proj, &all, proj[0]->type, hp->n_embd, mo->width, 1, err, err_len)) return -1;
    }
    tensor_ref gu[2] = { lw->ffn_gate_exps, lw->ffn_up_exps };
    if (e->paging) return 0; /* paged experts live in the slot tensors, not here */
    if (gu[0] && gu[1] && gu[0]->ne[1] != gu[1]->ne[1]) return 0;
    rc = upload_group(e, gu, 2, placed, &all, err, err_len);
    if (rc < 0) return -1;
    if (rc > 0) {
        mo->gu_fused = true;
        if (vk_weight_init(&mo->gu, &all, gu[0]->type, hp->n_embd, hp->n_ff_exp, 2 * hp->n_expert, err, err_len)) return -1;
    }
    return 0;
}

/* A test setting from the environment: *out keeps its value when name is unset or empty. */
static int env_setting(const char *name, uint32_t lo, uint32_t hi, bool pow2, uint32_t *out, char *err, size_t err_len)
{
    const char *v = getenv(name);
    if (!v || !*v) return 0;
    char *end;
    unsigned long n = strtoul(v, &end, 10);
    if (*end || n < lo || n > hi || (pow2 && (n & (n - 1))))
        return errf(err, err_len, "%s=%s: expected %s%u..%u", name, v, pow2 ? "a power of two in " : "", lo, hi);
    *out = (uint32_t)n;
    return 0;
}

int vk_engine_open(const struct model *m, const struct engine_options *opt, void **ctx, char *err, size_t err_len)
{
    *ctx = NULL;
    const struct model_hparams *hp = &m->hp;
    if (hp->n_hc > 4) return errf(err, err_len, "vulkan: n_hc %u, the hc kernel handles at most 4 streams", hp->n_hc);
    if (hp->n_embd % 4) return errf(err, err_len, "vulkan: n_embd %u, the hc kernel reads streams as float4", hp->n_embd);
    if (hp->n_expert_used > ABI_ROUTER_MAX_K || hp->n_expert > ABI_ROUTER_MAX_EXPERTS)
        return errf(err, err_len, "vulkan: %u of %u experts per token, the router kernel handles %d of %d", hp->n_expert_used,
                    hp->n_expert, ABI_ROUTER_MAX_K, ABI_ROUTER_MAX_EXPERTS);
    if (hp->ix_topk > ABI_INDEXER_MAX_TOPK)
        return errf(err, err_len, "vulkan: indexer top-k %u, the indexer kernel keeps at most %d", hp->ix_topk,
                    ABI_INDEXER_MAX_TOPK);
    if (hp->head_dim % 4 || hp->head_dim > ABI_ATTN_MAX_HEAD_DIM)
        return errf(err, err_len, "vulkan: head_dim %u, the attention kernel reads rows of float4 up to %d", hp->head_dim,
                    ABI_ATTN_MAX_HEAD_DIM);
    bool *placed = NULL; /* [n_tensors]: already uploaded as part of a projection group */
    struct vk_engine *e = calloc(1, sizeof *e);
    if (!e) return errf(err, err_len, "out of memory");
    e->m = m;
    e->paging = opt->expert_cache_mb > 0;
    e->max_batch = VK_BATCH;
    const struct gguf_file *f = m->file;
    e->tspans = calloc(f->n_tensors ? f->n_tensors : 1, sizeof *e->tspans);
    if (!e->tspans) { free(e); return errf(err, err_len, "out of memory"); }
    if (vk_device_create(&e->d, opt->device_index, opt->device_uuid, err, err_len)) goto fail;
    if (vk_ops_create(&e->ops, e->d, err, err_len)) goto fail;

    /* Everything but the token embedding (looked up on the host) goes to the device. */
    uint64_t need = 0, need_experts = 0;
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const struct gguf_tensor *t = &f->tensors[i];
        if (t == m->token_embd) continue;
        if (is_expert_tensor(m, t)) {
            need_experts += t->nbytes;
            if (e->paging) continue;
        }
        need += (t->nbytes + 255) & ~(uint64_t)255;
    }
    uint64_t have = device_local_bytes(e->d);
    if (need > have) {
        if (e->paging)
            errf(err, err_len, "vulkan: %s has %" PRIu64 " MiB of device memory; the weights other than the routed experts need %" PRIu64 " MiB",
                 e->d->props.deviceName, have >> 20, need >> 20);
        else
            errf(err, err_len, "vulkan: %s has %" PRIu64 " MiB of device memory; the weights need %" PRIu64 " MiB (%" PRIu64
                 " MiB without the routed experts: page them with --expert-cache-mb)",
                 e->d->props.deviceName, have >> 20, need >> 20, (need - need_experts) >> 20);
        goto fail;
    }
    /* chunks of up to 1 GiB, and no more than one word-texel view spans (the LANES token
     * tile reads words through it), but no bigger than the weights need (plus alignment
     * slack): a small model must not hold a whole gigabyte of device memory */
    uint64_t chunk = e->d->max_alloc < (1ull << 30) ? e->d->max_alloc : (1ull << 30);
    uint64_t word_view = (uint64_t)e->d->props.limits.maxTexelBufferElements * 4;
    if (word_view >= (64u << 20) && word_view < chunk) chunk = word_view;
    if (need + (16u << 20) < chunk) chunk = need + (16u << 20);
    if (vk_arena_create(&e->weights, e->d, VK_MEM_DEVICE, chunk, err, err_len)) goto fail;
    e->proj = calloc(hp->n_layer, sizeof *e->proj);
    e->moe = calloc(hp->n_layer, sizeof *e->moe);
    placed = calloc(f->n_tensors ? f->n_tensors : 1, sizeof *placed);
    if (!e->proj || !e->moe || !placed) {
        errf(err, err_len, "out of memory");
        goto fail;
    }
    /* Test settings: FLASHBOX_VK_ATTN_CHUNK=N attends in chunks of N keys (1..ABI_ATTN_CHUNK);
     * FLASHBOX_VK_INDEX_CHUNK=N (a power of two up to ABI_INDEXER_MAX_CHUNK) and
     * FLASHBOX_VK_INDEX_GROUP=G (2..ABI_INDEXER_MAX_GROUP) set the indexer's chunk and merge
     * width. Small ones make whole-model tests cross chunk boundaries and run several
     * merge levels on short sequences. */
    e->ix_chunk = ABI_INDEXER_CHUNK;
    e->ix_group = ABI_INDEXER_GROUP;
    if (env_setting("FLASHBOX_VK_ATTN_CHUNK", 1, ABI_ATTN_CHUNK, false, &e->attn_chunk, err, err_len) ||
        env_setting("FLASHBOX_VK_INDEX_CHUNK", 1, ABI_INDEXER_MAX_CHUNK, true, &e->ix_chunk, err, err_len) ||
        env_setting("FLASHBOX_VK_INDEX_GROUP", 2, ABI_INDEXER_MAX_GROUP, false, &e->ix_group, err, err_len))
        goto fail;
    /* A CPU driver splits a prefill batch deep in the context into several submits, each
     * inside the fence timeout (vk_step); FLASHBOX_VK_SUBMIT_KWORK=N bounds a submit's depth
     * work at N x 1024 multiply-adds on any device (tests split short sequences with small
     * ones; 0 = no bound). */
    e->submit_work = e->d->props.deviceType == VK_PHYSICAL_DEVICE_TYPE_CPU ? VK_CPU_SUBMIT_WORK : 0;
    uint32_t kwork = UINT32_MAX;
    if (env_setting("FLASHBOX_VK_SUBMIT_KWORK", 0, UINT32_MAX - 1, false, &kwork, err, err_len)) goto fail;
    if (kwork != UINT32_MAX) e->submit_work = (uint64_t)kwork * 1024;
    /* FLASHBOX_VK_NO_FUSE=1 keeps every weight separate: the fallback for files whose
     * projections differ in type, exercised by the tests on files where they do not. */
    const char *nf = getenv("FLASHBOX_VK_NO_FUSE");
    bool fuse = !(nf && *nf == '1');
    for (uint32_t il = 0; il < hp->n_layer && fuse; il++)
        if (upload_proj(e, il, placed, err, err_len) || upload_moe(e, il, placed, err, err_len)) goto fail;
    for (uint32_t il = 0; il < hp->n_layer && !fuse; il++) { /* column layout only */
        tensor_ref t[VK_PROJ_COUNT];
        vk_proj_tensors(m, il, t);
        struct vk_proj *p = &e->proj[il];
        for (int i = 0; i < VK_PROJ_COUNT; i++) {
            p->col[i] = p->width;
            if (t[i]) p->width += (uint32_t)t[i]->ne[1];
        }
        if (p->width > e->proj_width_max) e->proj_width_max = p->width;
        e->moe[il].width = hp->n_expert + 2 * hp->n_ff_exp;
    }
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const struct gguf_tensor *t = &f->tensors[i];
        if (t == m->token_embd || placed[i] || (e->paging && is_expert_tensor(m, t))) continue;
        if (vk_arena_alloc(e->weights, t->nbytes, 256, &e->tspans[i], err, err_len) ||
            vk_span_upload(e->d, &e->tspans[i], 0, t->data, t->nbytes, err, err_len)) {
            errf_prefix(err, err_len, "uploading %s", t->name);
            goto fail;
        }
        e->weight_bytes += t->nbytes;
    }
    e->hc_split = calloc(hp->n_layer, sizeof *e->hc_split);
    if (!e->hc_split) {
        errf(err, err_len, "out of memory");
        goto fail;
    }
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        plan_hc_split(e, m->layers[il].hc_attn_fn, &e->hc_split[il][0]);
        plan_hc_split(e, m->layers[il].hc_ffn_fn, &e->hc_split[il][1]);
        plan_moe_tiles(e, il);
    }
    if (e->paging && vk_experts_open(e, opt, err, err_len)) goto fail;
    /* every pipeline the forward uses, now rather than on the first token */
    if (vk_ops_prepare_all(&e->ops, err, err_len)) goto fail;
    /* ... and the matvec pipelines of every weight type the model's matrices have */
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        const struct layer_weights *lw = &m->layers[il];
        tensor_ref mats[] = { lw->attn_q_a, lw->attn_q_b, lw->attn_kv, lw->attn_output_a, lw->attn_output_b, lw->comp_kv,
                              lw->comp_gate, lw->ix_q_b, lw->ix_proj, lw->ix_comp_kv, lw->ix_comp_gate, lw->ffn_gate_inp,
                              lw->ffn_gate_exps, lw->ffn_up_exps, lw->ffn_down_exps, lw->ffn_gate_shexp, lw->ffn_up_shexp,
                              lw->ffn_down_shexp, m->output };
        for (size_t i = 0; i < sizeof mats / sizeof mats[0]; i++)
            if (mats[i] && vk_ops_prepare_matvec(&e->ops, mats[i]->type, err, err_len)) {
                errf_prefix(err, err_len, "%s", mats[i]->name);
                goto fail;
            }
    }
    free(placed);
    *ctx = e;
    return 0;
fail:
    free(placed);
    vk_engine_close(e);
    return -1;
}

void vk_engine_close(void *ctx)
{
    struct vk_engine *e = ctx;
    if (!e) return;
    vk_experts_close(e);
    if (e->weights) vk_arena_destroy(e->weights);
    vk_ops_destroy(&e->ops);
    vk_device_destroy(e->d);
    free(e->tspans);
    free(e->proj);
    free(e->moe);
    free(e->hc_split);
    free(e);
}

int vk_device_memory(void *ctx, uint64_t *used, uint64_t *total)
{
    struct vk_engine *e = ctx;
    *used = vk_arena_bytes(e->weights) + (e->slot_arena ? vk_arena_bytes(e->slot_arena) : 0) + e->session_bytes;
    *total = device_local_bytes(e->d);
    return 0;
}

int vk_weight_of(const struct vk_engine *e, tensor_ref t, uint32_t n_mat_split, struct vk_weight *w, char *err, size_t err_len)
{
    /* GGUF shape [n_in, n_out, n_mat]; n_mat_split > 0 views a 2-D tensor's rows as that many
     * consecutive matrices (the grouped output projection). */
    uint32_t n_in = (uint32_t)t->ne[0], n_out = (uint32_t)t->ne[1], n_mat = (uint32_t)t->ne[2];
    if (n_mat_split) { n_out /= n_mat_split; n_mat = n_mat_split; }
    if (vk_weight_init(w, vk_tensor_span(e, t), t->type, n_in, n_out, n_mat, err, err_len))
        return errf_prefix(err, err_len, "%s", t->name);
    return 0;
}
