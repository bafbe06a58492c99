/* SPDX-License-Identifier: MIT */
#include <signal.h>
#include <stdarg.h>
#include <systemd/sd-daemon.h>

#include "config.h"
#include "bus.h"
#include "fileio.h"
#include "log.h"
#include "manager.h"
#include "util.h"

static const char *const device_state_table[_DEVICE_STATE_MAX] = {
        [DEVICE_STATE_UNPROVISIONED] = "unprovisioned",
        [DEVICE_STATE_PROVISIONING] = "provisioning",
        [DEVICE_STATE_CONNECTING] = "connecting",
        [DEVICE_STATE_ONLINE] = "online",
        [DEVICE_STATE_OFFLINE] = "offline",
};

const char *device_state_to_string(DeviceState s) {
        return s >= 0 && s < _DEVICE_STATE_MAX ? device_state_table[s] : NULL;
}

static void manager_notify_status(Manager *m) {
        if (m->thing_name)
                (void) sd_notifyf(false, "STATUS=%s (%s)", device_state_to_string(m->state),
                                  m->thing_name);
        else
                (void) sd_notifyf(false, "STATUS=%s", device_state_to_string(m->state));
}

void manager_set_state(Manager *m, DeviceState state) {
        if (m->state == state)
                return;
        log_debug("State %s -> %s.", device_state_to_string(m->state),
                  device_state_to_string(state));
        m->state = state;
        manager_notify_status(m);
        bus_emit_changed(m, "State", NULL);
}

void manager_set_last_error(Manager *m, const char *fmt, ...) {
        char *s = NULL;
        va_list ap;

        va_start(ap, fmt);
        if (vasprintf(&s, fmt, ap) < 0)
                s = NULL;
        va_end(ap);
        if (!s)
                return;
        if (streq_ptr(s, m->last_error)) {
                free(s);
                return;
        }
        free(m->last_error);
        m->last_error = s;
        bus_emit_changed(m, "LastError", NULL);
}

static int set_endpoint(Manager *m) {
        char *e = strdup_printf("%s:%u", m->config.endpoint, m->config.port);

        if (!e)
                return -ENOMEM;
        free(m->endpoint);
        m->endpoint = e;
        return 0;
}

int manager_reload(Manager *m) {
        _cleanup_free_ char *err = NULL;
        Config c;
        int r;

        r = config_load(m->config_path, &c, &err);
        if (r < 0) {
                log_error("Reload failed, keeping the running configuration: %s",
                          err ?: strerror(-r));
                manager_set_last_error(m, "reload failed: %s", err ?: strerror(-r));
                return r;
        }

        /* The connection, identity and spool are bound to these; changing
         * them under a running daemon would strand queued data. */
        if (!streq(c.endpoint, m->config.endpoint) || c.port != m->config.port ||
            !streq(c.state_dir, m->config.state_dir) || !streq(c.ca_file, m->config.ca_file))
                log_warning("platform.endpoint, platform.port, platform.ca_file and state_dir "
                            "take effect at the next start, ignoring their new values.");

        /* --verbose wins over log_level, on reload as at start. */
        if (!m->verbose)
                log_set_max_level(c.log_level);
        m->config.log_level = c.log_level;
        if (m->config.publish_rate != c.publish_rate) {
                m->config.publish_rate = c.publish_rate;
                delivery_configure(m);
        }
        m->config.allow_http = c.allow_http;
        SWAP_STR(m->config.http_proxy, c.http_proxy);
        SWAP_STR(m->config.installer, c.installer);
        SWAP_STR(m->config.reboot_command, c.reboot_command);
        m->config.install_timeout = c.install_timeout;
        m->config.max_reboot_delay = c.max_reboot_delay;
        config_done(&c);

        log_info("Configuration reloaded from %s.", m->config_path);
        return 0;
}

static int on_sighup(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        Manager *m = userdata;

        (void) sd_notify(false, "RELOADING=1");
        (void) manager_reload(m);
        (void) sd_notify(false, "READY=1");
        manager_notify_status(m);
        return 0;
}

static int on_sigterm(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        Manager *m = userdata;

        log_info("Received %s, stopping.", si->ssi_signo == SIGTERM ? "SIGTERM" : "SIGINT");
        (void) sd_notify(false, "STOPPING=1");
        return sd_event_exit(m->event, 0);
}

static int on_release_mqtt(sd_event_source *s, void *userdata) {
        mqtt_free(userdata);
        sd_event_source_disable_unref(s);
        return 0;
}

void manager_release_mqtt(Manager *m, MqttClient **c) {
        sd_event_source *s = NULL;
        int r;

        if (!*c)
                return;
        r = sd_event_add_defer(m->event, &s, on_release_mqtt, *c);
        if (r < 0) {
                /* The loop has finished (-ESTALE at exit) or cannot take a
                 * source: no callback of the client is running then. */
                if (r != -ESTALE)
                        log_debug_errno(r, "Failed to defer freeing an MQTT client: %m");
                mqtt_free(*c);
        }
        *c = NULL;
}

void manager_connection_online(Manager *m) {
        delivery_online(m);
}

void manager_published(Manager *m, int mid) {
        delivery_published(m, mid);
}

void manager_dispatch_message(Manager *m, int topic_kind, const char *topic, const void *data,
                              size_t len) {
        log_debug("Message on %s (%zu bytes) not handled by this version, ignoring.", topic, len);
}

int manager_new(const char *config_path, Config *config, Manager **ret) {
        Manager *m;
        int r;

        m = calloc(1, sizeof(*m));
        if (!m)
                return -ENOMEM;
        m->config = *config;
        *config = (Config) {};
        m->config_path = strdup(config_path);
        if (!m->config_path) {
                manager_free(m);
                return -ENOMEM;
        }
        m->state = DEVICE_STATE_UNPROVISIONED;
        r = set_endpoint(m);
        if (r < 0) {
                manager_free(m);
                return r;
        }
        *ret = m;
        return 0;
}

Manager *manager_free(Manager *m) {
        if (!m)
                return NULL;
        provision_stop(m);
        connection_stop(m);
        delivery_close(m);
        m->resolver = resolver_free(m->resolver);
        m->reconnect_timer = sd_event_source_disable_unref(m->reconnect_timer);
        sd_bus_slot_unref(m->object_slot);
        if (m->bus) {
                sd_bus_flush(m->bus);
                sd_bus_close_unref(m->bus);
        }
        sd_event_unref(m->event);
        identity_done(&m->identity);
        config_done(&m->config);
        free(m->config_path);
        free(m->thing_name);
        free(m->endpoint);
        free(m->last_error);
        free(m->job_id);
        free(m->job_status);
        free(m->job_percent);
        free(m);
        return NULL;
}

int manager_start(Manager *m) {
        sigset_t mask;
        int r;

        r = sd_event_default(&m->event);
        if (r < 0)
                return log_error_errno(r, "Failed to allocate the event loop: %m");

        sigemptyset(&mask);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);
        sigaddset(&mask, SIGHUP);
        sigaddset(&mask, SIGCHLD);
        if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0)
                return log_error_errno(errno, "Failed to block signals: %m");

        r = sd_event_add_signal(m->event, NULL, SIGTERM, on_sigterm, m);
        if (r >= 0)
                r = sd_event_add_signal(m->event, NULL, SIGINT, on_sigterm, m);
        if (r >= 0)
                r = sd_event_add_signal(m->event, NULL, SIGHUP, on_sighup, m);
        if (r < 0)
                return log_error_errno(r, "Failed to install signal handlers: %m");

        /* Pings the watchdog from the loop when WATCHDOG_USEC is set, so a
         * stuck loop is what the watchdog catches. */
        r = sd_event_set_watchdog(m->event, true);
        if (r < 0)
                log_warning_errno(r, "Failed to enable the watchdog, ignoring: %m");

        r = identity_load(m->config.state_dir, &m->identity);
        if (r < 0 && r != -ENOENT)
                log_warning_errno(r, "The identity in %s/identity is unusable (%m); "
                                     "provisioning anew.",
                                  m->config.state_dir);
        if (r >= 0) {
                m->thing_name = strdup(m->identity.thing_name);
                if (!m->thing_name)
                        return log_oom();
                log_set_thing(m->thing_name);
        }

        r = resolver_new(m->event, &m->resolver);
        if (r < 0)
                return log_error_errno(r, "Failed to set up the resolver: %m");

        /* The spool before the bus: a call that is accepted has a place to go. */
        r = delivery_open(m);
        if (r < 0)
                return r;

        r = bus_setup(m);
        if (r < 0)
                return r;

        (void) sd_notify(false, "READY=1");
        manager_notify_status(m);
        log_event(LOG_INFO, LODEV_MESSAGE_STARTED, NULL, NULL,
                  "lodevd " LODEV_VERSION " started as %s, endpoint %s.",
                  m->thing_name ?: "an unprovisioned device", m->endpoint);

        /* An offline gateway is still ready: the network comes later. */
        if (m->identity.thing_name)
                r = connection_start(m);
        else
                r = provision_start(m, false);
        if (r < 0)
                manager_set_last_error(m, "%s", strerror(-r));
        return 0;
}

int manager_run(Manager *m) {
        int r;

        r = sd_event_loop(m->event);
        if (r < 0)
                return log_error_errno(r, "Event loop failed: %m");
        return r;
}
