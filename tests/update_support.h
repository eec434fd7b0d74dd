/* Helpers shared by the update tests: a scratch box (keys, data dir, config), running the
 * flashbox binary with captured output, and byte-level edits of bundle files. */
#ifndef FLASHBOX_TESTS_UPDATE_SUPPORT_H
#define FLASHBOX_TESTS_UPDATE_SUPPORT_H

#include "update/update.h"

#include <stdbool.h>
#include <stdint.h>

struct upd_box {
    char root[512];
    char keys[600];         /* trusted key dir == the first key pair's dir */
    char data[600];
    char priv[700];         /* private key of the trusted pair */
    struct update_config cfg;
};

/* Creates root/k1 (trusted key pair) and the config for root/data. */
int upd_box_init(struct upd_box *b);

/* Runs a shell command line (stdout and stderr captured into out). Returns the exit
 * status, or -1 when it did not exit normally. */
int upd_sh(char *out, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* `flashbox bundle create` with the box's key and product, chunk 64 KiB, a short self-test
 * (2 prompt tokens, 2 greedy tokens; keeps the many installs quick), plus extra args,
 * which override those defaults. */
int upd_make_bundle(const struct upd_box *b, const char *out, const char *version, unsigned epoch, const char *model,
                    const char *extra);

/* `flashbox update SUB ARG` against the box; output into out. */
int upd_cli(const struct upd_box *b, char *out, size_t cap, const char *sub, const char *arg);

/* The spec's tiny model with another seed, name and (when nonzero) expert width. */
int upd_write_model(const char *path, const char *name, uint64_t seed, uint32_t n_ff_exp);

int upd_flip_byte(const char *path, uint64_t off);
int upd_copy_file(const char *src, const char *dst);
uint64_t upd_file_size(const char *path);
bool upd_files_equal(const char *a, const char *b);
/* The active slot index (-1 none, -2 on error). */
int upd_active_slot(const struct upd_box *b);
/* Offset of the first payload byte in a bundle (header + manifest + signature). */
uint64_t upd_payload_offset(const char *bundle);

#endif
