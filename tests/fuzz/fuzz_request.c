/* libFuzzer target: request bodies through the request-to-params parser. The first byte
 * picks the endpoint (chat, completion, tokenize, detokenize); the rest is the body. An
 * accepted request must satisfy every promise the parser makes to the scheduler: counts
 * within the limits, finite sampling values in range, non-empty stop strings. */
#include "engine/engine.h"
#include "firmware/request_parse.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int ok)
{
    if (!ok) __builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    const char *body = (const char *)data + 1;
    size_t len = size - 1;
    struct req_limits lim;
    req_limits_default(&lim);
    lim.max_stop = 3;
    lim.max_messages = 8;
    char err[256];
    switch (data[0] % 4) {
    case 0:
    case 1: {
        struct gen_request r;
        int rc = data[0] % 4 == 0 ? request_parse_chat(body, len, &lim, &r, err, sizeof err)
                                  : request_parse_completion(body, len, &lim, &r, err, sizeof err);
        if (rc) {
            check(err[0] != 0);
            return 0;
        }
        check(r.max_tokens >= 1 && r.max_tokens <= lim.max_tokens);
        check(isfinite(r.temperature) && r.temperature >= 0 && r.temperature <= 2);
        check(isfinite(r.top_p) && r.top_p > 0 && r.top_p <= 1);
        check(isfinite(r.min_p) && r.min_p >= 0 && r.min_p < 1);
        check(r.n_stop <= lim.max_stop);
        for (uint32_t i = 0; i < r.n_stop; i++) check(r.stop[i] && r.stop[i][0] && strlen(r.stop[i]) <= lim.max_stop_len);
        check(r.presence_penalty >= -2 && r.presence_penalty <= 2 && r.frequency_penalty >= -2 && r.frequency_penalty <= 2);
        check(r.n >= 1 && r.n <= REQ_MAX_N && r.top_logprobs <= REQ_MAX_TOP_LOGPROBS);
        for (uint32_t i = 0; i < r.n_logit_bias; i++)
            check(r.logit_bias[i].tok >= 0 && r.logit_bias[i].bias >= -100 && r.logit_bias[i].bias <= 100);
        for (uint32_t i = 0; i < r.n_tools; i++) check(r.tools[i].name && r.tools[i].name[0] && r.tools[i].schema);
        /* a forced call always has its grammar, and the shortest call is at least the block's frame */
        if (r.tool_choice == REQ_TOOL_REQUIRED || r.tool_choice == REQ_TOOL_NAMED)
            check(r.calls != NULL && !r.calls_on_demand && dsml_grammar_min_tokens(r.calls) >= 40);
        check(!r.calls_on_demand || r.calls != NULL);
        if (r.kind == REQ_CHAT) {
            check(r.n_messages >= 1 && r.n_messages <= lim.max_messages);
            for (uint32_t i = 0; i < r.n_messages; i++) {
                check(r.messages[i].content != NULL);
                for (uint32_t c = 0; c < r.messages[i].n_tool_calls; c++)
                    check(r.messages[i].tool_calls[c].name && r.messages[i].tool_calls[c].arguments &&
                          r.messages[i].tool_calls[c].id);
            }
        } else {
            check(r.prompt != NULL);
        }
        gen_request_free(&r);
        break;
    }
    case 2: {
        char *content;
        bool add;
        if (request_parse_tokenize(body, len, &content, &add, err, sizeof err) == 0) {
            check(content != NULL);
            free(content);
        }
        break;
    }
    case 3: {
        int32_t *ids;
        uint32_t n;
        if (request_parse_detokenize(body, len, 512, 64, &ids, &n, err, sizeof err) == 0) {
            check(n <= 64);
            for (uint32_t i = 0; i < n; i++) check(ids[i] >= 0 && ids[i] < 512);
            free(ids);
        }
        break;
    }
    }
    return 0;
}
