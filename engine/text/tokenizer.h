/* Byte-level BPE tokenizer loaded from a GGUF's `tokenizer.ggml.*` metadata (tokens,
 * token_type, merges, bos/eos ids, pre-tokenizer name): text -> token ids and back.
 *
 * Encoding: optional special-token matching, then the pre-tokenizer's regex split
 * (engine/text/pretok.h), then per word the GPT-2 byte -> symbol mapping and BPE merges by rank
 * (a priority queue, lowest rank first, leftmost first on ties). Works on any bytes:
 * invalid UTF-8 becomes byte tokens and decodes back to the same bytes.
 *
 * Decoding: normal tokens map their byte-level symbols back to bytes; control tokens
 * render as their text only when asked (TOK_DECODE_SPECIAL); user-defined tokens always
 * render as their text. The streaming decoder (struct tok_stream) never emits a partial
 * UTF-8 sequence: it holds an incomplete tail until the next token completes it.
 *
 * Thread safety: a loaded tokenizer is read-only; any number of threads may encode and
 * decode with it at once (each with its own tok_vec / tok_stream). */
#ifndef FLASHBOX_ENGINE_TOKENIZER_H
#define FLASHBOX_ENGINE_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct gguf_file;
struct tokenizer;

/* tokenizer.ggml.token_type values (llama.cpp numbering). */
enum tok_type {
    TOK_TYPE_UNDEFINED = 0,
    TOK_TYPE_NORMAL = 1,
    TOK_TYPE_UNKNOWN = 2,
    TOK_TYPE_CONTROL = 3,
    TOK_TYPE_USER_DEFINED = 4,
    TOK_TYPE_UNUSED = 5,
    TOK_TYPE_BYTE = 6,
};

/* Encode flags. */
enum {
    /* Match control and user-defined tokens written in the text ("<｜User｜>") as whole
     * tokens (leftmost, longest first). Without it, all text is literal: user content can
     * never forge a turn. (HF and llama.cpp match user-defined tokens, e.g. "<think>" when a
     * GGUF types it so, even without this; here that too needs the flag.) No BOS/EOS is
     * ever added: the caller (or chat_render) places them. */
    TOK_ENCODE_PARSE_SPECIAL = 1u << 0,
};

/* Decode flags. */
enum {
    /* Render control tokens (BOS, EOS, <｜User｜>, </think>, ...) as their text; without
     * it they produce no bytes. */
    TOK_DECODE_SPECIAL = 1u << 0,
};

/* A growable array of token ids. Zero-initialize; tok_encode appends; free with
 * tok_vec_free. */
struct tok_vec {
    int32_t *ids; /* [cap] */
    size_t n, cap;
};

/* Reads the tokenizer of an opened GGUF. The tokenizer copies what it needs: f may be
 * closed afterwards. Errors name the key (e.g. "tokenizer.ggml.merges[17]: ..."). */
int tok_create(struct tokenizer **out, const struct gguf_file *f, char *err, size_t err_len);
/* Opens path, reads its tokenizer and closes it again. */
int tok_create_from_file(struct tokenizer **out, const char *path, char *err, size_t err_len);
void tok_destroy(struct tokenizer *t);

uint32_t tok_n_vocab(const struct tokenizer *t);
int32_t tok_bos(const struct tokenizer *t); /* -1 if the file names none */
int32_t tok_eos(const struct tokenizer *t); /* -1 if the file names none */
/* The canonical pre-tokenizer name ("deepseek-v3", "deepseek-llm", "gpt2"). */
const char *tok_pre_name(const struct tokenizer *t);
/* The vocabulary entry's raw text (byte-level symbols for normal tokens), not
 * NUL-terminated; NULL when id is out of range. */
const char *tok_text(const struct tokenizer *t, int32_t id, size_t *len);
enum tok_type tok_get_type(const struct tokenizer *t, int32_t id); /* UNDEFINED if out of range */
/* The id of the control or user-defined token whose text is exactly text, or -1. */
int32_t tok_find_special(const struct tokenizer *t, const char *text);
/* True for control tokens (the ids a model uses for structure, not content). */
bool tok_is_control(const struct tokenizer *t, int32_t id);

/* Appends the ids of text[0, len) to out. Returns 0, or -1 on out of memory (out keeps
 * what it had before the call). */
int tok_encode(const struct tokenizer *t, const char *text, size_t len, unsigned flags, struct tok_vec *out,
               char *err, size_t err_len);
void tok_vec_free(struct tok_vec *v);
int tok_vec_push(struct tok_vec *v, int32_t id); /* 0, or -1 on out of memory */

/* The most bytes one token decodes to (sizes buffers for tok_piece). */
size_t tok_max_piece(const struct tokenizer *t);
/* The bytes of one token (pointer into the tokenizer, valid while it lives), or NULL
 * with *len 0 for an id out of range. Control tokens yield their text only with
 * TOK_DECODE_SPECIAL (else length 0). */
const char *tok_piece(const struct tokenizer *t, int32_t id, unsigned flags, size_t *len);
/* Decodes ids into a malloc'd, NUL-terminated string (*out_len bytes without the NUL;
 * the bytes are exactly what the tokens encode, valid UTF-8 or not). Fails on an id out
 * of range, naming its index. */
int tok_decode(const struct tokenizer *t, const int32_t *ids, size_t n, unsigned flags, char **out,
               size_t *out_len, char *err, size_t err_len);

/* Streaming detokenizer for one generated sequence. Output is always valid UTF-8: bytes
 * that cannot start or continue a sequence become U+FFFD, and an incomplete sequence is
 * held back until it completes (or the stream is flushed, when it becomes U+FFFD). */
struct tok_stream {
    const struct tokenizer *t;
    unsigned flags;     /* TOK_DECODE_* */
    uint8_t pending[4]; /* bytes of an incomplete UTF-8 sequence */
    uint32_t n_pending;
};

void tok_stream_init(struct tok_stream *s, const struct tokenizer *t, unsigned flags);
/* Bytes an output buffer for tok_stream_feed / flush must hold. */
size_t tok_stream_buf_size(const struct tokenizer *t);
/* Decodes one token into out (cap >= tok_stream_buf_size) and returns the number of
 * bytes written (0 while a sequence is incomplete), or -1 for an id out of range (the
 * stream is unchanged). Allocates nothing. */
int tok_stream_feed(struct tok_stream *s, int32_t id, char *out, size_t cap);
/* Ends the sequence: writes U+FFFD for a held incomplete tail; returns bytes written. */
int tok_stream_flush(struct tok_stream *s, char *out, size_t cap);

#endif
