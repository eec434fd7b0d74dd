/* The other API shapes on the same socket: Anthropic's Messages API (POST /v1/messages) and
 * OpenAI's Responses API (POST /v1/responses, stateless). Each request body is translated
 * into the equivalent chat completions body, which request_parse.c then checks like any
 * other (one parser, one set of limits); each finished or streaming generation is written
 * back in the API's own shape from one flavour-neutral result. Pure: JSON in, JSON out. */
#ifndef FLASHBOX_FIRMWARE_API_SHAPES_H
#define FLASHBOX_FIRMWARE_API_SHAPES_H

#include "firmware/tool_output.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum api_end {
    API_END_STOP,        /* the model ended its turn */
    API_END_STOP_STRING, /* a stop string (stop_string says which) */
    API_END_LENGTH,      /* max tokens */
    API_END_TOOL_CALLS,  /* the answer ends in calls */
};

/* A generation as the shapes need it; text pointers need not be NUL-terminated. */
struct api_result {
    const char *id;              /* the request id */
    const char *model;
    int64_t created;             /* unix seconds */
    const char *reasoning;       /* thinking mode: the reasoning, NULL when not thinking */
    size_t reasoning_len;
    const char *content;         /* the answer before any call block */
    size_t content_len;
    const struct tool_output *calls; /* NULL or n_calls 0: none */
    enum api_end end;
    const char *stop_string;     /* API_END_STOP_STRING */
    uint64_t n_in, n_out;
};

/* Events of a stream: the caller writes each [name, data] pair as "event: name\ndata: json". */
struct api_stream {
    int block;                   /* Anthropic: index of the open content block, -1 none */
    int open;                    /* 0 none, 1 thinking, 2 text (Anthropic); item kind (Responses) */
    int next_block;              /* the next content block / output item index */
    uint64_t seq;                /* Responses: sequence_number of the next event */
    size_t text_len;             /* Responses: nonzero once a message item was opened */
};

/* A body that must be a JSON object (duplicate keys refused, U+0000 allowed, as
 * request_parse.c reads them), or NULL with err. */
json_t *api_body_object(const char *body, size_t len, char *err, size_t err_len);

/* A string, or an array of parts whose type is one of text_types with a "text" string
 * (other keys, e.g. cache_control, ignored), as a chat content value; media_types get a
 * message saying the model reads only text. NULL with err naming the part. */
json_t *api_text_parts(json_t *v, const char *name, const char *const *text_types, const char *const *media_types,
                       char *err, size_t err_len);

/* ---- Anthropic Messages ---- */
/* The body as a chat completions body (new reference), or NULL with err naming the field. */
json_t *anthropic_to_chat(const char *body, size_t len, char *err, size_t err_len);
json_t *anthropic_message_json(const struct api_result *res);
json_t *anthropic_error_json(int status, const char *message);
void anthropic_stream_start(struct api_stream *st, const struct api_result *head, json_t *events);
void anthropic_stream_delta(struct api_stream *st, bool reasoning, const char *text, size_t n, json_t *events);
void anthropic_stream_end(struct api_stream *st, const struct api_result *res, json_t *events);

/* ---- OpenAI Responses ---- */
json_t *responses_to_chat(const char *body, size_t len, char *err, size_t err_len);
json_t *responses_json(const struct api_result *res, const char *status);
void responses_stream_start(struct api_stream *st, const struct api_result *head, json_t *events);
void responses_stream_delta(struct api_stream *st, const struct api_result *head, bool reasoning, const char *text,
                            size_t n, json_t *events);
void responses_stream_end(struct api_stream *st, const struct api_result *res, json_t *events);
void responses_stream_failed(struct api_stream *st, const struct api_result *head, const char *code,
                             const char *message, json_t *events);

#endif
