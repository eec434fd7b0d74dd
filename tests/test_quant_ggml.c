/* K-quants and i-quants against values from ggml's own reference implementation.
 *
 * tests/data/ggml-quants.bin was written once by a throwaway program compiled against ggml
 * (ggml-org/ggml d99724f2, src/ggml-quants.c) and holds, per type, little-endian:
 *   "FBQV" once, then per type: u32 ggml type, u32 n_blocks, u32 has_input, u32 n_sweep,
 *   u64 sweep_hash, [f32 input[n_blocks * block_elems] if has_input],
 *   block bytes [n_blocks], f32 dequantized[n_blocks * block_elems]
 * The explicit blocks come from ggml's quantize_row_*_ref on the input (K-quants, IQ4_*) or
 * are random bytes (grid i-quants, whose quantizers need an importance matrix). The sweep is
 * n_sweep random blocks drawn here and there by the same splitmix64 stream (seed 0xf1a5b0c5 +
 * type), enough to touch every grid entry; sweep_hash is FNV-1a 64 of ggml's output bits. */
#include <math.h>
#include <stddef.h>
#include <stdlib.h>

#include "engine/model/quant.h"
#include "common/rng.h"
#include "tests/harness.h"

static const enum gguf_type ggml_types[] = {
    GGUF_TYPE_Q2_K, GGUF_TYPE_Q3_K, GGUF_TYPE_Q4_K, GGUF_TYPE_Q5_K, GGUF_TYPE_Q6_K,
    GGUF_TYPE_IQ2_XXS, GGUF_TYPE_IQ2_XS, GGUF_TYPE_IQ2_S, GGUF_TYPE_IQ3_XXS, GGUF_TYPE_IQ1_S,
    GGUF_TYPE_IQ1_M, GGUF_TYPE_IQ4_NL, GGUF_TYPE_IQ4_XS,
};
#define N_GGML_TYPES (sizeof ggml_types / sizeof ggml_types[0])

struct qvec {
    enum gguf_type type;
    uint32_t n_blocks, n_sweep;
    uint64_t sweep_hash;
    const float *input;     /* [n_blocks * block_elems] or NULL */
    const uint8_t *blocks;  /* [n_blocks * block_bytes] */
    const float *expected;  /* [n_blocks * block_elems] */
};

struct qvec_file {
    uint8_t *bytes;
    struct qvec v[N_GGML_TYPES];
    int n;
};

/* The whole file into *bytes (malloc'd, the caller frees it); its size, or -1. */
static long read_whole(uint8_t **bytes, const char *path)
{
    *bytes = NULL;
    FILE *fp = fopen(path, "rb");
    if (!fp) return -1;
    fseek(fp, 0, SEEK_END);
    long size = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    *bytes = size > 0 ? malloc((size_t)size) : NULL;
    if (!*bytes || fread(*bytes, 1, (size_t)size, fp) != (size_t)size) size = -1;
    fclose(fp);
    return size;
}

static int load_vectors(struct qvec_file *f)
{
    memset(f, 0, sizeof *f);
    long size = read_whole(&f->bytes, "tests/data/ggml-quants.bin");
    if (size < 4 || memcmp(f->bytes, "FBQV", 4)) return -1;
    size_t at = 4;
    while (at < (size_t)size && f->n < (int)N_GGML_TYPES) {
        struct qvec *q = &f->v[f->n];
        uint32_t hdr[4];
        if (at + 24 > (size_t)size) return -1;
        memcpy(hdr, f->bytes + at, 16);
        memcpy(&q->sweep_hash, f->bytes + at + 16, 8);
        at += 24;
        q->type = (enum gguf_type)hdr[0];
        q->n_blocks = hdr[1];
        q->n_sweep = hdr[3];
        uint32_t be = gguf_type_block_elems(q->type), bb = gguf_type_block_bytes(q->type);
        if (!be || q->n_blocks > 1024) return -1;
        size_t n = (size_t)q->n_blocks * be;
        size_t need = (hdr[2] ? 4 * n : 0) + (size_t)q->n_blocks * bb + 4 * n;
        if (at + need > (size_t)size) return -1;
        q->input = hdr[2] ? (const float *)(f->bytes + at) : NULL;
        at += hdr[2] ? 4 * n : 0;
        q->blocks = f->bytes + at;
        at += (size_t)q->n_blocks * bb;
        q->expected = (const float *)(f->bytes + at);
        at += 4 * n;
        f->n++;
    }
    return at == (size_t)size ? 0 : -1;
}

/* Where each type keeps its f16 scale(s): random bytes there are made finite (exponent bit
 * 14 cleared when all five are set), the rule the generator applied. */
static void finite_scales(enum gguf_type t, uint8_t *b)
{
    size_t off[2];
    int n = 1;
    switch (t) {
    case GGUF_TYPE_Q2_K: off[0] = offsetof(struct block_q2_k, d); off[1] = offsetof(struct block_q2_k, dmin); n = 2; break;
    case GGUF_TYPE_Q3_K: off[0] = offsetof(struct block_q3_k, d); break;
    case GGUF_TYPE_Q4_K: off[0] = offsetof(struct block_q4_k, d); off[1] = offsetof(struct block_q4_k, dmin); n = 2; break;
    case GGUF_TYPE_Q5_K: off[0] = offsetof(struct block_q5_k, d); off[1] = offsetof(struct block_q5_k, dmin); n = 2; break;
    case GGUF_TYPE_Q6_K: off[0] = offsetof(struct block_q6_k, d); break;
    case GGUF_TYPE_IQ1_M: off[0] = offsetof(struct block_iq1_m, scales) + 6; break; /* top nibble: exponent */
    default: off[0] = 0; break; /* every other type starts with d */
    }
    for (int k = 0; k < n; k++)
        if ((b[off[k] + 1] & 0x7c) == 0x7c) b[off[k] + 1] &= 0xbf;
}

static uint64_t fnv1a(const void *p, size_t n, uint64_t h)
{
    const uint8_t *c = p;
    for (size_t i = 0; i < n; i++) h = (h ^ c[i]) * 0x100000001b3ull;
    return h;
}

static uint64_t sweep_hash(enum gguf_type t, uint32_t n_sweep)
{
    uint32_t be = gguf_type_block_elems(t), bb = gguf_type_block_bytes(t);
    uint8_t *blocks = malloc((size_t)n_sweep * bb);
    float *out = malloc((size_t)n_sweep * be * 4);
    uint64_t seed = 0xf1a5b0c5u + (uint64_t)t, h = 0;
    if (!blocks || !out) goto done;
    for (uint32_t i = 0; i < n_sweep; i++) {
        uint8_t *b = blocks + (size_t)i * bb;
        for (uint32_t k = 0; k < bb; k += 8) {
            uint64_t r = rng_splitmix64(&seed);
            for (uint32_t j = 0; j < 8 && k + j < bb; j++) b[k + j] = (uint8_t)(r >> 8 * j);
        }
        finite_scales(t, b);
    }
    if (dequant_row(t, blocks, out, (uint64_t)n_sweep * be) == 0)
        h = fnv1a(out, (size_t)n_sweep * be * 4, 0xcbf29ce484222325ull);
done:
    free(blocks);
    free(out);
    return h;
}

TEST(ggml_vectors_cover_every_k_and_i_quant)
{
    struct qvec_file f;
    REQUIRE(load_vectors(&f) == 0);
    CHECK_EQ_INT(f.n, N_GGML_TYPES);
    for (int i = 0; i < f.n && i < (int)N_GGML_TYPES; i++) CHECK_EQ_INT(f.v[i].type, ggml_types[i]);
    free(f.bytes);
}

TEST(k_and_i_quants_dequantize_bit_exact_with_ggml)
{
    struct qvec_file f;
    REQUIRE(load_vectors(&f) == 0);
    for (int i = 0; i < f.n; i++) {
        const struct qvec *q = &f.v[i];
        size_t n = (size_t)q->n_blocks * gguf_type_block_elems(q->type);
        float *out = malloc(n * 4);
        REQUIRE(out);
        CHECK(dequant_row(q->type, q->blocks, out, n) == 0);
        for (size_t j = 0; j < n; j++) {
            uint32_t a, b;
            memcpy(&a, &out[j], 4);
            memcpy(&b, &q->expected[j], 4);
            if (a != b) {
                test_fail_at(__FILE__, __LINE__, "%s element %zu: %.9g, ggml %.9g", gguf_type_name(q->type), j,
                             (double)out[j], (double)q->expected[j]);
                break;
            }
        }
        free(out);
    }
    free(f.bytes);
}

TEST(k_and_i_quant_grids_and_fields_match_ggml_on_random_blocks)
{
    struct qvec_file f;
    REQUIRE(load_vectors(&f) == 0);
    for (int i = 0; i < f.n; i++) {
        uint64_t h = sweep_hash(f.v[i].type, f.v[i].n_sweep);
        if (h != f.v[i].sweep_hash)
            test_fail_at(__FILE__, __LINE__, "%s: %u random blocks hash %016llx, ggml %016llx", gguf_type_name(f.v[i].type),
                         f.v[i].n_sweep, (unsigned long long)h, (unsigned long long)f.v[i].sweep_hash);
    }
    free(f.bytes);
}

TEST(quant_vectors_catch_one_flipped_bit)
{
    /* the comparison can fail: one flipped bit in a stored Q4_K block changes its output */
    struct qvec_file f;
    REQUIRE(load_vectors(&f) == 0);
    const struct qvec *q = &f.v[2];
    REQUIRE(q->type == GGUF_TYPE_Q4_K);
    uint8_t blk[144];
    memcpy(blk, q->blocks, sizeof blk);
    blk[16 + 5] ^= 0x10; /* a high nibble of qs */
    float out[QK_K];
    dequant_row(GGUF_TYPE_Q4_K, blk, out, QK_K);
    CHECK(memcmp(out, q->expected, sizeof out) != 0);
    free(f.bytes);
}

/* tests/data/ggml-quantize.bin, written once by a throwaway program against the same ggml
 * (d99724f2): "FBQQ", u32 n, f32 input[n], f32 weights[n] (imatrix-like: positive, some zero),
 * of which quantize_* reads the first 512 for every row, then per case u32 ggml type, u32
 * mode, u32 n_bytes, bytes. mode 0: quantize_row_*_ref(input); 1: quantize_*(input as rows of
 * 512, weights), what llama.cpp's quantize writes with an importance matrix (the K-quants'
 * cases rewritten by a second throwaway program against d99724f2 when their weighted fits
 * were written: the first file's were never checked and matched no ggml call); 2: the same
 * with no weights. The input's ten super-blocks are gaussian,
 * small, uniform, with outliers, all zero, two constants, all negative, below the zero
 * threshold (1e-16), alternating zero sub-blocks, and all positive. */
struct qcase {
    enum gguf_type type;
    uint32_t mode, n_bytes;
    const uint8_t *bytes;
};

struct qcase_file {
    uint8_t *raw;
    uint32_t n;
    const float *input, *weights;
    struct qcase c[32];
    int n_cases;
};

static int load_quantize_vectors(struct qcase_file *f)
{
    memset(f, 0, sizeof *f);
    long size = read_whole(&f->raw, "tests/data/ggml-quantize.bin");
    if (size < 8 || memcmp(f->raw, "FBQQ", 4)) return -1;
    memcpy(&f->n, f->raw + 4, 4);
    size_t at = 8 + (size_t)f->n * 8;
    if (f->n % QK_K || at > (size_t)size) return -1;
    f->input = (const float *)(f->raw + 8);
    f->weights = f->input + f->n;
    while (at < (size_t)size && f->n_cases < 32) {
        struct qcase *c = &f->c[f->n_cases++];
        uint32_t h[3];
        if (at + 12 > (size_t)size) return -1;
        memcpy(h, f->raw + at, 12);
        at += 12;
        c->type = (enum gguf_type)h[0];
        c->mode = h[1];
        c->n_bytes = h[2];
        uint64_t want = 0;
        if (gguf_type_nbytes(c->type, f->n, &want) || want != c->n_bytes || at + c->n_bytes > (size_t)size) return -1;
        c->bytes = f->raw + at;
        at += c->n_bytes;
    }
    return at == (size_t)size ? 0 : -1;
}

/* The first differing byte of a case, or -1. */
static long first_difference(const uint8_t *a, const uint8_t *b, uint32_t n)
{
    for (uint32_t k = 0; k < n; k++)
        if (a[k] != b[k]) return (long)k;
    return -1;
}

TEST(quantizers_write_ggml_s_bytes_with_and_without_an_imatrix)
{
    struct qcase_file f;
    REQUIRE(load_quantize_vectors(&f) == 0);
    int checked = 0, by_type[64] = { 0 };
    for (int i = 0; i < f.n_cases; i++) {
        const struct qcase *c = &f.c[i];
        uint8_t *out = malloc(c->n_bytes);
        REQUIRE(out);
        memset(out, 0xee, c->n_bytes);
        int rc = 0;
        if (c->mode == 0 && c->type == GGUF_TYPE_IQ4_NL) quantize_row_iq4_nl(f.input, (void *)out, f.n, NULL, -1);
        else if (c->mode == 0 || c->mode == 2) rc = quant_quantize_row(c->type, f.input, out, f.n, NULL);
        else {
            /* rows of 512, as the vectors were written; an importance matrix has one weight per
             * column, the same for every row (ggml reads weights[0..511] for each) */
            const uint32_t row_bytes = c->n_bytes / (f.n / 512);
            for (uint32_t r = 0; r < f.n / 512 && !rc; r++)
                rc = quant_quantize_row(c->type, f.input + 512 * r, out + row_bytes * r, 512, f.weights);
        }
        CHECK_EQ_INT(rc, 0);
        long k = first_difference(out, c->bytes, c->n_bytes);
        if (k >= 0) {
            const uint32_t bb = gguf_type_block_bytes(c->type);
            test_fail_at(__FILE__, __LINE__, "%s mode %u: block %ld byte %ld: %u, ggml %u", gguf_type_name(c->type), c->mode,
                         k / bb, k % bb, out[k], c->bytes[k]);
        }
        free(out);
        checked++;
        by_type[c->type & 63]++;
    }
    /* every K-quant and IQ4 type in all three modes */
    CHECK_EQ_INT(checked, 7 * 3);
    CHECK_EQ_INT(by_type[GGUF_TYPE_IQ4_XS], 3);
    CHECK_EQ_INT(by_type[GGUF_TYPE_Q2_K], 3);
    free(f.raw);
}

TEST(quantizers_round_trip_within_each_type_s_error_bound)
{
    /* quantize -> dequantize on the gaussian block: rms error relative to rms(x) under a bound
     * per type, about 1.3-1.9x the error measured when it was written (Q2_K 0.276, Q3_K 0.143,
     * Q4_K 0.069, Q5_K 0.036, Q6_K 0.019, IQ4_NL 0.078, IQ4_XS 0.079, Q8_0 0.005): a fit that
     * loses a bit of precision crosses it */
    struct qcase_file f;
    REQUIRE(load_quantize_vectors(&f) == 0);
    static const struct { enum gguf_type t; double bound; } types[] = {
        { GGUF_TYPE_Q2_K, 0.40 }, { GGUF_TYPE_Q3_K, 0.20 }, { GGUF_TYPE_Q4_K, 0.10 }, { GGUF_TYPE_Q5_K, 0.05 },
        { GGUF_TYPE_Q6_K, 0.025 }, { GGUF_TYPE_IQ4_NL, 0.10 }, { GGUF_TYPE_IQ4_XS, 0.10 }, { GGUF_TYPE_Q8_0, 0.01 },
    };
    uint8_t blocks[512];
    float back[QK_K];
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        REQUIRE(quant_quantize_row(types[i].t, f.input, blocks, QK_K, NULL) == 0);
        REQUIRE(dequant_row(types[i].t, blocks, back, QK_K) == 0);
        double e2 = 0, x2 = 0;
        for (int j = 0; j < QK_K; j++) {
            e2 += (double)(back[j] - f.input[j]) * (back[j] - f.input[j]);
            x2 += (double)f.input[j] * f.input[j];
        }
        double rel = sqrt(e2 / x2);
        if (!(rel < types[i].bound))
            test_fail_at(__FILE__, __LINE__, "%s: relative rms error %.4f, bound %.3f", gguf_type_name(types[i].t), rel,
                         types[i].bound);
    }
    /* an all-zero block comes back as zeros */
    float zeros[QK_K] = { 0 };
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        REQUIRE(quant_quantize_row(types[i].t, zeros, blocks, QK_K, NULL) == 0);
        REQUIRE(dequant_row(types[i].t, blocks, back, QK_K) == 0);
        for (int j = 0; j < QK_K; j++)
            if (back[j] != 0) {
                test_fail_at(__FILE__, __LINE__, "%s: zero block element %d came back %g", gguf_type_name(types[i].t), j,
                             (double)back[j]);
                break;
            }
    }
    /* a row shorter than a super-block: IQ4_NL's 32 and 128 (the fixture's n_embd) come back
     * within its bound, not as untouched memory (dequant_row_k once claimed every type when
     * the row had no whole super-block) */
    for (uint64_t n = 32; n <= 128; n += 96) {
        for (uint64_t j = 0; j < n; j++) back[j] = 1e30f;
        REQUIRE(quant_quantize_row(GGUF_TYPE_IQ4_NL, f.input, blocks, n, NULL) == 0);
        REQUIRE(dequant_row(GGUF_TYPE_IQ4_NL, blocks, back, n) == 0);
        double e2 = 0, x2 = 0;
        for (uint64_t j = 0; j < n; j++) {
            e2 += (double)(back[j] - f.input[j]) * (back[j] - f.input[j]);
            x2 += (double)f.input[j] * f.input[j];
        }
        CHECK(sqrt(e2 / x2) < 0.15);
    }
    /* the types without a quantizer are refused, not written: I32 (a type of the format, not
     * of a matrix) and ggml's Q4_0 (2), which flashbox does not know */
    memset(blocks, 0x5a, QK_K);
    CHECK(quant_quantize_row(GGUF_TYPE_I32, f.input, blocks, QK_K, f.weights) == -1);
    CHECK(quant_quantize_row((enum gguf_type)2, f.input, blocks, QK_K, NULL) == -1);
    for (int j = 0; j < QK_K; j++)
        if (blocks[j] != 0x5a) {
            test_fail_at(__FILE__, __LINE__, "a refused type wrote byte %d", j);
            break;
        }
    CHECK(quant_quantize_row(GGUF_TYPE_Q4_K, f.input, blocks, 100, NULL) == -1);
    free(f.raw);
}

TEST(q2_k_and_q4_k_quantizers_write_ggml_s_bytes)
{
    struct qvec_file f;
    REQUIRE(load_vectors(&f) == 0);
    int checked = 0;
    for (int i = 0; i < f.n; i++) {
        const struct qvec *q = &f.v[i];
        if (q->type != GGUF_TYPE_Q2_K && q->type != GGUF_TYPE_Q4_K) continue;
        REQUIRE(q->input);
        const uint64_t n = (uint64_t)q->n_blocks * QK_K;
        const uint32_t bb = gguf_type_block_bytes(q->type);
        uint8_t *out = calloc(q->n_blocks, bb);
        REQUIRE(out);
        if (q->type == GGUF_TYPE_Q2_K) quantize_row_q2_k(q->input, (struct block_q2_k *)out, n, NULL);
        else quantize_row_q4_k(q->input, (struct block_q4_k *)out, n, NULL);
        for (uint32_t k = 0; k < q->n_blocks * bb; k++)
            if (out[k] != q->blocks[k]) {
                test_fail_at(__FILE__, __LINE__, "%s block %u byte %u: %u, ggml %u", gguf_type_name(q->type), k / bb, k % bb, out[k],
                             q->blocks[k]);
                break;
            }
        free(out);
        checked++;
    }
    CHECK_EQ_INT(checked, 2);
    free(f.bytes);
}
