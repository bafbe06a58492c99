/* SPDX-License-Identifier: MIT */
/* $aws/things/<thing>/jobs/get/accepted: the lists of pending executions. Every id kept is
 * one lodevd can address (a topic level, a download file name). */
#include "fuzz.h"
#include "job.h"
#include "message.h"
#include "topic.h"

static void check(const JobSummary *s, size_t n) {
        for (size_t i = 0; i < n; i++) {
                char *file = NULL;

                FUZZ_CHECK(topic_job_id_valid(s[i].job_id));
                FUZZ_CHECK(job_download_file_name(s[i].job_id, &file) == 0);
                free(file);
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        JobList l = {};

        if (message_decode_job_list(data, size, &l) < 0)
                return 0;
        check(l.in_progress, l.n_in_progress);
        check(l.queued, l.n_queued);
        job_list_done(&l);
        return 0;
}
