/* libFuzzer target for the manifest parser (update/manifest.c). Besides "never crash",
 * it checks canonicity: whatever parses must re-encode to exactly the input bytes, so two
 * different byte strings can never mean the same signed manifest. */
#include "update/manifest.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct manifest m;
    char err[256];
    if (manifest_parse(&m, data, size, err, sizeof err) != 0) {
        if (!memchr(err, '\0', sizeof err) || err[0] == '\0') abort(); /* every refusal says why */
        return 0;
    }
    uint8_t *again;
    size_t len;
    if (manifest_encode(&m, &again, &len, err, sizeof err) != 0) abort();
    if (len != size || memcmp(again, data, size) != 0) abort();
    free(again);
    return 0;
}
