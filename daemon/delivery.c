/* SPDX-License-Identifier: MIT */
#include <inttypes.h>

#include "backoff.h"
#include "delivery.h"
#include "event-util.h"
#include "log.h"
#include "outbox.h"
#include "spool.h"
#include "topic.h"
#include "util.h"

/* Calls whose confirmation waits for one fsync; past this a batch is committed at once. */
#define COMMIT_BATCH_MAX 1024
/* Under a steady load the loop is never idle: commit at the latest this long after the
 * first call of a batch arrived. Long enough that a burst read in one go shares one sync
 * (flash syncs take milliseconds), short next to any caller's timeout. */
#define COMMIT_DELAY_USEC 25000
#define COMMIT_ACCURACY_USEC 1000
/* Acknowledgements are persisted within this time, or at once past a count: what a crash
 * can send twice stays small under load. */
#define ACK_FLUSH_USEC (UINT64_C(250) * 1000)
#define ACK_FLUSH_COUNT 256
#define QUEUED_EMIT_USEC (UINT64_C(250) * 1000)
/* A spool that cannot be read right now (EIO, EMFILE, ENOMEM) is tried again. */
#define READ_RETRY_MIN_USEC (UINT64_C(1) * 1000000)
#define READ_RETRY_MAX_USEC (UINT64_C(60) * 1000000)

/* Payloads appended by this process and not yet published, oldest first: the publish after
 * the commit then needs no read back from the spool. Bounded; anything not here is read
 * from the spool. */
#define RECENT_MAX 4096
#define RECENT_BYTES_MAX (4U * 1024U * 1024U)

typedef struct Recent {
        uint64_t seq;
        char *data;
        size_t len;
} Recent;

typedef struct PendingSubmit {
        uint64_t seq;
        DeliverySubmitted done;
        void *userdata;
} PendingSubmit;

struct Delivery {
        sd_event *event;
        char *dir;
        uint64_t max_bytes;
        DeliveryCallbacks cb;
        void *userdata;

        Spool *spool;
        char *topic;
        Channel *channel; /* NULL while detached */
        uint64_t cursor;  /* last record handed to the connection */
        unsigned unflushed_acks;
        int flush_error; /* of the last spool_flush() */
        PendingSubmit *pending; /* confirmations waiting for the next fsync */
        size_t n_pending, n_pending_alloc;
        Recent recent[RECENT_MAX]; /* a ring: recent_head, n_recent */
        size_t recent_head, n_recent, recent_bytes;
        Backoff read_backoff;
        Backoff open_backoff;
        sd_event_source *open_timer; /* opens a spool that could not be opened */
        sd_event_source *commit_event;
        sd_event_source *commit_timer;
        sd_event_source *ack_timer;
        sd_event_source *queued_timer;
        sd_event_source *retry_timer;
};

static int on_queued_emit(sd_event_source *s, uint64_t usec, void *userdata) {
        Delivery *d = userdata;

        if (d->cb.queued_changed)
                d->cb.queued_changed(d->userdata);
        return 0;
}

/* PropertiesChanged for QueuedObservations at most four times a second: a draining backlog
 * would otherwise send one per observation. */
static void queued_changed(Delivery *d) {
        int r = event_arm_timer(d->event, &d->queued_timer, QUEUED_EMIT_USEC, 0, true,
                                on_queued_emit, d, "queued-emit");

        if (r < 0)
                log_debug_errno(r, "Failed to arm the QueuedObservations timer, ignoring: %m");
}

static int flush_acks(Delivery *d) {
        int r;

        d->unflushed_acks = 0;
        r = spool_flush(d->spool);
        /* Once per spell of failures, not once per flush: the next flush retries. */
        if (r < 0 && d->flush_error != r)
                log_warning_errno(r, "Failed to persist delivery state in %s, will retry: %m",
                                  d->dir);
        else if (r >= 0 && d->flush_error < 0)
                log_info("Delivery state in %s persisted again.", d->dir);
        d->flush_error = MIN(r, 0);
        return r;
}

static int on_ack_flush(sd_event_source *s, uint64_t usec, void *userdata) {
        (void) flush_acks(userdata);
        return 0;
}

static void recent_drop_head(Delivery *d) {
        Recent *r = &d->recent[d->recent_head];

        d->recent_bytes -= r->len;
        r->data = (free(r->data), NULL);
        d->recent_head = (d->recent_head + 1) % RECENT_MAX;
        d->n_recent--;
}

static void recent_clear(Delivery *d) {
        while (d->n_recent > 0)
                recent_drop_head(d);
}

/* Takes ownership of data when it returns true. */
static bool recent_add(Delivery *d, uint64_t seq, char *data, size_t len) {
        if (d->n_recent >= RECENT_MAX || d->recent_bytes + len > RECENT_BYTES_MAX)
                return false;
        d->recent[(d->recent_head + d->n_recent) % RECENT_MAX] =
                (Recent) { .seq = seq, .data = data, .len = len };
        d->n_recent++;
        d->recent_bytes += len;
        return true;
}

/* The cached payload of seq, if it is there; older entries are dropped on the way, since
 * delivery goes in order. The caller owns the result. */
static char *recent_take(Delivery *d, uint64_t seq, size_t *ret_len) {
        while (d->n_recent > 0 && d->recent[d->recent_head].seq < seq)
                recent_drop_head(d);
        if (d->n_recent > 0 && d->recent[d->recent_head].seq == seq) {
                Recent *r = &d->recent[d->recent_head];
                char *data = TAKE_PTR(r->data);

                *ret_len = r->len;
                r->len = 0;
                recent_drop_head(d);
                return data;
        }
        return NULL;
}

static int source_next(void *userdata, uint64_t after_seq, uint64_t *ret_seq) {
        Delivery *d = userdata;

        return spool_next(d->spool, after_seq, ret_seq);
}

static int source_read(void *userdata, uint64_t seq, void **ret_data, size_t *ret_len) {
        Delivery *d = userdata;
        char *data = recent_take(d, seq, ret_len);

        if (data) {
                *ret_data = data;
                return 0;
        }
        return spool_read(d->spool, seq, ret_data, ret_len);
}

static int source_ack(void *userdata, uint64_t seq) {
        Delivery *d = userdata;

        return spool_ack(d->spool, seq);
}

static const OutboxSource spool_source = {
        .next = source_next,
        .read = source_read,
        .ack = source_ack,
};

static void on_skipped(uint64_t seq, void *userdata) {
        Delivery *d = userdata;
        char id[24];

        /* The medium changed the record: it can never be sent. */
        snprintf(id, sizeof(id), "%" PRIu64, seq);
        log_event(LOG_ERR, LODEV_MESSAGE_OBSERVATION_LOST, NULL, NULL,
                  "Observation %s in %s fails its checksum and can never be sent; dropping it.",
                  id, d->dir);
        queued_changed(d);
}

static int on_retry(sd_event_source *s, uint64_t usec, void *userdata) {
        Delivery *d = userdata;

        if (d->channel)
                channel_wake(d->channel);
        return 0;
}

static int channel_next(Channel *ch, ChannelMessage *ret, void *userdata) {
        Delivery *d = userdata;
        _cleanup_free_ void *data = NULL;
        _cleanup_free_ char *topic = NULL;
        uint64_t seq, delay;
        size_t len;
        int r;

        r = outbox_next(&spool_source, d, &d->cursor, on_skipped, d, &seq, &data, &len);
        if (r < 0) {
                /* Nothing is dropped for an error that may pass: stop, and try again. */
                delay = backoff_next(&d->read_backoff, random_u64());
                log_error_errno(r, "Failed to read the observation spool %s, retrying in %.1f s: %m",
                                d->dir, (double) delay / 1e6);
                r = event_arm_timer(d->event, &d->retry_timer, delay, 0, false, on_retry, d,
                                    "spool-retry");
                if (r < 0)
                        log_error_errno(r, "Failed to arm the spool retry timer: %m");
                return 0;
        }
        backoff_reset(&d->read_backoff);
        if (r == 0)
                return 0;
        topic = strdup(d->topic);
        if (!topic) {
                d->cursor = seq - 1; /* offered again on the next wake */
                return -ENOMEM;
        }
        *ret = (ChannelMessage) {
                .topic = TAKE_PTR(topic),
                .data = TAKE_PTR(data),
                .len = len,
                .cookie = seq,
        };
        return 1;
}

static void channel_acked(Channel *ch, uint64_t seq, void *userdata) {
        Delivery *d = userdata;
        int r;

        r = spool_ack(d->spool, seq);
        if (r < 0 && r != -ENOENT)
                log_warning_errno(r, "Failed to mark observation %" PRIu64 " delivered: %m", seq);
        if (d->cb.delivered)
                d->cb.delivered(seq, d->userdata);
        if (++d->unflushed_acks >= ACK_FLUSH_COUNT)
                (void) flush_acks(d);
        else {
                r = event_arm_timer(d->event, &d->ack_timer, ACK_FLUSH_USEC, 0, true,
                                    on_ack_flush, d, "ack-flush");
                if (r < 0)
                        log_warning_errno(r, "Failed to arm the ack flush timer, flushing at "
                                             "exit: %m");
        }
        queued_changed(d);
}

static void channel_failed(Channel *ch, uint64_t seq, int error, void *userdata) {
        Delivery *d = userdata;
        char id[24];

        /* Validated and bounded at submission: only a changed medium gets here. */
        snprintf(id, sizeof(id), "%" PRIu64, seq);
        log_event(LOG_ERR, LODEV_MESSAGE_OBSERVATION_LOST, NULL, NULL,
                  "Observation %s can never be published (%s); dropping it.", id,
                  strerror(-error));
        (void) spool_ack(d->spool, seq);
        queued_changed(d);
}

static void on_rejected(const char *topic, const void *data, size_t len, void *userdata) {
        Delivery *d = userdata;
        PlatformError e = {};

        if (message_decode_error(data, len, &e) < 0) {
                log_warning("FHIRIngest rejected an observation with a malformed answer, "
                            "ignoring.");
                return;
        }
        log_warning("FHIRIngest rejected an observation: %d %s: %s", e.status_code, e.error_code,
                    strempty(e.error_message));
        if (d->cb.rejected)
                d->cb.rejected(e.error_code, strempty(e.error_message), d->userdata);
        platform_error_done(&e);
}

static const ChannelOps channel_ops = {
        .next = channel_next,
        .acked = channel_acked,
        .failed = channel_failed,
};

int delivery_attach(Delivery *d, Connection *c) {
        _cleanup_free_ char *rejected = NULL;
        int r;

        /* Not FHIRIngest/accepted: one answer per observation would double the messages
         * counted against the connection's 100/s quota, and the PUBACK already says the
         * platform has it. */
        r = topic_build(TOPIC_FHIR_REJECTED, connection_thing_name(c), NULL, NULL, &rejected);
        if (r >= 0)
                r = connection_subscribe(c, rejected, on_rejected, d);
        if (r >= 0)
                r = connection_add_channel(c, CHANNEL_BULK, &channel_ops, d, &d->channel);
        if (r < 0)
                return r;
        channel_wake(d->channel);
        return 0;
}

void delivery_detach(Delivery *d) {
        /* The client goes with its queue: everything unacknowledged is read back from the
         * spool and sent again. */
        d->channel = NULL;
        d->cursor = 0;
        recent_clear(d);
        event_disarm(d->retry_timer);
}

/* Confirms every waiting submission after one fsync. */
static void commit(Delivery *d) {
        size_t n = d->n_pending;
        int r;

        if (n == 0)
                return;
        event_disarm(d->commit_event);
        event_disarm(d->commit_timer);
        r = spool_sync(d->spool);
        if (r < 0) {
                log_error_errno(r, "Failed to sync the observation spool %s: %m", d->dir);
                /* The spool dropped the unsynced records: so must the cache. */
                recent_clear(d);
        }
        /* A callback may submit again: confirm from a snapshot. */
        d->n_pending = 0;
        for (size_t i = 0; i < n; i++)
                d->pending[i].done(r < 0 ? 0 : d->pending[i].seq, r < 0 ? r : 0,
                                   d->pending[i].userdata);
        queued_changed(d);
        if (r >= 0 && d->channel)
                channel_wake(d->channel);
}

static int on_commit(sd_event_source *s, void *userdata) {
        commit(userdata);
        return 0;
}

static int on_commit_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        commit(userdata);
        return 0;
}

int delivery_submit(Delivery *d, const Observation *o, DeliverySubmitted done, void *userdata) {
        _cleanup_free_ char *json = NULL;
        uint64_t seq;
        size_t len;
        int r;

        if (!d->spool)
                return -EAGAIN; /* not opened yet: being retried */
        r = message_encode_observation(o, &json);
        if (r < 0)
                return r;
        if (d->n_pending >= d->n_pending_alloc) {
                size_t n = MAX(d->n_pending_alloc * 2, (size_t) 64);
                PendingSubmit *p = realloc(d->pending, n * sizeof(*p));

                if (!p)
                        return -ENOMEM;
                d->pending = p;
                d->n_pending_alloc = n;
        }
        len = strlen(json);
        r = spool_append(d->spool, json, len, &seq);
        if (r < 0)
                return r;
        d->pending[d->n_pending++] = (PendingSubmit) { .seq = seq, .done = done, .userdata = userdata };
        if (recent_add(d, seq, json, len))
                TAKE_PTR(json);

        /* The commit source has a lower priority than the bus: it runs once the calls
         * already read are all appended, and one fsync answers them. */
        if (d->n_pending >= COMMIT_BATCH_MAX)
                commit(d);
        else {
                (void) sd_event_source_set_enabled(d->commit_event, SD_EVENT_ONESHOT);
                /* From now, not from when this iteration began: the dispatch that brought
                 * the call may have been long (a new caller's UID is asked from dbus-daemon,
                 * which reads every call queued behind), and a stale start would commit a
                 * batch of one. */
                if (d->n_pending == 1)
                        (void) event_arm_timer(d->event, &d->commit_timer,
                                               COMMIT_DELAY_USEC + event_lag(d->event),
                                               COMMIT_ACCURACY_USEC, false, on_commit_timer, d,
                                               "spool-commit-timer");
        }
        return 0;
}

unsigned delivery_queued(const Delivery *d) {
        return (unsigned) MIN(spool_pending_count(d->spool), (uint64_t) UINT32_MAX);
}

uint64_t delivery_used_bytes(const Delivery *d) {
        return spool_used_bytes(d->spool);
}

const char *delivery_dir(const Delivery *d) {
        return d->dir;
}

int delivery_space(const Delivery *d, StateDirSpace *ret) {
        return spool_space(d->spool, ret);
}

/* What recovery skipped at start-up: damaged bytes in the spool, and the observations
 * that were in them. Reported at every start until the segment file is gone. */
static void log_recovery(Delivery *d) {
        const SpoolLoss *losses = NULL;
        size_t n = 0;
        int total;

        total = spool_recovery_losses(d->spool, &losses, &n);
        for (size_t i = 0; i < n; i++) {
                const SpoolLoss *l = &losses[i];
                char what[96];

                if (l->first_seq == 0)
                        snprintf(what, sizeof(what), "no whole observation was in them");
                else if (l->last_seq == 0)
                        /* The end of the newest file: most often a write cut short by a
                         * crash, which was never confirmed to its caller. */
                        snprintf(what, sizeof(what),
                                 "an interrupted write or damage; observations from %" PRIu64
                                 " on, if any, are lost",
                                 l->first_seq);
                else if (l->last_seq == l->first_seq)
                        snprintf(what, sizeof(what), "observation %" PRIu64 " is lost",
                                 l->first_seq);
                else
                        snprintf(what, sizeof(what), "observations %" PRIu64 " to %" PRIu64
                                 " are lost", l->first_seq, l->last_seq);
                log_event(l->first_seq && l->last_seq ? LOG_ERR : LOG_WARNING,
                          LODEV_MESSAGE_OBSERVATION_LOST,
                          NULL, NULL,
                          "Spool %s: %" PRIu64 " damaged bytes at offset %" PRIu64
                          " of segment %016" PRIx64 ".seg %s; %s.",
                          d->dir, l->bytes, l->offset, l->segment,
                          l->tail ? "cut off" : "skipped", what);
        }
        if (total > (int) n)
                log_warning("Spool %s: %d more damaged places not listed.", d->dir,
                            total - (int) n);
}

static int on_open_retry(sd_event_source *s, uint64_t usec, void *userdata);

/* Opens the spool. Recovery deletes only what fails its checksum; any other error (EIO,
 * EACCES, EMFILE, ...) proves nothing: nothing is deleted, and the spool is opened again with
 * backoff while SubmitObservation answers that it cannot take readings. -EBUSY (another
 * process has it) is not retried. */
static int open_spool(Delivery *d) {
        uint64_t delay;
        int r;

        r = spool_open(d->dir, d->max_bytes, &d->spool);
        if (r == -EBUSY)
                return r;
        if (r < 0) {
                delay = backoff_next(&d->open_backoff, random_u64());
                log_event(LOG_ERR, LODEV_MESSAGE_SPOOL_UNREADABLE, NULL, NULL,
                          "Cannot open the observation spool %s: %s; nothing is deleted, trying "
                          "again in %.1f s.",
                          d->dir, strerror(-r), (double) delay / 1e6);
                r = event_arm_timer(d->event, &d->open_timer, delay, 0, false, on_open_retry, d,
                                    "spool-open-retry");
                if (r < 0)
                        log_error_errno(r, "Failed to arm the spool retry timer: %m");
                return 0;
        }
        if (backoff_attempts(&d->open_backoff) > 0)
                log_info("Observation spool %s opened.", d->dir);
        backoff_reset(&d->open_backoff);
        log_recovery(d);
        if (delivery_queued(d) > 0) {
                log_info("%u observations queued from before.", delivery_queued(d));
                queued_changed(d);
        }
        if (d->channel)
                channel_wake(d->channel);
        return 0;
}

static int on_open_retry(sd_event_source *s, uint64_t usec, void *userdata) {
        Delivery *d = userdata;

        if (open_spool(d) == -EBUSY)
                log_error("The observation spool %s is in use by another process; trying again "
                          "later.", d->dir);
        return 0;
}

int delivery_new(sd_event *event, const char *state_dir, uint64_t max_bytes,
                 const DeliveryCallbacks *cb, void *userdata, Delivery **ret) {
        Delivery *d;
        int r;

        d = calloc(1, sizeof(*d));
        if (!d)
                return log_oom();
        d->event = sd_event_ref(event);
        d->max_bytes = max_bytes;
        d->cb = *cb;
        d->userdata = userdata;
        backoff_init(&d->read_backoff, READ_RETRY_MIN_USEC, READ_RETRY_MAX_USEC);
        backoff_init(&d->open_backoff, READ_RETRY_MIN_USEC, READ_RETRY_MAX_USEC);
        d->dir = strdup_printf("%s/spool", state_dir);
        if (!d->dir || topic_build(TOPIC_FHIR_INGEST, NULL, NULL, NULL, &d->topic) < 0) {
                delivery_free(d);
                return log_oom();
        }
        r = event_add_idle(event, &d->commit_event, on_commit, d, "spool-commit");
        if (r < 0) {
                delivery_free(d);
                return log_error_errno(r, "Failed to set up the commit source: %m");
        }
        r = open_spool(d);
        if (r == -EBUSY) {
                /* Another lodevd has it: this one must not run. */
                log_error_errno(r, "The observation spool %s is in use by another process: %m",
                                d->dir);
                delivery_free(d);
                return r;
        }
        *ret = d;
        return 0;
}

Delivery *delivery_free(Delivery *d) {
        if (!d)
                return NULL;
        /* A confirmation promises durability: sync first. */
        if (d->spool)
                commit(d);
        sd_event_source_disable_unref(d->commit_event);
        sd_event_source_disable_unref(d->commit_timer);
        sd_event_source_disable_unref(d->ack_timer);
        sd_event_source_disable_unref(d->queued_timer);
        sd_event_source_disable_unref(d->retry_timer);
        sd_event_source_disable_unref(d->open_timer);
        if (d->spool) {
                int r = spool_flush(d->spool);

                if (r < 0)
                        log_warning_errno(r, "Failed to persist delivery state, some delivered "
                                             "observations may be sent again: %m");
        }
        recent_clear(d);
        spool_free(d->spool);
        free(d->pending);
        free(d->topic);
        free(d->dir);
        sd_event_unref(d->event);
        free(d);
        return NULL;
}
