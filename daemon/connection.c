/* SPDX-License-Identifier: MIT */
/* The device connection (SPEC §2): client id = thing name, persistent
 * session, the stored device certificate. Reconnects with capped exponential
 * backoff and jitter, never more than one CONNECT a second, and subscribes
 * again after every reconnect. */

#include "bus.h"
#include "log.h"
#include "manager.h"
#include "message.h"
#include "topic.h"
#include "util.h"

#define RECONNECT_MIN_USEC (UINT64_C(1) * 1000000)
#define RECONNECT_MAX_USEC (UINT64_C(64) * 1000000)
/* AWS IoT Core allows one CONNECT per second per client id. */
#define CONNECT_SPACING_USEC (UINT64_C(1) * 1000000)

static int on_reconnect_timer(sd_event_source *s, uint64_t usec, void *userdata);

static void schedule(Manager *m, uint64_t delay) {
        uint64_t now, when;
        int r;

        (void) sd_event_now(m->event, CLOCK_MONOTONIC, &now);
        when = now + delay;
        if (m->last_connect_usec && when < m->last_connect_usec + CONNECT_SPACING_USEC)
                when = m->last_connect_usec + CONNECT_SPACING_USEC;
        if (!m->reconnect_timer) {
                r = sd_event_add_time(m->event, &m->reconnect_timer, CLOCK_MONOTONIC, when, 0,
                                      on_reconnect_timer, m);
                if (r < 0) {
                        log_error_errno(r, "Failed to arm the reconnect timer: %m");
                        return;
                }
                (void) sd_event_source_set_description(m->reconnect_timer, "reconnect");
        } else {
                (void) sd_event_source_set_time(m->reconnect_timer, when);
                (void) sd_event_source_set_enabled(m->reconnect_timer, SD_EVENT_ONESHOT);
        }
}

static void went_down(Manager *m, const char *reason) {
        uint64_t delay = backoff_next(&m->reconnect_backoff, random_u64());
        bool was_online = m->state == DEVICE_STATE_ONLINE;

        if (was_online)
                log_event(LOG_WARNING, LODEV_MESSAGE_OFFLINE, NULL, NULL,
                          "Offline: %s; reconnecting in %.1f s.", reason, (double) delay / 1e6);
        else
                log_warning("Cannot connect to %s: %s; retrying in %.1f s.", m->endpoint, reason,
                            (double) delay / 1e6);
        manager_set_last_error(m, "connection to %s: %s", m->endpoint, reason);
        manager_set_state(m, DEVICE_STATE_OFFLINE);
        schedule(m, delay);
}

static int subscribe_all(Manager *m) {
        /* Not FHIRIngest/accepted: one answer per observation would double
         * the messages counted against the connection's 100/s quota, and
         * the PUBACK already says the platform has it. */
        static const TopicKind kinds[] = {
                TOPIC_FHIR_REJECTED,        TOPIC_UPLOAD_LINK,      TOPIC_UPLOAD_LINK_ACCEPTED,
                TOPIC_UPLOAD_LINK_REJECTED, TOPIC_JOBS_NOTIFY_NEXT,
        };
        char *topics[ELEMENTSOF(kinds)] = {};
        int r = 0;

        for (size_t i = 0; i < ELEMENTSOF(kinds) && r >= 0; i++)
                r = topic_build(kinds[i], m->identity.thing_name, NULL, NULL, &topics[i]);
        if (r >= 0)
                r = mqtt_subscribe(m->mqtt, topics, ELEMENTSOF(topics), NULL);
        for (size_t i = 0; i < ELEMENTSOF(kinds); i++)
                free(topics[i]);
        return r;
}

static void device_connected(MqttClient *c, int rc, bool session_present, void *userdata) {
        Manager *m = userdata;
        int r;

        if (rc != 0) {
                char reason[64];
                snprintf(reason, sizeof(reason), "connection refused (CONNACK code %d)", rc);
                mqtt_disconnect(c);
                went_down(m, reason);
                return;
        }
        r = subscribe_all(m);
        if (r < 0) {
                mqtt_disconnect(c);
                went_down(m, "cannot subscribe");
                return;
        }
        backoff_reset(&m->reconnect_backoff);
        manager_set_state(m, DEVICE_STATE_ONLINE);
        manager_set_last_error(m, "%s", "");
        log_event(LOG_INFO, LODEV_MESSAGE_ONLINE, NULL, NULL, "Online as %s at %s%s.",
                  m->identity.thing_name, m->endpoint,
                  session_present ? " (session resumed)" : "");
        manager_connection_online(m);
}

static void device_disconnected(MqttClient *c, const char *reason, void *userdata) {
        Manager *m = userdata;

        went_down(m, reason);
}

static void on_fhir_rejected(Manager *m, const void *data, size_t len) {
        PlatformError e = {};

        if (message_decode_error(data, len, &e) < 0) {
                log_warning("FHIRIngest rejected an observation with a malformed answer, "
                            "ignoring.");
                return;
        }
        log_warning("FHIRIngest rejected an observation: %d %s: %s", e.status_code,
                    e.error_code, strempty(e.error_message));
        manager_set_last_error(m, "FHIRIngest rejected an observation: %s: %s", e.error_code,
                               strempty(e.error_message));
        platform_error_done(&e);
}

static void device_message(MqttClient *c, const char *topic, const void *data, size_t len,
                           void *userdata) {
        Manager *m = userdata;
        TopicKind kind;
        int r;

        r = topic_classify(topic, m->identity.thing_name, NULL, &kind, NULL);
        if (r < 0) {
                log_debug("Message on unexpected topic %s (%zu bytes), ignoring.", topic, len);
                return;
        }
        switch (kind) {
        case TOPIC_FHIR_ACCEPTED:
                log_debug("FHIRIngest accepted an observation.");
                break;
        case TOPIC_FHIR_REJECTED:
                on_fhir_rejected(m, data, len);
                break;
        default:
                manager_dispatch_message(m, kind, topic, data, len);
        }
}

static void device_published(MqttClient *c, int mid, void *userdata) {
        manager_published(userdata, mid);
}

static const MqttCallbacks device_callbacks = {
        .connected = device_connected,
        .disconnected = device_disconnected,
        .message = device_message,
        .published = device_published,
};

static void connect_device(Manager *m) {
        int r;

        (void) sd_event_now(m->event, CLOCK_MONOTONIC, &m->last_connect_usec);
        r = mqtt_connect(m->mqtt);
        if (r == -EALREADY)
                return;
        if (r < 0) {
                char reason[700];
                snprintf(reason, sizeof(reason), "%s%s%s", strerror(-r),
                         mqtt_last_log(m->mqtt) ? ": " : "", strempty(mqtt_last_log(m->mqtt)));
                went_down(m, reason);
        }
}

static void device_resolved(Resolver *res, int error, const char *address, const char *reason,
                            void *userdata) {
        Manager *m = userdata;
        char text[512];

        if (!m->mqtt || m->state != DEVICE_STATE_CONNECTING)
                return;
        if (error < 0) {
                snprintf(text, sizeof(text), "cannot resolve %s: %s", m->config.endpoint, reason);
                went_down(m, text);
                return;
        }
        log_debug("%s is %s.", m->config.endpoint, address);
        connect_device(m);
}

static void attempt(Manager *m) {
        int r;

        manager_set_state(m, DEVICE_STATE_CONNECTING);
        /* A name is looked up off the loop first: without a network the
         * connect would otherwise block in getaddrinfo(). */
        if (resolver_is_address(m->config.endpoint)) {
                connect_device(m);
                return;
        }
        r = resolver_resolve(m->resolver, m->config.endpoint, m->config.port, &m->mqtt,
                             device_resolved, m);
        if (r < 0)
                went_down(m, strerror(-r));
}

static int on_reconnect_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        attempt(userdata);
        return 0;
}

int connection_start(Manager *m) {
        MqttOptions o = {
                .host = m->config.endpoint,
                .port = m->config.port,
                .client_id = m->identity.thing_name,
                .clean_session = false,
                .keepalive = m->config.keepalive,
                .ca_file = m->config.ca_file,
                .cert_file = m->identity.cert_path,
                .key_file = m->identity.key_path,
                .alpn = m->config.alpn,
        };
        int r;

        if (m->mqtt)
                return -EALREADY;
        backoff_init(&m->reconnect_backoff, RECONNECT_MIN_USEC, RECONNECT_MAX_USEC);
        r = mqtt_new(m->event, &o, &device_callbacks, m, &m->mqtt);
        if (r < 0)
                return log_error_errno(r, "Failed to set up the device connection with %s: %m",
                                       m->identity.cert_path);
        attempt(m);
        return 0;
}

void connection_stop(Manager *m) {
        if (!m->mqtt)
                return;
        resolver_cancel(m->resolver, &m->mqtt);
        mqtt_disconnect(m->mqtt);
        manager_release_mqtt(m, &m->mqtt);
        delivery_reset(m);
        m->reconnect_timer = sd_event_source_disable_unref(m->reconnect_timer);
}
