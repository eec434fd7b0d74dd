/* Signed updates through the real command line: round trip, and every refusal (tampered
 * chunk, manifest or signature, wrong key, truncation, wrong payload length, manifest over
 * the cap, rollback below the epoch floor, unknown manifest version, other product), each
 * with the active slot checked untouched against the fixture it was installed from. */
#include "tests/harness.h"
#include "tests/update_support.h"

#include "update/keys.h"
#include "update/manifest.h"
#include "update/store.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define F32_MODEL "model/v4-tiny-f32.gguf"
#define MIXED_MODEL "model/v4-tiny-mixed.gguf"

static char g_f32[4096], g_mixed[4096];

static void fixtures(void)
{
    snprintf(g_f32, sizeof g_f32, "%s", test_fixture(F32_MODEL));
    snprintf(g_mixed, sizeof g_mixed, "%s", test_fixture(MIXED_MODEL));
}

/* The active slot's model equals `model` byte for byte (an independent check of the
 * slot, not the slot's own manifest). */
static bool active_model_is(const struct upd_box *b, const char *model)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/active/model.gguf", b->data);
    return upd_files_equal(path, model);
}

TEST(update_round_trip_keygen_create_verify_install_status_rollback)
{
    fixtures();
    struct upd_box b;
    REQUIRE(upd_box_init(&b) == 0);
    struct stat st;
    REQUIRE(stat(b.priv, &st) == 0);
    CHECK_EQ_INT(st.st_mode & 0777, 0600);
    char b1[1024], b2[1024], out[8192];
    snprintf(b1, sizeof b1, "%s/v1.fbx", b.root);
    snprintf(b2, sizeof b2, "%s/v2.fbx", b.root);
    /* The full default self-test: 8 prompt tokens, 8 greedy tokens. */
    const char *full = "--prompt 0,17,42,99,123,7,300,5 --selftest-tokens 8";
    REQUIRE(upd_make_bundle(&b, b1, "1.0", 1, g_f32, full) == 0);
    REQUIRE(upd_make_bundle(&b, b2, "2.0", 1, g_mixed, full) == 0);

    CHECK_EQ_INT(upd_cli(&b, out, sizeof out, "verify", b1), 0);
    CHECK(strstr(out, "signature: Ed25519, good") != NULL);
    CHECK(strstr(out, "every chunk SHA-256 matched") != NULL);
    CHECK(strstr(out, "self-test: 8 greedy tokens recorded") != NULL);
    CHECK_EQ_INT(upd_active_slot(&b), -1);

    CHECK_EQ_INT(upd_cli(&b, out, sizeof out, "install", b1), 0);
    CHECK_EQ_INT(upd_active_slot(&b), 0);
    CHECK(active_model_is(&b, g_f32));
    CHECK_EQ_INT(upd_cli(&b, out, sizeof out, "install", b2), 0);
    CHECK_EQ_INT(upd_active_slot(&b), 1);
    CHECK(active_model_is(&b, g_mixed));

    CHECK_EQ_INT(upd_cli(&b, out, sizeof out, "status", NULL), 0);
    CHECK(strstr(out, "active:      b") != NULL);
    CHECK(strstr(out, "slot a   valid   product flashbox-v4-flash, version 1.0, epoch 1") != NULL);
    CHECK(strstr(out, "slot b*  valid   product flashbox-v4-flash, version 2.0, epoch 1") != NULL);

    CHECK_EQ_INT(upd_cli(&b, out, sizeof out, "rollback", NULL), 0);
    CHECK_EQ_INT(upd_active_slot(&b), 0);
    CHECK(active_model_is(&b, g_f32));
    CHECK_EQ_INT(upd_cli(&b, out, sizeof out, "verify-slot", "a"), 0);
    CHECK_EQ_INT(upd_cli(&b, out, sizeof out, "verify-slot", "b"), 0);
}

/* Installs v1 (f32 model) and returns the v2 bundle path (mixed model) to tamper with. */
static int box_with_v1(struct upd_box *b, char *v2, size_t v2_len, const char *extra)
{
    fixtures();
    if (upd_box_init(b)) return -1;
    char v1[1024], out[4096];
    snprintf(v1, sizeof v1, "%s/v1.fbx", b->root);
    snprintf(v2, v2_len, "%s/v2.fbx", b->root);
    if (upd_make_bundle(b, v1, "1.0", 1, g_f32, NULL) || upd_make_bundle(b, v2, "2.0", 1, g_mixed, extra)) return -1;
    if (upd_cli(b, out, sizeof out, "install", v1)) {
        fprintf(stderr, "install v1: %s\n", out);
        return -1;
    }
    return 0;
}

/* Both verify and install refuse `bundle` with a message containing `expect`, and the
 * active slot still holds v1. */
static void check_refused(const struct upd_box *b, const char *bundle, const char *expect, int line)
{
    char out[8192];
    int rc = upd_cli(b, out, sizeof out, "verify", bundle);
    if (rc != 1 || !strstr(out, expect)) test_fail_at(__FILE__, line, "verify: rc %d, want 1 and \"%s\" in: %s", rc, expect, out);
    rc = upd_cli(b, out, sizeof out, "install", bundle);
    if (rc != 1 || !strstr(out, expect)) test_fail_at(__FILE__, line, "install: rc %d, want 1 and \"%s\" in: %s", rc, expect, out);
    if (!strstr(out, "active slot unchanged")) test_fail_at(__FILE__, line, "install message: %s", out);
    if (upd_active_slot(b) != 0 || !active_model_is(b, g_f32))
        test_fail_at(__FILE__, line, "active slot changed after a refused bundle");
    if (update_verify_slot(&b->cfg, 0, NULL, out, sizeof out)) test_fail_at(__FILE__, line, "active slot: %s", out);
}

TEST(update_refuses_one_flipped_byte_in_any_chunk)
{
    struct upd_box b;
    char v2[1024], bad[1100];
    REQUIRE(box_with_v1(&b, v2, sizeof v2, NULL) == 0);
    uint64_t base = upd_payload_offset(v2), size = upd_file_size(g_mixed);
    REQUIRE(base > 0 && size > 3 * 65536);
    /* first byte, a middle chunk, the last byte (in the short last chunk) */
    const uint64_t offs[] = { 0, 65536 * 7 + 123, size - 1 };
    const char *chunk_words[] = { "chunk 0 of", "chunk 7 of", "does not match its SHA-256" };
    for (int i = 0; i < 3; i++) {
        snprintf(bad, sizeof bad, "%s.flip%d", v2, i);
        REQUIRE(upd_copy_file(v2, bad) == 0);
        REQUIRE(upd_flip_byte(bad, base + offs[i]) == 0);
        check_refused(&b, bad, chunk_words[i], __LINE__);
    }
}

TEST(update_refuses_flipped_byte_in_manifest_or_signature_or_header)
{
    struct upd_box b;
    char v2[1024], bad[1100];
    REQUIRE(box_with_v1(&b, v2, sizeof v2, NULL) == 0);
    uint64_t base = upd_payload_offset(v2);
    /* header magic; manifest: format version, product string, a chunk hash; signature */
    const uint64_t offs[] = { 0, 24 + 8, 24 + 15, base - 64 - 5, base - 64, base - 1 };
    const char *words[] = { "not a flashbox bundle", "does not verify", "does not verify", "does not verify",
                            "does not verify", "does not verify" };
    for (int i = 0; i < 6; i++) {
        snprintf(bad, sizeof bad, "%s.m%d", v2, i);
        REQUIRE(upd_copy_file(v2, bad) == 0);
        REQUIRE(upd_flip_byte(bad, offs[i]) == 0);
        check_refused(&b, bad, words[i], __LINE__);
    }
}

TEST(update_refuses_bundle_signed_by_untrusted_key)
{
    struct upd_box b;
    char v2[1024], other[1024], bad[1100], out[4096];
    REQUIRE(box_with_v1(&b, v2, sizeof v2, NULL) == 0);
    snprintf(other, sizeof other, "%s/k-other", b.root);
    REQUIRE(update_keygen(other, out, sizeof out) == 0);
    snprintf(bad, sizeof bad, "%s/wrongkey.fbx", b.root);
    REQUIRE(upd_sh(out, sizeof out, "%s bundle create --key %s/private.key --product %s --version 3 --epoch 5 --model %s "
                   "--chunk-size 64K --out %s", test_flashbox_bin(), other, b.cfg.product, g_mixed, bad) == 0);
    check_refused(&b, bad, "does not verify with any of the 1 trusted key(s)", __LINE__);
}

TEST(update_refuses_truncated_bundle)
{
    struct upd_box b;
    char v2[1024], bad[1100], out[256];
    REQUIRE(box_with_v1(&b, v2, sizeof v2, NULL) == 0);
    uint64_t base = upd_payload_offset(v2), size = upd_file_size(v2);
    const uint64_t lens[] = { 0, 10, 24 + 100, base - 10, base + 65536 + 3, size - 1 };
    const char *words[] = { "truncated", "truncated", "truncated", "truncated", "truncated", "truncated" };
    for (int i = 0; i < 6; i++) {
        snprintf(bad, sizeof bad, "%s.t%d", v2, i);
        REQUIRE(upd_copy_file(v2, bad) == 0);
        REQUIRE(upd_sh(out, sizeof out, "truncate -s %llu '%s'", (unsigned long long)lens[i], bad) == 0);
        check_refused(&b, bad, words[i], __LINE__);
    }
}

TEST(update_refuses_payload_longer_or_shorter_than_its_entry)
{
    struct upd_box b;
    char v2[1024], fw[1024], bad[1100], out[256];
    fixtures();
    /* Two payloads, so a length change of the first one shifts the second. */
    snprintf(fw, sizeof fw, "%s/fw.bin", test_tmpdir());
    REQUIRE(upd_sh(out, sizeof out, "head -c 100000 /dev/urandom > '%s'", fw) == 0);
    char extra[1200];
    snprintf(extra, sizeof extra, "--firmware %s", fw);
    REQUIRE(box_with_v1(&b, v2, sizeof v2, extra) == 0);
    uint64_t end_model = upd_payload_offset(v2) + upd_file_size(g_mixed);
    /* shorter: drop the model's last byte; longer: one extra byte after it */
    snprintf(bad, sizeof bad, "%s.short", v2);
    REQUIRE(upd_sh(out, sizeof out, "{ head -c %llu '%s'; tail -c +%llu '%s'; } > '%s'", (unsigned long long)(end_model - 1),
                   v2, (unsigned long long)(end_model + 1), v2, bad) == 0);
    check_refused(&b, bad, "truncated or a payload is short", __LINE__);
    snprintf(bad, sizeof bad, "%s.long", v2);
    REQUIRE(upd_sh(out, sizeof out, "{ head -c %llu '%s'; printf x; tail -c +%llu '%s'; } > '%s'",
                   (unsigned long long)end_model, v2, (unsigned long long)(end_model + 1), v2, bad) == 0);
    check_refused(&b, bad, "a payload is longer than its entry", __LINE__);
}

/* Rewrites the manifest of a bundle in place (same length) and signs it again with key. */
static int resign_with_patch(const char *bundle, const char *key, uint64_t off_in_manifest, const void *bytes, size_t n)
{
    int fd = open(bundle, O_RDWR);
    if (fd < 0) return -1;
    uint64_t base = upd_payload_offset(bundle);
    size_t mlen = (size_t)(base - 24 - 64);
    uint8_t *m = malloc(mlen), sig[64];
    char err[512];
    int rc = -1;
    if (m && pread(fd, m, mlen, 24) == (ssize_t)mlen) {
        memcpy(m + off_in_manifest, bytes, n);
        if (keys_sign(key, m, mlen, sig, err, sizeof err) == 0 && pwrite(fd, m, mlen, 24) == (ssize_t)mlen &&
            pwrite(fd, sig, 64, (off_t)(24 + mlen)) == 64)
            rc = 0;
    }
    free(m);
    close(fd);
    return rc;
}

TEST(update_refuses_unknown_manifest_version_even_when_signed)
{
    struct upd_box b;
    char v2[1024], bad[1100];
    REQUIRE(box_with_v1(&b, v2, sizeof v2, NULL) == 0);
    snprintf(bad, sizeof bad, "%s.v2fmt", v2);
    REQUIRE(upd_copy_file(v2, bad) == 0);
    const uint8_t three[4] = { 3, 0, 0, 0 }; /* 1 and 2 (with provenance) are known */
    REQUIRE(resign_with_patch(bad, b.priv, 8, three, 4) == 0);
    check_refused(&b, bad, "unknown format version 3, this firmware reads versions 1 and 2", __LINE__);
}

TEST(update_refuses_manifest_over_the_cap_before_reading_it)
{
    struct upd_box b;
    char v2[1024], bad[1100];
    REQUIRE(box_with_v1(&b, v2, sizeof v2, NULL) == 0);
    snprintf(bad, sizeof bad, "%s.cap", v2);
    REQUIRE(upd_copy_file(v2, bad) == 0);
    int fd = open(bad, O_RDWR);
    REQUIRE(fd >= 0);
    uint32_t over = MANIFEST_MAX_BYTES + 1;
    uint8_t le[4] = { (uint8_t)over, (uint8_t)(over >> 8), (uint8_t)(over >> 16), (uint8_t)(over >> 24) };
    CHECK(pwrite(fd, le, 4, 12) == 4);
    close(fd);
    check_refused(&b, bad, "over the cap of 4194304 bytes", __LINE__);
}

TEST(update_refuses_bundle_for_another_product)
{
    struct upd_box b;
    char v2[1024], bad[1100], out[4096];
    REQUIRE(box_with_v1(&b, v2, sizeof v2, NULL) == 0);
    snprintf(bad, sizeof bad, "%s/other.fbx", b.root);
    REQUIRE(upd_sh(out, sizeof out, "%s bundle create --key %s --product toaster-9000 --version 2.0 --epoch 1 --model %s "
                   "--chunk-size 64K --out %s", test_flashbox_bin(), b.priv, g_mixed, bad) == 0);
    check_refused(&b, bad, "bundle is for product \"toaster-9000\", this box is \"flashbox-v4-flash\"", __LINE__);
}

TEST(update_refuses_epoch_below_floor_and_rollback_below_floor)
{
    struct upd_box b;
    char v2[1024], v3[1024], old[1024], out[8192];
    REQUIRE(box_with_v1(&b, v2, sizeof v2, NULL) == 0); /* v1: epoch 1 in slot a */
    snprintf(v3, sizeof v3, "%s/v3.fbx", b.root);
    REQUIRE(upd_make_bundle(&b, v3, "3.0", 2, g_mixed, NULL) == 0);
    CHECK_EQ_INT(upd_cli(&b, out, sizeof out, "install", v3), 0);
    CHECK_EQ_INT(upd_active_slot(&b), 1);
    struct update_status st;
    REQUIRE(update_get_status(&b.cfg, &st, out, sizeof out) == 0);
    CHECK_EQ_INT(st.epoch_floor, 2);
    /* A validly signed older-epoch bundle is a rollback attack. */
    snprintf(old, sizeof old, "%s/old.fbx", b.root);
    REQUIRE(upd_make_bundle(&b, old, "0.9", 1, g_f32, NULL) == 0);
    CHECK_EQ_INT(upd_cli(&b, out, sizeof out, "install", old), 1);
    CHECK(strstr(out, "bundle epoch 1 is below the stored epoch floor 2 (rollback refused)") != NULL);
    CHECK_EQ_INT(upd_active_slot(&b), 1);
    CHECK(active_model_is(&b, g_mixed));
    /* The other slot (epoch 1) is intact and valid, but below the floor. */
    CHECK_EQ_INT(upd_cli(&b, out, sizeof out, "rollback", NULL), 1);
    CHECK(strstr(out, "epoch 1, below the epoch floor 2") != NULL);
    CHECK_EQ_INT(upd_active_slot(&b), 1);
}

TEST(update_self_test_failure_leaves_active_slot_untouched)
{
    struct upd_box b;
    char v2[1024], junk[1024], bad[1100], out[8192];
    REQUIRE(box_with_v1(&b, v2, sizeof v2, NULL) == 0);
    /* A correctly signed bundle whose model does not load. */
    snprintf(junk, sizeof junk, "%s/junk.gguf", b.root);
    REQUIRE(upd_sh(out, sizeof out, "head -c 300000 /dev/urandom > '%s'", junk) == 0);
    snprintf(bad, sizeof bad, "%s/junk.fbx", b.root);
    REQUIRE(upd_make_bundle(&b, bad, "2.1", 1, junk, "--selftest-tokens 0") == 0);
    CHECK_EQ_INT(upd_cli(&b, out, sizeof out, "verify", bad), 0); /* the signature is fine */
    CHECK_EQ_INT(upd_cli(&b, out, sizeof out, "install", bad), 1);
    CHECK(strstr(out, "self-test of the new slot failed") != NULL);
    CHECK_EQ_INT(upd_active_slot(&b), 0);
    CHECK(active_model_is(&b, g_f32));
    /* The tested-bad slot is not left looking valid. */
    struct update_status st;
    REQUIRE(update_get_status(&b.cfg, &st, out, sizeof out) == 0);
    CHECK(!st.slots[1].valid);
    /* A model that loads but whose greedy tokens differ from the recorded ones: record
     * the f32 model's tokens, ship the mixed model under them. */
    struct update_create_opts o;
    memset(&o, 0, sizeof o);
    const int32_t prompt[] = { 0, 17, 42, 99, 123, 7, 300, 5 };
    int32_t expected[8];
    /* read the f32 tokens from the v1 install output of a fresh create */
    char line[8192];
    REQUIRE(upd_sh(line, sizeof line, "%s bundle create --key %s --product %s --version 9 --epoch 1 --model %s "
                   "--chunk-size 64K --out %s/probe.fbx", test_flashbox_bin(), b.priv, b.cfg.product, g_f32, b.root) == 0);
    const char *toks = strstr(line, "self-test tokens: ");
    REQUIRE(toks != NULL);
    REQUIRE(sscanf(toks, "self-test tokens: %d,%d,%d,%d,%d,%d,%d,%d", &expected[0], &expected[1], &expected[2],
                   &expected[3], &expected[4], &expected[5], &expected[6], &expected[7]) == 8);
    o.private_key = b.priv;
    o.product = b.cfg.product;
    o.version = "2.2";
    o.epoch = 1;
    o.created = 1;
    o.chunk_size = 65536;
    o.model_path = g_mixed;
    o.prompt = prompt;
    o.n_prompt = 8;
    o.expected = expected;
    o.n_expected = 8;
    snprintf(bad, sizeof bad, "%s/mismatch.fbx", b.root);
    o.out_path = bad;
    REQUIRE(update_bundle_create(&o, NULL, out, sizeof out) == 0);
    CHECK_EQ_INT(upd_cli(&b, out, sizeof out, "install", bad), 1);
    CHECK(strstr(out, "the manifest expects") != NULL);
    CHECK_EQ_INT(upd_active_slot(&b), 0);
    CHECK(active_model_is(&b, g_f32));
}

TEST(update_key_rotation_by_overlap_then_old_key_refused)
{
    struct upd_box b;
    char v2[1024], k2[1024], both[1200], only2[1200], r[1200], s[1200], t[1200], bad[1200], out[8192];
    REQUIRE(box_with_v1(&b, v2, sizeof v2, NULL) == 0);
    snprintf(k2, sizeof k2, "%s/k2", b.root);
    REQUIRE(update_keygen(k2, out, sizeof out) == 0);
    snprintf(both, sizeof both, "%s/both.pem", b.root);
    snprintf(only2, sizeof only2, "%s/public.pem", k2);
    REQUIRE(upd_sh(out, sizeof out, "cat %s/public.pem %s/public.pem > %s", b.keys, k2, both) == 0);
    /* Signed by k1, rotating to {k2} only: refused, rotation must overlap. */
    snprintf(bad, sizeof bad, "%s/rot-bad.fbx", b.root);
    char extra[1300];
    snprintf(extra, sizeof extra, "--new-keys %s", only2);
    REQUIRE(upd_make_bundle(&b, bad, "2.0", 1, g_mixed, extra) == 0);
    CHECK_EQ_INT(upd_cli(&b, out, sizeof out, "install", bad), 1);
    CHECK(strstr(out, "rotation must overlap") != NULL);
    /* R: signed by k1, rotating to {k1, k2}. */
    snprintf(r, sizeof r, "%s/rot.fbx", b.root);
    snprintf(extra, sizeof extra, "--new-keys %s", both);
    REQUIRE(upd_make_bundle(&b, r, "2.0", 1, g_mixed, extra) == 0);
    CHECK_EQ_INT(upd_cli(&b, out, sizeof out, "install", r), 0);
    CHECK(strstr(out, "carries a new trusted key set of 2 key(s)") != NULL);
    /* S: signed by k2, rotating to {k2}. */
    snprintf(s, sizeof s, "%s/s.fbx", b.root);
    snprintf(extra, sizeof extra, "--new-keys %s", only2);
    REQUIRE(upd_sh(out, sizeof out, "%s bundle create --key %s/private.key --product %s --version 3.0 --epoch 2 --model %s "
                   "--chunk-size 64K --out %s %s", test_flashbox_bin(), k2, b.cfg.product, g_f32, s, extra) == 0);
    CHECK_EQ_INT(upd_cli(&b, out, sizeof out, "install", s), 0);
    CHECK_EQ_INT(upd_cli(&b, out, sizeof out, "status", NULL), 0);
    CHECK(strstr(out, "trusted-keys.pem") != NULL);
    /* T: signed by k1, which is no longer trusted even though --keys still names it. */
    snprintf(t, sizeof t, "%s/t.fbx", b.root);
    REQUIRE(upd_make_bundle(&b, t, "4.0", 3, g_mixed, NULL) == 0);
    CHECK_EQ_INT(upd_cli(&b, out, sizeof out, "install", t), 1);
    CHECK(strstr(out, "does not verify") != NULL);
    CHECK(active_model_is(&b, g_f32));
}

TEST(update_boot_falls_back_after_n_failed_starts_and_ready_ends_trial)
{
    struct upd_box b;
    char v2[1024], v3[1024], out[8192];
    REQUIRE(box_with_v1(&b, v2, sizeof v2, NULL) == 0);
    b.cfg.max_boot_attempts = 2;
    struct update_boot boot;
    /* v1's trial ends when the daemon reports ready. */
    REQUIRE(update_boot_begin(&b.cfg, &boot, out, sizeof out) == 0);
    CHECK_STR(boot.slot, "a");
    REQUIRE(update_boot_ready(&b.cfg, out, sizeof out) == 0);
    CHECK_EQ_INT(upd_cli(&b, out, sizeof out, "install", v2), 0);
    /* Two starts of slot b that never become ready, then the third start falls back. */
    for (int i = 0; i < 2; i++) {
        REQUIRE(update_boot_begin(&b.cfg, &boot, out, sizeof out) == 0);
        CHECK_STR(boot.slot, "b");
        CHECK(!boot.fell_back);
    }
    REQUIRE(update_boot_begin(&b.cfg, &boot, out, sizeof out) == 0);
    CHECK(boot.fell_back);
    CHECK_STR(boot.slot, "a");
    CHECK(strstr(boot.model_path, "slot-a/model.gguf") != NULL);
    CHECK(upd_files_equal(boot.model_path, g_f32));
    struct update_status st;
    REQUIRE(update_get_status(&b.cfg, &st, out, sizeof out) == 0);
    CHECK_EQ_INT(st.active, 0);
    CHECK(strstr(st.last_fallback, "slot b did not become ready in 2 starts; fell back to slot a") != NULL);
    /* A new slot with a higher epoch: falling back below the floor is refused and recorded. */
    snprintf(v3, sizeof v3, "%s/v3.fbx", b.root);
    REQUIRE(upd_make_bundle(&b, v3, "3.0", 2, g_mixed, NULL) == 0);
    CHECK_EQ_INT(upd_cli(&b, out, sizeof out, "install", v3), 0);
    for (int i = 0; i < 3; i++) REQUIRE(update_boot_begin(&b.cfg, &boot, out, sizeof out) == 0);
    CHECK(!boot.fell_back);
    CHECK_STR(boot.slot, "b");
    REQUIRE(update_get_status(&b.cfg, &st, out, sizeof out) == 0);
    CHECK(strstr(st.last_fallback, "no fallback") != NULL && strstr(st.last_fallback, "below the epoch floor 2") != NULL);
    CHECK_EQ_INT(st.trial, -1);
}

TEST(update_second_writer_is_refused_while_one_holds_the_lock)
{
    struct upd_box b;
    char v2[1024], out[8192];
    REQUIRE(box_with_v1(&b, v2, sizeof v2, NULL) == 0);
    int lock;
    REQUIRE(store_lock(&b.cfg, false, &lock, out, sizeof out) == 0);
    CHECK_EQ_INT(upd_cli(&b, out, sizeof out, "install", v2), 1);
    CHECK(strstr(out, "another update operation is running") != NULL);
    CHECK_EQ_INT(upd_cli(&b, out, sizeof out, "rollback", NULL), 1);
    CHECK(strstr(out, "another update operation is running") != NULL);
    store_unlock(lock);
    CHECK_EQ_INT(upd_active_slot(&b), 0);
    CHECK_EQ_INT(upd_cli(&b, out, sizeof out, "install", v2), 0);
    CHECK_EQ_INT(upd_active_slot(&b), 1);
}

/* A child process that takes the store's lock and holds it until *release is closed (or,
 * with hold_us > 0, for that long). Returns its pid once it holds the lock, or -1. */
static pid_t hold_lock_in_child(const struct update_config *cfg, int *release, useconds_t hold_us)
{
    int held[2], rel[2];
    if (pipe(held) || pipe(rel)) return -1;
    pid_t pid = fork();
    if (pid == 0) {
        close(held[0]);
        close(rel[1]);
        int lock;
        char err[512];
        if (store_lock(cfg, false, &lock, err, sizeof err)) _exit(1);
        char c = 1;
        if (write(held[1], &c, 1) != 1) _exit(1);
        if (hold_us) usleep(hold_us);
        else while (read(rel[0], &c, 1) > 0) {}
        _exit(0);
    }
    close(held[1]);
    close(rel[0]);
    char c;
    ssize_t n = pid > 0 ? read(held[0], &c, 1) : -1;
    close(held[0]);
    *release = rel[1];
    return n == 1 ? pid : -1;
}

TEST(update_boot_waits_for_the_lock_within_a_bound_and_names_its_holder)
{
    struct upd_box b;
    char v2[1024], out[8192], want[64];
    REQUIRE(box_with_v1(&b, v2, sizeof v2, NULL) == 0);
    int release;
    pid_t holder = hold_lock_in_child(&b.cfg, &release, 0);
    REQUIRE(holder > 0);
    snprintf(want, sizeof want, "pid %d (", (int)holder);
    /* The boot gives up after update.lock_wait_s and names the holder (its command line:
     * this test binary). */
    b.cfg.lock_wait_s = 1;
    struct update_boot boot;
    CHECK_EQ_INT(update_boot_begin(&b.cfg, &boot, out, sizeof out), -1);
    CHECK(strstr(out, "/lock is still held by pid") && strstr(out, want) && strstr(out, "flashbox-test") &&
          strstr(out, "after update.lock_wait_s = 1 s"));
    if (test_failed()) fprintf(stderr, "boot: %s\n", out);
    CHECK_EQ_INT(update_boot_ready(&b.cfg, out, sizeof out), -1);
    /* A writer that does not wait names the holder too. */
    CHECK_EQ_INT(upd_cli(&b, out, sizeof out, "install", v2), 1);
    CHECK(strstr(out, "another update operation is running in pid") && strstr(out, want));
    if (test_failed()) fprintf(stderr, "install: %s\n", out);
    /* The daemon's start: it exits 1 with that message instead of waiting without end. */
    /* its own admin socket: as root the default, /run/flashbox/admin.sock, is shared with any
     * other daemon on the machine */
    CHECK_EQ_INT(upd_sh(out, sizeof out, "timeout 120 %s serve --socket %s/s.sock --set update.data_dir=%s "
                        "--set update.keys_dir=%s --set update.product=%s --set update.lock_wait_s=1 "
                        "--set server.admin_socket=%s/admin.sock",
                        test_flashbox_bin(), b.root, b.data, b.keys, b.cfg.product, b.root), 1);
    CHECK(strstr(out, "update boot:") && strstr(out, want) && strstr(out, "update.lock_wait_s = 1 s"));
    if (test_failed()) fprintf(stderr, "serve: %s\n", out);
    close(release);
    int st;
    REQUIRE(waitpid(holder, &st, 0) == holder);
    /* A holder that lets go within the bound: the boot waits for it and goes on. */
    b.cfg.lock_wait_s = 60;
    holder = hold_lock_in_child(&b.cfg, &release, 300000);
    REQUIRE(holder > 0);
    CHECK_EQ_INT(update_boot_begin(&b.cfg, &boot, out, sizeof out), 0);
    CHECK_STR(boot.slot, "a");
    close(release);
    REQUIRE(waitpid(holder, &st, 0) == holder);
}

TEST(keygen_refuses_to_overwrite_a_key_pair)
{
    struct upd_box b;
    REQUIRE(upd_box_init(&b) == 0);
    char out[4096], before[4096], after[4096];
    REQUIRE(upd_sh(before, sizeof before, "cat %s", b.priv) == 0);
    CHECK_EQ_INT(upd_sh(out, sizeof out, "%s keygen --out %s", test_flashbox_bin(), b.keys), 1);
    CHECK(strstr(out, "already holds a key pair; refusing to overwrite it") != NULL);
    REQUIRE(upd_sh(after, sizeof after, "cat %s", b.priv) == 0);
    CHECK_STR(before, after);
}
