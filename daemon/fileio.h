/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

/* write() until everything is written, retrying on EINTR; -errno. */
int write_full(int fd, const void *data, size_t len);

/* pread() of exactly len bytes at offset, retrying on EINTR and short reads. -ENODATA when
 * the file ends before len bytes (what was read is in buf), -EOVERFLOW when offset + len does
 * not fit an off_t, else -errno of pread(). */
int pread_full(int fd, void *buf, size_t len, uint64_t offset);

/* pwrite() of all len bytes at offset, retrying on EINTR and short writes; -errno (-EIO if
 * the kernel writes nothing without saying why). Part of the data may be written on failure. */
int pwrite_full(int fd, const void *buf, size_t len, uint64_t offset);

/* As pwrite_full() for an iovec array, written in as few pwritev() calls as the kernel takes.
 * iov is consumed: its entries are advanced over what was written. */
int pwritev_full(int fd, struct iovec *iov, size_t n_iov, uint64_t offset);

/* Writes data to path so that a crash at any point leaves either the old
 * content or the new one: temp file in the same directory, fsync, rename,
 * fsync of the directory. */
int write_file_atomic(const char *path, const void *data, size_t len, mode_t mode);

/* Reads a whole regular file of at most max_len bytes into a NUL-terminated buffer, to EOF
 * whatever its size says (pseudo-files in /proc and /sys say 0). -EFBIG when larger,
 * -EBADFD when not a regular file. */
int read_file(const char *path, size_t max_len, char **ret, size_t *ret_len);

/* fsyncs the directory that holds path (or path itself when it is a directory). */
int fsync_directory_of(const char *path);

/* fsyncs the directory that holds path, also when path is a directory: what makes a newly
 * created directory's own entry durable. */
int fsync_parent_directory(const char *path);

/* Creates a directory with mode 0700 when missing (parents 0755). Fails with
 * -EPERM when it exists and group or others may access it, or it is not
 * owned by the caller; -ENOTDIR when it is something else. */
int mkdir_private(const char *path);

/* -EPERM when group or others may access the file, -ENOENT when missing. */
int check_private_file(const char *path);

bool file_exists(const char *path);
