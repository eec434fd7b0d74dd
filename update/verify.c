/* `update verify`: the public check of a bundle against the box's trust (the store's
 * rotated key set, else the configured keys) and product, every payload chunk hashed.
 * It lives above both bundle.c (reading bundles) and store.c (the slot store and its
 * trust), which would otherwise include each other. */
#include "common/errmsg.h"
#include "update/bundle.h"
#include "update/store.h"

#include <stdio.h>
#include <string.h>

int update_verify_bundle(const struct update_config *cfg, const char *bundle_path, const struct update_hooks *hooks,
                         struct update_bundle_info *info, char *err, size_t err_len)
{
    struct keyset ks;
    char source[4096];
    if (store_load_trust(cfg, &ks, source, sizeof source, err, err_len)) return -1;
    struct bundle b;
    if (bundle_open(&b, bundle_path, &ks, err, err_len)) return -1;
    if (info) bundle_info_fill(&b, info);
    int rc = 0;
    if (strcmp(b.m.product, cfg->product))
        rc = errf(err, err_len, "bundle is for product \"%s\", this box is \"%s\"", b.m.product, cfg->product);
    for (uint32_t i = 0; i < b.m.n_payloads && !rc; i++) {
        char what[200];
        snprintf(what, sizeof what, "payload %s", b.m.payloads[i].name);
        rc = bundle_check_payload(b.fd, b.payload_off[i], &b.m.payloads[i], what, UPDATE_PHASE_VERIFY, hooks, NULL,
                                  NULL, err, err_len);
    }
    bundle_close(&b);
    return rc;
}
