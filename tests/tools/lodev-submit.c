/* SPDX-License-Identifier: MIT */
/* Test and benchmark client built on liblodev.
 *
 *   lodev-submit [--count N] [--start S] [--window W] [--wait-delivered]
 *                [--code C] [--system S] [--display D] [--unit U] [--patient-id P]
 *                [--value V] [--code-size BYTES] [--invalid-utf8]
 *
 * Submits N observations with values S, S+1, ... keeping W calls in flight,
 * and prints "ID VALUE REPLY_USEC START_USEC" for each accepted one as its
 * reply comes: the time the reply took, and when the call was made
 * (CLOCK_MONOTONIC).
 * --value overrides the values (for instance "nan"), --code-size makes a code
 * of that many bytes, --invalid-utf8 puts a broken sequence into the unit.
 * With --wait-delivered it then waits (at most 600 s) until lodevd reports
 * every id delivered, printing "DELIVERED ID USEC" lines. Errors go to stderr
 * as "error: ERRNO-TEXT: MESSAGE"; the exit status is 0 when every
 * submission was accepted (and delivered, when waited for), 1 otherwise. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lodev.h"

static unsigned replies, failures, delivered_count, accepted;

/* The ids this client got back, in an open-addressing set: the delivered
 * signal reaches every subscriber, and only our own ids count. */
static uint64_t *ids;
static size_t ids_size;

static void ids_add(uint64_t id) {
        size_t i = (id * 0x9e3779b97f4a7c15ULL) & (ids_size - 1);

        while (ids[i] != 0 && ids[i] != id)
                i = (i + 1) & (ids_size - 1);
        ids[i] = id;
}

static bool ids_take(uint64_t id) {
        size_t i = (id * 0x9e3779b97f4a7c15ULL) & (ids_size - 1);

        while (ids[i] != 0) {
                if (ids[i] == id) {
                        ids[i] = UINT64_MAX; /* a tombstone: counted once */
                        return true;
                }
                i = (i + 1) & (ids_size - 1);
        }
        return false;
}

static uint64_t now_usec(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000 + (uint64_t) ts.tv_nsec / 1000;
}

typedef struct Call {
        double value;
        uint64_t start;
} Call;

static void on_reply(lodev *l, int error, const char *id, void *userdata) {
        Call *c = userdata;

        replies++;
        if (error < 0) {
                failures++;
                fprintf(stderr, "error: %s: %s\n", lodev_strerror(error),
                        lodev_last_error(l) ? lodev_last_error(l) : "");
        } else {
                printf("%s %.17g %llu %llu\n", id, c->value,
                       (unsigned long long) (now_usec() - c->start),
                       (unsigned long long) c->start);
                ids_add(strtoull(id, NULL, 10));
                accepted++;
        }
        free(c);
}

static void on_delivered(lodev *l, const char *id, void *userdata) {
        if (!ids_take(strtoull(id, NULL, 10)))
                return;
        printf("DELIVERED %s %llu\n", id, (unsigned long long) now_usec());
        delivered_count++;
}

static int pump(lodev *l, int timeout_ms) {
        struct pollfd p;
        int r = lodev_dispatch(l);

        if (r < 0)
                return r;
        /* The events after dispatching: it may have queued messages to write. */
        p = (struct pollfd) { .fd = lodev_get_fd(l), .events = (short) lodev_get_events(l) };
        if (poll(&p, 1, timeout_ms) < 0 && errno != EINTR)
                return -errno;
        return lodev_dispatch(l);
}

int main(int argc, char *argv[]) {
        static const struct option options[] = {
                { "count", required_argument, NULL, 'n' },
                { "start", required_argument, NULL, 's' },
                { "window", required_argument, NULL, 'w' },
                { "wait-delivered", no_argument, NULL, 'W' },
                { "code", required_argument, NULL, 'c' },
                { "system", required_argument, NULL, 'S' },
                { "display", required_argument, NULL, 'd' },
                { "unit", required_argument, NULL, 'u' },
                { "patient-id", required_argument, NULL, 'p' },
                { "value", required_argument, NULL, 'v' },
                { "code-size", required_argument, NULL, 'C' },
                { "invalid-utf8", no_argument, NULL, 'I' },
                {},
        };
        unsigned count = 1, window = 64, sent = 0;
        double start = 0, fixed_value = 0;
        bool fixed = false, wait_delivered = false, invalid_utf8 = false;
        const char *code = "8867-4", *system_ = "http://loinc.org", *display = "Heart rate",
                   *unit = "/min", *patient = NULL;
        char *big_code = NULL, bad_unit[8] = "ab\xc3\x28";
        lodev *l = NULL;
        uint64_t deadline;
        int c, r = 0;

        while ((c = getopt_long(argc, argv, "", options, NULL)) >= 0) {
                switch (c) {
                case 'n':
                        count = (unsigned) strtoul(optarg, NULL, 10);
                        break;
                case 's':
                        start = strtod(optarg, NULL);
                        break;
                case 'w':
                        window = (unsigned) strtoul(optarg, NULL, 10);
                        break;
                case 'W':
                        wait_delivered = true;
                        break;
                case 'c':
                        code = optarg;
                        break;
                case 'S':
                        system_ = optarg;
                        break;
                case 'd':
                        display = optarg;
                        break;
                case 'u':
                        unit = optarg;
                        break;
                case 'p':
                        patient = optarg;
                        break;
                case 'v':
                        fixed = true;
                        fixed_value = strtod(optarg, NULL);
                        break;
                case 'C': {
                        size_t n = strtoul(optarg, NULL, 10);
                        big_code = malloc(n + 1);
                        if (!big_code)
                                return 1;
                        memset(big_code, 'x', n);
                        big_code[n] = '\0';
                        code = big_code;
                        break;
                }
                case 'I':
                        invalid_utf8 = true;
                        break;
                default:
                        return 2;
                }
        }
        if (window == 0)
                window = 1;

        for (ids_size = 16; ids_size < 2 * (size_t) count; ids_size *= 2)
                ;
        ids = calloc(ids_size, sizeof(uint64_t));
        if (!ids)
                return 1;
        r = lodev_open(&l);
        if (r < 0) {
                fprintf(stderr, "error: %s: cannot connect\n", lodev_strerror(r));
                return 3;
        }
        if (wait_delivered && (r = lodev_add_delivered_callback(l, NULL, on_delivered, NULL)) < 0) {
                fprintf(stderr, "error: %s: cannot subscribe\n", lodev_strerror(r));
                return 1;
        }

        while (replies < count) {
                while (sent < count && lodev_pending_calls(l) < window) {
                        Call *call = malloc(sizeof(*call));
                        lodev_observation o = {
                                .code = code,
                                .code_system = system_,
                                .code_display = display,
                                .value = fixed ? fixed_value : start + sent,
                                .unit = invalid_utf8 ? bad_unit : unit,
                                .patient_id = patient,
                        };
                        if (!call)
                                return 1;
                        *call = (Call) { .value = o.value, .start = now_usec() };
                        r = lodev_submit_observation_async(l, NULL, &o, on_reply, call);
                        if (r < 0) {
                                /* Refused before it left this process (invalid UTF-8, say). */
                                fprintf(stderr, "error: %s: not sent\n", lodev_strerror(r));
                                free(call);
                                failures++;
                                replies++;
                        }
                        sent++;
                }
                r = pump(l, 1000);
                if (r < 0) {
                        fprintf(stderr, "error: %s: connection to lodevd lost\n",
                                lodev_strerror(r));
                        break;
                }
        }
        fflush(stdout);

        deadline = now_usec() + UINT64_C(600) * 1000000;
        while (r >= 0 && wait_delivered && delivered_count < accepted && now_usec() < deadline) {
                r = pump(l, 1000);
                fflush(stdout);
        }
        lodev_close(l);
        free(ids);
        free(big_code);
        if (r < 0 || failures > 0 || replies < count)
                return 1;
        if (wait_delivered && delivered_count < accepted)
                return 1;
        return 0;
}
