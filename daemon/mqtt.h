/* SPDX-License-Identifier: MIT */
#pragma once

/* One libmosquitto client driven by the manager's sd-event loop: an io source
 * on the client's socket (EPOLLOUT only while libmosquitto has something to
 * write), a post source that re-checks that after every dispatch (a publish
 * made in a callback is only queued), and a timer for keep-alives. Never
 * mosquitto_loop_start(), never a blocking connect on the loop. */

#include <stdbool.h>
#include <stddef.h>
#include <systemd/sd-event.h>

#include "resolve.h"

typedef struct MqttClient MqttClient;

typedef struct MqttOptions {
        const char *host;
        unsigned port;
        const char *client_id;
        bool clean_session;
        unsigned keepalive;
        const char *ca_file;
        const char *cert_file;
        const char *key_file;
        const char *alpn; /* NULL or empty: none */
} MqttOptions;

typedef struct MqttCallbacks {
        /* CONNACK arrived; rc 0 is accepted, otherwise the broker's refusal. */
        void (*connected)(MqttClient *c, int rc, bool session_present, void *userdata);
        /* The connection ended (or never came up); reason is a readable text. */
        void (*disconnected)(MqttClient *c, const char *reason, void *userdata);
        void (*message)(MqttClient *c, const char *topic, const void *payload, size_t len,
                        void *userdata);
        /* PUBACK for a QoS 1 publish. */
        void (*published)(MqttClient *c, int mid, void *userdata);
        void (*subscribed)(MqttClient *c, int mid, void *userdata);
} MqttCallbacks;

/* libmosquitto's error code rc as text; unlike mosquitto_strerror(), every code has a name
 * (the keepalive running out, for one). Reads errno for MOSQ_ERR_ERRNO. */
const char *mqtt_strerror(int rc);

/* Calls mosquitto_lib_init() once per process. */
int mqtt_global_init(void);

int mqtt_new(sd_event *event, const MqttOptions *options, const MqttCallbacks *callbacks,
             void *userdata, MqttClient **ret);
MqttClient *mqtt_free(MqttClient *c);
static inline void mqtt_freep(MqttClient **c) {
        mqtt_free(*c);
}

/* One connection attempt, the same for the claim and the device connection: the host name
 * is looked up off the loop first (without a network, libmosquitto's connect would block in
 * getaddrinfo()), then the connect starts. A failure before the connect started comes back
 * as a negative errno (with mqtt_last_log() saying why); a failure after, lookup included,
 * through disconnected(). -EALREADY while resolving, connecting or connected. */
int mqtt_start(MqttClient *c, Resolver *resolver);

/* Ends the connection (or the lookup before it); disconnected() is not called for it. */
void mqtt_disconnect(MqttClient *c);
bool mqtt_is_connected(MqttClient *c);

/* The last error libmosquitto logged (OpenSSL's reason for a refused
 * certificate, for instance), or NULL: says why mqtt_connect() failed. */
const char *mqtt_last_log(MqttClient *c);

int mqtt_publish(MqttClient *c, const char *topic, const void *payload, size_t len, int qos,
                 int *ret_mid);
/* True when topic matches the subscription filter (with + and # wildcards). */
bool mqtt_topic_matches(const char *filter, const char *topic);

/* Subscribes at QoS 1 in batches of at most 8 filters (the AWS IoT limit). */
int mqtt_subscribe(MqttClient *c, char *const *topics, size_t n, int *ret_last_mid);
