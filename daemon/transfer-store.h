/* SPDX-License-Identifier: MIT */
#pragma once

/* The durable spool of files waiting to be uploaded (SPEC sections 2 and 4, UploadFile).
 *
 * A directory (mode 0700, locked with flock()) holds per transfer:
 *   <id>.data   a private copy of the caller's bytes (0600)
 *   <id>.json   its metadata, written atomically; its presence is the commit record
 * A transfer exists once transfer_copy_commit() has fsynced the data file, written the
 * metadata (temp, fsync, rename) and fsynced the directory; from then on it survives
 * SIGKILL and power loss until transfer_store_remove(). A data file without metadata is a
 * copy that never finished (the caller never got an id) and is deleted at open.
 *
 * Ids are random UUIDs; the file names callers give are only ever stored as metadata, never
 * used as paths.
 *
 * Upload links are never stored: presigned URLs expire, so after a restart every transfer is
 * queued again and asks for a fresh link. What is persisted across restarts besides the file
 * is the number of upload attempts started, which lets the uploader give up on a transfer
 * that keeps failing, also one that takes lodevd down with it.
 *
 * Not thread-safe. Errors are negative errno; nothing here logs. */

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "state-dir.h"

/* One presigned S3 PUT carries at most 5 GiB. */
#define TRANSFER_SIZE_MAX (UINT64_C(5) * 1024 * 1024 * 1024)
#define TRANSFER_FILE_NAME_MAX 255U
#define TRANSFER_CONTENT_TYPE_MAX 255U
/* A UUID in text form. */
#define TRANSFER_ID_LEN 36U
/* What each transfer costs the budget besides its bytes: its metadata file and the inodes.
 * It also bounds the number of transfers, empty files included. */
#define TRANSFER_OVERHEAD_BYTES 4096U
/* The most read from a file of /proc, /sys and the like, whose size stat() does not tell. */
#define TRANSFER_PSEUDO_FILE_MAX (UINT64_C(16) * 1024 * 1024)
/* The owner of a transfer spooled before owners were recorded: only root may cancel it. */
#define TRANSFER_UID_UNKNOWN ((uid_t) -1)

typedef enum TransferState {
        TRANSFER_QUEUED,    /* waiting for a link and a PUT */
        TRANSFER_UPLOADING, /* an attempt is running (in memory only) */
        _TRANSFER_STATE_MAX,
        _TRANSFER_STATE_INVALID = -EINVAL,
} TransferState;

const char *transfer_state_to_string(TransferState s);
TransferState transfer_state_from_string(const char *s);

/* A committed transfer. Owned by the store: valid until transfer_store_remove() of its id or
 * transfer_store_free(); change it only through the store. */
typedef struct Transfer {
        char id[TRANSFER_ID_LEN + 1];
        uint64_t seq;          /* creation order, grows across restarts (the clock may not) */
        char *file_name;       /* passes transfer_file_name_check() */
        char *content_type;    /* passes transfer_content_type_check() */
        uint64_t size;         /* bytes of the data file */
        uint64_t created_usec; /* CLOCK_REALTIME at commit, for display only */
        unsigned attempts;     /* upload attempts started, durable */
        uid_t uid;             /* who spooled it (may cancel it), TRANSFER_UID_UNKNOWN */
        TransferState state;   /* not persisted: TRANSFER_QUEUED after open */
} Transfer;

/* Something transfer_store_open() found and cleaned up or set aside. */
typedef struct TransferStoreIssue {
        char *file;    /* name of the file in the spool directory */
        char *message; /* what was wrong and what was done about it */
        bool lost;     /* a committed transfer was deleted (warn); false: routine clean-up */
} TransferStoreIssue;

typedef struct TransferStore TransferStore;
typedef struct TransferCopy TransferCopy;

/* Opens the spool in dir (state_dir_open(): created with mode 0700 when missing, locked) and
 * recovers: copies that never committed and temp files are deleted; a transfer proven not to
 * hold together (metadata that decodes to something invalid, names another id or is larger
 * than any written here; a data file missing, not regular or of another size) is deleted and
 * reported in transfer_store_issues(); unknown files are left alone and reported. Any other
 * error reading a transfer (-EIO, -EMFILE, -EACCES, ...) proves nothing: the open fails with
 * it, nothing is deleted, and *ret_failed_file (may be NULL; free it) names the file it could
 * not read, relative to dir ("." for the directory itself). max_bytes bounds the bytes of all
 * transfers, committed and being copied, plus TRANSFER_OVERHEAD_BYTES each; transfers
 * recovered at open are kept even if they exceed it. The store keeps a 64 KiB "reserve" file
 * for the writes an upload needs on a full disk (see state-dir.h). -EBUSY when another
 * process has the spool open, -EPERM when dir is accessible by others or owned by another
 * user. */
int transfer_store_open(const char *dir, uint64_t max_bytes, TransferStore **ret,
                        char **ret_failed_file);

/* Closes the spool. Copies still in progress are abandoned (their files removed) and
 * detached: they fail with -ESTALE and must still be freed. NULL-safe; returns NULL. */
TransferStore *transfer_store_free(TransferStore *s);

/* What open found; the array is owned by the store. Returns the number of entries. */
size_t transfer_store_issues(const TransferStore *s, const TransferStoreIssue **ret);

/* Committed transfers. */
size_t transfer_store_count(const TransferStore *s);
/* Bytes charged against max_bytes: committed transfers and copies in progress, each with
 * TRANSFER_OVERHEAD_BYTES. */
uint64_t transfer_store_used_bytes(const TransferStore *s);
uint64_t transfer_store_max_bytes(const TransferStore *s);
/* The file system holding the spool, for messages about a full disk. */
int transfer_store_space(const TransferStore *s, StateDirSpace *ret);
const char *transfer_store_dir(const TransferStore *s);

/* The i-th committed transfer in creation order, NULL past the end. Removing a transfer
 * shifts those after it. */
const Transfer *transfer_store_nth(const TransferStore *s, size_t i);
/* NULL when there is no such transfer (also for a malformed id). */
const Transfer *transfer_store_find(const TransferStore *s, const char *id);

/* Deletes the transfer's metadata and data and fsyncs the directory; the space counts as
 * free at once (a reader that still has the data open keeps its bytes until it closes).
 * -ENOENT for an unknown id. */
int transfer_store_remove(TransferStore *s, const char *id);

/* An upload attempt starts: attempts + 1, made durable before returning, so a crash during
 * the upload still counts; state becomes TRANSFER_UPLOADING. On a full disk the reserve is
 * given up for that write; when even that does not do, the attempt is counted in memory only
 * and 1 is returned: the upload goes ahead, since it is what frees space. On another failure
 * nothing changes. */
int transfer_store_mark_uploading(TransferStore *s, const char *id);
/* The attempt ended without success; the transfer waits again (state only, nothing is
 * written). */
int transfer_store_mark_queued(TransferStore *s, const char *id);

/* Opens the data file read-only (O_CLOEXEC) for the PUT and returns the fd. -EBADMSG when
 * its size is no longer the recorded size. */
int transfer_open_data(TransferStore *s, const char *id);

/* Checks a caller's file name: non-empty, at most TRANSFER_FILE_NAME_MAX bytes, valid UTF-8,
 * no '/', no control character, not "." or "..". -EINVAL with *ret_reason (may be NULL) set
 * to a static text that names the problem, e.g. "file name contains '/'". */
int transfer_file_name_check(const char *name, const char **ret_reason);

/* Checks a content type, which becomes an HTTP header and part of the signed URL: at most
 * TRANSFER_CONTENT_TYPE_MAX bytes of printable ASCII, "type/subtype" made of RFC 9110
 * tokens, optionally followed by parameters after ';'. -EINVAL with a static reason. */
int transfer_content_type_check(const char *type, const char **ret_reason);

/* A UUID in lowercase text form, as this store hands out. */
bool transfer_id_is_valid(const char *id);

/* Starts copying the caller's open file into the spool for the user uid. src_fd is duplicated
 * (the caller may close its own right away, and its file offset is never used or moved); the
 * content is read with explicit offsets, so the caller may also unlink the file. Reserves the
 * size seen now in the budget and creates the data file, preallocated where the file system
 * allows. A file of /proc, /sys, debugfs, tracefs, securityfs, configfs, cgroupfs or efivarfs,
 * whose size stat() does not tell, is read to its end instead, at most
 * TRANSFER_PSEUDO_FILE_MAX bytes (or the room left in the budget).
 * Errors, each with a static *ret_reason (may be NULL) fit for the caller of UploadFile:
 *   -EINVAL  invalid file name or content type; not a regular file ("(directory)",
 *            "(FIFO)", "(socket)", "(character device)", ...)
 *   -EBADF   fd opened with O_PATH or not for reading
 *   -EFBIG   larger than TRANSFER_SIZE_MAX: no upload can carry it
 *   -E2BIG   larger than max_bytes: it can never fit in the queue
 *   -EDQUOT  the queue (max_bytes) is full now
 *   -ENOSPC  the file system is full: not enough free for the file, or for the reserve
 * and other errors from the file system (reason NULL). */
int transfer_copy_begin(TransferStore *s, int src_fd, const char *file_name,
                        const char *content_type, uid_t uid, TransferCopy **ret,
                        const char **ret_reason);

/* Copies at most max_chunk (> 0) more bytes, with copy_file_range() where the kernel can
 * (pread()/pwrite() otherwise). Returns 1 while bytes remain, 0 once all are copied. Bytes
 * the source gained after transfer_copy_begin() are not copied; a source that lost bytes
 * fails with -ENODATA. A pseudo-file fails with -EFBIG past its limit and with -EAGAIN when
 * it has nothing to read now (-ESPIPE: a stream such as /proc/kmsg, which is never waited
 * for). A
 * full disk is -ENOSPC. After an error the copy can only be freed; see
 * transfer_copy_error_reason(). */
int transfer_copy_step(TransferCopy *c, uint64_t max_chunk);

/* Makes the copy a transfer: fsync of the data, metadata written atomically, fsync of the
 * directory, in this order; only then does the transfer exist, and *ret (may be NULL) points
 * at it. -EBUSY when bytes remain to be copied. On failure nothing was committed. */
int transfer_copy_commit(TransferCopy *c, const Transfer **ret);

/* Frees the copy; unless committed, its files are removed and its reservation released.
 * NULL-safe; returns NULL. */
TransferCopy *transfer_copy_free(TransferCopy *c);

/* A static text explaining the last error of step or commit, NULL when there is none
 * beyond the errno. */
const char *transfer_copy_error_reason(const TransferCopy *c);

/* The id the transfer will have once committed (for logs). */
const char *transfer_copy_id(const TransferCopy *c);
/* The size of the file; for a pseudo-file, 0 until it was read to its end. */
uint64_t transfer_copy_size(const TransferCopy *c);
uint64_t transfer_copy_done(const TransferCopy *c);
