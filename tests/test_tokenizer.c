/* Tokenizer tests: llama.cpp's test vectors for real vocabularies, BPE merge order on a
 * hand-made vocabulary, pre-tokenizer splits worked out by hand, round trips, invalid
 * UTF-8, special tokens, the streaming detokenizer and malformed vocabularies. */
#include "tests/utf8_check.h"
#include "engine/model/gguf.h"
#include "engine/text/pretok.h"
#include "engine/text/tokenizer.h"
#include "tests/harness.h"
#include "tests/tok_vocab.h"

#include <stdlib.h>

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) buf[n] = 0, *len = (size_t)n;
    return buf;
}

static struct tokenizer *load(const char *path)
{
    char err[512];
    struct tokenizer *t = NULL;
    if (tok_create_from_file(&t, path, err, sizeof err)) test_fail_at(__FILE__, __LINE__, "load: %s", err);
    return t;
}

/* The .inp file holds strings each followed by "\n__ggml_vocab_test__\n"; line i of .out
 * holds the ids of string i, each preceded by a space. */
static void check_vocab_vectors(const char *name)
{
    char gguf[4096], inp[4200], out[4200];
    snprintf(gguf, sizeof gguf, "%s", test_fixture(name));
    snprintf(inp, sizeof inp, "%s.inp", gguf);
    snprintf(out, sizeof out, "%s.out", gguf);
    struct tokenizer *t = load(gguf);
    REQUIRE(t);
    size_t inp_len, out_len;
    char *in_text = read_file(inp, &inp_len), *out_text = read_file(out, &out_len);
    REQUIRE(in_text && out_text);
    static const char sep[] = "\n__ggml_vocab_test__\n";
    char *p = in_text, *line = out_text;
    int n_cases = 0;
    for (char *end; (end = strstr(p, sep)); p = end + strlen(sep), n_cases++) {
        char *nl = strchr(line, '\n');
        REQUIRE(nl);
        *nl = 0;
        struct tok_vec ids = { 0 };
        char err[256];
        CHECK(tok_encode(t, p, (size_t)(end - p), 0, &ids, err, sizeof err) == 0);
        char got[8192];
        size_t o = 0;
        got[0] = 0;
        for (size_t i = 0; i < ids.n && o < sizeof got - 16; i++) o += (size_t)sprintf(got + o, " %d", ids.ids[i]);
        if (strcmp(got, line))
            test_fail_at(__FILE__, __LINE__, "%s case %d \"%.*s\": ids \"%s\", expected \"%s\"", name, n_cases,
                         (int)(end - p > 40 ? 40 : end - p), p, got, line);
        tok_vec_free(&ids);
        line = nl + 1;
    }
    CHECK_EQ_INT(n_cases, 46);
    free(in_text);
    free(out_text);
    tok_destroy(t);
}

TEST(deepseek_llm_vocab_matches_llama_cpp_vectors) { check_vocab_vectors("vocab/ggml-vocab-deepseek-llm.gguf"); }

TEST(gpt2_vocab_matches_llama_cpp_vectors) { check_vocab_vectors("vocab/ggml-vocab-gpt-2.gguf"); }

static struct tokenizer *hand_vocab(const char *pre)
{
    char path[600];
    snprintf(path, sizeof path, "%s/vocab.gguf", test_tmpdir());
    if (tok_vocab_write(path, pre, NULL, NULL, 0)) {
        test_fail_at(__FILE__, __LINE__, "cannot write %s", path);
        return NULL;
    }
    return load(path);
}

static void check_ids(const struct tokenizer *t, const char *text, unsigned flags, const int32_t *want, size_t n_want,
                      int line)
{
    struct tok_vec ids = { 0 };
    char err[256];
    if (tok_encode(t, text, strlen(text), flags, &ids, err, sizeof err)) {
        test_fail_at(__FILE__, line, "encode \"%s\": %s", text, err);
        return;
    }
    int same = ids.n == n_want;
    for (size_t i = 0; same && i < n_want; i++) same = ids.ids[i] == want[i];
    if (!same) {
        char got[512] = "";
        for (size_t i = 0, o = 0; i < ids.n && o < 480; i++) o += (size_t)sprintf(got + o, " %d", ids.ids[i]);
        test_fail_at(__FILE__, line, "encode \"%s\": got%s (%zu ids), expected %zu ids", text, got, ids.n, n_want);
    }
    tok_vec_free(&ids);
}
#define CHECK_IDS(t, text, flags, ...)                                                        \
    do {                                                                                      \
        static const int32_t want_[] = { __VA_ARGS__ };                                       \
        check_ids(t, text, flags, want_, sizeof want_ / sizeof want_[0], __LINE__);           \
    } while (0)

TEST(bpe_merges_lowest_rank_first_not_left_to_right)
{
    struct tokenizer *t = hand_vocab("gpt2");
    REQUIRE(t);
    CHECK_IDS(t, "abc", 0, 258);           /* b+c (rank 0), then a+bc (rank 2) */
    CHECK_IDS(t, "aabc", 0, 'a', 258);     /* greedy left-to-right would give a, ab, c */
    CHECK_IDS(t, "abab", 0, 256, 256);     /* equal ranks: leftmost first */
    CHECK_IDS(t, "ab c", 0, 256, ' ', 'c'); /* merges never cross pre-tokenizer words */
    CHECK_IDS(t, "x", 0, 'x');
    tok_destroy(t);
}

TEST(bpe_handles_long_words_with_many_merges)
{
    struct tokenizer *t = hand_vocab("gpt2");
    REQUIRE(t);
    enum { N = 20000 };
    char *s = malloc(3 * N + 1);
    REQUIRE(s);
    for (int i = 0; i < N; i++) memcpy(s + 3 * i, "abc", 3);
    s[3 * N] = 0;
    struct tok_vec ids = { 0 };
    char err[256];
    CHECK(tok_encode(t, s, 3 * N, 0, &ids, err, sizeof err) == 0);
    CHECK_EQ_INT(ids.n, N);
    int all = 1;
    for (size_t i = 0; i < ids.n; i++) all &= ids.ids[i] == 258;
    CHECK(all);
    tok_vec_free(&ids);
    free(s);
    tok_destroy(t);
}

static void check_split(const struct pretok *p, const char *text, const char *const *want, size_t n_want, int line)
{
    struct pretok_spans spans = { 0 };
    char err[256];
    if (pretok_split(p, text, strlen(text), &spans, err, sizeof err)) {
        test_fail_at(__FILE__, line, "split \"%s\": %s", text, err);
        return;
    }
    int same = spans.n == n_want;
    for (size_t i = 0; same && i < n_want; i++)
        same = spans.v[i].len == strlen(want[i]) && !memcmp(text + spans.v[i].off, want[i], spans.v[i].len);
    if (!same) {
        char got[1024] = "";
        size_t o = 0;
        for (size_t i = 0; i < spans.n && o < 900; i++)
            o += (size_t)snprintf(got + o, sizeof got - o, "[%.*s]", (int)spans.v[i].len, text + spans.v[i].off);
        test_fail_at(__FILE__, line, "split \"%s\": got %s (%zu pieces), expected %zu", text, got, spans.n, n_want);
    }
    pretok_spans_free(&spans);
}
#define CHECK_SPLIT(p, text, ...)                                                             \
    do {                                                                                      \
        static const char *const want_[] = { __VA_ARGS__ };                                   \
        check_split(p, text, want_, sizeof want_ / sizeof want_[0], __LINE__);                \
    } while (0)

TEST(deepseek_v3_pretokenizer_splits_digits_cjk_letters_and_spaces)
{
    struct pretok *p;
    char err[256];
    REQUIRE(pretok_create(&p, "joyai-llm", err, sizeof err) == 0);
    CHECK_STR(pretok_name(p), "deepseek-v3");
    /* digits in runs of at most three; CJK and kana runs split off their space */
    CHECK_SPLIT(p, "abc 1234 日本語テスト", "abc", " ", "123", "4", " ", "日本語テスト");
    /* punctuation + ASCII letters stick together; a space joins the punctuation after it */
    CHECK_SPLIT(p, "Hello, world!\n\nok", "Hello", ",", " world", "!\n\n", "ok");
    /* a space before a letter joins the word; a space run keeps its last space for it */
    CHECK_SPLIT(p, "a   b", "a", "  ", " b");
    CHECK_SPLIT(p, "x.Length  \n", "x", ".Length", "  \n");
    pretok_destroy(p);
}

TEST(gpt2_pretokenizer_splits_contractions_and_categories)
{
    struct pretok *p;
    char err[256];
    REQUIRE(pretok_create(&p, "gpt-2", err, sizeof err) == 0);
    CHECK_SPLIT(p, "I'll go 42x!?", "I", "'ll", " go", " 42", "x", "!?");
    CHECK_SPLIT(p, "é ü", "é", " ü");
    /* NEL (U+0085) is whitespace, as in the HF regex engines: each one before a letter
     * is split off rather than joined as punctuation */
    CHECK_SPLIT(p, "\xc2\x85\xc2\x85" "b", "\xc2\x85", "\xc2\x85", "b");
    pretok_destroy(p);
}

TEST(unknown_pretokenizer_name_is_refused_with_its_name)
{
    struct pretok *p;
    char err[256] = "";
    CHECK(pretok_create(&p, "llama-bpe", err, sizeof err) < 0);
    CHECK(p == NULL);
    CHECK(strstr(err, "llama-bpe") != NULL);
}

/* Random valid UTF-8 over ASCII, Latin, Greek/Cyrillic, CJK, kana, emoji, digits and
 * whitespace, with a fixed seed. */
static size_t random_utf8(unsigned *seed, char *out, size_t max_chars)
{
    static const uint32_t ranges[][2] = { { 0x20, 0x7E }, { '0', '9' },         { 0xA0, 0x24F },
                                          { 0x370, 0x4FF }, { 0x3040, 0x30FF }, { 0x4E00, 0x9FA5 },
                                          { 0x1F300, 0x1F6FF }, { '\t', '\r' }, { 0x2000, 0x206F } };
    size_t n = (size_t)rand_r(seed) % max_chars, o = 0;
    for (size_t i = 0; i < n; i++) {
        const uint32_t *r = ranges[(size_t)rand_r(seed) % (sizeof ranges / sizeof ranges[0])];
        uint32_t c = r[0] + (uint32_t)rand_r(seed) % (r[1] - r[0] + 1);
        if (c < 0x80) {
            out[o++] = (char)c;
        } else if (c < 0x800) {
            out[o++] = (char)(0xC0 | (c >> 6)), out[o++] = (char)(0x80 | (c & 0x3F));
        } else if (c < 0x10000) {
            out[o++] = (char)(0xE0 | (c >> 12)), out[o++] = (char)(0x80 | ((c >> 6) & 0x3F));
            out[o++] = (char)(0x80 | (c & 0x3F));
        } else {
            out[o++] = (char)(0xF0 | (c >> 18)), out[o++] = (char)(0x80 | ((c >> 12) & 0x3F));
            out[o++] = (char)(0x80 | ((c >> 6) & 0x3F)), out[o++] = (char)(0x80 | (c & 0x3F));
        }
    }
    return o;
}

static void check_roundtrip(const struct tokenizer *t, const char *s, size_t len, int line)
{
    struct tok_vec ids = { 0 };
    char err[256], *back = NULL;
    size_t back_len = 0;
    if (tok_encode(t, s, len, 0, &ids, err, sizeof err) ||
        tok_decode(t, ids.ids, ids.n, 0, &back, &back_len, err, sizeof err)) {
        test_fail_at(__FILE__, line, "round trip: %s", err);
    } else if (back_len != len || memcmp(back, s, len)) {
        test_fail_at(__FILE__, line, "round trip of %zu bytes gave %zu bytes: \"%.*s\" vs \"%.*s\"", len, back_len,
                     (int)(len > 60 ? 60 : len), s, (int)(back_len > 60 ? 60 : back_len), back);
    }
    free(back);
    tok_vec_free(&ids);
}

static void roundtrip_random(const char *fixture)
{
    struct tokenizer *t = load(test_fixture(fixture));
    REQUIRE(t);
    unsigned seed = 12345;
    char buf[64 * 4];
    for (int i = 0; i < 300 && !test_failed(); i++) {
        size_t len = random_utf8(&seed, buf, 64);
        check_roundtrip(t, buf, len, __LINE__);
    }
    tok_destroy(t);
}

TEST(decode_of_encode_is_identity_on_random_utf8_deepseek_llm) { roundtrip_random("vocab/ggml-vocab-deepseek-llm.gguf"); }
TEST(decode_of_encode_is_identity_on_random_utf8_v4_tiny) { roundtrip_random("model/v4-tiny-f32.gguf"); }
TEST(decode_of_encode_is_identity_on_random_utf8_gpt2) { roundtrip_random("vocab/ggml-vocab-gpt-2.gguf"); }

TEST(invalid_utf8_becomes_byte_tokens_and_decodes_to_the_same_bytes)
{
    struct tokenizer *t = load(test_fixture("model/v4-tiny-f32.gguf"));
    REQUIRE(t);
    static const struct { const char *s; size_t len; } cases[] = {
#define CASE(lit) { lit, sizeof lit - 1 }
        CASE("\xff"), CASE("a\x80" "b"), CASE("\xc3"), CASE("caf\xc3"), CASE("\xe6\x97"), CASE("\xed\xa0\x80"),
        CASE("\xc0\xaf"), CASE("\xf4\x90\x80\x80"), CASE("ok \xfe\xfe 12\xe4\xb8 \xe4\xb8\xad\xe6"),
        CASE("\x00\x01 tail"),
#undef CASE
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) check_roundtrip(t, cases[i].s, cases[i].len, __LINE__);
    /* a lone 0xFF is exactly the token of byte 0xFF's symbol "ÿ" */
    struct tok_vec ids = { 0 };
    char err[256];
    REQUIRE(tok_encode(t, "\xff", 1, 0, &ids, err, sizeof err) == 0);
    REQUIRE(ids.n == 1);
    size_t len;
    const char *text = tok_text(t, ids.ids[0], &len);
    CHECK(len == 2 && !memcmp(text, "\xc3\xbf", 2));
    tok_vec_free(&ids);
    tok_destroy(t);
}

TEST(control_tokens_are_literal_text_unless_parsing_special)
{
    struct tokenizer *t = load(test_fixture("model/v4-tiny-f32.gguf"));
    REQUIRE(t);
    int32_t user = tok_find_special(t, "<｜User｜>"), think = tok_find_special(t, "</think>");
    CHECK(user >= 0 && think >= 0 && user != think);
    CHECK(tok_find_special(t, "<｜user｜>") == -1);
    CHECK(tok_find_special(t, "a") == -1); /* a normal token is not special */
    const char *text = "hi<｜User｜>x</think>";
    struct tok_vec plain = { 0 }, special = { 0 };
    char err[256];
    REQUIRE(tok_encode(t, text, strlen(text), 0, &plain, err, sizeof err) == 0);
    REQUIRE(tok_encode(t, text, strlen(text), TOK_ENCODE_PARSE_SPECIAL, &special, err, sizeof err) == 0);
    for (size_t i = 0; i < plain.n; i++) CHECK(plain.ids[i] != user && plain.ids[i] != think);
    /* parsed: "hi" literal, the User token, "x" literal, the /think token */
    struct tok_vec hi = { 0 }, x = { 0 };
    REQUIRE(tok_encode(t, "hi", 2, 0, &hi, err, sizeof err) == 0);
    REQUIRE(tok_encode(t, "x", 1, 0, &x, err, sizeof err) == 0);
    REQUIRE(special.n == hi.n + 1 + x.n + 1);
    CHECK(!memcmp(special.ids, hi.ids, hi.n * sizeof(int32_t)));
    CHECK_EQ_INT(special.ids[hi.n], user);
    CHECK(!memcmp(special.ids + hi.n + 1, x.ids, x.n * sizeof(int32_t)));
    CHECK_EQ_INT(special.ids[special.n - 1], think);
    /* decoding: control tokens render only when asked */
    char *s;
    size_t n;
    REQUIRE(tok_decode(t, special.ids, special.n, 0, &s, &n, err, sizeof err) == 0);
    CHECK_STR(s, "hix");
    free(s);
    REQUIRE(tok_decode(t, special.ids, special.n, TOK_DECODE_SPECIAL, &s, &n, err, sizeof err) == 0);
    CHECK_STR(s, text);
    free(s);
    tok_vec_free(&plain);
    tok_vec_free(&special);
    tok_vec_free(&hi);
    tok_vec_free(&x);
    tok_destroy(t);
}

TEST(parse_special_prefers_the_longest_token_and_user_defined_ones)
{
    struct tokenizer *t = hand_vocab("gpt2");
    REQUIRE(t);
    CHECK_IDS(t, "<ctl>abc<ud>", TOK_ENCODE_PARSE_SPECIAL, 259, 258, 260);
    CHECK_IDS(t, "<ctl", TOK_ENCODE_PARSE_SPECIAL, '<', 'c', 't', 'l');
    CHECK_EQ_INT(tok_bos(t), 259);
    CHECK_EQ_INT(tok_eos(t), -1);
    tok_destroy(t);
}

TEST(streaming_detokenizer_never_emits_partial_utf8)
{
    struct tokenizer *t = load(test_fixture("vocab/ggml-vocab-gpt-2.gguf"));
    REQUIRE(t);
    /* GPT-2 splits these emoji and CJK characters across several byte tokens */
    const char *text = "🚀 (normal) 😶‍🌫️ 我想在apple工作 ✅ done";
    struct tok_vec ids = { 0 };
    char err[256];
    REQUIRE(tok_encode(t, text, strlen(text), 0, &ids, err, sizeof err) == 0);
    struct tok_stream st;
    tok_stream_init(&st, t, 0);
    size_t cap = tok_stream_buf_size(t);
    char *buf = malloc(cap), all[512];
    size_t o = 0;
    int held = 0;
    for (size_t i = 0; i < ids.n; i++) {
        int n = tok_stream_feed(&st, ids.ids[i], buf, cap);
        REQUIRE(n >= 0);
        CHECK(valid_utf8(buf, (size_t)n));
        if (n == 0) held++;
        memcpy(all + o, buf, (size_t)n);
        o += (size_t)n;
    }
    CHECK(held > 0); /* some token really ended mid-character */
    CHECK_EQ_INT(tok_stream_flush(&st, buf, cap), 0);
    all[o] = 0;
    CHECK_STR(all, text);
    CHECK(tok_stream_feed(&st, -1, buf, cap) == -1);
    CHECK(tok_stream_feed(&st, (int32_t)tok_n_vocab(t), buf, cap) == -1);
    free(buf);
    tok_vec_free(&ids);
    tok_destroy(t);
}

TEST(streaming_detokenizer_replaces_invalid_bytes)
{
    struct tokenizer *t = hand_vocab("gpt2");
    REQUIRE(t);
    struct tok_stream st;
    tok_stream_init(&st, t, 0);
    size_t cap = tok_stream_buf_size(t);
    char *buf = malloc(cap);
    /* ids are bytes in the hand vocabulary */
    CHECK_EQ_INT(tok_stream_feed(&st, 0xE4, buf, cap), 0);  /* held: lead of a 3-byte sequence */
    CHECK_EQ_INT(tok_stream_feed(&st, 0xB8, buf, cap), 0);
    CHECK_EQ_INT(tok_stream_feed(&st, 0xAD, buf, cap), 3);  /* 中 */
    CHECK(!memcmp(buf, "\xe4\xb8\xad", 3));
    CHECK_EQ_INT(tok_stream_feed(&st, 0xFF, buf, cap), 3);  /* never valid: U+FFFD */
    CHECK(!memcmp(buf, "\xef\xbf\xbd", 3));
    CHECK_EQ_INT(tok_stream_feed(&st, 0xC3, buf, cap), 0);
    CHECK_EQ_INT(tok_stream_feed(&st, 'a', buf, cap), 4);   /* broken sequence, then 'a' */
    CHECK(!memcmp(buf, "\xef\xbf\xbd" "a", 4));
    CHECK_EQ_INT(tok_stream_feed(&st, 0xF0, buf, cap), 0);
    CHECK_EQ_INT(tok_stream_flush(&st, buf, cap), 3);       /* incomplete at the end */
    CHECK_EQ_INT(tok_stream_flush(&st, buf, cap), 0);
    free(buf);
    tok_destroy(t);
}

static void check_bad_vocab(const char *pre, const char *model, const char *const *merges, uint64_t n_merges,
                            const char *want_in_err, int line)
{
    char path[600], err[512] = "";
    snprintf(path, sizeof path, "%s/bad.gguf", test_tmpdir());
    if (tok_vocab_write(path, pre, model, merges, n_merges)) {
        test_fail_at(__FILE__, line, "cannot write %s", path);
        return;
    }
    struct tokenizer *t = (struct tokenizer *)1;
    if (tok_create_from_file(&t, path, err, sizeof err) >= 0 || t != NULL)
        test_fail_at(__FILE__, line, "malformed vocabulary accepted");
    else if (!strstr(err, want_in_err))
        test_fail_at(__FILE__, line, "error \"%s\" does not mention \"%s\"", err, want_in_err);
}

TEST(malformed_vocabularies_are_refused_with_the_key_named)
{
    static const char *const no_space[] = { "b c", "abc" };
    check_bad_vocab("gpt2", "llama", NULL, 0, "tokenizer.ggml.model", __LINE__);
    check_bad_vocab("nonsense", NULL, NULL, 0, "nonsense", __LINE__);
    check_bad_vocab("gpt2", NULL, no_space, 2, "tokenizer.ggml.merges[1]", __LINE__);
    /* a file without any tokenizer */
    char path[600], err[512] = "";
    snprintf(path, sizeof path, "%s/none.gguf", test_tmpdir());
    struct gguf_writer *w = gguf_writer_create();
    REQUIRE(w);
    REQUIRE(gguf_writer_add_str(w, "tokenizer.ggml.model", "gpt2") == 0);
    REQUIRE(gguf_writer_write_file(w, path, err, sizeof err) == 0);
    gguf_writer_destroy(w);
    struct tokenizer *t;
    CHECK(tok_create_from_file(&t, path, err, sizeof err) < 0);
    CHECK(strstr(err, "tokenizer.ggml.tokens") != NULL);
}

TEST(merges_with_unknown_parts_are_skipped_not_fatal)
{
    static const char *const merges[] = { "q zz", "b c" };
    char path[600], err[512];
    snprintf(path, sizeof path, "%s/skip.gguf", test_tmpdir());
    REQUIRE(tok_vocab_write(path, "gpt2", NULL, merges, 2) == 0);
    struct tokenizer *t;
    REQUIRE(tok_create_from_file(&t, path, err, sizeof err) == 0);
    CHECK_IDS(t, "abc", 0, 'a', 257);
    tok_destroy(t);
}

TEST(decode_refuses_out_of_range_ids_naming_the_index)
{
    struct tokenizer *t = hand_vocab("gpt2");
    REQUIRE(t);
    int32_t ids[] = { 'a', TOK_VOCAB_N };
    char *s = (char *)1, err[256] = "";
    size_t n;
    CHECK(tok_decode(t, ids, 2, 0, &s, &n, err, sizeof err) < 0);
    CHECK(s == NULL);
    CHECK(strstr(err, "token 1") != NULL);
    size_t len;
    CHECK(tok_piece(t, -5, 0, &len) == NULL && len == 0);
    CHECK(tok_text(t, TOK_VOCAB_N, &len) == NULL);
    CHECK_EQ_INT(tok_get_type(t, 259), TOK_TYPE_CONTROL);
    tok_destroy(t);
}

TEST(tokenize_and_detokenize_commands_round_trip_text)
{
    const char *model = test_fixture("model/v4-tiny-f32.gguf");
    char cmd[8192], out[4096], expect[4096];
    /* plain: control tokens are literal text */
    snprintf(cmd, sizeof cmd, "printf 'Hi <｜User｜> 123' | %s tokenize -m %s", test_flashbox_bin(), model);
    REQUIRE(test_run_cmd(cmd, out, sizeof out) == 0);
    struct tokenizer *t = load(model);
    REQUIRE(t);
    struct tok_vec ids = { 0 };
    char err[256];
    REQUIRE(tok_encode(t, "Hi <｜User｜> 123", strlen("Hi <｜User｜> 123"), 0, &ids, err, sizeof err) == 0);
    size_t o = 0;
    for (size_t i = 0; i < ids.n; i++) o += (size_t)sprintf(expect + o, i ? ",%d" : "%d", ids.ids[i]);
    sprintf(expect + o, "\n");
    CHECK_STR(out, expect);
    /* --special: the control token is one id; detokenize gives the text back */
    snprintf(cmd, sizeof cmd, "printf 'Hi<｜User｜>there' | %s tokenize --special -m %s | %s detokenize -m %s",
             test_flashbox_bin(), model, test_flashbox_bin(), model);
    REQUIRE(test_run_cmd(cmd, out, sizeof out) == 0);
    CHECK_STR(out, "Hi<｜User｜>there");
    snprintf(cmd, sizeof cmd, "printf '299' | %s detokenize -m %s", test_flashbox_bin(), model);
    REQUIRE(test_run_cmd(cmd, out, sizeof out) == 0);
    CHECK_STR(out, "<｜User｜>");
    snprintf(cmd, sizeof cmd, "printf '1,99999' | %s detokenize -m %s 2>&1", test_flashbox_bin(), model);
    CHECK(test_run_cmd(cmd, out, sizeof out) != 0);
    CHECK(strstr(out, "99999") != NULL);
    tok_vec_free(&ids);
    tok_destroy(t);
}

static size_t unhex(const char *s, size_t n, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i + 1 < n; i += 2) {
        unsigned v;
        if (sscanf(s + i, "%2x", &v) != 1) return (size_t)-1;
        out[o++] = (char)v;
    }
    return o;
}

TEST(deepseek_v3_pretokenizer_matches_hf_tokenizers_on_random_text)
{
    /* tests/data/pretok-deepseek-v3.txt: splits computed by HF tokenizers (see its header) */
    FILE *f = fopen("tests/data/pretok-deepseek-v3.txt", "r");
    REQUIRE(f);
    struct pretok *p;
    char err[256];
    REQUIRE(pretok_create(&p, "deepseek-v3", err, sizeof err) == 0);
    struct pretok_spans spans = { 0 };
    static char line[8192], text[4096], piece[4096];
    int n_cases = 0;
    while (fgets(line, sizeof line, f) && !test_failed()) {
        if (line[0] == '#') continue;
        char *tab = strchr(line, '\t');
        REQUIRE(tab);
        size_t len = unhex(line, (size_t)(tab - line), text);
        REQUIRE(len != (size_t)-1);
        REQUIRE(pretok_split(p, text, len, &spans, err, sizeof err) == 0);
        size_t k = 0;
        for (char *tokp = strtok(tab + 1, " \n"); tokp; tokp = strtok(NULL, " \n"), k++) {
            size_t pl = unhex(tokp, strlen(tokp), piece);
            if (k >= spans.n || spans.v[k].len != pl || memcmp(text + spans.v[k].off, piece, pl)) {
                test_fail_at(__FILE__, __LINE__, "case %d (\"%.*s\"): piece %zu differs", n_cases, (int)len, text, k);
                break;
            }
        }
        if (!test_failed() && k != spans.n)
            test_fail_at(__FILE__, __LINE__, "case %d: %zu pieces, expected %zu", n_cases, spans.n, k);
        n_cases++;
    }
    CHECK_EQ_INT(n_cases, 600);
    pretok_spans_free(&spans);
    pretok_destroy(p);
    fclose(f);
}
