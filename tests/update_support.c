/* Helpers shared by the update tests (see update_support.h). */
#include "tests/update_support.h"

#include "tests/harness.h"
#include "tools/mkmodel.h"

#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

int upd_box_init(struct upd_box *b)
{
    memset(b, 0, sizeof *b);
    snprintf(b->root, sizeof b->root, "%s", test_tmpdir());
    snprintf(b->keys, sizeof b->keys, "%s/k1", b->root);
    snprintf(b->data, sizeof b->data, "%s/data", b->root);
    snprintf(b->priv, sizeof b->priv, "%s/private.key", b->keys);
    update_config_default(&b->cfg);
    b->cfg.data_dir = b->data;
    b->cfg.keys_dir = b->keys;
    char err[512];
    if (update_keygen(b->keys, err, sizeof err)) {
        fprintf(stderr, "keygen: %s\n", err);
        return -1;
    }
    return 0;
}

int upd_sh(char *out, size_t cap, const char *fmt, ...)
{
    char cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    strncat(cmd, " 2>&1", sizeof cmd - strlen(cmd) - 1);
    fflush(stdout);
    fflush(stderr);
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    size_t n = 0;
    char sink[4096];
    for (;;) {
        char *dst = out && n + 1 < cap ? out + n : sink;
        size_t room = out && n + 1 < cap ? cap - n - 1 : sizeof sink;
        size_t got = fread(dst, 1, room, p);
        if (got == 0) break;
        if (dst != sink) n += got;
    }
    if (out && cap) out[n] = '\0';
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

int upd_make_bundle(const struct upd_box *b, const char *out, const char *version, unsigned epoch, const char *model,
                    const char *extra)
{
    char log[4096];
    int rc = upd_sh(log, sizeof log,
                    "%s bundle create --key %s --product %s --version %s --epoch %u --model %s --chunk-size 64K --out %s "
                    "--prompt 0,17 --selftest-tokens 2 %s",
                    test_flashbox_bin(), b->priv, b->cfg.product, version, epoch, model, out, extra ? extra : "");
    if (rc) fprintf(stderr, "bundle create failed (%d): %s\n", rc, log);
    return rc;
}

int upd_cli(const struct upd_box *b, char *out, size_t cap, const char *sub, const char *arg)
{
    return upd_sh(out, cap, "%s update %s %s --data-dir %s --keys %s", test_flashbox_bin(), sub, arg ? arg : "",
                  b->data, b->keys);
}

int upd_write_model(const char *path, const char *name, uint64_t seed, uint32_t n_ff_exp)
{
    struct mkmodel_config c;
    mkmodel_defaults(&c);
    c.seed = seed;
    if (n_ff_exp) c.n_ff_exp = n_ff_exp;
    snprintf(c.name, sizeof c.name, "%s", name);
    char err[256];
    if (mkmodel_write(&c, path, err, sizeof err)) {
        test_fail_at(__FILE__, __LINE__, "mkmodel: %s", err);
        return -1;
    }
    return 0;
}

int upd_flip_byte(const char *path, uint64_t off)
{
    int fd = open(path, O_RDWR);
    if (fd < 0) return -1;
    unsigned char c;
    int rc = -1;
    if (pread(fd, &c, 1, (off_t)off) == 1) {
        c ^= 0x01;
        rc = pwrite(fd, &c, 1, (off_t)off) == 1 ? 0 : -1;
    }
    close(fd);
    return rc;
}

int upd_copy_file(const char *src, const char *dst)
{
    char out[256];
    return upd_sh(out, sizeof out, "cp --sparse=always '%s' '%s'", src, dst);
}

uint64_t upd_file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (uint64_t)st.st_size : 0;
}

bool upd_files_equal(const char *a, const char *b)
{
    char out[256];
    return upd_sh(out, sizeof out, "cmp -s '%s' '%s'", a, b) == 0;
}

int upd_active_slot(const struct upd_box *b)
{
    struct update_status st;
    char err[512];
    if (update_get_status(&b->cfg, &st, err, sizeof err)) return -2;
    return st.active;
}

uint64_t upd_payload_offset(const char *bundle)
{
    unsigned char h[24];
    int fd = open(bundle, O_RDONLY);
    if (fd < 0) return 0;
    ssize_t n = pread(fd, h, sizeof h, 0);
    close(fd);
    if (n != (ssize_t)sizeof h) return 0;
    uint32_t mlen = (uint32_t)h[12] | (uint32_t)h[13] << 8 | (uint32_t)h[14] << 16 | (uint32_t)h[15] << 24;
    return 24u + mlen + 64u;
}
