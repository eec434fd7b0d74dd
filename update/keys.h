/* Ed25519 keys and signatures through OpenSSL 3 EVP: key pair generation (PEM files),
 * trusted public key sets (a directory of PEM files, or one PEM file holding several keys),
 * one-shot signing and verification of manifest bytes. Internal to update/ and tools/. */
#ifndef FLASHBOX_UPDATE_KEYS_H
#define FLASHBOX_UPDATE_KEYS_H

#include <stddef.h>
#include <stdint.h>

#define KEYS_MAX 16
#define KEYS_SIG_LEN 64
#define KEYS_RAW_LEN 32
#define KEYS_PRIVATE_FILE "private.key"   /* PKCS#8 PEM, mode 0600 */
#define KEYS_PUBLIC_FILE "public.pem"     /* SubjectPublicKeyInfo PEM */

struct keyset {
    unsigned n;
    uint8_t raw[KEYS_MAX][KEYS_RAW_LEN];   /* raw Ed25519 public keys */
    char origin[KEYS_MAX][128];            /* file the key came from, for messages */
};

/* Writes DIR/private.key (0600) and DIR/public.pem; refuses to overwrite either. */
int keys_generate(const char *dir, char *err, size_t err_len);

/* Adds every public key of a PEM file (one or more "PUBLIC KEY" blocks). */
int keys_load_file(struct keyset *ks, const char *path, char *err, size_t err_len);
/* Loads every regular file ending in ".pem" in dir (sorted by name); none is an error. */
int keys_load_dir(struct keyset *ks, const char *dir, char *err, size_t err_len);
/* Writes the raw keys as concatenated PEM public keys (for a rotated key set). */
int keys_to_pem(const uint8_t (*raw)[KEYS_RAW_LEN], unsigned n, char **pem, size_t *pem_len, char *err,
                size_t err_len);

/* Raw public key of a private key file. */
int keys_private_public(const char *private_path, uint8_t raw[KEYS_RAW_LEN], char *err, size_t err_len);
/* Signs msg with the private key in private_path (one-shot Ed25519). */
int keys_sign(const char *private_path, const uint8_t *msg, size_t len, uint8_t sig[KEYS_SIG_LEN], char *err,
              size_t err_len);
/* Returns the index of the first key in ks whose signature over msg verifies, or -1 with a
 * message when none does. */
int keys_verify(const struct keyset *ks, const uint8_t *msg, size_t len, const uint8_t sig[KEYS_SIG_LEN], char *err,
                size_t err_len);

/* First 8 bytes of SHA-256(raw key) in hex ("a1b2..."), for messages and status. */
void keys_fingerprint(const uint8_t raw[KEYS_RAW_LEN], char out[17]);

/* One-shot SHA-256. */
int keys_sha256(const void *data, size_t len, uint8_t out[32]);

#endif
