/* The bundle file: a fixed 24-byte header, the manifest, its Ed25519 signature, then the
 * payloads back to back in manifest order.
 *
 *   offset  size  field
 *   0       8     magic "FBXBUNDL"
 *   8       4     u32 LE header version (1)
 *   12      4     u32 LE manifest length (<= MANIFEST_MAX_BYTES, checked before reading it)
 *   16      4     u32 LE signature length (64)
 *   20      4     u32 LE reserved, 0
 *   24      m     manifest (update/manifest.c)
 *   24+m    64    Ed25519 signature over the manifest bytes
 *   88+m    ...   payload 0, payload 1, ... (sizes from the manifest); nothing after
 *
 * Opening a bundle reads the header and the manifest bytes into memory once, verifies the
 * signature over that memory, and only then parses it; payload chunks are likewise read
 * into memory, hashed, and handed on from that same buffer, so nothing changed on the
 * medium between check and use can slip through. Internal to update/. */
#ifndef FLASHBOX_UPDATE_BUNDLE_H
#define FLASHBOX_UPDATE_BUNDLE_H

#include "update/keys.h"
#include "update/manifest.h"
#include "update/update.h"

#include <stdint.h>

#define BUNDLE_MAGIC "FBXBUNDL"
#define BUNDLE_HEADER_VERSION 1u
#define BUNDLE_HEADER_LEN 24u

struct bundle {
    int fd;
    uint64_t file_size;
    uint8_t *head;              /* [BUNDLE_HEADER_LEN + manifest_len + 64]: header, manifest, signature */
    uint32_t manifest_len;
    const uint8_t *manifest_bytes;  /* into head */
    const uint8_t *sig;             /* into head */
    struct manifest m;              /* chunk hashes point into head */
    int key_index;
    char key_fingerprint[17];
    char key_origin[128];
    uint64_t payload_off[MANIFEST_MAX_PAYLOADS];
};

/* Verifies the signed head of a bundle or slot manifest file held in memory (takes
 * ownership of head on success): header, cap, signature, then parse. */
int bundle_parse_head(struct bundle *b, uint8_t *head, size_t head_len, const struct keyset *ks, char *err,
                      size_t err_len);

/* Opens path, verifies the head, and checks that the file holds exactly the payloads the
 * manifest lists. */
int bundle_open(struct bundle *b, const char *path, const struct keyset *ks, char *err, size_t err_len);
void bundle_close(struct bundle *b);

/* Receives each chunk after its hash matched. */
typedef int (*bundle_chunk_fn)(void *user, const struct manifest_payload *p, uint64_t index, uint64_t offset,
                               const uint8_t *data, size_t len, char *err, size_t err_len);

/* Reads every chunk of payload pi from fd (payload starting at base), hashes it and
 * compares with the manifest, then hands it to sink (may be NULL). */
int bundle_check_payload(int fd, uint64_t base, const struct manifest_payload *p, const char *what,
                         enum update_phase phase, const struct update_hooks *hooks, bundle_chunk_fn sink, void *user,
                         char *err, size_t err_len);

/* Test hook: sleeps 10 x FLASHBOX_UPDATE_TEST_DELAY_US (unset: returns at once), between
 * install steps, so a kill -9 at a random time lands on every step. */
void bundle_test_pause(void);

void bundle_info_fill(const struct bundle *b, struct update_bundle_info *info);

#endif
