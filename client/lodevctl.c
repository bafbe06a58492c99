/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <stdlib.h>
#include <signal.h>
#include <string.h>
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

static bool arg_json;

static void help(void) {
        printf("Usage: lodevctl [--json] COMMAND [OPTIONS]\n\n"
               "Control lodevd, the LifeOmic device agent.\n\n"
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
               "  -j --json      print one JSON document\n"
               "  -h --help      show this help\n"
               "     --version   show the version\n\n"
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

static void print_json(json_object *o) {
        printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED |
                                                                 JSON_C_TO_STRING_NOSLASHESCAPE));
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

        if (argc > 1) {
                fprintf(stderr, "lodevctl: status takes no arguments\n");
                return EXIT_USAGE;
        }
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
                json_object_object_add(job, "percent", json_object_new_string(s->job_percent));
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
                if (*s->job_id)
                        printf("         Job: %s %s%s%s\n", s->job_id, s->job_status,
                               *s->job_percent ? " " : "", s->job_percent);
                else
                        printf("         Job: -\n");
                printf("  Last error: %s\n", *s->last_error ? s->last_error : "-");
                print_inhibitors(inh, n_inh);
        }
        lodev_inhibitors_free(inh, n_inh);
        lodev_status_free(s);
        return EXIT_OK;
}

/* The arguments of a command whose one option is the flag --NAME (-SHORT): 0, or
 * EXIT_USAGE after saying what is wrong. */
static int parse_flag(int argc, char *argv[], const char *command, const char *name,
                      char short_name, bool *ret) {
        const struct option options[] = {
                { name, no_argument, NULL, short_name },
                {},
        };
        const char shorts[] = { short_name, '\0' };
        int c;

        optind = 1;
        while ((c = getopt_long(argc, argv, shorts, options, NULL)) >= 0) {
                if (c != short_name)
                        return EXIT_USAGE;
                *ret = true;
        }
        if (optind < argc) {
                fprintf(stderr, "lodevctl: %s: unexpected argument '%s'\n", command, argv[optind]);
                return EXIT_USAGE;
        }
        return 0;
}

static int cmd_provision(lodev *l, int argc, char *argv[]) {
        char *thing = NULL;
        bool force = false;
        int r;

        r = parse_flag(argc, argv, "provision", "force", 'f', &force);
        if (r != 0)
                return r;
        r = lodev_provision(l, force, &thing);
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

static int cmd_observe(lodev *l, int argc, char *argv[]) {
        static const struct option options[] = {
                { "code", required_argument, NULL, 'c' },
                { "code-system", required_argument, NULL, 's' },
                { "code-display", required_argument, NULL, 'd' },
                { "value", required_argument, NULL, 'V' },
                { "unit", required_argument, NULL, 'u' },
                { "patient-id", required_argument, NULL, 'p' },
                {},
        };
        lodev_observation o = {};
        const char *value = NULL;
        char *id = NULL;
        int c, r;

        optind = 1;
        while ((c = getopt_long(argc, argv, "", options, NULL)) >= 0) {
                switch (c) {
                case 'c':
                        o.code = optarg;
                        break;
                case 's':
                        o.code_system = optarg;
                        break;
                case 'd':
                        o.code_display = optarg;
                        break;
                case 'V':
                        value = optarg;
                        break;
                case 'u':
                        o.unit = optarg;
                        break;
                case 'p':
                        o.patient_id = optarg;
                        break;
                default:
                        return EXIT_USAGE;
                }
        }
        if (optind < argc) {
                fprintf(stderr, "lodevctl: observe: unexpected argument '%s'\n", argv[optind]);
                return EXIT_USAGE;
        }
        if (!o.code || !o.code_system || !value || !o.unit) {
                fprintf(stderr, "lodevctl: observe: --code, --code-system, --value and --unit "
                                "are required\n");
                return EXIT_USAGE;
        }
        if (parse_double(value, &o.value) < 0) {
                fprintf(stderr, "lodevctl: observe: --value: '%s' is not a finite number\n",
                        value);
                return EXIT_USAGE;
        }
        r = lodev_submit_observation(l, &o, &id);
        if (r < 0)
                return call_failed(l, "observe", r);
        print_result("id", id);
        free(id);
        return EXIT_OK;
}

static int cmd_wait_online(lodev *l, int argc, char *argv[]) {
        static const struct option options[] = {
                { "timeout", required_argument, NULL, 't' },
                {},
        };
        uint64_t timeout = UINT64_MAX;
        const char *timeout_text = NULL;
        int c, r;

        optind = 1;
        while ((c = getopt_long(argc, argv, "t:", options, NULL)) >= 0) {
                double t;
                if (c != 't')
                        return EXIT_USAGE;
                if (parse_double(optarg, &t) < 0 || t < 0) {
                        fprintf(stderr, "lodevctl: wait-online: --timeout: '%s' is not a "
                                        "number of seconds\n",
                                optarg);
                        return EXIT_USAGE;
                }
                timeout = (uint64_t) (t * 1e6);
                timeout_text = optarg;
        }
        if (optind < argc) {
                fprintf(stderr, "lodevctl: wait-online: unexpected argument '%s'\n", argv[optind]);
                return EXIT_USAGE;
        }
        r = lodev_wait_online(l, timeout);
        if (r == -ETIMEDOUT) {
                fprintf(stderr, "lodevctl: wait-online: not online after %s s\n",
                        timeout_text);
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
        static const struct option options[] = {
                { "name", required_argument, NULL, 'n' },
                { "content-type", required_argument, NULL, 't' },
                { "wait", no_argument, NULL, 'w' },
                {},
        };
        const char *name = NULL, *type = "", *path;
        UploadWait w = {};
        bool wait = false;
        char *id = NULL;
        int c, fd, r;

        /* 0, not 1: getopt starts afresh and permutes, so options may follow FILE. */
        optind = 0;
        while ((c = getopt_long(argc, argv, "", options, NULL)) >= 0) {
                switch (c) {
                case 'n':
                        name = optarg;
                        break;
                case 't':
                        type = optarg;
                        break;
                case 'w':
                        wait = true;
                        break;
                default:
                        return EXIT_USAGE;
                }
        }
        if (argc - optind != 1) {
                fprintf(stderr, "lodevctl: upload: exactly one FILE is required\n");
                return EXIT_USAGE;
        }
        path = argv[optind];
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
        if (wait) {
                w.tty = isatty(STDERR_FILENO) && !arg_json;
                r = lodev_set_transfer_callbacks(l, upload_progress, upload_finished, &w);
                if (r < 0) {
                        close(fd);
                        return call_failed(l, "upload", r);
                }
        }
        r = lodev_upload_file(l, fd, name, type, &id);
        close(fd);
        if (r < 0)
                return call_failed(l, "upload", r);
        if (!wait) {
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
        catch_stop_signals();
        while (!w.finished && !arg_stop) {
                r = lodev_dispatch(l);
                if (r >= 0 && !w.finished)
                        r = lodev_wait(l, 1000000);
                if (r < 0 && r != -EINTR) {
                        free(id);
                        return call_failed(l, "upload", r);
                }
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

        if (argc > 1) {
                fprintf(stderr, "lodevctl: transfers takes no arguments\n");
                return EXIT_USAGE;
        }
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
        } else if (n == 0)
                printf("No transfers.\n");
        else {
                printf("%-36s  %-9s  %10s  %10s  %s\n", "ID", "STATE", "DONE", "SIZE", "NAME");
                for (size_t i = 0; i < n; i++) {
                        char d[32], s[32];

                        format_bytes(t[i].done, d, sizeof(d));
                        format_bytes(t[i].total, s, sizeof(s));
                        printf("%-36s  %-9s  %10s  %10s  %s\n", t[i].id, t[i].state, d, s,
                               t[i].file_name);
                }
        }
        lodev_transfers_free(t, n);
        return EXIT_OK;
}

static int cmd_cancel(lodev *l, int argc, char *argv[]) {
        int r;

        if (argc != 2) {
                fprintf(stderr, "lodevctl: cancel: exactly one transfer ID is required\n");
                return EXIT_USAGE;
        }
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
        int r;

        if (argc > 1) {
                fprintf(stderr, "lodevctl: monitor takes no arguments\n");
                return EXIT_USAGE;
        }
        catch_stop_signals();
        r = lodev_set_event_callback(l, monitor_event, NULL);
        if (r < 0)
                return call_failed(l, "monitor", r);
        while (!arg_stop) {
                r = lodev_dispatch(l);
                if (r >= 0)
                        r = lodev_wait(l, 1000000);
                if (r < 0 && r != -EINTR)
                        return call_failed(l, "monitor", r);
        }
        return EXIT_OK;
}

static int cmd_jobs(lodev *l, int argc, char *argv[]) {
        lodev_inhibitor *inh = NULL;
        lodev_status *s = NULL;
        size_t n_inh = 0;
        bool check = false;
        int r;

        r = parse_flag(argc, argv, "jobs", "check", 'c', &check);
        if (r != 0)
                return r;
        if (check) {
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
                json_object_object_add(o, "percent", json_object_new_string(s->job_percent));
                json_object_object_add(o, "reboot_inhibitors", inhibitors_json(inh, n_inh));
                print_json(o);
        } else if (!*s->job_id) {
                printf("No firmware job.\n");
                print_inhibitors(inh, n_inh);
        } else {
                printf("     Job: %s\n", s->job_id);
                printf("   Phase: %s\n", s->job_status);
                if (*s->job_percent)
                        printf("Progress: %s%%\n", s->job_percent);
                print_inhibitors(inh, n_inh);
        }
        lodev_inhibitors_free(inh, n_inh);
        lodev_status_free(s);
        return EXIT_OK;
}

/* As systemd-inhibit: the hold lasts while COMMAND runs; the command does not inherit the
 * descriptor, so it cannot outlive lodevctl's hold by accident. */
static int cmd_inhibit_reboot(lodev *l, int argc, char *argv[]) {
        static const struct option options[] = {
                { "who", required_argument, NULL, 'w' },
                { "why", required_argument, NULL, 'y' },
                {},
        };
        const char *who = "lodevctl", *why = "a command is running";
        int c, r, fd = -1, status;
        pid_t pid;

        optind = 1;
        /* "+": the options of COMMAND are its own. */
        while ((c = getopt_long(argc, argv, "+", options, NULL)) >= 0) {
                if (c == 'w')
                        who = optarg;
                else if (c == 'y')
                        why = optarg;
                else
                        return EXIT_USAGE;
        }
        if (optind >= argc) {
                fprintf(stderr, "lodevctl: inhibit-reboot: COMMAND is required\n");
                return EXIT_USAGE;
        }
        r = lodev_inhibit_reboot(l, who, why, &fd);
        if (r < 0)
                return call_failed(l, "inhibit-reboot", r);
        pid = fork();
        if (pid < 0) {
                fprintf(stderr, "lodevctl: inhibit-reboot: fork: %s\n", strerror(errno));
                close(fd);
                return EXIT_FAIL;
        }
        if (pid == 0) {
                execvp(argv[optind], argv + optind);
                fprintf(stderr, "lodevctl: inhibit-reboot: %s: %s\n", argv[optind],
                        strerror(errno));
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

static const struct {
        const char *name;
        int (*run)(lodev *l, int argc, char *argv[]);
} commands[] = {
        { "status", cmd_status },
        { "provision", cmd_provision },
        { "observe", cmd_observe },
        { "wait-online", cmd_wait_online },
        { "jobs", cmd_jobs },
        { "inhibit-reboot", cmd_inhibit_reboot },
        { "upload", cmd_upload },
        { "transfers", cmd_transfers },
        { "cancel", cmd_cancel },
        { "monitor", cmd_monitor },
};

int main(int argc, char *argv[]) {
        enum { ARG_VERSION = 0x100 };
        static const struct option options[] = {
                { "json", no_argument, NULL, 'j' },
                { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, ARG_VERSION },
                {},
        };
        lodev *l = NULL;
        int c, r;

        /* "+" stops at the first non-option: the rest belongs to the command. */
        while ((c = getopt_long(argc, argv, "+jh", options, NULL)) >= 0) {
                switch (c) {
                case 'j':
                        arg_json = true;
                        break;
                case 'h':
                        help();
                        return EXIT_OK;
                case ARG_VERSION:
                        printf("lodevctl %s\n", LODEV_VERSION);
                        return EXIT_OK;
                default:
                        return EXIT_USAGE;
                }
        }
        if (optind >= argc) {
                fprintf(stderr, "lodevctl: missing command (see lodevctl --help)\n");
                return EXIT_USAGE;
        }

        for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
                if (strcmp(argv[optind], commands[i].name) != 0)
                        continue;
                r = open_daemon(&l);
                if (r != EXIT_OK)
                        return r;
                r = commands[i].run(l, argc - optind, argv + optind);
                lodev_close(l);
                return r;
        }
        fprintf(stderr, "lodevctl: unknown command '%s' (see lodevctl --help)\n", argv[optind]);
        return EXIT_USAGE;
}
