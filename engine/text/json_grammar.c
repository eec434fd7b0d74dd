/* The byte-level automaton of a compiled schema (see json_grammar.h): a stack of frames,
 * one per open object, array, string, number or literal, each knowing its schema node and
 * where inside it the text is. A byte either moves the top frame, opens a child (its first
 * byte decides which anyOf alternative), or closes the top frame; numbers and literals end
 * at the first byte that cannot continue them, which then goes to the parent.
 *
 * jg_state_min_close counts the fewest bytes that close every open frame; each frame's share
 * is exact for this automaton (a shortest continuation's next byte lowers it by one), which
 * is what lets the mask hold generation to a token budget without ever leaving no token. */
#include "engine/text/json_grammar_impl.h"

#include <stddef.h>
#include <string.h>

enum {
    ST_O_FIRST,  /* after '{' */
    ST_O_KEY,    /* inside a declared key: mask = candidates, m = bytes matched */
    ST_O_COLON,  /* after the key; n = its property (declared) */
    ST_O_VALUE,  /* after ':' */
    ST_O_AFTER,  /* after a value; n = next property index */
    ST_O_COMMA,  /* after ',' */
    ST_A_FIRST,  /* after '['; n = items so far */
    ST_A_AFTER,
    ST_A_COMMA,
    ST_S_CHARS,  /* n = characters so far */
    ST_S_ESC,    /* after '\' */
    ST_S_HEX,    /* after "\u": aux hex digits, m their value */
    ST_S_UTF8,   /* aux continuation bytes still due; m = allowed range of the next (lo | hi << 8) */
    ST_S_FMT,    /* a formatted string: n = position, m = packed fields */
    ST_N_SIGN,   /* after '-'; n = mantissa digits */
    ST_N_ZERO,
    ST_N_INT,
    ST_N_DOT,
    ST_N_FRAC,
    ST_N_E,
    ST_N_ESIGN,
    ST_N_EXP,    /* aux = exponent digits */
    ST_LIT,      /* literals [n, m) still possible; mask = bytes matched */
};

enum { MAX_DIGITS = 15, MAX_EXP_DIGITS = 2 };

void jg_state_init(struct jg_state *s) { memset(s, 0, offsetof(struct jg_state, f)); }

void jg_state_init_node(struct jg_state *s, uint32_t node)
{
    jg_state_init(s);
    s->start = node + 1;
}

static uint32_t start_node(const struct jg_schema *g, const struct jg_state *s)
{
    return s->start ? s->start - 1 : g->root;
}

int jg_schema_members(const struct jg_schema *g, uint32_t *n)
{
    const struct jg_node *r = &g->nodes[g->root];
    *n = 0;
    if (r->kind != JG_OBJECT) return -1;
    if (!r->map) *n = r->count;
    return 0;
}

void jg_schema_member(const struct jg_schema *g, uint32_t i, struct jg_member *out)
{
    const struct jg_prop *p = &g->props[g->nodes[g->root].first + i];
    *out = (struct jg_member){ g->text + p->key, p->key_len, p->node, p->required };
}

uint32_t jg_node_min_bytes(const struct jg_schema *g, uint32_t node) { return g->nodes[node].minval; }

void jg_state_copy(struct jg_state *dst, const struct jg_state *src)
{
    memcpy(dst, src, offsetof(struct jg_state, f) + (size_t)src->depth * sizeof src->f[0]);
}

static bool is_space(uint8_t c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r'; }
static int digit(uint8_t c) { return c >= '0' && c <= '9' ? c - '0' : -1; }
static int hex(uint8_t c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

static bool pop(struct jg_state *s)
{
    if (--s->depth == 0) s->done = 1;
    return true;
}

static bool take_ws(struct jg_state *s, uint16_t ws)
{
    if (ws >= JG_MAX_WS) return false;
    s->ws = (uint16_t)(ws + 1);
    return true;
}

static struct jg_frame *push(struct jg_state *s, uint32_t node, uint8_t st)
{
    if (s->depth >= JG_MAX_DEPTH) return NULL;
    struct jg_frame *f = &s->f[s->depth++];
    memset(f, 0, sizeof *f);
    f->node = node;
    f->st = st;
    return f;
}

/* Narrows a literal frame by one byte; leaves it unchanged when no literal continues. */
static bool lit_step(const struct jg_schema *g, struct jg_frame *f, uint8_t c)
{
    uint32_t pos = (uint32_t)f->mask, lo = f->m, hi = f->m;
    for (uint32_t i = f->n; i < f->m; i++) {
        const struct jg_lit *l = &g->lits[i];
        if (l->len > pos && (uint8_t)g->text[l->off + pos] == c) {
            if (lo == f->m) lo = i;
            hi = i + 1;
        } else if (lo != f->m) {
            break; /* sorted: the matches are contiguous */
        }
    }
    if (lo == f->m) return false;
    f->n = lo;
    f->m = hi;
    f->mask = pos + 1;
    return true;
}

static bool lit_complete(const struct jg_schema *g, const struct jg_frame *f)
{
    return g->lits[f->n].len == (uint32_t)f->mask; /* a complete literal sorts first */
}

/* Opens a value of node with its first byte. */
static bool begin(const struct jg_schema *g, struct jg_state *s, uint32_t node, uint8_t c)
{
    for (;;) {
        const struct jg_node *n = &g->nodes[node];
        if (n->kind == JG_ANY) {
            node = c == '{' ? g->any_object : c == '[' ? g->any_array : c == '"' ? g->any_string
                 : c == '-' || digit(c) >= 0 ? g->any_number : g->any_literal;
        } else if (n->kind == JG_ANYOF) {
            uint32_t next = JG_INF;
            for (uint32_t i = 0; i < n->count && next == JG_INF; i++)
                if (jg_bit(g->nodes[g->alts[n->first + i]].first_bytes, c)) next = g->alts[n->first + i];
            if (next == JG_INF) return false;
            node = next;
        } else {
            break;
        }
    }
    const struct jg_node *n = &g->nodes[node];
    if (!jg_bit(n->first_bytes, c)) return false;
    struct jg_frame *f;
    switch ((enum jg_kind)n->kind) {
    case JG_OBJECT: return push(s, node, ST_O_FIRST) != NULL;
    case JG_ARRAY: return push(s, node, ST_A_FIRST) != NULL;
    case JG_STRING: return push(s, node, n->format ? ST_S_FMT : ST_S_CHARS) != NULL;
    case JG_NUMBER:
    case JG_INTEGER:
        if (!(f = push(s, node, c == '-' ? ST_N_SIGN : c == '0' ? ST_N_ZERO : ST_N_INT))) return false;
        f->n = c == '-' ? 0 : 1;
        return true;
    case JG_LITERALS:
        if (!(f = push(s, node, ST_LIT))) return false;
        f->n = n->first;
        f->m = n->first + n->count;
        return lit_step(g, f, c);
    default: return false;
    }
}

/* ---- objects ---- */

static uint32_t req_rest(const struct jg_schema *g, uint32_t node, uint32_t next)
{
    return g->req_rest[g->req_first[node] + next];
}

/* '"' opening a key: the declared properties from n up to and including the first
 * required one may come next (declared order, optional ones skippable). */
static bool open_key(const struct jg_schema *g, struct jg_state *s, struct jg_frame *f, const struct jg_node *n)
{
    if (n->map) {
        if (n->value == JG_INF) return false; /* additionalProperties false: only {} */
        f->st = ST_O_COLON;
        return push(s, g->any_string, ST_S_CHARS) != NULL;
    }
    uint64_t mask = 0;
    for (uint32_t i = f->n; i < n->count; i++) {
        mask |= 1ull << i;
        if (g->props[n->first + i].required) break;
    }
    if (!mask) return false;
    f->st = ST_O_KEY;
    f->mask = mask;
    f->m = 0;
    return true;
}

static bool key_step(const struct jg_schema *g, struct jg_frame *f, const struct jg_node *n, uint8_t c)
{
    uint64_t keep = 0;
    for (uint32_t i = 0; i < n->count; i++) {
        if (!(f->mask >> i & 1)) continue;
        const struct jg_prop *p = &g->props[n->first + i];
        if (c == '"' && p->key_len == f->m) { /* escaped keys never end in a lone '\' */
            f->n = i;
            f->st = ST_O_COLON;
            return true;
        }
        if (p->key_len > f->m && (uint8_t)g->text[p->key + f->m] == c) keep |= 1ull << i;
    }
    if (!keep) return false;
    f->mask = keep;
    f->m++;
    return true;
}

/* ---- strings ---- */

static bool string_step(const struct jg_schema *g, struct jg_state *s, struct jg_frame *f, uint8_t c)
{
    const struct jg_node *n = &g->nodes[f->node];
    switch (f->st) {
    case ST_S_CHARS:
        if (c == '"') return f->n >= n->min && pop(s);
        if (f->n >= n->max || c < 0x20) return false;
        f->n++;
        if (c == '\\') f->st = ST_S_ESC;
        else if (c >= 0x80) {
            /* UTF-8 lead byte: how many continuations, and the range of the first one
             * (no overlongs, no surrogates, nothing above U+10FFFF). */
            uint8_t lo = 0x80, hi = 0xBF, k;
            if (c >= 0xC2 && c <= 0xDF) k = 1;
            else if (c >= 0xE0 && c <= 0xEF) k = 2, lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
            else if (c >= 0xF0 && c <= 0xF4) k = 3, lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
            else return false;
            f->st = ST_S_UTF8;
            f->aux = k;
            f->m = lo | (uint32_t)hi << 8;
        }
        return true;
    case ST_S_UTF8:
        if (c < (f->m & 0xFF) || c > (f->m >> 8)) return false;
        if (--f->aux == 0) f->st = ST_S_CHARS;
        f->m = 0x80 | 0xBFu << 8;
        return true;
    case ST_S_ESC:
        if (c == 'u') {
            f->st = ST_S_HEX;
            f->aux = 0;
            f->m = 0;
            return true;
        }
        if (c && strchr("\"\\/bfnrt", c)) {
            f->st = ST_S_CHARS;
            return true;
        }
        return false;
    case ST_S_HEX: {
        int v = hex(c);
        if (v < 0 || (f->aux == 0 && v == 0xD)) return false; /* no surrogate halves */
        f->m = f->m * 16 + (uint32_t)v;
        if (++f->aux == 4) {
            if (f->m == 0) return false; /* \u0000: jansson (and many readers) refuse it */
            f->st = ST_S_CHARS;
        }
        return true;
    }
    }
    return false;
}

/* ---- formatted strings: date YYYY-MM-DD, time HH:MM:SS[.frac](Z|+HH:MM|-HH:MM),
 * date-time = date 'T' time, uuid 8-4-4-4-12 hex. Packed fields in m: year bits 0-13,
 * month 14-17, the previous tens digit 18-21, fraction digits 22-25. ---- */

static uint32_t days_in(uint32_t month, uint32_t year)
{
    static const uint8_t d[13] = { 31, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
    bool leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    return month == 2 && leap ? 29 : d[month <= 12 ? month : 0];
}

static bool date_char(uint32_t pos, uint32_t *m, uint8_t c)
{
    int d = digit(c);
    uint32_t year = *m & 0x3FFF, month = *m >> 14 & 0xF, tens = *m >> 18 & 0xF;
    switch (pos) {
    case 4:
    case 7: return c == '-';
    case 5:
        if (d < 0 || d > 1) return false;
        tens = (uint32_t)d;
        break;
    case 6:
        if (d < 0 || (tens == 0 && d == 0) || (tens == 1 && d > 2)) return false;
        month = tens * 10 + (uint32_t)d;
        break;
    case 8:
        if (d < 0 || (uint32_t)d > days_in(month, year) / 10) return false;
        tens = (uint32_t)d;
        break;
    case 9:
        if (d < 0 || (tens == 0 && d == 0) || (tens == days_in(month, year) / 10 && (uint32_t)d > days_in(month, year) % 10))
            return false;
        break;
    default: /* 0..3 */
        if (d < 0) return false;
        year = year * 10 + (uint32_t)d;
        break;
    }
    *m = year | month << 14 | tens << 18 | (*m & ~0x3FFFFFu);
    return true;
}

/* Time positions: 0-7 HH:MM:SS, 8 after the seconds, 9 after '.', 10 in the fraction,
 * 11-15 the offset's HH:MM, 16 complete. */
static bool time_char(uint32_t *t, uint32_t *m, uint8_t c)
{
    int d = digit(c);
    uint32_t tens = *m >> 18 & 0xF, frac = *m >> 22 & 0xF;
    switch (*t) {
    case 0:
    case 11:
        if (d < 0 || d > 2) return false;
        tens = (uint32_t)d;
        break;
    case 1:
    case 12:
        if (d < 0 || (tens == 2 && d > 3)) return false;
        break;
    case 2:
    case 5:
    case 13: if (c != ':') return false; break;
    case 3:
    case 6:
    case 14: if (d < 0 || d > 5) return false; break;
    case 4:
    case 7:
    case 15: if (d < 0) return false; break;
    case 8:
        if (c == '.') break;
        /* fall through */
    case 10:
        if (*t == 10 && d >= 0) {
            if (frac >= 9) return false;
            frac++;
            *m = (*m & ~(0xFu << 22)) | frac << 22;
            return true;
        }
        if (c == 'Z') *t = 16;
        else if (c == '+' || c == '-') *t = 11;
        else return false;
        return true;
    case 9:
        if (d < 0) return false;
        frac = 1;
        break;
    default: return false;
    }
    *m = (*m & ~(0xFFu << 18)) | tens << 18 | frac << 22;
    (*t)++;
    return true;
}

static uint32_t time_rest(uint32_t t)
{
    return t <= 7 ? 9 - t : t == 8 ? 1 : t == 9 ? 2 : t == 10 ? 1 : t <= 15 ? 16 - t : 0;
}

static bool fmt_done(uint8_t fmt, uint32_t pos)
{
    switch (fmt) {
    case JG_FMT_DATE: return pos == 10;
    case JG_FMT_TIME: return pos == 16;
    case JG_FMT_DATE_TIME: return pos == 27;
    default: return pos == 36;
    }
}

static uint32_t fmt_rest(uint8_t fmt, uint32_t pos)
{
    switch (fmt) {
    case JG_FMT_DATE: return 10 - pos;
    case JG_FMT_TIME: return time_rest(pos);
    case JG_FMT_DATE_TIME: return pos <= 10 ? 20 - pos : time_rest(pos - 11);
    default: return 36 - pos;
    }
}

static bool fmt_step(const struct jg_schema *g, struct jg_state *s, struct jg_frame *f, uint8_t c)
{
    uint8_t fmt = g->nodes[f->node].format;
    if (c == '"') return fmt_done(fmt, f->n) && pop(s);
    switch (fmt) {
    case JG_FMT_DATE:
        if (f->n >= 10 || !date_char(f->n, &f->m, c)) return false;
        f->n++;
        return true;
    case JG_FMT_TIME: return time_char(&f->n, &f->m, c);
    case JG_FMT_DATE_TIME:
        if (f->n < 10) {
            if (!date_char(f->n, &f->m, c)) return false;
            f->n++;
            return true;
        }
        if (f->n == 10) {
            if (c != 'T') return false;
            f->n++;
            return true;
        }
        {
            uint32_t t = f->n - 11;
            if (!time_char(&t, &f->m, c)) return false;
            f->n = t + 11;
            return true;
        }
    default: /* uuid */
        if (f->n >= 36) return false;
        if (f->n == 8 || f->n == 13 || f->n == 18 || f->n == 23) {
            if (c != '-') return false;
        } else if (hex(c) < 0) {
            return false;
        }
        f->n++;
        return true;
    }
}

/* ---- numbers: returns 1 taken, 0 the number ended before c, -1 dead ---- */

static int number_step(const struct jg_schema *g, struct jg_frame *f, uint8_t c)
{
    bool real = g->nodes[f->node].kind == JG_NUMBER;
    int d = digit(c);
    switch (f->st) {
    case ST_N_SIGN:
        if (d < 0) return -1;
        f->st = d == 0 ? ST_N_ZERO : ST_N_INT;
        f->n = 1;
        return 1;
    case ST_N_ZERO:
    case ST_N_INT:
    case ST_N_FRAC:
        if (d >= 0 && f->st != ST_N_ZERO) {
            if (f->n >= MAX_DIGITS) return 0;
            f->n++;
            return 1;
        }
        if (real && c == '.' && f->st != ST_N_FRAC && f->n < MAX_DIGITS) {
            f->st = ST_N_DOT;
            return 1;
        }
        if (real && (c == 'e' || c == 'E')) {
            f->st = ST_N_E;
            return 1;
        }
        return 0;
    case ST_N_DOT:
        if (d < 0) return -1;
        f->n++;
        f->st = ST_N_FRAC;
        return 1;
    case ST_N_E:
        if (c == '+' || c == '-') {
            f->st = ST_N_ESIGN;
            return 1;
        }
        /* fall through */
    case ST_N_ESIGN:
        if (d < 0) return -1;
        f->st = ST_N_EXP;
        f->aux = 1;
        return 1;
    case ST_N_EXP:
        if (d < 0 || f->aux >= MAX_EXP_DIGITS) return 0;
        f->aux++;
        return 1;
    }
    return -1;
}

static bool number_complete(const struct jg_frame *f)
{
    return f->st == ST_N_ZERO || f->st == ST_N_INT || f->st == ST_N_FRAC || f->st == ST_N_EXP;
}

/* ---- the step ---- */

static bool feed(const struct jg_schema *g, struct jg_state *s, uint8_t c, uint16_t ws)
{
    if (!s->started) {
        s->started = 1;
        return begin(g, s, start_node(g, s), c);
    }
    if (s->depth == 0) return false;
    struct jg_frame *f = &s->f[s->depth - 1];
    const struct jg_node *n = &g->nodes[f->node];
    bool space = is_space(c);
    switch (f->st) {
    case ST_O_FIRST:
    case ST_O_COMMA:
        if (space) return take_ws(s, ws);
        if (c == '"') return open_key(g, s, f, n);
        return c == '}' && f->st == ST_O_FIRST && (n->map || req_rest(g, f->node, f->n) == 0) && pop(s);
    case ST_O_KEY: return key_step(g, f, n, c);
    case ST_O_COLON:
        if (space) return take_ws(s, ws);
        if (c != ':') return false;
        f->st = ST_O_VALUE;
        return true;
    case ST_O_VALUE: {
        if (space) return take_ws(s, ws);
        uint32_t child = n->map ? n->value : g->props[n->first + f->n].node;
        f->st = ST_O_AFTER;
        if (!n->map) f->n++;
        return begin(g, s, child, c);
    }
    case ST_O_AFTER:
        if (space) return take_ws(s, ws);
        if (c == ',') {
            if (!n->map && f->n >= n->count) return false;
            f->st = ST_O_COMMA;
            return true;
        }
        return c == '}' && (n->map || req_rest(g, f->node, f->n) == 0) && pop(s);
    case ST_A_FIRST:
        if (space) return take_ws(s, ws);
        if (c == ']') return n->min == 0 && pop(s);
        if (n->max == 0) return false;
        f->st = ST_A_AFTER;
        f->n++;
        return begin(g, s, n->value, c);
    case ST_A_AFTER:
        if (space) return take_ws(s, ws);
        if (c == ',') {
            if (f->n >= n->max) return false;
            f->st = ST_A_COMMA;
            return true;
        }
        return c == ']' && f->n >= n->min && pop(s);
    case ST_A_COMMA:
        if (space) return take_ws(s, ws);
        f->st = ST_A_AFTER;
        f->n++;
        return begin(g, s, n->value, c);
    case ST_S_CHARS:
    case ST_S_ESC:
    case ST_S_HEX:
    case ST_S_UTF8: return string_step(g, s, f, c);
    case ST_S_FMT: return fmt_step(g, s, f, c);
    case ST_LIT:
        if (lit_step(g, f, c)) return true;
        return lit_complete(g, f) && pop(s) && feed(g, s, c, ws);
    default: {
        int r = number_step(g, f, c);
        if (r < 0) return false;
        if (r > 0) return true;
        return number_complete(f) && pop(s) && feed(g, s, c, ws);
    }
    }
}

bool jg_state_step(const struct jg_schema *g, struct jg_state *s, uint8_t c)
{
    uint16_t ws = s->ws;
    s->ws = 0;
    return feed(g, s, c, ws);
}

bool jg_state_accepting(const struct jg_schema *g, const struct jg_state *s)
{
    if (s->done) return true;
    if (s->depth != 1) return false;
    const struct jg_frame *f = &s->f[0];
    if (f->st == ST_LIT) return lit_complete(g, f);
    return f->st >= ST_N_SIGN && f->st <= ST_N_EXP && number_complete(f);
}

/* ---- the fewest bytes to close ---- */

static uint64_t minval(const struct jg_schema *g, uint32_t node) { return g->nodes[node].minval; }

/* After property i's key and colon: its value, then the rest of the object. */
static uint64_t after_key(const struct jg_schema *g, uint32_t node, const struct jg_node *n, uint32_t i)
{
    return minval(g, g->props[n->first + i].node) + req_rest(g, node, i + 1) + 1;
}

static uint64_t frame_rest(const struct jg_schema *g, const struct jg_frame *f)
{
    const struct jg_node *n = &g->nodes[f->node];
    uint64_t need = f->n < n->min ? n->min - f->n : 0; /* strings: characters; arrays: items */
    switch (f->st) {
    case ST_O_FIRST:
        if (n->map) return 1;
        return req_rest(g, f->node, f->n) ? req_rest(g, f->node, f->n) : 1;
    case ST_O_COMMA:
        if (n->map) return 4 + minval(g, n->value);
        if (req_rest(g, f->node, f->n)) return req_rest(g, f->node, f->n);
        {
            uint64_t best = UINT64_MAX;
            for (uint32_t i = f->n; i < n->count; i++) {
                const struct jg_prop *p = &g->props[n->first + i];
                uint64_t cost = p->key_len + 3 + minval(g, p->node);
                if (cost < best) best = cost;
            }
            return best + 1;
        }
    case ST_O_KEY: {
        uint64_t best = UINT64_MAX;
        for (uint32_t i = 0; i < n->count; i++) {
            if (!(f->mask >> i & 1)) continue;
            uint64_t cost = g->props[n->first + i].key_len - f->m + 2 + after_key(g, f->node, n, i);
            if (cost < best) best = cost;
        }
        return best;
    }
    case ST_O_COLON: return 1 + (n->map ? minval(g, n->value) + 1 : after_key(g, f->node, n, f->n));
    case ST_O_VALUE: return n->map ? minval(g, n->value) + 1 : after_key(g, f->node, n, f->n);
    case ST_O_AFTER: return n->map ? 1 : (uint64_t)req_rest(g, f->node, f->n) + 1;
    case ST_A_FIRST: return n->min ? (uint64_t)n->min * (minval(g, n->value) + 1) : 1;
    case ST_A_AFTER: return need * (minval(g, n->value) + 1) + 1;
    case ST_A_COMMA: {
        uint64_t k = need ? need : 1;
        return k * (minval(g, n->value) + 1);
    }
    case ST_S_CHARS: return need + 1;
    case ST_S_ESC: return need + 2;
    case ST_S_HEX: return (uint64_t)(4 - f->aux) + need + 1;
    case ST_S_UTF8: return (uint64_t)f->aux + need + 1;
    case ST_S_FMT: return (uint64_t)fmt_rest(n->format, f->n) + 1;
    case ST_N_SIGN:
    case ST_N_DOT:
    case ST_N_E:
    case ST_N_ESIGN: return 1;
    case ST_LIT: {
        uint64_t best = UINT64_MAX;
        for (uint32_t i = f->n; i < f->m; i++)
            if (g->lits[i].len - f->mask < best) best = g->lits[i].len - f->mask;
        return best;
    }
    default: return 0; /* a complete number */
    }
}

uint32_t jg_state_min_close(const struct jg_schema *g, const struct jg_state *s)
{
    if (!s->started) return g->nodes[start_node(g, s)].minval;
    uint64_t sum = 0;
    for (uint32_t i = 0; i < s->depth; i++) sum += frame_rest(g, &s->f[i]);
    return sum >= JG_INF ? JG_INF : (uint32_t)sum;
}
