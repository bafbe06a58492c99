/* SPDX-License-Identifier: MIT */
#pragma once

/* The provisioning service: fleet provisioning by claim (SPEC §2). On a connection of its
 * own with the shared claim certificate it asks for a certificate (CreateKeysAndCertificate,
 * or CreateCertificateFromCsr with a key made here), registers the thing with the ownership
 * token and stores the identity atomically. Any failure before the platform issued the
 * thing drops the claim connection and starts over from step 1 after a backoff: an
 * ownership token is never reused. The claim certificate is shared by the whole fleet, so
 * nothing makes it contact the platform sooner than its backoff allows. Knows nothing of
 * D-Bus or of the device connection: results come back through callbacks. */

#include <stdbool.h>
#include <systemd/sd-event.h>

#include "conf.h"
#include "identity.h"
#include "resolve.h"

typedef enum ProvisionStep {
        PROVISION_IDLE,
        PROVISION_CONNECTING,  /* claim connection coming up */
        PROVISION_SUBSCRIBING, /* waiting for SUBACK before asking */
        PROVISION_CREATING,    /* CreateKeysAndCertificate / CreateCertificateFromCsr sent */
        PROVISION_REGISTERING, /* RegisterThing sent */
        PROVISION_STORING,     /* the thing exists; storing its identity failed, retrying */
        PROVISION_RETRY_WAIT,  /* waiting for the backoff before the next attempt */
        _PROVISION_STEP_MAX,
        _PROVISION_STEP_INVALID = -22,
} ProvisionStep;

typedef struct Provisioner Provisioner;

typedef struct ProvisionerCallbacks {
        void (*step_changed)(ProvisionStep step, void *userdata);
        /* The identity is stored and loaded; *id is handed over. */
        void (*provisioned)(Identity *id, void *userdata);
        /* An attempt failed; the next follows after the backoff. */
        void (*failed)(const char *reason, void *userdata);
} ProvisionerCallbacks;

/* config must outlive the provisioner. */
int provisioner_new(sd_event *event, Resolver *resolver, const Config *config,
                    const ProvisionerCallbacks *callbacks, void *userdata, Provisioner **ret);
Provisioner *provisioner_free(Provisioner *p);

/* Starts provisioning, or lets the run under way go on. An attempt starts at once only when
 * the backoff allows it; otherwise the run waits (PROVISION_RETRY_WAIT). */
int provisioner_start(Provisioner *p, bool force);
/* Ends the run without a callback. */
void provisioner_stop(Provisioner *p);

ProvisionStep provisioner_step(const Provisioner *p);
/* The run under way was asked for with force. */
bool provisioner_forced(const Provisioner *p);

const char *provision_step_to_string(ProvisionStep s);
