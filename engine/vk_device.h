/* The Vulkan device of the backend: instance, the chosen physical device, one logical
 * device with one compute queue and a command pool, and the device facts the kernels and
 * the allocator depend on (subgroup size, allocation and binding limits). Vulkan types stay
 * in engine/vk_*.h; engine.h never sees them. */
#ifndef FLASHBOX_ENGINE_VK_DEVICE_H
#define FLASHBOX_ENGINE_VK_DEVICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <vulkan/vulkan.h>

struct vk_device {
    VkInstance instance;
    VkPhysicalDevice phys;
    VkDevice dev;
    VkQueue queue;
    uint32_t queue_family;
    VkCommandPool cmd_pool;
    VkPhysicalDeviceProperties props;
    VkPhysicalDeviceMemoryProperties mem;
    uint32_t index;              /* in vkEnumeratePhysicalDevices order */
    uint32_t subgroup_size;
    bool subgroup_shuffle;      /* VK_SUBGROUP_FEATURE_SHUFFLE_BIT in compute (the CPU-driver kernels' sums) */
    uint64_t max_alloc;          /* maxMemoryAllocationSize, bytes */
    uint64_t max_range;          /* maxStorageBufferRange, bytes */
    uint64_t storage_align;      /* minStorageBufferOffsetAlignment, bytes */
    bool timestamps;             /* the compute queue writes timestamps */
    double timestamp_ns;         /* nanoseconds per timestamp tick */
};

/* Creates the device: device_uuid (32 hex digits, dashes ignored) if non-NULL, else
 * device_index if >= 0, else the best device by type (discrete, integrated, virtual, CPU).
 * Errors name what is missing: no driver, no device, a required feature. */
int vk_device_create(struct vk_device **out, int device_index, const char *device_uuid,
                     char *err, size_t err_len);
void vk_device_destroy(struct vk_device *d);

/* 0 for VK_SUCCESS, else formats "what: VK_ERROR_..." into err and returns -1. */
int vk_check(VkResult r, const char *what, char *err, size_t err_len);
const char *vk_result_name(VkResult r);

/* Why this physical device cannot run flashbox ("" when it can): the first missing
 * required feature, by name. Shared with the board's report. */
const char *vk_device_unsupported_reason(VkPhysicalDevice phys);
/* Rank used to pick a device when none is named: higher is better. */
int vk_device_type_rank(VkPhysicalDeviceType type);

/* One-shot command buffer: begin, record, then submit and wait. */
int vk_oneshot_begin(struct vk_device *d, VkCommandBuffer *cb, char *err, size_t err_len);
int vk_oneshot_submit(struct vk_device *d, VkCommandBuffer cb, char *err, size_t err_len);

#endif
