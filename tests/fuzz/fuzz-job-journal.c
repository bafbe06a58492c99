/* SPDX-License-Identifier: MIT */
/* The job journal (state_dir/job/current) as lodevd reads it at start-up, after a crash, a
 * power loss, a hand edit or a newer lodevd (refused, not read). What loads saves, and what
 * was saved loads back unchanged. */
#include <string.h>
#include <sys/stat.h>

#include "fuzz.h"
#include "job.h"
#include "util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        JobJournal j = JOB_JOURNAL_NULL, again = JOB_JOURNAL_NULL;
        char *first, *second;
        size_t n1, n2;
        char in[512], out1[512], out2[512];
        FILE *f;
        int r;

        fuzz_dir_reset();
        snprintf(in, sizeof(in), "%s", fuzz_path("in"));
        snprintf(out1, sizeof(out1), "%s", fuzz_path("out1"));
        snprintf(out2, sizeof(out2), "%s", fuzz_path("out2"));
        FUZZ_CHECK(mkdir(in, 0700) == 0);
        f = fopen(fuzz_path("in/current"), "we");
        FUZZ_CHECK(f);
        FUZZ_CHECK(fwrite(data, 1, size, f) == size || size == 0);
        FUZZ_CHECK(fclose(f) == 0);

        r = job_journal_load(in, &j);
        FUZZ_CHECK(r == 0 || r == -EBADMSG || r == -EFBIG || r == -EPROTONOSUPPORT);
        if (r < 0)
                return 0;

        FUZZ_CHECK(job_journal_save(out1, &j) == 0);
        FUZZ_CHECK(job_journal_load(out1, &again) == 0);
        FUZZ_CHECK(job_journal_save(out2, &again) == 0);
        first = fuzz_read_file(fuzz_path("out1/current"), &n1);
        second = fuzz_read_file(fuzz_path("out2/current"), &n2);
        FUZZ_CHECK(first && second && n1 == n2 && memcmp(first, second, n1) == 0);
        FUZZ_CHECK(streq(j.job_id, again.job_id) && j.phase == again.phase &&
                   j.offset == again.offset && j.attempts == again.attempts);
        free(first);
        free(second);
        job_journal_done(&again);
        job_journal_done(&j);
        return 0;
}
