/* The bundle manifest: the signed, canonical description of one release (product, version,
 * security epoch, self-test tokens, optional new trusted keys, and per payload its size,
 * chunk size and the SHA-256 of every chunk). The byte format is described at the top of
 * update/manifest.c. Internal to update/ and its tests. */
#ifndef FLASHBOX_UPDATE_MANIFEST_H
#define FLASHBOX_UPDATE_MANIFEST_H

#include "update/update.h"

#include <stddef.h>
#include <stdint.h>

#define MANIFEST_MAGIC "FBXMANIF"
#define MANIFEST_FORMAT_VERSION 1u         /* without provenance: what older firmware reads */
#define MANIFEST_FORMAT_PROVENANCE 2u      /* version 1 plus the provenance section */
#define MANIFEST_MAX_PROVENANCE UPDATE_MAX_PROVENANCE /* provenance text, bytes */
#define MANIFEST_MAX_BYTES (4u << 20)      /* cap before the signature is even checked */
#define MANIFEST_MAX_STR 64u               /* product, version, payload name */
#define MANIFEST_MAX_TOKENS 64u            /* self-test prompt and expected tokens */
#define MANIFEST_MAX_KEYS 8u               /* rotated trusted key set */
#define MANIFEST_MAX_PAYLOADS 8u
#define MANIFEST_MIN_CHUNK (4u << 10)
#define MANIFEST_MAX_CHUNK (256u << 20)
#define MANIFEST_HASH_LEN 32u
#define MANIFEST_KEY_LEN 32u               /* raw Ed25519 public key */

struct manifest_payload {
    char name[MANIFEST_MAX_STR + 1];
    uint64_t size;                 /* bytes */
    uint32_t chunk_size;           /* bytes, power of two */
    uint64_t n_chunks;             /* ceil(size / chunk_size) */
    const uint8_t *chunk_hashes;   /* [n_chunks][32] SHA-256, points into the manifest bytes */
};

struct manifest {
    uint32_t format_version;
    char product[MANIFEST_MAX_STR + 1];
    char version[MANIFEST_MAX_STR + 1];
    uint64_t epoch;                /* security epoch: never installed below the stored floor */
    uint64_t created;              /* unix seconds */
    uint32_t n_prompt;
    int32_t prompt[MANIFEST_MAX_TOKENS];   /* self-test prompt token ids */
    uint32_t n_expected;
    int32_t expected[MANIFEST_MAX_TOKENS]; /* greedy tokens the model must produce after it */
    uint32_t n_keys;
    uint8_t keys[MANIFEST_MAX_KEYS][MANIFEST_KEY_LEN]; /* new trusted key set, if n_keys > 0 */
    uint32_t n_payloads;
    struct manifest_payload payloads[MANIFEST_MAX_PAYLOADS];
    /* Where the release came from (format version 2): JSON text as `bundle create` wrote it
     * (source files and SHA-256, conversion parameters, flashbox version, the GGUF's SHA-256,
     * release notes). update/ only checks it is UTF-8 without NUL; firmware shows it. */
    const char *provenance;        /* points into the manifest bytes (not NUL-terminated); NULL: none */
    uint32_t provenance_len;
};

/* Parses len bytes. chunk_hashes point into buf, which must outlive the manifest.
 * Rejects anything that is not exactly the canonical encoding. */
int manifest_parse(struct manifest *m, const uint8_t *buf, size_t len, char *err, size_t err_len);

/* Encodes m (with chunk_hashes pointing anywhere) into a malloc'd buffer. Validates the
 * same limits the parser enforces, so what is encoded always parses. */
int manifest_encode(const struct manifest *m, uint8_t **out, size_t *out_len, char *err, size_t err_len);

/* The payload with that name, or NULL. */
const struct manifest_payload *manifest_find_payload(const struct manifest *m, const char *name);

#endif
