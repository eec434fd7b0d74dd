/* libFuzzer target: the safetensors header parser. Whatever it accepts must describe
 * tensors that lie inside the image, do not overlap and match their dtype sizes; the
 * checkpoint decoders then run over the accepted FP8 / FP4 data. */
#include "tools/ckpt_formats.h"
#include "tools/safetensors.h"

#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct st_file *f;
    char err[256];
    if (st_parse(&f, data, size, "fuzz", err, sizeof err)) return 0;
    float out[64];
    for (size_t i = 0; i < f->n_tensors; i++) {
        const struct st_tensor *t = &f->tensors[i];
        if (t->offset > size || t->nbytes > size - t->offset) __builtin_trap();
        if (t->nbytes != t->n_elements * st_dtype_size(t->dtype)) __builtin_trap();
        const uint8_t *p = data + t->offset;
        uint64_t n = t->nbytes < 64 ? t->nbytes : 64, bad;
        if (t->dtype == ST_F8_E4M3 && n) {
            static const uint8_t grid[1] = { 127 };
            ckpt_fp8_dequant_rows(p, grid, 0, 1, n, out, &bad);
        }
        if (t->dtype == ST_I8 && n >= 16) {
            uint8_t scale = p[0] == 255 ? 0 : p[0];
            struct block_mxfp4 b;
            ckpt_fp4_repack_mxfp4(p, &scale, 1, 32, &b, &bad);
        }
    }
    st_close(f);
    return 0;
}
