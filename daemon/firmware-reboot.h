/* SPDX-License-Identifier: MIT */
#pragma once

/* The reboot after an install that asked for one (SPEC §6): firmware.reboot_command run with
 * /bin/sh -c, after an optional delay (a retry), once no InhibitReboot holder is left or
 * firmware.max_reboot_delay passed; then, since a command that exits 0 may still not reboot
 * (a path unit not enabled, a reboot refused), a watch: still running after
 * firmware.reboot_timeout, this boot did not end. Either failure is handed back; whether to
 * try again or roll back is the job's to decide. Knows nothing of jobs. */

#include <stdbool.h>
#include <stdint.h>
#include <systemd/sd-event.h>

#include "inhibit.h"

/* The command gets this long to return. */
#define FIRMWARE_REBOOT_COMMAND_TIMEOUT_USEC (UINT64_C(120) * 1000000)

typedef struct FirmwareReboot FirmwareReboot;

typedef enum FirmwareRebootState {
        FIRMWARE_REBOOT_IDLE,
        FIRMWARE_REBOOT_DELAYED,        /* waiting before a retry */
        FIRMWARE_REBOOT_INHIBITED,      /* waiting for the inhibitors, at most max_delay */
        FIRMWARE_REBOOT_RUNNING,        /* the command runs */
        FIRMWARE_REBOOT_RUNNING_ANYWAY, /* the command runs though inhibitors are held */
        FIRMWARE_REBOOT_WAITING,        /* the command returned 0; the boot should end now */
        _FIRMWARE_REBOOT_STATE_MAX,
        _FIRMWARE_REBOOT_STATE_INVALID = -22,
} FirmwareRebootState;

typedef struct FirmwareRebootCallbacks {
        /* For the log. Optional. */
        void (*state_changed)(FirmwareReboot *r, FirmwareRebootState state, void *userdata);
        /* The command could not run or failed (message: how), or the boot went on for
         * timeout_usec after it returned 0 (timed_out). The request is over. */
        void (*failed)(FirmwareReboot *r, bool timed_out, const char *message, void *userdata);
} FirmwareRebootCallbacks;

int firmware_reboot_new(sd_event *event, Inhibitors *inhibitors,
                        const FirmwareRebootCallbacks *cb, void *userdata, FirmwareReboot **ret);
/* Stops a running command's watch (the command is left alone: it may be the reboot itself).
 * NULL-safe. */
FirmwareReboot *firmware_reboot_free(FirmwareReboot *r);

/* Asks for the reboot; replaces a request under way. command is copied. -ENOMEM. */
int firmware_reboot_request(FirmwareReboot *r, const char *command, uint64_t delay_usec,
                            uint64_t max_delay_usec, uint64_t timeout_usec);
/* Drops the request (the job moved on). */
void firmware_reboot_cancel(FirmwareReboot *r);
/* To be called when the inhibitors changed: the last one gone lets a waiting reboot go. */
void firmware_reboot_inhibitors_changed(FirmwareReboot *r);
FirmwareRebootState firmware_reboot_state(const FirmwareReboot *r);
