/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <math.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "lodev.h"

/* Exit codes, lodevctl(1). */
enum {
        EXIT_OK = 0,
        EXIT_FAIL = 1,
        EXIT_USAGE = 2,
        EXIT_UNREACHABLE = 3,
};

typedef enum JsonMode {
        JSON_OFF,
        JSON_SHORT,
        JSON_PRETTY,
} JsonMode;

/* Options, wherever they stand on the line; each command reads its own. */
static JsonMode arg_json = JSON_OFF;
static bool arg_legend = true;
static bool arg_force, arg_check, arg_wait;
static lodev_observation arg_observation;
static const char *arg_value;
static const char *arg_name, *arg_content_type;
static const char *arg_timeout;
static const char *arg_who = "lodevctl", *arg_why = "a command is running";

static void help(void) {
        printf("Usage: lodevctl [OPTIONS] COMMAND [ARGUMENTS]\n\n"
               "Control lodevd, the LifeOmic device agent. Options may stand anywhere.\n\n"
               "Commands:\n"
               "  status                     show state, thing name, queues, job, last error\n"
               "  provision [--force]        provision now and print the thing name\n"
               "  observe --code C --code-system S [--code-display D] --value V --unit U\n"
               "          [--patient-id P]   queue an observation and print its id\n"
               "  upload FILE [--name N] [--content-type T] [--wait]\n"
               "                             queue a file for upload and print its id\n"
               "  transfers                  list the file transfers not finished yet\n"
               "  cancel ID                  stop a transfer and free its space\n"
               "  monitor                    print lodevd's signals as they come\n"
               "  wait-online [--timeout S]  wait until lodevd is online\n"
               "  jobs [--check]             show the current firmware job (--check: ask the\n"
               "                             platform for pending jobs first)\n"
               "  inhibit-reboot [--who W] [--why Y] COMMAND [ARG...]\n"
               "                             hold off a firmware reboot while COMMAND runs\n\n"
               "Options:\n"
               "  -j --json[=MODE]  print JSON: pretty (the default of --json), short (one\n"
               "                    line) or off (text)\n"
               "     --no-legend    tables without header and footer\n"
               "     --no-pager     accepted for scripts; lodevctl never pages\n"
               "  -h --help         show this help\n"
               "     --version      show the version\n\n"
               "Exit status: 0 success, 1 failure, 2 usage error, 3 lodevd not reachable.\n");
}

/* Reports a failed call and picks the exit code. */
static int fail(lodev *l, const char *what, int r) {
        const char *detail = l ? lodev_last_error(l) : NULL;

        /* dbus-daemon's text for a policy refusal is a wall of rule details; lodevd's
         * own refusals say why in a line. */
        if ((r == -EACCES || r == -EPERM) && detail && strncmp(detail, "Rejected", 8) == 0)
                detail = NULL;
        if (detail)
                fprintf(stderr, "lodevctl: %s: %s\n", what, detail);
        else
                fprintf(stderr, "lodevctl: %s: %s\n", what, lodev_strerror(r));
        return EXIT_FAIL;
}

static int open_daemon(lodev **ret) {
        int r = lodev_open(ret);

        if (r < 0) {
                fprintf(stderr, "lodevctl: cannot connect to the system bus: %s\n",
                        lodev_strerror(r));
                return EXIT_UNREACHABLE;
        }
        return EXIT_OK;
}

/* A call that failed because nobody owns the name, or the bus is gone. */
static int call_failed(lodev *l, const char *what, int r) {
        if (r == -EHOSTUNREACH || r == -ENXIO || r == -ECONNREFUSED || r == -ECONNRESET) {
                fprintf(stderr, "lodevctl: lodevd is not running or not reachable on the system "
                                "bus (%s)\n",
                        lodev_last_error(l) ? lodev_last_error(l) : lodev_strerror(r));
                return EXIT_UNREACHABLE;
        }
        return fail(l, what, r);
}

/* One JSON document in the chosen mode; takes o. */
static void print_json(json_object *o) {
        int flags = JSON_C_TO_STRING_NOSLASHESCAPE |
                    (arg_json == JSON_PRETTY ? JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED
                                             : JSON_C_TO_STRING_PLAIN);

        printf("%s\n", json_object_to_json_string_ext(o, flags));
        json_object_put(o);
}

/* A command's one result: {"key": value} with --json, the value alone otherwise. */
static void print_result(const char *key, const char *value) {
        if (arg_json) {
                json_object *o = json_object_new_object();

                json_object_object_add(o, key, json_object_new_string(value));
                print_json(o);
        } else
                printf("%s\n", value);
}

static json_object *inhibitors_json(const lodev_inhibitor *inh, size_t n) {
        json_object *a = json_object_new_array();

        for (size_t i = 0; i < n; i++) {
                json_object *o = json_object_new_object();
                json_object_object_add(o, "who", json_object_new_string(inh[i].who));
                json_object_object_add(o, "why", json_object_new_string(inh[i].why));
                json_object_object_add(o, "owner", json_object_new_string(inh[i].owner));
                json_object_object_add(o, "since_usec", json_object_new_int64(
                                                                (int64_t) inh[i].since_usec));
                json_object_array_add(a, o);
        }
        return a;
}

static void print_inhibitors(const lodev_inhibitor *inh, size_t n) {
        for (size_t i = 0; i < n; i++) {
                time_t t = (time_t) (inh[i].since_usec / 1000000);
                char when[32] = "";
                struct tm tm;

                if (localtime_r(&t, &tm))
                        strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", &tm);
                printf("%s%s: %s (%s, since %s)\n", i == 0 ? "Reboot held by: " : "                ",
                       inh[i].who, inh[i].why, inh[i].owner, when);
        }
}

static int cmd_status(lodev *l, int argc, char *argv[]) {
        lodev_inhibitor *inh = NULL;
        lodev_status *s = NULL;
        size_t n_inh = 0;
        int r;

        r = lodev_get_status(l, &s);
        if (r < 0)
                return call_failed(l, "status", r);
        /* An older lodevd has no inhibitors: none then. */
        if (lodev_get_reboot_inhibitors(l, &inh, &n_inh) < 0) {
                inh = NULL;
                n_inh = 0;
        }

        if (arg_json) {
                json_object *o = json_object_new_object(), *job = json_object_new_object();
                json_object_object_add(o, "state", json_object_new_string(s->state));
                json_object_object_add(o, "thing_name", json_object_new_string(s->thing_name));
                json_object_object_add(o, "endpoint", json_object_new_string(s->endpoint));
                json_object_object_add(o, "queued_observations",
                                       json_object_new_int64(s->queued_observations));
                json_object_object_add(o, "queued_transfers",
                                       json_object_new_int64(s->queued_transfers));
                json_object_object_add(job, "id", json_object_new_string(s->job_id));
                json_object_object_add(job, "status", json_object_new_string(s->job_status));
                json_object_object_add(job, "percent", json_object_new_int64(s->job_percent));
                json_object_object_add(o, "current_job", job);
                json_object_object_add(o, "last_error", json_object_new_string(s->last_error));
                json_object_object_add(o, "reboot_inhibitors", inhibitors_json(inh, n_inh));
                print_json(o);
        } else {
                printf("       State: %s\n", s->state);
                printf("  Thing name: %s\n", *s->thing_name ? s->thing_name : "-");
                printf("    Endpoint: %s\n", s->endpoint);
                printf("Observations: %u queued\n", s->queued_observations);
                printf("   Transfers: %u queued\n", s->queued_transfers);
                if (!*s->job_id)
                        printf("         Job: -\n");
                else if (s->job_percent > 0)
                        printf("         Job: %s %s %u%%\n", s->job_id, s->job_status,
                               s->job_percent);
                else
                        printf("         Job: %s %s\n", s->job_id, s->job_status);
                printf("  Last error: %s\n", *s->last_error ? s->last_error : "-");
                print_inhibitors(inh, n_inh);
        }
        inh = lodev_inhibitors_free(inh, n_inh);
        s = lodev_status_free(s);
        return EXIT_OK;
}

static int cmd_provision(lodev *l, int argc, char *argv[]) {
        char *thing = NULL;
        int r;

        r = lodev_provision(l, arg_force, &thing);
        if (r < 0)
                return call_failed(l, "provision", r);
        print_result("thing_name", thing);
        free(thing);
        return EXIT_OK;
}

static int parse_double(const char *s, double *ret) {
        char *end;
        double v;

        errno = 0;
        v = strtod(s, &end);
        if (errno != 0 || end == s || *end != '\0' || !isfinite(v))
                return -EINVAL;
        *ret = v;
        return 0;
}

/* Before anything is sent: the options observe needs, and a number for --value. */
static int check_observe(void) {
        if (!arg_observation.code || !arg_observation.code_system || !arg_value ||
            !arg_observation.unit) {
                fprintf(stderr, "lodevctl: observe: --code, --code-system, --value and --unit "
                                "are required\n");
                return EXIT_USAGE;
        }
        if (parse_double(arg_value, &arg_observation.value) < 0) {
                fprintf(stderr, "lodevctl: observe: --value: '%s' is not a finite number\n",
                        arg_value);
                return EXIT_USAGE;
        }
        return EXIT_OK;
}

static int cmd_observe(lodev *l, int argc, char *argv[]) {
        char *id = NULL;
        int r;

        r = lodev_submit_observation(l, &arg_observation, &id);
        if (r < 0)
                return call_failed(l, "observe", r);
        print_result("id", id);
        free(id);
        return EXIT_OK;
}

static uint64_t timeout_usec = UINT64_MAX;

static int check_wait_online(void) {
        double t;

        if (!arg_timeout)
                return EXIT_OK;
        if (parse_double(arg_timeout, &t) < 0 || t < 0) {
                fprintf(stderr, "lodevctl: wait-online: --timeout: '%s' is not a number of "
                                "seconds\n",
                        arg_timeout);
                return EXIT_USAGE;
        }
        timeout_usec = (uint64_t) (t * 1e6);
        return EXIT_OK;
}

static int cmd_wait_online(lodev *l, int argc, char *argv[]) {
        int r;

        r = lodev_wait_online(l, timeout_usec);
        if (r == -ETIMEDOUT) {
                fprintf(stderr, "lodevctl: wait-online: not online after %s s\n", arg_timeout);
                return EXIT_FAIL;
        }
        if (r < 0)
                return call_failed(l, "wait-online", r);
        return EXIT_OK;
}

/* --- File transfers --- */

static volatile sig_atomic_t arg_stop;

static void on_stop_signal(int sig) {
        arg_stop = 1;
}

/* SIGINT and SIGTERM end the waiting loops; without SA_RESTART the wait returns EINTR. */
static void catch_stop_signals(void) {
        struct sigaction sa = { .sa_handler = on_stop_signal };

        sigemptyset(&sa.sa_mask);
        (void) sigaction(SIGINT, &sa, NULL);
        (void) sigaction(SIGTERM, &sa, NULL);
}

/* Dispatches until *done or SIGINT/SIGTERM; 0, or the error that ended it. */
static int dispatch_until(lodev *l, const bool *done) {
        int r = 0;

        catch_stop_signals();
        while (!*done && !arg_stop) {
                r = lodev_dispatch(l);
                if (r >= 0 && !*done)
                        r = lodev_wait(l, 1000000);
                if (r < 0 && r != -EINTR)
                        return r;
        }
        return 0;
}

static uint64_t now_usec(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000 + (uint64_t) ts.tv_nsec / 1000;
}

static void format_bytes(uint64_t n, char *buf, size_t size) {
        static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB" };
        double v = (double) n;
        size_t u = 0;

        while (v >= 1024 && u + 1 < sizeof(units) / sizeof(units[0])) {
                v /= 1024;
                u++;
        }
        if (u == 0)
                snprintf(buf, size, "%" PRIu64 " B", n);
        else
                snprintf(buf, size, "%.1f %s", v, units[u]);
}

typedef struct UploadWait {
        const char *id; /* NULL until UploadFile answered */
        bool finished, ok, tty;
        char *message;
        uint64_t start, last_done;
} UploadWait;

static void upload_progress(lodev *l, const char *id, uint64_t done, uint64_t total,
                            void *userdata) {
        UploadWait *w = userdata;
        char d[32], t[32], rate[32];
        double elapsed, bps;

        if (!w->id || strcmp(id, w->id) != 0)
                return;
        elapsed = (double) (now_usec() - w->start) / 1e6;
        bps = elapsed > 0 ? (double) done / elapsed : 0;
        format_bytes(done, d, sizeof(d));
        format_bytes(total, t, sizeof(t));
        format_bytes((uint64_t) bps, rate, sizeof(rate));
        w->last_done = done;
        if (w->tty) {
                unsigned width = 30, fill = total ? (unsigned) (done * width / total) : width;
                char bar[31];
                double eta = bps > 0 ? (double) (total - done) / bps : 0;

                memset(bar, '#', fill);
                memset(bar + fill, '.', width - fill);
                bar[width] = '\0';
                fprintf(stderr, "\r[%s] %3u%% %s of %s, %s/s, ETA %.0f s  ", bar,
                        total ? (unsigned) (done * 100 / total) : 100, d, t, rate, eta);
        } else
                fprintf(stderr, "%s: %" PRIu64 " of %" PRIu64 " bytes (%s/s)\n", id, done, total,
                        rate);
}

static void upload_finished(lodev *l, const char *id, int ok, const char *message,
                            void *userdata) {
        UploadWait *w = userdata;

        if (!w->id || strcmp(id, w->id) != 0)
                return;
        w->finished = true;
        w->ok = ok;
        free(w->message);
        w->message = strdup(message ? message : "");
}

static int cmd_upload(lodev *l, int argc, char *argv[]) {
        const char *name = arg_name, *path = argv[1];
        UploadWait w = {};
        char *id = NULL;
        int fd, r;

        if (!name) {
                name = strrchr(path, '/');
                name = name ? name + 1 : path;
        }
        /* Opened with the caller's rights: lodevd reads only what it is handed. */
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0) {
                fprintf(stderr, "lodevctl: upload: %s: %s\n", path, strerror(errno));
                return EXIT_FAIL;
        }
        if (arg_wait) {
                /* Subscribed before the call: no signal of the new transfer is missed, and
                 * those that come while UploadFile runs are dispatched after it answered. */
                w.tty = isatty(STDERR_FILENO) && !arg_json;
                r = lodev_add_transfer_progress_callback(l, NULL, upload_progress, &w);
                if (r >= 0)
                        r = lodev_add_transfer_finished_callback(l, NULL, upload_finished, &w);
                if (r < 0) {
                        close(fd);
                        return call_failed(l, "upload", r);
                }
        }
        r = lodev_upload_file(l, fd, name, arg_content_type, &id);
        close(fd);
        if (r < 0)
                return call_failed(l, "upload", r);
        if (!arg_wait) {
                print_result("id", id);
                free(id);
                return EXIT_OK;
        }
        if (!arg_json) {
                printf("%s\n", id);
                fflush(stdout);
        }
        w.id = id;
        w.start = now_usec();
        r = dispatch_until(l, &w.finished);
        if (r < 0) {
                free(id);
                return call_failed(l, "upload", r);
        }
        if (w.tty)
                fputc('\n', stderr);
        if (arg_json) {
                json_object *j = json_object_new_object();
                json_object_object_add(j, "id", json_object_new_string(id));
                json_object_object_add(j, "finished", json_object_new_boolean(w.finished));
                json_object_object_add(j, "ok", json_object_new_boolean(w.ok));
                json_object_object_add(j, "message",
                                       json_object_new_string(w.message ? w.message : ""));
                print_json(j);
        }
        if (!w.finished)
                fprintf(stderr, "lodevctl: upload: stopped waiting; transfer %s goes on\n", id);
        else if (!w.ok)
                fprintf(stderr, "lodevctl: upload: transfer %s failed: %s\n", id, w.message);
        else if (!arg_json)
                fprintf(stderr, "%s: %s\n", id, w.message);
        r = w.finished && w.ok ? EXIT_OK : EXIT_FAIL;
        free(w.message);
        free(id);
        return r;
}

static int cmd_transfers(lodev *l, int argc, char *argv[]) {
        lodev_transfer *t = NULL;
        size_t n = 0;
        int r;

        r = lodev_list_transfers(l, &t, &n);
        if (r < 0)
                return call_failed(l, "transfers", r);
        if (arg_json) {
                json_object *a = json_object_new_array();

                for (size_t i = 0; i < n; i++) {
                        json_object *o = json_object_new_object();
                        json_object_object_add(o, "id", json_object_new_string(t[i].id));
                        json_object_object_add(o, "file_name",
                                               json_object_new_string(t[i].file_name));
                        json_object_object_add(o, "state", json_object_new_string(t[i].state));
                        json_object_object_add(o, "done", json_object_new_int64((int64_t) t[i].done));
                        json_object_object_add(o, "total",
                                               json_object_new_int64((int64_t) t[i].total));
                        json_object_array_add(a, o);
                }
                print_json(a);
        } else if (n == 0) {
                if (arg_legend)
                        printf("No transfers.\n");
        } else {
                if (arg_legend)
                        printf("%-36s  %-9s  %10s  %10s  %s\n", "ID", "STATE", "DONE", "SIZE",
                               "NAME");
                for (size_t i = 0; i < n; i++) {
                        char d[32], s[32];

                        format_bytes(t[i].done, d, sizeof(d));
                        format_bytes(t[i].total, s, sizeof(s));
                        printf("%-36s  %-9s  %10s  %10s  %s\n", t[i].id, t[i].state, d, s,
                               t[i].file_name);
                }
                if (arg_legend)
                        printf("\n%zu transfer%s listed.\n", n, n == 1 ? "" : "s");
        }
        t = lodev_transfers_free(t, n);
        return EXIT_OK;
}

static int cmd_cancel(lodev *l, int argc, char *argv[]) {
        int r;

        r = lodev_cancel_transfer(l, argv[1]);
        if (r < 0)
                return call_failed(l, "cancel", r);
        return EXIT_OK;
}

static void monitor_event(lodev *l, const lodev_event *ev, void *userdata) {
        if (arg_json) {
                json_object *o = json_object_new_object();

                json_object_object_add(o, "signal", json_object_new_string(ev->name));
                if (ev->id)
                        json_object_object_add(o, "id", json_object_new_string(ev->id));
                if (strcmp(ev->name, "TransferProgress") == 0) {
                        json_object_object_add(o, "done", json_object_new_int64((int64_t) ev->done));
                        json_object_object_add(o, "total",
                                               json_object_new_int64((int64_t) ev->total));
                } else if (strcmp(ev->name, "TransferFinished") == 0)
                        json_object_object_add(o, "ok", json_object_new_boolean(ev->ok));
                else if (strcmp(ev->name, "JobUpdated") == 0) {
                        json_object_object_add(o, "status", json_object_new_string(ev->status));
                        json_object_object_add(o, "percent", json_object_new_int64(ev->percent));
                }
                if (ev->message)
                        json_object_object_add(o, "message", json_object_new_string(ev->message));
                if (ev->property) {
                        json_object_object_add(o, "property", json_object_new_string(ev->property));
                        json_object_object_add(o, "value", ev->value ? json_object_new_string(ev->value)
                                                                     : NULL);
                }
                /* One object a line in every mode: a stream that readers split on newlines. */
                printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN |
                                                                         JSON_C_TO_STRING_NOSLASHESCAPE));
                json_object_put(o);
        } else if (strcmp(ev->name, "TransferProgress") == 0)
                printf("%s %s %" PRIu64 "/%" PRIu64 "\n", ev->name, ev->id, ev->done, ev->total);
        else if (strcmp(ev->name, "TransferFinished") == 0)
                printf("%s %s %s %s\n", ev->name, ev->id, ev->ok ? "ok" : "failed",
                       ev->message ? ev->message : "");
        else if (strcmp(ev->name, "JobUpdated") == 0)
                printf("%s %s %s %u%% %s\n", ev->name, ev->id, ev->status, ev->percent,
                       ev->message ? ev->message : "");
        else if (ev->property)
                printf("%s %s=%s\n", ev->name, ev->property, ev->value ? ev->value : "(invalidated)");
        else
                printf("%s %s\n", ev->name, ev->id ? ev->id : "");
        fflush(stdout);
}

static int cmd_monitor(lodev *l, int argc, char *argv[]) {
        bool never = false;
        int r;

        r = lodev_add_event_callback(l, NULL, monitor_event, NULL);
        if (r >= 0)
                r = dispatch_until(l, &never);
        if (r < 0)
                return call_failed(l, "monitor", r);
        return EXIT_OK;
}

static int cmd_jobs(lodev *l, int argc, char *argv[]) {
        lodev_inhibitor *inh = NULL;
        lodev_status *s = NULL;
        size_t n_inh = 0;
        int r;

        if (arg_check) {
                r = lodev_check_jobs(l);
                if (r < 0)
                        return call_failed(l, "jobs --check", r);
        }
        r = lodev_get_status(l, &s);
        if (r < 0)
                return call_failed(l, "jobs", r);
        if (lodev_get_reboot_inhibitors(l, &inh, &n_inh) < 0) {
                inh = NULL;
                n_inh = 0;
        }
        if (arg_json) {
                json_object *o = json_object_new_object();
                json_object_object_add(o, "id", json_object_new_string(s->job_id));
                json_object_object_add(o, "status", json_object_new_string(s->job_status));
                json_object_object_add(o, "percent", json_object_new_int64(s->job_percent));
                json_object_object_add(o, "reboot_inhibitors", inhibitors_json(inh, n_inh));
                print_json(o);
        } else {
                /* A table of the one current job: the id first, for scripts (and the shell
                 * completion) that read it with --no-legend. */
                int width = *s->job_id && strlen(s->job_id) > 3 ? (int) strlen(s->job_id) : 3;
                char percent[16] = "-";

                if (s->job_percent > 0)
                        snprintf(percent, sizeof(percent), "%u%%", s->job_percent);
                if (arg_legend && *s->job_id)
                        printf("%-*s  %-15s  %s\n", width, "JOB", "STATUS", "PROGRESS");
                if (*s->job_id)
                        printf("%-*s  %-15s  %s\n", width, s->job_id, s->job_status, percent);
                else if (arg_legend)
                        printf("No firmware job.\n");
                if (arg_legend) {
                        if (n_inh > 0)
                                printf("\n");
                        print_inhibitors(inh, n_inh);
                }
        }
        inh = lodev_inhibitors_free(inh, n_inh);
        s = lodev_status_free(s);
        return EXIT_OK;
}

/* As systemd-inhibit: the hold lasts while COMMAND runs; the command does not inherit the
 * descriptor, so it cannot outlive lodevctl's hold by accident. */
static int cmd_inhibit_reboot(lodev *l, int argc, char *argv[]) {
        int r, fd = -1, status;
        pid_t pid;

        r = lodev_inhibit_reboot(l, arg_who, arg_why, &fd);
        if (r < 0)
                return call_failed(l, "inhibit-reboot", r);
        pid = fork();
        if (pid < 0) {
                fprintf(stderr, "lodevctl: inhibit-reboot: fork: %s\n", strerror(errno));
                close(fd);
                return EXIT_FAIL;
        }
        if (pid == 0) {
                execvp(argv[1], argv + 1);
                fprintf(stderr, "lodevctl: inhibit-reboot: %s: %s\n", argv[1], strerror(errno));
                _exit(127);
        }
        while (waitpid(pid, &status, 0) < 0)
                if (errno != EINTR) {
                        status = 1 << 8;
                        break;
                }
        close(fd);
        return WIFEXITED(status) ? WEXITSTATUS(status) : EXIT_FAIL;
}

/* --- The command line --- */

enum {
        ARG_VERSION = 0x100,
        ARG_NO_LEGEND,
        ARG_NO_PAGER,
        ARG_CODE,
        ARG_CODE_SYSTEM,
        ARG_CODE_DISPLAY,
        ARG_VALUE,
        ARG_UNIT,
        ARG_PATIENT_ID,
        ARG_NAME,
        ARG_CONTENT_TYPE,
        ARG_WAIT,
        ARG_WHO,
        ARG_WHY,
};

static const struct option options[] = {
        { "json", optional_argument, NULL, 'j' },
        { "no-legend", no_argument, NULL, ARG_NO_LEGEND },
        { "no-pager", no_argument, NULL, ARG_NO_PAGER },
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, ARG_VERSION },
        { "force", no_argument, NULL, 'f' },
        { "code", required_argument, NULL, ARG_CODE },
        { "code-system", required_argument, NULL, ARG_CODE_SYSTEM },
        { "code-display", required_argument, NULL, ARG_CODE_DISPLAY },
        { "value", required_argument, NULL, ARG_VALUE },
        { "unit", required_argument, NULL, ARG_UNIT },
        { "patient-id", required_argument, NULL, ARG_PATIENT_ID },
        { "name", required_argument, NULL, ARG_NAME },
        { "content-type", required_argument, NULL, ARG_CONTENT_TYPE },
        { "wait", no_argument, NULL, ARG_WAIT },
        { "timeout", required_argument, NULL, 't' },
        { "check", no_argument, NULL, 'c' },
        { "who", required_argument, NULL, ARG_WHO },
        { "why", required_argument, NULL, ARG_WHY },
        {},
};

/* Options every command takes. */
static const int global_options[] = { 'j', ARG_NO_LEGEND, ARG_NO_PAGER, 'h', ARG_VERSION, 0 };

static const struct command {
        const char *name;
        int (*run)(lodev *l, int argc, char *argv[]);
        int (*check)(void); /* usage checks of its options, before lodevd is asked */
        int min_args, max_args; /* after the command's name; -1: no limit */
        const char *args;       /* what the arguments are, for the error */
        int options[7];         /* its own options, 0-terminated */
} commands[] = {
        { "status", cmd_status, NULL, 0, 0, NULL, {} },
        { "provision", cmd_provision, NULL, 0, 0, NULL, { 'f' } },
        { "observe", cmd_observe, check_observe, 0, 0, NULL,
          { ARG_CODE, ARG_CODE_SYSTEM, ARG_CODE_DISPLAY, ARG_VALUE, ARG_UNIT, ARG_PATIENT_ID } },
        { "wait-online", cmd_wait_online, check_wait_online, 0, 0, NULL, { 't' } },
        { "jobs", cmd_jobs, NULL, 0, 0, NULL, { 'c' } },
        { "inhibit-reboot", cmd_inhibit_reboot, NULL, 1, -1, "COMMAND", { ARG_WHO, ARG_WHY } },
        { "upload", cmd_upload, NULL, 1, 1, "exactly one FILE",
          { ARG_NAME, ARG_CONTENT_TYPE, ARG_WAIT } },
        { "transfers", cmd_transfers, NULL, 0, 0, NULL, {} },
        { "cancel", cmd_cancel, NULL, 1, 1, "exactly one transfer ID", {} },
        { "monitor", cmd_monitor, NULL, 0, 0, NULL, {} },
};

static bool option_in(int code, const int *list) {
        for (; *list; list++)
                if (*list == code)
                        return true;
        return false;
}

static const char *option_name(int code) {
        for (const struct option *o = options; o->name; o++)
                if (o->val == code)
                        return o->name;
        return "?";
}

static int parse_json_mode(const char *mode) {
        if (!mode || strcmp(mode, "pretty") == 0)
                arg_json = JSON_PRETTY;
        else if (strcmp(mode, "short") == 0)
                arg_json = JSON_SHORT;
        else if (strcmp(mode, "off") == 0)
                arg_json = JSON_OFF;
        else if (strcmp(mode, "help") == 0) {
                printf("pretty\nshort\noff\n");
                return 0;
        } else {
                fprintf(stderr, "lodevctl: --json: unknown mode '%s' (pretty, short or off)\n",
                        mode);
                return -EINVAL;
        }
        return 1;
}

typedef struct Line {
        char **args; /* the command's name and its arguments, in order */
        int n_args;
        int seen[sizeof(options) / sizeof(options[0])]; /* option codes given, in order */
        int n_seen;
        bool help, version, listed; /* listed: --json=help printed the modes */
} Line;

/* Reads every option wherever it stands (as systemctl does), and the arguments in their
 * order. What follows inhibit-reboot's COMMAND is COMMAND's own and left alone.
 * EXIT_OK, or EXIT_USAGE after saying what is wrong. */
static int parse_line(int argc, char *argv[], Line *line) {
        int c;

        /* "-": arguments come back in order as option 1, so the end of ours can be seen. */
        optind = 0;
        while ((c = getopt_long(argc, argv, "-jhfct:", options, NULL)) >= 0) {
                bool known = false;

                switch (c) {
                case 1:
                        line->args[line->n_args++] = optarg;
                        if (line->n_args == 2 && strcmp(line->args[0], "inhibit-reboot") == 0)
                                while (optind < argc)
                                        line->args[line->n_args++] = argv[optind++];
                        continue;
                case 'j': {
                        int r = parse_json_mode(optarg);

                        if (r < 0)
                                return EXIT_USAGE;
                        if (r == 0)
                                line->listed = true;
                        break;
                }
                case 'h':
                        line->help = true;
                        break;
                case ARG_VERSION:
                        line->version = true;
                        break;
                case ARG_NO_LEGEND:
                        arg_legend = false;
                        break;
                case ARG_NO_PAGER:
                        break;
                case 'f':
                        arg_force = true;
                        break;
                case 'c':
                        arg_check = true;
                        break;
                case 't':
                        arg_timeout = optarg;
                        break;
                case ARG_CODE:
                        arg_observation.code = optarg;
                        break;
                case ARG_CODE_SYSTEM:
                        arg_observation.code_system = optarg;
                        break;
                case ARG_CODE_DISPLAY:
                        arg_observation.code_display = optarg;
                        break;
                case ARG_VALUE:
                        arg_value = optarg;
                        break;
                case ARG_UNIT:
                        arg_observation.unit = optarg;
                        break;
                case ARG_PATIENT_ID:
                        arg_observation.patient_id = optarg;
                        break;
                case ARG_NAME:
                        arg_name = optarg;
                        break;
                case ARG_CONTENT_TYPE:
                        arg_content_type = optarg;
                        break;
                case ARG_WAIT:
                        arg_wait = true;
                        break;
                case ARG_WHO:
                        arg_who = optarg;
                        break;
                case ARG_WHY:
                        arg_why = optarg;
                        break;
                default:
                        return EXIT_USAGE; /* getopt said what */
                }
                for (int i = 0; i < line->n_seen; i++)
                        known = known || line->seen[i] == c;
                if (!known)
                        line->seen[line->n_seen++] = c;
        }
        /* After "--": arguments only. */
        while (optind < argc)
                line->args[line->n_args++] = argv[optind++];
        return EXIT_OK;
}

/* The command of the line with its options and arguments checked; NULL after saying why. */
static const struct command *line_command(const Line *line) {
        const struct command *cmd = NULL;
        int n;

        if (line->n_args == 0) {
                fprintf(stderr, "lodevctl: missing command (see lodevctl --help)\n");
                return NULL;
        }
        for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
                if (strcmp(line->args[0], commands[i].name) == 0)
                        cmd = &commands[i];
        if (!cmd) {
                fprintf(stderr, "lodevctl: unknown command '%s' (see lodevctl --help)\n",
                        line->args[0]);
                return NULL;
        }
        for (int i = 0; i < line->n_seen; i++)
                if (!option_in(line->seen[i], global_options) &&
                    !option_in(line->seen[i], cmd->options)) {
                        fprintf(stderr, "lodevctl: %s: --%s does not apply to this command\n",
                                cmd->name, option_name(line->seen[i]));
                        return NULL;
                }
        n = line->n_args - 1;
        if (cmd->max_args >= 0 && n > cmd->max_args) {
                fprintf(stderr, "lodevctl: %s: unexpected argument '%s'\n", cmd->name,
                        line->args[1 + cmd->max_args]);
                return NULL;
        }
        if (n < cmd->min_args) {
                fprintf(stderr, "lodevctl: %s: %s is required\n", cmd->name, cmd->args);
                return NULL;
        }
        if (cmd->check && cmd->check() != EXIT_OK)
                return NULL;
        return cmd;
}

int main(int argc, char *argv[]) {
        const struct command *cmd;
        Line line = {};
        lodev *l = NULL;
        int r;

        line.args = calloc((size_t) argc + 1, sizeof(char *));
        if (!line.args) {
                fprintf(stderr, "lodevctl: out of memory\n");
                return EXIT_FAIL;
        }
        r = parse_line(argc, argv, &line);
        if (r == EXIT_OK && line.help)
                help();
        else if (r == EXIT_OK && line.version)
                printf("lodevctl %s\n", LODEV_VERSION);
        if (r != EXIT_OK || line.help || line.version || line.listed) {
                free(line.args);
                return r;
        }
        cmd = line_command(&line);
        if (!cmd) {
                free(line.args);
                return EXIT_USAGE;
        }
        r = open_daemon(&l);
        if (r != EXIT_OK) {
                free(line.args);
                return r;
        }
        r = cmd->run(l, line.n_args, line.args);
        l = lodev_close(l);
        free(line.args);
        return r;
}
