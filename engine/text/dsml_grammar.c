/* The DSML call grammar (see dsml_grammar.h): an automaton over symbols (bytes, and the DSML
 * marker as one more symbol) that walks the fixed text of the block as groups of literals
 * told apart by their first differing symbol, the tool name and parameter names as sets of
 * candidates narrowed byte by byte, and each value with json_grammar's automaton started at
 * the property's node. Fewest-symbols-to-close is precomputed per tool and parameter index,
 * so the budget rule costs one sum per state. */
#include "engine/text/dsml_grammar.h"

#include "common/errmsg.h"
#include "engine/text/json_grammar.h"
#include "engine/text/tokenizer.h"

#include <stdlib.h>
#include <string.h>

enum { MARK = 256 };  /* the DSML control token as a symbol */
#define INF UINT64_C(0xFFFFFFFF)

/* The block's fixed text; '\1' stands for the marker. Literals of one group share a prefix
 * and none is a prefix of another. */
enum lit_id { L_OPEN, L_HEAD_PARAM, L_HEAD_END, L_NEXT_PARAM, L_PARAM_END, L_KEY_T, L_KEY_F, L_MORE, L_DONE, N_LITS };
enum action { A_NAME, A_KEY, A_CALL, A_RAW, A_JSON, A_DONE };
static const struct {
    const char *text;
    uint8_t then; /* enum action */
} lits[N_LITS] = {
    [L_OPEN] = { "\n\n<\1tool_calls>\n<\1invoke name=\"", A_NAME },
    [L_HEAD_PARAM] = { "\">\n<\1parameter name=\"", A_KEY },
    [L_HEAD_END] = { "\">\n\n</\1invoke>", A_CALL },
    [L_NEXT_PARAM] = { "</\1parameter>\n<\1parameter name=\"", A_KEY },
    [L_PARAM_END] = { "</\1parameter>\n</\1invoke>", A_CALL },
    [L_KEY_T] = { "\" string=\"true\">", A_RAW },
    [L_KEY_F] = { "\" string=\"false\">", A_JSON },
    [L_MORE] = { "\n<\1invoke name=\"", A_NAME },
    [L_DONE] = { "\n</\1tool_calls>", A_DONE },
};
enum { OPENED_POS = 4 }; /* L_OPEN after "\n\n<" and the marker */

static uint64_t lit_len(int l) { return strlen(lits[l].text); }
static int lit_sym(int l, uint32_t pos) { uint8_t c = (uint8_t)lits[l].text[pos]; return c == 1 ? MARK : c; }

struct param {
    const char *key;     /* into the schema's text, key_len bytes (plain: checked) */
    uint32_t key_len;
    uint32_t node;
    bool required, raw_ok;
    uint64_t raw_min;    /* raw text bytes of the smallest string instance */
    uint64_t vmin;       /* the smallest string="..."> literal and value */
};

struct tool {
    char *name;
    uint32_t name_len;
    struct jg_schema *schema; /* NULL: no parameters */
    struct param *params;     /* [n_params] */
    uint32_t n_params;
    uint64_t *close_rest;     /* [n_params + 1] from a value's end ("</M parameter>") with
                               * parameter n next, to the end of the block */
    uint64_t *key_cost;       /* [n_params + 1] from "parameter name=\"" with n next */
    bool *req_after;          /* [n_params + 1] a required parameter at n or later */
    uint64_t head_rest;       /* from the name's closing '"' to the end of the block */
};

struct dsml_grammar {
    struct tool *tools;       /* [n_tools] */
    uint32_t n_tools, max_calls;
    uint64_t min_name;        /* fewest symbols from "invoke name=\"" to the end */
};

enum phase { PH_LIT, PH_NAME, PH_KEY, PH_RAW, PH_JSON, PH_DONE };

struct dsml_state {
    uint8_t phase;
    uint8_t pend;             /* PH_RAW: "<" (1) or "</" (2) held back: content or the close */
    uint8_t bar;              /* bytes of U+FF5C (EF BD 9C) matched at the end of the value */
    uint8_t pad;
    uint16_t lits;            /* PH_LIT: candidate literals (bit per enum lit_id) */
    uint16_t tool;            /* the call's tool, once named */
    uint32_t pos;             /* symbols matched in the literal, name or key */
    uint32_t next;            /* the next parameter index of the call */
    uint32_t prop;            /* PH_RAW / PH_JSON: the value's parameter */
    uint32_t calls;           /* invokes opened */
    uint64_t cand[2];         /* PH_NAME: tools; PH_KEY: parameters (cand[0]) */
    struct jg_state v;        /* the value; last, copied by the frames in use */
};

struct dsml_matcher {
    const struct jg_vocab *vocab;
    const struct tokenizer *tok;
    int32_t dsml_tok;
    const struct dsml_grammar *g;
    struct dsml_state state, scratch;
    struct dsml_state *levels; /* [max_len + 1] */
    uint32_t *cur;             /* [max_len + 1] */
};

static uint64_t add(uint64_t a, uint64_t b) { return a >= INF || b >= INF || a + b >= INF ? INF : a + b; }
static uint64_t min2(uint64_t a, uint64_t b) { return a < b ? a : b; }
static bool bit(const uint64_t *set, uint32_t i) { return set[i >> 6] >> (i & 63) & 1; }

/* ---- compiling ---- */

static void tool_free(struct tool *t)
{
    free(t->name);
    jg_schema_free(t->schema);
    free(t->params);
    free(t->close_rest);
    free(t->key_cost);
    free(t->req_after);
}

void dsml_grammar_free(struct dsml_grammar *g)
{
    if (!g) return;
    for (uint32_t i = 0; i < g->n_tools; i++) tool_free(&g->tools[i]);
    free(g->tools);
    free(g);
}

/* The cost tables of one tool, from the last parameter back. */
static void tool_costs(struct tool *t, uint64_t call_end)
{
    uint32_t np = t->n_params;
    t->req_after[np] = false;
    t->key_cost[np] = INF;
    t->close_rest[np] = lit_len(L_PARAM_END) + call_end;
    for (uint32_t n = np; n-- > 0;) {
        t->req_after[n] = t->req_after[n + 1] || t->params[n].required;
        uint64_t best = INF;
        for (uint32_t i = n; i < np; i++) { /* candidates: up to and including the first required */
            const struct param *p = &t->params[i];
            best = min2(best, add(add(p->key_len, p->vmin), t->close_rest[i + 1]));
            if (p->required) break;
        }
        t->key_cost[n] = best;
        t->close_rest[n] = min2(add(lit_len(L_NEXT_PARAM), best),
                                t->req_after[n] ? INF : lit_len(L_PARAM_END) + call_end);
    }
    t->head_rest = min2(np ? add(lit_len(L_HEAD_PARAM), t->key_cost[0]) : INF,
                        t->req_after[0] ? INF : lit_len(L_HEAD_END) + call_end);
}

/* A property name goes between quotes in DSML and is read back as raw text: no escapes,
 * quotes, angle brackets, control bytes or the marker's bar. */
static bool plain_key(const char *k, uint32_t n)
{
    if (n == 0) return false;
    for (uint32_t i = 0; i < n; i++) {
        uint8_t c = (uint8_t)k[i];
        if (c < 0x20 || c == '"' || c == '\\' || c == '<' || c == '>') return false;
        if (c == 0xEF && i + 2 < n && (uint8_t)k[i + 1] == 0xBD && (uint8_t)k[i + 2] == 0x9C) return false;
    }
    return true;
}

static int tool_compile(struct tool *t, const struct dsml_tool *d, char *err, size_t err_len)
{
    size_t nl = strlen(d->name);
    if (!(t->name = strdup(d->name))) return errf(err, err_len, "tools: out of memory");
    t->name_len = (uint32_t)nl;
    uint32_t np = 0;
    if (d->parameters) {
        char e[256];
        if (jg_schema_compile(&t->schema, d->parameters, d->parameters_len, e, sizeof e))
            return errf(err, err_len, "tool '%s': parameters: %s", d->name, e);
        if (jg_schema_members(t->schema, &np))
            return errf(err, err_len, "tool '%s': parameters: the top level must be an object schema", d->name);
    }
    t->params = calloc(np ? np : 1, sizeof *t->params);
    t->close_rest = calloc(np + 1, sizeof *t->close_rest);
    t->key_cost = calloc(np + 1, sizeof *t->key_cost);
    t->req_after = calloc(np + 1, sizeof *t->req_after);
    if (!t->params || !t->close_rest || !t->key_cost || !t->req_after) return errf(err, err_len, "tools: out of memory");
    t->n_params = np;
    for (uint32_t i = 0; i < np; i++) {
        struct jg_member mb;
        jg_schema_member(t->schema, i, &mb);
        struct param *p = &t->params[i];
        if (!plain_key(mb.key, mb.key_len))
            return errf(err, err_len, "tool '%s': parameters.properties: '%.*s' cannot be a DSML parameter name "
                        "(no quotes, backslashes, '<', '>' or control characters)", d->name,
                        (int)(mb.key_len > 64 ? 64 : mb.key_len), mb.key);
        p->key = mb.key;
        p->key_len = mb.key_len;
        p->node = mb.node;
        p->required = mb.required;
        struct jg_state s;
        jg_state_init_node(&s, mb.node);
        p->raw_ok = jg_state_step(t->schema, &s, '"');
        uint32_t close = p->raw_ok ? jg_state_min_close(t->schema, &s) : 0;
        p->raw_min = p->raw_ok && close != UINT32_MAX && close > 0 ? close - 1 : INF;
        uint32_t jm = jg_node_min_bytes(t->schema, mb.node);
        p->vmin = min2(add(lit_len(L_KEY_T), p->raw_min), add(lit_len(L_KEY_F), jm == UINT32_MAX ? INF : jm));
    }
    return 0;
}

int dsml_grammar_compile(struct dsml_grammar **out, const struct dsml_tool *tools, size_t n, uint32_t max_calls,
                         char *err, size_t err_len)
{
    *out = NULL;
    if (n == 0 || n > DSML_MAX_TOOLS) return errf(err, err_len, "tools: %zu, expected 1 to %d", n, DSML_MAX_TOOLS);
    struct dsml_grammar *g = calloc(1, sizeof *g);
    if (!g || !(g->tools = calloc(n, sizeof *g->tools))) {
        free(g);
        return errf(err, err_len, "tools: out of memory");
    }
    g->max_calls = max_calls ? max_calls : 1;
    uint64_t call_end = lit_len(L_DONE); /* ending the block is always the shortest */
    g->min_name = INF;
    for (size_t i = 0; i < n; i++) {
        g->n_tools = (uint32_t)i + 1;
        if (tool_compile(&g->tools[i], &tools[i], err, err_len)) {
            dsml_grammar_free(g);
            return -1;
        }
        tool_costs(&g->tools[i], call_end);
        g->min_name = min2(g->min_name, add(g->tools[i].name_len, g->tools[i].head_rest));
    }
    if (g->min_name >= INF) {
        dsml_grammar_free(g);
        return errf(err, err_len, "tools: no offered tool can be called with arguments its schema accepts");
    }
    *out = g;
    return 0;
}

uint32_t dsml_grammar_min_tokens(const struct dsml_grammar *g)
{
    return (uint32_t)min2(add(lit_len(L_OPEN), g->min_name), UINT32_MAX - 1);
}

/* ---- the automaton ---- */

static void enter_lits(struct dsml_state *s, uint16_t set, uint32_t pos)
{
    s->phase = PH_LIT;
    s->lits = set;
    s->pos = pos;
}

/* The literals that may end a value, given the parameters left. */
static uint16_t close_set(const struct tool *t, uint32_t next)
{
    return (uint16_t)((next < t->n_params ? 1u << L_NEXT_PARAM : 0) | (t->req_after[next] ? 0 : 1u << L_PARAM_END));
}

static bool start_value(const struct dsml_grammar *g, struct dsml_state *s, bool raw)
{
    const struct tool *t = &g->tools[s->tool];
    jg_state_init_node(&s->v, t->params[s->prop].node);
    s->phase = raw ? PH_RAW : PH_JSON;
    s->pend = 0;
    s->bar = 0;
    return !raw || jg_state_step(t->schema, &s->v, '"');
}

static bool act(const struct dsml_grammar *g, struct dsml_state *s, int action)
{
    const struct tool *t = &g->tools[s->tool];
    switch (action) {
    case A_NAME:
        if (s->calls >= g->max_calls) return false;
        s->calls++;
        s->phase = PH_NAME;
        s->pos = 0;
        s->cand[0] = s->cand[1] = 0;
        for (uint32_t i = 0; i < g->n_tools; i++)
            if (g->tools[i].head_rest < INF) s->cand[i >> 6] |= UINT64_C(1) << (i & 63);
        return true;
    case A_KEY:
        s->phase = PH_KEY;
        s->pos = 0;
        s->cand[0] = 0;
        for (uint32_t i = s->next; i < t->n_params; i++) {
            s->cand[0] |= UINT64_C(1) << i;
            if (t->params[i].required) break;
        }
        return s->cand[0] != 0;
    case A_CALL:
        enter_lits(s, (uint16_t)(1u << L_DONE | (s->calls < g->max_calls ? 1u << L_MORE : 0)), 0);
        return true;
    case A_RAW:
    case A_JSON: return start_value(g, s, action == A_RAW);
    default:
        s->phase = PH_DONE;
        return true;
    }
}

static bool lits_step(const struct dsml_grammar *g, struct dsml_state *s, int sym)
{
    uint16_t keep = 0;
    int done = -1;
    for (int l = 0; l < N_LITS; l++) {
        if (!(s->lits >> l & 1) || lit_sym(l, s->pos) != sym) continue;
        keep |= (uint16_t)(1u << l);
        if (s->pos + 1 == lit_len(l)) done = l;
    }
    if (!keep) return false;
    if (done >= 0) return act(g, s, lits[done].then);
    s->lits = keep;
    s->pos++;
    return true;
}

static bool name_step(const struct dsml_grammar *g, struct dsml_state *s, int sym)
{
    uint64_t keep[2] = { 0, 0 };
    for (uint32_t i = 0; i < g->n_tools; i++) {
        if (!bit(s->cand, i)) continue;
        const struct tool *t = &g->tools[i];
        if (sym == '"' && t->name_len == s->pos) {
            s->tool = (uint16_t)i;
            s->next = 0;
            enter_lits(s, (uint16_t)((t->n_params ? 1u << L_HEAD_PARAM : 0) | (t->req_after[0] ? 0 : 1u << L_HEAD_END)), 1);
            return true;
        }
        if (t->name_len > s->pos && (uint8_t)t->name[s->pos] == sym) keep[i >> 6] |= UINT64_C(1) << (i & 63);
    }
    if (!keep[0] && !keep[1]) return false;
    s->cand[0] = keep[0];
    s->cand[1] = keep[1];
    s->pos++;
    return true;
}

static bool key_step(const struct dsml_grammar *g, struct dsml_state *s, int sym)
{
    const struct tool *t = &g->tools[s->tool];
    uint64_t keep = 0;
    for (uint32_t i = s->next; i < t->n_params; i++) {
        if (!(s->cand[0] >> i & 1)) continue;
        const struct param *p = &t->params[i];
        if (sym == '"' && p->key_len == s->pos) {
            s->prop = i;
            s->next = i + 1;
            enter_lits(s, (uint16_t)((p->raw_ok ? 1u << L_KEY_T : 0) | 1u << L_KEY_F), 1);
            return true;
        }
        if (p->key_len > s->pos && (uint8_t)p->key[s->pos] == sym) keep |= UINT64_C(1) << i;
    }
    if (!keep) return false;
    s->cand[0] = keep;
    s->pos++;
    return true;
}

/* A value byte: refuses the third byte of U+FF5C. */
static bool bar_ok(struct dsml_state *s, uint8_t c)
{
    if (s->bar == 2 && c == 0x9C) return false;
    s->bar = c == 0xEF ? 1 : s->bar == 1 && c == 0xBD ? 2 : 0;
    return true;
}

/* One raw byte as the JSON string text it stands for. */
static bool raw_feed(const struct jg_schema *sc, struct jg_state *v, uint8_t c)
{
    static const char hexd[] = "0123456789ABCDEF";
    char e[6];
    size_t n = 0;
    switch (c) {
    case '"': e[0] = '\\', e[1] = '"', n = 2; break;
    case '\\': e[0] = '\\', e[1] = '\\', n = 2; break;
    case '\b': e[0] = '\\', e[1] = 'b', n = 2; break;
    case '\f': e[0] = '\\', e[1] = 'f', n = 2; break;
    case '\n': e[0] = '\\', e[1] = 'n', n = 2; break;
    case '\r': e[0] = '\\', e[1] = 'r', n = 2; break;
    case '\t': e[0] = '\\', e[1] = 't', n = 2; break;
    default:
        if (c < 0x20) {
            memcpy(e, "\\u00", 4);
            e[4] = hexd[c >> 4];
            e[5] = hexd[c & 15];
            n = 6;
        } else {
            e[0] = (char)c;
            n = 1;
        }
    }
    for (size_t i = 0; i < n; i++)
        if (!jg_state_step(sc, v, (uint8_t)e[i])) return false;
    return true;
}

/* Whether a raw value with "<" or "</" held back can still go on: as content, or closed. */
static bool raw_pending_live(const struct jg_schema *sc, const struct jg_state *v, int pend)
{
    struct jg_state x;
    jg_state_copy(&x, v);
    if (jg_state_step(sc, &x, '"')) return true;
    jg_state_copy(&x, v);
    return raw_feed(sc, &x, '<') && (pend < 2 || raw_feed(sc, &x, '/'));
}

static bool raw_step(const struct dsml_grammar *g, struct dsml_state *s, int sym)
{
    const struct tool *t = &g->tools[s->tool];
    if (sym == MARK) {
        if (s->pend != 2 || !jg_state_step(t->schema, &s->v, '"')) return false;
        enter_lits(s, close_set(t, s->next), 3);
        return s->lits != 0;
    }
    uint8_t c = (uint8_t)sym;
    if (s->pend == 1 && c == '/') {
        s->pend = 2;
        return raw_pending_live(t->schema, &s->v, 2);
    }
    if (s->pend) { /* what was held back was content */
        if (!raw_feed(t->schema, &s->v, '<') || (s->pend == 2 && !raw_feed(t->schema, &s->v, '/'))) return false;
        s->pend = 0;
        s->bar = 0;
    }
    if (c == '<') {
        s->pend = 1;
        return raw_pending_live(t->schema, &s->v, 1);
    }
    return bar_ok(s, c) && raw_feed(t->schema, &s->v, c);
}

static bool json_step(const struct dsml_grammar *g, struct dsml_state *s, int sym)
{
    const struct tool *t = &g->tools[s->tool];
    if (sym == MARK) return false;
    if (sym == '<' && jg_state_accepting(t->schema, &s->v)) {
        enter_lits(s, close_set(t, s->next), 1);
        return s->lits != 0;
    }
    return bar_ok(s, (uint8_t)sym) && jg_state_step(t->schema, &s->v, (uint8_t)sym);
}

static bool sym_step(const struct dsml_grammar *g, struct dsml_state *s, int sym)
{
    switch (s->phase) {
    case PH_LIT: return lits_step(g, s, sym);
    case PH_NAME: return sym != MARK && name_step(g, s, sym);
    case PH_KEY: return sym != MARK && key_step(g, s, sym);
    case PH_RAW: return raw_step(g, s, sym);
    case PH_JSON: return json_step(g, s, sym);
    default: return false;
    }
}

/* ---- fewest symbols to the end of the block ---- */

static uint64_t action_cost(const struct dsml_grammar *g, const struct dsml_state *s, int l)
{
    const struct tool *t = &g->tools[s->tool];
    switch (lits[l].then) {
    case A_NAME: return g->min_name;
    case A_KEY: return t->key_cost[l == L_HEAD_PARAM ? 0 : s->next];
    case A_CALL: return lit_len(L_DONE);
    case A_RAW: return add(t->params[s->prop].raw_min, t->close_rest[s->next]);
    case A_JSON: {
        uint32_t m = jg_node_min_bytes(t->schema, t->params[s->prop].node);
        return add(m == UINT32_MAX ? INF : m, t->close_rest[s->next]);
    }
    default: return 0;
    }
}

static uint64_t state_cost(const struct dsml_grammar *g, const struct dsml_state *s)
{
    const struct tool *t = &g->tools[s->tool];
    uint64_t best = INF;
    switch (s->phase) {
    case PH_LIT:
        for (int l = 0; l < N_LITS; l++)
            if (s->lits >> l & 1) best = min2(best, add(lit_len(l) - s->pos, action_cost(g, s, l)));
        return best;
    case PH_NAME:
        for (uint32_t i = 0; i < g->n_tools; i++)
            if (bit(s->cand, i) && g->tools[i].name_len >= s->pos)
                best = min2(best, add(g->tools[i].name_len - s->pos, g->tools[i].head_rest));
        return best;
    case PH_KEY:
        for (uint32_t i = s->next; i < t->n_params; i++) {
            const struct param *p = &t->params[i];
            if (s->cand[0] >> i & 1 && p->key_len >= s->pos)
                best = min2(best, add(add(p->key_len - s->pos, p->vmin), t->close_rest[i + 1]));
        }
        return best;
    case PH_RAW: {
        uint64_t rest = t->close_rest[s->next];
        if (!s->pend) {
            uint32_t c = jg_state_min_close(t->schema, &s->v);
            return c == UINT32_MAX || c == 0 ? INF : add(c - 1, rest);
        }
        struct jg_state x;
        jg_state_copy(&x, &s->v);
        if (jg_state_step(t->schema, &x, '"')) best = rest - s->pend;
        jg_state_copy(&x, &s->v);
        if (raw_feed(t->schema, &x, '<') && (s->pend < 2 || raw_feed(t->schema, &x, '/'))) {
            uint32_t c = jg_state_min_close(t->schema, &x);
            if (c != UINT32_MAX && c > 0) best = min2(best, add(c - 1, rest));
        }
        return best;
    }
    case PH_JSON: {
        uint32_t c = jg_state_min_close(t->schema, &s->v);
        return add(c == UINT32_MAX ? INF : c, t->close_rest[s->next]);
    }
    default: return 0;
    }
}

/* ---- the walk's view ---- */

static void state_copy(void *dst, const void *src)
{
    struct dsml_state *d = dst;
    const struct dsml_state *s = src;
    memcpy(d, s, offsetof(struct dsml_state, v));
    jg_state_copy(&d->v, &s->v);
}

static bool walk_step(const void *g, void *st, uint8_t c) { return sym_step(g, st, c); }
static uint32_t walk_cost(const void *g, const void *st)
{
    uint64_t c = state_cost(g, st);
    return c >= INF ? UINT32_MAX : (uint32_t)c;
}

int dsml_matcher_create(struct dsml_matcher **out, const struct jg_vocab *v, const struct tokenizer *tok,
                        int32_t dsml_tok, char *err, size_t err_len)
{
    *out = NULL;
    struct dsml_matcher *m = calloc(1, sizeof *m);
    if (!m) return errf(err, err_len, "tool grammar: out of memory");
    m->vocab = v;
    m->tok = tok;
    m->dsml_tok = dsml_tok;
    size_t levels = (size_t)jg_vocab_max_len(v) + 1;
    m->levels = malloc(levels * sizeof *m->levels);
    m->cur = malloc(levels * sizeof *m->cur);
    if (!m->levels || !m->cur) {
        dsml_matcher_destroy(m);
        return errf(err, err_len, "tool grammar: out of memory for tokens of %u bytes", jg_vocab_max_len(v));
    }
    *out = m;
    return 0;
}

void dsml_matcher_destroy(struct dsml_matcher *m)
{
    if (!m) return;
    free(m->levels);
    free(m->cur);
    free(m);
}

void dsml_matcher_start(struct dsml_matcher *m, const struct dsml_grammar *g, bool opened)
{
    m->g = g;
    memset(&m->state, 0, offsetof(struct dsml_state, v));
    jg_state_init(&m->state.v);
    enter_lits(&m->state, 1u << L_OPEN, opened ? OPENED_POS : 0);
}

static void set_bit(uint32_t *allow, int32_t t) { allow[(uint32_t)t >> 5] |= 1u << ((uint32_t)t & 31); }

void dsml_mask(struct dsml_matcher *m, uint32_t remaining, int32_t eos, uint32_t *allow)
{
    memset(allow, 0, jg_mask_words(m->vocab) * sizeof *allow);
    uint32_t n_vocab = (uint32_t)jg_mask_words(m->vocab) * 32;
    if (m->state.phase == PH_DONE) {
        if (eos >= 0 && (uint32_t)eos < n_vocab) set_bit(allow, eos);
        return;
    }
    if (remaining == 0) return;
    struct jg_walk w = { m->g, sizeof(struct dsml_state), walk_step, walk_cost, state_copy };
    jg_vocab_walk(m->vocab, &w, &m->state, m->levels, m->cur, remaining, allow);
    if (m->dsml_tok < 0 || (uint32_t)m->dsml_tok >= n_vocab) return;
    uint64_t need = state_cost(m->g, &m->state);
    state_copy(&m->scratch, &m->state);
    if (sym_step(m->g, &m->scratch, MARK) && (need + 1 > remaining || state_cost(m->g, &m->scratch) + 2 <= remaining))
        set_bit(allow, m->dsml_tok);
}

int dsml_matcher_accept(struct dsml_matcher *m, int32_t tok)
{
    if (tok == m->dsml_tok) return sym_step(m->g, &m->state, MARK) ? 0 : -1;
    size_t len;
    const uint8_t *p = (const uint8_t *)tok_piece(m->tok, tok, 0, &len);
    if (!p || len == 0) return -1;
    for (size_t k = 0; k < len; k++)
        if (!sym_step(m->g, &m->state, p[k])) return -1;
    return 0;
}

bool dsml_matcher_done(const struct dsml_matcher *m) { return m->state.phase == PH_DONE; }
