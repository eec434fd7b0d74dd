/* Test helper: copies a GGUF file through the writer, letting a callback drop or change
 * keys and tensors, to build malformed or variant models from a valid one. */
#ifndef FLASHBOX_TESTS_GGUF_EDIT_H
#define FLASHBOX_TESTS_GGUF_EDIT_H

#include "engine/model/gguf.h"

struct gguf_edit {
    /* Return 1 to drop the key; or add a replacement to w yourself and return 1. */
    int (*on_kv)(const struct gguf_kv *kv, struct gguf_writer *w, void *user);
    /* May change *type / ne / *n_dims / name (buffer of 128) / data; return 1 to drop. */
    int (*on_tensor)(char *name, enum gguf_type *type, uint32_t *n_dims, uint64_t *ne, const void **data, void *user);
    void *user;
};

int gguf_edit_copy(const char *src, const char *dst, const struct gguf_edit *edit);

/* Copies src with its float vectors narrowed the way published ds4 files store them:
 * hc_*_fn and *_compressor_ape rounded to F16, every other F32 vector (norms, sinks, biases,
 * hc base and scale) rounded to BF16. stored_narrow: written as F16 / BF16; else written as
 * F32 holding the rounded values, the file a narrow one must bind to bit for bit. Returns the
 * number of tensors narrowed, or -1. */
int gguf_edit_narrow_vectors(const char *src, const char *dst, bool stored_narrow);

#endif
