/* `flashbox quantize`: recipes and pattern files, importance matrices (and their malformed
 * forms), the rewrite on a generated model whose rows are multiples of 256 (every K-quant
 * applies) and on the fixture model (rows of 128: the fallbacks), the result loading and
 * running on the reference and on Vulkan, and the atomic write. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/engine.h"
#include "engine/model/gguf.h"
#include "engine/model/quant.h"
#include "tests/harness.h"
#include "tools/mkmodel.h"
#include "tools/quantize.h"

static int parse(const char *text, struct quant_recipe *r, char *err, size_t len)
{
    memset(r, 0, sizeof *r);
    return quant_recipe_parse(text, strlen(text), r, err, len);
}

TEST(quantize_pattern_file_rules_match_in_order)
{
    static struct quant_recipe r;
    char err[256];
    REQUIRE(parse("# experts\nblk.0.ffn_down_exps = q6_k\n\nblk.*.ffn_*_exps=Q2_K  # the rest\noutput=q8_0\n", &r, err, sizeof err) == 0);
    CHECK_EQ_INT(r.n_rules, 3);
    const struct quant_rule *q = quant_recipe_match(&r, "blk.0.ffn_down_exps.weight");
    REQUIRE(q);
    CHECK_EQ_INT(q->type, GGUF_TYPE_Q6_K);
    CHECK_EQ_INT(q->line, 2);
    q = quant_recipe_match(&r, "blk.12.ffn_gate_exps.weight");
    REQUIRE(q);
    CHECK_EQ_INT(q->type, GGUF_TYPE_Q2_K);
    CHECK(quant_recipe_match(&r, "blk.1.ffn_gate_shexp.weight") == NULL);
    CHECK(quant_recipe_match(&r, "output_norm.weight") == NULL);
    REQUIRE(quant_recipe_load("2bit", &r, err, sizeof err) == 0);
    q = quant_recipe_match(&r, "blk.3.ffn_up_exps.weight");
    CHECK(q && q->type == GGUF_TYPE_IQ2_XXS);
    q = quant_recipe_match(&r, "blk.3.ffn_gate_exps.weight");
    CHECK(q && q->type == GGUF_TYPE_IQ2_XXS);
    q = quant_recipe_match(&r, "blk.3.ffn_down_exps.weight");
    CHECK(q && q->type == GGUF_TYPE_Q2_K);
    q = quant_recipe_match(&r, "blk.3.attn_output_b.weight");
    CHECK(q && q->type == GGUF_TYPE_Q8_0);
}

TEST(quantize_malformed_pattern_files_name_the_line)
{
    static const struct { const char *text, *want; } bad[] = {
        { "blk.*.ffn_down_exps q2_k\n", "line 1: 'blk.*.ffn_down_exps q2_k': expected PATTERN=TYPE" },
        { "# c\nblk.*=q9_k\n", "line 2: 'q9_k' is not a tensor type" },
        { "blk.*=i32\n", "line 1: I32 has no quantizer here" },
        { "=q4_k\n", "line 1: empty pattern" },
        { "blk.*=\n", "line 1: '' is not a tensor type" },
        { "# only comments\n\n", "no rules" },
        { "", "no rules" },
    };
    static struct quant_recipe r;
    char err[256];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = 0;
        CHECK(parse(bad[i].text, &r, err, sizeof err) == -1);
        if (!strstr(err, bad[i].want)) test_fail_at(__FILE__, __LINE__, "case %zu: '%s', expected '%s'", i, err, bad[i].want);
    }
    char big[400];
    memset(big, 'a', sizeof big);
    big[sizeof big - 1] = 0;
    CHECK(parse(big, &r, err, sizeof err) == -1 && strstr(err, "line 1: longer than"));
    const char nul[] = "blk.*=q4_k\nx\0y=q4_k\n";
    memset(&r, 0, sizeof r);
    CHECK(quant_recipe_parse(nul, sizeof nul - 1, &r, err, sizeof err) == -1 && strstr(err, "line 2: a NUL byte"));
    CHECK(quant_recipe_load("/nonexistent/recipe.txt", &r, err, sizeof err) == -1 && strstr(err, "not a named recipe"));
    /* a file's message is "FILE: line N: ...", the file named once */
    char file[512], want[600];
    snprintf(file, sizeof file, "%s/recipe.txt", test_tmpdir());
    FILE *f = fopen(file, "w");
    REQUIRE(f && fputs("# c\nblk.*=q9_k\n", f) >= 0 && fclose(f) == 0);
    snprintf(want, sizeof want, "%s: line 2: 'q9_k' is not a tensor type", file);
    CHECK(quant_recipe_load(file, &r, err, sizeof err) == -1);
    if (strncmp(err, want, strlen(want))) test_fail_at(__FILE__, __LINE__, "'%s', expected it to begin '%s'", err, want);
    /* a FIFO or a directory named as a recipe or an imatrix is refused at once, never waited on */
    char fifo[512];
    snprintf(fifo, sizeof fifo, "%s/pipe", test_tmpdir());
    REQUIRE(mkfifo(fifo, 0600) == 0);
    CHECK(quant_recipe_load(fifo, &r, err, sizeof err) == -1 && strstr(err, "FIFO"));
    struct quant_imatrix m;
    CHECK(quant_imatrix_load(fifo, &m, err, sizeof err) == -1 && strstr(err, "FIFO"));
    CHECK(quant_imatrix_load(test_tmpdir(), &m, err, sizeof err) == -1 && strstr(err, "directory"));
}

/* A legacy imatrix image: entries (name, ncall, values). */
static size_t legacy_imatrix(uint8_t *buf, int n, const char *const *names, const int32_t *ncall, const int32_t *nval,
                             const float *vals)
{
    size_t at = 0;
    int32_t v = n;
    memcpy(buf + at, &v, 4), at += 4;
    for (int i = 0; i < n; i++) {
        v = (int32_t)strlen(names[i]);
        memcpy(buf + at, &v, 4), at += 4;
        memcpy(buf + at, names[i], (size_t)v), at += (size_t)v;
        memcpy(buf + at, &ncall[i], 4), at += 4;
        memcpy(buf + at, &nval[i], 4), at += 4;
        memcpy(buf + at, vals, 4 * (size_t)nval[i]), at += 4 * (size_t)nval[i];
    }
    return at;
}

TEST(quantize_imatrix_legacy_format_is_averaged_over_calls_and_checked)
{
    uint8_t buf[4096];
    float vals[256];
    for (int i = 0; i < 256; i++) vals[i] = (float)(i + 1);
    const char *names[] = { "blk.0.ffn_down_exps.weight", "output.weight" };
    const int32_t ncall[] = { 4, 0 }, nval[] = { 256, 8 };
    size_t n = legacy_imatrix(buf, 2, names, ncall, nval, vals);
    struct quant_imatrix m;
    char err[256];
    REQUIRE(quant_imatrix_parse(buf, n, &m, err, sizeof err) == 0);
    CHECK_EQ_INT(m.n, 2);
    const struct quant_imatrix_entry *e = quant_imatrix_find(&m, "blk.0.ffn_down_exps.weight");
    REQUIRE(e && e->n_val == 256);
    CHECK(e->val[7] == 2.0f); /* 8 / 4 calls */
    e = quant_imatrix_find(&m, "output.weight");
    CHECK(e && e->val[3] == 4.0f); /* ncall 0: as stored */
    quant_imatrix_free(&m);
    /* every truncation is refused with a message, never read past */
    for (size_t cut = 0; cut < n; cut += 7) {
        err[0] = 0;
        uint8_t *copy = malloc(cut ? cut : 1);
        memcpy(copy, buf, cut);
        if (quant_imatrix_parse(copy, cut, &m, err, sizeof err) == 0 || !err[0])
            test_fail_at(__FILE__, __LINE__, "truncated at %zu accepted", cut);
        free(copy);
    }
    /* negative or NaN weights, absurd counts, a NUL in a name */
    n = legacy_imatrix(buf, 1, names, ncall, nval, vals);
    const size_t at_nval = 4 + 4 + strlen(names[0]) + 4;
    for (int k = 0; k < 2; k++) {
        const int32_t bad_nval = k ? -1 : 1 << 28;
        memcpy(buf + at_nval, &bad_nval, 4);
        err[0] = 0;
        CHECK(quant_imatrix_parse(buf, n, &m, err, sizeof err) == -1 && strstr(err, k ? "-1 values" : "268435456 values"));
    }
    memcpy(buf + at_nval, &nval[0], 4);
    vals[5] = NAN;
    n = legacy_imatrix(buf, 1, names, ncall, nval, vals);
    CHECK(quant_imatrix_parse(buf, n, &m, err, sizeof err) == -1 && strstr(err, "value 5"));
    vals[5] = 6;
    int32_t huge = 1 << 30;
    memcpy(buf, &huge, 4);
    CHECK(quant_imatrix_parse(buf, n, &m, err, sizeof err) == -1 && strstr(err, "entries"));
}

TEST(quantize_imatrix_gguf_format_divides_sums_by_counts)
{
    /* llama.cpp's GGUF imatrix: NAME.in_sum2 [4, 2] and NAME.counts [2]; a count of 0 (an
     * expert that never ran) gives weights of 1 */
    char path[512], err[256];
    snprintf(path, sizeof path, "%s/im.gguf", test_tmpdir());
    const float sums[8] = { 2, 4, 6, 8, 1, 1, 1, 1 }, counts[2] = { 2, 0 };
    const uint64_t ne_s[2] = { 4, 2 }, ne_c[1] = { 2 };
    struct gguf_writer *w = gguf_writer_create();
    REQUIRE(w);
    gguf_writer_add_str(w, "general.type", "imatrix");
    gguf_writer_add_tensor(w, "blk.0.ffn_up_exps.weight.in_sum2", GGUF_TYPE_F32, 2, ne_s, sums);
    gguf_writer_add_tensor(w, "blk.0.ffn_up_exps.weight.counts", GGUF_TYPE_F32, 1, ne_c, counts);
    REQUIRE(gguf_writer_write_file(w, path, err, sizeof err) == 0);
    gguf_writer_destroy(w);
    struct quant_imatrix m;
    REQUIRE(quant_imatrix_load(path, &m, err, sizeof err) == 0);
    const struct quant_imatrix_entry *e = quant_imatrix_find(&m, "blk.0.ffn_up_exps.weight");
    REQUIRE(e && e->n_val == 8);
    CHECK(e->val[0] == 1 && e->val[3] == 4 && e->val[4] == 1 && e->val[7] == 1);
    quant_imatrix_free(&m);
    /* sums without counts: refused by name */
    w = gguf_writer_create();
    gguf_writer_add_tensor(w, "x.in_sum2", GGUF_TYPE_F32, 2, ne_s, sums);
    REQUIRE(gguf_writer_write_file(w, path, err, sizeof err) == 0);
    gguf_writer_destroy(w);
    CHECK(quant_imatrix_load(path, &m, err, sizeof err) == -1 && strstr(err, "x.in_sum2 has no x.counts"));
}

static int write_model(const char *path, uint32_t dim)
{
    struct mkmodel_config c;
    mkmodel_defaults(&c);
    c.quant = MKMODEL_F32;
    c.n_embd = c.n_ff_exp = dim;
    char err[256];
    if (mkmodel_write(&c, path, err, sizeof err)) {
        test_fail_at(__FILE__, __LINE__, "%s", err);
        return -1;
    }
    return 0;
}

static int quantize_with(const char *in, const char *out, const char *recipe, const struct quant_imatrix *im,
                         struct quantize_stats *st, char *err, size_t len)
{
    static struct quant_recipe r;
    if (quant_recipe_load(recipe, &r, err, len)) return -1;
    struct quantize_opts o = { .in = in, .out = out, .recipe = &r, .imatrix = im, .log = NULL };
    return quantize_model(&o, st, err, len);
}

/* The bytes a tensor of out should hold: its source rows dequantized and quantized again. */
static void check_tensor_bytes(const struct gguf_file *src, const struct gguf_file *dst, const char *name, enum gguf_type want)
{
    const struct gguf_tensor *a = gguf_find_tensor(src, name), *b = gguf_find_tensor(dst, name);
    if (!a || !b) {
        test_fail_at(__FILE__, __LINE__, "%s missing", name);
        return;
    }
    if (b->type != want) {
        test_fail_at(__FILE__, __LINE__, "%s: %s, expected %s", name, gguf_type_name(b->type), gguf_type_name(want));
        return;
    }
    CHECK(memcmp(a->ne, b->ne, sizeof a->ne) == 0);
    if (a->type == want) {
        CHECK(a->nbytes == b->nbytes && memcmp(a->data, b->data, a->nbytes) == 0);
        return;
    }
    const uint64_t ne0 = a->ne[0], rows = a->n_elements / ne0, rb = b->nbytes / rows;
    float *row = malloc(ne0 * 4);
    uint8_t *q = malloc(rb);
    for (uint64_t r = 0; r < rows; r += rows / 5 + 1) {
        dequant_row(a->type, (const uint8_t *)a->data + r * (a->nbytes / rows), row, ne0);
        quant_quantize_row(want, row, q, ne0, NULL);
        if (memcmp(q, (const uint8_t *)b->data + r * rb, rb)) {
            test_fail_at(__FILE__, __LINE__, "%s row %llu differs from quant_quantize_row", name, (unsigned long long)r);
            break;
        }
    }
    free(row);
    free(q);
}

static const int32_t report_tokens[] = { 3, 17, 200, 5, 99, 42, 7, 311, 64, 128, 1, 250, 33, 77, 150, 12 };
#define N_REPORT (uint32_t)(sizeof report_tokens / sizeof report_tokens[0])

TEST(quantize_recipes_rewrite_a_256_wide_model_that_then_runs)
{
    char in[512], out[512], err[512];
    snprintf(in, sizeof in, "%s/m.gguf", test_tmpdir());
    REQUIRE(write_model(in, 256) == 0);
    struct gguf_file *src;
    REQUIRE(gguf_open(&src, in, err, sizeof err) == 0);
    static const struct { const char *recipe; enum gguf_type experts, gate_up; double kl_bound; } cases[] = {
        { "q8", GGUF_TYPE_Q8_0, GGUF_TYPE_Q8_0, 0.02 }, { "4bit", GGUF_TYPE_Q4_K, GGUF_TYPE_Q4_K, 0.3 },
        { "2bit", GGUF_TYPE_Q2_K, GGUF_TYPE_IQ2_XXS, 1.2 },
    };
    double kl[3] = { 0 };
    for (int i = 0; i < 3; i++) {
        snprintf(out, sizeof out, "%s/%s.gguf", test_tmpdir(), cases[i].recipe);
        struct quantize_stats st;
        if (quantize_with(in, out, cases[i].recipe, NULL, &st, err, sizeof err)) {
            test_fail_at(__FILE__, __LINE__, "%s: %s", cases[i].recipe, err);
            continue;
        }
        CHECK_EQ_INT(st.n_fallback, 0);
        CHECK(st.bytes_out < st.bytes_in);
        struct gguf_file *q;
        REQUIRE(gguf_open(&q, out, err, sizeof err) == 0);
        check_tensor_bytes(src, q, "blk.0.ffn_down_exps.weight", cases[i].experts);
        check_tensor_bytes(src, q, "blk.2.ffn_gate_exps.weight", cases[i].gate_up);
        check_tensor_bytes(src, q, "blk.1.ffn_up_exps.weight", cases[i].gate_up);
        check_tensor_bytes(src, q, "blk.1.attn_q_b.weight", GGUF_TYPE_Q8_0);
        check_tensor_bytes(src, q, "output.weight", GGUF_TYPE_Q8_0);
        check_tensor_bytes(src, q, "blk.0.attn_norm.weight", GGUF_TYPE_F32);  /* not in the recipe */
        check_tensor_bytes(src, q, "token_embd.weight", GGUF_TYPE_F32);
        CHECK(gguf_find_kv(q, "flashbox.quantize.recipe") != NULL);
        CHECK_EQ_INT(q->n_kv, src->n_kv + 1);
        /* the rate's terms: the elements of the tensors whose type changed, and the time of
         * those alone, apart from copying the kept ones (both within the whole run) */
        uint64_t changed_elems = 0, changed = 0;
        for (uint64_t k = 0; k < src->n_tensors; k++)
            if (gguf_find_tensor(q, src->tensors[k].name)->type != src->tensors[k].type) {
                changed_elems += src->tensors[k].n_elements;
                changed++;
            }
        CHECK_EQ_INT(st.elems_quantized, changed_elems);
        CHECK_EQ_INT(st.n_changed, changed);
        CHECK(changed < src->n_tensors && st.quant_seconds > 0 && st.copy_seconds >= 0);
        CHECK(st.quant_seconds + st.copy_seconds <= st.seconds);
        gguf_close(q);
        struct quantize_report rep;
        if (quantize_report_run(in, out, report_tokens, N_REPORT, &rep, err, sizeof err)) {
            test_fail_at(__FILE__, __LINE__, "%s: report: %s", cases[i].recipe, err);
            continue;
        }
        CHECK_EQ_INT(rep.n_positions, N_REPORT);
        kl[i] = rep.all.kl_mean;
        if (!(rep.all.kl_mean > 0 && rep.all.kl_mean < cases[i].kl_bound))
            test_fail_at(__FILE__, __LINE__, "%s: KL %g, expected in (0, %g)", cases[i].recipe, rep.all.kl_mean,
                         cases[i].kl_bound);
    }
    /* fewer bits cost more */
    CHECK(kl[0] < kl[1] && kl[1] < kl[2]);
    /* the same file against itself: KL 0, every top-1 the same */
    struct quantize_report same;
    REQUIRE(quantize_report_run(in, in, report_tokens, N_REPORT, &same, err, sizeof err) == 0);
    CHECK(same.all.kl_mean == 0 && same.all.top1_same == N_REPORT && same.n_types == 0);
    gguf_close(src);
}

static int write_text(const char *path, const char *text)
{
    FILE *fp = fopen(path, "w");
    if (!fp) return -1;
    int rc = fputs(text, fp) < 0 ? -1 : 0;
    return fclose(fp) || rc ? -1 : 0;
}

static const struct quantize_report_type *report_type(const struct quantize_report *r, enum gguf_type t)
{
    for (uint32_t k = 0; k < r->n_types; k++)
        if (r->per_type[k].type == t) return &r->per_type[k];
    return NULL;
}

TEST(quantize_report_per_type_equals_quantizing_only_that_type)
{
    /* the report's IQ2_XXS line for the 2bit recipe (IQ2_XXS gate and up, Q2_K down, Q8_0 elsewhere) must be
     * exactly the report of a file in which only gate and up were quantized (the same bytes, written independently) */
    char in[512], mixed[512], experts[512], rb[512], err[512];
    snprintf(in, sizeof in, "%s/m.gguf", test_tmpdir());
    snprintf(mixed, sizeof mixed, "%s/mixed.gguf", test_tmpdir());
    snprintf(experts, sizeof experts, "%s/experts.gguf", test_tmpdir());
    snprintf(rb, sizeof rb, "%s/experts.txt", test_tmpdir());
    REQUIRE(write_model(in, 256) == 0);
    REQUIRE(write_text(rb, "blk.*.ffn_gate_exps=iq2_xxs\nblk.*.ffn_up_exps=iq2_xxs\n") == 0);
    struct quantize_stats st;
    REQUIRE(quantize_with(in, mixed, "2bit", NULL, &st, err, sizeof err) == 0);
    REQUIRE(quantize_with(in, experts, rb, NULL, &st, err, sizeof err) == 0);
    static struct quantize_report a, b;
    if (quantize_report_run(in, mixed, report_tokens, N_REPORT, &a, err, sizeof err) ||
        quantize_report_run(in, experts, report_tokens, N_REPORT, &b, err, sizeof err)) {
        test_fail_at(__FILE__, __LINE__, "report: %s", err);
        return;
    }
    CHECK_EQ_INT(a.n_types, 3);
    CHECK_EQ_INT(b.n_types, 1);
    const struct quantize_report_type *q2 = report_type(&a, GGUF_TYPE_IQ2_XXS), *q8 = report_type(&a, GGUF_TYPE_Q8_0),
                                      *down = report_type(&a, GGUF_TYPE_Q2_K);
    REQUIRE(q2 && q8 && down && b.per_type[0].type == GGUF_TYPE_IQ2_XXS);
    CHECK_EQ_INT(down->n_tensors * 2, q2->n_tensors);
    CHECK_EQ_INT(q2->n_tensors, st.n_changed);
    CHECK_EQ_INT(b.per_type[0].n_tensors, st.n_changed);
    CHECK(q2->kl.kl_mean == b.all.kl_mean && q2->kl.kl_max == b.all.kl_max && q2->kl.top1_same == b.all.top1_same);
    CHECK(b.per_type[0].kl.kl_mean == b.all.kl_mean);
    /* each part costs something, Q8_0 far less than the 2-bit experts, and the whole no less than a part */
    if (!(q8->kl.kl_mean > 0 && q8->kl.kl_mean < q2->kl.kl_mean && q8->kl.kl_mean < down->kl.kl_mean &&
          q2->kl.kl_mean < 2 * a.all.kl_mean && down->kl.kl_mean < 2 * a.all.kl_mean))
        test_fail_at(__FILE__, __LINE__, "KL: Q8_0 only %g, IQ2_XXS only %g, Q2_K only %g, all %g", q8->kl.kl_mean,
                     q2->kl.kl_mean, down->kl.kl_mean, a.all.kl_mean);
    CHECK(q8->kl.kl_mean != a.all.kl_mean);
    /* the mixed models are removed */
    char left[600];
    snprintf(left, sizeof left, "%s.only-Q2_K", mixed);
    CHECK(access(left, F_OK) != 0);
    snprintf(left, sizeof left, "%s.only-IQ2_XXS", mixed);
    CHECK(access(left, F_OK) != 0);
    snprintf(left, sizeof left, "%s.only-Q8_0", mixed);
    CHECK(access(left, F_OK) != 0);
    /* the quantized file of another model (experts 512 wide): refused by name, nothing left */
    struct mkmodel_config c;
    mkmodel_defaults(&c);
    c.quant = MKMODEL_F32;
    c.n_embd = 256;
    c.n_ff_exp = 512;
    snprintf(experts, sizeof experts, "%s/other.gguf", test_tmpdir());
    snprintf(mixed, sizeof mixed, "%s/other-2bit.gguf", test_tmpdir());
    REQUIRE(mkmodel_write(&c, experts, err, sizeof err) == 0);
    REQUIRE(quantize_with(experts, mixed, "2bit", NULL, &st, err, sizeof err) == 0);
    err[0] = 0;
    CHECK(quantize_report_run(in, mixed, report_tokens, N_REPORT, &a, err, sizeof err) == -1);
    if (!strstr(err, "has another shape in the two files")) test_fail_at(__FILE__, __LINE__, "error: '%s'", err);
    static const char *const left_types[] = { "IQ2_XXS", "Q2_K", "Q8_0" };
    for (int k = 0; k < 3; k++) {
        snprintf(left, sizeof left, "%s.only-%s", mixed, left_types[k]);
        CHECK(access(left, F_OK) != 0);
        snprintf(left, sizeof left, "%s.only-%s.tmp", mixed, left_types[k]);
        CHECK(access(left, F_OK) != 0);
    }
}

TEST(quantize_result_runs_on_vulkan_like_the_reference)
{
    /* whole models on both backends, four times (82 s under the sanitizers); every type's
     * kernel against the reference is the lighter test */
    test_heavy_variant("vk_matvec_matches_reference_for_ggml_k_and_i_quants");
    /* each recipe's whole result (2bit: IQ2_XXS gate/up, Q2_K down, Q8_0 attention; and the
     * experts in IQ1_M, and in IQ1_S) on both backends: logits within 1e-3 relative error and
     * the same top-1 at every position */
    char in[512], out[512], err[512], iq1m[512], iq1s[512];
    snprintf(in, sizeof in, "%s/m.gguf", test_tmpdir());
    snprintf(iq1m, sizeof iq1m, "%s/iq1m.txt", test_tmpdir());
    snprintf(iq1s, sizeof iq1s, "%s/iq1s.txt", test_tmpdir());
    REQUIRE(write_model(in, 256) == 0);
    REQUIRE(write_text(iq1m, "blk.*.ffn_*_exps=iq1_m\n") == 0 && write_text(iq1s, "blk.*.ffn_*_exps=iq1_s\n") == 0);
    const char *const recipes[] = { "4bit", "2bit", iq1m, iq1s };
    for (int k = 0; k < 4; k++) {
        snprintf(out, sizeof out, "%s/q-%d.gguf", test_tmpdir(), k);
        struct quantize_stats st;
        REQUIRE(quantize_with(in, out, recipes[k], NULL, &st, err, sizeof err) == 0);
        if (k >= 2) { /* the IQ1 files hold what quant_quantize_row writes */
            struct gguf_file *src, *q;
            REQUIRE(gguf_open(&src, in, err, sizeof err) == 0 && gguf_open(&q, out, err, sizeof err) == 0);
            const enum gguf_type t = k == 2 ? GGUF_TYPE_IQ1_M : GGUF_TYPE_IQ1_S;
            check_tensor_bytes(src, q, "blk.0.ffn_down_exps.weight", t);
            check_tensor_bytes(src, q, "blk.1.ffn_gate_exps.weight", t);
            gguf_close(q);
            gguf_close(src);
        }
        struct engine_options o;
        engine_options_default(&o);
        o.model_path = out;
        struct engine *ref = NULL, *vk = NULL;
        o.backend = ENGINE_BACKEND_VULKAN;
        if (engine_open(&vk, &o, err, sizeof err)) {
            if (strstr(err, "no Vulkan driver") || strstr(err, "no Vulkan device")) test_skip(err);
            test_fail_at(__FILE__, __LINE__, "%s", err);
            return;
        }
        o.backend = ENGINE_BACKEND_REF;
        REQUIRE(engine_open(&ref, &o, err, sizeof err) == 0);
        struct engine_info info;
        engine_get_info(ref, &info);
        const uint32_t n = 6;
        float *a = malloc((size_t)n * info.n_vocab * 4), *b = malloc((size_t)n * info.n_vocab * 4);
        struct session *sa, *sb;
        REQUIRE(session_create(ref, 64, &sa, err, sizeof err) == 0 && session_create(vk, 64, &sb, err, sizeof err) == 0);
        REQUIRE(session_eval(sa, report_tokens, n, a, true, err, sizeof err) == 0);
        REQUIRE(session_eval(sb, report_tokens, n, b, true, err, sizeof err) == 0);
        for (uint32_t p = 0; p < n; p++) {
            double e2 = 0, x2 = 0;
            uint32_t ta = 0, tb = 0;
            for (uint32_t i = 0; i < info.n_vocab; i++) {
                const float x = a[(size_t)p * info.n_vocab + i], y = b[(size_t)p * info.n_vocab + i];
                e2 += (double)(x - y) * (x - y);
                x2 += (double)x * x;
                if (x > a[(size_t)p * info.n_vocab + ta]) ta = i;
                if (y > b[(size_t)p * info.n_vocab + tb]) tb = i;
            }
            if (!(sqrt(e2 / x2) < 1e-3) || ta != tb)
                test_fail_at(__FILE__, __LINE__, "%s position %u: relative error %g, top-1 %u (reference) and %u (Vulkan)",
                             recipes[k], p, sqrt(e2 / x2), ta, tb);
        }
        session_destroy(sa);
        session_destroy(sb);
        engine_close(ref);
        engine_close(vk);
        free(a);
        free(b);
    }
}

TEST(quantize_imatrix_weights_iq4_and_k_quants_and_a_bad_one_writes_nothing)
{
    char in[512], out[512], err[512];
    snprintf(in, sizeof in, "%s/m.gguf", test_tmpdir());
    snprintf(out, sizeof out, "%s/q.gguf", test_tmpdir());
    REQUIRE(write_model(in, 256) == 0);
    /* weights for one expert tensor: 256 columns x 8 experts, emphasising the first half */
    static float vals[256 * 8];
    for (int i = 0; i < 256 * 8; i++) vals[i] = i % 256 < 128 ? 10.f : 0.01f;
    const char *names[] = { "blk.0.ffn_gate_exps.weight" };
    const int32_t ncall[] = { 1 }, nval[] = { 256 * 8 };
    static uint8_t buf[16384];
    size_t n = legacy_imatrix(buf, 1, names, ncall, nval, vals);
    struct quant_imatrix m;
    REQUIRE(quant_imatrix_parse(buf, n, &m, err, sizeof err) == 0);
    struct quantize_stats st;
    /* each recipe's expert type: the weighted columns come out closer than without weights */
    static const struct { const char *recipe; enum gguf_type type; } cases[] = {
        { "iq4", GGUF_TYPE_IQ4_XS }, { "2bit", GGUF_TYPE_IQ2_XXS }, { "4bit", GGUF_TYPE_Q4_K },
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        REQUIRE(quantize_with(in, out, cases[c].recipe, &m, &st, err, sizeof err) == 0);
        CHECK_EQ_INT(st.n_imatrix, 1);
        struct gguf_file *src, *q;
        REQUIRE(gguf_open(&src, in, err, sizeof err) == 0 && gguf_open(&q, out, err, sizeof err) == 0);
        const struct gguf_tensor *a = gguf_find_tensor(src, names[0]), *b = gguf_find_tensor(q, names[0]);
        REQUIRE(a && b && b->type == cases[c].type);
        const uint32_t bb = gguf_type_block_bytes(b->type);
        float x[256], y[256], y0[256];
        uint8_t plain[256];
        double e_w = 0, e_plain = 0;
        for (uint64_t r = 0; r < a->n_elements / 256; r++) {
            dequant_row(a->type, (const uint8_t *)a->data + r * 1024, x, 256);
            dequant_row(b->type, (const uint8_t *)b->data + r * bb, y, 256);
            quant_quantize_row(b->type, x, plain, 256, NULL);
            dequant_row(b->type, plain, y0, 256);
            for (int j = 0; j < 128; j++) {
                e_w += (double)(x[j] - y[j]) * (x[j] - y[j]);
                e_plain += (double)(x[j] - y0[j]) * (x[j] - y0[j]);
            }
        }
        if (!(e_w < e_plain))
            test_fail_at(__FILE__, __LINE__, "%s: weighted columns' squared error %g, without weights %g",
                         gguf_type_name(cases[c].type), e_w, e_plain);
        gguf_close(src);
        gguf_close(q);
    }
    quant_imatrix_free(&m);
    /* an imatrix whose size fits no tensor it names: refused, and neither OUT nor OUT.tmp exists */
    unlink(out);
    const int32_t short_nval[] = { 100 };
    n = legacy_imatrix(buf, 1, names, ncall, short_nval, vals);
    REQUIRE(quant_imatrix_parse(buf, n, &m, err, sizeof err) == 0);
    CHECK(quantize_with(in, out, "iq4", &m, &st, err, sizeof err) == -1);
    CHECK(strstr(err, "blk.0.ffn_gate_exps.weight has 100 values") != NULL);
    quant_imatrix_free(&m);
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp", out);
    CHECK(access(out, F_OK) != 0 && access(tmp, F_OK) != 0);
}

TEST(quantize_command_on_the_fixture_falls_back_and_reports)
{
    const char *fx = test_fixture("model/v4-tiny-f32.gguf");
    char cmd[2048], outp[8192], out[512];
    snprintf(out, sizeof out, "%s/fx-2bit.gguf", test_tmpdir());
    snprintf(cmd, sizeof cmd, "%s quantize -m %s -o %s --recipe 2bit --report --quiet 2>&1", test_flashbox_bin(), fx, out);
    REQUIRE(test_run_cmd(cmd, outp, sizeof outp) == 0);
    /* rows of 128: the routed experts fall back to IQ4_NL, and the result still runs */
    CHECK(strstr(outp, "(15 fell back") != NULL);
    /* the rate counts the quantized elements over the time spent quantizing them */
    double m_elems = 0, q_s = -1, rate = -1, copy_s = -1;
    const char *line = strstr(outp, "(quantizing ");
    CHECK(line && sscanf(line, "(quantizing %lf M elements in %lf s: %lf M elements/s; copying the other tensors %lf s)",
                         &m_elems, &q_s, &rate, &copy_s) == 4);
    CHECK(m_elems > 0 && q_s > 0 && copy_s >= 0);
    /* each printed rounded: the quotient is good to the rounding of its terms */
    if (q_s >= 0.01 && m_elems >= 0.1) CHECK_NEAR(rate, m_elems / q_s, rate * (0.006 / q_s + 0.06 / m_elems) + 0.06);
    double kl = -1;
    unsigned same = 0, pos = 0;
    const char *r = strstr(outp, "report: ");
    CHECK(r && sscanf(r, "report: %u positions: KL mean %lf max %*f nats, top-1 agreement %u", &pos, &kl, &same) == 3);
    CHECK(pos == 64 && kl > 0 && kl < 1.0 && same > 0);
    /* and per type: the experts' fallback and the Q8_0 matrices */
    r = strstr(outp, "report: only the 15 IQ4_NL tensors: ");
    CHECK(r && sscanf(r, "report: only the 15 IQ4_NL tensors: KL mean %lf", &kl) == 1 && kl > 0);
    CHECK(strstr(outp, "report: only the 43 Q8_0 tensors: KL mean ") != NULL);
    snprintf(cmd, sizeof cmd, "%s logits -m %s --tokens 1,2,3 --top 1 --backend ref 2>&1", test_flashbox_bin(), out);
    CHECK(test_run_cmd(cmd, outp, sizeof outp) == 0);
    /* usage errors: exit status 2 or 1, a message, no output file */
    snprintf(cmd, sizeof cmd, "%s quantize -m %s -o %s/x.gguf --recipe blk.*=q2_k 2>&1", test_flashbox_bin(), fx, test_tmpdir());
    CHECK(test_run_cmd(cmd, outp, sizeof outp) != 0 && strstr(outp, "not a named recipe"));
    snprintf(cmd, sizeof cmd, "%s quantize -m %s -o %s --recipe 4bit 2>&1", test_flashbox_bin(), fx, fx);
    CHECK(test_run_cmd(cmd, outp, sizeof outp) != 0 && strstr(outp, "would replace the input"));
}

TEST(quantize_refuses_a_rewrite_the_model_binder_would_reject)
{
    /* blk.*.attn_*=q8_0 also matches attn_compressor_ape, a vector the binder takes only as a
     * float type: refused before anything is written, naming the tensor, the rule and why */
    char in[512], out[512], rb[512], tmp[600], err[512];
    snprintf(in, sizeof in, "%s/m.gguf", test_tmpdir());
    snprintf(out, sizeof out, "%s/bad.gguf", test_tmpdir());
    snprintf(rb, sizeof rb, "%s/attn.txt", test_tmpdir());
    snprintf(tmp, sizeof tmp, "%s.tmp", out);
    REQUIRE(write_model(in, 256) == 0);
    REQUIRE(write_text(rb, "# all of attention\nblk.*.attn_*=q8_0\n") == 0);
    struct quantize_stats st;
    err[0] = 0;
    CHECK(quantize_with(in, out, rb, NULL, &st, err, sizeof err) == -1);
    if (!strstr(err, "rule 'blk.*.attn_*' (line 2) would write blk.") || !strstr(err, ".attn_compressor_ape.weight as Q8_0") ||
        !strstr(err, "type Q8_0 is not allowed here (expected F32, F16 or BF16)"))
        test_fail_at(__FILE__, __LINE__, "error: '%s'", err);
    CHECK(access(out, F_OK) != 0 && access(tmp, F_OK) != 0);
    /* the rule that keeps the vector a float type passes, and the result loads */
    REQUIRE(write_text(rb, "blk.*.attn_compressor_ape=f16\nblk.*.attn_*=q8_0\n") == 0);
    if (quantize_with(in, out, rb, NULL, &st, err, sizeof err)) test_fail_at(__FILE__, __LINE__, "%s", err);
    struct engine_options o;
    engine_options_default(&o);
    o.model_path = out;
    o.backend = ENGINE_BACKEND_REF;
    struct engine *e = NULL;
    if (engine_open(&e, &o, err, sizeof err)) test_fail_at(__FILE__, __LINE__, "%s", err);
    engine_close(e);
}

TEST(quantize_names_a_non_finite_source_value_and_writes_nothing)
{
    char in[512], out[512], tmp[600], err[512];
    snprintf(in, sizeof in, "%s/m.gguf", test_tmpdir());
    snprintf(out, sizeof out, "%s/nan.gguf", test_tmpdir());
    snprintf(tmp, sizeof tmp, "%s.tmp", out);
    REQUIRE(write_model(in, 256) == 0);
    /* a NaN at row 1, column 7 of one expert tensor (F32 in this model), another at row 2 */
    struct gguf_file *f;
    REQUIRE(gguf_open(&f, in, err, sizeof err) == 0);
    const struct gguf_tensor *t = gguf_find_tensor(f, "blk.1.ffn_up_exps.weight");
    REQUIRE(t && t->type == GGUF_TYPE_F32);
    const long at = (long)(f->data_offset + t->offset + 4 * (t->ne[0] + 7)), at2 = at + 4 * (long)t->ne[0];
    gguf_close(f);
    FILE *fp = fopen(in, "r+b");
    REQUIRE(fp);
    const float nan = NAN;
    CHECK(fseek(fp, at, SEEK_SET) == 0 && fwrite(&nan, 4, 1, fp) == 1);
    CHECK(fseek(fp, at2, SEEK_SET) == 0 && fwrite(&nan, 4, 1, fp) == 1);
    fclose(fp);
    struct quantize_stats st;
    err[0] = 0;
    CHECK(quantize_with(in, out, "2bit", NULL, &st, err, sizeof err) == -1);
    if (!strstr(err, "blk.1.ffn_up_exps.weight: row 1, column 7 is nan: IQ2_XXS cannot hold it"))
        test_fail_at(__FILE__, __LINE__, "error: '%s'", err);
    CHECK(access(out, F_OK) != 0 && access(tmp, F_OK) != 0);
    /* the first bad row is named whatever the threads: rows 0-2 in one chunk, one row a thread */
    static struct quant_recipe r;
    REQUIRE(quant_recipe_load("2bit", &r, err, sizeof err) == 0);
    for (uint32_t n = 1; n <= 3; n += 2) {
        const struct quantize_opts o = { .in = in, .out = out, .recipe = &r, .n_threads = n, .chunk_elems = 3 * 256 };
        err[0] = 0;
        CHECK(quantize_model(&o, &st, err, sizeof err) == -1);
        if (!strstr(err, "blk.1.ffn_up_exps.weight: row 1, column 7 is nan: IQ2_XXS cannot hold it"))
            test_fail_at(__FILE__, __LINE__, "%u threads: '%s'", n, err);
        CHECK(access(out, F_OK) != 0 && access(tmp, F_OK) != 0);
    }
}

/* Nonzero where the two files differ in length or in any byte (or one cannot be read). */
static int files_differ(const char *a, const char *b)
{
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    int differ = !fa || !fb;
    while (!differ) {
        const int ca = fgetc(fa), cb = fgetc(fb);
        differ = ca != cb;
        if (ca == EOF) break;
    }
    if (fa) fclose(fa);
    if (fb) fclose(fb);
    return differ;
}

TEST(quantize_threads_write_the_same_bytes_as_one_thread)
{
    char in[512], one[512], many[512], err[512], cmd[2048], outp[4096];
    snprintf(in, sizeof in, "%s/m.gguf", test_tmpdir());
    snprintf(one, sizeof one, "%s/one.gguf", test_tmpdir());
    snprintf(many, sizeof many, "%s/many.gguf", test_tmpdir());
    REQUIRE(write_model(in, 256) == 0);
    /* the command: 2bit (IQ2_XXS gate/up, Q2_K down, Q8_0 elsewhere) on 1 and on 3 threads */
    snprintf(cmd, sizeof cmd, "%s quantize -m %s -o %s --recipe 2bit --threads 1 --quiet 2>&1", test_flashbox_bin(), in, one);
    REQUIRE(test_run_cmd(cmd, outp, sizeof outp) == 0);
    CHECK(strstr(outp, " on 1 threads ") != NULL);
    snprintf(cmd, sizeof cmd, "%s quantize -m %s -o %s --recipe 2bit --threads 3 --quiet 2>&1", test_flashbox_bin(), in, many);
    REQUIRE(test_run_cmd(cmd, outp, sizeof outp) == 0);
    CHECK(strstr(outp, " on 3 threads ") != NULL);
    CHECK(files_differ(one, many) == 0);
    /* chunks smaller than a tensor (3 rows of 256: one row per thread, and a short last chunk),
     * an imatrix whose weights differ per expert, and pattern files of IQ2_XS, IQ3_XXS, IQ2_S and Q3_K,
     * and of IQ1_S and IQ1_M (two layers: the 1-bit search is the slowest, most of all under ASan) */
    static float vals[256 * 8];
    for (int i = 0; i < 256 * 8; i++) vals[i] = 0.01f + (float)((i * 37) % 101) * (float)(1 + i / 256);
    const char *names[] = { "blk.0.ffn_gate_exps.weight" };
    const int32_t ncall[] = { 1 }, nval[] = { 256 * 8 };
    static uint8_t ibuf[16384];
    struct quant_imatrix m;
    REQUIRE(quant_imatrix_parse(ibuf, legacy_imatrix(ibuf, 1, names, ncall, nval, vals), &m, err, sizeof err) == 0);
    static const char *const recipes[] = { "2bit", "blk.*.ffn_gate_exps=iq2_xs\nblk.0.ffn_up_exps=iq3_xxs\nblk.*.ffn_up_exps=iq2_s\nblk.*.ffn_*_exps=q3_k\n",
                                            "blk.0.ffn_*_exps=iq1_s\nblk.1.ffn_*_exps=iq1_m\n" };
    for (size_t k = 0; k < sizeof recipes / sizeof recipes[0]; k++) {
        static struct quant_recipe r;
        if (k < 1) REQUIRE(quant_recipe_load(recipes[k], &r, err, sizeof err) == 0);
        else REQUIRE(parse(recipes[k], &r, err, sizeof err) == 0);
        struct quantize_stats st;
        struct quantize_opts o = { .in = in, .out = one, .recipe = &r, .imatrix = &m, .n_threads = 1 };
        REQUIRE(quantize_model(&o, &st, err, sizeof err) == 0);
        CHECK(st.n_imatrix == 1 && st.n_threads == 1);
        o = (struct quantize_opts){ .in = in, .out = many, .recipe = &r, .imatrix = &m, .n_threads = 3, .chunk_elems = 3 * 256 };
        REQUIRE(quantize_model(&o, &st, err, sizeof err) == 0);
        CHECK(st.n_threads == 3);
        if (files_differ(one, many)) test_fail_at(__FILE__, __LINE__, "recipe %zu: 3 threads wrote other bytes than 1", k);
    }
    quant_imatrix_free(&m);
    /* a count that is not one */
    snprintf(cmd, sizeof cmd, "%s quantize -m %s -o %s --recipe 2bit --threads 0 2>&1", test_flashbox_bin(), in, many);
    CHECK(test_run_cmd(cmd, outp, sizeof outp) == 2 && strstr(outp, "--threads: '0' is not a count"));
}
