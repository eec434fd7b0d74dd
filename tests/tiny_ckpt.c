/* The tiny official-format checkpoint generator. See tiny_ckpt.h. */
#include "tests/tiny_ckpt.h"
#include "engine/model/gguf.h"
#include "engine/model/quant.h"

#include <jansson.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* spec §6.1 */
enum {
    V = TINY_VOCAB, D = TINY_EMBD, NL = TINY_LAYERS, H = 2, HD = 128, ROPE = 64, QR = 128, OG = 2, OR = 128,
    WIN = 16, IXH = 8, IXD = 128, IXK = 4, NEU = 2, FF = 128, NHASH = 3, HC = 4,
    MIX = (2 + HC) * HC,
};
static const int ratios[NL + 1] = { 0, 0, 4, 128, 4, 0 };

struct otensor {             /* one official tensor */
    char name[200];
    const char *dtype;
    int nd;
    uint64_t shape[2];
    uint8_t *data;
    uint64_t nbytes;
};

struct gen {
    uint64_t rng;
    enum tiny_variant fault;
    int n_exp;                /* routed experts */
    struct otensor *t;
    size_t n, cap;
    struct gguf_writer *ref;  /* NULL when no reference is wanted */
    void **keep;              /* reference buffers, freed after writing */
    size_t n_keep, cap_keep;
    bool oom;
};

static double urand(struct gen *g)
{
    g->rng ^= g->rng >> 12;
    g->rng ^= g->rng << 25;
    g->rng ^= g->rng >> 27;
    return (double)((g->rng * 2685821657736338717ull) >> 11) * (1.0 / 9007199254740992.0);
}

static double nrand(struct gen *g)
{
    double u = urand(g), v = urand(g);
    return sqrt(-2.0 * log(u + 1e-300)) * cos(6.283185307179586 * v);
}

static void *keep(struct gen *g, void *p)
{
    if (!p) {
        g->oom = true;
        return NULL;
    }
    if (g->n_keep == g->cap_keep) {
        size_t cap = g->cap_keep ? 2 * g->cap_keep : 256;
        void **k = realloc(g->keep, cap * sizeof *k);
        if (!k) {
            g->oom = true;
            free(p);
            return NULL;
        }
        g->keep = k;
        g->cap_keep = cap;
    }
    g->keep[g->n_keep++] = p;
    return p;
}

/* Takes ownership of data. */
static void add_official(struct gen *g, const char *name, const char *dtype, int nd, uint64_t s0, uint64_t s1,
                         void *data, uint64_t nbytes)
{
    if (!data || g->oom) {
        g->oom = true;
        free(data);
        return;
    }
    if (g->n == g->cap) {
        size_t cap = g->cap ? 2 * g->cap : 256;
        struct otensor *t = realloc(g->t, cap * sizeof *t);
        if (!t) {
            g->oom = true;
            free(data);
            return;
        }
        g->t = t;
        g->cap = cap;
    }
    struct otensor *t = &g->t[g->n++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->dtype = dtype;
    t->nd = nd;
    t->shape[0] = s0;
    t->shape[1] = s1;
    t->data = data;
    t->nbytes = nbytes;
}

/* Reference tensor (F32 values or I32), GGUF shape innermost first. Takes ownership. */
static void add_ref(struct gen *g, const char *name, enum gguf_type type, uint32_t nd, uint64_t ne0, uint64_t ne1,
                    uint64_t ne2, void *data)
{
    if (!keep(g, data) || !g->ref) return;
    uint64_t ne[3] = { ne0, ne1, ne2 };
    if (gguf_writer_add_tensor(g->ref, name, type, nd, ne, data)) g->oom = true;
}

/* ---- quantizers, from the spec's formulas ---- */

/* Rounds a (|a| <= 448 after scaling) to the nearest e4m3 value; returns the code. */
static uint8_t e4m3_round(double v, double *value)
{
    uint8_t sign = v < 0 ? 0x80 : 0;
    double a = fabs(v), r;
    uint8_t code;
    if (a < ldexp(1.0, -6)) {
        double m = nearbyint(a * 512.0); /* subnormal grid 2^-9 */
        if (m >= 8) {
            code = 1 << 3;
            r = ldexp(1.0, -6);
        } else {
            code = (uint8_t)m;
            r = m / 512.0;
        }
    } else {
        int e;
        frexp(a, &e);
        int E = e - 1;
        double m = nearbyint((a / ldexp(1.0, E) - 1.0) * 8.0);
        if (m == 8) {
            m = 0;
            E++;
        }
        if (E > 8 || (E == 8 && m > 6)) { /* saturate at 448 = 1.75 * 2^8 */
            E = 8;
            m = 6;
        }
        code = (uint8_t)((E + 7) << 3 | (int)m);
        r = (1.0 + m / 8.0) * ldexp(1.0, E);
    }
    *value = sign ? -r : r;
    return code | sign;
}

static uint8_t e2m1_round(double v, double *value)
{
    static const double mags[8] = { 0, 0.5, 1, 1.5, 2, 3, 4, 6 };
    double a = fabs(v);
    int best = 0;
    for (int i = 1; i < 8; i++)
        if (fabs(mags[i] - a) < fabs(mags[best] - a)) best = i;
    *value = v < 0 ? -mags[best] : mags[best];
    return (uint8_t)((v < 0 ? 8 : 0) | best);
}

/* e8m0 exponent of the smallest power of two s with amax / s <= qmax. */
static int pow2_scale(double amax, double qmax)
{
    if (amax <= 0) return -20;
    return (int)ceil(log2(amax / qmax));
}

/* FP8 weight [rows][cols] with 128x128 block scales: stem.weight + stem.scale. Returns the
 * dequantized values [rows][cols]. */
static float *fp8_matrix(struct gen *g, const char *stem, uint64_t rows, uint64_t cols, double std)
{
    const uint64_t br = (rows + 127) / 128, bc = (cols + 127) / 128;
    double *x = malloc(rows * cols * sizeof *x);
    float *val = malloc(rows * cols * sizeof *val);
    uint8_t *q = malloc(rows * cols), *sc = malloc(br * bc);
    if (!x || !val || !q || !sc) {
        free(x), free(val), free(q), free(sc);
        g->oom = true;
        return NULL;
    }
    for (uint64_t i = 0; i < rows * cols; i++) x[i] = nrand(g) * std;
    for (uint64_t bi = 0; bi < br; bi++)
        for (uint64_t bj = 0; bj < bc; bj++) {
            double amax = 0;
            for (uint64_t r = bi * 128; r < rows && r < bi * 128 + 128; r++)
                for (uint64_t c = bj * 128; c < cols && c < bj * 128 + 128; c++) amax = fmax(amax, fabs(x[r * cols + c]));
            int se = pow2_scale(amax, 448.0);
            sc[bi * bc + bj] = (uint8_t)(se + 127);
            for (uint64_t r = bi * 128; r < rows && r < bi * 128 + 128; r++)
                for (uint64_t c = bj * 128; c < cols && c < bj * 128 + 128; c++) {
                    double v;
                    q[r * cols + c] = e4m3_round(ldexp(x[r * cols + c], -se), &v);
                    val[r * cols + c] = (float)ldexp(v, se);
                }
        }
    free(x);
    char name[200];
    snprintf(name, sizeof name, "%s.weight", stem);
    add_official(g, name, "F8_E4M3", 2, rows, cols, q, rows * cols);
    snprintf(name, sizeof name, "%s.scale", stem);
    add_official(g, name, "F8_E8M0", 2, br, bc, sc, br * bc);
    return val;
}

/* FP4 expert weight [rows][cols]: I8 [rows][cols/2] (column 2j low nibble, 2j+1 high) and
 * e8m0 scales [rows][cols/32]. Returns the dequantized values. */
static float *fp4_matrix(struct gen *g, const char *stem, uint64_t rows, uint64_t cols, double std)
{
    float *val = malloc(rows * cols * sizeof *val);
    uint8_t *q = calloc(rows * cols / 2, 1), *sc = malloc(rows * cols / 32);
    double x[32];
    if (!val || !q || !sc) {
        free(val), free(q), free(sc);
        g->oom = true;
        return NULL;
    }
    for (uint64_t r = 0; r < rows; r++)
        for (uint64_t b = 0; b < cols / 32; b++) {
            double amax = 0;
            for (int j = 0; j < 32; j++) amax = fmax(amax, fabs(x[j] = nrand(g) * std));
            int se = pow2_scale(amax, 6.0);
            sc[r * (cols / 32) + b] = (uint8_t)(se + 127);
            for (int j = 0; j < 32; j++) {
                uint64_t c = b * 32 + (uint64_t)j;
                double v;
                uint8_t code = e2m1_round(ldexp(x[j], -se), &v);
                q[r * (cols / 2) + c / 2] |= (uint8_t)(c & 1 ? code << 4 : code);
                val[r * cols + c] = (float)ldexp(v, se);
            }
        }
    char name[200];
    snprintf(name, sizeof name, "%s.weight", stem);
    add_official(g, name, "I8", 2, rows, cols / 2, q, rows * cols / 2);
    snprintf(name, sizeof name, "%s.scale", stem);
    add_official(g, name, "F8_E8M0", 2, rows, cols / 32, sc, rows * cols / 32);
    return val;
}

/* F32 or BF16 tensor of shape [s0] (nd 1) or [s0][s1]; values mean + std * N(0,1), rounded
 * to BF16 when bf16. Returns the stored values as float. */
static float *plain(struct gen *g, const char *name, bool bf16, int nd, uint64_t s0, uint64_t s1, double mean, double std)
{
    const uint64_t n = nd == 1 ? s0 : s0 * s1;
    float *val = malloc(n * sizeof *val);
    uint8_t *raw = malloc(n * (bf16 ? 2 : 4));
    if (!val || !raw) {
        free(val), free(raw);
        g->oom = true;
        return NULL;
    }
    for (uint64_t i = 0; i < n; i++) {
        float v = (float)(mean + std * nrand(g));
        if (bf16) {
            uint16_t h = f32_to_bf16(v);
            v = bf16_to_f32(h);
            memcpy(raw + 2 * i, &h, 2);
        } else {
            memcpy(raw + 4 * i, &v, 4);
        }
        val[i] = v;
    }
    add_official(g, name, bf16 ? "BF16" : "F32", nd, s0, nd == 1 ? 0 : s1, raw, n * (bf16 ? 2 : 4));
    return val;
}

/* ---- the model ---- */

#define FMT(buf, ...) (snprintf(buf, sizeof buf, __VA_ARGS__), buf)

static void vec(struct gen *g, const char *P, int N, const char *off, const char *gg, bool bf16, uint64_t n, double mean,
                double std)
{
    char a[160], b[160];
    float *v = plain(g, FMT(a, "%s%s", P, off), bf16, 1, n, 0, mean, std);
    add_ref(g, N < 0 ? FMT(b, "%s", gg) : FMT(b, "blk.%d.%s", N, gg), GGUF_TYPE_F32, 1, n, 1, 1, v);
}

static void mat2(struct gen *g, const char *P, int N, const char *off, const char *gg, uint64_t rows, uint64_t cols,
                 double mean, double std)
{
    char a[160], b[160];
    float *v = plain(g, FMT(a, "%s%s", P, off), false, 2, rows, cols, mean, std);
    add_ref(g, N < 0 ? FMT(b, "%s", gg) : FMT(b, "blk.%d.%s", N, gg), GGUF_TYPE_F32, 2, cols, rows, 1, v);
}

static void fp8(struct gen *g, const char *P, int N, const char *stem, const char *gg, uint64_t rows, uint64_t cols)
{
    char a[160], b[160];
    float *v = fp8_matrix(g, FMT(a, "%s%s", P, stem), rows, cols, 1.0 / sqrt((double)cols));
    add_ref(g, FMT(b, "blk.%d.%s", N, gg), GGUF_TYPE_F32, 2, cols, rows, 1, v);
}

static void bf16m(struct gen *g, const char *P, int N, const char *off, const char *gg, uint64_t rows, uint64_t cols,
                  double std)
{
    char a[160], b[160];
    float *v = plain(g, FMT(a, "%s%s", P, off), true, 2, rows, cols, 0, std);
    add_ref(g, N < 0 ? FMT(b, "%s", gg) : FMT(b, "blk.%d.%s", N, gg), GGUF_TYPE_F32, 2, cols, rows, 1, v);
}

static void experts(struct gen *g, const char *P, int N, const char *w, const char *gg, uint64_t rows, uint64_t cols,
                    double std)
{
    const int NE = g->n_exp;
    float *all = keep(g, malloc((size_t)NE * rows * cols * sizeof(float)));
    for (int e = 0; e < NE; e++) {
        char a[160];
        float *v = g->fault == TINY_FP8_EXPERTS ? fp8_matrix(g, FMT(a, "%sffn.experts.%d.%s", P, e, w), rows, cols, std)
                                                : fp4_matrix(g, FMT(a, "%sffn.experts.%d.%s", P, e, w), rows, cols, std);
        if (v && all) memcpy(all + (uint64_t)e * rows * cols, v, rows * cols * sizeof(float));
        free(v);
    }
    if (!all || !g->ref) return;
    char b[160];
    uint64_t ne[3] = { cols, rows, NE };
    if (gguf_writer_add_tensor(g->ref, FMT(b, "blk.%d.%s", N, gg), GGUF_TYPE_F32, 3, ne, all)) g->oom = true;
}

static void block(struct gen *g, const char *P, int N, int ratio, bool hash)
{
    char a[160], b[160];
    const double sd = 1.0 / sqrt((double)D);
    const int NE = g->n_exp;
    vec(g, P, N, "attn_norm.weight", "attn_norm.weight", true, D, 1, 0.1);
    if (g->fault == TINY_FAULT_DTYPE && N == 0) {
        int64_t *s = calloc(H, 8);
        add_official(g, "layers.0.attn.attn_sink", "I64", 1, H, 0, s, H * 8);
    } else {
        vec(g, P, N, "attn.attn_sink", "attn_sinks.weight", false, H, 0, 1);
    }
    fp8(g, P, N, "attn.wq_a", "attn_q_a.weight", QR, D);
    if (g->fault == TINY_FAULT_SHAPE && N == 1)
        free(plain(g, "layers.1.attn.q_norm.weight", true, 1, 100, 0, 1, 0.1));
    else
        vec(g, P, N, "attn.q_norm.weight", "attn_q_a_norm.weight", true, QR, 1, 0.1);
    fp8(g, P, N, "attn.wq_b", "attn_q_b.weight", H * HD, QR);
    fp8(g, P, N, "attn.wkv", "attn_kv.weight", HD, D);
    vec(g, P, N, "attn.kv_norm.weight", "attn_kv_a_norm.weight", true, HD, 1, 0.1);
    fp8(g, P, N, "attn.wo_a", "attn_output_a.weight", OG * OR, H * HD / OG);
    fp8(g, P, N, "attn.wo_b", "attn_output_b.weight", D, OG * OR);
    mat2(g, P, N, "hc_attn_fn", "hc_attn_fn.weight", MIX, HC * D, 0, 0.05);
    vec(g, P, N, "hc_attn_base", "hc_attn_base.weight", false, MIX, 0, 0.5);
    vec(g, P, N, "hc_attn_scale", "hc_attn_scale.weight", false, 3, 1, 0.1);
    mat2(g, P, N, "hc_ffn_fn", "hc_ffn_fn.weight", MIX, HC * D, 0, 0.05);
    vec(g, P, N, "hc_ffn_base", "hc_ffn_base.weight", false, MIX, 0, 0.5);
    vec(g, P, N, "hc_ffn_scale", "hc_ffn_scale.weight", false, 3, 1, 0.1);
    if (ratio) {
        const int coff = ratio == 4 ? 2 : 1;
        bf16m(g, P, N, "attn.compressor.wkv.weight", "attn_compressor_kv.weight", coff * HD, D, sd);
        bf16m(g, P, N, "attn.compressor.wgate.weight", "attn_compressor_gate.weight", coff * HD, D, sd);
        mat2(g, P, N, "attn.compressor.ape", "attn_compressor_ape.weight", ratio, coff * HD, 0, 0.5);
        vec(g, P, N, "attn.compressor.norm.weight", "attn_compressor_norm.weight", true, HD, 1, 0.1);
    }
    if (ratio == 4) {
        fp8(g, P, N, "attn.indexer.wq_b", "indexer.attn_q_b.weight", IXH * IXD, QR);
        bf16m(g, P, N, "attn.indexer.weights_proj.weight", "indexer.proj.weight", IXH, D, sd);
        bf16m(g, P, N, "attn.indexer.compressor.wkv.weight", "indexer_compressor_kv.weight", 2 * IXD, D, sd);
        bf16m(g, P, N, "attn.indexer.compressor.wgate.weight", "indexer_compressor_gate.weight", 2 * IXD, D, sd);
        mat2(g, P, N, "attn.indexer.compressor.ape", "indexer_compressor_ape.weight", 4, 2 * IXD, 0, 0.5);
        vec(g, P, N, "attn.indexer.compressor.norm.weight", "indexer_compressor_norm.weight", true, IXD, 1, 0.1);
    }
    vec(g, P, N, "ffn_norm.weight", "ffn_norm.weight", true, D, 1, 0.1);
    bf16m(g, P, N, "ffn.gate.weight", "ffn_gate_inp.weight", NE, D, 4 * sd);
    if (hash) {
        int64_t *t = malloc((size_t)V * NEU * 8);
        int32_t *r = malloc((size_t)V * NEU * 4);
        if (t && r)
            for (int tok = 0; tok < V; tok++) {
                int e0 = (int)(urand(g) * NE) % NE, e1 = (e0 + 1 + (int)(urand(g) * (NE - 1)) % (NE - 1)) % NE;
                if (g->fault == TINY_FAULT_TID2EID_RANGE && N == 2 && tok == 7) e1 = NE;
                t[tok * NEU] = r[tok * NEU] = e0;
                t[tok * NEU + 1] = r[tok * NEU + 1] = e1;
            }
        add_official(g, FMT(a, "%sffn.gate.tid2eid", P), "I64", 2, V, NEU, t, (uint64_t)V * NEU * 8);
        add_ref(g, FMT(b, "blk.%d.ffn_gate_tid2eid.weight", N), GGUF_TYPE_I32, 2, NEU, V, 1, r);
    } else {
        float *v = plain(g, FMT(a, "%sffn.gate.bias", P), false, 1, NE, 0, 0, 0.1);
        add_ref(g, FMT(b, "blk.%d.exp_probs_b.bias", N), GGUF_TYPE_F32, 1, NE, 1, 1, v);
    }
    experts(g, P, N, "w1", "ffn_gate_exps.weight", FF, D, sd);
    experts(g, P, N, "w3", "ffn_up_exps.weight", FF, D, 4 * sd);
    experts(g, P, N, "w2", "ffn_down_exps.weight", D, FF, 1.0 / sqrt((double)FF));
    fp8(g, P, N, "ffn.shared_experts.w1", "ffn_gate_shexp.weight", FF, D);
    fp8(g, P, N, "ffn.shared_experts.w3", "ffn_up_shexp.weight", FF, D);
    fp8(g, P, N, "ffn.shared_experts.w2", "ffn_down_shexp.weight", D, FF);
}

static int write_json(json_t *j, const char *path)
{
    int rc = j ? json_dump_file(j, path, JSON_INDENT(1)) : -1;
    json_decref(j);
    if (rc) fprintf(stderr, "tiny_ckpt: cannot write %s\n", path);
    return rc;
}

static int write_config(const char *dir, int NE)
{
    char path[4096];
    json_t *cr = json_array();
    for (int i = 0; i <= NL; i++) json_array_append_new(cr, json_integer(ratios[i]));
    json_t *c = json_pack("{s:[s], s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:o,"
                          " s:f, s:f, s:{s:s, s:f, s:i, s:i, s:i}, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i,"
                          " s:s, s:s, s:b, s:f, s:i, s:f, s:s, s:i, s:i, s:f, s:f, s:b, s:i, s:i, s:s, s:s}",
                          "architectures", "DeepseekV4ForCausalLM", "model_type", "deepseek_v4",
                          "vocab_size", V, "hidden_size", D, "num_hidden_layers", NL, "num_nextn_predict_layers", 1,
                          "num_attention_heads", H, "num_key_value_heads", 1, "head_dim", HD,
                          "qk_rope_head_dim", ROPE, "q_lora_rank", QR, "o_lora_rank", OR, "o_groups", OG,
                          "sliding_window", WIN, "max_position_embeddings", 4096, "compress_ratios", cr,
                          "compress_rope_theta", 160000.0, "rope_theta", 10000.0,
                          "rope_scaling", "type", "yarn", "factor", 16.0, "original_max_position_embeddings", 65536,
                          "beta_fast", 32, "beta_slow", 1,
                          "index_n_heads", IXH, "index_head_dim", IXD, "index_topk", IXK, "n_routed_experts", NE,
                          "n_shared_experts", 1, "num_experts_per_tok", NEU, "moe_intermediate_size", FF,
                          "num_hash_layers", NHASH, "scoring_func", "sqrtsoftplus", "topk_method", "noaux_tc",
                          "norm_topk_prob", 1, "routed_scaling_factor", 1.5, "hc_mult", HC, "hc_eps", 1e-6,
                          "hidden_act", "silu", "hc_sinkhorn_iters", 20, "bos_token_id", 0,
                          "rms_norm_eps", 1e-6, "swiglu_limit", 10.0, "tie_word_embeddings", 0,
                          "eos_token_id", 1, "max_seq_len", 1024, "torch_dtype", "bfloat16", "expert_dtype", "fp4");
    if (c)
        json_object_set_new(c, "quantization_config",
                            json_pack("{s:s, s:s, s:s, s:s, s:[i, i]}", "quant_method", "fp8", "fmt", "e4m3", "scale_fmt",
                                      "ue8m0", "activation_scheme", "dynamic", "weight_block_size", 128, 128));
    snprintf(path, sizeof path, "%s/config.json", dir);
    return write_json(c, path);
}

/* Tiny byte-level BPE vocabulary: three specials, the 256 byte symbols of GPT-2's byte-level
 * mapping (ids 3..258), four merges (ids 259..262), one non-special added token (300). */
#define TINY_N_MERGES 4
static const char *const tiny_merges[TINY_N_MERGES][2] = { { "h", "e" }, { "l", "l" }, { "he", "ll" }, { "o", "!" } };

/* GPT-2's byte -> code point map: printable Latin-1 bytes map to themselves, the other 68
 * bytes to 256, 257, ... in byte order. Written as UTF-8 into out (>= 3 bytes + NUL). */
static void byte_symbol(int b, char *out)
{
    int cp = b, extra = 0;
    bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    if (!printable) {
        for (int x = 0; x < b; x++)
            if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255))) extra++;
        cp = 256 + extra;
    }
    if (cp < 0x80) {
        out[0] = (char)cp, out[1] = 0;
    } else {
        out[0] = (char)(0xc0 | cp >> 6), out[1] = (char)(0x80 | (cp & 0x3f)), out[2] = 0;
    }
}

static int write_tokenizer(const char *dir)
{
    json_t *vocab = json_object(), *merges = json_array(), *added = json_array();
    static const char *const specials[3] = { "<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>",
                                             "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>",
                                             "<\xef\xbd\x9c\xe2\x96\x81pad\xe2\x96\x81\xef\xbd\x9c>" };
    for (int i = 0; i < 3; i++)
        json_array_append_new(added, json_pack("{s:i, s:s, s:b, s:b}", "id", i, "content", specials[i], "special", 1, "normalized", 0));
    int id = 3;
    for (int b = 0; b < 256; b++) {
        char sym[4];
        byte_symbol(b, sym);
        json_object_set_new(vocab, sym, json_integer(id++));
    }
    for (int m = 0; m < TINY_N_MERGES; m++) {
        char s[16];
        snprintf(s, sizeof s, "%s%s", tiny_merges[m][0], tiny_merges[m][1]);
        json_object_set_new(vocab, s, json_integer(id++));
        /* Both spellings HF uses: "a b" strings and [a, b] pairs. */
        if (m % 2) json_array_append_new(merges, json_pack("[s, s]", tiny_merges[m][0], tiny_merges[m][1]));
        else {
            char mm[16];
            snprintf(mm, sizeof mm, "%s %s", tiny_merges[m][0], tiny_merges[m][1]);
            json_array_append_new(merges, json_string(mm));
        }
    }
    /* A non-special added token in the user-defined range. */
    json_array_append_new(added, json_pack("{s:i, s:s, s:b}", "id", 300, "content", "<think>", "special", 0));
    json_t *t = json_pack("{s:s, s:o, s:{s:s, s:o, s:o}}", "version", "1.0", "added_tokens", added, "model", "type",
                          "BPE", "vocab", vocab, "merges", merges);
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    return write_json(t, path);
}

/* Writes tensors [first, last) as one shard; the header is padded with spaces to 8. */
static int write_shard(struct gen *g, const char *dir, const char *file, size_t first, size_t last, json_t *weight_map)
{
    json_t *h = json_object();
    json_object_set_new(h, "__metadata__", json_pack("{s:s}", "format", "pt"));
    uint64_t off = 0;
    for (size_t i = first; i < last; i++) {
        struct otensor *t = &g->t[i];
        json_t *shape = json_array();
        for (int k = 0; k < t->nd; k++) json_array_append_new(shape, json_integer((json_int_t)t->shape[k]));
        uint64_t b = off, e = off + t->nbytes;
        if (g->fault == TINY_FAULT_OVERLAP && i == first + 1) b -= 2, e -= 2; /* overlaps the tensor before */
        json_object_set_new(h, t->name, json_pack("{s:s, s:o, s:[I, I]}", "dtype", t->dtype, "shape", shape,
                                                  "data_offsets", (json_int_t)b, (json_int_t)e));
        json_object_set_new(weight_map, t->name, json_string(file));
        off += t->nbytes;
    }
    char *text = json_dumps(h, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(h);
    if (!text) return -1;
    uint64_t hlen = strlen(text), padded = (hlen + 7) / 8 * 8;
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    FILE *f = fopen(path, "wb");
    int rc = f ? 0 : -1;
    uint8_t len8[8];
    for (int k = 0; k < 8; k++) len8[k] = (uint8_t)(padded >> (8 * k));
    if (f) {
        rc |= fwrite(len8, 1, 8, f) != 8;
        rc |= fwrite(text, 1, hlen, f) != hlen;
        for (uint64_t k = hlen; k < padded; k++) rc |= fputc(' ', f) == EOF;
        for (size_t i = first; i < last; i++) rc |= fwrite(g->t[i].data, 1, g->t[i].nbytes, f) != g->t[i].nbytes;
        rc |= fclose(f) != 0;
    }
    free(text);
    if (rc) fprintf(stderr, "tiny_ckpt: cannot write %s\n", path);
    return rc;
}

static void ref_metadata(struct gguf_writer *w, int NE)
{
    int32_t cr[NL + 1];
    float clamp[NL + 1];
    for (int i = 0; i <= NL; i++) cr[i] = ratios[i], clamp[i] = 10.0f;
    gguf_writer_add_str(w, "general.architecture", "deepseek4");
    gguf_writer_add_str(w, "general.name", "tiny-ckpt-reference");
    gguf_writer_add_u32(w, "deepseek4.context_length", 4096);
    gguf_writer_add_u32(w, "deepseek4.embedding_length", D);
    gguf_writer_add_u32(w, "deepseek4.block_count", NL + 1);
    gguf_writer_add_u32(w, "deepseek4.nextn_predict_layers", 1);
    gguf_writer_add_u32(w, "deepseek4.vocab_size", V);
    gguf_writer_add_u32(w, "deepseek4.attention.head_count", H);
    gguf_writer_add_u32(w, "deepseek4.attention.head_count_kv", 1);
    gguf_writer_add_u32(w, "deepseek4.attention.key_length", HD);
    gguf_writer_add_u32(w, "deepseek4.attention.value_length", HD);
    gguf_writer_add_f32(w, "deepseek4.attention.layer_norm_rms_epsilon", 1e-6f);
    gguf_writer_add_u32(w, "deepseek4.attention.q_lora_rank", QR);
    gguf_writer_add_u32(w, "deepseek4.attention.output_group_count", OG);
    gguf_writer_add_u32(w, "deepseek4.attention.output_lora_rank", OR);
    gguf_writer_add_u32(w, "deepseek4.attention.sliding_window", WIN);
    gguf_writer_add_arr(w, "deepseek4.attention.compress_ratios", GGUF_VAL_INT32, cr, NL + 1);
    gguf_writer_add_f32(w, "deepseek4.attention.compress_rope_freq_base", 160000.0f);
    gguf_writer_add_u32(w, "deepseek4.attention.indexer.head_count", IXH);
    gguf_writer_add_u32(w, "deepseek4.attention.indexer.key_length", IXD);
    gguf_writer_add_u32(w, "deepseek4.attention.indexer.top_k", IXK);
    gguf_writer_add_u32(w, "deepseek4.rope.dimension_count", ROPE);
    gguf_writer_add_f32(w, "deepseek4.rope.freq_base", 10000.0f);
    gguf_writer_add_str(w, "deepseek4.rope.scaling.type", "yarn");
    gguf_writer_add_f32(w, "deepseek4.rope.scaling.factor", 16.0f);
    gguf_writer_add_u32(w, "deepseek4.rope.scaling.original_context_length", 65536);
    gguf_writer_add_f32(w, "deepseek4.rope.scaling.yarn_beta_fast", 32.0f);
    gguf_writer_add_f32(w, "deepseek4.rope.scaling.yarn_beta_slow", 1.0f);
    gguf_writer_add_u32(w, "deepseek4.expert_count", NE);
    gguf_writer_add_u32(w, "deepseek4.expert_used_count", NEU);
    gguf_writer_add_u32(w, "deepseek4.expert_shared_count", 1);
    gguf_writer_add_u32(w, "deepseek4.expert_feed_forward_length", FF);
    gguf_writer_add_f32(w, "deepseek4.expert_weights_scale", 1.5f);
    gguf_writer_add_bool(w, "deepseek4.expert_weights_norm", true);
    gguf_writer_add_u32(w, "deepseek4.expert_gating_func", 4);
    gguf_writer_add_arr(w, "deepseek4.swiglu_clamp_exp", GGUF_VAL_FLOAT32, clamp, NL + 1);
    gguf_writer_add_u32(w, "deepseek4.hyper_connection.count", HC);
    gguf_writer_add_u32(w, "deepseek4.hyper_connection.sinkhorn_iterations", 20);
    gguf_writer_add_f32(w, "deepseek4.hyper_connection.epsilon", 1e-6f);
    gguf_writer_add_u32(w, "deepseek4.hash_layer_count", NHASH);
    gguf_writer_add_str(w, "tokenizer.ggml.model", "gpt2");
    gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", 0);
    gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", 1);
}

int tiny_ckpt_write_experts(const char *dir, const char *ref_gguf, int n_shards, uint64_t seed, enum tiny_variant fault,
                            int n_expert)
{
    struct gen g = { .rng = seed * 0x9E3779B97F4A7C15ull + 1, .fault = fault, .n_exp = n_expert };
    int rc = -1;
    mkdir(dir, 0755);
    if (ref_gguf) {
        if (!(g.ref = gguf_writer_create())) return -1;
        ref_metadata(g.ref, n_expert);
    }
    char a[160];
    {
        float *v = plain(&g, "embed.weight", true, 2, V, D, 0, 1);
        add_ref(&g, "token_embd.weight", GGUF_TYPE_F32, 2, D, V, 1, v);
    }
    for (int il = 0; il < NL; il++) block(&g, FMT(a, "layers.%d.", il), il, ratios[il], il < NHASH);
    /* MTP block: a full block plus its projections, norms and hc head. */
    block(&g, "mtp.0.", NL, ratios[NL], false);
    {
        fp8(&g, "mtp.0.", NL, "e_proj", "nextn.e_proj.weight", D, D);
        fp8(&g, "mtp.0.", NL, "h_proj", "nextn.h_proj.weight", D, D);
        vec(&g, "mtp.0.", NL, "enorm.weight", "nextn.enorm.weight", true, D, 1, 0.1);
        vec(&g, "mtp.0.", NL, "hnorm.weight", "nextn.hnorm.weight", true, D, 1, 0.1);
        vec(&g, "mtp.0.", NL, "norm.weight", "nextn.shared_head_norm.weight", true, D, 1, 0.1);
        mat2(&g, "mtp.0.", NL, "hc_head_fn", "nextn.hc_head_fn.weight", HC, HC * D, 0, 0.05);
        vec(&g, "mtp.0.", NL, "hc_head_base", "nextn.hc_head_base.weight", false, HC, 0, 0.5);
        vec(&g, "mtp.0.", NL, "hc_head_scale", "nextn.hc_head_scale.weight", false, 1, 1, 0.1);
    }
    vec(&g, "", -1, "norm.weight", "output_norm.weight", true, D, 1, 0.1);
    bf16m(&g, "", -1, "head.weight", "output.weight", V, D, 1.0 / sqrt((double)D));
    mat2(&g, "", -1, "hc_head_fn", "output_hc_fn.weight", HC, HC * D, 0, 0.05);
    vec(&g, "", -1, "hc_head_base", "output_hc_base.weight", false, HC, 0, 0.5);
    vec(&g, "", -1, "hc_head_scale", "output_hc_scale.weight", false, 1, 1, 0.1);
    if (fault == TINY_FAULT_UNKNOWN_NAME) free(plain(&g, "layers.0.attn.bogus.weight", true, 1, 16, 0, 0, 1));
    if (g.oom) {
        fprintf(stderr, "tiny_ckpt: out of memory\n");
        goto out;
    }
    if (write_config(dir, n_expert) || write_tokenizer(dir)) goto out;
    json_t *wm = json_object();
    for (int s = 0; s < n_shards; s++) {
        char file[128];
        snprintf(file, sizeof file, "model-%05d-of-%05d.safetensors", s + 1, n_shards);
        size_t first = g.n * (size_t)s / (size_t)n_shards, last = g.n * (size_t)(s + 1) / (size_t)n_shards;
        if (write_shard(&g, dir, file, first, last, wm)) {
            json_decref(wm);
            goto out;
        }
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    if (write_json(json_pack("{s:{s:i}, s:o}", "metadata", "total_size", 0, "weight_map", wm), path)) goto out;
    if (g.ref) {
        char err[512];
        if (gguf_writer_write_file(g.ref, ref_gguf, err, sizeof err)) {
            fprintf(stderr, "tiny_ckpt: %s\n", err);
            goto out;
        }
    }
    rc = 0;
out:
    for (size_t i = 0; i < g.n; i++) free(g.t[i].data);
    free(g.t);
    for (size_t i = 0; i < g.n_keep; i++) free(g.keep[i]);
    free(g.keep);
    if (g.ref) gguf_writer_destroy(g.ref);
    return rc;
}

int tiny_ckpt_write(const char *dir, const char *ref_gguf, int n_shards, uint64_t seed, enum tiny_variant fault)
{
    return tiny_ckpt_write_experts(dir, ref_gguf, n_shards, seed, fault, TINY_EXPERTS);
}
