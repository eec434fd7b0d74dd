/* The daemon's prefix cache (firmware/prefix_cache.c) on the spec's tiny model: a state
 * saved by one instance and read back from its file by another gives bitwise the logits
 * of continuing the original session; a damaged file, a file of another model or KV
 * storage type and a file over the disk budget are not loaded, and the session still
 * evaluates. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/engine.h"
#include "firmware/prefix_cache.h"
#include "tests/harness.h"

enum { N_TOK = 300, SPLIT = 256, VOCAB = 512 };

/* The one .fbp file in dir into path; false when there is none. */
static bool state_file(const char *dir, char *path, size_t len)
{
    DIR *d = opendir(dir);
    if (!d) return false;
    bool found = false;
    for (struct dirent *de; !found && (de = readdir(d));)
        if (strstr(de->d_name, ".fbp")) {
            snprintf(path, len, "%s/%s", dir, de->d_name);
            found = true;
        }
    closedir(d);
    return found;
}

/* A new cache over dir for model id; resumes tokens into a fresh session of e. */
static uint32_t resume_with(struct engine *e, const char *dir, const struct engine_model_id *id, uint64_t disk,
                            const int32_t *tok, struct session **s, struct prefix_cache_stats *st)
{
    char err[256];
    struct prefix_cache *c = NULL;
    struct prefix_cache_options o = { .mem_bytes = 64u << 20, .dir = dir, .disk_bytes = disk };
    if (prefix_cache_create(&c, &o, err, sizeof err) || session_create(e, 512, s, err, sizeof err)) {
        test_fail_at(__FILE__, __LINE__, "%s", err);
        prefix_cache_destroy(c);
        return 0;
    }
    prefix_cache_set_model(c, id);
    uint32_t got = prefix_cache_resume(c, *s, tok, N_TOK);
    prefix_cache_get_stats(c, st);
    prefix_cache_destroy(c);
    return got;
}

TEST(prefix_state_files_reload_bitwise_and_damaged_or_foreign_ones_are_ignored)
{
    char path[512], dir[512], err[512], file[700];
    const char *model = test_fixture("model/v4-tiny-f32.gguf");
    snprintf(path, sizeof path, "%s", model);
    snprintf(dir, sizeof dir, "%s/prefix", test_tmpdir());
    struct engine_options o;
    engine_options_default(&o);
    o.model_path = path;
    struct engine *e = NULL;
    REQUIRE(engine_open(&e, &o, err, sizeof err) == 0);
    struct engine_model_id id, other;
    REQUIRE(engine_model_identity(e, &id) == 0);
    other = id;
    other.mtime_ns++;
    int32_t tok[N_TOK];
    for (int i = 0; i < N_TOK; i++) tok[i] = (int32_t)((i * 37 + 11) % VOCAB);
    float *want = malloc((size_t)(N_TOK - SPLIT) * VOCAB * 4), *got = malloc((size_t)(N_TOK - SPLIT) * VOCAB * 4);

    /* the first instance saves the state at SPLIT and writes its file */
    struct prefix_cache *c = NULL;
    struct prefix_cache_options po = { .mem_bytes = 64u << 20, .dir = dir, .disk_bytes = 64u << 20 };
    struct session *s1 = NULL, *s2 = NULL;
    REQUIRE(prefix_cache_create(&c, &po, err, sizeof err) == 0);
    prefix_cache_set_model(c, &id);
    REQUIRE(session_create(e, 512, &s1, err, sizeof err) == 0);
    REQUIRE(session_eval(s1, tok, SPLIT, NULL, false, err, sizeof err) == 0);
    prefix_cache_save(c, s1, tok);
    struct prefix_cache_stats st;
    prefix_cache_get_stats(c, &st);
    CHECK_EQ_INT(st.disk_writes, 1);
    prefix_cache_destroy(c);
    REQUIRE(session_eval(s1, tok + SPLIT, N_TOK - SPLIT, want, true, err, sizeof err) == 0);
    REQUIRE(state_file(dir, file, sizeof file));

    /* another instance (a restarted daemon) reads it */
    CHECK_EQ_INT(resume_with(e, dir, &id, 64u << 20, tok, &s2, &st), SPLIT);
    CHECK_EQ_INT(st.disk_hits, 1);
    CHECK(session_eval(s2, tok + SPLIT, N_TOK - SPLIT, got, true, err, sizeof err) == 0);
    CHECK(memcmp(want, got, (size_t)(N_TOK - SPLIT) * VOCAB * 4) == 0);
    session_destroy(s2);

    /* the same model with entries and keys stored in fp8: the f32 state is refused (the
     * state's header records its KV type) and the session evaluates from the start */
    {
        struct engine *e8 = NULL;
        o.kv = ENGINE_KV_FP8;
        REQUIRE(engine_open(&e8, &o, err, sizeof err) == 0);
        CHECK_EQ_INT(resume_with(e8, dir, &id, 64u << 20, tok, &s2, &st), 0);
        CHECK_EQ_INT(st.disk_hits, 1);
        CHECK_EQ_INT(st.disk_ignored, 1);
        CHECK_EQ_INT(session_pos(s2), 0);
        CHECK(session_eval(s2, tok, 8, NULL, false, err, sizeof err) == 0);
        session_destroy(s2);
        engine_close(e8);
    }

    /* another model file's identity: not loaded */
    CHECK_EQ_INT(resume_with(e, dir, &other, 64u << 20, tok, &s2, &st), 0);
    CHECK_EQ_INT(st.disk_ignored, 1);
    CHECK_EQ_INT(session_pos(s2), 0);
    session_destroy(s2);

    /* a flipped byte in the state: not loaded, and the session evaluates from the start */
    FILE *f = fopen(file, "r+b");
    REQUIRE(f != NULL);
    fseek(f, -100, SEEK_END);
    int ch = fgetc(f);
    fseek(f, -100, SEEK_END);
    fputc(ch ^ 0x40, f);
    fclose(f);
    CHECK_EQ_INT(resume_with(e, dir, &id, 64u << 20, tok, &s2, &st), 0);
    CHECK_EQ_INT(st.disk_ignored, 1);
    CHECK(session_eval(s2, tok, N_TOK, NULL, false, err, sizeof err) == 0);
    session_destroy(s2);

    /* cut short, and shorter than its header: not loaded */
    for (int cut = 0; cut < 2; cut++) {
        REQUIRE(truncate(file, cut ? 40 : 20000) == 0);
        CHECK_EQ_INT(resume_with(e, dir, &id, 64u << 20, tok, &s2, &st), 0);
        CHECK_EQ_INT(st.disk_ignored, 1);
        CHECK_EQ_INT(session_pos(s2), 0);
        session_destroy(s2);
    }

    /* a budget smaller than one file: nothing is written */
    remove(file);
    snprintf(dir, sizeof dir, "%s/prefix-small", test_tmpdir());
    po.dir = dir;
    po.disk_bytes = 1024;
    REQUIRE(prefix_cache_create(&c, &po, err, sizeof err) == 0);
    prefix_cache_set_model(c, &id);
    session_reset(s1);
    REQUIRE(session_eval(s1, tok, SPLIT, NULL, false, err, sizeof err) == 0);
    prefix_cache_save(c, s1, tok);
    prefix_cache_get_stats(c, &st);
    CHECK_EQ_INT(st.disk_writes, 0);
    CHECK_EQ_INT(st.entries, 1); /* memory still holds it */
    CHECK(!state_file(dir, file, sizeof file));
    prefix_cache_destroy(c);

    session_destroy(s1);
    engine_close(e);
    free(want);
    free(got);
}
