/* libFuzzer target: untrusted JSON Schemas (response_format.json_schema.schema) through the
 * schema compiler. A schema it accepts must have a finite smallest instance, and walking the
 * automaton's shortest completion from the start (min_close bytes, each lowering it by one)
 * must end in an accepting state; after it, the rest of the input is fed as text and the
 * automaton must never accept a byte past the end of a complete top-level object. The
 * validator shares the compiled schema: the shortest instance the automaton wrote must
 * validate, and the input itself as an instance gets a verdict without crashing. */
#include "engine/text/json_grammar.h"
#include "engine/text/json_validate.h"

#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int ok)
{
    if (!ok) __builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct jg_schema *g;
    char err[256];
    err[0] = 0;
    if (jg_schema_compile(&g, (const char *)data, size, err, sizeof err)) {
        check(err[0] != 0);
        return 0;
    }
    uint32_t need = jg_schema_min_bytes(g);
    check(need > 0 && need != UINT32_MAX);
    static struct jg_state s, t;
    static char shortest[4096];
    jg_state_init(&s);
    check(jg_state_min_close(g, &s) == need);
    for (uint32_t left = need; left > 0 && need <= 4096; left--) {
        int found = -1;
        for (int c = 0; c < 256 && found < 0; c++) {
            jg_state_copy(&t, &s);
            if (jg_state_step(g, &t, (uint8_t)c)) {
                uint32_t after = jg_state_min_close(g, &t);
                check(after + 1 >= left);
                if (after + 1 == left) found = c;
            }
        }
        check(found >= 0);
        check(jg_state_step(g, &s, (uint8_t)found));
        shortest[need - left] = (char)found;
    }
    if (need <= 4096) {
        check(jg_state_accepting(g, &s));
        check(jg_schema_validate(g, shortest, need, err, sizeof err) == 0);
    }
    err[0] = 0;
    if (jg_schema_validate(g, (const char *)data, size, err, sizeof err)) check(err[0] != 0);
    /* the input itself as text: steps must never crash whatever the state */
    jg_state_init(&s);
    for (size_t i = 0; i < size && jg_state_step(g, &s, data[i]); i++) check(s.depth <= JG_MAX_DEPTH);
    jg_schema_free(g);
    return 0;
}
