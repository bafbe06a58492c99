/* SPDX-License-Identifier: MIT */
#pragma once

/* The local steps of a firmware job: INSTALLER install, confirm and rollback (hook.c) with the
 * job's environment (SPEC §6), and the reboot in between (firmware-reboot.c) with the
 * InhibitReboot holders (inhibit.c). Each step ends as an event for job.c, handed back through
 * a callback. config is the manager's; its firmware keys are read at each step. */

#include <stdint.h>
#include <systemd/sd-event.h>

#include "conf.h"
#include "inhibit.h"
#include "job.h"

typedef struct JobSteps JobSteps;

typedef struct JobStepsCallbacks {
        /* A HOOK_* event (the hook's end) or a REBOOT_* event. */
        void (*ended)(const JobEvent *ev, void *userdata);
        /* The hook's progress, 0..100. */
        void (*progress)(unsigned percent, const char *step, void *userdata);
        /* The InhibitReboot holders changed. */
        void (*inhibitors_changed)(void *userdata);
} JobStepsCallbacks;

/* What a step needs to know of the job. */
typedef struct JobStepsJob {
        const char *job_id;
        const char *firmware_id;
        const char *deployment_id;
        const char *thing;
        const char *file;      /* the download, for install */
        unsigned reboot_tries; /* for the log */
} JobStepsJob;

int job_steps_new(sd_event *event, const Config *config, const JobStepsCallbacks *cb,
                  void *userdata, JobSteps **ret);
/* A hook still running gets SIGTERM in its group. NULL-safe. */
JobSteps *job_steps_free(JobSteps *t);

/* which: JOB_ACTION_INSTALL, _CONFIRM or _ROLLBACK. */
void job_steps_run_hook(JobSteps *t, JobAction which, const JobStepsJob *job);
void job_steps_reboot(JobSteps *t, uint64_t delay_usec, const JobStepsJob *job);
/* The job moved on from the reboot. */
void job_steps_cancel_reboot(JobSteps *t);
Inhibitors *job_steps_inhibitors(JobSteps *t);
