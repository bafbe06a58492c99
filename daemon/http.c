/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <spawn.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include "config.h"
#include "fileio.h"
#include "http.h"
#include "transfer-proto.h"
#include "util.h"

/* The fds the helper finds its socket and its file on (lodevd-transfer.c). */
#define HELPER_CONTROL_FD 3
#define HELPER_FILE_FD 4

typedef struct Options {
        char *helper;
        char *proxy;
        char *ca_file;
        bool allow_http;
        uint64_t max_rate;
        unsigned connect_timeout_sec;
        unsigned low_speed_time_sec;
        unsigned low_speed_limit;
        unsigned silence_timeout_sec;
} Options;

struct HttpClient {
        sd_event *event;
        Options options;
        HttpTransfer *runs; /* running, and canceled ones not reaped yet */
};

struct HttpTransfer {
        HttpClient *client; /* NULL once detached for finished() */
        HttpTransfer *prev, *next;
        pid_t pid;
        int sock;
        sd_event_source *child, *io, *timer;
        uint64_t silence_usec;
        TransferReader reader;
        HttpProgress progress;
        HttpSynced synced_cb;
        HttpFinished finished;
        void *userdata;

        bool exited;   /* reaped */
        int exit_code; /* si_code and si_status once exited */
        int exit_status;
        bool eof;      /* the socket is drained to its end */
        bool canceled; /* no callback any more; freed once reaped */
        unsigned busy; /* inside one of our handlers: freeing waits for its end */
        int failure;   /* our reason to stop the helper */
        const char *failure_text;

        /* What the reports said. */
        bool answered;
        long status;
        uint64_t start;
        uint64_t synced;
        char *body;
        char sha256[65];
        bool done;
        int done_error;
        uint64_t done_bytes;
        char *done_text;
};

static void options_done(Options *o) {
        free(o->helper);
        free(o->proxy);
        free(o->ca_file);
        *o = (Options) {};
}

static int options_copy(Options *dst, const HttpOptions *o) {
        const char *helper = o->helper ?: getenv("LODEVD_TRANSFER_PATH");
        Options n = {
                .allow_http = o->allow_http,
                .max_rate = o->max_rate,
                .connect_timeout_sec = o->connect_timeout_sec ?: 30,
                .low_speed_time_sec = o->low_speed_time_sec ?: 60,
                .low_speed_limit = o->low_speed_limit ?: 1,
        };

        n.silence_timeout_sec = o->silence_timeout_sec
                                        ?: MAX(n.connect_timeout_sec, n.low_speed_time_sec) + 30;
        if (!(n.helper = strdup(!isempty(helper) ? helper : LODEV_TRANSFER_HELPER)))
                goto oom;
        if (!isempty(o->proxy) && !(n.proxy = strdup(o->proxy)))
                goto oom;
        if (!isempty(o->ca_file) && !(n.ca_file = strdup(o->ca_file)))
                goto oom;
        options_done(dst);
        *dst = n;
        return 0;
oom:
        options_done(&n);
        return -ENOMEM;
}

static void run_unlink(HttpTransfer *run) {
        HttpClient *c = run->client;

        if (!c)
                return;
        if (run->prev)
                run->prev->next = run->next;
        else
                c->runs = run->next;
        if (run->next)
                run->next->prev = run->prev;
        run->prev = run->next = NULL;
        run->client = NULL;
}

static void run_stop_io(HttpTransfer *run) {
        run->io = sd_event_source_disable_unref(run->io);
        run->timer = sd_event_source_disable_unref(run->timer);
        run->sock = safe_close(run->sock);
}

static HttpTransfer *run_free(HttpTransfer *run) {
        if (!run)
                return NULL;
        run_unlink(run);
        if (run->pid > 0 && !run->exited) {
                /* Only from http_client_free(): the helper goes now, and is reaped. */
                (void) kill(-run->pid, SIGKILL);
                (void) waitpid(run->pid, NULL, 0);
        }
        run_stop_io(run);
        run->child = sd_event_source_disable_unref(run->child);
        free(run->body);
        free(run->done_text);
        free(run);
        return NULL;
}

/* Stops the helper for a reason of ours; the end comes when it is reaped. */
static void run_fail(HttpTransfer *run, int error, const char *text) {
        if (run->failure == 0) {
                run->failure = error;
                run->failure_text = text;
        }
        if (run->pid > 0 && !run->exited)
                (void) kill(-run->pid, SIGKILL);
        run_stop_io(run);
        run->eof = true;
}

static void run_finish(HttpTransfer *run) {
        HttpResult r = {
                .status = run->answered ? run->status : 0,
                .start = run->start,
                .range_honoured = run->answered && run->status == 206 && run->start > 0,
                .synced = run->synced,
        };
        char text[128];

        if (run->failure < 0) {
                r.error = run->failure;
                r.error_text = run->failure_text;
        } else if (!run->done) {
                r.error = -ECONNABORTED;
                if (run->exit_code == CLD_EXITED)
                        snprintf(text, sizeof(text),
                                 "the transfer helper exited with status %d before its report",
                                 run->exit_status);
                else
                        snprintf(text, sizeof(text), "the transfer helper was killed by signal %s",
                                 sigabbrev_np(run->exit_status) ?: "?");
                r.error_text = text;
        } else {
                r.error = run->done_error;
                r.error_text = r.error < 0 ? (run->done_text ?: strerror(-r.error)) : NULL;
                r.bytes = run->done_bytes;
                if (r.error == 0 && r.status >= 200 && r.status < 300 && run->sha256[0])
                        r.sha256 = run->sha256;
        }
        if (r.status > 0 && (r.status < 200 || r.status >= 300))
                r.body = run->body;

        /* Detached: finished() may free the client, or cancel anything else. */
        run_unlink(run);
        run->canceled = true; /* nothing more reaches the caller */
        if (run->finished)
                run->finished(run, &r, run->userdata);
}

/* At the end of each of our handlers: the run ends, or goes, when it may. */
static void run_settle(HttpTransfer *run) {
        assert(run->busy > 0);
        if (--run->busy > 0)
                return;
        if (run->canceled) {
                if (run->exited)
                        run_free(run);
                return;
        }
        if (run->exited && run->eof) {
                run_finish(run);
                run_free(run);
        }
}

static int on_report(const TransferReport *rep, void *userdata) {
        HttpTransfer *run = userdata;

        switch (rep->type) {
        case TRANSFER_REPORT_ANSWER:
                run->answered = true;
                run->status = rep->status;
                run->start = rep->a;
                /* A 2xx body goes into the file from its start: what was synced past it is
                 * gone. Any other answer leaves the file alone. */
                if (rep->status >= 200 && rep->status < 300)
                        run->synced = MIN(run->synced, rep->a);
                break;
        case TRANSFER_REPORT_PROGRESS:
                if (run->progress)
                        run->progress(run, rep->a, rep->b, run->userdata);
                break;
        case TRANSFER_REPORT_SYNCED:
                run->synced = rep->a;
                if (run->synced_cb)
                        run->synced_cb(run, rep->a, run->userdata);
                break;
        case TRANSFER_REPORT_BODY:
                free(run->body);
                run->body = strdup(rep->text);
                break;
        case TRANSFER_REPORT_SHA256:
                memcpy(run->sha256, rep->text, sizeof(run->sha256) - 1);
                break;
        case TRANSFER_REPORT_DONE:
                run->done = true;
                run->done_error = rep->error;
                run->done_bytes = rep->b;
                if (rep->text)
                        run->done_text = strdup(rep->text);
                break;
        default:
                break;
        }
        /* A callback canceled the run: no more of its reports. */
        return run->canceled ? -ECANCELED : 0;
}

/* Reads what the socket holds; at its end, eof. */
static void run_read(HttpTransfer *run) {
        char buf[16384];

        while (run->sock >= 0 && !run->canceled) {
                ssize_t n = read(run->sock, buf, sizeof(buf));
                int r;

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0 && errno == EAGAIN)
                        return;
                if (n <= 0) {
                        r = n < 0 ? -errno : transfer_reader_end(&run->reader);
                        if (r == -EBADMSG)
                                run_fail(run, -ECONNABORTED,
                                         "the transfer helper ended in the middle of a report");
                        run_stop_io(run);
                        run->eof = true;
                        return;
                }
                if (run->timer)
                        (void) sd_event_source_set_time_relative(run->timer, run->silence_usec);
                r = transfer_reader_feed(&run->reader, buf, (size_t) n, on_report, run);
                if (r == -ECANCELED && run->canceled)
                        return;
                if (r < 0) {
                        run_fail(run, -ECONNABORTED,
                                 "the transfer helper wrote a malformed report");
                        return;
                }
        }
}

static int on_io(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        HttpTransfer *run = userdata;

        run->busy++;
        run_read(run);
        run_settle(run);
        return 0;
}

static int on_child(sd_event_source *s, const siginfo_t *si, void *userdata) {
        HttpTransfer *run = userdata;

        run->busy++;
        run->exited = true;
        run->exit_code = si->si_code;
        run->exit_status = si->si_status;
        /* Everything it wrote is in the socket now: read it to its end. The socket is
         * non-blocking, and its writer is gone. */
        if (!run->canceled && !run->eof)
                run_read(run);
        run_stop_io(run);
        run->eof = true;
        run_settle(run);
        return 0;
}

static int on_silence(sd_event_source *s, uint64_t usec, void *userdata) {
        HttpTransfer *run = userdata;

        run->busy++;
        run_fail(run, -ETIMEDOUT, "the transfer helper stopped reporting");
        run_settle(run);
        return 0;
}

static int spawn_helper(const char *path, int sock, int fd, pid_t *ret) {
        posix_spawn_file_actions_t fa;
        posix_spawnattr_t attr;
        sigset_t none, all;
        char *argv[] = { (char *) "lodevd-transfer", NULL };
        char *envp[] = { NULL };
        int r;

        /* Sources above the targets, so that no dup2() lands on another's source. */
        _cleanup_close_ int s = fcntl(sock, F_DUPFD_CLOEXEC, HELPER_FILE_FD + 1);
        _cleanup_close_ int f = fcntl(fd, F_DUPFD_CLOEXEC, HELPER_FILE_FD + 1);
        if (s < 0 || f < 0)
                return -errno;

        sigemptyset(&none);
        sigfillset(&all);
        r = posix_spawn_file_actions_init(&fa);
        if (r != 0)
                return -r;
        r = posix_spawnattr_init(&attr);
        if (r != 0) {
                posix_spawn_file_actions_destroy(&fa);
                return -r;
        }
        /* dup2() clears close-on-exec on the copies; everything else of lodevd is
         * close-on-exec already, and closefrom makes sure of it. */
        if (r == 0)
                r = posix_spawn_file_actions_adddup2(&fa, s, HELPER_CONTROL_FD);
        if (r == 0)
                r = posix_spawn_file_actions_adddup2(&fa, f, HELPER_FILE_FD);
        if (r == 0)
                r = posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
        if (r == 0)
                r = posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
        if (r == 0)
                r = posix_spawn_file_actions_addclosefrom_np(&fa, HELPER_FILE_FD + 1);
        /* Its own process group, to be killed as one; the signal mask and dispositions of a
         * fresh program, not the loop's blocked signals. */
        if (r == 0)
                r = posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK |
                                                            POSIX_SPAWN_SETSIGDEF);
        if (r == 0)
                r = posix_spawnattr_setpgroup(&attr, 0);
        if (r == 0)
                r = posix_spawnattr_setsigmask(&attr, &none);
        if (r == 0)
                r = posix_spawnattr_setsigdefault(&attr, &all);
        if (r == 0)
                r = posix_spawn(ret, path, &fa, &attr, argv, envp);
        posix_spawnattr_destroy(&attr);
        posix_spawn_file_actions_destroy(&fa);
        return -r;
}

static int run_start(HttpClient *c, const TransferRequest *q, int fd, uint64_t durable,
                     HttpProgress progress, HttpSynced synced, HttpFinished finished,
                     void *userdata,
                     HttpTransfer **ret) {
        _cleanup_free_ char *request = NULL;
        _cleanup_close_ int theirs = -EBADF;
        HttpTransfer *run;
        int p[2], r;

        if (fd < 0)
                return -EINVAL;
        r = transfer_request_format(q, &request);
        if (r < 0)
                return r;
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, p) < 0)
                return -errno;
        theirs = p[1];

        run = calloc(1, sizeof(*run));
        if (!run) {
                safe_close(p[0]);
                return -ENOMEM;
        }
        run->sock = p[0];
        run->synced = durable;
        run->progress = progress;
        run->synced_cb = synced;
        run->finished = finished;
        run->userdata = userdata;
        run->silence_usec = (uint64_t) c->options.silence_timeout_sec * 1000000;

        /* The request is small: it fits the socket's buffer and goes in one write. */
        r = write_full(run->sock, request, strlen(request));
        if (r >= 0 && shutdown(run->sock, SHUT_WR) < 0)
                r = -errno;
        if (r >= 0 && fcntl(run->sock, F_SETFL, O_NONBLOCK) < 0)
                r = -errno;
        if (r >= 0)
                r = spawn_helper(c->options.helper, theirs, fd, &run->pid);
        if (r < 0) {
                run_free(run);
                return r;
        }
        theirs = safe_close(theirs);

        r = sd_event_add_child(c->event, &run->child, run->pid, WEXITED, on_child, run);
        if (r >= 0)
                r = sd_event_add_io(c->event, &run->io, run->sock, EPOLLIN, on_io, run);
        if (r >= 0)
                r = sd_event_add_time_relative(c->event, &run->timer, CLOCK_MONOTONIC,
                                               run->silence_usec, 0, on_silence, run);
        if (r < 0) {
                run_free(run); /* kills and reaps */
                return r;
        }
        (void) sd_event_source_set_description(run->child, "transfer-helper");
        (void) sd_event_source_set_description(run->io, "transfer-reports");
        (void) sd_event_source_set_description(run->timer, "transfer-silence");

        run->client = c;
        run->next = c->runs;
        if (run->next)
                run->next->prev = run;
        c->runs = run;
        if (ret)
                *ret = run;
        return 0;
}

static TransferRequest request_base(const Options *o, TransferMethod method, const char *url) {
        return (TransferRequest) {
                .method = method,
                .url = (char *) url,
                .ca_file = o->ca_file,
                .proxy = o->proxy,
                .allow_http = o->allow_http,
                .max_rate = o->max_rate,
                .connect_timeout_sec = o->connect_timeout_sec,
                .low_speed_time_sec = o->low_speed_time_sec,
                .low_speed_limit = o->low_speed_limit,
        };
}

/* The scheme policy before anything starts: a refused URL never reaches a helper. */
static int url_check(const Options *o, const char *url) {
        if (isempty(url))
                return -EINVAL;
        if (strncasecmp(url, "https://", 8) == 0)
                return 0;
        if (o->allow_http && strncasecmp(url, "http://", 7) == 0)
                return 0;
        return -EPROTONOSUPPORT;
}

static bool header_value_is_valid(const char *s) {
        if (isempty(s))
                return false;
        for (; *s; s++)
                if ((unsigned char) *s < ' ' || *s == 0x7f)
                        return false;
        return true;
}

int http_put_fd(HttpClient *c, const char *url, int fd, uint64_t size, const char *content_type,
                HttpProgress progress, HttpFinished finished, void *userdata, HttpTransfer **ret) {
        TransferRequest q;
        int r;

        assert(c);
        if (!header_value_is_valid(content_type) || size > INT64_MAX)
                return -EINVAL;
        r = url_check(&c->options, url);
        if (r < 0)
                return r;
        q = request_base(&c->options, TRANSFER_PUT, url);
        q.content_type = (char *) content_type;
        q.size = size;
        return run_start(c, &q, fd, 0, progress, NULL, finished, userdata, ret);
}

int http_get_fd(HttpClient *c, const char *url, int fd, const HttpGet *g, HttpProgress progress,
                HttpSynced synced, HttpFinished finished, void *userdata, HttpTransfer **ret) {
        TransferRequest q;
        int r;

        assert(c);
        assert(g);
        r = url_check(&c->options, url);
        if (r < 0)
                return r;
        q = request_base(&c->options, TRANSFER_GET, url);
        q.offset = g->offset;
        q.max_size = g->max_size;
        q.sha256 = g->sha256;
        q.sync_bytes = g->sync_bytes;
        q.sync_ms = (g->sync_usec + 999) / 1000;
        /* The prefix is durable already: the caller said so. */
        return run_start(c, &q, fd, g->offset, progress, synced, finished, userdata, ret);
}

int http_hash_fd(HttpClient *c, int fd, uint64_t length, HttpFinished finished, void *userdata,
                 HttpTransfer **ret) {
        TransferRequest q = { .method = TRANSFER_HASH, .offset = length };

        assert(c);
        return run_start(c, &q, fd, 0, NULL, NULL, finished, userdata, ret);
}

void http_transfer_cancel(HttpTransfer *run) {
        if (!run || run->canceled)
                return;
        run->canceled = true;
        if (!run->exited)
                (void) kill(-run->pid, SIGKILL);
        run_stop_io(run);
        /* Reaped by on_child(), which then frees it, or by http_client_free(); at once if
         * that happened already. It stays on the client's list until then. */
        if (run->exited && run->busy == 0)
                run_free(run);
}

pid_t http_transfer_pid(const HttpTransfer *run) {
        return run ? run->pid : 0;
}

int http_client_new(sd_event *event, const HttpOptions *o, HttpClient **ret) {
        HttpClient *c;
        int r;

        assert(event);
        assert(o);
        assert(ret);

        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        r = options_copy(&c->options, o);
        if (r < 0) {
                free(c);
                return r;
        }
        c->event = sd_event_ref(event);
        *ret = c;
        return 0;
}

HttpClient *http_client_free(HttpClient *c) {
        if (!c)
                return NULL;
        while (c->runs)
                run_free(c->runs);
        options_done(&c->options);
        sd_event_unref(c->event);
        free(c);
        return NULL;
}

int http_client_set_options(HttpClient *c, const HttpOptions *o) {
        assert(c);
        assert(o);
        return options_copy(&c->options, o);
}
