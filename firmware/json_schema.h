/* A validator for the subset of JSON Schema that structured answers need: type (one name or
 * a list), properties, required, additionalProperties (false, true or a schema), enum,
 * const, items, minItems, maxItems and anyOf; the annotations title, description, default,
 * examples and $schema are accepted and ignored. Any other keyword is refused by
 * json_schema_check, so a schema never silently checks less than its author meant.
 * Numbers compare by value (1 equals 1.0, and 1.0 is an "integer"), as the standard says.
 * Pure: no I/O, no global state; used by the evaluation sets' json_schema scorer and meant
 * for structured output (response_format) too. */
#ifndef FLASHBOX_FIRMWARE_JSON_SCHEMA_H
#define FLASHBOX_FIRMWARE_JSON_SCHEMA_H

#include <jansson.h>
#include <stddef.h>

enum { JSON_SCHEMA_MAX_DEPTH = 32 }; /* nesting of subschemas */

/* 0 when schema is an object using only the supported keywords with well-formed values;
 * else -1 and a message naming the keyword's place ("properties.a.type: ..."). */
int json_schema_check(const json_t *schema, char *err, size_t err_len);

/* 0 when instance validates against a schema that passed json_schema_check; else -1 and a
 * message naming the first failing place in the instance ("$.items[2]: expected a string,
 * got an integer"). */
int json_schema_validate(const json_t *schema, const json_t *instance, char *err, size_t err_len);

/* JSON equality with numbers compared by value (enum and const). */
int json_schema_equal(const json_t *a, const json_t *b);

#endif
