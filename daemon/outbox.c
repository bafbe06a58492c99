/* SPDX-License-Identifier: MIT */
#include "outbox.h"
#include "util.h"

int outbox_next(const OutboxSource *src, void *userdata, uint64_t *cursor, OutboxSkipped skipped,
                void *skipped_userdata, uint64_t *ret_seq, void **ret_data, size_t *ret_len) {
        uint64_t after;
        int r;

        if (!src || !src->next || !src->read || !src->ack || !cursor || !ret_seq || !ret_data ||
            !ret_len)
                return -EINVAL;

        after = *cursor;
        for (;;) {
                _cleanup_free_ void *data = NULL;
                uint64_t seq;
                size_t len = 0;

                r = src->next(userdata, after, &seq);
                if (r == -ENOENT)
                        return 0;
                if (r < 0)
                        return r;
                /* A source that does not move forward would have us spin forever. */
                if (seq <= after)
                        return -EPROTO;

                r = src->read(userdata, seq, &data, &len);
                if (r == -EBADMSG) {
                        /* The medium changed it: no retry can help, and leaving it would stop
                         * every record behind it. The ack comes first, so that a record is only
                         * ever skipped for good. */
                        r = src->ack(userdata, seq);
                        if (r < 0)
                                return r;
                        *cursor = after = seq;
                        if (skipped)
                                skipped(seq, skipped_userdata);
                        continue;
                }
                if (r < 0)
                        return r;

                *cursor = seq;
                *ret_seq = seq;
                *ret_data = TAKE_PTR(data);
                *ret_len = len;
                return 1;
        }
}
