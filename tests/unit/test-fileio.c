/* SPDX-License-Identifier: MIT */
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "fileio.h"
#include "tests.h"
#include "util.h"

static char dir[] = "/tmp/test-fileio-XXXXXX";

static void test_atomic(void) {
        _cleanup_free_ char *path = strdup_printf("%s/key", dir), *data = NULL;
        struct stat st;
        size_t len;

        CHECK_INT(write_file_atomic(path, "one", 3, 0600), 0);
        CHECK_INT(read_file(path, 100, &data, &len), 0);
        CHECK_STR(data, "one");
        CHECK_INT(len, 3);
        free(data);
        data = NULL;

        /* Replaces the content and sets the exact mode whatever the umask. */
        umask(0);
        CHECK_INT(write_file_atomic(path, "second", 6, 0600), 0);
        CHECK_INT(stat(path, &st), 0);
        CHECK_INT(st.st_mode & 07777, 0600);
        CHECK_INT(read_file(path, 100, &data, &len), 0);
        CHECK_STR(data, "second");
        CHECK_INT(read_file(path, 3, &data, &len), -EFBIG);
        CHECK_INT(check_private_file(path), 0);
        CHECK_INT(chmod(path, 0640), 0);
        CHECK_INT(check_private_file(path), -EPERM);
        umask(022);
}

static void test_mkdir_private(void) {
        _cleanup_free_ char *sub = strdup_printf("%s/a/b/state", dir),
                            *open_dir = strdup_printf("%s/open", dir),
                            *file = strdup_printf("%s/file", dir);
        struct stat st;

        CHECK_INT(mkdir_private(sub), 0);
        CHECK_INT(stat(sub, &st), 0);
        CHECK_INT(st.st_mode & 07777, 0700);
        CHECK_INT(mkdir_private(sub), 0); /* idempotent */

        CHECK_INT(mkdir(open_dir, 0755), 0);
        CHECK_INT(chmod(open_dir, 0755), 0);
        CHECK_INT(mkdir_private(open_dir), -EPERM);

        CHECK_INT(write_file_atomic(file, "x", 1, 0600), 0);
        CHECK_INT(mkdir_private(file), -ENOTDIR);
}

int main(void) {
        if (!mkdtemp(dir))
                return 77;
        test_atomic();
        test_mkdir_private();
        {
                _cleanup_free_ char *cmd = strdup_printf("rm -rf '%s'", dir);
                (void) system(cmd);
        }
        return TESTS_DONE();
}
