/* The update self-test wired to the engine: greedy decoding of a fixed prompt on a model
 * file, and the check that a freshly installed slot reproduces the tokens its manifest
 * recorded. update/ takes these as function pointers, so it never links the engine. */
#ifndef FLASHBOX_FIRMWARE_SELFTEST_H
#define FLASHBOX_FIRMWARE_SELFTEST_H

#include "engine/engine.h"
#include "update/update.h"

struct selftest_opts {
    enum engine_backend backend;
};

/* update_greedy_fn: user is a struct selftest_opts * (NULL: the ref backend). */
int selftest_greedy(void *user, const char *model_path, const int32_t *prompt, uint32_t n_prompt, int32_t *out,
                    uint32_t n_out, char *err, size_t err_len);

/* update_selftest_fn: the model loads and its greedy tokens equal t->expected. */
int selftest_run(void *user, const struct update_selftest *t, char *err, size_t err_len);

#endif
