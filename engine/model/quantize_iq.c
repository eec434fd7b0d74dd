/* Quantizers for the lattice i-quants IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ1_S and IQ1_M: blocks
 * that dequant_row_iq (bit-exact with ggml's dequantize_row_*) reads back, fitted by weighted
 * least squares.
 *
 * These are not byte-for-byte ggml's (its i-quant search is a heuristic of its own); the
 * method here, per super-block of 256:
 *   1. weights w[j] = qw[j] * sqrt(sigma2 + x[j]^2) (sigma2 the row's mean square times 2,
 *      so small values still count), qw[j] = 1 without an importance matrix (plain x^2 fit
 *      the large values at the small ones' cost: 4% more rms error on gaussian rows);
 *   2. signs: each group of 8 may only carry an even count of minus signs (the eighth sign
 *      is implied); where x has an odd count, the element whose flip costs least (smallest
 *      w * x^2) is fitted with the wrong sign, i.e. towards the grid's smallest magnitude
 *      (IQ2_S stores all 8 signs: x's are kept; IQ1's levels -1, 0, 1 carry their own);
 *   3. per scale block (32 values; IQ2_XS, IQ2_S and IQ1_M 16) the scale s is searched over
 *      candidates around amax / largest level: for each, every value goes to its nearest level
 *      and a grid entry is picked (the point itself when it is on the grid, else the weighted
 *      best of its nearest grid points, tabulated once), then s is refitted by least squares
 *      for those entries and the weighted error kept when it is the least so far. IQ1's
 *      values are s * (level + delta), delta +-1/8 with one sign per 32 (IQ1_S) or per 8
 *      (IQ1_M): the entries are picked for both signs (the targets shifted by s * delta) and
 *      the sign of less weighted error kept, and the refit is over level + delta;
 *   4. the super-block scale d (f16) from a few candidates at and below max s / (top scale:
 *      15.5, IQ1 7.5 x 2), each block's 4-bit (IQ1 3-bit) scale the best of the three nearest
 *      to s with its entries (and deltas) picked again for the rounded scale; the d of least
 *      weighted error over the super-block is kept.
 * Block layouts: engine/model/quant.h; grids: shaders/iq_grids.h. */
#include "engine/model/quant.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "shaders/iq_grids.h"

/* One lattice type: a grid of n_grid entries of gs magnitudes, each coded in bits bits as
 * an index into levels[n_levels]; a scale per sb values, db = d * (0.5 + ls) * scale_mul with
 * ls < n_ls. The 1-bit types' levels carry the sign (-1, 0, 1) and each value is
 * db * (level +- delta), the delta's sign chosen per delta_groups groups. */
struct iq_lattice {
    const uint16_t *grid;
    int n_grid, gs, bits, n_levels, sb;
    float scale_mul;
    int near_margin;         /* off-grid points try grid entries up to this much farther than the nearest */
    const float *levels;
    int n_ls;                /* block scales 0 .. n_ls - 1 */
    int n_tries;             /* block scale candidates amax / (top level * (try_lo .. try_lo + try_span)) */
    float try_lo, try_span;
    bool signed_levels;      /* no sign bits: the levels are signed (IQ1) */
    float delta;             /* 0, or the IQ1 delta whose sign is stored per delta_groups groups */
    int delta_groups;
    /* tabulated by lattice_init: for each point of the n_levels^gs space (one level index
     * per magnitude), its grid index, or -1 - (offset of its nearest grid entries in near) */
    int32_t *point;
    uint16_t *near;          /* per off-grid point: count, then that many grid indices */
    bool all_signs;          /* 8 sign bits per group stored (IQ2_S), else 7 and the parity */
};

static const float iq2_levels_f[3] = { 8, 25, 43 };
static const float iq3_levels_f[8] = { 4, 12, 20, 28, 36, 44, 52, 62 };

static const float iq1_levels_f[3] = { -1, 0, 1 };

/* the 2- and 3-bit types: 4-bit block scales, 24 candidates amax / (0.6 .. 1.15 x the top level) */
#define IQ2_SEARCH .n_ls = 16, .n_tries = 24, .try_lo = 0.6f, .try_span = 0.55f
static struct iq_lattice lat_iq2xxs = { .grid = iq2xxs_grid, .n_grid = 256, .gs = 8, .bits = 2, .n_levels = 3, .sb = 32,
                                        .scale_mul = 0.25f, .near_margin = 300, .levels = iq2_levels_f, IQ2_SEARCH };
static struct iq_lattice lat_iq2xs = { .grid = iq2xs_grid, .n_grid = 512, .gs = 8, .bits = 2, .n_levels = 3, .sb = 16,
                                       .scale_mul = 0.25f, .near_margin = 300, .levels = iq2_levels_f, IQ2_SEARCH };
static struct iq_lattice lat_iq2s = { .grid = iq2s_grid, .n_grid = 1024, .gs = 8, .bits = 2, .n_levels = 3, .sb = 16,
                                      .scale_mul = 0.25f, .near_margin = 300, .levels = iq2_levels_f, .all_signs = true,
                                      IQ2_SEARCH };
static struct iq_lattice lat_iq3xxs = { .grid = iq3xxs_grid, .n_grid = 256, .gs = 4, .bits = 3, .n_levels = 8, .sb = 32,
                                        .scale_mul = 0.5f, .near_margin = 140, .levels = iq3_levels_f, IQ2_SEARCH };
/* the 1-bit types: db = d * (2 ls + 1), 3-bit ls; a ternary fit puts the block's largest value
 * at 1 to 3.5 times db. On gaussian rows a wider range, more d candidates or 24 block scale
 * candidates instead of 8 measured no better (the block scale only picks the three rounded
 * scales tried per d), and the 1-bit search costs about three times the 2-bit one per
 * candidate (both delta signs, a 2048-entry grid) */
#define IQ1_SEARCH                                                                                                      \
    .grid = iq1s_grid, .n_grid = 2048, .gs = 8, .bits = 2, .n_levels = 3, .scale_mul = 2.f, .near_margin = 1,             \
    .levels = iq1_levels_f, .n_ls = 8, .n_tries = 8, .try_lo = 1.f, .try_span = 2.5f,                                    \
    .signed_levels = true, .delta = 0.125f
static struct iq_lattice lat_iq1s = { IQ1_SEARCH, .sb = 32, .delta_groups = 4 };
static struct iq_lattice lat_iq1m = { IQ1_SEARCH, .sb = 16, .delta_groups = 1 };

#define N_D_TRIES 4       /* candidate super-block scales, max_s / (n_ls - 0.5) x (1, 0.96, ...) */

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
    /* IQ1_S and IQ1_M share one grid: IQ1_M reads IQ1_S's tables */
    lattice_ok = !lattice_build(&lat_iq2xxs) && !lattice_build(&lat_iq2xs) && !lattice_build(&lat_iq2s) &&
                 !lattice_build(&lat_iq3xxs) && !lattice_build(&lat_iq1s);
    lat_iq1m.point = lat_iq1s.point;
    lat_iq1m.near = lat_iq1s.near;
}

/* sum w (db * (level + delta) - t)^2 over grid entry g's gs values. */
static float entry_err(const struct iq_lattice *L, int g, float db, float delta, const float *t, const float *w)
{
    float e = 0;
    for (int k = 0; k < L->gs; k++) {
        const float diff = db * (L->levels[entry_level(L, g, k)] + delta) - t[k];
        e += w[k] * diff * diff;
    }
    return e;
}

/* The grid entry for gs targets t (signs already applied) at scale db with the delta (0 but
 * for IQ1): each value's nearest level, then that point, or the weighted best of its nearest
 * grid entries. */
static int pick_entry(const struct iq_lattice *L, float db, float delta, const float *t, const float *w)
{
    int p = 0;
    for (int k = L->gs - 1; k >= 0; k--) {
        const float u = db > 0 ? (t[k] - db * delta) / db : 0.f;
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
        const float e = entry_err(L, c[1 + i], db, delta, t, w);
        if (e < best_err) best_err = e, best = c[1 + i];
    }
    return best;
}

/* Picks the entries of one scale block (n values) at scale db into idx[n / gs], and for IQ1
 * the delta signs into dneg[n / gs] (1: -delta; per delta_groups groups, the sign whose
 * entries fit with less weighted error); returns the least-squares scale for them in *refit
 * (0 where it has no support) and the weighted error at db (refit NULL) or at *refit. */
static float fit_block(const struct iq_lattice *L, int n, const float *t, const float *w, float db, uint16_t *idx,
                       uint8_t *dneg, float *refit)
{
    const int ng = n / L->gs, unit = L->delta_groups ? L->delta_groups : ng, n_signs = L->delta_groups ? 2 : 1;
    for (int u = 0; u < ng; u += unit) {
        float best = INFINITY;
        for (int sg = 0; sg < n_signs; sg++) {
            const float delta = sg ? -L->delta : L->delta;
            uint16_t try_idx[QK_K / 4];
            float e = 0;
            for (int g = u; g < u + unit; g++) {
                try_idx[g - u] = (uint16_t)pick_entry(L, db, delta, t + g * L->gs, w + g * L->gs);
                if (n_signs > 1) e += entry_err(L, try_idx[g - u], db, delta, t + g * L->gs, w + g * L->gs);
            }
            if (e < best) {
                best = e;
                memcpy(idx + u, try_idx, (size_t)unit * sizeof *idx);
                memset(dneg + u, sg, (size_t)unit);
            }
        }
    }
    double sgt = 0, sgg = 0, stt = 0, err = 0;
    for (int e = 0; e < ng; e++) {
        const int g = idx[e];
        const float delta = dneg[e] ? -L->delta : L->delta;
        for (int k = 0; k < L->gs; k++) {
            const double gv = L->levels[entry_level(L, g, k)] + delta, tv = t[e * L->gs + k], wv = w[e * L->gs + k];
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

/* One super-block: its f16 d in *dh, per scale block its scale ls[] and entries idx[], and
 * per 8 values the sign mask neg[] (IQ1: 1 where that group's delta is negative). */
static void quantize_superblock(const struct iq_lattice *L, const float *x, const float *qw, float sigma2, uint16_t *dh,
                                uint8_t ls[QK_K / 16], uint16_t idx[QK_K / 4], uint8_t neg[QK_K / 8])
{
    float w[QK_K], t[QK_K], s[QK_K / 16];
    uint8_t dneg[QK_K / 4];
    const int nb = QK_K / L->sb, per = L->sb / L->gs;
    const float top = L->levels[L->n_levels - 1];
    iq_weights(L, x, qw, sigma2, w);
    if (L->signed_levels) memcpy(t, x, sizeof t);
    else choose_signs(L->all_signs, x, w, neg, t);
    float max_s = 0;
    for (int b = 0; b < nb; b++) {
        const float *tb = t + b * L->sb, *wb = w + b * L->sb;
        float amax = 0;
        for (int j = 0; j < L->sb; j++) amax = fmaxf(amax, L->signed_levels ? fabsf(tb[j]) : tb[j]);
        s[b] = 0;
        if (!(amax > 0)) continue;
        float best_err = INFINITY;
        for (int k = 0; k < L->n_tries; k++) {
            float refit;
            const float f = L->try_lo + L->try_span * (float)k / (float)(L->n_tries - 1);
            const float err = fit_block(L, L->sb, tb, wb, amax / (top * f), idx + b * per, dneg + b * per, &refit);
            if (refit > 0 && err < best_err) best_err = err, s[b] = refit;
        }
        max_s = fmaxf(max_s, s[b]);
    }
    /* d: the candidates from max_s / (n_ls - 0.5) (the largest block at the top scale) down,
     * keeping the one of least weighted error over the whole super-block; a smaller d gives
     * the small blocks finer scales at the cost of clipping the largest one, so the weights decide */
    float best_total = INFINITY;
    *dh = 0;
    memset(ls, 0, (size_t)nb);
    memset(idx, 0, (size_t)(nb * per) * sizeof *idx);
    memset(dneg, 0, sizeof dneg);
    for (int k = 0; k < N_D_TRIES; k++) {
        const uint16_t h = f32_to_fp16(max_s / (((float)L->n_ls - 0.5f) * L->scale_mul) * (1.f - 0.04f * (float)k));
        const float d = fp16_to_f32(h);
        uint8_t try_ls[QK_K / 16], try_dneg[QK_K / 4];
        uint16_t try_idx[QK_K / 4];
        float total = 0;
        for (int b = 0; b < nb; b++) {
            const float *tb = t + b * L->sb, *wb = w + b * L->sb;
            int l0 = d > 0 ? (int)lrintf(s[b] / (d * L->scale_mul) - 0.5f) : 0;
            l0 = l0 < 0 ? 0 : l0 > L->n_ls - 1 ? L->n_ls - 1 : l0;
            float best_err = INFINITY;
            uint16_t blk_idx[QK_K / 4];
            uint8_t blk_dneg[QK_K / 4];
            for (int l = l0 - 1; l <= l0 + 1; l++) {
                if (l < 0 || l > L->n_ls - 1) continue;
                const float err = fit_block(L, L->sb, tb, wb, d * (0.5f + (float)l) * L->scale_mul, blk_idx, blk_dneg, NULL);
                if (err < best_err) {
                    best_err = err;
                    try_ls[b] = (uint8_t)l;
                    memcpy(try_idx + b * per, blk_idx, (size_t)per * sizeof *idx);
                    memcpy(try_dneg + b * per, blk_dneg, (size_t)per);
                }
            }
            total += best_err;
        }
        if (total < best_total) {
            best_total = total;
            *dh = h;
            memcpy(ls, try_ls, (size_t)nb);
            memcpy(idx, try_idx, (size_t)(nb * per) * sizeof *idx);
            memcpy(dneg, try_dneg, (size_t)(nb * per));
        }
    }
    if (L->signed_levels) memcpy(neg, dneg, QK_K / 8); /* IQ1: groups of 8, one delta sign each */
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

static void pack_iq1_s(void *block, uint16_t dh, const uint8_t *ls, const uint16_t *idx, const uint8_t *neg)
{
    struct block_iq1_s *y = block;
    memcpy(&y->d, &dh, 2);
    for (int b = 0; b < QK_K / 32; b++) {
        /* 4 x 3 high index bits, the 3-bit scale, the delta sign (one per 32: neg[4b] for all 4 groups) */
        uint16_t qh = (uint16_t)(ls[b] << 12 | (neg[4 * b] ? 0x8000 : 0));
        for (int l = 0; l < 4; l++) {
            y->qs[4 * b + l] = (uint8_t)idx[4 * b + l];
            qh |= (uint16_t)((idx[4 * b + l] >> 8) << 3 * l);
        }
        memcpy(&y->qh[b], &qh, 2);
    }
}

static void pack_iq1_m(void *block, uint16_t dh, const uint8_t *ls, const uint16_t *idx, const uint8_t *neg)
{
    struct block_iq1_m *y = block;
    uint16_t sc[4] = { 0 };
    for (int b = 0; b < QK_K / 16; b++) sc[b / 4] |= (uint16_t)(ls[b] << 3 * (b % 4));
    for (int k = 0; k < 4; k++) sc[k] |= (uint16_t)((dh >> 4 * k & 0xf) << 12); /* d over the top nibbles */
    memcpy(y->scales, sc, sizeof sc);
    memset(y->qh, 0, sizeof y->qh);
    for (int g = 0; g < QK_K / 8; g++) {
        y->qs[g] = (uint8_t)idx[g];
        y->qh[g / 2] |= (uint8_t)(((idx[g] >> 8) | (neg[g] ? 8 : 0)) << 4 * (g % 2));
    }
}

int quantize_row_iq1_s(const float *x, struct block_iq1_s *y, uint64_t n, const float *qw)
{
    return quantize_lattice_row(&lat_iq1s, x, y, sizeof *y, n, qw, pack_iq1_s);
}

int quantize_row_iq1_m(const float *x, struct block_iq1_m *y, uint64_t n, const float *qw)
{
    return quantize_lattice_row(&lat_iq1m, x, y, sizeof *y, n, qw, pack_iq1_m);
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
