/* The CPU reference as an engine backend. */
#include "engine/backend.h"
#include "engine/ref.h"

static int ref_open(const struct model *m, const struct engine_options *opt, void **ctx, char *err, size_t err_len)
{
    (void)m, (void)opt, (void)err, (void)err_len;
    *ctx = NULL;
    return 0;
}

static void ref_close(void *ctx) { (void)ctx; }

static int ref_session_create(void *ctx, const struct model *m, uint32_t n_ctx, void **state, char *err, size_t err_len)
{
    (void)ctx;
    struct ref_state *st;
    if (ref_state_create(m, n_ctx, &st, err, err_len)) return -1;
    *state = st;
    return 0;
}

static void ref_session_destroy(void *state) { ref_state_destroy(state); }
static void ref_session_reset(void *state) { ref_state_reset(state); }

static int ref_eval(void *ctx, void *state, const int32_t *tokens, uint32_t n, float *logits, bool all_logits,
                    char *err, size_t err_len)
{
    (void)ctx;
    return ref_forward(state, tokens, n, logits, all_logits, err, err_len);
}

const struct backend_ops ref_backend_ops = {
    .name = "ref",
    .open = ref_open,
    .close = ref_close,
    .session_create = ref_session_create,
    .session_destroy = ref_session_destroy,
    .session_reset = ref_session_reset,
    .eval = ref_eval,
};
