/* The expert store: slot pool, replacement, loader thread and the two read paths. See
 * expert_store.h. One mutex guards the slot table; the loader reads without it. Loads
 * queue in two classes: needed (an acquire, or its early half) before speculative (hash
 * prefetch, next-layer router guesses), so a guess never delays a load somebody waits for;
 * a guess still queued when its layer has chosen is dropped unread. */
#include "engine/experts/expert_store.h"
#include "common/mono_clock.h"
#include "common/safe_open.h"
#include "common/errmsg.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <liburing.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define DIRECT_ALIGN 4096u
#define FREQ_HALVING_TICKS 4096u /* frequency decays so old favourites can leave */

enum slot_state { SLOT_EMPTY, SLOT_LOADING, SLOT_READY, SLOT_FAILED };

struct slot {
    enum slot_state state;
    int32_t il, expert;     /* what it holds (or is loading); -1 when empty */
    uint32_t pins;
    uint64_t last_use;      /* store tick of the last acquire */
    uint32_t freq;          /* acquires, halved every FREQ_HALVING_TICKS */
    bool prefetched;        /* a speculative load whose layer has not chosen yet (and not acquired since) */
    bool requested;         /* loaded by the early half of an acquire: a miss when acquired */
    bool queued;            /* waiting for the loader (state SLOT_LOADING, read not started) */
    bool urgent;            /* queued for a needed load: served before every speculative one */
    uint64_t seq;           /* queue order within its class */
    char err[256];          /* why the load failed */
};

struct part { uint64_t offset, size; }; /* one matrix of one expert in the file */

struct expert_store {
    const struct model *m;
    int fd;                         /* page-cache reads */
    int fd_direct;                  /* O_DIRECT reads, -1 unless the direct path is used */
    uint64_t file_size;
    enum engine_expert_read path;
    uint8_t *mem;                   /* [n_slots][slot_bytes], unless split */
    bool own_mem;
    uint8_t *part_mem[3];           /* split layout: part p of slot k at part_mem[p] + k*part_stride[p] */
    uint64_t part_stride[3];
    bool split;
    uint64_t slot_bytes, budget;
    uint32_t n_slots;
    struct slot *slots;             /* [n_slots] */
    int32_t *slot_of;               /* [n_layer][n_expert]: slot holding it, or -1 */
    int32_t *pinned;                /* [n_layer][n_slots]: slot of each id of the layer's last request, pinned */
    uint32_t n_pinned[MODEL_MAX_LAYERS];
    int32_t *slot_for;              /* [n_slots] prefetch scratch: the slots a prefetch holds */
    /* loader */
    pthread_mutex_t mu;
    pthread_cond_t cv_work, cv_done;
    uint32_t q_len;                 /* slots queued for the loader */
    uint64_t q_seq;
    pthread_t loader;
    bool loader_started, stop;
    bool hold;                      /* tests: the loader starts no read while set */
    struct io_uring ring;
    bool ring_ok;
    uint8_t *staging;               /* [3][staging_part] aligned, direct path only */
    uint64_t staging_part;
    uint64_t tick;
    bool no_prefetch;
    uint64_t *sums;                 /* [n_layer][n_expert] checksum of each expert's bytes at open; NULL unless verify */
    struct expert_counters c;
};

/* ---- checksums and fault injection ---- */

/* Multiply-xorshift over 8-byte words: every step is a bijection of the state for a given
 * word, so changing any one word always changes the result. A guard against storage
 * faults, not against an adversary (signed updates hash the file with SHA-256). */
static uint64_t sum_bytes(uint64_t h, const uint8_t *p, uint64_t n)
{
    uint64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        h = (h ^ w) * 0x9E3779B97F4A7C15ull;
        h ^= h >> 29;
    }
    for (; i < n; i++) h = (h ^ p[i]) * 0x100000001B3ull;
    return h ^ n;
}

enum fault_kind { FAULT_NONE = 0, FAULT_EIO, FAULT_SHORT, FAULT_FLIP };
static enum fault_kind fault_kind;
static long fault_at, fault_reads;
static bool fault_onward;
static pthread_once_t fault_once = PTHREAD_ONCE_INIT;

static void fault_parse_spec(const char *s)
{
    fault_kind = FAULT_NONE;
    fault_at = 0;
    __atomic_store_n(&fault_reads, 0, __ATOMIC_RELAXED);
    if (!s) return;
    static const char *const names[] = { "eio:", "short:", "flip:" };
    for (int k = 0; k < 3; k++) {
        size_t n = strlen(names[k]);
        if (strncmp(s, names[k], n)) continue;
        char *end;
        fault_at = strtol(s + n, &end, 10);
        fault_onward = *end == '+';
        fault_kind = (enum fault_kind)(k + 1);
    }
}

static void fault_parse(void) { fault_parse_spec(getenv("FLASHBOX_EXPERT_FAULT")); }

void expert_store_fault_configure(const char *spec)
{
    pthread_once(&fault_once, fault_parse);
    fault_parse_spec(spec);
}

/* The fault this expert read gets (FAULT_NONE almost always). */
static enum fault_kind fault_next(void)
{
    pthread_once(&fault_once, fault_parse);
    if (fault_kind == FAULT_NONE || fault_at <= 0) return FAULT_NONE;
    long n = __atomic_add_fetch(&fault_reads, 1, __ATOMIC_RELAXED);
    return n == fault_at || (fault_onward && n > fault_at) ? fault_kind : FAULT_NONE;
}

static void expert_parts(const struct expert_store *s, uint32_t il, uint32_t e, struct part p[3])
{
    const struct layer_weights *w = &s->m->layers[il];
    tensor_ref t[3] = { w->ffn_gate_exps, w->ffn_up_exps, w->ffn_down_exps };
    const uint64_t E = s->m->hp.n_expert;
    for (int k = 0; k < 3; k++) {
        p[k].size = t[k]->nbytes / E;
        p[k].offset = (uint64_t)((const uint8_t *)t[k]->data - s->m->file->map) + e * p[k].size;
    }
}

uint64_t expert_store_slot_bytes(const struct model *m)
{
    uint64_t most = 0;
    for (uint32_t il = 0; il < m->hp.n_layer; il++) {
        uint64_t b = model_expert_bytes(m, il);
        if (b > most) most = b;
    }
    return (most + 63) / 64 * 64; /* keep slots cache-line aligned */
}

/* Where slot idx keeps the three parts of an expert whose sizes are p. */
static void slot_parts(const struct expert_store *s, uint32_t idx, const struct part p[3], uint8_t *dst[3])
{
    if (s->split) {
        for (int k = 0; k < 3; k++) dst[k] = s->part_mem[k] + (uint64_t)idx * s->part_stride[k];
        return;
    }
    dst[0] = s->mem + (uint64_t)idx * s->slot_bytes;
    dst[1] = dst[0] + p[0].size;
    dst[2] = dst[1] + p[1].size;
}

static uint32_t slot_index(const struct expert_store *s, uint32_t il, uint32_t e);

/* ---- reading ---- */

static int read_pagecache(struct expert_store *s, const struct part *p, uint8_t *const dst[3], char *err, size_t len)
{
    for (int k = 0; k < 3; k++) {
        uint64_t done = 0;
        while (done < p[k].size) {
            ssize_t n = pread(s->fd, dst[k] + done, p[k].size - done, (off_t)(p[k].offset + done));
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0)
                return errf(err, len, "read of %" PRIu64 " bytes at offset %" PRIu64 " failed: %s", p[k].size,
                            p[k].offset + done, n < 0 ? strerror(errno) : "end of file (was the file truncated?)");
            done += (uint64_t)n;
        }
    }
    return 0;
}

/* Direct path: each part is read as the aligned superset into its staging region through
 * io_uring (all three in one submission), then the exact bytes are copied into the slot. */
static int read_direct(struct expert_store *s, const struct part *p, uint8_t *const dst[3], char *err, size_t len)
{
    uint64_t start[3], span[3];
    for (int k = 0; k < 3; k++) {
        start[k] = p[k].offset / DIRECT_ALIGN * DIRECT_ALIGN;
        span[k] = (p[k].offset + p[k].size + DIRECT_ALIGN - 1) / DIRECT_ALIGN * DIRECT_ALIGN - start[k];
    }
    int64_t got[3] = { -1, -1, -1 };
    if (s->ring_ok) {
        for (int k = 0; k < 3; k++) {
            struct io_uring_sqe *sqe = io_uring_get_sqe(&s->ring);
            if (!sqe) return errf(err, len, "io_uring: no submission entry");
            io_uring_prep_read(sqe, s->fd_direct, s->staging + k * s->staging_part, (unsigned)span[k], start[k]);
            io_uring_sqe_set_data64(sqe, (uint64_t)k);
        }
        int rc = io_uring_submit(&s->ring);
        if (rc != 3) return errf(err, len, "io_uring submit: %s", rc < 0 ? strerror(-rc) : "partial");
        for (int i = 0; i < 3; i++) {
            struct io_uring_cqe *cqe;
            rc = io_uring_wait_cqe(&s->ring, &cqe);
            if (rc < 0) return errf(err, len, "io_uring wait: %s", strerror(-rc));
            got[io_uring_cqe_get_data64(cqe)] = cqe->res;
            io_uring_cqe_seen(&s->ring, cqe);
        }
    } else {
        for (int k = 0; k < 3; k++) {
            ssize_t n = pread(s->fd_direct, s->staging + k * s->staging_part, span[k], (off_t)start[k]);
            got[k] = n < 0 ? -errno : n;
        }
    }
    for (int k = 0; k < 3; k++) {
        uint64_t need = p[k].offset + p[k].size - start[k];
        if (got[k] < 0 || (uint64_t)got[k] < need)
            return errf(err, len, "direct read of %" PRIu64 " bytes at offset %" PRIu64 " failed: %s", p[k].size,
                        p[k].offset, got[k] < 0 ? strerror((int)-got[k]) : "end of file (was the file truncated?)");
        memcpy(dst[k], s->staging + k * s->staging_part + (p[k].offset - start[k]), p[k].size);
    }
    return 0;
}

static int kind_of(const struct expert_store *s, uint32_t il)
{
    return il < s->m->hp.n_hash_layer ? ENGINE_EXPERT_HASH : ENGINE_EXPERT_LEARNED;
}

/* The queued slot the loader reads next: needed loads first, then the oldest. (s->mu held,
 * q_len > 0; a linear scan: the pool is a few hundred slots and a read takes far longer.) */
static uint32_t next_queued(const struct expert_store *s)
{
    int32_t best = -1;
    for (uint32_t i = 0; i < s->n_slots; i++) {
        const struct slot *sl = &s->slots[i];
        if (!sl->queued) continue;
        const struct slot *b = best >= 0 ? &s->slots[best] : NULL;
        if (!b || (sl->urgent && !b->urgent) || (sl->urgent == b->urgent && sl->seq < b->seq)) best = (int32_t)i;
    }
    return (uint32_t)best;
}

static void *loader_main(void *arg)
{
    struct expert_store *s = arg;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (!s->stop && (s->q_len == 0 || s->hold)) pthread_cond_wait(&s->cv_work, &s->mu);
        if (s->stop) break;
        uint32_t idx = next_queued(s);
        struct slot *sl = &s->slots[idx];
        sl->queued = false;
        s->q_len--;
        const uint32_t il = (uint32_t)sl->il, e = (uint32_t)sl->expert;
        pthread_mutex_unlock(&s->mu);

        struct part p[3];
        expert_parts(s, il, e, p);
        char err[200]; /* the slot's message adds at most 40 bytes */
        uint8_t *dst[3];
        slot_parts(s, idx, p, dst);
        int rc = s->path == ENGINE_EXPERT_READ_DIRECT ? read_direct(s, p, dst, err, sizeof err)
                                               : read_pagecache(s, p, dst, err, sizeof err);
        enum fault_kind fault = fault_next();
        if (!rc && fault == FAULT_EIO)
            rc = errf(err, sizeof err, "read of %" PRIu64 " bytes at offset %" PRIu64 " failed: %s", p[0].size, p[0].offset,
                      strerror(EIO));
        if (!rc && fault == FAULT_SHORT)
            rc = errf(err, sizeof err, "read of %" PRIu64 " bytes at offset %" PRIu64 " failed: %s", p[2].size, p[2].offset,
                      "end of file (was the file truncated?)");
        if (!rc && fault == FAULT_FLIP) dst[1][p[1].size / 2] ^= 0x20;
        if (!rc && s->sums) {
            uint64_t h = 0;
            for (int k = 0; k < 3; k++) h = sum_bytes(h, dst[k], p[k].size);
            if (h != s->sums[slot_index(s, il, e)])
                rc = errf(err, sizeof err, "the bytes read differ from the ones checksummed at load (a storage "
                          "fault, or the model file changed on disk)");
        }
        pthread_mutex_lock(&s->mu);
        if (rc) {
            sl->state = SLOT_FAILED;
            snprintf(sl->err, sizeof sl->err, "layer %u expert %u: %s", il, e, err);
        } else {
            sl->state = SLOT_READY;
            s->c.bytes_read += p[0].size + p[1].size + p[2].size;
            s->c.loads++;
        }
        pthread_cond_broadcast(&s->cv_done);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* ---- slot table (s->mu held) ---- */

static uint32_t slot_index(const struct expert_store *s, uint32_t il, uint32_t e) { return il * s->m->hp.n_expert + e; }

/* Takes a speculative load that has not started off the queue and empties its slot. */
static void drop_queued(struct expert_store *s, uint32_t v)
{
    struct slot *sl = &s->slots[v];
    sl->queued = false;
    s->q_len--;
    s->slot_of[slot_index(s, (uint32_t)sl->il, (uint32_t)sl->expert)] = -1;
    sl->il = sl->expert = -1;
    sl->state = SLOT_EMPTY;
    sl->prefetched = false;
    s->c.prefetch_dropped++;
}

/* Replacement order: the lower frequency, then the less recently used. */
static bool better_victim(const struct slot *sl, const struct slot *b)
{
    return !b || sl->freq < b->freq || (sl->freq == b->freq && sl->last_use < b->last_use);
}

/* The unpinned, not-loading slot to reuse: empty first, then by better_victim. A speculative
 * load never takes a slot that is needed soon (the early half of an acquire) or that holds
 * another guess not yet decided; a needed load takes an undecided guess only when nothing
 * else is left, and before it would wait it drops a guess still queued. -1 when every slot
 * is busy. */
static int32_t pick_victim(struct expert_store *s, bool speculative)
{
    int32_t best = -1, best_guess = -1, queued_guess = -1;
    for (uint32_t i = 0; i < s->n_slots; i++) {
        const struct slot *sl = &s->slots[i];
        if (sl->pins) continue;
        if (sl->state == SLOT_LOADING) { /* the newest queued guess: the one read last */
            bool newer = queued_guess < 0 || sl->seq > s->slots[queued_guess].seq;
            if (sl->queued && !sl->urgent && newer) queued_guess = (int32_t)i;
            continue;
        }
        if (sl->state == SLOT_EMPTY || sl->state == SLOT_FAILED) return (int32_t)i;
        if (sl->prefetched || (speculative && sl->requested)) {
            if (!speculative && better_victim(sl, best_guess >= 0 ? &s->slots[best_guess] : NULL))
                best_guess = (int32_t)i;
            continue;
        }
        if (better_victim(sl, best >= 0 ? &s->slots[best] : NULL)) best = (int32_t)i;
    }
    if (best >= 0 || speculative) return best;
    if (best_guess >= 0) return best_guess;
    if (queued_guess >= 0) {
        drop_queued(s, (uint32_t)queued_guess);
        return queued_guess;
    }
    return -1;
}

/* The slot holding (il, e), or -1. A failed load nobody is waiting on is forgotten here, so
 * the next request reads the expert again: a load that failed after its request had already
 * given up (a later id of a request that failed on an earlier one) must not answer for the
 * file from then on. */
static int32_t resident_slot(struct expert_store *s, uint32_t il, uint32_t e)
{
    int32_t v = s->slot_of[slot_index(s, il, e)];
    if (v >= 0 && s->slots[v].state == SLOT_FAILED && s->slots[v].pins == 0) {
        s->slot_of[slot_index(s, il, e)] = -1;
        s->slots[v].il = s->slots[v].expert = -1;
        v = -1;
    }
    return v;
}

/* Starts loading (il, e) into a free or evicted slot; returns the slot or -1. */
static int32_t start_load(struct expert_store *s, uint32_t il, uint32_t e, bool speculative)
{
    int32_t v = pick_victim(s, speculative);
    if (v < 0) return -1;
    struct slot *sl = &s->slots[v];
    if (sl->il >= 0) {
        s->slot_of[slot_index(s, (uint32_t)sl->il, (uint32_t)sl->expert)] = -1;
        if (sl->state == SLOT_READY) s->c.evictions++;
    }
    sl->il = (int32_t)il;
    sl->expert = (int32_t)e;
    sl->state = SLOT_LOADING;
    sl->freq = 0;
    sl->prefetched = false;
    sl->requested = false;
    sl->err[0] = 0;
    s->slot_of[slot_index(s, il, e)] = v;
    sl->queued = true;
    sl->urgent = !speculative;
    sl->seq = ++s->q_seq;
    s->q_len++;
    pthread_cond_signal(&s->cv_work);
    return v;
}

static void fill_view(const struct expert_store *s, uint32_t il, uint32_t idx, struct expert_view *v)
{
    const struct layer_weights *w = &s->m->layers[il];
    const struct model_hparams *hp = &s->m->hp;
    tensor_ref t[3] = { w->ffn_gate_exps, w->ffn_up_exps, w->ffn_down_exps };
    struct gguf_tensor *out[3] = { &v->gate, &v->up, &v->down };
    struct part p[3];
    uint8_t *dst[3];
    expert_parts(s, il, 0, p);
    slot_parts(s, idx, p, dst);
    for (int k = 0; k < 3; k++) {
        memset(out[k], 0, sizeof *out[k]);
        out[k]->name = t[k]->name;
        out[k]->type = t[k]->type;
        out[k]->n_dims = 2;
        out[k]->ne[0] = t[k]->ne[0];
        out[k]->ne[1] = t[k]->ne[1];
        out[k]->ne[2] = out[k]->ne[3] = 1;
        out[k]->n_elements = t[k]->ne[0] * t[k]->ne[1];
        out[k]->nbytes = t[k]->nbytes / hp->n_expert;
        out[k]->data = dst[k];
    }
}

/* ---- public ---- */

static int checksum_all(struct expert_store *s, char *err, size_t err_len);

int expert_store_open(struct expert_store **out, const struct model *m, const char *path,
                      const struct expert_store_options *opt, char *err, size_t err_len)
{
    *out = NULL;
    const struct model_hparams *hp = &m->hp;
    if (hp->n_expert_used > 64) return errf(err, err_len, "expert store: %u experts per token, at most 64", hp->n_expert_used);
    struct expert_store *s = calloc(1, sizeof *s);
    if (!s) return errf(err, err_len, "out of memory");
    s->m = m;
    s->fd = s->fd_direct = -1;
    s->split = opt->part_memory[0] != NULL;
    s->slot_bytes = s->split ? opt->part_stride[0] + opt->part_stride[1] + opt->part_stride[2] : expert_store_slot_bytes(m);
    s->budget = opt->budget_bytes;
    if (s->split) {
        for (int k = 0; k < 3; k++) {
            s->part_mem[k] = opt->part_memory[k];
            s->part_stride[k] = opt->part_stride[k];
        }
        for (uint32_t il = 0; il < hp->n_layer; il++) {
            struct part p[3];
            expert_parts(s, il, 0, p);
            for (int k = 0; k < 3; k++)
                if (p[k].size > s->part_stride[k]) {
                    errf(err, err_len, "layer %u: expert part %d of %" PRIu64 " bytes exceeds the slot stride %" PRIu64,
                         il, k, p[k].size, s->part_stride[k]);
                    goto fail;
                }
        }
    }
    uint64_t n_slots = s->budget / s->slot_bytes, total = (uint64_t)hp->n_layer * hp->n_expert;
    if (n_slots < hp->n_expert_used) {
        errf(err, err_len, "expert cache of %" PRIu64 " bytes holds %" PRIu64 " experts of %" PRIu64
             " bytes; at least %u (the experts of one token's layer) are needed",
             s->budget, n_slots, s->slot_bytes, hp->n_expert_used);
        goto fail;
    }
    s->n_slots = (uint32_t)(n_slots < total ? n_slots : total);
    s->fd = safe_open(path, O_RDONLY, 0, err, err_len);
    struct stat st;
    if (s->fd < 0) goto fail;
    if (fstat(s->fd, &st) != 0) {
        errf(err, err_len, "%s: %s", path, strerror(errno));
        goto fail;
    }
    s->file_size = (uint64_t)st.st_size;
    s->path = opt->read_path;
    s->no_prefetch = opt->no_prefetch;
    if (s->path == ENGINE_EXPERT_READ_AUTO) {
        long pages = sysconf(_SC_AVPHYS_PAGES), page = sysconf(_SC_PAGESIZE);
        uint64_t avail = pages > 0 && page > 0 ? (uint64_t)pages * (uint64_t)page : 0;
        s->path = avail && s->file_size > avail / 5 * 4 ? ENGINE_EXPERT_READ_DIRECT : ENGINE_EXPERT_READ_PAGECACHE;
    }
    if (s->path == ENGINE_EXPERT_READ_DIRECT) {
        char derr[256];
        s->fd_direct = safe_open(path, O_RDONLY | O_DIRECT, 0, derr, sizeof derr);
        if (s->fd_direct < 0) {
            errf(err, err_len, "direct reads (O_DIRECT) not possible here: %s", derr);
            goto fail;
        }
        uint64_t most = 0;
        for (uint32_t il = 0; il < hp->n_layer; il++) {
            struct part p[3];
            expert_parts(s, il, 0, p);
            for (int k = 0; k < 3; k++) most = p[k].size > most ? p[k].size : most;
        }
        s->staging_part = (most + 2 * DIRECT_ALIGN) / DIRECT_ALIGN * DIRECT_ALIGN;
        if (posix_memalign((void **)&s->staging, DIRECT_ALIGN, 3 * s->staging_part)) {
            s->staging = NULL;
            errf(err, err_len, "out of memory for the direct-read staging buffer");
            goto fail;
        }
        s->ring_ok = io_uring_queue_init(8, &s->ring, 0) == 0; /* else plain pread on the O_DIRECT fd */
    }
    if (s->split) {
        /* the caller owns the three part regions */
    } else if (opt->slot_memory) {
        s->mem = opt->slot_memory;
    } else {
        if (posix_memalign((void **)&s->mem, 64, (uint64_t)s->n_slots * s->slot_bytes)) {
            s->mem = NULL;
            errf(err, err_len, "out of memory for %u expert slots", s->n_slots);
            goto fail;
        }
        s->own_mem = true;
    }
    s->slots = calloc(s->n_slots, sizeof *s->slots);
    s->slot_of = malloc(total * sizeof *s->slot_of);
    s->pinned = calloc((uint64_t)hp->n_layer * s->n_slots, sizeof *s->pinned);
    s->slot_for = calloc(s->n_slots, sizeof *s->slot_for);
    if (!s->slots || !s->slot_of || !s->pinned || !s->slot_for) {
        errf(err, err_len, "out of memory");
        goto fail;
    }
    for (uint64_t i = 0; i < total; i++) s->slot_of[i] = -1;
    for (uint32_t i = 0; i < s->n_slots; i++) s->slots[i].il = s->slots[i].expert = -1;
    s->c.n_slots = s->n_slots;
    s->c.slot_bytes = s->slot_bytes;
    s->c.read_path = s->path;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv_work, NULL);
    pthread_cond_init(&s->cv_done, NULL);
    if (pthread_create(&s->loader, NULL, loader_main, s) != 0) {
        errf(err, err_len, "cannot start the expert loader thread");
        goto fail;
    }
    s->loader_started = true;
    if (opt->verify && checksum_all(s, err, err_len)) goto fail;
    *out = s;
    return 0;
fail:
    expert_store_close(s);
    return -1;
}

/* expert_verify: one pass over every expert of the file, before anything is served. */
static int checksum_all(struct expert_store *s, char *err, size_t err_len)
{
    const struct model_hparams *hp = &s->m->hp;
    s->sums = malloc((uint64_t)hp->n_layer * hp->n_expert * sizeof *s->sums);
    uint8_t *buf = malloc(s->slot_bytes); /* [slot_bytes] one expert's three parts */
    int rc = 0;
    if (!s->sums || !buf) rc = errf(err, err_len, "out of memory for the expert checksums");
    for (uint32_t il = 0; il < hp->n_layer && !rc; il++)
        for (uint32_t e = 0; e < hp->n_expert && !rc; e++) {
            struct part p[3];
            expert_parts(s, il, e, p);
            uint8_t *dst[3] = { buf, buf + p[0].size, buf + p[0].size + p[1].size };
            if (read_pagecache(s, p, dst, err, err_len)) {
                rc = errf_prefix(err, err_len, "expert_verify: layer %u expert %u", il, e);
                break;
            }
            uint64_t h = 0;
            for (int k = 0; k < 3; k++) h = sum_bytes(h, dst[k], p[k].size);
            s->sums[slot_index(s, il, e)] = h;
        }
    free(buf);
    return rc;
}

void expert_store_close(struct expert_store *s)
{
    if (!s) return;
    if (s->loader_started) {
        pthread_mutex_lock(&s->mu);
        s->stop = true;
        pthread_cond_broadcast(&s->cv_work);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->loader, NULL);
        pthread_mutex_destroy(&s->mu);
        pthread_cond_destroy(&s->cv_work);
        pthread_cond_destroy(&s->cv_done);
    }
    if (s->ring_ok) io_uring_queue_exit(&s->ring);
    if (s->fd >= 0) close(s->fd);
    if (s->fd_direct >= 0) close(s->fd_direct);
    if (s->own_mem) free(s->mem);
    free(s->staging);
    free(s->sums);
    free(s->slots);
    free(s->slot_of);
    free(s->pinned);
    free(s->slot_for);
    free(s);
}

void expert_store_prefetch(struct expert_store *s, uint32_t il, const int32_t *ids, uint32_t n, bool speculative)
{
    if (speculative && s->no_prefetch) return;
    pthread_mutex_lock(&s->mu);
    /* hold what this request already has, so its own loads cannot evict it */
    int32_t *held = s->slot_for;
    uint32_t n_held = 0;
    if (n > s->n_slots) n = s->n_slots;
    for (uint32_t k = 0; k < n; k++) {
        int32_t v = resident_slot(s, il, (uint32_t)ids[k]);
        if (v >= 0) {
            s->slots[v].pins++;
            held[n_held++] = v;
        }
    }
    for (uint32_t k = 0; k < n; k++) {
        if (s->slot_of[slot_index(s, il, (uint32_t)ids[k])] >= 0) continue;
        int32_t v = start_load(s, il, (uint32_t)ids[k], speculative);
        if (v < 0) break; /* every slot busy: a prefetch never waits */
        s->slots[v].pins++; /* loading slots are never victims, but keep the accounting symmetric */
        held[n_held++] = v;
        if (speculative) {
            s->slots[v].prefetched = true;
            s->c.prefetch_issued++;
            s->c.prefetch_issued_kind[kind_of(s, il)]++;
        } else {
            s->slots[v].requested = true;
        }
    }
    for (uint32_t k = 0; k < n_held; k++) s->slots[held[k]].pins--;
    pthread_mutex_unlock(&s->mu);
}

void expert_store_drop_speculation(struct expert_store *s, uint32_t il)
{
    pthread_mutex_lock(&s->mu);
    for (uint32_t i = 0; i < s->n_slots; i++) {
        struct slot *sl = &s->slots[i];
        if (sl->il != (int32_t)il || !sl->prefetched) continue;
        if (sl->queued && !sl->urgent && !sl->pins) drop_queued(s, i);
        else sl->prefetched = false; /* read, or being read, for nothing: an ordinary victim now */
    }
    pthread_mutex_unlock(&s->mu);
}

/* Unpins the slots of layer il's last request (s->mu held). */
static void unpin_layer(struct expert_store *s, uint32_t il)
{
    const int32_t *pinned = s->pinned + (uint64_t)il * s->n_slots;
    for (uint32_t k = 0; k < s->n_pinned[il]; k++) s->slots[pinned[k]].pins--;
    s->n_pinned[il] = 0;
}

int expert_store_request(struct expert_store *s, uint32_t il, const int32_t *ids, uint32_t n, char *err, size_t err_len)
{
    if (n > s->n_slots)
        return errf(err, err_len, "expert cache: %u experts requested at once, the cache holds %u", n, s->n_slots);
    const int kind = kind_of(s, il);
    int32_t *slot_for = s->pinned + (uint64_t)il * s->n_slots; /* the request's slots, in ids order */
    int rc = 0;
    pthread_mutex_lock(&s->mu);
    unpin_layer(s, il); /* a previous acquire of this layer was not released */
    s->tick++;
    if (s->tick % FREQ_HALVING_TICKS == 0)
        for (uint32_t i = 0; i < s->n_slots; i++) s->slots[i].freq /= 2;
    /* pin what is resident (or on its way) first, so starting the misses cannot evict them */
    for (uint32_t k = 0; k < n; k++) {
        int32_t v = resident_slot(s, il, (uint32_t)ids[k]);
        slot_for[k] = v;
        if (v >= 0) {
            struct slot *sl = &s->slots[v];
            sl->pins++;
            sl->urgent = true; /* a guess still queued is needed now */
            if (sl->requested) {
                s->c.misses[kind]++; /* started by this token's own request */
                sl->requested = false;
            } else {
                s->c.hits[kind]++;
            }
            if (sl->prefetched) {
                s->c.prefetch_used++;
                s->c.prefetch_used_kind[kind]++;
                sl->prefetched = false;
            }
        }
    }
    uint32_t n_pinned = n;
    for (uint32_t k = 0; k < n && !rc; k++) {
        if (slot_for[k] >= 0) continue;
        int32_t v = s->slot_of[slot_index(s, il, (uint32_t)ids[k])]; /* a duplicate id in ids */
        while (v < 0) {
            v = start_load(s, il, (uint32_t)ids[k], false);
            if (v >= 0) break;
            /* every unpinned slot is being read (needed loads of an early half): wait for one */
            bool loading = false;
            for (uint32_t i = 0; i < s->n_slots && !loading; i++)
                loading = s->slots[i].state == SLOT_LOADING && !s->slots[i].pins;
            if (!loading) break;
            pthread_cond_wait(&s->cv_done, &s->mu);
            v = s->slot_of[slot_index(s, il, (uint32_t)ids[k])];
        }
        if (v < 0) {
            rc = errf(err, err_len, "expert cache: no free slot among %u for layer %u (all pinned)", s->n_slots, il);
            break;
        }
        slot_for[k] = v;
        s->slots[v].pins++;
        s->c.misses[kind]++;
    }
    if (rc) { /* every id with a slot holds a pin of this request; the failing one has none */
        for (uint32_t k = 0; k < n; k++)
            if (slot_for[k] >= 0) s->slots[slot_for[k]].pins--;
        n_pinned = 0;
    }
    s->n_pinned[il] = n_pinned;
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int expert_store_await(struct expert_store *s, uint32_t il, int32_t *slots_out, char *err, size_t err_len)
{
    int rc = 0;
    pthread_mutex_lock(&s->mu);
    const int32_t *slot_for = s->pinned + (uint64_t)il * s->n_slots;
    const uint32_t n = s->n_pinned[il];
    uint64_t t0 = mono_ns();
    bool waited = false;
    for (uint32_t k = 0; k < n && !rc; k++) {
        struct slot *sl = &s->slots[slot_for[k]];
        while (sl->state == SLOT_LOADING) {
            waited = true;
            pthread_cond_wait(&s->cv_done, &s->mu);
        }
        if (sl->state == SLOT_FAILED) rc = errf(err, err_len, "expert load failed: %s", sl->err);
    }
    if (waited) s->c.stall_ns += mono_ns() - t0;
    for (uint32_t k = 0; k < n; k++) {
        struct slot *sl = &s->slots[slot_for[k]];
        if (rc) {
            if (sl->state == SLOT_FAILED && sl->il >= 0) { /* forget it: a later acquire retries */
                s->slot_of[slot_index(s, (uint32_t)sl->il, (uint32_t)sl->expert)] = -1;
                sl->il = sl->expert = -1;
            }
            continue;
        }
        sl->last_use = s->tick;
        sl->freq++;
        slots_out[k] = slot_for[k];
    }
    if (rc) unpin_layer(s, il);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int expert_store_acquire_slots(struct expert_store *s, uint32_t il, const int32_t *ids, uint32_t n,
                               int32_t *slots_out, char *err, size_t err_len)
{
    if (expert_store_request(s, il, ids, n, err, err_len)) return -1;
    return expert_store_await(s, il, slots_out, err, err_len);
}

int expert_store_acquire(struct expert_store *s, uint32_t il, const int32_t *ids, uint32_t n,
                         struct expert_view *views, char *err, size_t err_len)
{
    int32_t slots[64];
    if (n > 64) return errf(err, err_len, "expert cache: %u experts in one view request, at most 64", n);
    if (expert_store_acquire_slots(s, il, ids, n, slots, err, err_len)) return -1;
    for (uint32_t k = 0; k < n; k++) fill_view(s, il, (uint32_t)slots[k], &views[k]);
    return 0;
}

int expert_store_await_views(struct expert_store *s, uint32_t il, struct expert_view *views, uint32_t n, char *err,
                             size_t err_len)
{
    int32_t slots[64];
    if (n > 64 || n != s->n_pinned[il])
        return errf(err, err_len, "expert cache: %u views asked of layer %u's request of %u", n, il, s->n_pinned[il]);
    if (expert_store_await(s, il, slots, err, err_len)) return -1;
    for (uint32_t k = 0; k < n; k++) fill_view(s, il, (uint32_t)slots[k], &views[k]);
    return 0;
}

uint32_t expert_store_n_slots(const struct expert_store *s) { return s->n_slots; }

void expert_store_release(struct expert_store *s, uint32_t il)
{
    pthread_mutex_lock(&s->mu);
    unpin_layer(s, il);
    pthread_mutex_unlock(&s->mu);
}

bool expert_store_speculates(const struct expert_store *s) { return !s->no_prefetch; }

void expert_store_hold_loader(struct expert_store *s, bool hold)
{
    pthread_mutex_lock(&s->mu);
    s->hold = hold;
    pthread_cond_broadcast(&s->cv_work);
    pthread_mutex_unlock(&s->mu);
}

void expert_store_get_counters(struct expert_store *s, struct expert_counters *out)
{
    pthread_mutex_lock(&s->mu);
    *out = s->c;
    pthread_mutex_unlock(&s->mu);
}

uint64_t expert_store_resident_bytes(struct expert_store *s)
{
    pthread_mutex_lock(&s->mu);
    uint64_t n = 0;
    for (uint32_t i = 0; i < s->n_slots; i++)
        if (s->slots[i].state != SLOT_EMPTY) n += s->slot_bytes;
    pthread_mutex_unlock(&s->mu);
    return n;
}

uint64_t expert_store_budget_bytes(const struct expert_store *s) { return s->budget; }
