/* `flashbox inspect -m MODEL`: metadata, tensor table, the conversion's provenance and
 * validated hyper-parameters. */
#include "engine/engine.h"
#include "firmware/commands.h"

#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void print_provenance(const char *label, const char *text, size_t len)
{
    json_t *o = json_loadb(text, len, 0, NULL);
    char *pretty = o ? json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
    if (pretty) printf("%s%s\n", label, pretty);
    else printf("%s%.*s\n", label, (int)len, text); /* not JSON: shown as it is */
    free(pretty);
    json_decref(o);
}

static void print_kv(const struct gguf_kv *kv)
{
    printf("  %-50s ", kv->key);
    switch (kv->type) {
    case GGUF_VAL_STRING: printf("\"%.*s\"\n", (int)(kv->v.str.len > 80 ? 80 : kv->v.str.len), kv->v.str.ptr); break;
    case GGUF_VAL_FLOAT32: case GGUF_VAL_FLOAT64: printf("%g\n", kv->v.f64); break;
    case GGUF_VAL_INT8: case GGUF_VAL_INT16: case GGUF_VAL_INT32: case GGUF_VAL_INT64: printf("%" PRId64 "\n", kv->v.i64); break;
    case GGUF_VAL_ARRAY: printf("array[%" PRIu64 "] of type %u\n", kv->arr_count, kv->arr_type); break;
    default: printf("%" PRIu64 "\n", kv->v.u64); break;
    }
}

int cmd_inspect(int argc, char **argv)
{
    const char *path = NULL;
    for (int i = 1; i < argc; i++) {
        if ((!strcmp(argv[i], "-m") || !strcmp(argv[i], "--model")) && i + 1 < argc) path = argv[++i];
        else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            printf("usage: flashbox inspect -m MODEL.gguf\n");
            return 0;
        } else {
            fprintf(stderr, "flashbox inspect: unknown argument '%s'\n", argv[i]);
            return 2;
        }
    }
    if (!path) {
        fprintf(stderr, "flashbox inspect: -m MODEL.gguf is required\n");
        return 2;
    }
    char err[512];
    struct gguf_file *f;
    if (gguf_open(&f, path, err, sizeof err)) {
        fprintf(stderr, "flashbox inspect: %s\n", err);
        return 1;
    }
    printf("%s: GGUF v%u, %" PRIu64 " keys, %" PRIu64 " tensors, %" PRIu64 " bytes\n", path, f->version,
           f->n_kv, f->n_tensors, f->size);
    for (uint64_t i = 0; i < f->n_kv; i++) print_kv(&f->kv[i]);
    const struct gguf_kv *prov = gguf_find_kv(f, "flashbox.provenance");
    if (prov && prov->type == GGUF_VAL_STRING) print_provenance("provenance: ", prov->v.str.ptr, prov->v.str.len);
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const struct gguf_tensor *t = &f->tensors[i];
        printf("  %-40s %-6s [%" PRIu64, t->name, gguf_type_name(t->type), t->ne[0]);
        for (uint32_t d = 1; d < t->n_dims; d++) printf(", %" PRIu64, t->ne[d]);
        printf("] %" PRIu64 " bytes\n", t->nbytes);
    }
    struct model *m;
    int rc = 0;
    if (model_bind(&m, f, err, sizeof err)) {
        printf("not a loadable deepseek4 model: %s\n", err);
        gguf_close(f);
        return 1;
    }
    const struct model_hparams *hp = &m->hp;
    printf("deepseek4 \"%s\": n_embd %u, n_layer %u, n_head %u x %u (rope %u), q_rank %u, o_groups %u x %u, window %u,\n"
           "  indexer %u x %u top %u, experts %u (used %u, ff %u), hash layers %u, n_hc %u, vocab %u\n  ratios:",
           hp->name, hp->n_embd, hp->n_layer, hp->n_head, hp->head_dim, hp->rope_dim, hp->q_rank, hp->o_groups,
           hp->o_rank, hp->window, hp->ix_head, hp->ix_dim, hp->ix_topk, hp->n_expert, hp->n_expert_used,
           hp->n_ff_exp, hp->n_hash_layer, hp->n_hc, hp->n_vocab);
    for (uint32_t il = 0; il < hp->n_layer; il++) printf(" %u", hp->ratio[il]);
    printf("\n");
    model_close(m);
    return rc;
}
