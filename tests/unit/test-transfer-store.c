/* SPDX-License-Identifier: MIT */

/* The transfer spool against real files in a temporary directory: copies in small steps,
 * sources that are unlinked, shrink or grow, descriptors that must be refused, the size
 * bounds, commit and recovery after a crash, the checks of names and content types, read
 * errors that must delete nothing, pseudo-files of /proc and /sys, owners, and a full disk. */

#include <dirent.h>
#include <fcntl.h>
#include <pwd.h>
#include <sys/mman.h>
#include <sys/statvfs.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "fileio.h"
#include "tests.h"
#include "transfer-store.h"
#include "util.h"

DEFINE_TRIVIAL_CLEANUP_FUNC(TransferStore *, transfer_store_free);
DEFINE_TRIVIAL_CLEANUP_FUNC(TransferCopy *, transfer_copy_free);

#define MIB (UINT64_C(1024) * 1024)

static char tmpdir[] = "/tmp/test-transfer-store-XXXXXX";
static uint64_t rng_state = 0x5eed1234abcdULL;

static char *path_join(const char *a, const char *b) {
        return strdup_printf("%s/%s", a, b);
}

static int rm_rf(const char *path) {
        DIR *d = opendir(path);
        struct dirent *de;

        if (!d)
                return unlink(path);
        while ((de = readdir(d))) {
                _cleanup_free_ char *p = NULL;

                if (streq(de->d_name, ".") || streq(de->d_name, ".."))
                        continue;
                p = path_join(path, de->d_name);
                rm_rf(p);
        }
        closedir(d);
        return rmdir(path);
}

static unsigned count_entries(const char *dir) {
        DIR *d = opendir(dir);
        struct dirent *de;
        unsigned n = 0;

        if (!d)
                return 0;
        while ((de = readdir(d)))
                if (!streq(de->d_name, ".") && !streq(de->d_name, "..") &&
                    !streq(de->d_name, "reserve"))
                        n++;
        closedir(d);
        return n;
}

static uint8_t *random_bytes(size_t len) {
        uint8_t *b = malloc(len ?: 1);

        for (size_t i = 0; b && i < len; i += 8) {
                uint64_t v = test_rng(&rng_state);

                memcpy(b + i, &v, MIN((size_t) 8, len - i));
        }
        return b;
}

/* A new store directory under tmpdir, removed first if a previous test left one. */
static char *store_dir(const char *name) {
        char *p = path_join(tmpdir, name);

        if (p)
                (void) rm_rf(p);
        return p;
}

/* Writes data to a new file in tmpdir and returns its path. */
static char *make_source(const char *name, const uint8_t *data, size_t len) {
        char *p = path_join(tmpdir, name);

        if (p && write_file_atomic(p, data, len, 0644) < 0) {
                free(p);
                return NULL;
        }
        return p;
}

/* True when the transfer's data file holds exactly data. */
static bool data_equals(TransferStore *s, const char *id, const uint8_t *data, size_t len) {
        _cleanup_close_ int fd = transfer_open_data(s, id);
        _cleanup_free_ uint8_t *buf = malloc(len + 1);
        size_t got = 0;

        if (fd < 0 || !buf)
                return false;
        for (;;) {
                ssize_t n = read(fd, buf + got, len + 1 - got);

                if (n < 0)
                        return false;
                if (n == 0)
                        break;
                got += (size_t) n;
                if (got > len)
                        return false;
        }
        return got == len && (len == 0 || memcmp(buf, data, len) == 0);
}

/* Runs a copy to the end in steps of chunk bytes; returns the number of steps or -errno. */
static int copy_all(TransferCopy *c, uint64_t chunk) {
        int steps = 0, r;

        do {
                r = transfer_copy_step(c, chunk);
                if (r < 0)
                        return r;
                steps++;
        } while (r > 0);
        return steps;
}

static void test_file_names(void) {
        char long_name[TRANSFER_FILE_NAME_MAX + 2];
        const char *bad[] = {"", "a/b", "a\nb", long_name, "caf\xc3", "\x7f", "x\xc2\x85y", ".."};
        const char *reasons[ELEMENTSOF(bad)];
        const char *reason = "unset";

        memset(long_name, 'a', sizeof(long_name));
        long_name[TRANSFER_FILE_NAME_MAX + 1] = '\0'; /* 256 bytes */

        CHECK_INT(transfer_file_name_check("ecg.pdf", &reason), 0);
        CHECK(reason == NULL);
        CHECK_INT(transfer_file_name_check("Blutdruck Übersicht (2).pdf", NULL), 0);
        CHECK_INT(transfer_file_name_check(".hidden", NULL), 0);
        CHECK_INT(transfer_file_name_check("..x", NULL), 0);
        long_name[TRANSFER_FILE_NAME_MAX] = '\0'; /* 255 bytes */
        CHECK_INT(transfer_file_name_check(long_name, NULL), 0);
        long_name[TRANSFER_FILE_NAME_MAX] = 'a';
        CHECK_INT(transfer_file_name_check(NULL, &reason), -EINVAL);
        CHECK_STR(reason, "file name is empty");

        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                reasons[i] = NULL;
                CHECK_INT(transfer_file_name_check(bad[i], &reasons[i]), -EINVAL);
                CHECK(reasons[i] != NULL);
        }
        CHECK_STR(reasons[0], "file name is empty");
        CHECK_STR(reasons[1], "file name contains '/'");
        CHECK_STR(reasons[2], "file name contains a control character");
        CHECK_STR(reasons[3], "file name is longer than 255 bytes");
        CHECK_STR(reasons[4], "file name is not valid UTF-8");
        CHECK_STR(reasons[5], "file name contains a control character");
        CHECK_STR(reasons[6], "file name contains a control character"); /* U+0085 */
        CHECK_STR(reasons[7], "file name is \".\" or \"..\"");
}

static void test_content_types(void) {
        char long_type[TRANSFER_CONTENT_TYPE_MAX + 2];
        const char *reason = "unset";

        memset(long_type, 'a', sizeof(long_type));
        long_type[1] = '/';
        long_type[TRANSFER_CONTENT_TYPE_MAX + 1] = '\0';

        CHECK_INT(transfer_content_type_check("application/pdf", &reason), 0);
        CHECK(reason == NULL);
        CHECK_INT(transfer_content_type_check("application/fhir+json", NULL), 0);
        CHECK_INT(transfer_content_type_check("text/plain; charset=utf-8", NULL), 0);
        CHECK_INT(transfer_content_type_check("application/vnd.ms-excel", NULL), 0);

        CHECK_INT(transfer_content_type_check("", &reason), -EINVAL);
        CHECK_STR(reason, "content type is empty");
        CHECK_INT(transfer_content_type_check(long_type, &reason), -EINVAL);
        CHECK_STR(reason, "content type is longer than 255 bytes");
        CHECK_INT(transfer_content_type_check("text/plain\r\nX-Evil: 1", &reason), -EINVAL);
        CHECK_STR(reason, "content type is not printable ASCII");
        CHECK_INT(transfer_content_type_check("text/pl\xc3\xa4in", &reason), -EINVAL);
        CHECK_STR(reason, "content type is not printable ASCII");
        CHECK_INT(transfer_content_type_check("textplain", &reason), -EINVAL);
        CHECK_STR(reason, "content type is not of the form type/subtype");
        CHECK_INT(transfer_content_type_check("text/", &reason), -EINVAL);
        CHECK_STR(reason, "content type is not of the form type/subtype");
        CHECK_INT(transfer_content_type_check("/plain", &reason), -EINVAL);
        CHECK_INT(transfer_content_type_check("text/plain/x", &reason), -EINVAL);
        CHECK_INT(transfer_content_type_check("text/plain x", &reason), -EINVAL);
        CHECK_INT(transfer_content_type_check("te xt/plain", &reason), -EINVAL);
}

static void test_ids_and_states(void) {
        CHECK(transfer_id_is_valid("0f8fad5b-d9cb-469f-a165-70867728950e"));
        CHECK(!transfer_id_is_valid("0F8FAD5B-D9CB-469F-A165-70867728950E"));
        CHECK(!transfer_id_is_valid("0f8fad5b-d9cb-469f-a165-70867728950"));
        CHECK(!transfer_id_is_valid("0f8fad5b/d9cb-469f-a165-70867728950e"));
        CHECK(!transfer_id_is_valid("../../../../../../../../../etc/passwd"));
        CHECK(!transfer_id_is_valid(NULL));
        CHECK_STR(transfer_state_to_string(TRANSFER_QUEUED), "queued");
        CHECK_STR(transfer_state_to_string(TRANSFER_UPLOADING), "uploading");
        CHECK(transfer_state_to_string(_TRANSFER_STATE_MAX) == NULL);
        CHECK_INT(transfer_state_from_string("uploading"), TRANSFER_UPLOADING);
        CHECK_INT(transfer_state_from_string("done"), _TRANSFER_STATE_INVALID);
}

/* A multi-MiB file copied in small steps, its path unlinked and its descriptor closed by the
 * caller right after begin: the copy holds its own descriptor and finishes intact. */
static void test_copy_in_steps(void) {
        const size_t len = 5 * MIB + 123;
        _cleanup_free_ char *dir = store_dir("steps"), *src_path = NULL;
        _cleanup_free_ uint8_t *data = random_bytes(len);
        _cleanup_(transfer_store_freep) TransferStore *s = NULL;
        _cleanup_(transfer_copy_freep) TransferCopy *c = NULL;
        const Transfer *t = NULL;
        const char *reason = "unset";
        int fd, steps;

        src_path = make_source("steps.src", data, len);
        CHECK(src_path != NULL);
        CHECK_INT(transfer_store_open(dir, 64 * MIB, &s, NULL), 0);
        if (!s || !src_path)
                return;

        fd = open(src_path, O_RDONLY | O_CLOEXEC);
        CHECK(fd >= 0);
        CHECK_INT(transfer_copy_begin(s, fd, "ecg.pdf", "application/pdf", 1000, &c, &reason), 0);
        CHECK(reason == NULL);
        if (!c)
                return;
        CHECK(transfer_id_is_valid(transfer_copy_id(c)));
        CHECK_INT(transfer_copy_size(c), len);
        CHECK_INT(transfer_store_used_bytes(s), len + TRANSFER_OVERHEAD_BYTES);
        CHECK_INT(transfer_store_count(s), 0);
        CHECK_INT(transfer_copy_commit(c, NULL), -EBUSY);

        /* The caller is done with its file. */
        CHECK_INT(close(fd), 0);
        CHECK_INT(unlink(src_path), 0);

        steps = copy_all(c, 64 * 1024);
        CHECK_INT(steps, (int) (len / (64 * 1024)) + 1);
        CHECK_INT(transfer_copy_done(c), len);
        CHECK_INT(transfer_copy_step(c, 4096), 0);
        CHECK_INT(transfer_copy_commit(c, &t), 0);
        CHECK(transfer_copy_error_reason(c) == NULL);
        if (!t)
                return;
        CHECK_STR(t->id, transfer_copy_id(c));
        CHECK_STR(t->file_name, "ecg.pdf");
        CHECK_STR(t->content_type, "application/pdf");
        CHECK_INT(t->size, len);
        CHECK_INT(t->attempts, 0);
        CHECK_INT(t->state, TRANSFER_QUEUED);
        CHECK(t->created_usec > 0);
        CHECK_INT(transfer_store_count(s), 1);
        CHECK(transfer_store_nth(s, 0) == t);
        CHECK(transfer_store_find(s, t->id) == t);
        CHECK_INT(transfer_store_used_bytes(s), len + TRANSFER_OVERHEAD_BYTES);
        CHECK(data_equals(s, t->id, data, len));
        /* A committed copy is only freed, never removed. */
        c = transfer_copy_free(c);
        CHECK_INT(transfer_store_count(s), 1);
        CHECK_INT(count_entries(dir), 2);
}

/* The caller's file offset is neither used nor moved, and a source on another file system
 * (a memfd, which usually makes copy_file_range() fail with EXDEV) is copied as well. */
static void test_offset_and_memfd(void) {
        const size_t len = 3 * MIB + 17;
        _cleanup_free_ char *dir = store_dir("memfd");
        _cleanup_free_ uint8_t *data = random_bytes(len);
        _cleanup_(transfer_store_freep) TransferStore *s = NULL;
        _cleanup_(transfer_copy_freep) TransferCopy *c = NULL;
        _cleanup_close_ int fd = -EBADF;
        const Transfer *t = NULL;

        CHECK_INT(transfer_store_open(dir, 64 * MIB, &s, NULL), 0);
        fd = memfd_create("source", MFD_CLOEXEC);
        CHECK(fd >= 0);
        if (!s || fd < 0)
                return;
        CHECK_INT(write_full(fd, data, len), 0);
        CHECK_INT(lseek(fd, 1000, SEEK_SET), 1000);

        CHECK_INT(transfer_copy_begin(s, fd, "trace.bin", "application/octet-stream", 1000, &c, NULL), 0);
        if (!c)
                return;
        CHECK(copy_all(c, 1 * MIB) > 0);
        CHECK_INT(transfer_copy_commit(c, &t), 0);
        CHECK_INT(lseek(fd, 0, SEEK_CUR), 1000);
        if (t)
                CHECK(data_equals(s, t->id, data, len));
}

static void test_empty_file(void) {
        _cleanup_free_ char *dir = store_dir("empty"), *src = make_source("empty.src", NULL, 0);
        _cleanup_(transfer_store_freep) TransferStore *s = NULL;
        _cleanup_(transfer_copy_freep) TransferCopy *c = NULL;
        _cleanup_close_ int fd = -EBADF;
        const Transfer *t = NULL;

        CHECK_INT(transfer_store_open(dir, MIB, &s, NULL), 0);
        fd = src ? open(src, O_RDONLY | O_CLOEXEC) : -EBADF;
        if (!s || fd < 0)
                return;
        CHECK_INT(transfer_copy_begin(s, fd, "empty.txt", "text/plain", 1000, &c, NULL), 0);
        if (!c)
                return;
        CHECK_INT(transfer_copy_step(c, 4096), 0);
        CHECK_INT(transfer_copy_commit(c, &t), 0);
        CHECK(t && t->size == 0);
        CHECK_INT(transfer_store_used_bytes(s), TRANSFER_OVERHEAD_BYTES);
        if (t)
                CHECK(data_equals(s, t->id, NULL, 0));
}

/* Every kind of descriptor that is not a readable regular file, each with its reason. */
static void test_refused_descriptors(void) {
        _cleanup_free_ char *dir = store_dir("refused"), *fifo = path_join(tmpdir, "fifo");
        _cleanup_free_ char *src = make_source("refused.src", (const uint8_t *) "hello", 5);
        _cleanup_(transfer_store_freep) TransferStore *s = NULL;
        struct {
                const char *what;
                int fd;
                int error;
                const char *reason;
        } cases[7];
        int pair[2] = {-EBADF, -EBADF};
        size_t n = 0;

        CHECK_INT(transfer_store_open(dir, MIB, &s, NULL), 0);
        if (!s || !src || !fifo)
                return;
        CHECK_INT(mkfifo(fifo, 0600), 0);
        CHECK_INT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);

        cases[n++] = (typeof(cases[0])){"directory", open(tmpdir, O_RDONLY | O_DIRECTORY), -EINVAL,
                                        "not a regular file (directory)"};
        cases[n++] = (typeof(cases[0])){"FIFO", open(fifo, O_RDONLY | O_NONBLOCK), -EINVAL,
                                        "not a regular file (FIFO)"};
        cases[n++] = (typeof(cases[0])){"socket", pair[0], -EINVAL, "not a regular file (socket)"};
        cases[n++] = (typeof(cases[0])){"char device", open("/dev/null", O_RDONLY), -EINVAL,
                                        "not a regular file (character device)"};
        cases[n++] = (typeof(cases[0])){"O_WRONLY", open(src, O_WRONLY), -EBADF,
                                        "file descriptor is not open for reading"};
        cases[n++] = (typeof(cases[0])){"O_PATH", open(src, O_PATH), -EBADF,
                                        "file descriptor was opened with O_PATH, not for reading"};
        cases[n++] = (typeof(cases[0])){"closed", 1000, -EBADF, "not an open file descriptor"};

        for (size_t i = 0; i < n; i++) {
                TransferCopy *c = NULL;
                const char *reason = NULL;
                int r;

                r = transfer_copy_begin(s, cases[i].fd, "x.bin", "application/octet-stream", 1000, &c, &reason);
                if (r != cases[i].error || !streq_ptr(reason, cases[i].reason))
                        fprintf(stderr, "%s: %d (%s)\n", cases[i].what, r, strempty(reason));
                CHECK_INT(r, cases[i].error);
                CHECK_STR(reason, cases[i].reason);
                CHECK(c == NULL);
                if (cases[i].fd != 1000)
                        safe_close(cases[i].fd);
        }
        safe_close(pair[1]);
        /* Nothing was created or reserved for any of them. */
        CHECK_INT(count_entries(dir), 0);
        CHECK_INT(transfer_store_used_bytes(s), 0);

        /* Bad names and types are refused before the descriptor is looked at. */
        {
                TransferCopy *c = NULL;
                const char *reason = NULL;

                CHECK_INT(transfer_copy_begin(s, -1, "a/b", "text/plain", 1000, &c, &reason), -EINVAL);
                CHECK_STR(reason, "file name contains '/'");
                CHECK_INT(transfer_copy_begin(s, -1, "a.txt", "text", 1000, &c, &reason), -EINVAL);
                CHECK_STR(reason, "content type is not of the form type/subtype");
        }
}

static void test_too_large(void) {
        _cleanup_free_ char *dir = store_dir("large"), *src = path_join(tmpdir, "large.src");
        _cleanup_(transfer_store_freep) TransferStore *s = NULL;
        _cleanup_close_ int fd = -EBADF;
        TransferCopy *c = NULL;
        const char *reason = NULL;

        /* A budget far above 5 GiB, so that only the upload limit applies. */
        CHECK_INT(transfer_store_open(dir, 100 * TRANSFER_SIZE_MAX, &s, NULL), 0);
        fd = src ? open(src, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600) : -EBADF;
        CHECK(fd >= 0);
        if (!s || fd < 0)
                return;
        /* Sparse: no disk space is used. */
        CHECK_INT(ftruncate(fd, (off_t) TRANSFER_SIZE_MAX + 1), 0);
        CHECK_INT(transfer_copy_begin(s, fd, "big.bin", "application/octet-stream", 1000, &c, &reason),
                  -EFBIG);
        CHECK_STR(reason, "file is larger than 5 GiB, the most one upload can carry");
        CHECK(c == NULL);
        CHECK_INT(count_entries(dir), 0);
        s = transfer_store_free(s);

        /* Larger than the whole budget: it can never fit, so it is not "full". */
        CHECK_INT(transfer_store_open(dir, MIB, &s, NULL), 0);
        CHECK_INT(ftruncate(fd, (off_t) MIB), 0);
        CHECK_INT(transfer_copy_begin(s, fd, "big.bin", "application/octet-stream", 1000, &c, &reason),
                  -E2BIG);
        CHECK_STR(reason, "file is larger than the transfer queue (transfers.max_bytes)");
        CHECK(c == NULL);
        CHECK_INT(count_entries(dir), 0);
}

/* Copies in progress count against the budget as much as committed transfers. */
static void test_budget(void) {
        const size_t len = 600 * 1024;
        _cleanup_free_ char *dir = store_dir("budget");
        _cleanup_free_ uint8_t *data = random_bytes(len);
        _cleanup_free_ char *src = make_source("budget.src", data, len);
        _cleanup_(transfer_store_freep) TransferStore *s = NULL;
        _cleanup_close_ int fd = -EBADF;
        TransferCopy *a = NULL, *b = NULL;
        const Transfer *t = NULL;
        const char *reason = NULL;
        char id[TRANSFER_ID_LEN + 1] = "";

        CHECK_INT(transfer_store_open(dir, MIB, &s, NULL), 0);
        fd = src ? open(src, O_RDONLY | O_CLOEXEC) : -EBADF;
        if (!s || fd < 0)
                return;

        CHECK_INT(transfer_copy_begin(s, fd, "a.bin", "application/octet-stream", 1000, &a, NULL), 0);
        CHECK_INT(transfer_copy_begin(s, fd, "b.bin", "application/octet-stream", 1000, &b, &reason),
                  -EDQUOT);
        CHECK_STR(reason, "the transfer queue is full, try again after uploads finish");
        CHECK(b == NULL);

        /* Abandoning the first copy gives its room back. */
        a = transfer_copy_free(a);
        CHECK_INT(transfer_store_used_bytes(s), 0);
        CHECK_INT(transfer_copy_begin(s, fd, "b.bin", "application/octet-stream", 1000, &b, NULL), 0);
        if (!b)
                return;
        CHECK(copy_all(b, 100 * 1024) > 0);
        CHECK_INT(transfer_copy_commit(b, &t), 0);
        b = transfer_copy_free(b);
        if (!t)
                return;
        memcpy(id, t->id, sizeof(id));

        /* Committed transfers hold their room until removed. */
        CHECK_INT(transfer_copy_begin(s, fd, "c.bin", "application/octet-stream", 1000, &a, &reason),
                  -EDQUOT);
        CHECK_INT(transfer_store_remove(s, id), 0);
        CHECK_INT(transfer_store_count(s), 0);
        CHECK_INT(transfer_store_used_bytes(s), 0);
        CHECK_INT(count_entries(dir), 0);
        CHECK_INT(transfer_store_remove(s, id), -ENOENT);
        CHECK_INT(transfer_store_remove(s, "../steps"), -ENOENT);
        CHECK_INT(transfer_open_data(s, id), -ENOENT);
        CHECK_INT(transfer_copy_begin(s, fd, "c.bin", "application/octet-stream", 1000, &a, NULL), 0);
        a = transfer_copy_free(a);
}

/* Abandoning a copy half-way leaves nothing behind. */
static void test_abort(void) {
        const size_t len = 2 * MIB;
        _cleanup_free_ char *dir = store_dir("abort");
        _cleanup_free_ uint8_t *data = random_bytes(len);
        _cleanup_free_ char *src = make_source("abort.src", data, len);
        _cleanup_(transfer_store_freep) TransferStore *s = NULL;
        _cleanup_close_ int fd = -EBADF;
        TransferCopy *c = NULL;

        CHECK_INT(transfer_store_open(dir, 64 * MIB, &s, NULL), 0);
        fd = src ? open(src, O_RDONLY | O_CLOEXEC) : -EBADF;
        if (!s || fd < 0)
                return;
        CHECK_INT(transfer_copy_begin(s, fd, "a.bin", "application/octet-stream", 1000, &c, NULL), 0);
        CHECK_INT(transfer_copy_step(c, 256 * 1024), 1);
        CHECK_INT(count_entries(dir), 1);
        c = transfer_copy_free(c);
        CHECK_INT(count_entries(dir), 0);
        CHECK_INT(transfer_store_used_bytes(s), 0);
        CHECK_INT(transfer_store_count(s), 0);
}

/* A store freed under a copy in progress removes its file; the copy fails and is freed. */
static void test_store_freed_first(void) {
        _cleanup_free_ char *dir = store_dir("detach");
        _cleanup_free_ char *src = make_source("detach.src", (const uint8_t *) "abcdef", 6);
        _cleanup_close_ int fd = -EBADF;
        TransferStore *s = NULL;
        TransferCopy *c = NULL;

        CHECK_INT(transfer_store_open(dir, MIB, &s, NULL), 0);
        fd = src ? open(src, O_RDONLY | O_CLOEXEC) : -EBADF;
        if (!s || fd < 0)
                return;
        CHECK_INT(transfer_copy_begin(s, fd, "a.bin", "application/octet-stream", 1000, &c, NULL), 0);
        s = transfer_store_free(s);
        CHECK_INT(count_entries(dir), 0);
        CHECK_INT(transfer_copy_step(c, 4096), -ESTALE);
        CHECK_INT(transfer_copy_commit(c, NULL), -ESTALE);
        c = transfer_copy_free(c);
}

/* A source that shrinks while it is copied fails; one that grows is copied as it was. */
static void test_shrink_and_grow(void) {
        const size_t len = MIB;
        _cleanup_free_ char *dir = store_dir("shrink");
        _cleanup_free_ uint8_t *data = random_bytes(len);
        _cleanup_free_ char *src = make_source("shrink.src", data, len);
        _cleanup_(transfer_store_freep) TransferStore *s = NULL;
        _cleanup_close_ int fd = -EBADF;
        TransferCopy *c = NULL;
        const Transfer *t = NULL;
        int r;

        CHECK_INT(transfer_store_open(dir, 64 * MIB, &s, NULL), 0);
        fd = src ? open(src, O_RDWR | O_CLOEXEC) : -EBADF;
        if (!s || fd < 0)
                return;

        CHECK_INT(transfer_copy_begin(s, fd, "a.bin", "application/octet-stream", 1000, &c, NULL), 0);
        CHECK_INT(transfer_copy_step(c, 64 * 1024), 1);
        CHECK_INT(ftruncate(fd, 100 * 1024), 0);
        r = copy_all(c, 64 * 1024);
        CHECK_INT(r, -ENODATA);
        CHECK_STR(transfer_copy_error_reason(c), "the file shrank while it was being copied");
        /* The error sticks. */
        CHECK_INT(transfer_copy_step(c, 64 * 1024), -ENODATA);
        CHECK_INT(transfer_copy_commit(c, NULL), -ENODATA);
        c = transfer_copy_free(c);
        CHECK_INT(count_entries(dir), 0);

        /* Grows: back to the full size, then more appended after begin. */
        CHECK_INT(pwrite(fd, data, len, 0), (ssize_t) len);
        CHECK_INT(transfer_copy_begin(s, fd, "a.bin", "application/octet-stream", 1000, &c, NULL), 0);
        CHECK_INT(transfer_copy_step(c, 64 * 1024), 1);
        CHECK_INT(pwrite(fd, "more", 4, (off_t) len), 4);
        CHECK(copy_all(c, 64 * 1024) > 0);
        CHECK_INT(transfer_copy_commit(c, &t), 0);
        c = transfer_copy_free(c);
        CHECK(t && t->size == len);
        if (t)
                CHECK(data_equals(s, t->id, data, len));
}

/* Commits three transfers, restarts, and finds them again in order with their metadata;
 * the upload attempt count survives, the uploading state does not. */
static void test_reopen(void) {
        const char *names[] = {"first.pdf", "zweite Datei.txt", "third"};
        const char *types[] = {"application/pdf", "text/plain; charset=utf-8",
                               "application/octet-stream"};
        const size_t sizes[] = {1000, 70000, 0};
        _cleanup_free_ char *dir = store_dir("reopen");
        _cleanup_free_ uint8_t *data = random_bytes(70000);
        _cleanup_free_ char *src = make_source("reopen.src", data, 70000);
        char ids[3][TRANSFER_ID_LEN + 1];
        uint64_t created[3];
        TransferStore *s = NULL;
        const TransferStoreIssue *issues;
        const Transfer *t;

        CHECK_INT(transfer_store_open(dir, 64 * MIB, &s, NULL), 0);
        if (!s || !src)
                return;
        for (size_t i = 0; i < 3; i++) {
                _cleanup_(transfer_copy_freep) TransferCopy *c = NULL;
                _cleanup_close_ int fd = open(src, O_RDWR | O_CLOEXEC);

                CHECK_INT(ftruncate(fd, (off_t) sizes[i]), 0);
                CHECK_INT(transfer_copy_begin(s, fd, names[i], types[i], 1000, &c, NULL), 0);
                CHECK(copy_all(c, 8192) > 0);
                t = NULL;
                CHECK_INT(transfer_copy_commit(c, &t), 0);
                if (!t)
                        return;
                memcpy(ids[i], t->id, sizeof(ids[i]));
                created[i] = t->created_usec;
                CHECK_INT(pwrite(fd, data, 70000, 0), 70000);
        }
        CHECK_INT(transfer_store_mark_uploading(s, ids[1]), 0);
        CHECK_INT(transfer_store_find(s, ids[1])->state, TRANSFER_UPLOADING);
        CHECK_INT(transfer_store_find(s, ids[1])->attempts, 1);
        CHECK_INT(transfer_store_mark_queued(s, ids[1]), 0);
        CHECK_INT(transfer_store_mark_uploading(s, ids[1]), 0);
        CHECK_INT(transfer_store_mark_uploading(s, "nope"), -ENOENT);
        CHECK_INT(transfer_store_mark_queued(s, "nope"), -ENOENT);

        /* Another process cannot open the same spool. */
        {
                TransferStore *other = NULL;

                CHECK_INT(transfer_store_open(dir, 64 * MIB, &other, NULL), -EBUSY);
                CHECK(other == NULL);
        }

        s = transfer_store_free(s);
        CHECK_INT(transfer_store_open(dir, 64 * MIB, &s, NULL), 0);
        if (!s)
                return;
        CHECK_INT(transfer_store_issues(s, &issues), 0);
        CHECK_INT(transfer_store_count(s), 3);
        CHECK_INT(transfer_store_used_bytes(s), 71000 + 3 * TRANSFER_OVERHEAD_BYTES);
        for (size_t i = 0; i < 3; i++) {
                t = transfer_store_nth(s, i);
                CHECK(t != NULL);
                if (!t)
                        continue;
                CHECK_STR(t->id, ids[i]);
                CHECK_STR(t->file_name, names[i]);
                CHECK_STR(t->content_type, types[i]);
                CHECK_INT(t->size, sizes[i]);
                CHECK_INT(t->created_usec, created[i]);
                CHECK_INT(t->attempts, i == 1 ? 2 : 0);
                CHECK_INT(t->state, TRANSFER_QUEUED);
                CHECK(data_equals(s, t->id, data, sizes[i]));
                if (i > 0)
                        CHECK(t->seq > transfer_store_nth(s, i - 1)->seq);
        }
        CHECK(transfer_store_nth(s, 3) == NULL);

        /* New transfers go after the recovered ones. */
        {
                _cleanup_(transfer_copy_freep) TransferCopy *c = NULL;
                _cleanup_close_ int fd = open(src, O_RDONLY | O_CLOEXEC);

                CHECK_INT(transfer_copy_begin(s, fd, "fourth", "text/plain", 1000, &c, NULL), 0);
                CHECK(copy_all(c, MIB) > 0);
                CHECK_INT(transfer_copy_commit(c, &t), 0);
                CHECK(t == transfer_store_nth(s, 3));
                CHECK(t->seq > transfer_store_nth(s, 2)->seq);
        }
        /* Removing from the middle keeps the order. */
        CHECK_INT(transfer_store_remove(s, ids[1]), 0);
        CHECK_STR(transfer_store_nth(s, 1)->id, ids[2]);
        s = transfer_store_free(s);
}

/* A process killed in the middle of a copy leaves a data file without metadata, and maybe a
 * metadata temp file: both are deleted at the next open and reported as routine. */
static void test_crash_during_copy(void) {
        const size_t len = MIB;
        _cleanup_free_ char *dir = store_dir("crash");
        _cleanup_free_ uint8_t *data = random_bytes(len);
        _cleanup_free_ char *src = make_source("crash.src", data, len);
        _cleanup_free_ char *tmp = NULL;
        _cleanup_(transfer_store_freep) TransferStore *s = NULL;
        const TransferStoreIssue *issues = NULL;
        size_t n;
        pid_t pid;
        int status = -1;

        if (!src)
                return;
        pid = fork();
        if (pid == 0) {
                TransferStore *cs = NULL;
                TransferCopy *c = NULL;
                int fd = open(src, O_RDONLY | O_CLOEXEC);

                if (transfer_store_open(dir, 64 * MIB, &cs, NULL) < 0 ||
                    transfer_copy_begin(cs, fd, "a.bin", "application/octet-stream", 1000, &c, NULL) <
                            0 ||
                    transfer_copy_step(c, 64 * 1024) != 1)
                        _exit(1);
                _exit(0); /* as SIGKILL would: no clean-up */
        }
        CHECK(pid > 0);
        CHECK_INT(waitpid(pid, &status, 0), pid);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        CHECK_INT(count_entries(dir), 1);

        tmp = strdup_printf("%s/0f8fad5b-d9cb-469f-a165-70867728950e.json.tmp.4242", dir);
        CHECK_INT(write_file_atomic(tmp, "{", 1, 0600), 0);

        CHECK_INT(transfer_store_open(dir, 64 * MIB, &s, NULL), 0);
        if (!s)
                return;
        CHECK_INT(transfer_store_count(s), 0);
        CHECK_INT(transfer_store_used_bytes(s), 0);
        CHECK_INT(count_entries(dir), 0);
        n = transfer_store_issues(s, &issues);
        CHECK_INT(n, 2);
        for (size_t i = 0; i < n; i++) {
                CHECK(!issues[i].lost);
                if (strstr(issues[i].file, ".json.tmp."))
                        CHECK_STR(issues[i].message, "temporary file, deleted");
                else
                        CHECK_STR(issues[i].message, "copy never committed, deleted");
        }
}

static const TransferStoreIssue *find_issue(const TransferStoreIssue *issues, size_t n,
                                            const char *file) {
        for (size_t i = 0; i < n; i++)
                if (streq(issues[i].file, file))
                        return &issues[i];
        return NULL;
}

/* Transfers whose metadata is broken or disagrees with the data are deleted and reported as
 * lost; files the store does not know are left alone. */
static void test_corrupt_metadata(void) {
        _cleanup_free_ char *dir = store_dir("corrupt");
        _cleanup_free_ uint8_t *data = random_bytes(5000);
        _cleanup_free_ char *src = make_source("corrupt.src", data, 5000);
        _cleanup_(transfer_store_freep) TransferStore *s = NULL;
        const TransferStoreIssue *issues = NULL, *i;
        char ids[5][TRANSFER_ID_LEN + 1];
        size_t n;

        CHECK_INT(transfer_store_open(dir, 64 * MIB, &s, NULL), 0);
        if (!s || !src)
                return;
        for (size_t k = 0; k < 5; k++) {
                _cleanup_(transfer_copy_freep) TransferCopy *c = NULL;
                _cleanup_close_ int fd = open(src, O_RDONLY | O_CLOEXEC);
                const Transfer *t = NULL;

                CHECK_INT(transfer_copy_begin(s, fd, "f.bin", "application/octet-stream", 1000, &c, NULL),
                          0);
                CHECK(copy_all(c, MIB) > 0);
                CHECK_INT(transfer_copy_commit(c, &t), 0);
                if (!t)
                        return;
                memcpy(ids[k], t->id, sizeof(ids[k]));
        }
        s = transfer_store_free(s);

        {
                _cleanup_free_ char *json0 = strdup_printf("%s/%s.json", dir, ids[0]);
                _cleanup_free_ char *data1 = strdup_printf("%s/%s.data", dir, ids[1]);
                _cleanup_free_ char *data2 = strdup_printf("%s/%s.data", dir, ids[2]);
                _cleanup_free_ char *json3 = strdup_printf("%s/%s.json", dir, ids[3]);
                _cleanup_free_ char *unknown = strdup_printf("%s/README", dir);
                _cleanup_free_ char *subdir = strdup_printf("%s/lost+found", dir);
                _cleanup_free_ char *text = NULL;
                char *p;

                /* 0: not JSON. 1: data cut short. 2: data missing. 3: a valid-looking record
                 * with an invalid file name. 4: intact. */
                CHECK_INT(write_file_atomic(json0, "{\"id\":", 6, 0600), 0);
                CHECK_INT(truncate(data1, 4000), 0);
                CHECK_INT(unlink(data2), 0);
                CHECK_INT(read_file(json3, 4096, &text, NULL), 0);
                p = text ? strstr(text, "f.bin") : NULL;
                CHECK(p != NULL);
                if (p)
                        *p = '/';
                CHECK_INT(write_file_atomic(json3, text, strlen(strempty(text)), 0600), 0);
                CHECK_INT(write_file_atomic(unknown, "hi", 2, 0600), 0);
                CHECK_INT(mkdir(subdir, 0700), 0);
        }

        CHECK_INT(transfer_store_open(dir, 64 * MIB, &s, NULL), 0);
        if (!s)
                return;
        CHECK_INT(transfer_store_count(s), 1);
        CHECK(transfer_store_nth(s, 0) && streq(transfer_store_nth(s, 0)->id, ids[4]));
        CHECK_INT(transfer_store_used_bytes(s), 5000 + TRANSFER_OVERHEAD_BYTES);

        n = transfer_store_issues(s, &issues);
        CHECK_INT(n, 6);
        for (size_t k = 0; k < 4; k++) {
                _cleanup_free_ char *json = strdup_printf("%s.json", ids[k]);

                i = find_issue(issues, n, json);
                CHECK(i != NULL);
                if (!i)
                        continue;
                CHECK(i->lost);
                CHECK(strstr(i->message, ids[k]) != NULL);
        }
        i = find_issue(issues, n, "README");
        CHECK(i && !i->lost && streq(i->message, "unknown file, left alone"));
        i = find_issue(issues, n, "lost+found");
        CHECK(i && !i->lost && streq(i->message, "not a regular file, left alone"));
        for (size_t k = 0; k < n; k++)
                printf("# %s: %s\n", issues[k].file, issues[k].message);

        /* Only the intact transfer and the unknown entries remain. */
        CHECK_INT(count_entries(dir), 4);
}

/* Commits one transfer of len random bytes from src into s for uid; its id in ret_id. */
static void commit_one(TransferStore *s, const char *src, uid_t uid, char ret_id[static 37]) {
        _cleanup_(transfer_copy_freep) TransferCopy *c = NULL;
        _cleanup_close_ int fd = open(src, O_RDONLY | O_CLOEXEC);
        const Transfer *t = NULL;

        ret_id[0] = '\0';
        CHECK_INT(transfer_copy_begin(s, fd, "f.bin", "application/octet-stream", uid, &c, NULL),
                  0);
        if (!c)
                return;
        CHECK(copy_all(c, MIB) >= 0);
        CHECK_INT(transfer_copy_commit(c, &t), 0);
        if (t)
                memcpy(ret_id, t->id, TRANSFER_ID_LEN + 1);
}

/* Opens the store as user nobody in a child: its result, and the file named as unreadable. */
static int open_as_nobody(const char *dir, size_t *ret_count, char *failed, size_t failed_size) {
        struct passwd *pw = getpwnam("nobody");
        int pipefd[2], status;
        struct {
                int r;
                size_t count;
                char failed[128];
        } out = {};
        pid_t pid;

        if (!pw || pipe2(pipefd, O_CLOEXEC) < 0)
                return -ENOENT;
        pid = fork();
        if (pid == 0) {
                TransferStore *s = NULL;
                char *f = NULL;

                if (setgid(pw->pw_gid) < 0 || setuid(pw->pw_uid) < 0)
                        _exit(2);
                out.r = transfer_store_open(dir, 64 * MIB, &s, &f);
                out.count = s ? transfer_store_count(s) : 0;
                snprintf(out.failed, sizeof(out.failed), "%s", strempty(f));
                transfer_store_free(s);
                (void) !write(pipefd[1], &out, sizeof(out));
                _exit(0);
        }
        close(pipefd[1]);
        CHECK_INT(read(pipefd[0], &out, sizeof(out)), sizeof(out));
        close(pipefd[0]);
        CHECK_INT(waitpid(pid, &status, 0), pid);
        *ret_count = out.count;
        snprintf(failed, failed_size, "%s", out.failed);
        return out.r;
}

/* A read error proves nothing about a transfer: the open fails, names the file, and every file
 * stays; once the file can be read, the transfer is there. The case of issue 14: a state
 * directory once touched by root and then read by lodevd's own user (EACCES). */
static void test_read_errors_delete_nothing(void) {
        _cleanup_free_ char *parent = path_join(tmpdir, "as-nobody"), *dir = NULL,
                             *json = NULL, *data_path = NULL;
        _cleanup_free_ uint8_t *data = random_bytes(3000);
        _cleanup_free_ char *src = make_source("nobody.src", data, 3000);
        _cleanup_(transfer_store_freep) TransferStore *s = NULL;
        struct passwd *pw = getpwnam("nobody");
        char id[TRANSFER_ID_LEN + 1], failed[128];
        size_t count = 0;
        unsigned entries;

        if (geteuid() != 0 || !pw) {
                TEST_SKIP("test_read_errors_delete_nothing", -EPERM);
                return;
        }
        (void) rm_rf(parent);
        CHECK_INT(mkdir(parent, 0755), 0);
        CHECK_INT(chmod(tmpdir, 0755), 0);
        dir = path_join(parent, "transfers");
        CHECK_INT(transfer_store_open(dir, 64 * MIB, &s, NULL), 0);
        if (!s || !src)
                return;
        commit_one(s, src, pw->pw_uid, id);
        s = transfer_store_free(s);
        json = strdup_printf("%s/%s.json", dir, id);
        data_path = strdup_printf("%s/%s.data", dir, id);

        /* The directory and the data are nobody's, the metadata still root's (0600). */
        CHECK_INT(chown(dir, pw->pw_uid, pw->pw_gid), 0);
        CHECK_INT(chown(data_path, pw->pw_uid, pw->pw_gid), 0);
        {
                _cleanup_free_ char *reserve = path_join(dir, "reserve");

                (void) chown(reserve, pw->pw_uid, pw->pw_gid);
        }
        entries = count_entries(dir);
        CHECK_INT(open_as_nobody(dir, &count, failed, sizeof(failed)), -EACCES);
        CHECK(strstr(failed, id) != NULL);
        CHECK_INT(count_entries(dir), entries);
        CHECK(file_exists(json) && file_exists(data_path));

        /* The owner fixed: the transfer loads, with its owner. */
        CHECK_INT(chown(json, pw->pw_uid, pw->pw_gid), 0);
        CHECK_INT(open_as_nobody(dir, &count, failed, sizeof(failed)), 0);
        CHECK_INT(count, 1);
        CHECK_INT(chmod(tmpdir, 0700), 0);
        (void) rm_rf(parent);
}

/* Who spooled a transfer is kept across a restart; a record from before owners were kept
 * loads as owned by nobody in particular (only root may cancel it). */
static void test_owner(void) {
        _cleanup_free_ char *dir = store_dir("owner");
        _cleanup_free_ uint8_t *data = random_bytes(100);
        _cleanup_free_ char *src = make_source("owner.src", data, 100);
        _cleanup_(transfer_store_freep) TransferStore *s = NULL;
        _cleanup_free_ char *json = NULL, *text = NULL;
        char id[TRANSFER_ID_LEN + 1];
        const Transfer *t;
        char *p;

        CHECK_INT(transfer_store_open(dir, 64 * MIB, &s, NULL), 0);
        if (!s || !src)
                return;
        commit_one(s, src, 4242, id);
        s = transfer_store_free(s);
        CHECK_INT(transfer_store_open(dir, 64 * MIB, &s, NULL), 0);
        t = s ? transfer_store_find(s, id) : NULL;
        CHECK(t && t->uid == 4242);
        s = transfer_store_free(s);

        json = strdup_printf("%s/%s.json", dir, id);
        CHECK_INT(read_file(json, 4096, &text, NULL), 0);
        p = text ? strstr(text, ",\"uid\":4242") : NULL;
        CHECK(p != NULL);
        if (!p)
                return;
        memmove(p, p + strlen(",\"uid\":4242"), strlen(p + strlen(",\"uid\":4242")) + 1);
        CHECK_INT(write_file_atomic(json, text, strlen(text), 0600), 0);
        CHECK_INT(transfer_store_open(dir, 64 * MIB, &s, NULL), 0);
        t = s ? transfer_store_find(s, id) : NULL;
        CHECK(t && t->uid == TRANSFER_UID_UNKNOWN);
}

/* /proc and /sys files are read to their end, whatever stat() says of their size. */
static void test_pseudo_files(void) {
        static const char *const sysfs[] = { "/sys/kernel/uevent_seqnum", "/sys/kernel/osrelease",
                                             "/sys/class/net/lo/address" };
        _cleanup_free_ char *dir = store_dir("pseudo");
        _cleanup_(transfer_store_freep) TransferStore *s = NULL;
        const char *reason = NULL;
        const char *sys_path = NULL;

        CHECK_INT(transfer_store_open(dir, 64 * MIB, &s, NULL), 0);
        if (!s)
                return;
        for (size_t i = 0; i < ELEMENTSOF(sysfs) && !sys_path; i++)
                if (access(sysfs[i], R_OK) == 0)
                        sys_path = sysfs[i];

        for (unsigned k = 0; k < 3; k++) {
                const char *path = k == 0 ? "/proc/self/status" : k == 1 ? "/proc/version"
                                                                         : sys_path;
                _cleanup_(transfer_copy_freep) TransferCopy *c = NULL;
                _cleanup_close_ int fd = path ? open(path, O_RDONLY | O_CLOEXEC) : -EBADF;
                const Transfer *t = NULL;
                struct stat st;

                if (!path) {
                        TEST_SKIP("test_pseudo_files: no readable sysfs file", -ENOENT);
                        continue;
                }
                CHECK(fd >= 0);
                CHECK_INT(fstat(fd, &st), 0);
                CHECK((uint64_t) st.st_size == 0 || (uint64_t) st.st_size == 4096);
                CHECK_INT(transfer_copy_begin(s, fd, "pseudo.txt", "text/plain", 0, &c, &reason),
                          0);
                if (!c)
                        continue;
                CHECK(copy_all(c, 7) > 0); /* small steps: reads resume at their offset */
                CHECK_INT(transfer_copy_commit(c, &t), 0);
                if (!t)
                        continue;
                CHECK(t->size > 0);
                CHECK(t->size < 64 * 1024);
                /* The content of a stable file, byte for byte. */
                if (k > 0) {
                        int f = open(path, O_RDONLY | O_CLOEXEC);
                        char buf[65536];
                        ssize_t n = read(f, buf, sizeof(buf));

                        CHECK(n > 0);
                        close(f);
                        if (n > 0 && !strstr(path, "seqnum"))
                                CHECK(data_equals(s, t->id, (const uint8_t *) buf, (size_t) n));
                } else {
                        _cleanup_close_ int d = transfer_open_data(s, t->id);
                        char head[5] = "";

                        CHECK_INT(read(d, head, 5), 5);
                        CHECK(memcmp(head, "Name:", 5) == 0);
                }
        }

        /* Larger than what lodevd reads from such a file: refused with the reason. */
        {
                _cleanup_(transfer_copy_freep) TransferCopy *c = NULL;
                _cleanup_close_ int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
                uint64_t used = transfer_store_used_bytes(s);

                CHECK(fd >= 0);
                CHECK_INT(transfer_copy_begin(s, fd, "pagemap", "application/octet-stream", 0, &c,
                                              NULL),
                          0);
                CHECK_INT(transfer_store_used_bytes(s),
                          used + TRANSFER_PSEUDO_FILE_MAX + TRANSFER_OVERHEAD_BYTES);
                CHECK_INT(copy_all(c, 4 * MIB), -EFBIG);
                CHECK(transfer_copy_error_reason(c) &&
                      strstr(transfer_copy_error_reason(c), "16 MiB"));
                c = transfer_copy_free(c);
                CHECK_INT(transfer_store_used_bytes(s), used);
        }
}

/* A full file system, not the budget: refused with -ENOSPC before anything is taken; and an
 * upload attempt starts on a full disk, since the upload is what frees it. */
static void test_disk_full(void) {
        _cleanup_free_ char *mnt = path_join(tmpdir, "small-fs"), *dir = NULL;
        _cleanup_free_ uint8_t *data = random_bytes(400 * 1024);
        _cleanup_free_ char *src = make_source("full.src", data, 400 * 1024);
        _cleanup_(transfer_store_freep) TransferStore *s = NULL;
        _cleanup_(transfer_copy_freep) TransferCopy *c = NULL;
        _cleanup_close_ int fd = -EBADF;
        const char *reason = NULL;
        char id[TRANSFER_ID_LEN + 1];
        int r;

        CHECK_INT(mkdir(mnt, 0700), 0);
        r = test_mount_tmpfs(mnt, "1m");
        if (r < 0) {
                TEST_SKIP("test_disk_full", r);
                return;
        }
        dir = path_join(mnt, "transfers");
        CHECK_INT(transfer_store_open(dir, 64 * MIB, &s, NULL), 0);
        if (!s || !src)
                return;
        commit_one(s, src, 0, id);
        commit_one(s, src, 0, id);

        /* 400 KiB more do not fit in what is left: NoSpace, not QueueFull. */
        fd = open(src, O_RDONLY | O_CLOEXEC);
        CHECK_INT(transfer_copy_begin(s, fd, "x.bin", "application/octet-stream", 0, &c, &reason),
                  -ENOSPC);
        CHECK_STR(reason, "not enough free disk space for the file");
        CHECK(!c);

        /* Another file takes every block left. */
        test_fill_disk(mnt);
        {
                struct statvfs sv;

                CHECK_INT(statvfs(mnt, &sv), 0);
                CHECK(sv.f_bavail == 0);
        }
        /* Recording the attempt takes the reserve; the upload may start. */
        CHECK(transfer_store_mark_uploading(s, id) >= 0);
        CHECK_INT(transfer_store_nth(s, 1)->attempts, 1);
        CHECK_INT(transfer_store_mark_queued(s, id), 0);
        /* And again with no reserve at all: counted in memory, the upload goes ahead. */
        CHECK(transfer_store_mark_uploading(s, id) >= 0);
        CHECK_INT(transfer_store_nth(s, 1)->attempts, 2);
        CHECK_INT(transfer_copy_begin(s, fd, "x.bin", "application/octet-stream", 0, &c, &reason),
                  -ENOSPC);
        /* The upload done, its removal needs no space. */
        CHECK_INT(transfer_store_remove(s, id), 0);
        s = transfer_store_free(s);
        CHECK_INT(umount2(mnt, MNT_DETACH), 0);
}

int main(void) {
        if (!mkdtemp(tmpdir)) {
                perror("mkdtemp");
                return 1;
        }

        test_file_names();
        test_content_types();
        test_ids_and_states();
        test_copy_in_steps();
        test_offset_and_memfd();
        test_empty_file();
        test_refused_descriptors();
        test_too_large();
        test_budget();
        test_abort();
        test_store_freed_first();
        test_shrink_and_grow();
        test_reopen();
        test_crash_during_copy();
        test_corrupt_metadata();
        test_owner();
        test_pseudo_files();
        test_read_errors_delete_nothing();
        test_disk_full();

        (void) rm_rf(tmpdir);
        return TESTS_DONE();
}
