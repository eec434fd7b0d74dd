/* safe_open (see safe_open.h): non-blocking open, fstat, refuse what is not a regular file. */
#include "common/safe_open.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

const char *safe_file_kind(mode_t m)
{
    if (S_ISREG(m)) return "a regular file";
    if (S_ISDIR(m)) return "a directory";
    if (S_ISFIFO(m)) return "a FIFO (named pipe)";
    if (S_ISCHR(m)) return "a character device";
    if (S_ISBLK(m)) return "a block device";
    if (S_ISSOCK(m)) return "a socket";
    if (S_ISLNK(m)) return "a symbolic link";
    return "not a file";
}

static int refuse(const char *path, mode_t m, char *err, size_t err_len)
{
    if (err && err_len) {
        if (S_ISLNK(m))
            snprintf(err, err_len, "%s: is a symbolic link; refused here (it could point outside the managed directory)",
                     path);
        else
            snprintf(err, err_len, "%s: is %s, not a regular file", path, safe_file_kind(m));
    }
    errno = EINVAL;
    return -1;
}

int safe_openat(int dirfd, const char *path, int flags, mode_t mode, char *err, size_t err_len)
{
    /* O_NONBLOCK: a FIFO opens at once (read side) or fails with ENXIO (write side, no
     * reader) instead of waiting for the other end; O_NOCTTY: a terminal never becomes ours. */
    int fd = openat(dirfd, path, flags | O_NONBLOCK | O_CLOEXEC | O_NOCTTY, mode);
    if (fd < 0) {
        int e = errno;
        struct stat st;
        /* ENXIO (socket, FIFO without reader), EISDIR, ELOOP (O_NOFOLLOW met a link): say
         * what the path is rather than the bare errno. */
        if ((e == ENXIO || e == EISDIR || e == ELOOP || e == ENODEV || e == EOPNOTSUPP) &&
            fstatat(dirfd, path, &st, AT_SYMLINK_NOFOLLOW) == 0 && !S_ISREG(st.st_mode) &&
            (!S_ISLNK(st.st_mode) || (flags & O_NOFOLLOW)))
            return refuse(path, st.st_mode, err, err_len);
        if (err && err_len) snprintf(err, err_len, "%s: %s", path, strerror(e));
        errno = e;
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        if (err && err_len) snprintf(err, err_len, "%s: fstat: %s", path, strerror(e));
        close(fd);
        errno = e;
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return refuse(path, st.st_mode, err, err_len);
    }
    /* A regular file never blocks on open; reads and writes keep their usual semantics. */
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) != 0) {
        int e = errno;
        if (err && err_len) snprintf(err, err_len, "%s: fcntl: %s", path, strerror(e));
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

int safe_open(const char *path, int flags, mode_t mode, char *err, size_t err_len)
{
    return safe_openat(AT_FDCWD, path, flags, mode, err, err_len);
}
