/* `flashbox logits`: the logits of every position of a token sequence (or of its last N),
 * as raw little-endian float32 [n_tokens][n_vocab] (--out) or the top K per position (--top).
 * Acceptance checks use this interface; keep it stable. */
#include "engine/engine.h"
#include "common/safe_open.h"
#include "firmware/backend_pick.h"
#include "firmware/commands.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void usage(FILE *out)
{
    fprintf(out,
            "usage: flashbox logits -m MODEL.gguf (--tokens 1,2,3[,...] | --tokens-file FILE)\n"
            "                       (--out FILE | --top K | --compare FILE)\n"
            "                       [--backend ref|vulkan] [--incremental] [--ctx N] [--last N]\n"
            "  --tokens-file FILE  the ids from a file, separated by commas, spaces or newlines\n"
            "  --out FILE      write float32 little-endian logits [n_tokens][n_vocab]\n"
            "  --last N        only the last N positions' logits (the others are evaluated without)\n"
            "  --ctx N         the session's context (default: the number of tokens)\n"
            "  --top K         print the K largest (id, logit) of each position instead\n"
            "  --compare FILE  against logits of the same positions written by --out (e.g. with --kv f32):\n"
            "                  print the relative error ||a - b|| / ||b|| per position (max, mean) and top-1 agreement\n"
            "  --backend B     auto (default: vulkan on a GPU or, on a CPU driver, for models of 64 MiB or more; else ref), ref (CPU reference) or vulkan\n"
            "  --kv T          storage of compressed entries and indexer keys: f32 (default), f16 or fp8\n"
            "  --incremental   feed the tokens one at a time instead of one batch\n"
            "  --expert-cache-mb N   page routed experts through a cache of N MiB (default: all resident)\n"
            "  --expert-read auto|pagecache|direct   how paged experts are read (default auto)\n");
}

/* Compares logits [n][n_vocab] with those in file path (float32, as --out writes them):
 * prints the relative error ||a - b|| / ||b|| of each position's logits (max and mean) and
 * how many positions have the same top-1. */
static int compare_logits(const char *path, const float *logits, long n, uint32_t n_vocab, char *err, size_t err_len)
{
    const uint64_t row = (uint64_t)n_vocab * sizeof *logits, want = (uint64_t)n * row;
    int fd = safe_open(path, O_RDONLY, 0, err, err_len);
    if (fd < 0) return -1;
    struct stat st;
    float *b = malloc(row);
    int rc = -1;
    if (!b || fstat(fd, &st)) {
        snprintf(err, err_len, "%s: %s", path, b ? strerror(errno) : "out of memory");
        goto done;
    }
    if ((uint64_t)st.st_size != want) {
        snprintf(err, err_len, "%s: %llu bytes, expected %llu (%ld positions of %u float32 logits)", path,
                 (unsigned long long)st.st_size, (unsigned long long)want, n, n_vocab);
        goto done;
    }
    double worst = 0, sum = 0;
    long agree = 0;
    for (long t = 0; t < n; t++) {
        if (pread(fd, b, row, (off_t)((uint64_t)t * row)) != (ssize_t)row) {
            snprintf(err, err_len, "%s: short read at position %ld", path, t);
            goto done;
        }
        const float *a = logits + (size_t)t * n_vocab;
        double num = 0, den = 0;
        uint32_t ia = 0, ib = 0;
        for (uint32_t i = 0; i < n_vocab; i++) {
            num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
            den += (double)b[i] * b[i];
            if (a[i] > a[ia]) ia = i;
            if (b[i] > b[ib]) ib = i;
        }
        const double rel = den > 0 ? sqrt(num / den) : sqrt(num);
        worst = rel > worst ? rel : worst;
        sum += rel;
        agree += ia == ib;
    }
    printf("compared with %s over %ld positions: relative error max %.3g mean %.3g; top-1 agrees at %ld of %ld\n", path,
           n, worst, n ? sum / n : 0.0, agree, n);
    rc = 0;
done:
    free(b);
    close(fd);
    return rc;
}

/* Parses ids separated by commas or white space ("1,2,3", "1 2\n3") into a new array;
 * returns the count or -1 with a message. */
static long parse_tokens(const char *s, int32_t **out)
{
    size_t cap = 16, n = 0;
    int32_t *v = malloc(cap * sizeof *v);
    if (!v) return -1;
    const char *p = s;
    while (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r') p++;
    while (*p) {
        char *end;
        errno = 0;
        long x = *p >= '0' && *p <= '9' ? strtol(p, &end, 10) : (end = (char *)p, 0);
        const char *sep = end;
        while (*sep == ' ' || *sep == '\n' || *sep == '\t' || *sep == '\r') sep++;
        if (end == p || errno || x < 0 || x > INT32_MAX || (*sep && *sep != ',' && sep == end)) {
            fprintf(stderr, "flashbox logits: tokens: bad id at \"%.20s\"\n", p);
            free(v);
            return -1;
        }
        if (n == cap) {
            int32_t *nv = realloc(v, (cap *= 2) * sizeof *v);
            if (!nv) {
                free(v);
                return -1;
            }
            v = nv;
        }
        v[n++] = (int32_t)x;
        p = *sep == ',' ? sep + 1 : sep;
        while (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r') p++;
    }
    if (n == 0) {
        fprintf(stderr, "flashbox logits: no tokens given\n");
        free(v);
        return -1;
    }
    *out = v;
    return (long)n;
}

/* The whole of a file as a string (NULL with a message). */
static char *read_file(const char *path)
{
    char err[512];
    int fd = safe_open(path, O_RDONLY, 0, err, sizeof err);
    FILE *f = fd >= 0 ? fdopen(fd, "rb") : NULL;
    if (!f) {
        if (fd >= 0) {
            snprintf(err, sizeof err, "%s: %s", path, strerror(errno));
            close(fd);
        }
        fprintf(stderr, "flashbox logits: %s\n", err);
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    char *b = malloc(cap);
    for (size_t got; b && (got = fread(b + n, 1, cap - n - 1, f)) > 0;) {
        n += got;
        if (n + 1 == cap) {
            char *nb = realloc(b, cap *= 2);
            if (!nb) free(b);
            b = nb;
        }
    }
    int bad = ferror(f);
    fclose(f);
    if (!b || bad) {
        fprintf(stderr, "flashbox logits: %s: %s\n", path, b ? "read error" : "out of memory");
        free(b);
        return NULL;
    }
    b[n] = 0;
    if (strlen(b) != n) {
        fprintf(stderr, "flashbox logits: %s: a NUL byte in a token file\n", path);
        free(b);
        return NULL;
    }
    return b;
}

/* Prints "pos: id:logit id:logit ..." for the k largest logits (ties: lower id first). */
static void print_top(const float *logits, uint32_t n_vocab, uint32_t k, uint32_t pos, uint32_t *best)
{
    if (k > n_vocab) k = n_vocab;
    uint32_t n = 0;
    for (uint32_t i = 0; i < n_vocab; i++) {
        /* insertion into best[0..n) kept in descending order; strict '>' keeps lower ids first */
        uint32_t j = n < k ? n++ : k;
        if (j == k && !(logits[i] > logits[best[k - 1]])) continue;
        if (j == k) j = k - 1;
        while (j > 0 && logits[i] > logits[best[j - 1]]) {
            best[j] = best[j - 1];
            j--;
        }
        best[j] = i;
    }
    printf("%u:", pos);
    for (uint32_t j = 0; j < n; j++) printf(" %u:%.6f", best[j], logits[best[j]]);
    printf("\n");
}

int cmd_logits(int argc, char **argv)
{
    struct engine_options opt;
    engine_options_default(&opt);
    opt.backend = ENGINE_BACKEND_AUTO;
    const char *tokens_arg = NULL, *tokens_file = NULL, *out_path = NULL, *compare_path = NULL;
    long top = 0, last = 0, ctx = 0;
    bool incremental = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if ((!strcmp(a, "-m") || !strcmp(a, "--model")) && v) opt.model_path = argv[++i];
        else if (!strcmp(a, "--tokens") && v) tokens_arg = argv[++i];
        else if (!strcmp(a, "--tokens-file") && v) tokens_file = argv[++i];
        else if (!strcmp(a, "--out") && v) out_path = argv[++i];
        else if (!strcmp(a, "--compare") && v) compare_path = argv[++i];
        else if ((!strcmp(a, "--last") || !strcmp(a, "--ctx")) && v) {
            char *end;
            long x = strtol(argv[++i], &end, 10);
            if (*end || x < 1 || x > UINT32_MAX) {
                fprintf(stderr, "flashbox logits: %s expects a positive number\n", a);
                return 2;
            }
            *(!strcmp(a, "--last") ? &last : &ctx) = x;
        }
        else if (!strcmp(a, "--top") && v) {
            char *end;
            top = strtol(argv[++i], &end, 10);
            if (*end || top < 1 || top > 1000000) {
                fprintf(stderr, "flashbox logits: --top expects 1..1000000\n");
                return 2;
            }
        } else if (!strcmp(a, "--backend") && v) {
            if (engine_backend_parse(argv[++i], &opt.backend)) {
                fprintf(stderr, "flashbox logits: unknown backend '%s' (ref, vulkan)\n", argv[i]);
                return 2;
            }
        } else if (!strcmp(a, "--kv") && v) {
            if (engine_kv_parse(argv[++i], &opt.kv)) {
                fprintf(stderr, "flashbox logits: --kv: '%s', expected f32, f16 or fp8\n", argv[i]);
                return 2;
            }
        } else if (!strcmp(a, "--expert-cache-mb") && v) {
            char *end;
            long long mb = strtoll(argv[++i], &end, 10);
            if (*end || mb < 1 || mb > (1ll << 30)) {
                fprintf(stderr, "flashbox logits: --expert-cache-mb expects a positive number of MiB\n");
                return 2;
            }
            opt.expert_cache_mb = (uint64_t)mb;
        } else if (!strcmp(a, "--expert-read") && v) {
            const char *r = argv[++i];
            if (!strcmp(r, "auto")) opt.expert_read = ENGINE_EXPERT_READ_AUTO;
            else if (!strcmp(r, "pagecache")) opt.expert_read = ENGINE_EXPERT_READ_PAGECACHE;
            else if (!strcmp(r, "direct")) opt.expert_read = ENGINE_EXPERT_READ_DIRECT;
            else {
                fprintf(stderr, "flashbox logits: --expert-read: '%s', expected auto, pagecache or direct\n", r);
                return 2;
            }
        } else if (!strcmp(a, "--incremental")) incremental = true;
        else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "flashbox logits: unknown or incomplete argument '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!opt.model_path || !tokens_arg == !tokens_file || (!out_path && !top && !compare_path)) {
        usage(stderr);
        return 2;
    }
    int32_t *tokens = NULL;
    char *text = tokens_file ? read_file(tokens_file) : NULL;
    if (tokens_file && !text) return 2;
    long n = parse_tokens(text ? text : tokens_arg, &tokens);
    free(text);
    if (n < 0) return 2;
    if (ctx && ctx < n) {
        fprintf(stderr, "flashbox logits: %ld tokens exceed --ctx %ld\n", n, ctx);
        free(tokens);
        return 2;
    }
    /* positions [first, n) get logits; the ones before are evaluated without */
    const long first = last && last < n ? n - last : 0, n_out = n - first;

    backend_resolve(&opt);
    char err[1024];
    int rc = 1;
    struct engine *e = NULL;
    struct session *s = NULL;
    float *logits = NULL;
    uint32_t *best = NULL;
    FILE *out = NULL;
    if (engine_open(&e, &opt, err, sizeof err)) goto fail;
    struct engine_info info;
    engine_get_info(e, &info);
    if (session_create(e, (uint32_t)(ctx ? ctx : n), &s, err, sizeof err)) goto fail;
    logits = malloc((size_t)n_out * info.n_vocab * sizeof *logits);
    best = malloc((top ? (size_t)top : 1) * sizeof *best);
    if (!logits || !best) {
        snprintf(err, sizeof err, "out of memory for %ld x %u logits", n_out, info.n_vocab);
        goto fail;
    }
    if (incremental) {
        for (long t = 0; t < n; t++)
            if (session_eval(s, &tokens[t], 1, t < first ? NULL : logits + (size_t)(t - first) * info.n_vocab, false, err,
                             sizeof err))
                goto fail;
    } else if ((first && session_eval(s, tokens, (uint32_t)first, NULL, false, err, sizeof err)) ||
               session_eval(s, tokens + first, (uint32_t)n_out, logits, true, err, sizeof err)) {
        goto fail;
    }
    if (out_path) {
        int ofd = safe_open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644, err, sizeof err);
        out = ofd >= 0 ? fdopen(ofd, "wb") : NULL;
        if (ofd >= 0 && !out) close(ofd);
        if (ofd < 0) goto fail;
        if (!out || fwrite(logits, sizeof *logits * info.n_vocab, (size_t)n_out, out) != (size_t)n_out || fclose(out) != 0) {
            snprintf(err, sizeof err, "%s: %s", out_path, strerror(errno));
            out = NULL;
            goto fail;
        }
        out = NULL;
    }
    if (compare_path && compare_logits(compare_path, logits, n_out, info.n_vocab, err, sizeof err)) goto fail;
    if (top)
        for (long t = 0; t < n_out; t++)
            print_top(logits + (size_t)t * info.n_vocab, info.n_vocab, (uint32_t)top, (uint32_t)(first + t), best);
    rc = 0;
fail:
    if (rc) fprintf(stderr, "flashbox logits: %s\n", err);
    if (out) fclose(out);
    free(best);
    free(logits);
    free(tokens);
    session_destroy(s);
    engine_close(e);
    return rc;
}
