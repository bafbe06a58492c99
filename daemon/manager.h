/* SPDX-License-Identifier: MIT */
#pragma once

/* The Manager owns the one sd_event loop, creates the services (provisioning, delivery) and
 * the device connection they share, and drives their lifecycle: which identity is in use,
 * when the connection starts and stops, what the device's state is. It knows nothing of
 * D-Bus: what callers may see goes out through the observer that bus.c installs. */

#include <stdbool.h>
#include <stdint.h>
#include <systemd/sd-event.h>

#include "backoff.h"
#include "conf.h"
#include "connection.h"
#include "delivery.h"
#include "http.h"
#include "identity.h"
#include "jobs.h"
#include "provision.h"
#include "resolve.h"
#include "uploads.h"

typedef enum DeviceState {
        DEVICE_STATE_UNPROVISIONED,
        DEVICE_STATE_PROVISIONING,
        DEVICE_STATE_CONNECTING,
        DEVICE_STATE_ONLINE,
        DEVICE_STATE_OFFLINE,
        _DEVICE_STATE_MAX,
        _DEVICE_STATE_INVALID = -22,
} DeviceState;

typedef struct ManagerObserver {
        /* A property of the device changed ("State", "ThingName", "LastError", ...). */
        void (*property_changed)(const char *property, void *userdata);
        void (*observation_delivered)(uint64_t seq, void *userdata);
        /* A provisioning run ended: thing on success, error otherwise. */
        void (*provision_finished)(const char *thing, const char *error, void *userdata);
        /* File transfers: bytes sent (at most once a second each), and their end. */
        void (*transfer_progress)(const char *id, uint64_t done, uint64_t total, void *userdata);
        void (*transfer_finished)(const char *id, bool ok, const char *message, void *userdata);
        /* A firmware job changed phase or progress (the JobUpdated signal). */
        void (*job_updated)(const char *job_id, const char *status, unsigned percent,
                            const char *message, void *userdata);
} ManagerObserver;

typedef struct Manager {
        sd_event *event;
        Config config;
        char *config_path;
        bool verbose; /* --verbose: debug logging whatever log_level says */

        DeviceState state;
        char *endpoint; /* "host:port", for the Endpoint property */
        char *last_error;

        Identity identity; /* empty before provisioning */
        Backoff identity_backoff;
        sd_event_source *identity_timer; /* loads an identity that could not be read */

        Resolver *resolver; /* the endpoint's name, looked up off the loop */
        HttpClient *http;   /* uploads and firmware downloads */
        Connection *connection; /* the device connection, once there is an identity */
        Provisioner *provisioner;
        Delivery *delivery;
        Uploads *uploads;
        Jobs *jobs;

        const ManagerObserver *observer;
        void *observer_userdata;
} Manager;

int manager_new(const char *config_path, Config *config, Manager **ret);
Manager *manager_free(Manager *m);
/* The loop, its signals and the services; the spool is open once it returns, so a call
 * accepted on the bus has a place to go. */
int manager_open(Manager *m);
void manager_set_observer(Manager *m, const ManagerObserver *observer, void *userdata);
/* Ready: loads the identity and starts connecting or provisioning. */
int manager_start(Manager *m);
int manager_run(Manager *m);
int manager_reload(Manager *m);

/* Provision(): 0 with *ret_thing when the device is provisioned and nothing was asked
 * for; 1 when a run is under way and the observer's provision_finished() tells its end;
 * -EBUSY when force is asked during a run started without it; -ENOKEY when a file that
 * provisioning needs is missing or unreadable (LastError names it). */
int manager_provision(Manager *m, bool force, const char **ret_thing);

const char *device_state_to_string(DeviceState s);
