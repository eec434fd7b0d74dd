/* The default backend from the board's facts: the engine never looks at the hardware
 * itself (design.md), so the program resolves ENGINE_BACKEND_AUTO before engine_open, and
 * keeps the reason in words for `flashbox board` and the daemon's /health. */
#ifndef FLASHBOX_FIRMWARE_BACKEND_PICK_H
#define FLASHBOX_FIRMWARE_BACKEND_PICK_H

#include "engine/engine.h"

#include <stddef.h>
#include <stdint.h>

/* On a CPU Vulkan driver (lavapipe) auto takes Vulkan for model files of at least this many
 * bytes. Figures behind it (docs/design.md, "The Vulkan backend"): on the 500 MB small model
 * lavapipe decoded 18-21 against the reference's 3.9 tok/s (earlier stops' benches; issue 16
 * reports about 40 against 11), which repays the first-run pipeline compile (48-50 s uncached,
 * 9 s with Mesa's disk cache) within a few hundred tokens. The 64 MiB line itself is a
 * judgement between the tiny 3-15 MB models (the reference answers before the compile ends)
 * and that model, not a measured crossover. */
#define BACKEND_PICK_CPU_DRIVER_MIN_MODEL_BYTES (64ull << 20)

/* When opt->backend is ENGINE_BACKEND_AUTO: vulkan on the device the board picks if it is a
 * real GPU (discrete, integrated or virtual) with every required feature; on a CPU driver
 * vulkan for models of BACKEND_PICK_CPU_DRIVER_MIN_MODEL_BYTES or more, else the reference;
 * the reference where there is no usable Vulkan driver. Other backends are left as they
 * are. Records the reason (backend_pick_reason). */
void backend_resolve(struct engine_options *opt);

/* The rule alone, for a device of the given kind ("cpu" or a GPU type) and a model of
 * model_bytes (0: unknown): the backend auto takes, and why in words. */
enum engine_backend backend_rule(const char *device_type, uint64_t model_bytes, char *why, size_t why_len);

/* The reason for the last backend_resolve in this process ("" before any), copied into buf. */
void backend_pick_reason(char *buf, size_t len);

#endif
