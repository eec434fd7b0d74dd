/* The Vulkan session: every device buffer a conversation needs (per-layer window ring,
 * compressed entries and compressor state; activations for VK_BATCH tokens; host-visible
 * input and logits), the RoPE cos/sin tables computed in double, and the recorder sized
 * for one batch. All allocated at creation; evaluation allocates nothing. */
#include "engine/vulkan/vk_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/errmsg.h"
#include "engine/ref/ref_ops.h"
#include "engine/session_plan.h"
#include "engine/session_state.h"
#include "engine/kv_store.h"

static uint32_t max_u32(uint32_t a, uint32_t b) { return a > b ? a : b; }

static int alloc_f(struct vk_session *s, struct vk_arena *a, struct vk_span *sp, uint64_t n_floats, char *err, size_t err_len)
{
    (void)s;
    return vk_arena_alloc(a, (n_floats ? n_floats : 1) * 4, 256, sp, err, err_len);
}

void vk_rope_fill(const double *freqs, uint32_t half, uint32_t rows, float *tab)
{
    for (uint32_t r = 0; r < rows; r++) {
        const uint64_t p = r < ABI_ROPE_LO_ROWS ? r : (uint64_t)(r - ABI_ROPE_LO_ROWS) * ABI_ROPE_LO_ROWS;
        for (uint32_t i = 0; i < half; i++) {
            double ang = (double)p * freqs[i];
            tab[((uint64_t)r * half + i) * 2] = (float)cos(ang);
            tab[((uint64_t)r * half + i) * 2 + 1] = (float)sin(ang);
        }
    }
}

/* The factored cos/sin table of pos * freq (abi.h, ABI_ROPE_LO_ROWS): rows for positions
 * 0..LO_ROWS-1, then rows for h * LO_ROWS up to n_ctx; [rows][rope_dim/2][2]. */
static int rope_table(struct vk_session *s, bool compressed, struct vk_span *out, char *err, size_t err_len)
{
    const struct model_hparams *hp = &s->e->m->hp;
    const uint32_t half = hp->rope_dim / 2, rows = vk_rope_rows(s->n_ctx);
    uint64_t n = (uint64_t)rows * half * 2;
    double freqs[256];
    if (half > 256) return errf(err, err_len, "rope_dim %u: at most 512", hp->rope_dim);
    ref_rope_freqs(hp, compressed, freqs);
    float *tab = malloc(n * sizeof *tab);
    if (!tab) return errf(err, err_len, "out of memory");
    vk_rope_fill(freqs, half, rows, tab);
    int rc = alloc_f(s, s->arena, out, n, err, err_len) || vk_span_upload(s->e->d, out, 0, tab, n * 4, err, err_len);
    free(tab);
    return rc ? -1 : 0;
}

void vk_session_destroy(void *state)
{
    struct vk_session *s = state;
    if (!s) return;
    vk_experts_release(s->e, s);
    vk_recorder_destroy(s->rec);
    s->e->session_bytes -= s->counted_bytes;
    vk_arena_destroy(s->arena);
    vk_arena_destroy(s->host);
    free(s->layers);
    free(s->embd_row);
    free(s->copies);
    free(s->kinds);
    free(s->stamps);
    free(s->ids_host);
    free(s->guess_host);
    free(s);
}

void vk_session_reset(void *state)
{
    struct vk_session *s = state;
    s->pos = 0;
    s->needs_reset = true;
}

/* The indexer's list areas of a session of n_ctx positions (pairs a token in each) and the
 * tokens they hold at once, for chunks of `chunk` entries merged `group` at a time. */
static uint32_t indexer_lists(const struct model_hparams *hp, uint32_t n_ctx, uint32_t chunk, uint32_t group, uint64_t pairs[2])
{
    bool csa = false;
    for (uint32_t il = 0; il < hp->n_layer; il++) csa |= hp->ratio[il] == 4;
    pairs[0] = pairs[1] = 0;
    if (csa) vk_indexer_levels(n_ctx / 4, hp->ix_topk, chunk, group, pairs);
    return vk_indexer_rows(pairs);
}

/* Floats of the batch activations (in vk_session_create's order of spans) and of the
 * host-visible buffers of a session; the indexer's lists as indexer_lists says. */
static void vk_session_buffers(const struct model_hparams *hp, uint32_t proj_width, uint32_t n_ctx, uint32_t ix_chunk,
                               uint32_t ix_group, uint64_t scratch[VK_N_SCRATCH], uint64_t host[VK_N_HOST])
{
    const uint64_t B = VK_BATCH, hd = hp->head_dim, K = hp->n_expert_used, L = EXPERT_STORE_LOOKAHEAD;
    const uint64_t ixh = max_u32(hp->ix_head, 1), ixd = max_u32(hp->ix_dim, 1);
    uint64_t pairs[2];
    const uint64_t ix_rows = indexer_lists(hp, n_ctx, ix_chunk, ix_group, pairs);
    const uint64_t n[VK_N_SCRATCH] = {
        B * hp->n_hc * hp->n_embd, B * (hp->n_hc + hp->n_hc * hp->n_hc), B * VK_HC_MAX_PARTS * ABI_HC_MAX_MIX, B * hp->n_embd,
        B * hp->q_rank, B * hp->n_head * hd, B * proj_width, B * hp->n_head * hd, B * hp->o_groups * hp->o_rank,
        B * hp->n_embd, B * ixh * ixd, ix_rows * (pairs[0] + pairs[1]) * 2, B * max_u32(hp->ix_topk, 1),
        B * (hp->n_expert + 2 * hp->n_ff_exp), B * K, 2 * hp->n_expert + 1 + B * K, B * K, 2 * B * K * hp->n_ff_exp,
        B * (K + 1) * hp->n_embd, L * B * hp->n_expert, L * B * K, L * B * K,
    };
    memcpy(scratch, n, sizeof n);
    host[0] = B * hp->n_embd;
    host[1] = B;
    host[2] = B * hp->n_vocab;
    host[3] = B * K;
    host[4] = B;
}

/* The widest row of a layer's attention-input projections (vk_proj): q_a, kv, the
 * compressor's kv and gate, the indexer compressor's kv and gate and its head weights. */
static uint32_t proj_width_of(const struct model_hparams *hp)
{
    uint32_t w = 0;
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        const uint32_t r = hp->ratio[il], coff = r == 4 ? 2 : 1;
        uint32_t x = hp->q_rank + hp->head_dim + (r ? 2 * coff * hp->head_dim : 0) + (r == 4 ? 4 * hp->ix_dim + hp->ix_head : 0);
        w = max_u32(w, x);
    }
    return w;
}

/* Floats of the staging rows of entries and keys before they are packed (vk_session.kv_raw). */
static uint64_t kv_raw_floats(const struct model_hparams *hp) { return (uint64_t)VK_KV_RAW_ROWS * (hp->head_dim + hp->ix_dim); }

/* One span of n floats (alloc_f: at least one) placed in the planned arena and counted. */
static void plan_add(struct vk_arena_plan *a, uint64_t *part, uint64_t *spans, uint64_t *largest, uint64_t floats)
{
    const uint64_t b = (floats ? floats : 1) * 4;
    vk_arena_plan_alloc(a, b);
    *part += b;
    *spans += b;
    if (b > *largest) *largest = b;
}

#define VK_SESSION_CHUNK (64ull << 20)      /* the session's device arena blocks */
#define VK_SESSION_HOST_CHUNK (16ull << 20) /* its host-visible arena blocks */

/* Bytes of each part of a session: its spans in vk_session_create's order, placed by the
 * arenas' own rule (vk_arena_plan) so that the blocks' unused tails are counted too. */
void vk_session_plan(const struct model_hparams *hp, enum engine_kv_type kv, uint32_t n_ctx, uint64_t parts[ENGINE_PLAN_PARTS],
                     uint64_t *largest)
{
    memset(parts, 0, ENGINE_PLAN_PARTS * sizeof *parts);
    *largest = 0;
    struct vk_arena_plan dev, host; /* 4 KiB each */
    memset(&dev, 0, sizeof dev);
    memset(&host, 0, sizeof host);
    dev.chunk_bytes = VK_SESSION_CHUNK;
    host.chunk_bytes = VK_SESSION_HOST_CHUNK;
    dev.align = host.align = 256;
    uint64_t spans = 0;
#define ADD(arena, part, floats) plan_add(&(arena), &parts[part], &spans, largest, floats)
    const uint64_t hd = hp->head_dim;
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        const uint32_t r = hp->ratio[il];
        ADD(dev, ENGINE_PLAN_WINDOW, (uint64_t)(hp->window + VK_BATCH) * hd);
        if (r) {
            ADD(dev, r == 4 ? ENGINE_PLAN_CSA_ENTRIES : ENGINE_PLAN_HCA_ENTRIES,
                plan_comp_rows(r, n_ctx) * kv_entry_words(kv, (uint32_t)hd));
            ADD(dev, ENGINE_PLAN_COMP_STATE, plan_comp_state_floats(r, hd));
        }
        if (r == 4) {
            ADD(dev, ENGINE_PLAN_IX_KEYS, plan_ix_rows(r, n_ctx) * kv_entry_words(kv, hp->ix_dim));
            ADD(dev, ENGINE_PLAN_COMP_STATE, plan_comp_state_floats(4, hp->ix_dim));
        }
    }
    if (kv != ENGINE_KV_F32) ADD(dev, ENGINE_PLAN_SCRATCH, kv_raw_floats(hp));
    uint64_t scratch[VK_N_SCRATCH], hostb[VK_N_HOST];
    vk_session_buffers(hp, proj_width_of(hp), n_ctx, ABI_INDEXER_CHUNK, ABI_INDEXER_GROUP, scratch, hostb);
    for (int i = 0; i < VK_N_SCRATCH; i++) ADD(dev, ENGINE_PLAN_SCRATCH, scratch[i]);
    for (int i = 0; i < VK_N_HOST; i++) ADD(host, ENGINE_PLAN_HOST, hostb[i]);
    const uint64_t host_spans = parts[ENGINE_PLAN_HOST];
    for (int i = 0; i < 2; i++) ADD(dev, ENGINE_PLAN_ROPE, (uint64_t)vk_rope_rows(n_ctx) * hp->rope_dim);
#undef ADD
    parts[ENGINE_PLAN_HOST] = vk_arena_plan_bytes(&host); /* the host arena whole */
    parts[ENGINE_PLAN_BLOCKS] = vk_arena_plan_bytes(&dev) - (spans - host_spans);
}

/* Dispatches one batch can record: ~40 per layer plus the head, and matvec row splits, and
 * each CSA layer's indexer levels for every group of ix_rows tokens (attention_index). */
static uint32_t max_dispatches(const struct model_hparams *hp, const struct vk_session *s)
{
    uint32_t n_csa = 0;
    for (uint32_t il = 0; il < hp->n_layer; il++) n_csa += hp->ratio[il] == 4;
    uint64_t pairs[2];
    const uint32_t levels = vk_indexer_levels(s->n_ctx / 4, hp->ix_topk, s->e->ix_chunk, s->e->ix_group, pairs);
    return 64 * hp->n_layer + 256 + n_csa * ((VK_BATCH + s->ix_rows - 1) / s->ix_rows) * (levels + 1);
}

int vk_session_create(void *ctx, const struct model *m, uint32_t n_ctx, enum engine_kv_type kv, void **state, char *err,
                      size_t err_len)
{
    struct vk_engine *e = ctx;
    const struct model_hparams *hp = &m->hp;
    *state = NULL;
    if (kv != ENGINE_KV_F32 && (hp->head_dim % 4 || hp->ix_dim % 4))
        return errf(err, err_len, "vulkan: KV type %s packs rows of four values: head_dim %u and ix_dim %u must be "
                    "multiples of 4", engine_kv_name(kv), hp->head_dim, hp->ix_dim);
    struct vk_session *s = calloc(1, sizeof *s);
    if (!s) return errf(err, err_len, "out of memory");
    s->e = e;
    s->n_ctx = n_ctx;
    s->kv = kv;
    s->ring_len = hp->window + VK_BATCH;
    s->ix_rows = indexer_lists(hp, n_ctx, e->ix_chunk, e->ix_group, s->ix_pairs);
    s->needs_reset = true;
    s->prof = &s->profile;
    s->pinned_layer = -1;
    const uint32_t B = VK_BATCH, hd = hp->head_dim, K = hp->n_expert_used;
    { /* every buffer is bound whole: the largest must fit one binding */
        uint64_t parts[ENGINE_PLAN_PARTS], largest;
        vk_session_plan(hp, kv, n_ctx, parts, &largest);
        if (largest > e->d->max_range) {
            free(s);
            return errf(err, err_len, "vulkan: a %u-position session needs a buffer of %llu bytes, past the device's "
                        "maxStorageBufferRange of %llu", n_ctx, (unsigned long long)largest,
                        (unsigned long long)e->d->max_range);
        }
    }
    s->ids_host = malloc((size_t)B * K * sizeof *s->ids_host);
    s->guess_host = malloc((size_t)EXPERT_STORE_LOOKAHEAD * B * K * sizeof *s->guess_host);
    s->layers = calloc(hp->n_layer, sizeof *s->layers);
    s->embd_row = malloc((size_t)hp->n_embd * sizeof(float));
    s->copies = malloc((size_t)B * hp->n_hc * sizeof *s->copies);
    s->kinds = malloc(max_dispatches(hp, s));
    s->stamps = malloc(max_dispatches(hp, s) * sizeof *s->stamps);
    if (!s->layers || !s->embd_row || !s->copies || !s->kinds || !s->stamps || !s->ids_host || !s->guess_host) {
        vk_session_destroy(s);
        return errf(err, err_len, "out of memory");
    }
    struct vk_device *d = e->d;
    if (vk_arena_create(&s->arena, d, VK_MEM_DEVICE, VK_SESSION_CHUNK, err, err_len) ||
        vk_arena_create(&s->host, d, VK_MEM_HOST, VK_SESSION_HOST_CHUNK, err, err_len) ||
        vk_recorder_create(d, max_dispatches(hp, s), max_dispatches(hp, s) + 2, &s->rec, err, err_len))
        goto fail;

    for (uint32_t il = 0; il < hp->n_layer; il++) {
        struct vk_layer_state *ls = &s->layers[il];
        uint32_t r = hp->ratio[il];
        if (alloc_f(s, s->arena, &ls->ring, (uint64_t)s->ring_len * hd, err, err_len)) goto fail;
        if (r && (alloc_f(s, s->arena, &ls->comp, plan_comp_rows(r, n_ctx) * kv_entry_words(kv, hd), err, err_len) ||
                  alloc_f(s, s->arena, &ls->kvc, plan_comp_state_floats(r, hd), err, err_len)))
            goto fail;
        if (r == 4 && (alloc_f(s, s->arena, &ls->ix_keys, plan_ix_rows(r, n_ctx) * kv_entry_words(kv, hp->ix_dim), err,
                                       err_len) ||
                       alloc_f(s, s->arena, &ls->ixc, plan_comp_state_floats(4, hp->ix_dim), err, err_len)))
            goto fail;
    }
    if (kv != ENGINE_KV_F32 && alloc_f(s, s->arena, &s->kv_raw, kv_raw_floats(hp), err, err_len)) goto fail;
    struct vk_span *scratch[VK_N_SCRATCH] = {
        &s->x, &s->hc, &s->mix, &s->a, &s->qr, &s->q, &s->proj, &s->o, &s->z, &s->f, &s->ixq, &s->ixs, &s->sel, &s->mp,
        &s->ids, &s->grp, &s->rw, &s->gu, &s->yd, &s->guess_mp, &s->guess_ids, &s->guess_rw,
    };
    struct vk_span *host[VK_N_HOST] = { &s->in_embd, &s->tokens, &s->logits, &s->slot_ids, &s->pos_rows };
    uint64_t n_scratch[VK_N_SCRATCH], n_host[VK_N_HOST];
    vk_session_buffers(hp, e->proj_width_max, n_ctx, e->ix_chunk, e->ix_group, n_scratch, n_host);
    for (size_t i = 0; i < VK_N_SCRATCH; i++)
        if (alloc_f(s, s->arena, scratch[i], n_scratch[i], err, err_len)) goto fail;
    for (size_t i = 0; i < VK_N_HOST; i++)
        if (alloc_f(s, s->host, host[i], n_host[i], err, err_len)) goto fail;
    if (!s->in_embd.host || !s->tokens.host || !s->logits.host || !s->slot_ids.host || !s->pos_rows.host) {
        errf(err, err_len, "vulkan: host-visible memory is not mappable");
        goto fail;
    }
    if (rope_table(s, false, &s->rope_swa, err, err_len) || rope_table(s, true, &s->rope_comp, err, err_len)) goto fail;
    s->counted_bytes = vk_arena_bytes(s->arena);
    e->session_bytes += s->counted_bytes;
    *state = s;
    return 0;
fail:
    errf_prefix(err, err_len, "vulkan session of %u positions", n_ctx);
    vk_session_destroy(s);
    return -1;
}

/* The session's state to or from the layout of session_state.h. The window ring is moved
 * whole (its rows sit at p % ring_len); everything else part by part. */
static int state_move(struct vk_session *s, uint32_t pos, uint32_t *data, bool save, char *err, size_t err_len)
{
    const struct model_hparams *hp = &s->e->m->hp;
    struct vk_device *d = s->e->d;
    const uint32_t hd = hp->head_dim;
    const uint64_t ring_floats = (uint64_t)s->ring_len * hd;
    float *ring = calloc(ring_floats, sizeof *ring);
    if (!ring) return errf(err, err_len, "out of memory");
    int rc = 0;
    for (uint32_t il = 0; il < hp->n_layer && !rc; il++) {
        const struct vk_layer_state *ls = &s->layers[il];
        struct session_state_layer o;
        session_state_layer(hp, s->kv, pos, il, &o);
        if (save) rc = vk_span_download(d, &ls->ring, 0, ring, ring_floats * 4, err, err_len);
        for (uint64_t r = 0; r < o.ring_rows && !rc; r++) {
            float *row = ring + (uint64_t)((o.ring_first + r) % s->ring_len) * hd;
            uint32_t *lay = data + o.ring_off + r * hd;
            memcpy(save ? (void *)lay : (void *)row, save ? (const void *)row : (const void *)lay, hd * sizeof(float));
        }
        if (!save && !rc) rc = vk_span_upload(d, &ls->ring, 0, ring, ring_floats * 4, err, err_len);
        const struct { const struct vk_span *sp; uint64_t off, n; } parts[4] = {
            { &ls->comp, o.comp_off, o.comp_rows * kv_entry_words(s->kv, hd) }, { &ls->kvc, o.kvc_off, o.kvc_floats },
            { &ls->ix_keys, o.ix_off, o.ix_rows * kv_entry_words(s->kv, hp->ix_dim) }, { &ls->ixc, o.ixc_off, o.ixc_floats },
        };
        for (int i = 0; i < 4 && !rc; i++) {
            if (!parts[i].n) continue;
            if (save && s->needs_reset && (i == 1 || i == 3)) { /* never run: the state a reset gives */
                for (uint64_t j = 0; j < parts[i].n; j++) {
                    const float v = j < parts[i].n / 2 ? 0.0f : -INFINITY;
                    memcpy(&data[parts[i].off + j], &v, 4);
                }
                continue;
            }
            rc = save ? vk_span_download(d, parts[i].sp, 0, data + parts[i].off, parts[i].n * 4, err, err_len)
                      : vk_span_upload(d, parts[i].sp, 0, data + parts[i].off, parts[i].n * 4, err, err_len);
        }
    }
    free(ring);
    return rc ? errf_prefix(err, err_len, "vulkan session state") : 0;
}

int vk_state_save(void *state, uint32_t *data, char *err, size_t err_len)
{
    struct vk_session *s = state;
    if (s->needs_reset && s->pos)
        return errf(err, err_len, "vulkan session state: a failed evaluation left it unusable (reset it first)");
    return state_move(s, s->pos, data, true, err, err_len);
}

int vk_state_load(void *state, uint32_t pos, const uint32_t *data, char *err, size_t err_len)
{
    struct vk_session *s = state;
    s->pos = 0;
    s->needs_reset = true;
    if (state_move(s, pos, (uint32_t *)data, false, err, err_len)) return -1; /* only read from when loading */
    s->pos = pos;
    s->needs_reset = false;
    return 0;
}
