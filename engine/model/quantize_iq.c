/* Quantizers for the lattice i-quants IQ2_XXS, IQ2_XS, IQ2_S and IQ3_XXS: blocks that dequant_row_iq
 * (bit-exact with ggml's dequantize_row_*) reads back, fitted by weighted least squares.
 *
 * These are not byte-for-byte ggml's (its i-quant search is a heuristic of its own); the
 * method here, per super-block of 256:
 *   1. weights w[j] = qw[j] * sqrt(sigma2 + x[j]^2) (sigma2 the row's mean square times 2,
 *      so small values still count), qw[j] = 1 without an importance matrix (plain x^2 fit
 *      the large values at the small ones' cost: 4% more rms error on gaussian rows);
 *   2. signs: each group of 8 may only carry an even count of minus signs (the eighth sign
 *      is implied); where x has an odd count, the element whose flip costs least (smallest
 *      w * x^2) is fitted with the wrong sign, i.e. towards the grid's smallest magnitude
 *      (IQ2_S stores all 8 signs: x's are kept);
 *   3. per scale block (32 values; IQ2_XS and IQ2_S 16) the scale s is searched over candidates
 *      around amax / largest level: for each, every value goes to its nearest level and a
 *      grid entry is picked (the point itself when it is on the grid, else the weighted best
 *      of its nearest grid points, tabulated once), then s is refitted by least squares
 *      for those entries and the weighted error kept when it is the least so far;
 *   4. the super-block scale d (f16) from a few candidates at and below max s / 15.5, each
 *      block's 4-bit scale the best of the three nearest to s with its entries picked again
 *      for the rounded scale; the d of least weighted error over the super-block is kept.
 * Block layouts: engine/model/quant.h; grids: shaders/iq_grids.h. */
#include "engine/model/quant.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "shaders/iq_grids.h"

/* One lattice type: a grid of n_grid entries of gs magnitudes, each coded in bits bits as
 * an index into levels[n_levels]; a scale per sb values, db = d * (0.5 + ls) * scale_mul. */
struct iq_lattice {
    const uint16_t *grid;
    int n_grid, gs, bits, n_levels, sb;
    float scale_mul;
    int near_margin;         /* off-grid points try grid entries up to this much farther than the nearest */
    const float *levels;
    /* tabulated by lattice_init: for each point of the n_levels^gs space (one level index
     * per magnitude), its grid index, or -1 - (offset of its nearest grid entries in near) */
    int32_t *point;
    uint16_t *near;          /* per off-grid point: count, then that many grid indices */
    bool all_signs;          /* 8 sign bits per group stored (IQ2_S), else 7 and the parity */
};

static const float iq2_levels_f[3] = { 8, 25, 43 };
static const float iq3_levels_f[8] = { 4, 12, 20, 28, 36, 44, 52, 62 };

static struct iq_lattice lat_iq2xxs = { iq2xxs_grid, 256, 8, 2, 3, 32, 0.25f, 300, iq2_levels_f, NULL, NULL, false };
static struct iq_lattice lat_iq2xs = { iq2xs_grid, 512, 8, 2, 3, 16, 0.25f, 300, iq2_levels_f, NULL, NULL, false };
static struct iq_lattice lat_iq2s = { iq2s_grid, 1024, 8, 2, 3, 16, 0.25f, 300, iq2_levels_f, NULL, NULL, true };
static struct iq_lattice lat_iq3xxs = { iq3xxs_grid, 256, 4, 3, 8, 32, 0.5f, 140, iq3_levels_f, NULL, NULL, false };

#define N_SCALE_TRIES 24  /* candidate scales per block, amax / (0.6 .. 1.15 x the top level) */
#define N_D_TRIES 4       /* candidate super-block scales, max_s / 15.5 x (1, 0.96, ...) */

static int entry_level(const struct iq_lattice *L, int g, int k)
{
    return (L->grid[g] >> (L->bits * k)) & ((1 << L->bits) - 1);
}

static int lattice_points(const struct iq_lattice *L)
{
    int n = 1;
    for (int k = 0; k < L->gs; k++) n *= L->n_levels;
    return n;
}

/* Tabulates point -> grid index, and for points off the grid the grid entries nearest to them
 * (squared distance in level values, all ties). Returns -1 out of memory. */
static int lattice_build(struct iq_lattice *L)
{
    const int np = lattice_points(L);
    int32_t *point = malloc((size_t)np * sizeof *point);
    int *dist = malloc((size_t)L->n_grid * sizeof *dist);
    size_t cap = 4096, used = 0;
    uint16_t *near = malloc(cap * sizeof *near);
    if (!point || !dist || !near) goto fail;
    for (int p = 0; p < np; p++) point[p] = INT32_MIN;
    for (int g = 0; g < L->n_grid; g++) {
        int p = 0;
        for (int k = L->gs - 1; k >= 0; k--) p = p * L->n_levels + entry_level(L, g, k);
        point[p] = g;
    }
    for (int p = 0; p < np; p++) {
        if (point[p] != INT32_MIN) continue;
        int best = INT32_MAX, count = 0;
        for (int g = 0; g < L->n_grid; g++) {
            int d = 0;
            for (int k = 0, q = p; k < L->gs; k++, q /= L->n_levels) {
                const int a = (int)L->levels[q % L->n_levels], b = (int)L->levels[entry_level(L, g, k)];
                d += (a - b) * (a - b);
            }
            dist[g] = d;
            if (d < best) best = d, count = 0;
        }
        for (int g = 0; g < L->n_grid; g++) count += dist[g] <= best + L->near_margin;
        if (used + 1 + (size_t)count > cap) {
            cap = 2 * (used + 1 + (size_t)count);
            uint16_t *grown = realloc(near, cap * sizeof *near);
            if (!grown) goto fail;
            near = grown;
        }
        point[p] = -1 - (int32_t)used;
        near[used++] = (uint16_t)count;
        for (int g = 0; g < L->n_grid; g++)
            if (dist[g] <= best + L->near_margin) near[used++] = (uint16_t)g;
    }
    free(dist);
    L->point = point;
    L->near = near;
    return 0;
fail:
    free(point);
    free(dist);
    free(near);
    return -1;
}

static pthread_once_t lattice_once = PTHREAD_ONCE_INIT;
static int lattice_ok;

static void lattice_init(void)
{
    lattice_ok = !lattice_build(&lat_iq2xxs) && !lattice_build(&lat_iq2xs) && !lattice_build(&lat_iq2s) &&
                 !lattice_build(&lat_iq3xxs);
}

/* The grid entry for gs targets t (signs already applied) at scale db: each value's nearest
 * level, then that point, or the weighted best of its nearest grid entries. */
static int pick_entry(const struct iq_lattice *L, float db, const float *t, const float *w)
{
    int p = 0;
    for (int k = L->gs - 1; k >= 0; k--) {
        const float u = db > 0 ? t[k] / db : 0.f;
        int best = 0;
        for (int l = 1; l < L->n_levels; l++)
            if (fabsf(u - L->levels[l]) < fabsf(u - L->levels[best])) best = l;
        p = p * L->n_levels + best;
    }
    if (L->point[p] >= 0) return L->point[p];
    const uint16_t *c = L->near + (-1 - L->point[p]);
    int best = c[1];
    float best_err = INFINITY;
    for (int i = 0; i < c[0]; i++) {
        float e = 0;
        for (int k = 0; k < L->gs; k++) {
            const float diff = db * L->levels[entry_level(L, c[1 + i], k)] - t[k];
            e += w[k] * diff * diff;
        }
        if (e < best_err) best_err = e, best = c[1 + i];
    }
    return best;
}

/* Picks the entries of one scale block (n values) at scale db into idx[n / gs]; returns the
 * least-squares scale for them in *refit (0 where it has no support) and the weighted error
 * at db (refit NULL) or at *refit. */
static float fit_block(const struct iq_lattice *L, int n, const float *t, const float *w, float db, uint16_t *idx,
                       float *refit)
{
    double sgt = 0, sgg = 0, stt = 0, err = 0;
    for (int e = 0; e < n / L->gs; e++) {
        const int g = pick_entry(L, db, t + e * L->gs, w + e * L->gs);
        idx[e] = (uint16_t)g;
        for (int k = 0; k < L->gs; k++) {
            const double gv = L->levels[entry_level(L, g, k)], tv = t[e * L->gs + k], wv = w[e * L->gs + k];
            sgt += wv * gv * tv;
            sgg += wv * gv * gv;
            stt += wv * tv * tv;
            err += wv * (db * gv - tv) * (db * gv - tv);
        }
    }
    if (!refit) return (float)err;
    *refit = sgg > 0 && sgt > 0 ? (float)(sgt / sgg) : 0.f;
    return sgg > 0 && sgt > 0 ? (float)(stt - sgt * sgt / sgg) : (float)stt;
}

/* Signs and targets of 256 values: sign bit j of neg set where value j is fitted negative,
 * an even count per group of 8 unless all_signs; t[j] = x[j] * that sign (>= 0 but for
 * flipped elements). */
static void choose_signs(bool all_signs, const float *x, const float *w, uint8_t neg[QK_K / 8], float *t)
{
    for (int gi = 0; gi < QK_K / 8; gi++) {
        uint8_t m = 0;
        int cheapest = 0;
        for (int j = 0; j < 8; j++) {
            const float v = x[8 * gi + j];
            if (v < 0) m |= (uint8_t)(1u << j);
            if (w[8 * gi + j] * v * v < w[8 * gi + cheapest] * x[8 * gi + cheapest] * x[8 * gi + cheapest]) cheapest = j;
        }
        if (!all_signs && __builtin_popcount(m) & 1) m ^= (uint8_t)(1u << cheapest);
        neg[gi] = m;
        for (int j = 0; j < 8; j++) t[8 * gi + j] = m >> j & 1 ? -x[8 * gi + j] : x[8 * gi + j];
    }
}

/* Weights of 256 values as the header says; where a scale block's weights are all zero
 * (an imatrix of columns that never fired), x^2 instead, so the block still fits its values. */
static void iq_weights(const struct iq_lattice *L, const float *x, const float *qw, float sigma2, float *w)
{
    for (int j = 0; j < QK_K; j++) w[j] = qw ? qw[j] * sqrtf(sigma2 + x[j] * x[j]) : sqrtf(sigma2 + x[j] * x[j]);
    for (int b = 0; b < QK_K; b += L->sb) {
        float s = 0;
        for (int j = 0; j < L->sb; j++) s += w[b + j];
        if (!(s > 0))
            for (int j = 0; j < L->sb; j++) w[b + j] = x[b + j] * x[b + j];
    }
}

/* One super-block: its f16 d in *dh, per scale block its 4-bit scale ls[] and entries idx[],
 * and the sign masks neg[] (one per 8 values). */
static void quantize_superblock(const struct iq_lattice *L, const float *x, const float *qw, float sigma2, uint16_t *dh,
                                uint8_t ls[QK_K / 16], uint16_t idx[QK_K / 4], uint8_t neg[QK_K / 8])
{
    float w[QK_K], t[QK_K], s[QK_K / 16];
    const int nb = QK_K / L->sb, per = L->sb / L->gs;
    const float top = L->levels[L->n_levels - 1];
    iq_weights(L, x, qw, sigma2, w);
    choose_signs(L->all_signs, x, w, neg, t);
    float max_s = 0;
    for (int b = 0; b < nb; b++) {
        const float *tb = t + b * L->sb, *wb = w + b * L->sb;
        float amax = 0;
        for (int j = 0; j < L->sb; j++) amax = fmaxf(amax, tb[j]);
        s[b] = 0;
        if (!(amax > 0)) continue;
        float best_err = INFINITY;
        for (int k = 0; k < N_SCALE_TRIES; k++) {
            float refit;
            const float err = fit_block(L, L->sb, tb, wb, amax / (top * (0.6f + 0.55f * (float)k / (N_SCALE_TRIES - 1))),
                                        idx + b * per, &refit);
            if (refit > 0 && err < best_err) best_err = err, s[b] = refit;
        }
        max_s = fmaxf(max_s, s[b]);
    }
    /* d: the candidates from max_s / 15.5 (the largest block at ls 15) down, keeping the one
     * of least weighted error over the whole super-block; a smaller d gives the small blocks
     * finer scales at the cost of clipping the largest one, so the weights decide */
    float best_total = INFINITY;
    *dh = 0;
    memset(ls, 0, (size_t)nb);
    memset(idx, 0, (size_t)(nb * per) * sizeof *idx);
    for (int k = 0; k < N_D_TRIES; k++) {
        const uint16_t h = f32_to_fp16(max_s / (15.5f * L->scale_mul) * (1.f - 0.04f * (float)k));
        const float d = fp16_to_f32(h);
        uint8_t try_ls[QK_K / 16];
        uint16_t try_idx[QK_K / 4];
        float total = 0;
        for (int b = 0; b < nb; b++) {
            const float *tb = t + b * L->sb, *wb = w + b * L->sb;
            int l0 = d > 0 ? (int)lrintf(s[b] / (d * L->scale_mul) - 0.5f) : 0;
            l0 = l0 < 0 ? 0 : l0 > 15 ? 15 : l0;
            float best_err = INFINITY;
            uint16_t blk_idx[QK_K / 4];
            for (int l = l0 - 1; l <= l0 + 1; l++) {
                if (l < 0 || l > 15) continue;
                const float err = fit_block(L, L->sb, tb, wb, d * (0.5f + (float)l) * L->scale_mul, blk_idx, NULL);
                if (err < best_err) {
                    best_err = err;
                    try_ls[b] = (uint8_t)l;
                    memcpy(try_idx + b * per, blk_idx, (size_t)per * sizeof *idx);
                }
            }
            total += best_err;
        }
        if (total < best_total) {
            best_total = total;
            *dh = h;
            memcpy(ls, try_ls, (size_t)nb);
            memcpy(idx, try_idx, (size_t)(nb * per) * sizeof *idx);
        }
    }
}

/* Whole super-blocks only, finite values only, tables built: else -1 (nothing written). */
static int iq_check(const float *x, uint64_t n)
{
    if (n % QK_K) return -1;
    for (uint64_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return -1;
    pthread_once(&lattice_once, lattice_init);
    return lattice_ok ? 0 : -1;
}

static float row_sigma2(const float *x, uint64_t n)
{
    double s = 0;
    for (uint64_t i = 0; i < n; i++) s += (double)x[i] * x[i];
    return (float)(2 * s / (double)n);
}

/* Packs one super-block's fit (quantize_superblock's outputs) into its block. */
typedef void pack_fn(void *block, uint16_t dh, const uint8_t *ls, const uint16_t *idx, const uint8_t *neg);

static int quantize_lattice_row(const struct iq_lattice *L, const float *x, void *y, size_t block_bytes, uint64_t n,
                                const float *qw, pack_fn *pack)
{
    if (iq_check(x, n)) return -1;
    const float sigma2 = row_sigma2(x, n);
    for (uint64_t i = 0; i < n / QK_K; i++) {
        uint8_t ls[QK_K / 16], neg[QK_K / 8];
        uint16_t idx[QK_K / 4], dh;
        quantize_superblock(L, x + i * QK_K, qw ? qw + i * QK_K : NULL, sigma2, &dh, ls, idx, neg);
        pack((uint8_t *)y + i * block_bytes, dh, ls, idx, neg);
    }
    return 0;
}

static void pack_iq2_xxs(void *block, uint16_t dh, const uint8_t *ls, const uint16_t *idx, const uint8_t *neg)
{
    struct block_iq2_xxs *y = block;
    memcpy(&y->d, &dh, 2);
    uint8_t *q = (uint8_t *)y->qs;
    for (int b = 0; b < QK_K / 32; b++, q += 8) {
        uint32_t meta = (uint32_t)ls[b] << 28;
        for (int l = 0; l < 4; l++) {
            q[l] = (uint8_t)idx[4 * b + l];
            meta |= (uint32_t)(neg[4 * b + l] & 127) << 7 * l; /* the eighth sign is the parity */
        }
        memcpy(q + 4, &meta, 4);
    }
}

static void pack_iq2_xs(void *block, uint16_t dh, const uint8_t *ls, const uint16_t *idx, const uint8_t *neg)
{
    struct block_iq2_xs *y = block;
    memcpy(&y->d, &dh, 2);
    for (int g = 0; g < QK_K / 8; g++) {
        const uint16_t v = (uint16_t)(idx[g] | (neg[g] & 127) << 9);
        memcpy(&y->qs[g], &v, 2);
    }
    for (int b = 0; b < QK_K / 32; b++) y->scales[b] = (uint8_t)(ls[2 * b] | ls[2 * b + 1] << 4);
}

static void pack_iq2_s(void *block, uint16_t dh, const uint8_t *ls, const uint16_t *idx, const uint8_t *neg)
{
    struct block_iq2_s *y = block;
    memcpy(&y->d, &dh, 2);
    for (int g = 0; g < QK_K / 8; g++) {
        y->qs[g] = (uint8_t)idx[g];
        y->qs[QK_K / 8 + g] = neg[g];
    }
    for (int b = 0; b < QK_K / 32; b++) {
        y->qh[b] = 0;
        for (int l = 0; l < 4; l++) y->qh[b] |= (uint8_t)((idx[4 * b + l] >> 8) << 2 * l);
        y->scales[b] = (uint8_t)(ls[2 * b] | ls[2 * b + 1] << 4);
    }
}

static void pack_iq3_xxs(void *block, uint16_t dh, const uint8_t *ls, const uint16_t *idx, const uint8_t *neg)
{
    struct block_iq3_xxs *y = block;
    memcpy(&y->d, &dh, 2);
    for (int e = 0; e < QK_K / 4; e++) y->qs[e] = (uint8_t)idx[e];
    for (int b = 0; b < QK_K / 32; b++) {
        uint32_t meta = (uint32_t)ls[b] << 28;
        for (int l = 0; l < 4; l++) meta |= (uint32_t)(neg[4 * b + l] & 127) << 7 * l;
        memcpy(y->qs + QK_K / 4 + 4 * b, &meta, 4);
    }
}

int quantize_row_iq2_xxs(const float *x, struct block_iq2_xxs *y, uint64_t n, const float *qw)
{
    return quantize_lattice_row(&lat_iq2xxs, x, y, sizeof *y, n, qw, pack_iq2_xxs);
}

int quantize_row_iq2_xs(const float *x, struct block_iq2_xs *y, uint64_t n, const float *qw)
{
    return quantize_lattice_row(&lat_iq2xs, x, y, sizeof *y, n, qw, pack_iq2_xs);
}

int quantize_row_iq2_s(const float *x, struct block_iq2_s *y, uint64_t n, const float *qw)
{
    return quantize_lattice_row(&lat_iq2s, x, y, sizeof *y, n, qw, pack_iq2_s);
}

int quantize_row_iq3_xxs(const float *x, struct block_iq3_xxs *y, uint64_t n, const float *qw)
{
    return quantize_lattice_row(&lat_iq3xxs, x, y, sizeof *y, n, qw, pack_iq3_xxs);
}
