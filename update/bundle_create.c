/* Creating a signed bundle. Each payload is read once, chunk by chunk: the chunk is
 * hashed and the same buffer is written into the bundle, so what is signed is exactly what
 * was copied even if the input changes meanwhile. The manifest's length depends only on
 * the payload sizes, so the payload region can be written before the manifest is known;
 * the head (header, manifest, signature) is written last, into a temp file renamed at the
 * end. All-zero chunks are skipped with a seek, so sparse inputs stay sparse. */
#include "update/bundle.h"
#include "common/safe_open.h"
#include "update/durable.h"
#include "update/update.h"

#include "common/errmsg.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct input {
    const char *path;
    int fd;
    uint8_t *hashes;    /* [n_chunks][32] */
};

static bool all_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i]) return false;
    return true;
}

static int copy_payload(struct input *in, const struct manifest_payload *p, int out, uint64_t base, uint8_t *buf,
                        const struct update_hooks *hooks, const char *out_path, char *err, size_t err_len)
{
    if (hooks && hooks->progress) hooks->progress(hooks->user, UPDATE_PHASE_HASH, p->name, 0, p->size);
    for (uint64_t i = 0; i < p->n_chunks; i++) {
        uint64_t off = i * p->chunk_size;
        size_t len = (size_t)(p->size - off < p->chunk_size ? p->size - off : p->chunk_size);
        if (durable_pread_all(in->fd, buf, len, off, in->path, err, err_len)) return -1;
        if (keys_sha256(buf, len, in->hashes + i * MANIFEST_HASH_LEN)) return errf(err, err_len, "SHA-256 failed");
        if (!all_zero(buf, len) && durable_pwrite_all(out, buf, len, base + off, out_path, err, err_len)) return -1;
        if (hooks && hooks->progress) hooks->progress(hooks->user, UPDATE_PHASE_HASH, p->name, off + len, p->size);
    }
    /* The input must not have grown while it was read either. */
    struct stat st;
    if (fstat(in->fd, &st) != 0 || (uint64_t)st.st_size != p->size)
        return errf(err, err_len, "%s changed size while the bundle was made", in->path);
    return 0;
}

static int fill_payload(struct manifest_payload *p, const char *name, struct input *in, uint32_t chunk_size, char *err,
                        size_t err_len)
{
    in->fd = safe_open(in->path, O_RDONLY, 0, err, err_len);
    if (in->fd < 0) return -1;
    struct stat st;
    if (fstat(in->fd, &st) != 0) return errf(err, err_len, "%s: fstat: %s", in->path, strerror(errno));
    snprintf(p->name, sizeof p->name, "%s", name);
    p->size = (uint64_t)st.st_size;
    p->chunk_size = chunk_size;
    p->n_chunks = chunk_size ? p->size / chunk_size + (p->size % chunk_size != 0) : 0;
    if (p->n_chunks > MANIFEST_MAX_BYTES / MANIFEST_HASH_LEN)
        return errf(err, err_len, "%s: %llu chunks of %u bytes do not fit the %u-byte manifest; use a larger chunk size",
                    in->path, (unsigned long long)p->n_chunks, chunk_size, MANIFEST_MAX_BYTES);
    in->hashes = calloc(p->n_chunks ? p->n_chunks : 1, MANIFEST_HASH_LEN);
    if (!in->hashes) return errf(err, err_len, "%s: out of memory for the chunk table", in->path);
    p->chunk_hashes = in->hashes;
    return 0;
}

static void put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

int update_bundle_create(const struct update_create_opts *opt, const struct update_hooks *hooks, char *err,
                         size_t err_len)
{
    struct manifest m;
    memset(&m, 0, sizeof m);
    struct input in[2] = { { opt->model_path, -1, NULL }, { opt->firmware_path, -1, NULL } };
    const char *names[2] = { UPDATE_MODEL_PAYLOAD, UPDATE_FIRMWARE_PAYLOAD };
    uint8_t *mbytes = NULL, *buf = NULL;
    size_t mlen = 0;
    int out = -1, rc = -1;
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", opt->out_path);

    snprintf(m.product, sizeof m.product, "%s", opt->product ? opt->product : "");
    snprintf(m.version, sizeof m.version, "%s", opt->version ? opt->version : "");
    m.epoch = opt->epoch;
    m.created = opt->created;
    if (opt->provenance) {
        size_t n = strlen(opt->provenance);
        if (n > MANIFEST_MAX_PROVENANCE) {
            errf(err, err_len, "provenance: %zu bytes, at most %u (shorten the release notes)", n, MANIFEST_MAX_PROVENANCE);
            goto done;
        }
        m.provenance = opt->provenance;
        m.provenance_len = (uint32_t)n;
    }
    if (opt->n_prompt > MANIFEST_MAX_TOKENS || opt->n_expected > MANIFEST_MAX_TOKENS) {
        errf(err, err_len, "at most %u prompt and expected tokens", MANIFEST_MAX_TOKENS);
        goto done;
    }
    m.n_prompt = opt->n_prompt;
    if (opt->n_prompt) memcpy(m.prompt, opt->prompt, opt->n_prompt * sizeof(int32_t));
    m.n_expected = opt->n_expected;
    if (opt->n_expected) memcpy(m.expected, opt->expected, opt->n_expected * sizeof(int32_t));
    if (opt->new_keys_path) {
        struct keyset ks;
        memset(&ks, 0, sizeof ks);
        if (keys_load_file(&ks, opt->new_keys_path, err, err_len)) goto done;
        if (ks.n > MANIFEST_MAX_KEYS) {
            errf(err, err_len, "%s: %u keys, a bundle carries at most %u", opt->new_keys_path, ks.n, MANIFEST_MAX_KEYS);
            goto done;
        }
        m.n_keys = ks.n;
        memcpy(m.keys, ks.raw, (size_t)ks.n * KEYS_RAW_LEN);
    }
    for (int i = 0; i < 2; i++) {
        if (!in[i].path) continue;
        if (fill_payload(&m.payloads[m.n_payloads], names[i], &in[i], opt->chunk_size, err, err_len)) goto done;
        m.n_payloads++;
    }
    /* First encoding (hashes still zero) fixes the manifest length and validates limits. */
    if (manifest_encode(&m, &mbytes, &mlen, err, err_len)) goto done;
    free(mbytes);
    mbytes = NULL;
    buf = malloc(opt->chunk_size); /* [chunk_size] bytes */
    if (!buf) {
        errf(err, err_len, "out of memory for a %u-byte chunk", opt->chunk_size);
        goto done;
    }
    out = safe_open(tmp, O_RDWR | O_CREAT | O_TRUNC, 0644, err, err_len);
    if (out < 0) goto done;
    uint64_t off = (uint64_t)BUNDLE_HEADER_LEN + mlen + KEYS_SIG_LEN;
    for (uint32_t i = 0, k = 0; i < 2; i++) {
        if (!in[i].path) continue;
        if (copy_payload(&in[i], &m.payloads[k], out, off, buf, hooks, tmp, err, err_len)) goto done;
        off += m.payloads[k++].size;
    }
    if (ftruncate(out, (off_t)off) != 0) { /* trailing holes still count toward the size */
        errf(err, err_len, "%s: truncate to %llu: %s", tmp, (unsigned long long)off, strerror(errno));
        goto done;
    }
    size_t mlen2;
    if (manifest_encode(&m, &mbytes, &mlen2, err, err_len)) goto done;
    uint8_t head[BUNDLE_HEADER_LEN], sig[KEYS_SIG_LEN];
    memcpy(head, BUNDLE_MAGIC, 8);
    put_le32(head + 8, BUNDLE_HEADER_VERSION);
    put_le32(head + 12, (uint32_t)mlen2);
    put_le32(head + 16, KEYS_SIG_LEN);
    put_le32(head + 20, 0);
    if (keys_sign(opt->private_key, mbytes, mlen2, sig, err, err_len)) goto done;
    if (durable_pwrite_all(out, head, sizeof head, 0, tmp, err, err_len) ||
        durable_pwrite_all(out, mbytes, mlen2, BUNDLE_HEADER_LEN, tmp, err, err_len) ||
        durable_pwrite_all(out, sig, sizeof sig, BUNDLE_HEADER_LEN + mlen2, tmp, err, err_len))
        goto done;
    if (fsync(out) != 0) {
        errf(err, err_len, "fsync %s: %s", tmp, strerror(errno));
        goto done;
    }
    if (rename(tmp, opt->out_path) != 0) {
        errf(err, err_len, "rename %s -> %s: %s", tmp, opt->out_path, strerror(errno));
        goto done;
    }
    rc = 0;
done:
    if (out >= 0) {
        close(out);
        if (rc) unlink(tmp);
    }
    for (int i = 0; i < 2; i++) {
        if (in[i].fd >= 0) close(in[i].fd);
        free(in[i].hashes);
    }
    free(buf);
    free(mbytes);
    return rc;
}
