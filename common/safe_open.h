/* Opening files that a user, a config or a request names, without ever waiting on them.
 *
 * A plain open() of a FIFO blocks until a writer appears, and a device or a socket path
 * is not a file at all: a mistyped path in `flashbox update verify`, a config key or an
 * admin request would hang the caller (and, in the daemon, every later update). So every
 * such open goes through safe_open: O_NONBLOCK and O_CLOEXEC on the open itself, fstat,
 * anything but a regular file refused at once with a message naming the path and what it
 * is, then O_NONBLOCK cleared so reads and writes behave as usual. Where the caller writes
 * inside a directory it manages (the update slot store), O_NOFOLLOW in the flags refuses a
 * symlink in the last component, so a planted link can not redirect a write elsewhere.
 *
 * Shared by engine/, update/, firmware/ and tools/; depends on libc only. */
#ifndef FLASHBOX_COMMON_SAFE_OPEN_H
#define FLASHBOX_COMMON_SAFE_OPEN_H

#include <stddef.h>
#include <sys/types.h>

/* open(2) flags as usual (O_RDONLY, O_WRONLY | O_CREAT | O_TRUNC, O_DIRECT, O_NOFOLLOW...);
 * mode only with O_CREAT. Returns the descriptor of a regular file, or -1 with a message in
 * err ("PATH: is a FIFO (named pipe), not a regular file") and errno set: open's errno
 * when the open failed (ENOENT stays ENOENT), EINVAL when the path is not a regular file. */
int safe_open(const char *path, int flags, mode_t mode, char *err, size_t err_len);

/* The same relative to a directory descriptor (openat). */
int safe_openat(int dirfd, const char *path, int flags, mode_t mode, char *err, size_t err_len);

/* What a file type is, in words: "a FIFO (named pipe)", "a directory", ... */
const char *safe_file_kind(mode_t st_mode);

#endif
