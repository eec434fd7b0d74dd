/* libFuzzer target: Anthropic Messages and OpenAI Responses bodies through their
 * translation into a chat body, then through the chat request parser. The first byte picks
 * the API. A translation either fails with a message or yields an object with a messages
 * array, which the chat parser then accepts or refuses with a message. */
#include "firmware/api_shapes.h"
#include "firmware/request_parse.h"

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
    char err[256] = "";
    json_t *chat = data[0] % 2 ? anthropic_to_chat(body, size - 1, err, sizeof err)
                               : responses_to_chat(body, size - 1, err, sizeof err);
    if (!chat) {
        check(err[0] != 0);
        return 0;
    }
    check(json_is_array(json_object_get(chat, "messages")));
    char *text = json_dumps(chat, JSON_COMPACT);
    json_decref(chat);
    if (!text) return 0;
    struct req_limits lim;
    req_limits_default(&lim);
    lim.max_body_bytes = strlen(text) + 1;
    struct gen_request r;
    if (request_parse_chat(text, strlen(text), &lim, &r, err, sizeof err) == 0) gen_request_free(&r);
    else check(err[0] != 0);
    free(text);
    return 0;
}
