/* The daemon's prefix cache (prefix_cache.h): a list of saved states, each with its
 * tokens, found by length and hash then compared token by token. */
#include "firmware/prefix_cache.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

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
};

/* FNV-1a over the ids' bytes. */
static uint64_t hash_tokens(const int32_t *t, uint32_t n)
{
    uint64_t h = 1469598103934665603ull;
    const unsigned char *p = (const unsigned char *)t;
    for (uint64_t i = 0; i < (uint64_t)n * sizeof *t; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

int prefix_cache_create(struct prefix_cache **out, uint64_t budget_bytes)
{
    struct prefix_cache *c = calloc(1, sizeof *c);
    if (!c) return -1;
    pthread_mutex_init(&c->lock, NULL);
    c->st.budget = budget_bytes;
    *out = c;
    return 0;
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

uint32_t prefix_cache_resume(struct prefix_cache *c, struct session *s, const int32_t *tokens, uint32_t n)
{
    pthread_mutex_lock(&c->lock);
    struct prefix_entry *best = NULL;
    for (struct prefix_entry *e = c->head; e; e = e->next)
        if (e->n < n && (!best || e->n > best->n) && !memcmp(e->tokens, tokens, (size_t)e->n * sizeof *tokens)) best = e;
    uint32_t got = 0;
    if (best) {
        char err[256];
        if (session_state_load(s, best->state, best->bytes, err, sizeof err) == 0) {
            got = best->n;
            best->last_use = ++c->clock;
            c->st.tokens_reused += got;
            c->st.bytes_read += best->bytes;
        } else {
            session_reset(s); /* a state that no longer loads: prefill from the start */
        }
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
    c->st.saves++;
    pthread_mutex_unlock(&c->lock);
}

void prefix_cache_get_stats(struct prefix_cache *c, struct prefix_cache_stats *out)
{
    pthread_mutex_lock(&c->lock);
    *out = c->st;
    pthread_mutex_unlock(&c->lock);
}
