/* The expert store: results bitwise identical for every budget and both read paths, the
 * budget never exceeded, hash-layer prefetch used, read errors reported and survived. */
#include "engine/experts/expert_store.h"
#include "engine/model/model.h"
#include "engine/ref/ref.h"
#include "tests/harness.h"
#include "tools/mkmodel.h"

#include <stdlib.h>
#include <unistd.h>

/* Writes the tiny mixed model into the test's scratch directory (its path into path) and
 * opens it; NULL, with the test failed, when either step fails. */
static struct model *open_tiny_mixed(char *path, size_t len)
{
    snprintf(path, len, "%s/tiny-mixed.gguf", test_tmpdir());
    struct mkmodel_config c;
    mkmodel_defaults(&c);
    c.quant = MKMODEL_MIXED;
    char err[512];
    struct model *m = NULL;
    if (mkmodel_write(&c, path, err, sizeof err) || model_open(&m, path, err, sizeof err)) {
        test_fail_at(__FILE__, __LINE__, "tiny mixed model: %s", err);
        return NULL;
    }
    return m;
}

static void fill_tokens(int32_t *t, uint32_t n, uint32_t n_vocab, uint64_t seed)
{
    for (uint32_t i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        t[i] = (int32_t)((seed >> 33) % n_vocab);
    }
}

/* Runs tokens one by one with experts paged through a store of budget bytes (0: no store);
 * returns the logits [n][n_vocab] and checks the store's accounting after every token. */
static float *run_spec(const struct model *m, const char *path, uint64_t budget, enum engine_expert_read rp,
                       bool no_prefetch, const int32_t *tokens, uint32_t n, struct expert_counters *counters)
{
    char err[512];
    struct ref_state *st;
    struct expert_store *es = NULL;
    if (ref_state_create(m, n, &st, err, sizeof err)) return NULL;
    if (budget) {
        struct expert_store_options o = { .budget_bytes = budget, .read_path = rp, .no_prefetch = no_prefetch };
        if (expert_store_open(&es, m, path, &o, err, sizeof err)) {
            test_fail_at(__FILE__, __LINE__, "%s", err);
            ref_state_destroy(st);
            return NULL;
        }
        st->experts = es;
    }
    float *logits = malloc((size_t)n * m->hp.n_vocab * sizeof(float));
    for (uint32_t t = 0; t < n; t++) {
        if (ref_forward(st, &tokens[t], 1, logits + (size_t)t * m->hp.n_vocab, false, err, sizeof err)) {
            test_fail_at(__FILE__, __LINE__, "token %u: %s", t, err);
            break;
        }
        if (es && expert_store_resident_bytes(es) > expert_store_budget_bytes(es)) {
            test_fail_at(__FILE__, __LINE__, "budget exceeded at token %u", t);
            break;
        }
    }
    if (es && counters) expert_store_get_counters(es, counters);
    expert_store_close(es);
    ref_state_destroy(st);
    return logits;
}

static float *run(const struct model *m, const char *path, uint64_t budget, enum engine_expert_read rp,
                  const int32_t *tokens, uint32_t n, struct expert_counters *counters)
{
    return run_spec(m, path, budget, rp, false, tokens, n, counters);
}

TEST(paged_logits_are_bitwise_identical_for_every_budget)
{
    char path[512];
    struct model *m = open_tiny_mixed(path, sizeof path);
    REQUIRE(m);
    const uint32_t N = 300, V = m->hp.n_vocab;
    int32_t tokens[300];
    fill_tokens(tokens, N, V, 23);
    const uint64_t slot = expert_store_slot_bytes(m);
    const uint64_t minimum = (uint64_t)m->hp.n_expert_used * m->hp.n_layer * slot; /* experts-used slots per layer */
    float *full = run(m, path, 0, ENGINE_EXPERT_READ_PAGECACHE, tokens, N, NULL);
    REQUIRE(full);
    const uint64_t mult[3] = { 1, 2, 4 };
    for (int i = 0; i < 3; i++) {
        struct expert_counters c;
        float *paged = run(m, path, mult[i] * minimum, ENGINE_EXPERT_READ_PAGECACHE, tokens, N, &c);
        REQUIRE(paged);
        if (memcmp(paged, full, (size_t)N * V * sizeof(float)) != 0)
            test_fail_at(__FILE__, __LINE__, "budget %llux the minimum changed the logits", (unsigned long long)mult[i]);
        uint64_t hits = c.hits[0] + c.hits[1], misses = c.misses[0] + c.misses[1];
        printf("  %llux minimum (%u slots): hit rate %.3f, %.1f KiB read per token, %llu evictions\n",
               (unsigned long long)mult[i], c.n_slots, (double)hits / (double)(hits + misses),
               (double)c.bytes_read / N / 1024, (unsigned long long)c.evictions);
        CHECK_EQ_INT(hits + misses, (uint64_t)N * m->hp.n_layer * m->hp.n_expert_used);
        if (mult[i] == 1) CHECK(c.evictions > 0); /* the small budget really pages */
        free(paged);
    }
    free(full);
    model_close(m);
}

TEST(direct_reads_equal_page_cache_reads)
{
    char path[512];
    struct model *m = open_tiny_mixed(path, sizeof path);
    REQUIRE(m);
    const uint32_t N = 64, V = m->hp.n_vocab;
    int32_t tokens[64];
    fill_tokens(tokens, N, V, 29);
    const uint64_t budget = 12 * expert_store_slot_bytes(m);
    /* Without speculative loads every load is awaited before the next layer asks, so both
     * paths read exactly the same experts; with them, which guesses are read depends on the
     * loader's timing, so only the logits must agree. */
    struct expert_counters cp, cd, cs;
    float *a = run_spec(m, path, budget, ENGINE_EXPERT_READ_PAGECACHE, true, tokens, N, &cp);
    float *b = run_spec(m, path, budget, ENGINE_EXPERT_READ_DIRECT, true, tokens, N, &cd);
    float *c = run_spec(m, path, budget, ENGINE_EXPERT_READ_DIRECT, false, tokens, N, &cs);
    REQUIRE(a && b && c);
    CHECK(memcmp(a, b, (size_t)N * V * sizeof(float)) == 0);
    CHECK(memcmp(a, c, (size_t)N * V * sizeof(float)) == 0);
    CHECK(cp.read_path == ENGINE_EXPERT_READ_PAGECACHE && cd.read_path == ENGINE_EXPERT_READ_DIRECT);
    CHECK(cp.bytes_read > 0 && cp.bytes_read == cd.bytes_read);
    CHECK(cs.read_path == ENGINE_EXPERT_READ_DIRECT && cs.prefetch_issued > 0);
    free(a);
    free(b);
    free(c);
    model_close(m);
}

TEST(hash_layer_prefetch_is_used)
{
    char path[512];
    struct model *m = open_tiny_mixed(path, sizeof path);
    REQUIRE(m);
    int32_t tokens[40];
    fill_tokens(tokens, 40, m->hp.n_vocab, 31);
    struct expert_counters c;
    float *l = run(m, path, 10 * expert_store_slot_bytes(m), ENGINE_EXPERT_READ_PAGECACHE, tokens, 40, &c);
    REQUIRE(l);
    CHECK(c.prefetch_issued_kind[ENGINE_EXPERT_HASH] > 0);
    /* hash routing is exact: every hash-layer prefetch is used */
    CHECK_EQ_INT(c.prefetch_used_kind[ENGINE_EXPERT_HASH], c.prefetch_issued_kind[ENGINE_EXPERT_HASH]);
    CHECK_EQ_INT(c.misses[ENGINE_EXPERT_HASH], 0); /* hash layers never miss: their loads started early */
    CHECK(c.misses[ENGINE_EXPERT_LEARNED] > 0);
    free(l);
    model_close(m);
}

TEST(expert_guesses_for_learned_layers_are_counted_and_change_no_logit)
{
    char path[512];
    struct model *m = open_tiny_mixed(path, sizeof path);
    REQUIRE(m);
    const uint32_t N = 60, V = m->hp.n_vocab;
    int32_t tokens[60];
    fill_tokens(tokens, N, V, 37);
    const uint64_t budget = (uint64_t)m->hp.n_expert_used * m->hp.n_layer * expert_store_slot_bytes(m);
    struct expert_counters on, off;
    float *full = run(m, path, 0, ENGINE_EXPERT_READ_PAGECACHE, tokens, N, NULL);
    float *a = run_spec(m, path, budget, ENGINE_EXPERT_READ_PAGECACHE, false, tokens, N, &on);
    float *b = run_spec(m, path, budget, ENGINE_EXPERT_READ_PAGECACHE, true, tokens, N, &off);
    REQUIRE(full && a && b);
    CHECK(memcmp(a, full, (size_t)N * V * sizeof(float)) == 0);
    CHECK(memcmp(b, full, (size_t)N * V * sizeof(float)) == 0);
    /* with speculation: the learned layers (3 and 4) were guessed from the layer before */
    CHECK(on.prefetch_issued_kind[ENGINE_EXPERT_LEARNED] > 0);
    CHECK(on.prefetch_used_kind[ENGINE_EXPERT_LEARNED] > 0);
    CHECK(on.prefetch_used_kind[ENGINE_EXPERT_LEARNED] <= on.prefetch_issued_kind[ENGINE_EXPERT_LEARNED]);
    CHECK_EQ_INT(on.prefetch_issued, on.prefetch_issued_kind[0] + on.prefetch_issued_kind[1]);
    CHECK_EQ_INT(on.prefetch_used, on.prefetch_used_kind[0] + on.prefetch_used_kind[1]);
    CHECK(on.hits[ENGINE_EXPERT_LEARNED] > off.hits[ENGINE_EXPERT_LEARNED]); /* the guesses turn misses into hits */
    printf("  learned-layer guesses: %llu issued, %llu used, %llu dropped; learned hits %llu with, %llu without\n",
           (unsigned long long)on.prefetch_issued_kind[1], (unsigned long long)on.prefetch_used_kind[1],
           (unsigned long long)on.prefetch_dropped, (unsigned long long)on.hits[1], (unsigned long long)off.hits[1]);
    /* without: no speculative load at all */
    CHECK_EQ_INT(off.prefetch_issued + off.prefetch_used + off.prefetch_dropped, 0);
    CHECK_EQ_INT(off.prefetch_issued_kind[0] + off.prefetch_issued_kind[1], 0);
    free(full);
    free(a);
    free(b);
    model_close(m);
}

TEST(expert_guess_never_takes_a_needed_slot_nor_makes_a_needed_load_wait)
{
    char path[512], err[512];
    struct model *m = open_tiny_mixed(path, sizeof path);
    REQUIRE(m);
    struct expert_store *es;
    struct expert_store_options o = { .budget_bytes = 4 * expert_store_slot_bytes(m), .read_path = ENGINE_EXPERT_READ_PAGECACHE };
    REQUIRE(expert_store_open(&es, m, path, &o, err, sizeof err) == 0);
    REQUIRE(expert_store_n_slots(es) == 4);
    /* four guesses for layer 4 fill every slot; the loader reads nothing yet */
    expert_store_hold_loader(es, true);
    const int32_t guess[4] = { 0, 1, 2, 3 }, need[2] = { 5, 6 };
    expert_store_prefetch(es, 4, guess, 4, true);
    /* layer 3 needs two other experts: it drops the two newest queued guesses (2 and 3)
     * instead of waiting for them (with the loader held, waiting would never end) */
    REQUIRE(expert_store_request(es, 3, need, 2, err, sizeof err) == 0);
    struct expert_counters c;
    expert_store_get_counters(es, &c);
    CHECK_EQ_INT(c.prefetch_issued, 4);
    CHECK_EQ_INT(c.prefetch_dropped, 2);
    CHECK_EQ_INT(c.loads, 0);
    /* more guesses while layer 3's slots are pinned and the other two hold undecided guesses:
     * no slot may be taken */
    const int32_t more[4] = { 4, 5, 6, 7 };
    expert_store_prefetch(es, 4, more, 4, true);
    expert_store_get_counters(es, &c);
    CHECK_EQ_INT(c.prefetch_issued, 4);
    expert_store_hold_loader(es, false);
    struct expert_view v[2];
    REQUIRE(expert_store_await_views(es, 3, v, 2, err, sizeof err) == 0);
    /* the slots hold the file's bytes of layer 3's experts 5 and 6 */
    const struct gguf_tensor *gate = m->layers[3].ffn_gate_exps;
    const uint64_t part = gate->nbytes / m->hp.n_expert;
    CHECK(memcmp(v[0].gate.data, (const uint8_t *)gate->data + 5 * part, part) == 0);
    CHECK(memcmp(v[1].gate.data, (const uint8_t *)gate->data + 6 * part, part) == 0);
    expert_store_release(es, 3);
    /* layer 4 chooses 1 and 7: the surviving guess 1 is used */
    expert_store_get_counters(es, &c);
    const uint64_t used0 = c.prefetch_used;
    const int32_t chosen[2] = { 1, 7 };
    REQUIRE(expert_store_acquire(es, 4, chosen, 2, v, err, sizeof err) == 0);
    expert_store_drop_speculation(es, 4);
    expert_store_release(es, 4);
    expert_store_get_counters(es, &c);
    CHECK_EQ_INT(c.prefetch_used - used0, 1);
    CHECK_EQ_INT(c.prefetch_used_kind[ENGINE_EXPERT_LEARNED], c.prefetch_used);
    CHECK(memcmp(v[0].gate.data, (const uint8_t *)m->layers[4].ffn_gate_exps->data + 1 * part, part) == 0);
    CHECK(memcmp(v[1].gate.data, (const uint8_t *)m->layers[4].ffn_gate_exps->data + 7 * part, part) == 0);
    expert_store_close(es);
    model_close(m);
}

TEST(expert_budget_below_one_layer_is_refused)
{
    char path[512], err[512];
    struct model *m = open_tiny_mixed(path, sizeof path);
    REQUIRE(m);
    struct expert_store *es;
    struct expert_store_options o = { .budget_bytes = expert_store_slot_bytes(m) * (m->hp.n_expert_used - 1) };
    CHECK(expert_store_open(&es, m, path, &o, err, sizeof err) != 0);
    CHECK(strstr(err, "at least 2") != NULL);
    model_close(m);
}

TEST(read_error_after_truncation_fails_that_request_and_the_store_survives)
{
    char path[512], err[512];
    struct model *m = open_tiny_mixed(path, sizeof path);
    REQUIRE(m);
    struct expert_store *es;
    struct expert_store_options o = { .budget_bytes = 8 * expert_store_slot_bytes(m), .read_path = ENGINE_EXPERT_READ_PAGECACHE };
    REQUIRE(expert_store_open(&es, m, path, &o, err, sizeof err) == 0);
    /* cut the file inside layer 4's experts (only the store's pread touches those bytes) */
    const struct gguf_tensor *down4 = m->layers[4].ffn_down_exps;
    uint64_t cut = (uint64_t)((const uint8_t *)down4->data - m->file->map) + down4->nbytes / 2;
    REQUIRE(truncate(path, (off_t)cut) == 0);
    struct expert_view v[2];
    int32_t late[2] = { 6, 7 }, early[2] = { 0, 1 };
    CHECK(expert_store_acquire(es, 4, late, 2, v, err, sizeof err) != 0);
    CHECK(strstr(err, "layer 4 expert") != NULL && strstr(err, "truncated") != NULL);
    CHECK(expert_store_acquire(es, 0, early, 2, v, err, sizeof err) == 0);
    expert_store_release(es, 0);
    CHECK(expert_store_acquire(es, 4, late, 2, v, err, sizeof err) != 0); /* retried, still failing */
    expert_store_close(es);
    model_close(m);
}

TEST(expert_tensor_past_the_end_is_rejected_at_load)
{
    char path[512], err[512];
    struct model *m = open_tiny_mixed(path, sizeof path);
    REQUIRE(m);
    uint64_t cut = (uint64_t)((const uint8_t *)m->layers[4].ffn_up_exps->data - m->file->map) + 100;
    model_close(m);
    REQUIRE(truncate(path, (off_t)cut) == 0);
    CHECK(model_open(&m, path, err, sizeof err) != 0);
    CHECK(strstr(err, "blk.4.ffn_up_exps.weight") != NULL && strstr(err, "past the end") != NULL);
}
