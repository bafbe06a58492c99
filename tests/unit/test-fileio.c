/* SPDX-License-Identifier: MIT */
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "fileio.h"
#include "tests.h"
#include "util.h"

static char dir[] = "/tmp/test-fileio-XXXXXX";

static off_t file_size_of(const char *path) {
        struct stat st;

        return stat(path, &st) < 0 ? -1 : st.st_size;
}

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

/* Pseudo-files report a size of 0: they are read to EOF all the same, within max_len. */
static void test_read_pseudo_files(void) {
        _cleanup_free_ char *fifo = strdup_printf("%s/fifo", dir), *big = NULL;
        char *data = NULL;
        size_t len = 0;

        CHECK_INT(file_size_of("/proc/self/status"), 0);
        CHECK_INT(read_file("/proc/self/status", 65536, &data, &len), 0);
        CHECK(data && startswith(data, "Name:\ttest-fileio\n"));
        CHECK(data && strlen(data) == len && len > 100 && data[len - 1] == '\n');
        free(data);
        data = NULL;

        /* What lodevd's jobs read through libsystemd, in the same form. */
        CHECK_INT(file_size_of("/proc/sys/kernel/random/boot_id"), 0);
        CHECK_INT(read_file("/proc/sys/kernel/random/boot_id", 128, &data, &len), 0);
        CHECK_INT(len, 37);
        CHECK(data && data[8] == '-' && data[36] == '\n');
        free(data);
        data = NULL;

        /* Longer than max_len although the size said 0; max_len exactly is enough. */
        CHECK_INT(read_file("/proc/self/status", 16, &data, &len), -EFBIG);
        CHECK(!data);
        CHECK_INT(read_file("/proc/sys/kernel/random/boot_id", 36, &data, &len), -EFBIG);
        CHECK_INT(read_file("/proc/sys/kernel/random/boot_id", 37, &data, &len), 0);
        CHECK_INT(len, 37);
        free(data);
        data = NULL;

        /* Past the first chunk of a file that says nothing of its size. */
        CHECK_INT(read_file("/proc/self/smaps", 1 << 24, &data, &len), 0);
        CHECK(data && len > 4096 && strlen(data) == len && data[len - 1] == '\n');
        free(data);
        data = NULL;

        /* A regular file past the first chunk, and one byte too long. */
        big = malloc(10001);
        CHECK(big != NULL);
        if (big) {
                _cleanup_free_ char *path = strdup_printf("%s/big", dir);

                memset(big, 'x', 10000);
                CHECK_INT(write_file_atomic(path, big, 10000, 0600), 0);
                CHECK_INT(read_file(path, 10000, &data, &len), 0);
                CHECK_INT(len, 10000);
                CHECK(data && memcmp(data, big, 10000) == 0 && data[10000] == '\0');
                free(data);
                data = NULL;
                CHECK_INT(read_file(path, 9999, &data, &len), -EFBIG);
        }

        CHECK_INT(mkfifo(fifo, 0600), 0);
        CHECK_INT(read_file(fifo, 100, &data, &len), -EBADFD);
        CHECK_INT(read_file("/nonexistent/x", 100, &data, &len), -ENOENT);
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

static void test_pread_pwrite(void) {
        _cleanup_free_ char *path = strdup_printf("%s/data", dir);
        _cleanup_close_ int fd = -EBADF;
        char a[] = "0123", b[] = "", c[] = "456789";
        struct iovec iov[4] = {
                { .iov_base = a, .iov_len = 4 },
                { .iov_base = b, .iov_len = 0 },
                { .iov_base = c, .iov_len = 6 },
                { .iov_base = a, .iov_len = 2 },
        };
        char buf[32] = {};
        int p[2];

        fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        CHECK(fd >= 0);

        /* At an offset past the end: the hole reads as zeros. */
        CHECK_INT(pwrite_full(fd, "abc", 3, 5), 0);
        CHECK_INT(pread_full(fd, buf, 8, 0), 0);
        CHECK(memcmp(buf, "\0\0\0\0\0abc", 8) == 0);

        /* The iovec entries are consumed, the empty one skipped. */
        CHECK_INT(pwritev_full(fd, iov, ELEMENTSOF(iov), 8), 0);
        CHECK_INT(iov[0].iov_len + iov[2].iov_len + iov[3].iov_len, 0);
        CHECK_INT(pread_full(fd, buf, 12, 8), 0);
        CHECK(memcmp(buf, "012345678901", 12) == 0);
        CHECK_INT(pwritev_full(fd, iov, 0, 0), 0);
        CHECK_INT(pwrite_full(fd, NULL, 0, 3), 0);

        /* The file ends early: -ENODATA, with what was there in the buffer. */
        memset(buf, 'x', sizeof(buf));
        CHECK_INT(pread_full(fd, buf, 10, 15), -ENODATA);
        CHECK(memcmp(buf, "78901x", 6) == 0);
        CHECK_INT(pread_full(fd, buf, 1, 20), -ENODATA);
        CHECK_INT(pread_full(fd, buf, 0, 20), 0);

        CHECK_INT(pread_full(fd, buf, 1, UINT64_MAX), -EOVERFLOW);
        CHECK_INT(pwrite_full(fd, buf, 2, (uint64_t) INT64_MAX), -EOVERFLOW);
        CHECK_INT(pread_full(-1, buf, 1, 0), -EBADF);
        CHECK_INT(pwrite_full(-1, buf, 1, 0), -EBADF);

        /* Not seekable: the error of the syscall, as it is. */
        CHECK_INT(pipe2(p, O_CLOEXEC), 0);
        CHECK_INT(pread_full(p[0], buf, 1, 0), -ESPIPE);
        CHECK_INT(pwrite_full(p[1], buf, 1, 0), -ESPIPE);
        close(p[0]);
        close(p[1]);
}

/* A write that crosses RLIMIT_FSIZE is cut short by the kernel: the first part is written,
 * the retry of the rest fails with EFBIG. */
static void test_pwrite_short(void) {
        _cleanup_free_ char *path = strdup_printf("%s/short", dir);
        char buf[100];
        int status;
        pid_t pid;

        memset(buf, 'y', sizeof(buf));
        pid = fork();
        CHECK(pid >= 0);
        if (pid == 0) {
                struct rlimit rl = { .rlim_cur = 64, .rlim_max = 64 };
                int fd;

                signal(SIGXFSZ, SIG_IGN);
                fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
                if (fd < 0 || setrlimit(RLIMIT_FSIZE, &rl) < 0)
                        _exit(2);
                _exit(pwrite_full(fd, buf, sizeof(buf), 10) == -EFBIG ? 0 : 1);
        }
        CHECK_INT(waitpid(pid, &status, 0), pid);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        CHECK_INT(file_size_of(path), 64);
}

static void test_fsync_parent(void) {
        _cleanup_free_ char *sub = strdup_printf("%s/sub", dir),
                            *file = strdup_printf("%s/sub/f", dir);

        CHECK_INT(mkdir(sub, 0700), 0);
        CHECK_INT(write_file_atomic(file, "x", 1, 0600), 0);
        CHECK_INT(fsync_parent_directory(sub), 0);
        CHECK_INT(fsync_parent_directory(file), 0);
        CHECK_INT(fsync_directory_of(sub), 0);
        CHECK_INT(fsync_directory_of(file), 0);
        CHECK_INT(fsync_parent_directory("relative-name"), 0); /* the current directory */
        CHECK_INT(fsync_parent_directory("/nonexistent-dir/x"), -ENOENT);
}

int main(void) {
        if (!mkdtemp(dir))
                return 77;
        test_atomic();
        test_read_pseudo_files();
        test_mkdir_private();
        test_pread_pwrite();
        test_pwrite_short();
        test_fsync_parent();
        {
                _cleanup_free_ char *cmd = strdup_printf("rm -rf '%s'", dir);
                (void) system(cmd);
        }
        return TESTS_DONE();
}
