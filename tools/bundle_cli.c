/* `flashbox keygen --out DIR` and `flashbox bundle create ...` (see bundle_cli.h). */
#include "tools/bundle_cli.h"

#include "common/errmsg.h"
#include "engine/model/gguf.h"
#include "tools/convert.h"
#include "tools/convert_plan.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DEFAULT_PROMPT "0,17,42,99,123,7,300,5"
#define DEFAULT_SELFTEST_TOKENS 8u

int tool_keygen_main(int argc, char **argv)
{
    const char *dir = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--out") && i + 1 < argc) dir = argv[++i];
        else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            printf("usage: flashbox keygen --out DIR\n"
                   "  writes DIR/private.key (Ed25519, PKCS#8 PEM, mode 0600) and DIR/public.pem;\n"
                   "  copy public.pem into the box's trusted key directory (/etc/flashbox/trusted-keys/)\n");
            return 0;
        } else {
            fprintf(stderr, "flashbox keygen: unknown argument '%s'\n", argv[i]);
            return 2;
        }
    }
    if (!dir) {
        fprintf(stderr, "flashbox keygen: --out DIR is required\n");
        return 2;
    }
    char err[512];
    if (update_keygen(dir, err, sizeof err)) {
        fprintf(stderr, "flashbox keygen: %s\n", err);
        return 1;
    }
    printf("wrote %s/private.key (keep it offline) and %s/public.pem\n", dir, dir);
    return 0;
}

static void bundle_usage(FILE *out)
{
    fprintf(out,
            "usage: flashbox bundle create --key PRIVATE.key --product ID --version V --epoch E\n"
            "                              --model FILE [--firmware FILE] --out BUNDLE [options]\n"
            "  --chunk-size N[K|M|G]  chunk size, a power of two in [4K, 256M] (16M)\n"
            "  --prompt IDS           self-test prompt token ids (" DEFAULT_PROMPT ")\n"
            "  --selftest-tokens N    greedy tokens recorded for the self-test, 0..64 (%u)\n"
            "  --new-keys PEM         rotate the box's trusted keys to the public keys in PEM\n"
            "                         (must include the signing key's public half)\n"
            "  --created T            creation time, unix seconds (SOURCE_DATE_EPOCH or now)\n"
            "  --release-notes FILE   free text carried in the manifest's provenance section\n"
            "When the model records its conversion (flashbox convert) or --release-notes is given,\n"
            "the signed manifest gets a provenance section: that record, the model's SHA-256, the\n"
            "release notes and this flashbox's version.\n",
            DEFAULT_SELFTEST_TOKENS);
}

static int parse_u64(const char *flag, const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    uint64_t mul = 1;
    if (*end == 'K') mul = 1ull << 10;
    else if (*end == 'M') mul = 1ull << 20;
    else if (*end == 'G') mul = 1ull << 30;
    if (mul != 1) end++;
    if (errno || end == s || *end || s[0] == '-' || v > UINT64_MAX / mul) {
        fprintf(stderr, "flashbox bundle: %s: '%s' is not an unsigned number\n", flag, s);
        return -1;
    }
    *out = v * mul;
    return 0;
}

static int parse_ids(const char *s, int32_t *ids, uint32_t max, uint32_t *n)
{
    *n = 0;
    while (*s) {
        char *end;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (end == s || errno || v < 0 || v > INT32_MAX || (*end && *end != ',') || *n == max) {
            fprintf(stderr, "flashbox bundle: --prompt: bad or too many ids at \"%.20s\" (at most %u)\n", s, max);
            return -1;
        }
        ids[(*n)++] = (int32_t)v;
        s = *end ? end + 1 : end;
    }
    return 0;
}

/* The manifest's provenance JSON (malloc'd into *out), or *out = NULL when the model has
 * no conversion record and there are no release notes. */
static int build_provenance(const char *model, const char *notes_path, char **out, char *err, size_t len)
{
    *out = NULL;
    /* A payload that is no GGUF has no conversion record (update/ does not care what
     * model.gguf holds; the self-test does). */
    struct gguf_file *f = NULL;
    char ignored[256];
    const struct gguf_kv *kv = gguf_open(&f, model, ignored, sizeof ignored) ? NULL : gguf_find_kv(f, CONVERT_PROVENANCE_KEY);
    json_t *conversion = NULL;
    int rc = 0;
    if (kv) {
        json_error_t je;
        if (kv->type != GGUF_VAL_STRING ||
            !(conversion = json_loadb(kv->v.str.ptr, kv->v.str.len, JSON_REJECT_DUPLICATES, &je)) || !json_is_object(conversion))
            rc = errf(err, len, "%s: metadata %s is not a JSON object", model, CONVERT_PROVENANCE_KEY);
    }
    if (f) gguf_close(f);
    char *notes = NULL;
    if (!rc && notes_path) {
        FILE *nf = fopen(notes_path, "r");
        notes = nf ? calloc(1, UPDATE_MAX_PROVENANCE + 1) : NULL;
        size_t n = notes ? fread(notes, 1, UPDATE_MAX_PROVENANCE + 1, nf) : 0;
        if (!nf) rc = errf(err, len, "%s: %s", notes_path, strerror(errno));
        else if (!notes) rc = errf(err, len, "out of memory");
        else if (n > UPDATE_MAX_PROVENANCE) rc = errf(err, len, "%s: release notes over %u bytes", notes_path, UPDATE_MAX_PROVENANCE);
        if (nf) fclose(nf);
    }
    if (rc || (!conversion && !notes_path)) {
        json_decref(conversion);
        free(notes);
        return rc;
    }
    char hex[65];
    if (conv_sha256_file(model, hex, err, len)) rc = -1;
    json_t *p = rc ? NULL : json_pack("{s:s,s:s}", "gguf_sha256", hex, "bundled_by", "flashbox " FLASHBOX_VERSION);
    if (!rc && !p) rc = errf(err, len, "out of memory");
    if (p && conversion) json_object_set(p, "conversion", conversion);
    if (p && notes) {
        json_t *t = json_string(notes);
        if (!t) rc = errf(err, len, "%s: the release notes are not UTF-8 text", notes_path);
        else json_object_set_new(p, "release_notes", t);
    }
    if (!rc && !(*out = json_dumps(p, JSON_COMPACT | JSON_PRESERVE_ORDER))) rc = errf(err, len, "out of memory");
    json_decref(p);
    json_decref(conversion);
    free(notes);
    return rc;
}

int tool_bundle_run(int argc, char **argv, update_greedy_fn greedy, void *greedy_user)
{
    if (argc < 2 || strcmp(argv[1], "create")) {
        bundle_usage(argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) ? stdout : stderr);
        return argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) ? 0 : 2;
    }
    struct update_create_opts o;
    memset(&o, 0, sizeof o);
    uint64_t chunk = UPDATE_DEFAULT_CHUNK_SIZE, n_selftest = DEFAULT_SELFTEST_TOKENS, created = 0;
    int have_epoch = 0, have_created = 0;
    int32_t prompt[64], expected[64];
    const char *notes = NULL;
    uint32_t n_prompt = 0;
    if (parse_ids(DEFAULT_PROMPT, prompt, 64, &n_prompt)) return 2;
    for (int i = 2; i < argc; i += 2) { /* every option takes one value */
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            bundle_usage(stdout);
            return 0;
        }
        if (!v) {
            fprintf(stderr, "flashbox bundle create: %s needs a value\n", a);
            return 2;
        }
        if (!strcmp(a, "--key")) o.private_key = v;
        else if (!strcmp(a, "--product")) o.product = v;
        else if (!strcmp(a, "--version")) o.version = v;
        else if (!strcmp(a, "--epoch")) {
            if (parse_u64(a, v, &o.epoch)) return 2;
            have_epoch = 1;
        } else if (!strcmp(a, "--model")) o.model_path = v;
        else if (!strcmp(a, "--firmware")) o.firmware_path = v;
        else if (!strcmp(a, "--out")) o.out_path = v;
        else if (!strcmp(a, "--new-keys")) o.new_keys_path = v;
        else if (!strcmp(a, "--release-notes")) notes = v;
        else if (!strcmp(a, "--chunk-size")) {
            if (parse_u64(a, v, &chunk)) return 2;
        } else if (!strcmp(a, "--prompt")) {
            if (parse_ids(v, prompt, 64, &n_prompt)) return 2;
        } else if (!strcmp(a, "--selftest-tokens")) {
            if (parse_u64(a, v, &n_selftest)) return 2;
        } else if (!strcmp(a, "--created")) {
            if (parse_u64(a, v, &created)) return 2;
            have_created = 1;
        } else {
            fprintf(stderr, "flashbox bundle create: unknown argument '%s'\n", a);
            return 2;
        }
    }
    if (!o.private_key || !o.product || !o.version || !have_epoch || !o.model_path || !o.out_path) {
        fprintf(stderr, "flashbox bundle create: --key, --product, --version, --epoch, --model and --out are required\n");
        return 2;
    }
    if (chunk > UINT32_MAX || n_selftest > 64) {
        fprintf(stderr, "flashbox bundle create: --chunk-size or --selftest-tokens out of range\n");
        return 2;
    }
    if (!have_created) {
        const char *sde = getenv("SOURCE_DATE_EPOCH");
        if (!sde || parse_u64("SOURCE_DATE_EPOCH", sde, &created)) created = (uint64_t)time(NULL);
    }
    char err[1024];
    if (n_selftest > 0) {
        if (!greedy) {
            fprintf(stderr, "flashbox bundle create: no engine to record self-test tokens; use --selftest-tokens 0\n");
            return 1;
        }
        if (greedy(greedy_user, o.model_path, prompt, n_prompt, expected, (uint32_t)n_selftest, err, sizeof err)) {
            fprintf(stderr, "flashbox bundle create: %s\n", err);
            return 1;
        }
    }
    o.created = created;
    o.chunk_size = (uint32_t)chunk;
    o.prompt = prompt;
    o.n_prompt = n_prompt;
    o.expected = expected;
    o.n_expected = (uint32_t)n_selftest;
    char *provenance = NULL;
    if (build_provenance(o.model_path, notes, &provenance, err, sizeof err)) {
        fprintf(stderr, "flashbox bundle create: provenance: %s\n", err);
        return 1;
    }
    o.provenance = provenance;
    struct update_hooks hooks = { .progress = update_progress_tty };
    int rc = update_bundle_create(&o, &hooks, err, sizeof err);
    free(provenance);
    if (rc) {
        fprintf(stderr, "flashbox bundle create: %s\n", err);
        return 1;
    }
    printf("wrote %s: product %s, version %s, epoch %" PRIu64 ", chunk %" PRIu64 " bytes, self-test tokens:", o.out_path,
           o.product, o.version, o.epoch, chunk);
    for (uint32_t i = 0; i < o.n_expected; i++) printf("%s%d", i ? "," : " ", expected[i]);
    printf("%s\n", o.provenance ? "; with provenance" : "");
    return 0;
}
