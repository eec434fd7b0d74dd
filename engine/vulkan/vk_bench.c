/* Device-level measurements for `flashbox bench`: copy bandwidth (one large buffer copy,
 * timed with timestamps) and each matvec/matmul kernel alone on the model's weight shapes
 * (elements/s and GB/s of weights read), plus the dispatch count per layer kind. */
#include "engine/vulkan/vk_internal.h"

#include <stdlib.h>
#include <string.h>

#include "common/errmsg.h"

int vk_copy_bandwidth(void *ctx, double *bytes_per_s, char *err, size_t err_len)
{
    struct vk_engine *e = ctx;
    struct vk_device *d = e->d;
    *bytes_per_s = 0;
    /* 2 x 256 MiB where the device has room (over four times the largest GPU L2 caches,
     * so the copy runs at memory speed, and tens of microseconds even at 5 TB/s); 64 MiB
     * on small heaps such as lavapipe's 2 GiB */
    uint64_t largest_local_heap = 0;
    for (uint32_t h = 0; h < d->mem.memoryHeapCount; h++)
        if ((d->mem.memoryHeaps[h].flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT) &&
            d->mem.memoryHeaps[h].size > largest_local_heap)
            largest_local_heap = d->mem.memoryHeaps[h].size;
    uint64_t n = largest_local_heap >= (8ull << 30) ? 256u << 20 : 64u << 20;
    if (n > d->max_alloc / 2 - 4096) n = 64u << 20;
    struct vk_arena *a = NULL;
    struct vk_recorder *r = NULL;
    struct vk_span src, dst;
    int rc = -1;
    if (vk_arena_create(&a, d, VK_MEM_DEVICE, 2 * n + 4096, err, err_len) ||
        vk_arena_alloc(a, n, 256, &src, err, err_len) || vk_arena_alloc(a, n, 256, &dst, err, err_len) ||
        vk_recorder_create(d, 1, 4, &r, err, err_len))
        goto out;
    for (int rep = 0; rep < 3; rep++) { /* best of three */
        if (vk_recorder_begin(r, err, err_len)) goto out;
        int q0 = vk_recorder_timestamp(r);
        VkBufferCopy c = { .srcOffset = src.off, .dstOffset = dst.off, .size = n };
        vkCmdCopyBuffer(r->cb, src.buf, dst.buf, 1, &c);
        int q1 = vk_recorder_timestamp(r);
        if (vk_recorder_submit(r, err, err_len)) goto out;
        double ns = vk_recorder_elapsed_ns(r, q0, q1);
        /* a copy reads and writes every byte */
        if (ns > 0 && 2.0 * n / (ns * 1e-9) > *bytes_per_s) *bytes_per_s = 2.0 * n / (ns * 1e-9);
    }
    rc = 0;
out:
    vk_recorder_destroy(r);
    vk_arena_destroy(a);
    return rc;
}

/* Dispatches per timed recording: one alone is dominated by the driver's per-submit
 * jitter on CPU devices; back-to-back copies give the kernel's steady cost. */
#define KERNEL_REPS 8

/* Times one weight's matvec alone for one token (decode), each smaller token tile (a step
 * of a few sessions) and VK_MATMUL_TILE * 4 tokens (prefill). */
static int time_weight(struct vk_engine *e, struct vk_recorder *r, const struct vk_span *x, const struct vk_span *y,
                       tensor_ref t, FILE *out, char *err, size_t err_len)
{
    struct vk_weight w;
    if (!t || vk_weight_of(e, t, 0, &w, err, err_len)) return t ? -1 : 0;
    uint32_t n_mat = w.n_mat;
    w.n_mat = 1; /* one expert's matrix for stacked tensors */
    const uint32_t toks[] = { 1, 2, 4, VK_MATMUL_TILE, VK_MATMUL_TILE * 4 };
    _Static_assert(VK_N_TILES == 4, "toks: one count per tile");
    for (size_t i = 0; i < sizeof toks / sizeof toks[0]; i++) {
        double best = 1e30;
        for (int rep = 0; rep < 5; rep++) {
            struct vk_matvec_args a = { .w = &w, .x = x, .y = y, .x_tstride = w.n_in, .y_tstride = w.n_out,
                                        .n_tok = toks[i], .scale = 1.0f };
            if (vk_recorder_begin(r, err, err_len)) return -1;
            int q0 = vk_recorder_timestamp(r);
            for (int k = 0; k < KERNEL_REPS; k++)
                if (vk_op_matvec(r, &e->ops, &a, err, err_len)) { vk_recorder_abort(r); return -1; }
            int q1 = vk_recorder_timestamp(r);
            if (vk_recorder_submit(r, err, err_len)) return -1;
            double ns = vk_recorder_elapsed_ns(r, q0, q1) / KERNEL_REPS;
            if (ns > 0 && ns < best) best = ns;
        }
        double elems = (double)w.n_in * w.n_out * toks[i];
        fprintf(out, "%-28s %-6s %5u %6u %6u %4u %10.1f %10.3f %8.2f\n", t->name, gguf_type_name(t->type), n_mat, w.n_in,
                w.n_out, toks[i], best / 1e3, elems / (best * 1e-9) / 1e9, (double)w.mat_bytes / (best * 1e-9) / 1e9);
    }
    return 0;
}

int vk_bench_kernels(void *ctx, const struct model *m, FILE *out, char *err, size_t err_len)
{
    struct vk_engine *e = ctx;
    const struct model_hparams *hp = &m->hp;
    uint32_t max_dim = hp->n_embd;
    const uint32_t dims[] = { hp->q_rank, hp->n_head * hp->head_dim, hp->o_groups * hp->o_rank, hp->n_ff_exp, hp->n_vocab,
                              hp->ix_head * hp->ix_dim };
    for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++) if (dims[i] > max_dim) max_dim = dims[i];
    struct vk_arena *a = NULL;
    struct vk_recorder *r = NULL;
    struct vk_span x, y;
    int rc = -1;
    uint64_t nx = (uint64_t)max_dim * VK_MATMUL_TILE * 4 * 4;
    if (vk_arena_create(&a, e->d, VK_MEM_DEVICE, 2 * nx + 4096, err, err_len) || vk_arena_alloc(a, nx, 256, &x, err, err_len) ||
        vk_arena_alloc(a, nx, 256, &y, err, err_len) || vk_recorder_create(e->d, 64, 4, &r, err, err_len))
        goto out;
    /* x holds 0.5 everywhere: fresh memory may hold denormals, which CPU drivers compute
     * on several times slower (lavapipe: 0.3-1.2 against 3.6-4.5 G elements/s) and which
     * no model activation looks like */
    if (vk_recorder_begin(r, err, err_len)) goto out;
    vkCmdFillBuffer(r->cb, x.buf, x.off, x.size, 0x3f000000u);
    vkCmdFillBuffer(r->cb, y.buf, y.off, y.size, 0);
    if (vk_recorder_submit(r, err, err_len)) goto out;
    fprintf(out, "\n%-28s %-6s %5s %6s %6s %4s %10s %10s %8s\n", "weight (one matrix)", "type", "mats", "n_in", "n_out", "tok",
            "us", "G elem/s", "GB/s");
    /* one layer of each kind: the first SWA, CSA and HCA layers */
    bool seen[3] = { false, false, false };
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        uint32_t kind = hp->ratio[il] == 0 ? 0 : hp->ratio[il] == 4 ? 1 : 2;
        if (seen[kind]) continue;
        seen[kind] = true;
        const struct layer_weights *lw = &m->layers[il];
        fprintf(out, "-- layer %u (ratio %u)\n", il, hp->ratio[il]);
        tensor_ref ws[] = { lw->attn_q_a, lw->attn_q_b, lw->attn_kv, lw->attn_output_a, lw->attn_output_b, lw->comp_kv,
                            lw->ix_q_b, lw->ffn_gate_inp, lw->ffn_gate_shexp, lw->ffn_down_shexp, lw->ffn_gate_exps,
                            lw->ffn_down_exps };
        for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++)
            if (time_weight(e, r, &x, &y, ws[i], out, err, err_len)) goto out;
    }
    fprintf(out, "-- head\n");
    if (time_weight(e, r, &x, &y, m->output, out, err, err_len)) goto out;
    rc = 0;
out:
    vk_recorder_destroy(r);
    vk_arena_destroy(a);
    return rc;
}
