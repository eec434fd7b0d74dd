/* The memory plan (engine.h, engine_plan_*): resident weights, the expert cache and, per
 * session, the parts that the backends' session creation allocates, read from the same
 * functions (session_plan.h); the largest context that fits a budget. */
#include "engine/engine.h"
#include "common/errmsg.h"
#include "engine/model/model.h"
#include "engine/session_plan.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

const char *const engine_plan_part_names[ENGINE_PLAN_PARTS] = {
    "window rings", "CSA compressed entries", "HCA compressed entries", "indexer keys", "compressor state",
    "rope tables", "scratch (one batch)", "host-visible in/out", "allocation block tails",
};

static bool is_expert(const struct model *m, tensor_ref t)
{
    for (uint32_t il = 0; il < m->hp.n_layer; il++) {
        const struct layer_weights *lw = &m->layers[il];
        if (t == lw->ffn_gate_exps || t == lw->ffn_up_exps || t == lw->ffn_down_exps) return true;
    }
    return false;
}

/* One session's parts at n_ctx, and the totals. */
static void plan_ctx(const struct model *m, struct engine_plan *p, uint32_t n_ctx)
{
    p->n_ctx = n_ctx;
    if (p->backend == ENGINE_BACKEND_VULKAN) vk_session_plan(&m->hp, p->kv, n_ctx, p->session, &p->largest_buffer);
    else ref_session_plan(&m->hp, p->kv, n_ctx, p->session, &p->largest_buffer);
    p->per_session = 0;
    for (int i = 0; i < ENGINE_PLAN_PARTS; i++) p->per_session += p->session[i];
    p->total = p->weights + p->expert_cache + (uint64_t)p->n_slots * p->per_session;
}

void engine_plan_model(const struct model *m, enum engine_backend backend, enum engine_kv_type kv, uint32_t n_ctx,
                       uint32_t n_slots, uint64_t expert_cache_mb, struct engine_plan *out)
{
    memset(out, 0, sizeof *out);
    out->kv = kv;
    const struct model_hparams *hp = &m->hp;
    out->backend = backend == ENGINE_BACKEND_VULKAN ? ENGINE_BACKEND_VULKAN : ENGINE_BACKEND_REF;
    out->n_slots = n_slots ? n_slots : 1;
    out->n_ctx_train = hp->n_ctx_train;
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        if (hp->ratio[il] == 4) out->n_csa++;
        else if (hp->ratio[il]) out->n_hca++;
    }
    /* weights: every tensor, less the routed experts when they are paged; the Vulkan
     * backend reads the embedding rows from the mapped file, not the device */
    for (uint64_t i = 0; i < m->file->n_tensors; i++) {
        tensor_ref t = &m->file->tensors[i];
        if (expert_cache_mb && is_expert(m, t)) continue;
        if (out->backend == ENGINE_BACKEND_VULKAN && t == m->token_embd) continue;
        out->weights += t->nbytes;
    }
    out->expert_cache = expert_cache_mb << 20;
    out->no_tensors = m->file->n_tensors == 0;
    plan_ctx(m, out, n_ctx ? n_ctx : hp->n_ctx_train);
}

/* The model of a file for planning: bound, or, for a file of metadata only (no tensors,
 * `flashbox mkmodel --quant meta`), its hyper-parameters with no weights. */
static int plan_open(const char *path, struct model **out, char *err, size_t err_len)
{
    struct gguf_file *f;
    if (gguf_open(&f, path, err, err_len)) return -1;
    if (f->n_tensors == 0) {
        struct model *m = calloc(1, sizeof *m);
        if (!m) {
            gguf_close(f);
            return errf(err, err_len, "out of memory");
        }
        m->file = f;
        if (model_read_hparams(f, &m->hp, err, err_len)) {
            model_close(m);
            return errf_prefix(err, err_len, "%s", path);
        }
        *out = m;
        return 0;
    }
    if (model_bind(out, f, err, err_len)) {
        gguf_close(f);
        return errf_prefix(err, err_len, "%s", path);
    }
    return 0;
}

int engine_plan_file(const char *model_path, enum engine_backend backend, enum engine_kv_type kv, uint32_t n_ctx,
                     uint32_t n_slots, uint64_t expert_cache_mb, struct engine_plan *out, char *err, size_t err_len)
{
    struct model *m;
    if (plan_open(model_path, &m, err, err_len)) return -1;
    engine_plan_model(m, backend, kv, n_ctx, n_slots, expert_cache_mb, out);
    model_close(m);
    return 0;
}

uint32_t engine_plan_fit_ctx(const struct model *m, struct engine_plan *p, uint64_t budget)
{
    const uint32_t step = 128, hi_ctx = m->hp.n_ctx_train;
    uint32_t lo = 0, hi = hi_ctx / step; /* in steps; the answer is the largest fitting */
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo + 1) / 2;
        plan_ctx(m, p, mid * step);
        if (p->total <= budget) lo = mid;
        else hi = mid - 1;
    }
    uint32_t best = lo * step;
    if (best == 0 && hi_ctx < step) { /* a model trained on fewer than 128 positions */
        plan_ctx(m, p, hi_ctx);
        best = p->total <= budget ? hi_ctx : 0;
    }
    plan_ctx(m, p, best ? best : step);
    return best;
}

int engine_plan_file_fit(const char *model_path, enum engine_backend backend, enum engine_kv_type kv, uint32_t n_slots,
                         uint64_t expert_cache_mb, uint64_t budget, struct engine_plan *out, uint32_t *n_ctx, char *err,
                         size_t err_len)
{
    struct model *m;
    if (plan_open(model_path, &m, err, err_len)) return -1;
    engine_plan_model(m, backend, kv, 0, n_slots, expert_cache_mb, out);
    *n_ctx = engine_plan_fit_ctx(m, out, budget);
    model_close(m);
    return 0;
}

static void print_bytes(FILE *out, const char *what, uint64_t b)
{
    fprintf(out, "  %-28s %14" PRIu64 " bytes  %10.1f MiB\n", what, b, (double)b / (1 << 20));
}

void engine_plan_print(const struct engine_plan *p, uint64_t budget, const char *budget_what, FILE *out)
{
    fprintf(out, "backend %s, KV %s, context %u positions (model's %u), %u session%s; %u CSA and %u HCA layers\n",
            p->backend == ENGINE_BACKEND_VULKAN ? "vulkan" : "ref", engine_kv_name(p->kv), p->n_ctx, p->n_ctx_train, p->n_slots,
            p->n_slots == 1 ? "" : "s", p->n_csa, p->n_hca);
    print_bytes(out, p->no_tensors ? "resident weights (no tensors)" : "resident weights", p->weights);
    print_bytes(out, "expert cache", p->expert_cache);
    fprintf(out, "per session:\n");
    for (int i = 0; i < ENGINE_PLAN_PARTS; i++) print_bytes(out, engine_plan_part_names[i], p->session[i]);
    print_bytes(out, "one session", p->per_session);
    print_bytes(out, "largest single buffer", p->largest_buffer);
    print_bytes(out, "total", p->total);
    if (budget) {
        print_bytes(out, budget_what, budget);
        fprintf(out, "%s\n", p->total <= budget ? "fits" : "does NOT fit");
    }
}
