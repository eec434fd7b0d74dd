/* The auto backend rule (firmware/backend_pick.c): a GPU always takes Vulkan; a CPU driver
 * takes Vulkan only for models of BACKEND_PICK_CPU_DRIVER_MIN_MODEL_BYTES or more; every
 * answer says why; and the daemon's /health names the backend and the reason. */
#include "firmware/backend_pick.h"
#include "tests/harness.h"
#include "tests/serve_client.h"

#include <stdlib.h>

TEST(backend_rule_gpu_takes_vulkan_and_cpu_driver_decides_by_model_size)
{
    char why[256];
    CHECK(backend_rule("discrete", 1u << 20, why, sizeof why) == ENGINE_BACKEND_VULKAN);
    CHECK(strstr(why, "discrete GPU") != NULL);
    CHECK(backend_rule("cpu", BACKEND_PICK_CPU_DRIVER_MIN_MODEL_BYTES - 1, why, sizeof why) == ENGINE_BACKEND_REF);
    CHECK(strstr(why, "under 64 MiB") != NULL);
    CHECK(backend_rule("cpu", BACKEND_PICK_CPU_DRIVER_MIN_MODEL_BYTES, why, sizeof why) == ENGINE_BACKEND_VULKAN);
    CHECK(strstr(why, "at least 64 MiB") != NULL);
    CHECK(backend_rule("cpu", 0, why, sizeof why) == ENGINE_BACKEND_REF);
    CHECK(strstr(why, "64 MiB or more") != NULL);
}

TEST(backend_resolve_records_why_and_leaves_named_backends_alone)
{
    struct engine_options o;
    engine_options_default(&o);
    o.backend = ENGINE_BACKEND_REF;
    backend_resolve(&o);
    char why[512];
    backend_pick_reason(why, sizeof why);
    CHECK(o.backend == ENGINE_BACKEND_REF);
    CHECK_STR(why, "ref: asked for by name");
    /* auto on the tiny model: the reference on a CPU driver or without Vulkan, Vulkan on a GPU */
    o.backend = ENGINE_BACKEND_AUTO;
    o.model_path = serve_test_model();
    backend_resolve(&o);
    backend_pick_reason(why, sizeof why);
    CHECK(strstr(why, "auto") != NULL);
    CHECK(!strncmp(why, o.backend == ENGINE_BACKEND_REF ? "ref: " : "vulkan: ", o.backend == ENGINE_BACKEND_REF ? 5 : 8));
}

TEST(serve_health_names_the_backend_and_why)
{
    struct served d;
    const char *sets[] = { "server.slots=1", NULL };
    REQUIRE(serve_start(&d, sets) == 0);
    char *out = NULL;
    CHECK_EQ_INT(serve_curl(&d, "GET", "/health", NULL, &out, NULL), 200);
    CHECK(out && (strstr(out, "\"backend\":\"ref\"") || strstr(out, "\"backend\":\"vulkan\"")));
    CHECK(out && strstr(out, "\"backend_reason\":\"auto") != NULL);
    free(out);
    serve_stop(&d, 15, 10000);
}
