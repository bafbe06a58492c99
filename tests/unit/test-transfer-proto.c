/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "tests.h"
#include "transfer-proto.h"
#include "util.h"

static int parse_request(const char *text, TransferRequest *q) {
        _cleanup_free_ char *copy = strdup(text);
        char *line = copy, *nl;
        int r = 0;

        while ((nl = strchr(line, '\n'))) {
                *nl = '\0';
                r = transfer_request_parse_line(q, line);
                if (r != 0)
                        break;
                line = nl + 1;
        }
        return r;
}

static void test_request_round_trip(void) {
        TransferRequest q = {
                .method = TRANSFER_GET,
                .url = (char *) "https://cdn.example/fw 1.bin?X-Amz-Signature=a%2Fb\n",
                .offset = 12345,
                .max_size = 1u << 30,
                .sha256 = true,
                .sync_bytes = 16 << 20,
                .sync_ms = 1000,
                .proxy = (char *) "http://user:p%40ss w@proxy:3128",
                .allow_http = true,
                .max_rate = 65536,
                .connect_timeout_sec = 30,
                .low_speed_time_sec = 60,
                .low_speed_limit = 1,
        };
        _cleanup_(transfer_request_done) TransferRequest p = TRANSFER_REQUEST_NULL;
        _cleanup_free_ char *text = NULL;

        CHECK_INT(transfer_request_format(&q, &text), 0);
        CHECK(text && strstr(text, "url https://cdn.example/fw%201.bin?X-Amz-Signature=a%252Fb%0A\n"));
        CHECK(text && strstr(text, "\nend\n") && text[strlen(text) - 1] == '\n');
        CHECK(text && !strstr(text, "ca-file")); /* NULL: the system's store */
        CHECK_INT(parse_request(text, &p), 1);
        CHECK_INT(p.method, TRANSFER_GET);
        CHECK_STR(p.url, q.url);
        CHECK_STR(p.proxy, q.proxy);
        CHECK(!p.ca_file && !p.content_type);
        CHECK_INT(p.offset, 12345);
        CHECK_INT(p.max_size, 1u << 30);
        CHECK(p.sha256 && p.allow_http);
        CHECK_INT(p.sync_bytes, 16 << 20);
        CHECK_INT(p.sync_ms, 1000);
        CHECK_INT(p.max_rate, 65536);
        CHECK_INT(p.low_speed_limit, 1);
        CHECK_INT(transfer_request_check(&p), 0);

        transfer_request_done(&p);
        free(text);
        text = NULL;
        q = (TransferRequest) { .method = TRANSFER_PUT, .url = (char *) "https://s3/x",
                                .content_type = (char *) "text/csv; charset=utf-8", .size = 0,
                                .ca_file = (char *) "/etc/ca.pem" };
        CHECK_INT(transfer_request_format(&q, &text), 0);
        CHECK_INT(parse_request(text, &p), 1);
        CHECK_INT(p.method, TRANSFER_PUT);
        CHECK_STR(p.content_type, "text/csv; charset=utf-8");
        CHECK_STR(p.ca_file, "/etc/ca.pem");
        CHECK_INT(transfer_request_check(&p), 0);
}

static void test_request_hash(void) {
        TransferRequest q = { .method = TRANSFER_HASH, .offset = 4096 };
        _cleanup_(transfer_request_done) TransferRequest p = TRANSFER_REQUEST_NULL;
        _cleanup_free_ char *text = NULL;

        CHECK_INT(transfer_request_format(&q, &text), 0);
        CHECK_STR(text, "method HASH\noffset 4096\nend\n");
        CHECK_INT(parse_request(text, &p), 1);
        CHECK_INT(p.method, TRANSFER_HASH);
        CHECK_INT(p.offset, 4096);
        CHECK_INT(transfer_request_check(&p), 0);
        q.url = (char *) "https://x";
        CHECK_INT(transfer_request_check(&q), -EINVAL);
}

static void test_request_refused(void) {
        TransferRequest q = { .method = TRANSFER_PUT, .url = (char *) "https://s3/x" };
        _cleanup_(transfer_request_done) TransferRequest p = TRANSFER_REQUEST_NULL;
        char *text = NULL, big[TRANSFER_LINE_MAX + 10];

        CHECK_INT(transfer_request_format(&q, &text), -EINVAL); /* no content type */
        q = (TransferRequest) { .method = TRANSFER_GET, .url = (char *) "https://x",
                                .offset = 10, .max_size = 5 };
        CHECK_INT(transfer_request_format(&q, &text), -EINVAL);
        q = (TransferRequest) { .method = _TRANSFER_METHOD_INVALID, .url = (char *) "https://x" };
        CHECK_INT(transfer_request_format(&q, &text), -EINVAL);
        memset(big, 'a', sizeof(big) - 1);
        big[sizeof(big) - 1] = '\0';
        q = (TransferRequest) { .method = TRANSFER_GET, .url = big };
        CHECK_INT(transfer_request_format(&q, &text), -E2BIG);
        CHECK(!text);

        CHECK_INT(transfer_request_parse_line(&p, "method DELETE"), -EBADMSG);
        CHECK_INT(transfer_request_parse_line(&p, "colour blue"), -EBADMSG);
        CHECK_INT(transfer_request_parse_line(&p, "offset -1"), -EBADMSG);
        CHECK_INT(transfer_request_parse_line(&p, "offset 01"), -EBADMSG);
        CHECK_INT(transfer_request_parse_line(&p, "offset 18446744073709551616"), -EBADMSG);
        CHECK_INT(transfer_request_parse_line(&p, "sha256 yes"), -EBADMSG);
        CHECK_INT(transfer_request_parse_line(&p, "url a b"), -EBADMSG);
        CHECK_INT(transfer_request_parse_line(&p, "url %00"), -EBADMSG);
        CHECK_INT(transfer_request_parse_line(&p, "url "), -EBADMSG);
        CHECK_INT(transfer_request_parse_line(&p, "end now"), -EBADMSG);
        CHECK_INT(transfer_request_parse_line(&p, ""), -EBADMSG);
        CHECK_INT(transfer_request_parse_line(&p, "offset 18446744073709551615"), 0);
        CHECK_INT(transfer_request_parse_line(&p, "method GET"), 0);
        CHECK_INT(transfer_request_parse_line(&p, "url https://x"), 0);
        CHECK_INT(transfer_request_check(&p), -EINVAL); /* offset past INT64_MAX */
}

static void test_escape(void) {
        _cleanup_free_ char *e = transfer_escape("a b%\n\xc3\xa9", 7), *u = NULL;
        char *x = NULL;

        CHECK_STR(e, "a%20b%25%0A%C3%A9");
        CHECK_INT(transfer_unescape(e, &u), 0);
        CHECK_STR(u, "a b%\n\xc3\xa9");
        CHECK_INT(transfer_unescape("%4", &x), -EBADMSG);
        CHECK_INT(transfer_unescape("%zz", &x), -EBADMSG);
        CHECK_INT(transfer_unescape("%00", &x), -EBADMSG);
        CHECK_INT(transfer_unescape("a\tb", &x), -EBADMSG);
        CHECK_INT(transfer_unescape("\xc3\xa9", &x), -EBADMSG);
        CHECK(!x);
}

static void round_trip(const TransferReport *in, const char *expected) {
        _cleanup_(transfer_report_done) TransferReport out = TRANSFER_REPORT_NULL;
        char buf[TRANSFER_LINE_MAX];
        int n = transfer_report_format(in, buf);

        CHECK(n > 0 && buf[n - 1] == '\n');
        if (n <= 0)
                return;
        buf[n - 1] = '\0';
        CHECK_STR(buf, expected);
        CHECK_INT(transfer_report_parse(buf, &out), 0);
        CHECK_INT(out.type, in->type);
        CHECK_INT(out.status, in->status);
        CHECK_INT(out.a, in->a);
        CHECK_INT(out.b, in->b);
        CHECK_INT(out.error, in->error);
        if (in->text || out.text)
                CHECK_STR(out.text, in->text);
}

static void test_reports(void) {
        char body[TRANSFER_BODY_MAX * 2 + 1], buf[TRANSFER_LINE_MAX];
        _cleanup_(transfer_report_done) TransferReport r = TRANSFER_REPORT_NULL;
        static const char digest[] =
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

        round_trip(&(TransferReport) { .type = TRANSFER_REPORT_ANSWER, .status = 206, .a = 100,
                                       .b = 1000 },
                   "answer 206 100 1000");
        round_trip(&(TransferReport) { .type = TRANSFER_REPORT_PROGRESS, .a = 5, .b = 0 },
                   "progress 5 0");
        round_trip(&(TransferReport) { .type = TRANSFER_REPORT_SYNCED, .a = 1 << 24 },
                   "synced 16777216");
        round_trip(&(TransferReport) { .type = TRANSFER_REPORT_BODY,
                                       .text = (char *) "<Code>AccessDenied</Code>\n" },
                   "body <Code>AccessDenied</Code>%0A");
        round_trip(&(TransferReport) { .type = TRANSFER_REPORT_SHA256, .text = (char *) digest },
                   "sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        round_trip(&(TransferReport) { .type = TRANSFER_REPORT_DONE, .b = 3 }, "done 0 3");
        round_trip(&(TransferReport) { .type = TRANSFER_REPORT_DONE, .error = -ECONNRESET,
                                       .b = 65536, .text = (char *) "Transferred a partial file" },
                   "done 104 65536 Transferred%20a%20partial%20file");

        /* A long body is cut to TRANSFER_BODY_MAX bytes, and the line still fits. */
        memset(body, '\x01', sizeof(body) - 1);
        body[sizeof(body) - 1] = '\0';
        CHECK_INT(transfer_report_format(&(TransferReport) { .type = TRANSFER_REPORT_BODY,
                                                             .text = body },
                                         buf),
                  5 + 3 * TRANSFER_BODY_MAX + 1);

        CHECK_INT(transfer_report_format(&(TransferReport) { .type = TRANSFER_REPORT_ANSWER,
                                                             .status = 42 },
                                         buf),
                  -EINVAL);
        CHECK_INT(transfer_report_format(&(TransferReport) { .type = TRANSFER_REPORT_SHA256,
                                                             .text = (char *) "abc" },
                                         buf),
                  -EINVAL);

        /* Malformed lines, each refused. */
        static const char *const bad[] = {
                "",
                "hello 1 2",
                "answer 200 0",
                "answer 200 0 0 0",
                "answer 99 0 0",
                "answer 600 0 0",
                "answer 200 -1 0",
                "answer 200 0x10 0",
                "answer 200  0 0",
                "progress 1 2 ",
                " progress 1 2",
                "progress 1",
                "progress 01 2",
                "synced",
                "synced 18446744073709551616",
                "body",
                "body a b",
                "body %0",
                "body %00",
                "sha256 E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
                "sha256 e3b0",
                "done",
                "done 0",
                "done 4096 0",
                "done x 0",
                "done 0 0 a b",
                "DONE 0 0",
        };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                int k = transfer_report_parse(bad[i], &r);
                if (k != -EBADMSG)
                        fprintf(stderr, "accepted or wrong error for \"%s\": %d\n", bad[i], k);
                CHECK_INT(k, -EBADMSG);
        }
}

typedef struct Seen {
        unsigned n;
        TransferReportType types[16];
        uint64_t last_a;
        int fail_at;
} Seen;

static int on_report(const TransferReport *r, void *userdata) {
        Seen *s = userdata;

        if (s->n < ELEMENTSOF(s->types))
                s->types[s->n] = r->type;
        s->n++;
        s->last_a = r->a;
        return s->fail_at > 0 && (int) s->n == s->fail_at ? -ECANCELED : 0;
}

static void test_reader(void) {
        static const char stream[] = "answer 206 10 100\nprogress 20 100\nsynced 20\n"
                                     "progress 100 100\nsynced 100\ndone 0 90\n";
        TransferReader rd = {};
        Seen s = {};
        char big[TRANSFER_LINE_MAX + 1];

        /* Byte by byte: lines are put together across reads. */
        for (size_t i = 0; i < sizeof(stream) - 1; i++)
                CHECK_INT(transfer_reader_feed(&rd, stream + i, 1, on_report, &s), 0);
        CHECK_INT(s.n, 6);
        CHECK_INT(s.types[0], TRANSFER_REPORT_ANSWER);
        CHECK_INT(s.types[5], TRANSFER_REPORT_DONE);
        CHECK_INT(transfer_reader_end(&rd), 0);
        /* Nothing may follow done. */
        CHECK_INT(transfer_reader_feed(&rd, "progress 1 1\n", 13, on_report, &s), -EBADMSG);

        /* At once; then the helper stops before done, or in the middle of a line. */
        rd = (TransferReader) {};
        s = (Seen) {};
        CHECK_INT(transfer_reader_feed(&rd, stream, 34, on_report, &s), 0);
        CHECK_INT(s.n, 2);
        CHECK_INT(transfer_reader_end(&rd), -EPIPE);
        CHECK_INT(transfer_reader_feed(&rd, "synced 1", 8, on_report, &s), 0);
        CHECK_INT(transfer_reader_end(&rd), -EBADMSG);

        /* Out of sequence: a second answer, synced going back. */
        rd = (TransferReader) {};
        CHECK_INT(transfer_reader_feed(&rd, "answer 200 0 0\nanswer 200 0 0\n", 30, on_report, &s),
                  -EBADMSG);
        rd = (TransferReader) {};
        CHECK_INT(transfer_reader_feed(&rd, "synced 10\nsynced 9\n", 19, on_report, &s), -EBADMSG);

        /* Garbage: a NUL, a line without end, a malformed line after good ones. */
        rd = (TransferReader) {};
        CHECK_INT(transfer_reader_feed(&rd, "synced\0 1\n", 10, on_report, &s), -EBADMSG);
        rd = (TransferReader) {};
        memset(big, 'x', sizeof(big));
        CHECK_INT(transfer_reader_feed(&rd, big, sizeof(big), on_report, &s), -EMSGSIZE);
        rd = (TransferReader) {};
        s = (Seen) {};
        CHECK_INT(transfer_reader_feed(&rd, "progress 1 2\n\x7f\x45LF\x02\n", 19, on_report, &s),
                  -EBADMSG);
        CHECK_INT(s.n, 1);

        /* The handler's error stops the feed at once. */
        rd = (TransferReader) {};
        s = (Seen) { .fail_at = 2 };
        CHECK_INT(transfer_reader_feed(&rd, stream, sizeof(stream) - 1, on_report, &s),
                  -ECANCELED);
        CHECK_INT(s.n, 2);
}

int main(void) {
        test_request_round_trip();
        test_request_hash();
        test_request_refused();
        test_escape();
        test_reports();
        test_reader();
        return TESTS_DONE();
}
