/* Durable file operations for the slot store: full reads and writes that retry short I/O,
 * fsync of files and of the directories that name them, atomic replacement of a small
 * file or a symlink (write a temp name, fsync, rename, fsync the directory). A crash at
 * any instant leaves either the old or the new content under the final name. */
#ifndef FLASHBOX_UPDATE_DURABLE_H
#define FLASHBOX_UPDATE_DURABLE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

int durable_write_all(int fd, const void *buf, size_t len, const char *what, char *err, size_t err_len);
int durable_pwrite_all(int fd, const void *buf, size_t len, uint64_t off, const char *what, char *err,
                       size_t err_len);
/* Reads exactly len bytes at off; a short file is an error naming what and the offset. */
int durable_pread_all(int fd, void *buf, size_t len, uint64_t off, const char *what, char *err, size_t err_len);
int durable_fsync_path(const char *path, char *err, size_t err_len);
/* Replaces path with data: path.tmp, fsync, rename, fsync of the parent directory. */
int durable_replace_file(const char *path, const void *data, size_t len, mode_t mode, char *err, size_t err_len);
/* Points the symlink at path to target atomically (path.tmp symlink, rename, fsync dir). */
int durable_replace_symlink(const char *path, const char *target, char *err, size_t err_len);
/* Reads a whole small file (at most max bytes) into a malloc'd, NUL-terminated buffer. */
int durable_read_small(const char *path, size_t max, char **out, size_t *out_len, char *err, size_t err_len);
/* The directory part of path ("." when none) in buf. */
void durable_dirname(const char *path, char *buf, size_t buf_len);

#endif
