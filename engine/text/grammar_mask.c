/* The token side of structured output (see json_grammar.h): a byte trie of the vocabulary,
 * and per step a depth-first walk of it that runs the automaton once per trie edge, so
 * tokens sharing a prefix share the work and a dead prefix prunes every token below it.
 * The walk's states (one per trie level) are allocated with the matcher: masking allocates
 * nothing. */
#include "engine/text/json_grammar_impl.h"

#include "common/errmsg.h"
#include "engine/text/tokenizer.h"

#include <stdlib.h>
#include <string.h>

enum { NONE = UINT32_MAX };

struct trie_node {
    uint32_t first_child, next_sibling; /* NONE when absent */
    uint32_t tok_first, tok_count;      /* tokens ending here: toks[tok_first, +tok_count) */
    uint8_t byte;
};

struct jg_vocab {
    const struct tokenizer *tok;
    uint32_t n_vocab;
    struct trie_node *nodes; /* [n_nodes]; node 0 is the root (no byte) */
    uint32_t n_nodes;
    int32_t *toks;           /* [n_toks] token ids grouped by the node they end at */
    uint32_t max_len;        /* longest token in bytes = deepest level */
    bool ascii_bytes;        /* every printable ASCII byte is a token */
};

struct jg_matcher {
    const struct jg_vocab *v;
    const struct jg_schema *g;
    struct jg_state state;
    struct jg_state *levels; /* [max_len + 1] the state after each trie level of the walk */
    uint32_t *cur;           /* [max_len + 1] the next sibling to visit per level */
};

int jg_vocab_create(struct jg_vocab **out, const struct tokenizer *tok, char *err, size_t err_len)
{
    *out = NULL;
    uint32_t n_vocab = tok_n_vocab(tok);
    struct jg_vocab *v = calloc(1, sizeof *v);
    uint32_t *end = malloc((size_t)n_vocab * sizeof *end); /* per token: its trie node or NONE */
    uint32_t cap = 1024;
    uint32_t root_child[256];
    if (!v || !end) goto oom;
    v->tok = tok;
    v->n_vocab = n_vocab;
    v->nodes = malloc(cap * sizeof *v->nodes);
    if (!v->nodes) goto oom;
    v->nodes[0] = (struct trie_node){ NONE, NONE, 0, 0, 0 };
    v->n_nodes = 1;
    for (int i = 0; i < 256; i++) root_child[i] = NONE;
    for (uint32_t id = 0; id < n_vocab; id++) {
        size_t len;
        const uint8_t *p = (const uint8_t *)tok_piece(tok, (int32_t)id, 0, &len);
        end[id] = NONE;
        if (!p || len == 0) continue; /* control tokens: no bytes */
        uint32_t at = 0;
        for (size_t k = 0; k < len; k++) {
            uint32_t c = at == 0 ? root_child[p[k]] : v->nodes[at].first_child;
            if (at != 0)
                while (c != NONE && v->nodes[c].byte != p[k]) c = v->nodes[c].next_sibling;
            if (c == NONE) {
                if (v->n_nodes == cap) {
                    if (cap > UINT32_MAX / 4) goto oom;
                    struct trie_node *q = realloc(v->nodes, (size_t)cap * 2 * sizeof *q);
                    if (!q) goto oom;
                    v->nodes = q;
                    cap *= 2;
                }
                c = v->n_nodes++;
                v->nodes[c] = (struct trie_node){ NONE, v->nodes[at].first_child, 0, 0, p[k] };
                v->nodes[at].first_child = c;
                if (at == 0) root_child[p[k]] = c;
            }
            at = c;
        }
        end[id] = at;
        v->nodes[at].tok_count++;
        if (len > v->max_len) v->max_len = (uint32_t)len;
    }
    /* Group the tokens by end node (counting sort). */
    uint32_t total = 0;
    for (uint32_t i = 0; i < v->n_nodes; i++) {
        v->nodes[i].tok_first = total;
        total += v->nodes[i].tok_count;
        v->nodes[i].tok_count = 0;
    }
    v->toks = malloc((total ? total : 1) * sizeof *v->toks);
    if (!v->toks) goto oom;
    for (uint32_t id = 0; id < n_vocab; id++) {
        if (end[id] == NONE) continue;
        struct trie_node *nd = &v->nodes[end[id]];
        v->toks[nd->tok_first + nd->tok_count++] = (int32_t)id;
    }
    v->ascii_bytes = true;
    for (int i = 0x20; i < 0x7F; i++) v->ascii_bytes &= root_child[i] != NONE && v->nodes[root_child[i]].tok_count > 0;
    free(end);
    *out = v;
    return 0;
oom:
    free(end);
    jg_vocab_destroy(v);
    return errf(err, err_len, "grammar: out of memory for the token trie of %u tokens", n_vocab);
}

void jg_vocab_destroy(struct jg_vocab *v)
{
    if (!v) return;
    free(v->nodes);
    free(v->toks);
    free(v);
}

bool jg_vocab_has_ascii_bytes(const struct jg_vocab *v) { return v->ascii_bytes; }
size_t jg_mask_words(const struct jg_vocab *v) { return ((size_t)v->n_vocab + 31) / 32; }
uint32_t jg_vocab_max_len(const struct jg_vocab *v) { return v->max_len; }

int jg_matcher_create(struct jg_matcher **out, const struct jg_vocab *v, char *err, size_t err_len)
{
    *out = NULL;
    struct jg_matcher *m = calloc(1, sizeof *m);
    if (!m) return errf(err, err_len, "grammar: out of memory");
    m->v = v;
    m->levels = malloc(((size_t)v->max_len + 1) * sizeof *m->levels);
    m->cur = malloc(((size_t)v->max_len + 1) * sizeof *m->cur);
    if (!m->levels || !m->cur) {
        jg_matcher_destroy(m);
        return errf(err, err_len, "grammar: out of memory for tokens of %u bytes", v->max_len);
    }
    jg_state_init(&m->state);
    *out = m;
    return 0;
}

void jg_matcher_destroy(struct jg_matcher *m)
{
    if (!m) return;
    free(m->levels);
    free(m->cur);
    free(m);
}

void jg_matcher_start(struct jg_matcher *m, const struct jg_schema *g)
{
    m->g = g;
    jg_state_init(&m->state);
}

static void set(uint32_t *allow, int32_t t) { allow[(uint32_t)t >> 5] |= 1u << ((uint32_t)t & 31); }

void jg_vocab_walk(const struct jg_vocab *v, const struct jg_walk *w, const void *start, void *levels, uint32_t *cur,
                   uint32_t remaining, uint32_t *allow)
{
    if (remaining == 0) return;
    /* With the budget in reach, a token must leave room for the shortest completion (one
     * token per byte at worst) and the end token; out of reach, any live token goes, and
     * the text ends at max_tokens. */
    uint64_t need = w->min_close(w->g, start);
    bool budget = need + 1 <= remaining;
    uint32_t d = 0;
    cur[0] = v->nodes[0].first_child;
    for (;;) {
        uint32_t c = cur[d];
        if (c == NONE) {
            if (d == 0) break;
            d--;
            continue;
        }
        const struct trie_node *nd = &v->nodes[c];
        cur[d] = nd->next_sibling;
        void *st = (char *)levels + (size_t)d * w->size;
        w->copy(st, d == 0 ? start : (const char *)levels + (size_t)(d - 1) * w->size);
        if (!w->step(w->g, st, nd->byte)) continue;
        if (nd->tok_count && (!budget || (uint64_t)w->min_close(w->g, st) + 2 <= remaining))
            for (uint32_t i = 0; i < nd->tok_count; i++) set(allow, v->toks[nd->tok_first + i]);
        if (nd->first_child != NONE) cur[++d] = nd->first_child;
    }
}

static bool json_step(const void *g, void *st, uint8_t c) { return jg_state_step(g, st, c); }
static uint32_t json_min_close(const void *g, const void *st) { return jg_state_min_close(g, st); }
static void json_copy(void *dst, const void *src) { jg_state_copy(dst, src); }

void jg_mask(struct jg_matcher *m, uint32_t remaining, int32_t eos, uint32_t *allow)
{
    const struct jg_vocab *v = m->v;
    memset(allow, 0, jg_mask_words(v) * sizeof *allow);
    if (eos >= 0 && (uint32_t)eos < v->n_vocab && jg_state_accepting(m->g, &m->state)) set(allow, eos);
    struct jg_walk w = { m->g, sizeof(struct jg_state), json_step, json_min_close, json_copy };
    jg_vocab_walk(v, &w, &m->state, m->levels, m->cur, remaining, allow);
}

int jg_matcher_accept(struct jg_matcher *m, int32_t tok)
{
    size_t len;
    const uint8_t *p = (const uint8_t *)tok_piece(m->v->tok, tok, 0, &len);
    if (!p || len == 0) return -1;
    for (size_t k = 0; k < len; k++)
        if (!jg_state_step(m->g, &m->state, p[k])) return -1;
    return 0;
}

bool jg_matcher_accepting(const struct jg_matcher *m) { return jg_state_accepting(m->g, &m->state); }
uint32_t jg_matcher_min_close(const struct jg_matcher *m) { return jg_state_min_close(m->g, &m->state); }
