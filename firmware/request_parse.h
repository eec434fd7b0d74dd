/* Request bodies → generation parameters: the JSON of /v1/chat/completions,
 * /v1/completions, /tokenize and /detokenize, checked field by field (type, range, size)
 * against the configured limits. Pure: no engine, no I/O; the fuzz target's subject.
 * Unknown fields are refused (400) so a client never believes a knob was honoured. */
#ifndef FLASHBOX_FIRMWARE_REQUEST_PARSE_H
#define FLASHBOX_FIRMWARE_REQUEST_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct jg_schema;
struct dsml_grammar;

enum { REQ_MAX_STOP = 16, REQ_MAX_TOP_LOGPROBS = 20, REQ_MAX_N = 16, REQ_MAX_CALLS = 8 /* a forced block's calls */ };

enum req_kind { REQ_CHAT, REQ_COMPLETION };
enum req_role { REQ_ROLE_SYSTEM, REQ_ROLE_USER, REQ_ROLE_ASSISTANT, REQ_ROLE_TOOL };
/* tools offered: auto (the model decides), none (not rendered, output never parsed as a
 * call), required / a named function (the model must call; see request_tools.h) */
enum req_tool_choice { REQ_TOOL_AUTO, REQ_TOOL_NONE, REQ_TOOL_REQUIRED, REQ_TOOL_NAMED };

struct req_limits {
    uint64_t max_body_bytes;
    uint32_t max_tokens;          /* cap on max_tokens */
    uint32_t default_max_tokens;
    uint32_t max_stop, max_stop_len;
    uint32_t max_messages;
    uint32_t max_detok_tokens;    /* ids in a /detokenize request */
};

/* A call an assistant message made earlier, as the client sends it back. */
struct req_tool_call {
    char *id;                     /* "" when absent */
    char *name;
    char *arguments;              /* the JSON text the client sent (an object, normally) */
};

struct req_message {
    enum req_role role;
    char *content;                /* UTF-8, NUL-terminated; may hold U+0000 (content_len says) */
    size_t content_len;
    char *reasoning;              /* assistant: reasoning_content sent back, NULL = none */
    size_t reasoning_len;
    struct req_tool_call *tool_calls; /* assistant: [n_tool_calls] */
    uint32_t n_tool_calls;
    char *tool_call_id;           /* tool: the call this result answers, NULL = none */
};

/* A function offered in `tools`. */
struct req_tool {
    char *name;
    char *schema;                 /* the function object as JSON, written as the official encoder writes it */
    char *parameters;             /* its parameters JSON Schema (JSON as schema is written), NULL = none */
    bool strict;                  /* strict: true, its calls are held to the schema */
};

struct req_logit_bias {
    int32_t tok;                  /* checked against the vocabulary when the request is queued */
    float bias;                   /* [-100, 100], added to the logit */
};

struct gen_request {
    enum req_kind kind;
    char *prompt;                 /* REQ_COMPLETION */
    struct req_message *messages; /* REQ_CHAT: [n_messages] */
    uint32_t n_messages, messages_cap;
    bool thinking;                /* chat: let the model think before answering */
    uint32_t max_tokens;          /* >= 1 */
    float temperature;            /* 0 = greedy; [0, 2] */
    float top_p;                  /* (0, 1] */
    uint32_t top_k;               /* 0 = off */
    float min_p;                  /* [0, 1) */
    bool has_seed;
    uint64_t seed;
    char *stop[REQ_MAX_STOP];
    uint32_t n_stop;
    bool stream, include_usage;
    bool ignore_eos;              /* llama-server's knob: keep generating past EOS */
    float presence_penalty;       /* [-2, 2], OpenAI: once per token already generated */
    float frequency_penalty;      /* [-2, 2], OpenAI: per occurrence among the generated tokens */
    struct req_logit_bias *logit_bias; /* [n_logit_bias] */
    uint32_t n_logit_bias;
    char *suffix;                 /* completion: fill in the middle between prompt and suffix; NULL = none */
    bool reasoning_max;           /* reasoning_effort "max": the encoder's maximum-effort paragraph */
    struct req_tool *tools;       /* [n_tools] */
    uint32_t n_tools;
    enum req_tool_choice tool_choice;
    char *tool_choice_name;       /* REQ_TOOL_NAMED */
    bool parallel_tool_calls;     /* false: at most one call is returned */
    bool logprobs;                /* return each generated token's log probability */
    uint32_t top_logprobs;        /* and the most likely alternatives, [0, REQ_MAX_TOP_LOGPROBS] */
    uint32_t n;                   /* choices, [1, REQ_MAX_N]: each its own sequence (seed + i when seeded) */
    char model[128];              /* as asked; "" when absent */
    struct jg_schema *schema;     /* response_format json_object / json_schema: the compiled
                                   * grammar the answer must match (owned); NULL for text */
    struct dsml_grammar *calls;   /* tool_choice required / named: the DSML call block the answer
                                   * must be (owned, see engine/text/dsml_grammar.h); with a strict
                                   * tool and tool_choice auto, the grammar of a block the model
                                   * opens itself (calls_on_demand); NULL otherwise */
    bool calls_on_demand;
};

void req_limits_default(struct req_limits *lim);

/* Each returns 0, or -1 with a message naming the field and what was expected; the output
 * is then empty (nothing to free). On success free with gen_request_free. */
int request_parse_chat(const char *body, size_t len, const struct req_limits *lim, struct gen_request *out,
                       char *err, size_t err_len);
int request_parse_completion(const char *body, size_t len, const struct req_limits *lim, struct gen_request *out,
                             char *err, size_t err_len);
void gen_request_free(struct gen_request *r);

/* /tokenize: {"content": str, "add_special": bool?}. content is malloc'd. */
int request_parse_tokenize(const char *body, size_t len, char **content, bool *add_special, char *err, size_t err_len);
/* /detokenize: {"tokens": [int, ...]}; ids checked against [0, n_vocab). tokens is malloc'd. */
int request_parse_detokenize(const char *body, size_t len, uint32_t n_vocab, uint32_t max_tokens, int32_t **tokens,
                             uint32_t *n_tokens, char *err, size_t err_len);

#endif
