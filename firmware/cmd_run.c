/* `flashbox run`: generate text from a prompt (-p) or chat interactively, streaming the
 * answer to stdout as it is decoded and ending each answer with one line of stats.
 *
 * The interactive chat keeps its KV state between turns: each new turn only evaluates
 * the tokens that close the previous answer and open the next one, so earlier turns stay
 * in the context exactly as they were generated (reasoning included). Ctrl-C stops the
 * current answer; Ctrl-C at the prompt or end of input (Ctrl-D) quits. */
#include "common/mono_clock.h"
#include "engine/engine.h"
#include "firmware/backend_pick.h"
#include "firmware/commands.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static volatile sig_atomic_t g_interrupted;

static void on_sigint(int sig)
{
    (void)sig;
    g_interrupted = 1;
}

struct run_opts {
    const char *model;
    const char *prompt;
    const char *system;
    bool chat, think;
    uint32_t n_predict;
    uint32_t n_ctx;
    struct sampler_params sp;
    enum engine_backend backend;
    enum engine_kv_type kv;
};

/* Everything one generation needs, created once. */
struct runner {
    struct engine *engine;
    struct session *session;
    const struct tokenizer *tok; /* the engine's */
    struct sampler *sampler;
    struct stopper *stopper;
    float *logits;      /* [n_vocab] */
    char *piece;        /* [tok_stream_buf_size] */
    char *released;     /* [stopper_buf_size] */
    size_t piece_cap, released_cap;
    uint32_t n_vocab;
};

static void usage(FILE *out)
{
    fprintf(out,
            "usage: flashbox run -m MODEL.gguf [-p TEXT] [options]\n"
            "  -p TEXT            generate from TEXT and exit (without -p: interactive chat)\n"
            "  --chat             wrap -p in the DeepSeek-V4 chat format (user turn)\n"
            "  --think            thinking mode (implies --chat): the answer starts with reasoning\n"
            "  --system TEXT      system prompt for the chat\n"
            "  -n N               most tokens to generate per answer (default 256)\n"
            "  --temp T           temperature, 0 = greedy (default 1.0)\n"
            "  --top-p P          nucleus sampling (default 1.0 = off)\n"
            "  --top-k K          keep the K most likely tokens (default 0 = off)\n"
            "  --min-p P          keep tokens with p >= P * p_max (default 0 = off)\n"
            "  --repeat-penalty R penalty on the last 64 tokens (default 1.0 = off)\n"
            "  --seed S           sampling seed (default: from the clock)\n"
            "  --ctx N            context length (default: the largest whose memory plan fits, up to the model's)\n"
            "  --backend B        auto (default: vulkan on a GPU or, on a CPU driver, for models of 64 MiB or more; else ref), ref or vulkan\n"
            "  --kv T             storage of compressed entries and indexer keys: f32 (default), f16 or fp8\n"
            "Each answer ends with a line: prompt tokens, generated tokens, prefill and decode tok/s.\n");
}

static int parse_u32(const char *s, uint32_t *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (end == s || *end || errno || v > UINT32_MAX || s[0] == '-') return -1;
    *out = (uint32_t)v;
    return 0;
}

static int parse_f32(const char *s, float *out)
{
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (end == s || *end || errno || v != v) return -1;
    *out = v;
    return 0;
}

static int parse_args(int argc, char **argv, struct run_opts *o)
{
    memset(o, 0, sizeof *o);
    o->n_predict = 256;
    sampler_params_default(&o->sp);
    o->sp.seed = (uint64_t)time(NULL) ^ ((uint64_t)clock() << 32);
    o->sp.penalty_last_n = 64;
    o->backend = ENGINE_BACKEND_AUTO;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 1;
        } else if (!strcmp(a, "--chat")) {
            o->chat = true;
            continue;
        } else if (!strcmp(a, "--think")) {
            o->chat = o->think = true;
            continue;
        } else if (!v) {
            fprintf(stderr, "flashbox run: '%s' needs a value (or is unknown)\n", a);
            return 2;
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            o->model = v;
        } else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) {
            o->prompt = v;
        } else if (!strcmp(a, "--system")) {
            o->system = v;
        } else if (!strcmp(a, "-n")) {
            bad = parse_u32(v, &o->n_predict);
        } else if (!strcmp(a, "--ctx")) {
            bad = parse_u32(v, &o->n_ctx);
        } else if (!strcmp(a, "--temp")) {
            bad = parse_f32(v, &o->sp.temperature);
        } else if (!strcmp(a, "--top-p")) {
            bad = parse_f32(v, &o->sp.top_p);
        } else if (!strcmp(a, "--min-p")) {
            bad = parse_f32(v, &o->sp.min_p);
        } else if (!strcmp(a, "--repeat-penalty")) {
            bad = parse_f32(v, &o->sp.repeat_penalty);
        } else if (!strcmp(a, "--top-k")) {
            uint32_t k = 0;
            bad = parse_u32(v, &k) || k > INT32_MAX;
            o->sp.top_k = (int32_t)k;
        } else if (!strcmp(a, "--seed")) {
            char *end;
            errno = 0;
            o->sp.seed = strtoull(v, &end, 10);
            bad = end == v || *end || errno;
        } else if (!strcmp(a, "--backend")) {
            bad = engine_backend_parse(v, &o->backend) != 0;
        } else if (!strcmp(a, "--kv")) {
            bad = engine_kv_parse(v, &o->kv) != 0;
        } else {
            fprintf(stderr, "flashbox run: unknown argument '%s'\n", a);
            return 2;
        }
        if (bad) {
            fprintf(stderr, "flashbox run: %s: bad value '%s'\n", a, v);
            return 2;
        }
        i++;
    }
    if (!o->model) {
        fprintf(stderr, "flashbox run: -m MODEL.gguf is required\n");
        return 2;
    }
    return 0;
}

static void runner_close(struct runner *r)
{
    free(r->logits);
    free(r->piece);
    free(r->released);
    stopper_destroy(r->stopper);
    sampler_destroy(r->sampler);
    session_destroy(r->session);
    engine_close(r->engine);
}

static int runner_open(struct runner *r, const struct run_opts *o, char *err, size_t err_len)
{
    memset(r, 0, sizeof *r);
    struct engine_options eo;
    engine_options_default(&eo);
    eo.model_path = o->model;
    eo.backend = o->backend;
    eo.kv = o->kv;
    backend_resolve(&eo);
    if (engine_open(&r->engine, &eo, err, err_len)) return -1;
    struct engine_info info;
    engine_get_info(r->engine, &info);
    r->n_vocab = info.n_vocab;
    uint32_t n_ctx = o->n_ctx;
    if (n_ctx == 0) { /* the largest context whose memory plan fits, up to the model's */
        struct engine_plan p;
        n_ctx = engine_plan_open_fit(r->engine, 1, engine_plan_budget(r->engine), &p);
        if (n_ctx == 0) n_ctx = 128; /* session_create then says what does not fit */
    }
    if (session_create(r->engine, n_ctx, &r->session, err, err_len)) return -1;
    r->tok = engine_tokenizer(r->engine);
    if (!r->tok) {
        snprintf(err, err_len, "%s: the model file has no usable tokenizer (tokenizer.ggml.*)", o->model);
        return -1;
    }
    if (tok_n_vocab(r->tok) > r->n_vocab) {
        snprintf(err, err_len, "%s: tokenizer has %u tokens, the model's vocabulary only %u", o->model,
                 tok_n_vocab(r->tok), r->n_vocab);
        return -1;
    }
    if (sampler_create(&r->sampler, r->n_vocab, &o->sp, err, err_len)) return -1;
    int32_t eos = tok_eos(r->tok);
    struct stopper_params stp = { .stop_tokens = &eos, .n_stop_tokens = eos >= 0 ? 1 : 0,
                                  .max_tokens = o->n_predict, .max_text_per_token = tok_stream_buf_size(r->tok) };
    if (stopper_create(&r->stopper, &stp, err, err_len)) return -1;
    r->piece_cap = tok_stream_buf_size(r->tok);
    r->released_cap = stopper_buf_size(r->stopper);
    r->logits = malloc((size_t)r->n_vocab * sizeof *r->logits);
    r->piece = malloc(r->piece_cap);
    r->released = malloc(r->released_cap);
    if (!r->logits || !r->piece || !r->released) {
        snprintf(err, err_len, "out of memory");
        return -1;
    }
    return 0;
}

/* Prompts longer than this prefill in chunks of RUN_PREFILL_CHUNK with a progress line on
 * stderr (tokens done, tok/s, time left); Ctrl-C stops between chunks. */
#define RUN_PROGRESS_MIN 4096u
#define RUN_PREFILL_CHUNK 1024u

static int prefill(struct runner *r, const int32_t *prompt, size_t n, double t0, char *err, size_t err_len)
{
    if (n <= RUN_PROGRESS_MIN) return session_eval(r->session, prompt, (uint32_t)n, r->logits, false, err, err_len);
    for (size_t done = 0; done < n;) {
        uint32_t k = n - done < RUN_PREFILL_CHUNK ? (uint32_t)(n - done) : RUN_PREFILL_CHUNK;
        if (session_eval(r->session, prompt + done, k, done + k == n ? r->logits : NULL, false, err, err_len)) return -1;
        done += k;
        double dt = mono_s() - t0, tps = dt > 0 ? (double)done / dt : 0;
        fprintf(stderr, "\rprefill %zu/%zu tokens, %.0f tok/s, %.0f s left   ", done, n, tps,
                tps > 0 ? (double)(n - done) / tps : 0);
        if (done == n) fputc('\n', stderr);
        if (g_interrupted && done < n) {
            fputc('\n', stderr);
            snprintf(err, err_len, "interrupted during the prefill at %zu of %zu tokens", done, n);
            return -1;
        }
    }
    return 0;
}

/* Evaluates prompt[0, n) after what the session holds, then samples and streams up to
 * n_predict tokens. *last gets the final generated token (-1 if none) so a chat can
 * close the turn; it is not in the KV cache yet. */
static int generate(struct runner *r, const int32_t *prompt, size_t n, int32_t *last, char *err, size_t err_len)
{
    *last = -1;
    if (n == 0) return 0;
    if (session_pos(r->session) + n >= session_n_ctx(r->session)) {
        snprintf(err, err_len, "the prompt needs %zu more positions, the context has %u left", n,
                 session_n_ctx(r->session) - session_pos(r->session));
        return -1;
    }
    for (size_t i = 0; i < n; i++) sampler_accept(r->sampler, prompt[i]);
    stopper_reset(r->stopper);
    struct tok_stream ts;
    tok_stream_init(&ts, r->tok, TOK_DECODE_SPECIAL);
    g_interrupted = 0;

    double t0 = mono_s();
    if (prefill(r, prompt, n, t0, err, err_len)) return -1;
    double t_prefill = mono_s() - t0, t_decode = 0;
    uint32_t n_gen = 0, n_decode_evals = 0;
    const char *why = NULL;
    for (;;) {
        if (g_interrupted) {
            why = "interrupted";
            break;
        }
        int32_t tok = sampler_sample(r->sampler, r->logits);
        if (tok < 0) {
            snprintf(err, err_len, "every logit is -inf or NaN at position %u", session_pos(r->session));
            return -1;
        }
        *last = tok;
        n_gen++;
        sampler_accept(r->sampler, tok);
        int len = tok_stream_feed(&ts, tok, r->piece, r->piece_cap);
        if (len < 0) {
            snprintf(err, err_len, "token %d out of the tokenizer's range", tok);
            return -1;
        }
        size_t out_len;
        enum stop_reason reason = stopper_feed(r->stopper, tok, r->piece, (size_t)len, r->released,
                                               r->released_cap, &out_len);
        fwrite(r->released, 1, out_len, stdout);
        fflush(stdout);
        if (reason != STOP_NONE) break;
        if (session_pos(r->session) + 1 >= session_n_ctx(r->session)) {
            why = "context full";
            break;
        }
        double t1 = mono_s();
        if (session_eval(r->session, &tok, 1, r->logits, false, err, err_len)) return -1;
        t_decode += mono_s() - t1;
        n_decode_evals++;
        *last = -1; /* evaluated: part of the context now */
    }
    int len = tok_stream_flush(&ts, r->piece, r->piece_cap);
    fwrite(r->piece, 1, len > 0 ? (size_t)len : 0, stdout);
    size_t rest = stopper_flush(r->stopper, r->released, r->released_cap);
    fwrite(r->released, 1, rest, stdout);
    printf("\n%s%sprompt %zu tokens, generated %u tokens, prefill %.1f tok/s, decode %.1f tok/s\n",
           why ? why : "", why ? "; " : "", n, n_gen, t_prefill > 0 ? (double)n / t_prefill : 0.0,
           t_decode > 0 ? (double)n_decode_evals / t_decode : 0.0);
    fflush(stdout);
    return 0;
}

static int run_prompt(struct runner *r, const struct run_opts *o, char *err, size_t err_len)
{
    struct tok_vec prompt = { 0 };
    int rc;
    if (o->chat) {
        struct chat_message msgs[2];
        size_t n = 0;
        if (o->system) msgs[n++] = (struct chat_message){ .role = CHAT_ROLE_SYSTEM, .content = o->system };
        msgs[n++] = (struct chat_message){ .role = CHAT_ROLE_USER, .content = o->prompt };
        struct chat_options co = { .thinking = o->think, .add_generation_prompt = true };
        rc = chat_render(r->tok, msgs, n, &co, &prompt, err, err_len);
    } else {
        /* a plain completion starts like every training document: BOS, then the text */
        rc = tok_bos(r->tok) >= 0 && tok_vec_push(&prompt, tok_bos(r->tok)) ? -1 : 0;
        if (!rc) rc = tok_encode(r->tok, o->prompt, strlen(o->prompt), 0, &prompt, err, err_len);
    }
    int32_t last;
    if (!rc) rc = generate(r, prompt.ids, prompt.n, &last, err, err_len);
    tok_vec_free(&prompt);
    return rc;
}

static int run_interactive(struct runner *r, const struct run_opts *o, char *err, size_t err_len)
{
    fprintf(stderr, "flashbox chat (%s mode): Ctrl-C stops an answer, Ctrl-D or Ctrl-C at the prompt quits.\n",
            o->think ? "thinking" : "chat");
    char *line = NULL;
    size_t line_cap = 0;
    struct tok_vec turn = { 0 };
    int rc = 0;
    bool first = true;
    int32_t eos = tok_eos(r->tok);
    for (;;) {
        printf("> ");
        fflush(stdout);
        g_interrupted = 0;
        ssize_t n = getline(&line, &line_cap, stdin);
        if (n < 0) { /* end of input, or Ctrl-C while waiting */
            printf("\n");
            break;
        }
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = 0;
        if (n == 0) continue;
        struct chat_message msgs[2];
        size_t nm = 0;
        if (first && o->system) msgs[nm++] = (struct chat_message){ .role = CHAT_ROLE_SYSTEM, .content = o->system };
        msgs[nm++] = (struct chat_message){ .role = CHAT_ROLE_USER, .content = line };
        struct chat_options co = { .thinking = o->think, .add_generation_prompt = true, .omit_bos = !first };
        rc = chat_render(r->tok, msgs, nm, &co, &turn, err, err_len);
        int32_t last = -1;
        if (!rc) rc = generate(r, turn.ids, turn.n, &last, err, err_len);
        if (rc) break;
        first = false;
        /* close the answer in the context: its last token (sampled, not yet evaluated)
         * and EOS if the answer did not end with it */
        turn.n = 0;
        if (last >= 0 && tok_vec_push(&turn, last)) rc = -1;
        if (!rc && last != eos && eos >= 0 && tok_vec_push(&turn, eos)) rc = -1;
        if (rc) {
            snprintf(err, err_len, "out of memory");
            break;
        }
    }
    free(line);
    tok_vec_free(&turn);
    return rc;
}

int cmd_run(int argc, char **argv)
{
    struct run_opts o;
    int rc = parse_args(argc, argv, &o);
    if (rc) return rc == 1 ? 0 : rc;
    /* no SA_RESTART: Ctrl-C must interrupt a blocking read at the prompt */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);

    char err[512] = "";
    struct runner r;
    if (runner_open(&r, &o, err, sizeof err)) {
        fprintf(stderr, "flashbox run: %s\n", err);
        runner_close(&r);
        return 1;
    }
    rc = o.prompt ? run_prompt(&r, &o, err, sizeof err) : run_interactive(&r, &o, err, sizeof err);
    if (rc) fprintf(stderr, "flashbox run: %s\n", err);
    runner_close(&r);
    return rc ? 1 : 0;
}
