/* Provenance end to end: `flashbox convert` records the source files and their SHA-256,
 * its parameters and version in the GGUF; `bundle create` carries that record, the GGUF's
 * SHA-256 and the release notes into the signed manifest (format version 2); `inspect`,
 * `update verify` and `update status` show it; a bundle without provenance keeps manifest
 * version 1 and stays valid; malformed provenance sections are refused. */
#include "tests/harness.h"
#include "tests/tiny_ckpt.h"
#include "tests/update_support.h"

#include "update/keys.h"
#include "update/manifest.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

/* The first 64 characters `sha256sum path` prints. */
static void sha256sum(const char *path, char hex[65])
{
    char out[256] = "";
    if (upd_sh(out, sizeof out, "sha256sum %s", path)) test_fail_at(__FILE__, __LINE__, "sha256sum %s failed", path);
    snprintf(hex, 65, "%.64s", out);
}

TEST(provenance_from_convert_through_bundle_to_update_status)
{
    struct upd_box b;
    REQUIRE(upd_box_init(&b) == 0);
    char ckpt[700], gguf[700], notes[700], bundle[700], old[700];
    static char out[65536];
    snprintf(ckpt, sizeof ckpt, "%s/ckpt", b.root);
    snprintf(gguf, sizeof gguf, "%s/converted.gguf", b.root);
    snprintf(notes, sizeof notes, "%s/notes.txt", b.root);
    snprintf(bundle, sizeof bundle, "%s/v1.fbx", b.root);
    snprintf(old, sizeof old, "%s/plain.fbx", b.root);
    REQUIRE(tiny_ckpt_write(ckpt, NULL, 2, 3, TINY_OFFICIAL) == 0);
    REQUIRE(upd_sh(out, sizeof out, "%s convert --hf %s --out %s --dense bf16 --quiet", test_flashbox_bin(), ckpt, gguf) == 0);

    /* The GGUF's record: every source file with its SHA-256, the parameters, the version. */
    REQUIRE(upd_sh(out, sizeof out, "%s inspect -m %s", test_flashbox_bin(), gguf) == 0);
    char config_sha[65];
    char config_path[800];
    snprintf(config_path, sizeof config_path, "%s/config.json", ckpt);
    sha256sum(config_path, config_sha);
    CHECK(strstr(out, "provenance: {") != NULL);
    CHECK(strstr(out, "\"name\": \"config.json\"") != NULL);
    CHECK(strstr(out, config_sha) != NULL);
    CHECK(strstr(out, "\"dense\": \"bf16\"") != NULL);
    CHECK(strstr(out, "\"flashbox_version\"") != NULL);
    CHECK(strstr(out, ".safetensors\"") != NULL);

    /* bundle create carries it, with the GGUF's SHA-256 and the release notes. */
    FILE *f = fopen(notes, "w");
    REQUIRE(f != NULL);
    fputs("Site release 7: \"refund\" answers fixed; ünïcode kept.\n", f);
    fclose(f);
    REQUIRE(upd_make_bundle(&b, bundle, "1.0", 1, gguf, NULL) == 0); /* no notes: the record alone */
    REQUIRE(upd_cli(&b, out, sizeof out, "verify", bundle) == 0);
    CHECK(strstr(out, config_sha) != NULL && strstr(out, "release_notes") == NULL);
    char extra[800];
    snprintf(extra, sizeof extra, "--release-notes %s", notes);
    REQUIRE(upd_make_bundle(&b, bundle, "1.0", 1, gguf, extra) == 0);
    char gguf_sha[65];
    sha256sum(gguf, gguf_sha);
    REQUIRE(upd_cli(&b, out, sizeof out, "verify", bundle) == 0);
    CHECK(strstr(out, gguf_sha) != NULL);
    CHECK(strstr(out, "refund") != NULL);
    CHECK(strstr(out, config_sha) != NULL);
    /* The signed manifest is format version 2. */
    REQUIRE(upd_sh(out, sizeof out, "od -An -tu4 -j32 -N4 %s", bundle) == 0);
    CHECK_EQ_INT(atoi(out), MANIFEST_FORMAT_PROVENANCE);

    /* Installed: update status shows it for the slot. */
    REQUIRE(upd_cli(&b, out, sizeof out, "install", bundle) == 0);
    REQUIRE(upd_cli(&b, out, sizeof out, "status", NULL) == 0);
    CHECK(strstr(out, "provenance: {") != NULL);
    CHECK(strstr(out, gguf_sha) != NULL);
    CHECK(strstr(out, "\\u00fcn\\u00efcode") != NULL || strstr(out, "ünïcode") != NULL);

    /* A model without a record and no notes: no provenance, manifest version 1, valid. */
    char plain[700];
    snprintf(plain, sizeof plain, "%s/plain.gguf", b.root);
    REQUIRE(upd_write_model(plain, "plain", 5, 0) == 0);
    REQUIRE(upd_make_bundle(&b, old, "1.1", 1, plain, NULL) == 0);
    REQUIRE(upd_sh(out, sizeof out, "od -An -tu4 -j32 -N4 %s", old) == 0);
    CHECK_EQ_INT(atoi(out), MANIFEST_FORMAT_VERSION);
    CHECK_EQ_INT(upd_cli(&b, out, sizeof out, "install", old), 0);
    CHECK(strstr(out, "provenance: ") == NULL);
}

/* A signed-manifest image with the given provenance bytes (NULL: none). */
static int encode(const char *prov, uint32_t len, uint8_t **buf, size_t *n)
{
    static uint8_t hash[32];
    struct manifest m;
    memset(&m, 0, sizeof m);
    snprintf(m.product, sizeof m.product, "p");
    snprintf(m.version, sizeof m.version, "1");
    m.n_payloads = 1;
    snprintf(m.payloads[0].name, sizeof m.payloads[0].name, "model.gguf");
    m.payloads[0].size = 10;
    m.payloads[0].chunk_size = 4096;
    m.payloads[0].n_chunks = 1;
    m.payloads[0].chunk_hashes = hash;
    m.provenance = prov;
    m.provenance_len = len;
    char err[256];
    return manifest_encode(&m, buf, n, err, sizeof err);
}

TEST(manifest_provenance_section_round_trips_and_refuses_malformed_text)
{
    uint8_t *buf;
    size_t n;
    char err[256];
    struct manifest m;
    const char *p = "{\"gguf_sha256\":\"ab\",\"release_notes\":\"caf\xc3\xa9\"}";
    REQUIRE(encode(p, (uint32_t)strlen(p), &buf, &n) == 0);
    REQUIRE(manifest_parse(&m, buf, n, err, sizeof err) == 0);
    CHECK_EQ_INT(m.format_version, MANIFEST_FORMAT_PROVENANCE);
    CHECK(m.provenance_len == strlen(p) && !memcmp(m.provenance, p, m.provenance_len));
    /* Truncated by one byte, or one byte more: refused. */
    CHECK(manifest_parse(&m, buf, n - 1, err, sizeof err) != 0);
    uint8_t *longer = malloc(n + 1);
    memcpy(longer, buf, n);
    longer[n] = ' ';
    CHECK(manifest_parse(&m, longer, n + 1, err, sizeof err) != 0);
    CHECK(strstr(err, "trailing") != NULL);
    free(longer);
    /* Bad text inside a well-framed section: invalid UTF-8, an overlong form, a surrogate, NUL. */
    const char *bad[] = { "ab\xff", "\xc0\xaf", "\xed\xa0\x80", "a\0b", "caf\xc3" };
    size_t bad_len[] = { 3, 2, 3, 3, 4 };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        size_t off = n - strlen(p); /* the text is last; write the bad one over it */
        uint8_t *img = malloc(off + bad_len[i]);
        memcpy(img, buf, off);
        memcpy(img + off, bad[i], bad_len[i]);
        for (int k = 0; k < 4; k++) img[off - 4 + k] = (uint8_t)(bad_len[i] >> (8 * k));
        err[0] = 0;
        if (manifest_parse(&m, img, off + bad_len[i], err, sizeof err) == 0) test_fail_at(__FILE__, __LINE__, "accepted bad text %zu", i);
        else CHECK(strstr(err, "provenance") != NULL);
        free(img);
    }
    /* A length over the cap is refused before reading. */
    size_t off = n - strlen(p);
    uint32_t huge = MANIFEST_MAX_PROVENANCE + 1;
    for (int k = 0; k < 4; k++) buf[off - 4 + k] = (uint8_t)(huge >> (8 * k));
    CHECK(manifest_parse(&m, buf, n, err, sizeof err) != 0);
    free(buf);
    /* The encoder refuses what the parser would (empty, not UTF-8). */
    CHECK(encode("", 0, &buf, &n) != 0);
    CHECK(encode("\xff", 1, &buf, &n) != 0);
    /* Without provenance: format version 1, byte for byte what older firmware reads. */
    REQUIRE(encode(NULL, 0, &buf, &n) == 0);
    REQUIRE(manifest_parse(&m, buf, n, err, sizeof err) == 0);
    CHECK_EQ_INT(m.format_version, MANIFEST_FORMAT_VERSION);
    CHECK(m.provenance == NULL);
    free(buf);
}
