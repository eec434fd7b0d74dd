/* The public API of signed updates: bundle creation and verification, A/B slot install,
 * status, rollback, and the boot-attempt protocol the daemon follows. Callers above
 * update/ (firmware, tools) use only this header.
 *
 * Data directory layout (UPDATE_DEFAULT_DATA_DIR, or update_config.data_dir):
 *   slot-a/, slot-b/      one release each: its payload files (model.gguf, firmware) and
 *                         "bundle.manifest" (bundle header + manifest + signature), written
 *                         last, so a slot without it is never taken for valid
 *   active -> slot-a      symlink; switched by one atomic rename
 *   state                 text: epoch floor, slot under boot trial, boot attempts, last
 *                         fallback reason (rewritten atomically)
 *   trusted-keys.pem      the rotated trusted key set, once a bundle has carried one; from
 *                         then on it replaces the configured key directory
 *   lock                  flock'd by every writer (install, rollback, boot bookkeeping)
 *
 * Trusted keys: every "*.pem" file in update_config.keys_dir (UPDATE_DEFAULT_KEYS_DIR)
 * holding one or more Ed25519 "PUBLIC KEY" PEM blocks, unless DATA/trusted-keys.pem exists.
 *
 * Threading: calls are blocking; writers serialize on the data directory's lock, so two
 * processes can not install at once. Every error path leaves the active slot untouched. */
#ifndef FLASHBOX_UPDATE_UPDATE_H
#define FLASHBOX_UPDATE_UPDATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define UPDATE_DEFAULT_DATA_DIR "/var/lib/flashbox"
#define UPDATE_DEFAULT_KEYS_DIR "/etc/flashbox/trusted-keys"
#define UPDATE_DEFAULT_PRODUCT "flashbox-v4-flash"
#define UPDATE_DEFAULT_BOOT_ATTEMPTS 3
#define UPDATE_DEFAULT_LOCK_WAIT_S 300 /* a boot waits this long for an install to let go */
#define UPDATE_DEFAULT_CHUNK_SIZE (16u << 20)
#define UPDATE_MODEL_PAYLOAD "model.gguf"
#define UPDATE_FIRMWARE_PAYLOAD "firmware"
#define UPDATE_MAX_PROVENANCE 16384u /* bytes of a manifest's provenance text */

struct update_config {
    const char *data_dir;       /* slots, active pointer, state */
    const char *keys_dir;       /* trusted public keys (*.pem) */
    const char *product;        /* bundles for any other product are refused */
    uint32_t max_boot_attempts; /* failed daemon starts on a new slot before falling back */
    uint32_t lock_wait_s;       /* boot begin/ready: longest wait (s) for another writer's lock;
                                   0 = UPDATE_DEFAULT_LOCK_WAIT_S */
};

void update_config_default(struct update_config *cfg);

enum update_phase {
    UPDATE_PHASE_HASH = 0,      /* bundle create: hashing and copying a payload */
    UPDATE_PHASE_VERIFY,        /* verify: hashing a payload's chunks */
    UPDATE_PHASE_WRITE,         /* install: hashing then writing chunks into the slot */
    UPDATE_PHASE_SELFTEST,      /* install: loading the model on the new slot */
    UPDATE_PHASE_EVALUATE,      /* install: the site's evaluation set on the new slot (done/total: cases) */
    UPDATE_PHASE_ACTIVATE,      /* install: switching the active slot */
};

/* Called after each chunk (done/total in bytes of the named payload) and at phase starts. */
typedef void (*update_progress_fn)(void *user, enum update_phase phase, const char *what, uint64_t done,
                                   uint64_t total);

/* What the self-test must check on a freshly written slot. */
struct update_selftest {
    const char *model_path;     /* the new slot's model.gguf */
    const int32_t *prompt;      /* [n_prompt] token ids */
    uint32_t n_prompt;
    const int32_t *expected;    /* [n_expected] greedy tokens recorded in the manifest */
    uint32_t n_expected;
};

/* Returns 0 when the model loads and produces the expected tokens, else -1 and a message.
 * firmware wires this to the engine; update/ never links the engine itself. */
typedef int (*update_selftest_fn)(void *user, const struct update_selftest *t, char *err, size_t err_len);

/* Runs the model greedily: the n_out tokens that follow prompt (bundle create). */
typedef int (*update_greedy_fn)(void *user, const char *model_path, const int32_t *prompt, uint32_t n_prompt,
                                int32_t *out, uint32_t n_out, char *err, size_t err_len);

/* The site's evaluation of a freshly written, self-tested slot (its policy lives above
 * update/: firmware/eval_gate.c). */
struct update_eval {
    const char *model_path;     /* the new slot's model.gguf */
    const char *slot;           /* "a" or "b" */
    /* The active slot's last recorded evaluation (for a maximum regression), if any. */
    bool has_active;
    double active_score;
    const char *active_set_sha256;
    /* The active slot's model.gguf (NULL when there is none): a policy with a maximum
     * regression evaluates it first when it has no score on the set's bytes yet. */
    const char *active_model_path;
    const char *active_slot;    /* "a" or "b"; NULL with active_model_path */
    update_progress_fn progress; /* the install's progress (UPDATE_PHASE_EVALUATE, cases) */
    void *progress_user;
};

struct update_eval_result {
    bool ran;                   /* a score exists (false: the set or model could not be run) */
    double score, threshold;    /* 0..1; threshold: the lowest score the policy accepted */
    uint32_t n_cases;
    char set_sha256[65];        /* of the set's bytes that were evaluated */
    /* The active slot evaluated first as the regression baseline (same set bytes): its
     * score and verdict under the policy's minimum go into its own record. */
    bool active_ran;
    double active_score, active_threshold;
    bool active_passed;
};

/* Returns 0 when the slot meets the site's policy; -1 with the refusal (score, threshold,
 * the worst cases) or the reason it could not run in err. r->ran says whether r holds a
 * score to record either way. */
typedef int (*update_evaluate_fn)(void *user, const struct update_eval *e, struct update_eval_result *r, char *err,
                                  size_t err_len);

/* Asked at every cancellation point (before each chunk, between install steps): nonzero
 * stops the operation there, with why ("the daemon is stopping") in the error. A stopped
 * install leaves the store as a crash at that point would: the active slot untouched, the
 * target slot invalid until a later install completes it. */
typedef int (*update_cancel_fn)(void *user, char *why, size_t why_len);

struct update_hooks {
    update_progress_fn progress;    /* NULL: silent */
    update_selftest_fn selftest;    /* NULL: install refuses (a slot must be tested) */
    void *user;
    update_evaluate_fn evaluate;    /* NULL: no site evaluation policy */
    void *eval_user;
    update_cancel_fn cancelled;     /* NULL: runs to its end */
};

/* 0 unless hooks->cancelled says stop; then -1 and "WHAT cancelled: why" in err. */
int update_check_cancel(const struct update_hooks *hooks, const char *what, char *err, size_t err_len);

/* What verification found, for printing. */
struct update_bundle_info {
    char product[65];
    char version[65];
    uint64_t epoch;
    uint64_t created;
    char key_fingerprint[17];   /* the trusted key whose signature verified */
    char key_origin[128];       /* the file it was loaded from */
    uint32_t manifest_bytes;
    uint32_t n_payloads;
    struct {
        char name[65];
        uint64_t size;
        uint32_t chunk_size;
        uint64_t n_chunks;
    } payloads[8];
    uint32_t n_new_keys;        /* > 0: the bundle rotates the trusted key set */
    uint32_t n_expected;        /* self-test tokens recorded */
    char provenance[UPDATE_MAX_PROVENANCE + 1]; /* the manifest's provenance (JSON text), "" if none */
};

/* Checks the signature against the trusted keys before parsing anything else, then the
 * product and every chunk of every payload. */
int update_verify_bundle(const struct update_config *cfg, const char *bundle_path, const struct update_hooks *hooks,
                         struct update_bundle_info *info, char *err, size_t err_len);

/* Verifies, checks the epoch floor, writes each chunk into the inactive slot only after
 * its hash matched, fsyncs, runs the self-test on the new slot, then switches `active`
 * with one rename and raises the epoch floor. The new slot is under boot trial until the
 * daemon calls update_boot_ready (see below). */
int update_install(const struct update_config *cfg, const char *bundle_path, const struct update_hooks *hooks,
                   struct update_bundle_info *info, char *err, size_t err_len);

/* A slot's last site evaluation, kept in the state file: verdict "" (not evaluated since it
 * was written), "pass", "fail" or "running" (interrupted: never activated). */
struct update_eval_record {
    char verdict[8];
    double score, threshold;
    uint32_t cases;
    char set_sha256[65];
};

/* Both slots' records (index 0 = a), from the state file alone: cheap enough for /metrics. */
int update_read_evals(const struct update_config *cfg, struct update_eval_record out[2], char *err, size_t err_len);

struct update_slot_status {
    char name[8];               /* "a", "b" */
    char path[4096];
    bool active;
    bool valid;                 /* manifest present, signature good, payload sizes match */
    char why_invalid[256];
    char product[65];
    char version[65];
    uint64_t epoch;
    uint64_t created;
    struct update_eval_record eval; /* its last site evaluation */
    char provenance[UPDATE_MAX_PROVENANCE + 1]; /* its manifest's provenance (JSON text), "" if none */
};

struct update_status {
    struct update_slot_status slots[2];
    int active;                 /* index into slots, -1 when no slot was ever activated */
    uint64_t epoch_floor;
    int trial;                  /* slot under boot trial, -1 when none */
    uint32_t boot_attempts;
    char last_fallback[256];    /* why the last automatic fallback happened, "" if never */
    char keys_source[4096];     /* the file or directory the trusted keys came from */
};

int update_get_status(const struct update_config *cfg, struct update_status *st, char *err, size_t err_len);

/* Re-hashes every chunk of a slot's payloads against its signed manifest. */
int update_verify_slot(const struct update_config *cfg, int slot, const struct update_hooks *hooks, char *err,
                       size_t err_len);

/* Makes the other slot active if it is valid and its epoch is not below the floor. */
int update_rollback(const struct update_config *cfg, char *err, size_t err_len);

/* Boot protocol for the daemon. At start: update_boot_begin. If the active slot is under
 * trial and has already failed max_boot_attempts starts, it falls back to the other slot
 * (when valid and not below the epoch floor), records why, and reports fell_back.
 * Otherwise it counts the attempt. model_path receives the model file to load.
 * Once the daemon is ready to serve: update_boot_ready ends the trial. */
struct update_boot {
    char model_path[4200];
    char slot[8];
    bool fell_back;
    char reason[256];
};
int update_boot_begin(const struct update_config *cfg, struct update_boot *boot, char *err, size_t err_len);
int update_boot_ready(const struct update_config *cfg, char *err, size_t err_len);

/* Key pair for signing bundles: DIR/private.key (0600) and DIR/public.pem. */
int update_keygen(const char *dir, char *err, size_t err_len);

struct update_create_opts {
    const char *private_key;    /* PEM file */
    const char *product;
    const char *version;
    uint64_t epoch;
    uint64_t created;           /* unix seconds */
    uint32_t chunk_size;        /* bytes, power of two */
    const char *model_path;     /* payload "model.gguf" */
    const char *firmware_path;  /* payload "firmware", or NULL */
    const char *new_keys_path;  /* PEM file with the rotated key set, or NULL */
    const int32_t *prompt;      /* self-test prompt */
    uint32_t n_prompt;
    const int32_t *expected;    /* tokens the model produces after it (from update_greedy_fn) */
    uint32_t n_expected;
    const char *provenance;     /* JSON text for the manifest's provenance section, or NULL */
    const char *out_path;
};

/* Streams each payload once: hashes every chunk and writes it into the bundle (zero chunks
 * become holes, so sparse inputs stay sparse), then signs the manifest. */
int update_bundle_create(const struct update_create_opts *opt, const struct update_hooks *hooks, char *err,
                         size_t err_len);

/* A progress callback that draws one updating line on stderr when it is a terminal. */
void update_progress_tty(void *user, enum update_phase phase, const char *what, uint64_t done, uint64_t total);

#endif
