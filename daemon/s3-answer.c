/* SPDX-License-Identifier: MIT */
#include "s3-answer.h"
#include "util.h"

/* S3's error codes (the S3 API reference, "Error responses") by what they mean for a PUT to a
 * presigned URL. */
static const struct {
        const char *code;
        S3Verdict verdict;
} s3_codes[] = {
        /* Slow links, busy servers: the same request passes later. */
        { "RequestTimeout", S3_VERDICT_RETRY },
        { "SlowDown", S3_VERDICT_RETRY },
        { "InternalError", S3_VERDICT_RETRY },
        { "ServiceUnavailable", S3_VERDICT_RETRY },
        { "Throttling", S3_VERDICT_RETRY },
        { "ThrottlingException", S3_VERDICT_RETRY },
        { "RequestThrottled", S3_VERDICT_RETRY },
        { "OperationAborted", S3_VERDICT_RETRY },
        { "RequestTimeTooSkewed", S3_VERDICT_RETRY },
        { "IncompleteBody", S3_VERDICT_RETRY }, /* the connection broke mid-body */
        /* The signature or the credentials behind it: a fresh link. */
        { "ExpiredToken", S3_VERDICT_NEW_LINK },
        { "TokenRefreshRequired", S3_VERDICT_NEW_LINK },
        { "InvalidToken", S3_VERDICT_NEW_LINK },
        { "AccessDenied", S3_VERDICT_NEW_LINK },
        { "SignatureDoesNotMatch", S3_VERDICT_NEW_LINK },
        { "InvalidAccessKeyId", S3_VERDICT_NEW_LINK },
        /* The bucket answers at another endpoint. */
        { "PermanentRedirect", S3_VERDICT_REDIRECT },
        { "TemporaryRedirect", S3_VERDICT_REDIRECT },
        { "Redirect", S3_VERDICT_REDIRECT },
        /* The request itself is wrong: no retry changes it. */
        { "EntityTooLarge", S3_VERDICT_FAIL },
        { "EntityTooSmall", S3_VERDICT_FAIL },
        { "InvalidArgument", S3_VERDICT_FAIL },
        { "InvalidRequest", S3_VERDICT_FAIL },
        { "MissingContentLength", S3_VERDICT_FAIL },
        { "NotImplemented", S3_VERDICT_FAIL },
        { "InvalidDigest", S3_VERDICT_FAIL },
        { "BadDigest", S3_VERDICT_FAIL },
        { "KeyTooLongError", S3_VERDICT_FAIL },
        { "MetadataTooLarge", S3_VERDICT_FAIL },
        { "MaxMessageLengthExceeded", S3_VERDICT_FAIL },
        { "InvalidURI", S3_VERDICT_FAIL },
        { "InvalidBucketName", S3_VERDICT_FAIL },
        { "NoSuchBucket", S3_VERDICT_FAIL },
        { "MethodNotAllowed", S3_VERDICT_FAIL },
        { "AuthorizationQueryParametersError", S3_VERDICT_FAIL },
        { "InvalidStorageClass", S3_VERDICT_FAIL },
        { "UnexpectedContent", S3_VERDICT_FAIL },
};

static const char *const s3_verdict_table[_S3_VERDICT_MAX] = {
        [S3_VERDICT_DONE] = "done",
        [S3_VERDICT_RETRY] = "retry",
        [S3_VERDICT_NEW_LINK] = "new-link",
        [S3_VERDICT_REDIRECT] = "redirect",
        [S3_VERDICT_FAIL] = "fail",
        [S3_VERDICT_UNKNOWN] = "unknown",
};

const char *s3_verdict_to_string(S3Verdict v) {
        return v >= 0 && v < _S3_VERDICT_MAX ? s3_verdict_table[v] : NULL;
}

S3Verdict s3_classify(int error, long status, const char *code) {
        if (error < 0)
                return S3_VERDICT_RETRY; /* no answer, or the connection broke */
        if (status >= 200 && status < 300)
                return S3_VERDICT_DONE;

        if (!isempty(code))
                for (size_t i = 0; i < ELEMENTSOF(s3_codes); i++)
                        if (streq(code, s3_codes[i].code))
                                return s3_codes[i].verdict;

        /* No code, or one not listed: the status says what it can. */
        switch (status) {
        case 301:
        case 302:
        case 307:
        case 308:
                return S3_VERDICT_REDIRECT;
        case 403:
                return S3_VERDICT_NEW_LINK;
        case 408:
        case 429:
                return S3_VERDICT_RETRY;
        case 411: /* Length Required */
        case 413: /* Content Too Large */
        case 501: /* Not Implemented: chunked bodies and the like */
        case 505: /* HTTP Version Not Supported */
                return S3_VERDICT_FAIL;
        default:
                return status >= 500 && status < 600 ? S3_VERDICT_RETRY : S3_VERDICT_UNKNOWN;
        }
}

static int hex_digit(char c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        return -1;
}

bool s3_url_names_file(const char *url, const char *file_name) {
        const char *p, *end, *seg;
        size_t i = 0;

        if (!url || isempty(file_name))
                return false;
        p = strstr(url, "://");
        if (!p)
                return false;
        p += 3;
        end = p + strcspn(p, "?#");
        p = memchr(p, '/', (size_t) (end - p)); /* the path, after the authority */
        if (!p)
                return false;
        seg = p;
        for (const char *q = p; q < end; q++)
                if (*q == '/')
                        seg = q + 1;

        for (const char *q = seg; q < end; q++) {
                char c = *q;

                if (c == '%') {
                        int hi = q + 2 < end ? hex_digit(q[1]) : -1,
                            lo = q + 2 < end ? hex_digit(q[2]) : -1;

                        if (hi < 0 || lo < 0)
                                return false;
                        c = (char) (hi << 4 | lo);
                        q += 2;
                }
                if (file_name[i] != c)
                        return false;
                i++;
        }
        return file_name[i] == '\0';
}

/* The text of <tag>...</tag>, control characters blanked; NULL (and 0) when missing. */
static int xml_element(const char *body, const char *tag, char **ret) {
        char open[32], close[32];
        const char *s, *e;
        char *v;

        *ret = NULL;
        if (!body)
                return 0;
        snprintf(open, sizeof(open), "<%s>", tag);
        snprintf(close, sizeof(close), "</%s>", tag);
        s = strstr(body, open);
        if (!s)
                return 0;
        s += strlen(open);
        e = strstr(s, close);
        if (!e)
                return 0;
        v = strndup(s, (size_t) MIN(e - s, 512));
        if (!v)
                return -ENOMEM;
        for (char *p = v; *p; p++)
                if ((unsigned char) *p < 0x20 || *p == 0x7f)
                        *p = ' ';
        *ret = v;
        return 0;
}

int s3_error_parse(const char *body, char **ret_code, char **ret_message) {
        _cleanup_free_ char *code = NULL, *message = NULL;

        if (xml_element(body, "Code", &code) < 0 || xml_element(body, "Message", &message) < 0)
                return -ENOMEM;
        *ret_code = TAKE_PTR(code);
        *ret_message = TAKE_PTR(message);
        return 0;
}
