/* SPDX-License-Identifier: MIT */
/* The decisions of the job state machine (the table in job.h), the names of phases and
 * actions, and the progress throttle. The journal and its reports are in job-journal.c. */
#include <stdarg.h>
#include <strings.h>

#include "job.h"
#include "topic.h"
#include "util.h"

/* --- Names --- */

static const char *const job_phase_table[_JOB_PHASE_MAX] = {
        [JOB_PHASE_NONE] = "none",
        [JOB_PHASE_ACCEPTED] = "accepted",
        [JOB_PHASE_DOWNLOADING] = "downloading",
        [JOB_PHASE_INSTALLING] = "installing",
        [JOB_PHASE_AWAITING_REBOOT] = "awaiting-reboot",
        [JOB_PHASE_CONFIRMING] = "confirming",
        [JOB_PHASE_REPORTING] = "reporting",
        [JOB_PHASE_DONE] = "done",
};

DEFINE_STRING_TABLE_LOOKUP(job_phase, JobPhase);

static const char *const job_action_table[_JOB_ACTION_MAX] = {
        [JOB_ACTION_NONE] = "none",         [JOB_ACTION_GET_LIST] = "get-list",
        [JOB_ACTION_GET_JOB] = "get-job",   [JOB_ACTION_REPORT] = "report",
        [JOB_ACTION_DOWNLOAD] = "download", [JOB_ACTION_INSTALL] = "install",
        [JOB_ACTION_REBOOT] = "reboot",     [JOB_ACTION_CONFIRM] = "confirm",
        [JOB_ACTION_ABANDON] = "abandon",
};

DEFINE_STRING_TABLE_LOOKUP_TO_STRING(job_action, JobAction);

static bool phase_active(JobPhase p) {
        return p >= JOB_PHASE_ACCEPTED && p <= JOB_PHASE_REPORTING;
}

/* --- Decisions --- */

void job_decision_done(JobDecision *d) {
        if (!d)
                return;
        job_report_done(&d->report);
        *d = (JobDecision) { .report = JOB_REPORT_NULL };
}

static void decision_init(JobDecision *d) {
        *d = (JobDecision) { .action = JOB_ACTION_NONE, .report = JOB_REPORT_NULL };
}

bool job_error_code_retryable(const char *code) {
        return code && (streq(code, "RequestThrottled") || streq(code, "InternalError") ||
                        streq(code, "ResourceNotFound"));
}

static bool error_code_moved_on(const char *code) {
        return code && (streq(code, "InvalidStateTransition") ||
                        streq(code, "TerminalStateReached") || streq(code, "VersionMismatch"));
}

static bool same_execution(const JobJournal *j, const char *job_id, int64_t execution_number) {
        /* A new execution of the same job id is a new run that the platform asked for. */
        return j->job_id && job_id && streq(j->job_id, job_id) &&
               (j->execution_number < 0 || execution_number < 0 ||
                j->execution_number == execution_number);
}

/* How the platform lists the journal's job: IN_PROGRESS, QUEUED or _JOB_STATUS_INVALID. */
static JobStatus journal_listed(const JobJournal *j, const JobList *list) {
        for (size_t i = 0; i < list->n_in_progress; i++)
                if (same_execution(j, list->in_progress[i].job_id,
                                   list->in_progress[i].execution_number))
                        return JOB_STATUS_IN_PROGRESS;
        for (size_t i = 0; i < list->n_queued; i++)
                if (same_execution(j, list->queued[i].job_id, list->queued[i].execution_number))
                        return JOB_STATUS_QUEUED;
        return _JOB_STATUS_INVALID;
}

/* The journal changed within its phase: save it before acting. */
static void touch(JobJournal *j, const JobContext *c, JobDecision *d) {
        j->updated_usec = c->now_usec;
        d->save = true;
}

/* The one way a job changes phase (grep enter_phase for every transition): sets the phase,
 * resets what the new phase must not inherit from the old one, and marks the journal for
 * saving. What the new phase starts with (a report, a boot id) the caller sets afterwards. */
static void enter_phase(JobJournal *j, JobPhase phase, const JobContext *c, JobDecision *d) {
        switch (phase) {
        case JOB_PHASE_ACCEPTED:
                job_report_reset(&j->report, _JOB_STATUS_INVALID);
                j->boot_id = mfree(j->boot_id);
                j->attempts = 0;
                _fallthrough_;
        case JOB_PHASE_DOWNLOADING:
                j->offset = j->failed_offset = 0;
                j->download_tries = 0;
                break;
        case JOB_PHASE_INSTALLING:
        case JOB_PHASE_AWAITING_REBOOT:
                /* Restarts are counted from the step that can cause them. */
                j->attempts = 0;
                break;
        default:
                break;
        }
        /* A fresh URL is wanted when a download starts, at no other change of phase. */
        j->want_url = phase == JOB_PHASE_DOWNLOADING;
        j->report_tries = 0;
        j->phase = phase;
        touch(j, c, d);
}

/* A fresh journal for job_id; the caller fills in the rest and swaps it in. */
static int journal_new(const char *job_id, int64_t execution_number, int64_t version_number,
                       const JobContext *c, JobJournal *ret) {
        JobJournal n = JOB_JOURNAL_NULL;
        int r;

        n.job_id = strdup(job_id);
        if (!n.job_id)
                return -ENOMEM;
        r = job_download_file_name(job_id, &n.file);
        if (r < 0) {
                job_journal_done(&n);
                return r;
        }
        n.execution_number = execution_number;
        n.version_number = version_number;
        n.accepted_usec = n.updated_usec = c->now_usec;
        *ret = n;
        return 0;
}

static void journal_replace(JobJournal *j, JobJournal *n) {
        bool corrupt = j->corrupt;

        job_journal_done(j);
        *j = *n;
        j->corrupt = corrupt;
        *n = JOB_JOURNAL_NULL;
}

/* The terminal status is decided: save it in REPORTING, then send it. */
static int decide_final(JobJournal *j, JobStatus status, const char *reason,
                        const char *stderr_line, const JobContext *c, JobDecision *d) {
        _cleanup_(job_report_done) JobReport r = JOB_REPORT_NULL;
        int k;

        r.status = status;
        if (status == JOB_STATUS_SUCCEEDED && (k = job_report_set_progress(&r, 100)) < 0)
                return k;
        if ((k = job_report_set(&r, JOB_DETAIL_REASON, reason)) < 0 ||
            (k = job_report_set(&r, JOB_DETAIL_STDERR, stderr_line)) < 0)
                return k;
        k = job_report_copy(&r, &d->report);
        if (k < 0)
                return k;

        enter_phase(j, JOB_PHASE_REPORTING, c, d);
        job_report_done(&j->report);
        j->report = r;
        r = JOB_REPORT_NULL;
        d->action = JOB_ACTION_REPORT;
        d->remove_download = true;
        d->job_id = j->job_id;
        return 0;
}

static int decide_finalf(JobJournal *j, JobStatus status, const char *stderr_line,
                         const JobContext *c, JobDecision *d, const char *fmt, ...)
        _printf_(6, 7);

static int decide_finalf(JobJournal *j, JobStatus status, const char *stderr_line,
                         const JobContext *c, JobDecision *d, const char *fmt, ...) {
        _cleanup_free_ char *reason = NULL;
        va_list ap;
        int r;

        va_start(ap, fmt);
        r = vasprintf(&reason, fmt, ap);
        va_end(ap);
        if (r < 0) {
                reason = NULL;
                return -ENOMEM;
        }
        return decide_final(j, status, reason, stderr_line, c, d);
}

/* The saved report again, word for word. */
static int decide_resend(JobJournal *j, JobDecision *d) {
        int r = job_report_copy(&j->report, &d->report);

        if (r < 0)
                return r;
        d->action = JOB_ACTION_REPORT;
        d->job_id = j->job_id;
        return 0;
}

/* IN_PROGRESS at 0 %: the job is ours now. */
static int decide_start(JobJournal *j, JobDecision *d) {
        _cleanup_(job_report_done) JobReport r = JOB_REPORT_NULL;
        int k;

        r.status = JOB_STATUS_IN_PROGRESS;
        k = job_report_set_progress(&r, 0);
        if (k < 0)
                return k;
        d->report = r;
        r = JOB_REPORT_NULL;
        d->action = JOB_ACTION_REPORT;
        d->job_id = j->job_id;
        return 0;
}

/* The platform moved on: stop without a report, and remember the job so it never runs
 * again. Past the point of no return the work goes on (see job.h). */
static int decide_moved_on(JobJournal *j, const JobContext *c, JobDecision *d) {
        switch (j->phase) {
        case JOB_PHASE_ACCEPTED:
        case JOB_PHASE_DOWNLOADING:
                job_report_reset(&j->report, _JOB_STATUS_INVALID);
                enter_phase(j, JOB_PHASE_DONE, c, d);
                d->action = JOB_ACTION_ABANDON;
                d->remove_download = true;
                d->job_id = j->job_id;
                return 0;
        case JOB_PHASE_REPORTING:
                enter_phase(j, JOB_PHASE_DONE, c, d);
                d->action = JOB_ACTION_GET_LIST;
                return 0;
        default:
                return 0;
        }
}

/* A download try ended without the whole file; offset bytes are durable. Tries are counted
 * only while they make no progress: a slow link that gets a little further each time is
 * allowed to finish, one that gets nowhere is not retried for ever. */
static int decide_download_retry(JobJournal *j, uint64_t offset, bool backoff,
                                 const char *message, const JobContext *c, JobDecision *d) {
        unsigned tries;

        if (j->size >= 0 && offset > (uint64_t) j->size)
                offset = (uint64_t) j->size;
        tries = offset > j->failed_offset ? 1 : j->download_tries + 1;
        if (tries >= JOB_DOWNLOAD_TRIES_MAX) {
                int r;

                if (message)
                        r = decide_finalf(j, JOB_STATUS_FAILED, NULL, c, d,
                                          "the firmware download failed %u times without "
                                          "progress: %s",
                                          tries, message);
                else
                        r = decide_finalf(j, JOB_STATUS_FAILED, NULL, c, d,
                                          "the firmware download failed %u times without "
                                          "progress",
                                          tries);
                if (r < 0)
                        return r;
                j->download_tries = tries;
                return 0;
        }
        j->download_tries = tries;
        j->failed_offset = offset;
        j->offset = offset;
        j->want_url = true;
        touch(j, c, d);
        d->action = JOB_ACTION_GET_JOB;
        d->backoff = backoff;
        d->job_id = j->job_id;
        return 0;
}

static unsigned max_attempts(const JobContext *c) {
        return MAX(c->max_attempts, 1U);
}

static int decide_attempts_exceeded(JobJournal *j, unsigned attempts, const JobContext *c,
                                    JobDecision *d) {
        int r = decide_finalf(j, JOB_STATUS_FAILED, NULL, c, d,
                              "the device restarted %u times without finishing the update",
                              attempts);
        if (r < 0)
                return r;
        j->attempts = attempts;
        return 0;
}

/* A restart of the device during the job counts as an attempt: true when that was one too
 * many and the job is failed (*r tells whether that worked); false with the attempt
 * recorded and the decision aimed at the job. */
static bool count_attempt(JobJournal *j, const JobContext *c, JobDecision *d, int *r) {
        unsigned attempts = j->attempts + 1;

        if (attempts > max_attempts(c)) {
                *r = decide_attempts_exceeded(j, attempts, c, d);
                return true;
        }
        j->attempts = attempts;
        touch(j, c, d);
        d->job_id = j->job_id;
        return false;
}

/* A finished job comes back (same execution): answer as before, never run it again. */
static int decide_revive(JobJournal *j, const JobContext *c, JobDecision *d) {
        if (j->report.status == _JOB_STATUS_INVALID)
                return decide_final(j, JOB_STATUS_FAILED,
                                    "lodevd had already stopped this job and will not run it "
                                    "again",
                                    NULL, c, d);
        enter_phase(j, JOB_PHASE_REPORTING, c, d);
        return decide_resend(j, d);
}

/* An IN_PROGRESS job lodevd has no record of: it was ours before the state was lost. Fail it
 * rather than leave it hanging or run it blindly. */
static int decide_orphan(JobJournal *j, const char *job_id, int64_t execution_number,
                         int64_t version_number, const JobContext *c, JobDecision *d) {
        _cleanup_(job_journal_done) JobJournal n = JOB_JOURNAL_NULL;
        int r;

        r = journal_new(job_id, execution_number, version_number, c, &n);
        if (r < 0)
                return r;
        r = decide_final(&n, JOB_STATUS_FAILED,
                         j->corrupt ? "lodevd's record of this job was unreadable: the device "
                                      "lost its state"
                                    : "lodevd has no record of this job: the device lost its "
                                      "state",
                         NULL, c, d);
        if (r < 0)
                return r;
        journal_replace(j, &n);
        d->job_id = j->job_id;
        return 0;
}

static int reconcile_idle(JobJournal *j, const JobList *list, const JobContext *c,
                          JobDecision *d) {
        for (size_t i = 0; i < list->n_in_progress; i++) {
                const JobSummary *s = &list->in_progress[i];

                if (!topic_job_id_valid(s->job_id))
                        continue;
                if (j->phase == JOB_PHASE_DONE &&
                    same_execution(j, s->job_id, s->execution_number))
                        return decide_revive(j, c, d);
                return decide_orphan(j, s->job_id, s->execution_number, s->version_number, c,
                                     d);
        }
        for (size_t i = 0; i < list->n_queued; i++) {
                const JobSummary *s = &list->queued[i];

                if (!topic_job_id_valid(s->job_id))
                        continue;
                if (j->phase == JOB_PHASE_DONE &&
                    same_execution(j, s->job_id, s->execution_number))
                        return decide_revive(j, c, d);
                /* The list has no document: fetch it, and decide on the answer. */
                d->action = JOB_ACTION_GET_JOB;
                d->job_id = s->job_id;
                return 0;
        }
        return 0;
}

int job_reconcile(JobJournal *j, const JobList *list, JobReconcileMode mode, const JobContext *c,
                  JobDecision *ret) {
        bool startup = mode == JOB_RECONCILE_STARTUP, listed;
        JobDecision d;
        int r = 0;

        if (!j || !list || !c || !ret || mode < 0 || mode >= _JOB_RECONCILE_MODE_MAX)
                return -EINVAL;
        decision_init(&d);
        listed = phase_active(j->phase) && journal_listed(j, list) >= 0;

        switch (j->phase) {
        case JOB_PHASE_ACCEPTED:
                if (!listed)
                        r = decide_moved_on(j, c, &d);
                else {
                        j->report_tries = 0;
                        r = decide_start(j, &d);
                }
                break;

        case JOB_PHASE_DOWNLOADING:
                if (!listed)
                        r = decide_moved_on(j, c, &d);
                else if (startup)
                        r = decide_download_retry(j, j->offset, false, NULL, c, &d);
                else if (j->want_url) {
                        /* The answer to our GET may have been lost with the connection. */
                        d.action = JOB_ACTION_GET_JOB;
                        d.job_id = j->job_id;
                }
                break;

        case JOB_PHASE_INSTALLING:
                if (!startup)
                        break;
                if (listed)
                        /* Whether the installer finished is unknown; running it again could
                         * install twice, so the safe answer is to fail the job. */
                        r = decide_final(j, JOB_STATUS_FAILED,
                                         "interrupted during installation: lodevd or the device "
                                         "restarted before the installer finished",
                                         NULL, c, &d);
                else {
                        job_report_reset(&j->report, _JOB_STATUS_INVALID);
                        enter_phase(j, JOB_PHASE_DONE, c, &d);
                        d.action = JOB_ACTION_ABANDON;
                        d.remove_download = true;
                        d.job_id = j->job_id;
                }
                break;

        case JOB_PHASE_AWAITING_REBOOT:
                if (!startup)
                        break;
                if (count_attempt(j, c, &d, &r))
                        break;
                if (c->boot_id && j->boot_id && streq(c->boot_id, j->boot_id))
                        /* Only lodevd restarted: the reboot never happened. */
                        d.action = JOB_ACTION_REBOOT;
                else {
                        enter_phase(j, JOB_PHASE_CONFIRMING, c, &d);
                        d.action = JOB_ACTION_CONFIRM;
                }
                break;

        case JOB_PHASE_CONFIRMING:
                if (!startup)
                        break;
                if (count_attempt(j, c, &d, &r))
                        break;
                d.action = JOB_ACTION_CONFIRM;
                break;

        case JOB_PHASE_REPORTING:
                if (listed) {
                        j->report_tries = 0;
                        r = decide_resend(j, &d);
                        break;
                }
                /* Acknowledged with the answer lost, or dropped by the platform: either way
                 * nothing more to say. Then look for the next job. */
                enter_phase(j, JOB_PHASE_DONE, c, &d);
                r = reconcile_idle(j, list, c, &d);
                break;

        case JOB_PHASE_NONE:
        case JOB_PHASE_DONE:
                r = reconcile_idle(j, list, c, &d);
                break;

        default:
                return -EINVAL;
        }
        if (r < 0) {
                job_decision_done(&d);
                return r;
        }
        *ret = d;
        return 0;
}

/* An execution while idle: start it, reject it, or fail it as an orphan. */
static int handle_execution_idle(JobJournal *j, const JobExecution *e, const JobContext *c,
                                 JobDecision *d) {
        _cleanup_(job_journal_done) JobJournal n = JOB_JOURNAL_NULL;
        _cleanup_free_ char *reason = NULL;
        int r;

        if (e->status != JOB_STATUS_QUEUED && e->status != JOB_STATUS_IN_PROGRESS)
                return 0; /* finished or canceled: nothing for us */
        if (j->phase == JOB_PHASE_DONE && same_execution(j, e->job_id, e->execution_number))
                return decide_revive(j, c, d);
        if (e->status == JOB_STATUS_IN_PROGRESS)
                return decide_orphan(j, e->job_id, e->execution_number, e->version_number, c, d);

        r = job_document_check(e->job_id, &e->document, c->allow_http, &reason);
        if (r < 0 && r != -EBADMSG)
                return r;
        r = journal_new(e->job_id, e->execution_number, e->version_number, c, &n);
        if (r < 0)
                return r;
        if (reason) {
                r = decide_final(&n, JOB_STATUS_REJECTED, reason, NULL, c, d);
                if (r < 0)
                        return r;
                d->remove_download = false; /* there never was one */
        } else {
                n.firmware_id = strdup(e->document.firmware_id);
                n.deployment_id = strdup(e->document.deployment_id);
                if (!n.firmware_id || !n.deployment_id)
                        return -ENOMEM;
                if (e->document.sha256) {
                        n.sha256 = strdup(e->document.sha256);
                        if (!n.sha256)
                                return -ENOMEM;
                        for (char *p = n.sha256; *p; p++)
                                if (*p >= 'A' && *p <= 'F')
                                        *p = (char) (*p - 'A' + 'a');
                }
                n.size = e->document.size;
                enter_phase(&n, JOB_PHASE_ACCEPTED, c, d);
                r = decide_start(&n, d);
                if (r < 0)
                        return r;
        }
        journal_replace(j, &n);
        d->job_id = j->job_id;
        return 0;
}

static int handle_execution(JobJournal *j, const JobExecution *e, const JobContext *c,
                            JobDecision *d) {
        bool has = e && e->job_id;
        _cleanup_free_ char *reason = NULL;
        int r;

        if (has && !topic_job_id_valid(e->job_id))
                return -EINVAL;
        if (!phase_active(j->phase))
                return has ? handle_execution_idle(j, e, c, d) : 0;

        if (!has)
                /* Nothing pending on the platform while we run a job: it was canceled. */
                return decide_moved_on(j, c, d);
        if (!streq(e->job_id, j->job_id)) {
                /* $next names another job. Ours may still be listed behind it; ask for the
                 * whole list rather than drop a job on a guess. */
                d->action = JOB_ACTION_GET_LIST;
                return 0;
        }
        if (!same_execution(j, e->job_id, e->execution_number) ||
            (e->status != JOB_STATUS_QUEUED && e->status != JOB_STATUS_IN_PROGRESS))
                return decide_moved_on(j, c, d);

        if (j->phase != JOB_PHASE_DOWNLOADING || !j->want_url)
                return 0; /* a repeat of what we know */

        r = job_document_check(e->job_id, &e->document, c->allow_http, &reason);
        if (r < 0 && r != -EBADMSG)
                return r;
        if (reason)
                return decide_final(j, JOB_STATUS_FAILED, reason, NULL, c, d);
        if (!streq_ptr(e->document.firmware_id, j->firmware_id) ||
            !streq_ptr(e->document.deployment_id, j->deployment_id) ||
            e->document.size != j->size ||
            (j->sha256 ? !(e->document.sha256 && strcasecmp(e->document.sha256, j->sha256) == 0)
                       : e->document.sha256 != NULL))
                return decide_final(j, JOB_STATUS_FAILED,
                                    "the job document changed while the job was running", NULL,
                                    c, d);

        j->want_url = false;
        d->action = JOB_ACTION_DOWNLOAD;
        d->url = e->document.firmware_url;
        d->offset = j->offset;
        d->job_id = j->job_id;
        return 0;
}

static int handle_update_rejected(JobJournal *j, const char *code, const JobContext *c,
                                  JobDecision *d) {
        bool retryable = job_error_code_retryable(code);
        bool moved_on = error_code_moved_on(code);

        switch (j->phase) {
        case JOB_PHASE_ACCEPTED:
        case JOB_PHASE_REPORTING:
                if (retryable && j->report_tries + 1 < JOB_REPORT_TRIES_MAX) {
                        int r = j->phase == JOB_PHASE_ACCEPTED ? decide_start(j, d)
                                                               : decide_resend(j, d);
                        if (r < 0)
                                return r;
                        j->report_tries++;
                        d->backoff = true;
                        return 0;
                }
                if (retryable && j->phase == JOB_PHASE_REPORTING) {
                        /* The platform keeps failing: stop for now. The saved report goes out
                         * again at the next reconcile if the job is still listed. */
                        enter_phase(j, JOB_PHASE_DONE, c, d);
                        return 0;
                }
                /* Moved on, refused for good, or a start the platform will not take. */
                return decide_moved_on(j, c, d);

        case JOB_PHASE_DOWNLOADING:
                /* A progress update; losing one is harmless unless the job is gone. */
                return moved_on ? decide_moved_on(j, c, d) : 0;

        default:
                return 0;
        }
}

static int handle_download_failed(JobJournal *j, const JobEvent *ev, const JobContext *c,
                                  JobDecision *d) {
        const char *what;

        switch (ev->download_error) {
        case JOB_DOWNLOAD_NETWORK:
                return decide_download_retry(j, ev->offset, true, ev->message, c, d);
        case JOB_DOWNLOAD_EXPIRED:
                /* The URL is stale, not the network: a fresh one can be used at once. */
                return decide_download_retry(j, ev->offset, false, ev->message, c, d);
        case JOB_DOWNLOAD_REFUSED:
                what = "the firmware download was refused";
                break;
        case JOB_DOWNLOAD_CORRUPT:
                what = "the downloaded firmware does not match the job document";
                break;
        case JOB_DOWNLOAD_NO_SPACE:
                what = "not enough space for the firmware";
                break;
        case JOB_DOWNLOAD_LOCAL:
                what = "the firmware download failed";
                break;
        default:
                return -EINVAL;
        }
        if (isempty(ev->message))
                return decide_final(j, JOB_STATUS_FAILED, what, NULL, c, d);
        return decide_finalf(j, JOB_STATUS_FAILED, NULL, c, d, "%s: %s", what, ev->message);
}

static int handle_hook(JobJournal *j, const JobEvent *ev, const JobContext *c, JobDecision *d) {
        bool install = j->phase == JOB_PHASE_INSTALLING;
        const char *hook = install ? "the installer" : "the confirm hook";

        if (ev->type == JOB_EVENT_HOOK_EXITED && ev->code == 0)
                return decide_final(j, JOB_STATUS_SUCCEEDED, NULL, NULL, c, d);

        if (install && ev->type == JOB_EVENT_HOOK_EXITED && ev->code == 100) {
                _cleanup_free_ char *boot_id = NULL;

                if (c->boot_id && job_boot_id_valid(c->boot_id)) {
                        boot_id = strdup(c->boot_id);
                        if (!boot_id)
                                return -ENOMEM;
                }
                enter_phase(j, JOB_PHASE_AWAITING_REBOOT, c, d);
                free(j->boot_id);
                j->boot_id = TAKE_PTR(boot_id);
                d->action = JOB_ACTION_REBOOT;
                d->remove_download = true;
                d->job_id = j->job_id;
                return 0;
        }

        switch (ev->type) {
        case JOB_EVENT_HOOK_EXITED:
                return decide_finalf(j, JOB_STATUS_FAILED, ev->message, c, d,
                                     "%s exited with status %d", hook, ev->code);
        case JOB_EVENT_HOOK_KILLED:
                return decide_finalf(j, JOB_STATUS_FAILED, ev->message, c, d,
                                     "%s was killed by signal %d", hook, ev->code);
        default:
                return decide_finalf(j, JOB_STATUS_FAILED, ev->message, c, d,
                                     "%s did not finish in time", hook);
        }
}

/* An execution that cannot be decoded, for a job whose id the topic gave. */
static int handle_unreadable(JobJournal *j, const char *job_id, int error, const JobContext *c,
                             JobDecision *d) {
        _cleanup_free_ char *reason = NULL;
        JobExecution e = { .job_id = (char *) job_id, .status = JOB_STATUS_QUEUED,
                           .version_number = -1, .execution_number = -1 };
        int r;

        if (!job_id) {
                /* Not even the job's id is known: the list names every pending job. */
                d->action = JOB_ACTION_GET_LIST;
                return 0;
        }
        if (!topic_job_id_valid(job_id))
                return -EINVAL;
        reason = strdup_printf("the job execution cannot be read: %s",
                               error == -E2BIG ? "larger than 128 KiB" : "not valid JSON");
        if (!reason)
                return -ENOMEM;
        if (phase_active(j->phase)) {
                if (j->phase == JOB_PHASE_DOWNLOADING && j->want_url && streq(j->job_id, job_id))
                        return decide_final(j, JOB_STATUS_FAILED, reason, NULL, c, d);
                return 0; /* busy with a job: this one is looked at later */
        }
        /* A job without a document: REJECTED, with the reason it cannot be read. */
        r = handle_execution_idle(j, &e, c, d);
        if (r < 0 || d->action != JOB_ACTION_REPORT || j->phase != JOB_PHASE_REPORTING)
                return r;
        r = job_report_set(&j->report, JOB_DETAIL_REASON, reason);
        if (r >= 0)
                r = job_report_set(&d->report, JOB_DETAIL_REASON, reason);
        return r;
}

/* A <job>/get (or the list request, job_id NULL) the platform refused. */
static int handle_get_rejected(JobJournal *j, const char *job_id, const char *code,
                               const JobContext *c, JobDecision *d) {
        bool ours = job_id && phase_active(j->phase) && streq_ptr(job_id, j->job_id);

        if (ours && streq_ptr(code, "ResourceNotFound"))
                /* Our job is gone: the same as no execution pending. */
                return handle_execution(j, NULL, c, d);
        d->backoff = true;
        if (ours && j->want_url) {
                d->action = JOB_ACTION_GET_JOB;
                d->job_id = j->job_id;
        } else
                d->action = JOB_ACTION_GET_LIST;
        return 0;
}

/* The answer to a progress report says nothing about a status change, unless the platform
 * moved on. */
static int handle_progress_answer(JobJournal *j, const JobEvent *ev, const JobContext *c,
                                  JobDecision *d) {
        if (ev->type == JOB_EVENT_UPDATE_REJECTED && error_code_moved_on(ev->error_code) &&
            j->phase == JOB_PHASE_DOWNLOADING)
                return decide_moved_on(j, c, d);
        return 0;
}

int job_handle(JobJournal *j, const JobEvent *ev, const JobContext *c, JobDecision *ret) {
        JobDecision d;
        int r = 0;

        if (!j || !ev || !c || !ret)
                return -EINVAL;
        decision_init(&d);

        switch (ev->type) {
        case JOB_EVENT_EXECUTION:
                r = handle_execution(j, ev->execution, c, &d);
                break;

        case JOB_EVENT_EXECUTION_UNREADABLE:
                r = handle_unreadable(j, ev->job_id, ev->error, c, &d);
                break;

        case JOB_EVENT_GET_REJECTED:
                r = handle_get_rejected(j, ev->job_id, ev->error_code, c, &d);
                break;

        case JOB_EVENT_UPDATE_ACCEPTED:
                if (ev->progress)
                        r = handle_progress_answer(j, ev, c, &d);
                else if (j->phase == JOB_PHASE_ACCEPTED) {
                        /* IN_PROGRESS is on record: fetch a fresh URL and download at once. */
                        enter_phase(j, JOB_PHASE_DOWNLOADING, c, &d);
                        d.action = JOB_ACTION_GET_JOB;
                        d.job_id = j->job_id;
                } else if (j->phase == JOB_PHASE_REPORTING) {
                        enter_phase(j, JOB_PHASE_DONE, c, &d);
                        d.action = JOB_ACTION_GET_LIST;
                }
                break;

        case JOB_EVENT_UPDATE_REJECTED:
                r = ev->progress ? handle_progress_answer(j, ev, c, &d)
                                 : handle_update_rejected(j, ev->error_code, c, &d);
                break;

        case JOB_EVENT_DOWNLOAD_DONE:
                if (j->phase != JOB_PHASE_DOWNLOADING)
                        break;
                /* Saved before the installer runs: after a crash from here on, the job is
                 * never installed again. */
                enter_phase(j, JOB_PHASE_INSTALLING, c, &d);
                d.action = JOB_ACTION_INSTALL;
                d.job_id = j->job_id;
                break;

        case JOB_EVENT_DOWNLOAD_FAILED:
                if (j->phase == JOB_PHASE_DOWNLOADING)
                        r = handle_download_failed(j, ev, c, &d);
                break;

        case JOB_EVENT_HOOK_EXITED:
        case JOB_EVENT_HOOK_KILLED:
        case JOB_EVENT_HOOK_TIMEOUT:
                if (j->phase == JOB_PHASE_INSTALLING || j->phase == JOB_PHASE_CONFIRMING)
                        r = handle_hook(j, ev, c, &d);
                break;

        case JOB_EVENT_REBOOT_FAILED:
                if (j->phase != JOB_PHASE_AWAITING_REBOOT)
                        break;
                if (isempty(ev->message))
                        r = decide_final(j, JOB_STATUS_FAILED, "the reboot command failed", NULL,
                                         c, &d);
                else
                        r = decide_finalf(j, JOB_STATUS_FAILED, NULL, c, &d,
                                          "the reboot command failed: %s", ev->message);
                break;

        default:
                r = -EINVAL;
        }
        if (r < 0) {
                job_decision_done(&d);
                return r;
        }
        *ret = d;
        return 0;
}

/* --- Progress --- */

bool job_progress_should_send(const JobProgressThrottle *t, unsigned percent, uint64_t now_usec) {
        unsigned last = t && t->sent ? t->percent : 0;

        percent = MIN(percent, 100U);
        if (percent < last + JOB_PROGRESS_STEP)
                return false;
        if (t && t->sent && (now_usec < t->usec || now_usec - t->usec < JOB_PROGRESS_INTERVAL_USEC))
                return false;
        return true;
}

void job_progress_sent(JobProgressThrottle *t, unsigned percent, uint64_t now_usec) {
        *t = (JobProgressThrottle) {
                .sent = true,
                .percent = MIN(percent, 100U),
                .usec = now_usec,
        };
}

void job_progress_reset(JobProgressThrottle *t) {
        *t = (JobProgressThrottle) {};
}
