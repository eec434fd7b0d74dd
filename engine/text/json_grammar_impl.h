/* The compiled form of a JSON Schema, shared by the compiler (json_schema.c), the
 * automaton (json_grammar.c) and the validator (json_validate.c). Nodes refer to each other by index, so $ref cycles are
 * plain edges; everything lives in a few arrays owned by struct jg_schema. */
#ifndef FLASHBOX_ENGINE_JSON_GRAMMAR_IMPL_H
#define FLASHBOX_ENGINE_JSON_GRAMMAR_IMPL_H

#include "engine/text/json_grammar.h"

enum jg_kind {
    JG_ANY,      /* any JSON value: resolved by its first byte to one of the built-ins */
    JG_OBJECT,   /* declared properties in order, or (map) any keys with one value node */
    JG_ARRAY,
    JG_STRING,
    JG_NUMBER,
    JG_INTEGER,
    JG_LITERALS, /* enum / const / true / false / null: sorted serialized values */
    JG_ANYOF,    /* alternatives told apart by their first byte */
};

enum jg_format { JG_FMT_NONE, JG_FMT_DATE, JG_FMT_TIME, JG_FMT_DATE_TIME, JG_FMT_UUID };

enum { JG_INF = UINT32_MAX, JG_MAX_PROPS = 64 };

struct jg_node {
    uint8_t kind;     /* enum jg_kind */
    uint8_t format;   /* enum jg_format (strings) */
    bool map;         /* object: no declared properties; keys any string, values `value` */
    uint32_t first;   /* object: first property in props[]; literals: first in lits[]; anyof: first in alts[] */
    uint32_t count;   /* how many of them */
    uint32_t value;   /* object: the node of undeclared members' values (JG_INF: none allowed;
                       * only maps' are generated); array: item node */
    uint32_t min, max; /* array: items; string: characters (max JG_INF: none) */
    uint32_t minval;  /* bytes of the smallest instance (JG_INF: none found yet) */
    uint32_t first_bytes[8]; /* 256-bit set: bytes an instance may start with */
};

struct jg_prop {
    uint32_t key;     /* offset in text[] of the key as JSON string content (escaped) */
    uint32_t key_len;
    uint32_t node;
    bool required;
};

struct jg_lit {
    uint32_t off, len; /* in text[]: compact JSON text of the value */
};

struct jg_schema {
    struct jg_node *nodes;
    uint32_t n_nodes, cap_nodes;
    struct jg_prop *props;
    uint32_t n_props, cap_props;
    uint32_t *req_rest; /* [n_props + one per object]: per object and next index n, the bytes
                         * the required properties from n on still need, commas included */
    uint32_t *req_first; /* [n_nodes]: where an object's req_rest entries start */
    struct jg_lit *lits;
    uint32_t n_lits, cap_lits;
    uint32_t *alts;
    uint32_t n_alts, cap_alts;
    char *text;
    uint32_t n_text, cap_text;
    uint32_t root;
    /* built-in nodes JG_ANY resolves to */
    uint32_t any, any_object, any_array, any_string, any_number, any_literal;
};

static inline bool jg_bit(const uint32_t *set, uint8_t c) { return set[c >> 5] >> (c & 31) & 1u; }

#endif
