/* The text side of the daemon for the served model, over the engine's tokenizer
 * (engine_tokenizer), the DeepSeek-V4 chat encoding (engine/text/chat.h) and the sampler and
 * stopper (engine/text/sampler.h): prompts into token ids, /tokenize and /detokenize, and per
 * sequence the sampler, the streaming detokenizer and the stop logic. The tokenizer is
 * read-only: HTTP threads tokenize concurrently, while each sequence (struct textgen_seq)
 * belongs to the scheduler thread. */
#ifndef FLASHBOX_FIRMWARE_TEXTGEN_H
#define FLASHBOX_FIRMWARE_TEXTGEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct engine;
struct gen_request;
struct textgen;
struct textgen_seq;

/* Borrows the engine's tokenizer; e must outlive tg. */
int textgen_open(struct textgen **out, const struct engine *e, char *err, size_t err_len);
void textgen_close(struct textgen *tg);
uint32_t textgen_n_vocab(const struct textgen *tg);

/* The prompt of a request as token ids (*ids malloc'd, [*n]). Chat: the DeepSeek-V4
 * encoding ending in the assistant turn (thinking on or off); completion: BOS then the
 * literal text. Message text is always literal: no client text becomes a control token. */
int textgen_prompt(const struct textgen *tg, const struct gen_request *req, int32_t **ids, uint32_t *n,
                   char *err, size_t err_len);
/* A chat request's prompt as text (control tokens as their text), as textgen_prompt
 * encodes it: for logs and golden tests against the official encoder. *text malloc'd. */
int textgen_chat_text(const struct gen_request *req, char **text, size_t *len, char *err, size_t err_len);
/* The bytes of one token, control tokens as their text (pointer into the tokenizer). */
const char *textgen_token_piece(const struct textgen *tg, int32_t tok, size_t *len);
/* /tokenize: literal text; add_special prepends BOS. */
int textgen_tokenize(const struct textgen *tg, const char *text, size_t len, bool add_special, int32_t **ids,
                     uint32_t *n, char *err, size_t err_len);
/* /detokenize: the text of ids (control tokens as their text), valid UTF-8 (invalid bytes
 * become U+FFFD), malloc'd and NUL-terminated. */
int textgen_detokenize(const struct textgen *tg, const int32_t *ids, uint32_t n, char **text, size_t *len,
                       char *err, size_t err_len);

/* A generated token's log probability under the model (log-softmax of the raw logits,
 * before penalties, bias and temperature) and the most likely alternatives, best first. */
struct textgen_logprob {
    int32_t tok;
    float logprob;
    uint32_t n_top;
    int32_t top_tok[20];
    float top_logprob[20];
};

enum textgen_stop {
    TEXTGEN_GO = 0,      /* keep generating */
    TEXTGEN_END_TOKEN,   /* EOS (not counted, no text) */
    TEXTGEN_STOP_STRING, /* a stop string: text from its start on is dropped */
    TEXTGEN_LENGTH,      /* max_tokens reached */
};

/* One generated sequence. Created once per slot; every buffer is allocated here or in
 * textgen_seq_start, so sampling and feeding allocate nothing. */
int textgen_seq_create(const struct textgen *tg, struct textgen_seq **out, char *err, size_t err_len);
void textgen_seq_destroy(struct textgen_seq *s);
/* Starts a new sequence with the request's sampling parameters, stop strings, max_tokens
 * and ignore_eos (a request without a seed gets one from the clock). */
int textgen_seq_start(struct textgen_seq *s, const struct gen_request *req, char *err, size_t err_len);
/* Picks the next token from logits [n_vocab]; -1 when every logit is -inf or NaN. When the
 * request asked for logprobs, *lp (if not NULL) gets the token's. */
int32_t textgen_seq_sample(struct textgen_seq *s, const float *logits, struct textgen_logprob *lp);
/* Takes a generated token: *text and *len get the text now safe to show (valid UTF-8, no part
 * of a stop string), pointing into the sequence's buffer until the next call. */
enum textgen_stop textgen_seq_feed(struct textgen_seq *s, int32_t tok, const char **text, size_t *len);
/* Thinking mode: true once the model closed its reasoning (</think>); *end is then the
 * byte offset in the sequence's text where the answer starts (text before it is the
 * reasoning; the </think> marker itself is not part of the text). */
bool textgen_seq_reasoning_end(const struct textgen_seq *s, size_t *end);
/* After TEXTGEN_STOP_STRING: the index of the request's stop string that matched, else -1. */
int textgen_seq_stop_index(const struct textgen_seq *s);
/* At the end (not after a stop string): the held-back text. */
void textgen_seq_finish(struct textgen_seq *s, const char **text, size_t *len);

#endif
