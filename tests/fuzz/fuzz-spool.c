/* SPDX-License-Identifier: MIT */
/* The observation spool (state_dir/spool) as lodevd finds it at start-up: a head file and
 * segment files, torn by a crash, zeroed by a power loss or damaged on the medium, written
 * from a directory image (fuzz.h). Whatever the files hold, the spool opens; every record it
 * offers reads back whole; a record appended after recovery gets a sequence number above all
 * of them, survives a reopen, and acknowledged records stay acknowledged. */
#include <string.h>
#include <sys/stat.h>

#include "fuzz.h"
#include "spool.h"
#include "util.h"

#define MAX_BYTES (4U * 1024U * 1024U)
#define SEQS_MAX 4096U

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        static const char record[] = "{\"value\":1}";
        static uint64_t seqs[SEQS_MAX];
        Spool *s = NULL;
        char dir[512];
        uint64_t seq = 0, appended = 0, pending;
        size_t n = 0, acked = 0;
        void *payload;
        size_t len;
        int r;

        fuzz_dir_reset();
        snprintf(dir, sizeof(dir), "%s", fuzz_path("spool"));
        FUZZ_CHECK(mkdir(dir, 0700) == 0);
        (void) fuzz_write_image(dir, data, size);

        r = spool_open(dir, MAX_BYTES, &s);
        FUZZ_CHECK(r == 0);
        while (n < SEQS_MAX && spool_next(s, seq, &seq) == 0) {
                FUZZ_CHECK(n == 0 || seq > seqs[n - 1]);
                r = spool_read(s, seq, &payload, &len);
                FUZZ_CHECK(r == 0);
                FUZZ_CHECK(len <= SPOOL_RECORD_MAX);
                free(payload);
                seqs[n++] = seq;
        }
        pending = spool_pending_count(s);
        FUZZ_CHECK(n == SEQS_MAX || pending == n);

        /* The image is far below MAX_BYTES: the record fits. */
        FUZZ_CHECK(spool_append(s, record, sizeof(record) - 1, &appended) == 0);
        FUZZ_CHECK(n == 0 || appended > seqs[n - 1]);
        FUZZ_CHECK(spool_sync(s) == 0);
        /* Every other record delivered. */
        for (size_t i = 0; i < n; i += 2, acked++)
                FUZZ_CHECK(spool_ack(s, seqs[i]) == 0);
        FUZZ_CHECK(spool_flush(s) == 0);
        s = spool_free(s);

        FUZZ_CHECK(spool_open(dir, MAX_BYTES, &s) == 0);
        FUZZ_CHECK(spool_pending_count(s) == pending - acked + 1);
        for (size_t i = 0; i < n; i++) {
                r = spool_read(s, seqs[i], &payload, &len);
                if (i % 2 == 0)
                        FUZZ_CHECK(r == -ENOENT);
                else {
                        FUZZ_CHECK(r == 0);
                        free(payload);
                }
        }
        FUZZ_CHECK(spool_read(s, appended, &payload, &len) == 0);
        FUZZ_CHECK(len == sizeof(record) - 1 && memcmp(payload, record, len) == 0);
        free(payload);
        spool_free(s);
        return 0;
}
