/* The client side of the update admin socket, for `flashbox update ... --admin-socket`:
 * a minimal HTTP/1.1 client over a Unix socket (there is no curl inside the program).
 * One request per connection with "Connection: close"; the answer is read to EOF and
 * parsed: status line, headers (Content-Length honoured; chunked refused, the admin server
 * never sends it), body. */
#ifndef FLASHBOX_FIRMWARE_ADMIN_CLIENT_H
#define FLASHBOX_FIRMWARE_ADMIN_CLIENT_H

#include <stddef.h>

enum { ADMIN_CLIENT_MAX_RESPONSE = 1 << 20 };

/* Sends method path (body: JSON or NULL) and waits for the whole answer (an install can
 * take minutes). *body_out is malloc'd and NUL-terminated. Returns 0 with *status set. */
int admin_client_request(const char *sock_path, const char *method, const char *path, const char *body, int *status,
                         char **body_out, char *err, size_t err_len);

/* Parses a complete response of len bytes: *status, and the body at buf + *body_off of
 * *body_len bytes. */
int admin_client_parse(const char *buf, size_t len, int *status, size_t *body_off, size_t *body_len, char *err,
                       size_t err_len);

#endif
