/* The whole model on the Vulkan backend against the CPU reference, on the spec's tiny
 * model (every layer kind, window 16 so it wraps, an indexer that drops entries, hash and
 * biased routing) in f32 and mixed (Q8_0 + MXFP4) files: relative error under 1e-3 and the
 * same top-1 token at every position, for batch prefill (several command-buffer chunks),
 * token-by-token decode and mixed chunk sizes. Skipped when there is no Vulkan at all. */
#include <stdlib.h>

#include "engine/engine.h"
#include "tests/gguf_edit.h"
#include "tests/vk_fixture.h"
#include "tests/harness.h"
#include "tools/mkmodel.h"

#define N_TOK 300

struct pair {
    struct engine *ref, *vk;
    uint32_t n_vocab;
    int32_t tokens[N_TOK];
    float *ref_logits; /* [N_TOK][n_vocab] */
};

/* Writes the tiny model, opens it on both backends and computes the reference logits of
 * every position. Returns -1 (test failed or skipped) on any problem. */
static int pair_open_with(struct pair *p, enum mkmodel_quant quant, enum gguf_type expert_type, uint64_t cache_mb, uint32_t n_ref)
{
    memset(p, 0, sizeof *p);
    char path[512], err[512];
    snprintf(path, sizeof path, "%s/tiny.gguf", test_tmpdir());
    struct mkmodel_config c;
    mkmodel_defaults(&c);
    c.quant = quant;
    if (expert_type != GGUF_TYPE_MXFP4) { /* ggml's super-blocks: rows of 256 */
        c.expert_type = expert_type;
        c.n_embd = c.n_ff_exp = 256;
    }
    if (mkmodel_write(&c, path, err, sizeof err)) {
        test_fail_at(__FILE__, __LINE__, "%s", err);
        return -1;
    }
    struct engine_options o;
    engine_options_default(&o);
    o.model_path = path;
    o.backend = ENGINE_BACKEND_VULKAN;
    o.expert_cache_mb = cache_mb;
    if (engine_open(&p->vk, &o, err, sizeof err)) {
        if (strstr(err, "no Vulkan driver") || strstr(err, "no Vulkan device")) test_skip(err);
        test_fail_at(__FILE__, __LINE__, "%s", err);
        return -1;
    }
    o.backend = ENGINE_BACKEND_REF;
    o.expert_cache_mb = 0;
    if (engine_open(&p->ref, &o, err, sizeof err)) {
        test_fail_at(__FILE__, __LINE__, "%s", err);
        return -1;
    }
    struct engine_info info;
    engine_get_info(p->ref, &info);
    p->n_vocab = info.n_vocab;
    uint64_t st = 12345;
    for (int i = 0; i < N_TOK; i++) {
        st = st * 6364136223846793005ull + 1442695040888963407ull;
        p->tokens[i] = (int32_t)((st >> 33) % info.n_vocab);
    }
    p->ref_logits = malloc((size_t)N_TOK * p->n_vocab * sizeof(float));
    struct session *s;
    if (!p->ref_logits || session_create(p->ref, 512, &s, err, sizeof err) ||
        session_eval(s, p->tokens, n_ref, p->ref_logits, true, err, sizeof err)) {
        test_fail_at(__FILE__, __LINE__, "reference: %s", err);
        return -1;
    }
    session_destroy(s);
    return 0;
}

static int pair_open(struct pair *p, enum mkmodel_quant quant)
{
    return pair_open_with(p, quant, GGUF_TYPE_MXFP4, 0, N_TOK);
}

static void pair_close(struct pair *p)
{
    engine_close(p->vk);
    engine_close(p->ref);
    free(p->ref_logits);
}

/* Compares Vulkan logits of positions [pos, pos + n) with the reference. */
static void check_rows(const struct pair *p, const float *vk, uint32_t pos, uint32_t n, const char *what)
{
    for (uint32_t r = 0; r < n; r++) {
        const float *a = vk + (size_t)r * p->n_vocab, *b = p->ref_logits + (size_t)(pos + r) * p->n_vocab;
        double num = 0, den = 1e-30;
        uint32_t ta = 0, tb = 0;
        for (uint32_t i = 0; i < p->n_vocab; i++) {
            num = fmax(num, fabs((double)a[i] - b[i]));
            den = fmax(den, fabs((double)b[i]));
            if (a[i] > a[ta]) ta = i;
            if (b[i] > b[tb]) tb = i;
        }
        if (!(num / den < 1e-3) || ta != tb) {
            test_fail_at(__FILE__, __LINE__, "%s: position %u: relative error %.3g, top-1 %u (vulkan) vs %u (reference)", what,
                         pos + r, num / den, ta, tb);
            return;
        }
    }
}

/* Feeds the tokens in chunks of the given sizes (cycled) and compares every position. */
static void run_chunks(struct pair *p, const uint32_t *sizes, size_t n_sizes, uint32_t n_total, const char *what)
{
    char err[512];
    struct session *s;
    float *out = malloc((size_t)N_TOK * p->n_vocab * sizeof(float));
    if (!out || session_create(p->vk, 512, &s, err, sizeof err)) {
        test_fail_at(__FILE__, __LINE__, "%s", err);
        free(out);
        return;
    }
    for (uint32_t pos = 0, i = 0; pos < n_total; i++) {
        uint32_t n = sizes[i % n_sizes];
        if (n > n_total - pos) n = n_total - pos;
        if (session_eval(s, p->tokens + pos, n, out, true, err, sizeof err)) {
            test_fail_at(__FILE__, __LINE__, "%s at %u: %s", what, pos, err);
            break;
        }
        check_rows(p, out, pos, n, what);
        if (test_failed()) break;
        pos += n;
    }
    session_destroy(s);
    free(out);
}

TEST(vk_logits_equal_reference_mixed_batch_prefill_300)
{
    struct pair p;
    if (pair_open(&p, MKMODEL_MIXED) == 0) {
        const uint32_t sizes[] = { N_TOK };
        run_chunks(&p, sizes, 1, N_TOK, "mixed prefill");
    }
    pair_close(&p);
}

/* Routed experts in each of ggml's K-quants and i-quants that the shaders read (the tiny
 * model at n_embd = n_ff_exp = 256): prefill in uneven chunks, then decode. */
TEST(vk_logits_equal_reference_with_ggml_quant_experts)
{
    test_heavy_variant("vk_matvec_matches_reference_for_ggml_k_and_i_quants");
    static const enum gguf_type types[] = {
        GGUF_TYPE_IQ2_XXS, GGUF_TYPE_Q2_K, GGUF_TYPE_Q4_K, GGUF_TYPE_Q3_K, GGUF_TYPE_Q5_K, GGUF_TYPE_Q6_K,
        GGUF_TYPE_IQ2_XS, GGUF_TYPE_IQ2_S, GGUF_TYPE_IQ3_XXS, GGUF_TYPE_IQ4_NL, GGUF_TYPE_IQ4_XS, GGUF_TYPE_IQ1_S, GGUF_TYPE_IQ1_M,
    };
    const uint32_t sizes[] = { 13, 1, 1 };
    for (size_t i = 0; i < sizeof types / sizeof types[0] && !test_failed(); i++) {
        struct pair p;
        if (pair_open_with(&p, MKMODEL_MIXED, types[i], 0, 20) == 0) run_chunks(&p, sizes, 3, 20, gguf_type_name(types[i]));
        pair_close(&p);
    }
}

/* The published deepseek4 layouts' expert types (and IQ1's, whose grid is a buffer) paged
 * through a one-megabyte expert cache (about half the tiny model's 40 experts, so it
 * evicts): a 12-token prefill, then token-by-token decode, gives the same logits, bit for
 * bit, as all experts resident. */
TEST(vk_paged_ggml_quant_experts_are_bitwise_identical_to_resident)
{
    test_heavy_variant("vk_paged_decode_is_bitwise_identical_for_every_budget");
    static const enum gguf_type types[] = { GGUF_TYPE_IQ2_XXS, GGUF_TYPE_Q2_K, GGUF_TYPE_Q4_K, GGUF_TYPE_IQ1_S, GGUF_TYPE_IQ1_M };
    const uint32_t n = 24, n_prefill = 12;
    for (size_t i = 0; i < sizeof types / sizeof types[0] && !test_failed(); i++) {
        float *out[2] = { NULL, NULL };
        for (int paged = 0; paged < 2; paged++) {
            struct pair p;
            char err[512];
            struct session *s;
            if (pair_open_with(&p, MKMODEL_MIXED, types[i], paged ? 1 : 0, 1) == 0) {
                out[paged] = malloc((size_t)n * p.n_vocab * sizeof(float));
                if (!out[paged] || session_create(p.vk, 512, &s, err, sizeof err)) test_fail_at(__FILE__, __LINE__, "%s", err);
                else {
                    if (session_eval(s, p.tokens, n_prefill, out[paged], true, err, sizeof err))
                        test_fail_at(__FILE__, __LINE__, "prefill: %s", err);
                    for (uint32_t pos = n_prefill; pos < n; pos++)
                        if (session_eval(s, p.tokens + pos, 1, out[paged] + (size_t)pos * p.n_vocab, false, err, sizeof err))
                            test_fail_at(__FILE__, __LINE__, "%s", err);
                    session_destroy(s);
                    struct expert_counters ec;
                    if (paged) CHECK(engine_expert_counters(p.vk, &ec) == 0 && ec.evictions > 0); /* it really pages */
                }
                for (uint32_t pos = 0; paged && out[0] && out[1] && pos < n; pos++)
                    if (memcmp(out[0] + (size_t)pos * p.n_vocab, out[1] + (size_t)pos * p.n_vocab, (size_t)p.n_vocab * sizeof(float))) {
                        test_fail_at(__FILE__, __LINE__, "%s: paged logits differ from resident ones at position %u (%s)",
                                     gguf_type_name(types[i]), pos, pos < n_prefill ? "prefill" : "decode");
                        break;
                    }
            }
            pair_close(&p);
        }
        free(out[0]);
        free(out[1]);
    }
}

TEST(vk_logits_equal_reference_decoding_token_by_token_past_window_and_first_hca_entry)
{
    struct pair p;
    if (pair_open(&p, MKMODEL_MIXED) == 0) {
        const uint32_t sizes[] = { 1 };
        run_chunks(&p, sizes, 1, 130, "mixed decode");
    }
    pair_close(&p);
}

TEST(vk_logits_equal_reference_with_mixed_chunk_sizes)
{
    struct pair p;
    if (pair_open(&p, MKMODEL_F32) == 0) {
        /* chunks that start and end inside CSA blocks, window wraps and batch boundaries */
        const uint32_t sizes[] = { 3, 1, 17, 2, 64, 1, 5, 70, 1, 33 };
        run_chunks(&p, sizes, sizeof sizes / sizeof sizes[0], N_TOK, "f32 chunks");
    }
    pair_close(&p);
}

TEST(vk_session_reset_gives_the_same_logits_again)
{
    struct pair p;
    if (pair_open(&p, MKMODEL_F32) == 0) {
        char err[512];
        struct session *s;
        float *out = malloc((size_t)40 * p.n_vocab * sizeof(float));
        REQUIRE(session_create(p.vk, 128, &s, err, sizeof err) == 0);
        CHECK(session_eval(s, p.tokens + 100, 23, NULL, false, err, sizeof err) == 0); /* other tokens first */
        session_reset(s);
        CHECK(session_eval(s, p.tokens, 40, out, true, err, sizeof err) == 0);
        check_rows(&p, out, 0, 40, "after reset");
        /* a bad token is refused before any work; the session goes on unchanged */
        int32_t bad = (int32_t)p.n_vocab;
        CHECK(session_eval(s, &bad, 1, out, false, err, sizeof err) != 0);
        CHECK(strstr(err, "vocabulary") != NULL);
        CHECK(session_eval(s, p.tokens + 40, 1, out, false, err, sizeof err) == 0);
        check_rows(&p, out, 40, 1, "after refused token");
        session_destroy(s);
        free(out);
    }
    pair_close(&p);
}

/* The mixed tiny model in chunks with one engine setting from the environment. */
static void run_with_env(const char *name, const char *value, const uint32_t *sizes, uint32_t n_sizes,
                         uint32_t n_total, const char *what)
{
    setenv(name, value, 1); /* each test runs in its own process */
    struct pair p;
    if (pair_open(&p, MKMODEL_MIXED) == 0) run_chunks(&p, sizes, n_sizes, n_total, what);
    pair_close(&p);
}

TEST(vk_logits_equal_reference_with_every_weight_in_its_own_dispatch)
{
    /* the unfused fallback (projections of different types): same results */
    const uint32_t sizes[] = { 21, 1, 1, 19 };
    run_with_env("FLASHBOX_VK_NO_FUSE", "1", sizes, sizeof sizes / sizeof sizes[0], 42, "unfused");
}

TEST(vk_logits_equal_reference_with_attention_chunks_of_three_keys)
{
    /* the storage-buffer attention (GPU layout) folding chunks of 3 keys: every window and
     * compressed set of the tiny model spans several chunks */
    setenv("FLASHBOX_VK_LAYOUT", "subgroup", 1);
    const uint32_t sizes[] = { 19, 1, 9, 1 };
    run_with_env("FLASHBOX_VK_ATTN_CHUNK", "3", sizes, sizeof sizes / sizeof sizes[0], 40, "chunks of 3");
}

TEST(vk_logits_equal_reference_with_indexer_chunks_of_two_merged_in_pairs)
{
    /* up to 10 CSA entries in chunks of 2, merged two lists at a time: up to 4 merge
     * levels, and the top-4 crosses chunk boundaries */
    setenv("FLASHBOX_VK_INDEX_GROUP", "2", 1);
    const uint32_t sizes[] = { 19, 1, 9, 1 };
    run_with_env("FLASHBOX_VK_INDEX_CHUNK", "2", sizes, sizeof sizes / sizeof sizes[0], 40, "indexer chunks of 2");
}

TEST(vk_logits_equal_reference_with_the_gpu_kernel_layout)
{
    /* the SUBGROUP matrix kernels, storage-buffer attention and hc that real GPUs run,
     * here on the CPU driver: prefill tiles, the split hc of a batch, and decode */
    const uint32_t sizes[] = { 19, 1, 9, 1 };
    run_with_env("FLASHBOX_VK_LAYOUT", "subgroup", sizes, sizeof sizes / sizeof sizes[0], 40, "gpu layout");
}

/* lavapipe makes subgroups of its vector width over 32 bits (LP_NATIVE_VECTOR_WIDTH, read
 * once per process, at most 512): the GPU layout with 16 and with 4 lanes, so code that
 * assumes lavapipe's usual 8 fails here rather than on a GPU of 32 or 64. Fails if
 * lavapipe ignored the width; a real GPU keeps its own size and runs the plain check. */
static void run_gpu_layout_in_subgroups_of(uint32_t lanes, const char *width)
{
    setenv("LP_NATIVE_VECTOR_WIDTH", width, 1); /* each test runs in its own process */
    struct vk_device *d = NULL;
    char err[512];
    if (vk_device_create(&d, -1, NULL, err, sizeof err)) {
        if (strstr(err, "no Vulkan driver") || strstr(err, "no Vulkan device")) test_skip(err);
        test_fail_at(__FILE__, __LINE__, "%s", err);
        return;
    }
    const bool as_asked = vk_test_subgroups_as_asked(d, lanes);
    vk_device_destroy(d);
    if (!as_asked) return;
    const uint32_t sizes[] = { 19, 1, 9, 1 };
    run_with_env("FLASHBOX_VK_LAYOUT", "subgroup", sizes, sizeof sizes / sizeof sizes[0], 40, "gpu layout");
}

TEST(vk_logits_equal_reference_with_the_gpu_kernel_layout_in_subgroups_of_16)
{
    run_gpu_layout_in_subgroups_of(16, "512");
}

TEST(vk_logits_equal_reference_with_the_gpu_kernel_layout_in_subgroups_of_4)
{
    run_gpu_layout_in_subgroups_of(4, "128");
}

TEST(vk_logits_equal_reference_with_the_k_split_tile_on_every_block_matrix)
{
    /* the tiny model's rows are too short for the K-split token tile by default; this
     * takes it from one unit of K on: dense Q8_0 tiles, grouped MXFP4 experts (gate+up
     * through the wrapped slots, down with per-slot x), and decode in between */
    const uint32_t sizes[] = { 37, 1, 16, 1 };
    run_with_env("FLASHBOX_VK_KSPLIT", "all", sizes, sizeof sizes / sizeof sizes[0], 55, "k-split tile");
}

/* Logits of the first n tokens (p's fixed sequence) of the model at path, one prefill. */
static float *logits_of_file(const char *path, enum engine_backend backend, const int32_t *tokens, uint32_t n,
                             uint32_t *n_vocab)
{
    char err[512];
    struct engine_options o;
    engine_options_default(&o);
    o.model_path = path;
    o.backend = backend;
    struct engine *e;
    if (engine_open(&e, &o, err, sizeof err)) {
        if (strstr(err, "no Vulkan driver") || strstr(err, "no Vulkan device")) test_skip(err);
        test_fail_at(__FILE__, __LINE__, "%s: %s", path, err);
        return NULL;
    }
    struct engine_info info;
    engine_get_info(e, &info);
    *n_vocab = info.n_vocab;
    float *out = malloc((size_t)n * info.n_vocab * sizeof(float));
    struct session *s = NULL;
    if (!out || session_create(e, 512, &s, err, sizeof err) || session_eval(s, tokens, n, out, true, err, sizeof err)) {
        test_fail_at(__FILE__, __LINE__, "%s: %s", path, err);
        free(out);
        out = NULL;
    }
    if (s) session_destroy(s);
    engine_close(e);
    return out;
}

/* A file that stores the hyper-connection weights and compressor position biases in F16
 * and the other vectors in BF16 (as published ds4 files do, and more) gives, past the
 * window and the first HCA entry, the logits of the F32 file holding the same rounded
 * values, bit for bit: the binding widens them exactly, once. */
static void narrow_vectors_give_the_f32_logits(enum engine_backend backend)
{
    char src[512], wide[512], narrow[512], err[512];
    snprintf(src, sizeof src, "%s/tiny.gguf", test_tmpdir());
    snprintf(wide, sizeof wide, "%s/rounded.gguf", test_tmpdir());
    snprintf(narrow, sizeof narrow, "%s/narrow.gguf", test_tmpdir());
    struct mkmodel_config c;
    mkmodel_defaults(&c);
    c.quant = MKMODEL_MIXED;
    REQUIRE(mkmodel_write(&c, src, err, sizeof err) == 0);
    int n_wide = gguf_edit_narrow_vectors(src, wide, false), n_narrow = gguf_edit_narrow_vectors(src, narrow, true);
    CHECK(n_wide > 20 && n_narrow == n_wide);
    int32_t tokens[140];
    for (int i = 0; i < 140; i++) tokens[i] = (int32_t)((i * 7919u + 13) % 500);
    uint32_t nv_a = 0, nv_b = 0;
    float *a = logits_of_file(wide, backend, tokens, 140, &nv_a);
    float *b = a ? logits_of_file(narrow, backend, tokens, 140, &nv_b) : NULL;
    if (a && b) {
        REQUIRE(nv_a == nv_b);
        size_t n = (size_t)140 * nv_a;
        for (size_t i = 0; i < n; i++)
            if (memcmp(&a[i], &b[i], sizeof(float))) {
                test_fail_at(__FILE__, __LINE__, "position %zu logit %zu: %.9g (F32 file) vs %.9g (F16/BF16 file)", i / nv_a,
                             i % nv_a, a[i], b[i]);
                break;
            }
    }
    free(a);
    free(b);
}

TEST(ref_logits_with_f16_and_bf16_vectors_equal_the_f32_file_bitwise)
{
    narrow_vectors_give_the_f32_logits(ENGINE_BACKEND_REF);
}

TEST(vk_logits_with_f16_and_bf16_vectors_equal_the_f32_file_bitwise)
{
    narrow_vectors_give_the_f32_logits(ENGINE_BACKEND_VULKAN);
}
