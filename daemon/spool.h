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

#include <stddef.h>
#include <stdint.h>

/* Largest payload of one record. Observations are at most 128 KiB on the wire. */
#define SPOOL_RECORD_MAX (1024U * 1024U)

typedef struct Spool Spool;

/* Opens the spool in dir, creating the directory with mode 0700 if it is missing (its
 * parent must exist), and recovers: a torn or corrupt record at the end of a segment is cut
 * off, acknowledged records are dropped, fully acknowledged segments are deleted.
 * max_bytes bounds the size of the segment files. -EBUSY when another process has the spool
 * open, -ENOTDIR, -EACCES, ... */
int spool_open(const char *dir, uint64_t max_bytes, Spool **ret);

/* Persists the ack state (as spool_flush(), errors are lost: call spool_flush() first to see
 * them), closes everything. Records appended but never synced may or may not survive.
 * NULL-safe; returns NULL. */
Spool *spool_free(Spool *s);

/* Appends one record and returns its sequence number in ret_seq (may be NULL). The record is
 * written to the page cache only: it is neither durable nor visible to spool_next(),
 * spool_read() and spool_ack() before spool_sync(). -E2BIG when the record can never fit
 * (len > SPOOL_RECORD_MAX or larger than max_bytes), -ENOSPC when it does not fit now: wait
 * for acknowledgements. Other errors come from write(). */
int spool_append(Spool *s, const void *data, size_t len, uint64_t *ret_seq);

/* Makes every appended record durable: one fdatasync() of the segment being written (plus
 * any segment finished since the last sync), and an fsync() of the directory only when a
 * segment file was created. On failure the records appended since the last successful sync
 * are discarded (their sequence numbers are not reused), because after a failed fsync the
 * kernel no longer says which pages reached the disk; the caller must fail the requests that
 * produced them. */
int spool_sync(Spool *s);

/* First synced, unacknowledged record with a sequence number above after_seq, in order;
 * after_seq = 0 starts from the oldest. -ENOENT when there is none. */
int spool_next(Spool *s, uint64_t after_seq, uint64_t *ret_seq);

/* A malloc'd copy of a synced, unacknowledged record, checked against its CRC again
 * (-EBADMSG if the medium changed it). -ENOENT for an unknown or acknowledged seq. */
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
