/* The Vulkan backend's forward pass: weights uploaded once per engine in their file
 * format, per-session state on the device (window rings, compressed entries, compressor
 * state, activations for VK_BATCH tokens), and one command buffer per batch of tokens that
 * runs every layer and the head (spec §3). The state layout follows the CPU reference
 * (engine/ref/ref.h) so the two can be compared step by step. */
#ifndef FLASHBOX_ENGINE_VK_FORWARD_H
#define FLASHBOX_ENGINE_VK_FORWARD_H

#include "engine/backend.h"
#include "engine/vulkan/vk_ops.h"

/* Tokens per command buffer; longer prompts run in chunks of this size. Larger batches
 * give each routed expert more tokens per matrix tile (at 64, about 6 of a tile's 8 on
 * the small model); 256 against 64 cut prefill CPU time per token by 16% there at a
 * 256-token prompt. Activations and the window ring grow with it. */
#define VK_BATCH 256
/* Batches of at least this many tokens group the routed slots by expert (prefill). */
#define VK_MOE_GROUP_MIN_TOKENS 4

struct vk_engine;
struct vk_session;

/* Per-kernel-kind GPU time of the last eval (nanoseconds), filled when profiling is on.
 * matvec: the dense weights' products; experts: the routed experts' (gate/up and down). */
enum vk_kind {
    VK_KIND_MATVEC, VK_KIND_EXPERTS, VK_KIND_HC, VK_KIND_NORM_ROPE, VK_KIND_COMPRESS, VK_KIND_INDEXER,
    VK_KIND_ATTENTION, VK_KIND_ROUTER, VK_KIND_SWIGLU, VK_KIND_OTHER, VK_KIND_COUNT,
};
extern const char *const vk_kind_names[VK_KIND_COUNT];

struct vk_profile {
    bool enabled;
    double ns[VK_KIND_COUNT];
    uint32_t dispatches[VK_KIND_COUNT];
    uint64_t weight_bytes;      /* weight bytes the recorded matvecs read */
    uint32_t n_dispatch;        /* dispatches in the last command buffer */
};

extern const struct backend_ops vk_backend_ops;

struct vk_device *vk_engine_device(struct vk_engine *e);
const struct vk_ops *vk_engine_ops(struct vk_engine *e);
/* Weight bytes on the device (all tensors the forward reads). */
uint64_t vk_engine_weight_bytes(const struct vk_engine *e);

#endif
