/* libFuzzer target for the update state file parser (update/store.c). Whatever parses
 * must describe a slot index in -1..1. */
#include "update/store.h"

#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct store_state st;
    char err[256];
    if (store_parse_state((const char *)data, size, &st, err, sizeof err) == 0 && (st.trial < -1 || st.trial > 1))
        abort();
    return 0;
}
