/* SPDX-License-Identifier: MIT */
#pragma once

/* Firmware jobs (SPEC sections 2 and 6): the durable journal of the current job and the state
 * machine that decides, for every start-up and every event, what to do next. Pure: no clock,
 * no network, no child processes. The jobs service does the I/O; here it learns what to do.
 *
 * The rules the design keeps:
 *   - the journal is saved BEFORE every step the platform or the device can see (a report, an
 *     install, a reboot), so a crash at any point is answered from the journal; a step that
 *     is not safe without its record (starting a job, the download, the install, the reboot)
 *     is not taken when the save fails: the job ends instead, reported from memory;
 *   - a job reaches INSTALLING at most once: after a restart in INSTALLING it is rolled back
 *     and FAILED, never installed again;
 *   - a job is never reported FAILED while its firmware may be armed to boot: an install that
 *     timed out, was killed or was cut by a restart, and one that exited 100 but could not be
 *     rebooted, go through ROLLING_BACK (INSTALLER rollback) first;
 *   - the terminal status is decided once, saved (ROLLING_BACK, REPORTING), and re-sent
 *     identically until the platform acknowledges it or no longer lists the job;
 *   - restarts in the install phases count as attempts, bounded by firmware.max_attempts;
 *     reboot commands by firmware.max_reboot_tries; download and report retries are bounded;
 *   - a job (id, execution number) that was finished or dropped is never started again, and
 *     one that reaches lodevd twice (notify-next and the list) is decided and reported once.
 *
 * Using it: load the journal (job_journal_load(); -ENOENT: a zeroed JobJournal, phase
 * JOB_PHASE_NONE; -EBADMSG: remove it, zero it and set .corrupt; -EPROTONOSUPPORT: written by a
 * newer lodevd, keep it aside and treat it as corrupt), ask the platform for the job list,
 * call job_reconcile(), then feed every answer and local result to job_handle(). Each call
 * fills a JobDecision: when .save is set, job_journal_save() BEFORE doing .action. When that
 * save fails and .must_save is set, feed JOB_EVENT_SAVE_FAILED instead of acting; otherwise
 * act anyway (memory is ahead of the disk; a restart goes on from the older record). When
 * .action is JOB_ACTION_NONE there is nothing to do until the next event.
 *
 * Every row has a tag; test-job.c walks every tag. "listed": the job is among the
 * inProgressJobs/queuedJobs with the same execution number; "moved on": no execution pending,
 * another execution or a terminal status for the job, or the rejections
 * InvalidStateTransition, TerminalStateReached, VersionMismatch; "report X": REPORTING with X
 * saved, then REPORT; "roll back, X": ROLLING_BACK with X saved, then ROLLBACK.
 *
 *  tag  phase            event                                  next phase, action
 *  ---  ---------------  -------------------------------------  ------------------------------
 *  X1   NONE/DONE        an execution before the first list     -, NONE (the list decides)
 *  X2   NONE/DONE        execution QUEUED, document valid       ACCEPTED, REPORT IN_PROGRESS
 *  X3   NONE/DONE        execution QUEUED, document invalid     report REJECTED "<reason>"
 *  X4   NONE/DONE        execution IN_PROGRESS, unknown job     report FAILED "lodevd has no
 *                                                               record of this job: ..."
 *  X5   NONE/DONE        no execution, or a terminal one        -, NONE
 *  X6   DONE             the same execution again               report the saved report again
 *                                                               (FAILED when none was saved);
 *                                                               -, NONE when the platform
 *                                                               acknowledged it in this run
 *  X7   active           execution naming another job           -, GET_LIST (check first)
 *  X8   active           moved on (see M1-M3)
 *  X9   DOWNLOADING      our execution, a fresh URL wanted      -, DOWNLOAD from the offset
 *  X10  DOWNLOADING      that, but the document changed or the  report FAILED
 *                        URL is invalid
 *  X11  active           our execution again, nothing wanted    -, NONE
 *  U1   NONE/DONE        execution unreadable (not JSON, over   report REJECTED "the job
 *                        128 KiB), its id from the topic        execution cannot be read: ..."
 *  U2   DOWNLOADING      ours unreadable, a fresh URL wanted    report FAILED "... cannot be read"
 *  U3   other            execution unreadable                   -, NONE (looked at when idle)
 *  U4   any              execution unreadable, no job id        -, GET_LIST
 *  G1   any              the list request rejected              -, GET_LIST with backoff
 *  G2   active           our <job>/get: ResourceNotFound        moved on
 *  G3   DOWNLOADING      our <job>/get rejected otherwise       -, GET_JOB with backoff
 *  G4   any              another <job>/get rejected             -, GET_LIST with backoff
 *  A1   any              an answer for another job's update     -, NONE
 *  A2   DOWNLOADING      an update (progress) rejected, moved   moved on
 *  A3   any              any other answer to a progress report  -, NONE (the next one says more)
 *  A4   ACCEPTED         update accepted                        DOWNLOADING, GET_JOB (fresh URL)
 *  A5   REPORTING        update accepted                        DONE, GET_LIST (the next job)
 *  A6   ACCEPTED,        update rejected, retryable             -, REPORT again with backoff,
 *        REPORTING                                              at most JOB_REPORT_TRIES_MAX
 *  A7   REPORTING        retryable, too often                   DONE (re-sent at the next
 *                                                               reconcile while listed)
 *  A8   ACCEPTED,        update rejected otherwise              moved on
 *        REPORTING
 *  A9   other            an update answer                       -, NONE (the install, reboot,
 *                                                               confirm or rollback goes on)
 *  D1   DOWNLOADING      download finished and verified         INSTALLING, INSTALL
 *  D2   DOWNLOADING      network error or 403 (expired URL)     -, GET_JOB (network: backoff)
 *  D3   DOWNLOADING      D2 JOB_DOWNLOAD_TRIES_MAX times in a   report FAILED
 *                        row without progress
 *  D4   DOWNLOADING      refused (404, a refused scheme...),    report FAILED at once
 *                        sha/size mismatch, no space, local
 *  H1   INSTALLING       installer exit 0                       report SUCCEEDED
 *  H2   INSTALLING       installer exit 100                     AWAITING_REBOOT, REBOOT
 *  H3   INSTALLING       other exit                             report FAILED "<why>" + stderr
 *  H4   INSTALLING       killed by a signal, timeout            roll back, FAILED "<why>"
 *  H5   CONFIRMING       confirm exit 0                         report SUCCEEDED
 *  H6   CONFIRMING       confirm other exit, signal, timeout    report FAILED
 *  H7   ROLLING_BACK     the rollback ended, any way            report the saved report with
 *                                                               how it ended; without one,
 *                                                               DONE, GET_LIST
 *  R1   AWAITING_REBOOT  reboot command failed, or the same     -, REBOOT again after
 *                        boot firmware.reboot_timeout after it   job_reboot_delay_usec()
 *  R2   AWAITING_REBOOT  R1 after firmware.max_reboot_tries     roll back, FAILED "could not be
 *                        runs                                   rebooted: ..."
 *  S1   ACCEPTED         its save failed                        report REJECTED "the job
 *                                                               journal cannot be saved: ..."
 *  S2   DOWNLOADING,     the save entering it failed            report FAILED "the job journal
 *        INSTALLING                                             cannot be saved: ..."
 *  S3   AWAITING_REBOOT  the save entering it failed            roll back, FAILED (not
 *                                                               rebooted: not confirmable)
 *  L1   any              an event that does not fit the phase   -, NONE
 *  M1   ACCEPTED,        moved on                               DONE, ABANDON (no report)
 *        DOWNLOADING
 *  M2   REPORTING        moved on                               DONE, GET_LIST
 *  M3   INSTALLING..     moved on                               unchanged: what runs goes to
 *        ROLLING_BACK                                           its end (cutting it is worse
 *                                                               for the device); the report
 *                                                               is then refused, the job dropped
 *
 * With the platform's list (job_reconcile()); STARTUP is the first list after lodevd started,
 * when the journal is all there is; RECONNECT every later one, when local work may be running:
 *
 *  C1   NONE/DONE        a job IN_PROGRESS lodevd does not know report FAILED "no record" (the
 *                                                               orphans first, one at a time)
 *  C2   DONE             the same execution still listed        as X6
 *  C3   NONE/DONE        a job QUEUED                           -, GET_JOB
 *  C4   NONE/DONE        nothing listed                         -, NONE
 *  C5   ACCEPTED         listed                                 REPORT IN_PROGRESS again
 *  C6   ACCEPTED,        not listed                             moved on
 *        DOWNLOADING
 *  C7   DOWNLOADING      STARTUP, listed                        GET_JOB, resume at the offset
 *                                                               (a try: D3 bounds it)
 *  C8   DOWNLOADING      RECONNECT, listed, a URL wanted        GET_JOB (the answer was lost)
 *  C9   INSTALLING       STARTUP, listed                        roll back, FAILED "interrupted
 *                                                               during installation" (never
 *                                                               installed twice)
 *  C10  INSTALLING       STARTUP, not listed                    ROLLING_BACK, ROLLBACK, then
 *                                                               DONE without a report
 *  C11  AWAITING_REBOOT  STARTUP, another boot (or unknown)     CONFIRMING, CONFIRM (attempt 1)
 *  C12  AWAITING_REBOOT  STARTUP, same boot                     attempts + 1; REBOOT again
 *  C13  AWAITING_REBOOT  STARTUP, same boot, attempts past      roll back, FAILED "restarted N
 *                        firmware.max_attempts                  times without finishing"
 *  C14  AWAITING_REBOOT  STARTUP, same boot, reboot tries used  as R2
 *  C15  CONFIRMING       STARTUP                                attempts + 1; CONFIRM again (the
 *                                                               hook must be idempotent)
 *  C16  CONFIRMING       STARTUP, attempts past max_attempts    report FAILED "restarted N
 *                                                               times without finishing"
 *  C17  ROLLING_BACK     STARTUP                                attempts + 1; ROLLBACK again
 *  C18  ROLLING_BACK     STARTUP, attempts past max_attempts    as H7, saying the rollback did
 *                                                               not finish
 *  C19  REPORTING        listed                                 REPORT the saved report again
 *  C20  REPORTING        not listed                             DONE, then as C1-C4
 *  C21  INSTALLING..     RECONNECT                              -, NONE (the work goes on)
 *        ROLLING_BACK
 *
 * C11-C18 do not depend on the list: after a reboot the new firmware must be confirmed (or
 * the old one rolled back) whether the platform can be reached or not. */

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "message.h"

/* The journal file inside the job directory (<state_dir>/job). */
#define JOB_JOURNAL_FILE "current"
/* The format written; 1 and 2 are read. */
#define JOB_JOURNAL_VERSION 2
/* Reading back more than this is corruption. */
#define JOB_JOURNAL_SIZE_MAX (128U * 1024U)

/* Failed downloads in a row without a byte of progress before the job is FAILED. */
#define JOB_DOWNLOAD_TRIES_MAX 5U
/* Retryable rejections of one report before giving up on it for this connection. */
#define JOB_REPORT_TRIES_MAX 8U
/* Progress goes to the platform at most once per interval AND per step (see below). */
#define JOB_PROGRESS_INTERVAL_USEC (5U * 1000U * 1000U)
#define JOB_PROGRESS_STEP 10U
/* The statusDetails key the reason text goes in, and the installer's last stderr line. */
#define JOB_DETAIL_REASON "reason"
#define JOB_DETAIL_STDERR "stderr"
#define JOB_DETAIL_PROGRESS "percentProgress"
/* How the rollback before a FAILED report ended. */
#define JOB_DETAIL_ROLLBACK "rollback"
/* The wait before reboot_command runs again (R1): doubles from the first to the last. */
#define JOB_REBOOT_DELAY_MIN_USEC (UINT64_C(2) * 1000000)
#define JOB_REBOOT_DELAY_MAX_USEC (UINT64_C(300) * 1000000)

typedef enum JobPhase {
        JOB_PHASE_NONE,            /* no journal: idle */
        JOB_PHASE_ACCEPTED,        /* document valid, IN_PROGRESS being reported */
        JOB_PHASE_DOWNLOADING,     /* offset saved as the download goes */
        JOB_PHASE_INSTALLING,      /* the installer may have been started */
        JOB_PHASE_AWAITING_REBOOT, /* installed (exit 100), reboot pending */
        JOB_PHASE_CONFIRMING,      /* rebooted, confirm hook may have been started */
        JOB_PHASE_ROLLING_BACK,    /* the rollback hook may have been started; the report
                                    * that follows it is saved */
        JOB_PHASE_REPORTING,       /* terminal status decided and saved, not yet acknowledged */
        JOB_PHASE_DONE,            /* finished or dropped; kept so it never runs again */
        _JOB_PHASE_MAX,
        _JOB_PHASE_INVALID = -EINVAL,
} JobPhase;

/* "accepted", "downloading", "installing", "awaiting-reboot", "confirming", "rolling-back",
 * "reporting", "done"; "none" for JOB_PHASE_NONE; NULL when invalid. */
const char *job_phase_to_string(JobPhase p);
JobPhase job_phase_from_string(const char *s);

/* What the caller does next. Answers come back through job_handle(). */
typedef enum JobAction {
        JOB_ACTION_NONE,     /* nothing until the next event */
        JOB_ACTION_GET_LIST, /* publish jobs/get, then job_reconcile(RECONNECT) with the list */
        JOB_ACTION_GET_JOB,  /* publish <job_id>/get, then JOB_EVENT_EXECUTION with the answer */
        JOB_ACTION_REPORT,   /* publish <job_id>/update with .report (job_report_encode()) */
        JOB_ACTION_DOWNLOAD, /* fetch .url into the download file, resuming at .offset */
        JOB_ACTION_INSTALL,  /* run INSTALLER install <download file> */
        JOB_ACTION_REBOOT,   /* run firmware.reboot_command (inhibitors permitting) */
        JOB_ACTION_CONFIRM,  /* run INSTALLER confirm */
        JOB_ACTION_ROLLBACK, /* run INSTALLER rollback */
        JOB_ACTION_ABANDON,  /* stop what runs for the job, no report; then GET_LIST */
        _JOB_ACTION_MAX,
        _JOB_ACTION_INVALID = -EINVAL,
} JobAction;

const char *job_action_to_string(JobAction a);

/* A job update: a status a device may set and statusDetails as AWS wants them (a map of at
 * most JOB_STATUS_DETAILS_MAX strings). status _JOB_STATUS_INVALID: no report. */
typedef struct JobReport {
        JobStatus status;
        size_t n_details;
        char *keys[JOB_STATUS_DETAILS_MAX];
        char *values[JOB_STATUS_DETAILS_MAX];
} JobReport;

#define JOB_REPORT_NULL ((JobReport) { .status = _JOB_STATUS_INVALID })

void job_report_done(JobReport *r);
/* Clears r and sets the status. */
void job_report_reset(JobReport *r, JobStatus status);
/* Sets key (AWS rules: [a-zA-Z0-9:_-]{1,128}, else -EINVAL) to a cleaned copy of value (see
 * job_detail_sanitize()); replaces an existing key; a value that cleans to nothing is left
 * out. -E2BIG when the map is full, -ENOMEM. */
int job_report_set(JobReport *r, const char *key, const char *value);
/* percentProgress as "N", N clamped to 0..100. */
int job_report_set_progress(JobReport *r, unsigned percent);
/* A deep copy into *ret (overwritten, not freed). */
int job_report_copy(const JobReport *r, JobReport *ret);
/* NULL when absent. */
const char *job_report_get(const JobReport *r, const char *key);
/* The <jobId>/update payload, via message_encode_job_update() (no expectedVersion). */
int job_report_encode(const JobReport *r, char **ret);

/* A statusDetails value from arbitrary text (a hook's stderr, curl's message): invalid UTF-8
 * bytes become '?', control characters (C0, DEL, C1) a space, white space at both ends goes,
 * and the result is cut at a character boundary to at most JOB_STATUS_DETAIL_VALUE_MAX bytes,
 * ending in "..." when cut. *ret is NULL when nothing is left. -ENOMEM. */
int job_detail_sanitize(const char *s, char **ret);

/* The download file's name for a job: "firmware-" and 32 hex digits of the SHA-256 of the id,
 * so a hostile id never reaches a path. -EINVAL for an invalid job id, -ENOMEM. */
int job_download_file_name(const char *job_id, char **ret);

/* The journal: what is durable about the current (or last) job, plus a few run-time fields. */
typedef struct JobJournal {
        JobPhase phase;
        char *job_id;
        int64_t execution_number; /* -1 unknown */
        int64_t version_number;   /* -1 unknown */
        char *firmware_id;        /* NULL for a job that was never accepted */
        char *deployment_id;
        char *sha256;             /* lower-case hex, NULL when the document had none */
        int64_t size;             /* -1 when the document had none */
        char *file;               /* job_download_file_name() */
        uint64_t offset;          /* bytes of the download known to be durable */
        uint64_t failed_offset;   /* offset at the last failed try */
        unsigned download_tries;  /* failed tries in a row without progress */
        unsigned attempts;        /* restarts in INSTALLING..ROLLING_BACK */
        unsigned reboot_tries;    /* runs of reboot_command asked for in AWAITING_REBOOT */
        char *boot_id;            /* the boot the reboot was asked in; NULL unknown */
        JobReport report;         /* ROLLING_BACK, REPORTING, DONE: the terminal report, if one
                                   * was decided */
        uint64_t accepted_usec;   /* CLOCK_REALTIME */
        uint64_t updated_usec;

        /* Not saved. */
        bool corrupt;             /* set by the caller: the journal could not be read */
        bool want_url;            /* a GET_JOB for a fresh URL is outstanding */
        unsigned report_tries;    /* retryable rejections of the current report */
        bool reconciled;          /* a list was taken in since lodevd started */
        bool acknowledged;        /* the platform accepted the terminal report in this run */
} JobJournal;

#define JOB_JOURNAL_NULL                                                                           \
        ((JobJournal) { .execution_number = -1,                                                    \
                        .version_number = -1,                                                      \
                        .size = -1,                                                                \
                        .report = JOB_REPORT_NULL })

/* A kernel boot id as the journal keeps it: 1 to 64 of [a-zA-Z0-9-]. */
bool job_boot_id_valid(const char *s);

/* Frees the contents and leaves JOB_JOURNAL_NULL. NULL-safe. */
void job_journal_done(JobJournal *j);

/* <dir>/current: -ENOENT when there is none, -EBADMSG when it is not a journal this code
 * wrote (bad JSON, wrong types, out-of-range values, an invalid job id, a file name that is not
 * the job's, a report the platform would refuse), -EPROTONOSUPPORT for a journal of a newer
 * version than JOB_JOURNAL_VERSION (a later lodevd wrote it: nothing is read from it, and it
 * must not be removed), -EFBIG over JOB_JOURNAL_SIZE_MAX, other -errno from reading. Older
 * versions are read (version 1: no rebootTries). *ret untouched on failure. */
int job_journal_load(const char *dir, JobJournal *ret);
/* Durably (write_file_atomic, mode 0600), creating dir (mkdir_private) when missing. -EINVAL
 * for a journal that would not load back (phase NONE, invalid job id, ...). */
int job_journal_save(const char *dir, const JobJournal *j);
/* Renames <dir>/current to <dir>/current.newer (replacing an older one there) and syncs dir:
 * a journal this lodevd cannot read is kept, not deleted. */
int job_journal_set_aside(const char *dir);
/* Removes <dir>/current and syncs dir; 0 when there was none. */
int job_journal_remove(const char *dir);
/* Records the durable download offset (DOWNLOADING only, at most the expected size) and saves;
 * the caller calls it every few MiB, after fsync()ing the file. On failure j is unchanged. */
int job_journal_save_offset(const char *dir, JobJournal *j, uint64_t offset, uint64_t now_usec);

/* What the state machine needs to know about the device. */
typedef struct JobContext {
        unsigned max_attempts; /* firmware.max_attempts; 0 is taken as 1 */
        unsigned max_reboot_tries; /* firmware.max_reboot_tries; 0 is taken as 1 */
        bool allow_http;       /* http.allow_http */
        uint64_t now_usec;     /* CLOCK_REALTIME, for the journal's time stamps */
        const char *boot_id;   /* /proc/sys/kernel/random/boot_id; NULL when unknown */
} JobContext;

typedef struct JobDecision {
        JobAction action;
        bool save;            /* the journal changed: save it before acting */
        bool must_save;       /* the action is unsafe without that save (JOB_EVENT_SAVE_FAILED) */
        bool backoff;         /* repeat after the caller's retry backoff, not at once */
        bool remove_download; /* the download file is no longer needed */
        const char *job_id;   /* the job the action is for; borrowed from the journal, or for
                               * GET_JOB of a queued job from the list given to reconcile */
        const char *url;      /* DOWNLOAD: borrowed from the execution fed in */
        uint64_t offset;      /* DOWNLOAD: resume here (truncate the file to it first) */
        uint64_t delay_usec;  /* REBOOT: run the command this much later */
        JobReport report;     /* REPORT: owned */
} JobDecision;

void job_decision_done(JobDecision *d);

typedef enum JobReconcileMode {
        JOB_RECONCILE_STARTUP,   /* first list after lodevd started: the journal is all there is */
        JOB_RECONCILE_RECONNECT, /* later lists: local work may be running */
        _JOB_RECONCILE_MODE_MAX,
        _JOB_RECONCILE_MODE_INVALID = -EINVAL,
} JobReconcileMode;

/* Given the journal and the platform's list (jobs/get/accepted), decides the next action (see
 * the tables above). Orphans (IN_PROGRESS jobs lodevd has no record of) are failed before any
 * queued job is started; one job at a time. -EINVAL, -ENOMEM (j unchanged). */
int job_reconcile(JobJournal *j, const JobList *list, JobReconcileMode mode, const JobContext *c,
                  JobDecision *ret);

typedef enum JobDownloadError {
        JOB_DOWNLOAD_NETWORK,  /* connection lost, timeout, 5xx: resume with a fresh URL */
        JOB_DOWNLOAD_EXPIRED,  /* 403: the presigned URL expired; resume with a fresh URL */
        JOB_DOWNLOAD_REFUSED,  /* another 4xx: the firmware is not there for us */
        JOB_DOWNLOAD_CORRUPT,  /* sha256 or size differ from the document */
        JOB_DOWNLOAD_NO_SPACE, /* ENOSPC, EDQUOT, or larger than lodevd allows */
        JOB_DOWNLOAD_LOCAL,    /* another local error */
        _JOB_DOWNLOAD_ERROR_MAX,
        _JOB_DOWNLOAD_ERROR_INVALID = -EINVAL,
} JobDownloadError;

typedef enum JobEventType {
        JOB_EVENT_EXECUTION,       /* .execution (NULL or no job_id: none pending) */
        JOB_EVENT_EXECUTION_UNREADABLE, /* .job_id (from the topic; NULL: unknown), .error:
                                         * -E2BIG, -EBADMSG */
        JOB_EVENT_GET_REJECTED,    /* .job_id (NULL: the list request), .error_code */
        JOB_EVENT_UPDATE_ACCEPTED, /* <job_id>/update/accepted: .job_id the answer's job (NULL:
                                    * the current one), .progress: the answer to a progress
                                    * report */
        JOB_EVENT_UPDATE_REJECTED, /* .job_id, .error_code, .progress */
        JOB_EVENT_DOWNLOAD_DONE,   /* complete, sha256 and size verified, fsynced */
        JOB_EVENT_DOWNLOAD_FAILED, /* .download_error, .offset (durable bytes), .message */
        JOB_EVENT_HOOK_EXITED,     /* install, confirm or rollback (by phase): .code = exit
                                    * status */
        JOB_EVENT_HOOK_KILLED,     /* .code = signal */
        JOB_EVENT_HOOK_TIMEOUT,
        JOB_EVENT_REBOOT_FAILED,   /* .message */
        JOB_EVENT_REBOOT_TIMEOUT,  /* still this boot firmware.reboot_timeout after the command
                                    * returned 0; .code the timeout in seconds */
        JOB_EVENT_SAVE_FAILED,     /* a .must_save decision's save failed: .error */
        _JOB_EVENT_TYPE_MAX,
        _JOB_EVENT_TYPE_INVALID = -EINVAL,
} JobEventType;

typedef struct JobEvent {
        JobEventType type;
        const JobExecution *execution;
        const char *job_id;
        int error;
        bool progress;
        const char *error_code;
        JobDownloadError download_error;
        uint64_t offset;
        int code;
        const char *message; /* hooks: the last stderr line; downloads: what failed; or NULL */
} JobEvent;

/* Applies one event (see the table above). Events that do not fit the phase (a late answer,
 * a hook result after a restart) change nothing and give JOB_ACTION_NONE. -EINVAL for a
 * malformed event or an execution with an invalid job id (decision NONE), -ENOMEM (j
 * unchanged). */
int job_handle(JobJournal *j, const JobEvent *ev, const JobContext *c, JobDecision *ret);

/* Which update rejections are worth repeating (RequestThrottled, InternalError,
 * ResourceNotFound). */
bool job_error_code_retryable(const char *code);

/* The wait before the reboot command runs again after the tries-th run failed: from
 * JOB_REBOOT_DELAY_MIN_USEC doubling up to JOB_REBOOT_DELAY_MAX_USEC. */
uint64_t job_reboot_delay_usec(unsigned tries);

/* Progress to the platform: an update is sent when the percentage has grown by at least
 * JOB_PROGRESS_STEP points since the last one sent AND at least JOB_PROGRESS_INTERVAL_USEC
 * have passed. Both, not either: "at most one per 5 s" and "per 10 %" are both limits, so a
 * fast download sends at most ten updates and a slow one at most one per 5 s (AWS counts job
 * updates against the connection's publish budget). The first step is measured from 0 (the
 * IN_PROGRESS report said 0) and needs no wait. Reset the throttle at each new phase
 * (download, install). Local listeners (D-Bus JobUpdated) get every percent; this is only for
 * the platform. */
typedef struct JobProgressThrottle {
        bool sent;
        unsigned percent;
        uint64_t usec; /* CLOCK_MONOTONIC of the last update sent */
} JobProgressThrottle;

bool job_progress_should_send(const JobProgressThrottle *t, unsigned percent, uint64_t now_usec);
void job_progress_sent(JobProgressThrottle *t, unsigned percent, uint64_t now_usec);
void job_progress_reset(JobProgressThrottle *t);
