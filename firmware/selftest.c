/* The update self-test on the engine (see selftest.h). */
#include "firmware/selftest.h"

#include "common/errmsg.h"

#include <stdlib.h>
#include <string.h>

/* Index of the largest logit; ties go to the lower id, as in the sampler's greedy mode. */
static int32_t argmax(const float *logits, uint32_t n)
{
    uint32_t best = 0;
    for (uint32_t i = 1; i < n; i++)
        if (logits[i] > logits[best]) best = i;
    return (int32_t)best;
}

int selftest_greedy(void *user, const char *model_path, const int32_t *prompt, uint32_t n_prompt, int32_t *out,
                    uint32_t n_out, char *err, size_t err_len)
{
    const struct selftest_opts *so = user;
    if (n_prompt == 0) return errf(err, err_len, "self-test: empty prompt");
    struct engine_options opt;
    engine_options_default(&opt);
    opt.model_path = model_path;
    opt.backend = so ? so->backend : ENGINE_BACKEND_REF;
    struct engine *e;
    if (engine_open(&e, &opt, err, err_len)) return errf_prefix(err, err_len, "self-test: loading %s", model_path);
    struct engine_info info;
    engine_get_info(e, &info);
    struct session *s = NULL;
    float *logits = malloc((size_t)info.n_vocab * sizeof *logits); /* [n_vocab] */
    int rc = 0;
    if (!logits) rc = errf(err, err_len, "self-test: out of memory for %u logits", info.n_vocab);
    if (!rc) rc = session_create(e, n_prompt + n_out + 1, &s, err, err_len);
    if (!rc) rc = session_eval(s, prompt, n_prompt, logits, false, err, err_len);
    for (uint32_t i = 0; i < n_out && !rc; i++) {
        out[i] = argmax(logits, info.n_vocab);
        if (i + 1 < n_out) rc = session_eval(s, &out[i], 1, logits, false, err, err_len);
    }
    if (rc) errf_prefix(err, err_len, "self-test on %s", model_path);
    session_destroy(s);
    free(logits);
    engine_close(e);
    return rc;
}

int selftest_run(void *user, const struct update_selftest *t, char *err, size_t err_len)
{
    int32_t got[64];
    if (t->n_expected > sizeof got / sizeof got[0]) return errf(err, err_len, "self-test: %u expected tokens, at most 64", t->n_expected);
    if (t->n_expected == 0) { /* no tokens recorded: loading the model is the whole test */
        int32_t first = 0, one;
        const int32_t *prompt = t->n_prompt ? t->prompt : &first;
        return selftest_greedy(user, t->model_path, prompt, t->n_prompt ? t->n_prompt : 1, &one, 1, err, err_len);
    }
    if (selftest_greedy(user, t->model_path, t->prompt, t->n_prompt, got, t->n_expected, err, err_len)) return -1;
    for (uint32_t i = 0; i < t->n_expected; i++)
        if (got[i] != t->expected[i])
            return errf(err, err_len, "self-test: greedy token %u is %d, the manifest expects %d", i, got[i],
                        t->expected[i]);
    return 0;
}
