/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-bus.h>
#include <time.h>

#include "lodev.h"

#define BUS_NAME "com.lifeomic.Device1"
#define BUS_PATH "/com/lifeomic/Device1"
#define BUS_INTERFACE "com.lifeomic.Device1"
#define PROPERTIES_INTERFACE "org.freedesktop.DBus.Properties"
#define ERROR_PREFIX "com.lifeomic.Device1.Error."

/* Least time a call waits for its answer, whatever lodev_set_call_timeout() says. */
#define PROVISION_TIMEOUT_USEC (UINT64_C(300) * 1000000)
/* UploadFile answers once the copy is on disk: a large file on slow flash takes minutes. */
#define UPLOAD_TIMEOUT_USEC (UINT64_C(3600) * 1000000)
/* lodevd answers CheckJobs once the platform did, within its own 30 s. */
#define CHECK_JOBS_TIMEOUT_USEC (UINT64_C(60) * 1000000)

#define _cleanup_(f) __attribute__((cleanup(f)))

struct lodev {
        sd_bus *bus;
        char *last_error;
        uint64_t call_timeout;
        unsigned pending;
        lodev_slot *slots;    /* every slot not detached yet */
        unsigned dispatching; /* sd_bus_process() is running callbacks */
        bool closed;          /* lodev_close() came from a callback: freed after it */
};

typedef enum SlotType {
        SLOT_CALL_STRING, /* a method call answering a string */
        SLOT_CALL_EMPTY,  /* a method call answering nothing */
        SLOT_CALL_STATUS, /* Properties.GetAll, answered as a lodev_status */
        SLOT_WAIT_ONLINE,
        SLOT_DELIVERED,
        SLOT_TRANSFER_PROGRESS,
        SLOT_TRANSFER_FINISHED,
        SLOT_EVENT,
} SlotType;

typedef union Callback {
        lodev_reply_callback reply;
        lodev_status_callback status;
        lodev_delivered_callback delivered;
        lodev_transfer_progress_callback progress;
        lodev_transfer_finished_callback finished;
        lodev_event_callback event;
} Callback;

struct lodev_slot {
        lodev *l; /* NULL once detached: answered, canceled, or l closed */
        lodev_slot *prev, *next;
        SlotType type;
        bool floating; /* the handle's, not the caller's */
        bool pending;  /* counted in l->pending */
        bool running;  /* a callback of it runs: freeing waits until it returned */
        bool released; /* to be freed once the running callback returned */
        bool reread;   /* SLOT_WAIT_ONLINE: State changed while it was being read */
        sd_bus_slot *bus_slot; /* the call waiting for its answer, or the match */
        sd_bus_slot *get_slot; /* SLOT_WAIT_ONLINE: the read of State in flight */
        Callback cb;
        void *userdata;
};

/* Maps the daemon's named errors to errno values for the callers. */
static const sd_bus_error_map lodev_errors[] = {
        SD_BUS_ERROR_MAP(ERROR_PREFIX "InvalidArgument", EINVAL),
        SD_BUS_ERROR_MAP(ERROR_PREFIX "QueueFull", EDQUOT),
        SD_BUS_ERROR_MAP(ERROR_PREFIX "NoSpace", ENOSPC),
        SD_BUS_ERROR_MAP(ERROR_PREFIX "NotProvisioned", ENOTCONN),
        SD_BUS_ERROR_MAP(ERROR_PREFIX "NotFound", ENOENT),
        SD_BUS_ERROR_MAP(ERROR_PREFIX "Busy", EBUSY),
        SD_BUS_ERROR_MAP(ERROR_PREFIX "LimitsExceeded", EUSERS),
        SD_BUS_ERROR_MAP(ERROR_PREFIX "Offline", ENETDOWN),
        SD_BUS_ERROR_MAP(ERROR_PREFIX "Timeout", ETIMEDOUT),
        SD_BUS_ERROR_MAP(ERROR_PREFIX "Failed", EIO),
        SD_BUS_ERROR_MAP_END,
};

static void set_last_error(lodev *l, const sd_bus_error *e) {
        free(l->last_error);
        l->last_error = e && e->message ? strdup(e->message) : NULL;
}

/* The errno of a failed call (r from sd-bus, e the error it answered), kept as
 * lodev_last_error(). */
static int call_error(lodev *l, const sd_bus_error *e, int r) {
        set_last_error(l, e);
        if (sd_bus_error_is_set(e)) {
                r = sd_bus_error_get_errno(e);
                return r > 0 ? -r : -EIO;
        }
        return r < 0 ? r : -EIO;
}

/* --- Slots --- */

static lodev_slot *slot_new(lodev *l, lodev_slot **ret_slot, SlotType type, Callback cb,
                            void *userdata) {
        lodev_slot *s = calloc(1, sizeof(*s));

        if (!s)
                return NULL;
        *s = (lodev_slot) { .l = l, .type = type, .floating = !ret_slot, .cb = cb,
                            .userdata = userdata, .next = l->slots };
        if (l->slots)
                l->slots->prev = s;
        l->slots = s;
        return s;
}

/* Cuts the slot off its handle and the bus: no callback of it runs from now on. */
static void slot_detach(lodev_slot *s) {
        lodev *l = s->l;

        if (!l)
                return;
        s->bus_slot = sd_bus_slot_unref(s->bus_slot);
        s->get_slot = sd_bus_slot_unref(s->get_slot);
        if (s->pending)
                l->pending--;
        s->pending = false;
        if (s->prev)
                s->prev->next = s->next;
        else
                l->slots = s->next;
        if (s->next)
                s->next->prev = s->prev;
        s->prev = s->next = NULL;
        s->l = NULL;
}

/* Detaches and frees; a slot whose callback is running is freed once it returned. */
static void slot_drop(lodev_slot *s) {
        slot_detach(s);
        if (s->running)
                s->released = true;
        else
                free(s);
}

lodev_slot *lodev_slot_free(lodev_slot *s) {
        if (s)
                slot_drop(s);
        return NULL;
}

/* Hands the new slot to the caller, or keeps it floating. */
static int slot_publish(lodev_slot *s, lodev_slot **ret_slot) {
        if (ret_slot)
                *ret_slot = s;
        return 0;
}

/* Around a slot's callbacks: it may be freed, or its handle closed, from inside them. */
static void slot_enter(lodev_slot *s) {
        s->running = true;
}

static void slot_leave(lodev_slot *s) {
        s->running = false;
        if (s->released)
                free(s);
}

/* A call answered or a wait ended: the slot is spent before its callback runs. */
static void slot_finish(lodev_slot *s) {
        bool floating = s->floating;

        slot_detach(s);
        if (floating)
                s->released = true;
}

/* --- The handle --- */

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

static void handle_free(lodev *l) {
        sd_bus_flush_close_unref(l->bus);
        free(l->last_error);
        free(l);
}

lodev *lodev_close(lodev *l) {
        if (!l || l->closed)
                return NULL;
        /* Floating slots are the handle's; the caller still frees its own. */
        while (l->slots) {
                lodev_slot *s = l->slots;

                if (s->floating)
                        slot_drop(s);
                else
                        slot_detach(s);
        }
        if (l->dispatching)
                l->closed = true; /* freed when the callback returned to lodev_dispatch() */
        else
                handle_free(l);
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

/* Processes everything that is ready without blocking; stops when a callback closed l. */
static int dispatch_ready(lodev *l) {
        int r;

        do {
                l->dispatching++;
                r = sd_bus_process(l->bus, NULL);
                l->dispatching--;
        } while (r > 0 && !l->closed);
        return r;
}

int lodev_dispatch(lodev *l) {
        int r;

        if (!l)
                return -EINVAL;
        r = dispatch_ready(l);
        if (l->closed) {
                handle_free(l);
                return 0;
        }
        return r < 0 ? r : 0;
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

static uint64_t timeout_at_least(lodev *l, uint64_t least) {
        return l->call_timeout > least ? l->call_timeout : least;
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
        case EDQUOT:
                return "the queue is full";
        case ENOSPC:
                return "no space left on the device's file system";
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

/* --- Method calls. Both forms of a call go one path: the message is built once, sent,
 * and its answer read by the same function; only the waiting differs. --- */

/* How the caller takes the answer: waited for into ret (a char ** or lodev_status **), or
 * handed to the callback later, through the caller's slot or a floating one. */
typedef struct Request {
        void *ret;
        lodev_slot **ret_slot;
        Callback callback;
        void *userdata;
} Request;

#define WAIT(ret_) ((Request) { .ret = (ret_) })
#define ANSWER(ret_slot_, callback_, userdata_)                                                    \
        ((Request) { .ret_slot = (ret_slot_), .callback.reply = (callback_),                      \
                     .userdata = (userdata_) })

static int method_new(lodev *l, const char *member, sd_bus_message **ret) {
        return sd_bus_message_new_method_call(l->bus, ret, BUS_NAME, BUS_PATH, BUS_INTERFACE,
                                               member);
}

static int call_wait(lodev *l, sd_bus_message *m, uint64_t timeout, sd_bus_message **ret_reply) {
        _cleanup_(sd_bus_error_free) sd_bus_error e = SD_BUS_ERROR_NULL;
        int r;

        r = sd_bus_call(l->bus, m, timeout, &e, ret_reply);
        return r < 0 ? call_error(l, &e, r) : 0;
}

static int status_from_reply(sd_bus_message *reply, lodev_status **ret);

/* What a successful answer carries: a lodev_status, a string, or nothing (NULL). */
static int answer_read(sd_bus_message *reply, SlotType type, const char **ret_string,
                       lodev_status **ret_status) {
        *ret_string = NULL;
        *ret_status = NULL;
        if (type == SLOT_CALL_STATUS)
                return status_from_reply(reply, ret_status);
        if (type == SLOT_CALL_STRING)
                return sd_bus_message_read(reply, "s", ret_string);
        return 0;
}

static int on_call_answer(sd_bus_message *reply, void *userdata, sd_bus_error *ret_error) {
        lodev_slot *s = userdata;
        lodev *l = s->l;
        lodev_status *status = NULL;
        const char *string = NULL;
        int r;

        slot_finish(s);
        if (sd_bus_message_is_method_error(reply, NULL))
                r = call_error(l, sd_bus_message_get_error(reply), -EIO);
        else
                r = answer_read(reply, s->type, &string, &status);
        slot_enter(s);
        if (s->type == SLOT_CALL_STATUS)
                s->cb.status(l, r < 0 ? r : 0, r < 0 ? NULL : status, s->userdata);
        else
                s->cb.reply(l, r < 0 ? r : 0, r < 0 ? NULL : string, s->userdata);
        slot_leave(s);
        lodev_status_free(status);
        return 0;
}

/* Sends m (taken; r is the outcome of building it) as q asks. */
static int call(lodev *l, sd_bus_message *m, int r, uint64_t timeout, SlotType type,
                Request q) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *message = m, *reply = NULL;
        lodev_status *status;
        const char *string;
        lodev_slot *s;

        if (r < 0)
                return r;
        if (!q.callback.reply) {
                r = call_wait(l, message, timeout, &reply);
                if (r >= 0)
                        r = answer_read(reply, type, &string, &status);
                if (r < 0)
                        return r;
                if (type == SLOT_CALL_STATUS)
                        *(lodev_status **) q.ret = status;
                else if (string && q.ret && !(*(char **) q.ret = strdup(string)))
                        return -ENOMEM;
                return 0;
        }

        s = slot_new(l, q.ret_slot, type, q.callback, q.userdata);
        if (!s)
                return -ENOMEM;
        r = sd_bus_call_async(l->bus, &s->bus_slot, message, on_call_answer, s, timeout);
        if (r < 0) {
                slot_drop(s);
                return r;
        }
        s->pending = true;
        l->pending++;
        return slot_publish(s, q.ret_slot);
}

/* --- Status --- */

static void status_free_fields(lodev_status *s) {
        free(s->state);
        free(s->thing_name);
        free(s->endpoint);
        free(s->last_error);
        free(s->job_id);
        free(s->job_status);
}

lodev_status *lodev_status_free(lodev_status *s) {
        if (s) {
                status_free_fields(s);
                free(s);
        }
        return NULL;
}

static int dupstr(char **dst, const char *src) {
        free(*dst);
        *dst = strdup(src ? src : "");
        return *dst ? 0 : -ENOMEM;
}

/* Appends a zeroed element of size bytes to the array *a of *n; NULL when out of memory. */
static void *array_append(void *a, size_t *n, size_t size) {
        void **array = a;
        char *b = realloc(*array, (*n + 1) * size);

        if (!b)
                return NULL;
        *array = b;
        memset(b + *n * size, 0, size);
        return b + (*n)++ * size;
}

/* lodevd sends the job's percentage as text, empty before the phase reported any. */
static unsigned percent_from_text(const char *text) {
        char *end;
        unsigned long v;

        errno = 0;
        v = strtoul(text, &end, 10);
        if (errno != 0 || end == text || *end != '\0')
                return 0;
        return v > 100 ? 100 : (unsigned) v;
}

static int status_from_reply(sd_bus_message *reply, lodev_status **ret) {
        lodev_status *s;
        int r;

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
                                       (r = dupstr(&s->job_status, b)) < 0))
                                break;
                        if (r >= 0)
                                s->job_percent = percent_from_text(c);
                } else if (strcmp(name, "State") == 0 || strcmp(name, "ThingName") == 0 ||
                           strcmp(name, "Endpoint") == 0 || strcmp(name, "LastError") == 0) {
                        char **dst = name[0] == 'S'   ? &s->state
                                     : name[0] == 'T' ? &s->thing_name
                                     : name[0] == 'E' ? &s->endpoint
                                                      : &s->last_error;
                        r = sd_bus_message_read(reply, "v", "s", &str);
                        if (r >= 0)
                                r = dupstr(dst, str);
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

static int get_status(lodev *l, Request q) {
        sd_bus_message *m = NULL;
        int r;

        if (!l)
                return -EINVAL;
        r = sd_bus_message_new_method_call(l->bus, &m, BUS_NAME, BUS_PATH, PROPERTIES_INTERFACE,
                                           "GetAll");
        if (r >= 0)
                r = sd_bus_message_append(m, "s", BUS_INTERFACE);
        return call(l, m, r, l->call_timeout, SLOT_CALL_STATUS, q);
}

int lodev_get_status(lodev *l, lodev_status **ret) {
        return ret ? get_status(l, WAIT(ret)) : -EINVAL;
}

int lodev_get_status_async(lodev *l, lodev_slot **ret_slot, lodev_status_callback callback,
                           void *userdata) {
        return callback ? get_status(l, (Request) { .ret_slot = ret_slot,
                                                    .callback.status = callback,
                                                    .userdata = userdata })
                        : -EINVAL;
}

/* --- Observations --- */

static int submit_observation(lodev *l, const lodev_observation *o, Request q) {
        sd_bus_message *m = NULL;
        int r;

        if (!l || !o || !o->code || !o->code_system)
                return -EINVAL;
        r = method_new(l, "SubmitObservation", &m);
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
        return call(l, m, r, l->call_timeout, SLOT_CALL_STRING, q);
}

int lodev_submit_observation(lodev *l, const lodev_observation *o, char **ret_id) {
        return submit_observation(l, o, WAIT(ret_id));
}

int lodev_submit_observation_async(lodev *l, lodev_slot **ret_slot, const lodev_observation *o,
                                   lodev_reply_callback callback, void *userdata) {
        return callback ? submit_observation(l, o, ANSWER(ret_slot, callback, userdata)) : -EINVAL;
}

/* --- Provisioning --- */

static int provision(lodev *l, int force, Request q) {
        sd_bus_message *m = NULL;
        int r;

        if (!l)
                return -EINVAL;
        r = method_new(l, "Provision", &m);
        if (r >= 0)
                r = sd_bus_message_append(m, "a{sv}", 1, "force", "b", force ? 1 : 0);
        return call(l, m, r, timeout_at_least(l, PROVISION_TIMEOUT_USEC), SLOT_CALL_STRING, q);
}

int lodev_provision(lodev *l, int force, char **ret_thing_name) {
        return provision(l, force, WAIT(ret_thing_name));
}

int lodev_provision_async(lodev *l, lodev_slot **ret_slot, int force,
                          lodev_reply_callback callback, void *userdata) {
        return callback ? provision(l, force, ANSWER(ret_slot, callback, userdata)) : -EINVAL;
}

/* --- Waiting for the connection --- */

static int on_state_read(sd_bus_message *reply, void *userdata, sd_bus_error *ret_error);

static int wait_online_read(lodev_slot *s) {
        s->reread = false;
        return sd_bus_call_method_async(s->l->bus, &s->get_slot, BUS_NAME, BUS_PATH,
                                        PROPERTIES_INTERFACE, "Get", on_state_read, s,
                                        "ss", BUS_INTERFACE, "State");
}

/* The wait is over (error 0: online): the slot is spent, its callback runs. */
static void wait_online_end(lodev_slot *s, int error) {
        lodev *l = s->l;

        slot_finish(s);
        slot_enter(s);
        s->cb.reply(l, error, NULL, s->userdata);
        slot_leave(s);
}

static int on_state_read(sd_bus_message *reply, void *userdata, sd_bus_error *ret_error) {
        lodev_slot *s = userdata;
        const char *state;
        int r;

        s->get_slot = sd_bus_slot_unref(s->get_slot);
        if (sd_bus_message_is_method_error(reply, NULL)) {
                wait_online_end(s, call_error(s->l, sd_bus_message_get_error(reply), -EIO));
                return 0;
        }
        r = sd_bus_message_read(reply, "v", "s", &state);
        if (r < 0)
                wait_online_end(s, r);
        else if (strcmp(state, "online") == 0)
                wait_online_end(s, 0);
        else if (s->reread) {
                r = wait_online_read(s);
                if (r < 0)
                        wait_online_end(s, r);
        }
        return 0;
}

/* PropertiesChanged: the new State when it is sent, a fresh read when it is only invalidated. */
static int on_state_changed(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        lodev_slot *s = userdata;
        const char *iface, *name, *state = NULL;
        bool invalidated = false;
        int r;

        if (sd_bus_message_read(m, "s", &iface) < 0 || strcmp(iface, BUS_INTERFACE) != 0 ||
            sd_bus_message_enter_container(m, 'a', "{sv}") < 0)
                return 0;
        while ((r = sd_bus_message_enter_container(m, 'e', "sv")) > 0) {
                if (sd_bus_message_read(m, "s", &name) < 0)
                        return 0;
                if (strcmp(name, "State") == 0)
                        r = sd_bus_message_read(m, "v", "s", &state);
                else
                        r = sd_bus_message_skip(m, "v");
                if (r < 0 || sd_bus_message_exit_container(m) < 0)
                        return 0;
        }
        if (r < 0 || sd_bus_message_exit_container(m) < 0)
                return 0;
        if (!state && sd_bus_message_enter_container(m, 'a', "s") >= 0)
                while (sd_bus_message_read(m, "s", &name) > 0)
                        if (strcmp(name, "State") == 0)
                                invalidated = true;

        if (state && strcmp(state, "online") == 0)
                wait_online_end(s, 0);
        else if (invalidated) {
                /* Read again, after the read in flight if there is one: it may predate the
                 * change. */
                if (s->get_slot)
                        s->reread = true;
                else if ((r = wait_online_read(s)) < 0)
                        wait_online_end(s, r);
        }
        return 0;
}

int lodev_wait_online_async(lodev *l, lodev_slot **ret_slot, lodev_reply_callback callback,
                            void *userdata) {
        lodev_slot *s;
        int r;

        if (!l || !callback)
                return -EINVAL;
        s = slot_new(l, ret_slot, SLOT_WAIT_ONLINE, (Callback) { .reply = callback }, userdata);
        if (!s)
                return -ENOMEM;
        /* Subscribe first, then read: a change between the two is not missed. The match is
         * installed by the bus daemon (never lodevd) before the read reaches lodevd. */
        r = sd_bus_match_signal(l->bus, &s->bus_slot, BUS_NAME, BUS_PATH, PROPERTIES_INTERFACE,
                                "PropertiesChanged", on_state_changed, s);
        if (r >= 0)
                r = wait_online_read(s);
        if (r < 0) {
                slot_drop(s);
                return r;
        }
        s->pending = true;
        l->pending++;
        return slot_publish(s, ret_slot);
}

static uint64_t now_usec(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000 + (uint64_t) ts.tv_nsec / 1000;
}

typedef struct Wait {
        bool done;
        int error;
} Wait;

static void on_wait_done(lodev *l, int error, const char *result, void *userdata) {
        Wait *w = userdata;

        w->done = true;
        w->error = error;
}

int lodev_wait_online(lodev *l, uint64_t timeout_usec) {
        uint64_t deadline = timeout_usec == UINT64_MAX ? UINT64_MAX : now_usec() + timeout_usec;
        lodev_slot *slot = NULL;
        Wait w = {};
        int r;

        r = lodev_wait_online_async(l, &slot, on_wait_done, &w);
        if (r < 0)
                return r;
        for (;;) {
                uint64_t now;

                r = dispatch_ready(l);
                if (l->closed) {
                        /* A callback closed the handle under us. */
                        lodev_slot_free(slot);
                        handle_free(l);
                        return -ECANCELED;
                }
                if (w.done) {
                        r = w.error;
                        break;
                }
                if (r < 0)
                        break;
                now = now_usec();
                if (now >= deadline) {
                        r = -ETIMEDOUT;
                        break;
                }
                r = sd_bus_wait(l->bus, deadline == UINT64_MAX ? UINT64_MAX : deadline - now);
                if (r < 0 && r != -EINTR)
                        break;
        }
        lodev_slot_free(slot);
        return r;
}

/* --- File uploads --- */

static int upload_file(lodev *l, int fd, const char *file_name, const char *content_type,
                       Request q) {
        sd_bus_message *m = NULL;
        int r;

        if (!l || fd < 0 || !file_name)
                return -EINVAL;
        r = method_new(l, "UploadFile", &m);
        /* The message holds a duplicate of fd from here on. */
        if (r >= 0)
                r = sd_bus_message_append(m, "hss", fd, file_name, content_type ? content_type : "");
        if (r >= 0)
                r = sd_bus_message_append(m, "a{sv}", 0);
        return call(l, m, r, timeout_at_least(l, UPLOAD_TIMEOUT_USEC), SLOT_CALL_STRING, q);
}

int lodev_upload_file(lodev *l, int fd, const char *file_name, const char *content_type,
                      char **ret_id) {
        return upload_file(l, fd, file_name, content_type, WAIT(ret_id));
}

int lodev_upload_file_async(lodev *l, lodev_slot **ret_slot, int fd, const char *file_name,
                            const char *content_type, lodev_reply_callback callback,
                            void *userdata) {
        return callback ? upload_file(l, fd, file_name, content_type,
                                      ANSWER(ret_slot, callback, userdata))
                        : -EINVAL;
}

int lodev_cancel_transfer(lodev *l, const char *id) {
        sd_bus_message *m = NULL;
        int r;

        if (!l || !id)
                return -EINVAL;
        r = method_new(l, "CancelTransfer", &m);
        if (r >= 0)
                r = sd_bus_message_append(m, "s", id);
        return call(l, m, r, l->call_timeout, SLOT_CALL_EMPTY, WAIT(NULL));
}

lodev_transfer *lodev_transfers_free(lodev_transfer *t, size_t n) {
        for (size_t i = 0; t && i < n; i++) {
                free(t[i].id);
                free(t[i].file_name);
                free(t[i].state);
        }
        free(t);
        return NULL;
}

int lodev_list_transfers(lodev *l, lodev_transfer **ret, size_t *ret_n) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        lodev_transfer *t = NULL;
        size_t n = 0;
        int r;

        if (!l || !ret || !ret_n)
                return -EINVAL;
        r = method_new(l, "ListTransfers", &m);
        if (r < 0)
                return r;
        r = call_wait(l, m, l->call_timeout, &reply);
        if (r < 0)
                return r;
        r = sd_bus_message_enter_container(reply, 'a', "(ssstt)");
        while (r >= 0) {
                const char *id, *name, *state;
                lodev_transfer *e;
                uint64_t done, total;

                r = sd_bus_message_read(reply, "(ssstt)", &id, &name, &state, &done, &total);
                if (r <= 0)
                        break;
                e = array_append(&t, &n, sizeof(*t));
                if (!e) {
                        r = -ENOMEM;
                        break;
                }
                e->done = done;
                e->total = total;
                if ((r = dupstr(&e->id, id)) < 0 || (r = dupstr(&e->file_name, name)) < 0 ||
                    (r = dupstr(&e->state, state)) < 0)
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

/* --- Firmware jobs --- */

static int check_jobs(lodev *l, Request q) {
        sd_bus_message *m = NULL;
        int r;

        if (!l)
                return -EINVAL;
        r = method_new(l, "CheckJobs", &m);
        return call(l, m, r, timeout_at_least(l, CHECK_JOBS_TIMEOUT_USEC), SLOT_CALL_EMPTY, q);
}

int lodev_check_jobs(lodev *l) {
        return check_jobs(l, WAIT(NULL));
}

int lodev_check_jobs_async(lodev *l, lodev_slot **ret_slot, lodev_reply_callback callback,
                           void *userdata) {
        return callback ? check_jobs(l, ANSWER(ret_slot, callback, userdata)) : -EINVAL;
}

int lodev_inhibit_reboot(lodev *l, const char *who, const char *why, int *ret_fd) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        int fd, r;

        if (!l || !who || !why || !ret_fd)
                return -EINVAL;
        r = method_new(l, "InhibitReboot", &m);
        if (r >= 0)
                r = sd_bus_message_append(m, "ss", who, why);
        if (r < 0)
                return r;
        r = call_wait(l, m, l->call_timeout, &reply);
        if (r < 0)
                return r;
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
                return call_error(l, &e, r);
        r = sd_bus_message_enter_container(reply, 'a', "(ssst)");
        while (r >= 0) {
                const char *who, *why, *owner;
                lodev_inhibitor *h;
                uint64_t since;

                r = sd_bus_message_read(reply, "(ssst)", &who, &why, &owner, &since);
                if (r <= 0)
                        break;
                h = array_append(&a, &n, sizeof(*a));
                if (!h) {
                        r = -ENOMEM;
                        break;
                }
                h->since_usec = since;
                if ((r = dupstr(&h->who, who)) < 0 || (r = dupstr(&h->why, why)) < 0 ||
                    (r = dupstr(&h->owner, owner)) < 0)
                        break;
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

/* --- Signals --- */

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

/* One event per property; stops when a callback dropped the slot or closed the handle. */
static void properties_changed_events(lodev_slot *s, lodev *l, sd_bus_message *m) {
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
                s->cb.event(l, &ev, s->userdata);
                if (!s->l || sd_bus_message_exit_container(m) < 0)
                        return;
        }
        if (r < 0 || sd_bus_message_exit_container(m) < 0)
                return;
        /* Invalidated properties: their name, no value. */
        if (sd_bus_message_enter_container(m, 'a', "s") < 0)
                return;
        while (s->l && sd_bus_message_read(m, "s", &name) > 0) {
                lodev_event ev = { .name = "PropertiesChanged", .property = name };

                s->cb.event(l, &ev, s->userdata);
        }
}

static void event_signal(lodev_slot *s, lodev *l, sd_bus_message *m) {
        lodev_event ev = { .name = sd_bus_message_get_member(m) };
        const char *iface = sd_bus_message_get_interface(m);
        uint32_t percent = 0;

        if (!ev.name || !iface)
                return;
        if (strcmp(iface, PROPERTIES_INTERFACE) == 0) {
                if (strcmp(ev.name, "PropertiesChanged") == 0)
                        properties_changed_events(s, l, m);
                return;
        }
        if (strcmp(iface, BUS_INTERFACE) != 0)
                return;
        if (strcmp(ev.name, "ObservationDelivered") == 0)
                (void) sd_bus_message_read(m, "s", &ev.id);
        else if (strcmp(ev.name, "TransferProgress") == 0)
                (void) sd_bus_message_read(m, "stt", &ev.id, &ev.done, &ev.total);
        else if (strcmp(ev.name, "TransferFinished") == 0)
                (void) sd_bus_message_read(m, "sbs", &ev.id, &ev.ok, &ev.message);
        else if (strcmp(ev.name, "JobUpdated") == 0) {
                (void) sd_bus_message_read(m, "ssus", &ev.id, &ev.status, &percent, &ev.message);
                ev.percent = percent > 100 ? 100 : percent;
        }
        s->cb.event(l, &ev, s->userdata);
}

static int on_signal(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        lodev_slot *s = userdata;
        lodev *l = s->l;
        const char *id, *message;
        uint64_t done, total;
        int ok;

        slot_enter(s);
        switch (s->type) {
        case SLOT_DELIVERED:
                if (sd_bus_message_read(m, "s", &id) >= 0)
                        s->cb.delivered(l, id, s->userdata);
                break;
        case SLOT_TRANSFER_PROGRESS:
                if (sd_bus_message_read(m, "stt", &id, &done, &total) >= 0)
                        s->cb.progress(l, id, done, total, s->userdata);
                break;
        case SLOT_TRANSFER_FINISHED:
                if (sd_bus_message_read(m, "sbs", &id, &ok, &message) >= 0)
                        s->cb.finished(l, id, ok, message, s->userdata);
                break;
        case SLOT_EVENT:
                event_signal(s, l, m);
                break;
        default:
                break;
        }
        slot_leave(s);
        return 0;
}

/* Subscribes to the object's signals of interface and member (NULL: any). Synchronous, with
 * the bus daemon only: once this returns, no signal can slip past the match. */
static int add_match(lodev *l, lodev_slot **ret_slot, SlotType type, const char *interface,
                     const char *member, Callback cb, void *userdata) {
        lodev_slot *s;
        int r;

        s = slot_new(l, ret_slot, type, cb, userdata);
        if (!s)
                return -ENOMEM;
        r = sd_bus_match_signal(l->bus, &s->bus_slot, BUS_NAME, BUS_PATH, interface, member,
                                on_signal, s);
        if (r < 0) {
                slot_drop(s);
                return r;
        }
        return slot_publish(s, ret_slot);
}

int lodev_add_delivered_callback(lodev *l, lodev_slot **ret_slot,
                                 lodev_delivered_callback callback, void *userdata) {
        if (!l || !callback)
                return -EINVAL;
        return add_match(l, ret_slot, SLOT_DELIVERED, BUS_INTERFACE, "ObservationDelivered",
                         (Callback) { .delivered = callback }, userdata);
}

int lodev_add_transfer_progress_callback(lodev *l, lodev_slot **ret_slot,
                                         lodev_transfer_progress_callback callback,
                                         void *userdata) {
        if (!l || !callback)
                return -EINVAL;
        return add_match(l, ret_slot, SLOT_TRANSFER_PROGRESS, BUS_INTERFACE, "TransferProgress",
                         (Callback) { .progress = callback }, userdata);
}

int lodev_add_transfer_finished_callback(lodev *l, lodev_slot **ret_slot,
                                         lodev_transfer_finished_callback callback,
                                         void *userdata) {
        if (!l || !callback)
                return -EINVAL;
        return add_match(l, ret_slot, SLOT_TRANSFER_FINISHED, BUS_INTERFACE, "TransferFinished",
                         (Callback) { .finished = callback }, userdata);
}

int lodev_add_event_callback(lodev *l, lodev_slot **ret_slot, lodev_event_callback callback,
                             void *userdata) {
        if (!l || !callback)
                return -EINVAL;
        /* Every signal of the object: the interface's own and PropertiesChanged. */
        return add_match(l, ret_slot, SLOT_EVENT, NULL, NULL, (Callback) { .event = callback },
                         userdata);
}
