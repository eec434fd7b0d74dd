/* The indexer kernels (indexer.comp, indexer_texel.comp, indexer_merge.comp) against a
 * direct evaluation and the reference's top-k: every chunk and merge width, stored key types,
 * texel and buffer reads, ties. Skipped without any Vulkan device. */
#include <math.h>
#include <stdlib.h>

#include "engine/kv_store.h"
#include "engine/ref/ref_ops.h"
#include "engine/vulkan/vk_internal.h"
#include "tests/vk_fixture.h"
#include "shaders/abi.h"

/* The indexer's scores and top-k selection against a direct evaluation and ref_topk, for
 * n_tok tokens from pos0, in chunks of `chunk` entries merged `group` lists at a time (every
 * level vk_op_indexer_level records); the keys repeat every `distinct` rows (0: all
 * distinct) so that scores tie. */
static void check_indexer_kv_lists(struct vk_fixture *f, uint32_t topk, uint32_t pos0, uint32_t n_tok, uint32_t distinct,
                                   enum engine_kv_type kv, uint32_t chunk, uint32_t group, uint64_t *lists_out,
                                   size_t lists_len)
{
    const uint32_t IH = 4, D = 32, n_keys = (pos0 + n_tok) / 4 + 1, KW = kv_entry_words(kv, D);
    uint64_t rng = 41, pairs[2];
    const uint32_t n_levels = vk_indexer_levels((pos0 + n_tok) / 4, topk, chunk, group, pairs);
    float *q = vk_test_rand_vec(&rng, (size_t)n_tok * IH * D, 1, 0), *w = vk_test_rand_vec(&rng, (size_t)n_tok * 7, 1, 0);
    float *keys = vk_test_rand_vec(&rng, (size_t)n_keys * D, 1, 0);
    if (distinct)
        for (uint32_t k = distinct; k < n_keys; k++) memcpy(keys + (size_t)k * D, keys + (size_t)(k % distinct) * D, D * 4);
    /* stored as kv says; the direct evaluation reads the stored values back */
    uint32_t *stored = malloc((size_t)n_keys * KW * 4);
    for (uint32_t k = 0; k < n_keys; k++) {
        kv_pack(kv, keys + (size_t)k * D, D, stored + (size_t)k * KW);
        kv_unpack(kv, stored + (size_t)k * KW, D, keys + (size_t)k * D);
    }
    int32_t *sel = calloc((size_t)n_tok * topk, sizeof *sel), *idx = malloc(topk * sizeof *idx);
    float *score = malloc(n_keys * sizeof *score);
    struct vk_span sq, sw, sk, sl, ssel;
    /* the per-token head weights sit at column 2 of rows of 7 (as in the projection rows) */
    struct abi_indexer_push p = { .n_head = IH, .dim = D, .topk = topk, .pos0 = pos0, .n_tok = n_tok, .w_off = 2, .w_tstride = 7,
                                  .scale = 0.1f, .kv = (uint32_t)kv, .key_words = KW, .chunk = chunk };
    const struct vk_span *b[5] = { &sq, &sw, &sk, &sl, &ssel };
    const size_t sel_bytes = (size_t)n_tok * topk * sizeof *sel;
    int rc = vk_fixture_put(f, q, (size_t)n_tok * IH * D * 4, &sq) || vk_fixture_put(f, w, (size_t)n_tok * 7 * 4, &sw) ||
             vk_fixture_put(f, stored, (size_t)n_keys * KW * 4, &sk) ||
             vk_fixture_put(f, NULL, (size_t)n_tok * (pairs[0] + pairs[1]) * 8 + 8, &sl) ||
             vk_fixture_put(f, NULL, sel_bytes, &ssel) || vk_recorder_begin(f->rec, f->err, sizeof f->err);
    for (uint32_t lv = 0; lv <= n_levels && !rc; lv++) {
        if (lv) vk_recorder_barrier(f->rec);
        rc = vk_op_indexer_level(f->rec, &f->ops, b, &p, group, pairs, n_tok * pairs[0], lv, n_levels, f->err, sizeof f->err);
    }
    rc = rc || vk_recorder_submit(f->rec, f->err, sizeof f->err) || vk_span_download(f->d, &ssel, 0, sel, sel_bytes, f->err, sizeof f->err);
    /* the lists hold (order key, index) pairs: the scores' bits */
    if (lists_out && !rc) {
        const size_t n = (size_t)n_tok * (pairs[0] + pairs[1]) < lists_len ? (size_t)n_tok * (pairs[0] + pairs[1]) : lists_len;
        rc = vk_span_download(f->d, &sl, 0, lists_out, n * 8, f->err, sizeof f->err);
    }
    if (rc) test_fail_at(__FILE__, __LINE__, "%s", f->err);
    for (uint32_t t = 0; t < n_tok && !rc; t++) {
        uint32_t n_vis = (pos0 + t + 1) / 4, k = n_vis < topk ? n_vis : topk;
        for (uint32_t e = 0; e < n_vis; e++) { /* the kernel's float order, so that ties are ties */
            float s = 0;
            for (uint32_t h = 0; h < IH; h++) {
                float dot = 0;
                for (uint32_t i = 0; i < D; i++) dot += q[((size_t)t * IH + h) * D + i] * keys[(size_t)e * D + i];
                s += w[t * 7 + 2 + h] * 0.1f * fmaxf(dot, 0);
            }
            score[e] = s;
        }
        ref_topk(score, n_vis, k, idx);
        for (uint32_t j = 0; j < k; j++)
            if (sel[t * topk + j] != idx[j]) {
                test_fail_at(__FILE__, __LINE__, "indexer (kv %s, chunks of %u merged %u at a time, %u levels) top-%u of %u "
                             "(repeating every %u), token %u: rank %u is %d, expected %d", engine_kv_name(kv), chunk, group,
                             n_levels, topk, n_vis, distinct, t, j, sel[t * topk + j], idx[j]);
                break;
            }
    }
    free(q); free(w); free(keys); free(sel); free(idx); free(score); free(stored);
}

static void check_indexer_kv(struct vk_fixture *f, uint32_t topk, uint32_t pos0, uint32_t n_tok, uint32_t distinct,
                             enum engine_kv_type kv, uint32_t chunk, uint32_t group)
{
    check_indexer_kv_lists(f, topk, pos0, n_tok, distinct, kv, chunk, group, NULL, 0);
}

static void check_indexer(struct vk_fixture *f, uint32_t topk, uint32_t pos0, uint32_t n_tok, uint32_t distinct)
{
    check_indexer_kv(f, topk, pos0, n_tok, distinct, ENGINE_KV_F32, ABI_INDEXER_CHUNK, ABI_INDEXER_GROUP);
}

TEST(vk_indexer_selects_the_reference_top_k)
{
    struct vk_fixture f;
    if (vk_fixture_open(&f)) return;
    check_indexer(&f, 5, 70, 3, 0);
    check_indexer(&f, 40, 70, 3, 0); /* every visible entry */
    vk_fixture_close(&f);
}

/* Chunks and merges small enough that short inputs run many levels: chunks of one entry
 * (lists of one), of 4 merged in pairs (10 levels for 70 entries), a top-k larger and
 * smaller than a chunk, ties across chunk boundaries, and the largest chunk and merge. */
TEST(vk_indexer_selects_the_same_top_k_for_any_chunk_and_merge_width)
{
    struct vk_fixture f;
    if (vk_fixture_open(&f)) return;
    static const uint32_t shapes[][2] = { { 1, 2 }, { 1, 3 }, { 4, 2 }, { 8, 5 }, { 256, 16 } };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        const uint32_t c = shapes[i][0], g = shapes[i][1];
        check_indexer_kv(&f, 5, 270, 3, 0, ENGINE_KV_F32, c, g);
        check_indexer_kv(&f, 40, 270, 3, 0, ENGINE_KV_F32, c, g);
        check_indexer_kv(&f, 6, 290, 2, 7, ENGINE_KV_F32, c, g); /* ties */
        check_indexer_kv(&f, 70, 270, 2, 0, ENGINE_KV_F32, c, g); /* every visible entry */
    }
    vk_fixture_close(&f);
}

/* Keys stored in f16 and FP8 (kv_store.h): the kernel unpacks them to the values the host
 * packed, so its selection is the reference's over those values, ties included. */
TEST(vk_indexer_reads_f16_and_fp8_keys_as_stored)
{
    struct vk_fixture f;
    if (vk_fixture_open(&f)) return;
    for (int kv = ENGINE_KV_F16; kv <= ENGINE_KV_FP8; kv++) {
        check_indexer_kv(&f, 5, 70, 3, 0, (enum engine_kv_type)kv, ABI_INDEXER_CHUNK, ABI_INDEXER_GROUP);
        check_indexer_kv(&f, 6, 90, 2, 7, (enum engine_kv_type)kv, 4, 2); /* ties */
    }
    vk_fixture_close(&f);
}

/* The CPU-driver layout scores through texel views (indexer_texel.comp, float32 keys) and
 * the GPU one through storage buffers (indexer.comp): both select the reference's top-k,
 * and their chunk lists (each entry's score bits beside its index) are bitwise the same,
 * one chunk's lists and several merged, ties included. */
TEST(vk_indexer_from_texels_selects_what_the_buffer_kernel_does_bit_for_bit)
{
    struct vk_fixture f;
    if (vk_fixture_open(&f)) return;
    static const uint32_t shapes[][5] = { /* topk, pos0, n_tok, distinct, chunk */
        { 5, 70, 3, 0, 4 }, { 6, 290, 2, 7, 8 }, { 40, 270, 3, 0, 64 }, { 300, 6000, 2, 97, 64 },
    };
    enum { LISTS = 8192 };
    uint64_t *lists[2] = { calloc(LISTS, 8), calloc(LISTS, 8) };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0] && lists[0] && lists[1]; i++) {
        const uint32_t *c = shapes[i];
        for (int k = 0; k < 2; k++) {
            f.ops.layout = k ? VK_MATVEC_LANES : VK_MATVEC_SUBGROUP;
            memset(lists[k], 0, LISTS * 8);
            check_indexer_kv_lists(&f, c[0], c[1], c[2], c[3], ENGINE_KV_F32, c[4], 2, lists[k], LISTS);
        }
        if (memcmp(lists[0], lists[1], LISTS * 8))
            test_fail_at(__FILE__, __LINE__, "top-%u at %u, chunks of %u: the texel kernel's lists differ from the buffer kernel's",
                         c[0], c[1], c[4]);
    }
    CHECK(lists[0] && lists[1]);
    CHECK(f.ops.indexer_texel.pipe != VK_NULL_HANDLE); /* the texel kernel ran (it is built on first use) */
    free(lists[0]);
    free(lists[1]);
    vk_fixture_close(&f);
}

/* Over a thousand entries (two merge levels of the default chunk and width) with ties at
 * the k-th, which go to the lower index. */
TEST(vk_indexer_selects_the_reference_top_k_of_over_a_thousand_with_ties)
{
    struct vk_fixture f;
    if (vk_fixture_open(&f)) return;
    check_indexer(&f, 300, 6000, 2, 0);
    check_indexer(&f, 300, 6000, 2, 97);
    check_indexer(&f, 400, 4000, 1, 13);
    vk_fixture_close(&f);
}
