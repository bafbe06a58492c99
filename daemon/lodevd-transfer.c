/* SPDX-License-Identifier: MIT */
/* lodevd-transfer: one HTTP transfer for lodevd, in a process of its own (lodevd(8), TRANSFER
 * HELPER), as systemd-importd runs systemd-pull. It holds no key, no D-Bus connection and no
 * state: it gets its request and reports what happens (transfer-proto.h) on fd 3, a socket,
 * and moves bytes to or from fd 4, the file lodevd opened (read-only for an upload). Every
 * decision (resume points, retries, fresh links, what a status means) stays in lodevd.
 *
 * A download is written with pwrite() by the thread that runs libcurl; a second thread hashes
 * the file as it grows (reading back the page cache, starting with the prefix already there
 * when resuming), a third makes it durable (fdatasync) every sync-bytes or sync-ms and reports
 * the offset synced, so neither SHA-256 nor the disk holds up the network. */
#include <curl/curl.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <signal.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>

#include "config.h"
#include "fileio.h"
#include "transfer-proto.h"
#include "transfer-sandbox.h"
#include "util.h"

#define CONTROL_FD 3
#define FILE_FD 4
#define REQUEST_MAX (4 * TRANSFER_LINE_MAX)
#define HASH_CHUNK (1024 * 1024)
#define PROGRESS_USEC (250 * 1000)

typedef struct Transfer {
        TransferRequest q;
        CURL *easy;
        struct curl_slist *headers;
        char errbuf[CURL_ERROR_SIZE];
        pthread_mutex_t report_lock;

        /* Shared with the hashing and syncing threads, under lock. */
        pthread_mutex_t lock;
        pthread_cond_t cond;
        uint64_t written;    /* [0, written) of the file holds the resource's first bytes */
        unsigned generation; /* bumped when the file starts over from byte 0 */
        bool finish;         /* the threads finish what is written, then stop */
        bool stop;           /* the threads stop at once */
        bool hash_done;      /* the hashing thread has ended */
        bool hash_waiting;   /* for a whole chunk to hash, or the end */
        bool sync_waiting;   /* for sync-bytes more, or its timer */
        int worker_error;
        uint64_t hashed;
        uint64_t synced;
        EVP_MD_CTX *sha;     /* the hashing thread's, until it ends */

        /* The libcurl thread's own. */
        bool answered;
        long status;
        bool success;
        bool range_honoured;
        uint64_t content_range_start;
        uint64_t start, total;
        char body[TRANSFER_BODY_MAX + 1];
        size_t body_len;
        int local_error;
        const char *local_text;
        uint64_t read_pos; /* PUT */
        uint64_t received; /* GET: body bytes of this attempt */
        uint64_t progress_usec, progress_done, progress_total;
} Transfer;

static uint64_t now_usec(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000 + (uint64_t) ts.tv_nsec / 1000;
}

/* One line to lodevd. If lodevd is gone there is nobody to transfer for. */
static void report(Transfer *t, const TransferReport *r) {
        char line[TRANSFER_LINE_MAX];
        int n = transfer_report_format(r, line);

        if (n < 0)
                return;
        pthread_mutex_lock(&t->report_lock);
        if (write_full(CONTROL_FD, line, (size_t) n) < 0)
                _exit(EXIT_FAILURE);
        pthread_mutex_unlock(&t->report_lock);
}

static void report_done(Transfer *t, int error, uint64_t bytes, const char *text) {
        report(t, &(TransferReport) { .type = TRANSFER_REPORT_DONE, .error = error, .b = bytes,
                                      .text = (char *) text });
}

/* --- Hashing and syncing threads (downloads) --- */

static void *hash_thread(void *userdata) {
        Transfer *t = userdata;
        _cleanup_free_ uint8_t *buf = malloc(HASH_CHUNK);
        unsigned generation;
        int r = buf ? 0 : -ENOMEM;

        pthread_mutex_lock(&t->lock);
        generation = t->generation;
        while (r >= 0 && !t->stop) {
                uint64_t from;
                size_t n;

                if (generation != t->generation) {
                        /* The file started over: so does the digest. */
                        generation = t->generation;
                        t->hashed = 0;
                        if (EVP_DigestInit_ex(t->sha, EVP_sha256(), NULL) != 1) {
                                r = -EIO;
                                break;
                        }
                }
                if (t->hashed >= t->written && t->finish)
                        break;
                /* A whole chunk at a time while the download runs: one wake-up per MiB, not
                 * per write. */
                if (t->written - t->hashed < (t->finish ? 1 : HASH_CHUNK)) {
                        t->hash_waiting = true;
                        pthread_cond_wait(&t->cond, &t->lock);
                        t->hash_waiting = false;
                        continue;
                }
                from = t->hashed;
                n = (size_t) MIN(t->written - from, (uint64_t) HASH_CHUNK);
                pthread_mutex_unlock(&t->lock);
                r = pread_full(FILE_FD, buf, n, from);
                pthread_mutex_lock(&t->lock);
                if (generation != t->generation) {
                        r = 0; /* read across a truncation: discarded */
                        continue;
                }
                if (r >= 0 && EVP_DigestUpdate(t->sha, buf, n) != 1)
                        r = -EIO;
                if (r >= 0)
                        t->hashed += n;
        }
        if (r < 0 && t->worker_error == 0)
                t->worker_error = r;
        t->hash_done = true;
        pthread_cond_broadcast(&t->cond);
        pthread_mutex_unlock(&t->lock);
        return NULL;
}

static void *sync_thread(void *userdata) {
        Transfer *t = userdata;
        uint64_t interval = t->q.sync_ms * 1000, last = now_usec();
        int r = 0;

        pthread_mutex_lock(&t->lock);
        while (!t->stop && !t->finish) {
                uint64_t target, now = now_usec();
                unsigned generation;
                bool due;

                due = t->written > t->synced &&
                      ((t->q.sync_bytes > 0 && t->written - t->synced >= t->q.sync_bytes) ||
                       (interval > 0 && now - last >= interval));
                if (!due) {
                        struct timespec ts;
                        uint64_t until = interval > 0 ? last + interval : now + 1000000;

                        until = MAX(until, now + 1000);
                        ts.tv_sec = (time_t) (until / 1000000);
                        ts.tv_nsec = (long) (until % 1000000) * 1000;
                        t->sync_waiting = true;
                        pthread_cond_timedwait(&t->cond, &t->lock, &ts);
                        t->sync_waiting = false;
                        continue;
                }
                target = t->written;
                generation = t->generation;
                pthread_mutex_unlock(&t->lock);
                r = fdatasync(FILE_FD) < 0 ? -errno : 0;
                last = now_usec();
                pthread_mutex_lock(&t->lock);
                if (r < 0) {
                        if (t->worker_error == 0)
                                t->worker_error = r;
                        break;
                }
                if (generation != t->generation || target <= t->synced)
                        continue;
                t->synced = target;
                pthread_mutex_unlock(&t->lock);
                report(t, &(TransferReport) { .type = TRANSFER_REPORT_SYNCED, .a = target });
                pthread_mutex_lock(&t->lock);
        }
        pthread_mutex_unlock(&t->lock);
        return NULL;
}

/* --- libcurl callbacks --- */

/* The final answer's status, once its headers are in. A 206 must be for the range asked:
 * bytes from elsewhere would be written at the wrong place. */
static void evaluate_answer(Transfer *t) {
        long status = 0;

        if (t->answered)
                return;
        (void) curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
        if (status < 100 || status > 599)
                return;
        t->answered = true;
        t->status = status;
        t->success = status >= 200 && status < 300;
        if (t->q.method == TRANSFER_GET && t->success) {
                curl_off_t length = -1;

                if (t->q.offset > 0 && status == 206) {
                        if (t->content_range_start != t->q.offset) {
                                t->local_error = -EBADMSG;
                                t->local_text = "206 answer for a different range than asked";
                        } else {
                                t->range_honoured = true;
                                t->start = t->q.offset;
                        }
                }
                (void) curl_easy_getinfo(t->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &length);
                t->total = length >= 0 ? t->start + (uint64_t) length : 0;
        }
        report(t, &(TransferReport) { .type = TRANSFER_REPORT_ANSWER, .status = status,
                                      .a = t->start, .b = t->total });
}

/* The file starts over: the server sent the whole resource instead of the range. */
static int restart_file(Transfer *t) {
        int r = 0;

        pthread_mutex_lock(&t->lock);
        t->generation++;
        t->written = t->synced = 0;
        if (ftruncate(FILE_FD, 0) < 0)
                r = -errno;
        pthread_cond_broadcast(&t->cond);
        pthread_mutex_unlock(&t->lock);
        return r;
}

static size_t on_write(char *p, size_t size, size_t nmemb, void *userdata) {
        Transfer *t = userdata;
        size_t n = size * nmemb;
        uint64_t at;
        int r;

        evaluate_answer(t);
        if (t->local_error < 0)
                return 0;
        if (!t->success) {
                size_t k = MIN(n, sizeof(t->body) - 1 - t->body_len);
                memcpy(t->body + t->body_len, p, k);
                t->body_len += k;
                t->body[t->body_len] = '\0';
                return n;
        }
        if (t->q.method != TRANSFER_GET)
                return n;

        if (t->received == 0 && !t->range_honoured && t->q.offset > 0) {
                r = restart_file(t);
                if (r < 0) {
                        t->local_error = r;
                        t->local_text = "cannot truncate the file";
                        return 0;
                }
        }
        at = t->start + t->received;
        if (t->q.max_size > 0 && at + n > t->q.max_size) {
                t->local_error = -EFBIG;
                t->local_text = "the server sent more bytes than the most allowed";
                return 0;
        }
        r = pwrite_full(FILE_FD, p, n, at);
        if (r < 0) {
                t->local_error = r;
                t->local_text = "cannot write the file";
                return 0;
        }
        t->received += n;
        pthread_mutex_lock(&t->lock);
        t->written = at + n;
        r = t->worker_error;
        /* Only a thread that has something to do now is woken. */
        if ((t->hash_waiting && t->written - t->hashed >= HASH_CHUNK) ||
            (t->sync_waiting && t->q.sync_bytes > 0 && t->written - t->synced >= t->q.sync_bytes))
                pthread_cond_broadcast(&t->cond);
        pthread_mutex_unlock(&t->lock);
        if (r < 0) {
                t->local_error = r;
                t->local_text = "cannot hash or sync the file";
                return 0;
        }
        return n;
}

/* Only for a GET with a range: where the 206's Content-Range starts. */
static size_t on_header(char *p, size_t size, size_t nmemb, void *userdata) {
        static const char field[] = "Content-Range:";
        Transfer *t = userdata;
        size_t n = size * nmemb;
        char line[128], *s, *end;
        unsigned long long v;

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
        Transfer *t = userdata;
        size_t n = size * nitems;
        ssize_t k;

        if (t->read_pos >= t->q.size)
                return 0;
        n = (size_t) MIN((uint64_t) n, t->q.size - t->read_pos);
        do
                k = pread(FILE_FD, buf, n, (off_t) t->read_pos);
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

/* libcurl rewinds to resend the body (a reused connection that died before the request went
 * out); pread() makes that free. */
static int on_seek(void *userdata, curl_off_t offset, int origin) {
        Transfer *t = userdata;

        if (origin != SEEK_SET || offset < 0 || (uint64_t) offset > t->q.size)
                return CURL_SEEKFUNC_FAIL;
        t->read_pos = (uint64_t) offset;
        return CURL_SEEKFUNC_OK;
}

static void progress(Transfer *t, bool force) {
        uint64_t done, total, now = now_usec();

        if (t->q.method == TRANSFER_PUT) {
                curl_off_t sent = 0;
                (void) curl_easy_getinfo(t->easy, CURLINFO_SIZE_UPLOAD_T, &sent);
                done = (uint64_t) MAX(sent, (curl_off_t) 0);
                total = t->q.size;
        } else {
                /* An error body is no progress of the download. */
                if (!t->answered || !t->success)
                        return;
                done = t->start + t->received;
                total = t->total;
        }
        if (done == t->progress_done && total == t->progress_total)
                return;
        if (!force && now - t->progress_usec < PROGRESS_USEC)
                return;
        t->progress_usec = now;
        t->progress_done = done;
        t->progress_total = total;
        report(t, &(TransferReport) { .type = TRANSFER_REPORT_PROGRESS, .a = done, .b = total });
}

/* The last progress again: lodevd takes a helper that says nothing for long for a hung one,
 * and catching up with the digest or the disk can take a while on a gateway. */
static void heartbeat(Transfer *t) {
        report(t, &(TransferReport) { .type = TRANSFER_REPORT_PROGRESS, .a = t->progress_done,
                                      .b = t->progress_total });
}

static int on_xferinfo(void *userdata, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow) {
        progress(userdata, false);
        return 0;
}

/* --- Setting up --- */

static void transfer_done(Transfer *t) {
        if (t->easy)
                curl_easy_cleanup(t->easy);
        curl_slist_free_all(t->headers);
        EVP_MD_CTX_free(t->sha);
        transfer_request_done(&t->q);
}

/* libcurl's codes to negative errno; the text goes with it. */
static int curl_errno(Transfer *t, CURLcode code) {
        long os_errno = 0;

        if (code == CURLE_OK)
                return 0;
        if (t->local_error < 0)
                return t->local_error;
        switch (code) {
        case CURLE_COULDNT_CONNECT:
                (void) curl_easy_getinfo(t->easy, CURLINFO_OS_ERRNO, &os_errno);
                return os_errno > 0 && os_errno < 4096 ? -(int) os_errno : -ECONNREFUSED;
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
        case CURLE_FILESIZE_EXCEEDED:
                return -EFBIG;
        default:
                return -EIO;
        }
}

#define SETOPT(easy, option, value)                                                                \
        do {                                                                                       \
                CURLcode _k_ = curl_easy_setopt(easy, option, value);                              \
                if (_k_ != CURLE_OK)                                                               \
                        return _k_ == CURLE_OUT_OF_MEMORY ? -ENOMEM : -EINVAL;                     \
        } while (0)

/* The same policy lodevd always had: TLS 1.2 or newer with the peer and its name verified,
 * https only (http too when allowed, for tests), for redirects as well; the configured proxy
 * or none, never the environment's; redirects for GET only. */
static int setup(Transfer *t) {
        const TransferRequest *q = &t->q;
        const char *protocols = q->allow_http ? "http,https" : "https";
        _cleanup_free_ char *ct = NULL;
        CURLU *u;
        char *scheme = NULL;
        bool allowed;
        CURLUcode k;

        /* The scheme before anything is contacted. */
        u = curl_url();
        if (!u)
                return -ENOMEM;
        k = curl_url_set(u, CURLUPART_URL, q->url, 0);
        if (k == CURLUE_OK)
                k = curl_url_get(u, CURLUPART_SCHEME, &scheme, 0);
        curl_url_cleanup(u);
        if (k == CURLUE_UNSUPPORTED_SCHEME)
                return -EPROTONOSUPPORT;
        if (k != CURLUE_OK)
                return k == CURLUE_OUT_OF_MEMORY ? -ENOMEM : -EINVAL;
        allowed = strcasecmp(scheme, "https") == 0 ||
                  (q->allow_http && strcasecmp(scheme, "http") == 0);
        curl_free(scheme);
        if (!allowed)
                return -EPROTONOSUPPORT;

        t->easy = curl_easy_init();
        if (!t->easy)
                return -ENOMEM;
        SETOPT(t->easy, CURLOPT_URL, q->url);
        SETOPT(t->easy, CURLOPT_ERRORBUFFER, t->errbuf);
        SETOPT(t->easy, CURLOPT_NOSIGNAL, 1L);
        SETOPT(t->easy, CURLOPT_USERAGENT, "lodevd/" LODEV_VERSION);
        SETOPT(t->easy, CURLOPT_PROTOCOLS_STR, protocols);
        SETOPT(t->easy, CURLOPT_REDIR_PROTOCOLS_STR, protocols);
        SETOPT(t->easy, CURLOPT_SSL_VERIFYPEER, 1L);
        SETOPT(t->easy, CURLOPT_SSL_VERIFYHOST, 2L);
        SETOPT(t->easy, CURLOPT_SSLVERSION, (long) CURL_SSLVERSION_TLSv1_2);
        if (!isempty(q->ca_file)) {
                /* The configured bundle alone, not the system's directory besides. */
                SETOPT(t->easy, CURLOPT_CAINFO, q->ca_file);
                SETOPT(t->easy, CURLOPT_CAPATH, (char *) NULL);
        }
        /* "" disables proxies, the environment's included; NOPROXY "" ignores no_proxy. */
        SETOPT(t->easy, CURLOPT_PROXY, strempty(q->proxy));
        SETOPT(t->easy, CURLOPT_NOPROXY, "");
        SETOPT(t->easy, CURLOPT_CONNECTTIMEOUT, (long) (q->connect_timeout_sec ?: 30));
        SETOPT(t->easy, CURLOPT_LOW_SPEED_LIMIT, (long) (q->low_speed_limit ?: 1));
        SETOPT(t->easy, CURLOPT_LOW_SPEED_TIME, (long) (q->low_speed_time_sec ?: 60));
        if (q->max_rate > 0) {
                SETOPT(t->easy, CURLOPT_MAX_SEND_SPEED_LARGE, (curl_off_t) q->max_rate);
                SETOPT(t->easy, CURLOPT_MAX_RECV_SPEED_LARGE, (curl_off_t) q->max_rate);
        }
        SETOPT(t->easy, CURLOPT_TCP_KEEPALIVE, 1L);
        SETOPT(t->easy, CURLOPT_WRITEFUNCTION, on_write);
        SETOPT(t->easy, CURLOPT_WRITEDATA, t);
        SETOPT(t->easy, CURLOPT_XFERINFOFUNCTION, on_xferinfo);
        SETOPT(t->easy, CURLOPT_XFERINFODATA, t);
        SETOPT(t->easy, CURLOPT_NOPROGRESS, 0L);

        if (q->method == TRANSFER_PUT) {
                ct = strdup_printf("Content-Type: %s", q->content_type);
                if (!ct || !(t->headers = curl_slist_append(NULL, ct)))
                        return -ENOMEM;
                /* An empty "Expect:" drops libcurl's 100-continue wait (up to a second). */
                if (!curl_slist_append(t->headers, "Expect:"))
                        return -ENOMEM;
                /* With a known size libcurl sends Content-Length, never chunked (S3 refuses
                 * that). A presigned URL is signed for its host: redirects are not followed. */
                SETOPT(t->easy, CURLOPT_UPLOAD, 1L);
                SETOPT(t->easy, CURLOPT_INFILESIZE_LARGE, (curl_off_t) q->size);
                SETOPT(t->easy, CURLOPT_READFUNCTION, on_read);
                SETOPT(t->easy, CURLOPT_READDATA, t);
                SETOPT(t->easy, CURLOPT_SEEKFUNCTION, on_seek);
                SETOPT(t->easy, CURLOPT_SEEKDATA, t);
                SETOPT(t->easy, CURLOPT_HTTPHEADER, t->headers);
                return 0;
        }

        SETOPT(t->easy, CURLOPT_HTTPGET, 1L);
        /* Firmware may sit behind a CDN that redirects; the protocols bind the targets. */
        SETOPT(t->easy, CURLOPT_FOLLOWLOCATION, 1L);
        SETOPT(t->easy, CURLOPT_MAXREDIRS, 5L);
        /* Large reads: fewer writes and wakeups per MiB. Not with a rate cap: libcurl 7.88
         * then overshoots the cap several times over; at a capped rate it does not matter. */
        if (q->max_rate == 0)
                SETOPT(t->easy, CURLOPT_BUFFERSIZE, 256L * 1024);
        if (q->max_size > 0)
                /* Refused from the Content-Length already; on_write() holds it exactly. */
                SETOPT(t->easy, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t) q->max_size);
        if (q->offset > 0) {
                char range[32];

                /* CURLOPT_RANGE rather than RESUME_FROM: a server that ignores the range is
                 * no error; the body then starts at 0. */
                snprintf(range, sizeof(range), "%" PRIu64 "-", q->offset);
                SETOPT(t->easy, CURLOPT_RANGE, range);
                SETOPT(t->easy, CURLOPT_HEADERFUNCTION, on_header);
                SETOPT(t->easy, CURLOPT_HEADERDATA, t);
        }
        return 0;
}

static int read_request(TransferRequest *q) {
        _cleanup_free_ char *buf = malloc(REQUEST_MAX + 1);
        size_t len = 0;
        char *line;

        if (!buf)
                return -ENOMEM;
        /* Until lodevd shuts its side: the request is small and comes at once. */
        for (;;) {
                ssize_t n = read(CONTROL_FD, buf + len, REQUEST_MAX - len);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return -errno;
                if (n == 0)
                        break;
                len += (size_t) n;
                if (len == REQUEST_MAX)
                        return -EMSGSIZE;
        }
        buf[len] = '\0';
        line = buf;
        for (;;) {
                char *nl = strchr(line, '\n');
                int r;

                if (!nl)
                        return -EBADMSG; /* no "end" */
                *nl = '\0';
                r = transfer_request_parse_line(q, line);
                if (r < 0)
                        return r;
                if (r > 0)
                        return *(nl + 1) ? -EBADMSG : transfer_request_check(q);
                line = nl + 1;
        }
}

/* The file as lodevd handed it: a regular file, and for a download at least offset long. */
static int check_file(const TransferRequest *q) {
        struct stat st;

        if (fstat(FILE_FD, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode))
                return -EBADFD;
        if (q->method != TRANSFER_PUT && (uint64_t) st.st_size < q->offset)
                return -ENODATA;
        return 0;
}

/* The download's end: what is written is made durable and reported, then the digest. */
static int download_end(Transfer *t, bool complete, pthread_t hasher, pthread_t syncer) {
        unsigned char md[EVP_MAX_MD_SIZE];
        char hex[2 * EVP_MAX_MD_SIZE + 1];
        unsigned md_len = 0;

        pthread_mutex_lock(&t->lock);
        /* A failed download's digest is of no use: the next attempt re-hashes. */
        if (complete)
                t->finish = true;
        else
                t->stop = true;
        pthread_cond_broadcast(&t->cond);
        while (t->q.sha256 && !t->hash_done) {
                uint64_t until = now_usec() + 1000000;
                struct timespec ts = { .tv_sec = (time_t) (until / 1000000),
                                       .tv_nsec = (long) (until % 1000000) * 1000 };

                if (pthread_cond_timedwait(&t->cond, &t->lock, &ts) == ETIMEDOUT) {
                        pthread_mutex_unlock(&t->lock);
                        heartbeat(t);
                        pthread_mutex_lock(&t->lock);
                }
        }
        pthread_mutex_unlock(&t->lock);
        if (t->q.sha256)
                pthread_join(hasher, NULL);
        pthread_join(syncer, NULL);

        if (t->worker_error < 0)
                return t->worker_error;
        if (t->written > t->synced) {
                if (fdatasync(FILE_FD) < 0)
                        return -errno;
                t->synced = t->written;
                report(t, &(TransferReport) { .type = TRANSFER_REPORT_SYNCED, .a = t->synced });
        }
        if (!complete || !t->q.sha256)
                return 0;
        if (t->hashed != t->written || EVP_DigestFinal_ex(t->sha, md, &md_len) != 1)
                return -EIO;
        for (unsigned i = 0; i < md_len; i++)
                snprintf(hex + 2 * i, 3, "%02x", md[i]);
        report(t, &(TransferReport) { .type = TRANSFER_REPORT_SHA256, .text = hex });
        return 0;
}

/* HASH: the digest of [0, offset) of the file, nothing else. */
static int hash_only(Transfer *t) {
        _cleanup_free_ uint8_t *buf = malloc(HASH_CHUNK);
        unsigned char md[EVP_MAX_MD_SIZE];
        char hex[2 * EVP_MAX_MD_SIZE + 1];
        unsigned md_len = 0;
        int r;

        t->sha = EVP_MD_CTX_new();
        if (!buf || !t->sha || EVP_DigestInit_ex(t->sha, EVP_sha256(), NULL) != 1)
                return -ENOMEM;
        for (uint64_t at = 0; at < t->q.offset;) {
                size_t n = (size_t) MIN(t->q.offset - at, (uint64_t) HASH_CHUNK);

                r = pread_full(FILE_FD, buf, n, at);
                if (r < 0)
                        return r;
                if (EVP_DigestUpdate(t->sha, buf, n) != 1)
                        return -EIO;
                at += n;
                if (now_usec() - t->progress_usec >= PROGRESS_USEC) {
                        t->progress_usec = now_usec();
                        report(t, &(TransferReport) { .type = TRANSFER_REPORT_PROGRESS,
                                                      .a = at, .b = t->q.offset });
                }
        }
        if (EVP_DigestFinal_ex(t->sha, md, &md_len) != 1)
                return -EIO;
        for (unsigned i = 0; i < md_len; i++)
                snprintf(hex + 2 * i, 3, "%02x", md[i]);
        report(t, &(TransferReport) { .type = TRANSFER_REPORT_SHA256, .text = hex });
        return 0;
}

static void run(Transfer *t) {
        pthread_t hasher = 0, syncer = 0;
        CURLcode code;
        bool threads = false;
        int r, error;

        r = check_file(&t->q);
        if (r < 0) {
                report_done(t, r, 0, "the file handed over does not fit the request");
                return;
        }
        if (t->q.method == TRANSFER_HASH) {
                r = transfer_sandbox_apply();
                if (r >= 0)
                        r = hash_only(t);
                report_done(t, r, r < 0 ? 0 : t->q.offset,
                            r < 0 ? "cannot hash the file" : NULL);
                return;
        }
        r = setup(t);
        if (r < 0) {
                report_done(t, r, 0, "cannot set up the transfer");
                return;
        }

        /* Before any thread: they inherit it. */
        r = transfer_sandbox_apply();
        if (r < 0) {
                /* Never without the sandbox. */
                report_done(t, r, 0, "cannot apply the sandbox");
                return;
        }

        if (t->q.method == TRANSFER_GET) {
                t->written = t->synced = t->q.offset;
                if (t->q.sha256) {
                        t->sha = EVP_MD_CTX_new();
                        if (!t->sha || EVP_DigestInit_ex(t->sha, EVP_sha256(), NULL) != 1) {
                                report_done(t, -ENOMEM, 0, "cannot set up SHA-256");
                                return;
                        }
                        r = -pthread_create(&hasher, NULL, hash_thread, t);
                }
                if (r >= 0)
                        r = -pthread_create(&syncer, NULL, sync_thread, t);
                if (r < 0) {
                        report_done(t, r, 0, "cannot start a thread");
                        return;
                }
                threads = true;
        }

        code = curl_easy_perform(t->easy);
        evaluate_answer(t);
        error = curl_errno(t, code);
        if (threads) {
                r = download_end(t, error == 0 && t->success, hasher, syncer);
                if (r < 0 && error == 0) {
                        error = r;
                        t->local_text = "cannot hash or sync the file";
                }
        }
        if (t->answered && !t->success && t->body_len > 0)
                report(t, &(TransferReport) { .type = TRANSFER_REPORT_BODY, .text = t->body });
        progress(t, true);
        report_done(t, error, t->q.method == TRANSFER_PUT ? t->read_pos : t->received,
                    error == 0 ? NULL
                               : t->local_text ?: (t->errbuf[0] ? t->errbuf
                                                                : curl_easy_strerror(code)));
}

int main(int argc, char **argv) {
        Transfer t = {
                .q = TRANSFER_REQUEST_NULL,
                .content_range_start = UINT64_MAX,
                .report_lock = PTHREAD_MUTEX_INITIALIZER,
                .lock = PTHREAD_MUTEX_INITIALIZER,
        };
        pthread_condattr_t attr;
        struct stat st;
        int r;

        if (argc != 1) {
                fprintf(stderr, "%s takes no arguments: lodevd starts it, with its request on "
                                "fd 3 (see lodevd(8)).\n",
                        argv[0]);
                return 2;
        }
        /* Reports to a lodevd that is gone fail with EPIPE, never kill silently; and when
         * lodevd goes, so does the transfer. */
        (void) signal(SIGPIPE, SIG_IGN);
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() == 1)
                return 2;
        /* Background work: D-Bus callers and MQTT, on lodevd's loop, go first when the CPU is
         * short. Before any thread, which inherits it; best effort. */
        (void) setpriority(PRIO_PROCESS, 0, 10);
        if (fstat(CONTROL_FD, &st) < 0 || !S_ISSOCK(st.st_mode)) {
                fprintf(stderr, "lodevd-transfer: fd 3 is not a socket: lodevd starts this "
                                "program, see lodevd(8).\n");
                return 2;
        }
        r = read_request(&t.q);
        if (r < 0) {
                report_done(&t, r, 0, "malformed request");
                transfer_done(&t);
                return 1;
        }
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
                report_done(&t, -EIO, 0, "cannot initialize libcurl");
                transfer_done(&t);
                return 1;
        }
        /* The sync thread waits with deadlines on the monotonic clock. */
        pthread_condattr_init(&attr);
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        pthread_cond_init(&t.cond, &attr);
        run(&t);
        transfer_done(&t);
        curl_global_cleanup();
        return 0;
}
