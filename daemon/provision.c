/* SPDX-License-Identifier: MIT */
/* Fleet provisioning by claim (SPEC §2): on a connection of its own with the
 * shared claim certificate, ask for a certificate (CreateKeysAndCertificate,
 * or CreateCertificateFromCsr with a key made here), register the thing with
 * the ownership token, store the identity atomically, then bring up the
 * device connection. Any failure drops the claim connection and starts over
 * from step 1 after a backoff: an ownership token is never reused. */

#include <stdarg.h>
#include <systemd/sd-daemon.h>

#include "bus.h"
#include "crypto.h"
#include "log.h"
#include "manager.h"
#include "message.h"
#include "topic.h"
#include "util.h"

#define PROVISION_STEP_TIMEOUT_USEC (UINT64_C(30) * 1000000)
#define PROVISION_RETRY_MIN_USEC (UINT64_C(1) * 1000000)
#define PROVISION_RETRY_MAX_USEC (UINT64_C(300) * 1000000)

static const char *const step_table[_PROVISION_STEP_MAX] = {
        [PROVISION_IDLE] = "idle",
        [PROVISION_CONNECTING] = "connecting with the claim certificate",
        [PROVISION_SUBSCRIBING] = "subscribing",
        [PROVISION_CREATING] = "creating the certificate",
        [PROVISION_REGISTERING] = "registering the thing",
        [PROVISION_RETRY_WAIT] = "waiting to retry",
};

const char *provision_step_to_string(ProvisionStep s) {
        return s >= 0 && s < _PROVISION_STEP_MAX ? step_table[s] : NULL;
}

static bool use_csr(Manager *m) {
        return m->config.method == PROVISION_METHOD_CSR;
}

static void reply_waiters(Manager *m, const char *thing, const char *error) {
        for (size_t i = 0; i < m->n_provision_waiters; i++) {
                sd_bus_message *msg = m->provision_waiters[i];
                int r;

                if (thing)
                        r = sd_bus_reply_method_return(msg, "s", thing);
                else
                        r = sd_bus_reply_method_errorf(msg, LODEV_ERROR_FAILED, "%s", error);
                if (r < 0)
                        log_debug_errno(r, "Failed to answer Provision(), ignoring: %m");
                sd_bus_message_unref(msg);
        }
        m->provision_waiters = (free(m->provision_waiters), NULL);
        m->n_provision_waiters = 0;
}

int provision_add_waiter(Manager *m, sd_bus_message *msg) {
        sd_bus_message **w;

        /* Bounded: each waiter holds a message; a flood of callers gets Busy. */
        if (m->n_provision_waiters >= 64)
                return -EBUSY;
        w = realloc(m->provision_waiters, (m->n_provision_waiters + 1) * sizeof(*w));
        if (!w)
                return -ENOMEM;
        m->provision_waiters = w;
        w[m->n_provision_waiters++] = sd_bus_message_ref(msg);
        return 0;
}

static void clear_secrets(Manager *m) {
        /* The key must not linger in memory longer than needed. */
        if (m->provision_key_pem)
                explicit_bzero(m->provision_key_pem, strlen(m->provision_key_pem));
        m->provision_key_pem = (free(m->provision_key_pem), NULL);
        m->provision_cert_pem = (free(m->provision_cert_pem), NULL);
        m->provision_token = (free(m->provision_token), NULL);
}

static void set_step(Manager *m, ProvisionStep step) {
        m->provision_step = step;
        log_debug("Provisioning: %s.", provision_step_to_string(step));
        (void) sd_notifyf(false, "STATUS=provisioning: %s", provision_step_to_string(step));
}

static int on_provision_timer(sd_event_source *s, uint64_t usec, void *userdata);

static void arm_timer(Manager *m, uint64_t delay) {
        uint64_t now;
        int r;

        (void) sd_event_now(m->event, CLOCK_MONOTONIC, &now);
        if (!m->provision_timer) {
                r = sd_event_add_time(m->event, &m->provision_timer, CLOCK_MONOTONIC,
                                      now + delay, 0, on_provision_timer, m);
                if (r < 0) {
                        log_error_errno(r, "Failed to arm the provisioning timer: %m");
                        return;
                }
                (void) sd_event_source_set_description(m->provision_timer, "provision-timer");
        } else {
                (void) sd_event_source_set_time(m->provision_timer, now + delay);
                (void) sd_event_source_set_enabled(m->provision_timer, SD_EVENT_ONESHOT);
        }
}

static void teardown(Manager *m) {
        resolver_cancel(m->resolver, &m->provision_step);
        if (m->claim) {
                mqtt_disconnect(m->claim);
                manager_release_mqtt(m, &m->claim);
        }
        clear_secrets(m);
        m->provision_client_id = (free(m->provision_client_id), NULL);
}

/* Ends this attempt, reports why and schedules the next one. */
_printf_(2, 3) static void fail(Manager *m, const char *fmt, ...) {
        char msg[1024];
        uint64_t delay;
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);

        teardown(m);
        delay = backoff_next(&m->provision_backoff, random_u64());
        log_error("Provisioning failed: %s; retrying in %.1f s.", msg, (double) delay / 1e6);
        manager_set_last_error(m, "provisioning: %s", msg);
        reply_waiters(m, NULL, msg);
        set_step(m, PROVISION_RETRY_WAIT);
        arm_timer(m, delay);
}

static void claim_connected(MqttClient *c, int rc, bool session_present, void *userdata) {
        Manager *m = userdata;
        _cleanup_free_ char *t1 = NULL, *t2 = NULL, *t3 = NULL, *t4 = NULL;
        TopicKind acc = use_csr(m) ? TOPIC_CSR_ACCEPTED : TOPIC_CREATE_ACCEPTED,
                  rej = use_csr(m) ? TOPIC_CSR_REJECTED : TOPIC_CREATE_REJECTED;
        int r;

        if (rc != 0) {
                fail(m, "the platform refused the claim connection (CONNACK code %d)", rc);
                return;
        }
        r = topic_build(acc, NULL, NULL, NULL, &t1);
        if (r >= 0)
                r = topic_build(rej, NULL, NULL, NULL, &t2);
        if (r >= 0)
                r = topic_build(TOPIC_REGISTER_ACCEPTED, NULL, m->config.template_name, NULL, &t3);
        if (r >= 0)
                r = topic_build(TOPIC_REGISTER_REJECTED, NULL, m->config.template_name, NULL, &t4);
        if (r >= 0) {
                char *topics[] = { t1, t2, t3, t4 };
                r = mqtt_subscribe(c, topics, ELEMENTSOF(topics), &m->provision_sub_mid);
        }
        if (r < 0) {
                fail(m, "cannot subscribe to the provisioning topics: %s", strerror(-r));
                return;
        }
        set_step(m, PROVISION_SUBSCRIBING);
        arm_timer(m, PROVISION_STEP_TIMEOUT_USEC);
}

static void claim_subscribed(MqttClient *c, int mid, void *userdata) {
        Manager *m = userdata;
        _cleanup_free_ char *topic = NULL, *payload = NULL, *csr = NULL;
        int r;

        if (m->provision_step != PROVISION_SUBSCRIBING || mid != m->provision_sub_mid)
                return;

        if (use_csr(m)) {
                /* The key is made here and never sent anywhere. */
                r = crypto_make_key_and_csr(&m->provision_key_pem, &csr);
                if (r < 0) {
                        fail(m, "cannot make a key and CSR: %s", strerror(-r));
                        return;
                }
                r = message_encode_create_from_csr(csr, &payload);
        } else
                r = message_encode_create(&payload);
        if (r >= 0)
                r = topic_build(use_csr(m) ? TOPIC_CSR : TOPIC_CREATE, NULL, NULL, NULL, &topic);
        if (r >= 0)
                r = mqtt_publish(c, topic, payload, strlen(payload), 1, NULL);
        if (r < 0) {
                fail(m, "cannot request a certificate: %s", strerror(-r));
                return;
        }
        set_step(m, PROVISION_CREATING);
        arm_timer(m, PROVISION_STEP_TIMEOUT_USEC);
}

static void register_thing(Manager *m, MqttClient *c) {
        _cleanup_free_ char *topic = NULL, *payload = NULL;
        const char **names, **values;
        size_t n = m->config.n_parameters;
        int r = 0;

        names = calloc(n + 1, sizeof(char *));
        values = calloc(n + 1, sizeof(char *));
        if (!names || !values) {
                free(names);
                free(values);
                fail(m, "out of memory");
                return;
        }
        for (size_t i = 0; i < n && r >= 0; i++) {
                _cleanup_free_ char *err = NULL;
                char *v = NULL;

                names[i] = m->config.parameters[i].name;
                r = config_parameter_resolve(&m->config, &m->config.parameters[i], &v, &err);
                if (r < 0) {
                        fail(m, "%s", err ?: strerror(-r));
                        break;
                }
                values[i] = v;
        }
        if (r >= 0) {
                r = message_encode_register(m->config.template_name, names, values, n,
                                            m->provision_token, &payload);
                if (r >= 0)
                        r = topic_build(TOPIC_REGISTER, NULL, m->config.template_name, NULL,
                                        &topic);
                if (r >= 0)
                        r = mqtt_publish(c, topic, payload, strlen(payload), 1, NULL);
                if (r < 0)
                        fail(m, "cannot send RegisterThing: %s", strerror(-r));
                else {
                        set_step(m, PROVISION_REGISTERING);
                        arm_timer(m, PROVISION_STEP_TIMEOUT_USEC);
                }
        }
        for (size_t i = 0; i < n; i++)
                free((char *) values[i]);
        free(names);
        free(values);
}

static void on_certificate(Manager *m, MqttClient *c, const void *data, size_t len) {
        CreateCertificateResponse resp = {};
        int r;

        r = message_decode_create_certificate(data, len, &resp);
        if (r < 0) {
                log_warning("Provisioning: malformed certificate answer (%s), ignoring.",
                            strerror(-r));
                return;
        }
        if (!use_csr(m)) {
                if (!resp.private_key) {
                        create_certificate_response_done(&resp);
                        fail(m, "the certificate answer has no private key");
                        return;
                }
                free(m->provision_key_pem);
                m->provision_key_pem = TAKE_PTR(resp.private_key);
        }
        /* With a CSR the certificate must be for our key; an answer meant for
         * another connection is not ours to take. */
        r = crypto_check_cert_key(resp.certificate_pem, m->provision_key_pem);
        if (r < 0) {
                create_certificate_response_done(&resp);
                if (use_csr(m)) {
                        log_warning("Provisioning: a certificate not for this device's key "
                                    "arrived, ignoring.");
                        return;
                }
                fail(m, "the issued certificate does not match its private key");
                return;
        }
        log_info("Provisioning: certificate %s issued.", resp.certificate_id);
        free(m->provision_cert_pem);
        m->provision_cert_pem = TAKE_PTR(resp.certificate_pem);
        free(m->provision_token);
        m->provision_token = TAKE_PTR(resp.ownership_token);
        create_certificate_response_done(&resp);
        register_thing(m, c);
}

static void succeed(Manager *m, const char *thing) {
        Identity id = {};
        int r;

        r = identity_store(m->config.state_dir, thing, m->provision_cert_pem,
                           m->provision_key_pem);
        if (r >= 0)
                r = identity_load(m->config.state_dir, &id);
        if (r < 0) {
                fail(m, "cannot store the device identity in %s: %s", m->config.state_dir,
                     strerror(-r));
                return;
        }
        teardown(m);
        (void) sd_event_source_set_enabled(m->provision_timer, SD_EVENT_OFF);
        backoff_reset(&m->provision_backoff);
        set_step(m, PROVISION_IDLE);
        m->provision_force = false;

        /* A forced re-provisioning replaces a live identity: the old
         * connection goes first. */
        connection_stop(m);
        identity_done(&m->identity);
        m->identity = id;
        free(m->thing_name);
        m->thing_name = strdup(thing);
        log_set_thing(thing);
        bus_emit_changed(m, "ThingName", NULL);
        log_event(LOG_NOTICE, LODEV_MESSAGE_PROVISIONED, NULL, NULL,
                  "Provisioned as %s (method %s, template %s).", thing,
                  provision_method_to_string(m->config.method), m->config.template_name);
        manager_set_last_error(m, "%s", "");
        reply_waiters(m, thing, NULL);
        r = connection_start(m);
        if (r < 0)
                manager_set_last_error(m, "cannot start the device connection: %s", strerror(-r));
}

static void claim_message(MqttClient *c, const char *topic, const void *data, size_t len,
                          void *userdata) {
        Manager *m = userdata;
        PlatformError e = {};
        TopicKind kind;
        char *thing = NULL;
        int r;

        r = topic_classify(topic, NULL, m->config.template_name, &kind, NULL);
        if (r < 0) {
                log_debug("Provisioning: message on unexpected topic %s, ignoring.", topic);
                return;
        }
        switch (kind) {
        case TOPIC_CREATE_ACCEPTED:
        case TOPIC_CSR_ACCEPTED:
                if (m->provision_step == PROVISION_CREATING)
                        on_certificate(m, c, data, len);
                return;
        case TOPIC_REGISTER_ACCEPTED:
                if (m->provision_step != PROVISION_REGISTERING)
                        return;
                r = message_decode_register_accepted(data, len, &thing);
                if (r < 0) {
                        fail(m, "malformed RegisterThing answer (%s)", strerror(-r));
                        return;
                }
                succeed(m, thing);
                free(thing);
                return;
        case TOPIC_CREATE_REJECTED:
        case TOPIC_CSR_REJECTED:
        case TOPIC_REGISTER_REJECTED: {
                bool create = kind != TOPIC_REGISTER_REJECTED;
                const char *what = !create ? "RegisterThing"
                                   : use_csr(m) ? "CreateCertificateFromCsr"
                                                : "CreateKeysAndCertificate";
                if (m->provision_step != (create ? PROVISION_CREATING : PROVISION_REGISTERING))
                        return;
                r = message_decode_error(data, len, &e);
                if (r < 0)
                        fail(m, "%s rejected with a malformed answer", what);
                else
                        fail(m, "%s rejected: %d %s: %s", what, e.status_code, e.error_code,
                             strempty(e.error_message));
                platform_error_done(&e);
                return;
        }
        default:
                log_debug("Provisioning: message on %s, ignoring.", topic);
        }
}

static void claim_disconnected(MqttClient *c, const char *reason, void *userdata) {
        Manager *m = userdata;

        if (m->provision_step != PROVISION_IDLE && m->provision_step != PROVISION_RETRY_WAIT)
                fail(m, "claim connection to %s lost: %s", m->endpoint, reason);
}

static const MqttCallbacks claim_callbacks = {
        .connected = claim_connected,
        .disconnected = claim_disconnected,
        .message = claim_message,
        .subscribed = claim_subscribed,
};

static void connect_claim(Manager *m) {
        int r;

        r = mqtt_connect(m->claim);
        if (r < 0)
                fail(m, "cannot connect to %s: %s%s%s", m->endpoint, strerror(-r),
                     mqtt_last_log(m->claim) ? ": " : "", strempty(mqtt_last_log(m->claim)));
}

static void claim_resolved(Resolver *res, int error, const char *address, const char *reason,
                           void *userdata) {
        Manager *m = userdata;

        if (m->provision_step != PROVISION_CONNECTING || !m->claim)
                return;
        if (error < 0) {
                fail(m, "cannot resolve %s: %s", m->config.endpoint, reason);
                return;
        }
        log_debug("Provisioning: %s is %s.", m->config.endpoint, address);
        connect_claim(m);
}

static int attempt(Manager *m) {
        char uuid[37];
        MqttOptions o;
        int r;

        r = uuid_random(uuid);
        if (r < 0)
                return r;
        free(m->provision_client_id);
        m->provision_client_id = strdup(uuid);
        if (!m->provision_client_id)
                return -ENOMEM;

        /* The claim connection: a fresh random client id, clean session. */
        o = (MqttOptions) {
                .host = m->config.endpoint,
                .port = m->config.port,
                .client_id = m->provision_client_id,
                .clean_session = true,
                .keepalive = MIN(m->config.keepalive, 300u),
                .ca_file = m->config.ca_file,
                .cert_file = m->config.claim_cert,
                .key_file = m->config.claim_key,
                .alpn = m->config.alpn,
        };
        r = mqtt_new(m->event, &o, &claim_callbacks, m, &m->claim);
        if (r < 0) {
                fail(m, "cannot set up the claim connection with %s and %s: %s",
                     m->config.claim_cert, m->config.claim_key, strerror(-r));
                return 0;
        }
        set_step(m, PROVISION_CONNECTING);
        arm_timer(m, PROVISION_STEP_TIMEOUT_USEC);
        /* A name is looked up off the loop first: without a network the
         * connect would otherwise block in getaddrinfo(). */
        if (resolver_is_address(m->config.endpoint))
                connect_claim(m);
        else {
                r = resolver_resolve(m->resolver, m->config.endpoint, m->config.port,
                                     &m->provision_step, claim_resolved, m);
                if (r < 0)
                        fail(m, "cannot resolve %s: %s", m->config.endpoint, strerror(-r));
        }
        return 0;
}

static int on_provision_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Manager *m = userdata;

        if (m->provision_step == PROVISION_RETRY_WAIT)
                (void) attempt(m);
        else if (m->provision_step != PROVISION_IDLE)
                fail(m, "no answer from the platform while %s within %llu s",
                     provision_step_to_string(m->provision_step),
                     (unsigned long long) (PROVISION_STEP_TIMEOUT_USEC / 1000000));
        return 0;
}

int provision_start(Manager *m, bool force) {
        m->provision_force = m->provision_force || force;
        if (m->provision_step != PROVISION_IDLE) {
                /* Already under way; a retry wait is cut short by an explicit request. */
                if (m->provision_step == PROVISION_RETRY_WAIT)
                        arm_timer(m, 0);
                return 0;
        }
        backoff_init(&m->provision_backoff, PROVISION_RETRY_MIN_USEC, PROVISION_RETRY_MAX_USEC);
        log_info("Provisioning with claim certificate %s (method %s).", m->config.claim_cert,
                 provision_method_to_string(m->config.method));
        if (!m->identity.thing_name)
                manager_set_state(m, DEVICE_STATE_PROVISIONING);
        return attempt(m);
}

void provision_stop(Manager *m) {
        teardown(m);
        m->provision_timer = sd_event_source_disable_unref(m->provision_timer);
        reply_waiters(m, NULL, "lodevd is stopping");
        m->provision_step = PROVISION_IDLE;
}
