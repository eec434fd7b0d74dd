/* The slot store under the data directory (see store.h and the layout in update.h).
 *
 * State file format (text, one "key value" per line, exactly these lines in this order):
 *   flashbox-update-state 1
 *   epoch_floor <u64>
 *   trial <-|a|b>
 *   boot_attempts <u32>
 *   last_fallback <text to end of line, may be empty>
 * Version 2 (written only once a slot has a site evaluation, so older firmware keeps
 * reading a store that never used one) has "flashbox-update-state 2" and two more lines:
 *   eval_a <-|running|VERDICT SCORE THRESHOLD CASES SHA256>   VERDICT pass or fail;
 *   eval_b ...                                         SCORE, THRESHOLD as %.6f in [0, 1]
 * The epoch floor lives in a plain root-owned file: it stops rollback through the update
 * path, not an attacker who already has root (update-api-security.md §1.4.5). */
#include "update/store.h"
#include "common/safe_open.h"

#include "common/errmsg.h"
#include "update/durable.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/sysmacros.h>
#include <sys/stat.h>
#include <unistd.h>

#define STATE_MAGIC_LINE "flashbox-update-state 1"
#define STATE_MAGIC_LINE_2 "flashbox-update-state 2"
#define STATE_MAX_BYTES 4096

const char *store_slot_name(int slot) { return slot == 0 ? "a" : "b"; }

void store_slot_dir(const struct update_config *cfg, int slot, char *buf, size_t len)
{
    snprintf(buf, len, "%s/slot-%s", cfg->data_dir, store_slot_name(slot));
}

int store_load_trust(const struct update_config *cfg, struct keyset *ks, char *source, size_t source_len, char *err,
                     size_t err_len)
{
    memset(ks, 0, sizeof *ks);
    char rotated[4200];
    snprintf(rotated, sizeof rotated, "%s/%s", cfg->data_dir, STORE_ROTATED_KEYS);
    if (access(rotated, F_OK) == 0) {
        snprintf(source, source_len, "%s", rotated);
        return keys_load_file(ks, rotated, err, err_len);
    }
    snprintf(source, source_len, "%s", cfg->keys_dir);
    return keys_load_dir(ks, cfg->keys_dir, err, err_len);
}

int store_active(const struct update_config *cfg, int *slot, char *err, size_t err_len)
{
    char path[4200], target[64];
    snprintf(path, sizeof path, "%s/active", cfg->data_dir);
    ssize_t n = readlink(path, target, sizeof target - 1);
    if (n < 0) {
        if (errno == ENOENT) {
            *slot = -1;
            return 0;
        }
        return errf(err, err_len, "%s: %s", path, strerror(errno));
    }
    target[n] = '\0';
    if (!strcmp(target, "slot-a")) *slot = 0;
    else if (!strcmp(target, "slot-b")) *slot = 1;
    else return errf(err, err_len, "%s points to \"%s\", expected slot-a or slot-b", path, target);
    return 0;
}

int store_set_active(const struct update_config *cfg, int slot, char *err, size_t err_len)
{
    char path[4200], target[16];
    snprintf(path, sizeof path, "%s/active", cfg->data_dir);
    snprintf(target, sizeof target, "slot-%s", store_slot_name(slot));
    return durable_replace_symlink(path, target, err, err_len);
}

static int parse_u64_field(const char *line, const char *key, uint64_t max, uint64_t *v, char *err, size_t err_len)
{
    size_t kl = strlen(key);
    if (strncmp(line, key, kl) || line[kl] != ' ')
        return errf(err, err_len, "state file: expected a \"%s\" line, got \"%.40s\"", key, line);
    const char *s = line + kl + 1;
    if (*s < '0' || *s > '9' || (s[0] == '0' && s[1] != '\0'))
        return errf(err, err_len, "state file: %s \"%.40s\" is not a canonical decimal number", key, s);
    uint64_t x = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9') return errf(err, err_len, "state file: %s has a non-digit", key);
        if (x > (UINT64_MAX - (uint64_t)(*s - '0')) / 10) return errf(err, err_len, "state file: %s overflows", key);
        x = x * 10 + (uint64_t)(*s - '0');
    }
    if (x > max) return errf(err, err_len, "state file: %s %" PRIu64 " over %" PRIu64, key, x, max);
    *v = x;
    return 0;
}

/* A number in [0, 1] written as digits, one '.', digits (no sign, exponent or spaces). */
static int parse_unit(const char *s, size_t n, double *out)
{
    char buf[32];
    if (n == 0 || n >= sizeof buf) return -1;
    size_t dots = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '.') dots++;
        else if (s[i] < '0' || s[i] > '9') return -1;
    }
    if (dots > 1 || s[0] == '.' || s[n - 1] == '.') return -1;
    memcpy(buf, s, n);
    buf[n] = 0;
    *out = strtod(buf, NULL);
    return *out >= 0 && *out <= 1 ? 0 : -1;
}

static int parse_eval_line(const char *line, int slot, struct update_eval_record *e, char *err, size_t err_len)
{
    char key[8];
    snprintf(key, sizeof key, "eval_%s ", store_slot_name(slot));
    memset(e, 0, sizeof *e);
    if (strncmp(line, key, 7)) return errf(err, err_len, "state file: expected an \"%.6s\" line", key);
    const char *s = line + 7;
    if (!strcmp(s, "-")) return 0;
    if (!strcmp(s, "running")) { /* started, never finished: no score */
        snprintf(e->verdict, sizeof e->verdict, "running");
        return 0;
    }
    const char *f[5];
    size_t fl[5];
    int n = 0;
    while (*s && n < 5) {
        const char *sp = strchr(s, ' ');
        size_t k = sp ? (size_t)(sp - s) : strlen(s);
        f[n] = s;
        fl[n++] = k;
        s += k;
        if (*s == ' ') s++;
    }
    if (n != 5 || *s) return errf(err, err_len, "state file: %.6s: expected \"-\", \"running\" or VERDICT SCORE THRESHOLD CASES SHA256", key);
    if (!(fl[0] == 4 && (!strncmp(f[0], "pass", 4) || !strncmp(f[0], "fail", 4))))
        return errf(err, err_len, "state file: %.6s: verdict \"%.*s\", expected pass or fail", key, (int)(fl[0] > 16 ? 16 : fl[0]), f[0]);
    memcpy(e->verdict, f[0], fl[0]);
    if (parse_unit(f[1], fl[1], &e->score) || parse_unit(f[2], fl[2], &e->threshold))
        return errf(err, err_len, "state file: %.6s: score and threshold must be decimals from 0 to 1", key);
    uint64_t cases = 0;
    if (fl[3] == 0 || fl[3] > 9) return errf(err, err_len, "state file: %.6s: bad case count", key);
    for (size_t i = 0; i < fl[3]; i++) {
        if (f[3][i] < '0' || f[3][i] > '9') return errf(err, err_len, "state file: %.6s: bad case count", key);
        cases = cases * 10 + (uint64_t)(f[3][i] - '0');
    }
    e->cases = (uint32_t)cases;
    if (fl[4] != 64) return errf(err, err_len, "state file: %.6s: the set's SHA-256 must be 64 hex digits", key);
    for (size_t i = 0; i < 64; i++)
        if (!((f[4][i] >= '0' && f[4][i] <= '9') || (f[4][i] >= 'a' && f[4][i] <= 'f')))
            return errf(err, err_len, "state file: %.6s: the set's SHA-256 must be 64 lowercase hex digits", key);
    memcpy(e->set_sha256, f[4], 64);
    e->set_sha256[64] = 0;
    return 0;
}

int store_parse_state(const char *text, size_t len, struct store_state *st, char *err, size_t err_len)
{
    memset(st, 0, sizeof *st);
    st->trial = -1;
    if (len > STATE_MAX_BYTES) return errf(err, err_len, "state file: %zu bytes, at most %d", len, STATE_MAX_BYTES);
    char buf[STATE_MAX_BYTES + 1];
    memcpy(buf, text, len);
    buf[len] = '\0';
    if (strlen(buf) != len) return errf(err, err_len, "state file: contains a NUL byte");
    char *lines[8];
    int n = 0;
    char *p = buf;
    while (n < 8 && *p) {
        char *nl = strchr(p, '\n');
        if (!nl) return errf(err, err_len, "state file: line %d does not end with a newline", n + 1);
        *nl = '\0';
        lines[n++] = p;
        p = nl + 1;
    }
    int version = n >= 1 && !strcmp(lines[0], STATE_MAGIC_LINE) ? 1 : n >= 1 && !strcmp(lines[0], STATE_MAGIC_LINE_2) ? 2 : 0;
    if (!version)
        return errf(err, err_len, "state file: first line \"%.40s\", expected \"%s\" or \"%s\"", n ? lines[0] : "",
                    STATE_MAGIC_LINE, STATE_MAGIC_LINE_2);
    if (n != (version == 1 ? 5 : 7) || *p)
        return errf(err, err_len, "state file: expected exactly %d lines", version == 1 ? 5 : 7);
    uint64_t v;
    if (parse_u64_field(lines[1], "epoch_floor", UINT64_MAX, &st->epoch_floor, err, err_len)) return -1;
    if (!strcmp(lines[2], "trial -")) st->trial = -1;
    else if (!strcmp(lines[2], "trial a")) st->trial = 0;
    else if (!strcmp(lines[2], "trial b")) st->trial = 1;
    else return errf(err, err_len, "state file: \"%.40s\", expected \"trial -|a|b\"", lines[2]);
    if (parse_u64_field(lines[3], "boot_attempts", UINT32_MAX, &v, err, err_len)) return -1;
    st->boot_attempts = (uint32_t)v;
    if (strncmp(lines[4], "last_fallback ", 14)) return errf(err, err_len, "state file: expected a \"last_fallback\" line");
    if (strlen(lines[4] + 14) >= sizeof st->last_fallback) return errf(err, err_len, "state file: last_fallback too long");
    snprintf(st->last_fallback, sizeof st->last_fallback, "%s", lines[4] + 14);
    for (int i = 0; version == 2 && i < 2; i++)
        if (parse_eval_line(lines[5 + i], i, &st->eval[i], err, err_len)) return -1;
    return 0;
}

int store_read_state(const struct update_config *cfg, struct store_state *st, char *err, size_t err_len)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/state", cfg->data_dir);
    char *text;
    size_t len;
    if (access(path, F_OK) != 0 && errno == ENOENT) {
        memset(st, 0, sizeof *st); /* a fresh box: floor 0, nothing under trial */
        st->trial = -1;
        return 0;
    }
    if (durable_read_small(path, STATE_MAX_BYTES, &text, &len, err, err_len)) return -1;
    int rc = store_parse_state(text, len, st, err, err_len);
    free(text);
    if (rc) errf_prefix(err, err_len, "%s", path);
    return rc;
}

int store_write_state(const struct update_config *cfg, const struct store_state *st, char *err, size_t err_len)
{
    char path[4200], text[1024], reason[256], evals[2][160];
    snprintf(path, sizeof path, "%s/state", cfg->data_dir);
    /* One line: a reason never carries a newline into the file. */
    snprintf(reason, sizeof reason, "%s", st->last_fallback);
    for (char *c = reason; *c; c++)
        if (*c == '\n' || *c == '\r') *c = ' ';
    bool v2 = st->eval[0].verdict[0] || st->eval[1].verdict[0];
    for (int i = 0; i < 2; i++) {
        const struct update_eval_record *e = &st->eval[i];
        if (!e->verdict[0]) snprintf(evals[i], sizeof evals[i], "eval_%s -\n", store_slot_name(i));
        else if (!strcmp(e->verdict, "running")) snprintf(evals[i], sizeof evals[i], "eval_%s running\n", store_slot_name(i));
        else snprintf(evals[i], sizeof evals[i], "eval_%s %s %.6f %.6f %u %s\n", store_slot_name(i), e->verdict, e->score,
                      e->threshold, e->cases, e->set_sha256);
    }
    int n = snprintf(text, sizeof text, "%s\nepoch_floor %" PRIu64 "\ntrial %s\nboot_attempts %u\nlast_fallback %s\n%s%s",
                     v2 ? STATE_MAGIC_LINE_2 : STATE_MAGIC_LINE, st->epoch_floor,
                     st->trial < 0 ? "-" : store_slot_name(st->trial), st->boot_attempts, reason, v2 ? evals[0] : "",
                     v2 ? evals[1] : "");
    return durable_replace_file(path, text, (size_t)n, 0644, err, err_len);
}

/* Who holds the flock on fd's file, from /proc/locks (the pid that took it) and that pid's
 * command line: "pid N (cmd args)", "this process", or "" when it cannot be told. */
static void lock_holder(int fd, char *who, size_t who_len)
{
    who[0] = 0;
    struct stat st;
    FILE *f = fstat(fd, &st) == 0 ? fopen("/proc/locks", "r") : NULL;
    if (!f) return;
    char line[256];
    long pid = 0;
    while (!pid && fgets(line, sizeof line, f)) {
        /* "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"; a blocked waiter's line has "->" */
        char kind[16];
        long p;
        unsigned maj, min;
        unsigned long long ino;
        if (!strstr(line, "->") && sscanf(line, "%*d: %15s %*s %*s %ld %x:%x:%llu", kind, &p, &maj, &min, &ino) == 5 &&
            !strcmp(kind, "FLOCK") && maj == major(st.st_dev) && min == minor(st.st_dev) && ino == st.st_ino && p > 0)
            pid = p;
    }
    fclose(f);
    if (!pid) return;
    if (pid == (long)getpid()) {
        snprintf(who, who_len, "this process (pid %ld)", pid);
        return;
    }
    char path[64], cmd[160] = "";
    snprintf(path, sizeof path, "/proc/%ld/cmdline", pid);
    FILE *c = fopen(path, "r");
    size_t n = c ? fread(cmd, 1, sizeof cmd - 1, c) : 0;
    if (c) fclose(c);
    for (size_t i = 0; i < n; i++)
        if (cmd[i] == 0 || cmd[i] == '\n') cmd[i] = ' ';
    while (n && cmd[n - 1] == ' ') n--;
    cmd[n] = 0;
    if (n) snprintf(who, who_len, "pid %ld (%s%s)", pid, cmd, n == sizeof cmd - 1 ? "..." : "");
    else snprintf(who, who_len, "pid %ld", pid);
}

int store_lock(const struct update_config *cfg, bool wait, int *fd, char *err, size_t err_len)
{
    if (mkdir(cfg->data_dir, 0755) != 0 && errno != EEXIST)
        return errf(err, err_len, "data directory %s: %s", cfg->data_dir, strerror(errno));
    char path[4200];
    snprintf(path, sizeof path, "%s/lock", cfg->data_dir);
    *fd = safe_open(path, O_RDWR | O_CREAT | O_NOFOLLOW, 0600, err, err_len);
    if (*fd < 0) return -1;
    /* A writer that does not wait still allows two seconds: the daemon's boot bookkeeping
     * holds the lock for milliseconds, an install for minutes. The boot waits longer, but
     * not without end: a stalled install must not keep the daemon from starting (systemd
     * restarts it, and the next start tries again). */
    uint32_t wait_s = cfg->lock_wait_s ? cfg->lock_wait_s : UPDATE_DEFAULT_LOCK_WAIT_S;
    long tries = wait ? (long)wait_s * 50 : 100;
    while (flock(*fd, LOCK_EX | LOCK_NB) != 0) {
        if (errno == EINTR) continue;
        if (errno == EWOULDBLOCK && --tries > 0) {
            usleep(20000);
            continue;
        }
        int e = errno;
        char who[240];
        if (e == EWOULDBLOCK) lock_holder(*fd, who, sizeof who);
        close(*fd);
        *fd = -1;
        if (e == EWOULDBLOCK && wait)
            return errf(err, err_len, "%s is still held by %s after update.lock_wait_s = %u s: another update operation "
                        "is running; let it finish (or stop it) and start again", path, who[0] ? who : "another process",
                        wait_s);
        if (e == EWOULDBLOCK)
            return errf(err, err_len, "%s: another update operation is running%s%s", cfg->data_dir,
                        who[0] ? " in " : "", who);
        return errf(err, err_len, "%s: flock: %s", path, strerror(e));
    }
    return 0;
}

void store_unlock(int fd)
{
    if (fd >= 0) close(fd); /* closing drops the flock */
}

int store_check_slot(const struct update_config *cfg, const struct keyset *ks, int slot, bool deep,
                     const struct update_hooks *hooks, struct bundle *b, char *err, size_t err_len)
{
    memset(b, 0, sizeof *b);
    b->fd = -1;
    char dir[4200], path[4400];
    store_slot_dir(cfg, slot, dir, sizeof dir);
    snprintf(path, sizeof path, "%s/%s", dir, STORE_SLOT_MANIFEST);
    char *head;
    size_t head_len;
    if (access(path, F_OK) != 0) return errf(err, err_len, "no signed manifest (empty or incomplete)");
    if (durable_read_small(path, (size_t)BUNDLE_HEADER_LEN + MANIFEST_MAX_BYTES + KEYS_SIG_LEN, &head, &head_len, err,
                           err_len))
        return -1;
    if (bundle_parse_head(b, (uint8_t *)head, head_len, ks, err, err_len)) {
        free(head);
        return errf_prefix(err, err_len, "slot %s", store_slot_name(slot));
    }
    for (uint32_t i = 0; i < b->m.n_payloads; i++) {
        const struct manifest_payload *p = &b->m.payloads[i];
        snprintf(path, sizeof path, "%s/%s", dir, p->name);
        char oerr[512];
        int fd = safe_open(path, O_RDONLY | O_NOFOLLOW, 0, oerr, sizeof oerr);
        struct stat st;
        int rc = 0;
        if (fd < 0) rc = errf(err, err_len, "slot %s: %s", store_slot_name(slot), oerr);
        else if (fstat(fd, &st) != 0 || (uint64_t)st.st_size != p->size)
            rc = errf(err, err_len, "slot %s: %s is %lld bytes, the manifest says %llu", store_slot_name(slot), p->name,
                      (long long)st.st_size, (unsigned long long)p->size);
        else if (deep)
            rc = bundle_check_payload(fd, 0, p, path, UPDATE_PHASE_VERIFY, hooks, NULL, NULL, err, err_len);
        if (fd >= 0) close(fd);
        if (rc) {
            bundle_close(b);
            return -1;
        }
    }
    return 0;
}
