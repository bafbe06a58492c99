/* SPDX-License-Identifier: MIT */
#pragma once

/* A child process on the manager's loop: the installer hook (SPEC §6) and the reboot command.
 * The child runs in its own process group with stdin on /dev/null, stdout inherited (the
 * journal), stderr on a pipe whose lines are kept (the last one goes into statusDetails) and,
 * when asked for, a progress pipe on fd 3 (LODEV_PROGRESS_FD) whose "N" lines are percentages.
 * No other descriptor is inherited (close_range() in the child, or one by one where the kernel
 * has none). Its environment is an allow-list of lodevd's (PATH, the locale, TZ, HOME, USER,
 * LOGNAME, TMPDIR, DBUS_SYSTEM_BUS_ADDRESS, the unit's directories) and the caller's
 * variables: never NOTIFY_SOCKET, WATCHDOG_* or lodevd's own LODEV_*. Its end is decided by its exit
 * status (sd_event_add_child()), never by end-of-file on its pipes: a grandchild may keep them
 * open. The timeout sends SIGTERM to the whole group, then SIGKILL after HOOK_KILL_GRACE_USEC.
 * Knows nothing of jobs. */

#include <stdbool.h>
#include <stdint.h>
#include <systemd/sd-event.h>

/* Between SIGTERM and SIGKILL to the group on timeout. */
#define HOOK_KILL_GRACE_USEC (UINT64_C(10) * 1000000)
/* The progress fd number in the child. */
#define HOOK_PROGRESS_FD 3
/* The kept stderr line, in bytes (what statusDetails allows). */
#define HOOK_LINE_MAX 1024U

typedef struct Hook Hook;

typedef enum HookEnd {
        HOOK_EXITED, /* code = exit status */
        HOOK_KILLED, /* code = signal */
        HOOK_TIMEOUT,
        _HOOK_END_MAX,
        _HOOK_END_INVALID = -22,
} HookEnd;

typedef struct HookCallbacks {
        /* A line "N" on the progress fd, N clamped to 0..100. Optional. */
        void (*progress)(Hook *h, unsigned percent, void *userdata);
        /* Each stderr line, for the log. Optional. */
        void (*line)(Hook *h, const char *line, void *userdata);
        /* The child ended; last_line is its last non-empty stderr line or NULL. The hook may be
         * freed from here. */
        void (*ended)(Hook *h, HookEnd end, int code, const char *last_line, void *userdata);
} HookCallbacks;

/* Runs argv[0] (an absolute path) with argv and the allowed part of environ plus env (NULL-
 * terminated "K=V" entries, may be NULL; none of the allowed names). timeout_usec 0: none. with_progress: fd 3 is the
 * progress pipe. Returns -errno when the process could not be started (no callback then);
 * an exec failure shows as exit status 127 with the reason on stderr. */
int hook_spawn(sd_event *event, char *const argv[], char *const env[], uint64_t timeout_usec,
               bool with_progress, const HookCallbacks *cb, void *userdata, Hook **ret);
/* Frees the hook; a child still running gets SIGTERM in its group when kill is set and is
 * left alone otherwise (nothing of it is watched afterwards). NULL-safe. */
Hook *hook_free(Hook *h, bool kill);
pid_t hook_pid(const Hook *h);
