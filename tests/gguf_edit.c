/* Test helper: GGUF copy with edits. See gguf_edit.h. */
#include "tests/gguf_edit.h"
#include "engine/model/quant.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int copy_kv(const struct gguf_kv *kv, struct gguf_writer *w)
{
    switch (kv->type) {
    case GGUF_VAL_STRING: {
        char *s = strndup(kv->v.str.ptr, kv->v.str.len);
        int rc = s ? gguf_writer_add_str(w, kv->key, s) : -1;
        free(s);
        return rc;
    }
    case GGUF_VAL_BOOL: return gguf_writer_add_bool(w, kv->key, kv->v.u64 != 0);
    case GGUF_VAL_FLOAT32: case GGUF_VAL_FLOAT64: return gguf_writer_add_f32(w, kv->key, (float)kv->v.f64);
    case GGUF_VAL_INT8: case GGUF_VAL_INT16: case GGUF_VAL_INT32: case GGUF_VAL_INT64:
        return gguf_writer_add_i32(w, kv->key, (int32_t)kv->v.i64);
    case GGUF_VAL_ARRAY:
        if (kv->arr_strs) {
            const char **strs = calloc(kv->arr_count ? kv->arr_count : 1, sizeof *strs);
            int rc = strs ? 0 : -1;
            for (uint64_t i = 0; i < kv->arr_count && !rc; i++)
                if (!(strs[i] = strndup(kv->arr_strs[i].ptr, kv->arr_strs[i].len))) rc = -1;
            if (!rc) rc = gguf_writer_add_arr_str(w, kv->key, strs, kv->arr_count);
            for (uint64_t i = 0; strs && i < kv->arr_count; i++) free((void *)strs[i]);
            free(strs);
            return rc;
        }
        return gguf_writer_add_arr(w, kv->key, kv->arr_type, kv->arr_data, kv->arr_count);
    default: return gguf_writer_add_u32(w, kv->key, (uint32_t)kv->v.u64);
    }
}

int gguf_edit_copy(const char *src, const char *dst, const struct gguf_edit *edit)
{
    struct gguf_file *f;
    char err[512];
    if (gguf_open(&f, src, err, sizeof err)) {
        fprintf(stderr, "gguf_edit_copy: %s\n", err);
        return -1;
    }
    struct gguf_writer *w = gguf_writer_create();
    int rc = w ? 0 : -1;
    for (uint64_t i = 0; i < f->n_kv && !rc; i++) {
        if (edit->on_kv && edit->on_kv(&f->kv[i], w, edit->user)) continue;
        rc = copy_kv(&f->kv[i], w);
    }
    for (uint64_t i = 0; i < f->n_tensors && !rc; i++) {
        const struct gguf_tensor *t = &f->tensors[i];
        char name[128];
        snprintf(name, sizeof name, "%s", t->name);
        enum gguf_type type = t->type;
        uint32_t n_dims = t->n_dims;
        uint64_t ne[GGUF_MAX_DIMS];
        memcpy(ne, t->ne, sizeof ne);
        const void *data = t->data;
        if (edit->on_tensor && edit->on_tensor(name, &type, &n_dims, ne, &data, edit->user)) continue;
        rc = gguf_writer_add_tensor(w, name, type, n_dims, ne, data);
    }
    if (!rc && gguf_writer_write_file(w, dst, err, sizeof err)) {
        fprintf(stderr, "gguf_edit_copy: %s\n", err);
        rc = -1;
    }
    gguf_writer_destroy(w);
    gguf_close(f);
    return rc;
}

struct narrowing {
    bool stored_narrow, failed;
    int count;
    void *bufs[4096]; /* what the copied tensors point at, freed after the write */
};

static int narrow_tensor(char *name, enum gguf_type *type, uint32_t *n_dims, uint64_t *ne, const void **data, void *user)
{
    struct narrowing *n = user;
    if (*type != GGUF_TYPE_F32) return 0;
    const bool f16 = (strstr(name, "hc_") && strstr(name, "_fn.")) || strstr(name, "_compressor_ape.");
    if (!f16 && *n_dims != 1) return 0; /* a matrix of an all-F32 file */
    if (n->count == (int)(sizeof n->bufs / sizeof n->bufs[0])) {
        n->failed = true;
        return 0;
    }
    uint64_t count = 1;
    for (uint32_t d = 0; d < *n_dims; d++) count *= ne[d];
    void *buf = malloc(count * (n->stored_narrow ? 2 : 4));
    if (!buf) {
        n->failed = true;
        return 0;
    }
    for (uint64_t i = 0; i < count; i++) {
        float v;
        memcpy(&v, (const uint8_t *)*data + 4 * i, 4);
        uint16_t h = f16 ? f32_to_fp16(v) : f32_to_bf16(v);
        if (n->stored_narrow) memcpy((uint8_t *)buf + 2 * i, &h, 2);
        else {
            float r = f16 ? fp16_to_f32(h) : bf16_to_f32(h);
            memcpy((uint8_t *)buf + 4 * i, &r, 4);
        }
    }
    if (n->stored_narrow) *type = f16 ? GGUF_TYPE_F16 : GGUF_TYPE_BF16;
    *data = buf;
    n->bufs[n->count++] = buf;
    return 0;
}

int gguf_edit_narrow_vectors(const char *src, const char *dst, bool stored_narrow)
{
    struct narrowing *n = calloc(1, sizeof *n);
    if (!n) return -1;
    n->stored_narrow = stored_narrow;
    struct gguf_edit e = { NULL, narrow_tensor, n };
    int rc = gguf_edit_copy(src, dst, &e);
    for (int i = 0; i < n->count; i++) free(n->bufs[i]);
    if (!rc) rc = n->failed ? -1 : n->count;
    free(n);
    return rc;
}
