/* SPDX-License-Identifier: MIT */
/* An LD_PRELOAD shim for fault tests: while the file named by LODEV_FAULT_FLAG exists,
 * opening (or, with LODEV_FAULT_CALLS=unlink, unlinking) a path that contains
 * LODEV_FAULT_PATH fails with the errno in LODEV_FAULT_ERRNO (EIO by default). Lets a test
 * give lodevd an error that may pass (EIO, EMFILE), which root cannot otherwise provoke on a
 * healthy disk. LODEV_FAULT_CALLS is "open" (the default), "unlink" or "open,unlink"; each
 * error made is logged as the write errors below are.
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
#include <signal.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

static void fault_log(const char *kind, const char *path);

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
        fault_log(call, path);
        return e ? atoi(e) : EIO;
}

static mode_t mode_arg(int flags, va_list ap) {
        return (flags & (O_CREAT | O_TMPFILE)) ? (mode_t) va_arg(ap, int) : 0;
}

/* --- Write errors and stop points, for the fault matrix (tests/faults) ---
 *
 * Errors on writes: while LODEV_FAULT_FLAG exists, the calls of the kinds listed in
 * LODEV_FAULT_CALLS on a file whose path contains LODEV_FAULT_PATH fail with
 * LODEV_FAULT_ERRNO: "write" (write, pwrite, pwritev, writev, copy_file_range into the file,
 * fallocate), "sync" (fsync, fdatasync) and "rename" (either name). The path of a descriptor
 * is what /proc/self/fd shows. Each error made is logged to the file LODEV_FAULT_LOG names, if
 * any, as "KIND PATH", so a test knows its fault happened.
 *
 * Stop points: LODEV_STOP_AT = KIND "|" CONDITIONS "|" N "|" WHEN stops the process with
 * SIGSTOP at the N-th call of KIND that meets every condition, "before" the call is made or
 * "after" it returned, so a test can SIGKILL it at exactly that step with no code of lodevd's
 * own for it. KIND: write, fsync, fdatasync, rename (the new name), ssl_write, ssl_read (what
 * libmosquitto sends and receives inside TLS), send, recv (plain HTTP of libcurl, which runs in
 * lodevd-transfer: a test hands the helper the preload and these variables, as lodevd starts
 * it with an empty environment). CONDITIONS,
 * separated by '&': "path~TEXT" (the path contains TEXT), "data~TEXT" (the bytes contain
 * TEXT), "data^TEXT" (start with it), "data=hex:HEX" (are exactly those bytes); "-" for none.
 * With LODEV_STOP_ARM, calls count only while the file it names exists, so that a test can
 * leave start-up out. Only a process whose name starts with "lodevd" stops (lodevd, and
 * lodevd-transfer; the N-th call counts in each process): the installer hooks lodevd starts
 * inherit the preload. The stop itself (getpid, gettid, tgkill) and the look at
 * LODEV_STOP_ARM (stat) are within lodevd-transfer's seccomp allow-list. */

#define MIN(a, b) ((a) < (b) ? (a) : (b))

/* Raw system calls: the log must not go through the calls this file interposes. */
static void fault_log(const char *kind, const char *path) {
        const char *log = getenv("LODEV_FAULT_LOG");
        char line[600];
        int fd, n;

        if (!log)
                return;
        fd = (int) syscall(SYS_openat, AT_FDCWD, log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC,
                           0600);
        if (fd < 0)
                return;
        n = snprintf(line, sizeof(line), "%s %s\n", kind, path);
        if (n > 0)
                (void) !syscall(SYS_write, fd, line, (size_t) MIN(n, (int) sizeof(line) - 1));
        syscall(SYS_close, fd);
}

static int fault_errno(const char *kind, const char *path) {
        const char *match = getenv("LODEV_FAULT_PATH"), *flag = getenv("LODEV_FAULT_FLAG");
        const char *e = getenv("LODEV_FAULT_ERRNO"), *calls = getenv("LODEV_FAULT_CALLS");
        struct stat st;

        if (!path || !match || !flag || !calls || !strstr(calls, kind) || !strstr(path, match))
                return 0;
        if (stat(flag, &st) < 0)
                return 0;
        fault_log(kind, path);
        return e ? atoi(e) : EIO;
}

static const char *fd_path(int fd, char buf[static 512]) {
        char link[64];
        ssize_t n;

        snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
        n = readlink(link, buf, 511);
        if (n < 0)
                return NULL;
        buf[n] = 0;
        return buf;
}

/* The errno to fail a call on fd with, 0 for none; cheap while nothing is armed. */
static int fault_errno_fd(const char *kind, int fd) {
        char buf[512];

        if (!getenv("LODEV_FAULT_CALLS") || !getenv("LODEV_FAULT_PATH"))
                return 0;
        return fault_errno(kind, fd_path(fd, buf));
}

typedef struct StopPoint {
        int parsed; /* 0 not yet, 1 armed, -1 none */
        char kind[32];
        char conditions[512];
        unsigned long n, seen;
        int after;
} StopPoint;

static StopPoint stop_point;

static void stop_point_parse(void) {
        const char *spec = getenv("LODEV_STOP_AT");
        char copy[700], *kind, *cond, *n, *when, *save = NULL;
        FILE *f;
        char comm[64] = "";

        stop_point.parsed = -1;
        f = fopen("/proc/self/comm", "re");
        if (f) {
                if (!fgets(comm, sizeof(comm), f))
                        comm[0] = 0;
                fclose(f);
        }
        if (!spec || strncmp(comm, "lodevd", 6) != 0 || strlen(spec) >= sizeof(copy))
                return;
        strcpy(copy, spec);
        kind = strtok_r(copy, "|", &save);
        cond = strtok_r(NULL, "|", &save);
        n = strtok_r(NULL, "|", &save);
        when = strtok_r(NULL, "|", &save);
        if (!kind || !cond || !n)
                return;
        snprintf(stop_point.kind, sizeof(stop_point.kind), "%s", kind);
        snprintf(stop_point.conditions, sizeof(stop_point.conditions), "%s",
                 strcmp(cond, "-") == 0 ? "" : cond);
        stop_point.n = strtoul(n, NULL, 10);
        stop_point.after = when && strcmp(when, "after") == 0;
        stop_point.parsed = 1;
}

static int hex_value(char c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        return -1;
}

/* One condition against the call's path and bytes. */
static int condition_holds(const char *c, size_t len, const char *path, const void *data,
                           size_t size) {
        if (len > 5 && strncmp(c, "path~", 5) == 0)
                return path && memmem(path, strlen(path), c + 5, len - 5) != NULL;
        if (len > 5 && strncmp(c, "data~", 5) == 0)
                return data && memmem(data, size, c + 5, len - 5) != NULL;
        if (len > 5 && strncmp(c, "data^", 5) == 0)
                return data && size >= len - 5 && memcmp(data, c + 5, len - 5) == 0;
        if (len > 9 && strncmp(c, "data=hex:", 9) == 0) {
                const unsigned char *d = data;
                size_t k = (len - 9) / 2;

                if (!data || size != k)
                        return 0;
                for (size_t i = 0; i < k; i++)
                        if (hex_value(c[9 + 2 * i]) * 16 + hex_value(c[10 + 2 * i]) != d[i])
                                return 0;
                return 1;
        }
        return 0;
}

/* Counts the call if it matches; true when this is the one to stop at. */
static int stop_point_hit(const char *kind, const char *path, const void *data, size_t size,
                          int after) {
        const char *c, *arm;
        struct stat st;

        if (stop_point.parsed == 0)
                stop_point_parse();
        if (stop_point.parsed < 0 || stop_point.after != after ||
            strcmp(stop_point.kind, kind) != 0 || stop_point.seen >= stop_point.n)
                return 0;
        for (c = stop_point.conditions; *c;) {
                const char *end = strchr(c, '&');
                size_t len = end ? (size_t) (end - c) : strlen(c);

                if (!condition_holds(c, len, path, data, size))
                        return 0;
                c += len + (end ? 1 : 0);
        }
        arm = getenv("LODEV_STOP_ARM");
        if (arm && stat(arm, &st) < 0)
                return 0;
        return ++stop_point.seen == stop_point.n;
}

static void stop_point_check(const char *kind, const char *path, const void *data, size_t size,
                             int after) {
        if (getenv("LODEV_STOP_AT") && stop_point_hit(kind, path, data, size, after))
                raise(SIGSTOP);
}

static void stop_point_check_fd(const char *kind, int fd, const void *data, size_t size,
                                int after) {
        char buf[512];

        if (!getenv("LODEV_STOP_AT"))
                return;
        if (stop_point.parsed == 0)
                stop_point_parse();
        /* The path only for a call of the kind waited for: writes to sockets are many. */
        if (stop_point.parsed > 0 && strcmp(stop_point.kind, kind) == 0)
                stop_point_check(kind, fd_path(fd, buf), data, size, after);
}

#define REAL(name) ((typeof(&name)) dlsym(RTLD_NEXT, #name))

/* A write-like call on fd: injected error first, then the stop points around the real call. */
#define FD_CALL(kind, stop_kind, fd, data, size, call)                                             \
        ({                                                                                         \
                int _e_ = fault_errno_fd(kind, fd);                                                \
                typeof(call) _r_;                                                                  \
                if (_e_) {                                                                         \
                        errno = _e_;                                                               \
                        _r_ = -1;                                                                  \
                } else {                                                                           \
                        stop_point_check_fd(stop_kind, fd, data, size, 0);                         \
                        _r_ = call;                                                                \
                        stop_point_check_fd(stop_kind, fd, data, size, 1);                         \
                }                                                                                  \
                _r_;                                                                               \
        })

ssize_t write(int fd, const void *buf, size_t n) {
        static typeof(&write) real;

        if (!real)
                real = REAL(write);
        return FD_CALL("write", "write", fd, buf, n, real(fd, buf, n));
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t offset) {
        static typeof(&pwrite) real;

        if (!real)
                real = REAL(pwrite);
        return FD_CALL("write", "write", fd, buf, n, real(fd, buf, n, offset));
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off64_t offset) {
        static typeof(&pwrite64) real;

        if (!real)
                real = REAL(pwrite64);
        return FD_CALL("write", "write", fd, buf, n, real(fd, buf, n, offset));
}

/* For vectored writes the stop conditions see the first buffer. */
ssize_t writev(int fd, const struct iovec *iov, int n) {
        static typeof(&writev) real;

        if (!real)
                real = REAL(writev);
        return FD_CALL("write", "write", fd, n > 0 ? iov[0].iov_base : NULL,
                       n > 0 ? iov[0].iov_len : 0, real(fd, iov, n));
}

ssize_t pwritev(int fd, const struct iovec *iov, int n, off_t offset) {
        static typeof(&pwritev) real;

        if (!real)
                real = REAL(pwritev);
        return FD_CALL("write", "write", fd, n > 0 ? iov[0].iov_base : NULL,
                       n > 0 ? iov[0].iov_len : 0, real(fd, iov, n, offset));
}

ssize_t pwritev64(int fd, const struct iovec *iov, int n, off64_t offset) {
        static typeof(&pwritev64) real;

        if (!real)
                real = REAL(pwritev64);
        return FD_CALL("write", "write", fd, n > 0 ? iov[0].iov_base : NULL,
                       n > 0 ? iov[0].iov_len : 0, real(fd, iov, n, offset));
}

ssize_t copy_file_range(int in, off64_t *in_off, int out, off64_t *out_off, size_t n,
                        unsigned flags) {
        static typeof(&copy_file_range) real;

        if (!real)
                real = REAL(copy_file_range);
        return FD_CALL("write", "write", out, NULL, 0, real(in, in_off, out, out_off, n, flags));
}

int fallocate(int fd, int mode, off_t offset, off_t len) {
        static typeof(&fallocate) real;

        if (!real)
                real = REAL(fallocate);
        return FD_CALL("write", "fallocate", fd, NULL, 0, real(fd, mode, offset, len));
}

int fallocate64(int fd, int mode, off64_t offset, off64_t len) {
        static typeof(&fallocate64) real;

        if (!real)
                real = REAL(fallocate64);
        return FD_CALL("write", "fallocate", fd, NULL, 0, real(fd, mode, offset, len));
}

int fsync(int fd) {
        static typeof(&fsync) real;

        if (!real)
                real = REAL(fsync);
        return FD_CALL("sync", "fsync", fd, NULL, 0, real(fd));
}

int fdatasync(int fd) {
        static typeof(&fdatasync) real;

        if (!real)
                real = REAL(fdatasync);
        return FD_CALL("sync", "fdatasync", fd, NULL, 0, real(fd));
}

/* A name relative to dir_fd as a path from /, as far as /proc/self/fd tells. */
static const char *at_path(int dir_fd, const char *name, char buf[static 512]) {
        char dir[512];

        if (!name || name[0] == '/' || dir_fd == AT_FDCWD || !fd_path(dir_fd, dir))
                return name;
        /* A path too long for buf is matched as the name alone. */
        if ((size_t) snprintf(buf, 512, "%.255s/%.255s", dir, name) >= 512)
                return name;
        return buf;
}

/* rename: the error for either name, the stop condition on the new one. */
static int rename_call(int from_dir, const char *from, int to_dir, const char *to,
                       int (*call)(void *), void *userdata) {
        char from_buf[512], to_buf[512];
        int e, r;

        if (getenv("LODEV_FAULT_CALLS") || getenv("LODEV_STOP_AT")) {
                from = at_path(from_dir, from, from_buf);
                to = at_path(to_dir, to, to_buf);
        }
        e = fault_errno("rename", from) ?: fault_errno("rename", to);
        if (e) {
                errno = e;
                return -1;
        }
        stop_point_check("rename", to, NULL, 0, 0);
        r = call(userdata);
        stop_point_check("rename", to, NULL, 0, 1);
        return r;
}

typedef struct RenameArgs {
        int from_dir, to_dir;
        const char *from, *to;
        unsigned flags;
} RenameArgs;

static int call_rename(void *userdata) {
        static typeof(&rename) real;
        RenameArgs *a = userdata;

        if (!real)
                real = REAL(rename);
        return real(a->from, a->to);
}

static int call_renameat(void *userdata) {
        static typeof(&renameat) real;
        RenameArgs *a = userdata;

        if (!real)
                real = REAL(renameat);
        return real(a->from_dir, a->from, a->to_dir, a->to);
}

static int call_renameat2(void *userdata) {
        static typeof(&renameat2) real;
        RenameArgs *a = userdata;

        if (!real)
                real = REAL(renameat2);
        return real(a->from_dir, a->from, a->to_dir, a->to, a->flags);
}

int rename(const char *from, const char *to) {
        return rename_call(AT_FDCWD, from, AT_FDCWD, to, call_rename,
                           &(RenameArgs) { .from = from, .to = to });
}

int renameat(int from_dir, const char *from, int to_dir, const char *to) {
        return rename_call(from_dir, from, to_dir, to, call_renameat,
                           &(RenameArgs) { from_dir, to_dir, from, to, 0 });
}

int renameat2(int from_dir, const char *from, int to_dir, const char *to, unsigned flags) {
        return rename_call(from_dir, from, to_dir, to, call_renameat2,
                           &(RenameArgs) { from_dir, to_dir, from, to, flags });
}

ssize_t send(int fd, const void *buf, size_t n, int flags) {
        static typeof(&send) real;
        ssize_t r;

        if (!real)
                real = REAL(send);
        stop_point_check("send", NULL, buf, n, 0);
        r = real(fd, buf, n, flags);
        stop_point_check("send", NULL, buf, n, 1);
        return r;
}

ssize_t recv(int fd, void *buf, size_t n, int flags) {
        static typeof(&recv) real;
        ssize_t r;

        if (!real)
                real = REAL(recv);
        r = real(fd, buf, n, flags);
        if (r > 0)
                stop_point_check("recv", NULL, buf, (size_t) r, 1);
        return r;
}

/* OpenSSL's, as libmosquitto calls them; looked up at the first call, so that processes
 * without libssl never need it. */
int SSL_write(void *ssl, const void *buf, int n);
int SSL_read(void *ssl, void *buf, int n);

int SSL_write(void *ssl, const void *buf, int n) {
        static int (*real)(void *, const void *, int);
        int r;

        if (!real)
                real = (int (*)(void *, const void *, int)) dlsym(RTLD_NEXT, "SSL_write");
        stop_point_check("ssl_write", NULL, buf, n > 0 ? (size_t) n : 0, 0);
        r = real(ssl, buf, n);
        if (r > 0)
                stop_point_check("ssl_write", NULL, buf, (size_t) r, 1);
        return r;
}

int SSL_read(void *ssl, void *buf, int n) {
        static int (*real)(void *, void *, int);
        int r;

        if (!real)
                real = (int (*)(void *, void *, int)) dlsym(RTLD_NEXT, "SSL_read");
        r = real(ssl, buf, n);
        if (r > 0)
                stop_point_check("ssl_read", NULL, buf, (size_t) r, 1);
        return r;
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
