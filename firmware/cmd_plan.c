/* `flashbox plan`: the memory plan of a model (engine_plan_*) on a backend for a context
 * and a number of sessions, against the device's memory (the board's pick, for vulkan) or
 * the host's available memory (ref), and the largest context that fits. Reads the model's
 * metadata and tensor sizes only; loads nothing. */
#include "board/board.h"
#include "engine/engine.h"
#include "firmware/backend_pick.h"
#include "firmware/commands.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int usage(FILE *out)
{
    fprintf(out,
            "usage: flashbox plan -m MODEL.gguf [--backend auto|ref|vulkan] [--ctx N] [--slots N]\n"
            "                     [--expert-cache-mb N] [--budget-mb N] [--kv f32|f16|fp8]\n"
            "  prints, part by part, the memory the engine would allocate: resident weights, the\n"
            "  expert cache, and per session the window rings, each kind of compressed entries, the\n"
            "  indexer keys, compressor state, rope tables and scratch; then the largest context\n"
            "  that fits the slots in the device's memory (vulkan: the board's device-local heap;\n"
            "  ref: available host memory plus the model's mapped weights), or in --budget-mb.\n"
            "  --ctx N     the context to itemise (default: the model's context_length)\n"
            "  --slots N   concurrent sessions (default 1)\n"
            "  --kv T      storage of compressed entries and indexer keys: f32 (default), f16, fp8\n");
    return out == stdout ? 0 : 2;
}

static int parse_u64(const char *s, uint64_t *out)
{
    if (!s || !*s) return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || s[0] == '-') return -1;
    *out = v;
    return 0;
}

/* Device-local memory of the device the board picks (its budget when reported), 0 if none. */
static uint64_t device_budget(const struct engine_options *o)
{
    static struct board b;
    char err[256];
    if (board_probe(&b, err, sizeof err)) return 0;
    int i = board_pick(&b, o->device_index, o->device_uuid, err, sizeof err);
    if (i < 0) return 0;
    uint64_t best = 0;
    for (uint32_t h = 0; h < b.gpus[i].n_heaps; h++) {
        const struct board_heap *hp = &b.gpus[i].heaps[h];
        uint64_t v = hp->budget ? hp->budget : hp->size;
        if (hp->device_local && v > best) best = v;
    }
    return best;
}

int cmd_plan(int argc, char **argv)
{
    struct engine_options o;
    engine_options_default(&o);
    o.backend = ENGINE_BACKEND_AUTO;
    uint64_t ctx = 0, slots = 1, budget_mb = 0;
    for (int i = 1; i < argc; i += 2) { /* every option but --help takes a value */
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) return usage(stdout);
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) o.model_path = v;
        else if (!strcmp(a, "--backend")) bad = !v || engine_backend_parse(v, &o.backend);
        else if (!strcmp(a, "--kv")) bad = !v || engine_kv_parse(v, &o.kv);
        else if (!strcmp(a, "--ctx")) bad = parse_u64(v, &ctx) || ctx > UINT32_MAX;
        else if (!strcmp(a, "--slots")) bad = parse_u64(v, &slots) || slots == 0 || slots > 4096;
        else if (!strcmp(a, "--expert-cache-mb")) bad = parse_u64(v, &o.expert_cache_mb) || o.expert_cache_mb > (1ull << 40);
        else if (!strcmp(a, "--budget-mb")) bad = parse_u64(v, &budget_mb) || budget_mb > (1ull << 40);
        else {
            fprintf(stderr, "flashbox plan: unknown option '%s'\n", a);
            return usage(stderr);
        }
        if (bad) {
            fprintf(stderr, "flashbox plan: %s: bad value '%s'\n", a, v ? v : "(missing)");
            return 2;
        }
    }
    if (!o.model_path) {
        fprintf(stderr, "flashbox plan: -m MODEL is required\n");
        return usage(stderr);
    }
    backend_resolve(&o);
    char err[512];
    struct engine_plan p;
    if (engine_plan_file(o.model_path, o.backend, o.kv, (uint32_t)ctx, (uint32_t)slots, o.expert_cache_mb, &p, err, sizeof err)) {
        fprintf(stderr, "flashbox plan: %s\n", err);
        return 1;
    }
    uint64_t budget = budget_mb << 20;
    const char *what = "budget (--budget-mb)";
    if (!budget && o.backend == ENGINE_BACKEND_VULKAN) {
        budget = device_budget(&o);
        what = "device-local memory";
    } else if (!budget) {
        uint64_t avail = engine_host_memory_available();
        budget = avail ? avail + p.weights : 0;
        what = "host available + weights";
    }
    engine_plan_print(&p, budget, what, stdout);
    if (budget) {
        uint32_t fit = 0;
        struct engine_plan f;
        if (engine_plan_file_fit(o.model_path, o.backend, o.kv, (uint32_t)slots, o.expert_cache_mb, budget, &f, &fit, err,
                                 sizeof err)) {
            fprintf(stderr, "flashbox plan: %s\n", err);
            return 1;
        }
        if (fit)
            printf("largest context for %u session%s: %u positions (%.1f MiB a session)\n", (unsigned)slots,
                   slots == 1 ? "" : "s", fit, (double)f.per_session / (1 << 20));
        else
            printf("no context fits %u session%s: weights and cache alone need %.1f MiB\n", (unsigned)slots,
                   slots == 1 ? "" : "s", (double)(f.weights + f.expert_cache) / (1 << 20));
    }
    return 0;
}
