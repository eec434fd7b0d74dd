/* The CPU reference as an engine backend; routed experts optionally paged through the
 * expert store (engine_options.expert_cache_mb). */
#include "engine/backend.h"
#include "common/errmsg.h"
#include "engine/experts/expert_store.h"
#include "engine/ref/ref.h"
#include "engine/session_state.h"
#include "engine/kv_store.h"

#include <stdlib.h>
#include <string.h>

struct ref_ctx {
    struct expert_store *experts; /* NULL: every expert resident (read from the mapping) */
};

static int ref_open(const struct model *m, const struct engine_options *opt, void **ctx, char *err, size_t err_len)
{
    struct ref_ctx *c = calloc(1, sizeof *c);
    if (!c) return -1;
    if (opt->expert_cache_mb) {
        struct expert_store_options so = { .budget_bytes = opt->expert_cache_mb << 20, .read_path = opt->expert_read,
                                         .no_prefetch = opt->expert_no_prefetch, .verify = opt->expert_verify };
        if (expert_store_open(&c->experts, m, opt->model_path, &so, err, err_len)) {
            free(c);
            return -1;
        }
    }
    *ctx = c;
    return 0;
}

static void ref_close(void *ctx)
{
    struct ref_ctx *c = ctx;
    if (!c) return;
    expert_store_close(c->experts);
    free(c);
}

static int ref_session_create(void *ctx, const struct model *m, uint32_t n_ctx, enum engine_kv_type kv, void **state,
                              char *err, size_t err_len)
{
    struct ref_ctx *c = ctx;
    struct ref_state *st;
    if (ref_state_create_kv(m, n_ctx, kv, &st, err, err_len)) return -1;
    st->experts = c->experts;
    *state = st;
    return 0;
}

static void ref_session_destroy(void *state) { ref_state_destroy(state); }
static void ref_session_reset(void *state) { ref_state_reset(state); }

static void ref_observe_set(void *state, const struct engine_observer *obs)
{
    struct ref_state *st = state;
    st->s.obs = obs;
    st->s.obs_tensors = st->m->file->tensors;
}

static int ref_eval(void *ctx, void *state, const int32_t *tokens, uint32_t n, float *logits, bool all_logits,
                    char *err, size_t err_len)
{
    (void)ctx;
    return ref_forward(state, tokens, n, logits, all_logits, err, err_len);
}

/* The reference evaluates token by token (every weight is read again for each token), so
 * a step is its items one after another: each session's logits are those of its eval. */
static int ref_step(void *ctx, const struct backend_step *items, uint32_t n_items, char *err, size_t err_len)
{
    for (uint32_t i = 0; i < n_items; i++)
        if (ref_eval(ctx, items[i].state, items[i].tokens, items[i].n, items[i].logits, items[i].all_logits, err, err_len))
            return errf_prefix(err, err_len, "step item %u", i);
    return 0;
}

/* Copies one layer's state between the reference buffers and the layout (save: to data). */
static void ref_state_copy(struct ref_state *st, uint32_t pos, uint32_t *data, bool save)
{
    const struct model_hparams *hp = &st->m->hp;
    const uint32_t hd = hp->head_dim;
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        struct ref_layer_state *ls = &st->layers[il];
        struct session_state_layer o;
        session_state_layer(hp, st->kv, pos, il, &o);
#define COPY(dst_or_src, buf, n) \
        (save ? memcpy(data + (dst_or_src), (buf), (n) * 4) : memcpy((buf), data + (dst_or_src), (n) * 4))
        for (uint64_t r = 0; r < o.ring_rows; r++)
            COPY(o.ring_off + r * hd, ls->ring + (uint64_t)((o.ring_first + r) % hp->window) * hd, hd);
        if (o.comp_rows) COPY(o.comp_off, ls->comp, o.comp_rows * kv_entry_words(st->kv, hd));
        if (o.kvc_floats) {
            COPY(o.kvc_off, ls->kvc.kv, o.kvc_floats / 2);
            COPY(o.kvc_off + o.kvc_floats / 2, ls->kvc.score, o.kvc_floats / 2);
        }
        if (o.ix_rows) COPY(o.ix_off, ls->ix_keys, o.ix_rows * kv_entry_words(st->kv, hp->ix_dim));
        if (o.ixc_floats) {
            COPY(o.ixc_off, ls->ixc.kv, o.ixc_floats / 2);
            COPY(o.ixc_off + o.ixc_floats / 2, ls->ixc.score, o.ixc_floats / 2);
        }
#undef COPY
    }
}

static int ref_state_save(void *state, uint32_t *data, char *err, size_t err_len)
{
    (void)err, (void)err_len;
    struct ref_state *st = state;
    ref_state_copy(st, st->pos, data, true);
    return 0;
}

static int ref_state_load(void *state, uint32_t pos, const uint32_t *data, char *err, size_t err_len)
{
    (void)err, (void)err_len;
    struct ref_state *st = state;
    ref_state_reset(st);
    ref_state_copy(st, pos, (uint32_t *)data, false); /* only read from when loading */
    st->pos = pos;
    return 0;
}

static int ref_expert_counters(void *ctx, struct expert_counters *out)
{
    struct ref_ctx *c = ctx;
    if (!c->experts) return -1;
    expert_store_get_counters(c->experts, out);
    return 0;
}

const struct backend_ops ref_backend_ops = {
    .name = "ref",
    .open = ref_open,
    .close = ref_close,
    .session_create = ref_session_create,
    .session_destroy = ref_session_destroy,
    .session_reset = ref_session_reset,
    .eval = ref_eval,
    .step = ref_step,
    .expert_counters = ref_expert_counters,
    .state_save = ref_state_save,
    .state_load = ref_state_load,
    .observe = ref_observe_set,
};
