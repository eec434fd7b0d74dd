/* Compute pipelines made from the embedded SPIR-V (shaders/spirv.h) and the recorder that
 * turns dispatches into one command buffer: descriptor sets from a pool sized up front
 * (nothing allocated per dispatch from the heap), explicit barriers placed by the caller
 * only where a kernel reads what an earlier one wrote, and optional timestamps around
 * dispatches for per-kernel GPU time. */
#ifndef FLASHBOX_ENGINE_VK_PIPELINE_H
#define FLASHBOX_ENGINE_VK_PIPELINE_H

#include "engine/vulkan/vk_device.h"

#define VK_KERNEL_MAX_BINDINGS 10

struct vk_kernel {
    const char *name;           /* shader name (spirv table) */
    uint32_t n_bind, push_size;
    uint32_t texel_mask;        /* bit i: binding i is a uniform texel buffer, else a storage buffer */
    uint32_t wg;                /* workgroup size a row kernel is specialized to (vk_ops.c); 0: the shader's */
    uint32_t attn_kv4;          /* ABI_SPEC_ATTN_KV4 of an attention kernel (vk_ops.c); 0: the shader's */
    VkDescriptorSetLayout dsl;
    VkPipelineLayout layout;
    VkPipeline pipe;
};

/* Builds the pipeline of shader `name` with n_bind storage-buffer bindings (0..n_bind-1),
 * push_size bytes of push constants and specialization constants spec[i] at id i. */
int vk_kernel_create(struct vk_device *d, struct vk_kernel *k, const char *name, uint32_t n_bind, uint32_t push_size,
                     const uint32_t *spec, uint32_t n_spec, char *err, size_t err_len);
/* The same with the bindings in texel_mask declared as uniform texel buffers. */
int vk_kernel_create_texel(struct vk_device *d, struct vk_kernel *k, const char *name, uint32_t n_bind, uint32_t texel_mask,
                           uint32_t push_size, const uint32_t *spec, uint32_t n_spec, char *err, size_t err_len);
void vk_kernel_destroy(struct vk_device *d, struct vk_kernel *k);

struct vk_recorder {
    struct vk_device *d;
    VkCommandBuffer cb;
    VkFence fence;
    VkDescriptorPool pool;
    uint32_t max_sets, n_sets;
    VkQueryPool queries;        /* VK_NULL_HANDLE without timestamps */
    uint32_t max_queries, n_queries;
    uint32_t n_dispatch, n_barrier;
    bool recording;
};

/* max_sets: dispatches per recording; max_queries: timestamps per recording (0: none). */
int vk_recorder_create(struct vk_device *d, uint32_t max_sets, uint32_t max_queries, struct vk_recorder **out,
                       char *err, size_t err_len);
void vk_recorder_destroy(struct vk_recorder *r);
/* Starts a new recording; descriptor sets and queries of the previous one are recycled. */
int vk_recorder_begin(struct vk_recorder *r, char *err, size_t err_len);
/* binds[k] is binding k of the kernel; push is k->push_size bytes. */
int vk_recorder_dispatch(struct vk_recorder *r, const struct vk_kernel *k, const VkDescriptorBufferInfo *binds,
                         const void *push, uint32_t gx, uint32_t gy, uint32_t gz, char *err, size_t err_len);
/* The same for a kernel with texel bindings: views[k] is binding k's view where bit k of
 * k->texel_mask is set (binds[k] is then unused). */
int vk_recorder_dispatch_texel(struct vk_recorder *r, const struct vk_kernel *k, const VkDescriptorBufferInfo *binds,
                               const VkBufferView *views, const void *push, uint32_t gx, uint32_t gy, uint32_t gz,
                               char *err, size_t err_len);
/* Makes every earlier shader or transfer write visible to every later read or write. */
void vk_recorder_barrier(struct vk_recorder *r);
/* Writes a timestamp after all earlier work; returns its query index or -1 when full/off. */
int vk_recorder_timestamp(struct vk_recorder *r);
/* Ends the recording without running it (after an error while recording). */
void vk_recorder_abort(struct vk_recorder *r);
/* Ends, submits and waits. */
int vk_recorder_submit(struct vk_recorder *r, char *err, size_t err_len);
/* Nanoseconds between timestamps a and b of the last submitted recording. */
double vk_recorder_elapsed_ns(struct vk_recorder *r, int a, int b);

#endif
