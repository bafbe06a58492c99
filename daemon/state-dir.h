/* SPDX-License-Identifier: MIT */
#pragma once

/* A directory of lodevd's state that one store owns (the observation spool, the transfer
 * spool): opened durable and locked, with a reserve of disk space that only the writes that
 * give space back may use.
 *
 * Why a reserve: recording what was delivered (an acknowledgement, an attempt count) replaces
 * a small file, and a replacement needs a few free blocks before the old one is freed. On a
 * full file system that write would fail, the data it precedes could never be deleted, and the
 * space would never come back. The reserve is a file of preallocated blocks; a store releases
 * it just before such a write fails for lack of space, and takes no new data until it could
 * fill it again. */

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>

/* Creates path with mode 0700 when missing (parents 0755) and makes its entry durable, opens
 * it (O_DIRECTORY, close-on-exec) and locks it with flock(LOCK_EX|LOCK_NB); the lock lasts as
 * long as the returned descriptor. -EBUSY when another process holds the lock, -EPERM when
 * group or others may access the directory or another user owns it, -ENOTDIR, ... */
int state_dir_open(const char *path);

/* The reserve of a store's directory: the file STATE_DIR_RESERVE_FILE, of
 * STATE_DIR_RESERVE_SIZE preallocated bytes (room for several small files replaced
 * atomically), not counted in any budget. */
#define STATE_DIR_RESERVE_FILE "reserve"
#define STATE_DIR_RESERVE_SIZE (64U * 1024U)

typedef struct StateDirReserve {
        int dir_fd;   /* borrowed from the store */
        bool present; /* the file holds its blocks */
} StateDirReserve;

/* Makes sure the reserve holds its blocks: with fallocate(), or by writing bytes that no file
 * system compresses where it cannot. 0 when it does (also when it already did), -ENOSPC (or
 * another errno) when there is no room: then no partial file is left behind. A store takes
 * no new data while this fails. */
int state_dir_reserve_fill(StateDirReserve *r);

/* For a write that precedes deletions and just failed with -ENOSPC: gives the reserve's blocks
 * back to the file system at once. True when there was a reserve to give, so that the write is
 * worth trying again. */
bool state_dir_reserve_release(StateDirReserve *r);

/* The file system holding a directory, for messages that say which one is full. */
typedef struct StateDirSpace {
        uint64_t free_bytes;   /* what an unprivileged process may still use */
        char mount_point[512]; /* from /proc/self/mountinfo; "" when it cannot tell */
        char type[64];         /* "ext4", "tmpfs", ...; "" when it cannot tell */
} StateDirSpace;

int state_dir_space(int dir_fd, StateDirSpace *ret);

/* Errors that mean the file system has no room: ENOSPC, and EDQUOT from a disk quota, both
 * reported as -ENOSPC so that callers tell them apart from a budget of their own. */
static inline int state_dir_space_errno(int r) {
        return r == -EDQUOT ? -ENOSPC : r;
}
