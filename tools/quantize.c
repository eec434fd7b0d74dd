/* `flashbox quantize`: recipes, importance matrices, the streaming rewrite and the report.
 * See tools/quantize.h. Memory: a chunk of rows (about 4 M elements) quantized at a time by
 * several threads, and a float32 row per thread; the source is read through gguf's mmap, the
 * result streamed to OUT.tmp and renamed. */
#include "tools/quantize.h"
#include "engine/engine.h"
#include "common/errmsg.h"
#include "common/mono_clock.h"
#include "common/safe_open.h"
#include "engine/model/model.h"
#include "engine/model/quant.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- files a user names ---- */

int quant_read_file(const char *path, size_t max, uint8_t **buf, size_t *len, char *err, size_t err_len)
{
    *buf = NULL;
    *len = 0;
    int fd = safe_open(path, O_RDONLY, 0, err, err_len);
    if (fd < 0) return -1;
    struct stat st;
    if (fstat(fd, &st) || st.st_size < 0 || (uint64_t)st.st_size > max) {
        close(fd);
        return errf(err, err_len, "%s: %lld bytes, at most %zu read", path, (long long)st.st_size, max);
    }
    *buf = malloc((size_t)st.st_size + 1);
    size_t n = 0;
    while (*buf && n < (size_t)st.st_size) {
        ssize_t got = read(fd, *buf + n, (size_t)st.st_size - n);
        if (got <= 0) break;
        n += (size_t)got;
    }
    close(fd);
    if (!*buf || n != (size_t)st.st_size) {
        const char *why = *buf ? "read error" : "out of memory";
        free(*buf);
        *buf = NULL;
        return errf(err, err_len, "%s: %s", path, why);
    }
    (*buf)[n] = 0;
    *len = n;
    return 0;
}

long quant_parse_ids(const char *s, int32_t *ids, long cap, char *err, size_t err_len)
{
    long n = 0;
    while (*s) {
        while (*s == ',' || *s == ' ' || *s == '\n' || *s == '\t' || *s == '\r') s++;
        if (!*s) break;
        char *end;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (end == s || errno || v < 0 || v > INT32_MAX || n == cap)
            return errf(err, err_len, "tokens: bad id or more than %ld ids at \"%.20s\"", cap, s);
        ids[n++] = (int32_t)v;
        s = end;
    }
    return n;
}

int quant_read_ids_file(const char *path, size_t max_bytes, int32_t **ids, uint32_t *n, char *err, size_t err_len)
{
    uint8_t *text;
    size_t len;
    *ids = NULL;
    *n = 0;
    if (quant_read_file(path, max_bytes, &text, &len, err, err_len)) return -1;
    if (memchr(text, 0, len)) {
        free(text);
        return errf(err, err_len, "%s: a NUL byte in a token file", path);
    }
    /* an id takes at least two bytes with its separator, but a last one may have none */
    const long cap = (long)(len / 2 + 1);
    int32_t *v = malloc((size_t)cap * sizeof *v);
    long got = v ? quant_parse_ids((const char *)text, v, cap, err, err_len) : errf(err, err_len, "out of memory");
    free(text);
    if (got <= 0) {
        free(v);
        return got ? errf_prefix(err, err_len, "%s", path) : errf(err, err_len, "%s: no token ids in the file", path);
    }
    *ids = v;
    *n = (uint32_t)got;
    return 0;
}

/* ---- recipes ---- */

/* The published deepseek4 layouts keep attention, shared experts and the head at Q8_0 and
 * put the routed experts (97% of the weights) at 2 or 4 bits: the 2-bit one (ds4's 80.8 GiB
 * file) IQ2_XXS for gate and up, Q2_K for down. */
#define DS4_COMMON "blk.*.attn_q_a=q8_0\nblk.*.attn_q_b=q8_0\nblk.*.attn_kv=q8_0\nblk.*.attn_output_*=q8_0\n" \
                   "blk.*.ffn_*_shexp=q8_0\noutput=q8_0\n"
static const char *const recipe_text[] = {
    "blk.*.ffn_gate_exps=iq2_xxs\nblk.*.ffn_up_exps=iq2_xxs\nblk.*.ffn_down_exps=q2_k\n" DS4_COMMON,
    "blk.*.ffn_*_exps=q4_k\n" DS4_COMMON,
    "blk.*.ffn_*_exps=iq4_xs\n" DS4_COMMON,
    "blk.*.ffn_*_exps=q8_0\n" DS4_COMMON,
};
const char *const quant_recipe_names[] = { "2bit", "4bit", "iq4", "q8", NULL };
const char *const quant_recipe_about[] = {
    "routed experts IQ2_XXS gate/up (2.06 bits), Q2_K down (2.625), attention, shared experts and head Q8_0",
    "routed experts Q4_K (4.5 bits), attention, shared experts and head Q8_0",
    "routed experts IQ4_XS (4.25 bits), attention, shared experts and head Q8_0",
    "routed experts Q8_0, attention, shared experts and head Q8_0",
};

int quant_recipe_parse(const char *text, size_t len, struct quant_recipe *r, char *err, size_t err_len)
{
    r->n_rules = 0;
    uint32_t line = 0;
    size_t at = 0;
    while (at < len) {
        size_t end = at;
        while (end < len && text[end] != '\n') end++;
        line++;
        char buf[256];
        size_t n = end - at;
        if (n >= sizeof buf) return errf(err, err_len, "line %u: longer than %zu bytes", line, sizeof buf - 1);
        memcpy(buf, text + at, n);
        buf[n] = 0;
        at = end + 1;
        if (memchr(buf, 0, n)) return errf(err, err_len, "line %u: a NUL byte", line);
        char *hash = strchr(buf, '#');
        if (hash) *hash = 0;
        char *s = buf;
        while (isspace((unsigned char)*s)) s++;
        size_t sl = strlen(s);
        while (sl && isspace((unsigned char)s[sl - 1])) s[--sl] = 0;
        if (!*s) continue;
        char *eq = strchr(s, '=');
        if (!eq) return errf(err, err_len, "line %u: '%s': expected PATTERN=TYPE (blk.*.ffn_down_exps=q2_k)", line, s);
        *eq = 0;
        char *pat = s, *type = eq + 1;
        size_t pl = strlen(pat);
        while (pl && isspace((unsigned char)pat[pl - 1])) pat[--pl] = 0;
        while (isspace((unsigned char)*type)) type++;
        if (!pl) return errf(err, err_len, "line %u: empty pattern before '='", line);
        if (pl >= sizeof r->rules[0].pattern) return errf(err, err_len, "line %u: pattern longer than 127 bytes", line);
        int t = gguf_type_from_name(type);
        if (t < 0) return errf(err, err_len, "line %u: '%s' is not a tensor type (q2_k, q3_k, q4_k, q5_k, q6_k, iq2_xxs, iq2_xs, iq2_s, iq3_xxs, iq1_s, iq1_m, iq4_nl, iq4_xs, q8_0, mxfp4, f16, bf16, f32)", line, type);
        if (!quant_can_quantize((enum gguf_type)t))
            return errf(err, err_len, "line %u: %s has no quantizer here (q2_k..q6_k, iq2_xxs, iq2_xs, iq2_s, iq3_xxs, iq1_s, iq1_m, iq4_nl, iq4_xs, q8_0, mxfp4, f16, bf16, f32)", line,
                        gguf_type_name((enum gguf_type)t));
        if (r->n_rules == QUANT_MAX_RULES) return errf(err, err_len, "line %u: more than %d rules", line, QUANT_MAX_RULES);
        struct quant_rule *q = &r->rules[r->n_rules++];
        memcpy(q->pattern, pat, pl + 1);
        q->type = (enum gguf_type)t;
        q->line = line;
    }
    if (!r->n_rules) return errf(err, err_len, "no rules (expected lines PATTERN=TYPE)");
    return 0;
}

int quant_recipe_load(const char *name_or_path, struct quant_recipe *r, char *err, size_t err_len)
{
    memset(r, 0, sizeof *r);
    snprintf(r->name, sizeof r->name, "%s", name_or_path);
    for (int i = 0; quant_recipe_names[i]; i++)
        if (!strcmp(name_or_path, quant_recipe_names[i])) {
            int rc = quant_recipe_parse(recipe_text[i], strlen(recipe_text[i]), r, err, err_len);
            for (uint32_t k = 0; k < r->n_rules; k++) r->rules[k].line = 0;
            return rc;
        }
    uint8_t *text;
    size_t n;
    if (access(name_or_path, F_OK))
        return errf(err, err_len, "recipe '%s': not a named recipe (2bit, 4bit, iq4, q8) and not a readable file", name_or_path);
    if (quant_read_file(name_or_path, 64 * 1024, &text, &n, err, err_len)) return -1;
    int rc = quant_recipe_parse((const char *)text, n, r, err, err_len);
    free(text);
    return rc ? errf_prefix(err, err_len, "%s", name_or_path) : 0;
}

const struct quant_rule *quant_recipe_match(const struct quant_recipe *r, const char *tensor_name)
{
    char base[256];
    snprintf(base, sizeof base, "%s", tensor_name);
    size_t n = strlen(base);
    if (n > 7 && !strcmp(base + n - 7, ".weight")) base[n - 7] = 0;
    for (uint32_t i = 0; i < r->n_rules; i++)
        if (!fnmatch(r->rules[i].pattern, base, 0) || !fnmatch(r->rules[i].pattern, tensor_name, 0)) return &r->rules[i];
    return NULL;
}

/* ---- importance matrices ---- */

void quant_imatrix_free(struct quant_imatrix *m)
{
    for (uint32_t i = 0; m->e && i < m->n; i++) {
        free(m->e[i].name);
        free(m->e[i].val);
    }
    free(m->e);
    memset(m, 0, sizeof *m);
}

static struct quant_imatrix_entry *imatrix_add(struct quant_imatrix *m, const char *name, size_t name_len, uint64_t n_val)
{
    struct quant_imatrix_entry *e = realloc(m->e, (m->n + 1) * sizeof *e);
    if (!e) return NULL;
    m->e = e;
    e = &m->e[m->n];
    e->name = strndup(name, name_len);
    e->val = malloc(n_val * sizeof *e->val);
    e->n_val = n_val;
    if (!e->name || !e->val) {
        free(e->name);
        free(e->val);
        return NULL;
    }
    m->n++;
    return e;
}

/* llama.cpp's legacy format, little-endian: i32 n_entries, then per entry i32 name_len, name,
 * i32 ncall, i32 nval, f32 values[nval] (sums over ncall calls); optionally i32 last_call,
 * i32 dataset_len, dataset name. */
static int imatrix_parse_legacy(const uint8_t *p, size_t len, struct quant_imatrix *m, char *err, size_t err_len)
{
    size_t at = 0;
    int32_t n_entries;
#define TAKE(dst, n, what)                                                                                  \
    do {                                                                                                    \
        if ((n) > len - at) return errf(err, err_len, "imatrix: %s at byte %zu runs past the end (%zu bytes)", what, at, len); \
        memcpy(dst, p + at, n);                                                                             \
        at += (n);                                                                                          \
    } while (0)
    if (len < 4) return errf(err, err_len, "imatrix: %zu bytes, neither GGUF nor the legacy format", len);
    TAKE(&n_entries, 4, "entry count");
    if (n_entries < 1 || (size_t)n_entries > len / 16)
        return errf(err, err_len, "imatrix: %d entries in %zu bytes", n_entries, len);
    for (int32_t i = 0; i < n_entries; i++) {
        int32_t name_len, ncall, nval;
        TAKE(&name_len, 4, "name length");
        if (name_len < 1 || name_len > 255) return errf(err, err_len, "imatrix: entry %d: name length %d (1..255)", i, name_len);
        if ((size_t)name_len > len - at) return errf(err, err_len, "imatrix: entry %d: name runs past the end", i);
        const char *name = (const char *)p + at;
        at += (size_t)name_len;
        if (memchr(name, 0, (size_t)name_len)) return errf(err, err_len, "imatrix: entry %d: a NUL byte in its name", i);
        TAKE(&ncall, 4, "call count");
        TAKE(&nval, 4, "value count");
        if (nval < 1 || (size_t)nval > (len - at) / 4)
            return errf(err, err_len, "imatrix: %.*s: %d values, %zu bytes left", name_len, name, nval, len - at);
        struct quant_imatrix_entry *e = imatrix_add(m, name, (size_t)name_len, (uint64_t)nval);
        if (!e) return errf(err, err_len, "imatrix: out of memory");
        TAKE(e->val, (size_t)nval * 4, "values");
        for (int32_t k = 0; k < nval; k++) {
            if (!isfinite(e->val[k]) || e->val[k] < 0)
                return errf(err, err_len, "imatrix: %s: value %d is %g (expected finite, >= 0)", e->name, k, (double)e->val[k]);
            if (ncall > 0) e->val[k] /= (float)ncall;
        }
    }
#undef TAKE
    return 0; /* a trailing dataset record, if any, is not needed */
}

/* llama.cpp's GGUF format: tensors NAME.in_sum2 [ne0, n] and NAME.counts [n] (F32); the
 * weights are in_sum2 / count, or 1 where a count is 0 (that expert never ran). */
static int imatrix_parse_gguf(const void *buf, size_t len, struct quant_imatrix *m, char *err, size_t err_len)
{
    struct gguf_file *f;
    if (gguf_parse(&f, buf, len, err, err_len)) return errf_prefix(err, err_len, "imatrix");
    int rc = 0;
    for (uint64_t i = 0; i < f->n_tensors && !rc; i++) {
        const struct gguf_tensor *s = &f->tensors[i];
        size_t nl = strlen(s->name);
        if (nl <= 8 || strcmp(s->name + nl - 8, ".in_sum2")) continue;
        char cname[300];
        snprintf(cname, sizeof cname, "%.*s.counts", (int)(nl - 8), s->name);
        const struct gguf_tensor *c = gguf_find_tensor(f, cname);
        if (!c) {
            rc = errf(err, err_len, "imatrix: %s has no %s", s->name, cname);
            break;
        }
        if (s->type != GGUF_TYPE_F32 || c->type != GGUF_TYPE_F32 || c->n_elements != s->ne[1] || s->n_dims > 2) {
            rc = errf(err, err_len, "imatrix: %s / %s: expected F32 [ne0, n] and F32 [n]", s->name, cname);
            break;
        }
        struct quant_imatrix_entry *e = imatrix_add(m, s->name, nl - 8, s->n_elements);
        if (!e) {
            rc = errf(err, err_len, "imatrix: out of memory");
            break;
        }
        for (uint64_t j = 0; j < s->ne[1]; j++) {
            float cnt;
            memcpy(&cnt, (const uint8_t *)c->data + 4 * j, 4);
            for (uint64_t k = 0; k < s->ne[0]; k++) {
                float v;
                memcpy(&v, (const uint8_t *)s->data + 4 * (j * s->ne[0] + k), 4);
                e->val[j * s->ne[0] + k] = cnt > 0 ? v / cnt : 1.f;
                if (!isfinite(e->val[j * s->ne[0] + k]) || v < 0) {
                    rc = errf(err, err_len, "imatrix: %s: value %llu is %g (expected finite, >= 0)", s->name,
                              (unsigned long long)(j * s->ne[0] + k), (double)v);
                    break;
                }
            }
        }
    }
    if (!rc && !m->n) rc = errf(err, err_len, "imatrix: a GGUF file without any NAME.in_sum2 tensor");
    gguf_close(f);
    return rc;
}

int quant_imatrix_parse(const void *buf, size_t len, struct quant_imatrix *m, char *err, size_t err_len)
{
    memset(m, 0, sizeof *m);
    int rc = len >= 4 && !memcmp(buf, "GGUF", 4) ? imatrix_parse_gguf(buf, len, m, err, err_len)
                                                 : imatrix_parse_legacy(buf, len, m, err, err_len);
    if (rc) quant_imatrix_free(m);
    return rc;
}

int quant_imatrix_load(const char *path, struct quant_imatrix *m, char *err, size_t err_len)
{
    memset(m, 0, sizeof *m);
    uint8_t *buf;
    size_t n;
    if (quant_read_file(path, (size_t)1 << 32, &buf, &n, err, err_len)) return -1;
    int rc = quant_imatrix_parse(buf, n, m, err, err_len);
    free(buf);
    return rc ? errf_prefix(err, err_len, "%s", path) : 0;
}

const struct quant_imatrix_entry *quant_imatrix_find(const struct quant_imatrix *m, const char *tensor_name)
{
    for (uint32_t i = 0; m && i < m->n; i++)
        if (!strcmp(m->e[i].name, tensor_name)) return &m->e[i];
    return NULL;
}

/* ---- the rewrite ---- */

/* A source tensor the recipe may rewrite: a matrix (2-D or experts) of a type we can read. */
static bool rewritable(const struct gguf_tensor *t)
{
    switch (t->type) {
    case GGUF_TYPE_I32: return false;
    default: return t->n_dims >= 2 && gguf_type_block_elems(t->type) && t->ne[0] % gguf_type_block_elems(t->type) == 0;
    }
}

/* The type a tensor is written in: the rule's, or where its rows are not a multiple of that
 * type's block what llama.cpp falls back to (IQ4_NL for 1-4 bits, Q8_0 above), or the
 * source type when nothing fits. */
static enum gguf_type target_type(const struct gguf_tensor *t, const struct quant_rule *rule, bool *fallback)
{
    *fallback = false;
    if (!rule || !rewritable(t)) return t->type;
    enum gguf_type want = rule->type;
    if (t->ne[0] % gguf_type_block_elems(want) == 0) return want;
    *fallback = true;
    want = want == GGUF_TYPE_Q5_K || want == GGUF_TYPE_Q6_K ? GGUF_TYPE_Q8_0 : GGUF_TYPE_IQ4_NL;
    return t->ne[0] % 32 == 0 ? want : t->type;
}

/* Abandons a begun write: the temporary file goes (its error, if any, is not the one to report). */
static void writer_discard(struct gguf_writer *w)
{
    char e2[64];
    gguf_writer_finish(w, false, e2, sizeof e2);
}

struct rewrite {
    enum gguf_type type;
    bool fallback;
    const struct quant_rule *rule;
    const struct quant_imatrix_entry *im;
};

static bool is_float_type(enum gguf_type t) { return t == GGUF_TYPE_F32 || t == GGUF_TYPE_F16 || t == GGUF_TYPE_BF16; }

/* Whether the model binder accepts the file the rewrite rw would write, asked before a byte
 * of it is written (a pattern like blk.*.attn_*=q8_0 also matches attn_compressor_ape, which
 * must stay a float vector): the source parsed once more with each rewritten tensor's type
 * (and size) set to its target, then bound. The binder reads no matrix's bytes, and a float
 * tensor rewritten to another float type keeps its source type here (the binder accepts the
 * three alike, and widening would read the source's bytes as the other width). A source that
 * does not bind is not a model and is not checked. Returns -1 naming the tensor and rule. */
static int check_binds(const char *in, const struct rewrite *rw, char *err, size_t err_len)
{
    struct gguf_file *g;
    struct model *m;
    char why[512];
    if (gguf_open(&g, in, err, err_len)) return -1;
    if (model_bind(&m, g, why, sizeof why)) {
        gguf_close(g);
        return 0;
    }
    model_close(m); /* closes g */
    if (gguf_open(&g, in, err, err_len)) return -1;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        struct gguf_tensor *t = &g->tensors[i];
        if (rw[i].type == t->type || (is_float_type(rw[i].type) && is_float_type(t->type))) continue;
        t->type = rw[i].type;
        gguf_type_nbytes(t->type, t->n_elements, &t->nbytes);
    }
    if (!model_bind(&m, g, why, sizeof why)) {
        model_close(m);
        return 0;
    }
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const size_t nl = strlen(g->tensors[i].name);
        if (!rw[i].rule || strncmp(why, g->tensors[i].name, nl) || why[nl] != ':') continue;
        char where[48] = "";
        if (rw[i].rule->line) snprintf(where, sizeof where, " (line %u)", rw[i].rule->line);
        errf(err, err_len, "rule '%s'%s would write %s as %s, which a model cannot load: %s", rw[i].rule->pattern, where,
             g->tensors[i].name, gguf_type_name(rw[i].type), why);
        gguf_close(g);
        return -1;
    }
    errf(err, err_len, "the result would not load as a model: %s", why);
    gguf_close(g);
    return -1;
}

/* The rows of the tensor being rewritten are quantized a chunk at a time (at most
 * chunk_elems elements, or one row where a row is longer) by up to n_threads threads that
 * take batches of rows from a shared counter (a thread slowed by other load takes fewer), each
 * row written at its own place in the chunk's output buffer, which is then streamed in row
 * order. Each row's quantization depends on that row alone, so the file is the same bytes for
 * any thread count; memory stays one chunk plus a float row per thread. */
#define CHUNK_ELEMS ((uint64_t)1 << 22)

struct chunk_job {
    const struct gguf_tensor *t;
    const struct rewrite *rw;
    uint64_t c0, c1, batch;         /* rows [c0, c1) of the tensor, taken batch at a time */
    uint64_t src_row, dst_row;      /* bytes per row */
    uint8_t *out;                   /* row c0's place */
    atomic_uint_fast64_t next;      /* the first row no thread has taken */
    atomic_bool failed;             /* a row failed: take no more */
};

struct chunk_worker {
    struct chunk_job *job;
    float *row;                     /* ne0 floats of scratch */
    uint64_t bad_row;               /* the first row this worker failed on (c1: none) */
    bool bad_read;                  /* it failed in the dequantizer (else in the quantizer) */
    bool threaded;                  /* ran on a thread of its own (to be joined) */
};

static void *quantize_rows(void *arg)
{
    struct chunk_worker *wk = arg;
    struct chunk_job *j = wk->job;
    const struct gguf_tensor *t = j->t;
    const uint64_t ne0 = t->ne[0];
    wk->bad_row = j->c1;
    /* rows are taken in increasing order and a taken batch is finished, so when a row fails
     * every row before it has been tried: the lowest failed row over the workers is the
     * chunk's first bad row, whatever the thread count */
    while (!atomic_load(&j->failed)) {
        const uint64_t r0 = atomic_fetch_add(&j->next, j->batch);
        if (r0 >= j->c1) break;
        const uint64_t r1 = j->c1 - r0 < j->batch ? j->c1 : r0 + j->batch;
        for (uint64_t r = r0; r < r1; r++) {
            const float *qw = NULL;
            if (j->rw->im) qw = j->rw->im->val + (j->rw->im->n_val == ne0 ? 0 : (r / t->ne[1]) * ne0); /* per expert for 3-D */
            wk->bad_read = dequant_row(t->type, (const uint8_t *)t->data + r * j->src_row, wk->row, ne0) != 0;
            if (wk->bad_read || quant_quantize_row(j->rw->type, wk->row, j->out + (r - j->c0) * j->dst_row, ne0, qw)) {
                wk->bad_row = r;
                atomic_store(&j->failed, true);
                return NULL;
            }
        }
    }
    return NULL;
}

/* The error of a worker's failed row (its row buffer still holds that row's values). */
static int row_error(const struct chunk_job *j, const struct chunk_worker *wk, char *err, size_t err_len)
{
    const struct gguf_tensor *t = j->t;
    if (wk->bad_read) return errf(err, err_len, "%s: cannot read %s", t->name, gguf_type_name(t->type));
    for (uint64_t k = 0; k < t->ne[0]; k++)
        if (!isfinite(wk->row[k]))
            return errf(err, err_len, "%s: row %llu, column %llu is %g: %s cannot hold it (fix the source)", t->name,
                        (unsigned long long)wk->bad_row, (unsigned long long)k, (double)wk->row[k], gguf_type_name(j->rw->type));
    return errf(err, err_len, "%s: cannot convert %s to %s", t->name, gguf_type_name(t->type), gguf_type_name(j->rw->type));
}

struct rewrite_buf {
    uint32_t n_threads;
    uint64_t chunk_elems;
    float *rows;                    /* n_threads rows of max_ne0 floats */
    uint8_t *out;                   /* one chunk: max(chunk_elems, max_ne0) x 4 bytes */
    struct chunk_worker *wk;        /* n_threads */
    pthread_t *tid;                 /* n_threads */
};

/* Where the rewrite stands, for the progress lines. */
struct rewrite_progress {
    double t0, last;            /* mono_s() at the start; seconds since then of the last line */
    uint64_t done, total;       /* source bytes of the tensors written, of all of them */
};

static int rewrite_tensor(const struct quantize_opts *o, const struct gguf_tensor *t, const struct rewrite *rw,
                          struct gguf_writer *w, struct rewrite_buf *b, uint64_t max_ne0, struct rewrite_progress *p,
                          char *err, size_t err_len)
{
    if (rw->type == t->type) return gguf_writer_stream_tensor(w, t->data, t->nbytes, err, err_len);
    const uint64_t ne0 = t->ne[0], n_rows = t->n_elements / ne0, src_row = t->nbytes / n_rows;
    uint64_t dst_row;
    if (gguf_type_nbytes(rw->type, ne0, &dst_row)) return errf(err, err_len, "%s: row of %llu", t->name, (unsigned long long)ne0);
    const uint64_t chunk = ne0 < b->chunk_elems ? b->chunk_elems / ne0 : 1;
    for (uint64_t c0 = 0; c0 < n_rows; c0 += chunk) {
        const uint64_t c1 = n_rows - c0 < chunk ? n_rows : c0 + chunk;
        const uint32_t n = c1 - c0 < b->n_threads ? (uint32_t)(c1 - c0) : b->n_threads;
        struct chunk_job job = { .t = t, .rw = rw, .c0 = c0, .c1 = c1, .src_row = src_row, .dst_row = dst_row, .out = b->out };
        job.batch = (c1 - c0) / (8 * (uint64_t)n) + 1; /* about 8 batches a thread */
        atomic_init(&job.next, c0);
        atomic_init(&job.failed, false);
        for (uint32_t k = 0; k < n; k++) {
            b->wk[k] = (struct chunk_worker){ .job = &job, .row = b->rows + k * max_ne0 };
            /* worker 0 runs here; one whose thread cannot start takes no rows (bad_row c1) */
            b->wk[k].threaded = k > 0 && pthread_create(&b->tid[k], NULL, quantize_rows, &b->wk[k]) == 0;
            if (k > 0 && !b->wk[k].threaded) b->wk[k].bad_row = c1;
        }
        quantize_rows(&b->wk[0]);
        const struct chunk_worker *bad = NULL;
        for (uint32_t k = 0; k < n; k++) {
            if (b->wk[k].threaded) pthread_join(b->tid[k], NULL);
            if (b->wk[k].bad_row < c1 && (!bad || b->wk[k].bad_row < bad->bad_row)) bad = &b->wk[k];
        }
        if (bad) return row_error(&job, bad, err, err_len);
        if (gguf_writer_stream_part(w, b->out, (c1 - c0) * dst_row, err, err_len)) return -1;
        const double now = mono_s() - p->t0;
        if (o->log && c1 < n_rows && now - p->last > 10.0) { /* a long tensor: a line every 10 s */
            p->last = now;
            const double done = (double)p->done + (double)t->nbytes * (double)c1 / (double)n_rows;
            fprintf(o->log, "[%5.1f%%] %-41s row %llu/%llu  %.1f s\n", p->total ? 100.0 * done / (double)p->total : 100.0,
                    t->name, (unsigned long long)c1, (unsigned long long)n_rows, now);
            fflush(o->log);
        }
    }
    return 0;
}

uint32_t quantize_default_threads(void)
{
    const long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > QUANTIZE_MAX_THREADS ? QUANTIZE_MAX_THREADS : (uint32_t)n;
}

int quantize_model(const struct quantize_opts *o, struct quantize_stats *st, char *err, size_t err_len)
{
    memset(st, 0, sizeof *st);
    const double t0 = mono_s();
    struct gguf_file *f = NULL;
    struct gguf_writer *w = NULL;
    struct rewrite *rw = NULL;
    struct rewrite_buf buf = { 0 };
    bool begun = false;
    int rc = -1;
    if (gguf_open(&f, o->in, err, err_len)) return -1;
    if (!(w = gguf_writer_create()) || !(rw = calloc(f->n_tensors ? f->n_tensors : 1, sizeof *rw))) {
        errf(err, err_len, "out of memory");
        goto close_file;
    }
    for (uint64_t i = 0; i < f->n_kv; i++)
        if (strcmp(f->kv[i].key, "flashbox.quantize.recipe") && gguf_writer_copy_kv(w, &f->kv[i])) {
            errf(err, err_len, "%s: cannot copy key %s", o->in, f->kv[i].key);
            goto close_file;
        }
    gguf_writer_add_str(w, "flashbox.quantize.recipe", o->recipe->name);
    uint64_t max_ne0 = 1, total = 0;
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const struct gguf_tensor *t = &f->tensors[i];
        rw[i].rule = quant_recipe_match(o->recipe, t->name);
        rw[i].type = target_type(t, rw[i].rule, &rw[i].fallback);
        if (rw[i].type != t->type) {
            if (t->ne[0] > max_ne0) max_ne0 = t->ne[0];
            rw[i].im = quant_imatrix_find(o->imatrix, t->name);
            const uint64_t n_exp = t->n_dims >= 3 ? t->ne[2] : 1;
            if (rw[i].im && rw[i].im->n_val != t->ne[0] && rw[i].im->n_val != t->ne[0] * n_exp) {
                errf(err, err_len, "imatrix: %s has %llu values, the tensor needs %llu (ne0) or %llu (ne0 x experts)", t->name,
                     (unsigned long long)rw[i].im->n_val, (unsigned long long)t->ne[0], (unsigned long long)(t->ne[0] * n_exp));
                goto close_file;
            }
            st->n_changed++;
            st->n_fallback += rw[i].fallback;
            st->n_imatrix += rw[i].im != NULL;
        }
        total += t->nbytes;
        if (gguf_writer_add_tensor(w, t->name, rw[i].type, t->n_dims, t->ne, NULL)) {
            errf(err, err_len, "%s: cannot register", t->name);
            goto close_file;
        }
    }
    if (check_binds(o->in, rw, err, err_len)) goto close_file;
    buf.n_threads = o->n_threads ? o->n_threads : quantize_default_threads();
    st->n_threads = buf.n_threads;
    buf.chunk_elems = o->chunk_elems ? o->chunk_elems : CHUNK_ELEMS;
    if (!(buf.rows = malloc(buf.n_threads * max_ne0 * sizeof *buf.rows)) ||
        !(buf.out = malloc((max_ne0 > buf.chunk_elems ? max_ne0 : buf.chunk_elems) * 4)) ||
        !(buf.wk = calloc(buf.n_threads, sizeof *buf.wk)) || !(buf.tid = calloc(buf.n_threads, sizeof *buf.tid))) {
        errf(err, err_len, "out of memory");
        goto close_file;
    }
    if (gguf_writer_begin(w, o->out, err, err_len)) goto close_file;
    begun = true;
    struct rewrite_progress prog = { .t0 = t0, .total = total };
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const struct gguf_tensor *t = &f->tensors[i];
        const double t_start = mono_s();
        if (rewrite_tensor(o, t, &rw[i], w, &buf, max_ne0, &prog, err, err_len)) goto close_file;
        const double t_spent = mono_s() - t_start;
        prog.done += t->nbytes;
        uint64_t ob;
        gguf_type_nbytes(rw[i].type, t->n_elements, &ob);
        st->bytes_out += ob;
        if (rw[i].type != t->type) {
            st->elems_quantized += t->n_elements;
            st->quant_seconds += t_spent;
        } else {
            st->copy_seconds += t_spent;
        }
        const double now = mono_s() - t0;
        if (o->log && (rw[i].type != t->type || now - prog.last > 2.0 || i + 1 == f->n_tensors)) {
            prog.last = now;
            fprintf(o->log, "[%5.1f%%] %4llu/%llu %-36s %-7s -> %-7s%s  %.1f s\n", total ? 100.0 * (double)prog.done / (double)total : 100.0,
                    (unsigned long long)(i + 1), (unsigned long long)f->n_tensors, t->name, gguf_type_name(t->type),
                    gguf_type_name(rw[i].type), rw[i].fallback ? " (fallback: rows not a multiple of the block)" : rw[i].im ? " (imatrix)" : "", now);
            fflush(o->log);
        }
    }
    if (gguf_writer_finish(w, true, err, err_len)) {
        begun = false;
        goto close_file;
    }
    begun = false;
    st->n_tensors = (uint32_t)f->n_tensors;
    st->bytes_in = total;
    st->seconds = mono_s() - t0;
    rc = 0;
close_file:
    if (begun) writer_discard(w);
    free(buf.rows);
    free(buf.out);
    free(buf.wk);
    free(buf.tid);
    free(rw);
    gguf_writer_destroy(w);
    gguf_close(f);
    return rc;
}

/* ---- the report ---- */

static int eval_all(const char *path, const int32_t *tokens, uint32_t n, float **logits, uint32_t *n_vocab, char *err, size_t err_len)
{
    struct engine_options opt;
    engine_options_default(&opt);
    opt.model_path = path;
    opt.backend = ENGINE_BACKEND_REF;
    struct engine *e = NULL;
    struct session *s = NULL;
    int rc = -1;
    if (engine_open(&e, &opt, err, err_len)) return -1; /* its message names the file already */
    struct engine_info info;
    engine_get_info(e, &info);
    *n_vocab = info.n_vocab;
    if (!(*logits = malloc((size_t)n * info.n_vocab * sizeof **logits))) {
        errf(err, err_len, "out of memory");
        goto close_engine;
    }
    if (session_create(e, n, &s, err, err_len) || session_eval(s, tokens, n, *logits, true, err, err_len)) {
        errf_prefix(err, err_len, "%s", path);
        goto close_engine;
    }
    rc = 0;
close_engine:
    if (s) session_destroy(s);
    engine_close(e);
    return rc;
}

/* KL(p_a || p_b) per position of logits a, b [n][nv], its mean and largest, and how often the
 * argmaxes agree. */
static void compare_logits(const float *a, const float *b, uint32_t n, uint32_t nv, struct quantize_kl *out)
{
    double sum = 0;
    memset(out, 0, sizeof *out);
    for (uint32_t p = 0; p < n; p++) {
        const float *x = a + (size_t)p * nv, *y = b + (size_t)p * nv;
        double mx = x[0], my = y[0], zx = 0, zy = 0, kl = 0;
        uint32_t ax = 0, ay = 0;
        for (uint32_t i = 1; i < nv; i++) {
            if (x[i] > mx) mx = x[i], ax = i;
            if (y[i] > my) my = y[i], ay = i;
        }
        for (uint32_t i = 0; i < nv; i++) {
            zx += exp(x[i] - mx);
            zy += exp(y[i] - my);
        }
        const double lzx = log(zx), lzy = log(zy);
        for (uint32_t i = 0; i < nv; i++) {
            const double lpx = x[i] - mx - lzx, lpy = y[i] - my - lzy;
            kl += exp(lpx) * (lpx - lpy);
        }
        if (kl < 0) kl = 0; /* rounding: KL is never negative */
        sum += kl;
        if (kl > out->kl_max) out->kl_max = kl;
        out->top1_same += ax == ay;
    }
    out->kl_mean = n ? sum / n : 0;
}

/* The tensor the per-type model takes for the source's tensor i: the quantized file's when
 * that stores it as type and the source does not, else the source's. NULL: the quantized
 * file's tensor of that name has another shape (not a quantize result of this source). */
static const struct gguf_tensor *mix_pick(const struct gguf_file *src, const struct gguf_file *q, uint64_t i,
                                          enum gguf_type type)
{
    const struct gguf_tensor *t = &src->tensors[i], *u = gguf_find_tensor(q, t->name);
    if (!u || u->type == t->type || u->type != type) return t;
    if (u->n_dims != t->n_dims || memcmp(u->ne, t->ne, sizeof t->ne)) return NULL;
    return u;
}

/* Writes path: the quantized file's keys and, tensor by tensor, mix_pick's choice. */
static int write_type_mix(const struct gguf_file *src, const struct gguf_file *q, enum gguf_type type, const char *path,
                          char *err, size_t err_len)
{
    struct gguf_writer *w = gguf_writer_create();
    bool begun = false;
    int rc = -1;
    if (!w) return errf(err, err_len, "out of memory");
    for (uint64_t i = 0; i < q->n_kv; i++)
        if (gguf_writer_copy_kv(w, &q->kv[i])) {
            errf(err, err_len, "%s: cannot copy key %s", path, q->kv[i].key);
            goto destroy_writer;
        }
    for (uint64_t i = 0; i < src->n_tensors; i++) {
        const struct gguf_tensor *t = mix_pick(src, q, i, type);
        if (!t) {
            errf(err, err_len, "report: %s has another shape in the two files", src->tensors[i].name);
            goto destroy_writer;
        }
        if (gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, t->ne, NULL)) {
            errf(err, err_len, "%s: cannot register", t->name);
            goto destroy_writer;
        }
    }
    if (gguf_writer_begin(w, path, err, err_len)) goto destroy_writer;
    begun = true;
    for (uint64_t i = 0; i < src->n_tensors; i++) {
        const struct gguf_tensor *t = mix_pick(src, q, i, type);
        if (gguf_writer_stream_tensor(w, t->data, t->nbytes, err, err_len)) goto destroy_writer;
    }
    begun = false;
    if (gguf_writer_finish(w, true, err, err_len)) goto destroy_writer;
    rc = 0;
destroy_writer:
    if (begun) writer_discard(w);
    gguf_writer_destroy(w);
    return rc;
}

/* The types the quantized file writes where the source has another, in order of first use,
 * with how many tensors each. */
static int report_types(const struct gguf_file *src, const struct gguf_file *q, struct quantize_report *rep, char *err,
                        size_t err_len)
{
    for (uint64_t i = 0; i < src->n_tensors; i++) {
        const struct gguf_tensor *t = &src->tensors[i], *u = gguf_find_tensor(q, t->name);
        if (!u || u->type == t->type) continue;
        uint32_t k = 0;
        while (k < rep->n_types && rep->per_type[k].type != u->type) k++;
        if (k == rep->n_types) {
            if (k == QUANTIZE_REPORT_MAX_TYPES)
                return errf(err, err_len, "report: more than %d tensor types", QUANTIZE_REPORT_MAX_TYPES);
            rep->per_type[rep->n_types++].type = u->type;
        }
        rep->per_type[k].n_tensors++;
    }
    return 0;
}

int quantize_report_run(const char *src, const char *quantized, const int32_t *tokens, uint32_t n_tokens,
                        struct quantize_report *rep, char *err, size_t err_len)
{
    memset(rep, 0, sizeof *rep);
    float *a = NULL, *b = NULL;
    uint32_t va = 0, vb = 0;
    struct gguf_file *fs = NULL, *fq = NULL;
    char mix[4096];
    int rc = -1;
    if (!n_tokens) return errf(err, err_len, "report: no tokens");
    if (eval_all(src, tokens, n_tokens, &a, &va, err, err_len) || eval_all(quantized, tokens, n_tokens, &b, &vb, err, err_len))
        goto free_logits;
    if (va != vb) {
        errf(err, err_len, "report: vocabularies differ (%u and %u)", va, vb);
        goto free_logits;
    }
    rep->n_positions = n_tokens;
    compare_logits(a, b, n_tokens, va, &rep->all);
    if (gguf_open(&fs, src, err, err_len) || gguf_open(&fq, quantized, err, err_len) || report_types(fs, fq, rep, err, err_len))
        goto free_logits;
    if (rep->n_types == 1) rep->per_type[0].kl = rep->all; /* the mix would be the quantized file itself */
    for (uint32_t k = 0; rep->n_types > 1 && k < rep->n_types; k++) {
        struct quantize_report_type *pt = &rep->per_type[k];
        if ((size_t)snprintf(mix, sizeof mix, "%s.only-%s", quantized, gguf_type_name(pt->type)) >= sizeof mix) {
            errf(err, err_len, "report: %s: path too long", quantized);
            goto free_logits;
        }
        free(b);
        b = NULL;
        int e = write_type_mix(fs, fq, pt->type, mix, err, err_len);
        if (!e) e = eval_all(mix, tokens, n_tokens, &b, &vb, err, err_len);
        unlink(mix);
        if (e) goto free_logits;
        compare_logits(a, b, n_tokens, va, &pt->kl);
    }
    rc = 0;
free_logits:
    gguf_close(fq);
    gguf_close(fs);
    free(a);
    free(b);
    return rc;
}
