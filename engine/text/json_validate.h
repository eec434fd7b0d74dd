/* Checking a JSON answer against a compiled JSON Schema (jg_schema_compile in
 * json_grammar.h): the same parsed schema the structured-output grammar generates from, so a
 * schema means the same to both and a keyword one refuses the other refuses too. Used by the
 * evaluation sets' json_schema scorer (firmware/eval_set.c).
 *
 * Meaning, as the JSON Schema standard gives it, over the subset json_grammar.h lists:
 * properties in any order, undeclared ones checked against additionalProperties (allowed
 * when it is absent or true), numbers compared by value (1 equals 1.0 in enum and const, and
 * 1.0 is an integer), string lengths in characters (code points), formats as the grammar
 * writes them. Where the grammar narrows what it generates (property order, whitespace,
 * digits of a number) the validator does not: every instance the grammar can generate
 * validates, not the other way round. One choice the two share: a schema without "type"
 * whose keywords belong to one type ("properties", "items", "minLength", ...) admits only
 * that type, as its author meant. */
#ifndef FLASHBOX_ENGINE_JSON_VALIDATE_H
#define FLASHBOX_ENGINE_JSON_VALIDATE_H

#include <stddef.h>

struct jg_schema;

enum { JG_VALIDATE_MAX_DEPTH = 512 }; /* instance nesting the validator walks */

/* 0 when json[len] is one JSON value (surrounding whitespace allowed, duplicate keys not)
 * that validates under g; else -1 and a message naming the first failing place, "$" being
 * the root ("$.items[2]: expected a string, got an integer"), or saying why the text is not
 * JSON. Allocates only while parsing the text. */
int jg_schema_validate(const struct jg_schema *g, const char *json, size_t len, char *err, size_t err_len);

#endif
