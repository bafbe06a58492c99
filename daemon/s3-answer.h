/* SPDX-License-Identifier: MIT */
#pragma once

/* What to do with the answer to an upload PUT to a presigned S3 URL (SPEC §2, file upload):
 * from the transport error, the HTTP status and S3's error <Code>. Pure: no I/O, no HTTP
 * client; whoever runs the PUT hands the answer in.
 *
 * An answer that can pass is never a reason to delete the user's file: only answers that no
 * retry can change fail a transfer at once (the file is too large, the request is malformed).
 * An answer this table does not know is tried again a few times before it fails. */

#include <errno.h>
#include <stdbool.h>

typedef enum S3Verdict {
        S3_VERDICT_DONE,     /* 2xx: the object is stored */
        S3_VERDICT_RETRY,    /* may pass (network, 5xx, RequestTimeout, SlowDown): a backoff, then
                              * a fresh link */
        S3_VERDICT_NEW_LINK, /* the link expired or was refused (403, ExpiredToken): a fresh link
                              * now, a bounded number of times in a row */
        S3_VERDICT_REDIRECT, /* 301/307/308: the link names the wrong endpoint; a presigned PUT
                              * is signed for its host, so it is not followed: a backoff, then
                              * a fresh link */
        S3_VERDICT_FAIL,     /* can never pass (EntityTooLarge, InvalidArgument, ...) */
        S3_VERDICT_UNKNOWN,  /* a 4xx (or other) answer not known here: retry a few times */
        _S3_VERDICT_MAX,
        _S3_VERDICT_INVALID = -EINVAL,
} S3Verdict;

/* error: 0 when a complete HTTP answer arrived, else a negative errno (no answer, or the
 * connection broke); status: the HTTP status (0 when none); code: S3's <Code> or NULL. */
S3Verdict s3_classify(int error, long status, const char *code);

const char *s3_verdict_to_string(S3Verdict v);

/* Whether a presigned upload URL is for file_name: the last segment of its path, its %XX
 * escapes decoded, is the file name. The answer to a link request carries nothing else that
 * ties it to the request. */
bool s3_url_names_file(const char *url, const char *file_name);

/* The <Code> and <Message> of an S3 error body (NULL when absent), at most 512 bytes each,
 * control characters blanked: fit for a log line or a D-Bus message. -ENOMEM only. */
int s3_error_parse(const char *body, char **ret_code, char **ret_message);
