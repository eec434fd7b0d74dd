/* The GPUs of the box: DRM devices (render node, PCI ids, kernel driver) found through
 * libdrm, matched to the Vulkan physical devices (VK_EXT_physical_device_drm, else PCI bus
 * info; devices without DRM such as lavapipe are listed from Vulkan alone), with the
 * memory heaps and budgets and the limits flashbox depends on, and the device flashbox
 * would pick. No inference knowledge here. */
#ifndef FLASHBOX_BOARD_BOARD_H
#define FLASHBOX_BOARD_BOARD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BOARD_MAX_GPUS 16
#define BOARD_MAX_HEAPS 16

struct board_heap {
    uint64_t size;            /* bytes */
    uint64_t budget;          /* bytes this process may use (VK_EXT_memory_budget), 0 if unknown */
    bool device_local;
};

struct board_drm {
    char render_node[64];     /* /dev/dri/renderD128 */
    char driver[64];          /* kernel driver, e.g. amdgpu */
    char pci_bus[32];         /* 0000:03:00.0, "" when not PCI */
    uint32_t vendor_id, device_id;
    int vk_index;             /* matched Vulkan device, -1 none */
};

struct board_gpu {
    int vk_index;             /* vkEnumeratePhysicalDevices order */
    char name[256];
    char type[16];            /* discrete, integrated, virtual, cpu, other */
    char driver_name[256];    /* VkPhysicalDeviceDriverProperties, "" if not reported */
    char driver_info[256];
    uint32_t vendor_id, device_id, api_version;
    char uuid[33];            /* deviceUUID as 32 hex digits */
    int drm_index;            /* into board.drm, -1 none */
    const char *match;        /* how DRM and Vulkan were matched: "drm-node", "pci-bus", "none" */
    uint32_t n_heaps;
    struct board_heap heaps[BOARD_MAX_HEAPS];
    uint64_t max_alloc, max_storage_range;
    uint32_t subgroup_size, shared_memory, max_workgroup_invocations;
    char unsupported[160];    /* the first missing required feature, "" when usable */
};

struct board {
    uint32_t n_gpus, n_drm;
    struct board_gpu gpus[BOARD_MAX_GPUS];
    struct board_drm drm[BOARD_MAX_GPUS];
    int picked;               /* index into gpus flashbox would use, -1 none */
};

/* Enumerates DRM and Vulkan devices. Fails with a clear message when there is no Vulkan
 * driver at all; no DRM devices is normal (containers, lavapipe). */
int board_probe(struct board *b, char *err, size_t err_len);
/* The device flashbox uses: by uuid if given, else by index if >= 0, else the best usable
 * one (discrete, integrated, virtual, CPU). Returns the index into b->gpus or -1 with err. */
int board_pick(const struct board *b, int index, const char *uuid, char *err, size_t err_len);

#endif
