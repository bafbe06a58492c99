/* SPDX-License-Identifier: MIT */
#include "event-util.h"
#include "firmware-reboot.h"
#include "hook.h"
#include "util.h"

struct FirmwareReboot {
        sd_event *event;
        Inhibitors *inhibitors;
        FirmwareRebootCallbacks cb;
        void *userdata;

        FirmwareRebootState state;
        char *command;
        uint64_t max_delay_usec, timeout_usec;
        sd_event_source *timer; /* the delay, the inhibitors' bound, or the boot's end */
        Hook *hook;
};

static void set_state(FirmwareReboot *r, FirmwareRebootState state) {
        r->state = state;
        if (r->cb.state_changed)
                r->cb.state_changed(r, state, r->userdata);
}

static void fail(FirmwareReboot *r, bool timed_out, const char *message) {
        r->state = FIRMWARE_REBOOT_IDLE;
        event_disarm(r->timer);
        r->cb.failed(r, timed_out, message, r->userdata);
}

static int on_timer(sd_event_source *t, uint64_t usec, void *userdata);

static void on_ended(Hook *h, HookEnd end, int code, const char *last_line, void *userdata) {
        FirmwareReboot *r = userdata;
        _cleanup_free_ char *msg = NULL;
        int k;

        if (end == HOOK_EXITED && code == 0) {
                r->hook = hook_free(r->hook, false);
                /* Exiting 0 is no proof: the boot must end within the timeout. */
                set_state(r, FIRMWARE_REBOOT_WAITING);
                k = event_arm_timer(r->event, &r->timer, r->timeout_usec, 0, false, on_timer, r,
                                    "reboot-timeout");
                if (k < 0)
                        fail(r, false, "cannot watch for the reboot");
                return;
        }
        /* last_line belongs to the hook: the message first, then the hook goes. */
        msg = strdup_printf("%s %s %d%s%s", r->command,
                            end == HOOK_EXITED   ? "exited with status"
                            : end == HOOK_KILLED ? "was killed by signal"
                                                 : "did not return in time,",
                            code, last_line ? ": " : "", strempty(last_line));
        r->hook = hook_free(r->hook, false);
        fail(r, false, msg ?: "the reboot command failed");
}

static const HookCallbacks hook_callbacks = {
        .ended = on_ended,
};

static void run(FirmwareReboot *r, bool anyway) {
        char *argv[] = { (char *) "/bin/sh", (char *) "-c", r->command, NULL };
        int k;

        event_disarm(r->timer);
        if (r->hook)
                return;
        set_state(r, anyway ? FIRMWARE_REBOOT_RUNNING_ANYWAY : FIRMWARE_REBOOT_RUNNING);
        k = hook_spawn(r->event, argv, NULL, FIRMWARE_REBOOT_COMMAND_TIMEOUT_USEC, false,
                       &hook_callbacks, r, &r->hook);
        if (k < 0) {
                _cleanup_free_ char *msg = strdup_printf("cannot run \"%s\": %s", r->command,
                                                          strerror(-k));
                fail(r, false, msg ?: "cannot run the reboot command");
        }
}

/* The delay is over: the inhibitors decide, for at most max_delay. */
static void after_delay(FirmwareReboot *r) {
        int k;

        if (inhibitors_count(r->inhibitors) == 0) {
                run(r, false);
                return;
        }
        set_state(r, FIRMWARE_REBOOT_INHIBITED);
        k = event_arm_timer(r->event, &r->timer, r->max_delay_usec, 0, false, on_timer, r,
                            "reboot-inhibited");
        if (k < 0)
                run(r, true);
}

static int on_timer(sd_event_source *t, uint64_t usec, void *userdata) {
        FirmwareReboot *r = userdata;

        switch (r->state) {
        case FIRMWARE_REBOOT_DELAYED:
                after_delay(r);
                break;
        case FIRMWARE_REBOOT_INHIBITED:
                run(r, true);
                break;
        case FIRMWARE_REBOOT_WAITING:
                fail(r, true, NULL);
                break;
        default:
                break;
        }
        return 0;
}

int firmware_reboot_request(FirmwareReboot *r, const char *command, uint64_t delay_usec,
                            uint64_t max_delay_usec, uint64_t timeout_usec) {
        int k;

        k = free_and_strdup(&r->command, command);
        if (k < 0)
                return k;
        r->max_delay_usec = max_delay_usec;
        r->timeout_usec = timeout_usec;
        event_disarm(r->timer);
        if (delay_usec == 0) {
                after_delay(r);
                return 0;
        }
        set_state(r, FIRMWARE_REBOOT_DELAYED);
        k = event_arm_timer(r->event, &r->timer, delay_usec, 0, false, on_timer, r,
                            "reboot-retry");
        if (k < 0)
                after_delay(r);
        return 0;
}

void firmware_reboot_cancel(FirmwareReboot *r) {
        if (!r)
                return;
        event_disarm(r->timer);
        /* A command that runs is let be: it may be the reboot itself. Its end is not heard. */
        r->hook = hook_free(r->hook, false);
        r->state = FIRMWARE_REBOOT_IDLE;
}

void firmware_reboot_inhibitors_changed(FirmwareReboot *r) {
        if (r && r->state == FIRMWARE_REBOOT_INHIBITED && inhibitors_count(r->inhibitors) == 0)
                run(r, false);
}

FirmwareRebootState firmware_reboot_state(const FirmwareReboot *r) {
        return r ? r->state : FIRMWARE_REBOOT_IDLE;
}

int firmware_reboot_new(sd_event *event, Inhibitors *inhibitors,
                        const FirmwareRebootCallbacks *cb, void *userdata, FirmwareReboot **ret) {
        FirmwareReboot *r;

        if (!event || !inhibitors || !cb || !cb->failed || !ret)
                return -EINVAL;
        r = calloc(1, sizeof(*r));
        if (!r)
                return -ENOMEM;
        *r = (FirmwareReboot) {
                .event = sd_event_ref(event),
                .inhibitors = inhibitors,
                .cb = *cb,
                .userdata = userdata,
        };
        *ret = r;
        return 0;
}

FirmwareReboot *firmware_reboot_free(FirmwareReboot *r) {
        if (!r)
                return NULL;
        sd_event_source_disable_unref(r->timer);
        hook_free(r->hook, false);
        free(r->command);
        sd_event_unref(r->event);
        free(r);
        return NULL;
}
