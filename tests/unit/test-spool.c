/* SPDX-License-Identifier: MIT */

/* The spool against real files in a temporary directory: round trips, reopen, out-of-order
 * acks, the size bound, torn and corrupt tails, damage in the middle of a segment, failing
 * fdatasync() and fsync(), SIGKILL at arbitrary points, and a rough throughput figure. */

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/statvfs.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>

#include "crc32c.h"
#include "spool.h"
#include "tests.h"
#include "util.h"

DEFINE_TRIVIAL_CLEANUP_FUNC(Spool *, spool_free);

static char tmpdir[] = "/tmp/test-spool-XXXXXX";

/* Payload for counter n: "n:" then a pattern of n-dependent length and content, so that a
 * payload checks itself and names the counter it was made for. */
static size_t payload_make(uint64_t n, char *buf, size_t size) {
        int k = snprintf(buf, size, "%" PRIu64 ":", n);
        size_t len = (size_t) k + (size_t) (n * 7919 % 173);

        for (size_t i = (size_t) k; i < len && i < size; i++)
                buf[i] = (char) ('a' + (n + i) % 26);
        return MIN(len, size);
}

/* Returns the counter inside a payload, or UINT64_MAX when the payload is not intact. */
static uint64_t payload_check(const void *data, size_t len) {
        char expect[512];
        uint64_t n;
        char *end;

        if (len == 0 || len >= sizeof(expect) || !memchr(data, ':', len))
                return UINT64_MAX;
        memcpy(expect, data, len);
        expect[len] = 0;
        n = strtoull(expect, &end, 10);
        if (*end != ':')
                return UINT64_MAX;
        if (payload_make(n, expect, sizeof(expect)) != len || memcmp(expect, data, len) != 0)
                return UINT64_MAX;
        return n;
}

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

/* Path of the segment file with the highest name, the one written last. */
static char *last_segment(const char *dir) {
        DIR *d = opendir(dir);
        struct dirent *de;
        char best[64] = "";

        if (!d)
                return NULL;
        while ((de = readdir(d)))
                if (strlen(de->d_name) == 20 && streq(de->d_name + 16, ".seg") &&
                    strcmp(de->d_name, best) > 0)
                        memcpy(best, de->d_name, 21);
        closedir(d);
        return best[0] ? path_join(dir, best) : NULL;
}

static unsigned count_segments(const char *dir) {
        DIR *d = opendir(dir);
        struct dirent *de;
        unsigned n = 0;

        if (!d)
                return 0;
        while ((de = readdir(d)))
                if (strlen(de->d_name) == 20 && streq(de->d_name + 16, ".seg"))
                        n++;
        closedir(d);
        return n;
}

static off_t file_size(const char *path) {
        struct stat st;

        return stat(path, &st) < 0 ? -1 : st.st_size;
}

/* Appends counters first..first+n-1, checking that seqs come out consecutively. */
static int append_range(Spool *s, uint64_t first, unsigned n, uint64_t *ret_first_seq) {
        uint64_t prev = 0;

        for (unsigned i = 0; i < n; i++) {
                char buf[512];
                size_t len = payload_make(first + i, buf, sizeof(buf));
                uint64_t seq;
                int r;

                r = spool_append(s, buf, len, &seq);
                if (r < 0)
                        return r;
                if (i == 0 && ret_first_seq)
                        *ret_first_seq = seq;
                if (i > 0 && seq != prev + 1)
                        return -EPROTO;
                prev = seq;
        }
        return 0;
}

/* Offset of record seq in a segment that holds counters 1.. as seqs 1.. (append_range(s, 1,
 * n) into a fresh spool with big segments). */
static off_t record_offset(uint64_t seq) {
        off_t offset = 0;

        for (uint64_t i = 1; i < seq; i++) {
                char buf[512];

                offset += 20 + (off_t) payload_make(i, buf, sizeof(buf));
        }
        return offset;
}

static size_t payload_len(uint64_t n) {
        char buf[512];

        return payload_make(n, buf, sizeof(buf));
}

static void flip_byte(const char *path, off_t offset) {
        int fd = open(path, O_RDWR | O_CLOEXEC);
        char c = 0;

        CHECK(fd >= 0);
        CHECK_INT(pread(fd, &c, 1, offset), 1);
        c ^= 0x5a;
        CHECK_INT(pwrite(fd, &c, 1, offset), 1);
        close(fd);
}

/* Counter stored in record seq, UINT64_MAX if unreadable or damaged. */
static uint64_t read_counter(Spool *s, uint64_t seq) {
        _cleanup_free_ void *data = NULL;
        size_t len;

        if (spool_read(s, seq, &data, &len) < 0)
                return UINT64_MAX;
        return payload_check(data, len);
}

static void test_crc32c(void) {
        CHECK_INT(crc32c(0, "123456789", 9), 0xe3069283);
        CHECK_INT(crc32c(crc32c(0, "1234", 4), "56789", 5), 0xe3069283);
        CHECK_INT(crc32c(0, "", 0), 0);
}

static void test_round_trip(void) {
        _cleanup_free_ char *dir = path_join(tmpdir, "roundtrip");
        _cleanup_(spool_freep) Spool *s = NULL;
        _cleanup_free_ void *data = NULL;
        struct stat st;
        uint64_t seq = 0;
        size_t len = 0;

        CHECK_INT(spool_open(dir, 1 << 20, &s), 0);
        CHECK(stat(dir, &st) == 0 && S_ISDIR(st.st_mode) && (st.st_mode & 07777) == 0700);
        CHECK_INT(spool_pending_count(s), 0);
        CHECK_INT(spool_next(s, 0, &seq), -ENOENT);

        CHECK_INT(spool_append(s, "hello", 5, &seq), 0);
        CHECK_INT(seq, 1);
        CHECK_INT(spool_append(s, "", 0, &seq), 0);
        CHECK_INT(seq, 2);
        CHECK_INT(spool_append(s, "world!", 6, &seq), 0);
        CHECK_INT(seq, 3);
        CHECK_INT(spool_pending_count(s), 3);
        CHECK_INT(spool_used_bytes(s), 3 * 20 + 11);

        /* Not synced yet: invisible. */
        CHECK_INT(spool_next(s, 0, &seq), -ENOENT);
        CHECK_INT(spool_read(s, 1, &data, &len), -ENOENT);
        CHECK_INT(spool_ack(s, 1), -ENOENT);

        CHECK_INT(spool_sync(s), 0);
        CHECK_INT(spool_next(s, 0, &seq), 0);
        CHECK_INT(seq, 1);
        CHECK_INT(spool_read(s, 1, &data, &len), 0);
        CHECK_INT(len, 5);
        CHECK(data && memcmp(data, "hello", 5) == 0);
        data = (free(data), NULL);
        CHECK_INT(spool_read(s, 2, &data, &len), 0);
        CHECK_INT(len, 0);
        data = (free(data), NULL);
        CHECK_INT(spool_next(s, 1, &seq), 0);
        CHECK_INT(seq, 2);
        CHECK_INT(spool_next(s, 3, &seq), -ENOENT);
        CHECK_INT(spool_read(s, 4, &data, &len), -ENOENT);

        CHECK_INT(spool_ack(s, 1), 0);
        CHECK_INT(spool_ack(s, 1), -ENOENT);
        CHECK_INT(spool_ack(s, 99), -ENOENT);
        CHECK_INT(spool_read(s, 1, &data, &len), -ENOENT);
        CHECK_INT(spool_next(s, 0, &seq), 0);
        CHECK_INT(seq, 2);
        CHECK_INT(spool_pending_count(s), 2);
        CHECK_INT(spool_read(s, 3, &data, &len), 0);
        CHECK(len == 6 && memcmp(data, "world!", 6) == 0);

        /* One spool per directory. */
        {
                Spool *other = NULL;

                CHECK_INT(spool_open(dir, 1 << 20, &other), -EBUSY);
                CHECK(other == NULL);
        }

        CHECK_INT(spool_open(dir, 0, &s), -EINVAL);
        CHECK(spool_free(NULL) == NULL);
}

static void test_reopen_order(void) {
        _cleanup_free_ char *dir = path_join(tmpdir, "order");
        Spool *s = NULL;
        uint64_t first = 0, seq, after = 0;
        unsigned n = 0;

        /* Small segments (4 KiB) so that the records span several files. */
        CHECK_INT(spool_open(dir, 64 * 1024, &s), 0);
        CHECK_INT(append_range(s, 1000, 150, &first), 0);
        CHECK_INT(first, 1);
        CHECK_INT(spool_sync(s), 0);
        s = spool_free(s);
        CHECK(count_segments(dir) > 2);

        CHECK_INT(spool_open(dir, 64 * 1024, &s), 0);
        CHECK_INT(spool_pending_count(s), 150);
        while (spool_next(s, after, &seq) >= 0) {
                CHECK_INT(seq, after + 1);
                CHECK_INT(read_counter(s, seq), 1000 + n);
                after = seq;
                n++;
        }
        CHECK_INT(n, 150);

        /* New records carry on after the old ones. */
        CHECK_INT(append_range(s, 2000, 1, &first), 0);
        CHECK_INT(first, 151);
        CHECK_INT(spool_sync(s), 0);
        spool_free(s);
}

static void test_unsynced_invisible(void) {
        _cleanup_free_ char *dir = path_join(tmpdir, "unsynced");
        _cleanup_(spool_freep) Spool *s = NULL;
        _cleanup_free_ void *data = NULL;
        uint64_t seq, first;
        size_t len;

        CHECK_INT(spool_open(dir, 1 << 20, &s), 0);
        CHECK_INT(append_range(s, 1, 5, &first), 0);
        CHECK_INT(spool_sync(s), 0);
        CHECK_INT(append_range(s, 6, 5, &first), 0);
        CHECK_INT(first, 6);
        CHECK_INT(spool_pending_count(s), 10);

        CHECK_INT(spool_next(s, 4, &seq), 0);
        CHECK_INT(seq, 5);
        CHECK_INT(spool_next(s, 5, &seq), -ENOENT);
        CHECK_INT(spool_read(s, 7, &data, &len), -ENOENT);
        CHECK_INT(spool_ack(s, 6), -ENOENT);

        CHECK_INT(spool_sync(s), 0);
        CHECK_INT(spool_next(s, 5, &seq), 0);
        CHECK_INT(seq, 6);
        CHECK_INT(read_counter(s, 10), 10);

        /* A sync with nothing new is fine. */
        CHECK_INT(spool_sync(s), 0);
}

static void test_ack_out_of_order(void) {
        _cleanup_free_ char *dir = path_join(tmpdir, "acks");
        static const uint64_t acked[] = { 3, 7, 1, 15, 2, 20, 11 };
        Spool *s = NULL;
        uint64_t first, seq, after = 0;
        unsigned n = 0;

        CHECK_INT(spool_open(dir, 1 << 20, &s), 0);
        CHECK_INT(append_range(s, 1, 20, &first), 0);
        CHECK_INT(spool_sync(s), 0);
        for (size_t i = 0; i < ELEMENTSOF(acked); i++)
                CHECK_INT(spool_ack(s, acked[i]), 0);
        CHECK_INT(spool_pending_count(s), 13);
        CHECK_INT(spool_next(s, 0, &seq), 0);
        CHECK_INT(seq, 4);
        CHECK_INT(spool_next(s, 6, &seq), 0);
        CHECK_INT(seq, 8);
        s = spool_free(s);

        CHECK_INT(spool_open(dir, 1 << 20, &s), 0);
        CHECK_INT(spool_pending_count(s), 13);
        while (spool_next(s, after, &seq) >= 0) {
                for (size_t i = 0; i < ELEMENTSOF(acked); i++)
                        CHECK(seq != acked[i]);
                CHECK(seq > after);
                CHECK_INT(read_counter(s, seq), seq);
                after = seq;
                n++;
        }
        CHECK_INT(n, 13);
        for (size_t i = 0; i < ELEMENTSOF(acked); i++)
                CHECK_INT(spool_ack(s, acked[i]), -ENOENT);

        /* The rest, again out of order; then nothing comes back after a reopen and the
         * numbering still continues. */
        for (uint64_t i = 20; i >= 1; i--)
                if (i != 3 && i != 7 && i != 1 && i != 15 && i != 2 && i != 20 && i != 11)
                        CHECK_INT(spool_ack(s, i), 0);
        CHECK_INT(spool_pending_count(s), 0);
        s = spool_free(s);

        CHECK_INT(spool_open(dir, 1 << 20, &s), 0);
        CHECK_INT(spool_pending_count(s), 0);
        CHECK_INT(spool_next(s, 0, &seq), -ENOENT);
        CHECK_INT(spool_used_bytes(s), 0);
        CHECK_INT(count_segments(dir), 0);
        spool_free(s);
}

static void test_full(void) {
        _cleanup_free_ char *dir = path_join(tmpdir, "full");
        _cleanup_(spool_freep) Spool *s = NULL;
        char big[2048];
        uint64_t seq, used, n_ok = 0, max = 64 * 1024;
        int r;

        memset(big, 'x', sizeof(big));
        CHECK_INT(spool_open(dir, max, &s), 0);

        /* One record that can never fit. */
        CHECK_INT(spool_append(s, big, SPOOL_RECORD_MAX + 1, &seq), -E2BIG);
        {
                _cleanup_free_ char *huge = calloc(1, max);

                CHECK(huge);
                CHECK_INT(spool_append(s, huge, max, &seq), -E2BIG);
        }

        for (;;) {
                r = spool_append(s, big, 200, &seq);
                if (r < 0)
                        break;
                n_ok++;
        }
        CHECK_INT(r, -EDQUOT);
        CHECK(n_ok > 250);
        used = spool_used_bytes(s);
        CHECK(used <= max);
        CHECK(used + 220 > max);
        CHECK_INT(spool_pending_count(s), n_ok);
        /* Still full after a sync: nothing is lost, nothing is dropped to make room. */
        CHECK_INT(spool_sync(s), 0);
        CHECK_INT(spool_append(s, big, 200, &seq), -EDQUOT);
        CHECK_INT(spool_pending_count(s), n_ok);

        /* Acking the oldest half frees their segments. */
        for (uint64_t i = 1; i <= n_ok / 2; i++)
                CHECK_INT(spool_ack(s, i), 0);
        CHECK(spool_used_bytes(s) < used - max / 3);
        CHECK_INT(spool_append(s, big, 200, &seq), 0);
        CHECK_INT(seq, n_ok + 1);
        CHECK_INT(spool_sync(s), 0);
        CHECK_INT(spool_next(s, 0, &seq), 0);
        CHECK_INT(seq, n_ok / 2 + 1);

        /* Acking everything gives (nearly) all of it back. */
        for (uint64_t i = n_ok / 2 + 1; i <= n_ok + 1; i++)
                CHECK_INT(spool_ack(s, i), 0);
        CHECK_INT(spool_pending_count(s), 0);
        CHECK(spool_used_bytes(s) <= 4096);
        n_ok = 0;
        while (spool_append(s, big, 200, &seq) >= 0)
                n_ok++;
        CHECK(n_ok > 250);
}

/* Ten synced records, then damage done to the last one by `damage`. */
static void torn_case(const char *name, void (*damage)(const char *segment)) {
        _cleanup_free_ char *dir = path_join(tmpdir, name), *seg = NULL;
        uint64_t first, seq, after = 0;
        Spool *s = NULL;
        off_t size_before, file_size_damaged;
        unsigned n = 0;

        CHECK_INT(spool_open(dir, 1 << 20, &s), 0);
        CHECK_INT(append_range(s, 1, 10, &first), 0);
        CHECK_INT(spool_sync(s), 0);
        s = spool_free(s);

        seg = last_segment(dir);
        CHECK(seg);
        if (!seg)
                return;
        size_before = file_size(seg);
        CHECK_INT(size_before, record_offset(11));
        damage(seg);
        file_size_damaged = file_size(seg);

        CHECK_INT(spool_open(dir, 1 << 20, &s), 0);
        CHECK_INT(spool_pending_count(s), 9);
        while (spool_next(s, after, &seq) >= 0) {
                CHECK_INT(seq, after + 1);
                CHECK_INT(read_counter(s, seq), seq);
                after = seq;
                n++;
        }
        CHECK_INT(n, 9);
        CHECK_INT(spool_read(s, 10, &(void *) { NULL }, &(size_t) { 0 }), -ENOENT);
        /* The damaged record is cut off the file, exactly, and reported. */
        {
                const SpoolLoss *l = NULL;
                size_t n_l = 0;

                CHECK_INT(file_size(seg), record_offset(10));
                CHECK_INT(spool_recovery_losses(s, &l, &n_l), 1);
                CHECK_INT(n_l, 1);
                if (n_l == 1) {
                        CHECK_INT(l[0].segment, 1);
                        CHECK_INT(l[0].offset, record_offset(10));
                        CHECK_INT(l[0].bytes, file_size_damaged - record_offset(10));
                        CHECK_INT(l[0].first_seq, 10);
                        CHECK_INT(l[0].last_seq, 0);
                        CHECK(l[0].tail);
                }
        }

        /* The spool goes on: a new record after the cut, durable across a reopen, with a seq
         * that the damaged bytes cannot have held. */
        CHECK_INT(append_range(s, 11, 1, &first), 0);
        CHECK(first >= 10 + (uint64_t) (file_size_damaged - record_offset(10) + 19) / 20);
        CHECK_INT(spool_sync(s), 0);
        s = spool_free(s);

        CHECK_INT(spool_open(dir, 1 << 20, &s), 0);
        CHECK_INT(spool_pending_count(s), 10);
        CHECK_INT(spool_next(s, 9, &seq), 0);
        CHECK_INT(seq, first);
        CHECK_INT(read_counter(s, first), 11);
        spool_free(s);
}

static void damage_truncate(const char *seg) {
        CHECK_INT(truncate(seg, file_size(seg) - 7), 0);
}

static void damage_flip_payload(const char *seg) {
        int fd = open(seg, O_RDWR | O_CLOEXEC);
        off_t size = file_size(seg);
        char c;

        CHECK(fd >= 0);
        CHECK_INT(pread(fd, &c, 1, size - 3), 1);
        c ^= 0x20;
        CHECK_INT(pwrite(fd, &c, 1, size - 3), 1);
        close(fd);
}

static void damage_truncate_and_flip(const char *seg) {
        damage_truncate(seg);
        damage_flip_payload(seg);
}

static void damage_header_only(const char *seg) {
        /* Only 12 bytes of the last header made it. */
        char buf[512];

        CHECK_INT(truncate(seg, file_size(seg) - (off_t) payload_make(10, buf, 512) - 8), 0);
}

static void test_torn_tail(void) {
        torn_case("torn-truncate", damage_truncate);
        torn_case("torn-flip", damage_flip_payload);
        torn_case("torn-both", damage_truncate_and_flip);
        torn_case("torn-header", damage_header_only);
}

static void test_zero_tail_and_bad_head(void) {
        _cleanup_free_ char *dir = path_join(tmpdir, "zeros"), *seg = NULL, *head = NULL;
        char zeros[4096] = {};
        uint64_t first, seq, after = 0;
        Spool *s = NULL;
        off_t size;
        unsigned n = 0;
        int fd;

        CHECK_INT(spool_open(dir, 1 << 20, &s), 0);
        CHECK_INT(append_range(s, 1, 10, &first), 0);
        CHECK_INT(spool_sync(s), 0);
        CHECK_INT(spool_ack(s, 1), 0);
        s = spool_free(s);

        /* Delayed allocation after a power cut: the file grew, its data did not arrive. */
        seg = last_segment(dir);
        CHECK(seg);
        size = file_size(seg);
        fd = open(seg, O_WRONLY | O_APPEND | O_CLOEXEC);
        CHECK(fd >= 0);
        CHECK_INT(write(fd, zeros, sizeof(zeros)), sizeof(zeros));
        close(fd);

        /* A damaged head file costs re-delivery, never records. */
        head = path_join(dir, "head");
        fd = open(head, O_WRONLY | O_CLOEXEC);
        CHECK(fd >= 0);
        CHECK_INT(pwrite(fd, "garbage", 7, 8), 7);
        close(fd);

        CHECK_INT(spool_open(dir, 1 << 20, &s), 0);
        CHECK_INT(file_size(seg), size);
        CHECK_INT(spool_pending_count(s), 10);
        while (spool_next(s, after, &seq) >= 0) {
                CHECK_INT(read_counter(s, seq), seq);
                after = seq;
                n++;
        }
        CHECK_INT(n, 10);
        {
                const SpoolLoss *l = NULL;
                size_t n_l = 0;

                CHECK_INT(spool_recovery_losses(s, &l, &n_l), 1);
                CHECK(n_l == 1 && l[0].offset == (uint64_t) size && l[0].bytes == sizeof(zeros) &&
                      l[0].first_seq == 11 && l[0].last_seq == 0 && l[0].tail);
        }
        spool_free(s);
}

static void test_seq_monotonic(void) {
        _cleanup_free_ char *dir = path_join(tmpdir, "monotonic");
        Spool *s = NULL;
        uint64_t first, seq;

        CHECK_INT(spool_open(dir, 1 << 20, &s), 0);
        CHECK_INT(append_range(s, 1, 5, &first), 0);
        CHECK_INT(spool_sync(s), 0);
        for (uint64_t i = 1; i <= 5; i++)
                CHECK_INT(spool_ack(s, i), 0);
        s = spool_free(s);

        /* Empty: no segment left, yet numbering goes on. */
        CHECK_INT(spool_open(dir, 1 << 20, &s), 0);
        CHECK_INT(count_segments(dir), 0);
        CHECK_INT(spool_pending_count(s), 0);
        s = spool_free(s);
        CHECK_INT(spool_open(dir, 1 << 20, &s), 0);
        CHECK_INT(spool_append(s, "x", 1, &seq), 0);
        CHECK_INT(seq, 6);
        CHECK_INT(spool_sync(s), 0);
        CHECK_INT(spool_ack(s, 6), 0);
        /* Appends to the same (active) segment after it was drained. */
        CHECK_INT(spool_append(s, "y", 1, &seq), 0);
        CHECK_INT(seq, 7);
        CHECK_INT(spool_sync(s), 0);
        CHECK_INT(spool_ack(s, 7), 0);
        s = spool_free(s);

        CHECK_INT(spool_open(dir, 1 << 20, &s), 0);
        CHECK_INT(spool_append(s, "z", 1, &seq), 0);
        CHECK_INT(seq, 8);
        spool_free(s);
}

/* The daemon's pattern: 1000 records queued while offline, delivered with up to 100 in
 * flight and PUBACKs in any order, a clean stop half-way and a start: every record is acked
 * exactly once, none comes back once acked, sends stay in order within each run. */
static void test_stop_start(void) {
        _cleanup_free_ char *dir = path_join(tmpdir, "stopstart");
        uint8_t acked[1001] = {};
        uint64_t inflight[100], first, state = 12345;
        unsigned n_inflight = 0, n_acked = 0, runs = 0;
        bool ok_order = true, ok_once = true, ok_content = true;
        Spool *s = NULL;

        CHECK_INT(spool_open(dir, 256 * 1024, &s), 0);
        for (unsigned i = 0; i < 1000; i += 40) {
                CHECK_INT(append_range(s, i + 1, MIN(40U, 1000 - i), &first), 0);
                CHECK_INT(first, i + 1);
                CHECK_INT(spool_sync(s), 0);
        }
        s = spool_free(s);

        while (n_acked < 1000 && runs < 5) {
                uint64_t after = 0, seq;

                CHECK_INT(spool_open(dir, 256 * 1024, &s), 0);
                if (!s)
                        return;
                CHECK_INT(spool_pending_count(s), 1000 - n_acked);
                runs++;
                n_inflight = 0;
                for (;;) {
                        while (n_inflight < 100 && spool_next(s, after, &seq) >= 0) {
                                if (seq <= after || acked[seq])
                                        ok_order = false;
                                if (read_counter(s, seq) != seq)
                                        ok_content = false;
                                inflight[n_inflight++] = after = seq;
                        }
                        if (n_inflight == 0)
                                break;
                        /* A PUBACK for any of the messages in flight. */
                        {
                                unsigned k = (unsigned) ((state = state * 6364136223846793005ULL +
                                                                  1442695040888963407ULL) >>
                                                         33) % n_inflight;

                                seq = inflight[k];
                                inflight[k] = inflight[--n_inflight];
                                if (spool_ack(s, seq) < 0 || acked[seq]++)
                                        ok_once = false;
                                n_acked++;
                        }
                        if (runs == 1 && n_acked == 500)
                                break; /* SIGTERM: stop cleanly with 100 in flight */
                }
                s = spool_free(s);
        }
        CHECK_INT(runs, 2);
        CHECK_INT(n_acked, 1000);
        CHECK(ok_order);
        CHECK(ok_once);
        CHECK(ok_content);
        for (unsigned i = 1; i <= 1000; i++)
                if (acked[i] != 1)
                        ok_once = false;
        CHECK(ok_once);

        CHECK_INT(spool_open(dir, 256 * 1024, &s), 0);
        CHECK_INT(spool_pending_count(s), 0);
        CHECK_INT(spool_used_bytes(s), 0);
        spool_free(s);
}

/* The crash test: a child appends, syncs, acks and flushes in a loop, telling the parent
 * through a pipe what it has made durable; the parent SIGKILLs it at varied points and checks
 * the promises. */

enum { MSG_SYNCED, MSG_ACK_INTENT, MSG_FLUSHED };
enum { F_SYNCED = 1, F_ACK_INTENT = 2, F_ACK_DONE = 4 };

typedef struct Msg {
        uint32_t type;
        uint32_t pad;
        uint64_t seq;
        uint64_t n;
} Msg;

typedef struct CrashState {
        uint8_t *flags;  /* by seq */
        uint64_t *count; /* counter written into record seq */
        size_t size;
} CrashState;

static int crash_state_ensure(CrashState *st, uint64_t seq) {
        size_t n;

        if (seq < st->size)
                return 0;
        n = MAX((size_t) seq + 1, st->size * 2);
        st->flags = realloc(st->flags, n);
        st->count = realloc(st->count, n * sizeof(uint64_t));
        if (!st->flags || !st->count)
                return -ENOMEM;
        memset(st->flags + st->size, 0, n - st->size);
        st->size = n;
        return 0;
}

static void send_msg(int fd, uint32_t type, uint64_t seq, uint64_t n) {
        Msg m = { .type = type, .seq = seq, .n = n };

        if (write(fd, &m, sizeof(m)) != sizeof(m))
                _exit(3);
}

static _Noreturn void crash_child(const char *dir, int fd, uint64_t counter) {
        Spool *s = NULL;
        uint64_t seqs[16];

        if (spool_open(dir, 64 << 20, &s) < 0)
                _exit(2);
        for (unsigned it = 0;; it++) {
                unsigned batch = 1 + it % 9;

                for (unsigned i = 0; i < batch; i++) {
                        char buf[512];
                        size_t len = payload_make(counter + i, buf, sizeof(buf));

                        if (spool_append(s, buf, len, &seqs[i]) < 0)
                                _exit(4);
                }
                if (spool_sync(s) < 0)
                        _exit(5);
                for (unsigned i = 0; i < batch; i++)
                        send_msg(fd, MSG_SYNCED, seqs[i], counter + i);
                counter += batch;

                if (it % 4 == 3) {
                        /* Deliver the oldest few, as PUBACKs would. */
                        for (unsigned i = 0; i < 3; i++) {
                                uint64_t seq;

                                if (spool_next(s, 0, &seq) < 0)
                                        break;
                                send_msg(fd, MSG_ACK_INTENT, seq, 0);
                                if (spool_ack(s, seq) < 0)
                                        _exit(6);
                        }
                        if (spool_flush(s) < 0)
                                _exit(7);
                        send_msg(fd, MSG_FLUSHED, 0, 0);
                }
        }
}

static void crash_apply(CrashState *st, const Msg *m, uint64_t *intents, unsigned *n_intents) {
        switch (m->type) {
        case MSG_SYNCED:
                if (crash_state_ensure(st, m->seq) < 0)
                        abort();
                st->flags[m->seq] |= F_SYNCED;
                st->count[m->seq] = m->n;
                break;
        case MSG_ACK_INTENT:
                if (crash_state_ensure(st, m->seq) < 0)
                        abort();
                st->flags[m->seq] |= F_ACK_INTENT;
                if (*n_intents < 64)
                        intents[(*n_intents)++] = m->seq;
                break;
        case MSG_FLUSHED:
                for (unsigned i = 0; i < *n_intents; i++)
                        st->flags[intents[i]] |= F_ACK_DONE;
                *n_intents = 0;
                break;
        }
}

static void test_crash(void) {
        _cleanup_free_ char *dir = path_join(tmpdir, "crash");
        CrashState st = {};
        uint64_t counter = 0, synced = 0, acked = 0, present = 0;
        unsigned rounds = 14;

        for (unsigned round = 0; round < rounds; round++) {
                unsigned target = 5 + (round * 37) % 120, got = 0, n_intents = 0;
                uint64_t intents[64], seq, after = 0, max_n = counter, prev_n = 0;
                bool first = true, ok_present = true, ok_gone = true, ok_order = true;
                int p[2], status;
                Spool *s = NULL;
                pid_t pid;
                Msg m;

                CHECK_INT(pipe2(p, O_CLOEXEC), 0);
                pid = fork();
                CHECK(pid >= 0);
                if (pid < 0)
                        return;
                if (pid == 0) {
                        close(p[0]);
                        crash_child(dir, p[1], counter);
                }
                close(p[1]);

                /* Let the child run, then kill it wherever it is: in write(), in fdatasync(),
                 * in the middle of replacing the head file. */
                while (got < target && read(p[0], &m, sizeof(m)) == sizeof(m)) {
                        crash_apply(&st, &m, intents, &n_intents);
                        got++;
                }
                if (round % 3 != 0) {
                        struct timespec ts = { 0, (long) ((round * 7919) % 3000) * 1000 };

                        nanosleep(&ts, NULL);
                }
                kill(pid, SIGKILL);
                while (read(p[0], &m, sizeof(m)) == sizeof(m))
                        crash_apply(&st, &m, intents, &n_intents);
                close(p[0]);
                CHECK_INT(waitpid(pid, &status, 0), pid);
                CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);

                CHECK_INT(spool_open(dir, 64 << 20, &s), 0);
                if (!s)
                        break;

                /* Every record reported synced and not possibly acked is there, intact; no
                 * record whose ack was flushed is. */
                for (uint64_t i = 1; i < st.size; i++) {
                        if ((st.flags[i] & F_SYNCED) && !(st.flags[i] & F_ACK_INTENT) &&
                            read_counter(s, i) != st.count[i])
                                ok_present = false;
                        if ((st.flags[i] & F_ACK_DONE) &&
                            spool_read(s, i, &(void *) { NULL }, &(size_t) { 0 }) != -ENOENT)
                                ok_gone = false;
                }

                /* Whatever is there comes out intact and in order, synced or not. */
                while (spool_next(s, after, &seq) >= 0) {
                        uint64_t n = read_counter(s, seq);

                        if (n == UINT64_MAX || seq <= after || (!first && n <= prev_n) ||
                            (seq < st.size && (st.flags[seq] & F_ACK_DONE)) ||
                            (seq < st.size && (st.flags[seq] & F_SYNCED) && st.count[seq] != n))
                                ok_order = false;
                        if (n != UINT64_MAX)
                                max_n = MAX(max_n, n);
                        prev_n = n;
                        first = false;
                        after = seq;
                }
                CHECK(ok_present);
                CHECK(ok_gone);
                CHECK(ok_order);
                present = spool_pending_count(s);
                spool_free(s);

                for (uint64_t i = 1; i < st.size; i++)
                        if (st.flags[i] & F_SYNCED)
                                max_n = MAX(max_n, st.count[i]);
                counter = max_n + 1;
        }

        for (uint64_t i = 1; i < st.size; i++) {
                synced += !!(st.flags[i] & F_SYNCED);
                acked += !!(st.flags[i] & F_ACK_DONE);
        }
        printf("# spool: %u SIGKILL rounds, %" PRIu64 " records reported synced, %" PRIu64
               " acks flushed, %" PRIu64 " pending at the end\n",
               rounds, synced, acked, present);
        CHECK(synced > 100);
        CHECK(acked > 10);
        free(st.flags);
        free(st.count);
}

static void test_performance(void) {
        _cleanup_free_ char *dir = path_join(tmpdir, "perf");
        Spool *s = NULL;
        struct timespec a, b;
        uint64_t seq, after = 0, n = 0, total = 100000;
        bool ordered = true;
        double secs;

        CHECK_INT(spool_open(dir, 64 << 20, &s), 0);
        clock_gettime(CLOCK_MONOTONIC, &a);
        for (uint64_t i = 0; i < total; i++) {
                char buf[512];
                size_t len = payload_make(i, buf, sizeof(buf));

                if (spool_append(s, buf, len, &seq) < 0) {
                        CHECK(false);
                        break;
                }
                if (i % 64 == 63 && spool_sync(s) < 0)
                        CHECK(false);
        }
        CHECK_INT(spool_sync(s), 0);
        clock_gettime(CLOCK_MONOTONIC, &b);
        secs = (double) (b.tv_sec - a.tv_sec) + (double) (b.tv_nsec - a.tv_nsec) / 1e9;
        printf("# spool: %" PRIu64 " records, sync every 64: %.0f records/s (%.2f s), %" PRIu64
               " bytes in %u segments\n",
               total, (double) total / secs, secs, spool_used_bytes(s), count_segments(dir));
        CHECK_INT(spool_pending_count(s), total);

        clock_gettime(CLOCK_MONOTONIC, &a);
        while (spool_next(s, after, &seq) >= 0) {
                if (read_counter(s, seq) != n)
                        ordered = false;
                if (spool_ack(s, seq) < 0)
                        ordered = false;
                after = seq;
                n++;
        }
        clock_gettime(CLOCK_MONOTONIC, &b);
        secs = (double) (b.tv_sec - a.tv_sec) + (double) (b.tv_nsec - a.tv_nsec) / 1e9;
        printf("# spool: read+ack %" PRIu64 " records: %.0f records/s\n", n, (double) n / secs);
        CHECK(ordered);
        CHECK_INT(n, total);
        CHECK_INT(spool_pending_count(s), 0);
        s = spool_free(s);

        CHECK_INT(spool_open(dir, 64 << 20, &s), 0);
        CHECK_INT(spool_pending_count(s), 0);
        CHECK_INT(count_segments(dir), 0);
        CHECK_INT(spool_append(s, "x", 1, &seq), 0);
        CHECK_INT(seq, total + 1);
        spool_free(s);
}


/* Thirty synced records in one segment, damaged by `damage`, then reopened: every record but
 * the damaged ones is still there, and the loss report names those exactly. */
static void resync_case(const char *name, void (*damage)(const char *segment), uint64_t lost_first,
                        uint64_t lost_last) {
        _cleanup_free_ char *dir = path_join(tmpdir, name), *seg = NULL;
        uint64_t first, seq, after = 0;
        const SpoolLoss *l = NULL;
        size_t n_l = 0;
        Spool *s = NULL;
        off_t size;
        unsigned n = 0;
        bool ok = true;

        CHECK_INT(spool_open(dir, 1 << 20, &s), 0);
        CHECK_INT(append_range(s, 1, 30, &first), 0);
        CHECK_INT(spool_sync(s), 0);
        s = spool_free(s);
        seg = last_segment(dir);
        CHECK(seg);
        if (!seg)
                return;
        damage(seg);
        size = file_size(seg);

        for (unsigned round = 0; round < 2; round++) {
                CHECK_INT(spool_open(dir, 1 << 20, &s), 0);
                if (!s)
                        return;
                CHECK_INT(spool_pending_count(s), 30 - (lost_last - lost_first + 1) + round);
                after = 0;
                n = 0;
                while (spool_next(s, after, &seq) >= 0) {
                        if (seq >= lost_first && seq <= lost_last)
                                ok = false;
                        if (seq <= 30 && read_counter(s, seq) != seq)
                                ok = false;
                        after = seq;
                        n++;
                }
                CHECK(ok);
                CHECK_INT(n, 30 - (lost_last - lost_first + 1) + round);
                for (uint64_t i = lost_first; i <= lost_last; i++)
                        CHECK_INT(spool_read(s, i, &(void *) { NULL }, &(size_t) { 0 }), -ENOENT);
                CHECK_INT(read_counter(s, 30), 30);

                /* Damage in the middle stays in the file and is reported at each open. */
                CHECK_INT(file_size(seg), size);
                CHECK_INT(spool_recovery_losses(s, &l, &n_l), 1);
                CHECK_INT(n_l, 1);
                if (n_l == 1) {
                        CHECK_INT(l[0].segment, 1);
                        CHECK_INT(l[0].offset, record_offset(lost_first));
                        CHECK_INT(l[0].bytes, record_offset(lost_last + 1) - record_offset(lost_first));
                        CHECK_INT(l[0].first_seq, lost_first);
                        CHECK_INT(l[0].last_seq, lost_last);
                        CHECK(!l[0].tail);
                }

                /* Numbering carries on above the records after the damage. */
                if (round == 0) {
                        CHECK_INT(append_range(s, 31, 1, &first), 0);
                        CHECK_INT(first, 31);
                        CHECK_INT(spool_sync(s), 0);
                        CHECK_INT(read_counter(s, 31), 31);
                } else {
                        CHECK_INT(spool_append(s, "x", 1, &seq), 0);
                        CHECK_INT(seq, 32);
                }
                s = spool_free(s);
        }
}

static void damage_payload_10(const char *seg) {
        flip_byte(seg, record_offset(10) + 20 + 3);
}

static void damage_magic_10(const char *seg) {
        flip_byte(seg, record_offset(10) + 1);
}

/* A len that still fits the file: the record would swallow the ones after it. */
static void damage_len_10(const char *seg) {
        flip_byte(seg, record_offset(10) + 4);
}

/* A len far past the end of the file. */
static void damage_len_huge_10(const char *seg) {
        flip_byte(seg, record_offset(10) + 6);
}

static void damage_seq_10(const char *seg) {
        flip_byte(seg, record_offset(10) + 12);
}

static void damage_10_and_11(const char *seg) {
        flip_byte(seg, record_offset(10) + 20);
        flip_byte(seg, record_offset(11) + 2);
}

static void damage_first(const char *seg) {
        flip_byte(seg, 20 + 1);
}

/* A run of zeros over the end of record 12 and the start of 13 (a lost block). */
static void damage_zeros_12_13(const char *seg) {
        char zeros[30] = {};
        int fd = open(seg, O_WRONLY | O_CLOEXEC);

        CHECK(fd >= 0);
        CHECK_INT(pwrite(fd, zeros, sizeof(zeros), record_offset(13) - 10), sizeof(zeros));
        close(fd);
}

static void test_resync(void) {
        resync_case("resync-payload", damage_payload_10, 10, 10);
        resync_case("resync-magic", damage_magic_10, 10, 10);
        resync_case("resync-len", damage_len_10, 10, 10);
        resync_case("resync-len-huge", damage_len_huge_10, 10, 10);
        resync_case("resync-seq", damage_seq_10, 10, 10);
        resync_case("resync-two", damage_10_and_11, 10, 11);
        resync_case("resync-first", damage_first, 1, 1);
        resync_case("resync-zeros", damage_zeros_12_13, 12, 13);
}

/* Damage at the end of a segment that is not the newest: cut, and the seqs lost are told by
 * the next segment's name. */
static void test_resync_segment_tail(void) {
        _cleanup_free_ char *dir = path_join(tmpdir, "resync-segtail"), *seg1 = NULL;
        uint64_t first, seq, after = 0, last1 = 0;
        const SpoolLoss *l = NULL;
        size_t n_l = 0;
        Spool *s = NULL;
        unsigned n = 0;
        off_t size1;

        CHECK_INT(spool_open(dir, 64 * 1024, &s), 0);
        CHECK_INT(append_range(s, 1, 150, &first), 0);
        CHECK_INT(spool_sync(s), 0);
        s = spool_free(s);
        CHECK(count_segments(dir) > 2);

        /* The record that ends segment 1 is the one before the next segment's first. */
        seg1 = path_join(dir, "0000000000000001.seg");
        size1 = file_size(seg1);
        {
                DIR *d = opendir(dir);
                struct dirent *de;

                while (d && (de = readdir(d)))
                        if (strlen(de->d_name) == 20 && streq(de->d_name + 16, ".seg")) {
                                uint64_t f = strtoull(de->d_name, NULL, 16);

                                if (f > 1 && (last1 == 0 || f - 1 < last1))
                                        last1 = f - 1;
                        }
                if (d)
                        closedir(d);
        }
        CHECK(last1 > 10);
        flip_byte(seg1, size1 - 2);

        CHECK_INT(spool_open(dir, 64 * 1024, &s), 0);
        if (!s)
                return;
        CHECK_INT(spool_pending_count(s), 149);
        while (spool_next(s, after, &seq) >= 0) {
                CHECK(seq != last1);
                CHECK_INT(read_counter(s, seq), seq);
                after = seq;
                n++;
        }
        CHECK_INT(n, 149);
        CHECK_INT(file_size(seg1), size1 - 20 - (off_t) payload_len(last1));
        CHECK_INT(spool_recovery_losses(s, &l, &n_l), 1);
        CHECK_INT(n_l, 1);
        if (n_l == 1) {
                CHECK_INT(l[0].segment, 1);
                CHECK_INT(l[0].offset, size1 - 20 - (off_t) payload_len(last1));
                CHECK_INT(l[0].bytes, 20 + payload_len(last1));
                CHECK_INT(l[0].first_seq, last1);
                CHECK_INT(l[0].last_seq, last1);
                CHECK(l[0].tail);
        }
        CHECK_INT(spool_append(s, "x", 1, &seq), 0);
        CHECK_INT(seq, 151);
        spool_free(s);
}

/* fdatasync() and fsync() as the spool calls them, made to fail on demand: calls number
 * fail_from .. fail_from + n_fail - 1 (counting from 1) fail with EIO. */
typedef struct Fault {
        unsigned calls;
        unsigned fail_from;
        unsigned n_fail;
        bool dirs_only; /* count and fail only calls on directories */
} Fault;

static Fault fault_datasync, fault_fsync;

static bool fault_hit(Fault *f, int fd) {
        struct stat st;

        if (f->dirs_only && (fstat(fd, &st) < 0 || !S_ISDIR(st.st_mode)))
                return false;
        f->calls++;
        return f->n_fail > 0 && f->calls >= f->fail_from && f->calls - f->fail_from < f->n_fail;
}

static int failing_fdatasync(int fd) {
        if (fault_hit(&fault_datasync, fd)) {
                errno = EIO;
                return -1;
        }
        return fdatasync(fd);
}

static int failing_fsync(int fd) {
        if (fault_hit(&fault_fsync, fd)) {
                errno = EIO;
                return -1;
        }
        return fsync(fd);
}

static void faults_clear(void) {
        fault_datasync = (Fault) {};
        fault_fsync = (Fault) {};
}

/* Twenty records synced, then forty more that finish the first segment and start a second:
 * fail() breaks their sync. They must be gone at once and after a reopen, and their seqs
 * never come again. */
static void sync_fail_case(const char *name, int (*fail)(Spool *s), unsigned n_acked) {
        _cleanup_free_ char *dir = path_join(tmpdir, name), *seg1 = NULL;
        uint64_t first, seq;
        off_t size1;
        Spool *s = NULL;

        faults_clear();
        CHECK_INT(spool_open(dir, 64 * 1024, &s), 0);
        if (!s)
                return;
        CHECK_INT(append_range(s, 1, 20, &first), 0);
        CHECK_INT(spool_sync(s), 0);
        seg1 = path_join(dir, "0000000000000001.seg");
        size1 = file_size(seg1);
        CHECK_INT(size1, record_offset(21));
        CHECK_INT(append_range(s, 21, 40, &first), 0);
        CHECK_INT(first, 21);
        CHECK_INT(count_segments(dir), 2);

        CHECK_INT(fail(s), -EIO);
        faults_clear();

        /* Gone now: not visible, not in the files. */
        CHECK_INT(spool_pending_count(s), 20 - n_acked);
        CHECK_INT(spool_next(s, 20, &seq), -ENOENT);
        for (uint64_t i = 21; i <= 60; i++)
                CHECK_INT(spool_read(s, i, &(void *) { NULL }, &(size_t) { 0 }), -ENOENT);
        CHECK_INT(file_size(seg1), size1);
        CHECK_INT(count_segments(dir), 1);
        CHECK_INT(read_counter(s, 20), 20);
        s = spool_free(s);

        /* Gone after a restart, too, and their seqs stay used. */
        CHECK_INT(spool_open(dir, 64 * 1024, &s), 0);
        if (!s)
                return;
        CHECK_INT(spool_pending_count(s), 20 - n_acked);
        CHECK_INT(spool_next(s, 20, &seq), -ENOENT);
        CHECK_INT(spool_recovery_losses(s, &(const SpoolLoss *) { NULL }, &(size_t) { 0 }), 0);
        CHECK_INT(append_range(s, 61, 1, &first), 0);
        CHECK(first > 60);
        CHECK_INT(spool_sync(s), 0);
        CHECK_INT(read_counter(s, first), 61);
        s = spool_free(s);

        CHECK_INT(spool_open(dir, 64 * 1024, &s), 0);
        CHECK_INT(spool_pending_count(s), 21 - n_acked);
        CHECK_INT(spool_next(s, 20, &seq), 0);
        CHECK_INT(seq, first);
        spool_free(s);
}

/* The finished segment syncs fine, the new one does not. */
static int fail_second_datasync(Spool *s) {
        int r;

        fault_datasync = (Fault) { .fail_from = 2, .n_fail = 1 };
        r = spool_sync(s);
        CHECK_INT(fault_datasync.calls, 2);
        return r;
}

/* Both segments sync fine, the directory entry of the new one does not. */
static int fail_dir_fsync(Spool *s) {
        int r;

        fault_fsync = (Fault) { .fail_from = 1, .n_fail = 1, .dirs_only = true };
        r = spool_sync(s);
        CHECK(fault_fsync.calls >= 1);
        return r;
}

/* The directory fsync() that fails is spool_flush()'s; the sync after it cannot succeed. */
static int fail_dir_fsync_in_flush(Spool *s) {
        CHECK_INT(spool_ack(s, 1), 0);
        fault_fsync = (Fault) { .fail_from = 1, .n_fail = 1, .dirs_only = true };
        CHECK_INT(spool_flush(s), -EIO);
        faults_clear();
        return spool_sync(s);
}

/* Nothing can be made durable for a while: the cleanup fails too, and appends are refused
 * until it has succeeded. */
static int fail_everything(Spool *s) {
        uint64_t seq = 0;
        int r;

        fault_datasync = (Fault) { .fail_from = 1, .n_fail = 1000 };
        fault_fsync = (Fault) { .fail_from = 1, .n_fail = 1000 };
        r = spool_sync(s);
        CHECK_INT(spool_append(s, "x", 1, &seq), -EIO);
        CHECK_INT(spool_sync(s), -EIO);
        CHECK_INT(seq, 0);
        CHECK_INT(spool_pending_count(s), 20);
        faults_clear();
        /* The next sync (or append) retries the cleanup. */
        CHECK_INT(spool_sync(s), 0);
        return r;
}

static void test_sync_failures(void) {
        spool_fdatasync_hook = failing_fdatasync;
        spool_fsync_hook = failing_fsync;

        sync_fail_case("syncfail-data", fail_second_datasync, 0);
        sync_fail_case("syncfail-dir", fail_dir_fsync, 0);
        sync_fail_case("syncfail-dir-flush", fail_dir_fsync_in_flush, 1);
        sync_fail_case("syncfail-cleanup", fail_everything, 0);

        spool_fdatasync_hook = fdatasync;
        spool_fsync_hook = fsync;
}

/* -EBADMSG for a record that is not whole and valid on disk; other errors as they are. */
static void test_read_errors(void) {
        _cleanup_free_ char *dir = path_join(tmpdir, "readerr"), *seg1 = NULL, *last = NULL;
        _cleanup_free_ void *data = NULL;
        uint64_t first, seq;
        struct rlimit rl, low;
        size_t len;
        Spool *s = NULL;

        CHECK_INT(spool_open(dir, 64 * 1024, &s), 0);
        if (!s)
                return;
        CHECK_INT(append_range(s, 1, 100, &first), 0);
        CHECK_INT(spool_sync(s), 0);
        CHECK(count_segments(dir) >= 2);

        /* No descriptor left: -EMFILE, nothing else; the record is fine afterwards. */
        CHECK_INT(read_counter(s, 1), 1);
        CHECK_INT(getrlimit(RLIMIT_NOFILE, &rl), 0);
        /* Limit 0: even the descriptor spool_read() closes first cannot be had again. */
        low = (struct rlimit) { .rlim_cur = 0, .rlim_max = rl.rlim_max };
        CHECK_INT(setrlimit(RLIMIT_NOFILE, &low), 0);
        CHECK_INT(spool_read(s, 100, &data, &len), -EMFILE);
        CHECK_INT(setrlimit(RLIMIT_NOFILE, &rl), 0);
        CHECK_INT(read_counter(s, 100), 100);

        /* The file cut short under the newest record. */
        last = last_segment(dir);
        CHECK_INT(truncate(last, file_size(last) - 5), 0);
        CHECK_INT(spool_read(s, 100, &data, &len), -EBADMSG);
        CHECK(data == NULL);

        /* A flipped bit. */
        seg1 = path_join(dir, "0000000000000001.seg");
        flip_byte(seg1, record_offset(2) + 20);
        CHECK_INT(spool_read(s, 2, &data, &len), -EBADMSG);
        flip_byte(seg1, record_offset(2) + 20);
        CHECK_INT(read_counter(s, 2), 2);
        flip_byte(seg1, record_offset(3) + 14); /* the seq in the header */
        CHECK_INT(spool_read(s, 3, &data, &len), -EBADMSG);

        CHECK_INT(spool_next(s, 0, &seq), 0);
        spool_free(s);
}

static uint64_t free_bytes(const char *dir) {
        struct statvfs sv;

        CHECK_INT(statvfs(dir, &sv), 0);
        return (uint64_t) sv.f_bavail * sv.f_frsize;
}

/* A small real file system, filled by the spool and then by another file: the disk is the
 * limit, not max_bytes. Appends fail with -ENOSPC (not -EDQUOT); acknowledging, flushing and
 * deleting keep working; once the backlog is acknowledged the space is back and appends work
 * again, without anyone freeing the other file. Opening the spool on a full disk works too. */
static void test_disk_full(void) {
        _cleanup_free_ char *mnt = path_join(tmpdir, "small-fs"), *dir = NULL;
        _cleanup_(spool_freep) Spool *s = NULL;
        uint64_t seq, n_ok = 0;
        char page[4096];
        int r;

        memset(page, 'p', sizeof(page));
        CHECK_INT(mkdir(mnt, 0700), 0);
        r = test_mount_tmpfs(mnt, "512k");
        if (r < 0) {
                TEST_SKIP("test_disk_full", r);
                return;
        }
        dir = path_join(mnt, "spool");

        /* max_bytes above the file system: 64 KiB segments. */
        CHECK_INT(spool_open(dir, 1 << 20, &s), 0);
        for (;;) {
                r = append_range(s, n_ok + 1, 1, NULL);
                if (r < 0)
                        break;
                n_ok++;
        }
        CHECK_INT(r, -ENOSPC);
        CHECK(n_ok > 500);
        CHECK_INT(spool_sync(s), 0);
        CHECK(count_segments(dir) >= 3);
        test_fill_disk(mnt);
        CHECK(free_bytes(mnt) < 4096);
        CHECK_INT(spool_append(s, page, sizeof(page), &seq), -ENOSPC);

        /* The backlog drains: every acknowledgement is recorded, every delivered segment
         * deleted, at no point with an error. */
        for (uint64_t i = 1; i <= n_ok; i++) {
                CHECK_INT(read_counter(s, i), i);
                CHECK_INT(spool_ack(s, i), 0);
                if (i % 97 == 0)
                        CHECK_INT(spool_flush(s), 0);
        }
        CHECK_INT(spool_flush(s), 0);
        CHECK_INT(spool_pending_count(s), 0);
        /* At most the segment still being appended to stays, its records delivered. */
        CHECK(spool_used_bytes(s) <= 64 * 1024);
        CHECK(count_segments(dir) <= 1);
        CHECK(free_bytes(mnt) > 256 * 1024);

        /* Back to normal by itself: new records are taken, numbered after the old ones. */
        CHECK_INT(spool_append(s, "after", 5, &seq), 0);
        CHECK_INT(seq, n_ok + 1);
        CHECK_INT(spool_sync(s), 0);

        /* A restart on a full disk recovers what is there and keeps the numbering. */
        test_fill_disk(mnt);
        s = spool_free(s);
        CHECK_INT(spool_open(dir, 1 << 20, &s), 0);
        CHECK_INT(spool_pending_count(s), 1);
        CHECK_INT(spool_next(s, 0, &seq), 0);
        CHECK_INT(seq, n_ok + 1);
        CHECK_INT(spool_ack(s, seq), 0);
        CHECK_INT(spool_flush(s), 0);
        CHECK_INT(spool_append(s, "again", 5, &seq), 0);
        CHECK_INT(seq, n_ok + 2);
        CHECK_INT(spool_sync(s), 0);
        s = spool_free(s);
        CHECK_INT(umount2(mnt, MNT_DETACH), 0);
}

/* Delivered segments that a newer segment file covers are deleted without a head write. When
 * that newer segment then goes (its records' sync failed) and the head file cannot be
 * written, a crash must still not bring back sequence numbers already handed out: the head
 * file comes before that deletion. */
static void test_gc_without_head_keeps_seqs(void) {
        _cleanup_free_ char *dir = path_join(tmpdir, "gc-covered");
        uint64_t handed_out = 0;
        int status, pipefd[2];
        pid_t pid;

        CHECK_INT(pipe2(pipefd, O_CLOEXEC), 0);
        pid = fork();
        if (pid == 0) {
                Spool *s = NULL;
                uint64_t seq = 0;

                if (spool_open(dir, 64 * 1024, &s) < 0)
                        _exit(10);
                /* Three segments: the first two synced, the third created for one record. */
                while (count_segments(dir) < 3) {
                        if (append_range(s, seq + 1, 1, &seq) < 0)
                                _exit(11);
                        if (count_segments(dir) < 3 && spool_sync(s) < 0)
                                _exit(12);
                }
                /* Every synced record delivered: the two full segments go, covered by the
                 * third one's name, with no head write. */
                for (uint64_t i = 1; i < seq; i++)
                        if (spool_ack(s, i) < 0)
                                _exit(13);
                if (count_segments(dir) != 1)
                        _exit(14);
                /* The sync of the last record fails; cutting it off the file works, and
                 * every fsync after that fails: the head file cannot be written. */
                fault_datasync = (Fault) { .fail_from = 1, .n_fail = 1000 };
                fault_fsync = (Fault) { .fail_from = 2, .n_fail = 1000 };
                spool_fdatasync_hook = failing_fdatasync;
                spool_fsync_hook = failing_fsync;
                if (spool_sync(s) >= 0)
                        _exit(15);
                /* A crash here. */
                if (write(pipefd[1], &seq, sizeof(seq)) != sizeof(seq))
                        _exit(16);
                _exit(0);
        }
        close(pipefd[1]);
        CHECK(pid > 0);
        CHECK_INT(read(pipefd[0], &handed_out, sizeof(handed_out)), sizeof(handed_out));
        close(pipefd[0]);
        CHECK_INT(waitpid(pid, &status, 0), pid);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        CHECK(handed_out > 60);
        {
                _cleanup_(spool_freep) Spool *s = NULL;
                uint64_t seq = 0;

                CHECK_INT(spool_open(dir, 64 * 1024, &s), 0);
                CHECK_INT(spool_pending_count(s), 0);
                CHECK_INT(spool_append(s, "x", 1, &seq), 0);
                /* Never a seq of a confirmed record again (the failed one was never
                 * confirmed to anyone, and may come again). */
                CHECK(seq >= handed_out);
        }
}

int main(void) {
        if (!mkdtemp(tmpdir)) {
                perror("mkdtemp");
                return 1;
        }

        test_crc32c();
        test_round_trip();
        test_reopen_order();
        test_unsynced_invisible();
        test_ack_out_of_order();
        test_full();
        test_disk_full();
        test_torn_tail();
        test_zero_tail_and_bad_head();
        test_resync();
        test_resync_segment_tail();
        test_sync_failures();
        test_gc_without_head_keeps_seqs();
        test_read_errors();
        test_seq_monotonic();
        test_stop_start();
        test_crash();
        test_performance();

        rm_rf(tmpdir);
        return TESTS_DONE();
}
