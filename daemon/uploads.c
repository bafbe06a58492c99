/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <inttypes.h>

#include "backoff.h"
#include "event-util.h"
#include "log.h"
#include "message.h"
#include "mime.h"
#include "s3-answer.h"
#include "topic.h"
#include "transfer-store.h"
#include "uploads.h"
#include "util.h"

/* Bytes copied into the spool per loop iteration: a few milliseconds of work, so the bus and
 * the MQTT socket are served between chunks. */
#define COPY_CHUNK (UINT64_C(8) * 1024 * 1024)
/* An answer to a link request that does not come in this time is given up on. */
#define LINK_TIMEOUT_USEC (UINT64_C(30) * 1000000)
/* Answers that may pass: each transfer waits within these bounds before it asks again. */
#define RETRY_MIN_USEC (UINT64_C(1) * 1000000)
#define RETRY_MAX_USEC (UINT64_C(300) * 1000000)
/* 403s (an expired or refused link) in a row before a transfer is failed. */
#define LINK_REFUSALS_MAX 5
/* Answers of the storage service that the classification does not know, before a transfer
 * is failed: they may pass, but more likely never do. */
#define UNKNOWN_ANSWERS_MAX 3
/* Attempts started, across restarts, before a transfer is given up; with the backoff above,
 * several hours of trying. */
#define ATTEMPTS_MAX 100
#define PROGRESS_USEC (UINT64_C(1) * 1000000)
/* A transfer spool that cannot be read is read again within these bounds. */
#define STORE_RETRY_MIN_USEC (UINT64_C(1) * 1000000)
#define STORE_RETRY_MAX_USEC (UINT64_C(300) * 1000000)

#define log_transfer(level, id, ...)                                                               \
        log_internal(level, 0, __FILE__, __LINE__, __func__, NULL, NULL, id, __VA_ARGS__)

typedef enum UploadPhase {
        PHASE_IDLE,        /* no current transfer */
        PHASE_LINK_WANTED, /* the current transfer needs a link; the channel sends the request */
        PHASE_LINK_WAIT,   /* the request went out, the answer has not come */
        PHASE_PUT,         /* the PUT runs */
} UploadPhase;

/* What a transfer that did not go through at once remembers until it leaves the queue: its
 * own backoff, so that it never holds up the transfers behind it. */
typedef struct Retry {
        char id[TRANSFER_ID_LEN + 1];
        Backoff backoff;
        uint64_t not_before;       /* CLOCK_MONOTONIC: not picked again before */
        unsigned link_refusals;    /* NEW_LINK answers in a row */
        unsigned unknown_answers;  /* answers the classification does not know */
        bool removing;             /* finished, but transfer_store_remove() failed: never
                                    * uploaded again, only its removal is retried */
} Retry;

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
        uint64_t max_bytes;
        UploadsCallbacks cb;
        void *userdata;
        TransferStore *store; /* NULL while it cannot be read */
        Backoff store_backoff;
        sd_event_source *store_timer;
        MimeTable *mime;

        Copy *copies; /* in progress, stepped round robin */
        sd_event_source *copy_event;

        Channel *channel; /* NULL while detached */
        char *request_topic;

        char current[TRANSFER_ID_LEN + 1]; /* empty when idle */
        UploadPhase phase;
        /* A link request is out: no other goes before its answer or its timeout, since the
         * answer carries no correlation id. It is matched to the request by file name. */
        bool link_pending;
        char link_for[TRANSFER_ID_LEN + 1];
        char *link_file_name;
        HttpTransfer *put;
        char host[256]; /* of the current link, for logs: the query string is a credential */
        uint64_t done, total, last_progress;
        sd_event_source *link_timer;

        Retry *retries;
        size_t n_retries;
        sd_event_source *wake_timer; /* the earliest Retry.not_before */
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

static Retry *retry_find(Uploads *u, const char *id) {
        for (size_t i = 0; i < u->n_retries; i++)
                if (streq(u->retries[i].id, id))
                        return &u->retries[i];
        return NULL;
}

static Retry *retry_get(Uploads *u, const char *id) {
        Retry *r = retry_find(u, id), *a;

        if (r)
                return r;
        a = reallocarray(u->retries, u->n_retries + 1, sizeof(Retry));
        if (!a)
                return NULL;
        u->retries = a;
        r = &a[u->n_retries++];
        *r = (Retry) {};
        memcpy(r->id, id, sizeof(r->id));
        backoff_init(&r->backoff, RETRY_MIN_USEC, RETRY_MAX_USEC);
        return r;
}

static void retry_drop(Uploads *u, const char *id) {
        Retry *r = retry_find(u, id);

        if (r)
                *r = u->retries[--u->n_retries];
}

/* Out of the store; if that fails the transfer stays, is never uploaded again, and its
 * removal is tried again with backoff. */
static void remove_transfer(Uploads *u, const char *id) {
        Retry *r;
        int k;

        k = transfer_store_remove(u->store, id);
        if (k >= 0 || k == -ENOENT) {
                retry_drop(u, id);
                return;
        }
        r = retry_get(u, id);
        if (!r) {
                log_oom();
                return;
        }
        if (!r->removing)
                backoff_reset(&r->backoff);
        r->removing = true;
        r->not_before = event_now(u->event) + backoff_next(&r->backoff, random_u64());
        log_transfer(LOG_WARNING, id,
                     "Failed to remove transfer %s from %s: %s; it is not uploaded again, and "
                     "removing it is tried again in %.1f s.",
                     id, u->dir, strerror(-k),
                     (double) (r->not_before - event_now(u->event)) / 1e6);
}

/* Ends the current transfer: out of the store, its space free, the callers told. */
static void finish(Uploads *u, bool ok, const char *message) {
        char id[TRANSFER_ID_LEN + 1];

        memcpy(id, u->current, sizeof(id));
        http_transfer_cancel(u->put);
        u->put = NULL;
        u->current[0] = '\0';
        u->phase = PHASE_IDLE;
        remove_transfer(u, id);
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

/* The current transfer failed for a reason that may pass: it waits out its own backoff, and
 * the queue moves on to the next transfer meanwhile. */
static void retry_later(Uploads *u, const char *why) {
        Retry *r = retry_get(u, u->current);
        uint64_t delay = RETRY_MIN_USEC;

        if (r) {
                delay = backoff_next(&r->backoff, random_u64());
                r->not_before = event_now(u->event) + delay;
        } else
                log_oom(); /* picked again at once: nothing better to do without memory */
        log_transfer(LOG_WARNING, u->current, "Transfer %s: %s; trying again in %.1f s.",
                     u->current, why, (double) delay / 1e6);
        http_transfer_cancel(u->put);
        u->put = NULL;
        u->current[0] = '\0';
        u->phase = PHASE_IDLE;
        kick(u);
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
        S3Verdict verdict;
        Retry *r;

        u->put = NULL;
        (void) transfer_store_mark_queued(u->store, u->current);
        if (res->error >= 0 && res->body && s3_error_parse(res->body, &code, &message) < 0) {
                retry_later(u, "out of memory");
                return;
        }
        verdict = s3_classify(res->error, res->status, code);
        if (verdict == S3_VERDICT_DONE) {
                text = strdup_printf("uploaded %" PRIu64 " bytes to %s", u->total, u->host);
                finish(u, true, text ?: "uploaded");
                return;
        }
        if (res->error < 0)
                text = strdup_printf("PUT to %s: %s", u->host,
                                     res->error_text ?: strerror(-res->error));
        else
                text = strdup_printf("HTTP %ld %s: %s", res->status, code ?: "error",
                                     message ?: "(no message)");
        if (!text) {
                retry_later(u, "out of memory");
                return;
        }

        r = retry_get(u, u->current);
        if (r && verdict != S3_VERDICT_NEW_LINK)
                r->link_refusals = 0;
        switch (verdict) {
        case S3_VERDICT_NEW_LINK:
                /* An expired link, most often: a fresh one is a request away. */
                if (r && ++r->link_refusals > LINK_REFUSALS_MAX) {
                        free(message);
                        message = strdup_printf("the upload link was refused %u times, last "
                                                "with %s", r->link_refusals, text);
                        finish(u, false, message ?: text);
                        return;
                }
                log_transfer(LOG_NOTICE, u->current, "Transfer %s: %s; asking for a new link.",
                             u->current, text);
                u->phase = PHASE_LINK_WANTED;
                kick(u);
                return;
        case S3_VERDICT_FAIL:
                finish(u, false, text);
                return;
        case S3_VERDICT_UNKNOWN:
                if (r && ++r->unknown_answers >= UNKNOWN_ANSWERS_MAX) {
                        free(message);
                        message = strdup_printf("%s (%u times)", text, r->unknown_answers);
                        finish(u, false, message ?: text);
                        return;
                }
                retry_later(u, text);
                return;
        default:
                /* RETRY, and REDIRECT: a presigned PUT is signed for its host, so it is not
                 * followed; a fresh link after the backoff names the right endpoint. */
                retry_later(u, text);
                return;
        }
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
        if (r > 0)
                log_transfer(LOG_WARNING, u->current,
                             "Transfer %s: the disk is full, attempt %u is not recorded on disk; "
                             "uploading all the same.",
                             u->current, t->attempts);
        if (r >= 0)
                r = fd = transfer_open_data(u->store, u->current);
        if (r < 0) {
                (void) transfer_store_mark_queued(u->store, u->current);
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

static int on_wake(sd_event_source *s, uint64_t usec, void *userdata) {
        kick(userdata);
        return 0;
}

/* Whether transfer t may be picked now. */
static bool eligible(Uploads *u, const Transfer *t, uint64_t now) {
        const Retry *r = retry_find(u, t->id);

        return !r || (!r->removing && r->not_before <= now);
}

/* Retries removals that are due; arms the wake-up for the earliest transfer still waiting. */
static void tend_retries(Uploads *u, uint64_t now) {
        uint64_t next = UINT64_MAX;
        bool removed = false;

        for (size_t i = 0; i < u->n_retries;) {
                Retry *r = &u->retries[i];
                char id[TRANSFER_ID_LEN + 1];

                if (r->removing && r->not_before <= now) {
                        memcpy(id, r->id, sizeof(id));
                        remove_transfer(u, id); /* drops or re-arms r */
                        if (!retry_find(u, id)) {
                                log_transfer(LOG_INFO, id, "Transfer %s removed from %s.", id,
                                             u->dir);
                                removed = true;
                                continue; /* the array moved: look at index i again */
                        }
                        r = retry_find(u, id);
                }
                if (r->not_before > now)
                        next = MIN(next, r->not_before);
                i++;
        }
        if (removed)
                queued_changed(u);
        if (next == UINT64_MAX)
                event_disarm(u->wake_timer);
        else if (event_arm_timer(u->event, &u->wake_timer, next - now, 0, false, on_wake, u,
                                 "upload-wake") < 0)
                log_error("Failed to arm the upload retry timer; waiting transfers go with the "
                          "next upload.");
}

/* Picks the next transfer when idle (the oldest that is not waiting out a backoff) and lets
 * the channel ask for its link. */
static void kick(Uploads *u) {
        uint64_t now;

        if (!u->store)
                return;
        now = event_now(u->event);
        tend_retries(u, now);
        if (u->phase == PHASE_IDLE) {
                const Transfer *t = NULL;

                for (size_t i = 0; (t = transfer_store_nth(u->store, i)); i++)
                        if (eligible(u, t, now))
                                break;
                if (!t)
                        return;
                memcpy(u->current, t->id, sizeof(u->current));
                u->phase = PHASE_LINK_WANTED;
        }
        if (u->phase == PHASE_LINK_WANTED && !u->link_pending && u->channel)
                channel_wake(u->channel);
}

static int on_link_timeout(sd_event_source *s, uint64_t usec, void *userdata) {
        Uploads *u = userdata;

        /* No longer outstanding: a late answer may still come, and is matched by its name. */
        u->link_pending = false;
        if (u->phase == PHASE_LINK_WAIT && streq(u->current, u->link_for))
                retry_later(u, "no answer to the upload link request within 30 s");
        else
                kick(u);
        return 0;
}

static int channel_next(Channel *ch, ChannelMessage *ret, void *userdata) {
        _cleanup_free_ char *topic = NULL, *json = NULL, *name = NULL;
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
                name = strdup(t->file_name);
                if (!topic || !name)
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
        free(u->link_file_name);
        u->link_file_name = TAKE_PTR(name);
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
        char host[256];
        int r;

        r = message_decode_upload_link(data, len, &url);
        if (r < 0) {
                log_warning_errno(r, "Malformed message on %s, ignoring: %m", topic);
                return;
        }
        /* The answer names no request: only its file name ties it to one. A late answer to a
         * request given up on (a timeout, a cancel) must never send another file's bytes. */
        if (!u->link_pending || !s3_url_names_file(url, u->link_file_name)) {
                url_host(url, host, sizeof(host));
                log_notice("An upload link (to %s) that is not for the file asked for (%s), "
                           "ignoring.",
                           host, u->link_pending ? u->link_file_name : "none outstanding");
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

int uploads_add(Uploads *u, int fd, const char *file_name, const char *content_type, uid_t uid,
                UploadsAdded done, void *userdata, const char **ret_reason) {
        Copy *c, **tail;
        int r;

        if (!u->store) {
                if (ret_reason)
                        *ret_reason = "the transfer spool cannot be read now; lodevd tries "
                                      "again";
                return -EAGAIN;
        }
        if (isempty(content_type))
                content_type = mime_table_lookup(u->mime, file_name);
        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        r = transfer_copy_begin(u->store, fd, file_name, content_type, uid, &c->copy,
                                ret_reason);
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

int uploads_cancel(Uploads *u, const char *id, uid_t uid) {
        const Transfer *t = u->store ? transfer_store_find(u->store, id) : NULL;
        const Retry *r;
        int k;

        if (!t)
                return -ENOENT;
        if (uid != 0 && uid != t->uid)
                return -EPERM;
        r = retry_find(u, id);
        if (r && r->removing)
                return -ENOENT; /* already finished, only not yet out of the directory */
        if (streq(u->current, id)) {
                finish(u, false, "canceled");
                return 0;
        }
        /* Still waiting its turn: nothing runs for it. */
        k = transfer_store_remove(u->store, id);
        if (k < 0)
                return k;
        retry_drop(u, id);
        log_event(LOG_NOTICE, LODEV_MESSAGE_TRANSFER_FAILED, NULL, id, "Transfer %s failed: canceled",
                  id);
        if (u->cb.finished)
                u->cb.finished(id, false, "canceled", u->userdata);
        queued_changed(u);
        kick(u);
        return 0;
}

unsigned uploads_queued(const Uploads *u) {
        size_t n = u->store ? transfer_store_count(u->store) : 0;

        return (unsigned) MIN(n, (size_t) UINT32_MAX);
}

bool uploads_nth(const Uploads *u, size_t i, UploadInfo *ret) {
        const Transfer *t = u->store ? transfer_store_nth(u->store, i) : NULL;
        const Retry *r;
        const char *state = "queued";
        bool current;

        if (!t)
                return false;
        current = streq(t->id, u->current);
        r = retry_find((Uploads *) u, t->id);
        if (current)
                state = "uploading";
        else if (r && r->removing)
                state = "finished";
        else if (r && r->not_before > event_now(u->event))
                state = "waiting";
        *ret = (UploadInfo) {
                .id = t->id,
                .file_name = t->file_name,
                .state = state,
                .done = current && u->phase == PHASE_PUT ? u->done : 0,
                .total = t->size,
        };
        return true;
}

uint64_t uploads_used_bytes(const Uploads *u) {
        return u->store ? transfer_store_used_bytes(u->store) : 0;
}

uint64_t uploads_max_bytes(const Uploads *u) {
        return u->max_bytes;
}

const char *uploads_dir(const Uploads *u) {
        return u->dir;
}

int uploads_space(const Uploads *u, StateDirSpace *ret) {
        if (!u->store)
                return -EAGAIN;
        return transfer_store_space(u->store, ret);
}

static int on_store_retry(sd_event_source *s, uint64_t usec, void *userdata);

/* Opens the transfer spool. An error that may pass (EIO, EMFILE, EACCES, ...) deletes
 * nothing: the spool is read again with backoff, and UploadFile answers that it cannot take
 * files meanwhile. */
static void open_store(Uploads *u) {
        const TransferStoreIssue *issues = NULL;
        _cleanup_free_ char *failed = NULL;
        uint64_t delay;
        size_t n;
        int r;

        r = transfer_store_open(u->dir, u->max_bytes, &u->store, &failed);
        if (r < 0) {
                delay = backoff_next(&u->store_backoff, random_u64());
                log_event(LOG_ERR, LODEV_MESSAGE_TRANSFERS_UNREADABLE, NULL, NULL,
                          "Cannot read the transfer spool %s (%s): %s; nothing is deleted, "
                          "trying again in %.1f s.",
                          u->dir, strempty(failed), strerror(-r), (double) delay / 1e6);
                r = event_arm_timer(u->event, &u->store_timer, delay, 0, false, on_store_retry,
                                    u, "transfer-spool-retry");
                if (r < 0)
                        log_error_errno(r, "Failed to arm the transfer spool timer: %m");
                return;
        }
        if (backoff_attempts(&u->store_backoff) > 0)
                log_info("Transfer spool %s read.", u->dir);
        backoff_reset(&u->store_backoff);
        n = transfer_store_issues(u->store, &issues);
        for (size_t i = 0; i < n; i++)
                log_full_errno(issues[i].lost ? LOG_WARNING : LOG_DEBUG, 0,
                               "Transfer spool %s: %s: %s", u->dir, issues[i].file,
                               issues[i].message);
        if (uploads_queued(u) > 0) {
                log_info("%u file transfers queued from before.", uploads_queued(u));
                queued_changed(u);
        }
        kick(u);
}

static int on_store_retry(sd_event_source *s, uint64_t usec, void *userdata) {
        open_store(userdata);
        return 0;
}

int uploads_new(sd_event *event, HttpClient *http, const char *state_dir, uint64_t max_bytes,
                const UploadsCallbacks *cb, void *userdata, Uploads **ret) {
        Uploads *u;
        int r;

        u = calloc(1, sizeof(*u));
        if (!u)
                return log_oom();
        u->event = sd_event_ref(event);
        u->http = http;
        u->max_bytes = max_bytes;
        u->cb = *cb;
        u->userdata = userdata;
        backoff_init(&u->store_backoff, STORE_RETRY_MIN_USEC, STORE_RETRY_MAX_USEC);
        u->dir = strdup_printf("%s/transfers", state_dir);
        if (!u->dir || topic_build(TOPIC_UPLOAD_LINK_REQUEST, NULL, NULL, NULL,
                                   &u->request_topic) < 0) {
                uploads_free(u);
                return log_oom();
        }
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
        open_store(u);
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
        sd_event_source_disable_unref(u->wake_timer);
        sd_event_source_disable_unref(u->store_timer);
        transfer_store_free(u->store);
        mime_table_free(u->mime);
        free(u->retries);
        free(u->link_file_name);
        free(u->request_topic);
        free(u->dir);
        sd_event_unref(u->event);
        free(u);
        return NULL;
}
