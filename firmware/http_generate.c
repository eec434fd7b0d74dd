/* The generation routes of the daemon (POST /v1/chat/completions, /v1/completions,
 * /v1/messages, /v1/responses): admission (per-uid limits), the job on the scheduler, and
 * the answer in the request's API shape, blocking or streamed as server-sent events (text,
 * logprobs, tool-call deltas, n > 1 choices). Shared request state: http_internal.h. */
#include "firmware/http_internal.h"

#include "common/errmsg.h"
#include "common/mono_clock.h"
#include "firmware/api_logprobs.h"
#include "firmware/audit.h"
#include "firmware/textgen.h"
#include "firmware/tool_output.h"

#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ---- generation ---- */

static json_t *usage_json(const struct req *r, uint32_t n_out)
{
    return json_pack("{s:I,s:I,s:I}", "prompt_tokens", (json_int_t)r->tokens_in, "completion_tokens", (json_int_t)n_out,
                     "total_tokens", (json_int_t)(r->tokens_in + n_out));
}

static json_t *chunk_json(const struct req *r, json_t *choice)
{
    json_t *o = json_pack("{s:s+,s:s,s:I,s:s,s:[]}", "id", r->chat ? "chatcmpl-" : "cmpl-", r->id, "object",
                          r->chat ? "chat.completion.chunk" : "text_completion", "created", (json_int_t)r->created,
                          "model", r->model_id, "choices");
    if (o && choice) json_array_append_new(json_object_get(o, "choices"), choice);
    else json_decref(choice);
    return o;
}

/* A streaming choice carrying text (or, for chat, a role) and a finish reason. Chat text
 * before the end of the model's reasoning goes in delta.reasoning_content. */
static json_t *stream_choice(const struct req *r, const char *text, size_t len, int with_role, const char *finish,
                             int reasoning)
{
    json_t *fin = finish ? json_string(finish) : json_null();
    json_t *content = text ? json_stringn(text, len) : NULL;
    if (text && !content) content = json_string("\xef\xbf\xbd");
    if (r->chat) {
        json_t *delta = json_object();
        if (with_role) json_object_set_new(delta, "role", json_string("assistant"));
        if (content) json_object_set_new(delta, reasoning ? "reasoning_content" : "content", content);
        return json_pack("{s:i,s:o,s:o}", "index", (int)r->cur, "delta", delta, "finish_reason", fin);
    }
    return json_pack("{s:i,s:o,s:n,s:o}", "index", (int)r->cur, "text", content ? content : json_string(""), "logprobs",
                     "finish_reason", fin);
}

/* Attaches the logprobs of tokens [from, to) to a choice (chat or completion shape). */
static void attach_logprobs(struct req *r, const struct job *j, json_t *choice, uint32_t from, uint32_t to)
{
    if (!choice || !j->logprobs || to <= from) return;
    size_t offset0 = 0, *offset = r->job->req.stream ? &r->cs[r->cur].lp_offset : j == r->job ? &r->cs[0].lp_offset : &offset0;
    pthread_rwlock_rdlock(&r->api->model_lock);
    json_t *lp = !r->api->tg ? NULL /* released meanwhile (a pause cuts this job off anyway) */
                 : r->chat   ? logprobs_chat_json(r->api->tg, j->logprobs + from, to - from)
                             : logprobs_completion_json(r->api->tg, j->logprobs + from, to - from, offset);
    pthread_rwlock_unlock(&r->api->model_lock);
    json_object_set_new(choice, "logprobs", lp);
}

/* Appends "data: <json>\n\n" to the pending output. */
static int out_event(struct req *r, json_t *o)
{
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!s) return -1;
    size_t n = strlen(s);
    char *p = realloc(r->out, r->out_len + n + 8);
    if (!p) {
        free(s);
        return -1;
    }
    r->out = p;
    memcpy(r->out + r->out_len, "data: ", 6);
    memcpy(r->out + r->out_len + 6, s, n);
    memcpy(r->out + r->out_len + 6 + n, "\n\n", 2);
    r->out_len += n + 8;
    free(s);
    return 0;
}

static int out_raw(struct req *r, const char *s)
{
    size_t n = strlen(s);
    char *p = realloc(r->out, r->out_len + n);
    if (!p) return -1;
    r->out = p;
    memcpy(r->out + r->out_len, s, n);
    r->out_len += n;
    return 0;
}

/* Writes [name, data] pairs as "event: name\ndata: json\n\n" (Anthropic and Responses
 * streams name their events). Consumes events. */
static int out_named(struct req *r, json_t *events)
{
    int rc = 0;
    size_t i;
    json_t *ev;
    json_array_foreach(events, i, ev) {
        char head[96];
        snprintf(head, sizeof head, "event: %s\n", json_string_value(json_array_get(ev, 0)));
        if (out_raw(r, head) || out_event(r, json_incref(json_array_get(ev, 1)))) rc = -1;
    }
    json_decref(events);
    return rc;
}

/* The parts of a result known before the end (ids, model, prompt size). */
static struct api_result result_head(const struct req *r)
{
    return (struct api_result){ .id = r->id, .model = r->model_id, .created = r->created, .n_in = r->tokens_in };
}

static const char *openai_finish(enum job_finish f)
{
    return f == JOB_STOP ? "stop" : f == JOB_LENGTH ? "length" : job_finish_name(f);
}

/* Waits on the job's condition (lock held) for at most WAIT_SLICE_MS, so the caller can look
 * at the client between slices. */
static void wait_job_slice(struct job *j)
{
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_nsec += WAIT_SLICE_MS * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&j->cond, &j->lock, &until);
}

/* The answer (text after the reasoning) read back for tool calls; on output that starts a
 * block but does not parse, no calls and the reason goes to the audit log. */
static void read_tool_calls(struct req *r, const char *answer, size_t len, struct tool_output *o)
{
    const struct gen_request *g = &r->job->req;
    const char *names[128];
    uint32_t n = g->n_tools < 128 ? g->n_tools : 128;
    for (uint32_t i = 0; i < n; i++) names[i] = g->tools[i].name;
    char err[256];
    if (tool_output_parse(answer, len, names, n, o, err, sizeof err)) {
        snprintf(r->detail, sizeof r->detail, "model output returned as text: %s", err);
        return;
    }
    if (!g->parallel_tool_calls && o->n_calls > 1) { /* the first call only, as asked */
        for (uint32_t i = 1; i < o->n_calls; i++) {
            free(o->calls[i].name);
            free(o->calls[i].arguments);
        }
        o->n_calls = 1;
    }
}

/* OpenAI's tool_calls array; with stream_index, the deltas' form (index, and arguments
 * left for a later delta). */
static json_t *tool_calls_json(const struct req *r, const struct tool_output *o, uint32_t i0, uint32_t n, int stream)
{
    json_t *a = json_array();
    for (uint32_t i = i0; a && i < i0 + n; i++) {
        char id[64];
        snprintf(id, sizeof id, "call_%s_%u", r->id, i);
        json_t *fn = json_pack("{s:s,s:s}", "name", o->calls[i].name, "arguments", stream ? "" : o->calls[i].arguments);
        json_t *c = json_pack("{s:s,s:s,s:o}", "id", id, "type", "function", "function", fn);
        if (c && stream) json_object_set_new(c, "index", json_integer(i));
        json_array_append_new(a, c);
    }
    return a;
}

/* Streamed call deltas as OpenAI sends them: index, id, type and name first, then argument
 * fragments. */
static int stream_call_name(struct req *r, uint32_t i, const char *name)
{
    char id[64];
    snprintf(id, sizeof id, "call_%s_%u", r->id, i);
    json_t *c = stream_choice(r, NULL, 0, 0, NULL, 0);
    json_object_set_new(json_object_get(c, "delta"), "tool_calls",
                        json_pack("[{s:I,s:s,s:s,s:{s:s,s:s}}]", "index", (json_int_t)i, "id", id, "type", "function",
                                  "function", "name", name, "arguments", ""));
    return out_event(r, chunk_json(r, c));
}

static int stream_call_args(struct req *r, uint32_t i, const char *args, size_t n)
{
    json_t *c = stream_choice(r, NULL, 0, 0, NULL, 0);
    json_object_set_new(json_object_get(c, "delta"), "tool_calls",
                        json_pack("[{s:I,s:{s:s%}}]", "index", (json_int_t)i, "function", "arguments", args, n));
    return out_event(r, chunk_json(r, c));
}

/* While a call block streams in (the job's lock held, everything before the block sent):
 * the deltas of what is new in it. 1 when something went out, 0 when nothing did, -1 when
 * the client is gone. */
static int sse_tool_call_deltas(struct req *r, const char *answer, size_t len)
{
    const struct gen_request *g = &r->job->req;
    const char *names[128];
    struct choice_stream *c = &r->cs[r->cur];
    uint32_t n = g->n_tools < 128 ? g->n_tools : 128, max = g->parallel_tool_calls ? 16 : 1;
    for (uint32_t i = 0; i < n; i++) names[i] = g->tools[i].name;
    struct tool_call_partial calls[16];
    uint32_t k = tool_output_partial(answer, len, names, n, calls, max);
    int rc = 0;
    for (uint32_t i = 0; i < k && rc >= 0; i++) {
        if (i >= c->calls_named) {
            if (stream_call_name(r, i, calls[i].name)) rc = -1;
            c->calls_named = i + 1;
            c->args_sent[i] = 0;
            if (rc == 0) rc = 1;
        }
        if (rc >= 0 && calls[i].args_len > c->args_sent[i]) {
            if (stream_call_args(r, i, calls[i].args + c->args_sent[i], calls[i].args_len - c->args_sent[i])) rc = -1;
            else rc = 1;
            c->args_sent[i] = calls[i].args_len;
        }
    }
    tool_output_partial_free(calls, k);
    return rc;
}

/* Streaming: the end of a tools answer. The text past what was sent is content up to the
 * block; then each call as OpenAI streams it: id, type and name first, then the arguments. */
static int sse_tool_calls(struct req *r, const char *answer, size_t answer_len, size_t answer_sent,
                          const char **finish)
{
    struct tool_output o;
    read_tool_calls(r, answer, answer_len, &o);
    if (o.content_len > answer_sent &&
        out_event(r, chunk_json(r, stream_choice(r, answer + answer_sent, o.content_len - answer_sent, 0, NULL, 0))))
        goto fail;
    for (uint32_t i = 0; i < o.n_calls; i++) {
        /* what streamed while the block came in (tool_output_partial) is a prefix of this */
        const struct choice_stream *c = &r->cs[r->cur];
        size_t done = i < c->calls_named ? c->args_sent[i] : 0, total = strlen(o.calls[i].arguments);
        if (i >= c->calls_named && stream_call_name(r, i, o.calls[i].name)) goto fail;
        if (done < total && stream_call_args(r, i, o.calls[i].arguments + done, total - done)) goto fail;
    }
    if (o.n_calls) *finish = "tool_calls";
    tool_output_free(&o);
    return 0;
fail:
    tool_output_free(&o);
    return -1;
}

static const char *failure_message(enum job_finish f)
{
    return f == JOB_ERROR ? "generation failed" : f == JOB_DEADLINE ? "request deadline passed"
         : f == JOB_SHUTDOWN ? "the server is shutting down"
         : f == JOB_RELOAD ? "cancelled while the model was replaced; retry" : "cancelled";
}

/* The end of an Anthropic or Responses stream (job finished, its lock held): the rest of
 * the answer up to any call block, the calls, and the closing events; or an error event. */
static int sse_end_other(struct req *r)
{
    struct job *j = r->job;
    enum job_finish f = j->finish;
    r->tokens_out = j->n_out;
    r->finish = job_finish_name(f);
    r->stream_ended = 1;
    if (f == JOB_DEADLINE && r->deadline_partial) f = JOB_LENGTH; /* asked for what was produced */
    json_t *events = json_array();
    if (f != JOB_STOP && f != JOB_LENGTH) {
        /* A lost GPU is named (503, code device_lost) as in the OpenAI shape: the daemon reopens it. */
        bool lost = f == JOB_ERROR && http_is_device_lost(j->error);
        int status = lost ? 503 : f == JOB_DEADLINE ? 504 : f == JOB_ERROR ? 500 : 503;
        const char *code = lost ? "device_lost" : job_finish_name(f);
        char msg[sizeof j->error + 64];
        snprintf(msg, sizeof msg, lost ? "the engine failed during generation: %s" : "%s",
                 lost ? j->error : failure_message(f));
        if (lost) r->finish = "device_lost";
        if (r->flavor == FLAVOR_ANTHROPIC) {
            json_array_append_new(events, json_pack("[s,o]", "error", anthropic_error_json(status, msg)));
        } else {
            struct api_result head = result_head(r);
            head.n_out = j->n_out;
            responses_stream_failed(&r->st, &head, code, msg, events);
        }
        return out_named(r, events);
    }
    size_t a0 = j->thinking ? (j->reasoning_known ? j->reasoning_end : j->text_len) : 0;
    const char *answer = j->text + a0;
    size_t len = j->text_len - a0, sent = r->cs[0].sent > a0 ? r->cs[0].sent - a0 : 0;
    struct tool_output o = { .content_len = len };
    if (r->tools && f == JOB_STOP) read_tool_calls(r, answer, len, &o);
    struct api_result res = result_head(r);
    if (j->thinking) {
        res.reasoning = j->text;
        res.reasoning_len = a0;
    }
    if (o.content_len > sent) {
        if (r->flavor == FLAVOR_ANTHROPIC) anthropic_stream_delta(&r->st, false, answer + sent, o.content_len - sent, events);
        else responses_stream_delta(&r->st, &res, false, answer + sent, o.content_len - sent, events);
    }
    r->cs[0].sent = j->text_len;
    int si = j->stop_index;
    bool by_string = si >= 0 && (uint32_t)si < j->req.n_stop;
    res.content = answer;
    res.content_len = o.content_len;
    res.calls = &o;
    res.end = o.n_calls ? API_END_TOOL_CALLS : f == JOB_LENGTH ? API_END_LENGTH : by_string ? API_END_STOP_STRING : API_END_STOP;
    res.stop_string = by_string ? j->req.stop[si] : NULL;
    res.n_out = j->n_out;
    if (r->flavor == FLAVOR_ANTHROPIC) anthropic_stream_end(&r->st, &res, events);
    else responses_stream_end(&r->st, &res, events);
    tool_output_free(&o);
    return out_named(r, events);
}

static struct job *choice_job(const struct req *r, uint32_t k) { return k ? r->more[k - 1] : r->job; }

/* OpenAI streams with n > 1: once every choice has ended, the usage chunk and [DONE]; else
 * the next choice not ended becomes current. */
static int sse_next_choice(struct req *r)
{
    uint32_t n = r->n_more + 1;
    for (uint32_t step = 1; step <= n; step++) {
        uint32_t k = (r->cur + step) % n;
        if (!r->cs[k].ended) {
            r->cur = k;
            return 0;
        }
    }
    uint64_t total = 0;
    for (uint32_t k = 0; k < n; k++) total += r->cs[k].n_out;
    r->tokens_out = total;
    if (r->job->req.include_usage) {
        json_t *o = chunk_json(r, NULL);
        if (o) json_object_set_new(o, "usage", usage_json(r, (uint32_t)total));
        out_event(r, o);
    }
    r->stream_ended = 1;
    return out_raw(r, "data: [DONE]\n\n");
}

/* Produces the next SSE events into r->out; returns -1 when the client is gone. With n > 1
 * (OpenAI shapes), the choices take turns: each produces what it has, and the wait is on
 * one choice only once none had anything. */
static int sse_produce(struct req *r)
{
    if (!r->role_sent) {
        r->role_sent = 1;
        if (r->flavor != FLAVOR_OPENAI) {
            json_t *events = json_array();
            struct api_result head = result_head(r);
            if (r->flavor == FLAVOR_ANTHROPIC) anthropic_stream_start(&r->st, &head, events);
            else responses_stream_start(&r->st, &head, events);
            return out_named(r, events);
        }
    }
    uint32_t idle = 0;
    for (;;) {
        struct job *j = choice_job(r, r->cur);
        struct choice_stream *c = &r->cs[r->cur];
        if (r->flavor == FLAVOR_OPENAI && r->chat && !c->role_sent) {
            c->role_sent = 1;
            return out_event(r, chunk_json(r, stream_choice(r, NULL, 0, 1, NULL, 0)));
        }
        pthread_mutex_lock(&j->lock);
        if (j->model_id[0]) memcpy(r->model_id, j->model_id, sizeof r->model_id); /* queued across a model swap */
        size_t upto = j->committed;
        int reasoning = 0;
        if (upto > c->sent) {
            /* Thinking mode: up to the end of the reasoning (all of it while that end is
             * unknown) the text is reasoning; one event never mixes the two. */
            if (j->thinking && (!j->reasoning_known || c->sent < j->reasoning_end)) {
                reasoning = 1;
                if (j->reasoning_known && j->reasoning_end < upto) upto = j->reasoning_end;
            } else if (r->tools) {
                /* answer text that may start a call block waits for the end */
                size_t a0 = j->thinking ? j->reasoning_end : 0;
                upto = a0 + tool_output_safe_prefix(j->text + a0, upto - a0);
            }
        }
        if (upto > c->sent) {
            size_t n = upto - c->sent;
            char *delta = malloc(n);
            if (delta) memcpy(delta, j->text + c->sent, n);
            c->sent = upto;
            uint32_t lp_to = j->n_out; /* entries below n_out no longer change */
            if (r->flavor != FLAVOR_OPENAI) {
                /* under the lock: a Responses reasoning item closes with the reasoning text */
                json_t *events = json_array();
                struct api_result head = result_head(r);
                head.reasoning = j->text;
                head.reasoning_len = j->reasoning_known ? j->reasoning_end : j->text_len;
                if (delta && r->flavor == FLAVOR_ANTHROPIC) anthropic_stream_delta(&r->st, reasoning, delta, n, events);
                else if (delta) responses_stream_delta(&r->st, &head, reasoning, delta, n, events);
                pthread_mutex_unlock(&j->lock);
                free(delta);
                return delta ? out_named(r, events) : (json_decref(events), -1);
            }
            pthread_mutex_unlock(&j->lock);
            if (!delta) return -1;
            json_t *choice = stream_choice(r, delta, n, 0, NULL, reasoning);
            attach_logprobs(r, j, choice, c->lp_sent, lp_to);
            c->lp_sent = lp_to;
            int rc = out_event(r, chunk_json(r, choice));
            free(delta);
            return rc;
        }
        if (r->tools && r->flavor == FLAVOR_OPENAI && r->chat && upto == c->sent && upto < j->committed &&
            (!j->thinking || j->reasoning_known)) {
            /* everything before a call block is out: the block's deltas as it comes */
            size_t a0 = j->thinking ? j->reasoning_end : 0;
            int rc = c->sent >= a0 ? sse_tool_call_deltas(r, j->text + a0, j->committed - a0) : 0;
            if (rc) {
                pthread_mutex_unlock(&j->lock);
                return rc < 0 ? -1 : 0;
            }
        }
        if (j->finish != JOB_RUNNING && r->flavor != FLAVOR_OPENAI) {
            int rc = sse_end_other(r);
            pthread_mutex_unlock(&j->lock);
            return rc;
        }
        if (j->finish != JOB_RUNNING) {
            enum job_finish f = j->finish;
            if (f == JOB_DEADLINE && r->deadline_partial) f = JOB_LENGTH; /* asked for what was produced */
            uint32_t n_out = j->n_out;
            bool lost = f == JOB_ERROR && http_is_device_lost(j->error);
            char lost_msg[sizeof j->error];
            memcpy(lost_msg, j->error, sizeof lost_msg);
            const char *finish = openai_finish(f);
            if (r->tools && (f == JOB_STOP || f == JOB_LENGTH)) {
                /* the job is finished: its text no longer changes */
                size_t a0 = j->thinking ? (j->reasoning_known ? j->reasoning_end : j->text_len) : 0;
                if (c->sent >= a0 && sse_tool_calls(r, j->text + a0, j->text_len - a0, c->sent - a0, &finish)) {
                    pthread_mutex_unlock(&j->lock);
                    return -1;
                }
                c->sent = j->text_len;
                if (f == JOB_LENGTH) finish = "length";
            }
            pthread_mutex_unlock(&j->lock);
            c->ended = 1;
            c->n_out = n_out;
            r->finish = lost ? "device_lost" : job_finish_name(f);
            if (f == JOB_STOP || f == JOB_LENGTH) {
                json_t *choice = stream_choice(r, NULL, 0, 0, finish, 0);
                attach_logprobs(r, j, choice, c->lp_sent, n_out < j->req.max_tokens ? n_out : j->req.max_tokens);
                out_event(r, chunk_json(r, choice));
            } else {
                const char *msg = lost ? lost_msg : failure_message(f);
                out_event(r, json_pack("{s:{s:s,s:s,s:s}}", "error", "message", msg, "type", "server_error", "code",
                                       lost ? "device_lost" : job_finish_name(f)));
                for (uint32_t k = 0; k <= r->n_more; k++) { /* an error ends the stream */
                    if (!r->cs[k].ended) scheduler_cancel(r->api->sched, choice_job(r, k));
                    r->cs[k].ended = 1;
                }
            }
            return sse_next_choice(r);
        }
        if (r->n_more && ++idle <= r->n_more) { /* another choice may have something */
            pthread_mutex_unlock(&j->lock);
            sse_next_choice(r);
            continue;
        }
        idle = 0;
        wait_job_slice(j);
        pthread_mutex_unlock(&j->lock);
        if (http_client_gone(r->conn->fd)) {
            for (uint32_t k = 0; k <= r->n_more; k++) scheduler_cancel(r->api->sched, choice_job(r, k));
            return -1;
        }
        if (mono_ns() - r->last_event_ns > (uint64_t)r->cfg.sse_ping_s * 1000000000ull)
            return out_raw(r, r->flavor == FLAVOR_ANTHROPIC ? "event: ping\ndata: {\"type\": \"ping\"}\n\n" : ": ping\n\n");
    }
}

static ssize_t sse_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    struct req *r = cls;
    if (r->out_off == r->out_len) {
        r->out_len = r->out_off = 0;
        if (r->stream_ended) return MHD_CONTENT_READER_END_OF_STREAM;
        if (sse_produce(r)) return MHD_CONTENT_READER_END_WITH_ERROR;
        r->last_event_ns = mono_ns();
    }
    size_t n = r->out_len - r->out_off;
    if (n > max) n = max;
    memcpy(buf, r->out + r->out_off, n);
    r->out_off += n;
    return (ssize_t)n;
}

/* Waits for a job in this connection's thread; -1 when the client left (every job of the
 * request is then cancelled). */
static int wait_job(struct req *r, struct job *j)
{
    pthread_mutex_lock(&j->lock);
    while (j->finish == JOB_RUNNING) {
        wait_job_slice(j);
        if (j->finish != JOB_RUNNING) break;
        pthread_mutex_unlock(&j->lock);
        if (http_client_gone(r->conn->fd)) {
            scheduler_cancel(r->api->sched, r->job);
            for (uint32_t k = 0; k < r->n_more; k++) scheduler_cancel(r->api->sched, r->more[k]);
            r->finish = "cancelled";
            return -1;
        }
        pthread_mutex_lock(&j->lock);
    }
    pthread_mutex_unlock(&j->lock);
    return 0;
}

/* A finished job's answer as an OpenAI choice (index k), or its API shape for the other
 * flavours (*shaped). NULL with *status and *code set when the job failed. */
static json_t *finished_answer(struct req *r, struct job *j, uint32_t k, int *status, const char **code, char *why,
                               size_t why_len)
{
    pthread_mutex_lock(&j->lock); /* finished: nothing changes any more, the lock is for the memory order */
    enum job_finish f = j->finish;
    uint32_t n_out = j->n_out;
    bool lost = f == JOB_ERROR && http_is_device_lost(j->error);
    if (j->model_id[0]) memcpy(r->model_id, j->model_id, sizeof r->model_id); /* queued across a model swap */
    /* Thinking mode: the reasoning (all of the text if it never ended) is separate. */
    size_t split = !j->thinking ? 0 : j->reasoning_known && j->reasoning_end < j->text_len ? j->reasoning_end : j->text_len;
    json_t *text = json_stringn(j->text + split, j->text_len - split);
    json_t *reasoning = j->thinking ? json_stringn(j->text, split) : NULL;
    snprintf(why, why_len, "the engine failed during generation: %s", j->error);
    pthread_mutex_unlock(&j->lock);
    r->tokens_out += n_out;
    r->finish = job_finish_name(f);
    /* a deadline answers with what was produced when the client asked for that */
    bool partial = f == JOB_DEADLINE && r->deadline_partial;
    if (partial) f = JOB_LENGTH;
    if (f != JOB_STOP && f != JOB_LENGTH) {
        json_decref(text);
        json_decref(reasoning);
        /* A lost GPU is not this request's fault and not for good: the daemon reopens the backend. */
        *status = lost ? 503 : f == JOB_ERROR ? 500 : f == JOB_DEADLINE ? 504 : 503;
        *code = lost ? "device_lost" : f == JOB_ERROR ? "generation_failed" : f == JOB_DEADLINE ? "deadline"
              : f == JOB_RELOAD ? "model_reload" : "shutdown";
        if (f == JOB_DEADLINE) snprintf(why, why_len, "the request deadline passed before the answer was complete");
        else if (f == JOB_RELOAD) snprintf(why, why_len, "cancelled while the model was replaced; retry");
        else if (f != JOB_ERROR) snprintf(why, why_len, "the server is shutting down");
        return NULL;
    }
    if (!text) text = json_string("");
    json_t *calls = NULL;
    const char *finish = openai_finish(f);
    struct tool_output o = { .content_len = json_string_length(text) };
    if (r->tools && f == JOB_STOP) read_tool_calls(r, json_string_value(text), json_string_length(text), &o);
    if (r->flavor != FLAVOR_OPENAI) {
        int si = j->stop_index;
        struct api_result res = {
            .id = r->id, .model = r->model_id, .created = r->created,
            .reasoning = reasoning ? json_string_value(reasoning) : NULL,
            .reasoning_len = reasoning ? json_string_length(reasoning) : 0,
            .content = json_string_value(text), .content_len = o.content_len, .calls = &o,
            .end = o.n_calls ? API_END_TOOL_CALLS : f == JOB_LENGTH ? API_END_LENGTH
                 : si >= 0 && (uint32_t)si < j->req.n_stop ? API_END_STOP_STRING : API_END_STOP,
            .stop_string = si >= 0 && (uint32_t)si < j->req.n_stop ? j->req.stop[si] : NULL,
            .n_in = r->tokens_in, .n_out = n_out,
        };
        json_t *out = r->flavor == FLAVOR_ANTHROPIC ? anthropic_message_json(&res)
                                                    : responses_json(&res, f == JOB_LENGTH ? "incomplete" : "completed");
        tool_output_free(&o);
        json_decref(text);
        json_decref(reasoning);
        return out;
    }
    if (o.n_calls) {
        calls = tool_calls_json(r, &o, 0, o.n_calls, 0);
        json_t *content = o.content_len ? json_stringn(json_string_value(text), o.content_len) : json_null();
        json_decref(text);
        text = content;
        finish = "tool_calls";
    }
    tool_output_free(&o);
    json_t *choice = r->chat ? json_pack("{s:I,s:{s:s,s:o},s:s}", "index", (json_int_t)k, "message", "role", "assistant",
                                         "content", text, "finish_reason", finish)
                             : json_pack("{s:I,s:o,s:n,s:s}", "index", (json_int_t)k, "text", text, "logprobs",
                                         "finish_reason", finish);
    if (reasoning && choice) json_object_set_new(json_object_get(choice, "message"), "reasoning_content", reasoning);
    else json_decref(reasoning);
    if (calls && choice) json_object_set_new(json_object_get(choice, "message"), "tool_calls", calls);
    else json_decref(calls);
    attach_logprobs(r, j, choice, 0, n_out < j->req.max_tokens ? n_out : j->req.max_tokens);
    return choice;
}

/* Non-streaming: waits for the request's jobs (one per choice) in this connection's thread. */
static enum MHD_Result finish_blocking(struct MHD_Connection *c, struct req *r)
{
    json_t *choices = json_array();
    r->tokens_out = 0;
    for (uint32_t k = 0; k <= r->n_more; k++) {
        struct job *j = k ? r->more[k - 1] : r->job;
        if (wait_job(r, j)) {
            json_decref(choices);
            return MHD_NO; /* nobody to answer; MHD closes the connection */
        }
        int status = 0;
        const char *code = NULL;
        char why[sizeof j->error + 64];
        json_t *a = finished_answer(r, j, k, &status, &code, why, sizeof why);
        if (!a) {
            json_decref(choices);
            for (uint32_t m = 0; m < r->n_more; m++) scheduler_cancel(r->api->sched, r->more[m]);
            return http_send_error(c, r, status, code, why);
        }
        if (r->flavor != FLAVOR_OPENAI) {
            json_decref(choices);
            return http_send_json(c, r, 200, a);
        }
        json_array_append_new(choices, a);
    }
    json_t *resp = json_pack("{s:s+,s:s,s:I,s:s,s:o,s:o}", "id", r->chat ? "chatcmpl-" : "cmpl-", r->id, "object",
                             r->chat ? "chat.completion" : "text_completion", "created", (json_int_t)r->created, "model",
                             r->model_id, "choices", choices, "usage", usage_json(r, (uint32_t)r->tokens_out));
    return http_send_json(c, r, 200, resp);
}

/* Takes one of the peer uid's in-flight places; 0 when over the cap (or the table is full). */
int http_uid_acquire(struct api *a, struct req *r)
{
    if (!r->cfg.max_requests_per_uid || !r->conn->peer.is_unix) return 1;
    uint32_t uid = (uint32_t)r->conn->peer.uid;
    int ok = 0;
    pthread_mutex_lock(&a->conns_lock);
    int free_i = -1, at = -1;
    for (int i = 0; i < 64; i++) {
        if (a->per_uid[i].n && a->per_uid[i].uid == uid) at = i;
        if (!a->per_uid[i].n && free_i < 0) free_i = i;
    }
    if (at < 0 && free_i >= 0) {
        at = free_i;
        a->per_uid[at].uid = uid;
    }
    if (at >= 0 && a->per_uid[at].n < r->cfg.max_requests_per_uid) {
        a->per_uid[at].n++;
        r->uid_counted = 1;
        ok = 1;
    }
    pthread_mutex_unlock(&a->conns_lock);
    return ok;
}

void http_uid_release(struct api *a, struct req *r)
{
    if (!r->uid_counted) return;
    pthread_mutex_lock(&a->conns_lock);
    for (int i = 0; i < 64; i++)
        if (a->per_uid[i].n && a->per_uid[i].uid == (uint32_t)r->conn->peer.uid) {
            a->per_uid[i].n--;
            break;
        }
    pthread_mutex_unlock(&a->conns_lock);
    r->uid_counted = 0;
}

enum MHD_Result http_route_generate(struct MHD_Connection *c, struct req *r)
{
    struct api *a = r->api;
    char err[256];
    struct req_limits lim = {
        .max_body_bytes = r->cfg.max_body_bytes,
        .max_tokens = r->cfg.max_tokens,
        .default_max_tokens = r->cfg.default_max_tokens,
        .max_stop = r->cfg.max_stop,
        .max_stop_len = r->cfg.max_stop_len,
        .max_messages = r->cfg.max_messages,
    };
    struct gen_request gr;
    r->chat = r->ep != METRICS_EP_COMPLETIONS;
    int rc;
    if (r->flavor != FLAVOR_OPENAI) {
        /* another API's body, translated into the chat body it means, then parsed as one */
        if (r->body_len > lim.max_body_bytes) return http_send_error(c, r, 413, "body_too_large", "request body too large");
        json_t *chat = r->flavor == FLAVOR_ANTHROPIC ? anthropic_to_chat(r->body, r->body_len, err, sizeof err)
                                                     : responses_to_chat(r->body, r->body_len, err, sizeof err);
        if (!chat) return http_send_error(c, r, 400, "invalid_request", err);
        char *body = json_dumps(chat, JSON_COMPACT);
        json_decref(chat);
        if (!body) return http_send_error(c, r, 500, "internal", "out of memory");
        lim.max_body_bytes = (uint64_t)strlen(body) + 1; /* the client's body was checked above */
        rc = request_parse_chat(body, strlen(body), &lim, &gr, err, sizeof err);
        free(body);
    } else {
        rc = r->chat ? request_parse_chat(r->body, r->body_len, &lim, &gr, err, sizeof err)
                     : request_parse_completion(r->body, r->body_len, &lim, &gr, err, sizeof err);
    }
    if (rc) return http_send_error(c, r, 400, "invalid_request", err);
    if (gr.n > 1) {
        /* each choice decodes in its own slot: no more choices than slots; streamed in the OpenAI
         * shapes only (chunks carry the choice's index) */
        struct sched_stats st;
        scheduler_stats(a->sched, &st);
        const char *why = gr.stream && r->flavor != FLAVOR_OPENAI ? "n > 1 is not supported in this API's stream" : NULL;
        char msg[128];
        if (!why && gr.n > st.slots) {
            snprintf(msg, sizeof msg, "n: %u, at most %u here (one decoding slot per choice: server.slots)", gr.n, st.slots);
            why = msg;
        }
        if (why) {
            gen_request_free(&gr);
            return http_send_error(c, r, 400, "invalid_request", why);
        }
    }
    const char *dl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Flashbox-Deadline");
    r->deadline_partial = dl && !strcmp(dl, "partial");
    int32_t *prompt;
    uint32_t n_prompt;
    /* The tokenizer's generation travels with the job: one queued across a model swap is
     * encoded again by the scheduler with the new model's tokenizer. */
    pthread_rwlock_rdlock(&a->model_lock);
    uint32_t model_gen = a->model_gen;
    rc = a->tg ? textgen_prompt(a->tg, &gr, &prompt, &n_prompt, err, sizeof err) : 1;
    pthread_rwlock_unlock(&a->model_lock);
    if (rc) {
        gen_request_free(&gr);
        return rc == 1 ? http_send_error(c, r, 503, "paused", API_PAUSED_MESSAGE) : http_send_error(c, r, 400, "invalid_request", err);
    }
    uint32_t n_ctx = scheduler_n_ctx(a->sched);
    uint32_t cap = r->cfg.max_prompt_tokens && r->cfg.max_prompt_tokens < n_ctx ? r->cfg.max_prompt_tokens : n_ctx - 1;
    if (n_prompt == 0 || n_prompt > cap) {
        snprintf(err, sizeof err, "prompt: %u tokens, the limit is %u (context %u)", n_prompt, cap, n_ctx);
        free(prompt);
        gen_request_free(&gr);
        return http_send_error(c, r, 400, n_prompt ? "context_length_exceeded" : "invalid_request", err);
    }
    r->tokens_in = n_prompt;
    if (!http_uid_acquire(a, r)) {
        free(prompt);
        gen_request_free(&gr);
        metrics_rejected("peer_quota");
        return http_send_error(c, r, 429, "peer_quota", "this peer has limits.max_requests_per_uid requests in flight");
    }
    if (r->cfg.log_prompts) r->audit_prompt = strndup(r->body, r->body_len);
    struct job *j = job_create(&gr, prompt, n_prompt, r->cfg.request_deadline_s);
    if (!j) {
        http_uid_release(a, r);
        free(prompt);
        gen_request_free(&gr);
        return http_send_error(c, r, 500, "internal", "out of memory");
    }
    j->model_gen = model_gen;
    enum sched_submit sr = scheduler_submit(a->sched, j);
    if (sr != SCHED_OK) {
        http_uid_release(a, r);
        job_release(j);
        metrics_rejected(sr == SCHED_FULL ? "queue_full" : "shutdown");
        return sr == SCHED_FULL ? http_send_error(c, r, 429, "queue_full", "too many requests waiting; retry later")
                                : http_send_error(c, r, 503, "shutdown", "the server is shutting down");
    }
    r->job = j;
    r->tools = r->chat && j->req.n_tools > 0 && j->req.tool_choice != REQ_TOOL_NONE;
    atomic_fetch_add(&a->in_flight, 1);
    /* n > 1: the other choices, each its own job on the same prompt (the body parsed again:
     * the same request), seeded seed + i when the request is seeded */
    for (uint32_t k = 1; k < j->req.n; k++) {
        struct gen_request gk;
        rc = r->chat ? request_parse_chat(r->body, r->body_len, &lim, &gk, err, sizeof err)
                     : request_parse_completion(r->body, r->body_len, &lim, &gk, err, sizeof err);
        int32_t *pk = rc ? NULL : malloc((size_t)n_prompt * sizeof *pk);
        struct job *jk = NULL;
        if (pk) {
            memcpy(pk, j->prompt, (size_t)n_prompt * sizeof *pk);
            gk.seed += k;
            jk = job_create(&gk, pk, n_prompt, r->cfg.request_deadline_s);
        }
        if (jk) jk->model_gen = model_gen;
        if (!jk || scheduler_submit(a->sched, jk) != SCHED_OK) {
            if (!jk) {
                free(pk);
                if (!rc) gen_request_free(&gk);
            }
            job_release(jk);
            scheduler_cancel(a->sched, j);
            for (uint32_t m = 0; m < r->n_more; m++) scheduler_cancel(a->sched, r->more[m]);
            metrics_rejected("queue_full");
            return http_send_error(c, r, 429, "queue_full", "not enough room in the queue for every choice; retry later");
        }
        r->more[r->n_more++] = jk;
    }
    r->created = (int64_t)time(NULL);
    if (!j->req.stream) return finish_blocking(c, r);
    r->last_event_ns = mono_ns();
    struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, sse_reader, r, NULL);
    if (!resp) return MHD_NO;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    MHD_add_response_header(resp, "X-Request-Id", r->id);
    r->status = 200;
    enum MHD_Result ret = MHD_queue_response(c, 200, resp);
    MHD_destroy_response(resp);
    return ret;
}
