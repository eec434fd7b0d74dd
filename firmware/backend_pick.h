/* The default backend from the board's facts: the engine never looks at the hardware
 * itself (design.md), so the program resolves ENGINE_BACKEND_AUTO before engine_open. */
#ifndef FLASHBOX_FIRMWARE_BACKEND_PICK_H
#define FLASHBOX_FIRMWARE_BACKEND_PICK_H

#include "engine/engine.h"

/* When opt->backend is ENGINE_BACKEND_AUTO: vulkan on the device the board picks if it is a
 * real GPU (discrete, integrated or virtual) with every required feature, else the CPU
 * reference (no Vulkan driver, or only a CPU implementation such as lavapipe, where the
 * reference is faster). Other backends are left as they are. */
void backend_resolve(struct engine_options *opt);

#endif
