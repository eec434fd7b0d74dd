/* The Vulkan session: every device buffer a conversation needs (per-layer window ring,
 * compressed entries and compressor state; activations for VK_BATCH tokens; host-visible
 * input and logits), the RoPE cos/sin tables computed in double, and the recorder sized
 * for one batch. All allocated at creation; evaluation allocates nothing. */
#include "engine/vk_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/errmsg.h"
#include "engine/ref_ops.h"

static uint32_t max_u32(uint32_t a, uint32_t b) { return a > b ? a : b; }

static int alloc_f(struct vk_session *s, struct vk_arena *a, struct vk_span *sp, uint64_t n_floats, char *err, size_t err_len)
{
    (void)s;
    return vk_arena_alloc(a, (n_floats ? n_floats : 1) * 4, 256, sp, err, err_len);
}

/* cos/sin of pos * freq for every position: [n_ctx][rope_dim/2][2]. */
static int rope_table(struct vk_session *s, bool compressed, struct vk_span *out, char *err, size_t err_len)
{
    const struct model_hparams *hp = &s->e->m->hp;
    const uint32_t half = hp->rope_dim / 2;
    uint64_t n = (uint64_t)s->n_ctx * half * 2;
    double freqs[256];
    if (half > 256) return errf(err, err_len, "rope_dim %u: at most 512", hp->rope_dim);
    ref_rope_freqs(hp, compressed, freqs);
    float *tab = malloc(n * sizeof *tab);
    if (!tab) return errf(err, err_len, "out of memory");
    for (uint32_t p = 0; p < s->n_ctx; p++)
        for (uint32_t i = 0; i < half; i++) {
            double ang = (double)p * freqs[i];
            tab[((uint64_t)p * half + i) * 2] = (float)cos(ang);
            tab[((uint64_t)p * half + i) * 2 + 1] = (float)sin(ang);
        }
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

/* Dispatches one batch can record: ~40 per layer plus the head, and matvec row splits. */
static uint32_t max_dispatches(const struct model_hparams *hp) { return 64 * hp->n_layer + 256; }

int vk_session_create(void *ctx, const struct model *m, uint32_t n_ctx, void **state, char *err, size_t err_len)
{
    struct vk_engine *e = ctx;
    const struct model_hparams *hp = &m->hp;
    *state = NULL;
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        uint32_t r = hp->ratio[il];
        uint64_t keys = (uint64_t)hp->window + (r == 4 ? hp->ix_topk : r ? n_ctx / r : 0);
        if (keys > ABI_ATTN_MAX_KEYS)
            return errf(err, err_len, "vulkan: a %u-position session needs %llu attention keys in layer %u (ratio %u); "
                        "the attention kernel holds %d", n_ctx, (unsigned long long)keys, il, r, ABI_ATTN_MAX_KEYS);
    }
    struct vk_session *s = calloc(1, sizeof *s);
    if (!s) return errf(err, err_len, "out of memory");
    s->e = e;
    s->n_ctx = n_ctx;
    s->ring_len = hp->window + VK_BATCH;
    s->needs_reset = true;
    s->prof = &s->profile;
    s->pinned_layer = -1;
    const uint32_t B = VK_BATCH, hd = hp->head_dim, K = hp->n_expert_used;
    s->ids_host = malloc((size_t)B * K * sizeof *s->ids_host);
    s->guess_host = malloc((size_t)EXPERT_STORE_LOOKAHEAD * B * K * sizeof *s->guess_host);
    s->layers = calloc(hp->n_layer, sizeof *s->layers);
    s->embd_row = malloc((size_t)hp->n_embd * sizeof(float));
    s->copies = malloc((size_t)B * hp->n_hc * sizeof *s->copies);
    s->kinds = malloc(max_dispatches(hp));
    s->stamps = malloc(max_dispatches(hp) * sizeof *s->stamps);
    if (!s->layers || !s->embd_row || !s->copies || !s->kinds || !s->stamps || !s->ids_host || !s->guess_host) {
        vk_session_destroy(s);
        return errf(err, err_len, "out of memory");
    }
    struct vk_device *d = e->d;
    if (vk_arena_create(&s->arena, d, VK_MEM_DEVICE, 64u << 20, err, err_len) ||
        vk_arena_create(&s->host, d, VK_MEM_HOST, 16u << 20, err, err_len) ||
        vk_recorder_create(d, max_dispatches(hp), max_dispatches(hp) + 2, &s->rec, err, err_len))
        goto fail;

    for (uint32_t il = 0; il < hp->n_layer; il++) {
        struct vk_layer_state *ls = &s->layers[il];
        uint32_t r = hp->ratio[il];
        if (alloc_f(s, s->arena, &ls->ring, (uint64_t)s->ring_len * hd, err, err_len)) goto fail;
        if (r) {
            uint32_t coff = r == 4 ? 2 : 1, rows = r == 4 ? 8 : r;
            if (alloc_f(s, s->arena, &ls->comp, (uint64_t)(n_ctx / r + 1) * hd, err, err_len) ||
                alloc_f(s, s->arena, &ls->kvc, 2ull * rows * coff * hd, err, err_len))
                goto fail;
        }
        if (r == 4 && (alloc_f(s, s->arena, &ls->ix_keys, (uint64_t)(n_ctx / 4 + 1) * hp->ix_dim, err, err_len) ||
                       alloc_f(s, s->arena, &ls->ixc, 2ull * 8 * 2 * hp->ix_dim, err, err_len)))
            goto fail;
    }
    const uint32_t ixh = max_u32(hp->ix_head, 1), ixd = max_u32(hp->ix_dim, 1);
    struct { struct vk_span *sp; uint64_t n; } bufs[] = {
        { &s->x, (uint64_t)B * hp->n_hc * hp->n_embd }, { &s->hc, (uint64_t)B * (hp->n_hc + hp->n_hc * hp->n_hc) },
        { &s->mix, (uint64_t)B * VK_HC_MAX_PARTS * ABI_HC_MAX_MIX },
        { &s->a, (uint64_t)B * hp->n_embd }, { &s->qr, (uint64_t)B * hp->q_rank },
        { &s->q, (uint64_t)B * hp->n_head * hd }, { &s->proj, (uint64_t)B * e->proj_width_max },
        { &s->o, (uint64_t)B * hp->n_head * hd }, { &s->z, (uint64_t)B * hp->o_groups * hp->o_rank },
        { &s->f, (uint64_t)B * hp->n_embd },
        { &s->ixq, (uint64_t)B * ixh * ixd },
        { &s->ixs, (uint64_t)B * (n_ctx / 4 + 1) }, { &s->sel, (uint64_t)B * max_u32(hp->ix_topk, 1) },
        { &s->mp, (uint64_t)B * (hp->n_expert + 2 * hp->n_ff_exp) }, { &s->ids, (uint64_t)B * K }, { &s->grp, (uint64_t)hp->n_expert + 1 + (uint64_t)B * K }, { &s->rw, (uint64_t)B * K },
        { &s->gu, 2ull * B * K * hp->n_ff_exp },
        { &s->yd, (uint64_t)B * (K + 1) * hp->n_embd },
        { &s->guess_mp, (uint64_t)EXPERT_STORE_LOOKAHEAD * B * hp->n_expert },
        { &s->guess_ids, (uint64_t)EXPERT_STORE_LOOKAHEAD * B * K }, { &s->guess_rw, (uint64_t)EXPERT_STORE_LOOKAHEAD * B * K },
    };
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (alloc_f(s, s->arena, bufs[i].sp, bufs[i].n, err, err_len)) goto fail;
    if (alloc_f(s, s->host, &s->in_embd, (uint64_t)B * hp->n_embd, err, err_len) ||
        alloc_f(s, s->host, &s->tokens, B, err, err_len) ||
        alloc_f(s, s->host, &s->logits, (uint64_t)B * hp->n_vocab, err, err_len) ||
        alloc_f(s, s->host, &s->slot_ids, (uint64_t)B * K, err, err_len))
        goto fail;
    if (!s->in_embd.host || !s->tokens.host || !s->logits.host || !s->slot_ids.host) {
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
