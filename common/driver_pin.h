/* Keeps the Vulkan driver mapped once loaded, in AddressSanitizer builds only (a no-op
 * otherwise). lavapipe frees some globals only when it is unloaded, and the Vulkan loader
 * unloads it at vkDestroyInstance; LeakSanitizer then finds those blocks unreachable and
 * fails the process for a leak that is the driver's, not ours (128 bytes from an
 * "<unknown module>"). Call it right after a successful vkCreateInstance. */
#ifndef FLASHBOX_COMMON_DRIVER_PIN_H
#define FLASHBOX_COMMON_DRIVER_PIN_H

void driver_pin_loaded(void);

#endif
