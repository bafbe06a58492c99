/* SPDX-License-Identifier: MIT */
/* An LD_PRELOAD shim: close_range() fails with ENOSYS, as on a kernel before 5.9 or under a
 * seccomp filter that refuses it; and once the file named by LODEV_LEAK_FLAG exists (looked
 * for every 50 ms, for at most two minutes), a descriptor is opened without close-on-exec as
 * fd 77, as a library working on a thread of its own may. Whatever lodevd starts from then on
 * must still inherit nothing of it. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

int close_range(unsigned first, unsigned last, int flags) {
        errno = ENOSYS;
        return -1;
}

static void *leak(void *arg) {
        const char *flag = arg;
        struct timespec pause = { .tv_nsec = 50 * 1000 * 1000 };
        int fd;

        for (int i = 0; i < 2400 && access(flag, F_OK) < 0; i++)
                (void) nanosleep(&pause, NULL);
        fd = open("/dev/null", O_RDONLY);
        if (fd >= 0 && fd != 77) {
                (void) dup2(fd, 77);
                (void) close(fd);
        }
        return NULL;
}

__attribute__((constructor)) static void start(void) {
        const char *flag = getenv("LODEV_LEAK_FLAG");
        pthread_t t;

        if (flag && pthread_create(&t, NULL, leak, (void *) flag) == 0)
                (void) pthread_detach(t);
}
