/* The backend-independent session-state layout (session_state.h). */
#include "engine/session_state.h"
#include "engine/kv_store.h"

void session_state_layer(const struct model_hparams *hp, enum engine_kv_type kv, uint32_t pos, uint32_t il,
                         struct session_state_layer *out)
{
    uint64_t off = 0;
    for (uint32_t l = 0; l <= il; l++) {
        const uint32_t r = hp->ratio[l];
        struct session_state_layer o = { 0 };
        o.ring_rows = pos < hp->window ? pos : hp->window;
        o.ring_first = pos - (uint32_t)o.ring_rows;
        o.ring_off = off;
        off += o.ring_rows * hp->head_dim;
        if (r) {
            o.comp_rows = pos / r;
            o.comp_off = off;
            off += o.comp_rows * kv_entry_words(kv, hp->head_dim);
            o.kvc_floats = 2ull * session_state_comp_rows(r) * session_state_coff(r) * hp->head_dim;
            o.kvc_off = off;
            off += o.kvc_floats;
        }
        if (r == 4) {
            o.ix_rows = pos / 4;
            o.ix_off = off;
            off += o.ix_rows * kv_entry_words(kv, hp->ix_dim);
            o.ixc_floats = 2ull * 8 * 2 * hp->ix_dim;
            o.ixc_off = off;
            off += o.ixc_floats;
        }
        o.end = off;
        if (l == il) *out = o;
    }
}

uint64_t session_state_words(const struct model_hparams *hp, enum engine_kv_type kv, uint32_t pos)
{
    if (hp->n_layer == 0) return 0;
    struct session_state_layer o;
    session_state_layer(hp, kv, pos, hp->n_layer - 1, &o);
    return o.end;
}
