/* `flashbox imatrix`: accumulates, per weight matrix and input column, the sum of squared
 * inputs and the number of products that read them, from the reference backend's product
 * observer (session_observe in engine/engine.h), and writes llama.cpp's legacy imatrix. */
#include "tools/imatrix.h"
#include "common/errmsg.h"
#include "common/mono_clock.h"
#include "engine/engine.h"
#include "engine/model/gguf.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* One matrix's statistics: sum[e][ne0] of x^2 and count[e] products, e the routed expert (one
 * slot for a plain matrix). Allocated up front for every matrix of the file, so the observer
 * never allocates. */
struct imatrix_acc {
    uint32_t n_in, n_slots;     /* ne0; experts of a 3-D tensor, else 1 */
    double *sum;                /* [n_slots][n_in]; NULL: not a matrix */
    uint64_t *count;            /* [n_slots] */
};

struct imatrix_ctx {
    const struct gguf_file *f;
    struct imatrix_acc *acc;    /* [f->n_tensors] */
    uint64_t n_mismatch;        /* products the file's table did not expect (a bug if ever > 0) */
};

static bool is_expert_tensor(const struct gguf_tensor *t) { return t->n_dims == 3; }

static void on_product(void *ctx, uint32_t tensor, int32_t expert, const float *x, uint32_t n_in)
{
    struct imatrix_ctx *c = ctx;
    struct imatrix_acc *a = tensor < c->f->n_tensors ? &c->acc[tensor] : NULL;
    const uint32_t slot = expert < 0 ? 0 : (uint32_t)expert;
    if (!a || !a->sum || n_in != a->n_in || slot >= a->n_slots || (expert >= 0) != is_expert_tensor(&c->f->tensors[tensor])) {
        c->n_mismatch++;
        return;
    }
    double *s = a->sum + (uint64_t)slot * n_in;
    for (uint32_t i = 0; i < n_in; i++) s[i] += (double)x[i] * x[i];
    a->count[slot]++;
}

static void acc_free(struct imatrix_ctx *c)
{
    for (uint64_t i = 0; c->acc && i < c->f->n_tensors; i++) {
        free(c->acc[i].sum);
        free(c->acc[i].count);
    }
    free(c->acc);
    c->acc = NULL;
}

static int acc_alloc(struct imatrix_ctx *c, char *err, size_t err_len)
{
    c->acc = calloc(c->f->n_tensors ? c->f->n_tensors : 1, sizeof *c->acc);
    if (!c->acc) return errf(err, err_len, "out of memory");
    for (uint64_t i = 0; i < c->f->n_tensors; i++) {
        const struct gguf_tensor *t = &c->f->tensors[i];
        struct imatrix_acc *a = &c->acc[i];
        if (t->n_dims < 2 || t->n_dims > 3 || t->ne[0] > UINT32_MAX || t->ne[2] > UINT32_MAX) continue;
        a->n_in = (uint32_t)t->ne[0];
        a->n_slots = (uint32_t)t->ne[2];
        a->sum = calloc((size_t)a->n_in * a->n_slots, sizeof *a->sum);
        a->count = calloc(a->n_slots, sizeof *a->count);
        if (!a->sum || !a->count) {
            acc_free(c);
            return errf(err, err_len, "out of memory for the statistics of %s", t->name);
        }
    }
    return 0;
}

static int put(FILE *fp, const void *p, size_t n) { return fwrite(p, 1, n, fp) == n ? 0 : -1; }

/* llama.cpp's legacy layout, little-endian: i32 n_entries; per entry i32 name_len, name,
 * i32 ncall, i32 nval, f32 values[nval]; then i32 last_call, i32 dataset_len, dataset. The
 * values are mean x^2 per column times ncall (readers divide by ncall); a routed tensor's
 * experts follow each other, each averaged over its own products, and an expert no token
 * reached gets ones (no information: every column alike). */
static int write_entries(FILE *fp, const struct imatrix_ctx *c, int32_t ncall, const char *dataset, struct imatrix_stats *st)
{
    int32_t n_entries = 0;
    for (uint64_t i = 0; i < c->f->n_tensors; i++) {
        const struct imatrix_acc *a = &c->acc[i];
        bool any = false;
        for (uint32_t e = 0; a->sum && e < a->n_slots; e++) any |= a->count[e] > 0;
        n_entries += any;
    }
    if (put(fp, &n_entries, 4)) return -1;
    float *vals = NULL;
    size_t cap = 0;
    for (uint64_t i = 0; i < c->f->n_tensors; i++) {
        const struct imatrix_acc *a = &c->acc[i];
        const struct gguf_tensor *t = &c->f->tensors[i];
        bool any = false;
        for (uint32_t e = 0; a->sum && e < a->n_slots; e++) any |= a->count[e] > 0;
        if (!any) continue;
        const size_t nval = (size_t)a->n_in * a->n_slots;
        if (nval > cap) {
            free(vals);
            cap = nval;
            if (!(vals = malloc(cap * sizeof *vals))) return -1;
        }
        for (uint32_t e = 0; e < a->n_slots; e++) {
            if (!a->count[e]) st->n_experts_unused++;
            for (uint32_t k = 0; k < a->n_in; k++) {
                const size_t at = (size_t)e * a->n_in + k;
                vals[at] = a->count[e] ? (float)(a->sum[at] / (double)a->count[e] * ncall) : (float)ncall;
            }
        }
        const int32_t name_len = (int32_t)strlen(t->name), nv = (int32_t)nval;
        if (put(fp, &name_len, 4) || put(fp, t->name, (size_t)name_len) || put(fp, &ncall, 4) || put(fp, &nv, 4) ||
            put(fp, vals, nval * sizeof *vals)) {
            free(vals);
            return -1;
        }
        st->n_entries++;
        st->n_expert_entries += is_expert_tensor(t);
    }
    free(vals);
    const int32_t dlen = (int32_t)strlen(dataset);
    return put(fp, &ncall, 4) || put(fp, &dlen, 4) || put(fp, dataset, (size_t)dlen) ? -1 : 0;
}

/* Writes the file through OUT.tmp and a rename; on any failure removes the temporary file. */
static int write_file(const char *out, const struct imatrix_ctx *c, int32_t ncall, const char *dataset,
                      struct imatrix_stats *st, char *err, size_t err_len)
{
    char tmp[4096];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp", out) >= sizeof tmp) return errf(err, err_len, "%s: path too long", out);
    FILE *fp = fopen(tmp, "wb");
    if (!fp) return errf(err, err_len, "%s: %s", tmp, strerror(errno));
    int rc = write_entries(fp, c, ncall, dataset, st);
    if (fflush(fp) || fsync(fileno(fp))) rc = -1;
    const int saved = errno;
    if (fclose(fp)) rc = -1;
    if (rc || rename(tmp, out)) {
        const char *why = strerror(rc ? saved : errno);
        unlink(tmp);
        return errf(err, err_len, "%s: %s", rc ? tmp : out, why);
    }
    return 0;
}

int imatrix_compute(const struct imatrix_opts *o, struct imatrix_stats *st, char *err, size_t err_len)
{
    memset(st, 0, sizeof *st);
    const uint32_t n_ctx = o->n_ctx ? o->n_ctx : 512;
    if (!o->n_tokens) return errf(err, err_len, "no tokens");
    struct engine_options opt;
    engine_options_default(&opt);
    opt.model_path = o->model;
    opt.backend = ENGINE_BACKEND_REF;
    struct engine *e = NULL;
    struct session *s = NULL;
    struct gguf_file *f = NULL;
    struct imatrix_ctx c = { 0 };
    int rc = -1;
    if (engine_open(&e, &opt, err, err_len)) return -1; /* its message names the file */
    struct engine_info info;
    engine_get_info(e, &info);
    for (uint32_t i = 0; i < o->n_tokens; i++)
        if (o->tokens[i] < 0 || (uint32_t)o->tokens[i] >= info.n_vocab) {
            errf(err, err_len, "token %u: id %d outside the model's vocabulary [0, %u)", i, o->tokens[i], info.n_vocab);
            goto done;
        }
    /* the same file again for its tensor table (the observer's indices count in it) */
    if (gguf_open(&f, o->model, err, err_len)) goto done;
    c.f = f;
    if (acc_alloc(&c, err, err_len)) goto done;
    uint32_t chunk = n_ctx < o->n_tokens ? n_ctx : o->n_tokens;
    if (session_create(e, chunk, &s, err, err_len)) goto done;
    const struct engine_observer obs = { on_product, &c };
    if (session_observe(s, &obs, err, err_len)) goto done;
    uint32_t n_chunks = (o->n_tokens + chunk - 1) / chunk;
    if (o->max_chunks && o->max_chunks < n_chunks) n_chunks = o->max_chunks;
    const double t0 = mono_s();
    double last = t0;
    for (uint32_t k = 0; k < n_chunks; k++) {
        const uint32_t at = k * chunk, n = o->n_tokens - at < chunk ? o->n_tokens - at : chunk;
        session_reset(s);
        /* a chunk in pieces of 32 (the same products as at once) so progress can be told */
        for (uint32_t p = 0; p < n; p += 32) {
            if (session_eval(s, o->tokens + at + p, n - p < 32 ? n - p : 32, NULL, false, err, err_len)) {
                errf_prefix(err, err_len, "chunk %u", k);
                goto done;
            }
            st->n_tokens += n - p < 32 ? n - p : 32;
            const double now = mono_s();
            if (o->log && now - last >= 5.0) {
                fprintf(o->log, "imatrix: chunk %u/%u, %u tokens in %.0f s (%.1f tokens/s)\n", k + 1, n_chunks, st->n_tokens,
                        now - t0, st->n_tokens / (now - t0));
                last = now;
            }
        }
        st->n_chunks++;
    }
    session_observe(s, NULL, err, err_len);
    if (c.n_mismatch) {
        errf(err, err_len, "%llu products did not match the file's tensor table (internal error)", (unsigned long long)c.n_mismatch);
        goto done;
    }
    bool experts_ran = false;
    for (uint64_t i = 0; i < f->n_tensors; i++)
        for (uint32_t x = 0; is_expert_tensor(&f->tensors[i]) && c.acc[i].sum && x < c.acc[i].n_slots; x++)
            experts_ran |= c.acc[i].count[x] > 0;
    if (!experts_ran) {
        errf(err, err_len, "%s: no routed expert ran (a model without routed experts has nothing for the i-quants to weight)", o->model);
        goto done;
    }
    if (write_file(o->out, &c, (int32_t)st->n_chunks, o->dataset ? o->dataset : "", st, err, err_len)) goto done;
    st->seconds = mono_s() - t0;
    rc = 0;
done:
    if (s) session_destroy(s);
    acc_free(&c);
    if (f) gguf_close(f);
    engine_close(e);
    return rc;
}
