/* SPDX-License-Identifier: MIT */
/* A job execution with its document (<jobId>/get/accepted, $next/get/accepted,
 * start-next/accepted, notify-next), then the check that decides whether lodevd runs it. */
#include <string.h>

#include "fuzz.h"
#include "job.h"
#include "json-util.h"
#include "message.h"
#include "topic.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        JobExecution e = {};
        char *reason = NULL, *file = NULL;
        int r;

        r = message_decode_job_execution(data, size, &e);
        if (r <= 0)
                return 0;
        FUZZ_CHECK(topic_job_id_valid(e.job_id));
        FUZZ_CHECK(job_status_to_string(e.status));
        for (char **d = e.status_details; d && *d; d += 2)
                FUZZ_CHECK(d[1]);
        if (e.document.operation)
                FUZZ_CHECK(json_string_printable(e.document.operation));

        /* The integrity fields: as given, or flagged; never silently dropped. */
        if (e.document.sha256)
                FUZZ_CHECK(!e.document.sha256_invalid);
        if (e.document.size >= 0)
                FUZZ_CHECK(!e.document.size_invalid && e.document.size <= (INT64_C(1) << 53) - 1);
        else
                FUZZ_CHECK(e.document.size == -1);
        for (int allow_http = 0; allow_http <= 1; allow_http++) {
                r = job_document_check(e.job_id, &e.document, allow_http, &reason);
                FUZZ_CHECK(r == 0 || r == -EBADMSG);
                if (r == -EBADMSG) {
                        JobReport report = JOB_REPORT_NULL;
                        char *payload = NULL;

                        /* It goes into the report that ends the job: the platform takes it. */
                        FUZZ_CHECK(reason && reason[0]);
                        job_report_reset(&report, JOB_STATUS_REJECTED);
                        FUZZ_CHECK(job_report_set(&report, "reason", reason) == 0);
                        FUZZ_CHECK(job_report_encode(&report, &payload) == 0);
                        free(payload);
                        job_report_done(&report);
                        free(reason);
                        reason = NULL;
                        continue;
                }
                FUZZ_CHECK(e.document.firmware_url && e.document.firmware_id);
                /* What it runs has integrity fields it can use. */
                FUZZ_CHECK(!e.document.sha256_invalid && !e.document.size_invalid);
                FUZZ_CHECK(!e.document.sha256 || job_sha256_valid(e.document.sha256));
                FUZZ_CHECK(job_download_file_name(e.job_id, &file) == 0);
                FUZZ_CHECK(strncmp(file, "firmware-", 9) == 0 && !strchr(file, '/'));
                free(file);
                file = NULL;
        }
        job_execution_done(&e);
        return 0;
}
