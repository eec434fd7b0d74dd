/* Prefix reuse for the daemon: session states saved at prompt chunk boundaries, keyed by
 * the tokens before them, kept in memory under a byte budget with least-recently-used
 * eviction. A request whose prompt starts with a saved prefix loads that state and
 * prefills only the rest; since states are saved where the scheduler's prefill chunks end
 * anyway, the batches that follow are the ones a fresh prefill runs, and the logits are
 * bitwise the same. Optionally the states also go to files in a directory under a byte
 * budget (written atomically, SHA-256 checked, bound to the model file's identity) so
 * they outlive the process; a damaged or foreign file is ignored with a line on stderr.
 * One instance per scheduler, used by its worker thread; the counters may be read from
 * any thread. */
#ifndef FLASHBOX_FIRMWARE_PREFIX_CACHE_H
#define FLASHBOX_FIRMWARE_PREFIX_CACHE_H

#include <stdint.h>

#include "engine/engine.h"

struct prefix_cache;

struct prefix_cache_stats {
    uint64_t hits, misses;        /* requests that resumed from a saved prefix, or found none */
    uint64_t tokens_reused;       /* prompt tokens not prefilled again */
    uint64_t bytes_read;          /* state bytes loaded into sessions */
    uint64_t disk_hits, disk_writes, disk_ignored; /* files loaded, written, refused (damaged, foreign) */
    uint64_t saves, evictions;
    uint64_t bytes_held, entries; /* now */
    uint64_t budget;
};

struct prefix_cache_options {
    uint64_t mem_bytes;         /* states held in memory */
    const char *dir;            /* NULL or "": no files */
    uint64_t disk_bytes;        /* files kept in dir (oldest use deleted first) */
};

int prefix_cache_create(struct prefix_cache **out, const struct prefix_cache_options *o, char *err, size_t err_len);
/* The model the states belong to (engine_model_identity): set at creation and after a
 * model swap; files of another model are never loaded. */
void prefix_cache_set_model(struct prefix_cache *c, const struct engine_model_id *id);
void prefix_cache_destroy(struct prefix_cache *c);
/* Loads into the (reset) session the longest saved prefix of tokens[0, n) that is shorter
 * than n; returns its length, 0 when none (the session is then still reset). */
uint32_t prefix_cache_resume(struct prefix_cache *c, struct session *s, const int32_t *tokens, uint32_t n);
/* Saves the session's state under tokens[0, session_pos(s)) unless that prefix is held or
 * does not fit the budget. */
void prefix_cache_save(struct prefix_cache *c, struct session *s, const int32_t *tokens);
/* Forgets every state (the model changed). */
void prefix_cache_clear(struct prefix_cache *c);
void prefix_cache_get_stats(struct prefix_cache *c, struct prefix_cache_stats *out);

#endif
