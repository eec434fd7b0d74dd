/* Fuzz target, two modes picked by the first input byte:
 * - text (byte < 0xF0): arbitrary bytes through each pre-tokenizer and the BPE of the
 *   hand-made vocabulary (tests/tok_vocab.h), with and without special-token parsing;
 *   literal encoding must round-trip byte for byte and the streaming detokenizer must
 *   only ever emit valid UTF-8. The byte picks the pre-tokenizer and the flags.
 * - vocabulary (byte >= 0xF0): the rest is a GGUF image whose tokenizer metadata is
 *   loaded; a load must fail cleanly or give a tokenizer that encodes and decodes. */
#include "tests/utf8_check.h"
#include "engine/model/gguf.h"
#include "engine/text/tokenizer.h"
#include "tests/tok_vocab.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static struct tokenizer *toks[3];

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

static void fuzz_vocabulary(const uint8_t *data, size_t size)
{
    struct gguf_file *f;
    struct tokenizer *t;
    char err[256];
    if (gguf_parse(&f, data, size, err, sizeof err)) return;
    if (tok_create(&t, f, err, sizeof err) == 0) {
        static const char text[] = "abc <ctl> x\xff 12";
        struct tok_vec ids = { 0 };
        if (tok_encode(t, text, sizeof text - 1, TOK_ENCODE_PARSE_SPECIAL, &ids, err, sizeof err)) abort();
        char *back;
        size_t len;
        if (tok_decode(t, ids.ids, ids.n, TOK_DECODE_SPECIAL, &back, &len, err, sizeof err)) abort();
        free(back);
        tok_vec_free(&ids);
        tok_destroy(t);
    }
    gguf_close(f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    if (data[0] >= 0xF0) {
        fuzz_vocabulary(data + 1, size - 1);
        return 0;
    }
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
