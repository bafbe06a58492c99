/* SPDX-License-Identifier: MIT */
#pragma once

/* The Manager owns the one sd_event loop and everything attached to it: the
 * bus, signals, the MQTT connection, timers and child processes. */

#include <stdbool.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>

#include "backoff.h"
#include "conf.h"
#include "delivery.h"
#include "identity.h"
#include "mqtt.h"
#include "resolve.h"

typedef enum ProvisionStep {
        PROVISION_IDLE,
        PROVISION_CONNECTING,  /* claim connection coming up */
        PROVISION_SUBSCRIBING, /* waiting for SUBACK before asking */
        PROVISION_CREATING,    /* CreateKeysAndCertificate / CreateCertificateFromCsr sent */
        PROVISION_REGISTERING, /* RegisterThing sent */
        PROVISION_RETRY_WAIT,  /* failed; the retry timer runs */
        _PROVISION_STEP_MAX,
        _PROVISION_STEP_INVALID = -22,
} ProvisionStep;

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
        bool verbose; /* --verbose: debug logging whatever log_level says */

        DeviceState state;
        char *thing_name;
        char *endpoint; /* "host:port", for the Endpoint property */
        char *last_error;

        Identity identity; /* empty before provisioning */
        Resolver *resolver; /* the endpoint's name, looked up off the loop */

        /* The device connection: client id = thing name, persistent session. */
        MqttClient *mqtt;
        Backoff reconnect_backoff;
        sd_event_source *reconnect_timer;
        uint64_t last_connect_usec;

        /* Provisioning by claim, on its own connection. */
        MqttClient *claim;
        ProvisionStep provision_step;
        bool provision_force;
        int provision_sub_mid;
        char *provision_client_id;
        char *provision_key_pem; /* the device key: made here (csr) or received (create) */
        char *provision_cert_pem;
        char *provision_token;
        Backoff provision_backoff;
        sd_event_source *provision_timer; /* step timeout, then retry delay */
        sd_bus_message **provision_waiters; /* Provision() calls waiting for the result */
        size_t n_provision_waiters;

        Delivery delivery;

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

/* Frees an MQTT client at the next loop iteration: safe from inside its callbacks. */
void manager_release_mqtt(Manager *m, MqttClient **c);

/* provision.c */
int provision_start(Manager *m, bool force);
void provision_stop(Manager *m);
int provision_add_waiter(Manager *m, sd_bus_message *msg);
const char *provision_step_to_string(ProvisionStep s);

/* Hooks of the device connection into what uses it. */
void manager_connection_online(Manager *m);
void manager_published(Manager *m, int mid);
void manager_dispatch_message(Manager *m, int topic_kind, const char *topic, const void *data,
                              size_t len);

/* connection.c */
int connection_start(Manager *m);
void connection_stop(Manager *m);
