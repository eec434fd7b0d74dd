/* `flashbox mkmodel` command line: one flag per dimension of the generated model. */
#include "tools/mkmodel.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int tool_mkmodel_main(int argc, char **argv);

static void usage(FILE *out)
{
    struct mkmodel_config d;
    mkmodel_defaults(&d);
    fprintf(out,
            "usage: flashbox mkmodel --out FILE [options]   (defaults: the spec's tiny model)\n"
            "  --dim N (%u) --layers N (%u) --ratios R,R,... (0,0,4,128,4) --heads N (%u)\n"
            "  --head-dim N (%u) --rope-dim N (%u) --q-lora N (%u) --o-groups N (%u) --o-lora N (%u)\n"
            "  --window N (%u) --index-heads N (%u) --index-dim N (%u) --index-topk N (%u)\n"
            "  --experts N (%u) --experts-used N (%u) --ff N (%u) --vocab N (%u) --hash-layers N (%u)\n"
            "  --ctx N (%u) --seed N (%llu) --name S\n"
            "  --quant f32|mixed|f32-dequant|meta (f32): mixed = Q8_0 matrices, MXFP4 experts, F32 vectors;\n"
            "          f32-dequant = F32 holding the mixed file's dequantized values;\n"
            "          meta = the metadata only, no tensors (a model's shape for `flashbox plan`)\n"
            "  --expert-type T (MXFP4): routed experts' type in mixed and f32-dequant files: MXFP4,\n"
            "          Q8_0, or one of ggml's Q2_K..Q6_K, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ1_S, IQ1_M,\n"
            "          IQ4_NL, IQ4_XS (random valid blocks with the F32 weights' spread; --dim and --ff\n"
            "          multiples of 256)\n"
            "--ratios lists one ratio per layer (0 SWA, 4 CSA, 128 HCA); a shorter list repeats its\n"
            "last two entries.\n",
            d.n_embd, d.n_layer, d.n_head, d.head_dim, d.rope_dim, d.q_rank, d.o_groups, d.o_rank, d.window,
            d.ix_head, d.ix_dim, d.ix_topk, d.n_expert, d.n_expert_used, d.n_ff_exp, d.n_vocab, d.n_hash_layer,
            d.n_ctx, (unsigned long long)d.seed);
}

static int parse_u32(const char *flag, const char *s, uint32_t *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || *end || end == s || v > 1u << 24) {
        fprintf(stderr, "flashbox mkmodel: %s: '%s' is not a number in 0..16777216\n", flag, s);
        return -1;
    }
    *out = (uint32_t)v;
    return 0;
}

int tool_mkmodel_main(int argc, char **argv)
{
    struct mkmodel_config c;
    mkmodel_defaults(&c);
    const char *out = NULL, *ratios = NULL;
    struct { const char *flag; uint32_t *field; } dims[] = {
        { "--dim", &c.n_embd }, { "--layers", &c.n_layer }, { "--heads", &c.n_head }, { "--head-dim", &c.head_dim },
        { "--rope-dim", &c.rope_dim }, { "--q-lora", &c.q_rank }, { "--o-groups", &c.o_groups },
        { "--o-lora", &c.o_rank }, { "--window", &c.window }, { "--index-heads", &c.ix_head },
        { "--index-dim", &c.ix_dim }, { "--index-topk", &c.ix_topk }, { "--experts", &c.n_expert },
        { "--experts-used", &c.n_expert_used }, { "--ff", &c.n_ff_exp }, { "--vocab", &c.n_vocab },
        { "--hash-layers", &c.n_hash_layer }, { "--ctx", &c.n_ctx },
    };
    for (int i = 1; i < argc; i += 2) { /* every option takes one value */
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (!v) {
            fprintf(stderr, "flashbox mkmodel: '%s' needs a value (or is unknown)\n", a);
            return 2;
        }
        bool known = false;
        for (size_t k = 0; k < sizeof dims / sizeof dims[0] && !known; k++)
            if (!strcmp(a, dims[k].flag)) {
                if (parse_u32(a, v, dims[k].field)) return 2;
                known = true;
            }
        if (known) {
        } else if (!strcmp(a, "--out")) out = v;
        else if (!strcmp(a, "--ratios")) ratios = v;
        else if (!strcmp(a, "--name")) snprintf(c.name, sizeof c.name, "%s", v);
        else if (!strcmp(a, "--seed")) {
            char *end;
            c.seed = strtoull(v, &end, 10);
            if (*end || end == v) {
                fprintf(stderr, "flashbox mkmodel: --seed: '%s' is not a number\n", v);
                return 2;
            }
        } else if (!strcmp(a, "--expert-type")) {
            int t = gguf_type_from_name(v);
            if (t < 0) {
                fprintf(stderr, "flashbox mkmodel: --expert-type: '%s' is not a tensor type\n", v);
                return 2;
            }
            c.expert_type = (enum gguf_type)t;
        } else if (!strcmp(a, "--quant")) {
            if (!strcmp(v, "f32")) c.quant = MKMODEL_F32;
            else if (!strcmp(v, "mixed")) c.quant = MKMODEL_MIXED;
            else if (!strcmp(v, "f32-dequant")) c.quant = MKMODEL_F32_DEQUANT;
            else if (!strcmp(v, "meta")) c.quant = MKMODEL_META;
            else {
                fprintf(stderr, "flashbox mkmodel: --quant: '%s', expected f32, mixed, f32-dequant or meta\n", v);
                return 2;
            }
        } else {
            fprintf(stderr, "flashbox mkmodel: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!out) {
        fprintf(stderr, "flashbox mkmodel: --out FILE is required\n");
        return 2;
    }
    if (c.n_layer == 0 || c.n_layer > MKMODEL_MAX_LAYERS) {
        fprintf(stderr, "flashbox mkmodel: --layers: %u, expected 1..%d\n", c.n_layer, MKMODEL_MAX_LAYERS);
        return 2;
    }
    if (ratios) {
        uint32_t n = 0;
        for (const char *p = ratios; *p;) {
            char *end;
            unsigned long r = strtoul(p, &end, 10);
            if (end == p || (*end && *end != ',') || n >= MKMODEL_MAX_LAYERS) {
                fprintf(stderr, "flashbox mkmodel: --ratios: bad list '%s'\n", ratios);
                return 2;
            }
            c.ratio[n++] = (uint32_t)r;
            p = *end ? end + 1 : end;
        }
        /* a shorter list continues with its last two entries alternating, like Flash's 4,128 tail */
        for (uint32_t il = n; il < c.n_layer; il++) c.ratio[il] = n >= 2 ? c.ratio[il - 2] : c.ratio[0];
    } else {
        for (uint32_t il = 5; il < c.n_layer; il++) c.ratio[il] = c.ratio[il - 2];
    }
    char err[512];
    if (mkmodel_write(&c, out, err, sizeof err)) {
        fprintf(stderr, "flashbox mkmodel: %s\n", err);
        return 1;
    }
    fprintf(stderr, "flashbox mkmodel: wrote %s\n", out);
    return 0;
}
