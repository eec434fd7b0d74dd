/* The slot store under the data directory: paths of the two slots, the active pointer, the
 * state file (epoch floor, boot trial, last fallback), the writer lock, the effective
 * trusted key set, and the validity of each slot. Layout in update/update.h. Internal. */
#ifndef FLASHBOX_UPDATE_STORE_H
#define FLASHBOX_UPDATE_STORE_H

#include "update/bundle.h"
#include "update/keys.h"
#include "update/update.h"

#include <stdbool.h>
#include <stdint.h>

#define STORE_SLOT_MANIFEST "bundle.manifest"
#define STORE_ROTATED_KEYS "trusted-keys.pem"

struct store_state {
    uint64_t epoch_floor;
    int trial;                  /* slot index under boot trial, -1 none */
    uint32_t boot_attempts;
    char last_fallback[256];
    struct update_eval_record eval[2]; /* per slot: its last site evaluation */
};

/* "DATA/slot-a" etc. */
void store_slot_dir(const struct update_config *cfg, int slot, char *buf, size_t len);
const char *store_slot_name(int slot); /* "a", "b" */

/* The trusted keys: DATA/trusted-keys.pem when present, else every *.pem in keys_dir. */
int store_load_trust(const struct update_config *cfg, struct keyset *ks, char *source, size_t source_len, char *err,
                     size_t err_len);

/* The slot `active` points to, or -1 when there is none yet. */
int store_active(const struct update_config *cfg, int *slot, char *err, size_t err_len);
int store_set_active(const struct update_config *cfg, int slot, char *err, size_t err_len);

/* A missing state file reads as floor 0, no trial. */
int store_read_state(const struct update_config *cfg, struct store_state *st, char *err, size_t err_len);
int store_write_state(const struct update_config *cfg, const struct store_state *st, char *err, size_t err_len);
/* Strict parser of the state file text (exposed for tests and fuzzing). */
int store_parse_state(const char *text, size_t len, struct store_state *st, char *err, size_t err_len);

/* Creates the data directory if needed and takes its writer lock (fd >= 0 on success).
 * wait: wait up to cfg->lock_wait_s for another writer to let go (the daemon's boot);
 * otherwise up to two seconds. The error names the holder's pid and command line. */
int store_lock(const struct update_config *cfg, bool wait, int *fd, char *err, size_t err_len);
void store_unlock(int fd);

/* Opens a slot's signed manifest and checks that each payload file exists with the
 * manifest's size; deep also re-hashes every chunk. On success b holds the manifest
 * (bundle_close it); b->fd is -1. */
int store_check_slot(const struct update_config *cfg, const struct keyset *ks, int slot, bool deep,
                     const struct update_hooks *hooks, struct bundle *b, char *err, size_t err_len);

#endif
