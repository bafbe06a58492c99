/* SPDX-License-Identifier: MIT */
/* The file transfer spool (state_dir/transfers) as lodevd finds it at start-up: metadata files
 * (<id>.json) and data files (<id>.data) after a crash, a power loss or damage, written from a
 * directory image (fuzz.h). Every transfer kept holds together and can ask for its upload
 * link; what open cleaned up stays cleaned up at the next open. */
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz.h"
#include "message.h"
#include "transfer-store.h"
#include "util.h"

static void check_transfer(TransferStore *s, const Transfer *t) {
        char *request = NULL;
        struct stat st;
        int fd;

        FUZZ_CHECK(transfer_id_is_valid(t->id));
        FUZZ_CHECK(transfer_file_name_check(t->file_name, NULL) == 0);
        FUZZ_CHECK(transfer_content_type_check(t->content_type, NULL) == 0);
        FUZZ_CHECK(t->size <= TRANSFER_SIZE_MAX && t->seq > 0);
        /* A transfer that could not ask for a link would wait forever. */
        FUZZ_CHECK(message_encode_upload_link_request(t->file_name, t->content_type, &request) ==
                   0);
        free(request);
        fd = transfer_open_data(s, t->id);
        FUZZ_CHECK(fd >= 0);
        FUZZ_CHECK(fstat(fd, &st) == 0 && (uint64_t) st.st_size == t->size);
        close(fd);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        TransferStore *s = NULL;
        const TransferStoreIssue *issues;
        char dir[512];
        size_t n, n_issues;
        int r;

        fuzz_dir_reset();
        snprintf(dir, sizeof(dir), "%s", fuzz_path("transfers"));
        FUZZ_CHECK(mkdir(dir, 0700) == 0);
        (void) fuzz_write_image(dir, data, size);

        r = transfer_store_open(dir, UINT64_C(1) << 40, &s, NULL);
        FUZZ_CHECK(r == 0);
        n = transfer_store_count(s);
        for (size_t i = 0; i < n; i++)
                check_transfer(s, transfer_store_nth(s, i));
        for (size_t i = 1; i < n; i++)
                FUZZ_CHECK(transfer_store_nth(s, i - 1)->seq <= transfer_store_nth(s, i)->seq);
        s = transfer_store_free(s);

        /* Recovery is done once: the same transfers, nothing more deleted. */
        FUZZ_CHECK(transfer_store_open(dir, UINT64_C(1) << 40, &s, NULL) == 0);
        FUZZ_CHECK(transfer_store_count(s) == n);
        n_issues = transfer_store_issues(s, &issues);
        for (size_t i = 0; i < n_issues; i++)
                FUZZ_CHECK(!issues[i].lost);
        transfer_store_free(s);
        return 0;
}
