/* SPDX-License-Identifier: MIT */
#include <stdarg.h>

#include "bus.h"
#include "message.h"
#include "log.h"
#include "util.h"

static int property_get_string(sd_bus *bus, const char *path, const char *interface,
                               const char *property, sd_bus_message *reply, void *userdata,
                               sd_bus_error *error) {
        Manager *m = userdata;
        const char *v = NULL;

        if (streq(property, "State"))
                v = device_state_to_string(m->state);
        else if (streq(property, "ThingName"))
                v = m->thing_name;
        else if (streq(property, "Endpoint"))
                v = m->endpoint;
        else if (streq(property, "LastError"))
                v = m->last_error;
        return sd_bus_message_append(reply, "s", strempty(v));
}

static int property_get_queued(sd_bus *bus, const char *path, const char *interface,
                               const char *property, sd_bus_message *reply, void *userdata,
                               sd_bus_error *error) {
        Manager *m = userdata;

        return sd_bus_message_append(reply, "u",
                                     streq(property, "QueuedObservations")
                                             ? m->queued_observations
                                             : m->queued_transfers);
}

static int property_get_current_job(sd_bus *bus, const char *path, const char *interface,
                                    const char *property, sd_bus_message *reply, void *userdata,
                                    sd_bus_error *error) {
        Manager *m = userdata;

        return sd_bus_message_append(reply, "(sss)", strempty(m->job_id), strempty(m->job_status),
                                     strempty(m->job_percent));
}

/* Methods whose capability is not built yet answer with a named error rather
 * than the generic UnknownMethod, so callers can tell the two apart. */
static int method_not_supported(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        return sd_bus_error_setf(error, LODEV_ERROR_NOT_SUPPORTED, "%s is not supported yet",
                                 sd_bus_message_get_member(msg));
}

/* Reads an a{sv} of options, calling handle() for each; unknown keys and
 * wrong types are InvalidArgument errors naming the key. */
typedef int (*OptionHandler)(const char *key, sd_bus_message *msg, void *userdata,
                             sd_bus_error *error);

static int read_options(sd_bus_message *msg, OptionHandler handle, void *userdata,
                        sd_bus_error *error) {
        int r;

        r = sd_bus_message_enter_container(msg, 'a', "{sv}");
        if (r < 0)
                return r;
        for (;;) {
                const char *key;

                r = sd_bus_message_enter_container(msg, 'e', "sv");
                if (r < 0)
                        return r;
                if (r == 0)
                        break;
                r = sd_bus_message_read(msg, "s", &key);
                if (r < 0)
                        return r;
                r = handle(key, msg, userdata, error);
                if (r < 0)
                        return r;
                r = sd_bus_message_exit_container(msg);
                if (r < 0)
                        return r;
        }
        return sd_bus_message_exit_container(msg);
}

static int provision_option(const char *key, sd_bus_message *msg, void *userdata,
                            sd_bus_error *error) {
        bool *force = userdata;
        int b, r;

        if (!streq(key, "force"))
                return sd_bus_error_setf(error, LODEV_ERROR_INVALID_ARGUMENT,
                                         "options: unknown key '%s'", key);
        r = sd_bus_message_read(msg, "v", "b", &b);
        if (r < 0)
                return sd_bus_error_setf(error, LODEV_ERROR_INVALID_ARGUMENT,
                                         "options: 'force' must be a boolean");
        *force = b;
        return 0;
}

static int method_provision(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        bool force = false;
        int r;

        r = read_options(msg, provision_option, &force, error);
        if (r < 0)
                return r;

        if (m->identity.thing_name && !force && m->provision_step == PROVISION_IDLE)
                return sd_bus_reply_method_return(msg, "s", m->identity.thing_name);
        if (force && m->provision_step != PROVISION_IDLE &&
            m->provision_step != PROVISION_RETRY_WAIT && !m->provision_force)
                return sd_bus_error_setf(error, LODEV_ERROR_BUSY,
                                         "provisioning is already running (%s)",
                                         provision_step_to_string(m->provision_step));

        r = provision_add_waiter(m, msg);
        if (r == -EBUSY)
                return sd_bus_error_setf(error, LODEV_ERROR_BUSY,
                                         "too many callers waiting for provisioning");
        if (r < 0)
                return r;
        r = provision_start(m, force);
        if (r < 0)
                return r;
        return 1; /* answered when provisioning ends */
}

static int observation_option(const char *key, sd_bus_message *msg, void *userdata,
                              sd_bus_error *error) {
        Observation *o = userdata;
        const char *v;
        int r;

        if (!streq(key, "patientId"))
                return sd_bus_error_setf(error, LODEV_ERROR_INVALID_ARGUMENT,
                                         "options: unknown key '%s'", key);
        r = sd_bus_message_read(msg, "v", "s", &v);
        if (r < 0)
                return sd_bus_error_setf(error, LODEV_ERROR_INVALID_ARGUMENT,
                                         "options: 'patientId' must be a string");
        o->patient_id = (char *) v;
        return 0;
}

static int method_submit_observation(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        Observation o = {};
        unsigned n = 0;
        int r;

        /* Strings point into msg, which outlives this call; nothing is copied. */
        r = sd_bus_message_enter_container(msg, 'a', "(sss)");
        if (r < 0)
                return r;
        for (;;) {
                const char *system, *code, *display;

                r = sd_bus_message_read(msg, "(sss)", &system, &code, &display);
                if (r < 0)
                        return r;
                if (r == 0)
                        break;
                if (n++ == 0) {
                        o.system = (char *) system;
                        o.code = (char *) code;
                        o.display = (char *) display;
                }
        }
        r = sd_bus_message_exit_container(msg);
        if (r < 0)
                return r;
        if (n != 1)
                return sd_bus_error_setf(error, LODEV_ERROR_INVALID_ARGUMENT,
                                         "coding: exactly one (system, code, display) entry is "
                                         "required, got %u",
                                         n);
        r = sd_bus_message_read(msg, "ds", &o.value, &o.unit);
        if (r < 0)
                return r;
        r = read_options(msg, observation_option, &o, error);
        if (r < 0)
                return r;
        return delivery_submit(m, msg, &o, error);
}

static const sd_bus_vtable device_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_PROPERTY("State", "s", property_get_string, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("ThingName", "s", property_get_string, 0,
                        SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("Endpoint", "s", property_get_string, 0,
                        SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("QueuedObservations", "u", property_get_queued, 0,
                        SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("QueuedTransfers", "u", property_get_queued, 0,
                        SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("CurrentJob", "(sss)", property_get_current_job, 0,
                        SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("LastError", "s", property_get_string, 0,
                        SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_METHOD_WITH_NAMES("SubmitObservation", "a(sss)dsa{sv}",
                                 SD_BUS_PARAM(coding) SD_BUS_PARAM(value) SD_BUS_PARAM(unit)
                                         SD_BUS_PARAM(options),
                                 "s", SD_BUS_PARAM(id), method_submit_observation,
                                 SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_NAMES("UploadFile", "hssa{sv}",
                                 SD_BUS_PARAM(fd) SD_BUS_PARAM(file_name)
                                         SD_BUS_PARAM(content_type) SD_BUS_PARAM(options),
                                 "s", SD_BUS_PARAM(id), method_not_supported,
                                 SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_NAMES("CancelTransfer", "s", SD_BUS_PARAM(id), "", ,
                                 method_not_supported, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_NAMES("ListTransfers", "", , "a(ssstt)", SD_BUS_PARAM(transfers),
                                 method_not_supported, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_NAMES("Provision", "a{sv}", SD_BUS_PARAM(options), "s",
                                 SD_BUS_PARAM(thing_name), method_provision,
                                 SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD("CheckJobs", "", "", method_not_supported, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_NAMES("InhibitReboot", "ss", SD_BUS_PARAM(who) SD_BUS_PARAM(why), "h",
                                 SD_BUS_PARAM(fd), method_not_supported,
                                 SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_SIGNAL_WITH_NAMES("ObservationDelivered", "s", SD_BUS_PARAM(id), 0),
        SD_BUS_SIGNAL_WITH_NAMES("TransferProgress", "stt",
                                 SD_BUS_PARAM(id) SD_BUS_PARAM(done) SD_BUS_PARAM(total), 0),
        SD_BUS_SIGNAL_WITH_NAMES("TransferFinished", "sbs",
                                 SD_BUS_PARAM(id) SD_BUS_PARAM(ok) SD_BUS_PARAM(message), 0),
        SD_BUS_SIGNAL_WITH_NAMES("JobUpdated", "ssus",
                                 SD_BUS_PARAM(job_id) SD_BUS_PARAM(status) SD_BUS_PARAM(percent)
                                         SD_BUS_PARAM(message),
                                 0),
        SD_BUS_VTABLE_END,
};

void bus_emit_changed(Manager *m, const char *property, ...) {
        const char *names[8];
        size_t n = 0;
        va_list ap;
        int r;

        if (!m->bus)
                return;
        va_start(ap, property);
        for (const char *p = property; p && n < ELEMENTSOF(names) - 1; p = va_arg(ap, const char *))
                names[n++] = p;
        va_end(ap);
        names[n] = NULL;

        r = sd_bus_emit_properties_changed_strv(m->bus, LODEV_BUS_PATH, LODEV_BUS_INTERFACE,
                                                (char **) names);
        if (r < 0)
                log_debug_errno(r, "Failed to emit PropertiesChanged, ignoring: %m");
}

int bus_setup(Manager *m) {
        int r;

        /* sd_bus_open_system() honours DBUS_SYSTEM_BUS_ADDRESS, which is how
         * tests point lodevd at a private bus. */
        r = sd_bus_open_system(&m->bus);
        if (r < 0)
                return log_error_errno(r, "Failed to connect to the system bus: %m");

        r = sd_bus_add_object_vtable(m->bus, &m->object_slot, LODEV_BUS_PATH, LODEV_BUS_INTERFACE,
                                     device_vtable, m);
        if (r < 0)
                return log_error_errno(r, "Failed to register %s: %m", LODEV_BUS_PATH);

        r = sd_bus_request_name(m->bus, LODEV_BUS_NAME, 0);
        if (r < 0)
                return log_error_errno(r, "Failed to acquire bus name %s: %m", LODEV_BUS_NAME);

        r = sd_bus_attach_event(m->bus, m->event, SD_EVENT_PRIORITY_NORMAL);
        if (r < 0)
                return log_error_errno(r, "Failed to attach the bus to the event loop: %m");
        return 0;
}
