/* SPDX-License-Identifier: MIT */
#include <inttypes.h>
#include <time.h>

#include "backoff.h"
#include "event-util.h"
#include "fileio.h"
#include "firmware-download.h"
#include "firmware-reboot.h"
#include "hook.h"
#include "job.h"
#include "jobs.h"
#include "log.h"
#include "topic.h"
#include "util.h"

/* A request or update without an answer in this time is sent again. */
#define ANSWER_TIMEOUT_USEC (UINT64_C(30) * 1000000)
/* Retries of requests the platform refused for a passing reason, and of the journal. */
#define RETRY_MIN_USEC (UINT64_C(1) * 1000000)
#define RETRY_MAX_USEC (UINT64_C(120) * 1000000)
/* Room left free beside the firmware, the spool's room and the journal. */
#define SPACE_MARGIN (UINT64_C(1) * 1024 * 1024)
/* Messages waiting for the channel: a list request, a job request, an update. */
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

typedef struct CheckWaiter {
        JobsCheckDone done;
        void *userdata;
} CheckWaiter;

struct Jobs {
        sd_event *event;
        HttpClient *http;
        const Config *config;
        JobsCallbacks cb;
        void *userdata;
        char *dir;     /* <state_dir>/job */
        char *boot_id; /* NULL when unknown */

        JobJournal journal;
        bool started; /* the start-up reconcile was done */

        Connection *connection;
        Channel *channel;
        char *thing;
        Outgoing out[OUTGOING_MAX];
        size_t n_out;
        /* What waits for an answer: one request and one update at most. */
        Outgoing *request_sent, *update_sent;
        Outgoing *update_next; /* the update to send once the one sent is answered */
        sd_event_source *request_timer, *update_timer;

        /* A GET_JOB or REPORT decided "with backoff". */
        Backoff backoff;
        sd_event_source *retry_timer;
        JobAction retry_action;
        char *retry_job_id;
        JobReport retry_report;

        CheckWaiter waiters[JOBS_CHECK_WAITERS_MAX];
        size_t n_waiters;

        FirmwareDownload *download;

        /* Hooks and the reboot. */
        Hook *hook;
        FirmwareReboot *reboot;
        Inhibitors *inhibitors;

        unsigned percent;
        bool has_percent;
        JobProgressThrottle throttle;
        char percent_text[8];
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

static uint64_t now_realtime(void) {
        struct timespec ts;

        (void) clock_gettime(CLOCK_REALTIME, &ts);
        return (uint64_t) ts.tv_sec * 1000000 + (uint64_t) ts.tv_nsec / 1000;
}

static void context(Jobs *s, JobContext *c) {
        *c = (JobContext) {
                .max_attempts = s->config->max_attempts,
                .max_reboot_tries = s->config->max_reboot_tries,
                .allow_http = s->config->allow_http,
                .now_usec = now_realtime(),
                .boot_id = s->boot_id,
        };
}

static const char *job_id(Jobs *s) {
        return s->journal.job_id;
}

static void current_changed(Jobs *s) {
        if (s->cb.current_changed)
                s->cb.current_changed(s->userdata);
}

static const char *status_text(Jobs *s) {
        JobPhase p = s->journal.phase;

        if (p == JOB_PHASE_NONE || p == JOB_PHASE_DONE)
                return "";
        if (p == JOB_PHASE_REPORTING) {
                switch (s->journal.report.status) {
                case JOB_STATUS_SUCCEEDED:
                        return "succeeded";
                case JOB_STATUS_REJECTED:
                        return "rejected";
                default:
                        return "failed";
                }
        }
        return job_phase_to_string(p);
}

static void emit_updated(Jobs *s, const char *status, const char *message) {
        if (s->cb.updated && job_id(s))
                s->cb.updated(job_id(s), status, s->has_percent ? s->percent : 0,
                              strempty(message), s->userdata);
}

void jobs_current(Jobs *s, const char **ret_id, const char **ret_status,
                  const char **ret_percent) {
        const char *status = status_text(s);

        *ret_id = *status ? job_id(s) : "";
        *ret_status = status;
        if (*status && s->has_percent) {
                snprintf(s->percent_text, sizeof(s->percent_text), "%u", s->percent);
                *ret_percent = s->percent_text;
        } else
                *ret_percent = "";
}

/* --- Outgoing messages --- */

/* Takes o over, also on failure. */
static int queue_message(Jobs *s, Outgoing o) {
        if (s->n_out >= OUTGOING_MAX) {
                outgoing_done(&o);
                return -ENOBUFS;
        }
        s->out[s->n_out++] = o;
        if (s->channel)
                channel_wake(s->channel);
        return 0;
}

static bool queued_kind(Jobs *s, OutKind kind) {
        for (size_t i = 0; i < s->n_out; i++)
                if (s->out[i].kind == kind)
                        return true;
        return false;
}

static void request_list(Jobs *s) {
        _cleanup_free_ char *topic = NULL, *payload = NULL;

        if (!s->connection || queued_kind(s, OUT_LIST) ||
            (s->request_sent && s->request_sent->kind == OUT_LIST))
                return;
        if (topic_build(TOPIC_JOBS_GET, s->thing, NULL, NULL, &topic) < 0 ||
            !(payload = strdup("{}"))) {
                log_oom();
                return;
        }
        (void) queue_message(s, (Outgoing) { .kind = OUT_LIST, .topic = TAKE_PTR(topic),
                                             .payload = TAKE_PTR(payload) });
}

static void request_job(Jobs *s, const char *id) {
        _cleanup_free_ char *topic = NULL, *payload = NULL;

        if (!s->connection)
                return;
        if (topic_build(TOPIC_JOB_GET, s->thing, NULL, id, &topic) < 0) {
                log_error("Cannot build the request for job %s, ignoring.", id);
                return;
        }
        for (size_t i = 0; i < s->n_out; i++)
                if (s->out[i].kind == OUT_JOB && streq(s->out[i].topic, topic))
                        return;
        payload = strdup("{\"includeJobDocument\":true}");
        if (!payload) {
                log_oom();
                return;
        }
        (void) queue_message(s, (Outgoing) { .kind = OUT_JOB, .topic = TAKE_PTR(topic),
                                             .payload = TAKE_PTR(payload) });
}

static void send_next_update(Jobs *s);

/* The update on its way: handed to the channel, or sent and waiting for its answer. */
static const Outgoing *update_in_flight(Jobs *s) {
        if (s->update_sent)
                return s->update_sent;
        for (size_t i = 0; i < s->n_out; i++)
                if (s->out[i].kind == OUT_UPDATE)
                        return &s->out[i];
        return NULL;
}

/* Updates go one at a time: an answer on <job>/update/accepted carries no token, so it can
 * only be matched to the one update that is waiting (by its job). A newer update replaces one
 * not yet sent: the last word is the one that counts. */
static void queue_update(Jobs *s, const JobReport *report, bool progress) {
        _cleanup_(outgoing_done) Outgoing o = { .kind = OUT_UPDATE, .progress = progress };
        Outgoing *n;
        int r;

        if (!job_id(s))
                return;
        r = topic_build(TOPIC_JOB_UPDATE, s->thing, NULL, job_id(s), &o.topic);
        if (r >= 0)
                r = job_report_encode(report, &o.payload);
        if (r >= 0 && !(o.job_id = strdup(job_id(s))))
                r = -ENOMEM;
        if (r < 0) {
                log_event(LOG_ERR, NULL, job_id(s), NULL,
                          "Cannot encode the status update of the job: %s", strerror(-r));
                return;
        }
        /* A progress report never replaces a status change still to be sent. */
        if (progress && s->update_next && !s->update_next->progress)
                return;
        /* The same update on its way already (a job that came both through notify-next and
         * the list, a report re-sent at a reconnect): it is sent again if its answer does not
         * come, never twice while it may. */
        if (!s->update_next && outgoing_same(update_in_flight(s), &o)) {
                log_debug("Jobs: the same update is on its way already.");
                return;
        }
        n = outgoing_copy(&o);
        if (!n) {
                log_oom();
                return;
        }
        outgoing_free(s->update_next);
        s->update_next = n;
        send_next_update(s);
}

static void send_next_update(Jobs *s) {
        Outgoing *o;

        if (update_in_flight(s) || !s->update_next || !s->connection)
                return;
        o = TAKE_PTR(s->update_next);
        /* Marked as sent when the channel takes it (see channel_next()). */
        (void) queue_message(s, *o);
        free(o);
}

static int on_request_timeout(sd_event_source *t, uint64_t usec, void *userdata);
static int on_update_timeout(sd_event_source *t, uint64_t usec, void *userdata);

static int channel_next(Channel *ch, ChannelMessage *ret, void *userdata) {
        Jobs *s = userdata;
        Outgoing o, *copy;
        int r;

        if (s->n_out == 0)
                return 0;
        log_debug("Jobs: publishing to %s.", s->out[0].topic);
        o = s->out[0];
        memmove(s->out, s->out + 1, (s->n_out - 1) * sizeof(Outgoing));
        s->n_out--;

        /* Kept until answered, to send again when the answer does not come. */
        copy = outgoing_copy(&o);
        if (o.kind == OUT_UPDATE) {
                outgoing_free(s->update_sent);
                s->update_sent = copy;
                r = event_arm_timer(s->event, &s->update_timer, ANSWER_TIMEOUT_USEC, 0, false,
                                    on_update_timeout, s, "job-update-timeout");
        } else {
                outgoing_free(s->request_sent);
                s->request_sent = copy;
                r = event_arm_timer(s->event, &s->request_timer, ANSWER_TIMEOUT_USEC, 0, false,
                                    on_request_timeout, s, "job-request-timeout");
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

static void check_waiters_done(Jobs *s, int error) {
        size_t n = s->n_waiters;
        CheckWaiter w[JOBS_CHECK_WAITERS_MAX];

        memcpy(w, s->waiters, n * sizeof(CheckWaiter));
        s->n_waiters = 0;
        for (size_t i = 0; i < n; i++)
                w[i].done(error, w[i].userdata);
}

static void channel_online(Channel *ch, void *userdata) {
        Jobs *s = userdata;

        /* Every (re)connect: what happened while away is in the list. */
        request_list(s);
        send_next_update(s);
}

static void channel_offline(Channel *ch, void *userdata) {
        Jobs *s = userdata;

        check_waiters_done(s, -ENOTCONN);
}

static const ChannelOps channel_ops = {
        .next = channel_next,
        .acked = channel_acked,
        .online = channel_online,
        .offline = channel_offline,
};

static int on_request_timeout(sd_event_source *t, uint64_t usec, void *userdata) {
        Jobs *s = userdata;
        Outgoing *o = TAKE_PTR(s->request_sent);

        if (!o)
                return 0;
        log_debug("No answer to %s, asking again.", o->topic);
        if (o->kind == OUT_LIST)
                check_waiters_done(s, -ETIMEDOUT);
        if (queue_message(s, *o) < 0)
                log_debug("Job request queue full, dropping the request.");
        free(o);
        return 0;
}

static int on_update_timeout(sd_event_source *t, uint64_t usec, void *userdata) {
        Jobs *s = userdata;
        Outgoing *o = TAKE_PTR(s->update_sent);

        if (!o)
                return 0;
        if (o->progress || s->update_next) {
                /* Superseded or only progress: the next one says more. */
                outgoing_free(o);
                send_next_update(s);
                return 0;
        }
        log_event(LOG_INFO, NULL, o->job_id, NULL,
                  "No answer to the status update of job %s; sending it again.", o->job_id);
        s->update_next = o;
        send_next_update(s);
        return 0;
}

/* --- Applying decisions --- */

static void apply(Jobs *s, JobPhase before, JobDecision *d);
static void stop_download(Jobs *s);
static void start_download(Jobs *s, const char *url, uint64_t offset);
static void run_hook(Jobs *s, JobAction which);
static void start_reboot(Jobs *s, uint64_t delay_usec);

static void run_event(Jobs *s, const JobEvent *ev) {
        _cleanup_(job_decision_done) JobDecision d = {};
        JobContext c;
        int r;

        JobPhase before = s->journal.phase;

        context(s, &c);
        r = job_handle(&s->journal, ev, &c, &d);
        if (r < 0) {
                log_event(LOG_WARNING, NULL, job_id(s), NULL,
                          "Cannot act on a job event (%d): %s, ignoring.", ev->type,
                          strerror(-r));
                return;
        }
        apply(s, before, &d);
}

static int on_retry(sd_event_source *t, uint64_t usec, void *userdata) {
        Jobs *s = userdata;
        JobAction a = s->retry_action;

        s->retry_action = JOB_ACTION_NONE;
        if (a == JOB_ACTION_GET_JOB && s->retry_job_id)
                request_job(s, s->retry_job_id);
        else if (a == JOB_ACTION_REPORT && s->retry_report.status != _JOB_STATUS_INVALID &&
                 streq_ptr(s->retry_job_id, job_id(s)))
                queue_update(s, &s->retry_report, false);
        else if (a == JOB_ACTION_GET_LIST)
                request_list(s);
        job_report_done(&s->retry_report);
        s->retry_job_id = (free(s->retry_job_id), NULL);
        return 0;
}

static void later(Jobs *s, JobAction a, const char *id, const JobReport *report) {
        uint64_t delay = backoff_next(&s->backoff, random_u64());
        int r;

        job_report_done(&s->retry_report);
        free(s->retry_job_id);
        s->retry_job_id = id ? strdup(id) : NULL;
        if (report && job_report_copy(report, &s->retry_report) < 0)
                s->retry_report = JOB_REPORT_NULL;
        s->retry_action = a;
        r = event_arm_timer(s->event, &s->retry_timer, delay, 0, false, on_retry, s,
                            "job-retry");
        if (r < 0)
                log_error_errno(r, "Failed to arm the job retry timer: %m");
}

static void remove_download(Jobs *s) {
        _cleanup_free_ char *path = NULL;

        if (!s->journal.file)
                return;
        path = strdup_printf("%s/%s", s->dir, s->journal.file);
        if (path && unlink(path) < 0 && errno != ENOENT)
                log_event(LOG_WARNING, NULL, job_id(s), NULL,
                          "Failed to remove the firmware download %s, ignoring: %m", path);
}

static void log_finished(Jobs *s) {
        const JobReport *r = &s->journal.report;
        const char *reason = job_report_get(r, JOB_DETAIL_REASON);
        const char *err = job_report_get(r, JOB_DETAIL_STDERR);
        _cleanup_free_ char *e_reason = escape_control(reason), *e_err = escape_control(err);

        log_event(r->status == JOB_STATUS_SUCCEEDED ? LOG_INFO : LOG_WARNING,
                  LODEV_MESSAGE_JOB_FINISHED, job_id(s), NULL, "Job %s: %s%s%s%s%s.",
                  job_id(s), job_status_to_string(r->status), reason ? ": " : "",
                  strempty(e_reason), err ? "; installer said: " : "", strempty(e_err));
}

/* before: the phase the journal had before the decision changed it. */
static void apply(Jobs *s, JobPhase phase, JobDecision *d) {
        int r;

        if (d->save) {
                r = job_journal_save(s->dir, &s->journal);
                if (r < 0 && d->must_save) {
                        /* The step is not safe without its record: the job ends instead. */
                        JobEvent ev = { .type = JOB_EVENT_SAVE_FAILED, .error = r };

                        log_event(LOG_ERR, NULL, job_id(s), NULL,
                                  "Job %s: failed to save the job journal in %s (%s); the job "
                                  "ends here.",
                                  job_id(s), s->dir, strerror(-r));
                        run_event(s, &ev);
                        return;
                }
                if (r < 0)
                        log_event(LOG_ERR, NULL, job_id(s), NULL,
                                  "Job %s: failed to save the job journal in %s (%s); going on "
                                  "from memory.",
                                  job_id(s), s->dir, strerror(-r));
        }
        if (d->remove_download)
                remove_download(s);
        if (d->action != JOB_ACTION_NONE)
                log_debug("Job %s: %s in phase %s.", strempty(d->job_id),
                          job_action_to_string(d->action), job_phase_to_string(phase));

        switch (d->action) {
        case JOB_ACTION_NONE:
                break;
        case JOB_ACTION_GET_LIST:
                if (d->backoff)
                        later(s, JOB_ACTION_GET_LIST, NULL, NULL);
                else
                        request_list(s);
                break;
        case JOB_ACTION_GET_JOB:
                if (d->backoff)
                        later(s, JOB_ACTION_GET_JOB, d->job_id, NULL);
                else
                        request_job(s, d->job_id);
                break;
        case JOB_ACTION_REPORT:
                if (s->journal.phase == JOB_PHASE_REPORTING && phase != JOB_PHASE_REPORTING)
                        log_finished(s);
                if (d->backoff)
                        later(s, JOB_ACTION_REPORT, d->job_id, &d->report);
                else
                        queue_update(s, &d->report, false);
                break;
        case JOB_ACTION_DOWNLOAD:
                start_download(s, d->url, d->offset);
                break;
        case JOB_ACTION_INSTALL:
        case JOB_ACTION_CONFIRM:
        case JOB_ACTION_ROLLBACK:
                run_hook(s, d->action);
                break;
        case JOB_ACTION_REBOOT:
                start_reboot(s, d->delay_usec);
                break;
        case JOB_ACTION_ABANDON:
                log_event(LOG_NOTICE, LODEV_MESSAGE_JOB_FINISHED, d->job_id, NULL,
                          "Job %s: the platform moved on (canceled or removed); stopped.",
                          d->job_id);
                stop_download(s);
                remove_download(s);
                s->has_percent = false;
                emit_updated(s, "canceled", "the platform canceled or removed the job");
                request_list(s);
                break;
        default:
                break;
        }

        /* A reboot asked for while rebooting was the plan; not after. */
        if (s->journal.phase != JOB_PHASE_AWAITING_REBOOT)
                firmware_reboot_cancel(s->reboot);

        /* JobUpdated for a change of phase, and the property. */
        if (s->journal.phase != phase) {
                if (s->journal.phase == JOB_PHASE_REPORTING || s->journal.phase == JOB_PHASE_DONE)
                        s->has_percent = false;
                if (s->journal.phase == JOB_PHASE_REPORTING)
                        emit_updated(s, status_text(s),
                                     job_report_get(&s->journal.report, JOB_DETAIL_REASON));
                else if (s->journal.phase != JOB_PHASE_DONE)
                        emit_updated(s, status_text(s), NULL);
        }
        current_changed(s);
}

static void reconcile(Jobs *s, const JobList *list) {
        _cleanup_(job_decision_done) JobDecision d = {};
        JobContext c;
        int r;

        JobPhase before = s->journal.phase;

        context(s, &c);
        r = job_reconcile(&s->journal, list,
                          s->started ? JOB_RECONCILE_RECONNECT : JOB_RECONCILE_STARTUP, &c, &d);
        if (r < 0) {
                log_error_errno(r, "Failed to reconcile the job journal with the job list: %m");
                return;
        }
        s->started = true;
        apply(s, before, &d);
}

/* --- Answers from the platform --- */

static void on_list(Jobs *s, const void *data, size_t len) {
        _cleanup_(job_list_done) JobList list = {};
        int r;

        if (s->request_sent && s->request_sent->kind == OUT_LIST) {
                s->request_sent = outgoing_free(s->request_sent);
                event_disarm(s->request_timer);
        }
        r = message_decode_job_list(data, len, &list);
        if (r < 0) {
                log_warning("The platform's job list cannot be decoded (%s), ignoring.",
                            strerror(-r));
                check_waiters_done(s, -EBADMSG);
                return;
        }
        reconcile(s, &list);
        check_waiters_done(s, 0);
}

static void on_execution(Jobs *s, TopicKind kind, const char *topic_job, const void *data,
                         size_t len) {
        _cleanup_(job_execution_done) JobExecution e = {};
        JobEvent ev = { .type = JOB_EVENT_EXECUTION };
        int r;

        if (kind == TOPIC_JOB_GET_ACCEPTED && s->request_sent && s->request_sent->kind == OUT_JOB) {
                s->request_sent = outgoing_free(s->request_sent);
                event_disarm(s->request_timer);
        }
        r = message_decode_job_execution(data, len, &e);
        if (r < 0) {
                if (topic_job_id_valid(topic_job)) {
                        JobEvent u = { .type = JOB_EVENT_EXECUTION_UNREADABLE,
                                       .job_id = topic_job, .error = r };

                        log_event(LOG_WARNING, NULL, topic_job, NULL,
                                  "Job %s: the execution cannot be decoded (%s).", topic_job,
                                  strerror(-r));
                        run_event(s, &u);
                        return;
                }
                JobEvent u = { .type = JOB_EVENT_EXECUTION_UNREADABLE, .error = r };

                log_warning("A job notification from the platform cannot be decoded (%s: "
                            "malformed, or a job id that is not [a-zA-Z0-9_-]{1,64}); asking "
                            "for the job list.",
                            strerror(-r));
                run_event(s, &u);
                return;
        }
        if (r > 0 && !topic_job_id_valid(e.job_id)) {
                _cleanup_free_ char *esc = escape_control(e.job_id);

                log_warning("The platform sent a job with an invalid id \"%.80s\" (AWS job ids "
                            "are [a-zA-Z0-9_-]{1,64}); no status can be sent for it, ignoring.",
                            strempty(esc));
                return;
        }
        if (r > 0 && kind == TOPIC_JOB_GET_ACCEPTED && topic_job_id_valid(topic_job) &&
            !streq(topic_job, e.job_id)) {
                log_warning("The answer for job %s names job %s, ignoring.", topic_job,
                            e.job_id);
                return;
        }
        ev.execution = r > 0 ? &e : NULL;
        run_event(s, &ev);
}

static void on_update_answer(Jobs *s, bool accepted, const char *topic_job, const void *data,
                             size_t len) {
        _cleanup_(platform_error_done) PlatformError err = {};
        JobEvent ev = { .job_id = topic_job };

        /* Matched by job: an answer for another job's update (one re-sent, say, after the
         * next job began) still frees the way for the next update. */
        if (!s->update_sent || !streq_ptr(topic_job, s->update_sent->job_id)) {
                log_debug("An update answer for job %s that nothing waits for, ignoring.",
                          strempty(topic_job));
                return;
        }
        ev.progress = s->update_sent->progress;
        s->update_sent = outgoing_free(s->update_sent);
        event_disarm(s->update_timer);

        if (accepted)
                ev.type = JOB_EVENT_UPDATE_ACCEPTED;
        else {
                if (message_decode_error(data, len, &err) < 0) {
                        log_warning("The rejection of job %s's update cannot be decoded, "
                                    "taking it as InternalError.", topic_job);
                        err.error_code = strdup("InternalError");
                }
                ev.type = JOB_EVENT_UPDATE_REJECTED;
                ev.error_code = err.error_code;
                log_event(LOG_WARNING, NULL, topic_job, NULL,
                          "The platform rejected the status update of job %s: %s: %s",
                          topic_job, strempty(err.error_code), strempty(err.error_message));
        }
        run_event(s, &ev);
        send_next_update(s);
}

/* The job id a topic under a filter names; NULL when it names none or another kind. */
static char *topic_job_id(Jobs *s, const char *topic, TopicKind want) {
        char *id = NULL;
        TopicKind kind;

        if (topic_classify(topic, s->thing, NULL, &kind, &id) < 0 || kind != want) {
                free(id);
                log_debug("Message on %s is no %s, ignoring.", topic, topic_kind_to_string(want));
                return NULL;
        }
        return id;
}

static void get_rejected(Jobs *s, const char *id, const void *data, size_t len) {
        _cleanup_(platform_error_done) PlatformError err = {};
        JobEvent ev = { .type = JOB_EVENT_GET_REJECTED, .job_id = id };

        (void) message_decode_error(data, len, &err);
        log_warning("The platform rejected the request for %s: %s: %s",
                    id ? id : "the job list", strempty(err.error_code),
                    strempty(err.error_message));
        if (s->request_sent) {
                s->request_sent = outgoing_free(s->request_sent);
                event_disarm(s->request_timer);
        }
        if (!id)
                check_waiters_done(s, -EIO);
        ev.error_code = err.error_code;
        run_event(s, &ev);
}

static void on_notify_next(const char *topic, const void *data, size_t len, void *userdata) {
        on_execution(userdata, TOPIC_JOBS_NOTIFY_NEXT, NULL, data, len);
}

static void on_list_accepted(const char *topic, const void *data, size_t len, void *userdata) {
        on_list(userdata, data, len);
}

static void on_list_rejected(const char *topic, const void *data, size_t len, void *userdata) {
        get_rejected(userdata, NULL, data, len);
}

static void on_job_accepted(const char *topic, const void *data, size_t len, void *userdata) {
        _cleanup_free_ char *id = topic_job_id(userdata, topic, TOPIC_JOB_GET_ACCEPTED);

        if (id)
                on_execution(userdata, TOPIC_JOB_GET_ACCEPTED, id, data, len);
}

static void on_job_rejected(const char *topic, const void *data, size_t len, void *userdata) {
        _cleanup_free_ char *id = topic_job_id(userdata, topic, TOPIC_JOB_GET_REJECTED);

        if (id)
                get_rejected(userdata, id, data, len);
}

static void on_update_accepted(const char *topic, const void *data, size_t len, void *userdata) {
        _cleanup_free_ char *id = topic_job_id(userdata, topic, TOPIC_JOB_UPDATE_ACCEPTED);

        if (id)
                on_update_answer(userdata, true, id, data, len);
}

static void on_update_rejected(const char *topic, const void *data, size_t len, void *userdata) {
        _cleanup_free_ char *id = topic_job_id(userdata, topic, TOPIC_JOB_UPDATE_REJECTED);

        if (id)
                on_update_answer(userdata, false, id, data, len);
}

/* --- Progress --- */

static void set_progress(Jobs *s, unsigned percent, const char *step) {
        _cleanup_(job_report_done) JobReport r = JOB_REPORT_NULL;
        uint64_t now = event_now(s->event);

        percent = MIN(percent, 100U);
        if (s->has_percent && s->percent == percent)
                return;
        s->percent = percent;
        s->has_percent = true;
        emit_updated(s, status_text(s), NULL);
        current_changed(s);
        if (!job_progress_should_send(&s->throttle, percent, now))
                return;
        job_progress_sent(&s->throttle, percent, now);
        job_report_reset(&r, JOB_STATUS_IN_PROGRESS);
        if (job_report_set_progress(&r, percent) < 0 || job_report_set(&r, "step", step) < 0)
                return;
        queue_update(s, &r, true);
}

/* --- Download --- */

static void stop_download(Jobs *s) {
        s->download = firmware_download_free(s->download);
}

static int on_download_synced(FirmwareDownload *d, uint64_t offset, void *userdata) {
        Jobs *s = userdata;

        return job_journal_save_offset(s->dir, &s->journal, offset, now_realtime());
}

static void on_download_progress(FirmwareDownload *d, uint64_t done, uint64_t total,
                                 void *userdata) {
        Jobs *s = userdata;

        /* Progress: failures from here on are counted afresh. */
        backoff_reset(&s->backoff);
        set_progress(s, total > 0 ? (unsigned) MIN(done * 100 / total, UINT64_C(100)) : 0,
                     "downloading");
}

/* Free space the download must leave: what the observation spool may still take, the job
 * journal (written twice over during an atomic replace) and a margin. */
static uint64_t on_download_reserve(FirmwareDownload *d, void *userdata) {
        Jobs *s = userdata;
        uint64_t max = s->config->spool_max_bytes, used = 0;

        if (s->cb.spool_used_bytes)
                used = MIN(s->cb.spool_used_bytes(s->userdata), max);
        return max - used + 2 * JOB_JOURNAL_SIZE_MAX + SPACE_MARGIN;
}

static void on_download_finished(FirmwareDownload *d, const FirmwareDownloadResult *res,
                                 void *userdata) {
        Jobs *s = userdata;
        _cleanup_free_ char *message = res->message ? strdup(res->message) : NULL;
        JobEvent ev = { .type = JOB_EVENT_DOWNLOAD_DONE };

        if (res->complete)
                log_event(LOG_INFO, NULL, job_id(s), NULL,
                          "Job %s: firmware downloaded, %" PRIu64 " bytes%s.", job_id(s),
                          res->offset, s->journal.sha256 ? ", SHA-256 verified" : "");
        else {
                ev = (JobEvent) { .type = JOB_EVENT_DOWNLOAD_FAILED,
                                  .download_error = res->error,
                                  .offset = res->offset,
                                  .message = message ?: "out of memory" };
                log_event(LOG_INFO, NULL, job_id(s), NULL,
                          "Job %s: the download stopped after %" PRIu64 " bytes: %s.",
                          job_id(s), res->offset, strempty(message));
        }
        s->download = firmware_download_free(s->download); /* res goes with it */
        run_event(s, &ev);
}

static const FirmwareDownloadCallbacks download_callbacks = {
        .synced = on_download_synced,
        .progress = on_download_progress,
        .reserve = on_download_reserve,
        .finished = on_download_finished,
};

static void start_download(Jobs *s, const char *url, uint64_t offset) {
        _cleanup_free_ char *path = strdup_printf("%s/%s", s->dir, strempty(s->journal.file));
        FirmwareDownloadParams p = {
                .path = path,
                .url = url,
                .offset = offset,
                .size = s->journal.size,
                .sha256 = s->journal.sha256,
                .max_size = s->config->max_download_bytes,
        };
        int r;

        stop_download(s);
        job_progress_reset(&s->throttle);
        s->has_percent = false;
        log_event(LOG_INFO, NULL, job_id(s), NULL, "Job %s: downloading firmware %s%s.",
                  job_id(s), s->journal.firmware_id, offset > 0 ? " (resuming)" : "");
        r = path ? firmware_download_start(s->event, s->http, &p, &download_callbacks, s,
                                           &s->download)
                 : -ENOMEM;
        if (r < 0) {
                JobEvent ev = { .type = JOB_EVENT_DOWNLOAD_FAILED,
                                .download_error = JOB_DOWNLOAD_LOCAL,
                                .offset = offset,
                                .message = strerror(-r) };

                log_event(LOG_ERR, NULL, job_id(s), NULL,
                          "Job %s: cannot start the download: %s", job_id(s), strerror(-r));
                run_event(s, &ev);
        }
}

/* --- Hooks --- */

static const char *hook_verb(Jobs *s) {
        switch (s->journal.phase) {
        case JOB_PHASE_INSTALLING:
                return "install";
        case JOB_PHASE_CONFIRMING:
                return "confirm";
        default:
                return "rollback";
        }
}

static void on_hook_progress(Hook *h, unsigned percent, void *userdata) {
        Jobs *s = userdata;

        set_progress(s, percent, s->journal.phase == JOB_PHASE_INSTALLING ? "installing"
                                 : s->journal.phase == JOB_PHASE_CONFIRMING ? "confirming"
                                                                            : "rolling back");
}

static void on_hook_line(Hook *h, const char *line, void *userdata) {
        Jobs *s = userdata;
        _cleanup_free_ char *e = escape_control(line);

        log_event(LOG_INFO, NULL, job_id(s), NULL, "installer %s: %s", hook_verb(s),
                  strempty(e));
}

static void on_hook_ended(Hook *h, HookEnd end, int code, const char *last_line,
                          void *userdata) {
        Jobs *s = userdata;
        _cleanup_free_ char *line = last_line ? strdup(last_line) : NULL;
        JobEvent ev = { .code = code, .message = line };

        s->hook = hook_free(s->hook, false);
        ev.type = end == HOOK_EXITED   ? JOB_EVENT_HOOK_EXITED
                  : end == HOOK_KILLED ? JOB_EVENT_HOOK_KILLED
                                       : JOB_EVENT_HOOK_TIMEOUT;
        log_event(end == HOOK_EXITED ? LOG_INFO : LOG_WARNING, NULL, job_id(s), NULL,
                  "Job %s: INSTALLER %s %s %d.", job_id(s), hook_verb(s),
                  end == HOOK_EXITED   ? "exited with status"
                  : end == HOOK_KILLED ? "was killed by signal"
                                       : "did not finish in time, signal",
                  end == HOOK_TIMEOUT ? SIGTERM : code);
        run_event(s, &ev);
}

static const HookCallbacks hook_callbacks = {
        .progress = on_hook_progress,
        .line = on_hook_line,
        .ended = on_hook_ended,
};

/* INSTALLER install FILE, confirm or rollback, with the job's environment (SPEC §6). */
static void run_hook(Jobs *s, JobAction which) {
        _cleanup_free_ char *file = NULL, *e_job = NULL, *e_fw = NULL, *e_dep = NULL,
                            *e_thing = NULL;
        const char *installer = s->config->installer;
        const char *verb = which == JOB_ACTION_INSTALL   ? "install"
                           : which == JOB_ACTION_CONFIRM ? "confirm"
                                                         : "rollback";
        JobEvent ev = { .type = JOB_EVENT_HOOK_EXITED, .code = 127 };
        int r;

        s->hook = hook_free(s->hook, false);
        file = strdup_printf("%s/%s", s->dir, strempty(s->journal.file));
        e_job = strdup_printf("LODEV_JOB_ID=%s", job_id(s));
        e_fw = strdup_printf("LODEV_FIRMWARE_ID=%s", strempty(s->journal.firmware_id));
        e_dep = strdup_printf("LODEV_DEPLOYMENT_ID=%s", strempty(s->journal.deployment_id));
        e_thing = strdup_printf("LODEV_THING_NAME=%s", strempty(s->thing));
        if (!file || !e_job || !e_fw || !e_dep || !e_thing) {
                log_oom();
                ev.message = "out of memory";
                run_event(s, &ev);
                return;
        }
        char *argv[] = { (char *) installer, (char *) verb,
                         which == JOB_ACTION_INSTALL ? file : NULL, NULL };
        char *env[] = { e_job, e_fw, e_dep, e_thing, (char *) "LODEV_PROGRESS_FD=3", NULL };

        job_progress_reset(&s->throttle);
        s->has_percent = false;
        log_event(LOG_INFO, NULL, job_id(s), NULL, "Job %s: running %s %s.", job_id(s),
                  installer, verb);
        r = hook_spawn(s->event, argv, env, (uint64_t) s->config->install_timeout * 1000000,
                       true, &hook_callbacks, s, &s->hook);
        if (r < 0) {
                _cleanup_free_ char *msg = strdup_printf("cannot run %s: %s", installer,
                                                          strerror(-r));

                ev.message = msg;
                log_event(LOG_ERR, NULL, job_id(s), NULL, "Job %s: %s", job_id(s),
                          strempty(msg));
                run_event(s, &ev);
        }
}

/* --- Reboot --- */

static void on_reboot_state(FirmwareReboot *r, FirmwareRebootState state, void *userdata) {
        Jobs *s = userdata;

        switch (state) {
        case FIRMWARE_REBOOT_DELAYED:
                log_event(LOG_NOTICE, NULL, job_id(s), NULL,
                          "Job %s: the reboot command runs again shortly (try %u of %u).",
                          job_id(s), s->journal.reboot_tries, s->config->max_reboot_tries);
                break;
        case FIRMWARE_REBOOT_INHIBITED:
                log_event(LOG_NOTICE, NULL, job_id(s), NULL,
                          "Job %s: the reboot waits for %zu inhibitor(s), at most %u s.",
                          job_id(s), inhibitors_count(s->inhibitors),
                          s->config->max_reboot_delay);
                break;
        case FIRMWARE_REBOOT_RUNNING_ANYWAY:
                log_event(LOG_WARNING, NULL, job_id(s), NULL,
                          "Job %s: reboot inhibitors still held after firmware.max_reboot_delay "
                          "(%u s); rebooting anyway.",
                          job_id(s), s->config->max_reboot_delay);
                _fallthrough_;
        case FIRMWARE_REBOOT_RUNNING:
                log_event(LOG_NOTICE, NULL, job_id(s), NULL, "Job %s: rebooting with \"%s\".",
                          job_id(s), s->config->reboot_command);
                break;
        case FIRMWARE_REBOOT_WAITING:
                log_event(LOG_NOTICE, NULL, job_id(s), NULL,
                          "Job %s: reboot requested; the job is confirmed after the restart "
                          "(still this boot in %u s: the command runs again).",
                          job_id(s), s->config->reboot_timeout);
                break;
        default:
                break;
        }
}

static void on_reboot_failed(FirmwareReboot *r, bool timed_out, const char *message,
                             void *userdata) {
        Jobs *s = userdata;
        _cleanup_free_ char *copy = message ? strdup(message) : NULL;
        JobEvent ev = { .type = timed_out ? JOB_EVENT_REBOOT_TIMEOUT : JOB_EVENT_REBOOT_FAILED,
                        .code = (int) s->config->reboot_timeout,
                        .message = copy };

        if (timed_out)
                log_event(LOG_WARNING, NULL, job_id(s), NULL,
                          "Job %s: still the same boot %u s after the reboot command.",
                          job_id(s), s->config->reboot_timeout);
        else
                log_event(LOG_WARNING, NULL, job_id(s), NULL, "Job %s: the reboot failed: %s.",
                          job_id(s), strempty(copy));
        run_event(s, &ev);
}

static const FirmwareRebootCallbacks reboot_callbacks = {
        .state_changed = on_reboot_state,
        .failed = on_reboot_failed,
};

static void start_reboot(Jobs *s, uint64_t delay_usec) {
        int r;

        s->has_percent = false;
        r = firmware_reboot_request(s->reboot, s->config->reboot_command, delay_usec,
                                    (uint64_t) s->config->max_reboot_delay * 1000000,
                                    (uint64_t) s->config->reboot_timeout * 1000000);
        if (r < 0) {
                JobEvent ev = { .type = JOB_EVENT_REBOOT_FAILED, .message = strerror(-r) };

                run_event(s, &ev);
        }
}

static void on_inhibitors_changed(void *userdata) {
        Jobs *s = userdata;

        if (s->cb.inhibitors_changed)
                s->cb.inhibitors_changed(s->userdata);
        if (firmware_reboot_state(s->reboot) == FIRMWARE_REBOOT_INHIBITED &&
            inhibitors_count(s->inhibitors) == 0)
                log_event(LOG_INFO, NULL, job_id(s), NULL,
                          "Job %s: the last reboot inhibitor was released.", job_id(s));
        firmware_reboot_inhibitors_changed(s->reboot);
}

int jobs_inhibit_reboot(Jobs *s, const char *who, const char *why, const char *owner,
                        int *ret_fd) {
        int r = inhibitors_add(s->inhibitors, who, why, owner, ret_fd);
        _cleanup_free_ char *e_who = NULL, *e_why = NULL;

        if (r < 0)
                return r;
        e_who = escape_control(who);
        e_why = escape_control(why);
        log_info("Reboot inhibited by \"%s\" (%s): %s.", strempty(e_who), strempty(owner),
                 strempty(e_why));
        return 0;
}

const Inhibitors *jobs_inhibitors(const Jobs *s) {
        return s->inhibitors;
}

/* --- Lifecycle --- */

int jobs_check(Jobs *s, JobsCheckDone done, void *userdata) {
        if (!s->connection || connection_state(s->connection) != CONNECTION_ONLINE)
                return -ENOTCONN;
        if (s->n_waiters >= JOBS_CHECK_WAITERS_MAX)
                return -EBUSY;
        s->waiters[s->n_waiters++] = (CheckWaiter) { .done = done, .userdata = userdata };
        request_list(s);
        return 0;
}

static int subscribe(Jobs *s, Connection *c, TopicKind kind, bool filter,
                     void (*handler)(const char *topic, const void *data, size_t len,
                                     void *userdata)) {
        _cleanup_free_ char *t = NULL;
        int r;

        r = filter ? topic_build_filter(kind, s->thing, NULL, &t)
                   : topic_build(kind, s->thing, NULL, NULL, &t);
        if (r < 0)
                return r;
        return connection_subscribe(c, t, handler, s);
}

int jobs_attach(Jobs *s, Connection *c) {
        static const struct {
                TopicKind kind;
                bool filter; /* <thing>/jobs/+/...: one filter for every job */
                void (*handler)(const char *topic, const void *data, size_t len,
                                void *userdata);
        } topics[] = {
                { TOPIC_JOBS_NOTIFY_NEXT, false, on_notify_next },
                { TOPIC_JOBS_GET_ACCEPTED, false, on_list_accepted },
                { TOPIC_JOBS_GET_REJECTED, false, on_list_rejected },
                { TOPIC_JOB_GET_ACCEPTED, true, on_job_accepted },
                { TOPIC_JOB_GET_REJECTED, true, on_job_rejected },
                { TOPIC_JOB_UPDATE_ACCEPTED, true, on_update_accepted },
                { TOPIC_JOB_UPDATE_REJECTED, true, on_update_rejected },
        };
        int r;

        r = free_and_strdup(&s->thing, connection_thing_name(c));
        if (r < 0)
                return r;
        for (size_t i = 0; i < ELEMENTSOF(topics); i++) {
                r = subscribe(s, c, topics[i].kind, topics[i].filter, topics[i].handler);
                if (r < 0)
                        return r;
        }
        r = connection_add_channel(c, CHANNEL_CONTROL, &channel_ops, s, &s->channel);
        if (r < 0)
                return r;
        s->connection = c;

        /* After a reboot the new firmware must be confirmed (or rolled back) whether the
         * platform can be reached or not; these decisions do not depend on the list. */
        if (!s->started && (s->journal.phase == JOB_PHASE_AWAITING_REBOOT ||
                            s->journal.phase == JOB_PHASE_CONFIRMING)) {
                JobList empty = {};
                reconcile(s, &empty);
        }
        return 0;
}

void jobs_detach(Jobs *s) {
        check_waiters_done(s, -ENOTCONN);
        for (size_t i = 0; i < s->n_out; i++)
                outgoing_done(&s->out[i]);
        s->n_out = 0;
        /* An update waiting for its answer is sent again on the next connection. */
        if (s->update_sent && !s->update_sent->progress && !s->update_next)
                s->update_next = TAKE_PTR(s->update_sent);
        s->update_sent = outgoing_free(s->update_sent);
        s->request_sent = outgoing_free(s->request_sent);
        event_disarm(s->request_timer);
        event_disarm(s->update_timer);
        s->channel = NULL;
        s->connection = NULL;
}

static int read_boot_id(char **ret) {
        const char *path = getenv(JOBS_BOOT_ID_ENV);
        _cleanup_free_ char *data = NULL;
        size_t len;
        int r;

        r = read_file(path ?: "/proc/sys/kernel/random/boot_id", 128, &data, &len);
        if (r < 0)
                return r;
        strstrip(data);
        if (isempty(data))
                return -EBADMSG;
        *ret = TAKE_PTR(data);
        return 0;
}

/* Downloads of jobs that are no longer current are left-overs of a crash. */
static void remove_stale_downloads(Jobs *s) {
        _cleanup_(closedirp) DIR *d = opendir(s->dir);
        struct dirent *de;

        if (!d)
                return;
        while ((de = readdir(d))) {
                if (!startswith(de->d_name, "firmware-"))
                        continue;
                if (s->journal.file && streq(de->d_name, s->journal.file) &&
                    (s->journal.phase == JOB_PHASE_DOWNLOADING ||
                     s->journal.phase == JOB_PHASE_INSTALLING))
                        continue;
                (void) unlinkat(dirfd(d), de->d_name, 0);
        }
}

int jobs_new(sd_event *event, HttpClient *http, const Config *config, const JobsCallbacks *cb,
             void *userdata, Jobs **ret) {
        Jobs *s;
        int r;

        s = calloc(1, sizeof(*s));
        if (!s)
                return log_oom();
        *s = (Jobs) {
                .event = sd_event_ref(event),
                .http = http,
                .config = config,
                .cb = *cb,
                .userdata = userdata,
                .journal = JOB_JOURNAL_NULL,
                .retry_report = JOB_REPORT_NULL,
        };
        backoff_init(&s->backoff, RETRY_MIN_USEC, RETRY_MAX_USEC);
        s->dir = strdup_printf("%s/job", config->state_dir);
        if (!s->dir) {
                jobs_free(s);
                return log_oom();
        }
        r = inhibitors_new(event, on_inhibitors_changed, s, &s->inhibitors);
        if (r >= 0)
                r = firmware_reboot_new(event, s->inhibitors, &reboot_callbacks, s, &s->reboot);
        if (r < 0) {
                jobs_free(s);
                return log_oom();
        }
        r = read_boot_id(&s->boot_id);
        if (r < 0)
                log_warning_errno(r, "Cannot read the boot id, a restart of lodevd cannot be "
                                     "told from a reboot: %m");

        r = job_journal_load(s->dir, &s->journal);
        if (r == -EBADMSG || r == -EFBIG) {
                log_event(LOG_ERR, NULL, NULL, NULL,
                          "The job journal %s/" JOB_JOURNAL_FILE " is corrupt; removing it. "
                          "A job the platform lists as IN_PROGRESS will be failed.",
                          s->dir);
                (void) job_journal_remove(s->dir);
                s->journal = JOB_JOURNAL_NULL;
                s->journal.corrupt = true;
        } else if (r == -EPROTONOSUPPORT) {
                /* A later lodevd wrote it (this one runs after a fallback, say): what it says
                 * cannot be read, and is not deleted. */
                r = job_journal_set_aside(s->dir);
                if (r < 0) {
                        log_error_errno(r, "The job journal %s/" JOB_JOURNAL_FILE " was written "
                                        "by a newer lodevd and cannot be set aside: %m",
                                        s->dir);
                        jobs_free(s);
                        return r;
                }
                log_event(LOG_ERR, NULL, NULL, NULL,
                          "The job journal %s/" JOB_JOURNAL_FILE " was written by a newer "
                          "lodevd; kept as " JOB_JOURNAL_FILE ".newer. A job the platform "
                          "lists as IN_PROGRESS will be failed.",
                          s->dir);
                s->journal = JOB_JOURNAL_NULL;
                s->journal.corrupt = true;
        } else if (r < 0 && r != -ENOENT) {
                log_error_errno(r, "Failed to read the job journal in %s: %m", s->dir);
                jobs_free(s);
                return r;
        } else if (r >= 0)
                log_event(LOG_INFO, NULL, s->journal.job_id, NULL,
                          "Job %s from before the restart, phase %s.", s->journal.job_id,
                          job_phase_to_string(s->journal.phase));
        remove_stale_downloads(s);
        *ret = s;
        return 0;
}

Jobs *jobs_free(Jobs *s) {
        if (!s)
                return NULL;
        check_waiters_done(s, -ECANCELED);
        stop_download(s);
        s->hook = hook_free(s->hook, true);
        s->reboot = firmware_reboot_free(s->reboot);
        for (size_t i = 0; i < s->n_out; i++)
                outgoing_done(&s->out[i]);
        outgoing_free(s->request_sent);
        outgoing_free(s->update_sent);
        outgoing_free(s->update_next);
        sd_event_source_disable_unref(s->request_timer);
        sd_event_source_disable_unref(s->update_timer);
        sd_event_source_disable_unref(s->retry_timer);
        inhibitors_free(s->inhibitors);
        job_report_done(&s->retry_report);
        free(s->retry_job_id);
        job_journal_done(&s->journal);
        free(s->thing);
        free(s->boot_id);
        free(s->dir);
        sd_event_unref(s->event);
        free(s);
        return NULL;
}
