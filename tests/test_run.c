/* `flashbox run` end to end on the tiny fixture model (reference backend): greedy output
 * equals a greedy loop written here against the engine API, seeds reproduce, -n limits,
 * and the interactive chat keeps its KV state between turns. */
#include "engine/engine.h"
#include "tests/harness.h"
#include "tools/mkmodel.h"

#include <stdlib.h>

/* Splits "TEXT\nprompt N tokens, generated M tokens, ..." into its parts; returns the
 * text length or -1 if the stats line is missing. */
static long split_stats(const char *out, const char *from, unsigned *n_prompt, unsigned *n_gen)
{
    const char *st = strstr(from, "prompt ");
    while (st && st != out && st[-1] != '\n') st = strstr(st + 1, "prompt ");
    if (!st || sscanf(st, "prompt %u tokens, generated %u tokens, prefill", n_prompt, n_gen) != 2) return -1;
    if (!strstr(st, "decode ") || !strstr(st, "tok/s\n")) return -1;
    return (long)(st - from) - 1; /* the newline before the stats */
}

TEST(run_greedy_prints_the_greedy_continuation_and_stats)
{
    const char *model = test_fixture("model/v4-tiny-f32.gguf");
    char cmd[8192], out[16384], err[512];
    snprintf(cmd, sizeof cmd, "%s run -m %s -p 'Hello world' -n 12 --temp 0 --backend ref", test_flashbox_bin(), model);
    REQUIRE(test_run_cmd(cmd, out, sizeof out) == 0);
    unsigned n_prompt, n_gen;
    long text_len = split_stats(out, out, &n_prompt, &n_gen);
    REQUIRE(text_len >= 0);

    /* the same continuation by hand: BOS + text, argmax each step, stop at EOS or 12 */
    struct engine_options eo;
    engine_options_default(&eo);
    eo.model_path = model;
    struct engine *e;
    struct session *s;
    struct tokenizer *t;
    REQUIRE(engine_open(&e, &eo, err, sizeof err) == 0);
    REQUIRE(session_create(e, 0, &s, err, sizeof err) == 0);
    REQUIRE(tok_create_from_file(&t, model, err, sizeof err) == 0);
    struct tok_vec prompt = { 0 };
    REQUIRE(tok_vec_push(&prompt, tok_bos(t)) == 0);
    REQUIRE(tok_encode(t, "Hello world", 11, 0, &prompt, err, sizeof err) == 0);
    CHECK_EQ_INT(n_prompt, prompt.n);
    uint32_t n_vocab = tok_n_vocab(t);
    float *logits = malloc(n_vocab * sizeof *logits);
    REQUIRE(session_eval(s, prompt.ids, (uint32_t)prompt.n, logits, false, err, sizeof err) == 0);
    struct tok_stream ts;
    tok_stream_init(&ts, t, TOK_DECODE_SPECIAL);
    char want[4096], piece[1024];
    size_t o = 0;
    unsigned gen = 0;
    for (; gen < 12; ) {
        int32_t best = 0;
        for (uint32_t i = 1; i < n_vocab; i++)
            if (logits[i] > logits[best]) best = (int32_t)i;
        gen++;
        if (best == tok_eos(t)) break;
        int n = tok_stream_feed(&ts, best, piece, sizeof piece);
        memcpy(want + o, piece, (size_t)n);
        o += (size_t)n;
        REQUIRE(session_eval(s, &best, 1, logits, false, err, sizeof err) == 0);
    }
    o += (size_t)tok_stream_flush(&ts, want + o, sizeof want - o);
    CHECK_EQ_INT(n_gen, gen);
    CHECK_EQ_INT(text_len, o);
    CHECK(text_len == (long)o && !memcmp(out, want, o));
    free(logits);
    tok_vec_free(&prompt);
    tok_destroy(t);
    session_destroy(s);
    engine_close(e);
}

TEST(run_same_seed_same_text_and_n_limits_the_tokens)
{
    const char *model = test_fixture("model/v4-tiny-f32.gguf");
    char cmd[8192], a[16384], b[16384], c[16384];
    snprintf(cmd, sizeof cmd, "%s run -m %s -p 'Once' -n 9 --seed 42 --top-p 0.9", test_flashbox_bin(), model);
    REQUIRE(test_run_cmd(cmd, a, sizeof a) == 0);
    REQUIRE(test_run_cmd(cmd, b, sizeof b) == 0);
    unsigned np, ng;
    long la = split_stats(a, a, &np, &ng), lb = split_stats(b, b, &np, &ng);
    REQUIRE(la >= 0 && lb >= 0);
    CHECK(la == lb && !memcmp(a, b, (size_t)la));
    CHECK(ng <= 9);
    snprintf(cmd, sizeof cmd, "%s run -m %s -p 'Once' -n 3 --seed 42 --top-p 0.9", test_flashbox_bin(), model);
    REQUIRE(test_run_cmd(cmd, c, sizeof c) == 0);
    REQUIRE(split_stats(c, c, &np, &ng) >= 0);
    CHECK(ng <= 3);
    snprintf(cmd, sizeof cmd, "%s run -m %s -p x --temp nope 2>&1", test_flashbox_bin(), model);
    CHECK(test_run_cmd(cmd, c, sizeof c) != 0);
    CHECK(strstr(c, "--temp") != NULL);
}

TEST(run_interactive_chat_keeps_the_kv_state_between_turns)
{
    const char *model = test_fixture("model/v4-tiny-f32.gguf");
    char cmd[8192], out[32768], err[512];
    snprintf(cmd, sizeof cmd, "printf 'Hi there\\nAnd again\\n' | %s run -m %s -n 4 --temp 0 2>/dev/null",
             test_flashbox_bin(), model);
    REQUIRE(test_run_cmd(cmd, out, sizeof out) == 0);
    unsigned p1, g1, p2, g2;
    REQUIRE(split_stats(out, out, &p1, &g1) >= 0);
    const char *second = strstr(out, "tok/s\n");
    REQUIRE(second);
    REQUIRE(split_stats(out, second + 6, &p2, &g2) >= 0);
    struct tokenizer *t;
    REQUIRE(tok_create_from_file(&t, model, err, sizeof err) == 0);
    /* turn 1: the whole conversation so far */
    struct chat_message m1 = { .role = CHAT_ROLE_USER, .content = "Hi there" };
    struct chat_options co = { .add_generation_prompt = true };
    struct tok_vec v = { 0 };
    REQUIRE(chat_render(t, &m1, 1, &co, &v, err, sizeof err) == 0);
    CHECK_EQ_INT(p1, v.n);
    /* turn 2: only the tokens that close answer 1 (its unevaluated last token and EOS
     * unless that was it) and open turn 2, no BOS, nothing re-evaluated */
    struct chat_message m2 = { .role = CHAT_ROLE_USER, .content = "And again" };
    co.omit_bos = true;
    v.n = 0;
    REQUIRE(chat_render(t, &m2, 1, &co, &v, err, sizeof err) == 0);
    CHECK(p2 == v.n + 1 || p2 == v.n + 2);
    CHECK(g1 >= 1 && g1 <= 4 && g2 >= 1 && g2 <= 4);
    tok_vec_free(&v);
    tok_destroy(t);
}

/* `flashbox logits --tokens-file --last --ctx`: the last positions' top logits equal those
 * of the whole sequence from --tokens, batch and incremental; a malformed file is refused. */
TEST(logits_tokens_file_last_n_equals_the_tail_of_the_whole_sequence)
{
    char model[512], cmd[8192], whole[65536], tail[4096], inc[4096], path[512];
    snprintf(model, sizeof model, "%s", test_fixture("model/v4-tiny-f32.gguf")); /* test_fixture's buffer is reused */
    FILE *f = fopen(test_fixture("model/tokens.txt"), "r");
    REQUIRE(f != NULL);
    char ids[4096];
    size_t n = fread(ids, 1, sizeof ids - 1, f);
    fclose(f);
    ids[n] = 0;
    for (char *p = ids; *p; p++) if (*p == ',') *p = (p - ids) % 3 ? ' ' : '\n'; /* spaces and newlines */
    snprintf(path, sizeof path, "%s/tokens.txt", test_tmpdir());
    f = fopen(path, "w");
    REQUIRE(f != NULL);
    fputs(ids, f);
    fclose(f);
    snprintf(cmd, sizeof cmd, "%s logits -m %s --backend ref --tokens-file %s --top 3", test_flashbox_bin(), model, path);
    REQUIRE(test_run_cmd(cmd, whole, sizeof whole) == 0);
    snprintf(cmd, sizeof cmd, "%s logits -m %s --backend ref --tokens-file %s --top 3 --last 4 --ctx 512", test_flashbox_bin(),
             model, path);
    REQUIRE(test_run_cmd(cmd, tail, sizeof tail) == 0);
    snprintf(cmd, sizeof cmd, "%s logits -m %s --backend ref --tokens-file %s --top 3 --last 4 --incremental",
             test_flashbox_bin(), model, path);
    REQUIRE(test_run_cmd(cmd, inc, sizeof inc) == 0);
    const char *from = strstr(whole, "\n296:");
    REQUIRE(from != NULL);
    CHECK_STR(tail, from + 1);
    CHECK_STR(inc, from + 1);
    /* a letter, a negative id, and a context shorter than the tokens */
    static const char *const bad[] = { "1 2 x 3", "1,-2", "" };
    for (int i = 0; i < 3; i++) {
        f = fopen(path, "w");
        REQUIRE(f != NULL);
        fputs(bad[i], f);
        fclose(f);
        snprintf(cmd, sizeof cmd, "%s logits -m %s --backend ref --tokens-file %s --top 1 2>&1", test_flashbox_bin(), model,
                 path);
        CHECK(test_run_cmd(cmd, tail, sizeof tail) != 0);
    }
    snprintf(cmd, sizeof cmd, "%s logits -m %s --backend ref --tokens 1,2,3 --ctx 2 --top 1 2>&1", test_flashbox_bin(), model);
    CHECK(test_run_cmd(cmd, tail, sizeof tail) != 0);
    CHECK(strstr(tail, "exceed --ctx 2") != NULL);
}

/* `flashbox logits --compare`: against the fixture's independent float64 logits the
 * reference agrees (error under 1e-5, every top-1); with fp8 KV storage against the f32
 * run it reports an error (entries rounded to E4M3); a file of another size, or none, is
 * refused with the sizes. */
TEST(logits_compare_reports_relative_error_and_top1_and_refuses_a_file_of_another_size)
{
    char model[512], toks[512], want[512], cmd[4096], out[4096], mine[512];
    snprintf(model, sizeof model, "%s", test_fixture("model/v4-tiny-f32.gguf"));
    snprintf(toks, sizeof toks, "%s", test_fixture("model/tokens.txt"));
    snprintf(want, sizeof want, "%s", test_fixture("model/v4-tiny-f32.logits.f32"));
    snprintf(mine, sizeof mine, "%s/f32.bin", test_tmpdir());
    snprintf(cmd, sizeof cmd, "%s logits -m %s --backend ref --tokens-file %s --compare %s --out %s", test_flashbox_bin(), model,
             toks, want, mine);
    REQUIRE(test_run_cmd(cmd, out, sizeof out) == 0);
    double mx = 1, mean = 1;
    long agree = 0, n = 0;
    const char *r = strstr(out, "relative error max");
    REQUIRE(r && sscanf(r, "relative error max %lf mean %lf; top-1 agrees at %ld of %ld", &mx, &mean, &agree, &n) == 4);
    CHECK(mx < 1e-5 && mean <= mx && agree == 300 && n == 300);
    snprintf(cmd, sizeof cmd, "%s logits -m %s --backend ref --kv fp8 --tokens-file %s --compare %s", test_flashbox_bin(), model,
             toks, mine);
    REQUIRE(test_run_cmd(cmd, out, sizeof out) == 0);
    r = strstr(out, "relative error max");
    REQUIRE(r && sscanf(r, "relative error max %lf mean %lf; top-1 agrees at %ld of %ld", &mx, &mean, &agree, &n) == 4);
    CHECK(mx > 1e-3 && mean > 1e-4 && agree >= 280 && n == 300);
    snprintf(cmd, sizeof cmd, "%s logits -m %s --backend ref --tokens 1,2 --compare %s 2>&1", test_flashbox_bin(), model, mine);
    CHECK(test_run_cmd(cmd, out, sizeof out) != 0);
    CHECK(strstr(out, "614400 bytes, expected 4096 (2 positions of 512 float32 logits)") != NULL);
    snprintf(cmd, sizeof cmd, "%s logits -m %s --backend ref --tokens 1,2 --compare %s/none 2>&1", test_flashbox_bin(), model,
             test_tmpdir());
    CHECK(test_run_cmd(cmd, out, sizeof out) != 0);
    snprintf(cmd, sizeof cmd, "%s logits -m %s --backend ref --tokens 1,2 --kv f8 --top 1 2>&1", test_flashbox_bin(), model);
    CHECK(test_run_cmd(cmd, out, sizeof out) != 0);
    CHECK(strstr(out, "expected f32, f16 or fp8") != NULL);
}

/* A prompt of more than 4096 tokens prefills in chunks with a progress line on stderr that
 * ends at the prompt's length. */
TEST(run_shows_prefill_progress_for_a_long_prompt)
{
    char model[512], cmd[65536], out[16384], err[512];
    snprintf(model, sizeof model, "%s/long.gguf", test_tmpdir());
    struct mkmodel_config c;
    mkmodel_defaults(&c);
    c.n_ctx = 16384;
    REQUIRE(mkmodel_write(&c, model, err, sizeof err) == 0);
    char text[20000] = "";
    for (int i = 0; i < 1500; i++) strcat(text, "ab cd ");
    snprintf(cmd, sizeof cmd, "%s run -m %s -p '%s' -n 1 --temp 0 --backend ref 2>&1 >/dev/null", test_flashbox_bin(), model,
             text);
    REQUIRE(test_run_cmd(cmd, out, sizeof out) == 0);
    unsigned done = 0, total = 0;
    const char *last = strrchr(out, '\r');
    REQUIRE(last != NULL);
    CHECK(sscanf(last, "\rprefill %u/%u tokens", &done, &total) == 2);
    CHECK(total > 4096 && done == total);
    CHECK(strstr(out, "tok/s") != NULL && strstr(out, "s left") != NULL);
}

/* `flashbox plan`: the per-part table and the largest context against a given budget; bad
 * values and a missing model are usage errors. */
TEST(plan_prints_the_parts_and_the_largest_context_that_fits)
{
    char model[512], cmd[2048], out[16384];
    snprintf(model, sizeof model, "%s", test_fixture("model/v4-tiny-f32.gguf"));
    snprintf(cmd, sizeof cmd, "%s plan -m %s --backend ref --ctx 4096 --slots 2 --budget-mb 1024 2>&1", test_flashbox_bin(),
             model);
    REQUIRE(test_run_cmd(cmd, out, sizeof out) == 0);
    CHECK(strstr(out, "context 4096 positions (model's 4096), 2 sessions; 2 CSA and 1 HCA layers") != NULL);
    CHECK(strstr(out, "CSA compressed entries") != NULL && strstr(out, "indexer keys") != NULL);
    CHECK(strstr(out, "largest context for 2 sessions: 4096 positions") != NULL);
    /* a budget below the weights: nothing fits */
    snprintf(cmd, sizeof cmd, "%s plan -m %s --backend ref --budget-mb 1 2>&1", test_flashbox_bin(), model);
    REQUIRE(test_run_cmd(cmd, out, sizeof out) == 0);
    CHECK(strstr(out, "does NOT fit") != NULL && strstr(out, "no context fits 1 session") != NULL);
    static const char *const bad[] = { "--ctx x", "--slots 0", "--budget-mb -1", "--bogus 1", "--ctx" };
    for (int i = 0; i < 5; i++) {
        snprintf(cmd, sizeof cmd, "%s plan -m %s %s 2>&1", test_flashbox_bin(), model, bad[i]);
        CHECK_EQ_INT(test_run_cmd(cmd, out, sizeof out), 2);
    }
    snprintf(cmd, sizeof cmd, "%s plan 2>&1", test_flashbox_bin());
    CHECK_EQ_INT(test_run_cmd(cmd, out, sizeof out), 2);
}
