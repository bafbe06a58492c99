/* SPDX-License-Identifier: MIT */
#pragma once

/* Logging: structured journal entries when stderr is connected to journald,
 * readable "LEVEL: message" lines on stderr otherwise. Only the manager, bus
 * and main layers log; pure modules return errors. */

#include <errno.h>
#include <stdlib.h>
#include <syslog.h>

/* MESSAGE_IDs of key events, documented in daemon/lodevd.catalog. */
#define LODEV_MESSAGE_STARTED "5b0e8e9f2c3a4d4f9d7f1e6a2b8c0d11"
#define LODEV_MESSAGE_PROVISIONED "0c6f4b7d1e2a4c55a1f3b9d8e7c6a512"
#define LODEV_MESSAGE_ONLINE "8d2a7e1c5b3f4a66b2c4d6e8f0a1b213"
#define LODEV_MESSAGE_OFFLINE "3e9c1b5d7f2a4b77c3d5e7f9a1b2c314"
#define LODEV_MESSAGE_JOB_FINISHED "a7b3c9d1e5f24a88d4e6f8a0b2c3d415"
#define LODEV_MESSAGE_TRANSFER_FINISHED "f1e2d3c4b5a64b99e5f7a9b1c3d4e516"
#define LODEV_MESSAGE_TRANSFER_FAILED "b83b4e4f5a114c7bb282d27510f5baa5"
#define LODEV_MESSAGE_OBSERVATION_LOST "2af0e64fafdd43e683758453eec3402b"
#define LODEV_MESSAGE_IDENTITY_UNREADABLE "dec5741cef3a46ac99d73d9ad76276ea"
#define LODEV_MESSAGE_TRANSFERS_UNREADABLE "938c6f9fbba94d23b15e798130417cee"
#define LODEV_MESSAGE_SPOOL_UNREADABLE "f788d1f4dfad444d95baed11c7149467"
#define LODEV_MESSAGE_CANNOT_PROVISION "e6a2cdd55a9241a4b7def235d6155580"
#define LODEV_MESSAGE_JOB_JOURNAL_UNREADABLE "fe57ac16aaa24f6e99b4be82f05b9460"

void log_setup(int max_level, int force_stderr);
void log_set_max_level(int level);
int log_get_max_level(void);

/* Fields added to every entry while set (NULL clears): LODEV_THING. */
void log_set_thing(const char *thing);

/* Returns -abs(error), so that "return log_error_errno(r, ...)" reads well. */
int log_internal(int level, int error, const char *file, int line, const char *func,
                 const char *message_id, const char *job_id, const char *transfer_id,
                 const char *fmt, ...) __attribute__((format(printf, 9, 10)));

#define log_full_errno(level, error, ...)                                                          \
        log_internal(level, error, __FILE__, __LINE__, __func__, NULL, NULL, NULL, __VA_ARGS__)
#define log_debug(...) log_full_errno(LOG_DEBUG, 0, __VA_ARGS__)
#define log_info(...) log_full_errno(LOG_INFO, 0, __VA_ARGS__)
#define log_notice(...) log_full_errno(LOG_NOTICE, 0, __VA_ARGS__)
#define log_warning(...) log_full_errno(LOG_WARNING, 0, __VA_ARGS__)
#define log_error(...) log_full_errno(LOG_ERR, 0, __VA_ARGS__)
#define log_debug_errno(e, ...) log_full_errno(LOG_DEBUG, e, __VA_ARGS__)
#define log_warning_errno(e, ...) log_full_errno(LOG_WARNING, e, __VA_ARGS__)
#define log_error_errno(e, ...) log_full_errno(LOG_ERR, e, __VA_ARGS__)

/* An entry with a MESSAGE_ID and optional job or transfer id. */
#define log_event(level, id, job, transfer, ...)                                                   \
        log_internal(level, 0, __FILE__, __LINE__, __func__, id, job, transfer, __VA_ARGS__)

#define log_oom() log_error_errno(ENOMEM, "Out of memory.")
