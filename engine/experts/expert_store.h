/* The expert store: routed experts are not loaded with the model; a fixed pool of slots,
 * under a byte budget, caches them, filled on demand from the model file through the page
 * cache (pread + readahead hints) or with direct reads (O_DIRECT through io_uring into an
 * aligned staging buffer) when the file is far larger than RAM. Replacement weighs recency
 * and frequency; slots in use are pinned; loads run on a loader thread so they overlap
 * compute. Hash layers prefetch from the token id before the layer runs; learned-router
 * layers prefetch what the next layer's router, applied early, guesses
 * (EXPERT_STORE_LOOKAHEAD); needed loads are always read before such guesses.
 *
 * A slot holds one expert's three matrices in their file format, back to back:
 * [gate: n_ff_exp rows of n_embd][up: n_ff_exp rows of n_embd][down: n_embd rows of n_ff_exp].
 * The bytes are exactly the file's, so results never depend on the budget. */
#ifndef FLASHBOX_ENGINE_EXPERT_STORE_H
#define FLASHBOX_ENGINE_EXPERT_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/engine.h"
#include "engine/model/model.h"

struct expert_store_options {
    uint64_t budget_bytes;          /* slot memory; at least n_expert_used slots */
    enum engine_expert_read read_path;
    void *slot_memory;              /* optional caller-owned memory of budget_bytes (e.g. mapped device memory) */
    /* Optional split layout instead (a device backend's three slot tensors): part p (gate,
     * up, down) of slot k at part_memory[p] + k * part_stride[p]; every layer's part must
     * fit its stride. budget_bytes then counts sum(part_stride) per slot. */
    void *part_memory[3];
    uint64_t part_stride[3];
    bool no_prefetch;               /* speculative prefetches do nothing */
    bool verify;                    /* checksum each expert at open; a load that differs fails */
};

/* Fault injection for tests, off unless the environment sets FLASHBOX_EXPERT_FAULT to
 * "KIND:N[+]" with KIND eio (the Nth expert read of the process fails with EIO), short
 * (it ends early, as on a truncated file) or flip (it returns one byte changed, as a bad
 * sector or a file rewritten under the daemon would; only expert_verify catches that);
 * "+" also the reads after it. */
void expert_store_fault_configure(const char *spec);

/* One expert's matrices inside a slot, as tensor views ref_matvec accepts. */
struct expert_view {
    struct gguf_tensor gate, up, down;
};

struct expert_store;

/* Slot bytes of one expert (the largest layer's). */
uint64_t expert_store_slot_bytes(const struct model *m);

int expert_store_open(struct expert_store **out, const struct model *m, const char *path,
                      const struct expert_store_options *opt, char *err, size_t err_len);
void expert_store_close(struct expert_store *s);

/* Layers ahead whose experts a learned-router layer guesses from its own input. */
#define EXPERT_STORE_LOOKAHEAD 1

/* Makes experts ids[n] of layer il resident and pinned, waiting for loads still in flight,
 * and fills views[n]. A read error fails this call with a message naming the layer, expert
 * and file offset; the store stays usable. Same as expert_store_request + _await. */
int expert_store_acquire(struct expert_store *s, uint32_t il, const int32_t *ids, uint32_t n,
                         struct expert_view *views, char *err, size_t err_len);
/* The same, giving the slot index of each expert instead of views (a device backend that
 * reads the split layout by slot). n may be up to the number of slots. */
int expert_store_acquire_slots(struct expert_store *s, uint32_t il, const int32_t *ids, uint32_t n,
                               int32_t *slots_out, char *err, size_t err_len);
/* The two halves of an acquire, so a caller can compute (or issue guesses for later layers)
 * while the loads run. request pins ids[n] of layer il (what is resident or on its way) and
 * starts the misses ahead of every speculative load; it never waits for a load (only, when
 * every unpinned slot is being read, for a free slot). await waits for them and gives the
 * slot of each id in request order; await_views the views (n must be the request's). */
int expert_store_request(struct expert_store *s, uint32_t il, const int32_t *ids, uint32_t n, char *err, size_t err_len);
int expert_store_await(struct expert_store *s, uint32_t il, int32_t *slots_out, char *err, size_t err_len);
int expert_store_await_views(struct expert_store *s, uint32_t il, struct expert_view *views, uint32_t n, char *err,
                             size_t err_len);
uint32_t expert_store_n_slots(const struct expert_store *s);
/* Unpins what the last acquire of layer il pinned. */
void expert_store_release(struct expert_store *s, uint32_t il);
/* Starts loads for experts that will be needed soon (never waits, never evicts a pinned
 * slot; skipped when no slot is free to take). speculative: a guess, counted as a prefetch
 * (hash layers, next-layer router guesses), queued behind every needed load, never evicting
 * a slot needed soon or another undecided guess; a no-op with no_prefetch. Otherwise it is
 * the early half of an acquire that follows. */
void expert_store_prefetch(struct expert_store *s, uint32_t il, const int32_t *ids, uint32_t n, bool speculative);
/* Layer il has chosen (every token of the batch requested): its guesses still queued are
 * dropped unread (counted in prefetch_dropped), and those read but unused become ordinary
 * victims. */
void expert_store_drop_speculation(struct expert_store *s, uint32_t il);
/* Whether speculative loads are on (no_prefetch not set): callers skip computing guesses. */
bool expert_store_speculates(const struct expert_store *s);
/* For tests: while held, the loader starts no read (queued loads wait), so queue order and
 * dropping can be observed without timing. */
void expert_store_hold_loader(struct expert_store *s, bool hold);

void expert_store_get_counters(struct expert_store *s, struct expert_counters *out);
/* The store's own accounting: bytes held by slots in use, never above the budget. */
uint64_t expert_store_resident_bytes(struct expert_store *s);
uint64_t expert_store_budget_bytes(const struct expert_store *s);

#endif
