/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <curl/curl.h>
#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include "config.h"
#include "http.h"
#include "log.h"
#include "util.h"

DEFINE_TRIVIAL_CLEANUP_FUNC(CURLU *, curl_url_cleanup);

typedef enum HttpMethod {
        HTTP_PUT,
        HTTP_GET,
} HttpMethod;

/* The client's own copy of HttpOptions. */
typedef struct Options {
        char *proxy;
        char *ca_file;
        bool allow_http;
        uint64_t max_rate;
        unsigned connect_timeout_sec;
        unsigned low_speed_time_sec;
        unsigned low_speed_limit;
} Options;

/* One curl socket and its io source, kept with curl_multi_assign(). */
typedef struct HttpSocket {
        sd_event_source *io;
        struct HttpSocket *prev, *next;
} HttpSocket;

struct HttpClient {
        sd_event *event;
        CURLM *multi;
        sd_event_source *timer;
        sd_event_source *defer;
        Options options;
        HttpTransfer *transfers;
        HttpSocket *sockets;
        /* Inside curl_multi_socket_action(): libcurl forbids removing a handle
         * from its own callbacks, so cancellations wait until it returns. */
        unsigned in_curl;
        bool need_reap;
};

struct HttpTransfer {
        HttpClient *client; /* NULL once detached for finished() */
        HttpTransfer *prev, *next;
        CURL *easy;
        struct curl_slist *headers;
        HttpMethod method;
        char *host; /* for logs: a presigned URL's query is a credential */
        char errbuf[CURL_ERROR_SIZE];

        /* PUT */
        int fd;
        uint64_t size;
        uint64_t read_pos;

        /* GET */
        uint64_t offset;
        uint64_t position; /* where the next body byte belongs in the resource */
        uint64_t delivered;
        uint64_t content_range_start;
        bool range_honoured;

        bool answered; /* the final answer's status is known */
        long status;
        bool success; /* 2xx */
        char *body;   /* start of a non-2xx body */
        size_t body_len;

        int local_error; /* our reason to abort, preferred over curl's code */
        const char *local_text;

        uint64_t last_done, last_total;

        HttpProgress progress;
        HttpFinished finished;
        HttpData data;
        void *userdata;
        bool canceled;
        bool finishing;
};

static void options_done(Options *o) {
        free(o->proxy);
        free(o->ca_file);
        *o = (Options){};
}

static int options_copy(Options *dst, const HttpOptions *o) {
        Options n = {
                .allow_http = o->allow_http,
                .max_rate = o->max_rate,
                .connect_timeout_sec = o->connect_timeout_sec ?: 30,
                .low_speed_time_sec = o->low_speed_time_sec ?: 60,
                .low_speed_limit = o->low_speed_limit ?: 1,
        };

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

/* libcurl's codes to negative errno, at the boundary; the text goes with it. */
static int transfer_errno(HttpTransfer *t, CURLcode code) {
        long os_errno = 0;

        if (code == CURLE_OK)
                return 0;
        if (t->local_error < 0)
                return t->local_error;

        switch (code) {
        case CURLE_COULDNT_CONNECT:
                (void) curl_easy_getinfo(t->easy, CURLINFO_OS_ERRNO, &os_errno);
                return os_errno > 0 ? -(int) os_errno : -ECONNREFUSED;
        case CURLE_COULDNT_RESOLVE_HOST:
        case CURLE_COULDNT_RESOLVE_PROXY:
                return -EHOSTUNREACH;
        case CURLE_OPERATION_TIMEDOUT:
                return -ETIMEDOUT;
        case CURLE_SSL_CONNECT_ERROR:
        case CURLE_PEER_FAILED_VERIFICATION:
        case CURLE_SSL_CACERT_BADFILE:
        case CURLE_SSL_CERTPROBLEM:
        case CURLE_SSL_CIPHER:
        case CURLE_SSL_ENGINE_NOTFOUND:
        case CURLE_SSL_ENGINE_SETFAILED:
        case CURLE_SSL_ENGINE_INITFAILED:
        case CURLE_SSL_SHUTDOWN_FAILED:
        case CURLE_SSL_CRL_BADFILE:
        case CURLE_SSL_ISSUER_ERROR:
        case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
        case CURLE_SSL_INVALIDCERTSTATUS:
        case CURLE_USE_SSL_FAILED:
                return -EPROTO;
        case CURLE_SEND_ERROR:
        case CURLE_RECV_ERROR:
        case CURLE_GOT_NOTHING:
        case CURLE_PARTIAL_FILE:
        case CURLE_HTTP2_STREAM:
                return -ECONNRESET;
        case CURLE_WEIRD_SERVER_REPLY:
        case CURLE_HTTP2:
        case CURLE_BAD_CONTENT_ENCODING:
        case CURLE_RANGE_ERROR:
                return -EBADMSG;
        case CURLE_TOO_MANY_REDIRECTS:
                return -ELOOP;
        case CURLE_OUT_OF_MEMORY:
                return -ENOMEM;
        case CURLE_UNSUPPORTED_PROTOCOL:
                return -EPROTONOSUPPORT;
        case CURLE_URL_MALFORMAT:
                return -EINVAL;
        case CURLE_ABORTED_BY_CALLBACK:
                return -ECANCELED;
        case CURLE_FILESIZE_EXCEEDED:
                return -EFBIG;
        default:
                return -EIO;
        }
}

static void transfer_unlink(HttpTransfer *t) {
        HttpClient *c = t->client;

        if (!c)
                return;
        if (t->prev)
                t->prev->next = t->next;
        else
                c->transfers = t->next;
        if (t->next)
                t->next->prev = t->prev;
        t->prev = t->next = NULL;
        t->client = NULL;
}

static HttpTransfer *transfer_free(HttpTransfer *t) {
        if (!t)
                return NULL;
        /* Should libcurl call back while the handle goes, nothing reaches the user. */
        t->canceled = true;
        if (t->client) {
                (void) curl_multi_remove_handle(t->client->multi, t->easy);
                transfer_unlink(t);
        }
        if (t->easy)
                curl_easy_cleanup(t->easy);
        curl_slist_free_all(t->headers);
        safe_close(t->fd);
        free(t->body);
        free(t->host);
        free(t);
        return NULL;
}
DEFINE_TRIVIAL_CLEANUP_FUNC(HttpTransfer *, transfer_free);

/* The final answer's status, once its headers are in. A 206 must be for the
 * range asked: bytes from elsewhere would be written at the wrong place. */
static void transfer_evaluate_answer(HttpTransfer *t) {
        long status = 0;

        if (t->answered)
                return;
        (void) curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
        if (status <= 0)
                return;
        t->answered = true;
        t->status = status;
        t->success = status >= 200 && status < 300;
        if (t->method != HTTP_GET || !t->success || t->offset == 0 || status != 206)
                return;
        if (t->content_range_start != t->offset) {
                t->local_error = -EBADMSG;
                t->local_text = "206 answer for a different range than asked";
                return;
        }
        t->range_honoured = true;
        t->position = t->offset;
}

static void transfer_keep_body(HttpTransfer *t, const char *p, size_t n) {
        size_t k;

        if (t->body_len >= HTTP_ERROR_BODY_MAX)
                return;
        if (!t->body) {
                t->body = malloc(HTTP_ERROR_BODY_MAX + 1);
                if (!t->body)
                        return; /* only diagnostics are lost */
        }
        k = MIN(n, HTTP_ERROR_BODY_MAX - t->body_len);
        memcpy(t->body + t->body_len, p, k);
        t->body_len += k;
        t->body[t->body_len] = '\0';
}

static size_t on_write(char *p, size_t size, size_t nmemb, void *userdata) {
        HttpTransfer *t = userdata;
        size_t n = size * nmemb;
        int r;

        if (t->canceled)
                return 0;
        transfer_evaluate_answer(t);
        if (t->local_error < 0)
                return 0;
        if (!t->success) {
                transfer_keep_body(t, p, n);
                return n;
        }
        if (t->method != HTTP_GET)
                return n;

        r = t->data(t, t->position, p, n, t->userdata);
        if (t->canceled)
                return 0;
        if (r < 0) {
                t->local_error = r;
                t->local_text = "aborted by the receiver";
                return 0;
        }
        t->position += n;
        t->delivered += n;
        return n;
}

/* Only for a GET with a range: where the 206's Content-Range starts. */
static size_t on_header(char *p, size_t size, size_t nmemb, void *userdata) {
        static const char field[] = "Content-Range:";
        HttpTransfer *t = userdata;
        size_t n = size * nmemb;
        char line[128], *s, *end;
        unsigned long long v;

        if (t->canceled)
                return 0;
        /* Each answer (a redirect, the final one) starts with its status line. */
        if (n >= 5 && strncasecmp(p, "HTTP/", 5) == 0) {
                t->content_range_start = UINT64_MAX;
                return n;
        }
        if (n < sizeof(field) - 1 || n >= sizeof(line) ||
            strncasecmp(p, field, sizeof(field) - 1) != 0)
                return n;

        memcpy(line, p + sizeof(field) - 1, n - (sizeof(field) - 1));
        line[n - (sizeof(field) - 1)] = '\0';
        s = line + strspn(line, " \t");
        if (strncasecmp(s, "bytes", 5) != 0)
                return n;
        s += 5;
        s += strspn(s, " \t");
        if (*s < '0' || *s > '9')
                return n;
        errno = 0;
        v = strtoull(s, &end, 10);
        if (errno == 0 && *end == '-')
                t->content_range_start = v;
        return n;
}

static size_t on_read(char *buf, size_t size, size_t nitems, void *userdata) {
        HttpTransfer *t = userdata;
        size_t n = size * nitems;
        ssize_t k;

        if (t->canceled)
                return CURL_READFUNC_ABORT;
        if (t->read_pos >= t->size)
                return 0;
        n = (size_t) MIN((uint64_t) n, t->size - t->read_pos);
        do
                k = pread(t->fd, buf, n, (off_t) t->read_pos);
        while (k < 0 && errno == EINTR);
        if (k < 0) {
                t->local_error = -errno;
                t->local_text = "failed to read the file being sent";
                return CURL_READFUNC_ABORT;
        }
        if (k == 0) {
                /* Content-Length promised more: never send a short body. */
                t->local_error = -EIO;
                t->local_text = "the file being sent is shorter than its size";
                return CURL_READFUNC_ABORT;
        }
        t->read_pos += (uint64_t) k;
        return (size_t) k;
}

/* libcurl rewinds to resend the body (a reused connection that died before
 * the request went out); pread() makes that free. */
static int on_seek(void *userdata, curl_off_t offset, int origin) {
        HttpTransfer *t = userdata;

        if (origin != SEEK_SET || offset < 0 || (uint64_t) offset > t->size)
                return CURL_SEEKFUNC_FAIL;
        t->read_pos = (uint64_t) offset;
        return CURL_SEEKFUNC_OK;
}

static int on_xferinfo(void *userdata, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow) {
        HttpTransfer *t = userdata;
        uint64_t done, total;

        if (t->canceled)
                return 1;
        if (!t->progress)
                return 0;
        if (t->method == HTTP_PUT) {
                done = (uint64_t) MAX(ulnow, (curl_off_t) 0);
                total = t->size;
        } else {
                /* An error body is no progress of the download. */
                if (!t->answered || !t->success)
                        return 0;
                done = t->position;
                total = dltotal > 0 ? (t->range_honoured ? t->offset : 0) + (uint64_t) dltotal : 0;
        }
        if (done == t->last_done && total == t->last_total)
                return 0;
        t->last_done = done;
        t->last_total = total;
        t->progress(t, done, total, t->userdata);
        return t->canceled ? 1 : 0;
}

static void fd_set_cloexec(int fd) {
        int flags = fcntl(fd, F_GETFD);

        if (flags >= 0 && !(flags & FD_CLOEXEC))
                (void) fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
}

#define SOCKETS_MAX 64

/* The process's sockets that lack FD_CLOEXEC. */
static int inheritable_sockets(int fds[static SOCKETS_MAX], size_t *ret_n) {
        _cleanup_(closedirp) DIR *d = opendir("/proc/self/fd");
        struct dirent *de;
        size_t n = 0;

        if (!d)
                return -errno;
        while ((de = readdir(d))) {
                struct stat st;
                int fd, flags;

                if (de->d_name[0] == '.')
                        continue;
                fd = atoi(de->d_name);
                if (fd == dirfd(d) || fstat(fd, &st) < 0 || !S_ISSOCK(st.st_mode))
                        continue;
                flags = fcntl(fd, F_GETFD);
                if (flags < 0 || (flags & FD_CLOEXEC))
                        continue;
                if (n >= SOCKETS_MAX)
                        return -E2BIG;
                fds[n++] = fd;
        }
        *ret_n = n;
        return 0;
}

/* libcurl (7.88) makes the socketpair behind curl_multi_wakeup() in
 * curl_multi_init() without SOCK_CLOEXEC: mark what appeared meanwhile.
 * Nothing else runs then, so the new sockets can only be libcurl's. */
static CURLM *multi_init_cloexec(void) {
        int before[SOCKETS_MAX], after[SOCKETS_MAX];
        size_t n_before = 0, n_after = 0;
        CURLM *m;
        int r;

        r = inheritable_sockets(before, &n_before);
        m = curl_multi_init();
        if (r < 0 || !m || inheritable_sockets(after, &n_after) < 0) {
                if (r < 0)
                        log_debug_errno(r, "Cannot list open sockets, libcurl's may leak: %m");
                return m;
        }
        for (size_t i = 0; i < n_after; i++) {
                bool known = false;

                for (size_t j = 0; j < n_before && !known; j++)
                        known = before[j] == after[i];
                if (!known)
                        fd_set_cloexec(after[i]);
        }
        return m;
}

/* Close-on-exec from the start: the installer hook must not inherit a socket. */
static curl_socket_t on_open_socket(void *userdata, curlsocktype purpose, struct curl_sockaddr *a) {
        int fd = socket(a->family, a->socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->protocol);
        return fd < 0 ? CURL_SOCKET_BAD : fd;
}

static void client_reap(HttpClient *c) {
        HttpTransfer *t, *next;

        if (!c->need_reap)
                return;
        c->need_reap = false;
        for (t = c->transfers; t; t = next) {
                next = t->next;
                if (t->canceled)
                        transfer_free(t);
        }
}

static void client_socket_action(HttpClient *c, curl_socket_t fd, int action) {
        int running = 0;
        CURLMcode m;

        c->in_curl++;
        m = curl_multi_socket_action(c->multi, fd, action, &running);
        c->in_curl--;
        if (m != CURLM_OK)
                log_debug("curl_multi_socket_action: %s", curl_multi_strerror(m));
        client_reap(c);
        /* Finished transfers are handed back from the defer source, outside libcurl. */
        (void) sd_event_source_set_enabled(c->defer, SD_EVENT_ONESHOT);
}

static int on_io(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        int action = 0;

        if (revents & EPOLLIN)
                action |= CURL_CSELECT_IN;
        if (revents & EPOLLOUT)
                action |= CURL_CSELECT_OUT;
        if (revents & (EPOLLERR | EPOLLHUP))
                action |= CURL_CSELECT_ERR;
        client_socket_action(userdata, fd, action);
        return 0;
}

static int on_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        client_socket_action(userdata, CURL_SOCKET_TIMEOUT, 0);
        return 0;
}

static void socket_free(HttpClient *c, HttpSocket *s) {
        if (s->prev)
                s->prev->next = s->next;
        else
                c->sockets = s->next;
        if (s->next)
                s->next->prev = s->prev;
        sd_event_source_disable_unref(s->io);
        free(s);
}

static int on_curl_socket(CURL *easy, curl_socket_t fd, int what, void *userdata, void *socketp) {
        HttpClient *c = userdata;
        HttpSocket *s = socketp;
        uint32_t events = 0;
        int r;

        if (what == CURL_POLL_REMOVE) {
                if (s)
                        socket_free(c, s);
                return 0;
        }
        if (what & CURL_POLL_IN)
                events |= EPOLLIN;
        if (what & CURL_POLL_OUT)
                events |= EPOLLOUT;

        if (s) {
                r = sd_event_source_set_io_events(s->io, events);
                if (r >= 0)
                        r = sd_event_source_set_enabled(s->io, events ? SD_EVENT_ON : SD_EVENT_OFF);
                if (r < 0) {
                        log_debug_errno(r, "Failed to update a curl socket's events: %m");
                        return -1;
                }
                return 0;
        }

        /* Ours are close-on-exec already; the threaded resolver's socketpair is not. */
        fd_set_cloexec(fd);
        s = calloc(1, sizeof(*s));
        if (!s)
                return -1;
        r = sd_event_add_io(c->event, &s->io, fd, events, on_io, c);
        if (r < 0) {
                log_debug_errno(r, "Failed to watch a curl socket: %m");
                free(s);
                return -1;
        }
        (void) sd_event_source_set_description(s->io, "curl-io");
        if (!events)
                (void) sd_event_source_set_enabled(s->io, SD_EVENT_OFF);
        if (curl_multi_assign(c->multi, fd, s) != CURLM_OK) {
                sd_event_source_disable_unref(s->io);
                free(s);
                return -1;
        }
        s->next = c->sockets;
        if (s->next)
                s->next->prev = s;
        c->sockets = s;
        return 0;
}

static int on_curl_timer(CURLM *multi, long timeout_ms, void *userdata) {
        HttpClient *c = userdata;
        uint64_t now;
        int r;

        if (timeout_ms < 0) {
                (void) sd_event_source_set_enabled(c->timer, SD_EVENT_OFF);
                return 0;
        }
        r = sd_event_now(c->event, CLOCK_MONOTONIC, &now);
        if (r >= 0)
                r = sd_event_source_set_time(c->timer, now + (uint64_t) timeout_ms * 1000);
        if (r >= 0)
                r = sd_event_source_set_enabled(c->timer, SD_EVENT_ONESHOT);
        if (r < 0) {
                log_debug_errno(r, "Failed to arm the curl timer: %m");
                return -1;
        }
        return 0;
}

static void transfer_finish(HttpTransfer *t, CURLcode code) {
        HttpClient *c = t->client;
        curl_off_t sent = 0;
        HttpResult r = {};

        t->finishing = true;
        (void) curl_multi_remove_handle(c->multi, t->easy);
        /* Detached: finished() may free the client, or cancel anything else. */
        transfer_unlink(t);

        transfer_evaluate_answer(t);
        r.status = t->status;
        r.error = transfer_errno(t, code);
        if (r.error < 0)
                r.error_text =
                        t->local_text ?: (t->errbuf[0] ? t->errbuf : curl_easy_strerror(code));
        if (t->answered && !t->success && t->body_len > 0)
                r.body = t->body;
        if (t->method == HTTP_PUT) {
                (void) curl_easy_getinfo(t->easy, CURLINFO_SIZE_UPLOAD_T, &sent);
                r.bytes = (uint64_t) MAX(sent, (curl_off_t) 0);
        } else
                r.bytes = t->delivered;
        r.range_honoured = t->range_honoured;

        log_debug("HTTP %s %s: status %ld, %" PRIu64 " bytes%s%s (curl: %s)",
                  t->method == HTTP_PUT ? "PUT" : "GET", t->host, r.status, r.bytes,
                  r.error_text ? ", " : "", strempty(r.error_text), curl_easy_strerror(code));

        if (t->finished)
                t->finished(t, &r, t->userdata);
        transfer_free(t);
}

/* One finished transfer per dispatch: its callback may free the client, after
 * which nothing here may touch it. */
static int on_defer(sd_event_source *s, void *userdata) {
        HttpClient *c = userdata;
        HttpTransfer *t = NULL;
        CURLMsg *msg;
        CURLcode code;
        int left = 0;

        for (;;) {
                msg = curl_multi_info_read(c->multi, &left);
                if (!msg)
                        return 0;
                if (msg->msg == CURLMSG_DONE)
                        break;
        }
        code = msg->data.result;
        (void) curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **) &t);
        if (left > 0)
                (void) sd_event_source_set_enabled(c->defer, SD_EVENT_ONESHOT);
        assert(t);
        if (t->canceled)
                transfer_free(t);
        else
                transfer_finish(t, code);
        return 0;
}

/* libcurl and the multi handle are set up for the first transfer: a gateway that never
 * uploads nor downloads does not pay for them (some 4 MiB of resident memory). */
static int multi_ensure(HttpClient *c) {
        static bool curl_initialized;
        CURLMcode m = CURLM_OK;

        if (c->multi)
                return 0;
        if (!curl_initialized) {
                CURLcode k = curl_global_init(CURL_GLOBAL_DEFAULT);
                if (k != CURLE_OK) {
                        log_debug("curl_global_init: %s", curl_easy_strerror(k));
                        return -EIO;
                }
                curl_initialized = true;
        }
        c->multi = multi_init_cloexec();
        if (!c->multi)
                return -ENOMEM;
        if (m == CURLM_OK)
                m = curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket);
        if (m == CURLM_OK)
                m = curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
        if (m == CURLM_OK)
                m = curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
        if (m == CURLM_OK)
                m = curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
        if (m != CURLM_OK) {
                log_debug("curl_multi_setopt: %s", curl_multi_strerror(m));
                curl_multi_cleanup(c->multi);
                c->multi = NULL;
                return -EIO;
        }
        return 0;
}

int http_client_new(sd_event *event, const HttpOptions *o, HttpClient **ret) {
        _cleanup_(http_client_freep) HttpClient *c = NULL;
        int r;

        assert(event);
        assert(o);
        assert(ret);

        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->event = sd_event_ref(event);
        r = options_copy(&c->options, o);
        if (r < 0)
                return r;

        r = sd_event_add_time(event, &c->timer, CLOCK_MONOTONIC, 0, 1000, on_timer, c);
        if (r < 0)
                return r;
        (void) sd_event_source_set_enabled(c->timer, SD_EVENT_OFF);
        (void) sd_event_source_set_description(c->timer, "curl-timer");
        r = sd_event_add_defer(event, &c->defer, on_defer, c);
        if (r < 0)
                return r;
        (void) sd_event_source_set_enabled(c->defer, SD_EVENT_OFF);
        (void) sd_event_source_set_description(c->defer, "curl-finished");

        *ret = TAKE_PTR(c);
        return 0;
}

HttpClient *http_client_free(HttpClient *c) {
        if (!c)
                return NULL;
        assert(c->in_curl == 0);
        while (c->transfers)
                transfer_free(c->transfers);
        /* Closing cached connections reports their sockets removed: c stays whole until then. */
        if (c->multi)
                curl_multi_cleanup(c->multi);
        while (c->sockets)
                socket_free(c, c->sockets);
        sd_event_source_disable_unref(c->timer);
        sd_event_source_disable_unref(c->defer);
        options_done(&c->options);
        sd_event_unref(c->event);
        free(c);
        return NULL;
}

int http_client_set_options(HttpClient *c, const HttpOptions *o) {
        assert(c);
        assert(o);

        if (c->in_curl > 0)
                return -EBUSY;
        return options_copy(&c->options, o);
}

/* Parses the URL (libcurl's parser, the one that will use it) and applies the
 * scheme policy before anything is contacted. Returns the host for logs. */
static int url_check(const Options *o, const char *url, char **ret_host) {
        _cleanup_(curl_url_cleanupp) CURLU *u = curl_url();
        char *scheme = NULL, *host = NULL;
        CURLUcode k;
        bool allowed;

        if (!u)
                return -ENOMEM;
        k = curl_url_set(u, CURLUPART_URL, url, 0);
        if (k == CURLUE_OUT_OF_MEMORY)
                return -ENOMEM;
        if (k == CURLUE_UNSUPPORTED_SCHEME)
                return log_debug_errno(EPROTONOSUPPORT, "Refusing a URL with an unknown scheme.");
        if (k != CURLUE_OK)
                return log_debug_errno(EINVAL, "Invalid URL: %s", curl_url_strerror(k));

        if (curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK)
                return -EINVAL;
        allowed = strcasecmp(scheme, "https") == 0 ||
                  (o->allow_http && strcasecmp(scheme, "http") == 0);
        if (!allowed) {
                log_debug("Refusing a %s:// URL (%s).", scheme,
                          strcasecmp(scheme, "http") == 0 ? "http.allow_http is off"
                                                          : "only http and https");
                curl_free(scheme);
                return -EPROTONOSUPPORT;
        }
        curl_free(scheme);

        if (curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK)
                return -EINVAL;
        *ret_host = strdup(host);
        curl_free(host);
        return *ret_host ? 0 : -ENOMEM;
}

#define SETOPT(easy, option, value)                                                                \
        do {                                                                                       \
                CURLcode _k_ = curl_easy_setopt(easy, option, value);                              \
                if (_k_ != CURLE_OK) {                                                             \
                        log_debug("curl_easy_setopt(" #option "): %s", curl_easy_strerror(_k_));   \
                        return _k_ == CURLE_OUT_OF_MEMORY ? -ENOMEM : -EIO;                        \
                }                                                                                  \
        } while (0)

static int transfer_new(HttpClient *c, HttpMethod method, const char *url, HttpTransfer **ret) {
        _cleanup_(transfer_freep) HttpTransfer *t = NULL;
        const Options *o = &c->options;
        const char *protocols = o->allow_http ? "http,https" : "https";
        int r;

        if (c->in_curl > 0)
                return -EBUSY;
        r = multi_ensure(c);
        if (r < 0)
                return r;

        t = calloc(1, sizeof(*t));
        if (!t)
                return -ENOMEM;
        t->method = method;
        t->fd = -EBADF;
        t->content_range_start = UINT64_MAX;

        r = url_check(o, url, &t->host);
        if (r < 0)
                return r;

        t->easy = curl_easy_init();
        if (!t->easy)
                return -ENOMEM;

        SETOPT(t->easy, CURLOPT_URL, url);
        SETOPT(t->easy, CURLOPT_PRIVATE, (char *) t);
        SETOPT(t->easy, CURLOPT_ERRORBUFFER, t->errbuf);
        SETOPT(t->easy, CURLOPT_NOSIGNAL, 1L);
        SETOPT(t->easy, CURLOPT_USERAGENT, "lodevd/" LODEV_VERSION);
#if LIBCURL_VERSION_NUM >= 0x075500 /* 7.85.0 */
        SETOPT(t->easy, CURLOPT_PROTOCOLS_STR, protocols);
        SETOPT(t->easy, CURLOPT_REDIR_PROTOCOLS_STR, protocols);
#else
        SETOPT(t->easy, CURLOPT_PROTOCOLS,
               o->allow_http ? (long) (CURLPROTO_HTTP | CURLPROTO_HTTPS) : (long) CURLPROTO_HTTPS);
        SETOPT(t->easy, CURLOPT_REDIR_PROTOCOLS,
               o->allow_http ? (long) (CURLPROTO_HTTP | CURLPROTO_HTTPS) : (long) CURLPROTO_HTTPS);
        (void) protocols;
#endif

        SETOPT(t->easy, CURLOPT_SSL_VERIFYPEER, 1L);
        SETOPT(t->easy, CURLOPT_SSL_VERIFYHOST, 2L);
        SETOPT(t->easy, CURLOPT_SSLVERSION, (long) CURL_SSLVERSION_TLSv1_2);
        if (o->ca_file) {
                /* The configured bundle alone, not the system's directory besides. */
                SETOPT(t->easy, CURLOPT_CAINFO, o->ca_file);
                SETOPT(t->easy, CURLOPT_CAPATH, (char *) NULL);
        }

        /* "" disables proxies, the environment's included; NOPROXY "" makes
         * libcurl ignore no_proxy too. */
        SETOPT(t->easy, CURLOPT_PROXY, o->proxy ?: "");
        SETOPT(t->easy, CURLOPT_NOPROXY, "");

        SETOPT(t->easy, CURLOPT_CONNECTTIMEOUT, (long) o->connect_timeout_sec);
        SETOPT(t->easy, CURLOPT_LOW_SPEED_LIMIT, (long) o->low_speed_limit);
        SETOPT(t->easy, CURLOPT_LOW_SPEED_TIME, (long) o->low_speed_time_sec);
        if (o->max_rate > 0) {
                curl_off_t rate = (curl_off_t) MIN(o->max_rate, (uint64_t) INT64_MAX);
                SETOPT(t->easy, CURLOPT_MAX_SEND_SPEED_LARGE, rate);
                SETOPT(t->easy, CURLOPT_MAX_RECV_SPEED_LARGE, rate);
        }
        SETOPT(t->easy, CURLOPT_TCP_KEEPALIVE, 1L);

        SETOPT(t->easy, CURLOPT_OPENSOCKETFUNCTION, on_open_socket);
        SETOPT(t->easy, CURLOPT_WRITEFUNCTION, on_write);
        SETOPT(t->easy, CURLOPT_WRITEDATA, t);
        SETOPT(t->easy, CURLOPT_XFERINFOFUNCTION, on_xferinfo);
        SETOPT(t->easy, CURLOPT_XFERINFODATA, t);
        SETOPT(t->easy, CURLOPT_NOPROGRESS, 0L);

        *ret = TAKE_PTR(t);
        return 0;
}

static int transfer_start(HttpClient *c, HttpTransfer *t) {
        CURLMcode m;

        m = curl_multi_add_handle(c->multi, t->easy);
        if (m != CURLM_OK) {
                log_debug("curl_multi_add_handle: %s", curl_multi_strerror(m));
                return m == CURLM_OUT_OF_MEMORY ? -ENOMEM : -EIO;
        }
        t->client = c;
        t->next = c->transfers;
        if (t->next)
                t->next->prev = t;
        c->transfers = t;
        return 0;
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
        _cleanup_(transfer_freep) HttpTransfer *t = NULL;
        _cleanup_free_ char *ct = NULL;
        struct curl_slist *l;
        int r;

        assert(c);
        assert(url);

        if (fd < 0 || size > INT64_MAX || !header_value_is_valid(content_type))
                return -EINVAL;

        r = transfer_new(c, HTTP_PUT, url, &t);
        if (r < 0)
                return r;
        t->fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        if (t->fd < 0)
                return -errno;
        t->size = size;
        t->progress = progress;
        t->finished = finished;
        t->userdata = userdata;

        ct = strdup_printf("Content-Type: %s", content_type);
        if (!ct)
                return -ENOMEM;
        /* An empty "Expect:" drops libcurl's 100-continue wait (up to a second). */
        l = curl_slist_append(NULL, ct);
        if (!l)
                return -ENOMEM;
        t->headers = l;
        if (!curl_slist_append(t->headers, "Expect:"))
                return -ENOMEM;

        /* With a known size libcurl sends Content-Length, never chunked (S3 refuses that). */
        SETOPT(t->easy, CURLOPT_UPLOAD, 1L);
        SETOPT(t->easy, CURLOPT_INFILESIZE_LARGE, (curl_off_t) size);
        SETOPT(t->easy, CURLOPT_READFUNCTION, on_read);
        SETOPT(t->easy, CURLOPT_READDATA, t);
        SETOPT(t->easy, CURLOPT_SEEKFUNCTION, on_seek);
        SETOPT(t->easy, CURLOPT_SEEKDATA, t);
        SETOPT(t->easy, CURLOPT_HTTPHEADER, t->headers);

        r = transfer_start(c, t);
        if (r < 0)
                return r;
        log_debug("HTTP PUT to %s: %" PRIu64 " bytes of %s.", t->host, size, content_type);
        if (ret)
                *ret = t;
        TAKE_PTR(t);
        return 0;
}

int http_get(HttpClient *c, const char *url, uint64_t offset, uint64_t max_body, HttpData data,
             HttpProgress progress, HttpFinished finished, void *userdata, HttpTransfer **ret) {
        _cleanup_(transfer_freep) HttpTransfer *t = NULL;
        char range[32];
        int r;

        assert(c);
        assert(url);
        assert(data);

        if (offset > INT64_MAX || max_body > INT64_MAX)
                return -EINVAL;

        r = transfer_new(c, HTTP_GET, url, &t);
        if (r < 0)
                return r;
        t->offset = offset;
        t->data = data;
        t->progress = progress;
        t->finished = finished;
        t->userdata = userdata;

        SETOPT(t->easy, CURLOPT_HTTPGET, 1L);
        /* Firmware may sit behind a CDN that redirects; PROTOCOLS bind the targets. */
        SETOPT(t->easy, CURLOPT_FOLLOWLOCATION, 1L);
        SETOPT(t->easy, CURLOPT_MAXREDIRS, 5L);
        if (max_body > 0)
                SETOPT(t->easy, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t) max_body);
        if (offset > 0) {
                /* CURLOPT_RANGE rather than RESUME_FROM: a server that ignores
                 * the range is no error; the caller gets the body from 0. */
                snprintf(range, sizeof(range), "%" PRIu64 "-", offset);
                SETOPT(t->easy, CURLOPT_RANGE, range);
                SETOPT(t->easy, CURLOPT_HEADERFUNCTION, on_header);
                SETOPT(t->easy, CURLOPT_HEADERDATA, t);
        }

        r = transfer_start(c, t);
        if (r < 0)
                return r;
        log_debug("HTTP GET from %s from byte %" PRIu64 ".", t->host, offset);
        if (ret)
                *ret = t;
        TAKE_PTR(t);
        return 0;
}

void http_transfer_cancel(HttpTransfer *t) {
        if (!t || t->finishing || t->canceled)
                return;
        if (t->client && t->client->in_curl > 0) {
                /* Inside libcurl: its callbacks for t now abort, and the handle
                 * goes once curl_multi_socket_action() returns. */
                t->canceled = true;
                t->client->need_reap = true;
                return;
        }
        transfer_free(t);
}

bool http_transfer_range_honoured(const HttpTransfer *t) {
        return t && t->range_honoured;
}
