/* SPDX-License-Identifier: MIT */
#include "event-util.h"
#include "jobs-channel.h"
#include "log.h"
#include "topic.h"
#include "util.h"

/* Messages waiting for the channel: a list request, job requests, an update. */
#define OUTGOING_MAX 8U

typedef enum OutKind {
        OUT_LIST,
        OUT_JOB,
        OUT_UPDATE,
} OutKind;

typedef struct Outgoing {
        OutKind kind;
        char *topic;
        char *payload;
        char *job_id;  /* OUT_UPDATE: the job it is for */
        bool progress; /* OUT_UPDATE: a progress report */
} Outgoing;

struct JobsChannel {
        sd_event *event;
        JobsChannelCallbacks cb;
        void *userdata;

        Connection *connection;
        Channel *channel;
        char *thing;
        Outgoing out[OUTGOING_MAX];
        size_t n_out;
        /* What waits for an answer: one request and one update at most. */
        Outgoing *request_sent, *update_sent;
        Outgoing *update_next; /* the update to send once the one sent is answered */
        sd_event_source *request_timer, *update_timer;
};

static void outgoing_done(Outgoing *o) {
        free(o->topic);
        free(o->payload);
        free(o->job_id);
        *o = (Outgoing) {};
}

static Outgoing *outgoing_free(Outgoing *o) {
        if (o) {
                outgoing_done(o);
                free(o);
        }
        return NULL;
}

/* A copy on the heap, NULL when out of memory. */
static Outgoing *outgoing_copy(const Outgoing *o) {
        Outgoing *c = calloc(1, sizeof(*c));

        if (!c)
                return NULL;
        *c = (Outgoing) { .kind = o->kind, .progress = o->progress };
        c->topic = strdup(o->topic);
        c->payload = strdup(o->payload);
        c->job_id = o->job_id ? strdup(o->job_id) : NULL;
        if (!c->topic || !c->payload || (o->job_id && !c->job_id))
                return outgoing_free(c);
        return c;
}

static bool outgoing_same(const Outgoing *a, const Outgoing *b) {
        return a && b && streq(a->topic, b->topic) && streq(a->payload, b->payload);
}

/* Takes o over, also on failure. */
static int queue_message(JobsChannel *c, Outgoing o) {
        if (c->n_out >= OUTGOING_MAX) {
                outgoing_done(&o);
                return -ENOBUFS;
        }
        c->out[c->n_out++] = o;
        if (c->channel)
                channel_wake(c->channel);
        return 0;
}

static bool queued_kind(JobsChannel *c, OutKind kind) {
        for (size_t i = 0; i < c->n_out; i++)
                if (c->out[i].kind == kind)
                        return true;
        return false;
}

void jobs_channel_request_list(JobsChannel *c) {
        _cleanup_free_ char *topic = NULL, *payload = NULL;

        if (!c->connection || queued_kind(c, OUT_LIST) ||
            (c->request_sent && c->request_sent->kind == OUT_LIST))
                return;
        if (topic_build(TOPIC_JOBS_GET, c->thing, NULL, NULL, &topic) < 0 ||
            !(payload = strdup("{}"))) {
                log_oom();
                return;
        }
        (void) queue_message(c, (Outgoing) { .kind = OUT_LIST, .topic = TAKE_PTR(topic),
                                             .payload = TAKE_PTR(payload) });
}

void jobs_channel_request_job(JobsChannel *c, const char *id) {
        _cleanup_free_ char *topic = NULL, *payload = NULL;

        if (!c->connection)
                return;
        if (topic_build(TOPIC_JOB_GET, c->thing, NULL, id, &topic) < 0) {
                log_error("Cannot build the request for job %s, ignoring.", id);
                return;
        }
        for (size_t i = 0; i < c->n_out; i++)
                if (c->out[i].kind == OUT_JOB && streq(c->out[i].topic, topic))
                        return;
        payload = strdup("{\"includeJobDocument\":true}");
        if (!payload) {
                log_oom();
                return;
        }
        (void) queue_message(c, (Outgoing) { .kind = OUT_JOB, .topic = TAKE_PTR(topic),
                                             .payload = TAKE_PTR(payload) });
}

void jobs_channel_request_answered(JobsChannel *c, bool list) {
        if (c->request_sent && (c->request_sent->kind == OUT_LIST) == list) {
                c->request_sent = outgoing_free(c->request_sent);
                event_disarm(c->request_timer);
        }
}

void jobs_channel_requests_answered(JobsChannel *c) {
        c->request_sent = outgoing_free(c->request_sent);
        event_disarm(c->request_timer);
}

/* The update on its way: handed to the channel, or sent and waiting for its answer. */
static const Outgoing *update_in_flight(JobsChannel *c) {
        if (c->update_sent)
                return c->update_sent;
        for (size_t i = 0; i < c->n_out; i++)
                if (c->out[i].kind == OUT_UPDATE)
                        return &c->out[i];
        return NULL;
}

static void send_next_update(JobsChannel *c) {
        Outgoing *o;

        if (c->update_sent && c->update_next &&
            !streq_ptr(c->update_sent->job_id, c->update_next->job_id)) {
                /* Another job's: not waited for (see jobs_channel_update()). */
                c->update_sent = outgoing_free(c->update_sent);
                event_disarm(c->update_timer);
        }
        if (update_in_flight(c) || !c->update_next || !c->connection)
                return;
        o = TAKE_PTR(c->update_next);
        /* Marked as sent when the channel takes it (see channel_next()). */
        (void) queue_message(c, *o);
        free(o);
}

int jobs_channel_update(JobsChannel *c, const char *job_id, const char *payload, bool progress) {
        _cleanup_(outgoing_done) Outgoing o = { .kind = OUT_UPDATE, .progress = progress };
        Outgoing *n;
        int r;

        if (!job_id || !payload)
                return -EINVAL;
        r = topic_build(TOPIC_JOB_UPDATE, c->thing, NULL, job_id, &o.topic);
        if (r < 0)
                return r;
        o.payload = strdup(payload);
        o.job_id = strdup(job_id);
        if (!o.payload || !o.job_id)
                return -ENOMEM;
        /* An update of another job on its way is not waited for (send_next_update()): its
         * answer, when it comes, names its job and is not taken for this one's. */
        if (c->update_next && !streq_ptr(c->update_next->job_id, job_id))
                c->update_next = outgoing_free(c->update_next);
        /* A progress report never replaces a status change still to be sent. */
        if (progress && c->update_next && !c->update_next->progress)
                return 0;
        /* The same update on its way already (a job that came both through notify-next and
         * the list, a report re-sent at a reconnect): it goes again if its answer does not
         * come, never twice while it may. */
        if (!c->update_next && outgoing_same(update_in_flight(c), &o)) {
                log_debug("Jobs: the same update for job %s is on its way already.", job_id);
                return 0;
        }
        n = outgoing_copy(&o);
        if (!n)
                return -ENOMEM;
        outgoing_free(c->update_next);
        c->update_next = n;
        send_next_update(c);
        return 0;
}

bool jobs_channel_update_answered(JobsChannel *c, const char *job_id, bool *ret_progress) {
        if (!c->update_sent || !streq_ptr(job_id, c->update_sent->job_id))
                return false;
        *ret_progress = c->update_sent->progress;
        c->update_sent = outgoing_free(c->update_sent);
        event_disarm(c->update_timer);
        send_next_update(c);
        return true;
}

static int on_request_timeout(sd_event_source *t, uint64_t usec, void *userdata) {
        JobsChannel *c = userdata;
        Outgoing *o = TAKE_PTR(c->request_sent);

        if (!o)
                return 0;
        log_debug("No answer to %s, asking again.", o->topic);
        if (o->kind == OUT_LIST && c->cb.list_timeout)
                c->cb.list_timeout(c->userdata);
        if (queue_message(c, *o) < 0)
                log_debug("Job request queue full, dropping the request.");
        free(o);
        return 0;
}

static int on_update_timeout(sd_event_source *t, uint64_t usec, void *userdata) {
        JobsChannel *c = userdata;
        Outgoing *o = TAKE_PTR(c->update_sent);

        if (!o)
                return 0;
        if (o->progress || c->update_next) {
                /* Superseded or only progress: the next one says more. */
                outgoing_free(o);
                send_next_update(c);
                return 0;
        }
        log_event(LOG_INFO, NULL, o->job_id, NULL,
                  "No answer to the status update of job %s; sending it again.", o->job_id);
        c->update_next = o;
        send_next_update(c);
        return 0;
}

static int channel_next(Channel *ch, ChannelMessage *ret, void *userdata) {
        JobsChannel *c = userdata;
        Outgoing o, *copy;
        int r;

        if (c->n_out == 0)
                return 0;
        log_debug("Jobs: publishing to %s.", c->out[0].topic);
        o = c->out[0];
        memmove(c->out, c->out + 1, (c->n_out - 1) * sizeof(Outgoing));
        c->n_out--;

        /* Kept until answered, to send again when the answer does not come. */
        copy = outgoing_copy(&o);
        if (o.kind == OUT_UPDATE) {
                outgoing_free(c->update_sent);
                c->update_sent = copy;
                r = event_arm_timer(c->event, &c->update_timer, JOBS_CHANNEL_ANSWER_TIMEOUT_USEC,
                                    0, false, on_update_timeout, c, "job-update-timeout");
        } else {
                outgoing_free(c->request_sent);
                c->request_sent = copy;
                r = event_arm_timer(c->event, &c->request_timer,
                                    JOBS_CHANNEL_ANSWER_TIMEOUT_USEC, 0, false,
                                    on_request_timeout, c, "job-request-timeout");
        }
        if (r < 0)
                log_error_errno(r, "Failed to arm the job answer timer: %m");
        free(o.job_id);
        /* The connection owns topic and payload from here on. */
        *ret = (ChannelMessage) {
                .topic = o.topic,
                .data = o.payload,
                .len = strlen(o.payload),
        };
        return 1;
}

static void channel_acked(Channel *ch, uint64_t cookie, void *userdata) {
        /* The answer topics say what came of it. */
}

static void channel_online(Channel *ch, void *userdata) {
        JobsChannel *c = userdata;

        send_next_update(c);
        if (c->cb.online)
                c->cb.online(c->userdata);
}

static void channel_offline(Channel *ch, void *userdata) {
        JobsChannel *c = userdata;

        if (c->cb.offline)
                c->cb.offline(c->userdata);
}

static const ChannelOps channel_ops = {
        .next = channel_next,
        .acked = channel_acked,
        .online = channel_online,
        .offline = channel_offline,
};

int jobs_channel_attach(JobsChannel *c, Connection *conn, const char *thing) {
        int r;

        r = free_and_strdup(&c->thing, thing);
        if (r < 0)
                return r;
        r = connection_add_channel(conn, CHANNEL_CONTROL, &channel_ops, c, &c->channel);
        if (r < 0)
                return r;
        c->connection = conn;
        return 0;
}

bool jobs_channel_attached(const JobsChannel *c) {
        return c->connection;
}

void jobs_channel_detach(JobsChannel *c) {
        for (size_t i = 0; i < c->n_out; i++) {
                /* An update not taken yet goes first on the next connection. */
                if (c->out[i].kind == OUT_UPDATE && !c->update_next && !c->update_sent)
                        c->update_next = outgoing_copy(&c->out[i]);
                outgoing_done(&c->out[i]);
        }
        c->n_out = 0;
        /* An update waiting for its answer is sent again on the next connection. */
        if (c->update_sent && !c->update_sent->progress && !c->update_next)
                c->update_next = TAKE_PTR(c->update_sent);
        c->update_sent = outgoing_free(c->update_sent);
        c->request_sent = outgoing_free(c->request_sent);
        event_disarm(c->request_timer);
        event_disarm(c->update_timer);
        c->channel = NULL;
        c->connection = NULL;
}

int jobs_channel_new(sd_event *event, const JobsChannelCallbacks *cb, void *userdata,
                     JobsChannel **ret) {
        JobsChannel *c = calloc(1, sizeof(*c));

        if (!c)
                return -ENOMEM;
        *c = (JobsChannel) { .event = sd_event_ref(event), .cb = *cb, .userdata = userdata };
        *ret = c;
        return 0;
}

JobsChannel *jobs_channel_free(JobsChannel *c) {
        if (!c)
                return NULL;
        for (size_t i = 0; i < c->n_out; i++)
                outgoing_done(&c->out[i]);
        outgoing_free(c->request_sent);
        outgoing_free(c->update_sent);
        outgoing_free(c->update_next);
        sd_event_source_disable_unref(c->request_timer);
        sd_event_source_disable_unref(c->update_timer);
        free(c->thing);
        sd_event_unref(c->event);
        free(c);
        return NULL;
}
