/* libFuzzer target: the files `flashbox quantize` and `flashbox imatrix` read from a user, the
 * pattern file (PATTERN=TYPE lines), the importance matrix (llama.cpp GGUF or legacy binary)
 * and the token file (ids separated by commas or white space). The first byte picks one ('t':
 * token ids, else even: pattern file, odd: imatrix); the rest is the input. Accepted input
 * must keep its promises: rules with a NUL-terminated pattern and a type that has a
 * quantizer; imatrix entries with a name and finite, non-negative values inside their count;
 * token ids non-negative int32 values, no more than asked for. */
#include "tools/quantize.h"
#include "engine/model/quant.h"

#include <math.h>
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
    const uint8_t *in = data + 1;
    size_t len = size - 1;
    char err[256];
    err[0] = 0;
    if (data[0] == 't') {
        char *text = malloc(len + 1);
        int32_t ids[64];
        if (!text) return 0;
        memcpy(text, in, len);
        text[len] = 0;
        long n = quant_parse_ids(text, ids, 64, err, sizeof err);
        check(n >= -1 && n <= 64);
        if (n < 0) check(err[0] != 0);
        for (long i = 0; i < n; i++) check(ids[i] >= 0);
        free(text);
        return 0;
    }
    if (data[0] % 2 == 0) {
        static struct quant_recipe r;
        memset(&r, 0, sizeof r);
        if (quant_recipe_parse((const char *)in, len, &r, err, sizeof err) == 0) {
            check(r.n_rules > 0 && r.n_rules <= QUANT_MAX_RULES);
            for (uint32_t i = 0; i < r.n_rules; i++) {
                check(memchr(r.rules[i].pattern, 0, sizeof r.rules[i].pattern) != NULL && r.rules[i].pattern[0]);
                check(quant_can_quantize(r.rules[i].type));
                (void)quant_recipe_match(&r, "blk.0.ffn_down_exps.weight");
            }
        } else {
            check(err[0] != 0);
        }
        return 0;
    }
    struct quant_imatrix m;
    if (quant_imatrix_parse(in, len, &m, err, sizeof err) == 0) {
        check(m.n > 0);
        for (uint32_t i = 0; i < m.n; i++) {
            check(m.e[i].name && m.e[i].n_val > 0);
            for (uint64_t k = 0; k < m.e[i].n_val; k++) check(isfinite(m.e[i].val[k]) && m.e[i].val[k] >= 0);
        }
        quant_imatrix_free(&m);
    } else {
        check(err[0] != 0 && m.n == 0);
    }
    return 0;
}
