/* libFuzzer target: model output through the DSML tool-call parser. Whatever the bytes,
 * the parser either finds no block, or returns calls whose arguments are JSON objects and
 * whose names are offered tools, or fails with a message; content_len never passes the
 * text, and the safe prefix never passes where a block could start. Read while it streams
 * (tool_output_partial), any prefix of a block that parses gives a prefix of its calls. */
#include "firmware/tool_output.h"

#include <jansson.h>
#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int ok)
{
    if (!ok) __builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const names[] = { "get_weather", "search", "f" };
    const char *text = (const char *)data;
    struct tool_output out;
    char err[256] = "";
    size_t safe = tool_output_safe_prefix(text, size);
    check(safe <= size);
    if (tool_output_parse(text, size, names, 3, &out, err, sizeof err)) {
        check(err[0] != 0 && out.n_calls == 0 && out.content_len == size);
        return 0;
    }
    /* while streaming, every prefix reads as a prefix of the final calls */
    for (size_t cut = size; cut > 0; cut = cut > 64 ? cut - cut / 8 : cut - 1) {
        struct tool_call_partial part[4];
        uint32_t k = tool_output_partial(text, cut, names, 3, part, 4);
        check(k <= 4 && k <= out.n_calls);
        for (uint32_t i = 0; i < k; i++) {
            check(!strcmp(part[i].name, out.calls[i].name));
            check(part[i].args_len <= strlen(out.calls[i].arguments) &&
                  !memcmp(part[i].args, out.calls[i].arguments, part[i].args_len));
        }
        tool_output_partial_free(part, k);
    }
    check(out.content_len <= size);
    if (out.content_len < size) check(safe == out.content_len); /* a block starts there */
    for (uint32_t i = 0; i < out.n_calls; i++) {
        int known = 0;
        for (int k = 0; k < 3; k++) known |= !strcmp(out.calls[i].name, names[k]);
        check(known);
        json_t *a = json_loads(out.calls[i].arguments, JSON_ALLOW_NUL, NULL);
        check(json_is_object(a));
        json_decref(a);
    }
    tool_output_free(&out);
    return 0;
}
