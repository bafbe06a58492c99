/* SPDX-License-Identifier: MIT */

/* The job journal and state machine: journal round trips and corruption, hostile job
 * documents, statusDetails helpers, the progress throttle, the start-up and event tables, and
 * a crash at every step of a whole job against a small model of the platform. */

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>

#include "fileio.h"
#include "job.h"
#include "tests.h"
#include "util.h"

static char tmpdir[] = "/tmp/test-job-XXXXXX";
static char jobdir[sizeof(tmpdir) + 8];

#define SHA "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
#define BOOT_A "11111111-2222-3333-4444-555555555555"
#define BOOT_B "66666666-7777-8888-9999-000000000000"

static const JobContext ctx = {
        .max_attempts = 3,
        .max_reboot_tries = 3,
        .allow_http = false,
        .now_usec = 1700000000000000ULL,
        .boot_id = BOOT_A,
};

static void rm_dir_files(const char *path) {
        DIR *d = opendir(path);
        struct dirent *de;

        if (!d)
                return;
        while ((de = readdir(d))) {
                char *p;

                if (streq(de->d_name, ".") || streq(de->d_name, ".."))
                        continue;
                p = strdup_printf("%s/%s", path, de->d_name);
                if (p)
                        (void) unlink(p);
                free(p);
        }
        closedir(d);
        (void) rmdir(path);
}

/* A journal for job_id in the given phase with every field a running job has. */
static JobJournal journal_make(JobPhase phase, const char *job_id) {
        JobJournal j = JOB_JOURNAL_NULL;

        j.phase = phase;
        j.job_id = strdup(job_id);
        j.execution_number = 1;
        j.version_number = 2;
        j.firmware_id = strdup("fw-2.0");
        j.deployment_id = strdup("dep-1");
        j.sha256 = strdup(SHA);
        j.size = 1000000;
        CHECK_INT(job_download_file_name(job_id, &j.file), 0);
        j.accepted_usec = j.updated_usec = ctx.now_usec;
        if (phase == JOB_PHASE_ROLLING_BACK || phase == JOB_PHASE_REPORTING ||
            phase == JOB_PHASE_DONE) {
                j.report.status = JOB_STATUS_FAILED;
                CHECK_INT(job_report_set(&j.report, JOB_DETAIL_REASON, "it broke"), 0);
        }
        return j;
}

/* The rows of the table in job.h that a case walked, by tag. */
static char covered[128][8];
static size_t n_covered;

static void row_covered(const char *row) {
        for (size_t i = 0; i < n_covered; i++)
                if (streq(covered[i], row))
                        return;
        CHECK(n_covered < ELEMENTSOF(covered) && strlen(row) < sizeof(covered[0]));
        if (n_covered < ELEMENTSOF(covered))
                snprintf(covered[n_covered++], sizeof(covered[0]), "%s", row);
}

/* Every tag of job.h's table ("  X12  ..." at the start of a table line) has a case. */
static void test_table_walked(void) {
        _cleanup_fclose_ FILE *f = fopen(JOB_H_PATH, "re");
        char line[256];
        size_t rows = 0;

        CHECK(f != NULL);
        while (f && fgets(line, sizeof(line), f)) {
                char tag[8];
                bool found = false;

                if (sscanf(line, " *  %7[A-Z0-9] ", tag) != 1 || strlen(tag) < 2 ||
                    !(tag[0] >= 'A' && tag[0] <= 'Z') || !(tag[1] >= '0' && tag[1] <= '9'))
                        continue;
                rows++;
                for (size_t i = 0; i < n_covered; i++)
                        found = found || streq(covered[i], tag);
                if (!found)
                        fprintf(stderr, "row %s of job.h has no case\n", tag);
                CHECK(found);
        }
        /* The table is there: X, U, G, A, D, H, R, S, L, M and C rows. */
        CHECK(rows >= 70);
}

/* A list from "id" strings; a NULL ends each group. */
typedef struct ListSpec {
        const char *in_progress[4];
        const char *queued[4];
} ListSpec;

static JobList list_make(const ListSpec *spec) {
        JobList l = {};

        l.in_progress = calloc(4, sizeof(JobSummary));
        l.queued = calloc(4, sizeof(JobSummary));
        for (size_t i = 0; spec && i < 4 && spec->in_progress[i]; i++)
                l.in_progress[l.n_in_progress++] = (JobSummary) {
                        .job_id = strdup(spec->in_progress[i]),
                        .execution_number = 1,
                        .version_number = 3,
                };
        for (size_t i = 0; spec && i < 4 && spec->queued[i]; i++)
                l.queued[l.n_queued++] = (JobSummary) {
                        .job_id = strdup(spec->queued[i]),
                        .execution_number = 1,
                        .version_number = 1,
                };
        return l;
}

/* An execution decoded from JSON, as the service would get it. */
static int execution_parse(const char *json, JobExecution *ret) {
        int r = message_decode_job_execution(json, strlen(json), ret);

        return r < 0 ? r : 0;
}

static char *execution_json(const char *job_id, const char *status, const char *doc) {
        return strdup_printf("{\"timestamp\":1,\"execution\":{\"jobId\":\"%s\",\"status\":\"%s\","
                             "\"versionNumber\":1,\"executionNumber\":1,\"jobDocument\":%s}}",
                             job_id, status, doc);
}

#define DOC_OK                                                                                     \
        "{\"operation\":\"firmware_update\",\"deploymentId\":\"dep-1\",\"firmwareId\":\"fw-2.0\"," \
        "\"firmwareUrl\":\"https://fw.example.com/fw.bin?sig=abc\",\"sha256\":\"" SHA "\","        \
        "\"size\":1000000}"

/* --- Names, reports, sanitizing --- */

static void test_names(void) {
        for (JobPhase p = 0; p < _JOB_PHASE_MAX; p++)
                CHECK_INT(job_phase_from_string(job_phase_to_string(p)), p);
        CHECK_INT(job_phase_from_string("bogus"), _JOB_PHASE_INVALID);
        CHECK_INT(job_phase_from_string(NULL), _JOB_PHASE_INVALID);
        CHECK(job_phase_to_string(_JOB_PHASE_MAX) == NULL);
        CHECK_STR(job_phase_to_string(JOB_PHASE_AWAITING_REBOOT), "awaiting-reboot");
        for (JobAction a = 0; a < _JOB_ACTION_MAX; a++)
                CHECK(job_action_to_string(a) != NULL);
        CHECK(job_action_to_string(-1) == NULL);
        CHECK(job_error_code_retryable("RequestThrottled"));
        CHECK(job_error_code_retryable("InternalError"));
        CHECK(job_error_code_retryable("ResourceNotFound"));
        CHECK(!job_error_code_retryable("TerminalStateReached"));
        CHECK(!job_error_code_retryable(NULL));
}

static void test_sanitize(void) {
        char *s = NULL, *big;

        CHECK_INT(job_detail_sanitize("  hook: disk\tfull\r\n", &s), 0);
        CHECK_STR(s, "hook: disk full");
        free(s);
        CHECK_INT(job_detail_sanitize("a\x1b[31mred\x7f", &s), 0);
        CHECK_STR(s, "a [31mred");
        free(s);
        /* Invalid UTF-8 (a lone continuation byte, an overlong form) and a C1 control. */
        CHECK_INT(job_detail_sanitize("x\x80y\xc0\xafz\xc2\x85w", &s), 0);
        CHECK_STR(s, "x?y??z w");
        free(s);
        CHECK_INT(job_detail_sanitize("caf\xc3\xa9 \xe2\x9c\x93", &s), 0);
        CHECK_STR(s, "caf\xc3\xa9 \xe2\x9c\x93");
        free(s);
        CHECK_INT(job_detail_sanitize(" \n\t ", &s), 0);
        CHECK(s == NULL);
        CHECK_INT(job_detail_sanitize("", &s), 0);
        CHECK(s == NULL);
        CHECK_INT(job_detail_sanitize(NULL, &s), 0);
        CHECK(s == NULL);

        /* 600 two-byte characters: cut at a character boundary, with the marker, within the
         * limit. */
        big = malloc(1201);
        for (size_t i = 0; i < 600; i++)
                memcpy(big + 2 * i, "\xc3\xa9", 2);
        big[1200] = 0;
        CHECK_INT(job_detail_sanitize(big, &s), 0);
        CHECK(strlen(s) <= JOB_STATUS_DETAIL_VALUE_MAX);
        CHECK(strlen(s) >= JOB_STATUS_DETAIL_VALUE_MAX - 5);
        CHECK(utf8_is_valid(s, strlen(s)));
        CHECK(strcmp(s + strlen(s) - 3, "...") == 0);
        free(s);
        free(big);

        /* Exactly the limit is kept whole. */
        big = malloc(JOB_STATUS_DETAIL_VALUE_MAX + 1);
        memset(big, 'a', JOB_STATUS_DETAIL_VALUE_MAX);
        big[JOB_STATUS_DETAIL_VALUE_MAX] = 0;
        CHECK_INT(job_detail_sanitize(big, &s), 0);
        CHECK_INT(strlen(s), JOB_STATUS_DETAIL_VALUE_MAX);
        free(s);
        free(big);

        /* Megabytes without a newline: bounded work, bounded result. */
        big = malloc(4 * 1024 * 1024 + 1);
        memset(big, 'x', 4 * 1024 * 1024);
        big[4 * 1024 * 1024] = 0;
        CHECK_INT(job_detail_sanitize(big, &s), 0);
        CHECK_INT(strlen(s), JOB_STATUS_DETAIL_VALUE_MAX);
        free(s);
        free(big);
}

static void test_report(void) {
        _cleanup_(job_report_done) JobReport r = JOB_REPORT_NULL, copy = JOB_REPORT_NULL;
        _cleanup_free_ char *json = NULL;

        job_report_reset(&r, JOB_STATUS_FAILED);
        CHECK_INT(job_report_set(&r, "reason", "bad\nthing"), 0);
        CHECK_INT(job_report_set(&r, "stderr", "line"), 0);
        CHECK_INT(job_report_set(&r, "stderr", "other"), 0);
        CHECK_INT(r.n_details, 2);
        CHECK_STR(job_report_get(&r, "stderr"), "other");
        CHECK_INT(job_report_set(&r, "stderr", "   "), 0); /* cleans to nothing: dropped */
        CHECK_INT(r.n_details, 1);
        CHECK(job_report_get(&r, "stderr") == NULL);
        CHECK_INT(job_report_set(&r, "bad key", "x"), -EINVAL);
        CHECK_INT(job_report_set(&r, "", "x"), -EINVAL);
        CHECK_INT(job_report_set_progress(&r, 250), 0);
        CHECK_STR(job_report_get(&r, JOB_DETAIL_PROGRESS), "100");
        CHECK_INT(job_report_encode(&r, &json), 0);
        CHECK_STR(json, "{\"status\":\"FAILED\",\"statusDetails\":{\"reason\":\"bad thing\","
                        "\"percentProgress\":\"100\"}}");

        CHECK_INT(job_report_copy(&r, &copy), 0);
        CHECK_INT(copy.status, JOB_STATUS_FAILED);
        CHECK_INT(copy.n_details, 2);
        CHECK_STR(job_report_get(&copy, "reason"), "bad thing");

        for (unsigned i = 0; i < 20; i++) {
                char k[16];

                snprintf(k, sizeof(k), "k%u", i);
                CHECK_INT(job_report_set(&copy, k, "v"),
                          i < JOB_STATUS_DETAILS_MAX - 2 ? 0 : -E2BIG);
        }
        CHECK_INT(copy.n_details, JOB_STATUS_DETAILS_MAX);
}

/* --- Documents --- */

static void test_file_name(void) {
        _cleanup_free_ char *a = NULL, *a2 = NULL, *b = NULL;
        char *x = NULL;

        CHECK_INT(job_download_file_name("job-1", &a), 0);
        CHECK_INT(job_download_file_name("job-1", &a2), 0);
        CHECK_INT(job_download_file_name("job-2", &b), 0);
        CHECK_STR(a, a2);
        CHECK(!streq(a, b));
        CHECK_INT(strlen(a), strlen("firmware-") + 32);
        CHECK(strncmp(a, "firmware-", 9) == 0);
        CHECK(strspn(a + 9, "0123456789abcdef") == 32);
        CHECK_INT(job_download_file_name("../etc/passwd", &x), -EINVAL);
        CHECK_INT(job_download_file_name("a/b", &x), -EINVAL);
        CHECK_INT(job_download_file_name("..", &x), -EINVAL);
        CHECK_INT(job_download_file_name("a\nb", &x), -EINVAL);
        CHECK_INT(job_download_file_name("", &x), -EINVAL);
        CHECK_INT(job_download_file_name(NULL, &x), -EINVAL);
        CHECK(x == NULL);
}

typedef struct DocCase {
        const char *doc; /* the jobDocument JSON */
        bool allow_http;
        const char *reason; /* a substring of the reason; NULL: the job is accepted */
} DocCase;

static void test_document_check(void) {
        static const DocCase cases[] = {
                { DOC_OK, false, NULL },
                { "{\"operation\":\"firmware_update\",\"deploymentId\":\"d\",\"firmwareId\":\"f\","
                  "\"firmwareUrl\":\"https://h/x\"}",
                  false, NULL },
                { "{\"operation\":\"firmware_update\",\"deploymentId\":\"d\",\"firmwareId\":\"f\","
                  "\"firmwareUrl\":\"HTTPS://h/x\",\"sha256\":\"" SHA "\"}",
                  false, NULL },
                { "{\"deploymentId\":\"d\",\"firmwareId\":\"f\",\"firmwareUrl\":\"https://h/x\"}",
                  false, "has no operation" },
                { "{\"operation\":\"reboot\",\"deploymentId\":\"d\",\"firmwareId\":\"f\"}", false,
                  "\"reboot\" is not supported" },
                { "{\"operation\":42,\"firmwareId\":\"f\"}", false, "has no operation" },
                { "{\"operation\":\"firmware_update\",\"deploymentId\":\"d\","
                  "\"firmwareUrl\":\"https://h/x\"}",
                  false, "firmwareId is missing" },
                { "{\"operation\":\"firmware_update\",\"deploymentId\":\"d\",\"firmwareId\":[1],"
                  "\"firmwareUrl\":\"https://h/x\"}",
                  false, "firmwareId is missing or not a string" },
                { "{\"operation\":\"firmware_update\",\"deploymentId\":\"d\","
                  "\"firmwareId\":\"a\\nLODEV_X=1\",\"firmwareUrl\":\"https://h/x\"}",
                  false, "firmwareId is empty, too long or contains control" },
                { "{\"operation\":\"firmware_update\",\"deploymentId\":\"\",\"firmwareId\":\"f\","
                  "\"firmwareUrl\":\"https://h/x\"}",
                  false, "deploymentId is empty" },
                { "{\"operation\":\"firmware_update\",\"firmwareId\":\"f\","
                  "\"firmwareUrl\":\"https://h/x\"}",
                  false, "deploymentId is missing" },
                { "{\"operation\":\"firmware_update\",\"deploymentId\":\"d\",\"firmwareId\":\"f\"}",
                  false, "firmwareUrl is missing" },
                { "{\"operation\":\"firmware_update\",\"deploymentId\":\"d\",\"firmwareId\":\"f\","
                  "\"firmwareUrl\":\"file:///etc/shadow\"}",
                  false, "not an https:// URL" },
                { "{\"operation\":\"firmware_update\",\"deploymentId\":\"d\",\"firmwareId\":\"f\","
                  "\"firmwareUrl\":\"ftp://h/x\"}",
                  false, "not an https:// URL" },
                { "{\"operation\":\"firmware_update\",\"deploymentId\":\"d\",\"firmwareId\":\"f\","
                  "\"firmwareUrl\":\"/local/path\"}",
                  false, "not an https:// URL" },
                { "{\"operation\":\"firmware_update\",\"deploymentId\":\"d\",\"firmwareId\":\"f\","
                  "\"firmwareUrl\":\"http://h/x\"}",
                  false, "https:// only" },
                { "{\"operation\":\"firmware_update\",\"deploymentId\":\"d\",\"firmwareId\":\"f\","
                  "\"firmwareUrl\":\"http://h/x\"}",
                  true, NULL },
                { "{\"operation\":\"firmware_update\",\"deploymentId\":\"d\",\"firmwareId\":\"f\","
                  "\"firmwareUrl\":\"https:///x\"}",
                  false, "has no host" },
                { "{\"operation\":\"firmware_update\",\"deploymentId\":\"d\",\"firmwareId\":\"f\","
                  "\"firmwareUrl\":\"https://\"}",
                  false, "has no host" },
                { "{\"operation\":\"firmware_update\",\"deploymentId\":\"d\",\"firmwareId\":\"f\","
                  "\"firmwareUrl\":\"https://h/x y\"}",
                  false, "white space" },
                { "{\"operation\":\"firmware_update\",\"deploymentId\":\"d\",\"firmwareId\":\"f\","
                  "\"firmwareUrl\":\"https://h/\\u00e9\"}",
                  false, "non-ASCII" },
                { "{\"operation\":\"firmware_update\",\"deploymentId\":\"d\",\"firmwareId\":\"f\","
                  "\"firmwareUrl\":\"https://h/x\",\"sha256\":\"abc\"}",
                  false, "sha256 is not 64 hexadecimal digits" },
                { "{\"operation\":\"firmware_update\",\"deploymentId\":\"d\",\"firmwareId\":\"f\","
                  "\"firmwareUrl\":\"https://h/x\",\"sha256\":\"" SHA "0\"}",
                  false, "sha256 is not 64" },
                { "{\"operation\":\"firmware_update\",\"deploymentId\":\"d\",\"firmwareId\":\"f\","
                  "\"firmwareUrl\":\"https://h/x\",\"sha256\":12}",
                  false, "sha256 is not a string" },
                { "{\"operation\":\"firmware_update\",\"deploymentId\":\"d\",\"firmwareId\":\"f\","
                  "\"firmwareUrl\":\"https://h/x\",\"size\":\"100\"}",
                  false, "size is not a non-negative integer" },
                { "{\"operation\":\"firmware_update\",\"deploymentId\":\"d\",\"firmwareId\":\"f\","
                  "\"firmwareUrl\":\"https://h/x\",\"size\":-1}",
                  false, "size is not" },
                { "{\"operation\":\"firmware_update\",\"deploymentId\":\"d\",\"firmwareId\":\"f\","
                  "\"firmwareUrl\":\"https://h/x\",\"size\":1.5}",
                  false, "size is not" },
                { "{\"operation\":\"firmware_update\",\"deploymentId\":\"d\",\"firmwareId\":\"f\","
                  "\"firmwareUrl\":\"https://h/x\",\"size\":null,\"sha256\":null}",
                  false, NULL },
                /* The number rules of every message: integral values in any notation, nothing
                 * past 2^53 - 1. */
                { "{\"operation\":\"firmware_update\",\"deploymentId\":\"d\",\"firmwareId\":\"f\","
                  "\"firmwareUrl\":\"https://h/x\",\"size\":1e3}",
                  false, NULL },
                { "{\"operation\":\"firmware_update\",\"deploymentId\":\"d\",\"firmwareId\":\"f\","
                  "\"firmwareUrl\":\"https://h/x\",\"size\":1e300}",
                  false, "size is not" },
                { "{\"operation\":\"firmware_update\",\"deploymentId\":\"d\",\"firmwareId\":\"f\","
                  "\"firmwareUrl\":\"https://h/x\",\"size\":9007199254740993}",
                  false, "size is not" },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                _cleanup_(job_execution_done) JobExecution e = {};
                _cleanup_free_ char *json = execution_json("job-1", "QUEUED", cases[i].doc);
                _cleanup_free_ char *reason = NULL;
                int r;

                CHECK_INT(execution_parse(json, &e), 0);
                if (strstr(cases[i].doc, ":1e3}"))
                        CHECK_INT(e.document.size, 1000);
                r = job_document_check(e.job_id, &e.document, cases[i].allow_http, &reason);
                if (!cases[i].reason) {
                        CHECK_INT(r, 0);
                        CHECK(reason == NULL);
                        continue;
                }
                CHECK_INT(r, -EBADMSG);
                if (!reason || !strstr(reason, cases[i].reason)) {
                        fprintf(stderr, "case %zu: reason \"%s\", expected \"%s\"\n", i,
                                strempty(reason), cases[i].reason);
                        CHECK(false);
                }
        }

        /* Ids that must never reach a file name or a topic. */
        {
                static const char *const bad_ids[] = { "a/b", "..", "../x", "a\nb", "a b", "",
                                                        "$next",
                                                        "0123456789012345678901234567890123456789"
                                                        "0123456789012345678901234" };
                JobDocument doc = { .operation = (char *) "firmware_update",
                                    .deployment_id = (char *) "d",
                                    .firmware_id = (char *) "f",
                                    .firmware_url = (char *) "https://h/x" };

                for (size_t i = 0; i < ELEMENTSOF(bad_ids); i++) {
                        char *reason = NULL;

                        CHECK_INT(job_document_check(bad_ids[i], &doc, false, &reason),
                                  -EINVAL);
                        CHECK(reason == NULL);
                }
                _cleanup_free_ char *reason = NULL;

                CHECK_INT(job_document_check("ok", NULL, false, &reason), -EBADMSG);
                CHECK_STR(reason, "the job document has no operation");
        }
}

/* A document filling a whole MQTT message: rejected with a short, sendable reason. */
static void test_document_huge(void) {
        const size_t fill = MESSAGE_SIZE_MAX - 400;
        static const char *const fields[] = { "operation", "firmwareId", "firmwareUrl", "sha256" };

        for (size_t f = 0; f < ELEMENTSOF(fields); f++) {
                _cleanup_(job_execution_done) JobExecution e = {};
                _cleanup_(job_journal_done) JobJournal j = JOB_JOURNAL_NULL;
                _cleanup_(job_decision_done) JobDecision d = {};
                _cleanup_free_ char *doc = NULL, *json = NULL, *payload = NULL, *big = NULL;

                big = malloc(fill + 1);
                memset(big, streq(fields[f], "firmwareUrl") ? 'u' : 'A', fill);
                memcpy(big, streq(fields[f], "firmwareUrl") ? "https://h/" : "AAAAAAAAAA", 10);
                big[fill] = 0;
                doc = strdup_printf("{\"operation\":\"firmware_update\",\"deploymentId\":\"d\","
                                    "\"firmwareId\":\"f\",\"firmwareUrl\":\"https://h/x\","
                                    "\"%s\":\"%s\"}",
                                    fields[f], big);
                json = execution_json("job-big", "QUEUED", doc);
                j.reconciled = true;
                CHECK(strlen(json) <= MESSAGE_SIZE_MAX);
                CHECK_INT(execution_parse(json, &e), 0);
                CHECK_INT(job_handle(&j,
                                     &(JobEvent) { .type = JOB_EVENT_EXECUTION,
                                                   .execution = &e },
                                     &ctx, &d),
                          0);
                CHECK_INT(d.action, JOB_ACTION_REPORT);
                CHECK_INT(d.report.status, JOB_STATUS_REJECTED);
                CHECK(strlen(job_report_get(&d.report, JOB_DETAIL_REASON)) <= 1024);
                CHECK_INT(job_report_encode(&d.report, &payload), 0);
                CHECK(strlen(payload) < 2048);
                CHECK_INT(j.phase, JOB_PHASE_REPORTING);
                CHECK_INT(job_journal_save(jobdir, &j), 0);
        }

        /* Past the limit: the decoders refuse it before the job logic sees it. */
        {
                _cleanup_(job_execution_done) JobExecution e = {};
                _cleanup_free_ char *big = malloc(MESSAGE_SIZE_MAX + 2);

                memset(big, ' ', MESSAGE_SIZE_MAX + 1);
                big[0] = '{';
                big[MESSAGE_SIZE_MAX] = '}';
                big[MESSAGE_SIZE_MAX + 1] = 0;
                CHECK_INT(message_decode_job_execution(big, strlen(big), &e), -E2BIG);
                CHECK_INT(message_decode_job_execution("nope", 4, &e), -EBADMSG);
                CHECK_INT(message_decode_job_execution("{}\0{}", 5, &e), -EBADMSG);
                CHECK_INT(message_decode_job_execution("{}", 2, &e), 0);
                CHECK(e.document.sha256 == NULL && e.document.size == -1 &&
                      !e.document.sha256_invalid && !e.document.size_invalid);
        }
}

/* --- Journal --- */

static void journal_expect_equal(const JobJournal *a, const JobJournal *b) {
        CHECK_INT(a->phase, b->phase);
        CHECK_STR(a->job_id, b->job_id);
        CHECK_INT(a->execution_number, b->execution_number);
        CHECK_INT(a->version_number, b->version_number);
        CHECK(streq_ptr(a->firmware_id, b->firmware_id));
        CHECK(streq_ptr(a->deployment_id, b->deployment_id));
        CHECK(streq_ptr(a->sha256, b->sha256));
        CHECK_INT(a->size, b->size);
        CHECK_STR(a->file, b->file);
        CHECK_INT(a->offset, b->offset);
        CHECK_INT(a->failed_offset, b->failed_offset);
        CHECK_INT(a->download_tries, b->download_tries);
        CHECK_INT(a->attempts, b->attempts);
        CHECK(streq_ptr(a->boot_id, b->boot_id));
        CHECK_INT(a->report.status, b->report.status);
        CHECK_INT(a->report.n_details, b->report.n_details);
        for (size_t i = 0; i < a->report.n_details; i++)
                CHECK_STR(job_report_get(&b->report, a->report.keys[i]), a->report.values[i]);
        CHECK_INT(a->accepted_usec, b->accepted_usec);
        CHECK_INT(a->updated_usec, b->updated_usec);
}

static char *journal_file(void) {
        return strdup_printf("%s/%s", jobdir, JOB_JOURNAL_FILE);
}

static void write_text(const char *text, size_t len) {
        _cleanup_free_ char *path = journal_file();

        CHECK_INT(write_file_atomic(path, text, len, 0600), 0);
}

static void test_journal_roundtrip(void) {
        _cleanup_free_ char *path = journal_file();
        JobJournal none = JOB_JOURNAL_NULL;
        struct stat st;

        CHECK_INT(job_journal_remove(jobdir), 0);
        CHECK_INT(job_journal_load(jobdir, &none), -ENOENT);
        CHECK_INT(none.phase, JOB_PHASE_NONE);

        for (JobPhase p = JOB_PHASE_ACCEPTED; p < _JOB_PHASE_MAX; p++) {
                _cleanup_(job_journal_done) JobJournal j = journal_make(p, "job-rt");
                _cleanup_(job_journal_done) JobJournal back = JOB_JOURNAL_NULL;

                j.offset = 4096;
                j.failed_offset = 1024;
                j.download_tries = 2;
                j.attempts = 1;
                j.boot_id = strdup(BOOT_A);
                j.updated_usec += 5;
                if (j.report.status >= 0)
                        CHECK_INT(job_report_set(&j.report, JOB_DETAIL_STDERR,
                                                 "\xc3\xa9 \"quoted\" \\ /"),
                                  0);
                CHECK_INT(job_journal_save(jobdir, &j), 0);
                CHECK_INT(job_journal_load(jobdir, &back), 0);
                journal_expect_equal(&j, &back);
        }
        CHECK_INT(stat(path, &st), 0);
        CHECK_INT(st.st_mode & 0777, 0600);
        CHECK_INT(stat(jobdir, &st), 0);
        CHECK_INT(st.st_mode & 0777, 0700);

        /* A job that was rejected has no firmware fields. */
        {
                _cleanup_(job_journal_done) JobJournal j = JOB_JOURNAL_NULL,
                        back = JOB_JOURNAL_NULL;

                j.phase = JOB_PHASE_REPORTING;
                j.job_id = strdup("job_rej");
                CHECK_INT(job_download_file_name(j.job_id, &j.file), 0);
                j.report.status = JOB_STATUS_REJECTED;
                CHECK_INT(job_journal_save(jobdir, &j), 0);
                CHECK_INT(job_journal_load(jobdir, &back), 0);
                journal_expect_equal(&j, &back);
                CHECK(back.firmware_id == NULL);
        }

        CHECK_INT(job_journal_remove(jobdir), 0);
        CHECK_INT(job_journal_load(jobdir, &none), -ENOENT);
        CHECK_INT(job_journal_remove(jobdir), 0);
}

static void test_journal_refuses(void) {
        _cleanup_(job_journal_done) JobJournal j = journal_make(JOB_PHASE_DOWNLOADING, "job-s");

        /* save() refuses what load() would refuse. */
        j.phase = JOB_PHASE_NONE;
        CHECK_INT(job_journal_save(jobdir, &j), -EINVAL);
        j.phase = JOB_PHASE_DOWNLOADING;
        j.offset = 2000000; /* past the size */
        CHECK_INT(job_journal_save(jobdir, &j), -EINVAL);
        j.offset = 0;
        free(j.file);
        j.file = strdup("../../etc/passwd");
        CHECK_INT(job_journal_save(jobdir, &j), -EINVAL);
        free(j.file);
        CHECK_INT(job_download_file_name(j.job_id, &j.file), 0);
        j.report.status = JOB_STATUS_SUCCEEDED; /* a status before REPORTING */
        CHECK_INT(job_journal_save(jobdir, &j), -EINVAL);
        j.report.status = _JOB_STATUS_INVALID;
        CHECK_INT(job_journal_save(jobdir, &j), 0);

        /* The offset update. */
        CHECK_INT(job_journal_save_offset(jobdir, &j, 8 << 20, ctx.now_usec + 1), -EINVAL);
        CHECK_INT(job_journal_save_offset(jobdir, &j, 65536, ctx.now_usec + 1), 0);
        {
                _cleanup_(job_journal_done) JobJournal back = JOB_JOURNAL_NULL;

                CHECK_INT(job_journal_load(jobdir, &back), 0);
                CHECK_INT(back.offset, 65536);
                CHECK_INT(back.updated_usec, ctx.now_usec + 1);
        }
        j.phase = JOB_PHASE_INSTALLING;
        CHECK_INT(job_journal_save_offset(jobdir, &j, 1, ctx.now_usec), -EINVAL);
        CHECK_INT(j.offset, 65536);
}

static void test_journal_corrupt(void) {
        _cleanup_(job_journal_done) JobJournal good = journal_make(JOB_PHASE_REPORTING, "job-c");
        _cleanup_free_ char *path = journal_file(), *text = NULL;
        JobJournal j = JOB_JOURNAL_NULL;
        size_t len;

        CHECK_INT(job_journal_save(jobdir, &good), 0);
        CHECK_INT(read_file(path, JOB_JOURNAL_SIZE_MAX, &text, &len), 0);

        /* Every truncation (a torn write on a file system that does not order them). */
        for (size_t n = 0; n + 1 < len; n++) {
                write_text(text, n);
                if (job_journal_load(jobdir, &j) != -EBADMSG) {
                        fprintf(stderr, "truncated to %zu bytes: not -EBADMSG\n", n);
                        CHECK(false);
                        job_journal_done(&j);
                }
        }
        write_text(text, len);
        CHECK_INT(job_journal_load(jobdir, &j), 0);
        job_journal_done(&j);

        /* A flipped byte anywhere either still loads as a valid journal or is -EBADMSG. */
        for (size_t n = 0; n < len; n++) {
                char *copy = strndup(text, len);
                int r;

                copy[n] ^= 0x21;
                write_text(copy, len);
                r = job_journal_load(jobdir, &j);
                CHECK(r == 0 || r == -EBADMSG);
                job_journal_done(&j);
                free(copy);
        }

        static const char *const bad[] = {
                "",
                "null",
                "[]",
                "{}",
                "{\"version\":1}",
                "not json at all",
                "{\"version\":0,\"jobId\":\"job-c\",\"phase\":\"done\",\"offset\":0,"
                "\"attempts\":0}",
                "{\"version\":1,\"jobId\":\"../x\",\"phase\":\"done\",\"offset\":0,"
                "\"attempts\":0}",
                "{\"version\":1,\"jobId\":\"job-c\",\"phase\":\"flying\",\"offset\":0,"
                "\"attempts\":0}",
                "{\"version\":1,\"jobId\":\"job-c\",\"phase\":\"done\",\"offset\":0,"
                "\"attempts\":0,\"file\":\"../../bin/sh\"}",
                "{\"version\":1,\"jobId\":\"job-c\",\"phase\":\"done\",\"offset\":\"0\","
                "\"attempts\":0}",
                "{\"version\":1,\"jobId\":\"job-c\",\"phase\":\"done\",\"offset\":-1,"
                "\"attempts\":0}",
                "{\"version\":1,\"jobId\":\"job-c\",\"phase\":\"done\",\"offset\":1.5,"
                "\"attempts\":0}",
                "{\"version\":1,\"jobId\":\"job-c\",\"phase\":\"reporting\",\"offset\":0,"
                "\"attempts\":0}",
                "{\"version\":1,\"jobId\":\"job-c\",\"phase\":\"done\",\"offset\":0,"
                "\"attempts\":0,\"status\":\"QUEUED\"}",
                "{\"version\":1,\"jobId\":\"job-c\",\"phase\":\"done\",\"offset\":0,"
                "\"attempts\":0,\"statusDetails\":{\"a\":\"b\"}}",
                "{\"version\":1,\"jobId\":\"job-c\",\"phase\":\"done\",\"offset\":0,"
                "\"attempts\":0,\"status\":\"FAILED\",\"statusDetails\":{\"a\":1}}",
                "{\"version\":1,\"jobId\":\"job-c\",\"phase\":\"done\",\"offset\":0,"
                "\"attempts\":0,\"status\":\"FAILED\",\"statusDetails\":{\"a b\":\"c\"}}",
                "{\"version\":1,\"jobId\":\"job-c\",\"phase\":\"done\",\"offset\":0,"
                "\"attempts\":0,\"status\":\"FAILED\",\"statusDetails\":{\"a\":\"\"}}",
                "{\"version\":1,\"jobId\":\"job-c\",\"phase\":\"installing\",\"offset\":0,"
                "\"attempts\":0}",
                "{\"version\":1,\"jobId\":\"job-c\",\"phase\":\"done\",\"offset\":0,"
                "\"attempts\":0,\"sha256\":\"XYZ\"}",
                "{\"version\":1,\"jobId\":\"job-c\",\"phase\":\"done\",\"offset\":10,"
                "\"size\":5,\"attempts\":0}",
                "{\"version\":1,\"jobId\":\"job-c\",\"phase\":\"done\",\"offset\":0,"
                "\"attempts\":99999999999999999999}",
                "{\"version\":1,\"jobId\":\"job-c\",\"phase\":\"done\",\"offset\":0,"
                "\"attempts\":0,\"bootId\":\"a\\nb\"}",
                "{\"version\":1,\"jobId\":\"job-c\",\"phase\":\"done\",\"offset\":0,"
                "\"attempts\":0} trailing",
        };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                write_text(bad[i], strlen(bad[i]));
                if (job_journal_load(jobdir, &j) != -EBADMSG) {
                        fprintf(stderr, "bad journal %zu loaded\n", i);
                        CHECK(false);
                        job_journal_done(&j);
                }
        }

        /* The minimal valid form, for contrast, with the right file name. */
        {
                _cleanup_free_ char *file = NULL, *ok = NULL;

                CHECK_INT(job_download_file_name("job-c", &file), 0);
                ok = strdup_printf("{\"version\":1,\"jobId\":\"job-c\",\"phase\":\"done\","
                                   "\"offset\":0,\"attempts\":0,\"file\":\"%s\"}",
                                   file);
                write_text(ok, strlen(ok));
                CHECK_INT(job_journal_load(jobdir, &j), 0);
                CHECK_INT(j.phase, JOB_PHASE_DONE);
                job_journal_done(&j);
        }

        /* A NUL inside, and a file too large to be ours. */
        write_text("{\"version\":1\0}", 14);
        CHECK_INT(job_journal_load(jobdir, &j), -EBADMSG);
        {
                _cleanup_free_ char *big = malloc(JOB_JOURNAL_SIZE_MAX + 10);

                memset(big, ' ', JOB_JOURNAL_SIZE_MAX + 10);
                write_text(big, JOB_JOURNAL_SIZE_MAX + 10);
                CHECK_INT(job_journal_load(jobdir, &j), -EFBIG);
        }
        CHECK_INT(j.phase, JOB_PHASE_NONE); /* untouched throughout */
        CHECK_INT(job_journal_remove(jobdir), 0);
}

/* Older versions are read; a newer one is refused, and kept. */
static void test_journal_versions(void) {
        _cleanup_free_ char *file = NULL, *v1 = NULL, *v1_rollback = NULL, *aside = NULL;
        JobJournal j = JOB_JOURNAL_NULL;
        struct stat st;

        CHECK_INT(job_download_file_name("job-v", &file), 0);
        /* What lodevd wrote before the rollback phase and the reboot tries: a pending reboot,
         * which must still be confirmed after the update that brings the new format. */
        v1 = strdup_printf("{\"version\":1,\"jobId\":\"job-v\",\"phase\":\"awaiting-reboot\","
                           "\"firmwareId\":\"fw-2\",\"deploymentId\":\"d\",\"file\":\"%s\","
                           "\"offset\":0,\"failedOffset\":0,\"downloadTries\":0,\"attempts\":1,"
                           "\"bootId\":\"" BOOT_A "\",\"acceptedAt\":1,\"updatedAt\":2,"
                           "\"executionNumber\":1,\"versionNumber\":3}",
                           file);
        write_text(v1, strlen(v1));
        CHECK_INT(job_journal_load(jobdir, &j), 0);
        CHECK_INT(j.phase, JOB_PHASE_AWAITING_REBOOT);
        CHECK_INT(j.attempts, 1);
        CHECK_INT(j.reboot_tries, 0);
        CHECK_STR(j.boot_id, BOOT_A);
        {
                _cleanup_(job_decision_done) JobDecision d = {};
                _cleanup_(job_list_done) JobList l = list_make(NULL);
                JobContext c = ctx;

                c.boot_id = BOOT_B;
                CHECK_INT(job_reconcile(&j, &l, JOB_RECONCILE_STARTUP, &c, &d), 0);
                CHECK_INT(d.action, JOB_ACTION_CONFIRM);
        }
        /* Written back in the current version, and read again. */
        CHECK_INT(job_journal_save(jobdir, &j), 0);
        job_journal_done(&j);
        CHECK_INT(job_journal_load(jobdir, &j), 0);
        CHECK_INT(j.phase, JOB_PHASE_CONFIRMING);
        job_journal_done(&j);

        /* Version 1 had no rollback phase. */
        v1_rollback = strdup_printf("{\"version\":1,\"jobId\":\"job-v\",\"phase\":\"rolling-back\","
                                    "\"firmwareId\":\"fw-2\",\"deploymentId\":\"d\",\"file\":\"%s\","
                                    "\"offset\":0,\"attempts\":0}",
                                    file);
        write_text(v1_rollback, strlen(v1_rollback));
        CHECK_INT(job_journal_load(jobdir, &j), -EBADMSG);

        /* A newer version is not read at all, whatever it holds, and set aside whole. */
        write_text("{\"version\":3,\"anything\":[1,2,3]}", 32);
        CHECK_INT(job_journal_load(jobdir, &j), -EPROTONOSUPPORT);
        CHECK_INT(j.phase, JOB_PHASE_NONE);
        CHECK_INT(job_journal_set_aside(jobdir), 0);
        CHECK_INT(job_journal_load(jobdir, &j), -ENOENT);
        aside = strdup_printf("%s/" JOB_JOURNAL_FILE ".newer", jobdir);
        CHECK_INT(stat(aside, &st), 0);
        CHECK_INT(st.st_size, 32);
        CHECK_INT(unlink(aside), 0);
}

/* --- Start-up and reconnect --- */

typedef struct StartCase {
        const char *row; /* the tag of the row in job.h */
        const char *name;
        JobPhase phase; /* NONE: no journal */
        bool corrupt;
        bool no_report; /* DONE without a saved report (dropped, not finished) */
        bool want_url;
        bool acknowledged;
        const char *boot_id;
        unsigned attempts;
        unsigned tries;
        unsigned reboot_tries;
        ListSpec list;
        JobReconcileMode mode;
        JobAction action;
        JobPhase next;
        JobStatus status; /* of the report sent (or saved for after a rollback), NOREPORT */
        const char *reason;
        bool save;
        const char *job_id;
} StartCase;

#define S JOB_RECONCILE_STARTUP
#define R JOB_RECONCILE_RECONNECT
#define NOREPORT _JOB_STATUS_INVALID

static const StartCase start_cases[] = {
        { "C4", "idle, nothing listed", JOB_PHASE_NONE, .mode = S, .action = JOB_ACTION_NONE,
          .next = JOB_PHASE_NONE, .status = NOREPORT },
        { "C1", "idle, orphan in progress", JOB_PHASE_NONE,
          .list = { .in_progress = { "job-x" } }, .mode = S, .action = JOB_ACTION_REPORT,
          .next = JOB_PHASE_REPORTING, .status = JOB_STATUS_FAILED,
          .reason = "lodevd has no record of this job: the device lost its state", .save = true,
          .job_id = "job-x" },
        { "C1", "corrupt journal, orphan", JOB_PHASE_NONE, .corrupt = true,
          .list = { .in_progress = { "job-x" } }, .mode = S, .action = JOB_ACTION_REPORT,
          .next = JOB_PHASE_REPORTING, .status = JOB_STATUS_FAILED, .reason = "unreadable",
          .save = true, .job_id = "job-x" },
        { "C3", "idle, queued job", JOB_PHASE_NONE, .list = { .queued = { "job-q" } }, .mode = S,
          .action = JOB_ACTION_GET_JOB, .next = JOB_PHASE_NONE, .status = NOREPORT,
          .job_id = "job-q" },
        { "C1", "idle, orphan before queued", JOB_PHASE_NONE,
          .list = { .in_progress = { "job-x" }, .queued = { "job-q" } }, .mode = R,
          .action = JOB_ACTION_REPORT, .next = JOB_PHASE_REPORTING, .status = JOB_STATUS_FAILED,
          .save = true, .job_id = "job-x" },
        { "C5", "accepted, listed", JOB_PHASE_ACCEPTED, .list = { .queued = { "job-1" } },
          .mode = S, .action = JOB_ACTION_REPORT, .next = JOB_PHASE_ACCEPTED,
          .status = JOB_STATUS_IN_PROGRESS, .job_id = "job-1" },
        { "C5", "accepted, reconnect", JOB_PHASE_ACCEPTED,
          .list = { .in_progress = { "job-1" } }, .mode = R, .action = JOB_ACTION_REPORT,
          .next = JOB_PHASE_ACCEPTED, .status = JOB_STATUS_IN_PROGRESS, .job_id = "job-1" },
        { "C6", "accepted, gone", JOB_PHASE_ACCEPTED, .list = { .queued = { "job-q" } },
          .mode = S, .action = JOB_ACTION_ABANDON, .next = JOB_PHASE_DONE, .status = NOREPORT,
          .save = true, .job_id = "job-1" },
        { "C7", "downloading, listed", JOB_PHASE_DOWNLOADING,
          .list = { .in_progress = { "job-1" } }, .mode = S, .action = JOB_ACTION_GET_JOB,
          .next = JOB_PHASE_DOWNLOADING, .status = NOREPORT, .save = true, .job_id = "job-1" },
        { "C6", "downloading, gone", JOB_PHASE_DOWNLOADING, .mode = S,
          .action = JOB_ACTION_ABANDON, .next = JOB_PHASE_DONE, .status = NOREPORT,
          .save = true, .job_id = "job-1" },
        { "C8", "downloading, reconnect, URL wanted", JOB_PHASE_DOWNLOADING, .want_url = true,
          .list = { .in_progress = { "job-1" } }, .mode = R, .action = JOB_ACTION_GET_JOB,
          .next = JOB_PHASE_DOWNLOADING, .status = NOREPORT, .job_id = "job-1" },
        { "C8", "downloading, reconnect", JOB_PHASE_DOWNLOADING,
          .list = { .in_progress = { "job-1" } }, .mode = R, .action = JOB_ACTION_NONE,
          .next = JOB_PHASE_DOWNLOADING, .status = NOREPORT },
        { "D3", "downloading, restarts without progress", JOB_PHASE_DOWNLOADING,
          .tries = JOB_DOWNLOAD_TRIES_MAX - 1, .list = { .in_progress = { "job-1" } }, .mode = S,
          .action = JOB_ACTION_REPORT, .next = JOB_PHASE_REPORTING, .status = JOB_STATUS_FAILED,
          .reason = "failed 5 times without progress", .save = true, .job_id = "job-1" },
        { "C9", "installing, listed", JOB_PHASE_INSTALLING,
          .list = { .in_progress = { "job-1" } }, .mode = S, .action = JOB_ACTION_ROLLBACK,
          .next = JOB_PHASE_ROLLING_BACK, .status = JOB_STATUS_FAILED,
          .reason = "interrupted during installation", .save = true, .job_id = "job-1" },
        { "C10", "installing, gone: rolled back all the same", JOB_PHASE_INSTALLING, .mode = S,
          .action = JOB_ACTION_ROLLBACK, .next = JOB_PHASE_ROLLING_BACK, .status = NOREPORT,
          .save = true, .job_id = "job-1" },
        { "C21", "installing, reconnect", JOB_PHASE_INSTALLING, .mode = R,
          .action = JOB_ACTION_NONE, .next = JOB_PHASE_INSTALLING, .status = NOREPORT },
        { "C11", "awaiting reboot, rebooted", JOB_PHASE_AWAITING_REBOOT, .boot_id = BOOT_B,
          .list = { .in_progress = { "job-1" } }, .mode = S, .action = JOB_ACTION_CONFIRM,
          .next = JOB_PHASE_CONFIRMING, .status = NOREPORT, .save = true, .job_id = "job-1" },
        { "C11", "awaiting reboot, boot unknown", JOB_PHASE_AWAITING_REBOOT,
          .list = { .in_progress = { "job-1" } }, .mode = S, .action = JOB_ACTION_CONFIRM,
          .next = JOB_PHASE_CONFIRMING, .status = NOREPORT, .save = true, .job_id = "job-1" },
        { "C11", "awaiting reboot, gone: still confirmed", JOB_PHASE_AWAITING_REBOOT,
          .boot_id = BOOT_B, .mode = S, .action = JOB_ACTION_CONFIRM,
          .next = JOB_PHASE_CONFIRMING, .status = NOREPORT, .save = true, .job_id = "job-1" },
        { "C11", "awaiting reboot, rebooted after restarts in the old boot",
          JOB_PHASE_AWAITING_REBOOT, .boot_id = BOOT_B, .attempts = 3,
          .list = { .in_progress = { "job-1" } }, .mode = S, .action = JOB_ACTION_CONFIRM,
          .next = JOB_PHASE_CONFIRMING, .status = NOREPORT, .save = true, .job_id = "job-1" },
        { "C12", "awaiting reboot, same boot", JOB_PHASE_AWAITING_REBOOT, .boot_id = BOOT_A,
          .reboot_tries = 1, .list = { .in_progress = { "job-1" } }, .mode = S,
          .action = JOB_ACTION_REBOOT, .next = JOB_PHASE_AWAITING_REBOOT, .status = NOREPORT,
          .save = true, .job_id = "job-1" },
        { "C13", "awaiting reboot, same boot, too many restarts", JOB_PHASE_AWAITING_REBOOT,
          .boot_id = BOOT_A, .attempts = 3, .reboot_tries = 1,
          .list = { .in_progress = { "job-1" } }, .mode = S, .action = JOB_ACTION_ROLLBACK,
          .next = JOB_PHASE_ROLLING_BACK, .status = JOB_STATUS_FAILED,
          .reason = "lodevd restarted 4 times without the device rebooting", .save = true,
          .job_id = "job-1" },
        { "C14", "awaiting reboot, same boot, reboot tries used", JOB_PHASE_AWAITING_REBOOT,
          .boot_id = BOOT_A, .reboot_tries = 3, .list = { .in_progress = { "job-1" } },
          .mode = S, .action = JOB_ACTION_ROLLBACK, .next = JOB_PHASE_ROLLING_BACK,
          .status = JOB_STATUS_FAILED, .reason = "could not be rebooted into the new firmware",
          .save = true, .job_id = "job-1" },
        { "C21", "awaiting reboot, reconnect", JOB_PHASE_AWAITING_REBOOT,
          .list = { .in_progress = { "job-1" } }, .mode = R, .action = JOB_ACTION_NONE,
          .next = JOB_PHASE_AWAITING_REBOOT, .status = NOREPORT },
        { "C15", "confirming", JOB_PHASE_CONFIRMING, .attempts = 1,
          .list = { .in_progress = { "job-1" } }, .mode = S, .action = JOB_ACTION_CONFIRM,
          .next = JOB_PHASE_CONFIRMING, .status = NOREPORT, .save = true, .job_id = "job-1" },
        { "C16", "confirming, too many restarts", JOB_PHASE_CONFIRMING, .attempts = 3,
          .list = { .in_progress = { "job-1" } }, .mode = S, .action = JOB_ACTION_REPORT,
          .next = JOB_PHASE_REPORTING, .status = JOB_STATUS_FAILED, .reason = "4 times",
          .save = true, .job_id = "job-1" },
        { "C21", "confirming, reconnect", JOB_PHASE_CONFIRMING,
          .list = { .in_progress = { "job-1" } }, .mode = R, .action = JOB_ACTION_NONE,
          .next = JOB_PHASE_CONFIRMING, .status = NOREPORT },
        { "C17", "rolling back", JOB_PHASE_ROLLING_BACK, .list = { .in_progress = { "job-1" } },
          .mode = S, .action = JOB_ACTION_ROLLBACK, .next = JOB_PHASE_ROLLING_BACK,
          .status = JOB_STATUS_FAILED, .reason = "it broke", .save = true, .job_id = "job-1" },
        { "C18", "rolling back, too many restarts", JOB_PHASE_ROLLING_BACK, .attempts = 3,
          .list = { .in_progress = { "job-1" } }, .mode = S, .action = JOB_ACTION_REPORT,
          .next = JOB_PHASE_REPORTING, .status = JOB_STATUS_FAILED, .reason = "it broke",
          .save = true, .job_id = "job-1" },
        { "C18", "rolling back without a report, too many restarts", JOB_PHASE_ROLLING_BACK,
          .no_report = true, .attempts = 3, .mode = S, .action = JOB_ACTION_GET_LIST,
          .next = JOB_PHASE_DONE, .status = NOREPORT, .save = true },
        { "C21", "rolling back, reconnect", JOB_PHASE_ROLLING_BACK, .mode = R,
          .action = JOB_ACTION_NONE, .next = JOB_PHASE_ROLLING_BACK, .status = JOB_STATUS_FAILED },
        { "C19", "reporting, listed", JOB_PHASE_REPORTING, .list = { .in_progress = { "job-1" } },
          .mode = S, .action = JOB_ACTION_REPORT, .next = JOB_PHASE_REPORTING,
          .status = JOB_STATUS_FAILED, .reason = "it broke", .job_id = "job-1" },
        { "C19", "reporting, reconnect", JOB_PHASE_REPORTING,
          .list = { .in_progress = { "job-1" } }, .mode = R, .action = JOB_ACTION_REPORT,
          .next = JOB_PHASE_REPORTING, .status = JOB_STATUS_FAILED, .reason = "it broke",
          .job_id = "job-1" },
        { "C20", "reporting, gone", JOB_PHASE_REPORTING, .mode = S, .action = JOB_ACTION_NONE,
          .next = JOB_PHASE_DONE, .status = NOREPORT, .save = true },
        { "C20", "reporting, gone, next queued", JOB_PHASE_REPORTING,
          .list = { .queued = { "job-q" } }, .mode = S, .action = JOB_ACTION_GET_JOB,
          .next = JOB_PHASE_DONE, .status = NOREPORT, .save = true, .job_id = "job-q" },
        { "C2", "done, listed again", JOB_PHASE_DONE, .list = { .in_progress = { "job-1" } },
          .mode = S, .action = JOB_ACTION_REPORT, .next = JOB_PHASE_REPORTING,
          .status = JOB_STATUS_FAILED, .reason = "it broke", .save = true, .job_id = "job-1" },
        { "C2", "dropped, queued again", JOB_PHASE_DONE, .no_report = true,
          .list = { .queued = { "job-1" } }, .mode = R, .action = JOB_ACTION_REPORT,
          .next = JOB_PHASE_REPORTING, .status = JOB_STATUS_FAILED,
          .reason = "will not run it again", .save = true, .job_id = "job-1" },
        { "C2", "done and acknowledged: a list from before the answer", JOB_PHASE_DONE,
          .acknowledged = true, .list = { .in_progress = { "job-1" } }, .mode = R,
          .action = JOB_ACTION_NONE, .next = JOB_PHASE_DONE, .status = NOREPORT },
        { "C2", "done and acknowledged, the next one behind it", JOB_PHASE_DONE,
          .acknowledged = true, .list = { .queued = { "job-1", "job-q" } }, .mode = R,
          .action = JOB_ACTION_GET_JOB, .next = JOB_PHASE_DONE, .status = NOREPORT,
          .job_id = "job-q" },
        { "C3", "done, next queued", JOB_PHASE_DONE, .list = { .queued = { "job-q" } }, .mode = S,
          .action = JOB_ACTION_GET_JOB, .next = JOB_PHASE_DONE, .status = NOREPORT,
          .job_id = "job-q" },
};

static void test_startup(void) {
        for (size_t i = 0; i < ELEMENTSOF(start_cases); i++) {
                const StartCase *t = &start_cases[i];
                _cleanup_(job_journal_done) JobJournal j = JOB_JOURNAL_NULL;
                _cleanup_(job_decision_done) JobDecision d = {};
                _cleanup_(job_list_done) JobList l = list_make(&t->list);
                unsigned failed = tests_failed;
                const char *reason;

                if (t->phase != JOB_PHASE_NONE) {
                        j = journal_make(t->phase, "job-1");
                        j.boot_id = t->boot_id ? strdup(t->boot_id) : NULL;
                        j.attempts = t->attempts;
                        j.download_tries = t->tries;
                        j.reboot_tries = t->reboot_tries;
                        if (t->no_report)
                                job_report_reset(&j.report, _JOB_STATUS_INVALID);
                        CHECK_INT(job_journal_save(jobdir, &j), 0);
                }
                j.corrupt = t->corrupt;
                j.want_url = t->want_url;
                j.acknowledged = t->acknowledged;
                row_covered(t->row);

                CHECK_INT(job_reconcile(&j, &l, t->mode, &ctx, &d), 0);
                CHECK(j.reconciled);
                CHECK_INT(d.action, t->action);
                CHECK_INT(j.phase, t->next);
                CHECK_INT(d.save, t->save);
                CHECK(streq_ptr(d.job_id, t->job_id));
                if (d.action == JOB_ACTION_REPORT)
                        CHECK_INT(d.report.status, t->status);
                else if (j.phase == JOB_PHASE_ROLLING_BACK)
                        /* The report that follows the rollback is decided and saved now. */
                        CHECK_INT(j.report.status, t->status);
                else
                        CHECK_INT(t->status, NOREPORT);
                reason = job_report_get(d.action == JOB_ACTION_REPORT ? &d.report : &j.report,
                                        JOB_DETAIL_REASON);
                if (t->reason)
                        CHECK(reason && strstr(reason, t->reason));
                /* What was decided can be saved, and reads back the same. */
                if (d.save) {
                        _cleanup_(job_journal_done) JobJournal back = JOB_JOURNAL_NULL;

                        CHECK_INT(job_journal_save(jobdir, &j), 0);
                        CHECK_INT(job_journal_load(jobdir, &back), 0);
                        journal_expect_equal(&j, &back);
                }
                if (streq(t->row, "C11"))
                        CHECK_INT(j.attempts, 1);
                if (streq(t->row, "C12")) {
                        CHECK_INT(j.reboot_tries, 2);
                        CHECK_INT(d.delay_usec, 0);
                }
                if (streq(t->row, "C18") && !t->no_report)
                        CHECK(strstr(strempty(job_report_get(&d.report, JOB_DETAIL_ROLLBACK)),
                                     "did not finish: the device restarted 4 times"));
                if (tests_failed != failed)
                        fprintf(stderr, "  in start-up case \"%s\"\n", t->name);
        }

        /* Attempts are counted across restarts and bound the confirm loop. */
        {
                _cleanup_(job_journal_done) JobJournal j =
                        journal_make(JOB_PHASE_AWAITING_REBOOT, "job-1");
                _cleanup_(job_list_done) JobList l =
                        list_make(&(ListSpec) { .in_progress = { "job-1" } });
                JobContext c = ctx;

                c.boot_id = BOOT_B;
                for (unsigned n = 1; n <= 4; n++) {
                        _cleanup_(job_decision_done) JobDecision d = {};

                        CHECK_INT(job_reconcile(&j, &l, JOB_RECONCILE_STARTUP, &c, &d), 0);
                        CHECK_INT(j.attempts, n);
                        CHECK_INT(d.action, n <= 3 ? JOB_ACTION_CONFIRM : JOB_ACTION_REPORT);
                        CHECK_INT(j.phase, n <= 3 ? JOB_PHASE_CONFIRMING : JOB_PHASE_REPORTING);
                }
        }
        /* max_attempts 0 still allows the one reboot the update needs. */
        {
                _cleanup_(job_journal_done) JobJournal j =
                        journal_make(JOB_PHASE_AWAITING_REBOOT, "job-1");
                _cleanup_(job_decision_done) JobDecision d = {};
                _cleanup_(job_list_done) JobList l =
                        list_make(&(ListSpec) { .in_progress = { "job-1" } });
                JobContext c = ctx;

                c.max_attempts = 0;
                c.boot_id = BOOT_B;
                CHECK_INT(job_reconcile(&j, &l, JOB_RECONCILE_STARTUP, &c, &d), 0);
                CHECK_INT(d.action, JOB_ACTION_CONFIRM);
        }
        /* Arguments. */
        {
                JobJournal j = JOB_JOURNAL_NULL;
                JobDecision d;
                JobList l = {};

                CHECK_INT(job_reconcile(&j, NULL, JOB_RECONCILE_STARTUP, &ctx, &d), -EINVAL);
                CHECK_INT(job_reconcile(&j, &l, _JOB_RECONCILE_MODE_MAX, &ctx, &d), -EINVAL);
        }
}

/* --- Events --- */

typedef struct EventCase {
        const char *row;
        const char *name;
        JobPhase phase;
        JobEvent event;
        JobAction action;
        JobPhase next;
        JobStatus status; /* of the report sent (or saved for after a rollback) */
        const char *reason;
        const char *stderr_line;
        bool save;
        bool backoff;
        bool want_url;
        bool must_save;
        unsigned reboot_tries;
        bool no_report;
} EventCase;

#define EV(...) ((JobEvent) { __VA_ARGS__ })

static const EventCase event_cases[] = {
        { "A4", "start acknowledged", JOB_PHASE_ACCEPTED, EV(.type = JOB_EVENT_UPDATE_ACCEPTED),
          JOB_ACTION_GET_JOB, JOB_PHASE_DOWNLOADING, NOREPORT, .save = true, .must_save = true },
        { "A6", "start throttled", JOB_PHASE_ACCEPTED,
          EV(.type = JOB_EVENT_UPDATE_REJECTED, .error_code = "RequestThrottled"),
          JOB_ACTION_REPORT, JOB_PHASE_ACCEPTED, JOB_STATUS_IN_PROGRESS, .backoff = true },
        { "A8", "start refused: canceled", JOB_PHASE_ACCEPTED,
          EV(.type = JOB_EVENT_UPDATE_REJECTED, .error_code = "InvalidStateTransition"),
          JOB_ACTION_ABANDON, JOB_PHASE_DONE, NOREPORT, .save = true },
        { "A8", "start refused: other", JOB_PHASE_ACCEPTED,
          EV(.type = JOB_EVENT_UPDATE_REJECTED, .error_code = "InvalidRequest"),
          JOB_ACTION_ABANDON, JOB_PHASE_DONE, NOREPORT, .save = true },
        { "A9", "update accepted while downloading", JOB_PHASE_DOWNLOADING,
          EV(.type = JOB_EVENT_UPDATE_ACCEPTED), JOB_ACTION_NONE, JOB_PHASE_DOWNLOADING,
          NOREPORT, .reason = NULL },
        { "A9", "update throttled while downloading", JOB_PHASE_DOWNLOADING,
          EV(.type = JOB_EVENT_UPDATE_REJECTED, .error_code = "RequestThrottled"),
          JOB_ACTION_NONE, JOB_PHASE_DOWNLOADING, NOREPORT, .reason = NULL },
        { "A2", "update refused while downloading: job is over", JOB_PHASE_DOWNLOADING,
          EV(.type = JOB_EVENT_UPDATE_REJECTED, .error_code = "TerminalStateReached"),
          JOB_ACTION_ABANDON, JOB_PHASE_DONE, NOREPORT, .save = true },
        { "D1", "downloaded", JOB_PHASE_DOWNLOADING, EV(.type = JOB_EVENT_DOWNLOAD_DONE),
          JOB_ACTION_INSTALL, JOB_PHASE_INSTALLING, NOREPORT, .save = true, .must_save = true },
        { "D2", "network error", JOB_PHASE_DOWNLOADING,
          EV(.type = JOB_EVENT_DOWNLOAD_FAILED, .download_error = JOB_DOWNLOAD_NETWORK,
             .offset = 5000, .message = "Connection reset"),
          JOB_ACTION_GET_JOB, JOB_PHASE_DOWNLOADING, NOREPORT, .save = true, .backoff = true },
        { "D2", "URL expired", JOB_PHASE_DOWNLOADING,
          EV(.type = JOB_EVENT_DOWNLOAD_FAILED, .download_error = JOB_DOWNLOAD_EXPIRED,
             .offset = 5000, .message = "HTTP 403"),
          JOB_ACTION_GET_JOB, JOB_PHASE_DOWNLOADING, NOREPORT, .save = true },
        { "D4", "not found", JOB_PHASE_DOWNLOADING,
          EV(.type = JOB_EVENT_DOWNLOAD_FAILED, .download_error = JOB_DOWNLOAD_REFUSED,
             .message = "HTTP 404"),
          JOB_ACTION_REPORT, JOB_PHASE_REPORTING, JOB_STATUS_FAILED,
          "the firmware download was refused: HTTP 404", .save = true },
        { "D4", "a redirect to a refused scheme", JOB_PHASE_DOWNLOADING,
          EV(.type = JOB_EVENT_DOWNLOAD_FAILED, .download_error = JOB_DOWNLOAD_REFUSED,
             .message = "Protocol \"file\" not supported"),
          JOB_ACTION_REPORT, JOB_PHASE_REPORTING, JOB_STATUS_FAILED, "not supported",
          .save = true },
        { "D4", "sha mismatch", JOB_PHASE_DOWNLOADING,
          EV(.type = JOB_EVENT_DOWNLOAD_FAILED, .download_error = JOB_DOWNLOAD_CORRUPT,
             .message = "sha256 differs"),
          JOB_ACTION_REPORT, JOB_PHASE_REPORTING, JOB_STATUS_FAILED, "does not match the job",
          .save = true },
        { "D4", "no space", JOB_PHASE_DOWNLOADING,
          EV(.type = JOB_EVENT_DOWNLOAD_FAILED, .download_error = JOB_DOWNLOAD_NO_SPACE),
          JOB_ACTION_REPORT, JOB_PHASE_REPORTING, JOB_STATUS_FAILED,
          "not enough space for the firmware", .save = true },
        { "D4", "local error", JOB_PHASE_DOWNLOADING,
          EV(.type = JOB_EVENT_DOWNLOAD_FAILED, .download_error = JOB_DOWNLOAD_LOCAL,
             .message = "EIO"),
          JOB_ACTION_REPORT, JOB_PHASE_REPORTING, JOB_STATUS_FAILED,
          "the firmware download failed: EIO", .save = true },
        { "H1", "installed", JOB_PHASE_INSTALLING, EV(.type = JOB_EVENT_HOOK_EXITED, .code = 0),
          JOB_ACTION_REPORT, JOB_PHASE_REPORTING, JOB_STATUS_SUCCEEDED, .save = true },
        { "H2", "installed, reboot", JOB_PHASE_INSTALLING,
          EV(.type = JOB_EVENT_HOOK_EXITED, .code = 100), JOB_ACTION_REBOOT,
          JOB_PHASE_AWAITING_REBOOT, NOREPORT, .save = true, .must_save = true },
        { "H3", "installer failed", JOB_PHASE_INSTALLING,
          EV(.type = JOB_EVENT_HOOK_EXITED, .code = 2, .message = "rauc: no\x1b slot\n"),
          JOB_ACTION_REPORT, JOB_PHASE_REPORTING, JOB_STATUS_FAILED,
          "the installer exited with status 2", "rauc: no  slot", .save = true },
        { "H4", "installer killed: rolled back first", JOB_PHASE_INSTALLING,
          EV(.type = JOB_EVENT_HOOK_KILLED, .code = 9), JOB_ACTION_ROLLBACK,
          JOB_PHASE_ROLLING_BACK, JOB_STATUS_FAILED, "the installer was killed by signal 9",
          .save = true },
        { "H4", "installer timeout: rolled back first", JOB_PHASE_INSTALLING,
          EV(.type = JOB_EVENT_HOOK_TIMEOUT, .message = "50%"), JOB_ACTION_ROLLBACK,
          JOB_PHASE_ROLLING_BACK, JOB_STATUS_FAILED, "the installer did not finish in time",
          "50%", .save = true },
        { "A9", "canceled while installing", JOB_PHASE_INSTALLING,
          EV(.type = JOB_EVENT_UPDATE_REJECTED, .error_code = "TerminalStateReached"),
          JOB_ACTION_NONE, JOB_PHASE_INSTALLING, NOREPORT, .reason = NULL },
        { "R1", "reboot failed: again, later", JOB_PHASE_AWAITING_REBOOT,
          EV(.type = JOB_EVENT_REBOOT_FAILED, .message = "exit 1"), JOB_ACTION_REBOOT,
          JOB_PHASE_AWAITING_REBOOT, NOREPORT, .save = true, .reboot_tries = 1 },
        { "R1", "still the same boot: again, later", JOB_PHASE_AWAITING_REBOOT,
          EV(.type = JOB_EVENT_REBOOT_TIMEOUT, .code = 600), JOB_ACTION_REBOOT,
          JOB_PHASE_AWAITING_REBOOT, NOREPORT, .save = true, .reboot_tries = 2 },
        { "R2", "reboot failed, tries used: rolled back", JOB_PHASE_AWAITING_REBOOT,
          EV(.type = JOB_EVENT_REBOOT_FAILED, .message = "exit 1"), JOB_ACTION_ROLLBACK,
          JOB_PHASE_ROLLING_BACK, JOB_STATUS_FAILED,
          "could not be rebooted into the new firmware (3 tries): the reboot command failed: "
          "exit 1",
          .save = true, .reboot_tries = 3 },
        { "R2", "still the same boot, tries used: rolled back", JOB_PHASE_AWAITING_REBOOT,
          EV(.type = JOB_EVENT_REBOOT_TIMEOUT, .code = 600), JOB_ACTION_ROLLBACK,
          JOB_PHASE_ROLLING_BACK, JOB_STATUS_FAILED,
          "(3 tries): still the same boot 600 s after the reboot command", .save = true,
          .reboot_tries = 3 },
        { "H5", "confirmed", JOB_PHASE_CONFIRMING, EV(.type = JOB_EVENT_HOOK_EXITED, .code = 0),
          JOB_ACTION_REPORT, JOB_PHASE_REPORTING, JOB_STATUS_SUCCEEDED, .save = true },
        { "H6", "confirm failed", JOB_PHASE_CONFIRMING,
          EV(.type = JOB_EVENT_HOOK_EXITED, .code = 1, .message = "booted the old slot"),
          JOB_ACTION_REPORT, JOB_PHASE_REPORTING, JOB_STATUS_FAILED,
          "the confirm hook exited with status 1", "booted the old slot", .save = true },
        { "H6", "confirm exit 100 is a failure", JOB_PHASE_CONFIRMING,
          EV(.type = JOB_EVENT_HOOK_EXITED, .code = 100), JOB_ACTION_REPORT,
          JOB_PHASE_REPORTING, JOB_STATUS_FAILED, "status 100", .save = true },
        { "H6", "confirm killed", JOB_PHASE_CONFIRMING,
          EV(.type = JOB_EVENT_HOOK_KILLED, .code = 15), JOB_ACTION_REPORT, JOB_PHASE_REPORTING,
          JOB_STATUS_FAILED, "signal 15", .save = true },
        { "H6", "confirm timeout", JOB_PHASE_CONFIRMING, EV(.type = JOB_EVENT_HOOK_TIMEOUT),
          JOB_ACTION_REPORT, JOB_PHASE_REPORTING, JOB_STATUS_FAILED,
          "the confirm hook did not finish in time", .save = true },
        { "H7", "rolled back: the saved report", JOB_PHASE_ROLLING_BACK,
          EV(.type = JOB_EVENT_HOOK_EXITED, .code = 0), JOB_ACTION_REPORT, JOB_PHASE_REPORTING,
          JOB_STATUS_FAILED, "it broke", .save = true },
        { "H7", "the rollback failed: the saved report all the same", JOB_PHASE_ROLLING_BACK,
          EV(.type = JOB_EVENT_HOOK_EXITED, .code = 1, .message = "rauc: busy"),
          JOB_ACTION_REPORT, JOB_PHASE_REPORTING, JOB_STATUS_FAILED, "it broke", .save = true },
        { "H7", "the rollback killed", JOB_PHASE_ROLLING_BACK,
          EV(.type = JOB_EVENT_HOOK_KILLED, .code = 9), JOB_ACTION_REPORT, JOB_PHASE_REPORTING,
          JOB_STATUS_FAILED, "it broke", .save = true },
        { "H7", "rolled back, no report: done", JOB_PHASE_ROLLING_BACK,
          EV(.type = JOB_EVENT_HOOK_EXITED, .code = 0), JOB_ACTION_GET_LIST, JOB_PHASE_DONE,
          NOREPORT, .save = true, .no_report = true },
        { "A5", "report acknowledged", JOB_PHASE_REPORTING, EV(.type = JOB_EVENT_UPDATE_ACCEPTED),
          JOB_ACTION_GET_LIST, JOB_PHASE_DONE, NOREPORT, .save = true },
        { "A6", "report: internal error", JOB_PHASE_REPORTING,
          EV(.type = JOB_EVENT_UPDATE_REJECTED, .error_code = "InternalError"),
          JOB_ACTION_REPORT, JOB_PHASE_REPORTING, JOB_STATUS_FAILED, "it broke",
          .backoff = true },
        { "A6", "report: not found yet", JOB_PHASE_REPORTING,
          EV(.type = JOB_EVENT_UPDATE_REJECTED, .error_code = "ResourceNotFound"),
          JOB_ACTION_REPORT, JOB_PHASE_REPORTING, JOB_STATUS_FAILED, "it broke",
          .backoff = true },
        { "A8", "report: terminal already", JOB_PHASE_REPORTING,
          EV(.type = JOB_EVENT_UPDATE_REJECTED, .error_code = "TerminalStateReached"),
          JOB_ACTION_GET_LIST, JOB_PHASE_DONE, NOREPORT, .save = true },
        { "A8", "report: version mismatch", JOB_PHASE_REPORTING,
          EV(.type = JOB_EVENT_UPDATE_REJECTED, .error_code = "VersionMismatch"),
          JOB_ACTION_GET_LIST, JOB_PHASE_DONE, NOREPORT, .save = true },
        { "A8", "report: no code", JOB_PHASE_REPORTING, EV(.type = JOB_EVENT_UPDATE_REJECTED),
          JOB_ACTION_GET_LIST, JOB_PHASE_DONE, NOREPORT, .save = true },
        { "A1", "an answer for the job before", JOB_PHASE_REPORTING,
          EV(.type = JOB_EVENT_UPDATE_REJECTED, .job_id = "job-0",
             .error_code = "TerminalStateReached"),
          JOB_ACTION_NONE, JOB_PHASE_REPORTING, NOREPORT, .reason = NULL },
        { "A1", "an acceptance for the job before", JOB_PHASE_ACCEPTED,
          EV(.type = JOB_EVENT_UPDATE_ACCEPTED, .job_id = "job-0"), JOB_ACTION_NONE,
          JOB_PHASE_ACCEPTED, NOREPORT, .reason = NULL },
        { "A5", "an acceptance naming our job", JOB_PHASE_REPORTING,
          EV(.type = JOB_EVENT_UPDATE_ACCEPTED, .job_id = "job-1"), JOB_ACTION_GET_LIST,
          JOB_PHASE_DONE, NOREPORT, .save = true },
        /* The journal cannot be saved. */
        { "S1", "taking the job on", JOB_PHASE_ACCEPTED,
          EV(.type = JOB_EVENT_SAVE_FAILED, .error = -ENOSPC), JOB_ACTION_REPORT,
          JOB_PHASE_REPORTING, JOB_STATUS_REJECTED,
          "the job journal cannot be saved: No space left on device", .save = true },
        { "S2", "starting the download", JOB_PHASE_DOWNLOADING,
          EV(.type = JOB_EVENT_SAVE_FAILED, .error = -EIO), JOB_ACTION_REPORT,
          JOB_PHASE_REPORTING, JOB_STATUS_FAILED,
          "the job journal cannot be saved: Input/output error", .save = true },
        { "S2", "installing", JOB_PHASE_INSTALLING,
          EV(.type = JOB_EVENT_SAVE_FAILED, .error = -ENOSPC), JOB_ACTION_REPORT,
          JOB_PHASE_REPORTING, JOB_STATUS_FAILED, "cannot be saved", .save = true },
        { "S3", "rebooting", JOB_PHASE_AWAITING_REBOOT,
          EV(.type = JOB_EVENT_SAVE_FAILED, .error = -ENOSPC), JOB_ACTION_ROLLBACK,
          JOB_PHASE_ROLLING_BACK, JOB_STATUS_FAILED, "not rebooted into the new firmware",
          .save = true },
        { "L1", "save failed when reporting", JOB_PHASE_REPORTING,
          EV(.type = JOB_EVENT_SAVE_FAILED, .error = -ENOSPC), JOB_ACTION_NONE,
          JOB_PHASE_REPORTING, NOREPORT, .reason = NULL },
        /* Executions that cannot be decoded, named by their topic. */
        { "U1", "unreadable when idle", JOB_PHASE_NONE,
          EV(.type = JOB_EVENT_EXECUTION_UNREADABLE, .job_id = "job-9", .error = -E2BIG),
          JOB_ACTION_REPORT, JOB_PHASE_REPORTING, JOB_STATUS_REJECTED,
          "the job execution cannot be read: larger than 128 KiB", .save = true },
        { "U1", "unreadable when done", JOB_PHASE_DONE,
          EV(.type = JOB_EVENT_EXECUTION_UNREADABLE, .job_id = "job-9", .error = -EBADMSG),
          JOB_ACTION_REPORT, JOB_PHASE_REPORTING, JOB_STATUS_REJECTED, "not valid JSON",
          .save = true },
        { "U2", "unreadable fresh URL", JOB_PHASE_DOWNLOADING,
          EV(.type = JOB_EVENT_EXECUTION_UNREADABLE, .job_id = "job-1", .error = -EBADMSG),
          JOB_ACTION_REPORT, JOB_PHASE_REPORTING, JOB_STATUS_FAILED, "cannot be read",
          .save = true, .want_url = true },
        { "U3", "unreadable other job while busy", JOB_PHASE_DOWNLOADING,
          EV(.type = JOB_EVENT_EXECUTION_UNREADABLE, .job_id = "job-9", .error = -EBADMSG),
          JOB_ACTION_NONE, JOB_PHASE_DOWNLOADING, NOREPORT, .reason = NULL, .want_url = true },
        { "U3", "unreadable while installing", JOB_PHASE_INSTALLING,
          EV(.type = JOB_EVENT_EXECUTION_UNREADABLE, .job_id = "job-1", .error = -EBADMSG),
          JOB_ACTION_NONE, JOB_PHASE_INSTALLING, NOREPORT, .reason = NULL },
        { "U4", "unreadable without an id", JOB_PHASE_NONE,
          EV(.type = JOB_EVENT_EXECUTION_UNREADABLE, .error = -EBADMSG), JOB_ACTION_GET_LIST,
          JOB_PHASE_NONE, NOREPORT, .reason = NULL },
        /* Requests the platform refused. */
        { "G1", "list refused", JOB_PHASE_NONE,
          EV(.type = JOB_EVENT_GET_REJECTED, .error_code = "InternalError"),
          JOB_ACTION_GET_LIST, JOB_PHASE_NONE, NOREPORT, .backoff = true },
        { "G2", "our job not found", JOB_PHASE_DOWNLOADING,
          EV(.type = JOB_EVENT_GET_REJECTED, .job_id = "job-1",
             .error_code = "ResourceNotFound"),
          JOB_ACTION_ABANDON, JOB_PHASE_DONE, NOREPORT, .save = true, .want_url = true },
        { "G2", "our job not found while reporting", JOB_PHASE_REPORTING,
          EV(.type = JOB_EVENT_GET_REJECTED, .job_id = "job-1",
             .error_code = "ResourceNotFound"),
          JOB_ACTION_GET_LIST, JOB_PHASE_DONE, NOREPORT, .save = true },
        { "G3", "fresh URL throttled", JOB_PHASE_DOWNLOADING,
          EV(.type = JOB_EVENT_GET_REJECTED, .job_id = "job-1",
             .error_code = "RequestThrottled"),
          JOB_ACTION_GET_JOB, JOB_PHASE_DOWNLOADING, NOREPORT, .backoff = true,
          .want_url = true },
        { "G4", "another job refused", JOB_PHASE_DOWNLOADING,
          EV(.type = JOB_EVENT_GET_REJECTED, .job_id = "job-9",
             .error_code = "ResourceNotFound"),
          JOB_ACTION_GET_LIST, JOB_PHASE_DOWNLOADING, NOREPORT, .backoff = true },
        { "G4", "queued job not found when idle", JOB_PHASE_NONE,
          EV(.type = JOB_EVENT_GET_REJECTED, .job_id = "job-9",
             .error_code = "ResourceNotFound"),
          JOB_ACTION_GET_LIST, JOB_PHASE_NONE, NOREPORT, .backoff = true },
        /* Answers to progress reports. */
        { "A3", "progress report accepted", JOB_PHASE_DOWNLOADING,
          EV(.type = JOB_EVENT_UPDATE_ACCEPTED, .progress = true), JOB_ACTION_NONE,
          JOB_PHASE_DOWNLOADING, NOREPORT, .reason = NULL },
        { "A3", "progress accepted is no start", JOB_PHASE_ACCEPTED,
          EV(.type = JOB_EVENT_UPDATE_ACCEPTED, .progress = true), JOB_ACTION_NONE,
          JOB_PHASE_ACCEPTED, NOREPORT, .reason = NULL },
        { "A3", "progress accepted is no final answer", JOB_PHASE_REPORTING,
          EV(.type = JOB_EVENT_UPDATE_ACCEPTED, .progress = true), JOB_ACTION_NONE,
          JOB_PHASE_REPORTING, NOREPORT, .reason = NULL },
        { "A3", "progress report throttled", JOB_PHASE_DOWNLOADING,
          EV(.type = JOB_EVENT_UPDATE_REJECTED, .progress = true,
             .error_code = "RequestThrottled"),
          JOB_ACTION_NONE, JOB_PHASE_DOWNLOADING, NOREPORT, .reason = NULL },
        { "A3", "progress report invalid", JOB_PHASE_DOWNLOADING,
          EV(.type = JOB_EVENT_UPDATE_REJECTED, .progress = true, .error_code = "InvalidRequest"),
          JOB_ACTION_NONE, JOB_PHASE_DOWNLOADING, NOREPORT, .reason = NULL },
        { "A2", "progress report: job canceled", JOB_PHASE_DOWNLOADING,
          EV(.type = JOB_EVENT_UPDATE_REJECTED, .progress = true,
             .error_code = "TerminalStateReached"),
          JOB_ACTION_ABANDON, JOB_PHASE_DONE, NOREPORT, .save = true },
        { "A3", "progress report: canceled while installing", JOB_PHASE_INSTALLING,
          EV(.type = JOB_EVENT_UPDATE_REJECTED, .progress = true,
             .error_code = "InvalidStateTransition"),
          JOB_ACTION_NONE, JOB_PHASE_INSTALLING, NOREPORT, .reason = NULL },
        { "A3", "progress rejection is no final answer", JOB_PHASE_REPORTING,
          EV(.type = JOB_EVENT_UPDATE_REJECTED, .progress = true,
             .error_code = "TerminalStateReached"),
          JOB_ACTION_NONE, JOB_PHASE_REPORTING, NOREPORT, .reason = NULL },
        /* Late or misplaced events change nothing. */
        { "L1", "hook when idle", JOB_PHASE_NONE, EV(.type = JOB_EVENT_HOOK_EXITED),
          JOB_ACTION_NONE, JOB_PHASE_NONE, NOREPORT, .reason = NULL },
        { "L1", "download when done", JOB_PHASE_DONE, EV(.type = JOB_EVENT_DOWNLOAD_DONE),
          JOB_ACTION_NONE, JOB_PHASE_DONE, NOREPORT, .reason = NULL },
        { "L1", "hook when accepted", JOB_PHASE_ACCEPTED, EV(.type = JOB_EVENT_HOOK_EXITED),
          JOB_ACTION_NONE, JOB_PHASE_ACCEPTED, NOREPORT, .reason = NULL },
        { "L1", "download failure when reporting", JOB_PHASE_REPORTING,
          EV(.type = JOB_EVENT_DOWNLOAD_FAILED), JOB_ACTION_NONE, JOB_PHASE_REPORTING,
          NOREPORT, .reason = NULL },
        { "L1", "reboot failure when installing", JOB_PHASE_INSTALLING,
          EV(.type = JOB_EVENT_REBOOT_FAILED), JOB_ACTION_NONE, JOB_PHASE_INSTALLING,
          NOREPORT, .reason = NULL },
        { "L1", "reboot timeout when confirming", JOB_PHASE_CONFIRMING,
          EV(.type = JOB_EVENT_REBOOT_TIMEOUT, .code = 600), JOB_ACTION_NONE,
          JOB_PHASE_CONFIRMING, NOREPORT, .reason = NULL },
        { "L1", "download done twice", JOB_PHASE_INSTALLING, EV(.type = JOB_EVENT_DOWNLOAD_DONE),
          JOB_ACTION_NONE, JOB_PHASE_INSTALLING, NOREPORT, .reason = NULL },
        { "L1", "ack when idle", JOB_PHASE_NONE, EV(.type = JOB_EVENT_UPDATE_ACCEPTED),
          JOB_ACTION_NONE, JOB_PHASE_NONE, NOREPORT, .reason = NULL },
        { "A9", "an update answer while rolling back", JOB_PHASE_ROLLING_BACK,
          EV(.type = JOB_EVENT_UPDATE_REJECTED, .error_code = "TerminalStateReached"),
          JOB_ACTION_NONE, JOB_PHASE_ROLLING_BACK, JOB_STATUS_FAILED, .reason = NULL },
};

static void check_event_case(const EventCase *t, JobJournal *j, const JobDecision *d) {
        /* A report sent now, or saved to go out after the rollback. */
        const JobReport *report = d->action == JOB_ACTION_REPORT ? &d->report : &j->report;
        const char *reason = job_report_get(report, JOB_DETAIL_REASON);
        const char *err = job_report_get(report, JOB_DETAIL_STDERR);

        CHECK_INT(d->action, t->action);
        CHECK_INT(j->phase, t->next);
        CHECK_INT(d->save, t->save);
        CHECK_INT(d->must_save, t->must_save);
        CHECK_INT(d->backoff, t->backoff);
        if (d->action == JOB_ACTION_REPORT) {
                _cleanup_free_ char *payload = NULL;

                CHECK_INT(d->report.status, t->status);
                CHECK_INT(job_report_encode(&d->report, &payload), 0);
                CHECK_STR(d->job_id, j->job_id);
        } else if (j->phase == JOB_PHASE_ROLLING_BACK)
                CHECK_INT(j->report.status, t->status);
        else
                CHECK_INT(t->status, NOREPORT);
        if (t->reason)
                CHECK(reason && strstr(reason, t->reason));
        if (t->stderr_line)
                CHECK_STR(err, t->stderr_line);
        if (t->status == JOB_STATUS_SUCCEEDED)
                CHECK_STR(job_report_get(&d->report, JOB_DETAIL_PROGRESS), "100");
        if (t->next == JOB_PHASE_REPORTING && t->status != NOREPORT) {
                /* The terminal report is what the journal keeps. */
                CHECK_INT(j->report.status, t->status);
                CHECK(streq_ptr(job_report_get(&j->report, JOB_DETAIL_REASON), reason));
        }
        if (d->save) {
                _cleanup_(job_journal_done) JobJournal back = JOB_JOURNAL_NULL;

                CHECK_INT(job_journal_save(jobdir, j), 0);
                CHECK_INT(job_journal_load(jobdir, &back), 0);
                journal_expect_equal(j, &back);
        }
}

static void test_events(void) {
        for (size_t i = 0; i < ELEMENTSOF(event_cases); i++) {
                const EventCase *t = &event_cases[i];
                _cleanup_(job_journal_done) JobJournal j = JOB_JOURNAL_NULL;
                _cleanup_(job_decision_done) JobDecision d = {};
                unsigned failed = tests_failed;

                if (t->phase != JOB_PHASE_NONE)
                        j = journal_make(t->phase, "job-1");
                j.want_url = t->want_url;
                j.reboot_tries = t->reboot_tries;
                j.reconciled = true;
                if (t->no_report)
                        job_report_reset(&j.report, _JOB_STATUS_INVALID);
                row_covered(t->row);
                CHECK_INT(job_handle(&j, &t->event, &ctx, &d), 0);
                check_event_case(t, &j, &d);
                if (streq(t->row, "H2")) {
                        CHECK_STR(j.boot_id, BOOT_A);
                        CHECK_INT(j.attempts, 0);
                        CHECK_INT(j.reboot_tries, 1);
                        CHECK_INT(d.delay_usec, 0);
                        CHECK(d.remove_download);
                }
                if (streq(t->row, "R1")) {
                        CHECK_INT(j.reboot_tries, t->reboot_tries + 1);
                        CHECK_INT(d.delay_usec, job_reboot_delay_usec(t->reboot_tries));
                        CHECK(d.delay_usec >= JOB_REBOOT_DELAY_MIN_USEC);
                }
                if (streq(t->row, "H4") || streq(t->row, "R2") || streq(t->row, "S3"))
                        CHECK(d.remove_download);
                if (streq(t->row, "H7") && !t->no_report)
                        CHECK(strstr(strempty(job_report_get(&d.report, JOB_DETAIL_ROLLBACK)),
                                     "INSTALLER rollback "));
                if (streq(t->row, "A5"))
                        CHECK(j.acknowledged);
                if (t->event.type == JOB_EVENT_DOWNLOAD_FAILED && t->action == JOB_ACTION_GET_JOB) {
                        CHECK_INT(j.offset, 5000);
                        CHECK(j.want_url);
                }
                if (tests_failed != failed)
                        fprintf(stderr, "  in event case \"%s\"\n", t->name);
        }

        CHECK_INT(job_reboot_delay_usec(1), JOB_REBOOT_DELAY_MIN_USEC);
        CHECK_INT(job_reboot_delay_usec(2), 2 * JOB_REBOOT_DELAY_MIN_USEC);
        CHECK_INT(job_reboot_delay_usec(100), JOB_REBOOT_DELAY_MAX_USEC);
        {
                JobJournal j = JOB_JOURNAL_NULL;
                JobDecision d;

                CHECK_INT(job_handle(&j, &EV(.type = _JOB_EVENT_TYPE_MAX), &ctx, &d), -EINVAL);
                CHECK_INT(job_handle(&j, NULL, &ctx, &d), -EINVAL);
        }
}

typedef struct ExecCase {
        const char *row;
        const char *name;
        JobPhase phase;
        bool want_url;
        const char *payload; /* printf format with the journal's job id... kept literal */
        JobAction action;
        JobPhase next;
        JobStatus status;
        const char *reason;
        bool not_reconciled;
        bool acknowledged;
} ExecCase;

#define EXEC(id, status, doc)                                                                      \
        "{\"timestamp\":1,\"execution\":{\"jobId\":\"" id "\",\"status\":\"" status "\","          \
        "\"versionNumber\":1,\"executionNumber\":1,\"jobDocument\":" doc "}}"
#define EXEC2(id, status, doc)                                                                     \
        "{\"timestamp\":1,\"execution\":{\"jobId\":\"" id "\",\"status\":\"" status "\","          \
        "\"versionNumber\":1,\"executionNumber\":2,\"jobDocument\":" doc "}}"
#define NO_EXEC "{\"timestamp\":1}"

static const ExecCase exec_cases[] = {
        { "X1", "a job before the first list", JOB_PHASE_NONE, false,
          EXEC("job-1", "QUEUED", DOC_OK), JOB_ACTION_NONE, JOB_PHASE_NONE, NOREPORT,
          .not_reconciled = true },
        { "X1", "an unsupported job before the first list", JOB_PHASE_DONE, false,
          EXEC("job-9", "QUEUED", "{\"operation\":\"reboot\"}"), JOB_ACTION_NONE, JOB_PHASE_DONE,
          NOREPORT, .not_reconciled = true },
        { "X2", "new job", JOB_PHASE_NONE, false, EXEC("job-1", "QUEUED", DOC_OK),
          JOB_ACTION_REPORT, JOB_PHASE_ACCEPTED, JOB_STATUS_IN_PROGRESS, .reason = NULL },
        { "X3", "new job, wrong operation", JOB_PHASE_NONE, false,
          EXEC("job-1", "QUEUED", "{\"operation\":\"reboot\"}"), JOB_ACTION_REPORT,
          JOB_PHASE_REPORTING, JOB_STATUS_REJECTED, "is not supported", .not_reconciled = false },
        { "X3", "new job, file URL", JOB_PHASE_NONE, false,
          EXEC("job-1", "QUEUED",
               "{\"operation\":\"firmware_update\",\"deploymentId\":\"d\",\"firmwareId\":\"f\","
               "\"firmwareUrl\":\"file:///dev/sda\"}"),
          JOB_ACTION_REPORT, JOB_PHASE_REPORTING, JOB_STATUS_REJECTED, "https://", .not_reconciled = false },
        { "X3", "new job, no document", JOB_PHASE_NONE, false,
          "{\"execution\":{\"jobId\":\"job-1\",\"status\":\"QUEUED\"}}", JOB_ACTION_REPORT,
          JOB_PHASE_REPORTING, JOB_STATUS_REJECTED, "no operation", .not_reconciled = false },
        { "X4", "unknown job in progress", JOB_PHASE_NONE, false,
          EXEC("job-1", "IN_PROGRESS", DOC_OK), JOB_ACTION_REPORT, JOB_PHASE_REPORTING,
          JOB_STATUS_FAILED, "no record of this job", .not_reconciled = false },
        { "X5", "finished job when idle", JOB_PHASE_NONE, false,
          EXEC("job-1", "CANCELED", DOC_OK), JOB_ACTION_NONE, JOB_PHASE_NONE, NOREPORT,
          .reason = NULL },
        { "X5", "nothing pending when idle", JOB_PHASE_NONE, false, NO_EXEC, JOB_ACTION_NONE,
          JOB_PHASE_NONE, NOREPORT, .reason = NULL },
        { "X8", "canceled while accepted", JOB_PHASE_ACCEPTED, false, NO_EXEC,
          JOB_ACTION_ABANDON, JOB_PHASE_DONE, NOREPORT, .reason = NULL },
        { "X11", "repeat while accepted", JOB_PHASE_ACCEPTED, false,
          EXEC("job-1", "QUEUED", DOC_OK), JOB_ACTION_NONE, JOB_PHASE_ACCEPTED, NOREPORT,
          .reason = NULL },
        { "X9", "fresh URL", JOB_PHASE_DOWNLOADING, true, EXEC("job-1", "IN_PROGRESS", DOC_OK),
          JOB_ACTION_DOWNLOAD, JOB_PHASE_DOWNLOADING, NOREPORT, .reason = NULL },
        { "X11", "notify-next echo while downloading", JOB_PHASE_DOWNLOADING, false,
          EXEC("job-1", "IN_PROGRESS", DOC_OK), JOB_ACTION_NONE, JOB_PHASE_DOWNLOADING,
          NOREPORT, .reason = NULL },
        { "X10", "document changed", JOB_PHASE_DOWNLOADING, true,
          EXEC("job-1", "IN_PROGRESS",
               "{\"operation\":\"firmware_update\",\"deploymentId\":\"dep-1\","
               "\"firmwareId\":\"fw-3.0\",\"firmwareUrl\":\"https://h/x\",\"sha256\":\"" SHA "\","
               "\"size\":1000000}"),
          JOB_ACTION_REPORT, JOB_PHASE_REPORTING, JOB_STATUS_FAILED, "changed", .not_reconciled = false },
        { "X10", "sha256 dropped from the document", JOB_PHASE_DOWNLOADING, true,
          EXEC("job-1", "IN_PROGRESS",
               "{\"operation\":\"firmware_update\",\"deploymentId\":\"dep-1\","
               "\"firmwareId\":\"fw-2.0\",\"firmwareUrl\":\"https://h/x\",\"size\":1000000}"),
          JOB_ACTION_REPORT, JOB_PHASE_REPORTING, JOB_STATUS_FAILED, "changed", .not_reconciled = false },
        { "X10", "fresh URL is http", JOB_PHASE_DOWNLOADING, true,
          EXEC("job-1", "IN_PROGRESS",
               "{\"operation\":\"firmware_update\",\"deploymentId\":\"dep-1\","
               "\"firmwareId\":\"fw-2.0\",\"firmwareUrl\":\"http://h/x\",\"sha256\":\"" SHA "\","
               "\"size\":1000000}"),
          JOB_ACTION_REPORT, JOB_PHASE_REPORTING, JOB_STATUS_FAILED, "https:// only", .not_reconciled = false },
        { "X7", "next is another job", JOB_PHASE_DOWNLOADING, true,
          EXEC("job-2", "QUEUED", DOC_OK), JOB_ACTION_GET_LIST, JOB_PHASE_DOWNLOADING,
          NOREPORT, .reason = NULL },
        { "M1", "canceled while downloading", JOB_PHASE_DOWNLOADING, true,
          EXEC("job-1", "CANCELED", DOC_OK), JOB_ACTION_ABANDON, JOB_PHASE_DONE, NOREPORT,
          .reason = NULL },
        { "X8", "nothing pending while downloading", JOB_PHASE_DOWNLOADING, false, NO_EXEC,
          JOB_ACTION_ABANDON, JOB_PHASE_DONE, NOREPORT, .reason = NULL },
        { "X8", "re-run while downloading", JOB_PHASE_DOWNLOADING, true,
          EXEC2("job-1", "QUEUED", DOC_OK), JOB_ACTION_ABANDON, JOB_PHASE_DONE, NOREPORT,
          .reason = NULL },
        { "M3", "canceled while installing", JOB_PHASE_INSTALLING, false, NO_EXEC,
          JOB_ACTION_NONE, JOB_PHASE_INSTALLING, NOREPORT, .reason = NULL },
        { "M3", "canceled while confirming", JOB_PHASE_CONFIRMING, false,
          EXEC("job-1", "CANCELED", DOC_OK), JOB_ACTION_NONE, JOB_PHASE_CONFIRMING, NOREPORT,
          .reason = NULL },
        { "M3", "canceled while rolling back", JOB_PHASE_ROLLING_BACK, false, NO_EXEC,
          JOB_ACTION_NONE, JOB_PHASE_ROLLING_BACK, NOREPORT, .reason = NULL },
        { "M2", "nothing pending while reporting", JOB_PHASE_REPORTING, false, NO_EXEC,
          JOB_ACTION_GET_LIST, JOB_PHASE_DONE, NOREPORT, .reason = NULL },
        { "X6", "finished job comes back", JOB_PHASE_DONE, false,
          EXEC("job-1", "IN_PROGRESS", DOC_OK), JOB_ACTION_REPORT, JOB_PHASE_REPORTING,
          JOB_STATUS_FAILED, "it broke", .not_reconciled = false },
        { "X6", "finished job queued again", JOB_PHASE_DONE, false,
          EXEC("job-1", "QUEUED", DOC_OK), JOB_ACTION_REPORT, JOB_PHASE_REPORTING,
          JOB_STATUS_FAILED, "it broke", .not_reconciled = false },
        { "X6", "finished and acknowledged: an answer from before", JOB_PHASE_DONE, false,
          EXEC("job-1", "QUEUED", DOC_OK), JOB_ACTION_NONE, JOB_PHASE_DONE, NOREPORT,
          .acknowledged = true },
        { "X2", "finished job re-run (new execution)", JOB_PHASE_DONE, false,
          EXEC2("job-1", "QUEUED", DOC_OK), JOB_ACTION_REPORT, JOB_PHASE_ACCEPTED,
          JOB_STATUS_IN_PROGRESS, .reason = NULL },
};

static void test_executions(void) {
        for (size_t i = 0; i < ELEMENTSOF(exec_cases); i++) {
                const ExecCase *t = &exec_cases[i];
                _cleanup_(job_journal_done) JobJournal j = JOB_JOURNAL_NULL;
                _cleanup_(job_decision_done) JobDecision d = {};
                _cleanup_(job_execution_done) JobExecution e = {};
                unsigned failed = tests_failed;
                const char *reason;

                if (t->phase != JOB_PHASE_NONE)
                        j = journal_make(t->phase, "job-1");
                j.want_url = t->want_url;
                j.reconciled = !t->not_reconciled;
                j.acknowledged = t->acknowledged;
                j.offset = 4242;
                row_covered(t->row);
                CHECK(message_decode_job_execution(t->payload, strlen(t->payload), &e) >= 0);
                CHECK_INT(job_handle(&j,
                                     &EV(.type = JOB_EVENT_EXECUTION, .execution = &e),
                                     &ctx, &d),
                          0);
                CHECK_INT(d.action, t->action);
                CHECK_INT(j.phase, t->next);
                if (d.action == JOB_ACTION_REPORT)
                        CHECK_INT(d.report.status, t->status);
                reason = job_report_get(&d.report, JOB_DETAIL_REASON);
                if (t->reason)
                        CHECK(reason && strstr(reason, t->reason));
                if (d.action == JOB_ACTION_DOWNLOAD) {
                        CHECK_STR(d.url, "https://fw.example.com/fw.bin?sig=abc");
                        CHECK_INT(d.offset, 4242);
                        CHECK(!j.want_url);
                        CHECK(!d.save);
                }
                if (t->next == JOB_PHASE_ACCEPTED && t->phase != JOB_PHASE_ACCEPTED) {
                        CHECK(d.save);
                        CHECK(d.must_save);
                        CHECK(!j.acknowledged);
                        CHECK(j.reconciled);
                        CHECK_STR(j.firmware_id, "fw-2.0");
                        CHECK_STR(j.deployment_id, "dep-1");
                        CHECK_STR(j.sha256, SHA);
                        CHECK_INT(j.size, 1000000);
                        CHECK_INT(j.offset, 0);
                        CHECK_STR(job_report_get(&d.report, JOB_DETAIL_PROGRESS), "0");
                }
                if (d.save) {
                        _cleanup_(job_journal_done) JobJournal back = JOB_JOURNAL_NULL;

                        CHECK_INT(job_journal_save(jobdir, &j), 0);
                        CHECK_INT(job_journal_load(jobdir, &back), 0);
                        journal_expect_equal(&j, &back);
                }
                if (tests_failed != failed)
                        fprintf(stderr, "  in execution case \"%s\"\n", t->name);
        }

        /* An id that could not have come from a topic is refused, not acted on. */
        {
                _cleanup_(job_journal_done) JobJournal j = JOB_JOURNAL_NULL;
                JobExecution e = { .job_id = (char *) "../../x", .status = JOB_STATUS_QUEUED };
                JobDecision d;

                CHECK_INT(job_handle(&j, &EV(.type = JOB_EVENT_EXECUTION, .execution = &e), &ctx,
                                     &d),
                          -EINVAL);
                CHECK_INT(j.phase, JOB_PHASE_NONE);
                e.job_id = (char *) "a\nb";
                CHECK_INT(job_handle(&j, &EV(.type = JOB_EVENT_EXECUTION, .execution = &e), &ctx,
                                     &d),
                          -EINVAL);
        }
        /* Upper-case sha256 is kept lower-case. */
        {
                _cleanup_(job_journal_done) JobJournal j = JOB_JOURNAL_NULL;
                _cleanup_(job_decision_done) JobDecision d = {};
                JobExecution e = { .job_id = (char *) "job-u",
                                   .status = JOB_STATUS_QUEUED,
                                   .execution_number = 7,
                                   .version_number = 1,
                                   .document = { .operation = (char *) "firmware_update",
                                                 .deployment_id = (char *) "d",
                                                 .firmware_id = (char *) "f",
                                                 .firmware_url = (char *) "https://h/x",
                                                 .sha256 = (char *) "ABCDEF6789abcdef0123456789"
                                                                    "abcdef0123456789abcdef0123"
                                                                    "456789ABCDEF",
                                                 .size = -1 } };

                j.reconciled = true;
                CHECK_INT(job_handle(&j, &EV(.type = JOB_EVENT_EXECUTION, .execution = &e),
                                     &ctx, &d),
                          0);
                CHECK_STR(j.sha256,
                        "abcdef6789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
                CHECK_INT(j.execution_number, 7);
                CHECK_INT(job_journal_save(jobdir, &j), 0);
        }
}

/* Retries are bounded: reports, and downloads that make no progress. */
static void test_bounds(void) {
        for (JobPhase p = JOB_PHASE_ACCEPTED; p <= JOB_PHASE_REPORTING;
             p += JOB_PHASE_REPORTING - JOB_PHASE_ACCEPTED) {
                _cleanup_(job_journal_done) JobJournal j = journal_make(p, "job-1");
                unsigned reports = 0;

                for (unsigned n = 0; n < 50; n++) {
                        _cleanup_(job_decision_done) JobDecision d = {};

                        CHECK_INT(job_handle(&j,
                                             &EV(.type = JOB_EVENT_UPDATE_REJECTED,
                                                 .error_code = "RequestThrottled"),
                                             &ctx, &d),
                                  0);
                        if (d.action != JOB_ACTION_REPORT) {
                                CHECK_INT(d.action, p == JOB_PHASE_ACCEPTED ? JOB_ACTION_ABANDON
                                                                            : JOB_ACTION_NONE);
                                break;
                        }
                        CHECK(d.backoff);
                        reports++;
                }
                CHECK_INT(reports, JOB_REPORT_TRIES_MAX - 1);
                CHECK_INT(j.phase, JOB_PHASE_DONE);
                row_covered("A6");
                row_covered(p == JOB_PHASE_REPORTING ? "A7" : "A8");
                /* A report given up on goes out again at the next reconcile, while listed. */
                if (p == JOB_PHASE_REPORTING) {
                        _cleanup_(job_decision_done) JobDecision d = {};
                        _cleanup_(job_list_done) JobList l =
                                list_make(&(ListSpec) { .in_progress = { "job-1" } });

                        CHECK_INT(job_reconcile(&j, &l, JOB_RECONCILE_RECONNECT, &ctx, &d), 0);
                        CHECK_INT(d.action, JOB_ACTION_REPORT);
                        CHECK_STR(job_report_get(&d.report, JOB_DETAIL_REASON), "it broke");
                }
        }

        /* No progress: JOB_DOWNLOAD_TRIES_MAX failures, then FAILED. */
        {
                _cleanup_(job_journal_done) JobJournal j =
                        journal_make(JOB_PHASE_DOWNLOADING, "job-1");
                unsigned n;

                for (n = 1; n < 100; n++) {
                        _cleanup_(job_decision_done) JobDecision d = {};

                        CHECK_INT(job_handle(&j,
                                             &EV(.type = JOB_EVENT_DOWNLOAD_FAILED,
                                                 .download_error = n % 2 ? JOB_DOWNLOAD_NETWORK
                                                                         : JOB_DOWNLOAD_EXPIRED,
                                                 .offset = 777, .message = "timeout"),
                                             &ctx, &d),
                                  0);
                        if (d.action == JOB_ACTION_REPORT) {
                                CHECK_INT(d.report.status, JOB_STATUS_FAILED);
                                CHECK(strstr(job_report_get(&d.report, JOB_DETAIL_REASON),
                                             "failed 5 times without progress: timeout"));
                                break;
                        }
                        CHECK_INT(d.action, JOB_ACTION_GET_JOB);
                }
                CHECK_INT(n, JOB_DOWNLOAD_TRIES_MAX);
                row_covered("D3");
        }
        /* Progress each time: a slow, flaky link finishes. */
        {
                _cleanup_(job_journal_done) JobJournal j =
                        journal_make(JOB_PHASE_DOWNLOADING, "job-1");

                for (unsigned n = 1; n < 100; n++) {
                        _cleanup_(job_decision_done) JobDecision d = {};

                        CHECK_INT(job_handle(&j,
                                             &EV(.type = JOB_EVENT_DOWNLOAD_FAILED,
                                                 .download_error = JOB_DOWNLOAD_NETWORK,
                                                 .offset = n * 1000),
                                             &ctx, &d),
                                  0);
                        CHECK_INT(d.action, JOB_ACTION_GET_JOB);
                        CHECK_INT(d.backoff, true);
                        CHECK_INT(j.download_tries, 1);
                }
                CHECK_INT(j.offset, 99000);
        }
}

static void test_progress(void) {
        JobProgressThrottle t = {};
        const uint64_t s = 1000000;

        job_progress_reset(&t);
        CHECK(!job_progress_should_send(&t, 0, 0));
        CHECK(!job_progress_should_send(&t, 9, 0));
        CHECK(job_progress_should_send(&t, 10, 0)); /* first step, no time bound yet */
        job_progress_sent(&t, 12, 100 * s);
        CHECK(!job_progress_should_send(&t, 21, 200 * s)); /* 9 points */
        CHECK(!job_progress_should_send(&t, 50, 104 * s)); /* 4 s */
        CHECK(job_progress_should_send(&t, 22, 105 * s));  /* both */
        CHECK(!job_progress_should_send(&t, 5, 300 * s));  /* backwards */
        CHECK(!job_progress_should_send(&t, 90, 99 * s));  /* clock went back */
        job_progress_sent(&t, 95, 200 * s);
        CHECK(!job_progress_should_send(&t, 100, 300 * s));
        CHECK(!job_progress_should_send(&t, 1000, 300 * s)); /* clamped to 100 */

        /* A fast download over a minute: at most one update per 5 s and per 10 points. */
        {
                unsigned sent = 0, last = 0;
                uint64_t last_usec = 0;

                job_progress_reset(&t);
                for (uint64_t ms = 0; ms <= 60000; ms += 10) {
                        unsigned pct = (unsigned) (ms * 100 / 60000);

                        if (job_progress_should_send(&t, pct, ms * 1000)) {
                                if (sent > 0) {
                                        CHECK(ms * 1000 - last_usec >= JOB_PROGRESS_INTERVAL_USEC);
                                        CHECK(pct - last >= JOB_PROGRESS_STEP);
                                }
                                job_progress_sent(&t, pct, ms * 1000);
                                last = pct;
                                last_usec = ms * 1000;
                                sent++;
                        }
                }
                CHECK(sent >= 5 && sent <= 10);
        }
}

/* --- A whole job, with a crash at every step --- */

/* The platform's side of one job, as AWS IoT Jobs keeps it. */
typedef struct Sim {
        JobStatus status;           /* of job-1 on the platform */
        unsigned terminal_updates;  /* accepted updates to a terminal status */
        unsigned installs, confirms, reboots, boots, rollbacks;
        int install_exit;           /* 0 or 100 */
        int reboot;                 /* 0: the command reboots; else how it does not:
                                     * JOB_EVENT_REBOOT_FAILED or _TIMEOUT */
        bool armed;                 /* an install left the new firmware armed to boot */
        unsigned failed_armed;      /* FAILED reports sent while armed: must stay 0 */
        unsigned network_failures;  /* download tries that fail first */
        bool cancel_when_installing;
        JobJournal j;
        JobExecution e; /* the last execution handed over; DOWNLOAD borrows its URL */
        JobPhase crash_phase; /* the journal's phase when the crash hit */
} Sim;

static const char *sim_boot_id(const Sim *s) {
        static char buf[64];

        snprintf(buf, sizeof(buf), "boot-%u", s->boots);
        return buf;
}

static JobContext sim_context(const Sim *s) {
        JobContext c = ctx;

        c.boot_id = sim_boot_id(s);
        return c;
}

static JobList sim_list(const Sim *s) {
        ListSpec spec = {};

        if (s->status == JOB_STATUS_IN_PROGRESS)
                spec.in_progress[0] = "job-1";
        else if (s->status == JOB_STATUS_QUEUED)
                spec.queued[0] = "job-1";
        return list_make(&spec);
}

/* Restart lodevd (power_cut: the whole device): memory is gone, the journal is what is left. */
static int sim_restart(Sim *s, bool power_cut, JobDecision *ret) {
        _cleanup_(job_list_done) JobList l = sim_list(s);
        JobContext c;
        int r;

        if (power_cut)
                s->boots++;
        c = sim_context(s);
        job_journal_done(&s->j);
        r = job_journal_load(jobdir, &s->j);
        if (r == -ENOENT)
                s->j = JOB_JOURNAL_NULL;
        else if (r < 0)
                return r;
        return job_reconcile(&s->j, &l, JOB_RECONCILE_STARTUP, &c, ret);
}

static int sim_execution(Sim *s, JobEvent *ev) {
        _cleanup_free_ char *json = execution_json("job-1", job_status_to_string(s->status),
                                                   DOC_OK);
        int r;

        job_execution_done(&s->e);
        r = execution_parse(json, &s->e);
        if (r < 0)
                return r;
        *ev = EV(.type = JOB_EVENT_EXECUTION, .execution = &s->e);
        return 0;
}

/* Does what d says, the way the service and the platform would, and feeds back the answer.
 * crash_at: the step at which lodevd dies, before (crash_before) or after the action. */
static void sim_run(Sim *s, int crash_at, bool crash_before, bool power_cut) {
        _cleanup_(job_decision_done) JobDecision d = {};
        bool crashed = false;
        int step = 0;

        CHECK_INT(job_journal_remove(jobdir), 0);
        s->status = JOB_STATUS_QUEUED;
        s->j = JOB_JOURNAL_NULL;
        s->e = (JobExecution) {};
        s->crash_phase = _JOB_PHASE_INVALID;
        CHECK_INT(sim_restart(s, false, &d), 0);

        for (; step < 200; step++) {
                JobContext c = sim_context(s);
                _cleanup_(job_decision_done) JobDecision next = {};
                JobEvent ev = {};
                bool have_event = true;

                if (d.save)
                        CHECK_INT(job_journal_save(jobdir, &s->j), 0);
                if (d.action == JOB_ACTION_NONE)
                        break;
                if (!crashed && step == crash_at && crash_before) {
                        crashed = true;
                        s->crash_phase = s->j.phase;
                        job_decision_done(&d);
                        CHECK_INT(sim_restart(s, power_cut, &d), 0);
                        continue;
                }

                switch (d.action) {
                case JOB_ACTION_GET_LIST: {
                        _cleanup_(job_list_done) JobList l = sim_list(s);

                        have_event = false;
                        CHECK_INT(job_reconcile(&s->j, &l, JOB_RECONCILE_RECONNECT, &c, &next), 0);
                        break;
                }
                case JOB_ACTION_GET_JOB:
                        CHECK_INT(sim_execution(s, &ev), 0);
                        break;
                case JOB_ACTION_REPORT:
                        if (d.report.status == JOB_STATUS_FAILED && s->armed)
                                s->failed_armed++;
                        if (s->status != JOB_STATUS_QUEUED && s->status != JOB_STATUS_IN_PROGRESS)
                                ev = EV(.type = JOB_EVENT_UPDATE_REJECTED,
                                        .error_code = "TerminalStateReached");
                        else {
                                if (d.report.status != JOB_STATUS_IN_PROGRESS)
                                        s->terminal_updates++;
                                s->status = d.report.status;
                                ev = EV(.type = JOB_EVENT_UPDATE_ACCEPTED);
                        }
                        break;
                case JOB_ACTION_DOWNLOAD:
                        CHECK_STR(d.url, "https://fw.example.com/fw.bin?sig=abc");
                        /* Half way, the offset is saved as the service would. */
                        CHECK_INT(job_journal_save_offset(jobdir, &s->j, d.offset + 1000,
                                                          c.now_usec),
                                  0);
                        if (s->network_failures > 0) {
                                s->network_failures--;
                                ev = EV(.type = JOB_EVENT_DOWNLOAD_FAILED,
                                        .download_error = JOB_DOWNLOAD_NETWORK,
                                        .offset = d.offset + 1000);
                        } else
                                ev = EV(.type = JOB_EVENT_DOWNLOAD_DONE);
                        break;
                case JOB_ACTION_INSTALL:
                        s->installs++;
                        /* As RAUC's service does: armed, even if lodevd dies right now. */
                        s->armed = true;
                        if (s->cancel_when_installing)
                                s->status = JOB_STATUS_CANCELED;
                        ev = EV(.type = JOB_EVENT_HOOK_EXITED, .code = s->install_exit);
                        break;
                case JOB_ACTION_REBOOT:
                        s->reboots++;
                        if (s->reboot) {
                                ev = EV(.type = (JobEventType) s->reboot, .code = 600,
                                        .message = "refused");
                                break;
                        }
                        s->armed = false; /* booted: confirm or the bootloader decide now */
                        have_event = false;
                        CHECK_INT(sim_restart(s, true, &next), 0);
                        break;
                case JOB_ACTION_ROLLBACK:
                        s->rollbacks++;
                        s->armed = false;
                        ev = EV(.type = JOB_EVENT_HOOK_EXITED, .code = 0);
                        break;
                case JOB_ACTION_CONFIRM:
                        s->confirms++;
                        ev = EV(.type = JOB_EVENT_HOOK_EXITED, .code = 0);
                        break;
                case JOB_ACTION_ABANDON: {
                        _cleanup_(job_list_done) JobList l = sim_list(s);

                        have_event = false;
                        CHECK_INT(job_reconcile(&s->j, &l, JOB_RECONCILE_RECONNECT, &c, &next), 0);
                        break;
                }
                default:
                        CHECK(false);
                        return;
                }

                if (!crashed && step == crash_at && !crash_before) {
                        /* The action happened; its outcome is lost with lodevd. */
                        crashed = true;
                        s->crash_phase = s->j.phase;
                        job_decision_done(&next);
                        job_decision_done(&d);
                        CHECK_INT(sim_restart(s, power_cut, &d), 0);
                        continue;
                }
                if (have_event)
                        CHECK_INT(job_handle(&s->j, &ev, &c, &next), 0);
                job_decision_done(&d);
                d = next;
                next = (JobDecision) { .report = JOB_REPORT_NULL };
        }
        CHECK(step < 200); /* no loop */

        job_journal_done(&s->j);
        job_execution_done(&s->e);
}

static void test_crashes(void) {
        for (int install_exit = 0; install_exit <= 100; install_exit += 100)
                for (int failures = 0; failures <= 2; failures += 2)
                        for (int crash_at = -1; crash_at < 40; crash_at++)
                                for (int mode = 0; mode < 4; mode++) {
                                        Sim s = { .install_exit = install_exit,
                                                  .network_failures = (unsigned) failures };
                                        unsigned failed = tests_failed;
                                        bool before = mode & 1, power_cut = mode & 2;

                                        sim_run(&s, crash_at, before, power_cut);

                                        /* Exactly one terminal state, never two installs. */
                                        CHECK_INT(s.terminal_updates, 1);
                                        CHECK(s.installs <= 1);
                                        CHECK(s.status == JOB_STATUS_SUCCEEDED ||
                                              s.status == JOB_STATUS_FAILED);
                                        CHECK(s.confirms <= ctx.max_attempts);
                                        /* Only a crash in the middle of the install fails the
                                         * job; a reboot, or a crash anywhere else, does not. */
                                        CHECK_INT(s.failed_armed, 0);
                                        if (s.crash_phase == JOB_PHASE_INSTALLING) {
                                                CHECK_INT(s.status, JOB_STATUS_FAILED);
                                                CHECK_INT(s.rollbacks, 1);
                                        } else {
                                                CHECK_INT(s.status, JOB_STATUS_SUCCEEDED);
                                                CHECK_INT(s.rollbacks, 0);
                                        }
                                        if (s.status == JOB_STATUS_SUCCEEDED)
                                                CHECK_INT(s.installs, 1);
                                        if (install_exit == 100 && s.status == JOB_STATUS_SUCCEEDED)
                                                CHECK(s.confirms >= 1);
                                        if (tests_failed != failed)
                                                fprintf(stderr,
                                                        "  in crash run exit=%d failures=%d "
                                                        "crash_at=%d before=%d power_cut=%d: "
                                                        "status %s, installs %u, confirms %u\n",
                                                        install_exit, failures, crash_at, before,
                                                        power_cut,
                                                        strempty(job_status_to_string(s.status)),
                                                        s.installs, s.confirms);
                                }

        /* A reboot command that fails, or returns but does not reboot: tried
         * max_reboot_tries times, then rolled back, then FAILED; at every crash point, never
         * FAILED while armed, never two installs, one terminal report. */
        for (int how = JOB_EVENT_REBOOT_FAILED; how <= JOB_EVENT_REBOOT_TIMEOUT; how++)
                for (int crash_at = -1; crash_at < 40; crash_at++)
                        for (int mode = 0; mode < 4; mode++) {
                                Sim s = { .install_exit = 100, .reboot = how };
                                unsigned failed = tests_failed;
                                bool before = mode & 1, power_cut = mode & 2;

                                sim_run(&s, crash_at, before, power_cut);
                                CHECK_INT(s.terminal_updates, 1);
                                CHECK(s.installs <= 1);
                                CHECK_INT(s.failed_armed, 0);
                                if (crash_at < 0) {
                                        CHECK_INT(s.status, JOB_STATUS_FAILED);
                                        CHECK_INT(s.reboots, ctx.max_reboot_tries);
                                        CHECK_INT(s.rollbacks, 1);
                                        CHECK_INT(s.confirms, 0);
                                }
                                /* A power cut boots the armed firmware: confirmed. */
                                if (s.status == JOB_STATUS_SUCCEEDED)
                                        CHECK(s.confirms >= 1);
                                else
                                        CHECK(s.rollbacks >= 1);
                                if (tests_failed != failed)
                                        fprintf(stderr,
                                                "  in reboot run how=%d crash_at=%d before=%d "
                                                "power_cut=%d: status %s, reboots %u, rollbacks "
                                                "%u\n",
                                                how, crash_at, before, power_cut,
                                                strempty(job_status_to_string(s.status)),
                                                s.reboots, s.rollbacks);
                        }
        row_covered("R1");
        row_covered("R2");

        /* Canceled on the platform while installing: the install finishes, the final report
         * is refused, no second report, and the job ends. */
        {
                Sim s = { .install_exit = 0, .cancel_when_installing = true };

                sim_run(&s, -1, false, false);
                CHECK_INT(s.terminal_updates, 0);
                CHECK_INT(s.installs, 1);
                CHECK_INT(s.status, JOB_STATUS_CANCELED);
        }

        /* A confirm that takes the device down each time: bounded by max_attempts. */
        {
                _cleanup_(job_journal_done) JobJournal j =
                        journal_make(JOB_PHASE_AWAITING_REBOOT, "job-1");
                _cleanup_(job_list_done) JobList l =
                        list_make(&(ListSpec) { .in_progress = { "job-1" } });
                unsigned confirms = 0, reports = 0;

                CHECK_INT(job_journal_save(jobdir, &j), 0);
                for (unsigned boot = 0; boot < 20; boot++) {
                        _cleanup_(job_decision_done) JobDecision d = {};
                        JobContext c = ctx;

                        c.boot_id = boot % 2 ? BOOT_A : BOOT_B;
                        job_journal_done(&j);
                        CHECK_INT(job_journal_load(jobdir, &j), 0);
                        CHECK_INT(job_reconcile(&j, &l, JOB_RECONCILE_STARTUP, &c, &d), 0);
                        if (d.save)
                                CHECK_INT(job_journal_save(jobdir, &j), 0);
                        if (d.action == JOB_ACTION_CONFIRM)
                                confirms++;
                        else if (d.action == JOB_ACTION_REPORT) {
                                reports++;
                                CHECK_INT(d.report.status, JOB_STATUS_FAILED);
                                break;
                        }
                }
                CHECK_INT(confirms, ctx.max_attempts);
                CHECK_INT(reports, 1);
        }
}

int main(void) {
        CHECK(mkdtemp(tmpdir) != NULL);
        snprintf(jobdir, sizeof(jobdir), "%s/job", tmpdir);

        test_names();
        test_sanitize();
        test_report();
        test_file_name();
        test_document_check();
        test_document_huge();
        test_journal_roundtrip();
        test_journal_refuses();
        test_journal_corrupt();
        test_journal_versions();
        test_startup();
        test_events();
        test_executions();
        test_bounds();
        test_progress();
        test_crashes();
        test_table_walked();

        rm_dir_files(jobdir);
        rm_dir_files(tmpdir);
        return TESTS_DONE();
}
