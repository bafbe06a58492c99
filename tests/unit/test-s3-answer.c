/* SPDX-License-Identifier: MIT */

/* The verdict on every kind of answer an upload PUT can get, and the reading of S3's error
 * bodies. */

#include <errno.h>
#include <stdlib.h>

#include "s3-answer.h"
#include "tests.h"
#include "util.h"

static void test_transport_and_success(void) {
        CHECK_INT(s3_classify(-ECONNRESET, 0, NULL), S3_VERDICT_RETRY);
        CHECK_INT(s3_classify(-ETIMEDOUT, 0, NULL), S3_VERDICT_RETRY);
        /* Cut mid-body after a status arrived: still the connection's fault. */
        CHECK_INT(s3_classify(-ECONNRESET, 500, "InternalError"), S3_VERDICT_RETRY);
        CHECK_INT(s3_classify(-EIO, 0, NULL), S3_VERDICT_RETRY);
        CHECK_INT(s3_classify(0, 200, NULL), S3_VERDICT_DONE);
        CHECK_INT(s3_classify(0, 201, NULL), S3_VERDICT_DONE);
        CHECK_INT(s3_classify(0, 204, NULL), S3_VERDICT_DONE);
}

/* The answers of issue 14: each can pass, none may delete the file. */
static void test_answers_that_can_pass(void) {
        CHECK_INT(s3_classify(0, 400, "RequestTimeout"), S3_VERDICT_RETRY);
        CHECK_INT(s3_classify(0, 400, "ExpiredToken"), S3_VERDICT_NEW_LINK);
        CHECK_INT(s3_classify(0, 400, "TokenRefreshRequired"), S3_VERDICT_NEW_LINK);
        CHECK_INT(s3_classify(0, 503, "SlowDown"), S3_VERDICT_RETRY);
        CHECK_INT(s3_classify(0, 500, "InternalError"), S3_VERDICT_RETRY);
        CHECK_INT(s3_classify(0, 503, "ServiceUnavailable"), S3_VERDICT_RETRY);
        CHECK_INT(s3_classify(0, 403, "AccessDenied"), S3_VERDICT_NEW_LINK);
        CHECK_INT(s3_classify(0, 403, "RequestTimeTooSkewed"), S3_VERDICT_RETRY);
        CHECK_INT(s3_classify(0, 409, "OperationAborted"), S3_VERDICT_RETRY);
        CHECK_INT(s3_classify(0, 400, "IncompleteBody"), S3_VERDICT_RETRY);
        CHECK_INT(s3_classify(0, 301, "PermanentRedirect"), S3_VERDICT_REDIRECT);
        CHECK_INT(s3_classify(0, 307, "TemporaryRedirect"), S3_VERDICT_REDIRECT);
        CHECK_INT(s3_classify(0, 308, NULL), S3_VERDICT_REDIRECT);
        CHECK_INT(s3_classify(0, 302, NULL), S3_VERDICT_REDIRECT);
        CHECK_INT(s3_classify(0, 408, NULL), S3_VERDICT_RETRY);
        CHECK_INT(s3_classify(0, 429, NULL), S3_VERDICT_RETRY);
        CHECK_INT(s3_classify(0, 502, NULL), S3_VERDICT_RETRY);
        CHECK_INT(s3_classify(0, 504, ""), S3_VERDICT_RETRY);
        /* A 403 without a body is most often an expired link too. */
        CHECK_INT(s3_classify(0, 403, NULL), S3_VERDICT_NEW_LINK);
}

static void test_answers_that_cannot_pass(void) {
        CHECK_INT(s3_classify(0, 400, "EntityTooLarge"), S3_VERDICT_FAIL);
        CHECK_INT(s3_classify(0, 400, "EntityTooSmall"), S3_VERDICT_FAIL);
        CHECK_INT(s3_classify(0, 400, "InvalidArgument"), S3_VERDICT_FAIL);
        CHECK_INT(s3_classify(0, 400, "InvalidRequest"), S3_VERDICT_FAIL);
        CHECK_INT(s3_classify(0, 411, "MissingContentLength"), S3_VERDICT_FAIL);
        CHECK_INT(s3_classify(0, 501, "NotImplemented"), S3_VERDICT_FAIL);
        CHECK_INT(s3_classify(0, 400, "BadDigest"), S3_VERDICT_FAIL);
        CHECK_INT(s3_classify(0, 400, "KeyTooLongError"), S3_VERDICT_FAIL);
        CHECK_INT(s3_classify(0, 404, "NoSuchBucket"), S3_VERDICT_FAIL);
        CHECK_INT(s3_classify(0, 405, "MethodNotAllowed"), S3_VERDICT_FAIL);
        CHECK_INT(s3_classify(0, 411, NULL), S3_VERDICT_FAIL);
        CHECK_INT(s3_classify(0, 413, NULL), S3_VERDICT_FAIL);
        CHECK_INT(s3_classify(0, 501, NULL), S3_VERDICT_FAIL);
        /* The code decides over the status: a 5xx that says the request is wrong. */
        CHECK_INT(s3_classify(0, 500, "InvalidArgument"), S3_VERDICT_FAIL);
}

static void test_unknown(void) {
        CHECK_INT(s3_classify(0, 400, NULL), S3_VERDICT_UNKNOWN);
        CHECK_INT(s3_classify(0, 400, "SomethingNew"), S3_VERDICT_UNKNOWN);
        CHECK_INT(s3_classify(0, 404, NULL), S3_VERDICT_UNKNOWN);
        CHECK_INT(s3_classify(0, 409, "Conflict"), S3_VERDICT_UNKNOWN);
        CHECK_INT(s3_classify(0, 418, NULL), S3_VERDICT_UNKNOWN);
        CHECK_INT(s3_classify(0, 300, NULL), S3_VERDICT_UNKNOWN);
        CHECK_INT(s3_classify(0, 100, NULL), S3_VERDICT_UNKNOWN);
        CHECK_INT(s3_classify(0, 0, NULL), S3_VERDICT_UNKNOWN);
        /* Unknown codes on a 5xx or 403 go by the status. */
        CHECK_INT(s3_classify(0, 503, "Whatever"), S3_VERDICT_RETRY);
        CHECK_INT(s3_classify(0, 403, "Whatever"), S3_VERDICT_NEW_LINK);
        /* Codes are case-sensitive, as S3 sends them. */
        CHECK_INT(s3_classify(0, 400, "requesttimeout"), S3_VERDICT_UNKNOWN);
}

static void test_names(void) {
        CHECK_STR(s3_verdict_to_string(S3_VERDICT_RETRY), "retry");
        CHECK_STR(s3_verdict_to_string(S3_VERDICT_UNKNOWN), "unknown");
        CHECK(!s3_verdict_to_string(_S3_VERDICT_MAX));
        CHECK(!s3_verdict_to_string(_S3_VERDICT_INVALID));
}

static void test_error_parse(void) {
        char *code = (char *) 1, *message = (char *) 1;

        CHECK_INT(s3_error_parse("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>"
                                 "RequestTimeout</Code><Message>Your socket connection to the "
                                 "server was not read from or written to within the timeout "
                                 "period.</Message><RequestId>1</RequestId></Error>",
                                 &code, &message),
                  0);
        CHECK_STR(code, "RequestTimeout");
        CHECK(message && startswith(message, "Your socket connection"));
        free(code);
        free(message);

        CHECK_INT(s3_error_parse(NULL, &code, &message), 0);
        CHECK(!code && !message);
        CHECK_INT(s3_error_parse("<html>Bad Gateway</html>", &code, &message), 0);
        CHECK(!code && !message);
        /* Unterminated: nothing. */
        CHECK_INT(s3_error_parse("<Error><Code>SlowDown", &code, &message), 0);
        CHECK(!code);

        /* Control characters never reach a log line; length is bounded. */
        {
                _cleanup_free_ char *body = malloc(2000);

                CHECK(body);
                strcpy(body, "<Error><Code>Bad\nCode\x1b[31m</Code><Message>");
                memset(body + strlen(body), 'm', 1000);
                strcpy(body + strlen("<Error><Code>Bad\nCode\x1b[31m</Code><Message>") + 1000,
                       "</Message></Error>");
                CHECK_INT(s3_error_parse(body, &code, &message), 0);
                CHECK_STR(code, "Bad Code [31m");
                CHECK_INT(strlen(message), 512);
                free(code);
                free(message);
        }
}

static void test_url_names_file(void) {
        CHECK(s3_url_names_file("https://b.s3.amazonaws.com/uploads/abc/report.pdf?X-Amz-Signature=1",
                                "report.pdf"));
        CHECK(s3_url_names_file("http://127.0.0.1:8080/uploads/0123/my%20file%2Bv2.csv?a=b",
                                "my file+v2.csv"));
        CHECK(s3_url_names_file("https://h/k/%C3%A9t%C3%A9.txt", "\xc3\xa9t\xc3\xa9.txt"));
        CHECK(s3_url_names_file("https://h/report.pdf#frag", "report.pdf"));
        /* Another file's link, a prefix, a longer name. */
        CHECK(!s3_url_names_file("https://h/uploads/abc/other.pdf?x", "report.pdf"));
        CHECK(!s3_url_names_file("https://h/uploads/abc/report.pd?x", "report.pdf"));
        CHECK(!s3_url_names_file("https://h/uploads/abc/report.pdf.exe?x", "report.pdf"));
        /* The name must be the last segment, not any segment. */
        CHECK(!s3_url_names_file("https://h/report.pdf/x?y", "report.pdf"));
        /* Escapes decode as S3 decodes them (file names never hold '/'); a broken one
         * matches nothing. */
        CHECK(s3_url_names_file("https://h/a%2Fb", "a/b"));
        CHECK(!s3_url_names_file("https://h/a%2", "a"));
        CHECK(!s3_url_names_file("https://h/a%zz", "a"));
        /* The host is not the path; nothing without a path or a scheme. */
        CHECK(!s3_url_names_file("https://report.pdf", "report.pdf"));
        CHECK(!s3_url_names_file("https://report.pdf?x=/report.pdf", "report.pdf"));
        CHECK(!s3_url_names_file("report.pdf", "report.pdf"));
        CHECK(!s3_url_names_file(NULL, "report.pdf"));
        CHECK(!s3_url_names_file("https://h/", ""));
}

int main(void) {
        test_transport_and_success();
        test_answers_that_can_pass();
        test_answers_that_cannot_pass();
        test_unknown();
        test_names();
        test_error_parse();
        test_url_names_file();
        return TESTS_DONE();
}
