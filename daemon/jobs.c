/* SPDX-License-Identifier: MIT */
#include <inttypes.h>
#include <systemd/sd-id128.h>
#include <time.h>

#include "event-util.h"
#include "fileio.h"
#include "backoff.h"
#include "firmware-download.h"
#include "job.h"
#include "jobs-channel.h"
#include "jobs-steps.h"
#include "jobs.h"
#include "log.h"
#include "topic.h"
#include "util.h"

/* Retries of requests the platform refused for a passing reason, and of the journal. */
#define RETRY_MIN_USEC (UINT64_C(1) * 1000000)
#define RETRY_MAX_USEC (UINT64_C(120) * 1000000)
/* Room left free beside the firmware, the spool's room and the journal. */
#define SPACE_MARGIN (UINT64_C(1) * 1024 * 1024)
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
        /* < 0 while the journal cannot be read (EIO, EMFILE, EACCES, ...): what it holds is
         * unknown, so nothing is decided, nothing asked of the platform and nothing removed
         * until a retry reads it. */
        int journal_error;
        Backoff journal_backoff;
        sd_event_source *journal_timer;

        Connection *connection;
        JobsChannel *channel;
        char *thing;

        /* A GET_JOB or REPORT decided "with backoff". */
        Backoff backoff;
        sd_event_source *retry_timer;
        JobAction retry_action;
        char *retry_job_id;
        JobReport retry_report;

        CheckWaiter waiters[JOBS_CHECK_WAITERS_MAX];
        size_t n_waiters;

        FirmwareDownload *download;
        JobSteps *steps; /* the hooks and the reboot */

        unsigned percent;
        bool has_percent;
        JobProgressThrottle throttle;
        char percent_text[8];
};

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

/* --- Requests and updates --- */

static void request_list(Jobs *s) {
        jobs_channel_request_list(s->channel);
}

static void request_job(Jobs *s, const char *id) {
        jobs_channel_request_job(s->channel, id);
}

static void queue_update(Jobs *s, const JobReport *report, bool progress) {
        _cleanup_free_ char *payload = NULL;
        int r;

        if (!job_id(s))
                return;
        r = job_report_encode(report, &payload);
        if (r >= 0)
                r = jobs_channel_update(s->channel, job_id(s), payload, progress);
        if (r < 0)
                log_event(LOG_ERR, NULL, job_id(s), NULL,
                          "Cannot queue the status update of the job: %s", strerror(-r));
}

static void check_waiters_done(Jobs *s, int error) {
        size_t n = s->n_waiters;
        CheckWaiter w[JOBS_CHECK_WAITERS_MAX];

        memcpy(w, s->waiters, n * sizeof(CheckWaiter));
        s->n_waiters = 0;
        for (size_t i = 0; i < n; i++)
                w[i].done(error, w[i].userdata);
}

static void on_channel_online(void *userdata) {
        Jobs *s = userdata;

        /* Every (re)connect: what happened while away is in the list. */
        if (s->journal_error >= 0)
                request_list(s);
}

static void on_channel_offline(void *userdata) {
        check_waiters_done(userdata, -ENOTCONN);
}

static void on_list_timeout(void *userdata) {
        check_waiters_done(userdata, -ETIMEDOUT);
}

static const JobsChannelCallbacks channel_callbacks = {
        .online = on_channel_online,
        .offline = on_channel_offline,
        .list_timeout = on_list_timeout,
};

/* --- Applying decisions --- */

static void apply(Jobs *s, JobPhase before, JobDecision *d);
static void stop_download(Jobs *s);
static void start_download(Jobs *s, const char *url, uint64_t offset);
static void set_progress(Jobs *s, unsigned percent, const char *step);

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
        int r;

        if (!s->journal.file)
                return;
        path = strdup_printf("%s/%s", s->dir, s->journal.file);
        r = path ? firmware_download_remove(s->event, path) : -ENOMEM;
        if (r < 0)
                log_event(LOG_WARNING, NULL, job_id(s), NULL,
                          "Failed to remove the firmware download %s, ignoring: %s",
                          strempty(path), strerror(-r));
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
        _cleanup_free_ char *file = strdup_printf("%s/%s", s->dir, strempty(s->journal.file));
        const JobStepsJob steps_job = {
                .job_id = job_id(s),
                .firmware_id = s->journal.firmware_id,
                .deployment_id = s->journal.deployment_id,
                .thing = s->thing,
                .file = file,
                .reboot_tries = s->journal.reboot_tries,
        };
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
                job_progress_reset(&s->throttle);
                s->has_percent = false;
                job_steps_run_hook(s->steps, d->action, &steps_job);
                break;
        case JOB_ACTION_REBOOT:
                s->has_percent = false;
                job_steps_reboot(s->steps, d->delay_usec, &steps_job);
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
                job_steps_cancel_reboot(s->steps);

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

        jobs_channel_request_answered(s->channel, true);
        if (s->journal_error < 0) {
                /* Not asked for while the journal cannot be read (an answer to a request of
                 * the lodevd before this one, kept for the session): asked again once it is. */
                check_waiters_done(s, s->journal_error);
                return;
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

        if (s->journal_error < 0) {
                log_debug("A job execution while the job journal cannot be read; the list is "
                          "asked for once it is read.");
                return;
        }
        if (kind == TOPIC_JOB_GET_ACCEPTED)
                jobs_channel_request_answered(s->channel, false);
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
        if (!jobs_channel_update_answered(s->channel, topic_job, &ev.progress)) {
                log_debug("An update answer for job %s that nothing waits for, ignoring.",
                          strempty(topic_job));
                return;
        }

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
        jobs_channel_requests_answered(s->channel);
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

/* --- Hooks and the reboot --- */

static void on_step_ended(const JobEvent *ev, void *userdata) {
        run_event(userdata, ev);
}

static void on_step_progress(unsigned percent, const char *step, void *userdata) {
        set_progress(userdata, percent, step);
}

static void on_inhibitors_changed(void *userdata) {
        Jobs *s = userdata;

        if (s->cb.inhibitors_changed)
                s->cb.inhibitors_changed(s->userdata);
}

static const JobStepsCallbacks steps_callbacks = {
        .ended = on_step_ended,
        .progress = on_step_progress,
        .inhibitors_changed = on_inhibitors_changed,
};

int jobs_inhibit_reboot(Jobs *s, const char *who, const char *why, const char *owner,
                        int *ret_fd) {
        int r = inhibitors_add(job_steps_inhibitors(s->steps), who, why, owner, ret_fd);
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
        return job_steps_inhibitors(s->steps);
}

/* --- Lifecycle --- */

int jobs_check(Jobs *s, JobsCheckDone done, void *userdata) {
        if (!s->connection || connection_state(s->connection) != CONNECTION_ONLINE)
                return -ENOTCONN;
        if (s->journal_error < 0)
                return s->journal_error;
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

/* After a reboot the new firmware must be confirmed (or rolled back) whether the platform can
 * be reached or not; these decisions do not depend on the list. */
static void confirm_without_list(Jobs *s) {
        if (!s->started && s->journal_error >= 0 &&
            (s->journal.phase == JOB_PHASE_AWAITING_REBOOT ||
             s->journal.phase == JOB_PHASE_CONFIRMING)) {
                JobList empty = {};
                reconcile(s, &empty);
        }
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
        r = jobs_channel_attach(s->channel, c, s->thing);
        if (r < 0)
                return r;
        s->connection = c;
        confirm_without_list(s);
        return 0;
}

void jobs_detach(Jobs *s) {
        check_waiters_done(s, -ENOTCONN);
        jobs_channel_detach(s->channel);
        s->connection = NULL;
}

/* The kernel's boot id, which tells a reboot from a restart of lodevd alone (SPEC §6).
 * libsystemd reads /proc/sys/kernel/random/boot_id to its end, as a pseudo-file needs. In
 * the UUID form the kernel shows, as job journals written before have it. */
static int read_boot_id(char **ret) {
        char s[SD_ID128_UUID_STRING_MAX];
        sd_id128_t id;
        char *p;
        int r;

        r = sd_id128_get_boot(&id);
        if (r < 0)
                return r;
        p = strdup(sd_id128_to_uuid_string(id, s));
        if (!p)
                return -ENOMEM;
        *ret = p;
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
                _cleanup_free_ char *path = strdup_printf("%s/%s", s->dir, de->d_name);
                if (path)
                        (void) firmware_download_remove(s->event, path);
        }
}

static int arm_journal_retry(Jobs *s);

/* Reads the journal into s->journal: 0 once it is settled (read, none, or a corrupt or newer
 * one dealt with), -errno when it cannot be read now. */
static int load_journal(Jobs *s) {
        int r;

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
                if (r < 0)
                        return r; /* tried again, like a journal that cannot be read */
                log_event(LOG_ERR, NULL, NULL, NULL,
                          "The job journal %s/" JOB_JOURNAL_FILE " was written by a newer "
                          "lodevd; kept as " JOB_JOURNAL_FILE ".newer. A job the platform "
                          "lists as IN_PROGRESS will be failed.",
                          s->dir);
                s->journal = JOB_JOURNAL_NULL;
                s->journal.corrupt = true;
        } else if (r < 0 && r != -ENOENT)
                return r;
        else if (r >= 0)
                log_event(LOG_INFO, NULL, s->journal.job_id, NULL,
                          "Job %s from before the restart, phase %s.", s->journal.job_id,
                          job_phase_to_string(s->journal.phase));
        return 0;
}

static int on_journal_retry(sd_event_source *t, uint64_t usec, void *userdata) {
        Jobs *s = userdata;
        int r;

        r = load_journal(s);
        if (r < 0) {
                log_debug_errno(r, "The job journal in %s still cannot be read: %m", s->dir);
                s->journal_error = r;
                r = arm_journal_retry(s);
                if (r < 0)
                        log_error_errno(r, "Failed to arm the job journal's retry timer: %m");
                return 0;
        }
        log_info("The job journal in %s can be read again.", s->dir);
        s->journal_error = 0;
        backoff_reset(&s->journal_backoff);
        remove_stale_downloads(s);
        current_changed(s);
        confirm_without_list(s);
        if (s->connection && connection_state(s->connection) == CONNECTION_ONLINE)
                request_list(s);
        return 0;
}

static int arm_journal_retry(Jobs *s) {
        return event_arm_timer(s->event, &s->journal_timer,
                               backoff_next(&s->journal_backoff, random_u64()), 0, false,
                               on_journal_retry, s, "job-journal-retry");
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
        r = jobs_channel_new(event, &channel_callbacks, s, &s->channel);
        if (r >= 0)
                r = job_steps_new(event, config, &steps_callbacks, s, &s->steps);
        if (r < 0) {
                jobs_free(s);
                return log_oom();
        }
        r = read_boot_id(&s->boot_id);
        if (r < 0)
                log_warning_errno(r, "Cannot read the boot id, a restart of lodevd cannot be "
                                     "told from a reboot: %m");

        backoff_init(&s->journal_backoff, RETRY_MIN_USEC, RETRY_MAX_USEC);
        r = load_journal(s);
        if (r < 0) {
                log_event(LOG_ERR, LODEV_MESSAGE_JOB_JOURNAL_UNREADABLE, NULL, NULL,
                          "Cannot read the job journal in %s: %s. No job runs, none is asked "
                          "for and nothing there is removed until it can be read; trying "
                          "again.",
                          s->dir, strerror(-r));
                s->journal_error = r;
                r = arm_journal_retry(s);
                if (r < 0) {
                        jobs_free(s);
                        return r;
                }
        } else
                remove_stale_downloads(s);
        *ret = s;
        return 0;
}

Jobs *jobs_free(Jobs *s) {
        if (!s)
                return NULL;
        check_waiters_done(s, -ECANCELED);
        stop_download(s);
        s->steps = job_steps_free(s->steps);
        jobs_channel_free(s->channel);
        sd_event_source_disable_unref(s->retry_timer);
        sd_event_source_disable_unref(s->journal_timer);
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
