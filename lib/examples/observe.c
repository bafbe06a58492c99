/* SPDX-License-Identifier: MIT */
/* Example: submit observations through liblodev from a program with its own
 * poll() loop, keeping up to 64 calls in flight so lodevd can share one disk
 * sync among them.
 *
 *   lodev-example-observe [COUNT]
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <lodev.h>

#define WINDOW 64

static unsigned done, failed;

static void on_submitted(lodev *l, int error, const char *id, void *userdata) {
        if (error < 0) {
                fprintf(stderr, "submit failed: %s (%s)\n", lodev_strerror(error),
                        lodev_last_error(l) ? lodev_last_error(l) : "no details");
                failed++;
        } else
                printf("%s\n", id);
        done++;
}

int main(int argc, char *argv[]) {
        unsigned count = argc > 1 ? (unsigned) strtoul(argv[1], NULL, 10) : 10, sent = 0;
        lodev *l = NULL;
        int r;

        r = lodev_open(&l);
        if (r < 0) {
                fprintf(stderr, "cannot reach lodevd: %s\n", lodev_strerror(r));
                return 3;
        }

        while (done < count) {
                struct pollfd p;

                while (sent < count && lodev_pending_calls(l) < WINDOW) {
                        lodev_observation o = {
                                .code = "9750d5e5-d766-4793-a97d-16179578cc4d",
                                .code_system = "http://lifeomic.com/fhir/devices",
                                .code_display = "Battery Percentage",
                                .value = (double) (sent % 101),
                                .unit = "%",
                        };
                        r = lodev_submit_observation_async(l, NULL, &o, on_submitted, NULL);
                        if (r < 0) {
                                fprintf(stderr, "submit: %s\n", lodev_strerror(r));
                                lodev_close(l);
                                return 1;
                        }
                        sent++;
                }

                r = lodev_dispatch(l);
                if (r < 0)
                        break;
                if (done >= count)
                        break;
                p = (struct pollfd) { .fd = lodev_get_fd(l), .events = (short) lodev_get_events(l) };
                if (poll(&p, 1, 1000) < 0 && errno != EINTR) {
                        r = -errno;
                        break;
                }
        }
        lodev_close(l);
        if (r < 0) {
                fprintf(stderr, "bus: %s\n", lodev_strerror(r));
                return 1;
        }
        return failed ? 1 : 0;
}
