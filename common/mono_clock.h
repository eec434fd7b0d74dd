/* The one monotonic clock of the project: deadlines, timeouts, progress rates and bench
 * timings. Monotonic because wall-clock steps (NTP, an operator's `date`) must not shorten a
 * timeout or make a rate negative. */
#ifndef FLASHBOX_COMMON_MONO_CLOCK_H
#define FLASHBOX_COMMON_MONO_CLOCK_H

#include <stdint.h>
#include <time.h>

/* nanoseconds since an arbitrary fixed point (boot) */
static inline uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* seconds, for rates and elapsed times printed to people */
static inline double mono_s(void)
{
    return (double)mono_ns() * 1e-9;
}

#endif
