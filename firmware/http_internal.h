/* Internal to the daemon's HTTP layer (firmware/http_api.c: connections, dispatch and the
 * simple routes; firmware/http_generate.c: the generation routes and their answers, blocking
 * and streamed): the per-connection and per-request state and the helpers both use. */
#ifndef FLASHBOX_FIRMWARE_HTTP_INTERNAL_H
#define FLASHBOX_FIRMWARE_HTTP_INTERNAL_H

#include "firmware/api_shapes.h"
#include "firmware/http_api.h"
#include "firmware/metrics.h"
#include "firmware/peer.h"
#include "firmware/request_parse.h"
#include "firmware/scheduler.h"

#include <jansson.h>
#include <microhttpd.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum { WAIT_SLICE_MS = 50 };

/* One connection: who is on the other end (fixed at accept). */
struct conn {
    struct peer peer;
    int fd;
    int peer_err;
    struct conn *prev, *next; /* in api->conns */
};

/* One request on a connection. */
struct req {
    struct api *api;
    struct conn *conn;
    struct serve_config cfg;      /* snapshot at request start */
    char model_id[128];           /* the served model's name at request start */
    enum metrics_endpoint ep;
    const char *method, *path;
    char id[40];
    uint64_t t0_ns;
    char *body;                   /* [body_cap] */
    size_t body_len, body_cap;
    int body_too_large;
    int status;
    const char *finish;
    uint64_t tokens_in, tokens_out;
    uint64_t tokens_reused;     /* prompt tokens resumed from the prefix cache */
    char *audit_prompt;           /* only with audit.log_prompts */
    int denied;
    int uid_counted;              /* holds one of its uid's per_uid slots */

    /* Generation. */
    struct job *job;
    int chat;
    int64_t created;
    /* SSE state: per choice (n > 1 streams every choice, its chunks carrying its index);
     * cur is the choice being produced. */
    struct choice_stream {
        size_t sent;              /* job text bytes already sent */
        uint32_t lp_sent;         /* tokens whose logprobs were streamed */
        size_t lp_offset;         /* completions: text_offset of the next token */
        uint32_t calls_named;     /* streamed calls whose name delta went out */
        size_t args_sent[16];     /* per streamed call: argument bytes sent */
        int role_sent, ended;
        uint32_t n_out;
    } cs[REQ_MAX_N];
    uint32_t cur;
    char *out;                    /* pending event bytes [out_len] */
    size_t out_len, out_off;
    int stream_ended, role_sent;  /* role_sent: Anthropic / Responses start events */
    uint64_t last_event_ns;
    /* Tool calls (chat with tools offered): the answer is read back for a DSML block. */
    int tools;
    struct job *more[REQ_MAX_N - 1]; /* n > 1: the other choices' jobs, [n_more] */
    uint32_t n_more;
    int deadline_partial;         /* header Flashbox-Deadline: partial (finish_reason "length" at the deadline) */
    enum { FLAVOR_OPENAI, FLAVOR_ANTHROPIC, FLAVOR_RESPONSES } flavor; /* the API shape of the answer */
    struct api_stream st;         /* Anthropic / Responses stream state */
    char model_path[160];         /* GET /v1/models/{id}: the id asked for */
    char detail[320];             /* audit note, e.g. why model output did not parse as a call */
};

/* Copies the live config into the request (SIGHUP may swap it while the request runs). */
void http_snapshot_cfg(struct api *a, struct req *r);
/* Queue a response; send_text takes ownership of text (malloc'd), send_json of obj. */
enum MHD_Result http_send_text(struct MHD_Connection *c, struct req *r, int status, const char *ctype, char *text,
                               size_t len);
enum MHD_Result http_send_json(struct MHD_Connection *c, struct req *r, int status, json_t *obj);
/* An error in the request's API shape (OpenAI, Anthropic or Responses). */
enum MHD_Result http_send_error(struct MHD_Connection *c, struct req *r, int status, const char *code, const char *msg);
/* Nonzero when the client has hung up on fd. */
int http_client_gone(int fd);
/* Whether an engine error is a lost GPU (503 device_lost rather than 500). */
bool http_is_device_lost(const char *engine_err);
/* The per-uid request limit: acquire returns 0 when the caller's uid is at its limit. */
int http_uid_acquire(struct api *a, struct req *r);
void http_uid_release(struct api *a, struct req *r);
/* POST /v1/chat/completions, /v1/completions, /v1/messages, /v1/responses. */
enum MHD_Result http_route_generate(struct MHD_Connection *c, struct req *r);

#endif
