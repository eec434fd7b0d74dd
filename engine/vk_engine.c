/* The Vulkan backend's engine-wide part: device and kernels, every weight tensor uploaded
 * in its file format into a few large allocations, and the memory check that says how much
 * the model needs when the device has too little. */
#include "engine/vk_internal.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "engine/errmsg.h"

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

int vk_engine_open(const struct model *m, const struct engine_options *opt, void **ctx, char *err, size_t err_len)
{
    *ctx = NULL;
    const struct model_hparams *hp = &m->hp;
    if (hp->n_hc > 4) return errf(err, err_len, "vulkan: n_hc %u, the hc kernel handles at most 4 streams", hp->n_hc);
    if (hp->n_expert_used > ABI_ROUTER_MAX_K || hp->n_expert > ABI_ROUTER_MAX_EXPERTS)
        return errf(err, err_len, "vulkan: %u of %u experts per token, the router kernel handles %d of %d", hp->n_expert_used,
                    hp->n_expert, ABI_ROUTER_MAX_K, ABI_ROUTER_MAX_EXPERTS);
    if (hp->window + hp->ix_topk > ABI_ATTN_MAX_KEYS)
        return errf(err, err_len, "vulkan: window %u + indexer top-k %u exceed the attention kernel's %d keys", hp->window,
                    hp->ix_topk, ABI_ATTN_MAX_KEYS);
    struct vk_engine *e = calloc(1, sizeof *e);
    if (!e) return errf(err, err_len, "out of memory");
    e->m = m;
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
        need += (t->nbytes + 255) & ~(uint64_t)255;
        if (is_expert_tensor(m, t)) need_experts += t->nbytes;
    }
    uint64_t have = device_local_bytes(e->d);
    if (need > have) {
        errf(err, err_len, "vulkan: %s has %" PRIu64 " MiB of device memory; the weights need %" PRIu64 " MiB (%" PRIu64
             " MiB without the routed experts, which this backend does not page yet)",
             e->d->props.deviceName, have >> 20, need >> 20, (need - need_experts) >> 20);
        goto fail;
    }
    uint64_t chunk = e->d->max_alloc < (1ull << 30) ? e->d->max_alloc : (1ull << 30);
    if (vk_arena_create(&e->weights, e->d, VK_MEM_DEVICE, chunk, err, err_len)) goto fail;
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const struct gguf_tensor *t = &f->tensors[i];
        if (t == m->token_embd) continue;
        if (vk_arena_alloc(e->weights, t->nbytes, 256, &e->tspans[i], err, err_len) ||
            vk_span_upload(e->d, &e->tspans[i], 0, t->data, t->nbytes, err, err_len)) {
            errf_prefix(err, err_len, "uploading %s", t->name);
            goto fail;
        }
        e->weight_bytes += t->nbytes;
    }
    *ctx = e;
    return 0;
fail:
    vk_engine_close(e);
    return -1;
}

void vk_engine_close(void *ctx)
{
    struct vk_engine *e = ctx;
    if (!e) return;
    if (e->weights) vk_arena_destroy(e->weights);
    vk_ops_destroy(&e->ops);
    vk_device_destroy(e->d);
    free(e->tspans);
    free(e);
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
