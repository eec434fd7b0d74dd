/* Structured output: a JSON Schema compiled to a byte-level pushdown automaton, and the
 * per-step mask of the tokens that keep the automaton alive (grammar-constrained sampling).
 *
 * Schema subset (jg_schema_compile): type (one or an array), properties, required,
 * additionalProperties, items, minItems, maxItems, enum, const, anyOf / oneOf whose
 * alternatives start with different bytes, allOf of one schema, $ref to "#", "#/$defs/..."
 * or "#/definitions/...", string minLength / maxLength / format (date, time, date-time,
 * uuid); annotations (title, description, default, examples, $schema, $id, $comment,
 * deprecated, readOnly, writeOnly, strict) are ignored. Any other keyword, format or value
 * is refused with a message naming it and its path ("schema.properties.age: keyword
 * 'minimum' is not supported").
 *
 * What the automaton generates (always a valid instance, never all of them): properties in
 * their declared order, each at most once, optional ones skippable, and no undeclared
 * properties (an object without "properties" is a map with any keys); no leading or trailing
 * whitespace and at most JG_MAX_WS whitespace bytes in a row; valid UTF-8 in strings, no
 * \u0000 and no surrogate escapes; integers and mantissas of at most 15 digits, exponents of
 * at most 2 (every number is an exact double jansson reads back); nesting at most
 * JG_MAX_DEPTH.
 *
 * Budget: jg_state_min_close gives the fewest bytes that complete the value from a state.
 * Byte-level BPE vocabularies hold a token for every printable ASCII byte (the bytes of
 * shortest completions), so a mask that only allows tokens after which the rest still fits
 * the remaining token budget always ends in a complete value when the budget allows the
 * smallest one at all (see jg_mask).
 *
 * Allocation: compiling allocates; jg_state is a plain value and stepping, masking and
 * accepting allocate nothing (the matcher's buffers come from jg_matcher_create). */
#ifndef FLASHBOX_ENGINE_JSON_GRAMMAR_H
#define FLASHBOX_ENGINE_JSON_GRAMMAR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum { JG_MAX_DEPTH = 32, JG_MAX_WS = 64 };

struct jg_schema;
struct tokenizer;

/* Compiles a JSON Schema given as JSON text. */
int jg_schema_compile(struct jg_schema **out, const char *json, size_t len, char *err, size_t err_len);
/* The schema of response_format json_object: any JSON object. */
int jg_schema_any_object(struct jg_schema **out, char *err, size_t err_len);
void jg_schema_free(struct jg_schema *g);
/* Bytes of the smallest instance. */
uint32_t jg_schema_min_bytes(const struct jg_schema *g);

/* The top-level object's declared properties, for formats that write an object member by
 * member (DSML tool parameters), in their declared order. -1 when the root is not an object
 * schema; *n 0 when it declares none (a map: writing no member is then a valid instance,
 * unless additionalProperties holds them to {} anyway). */
struct jg_member {
    const char *key;   /* as JSON string content (escaped), not NUL-terminated */
    uint32_t key_len;
    uint32_t node;     /* for jg_state_init_node */
    bool required;
};
int jg_schema_members(const struct jg_schema *g, uint32_t *n);
void jg_schema_member(const struct jg_schema *g, uint32_t i, struct jg_member *out);
/* Bytes of the smallest instance of one node (UINT32_MAX: none). */
uint32_t jg_node_min_bytes(const struct jg_schema *g, uint32_t node);

/* ---- the automaton over bytes ---- */

struct jg_frame {
    uint32_t node; /* schema node this frame matches */
    uint8_t st;    /* where in the node (JG_ST_* in json_grammar.c) */
    uint8_t aux;   /* per state: bytes still expected, hex digits seen */
    uint16_t pad;
    uint32_t n;    /* per state: next property, item count, string length, format position */
    uint32_t m;    /* per state: key byte offset, literal range end, packed format fields */
    uint64_t mask; /* key candidates (properties); literal byte offset */
};

struct jg_state {
    uint16_t depth;   /* frames in use */
    uint16_t ws;      /* whitespace bytes in a row just before */
    uint8_t started;  /* the first byte was taken */
    uint8_t done;     /* the top-level value is closed: nothing may follow */
    uint32_t start;   /* the node the value starts at, plus one; 0: the schema's root */
    struct jg_frame f[JG_MAX_DEPTH];
};

void jg_state_init(struct jg_state *s);
/* Starts at one node of the schema instead of its root (a member's value, see
 * jg_schema_member): the value ends where that node's instance ends. */
void jg_state_init_node(struct jg_state *s, uint32_t node);
/* Copies only the frames in use. */
void jg_state_copy(struct jg_state *dst, const struct jg_state *src);
/* Takes one byte; false when no instance continues this way (s is then unspecified). */
bool jg_state_step(const struct jg_schema *g, struct jg_state *s, uint8_t c);
/* True when the bytes so far are a complete instance (end of text allowed here). */
bool jg_state_accepting(const struct jg_schema *g, const struct jg_state *s);
/* The fewest bytes that complete an instance from s (saturates at UINT32_MAX). */
uint32_t jg_state_min_close(const struct jg_schema *g, const struct jg_state *s);

/* ---- over a tokenizer's vocabulary ---- */

/* A byte trie of every token that decodes to bytes (control tokens excluded), built once
 * per tokenizer and shared read-only by every matcher. */
struct jg_vocab;
int jg_vocab_create(struct jg_vocab **out, const struct tokenizer *tok, char *err, size_t err_len);
void jg_vocab_destroy(struct jg_vocab *v);
/* True when every printable ASCII byte is a token of its own: the budget guarantee needs
 * the bytes of shortest completions as tokens (structure, digits, and the schema's keys and
 * enum values, which are ASCII in practice). Byte-level BPE vocabularies have them. */
bool jg_vocab_has_ascii_bytes(const struct jg_vocab *v);

/* One sequence's position in the grammar, with the scratch the mask walk needs. */
struct jg_matcher;
int jg_matcher_create(struct jg_matcher **out, const struct jg_vocab *v, char *err, size_t err_len);
void jg_matcher_destroy(struct jg_matcher *m);
/* Starts matching g (borrowed: it must outlive the matcher's use of it). */
void jg_matcher_start(struct jg_matcher *m, const struct jg_schema *g);
/* Words of the allow bitset: (n_vocab + 31) / 32. */
size_t jg_mask_words(const struct jg_vocab *v);
/* Sets bit t of allow[] for every token t allowed next, when `remaining` tokens may still be
 * generated including this one: its bytes keep the automaton alive and, when the smallest
 * completion fits the budget at all, the completion after it plus the end token still fit in
 * remaining - 1. The end token (eos) is allowed exactly in accepting states. */
void jg_mask(struct jg_matcher *m, uint32_t remaining, int32_t eos, uint32_t *allow);
/* Advances by a chosen token; -1 when its bytes leave the grammar (never for a token the
 * mask allowed), 0 otherwise. The end token is not fed. */
int jg_matcher_accept(struct jg_matcher *m, int32_t tok);
bool jg_matcher_accepting(const struct jg_matcher *m);

/* The walk behind jg_mask, for other byte automata over the same trie (engine/dsml_grammar.c):
 * sets the bit of every token whose bytes `step` takes from `start`, under the same budget
 * rule as jg_mask (min_close counts the fewest tokens that complete from a state, a token per
 * byte at worst). levels: [jg_vocab_max_len + 1] states of `size` bytes; cur: [max_len + 1].
 * Clears nothing: the caller clears allow and sets its end and control tokens. */
struct jg_walk {
    const void *g;
    size_t size;
    bool (*step)(const void *g, void *state, uint8_t c);
    uint32_t (*min_close)(const void *g, const void *state);
    void (*copy)(void *dst, const void *src);
};
uint32_t jg_vocab_max_len(const struct jg_vocab *v);
void jg_vocab_walk(const struct jg_vocab *v, const struct jg_walk *w, const void *start, void *levels, uint32_t *cur,
                   uint32_t remaining, uint32_t *allow);
uint32_t jg_matcher_min_close(const struct jg_matcher *m);

#endif
