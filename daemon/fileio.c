/* SPDX-License-Identifier: MIT */
#include <fcntl.h>
#include <libgen.h>
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

int fsync_directory_of(const char *path) {
        _cleanup_free_ char *copy = strdup(path);
        _cleanup_close_ int fd = -EBADF;
        struct stat st;
        const char *dir;

        if (!copy)
                return -ENOMEM;
        dir = (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) ? path : dirname(copy);
        fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        if (fsync(fd) < 0)
                return -errno;
        return 0;
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

int read_file(const char *path, size_t max_len, char **ret, size_t *ret_len) {
        _cleanup_close_ int fd = -EBADF;
        _cleanup_free_ char *buf = NULL;
        struct stat st;
        size_t len = 0;

        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode))
                return -EBADFD;
        if ((uint64_t) st.st_size > max_len)
                return -EFBIG;
        buf = malloc((size_t) st.st_size + 1);
        if (!buf)
                return -ENOMEM;
        while (len <= (size_t) st.st_size) {
                ssize_t n = read(fd, buf + len, (size_t) st.st_size + 1 - len);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (n == 0)
                        break;
                len += (size_t) n;
        }
        if (len > (size_t) st.st_size)
                return -EFBIG; /* grew while reading */
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
