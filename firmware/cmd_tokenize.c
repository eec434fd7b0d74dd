/* `flashbox tokenize -m MODEL [--special]`: UTF-8 text on stdin -> token ids, comma-separated
 * on one line. `flashbox detokenize -m MODEL`: comma-separated ids on stdin -> the text.
 * The text is taken byte for byte (a trailing newline is part of it). */
#include "engine/engine.h"
#include "firmware/commands.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Reads all of stdin into a malloc'd buffer (NUL-terminated). */
static char *read_stdin(size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    if (!buf) return NULL;
    for (;;) {
        if (n + 1 >= cap) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                return NULL;
            }
            buf = nb;
            cap *= 2;
        }
        size_t r = fread(buf + n, 1, cap - 1 - n, stdin);
        n += r;
        if (r == 0) break;
    }
    if (ferror(stdin)) {
        free(buf);
        return NULL;
    }
    buf[n] = 0;
    *len = n;
    return buf;
}

static int parse_args(int argc, char **argv, const char *cmd, const char **model, int *special, int *stats)
{
    for (int i = 1; i < argc; i++) {
        if ((!strcmp(argv[i], "-m") || !strcmp(argv[i], "--model")) && i + 1 < argc) {
            *model = argv[++i];
        } else if (special && !strcmp(argv[i], "--special")) {
            *special = 1;
        } else if (stats && !strcmp(argv[i], "--stats")) {
            *stats = 1;
        } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            if (special)
                printf("usage: flashbox %s -m MODEL.gguf [--special] [--stats] < text\n"
                       "  prints the token ids of stdin, comma-separated on one line\n"
                       "  --special  match control tokens written in the text (e.g. <｜User｜>)\n"
                       "  --stats    print the token count and speed to stderr\n", cmd);
            else
                printf("usage: flashbox %s -m MODEL.gguf < ids\n"
                       "  reads comma-separated token ids and writes their text\n", cmd);
            return 1;
        } else {
            fprintf(stderr, "flashbox %s: unknown argument '%s'\n", cmd, argv[i]);
            return 2;
        }
    }
    if (!*model) {
        fprintf(stderr, "flashbox %s: -m MODEL.gguf is required\n", cmd);
        return 2;
    }
    return 0;
}

int cmd_tokenize(int argc, char **argv)
{
    const char *model = NULL;
    int special = 0, stats = 0;
    int rc = parse_args(argc, argv, "tokenize", &model, &special, &stats);
    if (rc) return rc == 1 ? 0 : rc;
    char err[512];
    struct tokenizer *t;
    if (tok_create_from_file(&t, model, err, sizeof err)) {
        fprintf(stderr, "flashbox tokenize: %s\n", err);
        return 1;
    }
    size_t len;
    char *text = read_stdin(&len);
    if (!text) {
        fprintf(stderr, "flashbox tokenize: reading stdin: %s\n", strerror(errno));
        tok_destroy(t);
        return 1;
    }
    struct tok_vec ids = { 0 };
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    rc = tok_encode(t, text, len, special ? TOK_ENCODE_PARSE_SPECIAL : 0, &ids, err, sizeof err);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (rc) {
        fprintf(stderr, "flashbox tokenize: %s\n", err);
    } else {
        for (size_t i = 0; i < ids.n; i++) printf(i ? ",%d" : "%d", ids.ids[i]);
        printf("\n");
        if (stats) {
            double s = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
            fprintf(stderr, "%zu bytes -> %zu tokens in %.3f s: %.0f tokens/s, %.2f MB/s\n", len, ids.n, s,
                    (double)ids.n / s, (double)len / s / 1e6);
        }
    }
    tok_vec_free(&ids);
    free(text);
    tok_destroy(t);
    return rc ? 1 : (fflush(stdout) ? 1 : 0);
}

int cmd_detokenize(int argc, char **argv)
{
    const char *model = NULL;
    int rc = parse_args(argc, argv, "detokenize", &model, NULL, NULL);
    if (rc) return rc == 1 ? 0 : rc;
    char err[512];
    struct tokenizer *t;
    if (tok_create_from_file(&t, model, err, sizeof err)) {
        fprintf(stderr, "flashbox detokenize: %s\n", err);
        return 1;
    }
    size_t len;
    char *in = read_stdin(&len);
    struct tok_vec ids = { 0 };
    rc = 1;
    if (!in) {
        fprintf(stderr, "flashbox detokenize: reading stdin: %s\n", strerror(errno));
        goto done;
    }
    /* ids separated by commas and/or whitespace */
    for (char *p = in;;) {
        while (*p == ',' || isspace((unsigned char)*p)) p++;
        if (!*p) break;
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || v >= (long)tok_n_vocab(t)) {
            fprintf(stderr, "flashbox detokenize: token %zu: \"%.20s\", expected an id 0 .. %u\n", ids.n, p,
                    tok_n_vocab(t) - 1);
            goto done;
        }
        if (tok_vec_push(&ids, (int32_t)v)) {
            fprintf(stderr, "flashbox detokenize: out of memory\n");
            goto done;
        }
        p = end;
    }
    char *text;
    size_t text_len;
    if (tok_decode(t, ids.ids, ids.n, TOK_DECODE_SPECIAL, &text, &text_len, err, sizeof err)) {
        fprintf(stderr, "flashbox detokenize: %s\n", err);
        goto done;
    }
    fwrite(text, 1, text_len, stdout);
    free(text);
    rc = fflush(stdout) ? 1 : 0;
done:
    tok_vec_free(&ids);
    free(in);
    tok_destroy(t);
    return rc;
}
