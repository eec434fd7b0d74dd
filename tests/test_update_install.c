/* Install under hostile conditions: kill -9 at random points, payloads past 2^32 bytes,
 * and a full disk (RLIMIT_FSIZE). After each, the active slot must still verify chunk by
 * chunk against its signed manifest and hold a loadable model equal to the fixture it was
 * installed from. */
#include "tests/harness.h"
#include "tests/update_support.h"

#include "engine/model/model.h"
#include "update/keys.h"
#include "update/manifest.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

/* Starts `flashbox update install bundle` with the given per-chunk delay and file-size
 * limit (0: none); output goes to log. */
static pid_t start_install(const struct upd_box *b, const char *bundle, unsigned delay_us, rlim_t fsize,
                           const char *log)
{
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid != 0) return pid;
    int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
        close(fd);
    }
    char d[32];
    snprintf(d, sizeof d, "%u", delay_us);
    setenv("FLASHBOX_UPDATE_TEST_DELAY_US", d, 1);
    if (fsize) {
        struct rlimit rl = { fsize, fsize };
        setrlimit(RLIMIT_FSIZE, &rl);
        signal(SIGXFSZ, SIG_IGN); /* a write past the limit fails with EFBIG instead of killing */
    }
    execl(test_flashbox_bin(), test_flashbox_bin(), "update", "install", bundle, "--data-dir", b->data, "--keys",
          b->keys, (char *)NULL);
    _exit(127);
}

static int wait_exit(pid_t pid)
{
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR) return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* The active slot re-hashes clean, its model binds, and it is one of the two fixtures. */
static int check_active_slot(const struct upd_box *b, const char *m1, const char *m2, char *why, size_t why_len)
{
    int active = upd_active_slot(b);
    if (active < 0) return snprintf(why, why_len, "no active slot (%d)", active), -1;
    if (update_verify_slot(&b->cfg, active, NULL, why, why_len)) return -1;
    char path[1024];
    snprintf(path, sizeof path, "%s/active/model.gguf", b->data);
    struct model *m;
    if (model_open(&m, path, why, why_len)) return -1;
    model_close(m);
    if (!upd_files_equal(path, m1) && !upd_files_equal(path, m2))
        return snprintf(why, why_len, "active model matches neither fixture"), -1;
    return 0;
}

TEST(update_power_loss_kill9_at_50_random_points_leaves_a_verified_slot)
{
    struct upd_box b;
    REQUIRE(upd_box_init(&b) == 0);
    char m1[1024], m2[1024], bundles[2][1024], log[1024], out[4096];
    snprintf(m1, sizeof m1, "%s", test_fixture("model/v4-tiny-mixed.gguf"));
    /* A second small model, so the two slots really differ. */
    snprintf(m2, sizeof m2, "%s/other.gguf", b.root);
    REQUIRE(upd_sh(out, sizeof out, "%s mkmodel --out %s --quant mixed --seed 7", test_flashbox_bin(), m2) == 0);
    snprintf(bundles[0], sizeof bundles[0], "%s/v1.fbx", b.root);
    snprintf(bundles[1], sizeof bundles[1], "%s/v2.fbx", b.root);
    snprintf(log, sizeof log, "%s/install.log", b.root);
    REQUIRE(upd_make_bundle(&b, bundles[0], "1.0", 1, m1, NULL) == 0);
    REQUIRE(upd_make_bundle(&b, bundles[1], "2.0", 1, m2, "--chunk-size 256K") == 0);
    REQUIRE(upd_cli(&b, out, sizeof out, "install", bundles[0]) == 0);

    /* How long a slowed install takes, to spread the kill points over all of it. */
    const unsigned delay_us = 300;
    double t0 = now_ms();
    REQUIRE(wait_exit(start_install(&b, bundles[1], delay_us, 0, log)) == 0);
    double span_ms = now_ms() - t0;
    srand(12345);
    int kills = 0, attempts = 0;
    /* 50 kills that landed inside an install. A kill that comes after the install already
     * finished is not counted and shortens the window, so the machine's speed decides only
     * how many attempts that takes, never the outcome. */
    for (; kills < 50 && attempts < 200; attempts++) {
        int i = attempts;
        const char *bundle = bundles[i % 2]; /* alternate, so each install targets the other slot */
        unsigned at_us = (unsigned)((double)rand() / RAND_MAX * span_ms * 1000.0);
        pid_t pid = start_install(&b, bundle, delay_us, 0, log);
        usleep(at_us);
        kill(pid, SIGKILL);
        int rc = wait_exit(pid);
        if (rc == 128 + SIGKILL) kills++;
        else span_ms *= 0.8;
        char why[1024];
        if (check_active_slot(&b, m1, m2, why, sizeof why)) {
            test_fail_at(__FILE__, __LINE__, "after kill %d at %u us: %s", i, at_us, why);
            return;
        }
        /* The rerun completes and activates what it installed. */
        int rerun = upd_cli(&b, out, sizeof out, "install", bundle);
        if (rerun != 0) {
            test_fail_at(__FILE__, __LINE__, "rerun after kill %d at %u us: rc %d: %s", i, at_us, rerun, out);
            return;
        }
        char active_model[1024];
        snprintf(active_model, sizeof active_model, "%s/active/model.gguf", b.data);
        CHECK(upd_files_equal(active_model, i % 2 ? m2 : m1));
    }
    CHECK_EQ_INT(kills, 50);
}

TEST(update_payload_past_4gib_verifies_and_a_byte_past_4gib_is_caught)
{
    struct upd_box b;
    REQUIRE(upd_box_init(&b) == 0);
    /* A sparse payload of 4 GiB + 8292 bytes, zero except a marker past the 4 GiB mark.
     * The manifest is built here from the known hash of a zero chunk, so only the two
     * verification passes below read the whole payload. */
    const uint32_t chunk = 1u << 20;
    const uint64_t size = (1ull << 32) + 8292, marker = (1ull << 32) + 5;
    const uint64_t n_chunks = size / chunk + 1;
    uint8_t *zero = calloc(chunk, 1), *hashes = malloc(n_chunks * 32);
    REQUIRE(zero && hashes);
    uint8_t zero_hash[32];
    REQUIRE(keys_sha256(zero, chunk, zero_hash) == 0);
    for (uint64_t i = 0; i < n_chunks; i++) memcpy(hashes + i * 32, zero_hash, 32);
    /* The last chunk: 8292 bytes holding the marker at offset 5. */
    zero[5] = 0x5a;
    REQUIRE(keys_sha256(zero, (size_t)(size - (n_chunks - 1) * chunk), hashes + (n_chunks - 1) * 32) == 0);
    struct manifest m;
    memset(&m, 0, sizeof m);
    snprintf(m.product, sizeof m.product, "%s", b.cfg.product);
    snprintf(m.version, sizeof m.version, "big");
    m.epoch = 1;
    m.n_payloads = 1;
    snprintf(m.payloads[0].name, sizeof m.payloads[0].name, "model.gguf");
    m.payloads[0].size = size;
    m.payloads[0].chunk_size = chunk;
    m.payloads[0].n_chunks = n_chunks;
    m.payloads[0].chunk_hashes = hashes;
    uint8_t *mb, sig[64];
    size_t mlen;
    char err[1024];
    REQUIRE(manifest_encode(&m, &mb, &mlen, err, sizeof err) == 0);
    REQUIRE(keys_sign(b.priv, mb, mlen, sig, err, sizeof err) == 0);
    char path[1024];
    snprintf(path, sizeof path, "%s/big.fbx", b.root);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    REQUIRE(fd >= 0);
    uint8_t head[24] = { 'F', 'B', 'X', 'B', 'U', 'N', 'D', 'L', 1, 0, 0, 0 };
    for (int i = 0; i < 4; i++) head[12 + i] = (uint8_t)(mlen >> (8 * i));
    head[16] = 64;
    uint64_t base = 24 + mlen + 64;
    CHECK(pwrite(fd, head, 24, 0) == 24);
    CHECK(pwrite(fd, mb, mlen, 24) == (ssize_t)mlen);
    CHECK(pwrite(fd, sig, 64, (off_t)(24 + mlen)) == 64);
    const uint8_t mark = 0x5a;
    CHECK(pwrite(fd, &mark, 1, (off_t)(base + marker)) == 1);
    CHECK(ftruncate(fd, (off_t)(base + size)) == 0);
    close(fd);
    free(mb);
    free(zero);
    free(hashes);

    struct update_bundle_info info;
    int rc = update_verify_bundle(&b.cfg, path, NULL, &info, err, sizeof err);
    if (rc) test_fail_at(__FILE__, __LINE__, "verify: %s", err);
    CHECK(info.payloads[0].size == size);
    CHECK(info.payloads[0].n_chunks == n_chunks);
    /* One byte changed past the 4 GiB mark: the marker's chunk is the last one. */
    REQUIRE(upd_flip_byte(path, base + marker) == 0);
    CHECK_EQ_INT(update_verify_bundle(&b.cfg, path, NULL, &info, err, sizeof err), -1);
    CHECK(strstr(err, "chunk 4096 of 4097 (bytes 4294967296..4294975587)") != NULL);
}

TEST(update_disk_full_fails_cleanly_and_activates_nothing)
{
    struct upd_box b;
    REQUIRE(upd_box_init(&b) == 0);
    char small[1024], big[1024], v1[1024], v2[1024], log[1024], out[8192];
    snprintf(small, sizeof small, "%s", test_fixture("model/v4-tiny-mixed.gguf"));
    snprintf(big, sizeof big, "%s", test_fixture("model/v4-tiny-f32.gguf"));
    snprintf(v1, sizeof v1, "%s/v1.fbx", b.root);
    snprintf(v2, sizeof v2, "%s/v2.fbx", b.root);
    snprintf(log, sizeof log, "%s/install.log", b.root);
    REQUIRE(upd_make_bundle(&b, v1, "1.0", 1, small, NULL) == 0);
    REQUIRE(upd_make_bundle(&b, v2, "2.0", 2, big, NULL) == 0);
    REQUIRE(upd_cli(&b, out, sizeof out, "install", v1) == 0);
    /* 4 MiB of file size: the 15 MB model cannot be written. */
    CHECK_EQ_INT(wait_exit(start_install(&b, v2, 0, 4u << 20, log)), 1);
    char *text;
    size_t len;
    FILE *f = fopen(log, "r");
    REQUIRE(f != NULL);
    text = calloc(1, 65536);
    len = fread(text, 1, 65535, f);
    fclose(f);
    (void)len;
    CHECK(strstr(text, "REFUSED: writing") != NULL && strstr(text, "File too large") != NULL);
    CHECK(strstr(text, "active slot unchanged") != NULL);
    free(text);
    struct update_status st;
    REQUIRE(update_get_status(&b.cfg, &st, out, sizeof out) == 0);
    CHECK_EQ_INT(st.active, 0);
    CHECK_EQ_INT(st.epoch_floor, 1);
    CHECK(st.slots[0].valid);
    CHECK(!st.slots[1].valid);  /* the partial slot is not taken for valid */
    char part[1200];
    snprintf(part, sizeof part, "%s/slot-b/model.gguf.part", b.data);
    CHECK(access(part, F_OK) != 0); /* its space was given back */
    CHECK(check_active_slot(&b, small, small, out, sizeof out) == 0);
    /* With room again, the same bundle installs. */
    CHECK_EQ_INT(upd_cli(&b, out, sizeof out, "install", v2), 0);
    CHECK_EQ_INT(upd_active_slot(&b), 1);
}
