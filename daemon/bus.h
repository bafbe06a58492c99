/* SPDX-License-Identifier: MIT */
#pragma once

/* com.lifeomic.Device1 on the bus: vtable, argument parsing and replies only;
 * the work is the manager's. */

#include "manager.h"

#define LODEV_BUS_NAME "com.lifeomic.Device1"
#define LODEV_BUS_PATH "/com/lifeomic/Device1"
#define LODEV_BUS_INTERFACE "com.lifeomic.Device1"

#define LODEV_ERROR_INVALID_ARGUMENT "com.lifeomic.Device1.Error.InvalidArgument"
#define LODEV_ERROR_QUEUE_FULL "com.lifeomic.Device1.Error.QueueFull"
#define LODEV_ERROR_NOT_PROVISIONED "com.lifeomic.Device1.Error.NotProvisioned"
#define LODEV_ERROR_NOT_FOUND "com.lifeomic.Device1.Error.NotFound"
#define LODEV_ERROR_BUSY "com.lifeomic.Device1.Error.Busy"
#define LODEV_ERROR_NOT_SUPPORTED "com.lifeomic.Device1.Error.NotSupported"
#define LODEV_ERROR_FAILED "com.lifeomic.Device1.Error.Failed"

/* Connects to the system bus (DBUS_SYSTEM_BUS_ADDRESS is honoured), registers
 * the object, takes the name and attaches to the manager's loop. */
int bus_setup(Manager *m);

/* Emits PropertiesChanged for the NULL-terminated property names. */
void bus_emit_changed(Manager *m, const char *property, ...) __attribute__((sentinel));
