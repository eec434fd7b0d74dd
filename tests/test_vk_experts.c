/* Expert paging on the Vulkan backend: logits bitwise identical to full residency for
 * budgets from the minimum up (token-by-token decode runs the same kernels either way),
 * batched prefill with paged experts equal to the reference, the budget never exceeded,
 * hash-layer prefetch used. Skipped when there is no Vulkan at all. */
#include <math.h>
#include <stdlib.h>

#include "engine/engine.h"
#include "tests/harness.h"
#include "tools/mkmodel.h"

#define N_TOK 80

static int open_engine_spec(struct engine **e, const char *path, enum engine_backend b, uint64_t cache_mb,
                            enum engine_expert_read rp, bool no_prefetch)
{
    struct engine_options o;
    engine_options_default(&o);
    o.model_path = path;
    o.backend = b;
    o.expert_cache_mb = cache_mb;
    o.expert_read = rp;
    o.expert_no_prefetch = no_prefetch;
    char err[512];
    if (engine_open(e, &o, err, sizeof err) == 0) return 0;
    if (strstr(err, "no Vulkan driver") || strstr(err, "no Vulkan device")) test_skip(err);
    test_fail_at(__FILE__, __LINE__, "%s", err);
    return -1;
}

static int open_engine(struct engine **e, const char *path, enum engine_backend b, uint64_t cache_mb,
                       enum engine_expert_read rp)
{
    return open_engine_spec(e, path, b, cache_mb, rp, false);
}

/* logits [N_TOK][n_vocab] of tokens fed one at a time (incremental) or as one batch */
static float *run(struct engine *e, const int32_t *tokens, bool incremental, uint32_t n_vocab)
{
    char err[512];
    struct session *s;
    float *l = malloc((size_t)N_TOK * n_vocab * sizeof(float));
    if (!l || session_create(e, 256, &s, err, sizeof err)) {
        test_fail_at(__FILE__, __LINE__, "%s", err);
        free(l);
        return NULL;
    }
    int rc = 0;
    if (incremental)
        for (uint32_t t = 0; t < N_TOK && !rc; t++) rc = session_eval(s, &tokens[t], 1, l + (size_t)t * n_vocab, false, err, sizeof err);
    else
        rc = session_eval(s, tokens, N_TOK, l, true, err, sizeof err);
    session_destroy(s);
    if (rc) {
        test_fail_at(__FILE__, __LINE__, "%s", err);
        free(l);
        return NULL;
    }
    return l;
}

/* the tiny model in f32: 192 KiB per expert, so a 1 MiB cache holds 5 of its 40 experts */
static void tiny_f32(char *path, size_t len, int32_t *tokens)
{
    snprintf(path, len, "%s/tiny.gguf", test_tmpdir());
    struct mkmodel_config c;
    mkmodel_defaults(&c);
    char err[256];
    if (mkmodel_write(&c, path, err, sizeof err)) test_fail_at(__FILE__, __LINE__, "%s", err);
    uint64_t st = 99;
    for (int i = 0; i < N_TOK; i++) {
        st = st * 6364136223846793005ull + 1442695040888963407ull;
        tokens[i] = (int32_t)((st >> 33) % c.n_vocab);
    }
}

TEST(vk_paged_decode_is_bitwise_identical_for_every_budget)
{
    char path[512];
    int32_t tokens[N_TOK];
    tiny_f32(path, sizeof path, tokens);
    struct engine *full;
    if (open_engine(&full, path, ENGINE_BACKEND_VULKAN, 0, ENGINE_EXPERT_READ_AUTO)) return;
    struct engine_info info;
    engine_get_info(full, &info);
    float *want = run(full, tokens, true, info.n_vocab);
    engine_close(full);
    REQUIRE(want);
    const uint64_t budgets_mb[3] = { 1, 2, 4 }; /* 5, 10 and 21 of 40 experts */
    for (int i = 0; i < 3; i++) {
        struct engine *e;
        if (open_engine(&e, path, ENGINE_BACKEND_VULKAN, budgets_mb[i], ENGINE_EXPERT_READ_PAGECACHE)) break;
        float *got = run(e, tokens, true, info.n_vocab);
        struct expert_counters c;
        CHECK(engine_expert_counters(e, &c) == 0);
        if (got && memcmp(got, want, (size_t)N_TOK * info.n_vocab * sizeof(float)) != 0)
            test_fail_at(__FILE__, __LINE__, "%llu MiB of expert cache changed the logits", (unsigned long long)budgets_mb[i]);
        CHECK((uint64_t)c.n_slots * c.slot_bytes <= budgets_mb[i] << 20);
        CHECK(c.evictions > 0); /* the cache really pages */
        CHECK(c.prefetch_issued > 0 && c.prefetch_used > 0);
        /* the learned layers (3, 4) were guessed from the layer before, in the same submit */
        CHECK(c.prefetch_issued_kind[ENGINE_EXPERT_LEARNED] > 0 && c.prefetch_used_kind[ENGINE_EXPERT_LEARNED] > 0);
        printf("  %llu MiB: %u slots, %llu loads, %.1f KiB read per token\n", (unsigned long long)budgets_mb[i], c.n_slots,
               (unsigned long long)c.loads, (double)c.bytes_read / N_TOK / 1024);
        free(got);
        engine_close(e);
    }
    free(want);
}

TEST(vk_paged_decode_without_expert_guesses_is_identical_and_guesses_nothing)
{
    char path[512];
    int32_t tokens[N_TOK];
    tiny_f32(path, sizeof path, tokens);
    struct engine *on, *off;
    if (open_engine_spec(&on, path, ENGINE_BACKEND_VULKAN, 1, ENGINE_EXPERT_READ_PAGECACHE, false)) return;
    REQUIRE(open_engine_spec(&off, path, ENGINE_BACKEND_VULKAN, 1, ENGINE_EXPERT_READ_PAGECACHE, true) == 0);
    struct engine_info info;
    engine_get_info(on, &info);
    float *a = run(on, tokens, true, info.n_vocab), *b = run(off, tokens, true, info.n_vocab);
    REQUIRE(a && b);
    CHECK(memcmp(a, b, (size_t)N_TOK * info.n_vocab * sizeof(float)) == 0);
    struct expert_counters con, coff;
    CHECK(engine_expert_counters(on, &con) == 0 && engine_expert_counters(off, &coff) == 0);
    CHECK(con.prefetch_issued_kind[ENGINE_EXPERT_LEARNED] > 0);
    CHECK(con.hits[ENGINE_EXPERT_LEARNED] > coff.hits[ENGINE_EXPERT_LEARNED]);
    CHECK_EQ_INT(coff.prefetch_issued + coff.prefetch_used + coff.prefetch_dropped, 0);
    printf("  learned guesses %llu issued, %llu used; learned hits %llu with, %llu without\n",
           (unsigned long long)con.prefetch_issued_kind[1], (unsigned long long)con.prefetch_used_kind[1],
           (unsigned long long)con.hits[1], (unsigned long long)coff.hits[1]);
    free(a);
    free(b);
    engine_close(on);
    engine_close(off);
}

TEST(vk_paged_prefill_and_direct_reads_match_the_reference)
{
    char path[512];
    int32_t tokens[N_TOK];
    tiny_f32(path, sizeof path, tokens);
    struct engine *ref, *vk;
    if (open_engine(&vk, path, ENGINE_BACKEND_VULKAN, 2, ENGINE_EXPERT_READ_DIRECT)) return;
    REQUIRE(open_engine(&ref, path, ENGINE_BACKEND_REF, 0, ENGINE_EXPERT_READ_AUTO) == 0);
    struct engine_info info;
    engine_get_info(ref, &info);
    float *want = run(ref, tokens, false, info.n_vocab), *got = run(vk, tokens, false, info.n_vocab);
    REQUIRE(want && got);
    for (uint32_t t = 0; t < N_TOK; t++) {
        double num = 0, den = 1e-30;
        uint32_t ag = 0, aw = 0;
        for (uint32_t i = 0; i < info.n_vocab; i++) {
            double a = got[(size_t)t * info.n_vocab + i], b = want[(size_t)t * info.n_vocab + i];
            num += (a - b) * (a - b);
            den += b * b;
            if (a > got[(size_t)t * info.n_vocab + ag]) ag = i;
            if (b > want[(size_t)t * info.n_vocab + aw]) aw = i;
        }
        if (sqrt(num / den) > 1e-3 || ag != aw)
            test_fail_at(__FILE__, __LINE__, "position %u: relative error %g, top-1 %u vs %u", t, sqrt(num / den), ag, aw);
    }
    struct expert_counters c;
    CHECK(engine_expert_counters(vk, &c) == 0 && c.read_path == ENGINE_EXPERT_READ_DIRECT && c.bytes_read > 0);
    free(want);
    free(got);
    engine_close(ref);
    engine_close(vk);
}
