/* Request queue and engine worker (see scheduler.h). Lock order: the scheduler's lock
 * before a job's lock, never the other way round. The worker holds no lock while it runs
 * the engine, so HTTP threads can queue, cancel and read text during a forward pass. */
#include "firmware/scheduler.h"

#include "engine/engine.h"
#include "common/errmsg.h"
#include "common/mono_clock.h"
#include "firmware/metrics.h"
#include "firmware/textgen.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void cond_init_monotonic(pthread_cond_t *c)
{
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(c, &a);
    pthread_condattr_destroy(&a);
}

static struct timespec abs_after_ms(uint64_t ms)
{
    uint64_t t = mono_ns() + ms * 1000000ull;
    return (struct timespec){ .tv_sec = (time_t)(t / 1000000000ull), .tv_nsec = (long)(t % 1000000000ull) };
}

/* ---- jobs ---- */

struct job *job_create(struct gen_request *req, int32_t *prompt, uint32_t n_prompt, uint32_t deadline_s)
{
    struct job *j = calloc(1, sizeof *j);
    if (!j) return NULL;
    /* Room for the common case up front; append doubles it when a long answer needs more. */
    j->text_cap = 4096;
    j->text = malloc(j->text_cap);
    if (!j->text) {
        free(j);
        return NULL;
    }
    j->req = *req;
    memset(req, 0, sizeof *req);
    j->prompt = prompt;
    j->n_prompt = n_prompt;
    if (j->req.logprobs) { /* allocated here, so the token loop allocates nothing */
        j->logprobs = malloc((size_t)j->req.max_tokens * sizeof *j->logprobs);
        if (!j->logprobs) {
            *req = j->req; /* the caller still owns it */
            free(j->text);
            free(j);
            return NULL;
        }
    }
    j->thinking = j->req.kind == REQ_CHAT && j->req.thinking;
    j->t_submit_ns = mono_ns();
    j->deadline_ns = j->t_submit_ns + (uint64_t)deadline_s * 1000000000ull;
    j->refs = 1;
    j->slot = -1;
    j->stop_index = -1;
    pthread_mutex_init(&j->lock, NULL);
    cond_init_monotonic(&j->cond);
    return j;
}

void job_release(struct job *j)
{
    if (!j) return;
    pthread_mutex_lock(&j->lock);
    int left = --j->refs;
    pthread_mutex_unlock(&j->lock);
    if (left) return;
    gen_request_free(&j->req);
    free(j->prompt);
    free(j->text);
    free(j->logprobs);
    pthread_mutex_destroy(&j->lock);
    pthread_cond_destroy(&j->cond);
    free(j);
}

const char *job_finish_name(enum job_finish f)
{
    switch (f) {
    case JOB_RUNNING: return NULL;
    case JOB_STOP: return "stop";
    case JOB_LENGTH: return "length";
    case JOB_CANCELLED: return "cancelled";
    case JOB_DEADLINE: return "deadline";
    case JOB_SHUTDOWN: return "shutdown";
    case JOB_ERROR: return "error";
    case JOB_RELOAD: return "reload";
    }
    return "error";
}

/* ---- scheduler ---- */

struct slot {
    struct session *sess;
    struct textgen_seq *seq;
    float *logits;       /* [n_vocab] logits of the last evaluated token */
    struct job *job;     /* NULL when free */
    uint32_t prefilled;  /* prompt tokens evaluated so far */
    bool in_step;        /* a prompt chunk of this slot is in the step being built */
    uint32_t step_n;     /* ... of this many tokens */
    uint64_t t_last_ns;  /* previous token's time */
};

/* A pending engine swap (scheduler_swap_engine): posted by the caller, carried out by the
 * worker once no slot is busy. Before: the new engine's slots; after: the old ones. */
struct swap_req {
    struct engine *engine;
    struct textgen *tg;
    struct slot *slots;  /* [opt.slots] */
    uint32_t n_vocab, n_ctx, gen;
    char model_id[128];
    uint64_t deadline_ns; /* running jobs still going then end with JOB_RELOAD */
    int cancelled;
    bool done;
};

struct scheduler {
    struct engine *engine;
    struct textgen *tg;
    struct sched_options opt;
    uint32_t n_vocab, n_ctx;
    struct slot *slots;  /* [opt.slots] */
    uint32_t slots_configured; /* server.slots; opt.slots is how many could be allocated */
    char slots_short[400];     /* why fewer than configured ("" when all were) */
    struct prefix_cache *prefix; /* NULL: prefix reuse off */
    int32_t *batch_tok;  /* [opt.slots] next token of each decoding slot, by slot */
    int *batch_slot;     /* [opt.slots] the slot of each step item */
    struct session_step *items; /* [opt.slots] the step being built */
    uint64_t prefill_left; /* prompt tokens of running jobs not yet evaluated (under lock) */
    bool deferred;       /* the last step left a prompt's chunk out for others' first tokens */

    pthread_mutex_t lock;
    pthread_cond_t wake; /* new job, cancel, stop, drain */
    pthread_cond_t idle; /* queue and slots empty */
    struct job *head, *tail;
    uint32_t n_queued, n_busy;
    bool stop, draining, cancel_all;
    uint64_t engine_errors;
    bool last_eval_failed;
    bool device_lost;             /* a step reported ENGINE_ERR_DEVICE_LOST; cleared by a swap */
    char device_lost_why[200];
    bool have_experts;
    bool have_device;
    uint64_t device_used, device_total;
    struct expert_counters experts; /* copied by the worker: the engine is only called from it */
    pthread_t worker;
    bool worker_started;
    uint32_t gen;          /* model_gen of the engine and tokenizer in use */
    char model_id[128];    /* the name of that model */
    struct swap_req *swap; /* NULL when none is pending */
};

uint32_t scheduler_n_ctx(struct scheduler *s)
{
    pthread_mutex_lock(&s->lock); /* a model swap changes it */
    uint32_t n = s->n_ctx;
    pthread_mutex_unlock(&s->lock);
    return n;
}

/* Appends bytes to the job's text under its lock. On out of memory the text is cut short
 * and the job ends with an error rather than losing bytes silently. */
static int job_append(struct job *j, const char *p, size_t n)
{
    if (j->text_len + n + 1 > j->text_cap) {
        size_t cap = j->text_cap * 2;
        while (cap < j->text_len + n + 1) cap *= 2;
        char *t = realloc(j->text, cap);
        if (!t) return -1;
        j->text = t;
        j->text_cap = cap;
    }
    memcpy(j->text + j->text_len, p, n);
    j->text_len += n;
    j->text[j->text_len] = 0;
    return 0;
}

/* Ends the slot's job. flush: append the text held back for stop-string matching and
 * an incomplete UTF-8 tail (not after a stop string, whose text is cut off). */
static void slot_finish_ex(struct scheduler *s, struct slot *sl, enum job_finish f, const char *error, bool flush)
{
    struct job *j = sl->job;
    if (flush) {
        const char *text;
        size_t n;
        textgen_seq_finish(sl->seq, &text, &n);
        pthread_mutex_lock(&j->lock);
        if (n) job_append(j, text, n);
        pthread_mutex_unlock(&j->lock);
    }
    pthread_mutex_lock(&j->lock);
    j->finish = f;
    j->committed = j->text_len;
    j->slot = -1;
    if (error) snprintf(j->error, sizeof j->error, "%s", error);
    pthread_cond_broadcast(&j->cond);
    uint32_t n_out = j->n_out;
    pthread_mutex_unlock(&j->lock);
    metrics_tokens(sl->prefilled, n_out);
    if (f == JOB_CANCELLED || f == JOB_DEADLINE || f == JOB_SHUTDOWN) metrics_cancelled();
    session_reset(sl->sess);
    sl->job = NULL;
    sl->prefilled = 0;
    job_release(j);
    pthread_mutex_lock(&s->lock);
    s->n_busy--;
    /* idle also wakes a pending swap, which waits only for the slots to empty */
    if (!s->n_busy) pthread_cond_broadcast(&s->idle);
    pthread_mutex_unlock(&s->lock);
}

static void slot_finish(struct scheduler *s, struct slot *sl, enum job_finish f, const char *error)
{
    slot_finish_ex(s, sl, f, error, f == JOB_STOP || f == JOB_LENGTH || f == JOB_DEADLINE);
}

/* Ends a job that never reached a slot (queue deadline, shutdown). */
static void finish_unstarted(struct job *j, enum job_finish f)
{
    pthread_mutex_lock(&j->lock);
    j->finish = f;
    j->committed = j->text_len;
    pthread_cond_broadcast(&j->cond);
    pthread_mutex_unlock(&j->lock);
    if (f != JOB_STOP) metrics_cancelled();
    job_release(j);
}

/* A job queued before a model swap holds token ids of the old tokenizer: encode its request
 * again with the one in use (the HTTP side checked the length against the old context). */
static int retokenize(struct scheduler *s, struct job *j, char *err, size_t err_len)
{
    int32_t *ids;
    uint32_t n;
    if (textgen_prompt(s->tg, &j->req, &ids, &n, err, err_len)) return -1;
    if (n == 0 || n >= s->n_ctx) {
        free(ids);
        return errf(err, err_len, "prompt: %u tokens for the new model, its context is %u", n, s->n_ctx);
    }
    free(j->prompt);
    j->prompt = ids;
    j->n_prompt = n;
    j->model_gen = s->gen;
    return 0;
}

/* Called with s->lock held by the worker, with no slot busy: exchanges the engine, its
 * tokenizer and its slots with the pending swap's; the caller gets the old ones back. */
static void swap_now(struct scheduler *s)
{
    struct swap_req *w = s->swap;
    struct engine *e = s->engine;
    struct textgen *tg = s->tg;
    struct slot *slots = s->slots;
    uint32_t n_vocab = s->n_vocab, n_ctx = s->n_ctx;
    s->engine = w->engine;
    s->tg = w->tg;
    s->slots = w->slots;
    s->n_vocab = w->n_vocab;
    s->n_ctx = w->n_ctx;
    s->gen = w->gen;
    memcpy(s->model_id, w->model_id, sizeof s->model_id);
    s->have_experts = false;
    s->last_eval_failed = false;
    s->device_lost = false; /* a new engine: a new device */
    if (s->prefix) { /* states of the old model */
        struct engine_model_id id;
        prefix_cache_clear(s->prefix);
        if (s->engine && engine_model_identity(s->engine, &id) == 0) prefix_cache_set_model(s->prefix, &id);
    }
    w->engine = e;
    w->tg = tg;
    w->slots = slots;
    w->n_vocab = n_vocab;
    w->n_ctx = n_ctx;
    w->done = true;
    s->swap = NULL;
    pthread_cond_broadcast(&s->idle);
}

/* Called with s->lock held: moves queued jobs into free slots. */
static void admit(struct scheduler *s)
{
    for (uint32_t i = 0; i < s->opt.slots && s->head; i++) {
        struct slot *sl = &s->slots[i];
        if (sl->job) continue;
        struct job *j = s->head;
        s->head = j->next;
        if (!s->head) s->tail = NULL;
        j->next = NULL;
        j->queued = false;
        s->n_queued--;
        char err[256];
        if (mono_ns() > j->deadline_ns) {
            finish_unstarted(j, JOB_DEADLINE);
            i--; /* the slot is still free */
            continue;
        }
        if (j->model_gen != s->gen && retokenize(s, j, err, sizeof err)) {
            pthread_mutex_lock(&j->lock);
            snprintf(j->error, sizeof j->error, "%s", err);
            pthread_mutex_unlock(&j->lock);
            finish_unstarted(j, JOB_ERROR);
            i--;
            continue;
        }
        if (textgen_seq_start(sl->seq, &j->req, err, sizeof err)) {
            pthread_mutex_lock(&j->lock);
            snprintf(j->error, sizeof j->error, "%s", err);
            pthread_mutex_unlock(&j->lock);
            finish_unstarted(j, JOB_ERROR);
            i--;
            continue;
        }
        sl->job = j;
        /* the longest saved prefix of the prompt, if any, instead of prefilling it */
        sl->prefilled = s->prefix ? prefix_cache_resume(s->prefix, sl->sess, j->prompt, j->n_prompt) : 0;
        s->n_busy++;
        pthread_mutex_lock(&j->lock);
        j->n_reused = sl->prefilled;
        j->slot = (int)i;
        memcpy(j->model_id, s->model_id, sizeof j->model_id);
        pthread_mutex_unlock(&j->lock);
    }
    if (!s->n_busy && !s->n_queued) pthread_cond_broadcast(&s->idle);
}

/* Samples from the slot's logits and appends the token's released text. Returns 1 when
 * the slot should evaluate the token next (still generating), 0 when the job ended. */
static int slot_emit(struct scheduler *s, struct slot *sl, int32_t *tok_out)
{
    struct job *j = sl->job;
    struct textgen_logprob lp;
    int32_t tok = textgen_seq_sample(sl->seq, sl->logits, j->logprobs ? &lp : NULL);
    uint64_t now = mono_ns();
    if (tok < 0) {
        slot_finish(s, sl, JOB_ERROR, "every logit is -inf or NaN");
        return 0;
    }
    const char *text;
    size_t n;
    enum textgen_stop why = textgen_seq_feed(sl->seq, tok, &text, &n);
    if (why == TEXTGEN_END_TOKEN) {
        slot_finish(s, sl, JOB_STOP, NULL);
        return 0;
    }
    size_t reasoning_end;
    bool reasoning_known = textgen_seq_reasoning_end(sl->seq, &reasoning_end);
    pthread_mutex_lock(&j->lock);
    int oom = n ? job_append(j, text, n) : 0;
    if (j->logprobs && j->n_out < j->req.max_tokens) j->logprobs[j->n_out] = lp;
    j->n_out++;
    if (reasoning_known && !j->reasoning_known) {
        j->reasoning_known = true;
        j->reasoning_end = reasoning_end;
    }
    j->committed = j->text_len; /* the stopper released only text that cannot change */
    bool first = j->t_first_ns == 0;
    if (first) j->t_first_ns = now;
    pthread_cond_broadcast(&j->cond);
    pthread_mutex_unlock(&j->lock);
    if (first) metrics_time_to_first_token((double)(now - j->t_submit_ns) / 1e9);
    else metrics_token_latency((double)(now - sl->t_last_ns) / 1e9);
    sl->t_last_ns = now;
    if (oom) {
        slot_finish(s, sl, JOB_ERROR, "out of memory for the answer text");
        return 0;
    }
    if (why == TEXTGEN_STOP_STRING) {
        j->stop_index = textgen_seq_stop_index(sl->seq); /* read after the job ends (finish is under its lock) */
        slot_finish_ex(s, sl, JOB_STOP, NULL, false);
        return 0;
    }
    if (why == TEXTGEN_LENGTH || session_pos(sl->sess) >= s->n_ctx) {
        slot_finish(s, sl, JOB_LENGTH, NULL);
        return 0;
    }
    *tok_out = tok;
    return 1;
}

static void note_eval(struct scheduler *s, bool failed)
{
    pthread_mutex_lock(&s->lock);
    if (failed) s->engine_errors++;
    s->last_eval_failed = failed;
    pthread_mutex_unlock(&s->lock);
}

/* A failed step: a lost device is remembered (the daemon reopens the backend, serve.c). */
static void note_error(struct scheduler *s, const char *err)
{
    const char *lost = strstr(err, ENGINE_ERR_DEVICE_LOST);
    if (!lost) return;
    pthread_mutex_lock(&s->lock);
    if (!s->device_lost) snprintf(s->device_lost_why, sizeof s->device_lost_why, "%.190s", lost);
    s->device_lost = true;
    pthread_mutex_unlock(&s->lock);
}

/* Where a prompt's state is saved for prefix reuse: the end of its last whole
 * prefill_chunk before its last token (0: too short). */
static uint32_t prefix_save_point(const struct scheduler *s, const struct job *j)
{
    return (j->n_prompt - 1) / s->opt.prefill_chunk * s->opt.prefill_chunk;
}

/* One step of continuous batching: every decoding slot samples its next token from the
 * logits of the last step and contributes it; prefilling slots contribute prompt chunks,
 * the shortest remaining prompt first (a short request is not stuck behind a long one),
 * until the step holds opt.step_tokens tokens (decode tokens always go in: streams keep
 * flowing while a long prompt is read). One engine_step evaluates them all; a slot whose
 * prompt is done samples its first token at the next step. The sampler is per request
 * (seeded at admission), so a seeded request gives the same text under any load: its
 * logits do not depend on the step's other sessions (engine_step). */
static void step(struct scheduler *s)
{
    uint32_t n_items = 0, n_tokens = 0;
    uint64_t now = mono_ns();
    /* decode tokens first: their logits rows are then adjacent (one head run) */
    for (uint32_t i = 0; i < s->opt.slots; i++) {
        struct slot *sl = &s->slots[i];
        struct job *j = sl->job;
        if (!j) continue;
        pthread_mutex_lock(&j->lock);
        bool cancel = j->cancel;
        pthread_mutex_unlock(&j->lock);
        if (cancel) {
            slot_finish(s, sl, JOB_CANCELLED, NULL);
            continue;
        }
        if (now > j->deadline_ns) {
            slot_finish(s, sl, JOB_DEADLINE, NULL);
            continue;
        }
        if (sl->prefilled < j->n_prompt) continue;
        int32_t tok;
        if (!slot_emit(s, sl, &tok)) continue;
        s->batch_tok[i] = tok;
        s->batch_slot[n_items] = (int)i;
        s->items[n_items++] = (struct session_step){ .s = sl->sess, .tokens = &s->batch_tok[i], .n = 1, .logits = sl->logits };
        n_tokens++;
    }
    const uint32_t n_decode = n_items;
    /* Prompt chunks within the budget, shortest remaining prompt first. A step that ends a
     * prompt (its request's first token) takes only other prompts that end in it too: the
     * chunk of a long prompt being read waits one step, so a short request's first token
     * costs about its own prompt, not the whole budget (on a CPU device a step costs about
     * its token count). Never two such steps in a row, so a stream of short requests
     * cannot stall a long prompt: it advances at least every other step. */
    bool first_tokens = false;
    const bool may_defer = !s->deferred;
    s->deferred = false;
    for (;;) {
        const uint32_t room = s->opt.step_tokens > n_tokens ? s->opt.step_tokens - n_tokens : 0;
        int best = -1;
        uint32_t best_left = 0;
        for (uint32_t i = 0; i < s->opt.slots && room; i++) {
            const struct slot *sl = &s->slots[i];
            if (!sl->job || sl->prefilled >= sl->job->n_prompt || sl->in_step) continue;
            const uint32_t left = sl->job->n_prompt - sl->prefilled;
            if (best < 0 || left < best_left) best = (int)i, best_left = left;
        }
        if (best < 0) break;
        if (first_tokens && best_left > room) { /* a prompt that would not end here waits */
            s->deferred = true;
            break;
        }
        struct slot *sl = &s->slots[best];
        uint32_t n = best_left < room ? best_left : room;
        /* prefix reuse: a chunk stops where the prompt's last whole prefill_chunk ends, so
         * the state there can be saved */
        const uint32_t save_at = prefix_save_point(s, sl->job);
        if (s->prefix && sl->prefilled < save_at && n > save_at - sl->prefilled) n = save_at - sl->prefilled;
        if (may_defer && n_items == n_decode && n == best_left) first_tokens = true; /* the first chunk ends its prompt */
        sl->in_step = true;
        sl->step_n = n;
        s->batch_slot[n_items] = best;
        s->items[n_items++] = (struct session_step){ .s = sl->sess, .tokens = sl->job->prompt + sl->prefilled, .n = n,
                                                     .logits = n == best_left ? sl->logits : NULL };
        n_tokens += n;
    }
    if (!n_items) return;
    char err[256];
    int rc = engine_step(s->engine, s->items, n_items, err, sizeof err);
    note_eval(s, rc != 0);
    if (rc) note_error(s, err); /* a lost device fails every item of the step */
    metrics_step(n_items, n_tokens);
    for (uint32_t k = 0; k < n_items; k++) {
        struct slot *sl = &s->slots[s->batch_slot[k]];
        sl->in_step = false;
        if (rc) {
            slot_finish(s, sl, JOB_ERROR, err); /* resets the session */
        } else if (k >= n_decode) {
            sl->prefilled += sl->step_n;
            if (s->prefix && sl->prefilled < sl->job->n_prompt && sl->prefilled == prefix_save_point(s, sl->job))
                prefix_cache_save(s->prefix, sl->sess, sl->job->prompt);
        }
    }
    uint64_t left = 0;
    for (uint32_t i = 0; i < s->opt.slots; i++)
        if (s->slots[i].job) left += s->slots[i].job->n_prompt - s->slots[i].prefilled;
    pthread_mutex_lock(&s->lock);
    s->prefill_left = left;
    pthread_mutex_unlock(&s->lock);
}

static void *worker_main(void *arg)
{
    struct scheduler *s = arg;
    uint64_t last_beat = 0;
    pthread_mutex_lock(&s->lock);
    for (;;) {
        if (s->cancel_all) {
            while (s->head) {
                struct job *j = s->head;
                s->head = j->next;
                j->queued = false;
                s->n_queued--;
                finish_unstarted(j, JOB_SHUTDOWN);
            }
            s->tail = NULL;
        }
        if (s->swap && !s->n_busy) swap_now(s);
        if (!s->swap && s->engine) admit(s); /* a pending swap holds the queue until it is done, and no
                                              * engine (released for an update) until one is back */
        bool stop = s->stop, cancel_all = s->cancel_all;
        uint32_t busy = s->n_busy;
        bool cut = s->swap && busy && mono_ns() >= s->swap->deadline_ns;
        if (stop && !busy) break;
        if (!busy) {
            struct timespec until = abs_after_ms(s->opt.heartbeat_ms ? s->opt.heartbeat_ms : 1000);
            pthread_cond_timedwait(&s->wake, &s->lock, &until);
        }
        pthread_mutex_unlock(&s->lock);
        /* The heartbeat (systemd's watchdog ping) is this loop's progress, never a timer:
         * it comes once a pass, and a pass only goes round when the step before it has
         * returned, or when there was nothing to do (the idle wait above ends every
         * heartbeat_ms). A step wedged in the driver (a fence that never signals) keeps this
         * thread in engine_step, so the pings stop until the fence timeout fails it. */
        uint64_t now = mono_ns();
        if (s->opt.heartbeat && now - last_beat >= (uint64_t)s->opt.heartbeat_ms * 1000000ull / 2) {
            s->opt.heartbeat(s->opt.heartbeat_ctx);
            last_beat = now;
        }
        if (cancel_all || stop) {
            for (uint32_t i = 0; s->slots && i < s->opt.slots; i++)
                if (s->slots[i].job) slot_finish(s, &s->slots[i], JOB_SHUTDOWN, NULL);
        } else if (cut) {
            int n = 0;
            for (uint32_t i = 0; i < s->opt.slots; i++)
                if (s->slots[i].job) {
                    slot_finish(s, &s->slots[i], JOB_RELOAD, NULL);
                    n++;
                }
            pthread_mutex_lock(&s->lock);
            if (s->swap) s->swap->cancelled += n;
            pthread_mutex_unlock(&s->lock);
        } else if (busy) {
            step(s);
        }
        struct expert_counters ec;
        int have = s->engine && engine_expert_counters(s->engine, &ec) == 0;
        uint64_t dev_used = 0, dev_total = 0;
        int have_dev = s->engine && engine_device_memory(s->engine, &dev_used, &dev_total) == 0;
        pthread_mutex_lock(&s->lock);
        s->have_experts = have;
        if (have) s->experts = ec;
        s->have_device = have_dev;
        s->device_used = dev_used;
        s->device_total = dev_total;
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

static void slots_destroy(struct slot *slots, uint32_t n)
{
    for (uint32_t i = 0; slots && i < n; i++) {
        session_destroy(slots[i].sess);
        textgen_seq_destroy(slots[i].seq);
        free(slots[i].logits);
    }
    free(slots);
}

/* n slots on engine e: a session, a text sequence and a logits row each. When a slot
 * cannot be allocated (its session does not fit the memory left, or an allocation fails),
 * the slots made so far are kept if there are at least `min` of them: *n_made says how
 * many, and why[] the first failure's error ("" when all n were made). Fewer than min:
 * nothing is kept, and err says why. */
static int slots_create(struct engine *e, struct textgen *tg, uint32_t n, uint32_t min, uint32_t n_ctx_want, struct slot **out,
                        uint32_t *n_made, char *why, size_t why_len, uint32_t *n_vocab, uint32_t *n_ctx, char *err,
                        size_t err_len)
{
    struct engine_info info;
    engine_get_info(e, &info);
    if (why_len) why[0] = 0;
    if (n_ctx_want == 0) { /* the largest context whose plan fits every slot in the memory there is */
        struct engine_plan p;
        n_ctx_want = engine_plan_open_fit(e, n, engine_plan_budget(e), &p);
        if (n_ctx_want == 0)
            return errf(err, err_len, "no context fits %u slots: weights %llu MiB + expert cache %llu MiB + %u x %llu MiB "
                        "for 128 positions exceed %llu MiB", n, (unsigned long long)(p.weights >> 20),
                        (unsigned long long)(p.expert_cache >> 20), n, (unsigned long long)(p.per_session >> 20),
                        (unsigned long long)(engine_plan_budget(e) >> 20));
    }
    struct slot *slots = calloc(n, sizeof *slots);
    if (!slots) return errf(err, err_len, "scheduler: out of memory for %u slots", n);
    uint32_t made = 0;
    for (; made < n; made++) {
        struct slot *sl = &slots[made];
        int rc = session_create(e, n_ctx_want, &sl->sess, err, err_len) || textgen_seq_create(tg, &sl->seq, err, err_len);
        if (!rc && !(sl->logits = malloc((size_t)info.n_vocab * sizeof *sl->logits))) rc = errf(err, err_len, "out of memory");
        if (!rc) continue;
        errf_prefix(err, err_len, "server.slots=%u: slot %u cannot be allocated (fewer slots or a smaller model.n_ctx fit)", n,
                    made);
        if (made < min || made == 0) {
            slots_destroy(slots, n);
            return -1;
        }
        /* keep the slots made: this one's parts go, the rest were never made */
        session_destroy(sl->sess);
        textgen_seq_destroy(sl->seq);
        free(sl->logits);
        memset(sl, 0, sizeof *sl);
        snprintf(why, why_len, "%s; serving %u slots", err, made);
        break;
    }
    *out = slots;
    *n_made = made;
    *n_vocab = info.n_vocab;
    *n_ctx = session_n_ctx(slots[0].sess);
    return 0;
}

int scheduler_create(struct scheduler **out, struct engine *e, struct textgen *tg, const struct sched_options *opt,
                     char *err, size_t err_len)
{
    *out = NULL;
    struct scheduler *s = calloc(1, sizeof *s);
    if (!s) return errf(err, err_len, "scheduler: out of memory");
    s->engine = e;
    s->tg = tg;
    s->opt = *opt;
    s->opt.model_id = NULL; /* copied below, the caller's string may go */
    snprintf(s->model_id, sizeof s->model_id, "%s", opt->model_id ? opt->model_id : "");
    if (!s->opt.slots) s->opt.slots = 1;
    if (!s->opt.step_tokens) s->opt.step_tokens = 128;
    if (!s->opt.prefill_chunk) s->opt.prefill_chunk = 128;
    pthread_mutex_init(&s->lock, NULL);
    cond_init_monotonic(&s->wake);
    cond_init_monotonic(&s->idle);
    s->batch_tok = calloc(s->opt.slots, sizeof *s->batch_tok);
    s->batch_slot = calloc(s->opt.slots, sizeof *s->batch_slot);
    s->items = calloc(s->opt.slots, sizeof *s->items);
    if (!s->batch_tok || !s->batch_slot || !s->items) {
        scheduler_destroy(s);
        return errf(err, err_len, "scheduler: out of memory for %u slots", opt->slots);
    }
    /* at start, a daemon serves the slots that fit (one at least) and says why not more */
    s->slots_configured = s->opt.slots;
    if (slots_create(e, tg, s->opt.slots, 1, opt->n_ctx, &s->slots, &s->opt.slots, s->slots_short, sizeof s->slots_short,
                     &s->n_vocab, &s->n_ctx, err, err_len)) {
        scheduler_destroy(s);
        return -1;
    }
    if (opt->prefix.mem_bytes) {
        struct engine_model_id id;
        if (prefix_cache_create(&s->prefix, &opt->prefix, err, err_len)) {
            scheduler_destroy(s);
            return -1;
        }
        if (engine_model_identity(e, &id) == 0) prefix_cache_set_model(s->prefix, &id);
    }
    if (pthread_create(&s->worker, NULL, worker_main, s)) {
        scheduler_destroy(s);
        return errf(err, err_len, "scheduler: cannot start the worker thread");
    }
    s->worker_started = true;
    *out = s;
    return 0;
}

void scheduler_destroy(struct scheduler *s)
{
    if (!s) return;
    if (s->worker_started) {
        pthread_mutex_lock(&s->lock);
        s->stop = true;
        s->cancel_all = true;
        pthread_cond_broadcast(&s->wake);
        pthread_mutex_unlock(&s->lock);
        pthread_join(s->worker, NULL);
    }
    slots_destroy(s->slots, s->opt.slots);
    prefix_cache_destroy(s->prefix);
    free(s->batch_tok);
    free(s->batch_slot);
    free(s->items);
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->wake);
    pthread_cond_destroy(&s->idle);
    free(s);
}

enum sched_submit scheduler_submit(struct scheduler *s, struct job *j)
{
    pthread_mutex_lock(&s->lock);
    if (s->draining || s->stop) {
        pthread_mutex_unlock(&s->lock);
        return SCHED_DRAINING;
    }
    /* At most slots + queue_depth jobs are in the system: a free slot takes a job at once,
     * so queue_depth counts only the jobs that really wait. */
    if (s->n_busy + s->n_queued >= s->opt.slots + s->opt.queue_depth) {
        pthread_mutex_unlock(&s->lock);
        return SCHED_FULL;
    }
    pthread_mutex_lock(&j->lock);
    j->refs++;
    pthread_mutex_unlock(&j->lock);
    j->queued = true;
    j->next = NULL;
    if (s->tail) s->tail->next = j;
    else s->head = j;
    s->tail = j;
    s->n_queued++;
    pthread_cond_broadcast(&s->wake);
    pthread_mutex_unlock(&s->lock);
    return SCHED_OK;
}

void scheduler_cancel(struct scheduler *s, struct job *j)
{
    pthread_mutex_lock(&s->lock);
    bool was_queued = false;
    if (j->queued) {
        struct job **pp = &s->head, *prev = NULL;
        while (*pp && *pp != j) {
            prev = *pp;
            pp = &(*pp)->next;
        }
        if (*pp) {
            *pp = j->next;
            if (s->tail == j) s->tail = prev;
            j->next = NULL;
            j->queued = false;
            s->n_queued--;
            was_queued = true;
        }
    }
    pthread_mutex_lock(&j->lock);
    j->cancel = true;
    pthread_mutex_unlock(&j->lock);
    pthread_cond_broadcast(&s->wake);
    if (!s->n_busy && !s->n_queued) pthread_cond_broadcast(&s->idle);
    pthread_mutex_unlock(&s->lock);
    if (was_queued) finish_unstarted(j, JOB_CANCELLED);
}

int scheduler_drain(struct scheduler *s, uint32_t grace_ms)
{
    pthread_mutex_lock(&s->lock);
    s->draining = true;
    struct timespec until = abs_after_ms(grace_ms);
    while ((s->n_busy || s->n_queued) && pthread_cond_timedwait(&s->idle, &s->lock, &until) != ETIMEDOUT) {}
    int left = (int)(s->n_busy + s->n_queued);
    if (left) {
        s->cancel_all = true;
        pthread_cond_broadcast(&s->wake);
        while (s->n_busy || s->n_queued) pthread_cond_wait(&s->idle, &s->lock);
    }
    pthread_mutex_unlock(&s->lock);
    return left;
}

void scheduler_stats(struct scheduler *s, struct sched_stats *st)
{
    pthread_mutex_lock(&s->lock);
    st->queued = s->n_queued;
    st->queue_capacity = s->opt.queue_depth;
    st->busy = s->n_busy;
    st->slots = s->opt.slots;
    st->slots_configured = s->slots_configured;
    memcpy(st->slots_short, s->slots_short, sizeof st->slots_short);
    st->engine_errors = s->engine_errors;
    st->last_eval_failed = s->last_eval_failed;
    st->device_lost = s->device_lost;
    memcpy(st->device_lost_why, s->device_lost_why, sizeof st->device_lost_why);
    st->swapping = s->swap != NULL;
    st->have_device = s->have_device;
    st->device_used = s->device_used;
    st->device_total = s->device_total;
    st->have_experts = s->have_experts;
    st->experts = s->experts;
    st->prefill_waiting = s->prefill_left;
    for (const struct job *j = s->head; j; j = j->next) st->prefill_waiting += j->n_prompt;
    pthread_mutex_unlock(&s->lock);
    st->have_prefix = s->prefix != NULL;
    if (s->prefix) prefix_cache_get_stats(s->prefix, &st->prefix);
}

int scheduler_swap_engine(struct scheduler *s, struct engine *e, struct textgen *tg, uint32_t gen, const char *model_id,
                          uint32_t grace_ms, int *n_cancelled, char *err, size_t err_len)
{
    *n_cancelled = 0;
    struct swap_req w = { .engine = e, .tg = tg, .gen = gen };
    snprintf(w.model_id, sizeof w.model_id, "%s", model_id ? model_id : "");
    /* The new sessions first, while the old engine still serves: a failure changes nothing.
     * The new model must hold as many slots as are served now. */
    uint32_t n_made;
    char why[8];
    if (e && slots_create(e, tg, s->opt.slots, s->opt.slots, s->opt.n_ctx, &w.slots, &n_made, why, sizeof why, &w.n_vocab,
                          &w.n_ctx, err, err_len))
        return errf_prefix(err, err_len, "new model");
    pthread_mutex_lock(&s->lock);
    if (!e) { /* a release keeps the sizes the API checks requests against */
        w.n_vocab = s->n_vocab;
        w.n_ctx = s->n_ctx;
    }
    if (s->swap || s->stop || s->draining) {
        pthread_mutex_unlock(&s->lock);
        slots_destroy(w.slots, s->opt.slots);
        return errf(err, err_len, "scheduler: %s", s->swap ? "another model swap is in progress" : "shutting down");
    }
    w.deadline_ns = mono_ns() + (uint64_t)grace_ms * 1000000ull;
    s->swap = &w;
    pthread_cond_broadcast(&s->wake);
    while (!w.done) pthread_cond_wait(&s->idle, &s->lock);
    pthread_mutex_unlock(&s->lock);
    /* w now holds the old engine's slots: their sessions go before the caller closes it. */
    slots_destroy(w.slots, s->opt.slots);
    *n_cancelled = w.cancelled;
    return 0;
}
