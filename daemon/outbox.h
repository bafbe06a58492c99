/* SPDX-License-Identifier: MIT */
#pragma once

/* Picks the next record to send from a durable queue (the spool), skipping records that can
 * never be sent and stopping at any other error, so that a transient failure (-EIO, -EMFILE,
 * -ENOMEM) never costs a record. No I/O of its own. */

#include <stddef.h>
#include <stdint.h>

typedef struct OutboxSource {
        /* First record after after_seq: 0 and *ret_seq, -ENOENT when none, other -errno. */
        int (*next)(void *userdata, uint64_t after_seq, uint64_t *ret_seq);
        /* A malloc'd copy of the record; -EBADMSG when it fails its checksum. */
        int (*read)(void *userdata, uint64_t seq, void **ret_data, size_t *ret_len);
        /* Marks a record done so it is never offered again. */
        int (*ack)(void *userdata, uint64_t seq);
} OutboxSource;

typedef void (*OutboxSkipped)(uint64_t seq, void *userdata);

/* Finds the next record after *cursor that can be sent. A record that fails its checksum
 * (-EBADMSG from read) can never be sent: it is acknowledged, *cursor moves past it,
 * skipped() (may be NULL) is told its seq, and the search goes on. Returns 1 with the record
 * (*ret_seq; *ret_data owned by the caller; *ret_len) and *cursor set to its seq; 0 when there
 * is no record; any other error of next(), read() or ack() is returned as it is, with *cursor
 * left after the last skipped record only: the caller stops and retries later. Nothing is
 * ever acknowledged for a transient error. */
int outbox_next(const OutboxSource *src, void *userdata, uint64_t *cursor, OutboxSkipped skipped,
                void *skipped_userdata, uint64_t *ret_seq, void **ret_data, size_t *ret_len);
