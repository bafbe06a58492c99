/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <signal.h>
#include <stdarg.h>
#include <systemd/sd-daemon.h>

#include "config.h"
#include "event-util.h"
#include "log.h"
#include "manager.h"
#include "util.h"

/* An identity that could not be read for a reason that may pass is read again. */
#define IDENTITY_RETRY_MIN_USEC (UINT64_C(1) * 1000000)
#define IDENTITY_RETRY_MAX_USEC (UINT64_C(300) * 1000000)

static const char *const device_state_table[_DEVICE_STATE_MAX] = {
        [DEVICE_STATE_UNPROVISIONED] = "unprovisioned",
        [DEVICE_STATE_PROVISIONING] = "provisioning",
        [DEVICE_STATE_CONNECTING] = "connecting",
        [DEVICE_STATE_ONLINE] = "online",
        [DEVICE_STATE_OFFLINE] = "offline",
};

DEFINE_STRING_TABLE_LOOKUP_TO_STRING(device_state, DeviceState);

static void property_changed(Manager *m, const char *property) {
        if (m->observer && m->observer->property_changed)
                m->observer->property_changed(property, m->observer_userdata);
}

static void notify_status(Manager *m) {
        if (m->identity.thing_name)
                (void) sd_notifyf(false, "STATUS=%s (%s)", device_state_to_string(m->state),
                                  m->identity.thing_name);
        else
                (void) sd_notifyf(false, "STATUS=%s", device_state_to_string(m->state));
}

static void set_state(Manager *m, DeviceState state) {
        if (m->state == state)
                return;
        log_debug("State %s -> %s.", device_state_to_string(m->state),
                  device_state_to_string(state));
        m->state = state;
        notify_status(m);
        property_changed(m, "State");
}

_printf_(2, 3) static void set_last_error(Manager *m, const char *fmt, ...) {
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
        property_changed(m, "LastError");
}

static void connection_state_changed(Connection *c, ConnectionState state, const char *reason,
                                     void *userdata) {
        Manager *m = userdata;

        switch (state) {
        case CONNECTION_CONNECTING:
                set_state(m, DEVICE_STATE_CONNECTING);
                break;
        case CONNECTION_ONLINE:
                set_state(m, DEVICE_STATE_ONLINE);
                set_last_error(m, "%s", "");
                break;
        default:
                set_last_error(m, "connection to %s: %s", m->endpoint, strempty(reason));
                set_state(m, DEVICE_STATE_OFFLINE);
        }
}

/* The device connection of the current identity, with every service on it. */
static int start_connection(Manager *m) {
        ConnectionOptions o = {
                .host = m->config.endpoint,
                .port = m->config.port,
                .thing_name = m->identity.thing_name,
                .ca_file = m->config.ca_file,
                .cert_file = m->identity.cert_path,
                .key_file = m->identity.key_path,
                .alpn = m->config.alpn,
                .keepalive = m->config.keepalive,
                .publish_rate = m->config.publish_rate,
        };
        int r;

        assert(!m->connection);
        r = connection_new(m->event, m->resolver, &o, connection_state_changed, m,
                           &m->connection);
        if (r >= 0)
                r = delivery_attach(m->delivery, m->connection);
        if (r >= 0)
                r = uploads_attach(m->uploads, m->connection);
        if (r >= 0)
                r = jobs_attach(m->jobs, m->connection);
        if (r < 0) {
                log_error_errno(r, "Failed to set up the device connection with %s: %m",
                                m->identity.cert_path);
                set_last_error(m, "cannot start the device connection: %s", strerror(-r));
                if (m->connection) {
                        delivery_detach(m->delivery);
                        uploads_detach(m->uploads);
                        jobs_detach(m->jobs);
                }
                m->connection = connection_free(m->connection);
                return r;
        }
        return connection_start(m->connection);
}

static void stop_connection(Manager *m) {
        if (!m->connection)
                return;
        delivery_detach(m->delivery);
        uploads_detach(m->uploads);
        jobs_detach(m->jobs);
        m->connection = connection_free(m->connection);
}

static void delivered(uint64_t seq, void *userdata) {
        Manager *m = userdata;

        if (m->observer && m->observer->observation_delivered)
                m->observer->observation_delivered(seq, m->observer_userdata);
}

static void queued_changed(void *userdata) {
        property_changed(userdata, "QueuedObservations");
}

static void observation_rejected(const char *code, const char *message, void *userdata) {
        set_last_error(userdata, "FHIRIngest rejected an observation: %s: %s", code, message);
}

static const DeliveryCallbacks delivery_callbacks = {
        .delivered = delivered,
        .queued_changed = queued_changed,
        .rejected = observation_rejected,
};

static void transfer_progress(const char *id, uint64_t done, uint64_t total, void *userdata) {
        Manager *m = userdata;

        if (m->observer && m->observer->transfer_progress)
                m->observer->transfer_progress(id, done, total, m->observer_userdata);
}

static void transfer_finished(const char *id, bool ok, const char *message, void *userdata) {
        Manager *m = userdata;

        if (m->observer && m->observer->transfer_finished)
                m->observer->transfer_finished(id, ok, message, m->observer_userdata);
}

static void transfers_queued_changed(void *userdata) {
        property_changed(userdata, "QueuedTransfers");
}

static const UploadsCallbacks uploads_callbacks = {
        .progress = transfer_progress,
        .finished = transfer_finished,
        .queued_changed = transfers_queued_changed,
};

static void job_current_changed(void *userdata) {
        property_changed(userdata, "CurrentJob");
}

static void job_inhibitors_changed(void *userdata) {
        property_changed(userdata, "RebootInhibitors");
}

static void job_updated(const char *job_id, const char *status, unsigned percent,
                        const char *message, void *userdata) {
        Manager *m = userdata;

        if (m->observer && m->observer->job_updated)
                m->observer->job_updated(job_id, status, percent, message, m->observer_userdata);
}

static uint64_t job_spool_used_bytes(void *userdata) {
        Manager *m = userdata;

        return m->delivery ? delivery_used_bytes(m->delivery) : 0;
}

static const JobsCallbacks jobs_callbacks = {
        .current_changed = job_current_changed,
        .inhibitors_changed = job_inhibitors_changed,
        .updated = job_updated,
        .spool_used_bytes = job_spool_used_bytes,
};

static void provision_finished(Manager *m, const char *thing, const char *error) {
        if (m->observer && m->observer->provision_finished)
                m->observer->provision_finished(thing, error, m->observer_userdata);
}

static void provision_step_changed(ProvisionStep step, void *userdata) {
        Manager *m = userdata;

        if (step == PROVISION_IDLE)
                notify_status(m);
        else
                (void) sd_notifyf(false, "STATUS=provisioning: %s",
                                  provision_step_to_string(step));
}

static void provisioned(Identity *id, void *userdata) {
        Manager *m = userdata;

        /* A forced re-provisioning replaces a live identity: the old connection goes
         * first, and what it had in flight is sent again on the new one. */
        stop_connection(m);
        identity_done(&m->identity);
        m->identity = *id;
        *id = (Identity) {};
        m->identity_timer = sd_event_source_disable_unref(m->identity_timer);
        log_set_thing(m->identity.thing_name);
        property_changed(m, "ThingName");
        set_last_error(m, "%s", "");
        provision_finished(m, m->identity.thing_name, NULL);
        (void) start_connection(m);
}

static void provision_failed(const char *reason, void *userdata) {
        Manager *m = userdata;

        set_last_error(m, "provisioning: %s", reason);
        provision_finished(m, NULL, reason);
}

static const ProvisionerCallbacks provisioner_callbacks = {
        .step_changed = provision_step_changed,
        .provisioned = provisioned,
        .failed = provision_failed,
};

int manager_provision(Manager *m, bool force, const char **ret_thing) {
        ProvisionStep step = provisioner_step(m->provisioner);

        if (m->identity.thing_name && !force && step == PROVISION_IDLE) {
                *ret_thing = m->identity.thing_name;
                return 0;
        }
        if (force && step != PROVISION_IDLE && step != PROVISION_RETRY_WAIT &&
            !provisioner_forced(m->provisioner))
                return -EBUSY;
        if (!m->identity.thing_name)
                set_state(m, DEVICE_STATE_PROVISIONING);
        (void) provisioner_start(m->provisioner, force);
        return 1;
}

static int on_identity_timer(sd_event_source *s, uint64_t usec, void *userdata);

/* Reads the stored identity and goes on from it: connect with it, provision when there is
 * none or it is provably corrupt, or try again later when it cannot be read now. A new
 * identity is a new thing name for the gateway: never for an error that may pass. */
static void load_identity(Manager *m) {
        const char *dir = m->config.state_dir;
        uint64_t delay;
        int r;

        r = identity_load(dir, &m->identity);
        if (r >= 0) {
                m->identity_timer = sd_event_source_disable_unref(m->identity_timer);
                log_set_thing(m->identity.thing_name);
                property_changed(m, "ThingName");
                set_last_error(m, "%s", "");
                (void) start_connection(m);
                return;
        }
        if (r == -ENOENT || r == -EBADMSG) {
                if (r == -EBADMSG)
                        log_warning("The identity in %s/identity is corrupt; provisioning "
                                    "anew (it is kept until the new one has loaded).",
                                    dir);
                set_state(m, DEVICE_STATE_PROVISIONING);
                (void) provisioner_start(m->provisioner, false);
                return;
        }
        delay = backoff_next(&m->identity_backoff, random_u64());
        log_event(LOG_ERR, LODEV_MESSAGE_IDENTITY_UNREADABLE, NULL, NULL,
                  "Cannot read the identity in %s/identity: %s; trying again in %.1f s.", dir,
                  strerror(-r), (double) delay / 1e6);
        set_last_error(m, "cannot read the identity in %s/identity: %s", dir, strerror(-r));
        set_state(m, DEVICE_STATE_OFFLINE);
        r = event_arm_timer(m->event, &m->identity_timer, delay, 0, false, on_identity_timer,
                            m, "identity-retry");
        if (r < 0)
                log_error_errno(r, "Failed to arm the identity timer: %m");
}

static int on_identity_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        load_identity(userdata);
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
                set_last_error(m, "reload failed: %s", err ?: strerror(-r));
                return r;
        }

        /* The connection, identity and spool are bound to these; changing them under a
         * running daemon would strand queued data. */
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
                if (m->connection)
                        connection_set_publish_rate(m->connection, c.publish_rate);
        }
        m->config.allow_http = c.allow_http;
        SWAP_STR(m->config.http_proxy, c.http_proxy);
        SWAP_STR(m->config.installer, c.installer);
        SWAP_STR(m->config.reboot_command, c.reboot_command);
        m->config.install_timeout = c.install_timeout;
        m->config.max_reboot_delay = c.max_reboot_delay;
        m->config.max_attempts = c.max_attempts;
        m->config.transfers_max_rate = c.transfers_max_rate;
        r = http_client_set_options(m->http, &(HttpOptions) {
                                                     .proxy = m->config.http_proxy,
                                                     .allow_http = m->config.allow_http,
                                                     .max_rate = m->config.transfers_max_rate,
                                                     .ca_file = NULL,
                                             });
        if (r < 0)
                log_warning_errno(r, "Failed to apply the new http settings, ignoring: %m");
        config_done(&c);

        log_info("Configuration reloaded from %s.", m->config_path);
        return 0;
}

static int on_sighup(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        Manager *m = userdata;

        (void) sd_notify(false, "RELOADING=1");
        (void) manager_reload(m);
        (void) sd_notify(false, "READY=1");
        notify_status(m);
        return 0;
}

static int on_sigterm(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        Manager *m = userdata;

        log_info("Received %s, stopping.", si->ssi_signo == SIGTERM ? "SIGTERM" : "SIGINT");
        (void) sd_notify(false, "STOPPING=1");
        return sd_event_exit(m->event, 0);
}

int manager_new(const char *config_path, Config *config, Manager **ret) {
        Manager *m;

        m = calloc(1, sizeof(*m));
        if (!m)
                return -ENOMEM;
        m->config = *config;
        *config = (Config) {};
        m->state = DEVICE_STATE_UNPROVISIONED;
        m->config_path = strdup(config_path);
        m->endpoint = strdup_printf("%s:%u", m->config.endpoint, m->config.port);
        if (!m->config_path || !m->endpoint) {
                manager_free(m);
                return -ENOMEM;
        }
        backoff_init(&m->identity_backoff, IDENTITY_RETRY_MIN_USEC, IDENTITY_RETRY_MAX_USEC);
        *ret = m;
        return 0;
}

Manager *manager_free(Manager *m) {
        if (!m)
                return NULL;
        /* Services first: they answer what is pending while the bus is still there. */
        m->provisioner = provisioner_free(m->provisioner);
        stop_connection(m);
        m->delivery = delivery_free(m->delivery);
        m->uploads = uploads_free(m->uploads);
        m->jobs = jobs_free(m->jobs);
        m->resolver = resolver_free(m->resolver);
        m->http = http_client_free(m->http);
        sd_event_source_disable_unref(m->identity_timer);
        sd_event_unref(m->event);
        identity_done(&m->identity);
        config_done(&m->config);
        free(m->config_path);
        free(m->endpoint);
        free(m->last_error);
        free(m);
        return NULL;
}

void manager_set_observer(Manager *m, const ManagerObserver *observer, void *userdata) {
        m->observer = observer;
        m->observer_userdata = userdata;
}

int manager_open(Manager *m) {
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

        /* Pings the watchdog from the loop when WATCHDOG_USEC is set, so a stuck loop is
         * what the watchdog catches. */
        r = sd_event_set_watchdog(m->event, true);
        if (r < 0)
                log_warning_errno(r, "Failed to enable the watchdog, ignoring: %m");

        r = resolver_new(m->event, &m->resolver);
        if (r < 0)
                return log_error_errno(r, "Failed to set up the resolver: %m");
        /* One HTTP client for uploads and firmware downloads. */
        r = http_client_new(m->event,
                            &(HttpOptions) {
                                    .proxy = m->config.http_proxy,
                                    .allow_http = m->config.allow_http,
                                    .max_rate = m->config.transfers_max_rate,
                            },
                            &m->http);
        if (r < 0)
                return log_error_errno(r, "Failed to set up the HTTP client: %m");
        r = provisioner_new(m->event, m->resolver, &m->config, &provisioner_callbacks, m,
                            &m->provisioner);
        if (r < 0)
                return log_error_errno(r, "Failed to set up provisioning: %m");
        r = jobs_new(m->event, m->http, &m->config, &jobs_callbacks, m, &m->jobs);
        if (r < 0)
                return log_error_errno(r, "Failed to set up firmware jobs: %m");
        r = delivery_new(m->event, m->config.state_dir, m->config.spool_max_bytes,
                         &delivery_callbacks, m, &m->delivery);
        if (r < 0)
                return r;
        return uploads_new(m->event, m->http, m->config.state_dir, m->config.transfers_max_bytes,
                           &uploads_callbacks, m, &m->uploads);
}

int manager_start(Manager *m) {
        (void) sd_notify(false, "READY=1");
        notify_status(m);
        log_event(LOG_INFO, LODEV_MESSAGE_STARTED, NULL, NULL,
                  "lodevd " LODEV_VERSION " started, endpoint %s.", m->endpoint);
        /* An offline gateway is still ready: the network comes later. */
        load_identity(m);
        return 0;
}

int manager_run(Manager *m) {
        int r;

        r = sd_event_loop(m->event);
        if (r < 0)
                return log_error_errno(r, "Event loop failed: %m");
        return r;
}
