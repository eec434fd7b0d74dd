/* GGUF reader and writer: round trip, a fixture written by another writer, and a corpus of
 * malformed files each rejected with a clear message. */
#include "engine/model/gguf.h"
#include "engine/model/quant.h"
#include "tests/harness.h"

#include <stdlib.h>
#include <unistd.h>

/* Writes a small file with every metadata type and one tensor of each type. */
static int write_sample(const char *path, float *f32_data, uint64_t n_f32)
{
    struct gguf_writer *w = gguf_writer_create();
    if (!w) return -1;
    int m = 0;
    m |= gguf_writer_add_str(w, "general.architecture", "sample");
    m |= gguf_writer_add_u32(w, "k.u32", 4000000000u);
    m |= gguf_writer_add_i32(w, "k.i32", -7);
    m |= gguf_writer_add_f32(w, "k.f32", 0.25f);
    m |= gguf_writer_add_bool(w, "k.bool", true);
    const int32_t ints[3] = { 0, 4, 128 };
    m |= gguf_writer_add_arr(w, "k.arr_i32", GGUF_VAL_INT32, ints, 3);
    const char *strs[2] = { "left right", "ünïcode" };
    m |= gguf_writer_add_arr_str(w, "k.arr_str", strs, 2);
    static struct block_q8_0 q8[2];
    static struct block_mxfp4 fp4[2];
    static int32_t i32[4] = { 1, -2, 3, -4 };
    static uint16_t f16[32], bf16[32];
    for (int i = 0; i < 32; i++) {
        f16[i] = f32_to_fp16((float)i - 3.5f);
        bf16[i] = f32_to_bf16((float)i * 0.5f);
    }
    quantize_row_q8_0(f32_data, q8, 64);
    quantize_row_mxfp4(f32_data, fp4, 64);
    uint64_t ne_f32[2] = { n_f32 / 2, 2 }, ne64[1] = { 64 }, ne32[1] = { 32 }, ne4[1] = { 4 };
    m |= gguf_writer_add_tensor(w, "t.f32", GGUF_TYPE_F32, 2, ne_f32, f32_data);
    m |= gguf_writer_add_tensor(w, "t.q8_0", GGUF_TYPE_Q8_0, 1, ne64, q8);
    m |= gguf_writer_add_tensor(w, "t.mxfp4", GGUF_TYPE_MXFP4, 1, ne64, fp4);
    m |= gguf_writer_add_tensor(w, "t.f16", GGUF_TYPE_F16, 1, ne32, f16);
    m |= gguf_writer_add_tensor(w, "t.bf16", GGUF_TYPE_BF16, 1, ne32, bf16);
    m |= gguf_writer_add_tensor(w, "t.i32", GGUF_TYPE_I32, 1, ne4, i32);
    char err[256];
    int rc = m ? -1 : gguf_writer_write_file(w, path, err, sizeof err);
    if (rc) fprintf(stderr, "write_sample: %s\n", m ? "add failed" : err);
    gguf_writer_destroy(w);
    return rc;
}

static void sample_path(char *buf, size_t len) { snprintf(buf, len, "%s/sample.gguf", test_tmpdir()); }

static uint8_t *read_all(const char *path, uint64_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc((size_t)n);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *size = (uint64_t)n;
    return buf;
}

TEST(gguf_round_trip_keeps_every_type)
{
    char path[512];
    sample_path(path, sizeof path);
    float data[64];
    for (int i = 0; i < 64; i++) data[i] = (float)(i - 30) / 7.0f;
    REQUIRE(write_sample(path, data, 64) == 0);
    struct gguf_file *f;
    char err[256];
    REQUIRE(gguf_open(&f, path, err, sizeof err) == 0);
    CHECK_EQ_INT(f->version, 3);
    CHECK_EQ_INT(f->n_kv, 7);
    CHECK_EQ_INT(f->n_tensors, 6);
    uint32_t u;
    CHECK(gguf_get_u32(f, "k.u32", &u, err, sizeof err) == 0 && u == 4000000000u);
    CHECK(gguf_get_u32(f, "k.i32", &u, err, sizeof err) != 0); /* negative: refused */
    float x;
    CHECK(gguf_get_f32(f, "k.f32", &x, err, sizeof err) == 0 && x == 0.25f);
    bool b = false;
    CHECK(gguf_get_bool(f, "k.bool", &b, err, sizeof err) == 0 && b);
    char s[64];
    CHECK(gguf_get_str(f, "general.architecture", s, sizeof s, err, sizeof err) == 0);
    CHECK_STR(s, "sample");
    const struct gguf_kv *arr = gguf_find_kv(f, "k.arr_i32");
    int64_t v;
    REQUIRE(arr);
    CHECK(arr->arr_count == 3 && gguf_arr_get_i64(arr, 2, &v) == 0 && v == 128);
    CHECK(gguf_arr_get_i64(arr, 3, &v) != 0);
    const struct gguf_kv *sa = gguf_find_kv(f, "k.arr_str");
    REQUIRE(sa && sa->arr_strs && sa->arr_count == 2);
    CHECK(sa->arr_strs[1].len == strlen("ünïcode") && !memcmp(sa->arr_strs[1].ptr, "ünïcode", sa->arr_strs[1].len));
    const struct gguf_tensor *t = gguf_find_tensor(f, "t.f32");
    REQUIRE(t);
    CHECK(t->ne[0] == 32 && t->ne[1] == 2 && t->type == GGUF_TYPE_F32);
    CHECK(memcmp(t->data, data, sizeof data) == 0);
    CHECK(((uintptr_t)t->data - (uintptr_t)f->map) % 32 == 0);
    const struct gguf_tensor *q = gguf_find_tensor(f, "t.q8_0");
    REQUIRE(q && q->nbytes == 68);
    float deq[64];
    dequant_row(q->type, q->data, deq, 64);
    for (int i = 0; i < 64; i++) CHECK_NEAR(deq[i], data[i], 5.0 / 127.0 * 0.51);
    const struct gguf_tensor *i32 = gguf_find_tensor(f, "t.i32");
    REQUIRE(i32);
    dequant_row(i32->type, i32->data, deq, 4);
    CHECK(deq[1] == -2.0f && deq[3] == -4.0f);
    CHECK(gguf_find_tensor(f, "t.none") == NULL);
    gguf_close(f);
}

TEST(gguf_writer_refuses_duplicates_and_leaves_no_file)
{
    struct gguf_writer *w = gguf_writer_create();
    REQUIRE(w);
    CHECK(gguf_writer_add_u32(w, "a", 1) == 0);
    CHECK(gguf_writer_add_u32(w, "a", 2) != 0);
    char path[512], err[256];
    snprintf(path, sizeof path, "%s/dup.gguf", test_tmpdir());
    CHECK(gguf_writer_write_file(w, path, err, sizeof err) != 0);
    CHECK(access(path, F_OK) != 0);
    gguf_writer_destroy(w);
}

TEST(gguf_reads_the_fixture_written_by_another_writer)
{
    const char *p = test_fixture("model/v4-tiny-mixed.gguf");
    struct gguf_file *f;
    char err[256];
    REQUIRE(gguf_open(&f, p, err, sizeof err) == 0);
    CHECK_EQ_INT(f->n_tensors, 150);
    const struct gguf_tensor *t = gguf_find_tensor(f, "blk.0.ffn_gate_exps.weight");
    REQUIRE(t);
    CHECK(t->type == GGUF_TYPE_MXFP4 && t->ne[0] == 128 && t->ne[1] == 128 && t->ne[2] == 8);
    CHECK_EQ_INT(t->nbytes, 128 * 128 * 8 / 32 * 17);
    uint32_t n;
    CHECK(gguf_get_u32(f, "deepseek4.block_count", &n, err, sizeof err) == 0 && n == 5);
    gguf_close(f);
}

/* ---- malformed corpus: mutate a valid image and expect a specific message ---- */

struct image {
    uint8_t *buf;
    uint64_t size;
};

static struct image valid_image(void)
{
    char path[512];
    sample_path(path, sizeof path);
    float data[64];
    for (int i = 0; i < 64; i++) data[i] = (float)i;
    struct image im = { 0, 0 };
    if (write_sample(path, data, 64) == 0) im.buf = read_all(path, &im.size);
    return im;
}

/* Offset just after the serialized name of tensor `name` in the tensor-info table. */
static uint64_t after_tensor_name(const struct image *im, const char *name)
{
    size_t n = strlen(name);
    for (uint64_t i = 8; i + n <= im->size; i++) {
        uint64_t len;
        memcpy(&len, im->buf + i - 8, 8);
        if (len == n && !memcmp(im->buf + i, name, n)) return i + n;
    }
    return 0;
}

static void expect_reject(const uint8_t *buf, uint64_t size, const char *needle, int line)
{
    struct gguf_file *f = NULL;
    char err[512] = "";
    int rc = gguf_parse(&f, buf, size, err, sizeof err);
    if (rc == 0) {
        test_fail_at(__FILE__, line, "accepted a malformed file (expected \"%s\")", needle);
        gguf_close(f);
        return;
    }
    if (!strstr(err, needle)) test_fail_at(__FILE__, line, "message \"%s\" lacks \"%s\"", err, needle);
}

TEST(gguf_rejects_every_truncation)
{
    struct image im = valid_image();
    REQUIRE(im.buf);
    struct gguf_file *f;
    char err[512];
    REQUIRE(gguf_parse(&f, im.buf, im.size, err, sizeof err) == 0);
    uint64_t data_end = f->data_offset + f->tensors[f->n_tensors - 1].offset + f->tensors[f->n_tensors - 1].nbytes;
    gguf_close(f);
    for (uint64_t len = 0; len < data_end; len++) {
        uint8_t *copy = malloc(len ? len : 1); /* exact-size copy so ASan sees any overread */
        memcpy(copy, im.buf, len);
        if (gguf_parse(&f, copy, len, err, sizeof err) == 0) {
            test_fail_at(__FILE__, __LINE__, "accepted a file truncated to %llu bytes", (unsigned long long)len);
            gguf_close(f);
        } else if (!strstr(err, "truncated") && !strstr(err, "past the end") && !strstr(err, "cannot fit")) {
            test_fail_at(__FILE__, __LINE__, "truncated to %llu: unclear message \"%s\"", (unsigned long long)len, err);
        }
        free(copy);
    }
    free(im.buf);
}

TEST(gguf_rejects_malformed_headers_with_clear_messages)
{
    struct image im = valid_image();
    REQUIRE(im.buf);
    uint8_t *b = malloc(im.size);
    uint64_t v64;
    uint32_t v32;
#define FRESH() memcpy(b, im.buf, im.size)
    FRESH(); b[0] = 'X';
    expect_reject(b, im.size, "bad magic", __LINE__);
    FRESH(); v32 = 1; memcpy(b + 4, &v32, 4);
    expect_reject(b, im.size, "version 1", __LINE__);
    FRESH(); v32 = 4; memcpy(b + 4, &v32, 4);
    expect_reject(b, im.size, "version 4", __LINE__);
    FRESH(); v64 = UINT64_MAX / 2; memcpy(b + 8, &v64, 8);
    expect_reject(b, im.size, "tensor count", __LINE__);
    FRESH(); v64 = 1ull << 40; memcpy(b + 16, &v64, 8);
    expect_reject(b, im.size, "metadata count", __LINE__);
    FRESH(); v64 = UINT64_MAX - 3; memcpy(b + 24, &v64, 8); /* first key's length */
    expect_reject(b, im.size, "truncated", __LINE__);

    uint64_t at = after_tensor_name(&im, "t.q8_0");
    REQUIRE(at);
    /* layout after the name: n_dims u32, ne[0] u64, type u32, offset u64 */
    FRESH(); v32 = 0; memcpy(b + at, &v32, 4);
    expect_reject(b, im.size, "t.q8_0: 0 dimensions", __LINE__);
    FRESH(); v32 = 5; memcpy(b + at, &v32, 4);
    expect_reject(b, im.size, "t.q8_0: 5 dimensions", __LINE__);
    FRESH(); v64 = 0; memcpy(b + at + 4, &v64, 8);
    expect_reject(b, im.size, "t.q8_0: dimension 0 is 0", __LINE__);
    FRESH(); v64 = 48; memcpy(b + at + 4, &v64, 8);
    expect_reject(b, im.size, "not a multiple of the Q8_0 block", __LINE__);
    FRESH(); v64 = 1ull << 40; memcpy(b + at + 4, &v64, 8);
    expect_reject(b, im.size, "t.q8_0: data", __LINE__);
    FRESH(); v32 = 2; memcpy(b + at + 12, &v32, 4); /* Q4_0: not supported */
    expect_reject(b, im.size, "t.q8_0: tensor type 2 (Q4_0) is not supported", __LINE__);
    FRESH(); memcpy(&v64, b + at + 16, 8); v64 += 1; memcpy(b + at + 16, &v64, 8);
    expect_reject(b, im.size, "not a multiple of the alignment", __LINE__);
    FRESH(); v64 = 1ull << 50; memcpy(b + at + 16, &v64, 8);
    expect_reject(b, im.size, "runs past the end", __LINE__);
    FRESH(); v64 = 0; memcpy(b + at + 16, &v64, 8); /* same offset as t.f32 */
    expect_reject(b, im.size, "overlaps", __LINE__);

    uint64_t at2 = after_tensor_name(&im, "t.mxfp4");
    REQUIRE(at2);
    FRESH(); memcpy(b + at2 - 7, "t.q8_0", 6); b[at2 - 1] = 0; /* rename to a NUL-containing name */
    expect_reject(b, im.size, "bad name", __LINE__);
#undef FRESH
    free(b);
    free(im.buf);
}

TEST(gguf_rejects_duplicate_tensor_names)
{
    struct image im = valid_image();
    REQUIRE(im.buf);
    uint64_t at = after_tensor_name(&im, "t.f16");
    REQUIRE(at);
    memcpy(im.buf + at - 5, "t.i32", 5); /* two tensors named t.i32 */
    expect_reject(im.buf, im.size, "t.i32: tensor name appears twice", __LINE__);
    free(im.buf);
}

TEST(gguf_open_reports_missing_and_non_gguf_files)
{
    char err[512], path[512];
    struct gguf_file *f;
    CHECK(gguf_open(&f, "/nonexistent/model.gguf", err, sizeof err) != 0);
    CHECK(strstr(err, "No such file") != NULL);
    snprintf(path, sizeof path, "%s/text.gguf", test_tmpdir());
    FILE *o = fopen(path, "w");
    REQUIRE(o);
    fputs("this is not a model file, just text that is long enough", o);
    fclose(o);
    CHECK(gguf_open(&f, path, err, sizeof err) != 0);
    CHECK(strstr(err, "bad magic") != NULL && strstr(err, path) != NULL);
}
