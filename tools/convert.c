/* `flashbox convert`: the driver. Loads config.json and the shard set, builds and checks
 * the whole plan before writing a byte, then streams every GGUF tensor in bounded chunks
 * (a few MB of rows at a time, whatever the model size) into MODEL.gguf.tmp, reopens that
 * file and binds it with model_open, and only then renames it onto the output name. */
#include "tools/convert.h"
#include "common/errmsg.h"
#include "common/mono_clock.h"
#include "engine/model/quant.h"
#include "tools/ckpt_formats.h"
#include "tools/convert_plan.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define CHUNK_ELEMS (1u << 20) /* elements per streamed chunk: bounds the working memory */

struct driver {
    const struct convert_opts *o;
    const struct conv_config *cfg;
    struct gguf_writer *w;
    uint64_t done, total;        /* checkpoint bytes read so far / in all */
    double t0, last_print;
    bool line_open;              /* a progress line without its newline is on stderr */
    const char *current;         /* GGUF tensor being written */
    uint8_t *in;                 /* [CHUNK_ELEMS * 8] raw source bytes */
    uint8_t *in2;                /* [CHUNK_ELEMS / 32] FP4 scales of the rows in in */
    float *f;                    /* [CHUNK_ELEMS] dequantized rows */
    uint8_t *out;                /* [CHUNK_ELEMS * 4] converted bytes */
    uint8_t *grid;               /* FP8 scale grid of the current source */
    size_t grid_cap;
    char *err;
    size_t len;
};

/* Prints "NN.N% done of total, rate, ETA, tensor": on a terminal as one line rewritten in
 * place four times a second, otherwise a line every ten seconds. */
static void progress(struct driver *d, bool final)
{
    if (d->o->quiet) return;
    double t = mono_s(), el = t - d->t0;
    bool tty = isatty(2);
    if (!final && t - d->last_print < (tty ? 0.25 : 10.0)) return;
    d->last_print = t;
    double rate = el > 0 ? (double)d->done / el : 0, pct = d->total ? 100.0 * (double)d->done / (double)d->total : 100;
    double eta = rate > 0 ? (double)(d->total - d->done) / rate : 0;
    const bool gb = d->total >= 1000000000ull;
    const double unit = gb ? 1e9 : 1e6;
    fprintf(stderr, "%s[%5.1f%%] %.*f / %.*f %s  %.0f MB/s  ETA %d:%02d:%02d  %-40s%s", tty ? "\r" : "", pct, gb ? 1 : 0,
            (double)d->done / unit, gb ? 1 : 0, (double)d->total / unit, gb ? "GB" : "MB", rate / 1e6, (int)(eta / 3600),
            (int)(eta / 60) % 60, (int)eta % 60, final ? "verified" : d->current, tty && !final ? "" : "\n");
    d->line_open = tty && !final;
}

static int emit(struct driver *d, const void *p, uint64_t n)
{
    if (d->o->cancel && *d->o->cancel) return errf(d->err, d->len, "interrupted; nothing written");
    return gguf_writer_stream_part(d->w, p, n, d->err, d->len);
}

static int src_read(struct driver *d, const struct conv_entry *e, uint64_t off, void *dst, uint64_t n)
{
    if (st_read(e->file, e->t, off, dst, n, d->err, d->len)) return -1;
    d->done += n;
    progress(d, false);
    return 0;
}

/* Loads the whole scale grid of an FP8 source (small: one byte per 128x128 block). */
static int load_grid(struct driver *d, const struct conv_entry *scale)
{
    if (scale->t->nbytes > d->grid_cap) {
        uint8_t *g = realloc(d->grid, scale->t->nbytes);
        if (!g) return errf(d->err, d->len, "out of memory");
        d->grid = g;
        d->grid_cap = scale->t->nbytes;
    }
    return src_read(d, scale, 0, d->grid, scale->t->nbytes);
}

/* Rows [row0, row0+n) of a dense source as float32 into dst ([n][cols]). For FP8 the grid
 * must be loaded. */
static int rows_f32(struct driver *d, const struct conv_src *s, uint64_t row0, uint64_t n, uint64_t cols, float *dst)
{
    const enum st_dtype dt = s->w->t->dtype;
    const uint64_t esz = st_dtype_size(dt), cnt = n * cols;
    if (src_read(d, s->w, row0 * cols * esz, d->in, cnt * esz)) return -1;
    switch (dt) {
    case ST_F8_E4M3: {
        uint64_t bad;
        if (ckpt_fp8_dequant_rows(d->in, d->grid, row0, n, cols, dst, &bad))
            return errf(d->err, d->len, "%s: NaN weight or scale at row %" PRIu64 ", column %" PRIu64, s->w->name,
                        row0 + bad / cols, bad % cols);
        return 0;
    }
    case ST_F32: memcpy(dst, d->in, cnt * 4); return 0;
    case ST_BF16: return dequant_row(GGUF_TYPE_BF16, d->in, dst, cnt);
    case ST_F16: return dequant_row(GGUF_TYPE_F16, d->in, dst, cnt);
    default: return errf(d->err, d->len, "%s: dtype %s cannot be read as floats", s->w->name, st_dtype_name(dt));
    }
}

/* Converts n_rows x cols floats to type and streams them. */
static int emit_f32(struct driver *d, enum gguf_type type, const float *src, uint64_t n_rows, uint64_t cols)
{
    const uint64_t cnt = n_rows * cols;
    uint64_t nbytes;
    if (gguf_type_nbytes(type, cnt, &nbytes)) return errf(d->err, d->len, "%s: bad row size", d->current);
    switch (type) {
    case GGUF_TYPE_F32: return emit(d, src, cnt * 4);
    case GGUF_TYPE_BF16:
        for (uint64_t i = 0; i < cnt; i++) {
            uint16_t h = f32_to_bf16(src[i]);
            memcpy(d->out + 2 * i, &h, 2);
        }
        break;
    case GGUF_TYPE_F16:
        for (uint64_t i = 0; i < cnt; i++) {
            uint16_t h = f32_to_fp16(src[i]);
            if ((h & 0x7c00) == 0x7c00)
                return errf(d->err, d->len, "%s: value %g at element %" PRIu64 " of the chunk exceeds F16 (use --dense bf16)",
                            d->current, (double)src[i], i);
            memcpy(d->out + 2 * i, &h, 2);
        }
        break;
    case GGUF_TYPE_Q8_0: quantize_row_q8_0(src, (struct block_q8_0 *)d->out, cnt); break;
    default: return errf(d->err, d->len, "%s: cannot write %s from floats", d->current, gguf_type_name(type));
    }
    return emit(d, d->out, nbytes);
}

static uint64_t chunk_rows(uint64_t cols) { return cols >= CHUNK_ELEMS ? 1 : CHUNK_ELEMS / cols; }

/* One dense source [rows][cols] to type, chunk by chunk. */
static int write_dense(struct driver *d, const struct conv_src *s, enum gguf_type type, uint64_t rows, uint64_t cols)
{
    if (cols > CHUNK_ELEMS) return errf(d->err, d->len, "%s: rows of %" PRIu64 " elements are too long", s->w->name, cols);
    const enum st_dtype dt = s->w->t->dtype;
    const uint64_t step = chunk_rows(cols);
    if ((dt == ST_BF16 && type == GGUF_TYPE_BF16) || (dt == ST_F16 && type == GGUF_TYPE_F16) ||
        (dt == ST_F32 && type == GGUF_TYPE_F32)) {
        /* Same format on both sides: bytes go through unchanged. */
        const uint64_t esz = st_dtype_size(dt);
        for (uint64_t r = 0; r < rows; r += step) {
            uint64_t n = rows - r < step ? rows - r : step;
            if (src_read(d, s->w, r * cols * esz, d->in, n * cols * esz) || emit(d, d->in, n * cols * esz)) return -1;
        }
        return 0;
    }
    if (dt == ST_F8_E4M3 && load_grid(d, s->scale)) return -1;
    for (uint64_t r = 0; r < rows; r += step) {
        uint64_t n = rows - r < step ? rows - r : step;
        if (rows_f32(d, s, r, n, cols, d->f) || emit_f32(d, type, d->f, n, cols)) return -1;
    }
    return 0;
}

static int write_fp4_expert(struct driver *d, const struct conv_src *s, uint64_t rows, uint64_t cols)
{
    const uint64_t step = chunk_rows(cols), nb = cols / CKPT_FP4_BLOCK;
    for (uint64_t r = 0; r < rows; r += step) {
        uint64_t n = rows - r < step ? rows - r : step, bad;
        if (src_read(d, s->w, r * (cols / 2), d->in, n * (cols / 2)) || src_read(d, s->scale, r * nb, d->in2, n * nb))
            return -1;
        if (ckpt_fp4_repack_mxfp4(d->in, d->in2, n, cols, (struct block_mxfp4 *)d->out, &bad))
            return errf(d->err, d->len, "%s: NaN scale (255) at row %" PRIu64 ", block %" PRIu64, s->scale->name,
                        r + bad / nb, bad % nb);
        if (emit(d, d->out, n * nb * sizeof(struct block_mxfp4))) return -1;
    }
    return 0;
}

static int write_tid2eid(struct driver *d, const struct conv_item *it)
{
    const struct conv_src *s = &it->src[0];
    const uint64_t cols = it->cols, step = chunk_rows(cols), esz = st_dtype_size(s->w->t->dtype);
    for (uint64_t r = 0; r < it->rows; r += step) {
        uint64_t n = it->rows - r < step ? it->rows - r : step;
        if (src_read(d, s->w, r * cols * esz, d->in, n * cols * esz)) return -1;
        for (uint64_t i = 0; i < n * cols; i++) {
            int64_t v;
            if (esz == 8) {
                memcpy(&v, d->in + 8 * i, 8);
            } else {
                int32_t v32;
                memcpy(&v32, d->in + 4 * i, 4);
                v = v32;
            }
            if (v < 0 || v >= (int64_t)d->cfg->n_expert)
                return errf(d->err, d->len, "%s: entry %" PRIu64 " is expert %" PRId64 ", expected 0..%u", s->w->name,
                            r * cols + i, v, d->cfg->n_expert - 1);
            int32_t o = (int32_t)v;
            memcpy(d->out + 4 * i, &o, 4);
        }
        if (emit(d, d->out, n * cols * 4)) return -1;
    }
    return 0;
}

static int write_item(struct driver *d, const struct conv_item *it)
{
    d->current = it->name;
    switch (it->kind) {
    case CONV_VECTOR:
    case CONV_MATRIX: return write_dense(d, &it->src[0], it->type, it->rows, it->cols);
    case CONV_TID2EID: return write_tid2eid(d, it);
    case CONV_EXPERTS:
        for (uint32_t e = 0; e < it->n_src; e++) {
            int rc = it->type == GGUF_TYPE_MXFP4 ? write_fp4_expert(d, &it->src[e], it->rows, it->cols)
                                                 : write_dense(d, &it->src[e], it->type, it->rows, it->cols);
            if (rc) return -1;
        }
        return 0;
    }
    return errf(d->err, d->len, "%s: unknown plan item", it->name);
}

/* The written file must load: every trunk tensor binds by name, shape and type, and every
 * planned tensor (MTP included) is there with its type and shape. */
static int verify(const char *path, const struct conv_plan *p, uint64_t *size, char *err, size_t len)
{
    struct model *m;
    if (model_open(&m, path, err, len)) return errf_prefix(err, len, "verification failed");
    int rc = 0;
    for (size_t i = 0; i < p->n_items && !rc; i++) {
        const struct conv_item *it = &p->items[i];
        const struct gguf_tensor *t = gguf_find_tensor(m->file, it->name);
        if (!t || t->type != it->type || t->n_dims != it->n_dims || memcmp(t->ne, it->ne, it->n_dims * sizeof(uint64_t)))
            rc = errf(err, len, "verification failed: %s: missing or with another type or shape in %s", it->name, path);
    }
    *size = m->file->size;
    model_close(m);
    return rc;
}

static void dir_name(char *dst, size_t n, const char *dir)
{
    size_t l = strlen(dir);
    while (l > 1 && dir[l - 1] == '/') l--;
    size_t s = l;
    while (s > 0 && dir[s - 1] != '/') s--;
    snprintf(dst, n, "%.*s", (int)(l - s), dir + s);
    if (!dst[0] || !strcmp(dst, ".") || !strcmp(dst, "..") || !strcmp(dst, "/")) snprintf(dst, n, "deepseek4");
}

int convert_run(const struct convert_opts *o, struct convert_stats *stats, char *err, size_t len)
{
    memset(stats, 0, sizeof *stats);
    struct driver d = { .o = o, .err = err, .len = len, .t0 = mono_s() };
    d.last_print = d.t0;
    struct conv_config cfg;
    struct conv_shards shards = { 0 };
    struct conv_plan plan = { 0 };
    char path[4096];
    int rc = -1;
    bool streaming = false;
    snprintf(path, sizeof path, "%s/config.json", o->hf_dir);
    if (conv_config_load(path, &cfg, err, len)) return -1;
    d.cfg = &cfg;
    if (conv_shards_open(&shards, o->hf_dir, err, len)) return -1;
    if (conv_plan_build(&plan, &cfg, &shards, !o->no_mtp, o->dense, err, len)) goto out;
    if (!(d.w = gguf_writer_create())) {
        errf(err, len, "out of memory");
        goto out;
    }
    bool mxfp4 = false;
    for (size_t i = 0; i < plan.n_items; i++) {
        const struct conv_item *it = &plan.items[i];
        mxfp4 |= it->type == GGUF_TYPE_MXFP4;
        d.total += it->src_bytes;
    }
    char name[256];
    dir_name(name, sizeof name, o->hf_dir);
    if (conv_config_add_metadata(&cfg, d.w, plan.n_blocks, name, mxfp4, err, len)) goto out;
    snprintf(path, sizeof path, "%s/tokenizer.json", o->tokenizer_dir ? o->tokenizer_dir : o->hf_dir);
    if (conv_tokenizer_add(path, &cfg, d.w, err, len)) goto out;
    if (conv_provenance_add(o, &shards, d.w, err, len)) goto out;
    for (size_t i = 0; i < plan.n_items; i++) {
        const struct conv_item *it = &plan.items[i];
        if (gguf_writer_add_tensor(d.w, it->name, it->type, it->n_dims, it->ne, NULL)) {
            errf(err, len, "%s: cannot register the tensor (repeated name?)", it->name);
            goto out;
        }
    }
    d.in = malloc((size_t)CHUNK_ELEMS * 8);
    d.in2 = malloc((size_t)CHUNK_ELEMS / CKPT_FP4_BLOCK);
    d.f = malloc((size_t)CHUNK_ELEMS * sizeof(float));
    d.out = malloc((size_t)CHUNK_ELEMS * 4);
    if (!d.in || !d.in2 || !d.f || !d.out) {
        errf(err, len, "out of memory");
        goto out;
    }
    if (gguf_writer_begin(d.w, o->out_path, err, len)) goto out;
    streaming = true;
    for (size_t i = 0; i < plan.n_items; i++)
        if (write_item(&d, &plan.items[i])) {
            errf_prefix(err, len, "%s", plan.items[i].name);
            goto out;
        }
    snprintf(path, sizeof path, "%s.tmp", o->out_path);
    d.current = "verifying";
    if (verify(path, &plan, &stats->bytes_written, err, len)) goto out;
    streaming = false;
    if (gguf_writer_finish(d.w, true, err, len)) goto out;
    stats->n_tensors = plan.n_items;
    stats->bytes_read = d.done;
    stats->seconds = mono_s() - d.t0;
    progress(&d, true);
    rc = 0;
out:
    if (d.line_open) fputc('\n', stderr); /* the error message starts on its own line */
    if (streaming) gguf_writer_finish(d.w, false, NULL, 0);
    if (d.w) gguf_writer_destroy(d.w);
    free(d.in);
    free(d.in2);
    free(d.f);
    free(d.out);
    free(d.grid);
    conv_plan_free(&plan);
    conv_shards_close(&shards);
    return rc;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: flashbox convert --hf DIR --out MODEL.gguf [--dense q8_0|bf16|f16] [--tokenizer DIR]\n"
               "                        [--no-mtp] [--quiet]\n"
               "  Converts the official DeepSeek-V4 safetensors checkpoint (config.json,\n"
               "  model.safetensors.index.json, shards, tokenizer.json) to a deepseek4 GGUF:\n"
               "  FP4 experts repacked losslessly to MXFP4, FP8 weights dequantized to --dense\n"
               "  (default q8_0; bf16 is exact), BF16 weights kept, norms and the rest F32.\n"
               "  --tokenizer DIR  where tokenizer.json is (default: --hf DIR)\n"
               "  --no-mtp         leave out the MTP block (mtp.0.*)\n");
}

static volatile sig_atomic_t interrupted;
static void on_signal(int sig) { interrupted = sig; }

int tool_convert_main(int argc, char **argv)
{
    struct convert_opts o = { .dense = CONVERT_DENSE_Q8_0, .cancel = &interrupted };
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has = i + 1 < argc;
        if (!strcmp(a, "--hf") && has) o.hf_dir = argv[++i];
        else if (!strcmp(a, "--out") && has) o.out_path = argv[++i];
        else if (!strcmp(a, "--tokenizer") && has) o.tokenizer_dir = argv[++i];
        else if (!strcmp(a, "--dense") && has) {
            const char *v = argv[++i];
            if (!strcmp(v, "q8_0")) o.dense = CONVERT_DENSE_Q8_0;
            else if (!strcmp(v, "bf16")) o.dense = CONVERT_DENSE_BF16;
            else if (!strcmp(v, "f16")) o.dense = CONVERT_DENSE_F16;
            else {
                fprintf(stderr, "flashbox convert: --dense %s: expected q8_0, bf16 or f16\n", v);
                return 2;
            }
        } else if (!strcmp(a, "--no-mtp")) o.no_mtp = true;
        else if (!strcmp(a, "--quiet")) o.quiet = true;
        else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "flashbox convert: unknown or incomplete argument '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!o.hf_dir || !o.out_path) {
        usage(stderr);
        return 2;
    }
    /* Ctrl-C or a stop must not leave a temporary file of the model's size behind. */
    struct sigaction sa = { .sa_handler = on_signal };
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    char err[1024];
    struct convert_stats st;
    if (convert_run(&o, &st, err, sizeof err)) {
        fprintf(stderr, "flashbox convert: %s\n", err);
        return 1;
    }
    printf("%s: %" PRIu64 " tensors, %.1f MB read, %.1f MB written in %.2f s (%.0f MB/s read)\n", o.out_path,
           st.n_tensors, (double)st.bytes_read / 1e6, (double)st.bytes_written / 1e6, st.seconds,
           st.seconds > 0 ? (double)st.bytes_read / 1e6 / st.seconds : 0.0);
    return 0;
}
