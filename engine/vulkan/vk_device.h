/* The Vulkan device of the backend: instance, the chosen physical device, one logical
 * device with one compute queue and a command pool, and the device facts the kernels and
 * the allocator depend on (subgroup size, allocation and binding limits). Vulkan types stay
 * in engine/vulkan/vk_*.h; engine.h never sees them. */
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
    bool lost;                   /* a submit or wait reported the device lost or wedged: every later
                                    submit fails at once; only closing and reopening the backend helps */
    char lost_why[160];          /* what reported it, e.g. "vkQueueSubmit: VK_ERROR_DEVICE_LOST" */
};

/* A fence wait gives up after this long (a decode step takes milliseconds, a prefill
 * chunk seconds on a CPU driver): a GPU that never signals counts as lost instead of
 * hanging the daemon. FLASHBOX_VK_FENCE_TIMEOUT_S overrides it. */
#define VK_FENCE_TIMEOUT_S 120

/* Fault injection for tests, off unless the environment sets FLASHBOX_VK_FAULT to a list
 * "KIND:N[+],..." with KIND submit (the Nth forward-step vkQueueSubmit of the process
 * returns VK_ERROR_DEVICE_LOST; one-shot uploads are not counted), alloc (the Nth vkAllocateMemory returns
 * VK_ERROR_OUT_OF_DEVICE_MEMORY), fence (the Nth fence wait returns VK_TIMEOUT at once after
 * the real wait) or stall (the Nth fence wait is a wedged GPU: after the real wait it
 * sleeps on until the fence timeout has passed since the wait began, then returns
 * VK_TIMEOUT; the step's thread is stuck all that time); "N+" fails the Nth and every
 * later one (a device that stays lost). */
enum vk_fault { VK_FAULT_SUBMIT = 0, VK_FAULT_ALLOC, VK_FAULT_FENCE, VK_FAULT_STALL, VK_FAULT_KINDS };
/* VK_SUCCESS, or the injected error when this call is one that must fail. */
VkResult vk_fault_inject(enum vk_fault kind);
/* Replaces the rules (same syntax; "" = none) and restarts the counts: for tests that
 * must fail a call after set-up, whose call count they do not know. */
void vk_fault_configure(const char *spec);

/* Submits one command buffer and waits for it with the finite fence timeout (fence may be
 * VK_NULL_HANDLE: a queue wait then). A device loss or a timeout marks d lost. */
int vk_device_submit_wait(struct vk_device *d, VkCommandBuffer cb, VkFence fence, char *err, size_t err_len);

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
