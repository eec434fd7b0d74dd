/* Long contexts, whole model: the Vulkan backend against the CPU reference past the point
 * where the old attention kernel stopped (2048 keys: an HCA layer of ratio 128 near 262,144
 * positions; a CSA layer whose window and selection exceed it), and sessions of 1,048,576
 * positions opening on both backends. The models are small so that the reference reaches
 * those positions in seconds. */
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>

#include "engine/engine.h"
#include "tests/harness.h"
#include "tools/mkmodel.h"

/* A model of tiny widths: layers with the given ratios, window w, one hash layer. */
static int write_small(const char *name, const uint32_t *ratios, uint32_t n_layer, uint32_t window, uint32_t topk,
                       char *path, size_t path_len)
{
    char err[512];
    snprintf(path, path_len, "%s/%s.gguf", test_tmpdir(), name);
    struct mkmodel_config c;
    mkmodel_defaults(&c);
    c.n_layer = n_layer;
    for (uint32_t i = 0; i < n_layer; i++) c.ratio[i] = ratios[i];
    c.n_embd = 32; c.n_head = 1; c.head_dim = 32; c.rope_dim = 16; c.q_rank = 32; c.o_groups = 1; c.o_rank = 32;
    c.window = window; c.ix_head = 2; c.ix_dim = 16; c.ix_topk = topk; c.n_expert = 4; c.n_expert_used = 2;
    c.n_ff_exp = 32; c.n_vocab = 320; c.n_hash_layer = 1; c.n_ctx = 1u << 20;
    if (mkmodel_write(&c, path, err, sizeof err)) {
        test_fail_at(__FILE__, __LINE__, "%s", err);
        return -1;
    }
    return 0;
}

/* The spec's tiny model (every layer kind, window 16, head rows of 128 floats) trained on
 * n_ctx positions, into path. */
static int write_tiny(uint32_t n_ctx, char *path, size_t path_len)
{
    char err[512];
    snprintf(path, path_len, "%s/tiny.gguf", test_tmpdir());
    struct mkmodel_config c;
    mkmodel_defaults(&c);
    c.n_ctx = n_ctx;
    if (mkmodel_write(&c, path, err, sizeof err)) {
        test_fail_at(__FILE__, __LINE__, "%s", err);
        return -1;
    }
    return 0;
}

static int open_backend_kv(const char *path, enum engine_backend b, enum engine_kv_type kv, struct engine **out)
{
    char err[512];
    struct engine_options o;
    engine_options_default(&o);
    o.model_path = path;
    o.backend = b;
    o.kv = kv;
    if (engine_open(out, &o, err, sizeof err) == 0) return 0;
    if (strstr(err, "no Vulkan driver") || strstr(err, "no Vulkan device")) test_skip(err);
    test_fail_at(__FILE__, __LINE__, "%s", err);
    return -1;
}

static int open_backend(const char *path, enum engine_backend b, struct engine **out)
{
    return open_backend_kv(path, b, ENGINE_KV_F32, out);
}

/* How compare_from reaches position n_pre: both backends prefill; the reference prefills
 * and its saved state loads into the Vulkan session; or both load one random state. */
enum start { PREFILL, VIA_STATE, RANDOM_STATE };

/* A state at position pos of random floats in [-1, 1) after the header (f32 storage), for
 * the reference session s: its zero state's header with a random body. */
static void *random_state(struct session *s, uint32_t pos, uint64_t *bytes, char *err, size_t err_len)
{
    *bytes = session_state_bytes(s, pos);
    uint32_t *w = malloc(*bytes);
    if (!w || session_seek_zero(s, pos, err, err_len) || session_state_save(s, w, *bytes, err, err_len)) {
        free(w);
        return NULL;
    }
    uint64_t st = 4242;
    for (uint64_t i = 10; i < *bytes / 4; i++) { /* after the header's 10 words (session_state.h) */
        st = st * 6364136223846793005ull + 1442695040888963407ull;
        const float v = (float)((double)(st >> 40) / (double)(1ull << 23)) - 1.0f;
        memcpy(&w[i], &v, 4);
    }
    return w;
}

/* Both backends reach position n_pre as `how` says, then evaluate n_cmp more with every
 * position's logits: relative error under 1e-3 and the same top-1 at each. */
static void compare_from(const char *path, uint32_t n_ctx, uint32_t n_pre, uint32_t n_cmp, enum start how,
                         enum engine_kv_type kv)
{
    void *state = NULL;
    struct engine *e[2] = { NULL, NULL };
    struct session *s[2] = { NULL, NULL };
    int32_t *tok = malloc((size_t)(n_pre + n_cmp) * sizeof *tok);
    float *lg[2] = { NULL, NULL };
    char err[512];
    if (!tok || open_backend_kv(path, ENGINE_BACKEND_REF, kv, &e[0]) || open_backend_kv(path, ENGINE_BACKEND_VULKAN, kv, &e[1]))
        goto done;
    struct engine_info info;
    engine_get_info(e[0], &info);
    uint64_t st = 777;
    for (uint32_t i = 0; i < n_pre + n_cmp; i++) {
        st = st * 6364136223846793005ull + 1442695040888963407ull;
        tok[i] = (int32_t)((st >> 33) % info.n_vocab);
    }
    uint64_t state_bytes = 0;
    for (int b = 0; b < 2; b++) {
        lg[b] = malloc((size_t)n_cmp * info.n_vocab * sizeof(float));
        int rc = !lg[b] || session_create(e[b], n_ctx, &s[b], err, sizeof err);
        if (!rc && how == RANDOM_STATE && b == 0) rc = !(state = random_state(s[0], n_pre, &state_bytes, err, sizeof err));
        if (!rc && (how == RANDOM_STATE || (how == VIA_STATE && b == 1))) {
            rc = session_state_load(s[b], state, state_bytes, err, sizeof err);
        } else if (!rc) {
            rc = session_eval(s[b], tok, n_pre, NULL, false, err, sizeof err);
            if (!rc && how == VIA_STATE) {
                state_bytes = session_state_bytes(s[0], n_pre);
                rc = !(state = malloc(state_bytes)) || session_state_save(s[0], state, state_bytes, err, sizeof err);
            }
        }
        if (rc || session_eval(s[b], tok + n_pre, n_cmp, lg[b], true, err, sizeof err)) {
            test_fail_at(__FILE__, __LINE__, "%s: %s", b ? "vulkan" : "ref", err);
            goto done;
        }
    }
    for (uint32_t t = 0; t < n_cmp; t++) {
        const float *r = lg[0] + (size_t)t * info.n_vocab, *v = lg[1] + (size_t)t * info.n_vocab;
        double num = 0, den = 1e-30;
        uint32_t ar = 0, av = 0;
        for (uint32_t i = 0; i < info.n_vocab; i++) {
            num += ((double)v[i] - r[i]) * ((double)v[i] - r[i]);
            den += (double)r[i] * r[i];
            if (r[i] > r[ar]) ar = i;
            if (v[i] > v[av]) av = i;
        }
        double rel = sqrt(num / den);
        if (!(rel < 1e-3) || ar != av) {
            test_fail_at(__FILE__, __LINE__, "kv %s position %u: relative error %.3g, top-1 %u (ref) vs %u (vulkan)",
                         engine_kv_name(kv), n_pre + t, rel, ar, av);
            break;
        }
    }
done:
    for (int b = 0; b < 2; b++) {
        session_destroy(s[b]);
        engine_close(e[b]);
        free(lg[b]);
    }
    free(tok);
    free(state);
}

static void compare_after_prefill(const char *path, uint32_t n_ctx, uint32_t n_pre, uint32_t n_cmp, bool via_state)
{
    compare_from(path, n_ctx, n_pre, n_cmp, via_state ? VIA_STATE : PREFILL, ENGINE_KV_F32);
}

/* Entries and keys stored in f16 and FP8 on both backends: Vulkan equals the reference on
 * the spec's tiny model (every layer kind), prefilling itself, and continuing from the
 * reference's saved state (the stored words cross backends as they are). */
TEST(vk_equals_reference_with_f16_and_fp8_kv_storage)
{
    char path[512];
    if (write_tiny(4096, path, sizeof path)) return;
    for (int kv = ENGINE_KV_F16; kv <= ENGINE_KV_FP8; kv++) {
        compare_from(path, 512, 150, 40, PREFILL, (enum engine_kv_type)kv);
        compare_from(path, 512, 150, 40, VIA_STATE, (enum engine_kv_type)kv);
    }
}

TEST(vk_equals_reference_past_262144_positions_on_swa_and_hca_layers)
{
    test_heavy_variant("vk_logits_equal_reference_decoding_token_by_token_past_window_and_first_hca_entry");
    /* HCA entries 2048..2050 appear at positions 262,143, 262,271 and 262,399: with the
     * window of 8 the last positions attend 2,058 keys */
    static const uint32_t ratios[] = { 0, 128 };
    char path[512];
    if (write_small("hca", ratios, 2, 8, 4, path, sizeof path)) return;
    /* the reference's state at 262,144 carried over (the Vulkan prefill of as many tokens
     * on the CPU driver would double the test's time) */
    compare_after_prefill(path, 262400, 262144, 256, true);
}

TEST(vk_equals_reference_past_2048_keys_on_a_csa_model)
{
    /* window 2,600 plus the indexer's 512 of up to 1,099 entries: 3,112 keys a query */
    static const uint32_t ratios[] = { 4, 128 };
    char path[512];
    if (write_small("csa", ratios, 2, 2600, 512, path, sizeof path)) return;
    compare_after_prefill(path, 4400, 4100, 300, false);
}

/* The spec's tiny model (8 indexer heads of 128) well past the 6,800 positions where
 * lavapipe's loop limit used to stop the indexer (its loops grew with the entries; now
 * chunks and merges bound them): the reference's state at 10,240 positions (2,560 CSA
 * entries: 40 chunks, two merge levels) carried over, then 48 more on both. */
TEST(vk_equals_reference_on_a_csa_model_past_10000_positions_on_cpu_drivers_too)
{
    test_heavy_variant("vk_equals_reference_past_2048_keys_on_a_csa_model");
    char path[512];
    if (write_tiny(10400, path, sizeof path)) return;
    compare_after_prefill(path, 10400, 10240, 48, true);
}

/* Far past that, cheaply: both backends load one random state at 200,000 positions (50,000
 * CSA entries: 782 chunks, three merge levels) and evaluate 16 more. */
TEST(vk_equals_reference_from_a_random_state_at_200000_positions_on_a_csa_model)
{
    char path[512];
    if (write_tiny(200064, path, sizeof path)) return;
    compare_from(path, 200064, 200000, 16, RANDOM_STATE, ENGINE_KV_F32);
}

TEST(sessions_of_1048576_positions_open_on_both_backends)
{
    /* the spec's tiny model (every layer kind, head rows of 128 floats): its compressed
     * entries and indexer keys at 1M positions are 128 MiB a CSA layer */
    char path[512], err[512];
    if (write_tiny(1u << 20, path, sizeof path)) return;
    const enum engine_backend bs[2] = { ENGINE_BACKEND_REF, ENGINE_BACKEND_VULKAN };
    for (int b = 0; b < 2; b++) {
        struct engine *e = NULL;
        struct session *s = NULL;
        if (open_backend(path, bs[b], &e)) return;
        const int32_t toks[3] = { 5, 9, 7 };
        float *lg = malloc(512 * sizeof(float));
        if (session_create(e, 1u << 20, &s, err, sizeof err) || session_eval(s, toks, 3, lg, false, err, sizeof err))
            test_fail_at(__FILE__, __LINE__, "backend %d: %s", (int)bs[b], err);
        else
            CHECK_EQ_INT(session_n_ctx(s), 1u << 20);
        free(lg);
        session_destroy(s);
        engine_close(e);
    }
}

/* Prefix reuse on one backend: the state saved after `split` tokens and loaded into a new
 * session gives bitwise the logits of continuing the first session, at splits inside the
 * first window, on compressor boundaries (CSA every 4, HCA at 128) and past the first HCA
 * entry, on the spec's tiny model (window 16, ratios 0,0,4,128,4). */
static void check_reuse_kv(enum engine_backend backend, enum engine_kv_type kv, size_t n_splits)
{
    char path[512], err[512];
    if (write_tiny(4096, path, sizeof path)) return;
    struct engine *e = NULL;
    if (open_backend_kv(path, backend, kv, &e)) return;
    enum { N = 200 };
    int32_t tok[N];
    for (int i = 0; i < N; i++) tok[i] = (int32_t)((i * 131 + 7) % 509);
    static const uint32_t splits[] = { 5, 16, 64, 128, 131, 190 };
    float *want = malloc((size_t)N * 512 * 4), *got = malloc((size_t)N * 512 * 4);
    for (size_t i = 0; i < n_splits && i < sizeof splits / sizeof splits[0]; i++) {
        const uint32_t sp = splits[i];
        struct session *a = NULL, *b = NULL;
        void *st = NULL;
        uint64_t n = 0;
        int rc = session_create(e, 256, &a, err, sizeof err) || session_create(e, 256, &b, err, sizeof err) ||
                 session_eval(a, tok, sp, NULL, false, err, sizeof err);
        if (!rc) {
            n = session_state_bytes(a, sp);
            rc = !(st = malloc(n)) || session_state_save(a, st, n, err, sizeof err) ||
                 session_eval(b, tok, 3, NULL, false, err, sizeof err) || /* whatever b held is replaced */
                 session_state_load(b, st, n, err, sizeof err) ||
                 session_eval(a, tok + sp, N - sp, want, true, err, sizeof err) ||
                 session_eval(b, tok + sp, N - sp, got, true, err, sizeof err);
        }
        if (rc) test_fail_at(__FILE__, __LINE__, "split %u: %s", sp, err);
        else if (memcmp(want, got, (size_t)(N - sp) * 512 * 4) != 0)
            test_fail_at(__FILE__, __LINE__, "backend %d kv %s split %u: logits after the loaded state differ", (int)backend,
                         engine_kv_name(kv), sp);
        else
            CHECK_EQ_INT(session_pos(b), N);
        free(st);
        session_destroy(a);
        session_destroy(b);
    }
    free(want);
    free(got);
    engine_close(e);
}

static void check_reuse(enum engine_backend backend)
{
    check_reuse_kv(backend, ENGINE_KV_F32, 99);
}

TEST(reused_state_gives_bitwise_the_same_logits_ref)
{
    check_reuse(ENGINE_BACKEND_REF);
}

TEST(reused_state_gives_bitwise_the_same_logits_vulkan)
{
    check_reuse(ENGINE_BACKEND_VULKAN);
}

/* f16 and FP8 entries and keys round-trip through a saved state: bitwise the same logits
 * (inside the window, past the first HCA entry, at the end of a CSA block). */
TEST(reused_f16_and_fp8_state_gives_bitwise_the_same_logits_on_both_backends)
{
    for (int kv = ENGINE_KV_F16; kv <= ENGINE_KV_FP8; kv++) {
        check_reuse_kv(ENGINE_BACKEND_REF, (enum engine_kv_type)kv, 6);
        check_reuse_kv(ENGINE_BACKEND_VULKAN, (enum engine_kv_type)kv, 6);
    }
}

/* A state saved with one KV storage type is refused by a session of another, naming both,
 * before anything changes; so is a state of another layout version. */
TEST(session_state_of_another_kv_type_or_version_is_refused)
{
    char path[512], err[512];
    if (write_tiny(4096, path, sizeof path)) return;
    struct engine *e[3] = { NULL, NULL, NULL };
    struct session *s[3] = { NULL, NULL, NULL };
    uint8_t *st = NULL;
    for (int kv = 0; kv < 3; kv++)
        if (open_backend_kv(path, ENGINE_BACKEND_REF, (enum engine_kv_type)kv, &e[kv]) ||
            session_create(e[kv], 256, &s[kv], err, sizeof err))
            goto done;
    const int32_t tok[12] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12 };
    REQUIRE(session_eval(s[2], tok, 12, NULL, false, err, sizeof err) == 0 && session_eval(s[0], tok, 3, NULL, false, err, sizeof err) == 0);
    const uint64_t n = session_state_bytes(s[2], 12);
    CHECK(n < session_state_bytes(s[0], 12)); /* fp8 entries and keys are smaller */
    st = malloc(n);
    REQUIRE(st && session_state_save(s[2], st, n, err, sizeof err) == 0);
    CHECK(session_state_load(s[0], st, n, err, sizeof err) < 0);
    CHECK(strstr(err, "KV stored as fp8, this session stores f32") != NULL);
    CHECK_EQ_INT(session_pos(s[0]), 3);
    CHECK(session_state_load(s[1], st, n, err, sizeof err) < 0);
    CHECK(strstr(err, "KV stored as fp8, this session stores f16") != NULL);
    st[36] = 7; /* the type word (header word 9): no such type */
    CHECK(session_state_load(s[2], st, n, err, sizeof err) < 0);
    CHECK(strstr(err, "an unknown type") != NULL);
    st[36] = 2;
    st[4] = 1; /* version 1: before the type word */
    CHECK(session_state_load(s[2], st, n, err, sizeof err) < 0);
    CHECK(strstr(err, "layout version 1") != NULL);
    st[4] = 2;
    CHECK(session_state_load(s[2], st, n, err, sizeof err) == 0);
    CHECK_EQ_INT(session_pos(s[2]), 12);
done:
    free(st);
    for (int kv = 0; kv < 3; kv++) {
        session_destroy(s[kv]);
        engine_close(e[kv]);
    }
}

TEST(session_state_of_another_shape_or_length_is_refused)
{
    static const uint32_t ratios[] = { 0, 128 }, ratios2[] = { 4, 128 };
    char p1[512], p2[512], err[512];
    if (write_small("a", ratios, 2, 8, 4, p1, sizeof p1) || write_small("b", ratios2, 2, 8, 4, p2, sizeof p2)) return;
    struct engine *e1 = NULL, *e2 = NULL;
    struct session *s1 = NULL, *s2 = NULL;
    if (open_backend(p1, ENGINE_BACKEND_REF, &e1) || open_backend(p2, ENGINE_BACKEND_REF, &e2)) goto done;
    const int32_t tok[10] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 };
    CHECK(session_create(e1, 64, &s1, err, sizeof err) == 0 && session_create(e2, 64, &s2, err, sizeof err) == 0 &&
          session_eval(s1, tok, 10, NULL, false, err, sizeof err) == 0);
    uint64_t n = session_state_bytes(s1, 10);
    uint8_t *st = malloc(n + 4);
    CHECK(session_state_save(s1, st, n - 1, err, sizeof err) < 0); /* too small a buffer */
    CHECK(session_state_save(s1, st, n, err, sizeof err) == 0);
    CHECK(session_state_load(s1, st, n - 4, err, sizeof err) < 0);
    CHECK(strstr(err, "bytes, expected") != NULL);
    CHECK(session_state_load(s1, st, n + 4, err, sizeof err) < 0);
    /* a CSA model has another layout (indexer keys): the header's hash of the ratios differs */
    CHECK(session_state_load(s2, st, n, err, sizeof err) < 0);
    CHECK(strstr(err, "header word 8") != NULL);
    st[0] ^= 1;
    CHECK(session_state_load(s1, st, n, err, sizeof err) < 0);
    CHECK(strstr(err, "header word 0") != NULL);
    CHECK_EQ_INT(session_pos(s1), 10); /* refused before any change */
    free(st);
done:
    session_destroy(s1);
    session_destroy(s2);
    engine_close(e1);
    engine_close(e2);
}

/* The plan is what the Vulkan backend allocates: a session's device memory (what
 * engine_device_memory counts) is the plan's session less its host-visible part, to the
 * byte, at a short and at a long context. */
TEST(memory_plan_equals_the_vulkan_sessions_device_memory)
{
    char path[512], err[512];
    if (write_tiny(1u << 20, path, sizeof path)) return;
    struct engine *e = NULL;
    if (open_backend(path, ENGINE_BACKEND_VULKAN, &e)) return;
    static const uint32_t ctxs[] = { 4096, 300000 };
    for (int i = 0; i < 2; i++) {
        uint64_t used0, used1, total;
        struct session *s = NULL;
        struct engine_plan p;
        engine_plan_open(e, ctxs[i], 1, &p);
        if (engine_device_memory(e, &used0, &total) || session_create(e, ctxs[i], &s, err, sizeof err) ||
            engine_device_memory(e, &used1, &total)) {
            test_fail_at(__FILE__, __LINE__, "%s", err);
            break;
        }
        CHECK_EQ_INT(used1 - used0, p.per_session - p.session[ENGINE_PLAN_HOST]);
        CHECK(p.session[ENGINE_PLAN_CSA_ENTRIES] == 2ull * (ctxs[i] / 4) * 128 * 4); /* 2 CSA layers, rows of 128 */
        session_destroy(s);
    }
    /* f16 and fp8 storage: the plan is still the allocation, and the entries shrink */
    for (int kv = ENGINE_KV_F16; kv <= ENGINE_KV_FP8; kv++) {
        struct engine *ek = NULL;
        struct session *s = NULL;
        uint64_t used0, used1, total;
        struct engine_plan p;
        if (open_backend_kv(path, ENGINE_BACKEND_VULKAN, (enum engine_kv_type)kv, &ek)) break;
        engine_plan_open(ek, 300000, 1, &p);
        if (engine_device_memory(ek, &used0, &total) || session_create(ek, 300000, &s, err, sizeof err) ||
            engine_device_memory(ek, &used1, &total))
            test_fail_at(__FILE__, __LINE__, "%s", err);
        else
            CHECK_EQ_INT(used1 - used0, p.per_session - p.session[ENGINE_PLAN_HOST]);
        /* 2 CSA layers of 75,000 entries of 128 values: 64 words (f16), 33 (fp8) */
        CHECK(p.session[ENGINE_PLAN_CSA_ENTRIES] == 2ull * 75000 * (kv == ENGINE_KV_F16 ? 64 : 33) * 4);
        session_destroy(s);
        engine_close(ek);
    }
    /* a plan that fits is refused no session: the fitted context opens */
    struct engine_plan f;
    uint32_t fit = engine_plan_open_fit(e, 2, engine_plan_budget(e), &f);
    CHECK(fit >= 128 && fit <= (1u << 20) && fit % 128 == 0);
    engine_close(e);
}

/* A context that does not fit is refused with the plan's numbers, on both backends. */
TEST(a_session_that_does_not_fit_is_refused_with_the_plans_numbers)
{
    char path[512], err[512];
    if (write_tiny(4096, path, sizeof path)) return;
    const enum engine_backend bs[2] = { ENGINE_BACKEND_REF, ENGINE_BACKEND_VULKAN };
    for (int b = 0; b < 2; b++) {
        struct engine *e = NULL;
        struct session *s = NULL;
        if (open_backend(path, bs[b], &e)) return;
        /* 4 billion positions: terabytes of compressed entries */
        CHECK(session_create(e, 0xffffff00u, &s, err, sizeof err) < 0);
        CHECK(strstr(err, "4294967040-position session needs") != NULL);
        CHECK(strstr(err, "CSA entries") != NULL && strstr(err, "MiB") != NULL);
        session_destroy(s);
        engine_close(e);
    }
}

/* The plan of V4-Flash's shape (a metadata-only file of its hyper-parameters, spec §1):
 * the compressed entries and indexer keys are the spec's KV size (§3.15: 6,880 bytes a
 * position in BF16, so 13,760 in float32) at 128K and 1M positions. */
TEST(memory_plan_of_v4_flash_shape_matches_the_spec_kv_size)
{
    char path[512], err[512];
    snprintf(path, sizeof path, "%s/flash-shape.gguf", test_tmpdir());
    struct mkmodel_config c;
    mkmodel_defaults(&c);
    c.quant = MKMODEL_META;
    c.n_embd = 4096; c.n_layer = 43; c.n_head = 64; c.head_dim = 512; c.rope_dim = 64; c.q_rank = 1024;
    c.o_groups = 8; c.o_rank = 1024; c.window = 128; c.ix_head = 64; c.ix_dim = 128; c.ix_topk = 512;
    c.n_expert = 256; c.n_expert_used = 6; c.n_ff_exp = 2048; c.n_vocab = 129280; c.n_hash_layer = 3; c.n_ctx = 1u << 20;
    for (uint32_t il = 0; il < 43; il++) c.ratio[il] = il < 2 ? 0 : il % 2 ? 128 : 4;
    if (mkmodel_write(&c, path, err, sizeof err)) {
        test_fail_at(__FILE__, __LINE__, "%s", err);
        return;
    }
    static const uint32_t ctxs[] = { 131072, 1u << 20 };
    for (int i = 0; i < 2; i++)
        for (int b = 0; b < 2; b++) {
            struct engine_plan p;
            REQUIRE(engine_plan_file(path, b ? ENGINE_BACKEND_VULKAN : ENGINE_BACKEND_REF, ENGINE_KV_F32, ctxs[i], 1, 0, &p, err,
                                     sizeof err) == 0);
            CHECK_EQ_INT(p.n_csa, 21);
            CHECK_EQ_INT(p.n_hca, 20);
            CHECK(p.no_tensors && p.weights == 0);
            /* the reference keeps one spare row per layer; Vulkan exactly n_ctx / ratio */
            const uint64_t spare = b ? 0 : 21ull * 512 * 4 + 20ull * 512 * 4 + 21ull * 128 * 4;
            CHECK_EQ_INT(p.session[ENGINE_PLAN_CSA_ENTRIES] + p.session[ENGINE_PLAN_HCA_ENTRIES] +
                             p.session[ENGINE_PLAN_IX_KEYS],
                         13760ull * ctxs[i] + spare);
        }
}
