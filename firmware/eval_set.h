/* A site's evaluation set: a file of JSON lines, one case per line, kept by the site outside
 * any bundle (for example under /etc/flashbox/eval/). A case:
 *   {"id": "refund-1", "messages": [OpenAI chat messages], "scorer": "exact",
 *    "expected": ..., "options": [...], "max_tokens": N}
 * plus "thinking", "stop", "tools", "tool_choice", "parallel_tool_calls" and
 * "response_format", which go to the chat request parser as they are (so a case can use
 * exactly what the HTTP API accepts, and nothing else). An answer that calls tools is
 * scored as its calls, [{"name": ..., "arguments": {...}}] in compact JSON (eval_run.c).
 * Scorers and what "expected" holds:
 *   exact              the greedy answer equals the string
 *   contains           the greedy answer contains the string
 *   regex              the greedy answer matches the PCRE2 pattern (UTF, anywhere)
 *   json_schema        the greedy answer is JSON valid under the schema object (the engine's
 *                      json_validate.h: the subset structured output supports)
 *   choice             "options": 2..64 strings; expected is one of them (or its index): the
 *                      option the model gives the highest log-probability must be it
 *   reference_logprob  a reference answer; "reference_logprob" is the mean log-probability
 *                      per token the trusted model gave it, and the case passes when this
 *                      model's is at least that minus "tolerance" (nats, default 0.1)
 * Each case scores 1 (pass) or 0; a set's score is the mean over its cases.
 * Parsing is pure (no I/O, the fuzz target's subject); eval_set_load reads a file once into
 * memory and hashes exactly the bytes it parses. */
#ifndef FLASHBOX_FIRMWARE_EVAL_SET_H
#define FLASHBOX_FIRMWARE_EVAL_SET_H

#include "engine/engine.h"
#include "firmware/request_parse.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum eval_scorer {
    EVAL_SCORER_EXACT = 0,
    EVAL_SCORER_CONTAINS,
    EVAL_SCORER_REGEX,
    EVAL_SCORER_JSON_SCHEMA,
    EVAL_SCORER_CHOICE,
    EVAL_SCORER_REFERENCE_LOGPROB,
    EVAL_SCORER_COUNT
};

enum {
    EVAL_MAX_CASES = 100000,
    EVAL_MAX_LINE_BYTES = 1 << 20,
    EVAL_MAX_OPTIONS = 64,
    EVAL_MAX_ID = 128,
    EVAL_DEFAULT_MAX_TOKENS = 64,
};
#define EVAL_DEFAULT_TOLERANCE 0.1

struct eval_case {
    char id[EVAL_MAX_ID + 1];
    uint32_t line;                /* 1-based line of the set file */
    enum eval_scorer scorer;
    struct gen_request req;       /* the chat request: greedy (temperature 0), seed 0 */
    bool has_expected;            /* false only when parsed for recording */
    const char *expected;         /* exact, contains, regex, reference_logprob: the text (in obj) */
    struct jg_schema *schema;     /* json_schema: the schema compiled (engine's json_validate.h), owned */
    void *regex;                  /* regex: the compiled pcre2_code */
    const char *options[EVAL_MAX_OPTIONS]; /* choice: the option texts (in obj) */
    uint32_t n_options;
    int32_t expected_option;      /* choice: index into options, -1 when not given */
    bool has_baseline;
    double baseline_logprob;      /* reference_logprob: mean log-probability per token */
    double tolerance;             /* reference_logprob: nats */
    json_t *obj;                  /* the line as parsed (owns the strings above; --record rewrites it) */
};

struct eval_set {
    struct eval_case *cases;      /* [n] */
    uint32_t n;
    uint32_t per_scorer[EVAL_SCORER_COUNT];
    char sha256[65];              /* hex of the bytes parsed ("" from eval_set_parse) */
};

const char *eval_scorer_name(enum eval_scorer s);

/* Parses a set. recording: expected answers may be missing where a trusted model can fill
 * them (exact, contains, choice, reference_logprob). name labels messages: "NAME:LINE: ...".
 * Blank lines are skipped; any other line must be one case. On error the set is empty. */
int eval_set_parse(const char *text, size_t len, const char *name, bool recording, struct eval_set *out, char *err,
                   size_t err_len);
/* Reads path once into memory, records the SHA-256 of those bytes, parses them. */
int eval_set_load(const char *path, bool recording, struct eval_set *out, char *err, size_t err_len);
void eval_set_free(struct eval_set *s);

/* The pure scorers on a greedy answer (exact, contains, regex, json_schema): 1 when it
 * passes, 0 when not; why says what failed (may be NULL). */
int eval_score_text(const struct eval_case *c, const char *answer, size_t len, char *why, size_t why_len);

#endif
