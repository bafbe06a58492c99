/* SPDX-License-Identifier: MIT */
#pragma once

/* One firmware download into one file, resumable at a durable offset: the file is truncated to
 * the offset, then the transfer helper (http.h) fetches the rest with HTTP Range into the file,
 * hashing it as it streams after hashing the bytes already there again, all in its own process:
 * nothing of it runs on the loop. Every few MiB, and at most every second, the helper makes what
 * arrived durable and synced() records the offset (the job journal) so that a crash resumes
 * from there.
 * Room is kept in the file system: the download never leaves less than reserve() bytes free,
 * is capped at the document's size (or max_size without one), and fails with NO_SPACE past
 * either. The end comes once through finished(), never from inside a call into this module,
 * with the failure classified (JobDownloadError) so that the job knows what may pass.
 *
 * The transport is http.c's GET into a file; the interface is only start, callbacks and free, so
 * that it can change underneath. Knows nothing of jobs beyond JobDownloadError. */

#include <stdbool.h>
#include <stdint.h>
#include <systemd/sd-event.h>

#include "http.h"
#include "job.h"

/* What arrived is made durable at least this often; synced() is told at most once per
 * FIRMWARE_DOWNLOAD_SYNC_USEC. */
#define FIRMWARE_DOWNLOAD_SYNC_BYTES (UINT64_C(16) * 1024 * 1024)
#define FIRMWARE_DOWNLOAD_SYNC_USEC (UINT64_C(1) * 1000000)
/* The blocks of a removed download given back per step. */
#define FIRMWARE_DOWNLOAD_REMOVE_STEP (UINT64_C(32) * 1024 * 1024)

typedef struct FirmwareDownload FirmwareDownload;

typedef struct FirmwareDownloadParams {
        const char *path;   /* the download file, created 0600 when missing */
        const char *url;
        uint64_t offset;    /* bytes known durable: kept, hashed, resumed after */
        int64_t size;       /* expected size, -1 unknown */
        const char *sha256; /* expected digest, lower-case hex; NULL: none */
        uint64_t max_size;  /* the cap without a size; 0: none */
} FirmwareDownloadParams;

typedef struct FirmwareDownloadResult {
        bool complete;          /* every byte here, size and digest verified, fsynced */
        JobDownloadError error; /* when not complete */
        uint64_t offset;        /* bytes durable in the file */
        const char *message;    /* what happened, for the report; NULL when complete */
} FirmwareDownloadResult;

typedef struct FirmwareDownloadCallbacks {
        /* The first offset bytes are fsynced: record it. < 0 ends the download (LOCAL). */
        int (*synced)(FirmwareDownload *d, uint64_t offset, void *userdata);
        /* Bytes here of the total (0 while unknown). Optional. */
        void (*progress)(FirmwareDownload *d, uint64_t done, uint64_t total, void *userdata);
        /* Free space to leave in the file system, asked at the start and at every sync. */
        uint64_t (*reserve)(FirmwareDownload *d, void *userdata);
        /* Once, from the loop. The download may be freed from here. */
        void (*finished)(FirmwareDownload *d, const FirmwareDownloadResult *r, void *userdata);
} FirmwareDownloadCallbacks;

/* Starts; everything that goes wrong from here on, also at once (a file that cannot be opened,
 * a URL refused), comes through finished(). -EINVAL, -ENOMEM. */
int firmware_download_start(sd_event *event, HttpClient *http, const FirmwareDownloadParams *p,
                            const FirmwareDownloadCallbacks *cb, void *userdata,
                            FirmwareDownload **ret);
/* Stops at once, without callbacks; what is in the file stays. NULL-safe. */
FirmwareDownload *firmware_download_free(FirmwareDownload *d);

/* Removes the file at path without holding the loop: the name goes at once, the blocks are
 * given back a FIRMWARE_DOWNLOAD_REMOVE_STEP at a time from an idle-priority source (freeing a
 * gigabyte in one unlink() takes the better part of a second on a busy disk). 0 when there was
 * none; -errno of the unlink() (the file stays), -ENOMEM. */
int firmware_download_remove(sd_event *event, const char *path);

/* How an HTTP transfer's end is taken (pure): error is HttpResult.error, status its HTTP
 * status. A refused scheme, a redirect loop, 404 and the other 4xx but 403, 408 and 429 cannot
 * pass (REFUSED); 403 is an expired URL (EXPIRED); -EFBIG a body past the size (CORRUPT);
 * -ENOSPC, -EDQUOT, -E2BIG (the cap) NO_SPACE; -EIO, -EBADF LOCAL; the rest (the network,
 * 5xx, 408, 429) may pass (NETWORK). */
JobDownloadError firmware_download_classify(int error, long status);
