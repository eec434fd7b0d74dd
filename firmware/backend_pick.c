/* Resolves the "auto" backend from the board and the model's size. See backend_pick.h. */
#include "firmware/backend_pick.h"
#include "board/board.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static pthread_mutex_t reason_lock = PTHREAD_MUTEX_INITIALIZER;
static char reason[512];

static void set_reason(const char *why)
{
    size_t n = strnlen(why, sizeof reason - 1); /* a longer reason is cut, not refused */
    pthread_mutex_lock(&reason_lock);
    memcpy(reason, why, n);
    reason[n] = 0;
    pthread_mutex_unlock(&reason_lock);
}

void backend_pick_reason(char *buf, size_t len)
{
    if (!len) return;
    pthread_mutex_lock(&reason_lock);
    snprintf(buf, len, "%s", reason);
    pthread_mutex_unlock(&reason_lock);
}

enum engine_backend backend_rule(const char *device_type, uint64_t model_bytes, char *why, size_t why_len)
{
    const unsigned min_mib = (unsigned)(BACKEND_PICK_CPU_DRIVER_MIN_MODEL_BYTES >> 20);
    if (strcmp(device_type, "cpu") != 0) {
        snprintf(why, why_len, "auto: a %s GPU", device_type);
        return ENGINE_BACKEND_VULKAN;
    }
    if (!model_bytes) {
        snprintf(why, why_len, "auto: only a CPU Vulkan driver; vulkan for models of %u MiB or more, else ref", min_mib);
        return ENGINE_BACKEND_REF;
    }
    if (model_bytes >= BACKEND_PICK_CPU_DRIVER_MIN_MODEL_BYTES) {
        snprintf(why, why_len, "auto: only a CPU Vulkan driver, and the model (%llu MiB) is at least %u MiB, where its kernels outrun the reference",
                 (unsigned long long)(model_bytes >> 20), min_mib);
        return ENGINE_BACKEND_VULKAN;
    }
    snprintf(why, why_len, "auto: only a CPU Vulkan driver, and the model (%llu MiB) is under %u MiB, where the reference answers before Vulkan's pipelines compile",
             (unsigned long long)(model_bytes >> 20), min_mib);
    return ENGINE_BACKEND_REF;
}

void backend_resolve(struct engine_options *opt)
{
    char why[sizeof reason + 512];
    if (opt->backend != ENGINE_BACKEND_AUTO) {
        snprintf(why, sizeof why, "%s: asked for by name", opt->backend == ENGINE_BACKEND_REF ? "ref" : "vulkan");
        set_reason(why);
        return;
    }
    opt->backend = ENGINE_BACKEND_REF;
    struct board *b = calloc(1, sizeof *b);
    char err[256];
    if (!b || board_probe(b, err, sizeof err) != 0) {
        free(b);
        set_reason("ref: auto, no usable Vulkan driver");
        return;
    }
    int i = board_pick(b, opt->device_index, opt->device_uuid, err, sizeof err);
    if (i < 0 || b->gpus[i].unsupported[0]) {
        snprintf(why, sizeof why, "ref: auto, the Vulkan device lacks a required feature (%s)",
                 i >= 0 ? b->gpus[i].unsupported : err);
        set_reason(why);
        free(b);
        return;
    }
    struct stat st;
    uint64_t model_bytes = opt->model_path && stat(opt->model_path, &st) == 0 ? (uint64_t)st.st_size : 0;
    char rule[256];
    opt->backend = backend_rule(b->gpus[i].type, model_bytes, rule, sizeof rule);
    if (opt->backend == ENGINE_BACKEND_VULKAN && opt->device_index < 0 && !opt->device_uuid)
        opt->device_index = b->gpus[i].vk_index;
    snprintf(why, sizeof why, "%s: %s (%s)", opt->backend == ENGINE_BACKEND_REF ? "ref" : "vulkan", rule, b->gpus[i].name);
    set_reason(why);
    free(b);
}
