/* The setup that both grammar test files generate under: the test model's engine with
 * one session, its vocabulary trie, and the buffers a masked sampling step needs. Each
 * file adds its own matcher (JSON or DSML) on top. */
#pragma once

#include "engine/engine.h"
#include "engine/text/json_grammar.h"

#include <stdint.h>

struct grammar_gen {
    struct engine *e;
    struct session *sess;
    const struct tokenizer *tok;
    struct jg_vocab *vocab;
    uint32_t *allow;  /* [jg_mask_words(vocab)] one bit per token: allowed at this step */
    float *logits;    /* [n_vocab] the session's logits for the next token */
    uint32_t n_vocab;
};

/* Opens the engine on serve_test_model() with a session of n_ctx positions. 0, or -1
 * after failing the test with the reason (all fields then safe to close). */
int grammar_gen_open(struct grammar_gen *g, uint32_t n_ctx);
void grammar_gen_close(struct grammar_gen *g);
