/* deepseek4 binding: hyper-parameters from the fixture and from generated files, and
 * variants that must be rejected with a message naming the key or tensor. */
#include "engine/model/model.h"
#include "tests/gguf_edit.h"
#include "tests/harness.h"
#include "tools/mkmodel.h"

#include <inttypes.h>
#include <stdlib.h>

TEST(model_binds_the_fixture_with_its_hyper_parameters)
{
    struct model *m;
    char err[512];
    REQUIRE(model_open(&m, test_fixture("model/v4-tiny-mixed.gguf"), err, sizeof err) == 0);
    const struct model_hparams *hp = &m->hp;
    CHECK_EQ_INT(hp->n_embd, 128);
    CHECK_EQ_INT(hp->n_layer, 5);
    CHECK(hp->ratio[0] == 0 && hp->ratio[2] == 4 && hp->ratio[3] == 128 && hp->ratio[4] == 4);
    CHECK_EQ_INT(hp->window, 16);
    CHECK_EQ_INT(hp->ix_topk, 4);
    CHECK_EQ_INT(hp->n_hash_layer, 3);
    CHECK_NEAR(hp->expert_weights_scale, 1.5, 0);
    CHECK(m->layers[2].ix_q_b != NULL && m->layers[3].ix_q_b == NULL && m->layers[0].comp_kv == NULL);
    CHECK(m->layers[2].tid2eid != NULL && m->layers[3].tid2eid == NULL && m->layers[3].exp_probs_b != NULL);
    CHECK(m->layers[0].ffn_gate_exps->type == GGUF_TYPE_MXFP4);
    CHECK_EQ_INT(model_expert_bytes(m, 0), 3 * 128 * 128 / 32 * 17);
    model_close(m);
}

static void make_tiny(char *path, size_t len)
{
    snprintf(path, len, "%s/tiny.gguf", test_tmpdir());
    struct mkmodel_config c;
    mkmodel_defaults(&c);
    char err[256];
    if (mkmodel_write(&c, path, err, sizeof err)) test_fail_at(__FILE__, __LINE__, "mkmodel: %s", err);
}

struct variant {
    const char *key;          /* metadata key to replace */
    const char *str;          /* its new string value, or NULL */
    int64_t u;                /* or its new integer value */
    const char *tensor;       /* tensor to edit */
    int drop;                 /* drop it */
    enum gguf_type type;      /* new type when type_set */
    int type_set;
    int swap_dims;            /* swap ne[0] and ne[1] */
    int32_t *data;            /* replacement data */
};

static int on_kv(const struct gguf_kv *kv, struct gguf_writer *w, void *user)
{
    const struct variant *v = user;
    if (!v->key || strcmp(kv->key, v->key)) return 0;
    if (v->str) gguf_writer_add_str(w, kv->key, v->str);
    else if (kv->type == GGUF_VAL_ARRAY) {
        int32_t r[5] = { 0, 0, 3, 128, 4 };
        gguf_writer_add_arr(w, kv->key, GGUF_VAL_INT32, r, 5);
    } else gguf_writer_add_u32(w, kv->key, (uint32_t)v->u);
    return 1;
}

static int on_tensor(char *name, enum gguf_type *type, uint32_t *n_dims, uint64_t *ne, const void **data, void *user)
{
    const struct variant *v = user;
    (void)n_dims;
    if (!v->tensor || strcmp(name, v->tensor)) return 0;
    if (v->drop) return 1;
    if (v->type_set) *type = v->type;
    if (v->swap_dims) {
        uint64_t t = ne[0];
        ne[0] = ne[1];
        ne[1] = t;
    }
    if (v->data) *data = v->data;
    return 0;
}

static void expect_rejected(struct variant v, const char *needle, int line)
{
    char src[512], dst[512], err[512] = "";
    make_tiny(src, sizeof src);
    snprintf(dst, sizeof dst, "%s/variant.gguf", test_tmpdir());
    struct gguf_edit e = { on_kv, on_tensor, &v };
    if (gguf_edit_copy(src, dst, &e)) {
        test_fail_at(__FILE__, line, "could not write the variant");
        return;
    }
    struct model *m;
    if (model_open(&m, dst, err, sizeof err) == 0) {
        test_fail_at(__FILE__, line, "variant accepted (expected \"%s\")", needle);
        model_close(m);
    } else if (!strstr(err, needle)) {
        test_fail_at(__FILE__, line, "message \"%s\" lacks \"%s\"", err, needle);
    }
}

TEST(model_accepts_the_unedited_copy)
{
    char src[512], dst[512], err[512];
    make_tiny(src, sizeof src);
    snprintf(dst, sizeof dst, "%s/copy.gguf", test_tmpdir());
    struct variant v = { 0 };
    struct gguf_edit e = { on_kv, on_tensor, &v };
    REQUIRE(gguf_edit_copy(src, dst, &e) == 0);
    struct model *m;
    CHECK(model_open(&m, dst, err, sizeof err) == 0);
    if (!test_failed()) model_close(m);
}

TEST(model_rejects_another_architecture)
{
    expect_rejected((struct variant){ .key = "general.architecture", .str = "deepseek2" },
                    "general.architecture: \"deepseek2\", expected \"deepseek4\"", __LINE__);
}

TEST(model_rejects_compress_ratio_3)
{
    expect_rejected((struct variant){ .key = "deepseek4.attention.compress_ratios" }, "compress_ratios[2]: 3", __LINE__);
}

TEST(model_rejects_a_gating_function_other_than_sqrt_softplus)
{
    expect_rejected((struct variant){ .key = "deepseek4.expert_gating_func", .u = 2 }, "expert_gating_func: 2", __LINE__);
}

TEST(model_rejects_a_missing_key)
{
    expect_rejected((struct variant){ .key = "deepseek4.attention.q_lora_rank", .str = "x" },
                    "deepseek4.attention.q_lora_rank: expected an unsigned", __LINE__);
}

TEST(model_rejects_a_missing_tensor)
{
    expect_rejected((struct variant){ .tensor = "blk.2.indexer.proj.weight", .drop = 1 },
                    "blk.2.indexer.proj.weight: missing", __LINE__);
}

TEST(model_rejects_a_wrong_shape_naming_expected_and_actual)
{
    expect_rejected((struct variant){ .tensor = "blk.1.attn_q_b.weight", .swap_dims = 1 },
                    "blk.1.attn_q_b.weight: shape [256, 128, 1], expected [128, 256, 1]", __LINE__);
}

TEST(model_rejects_a_disallowed_type)
{
    expect_rejected((struct variant){ .tensor = "blk.0.attn_norm.weight", .type = GGUF_TYPE_I32, .type_set = 1 },
                    "blk.0.attn_norm.weight: type I32 is not allowed", __LINE__);
}

TEST(model_rejects_tid2eid_entries_outside_the_experts)
{
    static int32_t bad[2 * 512];
    for (int i = 0; i < 2 * 512; i++) bad[i] = i % 8;
    bad[777] = 8;
    expect_rejected((struct variant){ .tensor = "blk.1.ffn_gate_tid2eid.weight", .data = bad },
                    "blk.1.ffn_gate_tid2eid.weight: entry 777 is expert 8", __LINE__);
}

/* F16 and BF16 vectors bind as F32 holding exactly their values: every tensor of the narrow
 * file binds to the bytes of the F32 file with the same rounded values, and the widened
 * ones own their copy (the mapping is left alone). */
TEST(model_widens_f16_and_bf16_vectors_to_f32_exactly)
{
    char src[512], wide[512], narrow[512], err[512];
    make_tiny(src, sizeof src);
    snprintf(wide, sizeof wide, "%s/rounded.gguf", test_tmpdir());
    snprintf(narrow, sizeof narrow, "%s/narrow.gguf", test_tmpdir());
    int n = gguf_edit_narrow_vectors(src, wide, false);
    REQUIRE(n > 20 && gguf_edit_narrow_vectors(src, narrow, true) == n);
    struct gguf_file *f;
    REQUIRE(gguf_open(&f, narrow, err, sizeof err) == 0);
    const struct gguf_tensor *t = gguf_find_tensor(f, "blk.0.hc_attn_fn.weight");
    const struct gguf_tensor *u = gguf_find_tensor(f, "blk.0.attn_norm.weight");
    CHECK(t && t->type == GGUF_TYPE_F16 && u && u->type == GGUF_TYPE_BF16); /* the file really is narrow */
    gguf_close(f);
    struct model *a, *b;
    REQUIRE(model_open(&a, wide, err, sizeof err) == 0);
    if (model_open(&b, narrow, err, sizeof err)) {
        test_fail_at(__FILE__, __LINE__, "%s", err);
        model_close(a);
        return;
    }
    CHECK_EQ_INT(a->file->n_tensors, b->file->n_tensors);
    int owned = 0;
    for (uint64_t i = 0; i < a->file->n_tensors && i < b->file->n_tensors; i++) {
        const struct gguf_tensor *x = &a->file->tensors[i], *y = &b->file->tensors[i];
        owned += y->owned != NULL;
        if (strcmp(x->name, y->name) || x->type != y->type || x->nbytes != y->nbytes || memcmp(x->data, y->data, x->nbytes)) {
            test_fail_at(__FILE__, __LINE__, "%s: %s %" PRIu64 " bytes (F32 file) vs %s %s %" PRIu64 " bytes, or other values",
                         x->name, gguf_type_name(x->type), x->nbytes, y->name, gguf_type_name(y->type), y->nbytes);
            break;
        }
    }
    CHECK_EQ_INT(owned, n);
    CHECK(b->layers[0].hc_attn_fn->type == GGUF_TYPE_F32 && b->layers[2].ix_comp_ape->type == GGUF_TYPE_F32 &&
          b->output_hc_fn->type == GGUF_TYPE_F32 && b->layers[3].exp_probs_b->type == GGUF_TYPE_F32);
    model_close(a);
    model_close(b);
}

TEST(model_rejects_a_quantized_vector_naming_the_types_it_takes)
{
    expect_rejected((struct variant){ .tensor = "blk.3.hc_ffn_fn.weight", .type = GGUF_TYPE_Q8_0, .type_set = 1 },
                    "blk.3.hc_ffn_fn.weight: type Q8_0 is not allowed here (expected F32, F16 or BF16)", __LINE__);
}
