/* Ed25519 keys and signatures (OpenSSL 3 EVP). Pure Ed25519 is one-shot only, so the
 * signature covers the small manifest and the manifest carries the chunk hashes. Public
 * keys are kept as raw 32-byte values after loading, so a key set compares and prints
 * the same whichever PEM file it came from. */
#include "update/keys.h"
#include "common/safe_open.h"

#include "common/errmsg.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Appends OpenSSL's first queued error (if any) to a message, and clears the queue. */
static int ssl_errf(char *err, size_t err_len, const char *what)
{
    unsigned long e = ERR_get_error();
    char buf[256] = "no OpenSSL detail";
    if (e) ERR_error_string_n(e, buf, sizeof buf);
    ERR_clear_error();
    return errf(err, err_len, "%s: %s", what, buf);
}

int keys_sha256(const void *data, size_t len, uint8_t out[32])
{
    unsigned int n = 0;
    return EVP_Digest(data, len, out, &n, EVP_sha256(), NULL) == 1 && n == 32 ? 0 : -1;
}

void keys_fingerprint(const uint8_t raw[KEYS_RAW_LEN], char out[17])
{
    uint8_t h[32];
    if (keys_sha256(raw, KEYS_RAW_LEN, h)) memset(h, 0, sizeof h);
    for (int i = 0; i < 8; i++) snprintf(out + 2 * i, 3, "%02x", h[i]);
}

static int write_pem_file(const char *path, mode_t mode, EVP_PKEY *pk, int private, char *err, size_t err_len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (fd < 0) return errf(err, err_len, "%s: %s", path, strerror(errno));
    /* The umask may have narrowed the mode; a private key must be exactly 0600. */
    if (fchmod(fd, mode) != 0) {
        close(fd);
        return errf(err, err_len, "%s: chmod: %s", path, strerror(errno));
    }
    FILE *f = fdopen(fd, "w");
    if (!f) {
        close(fd);
        return errf(err, err_len, "%s: %s", path, strerror(errno));
    }
    int ok = private ? PEM_write_PrivateKey(f, pk, NULL, NULL, 0, NULL, NULL) : PEM_write_PUBKEY(f, pk);
    if (fflush(f) != 0 || fsync(fileno(f)) != 0) ok = 0;
    if (fclose(f) != 0) ok = 0;
    if (ok != 1) {
        unlink(path);
        return ssl_errf(err, err_len, path);
    }
    return 0;
}

int keys_generate(const char *dir, char *err, size_t err_len)
{
    char priv[4096], pub[4096];
    snprintf(priv, sizeof priv, "%s/%s", dir, KEYS_PRIVATE_FILE);
    snprintf(pub, sizeof pub, "%s/%s", dir, KEYS_PUBLIC_FILE);
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) return errf(err, err_len, "%s: %s", dir, strerror(errno));
    if (access(priv, F_OK) == 0 || access(pub, F_OK) == 0)
        return errf(err, err_len, "%s: already holds a key pair; refusing to overwrite it", dir);
    EVP_PKEY *pk = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    if (!pk) return ssl_errf(err, err_len, "Ed25519 key generation");
    int rc = write_pem_file(priv, 0600, pk, 1, err, err_len);
    if (!rc) {
        rc = write_pem_file(pub, 0644, pk, 0, err, err_len);
        if (rc) unlink(priv);
    }
    EVP_PKEY_free(pk);
    return rc;
}

static int add_key(struct keyset *ks, EVP_PKEY *pk, const char *origin, char *err, size_t err_len)
{
    if (EVP_PKEY_get_base_id(pk) != EVP_PKEY_ED25519)
        return errf(err, err_len, "%s: key type %s, expected ED25519", origin, OBJ_nid2sn(EVP_PKEY_get_base_id(pk)));
    uint8_t raw[KEYS_RAW_LEN];
    size_t n = sizeof raw;
    if (EVP_PKEY_get_raw_public_key(pk, raw, &n) != 1 || n != KEYS_RAW_LEN)
        return ssl_errf(err, err_len, origin);
    for (unsigned i = 0; i < ks->n; i++)
        if (!memcmp(ks->raw[i], raw, KEYS_RAW_LEN)) return 0; /* the same key twice counts once */
    if (ks->n >= KEYS_MAX) return errf(err, err_len, "%s: more than %d trusted keys", origin, KEYS_MAX);
    memcpy(ks->raw[ks->n], raw, KEYS_RAW_LEN);
    snprintf(ks->origin[ks->n], sizeof ks->origin[0], "%s", origin);
    ks->n++;
    return 0;
}

/* A key file as a BIO, opened through safe_open: a FIFO or a device in the key directory
 * (or given as --key) is refused instead of blocking the read. */
static BIO *open_bio(const char *path, char *err, size_t err_len)
{
    int fd = safe_open(path, O_RDONLY, 0, err, err_len);
    if (fd < 0) return NULL;
    BIO *bio = BIO_new_fd(fd, BIO_CLOSE);
    if (!bio) {
        close(fd);
        ERR_clear_error();
        errf(err, err_len, "%s: out of memory", path);
    }
    return bio;
}

int keys_load_file(struct keyset *ks, const char *path, char *err, size_t err_len)
{
    BIO *bio = open_bio(path, err, err_len);
    if (!bio) return -1;
    int found = 0, rc = 0;
    for (;;) {
        EVP_PKEY *pk = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL);
        if (!pk) break;
        found++;
        rc = add_key(ks, pk, path, err, err_len);
        EVP_PKEY_free(pk);
        if (rc) break;
    }
    ERR_clear_error(); /* the loop ends on "no start line" */
    BIO_free(bio);
    if (!rc && !found) rc = errf(err, err_len, "%s: no PEM public key in it", path);
    return rc;
}

static int pem_name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int keys_load_dir(struct keyset *ks, const char *dir, char *err, size_t err_len)
{
    DIR *d = opendir(dir);
    if (!d) return errf(err, err_len, "trusted key directory %s: %s", dir, strerror(errno));
    char *names[64];
    unsigned n = 0;
    struct dirent *de;
    while ((de = readdir(d)) && n < 64) {
        size_t l = strlen(de->d_name);
        if (l > 4 && !strcmp(de->d_name + l - 4, ".pem") && de->d_name[0] != '.') names[n++] = strdup(de->d_name);
    }
    closedir(d);
    qsort(names, n, sizeof names[0], pem_name_cmp);
    int rc = 0;
    for (unsigned i = 0; i < n; i++) {
        char path[4096];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", dir, names[i] ? names[i] : "");
        if (!rc && names[i] && stat(path, &st) == 0 && S_ISREG(st.st_mode)) rc = keys_load_file(ks, path, err, err_len);
        free(names[i]);
    }
    if (!rc && ks->n == 0) rc = errf(err, err_len, "trusted key directory %s: no *.pem public key in it", dir);
    return rc;
}

int keys_to_pem(const uint8_t (*raw)[KEYS_RAW_LEN], unsigned n, char **pem, size_t *pem_len, char *err, size_t err_len)
{
    *pem = NULL;
    *pem_len = 0;
    BIO *mem = BIO_new(BIO_s_mem());
    if (!mem) return ssl_errf(err, err_len, "key set");
    int rc = 0;
    for (unsigned i = 0; i < n && !rc; i++) {
        EVP_PKEY *pk = EVP_PKEY_new_raw_public_key_ex(NULL, "ED25519", NULL, raw[i], KEYS_RAW_LEN);
        if (!pk || PEM_write_bio_PUBKEY(mem, pk) != 1) rc = ssl_errf(err, err_len, "key set");
        EVP_PKEY_free(pk);
    }
    if (!rc) {
        char *data;
        long len = BIO_get_mem_data(mem, &data);
        *pem = malloc((size_t)len + 1);
        if (!*pem) rc = errf(err, err_len, "key set: out of memory");
        else {
            memcpy(*pem, data, (size_t)len);
            (*pem)[len] = '\0';
            *pem_len = (size_t)len;
        }
    }
    BIO_free(mem);
    return rc;
}

static int load_private(const char *path, EVP_PKEY **out, char *err, size_t err_len)
{
    BIO *bio = open_bio(path, err, err_len);
    if (!bio) return -1;
    *out = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
    BIO_free(bio);
    if (!*out) return ssl_errf(err, err_len, path);
    if (EVP_PKEY_get_base_id(*out) != EVP_PKEY_ED25519) {
        EVP_PKEY_free(*out);
        return errf(err, err_len, "%s: not an Ed25519 private key", path);
    }
    return 0;
}

int keys_private_public(const char *private_path, uint8_t raw[KEYS_RAW_LEN], char *err, size_t err_len)
{
    EVP_PKEY *pk;
    if (load_private(private_path, &pk, err, err_len)) return -1;
    size_t n = KEYS_RAW_LEN;
    int rc = EVP_PKEY_get_raw_public_key(pk, raw, &n) == 1 && n == KEYS_RAW_LEN ? 0 : ssl_errf(err, err_len, private_path);
    EVP_PKEY_free(pk);
    return rc;
}

int keys_sign(const char *private_path, const uint8_t *msg, size_t len, uint8_t sig[KEYS_SIG_LEN], char *err,
              size_t err_len)
{
    EVP_PKEY *pk;
    if (load_private(private_path, &pk, err, err_len)) return -1;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    size_t sig_len = KEYS_SIG_LEN;
    int rc = 0;
    /* NULL digest: Ed25519 hashes internally and signs the whole message at once. */
    if (!ctx || EVP_DigestSignInit_ex(ctx, NULL, NULL, NULL, NULL, pk, NULL) != 1 ||
        EVP_DigestSign(ctx, sig, &sig_len, msg, len) != 1 || sig_len != KEYS_SIG_LEN)
        rc = ssl_errf(err, err_len, "signing the manifest");
    EVP_MD_CTX_free(ctx);
    EVP_PKEY_free(pk);
    return rc;
}

int keys_verify(const struct keyset *ks, const uint8_t *msg, size_t len, const uint8_t sig[KEYS_SIG_LEN], char *err,
                size_t err_len)
{
    if (ks->n == 0) return errf(err, err_len, "no trusted public keys configured");
    for (unsigned i = 0; i < ks->n; i++) {
        EVP_PKEY *pk = EVP_PKEY_new_raw_public_key_ex(NULL, "ED25519", NULL, ks->raw[i], KEYS_RAW_LEN);
        EVP_MD_CTX *ctx = EVP_MD_CTX_new();
        int ok = 0;
        if (pk && ctx && EVP_DigestVerifyInit_ex(ctx, NULL, NULL, NULL, NULL, pk, NULL) == 1)
            ok = EVP_DigestVerify(ctx, sig, KEYS_SIG_LEN, msg, len) == 1; /* exactly 1 means valid */
        ERR_clear_error();
        EVP_MD_CTX_free(ctx);
        EVP_PKEY_free(pk);
        if (ok) return (int)i;
    }
    return errf(err, err_len, "manifest signature does not verify with any of the %u trusted key(s)", ks->n);
}
