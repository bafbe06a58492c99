/* SPDX-License-Identifier: MIT */

/* outbox_next() against a fake source that fails on demand, and against the real spool. */

#include <fcntl.h>
#include <stdlib.h>

#include "outbox.h"
#include "spool.h"
#include "tests.h"
#include "util.h"

static char tmpdir[] = "/tmp/test-outbox-XXXXXX";

typedef struct FakeRecord {
        uint64_t seq;
        bool bad; /* fails its checksum */
        bool acked;
} FakeRecord;

typedef struct Fake {
        FakeRecord records[8];
        size_t n_records;
        int next_error; /* returned by next() while set */
        int read_error; /* returned by read() while set */
        int ack_error;  /* returned by ack() while set */
        unsigned n_acks;
        uint64_t skipped[8];
        size_t n_skipped;
} Fake;

static int fake_next(void *userdata, uint64_t after_seq, uint64_t *ret_seq) {
        Fake *f = userdata;

        if (f->next_error < 0)
                return f->next_error;
        for (size_t i = 0; i < f->n_records; i++)
                if (f->records[i].seq > after_seq && !f->records[i].acked) {
                        *ret_seq = f->records[i].seq;
                        return 0;
                }
        return -ENOENT;
}

static FakeRecord *fake_find(Fake *f, uint64_t seq) {
        for (size_t i = 0; i < f->n_records; i++)
                if (f->records[i].seq == seq && !f->records[i].acked)
                        return &f->records[i];
        return NULL;
}

static int fake_read(void *userdata, uint64_t seq, void **ret_data, size_t *ret_len) {
        Fake *f = userdata;
        FakeRecord *r = fake_find(f, seq);
        char *data;

        if (f->read_error < 0)
                return f->read_error;
        if (!r)
                return -ENOENT;
        if (r->bad)
                return -EBADMSG;
        data = strdup_printf("record %" PRIu64, seq);
        if (!data)
                return -ENOMEM;
        *ret_data = data;
        *ret_len = strlen(data);
        return 0;
}

static int fake_ack(void *userdata, uint64_t seq) {
        Fake *f = userdata;
        FakeRecord *r = fake_find(f, seq);

        if (f->ack_error < 0)
                return f->ack_error;
        if (!r)
                return -ENOENT;
        r->acked = true;
        f->n_acks++;
        return 0;
}

static const OutboxSource fake_source = {
        .next = fake_next,
        .read = fake_read,
        .ack = fake_ack,
};

static void on_skipped(uint64_t seq, void *userdata) {
        Fake *f = userdata;

        if (f->n_skipped < ELEMENTSOF(f->skipped))
                f->skipped[f->n_skipped++] = seq;
}

/* One call on the fake; returns what outbox_next() did and checks the record it handed out. */
static int fake_call(Fake *f, uint64_t *cursor, uint64_t *ret_seq) {
        _cleanup_free_ void *data = NULL;
        size_t len = 0;
        int r;

        *ret_seq = 0;
        r = outbox_next(&fake_source, f, cursor, on_skipped, f, ret_seq, &data, &len);
        if (r > 0) {
                _cleanup_free_ char *expect = strdup_printf("record %" PRIu64, *ret_seq);

                CHECK(data && len == strlen(expect) && memcmp(data, expect, len) == 0);
        } else
                CHECK(!data);
        return r;
}

static void test_transient(void) {
        static const int errors[] = { -EIO, -EMFILE, -ENOMEM };

        for (size_t i = 0; i < ELEMENTSOF(errors); i++)
                for (unsigned where = 0; where < 3; where++) {
                        Fake f = {
                                .records = { { .seq = 3 }, { .seq = 4 } },
                                .n_records = 2,
                        };
                        uint64_t cursor = 2, seq = 0;

                        if (where == 0)
                                f.next_error = errors[i];
                        else if (where == 1)
                                f.read_error = errors[i];
                        else {
                                /* A bad record first: its ack fails, so it stays. */
                                f.records[0].bad = true;
                                f.ack_error = errors[i];
                        }

                        CHECK_INT(fake_call(&f, &cursor, &seq), errors[i]);
                        CHECK_INT(cursor, 2);
                        CHECK_INT(f.n_acks, 0);
                        CHECK_INT(f.n_skipped, 0);
                        CHECK(!f.records[0].acked && !f.records[1].acked);
                        /* Again, still failing: the same. */
                        CHECK_INT(fake_call(&f, &cursor, &seq), errors[i]);
                        CHECK_INT(cursor, 2);
                        CHECK_INT(f.n_acks, 0);

                        /* The fault clears: the record comes. */
                        f.next_error = f.read_error = f.ack_error = 0;
                        CHECK_INT(fake_call(&f, &cursor, &seq), 1);
                        CHECK_INT(seq, where == 2 ? 4 : 3);
                        CHECK_INT(cursor, seq);
                        CHECK_INT(f.n_acks, where == 2 ? 1 : 0);
                }
}

static void test_bad_records(void) {
        Fake f = {
                .records = { { .seq = 1, .bad = true }, { .seq = 2 }, { .seq = 5, .bad = true },
                             { .seq = 6, .bad = true }, { .seq = 9 } },
                .n_records = 5,
        };
        uint64_t cursor = 0, seq = 0;

        CHECK_INT(fake_call(&f, &cursor, &seq), 1);
        CHECK_INT(seq, 2);
        CHECK_INT(cursor, 2);
        CHECK_INT(f.n_skipped, 1);
        CHECK_INT(f.skipped[0], 1);
        CHECK(f.records[0].acked);
        CHECK(!f.records[1].acked); /* the caller acks what it sent */

        /* Two bad ones in a row, then the good one. */
        CHECK_INT(fake_call(&f, &cursor, &seq), 1);
        CHECK_INT(seq, 9);
        CHECK_INT(cursor, 9);
        CHECK_INT(f.n_skipped, 3);
        CHECK(f.skipped[1] == 5 && f.skipped[2] == 6);
        CHECK(f.records[2].acked && f.records[3].acked);
        CHECK_INT(f.n_acks, 3);

        /* End of records. */
        CHECK_INT(fake_call(&f, &cursor, &seq), 0);
        CHECK_INT(cursor, 9);
        CHECK_INT(seq, 0);

        /* skipped() may be NULL. */
        {
                Fake g = { .records = { { .seq = 10, .bad = true } }, .n_records = 1 };
                void *data = NULL;
                size_t len = 0;

                cursor = 9;
                CHECK_INT(outbox_next(&fake_source, &g, &cursor, NULL, NULL, &seq, &data, &len), 0);
                CHECK_INT(cursor, 10);
                CHECK(g.records[0].acked);
                CHECK(!data);
        }
}

/* next() fails on a given call: after a skipped record, the cursor stays past that one. */
typedef struct Staged {
        Fake fake;
        unsigned next_calls;
        unsigned fail_next_call; /* next() call number that fails with -EIO */
} Staged;

static int staged_next(void *userdata, uint64_t after_seq, uint64_t *ret_seq) {
        Staged *s = userdata;

        if (++s->next_calls == s->fail_next_call)
                return -EIO;
        return fake_next(&s->fake, after_seq, ret_seq);
}

static int staged_read(void *userdata, uint64_t seq, void **ret_data, size_t *ret_len) {
        return fake_read(&((Staged *) userdata)->fake, seq, ret_data, ret_len);
}

static int staged_ack(void *userdata, uint64_t seq) {
        return fake_ack(&((Staged *) userdata)->fake, seq);
}

static void test_skip_then_error(void) {
        static const OutboxSource src = { staged_next, staged_read, staged_ack };
        Staged st = {
                .fake = { .records = { { .seq = 10, .bad = true }, { .seq = 11 } }, .n_records = 2 },
                .fail_next_call = 2,
        };
        _cleanup_free_ void *data = NULL;
        uint64_t cursor = 9, seq = 0;
        size_t len = 0;

        CHECK_INT(outbox_next(&src, &st, &cursor, on_skipped, &st.fake, &seq, &data, &len), -EIO);
        CHECK_INT(cursor, 10);
        CHECK_INT(st.fake.n_skipped, 1);
        CHECK_INT(st.fake.skipped[0], 10);
        CHECK_INT(st.fake.n_acks, 1);
        CHECK(!data);

        CHECK_INT(outbox_next(&src, &st, &cursor, on_skipped, &st.fake, &seq, &data, &len), 1);
        CHECK_INT(seq, 11);
        CHECK_INT(cursor, 11);
        CHECK_INT(st.fake.n_skipped, 1);
}

static void test_invalid(void) {
        static const OutboxSource broken = { fake_next, NULL, fake_ack };
        Fake f = { .records = { { .seq = 1 } }, .n_records = 1 };
        uint64_t cursor = 0, seq;
        void *data = NULL;
        size_t len;

        CHECK_INT(outbox_next(NULL, &f, &cursor, NULL, NULL, &seq, &data, &len), -EINVAL);
        CHECK_INT(outbox_next(&broken, &f, &cursor, NULL, NULL, &seq, &data, &len), -EINVAL);
        CHECK_INT(outbox_next(&fake_source, &f, NULL, NULL, NULL, &seq, &data, &len), -EINVAL);
        CHECK_INT(outbox_next(&fake_source, &f, &cursor, NULL, NULL, &seq, NULL, &len), -EINVAL);
        CHECK_INT(cursor, 0);
        CHECK_INT(f.n_acks, 0);
}

/* The spool as the source, with a record whose payload the medium changed. */
static int spool_src_next(void *userdata, uint64_t after_seq, uint64_t *ret_seq) {
        return spool_next(userdata, after_seq, ret_seq);
}

static int spool_src_read(void *userdata, uint64_t seq, void **ret_data, size_t *ret_len) {
        return spool_read(userdata, seq, ret_data, ret_len);
}

static int spool_src_ack(void *userdata, uint64_t seq) {
        return spool_ack(userdata, seq);
}

static void count_skipped(uint64_t seq, void *userdata) {
        uint64_t *last = userdata;

        *last = seq;
}

static void test_spool_source(void) {
        static const OutboxSource src = { spool_src_next, spool_src_read, spool_src_ack };
        _cleanup_free_ char *dir = strdup_printf("%s/spool", tmpdir),
                            *seg = strdup_printf("%s/spool/0000000000000001.seg", tmpdir);
        uint64_t cursor = 0, seq = 0, skipped = 0;
        Spool *s = NULL;
        unsigned sent = 0;
        int fd, r;
        char c;

        CHECK_INT(spool_open(dir, 1 << 20, &s), 0);
        if (!s)
                return;
        for (unsigned i = 1; i <= 5; i++) {
                char buf[16];
                int k = snprintf(buf, sizeof(buf), "obs-%u", i);

                CHECK_INT(spool_append(s, buf, (size_t) k, NULL), 0);
        }
        CHECK_INT(spool_sync(s), 0);

        /* Every record is 20 + 5 bytes: flip a payload byte of seq 3. */
        fd = open(seg, O_RDWR | O_CLOEXEC);
        CHECK(fd >= 0);
        CHECK_INT(pread(fd, &c, 1, 2 * 25 + 20), 1);
        c ^= 1;
        CHECK_INT(pwrite(fd, &c, 1, 2 * 25 + 20), 1);
        close(fd);

        for (;;) {
                _cleanup_free_ void *data = NULL;
                char expect[16];
                size_t len = 0;

                r = outbox_next(&src, s, &cursor, count_skipped, &skipped, &seq, &data, &len);
                if (r <= 0)
                        break;
                snprintf(expect, sizeof(expect), "obs-%" PRIu64, seq);
                CHECK(len == strlen(expect) && memcmp(data, expect, len) == 0);
                CHECK(seq != 3);
                CHECK_INT(spool_ack(s, seq), 0);
                sent++;
        }
        CHECK_INT(r, 0);
        CHECK_INT(sent, 4);
        CHECK_INT(skipped, 3);
        CHECK_INT(cursor, 5);
        CHECK_INT(spool_pending_count(s), 0);
        spool_free(s);
}

int main(void) {
        if (!mkdtemp(tmpdir)) {
                perror("mkdtemp");
                return 1;
        }
        test_transient();
        test_bad_records();
        test_skip_then_error();
        test_invalid();
        test_spool_source();
        {
                _cleanup_free_ char *cmd = strdup_printf("rm -rf '%s'", tmpdir);

                (void) system(cmd);
        }
        return TESTS_DONE();
}
