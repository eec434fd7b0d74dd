/* What a backend provides to engine.c: session state creation and token evaluation.
 * Internal to engine/; each backend (ref_backend.c, vk_*.c) fills one table. */
#ifndef FLASHBOX_ENGINE_BACKEND_H
#define FLASHBOX_ENGINE_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/engine.h"
#include "engine/model/model.h"

/* One session's share of a multi-session step (engine_step): as eval's arguments. */
struct backend_step {
    void *state;
    const int32_t *tokens;
    uint32_t n;
    float *logits;
    bool all_logits;
};

struct backend_ops {
    const char *name;
    /* Per-engine setup (device, uploads); *ctx is the backend's engine-wide state. */
    int (*open)(const struct model *m, const struct engine_options *opt, void **ctx, char *err, size_t err_len);
    void (*close)(void *ctx);
    int (*session_create)(void *ctx, const struct model *m, uint32_t n_ctx, enum engine_kv_type kv, void **state,
                          char *err, size_t err_len);
    void (*session_destroy)(void *state);
    void (*session_reset)(void *state);
    /* Evaluates tokens at the state's current position (the state tracks it). */
    int (*eval)(void *ctx, void *state, const int32_t *tokens, uint32_t n, float *logits, bool all_logits,
                char *err, size_t err_len);
    /* Evaluates the items' tokens in one step (distinct states, each at its position); on
     * error every state of the step must be reset. */
    int (*step)(void *ctx, const struct backend_step *items, uint32_t n_items, char *err, size_t err_len);
    /* Optional (NULL: no profile): see session_profile in engine.h. */
    void (*profile)(void *state, bool on);
    void (*get_profile)(const void *state, struct engine_profile *out);
    /* Optional (NULL: refused): see session_observe in engine.h. */
    void (*observe)(void *state, const struct engine_observer *obs);
    int (*copy_bandwidth)(void *ctx, double *bytes_per_s, char *err, size_t err_len);
    int (*bench_kernels)(void *ctx, const struct model *m, FILE *out, char *err, size_t err_len);
    /* Device memory held and the device's local memory; NULL or -1 without a device. */
    int (*device_memory)(void *ctx, uint64_t *used, uint64_t *total);
    /* The session's state at its position in the layout of session_state.h (words after
     * the header); load also sets the position. */
    int (*state_save)(void *state, uint32_t *data, char *err, size_t err_len);
    int (*state_load)(void *state, uint32_t pos, const uint32_t *data, char *err, size_t err_len);
    /* Expert-cache counters; NULL or -1 when experts are not paged. */
    int (*expert_counters)(void *ctx, struct expert_counters *out);
};

extern const struct backend_ops ref_backend_ops;
extern const struct backend_ops vk_backend_ops; /* engine/vulkan/vk_forward.c */

#endif
