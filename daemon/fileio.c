/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdint.h>
#include <sys/stat.h>

#include "fileio.h"
#include "util.h"

int write_full(int fd, const void *data, size_t len) {
        const char *p = data;

        while (len > 0) {
                ssize_t n = write(fd, p, len);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                p += n;
                len -= (size_t) n;
        }
        return 0;
}

/* off_t is 64 bits here (_FILE_OFFSET_BITS=64 or a 64-bit ABI); a range past it is refused
 * rather than wrapped into a negative offset. */
static bool range_ok(uint64_t offset, size_t len) {
        return offset <= (uint64_t) INT64_MAX && len <= (uint64_t) INT64_MAX - offset;
}

int pread_full(int fd, void *buf, size_t len, uint64_t offset) {
        uint8_t *p = buf;

        if (!range_ok(offset, len))
                return -EOVERFLOW;
        while (len > 0) {
                ssize_t n = pread(fd, p, len, (off_t) offset);

                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (n == 0)
                        return -ENODATA;
                p += n;
                len -= (size_t) n;
                offset += (uint64_t) n;
        }
        return 0;
}

int pwrite_full(int fd, const void *buf, size_t len, uint64_t offset) {
        struct iovec iov = { .iov_base = (void *) buf, .iov_len = len };

        return pwritev_full(fd, &iov, 1, offset);
}

int pwritev_full(int fd, struct iovec *iov, size_t n_iov, uint64_t offset) {
        size_t total = 0;

        for (size_t i = 0; i < n_iov; i++) {
                if (iov[i].iov_len > SIZE_MAX - total)
                        return -EOVERFLOW;
                total += iov[i].iov_len;
        }
        if (!range_ok(offset, total))
                return -EOVERFLOW;

        for (;;) {
                ssize_t n;

                /* Skip what is done, including empty entries, so that pwritev() returning 0
                 * can only mean that the kernel wrote nothing. */
                while (n_iov > 0 && iov->iov_len == 0) {
                        iov++;
                        n_iov--;
                }
                if (n_iov == 0)
                        return 0;

                n = pwritev(fd, iov, (int) MIN(n_iov, (size_t) IOV_MAX), (off_t) offset);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (n == 0)
                        return -EIO;
                offset += (uint64_t) n;
                while (n > 0) {
                        size_t k = MIN((size_t) n, iov->iov_len);

                        iov->iov_base = (uint8_t *) iov->iov_base + k;
                        iov->iov_len -= k;
                        n -= (ssize_t) k;
                        if (iov->iov_len == 0) {
                                iov++;
                                n_iov--;
                        }
                }
        }
}

static int fsync_dir_path(const char *dir) {
        _cleanup_close_ int fd = -EBADF;

        fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        if (fsync(fd) < 0)
                return -errno;
        return 0;
}

int fsync_directory_of(const char *path) {
        struct stat st;

        if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
                return fsync_dir_path(path);
        return fsync_parent_directory(path);
}

int fsync_parent_directory(const char *path) {
        _cleanup_free_ char *copy = strdup(path);

        if (!copy)
                return -ENOMEM;
        return fsync_dir_path(dirname(copy));
}

int write_file_atomic(const char *path, const void *data, size_t len, mode_t mode) {
        _cleanup_free_ char *tmp = NULL;
        _cleanup_close_ int fd = -EBADF;
        int r;

        tmp = strdup_printf("%s.tmp.%d", path, (int) getpid());
        if (!tmp)
                return -ENOMEM;

        fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode);
        if (fd < 0)
                return -errno;
        /* open() honours the umask; the mode must be exact for key files. */
        if (fchmod(fd, mode) < 0) {
                r = -errno;
                goto fail;
        }
        r = write_full(fd, data, len);
        if (r < 0)
                goto fail;
        if (fsync(fd) < 0) {
                r = -errno;
                goto fail;
        }
        fd = safe_close(fd);
        if (rename(tmp, path) < 0) {
                r = -errno;
                goto fail;
        }
        return fsync_directory_of(path);
fail:
        (void) unlink(tmp);
        return r;
}

/* Where reading a file whose size says nothing starts. */
#define READ_FILE_CHUNK 4096U

int read_file(const char *path, size_t max_len, char **ret, size_t *ret_len) {
        _cleanup_close_ int fd = -EBADF;
        _cleanup_free_ char *buf = NULL;
        struct stat st;
        size_t len = 0, cap;

        assert(max_len < SIZE_MAX / 2);

        /* O_NONBLOCK: opening a FIFO for reading would wait for a writer. */
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode))
                return -EBADFD;
        if ((uint64_t) st.st_size > max_len)
                return -EFBIG;
        if (fcntl(fd, F_SETFL, 0) < 0)
                return -errno;
        /* The size is only a first guess: files in /proc and /sys report 0 (or a page) whatever
         * they hold, and a file may grow while it is read. What counts is what read() returns
         * up to EOF, one byte past max_len at most. */
        cap = MIN(st.st_size > 0 ? (size_t) st.st_size + 1 : READ_FILE_CHUNK, max_len + 1);
        buf = malloc(cap + 1);
        if (!buf)
                return -ENOMEM;
        for (;;) {
                ssize_t n;

                if (len == cap) {
                        char *p;

                        if (len > max_len)
                                return -EFBIG;
                        cap = MIN(cap * 2, max_len + 1);
                        p = realloc(buf, cap + 1);
                        if (!p)
                                return -ENOMEM;
                        buf = p;
                }
                n = read(fd, buf + len, cap - len);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (n == 0)
                        break;
                len += (size_t) n;
        }
        buf[len] = '\0';
        *ret = TAKE_PTR(buf);
        if (ret_len)
                *ret_len = len;
        return 0;
}

static int mkdir_parents(const char *path) {
        _cleanup_free_ char *copy = strdup(path);
        char *p;

        if (!copy)
                return -ENOMEM;
        for (p = copy + 1; (p = strchr(p, '/')); p++) {
                *p = '\0';
                if (mkdir(copy, 0755) < 0 && errno != EEXIST)
                        return -errno;
                *p = '/';
        }
        return 0;
}

int mkdir_private(const char *path) {
        struct stat st;
        int r;

        if (mkdir(path, 0700) < 0) {
                if (errno == ENOENT) {
                        r = mkdir_parents(path);
                        if (r < 0)
                                return r;
                        if (mkdir(path, 0700) < 0 && errno != EEXIST)
                                return -errno;
                } else if (errno != EEXIST)
                        return -errno;
        }
        if (lstat(path, &st) < 0)
                return -errno;
        if (!S_ISDIR(st.st_mode))
                return -ENOTDIR;
        if (st.st_uid != geteuid() || (st.st_mode & 0077))
                return -EPERM;
        return 0;
}

int check_private_file(const char *path) {
        struct stat st;

        if (stat(path, &st) < 0)
                return -errno;
        if (st.st_mode & 0077)
                return -EPERM;
        return 0;
}

bool file_exists(const char *path) {
        return access(path, F_OK) == 0;
}
