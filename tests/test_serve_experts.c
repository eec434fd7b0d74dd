/* The daemon with paged experts on the Vulkan backend: a model file that loses its tail
 * while the daemon runs fails the request that needs a lost expert with a clear error, and
 * the daemon keeps serving. Skipped when there is no Vulkan at all. */
#include "engine/engine.h"
#include "engine/model/model.h"
#include "tests/harness.h"
#include "tests/serve_client.h"

#include <signal.h>
#include <sys/wait.h>
#include <stdlib.h>
#include <unistd.h>

#define CHAT "/v1/chat/completions"

static void skip_without_vulkan(const char *model)
{
    struct engine_options o;
    engine_options_default(&o);
    o.model_path = model;
    o.backend = ENGINE_BACKEND_VULKAN;
    struct engine *e;
    char err[512];
    if (engine_open(&e, &o, err, sizeof err) == 0) {
        engine_close(e);
        return;
    }
    if (strstr(err, "no Vulkan driver") || strstr(err, "no Vulkan device")) test_skip(err);
}

TEST(serve_paged_expert_read_error_keeps_serving)
{
    const char *model = serve_test_model();
    REQUIRE(model);
    skip_without_vulkan(model);
    /* where layer 4's down experts start: cutting half of them loses experts 4..7 there */
    struct model *m;
    char err[512];
    REQUIRE(model_open(&m, model, err, sizeof err) == 0);
    const struct gguf_tensor *down4 = m->layers[4].ffn_down_exps;
    off_t cut = (off_t)((const uint8_t *)down4->data - m->file->map + down4->nbytes / 2);
    model_close(m);

    /* 1 MiB holds 5 of the tiny f32 model's 40 experts: layer 4 keeps reloading */
    const char *sets[] = { "model.backend=vulkan", "model.expert_cache_mb=1", NULL };
    struct served d;
    REQUIRE(serve_start(&d, sets) == 0);
    const char *body = "{\"messages\":[{\"role\":\"user\",\"content\":\"hello\"}],\"max_tokens\":24,"
                       "\"temperature\":0,\"ignore_eos\":true}";
    char *out = NULL;
    CHECK_EQ_INT(serve_curl(&d, "POST", CHAT, body, &out, NULL), 200);
    free(out);
    CHECK(serve_metric(&d, "flashbox_expert_cache_misses_total{layer=\"learned\"}") > 0); /* the cache pages */
    /* device memory held (whole arena chunks) and the device's size */
    double used = serve_metric(&d, "flashbox_device_memory_used_bytes");
    CHECK(used >= (1 << 20));
    CHECK(serve_metric(&d, "flashbox_device_memory_total_bytes") >= used);

    REQUIRE(truncate(d.model, cut) == 0);
    int failures = 0;
    for (int i = 0; i < 3; i++) {
        out = NULL;
        int st = serve_curl(&d, "POST", CHAT, body, &out, NULL);
        if (st >= 500) {
            failures++;
            if (!out || !strstr(out, "truncated")) test_fail_at(__FILE__, __LINE__, "status %d without a clear reason: %s", st, out ? out : "");
        } else if (st != 200) {
            test_fail_at(__FILE__, __LINE__, "status %d: %s", st, out ? out : "");
        }
        free(out);
    }
    CHECK(failures > 0); /* 72 decode steps over a 5-slot cache must have needed a lost expert */
    out = NULL;
    int hs = serve_curl(&d, "GET", "/health", NULL, &out, NULL); /* degraded (503) right after a failed step */
    CHECK(hs == 200 || (hs == 503 && out && strstr(out, "\"degraded\"")));
    free(out);
    out = NULL;
    CHECK_EQ_INT(serve_curl(&d, "POST", "/tokenize", "{\"content\":\"still here\"}", &out, NULL), 200);
    free(out);
    CHECK(kill(d.pid, 0) == 0);
    CHECK(WIFEXITED(serve_stop(&d, SIGTERM, 10000)));
}
