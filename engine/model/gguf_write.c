/* GGUF v3 writer: metadata and tensor infos collected in memory, then written to
 * `path.tmp`, tensor data streamed in registration order, fsync, rename onto `path`.
 * Nothing ever appears under the final name unless the whole file was written. */
#include "engine/model/gguf.h"
#include "common/errmsg.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct wkv {
    char *key;
    enum gguf_val type;
    enum gguf_val arr_type;
    uint64_t count;    /* array elements */
    uint8_t *bytes;    /* serialized value (after key and type) */
    uint64_t nbytes;
};

struct wtensor {
    char *name;
    enum gguf_type type;
    uint32_t n_dims;
    uint64_t ne[GGUF_MAX_DIMS];
    uint64_t nbytes;
    uint64_t offset;
    const void *data;
};

struct gguf_writer {
    struct wkv *kv;
    size_t n_kv, cap_kv;
    struct wtensor *t;
    size_t n_t, cap_t;
    uint32_t alignment;
    bool broken;        /* an add failed: refuse to write */
    /* streaming */
    int fd;
    char *path, *tmp_path;
    size_t next_tensor;
    uint64_t part_done; /* bytes of tensor next_tensor already streamed in parts */
    uint64_t pos;       /* bytes written so far */
};

struct gguf_writer *gguf_writer_create(void)
{
    struct gguf_writer *w = calloc(1, sizeof *w);
    if (w) {
        w->alignment = GGUF_DEFAULT_ALIGNMENT;
        w->fd = -1;
    }
    return w;
}

void gguf_writer_destroy(struct gguf_writer *w)
{
    if (!w) return;
    if (w->fd >= 0) gguf_writer_finish(w, false, NULL, 0);
    for (size_t i = 0; i < w->n_kv; i++) {
        free(w->kv[i].key);
        free(w->kv[i].bytes);
    }
    for (size_t i = 0; i < w->n_t; i++) free(w->t[i].name);
    free(w->kv);
    free(w->t);
    free(w->path);
    free(w->tmp_path);
    free(w);
}

static int add_kv(struct gguf_writer *w, const char *key, enum gguf_val type, enum gguf_val arr_type,
                  uint64_t count, const void *bytes, uint64_t nbytes)
{
    for (size_t i = 0; i < w->n_kv; i++)
        if (strcmp(w->kv[i].key, key) == 0) goto broken;
    if (w->n_kv == w->cap_kv) {
        size_t cap = w->cap_kv ? 2 * w->cap_kv : 32;
        struct wkv *n = realloc(w->kv, cap * sizeof *n);
        if (!n) goto broken;
        w->kv = n;
        w->cap_kv = cap;
    }
    struct wkv *kv = &w->kv[w->n_kv];
    kv->key = strdup(key);
    kv->bytes = malloc(nbytes ? nbytes : 1);
    if (!kv->key || !kv->bytes) {
        free(kv->key);
        free(kv->bytes);
        goto broken;
    }
    memcpy(kv->bytes, bytes, nbytes);
    kv->nbytes = nbytes;
    kv->type = type;
    kv->arr_type = arr_type;
    kv->count = count;
    w->n_kv++;
    if (strcmp(key, "general.alignment") == 0 && type == GGUF_VAL_UINT32) memcpy(&w->alignment, bytes, 4);
    return 0;
broken:
    w->broken = true;
    return -1;
}

int gguf_writer_add_u32(struct gguf_writer *w, const char *key, uint32_t v)
{
    if (strcmp(key, "general.alignment") == 0 && (v == 0 || (v & (v - 1)))) return w->broken = true, -1;
    return add_kv(w, key, GGUF_VAL_UINT32, 0, 0, &v, 4);
}
int gguf_writer_add_i32(struct gguf_writer *w, const char *key, int32_t v) { return add_kv(w, key, GGUF_VAL_INT32, 0, 0, &v, 4); }
int gguf_writer_add_f32(struct gguf_writer *w, const char *key, float v) { return add_kv(w, key, GGUF_VAL_FLOAT32, 0, 0, &v, 4); }

int gguf_writer_add_bool(struct gguf_writer *w, const char *key, bool v)
{
    uint8_t b = v ? 1 : 0;
    return add_kv(w, key, GGUF_VAL_BOOL, 0, 0, &b, 1);
}

int gguf_writer_add_str(struct gguf_writer *w, const char *key, const char *v)
{
    uint64_t len = strlen(v);
    uint8_t *buf = malloc(8 + len);
    if (!buf) return w->broken = true, -1;
    memcpy(buf, &len, 8);
    memcpy(buf + 8, v, len);
    int rc = add_kv(w, key, GGUF_VAL_STRING, 0, 0, buf, 8 + len);
    free(buf);
    return rc;
}

int gguf_writer_add_arr(struct gguf_writer *w, const char *key, enum gguf_val elem_type,
                        const void *elems, uint64_t count)
{
    uint64_t es = gguf_val_size(elem_type);
    if (!es || count > (UINT64_MAX - 12) / es) return w->broken = true, -1;
    return add_kv(w, key, GGUF_VAL_ARRAY, elem_type, count, elems, es * count);
}

int gguf_writer_add_arr_str(struct gguf_writer *w, const char *key, const char *const *strs, uint64_t count)
{
    uint64_t total = 0;
    for (uint64_t i = 0; i < count; i++) total += 8 + strlen(strs[i]);
    uint8_t *buf = malloc(total ? total : 1), *p = buf;
    if (!buf) return w->broken = true, -1;
    for (uint64_t i = 0; i < count; i++) {
        uint64_t len = strlen(strs[i]);
        memcpy(p, &len, 8);
        memcpy(p + 8, strs[i], len);
        p += 8 + len;
    }
    int rc = add_kv(w, key, GGUF_VAL_ARRAY, GGUF_VAL_STRING, count, buf, total);
    free(buf);
    return rc;
}

int gguf_writer_copy_kv(struct gguf_writer *w, const struct gguf_kv *kv)
{
    if (kv->type == GGUF_VAL_STRING) {
        uint8_t *buf = malloc(8 + kv->v.str.len);
        if (!buf) return w->broken = true, -1;
        memcpy(buf, &kv->v.str.len, 8);
        memcpy(buf + 8, kv->v.str.ptr, kv->v.str.len);
        int rc = add_kv(w, kv->key, GGUF_VAL_STRING, 0, 0, buf, 8 + kv->v.str.len);
        free(buf);
        return rc;
    }
    if (kv->type == GGUF_VAL_ARRAY && kv->arr_strs) {
        uint64_t total = 0;
        for (uint64_t i = 0; i < kv->arr_count; i++) total += 8 + kv->arr_strs[i].len;
        uint8_t *buf = malloc(total ? total : 1), *p = buf;
        if (!buf) return w->broken = true, -1;
        for (uint64_t i = 0; i < kv->arr_count; i++) {
            memcpy(p, &kv->arr_strs[i].len, 8);
            memcpy(p + 8, kv->arr_strs[i].ptr, kv->arr_strs[i].len);
            p += 8 + kv->arr_strs[i].len;
        }
        int rc = add_kv(w, kv->key, GGUF_VAL_ARRAY, GGUF_VAL_STRING, kv->arr_count, buf, total);
        free(buf);
        return rc;
    }
    if (kv->type == GGUF_VAL_ARRAY) return gguf_writer_add_arr(w, kv->key, kv->arr_type, kv->arr_data, kv->arr_count);
    /* scalars: the reader widened them; narrow back to the stored width (little-endian) */
    uint8_t b[8];
    const uint64_t es = gguf_val_size(kv->type);
    if (!es) return w->broken = true, -1;
    if (kv->type == GGUF_VAL_FLOAT32) {
        float f = (float)kv->v.f64;
        memcpy(b, &f, 4);
    } else if (kv->type == GGUF_VAL_FLOAT64) {
        memcpy(b, &kv->v.f64, 8);
    } else if (kv->type == GGUF_VAL_INT8 || kv->type == GGUF_VAL_INT16 || kv->type == GGUF_VAL_INT32 ||
               kv->type == GGUF_VAL_INT64) {
        memcpy(b, &kv->v.i64, 8);
    } else {
        memcpy(b, &kv->v.u64, 8);
    }
    return add_kv(w, kv->key, kv->type, 0, 0, b, es);
}

int gguf_writer_add_tensor(struct gguf_writer *w, const char *name, enum gguf_type type,
                           uint32_t n_dims, const uint64_t *ne, const void *data)
{
    if (n_dims < 1 || n_dims > GGUF_MAX_DIMS || !gguf_type_known(type)) goto broken;
    for (size_t i = 0; i < w->n_t; i++)
        if (strcmp(w->t[i].name, name) == 0) goto broken;
    if (w->n_t == w->cap_t) {
        size_t cap = w->cap_t ? 2 * w->cap_t : 64;
        struct wtensor *n = realloc(w->t, cap * sizeof *n);
        if (!n) goto broken;
        w->t = n;
        w->cap_t = cap;
    }
    struct wtensor *t = &w->t[w->n_t];
    memset(t, 0, sizeof *t);
    uint64_t n = 1;
    for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++) {
        t->ne[d] = d < n_dims ? ne[d] : 1;
        if (t->ne[d] == 0 || t->ne[d] > UINT64_MAX / n) goto broken;
        n *= t->ne[d];
    }
    if (ne[0] % gguf_type_block_elems(type) || gguf_type_nbytes(type, n, &t->nbytes)) goto broken;
    t->name = strdup(name);
    if (!t->name) goto broken;
    t->type = type;
    t->n_dims = n_dims;
    t->data = data;
    w->n_t++;
    return 0;
broken:
    w->broken = true;
    return -1;
}

static int write_all(struct gguf_writer *w, const void *buf, uint64_t n, char *err, size_t err_len)
{
    const uint8_t *p = buf;
    while (n) {
        size_t chunk = n > (1u << 30) ? (1u << 30) : (size_t)n;
        ssize_t k = write(w->fd, p, chunk);
        if (k < 0) {
            if (errno == EINTR) continue;
            return errf(err, err_len, "%s: write: %s", w->tmp_path, strerror(errno));
        }
        p += k;
        n -= (uint64_t)k;
        w->pos += (uint64_t)k;
    }
    return 0;
}

static int write_pad(struct gguf_writer *w, char *err, size_t err_len)
{
    static const uint8_t zeros[64];
    uint64_t pad = (w->alignment - w->pos % w->alignment) % w->alignment;
    while (pad) {
        uint64_t k = pad > sizeof zeros ? sizeof zeros : pad;
        if (write_all(w, zeros, k, err, err_len)) return -1;
        pad -= k;
    }
    return 0;
}

static uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

int gguf_writer_begin(struct gguf_writer *w, const char *path, char *err, size_t err_len)
{
    if (w->broken) return errf(err, err_len, "%s: a metadata key or tensor was invalid or repeated", path);
    if (w->fd >= 0) return errf(err, err_len, "%s: writer already streaming", path);
    free(w->path);
    free(w->tmp_path);
    w->path = strdup(path);
    w->tmp_path = malloc(strlen(path) + 5);
    if (!w->path || !w->tmp_path) return errf(err, err_len, "out of memory");
    sprintf(w->tmp_path, "%s.tmp", path);
    w->fd = open(w->tmp_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (w->fd < 0) return errf(err, err_len, "%s: %s", w->tmp_path, strerror(errno));
    w->pos = 0;
    w->next_tensor = 0;
    w->part_done = 0;
    uint64_t off = 0;
    for (size_t i = 0; i < w->n_t; i++) {
        w->t[i].offset = off;
        off = align_up(off + w->t[i].nbytes, w->alignment);
    }
    uint32_t head[2] = { 0x46554747u, 3 };
    uint64_t counts[2] = { w->n_t, w->n_kv };
    if (write_all(w, head, 8, err, err_len) || write_all(w, counts, 16, err, err_len)) goto fail;
    for (size_t i = 0; i < w->n_kv; i++) {
        const struct wkv *kv = &w->kv[i];
        uint64_t klen = strlen(kv->key);
        uint32_t type = kv->type;
        if (write_all(w, &klen, 8, err, err_len) || write_all(w, kv->key, klen, err, err_len) ||
            write_all(w, &type, 4, err, err_len))
            goto fail;
        if (kv->type == GGUF_VAL_ARRAY) {
            uint32_t at = kv->arr_type;
            if (write_all(w, &at, 4, err, err_len) || write_all(w, &kv->count, 8, err, err_len)) goto fail;
        }
        if (write_all(w, kv->bytes, kv->nbytes, err, err_len)) goto fail;
    }
    for (size_t i = 0; i < w->n_t; i++) {
        const struct wtensor *t = &w->t[i];
        uint64_t nlen = strlen(t->name);
        uint32_t type = t->type;
        if (write_all(w, &nlen, 8, err, err_len) || write_all(w, t->name, nlen, err, err_len) ||
            write_all(w, &t->n_dims, 4, err, err_len) ||
            write_all(w, t->ne, 8ull * t->n_dims, err, err_len) || write_all(w, &type, 4, err, err_len) ||
            write_all(w, &t->offset, 8, err, err_len))
            goto fail;
    }
    if (write_pad(w, err, err_len)) goto fail;
    return 0;
fail:
    gguf_writer_finish(w, false, NULL, 0);
    return -1;
}

int gguf_writer_stream_tensor(struct gguf_writer *w, const void *data, uint64_t nbytes, char *err, size_t err_len)
{
    if (w->fd < 0) return errf(err, err_len, "gguf writer: not streaming");
    if (w->next_tensor >= w->n_t)
        return errf(err, err_len, "%s: more tensors streamed than registered (%zu)", w->tmp_path, w->n_t);
    const struct wtensor *t = &w->t[w->next_tensor];
    if (w->part_done)
        return errf(err, err_len, "%s: already partly streamed with gguf_writer_stream_part", t->name);
    if (nbytes != t->nbytes)
        return errf(err, err_len, "%s: %" PRIu64 " bytes streamed, expected %" PRIu64, t->name, nbytes, t->nbytes);
    if (write_all(w, data, nbytes, err, err_len) || write_pad(w, err, err_len)) return -1;
    w->next_tensor++;
    return 0;
}

int gguf_writer_stream_part(struct gguf_writer *w, const void *data, uint64_t nbytes, char *err, size_t err_len)
{
    if (w->fd < 0) return errf(err, err_len, "gguf writer: not streaming");
    if (w->next_tensor >= w->n_t)
        return errf(err, err_len, "%s: more tensors streamed than registered (%zu)", w->tmp_path, w->n_t);
    const struct wtensor *t = &w->t[w->next_tensor];
    if (nbytes > t->nbytes - w->part_done)
        return errf(err, err_len, "%s: part of %" PRIu64 " bytes at byte %" PRIu64 " runs past the tensor's %" PRIu64,
                    t->name, nbytes, w->part_done, t->nbytes);
    if (write_all(w, data, nbytes, err, err_len)) return -1;
    w->part_done += nbytes;
    if (w->part_done == t->nbytes) {
        if (write_pad(w, err, err_len)) return -1;
        w->part_done = 0;
        w->next_tensor++;
    }
    return 0;
}

static int fsync_dir_of(const char *path)
{
    char *copy = strdup(path);
    if (!copy) return -1;
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    free(copy);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

int gguf_writer_finish(struct gguf_writer *w, bool commit, char *err, size_t err_len)
{
    if (w->fd < 0) return errf(err, err_len, "gguf writer: not streaming");
    int rc = 0;
    if (commit && w->next_tensor != w->n_t)
        rc = errf(err, err_len, "%s: %zu of %zu tensors written", w->tmp_path, w->next_tensor, w->n_t);
    if (!rc && commit && fsync(w->fd) != 0) rc = errf(err, err_len, "%s: fsync: %s", w->tmp_path, strerror(errno));
    if (close(w->fd) != 0 && !rc && commit) rc = errf(err, err_len, "%s: close: %s", w->tmp_path, strerror(errno));
    w->fd = -1;
    if (!rc && commit) {
        if (rename(w->tmp_path, w->path) != 0)
            rc = errf(err, err_len, "rename %s -> %s: %s", w->tmp_path, w->path, strerror(errno));
        else
            fsync_dir_of(w->path);
    }
    if (rc || !commit) unlink(w->tmp_path);
    return rc;
}

int gguf_writer_write_file(struct gguf_writer *w, const char *path, char *err, size_t err_len)
{
    for (size_t i = 0; i < w->n_t; i++)
        if (!w->t[i].data) return errf(err, err_len, "%s: tensor has no data", w->t[i].name);
    if (gguf_writer_begin(w, path, err, err_len)) return -1;
    for (size_t i = 0; i < w->n_t; i++) {
        if (gguf_writer_stream_tensor(w, w->t[i].data, w->t[i].nbytes, err, err_len)) {
            gguf_writer_finish(w, false, NULL, 0);
            return -1;
        }
    }
    return gguf_writer_finish(w, true, err, err_len);
}
