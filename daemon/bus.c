/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <inttypes.h>
#include <sys/resource.h>

#include "bus-args.h"
#include "bus.h"
#include "log.h"
#include "message.h"
#include "util.h"

/* Provision() callers waiting at once; each holds a message. */
#define PROVISION_WAITERS_MAX 64
/* Connections whose UID is remembered after their last pending call: a unique bus name is
 * never reused, and a caller that waits for each answer before its next call would otherwise
 * cost a query to the bus for every call. */
#define KNOWN_NAMES_MAX 64

/* A connection with calls waiting for an answer. */
typedef struct Client {
        char *name; /* unique bus name */
        uid_t uid;
        unsigned pending;
} Client;

/* What one user's calls hold: the bounds of SPEC §4 are per UID. */
typedef struct UserUsage {
        uid_t uid;
        unsigned pending; /* calls waiting for an answer */
        unsigned fds;     /* descriptors those calls make lodevd hold */
} UserUsage;

typedef struct KnownName {
        char *name;
        uid_t uid;
} KnownName;

/* Whose a reboot hold is: inhibit.c knows its owner's bus name, the bounds are per UID. */
typedef struct HoldOwner {
        char *name;
        uid_t uid;
} HoldOwner;

struct Bus {
        sd_bus *bus;
        sd_bus_slot *slot;
        Manager *manager;
        Client *clients;
        size_t n_clients;
        UserUsage *users;
        size_t n_users;
        KnownName known[KNOWN_NAMES_MAX]; /* a ring */
        size_t known_next;
        unsigned n_pending; /* of all clients */
        unsigned n_fds;     /* of all clients */
        unsigned fds_max;   /* from RLIMIT_NOFILE */
        sd_bus_message **provision_waiters;
        size_t n_provision_waiters;
        HoldOwner *hold_owners;
        size_t n_hold_owners;
};

/* A call answered later: the message, the bus that answers it, the descriptors it holds. */
typedef struct PendingCall {
        Bus *bus;
        sd_bus_message *msg;
        unsigned fds;
} PendingCall;

static Client *client_find(Bus *b, const char *name) {
        for (size_t i = 0; i < b->n_clients; i++)
                if (streq(b->clients[i].name, name))
                        return &b->clients[i];
        return NULL;
}

static UserUsage *user_find(Bus *b, uid_t uid) {
        for (size_t i = 0; i < b->n_users; i++)
                if (b->users[i].uid == uid)
                        return &b->users[i];
        return NULL;
}

/* The effective UID of msg's sender. From the bus the first time a connection calls (a
 * query to dbus-daemon), remembered while it has calls pending and for a while after. */
static int sender_uid(Bus *b, sd_bus_message *msg, uid_t *ret) {
        _cleanup_(sd_bus_creds_unrefp) sd_bus_creds *creds = NULL;
        const char *name = sd_bus_message_get_sender(msg);
        const Client *c;
        KnownName *k;
        uid_t uid;
        int r;

        if (name) {
                c = client_find(b, name);
                if (c) {
                        *ret = c->uid;
                        return 0;
                }
                for (size_t i = 0; i < KNOWN_NAMES_MAX; i++)
                        if (b->known[i].name && streq(b->known[i].name, name)) {
                                *ret = b->known[i].uid;
                                return 0;
                        }
        }
        r = sd_bus_query_sender_creds(msg, SD_BUS_CREDS_EUID, &creds);
        if (r >= 0)
                r = sd_bus_creds_get_euid(creds, &uid);
        if (r < 0)
                return r;
        if (name) {
                k = &b->known[b->known_next];
                b->known_next = (b->known_next + 1) % KNOWN_NAMES_MAX;
                free(k->name);
                *k = (KnownName) { .name = strdup(name), .uid = uid };
        }
        *ret = uid;
        return 0;
}

/* The caller's effective UID, or AccessDenied when it cannot be told. */
static int caller_uid(Bus *b, sd_bus_message *msg, sd_bus_error *error, uid_t *ret) {
        int r;

        r = sender_uid(b, msg, ret);
        if (r < 0)
                return sd_bus_error_setf(error, SD_BUS_ERROR_ACCESS_DENIED,
                                         "cannot tell who is calling: %s", strerror(-r));
        return 0;
}

/* Counts a call of msg's sender as pending, holding fds descriptors until it is answered.
 * Past a bound, sets LimitsExceeded in error naming it and returns its negative value: the
 * call is refused before lodevd takes anything of it. */
static int client_hold(Bus *b, sd_bus_message *msg, unsigned fds, sd_bus_error *error) {
        const char *name = sd_bus_message_get_sender(msg);
        UserUsage *u, *ua;
        Client *c, *a;
        uid_t uid;
        int r;

        if (!name)
                return 0; /* a direct connection: nothing to tell callers apart */
        r = sender_uid(b, msg, &uid);
        if (r < 0)
                return sd_bus_error_setf(error, SD_BUS_ERROR_ACCESS_DENIED,
                                         "cannot tell who is calling: %s", strerror(-r));
        c = client_find(b, name);
        u = user_find(b, uid);
        if (b->n_pending >= BUS_PENDING_MAX || (c && c->pending >= BUS_PENDING_PER_CLIENT_MAX) ||
            (u && u->pending >= BUS_PENDING_PER_UID_MAX))
                return sd_bus_error_setf(error, LODEV_ERROR_LIMITS_EXCEEDED,
                                         "too many calls waiting for an answer (at most %u per "
                                         "client connection, %u per user, %u in all)",
                                         BUS_PENDING_PER_CLIENT_MAX, BUS_PENDING_PER_UID_MAX,
                                         BUS_PENDING_MAX);
        if (fds > 0 && (b->n_fds + fds > b->fds_max ||
                        (u && u->fds + fds > BUS_FDS_PER_UID_MAX)))
                return sd_bus_error_setf(error, LODEV_ERROR_LIMITS_EXCEEDED,
                                         "too many files being spooled at once (their "
                                         "descriptors: at most %u per user, %u in all); wait "
                                         "for an answer first",
                                         BUS_FDS_PER_UID_MAX, b->fds_max);

        if (!u) {
                ua = reallocarray(b->users, b->n_users + 1, sizeof(UserUsage));
                if (!ua)
                        return -ENOMEM;
                b->users = ua;
                u = &ua[b->n_users++];
                *u = (UserUsage) { .uid = uid };
        }
        if (!c) {
                char *copy = strdup(name);

                a = copy ? reallocarray(b->clients, b->n_clients + 1, sizeof(Client)) : NULL;
                if (!a) {
                        free(copy);
                        if (u->pending == 0 && u->fds == 0)
                                *u = b->users[--b->n_users];
                        return -ENOMEM;
                }
                b->clients = a;
                c = &a[b->n_clients++];
                *c = (Client) { .name = copy, .uid = uid };
        }
        c->pending++;
        u->pending++;
        u->fds += fds;
        b->n_pending++;
        b->n_fds += fds;
        return 0;
}

static void client_release(Bus *b, sd_bus_message *msg, unsigned fds) {
        const char *name = sd_bus_message_get_sender(msg);
        Client *c = name ? client_find(b, name) : NULL;
        UserUsage *u;

        if (!c)
                return;
        u = user_find(b, c->uid);
        assert(u);
        b->n_pending--;
        b->n_fds -= fds;
        u->pending--;
        u->fds -= fds;
        if (u->pending == 0 && u->fds == 0)
                *u = b->users[--b->n_users];
        if (--c->pending > 0)
                return;
        free(c->name);
        *c = b->clients[--b->n_clients];
}

static int pending_call_new(Bus *b, sd_bus_message *msg, unsigned fds, sd_bus_error *error,
                            PendingCall **ret) {
        PendingCall *p;
        int r;

        r = client_hold(b, msg, fds, error);
        if (r < 0)
                return r;
        p = malloc(sizeof(*p));
        if (!p) {
                client_release(b, msg, fds);
                return -ENOMEM;
        }
        *p = (PendingCall) { .bus = b, .msg = sd_bus_message_ref(msg), .fds = fds };
        *ret = p;
        return 0;
}

static void pending_call_free(PendingCall *p) {
        client_release(p->bus, p->msg, p->fds);
        sd_bus_message_unref(p->msg);
        free(p);
}

static int property_get_string(sd_bus *bus, const char *path, const char *interface,
                               const char *property, sd_bus_message *reply, void *userdata,
                               sd_bus_error *error) {
        Bus *b = userdata;
        Manager *m = b->manager;
        const char *v = NULL;

        if (streq(property, "State"))
                v = device_state_to_string(m->state);
        else if (streq(property, "ThingName"))
                v = m->identity.thing_name;
        else if (streq(property, "Endpoint"))
                v = m->endpoint;
        else if (streq(property, "LastError"))
                v = m->last_error;
        return sd_bus_message_append(reply, "s", strempty(v));
}

static int property_get_queued(sd_bus *bus, const char *path, const char *interface,
                               const char *property, sd_bus_message *reply, void *userdata,
                               sd_bus_error *error) {
        Bus *b = userdata;
        unsigned n = 0;

        if (streq(property, "QueuedObservations"))
                n = delivery_queued(b->manager->delivery);
        else if (streq(property, "QueuedTransfers"))
                n = uploads_queued(b->manager->uploads);
        return sd_bus_message_append(reply, "u", n);
}

static int property_get_current_job(sd_bus *bus, const char *path, const char *interface,
                                    const char *property, sd_bus_message *reply, void *userdata,
                                    sd_bus_error *error) {
        Bus *b = userdata;
        const char *id, *status, *percent;

        jobs_current(b->manager->jobs, &id, &status, &percent);
        return sd_bus_message_append(reply, "(sss)", id, status, percent);
}

static int property_get_reboot_inhibitors(sd_bus *bus, const char *path, const char *interface,
                                          const char *property, sd_bus_message *reply,
                                          void *userdata, sd_bus_error *error) {
        Bus *b = userdata;
        const Inhibitors *in = jobs_inhibitors(b->manager->jobs);
        const Inhibitor *i;
        int r;

        r = sd_bus_message_open_container(reply, 'a', "(ssst)");
        for (size_t k = 0; r >= 0 && (i = inhibitors_get(in, k)); k++)
                r = sd_bus_message_append(reply, "(ssst)", i->who, i->why, i->owner,
                                          i->since_usec);
        if (r < 0)
                return r;
        return sd_bus_message_close_container(reply);
}

static void jobs_checked(int error, void *userdata) {
        PendingCall *p = userdata;
        int r;

        if (error >= 0)
                r = sd_bus_reply_method_return(p->msg, "");
        else if (error == -ENOTCONN)
                r = sd_bus_reply_method_errorf(p->msg, LODEV_ERROR_OFFLINE,
                                               "the device went offline before the platform "
                                               "answered");
        else if (error == -ETIMEDOUT)
                r = sd_bus_reply_method_errorf(p->msg, LODEV_ERROR_TIMEOUT,
                                               "the platform did not answer with the job list "
                                               "in time");
        else
                r = sd_bus_reply_method_errorf(p->msg, LODEV_ERROR_FAILED,
                                               "the platform did not answer with the job list: "
                                               "%s",
                                               strerror(-error));
        if (r < 0)
                log_debug_errno(r, "Failed to answer CheckJobs(), ignoring: %m");
        pending_call_free(p);
}

/* Answered once the platform's list arrived and lodevd acted on it. */
static int method_check_jobs(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        Bus *b = userdata;
        PendingCall *p = NULL;
        int r;

        r = pending_call_new(b, msg, 0, error, &p);
        if (r < 0)
                return r;
        r = jobs_check(b->manager->jobs, jobs_checked, p);
        if (r >= 0)
                return 1;
        pending_call_free(p);
        if (r == -ENOTCONN && !b->manager->identity.thing_name)
                return sd_bus_error_setf(error, LODEV_ERROR_NOT_PROVISIONED,
                                         "the device is not provisioned yet (%s)",
                                         device_state_to_string(b->manager->state));
        if (r == -ENOTCONN)
                return sd_bus_error_setf(error, LODEV_ERROR_OFFLINE,
                                         "the device is not online (%s)",
                                         device_state_to_string(b->manager->state));
        if (r == -EBUSY)
                return sd_bus_error_setf(error, LODEV_ERROR_BUSY,
                                         "too many CheckJobs() calls waiting");
        return sd_bus_error_setf(error, LODEV_ERROR_FAILED,
                                 "the job journal cannot be read (%s); lodevd tries again",
                                 strerror(-r));
}

/* The reboot holds of uid now; forgets the owners that hold none any more. */
static unsigned holds_of_uid(Bus *b, uid_t uid) {
        const Inhibitors *in = jobs_inhibitors(b->manager->jobs);
        unsigned n = 0;

        for (size_t o = 0; o < b->n_hold_owners;) {
                const HoldOwner *h = &b->hold_owners[o];
                unsigned held = 0;
                const Inhibitor *i;

                for (size_t k = 0; (i = inhibitors_get(in, k)); k++)
                        if (streq(i->owner, h->name))
                                held++;
                if (held == 0) {
                        free(b->hold_owners[o].name);
                        b->hold_owners[o] = b->hold_owners[--b->n_hold_owners];
                        continue;
                }
                if (h->uid == uid)
                        n += held;
                o++;
        }
        return n;
}

static void hold_owner_add(Bus *b, const char *name, uid_t uid) {
        HoldOwner *a;

        for (size_t o = 0; o < b->n_hold_owners; o++)
                if (streq(b->hold_owners[o].name, name))
                        return;
        a = reallocarray(b->hold_owners, b->n_hold_owners + 1, sizeof(HoldOwner));
        if (!a)
                return; /* its holds go uncounted for this user: bounded per owner and in all */
        b->hold_owners = a;
        a[b->n_hold_owners] = (HoldOwner) { .name = strdup(name), .uid = uid };
        if (a[b->n_hold_owners].name)
                b->n_hold_owners++;
}

static int method_inhibit_reboot(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        Bus *b = userdata;
        const char *who, *why, *sender = sd_bus_message_get_sender(msg);
        _cleanup_close_ int fd = -EBADF;
        uid_t uid;
        int r;

        r = sd_bus_message_read(msg, "ss", &who, &why);
        if (r < 0)
                return r;
        r = caller_uid(b, msg, error, &uid);
        if (r < 0)
                return r;
        /* Each hold is a descriptor lodevd keeps: bounded per user, before one is made. */
        if (holds_of_uid(b, uid) >= BUS_HOLDS_PER_UID_MAX)
                return sd_bus_error_setf(error, LODEV_ERROR_LIMITS_EXCEEDED,
                                         "too many reboot inhibitors (at most %u per user)",
                                         BUS_HOLDS_PER_UID_MAX);
        r = jobs_inhibit_reboot(b->manager->jobs, who, why, sender, &fd);
        if (r >= 0 && sender)
                hold_owner_add(b, sender, uid);
        if (r == -EINVAL)
                return sd_bus_error_setf(error, LODEV_ERROR_INVALID_ARGUMENT,
                                         "who and why must be 1 to %u bytes of text without "
                                         "control characters",
                                         INHIBITOR_TEXT_MAX);
        if (r == -EUSERS)
                return sd_bus_error_setf(error, LODEV_ERROR_LIMITS_EXCEEDED,
                                         "too many reboot inhibitors (at most %u per client, "
                                         "%u in all)",
                                         INHIBITORS_PER_OWNER_MAX, INHIBITORS_MAX);
        if (r < 0)
                return r;
        return sd_bus_reply_method_return(msg, "h", fd);
}

/* Reads an a{sv} of options, calling handle() for each, its value of the type options says;
 * unknown keys and wrong types are InvalidArgument errors naming the key. */
typedef int (*OptionHandler)(const char *key, sd_bus_message *msg, void *userdata,
                             sd_bus_error *error);

static int read_options(sd_bus_message *msg, const BusOption *options, size_t n_options,
                        OptionHandler handle, void *userdata, sd_bus_error *error) {
        int r;

        r = sd_bus_message_enter_container(msg, 'a', "{sv}");
        if (r < 0)
                return r;
        for (;;) {
                _cleanup_free_ char *message = NULL;
                const char *key, *contents;

                r = sd_bus_message_enter_container(msg, 'e', "sv");
                if (r < 0)
                        return r;
                if (r == 0)
                        break;
                r = sd_bus_message_read(msg, "s", &key);
                if (r < 0)
                        return r;
                r = sd_bus_message_peek_type(msg, NULL, &contents);
                if (r < 0)
                        return r;
                r = bus_args_check_option(options, n_options, key, contents, NULL, &message);
                if (r == -EINVAL)
                        return sd_bus_error_set(error, LODEV_ERROR_INVALID_ARGUMENT, message);
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

static void provision_waiters_reply(Bus *b, const char *thing, const char *error) {
        for (size_t i = 0; i < b->n_provision_waiters; i++) {
                sd_bus_message *msg = b->provision_waiters[i];
                int r;

                if (thing)
                        r = sd_bus_reply_method_return(msg, "s", thing);
                else
                        r = sd_bus_reply_method_errorf(msg, LODEV_ERROR_FAILED, "%s", error);
                if (r < 0)
                        log_debug_errno(r, "Failed to answer Provision(), ignoring: %m");
                client_release(b, msg, 0);
                sd_bus_message_unref(msg);
        }
        b->provision_waiters = (free(b->provision_waiters), NULL);
        b->n_provision_waiters = 0;
}

static int provision_option(const char *key, sd_bus_message *msg, void *userdata,
                            sd_bus_error *error) {
        bool *force = userdata;
        int b, r;

        r = sd_bus_message_read(msg, "v", "b", &b);
        if (r < 0)
                return r;
        *force = b;
        return 0;
}

/* Replacing the identity gives the gateway a new thing name and contacts the platform
 * with the fleet's claim certificate: root only, whatever the bus policy allows. */
static int check_root(Bus *b, sd_bus_message *msg, sd_bus_error *error) {
        uid_t uid;
        int r;

        r = caller_uid(b, msg, error, &uid);
        if (r < 0)
                return r;
        if (uid != 0)
                return sd_bus_error_setf(error, SD_BUS_ERROR_ACCESS_DENIED,
                                         "options: 'force' is allowed to root only");
        return 0;
}

static int method_provision(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        Bus *b = userdata;
        const char *thing = NULL;
        sd_bus_message **w;
        bool force = false;
        int r;

        r = read_options(msg, bus_options_provision, bus_options_provision_n, provision_option,
                         &force, error);
        if (r < 0)
                return r;
        if (force) {
                r = check_root(b, msg, error);
                if (r < 0)
                        return r;
        }
        if (b->n_provision_waiters >= PROVISION_WAITERS_MAX)
                return sd_bus_error_setf(error, LODEV_ERROR_BUSY,
                                         "too many callers waiting for provisioning");
        w = realloc(b->provision_waiters, (b->n_provision_waiters + 1) * sizeof(*w));
        if (!w)
                return -ENOMEM;
        b->provision_waiters = w;

        r = manager_provision(b->manager, force, &thing);
        if (r == -EBUSY)
                return sd_bus_error_setf(error, LODEV_ERROR_BUSY,
                                         "provisioning is already running (%s)",
                                         provision_step_to_string(
                                                 provisioner_step(b->manager->provisioner)));
        if (r == -ENOKEY)
                return sd_bus_error_setf(error, LODEV_ERROR_FAILED, "%s",
                                         b->manager->last_error);
        if (r < 0)
                return r;
        if (r == 0)
                return sd_bus_reply_method_return(msg, "s", thing);

        r = client_hold(b, msg, 0, error);
        if (r < 0)
                return r;
        w[b->n_provision_waiters++] = sd_bus_message_ref(msg);
        return 1; /* answered when provisioning ends */
}

static int observation_option(const char *key, sd_bus_message *msg, void *userdata,
                              sd_bus_error *error) {
        Observation *o = userdata;
        const char *v;
        int r;

        r = sd_bus_message_read(msg, "v", "s", &v);
        if (r < 0)
                return r;
        o->patient_id = (char *) v;
        return 0;
}

/* NoSpace (SPEC §4): which file system is full, and how full. */
static int set_no_space(sd_bus_error *error, const char *what, const char *dir,
                        const StateDirSpace *space) {
        if (!isempty(space->mount_point))
                return sd_bus_error_setf(error, LODEV_ERROR_NO_SPACE,
                                         "%s: the file system on %s (%s, holding %s) is full, "
                                         "%" PRIu64 " bytes free",
                                         what, space->mount_point, strempty(space->type), dir,
                                         space->free_bytes);
        return sd_bus_error_setf(error, LODEV_ERROR_NO_SPACE,
                                 "%s: the file system holding %s is full, %" PRIu64
                                 " bytes free",
                                 what, dir, space->free_bytes);
}

/* Why an observation was not stored: QueueFull for the budget, NoSpace for the disk. */
static int set_observation_error(Bus *b, sd_bus_error *error, int r) {
        Delivery *d = b->manager->delivery;
        StateDirSpace space = {};

        switch (r) {
        case -E2BIG:
                return sd_bus_error_setf(error, LODEV_ERROR_INVALID_ARGUMENT,
                                         "observation: encoded payload exceeds %u bytes",
                                         MESSAGE_SIZE_MAX);
        case -EDQUOT:
                return sd_bus_error_setf(error, LODEV_ERROR_QUEUE_FULL,
                                         "the observation queue is full (%" PRIu64
                                         " bytes of spool.max_bytes %" PRIu64 ")",
                                         delivery_used_bytes(d),
                                         b->manager->config.spool_max_bytes);
        case -ENOSPC:
                (void) delivery_space(d, &space);
                return set_no_space(error, "cannot store the observation", delivery_dir(d),
                                    &space);
        case -EAGAIN:
                return sd_bus_error_setf(error, LODEV_ERROR_FAILED,
                                         "cannot store the observation: the spool %s cannot be "
                                         "opened now; lodevd tries again",
                                         delivery_dir(d));
        default:
                return sd_bus_error_setf(error, LODEV_ERROR_FAILED,
                                         "cannot store the observation: %s", strerror(-r));
        }
}

static void observation_submitted(uint64_t seq, int error, void *userdata) {
        _cleanup_(sd_bus_error_free) sd_bus_error e = SD_BUS_ERROR_NULL;
        PendingCall *p = userdata;
        char id[24];
        int r;

        snprintf(id, sizeof(id), "%" PRIu64, seq);
        if (error >= 0)
                r = sd_bus_reply_method_return(p->msg, "s", id);
        else {
                (void) set_observation_error(p->bus, &e, error);
                r = sd_bus_reply_method_error(p->msg, &e);
        }
        if (r < 0)
                log_debug_errno(r, "Failed to answer SubmitObservation(), ignoring: %m");
        pending_call_free(p);
}

static int method_submit_observation(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        Bus *b = userdata;
        Delivery *d = b->manager->delivery;
        PendingCall *p = NULL;
        _cleanup_free_ char *message = NULL;
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
        r = bus_args_check_codings(n, &message);
        if (r == -EINVAL)
                return sd_bus_error_set(error, LODEV_ERROR_INVALID_ARGUMENT, message);
        if (r < 0)
                return r;
        r = sd_bus_message_read(msg, "ds", &o.value, &o.unit);
        if (r < 0)
                return r;
        r = read_options(msg, bus_options_submit_observation, bus_options_submit_observation_n,
                         observation_option, &o, error);
        if (r < 0)
                return r;
        r = bus_args_check_observation(&o, &message);
        if (r == -EINVAL)
                return sd_bus_error_set(error, LODEV_ERROR_INVALID_ARGUMENT, message);
        if (r < 0)
                return r;

        r = pending_call_new(b, msg, 0, error, &p);
        if (r < 0)
                return r;
        r = delivery_submit(d, &o, observation_submitted, p);
        if (r >= 0)
                return 1; /* answered after the fsync */
        pending_call_free(p);
        return set_observation_error(b, error, r);
}

/* --- File transfers: UploadFile, CancelTransfer, ListTransfers --- */

/* Why a file was not spooled, as an error name of its own for each errno. */
static int set_upload_error(Bus *b, sd_bus_error *error, int r, const char *reason) {
        Uploads *u = b->manager->uploads;
        StateDirSpace space = {};

        switch (r) {
        case -EINVAL:
        case -EBADF:
        case -EFBIG:  /* over 5 GiB, or a pseudo-file over what lodevd reads */
        case -ESPIPE: /* a stream with no end */
                return sd_bus_error_setf(error, LODEV_ERROR_INVALID_ARGUMENT, "%s",
                                         reason ?: strerror(-r));
        case -E2BIG:
        case -EDQUOT:
                return sd_bus_error_setf(error, LODEV_ERROR_QUEUE_FULL,
                                         "%s (%" PRIu64 " of transfers.max_bytes %" PRIu64
                                         " bytes in use)",
                                         reason ?: strerror(-r), uploads_used_bytes(u),
                                         uploads_max_bytes(u));
        case -ENOSPC:
                (void) uploads_space(u, &space);
                return set_no_space(error, "cannot spool the file", uploads_dir(u), &space);
        default:
                return sd_bus_error_setf(error, LODEV_ERROR_FAILED, "cannot spool the file: %s",
                                         reason ?: strerror(-r));
        }
}

static void upload_added(const char *id, int error, const char *reason, void *userdata) {
        _cleanup_(sd_bus_error_free) sd_bus_error e = SD_BUS_ERROR_NULL;
        PendingCall *p = userdata;
        int r;

        if (error >= 0)
                r = sd_bus_reply_method_return(p->msg, "s", id);
        else {
                (void) set_upload_error(p->bus, &e, error, reason);
                r = sd_bus_reply_method_error(p->msg, &e);
        }
        if (r < 0)
                log_debug_errno(r, "Failed to answer UploadFile(), ignoring: %m");
        pending_call_free(p);
}

static int method_upload_file(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        Bus *b = userdata;
        Uploads *u = b->manager->uploads;
        const char *name, *type, *reason = NULL;
        PendingCall *p = NULL;
        uid_t uid;
        int fd, r;

        r = sd_bus_message_read(msg, "hss", &fd, &name, &type);
        if (r < 0)
                return r;
        r = read_options(msg, NULL, 0, NULL, NULL, error);
        if (r < 0)
                return r;
        /* The bounds come before anything of the call is taken: refused, the message and the
         * descriptor it carries are freed at once. */
        r = pending_call_new(b, msg, UPLOAD_FDS_HELD, error, &p);
        if (r < 0)
                return r;
        r = caller_uid(b, msg, error, &uid);
        if (r >= 0)
                /* fd belongs to msg; the service takes a duplicate. */
                r = uploads_add(u, fd, name, type, uid, upload_added, p, &reason);
        if (r >= 0)
                return 1; /* answered once the copy is durable */
        pending_call_free(p);
        if (sd_bus_error_is_set(error))
                return r;
        return set_upload_error(b, error, r, reason);
}

static int method_cancel_transfer(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        Bus *b = userdata;
        const char *id;
        uid_t uid;
        int r;

        r = sd_bus_message_read(msg, "s", &id);
        if (r < 0)
                return r;
        r = caller_uid(b, msg, error, &uid);
        if (r < 0)
                return r;
        r = uploads_cancel(b->manager->uploads, id, uid);
        if (r == -ENOENT)
                return sd_bus_error_setf(error, LODEV_ERROR_NOT_FOUND, "no transfer '%s'", id);
        if (r == -EPERM)
                return sd_bus_error_setf(error, SD_BUS_ERROR_ACCESS_DENIED,
                                         "transfer '%s' belongs to another user: only its owner "
                                         "or root may cancel it",
                                         id);
        if (r < 0)
                return r;
        return sd_bus_reply_method_return(msg, "");
}

static int method_list_transfers(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        Bus *b = userdata;
        UploadInfo t;
        int r;

        r = sd_bus_message_new_method_return(msg, &reply);
        if (r >= 0)
                r = sd_bus_message_open_container(reply, 'a', "(ssstt)");
        for (size_t i = 0; r >= 0 && uploads_nth(b->manager->uploads, i, &t); i++)
                r = sd_bus_message_append(reply, "(ssstt)", t.id, t.file_name, t.state, t.done,
                                          t.total);
        if (r >= 0)
                r = sd_bus_message_close_container(reply);
        if (r < 0)
                return r;
        return sd_bus_send(NULL, reply, NULL);
}

static void on_transfer_progress(const char *id, uint64_t done, uint64_t total, void *userdata) {
        Bus *b = userdata;
        int r;

        r = sd_bus_emit_signal(b->bus, LODEV_BUS_PATH, LODEV_BUS_INTERFACE, "TransferProgress",
                               "stt", id, done, total);
        if (r < 0)
                log_debug_errno(r, "Failed to emit TransferProgress, ignoring: %m");
}

static void on_transfer_finished(const char *id, bool ok, const char *message, void *userdata) {
        Bus *b = userdata;
        int r;

        r = sd_bus_emit_signal(b->bus, LODEV_BUS_PATH, LODEV_BUS_INTERFACE, "TransferFinished",
                               "sbs", id, (int) ok, strempty(message));
        if (r < 0)
                log_debug_errno(r, "Failed to emit TransferFinished, ignoring: %m");
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
        SD_BUS_PROPERTY("RebootInhibitors", "a(ssst)", property_get_reboot_inhibitors, 0,
                        SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_METHOD_WITH_NAMES("SubmitObservation", "a(sss)dsa{sv}",
                                 SD_BUS_PARAM(coding) SD_BUS_PARAM(value) SD_BUS_PARAM(unit)
                                         SD_BUS_PARAM(options),
                                 "s", SD_BUS_PARAM(id), method_submit_observation,
                                 SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_NAMES("UploadFile", "hssa{sv}",
                                 SD_BUS_PARAM(fd) SD_BUS_PARAM(file_name)
                                         SD_BUS_PARAM(content_type) SD_BUS_PARAM(options),
                                 "s", SD_BUS_PARAM(id), method_upload_file,
                                 SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_NAMES("CancelTransfer", "s", SD_BUS_PARAM(id), "", ,
                                 method_cancel_transfer, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_NAMES("ListTransfers", "", , "a(ssstt)", SD_BUS_PARAM(transfers),
                                 method_list_transfers, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_NAMES("Provision", "a{sv}", SD_BUS_PARAM(options), "s",
                                 SD_BUS_PARAM(thing_name), method_provision,
                                 SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD("CheckJobs", "", "", method_check_jobs, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_NAMES("InhibitReboot", "ss", SD_BUS_PARAM(who) SD_BUS_PARAM(why), "h",
                                 SD_BUS_PARAM(fd), method_inhibit_reboot,
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

static void on_property_changed(const char *property, void *userdata) {
        Bus *b = userdata;
        int r;

        r = sd_bus_emit_properties_changed(b->bus, LODEV_BUS_PATH, LODEV_BUS_INTERFACE, property,
                                           NULL);
        if (r < 0)
                log_debug_errno(r, "Failed to emit PropertiesChanged, ignoring: %m");
}

static void on_observation_delivered(uint64_t seq, void *userdata) {
        Bus *b = userdata;
        char id[24];
        int r;

        snprintf(id, sizeof(id), "%" PRIu64, seq);
        r = sd_bus_emit_signal(b->bus, LODEV_BUS_PATH, LODEV_BUS_INTERFACE,
                               "ObservationDelivered", "s", id);
        if (r < 0)
                log_debug_errno(r, "Failed to emit ObservationDelivered, ignoring: %m");
}

static void on_provision_finished(const char *thing, const char *error, void *userdata) {
        provision_waiters_reply(userdata, thing, error);
}

static void on_job_updated(const char *job_id, const char *status, unsigned percent,
                           const char *message, void *userdata) {
        Bus *b = userdata;
        _cleanup_free_ char *m = escape_control(message);
        int r;

        r = sd_bus_emit_signal(b->bus, LODEV_BUS_PATH, LODEV_BUS_INTERFACE, "JobUpdated", "ssus",
                               job_id, status, percent, strempty(m));
        if (r < 0)
                log_debug_errno(r, "Failed to emit JobUpdated, ignoring: %m");
}

static const ManagerObserver observer = {
        .property_changed = on_property_changed,
        .observation_delivered = on_observation_delivered,
        .provision_finished = on_provision_finished,
        .transfer_progress = on_transfer_progress,
        .transfer_finished = on_transfer_finished,
        .job_updated = on_job_updated,
};

/* A quarter of the descriptors lodevd may have (main() raised the soft limit to the hard
 * one), at most BUS_FDS_MAX. */
static unsigned bus_fds_max(void) {
        struct rlimit rl;

        if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY)
                return BUS_FDS_MAX;
        return (unsigned) MIN((rlim_t) BUS_FDS_MAX, rl.rlim_cur / 4);
}

int bus_new(Manager *m, Bus **ret) {
        Bus *b;
        int r;

        b = calloc(1, sizeof(*b));
        if (!b)
                return log_oom();
        b->manager = m;
        b->fds_max = bus_fds_max();

        /* sd_bus_open_system() honours DBUS_SYSTEM_BUS_ADDRESS, which is how tests point
         * lodevd at a private bus. */
        r = sd_bus_open_system(&b->bus);
        if (r < 0) {
                log_error_errno(r, "Failed to connect to the system bus: %m");
                goto fail;
        }
        r = sd_bus_add_object_vtable(b->bus, &b->slot, LODEV_BUS_PATH, LODEV_BUS_INTERFACE,
                                     device_vtable, b);
        if (r < 0) {
                log_error_errno(r, "Failed to register %s: %m", LODEV_BUS_PATH);
                goto fail;
        }
        r = sd_bus_request_name(b->bus, LODEV_BUS_NAME, 0);
        if (r < 0) {
                log_error_errno(r, "Failed to acquire bus name %s: %m", LODEV_BUS_NAME);
                goto fail;
        }
        r = sd_bus_attach_event(b->bus, m->event, SD_EVENT_PRIORITY_NORMAL);
        if (r < 0) {
                log_error_errno(r, "Failed to attach the bus to the event loop: %m");
                goto fail;
        }
        manager_set_observer(m, &observer, b);
        *ret = b;
        return 0;
fail:
        bus_free(b);
        return r;
}

Bus *bus_free(Bus *b) {
        if (!b)
                return NULL;
        provision_waiters_reply(b, NULL, "lodevd is stopping");
        sd_bus_slot_unref(b->slot);
        if (b->bus) {
                sd_bus_flush(b->bus);
                sd_bus_close_unref(b->bus);
        }
        for (size_t i = 0; i < b->n_clients; i++)
                free(b->clients[i].name);
        free(b->clients);
        free(b->users);
        for (size_t i = 0; i < KNOWN_NAMES_MAX; i++)
                free(b->known[i].name);
        for (size_t i = 0; i < b->n_hold_owners; i++)
                free(b->hold_owners[i].name);
        free(b->hold_owners);
        free(b);
        return NULL;
}
