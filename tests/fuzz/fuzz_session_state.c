/* libFuzzer target for saved session states, the bytes prefix reuse reads back from disk
 * (engine.c session_state_load, firmware/prefix_cache.c state files). A tiny model of
 * every layer kind (SWA, CSA, HCA) is made at start, with one reference session per KV
 * storage type. The first input byte picks the mode:
 * - even: the rest is a state loaded into the session of KV type (byte / 2) % 3. A state
 *   that loads leaves the session at a position within its context, saves back to the
 *   same bytes, and the session evaluates a token; one that is refused leaves it where it
 *   was.
 * - odd: the rest is the content of the prefix-cache file of the first 136 of a fixed token
 *   sequence (saved at start, so the name matches), read by a new cache into the f32
 *   session: what is resumed is at most that prefix, and the session then evaluates the
 *   next token. */
#include "engine/engine.h"
#include "firmware/prefix_cache.h"
#include "tools/mkmodel.h"

#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { N_CTX = 320, PREFIX = 136 }; /* the prefix holds an HCA entry */

static struct engine *engines[3];
static struct session *sessions[3];
static char dir[128], file[512];
static struct engine_model_id model_id;
static int32_t tokens[PREFIX + 8];
static uint8_t *saved; /* session_state_save's bytes of a load that succeeded */

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    char path[128], err[512];
    snprintf(path, sizeof path, "/tmp/fuzz_session_state_%d.gguf", (int)getpid());
    snprintf(dir, sizeof dir, "/tmp/fuzz_session_state_%d.d", (int)getpid());
    struct mkmodel_config c;
    mkmodel_defaults(&c);
    c.n_layer = 3;
    c.ratio[0] = 0; c.ratio[1] = 4; c.ratio[2] = 128;
    c.n_embd = 32; c.n_head = 1; c.head_dim = 32; c.rope_dim = 16; c.q_rank = 32; c.o_groups = 1; c.o_rank = 32;
    c.window = 8; c.ix_head = 2; c.ix_dim = 16; c.ix_topk = 2; c.n_expert = 4; c.n_expert_used = 2;
    c.n_ff_exp = 32; c.n_vocab = 320; c.n_hash_layer = 1; c.n_ctx = N_CTX;
    if (mkmodel_write(&c, path, err, sizeof err)) {
        fprintf(stderr, "fuzz_session_state: %s\n", err);
        abort();
    }
    for (int kv = 0; kv < 3; kv++) {
        struct engine_options o;
        engine_options_default(&o);
        o.model_path = path;
        o.kv = (enum engine_kv_type)kv;
        if (engine_open(&engines[kv], &o, err, sizeof err) ||
            session_create(engines[kv], N_CTX, &sessions[kv], err, sizeof err))
            abort();
    }
    unlink(path); /* the engines keep it mapped */
    if (engine_model_identity(engines[0], &model_id)) abort();
    saved = malloc(session_state_bytes(sessions[0], N_CTX) + 64);
    for (int i = 0; i < PREFIX + 8; i++) tokens[i] = (i * 37 + 5) % 320;
    /* the file of tokens[0, PREFIX), whose name the odd mode writes */
    struct prefix_cache *pc;
    struct prefix_cache_options po = { .mem_bytes = 16u << 20, .dir = dir, .disk_bytes = 16u << 20 };
    if (!saved || prefix_cache_create(&pc, &po, err, sizeof err)) abort();
    prefix_cache_set_model(pc, &model_id);
    if (session_eval(sessions[0], tokens, PREFIX, NULL, false, err, sizeof err)) abort();
    prefix_cache_save(pc, sessions[0], tokens);
    prefix_cache_destroy(pc);
    session_reset(sessions[0]);
    DIR *d = opendir(dir);
    for (struct dirent *de; d && (de = readdir(d));)
        if (strstr(de->d_name, ".fbp")) snprintf(file, sizeof file, "%s/%s", dir, de->d_name);
    if (d) closedir(d);
    if (!file[0]) abort();
    return 0;
}

static void fuzz_state(struct session *s, const uint8_t *data, size_t size)
{
    char err[512];
    session_reset(s);
    if (session_eval(s, tokens, 3, NULL, false, err, sizeof err)) abort();
    if (session_state_load(s, data, size, err, sizeof err) != 0) {
        if (session_pos(s) != 3) abort(); /* refused before any change */
        return;
    }
    const uint32_t pos = session_pos(s);
    if (pos > N_CTX || session_state_bytes(s, pos) != size) abort();
    if (session_state_save(s, saved, size, err, sizeof err) || memcmp(saved, data, size)) abort();
    if (pos < N_CTX && session_eval(s, tokens, 1, NULL, false, err, sizeof err)) abort();
}

static void fuzz_file(const uint8_t *data, size_t size)
{
    char err[512];
    FILE *f = fopen(file, "wb");
    if (!f) abort();
    if (size && fwrite(data, size, 1, f) != 1) abort();
    fclose(f);
    struct prefix_cache *pc;
    struct prefix_cache_options po = { .mem_bytes = 16u << 20, .dir = dir, .disk_bytes = 16u << 20 };
    if (prefix_cache_create(&pc, &po, err, sizeof err)) abort();
    prefix_cache_set_model(pc, &model_id);
    struct session *s = sessions[0];
    session_reset(s);
    const uint32_t got = prefix_cache_resume(pc, s, tokens, PREFIX + 8);
    prefix_cache_destroy(pc);
    if (got > PREFIX || session_pos(s) != got) abort();
    if (session_eval(s, tokens + got, 1, NULL, false, err, sizeof err)) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0) return 0;
    if (data[0] & 1) fuzz_file(data + 1, size - 1);
    else fuzz_state(sessions[(data[0] / 2) % 3], data + 1, size - 1);
    return 0;
}
