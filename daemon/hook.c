/* SPDX-License-Identifier: MIT */
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "hook.h"
#include "util.h"

extern char **environ;

struct Hook {
        sd_event *event;
        HookCallbacks cb;
        void *userdata;
        pid_t pid;
        bool timed_out;
        sd_event_source *child;
        sd_event_source *timer; /* timeout, then the SIGKILL grace */
        sd_event_source *err_source, *progress_source;
        int err_fd, progress_fd;
        char err_buf[HOOK_LINE_MAX + 1], progress_buf[64];
        size_t err_len, progress_len;
        bool err_skip, progress_skip; /* the rest of an over-long line */
        char *last_line;
};

static void hook_line(Hook *h, char *line) {
        char *copy;

        strstrip(line);
        if (!*line)
                return;
        if (h->cb.line)
                h->cb.line(h, line, h->userdata);
        copy = strdup(line);
        if (copy) {
                free(h->last_line);
                h->last_line = copy;
        }
}

static void progress_line(Hook *h, char *line) {
        char *end;
        long v;

        strstrip(line);
        errno = 0;
        v = strtol(line, &end, 10);
        if (end == line || errno != 0 || (*end && !streq(end, "%")))
                return; /* not a percentage: ignored, as the hook contract says lines "N" */
        if (h->cb.progress)
                h->cb.progress(h, (unsigned) MIN(MAX(v, 0L), 100L), h->userdata);
}

/* Reads what is there (the fds are non-blocking) and splits lines. Returns false at EOF or
 * on error, when the source goes. */
static bool drain(Hook *h, int fd, char *buf, size_t size, size_t *len, bool *skip,
                  void (*handle)(Hook *h, char *line)) {
        for (;;) {
                char chunk[4096];
                ssize_t n = read(fd, chunk, sizeof(chunk));

                if (n < 0)
                        return errno == EAGAIN || errno == EINTR;
                if (n == 0) {
                        if (*len > 0 && !*skip) {
                                buf[*len] = 0;
                                handle(h, buf);
                        }
                        *len = 0;
                        return false;
                }
                for (ssize_t i = 0; i < n; i++) {
                        char c = chunk[i];

                        if (c == '\n') {
                                if (!*skip) {
                                        buf[*len] = 0;
                                        handle(h, buf);
                                }
                                *len = 0;
                                *skip = false;
                        } else if (*skip)
                                continue;
                        else if (*len + 1 < size)
                                buf[(*len)++] = c;
                        else {
                                /* Keep the head of an over-long line, drop the rest. */
                                buf[*len] = 0;
                                handle(h, buf);
                                *len = 0;
                                *skip = true;
                        }
                }
        }
}

static int on_err(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Hook *h = userdata;

        if (!drain(h, fd, h->err_buf, sizeof(h->err_buf), &h->err_len, &h->err_skip, hook_line)) {
                h->err_source = sd_event_source_disable_unref(h->err_source);
                h->err_fd = safe_close(h->err_fd);
        }
        return 0;
}

static int on_progress(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Hook *h = userdata;

        if (!drain(h, fd, h->progress_buf, sizeof(h->progress_buf), &h->progress_len,
                   &h->progress_skip, progress_line)) {
                h->progress_source = sd_event_source_disable_unref(h->progress_source);
                h->progress_fd = safe_close(h->progress_fd);
        }
        return 0;
}

static int on_timeout(sd_event_source *s, uint64_t usec, void *userdata) {
        Hook *h = userdata;

        if (h->timed_out) {
                /* The grace is over. */
                (void) kill(-h->pid, SIGKILL);
                return 0;
        }
        h->timed_out = true;
        /* The whole group: a script's children go with it. */
        (void) kill(-h->pid, SIGTERM);
        (void) sd_event_source_set_time_relative(s, HOOK_KILL_GRACE_USEC);
        (void) sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
        return 0;
}

static void close_pipes(Hook *h) {
        h->err_source = sd_event_source_disable_unref(h->err_source);
        h->progress_source = sd_event_source_disable_unref(h->progress_source);
        h->err_fd = safe_close(h->err_fd);
        h->progress_fd = safe_close(h->progress_fd);
}

static int on_child(sd_event_source *s, const siginfo_t *si, void *userdata) {
        Hook *h = userdata;
        HookEnd end;
        int code;

        /* What the child wrote before it ended is in the pipes now; a grandchild that keeps
         * them open does not hold up the result. */
        if (h->err_fd >= 0)
                (void) drain(h, h->err_fd, h->err_buf, sizeof(h->err_buf), &h->err_len,
                             &h->err_skip, hook_line);
        if (h->progress_fd >= 0)
                (void) drain(h, h->progress_fd, h->progress_buf, sizeof(h->progress_buf),
                             &h->progress_len, &h->progress_skip, progress_line);
        if (h->err_len > 0 && !h->err_skip) {
                h->err_buf[h->err_len] = 0;
                hook_line(h, h->err_buf);
                h->err_len = 0;
        }
        close_pipes(h);
        h->timer = sd_event_source_disable_unref(h->timer);
        h->child = sd_event_source_disable_unref(h->child);
        h->pid = 0;

        if (h->timed_out) {
                end = HOOK_TIMEOUT;
                code = 0;
        } else if (si->si_code == CLD_EXITED) {
                end = HOOK_EXITED;
                code = si->si_status;
        } else {
                end = HOOK_KILLED;
                code = si->si_status;
        }
        h->cb.ended(h, end, code, h->last_line, h->userdata);
        return 0;
}

/* Closes every descriptor from first up. close_range() where the kernel has it (5.9); else
 * those /proc/self/fd lists, read with raw getdents64 (no malloc after fork()); else every
 * number up to the descriptor limit. Async-signal-safe. */
static void close_from(int first) {
        struct rlimit rl;
        long max;
        int dir;

        if (close_range((unsigned) first, ~0U, 0) >= 0)
                return;
        dir = open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dir >= 0) {
                char buf[4096];
                long n;

                while ((n = syscall(SYS_getdents64, dir, buf, sizeof(buf))) > 0)
                        for (long off = 0; off < n;) {
                                struct dirent64 *de = (struct dirent64 *) (buf + off);
                                int fd = 0;
                                bool number = de->d_name[0] != '\0';

                                for (const char *p = de->d_name; *p; p++) {
                                        if (*p < '0' || *p > '9' || fd > 100000000) {
                                                number = false;
                                                break;
                                        }
                                        fd = fd * 10 + (*p - '0');
                                }
                                if (number && fd >= first && fd != dir)
                                        (void) close(fd);
                                off += de->d_reclen;
                        }
                (void) close(dir);
                if (n == 0)
                        return;
        }
        max = getrlimit(RLIMIT_NOFILE, &rl) >= 0 && rl.rlim_cur != RLIM_INFINITY
                      ? (long) MIN(rl.rlim_cur, (rlim_t) 1 << 20)
                      : 65536;
        for (long fd = first; fd < max; fd++)
                (void) close((int) fd);
}

/* Only async-signal-safe calls from here on: lodevd has threads (the resolver's). */
__attribute__((noreturn)) static void child(char *const argv[], char *const envp[], int err_fd,
                                            int progress_fd) {
        sigset_t all;
        int null_fd;

        /* The loop blocked these for signalfd; the hook must get them as any program. */
        sigemptyset(&all);
        (void) sigprocmask(SIG_SETMASK, &all, NULL);
        for (int sig = 1; sig < _NSIG; sig++)
                if (sig != SIGKILL && sig != SIGSTOP)
                        (void) signal(sig, SIG_DFL);
        (void) setpgid(0, 0);
        rlimit_nofile_restore();

        null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (null_fd < 0 || dup2(null_fd, STDIN_FILENO) < 0 || dup2(err_fd, STDERR_FILENO) < 0)
                _exit(127);
        if (progress_fd >= 0) {
                if (progress_fd == HOOK_PROGRESS_FD) {
                        if (fcntl(progress_fd, F_SETFD, 0) < 0)
                                _exit(127);
                } else if (dup2(progress_fd, HOOK_PROGRESS_FD) < 0)
                        _exit(127);
                close_from(HOOK_PROGRESS_FD + 1);
        } else
                close_from(STDERR_FILENO + 1);

        execve(argv[0], argv, envp);
        {
                static const char msg[] = "cannot execute the program (execve failed)\n";
                (void) !write(STDERR_FILENO, msg, sizeof(msg) - 1);
        }
        _exit(127);
}

/* What of lodevd's own environment a child gets (SPEC §6): what a program needs to run and
 * find its way, and the unit's directories. Everything else stays out: NOTIFY_SOCKET and
 * WATCHDOG_* (a child must not speak for lodevd to systemd), LODEV_* (a variable lodevd got
 * must not shadow the job's), and whatever else a unit or a shell put there. */
static bool env_allowed(const char *entry) {
        static const char *const names[] = {
                "PATH", "LANG", "LANGUAGE", "TZ", "HOME", "USER", "LOGNAME", "TMPDIR",
                "DBUS_SYSTEM_BUS_ADDRESS", "RUNTIME_DIRECTORY", "STATE_DIRECTORY",
                "CONFIGURATION_DIRECTORY",
        };
        const char *eq = strchr(entry, '=');
        size_t len;

        if (!eq)
                return false;
        len = (size_t) (eq - entry);
        if (len > 3 && strncmp(entry, "LC_", 3) == 0)
                return true;
        for (size_t i = 0; i < ELEMENTSOF(names); i++)
                if (strlen(names[i]) == len && strncmp(entry, names[i], len) == 0)
                        return true;
        return false;
}

/* The allowed part of environ, then env (which no entry of environ can shadow: none of the
 * allowed names is set by env), pointers only. */
static char **build_env(char *const env[]) {
        static char default_path[] = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin";
        size_t n_environ = 0, n_env = 0, n = 0;
        bool has_path = false;
        char **envp;

        while (environ && environ[n_environ])
                n_environ++;
        while (env && env[n_env])
                n_env++;
        envp = calloc(n_environ + n_env + 2, sizeof(char *));
        if (!envp)
                return NULL;
        for (size_t i = 0; i < n_environ; i++)
                if (env_allowed(environ[i])) {
                        has_path = has_path || startswith(environ[i], "PATH=");
                        envp[n++] = environ[i];
                }
        if (!has_path)
                envp[n++] = default_path;
        for (size_t i = 0; i < n_env; i++)
                envp[n++] = env[i];
        return envp;
}

int hook_spawn(sd_event *event, char *const argv[], char *const env[], uint64_t timeout_usec,
               bool with_progress, const HookCallbacks *cb, void *userdata, Hook **ret) {
        _cleanup_close_ int err_r = -EBADF, err_w = -EBADF, prog_r = -EBADF, prog_w = -EBADF;
        _cleanup_free_ char **envp = NULL;
        int p[2], r;
        Hook *h;
        pid_t pid;

        if (!argv || !argv[0] || argv[0][0] != '/' || !cb || !cb->ended)
                return -EINVAL;
        if (pipe2(p, O_CLOEXEC) < 0)
                return -errno;
        err_r = p[0];
        err_w = p[1];
        if (with_progress) {
                if (pipe2(p, O_CLOEXEC) < 0)
                        return -errno;
                prog_r = p[0];
                prog_w = p[1];
        }
        if (fcntl(err_r, F_SETFL, O_NONBLOCK) < 0 ||
            (prog_r >= 0 && fcntl(prog_r, F_SETFL, O_NONBLOCK) < 0))
                return -errno;

        envp = build_env(env);
        h = envp ? calloc(1, sizeof(*h)) : NULL;
        if (!h)
                return -ENOMEM;
        *h = (Hook) { .event = sd_event_ref(event), .cb = *cb, .userdata = userdata,
                      .err_fd = -EBADF, .progress_fd = -EBADF };

        pid = fork();
        if (pid < 0) {
                r = -errno;
                hook_free(h, false);
                return r;
        }
        if (pid == 0)
                child(argv, envp, err_w, prog_w);

        /* Also here, so that a kill of the group right after fork() finds it. */
        (void) setpgid(pid, pid);
        h->pid = pid;
        h->err_fd = TAKE_FD(err_r);
        h->progress_fd = TAKE_FD(prog_r);
        r = sd_event_add_child(event, &h->child, pid, WEXITED, on_child, h);
        if (r >= 0)
                r = sd_event_add_io(event, &h->err_source, h->err_fd, EPOLLIN, on_err, h);
        if (r >= 0 && h->progress_fd >= 0)
                r = sd_event_add_io(event, &h->progress_source, h->progress_fd, EPOLLIN,
                                    on_progress, h);
        if (r >= 0 && timeout_usec > 0)
                r = sd_event_add_time_relative(event, &h->timer, CLOCK_MONOTONIC, timeout_usec,
                                               0, on_timeout, h);
        if (r < 0) {
                (void) kill(-pid, SIGKILL);
                (void) waitpid(pid, NULL, 0);
                h->pid = 0;
                hook_free(h, false);
                return r;
        }
        (void) sd_event_source_set_description(h->child, "hook-child");
        *ret = h;
        return 0;
}

Hook *hook_free(Hook *h, bool kill_group) {
        if (!h)
                return NULL;
        if (h->pid > 0 && kill_group)
                (void) kill(-h->pid, SIGTERM);
        sd_event_source_disable_unref(h->child);
        sd_event_source_disable_unref(h->timer);
        close_pipes(h);
        free(h->last_line);
        sd_event_unref(h->event);
        free(h);
        return NULL;
}

pid_t hook_pid(const Hook *h) {
        return h ? h->pid : 0;
}
