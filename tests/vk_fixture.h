/* Shared set-up for the Vulkan tests: a device (the test is skipped when the machine has
 * no Vulkan driver or device at all), the kernel set, and arenas for weights and
 * activations; helpers to place data and compare against the CPU reference. */
#ifndef FLASHBOX_TESTS_VK_FIXTURE_H
#define FLASHBOX_TESTS_VK_FIXTURE_H

#include <stdlib.h>
#include <string.h>

#include "engine/vulkan/vk_ops.h"
#include "tests/harness.h"

struct vk_fixture {
    struct vk_device *d;
    struct vk_ops ops;
    struct vk_arena *dev_arena;
    struct vk_recorder *rec;
    char err[512];
};

/* Creates everything or skips the test when there is no Vulkan at all. */
static inline int vk_fixture_open(struct vk_fixture *f)
{
    memset(f, 0, sizeof *f);
    if (vk_device_create(&f->d, -1, NULL, f->err, sizeof f->err)) {
        if (strstr(f->err, "no Vulkan driver") || strstr(f->err, "no Vulkan device")) test_skip(f->err);
        test_fail_at(__FILE__, __LINE__, "%s", f->err);
        return -1;
    }
    if (vk_ops_create(&f->ops, f->d, f->err, sizeof f->err) ||
        vk_arena_create(&f->dev_arena, f->d, VK_MEM_DEVICE, 16u << 20, f->err, sizeof f->err) ||
        vk_recorder_create(f->d, 4096, 64, &f->rec, f->err, sizeof f->err)) {
        test_fail_at(__FILE__, __LINE__, "%s", f->err);
        return -1;
    }
    return 0;
}

static inline void vk_fixture_close(struct vk_fixture *f)
{
    vk_recorder_destroy(f->rec);
    vk_arena_destroy(f->dev_arena);
    vk_ops_destroy(&f->ops);
    vk_device_destroy(f->d);
}

/* A device span holding n bytes copied from src (or zeros when src is NULL). */
static inline int vk_fixture_put(struct vk_fixture *f, const void *src, uint64_t n, struct vk_span *out)
{
    if (vk_arena_alloc(f->dev_arena, n, 16, out, f->err, sizeof f->err)) return -1;
    if (src) return vk_span_upload(f->d, out, 0, src, n, f->err, sizeof f->err);
    void *z = calloc(1, n ? n : 1);
    int rc = vk_span_upload(f->d, out, 0, z, n, f->err, sizeof f->err);
    free(z);
    return rc;
}

/* For tests run with LP_NATIVE_VECTOR_WIDTH set: false (the test failed) when a CPU driver
 * did not make subgroups of `lanes`, since the test would otherwise rerun the usual width
 * and pass for nothing; a GPU keeps its own size and passes. */
static inline bool vk_test_subgroups_as_asked(const struct vk_device *d, uint32_t lanes)
{
    if (d->props.deviceType != VK_PHYSICAL_DEVICE_TYPE_CPU || d->subgroup_size == lanes) return true;
    test_fail_at(__FILE__, __LINE__, "the CPU driver made subgroups of %u lanes, not %u (LP_NATIVE_VECTOR_WIDTH=%s)",
                 d->subgroup_size, lanes, getenv("LP_NATIVE_VECTOR_WIDTH") ? getenv("LP_NATIVE_VECTOR_WIDTH") : "unset");
    return false;
}

/* Deterministic uniform floats in [-1, 1). */
static inline float vk_test_rand(uint64_t *state)
{
    *state = *state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((*state >> 40) & 0xffffff) / 8388608.0f - 1.0f;
}

/* n floats offset + scale * vk_test_rand, in a fresh buffer (at least one float) */
static inline float *vk_test_rand_vec(uint64_t *rng, size_t n, float scale, float offset)
{
    float *v = malloc((n ? n : 1) * sizeof *v);
    for (size_t i = 0; i < n; i++) v[i] = offset + scale * vk_test_rand(rng);
    return v;
}

/* moe_group's lists (abi.h) built the plain way: for each expert in order that slot ids[z]
 * picks, its slots ascending; out[g] = list g's first index (n_grp + 1 entries, those past
 * the experts used = n_slots), then the slots by list, then each used list's expert. Those
 * experts' entries of the empty lists are not written. Returns the number of lists used. */
static inline uint32_t vk_test_group_lists(const int32_t *ids, uint32_t n_expert, uint32_t n_slots, uint32_t n_grp,
                                           int32_t *out)
{
    uint32_t g = 0, n = 0;
    for (uint32_t e = 0; e < n_expert; e++) {
        const uint32_t first = n;
        for (uint32_t z = 0; z < n_slots; z++)
            if ((uint32_t)ids[z] == e) out[n_grp + 1 + n++] = (int32_t)z;
        if (n > first) {
            out[n_grp + 1 + n_slots + g] = (int32_t)e;
            out[g++] = (int32_t)first;
        }
    }
    const uint32_t used = g;
    while (g <= n_grp) out[g++] = (int32_t)n_slots;
    return used;
}

/* sum((a - b)^2) / sum(b^2): the normalized error of a against the reference b. */
static inline double vk_test_nmse(const float *a, const double *b, size_t n)
{
    double num = 0, den = 1e-30;
    for (size_t i = 0; i < n; i++) {
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        den += b[i] * b[i];
    }
    return num / den;
}

/* Output buffers carry VK_GUARD floats on each side filled with this pattern. */
#define VK_GUARD 64
#define VK_GUARD_BITS 0x7fc0deadu
static inline void vk_guard_fill(float *buf, size_t n_payload)
{
    uint32_t g = VK_GUARD_BITS;
    for (size_t i = 0; i < VK_GUARD; i++) {
        memcpy(&buf[i], &g, 4);
        memcpy(&buf[VK_GUARD + n_payload + i], &g, 4);
    }
}
static inline int vk_guard_intact(const float *buf, size_t n_payload)
{
    for (size_t i = 0; i < VK_GUARD; i++) {
        uint32_t a, b;
        memcpy(&a, &buf[i], 4);
        memcpy(&b, &buf[VK_GUARD + n_payload + i], 4);
        if (a != VK_GUARD_BITS || b != VK_GUARD_BITS) return 0;
    }
    return 1;
}

#endif
