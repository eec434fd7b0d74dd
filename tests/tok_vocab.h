/* A hand-made byte-level BPE vocabulary written to a GGUF, for tokenizer tests and the
 * tokenizer fuzz target: ids 0..255 are the byte symbols (id = byte), then "ab" 256,
 * "bc" 257, "abc" 258, the control token "<ctl>" 259, the user-defined token "<ud>" 260;
 * merges in rank order "b c", "a b", "a bc". */
#ifndef FLASHBOX_TESTS_TOK_VOCAB_H
#define FLASHBOX_TESTS_TOK_VOCAB_H

#include "engine/model/gguf.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define TOK_VOCAB_N 261

/* GPT-2's byte -> symbol table, built the way its definition reads: the printable bytes
 * keep their code point, the rest get 256, 257, ... in byte order. */
static inline void tok_vocab_symbols(uint32_t cp[256])
{
    uint32_t next = 256;
    for (unsigned b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        cp[b] = printable ? b : next++;
    }
}

/* Writes the vocabulary with pre-tokenizer `pre` to path; 0 on success. The overrides let
 * malformed-input tests break one key: model (NULL = "gpt2"), merges (NULL = the three above). */
static inline int tok_vocab_write(const char *path, const char *pre, const char *model, const char *const *merges,
                                  uint64_t n_merges)
{
    static char sym[256][5];
    const char *tokens[TOK_VOCAB_N];
    int32_t types[TOK_VOCAB_N];
    uint32_t cp[256];
    tok_vocab_symbols(cp);
    for (unsigned b = 0; b < 256; b++) {
        uint32_t c = cp[b];
        if (c < 0x80) {
            sym[b][0] = (char)c, sym[b][1] = 0;
        } else {
            sym[b][0] = (char)(0xC0 | (c >> 6)), sym[b][1] = (char)(0x80 | (c & 0x3F)), sym[b][2] = 0;
        }
        tokens[b] = sym[b];
        types[b] = 1;
    }
    tokens[256] = "ab", tokens[257] = "bc", tokens[258] = "abc", tokens[259] = "<ctl>", tokens[260] = "<ud>";
    types[256] = types[257] = types[258] = 1;
    types[259] = 3;
    types[260] = 4;
    static const char *const default_merges[] = { "b c", "a b", "a bc" };
    if (!merges) merges = default_merges, n_merges = 3;
    struct gguf_writer *w = gguf_writer_create();
    if (!w) return -1;
    uint32_t bos = 259;
    int rc = gguf_writer_add_str(w, "general.architecture", "test") ||
             gguf_writer_add_str(w, "tokenizer.ggml.model", model ? model : "gpt2") ||
             gguf_writer_add_str(w, "tokenizer.ggml.pre", pre) ||
             gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", tokens, TOK_VOCAB_N) ||
             gguf_writer_add_arr(w, "tokenizer.ggml.token_type", GGUF_VAL_INT32, types, TOK_VOCAB_N) ||
             gguf_writer_add_arr_str(w, "tokenizer.ggml.merges", merges, n_merges) ||
             gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", bos);
    char err[256];
    if (!rc) rc = gguf_writer_write_file(w, path, err, sizeof err);
    gguf_writer_destroy(w);
    return rc ? -1 : 0;
}

#endif
