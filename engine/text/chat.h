/* DeepSeek-V4 chat encoding (spec §4), as DeepSeek's encoding_dsv4.py writes it: a list of
 * messages -> the prompt the model was trained on, as token ids (control tokens as single
 * ids, message text always literal) or as text (for logs and golden tests).
 *
 *   BOS [effort] system [tools]  <｜User｜>user<｜Assistant｜>G answer EOS  <｜User｜>... <｜Assistant｜>G
 *
 * After a user turn come <｜Assistant｜> and G: "</think>" in chat mode; in thinking mode
 * "<think>" for the turn being answered (and every turn when reasoning is kept), else
 * "</think>". An assistant turn whose reasoning is kept writes "reasoning</think>" before
 * its answer (thinking mode only). Reasoning is kept for assistant turns after the last
 * user turn, and for every turn when tools are present or keep_all_reasoning is set.
 * Tool calls follow the answer as a DSML block ("\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke
 * name=\"N\">\n<｜DSML｜parameter name=\"P\" string=\"true\">V</｜DSML｜parameter>\n</｜DSML｜invoke>
 * \n</｜DSML｜tool_calls>"). Consecutive user and tool messages merge into one user turn,
 * blocks a blank line apart, a tool result written "<tool_result>...</tool_result>" and the
 * results put in the order of the calls they answer (by id). Tools are described after the
 * first message when it is a system message (else where an empty one would be), a blank
 * line apart; reasoning_max puts the effort paragraph first in thinking mode.
 * Text the client sent (message text, tool schemas, arguments) never becomes a control
 * token, unlike the official encoder's string once tokenized. */
#ifndef FLASHBOX_ENGINE_CHAT_H
#define FLASHBOX_ENGINE_CHAT_H

#include "engine/text/tokenizer.h"

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
    size_t value_len;                         /* 0: strlen(value) */
};

struct chat_tool_call {
    const char *id;                           /* the client's call id (orders results), NULL = none */
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
    const char *tool_call_id;                 /* tool: the call it answers, NULL = none */
    size_t content_len, reasoning_len;        /* bytes (text may hold U+0000); 0: strlen */
};

struct chat_options {
    bool thinking;              /* thinking mode: the generation prompt opens <think> */
    bool add_generation_prompt; /* end with <｜Assistant｜> + G when the last turn is a user turn */
    bool keep_all_reasoning;    /* keep every assistant turn's reasoning (implied by tools) */
    bool omit_bos;              /* continue an existing context: no BOS at the start */
    bool reasoning_max;         /* thinking mode: the "Reasoning Effort: Absolute maximum" paragraph */
    const char *const *tool_schemas; /* [n_tools] each function's JSON as the encoder writes it */
    size_t n_tools;
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
