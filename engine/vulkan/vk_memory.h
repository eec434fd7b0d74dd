/* Device memory of the Vulkan backend: a few large allocations ("chunks", each one
 * VkBuffer over one VkDeviceMemory, each under maxMemoryAllocationSize), suballocated into
 * spans; uploads and downloads (mapped when the memory is host-visible, through a staging
 * buffer otherwise); and descriptor ranges that respect maxStorageBufferRange and the
 * offset alignment, with the remainder passed to the kernel as an offset. */
#ifndef FLASHBOX_ENGINE_VK_MEMORY_H
#define FLASHBOX_ENGINE_VK_MEMORY_H

#include "engine/vulkan/vk_device.h"

#define VK_ARENA_MAX_CHUNKS 256

enum vk_mem_kind {
    VK_MEM_DEVICE,   /* weights and activations: device-local first, host-visible if free */
    VK_MEM_HOST,     /* readback and staging: host-visible, coherent, cached if possible */
};

struct vk_span {
    VkBuffer buf;    /* the chunk's buffer */
    uint64_t off;    /* bytes into buf */
    uint64_t size;   /* bytes */
    uint8_t *host;   /* mapped address of byte off, or NULL when not host-visible */
    /* The chunk's whole buffer as uniform texel buffers, for kernels that read through
     * texel fetches: 16-byte texels of raw words and of float4 (texel index = (off +
     * byte) / 16) and single words (index = (off + byte) / 4); VK_NULL_HANDLE when the
     * chunk has more texels of that size than the device allows in one view. */
    VkBufferView texels_u32x4, texels_f32x4, texels_u32;
};

struct vk_chunk {
    VkDeviceMemory mem;
    VkBuffer buf;
    VkBufferView texels_u32x4, texels_f32x4, texels_u32;   /* see vk_span */
    uint64_t size, used;  /* bytes */
    uint8_t *map;         /* NULL when not host-visible */
};

struct vk_arena {
    struct vk_device *d;
    enum vk_mem_kind kind;
    uint32_t mem_type;
    uint64_t chunk_bytes;   /* default chunk size; a larger request gets its own chunk */
    uint32_t n_chunks;
    struct vk_chunk chunks[VK_ARENA_MAX_CHUNKS];
};

int vk_arena_create(struct vk_arena **out, struct vk_device *d, enum vk_mem_kind kind, uint64_t chunk_bytes,
                    char *err, size_t err_len);
void vk_arena_destroy(struct vk_arena *a);
/* A span of size bytes aligned to align (a power of two, at least 4). */
int vk_arena_alloc(struct vk_arena *a, uint64_t size, uint64_t align, struct vk_span *out, char *err, size_t err_len);
/* Bytes [off, off + size) of span s as a span of their own (same chunk, same views). */
struct vk_span vk_span_sub(const struct vk_span *s, uint64_t off, uint64_t size);
/* Bytes allocated from the device so far. */
uint64_t vk_arena_bytes(const struct vk_arena *a);

/* The device memory an arena would take for a sequence of allocations, without a device:
 * vk_arena_alloc's placement (first fit in the chunks so far, else a new chunk of
 * chunk_bytes or of the request) for spans aligned to `align`. The memory plan uses it;
 * a test checks it against real arenas. */
struct vk_arena_plan {
    uint64_t chunk_bytes, align;
    uint32_t n_chunks;
    uint64_t size[VK_ARENA_MAX_CHUNKS], used[VK_ARENA_MAX_CHUNKS];
};
void vk_arena_plan_alloc(struct vk_arena_plan *p, uint64_t size);
uint64_t vk_arena_plan_bytes(const struct vk_arena_plan *p);

/* Copies n bytes between host memory and span bytes [off, off + n). */
int vk_span_upload(struct vk_device *d, const struct vk_span *s, uint64_t off, const void *src, uint64_t n,
                   char *err, size_t err_len);
int vk_span_download(struct vk_device *d, const struct vk_span *s, uint64_t off, void *dst, uint64_t n,
                     char *err, size_t err_len);

/* A descriptor range covering span bytes [off, off + n): the bound offset is aligned down
 * to the device's storage alignment and *rel receives where byte off lies inside the
 * range. Fails when the range would exceed maxStorageBufferRange. */
int vk_span_range(const struct vk_device *d, const struct vk_span *s, uint64_t off, uint64_t n,
                  VkDescriptorBufferInfo *out, uint64_t *rel, char *err, size_t err_len);

#endif
