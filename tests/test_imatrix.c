/* `flashbox imatrix`: the file it writes read back by the quantizer's reader (entries, sizes,
 * per-expert layout), its values against an independent computation (layer 0's attention
 * input recomputed from the embedding; the hash layer's experts against tid2eid), the product
 * observer leaving the logits alone (and refused by Vulkan), and its malformed inputs (no file
 * left behind). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/engine.h"
#include "engine/model/model.h"
#include "engine/ref/ref.h"
#include "engine/ref/ref_ops.h"
#include "tests/harness.h"
#include "tools/imatrix.h"
#include "tools/quantize.h"

static const float *f32(tensor_ref t) { return (const float *)t->data; }

/* The fixture model's imatrix over its 300 tokens, in 3 chunks of at most 128, written to
 * out in the test's directory and read back by the quantizer's reader into m. */
struct fixture_run {
    char model[512], out[512];
    int32_t *ids;   /* [n] */
    uint32_t n;
    struct imatrix_stats st;
    struct quant_imatrix m;
};

static int fixture_imatrix(struct fixture_run *r)
{
    char err[512];
    snprintf(r->model, sizeof r->model, "%s", test_fixture("model/v4-tiny-f32.gguf")); /* test_fixture's buffer is reused */
    snprintf(r->out, sizeof r->out, "%s/fx.imatrix", test_tmpdir());
    if (quant_read_ids_file(test_fixture("model/tokens.txt"), 1 << 20, &r->ids, &r->n, err, sizeof err)) {
        test_fail_at(__FILE__, __LINE__, "%s", err);
        return -1;
    }
    struct imatrix_opts o = { .model = r->model, .out = r->out, .tokens = r->ids, .n_tokens = r->n, .n_ctx = 128, .dataset = "tokens.txt" };
    if (imatrix_compute(&o, &r->st, err, sizeof err) || quant_imatrix_load(r->out, &r->m, err, sizeof err)) {
        test_fail_at(__FILE__, __LINE__, "%s", err);
        free(r->ids);
        return -1;
    }
    return 0;
}

TEST(imatrix_file_reads_back_with_an_entry_per_observed_matrix)
{
    struct fixture_run r;
    char err[512];
    REQUIRE(fixture_imatrix(&r) == 0);
    free(r.ids);
    CHECK_EQ_INT(r.st.n_tokens, 300);
    CHECK_EQ_INT(r.st.n_chunks, 3);
    CHECK_EQ_INT(r.m.n, r.st.n_entries);
    struct model *mdl;
    REQUIRE(model_open(&mdl, r.model, err, sizeof err) == 0);
    const struct model_hparams *hp = &mdl->hp;
    uint32_t n_exps = 0;
    for (uint64_t i = 0; i < mdl->file->n_tensors; i++) {
        const struct gguf_tensor *t = &mdl->file->tensors[i];
        const struct quant_imatrix_entry *e = quant_imatrix_find(&r.m, t->name);
        if (t->n_dims == 3) { /* every routed expert tensor, its experts' columns one after another */
            n_exps++;
            REQUIRE(e);
            CHECK_EQ_INT(e->n_val, t->ne[0] * hp->n_expert);
        } else if (e) {
            CHECK_EQ_INT(e->n_val, t->ne[0]);
        }
        if (e)
            for (uint64_t k = 0; k < e->n_val; k++) CHECK(isfinite(e->val[k]) && e->val[k] >= 0);
    }
    CHECK_EQ_INT(n_exps, 3 * hp->n_layer);
    CHECK_EQ_INT(r.st.n_expert_entries, n_exps);
    /* every product the reference makes has an entry (the head only with logits: none here) */
    static const char *const want[] = { "blk.0.attn_q_a.weight", "blk.0.attn_q_b.weight", "blk.0.attn_kv.weight",
                                        "blk.0.attn_output_a.weight", "blk.0.attn_output_b.weight",
                                        "blk.0.ffn_gate_inp.weight", "blk.0.ffn_gate_shexp.weight",
                                        "blk.0.ffn_down_shexp.weight" };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        CHECK(quant_imatrix_find(&r.m, want[i]) != NULL);
        if (!quant_imatrix_find(&r.m, want[i])) test_fail_at(__FILE__, __LINE__, "no entry %s", want[i]);
    }
    CHECK(quant_imatrix_find(&r.m, "output.weight") == NULL);
    CHECK(quant_imatrix_find(&r.m, "token_embd.weight") == NULL);
    /* gate and up read the same input */
    const struct quant_imatrix_entry *g = quant_imatrix_find(&r.m, "blk.2.ffn_gate_exps.weight"),
                                     *u = quant_imatrix_find(&r.m, "blk.2.ffn_up_exps.weight");
    REQUIRE(g && u && g->n_val == u->n_val);
    CHECK(!memcmp(g->val, u->val, g->n_val * sizeof *g->val));
    model_close(mdl);
    quant_imatrix_free(&r.m);
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp", r.out);
    CHECK(access(tmp, F_OK) != 0);
}

TEST(imatrix_values_equal_an_independent_computation)
{
    struct fixture_run r;
    char err[512];
    REQUIRE(fixture_imatrix(&r) == 0);
    struct model *mdl;
    REQUIRE(model_open(&mdl, r.model, err, sizeof err) == 0);
    const struct model_hparams *hp = &mdl->hp;
    const struct layer_weights *lw = &mdl->layers[0];
    const uint32_t d = hp->n_embd, K = hp->n_expert_used, E = hp->n_expert;

    /* layer 0's attention input depends on the token alone: hc_pre of the embedding in every
     * stream, then the attention norm; the importance of attn_q_a is its mean square */
    float *X = malloc((size_t)hp->n_hc * d * sizeof *X), *a = malloc(d * sizeof *a);
    float post[16], comb[256], mix[512];
    double *want = calloc(d, sizeof *want);
    REQUIRE(hp->n_hc <= 16 && (2 + hp->n_hc) * hp->n_hc <= 512);
    for (uint32_t t = 0; t < r.n; t++) {
        ref_get_row(mdl->token_embd, (uint64_t)r.ids[t], X);
        for (uint32_t j = 1; j < hp->n_hc; j++) memcpy(X + (size_t)j * d, X, d * sizeof *X);
        ref_hc_pre(hp, X, f32(lw->hc_attn_fn), f32(lw->hc_attn_base), f32(lw->hc_attn_scale), a, post, comb, mix);
        ref_rmsnorm(a, f32(lw->attn_norm), d, hp->rms_eps, a);
        for (uint32_t i = 0; i < d; i++) want[i] += (double)a[i] * a[i] / r.n;
    }
    static const char *const same_input[] = { "blk.0.attn_q_a.weight", "blk.0.attn_kv.weight" };
    for (int k = 0; k < 2; k++) {
        const struct quant_imatrix_entry *e = quant_imatrix_find(&r.m, same_input[k]);
        REQUIRE(e && e->n_val == d);
        double worst = 0;
        for (uint32_t i = 0; i < d; i++) worst = fmax(worst, fabs(e->val[i] - want[i]) / want[i]);
        if (worst > 1e-5) test_fail_at(__FILE__, __LINE__, "%s: relative error %g against the recomputed input", same_input[k], worst);
    }

    /* layer 0 routes by token (tid2eid): expert e's products are the tokens that map to it, so
     * an expert no token maps to is all ones, and the counts weigh the per-expert means back
     * into K times the shared expert's (every token's) mean */
    REQUIRE(lw->tid2eid);
    uint32_t cnt[64] = { 0 };
    REQUIRE(E <= 64);
    for (uint32_t t = 0; t < r.n; t++)
        for (uint32_t k = 0; k < K; k++) cnt[((const int32_t *)lw->tid2eid->data)[(size_t)r.ids[t] * K + k]]++;
    const struct quant_imatrix_entry *ge = quant_imatrix_find(&r.m, "blk.0.ffn_gate_exps.weight"),
                                     *sh = quant_imatrix_find(&r.m, "blk.0.ffn_gate_shexp.weight");
    REQUIRE(ge && sh && ge->n_val == (uint64_t)d * E && sh->n_val == d);
    uint32_t unused = 0;
    for (uint32_t e = 0; e < E; e++) {
        bool ones = true;
        for (uint32_t i = 0; i < d; i++) ones &= ge->val[(size_t)e * d + i] == 1.0f;
        if (ones != (cnt[e] == 0)) test_fail_at(__FILE__, __LINE__, "expert %u: %u products, values %s ones", e, cnt[e], ones ? "all" : "not");
        unused += cnt[e] == 0;
    }
    double worst = 0;
    for (uint32_t i = 0; i < d; i++) {
        double s = 0;
        for (uint32_t e = 0; e < E; e++) s += (double)cnt[e] * ge->val[(size_t)e * d + i];
        worst = fmax(worst, fabs(s / ((double)K * r.n) - sh->val[i]) / sh->val[i]);
    }
    if (worst > 1e-5) test_fail_at(__FILE__, __LINE__, "per-expert means weighted by tid2eid's counts: relative error %g", worst);
    (void)unused;
    free(X);
    free(a);
    free(want);
    free(r.ids);
    model_close(mdl);
    quant_imatrix_free(&r.m);
}

static int n_products;
static void count_product(void *ctx, uint32_t tensor, int32_t expert, const float *x, uint32_t n_in)
{
    (void)ctx, (void)tensor, (void)expert, (void)x, (void)n_in;
    n_products++;
}

TEST(imatrix_observer_leaves_the_logits_alone)
{
    struct engine_options opt;
    engine_options_default(&opt);
    opt.model_path = test_fixture("model/v4-tiny-f32.gguf");
    struct engine *e;
    struct session *s;
    char err[512];
    REQUIRE(engine_open(&e, &opt, err, sizeof err) == 0);
    REQUIRE(session_create(e, 64, &s, err, sizeof err) == 0);
    struct engine_info info;
    engine_get_info(e, &info);
    const int32_t toks[5] = { 5, 77, 300, 12, 9 };
    float *a = malloc(5 * (size_t)info.n_vocab * sizeof *a), *b = malloc(5 * (size_t)info.n_vocab * sizeof *b);
    REQUIRE(session_eval(s, toks, 5, a, true, err, sizeof err) == 0);
    const struct engine_observer obs = { count_product, NULL };
    REQUIRE(session_observe(s, &obs, err, sizeof err) == 0);
    session_reset(s);
    REQUIRE(session_eval(s, toks, 5, b, true, err, sizeof err) == 0);
    CHECK(!memcmp(a, b, 5 * (size_t)info.n_vocab * sizeof *a));
    CHECK(n_products > 0);
    REQUIRE(session_observe(s, NULL, err, sizeof err) == 0);
    const int seen = n_products;
    session_reset(s);
    REQUIRE(session_eval(s, toks, 1, b, false, err, sizeof err) == 0);
    CHECK_EQ_INT(n_products, seen);
    free(a);
    free(b);
    session_destroy(s);
    engine_close(e);
}

TEST(imatrix_observer_is_refused_by_the_vulkan_backend)
{
    struct engine_options opt;
    engine_options_default(&opt);
    opt.model_path = test_fixture("model/v4-tiny-f32.gguf");
    opt.backend = ENGINE_BACKEND_VULKAN;
    struct engine *e;
    struct session *s;
    char err[512];
    if (engine_open(&e, &opt, err, sizeof err)) {
        if (strstr(err, "no Vulkan driver") || strstr(err, "no Vulkan device")) test_skip(err);
        test_fail_at(__FILE__, __LINE__, "%s", err);
        return;
    }
    REQUIRE(session_create(e, 64, &s, err, sizeof err) == 0);
    const struct engine_observer obs = { count_product, NULL };
    err[0] = 0;
    CHECK(session_observe(s, &obs, err, sizeof err) == -1 && strstr(err, "vulkan backend cannot observe"));
    session_destroy(s);
    engine_close(e);
}

/* Runs `flashbox imatrix ARGS 2>&1`; returns its exit status, output in out. */
static int run_imatrix(const char *args, char *out, size_t cap)
{
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "%s imatrix %s 2>&1", test_flashbox_bin(), args);
    return test_run_cmd(cmd, out, cap);
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f) return;
    fputs(text, f);
    fclose(f);
}

TEST(imatrix_malformed_inputs_are_refused_and_leave_no_file)
{
    const char *model = test_fixture("model/v4-tiny-f32.gguf"), *dir = test_tmpdir();
    char empty[512], bad[512], big[512], out[512], tmp[600], args[2048], text[4096];
    snprintf(empty, sizeof empty, "%s/empty.txt", dir);
    snprintf(bad, sizeof bad, "%s/bad.txt", dir);
    snprintf(big, sizeof big, "%s/big.txt", dir);
    snprintf(out, sizeof out, "%s/out.imatrix", dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", out);
    write_text(empty, " \n,\n");
    write_text(bad, "1,2,x3\n");
    write_text(big, "1,2,3,100000,4\n");
    static const struct { const char *model, *tokens, *want; } cases[] = {
        { NULL, "EMPTY", "no token ids" },
        { NULL, "BAD", "bad id" },
        { NULL, "BIG", "token 3: id 100000 outside the model's vocabulary [0, 512)" },
        { NULL, "/nonexistent/tokens.txt", "/nonexistent/tokens.txt" },
        { "/nonexistent/model.gguf", "BAD0", "/nonexistent/model.gguf" },
    };
    char good[512];
    snprintf(good, sizeof good, "%s/good.txt", dir);
    write_text(good, "1,2,3\n");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *tok = !strcmp(cases[i].tokens, "EMPTY") ? empty : !strcmp(cases[i].tokens, "BAD") ? bad
                        : !strcmp(cases[i].tokens, "BIG") ? big : !strcmp(cases[i].tokens, "BAD0") ? good : cases[i].tokens;
        snprintf(args, sizeof args, "-m %s --tokens %s -o %s", cases[i].model ? cases[i].model : model, tok, out);
        const int rc = run_imatrix(args, text, sizeof text);
        if (rc != 1 || !strstr(text, cases[i].want) || !strstr(text, "flashbox imatrix:"))
            test_fail_at(__FILE__, __LINE__, "case %zu: exit %d, want \"%s\" in: %s", i, rc, cases[i].want, text);
        CHECK(access(out, F_OK) != 0 && access(tmp, F_OK) != 0);
    }
    /* missing arguments and bad counts are usage errors */
    snprintf(args, sizeof args, "-m %s -o %s", model, out);
    CHECK_EQ_INT(run_imatrix(args, text, sizeof text), 2);
    snprintf(args, sizeof args, "-m %s --tokens %s -o %s --ctx 0", model, good, out);
    CHECK_EQ_INT(run_imatrix(args, text, sizeof text), 2);
    CHECK(strstr(text, "--ctx: '0'") != NULL);
    /* a good run writes the file and nothing beside it */
    snprintf(args, sizeof args, "-m %s --tokens %s -o %s --quiet", model, good, out);
    CHECK_EQ_INT(run_imatrix(args, text, sizeof text), 0);
    CHECK(strstr(text, "3 tokens in 1 chunks") != NULL);
    CHECK(access(out, F_OK) == 0 && access(tmp, F_OK) != 0);
    /* chunks of 2 from a fresh context each; --chunks stops after the first */
    snprintf(args, sizeof args, "-m %s --tokens %s -o %s --quiet --ctx 2 --chunks 1", model, good, out);
    CHECK_EQ_INT(run_imatrix(args, text, sizeof text), 0);
    CHECK(strstr(text, "2 tokens in 1 chunks") != NULL);
    snprintf(args, sizeof args, "-m %s --tokens %s -o %s --quiet --ctx 2", model, good, out);
    CHECK_EQ_INT(run_imatrix(args, text, sizeof text), 0);
    CHECK(strstr(text, "3 tokens in 2 chunks") != NULL);
}
