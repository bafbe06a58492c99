/* SPDX-License-Identifier: MIT */

/* On-disk format (all integers little-endian):
 *
 *   <16 hex digits>.seg   segment named by the sequence number of its first record; nothing but
 *                         records, each
 *                           u32 magic "LDS1" | u32 len | u32 crc | u64 seq | len bytes payload
 *                         crc is CRC-32C over len, seq and payload, so a torn write, a zeroed
 *                         tail (delayed allocation after power loss) or a flipped bit shows.
 *   head                  acknowledgement state, replaced atomically:
 *                           u32 magic "LDSH" | u32 version | u64 next_seq | u64 low | u32 n |
 *                           n x u64 acked | u32 crc (CRC-32C of everything before it)
 *                         every seq below low is acknowledged, and so are the n listed ones
 *                         (acks that came out of order); next_seq keeps sequence numbers growing
 *                         when every segment has been deleted.
 *
 * Recovery reads every segment from the start and stops at the first record that is not
 * whole and valid, cutting the file there: with append-only files that is exactly the torn
 * tail of a crash. Segments are never appended to after a restart, so the cut only ever
 * removes bytes that no sync covered (or that the medium damaged).
 *
 * Durability: records reach the disk with one fdatasync() of the segments written since the
 * last spool_sync(); a new segment also needs its directory entry, hence the directory fsync()
 * only then. Acks live in memory until spool_flush() writes the head file. A fully acked
 * segment is unlinked right away; the only ordering that matters is that the head file holds a
 * next_seq above the records of a segment before the newest segment goes, or sequence numbers
 * could repeat after a crash. */

#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/uio.h>

#include "crc32c.h"
#include "fileio.h"
#include "spool.h"
#include "util.h"

#define RECORD_MAGIC UINT32_C(0x3153444c) /* "LDS1" */
#define RECORD_HEADER_SIZE 20U
#define HEAD_MAGIC UINT32_C(0x4853444c) /* "LDSH" */
#define HEAD_VERSION 1U
#define HEAD_FIXED_SIZE 32U /* magic, version, next_seq, low, n and the trailing crc */
#define HEAD_FILE "head"
#define HEAD_TEMP "head.tmp"

/* Small segments let space come back soon after acks; big ones keep the number of files and
 * of directory fsyncs low. max_bytes / 16 between the two bounds does both. */
#define SEGMENT_SIZE_MIN (4U * 1024U)
#define SEGMENT_SIZE_MAX (1024U * 1024U)

typedef struct Segment {
        uint64_t first_seq; /* from the file name */
        uint64_t last_seq;  /* seq of the last record written; may overestimate after a discard */
        uint64_t size;      /* bytes of whole, valid records */
        uint64_t count;     /* records in the file */
        uint64_t unacked;   /* of those, not acknowledged yet */
        int wfd;            /* open for writing while appending or until the next sync */
        bool dirty;         /* written since the last fdatasync() */
} Segment;

typedef struct Entry {
        uint64_t seq;
        uint64_t offset;
        Segment *segment;
        uint32_t len;
        bool acked;
} Entry;

struct Spool {
        int dir_fd;
        uint64_t max_bytes;
        uint64_t segment_target;

        Segment **segments; /* ordered by first_seq */
        size_t n_segments;
        size_t n_segments_allocated;
        Segment *active; /* the last segment, while it takes appends */

        /* Index of the records, ordered by seq; entries[start..n_entries) are live. Acked
         * entries at the front are dropped at once, the others when their segment goes. */
        Entry *entries;
        size_t start;
        size_t n_entries;
        size_t n_entries_allocated;

        uint64_t next_seq;
        uint64_t synced_seq;
        uint64_t persisted_next_seq;
        uint64_t used_bytes;
        uint64_t pending;

        bool ready;      /* recovered: only then may spool_free() sync, flush and delete */
        bool dir_dirty;  /* a segment file was created since the directory was last synced */
        bool acks_dirty; /* acks since the head file was last written */

        Segment *read_segment; /* spool_read() keeps one descriptor open */
        int read_fd;
};

typedef struct HeadState {
        uint64_t next_seq;
        uint64_t low;
        uint64_t *acked;
        size_t n_acked;
} HeadState;

static void put_le32(uint8_t *p, uint32_t v) {
        for (unsigned i = 0; i < 4; i++)
                p[i] = (uint8_t) (v >> (8 * i));
}

static void put_le64(uint8_t *p, uint64_t v) {
        for (unsigned i = 0; i < 8; i++)
                p[i] = (uint8_t) (v >> (8 * i));
}

static uint32_t get_le32(const uint8_t *p) {
        uint32_t v = 0;

        for (unsigned i = 0; i < 4; i++)
                v |= (uint32_t) p[i] << (8 * i);
        return v;
}

static uint64_t get_le64(const uint8_t *p) {
        uint64_t v = 0;

        for (unsigned i = 0; i < 8; i++)
                v |= (uint64_t) p[i] << (8 * i);
        return v;
}

static uint32_t record_crc(const uint8_t header[static RECORD_HEADER_SIZE], const void *payload,
                           size_t len) {
        uint32_t crc;

        crc = crc32c(0, header + 4, 4);                  /* len */
        crc = crc32c(crc, header + 12, 8);               /* seq */
        return crc32c(crc, payload, len);
}

static void record_header(uint8_t header[static RECORD_HEADER_SIZE], uint64_t seq,
                          const void *payload, uint32_t len) {
        put_le32(header, RECORD_MAGIC);
        put_le32(header + 4, len);
        put_le64(header + 12, seq);
        put_le32(header + 8, record_crc(header, payload, len));
}

static void segment_name(uint64_t first_seq, char buf[static 32]) {
        snprintf(buf, 32, "%016" PRIx64 ".seg", first_seq);
}

static bool segment_name_parse(const char *name, uint64_t *ret) {
        uint64_t v = 0;

        if (strlen(name) != 20 || !streq(name + 16, ".seg"))
                return false;
        for (unsigned i = 0; i < 16; i++) {
                char c = name[i];

                if (c >= '0' && c <= '9')
                        v = v << 4 | (uint64_t) (c - '0');
                else if (c >= 'a' && c <= 'f')
                        v = v << 4 | (uint64_t) (c - 'a' + 10);
                else
                        return false;
        }
        *ret = v;
        return true;
}

static int grow(void **p, size_t *allocated, size_t need, size_t size) {
        size_t n;
        void *q;

        if (need <= *allocated)
                return 0;
        n = MAX(need, *allocated * 2);
        n = MAX(n, (size_t) 16);
        if (n > SIZE_MAX / size)
                return -ENOMEM;
        q = realloc(*p, n * size);
        if (!q)
                return -ENOMEM;
        *p = q;
        *allocated = n;
        return 0;
}

static int cmp_u64(const void *a, const void *b) {
        uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;

        return x < y ? -1 : x > y;
}

/* Index of the first live entry with seq >= seq. */
static size_t entry_lower_bound(const Spool *s, uint64_t seq) {
        size_t lo = s->start, hi = s->n_entries;

        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;

                if (s->entries[mid].seq < seq)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        return lo;
}

static Entry *entry_find(Spool *s, uint64_t seq) {
        size_t i = entry_lower_bound(s, seq);

        if (i >= s->n_entries || s->entries[i].seq != seq)
                return NULL;
        return &s->entries[i];
}

static void entries_pop_acked(Spool *s) {
        while (s->start < s->n_entries && s->entries[s->start].acked)
                s->start++;

        if (s->start == s->n_entries)
                s->start = s->n_entries = 0;
        else if (s->start >= 1024 && s->start * 2 >= s->n_entries) {
                memmove(s->entries, s->entries + s->start,
                        (s->n_entries - s->start) * sizeof(Entry));
                s->n_entries -= s->start;
                s->start = 0;
        }
}

static void head_state_done(HeadState *h) {
        free(h->acked);
        *h = (HeadState) {};
}

/* A missing, short or corrupt head file only costs re-delivery, so it reads as empty; only a
 * failure to open or read it is an error. */
static int head_load(Spool *s, HeadState *ret) {
        _cleanup_close_ int fd = -EBADF;
        _cleanup_free_ uint8_t *buf = NULL;
        _cleanup_free_ uint64_t *acked = NULL;
        struct stat st;
        uint32_t n;
        int r;

        *ret = (HeadState) {};

        fd = openat(s->dir_fd, HEAD_FILE, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0)
                return errno == ENOENT ? 0 : -errno;
        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode) || st.st_size < HEAD_FIXED_SIZE ||
            (uint64_t) st.st_size > HEAD_FIXED_SIZE + 8ULL * UINT32_MAX)
                return 0;

        buf = malloc((size_t) st.st_size);
        if (!buf)
                return -ENOMEM;
        r = pread_full(fd, buf, (size_t) st.st_size, 0);
        if (r < 0)
                return r;

        n = get_le32(buf + 24);
        if (get_le32(buf) != HEAD_MAGIC || get_le32(buf + 4) != HEAD_VERSION ||
            (uint64_t) st.st_size != HEAD_FIXED_SIZE + 8ULL * n ||
            get_le32(buf + st.st_size - 4) != crc32c(0, buf, (size_t) st.st_size - 4))
                return 0;

        if (n > 0) {
                acked = malloc(n * sizeof(uint64_t));
                if (!acked)
                        return -ENOMEM;
        }
        for (uint32_t i = 0; i < n; i++) {
                acked[i] = get_le64(buf + 28 + 8 * (size_t) i);
                if (i > 0 && acked[i] <= acked[i - 1])
                        return 0; /* written sorted; anything else is not ours */
        }

        *ret = (HeadState) {
                .next_seq = get_le64(buf + 8),
                .low = get_le64(buf + 16),
                .acked = TAKE_PTR(acked),
                .n_acked = n,
        };
        return 0;
}

static bool head_state_is_acked(const HeadState *h, uint64_t seq) {
        if (seq < h->low)
                return true;
        return h->n_acked > 0 &&
               bsearch(&seq, h->acked, h->n_acked, sizeof(uint64_t), cmp_u64) != NULL;
}

/* Writes the head file atomically. Also makes every directory change so far durable (created
 * and unlinked segments), since it ends with an fsync() of the directory. */
static int spool_write_head(Spool *s) {
        _cleanup_free_ uint8_t *buf = NULL;
        _cleanup_close_ int fd = -EBADF;
        size_t n = 0, size, j = 28;
        uint64_t low;

        low = s->start < s->n_entries ? s->entries[s->start].seq : s->next_seq;
        for (size_t i = s->start; i < s->n_entries; i++)
                if (s->entries[i].acked)
                        n++;
        if (n > UINT32_MAX)
                return -E2BIG;

        size = HEAD_FIXED_SIZE + 8 * n;
        buf = malloc(size);
        if (!buf)
                return -ENOMEM;
        put_le32(buf, HEAD_MAGIC);
        put_le32(buf + 4, HEAD_VERSION);
        put_le64(buf + 8, s->next_seq);
        put_le64(buf + 16, low);
        put_le32(buf + 24, (uint32_t) n);
        for (size_t i = s->start; i < s->n_entries; i++)
                if (s->entries[i].acked) {
                        put_le64(buf + j, s->entries[i].seq);
                        j += 8;
                }
        put_le32(buf + j, crc32c(0, buf, j));

        fd = openat(s->dir_fd, HEAD_TEMP, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW,
                    0600);
        if (fd < 0)
                return -errno;
        if (write_full(fd, buf, size) < 0 || fsync(fd) < 0) {
                int r = -errno;

                (void) unlinkat(s->dir_fd, HEAD_TEMP, 0);
                return r;
        }
        fd = safe_close(fd);
        if (renameat(s->dir_fd, HEAD_TEMP, s->dir_fd, HEAD_FILE) < 0) {
                int r = -errno;

                (void) unlinkat(s->dir_fd, HEAD_TEMP, 0);
                return r;
        }
        if (fsync(s->dir_fd) < 0)
                return -errno;

        s->persisted_next_seq = s->next_seq;
        s->acks_dirty = false;
        s->dir_dirty = false;
        return 0;
}

static Segment *segment_new(uint64_t first_seq) {
        Segment *seg = calloc(1, sizeof(Segment));

        if (!seg)
                return NULL;
        seg->first_seq = first_seq;
        seg->wfd = -EBADF;
        return seg;
}

static int segments_push(Spool *s, Segment *seg) {
        int r;

        r = grow((void **) &s->segments, &s->n_segments_allocated, s->n_segments + 1,
                 sizeof(Segment *));
        if (r < 0)
                return r;
        s->segments[s->n_segments++] = seg;
        return 0;
}

/* Removes segment i, its file and its (all acknowledged) index entries. */
static int segment_remove(Spool *s, size_t i) {
        Segment *seg = s->segments[i];
        char name[32];

        if (seg->unacked > 0)
                return -EBUSY;

        segment_name(seg->first_seq, name);
        if (unlinkat(s->dir_fd, name, 0) < 0 && errno != ENOENT)
                return -errno;

        if (seg->count > 0) {
                size_t a = entry_lower_bound(s, seg->first_seq), b = a;

                while (b < s->n_entries && s->entries[b].segment == seg)
                        b++;
                memmove(s->entries + a, s->entries + b, (s->n_entries - b) * sizeof(Entry));
                s->n_entries -= b - a;
                entries_pop_acked(s);
        }

        if (s->read_segment == seg) {
                s->read_fd = safe_close(s->read_fd);
                s->read_segment = NULL;
        }
        if (s->active == seg)
                s->active = NULL;
        safe_close(seg->wfd);
        s->used_bytes -= seg->size;
        memmove(s->segments + i, s->segments + i + 1, (s->n_segments - i - 1) * sizeof(Segment *));
        s->n_segments--;
        free(seg);
        return 0;
}

static bool segment_removable(const Spool *s, const Segment *seg) {
        return seg != s->active && seg->unacked == 0 && !seg->dirty;
}

/* Deletes the segments whose records are all acknowledged. If one of them holds the highest
 * seq the head file knows of, the head file is written first, so the next start does not hand
 * out the same sequence numbers again. */
static int spool_gc(Spool *s) {
        bool need_head = false;
        int r;

        for (size_t i = 0; i < s->n_segments; i++) {
                Segment *seg = s->segments[i];

                if (segment_removable(s, seg) && seg->count > 0 &&
                    seg->last_seq >= s->persisted_next_seq)
                        need_head = true;
        }
        if (need_head) {
                r = spool_write_head(s);
                if (r < 0)
                        return r;
        }

        for (size_t i = 0; i < s->n_segments;) {
                if (!segment_removable(s, s->segments[i])) {
                        i++;
                        continue;
                }
                r = segment_remove(s, i);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* Reads one segment into the index, cutting it at the first record that is not whole and
 * valid. */
static int segment_load(Spool *s, Segment *seg, const HeadState *h, uint64_t *last_seq) {
        _cleanup_close_ int fd = -EBADF;
        _cleanup_free_ uint8_t *payload = NULL;
        size_t payload_allocated = 0;
        uint64_t offset = 0, file_size;
        char name[32];
        struct stat st;
        int r;

        segment_name(seg->first_seq, name);
        fd = openat(s->dir_fd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode))
                return -EUCLEAN;
        file_size = (uint64_t) st.st_size;

        for (;;) {
                uint8_t header[RECORD_HEADER_SIZE];
                uint32_t len;
                uint64_t seq;
                Entry *e;

                if (file_size - offset < RECORD_HEADER_SIZE)
                        break;
                r = pread_full(fd, header, sizeof(header), offset);
                if (r < 0)
                        return r;
                len = get_le32(header + 4);
                seq = get_le64(header + 12);
                if (get_le32(header) != RECORD_MAGIC || len > SPOOL_RECORD_MAX ||
                    file_size - offset - RECORD_HEADER_SIZE < len || seq <= *last_seq ||
                    seq < seg->first_seq || seq == UINT64_MAX)
                        break;

                r = grow((void **) &payload, &payload_allocated, MAX(len, 1U), 1);
                if (r < 0)
                        return r;
                r = pread_full(fd, payload, len, offset + RECORD_HEADER_SIZE);
                if (r < 0)
                        return r;
                if (get_le32(header + 8) != record_crc(header, payload, len))
                        break;

                r = grow((void **) &s->entries, &s->n_entries_allocated, s->n_entries + 1,
                         sizeof(Entry));
                if (r < 0)
                        return r;
                e = &s->entries[s->n_entries++];
                *e = (Entry) {
                        .seq = seq,
                        .offset = offset,
                        .segment = seg,
                        .len = len,
                        .acked = head_state_is_acked(h, seq),
                };
                seg->count++;
                if (!e->acked) {
                        seg->unacked++;
                        s->pending++;
                }
                seg->last_seq = seq;
                *last_seq = seq;
                offset += RECORD_HEADER_SIZE + len;
        }

        seg->size = offset;
        s->used_bytes += offset;

        if (offset < file_size) {
                /* The torn tail of a crash (or damage): cut it off so that nothing ever reads
                 * it. Best effort: the segment is never appended to again, and if the cut
                 * fails the next start cuts at the same place. */
                _cleanup_close_ int wfd = openat(s->dir_fd, name,
                                                 O_WRONLY | O_CLOEXEC | O_NOFOLLOW);

                if (wfd >= 0 && ftruncate(wfd, (off_t) offset) >= 0)
                        (void) fsync(wfd);
        }
        return 0;
}

static int spool_recover(Spool *s, const HeadState *h) {
        _cleanup_free_ uint64_t *firsts = NULL;
        size_t n = 0, allocated = 0;
        uint64_t last_seq = 0;
        DIR *d;
        int fd, r = 0;

        fd = dup(s->dir_fd);
        if (fd < 0)
                return -errno;
        d = fdopendir(fd);
        if (!d) {
                r = -errno;
                safe_close(fd);
                return r;
        }
        rewinddir(d);
        for (;;) {
                struct dirent *de;
                uint64_t first;

                errno = 0;
                de = readdir(d);
                if (!de) {
                        r = -errno;
                        break;
                }
                if (streq(de->d_name, HEAD_TEMP)) {
                        /* A head write that never reached its rename. */
                        (void) unlinkat(s->dir_fd, HEAD_TEMP, 0);
                        continue;
                }
                if (!segment_name_parse(de->d_name, &first))
                        continue;
                r = grow((void **) &firsts, &allocated, n + 1, sizeof(uint64_t));
                if (r < 0)
                        break;
                firsts[n++] = first;
        }
        closedir(d);
        if (r < 0)
                return r;

        if (n > 0)
                qsort(firsts, n, sizeof(uint64_t), cmp_u64);
        for (size_t i = 0; i < n; i++) {
                Segment *seg = segment_new(firsts[i]);

                if (!seg)
                        return -ENOMEM;
                r = segments_push(s, seg);
                if (r < 0) {
                        free(seg);
                        return r;
                }
                r = segment_load(s, seg, h, &last_seq);
                if (r < 0)
                        return r;
        }

        s->next_seq = MAX(MAX(h->next_seq, last_seq + 1), (uint64_t) 1);
        s->synced_seq = s->next_seq - 1;
        entries_pop_acked(s);
        return 0;
}

int spool_open(const char *dir, uint64_t max_bytes, Spool **ret) {
        _cleanup_(head_state_done) HeadState h = {};
        Spool *s;
        bool created = false;
        int r;

        if (!dir || !ret || max_bytes <= RECORD_HEADER_SIZE)
                return -EINVAL;

        if (mkdir(dir, 0700) >= 0)
                created = true;
        else if (errno != EEXIST)
                return -errno;
        if (created) {
                /* The promise of durability includes the directory itself. */
                r = fsync_parent_directory(dir);
                if (r < 0)
                        return r;
        }

        s = calloc(1, sizeof(Spool));
        if (!s)
                return -ENOMEM;
        s->dir_fd = -EBADF;
        s->read_fd = -EBADF;
        s->max_bytes = max_bytes;
        s->segment_target = MIN(MAX(max_bytes / 16, (uint64_t) SEGMENT_SIZE_MIN),
                                (uint64_t) SEGMENT_SIZE_MAX);

        s->dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (s->dir_fd < 0) {
                r = -errno;
                goto fail;
        }
        if (flock(s->dir_fd, LOCK_EX | LOCK_NB) < 0) {
                r = errno == EWOULDBLOCK ? -EBUSY : -errno;
                goto fail;
        }

        r = head_load(s, &h);
        if (r < 0)
                goto fail;
        r = spool_recover(s, &h);
        if (r < 0)
                goto fail;

        /* Always rewrite the head: it records next_seq and drops acks of records that are
         * gone, before spool_gc() deletes what was fully acknowledged. */
        r = spool_write_head(s);
        if (r < 0)
                goto fail;
        r = spool_gc(s);
        if (r < 0)
                goto fail;

        s->ready = true;
        *ret = s;
        return 0;

fail:
        /* A half-recovered index must not drive deletions: free without syncing or flushing. */
        spool_free(s);
        return r;
}

Spool *spool_free(Spool *s) {
        if (!s)
                return NULL;

        if (s->ready) {
                (void) spool_sync(s);
                (void) spool_flush(s);
        }

        for (size_t i = 0; i < s->n_segments; i++) {
                safe_close(s->segments[i]->wfd);
                free(s->segments[i]);
        }
        free(s->segments);
        free(s->entries);
        safe_close(s->read_fd);
        safe_close(s->dir_fd);
        free(s);
        return NULL;
}

static int segment_create(Spool *s) {
        Segment *seg;
        char name[32];
        int r;

        seg = segment_new(s->next_seq);
        if (!seg)
                return -ENOMEM;
        segment_name(seg->first_seq, name);
        seg->wfd = openat(s->dir_fd, name,
                          O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (seg->wfd < 0) {
                r = -errno;
                free(seg);
                return r;
        }
        r = segments_push(s, seg);
        if (r < 0) {
                safe_close(seg->wfd);
                (void) unlinkat(s->dir_fd, name, 0);
                free(seg);
                return r;
        }
        s->active = seg;
        s->dir_dirty = true;
        return 0;
}

/* Stops appending to the active segment; its descriptor stays open until the next sync if
 * there is something left to sync. */
static void segment_finish(Spool *s) {
        Segment *seg = s->active;

        if (!seg)
                return;
        s->active = NULL;
        if (!seg->dirty)
                seg->wfd = safe_close(seg->wfd);
}

int spool_append(Spool *s, const void *data, size_t len, uint64_t *ret_seq) {
        uint8_t header[RECORD_HEADER_SIZE];
        struct iovec iov[2];
        uint64_t size;
        Segment *seg;
        int r;

        if (!s)
                return -EINVAL;
        if (len > SPOOL_RECORD_MAX || RECORD_HEADER_SIZE + len > s->max_bytes)
                return -E2BIG;
        if (!data && len > 0)
                return -EINVAL;
        if (s->next_seq == UINT64_MAX)
                return -EOVERFLOW;
        size = RECORD_HEADER_SIZE + len;

        if (s->used_bytes + size > s->max_bytes && s->active && s->active->unacked == 0) {
                /* The active segment holds only delivered records: retire it to make room. */
                segment_finish(s);
                (void) spool_gc(s);
        }
        if (s->used_bytes + size > s->max_bytes)
                return -ENOSPC;

        if (s->active && s->active->size > 0 && s->active->size + size > s->segment_target) {
                Segment *full = s->active;

                segment_finish(s);
                /* Already delivered in full: it can go now rather than at the next flush. */
                if (segment_removable(s, full))
                        (void) spool_gc(s);
        }
        if (!s->active) {
                r = segment_create(s);
                if (r < 0)
                        return r;
        }
        seg = s->active;

        r = grow((void **) &s->entries, &s->n_entries_allocated, s->n_entries + 1, sizeof(Entry));
        if (r < 0)
                return r;

        record_header(header, s->next_seq, data, (uint32_t) len);
        iov[0] = (struct iovec) { .iov_base = header, .iov_len = sizeof(header) };
        iov[1] = (struct iovec) { .iov_base = (void *) data, .iov_len = len };
        seg->dirty = true;
        r = pwritev_full(seg->wfd, iov, len > 0 ? 2 : 1, seg->size);
        if (r < 0) {
                /* Leave no partial record behind for the next append to follow. */
                (void) ftruncate(seg->wfd, (off_t) seg->size);
                return r;
        }

        s->entries[s->n_entries++] = (Entry) {
                .seq = s->next_seq,
                .offset = seg->size,
                .segment = seg,
                .len = (uint32_t) len,
        };
        seg->size += size;
        seg->count++;
        seg->unacked++;
        seg->last_seq = s->next_seq;
        s->used_bytes += size;
        s->pending++;

        if (ret_seq)
                *ret_seq = s->next_seq;
        s->next_seq++;
        return 0;
}

/* After a failed fsync the unsynced records cannot be trusted: forget them and cut them off
 * the files, and start a new segment for what comes next. */
static void spool_discard_unsynced(Spool *s) {
        while (s->n_entries > s->start && s->entries[s->n_entries - 1].seq > s->synced_seq) {
                Entry *e = &s->entries[--s->n_entries];
                Segment *seg = e->segment;

                s->used_bytes -= seg->size - e->offset;
                seg->size = e->offset;
                seg->count--;
                seg->unacked--;
                s->pending--;
        }
        if (s->start == s->n_entries)
                s->start = s->n_entries = 0;

        s->active = NULL;
        for (size_t i = 0; i < s->n_segments; i++) {
                Segment *seg = s->segments[i];

                if (seg->wfd < 0)
                        continue;
                (void) ftruncate(seg->wfd, (off_t) seg->size);
                seg->wfd = safe_close(seg->wfd);
                seg->dirty = false;
        }
        (void) spool_gc(s);
}

int spool_sync(Spool *s) {
        int r = 0;

        if (!s)
                return -EINVAL;

        for (size_t i = 0; i < s->n_segments; i++) {
                Segment *seg = s->segments[i];

                if (seg->wfd < 0)
                        continue;
                if (seg->dirty) {
                        if (fdatasync(seg->wfd) < 0) {
                                r = -errno;
                                break;
                        }
                        seg->dirty = false;
                }
                if (seg != s->active)
                        seg->wfd = safe_close(seg->wfd);
        }
        if (r >= 0 && s->dir_dirty) {
                if (fsync(s->dir_fd) < 0)
                        r = -errno;
                else
                        s->dir_dirty = false;
        }
        if (r < 0) {
                spool_discard_unsynced(s);
                return r;
        }

        s->synced_seq = s->next_seq - 1;
        return 0;
}

/* The entry of a synced record not yet acknowledged, or NULL. */
static Entry *entry_find_visible(Spool *s, uint64_t seq) {
        Entry *e;

        if (seq > s->synced_seq)
                return NULL;
        e = entry_find(s, seq);
        if (!e || e->acked)
                return NULL;
        return e;
}

int spool_next(Spool *s, uint64_t after_seq, uint64_t *ret_seq) {
        if (!s || after_seq == UINT64_MAX)
                return -ENOENT;

        for (size_t i = entry_lower_bound(s, after_seq + 1); i < s->n_entries; i++) {
                const Entry *e = &s->entries[i];

                if (e->seq > s->synced_seq)
                        break;
                if (e->acked)
                        continue;
                if (ret_seq)
                        *ret_seq = e->seq;
                return 0;
        }
        return -ENOENT;
}

int spool_read(Spool *s, uint64_t seq, void **ret_data, size_t *ret_len) {
        _cleanup_free_ uint8_t *buf = NULL;
        Entry *e;
        int r;

        if (!s || !ret_data)
                return -EINVAL;
        e = entry_find_visible(s, seq);
        if (!e)
                return -ENOENT;

        if (s->read_segment != e->segment) {
                char name[32];

                s->read_fd = safe_close(s->read_fd);
                s->read_segment = NULL;
                segment_name(e->segment->first_seq, name);
                s->read_fd = openat(s->dir_fd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
                if (s->read_fd < 0) {
                        r = -errno;
                        s->read_fd = -EBADF;
                        return r;
                }
                s->read_segment = e->segment;
        }

        buf = malloc(RECORD_HEADER_SIZE + (size_t) e->len);
        if (!buf)
                return -ENOMEM;
        r = pread_full(s->read_fd, buf, RECORD_HEADER_SIZE + (size_t) e->len, e->offset);
        if (r < 0)
                return r;
        if (get_le32(buf) != RECORD_MAGIC || get_le32(buf + 4) != e->len ||
            get_le64(buf + 12) != seq ||
            get_le32(buf + 8) != record_crc(buf, buf + RECORD_HEADER_SIZE, e->len))
                return -EBADMSG;

        memmove(buf, buf + RECORD_HEADER_SIZE, e->len);
        if (ret_len)
                *ret_len = e->len;
        *ret_data = TAKE_PTR(buf);
        return 0;
}

int spool_ack(Spool *s, uint64_t seq) {
        Segment *seg;
        Entry *e;

        if (!s)
                return -EINVAL;
        e = entry_find_visible(s, seq);
        if (!e)
                return -ENOENT;

        seg = e->segment;
        e->acked = true;
        seg->unacked--;
        s->pending--;
        s->acks_dirty = true;
        entries_pop_acked(s);

        /* The ack is done; if deleting the segment fails, spool_flush() retries and reports. */
        if (segment_removable(s, seg))
                (void) spool_gc(s);
        return 0;
}

int spool_flush(Spool *s) {
        int r;

        if (!s)
                return -EINVAL;
        if (s->acks_dirty) {
                r = spool_write_head(s);
                if (r < 0)
                        return r;
        }
        return spool_gc(s);
}

uint64_t spool_pending_count(const Spool *s) {
        return s ? s->pending : 0;
}

uint64_t spool_used_bytes(const Spool *s) {
        return s ? s->used_bytes : 0;
}
