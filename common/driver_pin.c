/* Pins the objects loaded into the process (RTLD_NODELETE), under ASan. See driver_pin.h. */
#include "common/driver_pin.h"

#if defined(__SANITIZE_ADDRESS__)
#define DRIVER_PIN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define DRIVER_PIN 1
#endif
#endif

#ifdef DRIVER_PIN
#include <dlfcn.h>
#include <link.h>

/* Re-opening an object already loaded with RTLD_NOLOAD | RTLD_NODELETE marks it never to be
 * unmapped; the reference taken is kept on purpose. */
static int pin_object(struct dl_phdr_info *info, size_t size, void *user)
{
    (void)size;
    (void)user;
    if (info->dlpi_name && info->dlpi_name[0]) (void)dlopen(info->dlpi_name, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
    return 0;
}

void driver_pin_loaded(void) { dl_iterate_phdr(pin_object, 0); }
#else
void driver_pin_loaded(void) {}
#endif
