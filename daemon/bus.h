/* SPDX-License-Identifier: MIT */
#pragma once

/* com.lifeomic.Device1 on the bus: the vtable, argument parsing, the limits on what each
 * caller may have pending, and every reply, error, signal and property change. The work is
 * the services'; nothing else in lodevd touches an sd_bus_message. */

#include <systemd/sd-bus.h>

#include "manager.h"

#define LODEV_BUS_NAME "com.lifeomic.Device1"
#define LODEV_BUS_PATH "/com/lifeomic/Device1"
#define LODEV_BUS_INTERFACE "com.lifeomic.Device1"

#define LODEV_ERROR_INVALID_ARGUMENT "com.lifeomic.Device1.Error.InvalidArgument"
#define LODEV_ERROR_QUEUE_FULL "com.lifeomic.Device1.Error.QueueFull"
#define LODEV_ERROR_NO_SPACE "com.lifeomic.Device1.Error.NoSpace"
#define LODEV_ERROR_NOT_PROVISIONED "com.lifeomic.Device1.Error.NotProvisioned"
#define LODEV_ERROR_NOT_FOUND "com.lifeomic.Device1.Error.NotFound"
#define LODEV_ERROR_BUSY "com.lifeomic.Device1.Error.Busy"
#define LODEV_ERROR_LIMITS_EXCEEDED "com.lifeomic.Device1.Error.LimitsExceeded"
#define LODEV_ERROR_OFFLINE "com.lifeomic.Device1.Error.Offline"
#define LODEV_ERROR_TIMEOUT "com.lifeomic.Device1.Error.Timeout"
#define LODEV_ERROR_FAILED "com.lifeomic.Device1.Error.Failed"

/* Calls waiting for an answer (durability, provisioning), per client connection, per user
 * (UID) and in all: a flooding application meets LimitsExceeded instead of growing lodevd's
 * memory or taking the others' share. The per-connection bound is below dbus-daemon's own
 * max_replies_per_connection (128 on the system bus), so that this is the bound a caller
 * meets. */
#define BUS_PENDING_PER_CLIENT_MAX 100
#define BUS_PENDING_PER_UID_MAX 1024
#define BUS_PENDING_MAX 4096

/* Descriptors a caller makes lodevd hold until its call is answered: an UploadFile being
 * spooled holds three (the one in the message, lodevd's duplicate of it, and the spool file).
 * Bounded per user, and in all by a quarter of lodevd's RLIMIT_NOFILE (at most
 * BUS_FDS_MAX), so that callers can never starve the spool, the MQTT connection or the
 * uploads of descriptors. Checked before the descriptor is taken. */
#define UPLOAD_FDS_HELD 3U
#define BUS_FDS_PER_UID_MAX (16U * UPLOAD_FDS_HELD)
#define BUS_FDS_MAX 1024U
/* Reboot holds (InhibitReboot) per user; inhibit.h bounds them per connection and in all. */
#define BUS_HOLDS_PER_UID_MAX 32U

typedef struct Bus Bus;

/* Connects to the system bus (DBUS_SYSTEM_BUS_ADDRESS is honoured), registers the object,
 * takes the name, attaches to the manager's loop and observes the manager. */
int bus_new(Manager *m, Bus **ret);
/* After manager_free(): the services answer what is pending while the bus is there. */
Bus *bus_free(Bus *b);
