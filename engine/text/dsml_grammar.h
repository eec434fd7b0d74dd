/* Forced tool calls: V4's DSML call block as a grammar the sampler is held to, so a request
 * with tool_choice "required" or a named function (or a strict tool) gets a call that
 * parses and whose arguments validate against the tool's parameter schema.
 *
 * The block is exactly what engine/text/chat.c renders for an assistant's calls (and what
 * firmware/tool_output.c reads back):
 *
 *   "\n\n<" M "tool_calls>\n<" M "invoke name=\"NAME\">\n"
 *       "<" M "parameter name=\"KEY\" string=\"true\">raw text</" M "parameter>\n"
 *       "<" M "parameter name=\"KEY\" string=\"false\">JSON</" M "parameter>\n"
 *   "</" M "invoke>\n" ... "</" M "tool_calls>"
 *
 * where M is the DSML control token (one token, never its bytes). NAME is one of the
 * offered tools; the parameters are the schema's top-level properties in their declared
 * order, each at most once, optional ones skippable, required ones present. A value is
 * either string="false" and JSON matching the property's schema (the byte automaton of
 * json_grammar.h started at that property), or string="true" and raw text, allowed when the
 * property's schema admits a string: the raw bytes are fed to that automaton as the JSON
 * string they stand for (quotes around, '"', '\\' and control bytes escaped), so enum,
 * format and length rules hold for raw text too. Values never hold U+FF5C (the bar inside
 * the DSML marker): written as plain bytes it would let "</｜DSML｜parameter" appear inside a
 * value and cut it short when read back.
 *
 * Budget: as jg_mask, a token is allowed only when the shortest completion after it (one
 * token per byte, the marker one token) and the end token still fit the remaining budget,
 * whenever the shortest call fits at all.
 *
 * Allocation: compiling and creating a matcher allocate; starting, masking and accepting
 * allocate nothing. */
#ifndef FLASHBOX_ENGINE_TEXT_DSML_GRAMMAR_H
#define FLASHBOX_ENGINE_TEXT_DSML_GRAMMAR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct jg_vocab;
struct tokenizer;

enum { DSML_MAX_TOOLS = 128 };

struct dsml_tool {
    const char *name;       /* [A-Za-z0-9_.-]{1,64} (checked) */
    const char *parameters; /* the parameters JSON Schema as JSON text; NULL: no parameters */
    size_t parameters_len;
};

struct dsml_grammar;

/* max_calls: invokes allowed in the block (1 unless parallel calls are allowed). Fails,
 * naming the tool and the keyword, when a schema is outside json_grammar.h's subset, its
 * top level is not an object, or a property name cannot be written as a DSML name. */
int dsml_grammar_compile(struct dsml_grammar **out, const struct dsml_tool *tools, size_t n, uint32_t max_calls,
                         char *err, size_t err_len);
void dsml_grammar_free(struct dsml_grammar *g);
/* Tokens of the shortest block (the marker counted as one). */
uint32_t dsml_grammar_min_tokens(const struct dsml_grammar *g);

struct dsml_matcher;
/* dsml_tok: the vocabulary's DSML marker token. */
int dsml_matcher_create(struct dsml_matcher **out, const struct jg_vocab *v, const struct tokenizer *tok,
                        int32_t dsml_tok, char *err, size_t err_len);
void dsml_matcher_destroy(struct dsml_matcher *m);
/* Starts a block (g borrowed). opened: "\n\n<" and the marker were already written (a
 * strict tool's call the model began on its own); else the block starts here. */
void dsml_matcher_start(struct dsml_matcher *m, const struct dsml_grammar *g, bool opened);
/* allow: [jg_mask_words] bits, cleared then set as jg_mask does; the end token only once
 * the block is closed. */
void dsml_mask(struct dsml_matcher *m, uint32_t remaining, int32_t eos, uint32_t *allow);
/* Advances by a chosen token (not the end token); -1 when it leaves the grammar. */
int dsml_matcher_accept(struct dsml_matcher *m, int32_t tok);
/* The block is closed: only the end token may follow. */
bool dsml_matcher_done(const struct dsml_matcher *m);

#endif
