/* SPDX-License-Identifier: MIT */
/* Drives daemon/http.c (and so lodevd-transfer, the helper it starts) on an
 * sd-event loop, for the HTTP tests.
 *
 *   lodev-http [OPTIONS] put URL FILE CONTENT_TYPE
 *   lodev-http [OPTIONS] get URL OUTFILE
 *
 * Options: --allow-http, --ca FILE, --proxy URL, --max-rate BYTES_PER_SEC,
 * --offset N (get: resume; OUTFILE is kept and written from N, or from 0 when
 * the server ignores the range), --max-size N, --sha256, --sync-bytes N,
 * --connect-timeout S, --low-speed-time S, --low-speed-limit BYTES_PER_SEC,
 * --silence-timeout S, --helper PATH, --cancel-after BYTES (cancel from inside
 * progress() once that much moved, then wait half a second to show that no
 * callback follows), --signal-helper SIG (with --signal-after BYTES: send the
 * helper that signal from progress() once that much moved), --verbose.
 *
 * Prints one JSON line: error (negative errno or 0), error_name, error_text,
 * status, body, bytes, range_honoured, progress_calls, first_data_offset (where
 * the body started in the resource, null when no byte came), synced,
 * synced_calls, sha256, helper_pid, sockets_seen and sockets_cloexec (the most
 * sockets found open at once during the transfer, and whether all were
 * close-on-exec), finished, canceled, elapsed_ms. "started": false when the
 * transfer could not even start. Exit status 0 for a 2xx without error, 1
 * otherwise, 2 for a usage error. */
#include <errno.h>
#include <dirent.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "http.h"
#include "util.h"

static sd_event *event;
static uint64_t cancel_after = UINT64_MAX, signal_after = 0;
static int signal_helper;
static unsigned progress_calls, synced_calls;
static unsigned sockets_seen, sockets_checks;
static bool sockets_cloexec = true;
static bool canceled, finished_called, signaled;
static uint64_t start_usec;
static pid_t helper_pid;
static int exit_status = 1;

static uint64_t now_usec(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000 + (uint64_t) ts.tv_nsec / 1000;
}

/* Every socket this process holds must be close-on-exec. */
static void check_sockets(void) {
        _cleanup_(closedirp) DIR *d = NULL;
        struct dirent *de;
        unsigned n = 0;

        if (sockets_checks++ > 50)
                return;
        d = opendir("/proc/self/fd");
        if (!d)
                return;
        while ((de = readdir(d))) {
                struct stat st;
                int fd, flags;

                if (de->d_name[0] == '.')
                        continue;
                fd = atoi(de->d_name);
                if (fd == dirfd(d) || fstat(fd, &st) < 0 || !S_ISSOCK(st.st_mode))
                        continue;
                n++;
                flags = fcntl(fd, F_GETFD);
                if (flags < 0 || !(flags & FD_CLOEXEC))
                        sockets_cloexec = false;
        }
        sockets_seen = MAX(sockets_seen, n);
}

static void print_result(const HttpResult *r, int start_error) {
        json_object *o = json_object_new_object();
        int error = r ? r->error : start_error;

        json_object_object_add(o, "started", json_object_new_boolean(start_error == 0));
        json_object_object_add(o, "error", json_object_new_int(error));
        json_object_object_add(o, "error_name",
                               error ? json_object_new_string(strerrorname_np(-error)) : NULL);
        if (r && r->error_text)
                json_object_object_add(o, "error_text", json_object_new_string(r->error_text));
        else
                json_object_object_add(o, "error_text",
                                       error ? json_object_new_string(strerror(-error)) : NULL);
        json_object_object_add(o, "status", json_object_new_int64(r ? r->status : 0));
        json_object_object_add(o, "body", r && r->body ? json_object_new_string(r->body) : NULL);
        json_object_object_add(o, "bytes", json_object_new_int64(r ? (int64_t) r->bytes : 0));
        json_object_object_add(o, "range_honoured",
                               json_object_new_boolean(r && r->range_honoured));
        json_object_object_add(o, "progress_calls", json_object_new_int64(progress_calls));
        json_object_object_add(o, "first_data_offset",
                               r && r->bytes > 0 ? json_object_new_int64((int64_t) r->start)
                                                 : NULL);
        json_object_object_add(o, "synced", json_object_new_int64(r ? (int64_t) r->synced : 0));
        json_object_object_add(o, "synced_calls", json_object_new_int64(synced_calls));
        json_object_object_add(o, "sha256",
                               r && r->sha256 ? json_object_new_string(r->sha256) : NULL);
        json_object_object_add(o, "helper_pid", json_object_new_int64(helper_pid));
        json_object_object_add(o, "sockets_seen", json_object_new_int64(sockets_seen));
        json_object_object_add(o, "sockets_cloexec", json_object_new_boolean(sockets_cloexec));
        json_object_object_add(o, "finished", json_object_new_boolean(finished_called));
        json_object_object_add(o, "canceled", json_object_new_boolean(canceled));
        json_object_object_add(o, "elapsed_ms",
                               json_object_new_int64((int64_t) (now_usec() - start_usec) / 1000));
        printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
        fflush(stdout);
        json_object_put(o);
}

static void on_finished(HttpTransfer *t, const HttpResult *r, void *userdata) {
        finished_called = true;
        if (canceled) {
                /* Must never happen: the check below reports it. */
                (void) sd_event_exit(event, 1);
                return;
        }
        print_result(r, 0);
        exit_status = r->error == 0 && r->status >= 200 && r->status < 300 ? 0 : 1;
        (void) sd_event_exit(event, exit_status);
}

static void on_progress(HttpTransfer *t, uint64_t done, uint64_t total, void *userdata) {
        progress_calls++;
        check_sockets();
        if (signal_helper > 0 && !signaled && done >= signal_after) {
                signaled = true;
                (void) kill(http_transfer_pid(t), signal_helper);
        }
        if (!canceled && done >= cancel_after) {
                canceled = true;
                http_transfer_cancel(t);
        }
}

static void on_synced(HttpTransfer *t, uint64_t offset, void *userdata) {
        synced_calls++;
}

static int on_cancel_timeout(sd_event_source *s, uint64_t usec, void *userdata) {
        HttpResult r = {.error = -ECANCELED, .error_text = "canceled by lodev-http"};

        print_result(&r, 0);
        exit_status = finished_called ? 1 : 0;
        return sd_event_exit(event, exit_status);
}

static int on_idle_check(sd_event_source *s, void *userdata) {
        /* Once a cancel happened, give a stray callback half a second to show up. */
        if (canceled) {
                (void) sd_event_source_set_enabled(s, SD_EVENT_OFF);
                return sd_event_add_time_relative(event, NULL, CLOCK_MONOTONIC, 500000, 0,
                                                  on_cancel_timeout, NULL);
        }
        return 0;
}

static int parse_u64(const char *s, uint64_t *ret) {
        char *end;
        unsigned long long v;

        errno = 0;
        v = strtoull(s, &end, 10);
        if (errno || end == s || *end || s[0] == '-')
                return -EINVAL;
        *ret = v;
        return 0;
}

static int sig_from_name(const char *s) {
        for (int i = 1; i < NSIG; i++)
                if (sigabbrev_np(i) && streq(sigabbrev_np(i), s))
                        return i;
        return -EINVAL;
}

static void usage(void) {
        fprintf(stderr, "usage: lodev-http [OPTIONS] put URL FILE CONTENT_TYPE\n"
                        "       lodev-http [OPTIONS] get URL OUTFILE [--offset N]\n");
}

int main(int argc, char **argv) {
        enum {
                ARG_ALLOW_HTTP = 0x100,
                ARG_CA,
                ARG_PROXY,
                ARG_HELPER,
                ARG_SHA256,
                ARG_MAX_RATE,
                ARG_OFFSET,
                ARG_MAX_SIZE,
                ARG_SYNC_BYTES,
                ARG_CONNECT_TIMEOUT,
                ARG_LOW_SPEED_TIME,
                ARG_LOW_SPEED_LIMIT,
                ARG_SILENCE_TIMEOUT,
                ARG_CANCEL_AFTER,
                ARG_SIGNAL_HELPER,
                ARG_SIGNAL_AFTER,
                ARG_VERBOSE,
        };
        static const struct option options[] = {
                {"allow-http", no_argument, NULL, ARG_ALLOW_HTTP},
                {"ca", required_argument, NULL, ARG_CA},
                {"proxy", required_argument, NULL, ARG_PROXY},
                {"helper", required_argument, NULL, ARG_HELPER},
                {"sha256", no_argument, NULL, ARG_SHA256},
                {"max-rate", required_argument, NULL, ARG_MAX_RATE},
                {"offset", required_argument, NULL, ARG_OFFSET},
                {"max-size", required_argument, NULL, ARG_MAX_SIZE},
                {"sync-bytes", required_argument, NULL, ARG_SYNC_BYTES},
                {"connect-timeout", required_argument, NULL, ARG_CONNECT_TIMEOUT},
                {"low-speed-time", required_argument, NULL, ARG_LOW_SPEED_TIME},
                {"low-speed-limit", required_argument, NULL, ARG_LOW_SPEED_LIMIT},
                {"silence-timeout", required_argument, NULL, ARG_SILENCE_TIMEOUT},
                {"cancel-after", required_argument, NULL, ARG_CANCEL_AFTER},
                {"signal-helper", required_argument, NULL, ARG_SIGNAL_HELPER},
                {"signal-after", required_argument, NULL, ARG_SIGNAL_AFTER},
                {"verbose", no_argument, NULL, ARG_VERBOSE},
                {},
        };
        _cleanup_(http_client_freep) HttpClient *client = NULL;
        _cleanup_close_ int fd = -EBADF;
        HttpOptions o = {};
        HttpGet g = {};
        HttpTransfer *run = NULL;
        uint64_t v;
        bool verbose = false;
        const char *verb;
        sigset_t mask;
        struct stat st;
        int c, r;

        while ((c = getopt_long(argc, argv, "", options, NULL)) >= 0) {
                switch (c) {
                case ARG_ALLOW_HTTP:
                        o.allow_http = true;
                        break;
                case ARG_CA:
                        o.ca_file = optarg;
                        break;
                case ARG_PROXY:
                        o.proxy = optarg;
                        break;
                case ARG_HELPER:
                        o.helper = optarg;
                        break;
                case ARG_SHA256:
                        g.sha256 = true;
                        break;
                case ARG_VERBOSE:
                        verbose = true;
                        break;
                case ARG_SIGNAL_HELPER:
                        signal_helper = sig_from_name(optarg);
                        if (signal_helper <= 0) {
                                fprintf(stderr, "lodev-http: unknown signal: %s\n", optarg);
                                return 2;
                        }
                        break;
                default:
                        if (c < ARG_MAX_RATE || c > ARG_SIGNAL_AFTER) {
                                usage();
                                return 2;
                        }
                        if (parse_u64(optarg, &v) < 0) {
                                fprintf(stderr, "lodev-http: invalid number: %s\n", optarg);
                                return 2;
                        }
                        if (c == ARG_MAX_RATE)
                                o.max_rate = v;
                        else if (c == ARG_OFFSET)
                                g.offset = v;
                        else if (c == ARG_MAX_SIZE)
                                g.max_size = v;
                        else if (c == ARG_SYNC_BYTES)
                                g.sync_bytes = v;
                        else if (c == ARG_CONNECT_TIMEOUT)
                                o.connect_timeout_sec = (unsigned) v;
                        else if (c == ARG_LOW_SPEED_TIME)
                                o.low_speed_time_sec = (unsigned) v;
                        else if (c == ARG_LOW_SPEED_LIMIT)
                                o.low_speed_limit = (unsigned) v;
                        else if (c == ARG_SILENCE_TIMEOUT)
                                o.silence_timeout_sec = (unsigned) v;
                        else if (c == ARG_CANCEL_AFTER)
                                cancel_after = v;
                        else
                                signal_after = v;
                        break;
                }
        }
        if (optind >= argc) {
                usage();
                return 2;
        }
        verb = argv[optind];
        if (!((streq(verb, "put") && argc - optind == 4) ||
              (streq(verb, "get") && argc - optind == 3))) {
                usage();
                return 2;
        }
        log_setup(verbose ? LOG_DEBUG : LOG_WARNING, 1);

        /* As lodevd: SIGCHLD blocked, for sd-event's child sources. */
        sigemptyset(&mask);
        sigaddset(&mask, SIGCHLD);
        (void) sigprocmask(SIG_BLOCK, &mask, NULL);
        r = sd_event_default(&event);
        if (r < 0) {
                fprintf(stderr, "lodev-http: sd_event_default: %s\n", strerror(-r));
                return 1;
        }
        r = http_client_new(event, &o, &client);
        if (r < 0) {
                fprintf(stderr, "lodev-http: http_client_new: %s\n", strerror(-r));
                return 1;
        }

        start_usec = now_usec();
        if (streq(verb, "put")) {
                fd = open(argv[optind + 2], O_RDONLY | O_CLOEXEC);
                if (fd < 0 || fstat(fd, &st) < 0) {
                        fprintf(stderr, "lodev-http: %s: %m\n", argv[optind + 2]);
                        return 1;
                }
                /* The fd's own offset must not matter. */
                (void) lseek(fd, st.st_size / 2, SEEK_SET);
                r = http_put_fd(client, argv[optind + 1], fd, (uint64_t) st.st_size,
                                argv[optind + 3], on_progress, on_finished, NULL, &run);
        } else {
                fd = open(argv[optind + 2],
                          O_RDWR | O_CREAT | O_CLOEXEC | (g.offset == 0 ? O_TRUNC : 0), 0644);
                if (fd < 0) {
                        fprintf(stderr, "lodev-http: %s: %m\n", argv[optind + 2]);
                        return 1;
                }
                r = http_get_fd(client, argv[optind + 1], fd, &g, on_progress, on_synced,
                                on_finished, NULL, &run);
        }
        if (r < 0) {
                print_result(NULL, r);
                client = http_client_free(client);
                sd_event_unref(event);
                return 1;
        }
        helper_pid = http_transfer_pid(run);
        check_sockets();
        r = sd_event_add_post(event, NULL, on_idle_check, NULL);
        if (r >= 0)
                r = sd_event_loop(event);
        if (r < 0)
                fprintf(stderr, "lodev-http: event loop: %s\n", strerror(-r));

        client = http_client_free(client);
        event = sd_event_unref(event);
        return exit_status;
}
