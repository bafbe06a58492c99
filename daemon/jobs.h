/* SPDX-License-Identifier: MIT */
#pragma once

/* The jobs service: firmware update jobs (SPEC §2, §6) from the platform's Jobs API to the
 * installer hook and back. job.c decides every step; this file does the I/O it asks for:
 * the journal on disk (<state_dir>/job/current) saved before every step, requests and status
 * updates on a control channel of the device connection (one update waiting for its answer at
 * a time, so that every answer belongs to a known update), the resumable download into
 * <state_dir>/job/firmware-<hash of the job id> on the manager's HTTP client, the installer and
 * confirm hooks (hook.c), and the reboot once no InhibitReboot holder is left (inhibit.c).
 * Knows nothing of D-Bus: results go out through callbacks. */

#include <stdbool.h>
#include <systemd/sd-event.h>

#include "conf.h"
#include "connection.h"
#include "http.h"
#include "inhibit.h"

/* For tests only: a file read instead of /proc/sys/kernel/random/boot_id, so that a test can
 * simulate a reboot by changing it. Read only when the variable is set. */
#define JOBS_BOOT_ID_ENV "LODEV_BOOT_ID_FILE"
/* CheckJobs() callers waiting at once. */
#define JOBS_CHECK_WAITERS_MAX 16U

typedef struct Jobs Jobs;

typedef struct JobsCallbacks {
        /* What jobs_current() returns changed. */
        void (*current_changed)(void *userdata);
        /* The reboot inhibitors changed. */
        void (*inhibitors_changed)(void *userdata);
        /* JobUpdated: status is the phase or the outcome (see jobs_current()), percent the
         * progress of the phase, message a reason or the hook's last stderr line. */
        void (*updated)(const char *job_id, const char *status, unsigned percent,
                        const char *message, void *userdata);
        /* Bytes the observation spool holds now (spool.max_bytes bounds it): the rest of its
         * room is kept free of firmware. Optional. */
        uint64_t (*spool_used_bytes)(void *userdata);
} JobsCallbacks;

/* config is the manager's and outlives the service; its firmware and http keys are read at
 * each use, so a reload takes effect at the next step. Loads the journal. */
int jobs_new(sd_event *event, HttpClient *http, const Config *config, const JobsCallbacks *cb,
             void *userdata, Jobs **ret);
/* Stops the download, sends SIGTERM to a running hook's group; the journal stays as it is, and
 * the next start goes on from it. NULL-safe. */
Jobs *jobs_free(Jobs *s);

/* Subscribes on c and asks for the job list at every CONNACK. Right away, without waiting for
 * the platform, a journal that says a reboot was pending or being confirmed is acted on: the
 * new firmware is running and must be confirmed or rolled back, online or not. */
int jobs_attach(Jobs *s, Connection *c);
void jobs_detach(Jobs *s);

/* CheckJobs(): asks for the list now; done() runs once it was answered and acted on (error 0),
 * or with -ENOTCONN when the device goes offline first, -ETIMEDOUT without an answer.
 * -ENOTCONN at once when offline, -EBUSY past JOBS_CHECK_WAITERS_MAX. */
typedef void (*JobsCheckDone)(int error, void *userdata);
int jobs_check(Jobs *s, JobsCheckDone done, void *userdata);

/* InhibitReboot(): see inhibitors_add(). */
int jobs_inhibit_reboot(Jobs *s, const char *who, const char *why, const char *owner,
                        int *ret_fd);
const Inhibitors *jobs_inhibitors(const Jobs *s);

/* The CurrentJob property: all "" when idle; status is the phase ("accepted", "downloading",
 * "installing", "awaiting-reboot", "confirming"), or while the outcome is being reported
 * "succeeded", "failed" or "rejected"; percent the progress of a download or install as text,
 * "" otherwise. The strings are valid until the next loop iteration. */
void jobs_current(Jobs *s, const char **ret_id, const char **ret_status,
                  const char **ret_percent);
