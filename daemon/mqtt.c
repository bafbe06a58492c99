/* SPDX-License-Identifier: MIT */
#include <dirent.h>
#include <fcntl.h>
#include <linux/close_range.h>
#include <mosquitto.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include "log.h"
#include "mqtt.h"
#include "util.h"

struct MqttClient {
        sd_event *event;
        struct mosquitto *mosq;
        sd_event_source *io;
        int io_fd;
        sd_event_source *post;
        sd_event_source *timer;
        MqttCallbacks cb;
        void *userdata;

        char *host;
        unsigned port;
        unsigned keepalive;
        Resolver *resolver; /* set while a lookup for this client runs */
        bool connecting;
        bool connected;
        bool closing;
        /* libmosquitto holds its locks while calling us: no loop_* calls then. */
        bool in_callback;
        /* The last error line libmosquitto logged (OpenSSL's reason for a
         * refused certificate, for instance), to say why a connection ended. */
        char last_log[512];
};

int mqtt_global_init(void) {
        static bool done;

        if (!done) {
                int r = mosquitto_lib_init();
                if (r != MOSQ_ERR_SUCCESS)
                        return -EIO;
                done = true;
        }
        return 0;
}

/* libmosquitto's codes to negative errno, at the boundary. */
static int mosq_to_errno(int rc) {
        switch (rc) {
        case MOSQ_ERR_SUCCESS:
                return 0;
        case MOSQ_ERR_NOMEM:
                return -ENOMEM;
        case MOSQ_ERR_INVAL:
        case MOSQ_ERR_MALFORMED_UTF8:
                return -EINVAL;
        case MOSQ_ERR_NO_CONN:
        case MOSQ_ERR_CONN_LOST:
                return -ENOTCONN;
        case MOSQ_ERR_PAYLOAD_SIZE:
        case MOSQ_ERR_OVERSIZE_PACKET:
                return -EMSGSIZE;
        case MOSQ_ERR_ERRNO:
                return errno > 0 ? -errno : -EIO;
        case MOSQ_ERR_EAI:
                return -EHOSTUNREACH;
        case MOSQ_ERR_TLS:
                return -EPROTO;
        case MOSQ_ERR_NOT_SUPPORTED:
                return -EOPNOTSUPP;
        default:
                return -EIO;
        }
}

const char *mqtt_strerror(int rc) {
        /* The codes libmosquitto 2.0.11 (Debian 12) calls "Unknown error.", and an errno
         * of 0 behind MOSQ_ERR_ERRNO, which would read "Success". */
        switch (rc) {
        case MOSQ_ERR_ERRNO:
                return errno > 0 ? strerror(errno) : "the connection failed";
        case MOSQ_ERR_UNKNOWN:
                return "unknown error in libmosquitto";
        case MOSQ_ERR_PLUGIN_DEFER:
                return "deferred by a plugin";
        case MOSQ_ERR_KEEPALIVE:
                return "the broker did not answer within the keepalive";
        case MOSQ_ERR_LOOKUP:
                return "the host name could not be looked up";
        case MOSQ_ERR_MALFORMED_PACKET:
                return "malformed packet";
        case MOSQ_ERR_TIMEOUT:
                return "timed out";
        case MOSQ_ERR_RETAIN_NOT_SUPPORTED:
                return "retained messages are not supported";
        case MOSQ_ERR_TOPIC_ALIAS_INVALID:
                return "invalid topic alias";
        case MOSQ_ERR_ADMINISTRATIVE_ACTION:
                return "disconnected by the broker's administrator";
        case MOSQ_ERR_ALREADY_EXISTS:
                return "already exists";
        default:
                return mosquitto_strerror(rc);
        }
}

static void update_io(MqttClient *c);

/* Marks every descriptor above stderr close-on-exec: lodevd hands a descriptor to a child
 * only on purpose. */
static int fd_cloexec_all(void) {
        struct dirent *de;
        DIR *d;

        if (close_range(3, ~0U, CLOSE_RANGE_CLOEXEC) >= 0)
                return 0;
        if (errno != ENOSYS && errno != EINVAL)
                return -errno;
        /* Kernels before 5.11. */
        d = opendir("/proc/self/fd");
        if (!d)
                return -errno;
        while ((de = readdir(d))) {
                int fd = atoi(de->d_name);

                if (fd > 2 && fd != dirfd(d))
                        (void) fcntl(fd, F_SETFD, FD_CLOEXEC);
        }
        closedir(d);
        return 0;
}

static void drop_io(MqttClient *c) {
        c->io = sd_event_source_disable_unref(c->io);
        c->io_fd = -EBADF;
}

static void connection_ended(MqttClient *c, const char *reason) {
        bool notify = (c->connected || c->connecting) && !c->closing;

        drop_io(c);
        c->connected = c->connecting = false;
        (void) sd_event_source_set_enabled(c->timer, SD_EVENT_OFF);
        if (notify && c->cb.disconnected)
                c->cb.disconnected(c, reason, c->userdata);
}

static void on_log(struct mosquitto *mosq, void *userdata, int level, const char *str) {
        MqttClient *c = userdata;

        if (level & (MOSQ_LOG_ERR | MOSQ_LOG_WARNING)) {
                snprintf(c->last_log, sizeof(c->last_log), "%s", str);
                log_debug("mqtt %s: %s", c->host, str);
        }
}

static void on_connect(struct mosquitto *mosq, void *userdata, int rc, int flags) {
        MqttClient *c = userdata;

        c->connecting = false;
        c->connected = rc == 0;
        if (c->cb.connected)
                c->cb.connected(c, rc, flags & 1, c->userdata);
}

static void on_disconnect(struct mosquitto *mosq, void *userdata, int rc) {
        MqttClient *c = userdata;
        char reason[600];

        if (rc == MOSQ_ERR_SUCCESS)
                snprintf(reason, sizeof(reason), "disconnected");
        else if (c->last_log[0])
                snprintf(reason, sizeof(reason), "%s (%s)", mqtt_strerror(rc), c->last_log);
        else
                snprintf(reason, sizeof(reason), "%s", mqtt_strerror(rc));
        c->last_log[0] = '\0';
        connection_ended(c, reason);
}

static void on_message(struct mosquitto *mosq, void *userdata, const struct mosquitto_message *m) {
        MqttClient *c = userdata;

        if (c->cb.message)
                c->cb.message(c, m->topic, m->payload, (size_t) m->payloadlen, c->userdata);
}

static void on_publish(struct mosquitto *mosq, void *userdata, int mid) {
        MqttClient *c = userdata;

        if (c->cb.published)
                c->cb.published(c, mid, c->userdata);
}

static void on_subscribe(struct mosquitto *mosq, void *userdata, int mid, int qos_count,
                         const int *granted) {
        MqttClient *c = userdata;

        if (c->cb.subscribed)
                c->cb.subscribed(c, mid, c->userdata);
}

static int on_io(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        MqttClient *c = userdata;
        int rc = MOSQ_ERR_SUCCESS;

        /* Read first: on a dead socket it reports the reason and closes. */
        c->in_callback = true;
        if (revents & (EPOLLIN | EPOLLHUP | EPOLLERR))
                rc = mosquitto_loop_read(c->mosq, 1);
        if (rc == MOSQ_ERR_SUCCESS && c->io && (revents & EPOLLOUT))
                rc = mosquitto_loop_write(c->mosq, 1);
        c->in_callback = false;
        if (rc == MOSQ_ERR_SUCCESS && c->io && (revents & (EPOLLHUP | EPOLLERR))) {
                /* A refused or reset connection libmosquitto did not notice
                 * (it may still be "connecting"): with a level-triggered
                 * HUP left in place the loop would spin. */
                int err = 0;
                socklen_t len = sizeof(err);

                if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
                        err = errno;
                connection_ended(c, err ? strerror(err) : "connection closed by the peer");
                return 0;
        }
        if (rc != MOSQ_ERR_SUCCESS && c->io) {
                /* libmosquitto normally reports through on_disconnect; make sure
                 * a failure it did not report still ends the connection. */
                char reason[600];
                snprintf(reason, sizeof(reason), "%s%s%s%s", mqtt_strerror(rc),
                         c->last_log[0] ? " (" : "", c->last_log, c->last_log[0] ? ")" : "");
                c->last_log[0] = '\0';
                connection_ended(c, reason);
        }
        return 0;
}

static void update_io(MqttClient *c) {
        uint32_t events = EPOLLIN;
        int fd, r;

        /* After a failure libmosquitto may keep the dead socket until the
         * next connect replaces it: never watch it then. */
        if (!c->mosq || c->closing || (!c->connected && !c->connecting))
                return;
        fd = mosquitto_socket(c->mosq);
        if (fd < 0) {
                if (c->io)
                        connection_ended(c, "connection closed");
                return;
        }
        /* The fd changes with every connection: rebuild the source then. */
        if (c->io && fd != c->io_fd)
                drop_io(c);
        if (mosquitto_want_write(c->mosq))
                events |= EPOLLOUT;
        if (!c->io) {
                /* libmosquitto makes its socket without SOCK_CLOEXEC: no child
                 * process (an installer hook) may inherit the connection. */
                if (fcntl(fd, F_SETFD, FD_CLOEXEC) < 0)
                        log_debug_errno(errno, "Failed to make the MQTT socket close-on-exec: %m");
                r = sd_event_add_io(c->event, &c->io, fd, events, on_io, c);
                if (r < 0) {
                        log_error_errno(r, "Failed to watch the MQTT socket: %m");
                        return;
                }
                (void) sd_event_source_set_description(c->io, "mqtt-io");
                c->io_fd = fd;
        } else
                (void) sd_event_source_set_io_events(c->io, events);
}

/* After any event source ran: callbacks may have queued packets. */
static int on_post(sd_event_source *s, void *userdata) {
        update_io(userdata);
        return 0;
}

static void arm_timer(MqttClient *c) {
        uint64_t now, interval;

        /* libmosquitto sends PINGREQ and notices a missing PINGRESP from
         * mosquitto_loop_misc(). Every quarter of the keep-alive keeps a ping
         * within 1.25 keep-alives (brokers allow 1.5) while an idle gateway
         * sleeps; while connecting, once a second. */
        interval = c->connected ? MAX(c->keepalive / 4, 1u) : 1;
        (void) sd_event_now(c->event, CLOCK_MONOTONIC, &now);
        (void) sd_event_source_set_time(c->timer, now + interval * UINT64_C(1000000));
        (void) sd_event_source_set_enabled(c->timer, SD_EVENT_ONESHOT);
}

static int on_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        MqttClient *c = userdata;
        int rc;

        c->in_callback = true;
        rc = mosquitto_loop_misc(c->mosq);
        c->in_callback = false;
        if (rc != MOSQ_ERR_SUCCESS && rc != MOSQ_ERR_NO_CONN)
                log_debug("mosquitto_loop_misc: %s", mqtt_strerror(rc));
        if (c->connected || c->connecting)
                arm_timer(c);
        return 0;
}

int mqtt_new(sd_event *event, const MqttOptions *o, const MqttCallbacks *cb, void *userdata,
             MqttClient **ret) {
        _cleanup_(mqtt_freep) MqttClient *c = NULL;
        int rc, r;

        r = mqtt_global_init();
        if (r < 0)
                return r;

        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->event = sd_event_ref(event);
        c->cb = *cb;
        c->userdata = userdata;
        c->io_fd = -EBADF;
        c->port = o->port;
        c->keepalive = o->keepalive;
        c->host = strdup(o->host);
        if (!c->host)
                return -ENOMEM;

        c->mosq = mosquitto_new(o->client_id, o->clean_session, c);
        if (!c->mosq)
                return errno == EINVAL ? -EINVAL : -ENOMEM;
        /* libmosquitto makes an internal socket pair without SOCK_CLOEXEC, out of our
         * reach: no child process (an installer hook) may inherit it. */
        r = fd_cloexec_all();
        if (r < 0)
                log_debug_errno(r, "Failed to make descriptors close-on-exec: %m");

        rc = mosquitto_int_option(c->mosq, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311);
        if (rc == MOSQ_ERR_SUCCESS)
                rc = mosquitto_tls_set(c->mosq, o->ca_file, NULL, o->cert_file, o->key_file, NULL);
        /* Verify the peer, TLS 1.2 or newer; host-name checking is on unless
         * mosquitto_tls_insecure_set(), which lodevd never calls. */
        if (rc == MOSQ_ERR_SUCCESS)
                rc = mosquitto_tls_opts_set(c->mosq, 1, "tlsv1.2", NULL);
        if (rc == MOSQ_ERR_SUCCESS && !isempty(o->alpn))
                rc = mosquitto_string_option(c->mosq, MOSQ_OPT_TLS_ALPN, o->alpn);
        if (rc == MOSQ_ERR_SUCCESS)
                rc = mosquitto_int_option(c->mosq, MOSQ_OPT_TCP_NODELAY, 1);
        /* libmosquitto holds back QoS 1 publishes past 20 in flight; AWS
         * IoT allows 100, and the caller keeps to that. */
        if (rc == MOSQ_ERR_SUCCESS)
                rc = mosquitto_int_option(c->mosq, MOSQ_OPT_SEND_MAXIMUM, 100);
        if (rc != MOSQ_ERR_SUCCESS) {
                log_debug("libmosquitto setup: %s", mqtt_strerror(rc));
                return mosq_to_errno(rc);
        }

        mosquitto_log_callback_set(c->mosq, on_log);
        mosquitto_connect_with_flags_callback_set(c->mosq, on_connect);
        mosquitto_disconnect_callback_set(c->mosq, on_disconnect);
        mosquitto_message_callback_set(c->mosq, on_message);
        mosquitto_publish_callback_set(c->mosq, on_publish);
        mosquitto_subscribe_callback_set(c->mosq, on_subscribe);

        r = sd_event_add_post(event, &c->post, on_post, c);
        if (r < 0)
                return r;
        r = sd_event_add_time(event, &c->timer, CLOCK_MONOTONIC, 0, 0, on_timer, c);
        if (r < 0)
                return r;
        (void) sd_event_source_set_enabled(c->timer, SD_EVENT_OFF);
        (void) sd_event_source_set_description(c->timer, "mqtt-keepalive");

        *ret = TAKE_PTR(c);
        return 0;
}

MqttClient *mqtt_free(MqttClient *c) {
        if (!c)
                return NULL;
        c->closing = true;
        if (c->resolver)
                resolver_cancel(c->resolver, c);
        /* Flush a DISCONNECT queued from inside a callback. */
        if (c->mosq && !c->in_callback && mosquitto_socket(c->mosq) >= 0 &&
            mosquitto_want_write(c->mosq))
                (void) mosquitto_loop_write(c->mosq, 1);
        drop_io(c);
        sd_event_source_disable_unref(c->post);
        sd_event_source_disable_unref(c->timer);
        if (c->mosq)
                mosquitto_destroy(c->mosq);
        sd_event_unref(c->event);
        free(c->host);
        free(c);
        return NULL;
}

static int mqtt_connect(MqttClient *c) {
        int rc;

        if (c->connected || c->connecting)
                return -EALREADY;
        c->last_log[0] = '\0';
        c->closing = false;
        /* Non-blocking TCP connect; TLS and CONNECT proceed from the io source.
         * The host is an address or a name; see lodevd(8) on DNS. */
        rc = mosquitto_connect_async(c->mosq, c->host, (int) c->port, (int) c->keepalive);
        if (rc != MOSQ_ERR_SUCCESS) {
                int r = mosq_to_errno(rc);
                log_debug("mosquitto_connect_async(%s:%u): %s%s%s", c->host, c->port,
                          mqtt_strerror(rc), c->last_log[0] ? ": " : "", c->last_log);
                return r;
        }
        c->connecting = true;
        update_io(c);
        arm_timer(c);
        return 0;
}

static void on_resolved(Resolver *res, int error, const char *address, const char *reason,
                        void *userdata) {
        MqttClient *c = userdata;
        char text[700];
        int r;

        c->resolver = NULL;
        if (error < 0) {
                snprintf(text, sizeof(text), "cannot resolve %s: %s", c->host, reason);
                if (c->cb.disconnected)
                        c->cb.disconnected(c, text, c->userdata);
                return;
        }
        log_debug("%s is %s.", c->host, address);
        r = mqtt_connect(c);
        if (r < 0 && r != -EALREADY) {
                snprintf(text, sizeof(text), "%s%s%s", strerror(-r), c->last_log[0] ? ": " : "",
                         c->last_log);
                if (c->cb.disconnected)
                        c->cb.disconnected(c, text, c->userdata);
        }
}

int mqtt_start(MqttClient *c, Resolver *resolver) {
        int r;

        if (c->resolver || c->connected || c->connecting)
                return -EALREADY;
        c->last_log[0] = '\0';
        if (resolver_is_address(c->host))
                return mqtt_connect(c);
        r = resolver_resolve(resolver, c->host, c->port, c, on_resolved, c);
        if (r < 0)
                return r;
        c->resolver = resolver;
        return 0;
}

bool mqtt_topic_matches(const char *filter, const char *topic) {
        bool result = false;

        return mosquitto_topic_matches_sub(filter, topic, &result) == MOSQ_ERR_SUCCESS && result;
}

void mqtt_disconnect(MqttClient *c) {
        if (c && c->resolver) {
                resolver_cancel(c->resolver, c);
                c->resolver = NULL;
        }
        if (!c || (!c->connected && !c->connecting))
                return;
        c->closing = true;
        (void) mosquitto_disconnect(c->mosq);
        /* Flush the DISCONNECT packet if the socket takes it right away;
         * from inside a callback mqtt_free() does it. */
        if (!c->in_callback)
                (void) mosquitto_loop_write(c->mosq, 1);
        drop_io(c);
        c->connected = c->connecting = false;
        (void) sd_event_source_set_enabled(c->timer, SD_EVENT_OFF);
}

const char *mqtt_last_log(MqttClient *c) {
        return c && c->last_log[0] ? c->last_log : NULL;
}

bool mqtt_is_connected(MqttClient *c) {
        return c && c->connected;
}

int mqtt_publish(MqttClient *c, const char *topic, const void *payload, size_t len, int qos,
                 int *ret_mid) {
        int rc;

        if (!c->connected)
                return -ENOTCONN;
        if (len > 128 * 1024)
                return -EMSGSIZE;
        rc = mosquitto_publish(c->mosq, ret_mid, topic, (int) len, payload, qos, false);
        return mosq_to_errno(rc);
}

int mqtt_subscribe(MqttClient *c, char *const *topics, size_t n, int *ret_last_mid) {
        int rc, mid = 0;

        for (size_t i = 0; i < n; i += 8) {
                int count = (int) MIN(n - i, (size_t) 8);
                rc = mosquitto_subscribe_multiple(c->mosq, &mid, count, topics + i, 1, 0, NULL);
                if (rc != MOSQ_ERR_SUCCESS)
                        return mosq_to_errno(rc);
        }
        if (ret_last_mid)
                *ret_last_mid = mid;
        return 0;
}
