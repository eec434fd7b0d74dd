/* Token log probabilities in the shapes the OpenAI APIs return them: chat's
 * {"content": [{token, logprob, bytes, top_logprobs}]} and the legacy completions'
 * {tokens, token_logprobs, top_logprobs, text_offset}. A token whose bytes are not valid
 * UTF-8 on their own (part of a character) is named "bytes:\xNN..." as OpenAI does. */
#ifndef FLASHBOX_FIRMWARE_API_LOGPROBS_H
#define FLASHBOX_FIRMWARE_API_LOGPROBS_H

#include "firmware/textgen.h"

#include <jansson.h>

/* lp[0, n) of a sequence; NULL when out of memory. */
json_t *logprobs_chat_json(const struct textgen *tg, const struct textgen_logprob *lp, uint32_t n);
/* text_offset counts bytes of the answer from *offset on, and advances it. */
json_t *logprobs_completion_json(const struct textgen *tg, const struct textgen_logprob *lp, uint32_t n,
                                 size_t *offset);

#endif
