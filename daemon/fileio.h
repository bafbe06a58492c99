/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* write() until everything is written, retrying on EINTR; -errno. */
int write_full(int fd, const void *data, size_t len);

/* Writes data to path so that a crash at any point leaves either the old
 * content or the new one: temp file in the same directory, fsync, rename,
 * fsync of the directory. */
int write_file_atomic(const char *path, const void *data, size_t len, mode_t mode);

/* Reads a whole file of at most max_len bytes into a NUL-terminated buffer.
 * -EFBIG when larger. */
int read_file(const char *path, size_t max_len, char **ret, size_t *ret_len);

/* fsyncs the directory that holds path (or path itself when it is a directory). */
int fsync_directory_of(const char *path);

/* Creates a directory with mode 0700 when missing (parents 0755). Fails with
 * -EPERM when it exists and group or others may access it, or it is not
 * owned by the caller; -ENOTDIR when it is something else. */
int mkdir_private(const char *path);

/* -EPERM when group or others may access the file, -ENOENT when missing. */
int check_private_file(const char *path);

bool file_exists(const char *path);
