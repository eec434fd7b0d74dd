/* Batch invariance: a session's logits are bitwise the same however its tokens arrive (one
 * prefill, chunks of 1, 7 or 64, one at a time), whatever the expert-cache budget (all
 * resident, or paged through the minimum number of slots and twice that) and whatever
 * other sessions share its steps (engine_step with 1, 3 or 7 others at other positions),
 * on the CPU reference and on the Vulkan backend in both of its kernel layouts (the
 * CPU-driver one and the GPU one, here on lavapipe). The tiny model in f32 and in its mixed (Q8_0 +
 * MXFP4) form (whose experts all fit the smallest budget, so only the f32 one pages);
 * 140 tokens pass the window (16) many times and the first HCA entry (128).
 * Skipped when there is no Vulkan at all (the reference tests still run). */
#include <stdlib.h>

#include "engine/engine.h"
#include "engine/vulkan/vk_device.h"
#include "tests/harness.h"
#include "tools/mkmodel.h"

#define N_TOK 140

struct inv {
    char path[512];
    int32_t tokens[N_TOK];
    uint32_t n_vocab;
    uint32_t n_experts;     /* routed experts of all layers */
};

/* The routed experts' type of the mixed model (each test runs in its own process) */
static enum gguf_type inv_expert_type = GGUF_TYPE_MXFP4;

static int inv_model(struct inv *v, enum mkmodel_quant quant)
{
    snprintf(v->path, sizeof v->path, "%s/tiny-%d.gguf", test_tmpdir(), (int)quant);
    struct mkmodel_config c;
    mkmodel_defaults(&c);
    c.quant = quant;
    if (inv_expert_type != GGUF_TYPE_MXFP4) { /* ggml's super-blocks: rows of 256 */
        c.expert_type = inv_expert_type;
        c.n_embd = c.n_ff_exp = 256;
    }
    char err[512];
    if (mkmodel_write(&c, v->path, err, sizeof err)) {
        test_fail_at(__FILE__, __LINE__, "%s", err);
        return -1;
    }
    v->n_vocab = c.n_vocab;
    v->n_experts = c.n_layer * c.n_expert;
    uint64_t st = 777;
    for (int i = 0; i < N_TOK; i++) {
        st = st * 6364136223846793005ull + 1442695040888963407ull;
        v->tokens[i] = (int32_t)((st >> 33) % c.n_vocab);
    }
    return 0;
}

/* Opens the engine; 1 when the budget is too small (the caller tries a larger one). */
static int inv_open(const struct inv *v, enum engine_backend b, uint64_t cache_mb, struct engine **e)
{
    struct engine_options o;
    engine_options_default(&o);
    o.model_path = v->path;
    o.backend = b;
    o.expert_cache_mb = cache_mb;
    char err[512];
    if (engine_open(e, &o, err, sizeof err) == 0) return 0;
    if (cache_mb && strstr(err, "at least")) return 1;
    if (strstr(err, "no Vulkan driver") || strstr(err, "no Vulkan device")) test_skip(err);
    test_fail_at(__FILE__, __LINE__, "%s", err);
    return -1;
}

/* Logits [N_TOK][n_vocab] of the tokens fed in chunks of `chunk` (N_TOK: one prefill). */
static float *inv_feed(const struct inv *v, struct engine *e, uint32_t chunk)
{
    char err[512];
    struct session *s;
    float *l = malloc((size_t)N_TOK * v->n_vocab * sizeof(float));
    if (!l || session_create(e, 256, &s, err, sizeof err)) {
        test_fail_at(__FILE__, __LINE__, "%s", err);
        free(l);
        return NULL;
    }
    for (uint32_t pos = 0; pos < N_TOK;) {
        const uint32_t n = N_TOK - pos < chunk ? N_TOK - pos : chunk;
        if (session_eval(s, v->tokens + pos, n, l + (size_t)pos * v->n_vocab, true, err, sizeof err)) {
            test_fail_at(__FILE__, __LINE__, "chunks of %u at %u: %s", chunk, pos, err);
            free(l);
            l = NULL;
            break;
        }
        pos += n;
    }
    session_destroy(s);
    return l;
}

/* Fails with the first differing position and the largest difference there. */
static void inv_same(const struct inv *v, const float *want, const float *got, const char *what)
{
    if (!want || !got) return;
    for (uint32_t t = 0; t < N_TOK; t++) {
        const float *a = want + (size_t)t * v->n_vocab, *b = got + (size_t)t * v->n_vocab;
        if (memcmp(a, b, v->n_vocab * sizeof(float)) == 0) continue;
        double d = 0;
        for (uint32_t i = 0; i < v->n_vocab; i++) d = fmax(d, fabs((double)a[i] - b[i]));
        test_fail_at(__FILE__, __LINE__, "%s: position %u differs from one resident prefill by up to %.3g", what, t, d);
        return;
    }
}

/* Every way of feeding the tokens against one resident prefill. */
static void inv_check(enum engine_backend b, enum mkmodel_quant quant)
{
    struct inv v;
    if (inv_model(&v, quant)) return;
    struct engine *e;
    if (inv_open(&v, b, 0, &e)) return;
    float *want = inv_feed(&v, e, N_TOK);
    const uint32_t chunks[] = { 1, 7, 64 };
    char what[96];
    for (size_t i = 0; i < sizeof chunks / sizeof chunks[0] && want; i++) {
        float *got = inv_feed(&v, e, chunks[i]);
        snprintf(what, sizeof what, "resident, chunks of %u", chunks[i]);
        inv_same(&v, want, got, what);
        free(got);
    }
    engine_close(e);
    /* paged: the smallest whole-MiB budget that opens, then twice that */
    uint64_t min_mb = 1;
    int rc;
    while ((rc = inv_open(&v, b, min_mb, &e)) == 1 && min_mb < 64) min_mb++;
    if (rc == 0) {
        const uint64_t budgets[2] = { min_mb, 2 * min_mb };
        for (int i = 0; i < 2; i++) {
            if (i == 1 && inv_open(&v, b, budgets[1], &e)) break;
            struct expert_counters c;
            CHECK(engine_expert_counters(e, &c) == 0);
            if (c.n_slots >= v.n_experts) { /* every expert fits (the mixed model's are small): nothing pages */
                engine_close(e);
                break;
            }
            const uint32_t feeds[2] = { N_TOK, 7 };
            for (int j = 0; j < 2; j++) {
                float *got = inv_feed(&v, e, feeds[j]);
                snprintf(what, sizeof what, "%llu MiB of expert cache (%u slots), chunks of %u",
                         (unsigned long long)budgets[i], c.n_slots, feeds[j]);
                inv_same(&v, want, got, what);
                free(got);
            }
            engine_close(e);
        }
    } else if (rc == 1) {
        test_fail_at(__FILE__, __LINE__, "no expert budget up to 64 MiB opens");
    }
    free(want);
}

TEST(ref_logits_are_bitwise_the_same_for_any_chunking_and_expert_budget)
{
    inv_check(ENGINE_BACKEND_REF, MKMODEL_F32);
    inv_check(ENGINE_BACKEND_REF, MKMODEL_MIXED);
}

TEST(vk_logits_are_bitwise_the_same_for_any_chunking_and_expert_budget_f32)
{
    inv_check(ENGINE_BACKEND_VULKAN, MKMODEL_F32);
}

TEST(vk_logits_are_bitwise_the_same_for_any_chunking_and_expert_budget_mixed)
{
    inv_check(ENGINE_BACKEND_VULKAN, MKMODEL_MIXED);
}

TEST(vk_logits_are_bitwise_the_same_for_any_chunking_and_expert_budget_gpu_layout)
{
    test_heavy_variant("vk_logits_are_bitwise_the_same_for_any_chunking_and_expert_budget_mixed");
    setenv("FLASHBOX_VK_LAYOUT", "subgroup", 1); /* each test runs in its own process */
    inv_check(ENGINE_BACKEND_VULKAN, MKMODEL_F32);
    inv_check(ENGINE_BACKEND_VULKAN, MKMODEL_MIXED);
}

TEST(vk_logits_are_bitwise_the_same_for_any_chunking_with_the_k_split_tile)
{
    test_heavy_variant("vk_logits_equal_reference_with_the_k_split_tile_on_every_block_matrix");
    /* the tiny model's rows are short: this takes the K-split kernels from one unit on */
    setenv("FLASHBOX_VK_KSPLIT", "all", 1);
    inv_check(ENGINE_BACKEND_VULKAN, MKMODEL_F32);
    inv_check(ENGINE_BACKEND_VULKAN, MKMODEL_MIXED);
}

/* ggml's types as routed experts: Q4_K (the LANES kernel on CPU drivers) and IQ2_XXS (the
 * subgroup kernel, its grid from a buffer), the published files' expert types */
TEST(vk_logits_are_bitwise_the_same_for_any_chunking_and_expert_budget_ggml_experts)
{
    test_heavy_variant("vk_logits_are_bitwise_the_same_for_any_chunking_and_expert_budget_mixed");
    inv_expert_type = GGUF_TYPE_Q4_K;
    inv_check(ENGINE_BACKEND_VULKAN, MKMODEL_MIXED);
    inv_expert_type = GGUF_TYPE_IQ2_XXS;
    inv_check(ENGINE_BACKEND_VULKAN, MKMODEL_MIXED);
}

/* The indexer's chunk and merge width (FLASHBOX_VK_INDEX_CHUNK, _GROUP) change how its
 * selection is computed, never what it selects: 140 tokens (35 CSA entries, one chunk by
 * default) in chunks of 1, 2 and 4 entries merged 2 or 3 lists at a time (up to 6 merge
 * levels), fed at once and in chunks of 7, give the default's logits bit for bit. */
TEST(vk_logits_are_bitwise_the_same_for_any_indexer_chunk_and_merge_width)
{
    struct inv v;
    struct engine *e;
    if (inv_model(&v, MKMODEL_F32) || inv_open(&v, ENGINE_BACKEND_VULKAN, 0, &e)) return;
    float *want = inv_feed(&v, e, N_TOK);
    engine_close(e);
    static const char *const shapes[][2] = { { "1", "2" }, { "2", "3" }, { "4", "2" } };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0] && want; i++) {
        setenv("FLASHBOX_VK_INDEX_CHUNK", shapes[i][0], 1); /* each test runs in its own process */
        setenv("FLASHBOX_VK_INDEX_GROUP", shapes[i][1], 1);
        if (inv_open(&v, ENGINE_BACKEND_VULKAN, 0, &e)) break;
        for (uint32_t feed = N_TOK; feed; feed = feed == N_TOK ? 7 : 0) {
            float *got = inv_feed(&v, e, feed);
            char what[96];
            snprintf(what, sizeof what, "indexer chunks of %s merged %s at a time, fed in chunks of %u", shapes[i][0],
                     shapes[i][1], feed);
            inv_same(&v, want, got, what);
            free(got);
        }
        engine_close(e);
    }
    free(want);
}

/* The tokens fed to the other sessions of a step: another stream, from position pos. */
static int32_t other_token(const struct inv *v, uint32_t j, uint32_t pos)
{
    uint64_t st = (j + 1) * 1000003ull + pos;
    st = st * 6364136223846793005ull + 1442695040888963407ull;
    return (int32_t)((st >> 33) % v->n_vocab);
}

#define MAX_OTHERS 7

/* The logits of the tokens fed as chunks of `chunk` through engine_step, each step shared
 * with n_others sessions at other positions (warmed up with 5 + 11 j tokens, then given
 * 1 + j % 3 tokens a step: decode tokens and short prompt chunks). */
static float *inv_feed_shared(const struct inv *v, struct engine *e, uint32_t chunk, uint32_t n_others)
{
    char err[512];
    struct session *s = NULL, *other[MAX_OTHERS] = { 0 };
    float *l = malloc((size_t)N_TOK * v->n_vocab * sizeof(float));
    float *scratch = malloc((size_t)3 * v->n_vocab * sizeof(float));
    int32_t toks[MAX_OTHERS][3];
    uint32_t opos[MAX_OTHERS];
    struct session_step items[1 + MAX_OTHERS];
    if (!l || !scratch || session_create(e, 256, &s, err, sizeof err)) goto fail;
    for (uint32_t j = 0; j < n_others; j++) {
        if (session_create(e, 1024, &other[j], err, sizeof err)) goto fail;
        opos[j] = 5 + 11 * j;
        int32_t warm[5 + 11 * MAX_OTHERS];
        for (uint32_t t = 0; t < opos[j]; t++) warm[t] = other_token(v, j, t);
        if (session_eval(other[j], warm, opos[j], NULL, false, err, sizeof err)) goto fail;
    }
    for (uint32_t pos = 0; pos < N_TOK;) {
        const uint32_t n = N_TOK - pos < chunk ? N_TOK - pos : chunk;
        /* this session in the middle of the step: others before and after it */
        uint32_t k = 0;
        for (uint32_t j = 0; j < n_others; j++) {
            if (j == n_others / 2)
                items[k++] = (struct session_step){ .s = s, .tokens = v->tokens + pos, .n = n,
                                                    .logits = l + (size_t)pos * v->n_vocab, .all_logits = true };
            const uint32_t m = 1 + j % 3;
            for (uint32_t t = 0; t < m; t++) toks[j][t] = other_token(v, j, opos[j] + t);
            items[k++] = (struct session_step){ .s = other[j], .tokens = toks[j], .n = m, .logits = scratch,
                                                .all_logits = j % 2 == 0 };
            opos[j] += m;
        }
        if (n_others == 0)
            items[k++] = (struct session_step){ .s = s, .tokens = v->tokens + pos, .n = n,
                                                .logits = l + (size_t)pos * v->n_vocab, .all_logits = true };
        if (engine_step(e, items, k, err, sizeof err)) {
            test_fail_at(__FILE__, __LINE__, "step at %u with %u others: %s", pos, n_others, err);
            goto fail_quiet;
        }
        pos += n;
    }
    goto out;
fail:
    test_fail_at(__FILE__, __LINE__, "%s", err);
fail_quiet:
    free(l);
    l = NULL;
out:
    session_destroy(s);
    for (uint32_t j = 0; j < n_others; j++) session_destroy(other[j]);
    free(scratch);
    return l;
}

/* One session alone (one resident prefill) against the same session sharing steps, for
 * the (others, chunk) pairs given, resident and then at budget_mb (0: not paged). */
static void inv_check_shared(enum engine_backend b, enum mkmodel_quant quant, const uint32_t (*cases)[2], size_t n_cases,
                             uint64_t budget_mb)
{
    struct inv v;
    if (inv_model(&v, quant)) return;
    struct engine *e;
    if (inv_open(&v, b, 0, &e)) return;
    float *want = inv_feed(&v, e, N_TOK);
    if (budget_mb) {
        engine_close(e);
        if (inv_open(&v, b, budget_mb, &e)) {
            free(want);
            return;
        }
        struct expert_counters c;
        CHECK(engine_expert_counters(e, &c) == 0 && c.n_slots < v.n_experts); /* it really pages */
    }
    char what[96];
    for (size_t i = 0; i < n_cases && want; i++) {
        float *got = inv_feed_shared(&v, e, cases[i][1], cases[i][0]);
        snprintf(what, sizeof what, "%llu MiB, chunks of %u in steps with %u other sessions", (unsigned long long)budget_mb,
                 cases[i][1], cases[i][0]);
        inv_same(&v, want, got, what);
        free(got);
    }
    engine_close(e);
    free(want);
}

/* (others, chunk): steps of 2 (the 2-token tile), 4 (the 4-token tile), 13 and 14 tokens
 * (a tile of 8, then the rest in the 8-token tile) and 77 (nine tiles of 8 and 5) */
static const uint32_t shared_cases[][2] = { { 0, 7 }, { 1, 1 }, { 2, 1 }, { 3, 7 }, { 7, 64 }, { 7, 1 } };

TEST(ref_session_logits_are_bitwise_the_same_alone_and_in_steps_with_others)
{
    static const uint32_t cases[][2] = { { 3, 7 }, { 7, 64 } };
    inv_check_shared(ENGINE_BACKEND_REF, MKMODEL_F32, cases, 2, 0);
}

TEST(vk_session_logits_are_bitwise_the_same_alone_and_in_steps_with_others)
{
    inv_check_shared(ENGINE_BACKEND_VULKAN, MKMODEL_MIXED, shared_cases, sizeof shared_cases / sizeof shared_cases[0], 0);
}

TEST(vk_session_logits_are_bitwise_the_same_in_steps_with_others_and_experts_paged)
{
    /* 1 MiB: the minimum for the f32 model (5 slots: steps of 2 tokens), then twice it */
    static const uint32_t cases1[][2] = { { 3, 7 }, { 1, 1 } }, cases2[][2] = { { 7, 64 } };
    inv_check_shared(ENGINE_BACKEND_VULKAN, MKMODEL_F32, cases1, 2, 1);
    inv_check_shared(ENGINE_BACKEND_VULKAN, MKMODEL_F32, cases2, 1, 2);
}

TEST(vk_session_logits_are_bitwise_the_same_in_steps_with_others_gpu_layout)
{
    test_heavy_variant("vk_session_logits_are_bitwise_the_same_alone_and_in_steps_with_others");
    setenv("FLASHBOX_VK_LAYOUT", "subgroup", 1); /* each test runs in its own process */
    static const uint32_t cases[][2] = { { 1, 1 }, { 2, 1 }, { 3, 7 }, { 7, 1 } };
    inv_check_shared(ENGINE_BACKEND_VULKAN, MKMODEL_MIXED, cases, 4, 0);
}

TEST(engine_step_refuses_bad_items_before_any_work)
{
    struct inv v;
    if (inv_model(&v, MKMODEL_F32)) return;
    struct engine *e;
    if (inv_open(&v, ENGINE_BACKEND_VULKAN, 0, &e)) return;
    char err[512];
    struct session *a, *b;
    REQUIRE(session_create(e, 16, &a, err, sizeof err) == 0 && session_create(e, 16, &b, err, sizeof err) == 0);
    float *l = malloc((size_t)v.n_vocab * sizeof(float));
    int32_t bad = (int32_t)v.n_vocab;
    struct session_step two[2] = { { .s = a, .tokens = v.tokens, .n = 3, .logits = l },
                                   { .s = a, .tokens = v.tokens, .n = 1, .logits = l } };
    CHECK(engine_step(e, two, 2, err, sizeof err) != 0 && strstr(err, "same session"));
    two[1] = (struct session_step){ .s = b, .tokens = &bad, .n = 1, .logits = l };
    CHECK(engine_step(e, two, 2, err, sizeof err) != 0 && strstr(err, "vocabulary"));
    two[1] = (struct session_step){ .s = b, .tokens = v.tokens, .n = 17, .logits = l };
    CHECK(engine_step(e, two, 2, err, sizeof err) != 0 && strstr(err, "context full"));
    two[1].n = 0;
    CHECK(engine_step(e, two, 2, err, sizeof err) != 0 && strstr(err, "no tokens"));
    CHECK(engine_step(e, two, 0, err, sizeof err) != 0);
    /* nothing moved: both sessions still at 0, and a good step goes through */
    CHECK_EQ_INT(session_pos(a), 0);
    CHECK_EQ_INT(session_pos(b), 0);
    two[1].n = 2;
    CHECK(engine_step(e, two, 2, err, sizeof err) == 0);
    CHECK_EQ_INT(session_pos(a), 3);
    CHECK_EQ_INT(session_pos(b), 2);
    free(l);
    session_destroy(a);
    session_destroy(b);
    engine_close(e);
}

/* Opens the engine with FLASHBOX_VK_SUBMIT_KWORK=kwork, injects a device loss at the
 * fail_at-th forward submit, and prefills the N_TOK tokens at once: 0 when they ran. */
static int inv_submits_fail_at(const struct inv *v, const char *kwork, long fail_at)
{
    setenv("FLASHBOX_VK_SUBMIT_KWORK", kwork, 1);
    struct engine *e;
    if (inv_open(v, ENGINE_BACKEND_VULKAN, 0, &e)) return -1;
    char err[512], spec[32];
    struct session *s;
    int rc = -1;
    if (session_create(e, 256, &s, err, sizeof err) == 0) {
        snprintf(spec, sizeof spec, "submit:%ld", fail_at);
        vk_fault_configure(spec);
        rc = session_eval(s, v->tokens, N_TOK, NULL, false, err, sizeof err);
        vk_fault_configure("");
        session_destroy(s);
    }
    engine_close(e);
    return rc;
}

/* A slow device splits a prefill batch deep in the context into several submits, each
 * inside the fence timeout (FLASHBOX_VK_SUBMIT_KWORK bounds a submit's depth work, in 1024
 * multiply-adds): bitwise the same logits as one submit, for 140 tokens fed at once, in
 * chunks of 7, and in steps shared with 3 other sessions (a step's sessions cut across
 * submits). At 1 (fewer multiply-adds than any token's: 5 layers x 1 key x 2 heads x 128)
 * every token is a submit of its own: the 140th forward submit is reached, the 141st not;
 * without a bound the prefill is one submit. 100 and 1000: one token to a dozen a submit. */
TEST(vk_logits_are_bitwise_the_same_when_a_batch_is_split_into_submits)
{
    struct inv v;
    struct engine *e;
    if (inv_model(&v, MKMODEL_F32)) return;
    setenv("FLASHBOX_VK_SUBMIT_KWORK", "0", 1); /* each test runs in its own process */
    if (inv_open(&v, ENGINE_BACKEND_VULKAN, 0, &e)) return;
    float *want = inv_feed(&v, e, N_TOK);
    engine_close(e);
    static const char *const kworks[] = { "1", "100", "1000" };
    for (size_t i = 0; i < sizeof kworks / sizeof kworks[0] && want; i++) {
        setenv("FLASHBOX_VK_SUBMIT_KWORK", kworks[i], 1);
        if (inv_open(&v, ENGINE_BACKEND_VULKAN, 0, &e)) break;
        char what[96];
        for (uint32_t feed = N_TOK; feed; feed = feed == N_TOK ? 7 : 0) {
            float *got = inv_feed(&v, e, feed);
            snprintf(what, sizeof what, "submits of %s Ki multiply-adds, fed in chunks of %u", kworks[i], feed);
            inv_same(&v, want, got, what);
            free(got);
        }
        float *got = inv_feed_shared(&v, e, 64, 3);
        snprintf(what, sizeof what, "submits of %s Ki multiply-adds, in steps with 3 other sessions", kworks[i]);
        inv_same(&v, want, got, what);
        free(got);
        engine_close(e);
    }
    free(want);
    CHECK_EQ_INT(inv_submits_fail_at(&v, "0", 2), 0);
    CHECK_EQ_INT(inv_submits_fail_at(&v, "1", N_TOK + 1), 0);
    CHECK_EQ_INT(inv_submits_fail_at(&v, "1", N_TOK), -1);
}
