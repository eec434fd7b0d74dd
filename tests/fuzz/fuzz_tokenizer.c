/* Fuzz target: arbitrary bytes through each pre-tokenizer and the BPE of the hand-made
 * vocabulary (tests/tok_vocab.h), with and without special-token parsing. Checks that
 * literal encoding round-trips byte for byte and that the streaming detokenizer only ever
 * emits valid UTF-8. The first input byte picks the pre-tokenizer and the flags. */
#include "engine/tokenizer.h"
#include "tests/tok_vocab.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static struct tokenizer *toks[3];

static int valid_utf8(const char *s, size_t n)
{
    const uint8_t *p = (const uint8_t *)s;
    for (size_t i = 0; i < n;) {
        size_t len = p[i] < 0x80 ? 1 : (p[i] & 0xE0) == 0xC0 ? 2 : (p[i] & 0xF0) == 0xE0 ? 3 : (p[i] & 0xF8) == 0xF0 ? 4 : 0;
        if (!len || i + len > n) return 0;
        for (size_t k = 1; k < len; k++)
            if ((p[i + k] & 0xC0) != 0x80) return 0;
        i += len;
    }
    return 1;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    static const char *const pres[3] = { "deepseek-v3", "deepseek-llm", "gpt2" };
    for (int i = 0; i < 3; i++) {
        char path[64], err[256];
        snprintf(path, sizeof path, "/tmp/fuzz_tokenizer_%d_%d.gguf", (int)getpid(), i);
        if (tok_vocab_write(path, pres[i], NULL, NULL, 0) || tok_create_from_file(&toks[i], path, err, sizeof err))
            abort();
        unlink(path);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    const struct tokenizer *t = toks[data[0] % 3];
    unsigned flags = (data[0] & 4) ? TOK_ENCODE_PARSE_SPECIAL : 0;
    const char *text = (const char *)data + 1;
    size_t len = size - 1;
    struct tok_vec ids = { 0 };
    char err[256];
    if (tok_encode(t, text, len, flags, &ids, err, sizeof err)) abort();
    char *back;
    size_t back_len;
    if (tok_decode(t, ids.ids, ids.n, TOK_DECODE_SPECIAL, &back, &back_len, err, sizeof err)) abort();
    if (back_len != len || memcmp(back, text, len)) abort();
    free(back);
    struct tok_stream st;
    tok_stream_init(&st, t, TOK_DECODE_SPECIAL);
    size_t cap = tok_stream_buf_size(t);
    char *buf = malloc(cap);
    for (size_t i = 0; i < ids.n; i++) {
        int n = tok_stream_feed(&st, ids.ids[i], buf, cap);
        if (n < 0 || !valid_utf8(buf, (size_t)n)) abort();
    }
    int n = tok_stream_flush(&st, buf, cap);
    if (n < 0 || !valid_utf8(buf, (size_t)n)) abort();
    free(buf);
    tok_vec_free(&ids);
    return 0;
}
