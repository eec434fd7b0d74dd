/* The manifest and state-file parsers on malformed input: every truncation, trailing
 * bytes, each field out of range, and hand-patched encodings the encoder never writes. */
#include "tests/harness.h"
#include "tests/update_support.h"

#include "update/keys.h"
#include "update/manifest.h"
#include "update/store.h"

#include <stdlib.h>
#include <string.h>

static uint8_t g_hashes[5 * 32];

/* Two payloads (3 chunks and 2 chunks), tokens and one rotated key. */
static void sample(struct manifest *m)
{
    memset(m, 0, sizeof *m);
    for (size_t i = 0; i < sizeof g_hashes; i++) g_hashes[i] = (uint8_t)(i * 7 + 1);
    snprintf(m->product, sizeof m->product, "flashbox-v4-flash");
    snprintf(m->version, sizeof m->version, "2026.11.1+rc2");
    m->epoch = 0x0102030405060708ull;
    m->created = 1790000000;
    m->n_prompt = 3;
    m->prompt[0] = 0, m->prompt[1] = 17, m->prompt[2] = 129279;
    m->n_expected = 2;
    m->expected[0] = 5, m->expected[1] = 6;
    m->n_keys = 1;
    memset(m->keys[0], 0xab, 32);
    m->n_payloads = 2;
    snprintf(m->payloads[0].name, sizeof m->payloads[0].name, "model.gguf");
    m->payloads[0].size = 2 * 4096 + 1;
    m->payloads[0].chunk_size = 4096;
    m->payloads[0].n_chunks = 3;
    m->payloads[0].chunk_hashes = g_hashes;
    snprintf(m->payloads[1].name, sizeof m->payloads[1].name, "firmware.b");
    m->payloads[1].size = 8192;
    m->payloads[1].chunk_size = 4096;
    m->payloads[1].n_chunks = 2;
    m->payloads[1].chunk_hashes = g_hashes + 3 * 32;
}

TEST(manifest_encode_then_parse_gives_back_every_field)
{
    struct manifest m, p;
    sample(&m);
    uint8_t *buf;
    size_t len;
    char err[256];
    REQUIRE(manifest_encode(&m, &buf, &len, err, sizeof err) == 0);
    /* hand-computed length: 8+4 + 2+17 + 2+13 + 8+8 + 4+12 + 4+8 + 4+32 + 4
     *                       + (2+10+8+4+8+96) + (2+10+8+4+8+64) */
    CHECK_EQ_INT(len, 12 + 19 + 15 + 16 + 16 + 12 + 36 + 4 + 128 + 96);
    /* little-endian epoch right after the version string */
    CHECK_EQ_INT(buf[12 + 19 + 15], 0x08);
    CHECK_EQ_INT(buf[12 + 19 + 15 + 7], 0x01);
    if (manifest_parse(&p, buf, len, err, sizeof err)) test_fail_at(__FILE__, __LINE__, "parse: %s", err);
    CHECK_STR(p.product, m.product);
    CHECK_STR(p.version, m.version);
    CHECK(p.epoch == m.epoch);
    CHECK(p.created == m.created);
    CHECK_EQ_INT(p.n_prompt, 3);
    CHECK_EQ_INT(p.prompt[2], 129279);
    CHECK_EQ_INT(p.expected[1], 6);
    CHECK_EQ_INT(p.n_keys, 1);
    CHECK_EQ_INT(p.keys[0][31], 0xab);
    CHECK_EQ_INT(p.n_payloads, 2);
    CHECK_STR(p.payloads[1].name, "firmware.b");
    CHECK(p.payloads[0].size == 8193);
    CHECK(memcmp(p.payloads[0].chunk_hashes, g_hashes, 96) == 0);
    CHECK(memcmp(p.payloads[1].chunk_hashes, g_hashes + 96, 64) == 0);
    CHECK(manifest_find_payload(&p, "firmware.b") == &p.payloads[1]);
    CHECK(manifest_find_payload(&p, "nope") == NULL);
    free(buf);
}

TEST(manifest_parse_refuses_every_truncation_and_a_trailing_byte)
{
    struct manifest m, p;
    sample(&m);
    uint8_t *buf;
    size_t len;
    char err[256];
    REQUIRE(manifest_encode(&m, &buf, &len, err, sizeof err) == 0);
    for (size_t n = 0; n < len; n++) {
        uint8_t *copy = malloc(n ? n : 1); /* exact size, so ASan sees any overread */
        memcpy(copy, buf, n);
        if (manifest_parse(&p, copy, n, err, sizeof err) == 0) test_fail_at(__FILE__, __LINE__, "length %zu accepted", n);
        free(copy);
    }
    uint8_t *longer = malloc(len + 1);
    memcpy(longer, buf, len);
    longer[len] = 0;
    CHECK_EQ_INT(manifest_parse(&p, longer, len + 1, err, sizeof err), -1);
    CHECK(strstr(err, "1 trailing bytes") != NULL);
    free(longer);
    free(buf);
}

/* Encodes the sample, applies patch, parses; the error must contain want. */
static void expect_refused(void (*patch)(uint8_t *b, size_t len), const char *want, int line)
{
    struct manifest m, p;
    sample(&m);
    uint8_t *buf;
    size_t len;
    char err[256] = "";
    if (manifest_encode(&m, &buf, &len, err, sizeof err)) {
        test_fail_at(__FILE__, line, "encode: %s", err);
        return;
    }
    patch(buf, len);
    int rc = manifest_parse(&p, buf, len, err, sizeof err);
    if (rc == 0 || !strstr(err, want)) test_fail_at(__FILE__, line, "rc %d, want \"%s\", got \"%s\"", rc, want, err);
    free(buf);
}

/* Offsets in the sample encoding. */
#define OFF_PRODUCT 12
#define OFF_PAYLOADS (12 + 19 + 15 + 16 + 16 + 12 + 36)  /* the payload count */
#define OFF_P0 (OFF_PAYLOADS + 4)                          /* first payload's name length */
#define OFF_P0_CHUNK (OFF_P0 + 2 + 10 + 8)
#define OFF_P1 (OFF_P0 + 2 + 10 + 8 + 4 + 8 + 96)

static void bad_magic(uint8_t *b, size_t l) { (void)l; b[0] = 'X'; }
static void version_three(uint8_t *b, size_t l) { (void)l; b[8] = 3; } /* 1 and 2 (with provenance) are known */
static void product_empty(uint8_t *b, size_t l) { (void)l; b[OFF_PRODUCT] = 0; }
static void product_slash(uint8_t *b, size_t l) { (void)l; b[OFF_PRODUCT + 2 + 3] = '/'; }
static void product_nul(uint8_t *b, size_t l) { (void)l; b[OFF_PRODUCT + 2] = 0; }
static void product_long(uint8_t *b, size_t l) { (void)l; b[OFF_PRODUCT] = 65; }
static void chunk_not_pow2(uint8_t *b, size_t l) { (void)l; b[OFF_P0_CHUNK] = 1; }
static void chunk_too_small(uint8_t *b, size_t l) { (void)l; b[OFF_P0_CHUNK + 1] = 0x08; } /* 2048 */
static void chunks_mismatch(uint8_t *b, size_t l) { (void)l; b[OFF_P0_CHUNK + 4] = 2; }
static void too_many_payloads(uint8_t *b, size_t l) { (void)l; b[OFF_PAYLOADS] = 9; }
static void zero_payloads(uint8_t *b, size_t l) { (void)l; b[OFF_PAYLOADS] = 0; }
static void dup_name(uint8_t *b, size_t l) { (void)l; memcpy(b + OFF_P1 + 2, "model.gguf", 10); }
static void dot_name(uint8_t *b, size_t l) { (void)l; b[OFF_P1 + 2] = '.'; }
static void negative_token(uint8_t *b, size_t l) { (void)l; b[OFF_PRODUCT + 19 + 15 + 16 + 4 + 3] = 0x80; }
static void huge_size(uint8_t *b, size_t l)
{
    (void)l; /* size 2^63 at 4 KiB chunks claims 2^51 chunk hashes that are not there */
    uint8_t *size = b + OFF_P0 + 2 + 10;
    memset(size, 0, 8);
    size[7] = 0x80;
    uint8_t *n = size + 8 + 4;
    memset(n, 0, 8);
    n[6] = 0x08; /* 2^51 */
}
static void too_many_tokens(uint8_t *b, size_t l) { (void)l; b[OFF_PRODUCT + 19 + 15 + 16] = 65; }
static void too_many_keys(uint8_t *b, size_t l) { (void)l; b[OFF_PAYLOADS - 36] = 9; }

TEST(manifest_parse_refuses_each_malformed_field_with_a_clear_message)
{
    expect_refused(bad_magic, "bad magic", __LINE__);
    expect_refused(version_three, "unknown format version 3", __LINE__);
    expect_refused(product_empty, "product is 0 bytes", __LINE__);
    expect_refused(product_slash, "product has byte 0x2f", __LINE__);
    expect_refused(product_nul, "product has byte 0x00", __LINE__);
    expect_refused(product_long, "product is 65 bytes", __LINE__);
    expect_refused(chunk_not_pow2, "expected a power of two", __LINE__);
    expect_refused(chunk_too_small, "chunk size 2048", __LINE__);
    expect_refused(chunks_mismatch, "has 2 chunk hashes, size 8193 at chunk 4096 needs 3", __LINE__);
    expect_refused(too_many_payloads, "9 payloads", __LINE__);
    expect_refused(zero_payloads, "0 payloads", __LINE__);
    expect_refused(dup_name, "appears twice", __LINE__);
    expect_refused(dot_name, "starts with '.'", __LINE__);
    expect_refused(negative_token, "token ids are >= 0", __LINE__);
    expect_refused(huge_size, "chunk hashes at byte", __LINE__);
    expect_refused(too_many_tokens, "prompt tokens count 65", __LINE__);
    expect_refused(too_many_keys, "9 trusted keys", __LINE__);
}

TEST(manifest_encode_refuses_what_the_parser_would_refuse)
{
    struct manifest m;
    uint8_t *buf;
    size_t len;
    char err[256];
    sample(&m);
    snprintf(m.payloads[1].name, sizeof m.payloads[1].name, "../etc");
    CHECK_EQ_INT(manifest_encode(&m, &buf, &len, err, sizeof err), -1);
    CHECK(strstr(err, "payload name has byte 0x2f") != NULL);
    sample(&m);
    m.payloads[0].n_chunks = 2;
    CHECK_EQ_INT(manifest_encode(&m, &buf, &len, err, sizeof err), -1);
    /* 2^30 chunk hashes of 32 bytes are far over the 4 MiB cap. */
    sample(&m);
    m.payloads[0].size = 1ull << 42;
    m.payloads[0].n_chunks = 1ull << 30;
    CHECK_EQ_INT(manifest_encode(&m, &buf, &len, err, sizeof err), -1);
    CHECK(strstr(err, "would be over 4194304 bytes") != NULL);
    /* Oversized input is refused before a byte is read. */
    struct manifest p;
    CHECK_EQ_INT(manifest_parse(&p, (const uint8_t *)"", MANIFEST_MAX_BYTES + 1, err, sizeof err), -1);
    CHECK(strstr(err, "the cap is 4194304") != NULL);
}

static int parse_state(const char *text, struct store_state *st, char *err, size_t err_len)
{
    return store_parse_state(text, strlen(text), st, err, err_len);
}

TEST(state_file_parser_reads_the_canonical_form_and_refuses_the_rest)
{
    struct store_state st;
    char err[256];
    REQUIRE(parse_state("flashbox-update-state 1\nepoch_floor 18446744073709551615\ntrial b\nboot_attempts 2\n"
                        "last_fallback slot a did not become ready\n", &st, err, sizeof err) == 0);
    CHECK(st.epoch_floor == UINT64_MAX);
    CHECK_EQ_INT(st.trial, 1);
    CHECK_EQ_INT(st.boot_attempts, 2);
    CHECK_STR(st.last_fallback, "slot a did not become ready");
    const char *bad[] = {
        "",
        "flashbox-update-state 2\nepoch_floor 0\ntrial -\nboot_attempts 0\nlast_fallback \n",
        "flashbox-update-state 1\nepoch_floor 18446744073709551616\ntrial -\nboot_attempts 0\nlast_fallback \n",
        "flashbox-update-state 1\nepoch_floor 01\ntrial -\nboot_attempts 0\nlast_fallback \n",
        "flashbox-update-state 1\nepoch_floor -1\ntrial -\nboot_attempts 0\nlast_fallback \n",
        "flashbox-update-state 1\nepoch_floor 1\ntrial c\nboot_attempts 0\nlast_fallback \n",
        "flashbox-update-state 1\nepoch_floor 1\ntrial -\nboot_attempts 4294967296\nlast_fallback \n",
        "flashbox-update-state 1\nepoch_floor 1\ntrial -\nboot_attempts 0\nlast_fallback ",
        "flashbox-update-state 1\nepoch_floor 1\ntrial -\nboot_attempts 0\nlast_fallback \nextra\n",
        "flashbox-update-state 1\ntrial -\nepoch_floor 1\nboot_attempts 0\nlast_fallback \n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (parse_state(bad[i], &st, err, sizeof err) == 0) test_fail_at(__FILE__, __LINE__, "bad state %zu accepted", i);
    CHECK_EQ_INT(store_parse_state("flashbox-update-state 1\n\0x", 26, &st, err, sizeof err), -1);
}

TEST(chunk_verification_reports_the_lowest_failing_chunk)
{
    struct upd_box b;
    REQUIRE(upd_box_init(&b) == 0);
    char payload[1024], bundle[1024], out[4096];
    snprintf(payload, sizeof payload, "%s/p.bin", b.root);
    snprintf(bundle, sizeof bundle, "%s/p.fbx", b.root);
    REQUIRE(upd_sh(out, sizeof out, "head -c 1000000 /dev/urandom > %s", payload) == 0);
    REQUIRE(upd_sh(out, sizeof out, "%s bundle create --key %s --product %s --version 1 --epoch 1 --model %s "
                   "--chunk-size 4K --selftest-tokens 0 --out %s", test_flashbox_bin(), b.priv, b.cfg.product, payload,
                   bundle) == 0);
    uint64_t base = upd_payload_offset(bundle);
    struct update_bundle_info info;
    REQUIRE(update_verify_bundle(&b.cfg, bundle, NULL, &info, out, sizeof out) == 0);
    CHECK_EQ_INT(info.payloads[0].n_chunks, 245);
    /* Damage chunks 200 and 31: whichever thread finds which first, 31 is reported. */
    REQUIRE(upd_flip_byte(bundle, base + 200 * 4096 + 9) == 0);
    REQUIRE(upd_flip_byte(bundle, base + 31 * 4096) == 0);
    CHECK_EQ_INT(update_verify_bundle(&b.cfg, bundle, NULL, &info, out, sizeof out), -1);
    CHECK(strstr(out, "chunk 31 of 245 (bytes 126976..131071)") != NULL);
}
