/* GGUF reader (mmap, bounds-checked) and writer. See gguf.h. */
#include "engine/model/gguf.h"
#include "common/safe_open.h"
#include "common/errmsg.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define GGUF_MAGIC 0x46554747u /* "GGUF" little-endian */
/* Caps that no real model reaches but that keep a hostile header from asking for huge
 * allocations before the file size check would catch it. */
#define GGUF_MAX_KEY_LEN 65535u
#define GGUF_MAX_NAME_LEN 4096u

/* ---- type facts ---- */

uint32_t gguf_type_block_elems(enum gguf_type type)
{
    switch (type) {
    case GGUF_TYPE_F32: case GGUF_TYPE_F16: case GGUF_TYPE_BF16: case GGUF_TYPE_I32: return 1;
    case GGUF_TYPE_Q8_0: case GGUF_TYPE_MXFP4: case GGUF_TYPE_IQ4_NL: return 32;
    case GGUF_TYPE_Q2_K: case GGUF_TYPE_Q3_K: case GGUF_TYPE_Q4_K: case GGUF_TYPE_Q5_K: case GGUF_TYPE_Q6_K:
    case GGUF_TYPE_IQ2_XXS: case GGUF_TYPE_IQ2_XS: case GGUF_TYPE_IQ2_S: case GGUF_TYPE_IQ3_XXS:
    case GGUF_TYPE_IQ1_S: case GGUF_TYPE_IQ1_M: case GGUF_TYPE_IQ4_XS: return 256; /* super-blocks */
    }
    return 0;
}

uint32_t gguf_type_block_bytes(enum gguf_type type)
{
    switch (type) {
    case GGUF_TYPE_F32: case GGUF_TYPE_I32: return 4;
    case GGUF_TYPE_F16: case GGUF_TYPE_BF16: return 2;
    case GGUF_TYPE_Q8_0: return 34;  /* f16 scale + 32 x int8 */
    case GGUF_TYPE_MXFP4: return 17; /* e8m0 scale + 16 bytes of nibbles */
    /* block layouts: engine/model/quant.h */
    case GGUF_TYPE_Q2_K: return 84;
    case GGUF_TYPE_Q3_K: return 110;
    case GGUF_TYPE_Q4_K: return 144;
    case GGUF_TYPE_Q5_K: return 176;
    case GGUF_TYPE_Q6_K: return 210;
    case GGUF_TYPE_IQ2_XXS: return 66;
    case GGUF_TYPE_IQ2_XS: return 74;
    case GGUF_TYPE_IQ2_S: return 82;
    case GGUF_TYPE_IQ3_XXS: return 98;
    case GGUF_TYPE_IQ1_S: return 50;
    case GGUF_TYPE_IQ1_M: return 56;
    case GGUF_TYPE_IQ4_NL: return 18;
    case GGUF_TYPE_IQ4_XS: return 136;
    }
    return 0;
}

const char *gguf_type_name(enum gguf_type type)
{
    switch (type) {
    case GGUF_TYPE_F32: return "F32";
    case GGUF_TYPE_F16: return "F16";
    case GGUF_TYPE_BF16: return "BF16";
    case GGUF_TYPE_Q8_0: return "Q8_0";
    case GGUF_TYPE_MXFP4: return "MXFP4";
    case GGUF_TYPE_I32: return "I32";
    case GGUF_TYPE_Q2_K: return "Q2_K";
    case GGUF_TYPE_Q3_K: return "Q3_K";
    case GGUF_TYPE_Q4_K: return "Q4_K";
    case GGUF_TYPE_Q5_K: return "Q5_K";
    case GGUF_TYPE_Q6_K: return "Q6_K";
    case GGUF_TYPE_IQ2_XXS: return "IQ2_XXS";
    case GGUF_TYPE_IQ2_XS: return "IQ2_XS";
    case GGUF_TYPE_IQ2_S: return "IQ2_S";
    case GGUF_TYPE_IQ3_XXS: return "IQ3_XXS";
    case GGUF_TYPE_IQ1_S: return "IQ1_S";
    case GGUF_TYPE_IQ1_M: return "IQ1_M";
    case GGUF_TYPE_IQ4_NL: return "IQ4_NL";
    case GGUF_TYPE_IQ4_XS: return "IQ4_XS";
    }
    return "unknown";
}

int gguf_type_from_name(const char *name)
{
    for (uint32_t t = 0; t < 64; t++)
        if (gguf_type_known(t) && !strcasecmp(name, gguf_type_name((enum gguf_type)t))) return (int)t;
    return -1;
}

/* ggml's names for the types the reader refuses, so the message says what the file holds. */
static const char *unsupported_type_label(uint32_t type)
{
    switch (type) {
    case 2: return " (Q4_0)"; case 3: return " (Q4_1)"; case 6: return " (Q5_0)"; case 7: return " (Q5_1)";
    case 9: return " (Q8_1)"; case 15: return " (Q8_K)"; case 21: return " (IQ3_S)"; case 24: return " (I8)";
    case 25: return " (I16)"; case 27: return " (I64)"; case 28: return " (F64)"; case 34: return " (TQ1_0)";
    case 35: return " (TQ2_0)"; case 40: return " (NVFP4)";
    }
    return "";
}

bool gguf_type_known(uint32_t type) { return gguf_type_block_elems((enum gguf_type)type) != 0; }

int gguf_type_nbytes(enum gguf_type type, uint64_t n, uint64_t *nbytes)
{
    uint32_t be = gguf_type_block_elems(type), bb = gguf_type_block_bytes(type);
    if (!be || n % be) return -1;
    uint64_t blocks = n / be;
    if (blocks > UINT64_MAX / bb) return -1;
    *nbytes = blocks * bb;
    return 0;
}

/* ---- reader ---- */

struct cursor {
    const uint8_t *base;
    uint64_t size;
    uint64_t pos;
    char *err;
    size_t err_len;
};

static int need(struct cursor *c, uint64_t n, const char *what)
{
    if (n > c->size - c->pos)
        return errf(c->err, c->err_len, "truncated at byte %" PRIu64 ": %s needs %" PRIu64
                    " bytes, %" PRIu64 " left", c->pos, what, n, c->size - c->pos);
    return 0;
}

static int rd_u32(struct cursor *c, uint32_t *v, const char *what)
{
    if (need(c, 4, what)) return -1;
    memcpy(v, c->base + c->pos, 4);
    c->pos += 4;
    return 0;
}

static int rd_u64(struct cursor *c, uint64_t *v, const char *what)
{
    if (need(c, 8, what)) return -1;
    memcpy(v, c->base + c->pos, 8);
    c->pos += 8;
    return 0;
}

static int rd_str(struct cursor *c, struct gguf_str *s, const char *what)
{
    uint64_t len;
    if (rd_u64(c, &len, what)) return -1;
    if (need(c, len, what)) return -1;
    s->ptr = (const char *)c->base + c->pos;
    s->len = len;
    c->pos += len;
    return 0;
}

static char *str_dup(const struct gguf_str *s)
{
    char *p = malloc(s->len + 1);
    if (!p) return NULL;
    memcpy(p, s->ptr, s->len);
    p[s->len] = 0;
    return p;
}

uint64_t gguf_val_size(enum gguf_val t)
{
    switch (t) {
    case GGUF_VAL_UINT8: case GGUF_VAL_INT8: case GGUF_VAL_BOOL: return 1;
    case GGUF_VAL_UINT16: case GGUF_VAL_INT16: return 2;
    case GGUF_VAL_UINT32: case GGUF_VAL_INT32: case GGUF_VAL_FLOAT32: return 4;
    case GGUF_VAL_UINT64: case GGUF_VAL_INT64: case GGUF_VAL_FLOAT64: return 8;
    default: return 0;
    }
}

/* Reads one scalar of type t at p into kv's union. */
static void load_scalar(struct gguf_kv *kv, enum gguf_val t, const uint8_t *p)
{
    switch (t) {
    case GGUF_VAL_UINT8: case GGUF_VAL_BOOL: kv->v.u64 = p[0]; break;
    case GGUF_VAL_INT8: kv->v.i64 = (int8_t)p[0]; break;
    case GGUF_VAL_UINT16: { uint16_t x; memcpy(&x, p, 2); kv->v.u64 = x; break; }
    case GGUF_VAL_INT16: { int16_t x; memcpy(&x, p, 2); kv->v.i64 = x; break; }
    case GGUF_VAL_UINT32: { uint32_t x; memcpy(&x, p, 4); kv->v.u64 = x; break; }
    case GGUF_VAL_INT32: { int32_t x; memcpy(&x, p, 4); kv->v.i64 = x; break; }
    case GGUF_VAL_FLOAT32: { float x; memcpy(&x, p, 4); kv->v.f64 = x; break; }
    case GGUF_VAL_UINT64: { uint64_t x; memcpy(&x, p, 8); kv->v.u64 = x; break; }
    case GGUF_VAL_INT64: { int64_t x; memcpy(&x, p, 8); kv->v.i64 = x; break; }
    case GGUF_VAL_FLOAT64: { double x; memcpy(&x, p, 8); kv->v.f64 = x; break; }
    default: break;
    }
}

static int read_kv(struct cursor *c, struct gguf_kv *kv, uint64_t index)
{
    struct gguf_str key;
    char what[64];
    snprintf(what, sizeof what, "key %" PRIu64, index);
    if (rd_str(c, &key, what)) return -1;
    if (key.len == 0 || key.len > GGUF_MAX_KEY_LEN)
        return errf(c->err, c->err_len, "key %" PRIu64 ": length %" PRIu64 ", expected 1..%u",
                    index, key.len, GGUF_MAX_KEY_LEN);
    if (memchr(key.ptr, 0, key.len))
        return errf(c->err, c->err_len, "key %" PRIu64 ": contains a NUL byte", index);
    kv->key = str_dup(&key);
    if (!kv->key) return errf(c->err, c->err_len, "out of memory");
    uint32_t t;
    if (rd_u32(c, &t, kv->key)) return -1;
    kv->type = (enum gguf_val)t;
    if (t == GGUF_VAL_STRING) return rd_str(c, &kv->v.str, kv->key);
    if (t == GGUF_VAL_ARRAY) {
        uint32_t et;
        uint64_t n;
        if (rd_u32(c, &et, kv->key) || rd_u64(c, &n, kv->key)) return -1;
        kv->arr_type = (enum gguf_val)et;
        kv->arr_count = n;
        if (et == GGUF_VAL_STRING) {
            /* every string needs at least its 8-byte length: bound n before allocating */
            if (n > (c->size - c->pos) / 8)
                return errf(c->err, c->err_len, "%s: array of %" PRIu64
                            " strings cannot fit in the %" PRIu64 " bytes left",
                            kv->key, n, c->size - c->pos);
            kv->arr_strs = calloc(n ? n : 1, sizeof *kv->arr_strs);
            if (!kv->arr_strs) return errf(c->err, c->err_len, "out of memory");
            for (uint64_t i = 0; i < n; i++)
                if (rd_str(c, &kv->arr_strs[i], kv->key)) return -1;
            return 0;
        }
        uint64_t es = gguf_val_size((enum gguf_val)et);
        if (!es)
            return errf(c->err, c->err_len, "%s: array element type %u is not supported", kv->key, et);
        if (n > (c->size - c->pos) / es)
            return errf(c->err, c->err_len, "%s: array of %" PRIu64 " elements of %" PRIu64
                        " bytes runs past the end of the file", kv->key, n, es);
        kv->arr_data = c->base + c->pos;
        c->pos += n * es;
        return 0;
    }
    uint64_t sz = gguf_val_size(kv->type);
    if (!sz) return errf(c->err, c->err_len, "%s: unknown value type %u", kv->key, t);
    if (need(c, sz, kv->key)) return -1;
    load_scalar(kv, kv->type, c->base + c->pos);
    c->pos += sz;
    return 0;
}

static int read_tensor_info(struct cursor *c, struct gguf_tensor *t, uint64_t index)
{
    struct gguf_str name;
    char what[64];
    snprintf(what, sizeof what, "tensor %" PRIu64 " name", index);
    if (rd_str(c, &name, what)) return -1;
    if (name.len == 0 || name.len > GGUF_MAX_NAME_LEN || memchr(name.ptr, 0, name.len))
        return errf(c->err, c->err_len, "tensor %" PRIu64 ": bad name length %" PRIu64, index, name.len);
    t->name = str_dup(&name);
    if (!t->name) return errf(c->err, c->err_len, "out of memory");
    if (rd_u32(c, &t->n_dims, t->name)) return -1;
    if (t->n_dims < 1 || t->n_dims > GGUF_MAX_DIMS)
        return errf(c->err, c->err_len, "%s: %u dimensions, expected 1..%d", t->name, t->n_dims, GGUF_MAX_DIMS);
    uint64_t n = 1;
    for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++) {
        t->ne[d] = 1;
        if (d < t->n_dims && rd_u64(c, &t->ne[d], t->name)) return -1;
        if (t->ne[d] == 0)
            return errf(c->err, c->err_len, "%s: dimension %u is 0", t->name, d);
        if (t->ne[d] > UINT64_MAX / n)
            return errf(c->err, c->err_len, "%s: element count overflows 64 bits", t->name);
        n *= t->ne[d];
    }
    t->n_elements = n;
    uint32_t type;
    if (rd_u32(c, &type, t->name) || rd_u64(c, &t->offset, t->name)) return -1;
    if (!gguf_type_known(type))
        return errf(c->err, c->err_len, "%s: tensor type %u%s is not supported (F32, F16, BF16, Q8_0, MXFP4, "
                    "I32, Q2_K..Q6_K, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ1_S, IQ1_M, IQ4_NL, IQ4_XS)",
                    t->name, type, unsupported_type_label(type));
    t->type = (enum gguf_type)type;
    if (t->ne[0] % gguf_type_block_elems(t->type))
        return errf(c->err, c->err_len, "%s: row of %" PRIu64 " elements is not a multiple of the %s block (%u)",
                    t->name, t->ne[0], gguf_type_name(t->type), gguf_type_block_elems(t->type));
    if (gguf_type_nbytes(t->type, n, &t->nbytes))
        return errf(c->err, c->err_len, "%s: byte size overflows 64 bits", t->name);
    return 0;
}

static int cmp_tensor_offset(const void *a, const void *b)
{
    const struct gguf_tensor *x = *(const struct gguf_tensor *const *)a;
    const struct gguf_tensor *y = *(const struct gguf_tensor *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

static int check_layout(struct gguf_file *f, char *err, size_t err_len)
{
    uint64_t data_size = f->size - f->data_offset;
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        struct gguf_tensor *t = &f->tensors[i];
        if (t->offset % f->alignment)
            return errf(err, err_len, "%s: data offset %" PRIu64 " is not a multiple of the alignment %u",
                        t->name, t->offset, f->alignment);
        if (t->offset > data_size || t->nbytes > data_size - t->offset)
            return errf(err, err_len, "%s: data [%" PRIu64 ", +%" PRIu64 ") runs past the end of the "
                        "data section (%" PRIu64 " bytes)", t->name, t->offset, t->nbytes, data_size);
        t->data = f->map + f->data_offset + t->offset;
    }
    if (f->n_tensors < 2) return 0;
    const struct gguf_tensor **order = malloc(f->n_tensors * sizeof *order);
    if (!order) return errf(err, err_len, "out of memory");
    for (uint64_t i = 0; i < f->n_tensors; i++) order[i] = &f->tensors[i];
    qsort(order, f->n_tensors, sizeof *order, cmp_tensor_offset);
    int rc = 0;
    for (uint64_t i = 1; i < f->n_tensors && !rc; i++) {
        const struct gguf_tensor *a = order[i - 1], *b = order[i];
        if (a->offset + a->nbytes > b->offset)
            rc = errf(err, err_len, "%s: data overlaps %s ([%" PRIu64 ", +%" PRIu64 ") vs offset %" PRIu64 ")",
                      b->name, a->name, a->offset, a->nbytes, b->offset);
    }
    free(order);
    return rc;
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* names: [n] pointers, sorted in place. */
static int check_unique(const char **names, uint64_t n, const char *what, char *err, size_t err_len)
{
    qsort(names, n, sizeof *names, cmp_name);
    for (uint64_t i = 1; i < n; i++)
        if (strcmp(names[i - 1], names[i]) == 0)
            return errf(err, err_len, "%s: %s appears twice", names[i], what);
    return 0;
}

static int check_unique_names(struct gguf_file *f, char *err, size_t err_len)
{
    /* Sorting keeps this O(n log n) for files with tens of thousands of tensors. */
    uint64_t n = f->n_tensors > f->n_kv ? f->n_tensors : f->n_kv;
    if (n < 2) return 0;
    const char **names = malloc(n * sizeof *names);
    if (!names) return errf(err, err_len, "out of memory");
    for (uint64_t i = 0; i < f->n_kv; i++) names[i] = f->kv[i].key;
    int rc = check_unique(names, f->n_kv, "key", err, err_len);
    for (uint64_t i = 0; i < f->n_tensors && !rc; i++) names[i] = f->tensors[i].name;
    if (!rc) rc = check_unique(names, f->n_tensors, "tensor name", err, err_len);
    free(names);
    return rc;
}

void gguf_close(struct gguf_file *f)
{
    if (!f) return;
    for (uint64_t i = 0; f->kv && i < f->n_kv; i++) {
        free(f->kv[i].key);
        free(f->kv[i].arr_strs);
    }
    free(f->kv);
    for (uint64_t i = 0; f->tensors && i < f->n_tensors; i++) {
        free(f->tensors[i].name);
        free(f->tensors[i].owned);
    }
    free(f->tensors);
    if (f->fd >= 0) {
        munmap((void *)f->map, f->size);
        close(f->fd);
    }
    free(f);
}

int gguf_parse(struct gguf_file **out, const void *buf, uint64_t size, char *err, size_t err_len)
{
    *out = NULL;
    struct gguf_file *f = calloc(1, sizeof *f);
    if (!f) return errf(err, err_len, "out of memory");
    f->fd = -1;
    f->map = buf;
    f->size = size;
    struct cursor c = { buf, size, 0, err, err_len };
    uint32_t magic;
    if (rd_u32(&c, &magic, "magic")) goto fail;
    if (magic != GGUF_MAGIC) {
        errf(err, err_len, "bad magic 0x%08x, expected 0x%08x (\"GGUF\")", magic, GGUF_MAGIC);
        goto fail;
    }
    if (rd_u32(&c, &f->version, "version")) goto fail;
    if (f->version != 2 && f->version != 3) {
        errf(err, err_len, "GGUF version %u, expected 2 or 3", f->version);
        goto fail;
    }
    uint64_t n_tensors, n_kv;
    if (rd_u64(&c, &n_tensors, "tensor count") || rd_u64(&c, &n_kv, "metadata count")) goto fail;
    /* Each key needs >= 13 bytes and each tensor info >= 28: bound counts by the file size
     * before allocating anything proportional to them. */
    if (n_kv > size / 13) {
        errf(err, err_len, "metadata count %" PRIu64 " cannot fit in a %" PRIu64 "-byte file", n_kv, size);
        goto fail;
    }
    if (n_tensors > size / 28) {
        errf(err, err_len, "tensor count %" PRIu64 " cannot fit in a %" PRIu64 "-byte file", n_tensors, size);
        goto fail;
    }
    f->kv = calloc(n_kv ? n_kv : 1, sizeof *f->kv);
    f->tensors = calloc(n_tensors ? n_tensors : 1, sizeof *f->tensors);
    if (!f->kv || !f->tensors) {
        errf(err, err_len, "out of memory");
        goto fail;
    }
    f->alignment = GGUF_DEFAULT_ALIGNMENT;
    for (uint64_t i = 0; i < n_kv; i++) {
        f->n_kv = i + 1;
        if (read_kv(&c, &f->kv[i], i)) goto fail;
    }
    const struct gguf_kv *al = gguf_find_kv(f, "general.alignment");
    if (al) {
        if (al->type != GGUF_VAL_UINT32 || al->v.u64 == 0 || (al->v.u64 & (al->v.u64 - 1)) ||
            al->v.u64 > 65536) {
            errf(err, err_len, "general.alignment: expected a power of two uint32 <= 65536");
            goto fail;
        }
        f->alignment = (uint32_t)al->v.u64;
    }
    for (uint64_t i = 0; i < n_tensors; i++) {
        f->n_tensors = i + 1;
        if (read_tensor_info(&c, &f->tensors[i], i)) goto fail;
    }
    uint64_t pad = (f->alignment - c.pos % f->alignment) % f->alignment;
    if (n_tensors && pad > size - c.pos) {
        errf(err, err_len, "truncated: data section would start past the end of the file");
        goto fail;
    }
    f->data_offset = c.pos + (pad <= size - c.pos ? pad : 0);
    if (check_unique_names(f, err, err_len) || check_layout(f, err, err_len)) goto fail;
    *out = f;
    return 0;
fail:
    f->fd = -1; /* the buffer is the caller's */
    gguf_close(f);
    return -1;
}

int gguf_open(struct gguf_file **out, const char *path, char *err, size_t err_len)
{
    *out = NULL;
    int fd = safe_open(path, O_RDONLY, 0, err, err_len);
    if (fd < 0) return -1;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return errf(err, err_len, "%s: fstat: %s", path, strerror(errno));
    }
    if (st.st_size < 24) {
        close(fd);
        return errf(err, err_len, "%s: %lld bytes is too small for a GGUF header", path, (long long)st.st_size);
    }
    void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) {
        close(fd);
        return errf(err, err_len, "%s: mmap: %s", path, strerror(errno));
    }
    struct gguf_file *f;
    if (gguf_parse(&f, map, (uint64_t)st.st_size, err, err_len)) {
        munmap(map, (size_t)st.st_size);
        close(fd);
        return errf_prefix(err, err_len, "%s", path);
    }
    f->fd = fd;
    *out = f;
    return 0;
}

const struct gguf_kv *gguf_find_kv(const struct gguf_file *f, const char *key)
{
    for (uint64_t i = 0; i < f->n_kv; i++)
        if (f->kv[i].key && strcmp(f->kv[i].key, key) == 0) return &f->kv[i];
    return NULL;
}

const struct gguf_tensor *gguf_find_tensor(const struct gguf_file *f, const char *name)
{
    for (uint64_t i = 0; i < f->n_tensors; i++)
        if (f->tensors[i].name && strcmp(f->tensors[i].name, name) == 0) return &f->tensors[i];
    return NULL;
}

static bool is_unsigned(enum gguf_val t)
{
    return t == GGUF_VAL_UINT8 || t == GGUF_VAL_UINT16 || t == GGUF_VAL_UINT32 || t == GGUF_VAL_UINT64;
}

static bool is_signed(enum gguf_val t)
{
    return t == GGUF_VAL_INT8 || t == GGUF_VAL_INT16 || t == GGUF_VAL_INT32 || t == GGUF_VAL_INT64;
}

static const struct gguf_kv *need_kv(const struct gguf_file *f, const char *key, char *err, size_t err_len)
{
    const struct gguf_kv *kv = gguf_find_kv(f, key);
    if (!kv) errf(err, err_len, "%s: missing", key);
    return kv;
}

int gguf_get_u32(const struct gguf_file *f, const char *key, uint32_t *out, char *err, size_t err_len)
{
    const struct gguf_kv *kv = need_kv(f, key, err, err_len);
    if (!kv) return -1;
    if (is_unsigned(kv->type) && kv->v.u64 <= UINT32_MAX) {
        *out = (uint32_t)kv->v.u64;
        return 0;
    }
    if (is_signed(kv->type) && kv->v.i64 >= 0 && kv->v.i64 <= (int64_t)UINT32_MAX) {
        *out = (uint32_t)kv->v.i64;
        return 0;
    }
    return errf(err, err_len, "%s: expected an unsigned 32-bit integer (type %u)", key, kv->type);
}

int gguf_get_f32(const struct gguf_file *f, const char *key, float *out, char *err, size_t err_len)
{
    const struct gguf_kv *kv = need_kv(f, key, err, err_len);
    if (!kv) return -1;
    if (kv->type == GGUF_VAL_FLOAT32 || kv->type == GGUF_VAL_FLOAT64) *out = (float)kv->v.f64;
    else if (is_unsigned(kv->type)) *out = (float)kv->v.u64;
    else if (is_signed(kv->type)) *out = (float)kv->v.i64;
    else return errf(err, err_len, "%s: expected a number (type %u)", key, kv->type);
    return 0;
}

int gguf_get_bool(const struct gguf_file *f, const char *key, bool *out, char *err, size_t err_len)
{
    const struct gguf_kv *kv = need_kv(f, key, err, err_len);
    if (!kv) return -1;
    if (kv->type != GGUF_VAL_BOOL) return errf(err, err_len, "%s: expected a bool (type %u)", key, kv->type);
    *out = kv->v.u64 != 0;
    return 0;
}

int gguf_get_str(const struct gguf_file *f, const char *key, char *out, size_t out_len, char *err, size_t err_len)
{
    const struct gguf_kv *kv = need_kv(f, key, err, err_len);
    if (!kv) return -1;
    if (kv->type != GGUF_VAL_STRING) return errf(err, err_len, "%s: expected a string (type %u)", key, kv->type);
    if (kv->v.str.len >= out_len)
        return errf(err, err_len, "%s: string of %" PRIu64 " bytes, at most %zu expected", key, kv->v.str.len, out_len - 1);
    memcpy(out, kv->v.str.ptr, kv->v.str.len);
    out[kv->v.str.len] = 0;
    return 0;
}

int gguf_arr_get_i64(const struct gguf_kv *kv, uint64_t i, int64_t *out)
{
    if (kv->type != GGUF_VAL_ARRAY || i >= kv->arr_count || !kv->arr_data) return -1;
    struct gguf_kv tmp;
    uint64_t es = gguf_val_size(kv->arr_type);
    load_scalar(&tmp, kv->arr_type, kv->arr_data + i * es);
    if (is_unsigned(kv->arr_type) || kv->arr_type == GGUF_VAL_BOOL) {
        if (tmp.v.u64 > INT64_MAX) return -1;
        *out = (int64_t)tmp.v.u64;
    } else if (is_signed(kv->arr_type)) {
        *out = tmp.v.i64;
    } else {
        return -1;
    }
    return 0;
}

int gguf_arr_get_f64(const struct gguf_kv *kv, uint64_t i, double *out)
{
    if (kv->type != GGUF_VAL_ARRAY || i >= kv->arr_count || !kv->arr_data) return -1;
    if (kv->arr_type == GGUF_VAL_FLOAT32 || kv->arr_type == GGUF_VAL_FLOAT64) {
        struct gguf_kv tmp;
        load_scalar(&tmp, kv->arr_type, kv->arr_data + i * gguf_val_size(kv->arr_type));
        *out = tmp.v.f64;
        return 0;
    }
    int64_t v;
    if (gguf_arr_get_i64(kv, i, &v)) return -1;
    *out = (double)v;
    return 0;
}
