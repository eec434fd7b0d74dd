/* What one session allocates, part by part, computed from the hyper-parameters alone: the
 * memory plan (engine_plan in engine.h) and the backends' session creation read the same
 * numbers from here, so the plan is what the engine allocates. Internal to engine/. */
#ifndef FLASHBOX_ENGINE_SESSION_PLAN_H
#define FLASHBOX_ENGINE_SESSION_PLAN_H

#include <stdint.h>

#include "engine/engine.h"
#include "engine/model/model.h"

/* Compressed entries a layer of ratio r holds for n_ctx positions (the last one completes
 * at position n_ctx - 1), and indexer keys (CSA layers). */
static inline uint64_t plan_comp_rows(uint32_t ratio, uint32_t n_ctx) { return ratio ? n_ctx / ratio : 0; }
static inline uint64_t plan_ix_rows(uint32_t ratio, uint32_t n_ctx) { return ratio == 4 ? n_ctx / 4 : 0; }
/* Floats of a compressor's state (kv rows, then score rows): 8 rows of 2 x width for
 * ratio 4, else ratio rows of width. */
static inline uint64_t plan_comp_state_floats(uint32_t ratio, uint32_t width)
{
    return ratio == 4 ? 2ull * 8 * 2 * width : 2ull * ratio * width;
}

/* Bytes of the parts of one session (enum engine_plan_part) and its largest single buffer. */
void ref_session_plan(const struct model_hparams *hp, enum engine_kv_type kv, uint32_t n_ctx,
                      uint64_t parts[ENGINE_PLAN_PARTS], uint64_t *largest);
void vk_session_plan(const struct model_hparams *hp, enum engine_kv_type kv, uint32_t n_ctx,
                     uint64_t parts[ENGINE_PLAN_PARTS], uint64_t *largest);

/* engine_plan_* on a bound model (plan.c). */
void engine_plan_model(const struct model *m, enum engine_backend backend, enum engine_kv_type kv, uint32_t n_ctx, uint32_t n_slots,
                       uint64_t expert_cache_mb, struct engine_plan *out);
uint32_t engine_plan_fit_ctx(const struct model *m, struct engine_plan *p, uint64_t budget);

#endif
