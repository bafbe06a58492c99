/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-bus.h>
#include <time.h>

#include "lodev.h"

#define BUS_NAME "com.lifeomic.Device1"
#define BUS_PATH "/com/lifeomic/Device1"
#define BUS_INTERFACE "com.lifeomic.Device1"
#define ERROR_PREFIX "com.lifeomic.Device1.Error."
#define PROVISION_TIMEOUT_USEC (UINT64_C(300) * 1000000)
/* UploadFile answers once the copy is on disk: a large file on slow flash takes minutes. */
#define UPLOAD_TIMEOUT_USEC (UINT64_C(3600) * 1000000)

#define _cleanup_(f) __attribute__((cleanup(f)))

struct lodev {
        sd_bus *bus;
        char *last_error;
        uint64_t call_timeout;
        unsigned pending;
        sd_bus_slot *delivered_slot;
        lodev_delivered_callback delivered;
        void *delivered_userdata;
        sd_bus_slot *transfer_slot;
        lodev_transfer_progress_callback transfer_progress;
        lodev_transfer_finished_callback transfer_finished;
        void *transfer_userdata;
        sd_bus_slot *event_slot;
        lodev_event_callback event;
        void *event_userdata;
};

typedef struct SubmitCall {
        lodev *l;
        lodev_submit_callback callback;
        void *userdata;
} SubmitCall;

/* Maps the daemon's named errors to errno values for the callers. */
static const sd_bus_error_map lodev_errors[] = {
        SD_BUS_ERROR_MAP(ERROR_PREFIX "InvalidArgument", EINVAL),
        SD_BUS_ERROR_MAP(ERROR_PREFIX "QueueFull", ENOSPC),
        SD_BUS_ERROR_MAP(ERROR_PREFIX "NotProvisioned", ENOTCONN),
        SD_BUS_ERROR_MAP(ERROR_PREFIX "NotFound", ENOENT),
        SD_BUS_ERROR_MAP(ERROR_PREFIX "Busy", EBUSY),
        SD_BUS_ERROR_MAP(ERROR_PREFIX "LimitsExceeded", EUSERS),
        SD_BUS_ERROR_MAP(ERROR_PREFIX "NotSupported", EOPNOTSUPP),
        SD_BUS_ERROR_MAP(ERROR_PREFIX "Offline", ENETDOWN),
        SD_BUS_ERROR_MAP(ERROR_PREFIX "Timeout", ETIMEDOUT),
        SD_BUS_ERROR_MAP(ERROR_PREFIX "Failed", EIO),
        SD_BUS_ERROR_MAP_END,
};

static void set_last_error(lodev *l, const sd_bus_error *e) {
        free(l->last_error);
        l->last_error = e && e->message ? strdup(e->message) : NULL;
}

static int call_failed(lodev *l, sd_bus_error *e, int r) {
        set_last_error(l, e);
        if (sd_bus_error_is_set(e))
                r = sd_bus_error_get_errno(e);
        return r < 0 ? r : -r;
}

int lodev_open(lodev **ret) {
        lodev *l;
        int r;

        if (!ret)
                return -EINVAL;
        (void) sd_bus_error_add_map(lodev_errors);

        l = calloc(1, sizeof(*l));
        if (!l)
                return -ENOMEM;
        r = sd_bus_open_system(&l->bus);
        if (r < 0) {
                free(l);
                return r;
        }
        *ret = l;
        return 0;
}

lodev *lodev_close(lodev *l) {
        if (!l)
                return NULL;
        sd_bus_slot_unref(l->delivered_slot);
        sd_bus_slot_unref(l->transfer_slot);
        sd_bus_slot_unref(l->event_slot);
        sd_bus_flush_close_unref(l->bus);
        free(l->last_error);
        free(l);
        return NULL;
}

int lodev_get_fd(lodev *l) {
        return l ? sd_bus_get_fd(l->bus) : -EINVAL;
}

int lodev_get_events(lodev *l) {
        return l ? sd_bus_get_events(l->bus) : -EINVAL;
}

int lodev_get_timeout(lodev *l, uint64_t *ret_usec) {
        return l && ret_usec ? sd_bus_get_timeout(l->bus, ret_usec) : -EINVAL;
}

int lodev_dispatch(lodev *l) {
        int r;

        if (!l)
                return -EINVAL;
        /* Drain everything that is ready without blocking. */
        do
                r = sd_bus_process(l->bus, NULL);
        while (r > 0);
        return r;
}

int lodev_wait(lodev *l, uint64_t timeout_usec) {
        return l ? sd_bus_wait(l->bus, timeout_usec) : -EINVAL;
}

unsigned lodev_pending_calls(lodev *l) {
        return l ? l->pending : 0;
}

int lodev_set_call_timeout(lodev *l, uint64_t usec) {
        if (!l)
                return -EINVAL;
        l->call_timeout = usec;
        return 0;
}

const char *lodev_last_error(lodev *l) {
        return l ? l->last_error : NULL;
}

const char *lodev_strerror(int error) {
        switch (abs(error)) {
        case EHOSTUNREACH:
        case ENXIO:
        case ECONNREFUSED:
                return "lodevd is not running or not reachable on the system bus";
        case EACCES:
        case EPERM:
                return "permission denied (root or group lodev required)";
        case ENOSPC:
                return "the queue is full";
        case ENOTCONN:
                return "the device is not provisioned";
        case EOPNOTSUPP:
                return "not supported by this lodevd";
        case ENETDOWN:
                return "the device is not online";
        case ETIMEDOUT:
                return "timed out";
        case EUSERS:
                return "too many calls waiting for lodevd at once";
        default:
                return strerror(abs(error));
        }
}

static void status_free_fields(lodev_status *s) {
        free(s->state);
        free(s->thing_name);
        free(s->endpoint);
        free(s->last_error);
        free(s->job_id);
        free(s->job_status);
        free(s->job_percent);
}

lodev_status *lodev_status_free(lodev_status *s) {
        if (s) {
                status_free_fields(s);
                free(s);
        }
        return NULL;
}

static int dupstr(char **dst, const char *src) {
        *dst = strdup(src ? src : "");
        return *dst ? 0 : -ENOMEM;
}

int lodev_get_status(lodev *l, lodev_status **ret) {
        _cleanup_(sd_bus_error_free) sd_bus_error e = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        lodev_status *s;
        int r;

        if (!l || !ret)
                return -EINVAL;
        r = sd_bus_call_method(l->bus, BUS_NAME, BUS_PATH, "org.freedesktop.DBus.Properties",
                               "GetAll", &e, &reply, "s", BUS_INTERFACE);
        if (r < 0)
                return call_failed(l, &e, r);

        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        r = sd_bus_message_enter_container(reply, 'a', "{sv}");
        while (r >= 0) {
                const char *name, *str = NULL, *a = NULL, *b = NULL, *c = NULL;
                uint32_t u = 0;

                r = sd_bus_message_enter_container(reply, 'e', "sv");
                if (r <= 0)
                        break;
                r = sd_bus_message_read(reply, "s", &name);
                if (r < 0)
                        break;
                if (strcmp(name, "QueuedObservations") == 0 ||
                    strcmp(name, "QueuedTransfers") == 0) {
                        r = sd_bus_message_read(reply, "v", "u", &u);
                        if (name[6] == 'O')
                                s->queued_observations = u;
                        else
                                s->queued_transfers = u;
                } else if (strcmp(name, "CurrentJob") == 0) {
                        r = sd_bus_message_read(reply, "v", "(sss)", &a, &b, &c);
                        if (r >= 0 && ((r = dupstr(&s->job_id, a)) < 0 ||
                                       (r = dupstr(&s->job_status, b)) < 0 ||
                                       (r = dupstr(&s->job_percent, c)) < 0))
                                break;
                } else if (strcmp(name, "State") == 0 || strcmp(name, "ThingName") == 0 ||
                           strcmp(name, "Endpoint") == 0 || strcmp(name, "LastError") == 0) {
                        char **dst = name[0] == 'S'   ? &s->state
                                     : name[0] == 'T' ? &s->thing_name
                                     : name[0] == 'E' ? &s->endpoint
                                                      : &s->last_error;
                        r = sd_bus_message_read(reply, "v", "s", &str);
                        if (r >= 0) {
                                free(*dst);
                                r = dupstr(dst, str);
                        }
                } else
                        r = sd_bus_message_skip(reply, "v"); /* newer daemon, newer property */
                if (r < 0)
                        break;
                r = sd_bus_message_exit_container(reply);
        }
        if (r >= 0)
                r = sd_bus_message_exit_container(reply);
        if (r >= 0 && (!s->state || !s->thing_name || !s->endpoint || !s->last_error ||
                       !s->job_id))
                r = -EBADMSG; /* a property is missing: not our daemon */
        if (r < 0) {
                lodev_status_free(s);
                return r;
        }
        *ret = s;
        return 0;
}

static int observation_message(lodev *l, const lodev_observation *o, sd_bus_message **ret) {
        sd_bus_message *m = NULL;
        int r;

        if (!o || !o->code || !o->code_system)
                return -EINVAL;
        r = sd_bus_message_new_method_call(l->bus, &m, BUS_NAME, BUS_PATH, BUS_INTERFACE,
                                           "SubmitObservation");
        if (r >= 0)
                r = sd_bus_message_append(m, "a(sss)", 1, o->code_system, o->code,
                                          o->code_display ? o->code_display : "");
        if (r >= 0)
                r = sd_bus_message_append(m, "ds", o->value, o->unit ? o->unit : "");
        if (r >= 0) {
                if (o->patient_id)
                        r = sd_bus_message_append(m, "a{sv}", 1, "patientId", "s", o->patient_id);
                else
                        r = sd_bus_message_append(m, "a{sv}", 0);
        }
        if (r < 0) {
                sd_bus_message_unref(m);
                return r;
        }
        *ret = m;
        return 0;
}

/* Sends m and hands the string the method returns to *ret (free() it; ret may be NULL). */
static int call_for_string(lodev *l, sd_bus_message *m, uint64_t timeout, char **ret) {
        _cleanup_(sd_bus_error_free) sd_bus_error e = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        const char *s;
        int r;

        r = sd_bus_call(l->bus, m, timeout, &e, &reply);
        if (r < 0)
                return call_failed(l, &e, r);
        r = sd_bus_message_read(reply, "s", &s);
        if (r < 0)
                return r;
        if (ret) {
                *ret = strdup(s);
                if (!*ret)
                        return -ENOMEM;
        }
        return 0;
}

int lodev_submit_observation(lodev *l, const lodev_observation *o, char **ret_id) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        int r;

        if (!l)
                return -EINVAL;
        r = observation_message(l, o, &m);
        if (r < 0)
                return r;
        return call_for_string(l, m, l->call_timeout, ret_id);
}

static int on_submit_reply(sd_bus_message *reply, void *userdata, sd_bus_error *ret_error) {
        SubmitCall *c = userdata;
        const sd_bus_error *e = sd_bus_message_get_error(reply);
        const char *id = NULL;
        int r = 0;

        c->l->pending--;
        if (e) {
                set_last_error(c->l, e);
                r = sd_bus_error_get_errno(e);
                r = r > 0 ? -r : -EIO;
        } else if (sd_bus_message_read(reply, "s", &id) < 0) {
                r = -EBADMSG;
                id = NULL;
        }
        c->callback(c->l, r, id, c->userdata);
        return 0;
}

static void submit_call_destroy(void *userdata) {
        free(userdata);
}

int lodev_submit_observation_async(lodev *l, const lodev_observation *o,
                                   lodev_submit_callback callback, void *userdata) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        sd_bus_slot *slot = NULL;
        SubmitCall *c;
        int r;

        if (!l || !callback)
                return -EINVAL;
        r = observation_message(l, o, &m);
        if (r < 0)
                return r;
        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        *c = (SubmitCall) { .l = l, .callback = callback, .userdata = userdata };

        /* A floating slot: it lives until the reply arrives or the bus closes. */
        r = sd_bus_call_async(l->bus, &slot, m, on_submit_reply, c, l->call_timeout);
        if (r < 0) {
                free(c);
                return r;
        }
        (void) sd_bus_slot_set_destroy_callback(slot, submit_call_destroy);
        /* Floating: the bus holds the slot until the reply came; drop ours. */
        (void) sd_bus_slot_set_floating(slot, 1);
        sd_bus_slot_unref(slot);
        l->pending++;
        return 0;
}

static int on_delivered(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        lodev *l = userdata;
        const char *id;

        if (l->delivered && sd_bus_message_read(m, "s", &id) >= 0)
                l->delivered(l, id, l->delivered_userdata);
        return 0;
}

/* Keeps *slot matching the object's signals (of interface and member; NULL for any) while
 * wanted, and drops it otherwise. Synchronous: once this returns, no signal can slip past
 * the match. */
static int match_update(lodev *l, sd_bus_slot **slot, bool wanted, const char *interface,
                        const char *member, sd_bus_message_handler_t handler) {
        int r;

        if (!wanted) {
                *slot = sd_bus_slot_unref(*slot);
                return 0;
        }
        if (*slot)
                return 0;
        r = sd_bus_match_signal(l->bus, slot, BUS_NAME, BUS_PATH, interface, member, handler, l);
        return r < 0 ? r : 0;
}

int lodev_set_delivered_callback(lodev *l, lodev_delivered_callback callback, void *userdata) {
        if (!l)
                return -EINVAL;
        l->delivered = callback;
        l->delivered_userdata = userdata;
        return match_update(l, &l->delivered_slot, callback, BUS_INTERFACE,
                            "ObservationDelivered", on_delivered);
}

int lodev_provision(lodev *l, int force, char **ret_thing_name) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        int r;

        if (!l)
                return -EINVAL;
        r = sd_bus_message_new_method_call(l->bus, &m, BUS_NAME, BUS_PATH, BUS_INTERFACE,
                                           "Provision");
        if (r < 0)
                return r;
        r = sd_bus_message_append(m, "a{sv}", 1, "force", "b", force ? 1 : 0);
        if (r < 0)
                return r;
        return call_for_string(l, m,
                               l->call_timeout > PROVISION_TIMEOUT_USEC ? l->call_timeout
                                                                        : PROVISION_TIMEOUT_USEC,
                               ret_thing_name);
}

static uint64_t now_usec(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000 + (uint64_t) ts.tv_nsec / 1000;
}

static int get_state(lodev *l, char **ret) {
        _cleanup_(sd_bus_error_free) sd_bus_error e = SD_BUS_ERROR_NULL;
        int r;

        r = sd_bus_get_property_string(l->bus, BUS_NAME, BUS_PATH, BUS_INTERFACE, "State", &e,
                                       ret);
        return r < 0 ? call_failed(l, &e, r) : 0;
}

static int on_properties_changed(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        bool *changed = userdata;

        *changed = true;
        return 0;
}

int lodev_wait_online(lodev *l, uint64_t timeout_usec) {
        _cleanup_(sd_bus_slot_unrefp) sd_bus_slot *slot = NULL;
        uint64_t deadline = timeout_usec == UINT64_MAX ? UINT64_MAX : now_usec() + timeout_usec;
        bool changed = true;
        int r;

        if (!l)
                return -EINVAL;
        /* Subscribe first, then read: a change between the two is not missed. */
        r = sd_bus_match_signal(l->bus, &slot, BUS_NAME, BUS_PATH,
                                "org.freedesktop.DBus.Properties", "PropertiesChanged",
                                on_properties_changed, &changed);
        if (r < 0)
                return r;

        for (;;) {
                if (changed) {
                        char *state = NULL;
                        bool online;

                        changed = false;
                        r = get_state(l, &state);
                        if (r < 0)
                                return r;
                        online = strcmp(state, "online") == 0;
                        free(state);
                        if (online)
                                return 0;
                }
                r = sd_bus_process(l->bus, NULL);
                if (r < 0)
                        return r;
                if (r > 0)
                        continue;
                if (deadline != UINT64_MAX && now_usec() >= deadline)
                        return -ETIMEDOUT;
                r = sd_bus_wait(l->bus, deadline == UINT64_MAX ? UINT64_MAX
                                                               : deadline - now_usec());
                if (r < 0)
                        return r;
        }
}

/* --- File uploads --- */

int lodev_upload_file(lodev *l, int fd, const char *file_name, const char *content_type,
                      char **ret_id) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        int r;

        if (!l || fd < 0 || !file_name)
                return -EINVAL;
        r = sd_bus_message_new_method_call(l->bus, &m, BUS_NAME, BUS_PATH, BUS_INTERFACE,
                                           "UploadFile");
        if (r >= 0)
                r = sd_bus_message_append(m, "hss", fd, file_name, content_type ? content_type : "");
        if (r >= 0)
                r = sd_bus_message_append(m, "a{sv}", 0);
        if (r < 0)
                return r;
        return call_for_string(l, m,
                               l->call_timeout > UPLOAD_TIMEOUT_USEC ? l->call_timeout
                                                                     : UPLOAD_TIMEOUT_USEC,
                               ret_id);
}

int lodev_cancel_transfer(lodev *l, const char *id) {
        _cleanup_(sd_bus_error_free) sd_bus_error e = SD_BUS_ERROR_NULL;
        int r;

        if (!l || !id)
                return -EINVAL;
        r = sd_bus_call_method(l->bus, BUS_NAME, BUS_PATH, BUS_INTERFACE, "CancelTransfer", &e,
                               NULL, "s", id);
        return r < 0 ? call_failed(l, &e, r) : 0;
}

void lodev_transfers_free(lodev_transfer *t, size_t n) {
        for (size_t i = 0; t && i < n; i++) {
                free(t[i].id);
                free(t[i].file_name);
                free(t[i].state);
        }
        free(t);
}

int lodev_list_transfers(lodev *l, lodev_transfer **ret, size_t *ret_n) {
        _cleanup_(sd_bus_error_free) sd_bus_error e = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        lodev_transfer *t = NULL;
        size_t n = 0;
        int r;

        if (!l || !ret || !ret_n)
                return -EINVAL;
        r = sd_bus_call_method(l->bus, BUS_NAME, BUS_PATH, BUS_INTERFACE, "ListTransfers", &e,
                               &reply, "");
        if (r < 0)
                return call_failed(l, &e, r);
        r = sd_bus_message_enter_container(reply, 'a', "(ssstt)");
        while (r >= 0) {
                const char *id, *name, *state;
                uint64_t done, total;
                lodev_transfer *a;

                r = sd_bus_message_read(reply, "(ssstt)", &id, &name, &state, &done, &total);
                if (r <= 0)
                        break;
                a = realloc(t, (n + 1) * sizeof(*t));
                if (!a) {
                        r = -ENOMEM;
                        break;
                }
                t = a;
                t[n] = (lodev_transfer) { .done = done, .total = total };
                n++;
                if ((r = dupstr(&t[n - 1].id, id)) < 0 ||
                    (r = dupstr(&t[n - 1].file_name, name)) < 0 ||
                    (r = dupstr(&t[n - 1].state, state)) < 0)
                        break;
        }
        if (r >= 0)
                r = sd_bus_message_exit_container(reply);
        if (r < 0) {
                lodev_transfers_free(t, n);
                return r;
        }
        *ret = t;
        *ret_n = n;
        return 0;
}

static int on_transfer_signal(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        lodev *l = userdata;
        const char *id, *message;
        uint64_t done, total;
        int ok;

        if (sd_bus_message_is_signal(m, BUS_INTERFACE, "TransferProgress")) {
                if (l->transfer_progress &&
                    sd_bus_message_read(m, "stt", &id, &done, &total) >= 0)
                        l->transfer_progress(l, id, done, total, l->transfer_userdata);
        } else if (sd_bus_message_is_signal(m, BUS_INTERFACE, "TransferFinished")) {
                if (l->transfer_finished && sd_bus_message_read(m, "sbs", &id, &ok, &message) >= 0)
                        l->transfer_finished(l, id, ok, message, l->transfer_userdata);
        }
        return 0;
}

int lodev_set_transfer_callbacks(lodev *l, lodev_transfer_progress_callback progress,
                                 lodev_transfer_finished_callback finished, void *userdata) {
        if (!l)
                return -EINVAL;
        l->transfer_progress = progress;
        l->transfer_finished = finished;
        l->transfer_userdata = userdata;
        /* One match for both signals of the interface. */
        return match_update(l, &l->transfer_slot, progress || finished, BUS_INTERFACE, NULL,
                            on_transfer_signal);
}

/* The value of a PropertiesChanged entry as text into buf; NULL for a type not known. */
static const char *variant_text(sd_bus_message *m, char *buf, size_t size) {
        const char *contents = NULL, *a, *b, *c;
        uint32_t u;
        int r;

        r = sd_bus_message_peek_type(m, NULL, &contents);
        if (r <= 0 || !contents)
                return NULL;
        if (strcmp(contents, "s") == 0 && sd_bus_message_read(m, "v", "s", &a) >= 0)
                snprintf(buf, size, "%s", a);
        else if (strcmp(contents, "u") == 0 && sd_bus_message_read(m, "v", "u", &u) >= 0)
                snprintf(buf, size, "%u", u);
        else if (strcmp(contents, "(sss)") == 0 &&
                 sd_bus_message_read(m, "v", "(sss)", &a, &b, &c) >= 0)
                snprintf(buf, size, "%s %s %s", a, b, c);
        else {
                (void) sd_bus_message_skip(m, "v");
                return NULL;
        }
        return buf;
}

static void properties_changed_events(lodev *l, sd_bus_message *m) {
        const char *iface, *name;
        char buf[1024];
        int r;

        if (sd_bus_message_read(m, "s", &iface) < 0 ||
            sd_bus_message_enter_container(m, 'a', "{sv}") < 0)
                return;
        while ((r = sd_bus_message_enter_container(m, 'e', "sv")) > 0) {
                lodev_event ev = { .name = "PropertiesChanged" };

                if (sd_bus_message_read(m, "s", &name) < 0)
                        return;
                ev.property = name;
                ev.value = variant_text(m, buf, sizeof(buf));
                l->event(l, &ev, l->event_userdata);
                if (sd_bus_message_exit_container(m) < 0)
                        return;
        }
        if (r < 0 || sd_bus_message_exit_container(m) < 0)
                return;
        /* Invalidated properties: their name, no value. */
        if (sd_bus_message_enter_container(m, 'a', "s") < 0)
                return;
        while (sd_bus_message_read(m, "s", &name) > 0) {
                lodev_event ev = { .name = "PropertiesChanged", .property = name };

                l->event(l, &ev, l->event_userdata);
        }
}

static int on_event_signal(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        lodev *l = userdata;
        lodev_event ev = { .name = sd_bus_message_get_member(m) };
        const char *iface = sd_bus_message_get_interface(m);

        if (!l->event || !ev.name || !iface)
                return 0;
        if (strcmp(iface, "org.freedesktop.DBus.Properties") == 0) {
                if (strcmp(ev.name, "PropertiesChanged") == 0)
                        properties_changed_events(l, m);
                return 0;
        }
        if (strcmp(iface, BUS_INTERFACE) != 0)
                return 0;
        if (strcmp(ev.name, "ObservationDelivered") == 0)
                (void) sd_bus_message_read(m, "s", &ev.id);
        else if (strcmp(ev.name, "TransferProgress") == 0)
                (void) sd_bus_message_read(m, "stt", &ev.id, &ev.done, &ev.total);
        else if (strcmp(ev.name, "TransferFinished") == 0)
                (void) sd_bus_message_read(m, "sbs", &ev.id, &ev.ok, &ev.message);
        else if (strcmp(ev.name, "JobUpdated") == 0)
                (void) sd_bus_message_read(m, "ssus", &ev.id, &ev.status, &ev.percent,
                                           &ev.message);
        l->event(l, &ev, l->event_userdata);
        return 0;
}

int lodev_set_event_callback(lodev *l, lodev_event_callback callback, void *userdata) {
        if (!l)
                return -EINVAL;
        l->event = callback;
        l->event_userdata = userdata;
        /* Every signal of the object: the interface's own and PropertiesChanged. */
        return match_update(l, &l->event_slot, callback, NULL, NULL, on_event_signal);
}

/* --- Firmware jobs --- */

#define CHECK_JOBS_TIMEOUT_USEC (UINT64_C(60) * 1000000)

int lodev_check_jobs(lodev *l) {
        _cleanup_(sd_bus_error_free) sd_bus_error e = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        int r;

        if (!l)
                return -EINVAL;
        r = sd_bus_message_new_method_call(l->bus, &m, BUS_NAME, BUS_PATH, BUS_INTERFACE,
                                           "CheckJobs");
        if (r < 0)
                return r;
        /* lodevd answers once the platform did, within its own 30 s. */
        r = sd_bus_call(l->bus, m,
                        l->call_timeout > CHECK_JOBS_TIMEOUT_USEC ? l->call_timeout
                                                                  : CHECK_JOBS_TIMEOUT_USEC,
                        &e, &reply);
        return r < 0 ? call_failed(l, &e, r) : 0;
}

int lodev_inhibit_reboot(lodev *l, const char *who, const char *why, int *ret_fd) {
        _cleanup_(sd_bus_error_free) sd_bus_error e = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        int fd, r;

        if (!l || !who || !why || !ret_fd)
                return -EINVAL;
        r = sd_bus_call_method(l->bus, BUS_NAME, BUS_PATH, BUS_INTERFACE, "InhibitReboot", &e,
                               &reply, "ss", who, why);
        if (r < 0)
                return call_failed(l, &e, r);
        r = sd_bus_message_read(reply, "h", &fd);
        if (r < 0)
                return r;
        /* The message owns its copy. */
        fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        if (fd < 0)
                return -errno;
        *ret_fd = fd;
        return 0;
}

lodev_inhibitor *lodev_inhibitors_free(lodev_inhibitor *a, size_t n) {
        for (size_t i = 0; a && i < n; i++) {
                free(a[i].who);
                free(a[i].why);
                free(a[i].owner);
        }
        free(a);
        return NULL;
}

int lodev_get_reboot_inhibitors(lodev *l, lodev_inhibitor **ret, size_t *ret_n) {
        _cleanup_(sd_bus_error_free) sd_bus_error e = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        lodev_inhibitor *a = NULL;
        size_t n = 0;
        int r;

        if (!l || !ret || !ret_n)
                return -EINVAL;
        r = sd_bus_get_property(l->bus, BUS_NAME, BUS_PATH, BUS_INTERFACE, "RebootInhibitors",
                                &e, &reply, "a(ssst)");
        if (r < 0)
                return call_failed(l, &e, r);
        r = sd_bus_message_enter_container(reply, 'a', "(ssst)");
        while (r >= 0) {
                const char *who, *why, *owner;
                uint64_t since;
                lodev_inhibitor *b;

                r = sd_bus_message_read(reply, "(ssst)", &who, &why, &owner, &since);
                if (r <= 0)
                        break;
                b = realloc(a, (n + 1) * sizeof(*b));
                if (!b) {
                        r = -ENOMEM;
                        break;
                }
                a = b;
                a[n] = (lodev_inhibitor) { .who = strdup(who), .why = strdup(why),
                                           .owner = strdup(owner), .since_usec = since };
                n++;
                if (!a[n - 1].who || !a[n - 1].why || !a[n - 1].owner)
                        r = -ENOMEM;
        }
        if (r >= 0)
                r = sd_bus_message_exit_container(reply);
        if (r < 0) {
                lodev_inhibitors_free(a, n);
                return r;
        }
        *ret = a;
        *ret_n = n;
        return 0;
}
