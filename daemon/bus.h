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
#define LODEV_ERROR_NOT_PROVISIONED "com.lifeomic.Device1.Error.NotProvisioned"
#define LODEV_ERROR_NOT_FOUND "com.lifeomic.Device1.Error.NotFound"
#define LODEV_ERROR_BUSY "com.lifeomic.Device1.Error.Busy"
#define LODEV_ERROR_LIMITS_EXCEEDED "com.lifeomic.Device1.Error.LimitsExceeded"
#define LODEV_ERROR_NOT_SUPPORTED "com.lifeomic.Device1.Error.NotSupported"
#define LODEV_ERROR_OFFLINE "com.lifeomic.Device1.Error.Offline"
#define LODEV_ERROR_TIMEOUT "com.lifeomic.Device1.Error.Timeout"
#define LODEV_ERROR_FAILED "com.lifeomic.Device1.Error.Failed"

/* Calls waiting for an answer (durability, provisioning), per client connection and in
 * all: a flooding application meets LimitsExceeded instead of growing lodevd's memory.
 * Below dbus-daemon's own max_replies_per_connection (128 on the system bus), so that
 * this is the bound a caller meets. */
#define BUS_PENDING_PER_CLIENT_MAX 100
#define BUS_PENDING_MAX 4096

typedef struct Bus Bus;

/* Connects to the system bus (DBUS_SYSTEM_BUS_ADDRESS is honoured), registers the object,
 * takes the name, attaches to the manager's loop and observes the manager. */
int bus_new(Manager *m, Bus **ret);
/* After manager_free(): the services answer what is pending while the bus is there. */
Bus *bus_free(Bus *b);
