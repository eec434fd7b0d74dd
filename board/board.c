/* GPU enumeration through libdrm and Vulkan, and the device choice (see board.h). */
#include "board/board.h"
#include "common/driver_pin.h"
#include "common/errmsg.h"

#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>
#include <vulkan/vulkan.h>
#include <xf86drm.h>

static void probe_drm(struct board *b)
{
    drmDevicePtr devs[BOARD_MAX_GPUS];
    int n = drmGetDevices2(0, devs, BOARD_MAX_GPUS);
    if (n <= 0) return;
    for (int i = 0; i < n && b->n_drm < BOARD_MAX_GPUS; i++) {
        drmDevicePtr dv = devs[i];
        if (!(dv->available_nodes & (1 << DRM_NODE_RENDER))) continue;
        struct board_drm *o = &b->drm[b->n_drm++];
        memset(o, 0, sizeof *o);
        o->vk_index = -1;
        snprintf(o->render_node, sizeof o->render_node, "%s", dv->nodes[DRM_NODE_RENDER]);
        if (dv->bustype == DRM_BUS_PCI) {
            snprintf(o->pci_bus, sizeof o->pci_bus, "%04x:%02x:%02x.%u", dv->businfo.pci->domain, dv->businfo.pci->bus,
                     dv->businfo.pci->dev, dv->businfo.pci->func);
            o->vendor_id = dv->deviceinfo.pci->vendor_id;
            o->device_id = dv->deviceinfo.pci->device_id;
        }
        int fd = open(o->render_node, O_RDWR | O_CLOEXEC);
        if (fd >= 0) {
            drmVersionPtr v = drmGetVersion(fd);
            if (v) {
                snprintf(o->driver, sizeof o->driver, "%.*s", v->name_len, v->name);
                drmFreeVersion(v);
            }
            close(fd);
        }
    }
    drmFreeDevices(devs, n);
}

static bool has_ext(const VkExtensionProperties *e, uint32_t n, const char *name)
{
    for (uint32_t i = 0; i < n; i++)
        if (!strcmp(e[i].extensionName, name)) return true;
    return false;
}

static const char *type_name(VkPhysicalDeviceType t)
{
    switch (t) {
    case VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU: return "discrete";
    case VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU: return "integrated";
    case VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU: return "virtual";
    case VK_PHYSICAL_DEVICE_TYPE_CPU: return "cpu";
    default: return "other";
    }
}

static int type_rank(const char *t)
{
    static const char *const order[] = { "other", "cpu", "virtual", "integrated", "discrete" };
    for (int i = 0; i < 5; i++) if (!strcmp(t, order[i])) return i;
    return 0;
}

/* The same requirements the engine checks when it creates the device (vk_device.c). */
static void check_required(VkPhysicalDevice pd, const VkPhysicalDeviceProperties *p, const VkPhysicalDeviceSubgroupProperties *sg,
                           struct board_gpu *g)
{
    uint32_t nq = 0;
    vkGetPhysicalDeviceQueueFamilyProperties(pd, &nq, NULL);
    VkQueueFamilyProperties q[16];
    if (nq > 16) nq = 16;
    vkGetPhysicalDeviceQueueFamilyProperties(pd, &nq, q);
    bool compute = false;
    for (uint32_t i = 0; i < nq; i++) compute = compute || (q[i].queueFlags & VK_QUEUE_COMPUTE_BIT);
    const char *why = "";
    if (p->apiVersion < VK_API_VERSION_1_1) why = "Vulkan 1.1";
    else if (!compute) why = "a compute queue";
    else if (!(sg->supportedStages & VK_SHADER_STAGE_COMPUTE_BIT)) why = "subgroup operations in compute shaders";
    else if (!(sg->supportedOperations & VK_SUBGROUP_FEATURE_ARITHMETIC_BIT)) why = "VK_SUBGROUP_FEATURE_ARITHMETIC_BIT";
    else if (sg->subgroupSize == 0 || sg->subgroupSize > 64) why = "a subgroup size between 1 and 64";
    snprintf(g->unsupported, sizeof g->unsupported, "%s", why);
}

static void probe_gpu(struct board *b, VkPhysicalDevice pd, int index)
{
    struct board_gpu *g = &b->gpus[b->n_gpus++];
    memset(g, 0, sizeof *g);
    g->vk_index = index;
    g->drm_index = -1;
    g->match = "none";
    uint32_t n_ext = 0;
    vkEnumerateDeviceExtensionProperties(pd, NULL, &n_ext, NULL);
    VkExtensionProperties ext[512];
    if (n_ext > 512) n_ext = 512;
    vkEnumerateDeviceExtensionProperties(pd, NULL, &n_ext, ext);
    bool has_drm = has_ext(ext, n_ext, VK_EXT_PHYSICAL_DEVICE_DRM_EXTENSION_NAME);
    bool has_pci = has_ext(ext, n_ext, VK_EXT_PCI_BUS_INFO_EXTENSION_NAME);
    bool has_budget = has_ext(ext, n_ext, VK_EXT_MEMORY_BUDGET_EXTENSION_NAME);

    VkPhysicalDeviceDrmPropertiesEXT drm = { .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_DRM_PROPERTIES_EXT };
    VkPhysicalDevicePCIBusInfoPropertiesEXT pci = { .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PCI_BUS_INFO_PROPERTIES_EXT };
    VkPhysicalDeviceDriverProperties drv = { .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_DRIVER_PROPERTIES };
    VkPhysicalDeviceIDProperties id = { .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_ID_PROPERTIES };
    VkPhysicalDeviceSubgroupProperties sg = { .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_PROPERTIES };
    VkPhysicalDeviceMaintenance3Properties m3 = { .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MAINTENANCE_3_PROPERTIES };
    VkPhysicalDeviceProperties2 p2 = { .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2 };
    /* chain only the structs whose extension the device reports */
    void *chain = NULL;
    m3.pNext = chain; chain = &m3;
    sg.pNext = chain; chain = &sg;
    id.pNext = chain; chain = &id;
    VkPhysicalDeviceProperties base;
    vkGetPhysicalDeviceProperties(pd, &base);
    if (base.apiVersion >= VK_API_VERSION_1_2) { drv.pNext = chain; chain = &drv; }
    if (has_drm) { drm.pNext = chain; chain = &drm; }
    if (has_pci) { pci.pNext = chain; chain = &pci; }
    p2.pNext = chain;
    vkGetPhysicalDeviceProperties2(pd, &p2);
    const VkPhysicalDeviceProperties *p = &p2.properties;
    snprintf(g->name, sizeof g->name, "%s", p->deviceName);
    snprintf(g->type, sizeof g->type, "%s", type_name(p->deviceType));
    snprintf(g->driver_name, sizeof g->driver_name, "%s", drv.driverName);
    snprintf(g->driver_info, sizeof g->driver_info, "%s", drv.driverInfo);
    g->vendor_id = p->vendorID;
    g->device_id = p->deviceID;
    g->api_version = p->apiVersion;
    for (unsigned i = 0; i < VK_UUID_SIZE; i++) snprintf(g->uuid + 2 * i, 3, "%02x", id.deviceUUID[i]);
    g->max_alloc = m3.maxMemoryAllocationSize;
    g->max_storage_range = p->limits.maxStorageBufferRange;
    g->subgroup_size = sg.subgroupSize;
    g->shared_memory = p->limits.maxComputeSharedMemorySize;
    g->max_workgroup_invocations = p->limits.maxComputeWorkGroupInvocations;
    check_required(pd, p, &sg, g);

    VkPhysicalDeviceMemoryBudgetPropertiesEXT budget = { .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MEMORY_BUDGET_PROPERTIES_EXT };
    VkPhysicalDeviceMemoryProperties2 mp = { .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MEMORY_PROPERTIES_2,
                                             .pNext = has_budget ? &budget : NULL };
    vkGetPhysicalDeviceMemoryProperties2(pd, &mp);
    g->n_heaps = mp.memoryProperties.memoryHeapCount < BOARD_MAX_HEAPS ? mp.memoryProperties.memoryHeapCount : BOARD_MAX_HEAPS;
    for (uint32_t i = 0; i < g->n_heaps; i++) {
        g->heaps[i].size = mp.memoryProperties.memoryHeaps[i].size;
        g->heaps[i].device_local = mp.memoryProperties.memoryHeaps[i].flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT;
        g->heaps[i].budget = has_budget ? budget.heapBudget[i] : 0;
    }

    /* match to a DRM render node: by device number when the driver reports it, else PCI */
    for (uint32_t i = 0; i < b->n_drm && g->drm_index < 0; i++) {
        struct board_drm *dd = &b->drm[i];
        struct stat st;
        if (has_drm && drm.hasRender && stat(dd->render_node, &st) == 0 && major(st.st_rdev) == (unsigned)drm.renderMajor &&
            minor(st.st_rdev) == (unsigned)drm.renderMinor) {
            g->drm_index = (int)i;
            g->match = "drm-node";
        } else if (has_pci && dd->pci_bus[0]) {
            char bus[32];
            snprintf(bus, sizeof bus, "%04x:%02x:%02x.%u", pci.pciDomain, pci.pciBus, pci.pciDevice, pci.pciFunction);
            if (!strcmp(bus, dd->pci_bus)) {
                g->drm_index = (int)i;
                g->match = "pci-bus";
            }
        }
        if (g->drm_index >= 0) dd->vk_index = index;
    }
}

int board_probe(struct board *b, char *err, size_t err_len)
{
    memset(b, 0, sizeof *b);
    b->picked = -1;
    probe_drm(b);
    VkApplicationInfo app = { .sType = VK_STRUCTURE_TYPE_APPLICATION_INFO, .pApplicationName = "flashbox-board",
                              .apiVersion = VK_API_VERSION_1_1 };
    VkInstanceCreateInfo ici = { .sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO, .pApplicationInfo = &app };
    VkInstance inst;
    VkResult r = vkCreateInstance(&ici, NULL, &inst);
    if (r == VK_ERROR_INCOMPATIBLE_DRIVER)
        return errf(err, err_len, "no Vulkan driver: the loader found no ICD supporting Vulkan 1.1 (%u DRM render nodes present)",
                         b->n_drm);
    if (r != VK_SUCCESS) return errf(err, err_len, "vkCreateInstance failed (%d)", (int)r);
    driver_pin_loaded();
    uint32_t n = 0;
    vkEnumeratePhysicalDevices(inst, &n, NULL);
    VkPhysicalDevice devs[BOARD_MAX_GPUS];
    if (n > BOARD_MAX_GPUS) n = BOARD_MAX_GPUS;
    vkEnumeratePhysicalDevices(inst, &n, devs);
    for (uint32_t i = 0; i < n; i++) probe_gpu(b, devs[i], (int)i);
    vkDestroyInstance(inst, NULL);
    char pick_err[256];
    b->picked = board_pick(b, -1, NULL, pick_err, sizeof pick_err);
    return 0;
}

int board_pick(const struct board *b, int index, const char *uuid, char *err, size_t err_len)
{
    if (b->n_gpus == 0) return errf(err, err_len, "no Vulkan device: the driver reports 0 physical devices");
    int chosen = -1;
    if (uuid) {
        char want[33];
        size_t n = 0;
        for (const char *p = uuid; *p && n < 32; p++)
            if (*p != '-') want[n++] = (char)(*p >= 'A' && *p <= 'F' ? *p - 'A' + 'a' : *p);
        want[n] = 0;
        for (uint32_t i = 0; i < b->n_gpus; i++)
            if (!strcmp(b->gpus[i].uuid, want)) chosen = (int)i;
        if (chosen < 0) return errf(err, err_len, "no Vulkan device has uuid %s", uuid);
    } else if (index >= 0) {
        if ((uint32_t)index >= b->n_gpus) return errf(err, err_len, "device index %d: only %u devices", index, b->n_gpus);
        chosen = index;
    } else {
        for (uint32_t i = 0; i < b->n_gpus; i++)
            if (!b->gpus[i].unsupported[0] && (chosen < 0 || type_rank(b->gpus[i].type) > type_rank(b->gpus[chosen].type)))
                chosen = (int)i;
        if (chosen < 0) return errf(err, err_len, "no usable Vulkan device: %s lacks %s", b->gpus[0].name, b->gpus[0].unsupported);
    }
    if (b->gpus[chosen].unsupported[0])
        return errf(err, err_len, "Vulkan device %d (%s) lacks a required feature: %s", chosen, b->gpus[chosen].name,
                         b->gpus[chosen].unsupported);
    return chosen;
}
