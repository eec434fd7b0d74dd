/* The CPU reference forward: against the independent float64 fixture, batch prefill against
 * token-by-token decode, routing and indexer behaviour, Sinkhorn, softplus, determinism. */
#include "engine/model/model.h"
#include "engine/ref/ref.h"
#include "engine/ref/ref_ops.h"
#include "engine/kv_store.h"
#include "tests/harness.h"
#include "tools/mkmodel.h"

#include <math.h>
#include <stdlib.h>

static int32_t *read_fixture_tokens(uint32_t *n)
{
    FILE *f = fopen(test_fixture("model/tokens.txt"), "r");
    if (!f) return NULL;
    int32_t *t = malloc(1024 * sizeof *t);
    *n = 0;
    int v;
    while (*n < 1024 && fscanf(f, "%d,", &v) == 1) t[(*n)++] = v;
    fclose(f);
    return t;
}

static float *read_floats(const char *path, size_t n)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    float *v = malloc(n * sizeof *v);
    if (fread(v, sizeof *v, n, f) != n) {
        free(v);
        v = NULL;
    }
    fclose(f);
    return v;
}

/* max over positions of ||a - b|| / ||b||, and the number of top-1 mismatches */
static double max_rel_err(const float *a, const float *b, uint32_t n_pos, uint32_t n_vocab, int *top1_miss)
{
    double worst = 0;
    *top1_miss = 0;
    for (uint32_t t = 0; t < n_pos; t++) {
        const float *x = a + (size_t)t * n_vocab, *y = b + (size_t)t * n_vocab;
        double num = 0, den = 0;
        uint32_t ax = 0, ay = 0;
        for (uint32_t i = 0; i < n_vocab; i++) {
            num += ((double)x[i] - y[i]) * ((double)x[i] - y[i]);
            den += (double)y[i] * y[i];
            if (x[i] > x[ax]) ax = i;
            if (y[i] > y[ay]) ay = i;
        }
        worst = fmax(worst, sqrt(num / den));
        *top1_miss += ax != ay;
    }
    return worst;
}

static void check_against_fixture(const char *model, const char *logits, uint32_t n_pos, double tol)
{
    uint32_t n_tok;
    int32_t *tokens = read_fixture_tokens(&n_tok);
    REQUIRE(tokens && n_tok >= n_pos);
    struct model *m;
    char err[512];
    REQUIRE(model_open(&m, test_fixture(model), err, sizeof err) == 0);
    const uint32_t V = m->hp.n_vocab;
    float *want = read_floats(test_fixture(logits), (size_t)n_pos * V);
    float *got = malloc((size_t)n_pos * V * sizeof *got);
    struct ref_state *st;
    REQUIRE(want && got && ref_state_create(m, n_pos, &st, err, sizeof err) == 0);
    REQUIRE(ref_forward(st, tokens, n_pos, got, true, err, sizeof err) == 0);
    int miss;
    double e = max_rel_err(got, want, n_pos, V, &miss);
    printf("  max relative error %.3g over %u positions, %d top-1 mismatches\n", e, n_pos, miss);
    CHECK(e < tol);
    CHECK_EQ_INT(miss, 0);
    ref_state_destroy(st);
    model_close(m);
    free(got);
    free(want);
    free(tokens);
}

TEST(ref_matches_independent_float64_logits_f32)
{
    check_against_fixture("model/v4-tiny-f32.gguf", "model/v4-tiny-f32.logits.f32", 300, 1e-5);
}

TEST(ref_matches_independent_float64_logits_mixed)
{
    check_against_fixture("model/v4-tiny-mixed.gguf", "model/v4-tiny-mixed.logits.f32", 64, 1e-4);
}

static struct model *tiny_model_experts(enum mkmodel_quant q, uint32_t topk, enum gguf_type expert_type)
{
    char path[512], err[512];
    snprintf(path, sizeof path, "%s/tiny-%d-%u-%d.gguf", test_tmpdir(), (int)q, topk, (int)expert_type);
    struct mkmodel_config c;
    mkmodel_defaults(&c);
    c.quant = q;
    c.ix_topk = topk;
    if (expert_type != GGUF_TYPE_MXFP4) { /* ggml's super-blocks: rows of 256 */
        c.expert_type = expert_type;
        c.n_embd = c.n_ff_exp = 256;
    }
    struct model *m = NULL;
    if (mkmodel_write(&c, path, err, sizeof err) || model_open(&m, path, err, sizeof err))
        test_fail_at(__FILE__, __LINE__, "%s", err);
    return m;
}

static struct model *tiny_model(enum mkmodel_quant q, uint32_t topk)
{
    return tiny_model_experts(q, topk, GGUF_TYPE_MXFP4);
}

static void fill_tokens(int32_t *t, uint32_t n, uint32_t n_vocab, uint64_t seed)
{
    for (uint32_t i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        t[i] = (int32_t)((seed >> 33) % n_vocab);
    }
}

TEST(prefill_equals_incremental_at_every_boundary_length)
{
    struct model *m = tiny_model(MKMODEL_MIXED, 4);
    REQUIRE(m);
    const uint32_t V = m->hp.n_vocab, N = 300;
    int32_t tokens[300];
    fill_tokens(tokens, N, V, 7);
    char err[512];
    struct ref_state *inc, *pre;
    REQUIRE(ref_state_create(m, N, &inc, err, sizeof err) == 0 && ref_state_create(m, N, &pre, err, sizeof err) == 0);
    float *inc_logits = malloc((size_t)N * V * sizeof(float)), *last = malloc(V * sizeof(float));
    for (uint32_t t = 0; t < N; t++)
        REQUIRE(ref_forward(inc, &tokens[t], 1, inc_logits + (size_t)t * V, false, err, sizeof err) == 0);
    /* one batch of all 300 gives every length's last position; exact-length batches check
     * the ends of chunks (REF_BATCH) and of the window, compressor blocks and indexer */
    float *pre_logits = malloc((size_t)N * V * sizeof(float));
    REQUIRE(ref_forward(pre, tokens, N, pre_logits, true, err, sizeof err) == 0);
    int miss;
    uint32_t lengths[64] = { 1, 2, 3, 4, 5, 16, 17, 127, 128, 129, 300 }, n_len = 11;
    for (uint32_t L = 24; L <= 40; L++) lengths[n_len++] = L;
    for (uint32_t i = 0; i < n_len; i++) {
        uint32_t L = lengths[i];
        double e = max_rel_err(pre_logits + (size_t)(L - 1) * V, inc_logits + (size_t)(L - 1) * V, 1, V, &miss);
        if (e > 1e-5) test_fail_at(__FILE__, __LINE__, "length %u: relative error %g", L, e);
    }
    const uint32_t exact[] = { 1, 3, 4, 5, 17, 33, 40 };
    for (uint32_t i = 0; i < sizeof exact / sizeof exact[0]; i++) {
        uint32_t L = exact[i];
        ref_state_reset(pre);
        REQUIRE(ref_forward(pre, tokens, L, last, false, err, sizeof err) == 0);
        double e = max_rel_err(last, inc_logits + (size_t)(L - 1) * V, 1, V, &miss);
        if (e > 1e-5) test_fail_at(__FILE__, __LINE__, "exact length %u: relative error %g", L, e);
    }
    free(pre_logits);
    /* a prefill split in two batches continues the same state machine */
    ref_state_reset(pre);
    REQUIRE(ref_forward(pre, tokens, 37, NULL, false, err, sizeof err) == 0);
    REQUIRE(ref_forward(pre, tokens + 37, 150, last, false, err, sizeof err) == 0);
    CHECK(max_rel_err(last, inc_logits + (size_t)186 * V, 1, V, &miss) < 1e-5);
    ref_state_destroy(inc);
    ref_state_destroy(pre);
    free(inc_logits);
    free(last);
    model_close(m);
}

TEST(hash_layers_route_exactly_to_tid2eid)
{
    struct model *m = tiny_model(MKMODEL_F32, 4);
    REQUIRE(m);
    char err[512];
    struct ref_state *st;
    REQUIRE(ref_state_create(m, 64, &st, err, sizeof err) == 0);
    int32_t tokens[40];
    fill_tokens(tokens, 40, m->hp.n_vocab, 3);
    int learned_differs = 0;
    for (uint32_t t = 0; t < 40; t++) {
        REQUIRE(ref_forward(st, &tokens[t], 1, NULL, false, err, sizeof err) == 0);
        for (uint32_t il = 0; il < m->hp.n_layer; il++) {
            const int32_t *table = (const int32_t *)m->layers[il].tid2eid;
            (void)table;
            if (il < m->hp.n_hash_layer) {
                const int32_t *row = (const int32_t *)m->layers[il].tid2eid->data + (size_t)tokens[t] * m->hp.n_expert_used;
                for (uint32_t k = 0; k < m->hp.n_expert_used; k++) CHECK_EQ_INT(st->last_experts[il][k], row[k]);
            } else {
                const int32_t *row0 = (const int32_t *)m->layers[0].tid2eid->data + (size_t)tokens[t] * m->hp.n_expert_used;
                learned_differs += st->last_experts[il][0] != row0[0];
            }
        }
    }
    CHECK(learned_differs > 0); /* learned layers really route by score */
    ref_state_destroy(st);
    model_close(m);
}

TEST(indexer_drops_entries_once_more_than_topk_are_visible)
{
    struct model *m4 = tiny_model(MKMODEL_F32, 4), *mall = tiny_model(MKMODEL_F32, 1000);
    REQUIRE(m4 && mall);
    const uint32_t V = m4->hp.n_vocab;
    char err[512];
    struct ref_state *a, *b;
    REQUIRE(ref_state_create(m4, 64, &a, err, sizeof err) == 0 && ref_state_create(mall, 64, &b, err, sizeof err) == 0);
    int32_t tokens[40];
    fill_tokens(tokens, 40, V, 11);
    float *la = malloc(40 * V * sizeof(float)), *lb = malloc(40 * V * sizeof(float));
    REQUIRE(ref_forward(a, tokens, 40, la, true, err, sizeof err) == 0);
    REQUIRE(ref_forward(b, tokens, 40, lb, true, err, sizeof err) == 0);
    CHECK_EQ_INT(a->last_ix_visible[2], 10);
    CHECK_EQ_INT(a->last_ix_selected[2], 4);
    CHECK_EQ_INT(b->last_ix_selected[2], 10);
    int miss;
    /* identical while every entry fits in the top-k (t < 19: at most 4 visible) ... */
    CHECK(max_rel_err(la, lb, 19, V, &miss) == 0.0);
    /* ... and different once entries are dropped */
    CHECK(max_rel_err(la + 39 * V, lb + 39 * V, 1, V, &miss) > 1e-4);
    ref_state_destroy(a);
    ref_state_destroy(b);
    model_close(m4);
    model_close(mall);
    free(la);
    free(lb);
}

TEST(sinkhorn_output_is_doubly_stochastic)
{
    float comb[16];
    uint64_t seed = 5;
    for (int trial = 0; trial < 50; trial++) {
        for (int i = 0; i < 16; i++) {
            seed = seed * 6364136223846793005ull + 1;
            comb[i] = (float)((double)(seed >> 40) / (1 << 24) * 3.0 - 1.5); /* wider than the model's logits (base N(0, 0.5^2)) */
        }
        ref_sinkhorn(comb, 4, 20, 1e-6f);
        for (int j = 0; j < 4; j++) {
            double row = 0, col = 0;
            for (int k = 0; k < 4; k++) {
                row += comb[j * 4 + k];
                col += comb[k * 4 + j];
            }
            CHECK_NEAR(row, 1.0, 1e-3);
            CHECK_NEAR(col, 1.0, 1e-3);
        }
    }
}

TEST(softplus_keeps_precision_for_very_negative_logits)
{
    const double xs[] = { -17.5, -20, -30, -50, -80 };
    for (size_t i = 0; i < sizeof xs / sizeof xs[0]; i++) {
        double got = ref_softplus(xs[i]), want = exp(xs[i]); /* softplus(x) = e^x (1 + O(e^x)) */
        CHECK(got > 0);
        CHECK_NEAR(got / want, 1.0, 1e-7);
    }
    CHECK_NEAR(ref_softplus(0.0), log(2.0), 1e-15);
    CHECK_NEAR(ref_softplus(40.0), 40.0, 1e-12);
    /* the naive float form loses it: this is what the test guards against */
    CHECK(logf(1.0f + expf(-20.0f)) == 0.0f);
}

TEST(topk_breaks_ties_toward_the_lower_index)
{
    const float v[8] = { 1, 3, 3, 2, 3, -INFINITY, 0, 2 };
    int32_t idx[4];
    ref_topk(v, 8, 4, idx);
    CHECK(idx[0] == 1 && idx[1] == 2 && idx[2] == 4 && idx[3] == 3);
}

/* The heap selection against a plain rule (the best is the largest value, the lower index
 * on ties) applied k times, on values with many ties, for every k up to n. */
TEST(topk_equals_repeated_best_pick_with_many_ties)
{
    enum { N = 300 };
    float v[N];
    int32_t idx[N], want[N];
    bool taken[N];
    for (uint32_t i = 0; i < N; i++) v[i] = (float)((i * 7919u) % 37u) - 18.0f; /* 37 values, 8 copies each */
    for (uint32_t k = 0; k <= N; k += (k < 20 ? 1 : 23)) {
        memset(taken, 0, sizeof taken);
        for (uint32_t j = 0; j < k; j++) {
            int32_t best = -1;
            for (uint32_t i = 0; i < N; i++)
                if (!taken[i] && (best < 0 || v[i] > v[best])) best = (int32_t)i;
            taken[best] = true;
            want[j] = best;
        }
        ref_topk(v, N, k, idx);
        for (uint32_t j = 0; j < k; j++)
            if (idx[j] != want[j]) {
                CHECK_EQ_INT(idx[j], want[j]);
                break;
            }
    }
}

/* Max relative error between the logits of two models over n random tokens (-1 when a
 * forward fails); *miss counts the top-1 mismatches. Closes both models. */
static double compare_models(struct model *mq, struct model *mf, uint32_t n, uint64_t seed, int *miss)
{
    double e = -1;
    const uint32_t V = mq->hp.n_vocab;
    char err[512];
    struct ref_state *a = NULL, *b = NULL;
    int32_t *tokens = malloc(n * sizeof *tokens);
    float *la = malloc((size_t)n * V * sizeof(float)), *lb = malloc((size_t)n * V * sizeof(float));
    if (tokens && la && lb && ref_state_create(mq, n, &a, err, sizeof err) == 0 && ref_state_create(mf, n, &b, err, sizeof err) == 0) {
        fill_tokens(tokens, n, V, seed);
        if (ref_forward(a, tokens, n, la, true, err, sizeof err) == 0 && ref_forward(b, tokens, n, lb, true, err, sizeof err) == 0)
            e = max_rel_err(la, lb, n, V, miss);
    }
    if (e < 0) test_fail_at(__FILE__, __LINE__, "%s", err);
    if (a) ref_state_destroy(a);
    if (b) ref_state_destroy(b);
    model_close(mq);
    model_close(mf);
    free(tokens);
    free(la);
    free(lb);
    return e;
}

TEST(mixed_file_logits_match_f32_file_of_the_same_dequantized_weights)
{
    struct model *mq = tiny_model(MKMODEL_MIXED, 4), *mf = tiny_model(MKMODEL_F32_DEQUANT, 4);
    REQUIRE(mq && mf);
    int miss = 0;
    double e = compare_models(mq, mf, 48, 13, &miss);
    CHECK(e >= 0 && e < 1e-6);
    CHECK_EQ_INT(miss, 0);
}

/* The reference computes with every K-quant and i-quant expert type through dequant_row:
 * the same logits as the F32 file holding the dequantized experts. */
TEST(ref_with_ggml_quant_experts_matches_f32_file_of_their_dequantized_values)
{
    static const enum gguf_type types[] = {
        GGUF_TYPE_Q2_K, GGUF_TYPE_Q3_K, GGUF_TYPE_Q4_K, GGUF_TYPE_Q5_K, GGUF_TYPE_Q6_K, GGUF_TYPE_IQ2_XXS, GGUF_TYPE_IQ2_XS,
        GGUF_TYPE_IQ2_S, GGUF_TYPE_IQ3_XXS, GGUF_TYPE_IQ1_S, GGUF_TYPE_IQ1_M, GGUF_TYPE_IQ4_NL, GGUF_TYPE_IQ4_XS,
    };
    for (size_t i = 0; i < sizeof types / sizeof types[0] && !test_failed(); i++) {
        struct model *mq = tiny_model_experts(MKMODEL_MIXED, 4, types[i]), *mf = tiny_model_experts(MKMODEL_F32_DEQUANT, 4, types[i]);
        REQUIRE(mq && mf);
        CHECK(mq->layers[0].ffn_down_exps->type == types[i]);
        int miss = 0;
        double e = compare_models(mq, mf, 12, 17, &miss);
        if (!(e >= 0 && e < 1e-6) || miss)
            test_fail_at(__FILE__, __LINE__, "%s experts: relative error %.3g, %d top-1 mismatches", gguf_type_name(types[i]), e, miss);
    }
}

TEST(ref_forward_is_deterministic_and_refuses_bad_tokens)
{
    struct model *m = tiny_model(MKMODEL_MIXED, 4);
    REQUIRE(m);
    const uint32_t V = m->hp.n_vocab;
    char err[512];
    struct ref_state *st;
    REQUIRE(ref_state_create(m, 32, &st, err, sizeof err) == 0);
    int32_t tokens[20];
    fill_tokens(tokens, 20, V, 17);
    float *l1 = malloc(V * sizeof(float)), *l2 = malloc(V * sizeof(float));
    REQUIRE(ref_forward(st, tokens, 20, l1, false, err, sizeof err) == 0);
    ref_state_reset(st);
    REQUIRE(ref_forward(st, tokens, 20, l2, false, err, sizeof err) == 0);
    CHECK(memcmp(l1, l2, V * sizeof(float)) == 0);
    int32_t bad = (int32_t)V;
    CHECK(ref_forward(st, &bad, 1, l1, false, err, sizeof err) != 0 && strstr(err, "outside the vocabulary"));
    CHECK_EQ_INT(st->pos, 20);
    CHECK(ref_forward(st, tokens, 13, l1, false, err, sizeof err) != 0 && strstr(err, "exceed the context"));
    CHECK_EQ_INT(st->pos, 20);
    ref_state_destroy(st);
    model_close(m);
    free(l1);
    free(l2);
}

/* KV storage (kv_store.h) against values worked by hand. FP8: the scale is the smallest
 * 2^k with amax <= 448 * 2^k (460 -> 2, 448 -> 1, 1 -> 2^-8, 0 -> 2^-22 from the 1e-4
 * floor); 0.3 lies between 0.28125 and 0.3125 (steps of 2^-5 in [0.25, 0.5)), 2^-10 is half
 * the smallest subnormal (ties to even: 0), 3 x 2^-10 rounds to 2^-9 x 2 (even). Packed:
 * {0.3, -460, 1, 0} / 2 = {0.15, -230, 0.5, 0} -> {0.15625, -224, 0.5, 0} (steps of 2^-6
 * and 16), times 2. F16: 1/3 -> 0x3555. */
TEST(kv_storage_packs_fp8_e4m3_and_f16_as_worked_by_hand)
{
    CHECK(kv_fp8_scale(460.0f) == 2.0f && kv_fp8_scale(448.0f) == 1.0f && kv_fp8_scale(1.0f) == 0x1p-8f);
    CHECK(kv_fp8_scale(0.0f) == 0x1p-22f);
    CHECK_EQ_INT(kv_e4m3_code(0.3f), 0x2a); /* 1.25 x 2^-2 */
    CHECK(kv_e4m3_value(0x2a) == 0.3125f);
    CHECK_EQ_INT(kv_e4m3_code(0x1p-10f), 0);
    CHECK_EQ_INT(kv_e4m3_code(3 * 0x1p-10f), 2);
    CHECK_EQ_INT(kv_e4m3_code(448.0f), 0x7e);
    CHECK_EQ_INT(kv_e4m3_code(-448.0f), 0xfe);
    for (int c = 0; c < 256; c++) /* every finite code round-trips */
        if ((c & 0x7f) != 0x7f && !(c == 0x80)) CHECK_EQ_INT(kv_e4m3_code(kv_e4m3_value((uint8_t)c)), c);
    const float x[4] = { 0.3f, -460.0f, 1.0f, 0.0f };
    uint32_t w[3];
    float y[4];
    CHECK_EQ_INT(kv_entry_words(ENGINE_KV_FP8, 4), 2);
    kv_pack(ENGINE_KV_FP8, x, 4, w);
    kv_unpack(ENGINE_KV_FP8, w, 4, y);
    CHECK(y[0] == 0.3125f && y[1] == -448.0f && y[2] == 1.0f && y[3] == 0.0f);
    const float h[3] = { 1.0f / 3.0f, 65504.0f, -2.0f };
    CHECK_EQ_INT(kv_entry_words(ENGINE_KV_F16, 3), 2);
    kv_pack(ENGINE_KV_F16, h, 3, w);
    CHECK_EQ_INT(w[0] & 0xffff, 0x3555);
    kv_unpack(ENGINE_KV_F16, w, 3, y);
    CHECK(y[0] == 0.333251953125f && y[1] == 65504.0f && y[2] == -2.0f);
}

/* What storing compressed entries and indexer keys in f16 or FP8 (power-of-two scale per
 * entry) costs on the fixture's 300 positions, against float32 storage: relative error of
 * the logits and top-1 agreement (figures in docs/long-context.md). */
TEST(kv_storage_rounding_costs_little_against_float32_on_the_fixture)
{
    uint32_t n_tok;
    int32_t *tokens = read_fixture_tokens(&n_tok);
    REQUIRE(tokens != NULL);
    struct model *m;
    char err[512];
    REQUIRE(model_open(&m, test_fixture("model/v4-tiny-f32.gguf"), err, sizeof err) == 0);
    const uint32_t V = m->hp.n_vocab;
    float *lg[3];
    for (int r = 0; r < 3; r++) {
        struct ref_state *st;
        lg[r] = malloc((size_t)n_tok * V * sizeof(float));
        REQUIRE(lg[r] && ref_state_create_kv(m, n_tok, (enum engine_kv_type)r, &st, err, sizeof err) == 0);
        REQUIRE(ref_forward(st, tokens, n_tok, lg[r], true, err, sizeof err) == 0);
        ref_state_destroy(st);
    }
    for (int r = 1; r < 3; r++) {
        int miss = 0;
        double e = max_rel_err(lg[r], lg[0], n_tok, V, &miss), mean = 0;
        for (uint32_t t = 0; t < n_tok; t++) {
            int m1;
            mean += max_rel_err(lg[r] + (size_t)t * V, lg[0] + (size_t)t * V, 1, V, &m1) / n_tok;
        }
        fprintf(stderr, "kv %s: relative error max %.3g mean %.3g, top-1 differs at %d of %u positions\n",
                r == 1 ? "f16" : "fp8", e, mean, miss, n_tok);
        /* f16: within 1%, never another top-1; fp8 moves the indexer's choices now and then */
        CHECK(r == 1 ? e < 2e-2 && miss == 0 : mean < 0.05 && miss <= 10);
        CHECK(e > 0); /* the rounding did something */
    }
    for (int r = 0; r < 3; r++) free(lg[r]);
    free(tokens);
    model_close(m);
}
