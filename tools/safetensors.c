/* safetensors header parsing and tensor reads. See safetensors.h. */
#include "tools/safetensors.h"
#include "common/safe_open.h"
#include "common/errmsg.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const struct {
    const char *name;
    uint32_t size;
} dtypes[ST_DTYPE_COUNT] = {
    [ST_BOOL] = { "BOOL", 1 }, [ST_U8] = { "U8", 1 }, [ST_I8] = { "I8", 1 },
    [ST_I16] = { "I16", 2 }, [ST_U16] = { "U16", 2 }, [ST_I32] = { "I32", 4 },
    [ST_U32] = { "U32", 4 }, [ST_I64] = { "I64", 8 }, [ST_U64] = { "U64", 8 },
    [ST_F16] = { "F16", 2 }, [ST_BF16] = { "BF16", 2 }, [ST_F32] = { "F32", 4 },
    [ST_F64] = { "F64", 8 }, [ST_F8_E4M3] = { "F8_E4M3", 1 }, [ST_F8_E5M2] = { "F8_E5M2", 1 },
    [ST_F8_E8M0] = { "F8_E8M0", 1 },
};

const char *st_dtype_name(enum st_dtype d) { return (unsigned)d < ST_DTYPE_COUNT ? dtypes[d].name : "?"; }
uint32_t st_dtype_size(enum st_dtype d) { return (unsigned)d < ST_DTYPE_COUNT ? dtypes[d].size : 0; }

static int dtype_from_name(const char *s, enum st_dtype *out)
{
    for (int i = 0; i < ST_DTYPE_COUNT; i++)
        if (!strcmp(s, dtypes[i].name)) {
            *out = (enum st_dtype)i;
            return 0;
        }
    return -1;
}

void st_close(struct st_file *f)
{
    if (!f) return;
    for (size_t i = 0; i < f->n_tensors; i++) free(f->tensors[i].name);
    free(f->tensors);
    if (f->fd >= 0) close(f->fd);
    free(f->path);
    free(f);
}

static int cmp_offset(const void *a, const void *b)
{
    const struct st_tensor *x = *(const struct st_tensor *const *)a, *y = *(const struct st_tensor *const *)b;
    if (x->offset != y->offset) return x->offset < y->offset ? -1 : 1;
    return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

/* Reads a non-negative JSON integer. */
static int json_u64(const json_t *j, uint64_t *out)
{
    if (!json_is_integer(j)) return -1;
    json_int_t v = json_integer_value(j);
    if (v < 0) return -1;
    *out = (uint64_t)v;
    return 0;
}

static int parse_entry(struct st_file *f, const char *name, json_t *obj, uint64_t data_size, struct st_tensor *t,
                       char *err, size_t len)
{
    const char *p = f->path;
    if (!json_is_object(obj)) return errf(err, len, "%s: tensor %s: header entry is not an object", p, name);
    json_t *jd = json_object_get(obj, "dtype"), *js = json_object_get(obj, "shape"),
           *jo = json_object_get(obj, "data_offsets");
    if (!json_is_string(jd) || !json_is_array(js) || !json_is_array(jo))
        return errf(err, len, "%s: tensor %s: needs \"dtype\" (string), \"shape\" and \"data_offsets\" (arrays)", p, name);
    if (dtype_from_name(json_string_value(jd), &t->dtype))
        return errf(err, len, "%s: tensor %s: unknown dtype \"%s\"", p, name, json_string_value(jd));
    size_t nd = json_array_size(js);
    if (nd > ST_MAX_DIMS) return errf(err, len, "%s: tensor %s: %zu dims, at most %d supported", p, name, nd, ST_MAX_DIMS);
    t->n_dims = (uint32_t)nd;
    uint64_t n = 1;
    for (size_t i = 0; i < nd; i++) {
        if (json_u64(json_array_get(js, i), &t->shape[i]))
            return errf(err, len, "%s: tensor %s: shape[%zu] is not a non-negative integer", p, name, i);
        if (t->shape[i] && n > UINT64_MAX / t->shape[i])
            return errf(err, len, "%s: tensor %s: element count overflows", p, name);
        n *= t->shape[i];
    }
    t->n_elements = n;
    uint64_t esz = st_dtype_size(t->dtype);
    if (n > UINT64_MAX / esz) return errf(err, len, "%s: tensor %s: byte size overflows", p, name);
    uint64_t begin, end;
    if (json_array_size(jo) != 2 || json_u64(json_array_get(jo, 0), &begin) || json_u64(json_array_get(jo, 1), &end))
        return errf(err, len, "%s: tensor %s: data_offsets must be two non-negative integers", p, name);
    if (begin > end || end > data_size)
        return errf(err, len, "%s: tensor %s: data_offsets [%" PRIu64 ", %" PRIu64 "] outside the %" PRIu64 " data bytes",
                    p, name, begin, end, data_size);
    if (end - begin != n * esz)
        return errf(err, len, "%s: tensor %s: %" PRIu64 " data bytes, expected %" PRIu64 " for %s of %" PRIu64 " elements",
                    p, name, end - begin, n * esz, st_dtype_name(t->dtype), n);
    t->offset = f->data_offset + begin;
    t->nbytes = end - begin;
    return 0;
}

/* Parses the header text (json_len bytes) of f, whose size and data_offset are set. */
static int parse_header(struct st_file *f, const char *json_text, uint64_t json_len, char *err, size_t len)
{
    json_error_t jerr;
    json_t *root = json_loadb(json_text, (size_t)json_len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) return errf(err, len, "%s: header JSON: %s (line %d, column %d)", f->path, jerr.text, jerr.line, jerr.column);
    int rc = -1;
    struct st_tensor **order = NULL;
    if (!json_is_object(root)) {
        errf(err, len, "%s: header is not a JSON object", f->path);
        goto out;
    }
    size_t n = json_object_size(root);
    f->tensors = calloc(n ? n : 1, sizeof *f->tensors);
    if (!f->tensors) {
        errf(err, len, "out of memory");
        goto out;
    }
    const uint64_t data_size = f->size - f->data_offset;
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (!strcmp(key, "__metadata__")) {
            if (!json_is_object(val)) {
                errf(err, len, "%s: __metadata__ is not an object", f->path);
                goto out;
            }
            continue;
        }
        size_t klen = strlen(key);
        if (klen == 0 || klen > ST_MAX_NAME) {
            errf(err, len, "%s: tensor name of %zu bytes, expected 1..%d", f->path, klen, ST_MAX_NAME);
            goto out;
        }
        struct st_tensor *t = &f->tensors[f->n_tensors];
        if (parse_entry(f, key, val, data_size, t, err, len)) goto out;
        if (!(t->name = strdup(key))) {
            errf(err, len, "out of memory");
            goto out;
        }
        f->n_tensors++;
    }
    /* No two tensors may share bytes: sort by offset and compare neighbours. */
    order = malloc((f->n_tensors ? f->n_tensors : 1) * sizeof *order);
    if (!order) {
        errf(err, len, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < f->n_tensors; i++) order[i] = &f->tensors[i];
    qsort(order, f->n_tensors, sizeof *order, cmp_offset);
    for (size_t i = 1; i < f->n_tensors; i++) {
        const struct st_tensor *a = order[i - 1], *b = order[i];
        if (b->nbytes && a->offset + a->nbytes > b->offset) {
            errf(err, len, "%s: tensors %s and %s overlap (data bytes %" PRIu64 "..%" PRIu64 " and %" PRIu64 "..%" PRIu64 ")",
                 f->path, a->name, b->name, a->offset - f->data_offset, a->offset + a->nbytes - f->data_offset,
                 b->offset - f->data_offset, b->offset + b->nbytes - f->data_offset);
            goto out;
        }
    }
    rc = 0;
out:
    free(order);
    json_decref(root);
    return rc;
}

/* Checks the 8-byte prefix against the file size; sets data_offset. */
static int check_prefix(struct st_file *f, const uint8_t prefix[8], char *err, size_t len)
{
    if (f->size < 8) return errf(err, len, "%s: %" PRIu64 " bytes, too short for a safetensors header", f->path, f->size);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | prefix[i];
    if (hlen > f->size - 8)
        return errf(err, len, "%s: header length %" PRIu64 " runs past the file (%" PRIu64 " bytes)", f->path, hlen, f->size);
    if (hlen > ST_MAX_HEADER)
        return errf(err, len, "%s: header length %" PRIu64 ", at most %llu accepted", f->path, hlen, ST_MAX_HEADER);
    f->data_offset = 8 + hlen;
    return 0;
}

static struct st_file *st_new(const char *what, uint64_t size)
{
    struct st_file *f = calloc(1, sizeof *f);
    if (!f) return NULL;
    f->fd = -1;
    f->size = size;
    if (!(f->path = strdup(what))) {
        free(f);
        return NULL;
    }
    return f;
}

int st_parse(struct st_file **out, const void *image, uint64_t size, const char *what, char *err, size_t len)
{
    *out = NULL;
    struct st_file *f = st_new(what, size);
    if (!f) return errf(err, len, "out of memory");
    const uint8_t *p = image;
    if (check_prefix(f, p, err, len) || parse_header(f, (const char *)p + 8, f->data_offset - 8, err, len)) {
        st_close(f);
        return -1;
    }
    *out = f;
    return 0;
}

static int pread_all(int fd, void *dst, uint64_t n, uint64_t off)
{
    uint8_t *p = dst;
    while (n) {
        size_t chunk = n > (1u << 30) ? (1u << 30) : (size_t)n;
        ssize_t k = pread(fd, p, chunk, (off_t)off);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) {
            if (k == 0) errno = EIO; /* the file shrank under us */
            return -1;
        }
        p += k;
        n -= (uint64_t)k;
        off += (uint64_t)k;
    }
    return 0;
}

int st_open(struct st_file **out, const char *path, char *err, size_t len)
{
    *out = NULL;
    int fd = safe_open(path, O_RDONLY, 0, err, len);
    if (fd < 0) return -1;
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        close(fd);
        return errf(err, len, "%s: fstat: %s", path, strerror(errno));
    }
    struct st_file *f = st_new(path, (uint64_t)sb.st_size);
    if (!f) {
        close(fd);
        return errf(err, len, "out of memory");
    }
    f->fd = fd;
    uint8_t prefix[8] = { 0 };
    char *text = NULL;
    if (f->size >= 8 && pread_all(fd, prefix, 8, 0)) {
        errf(err, len, "%s: read: %s", path, strerror(errno));
        goto fail;
    }
    if (check_prefix(f, prefix, err, len)) goto fail;
    uint64_t hlen = f->data_offset - 8;
    if (!(text = malloc(hlen ? hlen : 1))) {
        errf(err, len, "%s: out of memory for a %" PRIu64 "-byte header", path, hlen);
        goto fail;
    }
    if (pread_all(fd, text, hlen, 8)) {
        errf(err, len, "%s: read: %s", path, strerror(errno));
        goto fail;
    }
    if (parse_header(f, text, hlen, err, len)) goto fail;
    free(text);
    *out = f;
    return 0;
fail:
    free(text);
    st_close(f);
    return -1;
}

int st_read(const struct st_file *f, const struct st_tensor *t, uint64_t off, void *dst, uint64_t nbytes,
            char *err, size_t len)
{
    if (f->fd < 0) return errf(err, len, "%s: parsed image has no file to read", f->path);
    if (off > t->nbytes || nbytes > t->nbytes - off)
        return errf(err, len, "%s: tensor %s: read of %" PRIu64 " bytes at %" PRIu64 " past its %" PRIu64 " bytes",
                    f->path, t->name, nbytes, off, t->nbytes);
    if (pread_all(f->fd, dst, nbytes, t->offset + off))
        return errf(err, len, "%s: tensor %s: read: %s", f->path, t->name, strerror(errno));
    return 0;
}
