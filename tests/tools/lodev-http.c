/* SPDX-License-Identifier: MIT */
/* Drives daemon/http.c on an sd-event loop, for the HTTP tests.
 *
 *   lodev-http [OPTIONS] put URL FILE CONTENT_TYPE
 *   lodev-http [OPTIONS] get URL OUTFILE
 *
 * Options: --allow-http, --ca FILE, --proxy URL, --max-rate BYTES_PER_SEC,
 * --offset N (get: resume; OUTFILE is kept and written from N, or from 0 when
 * the server ignores the range), --connect-timeout S, --low-speed-time S,
 * --low-speed-limit BYTES_PER_SEC, --cancel-after BYTES (cancel from inside
 * data() or progress() once that much moved, then wait half a second to show
 * that no callback follows), --verbose.
 *
 * Prints one JSON line: error (negative errno or 0), error_name, error_text,
 * status, body, bytes, range_honoured, progress_calls, first_data_offset,
 * sockets_seen and sockets_cloexec (the most sockets found open at once
 * during the transfer, and whether all were close-on-exec), finished, canceled,
 * elapsed_ms. "started": false when the transfer could not even start. Exit
 * status 0 for a 2xx without error, 1 otherwise, 2 for a usage error. */
#include <errno.h>
#include <dirent.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "http.h"
#include "log.h"
#include "util.h"

static sd_event *event;
static int out_fd = -EBADF;
static uint64_t cancel_after = UINT64_MAX;
static unsigned progress_calls;
static int64_t first_data_offset = -1;
static unsigned sockets_seen, sockets_checks;
static bool sockets_cloexec = true;
static bool canceled, finished_called;
static uint64_t start_usec;
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
                               first_data_offset >= 0 ? json_object_new_int64(first_data_offset)
                                                      : NULL);
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

static void cancel(HttpTransfer *t) {
        canceled = true;
        http_transfer_cancel(t);
}

static void on_progress(HttpTransfer *t, uint64_t done, uint64_t total, void *userdata) {
        progress_calls++;
        check_sockets();
        if (!canceled && done >= cancel_after)
                cancel(t);
}

static int on_data(HttpTransfer *t, uint64_t offset, const void *data, size_t len, void *userdata) {
        const char *p = data;

        if (first_data_offset < 0) {
                first_data_offset = (int64_t) offset;
                /* The server sent the whole body: what was kept is stale. */
                if (offset == 0 && ftruncate(out_fd, 0) < 0)
                        return -errno;
        }
        check_sockets();
        while (len > 0) {
                ssize_t k = pwrite(out_fd, p, len, (off_t) offset);
                if (k < 0)
                        return -errno;
                p += k;
                offset += (uint64_t) k;
                len -= (size_t) k;
        }
        if (!canceled && offset >= cancel_after)
                cancel(t);
        return 0;
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

static void usage(void) {
        fprintf(stderr, "usage: lodev-http [OPTIONS] put URL FILE CONTENT_TYPE\n"
                        "       lodev-http [OPTIONS] get URL OUTFILE [--offset N]\n");
}

int main(int argc, char **argv) {
        enum {
                ARG_ALLOW_HTTP = 0x100,
                ARG_CA,
                ARG_PROXY,
                ARG_MAX_RATE,
                ARG_OFFSET,
                ARG_CONNECT_TIMEOUT,
                ARG_LOW_SPEED_TIME,
                ARG_LOW_SPEED_LIMIT,
                ARG_CANCEL_AFTER,
                ARG_VERBOSE,
        };
        static const struct option options[] = {
                {"allow-http", no_argument, NULL, ARG_ALLOW_HTTP},
                {"ca", required_argument, NULL, ARG_CA},
                {"proxy", required_argument, NULL, ARG_PROXY},
                {"max-rate", required_argument, NULL, ARG_MAX_RATE},
                {"offset", required_argument, NULL, ARG_OFFSET},
                {"connect-timeout", required_argument, NULL, ARG_CONNECT_TIMEOUT},
                {"low-speed-time", required_argument, NULL, ARG_LOW_SPEED_TIME},
                {"low-speed-limit", required_argument, NULL, ARG_LOW_SPEED_LIMIT},
                {"cancel-after", required_argument, NULL, ARG_CANCEL_AFTER},
                {"verbose", no_argument, NULL, ARG_VERBOSE},
                {},
        };
        _cleanup_(http_client_freep) HttpClient *client = NULL;
        _cleanup_close_ int in_fd = -EBADF;
        HttpOptions o = {};
        uint64_t offset = 0, v;
        bool verbose = false;
        const char *verb;
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
                case ARG_VERBOSE:
                        verbose = true;
                        break;
                case ARG_MAX_RATE:
                case ARG_OFFSET:
                case ARG_CONNECT_TIMEOUT:
                case ARG_LOW_SPEED_TIME:
                case ARG_LOW_SPEED_LIMIT:
                case ARG_CANCEL_AFTER:
                        if (parse_u64(optarg, &v) < 0) {
                                fprintf(stderr, "lodev-http: invalid number: %s\n", optarg);
                                return 2;
                        }
                        if (c == ARG_MAX_RATE)
                                o.max_rate = v;
                        else if (c == ARG_OFFSET)
                                offset = v;
                        else if (c == ARG_CONNECT_TIMEOUT)
                                o.connect_timeout_sec = (unsigned) v;
                        else if (c == ARG_LOW_SPEED_TIME)
                                o.low_speed_time_sec = (unsigned) v;
                        else if (c == ARG_LOW_SPEED_LIMIT)
                                o.low_speed_limit = (unsigned) v;
                        else
                                cancel_after = v;
                        break;
                default:
                        usage();
                        return 2;
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
                in_fd = open(argv[optind + 2], O_RDONLY | O_CLOEXEC);
                if (in_fd < 0 || fstat(in_fd, &st) < 0) {
                        fprintf(stderr, "lodev-http: %s: %m\n", argv[optind + 2]);
                        return 1;
                }
                /* The fd's own offset must not matter. */
                (void) lseek(in_fd, st.st_size / 2, SEEK_SET);
                r = http_put_fd(client, argv[optind + 1], in_fd, (uint64_t) st.st_size,
                                argv[optind + 3], on_progress, on_finished, NULL, NULL);
        } else {
                out_fd = open(argv[optind + 2],
                              O_WRONLY | O_CREAT | O_CLOEXEC | (offset == 0 ? O_TRUNC : 0), 0644);
                if (out_fd < 0) {
                        fprintf(stderr, "lodev-http: %s: %m\n", argv[optind + 2]);
                        return 1;
                }
                r = http_get(client, argv[optind + 1], offset, 0, on_data, on_progress,
                             on_finished, NULL, NULL);
        }
        if (r < 0) {
                print_result(NULL, r);
                out_fd = safe_close(out_fd);
                sd_event_unref(event);
                return 1;
        }
        /* No transfer pointer kept: the callbacks get it. */
        r = sd_event_add_post(event, NULL, on_idle_check, NULL);
        if (r >= 0)
                r = sd_event_loop(event);
        if (r < 0)
                fprintf(stderr, "lodev-http: event loop: %s\n", strerror(-r));

        client = http_client_free(client);
        out_fd = safe_close(out_fd);
        event = sd_event_unref(event);
        return exit_status;
}
