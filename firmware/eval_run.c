/* Running an evaluation set on the engine (see eval_run.h). One worker per job, each with
 * its own engine, session, text side and buffers; cases are handed out by a shared counter
 * and their results written into the case's own slot, so nothing but the counter and the
 * progress count is shared. */
#include "firmware/eval_run.h"

#include "common/errmsg.h"
#include "firmware/backend_pick.h"
#include "firmware/textgen.h"
#include "firmware/tool_output.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { LOGPROB_CHUNK = 32 }; /* continuation tokens evaluated per batch */

struct run {
    const struct eval_set *set;
    const struct eval_run_opts *o;
    struct eval_result *r;
    pthread_mutex_t lock;
    uint32_t next, done;
    int failed;                 /* a worker could not start, or cancel: the run fails */
    char err[512];
};

struct worker {
    struct run *run;
    struct engine *e;
    struct textgen *tg;
    struct textgen_seq *seq;
    struct session *s;
    float *logits;              /* [LOGPROB_CHUNK][n_vocab] */
    uint32_t n_vocab;
    char *text;                 /* [text_cap] the answer being generated */
    size_t text_len, text_cap;
};

static bool cancelled(const struct run *run) { return run->o->cancel && *run->o->cancel; }

static void run_fail(struct run *run, const char *msg)
{
    pthread_mutex_lock(&run->lock);
    if (!run->failed) snprintf(run->err, sizeof run->err, "%s", msg);
    run->failed = 1;
    pthread_mutex_unlock(&run->lock);
}

static int text_append(struct worker *w, const char *t, size_t n)
{
    if (w->text_len + n + 1 > w->text_cap) {
        size_t cap = (w->text_len + n + 1) * 2;
        char *g = realloc(w->text, cap);
        if (!g) return -1;
        w->text = g;
        w->text_cap = cap;
    }
    memcpy(w->text + w->text_len, t, n);
    w->text_len += n;
    w->text[w->text_len] = 0;
    return 0;
}

/* log softmax(logits)[tok], in double. */
static double logprob_of(const float *logits, uint32_t n, int32_t tok)
{
    float mx = logits[0];
    for (uint32_t i = 1; i < n; i++)
        if (logits[i] > mx) mx = logits[i];
    double sum = 0;
    for (uint32_t i = 0; i < n; i++) sum += exp((double)logits[i] - mx);
    return (double)logits[tok] - mx - log(sum);
}

/* The greedy answer of the case into w->text (the answer part only, after any reasoning). */
static int generate(struct worker *w, const struct eval_case *c, const int32_t *prompt, uint32_t n_prompt,
                    struct eval_case_result *cr, char *err, size_t err_len)
{
    w->text_len = 0;
    if (text_append(w, "", 0)) return errf(err, err_len, "out of memory");
    if (textgen_seq_start(w->seq, &c->req, err, err_len)) return -1;
    uint32_t n_ctx = session_n_ctx(w->s);
    session_reset(w->s);
    if (n_prompt >= n_ctx) return errf(err, err_len, "the prompt has %u tokens, the context holds %u", n_prompt, n_ctx);
    if (session_eval(w->s, prompt, n_prompt, w->logits, false, err, err_len)) return -1;
    bool flush = true;
    for (;;) {
        if (cancelled(w->run)) return errf(err, err_len, "cancelled");
        int32_t tok = textgen_seq_sample(w->seq, w->logits, NULL);
        if (tok < 0) return errf(err, err_len, "every logit is -inf or NaN");
        const char *t;
        size_t n;
        enum textgen_stop why = textgen_seq_feed(w->seq, tok, &t, &n);
        if (why == TEXTGEN_END_TOKEN) break;
        cr->n_tokens++;
        if (n && text_append(w, t, n)) return errf(err, err_len, "out of memory");
        if (why == TEXTGEN_STOP_STRING) {
            flush = false;
            break;
        }
        if (why == TEXTGEN_LENGTH || session_pos(w->s) + 1 >= n_ctx) break;
        if (session_eval(w->s, &tok, 1, w->logits, false, err, err_len)) return -1;
    }
    if (flush) {
        const char *t;
        size_t n;
        textgen_seq_finish(w->seq, &t, &n);
        if (n && text_append(w, t, n)) return errf(err, err_len, "out of memory");
    }
    size_t start = 0;
    if (textgen_seq_reasoning_end(w->seq, &start) && start <= w->text_len) {
        memmove(w->text, w->text + start, w->text_len - start + 1);
        w->text_len -= start;
    }
    return 0;
}

/* A case that offers tools: when the answer ends in a call block that parses, the text
 * scored is its calls as compact JSON, [{"name": ..., "arguments": {...}}, ...] (arguments
 * parsed, keys in the model's order), what /v1/chat/completions returns in tool_calls less
 * the ids; text before the block is not scored. An answer with no block, or one that does
 * not parse, is scored as text (the API returns it as text too). */
static int tool_calls_answer(struct worker *w, const struct eval_case *c, char *err, size_t err_len)
{
    const struct gen_request *g = &c->req;
    if (!g->n_tools || g->tool_choice == REQ_TOOL_NONE) return 0;
    const char *names[128];
    uint32_t n = g->n_tools < 128 ? g->n_tools : 128;
    for (uint32_t i = 0; i < n; i++) names[i] = g->tools[i].name;
    struct tool_output o;
    char why[256];
    if (tool_output_parse(w->text, w->text_len, names, n, &o, why, sizeof why) || o.n_calls == 0) return 0;
    uint32_t keep = g->parallel_tool_calls ? o.n_calls : 1; /* the API returns the first only */
    json_t *a = json_array();
    for (uint32_t i = 0; a && i < keep; i++) {
        json_t *args = json_loads(o.calls[i].arguments, JSON_DECODE_ANY, NULL);
        json_t *call = args ? json_pack("{s:s,s:o}", "name", o.calls[i].name, "arguments", args) : NULL;
        if (!call || json_array_append_new(a, call)) {
            json_decref(a);
            a = NULL;
        }
    }
    tool_output_free(&o);
    char *text = a ? json_dumps(a, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(a);
    if (!text) return errf(err, err_len, "out of memory");
    w->text_len = 0;
    int rc = text_append(w, text, strlen(text));
    free(text);
    return rc ? errf(err, err_len, "out of memory") : 0;
}

/* Sum of the log-probabilities of text's tokens after the prompt; *n_tok their count. */
static int continuation_logprob(struct worker *w, const int32_t *prompt, uint32_t n_prompt, const char *text,
                                double *sum, uint32_t *n_tok, char *err, size_t err_len)
{
    int32_t *ids;
    uint32_t n;
    if (textgen_tokenize(w->tg, text, strlen(text), false, &ids, &n, err, err_len)) return -1;
    int rc = 0;
    uint32_t n_ctx = session_n_ctx(w->s);
    if (n == 0) rc = errf(err, err_len, "the text has no tokens");
    else if ((uint64_t)n_prompt + n >= n_ctx)
        rc = errf(err, err_len, "prompt (%u tokens) and text (%u tokens) exceed the context of %u", n_prompt, n, n_ctx);
    session_reset(w->s);
    if (!rc) rc = session_eval(w->s, prompt, n_prompt, w->logits, false, err, err_len);
    double lp = 0;
    if (!rc) lp = logprob_of(w->logits, w->n_vocab, ids[0]);
    /* Token i+1's probability is in the logits after token i: feed ids[0..n-2] in chunks. */
    for (uint32_t i = 0; !rc && i + 1 < n; i += LOGPROB_CHUNK) {
        uint32_t k = n - 1 - i < LOGPROB_CHUNK ? n - 1 - i : LOGPROB_CHUNK;
        if (cancelled(w->run)) rc = errf(err, err_len, "cancelled");
        if (!rc) rc = session_eval(w->s, ids + i, k, w->logits, true, err, err_len);
        for (uint32_t j = 0; !rc && j < k; j++) lp += logprob_of(w->logits + (size_t)j * w->n_vocab, w->n_vocab, ids[i + j + 1]);
    }
    free(ids);
    *sum = lp;
    *n_tok = n;
    return rc;
}

static int run_case(struct worker *w, const struct eval_case *c, struct eval_case_result *cr, char *err, size_t err_len)
{
    int32_t *prompt;
    uint32_t n_prompt;
    if (textgen_prompt(w->tg, &c->req, &prompt, &n_prompt, err, err_len)) return -1;
    int rc = 0;
    bool text_scorer = c->scorer <= EVAL_SCORER_JSON_SCHEMA;
    bool need_answer = text_scorer || (c->scorer == EVAL_SCORER_REFERENCE_LOGPROB && !c->expected);
    if (need_answer) {
        rc = generate(w, c, prompt, n_prompt, cr, err, err_len);
        if (!rc) rc = tool_calls_answer(w, c, err, err_len);
        if (!rc && !(cr->answer = strdup(w->text))) rc = errf(err, err_len, "out of memory");
    }
    if (!rc && text_scorer) {
        if (c->has_expected) cr->score = eval_score_text(c, w->text, w->text_len, cr->why, sizeof cr->why);
        else cr->score = 1; /* recording: the trusted answer is the expected one by definition */
    }
    if (!rc && c->scorer == EVAL_SCORER_CHOICE) {
        double best = -INFINITY;
        for (uint32_t i = 0; i < c->n_options && !rc; i++) {
            double lp;
            uint32_t n;
            rc = continuation_logprob(w, prompt, n_prompt, c->options[i], &lp, &n, err, err_len);
            if (rc) errf_prefix(err, err_len, "options[%u]", i);
            if (!rc && (i == 0 || lp > best)) {
                best = lp;
                cr->chosen = (int32_t)i;
            }
        }
        cr->logprob = best;
        if (!rc) {
            cr->score = c->expected_option < 0 || cr->chosen == c->expected_option;
            if (!cr->score)
                snprintf(cr->why, sizeof cr->why, "chose option %d \"%.60s\", expected %d \"%.60s\"", cr->chosen,
                         c->options[cr->chosen], c->expected_option, c->options[c->expected_option]);
        }
    }
    if (!rc && c->scorer == EVAL_SCORER_REFERENCE_LOGPROB) {
        const char *ref = c->expected ? c->expected : cr->answer;
        double lp;
        uint32_t n;
        if (!ref[0]) rc = errf(err, err_len, "the trusted model's answer is empty: give a reference in expected");
        if (!rc) rc = continuation_logprob(w, prompt, n_prompt, ref, &lp, &n, err, err_len);
        if (!rc) {
            cr->logprob = lp / n;
            double floor = c->baseline_logprob - c->tolerance;
            cr->score = !c->has_baseline || cr->logprob >= floor;
            if (!cr->score)
                snprintf(cr->why, sizeof cr->why, "mean log-probability %.4f of the reference, below %.4f (recorded %.4f - tolerance %.4f)",
                         cr->logprob, floor, c->baseline_logprob, c->tolerance);
        }
    }
    free(prompt);
    return rc;
}

static int worker_open(struct worker *w, char *err, size_t err_len)
{
    const struct eval_run_opts *o = w->run->o;
    struct engine_options eo;
    engine_options_default(&eo);
    eo.model_path = o->model_path;
    eo.backend = o->backend;
    backend_resolve(&eo);
    if (engine_open(&w->e, &eo, err, err_len)) return errf_prefix(err, err_len, "loading %s", o->model_path);
    struct engine_info info;
    engine_get_info(w->e, &info);
    w->n_vocab = info.n_vocab;
    if (textgen_open(&w->tg, w->e, err, err_len) || textgen_seq_create(w->tg, &w->seq, err, err_len) ||
        session_create(w->e, 0, &w->s, err, err_len))
        return -1;
    w->logits = malloc((size_t)LOGPROB_CHUNK * w->n_vocab * sizeof *w->logits);
    if (!w->logits) return errf(err, err_len, "out of memory for %u x %u logits", LOGPROB_CHUNK, w->n_vocab);
    return 0;
}

static void worker_close(struct worker *w)
{
    free(w->logits);
    free(w->text);
    session_destroy(w->s);
    textgen_seq_destroy(w->seq);
    textgen_close(w->tg);
    if (w->e) engine_close(w->e);
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct run *run = w->run;
    char err[512];
    if (worker_open(w, err, sizeof err)) {
        run_fail(run, err);
        return NULL;
    }
    for (;;) {
        pthread_mutex_lock(&run->lock);
        uint32_t i = run->next++;
        bool stop = run->failed || i >= run->set->n;
        pthread_mutex_unlock(&run->lock);
        if (stop) break;
        if (cancelled(run)) {
            run_fail(run, "cancelled");
            break;
        }
        struct eval_case_result *cr = &run->r->cases[i];
        if (run_case(w, &run->set->cases[i], cr, err, sizeof err)) {
            if (cancelled(run)) {
                run_fail(run, "cancelled");
                break;
            }
            cr->score = 0;
            cr->error = true;
            snprintf(cr->why, sizeof cr->why, "%.250s", err);
        }
        pthread_mutex_lock(&run->lock);
        uint32_t done = ++run->done;
        if (run->o->progress) run->o->progress(run->o->user, done, run->set->n);
        pthread_mutex_unlock(&run->lock);
    }
    return NULL;
}

int eval_run(const struct eval_set *set, const struct eval_run_opts *o, struct eval_result *r, char *err,
             size_t err_len)
{
    memset(r, 0, sizeof *r);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    r->cases = calloc(set->n ? set->n : 1, sizeof *r->cases);
    if (!r->cases) return errf(err, err_len, "out of memory");
    r->n = set->n;
    uint32_t jobs = o->jobs ? o->jobs : 1;
    if (jobs > set->n) jobs = set->n ? set->n : 1;
    struct run run = { .set = set, .o = o, .r = r };
    pthread_mutex_init(&run.lock, NULL);
    struct worker *ws = calloc(jobs, sizeof *ws);
    pthread_t *th = calloc(jobs, sizeof *th);
    bool *started = calloc(jobs, sizeof *started);
    if (!ws || !th || !started) run_fail(&run, "out of memory");
    for (uint32_t j = 0; ws && th && started && j < jobs; j++) {
        ws[j].run = &run;
        if (j == 0) continue; /* job 0 runs on this thread */
        started[j] = pthread_create(&th[j], NULL, worker_main, &ws[j]) == 0;
        if (!started[j]) run_fail(&run, "cannot start a job thread");
    }
    if (ws && th && started) worker_main(&ws[0]);
    for (uint32_t j = 1; ws && th && started && j < jobs; j++)
        if (started[j]) pthread_join(th[j], NULL);
    for (uint32_t j = 0; ws && j < jobs; j++) worker_close(&ws[j]);
    free(ws);
    free(th);
    free(started);
    pthread_mutex_destroy(&run.lock);
    if (run.failed) {
        eval_result_free(r);
        return errf(err, err_len, "%s", run.err);
    }
    uint32_t pass[EVAL_SCORER_COUNT] = { 0 }, total = 0;
    for (uint32_t i = 0; i < set->n; i++) {
        pass[set->cases[i].scorer] += (uint32_t)r->cases[i].score;
        total += (uint32_t)r->cases[i].score;
    }
    for (int k = 0; k < EVAL_SCORER_COUNT; k++)
        r->scorer_score[k] = set->per_scorer[k] ? (double)pass[k] / set->per_scorer[k] : -1;
    r->score = set->n ? (double)total / set->n : 0;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    r->seconds = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    return 0;
}

void eval_result_free(struct eval_result *r)
{
    for (uint32_t i = 0; r->cases && i < r->n; i++) free(r->cases[i].answer);
    free(r->cases);
    memset(r, 0, sizeof *r);
}

uint32_t eval_worst_cases(const struct eval_set *set, const struct eval_result *r, uint32_t *idx, uint32_t k)
{
    /* Cases score 0 or 1, so every failing case is equally bad: the first k in set order. */
    uint32_t n = 0;
    for (uint32_t i = 0; i < set->n && n < k; i++)
        if (!r->cases[i].score) idx[n++] = i;
    return n;
}

void eval_worst_summary(const struct eval_set *set, const struct eval_result *r, uint32_t k, char *buf, size_t len)
{
    uint32_t idx[16];
    if (k > 16) k = 16;
    uint32_t n = eval_worst_cases(set, r, idx, k);
    size_t off = 0;
    buf[0] = 0;
    for (uint32_t i = 0; i < n && off + 1 < len; i++) {
        const struct eval_case *c = &set->cases[idx[i]];
        int m = snprintf(buf + off, len - off, "%scase \"%.40s\" (line %u, %s): %.120s", i ? "; " : "", c->id, c->line,
                         eval_scorer_name(c->scorer), r->cases[idx[i]].why);
        if (m < 0) break;
        off += (size_t)m < len - off ? (size_t)m : len - off - 1;
    }
}

json_t *eval_report_json(const char *model_path, const char *set_path, const struct eval_set *set,
                         const struct eval_result *r)
{
    json_t *scorers = json_object(), *cases = json_array();
    for (int k = 0; k < EVAL_SCORER_COUNT; k++)
        if (set->per_scorer[k])
            json_object_set_new(scorers, eval_scorer_name((enum eval_scorer)k),
                                json_pack("{s:f,s:i}", "score", r->scorer_score[k], "cases", (json_int_t)set->per_scorer[k]));
    uint32_t passed = 0;
    for (uint32_t i = 0; i < set->n; i++) {
        const struct eval_case *c = &set->cases[i];
        const struct eval_case_result *cr = &r->cases[i];
        passed += (uint32_t)cr->score;
        json_t *o = json_pack("{s:s,s:i,s:s,s:i}", "id", c->id, "line", (json_int_t)c->line, "scorer",
                              eval_scorer_name(c->scorer), "score", (json_int_t)cr->score);
        if (cr->why[0]) json_object_set_new(o, "why", json_string(cr->why));
        if (cr->answer) {
            json_object_set_new(o, "answer", json_string(cr->answer));
            json_object_set_new(o, "tokens", json_integer(cr->n_tokens));
        }
        if (c->scorer == EVAL_SCORER_CHOICE) {
            json_object_set_new(o, "chosen", json_string(c->options[cr->chosen]));
            json_object_set_new(o, "logprob", json_real(cr->logprob));
        }
        if (c->scorer == EVAL_SCORER_REFERENCE_LOGPROB) json_object_set_new(o, "logprob", json_real(cr->logprob));
        json_array_append_new(cases, o);
    }
    return json_pack("{s:s,s:{s:s,s:s,s:i},s:f,s:i,s:i,s:o,s:f,s:o}", "model", model_path, "set", "path", set_path,
                     "sha256", set->sha256, "cases", (json_int_t)set->n, "score", r->score, "passed", (json_int_t)passed,
                     "failed", (json_int_t)(set->n - passed), "scorers", scorers, "seconds", r->seconds, "cases", cases);
}

int eval_record_write(const char *path, const struct eval_set *set, const struct eval_result *r, char *err,
                      size_t err_len)
{
    char tmp[4200];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid()) >= (int)sizeof tmp)
        return errf(err, err_len, "%s: path too long", path);
    FILE *f = fopen(tmp, "w");
    if (!f) return errf(err, err_len, "%s: cannot create", tmp);
    int rc = 0;
    for (uint32_t i = 0; i < set->n && !rc; i++) {
        const struct eval_case *c = &set->cases[i];
        const struct eval_case_result *cr = &r->cases[i];
        json_t *o = json_deep_copy(c->obj);
        if (!o) rc = errf(err, err_len, "out of memory");
        /* Recorded: the trusted answers (exact, contains), the chosen option (choice) and the
         * reference's log-probability (reference_logprob, with the answer as the reference
         * when the set gave none). regex and json_schema stay as the site wrote them. */
        if (!rc && (c->scorer == EVAL_SCORER_EXACT || c->scorer == EVAL_SCORER_CONTAINS))
            json_object_set_new(o, "expected", json_string(cr->answer ? cr->answer : ""));
        if (!rc && c->scorer == EVAL_SCORER_CHOICE) json_object_set_new(o, "expected", json_string(c->options[cr->chosen]));
        if (!rc && c->scorer == EVAL_SCORER_REFERENCE_LOGPROB) {
            if (!c->expected) json_object_set_new(o, "expected", json_string(cr->answer ? cr->answer : ""));
            json_object_set_new(o, "reference_logprob", json_real(cr->logprob));
        }
        char *line = rc ? NULL : json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
        if (!rc && !line) rc = errf(err, err_len, "out of memory");
        if (!rc && fprintf(f, "%s\n", line) < 0) rc = errf(err, err_len, "%s: write failed", tmp);
        free(line);
        json_decref(o);
    }
    if (fflush(f) != 0 || fsync(fileno(f)) != 0) rc = rc ? rc : errf(err, err_len, "%s: write failed", tmp);
    if (fclose(f) != 0 && !rc) rc = errf(err, err_len, "%s: write failed", tmp);
    if (!rc && rename(tmp, path) != 0) rc = errf(err, err_len, "rename %s: failed", tmp);
    if (rc) unlink(tmp);
    return rc;
}
