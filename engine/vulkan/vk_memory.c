/* Chunked device memory, spans, transfers and descriptor ranges (see vk_memory.h). */
#include "engine/vulkan/vk_memory.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/errmsg.h"

static int find_mem_type(const struct vk_device *d, uint32_t type_bits, enum vk_mem_kind kind)
{
    const VkMemoryPropertyFlags host = VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT;
    const VkMemoryPropertyFlags local = VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT;
    /* Preference lists, best first. */
    const VkMemoryPropertyFlags dev_pref[] = { local | host, local, host };
    const VkMemoryPropertyFlags host_pref[] = { host | VK_MEMORY_PROPERTY_HOST_CACHED_BIT, host };
    const VkMemoryPropertyFlags *pref = kind == VK_MEM_DEVICE ? dev_pref : host_pref;
    size_t n_pref = kind == VK_MEM_DEVICE ? 3 : 2;
    for (size_t p = 0; p < n_pref; p++)
        for (uint32_t i = 0; i < d->mem.memoryTypeCount; i++)
            if ((type_bits & (1u << i)) && (d->mem.memoryTypes[i].propertyFlags & pref[p]) == pref[p]) return (int)i;
    return -1;
}

static void destroy_views(struct vk_device *d, struct vk_chunk *c)
{
    if (c->texels_u32x4) vkDestroyBufferView(d->dev, c->texels_u32x4, NULL);
    if (c->texels_f32x4) vkDestroyBufferView(d->dev, c->texels_f32x4, NULL);
    if (c->texels_u32) vkDestroyBufferView(d->dev, c->texels_u32, NULL);
    c->texels_u32x4 = c->texels_f32x4 = c->texels_u32 = VK_NULL_HANDLE;
}

/* Whole-chunk texel views (R32G32B32A32 and R32 formats are mandatory for uniform texel
 * buffers). A view whose texel count exceeds the device's limit, or what a 32-bit texel
 * index reaches, is not made; kernels then read that chunk as a storage buffer. */
static int create_views(struct vk_device *d, struct vk_chunk *c, char *err, size_t err_len)
{
    const struct { VkFormat fmt; uint64_t texel_bytes; VkBufferView *view; } v[3] = {
        { VK_FORMAT_R32G32B32A32_UINT, 16, &c->texels_u32x4 },
        { VK_FORMAT_R32G32B32A32_SFLOAT, 16, &c->texels_f32x4 },
        { VK_FORMAT_R32_UINT, 4, &c->texels_u32 },
    };
    for (int i = 0; i < 3; i++) {
        uint64_t texels = c->size / v[i].texel_bytes;
        if (texels == 0 || texels > d->props.limits.maxTexelBufferElements || texels > INT32_MAX) continue;
        VkBufferViewCreateInfo vi = { .sType = VK_STRUCTURE_TYPE_BUFFER_VIEW_CREATE_INFO, .buffer = c->buf, .format = v[i].fmt,
                                      .offset = 0, .range = texels * v[i].texel_bytes };
        if (vk_check(vkCreateBufferView(d->dev, &vi, NULL, v[i].view), "vkCreateBufferView", err, err_len)) {
            destroy_views(d, c);
            return -1;
        }
    }
    return 0;
}

static int chunk_create(struct vk_arena *a, uint64_t size, char *err, size_t err_len)
{
    struct vk_device *d = a->d;
    if (a->n_chunks == VK_ARENA_MAX_CHUNKS) return errf(err, err_len, "device memory: more than %d chunks", VK_ARENA_MAX_CHUNKS);
    if (size > d->max_alloc)
        return errf(err, err_len, "device memory: allocation of %llu bytes exceeds maxMemoryAllocationSize %llu",
                    (unsigned long long)size, (unsigned long long)d->max_alloc);
    struct vk_chunk *c = &a->chunks[a->n_chunks];
    memset(c, 0, sizeof *c);
    VkBufferCreateInfo bci = {
        .sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO, .size = size,
        .usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | VK_BUFFER_USAGE_UNIFORM_TEXEL_BUFFER_BIT |
                 VK_BUFFER_USAGE_TRANSFER_SRC_BIT | VK_BUFFER_USAGE_TRANSFER_DST_BIT,
        .sharingMode = VK_SHARING_MODE_EXCLUSIVE,
    };
    if (vk_check(vkCreateBuffer(d->dev, &bci, NULL, &c->buf), "vkCreateBuffer", err, err_len)) return -1;
    VkMemoryRequirements req;
    vkGetBufferMemoryRequirements(d->dev, c->buf, &req);
    int type = find_mem_type(d, req.memoryTypeBits, a->kind);
    if (type < 0) {
        vkDestroyBuffer(d->dev, c->buf, NULL);
        return errf(err, err_len, "device memory: no memory type fits a storage buffer (%s)",
                    a->kind == VK_MEM_DEVICE ? "device" : "host-visible");
    }
    VkMemoryAllocateInfo mai = { .sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO, .allocationSize = req.size, .memoryTypeIndex = (uint32_t)type };
    VkResult r = vk_fault_inject(VK_FAULT_ALLOC);
    if (r == VK_SUCCESS) r = vkAllocateMemory(d->dev, &mai, NULL, &c->mem);
    if (r != VK_SUCCESS) {
        vkDestroyBuffer(d->dev, c->buf, NULL);
        return errf(err, err_len, "device memory: allocating %llu bytes: %s", (unsigned long long)req.size, vk_result_name(r));
    }
    if (vk_check(vkBindBufferMemory(d->dev, c->buf, c->mem, 0), "vkBindBufferMemory", err, err_len)) goto fail;
    if (d->mem.memoryTypes[type].propertyFlags & VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT) {
        void *p;
        if (vk_check(vkMapMemory(d->dev, c->mem, 0, VK_WHOLE_SIZE, 0, &p), "vkMapMemory", err, err_len)) goto fail;
        c->map = p;
    }
    c->size = size;
    if (create_views(d, c, err, err_len)) goto fail;
    a->mem_type = (uint32_t)type;
    a->n_chunks++;
    return 0;
fail:
    vkFreeMemory(d->dev, c->mem, NULL);
    vkDestroyBuffer(d->dev, c->buf, NULL);
    return -1;
}

int vk_arena_create(struct vk_arena **out, struct vk_device *d, enum vk_mem_kind kind, uint64_t chunk_bytes,
                    char *err, size_t err_len)
{
    struct vk_arena *a = calloc(1, sizeof *a);
    if (!a) return errf(err, err_len, "out of memory");
    a->d = d;
    a->kind = kind;
    a->chunk_bytes = chunk_bytes < d->max_alloc ? chunk_bytes : d->max_alloc;
    *out = a;
    return 0;
}

void vk_arena_destroy(struct vk_arena *a)
{
    if (!a) return;
    for (uint32_t i = 0; i < a->n_chunks; i++) {
        destroy_views(a->d, &a->chunks[i]);
        if (a->chunks[i].map) vkUnmapMemory(a->d->dev, a->chunks[i].mem);
        vkDestroyBuffer(a->d->dev, a->chunks[i].buf, NULL);
        vkFreeMemory(a->d->dev, a->chunks[i].mem, NULL);
    }
    free(a);
}

uint64_t vk_arena_bytes(const struct vk_arena *a)
{
    uint64_t n = 0;
    for (uint32_t i = 0; i < a->n_chunks; i++) n += a->chunks[i].size;
    return n;
}

int vk_arena_alloc(struct vk_arena *a, uint64_t size, uint64_t align, struct vk_span *out, char *err, size_t err_len)
{
    if (align < 4) align = 4;
    if (a->d->storage_align > align) align = a->d->storage_align;
    if (size == 0) size = 4;
    struct vk_chunk *c = NULL;
    uint64_t off = 0;
    for (uint32_t i = 0; i < a->n_chunks && !c; i++) {
        off = (a->chunks[i].used + align - 1) & ~(align - 1);
        if (off <= a->chunks[i].size && a->chunks[i].size - off >= size) c = &a->chunks[i];
    }
    if (!c) {
        uint64_t want = size > a->chunk_bytes ? size : a->chunk_bytes;
        if (chunk_create(a, (want + 255) & ~(uint64_t)255, err, err_len)) return -1;
        c = &a->chunks[a->n_chunks - 1];
        off = 0;
    }
    c->used = off + size;
    out->buf = c->buf;
    out->off = off;
    out->size = size;
    out->host = c->map ? c->map + off : NULL;
    out->texels_u32x4 = c->texels_u32x4;
    out->texels_f32x4 = c->texels_f32x4;
    out->texels_u32 = c->texels_u32;
    return 0;
}

void vk_arena_plan_alloc(struct vk_arena_plan *p, uint64_t size)
{
    if (size == 0) size = 4;
    for (uint32_t i = 0; i < p->n_chunks; i++) {
        uint64_t off = (p->used[i] + p->align - 1) & ~(p->align - 1);
        if (off <= p->size[i] && p->size[i] - off >= size) {
            p->used[i] = off + size;
            return;
        }
    }
    if (p->n_chunks == VK_ARENA_MAX_CHUNKS) return; /* the real arena fails there */
    uint64_t want = size > p->chunk_bytes ? size : p->chunk_bytes;
    p->size[p->n_chunks] = (want + 255) & ~(uint64_t)255;
    p->used[p->n_chunks++] = size;
}

uint64_t vk_arena_plan_bytes(const struct vk_arena_plan *p)
{
    uint64_t n = 0;
    for (uint32_t i = 0; i < p->n_chunks; i++) n += p->size[i];
    return n;
}

struct vk_span vk_span_sub(const struct vk_span *s, uint64_t off, uint64_t size)
{
    struct vk_span sub = *s;
    sub.off = s->off + off;
    sub.size = size;
    sub.host = s->host ? s->host + off : NULL;
    return sub;
}

/* Copies through a temporary host-visible buffer (load time only, never per token). */
static int staged_copy(struct vk_device *d, const struct vk_span *s, uint64_t off, void *host, uint64_t n,
                       bool upload, char *err, size_t err_len)
{
    struct vk_arena *stage = NULL;
    const uint64_t piece_max = 64u << 20;
    if (vk_arena_create(&stage, d, VK_MEM_HOST, piece_max, err, err_len)) return -1;
    struct vk_span st;
    int rc = vk_arena_alloc(stage, n < piece_max ? n : piece_max, 16, &st, err, err_len);
    for (uint64_t done = 0; !rc && done < n;) {
        uint64_t piece = n - done < st.size ? n - done : st.size;
        if (upload) memcpy(st.host, (uint8_t *)host + done, piece);
        VkCommandBuffer cb;
        if ((rc = vk_oneshot_begin(d, &cb, err, err_len))) break;
        VkBufferCopy region = { .size = piece };
        if (upload) { region.srcOffset = st.off; region.dstOffset = s->off + off + done; vkCmdCopyBuffer(cb, st.buf, s->buf, 1, &region); }
        else { region.srcOffset = s->off + off + done; region.dstOffset = st.off; vkCmdCopyBuffer(cb, s->buf, st.buf, 1, &region); }
        if ((rc = vk_oneshot_submit(d, cb, err, err_len))) break;
        if (!upload) memcpy((uint8_t *)host + done, st.host, piece);
        done += piece;
    }
    vk_arena_destroy(stage);
    return rc;
}

int vk_span_upload(struct vk_device *d, const struct vk_span *s, uint64_t off, const void *src, uint64_t n,
                   char *err, size_t err_len)
{
    if (off > s->size || n > s->size - off)
        return errf(err, err_len, "upload of %llu bytes at %llu: span holds %llu", (unsigned long long)n,
                    (unsigned long long)off, (unsigned long long)s->size);
    if (s->host) { memcpy(s->host + off, src, n); return 0; }
    return staged_copy(d, s, off, (void *)src, n, true, err, err_len);
}

int vk_span_download(struct vk_device *d, const struct vk_span *s, uint64_t off, void *dst, uint64_t n,
                     char *err, size_t err_len)
{
    if (off > s->size || n > s->size - off)
        return errf(err, err_len, "download of %llu bytes at %llu: span holds %llu", (unsigned long long)n,
                    (unsigned long long)off, (unsigned long long)s->size);
    if (s->host) { memcpy(dst, s->host + off, n); return 0; }
    return staged_copy(d, s, off, dst, n, false, err, err_len);
}

int vk_span_range(const struct vk_device *d, const struct vk_span *s, uint64_t off, uint64_t n,
                  VkDescriptorBufferInfo *out, uint64_t *rel, char *err, size_t err_len)
{
    uint64_t start = s->off + off;
    uint64_t aligned = start & ~(d->storage_align - 1);
    uint64_t range = ((start + n - aligned) + 3) & ~(uint64_t)3;
    if (range > d->max_range)
        return errf(err, err_len, "binding of %llu bytes exceeds maxStorageBufferRange %llu",
                    (unsigned long long)range, (unsigned long long)d->max_range);
    out->buffer = s->buf;
    out->offset = aligned;
    out->range = range;
    *rel = start - aligned;
    return 0;
}
