/* The public API of the inference library: open a deepseek4 model on a backend, create
 * sessions (one conversation's KV and compressor state each) and evaluate tokens.
 * The one door for callers above engine/ (firmware/): this header and what it includes,
 * the text side (engine/text/: tokenizer, chat encoding, sampler and stop strings, JSON
 * grammars for structured output) and the model-file readers (engine/model/: GGUF,
 * deepseek4 hyper-parameters, for inspect). The backends (engine/ref/, engine/vulkan/),
 * the expert store (engine/experts/) and session internals stay private; backend types
 * never appear here.
 *
 * Threading: an engine may be shared by several threads only if each session is used by
 * one thread at a time and calls into the same engine are serialized by the caller. */
#ifndef FLASHBOX_ENGINE_ENGINE_H
#define FLASHBOX_ENGINE_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "engine/model/gguf.h"
#include "engine/model/model.h"
#include "engine/text/chat.h"
#include "engine/text/dsml_grammar.h"
#include "engine/text/json_grammar.h"
#include "engine/text/json_validate.h"
#include "engine/text/sampler.h"
#include "engine/text/tokenizer.h"

struct engine;
struct session;

/* Every error message of a step that failed because the GPU is gone (VK_ERROR_DEVICE_LOST,
 * or a fence that did not signal within the timeout) contains this. The engine is
 * unusable from then on: close it and open the model again. */
#define ENGINE_ERR_DEVICE_LOST "GPU device lost"

enum engine_backend {
    ENGINE_BACKEND_REF = 0,     /* CPU reference: slow, obvious, the oracle */
    ENGINE_BACKEND_VULKAN = 1,
    ENGINE_BACKEND_AUTO = 2,    /* resolved by the caller from the board before engine_open
                                 * (firmware/backend_pick.c): vulkan on a GPU, ref otherwise */
};

/* How a session stores its compressed entries and indexer keys (the parts that grow with
 * the context): float32, float16, or FP8 E4M3 with one power-of-two scale per entry (spec
 * §3.16). Window rows and compressor state stay float32. */
enum engine_kv_type {
    ENGINE_KV_F32 = 0,
    ENGINE_KV_F16 = 1,
    ENGINE_KV_FP8 = 2,
};
/* Parses "f32" / "f16" / "fp8"; -1 if unknown. */
int engine_kv_parse(const char *name, enum engine_kv_type *out);
const char *engine_kv_name(enum engine_kv_type kv);

/* How routed experts are read from the model file when they are paged (expert_cache_mb). */
enum engine_expert_read {
    ENGINE_EXPERT_READ_AUTO = 0,    /* direct when the file exceeds 80% of available memory */
    ENGINE_EXPERT_READ_PAGECACHE,   /* pread through the page cache, with readahead hints */
    ENGINE_EXPERT_READ_DIRECT,      /* O_DIRECT through io_uring into an aligned staging buffer */
};

struct engine_options {
    const char *model_path;
    enum engine_backend backend;
    int device_index;           /* -1: let the board pick */
    const char *device_uuid;    /* NULL: any */
    uint64_t expert_cache_mb;   /* 0: every expert resident; else page experts through a cache of this size */
    enum engine_expert_read expert_read;
    bool expert_no_prefetch;    /* disable speculative loads (to measure what prefetch hides) */
    enum engine_kv_type kv;     /* storage of compressed entries and indexer keys (ENGINE_KV_F32 default) */
    bool expert_verify;         /* paged experts: checksum every expert at open (one pass over them)
                                   and check each load against it, so a storage fault or a file
                                   changed on disk fails the request instead of serving wrong weights */
};

enum engine_expert_kind { ENGINE_EXPERT_HASH = 0, ENGINE_EXPERT_LEARNED = 1 };

/* Expert-cache counters since the engine was opened (all zero without paging). */
struct expert_counters {
    uint64_t hits[2], misses[2];    /* by layer kind (enum engine_expert_kind) */
    uint64_t bytes_read;            /* from the model file */
    uint64_t loads;
    uint64_t stall_ns;              /* time spent waiting for loads */
    uint64_t prefetch_issued;       /* speculative loads queued (hash layers, next-layer router guesses) */
    uint64_t prefetch_used;         /* ... whose expert was then used */
    uint64_t prefetch_issued_kind[2], prefetch_used_kind[2]; /* the same by the kind of the layer loaded for */
    uint64_t prefetch_dropped;      /* ... dropped unread once their layer had chosen otherwise */
    uint64_t evictions;
    uint32_t n_slots;
    uint64_t slot_bytes;
    enum engine_expert_read read_path; /* the path in use */
};

struct engine_info {
    const char *model_name;     /* general.name */
    const char *backend_name;   /* "ref", "vulkan" */
    uint32_t n_vocab;
    uint32_t n_ctx_train;
    uint32_t n_layer;
    uint32_t n_embd;
    int32_t bos, eos;
};

void engine_options_default(struct engine_options *opt);
/* Parses "ref" / "vulkan" / "auto"; -1 if unknown. */
int engine_backend_parse(const char *name, enum engine_backend *out);

int engine_open(struct engine **out, const struct engine_options *opt, char *err, size_t err_len);
void engine_close(struct engine *e);
void engine_get_info(const struct engine *e, struct engine_info *info);
/* Device memory the engine holds (weights, expert slots, sessions' state) and the device's
 * local memory, in bytes; returns -1 (and zeros) for backends without a device. */
int engine_device_memory(const struct engine *e, uint64_t *used, uint64_t *total);
/* Fills *out; returns -1 (and zeros) when experts are not paged. */
int engine_expert_counters(const struct engine *e, struct expert_counters *out);
/* What identifies the model file the engine runs (its device, inode, size and modification
 * time): a cache of derived data keyed by it is never read for another file. */
struct engine_model_id {
    uint64_t dev, ino, size, mtime_ns;
};
int engine_model_identity(const struct engine *e, struct engine_model_id *out);
/* The tokenizer of the model's file (owned by the engine, valid until engine_close). */
const struct tokenizer *engine_tokenizer(const struct engine *e);

/* ---- memory plan: what the engine allocates for a model, a backend, a context and a
 * number of sessions, part by part, from the same code that sizes the allocations ---- */
enum engine_plan_part {
    ENGINE_PLAN_WINDOW,         /* sliding-window rings of every layer */
    ENGINE_PLAN_CSA_ENTRIES,    /* compressed entries of the ratio-4 layers */
    ENGINE_PLAN_HCA_ENTRIES,    /* compressed entries of the other compressed layers */
    ENGINE_PLAN_IX_KEYS,        /* indexer keys (ratio-4 layers) */
    ENGINE_PLAN_COMP_STATE,     /* compressor and indexer-compressor state */
    ENGINE_PLAN_ROPE,           /* rope tables */
    ENGINE_PLAN_SCRATCH,        /* activations of one batch, indexer scores, attention scratch */
    ENGINE_PLAN_HOST,           /* host-visible input and logits, in host memory (Vulkan) */
    ENGINE_PLAN_BLOCKS,         /* unused tails of the device blocks the spans are cut from (Vulkan) */
    ENGINE_PLAN_PARTS
};
extern const char *const engine_plan_part_names[ENGINE_PLAN_PARTS];

struct engine_plan {
    enum engine_backend backend;    /* REF or VULKAN */
    enum engine_kv_type kv;         /* storage of entries and indexer keys */
    uint32_t n_ctx, n_slots, n_ctx_train;
    uint32_t n_csa, n_hca;          /* layers of ratio 4 and of other ratios */
    uint64_t weights;               /* resident weight bytes (the routed experts too unless paged) */
    bool no_tensors;                /* the file holds metadata only: weights unknown (0) */
    uint64_t expert_cache;          /* bytes of the paged experts' cache */
    uint64_t session[ENGINE_PLAN_PARTS]; /* bytes of one session, by part */
    uint64_t per_session;           /* their sum */
    uint64_t largest_buffer;        /* the largest single session buffer (a device binding's limit) */
    uint64_t total;                 /* weights + expert_cache + n_slots * per_session */
};

/* The plan for a model file without loading it: hyper-parameters and tensor sizes only.
 * backend REF or VULKAN; kv the storage of entries and keys; n_ctx 0 = the model's context_length. */
int engine_plan_file(const char *model_path, enum engine_backend backend, enum engine_kv_type kv, uint32_t n_ctx, uint32_t n_slots,
                     uint64_t expert_cache_mb, struct engine_plan *out, char *err, size_t err_len);
/* The same for an open engine (its backend and expert cache). */
void engine_plan_open(const struct engine *e, uint32_t n_ctx, uint32_t n_slots, struct engine_plan *out);
/* The largest context (a multiple of 128, at most the model's context_length) whose plan
 * for n_slots sessions fits budget bytes, planned into *out; 0 when not even 128 positions
 * fit (*out is then the plan for 128). */
int engine_plan_file_fit(const char *model_path, enum engine_backend backend, enum engine_kv_type kv, uint32_t n_slots, uint64_t expert_cache_mb,
                         uint64_t budget, struct engine_plan *out, uint32_t *n_ctx, char *err, size_t err_len);
uint32_t engine_plan_open_fit(const struct engine *e, uint32_t n_slots, uint64_t budget, struct engine_plan *out);
/* Device memory (Vulkan) or host memory (ref) the engine's sessions may use, in bytes:
 * the device's local memory, or MemAvailable plus the model's own mapped weights; 0 when
 * unknown. */
uint64_t engine_plan_budget(const struct engine *e);
/* MemAvailable of /proc/meminfo in bytes, 0 when unreadable. */
uint64_t engine_host_memory_available(void);
/* Prints the plan, part by part, against budget (0: unknown) to out. */
void engine_plan_print(const struct engine_plan *p, uint64_t budget, const char *budget_what, FILE *out);

/* A session holds up to n_ctx positions (0 = the model's training context, capped at 4096). */
int session_create(struct engine *e, uint32_t n_ctx, struct session **out, char *err, size_t err_len);
void session_destroy(struct session *s);
/* Forgets every token; the next eval starts at position 0. */
void session_reset(struct session *s);
uint32_t session_pos(const struct session *s);
uint32_t session_n_ctx(const struct session *s);

/* Appends n tokens at the current position (prefill when n > 1, decode when n == 1).
 * logits: NULL, or [n_vocab] for the last token, or [n][n_vocab] when all_logits.
 * On error (token out of range, context full, backend failure) the session is unchanged
 * when the error was detected before any work, and must be reset otherwise; the message
 * says which. */
int session_eval(struct session *s, const int32_t *tokens, uint32_t n, float *logits, bool all_logits,
                 char *err, size_t err_len);

/* One session's share of an engine_step: n tokens appended at its position (one decode
 * token, or a chunk of a prompt), logits as in session_eval. */
struct session_step {
    struct session *s;
    const int32_t *tokens;
    uint32_t n;
    float *logits;      /* NULL, [n_vocab] for the last token, or [n][n_vocab] when all_logits */
    bool all_logits;
};

/* Evaluates a step for several sessions of one engine at once: every weight is read once
 * for all of the step's tokens (as far as the backend's batch allows; a larger step runs
 * as several), while attention, the compressors and the indexer run per session over its
 * own state. The logits of each session are bitwise those of session_eval with the same
 * tokens, whatever else shares the step. Sessions must be distinct. Tokens whose logits
 * are wanted cost least when their items are adjacent (decode items first, then prompt
 * chunks). Checked before any work: every item (n > 0, room in its context, token ids),
 * and then nothing changes on error; on a backend failure every session of the step must
 * be reset (the message says so). */
int engine_step(struct engine *e, struct session_step *items, uint32_t n_items, char *err, size_t err_len);

/* A session's state at its position (window rows, compressed entries, compressor and
 * indexer state), in a layout that does not depend on the backend: state saved from one
 * backend's session loads into a session of either backend on the same model, and
 * evaluation then continues exactly as it would have (prefix reuse). Bytes of the saved
 * state at position pos: */
uint64_t session_state_bytes(const struct session *s, uint32_t pos);
/* Writes the state at the session's position into buf[len] (len >= session_state_bytes). */
int session_state_save(struct session *s, void *buf, uint64_t len, char *err, size_t err_len);
/* Replaces the session's state by buf[len] (from session_state_save on the same model and
 * KV storage type: the state holds entries and keys as stored, so another type is refused);
 * the session's position becomes the saved one. A buffer that does not fit is refused
 * with the session unchanged; a backend failure midway resets it. */
int session_state_load(struct session *s, const void *buf, uint64_t len, char *err, size_t err_len);

/* Puts the session at position pos with every state value zero (window rows, entries,
 * indexer keys, compressor state): for timing what a position costs, which does not depend
 * on the values, without prefilling pos tokens (`flashbox bench --at`). Logits after it
 * mean nothing. */
int session_seek_zero(struct session *s, uint32_t pos, char *err, size_t err_len);

/* GPU time per kernel kind, for benchmarks (Vulkan backend; others report n_kinds = 0).
 * session_profile(s, true) clears the counters and times every later dispatch (slower);
 * session_profile(s, false) stops timing. */
#define ENGINE_PROFILE_MAX_KINDS 16
struct engine_profile {
    uint32_t n_kinds;
    const char *kind[ENGINE_PROFILE_MAX_KINDS];
    double gpu_ns[ENGINE_PROFILE_MAX_KINDS];
    uint32_t dispatches[ENGINE_PROFILE_MAX_KINDS];
    uint64_t weight_bytes;          /* weight bytes the recorded kernels read, summed over evals */
    uint32_t last_dispatch_count;   /* dispatches in the last command buffer */
};
void session_profile(struct session *s, bool on);
void session_get_profile(const struct session *s, struct engine_profile *out);

/* An observer of the reference backend's matrix-vector products, for importance matrices
 * (`flashbox imatrix`): fn runs before each product of a model weight with the product's
 * input x[n_in] (n_in: the weight's ne[0]). tensor is the weight's index in the model file's
 * tensor table (gguf order); expert is the routed expert whose rows the product reads, -1
 * for every other matrix (the shared expert included). The grouped output projection
 * (attn_output_a) calls it once per group, each with that group's input. The head (output)
 * is observed only for tokens whose logits are asked for. */
struct engine_observer {
    void (*fn)(void *ctx, uint32_t tensor, int32_t expert, const float *x, uint32_t n_in);
    void *ctx;
};
/* Sets (obs, kept by pointer until cleared) or clears (NULL) the session's observer. Only the
 * reference backend has one; others refuse. Without one the products cost nothing extra. */
int session_observe(struct session *s, const struct engine_observer *obs, char *err, size_t err_len);
/* Device copy bandwidth (bytes/s) measured with a large buffer-to-buffer copy. */
int engine_copy_bandwidth(struct engine *e, double *bytes_per_s, char *err, size_t err_len);
/* Times every matvec/matmul kernel alone on the model's weight shapes and prints a table
 * (elements/s, GB/s) and the dispatch count per layer to out. */
int engine_bench_kernels(struct engine *e, FILE *out, char *err, size_t err_len);

#endif
