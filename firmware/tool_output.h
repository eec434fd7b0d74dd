/* The model's answer -> OpenAI tool_calls. V4 writes calls after its answer text as a DSML
 * block (chat.h); this reads it back with the official encoder's rules (the block starts
 * "\n\n<｜DSML｜tool_calls>", every invoke and parameter tag is followed by exactly ">\n"
 * where the format puts one, a parameter is string="true" (raw text) or string="false" (JSON),
 * no parameter twice, nothing after the block) and turns each invoke into a name and a JSON
 * object of arguments. Anything else is not a call: the caller returns the text unchanged
 * and notes why. Pure: no I/O; the fuzz target's subject. */
#ifndef FLASHBOX_FIRMWARE_TOOL_OUTPUT_H
#define FLASHBOX_FIRMWARE_TOOL_OUTPUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TOOL_CALLS_START "\n\n<｜DSML｜tool_calls"

struct tool_call_out {
    char *name;
    char *arguments;   /* a JSON object, as the official decoder writes it */
};

struct tool_output {
    size_t content_len;           /* the answer text before the block */
    struct tool_call_out *calls;  /* [n_calls] */
    uint32_t n_calls;
};

/* Where a call block may begin in text[0, len): the offset of TOOL_CALLS_START, or of the
 * longest tail of the text that could still become it; len when neither. Text before it can
 * be shown while the answer streams. */
size_t tool_output_safe_prefix(const char *text, size_t len);

/* 0 with *out filled (n_calls 0 when the text has no block), -1 when a block starts but does
 * not parse (err says where). names: the offered tools [n_names]; a call to another name is
 * an error. */
int tool_output_parse(const char *text, size_t len, const char *const *names, size_t n_names,
                      struct tool_output *out, char *err, size_t err_len);
void tool_output_free(struct tool_output *out);

/* While a block streams in: the calls of text[0, len) read as far as the text allows, so a
 * stream can send each call's name as soon as its invoke tag is complete and its arguments
 * fragment by fragment. args is the prefix of what tool_output_parse will write for that
 * call that no later text can change (a string value's bytes as they come, escaped; a JSON
 * value's bytes; text that may begin the closing tag is held back). Reading stops at the
 * first thing tool_output_parse would refuse; the final parse decides (a stream that ends
 * unparsable falls back to text). Returns the calls begun, at most max; free with
 * tool_output_partial_free. */
struct tool_call_partial {
    char *name;
    char *args;
    size_t args_len;
};
uint32_t tool_output_partial(const char *text, size_t len, const char *const *names, size_t n_names,
                             struct tool_call_partial *out, uint32_t max);
void tool_output_partial_free(struct tool_call_partial *calls, uint32_t n);

#endif
