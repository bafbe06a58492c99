/* SPDX-License-Identifier: MIT */
#pragma once

/* The durable observation spool: a directory of append-only segment files plus a small
 * "head" file with the acknowledgement state.
 *
 * A sequence number handed out by spool_append() and made durable by spool_sync() is a
 * promise of delivery: the record stays until spool_ack() says the broker has it, across
 * SIGTERM, SIGKILL and power loss. Delivery is at least once: after a crash, acks that were
 * not yet persisted by spool_flush() may bring a record back once more; after a clean
 * spool_free() none do. Sequence numbers start at 1 and only ever grow, also across
 * restarts and when the spool runs empty, so they can serve as observation ids.
 *
 * Not thread-safe; one Spool per directory (the directory is locked with flock()). */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "state-dir.h"

/* Largest payload of one record. Observations are at most 128 KiB on the wire. */
#define SPOOL_RECORD_MAX (1024U * 1024U)

/* At most this many losses are listed by spool_recovery_losses(). */
#define SPOOL_LOSSES_MAX 64U

typedef struct Spool Spool;

/* Bytes of a segment file that spool_open() found holding no whole, valid record. */
typedef struct SpoolLoss {
        uint64_t segment; /* first seq of the segment, its file is "%016" PRIx64 ".seg" */
        uint64_t offset;  /* where the damage starts in that file */
        uint64_t bytes;   /* how many bytes hold no valid record */
        /* The sequence numbers lost, first_seq..last_seq, told by the good records around the
         * damage (seqs are consecutive within a segment). At the end of a segment last_seq is
         * the one before the next segment's first (some of those may never have existed), or
         * 0 (unknown) at the end of the newest segment. Both are 0 when no record is missing:
         * the damaged bytes held none. */
        uint64_t first_seq;
        uint64_t last_seq;
        bool tail; /* the damage ran to the end of the file, which was cut there */
} SpoolLoss;

/* Opens the spool in dir (state_dir_open(): created with mode 0700 when missing, refused when
 * others may access it, locked), and recovers: acknowledged records are dropped, fully acknowledged
 * segments are deleted, and bytes that hold no whole, valid record are skipped: recovery goes
 * on at the next valid record, and damage that runs to the end of a segment (the torn tail of
 * a crash) is cut off the file. spool_recovery_losses() tells what was skipped. Sequence
 * numbers handed out later are above any that the damaged bytes may have held.
 * max_bytes bounds the size of the segment files.
 *
 * A full file system never stops acknowledged records from being deleted: the spool keeps a
 * preallocated "reserve" file (64 KiB, not counted in max_bytes) that it gives up when the head
 * file cannot otherwise be written, and takes no appends until it could fill it again. Opening
 * works on a full file system too. -EBUSY when another process has the spool open, -EPERM,
 * -ENOTDIR, -EACCES, ... */
int spool_open(const char *dir, uint64_t max_bytes, Spool **ret);

/* What spool_open() found damaged, in file order: *ret points to *ret_n entries owned by the
 * spool, valid until spool_free(). Returns the number of losses found, which is more than
 * *ret_n when there were over SPOOL_LOSSES_MAX. Damage in the middle of a segment stays in
 * the file, so it is found and reported again at each open until the segment is deleted. */
int spool_recovery_losses(const Spool *s, const SpoolLoss **ret, size_t *ret_n);

/* Persists the ack state (as spool_flush(), errors are lost: call spool_flush() first to see
 * them), closes everything. Records appended but never synced may or may not survive.
 * NULL-safe; returns NULL. */
Spool *spool_free(Spool *s);

/* Appends one record and returns its sequence number in ret_seq (may be NULL). The record is
 * written to the page cache only: it is neither durable nor visible to spool_next(),
 * spool_read() and spool_ack() before spool_sync(). -E2BIG when the record can never fit
 * (len > SPOOL_RECORD_MAX or larger than max_bytes), -EDQUOT when max_bytes is used up now:
 * wait for acknowledgements. -ENOSPC when the file system is full (a disk quota included),
 * also while the spool's reserve (see spool_open()) is missing. While the records of a failed
 * spool_sync() could not yet be removed from the files, it tries again and fails with that
 * error. Other errors come from write(). */
int spool_append(Spool *s, const void *data, size_t len, uint64_t *ret_seq);

/* Makes every appended record durable: one fdatasync() of the segment being written (plus
 * any segment finished since the last sync), and an fsync() of the directory only when a
 * segment file was created. On failure the records appended since the last successful sync
 * are discarded (their sequence numbers are not reused), because after a failed fsync the
 * kernel no longer says which pages reached the disk; the caller must fail the requests that
 * produced them. A failed fsync() of the directory since a segment was created fails the sync
 * the same way, even when it happened in spool_flush(). Discarded records are also cut off
 * the files, durably, so that no restart brings them back; while that does not succeed (the
 * disk keeps failing) every spool_sync() and spool_append() retries it and fails, and a crash
 * in that time may still bring them back. */
int spool_sync(Spool *s);

/* First synced, unacknowledged record with a sequence number above after_seq, in order;
 * after_seq = 0 starts from the oldest. -ENOENT when there is none. */
int spool_next(Spool *s, uint64_t after_seq, uint64_t *ret_seq);

/* A malloc'd copy of a synced, unacknowledged record, checked against its header and CRC
 * again. -EBADMSG only when the record on disk is not whole and valid (the medium changed it,
 * or the file was cut short): it can never be read. -ENOENT for an unknown or acknowledged
 * seq. Every other failure is passed on as it is (-EIO, -EMFILE, -ENOMEM, ...): it may pass,
 * try again later. */
int spool_read(Spool *s, uint64_t seq, void **ret_data, size_t *ret_len);

/* Marks a synced record delivered, in any order. A segment whose records are all
 * acknowledged is deleted at once (except the one being appended to), which is when space
 * comes back. The ack itself becomes durable with the next spool_flush(). -ENOENT for an
 * unknown, unsynced or already acknowledged seq. */
int spool_ack(Spool *s, uint64_t seq);

/* Persists the ack state now, atomically (write temp, fsync, rename, fsync directory), if
 * anything was acknowledged since the last flush. The daemon calls it from a timer and at
 * exit; it bounds how many delivered records a crash can bring back. */
int spool_flush(Spool *s);

/* Records appended and not yet acknowledged (synced or not). */
uint64_t spool_pending_count(const Spool *s);

/* Bytes of the segment files, the figure max_bytes bounds. Acknowledged records still count
 * until their segment is deleted; the small head file is not counted. */
uint64_t spool_used_bytes(const Spool *s);

/* The file system holding the spool: free bytes, mount point, type. */
int spool_space(const Spool *s, StateDirSpace *ret);

/* For tests: the calls spool.c makes durable with, so that a test can make them fail.
 * fdatasync() of segment files in spool_sync(), fsync() everywhere else. */
extern int (*spool_fdatasync_hook)(int fd);
extern int (*spool_fsync_hook)(int fd);
