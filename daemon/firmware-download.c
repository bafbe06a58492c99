/* SPDX-License-Identifier: MIT */
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include "event-util.h"
#include "fileio.h"
#include "firmware-download.h"
#include "log.h"
#include "util.h"

struct FirmwareDownload {
        sd_event *event;
        HttpClient *http;
        FirmwareDownloadCallbacks cb;
        void *userdata;
        char *path, *url, *sha256;
        int64_t size;
        uint64_t max_size;

        int fd;
        uint64_t offset;      /* where the transfer starts */
        uint64_t pos, synced; /* bytes written, bytes durable */
        uint64_t recorded_usec; /* when synced() was last told */
        uint64_t total;       /* as the server announced it, 0 unknown */
        HttpTransfer *transfer;

        /* The transfer starts, and an end decided in start() is told, from the loop. */
        sd_event_source *idle;
        bool starting;
        bool ending;
        FirmwareDownloadResult end;
        char *message;       /* of end */
};

JobDownloadError firmware_download_classify(int error, long status) {
        if (error < 0)
                switch (error) {
                case -EPROTONOSUPPORT: /* a redirect to a scheme lodevd refuses */
                case -ELOOP:           /* redirects that go round */
                case -EINVAL:          /* a URL curl cannot parse */
                        return JOB_DOWNLOAD_REFUSED;
                case -EFBIG:
                        return JOB_DOWNLOAD_CORRUPT;
                case -ENOSPC:
                case -EDQUOT:
                case -E2BIG:
                        return JOB_DOWNLOAD_NO_SPACE;
                case -EIO:
                case -EBADF:
                case -EROFS:
                case -ENOMEM:
                        return JOB_DOWNLOAD_LOCAL;
                default:
                        return JOB_DOWNLOAD_NETWORK;
                }
        if (status == 403)
                return JOB_DOWNLOAD_EXPIRED;
        if (status == 408 || status == 429 || status >= 500 || status < 400)
                return JOB_DOWNLOAD_NETWORK;
        return JOB_DOWNLOAD_REFUSED;
}

static void set_message(FirmwareDownload *d, const char *fmt, ...) _printf_(2, 3);
static void set_message(FirmwareDownload *d, const char *fmt, ...) {
        va_list ap;
        char *m = NULL;

        va_start(ap, fmt);
        if (vasprintf(&m, fmt, ap) < 0)
                m = NULL;
        va_end(ap);
        free(d->message);
        d->message = m;
}

static void close_transfer(FirmwareDownload *d) {
        http_transfer_cancel(d->transfer);
        d->transfer = NULL;
        d->starting = false;
        if (d->idle)
                (void) sd_event_source_set_enabled(d->idle, SD_EVENT_OFF);
}

/* The end, told once. Only from the loop's own callbacks. */
static void finish(FirmwareDownload *d, bool complete, JobDownloadError error) {
        close_transfer(d);
        d->ending = false;
        d->end = (FirmwareDownloadResult) {
                .complete = complete,
                .error = error,
                .offset = d->synced,
                .message = complete ? NULL : (d->message ?: "the download failed"),
        };
        d->fd = safe_close(d->fd);
        d->cb.finished(d, &d->end, d->userdata);
}

/* An end decided where finished() must not run (from start()): told from the idle source. */
static void finish_later(FirmwareDownload *d, JobDownloadError error) {
        close_transfer(d);
        d->ending = true;
        d->end.error = error;
        (void) sd_event_source_set_enabled(d->idle, SD_EVENT_ONESHOT);
}

static uint64_t reserve(FirmwareDownload *d) {
        return d->cb.reserve ? d->cb.reserve(d, d->userdata) : 0;
}

/* Room for the rest of the download (needed bytes), with reserve() left over. */
static int check_space(FirmwareDownload *d, uint64_t needed) {
        uint64_t keep = reserve(d), avail;
        struct statvfs sv;

        if (fstatvfs(d->fd, &sv) < 0)
                return 0; /* no figure: the writes will tell */
        avail = (uint64_t) sv.f_bavail * sv.f_frsize;
        if (avail >= keep && avail - keep >= needed)
                return 0;
        if (needed > 0)
                set_message(d,
                            "%" PRIu64 " bytes are needed for the firmware in %s while %" PRIu64
                            " bytes must stay free for the observation spool and the job "
                            "journal; %" PRIu64 " are available",
                            needed, d->path, keep, avail);
        else
                set_message(d,
                            "the file system of %s is down to %" PRIu64 " free bytes, and %" PRIu64
                            " must stay free for the observation spool and the job journal",
                            d->path, avail, keep);
        return -ENOSPC;
}

static void progress(FirmwareDownload *d) {
        if (d->cb.progress)
                d->cb.progress(d, d->pos, d->size >= 0 ? (uint64_t) d->size : d->total,
                               d->userdata);
}

/* The helper made [0, offset) durable: recorded, so that a crash resumes from there. */
static void on_synced(HttpTransfer *t, uint64_t offset, void *userdata) {
        FirmwareDownload *d = userdata;
        int r;

        d->synced = offset;
        d->pos = MAX(d->pos, offset);
        /* Recorded at most once a second: each record is a journal write and fsync on the
         * loop, and the end (finished()) carries the last offset anyway. */
        if (d->cb.synced && event_now(d->event) - d->recorded_usec >= FIRMWARE_DOWNLOAD_SYNC_USEC) {
                d->recorded_usec = event_now(d->event);
                r = d->cb.synced(d, d->synced, d->userdata);
                if (r < 0) {
                        set_message(d, "cannot record the download's progress: %s",
                                    strerror(-r));
                        finish(d, false, JOB_DOWNLOAD_LOCAL);
                        return;
                }
        }
        /* A download without a known size is held to the room left as it goes. */
        if (check_space(d, 0) < 0)
                finish(d, false, JOB_DOWNLOAD_NO_SPACE);
}

static void on_progress(HttpTransfer *t, uint64_t done, uint64_t total, void *userdata) {
        FirmwareDownload *d = userdata;

        d->pos = done;
        d->total = total;
        progress(d);
}

/* Every byte is here and durable: size and digest. */
static void verify(FirmwareDownload *d, const char *digest) {
        if (d->size >= 0 && d->pos != (uint64_t) d->size) {
                set_message(d, "%" PRIu64 " bytes instead of the job document's %" PRId64,
                            d->pos, d->size);
                goto corrupt;
        }
        if (d->sha256) {
                if (!digest) {
                        set_message(d, "SHA-256 failed");
                        finish(d, false, JOB_DOWNLOAD_LOCAL);
                        return;
                }
                if (!streq(digest, d->sha256)) {
                        set_message(d, "SHA-256 %s, the job document says %s", digest, d->sha256);
                        goto corrupt;
                }
        }
        d->synced = d->pos;
        finish(d, true, 0);
        return;

corrupt:
        /* Start over next time: the bytes here are not the document's. */
        (void) ftruncate(d->fd, 0);
        d->pos = d->synced = 0;
        finish(d, false, JOB_DOWNLOAD_CORRUPT);
}

static void on_finished(HttpTransfer *t, const HttpResult *res, void *userdata) {
        FirmwareDownload *d = userdata;

        d->transfer = NULL;
        /* What the helper made durable, whatever the end: the next try resumes there. */
        d->synced = res->synced;
        if (res->error >= 0 && res->status >= 200 && res->status < 300) {
                d->pos = res->synced; /* the helper syncs everything before a success */
                verify(d, res->sha256);
                return;
        }
        d->pos = d->synced;
        if (res->error == -EFBIG) {
                /* The cap is the document's size, or firmware.max_download_bytes without one. */
                if (d->size >= 0) {
                        set_message(d, "the server sent more than the job document's size, "
                                       "%" PRId64 " bytes", d->size);
                        finish(d, false, JOB_DOWNLOAD_CORRUPT);
                } else {
                        set_message(d, "the firmware is larger than "
                                       "firmware.max_download_bytes, %" PRIu64 " bytes",
                                    d->max_size);
                        finish(d, false, JOB_DOWNLOAD_NO_SPACE);
                }
                return;
        }
        if (res->error < 0)
                set_message(d, "%s", res->error_text ?: strerror(-res->error));
        else if (res->status == 416 && d->offset > 0) {
                /* Nothing past our offset: the file here is not what the server has. */
                (void) ftruncate(d->fd, 0);
                d->pos = d->synced = 0;
                set_message(d, "HTTP 416");
                finish(d, false, JOB_DOWNLOAD_NETWORK);
                return;
        } else
                set_message(d, "HTTP %ld", res->status);
        finish(d, false, firmware_download_classify(res->error, res->status));
}

/* The file was complete before a restart: only its digest, from the helper. */
static void on_hashed(HttpTransfer *t, const HttpResult *res, void *userdata) {
        FirmwareDownload *d = userdata;

        d->transfer = NULL;
        if (res->error < 0) {
                set_message(d, "cannot hash %s: %s", d->path,
                            res->error_text ?: strerror(-res->error));
                finish(d, false, JOB_DOWNLOAD_LOCAL);
                return;
        }
        verify(d, res->sha256);
}

static void begin_transfer(FirmwareDownload *d) {
        HttpGet g = {
                .offset = d->offset,
                /* The cap is on the whole file: a server that ignores the range sends all. */
                .max_size = d->size >= 0 ? (uint64_t) d->size : d->max_size,
                .sha256 = d->sha256 != NULL,
                .sync_bytes = FIRMWARE_DOWNLOAD_SYNC_BYTES,
                .sync_usec = FIRMWARE_DOWNLOAD_SYNC_USEC,
        };
        int r;

        if (d->size >= 0 && d->offset == (uint64_t) d->size && d->offset > 0) {
                /* Everything was here before the restart. */
                if (!d->sha256) {
                        verify(d, NULL);
                        return;
                }
                r = http_hash_fd(d->http, d->fd, d->offset, on_hashed, d, &d->transfer);
        } else
                r = http_get_fd(d->http, d->url, d->fd, &g, on_progress, on_synced, on_finished,
                                d, &d->transfer);
        if (r < 0) {
                set_message(d, "cannot start the download: %s", strerror(-r));
                finish(d, false,
                       r == -EPROTONOSUPPORT || r == -EINVAL ? JOB_DOWNLOAD_REFUSED
                                                              : JOB_DOWNLOAD_LOCAL);
                return;
        }
        progress(d);
}

static int on_idle(sd_event_source *s, void *userdata) {
        FirmwareDownload *d = userdata;

        (void) sd_event_source_set_enabled(s, SD_EVENT_OFF);
        if (d->ending) {
                finish(d, false, d->end.error);
                return 0;
        }
        if (d->starting) {
                d->starting = false;
                begin_transfer(d);
        }
        return 0;
}

/* Opens and truncates the file to the durable offset and checks the room; on failure, what
 * kind of failure in *ret_error, the message set. */
static int prepare(FirmwareDownload *d, JobDownloadError *ret_error) {
        struct stat st;

        *ret_error = JOB_DOWNLOAD_LOCAL;
        d->fd = open(d->path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (d->fd < 0 || fstat(d->fd, &st) < 0) {
                set_message(d, "cannot open %s: %m", d->path);
                return -EIO;
        }
        /* Only what the journal says is durable counts; the rest may be garbage. */
        if ((uint64_t) st.st_size < d->offset)
                d->offset = 0;
        if (ftruncate(d->fd, (off_t) d->offset) < 0) {
                set_message(d, "cannot truncate %s: %m", d->path);
                return -EIO;
        }
        d->pos = d->synced = d->offset;
        if (check_space(d, d->size >= 0 ? (uint64_t) d->size - d->offset : 0) < 0) {
                *ret_error = JOB_DOWNLOAD_NO_SPACE;
                return -ENOSPC;
        }
        return 0;
}

int firmware_download_start(sd_event *event, HttpClient *http, const FirmwareDownloadParams *p,
                            const FirmwareDownloadCallbacks *cb, void *userdata,
                            FirmwareDownload **ret) {
        JobDownloadError error;
        FirmwareDownload *d;
        int r;

        if (!event || !http || !p || !p->path || !p->url || !cb || !cb->finished || !ret ||
            p->offset > INT64_MAX || p->size < -1)
                return -EINVAL;
        d = calloc(1, sizeof(*d));
        if (!d)
                return -ENOMEM;
        *d = (FirmwareDownload) {
                .event = sd_event_ref(event),
                .http = http,
                .cb = *cb,
                .userdata = userdata,
                .size = p->size,
                .max_size = p->max_size,
                .offset = p->offset,
                .fd = -EBADF,
                .path = strdup(p->path),
                .url = strdup(p->url),
                .sha256 = p->sha256 ? strdup(p->sha256) : NULL,
        };
        if (!d->path || !d->url || (p->sha256 && !d->sha256)) {
                firmware_download_free(d);
                return -ENOMEM;
        }
        r = event_add_idle(event, &d->idle, on_idle, d, "firmware-download");
        if (r < 0) {
                firmware_download_free(d);
                return r;
        }

        if (prepare(d, &error) < 0)
                finish_later(d, error);
        else {
                /* Started from the idle source, so that nothing is told from inside this
                 * call. */
                d->starting = true;
                (void) sd_event_source_set_enabled(d->idle, SD_EVENT_ONESHOT);
        }
        *ret = d;
        return 0;
}

FirmwareDownload *firmware_download_free(FirmwareDownload *d) {
        if (!d)
                return NULL;
        http_transfer_cancel(d->transfer);
        sd_event_source_disable_unref(d->idle);
        safe_close(d->fd);
        free(d->message);
        free(d->path);
        free(d->url);
        free(d->sha256);
        sd_event_unref(d->event);
        free(d);
        return NULL;
}

/* --- Removal --- */

typedef struct Removal {
        int fd;
        uint64_t size;
} Removal;

static void removal_free(void *userdata) {
        Removal *r = userdata;

        safe_close(r->fd);
        free(r);
}

static int on_remove_step(sd_event_source *s, void *userdata) {
        Removal *r = userdata;

        r->size = r->size > FIRMWARE_DOWNLOAD_REMOVE_STEP ? r->size - FIRMWARE_DOWNLOAD_REMOVE_STEP
                                                          : 0;
        if (r->size > 0 && ftruncate(r->fd, (off_t) r->size) >= 0)
                return 0;
        /* Done, or the file system does not shrink it (close() frees the rest). Dropping the
         * loop's reference frees the source, after this call, and the Removal with it. */
        (void) sd_event_source_set_floating(s, false);
        return 0;
}

int firmware_download_remove(sd_event *event, const char *path) {
        _cleanup_close_ int fd = -EBADF;
        sd_event_source *s = NULL;
        struct stat st;
        Removal *r;
        int k;

        fd = open(path, O_WRONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
        if (fd < 0 && errno == ENOENT)
                return 0;
        if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
                /* Not ours to shrink: the name goes, the rest as the kernel does it. */
                return unlink(path) < 0 && errno != ENOENT ? -errno : 0;
        if (unlink(path) < 0)
                return errno == ENOENT ? 0 : -errno;
        if ((uint64_t) st.st_size <= FIRMWARE_DOWNLOAD_REMOVE_STEP)
                return 0; /* small: closing it now costs nothing */
        r = calloc(1, sizeof(*r));
        if (!r)
                return 0; /* the name is gone; closing frees the blocks */
        r->fd = TAKE_FD(fd);
        r->size = (uint64_t) st.st_size;
        k = event_add_idle(event, &s, on_remove_step, r, "firmware-remove");
        if (k >= 0)
                k = sd_event_source_set_destroy_callback(s, removal_free);
        if (k < 0) {
                sd_event_source_disable_unref(s);
                removal_free(r);
                return 0;
        }
        /* The loop owns it from here; it goes with the loop at the latest. */
        (void) sd_event_source_set_enabled(s, SD_EVENT_ON);
        (void) sd_event_source_set_floating(s, true);
        sd_event_source_unref(s);
        return 0;
}
