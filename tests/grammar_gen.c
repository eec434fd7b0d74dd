/* The shared generation setup of the grammar tests (see grammar_gen.h). */
#include "tests/grammar_gen.h"

#include "tests/harness.h"
#include "tests/serve_client.h"

#include <stdlib.h>
#include <string.h>

int grammar_gen_open(struct grammar_gen *g, uint32_t n_ctx)
{
    char err[256];
    memset(g, 0, sizeof *g);
    const char *model = serve_test_model();
    if (!model) return -1;
    struct engine_options eo;
    engine_options_default(&eo);
    eo.model_path = model;
    if (engine_open(&g->e, &eo, err, sizeof err) || session_create(g->e, n_ctx, &g->sess, err, sizeof err)) {
        test_fail_at(__FILE__, __LINE__, "engine: %s", err);
        return -1;
    }
    g->tok = engine_tokenizer(g->e);
    g->n_vocab = tok_n_vocab(g->tok);
    if (jg_vocab_create(&g->vocab, g->tok, err, sizeof err)) {
        test_fail_at(__FILE__, __LINE__, "vocabulary: %s", err);
        return -1;
    }
    g->allow = malloc(jg_mask_words(g->vocab) * sizeof *g->allow);
    g->logits = malloc(g->n_vocab * sizeof *g->logits);
    if (!g->allow || !g->logits) {
        test_fail_at(__FILE__, __LINE__, "out of memory");
        return -1;
    }
    return 0;
}

void grammar_gen_close(struct grammar_gen *g)
{
    free(g->allow);
    free(g->logits);
    jg_vocab_destroy(g->vocab);
    if (g->sess) session_destroy(g->sess);
    if (g->e) engine_close(g->e);
    memset(g, 0, sizeof *g);
}
