/* SPDX-License-Identifier: MIT */
#pragma once

/* The device connection (SPEC §2) as a router for the services that use it. Client id =
 * thing name, persistent session, the stored device certificate; reconnects with capped
 * exponential backoff and jitter, never more than one CONNECT a second.
 *
 * Services register the topic filters they want, each with a handler; the connection
 * subscribes to all of them after every CONNACK and hands each message to the handler of
 * the first filter that matches. Services publish through channels: the connection pulls
 * messages from them when it may send (control channels before bulk ones), so that one set
 * of per-connection limits holds for everything sent: at most CONNECTION_INFLIGHT_MAX
 * unacknowledged QoS 1 publishes, the publish rate and the byte rate of AWS IoT Core. Each
 * PUBACK goes back to the channel that published. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <systemd/sd-event.h>

#include "resolve.h"

/* AWS IoT Core, per connection. */
#define CONNECTION_INFLIGHT_MAX 100
#define CONNECTION_FILTERS_MAX 50
#define CONNECTION_BYTES_PER_SEC (512U * 1024U)

typedef struct Connection Connection;
typedef struct Channel Channel;

typedef enum ConnectionState {
        CONNECTION_CONNECTING,
        CONNECTION_ONLINE,
        CONNECTION_OFFLINE, /* lost or refused; the next attempt is scheduled */
        _CONNECTION_STATE_MAX,
        _CONNECTION_STATE_INVALID = -22,
} ConnectionState;

typedef struct ConnectionOptions {
        const char *host;
        unsigned port;
        const char *thing_name;
        const char *ca_file;
        const char *cert_file;
        const char *key_file;
        const char *alpn;
        unsigned keepalive;
        unsigned publish_rate; /* messages per second, 0 = no cap */
} ConnectionOptions;

/* reason: why the connection went offline, NULL otherwise. */
typedef void (*ConnectionStateChanged)(Connection *c, ConnectionState state, const char *reason,
                                       void *userdata);

int connection_new(sd_event *event, Resolver *resolver, const ConnectionOptions *options,
                   ConnectionStateChanged state_changed, void *userdata, Connection **ret);
/* Frees the channels and subscriptions with it; no callback runs. NULL-safe. */
Connection *connection_free(Connection *c);

int connection_start(Connection *c);
ConnectionState connection_state(const Connection *c);
const char *connection_thing_name(const Connection *c);
void connection_set_publish_rate(Connection *c, unsigned publish_rate);

typedef void (*ConnectionHandler)(const char *topic, const void *data, size_t len,
                                  void *userdata);

/* Adds a filter to subscribe to (QoS 1) at every CONNACK, and at once when online. -E2BIG
 * past CONNECTION_FILTERS_MAX. */
int connection_subscribe(Connection *c, const char *filter, ConnectionHandler handler,
                         void *userdata);

typedef enum ChannelPriority {
        CHANNEL_CONTROL, /* small messages a service waits on: job status, upload links */
        CHANNEL_BULK,    /* a backlog: observations */
        _CHANNEL_PRIORITY_MAX,
        _CHANNEL_PRIORITY_INVALID = -22,
} ChannelPriority;

typedef struct ChannelMessage {
        char *topic;     /* owned by the connection once next() returned it */
        void *data;      /* the same */
        size_t len;
        uint64_t cookie; /* the channel's name for the message, given back in acked() */
} ChannelMessage;

typedef struct ChannelOps {
        /* The next message to send: 1 with *ret filled, 0 when there is none (the channel
         * is not asked again before channel_wake()), or a negative errno, taken as 0: the
         * channel arranges its own retry. */
        int (*next)(Channel *ch, ChannelMessage *ret, void *userdata);
        /* The broker acknowledged the message. */
        void (*acked)(Channel *ch, uint64_t cookie, void *userdata);
        /* The message can never be sent (too large, say). Optional. */
        void (*failed)(Channel *ch, uint64_t cookie, int error, void *userdata);
        /* The connection came up, after the subscriptions were sent. Optional. */
        void (*online)(Channel *ch, void *userdata);
        /* The connection went down; what is in flight stays in flight and is sent again
         * after the reconnect. Optional. */
        void (*offline)(Channel *ch, void *userdata);
} ChannelOps;

/* The channel lives as long as the connection. */
int connection_add_channel(Connection *c, ChannelPriority priority, const ChannelOps *ops,
                           void *userdata, Channel **ret);
/* The channel has something to send: next() is called from the loop when the limits allow. */
void channel_wake(Channel *ch);
/* Unacknowledged messages of the channel. */
size_t channel_inflight(const Channel *ch);
