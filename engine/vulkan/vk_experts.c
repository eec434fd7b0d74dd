/* Expert paging on the Vulkan backend: the routed experts live in three host-visible slot
 * tensors filled by the expert store (engine/experts/expert_store.c); after each layer's router the
 * forward waits, reads the chosen experts back, pins their slots and hands the kernels slot
 * indices instead of expert indices; the guesses for later layers recorded with the router
 * start their loads while the GPU runs on. The bytes in a slot are the file's, so the logits
 * are the same as with every expert resident. */
#include "common/errmsg.h"
#include "engine/experts/expert_store.h"
#include "engine/vulkan/vk_internal.h"

#include <inttypes.h>
#include <string.h>

int vk_experts_open(struct vk_engine *e, const struct engine_options *opt, char *err, size_t err_len)
{
    const struct model *m = e->m;
    const struct model_hparams *hp = &m->hp;
    const struct layer_weights *l0 = &m->layers[0];
    tensor_ref part0[3] = { l0->ffn_gate_exps, l0->ffn_up_exps, l0->ffn_down_exps };
    /* one slot tensor per part: every layer's experts must share its type and shape */
    for (uint32_t il = 1; il < hp->n_layer; il++) {
        const struct layer_weights *lw = &m->layers[il];
        tensor_ref t[3] = { lw->ffn_gate_exps, lw->ffn_up_exps, lw->ffn_down_exps };
        for (int k = 0; k < 3; k++)
            if (t[k]->type != part0[k]->type || t[k]->nbytes != part0[k]->nbytes)
                return errf(err, err_len, "vulkan expert paging: %s is %s, layer 0's is %s; paged experts need one type per matrix",
                            t[k]->name, gguf_type_name(t[k]->type), gguf_type_name(part0[k]->type));
    }
    uint64_t stride[3], per_slot = 0;
    for (int k = 0; k < 3; k++) {
        stride[k] = part0[k]->nbytes / hp->n_expert;
        per_slot += stride[k];
    }
    uint64_t n_slots = (opt->expert_cache_mb << 20) / per_slot, total = (uint64_t)hp->n_layer * hp->n_expert;
    if (n_slots > total) n_slots = total;
    /* a slot tensor is one binding: keep it under maxStorageBufferRange and one allocation */
    for (int k = 0; k < 3; k++) {
        uint64_t limit = e->d->max_range < e->d->max_alloc ? e->d->max_range : e->d->max_alloc;
        uint64_t fit = (limit - e->d->storage_align) / stride[k];
        if (n_slots > fit) n_slots = fit;
    }
    if (n_slots < hp->n_expert_used)
        return errf(err, err_len, "vulkan expert paging: %" PRIu64 " MiB hold %" PRIu64 " experts of %" PRIu64
                    " bytes; at least %u are needed", opt->expert_cache_mb, n_slots, per_slot, hp->n_expert_used);
    struct vk_span span[3];
    uint64_t chunk = 0;
    for (int k = 0; k < 3; k++) chunk = n_slots * stride[k] + 256 > chunk ? n_slots * stride[k] + 256 : chunk;
    if (vk_arena_create(&e->slot_arena, e->d, VK_MEM_HOST, chunk, err, err_len)) return -1;
    for (int k = 0; k < 3; k++) {
        if (vk_arena_alloc(e->slot_arena, n_slots * stride[k], 256, &span[k], err, err_len)) return -1;
        if (!span[k].host) return errf(err, err_len, "vulkan expert paging: the slot memory is not host-visible");
        uint32_t n_in = (uint32_t)part0[k]->ne[0], n_out = (uint32_t)part0[k]->ne[1];
        if (vk_weight_init(&e->slot_w[k], &span[k], part0[k]->type, n_in, n_out, (uint32_t)n_slots, err, err_len))
            return errf_prefix(err, err_len, "expert slots");
    }
    struct expert_store_options so = {
        .budget_bytes = n_slots * per_slot, .read_path = opt->expert_read, .no_prefetch = opt->expert_no_prefetch,
        .verify = opt->expert_verify,
        .part_memory = { span[0].host, span[1].host, span[2].host }, .part_stride = { stride[0], stride[1], stride[2] },
    };
    if (expert_store_open(&e->experts, m, opt->model_path, &so, err, err_len)) return -1;
    uint64_t batch = n_slots / hp->n_expert_used;
    e->max_batch = batch < VK_BATCH ? (uint32_t)batch : VK_BATCH;
    return 0;
}

void vk_experts_close(struct vk_engine *e)
{
    expert_store_close(e->experts);
    e->experts = NULL;
    if (e->slot_arena) vk_arena_destroy(e->slot_arena);
    e->slot_arena = NULL;
}

void vk_experts_release(struct vk_engine *e, struct vk_session *s)
{
    if (e->experts && s->pinned_layer >= 0) expert_store_release(e->experts, (uint32_t)s->pinned_layer);
    s->pinned_layer = -1;
}

int vk_experts_map(struct vk_engine *e, struct vk_session *s, uint32_t il, uint32_t n_routed, char *err, size_t err_len)
{
    vk_experts_release(e, s); /* the GPU has finished with the previous layer's slots */
    if (vk_span_download(e->d, &s->ids, 0, s->ids_host, (uint64_t)n_routed * sizeof(int32_t), err, err_len)) return -1;
    /* this layer's loads first, so the guesses queue behind them and cannot evict them */
    if (expert_store_request(e->experts, il, s->ids_host, n_routed, err, err_len)) return -1;
    const uint32_t B = VK_BATCH, K = e->m->hp.n_expert_used;
    for (uint32_t j = 0; j < EXPERT_STORE_LOOKAHEAD; j++) {
        if (!s->guessed[j]) continue;
        int32_t *guess = s->guess_host + (uint64_t)j * B * K;
        if (vk_span_download(e->d, &s->guess_ids, (uint64_t)j * B * K * sizeof(int32_t), guess,
                             (uint64_t)n_routed * sizeof(int32_t), err, err_len)) {
            expert_store_release(e->experts, il);
            return -1;
        }
        expert_store_prefetch(e->experts, il + 1 + j, guess, n_routed, true);
    }
    if (expert_store_await(e->experts, il, (int32_t *)s->slot_ids.host, err, err_len)) return -1;
    expert_store_drop_speculation(e->experts, il);
    s->pinned_layer = (int32_t)il;
    return 0;
}

void vk_experts_prefetch_hash(struct vk_engine *e, const int32_t *tokens, uint32_t nt, int32_t *scratch)
{
    const struct model_hparams *hp = &e->m->hp;
    const uint32_t K = hp->n_expert_used;
    for (uint32_t il = 0; il < hp->n_hash_layer; il++) {
        const int32_t *table = (const int32_t *)e->m->layers[il].tid2eid->data;
        for (uint32_t t = 0; t < nt; t++) memcpy(scratch + (uint64_t)t * K, table + (uint64_t)tokens[t] * K, K * sizeof(int32_t));
        expert_store_prefetch(e->experts, il, scratch, nt * K, true);
    }
}

int vk_expert_counters(void *ctx, struct expert_counters *out)
{
    struct vk_engine *e = ctx;
    if (!e->experts) return -1;
    expert_store_get_counters(e->experts, out);
    return 0;
}
