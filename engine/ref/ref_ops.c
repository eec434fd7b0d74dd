/* CPU reference elementary operations. See ref_ops.h. */
#include "engine/ref/ref_ops.h"
#include "engine/model/quant.h"

#include <math.h>
#include <string.h>

void ref_get_row(tensor_ref w, uint64_t row, float *out)
{
    uint64_t n = w->ne[0], row_bytes = w->nbytes / (w->n_elements / n);
    dequant_row(w->type, (const uint8_t *)w->data + row * row_bytes, out, n);
}

void ref_matvec(tensor_ref w, uint64_t row0, uint64_t n_rows, const float *x, float *y, float *rowbuf)
{
    const uint64_t n = w->ne[0];
    const uint64_t row_bytes = w->nbytes / (w->n_elements / n);
    const uint8_t *base = (const uint8_t *)w->data + row0 * row_bytes;
    for (uint64_t r = 0; r < n_rows; r++) {
        const float *row = rowbuf;
        if (w->type == GGUF_TYPE_F32) row = (const float *)(base + r * row_bytes);
        else dequant_row(w->type, base + r * row_bytes, rowbuf, n);
        /* four partial sums: independent dependency chains, same double precision */
        double acc[4] = { 0.0, 0.0, 0.0, 0.0 };
        uint64_t i = 0;
        for (; i + 4 <= n; i += 4)
            for (int k = 0; k < 4; k++) acc[k] += (double)row[i + k] * (double)x[i + k];
        for (; i < n; i++) acc[0] += (double)row[i] * (double)x[i];
        y[r] = (float)((acc[0] + acc[1]) + (acc[2] + acc[3]));
    }
}

void ref_rmsnorm(const float *x, const float *weight, uint32_t n, float eps, float *y)
{
    double ss = 0.0;
    for (uint32_t i = 0; i < n; i++) ss += (double)x[i] * x[i];
    double r = 1.0 / sqrt(ss / n + eps);
    for (uint32_t i = 0; i < n; i++) y[i] = (float)(x[i] * r * (weight ? weight[i] : 1.0f));
}

void ref_rope_freqs(const struct model_hparams *hp, bool compressed, double *freqs)
{
    const uint32_t half = hp->rope_dim / 2;
    const double base = compressed ? hp->compress_rope_base : hp->rope_base;
    for (uint32_t i = 0; i < half; i++) freqs[i] = pow(base, -2.0 * i / hp->rope_dim);
    if (!compressed || hp->yarn_factor <= 1.0f) return;
    /* YaRN: dims rotating fewer than beta_fast times over the original context keep their
     * frequency, those rotating more than beta_slow... are interpolated by 1/factor, with a
     * linear ramp between (spec §3.5). */
    const double two_pi = 2.0 * M_PI;
    double corr_fast = hp->rope_dim * log(hp->yarn_orig_ctx / (hp->yarn_beta_fast * two_pi)) / (2.0 * log(base));
    double corr_slow = hp->rope_dim * log(hp->yarn_orig_ctx / (hp->yarn_beta_slow * two_pi)) / (2.0 * log(base));
    double low = fmax(floor(corr_fast), 0.0);
    double high = fmin(ceil(corr_slow), hp->rope_dim - 1.0);
    if (high == low) high += 0.001;
    for (uint32_t i = 0; i < half; i++) {
        double ramp = (i - low) / (high - low);
        ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
        freqs[i] = freqs[i] * (1.0 - ramp) + freqs[i] / hp->yarn_factor * ramp;
    }
}

void ref_rope(float *x, uint32_t dim, uint32_t rope_dim, const double *freqs, uint64_t pos, bool inverse)
{
    float *r = x + (dim - rope_dim);
    for (uint32_t i = 0; i < rope_dim / 2; i++) {
        double angle = (double)pos * freqs[i] * (inverse ? -1.0 : 1.0);
        double c = cos(angle), s = sin(angle);
        double x0 = r[2 * i], x1 = r[2 * i + 1];
        r[2 * i] = (float)(x0 * c - x1 * s);
        r[2 * i + 1] = (float)(x0 * s + x1 * c);
    }
}

double ref_softplus(double x)
{
    /* max(x,0) + log1p(e^-|x|): exact to double precision for any x, where the naive
     * log(1 + e^x) returns 0 below about -37 in double and -17 in float. */
    return fmax(x, 0.0) + log1p(exp(-fabs(x)));
}

double ref_sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }

double ref_silu(double x) { return x / (1.0 + exp(-x)); }

/* Whether entry a ranks below entry b: a smaller value, or an equal one at a higher index. */
static bool topk_below(const float *v, int32_t a, int32_t b) { return v[a] < v[b] || (v[a] == v[b] && a > b); }

/* Restores the heap order (lowest-ranked entry on top) below slot i of h[n]. */
static void topk_sift(const float *v, int32_t *h, uint32_t n, uint32_t i)
{
    for (;;) {
        uint32_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && topk_below(v, h[l], h[m])) m = l;
        if (r < n && topk_below(v, h[r], h[m])) m = r;
        if (m == i) return;
        int32_t t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
}

void ref_topk(const float *v, uint32_t n, uint32_t k, int32_t *idx)
{
    /* The k best in a heap whose top is the worst kept (O(n log k): the indexer ranks up
     * to 262,144 entries at 1M positions), then sorted best first by popping the worst
     * into the last free slot. A later entry replaces the top only when strictly better,
     * which keeps the lower index on ties. */
    if (k > n) k = n;
    if (k == 0) return;
    for (uint32_t i = 0; i < k; i++) idx[i] = (int32_t)i;
    for (uint32_t i = k / 2; i-- > 0;) topk_sift(v, idx, k, i);
    for (uint32_t i = k; i < n; i++)
        if (topk_below(v, idx[0], (int32_t)i)) {
            idx[0] = (int32_t)i;
            topk_sift(v, idx, k, 0);
        }
    for (uint32_t m = k; m > 1; m--) {
        int32_t t = idx[0];
        idx[0] = idx[m - 1];
        idx[m - 1] = t;
        topk_sift(v, idx, m - 1, 0);
    }
}
