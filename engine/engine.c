/* The engine: a bound model plus a backend; sessions over it. See engine.h. */
#include "engine/engine.h"
#include "engine/backend.h"
#include "common/errmsg.h"
#include "engine/model/model.h"
#include "engine/session_plan.h"
#include "engine/session_state.h"
#include "engine/text/tokenizer.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define SESSION_DEFAULT_CTX 4096u

struct engine {
    enum engine_backend backend;
    enum engine_kv_type kv;     /* storage of every session's entries and indexer keys */
    uint64_t expert_cache_mb;   /* 0: every expert resident */
    struct model *model;
    struct tokenizer *tok;      /* NULL when the file carries no usable tokenizer */
    const struct backend_ops *ops;
    void *backend_ctx;
    struct backend_step *step_items; /* [step_cap] engine_step's items as the backend takes them */
    uint32_t step_cap;
};

struct session {
    struct engine *e;
    void *state;
    uint32_t n_ctx;
    uint32_t pos;
};

void engine_options_default(struct engine_options *opt)
{
    memset(opt, 0, sizeof *opt);
    opt->backend = ENGINE_BACKEND_REF;
    opt->device_index = -1;
}

int engine_backend_parse(const char *name, enum engine_backend *out)
{
    if (!strcmp(name, "ref")) *out = ENGINE_BACKEND_REF;
    else if (!strcmp(name, "vulkan")) *out = ENGINE_BACKEND_VULKAN;
    else if (!strcmp(name, "auto")) *out = ENGINE_BACKEND_AUTO;
    else return -1;
    return 0;
}

int engine_kv_parse(const char *name, enum engine_kv_type *out)
{
    if (!strcmp(name, "f32")) *out = ENGINE_KV_F32;
    else if (!strcmp(name, "f16")) *out = ENGINE_KV_F16;
    else if (!strcmp(name, "fp8")) *out = ENGINE_KV_FP8;
    else return -1;
    return 0;
}

const char *engine_kv_name(enum engine_kv_type kv)
{
    return kv == ENGINE_KV_F16 ? "f16" : kv == ENGINE_KV_FP8 ? "fp8" : "f32";
}

static const struct backend_ops *backend_for(enum engine_backend b)
{
    switch (b) {
    case ENGINE_BACKEND_REF: return &ref_backend_ops;
    case ENGINE_BACKEND_VULKAN: return &vk_backend_ops;
    case ENGINE_BACKEND_AUTO: return NULL; /* resolved by the caller */
    }
    return NULL;
}

int engine_open(struct engine **out, const struct engine_options *opt, char *err, size_t err_len)
{
    *out = NULL;
    if (!opt->model_path) return errf(err, err_len, "no model path given");
    if (opt->backend == ENGINE_BACKEND_AUTO)
        return errf(err, err_len, "backend \"auto\" must be resolved to ref or vulkan before the engine opens");
    const struct backend_ops *ops = backend_for(opt->backend);
    if (!ops) return errf(err, err_len, "backend %d is not available in this build", (int)opt->backend);
    if (opt->kv != ENGINE_KV_F32 && opt->kv != ENGINE_KV_F16 && opt->kv != ENGINE_KV_FP8)
        return errf(err, err_len, "KV storage type %d: expected f32, f16 or fp8", (int)opt->kv);
    struct engine *e = calloc(1, sizeof *e);
    if (!e) return errf(err, err_len, "out of memory");
    e->ops = ops;
    e->backend = opt->backend;
    e->kv = opt->kv;
    e->expert_cache_mb = opt->expert_cache_mb;
    if (model_open(&e->model, opt->model_path, err, err_len)) goto fail;
    if (ops->open(e->model, opt, &e->backend_ctx, err, err_len)) goto fail;
    /* a model without a tokenizer still computes logits from token ids */
    char tok_err[256];
    if (tok_create(&e->tok, e->model->file, tok_err, sizeof tok_err)) e->tok = NULL;
    *out = e;
    return 0;
fail:
    model_close(e->model);
    free(e);
    return -1;
}

void engine_close(struct engine *e)
{
    if (!e) return;
    e->ops->close(e->backend_ctx);
    free(e->step_items);
    tok_destroy(e->tok);
    model_close(e->model);
    free(e);
}

void engine_get_info(const struct engine *e, struct engine_info *info)
{
    const struct model_hparams *hp = &e->model->hp;
    info->model_name = hp->name;
    info->backend_name = e->ops->name;
    info->n_vocab = hp->n_vocab;
    info->n_ctx_train = hp->n_ctx_train;
    info->n_layer = hp->n_layer;
    info->n_embd = hp->n_embd;
    info->bos = (int32_t)hp->bos;
    info->eos = (int32_t)hp->eos;
}

const struct tokenizer *engine_tokenizer(const struct engine *e) { return e->tok; }

int engine_model_identity(const struct engine *e, struct engine_model_id *out)
{
    struct stat st;
    memset(out, 0, sizeof *out);
    if (fstat(e->model->file->fd, &st)) return -1;
    out->dev = (uint64_t)st.st_dev;
    out->ino = (uint64_t)st.st_ino;
    out->size = (uint64_t)st.st_size;
    out->mtime_ns = (uint64_t)st.st_mtim.tv_sec * 1000000000ull + (uint64_t)st.st_mtim.tv_nsec;
    return 0;
}

void engine_plan_open(const struct engine *e, uint32_t n_ctx, uint32_t n_slots, struct engine_plan *out)
{
    engine_plan_model(e->model, e->backend, e->kv, n_ctx, n_slots, e->expert_cache_mb, out);
}

uint32_t engine_plan_open_fit(const struct engine *e, uint32_t n_slots, uint64_t budget, struct engine_plan *out)
{
    engine_plan_model(e->model, e->backend, e->kv, 0, n_slots, e->expert_cache_mb, out);
    return engine_plan_fit_ctx(e->model, out, budget);
}

uint64_t engine_host_memory_available(void)
{
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f) return 0;
    char line[256];
    unsigned long long kb = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) break;
    fclose(f);
    return (uint64_t)kb << 10;
}

uint64_t engine_plan_budget(const struct engine *e)
{
    uint64_t used, total;
    if (e->ops->device_memory && e->ops->device_memory(e->backend_ctx, &used, &total) == 0) return total;
    /* ref: the weights are the file's mapped pages, counted in the plan, so they are
     * added back to what the kernel reports available */
    struct engine_plan p;
    engine_plan_model(e->model, e->backend, e->kv, 128, 1, e->expert_cache_mb, &p);
    uint64_t avail = engine_host_memory_available();
    return avail ? avail + p.weights : 0;
}

int engine_device_memory(const struct engine *e, uint64_t *used, uint64_t *total)
{
    *used = *total = 0;
    if (!e->ops->device_memory) return -1;
    return e->ops->device_memory(e->backend_ctx, used, total);
}

int engine_expert_counters(const struct engine *e, struct expert_counters *out)
{
    memset(out, 0, sizeof *out);
    if (!e->ops->expert_counters) return -1;
    return e->ops->expert_counters(e->backend_ctx, out);
}

/* Refuses, with the plan's numbers, a session that the memory left cannot hold: device
 * memory not yet used (Vulkan) or the host's available memory (ref). */
static int session_fits(const struct engine *e, uint32_t n_ctx, char *err, size_t err_len)
{
    struct engine_plan p;
    engine_plan_open(e, n_ctx, 1, &p);
    uint64_t used, total, free_bytes, need = p.per_session;
    const char *where;
    if (e->ops->device_memory && e->ops->device_memory(e->backend_ctx, &used, &total) == 0) {
        free_bytes = total > used ? total - used : 0;
        need -= p.session[ENGINE_PLAN_HOST];
        where = "device memory free";
    } else {
        free_bytes = engine_host_memory_available();
        where = "host memory available";
        if (!free_bytes) return 0; /* unknown: let the allocation decide */
    }
    if (need <= free_bytes) return 0;
    const uint64_t M = 1u << 20;
    return errf(err, err_len,
                "a %u-position session needs %llu MiB (CSA entries %llu, HCA entries %llu, indexer keys %llu, window %llu, "
                "scratch %llu MiB), %s is %llu MiB; `flashbox plan` shows the largest context that fits",
                n_ctx, (unsigned long long)(need / M), (unsigned long long)(p.session[ENGINE_PLAN_CSA_ENTRIES] / M),
                (unsigned long long)(p.session[ENGINE_PLAN_HCA_ENTRIES] / M),
                (unsigned long long)(p.session[ENGINE_PLAN_IX_KEYS] / M), (unsigned long long)(p.session[ENGINE_PLAN_WINDOW] / M),
                (unsigned long long)(p.session[ENGINE_PLAN_SCRATCH] / M), where, (unsigned long long)(free_bytes / M));
}

int session_create(struct engine *e, uint32_t n_ctx, struct session **out, char *err, size_t err_len)
{
    *out = NULL;
    if (n_ctx == 0) n_ctx = e->model->hp.n_ctx_train < SESSION_DEFAULT_CTX ? e->model->hp.n_ctx_train : SESSION_DEFAULT_CTX;
    if (session_fits(e, n_ctx, err, err_len)) return -1;
    struct session *s = calloc(1, sizeof *s);
    if (!s) return errf(err, err_len, "out of memory");
    s->e = e;
    s->n_ctx = n_ctx;
    if (e->ops->session_create(e->backend_ctx, e->model, n_ctx, e->kv, &s->state, err, err_len)) {
        free(s);
        return -1;
    }
    *out = s;
    return 0;
}

void session_destroy(struct session *s)
{
    if (!s) return;
    s->e->ops->session_destroy(s->state);
    free(s);
}

void session_reset(struct session *s)
{
    s->e->ops->session_reset(s->state);
    s->pos = 0;
}

uint32_t session_pos(const struct session *s) { return s->pos; }
uint32_t session_n_ctx(const struct session *s) { return s->n_ctx; }

int session_eval(struct session *s, const int32_t *tokens, uint32_t n, float *logits, bool all_logits,
                 char *err, size_t err_len)
{
    if (n == 0) return errf(err, err_len, "no tokens to evaluate");
    if (n > s->n_ctx - s->pos)
        return errf(err, err_len, "context full: %u tokens at position %u exceed the session's %u", n, s->pos, s->n_ctx);
    if (s->e->ops->eval(s->e->backend_ctx, s->state, tokens, n, logits, all_logits, err, err_len)) return -1;
    s->pos += n;
    return 0;
}

int engine_step(struct engine *e, struct session_step *items, uint32_t n_items, char *err, size_t err_len)
{
    if (n_items == 0) return errf(err, err_len, "no sessions in the step");
    for (uint32_t i = 0; i < n_items; i++) {
        const struct session *s = items[i].s;
        if (!s || s->e != e) return errf(err, err_len, "step item %u: not a session of this engine", i);
        if (items[i].n == 0) return errf(err, err_len, "step item %u: no tokens to evaluate", i);
        if (items[i].n > s->n_ctx - s->pos)
            return errf(err, err_len, "step item %u: context full: %u tokens at position %u exceed the session's %u", i,
                        items[i].n, s->pos, s->n_ctx);
        for (uint32_t j = 0; j < i; j++)
            if (items[j].s == s) return errf(err, err_len, "step items %u and %u: the same session twice", j, i);
    }
    if (n_items > e->step_cap) { /* grown outside the per-token path: once per larger step */
        struct backend_step *b = realloc(e->step_items, n_items * sizeof *b);
        if (!b) return errf(err, err_len, "out of memory for a step of %u sessions", n_items);
        e->step_items = b;
        e->step_cap = n_items;
    }
    for (uint32_t i = 0; i < n_items; i++)
        e->step_items[i] = (struct backend_step){ .state = items[i].s->state, .tokens = items[i].tokens, .n = items[i].n,
                                                  .logits = items[i].logits, .all_logits = items[i].all_logits };
    int rc;
    if (e->ops->step) {
        rc = e->ops->step(e->backend_ctx, e->step_items, n_items, err, err_len);
    } else {
        rc = 0;
        for (uint32_t i = 0; i < n_items && !rc; i++)
            rc = e->ops->eval(e->backend_ctx, items[i].s->state, items[i].tokens, items[i].n, items[i].logits,
                              items[i].all_logits, err, err_len);
    }
    if (rc) return -1;
    for (uint32_t i = 0; i < n_items; i++) items[i].s->pos += items[i].n;
    return 0;
}


uint64_t session_state_bytes(const struct session *s, uint32_t pos)
{
    return SESSION_STATE_HEADER_U32 * 4 + session_state_words(&s->e->model->hp, s->e->kv, pos) * 4;
}

/* The header's fields after the magic: version, pos, then the shape the layout depends on. */
static void state_header(const struct model_hparams *hp, enum engine_kv_type kv, uint32_t pos,
                         uint32_t h[SESSION_STATE_HEADER_U32])
{
    uint32_t ratios = 2166136261u; /* FNV-1a of the schedule: which layers hold entries and keys */
    for (uint32_t il = 0; il < hp->n_layer; il++) ratios = (ratios ^ hp->ratio[il]) * 16777619u;
    const uint32_t v[SESSION_STATE_HEADER_U32] = { SESSION_STATE_MAGIC, SESSION_STATE_VERSION, pos, hp->n_layer,
                                                   hp->window, hp->head_dim, hp->ix_dim, hp->n_embd, ratios, (uint32_t)kv };
    memcpy(h, v, sizeof v);
}

int session_state_save(struct session *s, void *buf, uint64_t len, char *err, size_t err_len)
{
    const uint64_t need = session_state_bytes(s, s->pos);
    if (!s->e->ops->state_save) return errf(err, err_len, "backend %s: no session state", s->e->ops->name);
    if (len < need)
        return errf(err, err_len, "session state at position %u: %llu bytes, buffer holds %llu", s->pos,
                    (unsigned long long)need, (unsigned long long)len);
    uint32_t h[SESSION_STATE_HEADER_U32];
    state_header(&s->e->model->hp, s->e->kv, s->pos, h);
    memcpy(buf, h, sizeof h);
    return s->e->ops->state_save(s->state, (uint32_t *)((uint8_t *)buf + sizeof h), err, err_len);
}

int session_state_load(struct session *s, const void *buf, uint64_t len, char *err, size_t err_len)
{
    const struct model_hparams *hp = &s->e->model->hp;
    uint32_t h[SESSION_STATE_HEADER_U32], want[SESSION_STATE_HEADER_U32];
    if (!s->e->ops->state_load) return errf(err, err_len, "backend %s: no session state", s->e->ops->name);
    if (len < sizeof h) return errf(err, err_len, "session state: %llu bytes, shorter than its header", (unsigned long long)len);
    memcpy(h, buf, sizeof h);
    state_header(hp, s->e->kv, h[2], want);
    if (h[0] == want[0] && h[1] != want[1])
        return errf(err, err_len, "session state: layout version %u, this build reads %u", h[1], want[1]);
    if (h[0] == want[0] && h[1] == want[1] && h[SESSION_STATE_KV_WORD] != want[SESSION_STATE_KV_WORD])
        return errf(err, err_len, "session state: KV stored as %s, this session stores %s (--kv / model.kv_type)",
                    h[SESSION_STATE_KV_WORD] <= ENGINE_KV_FP8 ? engine_kv_name((enum engine_kv_type)h[SESSION_STATE_KV_WORD])
                                                              : "an unknown type",
                    engine_kv_name(s->e->kv));
    for (int i = 0; i < SESSION_STATE_HEADER_U32; i++)
        if (h[i] != want[i])
            return errf(err, err_len, "session state: header word %d is %u, this model expects %u", i, h[i], want[i]);
    if (h[2] > s->n_ctx) return errf(err, err_len, "session state at position %u: the session holds %u", h[2], s->n_ctx);
    if (len != session_state_bytes(s, h[2]))
        return errf(err, err_len, "session state at position %u: %llu bytes, expected %llu", h[2], (unsigned long long)len,
                    (unsigned long long)session_state_bytes(s, h[2]));
    if (s->e->ops->state_load(s->state, h[2], (const uint32_t *)((const uint8_t *)buf + sizeof h), err, err_len)) {
        session_reset(s);
        return -1;
    }
    s->pos = h[2];
    return 0;
}

int session_seek_zero(struct session *s, uint32_t pos, char *err, size_t err_len)
{
    if (pos > s->n_ctx) return errf(err, err_len, "position %u: the session holds %u", pos, s->n_ctx);
    const uint64_t n = session_state_bytes(s, pos);
    uint8_t *buf = calloc(1, n);
    if (!buf) return errf(err, err_len, "out of memory for %llu bytes of state", (unsigned long long)n);
    uint32_t h[SESSION_STATE_HEADER_U32];
    state_header(&s->e->model->hp, s->e->kv, pos, h);
    memcpy(buf, h, sizeof h);
    int rc = session_state_load(s, buf, n, err, err_len);
    free(buf);
    return rc;
}

void session_profile(struct session *s, bool on)
{
    if (s->e->ops->profile) s->e->ops->profile(s->state, on);
}

void session_get_profile(const struct session *s, struct engine_profile *out)
{
    memset(out, 0, sizeof *out);
    if (s->e->ops->get_profile) s->e->ops->get_profile(s->state, out);
}

int session_observe(struct session *s, const struct engine_observer *obs, char *err, size_t err_len)
{
    if (!s->e->ops->observe)
        return errf(err, err_len, "the %s backend cannot observe its matrix products (use the reference backend)", s->e->ops->name);
    s->e->ops->observe(s->state, obs);
    return 0;
}

int engine_copy_bandwidth(struct engine *e, double *bytes_per_s, char *err, size_t err_len)
{
    *bytes_per_s = 0;
    if (!e->ops->copy_bandwidth) return errf(err, err_len, "backend %s: no device to measure", e->ops->name);
    return e->ops->copy_bandwidth(e->backend_ctx, bytes_per_s, err, err_len);
}

int engine_bench_kernels(struct engine *e, FILE *out, char *err, size_t err_len)
{
    if (!e->ops->bench_kernels) return errf(err, err_len, "backend %s: no kernels to time", e->ops->name);
    return e->ops->bench_kernels(e->backend_ctx, e->model, out, err, err_len);
}
