/* The update admin socket: a second HTTP server on its own Unix socket (mode 0600; only
 * peers with uid 0 or the daemon's own uid, by SO_PEERCRED) for signed updates of a
 * running daemon. Routes:
 *   GET  /admin/update/status    the slot store (update_get_status), what is served, and
 *                                the operation in progress with its phase and bytes
 *   POST /admin/update/install   body {"bundle": "/abs/path.fbx"}: update_install with the
 *                                engine self-test and the site's evaluation (update.eval_*,
 *                                phase "evaluate", done/total in cases), then a hot reload
 *   POST /admin/update/rollback  update_rollback, then a hot reload
 * One operation at a time (409 otherwise). An operation runs on its own thread; the
 * request waits for it and answers with the result (a client that hangs up does not stop
 * it: the status route shows it, and its result, afterwards). The API socket has no model
 * management at all. */
#ifndef FLASHBOX_FIRMWARE_ADMIN_H
#define FLASHBOX_FIRMWARE_ADMIN_H

#include "firmware/config.h"

#include <stddef.h>
#include <stdint.h>

struct admin;
struct model_host;

/* Serves on the listening socket fd (taken over). Operations answer 503 until
 * admin_set_host hands over the loaded model. */
int admin_start(struct admin **out, const struct serve_config *cfg, int fd, char *err, size_t err_len);
void admin_set_host(struct admin *ad, struct model_host *h);
/* Stops taking requests; a site evaluation in progress gives up at once (the new slot is
 * refused, the active one stays). Any other operation gets grace_ms to finish; then it is
 * cancelled at its next cancellation point (the store left as a crash there would leave
 * it) and gets ADMIN_CANCEL_BOUND_MS more. Returns 0 when it ended and everything was
 * freed; 1 when it did not (a read that never returns): then nothing is freed or joined,
 * and the caller must exit the process without touching what the operation may use. */
enum { ADMIN_CANCEL_BOUND_MS = 3000 };
int admin_stop(struct admin *ad, uint32_t grace_ms);

/* The install body: {"bundle": "/absolute/path"}; path is copied into out (path_cap bytes). */
int admin_parse_install(const char *body, size_t len, char *path, size_t path_cap, char *err, size_t err_len);

#endif
