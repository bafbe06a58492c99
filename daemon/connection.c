/* SPDX-License-Identifier: MIT */
#include <assert.h>

#include "backoff.h"
#include "connection.h"
#include "event-util.h"
#include "log.h"
#include "mqtt.h"
#include "ratelimit.h"
#include "util.h"

#define RECONNECT_MIN_USEC (UINT64_C(1) * 1000000)
#define RECONNECT_MAX_USEC (UINT64_C(64) * 1000000)
/* AWS IoT Core allows one CONNECT per second per client id. */
#define CONNECT_SPACING_USEC (UINT64_C(1) * 1000000)
/* The buckets refill at 92% of each limit and hold 2% as a burst, so that a pacing timer that
 * fires a little late does not lose the time it was late by. The platform counts what
 * arrives: messages that leave paced but reach it bunched (a busy host, a stalled broker)
 * must still not go over, or it drops them after acknowledging them. The 6% left over covers
 * about 60 ms of such bunching in any one-second window. */
#define PACE_RATE_FACTOR 0.92
#define PACE_BURST_FACTOR 0.02
/* sd-event coalesces timers by 250 ms unless told otherwise: far too coarse for 100
 * publishes a second. */
#define PACE_ACCURACY_USEC 1000

typedef struct Filter {
        char *filter;
        ConnectionHandler handler;
        void *userdata;
} Filter;

struct Channel {
        Connection *connection;
        ChannelPriority priority;
        ChannelOps ops;
        void *userdata;
        bool awake;
        bool has_staged;
        ChannelMessage staged; /* pulled, waiting for the limits */
        size_t n_inflight;
};

typedef struct InFlight {
        int mid;
        Channel *channel;
        uint64_t cookie;
} InFlight;

struct Connection {
        sd_event *event;
        Resolver *resolver;
        MqttClient *mqtt;
        char *thing_name;
        char *endpoint; /* host:port, for messages */
        ConnectionState state;
        ConnectionStateChanged state_changed;
        void *userdata;

        Backoff backoff;
        sd_event_source *reconnect_timer;
        uint64_t last_connect_usec;

        Filter *filters;
        size_t n_filters;

        Channel **channels;
        size_t n_channels;
        InFlight inflight[CONNECTION_INFLIGHT_MAX];
        size_t n_inflight;
        TokenBucket messages, bytes;
        sd_event_source *kick_event; /* sends what the channels have, once per iteration */
        sd_event_source *pace_timer;
};

static void set_state(Connection *c, ConnectionState state, const char *reason) {
        c->state = state;
        if (c->state_changed)
                c->state_changed(c, state, reason, c->userdata);
}

static void kick(Connection *c);

static int on_kick(sd_event_source *s, void *userdata) {
        kick(userdata);
        return 0;
}

static void kick_later(Connection *c) {
        (void) sd_event_source_set_enabled(c->kick_event, SD_EVENT_ONESHOT);
}

static int on_pace(sd_event_source *s, uint64_t usec, void *userdata) {
        kick(userdata);
        return 0;
}

static void channel_drop_staged(Channel *ch) {
        if (!ch->has_staged)
                return;
        free(ch->staged.topic);
        free(ch->staged.data);
        ch->staged = (ChannelMessage) {};
        ch->has_staged = false;
}

/* The channel that goes next: the first of the highest priority with a message. */
static Channel *pick(Connection *c) {
        for (ChannelPriority p = 0; p < _CHANNEL_PRIORITY_MAX; p++)
                for (size_t i = 0; i < c->n_channels; i++) {
                        Channel *ch = c->channels[i];
                        int r;

                        if (ch->priority != p)
                                continue;
                        if (!ch->has_staged && ch->awake) {
                                r = ch->ops.next(ch, &ch->staged, ch->userdata);
                                if (r > 0)
                                        ch->has_staged = true;
                                else
                                        ch->awake = false;
                        }
                        if (ch->has_staged)
                                return ch;
                }
        return NULL;
}

static void kick(Connection *c) {
        if (c->state != CONNECTION_ONLINE)
                return;

        while (c->n_inflight < CONNECTION_INFLIGHT_MAX) {
                Channel *ch = pick(c);
                uint64_t now, wait;
                int mid = 0, r;

                if (!ch)
                        return;
                now = event_now(c->event);
                wait = MAX(token_bucket_wait_usec(&c->messages, 1, now),
                           token_bucket_wait_usec(&c->bytes, (double) ch->staged.len, now));
                if (wait > 0) {
                        r = event_arm_timer(c->event, &c->pace_timer, wait, PACE_ACCURACY_USEC,
                                            false, on_pace, c, "pace");
                        if (r < 0)
                                log_error_errno(r, "Failed to arm the pacing timer: %m");
                        return;
                }
                r = mqtt_publish(c->mqtt, ch->staged.topic, ch->staged.data, ch->staged.len, 1,
                                 &mid);
                if (r == -ENOTCONN)
                        return;
                if (r == -EMSGSIZE || r == -EINVAL) {
                        uint64_t cookie = ch->staged.cookie;

                        log_error_errno(r, "Cannot publish %zu bytes to %s: %m", ch->staged.len,
                                        ch->staged.topic);
                        channel_drop_staged(ch);
                        if (ch->ops.failed)
                                ch->ops.failed(ch, cookie, r, ch->userdata);
                        continue;
                }
                if (r < 0) {
                        /* Kept staged: the next kick (a PUBACK, a reconnect) tries again. */
                        log_warning_errno(r, "Failed to publish to %s, will retry: %m",
                                          ch->staged.topic);
                        return;
                }
                (void) token_bucket_take(&c->messages, 1, now);
                (void) token_bucket_take(&c->bytes, (double) ch->staged.len, now);
                c->inflight[c->n_inflight++] =
                        (InFlight) { .mid = mid, .channel = ch, .cookie = ch->staged.cookie };
                ch->n_inflight++;
                channel_drop_staged(ch);
        }
}

void channel_wake(Channel *ch) {
        ch->awake = true;
        kick_later(ch->connection);
}

size_t channel_inflight(const Channel *ch) {
        return ch->n_inflight;
}

static void on_published(MqttClient *m, int mid, void *userdata) {
        Connection *c = userdata;

        for (size_t i = 0; i < c->n_inflight; i++) {
                InFlight f = c->inflight[i];

                if (f.mid != mid)
                        continue;
                c->inflight[i] = c->inflight[--c->n_inflight];
                f.channel->n_inflight--;
                f.channel->ops.acked(f.channel, f.cookie, f.channel->userdata);
                /* The freed slot goes out at once, in the same iteration: a publish from
                 * inside a libmosquitto callback is only queued, and the post source
                 * writes it. */
                kick(c);
                return;
        }
}

static void on_message(MqttClient *m, const char *topic, const void *data, size_t len,
                       void *userdata) {
        Connection *c = userdata;

        for (size_t i = 0; i < c->n_filters; i++)
                if (mqtt_topic_matches(c->filters[i].filter, topic)) {
                        c->filters[i].handler(topic, data, len, c->filters[i].userdata);
                        return;
                }
        log_debug("Message on %s (%zu bytes) that nothing subscribed to, ignoring.", topic, len);
}

static int subscribe_filters(Connection *c, size_t from) {
        _cleanup_free_ char **topics = NULL;
        size_t n = c->n_filters - from;

        if (n == 0)
                return 0;
        topics = calloc(n, sizeof(char *));
        if (!topics)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++)
                topics[i] = c->filters[from + i].filter;
        return mqtt_subscribe(c->mqtt, topics, n, NULL);
}

int connection_subscribe(Connection *c, const char *filter, ConnectionHandler handler,
                         void *userdata) {
        Filter *f;
        char *copy;

        if (c->n_filters >= CONNECTION_FILTERS_MAX)
                return -E2BIG;
        copy = strdup(filter);
        if (!copy)
                return -ENOMEM;
        f = realloc(c->filters, (c->n_filters + 1) * sizeof(*f));
        if (!f) {
                free(copy);
                return -ENOMEM;
        }
        c->filters = f;
        f[c->n_filters++] = (Filter) { .filter = copy, .handler = handler, .userdata = userdata };
        if (c->state == CONNECTION_ONLINE)
                return subscribe_filters(c, c->n_filters - 1);
        return 0;
}

int connection_add_channel(Connection *c, ChannelPriority priority, const ChannelOps *ops,
                           void *userdata, Channel **ret) {
        Channel **a, *ch;

        assert(ops && ops->next && ops->acked);
        ch = calloc(1, sizeof(*ch));
        if (!ch)
                return -ENOMEM;
        a = realloc(c->channels, (c->n_channels + 1) * sizeof(*a));
        if (!a) {
                free(ch);
                return -ENOMEM;
        }
        c->channels = a;
        *ch = (Channel) { .connection = c, .priority = priority, .ops = *ops, .userdata = userdata };
        a[c->n_channels++] = ch;
        *ret = ch;
        return 0;
}

static int on_reconnect_timer(sd_event_source *s, uint64_t usec, void *userdata);

static void schedule(Connection *c, uint64_t delay) {
        uint64_t now = event_now(c->event), when = now + delay;
        int r;

        if (c->last_connect_usec && when < c->last_connect_usec + CONNECT_SPACING_USEC)
                when = c->last_connect_usec + CONNECT_SPACING_USEC;
        r = event_arm_timer(c->event, &c->reconnect_timer, when - now, 0, false,
                            on_reconnect_timer, c, "reconnect");
        if (r < 0)
                log_error_errno(r, "Failed to arm the reconnect timer: %m");
}

static void went_down(Connection *c, const char *reason) {
        uint64_t delay = backoff_next(&c->backoff, random_u64());
        bool was_online = c->state == CONNECTION_ONLINE;

        if (was_online)
                log_event(LOG_WARNING, LODEV_MESSAGE_OFFLINE, NULL, NULL,
                          "Offline: %s; reconnecting in %.1f s.", reason, (double) delay / 1e6);
        else
                log_warning("Cannot connect to %s: %s; retrying in %.1f s.", c->endpoint, reason,
                            (double) delay / 1e6);
        if (was_online)
                for (size_t i = 0; i < c->n_channels; i++)
                        if (c->channels[i]->ops.offline)
                                c->channels[i]->ops.offline(c->channels[i],
                                                            c->channels[i]->userdata);
        set_state(c, CONNECTION_OFFLINE, reason);
        schedule(c, delay);
}

static void on_connected(MqttClient *m, int rc, bool session_present, void *userdata) {
        Connection *c = userdata;
        int r;

        if (rc != 0) {
                char reason[64];

                snprintf(reason, sizeof(reason), "connection refused (CONNACK code %d)", rc);
                mqtt_disconnect(m);
                went_down(c, reason);
                return;
        }
        r = subscribe_filters(c, 0);
        if (r < 0) {
                mqtt_disconnect(m);
                went_down(c, "cannot subscribe");
                return;
        }
        backoff_reset(&c->backoff);
        log_event(LOG_INFO, LODEV_MESSAGE_ONLINE, NULL, NULL, "Online as %s at %s%s.",
                  c->thing_name, c->endpoint, session_present ? " (session resumed)" : "");
        set_state(c, CONNECTION_ONLINE, NULL);
        for (size_t i = 0; i < c->n_channels; i++) {
                Channel *ch = c->channels[i];

                if (ch->ops.online)
                        ch->ops.online(ch, ch->userdata);
        }
        /* libmosquitto keeps unacknowledged publishes and sends them again after a
         * reconnect, so what is in flight stays in flight. */
        kick_later(c);
}

static void on_disconnected(MqttClient *m, const char *reason, void *userdata) {
        went_down(userdata, reason);
}

static const MqttCallbacks callbacks = {
        .connected = on_connected,
        .disconnected = on_disconnected,
        .message = on_message,
        .published = on_published,
};

static void attempt(Connection *c) {
        int r;

        set_state(c, CONNECTION_CONNECTING, NULL);
        c->last_connect_usec = event_now(c->event);
        r = mqtt_start(c->mqtt, c->resolver);
        if (r == -EALREADY)
                return;
        if (r < 0) {
                char reason[700];

                snprintf(reason, sizeof(reason), "%s%s%s", strerror(-r),
                         mqtt_last_log(c->mqtt) ? ": " : "", strempty(mqtt_last_log(c->mqtt)));
                went_down(c, reason);
        }
}

static int on_reconnect_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        attempt(userdata);
        return 0;
}

void connection_set_publish_rate(Connection *c, unsigned publish_rate) {
        uint64_t now = event_now(c->event);
        double rate = publish_rate * PACE_RATE_FACTOR;

        token_bucket_init(&c->messages, rate, MAX(publish_rate * PACE_BURST_FACTOR, 1.0), now);
        token_bucket_init(&c->bytes, CONNECTION_BYTES_PER_SEC * PACE_RATE_FACTOR,
                          CONNECTION_BYTES_PER_SEC * PACE_BURST_FACTOR, now);
}

int connection_new(sd_event *event, Resolver *resolver, const ConnectionOptions *o,
                   ConnectionStateChanged state_changed, void *userdata, Connection **ret) {
        MqttOptions mo = {
                .host = o->host,
                .port = o->port,
                .client_id = o->thing_name,
                .clean_session = false,
                .keepalive = o->keepalive,
                .ca_file = o->ca_file,
                .cert_file = o->cert_file,
                .key_file = o->key_file,
                .alpn = o->alpn,
        };
        Connection *c;
        int r;

        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->event = sd_event_ref(event);
        c->resolver = resolver;
        c->state = CONNECTION_OFFLINE;
        c->state_changed = state_changed;
        c->userdata = userdata;
        c->thing_name = strdup(o->thing_name);
        c->endpoint = strdup_printf("%s:%u", o->host, o->port);
        if (!c->thing_name || !c->endpoint) {
                connection_free(c);
                return -ENOMEM;
        }
        backoff_init(&c->backoff, RECONNECT_MIN_USEC, RECONNECT_MAX_USEC);
        connection_set_publish_rate(c, o->publish_rate);
        r = sd_event_add_defer(event, &c->kick_event, on_kick, c);
        if (r >= 0) {
                (void) sd_event_source_set_enabled(c->kick_event, SD_EVENT_OFF);
                (void) sd_event_source_set_description(c->kick_event, "connection-kick");
                r = mqtt_new(event, &mo, &callbacks, c, &c->mqtt);
        }
        if (r < 0) {
                connection_free(c);
                return r;
        }
        *ret = c;
        return 0;
}

static int on_release(sd_event_source *s, void *userdata) {
        mqtt_free(userdata);
        sd_event_source_disable_unref(s);
        return 0;
}

/* Frees the client at the next iteration: connection_free() may run inside one of its
 * callbacks (a re-provisioning that replaces the identity, say). */
static void release_mqtt(Connection *c) {
        int r;

        if (!c->mqtt)
                return;
        mqtt_disconnect(c->mqtt);
        r = sd_event_add_defer(c->event, NULL, on_release, c->mqtt);
        if (r < 0) {
                /* The loop has finished (-ESTALE at exit): no callback runs then. */
                if (r != -ESTALE)
                        log_debug_errno(r, "Failed to defer freeing an MQTT client: %m");
                mqtt_free(c->mqtt);
        }
        c->mqtt = NULL;
}

Connection *connection_free(Connection *c) {
        if (!c)
                return NULL;
        release_mqtt(c);
        sd_event_source_disable_unref(c->reconnect_timer);
        sd_event_source_disable_unref(c->kick_event);
        sd_event_source_disable_unref(c->pace_timer);
        for (size_t i = 0; i < c->n_channels; i++) {
                channel_drop_staged(c->channels[i]);
                free(c->channels[i]);
        }
        free(c->channels);
        for (size_t i = 0; i < c->n_filters; i++)
                free(c->filters[i].filter);
        free(c->filters);
        sd_event_unref(c->event);
        free(c->thing_name);
        free(c->endpoint);
        free(c);
        return NULL;
}

int connection_start(Connection *c) {
        attempt(c);
        return 0;
}

ConnectionState connection_state(const Connection *c) {
        return c ? c->state : CONNECTION_OFFLINE;
}

const char *connection_thing_name(const Connection *c) {
        return c->thing_name;
}
