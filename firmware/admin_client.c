/* Minimal HTTP/1.1 client for the admin socket (see admin_client.h). */
#include "firmware/admin_client.h"

#include "common/errmsg.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

enum { HEADER_MAX = 16384 };

/* The value of header name in the header block [h, end), or NULL; *vlen its length. */
static const char *find_header(const char *h, const char *end, const char *name, size_t *vlen)
{
    size_t nl = strlen(name);
    for (const char *line = h; line < end;) {
        const char *eol = memchr(line, '\n', (size_t)(end - line));
        if (!eol) eol = end;
        if ((size_t)(eol - line) > nl && line[nl] == ':' && !strncasecmp(line, name, nl)) {
            const char *v = line + nl + 1, *ve = eol;
            while (v < ve && (*v == ' ' || *v == '\t')) v++;
            while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t')) ve--;
            *vlen = (size_t)(ve - v);
            return v;
        }
        line = eol + 1;
    }
    return NULL;
}

int admin_client_parse(const char *buf, size_t len, int *status, size_t *body_off, size_t *body_len, char *err,
                       size_t err_len)
{
    /* "HTTP/1.x NNN" then a space or the end of the line */
    if (len < 12 || memcmp(buf, "HTTP/1.", 7) || (buf[7] != '0' && buf[7] != '1') || buf[8] != ' ')
        return errf(err, err_len, "response: does not start with an HTTP/1.x status line");
    int st = 0;
    for (int i = 9; i < 12; i++) {
        if (buf[i] < '0' || buf[i] > '9') return errf(err, err_len, "response: status code is not three digits");
        st = st * 10 + (buf[i] - '0');
    }
    if (st < 100 || (len > 12 && buf[12] != ' ' && buf[12] != '\r'))
        return errf(err, err_len, "response: malformed status line");
    size_t scan = len < HEADER_MAX ? len : HEADER_MAX;
    const char *end = NULL;
    for (size_t i = 0; i + 3 < scan; i++)
        if (!memcmp(buf + i, "\r\n\r\n", 4)) {
            end = buf + i + 4;
            break;
        }
    if (!end) return errf(err, err_len, "response: no end of headers within %d bytes", HEADER_MAX);
    const char *headers = memchr(buf, '\n', (size_t)(end - buf));
    headers = headers ? headers + 1 : end;
    size_t vlen;
    const char *te = find_header(headers, end, "Transfer-Encoding", &vlen);
    if (te && !(vlen == 8 && !strncasecmp(te, "identity", 8)))
        return errf(err, err_len, "response: Transfer-Encoding %.*s is not supported", (int)(vlen < 32 ? vlen : 32), te);
    size_t off = (size_t)(end - buf), avail = len - off;
    const char *cl = find_header(headers, end, "Content-Length", &vlen);
    if (cl) {
        uint64_t n = 0;
        if (vlen == 0 || vlen > 12) return errf(err, err_len, "response: Content-Length is not a number");
        for (size_t i = 0; i < vlen; i++) {
            if (cl[i] < '0' || cl[i] > '9') return errf(err, err_len, "response: Content-Length is not a number");
            n = n * 10 + (uint64_t)(cl[i] - '0');
        }
        if (n > avail) return errf(err, err_len, "response: body of %zu bytes, Content-Length says %llu", avail, (unsigned long long)n);
        avail = (size_t)n;
    }
    *status = st;
    *body_off = off;
    *body_len = avail;
    return 0;
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int admin_client_request(const char *sock_path, const char *method, const char *path, const char *body, int *status,
                         char **body_out, char *err, size_t err_len)
{
    *body_out = NULL;
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(sock_path) >= sizeof sa.sun_path) return errf(err, err_len, "%s: socket path too long", sock_path);
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", sock_path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return errf(err, err_len, "socket: %s", strerror(errno));
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        int e = errno;
        close(fd);
        return errf(err, err_len, "%s: %s (is the daemon running with update.data_dir, and are you root?)", sock_path,
                    strerror(e));
    }
    size_t blen = body ? strlen(body) : 0;
    char head[512];
    int hn = snprintf(head, sizeof head,
                      "%s %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\n"
                      "Content-Length: %zu\r\n\r\n",
                      method, path, blen);
    if (hn < 0 || (size_t)hn >= sizeof head || write_all(fd, head, (size_t)hn) || (blen && write_all(fd, body, blen))) {
        close(fd);
        return errf(err, err_len, "%s: sending the request failed: %s", sock_path, strerror(errno));
    }
    size_t len = 0, cap = 8192;
    char *buf = malloc(cap);
    int rc = buf ? 0 : errf(err, err_len, "out of memory");
    while (!rc) {
        if (len + 1 >= cap) {
            if (cap >= ADMIN_CLIENT_MAX_RESPONSE) {
                rc = errf(err, err_len, "response: larger than %d bytes", ADMIN_CLIENT_MAX_RESPONSE);
                break;
            }
            char *b = realloc(buf, cap * 2);
            if (!b) {
                rc = errf(err, err_len, "out of memory");
                break;
            }
            buf = b;
            cap *= 2;
        }
        ssize_t n = read(fd, buf + len, cap - len - 1);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) rc = errf(err, err_len, "%s: reading the response: %s", sock_path, strerror(errno));
        if (n <= 0) break;
        len += (size_t)n;
    }
    close(fd);
    size_t off, n;
    if (!rc) rc = admin_client_parse(buf, len, status, &off, &n, err, err_len);
    if (!rc) {
        memmove(buf, buf + off, n);
        buf[n] = 0;
        *body_out = buf;
    } else {
        free(buf);
    }
    return rc;
}
