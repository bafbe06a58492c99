/* SPDX-License-Identifier: MIT */
#include <stdarg.h>

#include "backoff.h"
#include "crypto.h"
#include "event-util.h"
#include "log.h"
#include "message.h"
#include "mqtt.h"
#include "provision.h"
#include "topic.h"
#include "util.h"

#define PROVISION_STEP_TIMEOUT_USEC (UINT64_C(30) * 1000000)
#define PROVISION_RETRY_MIN_USEC (UINT64_C(1) * 1000000)
#define PROVISION_RETRY_MAX_USEC (UINT64_C(300) * 1000000)

struct Provisioner {
        sd_event *event;
        Resolver *resolver;
        const Config *config;
        ProvisionerCallbacks cb;
        void *userdata;

        MqttClient *claim;
        ProvisionStep step;
        bool force;
        int sub_mid;
        char *client_id;
        char *key_pem; /* the device key: made here (csr) or received (create) */
        char *cert_pem;
        char *token;
        char *thing; /* registered, while its identity cannot be stored */
        /* Every attempt, asked for or a retry, draws the next delay: the claim certificate
         * is shared by the fleet, so the platform is never contacted before not_before. */
        Backoff backoff;
        uint64_t not_before;
        Backoff store_backoff;
        sd_event_source *timer; /* step timeout, then retry delay */
};

static const char *const provision_step_table[_PROVISION_STEP_MAX] = {
        [PROVISION_IDLE] = "idle",
        [PROVISION_CONNECTING] = "connecting with the claim certificate",
        [PROVISION_SUBSCRIBING] = "subscribing",
        [PROVISION_CREATING] = "creating the certificate",
        [PROVISION_REGISTERING] = "registering the thing",
        [PROVISION_STORING] = "storing the identity",
        [PROVISION_RETRY_WAIT] = "waiting to retry",
};

DEFINE_STRING_TABLE_LOOKUP_TO_STRING(provision_step, ProvisionStep);

static bool use_csr(Provisioner *p) {
        return p->config->method == PROVISION_METHOD_CSR;
}

static void clear_secrets(Provisioner *p) {
        /* The key must not linger in memory longer than needed. */
        if (p->key_pem)
                explicit_bzero(p->key_pem, strlen(p->key_pem));
        p->key_pem = (free(p->key_pem), NULL);
        p->cert_pem = (free(p->cert_pem), NULL);
        p->token = (free(p->token), NULL);
        p->thing = (free(p->thing), NULL);
}

static void set_step(Provisioner *p, ProvisionStep step) {
        p->step = step;
        log_debug("Provisioning: %s.", provision_step_to_string(step));
        if (p->cb.step_changed)
                p->cb.step_changed(step, p->userdata);
}

static int on_timer(sd_event_source *s, uint64_t usec, void *userdata);

static void arm_timer(Provisioner *p, uint64_t delay) {
        int r = event_arm_timer(p->event, &p->timer, delay, 0, false, on_timer, p,
                                "provision-timer");

        if (r < 0)
                log_error_errno(r, "Failed to arm the provisioning timer: %m");
}

static int on_release(sd_event_source *s, void *userdata) {
        mqtt_free(userdata);
        sd_event_source_disable_unref(s);
        return 0;
}

/* Drops the claim connection; the client is freed at the next iteration, since this may
 * run inside one of its callbacks. */
static void teardown(Provisioner *p) {
        int r;

        if (p->claim) {
                mqtt_disconnect(p->claim);
                r = sd_event_add_defer(p->event, NULL, on_release, p->claim);
                if (r < 0)
                        mqtt_free(p->claim); /* the loop is gone: no callback runs */
                p->claim = NULL;
        }
        p->client_id = (free(p->client_id), NULL);
}

static void wait_for_backoff(Provisioner *p) {
        uint64_t now = event_now(p->event);

        set_step(p, PROVISION_RETRY_WAIT);
        arm_timer(p, p->not_before > now ? p->not_before - now : 0);
}

/* Ends this attempt, reports why and waits for the next one. */
_printf_(2, 3) static void fail(Provisioner *p, const char *fmt, ...) {
        char msg[1024];
        uint64_t now = event_now(p->event);
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);

        teardown(p);
        clear_secrets(p);
        log_error("Provisioning failed: %s; retrying in %.1f s.", msg,
                  (double) (p->not_before > now ? p->not_before - now : 0) / 1e6);
        wait_for_backoff(p);
        if (p->cb.failed)
                p->cb.failed(msg, p->userdata);
}

static void claim_connected(MqttClient *c, int rc, bool session_present, void *userdata) {
        Provisioner *p = userdata;
        _cleanup_free_ char *t1 = NULL, *t2 = NULL, *t3 = NULL, *t4 = NULL;
        TopicKind acc = use_csr(p) ? TOPIC_CSR_ACCEPTED : TOPIC_CREATE_ACCEPTED,
                  rej = use_csr(p) ? TOPIC_CSR_REJECTED : TOPIC_CREATE_REJECTED;
        const char *template_name = p->config->template_name;
        int r;

        if (rc != 0) {
                fail(p, "the platform refused the claim connection (CONNACK code %d)", rc);
                return;
        }
        r = topic_build(acc, NULL, NULL, NULL, &t1);
        if (r >= 0)
                r = topic_build(rej, NULL, NULL, NULL, &t2);
        if (r >= 0)
                r = topic_build(TOPIC_REGISTER_ACCEPTED, NULL, template_name, NULL, &t3);
        if (r >= 0)
                r = topic_build(TOPIC_REGISTER_REJECTED, NULL, template_name, NULL, &t4);
        if (r >= 0) {
                char *topics[] = { t1, t2, t3, t4 };
                r = mqtt_subscribe(c, topics, ELEMENTSOF(topics), &p->sub_mid);
        }
        if (r < 0) {
                fail(p, "cannot subscribe to the provisioning topics: %s", strerror(-r));
                return;
        }
        set_step(p, PROVISION_SUBSCRIBING);
        arm_timer(p, PROVISION_STEP_TIMEOUT_USEC);
}

static void claim_subscribed(MqttClient *c, int mid, void *userdata) {
        Provisioner *p = userdata;
        _cleanup_free_ char *topic = NULL, *payload = NULL, *csr = NULL;
        int r;

        if (p->step != PROVISION_SUBSCRIBING || mid != p->sub_mid)
                return;

        if (use_csr(p)) {
                /* The key is made here and never sent anywhere. */
                r = crypto_make_key_and_csr(&p->key_pem, &csr);
                if (r < 0) {
                        fail(p, "cannot make a key and CSR: %s", strerror(-r));
                        return;
                }
                r = message_encode_create_from_csr(csr, &payload);
        } else
                r = message_encode_create(&payload);
        if (r >= 0)
                r = topic_build(use_csr(p) ? TOPIC_CSR : TOPIC_CREATE, NULL, NULL, NULL, &topic);
        if (r >= 0)
                r = mqtt_publish(c, topic, payload, strlen(payload), 1, NULL);
        if (r < 0) {
                fail(p, "cannot request a certificate: %s", strerror(-r));
                return;
        }
        set_step(p, PROVISION_CREATING);
        arm_timer(p, PROVISION_STEP_TIMEOUT_USEC);
}

static void register_thing(Provisioner *p, MqttClient *c) {
        _cleanup_free_ char *topic = NULL, *payload = NULL;
        const Config *config = p->config;
        size_t n = config->n_parameters;
        const char **names, **values;
        int r = 0;

        names = calloc(n + 1, sizeof(char *));
        values = calloc(n + 1, sizeof(char *));
        if (!names || !values) {
                free(names);
                free(values);
                fail(p, "out of memory");
                return;
        }
        for (size_t i = 0; i < n && r >= 0; i++) {
                _cleanup_free_ char *err = NULL;
                char *v = NULL;

                names[i] = config->parameters[i].name;
                r = config_parameter_resolve(config, &config->parameters[i], &v, &err);
                if (r < 0) {
                        fail(p, "%s", err ?: strerror(-r));
                        break;
                }
                values[i] = v;
        }
        if (r >= 0) {
                r = message_encode_register(config->template_name, names, values, n, p->token,
                                            &payload);
                if (r >= 0)
                        r = topic_build(TOPIC_REGISTER, NULL, config->template_name, NULL, &topic);
                if (r >= 0)
                        r = mqtt_publish(c, topic, payload, strlen(payload), 1, NULL);
                if (r < 0)
                        fail(p, "cannot send RegisterThing: %s", strerror(-r));
                else {
                        set_step(p, PROVISION_REGISTERING);
                        arm_timer(p, PROVISION_STEP_TIMEOUT_USEC);
                }
        }
        for (size_t i = 0; i < n; i++)
                free((char *) values[i]);
        free(names);
        free(values);
}

static void on_certificate(Provisioner *p, MqttClient *c, const void *data, size_t len) {
        CreateCertificateResponse resp = {};
        int r;

        r = message_decode_create_certificate(data, len, &resp);
        if (r < 0) {
                log_warning("Provisioning: malformed certificate answer (%s), ignoring.",
                            strerror(-r));
                return;
        }
        if (!use_csr(p)) {
                if (!resp.private_key) {
                        create_certificate_response_done(&resp);
                        fail(p, "the certificate answer has no private key");
                        return;
                }
                free(p->key_pem);
                p->key_pem = TAKE_PTR(resp.private_key);
        }
        /* With a CSR the certificate must be for our key; an answer meant for another
         * connection is not ours to take. */
        r = crypto_check_cert_key(resp.certificate_pem, p->key_pem);
        if (r < 0) {
                create_certificate_response_done(&resp);
                if (use_csr(p)) {
                        log_warning("Provisioning: a certificate not for this device's key "
                                    "arrived, ignoring.");
                        return;
                }
                fail(p, "the issued certificate does not match its private key");
                return;
        }
        log_info("Provisioning: certificate %s issued.", resp.certificate_id);
        free(p->cert_pem);
        p->cert_pem = TAKE_PTR(resp.certificate_pem);
        free(p->token);
        p->token = TAKE_PTR(resp.ownership_token);
        create_certificate_response_done(&resp);
        register_thing(p, c);
}

/* Stores what the platform issued. The thing exists now: a failure keeps it in memory and
 * tries the store again, without asking the platform for another one. */
static void store(Provisioner *p) {
        const char *state_dir = p->config->state_dir;
        Identity id = {};
        uint64_t delay;
        int r;

        r = identity_store(state_dir, p->thing, p->cert_pem, p->key_pem);
        if (r >= 0)
                r = identity_load(state_dir, &id);
        if (r < 0) {
                char msg[512];

                delay = backoff_next(&p->store_backoff, random_u64());
                snprintf(msg, sizeof(msg), "cannot store the identity of %s in %s: %s", p->thing,
                         state_dir, strerror(-r));
                log_error("Provisioning: %s; retrying in %.1f s.", msg, (double) delay / 1e6);
                set_step(p, PROVISION_STORING);
                arm_timer(p, delay);
                if (p->cb.failed)
                        p->cb.failed(msg, p->userdata);
                return;
        }
        log_event(LOG_NOTICE, LODEV_MESSAGE_PROVISIONED, NULL, NULL,
                  "Provisioned as %s (method %s, template %s).", id.thing_name,
                  provision_method_to_string(p->config->method), p->config->template_name);
        clear_secrets(p);
        event_disarm(p->timer);
        p->force = false;
        set_step(p, PROVISION_IDLE);
        p->cb.provisioned(&id, p->userdata);
        identity_done(&id);
}

static void claim_message(MqttClient *c, const char *topic, const void *data, size_t len,
                          void *userdata) {
        Provisioner *p = userdata;
        PlatformError e = {};
        TopicKind kind;
        char *thing = NULL;
        int r;

        r = topic_classify(topic, NULL, p->config->template_name, &kind, NULL);
        if (r < 0) {
                log_debug("Provisioning: message on unexpected topic %s, ignoring.", topic);
                return;
        }
        switch (kind) {
        case TOPIC_CREATE_ACCEPTED:
        case TOPIC_CSR_ACCEPTED:
                if (p->step == PROVISION_CREATING)
                        on_certificate(p, c, data, len);
                return;
        case TOPIC_REGISTER_ACCEPTED:
                if (p->step != PROVISION_REGISTERING)
                        return;
                r = message_decode_register_accepted(data, len, &thing);
                if (r < 0) {
                        fail(p, "malformed RegisterThing answer (%s)", strerror(-r));
                        return;
                }
                free(p->thing);
                p->thing = thing;
                teardown(p);
                backoff_reset(&p->store_backoff);
                store(p);
                return;
        case TOPIC_CREATE_REJECTED:
        case TOPIC_CSR_REJECTED:
        case TOPIC_REGISTER_REJECTED: {
                bool create = kind != TOPIC_REGISTER_REJECTED;
                const char *what = !create ? "RegisterThing"
                                   : use_csr(p) ? "CreateCertificateFromCsr"
                                                : "CreateKeysAndCertificate";

                if (p->step != (create ? PROVISION_CREATING : PROVISION_REGISTERING))
                        return;
                r = message_decode_error(data, len, &e);
                if (r < 0)
                        fail(p, "%s rejected with a malformed answer", what);
                else
                        fail(p, "%s rejected: %d %s: %s", what, e.status_code, e.error_code,
                             strempty(e.error_message));
                platform_error_done(&e);
                return;
        }
        default:
                log_debug("Provisioning: message on %s, ignoring.", topic);
        }
}

static void claim_disconnected(MqttClient *c, const char *reason, void *userdata) {
        Provisioner *p = userdata;

        if (p->step >= PROVISION_CONNECTING && p->step <= PROVISION_REGISTERING)
                fail(p, "claim connection to %s:%u lost: %s", p->config->endpoint,
                     p->config->port, reason);
}

static const MqttCallbacks claim_callbacks = {
        .connected = claim_connected,
        .disconnected = claim_disconnected,
        .message = claim_message,
        .subscribed = claim_subscribed,
};

static void attempt(Provisioner *p) {
        const Config *config = p->config;
        uint64_t now = event_now(p->event);
        char uuid[37];
        MqttOptions o;
        int r;

        /* After a quiet time as long as the longest wait the backoff starts over; until
         * then every attempt, asked for or not, waits longer than the one before. */
        if (now > p->not_before + PROVISION_RETRY_MAX_USEC)
                backoff_reset(&p->backoff);
        p->not_before = now + backoff_next(&p->backoff, random_u64());

        /* The platform issues a certificate and a thing for every attempt: make sure
         * they can be stored before asking for them. */
        r = identity_check_writable(config->state_dir);
        if (r < 0) {
                fail(p, "the state directory %s cannot take a new identity: %s",
                     config->state_dir, strerror(-r));
                return;
        }

        r = uuid_random(uuid);
        if (r >= 0) {
                p->client_id = strdup(uuid);
                if (!p->client_id)
                        r = -ENOMEM;
        }
        if (r < 0) {
                fail(p, "cannot make a client id: %s", strerror(-r));
                return;
        }
        /* The claim connection: a fresh random client id, clean session. */
        o = (MqttOptions) {
                .host = config->endpoint,
                .port = config->port,
                .client_id = p->client_id,
                .clean_session = true,
                .keepalive = MIN(config->keepalive, 300u),
                .ca_file = config->ca_file,
                .cert_file = config->claim_cert,
                .key_file = config->claim_key,
                .alpn = config->alpn,
        };
        r = mqtt_new(p->event, &o, &claim_callbacks, p, &p->claim);
        if (r < 0) {
                fail(p, "cannot set up the claim connection with %s and %s: %s",
                     config->claim_cert, config->claim_key, strerror(-r));
                return;
        }
        set_step(p, PROVISION_CONNECTING);
        arm_timer(p, PROVISION_STEP_TIMEOUT_USEC);
        r = mqtt_start(p->claim, p->resolver);
        if (r < 0)
                fail(p, "cannot connect to %s:%u: %s%s%s", config->endpoint, config->port,
                     strerror(-r), mqtt_last_log(p->claim) ? ": " : "",
                     strempty(mqtt_last_log(p->claim)));
}

static int on_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Provisioner *p = userdata;

        if (p->step == PROVISION_RETRY_WAIT)
                attempt(p);
        else if (p->step == PROVISION_STORING)
                store(p);
        else if (p->step != PROVISION_IDLE)
                fail(p, "no answer from the platform while %s within %llu s",
                     provision_step_to_string(p->step),
                     (unsigned long long) (PROVISION_STEP_TIMEOUT_USEC / 1000000));
        return 0;
}

int provisioner_start(Provisioner *p, bool force) {
        p->force = p->force || force;
        /* Under way, or waiting: an explicit request never cuts the wait short. */
        if (p->step != PROVISION_IDLE)
                return 0;
        log_info("Provisioning with claim certificate %s (method %s).", p->config->claim_cert,
                 provision_method_to_string(p->config->method));
        if (event_now(p->event) < p->not_before) {
                wait_for_backoff(p);
                return 0;
        }
        attempt(p);
        return 0;
}

void provisioner_stop(Provisioner *p) {
        teardown(p);
        clear_secrets(p);
        event_disarm(p->timer);
        p->step = PROVISION_IDLE;
        p->force = false;
}

ProvisionStep provisioner_step(const Provisioner *p) {
        return p->step;
}

bool provisioner_forced(const Provisioner *p) {
        return p->force;
}

int provisioner_new(sd_event *event, Resolver *resolver, const Config *config,
                    const ProvisionerCallbacks *cb, void *userdata, Provisioner **ret) {
        Provisioner *p;

        p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        p->event = sd_event_ref(event);
        p->resolver = resolver;
        p->config = config;
        p->cb = *cb;
        p->userdata = userdata;
        backoff_init(&p->backoff, PROVISION_RETRY_MIN_USEC, PROVISION_RETRY_MAX_USEC);
        backoff_init(&p->store_backoff, PROVISION_RETRY_MIN_USEC, PROVISION_RETRY_MAX_USEC);
        *ret = p;
        return 0;
}

Provisioner *provisioner_free(Provisioner *p) {
        if (!p)
                return NULL;
        provisioner_stop(p);
        sd_event_source_disable_unref(p->timer);
        sd_event_unref(p->event);
        free(p);
        return NULL;
}
