/* Reading and checking bundles: the signed head first, then every payload chunk. */
#include "update/bundle.h"
#include "common/safe_open.h"

#include "common/errmsg.h"
#include "update/durable.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* The fixed envelope: everything that may be looked at before the signature is checked. */
static int check_header(const uint8_t *h, uint32_t *manifest_len, char *err, size_t err_len)
{
    if (memcmp(h, BUNDLE_MAGIC, 8)) return errf(err, err_len, "not a flashbox bundle (magic is not \"%s\")", BUNDLE_MAGIC);
    uint32_t version = le32(h + 8), mlen = le32(h + 12), slen = le32(h + 16), reserved = le32(h + 20);
    if (version != BUNDLE_HEADER_VERSION)
        return errf(err, err_len, "bundle header version %u, this firmware reads version %u", version,
                    BUNDLE_HEADER_VERSION);
    if (mlen > MANIFEST_MAX_BYTES)
        return errf(err, err_len, "manifest is %u bytes, over the cap of %u bytes", mlen, MANIFEST_MAX_BYTES);
    if (mlen == 0) return errf(err, err_len, "manifest length is 0");
    if (slen != KEYS_SIG_LEN) return errf(err, err_len, "signature length %u, expected %u (Ed25519)", slen, KEYS_SIG_LEN);
    if (reserved != 0) return errf(err, err_len, "bundle header reserved field is %u, expected 0", reserved);
    *manifest_len = mlen;
    return 0;
}

int bundle_parse_head(struct bundle *b, uint8_t *head, size_t head_len, const struct keyset *ks, char *err,
                      size_t err_len)
{
    uint32_t mlen;
    if (head_len < BUNDLE_HEADER_LEN) return errf(err, err_len, "bundle header: %zu bytes, expected %u", head_len, BUNDLE_HEADER_LEN);
    if (check_header(head, &mlen, err, err_len)) return -1;
    if (head_len != (size_t)BUNDLE_HEADER_LEN + mlen + KEYS_SIG_LEN)
        return errf(err, err_len, "signed head: %zu bytes, header says %u", head_len, BUNDLE_HEADER_LEN + mlen + KEYS_SIG_LEN);
    const uint8_t *mbytes = head + BUNDLE_HEADER_LEN, *sig = mbytes + mlen;
    int k = keys_verify(ks, mbytes, mlen, sig, err, err_len);
    if (k < 0) return -1;
    /* Only now, with the signature good, is the manifest parsed. */
    if (manifest_parse(&b->m, mbytes, mlen, err, err_len)) return -1;
    b->head = head;
    b->manifest_len = mlen;
    b->manifest_bytes = mbytes;
    b->sig = sig;
    b->key_index = k;
    keys_fingerprint(ks->raw[k], b->key_fingerprint);
    snprintf(b->key_origin, sizeof b->key_origin, "%s", ks->origin[k]);
    return 0;
}

int bundle_open(struct bundle *b, const char *path, const struct keyset *ks, char *err, size_t err_len)
{
    memset(b, 0, sizeof *b);
    b->fd = safe_open(path, O_RDONLY, 0, err, err_len);
    if (b->fd < 0) return -1;
    struct stat st;
    if (fstat(b->fd, &st) != 0) {
        errf(err, err_len, "%s: fstat: %s", path, strerror(errno));
        goto fail_fd;
    }
    b->file_size = (uint64_t)st.st_size;
    uint8_t hdr[BUNDLE_HEADER_LEN];
    uint32_t mlen;
    if (b->file_size < BUNDLE_HEADER_LEN) {
        errf(err, err_len, "%s: %llu bytes, shorter than the %u-byte bundle header (truncated)", path,
             (unsigned long long)b->file_size, BUNDLE_HEADER_LEN);
        goto fail_fd;
    }
    if (durable_pread_all(b->fd, hdr, sizeof hdr, 0, path, err, err_len) || check_header(hdr, &mlen, err, err_len))
        goto fail_fd;
    size_t head_len = (size_t)BUNDLE_HEADER_LEN + mlen + KEYS_SIG_LEN;
    if (b->file_size < head_len) {
        errf(err, err_len, "%s: %llu bytes, the header promises a %zu-byte manifest and signature (truncated)", path,
             (unsigned long long)b->file_size, head_len);
        goto fail_fd;
    }
    uint8_t *head = malloc(head_len);
    if (!head) {
        errf(err, err_len, "%s: out of memory for the manifest", path);
        goto fail_fd;
    }
    if (durable_pread_all(b->fd, head, head_len, 0, path, err, err_len) ||
        bundle_parse_head(b, head, head_len, ks, err, err_len)) {
        free(head);
        goto fail_fd;
    }
    uint64_t off = head_len;
    for (uint32_t i = 0; i < b->m.n_payloads; i++) {
        b->payload_off[i] = off;
        if (__builtin_add_overflow(off, b->m.payloads[i].size, &off)) {
            errf(err, err_len, "%s: payload sizes overflow 64 bits", path);
            goto fail_head;
        }
    }
    if (b->file_size < off) {
        errf(err, err_len, "%s: %llu bytes, the manifest's payloads need %llu (truncated or a payload is short)", path,
             (unsigned long long)b->file_size, (unsigned long long)off);
        goto fail_head;
    }
    if (b->file_size > off) {
        errf(err, err_len, "%s: %llu bytes after the last payload that the manifest does not list (a payload is longer "
             "than its entry, or data was appended)", path, (unsigned long long)(b->file_size - off));
        goto fail_head;
    }
    return 0;
fail_head:
    free(b->head);
    b->head = NULL;
fail_fd:
    close(b->fd);
    b->fd = -1;
    return -1;
}

void bundle_close(struct bundle *b)
{
    if (b->fd >= 0) close(b->fd);
    free(b->head);
    memset(b, 0, sizeof *b);
    b->fd = -1;
}

/* Test hook: FLASHBOX_UPDATE_TEST_DELAY_US slows every chunk so that the power-loss test
 * can kill the installer at random points of a small install. */
static unsigned test_delay_us(void)
{
    static int cached = -1;
    if (cached < 0) {
        const char *s = getenv("FLASHBOX_UPDATE_TEST_DELAY_US");
        cached = s ? atoi(s) : 0;
        if (cached < 0) cached = 0;
    }
    return (unsigned)cached;
}

void bundle_test_pause(void)
{
    if (test_delay_us()) usleep(10 * test_delay_us());
}

/* Test hook (off unless set): FLASHBOX_UPDATE_TEST_STALL_CHUNK=N makes the Nth chunk read
 * of this process (1-based, counted over every payload) never return, like a read from a
 * stalled network mount: no cancellation point can end it. The daemon tests use it to
 * show that SIGTERM still ends the process within its bound and the store stays good. */
static void test_stall_point(void)
{
    static long stall_at = -1;
    static long reads;
    if (stall_at < 0) {
        const char *s = getenv("FLASHBOX_UPDATE_TEST_STALL_CHUNK");
        stall_at = s ? atol(s) : 0;
    }
    if (stall_at > 0 && __atomic_add_fetch(&reads, 1, __ATOMIC_RELAXED) == stall_at)
        for (;;) pause();
}

int update_check_cancel(const struct update_hooks *hooks, const char *what, char *err, size_t err_len)
{
    if (!hooks || !hooks->cancelled) return 0;
    char why[256] = "";
    if (!hooks->cancelled(hooks->user, why, sizeof why)) return 0;
    return errf(err, err_len, "%s cancelled: %s", what, why[0] ? why : "asked to stop");
}

/* Reads chunk i of p into buf (at least chunk_size bytes), hashes it and compares it
 * with the manifest. *len receives the chunk's length. */
static int check_chunk(int fd, uint64_t base, const struct manifest_payload *p, uint64_t i, uint8_t *buf, size_t *len,
                       const char *what, char *err, size_t err_len)
{
    uint64_t off = i * p->chunk_size;
    *len = (size_t)(p->size - off < p->chunk_size ? p->size - off : p->chunk_size);
    uint8_t h[32];
    test_stall_point();
    if (durable_pread_all(fd, buf, *len, base + off, what, err, err_len)) return -1;
    if (keys_sha256(buf, *len, h)) return errf(err, err_len, "%s: SHA-256 failed", what);
    if (CRYPTO_memcmp(h, p->chunk_hashes + i * MANIFEST_HASH_LEN, 32) != 0)
        return errf(err, err_len, "%s: chunk %llu of %llu (bytes %llu..%llu) does not match its SHA-256 in the manifest",
                    what, (unsigned long long)i, (unsigned long long)p->n_chunks, (unsigned long long)off,
                    (unsigned long long)(off + *len - 1));
    return 0;
}

/* Verification without a sink hashes on several threads: chunks are independent, and
 * SHA-256 (about 1 GB/s per core) is slower than an NVMe. The reported error is the one
 * of the lowest failing chunk, as a sequential pass would report. */
#define VERIFY_MAX_THREADS 8

struct verify_shared {
    int fd;
    uint64_t base;
    const struct manifest_payload *p;
    const char *what;
    enum update_phase phase;
    const struct update_hooks *hooks;
    unsigned n_threads;
    pthread_mutex_t mu;
    uint64_t done_bytes;            /* under mu */
    uint64_t first_bad;             /* lowest failing chunk, under mu; n_chunks when none */
    char first_err[512];            /* its message, under mu */
};

struct verify_worker {
    struct verify_shared *sh;
    unsigned k;                     /* handles chunks k, k + n_threads, ... */
};

static void *verify_worker_run(void *arg)
{
    struct verify_worker *w = arg;
    struct verify_shared *sh = w->sh;
    uint8_t *buf = malloc(sh->p->chunk_size); /* [chunk_size] bytes */
    char err[512];
    for (uint64_t i = w->k; i < sh->p->n_chunks; i += sh->n_threads) {
        pthread_mutex_lock(&sh->mu);
        bool stop = i > sh->first_bad;
        pthread_mutex_unlock(&sh->mu);
        if (stop) break;
        size_t len = 0;
        int rc = update_check_cancel(sh->hooks, "verification", err, sizeof err);
        if (!rc)
            rc = buf ? check_chunk(sh->fd, sh->base, sh->p, i, buf, &len, sh->what, err, sizeof err)
                     : errf(err, sizeof err, "%s: out of memory for a %u-byte chunk", sh->what, sh->p->chunk_size);
        pthread_mutex_lock(&sh->mu);
        if (rc && i < sh->first_bad) {
            sh->first_bad = i;
            snprintf(sh->first_err, sizeof sh->first_err, "%s", err);
        }
        sh->done_bytes += len;
        if (!rc && sh->hooks && sh->hooks->progress)
            sh->hooks->progress(sh->hooks->user, sh->phase, sh->p->name, sh->done_bytes, sh->p->size);
        pthread_mutex_unlock(&sh->mu);
        if (rc) break;
    }
    free(buf);
    return NULL;
}

static int verify_parallel(int fd, uint64_t base, const struct manifest_payload *p, const char *what,
                           enum update_phase phase, const struct update_hooks *hooks, unsigned n_threads, char *err,
                           size_t err_len)
{
    struct verify_shared sh = { .fd = fd, .base = base, .p = p, .what = what, .phase = phase, .hooks = hooks,
                                .n_threads = n_threads, .first_bad = p->n_chunks };
    pthread_mutex_init(&sh.mu, NULL);
    struct verify_worker workers[VERIFY_MAX_THREADS];
    pthread_t tids[VERIFY_MAX_THREADS];
    unsigned started = 0;
    for (unsigned k = 0; k < n_threads; k++) {
        workers[k] = (struct verify_worker){ &sh, k };
        if (k > 0 && pthread_create(&tids[k], NULL, verify_worker_run, &workers[k]) != 0) break;
        started = k + 1;
    }
    /* Chunks of workers that failed to start are covered by nobody: shrink and redo them
     * here is more code than it is worth, so run everything on this thread instead. */
    if (started < n_threads) {
        for (unsigned k = 1; k < started; k++) pthread_join(tids[k], NULL);
        pthread_mutex_destroy(&sh.mu);
        return verify_parallel(fd, base, p, what, phase, hooks, 1, err, err_len);
    }
    verify_worker_run(&workers[0]);
    for (unsigned k = 1; k < n_threads; k++) pthread_join(tids[k], NULL);
    pthread_mutex_destroy(&sh.mu);
    if (sh.first_bad < p->n_chunks) return errf(err, err_len, "%s", sh.first_err);
    return 0;
}

int bundle_check_payload(int fd, uint64_t base, const struct manifest_payload *p, const char *what,
                         enum update_phase phase, const struct update_hooks *hooks, bundle_chunk_fn sink, void *user,
                         char *err, size_t err_len)
{
    if (hooks && hooks->progress) hooks->progress(hooks->user, phase, p->name, 0, p->size);
    if (!sink) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        unsigned n = cpus < 1 ? 1 : cpus > VERIFY_MAX_THREADS ? VERIFY_MAX_THREADS : (unsigned)cpus;
        if (n > p->n_chunks) n = p->n_chunks ? (unsigned)p->n_chunks : 1;
        return verify_parallel(fd, base, p, what, phase, hooks, n, err, err_len);
    }
    /* Install: one chunk at a time, written from the very buffer that was hashed. */
    uint8_t *buf = malloc(p->chunk_size); /* [chunk_size] bytes */
    if (!buf) return errf(err, err_len, "%s: out of memory for a %u-byte chunk", what, p->chunk_size);
    int rc = 0;
    for (uint64_t i = 0; i < p->n_chunks && !rc; i++) {
        size_t len;
        rc = update_check_cancel(hooks, "install", err, err_len);
        if (!rc) rc = check_chunk(fd, base, p, i, buf, &len, what, err, err_len);
        if (!rc) rc = sink(user, p, i, i * p->chunk_size, buf, len, err, err_len);
        if (!rc && hooks && hooks->progress) hooks->progress(hooks->user, phase, p->name, i * p->chunk_size + len, p->size);
        if (test_delay_us()) usleep(test_delay_us());
    }
    free(buf);
    return rc;
}

void bundle_info_fill(const struct bundle *b, struct update_bundle_info *info)
{
    memset(info, 0, sizeof *info);
    snprintf(info->product, sizeof info->product, "%s", b->m.product);
    snprintf(info->version, sizeof info->version, "%s", b->m.version);
    info->epoch = b->m.epoch;
    info->created = b->m.created;
    snprintf(info->key_fingerprint, sizeof info->key_fingerprint, "%s", b->key_fingerprint);
    snprintf(info->key_origin, sizeof info->key_origin, "%s", b->key_origin);
    info->manifest_bytes = b->manifest_len;
    info->n_payloads = b->m.n_payloads;
    for (uint32_t i = 0; i < b->m.n_payloads; i++) {
        snprintf(info->payloads[i].name, sizeof info->payloads[i].name, "%s", b->m.payloads[i].name);
        info->payloads[i].size = b->m.payloads[i].size;
        info->payloads[i].chunk_size = b->m.payloads[i].chunk_size;
        info->payloads[i].n_chunks = b->m.payloads[i].n_chunks;
    }
    info->n_new_keys = b->m.n_keys;
    info->n_expected = b->m.n_expected;
    if (b->m.provenance) snprintf(info->provenance, sizeof info->provenance, "%.*s", (int)b->m.provenance_len, b->m.provenance);
}
