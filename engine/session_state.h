/* The backend-independent layout of a session's state at position pos (session_state_save
 * in engine.h): a header, then per layer the window's rows of the last min(pos, window)
 * positions in position order, and for compressed layers the completed entries and the
 * compressor state, and for CSA layers the indexer keys and the indexer compressor's
 * state; 32-bit words: float32, except entries and keys, which are stored as the session
 * stores them (kv_store.h; the header records the type). Both backends read and write their own buffers through it, so state
 * saved by one loads into the other. Internal to engine/. */
#ifndef FLASHBOX_ENGINE_SESSION_STATE_H
#define FLASHBOX_ENGINE_SESSION_STATE_H

#include <stdint.h>

#include "engine/engine.h"
#include "engine/model/model.h"

#define SESSION_STATE_MAGIC 0x54534246u /* "FBST" */
#define SESSION_STATE_VERSION 2u       /* 2: the KV storage type word */
#define SESSION_STATE_HEADER_U32 10     /* magic, version, pos, n_layer, window, head_dim, ix_dim, n_embd,
                                         * a hash of the layers' ratios, the KV storage type */
#define SESSION_STATE_KV_WORD 9

/* Where layer il's parts start, in words after the header, and their row counts. A
 * compressor state is kv rows then score rows: 2 x n_rows x coff x width floats. */
struct session_state_layer {
    uint32_t ring_first;                /* first position in the window: pos - ring_rows */
    uint64_t ring_rows, ring_off;       /* [ring_rows][head_dim] */
    uint64_t comp_rows, comp_off;       /* [pos / ratio][kv_entry_words(head_dim)] */
    uint64_t kvc_floats, kvc_off;
    uint64_t ix_rows, ix_off;           /* [pos / 4][kv_entry_words(ix_dim)] */
    uint64_t ixc_floats, ixc_off;
    uint64_t end;                       /* first word after the layer */
};

/* A compressor's rows (8 for ratio 4, else ratio) and coff (2 for ratio 4, else 1). */
static inline uint32_t session_state_comp_rows(uint32_t ratio) { return ratio == 4 ? 8 : ratio; }
static inline uint32_t session_state_coff(uint32_t ratio) { return ratio == 4 ? 2 : 1; }

void session_state_layer(const struct model_hparams *hp, enum engine_kv_type kv, uint32_t pos, uint32_t il,
                         struct session_state_layer *out);
/* Words after the header for a session at pos. */
uint64_t session_state_words(const struct model_hparams *hp, enum engine_kv_type kv, uint32_t pos);

#endif
