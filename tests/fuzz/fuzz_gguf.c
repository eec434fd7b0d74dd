/* libFuzzer target: the GGUF parser and, when it accepts, the deepseek4 binder and every
 * tensor's dequantization must not crash or read out of bounds. */
#include "engine/model/gguf.h"
#include "engine/model/model.h"
#include "engine/model/quant.h"

#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct gguf_file *f;
    char err[256];
    if (gguf_parse(&f, data, size, err, sizeof err)) return 0;
    float row[256];
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const struct gguf_tensor *t = &f->tensors[i];
        uint64_t n = t->ne[0] < 256 ? t->ne[0] : 256 / gguf_type_block_elems(t->type) * gguf_type_block_elems(t->type);
        if (n) dequant_row(t->type, t->data, row, n);
    }
    struct model_hparams hp;
    model_read_hparams(f, &hp, err, sizeof err);
    struct model *m;
    if (model_bind(&m, f, err, sizeof err) == 0) {
        m->file = NULL; /* the file stays ours */
        model_close(m);
    }
    gguf_close(f);
    return 0;
}
