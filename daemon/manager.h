/* SPDX-License-Identifier: MIT */
#pragma once

/* The Manager owns the one sd_event loop and everything attached to it: the
 * bus, signals, the MQTT connection, timers and child processes. */

#include <stdbool.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>

#include "conf.h"

typedef enum DeviceState {
        DEVICE_STATE_UNPROVISIONED,
        DEVICE_STATE_PROVISIONING,
        DEVICE_STATE_CONNECTING,
        DEVICE_STATE_ONLINE,
        DEVICE_STATE_OFFLINE,
        _DEVICE_STATE_MAX,
        _DEVICE_STATE_INVALID = -22,
} DeviceState;

typedef struct Manager {
        sd_event *event;
        sd_bus *bus;
        sd_bus_slot *object_slot;

        Config config;
        char *config_path;

        DeviceState state;
        char *thing_name;
        char *endpoint; /* "host:port", for the Endpoint property */
        char *last_error;

        unsigned queued_observations;
        unsigned queued_transfers;
        char *job_id, *job_status, *job_percent;
} Manager;

int manager_new(const char *config_path, Config *config, Manager **ret);
Manager *manager_free(Manager *m);
int manager_start(Manager *m);
int manager_run(Manager *m);

void manager_set_state(Manager *m, DeviceState state);
void manager_set_last_error(Manager *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int manager_reload(Manager *m);

const char *device_state_to_string(DeviceState s);
