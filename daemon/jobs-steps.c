/* SPDX-License-Identifier: MIT */
#include <signal.h>

#include "firmware-reboot.h"
#include "hook.h"
#include "jobs-steps.h"
#include "log.h"
#include "util.h"

struct JobSteps {
        sd_event *event;
        const Config *config;
        JobStepsCallbacks cb;
        void *userdata;
        Hook *hook;
        const char *verb; /* of the hook running */
        FirmwareReboot *reboot;
        Inhibitors *inhibitors;
        char *job_id;       /* of the step under way, for the log */
        unsigned reboot_tries;
};

static void ended(JobSteps *t, const JobEvent *ev) {
        t->cb.ended(ev, t->userdata);
}

static void set_job(JobSteps *t, const JobStepsJob *job) {
        if (free_and_strdup(&t->job_id, job->job_id) < 0)
                log_oom();
        t->reboot_tries = job->reboot_tries;
}

/* --- Hooks --- */

static void on_hook_progress(Hook *h, unsigned percent, void *userdata) {
        JobSteps *t = userdata;

        t->cb.progress(percent, streq(t->verb, "install")   ? "installing"
                                : streq(t->verb, "confirm") ? "confirming"
                                                            : "rolling back",
                       t->userdata);
}

static void on_hook_line(Hook *h, const char *line, void *userdata) {
        JobSteps *t = userdata;
        _cleanup_free_ char *e = escape_control(line);

        log_event(LOG_INFO, NULL, t->job_id, NULL, "installer %s: %s", t->verb, strempty(e));
}

static void on_hook_ended(Hook *h, HookEnd end, int code, const char *last_line,
                          void *userdata) {
        JobSteps *t = userdata;
        _cleanup_free_ char *line = last_line ? strdup(last_line) : NULL;
        JobEvent ev = { .code = code, .message = line };

        t->hook = hook_free(t->hook, false);
        ev.type = end == HOOK_EXITED   ? JOB_EVENT_HOOK_EXITED
                  : end == HOOK_KILLED ? JOB_EVENT_HOOK_KILLED
                                       : JOB_EVENT_HOOK_TIMEOUT;
        log_event(end == HOOK_EXITED ? LOG_INFO : LOG_WARNING, NULL, t->job_id, NULL,
                  "Job %s: INSTALLER %s %s %d.", strempty(t->job_id), t->verb,
                  end == HOOK_EXITED   ? "exited with status"
                  : end == HOOK_KILLED ? "was killed by signal"
                                       : "did not finish in time, signal",
                  end == HOOK_TIMEOUT ? SIGTERM : code);
        ended(t, &ev);
}

static const HookCallbacks hook_callbacks = {
        .progress = on_hook_progress,
        .line = on_hook_line,
        .ended = on_hook_ended,
};

/* INSTALLER install FILE, confirm or rollback, with the job's environment (SPEC §6). */
void job_steps_run_hook(JobSteps *t, JobAction which, const JobStepsJob *job) {
        _cleanup_free_ char *e_job = NULL, *e_fw = NULL, *e_dep = NULL, *e_thing = NULL;
        const char *installer = t->config->installer;
        JobEvent ev = { .type = JOB_EVENT_HOOK_EXITED, .code = 127 };
        int r;

        set_job(t, job);
        t->hook = hook_free(t->hook, false);
        t->verb = which == JOB_ACTION_INSTALL   ? "install"
                  : which == JOB_ACTION_CONFIRM ? "confirm"
                                                : "rollback";
        e_job = strdup_printf("LODEV_JOB_ID=%s", strempty(job->job_id));
        e_fw = strdup_printf("LODEV_FIRMWARE_ID=%s", strempty(job->firmware_id));
        e_dep = strdup_printf("LODEV_DEPLOYMENT_ID=%s", strempty(job->deployment_id));
        e_thing = strdup_printf("LODEV_THING_NAME=%s", strempty(job->thing));
        if (!e_job || !e_fw || !e_dep || !e_thing) {
                log_oom();
                ev.message = "out of memory";
                ended(t, &ev);
                return;
        }
        char *argv[] = { (char *) installer, (char *) t->verb,
                         which == JOB_ACTION_INSTALL ? (char *) job->file : NULL, NULL };
        char *env[] = { e_job, e_fw, e_dep, e_thing, (char *) "LODEV_PROGRESS_FD=3", NULL };

        log_event(LOG_INFO, NULL, t->job_id, NULL, "Job %s: running %s %s.",
                  strempty(t->job_id), installer, t->verb);
        r = hook_spawn(t->event, argv, env, (uint64_t) t->config->install_timeout * 1000000,
                       true, &hook_callbacks, t, &t->hook);
        if (r < 0) {
                _cleanup_free_ char *msg = strdup_printf("cannot run %s: %s", installer,
                                                          strerror(-r));

                ev.message = msg;
                log_event(LOG_ERR, NULL, t->job_id, NULL, "Job %s: %s", strempty(t->job_id),
                          strempty(msg));
                ended(t, &ev);
        }
}

/* --- Reboot --- */

static void on_reboot_state(FirmwareReboot *r, FirmwareRebootState state, void *userdata) {
        JobSteps *t = userdata;

        switch (state) {
        case FIRMWARE_REBOOT_DELAYED:
                log_event(LOG_NOTICE, NULL, t->job_id, NULL,
                          "Job %s: the reboot command runs again shortly (try %u of %u).",
                          t->job_id, t->reboot_tries, t->config->max_reboot_tries);
                break;
        case FIRMWARE_REBOOT_INHIBITED:
                log_event(LOG_NOTICE, NULL, t->job_id, NULL,
                          "Job %s: the reboot waits for %zu inhibitor(s), at most %u s.",
                          t->job_id, inhibitors_count(t->inhibitors),
                          t->config->max_reboot_delay);
                break;
        case FIRMWARE_REBOOT_RUNNING_ANYWAY:
                log_event(LOG_WARNING, NULL, t->job_id, NULL,
                          "Job %s: reboot inhibitors still held after firmware.max_reboot_delay "
                          "(%u s); rebooting anyway.",
                          t->job_id, t->config->max_reboot_delay);
                _fallthrough_;
        case FIRMWARE_REBOOT_RUNNING:
                log_event(LOG_NOTICE, NULL, t->job_id, NULL, "Job %s: rebooting with \"%s\".",
                          t->job_id, t->config->reboot_command);
                break;
        case FIRMWARE_REBOOT_WAITING:
                log_event(LOG_NOTICE, NULL, t->job_id, NULL,
                          "Job %s: reboot requested; the job is confirmed after the restart "
                          "(still this boot in %u s: the command runs again).",
                          t->job_id, t->config->reboot_timeout);
                break;
        default:
                break;
        }
}

static void on_reboot_failed(FirmwareReboot *r, bool timed_out, const char *message,
                             void *userdata) {
        JobSteps *t = userdata;
        _cleanup_free_ char *copy = message ? strdup(message) : NULL;
        JobEvent ev = { .type = timed_out ? JOB_EVENT_REBOOT_TIMEOUT : JOB_EVENT_REBOOT_FAILED,
                        .code = (int) t->config->reboot_timeout,
                        .message = copy };

        if (timed_out)
                log_event(LOG_WARNING, NULL, t->job_id, NULL,
                          "Job %s: still the same boot %u s after the reboot command.",
                          t->job_id, t->config->reboot_timeout);
        else
                log_event(LOG_WARNING, NULL, t->job_id, NULL, "Job %s: the reboot failed: %s.",
                          t->job_id, strempty(copy));
        ended(t, &ev);
}

static const FirmwareRebootCallbacks reboot_callbacks = {
        .state_changed = on_reboot_state,
        .failed = on_reboot_failed,
};

void job_steps_reboot(JobSteps *t, uint64_t delay_usec, const JobStepsJob *job) {
        int r;

        set_job(t, job);
        r = firmware_reboot_request(t->reboot, t->config->reboot_command, delay_usec,
                                    (uint64_t) t->config->max_reboot_delay * 1000000,
                                    (uint64_t) t->config->reboot_timeout * 1000000);
        if (r < 0) {
                JobEvent ev = { .type = JOB_EVENT_REBOOT_FAILED, .message = strerror(-r) };

                ended(t, &ev);
        }
}

void job_steps_cancel_reboot(JobSteps *t) {
        firmware_reboot_cancel(t->reboot);
}

static void on_inhibitors_changed(void *userdata) {
        JobSteps *t = userdata;

        if (t->cb.inhibitors_changed)
                t->cb.inhibitors_changed(t->userdata);
        if (firmware_reboot_state(t->reboot) == FIRMWARE_REBOOT_INHIBITED &&
            inhibitors_count(t->inhibitors) == 0)
                log_event(LOG_INFO, NULL, t->job_id, NULL,
                          "Job %s: the last reboot inhibitor was released.",
                          strempty(t->job_id));
        firmware_reboot_inhibitors_changed(t->reboot);
}

Inhibitors *job_steps_inhibitors(JobSteps *t) {
        return t->inhibitors;
}

int job_steps_new(sd_event *event, const Config *config, const JobStepsCallbacks *cb,
                  void *userdata, JobSteps **ret) {
        JobSteps *t;
        int r;

        if (!event || !config || !cb || !cb->ended || !cb->progress || !ret)
                return -EINVAL;
        t = calloc(1, sizeof(*t));
        if (!t)
                return -ENOMEM;
        *t = (JobSteps) { .event = sd_event_ref(event), .config = config, .cb = *cb,
                          .userdata = userdata };
        r = inhibitors_new(event, on_inhibitors_changed, t, &t->inhibitors);
        if (r >= 0)
                r = firmware_reboot_new(event, t->inhibitors, &reboot_callbacks, t, &t->reboot);
        if (r < 0) {
                job_steps_free(t);
                return r;
        }
        *ret = t;
        return 0;
}

JobSteps *job_steps_free(JobSteps *t) {
        if (!t)
                return NULL;
        hook_free(t->hook, true);
        firmware_reboot_free(t->reboot);
        inhibitors_free(t->inhibitors);
        free(t->job_id);
        sd_event_unref(t->event);
        free(t);
        return NULL;
}
