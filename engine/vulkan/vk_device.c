/* Vulkan instance and device creation, device choice and the checks of what flashbox
 * requires of a device (Vulkan 1.1, a compute queue, subgroup arithmetic in compute). */
#include "engine/vulkan/vk_device.h"

#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/driver_pin.h"
#include "common/mono_clock.h"
#include "engine/engine.h"
#include "common/errmsg.h"

const char *vk_result_name(VkResult r)
{
    switch (r) {
    case VK_SUCCESS: return "VK_SUCCESS";
    case VK_NOT_READY: return "VK_NOT_READY";
    case VK_TIMEOUT: return "VK_TIMEOUT";
    case VK_INCOMPLETE: return "VK_INCOMPLETE";
    case VK_ERROR_OUT_OF_HOST_MEMORY: return "VK_ERROR_OUT_OF_HOST_MEMORY";
    case VK_ERROR_OUT_OF_DEVICE_MEMORY: return "VK_ERROR_OUT_OF_DEVICE_MEMORY";
    case VK_ERROR_INITIALIZATION_FAILED: return "VK_ERROR_INITIALIZATION_FAILED";
    case VK_ERROR_DEVICE_LOST: return "VK_ERROR_DEVICE_LOST";
    case VK_ERROR_MEMORY_MAP_FAILED: return "VK_ERROR_MEMORY_MAP_FAILED";
    case VK_ERROR_LAYER_NOT_PRESENT: return "VK_ERROR_LAYER_NOT_PRESENT";
    case VK_ERROR_EXTENSION_NOT_PRESENT: return "VK_ERROR_EXTENSION_NOT_PRESENT";
    case VK_ERROR_FEATURE_NOT_PRESENT: return "VK_ERROR_FEATURE_NOT_PRESENT";
    case VK_ERROR_INCOMPATIBLE_DRIVER: return "VK_ERROR_INCOMPATIBLE_DRIVER";
    case VK_ERROR_TOO_MANY_OBJECTS: return "VK_ERROR_TOO_MANY_OBJECTS";
    case VK_ERROR_FORMAT_NOT_SUPPORTED: return "VK_ERROR_FORMAT_NOT_SUPPORTED";
    case VK_ERROR_FRAGMENTED_POOL: return "VK_ERROR_FRAGMENTED_POOL";
    case VK_ERROR_OUT_OF_POOL_MEMORY: return "VK_ERROR_OUT_OF_POOL_MEMORY";
    default: return "VK_ERROR_(unknown)";
    }
}

int vk_check(VkResult r, const char *what, char *err, size_t err_len)
{
    if (r == VK_SUCCESS) return 0;
    return errf(err, err_len, "%s: %s (%d)", what, vk_result_name(r), (int)r);
}

int vk_device_type_rank(VkPhysicalDeviceType type)
{
    switch (type) {
    case VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU: return 4;
    case VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU: return 3;
    case VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU: return 2;
    case VK_PHYSICAL_DEVICE_TYPE_CPU: return 1;
    default: return 0;
    }
}

static int compute_queue_family(VkPhysicalDevice phys)
{
    uint32_t n = 0;
    vkGetPhysicalDeviceQueueFamilyProperties(phys, &n, NULL);
    VkQueueFamilyProperties q[16];
    if (n > 16) n = 16;
    vkGetPhysicalDeviceQueueFamilyProperties(phys, &n, q);
    int any = -1;
    for (uint32_t i = 0; i < n; i++) {
        if (!(q[i].queueFlags & VK_QUEUE_COMPUTE_BIT)) continue;
        /* A compute-only family runs beside graphics work on real GPUs; prefer it. */
        if (!(q[i].queueFlags & VK_QUEUE_GRAPHICS_BIT)) return (int)i;
        if (any < 0) any = (int)i;
    }
    return any;
}

const char *vk_device_unsupported_reason(VkPhysicalDevice phys)
{
    VkPhysicalDeviceProperties p;
    vkGetPhysicalDeviceProperties(phys, &p);
    if (p.apiVersion < VK_API_VERSION_1_1) return "Vulkan 1.1 (device reports an older version)";
    if (compute_queue_family(phys) < 0) return "a queue family with VK_QUEUE_COMPUTE_BIT";
    VkPhysicalDeviceSubgroupProperties sg = { .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_PROPERTIES };
    VkPhysicalDeviceProperties2 p2 = { .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2, .pNext = &sg };
    vkGetPhysicalDeviceProperties2(phys, &p2);
    if (!(sg.supportedStages & VK_SHADER_STAGE_COMPUTE_BIT)) return "subgroup operations in compute shaders";
    if (!(sg.supportedOperations & VK_SUBGROUP_FEATURE_BASIC_BIT)) return "VK_SUBGROUP_FEATURE_BASIC_BIT";
    if (!(sg.supportedOperations & VK_SUBGROUP_FEATURE_ARITHMETIC_BIT)) return "VK_SUBGROUP_FEATURE_ARITHMETIC_BIT";
    if (sg.subgroupSize == 0 || sg.subgroupSize > 64) return "a subgroup size between 1 and 64";
    if (p.limits.maxComputeWorkGroupInvocations < 64) return "64 invocations per workgroup";
    return "";
}

/* Parses 32 hex digits (dashes ignored) into 16 bytes. */
static int parse_uuid(const char *s, uint8_t out[VK_UUID_SIZE])
{
    int n = 0;
    for (; *s; s++) {
        if (*s == '-') continue;
        if (!isxdigit((unsigned char)*s) || n >= 2 * (int)VK_UUID_SIZE) return -1;
        int v = isdigit((unsigned char)*s) ? *s - '0' : tolower((unsigned char)*s) - 'a' + 10;
        if (n % 2 == 0) out[n / 2] = (uint8_t)(v << 4); else out[n / 2] |= (uint8_t)v;
        n++;
    }
    return n == 2 * (int)VK_UUID_SIZE ? 0 : -1;
}

static int pick_device(struct vk_device *d, int device_index, const char *device_uuid, char *err, size_t err_len)
{
    uint32_t n = 0;
    VkResult r = vkEnumeratePhysicalDevices(d->instance, &n, NULL);
    if (r != VK_SUCCESS) return vk_check(r, "vkEnumeratePhysicalDevices", err, err_len);
    if (n == 0) return errf(err, err_len, "no Vulkan device: the loader found a driver but it reports 0 physical devices");
    VkPhysicalDevice devs[32];
    if (n > 32) n = 32;
    r = vkEnumeratePhysicalDevices(d->instance, &n, devs);
    if (r != VK_SUCCESS && r != VK_INCOMPLETE) return vk_check(r, "vkEnumeratePhysicalDevices", err, err_len);

    int chosen = -1;
    if (device_uuid) {
        uint8_t want[VK_UUID_SIZE];
        if (parse_uuid(device_uuid, want)) return errf(err, err_len, "device uuid '%s': expected 32 hex digits", device_uuid);
        for (uint32_t i = 0; i < n; i++) {
            VkPhysicalDeviceIDProperties id = { .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_ID_PROPERTIES };
            VkPhysicalDeviceProperties2 p2 = { .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2, .pNext = &id };
            vkGetPhysicalDeviceProperties2(devs[i], &p2);
            if (!memcmp(id.deviceUUID, want, VK_UUID_SIZE)) chosen = (int)i;
        }
        if (chosen < 0) return errf(err, err_len, "no Vulkan device has uuid %s (%u devices present)", device_uuid, n);
    } else if (device_index >= 0) {
        if ((uint32_t)device_index >= n) return errf(err, err_len, "device index %d: only %u Vulkan devices present", device_index, n);
        chosen = device_index;
    } else {
        int best_rank = -1;
        for (uint32_t i = 0; i < n; i++) {
            VkPhysicalDeviceProperties p;
            vkGetPhysicalDeviceProperties(devs[i], &p);
            int rank = vk_device_type_rank(p.deviceType);
            if (vk_device_unsupported_reason(devs[i])[0] == 0 && rank > best_rank) { best_rank = rank; chosen = (int)i; }
        }
        if (chosen < 0) {
            VkPhysicalDeviceProperties p;
            vkGetPhysicalDeviceProperties(devs[0], &p);
            return errf(err, err_len, "no usable Vulkan device: %s lacks %s", p.deviceName, vk_device_unsupported_reason(devs[0]));
        }
    }
    const char *why = vk_device_unsupported_reason(devs[chosen]);
    vkGetPhysicalDeviceProperties(devs[chosen], &d->props);
    if (why[0]) return errf(err, err_len, "Vulkan device %d (%s) lacks a required feature: %s", chosen, d->props.deviceName, why);
    d->phys = devs[chosen];
    d->index = (uint32_t)chosen;
    return 0;
}

int vk_device_create(struct vk_device **out, int device_index, const char *device_uuid, char *err, size_t err_len)
{
    *out = NULL;
    struct vk_device *d = calloc(1, sizeof *d);
    if (!d) return errf(err, err_len, "out of memory");

    VkApplicationInfo app = {
        .sType = VK_STRUCTURE_TYPE_APPLICATION_INFO, .pApplicationName = "flashbox",
        .pEngineName = "flashbox", .apiVersion = VK_API_VERSION_1_1,
    };
    VkInstanceCreateInfo ici = { .sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO, .pApplicationInfo = &app };
    VkResult r = vkCreateInstance(&ici, NULL, &d->instance);
    if (r == VK_ERROR_INCOMPATIBLE_DRIVER) {
        free(d);
        return errf(err, err_len, "no Vulkan driver: the loader found no ICD supporting Vulkan 1.1 "
                    "(install a driver, e.g. mesa-vulkan-drivers for lavapipe)");
    }
    if (r != VK_SUCCESS) { free(d); return vk_check(r, "vkCreateInstance", err, err_len); }
    driver_pin_loaded();
    if (pick_device(d, device_index, device_uuid, err, err_len)) goto fail_instance;

    VkPhysicalDeviceSubgroupProperties sg = { .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_PROPERTIES };
    VkPhysicalDeviceMaintenance3Properties m3 = { .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MAINTENANCE_3_PROPERTIES, .pNext = &sg };
    VkPhysicalDeviceProperties2 p2 = { .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2, .pNext = &m3 };
    vkGetPhysicalDeviceProperties2(d->phys, &p2);
    vkGetPhysicalDeviceMemoryProperties(d->phys, &d->mem);
    d->subgroup_size = sg.subgroupSize;
    d->subgroup_shuffle = (sg.supportedOperations & VK_SUBGROUP_FEATURE_SHUFFLE_BIT) != 0;
    d->max_alloc = m3.maxMemoryAllocationSize;
    d->max_range = d->props.limits.maxStorageBufferRange;
    d->storage_align = d->props.limits.minStorageBufferOffsetAlignment;
    d->queue_family = (uint32_t)compute_queue_family(d->phys);

    uint32_t nq = 0;
    vkGetPhysicalDeviceQueueFamilyProperties(d->phys, &nq, NULL);
    VkQueueFamilyProperties qf[16];
    if (nq > 16) nq = 16;
    vkGetPhysicalDeviceQueueFamilyProperties(d->phys, &nq, qf);
    d->timestamps = qf[d->queue_family].timestampValidBits > 0;
    d->timestamp_ns = d->props.limits.timestampPeriod;

    float prio = 1.0f;
    VkDeviceQueueCreateInfo qci = {
        .sType = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO, .queueFamilyIndex = d->queue_family,
        .queueCount = 1, .pQueuePriorities = &prio,
    };
    VkDeviceCreateInfo dci = { .sType = VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO, .queueCreateInfoCount = 1, .pQueueCreateInfos = &qci };
    r = vkCreateDevice(d->phys, &dci, NULL, &d->dev);
    if (vk_check(r, "vkCreateDevice", err, err_len)) goto fail_instance;
    vkGetDeviceQueue(d->dev, d->queue_family, 0, &d->queue);

    VkCommandPoolCreateInfo pci = {
        .sType = VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO,
        .flags = VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT, .queueFamilyIndex = d->queue_family,
    };
    r = vkCreateCommandPool(d->dev, &pci, NULL, &d->cmd_pool);
    if (vk_check(r, "vkCreateCommandPool", err, err_len)) goto fail_device;
    *out = d;
    return 0;

fail_device:
    vkDestroyDevice(d->dev, NULL);
fail_instance:
    vkDestroyInstance(d->instance, NULL);
    free(d);
    return -1;
}

void vk_device_destroy(struct vk_device *d)
{
    if (!d) return;
    if (!d->lost) vkDeviceWaitIdle(d->dev); /* a wedged GPU would hold the teardown for ever */
    vkDestroyCommandPool(d->dev, d->cmd_pool, NULL);
    vkDestroyDevice(d->dev, NULL);
    vkDestroyInstance(d->instance, NULL);
    free(d);
}

int vk_oneshot_begin(struct vk_device *d, VkCommandBuffer *cb, char *err, size_t err_len)
{
    VkCommandBufferAllocateInfo ai = {
        .sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO, .commandPool = d->cmd_pool,
        .level = VK_COMMAND_BUFFER_LEVEL_PRIMARY, .commandBufferCount = 1,
    };
    if (vk_check(vkAllocateCommandBuffers(d->dev, &ai, cb), "vkAllocateCommandBuffers", err, err_len)) return -1;
    VkCommandBufferBeginInfo bi = { .sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO, .flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT };
    if (vk_check(vkBeginCommandBuffer(*cb, &bi), "vkBeginCommandBuffer", err, err_len)) {
        vkFreeCommandBuffers(d->dev, d->cmd_pool, 1, cb);
        return -1;
    }
    return 0;
}

/* ---- fault injection (tests) and device loss ---- */

struct fault_rule {
    long at;                     /* 1-based call number that fails; 0 = never */
    bool onward;                 /* and every later one */
};
static struct fault_rule fault_rules[VK_FAULT_KINDS];
static long fault_calls[VK_FAULT_KINDS];
static pthread_once_t fault_once = PTHREAD_ONCE_INIT;

static void fault_parse_spec(const char *s)
{
    static const char *const names[VK_FAULT_KINDS] = { "submit", "alloc", "fence", "stall" };
    memset(fault_rules, 0, sizeof fault_rules);
    for (int k = 0; k < VK_FAULT_KINDS; k++) __atomic_store_n(&fault_calls[k], 0, __ATOMIC_RELAXED);
    while (s && *s) {
        for (int k = 0; k < VK_FAULT_KINDS; k++) {
            size_t n = strlen(names[k]);
            if (strncmp(s, names[k], n) || s[n] != ':') continue;
            char *end;
            fault_rules[k].at = strtol(s + n + 1, &end, 10);
            fault_rules[k].onward = *end == '+';
            break;
        }
        s = strchr(s, ',');
        if (s) s++;
    }
}

static void fault_parse(void) { fault_parse_spec(getenv("FLASHBOX_VK_FAULT")); }

void vk_fault_configure(const char *spec)
{
    pthread_once(&fault_once, fault_parse);
    fault_parse_spec(spec);
}

VkResult vk_fault_inject(enum vk_fault kind)
{
    pthread_once(&fault_once, fault_parse);
    const struct fault_rule *r = &fault_rules[kind];
    if (r->at <= 0) return VK_SUCCESS;
    long n = __atomic_add_fetch(&fault_calls[kind], 1, __ATOMIC_RELAXED);
    if (n != r->at && !(r->onward && n > r->at)) return VK_SUCCESS;
    return kind == VK_FAULT_SUBMIT ? VK_ERROR_DEVICE_LOST : kind == VK_FAULT_ALLOC ? VK_ERROR_OUT_OF_DEVICE_MEMORY : VK_TIMEOUT;
}

static uint64_t fence_timeout_ns(void)
{
    const char *s = getenv("FLASHBOX_VK_FENCE_TIMEOUT_S");
    long v = s ? atol(s) : 0;
    return (uint64_t)(v > 0 ? v : VK_FENCE_TIMEOUT_S) * 1000000000ull;
}

/* An injected stall: the caller's thread stays in the fence wait until `timeout_ns` after
 * `since`, as it would on a GPU that never signals, in slices of at most 100 ms (a signal
 * or a spurious wake-up only costs a slice; nothing is held but this thread). */
static VkResult fault_stall(uint64_t since, uint64_t timeout_ns)
{
    for (uint64_t now = mono_ns(); now - since < timeout_ns; now = mono_ns()) {
        uint64_t left = timeout_ns - (now - since), slice = left < 100000000ull ? left : 100000000ull;
        struct timespec ts = { .tv_sec = 0, .tv_nsec = (long)slice };
        nanosleep(&ts, NULL);
    }
    return VK_TIMEOUT;
}

/* Records why the device is gone (the first reason stays) and formats the error. */
static int mark_lost(struct vk_device *d, VkResult r, const char *what, char *err, size_t err_len)
{
    if (!d->lost) {
        d->lost = true;
        snprintf(d->lost_why, sizeof d->lost_why, "%s: %s", what,
                 r == VK_TIMEOUT ? "VK_TIMEOUT (the GPU did not finish within the fence timeout)" : vk_result_name(r));
    }
    return errf(err, err_len, ENGINE_ERR_DEVICE_LOST ": %s", d->lost_why);
}

int vk_device_submit_wait(struct vk_device *d, VkCommandBuffer cb, VkFence fence, char *err, size_t err_len)
{
    if (d->lost) return errf(err, err_len, ENGINE_ERR_DEVICE_LOST " earlier (%s); the backend must be reopened", d->lost_why);
    VkSubmitInfo si = { .sType = VK_STRUCTURE_TYPE_SUBMIT_INFO, .commandBufferCount = 1, .pCommandBuffers = &cb };
    /* Only forward-step submits (fenced) count for injection: one-shot uploads at load
     * vary with the model, and tests aim at "the Nth step". */
    VkResult r = fence != VK_NULL_HANDLE ? vk_fault_inject(VK_FAULT_SUBMIT) : VK_SUCCESS;
    if (r == VK_SUCCESS) r = vkQueueSubmit(d->queue, 1, &si, fence);
    if (r == VK_ERROR_DEVICE_LOST) return mark_lost(d, r, "vkQueueSubmit", err, err_len);
    if (vk_check(r, "vkQueueSubmit", err, err_len)) return -1;
    if (fence == VK_NULL_HANDLE) {
        r = vkQueueWaitIdle(d->queue);
        if (r == VK_ERROR_DEVICE_LOST) return mark_lost(d, r, "vkQueueWaitIdle", err, err_len);
        return vk_check(r, "vkQueueWaitIdle", err, err_len);
    }
    const uint64_t timeout_ns = fence_timeout_ns(), waited_since = mono_ns();
    r = vkWaitForFences(d->dev, 1, &fence, VK_TRUE, timeout_ns);
    /* An injected timeout or stall comes after the real wait, so the fence is signaled and
     * the command buffer idle: the state stays valid for teardown, as a real loss would not. */
    if (r == VK_SUCCESS && vk_fault_inject(VK_FAULT_STALL) != VK_SUCCESS) r = fault_stall(waited_since, timeout_ns);
    if (r == VK_SUCCESS) r = vk_fault_inject(VK_FAULT_FENCE);
    if (r == VK_TIMEOUT || r == VK_ERROR_DEVICE_LOST) return mark_lost(d, r, "vkWaitForFences", err, err_len);
    vkResetFences(d->dev, 1, &fence);
    return vk_check(r, "vkWaitForFences", err, err_len);
}

int vk_oneshot_submit(struct vk_device *d, VkCommandBuffer cb, char *err, size_t err_len)
{
    int rc = vk_check(vkEndCommandBuffer(cb), "vkEndCommandBuffer", err, err_len);
    if (!rc) rc = vk_device_submit_wait(d, cb, VK_NULL_HANDLE, err, err_len);
    vkFreeCommandBuffers(d->dev, d->cmd_pool, 1, &cb);
    return rc;
}
