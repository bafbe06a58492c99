/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <fcntl.h>
#include <seccomp.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <termios.h>

#include "transfer-sandbox.h"
#include "util.h"

DEFINE_TRIVIAL_CLEANUP_FUNC(scmp_filter_ctx, seccomp_release);

/* Names, not numbers: libseccomp resolves them for the architecture, and a name the
 * architecture lacks (mmap2 on x86-64, newfstatat on 32-bit ARM) is skipped. */
static const char *const allowed[] = {
        /* I/O on descriptors it holds */
        "read", "readv", "write", "writev", "pread64", "pwrite64", "preadv", "pwritev",
        "lseek", "_llseek", "close", "fsync", "fdatasync", "ftruncate", "ftruncate64",
        "fadvise64", "fadvise64_64", "fcntl", "fcntl64", "dup", "dup3",
        "fstat", "fstat64", "newfstatat", "fstatat64", "statx", "stat", "stat64", "lstat",
        "lstat64", "access", "faccessat", "faccessat2", "readlink", "readlinkat", "getdents64",
        "fstatfs", "fstatfs64", "statfs", "statfs64",
        /* memory */
        "brk", "mmap", "mmap2", "munmap", "mremap", "mprotect", "madvise",
        /* threads */
        "clone", "clone3", "futex", "futex_time64", "set_robust_list", "get_robust_list", "rseq",
        "set_tid_address", "gettid", "getpid", "getppid", "tgkill", "sched_getaffinity",
        "sched_yield", "exit", "exit_group",
        /* signals and time */
        "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigreturn", "sigaltstack",
        "restart_syscall", "clock_gettime", "clock_gettime64", "clock_getres",
        "clock_getres_time64", "gettimeofday", "time", "nanosleep", "clock_nanosleep",
        "clock_nanosleep_time64",
        /* waiting */
        "poll", "ppoll", "ppoll_time64", "select", "_newselect", "pselect6", "pselect6_time64",
        "epoll_create", "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait",
        "epoll_pwait2", "eventfd2", "pipe", "pipe2",
        /* the network, on sockets it creates (the family is checked below) */
        "connect", "getsockopt", "setsockopt", "getsockname", "getpeername", "sendto",
        "recvfrom", "sendmsg", "recvmsg", "sendmmsg", "recvmmsg", "recvmmsg_time64", "send",
        "recv", "shutdown", "socketpair",
        /* what libc and OpenSSL ask */
        "getrandom", "getuid", "geteuid", "getgid", "getegid", "getuid32", "geteuid32",
        "getgid32", "getegid32", "uname", "getrlimit", "ugetrlimit", "prlimit64", "sysinfo",
        "prctl",
};

static int allow_name(scmp_filter_ctx ctx, const char *name) {
        int nr = seccomp_syscall_resolve_name(name);

        if (nr == __NR_SCMP_ERROR)
                return 0;
        return seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0);
}

int transfer_sandbox_apply(void) {
        _cleanup_(seccomp_releasep) scmp_filter_ctx ctx = NULL;
        static const int families[] = { AF_UNIX, AF_INET, AF_INET6, AF_NETLINK };
        static const unsigned long ioctls[] = { FIONREAD, FIONBIO, TCGETS };
        int r;

        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
                return -errno;
#if defined(__SANITIZE_ADDRESS__)
        /* AddressSanitizer's leak check stops the process with ptrace() at exit: a test build
         * runs without the filter. */
        return 0;
#endif
        ctx = seccomp_init(SCMP_ACT_KILL_PROCESS);
        if (!ctx)
                return -ENOMEM;
        for (size_t i = 0; i < ELEMENTSOF(allowed); i++) {
                r = allow_name(ctx, allowed[i]);
                if (r < 0)
                        return r;
        }
        /* datum_b is unused by SCMP_CMP_EQ; given, so that every field is initialised. */
        for (size_t i = 0; i < ELEMENTSOF(families); i++) {
                r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(socket), 1,
                                     SCMP_A0(SCMP_CMP_EQ, (scmp_datum_t) families[i], 0));
                if (r < 0)
                        return r;
        }
        for (size_t i = 0; i < ELEMENTSOF(ioctls); i++) {
                r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(ioctl), 1,
                                     SCMP_A1(SCMP_CMP_EQ, (scmp_datum_t) ioctls[i], 0));
                if (r < 0)
                        return r;
        }
        /* Files are opened read-only, never created or truncated. */
        r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(openat), 1,
                             SCMP_A2(SCMP_CMP_MASKED_EQ,
                                     (scmp_datum_t) (O_ACCMODE | O_CREAT | O_TRUNC), 0));
        if (r < 0)
                return r;
        /* Only where open(2) exists (not on arm64); its flags are the second argument. */
        if (seccomp_syscall_resolve_name("open") != __NR_SCMP_ERROR)
                r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(open), 1,
                                     SCMP_A1(SCMP_CMP_MASKED_EQ,
                                             (scmp_datum_t) (O_ACCMODE | O_CREAT | O_TRUNC), 0));
        if (r < 0)
                return r;
        return seccomp_load(ctx);
}
