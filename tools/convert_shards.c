/* The checkpoint's shard set: model.safetensors.index.json (weight_map: tensor -> shard
 * file) or a single model.safetensors, every shard's header, and one name table over all
 * of them. The index and the headers must agree exactly. */
#include "tools/convert_plan.h"
#include "common/errmsg.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int cmp_entry(const void *a, const void *b)
{
    return strcmp(((const struct conv_entry *)a)->name, ((const struct conv_entry *)b)->name);
}

struct conv_entry *conv_shards_find(struct conv_shards *s, const char *name)
{
    struct conv_entry key = { .name = name };
    return bsearch(&key, s->entries, s->n_entries, sizeof key, cmp_entry);
}

void conv_shards_close(struct conv_shards *s)
{
    for (size_t i = 0; i < s->n_files; i++) st_close(s->files[i]);
    free(s->files);
    free(s->entries);
    memset(s, 0, sizeof *s);
}

/* Opens dir/file once and appends it to s->files. */
static int open_shard(struct conv_shards *s, const char *dir, const char *file, char *err, size_t len)
{
    if (!*file || strchr(file, '/') || !strcmp(file, ".") || !strcmp(file, ".."))
        return errf(err, len, "shard name \"%s\": expected a plain file name in the checkpoint folder", file);
    char path[4096];
    if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, file) >= sizeof path) return errf(err, len, "%s/%s: path too long", dir, file);
    struct st_file **grown = realloc(s->files, (s->n_files + 1) * sizeof *grown);
    if (!grown) return errf(err, len, "out of memory");
    s->files = grown;
    if (st_open(&s->files[s->n_files], path, err, len)) return -1;
    s->n_files++;
    return 0;
}

static const char *base_name(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

int conv_shards_open(struct conv_shards *s, const char *dir, char *err, size_t len)
{
    memset(s, 0, sizeof *s);
    char ipath[4096];
    if ((size_t)snprintf(ipath, sizeof ipath, "%s/model.safetensors.index.json", dir) >= sizeof ipath)
        return errf(err, len, "%s: path too long", dir);
    json_t *root = NULL, *map = NULL;
    if (access(ipath, F_OK) == 0) {
        json_error_t jerr;
        root = json_load_file(ipath, JSON_REJECT_DUPLICATES, &jerr);
        if (!root) return errf(err, len, "%s: %s (line %d)", ipath, jerr.text, jerr.line);
        map = json_object_get(root, "weight_map");
        if (!json_is_object(map)) {
            json_decref(root);
            return errf(err, len, "%s: no \"weight_map\" object", ipath);
        }
        /* Open each distinct shard once, in the order the index first names it. */
        const char *tname;
        json_t *v;
        json_object_foreach(map, tname, v) {
            if (!json_is_string(v)) {
                errf(err, len, "%s: weight_map[%s] is not a file name", ipath, tname);
                goto fail;
            }
            const char *file = json_string_value(v);
            bool seen = false;
            for (size_t i = 0; i < s->n_files && !seen; i++) seen = !strcmp(base_name(s->files[i]->path), file);
            if (!seen && open_shard(s, dir, file, err, len)) {
                errf_prefix(err, len, "%s names shard %s for tensor %s", ipath, file, tname);
                goto fail;
            }
        }
    } else {
        if (open_shard(s, dir, "model.safetensors", err, len)) {
            errf_prefix(err, len, "%s: neither model.safetensors.index.json nor a single shard", dir);
            goto fail;
        }
    }
    size_t n = 0;
    for (size_t i = 0; i < s->n_files; i++) n += s->files[i]->n_tensors;
    s->entries = calloc(n ? n : 1, sizeof *s->entries);
    if (!s->entries) {
        errf(err, len, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < s->n_files; i++) {
        struct st_file *f = s->files[i];
        for (size_t j = 0; j < f->n_tensors; j++) {
            struct conv_entry *e = &s->entries[s->n_entries++];
            e->name = f->tensors[j].name;
            e->file = f;
            e->t = &f->tensors[j];
            if (map) {
                json_t *v = json_object_get(map, e->name);
                if (!v || strcmp(json_string_value(v), base_name(f->path)) != 0) {
                    errf(err, len, "%s: tensor %s is in shard %s but the index %s", ipath, e->name, base_name(f->path),
                         v ? "places it in another shard" : "does not list it");
                    goto fail;
                }
            }
        }
    }
    qsort(s->entries, s->n_entries, sizeof *s->entries, cmp_entry);
    for (size_t i = 1; i < s->n_entries; i++)
        if (!strcmp(s->entries[i - 1].name, s->entries[i].name)) {
            errf(err, len, "tensor %s appears in both %s and %s", s->entries[i].name, s->entries[i - 1].file->path,
                 s->entries[i].file->path);
            goto fail;
        }
    /* Every tensor the index lists must be in its shard (the reverse was checked above). */
    if (map && json_object_size(map) != s->n_entries) {
        const char *tname;
        json_t *v;
        json_object_foreach(map, tname, v) {
            if (!conv_shards_find(s, tname)) {
                errf(err, len, "%s: tensor %s is listed for shard %s but missing from its header", ipath, tname,
                     json_string_value(v));
                goto fail;
            }
        }
    }
    json_decref(root);
    return 0;
fail:
    json_decref(root);
    conv_shards_close(s);
    return -1;
}
