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

enum { REQ_MAX_STOP = 16 };

enum req_kind { REQ_CHAT, REQ_COMPLETION };
enum req_role { REQ_ROLE_SYSTEM, REQ_ROLE_USER, REQ_ROLE_ASSISTANT };

struct req_limits {
    uint64_t max_body_bytes;
    uint32_t max_tokens;          /* cap on max_tokens */
    uint32_t default_max_tokens;
    uint32_t max_stop, max_stop_len;
    uint32_t max_messages;
    uint32_t max_detok_tokens;    /* ids in a /detokenize request */
};

struct req_message {
    enum req_role role;
    char *content;                /* UTF-8, NUL-terminated (content may not contain NUL) */
};

struct gen_request {
    enum req_kind kind;
    char *prompt;                 /* REQ_COMPLETION */
    struct req_message *messages; /* REQ_CHAT: [n_messages] */
    uint32_t n_messages;
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
    char model[128];              /* as asked; "" when absent */
    struct jg_schema *schema;     /* response_format json_object / json_schema: the compiled
                                   * grammar the answer must match (owned); NULL for text */
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
