/* libFuzzer target for evaluation sets (firmware/eval_set.c) and the JSON Schema validator
 * (engine/text/json_validate.c). The first byte picks recording mode; the rest is the set. A set
 * that parses must keep its promises: every case has an id, a known scorer and a chat
 * request; and its text scorers (and the json_schema validator, on the case's own line)
 * must run on any answer without crashing. */
#include "firmware/eval_set.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int ok)
{
    if (!ok) __builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    struct eval_set set;
    char err[512];
    if (eval_set_parse((const char *)data + 1, size - 1, "fuzz", data[0] & 1, &set, err, sizeof err)) {
        check(err[0] != 0 && set.n == 0);
        return 0;
    }
    check(set.n > 0);
    for (uint32_t i = 0; i < set.n; i++) {
        const struct eval_case *c = &set.cases[i];
        check(c->id[0] != 0 && c->scorer < EVAL_SCORER_COUNT && c->req.n_messages > 0 && c->line >= 1);
        if (c->scorer == EVAL_SCORER_CHOICE) check(c->n_options >= 2 && c->expected_option < (int32_t)c->n_options);
        if (c->has_expected && c->scorer <= EVAL_SCORER_JSON_SCHEMA) {
            char why[256];
            int s = eval_score_text(c, (const char *)data + 1, size - 1, why, sizeof why);
            check(s == 0 || s == 1);
        }
        if (c->schema) {
            /* the case's own line as an instance: any verdict, never a crash */
            char *line = json_dumps(c->obj, JSON_COMPACT);
            if (line) jg_schema_validate(c->schema, line, strlen(line), err, sizeof err);
            free(line);
        }
    }
    eval_set_free(&set);
    return 0;
}
