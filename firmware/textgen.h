/* The text side of the daemon for the served model: prompt rendering (chat with the
 * DeepSeek-V4 encoding, or raw completion text) into token ids, /tokenize and /detokenize,
 * and per sequence the sampler and the streaming detokenizer. Wraps engine/tokenizer.h,
 * engine/chat.h and engine/sampler.h so that the scheduler and the HTTP layer see one small
 * interface. The tokenizer is read-only once loaded: HTTP threads tokenize concurrently,
 * while each sequence (struct textgen_seq) belongs to the scheduler thread. */
#ifndef FLASHBOX_FIRMWARE_TEXTGEN_H
#define FLASHBOX_FIRMWARE_TEXTGEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct gen_request;
struct textgen;
struct textgen_seq;

int textgen_open(struct textgen **out, const char *model_path, char *err, size_t err_len);
void textgen_close(struct textgen *tg);
uint32_t textgen_n_vocab(const struct textgen *tg);

/* The prompt of a request as token ids (*ids malloc'd, [*n]). Chat: rendered with the
 * DeepSeek-V4 encoding ending in the assistant turn (thinking on or off); completion:
 * BOS then the literal text (special-token text is never parsed out of user content). */
int textgen_prompt(const struct textgen *tg, const struct gen_request *req, int32_t **ids, uint32_t *n,
                   char *err, size_t err_len);
/* /tokenize: literal text; add_special prepends BOS. */
int textgen_tokenize(const struct textgen *tg, const char *text, size_t len, bool add_special, int32_t **ids,
                     uint32_t *n, char *err, size_t err_len);
/* /detokenize: the text of ids (control tokens render as nothing), valid UTF-8 (invalid
 * bytes become U+FFFD), malloc'd and NUL-terminated. */
int textgen_detokenize(const struct textgen *tg, const int32_t *ids, uint32_t n, char **text, size_t *len,
                       char *err, size_t err_len);
/* True for the tokens that end an answer (EOS, end of the assistant turn). */
bool textgen_is_end(const struct textgen *tg, int32_t tok);

/* Bytes one call to textgen_seq_piece or textgen_seq_flush may write. */
size_t textgen_piece_cap(const struct textgen *tg);

/* One generated sequence: sampler state + streaming detokenizer. Created once per slot. */
int textgen_seq_create(const struct textgen *tg, struct textgen_seq **out, char *err, size_t err_len);
void textgen_seq_destroy(struct textgen_seq *s);
/* Starts a new sequence with the request's sampling parameters (temperature 0 = greedy;
 * a request without a seed gets one from the clock). */
int textgen_seq_start(struct textgen_seq *s, const struct gen_request *req, char *err, size_t err_len);
/* Picks the next token from logits [n_vocab]. Allocates nothing. */
int32_t textgen_seq_sample(struct textgen_seq *s, const float *logits);
/* Appends the UTF-8 text of tok to out (cap >= textgen_piece_cap); returns bytes written
 * (0 while a multi-byte character is incomplete), or -1 for an id out of range. */
int textgen_seq_piece(struct textgen_seq *s, int32_t tok, char *out, size_t cap);
/* Ends the sequence: a held incomplete character becomes U+FFFD. */
int textgen_seq_flush(struct textgen_seq *s, char *out, size_t cap);

#endif
