/* Pre-tokenizer: splits text into the words that byte-level BPE then merges, by a sequence
 * of Unicode regexes (PCRE2, UTF + UCP). Each regex re-splits every piece the previous one
 * produced; both what it matches and the gaps between matches become pieces (llama.cpp's
 * "isolated" splitting, which is what the HF pre-tokenizers of these models do).
 *
 * Known names (GGUF `tokenizer.ggml.pre`): "joyai-llm" and "deepseek-v3" (DeepSeek-V4 /
 * V3: digit runs of 1-3, CJK/kana runs, then the V3 letter/punctuation/space split),
 * "deepseek-llm", and "gpt2" / "gpt-2" / "default" (GPT-2's split).
 *
 * Invalid UTF-8 never matches a regex (PCRE2_MATCH_INVALID_UTF): such bytes end up in gap
 * pieces and become byte tokens. */
#ifndef FLASHBOX_ENGINE_PRETOK_H
#define FLASHBOX_ENGINE_PRETOK_H

#include <stddef.h>
#include <stdint.h>

struct pretok;

/* One piece of the input: bytes [off, off + len). */
struct pretok_span {
    uint32_t off;
    uint32_t len;
};

/* Growable list of spans, reused across calls (free with pretok_spans_free). */
struct pretok_spans {
    struct pretok_span *v; /* [cap] */
    size_t n, cap;
};

int pretok_create(struct pretok **out, const char *name, char *err, size_t err_len);
void pretok_destroy(struct pretok *p);
/* The canonical name of the split ("deepseek-v3", "deepseek-llm", "gpt2"). */
const char *pretok_name(const struct pretok *p);

/* Splits text[0, len) (len < 4 GiB) into out (replacing its contents). The pieces are in
 * order, non-empty, and cover the text exactly. Thread-safe for a shared pretok. */
int pretok_split(const struct pretok *p, const char *text, size_t len, struct pretok_spans *out,
                 char *err, size_t err_len);
void pretok_spans_free(struct pretok_spans *s);

#endif
