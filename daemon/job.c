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
        [JOB_PHASE_ROLLING_BACK] = "rolling-back",
        [JOB_PHASE_REPORTING] = "reporting",
        [JOB_PHASE_DONE] = "done",
};

DEFINE_STRING_TABLE_LOOKUP(job_phase, JobPhase);

static const char *const job_action_table[_JOB_ACTION_MAX] = {
        [JOB_ACTION_NONE] = "none",         [JOB_ACTION_GET_LIST] = "get-list",
        [JOB_ACTION_GET_JOB] = "get-job",   [JOB_ACTION_REPORT] = "report",
        [JOB_ACTION_DOWNLOAD] = "download", [JOB_ACTION_INSTALL] = "install",
        [JOB_ACTION_REBOOT] = "reboot",     [JOB_ACTION_CONFIRM] = "confirm",
        [JOB_ACTION_ROLLBACK] = "rollback", [JOB_ACTION_ABANDON] = "abandon",
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

uint64_t job_reboot_delay_usec(unsigned tries) {
        uint64_t d = JOB_REBOOT_DELAY_MIN_USEC;

        for (unsigned i = 1; i < tries && d < JOB_REBOOT_DELAY_MAX_USEC; i++)
                d *= 2;
        return MIN(d, JOB_REBOOT_DELAY_MAX_USEC);
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

static unsigned max_attempts(const JobContext *c) {
        return MAX(c->max_attempts, 1U);
}

static unsigned max_reboot_tries(const JobContext *c) {
        return MAX(c->max_reboot_tries, 1U);
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
                j->attempts = j->reboot_tries = 0;
                _fallthrough_;
        case JOB_PHASE_DOWNLOADING:
                j->offset = j->failed_offset = 0;
                j->download_tries = 0;
                break;
        case JOB_PHASE_AWAITING_REBOOT:
                j->reboot_tries = 0;
                _fallthrough_;
        case JOB_PHASE_INSTALLING:
        case JOB_PHASE_CONFIRMING:
        case JOB_PHASE_ROLLING_BACK:
                /* Restarts are counted from the step that can cause them. */
                j->attempts = 0;
                break;
        default:
                break;
        }
        /* Steps that are unsafe without their record: a job taken on, a download, an install,
         * a reboot. Another step goes ahead from memory when its save fails. */
        d->must_save = IN_SET(phase, JOB_PHASE_ACCEPTED, JOB_PHASE_DOWNLOADING,
                              JOB_PHASE_INSTALLING, JOB_PHASE_AWAITING_REBOOT);
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

/* What describes lodevd's run rather than the job stays. */
static void journal_replace(JobJournal *j, JobJournal *n) {
        bool corrupt = j->corrupt, reconciled = j->reconciled;

        job_journal_done(j);
        *j = *n;
        j->corrupt = corrupt;
        j->reconciled = reconciled;
        *n = JOB_JOURNAL_NULL;
}

static int report_make(JobStatus status, const char *reason, const char *stderr_line,
                       JobReport *ret) {
        _cleanup_(job_report_done) JobReport r = JOB_REPORT_NULL;
        int k;

        r.status = status;
        if (status == JOB_STATUS_SUCCEEDED && (k = job_report_set_progress(&r, 100)) < 0)
                return k;
        if ((k = job_report_set(&r, JOB_DETAIL_REASON, reason)) < 0 ||
            (k = job_report_set(&r, JOB_DETAIL_STDERR, stderr_line)) < 0)
                return k;
        *ret = r;
        r = JOB_REPORT_NULL;
        return 0;
}

static char *vformat(const char *fmt, va_list ap) _printf_(1, 0);
static char *vformat(const char *fmt, va_list ap) {
        char *s = NULL;

        return vasprintf(&s, fmt, ap) < 0 ? NULL : s;
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

/* The terminal status is decided: save it in REPORTING, then send it. */
static int decide_final(JobJournal *j, JobStatus status, const char *reason,
                        const char *stderr_line, const JobContext *c, JobDecision *d) {
        _cleanup_(job_report_done) JobReport r = JOB_REPORT_NULL;
        int k;

        k = report_make(status, reason, stderr_line, &r);
        if (k < 0)
                return k;
        enter_phase(j, JOB_PHASE_REPORTING, c, d);
        job_report_done(&j->report);
        j->report = r;
        r = JOB_REPORT_NULL;
        d->remove_download = true;
        return decide_resend(j, d);
}

static int decide_finalf(JobJournal *j, JobStatus status, const char *stderr_line,
                         const JobContext *c, JobDecision *d, const char *fmt, ...)
        _printf_(6, 7);
static int decide_finalf(JobJournal *j, JobStatus status, const char *stderr_line,
                         const JobContext *c, JobDecision *d, const char *fmt, ...) {
        _cleanup_free_ char *reason = NULL;
        va_list ap;

        va_start(ap, fmt);
        reason = vformat(fmt, ap);
        va_end(ap);
        if (!reason)
                return -ENOMEM;
        return decide_final(j, status, reason, stderr_line, c, d);
}

/* The install may have armed the new firmware: INSTALLER rollback before the FAILED report
 * (saved now, sent after the rollback); without a reason, the job ends without a report. */
static int decide_rollback(JobJournal *j, const char *stderr_line, const JobContext *c,
                           JobDecision *d, const char *fmt, ...) _printf_(5, 6);
static int decide_rollback(JobJournal *j, const char *stderr_line, const JobContext *c,
                           JobDecision *d, const char *fmt, ...) {
        _cleanup_(job_report_done) JobReport r = JOB_REPORT_NULL;
        _cleanup_free_ char *reason = NULL;
        va_list ap;
        int k;

        if (fmt) {
                va_start(ap, fmt);
                reason = vformat(fmt, ap);
                va_end(ap);
                if (!reason)
                        return -ENOMEM;
                k = report_make(JOB_STATUS_FAILED, reason, stderr_line, &r);
                if (k < 0)
                        return k;
        }
        enter_phase(j, JOB_PHASE_ROLLING_BACK, c, d);
        job_report_done(&j->report);
        j->report = r;
        r = JOB_REPORT_NULL;
        d->action = JOB_ACTION_ROLLBACK;
        d->remove_download = true;
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

/* M1-M3: the platform moved on. Stop without a report, and remember the job so it never runs
 * again; past the point of no return the work goes on. */
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

/* D2, D3: a download try ended without the whole file; offset bytes are durable. Tries are
 * counted only while they make no progress: a slow link that gets a little further each time
 * is allowed to finish, one that gets nowhere is not retried for ever. */
static int decide_download_retry(JobJournal *j, uint64_t offset, bool backoff,
                                 const char *message, const JobContext *c, JobDecision *d) {
        unsigned tries;

        if (j->size >= 0 && offset > (uint64_t) j->size)
                offset = (uint64_t) j->size;
        tries = offset > j->failed_offset ? 1 : j->download_tries + 1;
        if (tries >= JOB_DOWNLOAD_TRIES_MAX) {
                int r = decide_finalf(j, JOB_STATUS_FAILED, NULL, c, d,
                                      "the firmware download failed %u times without progress%s%s",
                                      tries, message ? ": " : "", strempty(message));
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

/* A finished job comes back (same execution): answer as before, never run it again. A list
 * or an execution that still shows it after the platform accepted the report in this run was
 * sent before that: nothing to say again. */
static int decide_revive(JobJournal *j, const JobContext *c, JobDecision *d) {
        if (j->acknowledged)
                return 0;
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
        d->remove_download = false; /* there never was one */
        journal_replace(j, &n);
        d->job_id = j->job_id;
        return 0;
}

/* C1-C4. */
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
                    same_execution(j, s->job_id, s->execution_number)) {
                        if (j->acknowledged)
                                continue; /* a list from before the answer */
                        return decide_revive(j, c, d);
                }
                /* The list has no document: fetch it, and decide on the answer. */
                d->action = JOB_ACTION_GET_JOB;
                d->job_id = s->job_id;
                return 0;
        }
        return 0;
}

/* A restart of the device during the job counts as an attempt: false with the attempt
 * recorded; true when that was one too many (the caller decides what follows). */
static bool attempt_exceeded(JobJournal *j, const JobContext *c, JobDecision *d) {
        j->attempts++;
        touch(j, c, d);
        d->job_id = j->job_id;
        return j->attempts > max_attempts(c);
}

/* R1, R2: reboot_command once more, after a delay that grows, or roll back. */
static int decide_reboot_retry(JobJournal *j, bool wait, const char *why, const JobContext *c,
                               JobDecision *d) {
        if (j->reboot_tries >= max_reboot_tries(c))
                return decide_rollback(j, NULL, c, d,
                                       "the device could not be rebooted into the new firmware "
                                       "(%u tries): %s",
                                       j->reboot_tries, why);
        d->delay_usec = wait ? job_reboot_delay_usec(j->reboot_tries) : 0;
        j->reboot_tries++;
        touch(j, c, d);
        d->action = JOB_ACTION_REBOOT;
        d->job_id = j->job_id;
        return 0;
}

/* C11-C14. */
static int reconcile_awaiting_reboot(JobJournal *j, const JobContext *c, JobDecision *d) {
        if (!(c->boot_id && j->boot_id && streq(c->boot_id, j->boot_id))) {
                /* Another boot: the new firmware (or the old, after a fallback) is running.
                 * This start is the first attempt at confirming it. */
                enter_phase(j, JOB_PHASE_CONFIRMING, c, d);
                j->attempts = 1;
                d->action = JOB_ACTION_CONFIRM;
                d->job_id = j->job_id;
                return 0;
        }
        /* Only lodevd restarted: the reboot never happened. */
        if (attempt_exceeded(j, c, d))
                return decide_rollback(j, NULL, c, d,
                                       "lodevd restarted %u times without the device rebooting "
                                       "into the new firmware",
                                       j->attempts);
        return decide_reboot_retry(j, false, "lodevd restarted in the same boot", c, d);
}

/* H7, C18: the rollback is over (or given up): the saved report goes out, or the job ends. */
static int decide_rolled_back(JobJournal *j, const char *how, const JobContext *c,
                              JobDecision *d) {
        int r;

        if (j->report.status == _JOB_STATUS_INVALID) {
                enter_phase(j, JOB_PHASE_DONE, c, d);
                d->action = JOB_ACTION_GET_LIST;
                d->job_id = NULL;
                return 0;
        }
        r = job_report_set(&j->report, JOB_DETAIL_ROLLBACK, how);
        if (r < 0)
                return r;
        enter_phase(j, JOB_PHASE_REPORTING, c, d);
        return decide_resend(j, d);
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
        j->reconciled = true;

        switch (j->phase) {
        case JOB_PHASE_ACCEPTED:
                if (!listed)
                        r = decide_moved_on(j, c, &d); /* C6 */
                else {
                        j->report_tries = 0;
                        r = decide_start(j, &d); /* C5 */
                }
                break;

        case JOB_PHASE_DOWNLOADING:
                if (!listed)
                        r = decide_moved_on(j, c, &d); /* C6 */
                else if (startup)
                        r = decide_download_retry(j, j->offset, false, NULL, c, &d); /* C7 */
                else if (j->want_url) {
                        /* C8: the answer to our GET may have been lost with the connection. */
                        d.action = JOB_ACTION_GET_JOB;
                        d.job_id = j->job_id;
                }
                break;

        case JOB_PHASE_INSTALLING:
                if (!startup)
                        break; /* C21 */
                /* Whether the installer finished is unknown, and the installer's service may
                 * finish it anyway: undo what it may have armed. Running it again could install
                 * twice. */
                if (listed)
                        r = decide_rollback(j, NULL, c, &d, /* C9 */
                                            "interrupted during installation: lodevd or the "
                                            "device restarted before the installer finished");
                else
                        r = decide_rollback(j, NULL, c, &d, NULL); /* C10 */
                break;

        case JOB_PHASE_AWAITING_REBOOT:
                if (startup)
                        r = reconcile_awaiting_reboot(j, c, &d);
                break;

        case JOB_PHASE_CONFIRMING:
                if (!startup)
                        break;
                if (attempt_exceeded(j, c, &d)) /* C16 */
                        r = decide_finalf(j, JOB_STATUS_FAILED, NULL, c, &d,
                                          "the device restarted %u times without finishing the "
                                          "update",
                                          j->attempts);
                else
                        d.action = JOB_ACTION_CONFIRM; /* C15 */
                break;

        case JOB_PHASE_ROLLING_BACK:
                if (!startup)
                        break;
                if (attempt_exceeded(j, c, &d)) { /* C18 */
                        _cleanup_free_ char *how = strdup_printf(
                                "did not finish: the device restarted %u times", j->attempts);

                        r = how ? decide_rolled_back(j, how, c, &d) : -ENOMEM;
                } else
                        d.action = JOB_ACTION_ROLLBACK; /* C17 */
                break;

        case JOB_PHASE_REPORTING:
                if (listed) {
                        j->report_tries = 0;
                        r = decide_resend(j, &d); /* C19 */
                        break;
                }
                /* C20: acknowledged with the answer lost, or dropped by the platform: either
                 * way nothing more to say. Then look for the next job. */
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

        if (!j->reconciled)
                return 0; /* X1: the list asked for at the connect will name it too */
        if (e->status != JOB_STATUS_QUEUED && e->status != JOB_STATUS_IN_PROGRESS)
                return 0; /* X5: finished or canceled: nothing for us */
        if (j->phase == JOB_PHASE_DONE && same_execution(j, e->job_id, e->execution_number))
                return decide_revive(j, c, d); /* X6 */
        if (e->status == JOB_STATUS_IN_PROGRESS) /* X4 */
                return decide_orphan(j, e->job_id, e->execution_number, e->version_number, c, d);

        r = job_document_check(e->job_id, &e->document, c->allow_http, &reason);
        if (r < 0 && r != -EBADMSG)
                return r;
        r = journal_new(e->job_id, e->execution_number, e->version_number, c, &n);
        if (r < 0)
                return r;
        if (reason) { /* X3 */
                r = decide_final(&n, JOB_STATUS_REJECTED, reason, NULL, c, d);
                if (r < 0)
                        return r;
                d->remove_download = false; /* there never was one */
        } else { /* X2 */
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
                return has ? handle_execution_idle(j, e, c, d) : 0; /* X1-X6 */

        if (!has)
                /* X8: nothing pending on the platform while we run a job: it was canceled. */
                return decide_moved_on(j, c, d);
        if (!streq(e->job_id, j->job_id)) {
                /* X7: $next names another job. Ours may still be listed behind it; ask for the
                 * whole list rather than drop a job on a guess. */
                d->action = JOB_ACTION_GET_LIST;
                return 0;
        }
        if (!same_execution(j, e->job_id, e->execution_number) ||
            (e->status != JOB_STATUS_QUEUED && e->status != JOB_STATUS_IN_PROGRESS))
                return decide_moved_on(j, c, d); /* X8 */

        if (j->phase != JOB_PHASE_DOWNLOADING || !j->want_url)
                return 0; /* X11: a repeat of what we know */

        r = job_document_check(e->job_id, &e->document, c->allow_http, &reason);
        if (r < 0 && r != -EBADMSG)
                return r;
        if (reason) /* X10 */
                return decide_final(j, JOB_STATUS_FAILED, reason, NULL, c, d);
        if (!streq_ptr(e->document.firmware_id, j->firmware_id) ||
            !streq_ptr(e->document.deployment_id, j->deployment_id) ||
            e->document.size != j->size ||
            (j->sha256 ? !(e->document.sha256 && strcasecmp(e->document.sha256, j->sha256) == 0)
                       : e->document.sha256 != NULL))
                return decide_final(j, JOB_STATUS_FAILED, /* X10 */
                                    "the job document changed while the job was running", NULL,
                                    c, d);

        /* X9 */
        j->want_url = false;
        d->action = JOB_ACTION_DOWNLOAD;
        d->url = e->document.firmware_url;
        d->offset = j->offset;
        d->job_id = j->job_id;
        return 0;
}

/* U1-U4: an execution that cannot be decoded, for a job whose id the topic gave. */
static int handle_unreadable(JobJournal *j, const char *job_id, int error, const JobContext *c,
                             JobDecision *d) {
        _cleanup_free_ char *reason = NULL;
        JobExecution e = { .job_id = (char *) job_id, .status = JOB_STATUS_QUEUED,
                           .version_number = -1, .execution_number = -1,
                           .document.size = -1 };
        int r;

        if (!job_id) {
                /* U4: not even the job's id is known: the list names every pending job. */
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
                        return decide_final(j, JOB_STATUS_FAILED, reason, NULL, c, d); /* U2 */
                return 0; /* U3: busy with a job: this one is looked at later */
        }
        /* U1: a job without a document: REJECTED, with the reason it cannot be read. */
        r = handle_execution_idle(j, &e, c, d);
        if (r < 0 || d->action != JOB_ACTION_REPORT || j->phase != JOB_PHASE_REPORTING)
                return r;
        r = job_report_set(&j->report, JOB_DETAIL_REASON, reason);
        if (r >= 0)
                r = job_report_set(&d->report, JOB_DETAIL_REASON, reason);
        return r;
}

/* G1-G4: a <job>/get (or the list request, job_id NULL) the platform refused. */
static int handle_get_rejected(JobJournal *j, const char *job_id, const char *code,
                               const JobContext *c, JobDecision *d) {
        bool ours = job_id && phase_active(j->phase) && streq_ptr(job_id, j->job_id);

        if (ours && streq_ptr(code, "ResourceNotFound"))
                return handle_execution(j, NULL, c, d); /* G2 */
        d->backoff = true;
        if (ours && j->want_url) {
                d->action = JOB_ACTION_GET_JOB; /* G3 */
                d->job_id = j->job_id;
        } else
                d->action = JOB_ACTION_GET_LIST; /* G1, G4 */
        return 0;
}

/* A1-A9. */
static int handle_update_answer(JobJournal *j, const JobEvent *ev, const JobContext *c,
                                JobDecision *d) {
        bool accepted = ev->type == JOB_EVENT_UPDATE_ACCEPTED;
        const char *code = ev->error_code;
        bool retryable = !accepted && job_error_code_retryable(code);
        int r;

        if (ev->job_id && !streq_ptr(ev->job_id, j->job_id))
                return 0; /* A1: the late answer of another job's update */
        if (!accepted && error_code_moved_on(code) && j->phase == JOB_PHASE_DOWNLOADING)
                return decide_moved_on(j, c, d); /* A2 */
        if (ev->progress)
                return 0; /* A3: says nothing about a status change */

        switch (j->phase) {
        case JOB_PHASE_ACCEPTED:
        case JOB_PHASE_REPORTING:
                if (accepted && j->phase == JOB_PHASE_ACCEPTED) {
                        /* A4: IN_PROGRESS is on record: a fresh URL, and download at once. */
                        enter_phase(j, JOB_PHASE_DOWNLOADING, c, d);
                        d->action = JOB_ACTION_GET_JOB;
                        d->job_id = j->job_id;
                        return 0;
                }
                if (accepted) {
                        /* A5 */
                        enter_phase(j, JOB_PHASE_DONE, c, d);
                        j->acknowledged = true;
                        d->action = JOB_ACTION_GET_LIST;
                        return 0;
                }
                if (retryable && j->report_tries + 1 < JOB_REPORT_TRIES_MAX) {
                        /* A6 */
                        r = j->phase == JOB_PHASE_ACCEPTED ? decide_start(j, d)
                                                           : decide_resend(j, d);
                        if (r < 0)
                                return r;
                        j->report_tries++;
                        d->backoff = true;
                        return 0;
                }
                if (retryable && j->phase == JOB_PHASE_REPORTING) {
                        /* A7: the platform keeps failing: stop for now. The saved report goes
                         * out again at the next reconcile if the job is still listed. */
                        enter_phase(j, JOB_PHASE_DONE, c, d);
                        return 0;
                }
                /* A8: moved on, refused for good, or a start the platform will not take. */
                return decide_moved_on(j, c, d);

        default:
                return 0; /* A9 */
        }
}

/* D1-D4. */
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
        return decide_finalf(j, JOB_STATUS_FAILED, NULL, c, d, "%s%s%s", what,
                             isempty(ev->message) ? "" : ": ", strempty(ev->message));
}

/* How a hook ended, in words. */
static char *hook_end_text(const JobEvent *ev) {
        switch (ev->type) {
        case JOB_EVENT_HOOK_EXITED:
                return strdup_printf("exited with status %d", ev->code);
        case JOB_EVENT_HOOK_KILLED:
                return strdup_printf("was killed by signal %d", ev->code);
        default:
                return strdup("did not finish in time");
        }
}

/* H1-H7. */
static int handle_hook(JobJournal *j, const JobEvent *ev, const JobContext *c, JobDecision *d) {
        _cleanup_free_ char *how = hook_end_text(ev);
        bool exited = ev->type == JOB_EVENT_HOOK_EXITED;

        if (!how)
                return -ENOMEM;
        switch (j->phase) {
        case JOB_PHASE_INSTALLING:
                if (exited && ev->code == 0)
                        return decide_final(j, JOB_STATUS_SUCCEEDED, NULL, NULL, c, d); /* H1 */
                if (exited && ev->code == 100) {
                        /* H2 */
                        _cleanup_free_ char *boot_id = NULL;

                        if (c->boot_id && job_boot_id_valid(c->boot_id)) {
                                boot_id = strdup(c->boot_id);
                                if (!boot_id)
                                        return -ENOMEM;
                        }
                        enter_phase(j, JOB_PHASE_AWAITING_REBOOT, c, d);
                        free(j->boot_id);
                        j->boot_id = TAKE_PTR(boot_id);
                        j->reboot_tries = 1;
                        d->action = JOB_ACTION_REBOOT;
                        d->remove_download = true;
                        d->job_id = j->job_id;
                        return 0;
                }
                if (exited) /* H3: the installer says it failed, and cleaned up after itself */
                        return decide_finalf(j, JOB_STATUS_FAILED, ev->message, c, d,
                                             "the installer %s", how);
                /* H4: cut short: what it armed is undone first. */
                return decide_rollback(j, ev->message, c, d, "the installer %s", how);

        case JOB_PHASE_CONFIRMING:
                if (exited && ev->code == 0)
                        return decide_final(j, JOB_STATUS_SUCCEEDED, NULL, NULL, c, d); /* H5 */
                return decide_finalf(j, JOB_STATUS_FAILED, ev->message, c, d, /* H6 */
                                     "the confirm hook %s", how);

        case JOB_PHASE_ROLLING_BACK: {
                /* H7: the outcome goes with the report; the job ends either way. */
                _cleanup_free_ char *text = strdup_printf("INSTALLER rollback %s%s%s", how,
                                                          ev->message ? ": " : "",
                                                          strempty(ev->message));

                return text ? decide_rolled_back(j, text, c, d) : -ENOMEM;
        }
        default:
                return 0; /* L1 */
        }
}

/* S1-S3: a step that is unsafe without its record cannot be taken: the job ends from memory
 * (the decision that follows is not must_save: there is no loop). */
static int handle_save_failed(JobJournal *j, int error, const JobContext *c, JobDecision *d) {
        const char *why = strerror(error < 0 ? -error : EIO);

        switch (j->phase) {
        case JOB_PHASE_ACCEPTED:
                return decide_finalf(j, JOB_STATUS_REJECTED, NULL, c, d,
                                     "the job journal cannot be saved: %s", why);
        case JOB_PHASE_DOWNLOADING:
        case JOB_PHASE_INSTALLING:
                return decide_finalf(j, JOB_STATUS_FAILED, NULL, c, d,
                                     "the job journal cannot be saved: %s", why);
        case JOB_PHASE_AWAITING_REBOOT:
                /* Without the record the reboot could not be told from a restart and the new
                 * firmware never confirmed: it is not rebooted into. */
                return decide_rollback(j, NULL, c, d,
                                       "the job journal cannot be saved (%s), so the device is "
                                       "not rebooted into the new firmware",
                                       why);
        default:
                return 0;
        }
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
        case JOB_EVENT_UPDATE_REJECTED:
                r = handle_update_answer(j, ev, c, &d);
                break;

        case JOB_EVENT_DOWNLOAD_DONE:
                if (j->phase != JOB_PHASE_DOWNLOADING)
                        break;
                /* D1: saved before the installer runs: after a crash from here on, the job is
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
                r = handle_hook(j, ev, c, &d);
                break;

        case JOB_EVENT_REBOOT_FAILED:
        case JOB_EVENT_REBOOT_TIMEOUT: {
                _cleanup_free_ char *why = NULL;

                if (j->phase != JOB_PHASE_AWAITING_REBOOT)
                        break;
                if (ev->type == JOB_EVENT_REBOOT_TIMEOUT)
                        why = strdup_printf("still the same boot %d s after the reboot command",
                                            ev->code);
                else
                        why = strdup_printf("the reboot command failed%s%s",
                                            isempty(ev->message) ? "" : ": ",
                                            strempty(ev->message));
                r = why ? decide_reboot_retry(j, true, why, c, &d) : -ENOMEM;
                break;
        }

        case JOB_EVENT_SAVE_FAILED:
                r = handle_save_failed(j, ev->error, c, &d);
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
