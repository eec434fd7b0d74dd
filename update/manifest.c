/* The manifest parser and encoder. The manifest is the only thing the Ed25519 signature
 * covers; it is small, fixed-order binary, and has exactly one valid encoding per content,
 * so "the bytes that were signed" and "what was parsed" cannot disagree.
 *
 * Manifest format, version 1. All integers little-endian; no padding, no optional fields,
 * no trailing bytes. Strings are u16 length + bytes (no NUL), 1..64 bytes long.
 *
 *   offset  size       field
 *   0       8          magic "FBXMANIF"
 *   8       4   u32    format version (1; anything else is refused after the signature check)
 *   12      2+n        product     [A-Za-z0-9._-]     e.g. "flashbox-v4-flash"
 *           2+n        version     [A-Za-z0-9._+-]    release name, e.g. "2026.11.1"
 *           8   u64    security epoch (anti-rollback; never installed below the stored floor)
 *           8   u64    creation time, unix seconds
 *           4   u32    n_prompt (0..64), then n_prompt x i32 self-test prompt token ids
 *           4   u32    n_expected (0..64), then n_expected x i32 greedy tokens expected
 *           4   u32    n_keys (0..8), then n_keys x 32-byte raw Ed25519 public keys: when
 *                      non-zero, the trusted key set this box uses after installing it
 *           4   u32    n_payloads (1..8), then per payload:
 *             2+n        name [A-Za-z0-9._-], not starting with '.', unique
 *             8   u64    size in bytes
 *             4   u32    chunk size in bytes, a power of two in [4 KiB, 256 MiB]
 *             8   u64    n_chunks, must equal ceil(size / chunk size)
 *             32*n_chunks  SHA-256 of every chunk in order (the last one may be short)
 *
 * Version 2 is version 1 followed by a provenance section (nothing else changes; a bundle
 * without provenance is still written as version 1, so older firmware reads it):
 *           4   u32    provenance length (1..16384)
 *           n          provenance: UTF-8 text without NUL (JSON by convention, see bundle_cli.c)
 *
 * The whole manifest is at most 4 MiB (MANIFEST_MAX_BYTES): 131072 chunk hashes, i.e.
 * 2 TiB of payload at 16 MiB chunks. Every count is checked against the bytes left before
 * anything is read, with 64-bit arithmetic. */
#include "update/manifest.h"

#include "common/errmsg.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

struct reader {
    const uint8_t *p;
    size_t len, off;
};

static int need(struct reader *r, uint64_t n, const char *what, char *err, size_t err_len)
{
    if (n > r->len - r->off)
        return errf(err, err_len, "manifest: %s at byte %zu needs %llu bytes, only %zu left", what, r->off,
                    (unsigned long long)n, r->len - r->off);
    return 0;
}

static uint64_t get_le(struct reader *r, unsigned n)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < n; i++) v |= (uint64_t)r->p[r->off + i] << (8 * i);
    r->off += n;
    return v;
}

static int read_u16(struct reader *r, uint16_t *v, const char *what, char *err, size_t err_len)
{
    if (need(r, 2, what, err, err_len)) return -1;
    *v = (uint16_t)get_le(r, 2);
    return 0;
}

static int read_u32(struct reader *r, uint32_t *v, const char *what, char *err, size_t err_len)
{
    if (need(r, 4, what, err, err_len)) return -1;
    *v = (uint32_t)get_le(r, 4);
    return 0;
}

static int read_u64(struct reader *r, uint64_t *v, const char *what, char *err, size_t err_len)
{
    if (need(r, 8, what, err, err_len)) return -1;
    *v = get_le(r, 8);
    return 0;
}

static bool str_char_ok(char c, const char *extra)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || strchr(extra, c);
}

/* extra: punctuation allowed besides letters and digits (never '/', so names stay inside
 * their slot directory). */
static int check_str(const char *s, size_t n, const char *what, const char *extra, char *err, size_t err_len)
{
    if (n < 1 || n > MANIFEST_MAX_STR)
        return errf(err, err_len, "manifest: %s is %zu bytes, expected 1..%u", what, n, MANIFEST_MAX_STR);
    for (size_t i = 0; i < n; i++)
        if (s[i] == '\0' || !str_char_ok(s[i], extra))
            return errf(err, err_len, "manifest: %s has byte 0x%02x at %zu, allowed are letters, digits and \"%s\"",
                        what, (unsigned char)s[i], i, extra);
    return 0;
}

static int read_str(struct reader *r, char *dst, const char *what, const char *extra, char *err, size_t err_len)
{
    uint16_t n;
    if (read_u16(r, &n, what, err, err_len)) return -1;
    if (need(r, n, what, err, err_len)) return -1;
    if (check_str((const char *)r->p + r->off, n, what, extra, err, err_len)) return -1;
    memcpy(dst, r->p + r->off, n);
    dst[n] = '\0';
    r->off += n;
    return 0;
}

static int read_tokens(struct reader *r, uint32_t *n, int32_t *toks, const char *what, char *err, size_t err_len)
{
    if (read_u32(r, n, what, err, err_len)) return -1;
    if (*n > MANIFEST_MAX_TOKENS)
        return errf(err, err_len, "manifest: %s count %u, at most %u", what, *n, MANIFEST_MAX_TOKENS);
    if (need(r, (uint64_t)*n * 4, what, err, err_len)) return -1;
    for (uint32_t i = 0; i < *n; i++) {
        toks[i] = (int32_t)(uint32_t)get_le(r, 4);
        if (toks[i] < 0) return errf(err, err_len, "manifest: %s[%u] = %d, token ids are >= 0", what, i, toks[i]);
    }
    return 0;
}

static uint64_t chunks_for(uint64_t size, uint32_t chunk_size)
{
    return size / chunk_size + (size % chunk_size != 0);
}

static int check_payload_shape(const struct manifest_payload *p, char *err, size_t err_len)
{
    if (p->chunk_size < MANIFEST_MIN_CHUNK || p->chunk_size > MANIFEST_MAX_CHUNK ||
        (p->chunk_size & (p->chunk_size - 1)))
        return errf(err, err_len, "manifest: payload %s chunk size %u, expected a power of two in [%u, %u]",
                    p->name, p->chunk_size, MANIFEST_MIN_CHUNK, MANIFEST_MAX_CHUNK);
    uint64_t want = chunks_for(p->size, p->chunk_size);
    if (p->n_chunks != want)
        return errf(err, err_len, "manifest: payload %s has %llu chunk hashes, size %llu at chunk %u needs %llu",
                    p->name, (unsigned long long)p->n_chunks, (unsigned long long)p->size, p->chunk_size,
                    (unsigned long long)want);
    return 0;
}

static int check_names_unique(const struct manifest *m, char *err, size_t err_len)
{
    for (uint32_t i = 0; i < m->n_payloads; i++) {
        if (m->payloads[i].name[0] == '.')
            return errf(err, err_len, "manifest: payload name \"%s\" starts with '.'", m->payloads[i].name);
        for (uint32_t j = 0; j < i; j++)
            if (!strcmp(m->payloads[i].name, m->payloads[j].name))
                return errf(err, err_len, "manifest: payload name \"%s\" appears twice", m->payloads[i].name);
    }
    return 0;
}

/* Well-formed UTF-8 (no overlongs, surrogates or code points past U+10FFFF) and no NUL. */
static bool utf8_ok(const uint8_t *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        uint8_t c = s[i];
        size_t k = c < 0x80 ? 0 : (c & 0xe0) == 0xc0 ? 1 : (c & 0xf0) == 0xe0 ? 2 : (c & 0xf8) == 0xf0 ? 3 : 4;
        if (c == 0 || k == 4 || k >= n - i) return false; /* NUL, a bad lead byte, or cut short */
        uint32_t cp = k == 0 ? c : k == 1 ? (c & 0x1fu) : k == 2 ? (c & 0x0fu) : (c & 0x07u);
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xc0) != 0x80) return false;
            cp = (cp << 6) | (s[i + j] & 0x3fu);
        }
        if ((k == 1 && cp < 0x80) || (k == 2 && cp < 0x800) || (k == 3 && (cp < 0x10000 || cp > 0x10ffff)) ||
            (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += k + 1;
    }
    return true;
}

static int check_provenance(const char *p, uint32_t n, char *err, size_t err_len)
{
    if (n < 1 || n > MANIFEST_MAX_PROVENANCE)
        return errf(err, err_len, "manifest: provenance is %u bytes, expected 1..%u", n, MANIFEST_MAX_PROVENANCE);
    if (!utf8_ok((const uint8_t *)p, n)) return errf(err, err_len, "manifest: provenance is not UTF-8 text without NUL");
    return 0;
}

#define NAME_EXTRA "._-"
#define VERSION_EXTRA "._+-"

int manifest_parse(struct manifest *m, const uint8_t *buf, size_t len, char *err, size_t err_len)
{
    memset(m, 0, sizeof *m);
    if (len > MANIFEST_MAX_BYTES)
        return errf(err, err_len, "manifest: %zu bytes, the cap is %u", len, MANIFEST_MAX_BYTES);
    struct reader r = { buf, len, 0 };
    if (need(&r, 8, "magic", err, err_len)) return -1;
    if (memcmp(buf, MANIFEST_MAGIC, 8)) return errf(err, err_len, "manifest: bad magic, expected \"%s\"", MANIFEST_MAGIC);
    r.off = 8;
    if (read_u32(&r, &m->format_version, "format version", err, err_len)) return -1;
    if (m->format_version != MANIFEST_FORMAT_VERSION && m->format_version != MANIFEST_FORMAT_PROVENANCE)
        return errf(err, err_len, "manifest: unknown format version %u, this firmware reads versions %u and %u",
                    m->format_version, MANIFEST_FORMAT_VERSION, MANIFEST_FORMAT_PROVENANCE);
    if (read_str(&r, m->product, "product", NAME_EXTRA, err, err_len)) return -1;
    if (read_str(&r, m->version, "version", VERSION_EXTRA, err, err_len)) return -1;
    if (read_u64(&r, &m->epoch, "epoch", err, err_len)) return -1;
    if (read_u64(&r, &m->created, "creation time", err, err_len)) return -1;
    if (read_tokens(&r, &m->n_prompt, m->prompt, "prompt tokens", err, err_len)) return -1;
    if (read_tokens(&r, &m->n_expected, m->expected, "expected tokens", err, err_len)) return -1;
    if (read_u32(&r, &m->n_keys, "key count", err, err_len)) return -1;
    if (m->n_keys > MANIFEST_MAX_KEYS)
        return errf(err, err_len, "manifest: %u trusted keys, at most %u", m->n_keys, MANIFEST_MAX_KEYS);
    if (need(&r, (uint64_t)m->n_keys * MANIFEST_KEY_LEN, "trusted keys", err, err_len)) return -1;
    for (uint32_t i = 0; i < m->n_keys; i++) {
        memcpy(m->keys[i], buf + r.off, MANIFEST_KEY_LEN);
        r.off += MANIFEST_KEY_LEN;
    }
    if (read_u32(&r, &m->n_payloads, "payload count", err, err_len)) return -1;
    if (m->n_payloads < 1 || m->n_payloads > MANIFEST_MAX_PAYLOADS)
        return errf(err, err_len, "manifest: %u payloads, expected 1..%u", m->n_payloads, MANIFEST_MAX_PAYLOADS);
    for (uint32_t i = 0; i < m->n_payloads; i++) {
        struct manifest_payload *p = &m->payloads[i];
        if (read_str(&r, p->name, "payload name", NAME_EXTRA, err, err_len)) return -1;
        if (read_u64(&r, &p->size, "payload size", err, err_len)) return -1;
        if (read_u32(&r, &p->chunk_size, "chunk size", err, err_len)) return -1;
        if (read_u64(&r, &p->n_chunks, "chunk count", err, err_len)) return -1;
        if (check_payload_shape(p, err, err_len)) return -1;
        /* n_chunks <= size / 4096 + 1 < 2^52, so the product cannot overflow. */
        if (need(&r, p->n_chunks * MANIFEST_HASH_LEN, "chunk hashes", err, err_len)) return -1;
        p->chunk_hashes = buf + r.off;
        r.off += (size_t)(p->n_chunks * MANIFEST_HASH_LEN);
    }
    if (check_names_unique(m, err, err_len)) return -1;
    if (m->format_version == MANIFEST_FORMAT_PROVENANCE) {
        if (read_u32(&r, &m->provenance_len, "provenance length", err, err_len)) return -1;
        if (m->provenance_len > MANIFEST_MAX_PROVENANCE)
            return errf(err, err_len, "manifest: provenance is %u bytes, at most %u", m->provenance_len, MANIFEST_MAX_PROVENANCE);
        if (need(&r, m->provenance_len, "provenance", err, err_len)) return -1;
        m->provenance = (const char *)buf + r.off;
        if (check_provenance(m->provenance, m->provenance_len, err, err_len)) return -1;
        r.off += m->provenance_len;
    }
    if (r.off != len)
        return errf(err, err_len, "manifest: %zu trailing bytes after the last payload (at byte %zu)", len - r.off,
                    r.off);
    return 0;
}

struct writer {
    uint8_t *p;
    size_t off;
};

static void put_le(struct writer *w, uint64_t v, unsigned n)
{
    for (unsigned i = 0; i < n; i++) w->p[w->off++] = (uint8_t)(v >> (8 * i));
}

static void put_bytes(struct writer *w, const void *src, size_t n)
{
    memcpy(w->p + w->off, src, n);
    w->off += n;
}

static void put_str(struct writer *w, const char *s)
{
    size_t n = strlen(s);
    put_le(w, n, 2);
    put_bytes(w, s, n);
}

int manifest_encode(const struct manifest *m, uint8_t **out, size_t *out_len, char *err, size_t err_len)
{
    *out = NULL;
    *out_len = 0;
    if (check_str(m->product, strlen(m->product), "product", NAME_EXTRA, err, err_len)) return -1;
    if (check_str(m->version, strlen(m->version), "version", VERSION_EXTRA, err, err_len)) return -1;
    if (m->n_prompt > MANIFEST_MAX_TOKENS || m->n_expected > MANIFEST_MAX_TOKENS)
        return errf(err, err_len, "manifest: at most %u prompt and expected tokens", MANIFEST_MAX_TOKENS);
    if (m->n_keys > MANIFEST_MAX_KEYS)
        return errf(err, err_len, "manifest: %u trusted keys, at most %u", m->n_keys, MANIFEST_MAX_KEYS);
    if (m->n_payloads < 1 || m->n_payloads > MANIFEST_MAX_PAYLOADS)
        return errf(err, err_len, "manifest: %u payloads, expected 1..%u", m->n_payloads, MANIFEST_MAX_PAYLOADS);
    uint64_t len = 8 + 4 + 2 + strlen(m->product) + 2 + strlen(m->version) + 8 + 8 + 4 + 4ull * m->n_prompt + 4 +
                   4ull * m->n_expected + 4 + (uint64_t)MANIFEST_KEY_LEN * m->n_keys + 4;
    for (uint32_t i = 0; i < m->n_payloads; i++) {
        const struct manifest_payload *p = &m->payloads[i];
        if (check_str(p->name, strlen(p->name), "payload name", NAME_EXTRA, err, err_len)) return -1;
        if (check_payload_shape(p, err, err_len)) return -1;
        len += 2 + strlen(p->name) + 8 + 4 + 8 + p->n_chunks * MANIFEST_HASH_LEN;
        if (len > MANIFEST_MAX_BYTES)
            return errf(err, err_len, "manifest: would be over %u bytes at payload %s (use a larger chunk size)",
                        MANIFEST_MAX_BYTES, p->name);
    }
    if (check_names_unique(m, err, err_len)) return -1;
    if (m->provenance && check_provenance(m->provenance, m->provenance_len, err, err_len)) return -1;
    if (m->provenance) len += 4 + m->provenance_len;
    for (uint32_t i = 0; i < m->n_prompt; i++)
        if (m->prompt[i] < 0) return errf(err, err_len, "manifest: prompt token %u is negative", i);
    for (uint32_t i = 0; i < m->n_expected; i++)
        if (m->expected[i] < 0) return errf(err, err_len, "manifest: expected token %u is negative", i);
    struct writer w = { malloc(len), 0 };
    if (!w.p) return errf(err, err_len, "manifest: out of memory for %llu bytes", (unsigned long long)len);
    put_bytes(&w, MANIFEST_MAGIC, 8);
    put_le(&w, m->provenance ? MANIFEST_FORMAT_PROVENANCE : MANIFEST_FORMAT_VERSION, 4);
    put_str(&w, m->product);
    put_str(&w, m->version);
    put_le(&w, m->epoch, 8);
    put_le(&w, m->created, 8);
    put_le(&w, m->n_prompt, 4);
    for (uint32_t i = 0; i < m->n_prompt; i++) put_le(&w, (uint32_t)m->prompt[i], 4);
    put_le(&w, m->n_expected, 4);
    for (uint32_t i = 0; i < m->n_expected; i++) put_le(&w, (uint32_t)m->expected[i], 4);
    put_le(&w, m->n_keys, 4);
    for (uint32_t i = 0; i < m->n_keys; i++) put_bytes(&w, m->keys[i], MANIFEST_KEY_LEN);
    put_le(&w, m->n_payloads, 4);
    for (uint32_t i = 0; i < m->n_payloads; i++) {
        const struct manifest_payload *p = &m->payloads[i];
        put_str(&w, p->name);
        put_le(&w, p->size, 8);
        put_le(&w, p->chunk_size, 4);
        put_le(&w, p->n_chunks, 8);
        if (p->n_chunks) put_bytes(&w, p->chunk_hashes, (size_t)(p->n_chunks * MANIFEST_HASH_LEN));
    }
    if (m->provenance) {
        put_le(&w, m->provenance_len, 4);
        put_bytes(&w, m->provenance, m->provenance_len);
    }
    *out = w.p;
    *out_len = w.off;
    return 0;
}

const struct manifest_payload *manifest_find_payload(const struct manifest *m, const char *name)
{
    for (uint32_t i = 0; i < m->n_payloads; i++)
        if (!strcmp(m->payloads[i].name, name)) return &m->payloads[i];
    return NULL;
}
