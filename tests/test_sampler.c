/* Sampler and stopper on hand-made logit vectors: greedy and its edge cases, the filters
 * (top-k, top-p, min-p) against hand-computed probabilities, seeds, penalties, stop
 * tokens, stop strings across token boundaries and the token limit. */
#include "engine/text/sampler.h"
#include "tests/harness.h"

#include <math.h>
#include <stdlib.h>

static struct sampler *make(uint32_t n_vocab, const struct sampler_params *p)
{
    struct sampler *s;
    char err[256];
    if (sampler_create(&s, n_vocab, p, err, sizeof err)) {
        test_fail_at(__FILE__, __LINE__, "sampler_create: %s", err);
        return NULL;
    }
    return s;
}

static struct sampler *make_greedy(uint32_t n)
{
    struct sampler_params p;
    sampler_params_default(&p);
    p.temperature = 0;
    return make(n, &p);
}

TEST(greedy_picks_the_largest_logit_and_the_lowest_id_on_ties)
{
    struct sampler *s = make_greedy(5);
    REQUIRE(s);
    const float a[5] = { 0.1f, 3.0f, -2.0f, 2.9f, 3.0f };
    CHECK_EQ_INT(sampler_sample(s, a), 1);
    const float equal[5] = { 0.5f, 0.5f, 0.5f, 0.5f, 0.5f };
    CHECK_EQ_INT(sampler_sample(s, equal), 0);
    const float ninf[5] = { -INFINITY, -INFINITY, -50.0f, -INFINITY, -INFINITY };
    CHECK_EQ_INT(sampler_sample(s, ninf), 2);
    const float all_ninf[5] = { -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY };
    CHECK_EQ_INT(sampler_sample(s, all_ninf), -1);
    const float with_nan[5] = { NAN, 1.0f, NAN, 0.0f, NAN };
    CHECK_EQ_INT(sampler_sample(s, with_nan), 1);
    sampler_destroy(s);
}

/* Draws n tokens and counts them. */
static void histogram(struct sampler *s, const float *logits, uint32_t n_vocab, int n, int *count)
{
    memset(count, 0, n_vocab * sizeof *count);
    for (int i = 0; i < n; i++) {
        int32_t t = sampler_sample(s, logits);
        if (t < 0 || (uint32_t)t >= n_vocab) {
            test_fail_at(__FILE__, __LINE__, "sampled %d", t);
            return;
        }
        count[t]++;
    }
}

TEST(temperature_zero_is_greedy_whatever_the_seed)
{
    struct sampler_params p;
    sampler_params_default(&p);
    p.temperature = 0;
    const float l[4] = { 1.0f, 1.2f, 1.1f, -1.0f };
    for (uint64_t seed = 0; seed < 5; seed++) {
        p.seed = seed;
        struct sampler *s = make(4, &p);
        REQUIRE(s);
        for (int i = 0; i < 20; i++) CHECK_EQ_INT(sampler_sample(s, l), 1);
        sampler_destroy(s);
    }
}

/* logits = log(probs), so softmax at temperature 1 gives probs back exactly. */
static void log_probs(const double *probs, float *logits, int n)
{
    for (int i = 0; i < n; i++) logits[i] = probs[i] > 0 ? (float)log(probs[i]) : -INFINITY;
}

TEST(full_distribution_matches_softmax_frequencies)
{
    struct sampler_params p;
    sampler_params_default(&p);
    p.seed = 7;
    const double probs[4] = { 0.5, 0.3, 0.15, 0.05 };
    float l[4];
    log_probs(probs, l, 4);
    struct sampler *s = make(4, &p);
    REQUIRE(s);
    enum { N = 40000 };
    int count[4];
    histogram(s, l, 4, N, count);
    for (int i = 0; i < 4; i++) CHECK_NEAR((double)count[i] / N, probs[i], 0.01);
    /* temperature 2 flattens: p ~ sqrt(probs) normalized */
    sampler_destroy(s);
    p.temperature = 2.0f;
    s = make(4, &p);
    REQUIRE(s);
    histogram(s, l, 4, N, count);
    double z = 0;
    for (int i = 0; i < 4; i++) z += sqrt(probs[i]);
    for (int i = 0; i < 4; i++) CHECK_NEAR((double)count[i] / N, sqrt(probs[i]) / z, 0.01);
    sampler_destroy(s);
}

TEST(all_equal_logits_sample_uniformly)
{
    struct sampler_params p;
    sampler_params_default(&p);
    p.seed = 3;
    float l[8];
    for (int i = 0; i < 8; i++) l[i] = 4.25f;
    struct sampler *s = make(8, &p);
    REQUIRE(s);
    int count[8];
    histogram(s, l, 8, 40000, count);
    for (int i = 0; i < 8; i++) CHECK_NEAR(count[i] / 40000.0, 0.125, 0.01);
    sampler_destroy(s);
}

TEST(top_p_keeps_the_smallest_nucleus_and_zero_or_one_are_the_extremes)
{
    struct sampler_params p;
    sampler_params_default(&p);
    p.seed = 11;
    const double probs[4] = { 0.2, 0.5, 0.25, 0.05 };
    float l[4];
    log_probs(probs, l, 4);
    int count[4];
    /* 0.6: {1 (0.5), 2 (0.25)} reaches 0.75 >= 0.6; renormalized 2/3 and 1/3 */
    p.top_p = 0.6f;
    struct sampler *s = make(4, &p);
    REQUIRE(s);
    histogram(s, l, 4, 30000, count);
    CHECK_EQ_INT(count[0], 0);
    CHECK_EQ_INT(count[3], 0);
    CHECK_NEAR(count[1] / 30000.0, 2.0 / 3.0, 0.012);
    sampler_destroy(s);
    /* 0.5 is reached by token 1 alone */
    p.top_p = 0.5f;
    s = make(4, &p);
    REQUIRE(s);
    histogram(s, l, 4, 2000, count);
    CHECK_EQ_INT(count[1], 2000);
    sampler_destroy(s);
    /* 0: only the most likely token */
    p.top_p = 0.0f;
    s = make(4, &p);
    REQUIRE(s);
    histogram(s, l, 4, 2000, count);
    CHECK_EQ_INT(count[1], 2000);
    sampler_destroy(s);
    /* 1: no filter, the rare token shows up at its rate */
    p.top_p = 1.0f;
    s = make(4, &p);
    REQUIRE(s);
    histogram(s, l, 4, 30000, count);
    CHECK_NEAR(count[3] / 30000.0, 0.05, 0.006);
    sampler_destroy(s);
}

TEST(top_p_on_a_large_flat_tail_keeps_the_exact_nucleus)
{
    /* one token with 0.5, and 20000 tokens sharing the rest: top_p 0.9 needs token 0
     * plus 0.4 / 0.5 of the tail, i.e. 16000 tail tokens (ties broken by lower id) */
    enum { N = 20001 };
    static float l[N];
    const double tail = 0.5 / (N - 1);
    l[0] = (float)log(0.5);
    for (int i = 1; i < N; i++) l[i] = (float)log(tail);
    struct sampler_params p;
    sampler_params_default(&p);
    p.top_p = 0.9f;
    p.seed = 5;
    struct sampler *s = make(N, &p);
    REQUIRE(s);
    int max_id = 0, n0 = 0;
    for (int i = 0; i < 4000; i++) {
        int32_t t = sampler_sample(s, l);
        REQUIRE(t >= 0);
        if (t > max_id) max_id = t;
        n0 += t == 0;
    }
    CHECK(max_id <= 16001);
    CHECK(max_id > 15000); /* the nucleus really reaches that far */
    CHECK_NEAR(n0 / 4000.0, 0.5 / 0.9, 0.03);
    sampler_destroy(s);
}

TEST(top_k_and_min_p_cut_the_unlikely_tokens)
{
    struct sampler_params p;
    sampler_params_default(&p);
    p.seed = 9;
    const double probs[5] = { 0.05, 0.4, 0.3, 0.15, 0.1 };
    float l[5];
    log_probs(probs, l, 5);
    int count[5];
    p.top_k = 2;
    struct sampler *s = make(5, &p);
    REQUIRE(s);
    histogram(s, l, 5, 20000, count);
    CHECK(count[0] == 0 && count[3] == 0 && count[4] == 0);
    CHECK_NEAR(count[1] / 20000.0, 0.4 / 0.7, 0.015);
    sampler_destroy(s);
    p.top_k = 1;
    s = make(5, &p);
    REQUIRE(s);
    histogram(s, l, 5, 1000, count);
    CHECK_EQ_INT(count[1], 1000);
    sampler_destroy(s);
    /* min_p 0.3: floor 0.12 keeps 0.4, 0.3, 0.15 */
    p.top_k = 0;
    p.min_p = 0.3f;
    s = make(5, &p);
    REQUIRE(s);
    histogram(s, l, 5, 20000, count);
    CHECK(count[0] == 0 && count[4] == 0);
    CHECK(count[3] > 0);
    CHECK_NEAR(count[3] / 20000.0, 0.15 / 0.85, 0.015);
    sampler_destroy(s);
    /* min_p above 1 still keeps the best token */
    p.min_p = 5.0f;
    s = make(5, &p);
    REQUIRE(s);
    histogram(s, l, 5, 500, count);
    CHECK_EQ_INT(count[1], 500);
    sampler_destroy(s);
}

TEST(infinite_logits_are_handled)
{
    struct sampler_params p;
    sampler_params_default(&p);
    const float ninf[4] = { -INFINITY, 0.0f, -INFINITY, 0.0f };
    struct sampler *s = make(4, &p);
    REQUIRE(s);
    int count[4];
    histogram(s, ninf, 4, 4000, count);
    CHECK(count[0] == 0 && count[2] == 0);
    CHECK_NEAR(count[1] / 4000.0, 0.5, 0.04);
    const float pinf[4] = { 1.0f, INFINITY, 3.0f, INFINITY };
    histogram(s, pinf, 4, 4000, count);
    CHECK(count[0] == 0 && count[2] == 0 && count[1] > 0 && count[3] > 0);
    const float none[4] = { -INFINITY, -INFINITY, NAN, -INFINITY };
    CHECK_EQ_INT(sampler_sample(s, none), -1);
    sampler_destroy(s);
}

TEST(same_seed_gives_same_tokens_and_reset_restarts)
{
    struct sampler_params p;
    sampler_params_default(&p);
    p.seed = 1234;
    p.top_p = 0.95f;
    float l[50];
    for (int i = 0; i < 50; i++) l[i] = (float)((i * 37) % 11) * 0.3f;
    struct sampler *a = make(50, &p), *b = make(50, &p);
    p.seed = 1235;
    struct sampler *c = make(50, &p);
    REQUIRE(a && b && c);
    int32_t first[64];
    int differ = 0;
    for (int i = 0; i < 64; i++) {
        first[i] = sampler_sample(a, l);
        CHECK_EQ_INT(first[i], sampler_sample(b, l));
        differ += first[i] != sampler_sample(c, l);
    }
    CHECK(differ > 0);
    sampler_reset(a);
    for (int i = 0; i < 64; i++) CHECK_EQ_INT(sampler_sample(a, l), first[i]);
    sampler_destroy(a);
    sampler_destroy(b);
    sampler_destroy(c);
}

TEST(penalties_change_the_choice_as_computed_by_hand)
{
    struct sampler_params p;
    sampler_params_default(&p);
    p.temperature = 0;
    p.penalty_last_n = 8;
    p.repeat_penalty = 2.0f;
    struct sampler *s = make(3, &p);
    REQUIRE(s);
    const float pos[3] = { 2.0f, 1.5f, 0.0f }; /* 2.0 / 2 = 1.0 < 1.5 */
    CHECK_EQ_INT(sampler_sample(s, pos), 0);
    sampler_accept(s, 0);
    CHECK_EQ_INT(sampler_sample(s, pos), 1);
    const float neg[3] = { -1.0f, -1.5f, -9.0f }; /* -1 * 2 = -2 < -1.5 */
    CHECK_EQ_INT(sampler_sample(s, neg), 1);
    sampler_destroy(s);

    sampler_params_default(&p);
    p.temperature = 0;
    p.penalty_last_n = 8;
    p.presence_penalty = 0.5f;
    s = make(2, &p);
    REQUIRE(s);
    const float pr[2] = { 1.0f, 0.8f };
    sampler_accept(s, 0);
    sampler_accept(s, 0);
    CHECK_EQ_INT(sampler_sample(s, pr), 1); /* 1.0 - 0.5 once, however often it occurred */
    const float pr2[2] = { 1.0f, 0.4f };
    CHECK_EQ_INT(sampler_sample(s, pr2), 0);
    sampler_destroy(s);

    sampler_params_default(&p);
    p.temperature = 0;
    p.penalty_last_n = 2;
    p.frequency_penalty = 0.2f;
    s = make(3, &p);
    REQUIRE(s);
    const float fr[3] = { 1.0f, 0.7f, 0.0f };
    sampler_accept(s, 0);
    CHECK_EQ_INT(sampler_sample(s, fr), 0); /* 0.8 > 0.7 */
    sampler_accept(s, 0);
    CHECK_EQ_INT(sampler_sample(s, fr), 1); /* 0.6 < 0.7 */
    sampler_accept(s, 2);
    sampler_accept(s, 2); /* the window of 2 now holds only token 2 */
    CHECK_EQ_INT(sampler_sample(s, fr), 0);
    sampler_destroy(s);
}

TEST(logit_bias_adds_to_the_logit_before_penalties_and_sampling)
{
    struct sampler_params p;
    sampler_params_default(&p);
    p.temperature = 0;
    const struct sampler_bias b[2] = { { 2, 1.5f }, { 0, -100.0f } };
    p.bias = b;
    p.n_bias = 2;
    struct sampler *s = make(4, &p);
    REQUIRE(s);
    const float l[4] = { 5.0f, 1.0f, 0.0f, 1.4f }; /* biased: -95, 1, 1.5, 1.4 */
    CHECK_EQ_INT(sampler_sample(s, l), 2);
    sampler_destroy(s);
    /* with a temperature, a -100 bias leaves the token out in practice: 2000 draws */
    p.temperature = 1;
    p.seed = 7;
    s = make(4, &p);
    REQUIRE(s);
    int zero = 0;
    for (int i = 0; i < 2000; i++) zero += sampler_sample(s, l) == 0;
    CHECK_EQ_INT(zero, 0);
    sampler_destroy(s);
    /* a token outside the vocabulary is refused when the sampler is made */
    const struct sampler_bias out[1] = { { 4, 1.0f } };
    p.bias = out;
    p.n_bias = 1;
    char err[256] = "";
    CHECK(sampler_create(&s, 4, &p, err, sizeof err) < 0);
    CHECK(strstr(err, "bias 0") != NULL);
}

TEST(bad_sampler_parameters_are_refused)
{
    struct sampler_params p;
    sampler_params_default(&p);
    struct sampler *s;
    char err[256] = "";
    CHECK(sampler_create(&s, 0, &p, err, sizeof err) < 0);
    p.repeat_penalty = 0;
    CHECK(sampler_create(&s, 10, &p, err, sizeof err) < 0);
    CHECK(strstr(err, "repeat_penalty") != NULL);
    sampler_params_default(&p);
    p.temperature = NAN;
    CHECK(sampler_create(&s, 10, &p, err, sizeof err) < 0);
}

static struct stopper *make_stopper(const char *const *strings, size_t n_strings, const int32_t *toks, size_t n_toks,
                                    uint32_t max_tokens)
{
    struct stopper_params sp = { toks, n_toks, strings, n_strings, max_tokens, 16 };
    struct stopper *s;
    char err[256];
    if (stopper_create(&s, &sp, err, sizeof err)) {
        test_fail_at(__FILE__, __LINE__, "stopper_create: %s", err);
        return NULL;
    }
    return s;
}

/* Feeds text pieces (token ids 100, 101, ...) and collects what is released. */
static enum stop_reason feed_all(struct stopper *s, const char *const *pieces, int n, char *got)
{
    char out[64];
    size_t len;
    got[0] = 0;
    for (int i = 0; i < n; i++) {
        enum stop_reason r = stopper_feed(s, 100 + i, pieces[i], strlen(pieces[i]), out, sizeof out, &len);
        strncat(got, out, len);
        if (r != STOP_NONE) return r;
    }
    len = stopper_flush(s, out, sizeof out);
    strncat(got, out, len);
    return STOP_NONE;
}

TEST(stop_strings_match_across_tokens_and_are_never_released)
{
    static const char *const stops[] = { "o w", "END" };
    struct stopper *s = make_stopper(stops, 2, NULL, 0, 0);
    REQUIRE(s);
    char got[256], out[64];
    static const char *const a[] = { "Hel", "lo ", "world" };
    CHECK_EQ_INT(feed_all(s, a, 3, got), STOP_STRING);
    CHECK_STR(got, "Hell");
    /* a partial match is held, then released when it turns out not to be one */
    stopper_reset(s);
    size_t len;
    CHECK_EQ_INT(stopper_feed(s, 1, "abcE", 4, out, sizeof out, &len), STOP_NONE);
    CHECK(len == 3 && !memcmp(out, "abc", 3));
    CHECK_EQ_INT(stopper_feed(s, 2, "Nx", 2, out, sizeof out, &len), STOP_NONE);
    CHECK(len == 3 && !memcmp(out, "ENx", 3));
    CHECK_EQ_INT(stopper_feed(s, 3, "EN", 2, out, sizeof out, &len), STOP_NONE);
    CHECK_EQ_INT(len, 0);
    CHECK_EQ_INT(stopper_feed(s, 4, "D!", 2, out, sizeof out, &len), STOP_STRING);
    CHECK_EQ_INT(len, 0);
    /* the generation ends otherwise: held text comes out at flush */
    stopper_reset(s);
    static const char *const b[] = { "x", "EN" };
    CHECK_EQ_INT(feed_all(s, b, 2, got), STOP_NONE);
    CHECK_STR(got, "xEN");
    stopper_destroy(s);
}

TEST(stop_tokens_and_the_token_limit_end_generation)
{
    const int32_t eos[] = { 1 };
    static const char *const stops[] = { "zz" };
    struct stopper *s = make_stopper(stops, 1, eos, 1, 3);
    REQUIRE(s);
    char out[64];
    size_t len;
    CHECK_EQ_INT(stopper_feed(s, 5, "a", 1, out, sizeof out, &len), STOP_NONE);
    CHECK_EQ_INT(stopper_feed(s, 6, "z", 1, out, sizeof out, &len), STOP_NONE);
    CHECK_EQ_INT(len, 0); /* "z" might start "zz" */
    CHECK_EQ_INT(stopper_feed(s, 1, "<eos>", 5, out, sizeof out, &len), STOP_TOKEN);
    CHECK(len == 1 && out[0] == 'z'); /* held text comes out, the stop token's text does not */
    stopper_reset(s);
    CHECK_EQ_INT(stopper_feed(s, 5, "a", 1, out, sizeof out, &len), STOP_NONE);
    CHECK_EQ_INT(stopper_feed(s, 5, "b", 1, out, sizeof out, &len), STOP_NONE);
    CHECK_EQ_INT(stopper_feed(s, 5, "c", 1, out, sizeof out, &len), STOP_LENGTH);
    CHECK(len == 1 && out[0] == 'c');
    CHECK_EQ_INT(stopper_n_tokens(s), 3);
    stopper_destroy(s);
    static const char *const empty[] = { "" };
    struct stopper_params sp = { NULL, 0, empty, 1, 0, 16 };
    char err[128] = "";
    CHECK(stopper_create(&s, &sp, err, sizeof err) < 0);
    CHECK(strstr(err, "empty") != NULL);
}

TEST(masked_sampling_never_picks_a_removed_token_and_keeps_the_rest_as_they_were)
{
    struct sampler *g = make_greedy(40);
    REQUIRE(g);
    float l[40];
    for (int i = 0; i < 40; i++) l[i] = (float)(i % 7);
    uint32_t allow[2] = { 0, 0 };
    allow[0] = 1u << 3 | 1u << 12; /* logits 3 and 5: 12 wins */
    CHECK_EQ_INT(sampler_sample_masked(g, l, allow), 12);
    allow[0] = 0;
    allow[1] = 1u << (33 - 32);    /* only 33 */
    CHECK_EQ_INT(sampler_sample_masked(g, l, allow), 33);
    allow[1] = 0;
    CHECK_EQ_INT(sampler_sample_masked(g, l, allow), -1);
    CHECK_EQ_INT(sampler_sample_masked(g, l, NULL), sampler_sample(g, l));
    sampler_destroy(g);
    struct sampler_params p;
    sampler_params_default(&p);
    p.seed = 5;
    struct sampler *s = make(40, &p);
    REQUIRE(s);
    uint32_t odd[2] = { 0xAAAAAAAAu, 0xAAu };
    for (int k = 0; k < 500; k++) CHECK(sampler_sample_masked(s, l, odd) % 2 == 1);
    sampler_destroy(s);
}
