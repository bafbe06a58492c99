/* SPDX-License-Identifier: MIT */
/* Observations from SubmitObservation() to $aws/rules/FHIRIngest: appended to
 * the spool, answered only after the fsync that makes them durable (shared by
 * every call that arrived meanwhile: group commit), then published oldest
 * first at QoS 1, at most DELIVERY_INFLIGHT_MAX unacknowledged, paced to the
 * platform's limits, and removed from the spool on PUBACK. */

#include <inttypes.h>
#include <math.h>

#include "bus.h"
#include "delivery.h"
#include "log.h"
#include "manager.h"
#include "message.h"
#include "topic.h"
#include "util.h"

/* Calls whose reply waits for one fsync; past this a batch is committed at once. */
#define COMMIT_BATCH_MAX 1024
/* Under a steady load the loop is never idle: commit at the latest this long
 * after the first call of a batch arrived. */
#define COMMIT_DELAY_USEC 10000
/* Pace below the configured limits, so that jitter on the way cannot push a
 * one-second window over them. */
#define PACE_FACTOR 0.95
#define BYTES_PER_SEC_MAX (512.0 * 1024.0)
/* sd-event coalesces timers by 250 ms unless told otherwise: far too coarse
 * for 100 publishes a second. */
#define PACE_ACCURACY_USEC 1000
/* Acknowledgements are persisted within this time, or at once past a count:
 * what a crash can send twice stays small under load. */
#define ACK_FLUSH_USEC (UINT64_C(250) * 1000)
#define ACK_FLUSH_COUNT 256
#define QUEUED_EMIT_USEC (UINT64_C(250) * 1000)

static uint64_t now_usec(Manager *m) {
        uint64_t now;

        (void) sd_event_now(m->event, CLOCK_MONOTONIC, &now);
        return now;
}

static void queued_changed(Manager *m);

static int on_queued_emit(sd_event_source *s, uint64_t usec, void *userdata) {
        Manager *m = userdata;

        bus_emit_changed(m, "QueuedObservations", NULL);
        return 0;
}

/* Arms the one-shot timer *s to fire after delay, creating it on first use.
 * With coalesce, a timer already armed is left as it is: several events
 * within the delay share one firing. */
static int arm_timer(Manager *m, sd_event_source **s, uint64_t delay, uint64_t accuracy,
                     bool coalesce, sd_event_time_handler_t handler) {
        int enabled = SD_EVENT_OFF, r;

        if (!*s) {
                r = sd_event_add_time_relative(m->event, s, CLOCK_MONOTONIC, delay, accuracy,
                                               handler, m);
                if (r < 0)
                        return r;
        } else {
                (void) sd_event_source_get_enabled(*s, &enabled);
                if (coalesce && enabled != SD_EVENT_OFF)
                        return 0;
                (void) sd_event_source_set_time_relative(*s, delay);
        }
        return sd_event_source_set_enabled(*s, SD_EVENT_ONESHOT);
}

/* PropertiesChanged for QueuedObservations, at most four times a second:
 * a draining backlog would otherwise send one per observation. */
static void queued_changed(Manager *m) {
        unsigned n = (unsigned) MIN(spool_pending_count(m->delivery.spool), (uint64_t) UINT32_MAX);
        int r;

        if (n == m->queued_observations)
                return;
        m->queued_observations = n;
        r = arm_timer(m, &m->delivery.queued_timer, QUEUED_EMIT_USEC, 0, true, on_queued_emit);
        if (r < 0)
                log_debug_errno(r, "Failed to arm the QueuedObservations timer, ignoring: %m");
}

static int on_ack_flush(sd_event_source *s, uint64_t usec, void *userdata) {
        Manager *m = userdata;
        int r;

        m->delivery.unflushed_acks = 0;
        r = spool_flush(m->delivery.spool);
        if (r < 0)
                log_warning_errno(r, "Failed to persist delivery state in %s/spool, "
                                     "will retry: %m",
                                  m->config.state_dir);
        return 0;
}

static void schedule_ack_flush(Manager *m) {
        int r = arm_timer(m, &m->delivery.ack_timer, ACK_FLUSH_USEC, 0, true, on_ack_flush);

        if (r < 0)
                log_warning_errno(r, "Failed to arm the ack flush timer, flushing at exit: %m");
}

static int on_pace(sd_event_source *s, uint64_t usec, void *userdata) {
        delivery_kick(userdata);
        return 0;
}

static void pace_later(Manager *m, uint64_t delay) {
        int r = arm_timer(m, &m->delivery.pace_timer, delay, PACE_ACCURACY_USEC, false, on_pace);

        if (r < 0)
                log_error_errno(r, "Failed to arm the pacing timer: %m");
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

/* The cached payload of seq, if it is there; older entries are dropped on
 * the way, since delivery goes in order. The caller owns the result. */
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

static InFlight *inflight_find(Manager *m, int mid) {
        for (size_t i = 0; i < m->delivery.n_inflight; i++)
                if (m->delivery.inflight[i].mid == mid)
                        return &m->delivery.inflight[i];
        return NULL;
}

void delivery_kick(Manager *m) {
        Delivery *d = &m->delivery;

        if (!d->spool || !m->mqtt || m->state != DEVICE_STATE_ONLINE)
                return;

        while (d->n_inflight < DELIVERY_INFLIGHT_MAX) {
                _cleanup_free_ void *data = NULL;
                uint64_t seq, now, wait;
                size_t len;
                int r, mid = 0;

                r = spool_next(d->spool, d->cursor, &seq);
                if (r == -ENOENT)
                        return;
                if (r < 0) {
                        log_error_errno(r, "Failed to read the observation spool: %m");
                        return;
                }
                data = recent_take(d, seq, &len);
                r = data ? 0 : spool_read(d->spool, seq, &data, &len);
                if (r < 0) {
                        /* The medium changed the record: it can never be sent. */
                        log_error_errno(r, "Observation %" PRIu64 " in %s/spool is unreadable "
                                           "(%m), dropping it.",
                                        seq, m->config.state_dir);
                        (void) spool_ack(d->spool, seq);
                        d->cursor = seq;
                        continue;
                }

                now = now_usec(m);
                wait = MAX(token_bucket_wait_usec(&d->messages, 1, now),
                           token_bucket_wait_usec(&d->bytes, (double) len, now));
                if (wait > 0) {
                        pace_later(m, wait);
                        return;
                }
                r = mqtt_publish(m->mqtt, d->topic, data, len, 1, &mid);
                if (r < 0) {
                        if (r != -ENOTCONN)
                                log_warning_errno(r, "Failed to publish observation %" PRIu64
                                                     ", will retry: %m",
                                                  seq);
                        return;
                }
                (void) token_bucket_take(&d->messages, 1, now);
                (void) token_bucket_take(&d->bytes, (double) len, now);
                d->inflight[d->n_inflight++] = (InFlight) { .mid = mid, .seq = seq };
                d->cursor = seq;
        }
}

void delivery_published(Manager *m, int mid) {
        Delivery *d = &m->delivery;
        InFlight *f = inflight_find(m, mid);
        char id[24];
        uint64_t seq;
        int r;

        if (!f)
                return;
        seq = f->seq;
        *f = d->inflight[--d->n_inflight];

        r = spool_ack(d->spool, seq);
        if (r < 0 && r != -ENOENT)
                log_warning_errno(r, "Failed to mark observation %" PRIu64 " delivered: %m", seq);
        snprintf(id, sizeof(id), "%" PRIu64, seq);
        r = sd_bus_emit_signal(m->bus, LODEV_BUS_PATH, LODEV_BUS_INTERFACE,
                               "ObservationDelivered", "s", id);
        if (r < 0)
                log_debug_errno(r, "Failed to emit ObservationDelivered, ignoring: %m");
        if (++d->unflushed_acks >= ACK_FLUSH_COUNT)
                (void) on_ack_flush(NULL, 0, m);
        else
                schedule_ack_flush(m);
        queued_changed(m);
        delivery_kick(m);
}

void delivery_online(Manager *m) {
        /* libmosquitto keeps unacknowledged publishes and sends them again
         * after a reconnect, so what is in flight stays in flight. */
        delivery_kick(m);
}

void delivery_reset(Manager *m) {
        /* The client is gone with its queue: send everything unacknowledged
         * again, read back from the spool. */
        m->delivery.n_inflight = 0;
        m->delivery.cursor = 0;
        recent_clear(&m->delivery);
}

/* Answers every waiting SubmitObservation() after one fsync. */
static void commit(Manager *m) {
        Delivery *d = &m->delivery;
        int r;

        if (d->n_pending == 0)
                return;
        (void) sd_event_source_set_enabled(d->commit_event, SD_EVENT_OFF);
        (void) sd_event_source_set_enabled(d->commit_timer, SD_EVENT_OFF);
        r = spool_sync(d->spool);
        if (r < 0) {
                log_error_errno(r, "Failed to sync the observation spool in %s/spool: %m",
                                m->config.state_dir);
                /* The spool dropped the unsynced records: so must the cache. */
                recent_clear(d);
        }
        for (size_t i = 0; i < d->n_pending; i++) {
                PendingSubmit *p = &d->pending[i];
                char id[24];

                int q;

                snprintf(id, sizeof(id), "%" PRIu64, p->seq);
                if (r >= 0)
                        q = sd_bus_reply_method_return(p->msg, "s", id);
                else
                        q = sd_bus_reply_method_errorf(p->msg, LODEV_ERROR_FAILED,
                                                       "cannot store the observation: %s",
                                                       strerror(-r));
                if (q < 0)
                        log_debug_errno(q, "Failed to answer SubmitObservation(), ignoring: %m");
                p->msg = sd_bus_message_unref(p->msg);
        }
        d->n_pending = 0;
        queued_changed(m);
        delivery_kick(m);
}

static int on_commit(sd_event_source *s, void *userdata) {
        commit(userdata);
        return 0;
}

static int on_commit_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        commit(userdata);
        return 0;
}

int delivery_submit(Manager *m, sd_bus_message *msg, const Observation *o, sd_bus_error *error) {
        Delivery *d = &m->delivery;
        _cleanup_free_ char *json = NULL;
        const char *field = NULL;
        uint64_t seq;
        int r;

        r = observation_validate(o, &field);
        if (r < 0)
                return sd_bus_error_setf(error, LODEV_ERROR_INVALID_ARGUMENT,
                                         "%s: %s", field ?: "observation",
                                         streq_ptr(field, "value")
                                                 ? "must be a finite number"
                                                 : "must be valid UTF-8 of at most 4096 bytes"
                                                   " (code and system non-empty)");
        r = message_encode_observation(o, &json);
        if (r == -E2BIG)
                return sd_bus_error_setf(error, LODEV_ERROR_INVALID_ARGUMENT,
                                         "observation: encoded payload exceeds %u bytes",
                                         MESSAGE_SIZE_MAX);
        if (r < 0)
                return sd_bus_error_setf(error, LODEV_ERROR_INVALID_ARGUMENT,
                                         "observation: cannot be encoded (%s)", strerror(-r));
        if (!d->spool)
                return sd_bus_error_setf(error, LODEV_ERROR_FAILED,
                                         "the observation spool is not available");
        if (d->n_pending >= d->n_pending_alloc) {
                size_t n = MAX(d->n_pending_alloc * 2, (size_t) 64);
                PendingSubmit *p = realloc(d->pending, n * sizeof(*p));
                if (!p)
                        return -ENOMEM;
                d->pending = p;
                d->n_pending_alloc = n;
        }

        r = spool_append(d->spool, json, strlen(json), &seq);
        if (r == -ENOSPC)
                return sd_bus_error_setf(error, LODEV_ERROR_QUEUE_FULL,
                                         "the observation queue is full (%" PRIu64
                                         " bytes of spool.max_bytes %" PRIu64 ")",
                                         spool_used_bytes(d->spool), m->config.spool_max_bytes);
        if (r < 0)
                return sd_bus_error_setf(error, LODEV_ERROR_FAILED,
                                         "cannot store the observation: %s", strerror(-r));

        d->pending[d->n_pending++] = (PendingSubmit) { .msg = sd_bus_message_ref(msg), .seq = seq };
        {
                size_t len = strlen(json);
                if (recent_add(d, seq, json, len))
                        json = NULL;
        }
        /* The commit source has a lower priority than the bus: it runs once
         * the calls already read are all appended, and one fsync answers them. */
        if (d->n_pending >= COMMIT_BATCH_MAX)
                commit(m);
        else {
                (void) sd_event_source_set_enabled(d->commit_event, SD_EVENT_ONESHOT);
                if (d->n_pending == 1) {
                        (void) sd_event_source_set_time_relative(d->commit_timer,
                                                                 COMMIT_DELAY_USEC);
                        (void) sd_event_source_set_enabled(d->commit_timer, SD_EVENT_ONESHOT);
                }
        }
        return 1;
}

void delivery_configure(Manager *m) {
        uint64_t now = now_usec(m);
        double rate = m->config.publish_rate * PACE_FACTOR;

        /* A burst of one: a backlog drains evenly instead of in one-second lumps. */
        token_bucket_init(&m->delivery.messages, rate, rate > 0 ? 1 : 0, now);
        token_bucket_init(&m->delivery.bytes, BYTES_PER_SEC_MAX * PACE_FACTOR,
                          (double) MESSAGE_SIZE_MAX, now);
}

int delivery_open(Manager *m) {
        Delivery *d = &m->delivery;
        _cleanup_free_ char *dir = NULL;
        int r;

        dir = strdup_printf("%s/spool", m->config.state_dir);
        if (!dir)
                return log_oom();
        r = spool_open(dir, m->config.spool_max_bytes, &d->spool);
        if (r < 0)
                return log_error_errno(r, "Failed to open the observation spool %s: %m", dir);
        r = topic_build(TOPIC_FHIR_INGEST, NULL, NULL, NULL, &d->topic);
        if (r < 0)
                return log_oom();
        r = sd_event_add_defer(m->event, &d->commit_event, on_commit, m);
        if (r < 0)
                return log_error_errno(r, "Failed to set up the commit source: %m");
        (void) sd_event_source_set_priority(d->commit_event, SD_EVENT_PRIORITY_IDLE);
        (void) sd_event_source_set_enabled(d->commit_event, SD_EVENT_OFF);
        (void) sd_event_source_set_description(d->commit_event, "spool-commit");
        r = sd_event_add_time_relative(m->event, &d->commit_timer, CLOCK_MONOTONIC,
                                       COMMIT_DELAY_USEC, PACE_ACCURACY_USEC, on_commit_timer, m);
        if (r < 0)
                return log_error_errno(r, "Failed to set up the commit timer: %m");
        (void) sd_event_source_set_enabled(d->commit_timer, SD_EVENT_OFF);
        (void) sd_event_source_set_description(d->commit_timer, "spool-commit-timer");
        delivery_configure(m);
        m->queued_observations = (unsigned) MIN(spool_pending_count(d->spool), (uint64_t) UINT32_MAX);
        if (m->queued_observations > 0)
                log_info("%u observations queued from before.", m->queued_observations);
        return 0;
}

void delivery_close(Manager *m) {
        Delivery *d = &m->delivery;
        int r;

        /* Answer what is appended: a reply promises durability, so sync first. */
        commit(m);
        d->commit_event = sd_event_source_disable_unref(d->commit_event);
        d->commit_timer = sd_event_source_disable_unref(d->commit_timer);
        d->pace_timer = sd_event_source_disable_unref(d->pace_timer);
        d->ack_timer = sd_event_source_disable_unref(d->ack_timer);
        d->queued_timer = sd_event_source_disable_unref(d->queued_timer);
        if (d->spool) {
                r = spool_flush(d->spool);
                if (r < 0)
                        log_warning_errno(r, "Failed to persist delivery state, some delivered "
                                             "observations may be sent again: %m");
        }
        recent_clear(d);
        d->spool = spool_free(d->spool);
        free(d->pending);
        d->pending = NULL;
        d->n_pending = d->n_pending_alloc = 0;
        d->topic = (free(d->topic), NULL);
}
