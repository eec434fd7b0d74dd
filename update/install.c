/* A/B install, status, rollback and the daemon's boot protocol.
 *
 * Install order, chosen so that a crash at any instant leaves `active` on a complete,
 * signed slot and a rerun finishes the job:
 *   1. verify the bundle head (signature before parse), product, epoch >= floor
 *   2. unlink the inactive slot's bundle.manifest and fsync the slot directory: from here
 *      on that slot is invalid whatever its payload files hold
 *   3. per payload: read a chunk into memory, hash it, compare, write that same buffer to
 *      NAME.part; fsync; rename to NAME; remove files the manifest does not list
 *   4. write the slot's bundle.manifest (temp + fsync + rename + fsync dir): slot complete
 *   5. self-test the new slot (model loads, greedy tokens match the manifest)
 *   5b. the site's evaluation, when a policy is set: state records the slot's evaluation as
 *      "running" first, then its score and verdict; a slot that fails is invalidated like one
 *      that fails the self-test, and one whose evaluation never finished (a crash) stays
 *      "running", which rollback refuses, so the gate can not be skipped
 *   6. rotated key set, if the bundle carries one (it must include its own signing key, so
 *      the new slot stays valid under the new set)
 *   7. state: trial = new slot; rename `active` to the new slot; state: floor raised
 * Every writer first repairs a crash between the rename and the floor write by raising the
 * floor to the active slot's epoch. */
#include "update/bundle.h"
#include "common/safe_open.h"
#include "update/durable.h"
#include "update/store.h"
#include "update/update.h"

#include "common/errmsg.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void update_config_default(struct update_config *cfg)
{
    cfg->data_dir = UPDATE_DEFAULT_DATA_DIR;
    cfg->keys_dir = UPDATE_DEFAULT_KEYS_DIR;
    cfg->product = UPDATE_DEFAULT_PRODUCT;
    cfg->max_boot_attempts = UPDATE_DEFAULT_BOOT_ATTEMPTS;
    cfg->lock_wait_s = UPDATE_DEFAULT_LOCK_WAIT_S;
}

int update_keygen(const char *dir, char *err, size_t err_len) { return keys_generate(dir, err, err_len); }

/* The floor is never below the epoch of the active slot (repairs a crash in step 7). */
static int repair_floor(const struct update_config *cfg, const struct keyset *ks, struct store_state *st, char *err,
                        size_t err_len)
{
    int active;
    if (store_active(cfg, &active, err, err_len)) return -1;
    if (active < 0) return 0;
    struct bundle b;
    char ignored[256];
    if (store_check_slot(cfg, ks, active, false, NULL, &b, ignored, sizeof ignored)) return 0;
    uint64_t epoch = b.m.epoch;
    bundle_close(&b);
    if (epoch <= st->epoch_floor) return 0;
    st->epoch_floor = epoch;
    return store_write_state(cfg, st, err, err_len);
}

struct write_ctx {
    int fd;
    const char *path;
};

static int write_chunk(void *user, const struct manifest_payload *p, uint64_t index, uint64_t offset,
                       const uint8_t *data, size_t len, char *err, size_t err_len)
{
    (void)p;
    (void)index;
    struct write_ctx *w = user;
    return durable_pwrite_all(w->fd, data, len, offset, w->path, err, err_len);
}

static bool listed(const struct manifest *m, const char *name)
{
    if (!strcmp(name, STORE_SLOT_MANIFEST)) return true;
    return manifest_find_payload(m, name) != NULL;
}

/* Removes everything in the slot directory the manifest does not name (older payloads,
 * .part leftovers), so a slot holds exactly one release. */
static int prune_slot(const char *dir, const struct manifest *m, char *err, size_t err_len)
{
    DIR *d = opendir(dir);
    if (!d) return errf(err, err_len, "%s: %s", dir, strerror(errno));
    struct dirent *de;
    int rc = 0;
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..") || listed(m, de->d_name)) continue;
        char path[4600];
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        if (unlink(path) != 0 && errno != ENOENT) rc = errf(err, err_len, "removing %s: %s", path, strerror(errno));
    }
    closedir(d);
    return rc;
}

static int write_payload(const struct bundle *b, uint32_t i, const char *dir, const struct update_hooks *hooks,
                         char *err, size_t err_len)
{
    const struct manifest_payload *p = &b->m.payloads[i];
    char part[4400], final[4400];
    snprintf(part, sizeof part, "%s/%s.part", dir, p->name);
    snprintf(final, sizeof final, "%s/%s", dir, p->name);
    struct write_ctx w = { safe_open(part, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW, 0644, err, err_len), part };
    if (w.fd < 0) return -1;
    char what[200];
    snprintf(what, sizeof what, "payload %s", p->name);
    int rc = bundle_check_payload(b->fd, b->payload_off[i], p, what, UPDATE_PHASE_WRITE, hooks, write_chunk, &w, err,
                                  err_len);
    if (!rc && fsync(w.fd) != 0) rc = errf(err, err_len, "fsync %s: %s", part, strerror(errno));
    if (close(w.fd) != 0 && !rc) rc = errf(err, err_len, "closing %s: %s", part, strerror(errno));
    if (!rc && rename(part, final) != 0) rc = errf(err, err_len, "rename %s: %s", part, strerror(errno));
    if (rc) unlink(part); /* give the space back; the slot has no manifest, so it is invalid anyway */
    return rc;
}

static int invalidate_slot(const char *dir, char *err, size_t err_len)
{
    char path[4400];
    snprintf(path, sizeof path, "%s/%s", dir, STORE_SLOT_MANIFEST);
    if (unlink(path) != 0 && errno != ENOENT) return errf(err, err_len, "removing %s: %s", path, strerror(errno));
    return durable_fsync_path(dir, err, err_len);
}

static int run_selftest(const struct bundle *b, const char *dir, const struct update_hooks *hooks, char *err,
                        size_t err_len)
{
    if (!manifest_find_payload(&b->m, UPDATE_MODEL_PAYLOAD)) return 0; /* nothing to load */
    if (!hooks || !hooks->selftest) return errf(err, err_len, "no self-test available: refusing to activate an untested slot");
    char model[4400];
    snprintf(model, sizeof model, "%s/%s", dir, UPDATE_MODEL_PAYLOAD);
    struct update_selftest t = { model, b->m.prompt, b->m.n_prompt, b->m.expected, b->m.n_expected };
    if (hooks->progress) hooks->progress(hooks->user, UPDATE_PHASE_SELFTEST, UPDATE_MODEL_PAYLOAD, 0, 1);
    if (hooks->selftest(hooks->user, &t, err, err_len)) return errf_prefix(err, err_len, "self-test of the new slot failed");
    if (hooks->progress) hooks->progress(hooks->user, UPDATE_PHASE_SELFTEST, UPDATE_MODEL_PAYLOAD, 1, 1);
    return 0;
}

/* Step 5b. st is the state as last written; the slot's record goes through it. */
static int run_evaluation(const struct update_config *cfg, const struct bundle *b, int target, int active,
                          const char *dir, const struct update_hooks *hooks, struct store_state *st, char *err,
                          size_t err_len)
{
    if (!hooks || !hooks->evaluate || !manifest_find_payload(&b->m, UPDATE_MODEL_PAYLOAD)) return 0;
    char model[4400];
    snprintf(model, sizeof model, "%s/%s", dir, UPDATE_MODEL_PAYLOAD);
    const struct update_eval_record *prev = active >= 0 ? &st->eval[active] : NULL;
    char active_model[4400], active_dir[4200];
    bool active_has_model = false;
    if (active >= 0) {
        store_slot_dir(cfg, active, active_dir, sizeof active_dir);
        snprintf(active_model, sizeof active_model, "%s/%s", active_dir, UPDATE_MODEL_PAYLOAD);
        active_has_model = access(active_model, R_OK) == 0;
    }
    struct update_eval e = {
        .active_model_path = active_has_model ? active_model : NULL,
        .active_slot = active_has_model ? store_slot_name(active) : NULL,
        .model_path = model,
        .slot = store_slot_name(target),
        .has_active = prev && (!strcmp(prev->verdict, "pass") || !strcmp(prev->verdict, "fail")),
        .active_score = prev ? prev->score : 0,
        .active_set_sha256 = prev ? prev->set_sha256 : "",
        .progress = hooks->progress,
        .progress_user = hooks->user,
    };
    struct update_eval_record *rec = &st->eval[target];
    memset(rec, 0, sizeof *rec);
    snprintf(rec->verdict, sizeof rec->verdict, "running");
    if (store_write_state(cfg, st, err, err_len)) return -1;
    bundle_test_pause();
    struct update_eval_result r = { 0 };
    int rc = hooks->evaluate(hooks->eval_user, &e, &r, err, err_len);
    if (!r.ran && !rc) { /* the hook had no policy to apply: nothing to record */
        memset(rec, 0, sizeof *rec);
        return store_write_state(cfg, st, err, err_len);
    }
    if (r.active_ran && active >= 0) { /* the baseline, measured now on the same bytes */
        struct update_eval_record *ar = &st->eval[active];
        snprintf(ar->verdict, sizeof ar->verdict, "%s", r.active_passed ? "pass" : "fail");
        ar->score = r.active_score < 0 ? 0 : r.active_score > 1 ? 1 : r.active_score;
        ar->threshold = r.active_threshold < 0 ? 0 : r.active_threshold > 1 ? 1 : r.active_threshold;
        ar->cases = r.n_cases;
        snprintf(ar->set_sha256, sizeof ar->set_sha256, "%s", r.set_sha256);
    }
    if (!r.ran) {
        char ignored[256];
        if (r.active_ran) store_write_state(cfg, st, ignored, sizeof ignored);
        return errf_prefix(err, err_len, "site evaluation of slot %s could not run", e.slot);
    }
    snprintf(rec->verdict, sizeof rec->verdict, "%s", rc ? "fail" : "pass");
    rec->score = r.score < 0 ? 0 : r.score > 1 ? 1 : r.score;
    rec->threshold = r.threshold < 0 ? 0 : r.threshold > 1 ? 1 : r.threshold;
    rec->cases = r.n_cases;
    snprintf(rec->set_sha256, sizeof rec->set_sha256, "%s", r.set_sha256);
    char ignored[256];
    if (store_write_state(cfg, st, rc ? ignored : err, rc ? sizeof ignored : err_len) && !rc) return -1;
    if (rc) return errf_prefix(err, err_len, "site evaluation of slot %s refused it", e.slot);
    return 0;
}

static int rotate_keys(const struct update_config *cfg, const struct bundle *b, char *err, size_t err_len)
{
    if (b->m.n_keys == 0) return 0;
    char *pem;
    size_t pem_len;
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", cfg->data_dir, STORE_ROTATED_KEYS);
    if (keys_to_pem((const uint8_t(*)[KEYS_RAW_LEN])b->m.keys, b->m.n_keys, &pem, &pem_len, err, err_len)) return -1;
    int rc = durable_replace_file(path, pem, pem_len, 0644, err, err_len);
    free(pem);
    return rc;
}

static int check_policy(const struct update_config *cfg, const struct bundle *b, const struct keyset *ks,
                        const struct store_state *st, char *err, size_t err_len)
{
    if (strcmp(b->m.product, cfg->product))
        return errf(err, err_len, "bundle is for product \"%s\", this box is \"%s\"", b->m.product, cfg->product);
    if (b->m.epoch < st->epoch_floor)
        return errf(err, err_len, "bundle epoch %" PRIu64 " is below the stored epoch floor %" PRIu64 " (rollback refused)",
                    b->m.epoch, st->epoch_floor);
    if (b->m.n_keys) {
        bool has_signer = false;
        for (uint32_t i = 0; i < b->m.n_keys; i++)
            if (!memcmp(b->m.keys[i], ks->raw[b->key_index], KEYS_RAW_LEN)) has_signer = true;
        if (!has_signer)
            return errf(err, err_len, "bundle rotates the trusted keys to a set without its own signing key %s; "
                        "rotation must overlap (a later bundle signed by a new key can drop the old one)",
                        b->key_fingerprint);
    }
    return 0;
}

static int install_locked(const struct update_config *cfg, const char *bundle_path, const struct update_hooks *hooks,
                          struct update_bundle_info *info, char *err, size_t err_len)
{
    struct keyset ks;
    char source[4096];
    struct store_state st;
    if (store_load_trust(cfg, &ks, source, sizeof source, err, err_len)) return -1;
    if (store_read_state(cfg, &st, err, err_len) || repair_floor(cfg, &ks, &st, err, err_len)) return -1;
    struct bundle b;
    if (bundle_open(&b, bundle_path, &ks, err, err_len)) return -1;
    if (info) bundle_info_fill(&b, info);
    int rc = check_policy(cfg, &b, &ks, &st, err, err_len);
    int active = -1;
    if (!rc) rc = store_active(cfg, &active, err, err_len);
    int target = active == 0 ? 1 : 0;
    char dir[4200];
    store_slot_dir(cfg, target, dir, sizeof dir);
    if (!rc && mkdir(dir, 0755) != 0 && errno != EEXIST) rc = errf(err, err_len, "%s: %s", dir, strerror(errno));
    if (!rc) rc = invalidate_slot(dir, err, err_len);
    if (!rc && st.eval[target].verdict[0]) { /* the old release's evaluation says nothing of the new one */
        memset(&st.eval[target], 0, sizeof st.eval[target]);
        rc = store_write_state(cfg, &st, err, err_len);
    }
    bundle_test_pause();
    for (uint32_t i = 0; i < b.m.n_payloads && !rc; i++) {
        rc = write_payload(&b, i, dir, hooks, err, err_len);
        bundle_test_pause();
    }
    if (!rc) rc = update_check_cancel(hooks, "install", err, err_len);
    if (!rc) rc = prune_slot(dir, &b.m, err, err_len);
    if (!rc) rc = durable_fsync_path(dir, err, err_len);
    bundle_test_pause();
    if (!rc) {
        char path[4400];
        snprintf(path, sizeof path, "%s/%s", dir, STORE_SLOT_MANIFEST);
        rc = durable_replace_file(path, b.head, (size_t)BUNDLE_HEADER_LEN + b.manifest_len + KEYS_SIG_LEN, 0644, err,
                                  err_len);
    }
    bundle_test_pause();
    if (!rc) rc = update_check_cancel(hooks, "install", err, err_len);
    if (!rc && ((rc = run_selftest(&b, dir, hooks, err, err_len)) ||
                (rc = update_check_cancel(hooks, "install", err, err_len)) ||
                (rc = run_evaluation(cfg, &b, target, active, dir, hooks, &st, err, err_len)))) {
        char ignored[256];
        invalidate_slot(dir, ignored, sizeof ignored); /* tested bad: never a fallback target */
    }
    if (!rc && hooks && hooks->progress) hooks->progress(hooks->user, UPDATE_PHASE_ACTIVATE, store_slot_name(target), 0, 1);
    bundle_test_pause();
    /* The last cancellation point: from here the switch is a few small durable writes. */
    if (!rc) rc = update_check_cancel(hooks, "install", err, err_len);
    if (!rc) rc = rotate_keys(cfg, &b, err, err_len);
    if (!rc) {
        st.trial = target;
        st.boot_attempts = 0;
        rc = store_write_state(cfg, &st, err, err_len);
    }
    bundle_test_pause();
    if (!rc) rc = store_set_active(cfg, target, err, err_len);
    bundle_test_pause();
    if (!rc && b.m.epoch > st.epoch_floor) {
        st.epoch_floor = b.m.epoch;
        rc = store_write_state(cfg, &st, err, err_len);
    }
    if (!rc && hooks && hooks->progress) hooks->progress(hooks->user, UPDATE_PHASE_ACTIVATE, store_slot_name(target), 1, 1);
    bundle_close(&b);
    return rc;
}

int update_install(const struct update_config *cfg, const char *bundle_path, const struct update_hooks *hooks,
                   struct update_bundle_info *info, char *err, size_t err_len)
{
    int lock;
    if (store_lock(cfg, false, &lock, err, err_len)) return -1;
    int rc = install_locked(cfg, bundle_path, hooks, info, err, err_len);
    store_unlock(lock);
    return rc;
}

static void fill_slot(const struct update_config *cfg, const struct keyset *ks, int i, struct update_slot_status *s)
{
    memset(s, 0, sizeof *s);
    snprintf(s->name, sizeof s->name, "%s", store_slot_name(i));
    store_slot_dir(cfg, i, s->path, sizeof s->path);
    struct bundle b;
    if (store_check_slot(cfg, ks, i, false, NULL, &b, s->why_invalid, sizeof s->why_invalid)) return;
    s->valid = true;
    snprintf(s->product, sizeof s->product, "%s", b.m.product);
    snprintf(s->version, sizeof s->version, "%s", b.m.version);
    s->epoch = b.m.epoch;
    s->created = b.m.created;
    if (b.m.provenance) snprintf(s->provenance, sizeof s->provenance, "%.*s", (int)b.m.provenance_len, b.m.provenance);
    bundle_close(&b);
}

int update_get_status(const struct update_config *cfg, struct update_status *st, char *err, size_t err_len)
{
    memset(st, 0, sizeof *st);
    struct keyset ks;
    struct store_state state;
    char ks_err[256];
    /* Without trusted keys every slot reads as invalid, but the status is still shown. */
    if (store_load_trust(cfg, &ks, st->keys_source, sizeof st->keys_source, ks_err, sizeof ks_err)) {
        memset(&ks, 0, sizeof ks);
        snprintf(st->keys_source + strlen(st->keys_source), sizeof st->keys_source - strlen(st->keys_source),
                 " (unusable: %s)", ks_err);
    }
    if (store_read_state(cfg, &state, err, err_len) || store_active(cfg, &st->active, err, err_len)) return -1;
    for (int i = 0; i < 2; i++) {
        fill_slot(cfg, &ks, i, &st->slots[i]);
        st->slots[i].active = st->active == i;
    }
    for (int i = 0; i < 2; i++) st->slots[i].eval = state.eval[i];
    st->epoch_floor = state.epoch_floor;
    st->trial = state.trial;
    st->boot_attempts = state.boot_attempts;
    snprintf(st->last_fallback, sizeof st->last_fallback, "%s", state.last_fallback);
    return 0;
}

int update_read_evals(const struct update_config *cfg, struct update_eval_record out[2], char *err, size_t err_len)
{
    struct store_state st;
    memset(out, 0, 2 * sizeof *out);
    if (store_read_state(cfg, &st, err, err_len)) return -1;
    out[0] = st.eval[0];
    out[1] = st.eval[1];
    return 0;
}

int update_verify_slot(const struct update_config *cfg, int slot, const struct update_hooks *hooks, char *err,
                       size_t err_len)
{
    if (slot < 0 || slot > 1) return errf(err, err_len, "slot index %d, expected 0 (a) or 1 (b)", slot);
    struct keyset ks;
    char source[4096];
    if (store_load_trust(cfg, &ks, source, sizeof source, err, err_len)) return -1;
    struct bundle b;
    if (store_check_slot(cfg, &ks, slot, true, hooks, &b, err, err_len)) return -1;
    bundle_close(&b);
    return 0;
}

/* Switches to the other slot when it is valid and not below the floor; why explains a no. */
static int switch_to_other(const struct update_config *cfg, const struct keyset *ks, struct store_state *st,
                           int active, char *why, size_t why_len)
{
    int other = 1 - active;
    struct bundle b;
    if (store_check_slot(cfg, ks, other, false, NULL, &b, why, why_len)) return -1;
    uint64_t epoch = b.m.epoch;
    bundle_close(&b);
    if (epoch < st->epoch_floor)
        return errf(why, why_len, "slot %s has epoch %" PRIu64 ", below the epoch floor %" PRIu64, store_slot_name(other),
                    epoch, st->epoch_floor);
    if (!strcmp(st->eval[other].verdict, "running") || !strcmp(st->eval[other].verdict, "fail"))
        return errf(why, why_len, "slot %s %s the site evaluation; install it again to evaluate it", store_slot_name(other),
                    st->eval[other].verdict[0] == 'r' ? "never finished" : "failed");
    /* Pointer first: a crash before the state write leaves a trial naming the slot that is
     * no longer active, which the next boot clears; the other order could strand the box
     * on the failed slot with its trial already cleared. */
    if (store_set_active(cfg, other, why, why_len)) return -1;
    st->trial = -1;
    st->boot_attempts = 0;
    return store_write_state(cfg, st, why, why_len);
}

/* With the store locked: the trusted keys, the state (its epoch floor repaired up to the
 * active slot's) and the active slot (-1 when none). */
static int load_store(const struct update_config *cfg, struct keyset *ks, struct store_state *st, int *active,
                      char *err, size_t err_len)
{
    char source[4096];
    int rc = store_load_trust(cfg, ks, source, sizeof source, err, err_len);
    if (!rc) rc = store_read_state(cfg, st, err, err_len);
    if (!rc) rc = repair_floor(cfg, ks, st, err, err_len);
    if (!rc) rc = store_active(cfg, active, err, err_len);
    return rc;
}

int update_rollback(const struct update_config *cfg, char *err, size_t err_len)
{
    int lock;
    if (store_lock(cfg, false, &lock, err, err_len)) return -1;
    struct keyset ks;
    struct store_state st;
    int active = -1;
    int rc = load_store(cfg, &ks, &st, &active, err, err_len);
    if (!rc && active < 0) rc = errf(err, err_len, "%s: no active slot, nothing to roll back from", cfg->data_dir);
    if (!rc && switch_to_other(cfg, &ks, &st, active, err, err_len)) rc = errf_prefix(err, err_len, "rollback refused");
    store_unlock(lock);
    return rc;
}

int update_boot_begin(const struct update_config *cfg, struct update_boot *boot, char *err, size_t err_len)
{
    memset(boot, 0, sizeof *boot);
    int lock;
    if (store_lock(cfg, true, &lock, err, err_len)) return -1;
    struct keyset ks;
    struct store_state st;
    int active = -1;
    int rc = load_store(cfg, &ks, &st, &active, err, err_len);
    if (!rc && active < 0) rc = errf(err, err_len, "%s: no slot installed yet", cfg->data_dir);
    if (!rc && st.trial >= 0 && st.trial != active) { /* a trial that never got activated */
        st.trial = -1;
        st.boot_attempts = 0;
        rc = store_write_state(cfg, &st, err, err_len);
    }
    if (!rc && st.trial == active && st.boot_attempts >= cfg->max_boot_attempts) {
        char why[200];
        char reason[256];
        if (switch_to_other(cfg, &ks, &st, active, why, sizeof why) == 0) {
            snprintf(reason, sizeof reason, "slot %s did not become ready in %u starts; fell back to slot %s",
                     store_slot_name(active), st.boot_attempts ? st.boot_attempts : cfg->max_boot_attempts,
                     store_slot_name(1 - active));
            boot->fell_back = true;
            active = 1 - active;
        } else {
            snprintf(reason, sizeof reason, "slot %s did not become ready in %u starts; no fallback: %.150s",
                     store_slot_name(active), st.boot_attempts, why);
        }
        st.trial = -1;
        st.boot_attempts = 0;
        snprintf(st.last_fallback, sizeof st.last_fallback, "%s", reason);
        snprintf(boot->reason, sizeof boot->reason, "%s", reason);
        rc = store_write_state(cfg, &st, err, err_len);
    } else if (!rc && st.trial == active) {
        st.boot_attempts++;
        rc = store_write_state(cfg, &st, err, err_len);
    }
    if (!rc) {
        char dir[4096];
        store_slot_dir(cfg, active, dir, sizeof dir);
        snprintf(boot->slot, sizeof boot->slot, "%s", store_slot_name(active));
        snprintf(boot->model_path, sizeof boot->model_path, "%s/%s", dir, UPDATE_MODEL_PAYLOAD);
    }
    store_unlock(lock);
    return rc;
}

int update_boot_ready(const struct update_config *cfg, char *err, size_t err_len)
{
    int lock;
    if (store_lock(cfg, true, &lock, err, err_len)) return -1;
    struct store_state st;
    int active = -1;
    int rc = store_read_state(cfg, &st, err, err_len);
    if (!rc) rc = store_active(cfg, &active, err, err_len);
    if (!rc && st.trial >= 0 && st.trial == active) {
        st.trial = -1;
        st.boot_attempts = 0;
        rc = store_write_state(cfg, &st, err, err_len);
    }
    store_unlock(lock);
    return rc;
}
