/* The daemon's prefix cache (prefix_cache.h): a list of saved states, each with its
 * tokens, found by length and hash then compared token by token; optionally mirrored in
 * files named <hash>-<length>.fbp. */
#include "firmware/prefix_cache.h"
#include "common/safe_open.h"
#include "update/durable.h"
#include "update/keys.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* A state file: this header, then tokens [n] (int32), then the state. */
#define PREFIX_FILE_MAGIC 0x43504246u /* "FBPC" */
#define PREFIX_FILE_VERSION 1u
struct prefix_file_header {
    uint32_t magic, version;
    uint8_t model[32];          /* SHA-256 of the model file's identity */
    uint32_t n, pad;
    uint64_t state_bytes;
    uint8_t sum[32];            /* SHA-256 of the tokens and the state */
};

struct prefix_entry {
    uint32_t n;             /* prefix length: the state's position */
    uint64_t hash;          /* of tokens[0, n) */
    int32_t *tokens;        /* [n] */
    void *state;            /* session_state_save's bytes */
    uint64_t bytes;         /* of state */
    uint64_t last_use;      /* use counter value at the last hit or save */
    struct prefix_entry *next;
};

struct prefix_cache {
    pthread_mutex_t lock;   /* the counters are read by /metrics */
    struct prefix_entry *head;
    uint64_t clock;
    struct prefix_cache_stats st;
    char dir[512];          /* "" without files */
    uint64_t disk_budget;
    uint8_t model[32];
};

static void entry_free(struct prefix_entry *e);

/* FNV-1a over the ids' bytes. */
static uint64_t hash_tokens(const int32_t *t, uint32_t n)
{
    uint64_t h = 1469598103934665603ull;
    const unsigned char *p = (const unsigned char *)t;
    for (uint64_t i = 0; i < (uint64_t)n * sizeof *t; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

int prefix_cache_create(struct prefix_cache **out, const struct prefix_cache_options *o, char *err, size_t err_len)
{
    struct prefix_cache *c = calloc(1, sizeof *c);
    if (!c) return snprintf(err, err_len, "prefix cache: out of memory"), -1;
    pthread_mutex_init(&c->lock, NULL);
    c->st.budget = o->mem_bytes;
    if (o->dir && o->dir[0]) {
        if ((size_t)snprintf(c->dir, sizeof c->dir, "%s", o->dir) >= sizeof c->dir ||
            (mkdir(c->dir, 0700) && errno != EEXIST)) {
            snprintf(err, err_len, "prefix cache: %s: %s", o->dir, errno ? strerror(errno) : "path too long");
            prefix_cache_destroy(c);
            return -1;
        }
        c->disk_budget = o->disk_bytes;
    }
    *out = c;
    return 0;
}

void prefix_cache_set_model(struct prefix_cache *c, const struct engine_model_id *id)
{
    uint64_t v[4] = { id->dev, id->ino, id->size, id->mtime_ns };
    pthread_mutex_lock(&c->lock);
    keys_sha256(v, sizeof v, c->model);
    pthread_mutex_unlock(&c->lock);
}

static void file_name(const struct prefix_cache *c, uint64_t hash, uint32_t n, char *out, size_t len)
{
    snprintf(out, len, "%s/%016" PRIx64 "-%u.fbp", c->dir, hash, n);
}

/* SHA-256 of tokens then state. */
static int sum_of(const int32_t *tokens, uint32_t n, const void *state, uint64_t bytes, uint8_t out[32])
{
    uint8_t *all = malloc((size_t)n * 4 + bytes);
    if (!all) return -1;
    memcpy(all, tokens, (size_t)n * 4);
    memcpy(all + (size_t)n * 4, state, bytes);
    int rc = keys_sha256(all, (size_t)n * 4 + bytes, out);
    free(all);
    return rc;
}

/* Deletes the least recently used files until the directory's .fbp files fit the budget. */
static void disk_trim(struct prefix_cache *c)
{
    for (;;) {
        DIR *d = opendir(c->dir);
        if (!d) return;
        uint64_t total = 0, oldest_ns = UINT64_MAX;
        char oldest[600] = "";
        for (struct dirent *de; (de = readdir(d));) {
            size_t l = strlen(de->d_name);
            if (l < 5 || strcmp(de->d_name + l - 4, ".fbp")) continue;
            char path[600];
            struct stat st;
            snprintf(path, sizeof path, "%s/%s", c->dir, de->d_name);
            if (stat(path, &st)) continue;
            total += (uint64_t)st.st_size;
            uint64_t ns = (uint64_t)st.st_mtim.tv_sec * 1000000000ull + (uint64_t)st.st_mtim.tv_nsec;
            if (ns < oldest_ns) {
                oldest_ns = ns;
                snprintf(oldest, sizeof oldest, "%s", path);
            }
        }
        closedir(d);
        if (total <= c->disk_budget || !oldest[0]) return;
        unlink(oldest);
    }
}

/* Writes an entry's file atomically (temp name, fsync, rename, fsync of the directory). */
static void disk_write(struct prefix_cache *c, const struct prefix_entry *e)
{
    struct prefix_file_header h = { .magic = PREFIX_FILE_MAGIC, .version = PREFIX_FILE_VERSION, .n = e->n,
                                     .state_bytes = e->bytes };
    const size_t total = sizeof h + (size_t)e->n * 4 + e->bytes;
    if (total > c->disk_budget) return;
    memcpy(h.model, c->model, sizeof h.model);
    uint8_t *buf = malloc(total);
    if (!buf || sum_of(e->tokens, e->n, e->state, e->bytes, h.sum)) {
        free(buf);
        return;
    }
    memcpy(buf, &h, sizeof h);
    memcpy(buf + sizeof h, e->tokens, (size_t)e->n * 4);
    memcpy(buf + sizeof h + (size_t)e->n * 4, e->state, e->bytes);
    char path[600], err[256];
    file_name(c, e->hash, e->n, path, sizeof path);
    if (durable_replace_file(path, buf, total, 0600, err, sizeof err))
        fprintf(stderr, "flashbox serve: prefix cache: %s\n", err);
    else
        c->st.disk_writes++;
    free(buf);
    disk_trim(c);
}

/* Reads the file of tokens[0, n) (hash h) into a new entry, or NULL (with a log line when
 * the file exists but is damaged or of another model). */
static struct prefix_entry *disk_read(struct prefix_cache *c, const int32_t *tokens, uint32_t n, uint64_t h)
{
    char path[600];
    file_name(c, h, n, path, sizeof path);
    /* The cache directory is ours: a planted FIFO or link there is refused, never waited on. */
    int fd = safe_open(path, O_RDONLY | O_NOFOLLOW, 0, NULL, 0);
    if (fd < 0) return NULL;
    struct prefix_entry *e = NULL;
    const char *why = NULL;
    struct prefix_file_header hd;
    struct stat st;
    if (fstat(fd, &st) || read(fd, &hd, sizeof hd) != (ssize_t)sizeof hd || hd.magic != PREFIX_FILE_MAGIC ||
        hd.version != PREFIX_FILE_VERSION) {
        why = "not a prefix state file of this version";
    } else if (memcmp(hd.model, c->model, sizeof hd.model)) {
        why = "saved for another model file";
    } else if (hd.n != n || hd.state_bytes > (uint64_t)st.st_size ||
               (uint64_t)st.st_size != sizeof hd + (uint64_t)n * 4 + hd.state_bytes) {
        why = "its size does not match its header";
    } else if (!(e = calloc(1, sizeof *e)) || !(e->tokens = malloc((size_t)n * 4)) || !(e->state = malloc(hd.state_bytes))) {
        why = "out of memory";
    } else {
        char err[256];
        uint8_t sum[32];
        if (durable_pread_all(fd, e->tokens, (size_t)n * 4, sizeof hd, path, err, sizeof err) ||
            durable_pread_all(fd, e->state, hd.state_bytes, sizeof hd + (uint64_t)n * 4, path, err, sizeof err))
            why = "read error";
        else if (sum_of(e->tokens, n, e->state, hd.state_bytes, sum) || memcmp(sum, hd.sum, sizeof sum))
            why = "checksum mismatch (damaged)";
        else if (memcmp(e->tokens, tokens, (size_t)n * 4))
            why = "its tokens are another prefix's";
    }
    close(fd);
    if (why) {
        fprintf(stderr, "flashbox serve: prefix cache: %s: %s; ignored\n", path, why);
        c->st.disk_ignored++;
        if (e) entry_free(e);
        return NULL;
    }
    e->n = n;
    e->hash = h;
    e->bytes = hd.state_bytes;
    utimensat(AT_FDCWD, path, NULL, 0); /* used now: the last to be trimmed */
    return e;
}

static void entry_free(struct prefix_entry *e)
{
    free(e->tokens);
    free(e->state);
    free(e);
}

void prefix_cache_clear(struct prefix_cache *c)
{
    pthread_mutex_lock(&c->lock);
    while (c->head) {
        struct prefix_entry *e = c->head;
        c->head = e->next;
        entry_free(e);
    }
    c->st.bytes_held = c->st.entries = 0;
    pthread_mutex_unlock(&c->lock);
}

void prefix_cache_destroy(struct prefix_cache *c)
{
    if (!c) return;
    prefix_cache_clear(c);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

/* The entry holding exactly tokens[0, n), or NULL. Called with the lock held. */
static struct prefix_entry *find(struct prefix_cache *c, const int32_t *tokens, uint32_t n, uint64_t h)
{
    for (struct prefix_entry *e = c->head; e; e = e->next)
        if (e->n == n && e->hash == h && !memcmp(e->tokens, tokens, (size_t)n * sizeof *tokens)) return e;
    return NULL;
}

/* The longest prefix of tokens[0, n) with a file in the directory, longer than `than`,
 * read into the memory list (which may evict). Called with the lock held. */
static struct prefix_entry *disk_find(struct prefix_cache *c, const int32_t *tokens, uint32_t n, uint32_t than)
{
    DIR *d = opendir(c->dir);
    if (!d) return NULL;
    uint32_t lens[64], n_lens = 0;
    for (struct dirent *de; (de = readdir(d)) && n_lens < 64;) {
        uint64_t h;
        uint32_t len;
        char tail[8];
        if (sscanf(de->d_name, "%16" SCNx64 "-%u%7s", &h, &len, tail) == 3 && !strcmp(tail, ".fbp") && len > than && len < n &&
            h == hash_tokens(tokens, len))
            lens[n_lens++] = len;
    }
    closedir(d);
    while (n_lens) { /* longest first */
        uint32_t k = 0;
        for (uint32_t i = 1; i < n_lens; i++) if (lens[i] > lens[k]) k = i;
        struct prefix_entry *e = disk_read(c, tokens, lens[k], hash_tokens(tokens, lens[k]));
        if (e) return e;
        lens[k] = lens[--n_lens];
    }
    return NULL;
}

static bool insert(struct prefix_cache *c, struct prefix_entry *e);

uint32_t prefix_cache_resume(struct prefix_cache *c, struct session *s, const int32_t *tokens, uint32_t n)
{
    pthread_mutex_lock(&c->lock);
    struct prefix_entry *best = NULL, *f = NULL; /* f: read from a file now */
    bool owned = false; /* read from a file and too large for the memory list */
    for (struct prefix_entry *e = c->head; e; e = e->next)
        if (e->n < n && (!best || e->n > best->n) && !memcmp(e->tokens, tokens, (size_t)e->n * sizeof *tokens)) best = e;
    if (c->dir[0]) {
        f = disk_find(c, tokens, n, best ? best->n : 0);
        if (f) {
            c->st.disk_hits++;
            owned = !insert(c, f);
            best = f;
        }
    }
    uint32_t got = 0;
    if (best) {
        char err[256];
        if (session_state_load(s, best->state, best->bytes, err, sizeof err) == 0) {
            got = best->n;
            best->last_use = ++c->clock;
            c->st.tokens_reused += got;
            c->st.bytes_read += best->bytes;
        } else { /* e.g. a file saved with another KV storage type: prefill from the start */
            fprintf(stderr, "flashbox serve: prefix cache: the saved state of %u tokens%s does not load: %s; ignored\n",
                    best->n, best == f ? " from its file" : "", err);
            if (best == f) c->st.disk_ignored++;
            session_reset(s);
        }
        if (owned) entry_free(best);
    }
    if (got) c->st.hits++;
    else c->st.misses++;
    pthread_mutex_unlock(&c->lock);
    return got;
}

void prefix_cache_save(struct prefix_cache *c, struct session *s, const int32_t *tokens)
{
    const uint32_t n = session_pos(s);
    const uint64_t bytes = session_state_bytes(s, n), h = hash_tokens(tokens, n);
    if (n == 0 || bytes > c->st.budget) return;
    pthread_mutex_lock(&c->lock);
    bool held = find(c, tokens, n, h) != NULL;
    pthread_mutex_unlock(&c->lock);
    if (held) return;
    struct prefix_entry *e = calloc(1, sizeof *e);
    char err[256];
    if (!e || !(e->tokens = malloc((size_t)n * sizeof *tokens)) || !(e->state = malloc(bytes)) ||
        session_state_save(s, e->state, bytes, err, sizeof err)) {
        if (e) entry_free(e);
        return;
    }
    memcpy(e->tokens, tokens, (size_t)n * sizeof *tokens);
    e->n = n;
    e->hash = h;
    e->bytes = bytes;
    pthread_mutex_lock(&c->lock);
    insert(c, e);
    c->st.saves++;
    if (c->dir[0]) disk_write(c, e);
    pthread_mutex_unlock(&c->lock);
}

/* Puts e at the head of the memory list, evicting the least recently used first; an
 * entry larger than the whole budget stays out (the caller keeps it). */
static bool insert(struct prefix_cache *c, struct prefix_entry *e)
{
    const uint64_t bytes = e->bytes;
    e->next = NULL;
    if (bytes > c->st.budget) return false;
    while (c->head && c->st.bytes_held + bytes > c->st.budget) { /* evict the least recently used */
        struct prefix_entry **lru = &c->head;
        for (struct prefix_entry **p = &c->head; *p; p = &(*p)->next)
            if ((*p)->last_use < (*lru)->last_use) lru = p;
        struct prefix_entry *victim = *lru;
        *lru = victim->next;
        c->st.bytes_held -= victim->bytes;
        c->st.entries--;
        c->st.evictions++;
        entry_free(victim);
    }
    e->last_use = ++c->clock;
    e->next = c->head;
    c->head = e;
    c->st.bytes_held += bytes;
    c->st.entries++;
    return true;
}

void prefix_cache_get_stats(struct prefix_cache *c, struct prefix_cache_stats *out)
{
    pthread_mutex_lock(&c->lock);
    *out = c->st;
    pthread_mutex_unlock(&c->lock);
}
