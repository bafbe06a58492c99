/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <inttypes.h>

#include "backoff.h"
#include "event-util.h"
#include "log.h"
#include "message.h"
#include "mime.h"
#include "topic.h"
#include "transfer-store.h"
#include "uploads.h"
#include "util.h"

/* Bytes copied into the spool per loop iteration: a few milliseconds of work, so the bus and
 * the MQTT socket are served between chunks. */
#define COPY_CHUNK (UINT64_C(8) * 1024 * 1024)
/* An answer to a link request that does not come in this time is given up on. */
#define LINK_TIMEOUT_USEC (UINT64_C(30) * 1000000)
/* Network errors, 5xx and refused link requests: retried within these bounds. */
#define RETRY_MIN_USEC (UINT64_C(1) * 1000000)
#define RETRY_MAX_USEC (UINT64_C(300) * 1000000)
/* 403s (an expired or refused link) in a row before a transfer is failed. */
#define LINK_REFUSALS_MAX 5
/* Attempts started, across restarts, before a transfer is given up; with the backoff above,
 * several hours of trying. */
#define ATTEMPTS_MAX 100
#define PROGRESS_USEC (UINT64_C(1) * 1000000)

#define log_transfer(level, id, ...)                                                               \
        log_internal(level, 0, __FILE__, __LINE__, __func__, NULL, NULL, id, __VA_ARGS__)

typedef enum UploadPhase {
        PHASE_IDLE,        /* no current transfer */
        PHASE_LINK_WANTED, /* the current transfer needs a link; the channel sends the request */
        PHASE_LINK_WAIT,   /* the request went out, the answer has not come */
        PHASE_PUT,         /* the PUT runs */
        PHASE_RETRY_WAIT,  /* backing off before asking for a link again */
} UploadPhase;

typedef struct Copy Copy;
struct Copy {
        TransferCopy *copy;
        UploadsAdded done;
        void *userdata;
        Copy *next;
};

struct Uploads {
        sd_event *event;
        HttpClient *http;
        char *dir;
        UploadsCallbacks cb;
        void *userdata;
        TransferStore *store;
        MimeTable *mime;

        Copy *copies; /* in progress, stepped round robin */
        sd_event_source *copy_event;

        Channel *channel; /* NULL while detached */
        char *request_topic;

        char current[TRANSFER_ID_LEN + 1]; /* empty when idle */
        UploadPhase phase;
        /* A link request is out: no other goes before its answer or its timeout, since the
         * answer cannot tell which request it belongs to. */
        bool link_pending;
        char link_for[TRANSFER_ID_LEN + 1];
        HttpTransfer *put;
        char host[256]; /* of the current link, for logs: the query string is a credential */
        uint64_t done, total, last_progress;
        unsigned link_refusals;
        Backoff backoff;
        sd_event_source *link_timer;
        sd_event_source *retry_timer;
};

static void kick(Uploads *u);

static void queued_changed(Uploads *u) {
        if (u->cb.queued_changed)
                u->cb.queued_changed(u->userdata);
}

/* The host (and port) of a URL, without user info, path or query. */
static void url_host(const char *url, char *ret, size_t size) {
        const char *p = strstr(url, "://"), *at;
        size_t n;

        p = p ? p + 3 : url;
        n = strcspn(p, "/?#");
        at = memchr(p, '@', n);
        if (at) {
                n -= (size_t) (at + 1 - p);
                p = at + 1;
        }
        snprintf(ret, size, "%.*s", (int) MIN(n, size - 1), p);
}

/* The text of <tag>...</tag> in an S3 error body, control characters blanked; NULL when
 * missing. */
static char *xml_element(const char *body, const char *tag) {
        char open[32], close[32];
        const char *s, *e;
        char *v;

        if (!body)
                return NULL;
        snprintf(open, sizeof(open), "<%s>", tag);
        snprintf(close, sizeof(close), "</%s>", tag);
        s = strstr(body, open);
        if (!s)
                return NULL;
        s += strlen(open);
        e = strstr(s, close);
        if (!e)
                return NULL;
        v = strndup(s, (size_t) MIN(e - s, 512));
        for (char *p = v; p && *p; p++)
                if ((unsigned char) *p < 0x20 || *p == 0x7f)
                        *p = ' ';
        return v;
}

/* Ends the current transfer: out of the store, its space free, the callers told. */
static void finish(Uploads *u, bool ok, const char *message) {
        char id[TRANSFER_ID_LEN + 1];
        int r;

        memcpy(id, u->current, sizeof(id));
        http_transfer_cancel(u->put);
        u->put = NULL;
        event_disarm(u->retry_timer);
        u->current[0] = '\0';
        u->phase = PHASE_IDLE;
        r = transfer_store_remove(u->store, id);
        if (r < 0 && r != -ENOENT)
                log_warning_errno(r, "Failed to remove transfer %s from %s, ignoring: %m", id,
                                  u->dir);
        if (ok)
                log_event(LOG_INFO, LODEV_MESSAGE_TRANSFER_FINISHED, NULL, id,
                          "Transfer %s finished: %s", id, message);
        else
                log_event(LOG_ERR, LODEV_MESSAGE_TRANSFER_FAILED, NULL, id,
                          "Transfer %s failed: %s", id, message);
        if (u->cb.finished)
                u->cb.finished(id, ok, message, u->userdata);
        queued_changed(u);
        kick(u);
}

static int on_retry(sd_event_source *s, uint64_t usec, void *userdata) {
        Uploads *u = userdata;

        if (u->phase != PHASE_RETRY_WAIT)
                return 0;
        u->phase = PHASE_LINK_WANTED;
        kick(u);
        return 0;
}

/* The attempt failed for a reason that may pass: ask for a fresh link after a backoff. */
static void retry_later(Uploads *u, const char *why) {
        uint64_t delay = backoff_next(&u->backoff, random_u64());
        int r;

        log_transfer(LOG_WARNING, u->current, "Transfer %s: %s; trying again in %.1f s.",
                     u->current, why, (double) delay / 1e6);
        u->phase = PHASE_RETRY_WAIT;
        r = event_arm_timer(u->event, &u->retry_timer, delay, 0, false, on_retry, u,
                            "upload-retry");
        if (r < 0) {
                log_error_errno(r, "Failed to arm the upload retry timer: %m");
                u->phase = PHASE_LINK_WANTED;
        }
}

static void on_put_progress(HttpTransfer *t, uint64_t done, uint64_t total, void *userdata) {
        Uploads *u = userdata;
        uint64_t now = event_now(u->event);

        u->done = done;
        if (u->last_progress != 0 && now < u->last_progress + PROGRESS_USEC)
                return;
        u->last_progress = now;
        if (u->cb.progress)
                u->cb.progress(u->current, done, u->total, u->userdata);
}

static void on_put_finished(HttpTransfer *t, const HttpResult *res, void *userdata) {
        _cleanup_free_ char *code = NULL, *message = NULL, *text = NULL;
        Uploads *u = userdata;

        u->put = NULL;
        (void) transfer_store_mark_queued(u->store, u->current);
        if (res->error < 0) {
                text = strdup_printf("PUT to %s: %s", u->host,
                                     res->error_text ?: strerror(-res->error));
                retry_later(u, text ?: "PUT failed");
                return;
        }
        if (res->status >= 200 && res->status < 300) {
                text = strdup_printf("uploaded %" PRIu64 " bytes to %s", u->total, u->host);
                finish(u, true, text ?: "uploaded");
                return;
        }
        code = xml_element(res->body, "Code");
        message = xml_element(res->body, "Message");
        text = strdup_printf("HTTP %ld %s: %s", res->status, code ?: "error",
                             message ?: "(no message)");
        if (!text) {
                retry_later(u, "out of memory");
                return;
        }
        if (res->status == 403) {
                /* An expired link, most often: a fresh one is a request away. */
                if (++u->link_refusals > LINK_REFUSALS_MAX) {
                        free(message);
                        message = strdup_printf("the upload link was refused %u times, last "
                                                "with %s", u->link_refusals, text);
                        finish(u, false, message ?: text);
                        return;
                }
                log_transfer(LOG_NOTICE, u->current, "Transfer %s: %s; asking for a new link.",
                             u->current, text);
                u->phase = PHASE_LINK_WANTED;
                kick(u);
                return;
        }
        if (res->status >= 500 || res->status == 408 || res->status == 429) {
                retry_later(u, text);
                return;
        }
        finish(u, false, text);
}

static void start_put(Uploads *u, const char *url) {
        _cleanup_close_ int fd = -EBADF;
        const Transfer *t = transfer_store_find(u->store, u->current);
        _cleanup_free_ char *text = NULL;
        int r;

        assert(t);
        url_host(url, u->host, sizeof(u->host));
        if (t->attempts >= ATTEMPTS_MAX) {
                text = strdup_printf("gave up after %u attempts", t->attempts);
                finish(u, false, text ?: "gave up");
                return;
        }
        r = transfer_store_mark_uploading(u->store, u->current);
        if (r >= 0)
                r = fd = transfer_open_data(u->store, u->current);
        if (r < 0) {
                if (r == -EBADMSG || r == -ENOENT) {
                        finish(u, false, "the spooled copy of the file is damaged or gone");
                        return;
                }
                text = strdup_printf("cannot read the spooled file: %s", strerror(-r));
                retry_later(u, text ?: "cannot read the spooled file");
                return;
        }
        u->done = 0;
        u->total = t->size;
        u->last_progress = 0;
        r = http_put_fd(u->http, url, fd, t->size, t->content_type, on_put_progress,
                        on_put_finished, u, &u->put);
        if (r == -EPROTONOSUPPORT || r == -EINVAL) {
                text = strdup_printf("the upload link for %s cannot be used (%s)", u->host,
                                     r == -EINVAL ? "malformed"
                                                  : "plain http:// needs http.allow_http");
                (void) transfer_store_mark_queued(u->store, u->current);
                finish(u, false, text ?: "unusable upload link");
                return;
        }
        if (r < 0) {
                (void) transfer_store_mark_queued(u->store, u->current);
                text = strdup_printf("cannot start the PUT: %s", strerror(-r));
                retry_later(u, text ?: "cannot start the PUT");
                return;
        }
        u->phase = PHASE_PUT;
        log_transfer(LOG_INFO, u->current,
                     "Uploading transfer %s (%s, %" PRIu64 " bytes, %s) to %s, attempt %u.",
                     u->current, t->file_name, t->size, t->content_type, u->host, t->attempts);
}

/* Picks the next transfer when idle and lets the channel ask for its link. */
static void kick(Uploads *u) {
        if (u->phase == PHASE_IDLE) {
                const Transfer *t = transfer_store_nth(u->store, 0);

                if (!t)
                        return;
                memcpy(u->current, t->id, sizeof(u->current));
                u->phase = PHASE_LINK_WANTED;
                u->link_refusals = 0;
                backoff_reset(&u->backoff);
        }
        if (u->phase == PHASE_LINK_WANTED && !u->link_pending && u->channel)
                channel_wake(u->channel);
}

static int on_link_timeout(sd_event_source *s, uint64_t usec, void *userdata) {
        Uploads *u = userdata;

        u->link_pending = false;
        if (u->phase == PHASE_LINK_WAIT && streq(u->current, u->link_for))
                retry_later(u, "no answer to the upload link request within 30 s");
        else
                kick(u);
        return 0;
}

static int channel_next(Channel *ch, ChannelMessage *ret, void *userdata) {
        _cleanup_free_ char *topic = NULL, *json = NULL;
        Uploads *u = userdata;
        const Transfer *t;
        size_t len;
        int r;

        if (u->phase != PHASE_LINK_WANTED || u->link_pending)
                return 0;
        t = transfer_store_find(u->store, u->current);
        assert(t);
        r = message_encode_upload_link_request(t->file_name, t->content_type, &json);
        if (r >= 0) {
                topic = strdup(u->request_topic);
                if (!topic)
                        r = -ENOMEM;
        }
        if (r < 0) {
                retry_later(u, "cannot build the upload link request");
                return 0;
        }
        r = event_arm_timer(u->event, &u->link_timer, LINK_TIMEOUT_USEC, 0, false,
                            on_link_timeout, u, "upload-link-timeout");
        if (r < 0) {
                retry_later(u, "cannot arm the link timeout");
                return 0;
        }
        len = strlen(json);
        *ret = (ChannelMessage) {
                .topic = TAKE_PTR(topic),
                .data = TAKE_PTR(json),
                .len = len,
        };
        u->link_pending = true;
        memcpy(u->link_for, u->current, sizeof(u->link_for));
        u->phase = PHASE_LINK_WAIT;
        log_transfer(LOG_DEBUG, u->current, "Asking for an upload link for transfer %s.",
                     u->current);
        return 1;
}

static void channel_acked(Channel *ch, uint64_t cookie, void *userdata) {
}

static void channel_failed(Channel *ch, uint64_t cookie, int error, void *userdata) {
        Uploads *u = userdata;

        u->link_pending = false;
        event_disarm(u->link_timer);
        if (u->phase == PHASE_LINK_WAIT && streq(u->current, u->link_for))
                retry_later(u, "the upload link request could not be published");
        else
                kick(u);
}

static void channel_online(Channel *ch, void *userdata) {
        kick(userdata);
}

static const ChannelOps channel_ops = {
        .next = channel_next,
        .acked = channel_acked,
        .failed = channel_failed,
        .online = channel_online,
};

/* Takes the answer to the outstanding request; false when none was expected, or it belongs
 * to a transfer that is gone (then the next one may ask). */
static bool take_answer(Uploads *u) {
        if (!u->link_pending) {
                log_debug("An upload link answer that no request waits for, ignoring.");
                return false;
        }
        u->link_pending = false;
        event_disarm(u->link_timer);
        if (u->phase != PHASE_LINK_WAIT || !streq(u->current, u->link_for)) {
                kick(u);
                return false;
        }
        return true;
}

static void on_link(const char *topic, const void *data, size_t len, void *userdata) {
        _cleanup_free_ char *url = NULL;
        Uploads *u = userdata;
        int r;

        r = message_decode_upload_link(data, len, &url);
        if (r < 0) {
                log_warning_errno(r, "Malformed message on %s, ignoring: %m", topic);
                return;
        }
        if (!take_answer(u))
                return;
        start_put(u, url);
}

static bool error_may_pass(const PlatformError *e) {
        static const char *const codes[] = {
                "Throttling",    "ThrottlingException", "RequestThrottled",
                "InternalError", "InternalFailure",     "ServiceUnavailable",
        };

        if (e->status_code >= 500 || e->status_code == 429)
                return true;
        for (size_t i = 0; i < ELEMENTSOF(codes); i++)
                if (streq_ptr(e->error_code, codes[i]))
                        return true;
        return false;
}

static void on_link_rejected(const char *topic, const void *data, size_t len, void *userdata) {
        _cleanup_free_ char *text = NULL;
        Uploads *u = userdata;
        PlatformError e = {};
        int r;

        r = message_decode_error(data, len, &e);
        if (!take_answer(u)) {
                platform_error_done(&e);
                return;
        }
        if (r < 0) {
                retry_later(u, "the upload link request was rejected with a malformed answer");
                return;
        }
        text = strdup_printf("upload link request rejected: %d %s: %s", e.status_code,
                             e.error_code, strempty(e.error_message));
        if (error_may_pass(&e))
                retry_later(u, text ?: "upload link request rejected");
        else
                finish(u, false, text ?: "upload link request rejected");
        platform_error_done(&e);
}

int uploads_attach(Uploads *u, Connection *c) {
        const char *thing = connection_thing_name(c);
        _cleanup_free_ char *rejected = NULL;
        int r;

        /* Not .../accepted: the answer comes on <thing>, and a second copy of it could be
         * taken for the answer to the next request. */
        r = topic_build(TOPIC_UPLOAD_LINK_REJECTED, thing, NULL, NULL, &rejected);
        if (r >= 0)
                r = connection_subscribe(c, thing, on_link, u);
        if (r >= 0)
                r = connection_subscribe(c, rejected, on_link_rejected, u);
        if (r >= 0)
                r = connection_add_channel(c, CHANNEL_CONTROL, &channel_ops, u, &u->channel);
        if (r < 0)
                return r;
        kick(u);
        return 0;
}

void uploads_detach(Uploads *u) {
        u->channel = NULL;
        u->link_pending = false;
        event_disarm(u->link_timer);
        if (u->phase == PHASE_LINK_WAIT)
                u->phase = PHASE_LINK_WANTED;
}

static Copy *copy_free(Copy *c) {
        transfer_copy_free(c->copy);
        free(c);
        return NULL;
}

static void copy_unlink(Uploads *u, Copy *c) {
        for (Copy **p = &u->copies; *p; p = &(*p)->next)
                if (*p == c) {
                        *p = c->next;
                        break;
                }
        if (!u->copies)
                (void) sd_event_source_set_enabled(u->copy_event, SD_EVENT_OFF);
}

/* One chunk of the oldest copy; the others wait their turn. */
static int on_copy(sd_event_source *s, void *userdata) {
        Uploads *u = userdata;
        Copy *c = u->copies, **tail;
        const Transfer *t = NULL;
        int r;

        if (!c)
                return 0;
        r = transfer_copy_step(c->copy, COPY_CHUNK);
        if (r > 0) {
                /* To the end of the line. */
                if (c->next) {
                        u->copies = c->next;
                        for (tail = &u->copies; *tail; tail = &(*tail)->next)
                                ;
                        *tail = c;
                        c->next = NULL;
                }
                return 0;
        }
        copy_unlink(u, c);
        if (r == 0)
                r = transfer_copy_commit(c->copy, &t);
        if (r < 0) {
                log_transfer(LOG_WARNING, transfer_copy_id(c->copy),
                             "Failed to spool a file as transfer %s: %s%s%s",
                             transfer_copy_id(c->copy), strerror(-r),
                             transfer_copy_error_reason(c->copy) ? ": " : "",
                             strempty(transfer_copy_error_reason(c->copy)));
                c->done(NULL, r, transfer_copy_error_reason(c->copy), c->userdata);
                copy_free(c);
                return 0;
        }
        log_transfer(LOG_INFO, t->id, "Spooled %s (%" PRIu64 " bytes, %s) as transfer %s.",
                     t->file_name, t->size, t->content_type, t->id);
        c->done(t->id, 0, NULL, c->userdata);
        copy_free(c);
        queued_changed(u);
        kick(u);
        return 0;
}

int uploads_add(Uploads *u, int fd, const char *file_name, const char *content_type,
                UploadsAdded done, void *userdata, const char **ret_reason) {
        Copy *c, **tail;
        int r;

        if (isempty(content_type))
                content_type = mime_table_lookup(u->mime, file_name);
        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        r = transfer_copy_begin(u->store, fd, file_name, content_type, &c->copy, ret_reason);
        if (r < 0) {
                free(c);
                return r;
        }
        c->done = done;
        c->userdata = userdata;
        for (tail = &u->copies; *tail; tail = &(*tail)->next)
                ;
        *tail = c;
        /* The copy runs from the loop at idle priority, after the bus and the sockets. */
        (void) sd_event_source_set_enabled(u->copy_event, SD_EVENT_ON);
        return 0;
}

int uploads_cancel(Uploads *u, const char *id) {
        int r;

        if (!transfer_store_find(u->store, id))
                return -ENOENT;
        if (streq(u->current, id)) {
                finish(u, false, "canceled");
                return 0;
        }
        /* Still waiting its turn: nothing runs for it. */
        r = transfer_store_remove(u->store, id);
        if (r < 0)
                return r;
        log_event(LOG_NOTICE, LODEV_MESSAGE_TRANSFER_FAILED, NULL, id, "Transfer %s failed: canceled",
                  id);
        if (u->cb.finished)
                u->cb.finished(id, false, "canceled", u->userdata);
        queued_changed(u);
        return 0;
}

unsigned uploads_queued(const Uploads *u) {
        return (unsigned) MIN(transfer_store_count(u->store), (size_t) UINT32_MAX);
}

bool uploads_nth(const Uploads *u, size_t i, UploadInfo *ret) {
        const Transfer *t = transfer_store_nth(u->store, i);
        bool current;

        if (!t)
                return false;
        current = streq(t->id, u->current);
        *ret = (UploadInfo) {
                .id = t->id,
                .file_name = t->file_name,
                .state = !current                        ? "queued"
                         : u->phase == PHASE_RETRY_WAIT ? "waiting"
                                                         : "uploading",
                .done = current && u->phase == PHASE_PUT ? u->done : 0,
                .total = t->size,
        };
        return true;
}

uint64_t uploads_used_bytes(const Uploads *u) {
        return transfer_store_used_bytes(u->store);
}

uint64_t uploads_max_bytes(const Uploads *u) {
        return transfer_store_max_bytes(u->store);
}

int uploads_new(sd_event *event, HttpClient *http, const char *state_dir, uint64_t max_bytes,
                const UploadsCallbacks *cb, void *userdata, Uploads **ret) {
        const TransferStoreIssue *issues = NULL;
        Uploads *u;
        size_t n;
        int r;

        u = calloc(1, sizeof(*u));
        if (!u)
                return log_oom();
        u->event = sd_event_ref(event);
        u->http = http;
        u->cb = *cb;
        u->userdata = userdata;
        backoff_init(&u->backoff, RETRY_MIN_USEC, RETRY_MAX_USEC);
        u->dir = strdup_printf("%s/transfers", state_dir);
        if (!u->dir || topic_build(TOPIC_UPLOAD_LINK_REQUEST, NULL, NULL, NULL,
                                   &u->request_topic) < 0) {
                uploads_free(u);
                return log_oom();
        }
        r = transfer_store_open(u->dir, max_bytes, &u->store);
        if (r < 0) {
                log_error_errno(r, "Failed to open the transfer spool %s: %m", u->dir);
                uploads_free(u);
                return r;
        }
        n = transfer_store_issues(u->store, &issues);
        for (size_t i = 0; i < n; i++)
                log_full_errno(issues[i].lost ? LOG_WARNING : LOG_DEBUG, 0, "Transfer spool %s: %s: %s",
                               u->dir, issues[i].file, issues[i].message);
        /* Without mime.types every file is application/octet-stream, which S3 takes. */
        r = mime_table_load(MIME_TYPES_PATH, &u->mime);
        if (r < 0)
                log_warning_errno(r, "Cannot read %s, content types default to %s: %m",
                                  MIME_TYPES_PATH, MIME_TYPE_DEFAULT);
        r = event_add_idle(event, &u->copy_event, on_copy, u, "upload-copy");
        if (r < 0) {
                uploads_free(u);
                return log_error_errno(r, "Failed to set up the spool copy source: %m");
        }
        if (uploads_queued(u) > 0)
                log_info("%u file transfers queued from before.", uploads_queued(u));
        *ret = u;
        return 0;
}

Uploads *uploads_free(Uploads *u) {
        if (!u)
                return NULL;
        while (u->copies) {
                Copy *c = u->copies;

                u->copies = c->next;
                c->done(NULL, -ESHUTDOWN, "lodevd is stopping", c->userdata);
                copy_free(c);
        }
        /* The transfer stays in the spool and starts over at the next start. */
        http_transfer_cancel(u->put);
        sd_event_source_disable_unref(u->copy_event);
        sd_event_source_disable_unref(u->link_timer);
        sd_event_source_disable_unref(u->retry_timer);
        transfer_store_free(u->store);
        mime_table_free(u->mime);
        free(u->request_topic);
        free(u->dir);
        sd_event_unref(u->event);
        free(u);
        return NULL;
}
