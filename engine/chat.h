/* DeepSeek-V4 chat encoding (spec §4): a list of messages -> the prompt the model was
 * trained on, as token ids (control tokens as single ids, message text always literal) or
 * as text (for logs and golden tests).
 *
 *   BOS  system text  <｜User｜>user<｜Assistant｜>R answer EOS  <｜User｜>... <｜Assistant｜>G
 *
 * where R is "</think>" (a closed, empty think block) or, for an assistant turn whose
 * reasoning is kept, "<think>reasoning</think>"; G, the generation prompt, is "</think>" in
 * chat mode and "<think>" in thinking mode. Reasoning is kept only in thinking mode: for
 * assistant turns after the last user message (the turn being answered, e.g. across tool
 * calls), and for every turn when tools are present (tools_prompt set) or when asked
 * (keep_all_reasoning); earlier turns render as "</think>answer". Tool calls follow
 * the answer as a DSML block ("\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"N\">\n<｜DSML｜parameter name=\"P\"
 * string=\"true\">V</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>"); tool
 * results go in a user turn as "<tool_result>...</tool_result>", consecutive results
 * joined by a blank line. System messages render their text in place (normally first). */
#ifndef FLASHBOX_ENGINE_CHAT_H
#define FLASHBOX_ENGINE_CHAT_H

#include "engine/tokenizer.h"

#include <stdbool.h>
#include <stddef.h>

enum chat_role {
    CHAT_ROLE_SYSTEM = 0,
    CHAT_ROLE_USER = 1,
    CHAT_ROLE_ASSISTANT = 2,
    CHAT_ROLE_TOOL = 3,
};

/* One argument of a tool call: value is the string itself when is_string, else JSON text
 * (number, boolean, array, object), as DSML's string="true|false" says. */
struct chat_tool_param {
    const char *name;
    const char *value;
    bool is_string;
};

struct chat_tool_call {
    const char *name;
    const struct chat_tool_param *params; /* [n_params] */
    size_t n_params;
};

struct chat_message {
    enum chat_role role;
    const char *content;                      /* NULL = "" */
    const char *reasoning;                    /* assistant: the thinking text, NULL = none */
    const struct chat_tool_call *tool_calls;  /* assistant: [n_tool_calls] */
    size_t n_tool_calls;
};

struct chat_options {
    bool thinking;              /* thinking mode: the generation prompt opens <think> */
    bool add_generation_prompt; /* end with <｜Assistant｜> + G when the last message is not the assistant's */
    bool keep_all_reasoning;    /* keep every assistant turn's reasoning (implied by tools_prompt) */
    bool omit_bos;              /* continue an existing context: no BOS at the start */
    const char *tools_prompt;   /* text placed after the system text, a blank line apart; NULL = none */
};

/* Appends the encoded conversation to out. Fails (naming it) when the vocabulary lacks a
 * control token the format needs, or on a bad role; out keeps what it had then. */
int chat_render(const struct tokenizer *t, const struct chat_message *msgs, size_t n, const struct chat_options *opt,
                struct tok_vec *out, char *err, size_t err_len);

/* The same conversation as one malloc'd NUL-terminated string (*len bytes), control
 * tokens written as their text. */
int chat_render_text(const struct chat_message *msgs, size_t n, const struct chat_options *opt, char **out,
                     size_t *len, char *err, size_t err_len);

/* The control-token texts of the format. */
#define CHAT_BOS "<｜begin▁of▁sentence｜>"
#define CHAT_EOS "<｜end▁of▁sentence｜>"
#define CHAT_USER "<｜User｜>"
#define CHAT_ASSISTANT "<｜Assistant｜>"
#define CHAT_THINK "<think>"
#define CHAT_THINK_END "</think>"
#define CHAT_DSML "｜DSML｜"

#endif
