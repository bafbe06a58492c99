/* SPDX-License-Identifier: MIT */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz.h"

static char dir_path[256];

static void empty_dir(const char *path, int depth);

char *fuzz_strndup(const uint8_t *data, size_t size) {
        char *s = malloc(size + 1);

        if (!s)
                abort();
        if (size > 0)
                memcpy(s, data, size);
        s[size] = 0;
        return s;
}

static void fuzz_dir_remove(void) {
        fuzz_dir_reset();
        (void) rmdir(dir_path);
}

const char *fuzz_dir(void) {
        const char *base = getenv("LODEV_FUZZ_TMPDIR");

        if (dir_path[0])
                return dir_path;
        /* run-fuzz.sh names a directory it removes after the run, also after a finding. */
        if (!base)
                base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : (getenv("TMPDIR") ?: "/tmp");
        snprintf(dir_path, sizeof(dir_path), "%s/lodev-fuzz-%d", base, (int) getpid());
        if (mkdir(dir_path, 0700) < 0 && errno != EEXIST) {
                perror(dir_path);
                abort();
        }
        atexit(fuzz_dir_remove);
        return dir_path;
}

const char *fuzz_path(const char *name) {
        static char buf[512];

        snprintf(buf, sizeof(buf), "%s/%s", fuzz_dir(), name);
        return buf;
}

static void empty_dir(const char *path, int depth) {
        DIR *d = opendir(path);
        struct dirent *de;

        if (!d)
                return;
        while ((de = readdir(d))) {
                char sub[512];

                if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
                        continue;
                snprintf(sub, sizeof(sub), "%s/%s", path, de->d_name);
                if (unlink(sub) < 0 && errno == EISDIR && depth > 0) {
                        empty_dir(sub, depth - 1);
                        (void) rmdir(sub);
                }
        }
        closedir(d);
}

void fuzz_dir_reset(void) {
        empty_dir(fuzz_dir(), 1);
}

static bool name_ok(const char *s, size_t n) {
        if (n == 0 || n > 64 || (n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.'))
                return false;
        for (size_t i = 0; i < n; i++)
                if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-",
                            s[i]) || s[i] == 0)
                        return false;
        return true;
}

/* The next "==> " that starts a line at or after from, or end. */
static size_t next_header(const uint8_t *data, size_t size, size_t from) {
        for (size_t i = from; i + 4 <= size; i++)
                if ((i == 0 || data[i - 1] == '\n') && memcmp(data + i, "==> ", 4) == 0)
                        return i;
        return size;
}

size_t fuzz_write_image(const char *dir, const uint8_t *data, size_t size) {
        size_t at = next_header(data, size, 0), written = 0;

        while (at < size) {
                const uint8_t *name = data + at + 4, *nl;
                size_t name_len, start, end, next;
                char path[512];
                int fd;

                nl = memchr(name, '\n', size - (at + 4));
                if (!nl)
                        break;
                name_len = (size_t) (nl - name);
                start = (size_t) (nl - data) + 1;
                next = next_header(data, size, start);
                end = next < size ? next - 1 : size; /* the separator's newline */
                if (end < start)
                        end = start;
                at = next;
                if (!name_ok((const char *) name, name_len))
                        continue;
                snprintf(path, sizeof(path), "%s/%.*s", dir, (int) name_len, (const char *) name);
                fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
                if (fd < 0) {
                        perror(path);
                        abort();
                }
                for (size_t off = start; off < end;) {
                        ssize_t k = write(fd, data + off, end - off);

                        if (k <= 0) {
                                perror(path);
                                abort();
                        }
                        off += (size_t) k;
                }
                close(fd);
                written++;
        }
        return written;
}

char *fuzz_read_file(const char *path, size_t *ret_size) {
        struct stat st;
        char *buf;
        int fd;

        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return NULL;
        if (fstat(fd, &st) < 0 || !(buf = malloc((size_t) st.st_size + 1))) {
                close(fd);
                return NULL;
        }
        for (size_t off = 0; off < (size_t) st.st_size;) {
                ssize_t k = read(fd, buf + off, (size_t) st.st_size - off);

                if (k <= 0) {
                        free(buf);
                        close(fd);
                        return NULL;
                }
                off += (size_t) k;
        }
        buf[st.st_size] = 0;
        close(fd);
        if (ret_size)
                *ret_size = (size_t) st.st_size;
        return buf;
}
