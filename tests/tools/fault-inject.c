/* SPDX-License-Identifier: MIT */
/* An LD_PRELOAD shim for fault tests: while the file named by LODEV_FAULT_FLAG exists,
 * opening (or, with LODEV_FAULT_CALLS=unlink, unlinking) a path that contains
 * LODEV_FAULT_PATH fails with the errno in LODEV_FAULT_ERRNO (EIO by default). Lets a test
 * give lodevd an error that may pass (EIO, EMFILE), which root cannot otherwise provoke on a
 * healthy disk. LODEV_FAULT_CALLS is "open" (the default), "unlink" or "open,unlink".
 * _GNU_SOURCE comes from the build. */

/* Both the plain and the 64-bit names are interposed: no redirection of one to the other. */
#undef _FILE_OFFSET_BITS
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int injected_errno(const char *call, const char *path) {
        const char *match = getenv("LODEV_FAULT_PATH"), *flag = getenv("LODEV_FAULT_FLAG");
        const char *e = getenv("LODEV_FAULT_ERRNO"), *calls = getenv("LODEV_FAULT_CALLS");
        struct stat st;

        if (!path || !match || !flag || !strstr(path, match))
                return 0;
        if (!strstr(calls ? calls : "open", call))
                return 0;
        if (stat(flag, &st) < 0)
                return 0;
        return e ? atoi(e) : EIO;
}

static mode_t mode_arg(int flags, va_list ap) {
        return (flags & (O_CREAT | O_TMPFILE)) ? (mode_t) va_arg(ap, int) : 0;
}

#define INTERPOSE_OPEN(name)                                                                       \
        int name(const char *path, int flags, ...) {                                              \
                static int (*real)(const char *, int, ...);                                        \
                va_list ap;                                                                        \
                mode_t mode;                                                                       \
                int e = injected_errno("open", path);                                                      \
                                                                                                   \
                va_start(ap, flags);                                                               \
                mode = mode_arg(flags, ap);                                                        \
                va_end(ap);                                                                        \
                if (e) {                                                                           \
                        errno = e;                                                                 \
                        return -1;                                                                 \
                }                                                                                  \
                if (!real)                                                                         \
                        real = (int (*)(const char *, int, ...)) dlsym(RTLD_NEXT, #name);          \
                return real(path, flags, mode);                                                    \
        }

#define INTERPOSE_OPENAT(name)                                                                     \
        int name(int dir_fd, const char *path, int flags, ...) {                                  \
                static int (*real)(int, const char *, int, ...);                                   \
                va_list ap;                                                                        \
                mode_t mode;                                                                       \
                int e = injected_errno("open", path);                                                      \
                                                                                                   \
                va_start(ap, flags);                                                               \
                mode = mode_arg(flags, ap);                                                        \
                va_end(ap);                                                                        \
                if (e) {                                                                           \
                        errno = e;                                                                 \
                        return -1;                                                                 \
                }                                                                                  \
                if (!real)                                                                         \
                        real = (int (*)(int, const char *, int, ...)) dlsym(RTLD_NEXT, #name);     \
                return real(dir_fd, path, flags, mode);                                            \
        }

INTERPOSE_OPEN(open)
INTERPOSE_OPEN(open64)
INTERPOSE_OPENAT(openat)
INTERPOSE_OPENAT(openat64)

int unlink(const char *path) {
        static int (*real)(const char *);
        int e = injected_errno("unlink", path);

        if (e) {
                errno = e;
                return -1;
        }
        if (!real)
                real = (int (*)(const char *)) dlsym(RTLD_NEXT, "unlink");
        return real(path);
}

int unlinkat(int dir_fd, const char *path, int flags) {
        static int (*real)(int, const char *, int);
        int e = injected_errno("unlink", path);

        if (e) {
                errno = e;
                return -1;
        }
        if (!real)
                real = (int (*)(int, const char *, int)) dlsym(RTLD_NEXT, "unlinkat");
        return real(dir_fd, path, flags);
}
