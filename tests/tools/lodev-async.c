/* SPDX-License-Identifier: MIT */
/* Drives liblodev's asynchronous calls from an sd-event loop, for the integration tests.
 *
 *   lodev-async timer FILE [--sync]
 *       Uploads FILE while a 10 ms timer of the same loop keeps ticking, through
 *       lodev_upload_file_async(), or with --sync through lodev_upload_file() called from
 *       the loop. Prints one JSON object: the transfer id, how long the call took, how
 *       many ticks came during it and the longest gap between two ticks (microseconds).
 *
 *   lodev-async drop FILE
 *       Every asynchronous call twice, with slots the tool owns: the first set is freed
 *       once sent, before lodevd could answer (the test holds lodevd with SIGSTOP until
 *       this prints "sent"), the second is kept. Then, with lodevd running, calls whose
 *       answers are already read (queued behind a synchronous call) when their slots are
 *       freed, and floating calls cut by lodev_close(), also from a callback. Prints one
 *       JSON object with the callbacks counted for each set. Run under ASan, it also
 *       shows nothing leaks or is used after it was freed.
 *
 * Exit status 0 when the run completed (the test judges the numbers), 1 on an error,
 * 2 on a usage error. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-event.h>
#include <time.h>
#include <unistd.h>

#include "lodev.h"

#define TICK_USEC 10000
#define WAIT_USEC (UINT64_C(120) * 1000000)

static uint64_t now_usec(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000 + (uint64_t) ts.tv_nsec / 1000;
}

/* --- liblodev in an sd-event loop: liblodev(3), EVENT LOOP INTEGRATION --- */

typedef struct Glue {
        lodev *l;
        sd_event_source *io, *timer;
} Glue;

static int glue_dispatch(Glue *g) {
        int r = lodev_dispatch(g->l);

        return r < 0 ? sd_event_exit(sd_event_source_get_event(g->io), r) : 0;
}

static int on_glue_io(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        return glue_dispatch(userdata);
}

static int on_glue_time(sd_event_source *s, uint64_t usec, void *userdata) {
        return glue_dispatch(userdata);
}

/* Before every wait: what lodev waits for, and when it must run even without events. */
static int on_glue_prepare(sd_event_source *s, void *userdata) {
        Glue *g = userdata;
        uint64_t until;
        int events, r;

        events = lodev_get_events(g->l);
        if (events < 0)
                return events;
        r = sd_event_source_set_io_events(g->io, (uint32_t) events);
        if (r < 0)
                return r;
        r = lodev_get_timeout(g->l, &until);
        if (r < 0)
                return r;
        if (until == UINT64_MAX)
                return sd_event_source_set_enabled(g->timer, SD_EVENT_OFF);
        r = sd_event_source_set_time(g->timer, until);
        if (r < 0)
                return r;
        return sd_event_source_set_enabled(g->timer, SD_EVENT_ONESHOT);
}

static int glue_attach(Glue *g, sd_event *e, lodev *l) {
        int r;

        g->l = l;
        r = sd_event_add_io(e, &g->io, lodev_get_fd(l), 0, on_glue_io, g);
        if (r >= 0)
                r = sd_event_source_set_prepare(g->io, on_glue_prepare);
        if (r >= 0)
                r = sd_event_add_time(e, &g->timer, CLOCK_MONOTONIC, UINT64_MAX, 1, on_glue_time,
                                      g);
        return r;
}

static void glue_detach(Glue *g) {
        g->io = sd_event_source_disable_unref(g->io);
        g->timer = sd_event_source_disable_unref(g->timer);
}

/* --- timer --- */

typedef struct Upload {
        sd_event *event;
        lodev *l;
        int fd;
        bool sync;
        char *id;
        int error;
        uint64_t last_tick, call_start, call_end, max_gap;
        unsigned ticks;
} Upload;

static int on_tick(sd_event_source *s, uint64_t usec, void *userdata) {
        Upload *u = userdata;
        uint64_t now = now_usec();

        /* Only the ticks while the call runs count. */
        if (u->call_start && !u->call_end) {
                if (u->last_tick && now - u->last_tick > u->max_gap)
                        u->max_gap = now - u->last_tick;
                u->ticks++;
        }
        u->last_tick = now;
        return sd_event_source_set_time(s, now + TICK_USEC);
}

static void upload_answered(Upload *u, int error, const char *id) {
        u->call_end = now_usec();
        /* A blocking call starves the timer until it returns: that gap counts too. */
        if (u->last_tick && u->call_end - u->last_tick > u->max_gap)
                u->max_gap = u->call_end - u->last_tick;
        u->error = error;
        u->id = id ? strdup(id) : NULL;
        (void) sd_event_exit(u->event, 0);
}

static void on_uploaded(lodev *l, int error, const char *id, void *userdata) {
        upload_answered(userdata, error, id);
}

static int on_start(sd_event_source *s, void *userdata) {
        Upload *u = userdata;
        char *id = NULL;
        int r;

        u->call_start = now_usec();
        u->last_tick = u->call_start;
        if (u->sync) {
                r = lodev_upload_file(u->l, u->fd, "async-timer.bin", NULL, &id);
                upload_answered(u, r < 0 ? r : 0, id);
                free(id);
                return 0;
        }
        r = lodev_upload_file_async(u->l, NULL, u->fd, "async-timer.bin", NULL, on_uploaded, u);
        if (r < 0)
                upload_answered(u, r, NULL);
        return 0;
}

static int run_timer(lodev *l, const char *path, bool sync) {
        sd_event_source *tick = NULL, *start = NULL;
        sd_event *e = NULL;
        Upload u = { .l = l, .sync = sync };
        Glue g = {};
        int r;

        u.fd = open(path, O_RDONLY | O_CLOEXEC);
        if (u.fd < 0) {
                fprintf(stderr, "%s: %s\n", path, strerror(errno));
                return 1;
        }
        r = sd_event_new(&e);
        if (r >= 0)
                r = glue_attach(&g, e, l);
        if (r >= 0)
                r = sd_event_add_time_relative(e, &tick, CLOCK_MONOTONIC, TICK_USEC, 1, on_tick,
                                               &u);
        if (r >= 0)
                r = sd_event_source_set_enabled(tick, SD_EVENT_ON);
        if (r >= 0)
                r = sd_event_add_defer(e, &start, on_start, &u);
        if (r >= 0) {
                u.event = e;
                r = sd_event_loop(e);
        }
        tick = sd_event_source_unref(tick);
        start = sd_event_source_unref(start);
        glue_detach(&g);
        e = sd_event_unref(e);
        close(u.fd);
        if (r < 0 || u.error < 0) {
                fprintf(stderr, "upload: %s (%s)\n", lodev_strerror(r < 0 ? r : u.error),
                        lodev_last_error(l) ? lodev_last_error(l) : "");
                free(u.id);
                return 1;
        }
        printf("{\"id\": \"%s\", \"call_usec\": %llu, \"ticks\": %u, \"max_gap_usec\": %llu}\n",
               u.id, (unsigned long long) (u.call_end - u.call_start), u.ticks,
               (unsigned long long) u.max_gap);
        free(u.id);
        return 0;
}

/* --- drop --- */

enum { CALL_STATUS, CALL_ONLINE, CALL_PROVISION, CALL_SUBMIT, CALL_UPLOAD, CALL_CHECK_JOBS, CALL_MAX };

static const char *const call_names[CALL_MAX] = {
        "get_status", "wait_online", "provision", "submit_observation", "upload_file", "check_jobs",
};

typedef struct Counts {
        unsigned called[CALL_MAX];
        unsigned failed[CALL_MAX];
} Counts;

typedef struct Call {
        Counts *counts;
        int which;
} Call;

static void count(Call *c, int error) {
        c->counts->called[c->which]++;
        if (error < 0) {
                c->counts->failed[c->which]++;
                fprintf(stderr, "%s: %s\n", call_names[c->which], lodev_strerror(error));
        }
}

static void on_reply(lodev *l, int error, const char *result, void *userdata) {
        count(userdata, error);
}

static void on_status(lodev *l, int error, const lodev_status *s, void *userdata) {
        count(userdata, error);
}

static const lodev_observation observation = {
        .code = "8867-4", .code_system = "http://loinc.org", .value = 60, .unit = "/min",
};

/* Starts call `which`; slot NULL: floating. */
static int start_call(lodev *l, int which, Call *c, int fd, lodev_slot **slot) {
        switch (which) {
        case CALL_STATUS:
                return lodev_get_status_async(l, slot, on_status, c);
        case CALL_ONLINE:
                return lodev_wait_online_async(l, slot, on_reply, c);
        case CALL_PROVISION:
                return lodev_provision_async(l, slot, 0, on_reply, c);
        case CALL_SUBMIT:
                return lodev_submit_observation_async(l, slot, &observation, on_reply, c);
        case CALL_UPLOAD:
                return lodev_upload_file_async(l, slot, fd, "async-drop.bin", NULL, on_reply, c);
        case CALL_CHECK_JOBS:
                return lodev_check_jobs_async(l, slot, on_reply, c);
        default:
                return -EINVAL;
        }
}

/* Dispatches until nothing waits to be written (done NULL), until *done reaches want, or
 * until the deadline: 0, -ETIMEDOUT, or the error of the connection. */
static int pump(lodev *l, const unsigned *done, unsigned want, uint64_t deadline) {
        for (;;) {
                struct pollfd p;
                uint64_t until, now;
                int r, events, ms;

                r = lodev_dispatch(l);
                if (r < 0)
                        return r;
                events = lodev_get_events(l);
                if (events < 0)
                        return events;
                if (done ? *done >= want : !(events & POLLOUT))
                        return 0;
                now = now_usec();
                if (now >= deadline)
                        return -ETIMEDOUT;
                r = lodev_get_timeout(l, &until);
                if (r < 0)
                        return r;
                if (until > deadline)
                        until = deadline;
                ms = until <= now ? 0 : (int) ((until - now + 999) / 1000);
                p = (struct pollfd) { .fd = lodev_get_fd(l), .events = (short) events };
                if (poll(&p, 1, ms) < 0 && errno != EINTR)
                        return -errno;
        }
}

/* Dispatches whatever comes for usec. */
static int settle(lodev *l, uint64_t usec) {
        static const unsigned never = 0;
        int r = pump(l, &never, 1, now_usec() + usec);

        return r == -ETIMEDOUT ? 0 : r;
}

static int start_set(lodev *l, Counts *counts, Call *calls, int n, int fd, lodev_slot **slots) {
        for (int i = 0; i < n; i++) {
                int r;

                calls[i] = (Call) { counts, i };
                r = start_call(l, i, &calls[i], fd, slots ? &slots[i] : NULL);
                if (r < 0) {
                        fprintf(stderr, "%s: %s\n", call_names[i], lodev_strerror(r));
                        return r;
                }
        }
        return 0;
}

static void print_counts(const char *name, const Counts *c) {
        printf("\"%s\": {", name);
        for (int i = 0; i < CALL_MAX; i++)
                printf("%s\"%s\": %u", i ? ", " : "", call_names[i], c->called[i]);
        printf("}, ");
}

static unsigned failures(const Counts *c) {
        unsigned n = 0;

        for (int i = 0; i < CALL_MAX; i++)
                n += c->failed[i];
        return n;
}

static void on_status_close(lodev *l, int error, const lodev_status *s, void *userdata) {
        bool *closed = userdata;

        *closed = true;
        (void) lodev_close(l);
}

/* A callback closes its handle while the calls sent after it still wait: none of them
 * calls back, and the handle is freed once the callback returned to lodev_dispatch(). */
static int close_from_callback(Counts *counts, Call *calls, int fd) {
        uint64_t deadline = now_usec() + WAIT_USEC;
        bool closed = false;
        lodev *l = NULL;
        int r;

        r = lodev_open(&l);
        if (r >= 0)
                r = lodev_get_status_async(l, NULL, on_status_close, &closed);
        if (r >= 0)
                r = start_set(l, counts, calls, CALL_MAX, fd, NULL);
        while (r >= 0 && !closed) {
                struct pollfd p = { .fd = lodev_get_fd(l), .events = (short) lodev_get_events(l) };

                if (now_usec() > deadline)
                        r = -ETIMEDOUT;
                else if (poll(&p, 1, 1000) < 0 && errno != EINTR)
                        r = -errno;
                else
                        r = lodev_dispatch(l); /* l is gone once closed is set */
        }
        if (r < 0 && !closed)
                l = lodev_close(l);
        return r;
}

/* The calls lodevd answers at once, from memory. */
#define N_QUICK (CALL_PROVISION + 1)

static int run_drop(lodev *l, const char *path) {
        static Counts dropped, kept, queued, closed, closed_in_callback;
        static Call c_dropped[CALL_MAX], c_kept[CALL_MAX], c_queued[CALL_MAX], c_closed[CALL_MAX],
                c_closed_in_callback[CALL_MAX];
        lodev_slot *s_dropped[CALL_MAX] = {}, *s_kept[CALL_MAX] = {}, *s_queued[N_QUICK] = {};
        lodev_status *st = NULL;
        uint64_t until = UINT64_MAX;
        int fd, r;

        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
                fprintf(stderr, "%s: %s\n", path, strerror(errno));
                return 1;
        }

        /* 1. lodevd is stopped: both sets go out, the first is freed unanswered. */
        r = start_set(l, &dropped, c_dropped, CALL_MAX, fd, s_dropped);
        if (r >= 0)
                r = start_set(l, &kept, c_kept, CALL_MAX, fd, s_kept);
        if (r >= 0)
                r = pump(l, NULL, 0, now_usec() + WAIT_USEC);
        if (r < 0) {
                fprintf(stderr, "send: %s\n", lodev_strerror(r));
                return 1;
        }
        for (int i = 0; i < CALL_MAX; i++)
                if ((s_dropped[i] = lodev_slot_free(s_dropped[i]))) {
                        fprintf(stderr, "lodev_slot_free() did not return NULL\n");
                        return 1;
                }
        if (lodev_pending_calls(l) != CALL_MAX) {
                fprintf(stderr, "pending calls: %u, expected %d\n", lodev_pending_calls(l),
                        CALL_MAX);
                return 1;
        }
        printf("sent\n");
        fflush(stdout);

        /* The test lets lodevd go on. lodevd reads its calls in order, so each kept call
         * is answered after its dropped twin was; a second more for stragglers. */
        for (int i = 0; r >= 0 && i < CALL_MAX; i++)
                r = pump(l, &kept.called[i], 1, now_usec() + WAIT_USEC);
        if (r >= 0)
                r = settle(l, 1000000);
        if (r < 0) {
                fprintf(stderr, "answers: %s\n", lodev_strerror(r));
                return 1;
        }
        for (int i = 0; i < CALL_MAX; i++)
                s_kept[i] = lodev_slot_free(s_kept[i]);

        /* 2. Answers already read but not dispatched: the synchronous call reads past the
         * answers to the calls before it and queues them, which makes the timeout 0. */
        r = start_set(l, &queued, c_queued, N_QUICK, fd, s_queued);
        if (r >= 0)
                r = lodev_get_status(l, &st);
        if (r >= 0)
                r = lodev_get_timeout(l, &until);
        st = lodev_status_free(st);
        for (int i = 0; i < N_QUICK; i++)
                s_queued[i] = lodev_slot_free(s_queued[i]);
        if (r >= 0)
                r = settle(l, 500000);
        if (r < 0) {
                fprintf(stderr, "queued: %s\n", lodev_strerror(r));
                return 1;
        }

        /* 3. Floating calls still waiting when the handle closes: no callback, no leak; the
         * same with the close in a callback of another connection. */
        r = start_set(l, &closed, c_closed, CALL_MAX, fd, NULL);
        if (r >= 0)
                r = close_from_callback(&closed_in_callback, c_closed_in_callback, fd);
        close(fd);
        if ((l = lodev_close(l)) || r < 0) {
                fprintf(stderr, "%s\n", r < 0 ? "closed" : "lodev_close() did not return NULL");
                return 1;
        }

        printf("{");
        print_counts("dropped", &dropped);
        print_counts("kept", &kept);
        print_counts("queued", &queued);
        print_counts("closed", &closed);
        print_counts("closed_in_callback", &closed_in_callback);
        printf("\"queued_ready\": %s, \"failed\": %u}\n", until == 0 ? "true" : "false",
               failures(&kept));
        return 0;
}

int main(int argc, char *argv[]) {
        lodev *l = NULL;
        int r;

        if (argc < 3 || (strcmp(argv[1], "timer") != 0 && strcmp(argv[1], "drop") != 0) ||
            (argc == 4 && strcmp(argv[3], "--sync") != 0) || argc > 4) {
                fprintf(stderr, "usage: lodev-async timer FILE [--sync] | drop FILE\n");
                return 2;
        }
        r = lodev_open(&l);
        if (r < 0) {
                fprintf(stderr, "cannot connect: %s\n", lodev_strerror(r));
                return 1;
        }
        if (strcmp(argv[1], "timer") == 0) {
                r = run_timer(l, argv[2], argc == 4);
                lodev_close(l);
                return r;
        }
        /* run_drop closes l itself: its last check is a close with calls in flight. */
        return run_drop(l, argv[2]);
}
