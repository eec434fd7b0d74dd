/* Manifold-constrained hyper-connections on the CPU (spec §3.2): hc_pre with Sinkhorn,
 * hc_post and hc_head. The residual is n_hc streams of n_embd floats, stream-major. */
#include "engine/ref/ref.h"
#include "engine/ref/ref_ops.h"

#include <math.h>

/* m[r] = rms(x) * (fn[r] . x) over the flattened streams, r < n_rows. */
static void hc_mix(const float *X, uint32_t width, const float *fn, uint32_t n_rows, float eps, float *m)
{
    double ss = 0.0;
    for (uint32_t i = 0; i < width; i++) ss += (double)X[i] * X[i];
    double r = 1.0 / sqrt(ss / width + eps);
    for (uint32_t o = 0; o < n_rows; o++) {
        const float *row = fn + (uint64_t)o * width;
        double acc = 0.0;
        for (uint32_t i = 0; i < width; i++) acc += (double)row[i] * X[i];
        m[o] = (float)(acc * r);
    }
}

void ref_sinkhorn(float *comb, uint32_t n, uint32_t iters, float eps)
{
    for (uint32_t j = 0; j < n; j++) { /* row softmax over destinations, then +eps */
        float *row = comb + j * n;
        double mx = row[0], sum = 0.0;
        for (uint32_t k = 1; k < n; k++) mx = fmax(mx, row[k]);
        for (uint32_t k = 0; k < n; k++) sum += exp(row[k] - mx);
        for (uint32_t k = 0; k < n; k++) row[k] = (float)(exp(row[k] - mx) / sum + eps);
    }
    for (uint32_t it = 0; it < iters; it++) {
        if (it > 0) {
            for (uint32_t j = 0; j < n; j++) {
                double sum = 0.0;
                for (uint32_t k = 0; k < n; k++) sum += comb[j * n + k];
                for (uint32_t k = 0; k < n; k++) comb[j * n + k] = (float)(comb[j * n + k] / (sum + eps));
            }
        }
        for (uint32_t k = 0; k < n; k++) {
            double sum = 0.0;
            for (uint32_t j = 0; j < n; j++) sum += comb[j * n + k];
            for (uint32_t j = 0; j < n; j++) comb[j * n + k] = (float)(comb[j * n + k] / (sum + eps));
        }
    }
}

void ref_hc_pre(const struct model_hparams *hp, const float *X, const float *fn, const float *base,
                const float *scale, float *y, float *post, float *comb, float *mix_out)
{
    const uint32_t n = hp->n_hc, d = hp->n_embd, mix = (2 + n) * n;
    hc_mix(X, n * d, fn, mix, hp->rms_eps, mix_out);
    float pre[64];
    for (uint32_t j = 0; j < n; j++) {
        pre[j] = (float)(ref_sigmoid((double)mix_out[j] * scale[0] + base[j]) + hp->hc_eps);
        post[j] = (float)(2.0 * ref_sigmoid((double)mix_out[n + j] * scale[1] + base[n + j]));
    }
    for (uint32_t jk = 0; jk < n * n; jk++)
        comb[jk] = (float)((double)mix_out[2 * n + jk] * scale[2] + base[2 * n + jk]);
    ref_sinkhorn(comb, n, hp->hc_sinkhorn_iters, hp->hc_eps);
    for (uint32_t i = 0; i < d; i++) {
        double acc = 0.0;
        for (uint32_t j = 0; j < n; j++) acc += (double)pre[j] * X[(uint64_t)j * d + i];
        y[i] = (float)acc;
    }
}

void ref_hc_post(const struct model_hparams *hp, const float *F, const float *Xold, const float *post,
                 const float *comb, float *Xnew)
{
    const uint32_t n = hp->n_hc, d = hp->n_embd;
    for (uint32_t k = 0; k < n; k++)
        for (uint32_t i = 0; i < d; i++) {
            double acc = (double)post[k] * F[i];
            for (uint32_t j = 0; j < n; j++) acc += (double)comb[j * n + k] * Xold[(uint64_t)j * d + i];
            Xnew[(uint64_t)k * d + i] = (float)acc;
        }
}

void ref_hc_head(const struct model_hparams *hp, const float *X, const float *fn, const float *base,
                 const float *scale, float *y)
{
    const uint32_t n = hp->n_hc, d = hp->n_embd;
    float m[64], pre[64];
    hc_mix(X, n * d, fn, n, hp->rms_eps, m);
    for (uint32_t j = 0; j < n; j++) pre[j] = (float)(ref_sigmoid((double)m[j] * scale[0] + base[j]) + hp->hc_eps);
    for (uint32_t i = 0; i < d; i++) {
        double acc = 0.0;
        for (uint32_t j = 0; j < n; j++) acc += (double)pre[j] * X[(uint64_t)j * d + i];
        y[i] = (float)acc;
    }
}
