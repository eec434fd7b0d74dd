/* Choosing the next token from logits, and knowing when to stop.
 *
 * Sampler: penalties on recent tokens (repetition, presence, frequency), then greedy
 * (temperature <= 0) or: temperature, top-k, top-p (nucleus), min-p, and a draw from a
 * seeded generator (same seed and inputs -> same tokens). Filters apply to the tempered
 * distribution, in that order (as HF / vLLM read a generation config). Every buffer is
 * allocated by sampler_create: sampling allocates nothing. NaN logits count as -inf; a
 * token at -inf is never chosen.
 *
 * Stopper: stop tokens, stop strings (matched across token boundaries) and a token limit.
 * It holds back text that might be the start of a stop string, so a caller that streams
 * only what the stopper releases never shows any part of a stop string. */
#ifndef FLASHBOX_ENGINE_SAMPLER_H
#define FLASHBOX_ENGINE_SAMPLER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A fixed amount added to one token's logit before anything else (OpenAI's logit_bias). */
struct sampler_bias {
    int32_t tok;             /* [0, n_vocab) */
    float bias;
};

struct sampler_params {
    float temperature;       /* <= 0: greedy (argmax, lowest id on ties) */
    int32_t top_k;           /* <= 0: off */
    float top_p;             /* >= 1: off; 0 keeps only the most likely token */
    float min_p;             /* <= 0: off; keeps tokens with p >= min_p * p_max */
    float repeat_penalty;    /* 1: off; logit / penalty if positive, * penalty if negative */
    float presence_penalty;  /* 0: off; subtracted once from every recent token */
    float frequency_penalty; /* 0: off; subtracted per occurrence of a recent token */
    uint32_t penalty_last_n; /* how many recent tokens the penalties look at (0: none) */
    uint64_t seed;
    const struct sampler_bias *bias; /* [n_bias], copied by sampler_create */
    size_t n_bias;
};

/* temperature 1, top_p 1, everything else off, seed 0 (the model's generation defaults). */
void sampler_params_default(struct sampler_params *p);

struct sampler;

int sampler_create(struct sampler **out, uint32_t n_vocab, const struct sampler_params *p, char *err, size_t err_len);
void sampler_destroy(struct sampler *s);
/* Forgets the recent tokens and restarts the generator from the seed. */
void sampler_reset(struct sampler *s);
/* Records a token (prompt or generated) for the penalties. */
void sampler_accept(struct sampler *s, int32_t tok);
/* The next token for logits [n_vocab] (not modified), or -1 if every logit is -inf/NaN.
 * Does not record the token: call sampler_accept with what is actually used. */
int32_t sampler_sample(struct sampler *s, const float *logits);
/* The same over the tokens whose bit is set in allow [(n_vocab + 31) / 32] (bit t of word
 * t / 32): every other token counts as -inf before anything else, so a mask only removes
 * tokens and never changes how the rest are drawn. NULL allows every token. */
int32_t sampler_sample_masked(struct sampler *s, const float *logits, const uint32_t *allow);

/* ---- stopping ---- */

enum stop_reason {
    STOP_NONE = 0,   /* keep going */
    STOP_TOKEN = 1,  /* a stop token (e.g. EOS) was generated; its text is not released */
    STOP_STRING = 2, /* a stop string appeared; text from its start on is not released */
    STOP_LENGTH = 3, /* max_tokens reached (the last token's text is released) */
};

struct stopper_params {
    const int32_t *stop_tokens;       /* [n_stop_tokens] */
    size_t n_stop_tokens;
    const char *const *stop_strings;  /* [n_stop_strings], non-empty */
    size_t n_stop_strings;
    uint32_t max_tokens;              /* 0: no limit */
    size_t max_text_per_token;        /* most bytes one feed brings (tok_stream_buf_size) */
};

struct stopper;

int stopper_create(struct stopper **out, const struct stopper_params *p, char *err, size_t err_len);
void stopper_destroy(struct stopper *s);
void stopper_reset(struct stopper *s);
/* Takes the next generated token and its decoded text; writes the text now safe to show
 * into out (cap >= stopper_buf_size) and returns why to stop, or STOP_NONE. */
enum stop_reason stopper_feed(struct stopper *s, int32_t tok, const char *text, size_t len, char *out, size_t cap,
                              size_t *out_len);
/* At the end of a generation that did not stop on a string: the held-back text. */
size_t stopper_flush(struct stopper *s, char *out, size_t cap);
size_t stopper_buf_size(const struct stopper *s);
/* After STOP_STRING: the index of the stop string that matched; -1 otherwise. */
int stopper_matched(const struct stopper *s);
/* How many tokens it has taken since create/reset. */
uint32_t stopper_n_tokens(const struct stopper *s);

#endif
