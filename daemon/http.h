/* SPDX-License-Identifier: MIT */
#pragma once

/* HTTP transfers for lodevd, each run by lodevd-transfer, the transfer helper, in a process of
 * its own (lodevd(8), TRANSFER HELPER): this module starts it, hands it its request and the
 * file, reads its reports on the manager's sd-event loop and hands back what callers need.
 * lodevd itself never links libcurl. The module knows nothing of uploads, jobs or D-Bus.
 *
 * The helper is started with posix_spawn() (no copy of lodevd's memory), in a process group
 * of its own, with an empty environment and only its socket (fd 3), the file (fd 4) and
 * /dev/null as stdin and stdout (stderr is lodevd's). A helper that dies, stops reporting for
 * longer than its silence timeout, or writes anything but well-formed reports in order is
 * killed (its whole group) and ends the transfer with a network error: -ECONNABORTED, or
 * -ETIMEDOUT for the silence. Canceling kills it too; freeing the client kills and reaps every
 * helper it started.
 *
 * Fixed policy, carried out by the helper whatever the options: TLS 1.2 or newer with the
 * peer's certificate and host name verified; User-Agent "lodevd/VERSION"; redirects followed
 * for GET only (at most 5, to the allowed schemes only), never for PUT (a presigned URL is
 * signed for its host). */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <systemd/sd-event.h>

typedef struct HttpClient HttpClient;
typedef struct HttpTransfer HttpTransfer;

typedef struct HttpOptions {
        /* The helper's path. NULL: $LODEVD_TRANSFER_PATH when set (tests), else the one
         * installed in /usr/libexec/lodevd. */
        const char *helper;
        /* http.proxy. NULL or "": no proxy at all, and the environment is ignored (the helper
         * gets none). Otherwise every request goes through this proxy (a URL libcurl
         * understands: http://, https://, socks5h://..., credentials allowed). */
        const char *proxy;
        /* Plain http:// URLs only when true (tests); otherwise https only, for the first
         * request and for redirects. */
        bool allow_http;
        /* Bytes per second per transfer, for sending and receiving; 0: no cap. */
        uint64_t max_rate;
        /* The CA bundle servers are verified against, the only one trusted then; NULL or "":
         * the system's default store. */
        const char *ca_file;
        /* 0 for any of these: the defaults 30 s, 60 s and 1 byte/s. Below low_speed_limit
         * bytes/s for low_speed_time_sec seconds the transfer is stalled: -ETIMEDOUT. */
        unsigned connect_timeout_sec;
        unsigned low_speed_time_sec;
        unsigned low_speed_limit;
        /* A helper silent this long is hung; 0: the larger of the two timeouts above plus 30 s
         * (it reports at least every 250 ms while bytes move). */
        unsigned silence_timeout_sec;
} HttpOptions;

/* How a transfer ended. Strings belong to the run and stay valid only while finished()
 * runs. */
typedef struct HttpResult {
        /* 0 when a complete HTTP answer arrived (whatever its status); else a negative errno:
         * -ETIMEDOUT (connect timeout, stalled, or a silent helper), -ECONNREFUSED,
         * -ECONNRESET (the connection broke or closed early, also mid-body), -EHOSTUNREACH,
         * -EPROTO (TLS, including a certificate that does not verify), -EBADMSG (a malformed
         * answer or a 206 for another range), -ELOOP (too many redirects), -EPROTONOSUPPORT
         * (a redirect to a scheme not allowed), -EFBIG (more than max_size), -EIO or another
         * errno of the file (read, write, sync), -ECONNABORTED (the helper died or misbehaved),
         * -ENOMEM. */
        int error;
        /* The helper's (or our) explanation when error < 0, NULL otherwise. */
        const char *error_text;
        /* HTTP status of the final answer; 0 when none arrived. Can be set while error < 0. */
        long status;
        /* For a non-2xx answer: its first bytes (S3 answers XML with <Code> and <Message>);
         * NULL for 2xx or when the answer had no body. */
        const char *body;
        /* Payload bytes of this attempt: sent for a PUT, written for a GET. */
        uint64_t bytes;
        /* GET: where the body started in the resource: the offset asked for when the server
         * honoured the range (206), 0 when it sent the whole resource (the file was then
         * truncated and written from 0). */
        uint64_t start;
        bool range_honoured;
        /* GET: [0, synced) of the file is on disk, whatever the outcome. */
        uint64_t synced;
        /* GET with sha256 that ended with a 2xx and no error: the SHA-256 of the whole file,
         * 64 lower-case hex digits; NULL otherwise. */
        const char *sha256;
} HttpResult;

/* Exactly once per transfer not canceled, from the event loop. The transfer is freed when it
 * returns. Anything is allowed from here, freeing the client included. */
typedef void (*HttpFinished)(HttpTransfer *t, const HttpResult *r, void *userdata);

/* PUT: bytes sent of the size. GET: the position in the resource of its total size (0 while
 * unknown); for a 2xx only. At most four times a second. */
typedef void (*HttpProgress)(HttpTransfer *t, uint64_t done, uint64_t total, void *userdata);

/* GET: [0, offset) of the file is durable. Lower than before only after the server ignored
 * the range (the file started over). */
typedef void (*HttpSynced)(HttpTransfer *t, uint64_t offset, void *userdata);

/* Options are copied. */
int http_client_new(sd_event *event, const HttpOptions *o, HttpClient **ret);
/* Kills and reaps every helper without callbacks. NULL-safe. */
HttpClient *http_client_free(HttpClient *c);
static inline void http_client_freep(HttpClient **c) {
        http_client_free(*c);
}
/* Replaces the options (SIGHUP); running transfers keep the ones they started with. On
 * failure the old options stay. */
int http_client_set_options(HttpClient *c, const HttpOptions *o);

/* PUT size bytes of fd (a regular file, read from offset 0 whatever the fd's own offset)
 * with "Content-Length: size", exactly that Content-Type (non-empty, no control characters),
 * never chunked. A file shorter than size fails the transfer with -EIO. Errors here, with no
 * callback to follow: -EINVAL (an empty URL, a bad content type), -EPROTONOSUPPORT (a
 * scheme not allowed), -E2BIG (a URL too long for the helper's request), -ENOMEM, or what
 * starting the helper failed with. On success *ret (if given) is the run, valid until
 * finished() returns or it is canceled. */
int http_put_fd(HttpClient *c, const char *url, int fd, uint64_t size, const char *content_type,
                HttpProgress progress, HttpFinished finished, void *userdata, HttpTransfer **ret);

typedef struct HttpGet {
        /* > 0: "Range: bytes=offset-"; the file must be at least this long (the helper
         * re-hashes [0, offset) for sha256). A server that ignores the range gets the file
         * truncated and written from 0. */
        uint64_t offset;
        /* > 0: the resource may not be larger (-EFBIG). */
        uint64_t max_size;
        /* Hash the whole file: HttpResult.sha256. */
        bool sha256;
        /* Make the file durable every this many bytes or µs (0: only at the end); each time
         * synced() is told. */
        uint64_t sync_bytes;
        uint64_t sync_usec;
} HttpGet;

/* GET url into fd (a regular file opened for reading and writing). A 416 is an ordinary
 * non-2xx answer. Errors as for http_put_fd(). */
int http_get_fd(HttpClient *c, const char *url, int fd, const HttpGet *g, HttpProgress progress,
                HttpSynced synced, HttpFinished finished, void *userdata, HttpTransfer **ret);

/* No transfer: the SHA-256 of the first length bytes of fd, computed by the helper, off the
 * loop (HttpResult.sha256; error -ENODATA when the file is shorter). For a download found
 * complete after a restart. */
int http_hash_fd(HttpClient *c, int fd, uint64_t length, HttpFinished finished, void *userdata,
                 HttpTransfer **ret);

/* Stops the transfer at once (its helper is killed); no callback runs afterwards and the
 * pointer is invalid. NULL-safe; allowed from any callback. */
void http_transfer_cancel(HttpTransfer *run);

/* The helper's process id (tests). */
pid_t http_transfer_pid(const HttpTransfer *run);
