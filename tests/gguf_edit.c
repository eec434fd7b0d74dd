/* Test helper: GGUF copy with edits. See gguf_edit.h. */
#include "tests/gguf_edit.h"

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
