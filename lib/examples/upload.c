/* SPDX-License-Identifier: MIT */
/* Example: liblodev in an sd-event loop. Uploads a file without ever blocking the loop,
 * which goes on serving the application's own sources (here a timer that reports once a
 * second) while lodevd copies the file into its spool and then uploads it.
 *
 *   lodev-example-upload FILE
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <systemd/sd-event.h>
#include <time.h>
#include <unistd.h>

#include <lodev.h>

typedef struct App {
        lodev *l;
        sd_event *event;
        sd_event_source *io, *timeout, *tick;
        char id[64]; /* empty until UploadFile answered */
        int result;
} App;

/* --- The glue: three sources, as sd_bus_attach_event() does it --- */

static int on_lodev(App *app) {
        int r = lodev_dispatch(app->l);

        return r < 0 ? sd_event_exit(app->event, r) : 0;
}

static int on_lodev_io(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        return on_lodev(userdata);
}

static int on_lodev_timeout(sd_event_source *s, uint64_t usec, void *userdata) {
        return on_lodev(userdata);
}

/* Before each wait: what liblodev waits for, and when it must run without events. */
static int on_lodev_prepare(sd_event_source *s, void *userdata) {
        App *app = userdata;
        uint64_t until;
        int events, r;

        events = lodev_get_events(app->l);
        if (events < 0)
                return events;
        r = sd_event_source_set_io_events(app->io, (uint32_t) events);
        if (r < 0)
                return r;
        r = lodev_get_timeout(app->l, &until);
        if (r < 0)
                return r;
        if (until == UINT64_MAX)
                return sd_event_source_set_enabled(app->timeout, SD_EVENT_OFF);
        r = sd_event_source_set_time(app->timeout, until);
        if (r < 0)
                return r;
        return sd_event_source_set_enabled(app->timeout, SD_EVENT_ONESHOT);
}

static int attach(App *app) {
        int r;

        r = sd_event_add_io(app->event, &app->io, lodev_get_fd(app->l), 0, on_lodev_io, app);
        if (r >= 0)
                r = sd_event_source_set_prepare(app->io, on_lodev_prepare);
        if (r >= 0)
                r = sd_event_add_time(app->event, &app->timeout, CLOCK_MONOTONIC, UINT64_MAX, 1,
                                      on_lodev_timeout, app);
        return r;
}

/* --- The application --- */

static int on_tick(sd_event_source *s, uint64_t usec, void *userdata) {
        App *app = userdata;

        fprintf(stderr, "%s\n", app->id[0] ? "uploading" : "lodevd is copying the file");
        return sd_event_source_set_time_relative(s, 1000000);
}

static void on_queued(lodev *l, int error, const char *id, void *userdata) {
        App *app = userdata;

        if (error < 0) {
                fprintf(stderr, "upload: %s\n", lodev_last_error(l) ?: lodev_strerror(error));
                app->result = 1;
                sd_event_exit(app->event, 0);
                return;
        }
        /* lodevd holds its own copy now: the file could be deleted. */
        snprintf(app->id, sizeof(app->id), "%s", id);
        printf("%s\n", id);
}

static void on_progress(lodev *l, const char *id, uint64_t done, uint64_t total,
                        void *userdata) {
        App *app = userdata;

        if (strcmp(id, app->id) == 0)
                fprintf(stderr, "%" PRIu64 " of %" PRIu64 " bytes\n", done, total);
}

static void on_finished(lodev *l, const char *id, int ok, const char *message, void *userdata) {
        App *app = userdata;

        if (strcmp(id, app->id) != 0)
                return;
        fprintf(stderr, "%s: %s\n", id, message);
        app->result = ok ? 0 : 1;
        sd_event_exit(app->event, 0);
}

int main(int argc, char *argv[]) {
        App app = { .result = 1 };
        const char *name;
        int fd = -1, r;

        if (argc != 2) {
                fprintf(stderr, "usage: lodev-example-upload FILE\n");
                return 2;
        }
        name = strrchr(argv[1], '/') ? strrchr(argv[1], '/') + 1 : argv[1];
        fd = open(argv[1], O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
                fprintf(stderr, "%s: %s\n", argv[1], strerror(errno));
                return 1;
        }
        r = lodev_open(&app.l);
        if (r >= 0)
                r = sd_event_default(&app.event);
        if (r >= 0)
                r = attach(&app);
        if (r >= 0)
                r = sd_event_add_time_relative(app.event, &app.tick, CLOCK_MONOTONIC, 1000000, 0,
                                               on_tick, &app);
        if (r >= 0)
                r = sd_event_source_set_enabled(app.tick, SD_EVENT_ON);
        /* Subscribed before the upload starts: no signal of the new transfer is missed. */
        if (r >= 0)
                r = lodev_add_transfer_progress_callback(app.l, NULL, on_progress, &app);
        if (r >= 0)
                r = lodev_add_transfer_finished_callback(app.l, NULL, on_finished, &app);
        /* The request holds its own copy of fd. */
        if (r >= 0)
                r = lodev_upload_file_async(app.l, NULL, fd, name, NULL, on_queued, &app);
        close(fd);
        if (r >= 0)
                r = sd_event_loop(app.event);
        if (r < 0) {
                fprintf(stderr, "%s\n", lodev_strerror(r));
                app.result = r == -EHOSTUNREACH ? 3 : 1;
        }
        sd_event_source_disable_unref(app.tick);
        sd_event_source_disable_unref(app.io);
        sd_event_source_disable_unref(app.timeout);
        sd_event_unref(app.event);
        app.l = lodev_close(app.l);
        return app.result;
}
