/* flashbox convert: number formats against the spec's formulas, the whole conversion of a
 * generated official-format checkpoint against an independent F32 reference of its
 * dequantized weights, the tokenizer and metadata, and malformed checkpoints. */
#include "tests/harness.h"
#include "tests/tiny_ckpt.h"

#include "engine/model/gguf.h"
#include "engine/model/model.h"
#include "engine/model/quant.h"
#include "tools/ckpt_formats.h"
#include "tools/convert.h"
#include "tools/safetensors.h"

#include <jansson.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static bool exists(const char *path) { return access(path, F_OK) == 0; }

static const char *tmp_path(char *buf, size_t n, const char *name)
{
    snprintf(buf, n, "%s/%s", test_tmpdir(), name);
    return buf;
}

/* ---- number formats ---- */

TEST(fp8_e4m3_decode_matches_spec_formula_on_all_256_codes)
{
    for (int code = 0; code < 256; code++) {
        int s = code >> 7, e = (code >> 3) & 15, m = code & 7;
        float got = ckpt_fp8_e4m3_to_f32((uint8_t)code);
        if (e == 15 && m == 7) {
            CHECK(isnan(got));
            continue;
        }
        double mag = e == 0 ? pow(2.0, -6) * m / 8.0 : pow(2.0, e - 7) * (1.0 + m / 8.0);
        double want = s ? -mag : mag;
        if (got != (float)want || (signbit(got) != 0) != (s != 0))
            test_fail_at(__FILE__, __LINE__, "code 0x%02x: %.9g, expected %.9g", code, (double)got, want);
    }
    CHECK(ckpt_fp8_e4m3_to_f32(0x7e) == 448.0f);
    CHECK(ckpt_fp8_e4m3_to_f32(0x01) == 0.001953125f); /* smallest subnormal 2^-9 */
}

TEST(e8m0_and_fp4_decode_match_spec)
{
    for (int e = 0; e < 255; e++) CHECK(ckpt_e8m0_to_f32((uint8_t)e) == (float)pow(2.0, e - 127));
    CHECK(isnan(ckpt_e8m0_to_f32(255)));
    static const float table[16] = { 0, 0.5f, 1, 1.5f, 2, 3, 4, 6, -0.0f, -0.5f, -1, -1.5f, -2, -3, -4, -6 };
    for (int c = 0; c < 16; c++) CHECK(ckpt_fp4_e2m1_to_f32((uint8_t)c) == table[c]);
}

TEST(fp4_repack_to_mxfp4_is_exact)
{
    enum { ROWS = 7, COLS = 96 };
    uint8_t packed[ROWS * COLS / 2], scales[ROWS * COLS / 32];
    uint64_t rng = 12345;
    for (size_t i = 0; i < sizeof packed; i++) packed[i] = (uint8_t)((rng = rng * 6364136223846793005ull + 1) >> 56);
    for (size_t i = 0; i < sizeof scales; i++) scales[i] = (uint8_t)((rng = rng * 6364136223846793005ull + 1) >> 56) % 255;
    scales[0] = 0, scales[1] = 1, scales[2] = 254, scales[3] = 127; /* the range ends */
    struct block_mxfp4 blocks[ROWS * COLS / 32];
    uint64_t bad;
    REQUIRE(ckpt_fp4_repack_mxfp4(packed, scales, ROWS, COLS, blocks, &bad) == 0);
    static const double e2m1[8] = { 0, 0.5, 1, 1.5, 2, 3, 4, 6 };
    int mismatches = 0;
    for (int r = 0; r < ROWS; r++) {
        float row[COLS];
        REQUIRE(dequant_row(GGUF_TYPE_MXFP4, &blocks[r * COLS / 32], row, COLS) == 0);
        for (int c = 0; c < COLS; c++) {
            /* The checkpoint: column 2j in the low nibble of byte j, 2j+1 in the high one. */
            uint8_t byte = packed[r * COLS / 2 + c / 2], nib = c % 2 ? byte >> 4 : byte & 15;
            double v = (nib & 8 ? -1 : 1) * e2m1[nib & 7] * pow(2.0, scales[r * COLS / 32 + c / 32] - 127);
            /* Bit for bit except the sign of zero: the checkpoint's code 8 is -0, ggml's
             * kvalues_mxfp4[8] is +0; == treats them alike and nothing else. */
            if (row[c] != (float)v && mismatches++ < 5)
                test_fail_at(__FILE__, __LINE__, "row %d col %d: mxfp4 %.9g, checkpoint %.9g", r, c, (double)row[c], v);
        }
    }
    scales[5] = 255;
    CHECK(ckpt_fp4_repack_mxfp4(packed, scales, ROWS, COLS, blocks, &bad) == -1 && bad == 5);
}

TEST(fp8_dequant_uses_the_scale_of_each_128_block)
{
    enum { ROWS = 130, COLS = 200 }; /* partial blocks on both edges */
    static uint8_t q[ROWS * COLS];
    uint8_t grid[2 * 2] = { 120, 121, 122, 123 };
    for (int i = 0; i < ROWS * COLS; i++) q[i] = (uint8_t)(i % 0x7e);
    static float out[ROWS * COLS];
    uint64_t bad;
    REQUIRE(ckpt_fp8_dequant_rows(q + 100 * COLS, grid, 100, ROWS - 100, COLS, out, &bad) == 0);
    for (int r = 100; r < ROWS; r++)
        for (int c = 0; c < COLS; c += 37) {
            float want = ckpt_fp8_e4m3_to_f32(q[r * COLS + c]) * ldexpf(1.0f, grid[(r / 128) * 2 + c / 128] - 127);
            CHECK(out[(r - 100) * COLS + c] == want);
        }
    q[100 * COLS + 3] = 0x7f;
    CHECK(ckpt_fp8_dequant_rows(q + 100 * COLS, grid, 100, 1, COLS, out, &bad) == -1 && bad == 3);
}

/* ---- safetensors headers ---- */

static int parse_image(const char *json, uint64_t data_bytes, char *err, size_t len)
{
    uint64_t hl = strlen(json), size = 8 + hl + data_bytes;
    uint8_t *img = calloc(1, size);
    for (int i = 0; i < 8; i++) img[i] = (uint8_t)(hl >> (8 * i));
    memcpy(img + 8, json, hl);
    struct st_file *f = NULL;
    int rc = st_parse(&f, img, size, "img", err, len);
    st_close(f);
    free(img);
    return rc;
}

TEST(safetensors_header_accepts_valid_and_rejects_each_malformation)
{
    char err[512];
    CHECK(parse_image("{\"__metadata__\":{\"format\":\"pt\"},\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"
                      "\"b\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[16,22]}}", 22, err, sizeof err) == 0);
    static const struct {
        const char *json;
        const char *needle;
    } bad[] = {
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,12]}}", "expected 16" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[16,32]}}", "outside" },
        { "{\"a\":{\"dtype\":\"Q4\",\"shape\":[4],\"data_offsets\":[0,16]}}", "unknown dtype" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", "overlap" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", "duplicate" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[-4],\"data_offsets\":[0,16]}}", "shape[0]" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,16]}}", "overflow" },
        { "{\"a\":[1,2]}", "not an object" },
        { "[1]", "not a JSON object" },
        { "{\"a\":", "JSON" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = 0;
        int rc = parse_image(bad[i].json, 16, err, sizeof err);
        if (rc == 0 || !strstr(err, bad[i].needle))
            test_fail_at(__FILE__, __LINE__, "case %zu: rc %d, message \"%s\", expected \"%s\"", i, rc, err, bad[i].needle);
    }
    /* A header length past the end of the file. */
    uint8_t img[16] = { 0xff, 0xff, 0, 0, 0, 0, 0, 0, '{', '}' };
    struct st_file *f = NULL;
    CHECK(st_parse(&f, img, sizeof img, "short", err, sizeof err) == -1 && strstr(err, "runs past the file"));
    CHECK(st_parse(&f, img, 5, "tiny", err, sizeof err) == -1 && strstr(err, "too short"));
}

/* ---- whole conversions ---- */

static int convert(const char *ckpt, const char *out, enum convert_dense dense, char *err, size_t len)
{
    struct convert_opts o = { .hf_dir = ckpt, .out_path = out, .dense = dense, .quiet = true };
    struct convert_stats st;
    return convert_run(&o, &st, err, len);
}

/* Every tensor of the reference is in the converted file with the same shape and, once
 * dequantized, the same values: exactly, or within half a Q8_0 step when q8_0. */
static void compare_to_reference(const char *ref_path, const char *out_path, enum convert_dense dense, bool fp8_experts)
{
    char err[512];
    struct gguf_file *ref, *out;
    REQUIRE(gguf_open(&ref, ref_path, err, sizeof err) == 0);
    if (gguf_open(&out, out_path, err, sizeof err)) {
        test_fail_at(__FILE__, __LINE__, "%s", err);
        gguf_close(ref);
        return;
    }
    CHECK_EQ_INT(out->n_tensors, ref->n_tensors);
    int reported = 0;
    for (uint64_t i = 0; i < ref->n_tensors && reported < 8; i++) {
        const struct gguf_tensor *rt = &ref->tensors[i], *ot = gguf_find_tensor(out, rt->name);
        if (!ot || memcmp(ot->ne, rt->ne, sizeof rt->ne)) {
            test_fail_at(__FILE__, __LINE__, "%s: missing or another shape in the converted file", rt->name);
            reported++;
            continue;
        }
        /* What each kind must become. */
        bool expert = strstr(rt->name, "_exps") != NULL;
        bool is_bf16_src = strstr(rt->name, "compressor_kv") || strstr(rt->name, "compressor_gate") ||
                           strstr(rt->name, "indexer.proj") || strstr(rt->name, "ffn_gate_inp") ||
                           !strcmp(rt->name, "token_embd.weight") || !strcmp(rt->name, "output.weight");
        bool is_fp8 = rt->n_dims == 2 && !expert && !is_bf16_src && rt->type == GGUF_TYPE_F32 &&
                      !strstr(rt->name, "hc_") && !strstr(rt->name, "_ape");
        if (expert && fp8_experts) is_fp8 = true;
        enum gguf_type want = rt->type == GGUF_TYPE_I32 ? GGUF_TYPE_I32
                              : expert && !fp8_experts ? GGUF_TYPE_MXFP4
                              : is_bf16_src ? GGUF_TYPE_BF16
                              : is_fp8 ? (dense == CONVERT_DENSE_Q8_0 ? GGUF_TYPE_Q8_0 : dense == CONVERT_DENSE_BF16 ? GGUF_TYPE_BF16 : GGUF_TYPE_F16)
                              : GGUF_TYPE_F32;
        if (ot->type != want) {
            test_fail_at(__FILE__, __LINE__, "%s: type %s, expected %s", rt->name, gguf_type_name(ot->type), gguf_type_name(want));
            reported++;
        }
        float *a = malloc(rt->n_elements * sizeof *a), *b = malloc(rt->n_elements * sizeof *b);
        REQUIRE(a && b);
        REQUIRE(dequant_row(rt->type, rt->data, a, rt->n_elements) == 0);
        REQUIRE(dequant_row(ot->type, ot->data, b, ot->n_elements) == 0);
        for (uint64_t j = 0; j < rt->n_elements; j++) {
            double tol = 0;
            if (ot->type == GGUF_TYPE_Q8_0) {
                float amax = 0;
                for (uint64_t k = j / 32 * 32; k < j / 32 * 32 + 32; k++) amax = fmaxf(amax, fabsf(a[k]));
                tol = amax / 127.0 * 0.5 * 1.01;
            }
            if (!(fabs((double)a[j] - (double)b[j]) <= tol)) {
                test_fail_at(__FILE__, __LINE__, "%s[%llu]: converted %.9g, reference %.9g (tol %g)", rt->name,
                             (unsigned long long)j, (double)b[j], (double)a[j], tol);
                reported++;
                break;
            }
        }
        free(a);
        free(b);
    }
    gguf_close(ref);
    gguf_close(out);
}

static void convert_and_compare(enum convert_dense dense, enum tiny_variant variant)
{
    char ckpt[512], ref[512], out[512], tmp[520], err[1024];
    tmp_path(ckpt, sizeof ckpt, "ckpt");
    tmp_path(ref, sizeof ref, "ref-f32.gguf");
    tmp_path(out, sizeof out, "out.gguf");
    REQUIRE(tiny_ckpt_write(ckpt, ref, 3, 7, variant) == 0);
    if (convert(ckpt, out, dense, err, sizeof err)) {
        test_fail_at(__FILE__, __LINE__, "convert: %s", err);
        return;
    }
    snprintf(tmp, sizeof tmp, "%s.tmp", out);
    CHECK(!exists(tmp));
    compare_to_reference(ref, out, dense, variant == TINY_FP8_EXPERTS);
}

TEST(convert_bf16_equals_dequantized_reference_exactly) { convert_and_compare(CONVERT_DENSE_BF16, TINY_OFFICIAL); }
TEST(convert_f16_equals_dequantized_reference_exactly) { convert_and_compare(CONVERT_DENSE_F16, TINY_OFFICIAL); }
TEST(convert_q8_0_matches_dequantized_reference_within_half_a_step) { convert_and_compare(CONVERT_DENSE_Q8_0, TINY_OFFICIAL); }
/* V4-Flash-Base stores its experts in FP8: they follow --dense like the other FP8 weights. */
TEST(convert_fp8_experts_follow_the_dense_type) { convert_and_compare(CONVERT_DENSE_Q8_0, TINY_FP8_EXPERTS); }

TEST(convert_writes_metadata_and_tokenizer_that_model_open_reads)
{
    char ckpt[512], out[512], err[1024];
    tmp_path(ckpt, sizeof ckpt, "ckpt");
    tmp_path(out, sizeof out, "out.gguf");
    REQUIRE(tiny_ckpt_write(ckpt, NULL, 2, 3, TINY_OFFICIAL) == 0);
    REQUIRE(convert(ckpt, out, CONVERT_DENSE_Q8_0, err, sizeof err) == 0);
    struct model *m;
    REQUIRE(model_open(&m, out, err, sizeof err) == 0);
    const struct model_hparams *hp = &m->hp;
    CHECK_EQ_INT(hp->n_layer, TINY_LAYERS);
    CHECK_EQ_INT(hp->n_nextn, 1);
    CHECK_EQ_INT(hp->n_vocab, TINY_VOCAB);
    CHECK_EQ_INT(hp->ratio[2], 4);
    CHECK_EQ_INT(hp->ratio[3], 128);
    CHECK_EQ_INT(hp->n_hash_layer, 3);
    CHECK_EQ_INT(hp->window, 16);
    CHECK_NEAR(hp->expert_weights_scale, 1.5, 0);
    CHECK_NEAR(hp->compress_rope_base, 160000, 0);
    CHECK_NEAR(hp->yarn_factor, 16, 0);
    CHECK_NEAR(hp->swiglu_clamp_exp[4], 10, 0);
    CHECK_NEAR(hp->swiglu_clamp_shexp[4], 10, 0);
    const struct gguf_file *f = m->file;
    char s[64];
    CHECK(gguf_get_str(f, "tokenizer.ggml.pre", s, sizeof s, err, sizeof err) == 0 && !strcmp(s, "joyai-llm"));
    CHECK(gguf_get_str(f, "tokenizer.ggml.model", s, sizeof s, err, sizeof err) == 0 && !strcmp(s, "gpt2"));
    const struct gguf_kv *toks = gguf_find_kv(f, "tokenizer.ggml.tokens"), *types = gguf_find_kv(f, "tokenizer.ggml.token_type"),
                         *merges = gguf_find_kv(f, "tokenizer.ggml.merges");
    REQUIRE(toks && types && merges && toks->arr_strs && merges->arr_strs);
    REQUIRE(toks->arr_count == TINY_VOCAB && types->arr_count == TINY_VOCAB);
#define TOK_IS(id, text) (toks->arr_strs[id].len == strlen(text) && !memcmp(toks->arr_strs[id].ptr, text, strlen(text)))
    CHECK(TOK_IS(0, "<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"));
    CHECK(TOK_IS(3, "\xc4\x80"));  /* byte 0 is U+0100 in the byte-level map */
    CHECK(TOK_IS(3 + '!', "!"));
    CHECK(TOK_IS(3 + ' ', "\xc4\xa0")); /* space is U+0120 */
    CHECK(TOK_IS(259, "he"));
    CHECK(TOK_IS(262, "o!"));
    CHECK(TOK_IS(300, "<think>"));
    CHECK(TOK_IS(301, "[PAD301]"));
    int64_t t;
    CHECK(gguf_arr_get_i64(types, 0, &t) == 0 && t == 3);
    CHECK(gguf_arr_get_i64(types, 3, &t) == 0 && t == 1);
    CHECK(gguf_arr_get_i64(types, 300, &t) == 0 && t == 4);
    CHECK(gguf_arr_get_i64(types, 511, &t) == 0 && t == 5);
    REQUIRE(merges->arr_count == 4);
    CHECK(merges->arr_strs[0].len == 3 && !memcmp(merges->arr_strs[0].ptr, "h e", 3));
    CHECK(merges->arr_strs[1].len == 3 && !memcmp(merges->arr_strs[1].ptr, "l l", 3));
    CHECK(merges->arr_strs[2].len == 5 && !memcmp(merges->arr_strs[2].ptr, "he ll", 5));
    uint32_t u;
    CHECK(gguf_get_u32(f, "deepseek4.block_count", &u, err, sizeof err) == 0 && u == TINY_LAYERS + 1);
    CHECK(gguf_find_tensor(f, "blk.5.nextn.e_proj.weight") != NULL);
    CHECK(gguf_find_tensor(f, "blk.5.nextn.hc_head_fn.weight") != NULL);
    model_close(m);
}

TEST(convert_without_mtp_drops_the_nextn_block)
{
    char ckpt[512], out[512], err[1024];
    tmp_path(ckpt, sizeof ckpt, "ckpt");
    tmp_path(out, sizeof out, "out.gguf");
    REQUIRE(tiny_ckpt_write(ckpt, NULL, 1, 5, TINY_OFFICIAL) == 0);
    struct convert_opts o = { .hf_dir = ckpt, .out_path = out, .dense = CONVERT_DENSE_BF16, .no_mtp = true, .quiet = true };
    struct convert_stats st;
    REQUIRE(convert_run(&o, &st, err, sizeof err) == 0);
    struct gguf_file *f;
    REQUIRE(gguf_open(&f, out, err, sizeof err) == 0);
    uint32_t u;
    CHECK(gguf_get_u32(f, "deepseek4.block_count", &u, err, sizeof err) == 0 && u == TINY_LAYERS);
    CHECK(gguf_find_kv(f, "deepseek4.nextn_predict_layers") == NULL);
    CHECK(gguf_find_tensor(f, "blk.5.attn_q_a.weight") == NULL);
    CHECK(gguf_find_tensor(f, "blk.4.attn_q_a.weight") != NULL);
    gguf_close(f);
}

/* ---- malformed checkpoints: a clear error, and nothing under the output name ---- */

static void expect_failure(enum tiny_variant fault, void (*mangle)(const char *ckpt), const char *needle)
{
    char ckpt[512], out[512], tmp[520], err[1024] = "";
    tmp_path(ckpt, sizeof ckpt, "ckpt");
    tmp_path(out, sizeof out, "out.gguf");
    REQUIRE(tiny_ckpt_write(ckpt, NULL, 3, 11, fault) == 0);
    if (mangle) mangle(ckpt);
    /* An older file under the output name must survive a failed conversion. */
    FILE *old = fopen(out, "w");
    REQUIRE(old);
    fputs("previous model", old);
    fclose(old);
    int rc = convert(ckpt, out, CONVERT_DENSE_Q8_0, err, sizeof err);
    CHECK(rc != 0);
    if (!strstr(err, needle)) test_fail_at(__FILE__, __LINE__, "message \"%s\" lacks \"%s\"", err, needle);
    snprintf(tmp, sizeof tmp, "%s.tmp", out);
    CHECK(!exists(tmp));
    struct stat sb;
    CHECK(stat(out, &sb) == 0 && sb.st_size == (off_t)strlen("previous model"));
}

static void remove_shard_2(const char *ckpt)
{
    char p[600];
    snprintf(p, sizeof p, "%s/model-00002-of-00003.safetensors", ckpt);
    CHECK(unlink(p) == 0);
}

static void header_length_past_file(const char *ckpt)
{
    char p[600];
    snprintf(p, sizeof p, "%s/model-00003-of-00003.safetensors", ckpt);
    FILE *f = fopen(p, "r+b");
    REQUIRE(f);
    uint8_t big[8] = { 0, 0, 0, 0x40, 0, 0, 0, 0 }; /* 1 GiB */
    fwrite(big, 1, 8, f);
    fclose(f);
}

TEST(convert_rejects_missing_shard) { expect_failure(TINY_OFFICIAL, remove_shard_2, "model-00002-of-00003.safetensors"); }
TEST(convert_rejects_header_length_past_file) { expect_failure(TINY_OFFICIAL, header_length_past_file, "runs past the file"); }
TEST(convert_rejects_overlapping_tensors) { expect_failure(TINY_FAULT_OVERLAP, NULL, "overlap"); }
TEST(convert_rejects_dtype_mismatch) { expect_failure(TINY_FAULT_DTYPE, NULL, "layers.0.attn.attn_sink: dtype I64"); }
TEST(convert_rejects_shape_mismatch_with_config)
{
    expect_failure(TINY_FAULT_SHAPE, NULL, "layers.1.attn.q_norm.weight: shape [100], expected [128]");
}
TEST(convert_rejects_unknown_tensor_names) { expect_failure(TINY_FAULT_UNKNOWN_NAME, NULL, "unknown tensor layers.0.attn.bogus.weight"); }
/* Found only while streaming: the partial file must still disappear. */
TEST(convert_rejects_tid2eid_out_of_range_midway) { expect_failure(TINY_FAULT_TID2EID_RANGE, NULL, "is expert 8, expected 0..7"); }

static void drop_index_keep_one_shard(const char *ckpt)
{
    char a[600], b[600];
    snprintf(a, sizeof a, "%s/model.safetensors.index.json", ckpt);
    CHECK(unlink(a) == 0);
    snprintf(a, sizeof a, "%s/model-00001-of-00001.safetensors", ckpt);
    snprintf(b, sizeof b, "%s/model.safetensors", ckpt);
    CHECK(rename(a, b) == 0);
}

TEST(convert_reads_a_single_unindexed_shard_and_a_separate_tokenizer_dir)
{
    char ckpt[512], out[512], tokdir[512], a[600], b[600], err[1024];
    tmp_path(ckpt, sizeof ckpt, "ckpt");
    tmp_path(out, sizeof out, "out.gguf");
    tmp_path(tokdir, sizeof tokdir, "tok");
    REQUIRE(tiny_ckpt_write(ckpt, NULL, 1, 9, TINY_OFFICIAL) == 0);
    drop_index_keep_one_shard(ckpt);
    REQUIRE(mkdir(tokdir, 0755) == 0);
    snprintf(a, sizeof a, "%s/tokenizer.json", ckpt);
    snprintf(b, sizeof b, "%s/tokenizer.json", tokdir);
    REQUIRE(rename(a, b) == 0);
    struct convert_opts o = { .hf_dir = ckpt, .out_path = out, .dense = CONVERT_DENSE_BF16, .quiet = true };
    struct convert_stats st;
    CHECK(convert_run(&o, &st, err, sizeof err) != 0 && strstr(err, "tokenizer.json"));
    CHECK(!exists(out));
    o.tokenizer_dir = tokdir;
    if (convert_run(&o, &st, err, sizeof err)) test_fail_at(__FILE__, __LINE__, "%s", err);
    CHECK(exists(out));
    CHECK(st.n_tensors > 150 && st.bytes_read > 1000000 && st.bytes_written > 1000000);
}

static void index_lists_a_tensor_the_shard_lacks(const char *ckpt)
{
    char p[600];
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", ckpt);
    FILE *f = fopen(p, "r+b");
    REQUIRE(f);
    /* The index is JSON written with one-space indent: open it up after the first '{'. */
    static char buf[1 << 20];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = 0;
    char *wm = strstr(buf, "\"weight_map\": {");
    REQUIRE(wm);
    wm += strlen("\"weight_map\": {");
    char out[sizeof buf + 128];
    snprintf(out, sizeof out, "%.*s\"layers.9.ghost.weight\": \"model-00001-of-00003.safetensors\",%s", (int)(wm - buf), buf, wm);
    rewind(f);
    fputs(out, f);
    fclose(f);
}

TEST(convert_rejects_an_index_that_disagrees_with_the_shards)
{
    expect_failure(TINY_OFFICIAL, index_lists_a_tensor_the_shard_lacks, "layers.9.ghost.weight is listed for shard");
}

/* Rewrites one key of config.json (value as JSON text; NULL deletes the key). */
static void edit_config(const char *ckpt, const char *key, const char *json_value)
{
    char p[600];
    snprintf(p, sizeof p, "%s/config.json", ckpt);
    json_t *c = json_load_file(p, 0, NULL);
    REQUIRE(c);
    if (json_value) json_object_set_new(json_object_get(c, "quantization_config") && !strcmp(key, "weight_block_size")
                                            ? json_object_get(c, "quantization_config") : c,
                                        key, json_loads(json_value, JSON_DECODE_ANY, NULL));
    else json_object_del(c, key);
    REQUIRE(json_dump_file(c, p, 0) == 0);
    json_decref(c);
}

static void config_fp8_blocks_32(const char *ckpt) { edit_config(ckpt, "weight_block_size", "[32, 32]"); }
static void config_without_hidden_size(const char *ckpt) { edit_config(ckpt, "hidden_size", NULL); }
static void config_ratio_16(const char *ckpt) { edit_config(ckpt, "compress_ratios", "[0, 0, 4, 16, 4, 0]"); }
static void config_more_experts(const char *ckpt) { edit_config(ckpt, "n_routed_experts", "9"); }

TEST(convert_rejects_configs_it_cannot_honour)
{
    expect_failure(TINY_OFFICIAL, config_fp8_blocks_32, "weight_block_size must be [128, 128]");
    expect_failure(TINY_OFFICIAL, config_without_hidden_size, "key hidden_size missing");
    expect_failure(TINY_OFFICIAL, config_ratio_16, "compress_ratios[3] must be 0, 4 or 128");
    /* The checkpoint has 8 experts per layer where config.json now says 9. */
    expect_failure(TINY_OFFICIAL, config_more_experts, "layers.0.ffn.gate.weight: shape [8, 128], expected [9, 128]");
}

TEST(convert_cancelled_leaves_no_file)
{
    char ckpt[512], out[512], tmp[520], err[1024] = "";
    tmp_path(ckpt, sizeof ckpt, "ckpt");
    tmp_path(out, sizeof out, "out.gguf");
    REQUIRE(tiny_ckpt_write(ckpt, NULL, 2, 6, TINY_OFFICIAL) == 0);
    volatile sig_atomic_t cancel = 1;
    struct convert_opts o = { .hf_dir = ckpt, .out_path = out, .quiet = true, .cancel = &cancel };
    struct convert_stats st;
    CHECK(convert_run(&o, &st, err, sizeof err) != 0 && strstr(err, "interrupted"));
    snprintf(tmp, sizeof tmp, "%s.tmp", out);
    CHECK(!exists(out) && !exists(tmp));
}

/* ---- the command ---- */

static int run(const char *cmd)
{
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Converts with the command, then compares `flashbox logits` of the converted file with
 * those of the F32 reference; returns the largest difference relative to the largest
 * reference logit, or -1 when something failed. */
static double logits_vs_reference(const char *dense)
{
    char ckpt[512], ref[512], out[512], cmd[2048];
    tmp_path(ckpt, sizeof ckpt, "ckpt");
    tmp_path(ref, sizeof ref, "ref-f32.gguf");
    tmp_path(out, sizeof out, "out.gguf");
    if (tiny_ckpt_write(ckpt, ref, 3, 21, TINY_OFFICIAL)) return -1;
    snprintf(cmd, sizeof cmd, "'%s' convert --hf '%s' --out '%s' --dense %s --quiet >/dev/null", test_flashbox_bin(), ckpt, out, dense);
    if (run(cmd) != 0 || !exists(out)) return -1;
    char la[600], lb[600];
    snprintf(la, sizeof la, "%s/ref.logits", test_tmpdir());
    snprintf(lb, sizeof lb, "%s/out.logits", test_tmpdir());
    /* 20 tokens: past the window of 16 and through several CSA blocks. */
    const char *tokens = "0,5,17,300,42,7,99,256,3,1,2,8,13,21,34,55,89,144,233,377";
    snprintf(cmd, sizeof cmd, "'%s' logits -m '%s' --tokens %s --out '%s'", test_flashbox_bin(), ref, tokens, la);
    if (run(cmd) != 0) return -1;
    snprintf(cmd, sizeof cmd, "'%s' logits -m '%s' --tokens %s --out '%s'", test_flashbox_bin(), out, tokens, lb);
    if (run(cmd) != 0) return -1;
    FILE *fa = fopen(la, "rb"), *fb = fopen(lb, "rb");
    static float a[20 * TINY_VOCAB + 1], b[20 * TINY_VOCAB + 1];
    size_t na = fa ? fread(a, 4, 20 * TINY_VOCAB + 1, fa) : 0, nb = fb ? fread(b, 4, 20 * TINY_VOCAB + 1, fb) : 0;
    if (fa) fclose(fa);
    if (fb) fclose(fb);
    if (na != 20 * TINY_VOCAB || nb != na) return -1;
    double maxdiff = 0, maxabs = 0;
    for (size_t i = 0; i < na; i++) {
        if (!isfinite(a[i]) || !isfinite(b[i])) return -1;
        maxdiff = fmax(maxdiff, fabs((double)a[i] - b[i]));
        maxabs = fmax(maxabs, fabs((double)a[i]));
    }
    fprintf(stderr, "  --dense %s: max |logit difference| %.3g, max |logit| %.3g\n", dense, maxdiff, maxabs);
    return maxdiff / fmax(1.0, maxabs);
}

TEST(convert_command_rejects_bad_arguments)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "'%s' convert --hf /nonexistent --out x.gguf --dense q4 2>/dev/null", test_flashbox_bin());
    CHECK(run(cmd) == 2);
    snprintf(cmd, sizeof cmd, "'%s' convert --out x.gguf 2>/dev/null", test_flashbox_bin());
    CHECK(run(cmd) == 2);
    snprintf(cmd, sizeof cmd, "'%s' convert --hf /nonexistent --out '%s/x.gguf' 2>/dev/null", test_flashbox_bin(), test_tmpdir());
    CHECK(run(cmd) == 1);
}

/* Same weights stored as BF16 instead of F32 (exact): the engine's logits agree to float
 * rounding of the different kernels. */
TEST(convert_bf16_logits_equal_reference_logits)
{
    double rel = logits_vs_reference("bf16");
    CHECK(rel >= 0 && rel <= 1e-5);
}

/* Q8_0 requantization of the FP8 weights: close, not equal. */
TEST(convert_q8_0_logits_match_reference_logits_within_tolerance)
{
    double rel = logits_vs_reference("q8_0");
    CHECK(rel >= 0 && rel <= 2e-2);
}

/* Throughput figure, not a pass/fail on time: FLASHBOX_BENCH=1 make test TEST=convert_throughput.
 * 1024 routed experts per block make the experts ~95% of the bytes, as in the real model. */
TEST(convert_throughput_on_a_generated_checkpoint)
{
    if (!getenv("FLASHBOX_BENCH")) test_skip("set FLASHBOX_BENCH=1 to measure");
    char ckpt[512], out[512], err[1024];
    tmp_path(ckpt, sizeof ckpt, "ckpt");
    tmp_path(out, sizeof out, "out.gguf");
    REQUIRE(tiny_ckpt_write_experts(ckpt, NULL, 4, 1, TINY_OFFICIAL, 1024) == 0);
    static const struct {
        enum convert_dense dense;
        const char *name;
    } modes[] = { { CONVERT_DENSE_Q8_0, "q8_0" }, { CONVERT_DENSE_BF16, "bf16" } };
    for (size_t i = 0; i < 2; i++) {
        struct convert_opts o = { .hf_dir = ckpt, .out_path = out, .dense = modes[i].dense, .quiet = true };
        struct convert_stats st;
        if (convert_run(&o, &st, err, sizeof err)) {
            test_fail_at(__FILE__, __LINE__, "%s", err);
            return;
        }
        fprintf(stderr, "  --dense %s: %.1f MB read, %.1f MB written in %.3f s: %.0f MB/s read\n", modes[i].name,
                (double)st.bytes_read / 1e6, (double)st.bytes_written / 1e6, st.seconds, (double)st.bytes_read / 1e6 / st.seconds);
    }
}

/* The converted vocabulary through the engine's own tokenizer: "hello" merges h+e, l+l,
 * he+ll (ranks 0..2) into "hell" (261); 'o' and '!' are byte tokens 3 + 111 and 3 + 33; the
 * added token <think> (300) matches as a special token. */
TEST(converted_tokenizer_encodes_with_the_engine_tokenizer)
{
    char ckpt[512], out[512], cmd[2048], line[256];
    tmp_path(ckpt, sizeof ckpt, "ckpt");
    tmp_path(out, sizeof out, "out.gguf");
    REQUIRE(tiny_ckpt_write(ckpt, NULL, 2, 4, TINY_OFFICIAL) == 0);
    snprintf(cmd, sizeof cmd, "'%s' convert --hf '%s' --out '%s' --quiet >/dev/null", test_flashbox_bin(), ckpt, out);
    REQUIRE(run(cmd) == 0);
    static const struct {
        const char *text, *flags, *ids;
    } cases[] = { { "hello!", "", "261,114,36" }, { "<think>hello", "--special", "300,261,114" } };
    for (size_t i = 0; i < 2; i++) {
        snprintf(cmd, sizeof cmd, "printf '%%s' '%s' | '%s' tokenize %s -m '%s'", cases[i].text, test_flashbox_bin(),
                 cases[i].flags, out);
        FILE *p = popen(cmd, "r");
        REQUIRE(p);
        line[0] = 0;
        if (!fgets(line, sizeof line, p)) line[0] = 0;
        int st = pclose(p);
        line[strcspn(line, "\n")] = 0;
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
        CHECK_STR(line, cases[i].ids);
    }
}
