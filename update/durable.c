/* Durable file operations (see durable.h). */
#include "update/durable.h"
#include "common/safe_open.h"

#include "common/errmsg.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int durable_write_all(int fd, const void *buf, size_t len, const char *what, char *err, size_t err_len)
{
    const uint8_t *p = buf;
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return errf(err, err_len, "writing %s: %s", what, n < 0 ? strerror(errno) : "no progress");
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

int durable_pwrite_all(int fd, const void *buf, size_t len, uint64_t off, const char *what, char *err,
                       size_t err_len)
{
    const uint8_t *p = buf;
    while (len) {
        ssize_t n = pwrite(fd, p, len, (off_t)off);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0)
            return errf(err, err_len, "writing %s at byte %llu: %s", what, (unsigned long long)off,
                        n < 0 ? strerror(errno) : "no progress");
        p += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

int durable_pread_all(int fd, void *buf, size_t len, uint64_t off, const char *what, char *err, size_t err_len)
{
    uint8_t *p = buf;
    while (len) {
        ssize_t n = pread(fd, p, len, (off_t)off);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return errf(err, err_len, "reading %s at byte %llu: %s", what, (unsigned long long)off, strerror(errno));
        if (n == 0)
            return errf(err, err_len, "%s ends at byte %llu, %zu more bytes expected (truncated)", what,
                        (unsigned long long)off, len);
        p += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

int durable_fsync_path(const char *path, char *err, size_t err_len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return errf(err, err_len, "%s: %s", path, strerror(errno));
    int rc = fsync(fd) == 0 ? 0 : errf(err, err_len, "fsync %s: %s", path, strerror(errno));
    close(fd);
    return rc;
}

void durable_dirname(const char *path, char *buf, size_t buf_len)
{
    const char *slash = strrchr(path, '/');
    if (!slash) snprintf(buf, buf_len, ".");
    else if (slash == path) snprintf(buf, buf_len, "/");
    else snprintf(buf, buf_len, "%.*s", (int)(slash - path), path);
}

int durable_replace_file(const char *path, const void *data, size_t len, mode_t mode, char *err, size_t err_len)
{
    char tmp[4200], dir[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    durable_dirname(path, dir, sizeof dir);
    /* Only ever inside a managed directory (the slot store): never through a planted link. */
    int fd = safe_open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW, mode, err, err_len);
    if (fd < 0) return -1;
    if (durable_write_all(fd, data, len, tmp, err, err_len) || (fsync(fd) != 0 && errf(err, err_len, "fsync %s: %s", tmp, strerror(errno)))) {
        close(fd);
        unlink(tmp);
        return -1;
    }
    if (close(fd) != 0) {
        unlink(tmp);
        return errf(err, err_len, "closing %s: %s", tmp, strerror(errno));
    }
    if (rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return errf(err, err_len, "rename %s -> %s: %s", tmp, path, strerror(e));
    }
    return durable_fsync_path(dir, err, err_len);
}

int durable_replace_symlink(const char *path, const char *target, char *err, size_t err_len)
{
    char tmp[4200], dir[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    durable_dirname(path, dir, sizeof dir);
    unlink(tmp); /* a leftover from an interrupted switch */
    if (symlink(target, tmp) != 0) return errf(err, err_len, "symlink %s -> %s: %s", tmp, target, strerror(errno));
    if (rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return errf(err, err_len, "rename %s -> %s: %s", tmp, path, strerror(e));
    }
    return durable_fsync_path(dir, err, err_len);
}

int durable_read_small(const char *path, size_t max, char **out, size_t *out_len, char *err, size_t err_len)
{
    *out = NULL;
    *out_len = 0;
    int fd = safe_open(path, O_RDONLY, 0, err, err_len);
    if (fd < 0) return -1;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return errf(err, err_len, "%s: fstat: %s", path, strerror(errno));
    }
    if ((uint64_t)st.st_size > max) {
        close(fd);
        return errf(err, err_len, "%s: %lld bytes, at most %zu expected", path, (long long)st.st_size, max);
    }
    char *buf = malloc((size_t)st.st_size + 1);
    if (!buf) {
        close(fd);
        return errf(err, err_len, "%s: out of memory", path);
    }
    int rc = durable_pread_all(fd, buf, (size_t)st.st_size, 0, path, err, err_len);
    close(fd);
    if (rc) {
        free(buf);
        return -1;
    }
    buf[st.st_size] = '\0';
    *out = buf;
    *out_len = (size_t)st.st_size;
    return 0;
}
