/* Pipelines from embedded SPIR-V, and the command recorder (see vk_pipeline.h). */
#include "engine/vulkan/vk_pipeline.h"

#include <stdlib.h>
#include <string.h>

#include "common/errmsg.h"
#include "shaders/spirv.h"

static const struct spirv_blob *find_spirv(const char *name)
{
    for (const struct spirv_blob *b = spirv_table; b->name; b++)
        if (!strcmp(b->name, name)) return b;
    return NULL;
}

static VkDescriptorType binding_type(const struct vk_kernel *k, uint32_t i)
{
    return (k->texel_mask >> i) & 1u ? VK_DESCRIPTOR_TYPE_UNIFORM_TEXEL_BUFFER : VK_DESCRIPTOR_TYPE_STORAGE_BUFFER;
}

int vk_kernel_create(struct vk_device *d, struct vk_kernel *k, const char *name, uint32_t n_bind, uint32_t push_size,
                     const uint32_t *spec, uint32_t n_spec, char *err, size_t err_len)
{
    return vk_kernel_create_texel(d, k, name, n_bind, 0, push_size, spec, n_spec, err, err_len);
}

int vk_kernel_create_texel(struct vk_device *d, struct vk_kernel *k, const char *name, uint32_t n_bind, uint32_t texel_mask,
                           uint32_t push_size, const uint32_t *spec, uint32_t n_spec, char *err, size_t err_len)
{
    memset(k, 0, sizeof *k);
    k->name = name;
    k->n_bind = n_bind;
    k->push_size = push_size;
    k->texel_mask = texel_mask;
    const struct spirv_blob *blob = find_spirv(name);
    if (!blob) return errf(err, err_len, "shader %s: not in the embedded SPIR-V table", name);
    if (n_bind > VK_KERNEL_MAX_BINDINGS) return errf(err, err_len, "shader %s: %u bindings, at most %d", name, n_bind, VK_KERNEL_MAX_BINDINGS);
    if (push_size > d->props.limits.maxPushConstantsSize)
        return errf(err, err_len, "shader %s: %u bytes of push constants, device allows %u", name, push_size,
                    d->props.limits.maxPushConstantsSize);

    VkDescriptorSetLayoutBinding b[VK_KERNEL_MAX_BINDINGS];
    for (uint32_t i = 0; i < n_bind; i++)
        b[i] = (VkDescriptorSetLayoutBinding){ .binding = i, .descriptorType = binding_type(k, i),
                                               .descriptorCount = 1, .stageFlags = VK_SHADER_STAGE_COMPUTE_BIT };
    VkDescriptorSetLayoutCreateInfo dci = { .sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO, .bindingCount = n_bind, .pBindings = b };
    if (vk_check(vkCreateDescriptorSetLayout(d->dev, &dci, NULL, &k->dsl), name, err, err_len)) return -1;

    VkPushConstantRange pr = { .stageFlags = VK_SHADER_STAGE_COMPUTE_BIT, .size = push_size };
    VkPipelineLayoutCreateInfo lci = {
        .sType = VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO, .setLayoutCount = 1, .pSetLayouts = &k->dsl,
        .pushConstantRangeCount = push_size ? 1 : 0, .pPushConstantRanges = &pr,
    };
    if (vk_check(vkCreatePipelineLayout(d->dev, &lci, NULL, &k->layout), name, err, err_len)) goto fail_dsl;

    VkShaderModuleCreateInfo sci = { .sType = VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO, .codeSize = blob->size_bytes, .pCode = blob->code };
    VkShaderModule mod;
    if (vk_check(vkCreateShaderModule(d->dev, &sci, NULL, &mod), name, err, err_len)) goto fail_layout;

    VkSpecializationMapEntry map[8];
    if (n_spec > 8) n_spec = 8;
    for (uint32_t i = 0; i < n_spec; i++) map[i] = (VkSpecializationMapEntry){ .constantID = i, .offset = 4 * i, .size = 4 };
    VkSpecializationInfo si = { .mapEntryCount = n_spec, .pMapEntries = map, .dataSize = 4 * n_spec, .pData = spec };
    VkComputePipelineCreateInfo pci = {
        .sType = VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO,
        .stage = { .sType = VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO, .stage = VK_SHADER_STAGE_COMPUTE_BIT,
                   .module = mod, .pName = "main", .pSpecializationInfo = n_spec ? &si : NULL },
        .layout = k->layout,
    };
    VkResult r = vkCreateComputePipelines(d->dev, VK_NULL_HANDLE, 1, &pci, NULL, &k->pipe);
    vkDestroyShaderModule(d->dev, mod, NULL);
    if (vk_check(r, name, err, err_len)) goto fail_layout;
    return 0;

fail_layout:
    vkDestroyPipelineLayout(d->dev, k->layout, NULL);
fail_dsl:
    vkDestroyDescriptorSetLayout(d->dev, k->dsl, NULL);
    memset(k, 0, sizeof *k);
    return -1;
}

void vk_kernel_destroy(struct vk_device *d, struct vk_kernel *k)
{
    if (!k->pipe) return;
    vkDestroyPipeline(d->dev, k->pipe, NULL);
    vkDestroyPipelineLayout(d->dev, k->layout, NULL);
    vkDestroyDescriptorSetLayout(d->dev, k->dsl, NULL);
    memset(k, 0, sizeof *k);
}

int vk_recorder_create(struct vk_device *d, uint32_t max_sets, uint32_t max_queries, struct vk_recorder **out,
                       char *err, size_t err_len)
{
    struct vk_recorder *r = calloc(1, sizeof *r);
    if (!r) return errf(err, err_len, "out of memory");
    r->d = d;
    r->max_sets = max_sets;
    /* every binding of every set may be of either kind */
    VkDescriptorPoolSize ps[2] = { { .type = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, .descriptorCount = max_sets * VK_KERNEL_MAX_BINDINGS },
                                   { .type = VK_DESCRIPTOR_TYPE_UNIFORM_TEXEL_BUFFER, .descriptorCount = max_sets * VK_KERNEL_MAX_BINDINGS } };
    VkDescriptorPoolCreateInfo pci = { .sType = VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO, .maxSets = max_sets, .poolSizeCount = 2, .pPoolSizes = ps };
    if (vk_check(vkCreateDescriptorPool(d->dev, &pci, NULL, &r->pool), "vkCreateDescriptorPool", err, err_len)) goto fail;
    VkCommandBufferAllocateInfo ai = { .sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO, .commandPool = d->cmd_pool,
                                       .level = VK_COMMAND_BUFFER_LEVEL_PRIMARY, .commandBufferCount = 1 };
    if (vk_check(vkAllocateCommandBuffers(d->dev, &ai, &r->cb), "vkAllocateCommandBuffers", err, err_len)) goto fail;
    VkFenceCreateInfo fci = { .sType = VK_STRUCTURE_TYPE_FENCE_CREATE_INFO };
    if (vk_check(vkCreateFence(d->dev, &fci, NULL, &r->fence), "vkCreateFence", err, err_len)) goto fail;
    if (max_queries && d->timestamps) {
        VkQueryPoolCreateInfo qci = { .sType = VK_STRUCTURE_TYPE_QUERY_POOL_CREATE_INFO, .queryType = VK_QUERY_TYPE_TIMESTAMP, .queryCount = max_queries };
        if (vk_check(vkCreateQueryPool(d->dev, &qci, NULL, &r->queries), "vkCreateQueryPool", err, err_len)) goto fail;
        r->max_queries = max_queries;
    }
    *out = r;
    return 0;
fail:
    vk_recorder_destroy(r);
    return -1;
}

void vk_recorder_destroy(struct vk_recorder *r)
{
    if (!r) return;
    VkDevice dev = r->d->dev;
    if (r->queries) vkDestroyQueryPool(dev, r->queries, NULL);
    if (r->fence) vkDestroyFence(dev, r->fence, NULL);
    if (r->cb) vkFreeCommandBuffers(dev, r->d->cmd_pool, 1, &r->cb);
    if (r->pool) vkDestroyDescriptorPool(dev, r->pool, NULL);
    free(r);
}

int vk_recorder_begin(struct vk_recorder *r, char *err, size_t err_len)
{
    if (vk_check(vkResetDescriptorPool(r->d->dev, r->pool, 0), "vkResetDescriptorPool", err, err_len)) return -1;
    if (vk_check(vkResetCommandBuffer(r->cb, 0), "vkResetCommandBuffer", err, err_len)) return -1;
    VkCommandBufferBeginInfo bi = { .sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO, .flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT };
    if (vk_check(vkBeginCommandBuffer(r->cb, &bi), "vkBeginCommandBuffer", err, err_len)) return -1;
    if (r->queries) vkCmdResetQueryPool(r->cb, r->queries, 0, r->max_queries);
    r->n_sets = r->n_queries = r->n_dispatch = r->n_barrier = 0;
    r->recording = true;
    return 0;
}

int vk_recorder_dispatch(struct vk_recorder *r, const struct vk_kernel *k, const VkDescriptorBufferInfo *binds,
                         const void *push, uint32_t gx, uint32_t gy, uint32_t gz, char *err, size_t err_len)
{
    return vk_recorder_dispatch_texel(r, k, binds, NULL, push, gx, gy, gz, err, err_len);
}

int vk_recorder_dispatch_texel(struct vk_recorder *r, const struct vk_kernel *k, const VkDescriptorBufferInfo *binds,
                               const VkBufferView *views, const void *push, uint32_t gx, uint32_t gy, uint32_t gz,
                               char *err, size_t err_len)
{
    if (k->texel_mask && !views) return errf(err, err_len, "%s: texel bindings without views", k->name);
    if (!r->recording) return errf(err, err_len, "%s: dispatch outside a recording", k->name);
    if (r->n_sets == r->max_sets) return errf(err, err_len, "%s: more than %u dispatches in one recording", k->name, r->max_sets);
    if (gx == 0 || gy == 0 || gz == 0) return 0;
    VkDescriptorSetAllocateInfo ai = { .sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO, .descriptorPool = r->pool,
                                       .descriptorSetCount = 1, .pSetLayouts = &k->dsl };
    VkDescriptorSet set;
    if (vk_check(vkAllocateDescriptorSets(r->d->dev, &ai, &set), k->name, err, err_len)) return -1;
    r->n_sets++;
    VkWriteDescriptorSet w[VK_KERNEL_MAX_BINDINGS];
    for (uint32_t i = 0; i < k->n_bind; i++) {
        w[i] = (VkWriteDescriptorSet){ .sType = VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET, .dstSet = set, .dstBinding = i,
                                       .descriptorCount = 1, .descriptorType = binding_type(k, i) };
        if ((k->texel_mask >> i) & 1u) w[i].pTexelBufferView = &views[i];
        else w[i].pBufferInfo = &binds[i];
    }
    vkUpdateDescriptorSets(r->d->dev, k->n_bind, w, 0, NULL);
    vkCmdBindPipeline(r->cb, VK_PIPELINE_BIND_POINT_COMPUTE, k->pipe);
    vkCmdBindDescriptorSets(r->cb, VK_PIPELINE_BIND_POINT_COMPUTE, k->layout, 0, 1, &set, 0, NULL);
    if (k->push_size) vkCmdPushConstants(r->cb, k->layout, VK_SHADER_STAGE_COMPUTE_BIT, 0, k->push_size, push);
    vkCmdDispatch(r->cb, gx, gy, gz);
    r->n_dispatch++;
    return 0;
}

void vk_recorder_barrier(struct vk_recorder *r)
{
    /* Transfers (fills, embedding copies) count as writers and readers too. */
    const VkPipelineStageFlags stages = VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT;
    VkMemoryBarrier mb = { .sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
                           .srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_WRITE_BIT,
                           .dstAccessMask = VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT |
                                            VK_ACCESS_TRANSFER_READ_BIT | VK_ACCESS_TRANSFER_WRITE_BIT };
    vkCmdPipelineBarrier(r->cb, stages, stages, 0, 1, &mb, 0, NULL, 0, NULL);
    r->n_barrier++;
}

int vk_recorder_timestamp(struct vk_recorder *r)
{
    if (!r->queries || r->n_queries == r->max_queries) return -1;
    vkCmdWriteTimestamp(r->cb, VK_PIPELINE_STAGE_BOTTOM_OF_PIPE_BIT, r->queries, r->n_queries);
    return (int)r->n_queries++;
}

void vk_recorder_abort(struct vk_recorder *r)
{
    if (!r->recording) return;
    r->recording = false;
    vkEndCommandBuffer(r->cb);
}

int vk_recorder_submit(struct vk_recorder *r, char *err, size_t err_len)
{
    if (!r->recording) return errf(err, err_len, "submit without a recording");
    r->recording = false;
    if (vk_check(vkEndCommandBuffer(r->cb), "vkEndCommandBuffer", err, err_len)) return -1;
    return vk_device_submit_wait(r->d, r->cb, r->fence, err, err_len);
}

double vk_recorder_elapsed_ns(struct vk_recorder *r, int a, int b)
{
    if (!r->queries || a < 0 || b < 0) return 0;
    uint64_t ta, tb;
    if (vkGetQueryPoolResults(r->d->dev, r->queries, (uint32_t)a, 1, sizeof ta, &ta, sizeof ta, VK_QUERY_RESULT_64_BIT) != VK_SUCCESS ||
        vkGetQueryPoolResults(r->d->dev, r->queries, (uint32_t)b, 1, sizeof tb, &tb, sizeof tb, VK_QUERY_RESULT_64_BIT) != VK_SUCCESS)
        return 0;
    return (double)(tb - ta) * r->d->timestamp_ns;
}
