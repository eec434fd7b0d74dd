/* The engine: a bound model plus a backend; sessions over it. See engine.h. */
#include "engine/engine.h"
#include "engine/backend.h"
#include "engine/errmsg.h"
#include "engine/model.h"
#include "engine/tokenizer.h"

#include <stdlib.h>
#include <string.h>

#define SESSION_DEFAULT_CTX 4096u

struct engine {
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
    struct engine *e = calloc(1, sizeof *e);
    if (!e) return errf(err, err_len, "out of memory");
    e->ops = ops;
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

int session_create(struct engine *e, uint32_t n_ctx, struct session **out, char *err, size_t err_len)
{
    *out = NULL;
    if (n_ctx == 0) n_ctx = e->model->hp.n_ctx_train < SESSION_DEFAULT_CTX ? e->model->hp.n_ctx_train : SESSION_DEFAULT_CTX;
    struct session *s = calloc(1, sizeof *s);
    if (!s) return errf(err, err_len, "out of memory");
    s->e = e;
    s->n_ctx = n_ctx;
    if (e->ops->session_create(e->backend_ctx, e->model, n_ctx, &s->state, err, err_len)) {
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

void session_profile(struct session *s, bool on)
{
    if (s->e->ops->profile) s->e->ops->profile(s->state, on);
}

void session_get_profile(const struct session *s, struct engine_profile *out)
{
    memset(out, 0, sizeof *out);
    if (s->e->ops->get_profile) s->e->ops->get_profile(s->state, out);
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
