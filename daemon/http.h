/* SPDX-License-Identifier: MIT */
#pragma once

/* HTTP transfers on the manager's sd-event loop, through libcurl's multi
 * interface (never curl_easy_perform()): one io source per curl socket, one
 * timer for curl's timeout, and finished transfers handed back from a defer
 * source, one per loop iteration, so that no finished() callback ever runs
 * inside libcurl. The module knows nothing of uploads, jobs or D-Bus: a
 * caller starts a transfer and hears back through its callbacks.
 *
 * Fixed policy, whatever the options: TLS 1.2 or newer with the peer's
 * certificate and host name verified; no signals (CURLOPT_NOSIGNAL);
 * close-on-exec sockets; User-Agent "lodevd/VERSION"; redirects followed for
 * GET only (at most 5, to the allowed schemes only), never for PUT (a presigned
 * URL is signed for its host). HTTP/2 is used when the server offers it.
 *
 * Callbacks and re-entrancy: progress() and data() run inside libcurl. From
 * there a caller may cancel any transfer (also the one being called), but must
 * not start a transfer (-EBUSY), change options or free the client. From
 * finished() anything is allowed, including freeing the client. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <systemd/sd-event.h>

typedef struct HttpClient HttpClient;
typedef struct HttpTransfer HttpTransfer;

typedef struct HttpOptions {
        /* http.proxy. NULL or "": no proxy at all, and the environment
         * (http_proxy, https_proxy, all_proxy, no_proxy) is ignored: a
         * daemon's environment comes from its unit, and a gateway must not
         * route through a proxy nobody configured. Otherwise every request
         * goes through this proxy (a URL libcurl understands: http://,
         * https://, socks5h://..., credentials allowed), no_proxy ignored. A
         * plain http:// proxy is fine with allow_http off: https requests go
         * through it in a CONNECT tunnel, TLS end to end. An https:// proxy
         * is verified against the system's CA store. */
        const char *proxy;
        /* Plain http:// URLs only when true (tests); otherwise https only,
         * for the first request and for redirects. */
        bool allow_http;
        /* Bytes per second per transfer, for sending and receiving; 0: no cap. */
        uint64_t max_rate;
        /* The CA bundle servers are verified against, the only one trusted
         * then; NULL or "": the system's default store. */
        const char *ca_file;
        /* 0 for any of these: the defaults 30 s, 60 s and 1 byte/s. */
        unsigned connect_timeout_sec;
        /* Below low_speed_limit bytes/s for low_speed_time_sec seconds: the
         * transfer is stalled and ends with -ETIMEDOUT. libcurl measures the
         * speed over the last few seconds, so a stall that follows data is
         * noticed up to about 5 s later than that. */
        unsigned low_speed_time_sec;
        unsigned low_speed_limit;
} HttpOptions;

/* How a transfer ended. Strings and the body belong to the transfer and stay
 * valid only while finished() runs. */
typedef struct HttpResult {
        /* 0 when a complete HTTP answer arrived (whatever its status); else a
         * negative errno: -ETIMEDOUT (connect timeout or stalled), -ECONNREFUSED,
         * -ECONNRESET (the connection broke or closed early, also mid-body),
         * -EHOSTUNREACH (name not resolved, no route), -EPROTO (TLS, including a
         * certificate that does not verify), -EBADMSG (a malformed answer or a
         * 206 for another range), -ELOOP (too many redirects), -ENOMEM, -EIO, the
         * error data() returned, or the read error of the file being sent. */
        int error;
        /* libcurl's (or our) explanation when error < 0, NULL otherwise. */
        const char *error_text;
        /* HTTP status of the final answer; 0 when none arrived. Can be set
         * while error < 0 (the body broke off half-way). */
        long status;
        /* For a non-2xx answer: the first HTTP_ERROR_BODY_MAX bytes of its
         * body, NUL-terminated (S3 answers XML with <Code> and <Message>);
         * NULL for 2xx or when the answer had no body. */
        const char *body;
        /* Payload bytes: sent for a PUT (as counted by libcurl), handed to
         * data() for a GET. */
        uint64_t bytes;
        /* GET with offset > 0: the server answered 206 for that range. */
        bool range_honoured;
} HttpResult;

#define HTTP_ERROR_BODY_MAX 4096

/* Runs exactly once per transfer that was not canceled, from the event loop
 * (never inside libcurl). The transfer is freed when it returns: it must not
 * be used afterwards (http_transfer_cancel() on it from inside finished() is
 * a no-op). */
typedef void (*HttpFinished)(HttpTransfer *t, const HttpResult *r, void *userdata);

/* Raw progress, called by libcurl often (several times a second and for
 * every chunk), only when the numbers changed: the caller throttles. PUT:
 * bytes sent of the size. GET: the position in the resource (counting the
 * range's offset when the server honoured it) of the total size, 0 while
 * unknown; only for a 2xx answer. */
typedef void (*HttpProgress)(HttpTransfer *t, uint64_t done, uint64_t total, void *userdata);

/* GET body bytes (of a 2xx answer only) as they arrive. offset is where data
 * starts within the resource: the first call has offset = the requested
 * offset when the server honoured the range, and offset = 0 when it sent the
 * whole body instead (200): a caller resuming a download knows which case it
 * is in before it writes anything. Return < 0 to abort the transfer with
 * that error (finished() reports it). */
typedef int (*HttpData)(HttpTransfer *t, uint64_t offset, const void *data, size_t len,
                        void *userdata);

/* Calls curl_global_init() on first use. Options are copied. */
int http_client_new(sd_event *event, const HttpOptions *o, HttpClient **ret);
/* Cancels every transfer without callbacks. NULL-safe; not from data() or
 * progress(). */
HttpClient *http_client_free(HttpClient *c);
static inline void http_client_freep(HttpClient **c) {
        http_client_free(*c);
}
/* Replaces the options (SIGHUP); running transfers keep the ones they started
 * with. On failure the old options stay. */
int http_client_set_options(HttpClient *c, const HttpOptions *o);

/* PUT size bytes read from fd (a regular file; from offset 0, with pread(),
 * so the fd's own offset is irrelevant; the fd is duplicated, the caller may
 * close its copy) with "Content-Length: size", exactly the given Content-Type
 * (non-empty), never chunked, no "Expect: 100-continue" wait. A file that is
 * shorter than size fails the transfer with -EIO. Errors returned here, with
 * no callback to follow: -EINVAL (bad URL or content type), -EPROTONOSUPPORT
 * (a scheme not allowed: http:// without allow_http, anything but http/https),
 * -EBUSY (called from data() or progress()), -ENOMEM. On success *ret (if
 * given) is the transfer, valid until finished() returns or it is canceled. */
int http_put_fd(HttpClient *c, const char *url, int fd, uint64_t size, const char *content_type,
                HttpProgress progress, HttpFinished finished, void *userdata, HttpTransfer **ret);

/* GET url; offset > 0 asks for "Range: bytes=offset-". Body bytes go to
 * data(), whose offset argument says whether the range was honoured (see
 * HttpData); http_transfer_range_honoured() says the same. A 416 (range not
 * satisfiable, e.g. nothing left to fetch) is an ordinary non-2xx answer.
 * max_body > 0: an answer announcing a longer body (Content-Length) ends the
 * transfer at once with -EFBIG (CURLOPT_MAXFILESIZE_LARGE); one that sends more
 * without announcing it is for data() to stop. Errors returned as for
 * http_put_fd(). */
int http_get(HttpClient *c, const char *url, uint64_t offset, uint64_t max_body, HttpData data,
             HttpProgress progress, HttpFinished finished, void *userdata, HttpTransfer **ret);

/* Stops the transfer at once; none of its callbacks runs afterwards and the
 * pointer is invalid. NULL-safe; allowed from any callback. */
void http_transfer_cancel(HttpTransfer *t);

/* True once a GET with offset > 0 got a 206 for that range. */
bool http_transfer_range_honoured(const HttpTransfer *t);
