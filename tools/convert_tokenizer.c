/* tokenizer.json (HF byte-level BPE) -> tokenizer.ggml.* metadata (spec §5.1.1): the
 * vocabulary by id, padded to the model's n_vocab rows with unused "[PAD<id>]" entries,
 * token types (normal 1, control 3 for special added tokens, user-defined 4, unused 5),
 * merges as "left right" strings, model gpt2 with pre-tokenizer joyai-llm. */
#include "tools/convert_plan.h"
#include "common/errmsg.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { TOKEN_NORMAL = 1, TOKEN_CONTROL = 3, TOKEN_USER_DEFINED = 4, TOKEN_UNUSED = 5 };

/* Places token text at id; an id outside the vocabulary or given twice is an error. */
static int put_token(const char *path, const char **tokens, int32_t *types, uint32_t n_vocab, json_int_t id,
                     const char *text, int32_t type, bool may_replace, char *err, size_t len)
{
    if (id < 0 || id >= (json_int_t)n_vocab)
        return errf(err, len, "%s: token \"%s\" has id %lld, expected 0..%u (config.json vocab_size %u)", path, text,
                    (long long)id, n_vocab - 1, n_vocab);
    if (tokens[id] && !(may_replace && !strcmp(tokens[id], text)))
        return errf(err, len, "%s: id %lld used by both \"%s\" and \"%s\"", path, (long long)id, tokens[id], text);
    tokens[id] = text;
    types[id] = type;
    return 0;
}

int conv_tokenizer_add(const char *path, const struct conv_config *c, struct gguf_writer *w, char *err, size_t len)
{
    json_error_t jerr;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) return errf(err, len, "%s: %s (line %d)", path, jerr.text, jerr.line);
    const uint32_t n_vocab = c->n_vocab;
    const char **tokens = calloc(n_vocab, sizeof *tokens);
    int32_t *types = calloc(n_vocab, sizeof *types);
    char **pads = calloc(n_vocab, sizeof *pads);
    const char **merges = NULL;
    char **merge_buf = NULL;
    size_t n_merges = 0;
    int rc = -1;
    if (!tokens || !types || !pads) {
        errf(err, len, "out of memory");
        goto out;
    }
    json_t *model = json_object_get(root, "model");
    json_t *type = json_object_get(model, "type");
    if (!json_is_object(model) || (type && (!json_is_string(type) || strcmp(json_string_value(type), "BPE") != 0))) {
        errf(err, len, "%s: expected a \"model\" object of type BPE", path);
        goto out;
    }
    json_t *vocab = json_object_get(model, "vocab");
    if (!json_is_object(vocab)) {
        errf(err, len, "%s: model.vocab is not an object", path);
        goto out;
    }
    const char *text;
    json_t *v;
    json_object_foreach(vocab, text, v) {
        if (!json_is_integer(v)) {
            errf(err, len, "%s: model.vocab[\"%s\"] is not an integer id", path, text);
            goto out;
        }
        if (put_token(path, tokens, types, n_vocab, json_integer_value(v), text, TOKEN_NORMAL, false, err, len)) goto out;
    }
    json_t *added = json_object_get(root, "added_tokens");
    if (added && !json_is_array(added)) {
        errf(err, len, "%s: added_tokens is not an array", path);
        goto out;
    }
    size_t i;
    json_array_foreach(added, i, v) {
        json_t *id = json_object_get(v, "id"), *content = json_object_get(v, "content");
        if (!json_is_integer(id) || !json_is_string(content)) {
            errf(err, len, "%s: added_tokens[%zu] needs an integer id and a string content", path, i);
            goto out;
        }
        int32_t t = json_is_true(json_object_get(v, "special")) ? TOKEN_CONTROL : TOKEN_USER_DEFINED;
        /* An added token may repeat a vocabulary entry with the same text: it then only
         * changes the type. */
        if (put_token(path, tokens, types, n_vocab, json_integer_value(id), json_string_value(content), t, true, err, len))
            goto out;
    }
    for (uint32_t id = 0; id < n_vocab; id++) {
        if (tokens[id]) continue;
        pads[id] = malloc(32);
        if (!pads[id]) {
            errf(err, len, "out of memory");
            goto out;
        }
        snprintf(pads[id], 32, "[PAD%u]", id);
        tokens[id] = pads[id];
        types[id] = TOKEN_UNUSED;
    }
    json_t *jm = json_object_get(model, "merges");
    if (!json_is_array(jm)) {
        errf(err, len, "%s: model.merges is not an array", path);
        goto out;
    }
    n_merges = json_array_size(jm);
    merges = calloc(n_merges ? n_merges : 1, sizeof *merges);
    merge_buf = calloc(n_merges ? n_merges : 1, sizeof *merge_buf);
    if (!merges || !merge_buf) {
        errf(err, len, "out of memory");
        goto out;
    }
    json_array_foreach(jm, i, v) {
        /* Older files write "left right", newer ones ["left", "right"]. */
        if (json_is_string(v) && strchr(json_string_value(v), ' ')) {
            merges[i] = json_string_value(v);
        } else if (json_is_array(v) && json_array_size(v) == 2 && json_is_string(json_array_get(v, 0)) &&
                   json_is_string(json_array_get(v, 1))) {
            const char *a = json_string_value(json_array_get(v, 0)), *b = json_string_value(json_array_get(v, 1));
            if (strchr(a, ' ') || strchr(b, ' ')) {
                errf(err, len, "%s: merge %zu has a space inside a part", path, i);
                goto out;
            }
            size_t n = strlen(a) + strlen(b) + 2;
            if (!(merge_buf[i] = malloc(n))) {
                errf(err, len, "out of memory");
                goto out;
            }
            snprintf(merge_buf[i], n, "%s %s", a, b);
            merges[i] = merge_buf[i];
        } else {
            errf(err, len, "%s: merge %zu is neither \"left right\" nor [left, right]", path, i);
            goto out;
        }
    }
    if (c->bos >= n_vocab || c->eos >= n_vocab) {
        errf(err, len, "config.json: bos %u / eos %u outside the vocabulary of %u", c->bos, c->eos, n_vocab);
        goto out;
    }
    int bad = 0;
    bad |= gguf_writer_add_str(w, "tokenizer.ggml.model", "gpt2");
    bad |= gguf_writer_add_str(w, "tokenizer.ggml.pre", "joyai-llm");
    bad |= gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", tokens, n_vocab);
    bad |= gguf_writer_add_arr(w, "tokenizer.ggml.token_type", GGUF_VAL_INT32, types, n_vocab);
    bad |= gguf_writer_add_arr_str(w, "tokenizer.ggml.merges", merges, n_merges);
    bad |= gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", c->bos);
    bad |= gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", c->eos);
    bad |= gguf_writer_add_u32(w, "tokenizer.ggml.padding_token_id", c->eos); /* pad = EOS (tokenizer_config.json) */
    bad |= gguf_writer_add_bool(w, "tokenizer.ggml.add_bos_token", false);
    bad |= gguf_writer_add_bool(w, "tokenizer.ggml.add_eos_token", false);
    if (bad) {
        errf(err, len, "tokenizer metadata: out of memory or a repeated key");
        goto out;
    }
    rc = 0;
out:
    if (pads)
        for (uint32_t id = 0; id < n_vocab; id++) free(pads[id]);
    if (merge_buf)
        for (size_t k = 0; k < n_merges; k++) free(merge_buf[k]);
    free(pads);
    free(merge_buf);
    free(merges);
    free(tokens);
    free(types);
    json_decref(root);
    return rc;
}
