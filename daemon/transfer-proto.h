/* SPDX-License-Identifier: MIT */
#pragma once

/* The protocol between lodevd and lodevd-transfer, its transfer helper (one HTTP transfer per
 * process, see lodevd(8), TRANSFER HELPER). Pure: formatting and parsing only, no I/O; both
 * sides link it, so the format is written in one place.
 *
 * Both directions are text lines over one socket (fd 3 of the helper), "\n"-terminated, at
 * most TRANSFER_LINE_MAX bytes with the newline, fields separated by one space. A text field
 * is percent-escaped: every byte below 0x21 or above 0x7e, and "%" itself, as "%XX" (so no
 * field holds a space or a newline, and "%00" is refused). Numbers are unsigned decimal.
 *
 * lodevd → helper, the request, then lodevd shuts its side for writing:
 *   method GET|PUT|HASH    url TEXT (not HASH)    content-type TEXT (PUT)
 *   size N (PUT: Content-Length)    offset N (GET: Range start; HASH: the length hashed)
 *   max-size N (GET: most bytes the resource may have, 0 no cap)
 *   sha256 0|1 (GET: hash the file)               sync-bytes N   sync-ms N (GET)
 *   ca-file TEXT   proxy TEXT   allow-http 0|1   max-rate N   connect-timeout N
 *   low-speed-time N   low-speed-limit N
 *   end
 *
 * helper → lodevd, reports, "done" always last:
 *   answer STATUS START TOTAL   the final answer's status; GET: where its body starts in the
 *                               resource (the offset for a 206 for the range, else 0) and the
 *                               resource's size (0 unknown)
 *   progress DONE TOTAL         PUT: bytes sent of the size; GET: the position in the resource
 *   synced OFFSET               GET: bytes [0, OFFSET) of the file are on disk (fdatasync)
 *   body TEXT                   the start of a non-2xx answer's body (S3's XML error)
 *   sha256 HEX                  GET with sha256: the digest of the whole file, written
 *   done ERRNO BYTES [TEXT]     0 or the positive errno of the failure, payload bytes moved,
 *                               the explanation */

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TRANSFER_LINE_MAX 16384
/* The most bytes of an error body that a "body" report carries (escaped, it still fits). */
#define TRANSFER_BODY_MAX 4096

typedef enum TransferMethod {
        TRANSFER_GET,
        TRANSFER_PUT,
        TRANSFER_HASH, /* no transfer: the SHA-256 of [0, offset) of the file */
        _TRANSFER_METHOD_MAX,
        _TRANSFER_METHOD_INVALID = -EINVAL,
} TransferMethod;

typedef struct TransferRequest {
        TransferMethod method;
        char *url;
        char *content_type; /* PUT */
        uint64_t size;      /* PUT */
        uint64_t offset;    /* GET */
        uint64_t max_size;  /* GET, 0: no cap */
        bool sha256;        /* GET */
        uint64_t sync_bytes;
        uint64_t sync_ms;
        char *ca_file; /* NULL: the system's store */
        char *proxy;   /* NULL: no proxy */
        bool allow_http;
        uint64_t max_rate;
        uint64_t connect_timeout_sec;
        uint64_t low_speed_time_sec;
        uint64_t low_speed_limit;
} TransferRequest;

#define TRANSFER_REQUEST_NULL                                                                      \
        ((TransferRequest) { .method = _TRANSFER_METHOD_INVALID })

void transfer_request_done(TransferRequest *q);

/* The whole request, "end" line included, in a newly allocated string. -EINVAL for a request
 * that transfer_request_check() refuses, -E2BIG when a line would be too long, -ENOMEM. */
int transfer_request_format(const TransferRequest *q, char **ret);

/* Parses one line (without its newline) into q. 1 for the "end" line, 0 for any other,
 * -EBADMSG for a malformed line or an unknown key, -ENOMEM. */
int transfer_request_parse_line(TransferRequest *q, const char *line);

/* -EINVAL when fields are missing or do not go together (a PUT without content type, ...). */
int transfer_request_check(const TransferRequest *q);

typedef enum TransferReportType {
        TRANSFER_REPORT_ANSWER,
        TRANSFER_REPORT_PROGRESS,
        TRANSFER_REPORT_SYNCED,
        TRANSFER_REPORT_BODY,
        TRANSFER_REPORT_SHA256,
        TRANSFER_REPORT_DONE,
        _TRANSFER_REPORT_TYPE_MAX,
        _TRANSFER_REPORT_TYPE_INVALID = -EINVAL,
} TransferReportType;

typedef struct TransferReport {
        TransferReportType type;
        long status;    /* ANSWER */
        uint64_t a, b;  /* ANSWER: start, total; PROGRESS: done, total; SYNCED: offset;
                         * DONE: bytes in b */
        int error;      /* DONE: 0 or a negative errno */
        char *text;     /* BODY, SHA256 (64 hex digits), DONE (may be NULL) */
} TransferReport;

#define TRANSFER_REPORT_NULL ((TransferReport) { .type = _TRANSFER_REPORT_TYPE_INVALID })

void transfer_report_done(TransferReport *r);

/* One report line with its newline, into buf (TRANSFER_LINE_MAX bytes). Text longer than
 * fits is cut. Returns the length, or -EINVAL for a report that cannot be written. */
int transfer_report_format(const TransferReport *r, char buf[static TRANSFER_LINE_MAX]);

/* Parses one line (without its newline). -EBADMSG for anything malformed: an unknown type,
 * a missing or extra field, a number that is not one, a bad escape, a status outside
 * 100..599, a digest that is not 64 lower-case hex digits. -ENOMEM. */
int transfer_report_parse(const char *line, TransferReport *ret);

/* Reads the helper's reports as they come off the socket: splits lines and checks the
 * sequence (at most one answer, synced never going back, nothing after done). */
typedef struct TransferReader {
        char buf[TRANSFER_LINE_MAX];
        size_t len;
        bool answered;
        bool done;
        uint64_t synced;
} TransferReader;

typedef int (*TransferReportHandler)(const TransferReport *r, void *userdata);

/* Feeds bytes; calls handler for each complete report, in order. Stops at the first error:
 * -EMSGSIZE for a line over TRANSFER_LINE_MAX, -EBADMSG for a malformed report or one out of
 * sequence, or the handler's negative return. */
int transfer_reader_feed(TransferReader *rd, const void *data, size_t len,
                         TransferReportHandler handler, void *userdata);

/* At the end of the stream: 0 when "done" came and nothing after it, -EPIPE when the helper
 * stopped before "done", -EBADMSG when a partial line is left. */
int transfer_reader_end(const TransferReader *rd);

/* Percent-escaping of a text field (see above). NULL on allocation failure. */
char *transfer_escape(const char *s, size_t len);
/* The reverse; -EBADMSG for a bad or NUL escape or a byte that should have been escaped. */
int transfer_unescape(const char *s, char **ret);

const char *transfer_method_to_string(TransferMethod m);
TransferMethod transfer_method_from_string(const char *s);
TransferReportType transfer_report_type_from_string(const char *s);
