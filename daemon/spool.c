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
 * Recovery reads every segment from the start. Where a record is not whole and valid it
 * looks for the next offset holding one (magic, plausible header, CRC) and goes on from there,
 * so damage in the middle of a segment costs only the records it hit. Damage that runs to the
 * end of a segment is cut off the file: with append-only files that is the torn tail of a
 * crash. Segments are never appended to after a restart, so the cut only ever removes bytes
 * that no sync covered (or that the medium damaged).
 *
 * Durability: records reach the disk with one fdatasync() of the segments written since the
 * last spool_sync(); a new segment also needs its directory entry, hence the directory fsync()
 * only then. When a sync fails, its records are cut off every file they went to (even one
 * whose own fdatasync() worked: the callers are told they failed) and segments created for
 * them are deleted, before anything else is appended. Acks live in memory until spool_flush()
 * writes the head file. A fully acked segment is unlinked right away; the only ordering that
 * matters is that sequence numbers never repeat after a crash, which recovery derives from the
 * head file's next_seq, the records and the names of the segment files. So a segment may go
 * without a head write while a newer segment file stays (its name is above every seq of the
 * older one); only the newest segment needs the head file to hold a next_seq above its records
 * first.
 *
 * A full file system: deleting delivered segments frees space and never needs any, and the
 * segments that can go without a head write go first. Writing the head file (temp file,
 * rename) needs a few blocks until the old one is freed: a preallocated "reserve" file holds
 * them. When that write fails for lack of space the reserve is released and the write tried
 * again; appends are refused (-ENOSPC) until the reserve could be filled again, so that new
 * records never take the room that recording acknowledgements needs. */

#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdint.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/uio.h>

#include "crc32c.h"
#include "fileio.h"
#include "spool.h"
#include "state-dir.h"
#include "util.h"

#define RECORD_MAGIC UINT32_C(0x3153444c) /* "LDS1" */
#define RECORD_HEADER_SIZE 20U
#define HEAD_MAGIC UINT32_C(0x4853444c) /* "LDSH" */
#define HEAD_VERSION 1U
#define HEAD_FIXED_SIZE 32U /* magic, version, next_seq, low, n and the trailing crc */
#define HEAD_FILE "head"
#define HEAD_TEMP "head.tmp"
/* STATE_DIR_RESERVE_SIZE holds several head files of thousands of out-of-order acks; ack gaps
 * are bounded by the messages in flight (100), so it is never short in practice. */

/* Small segments let space come back soon after acks; big ones keep the number of files and
 * of directory fsyncs low. max_bytes / 16 between the two bounds does both. */
#define SEGMENT_SIZE_MIN (4U * 1024U)
#define SEGMENT_SIZE_MAX (1024U * 1024U)

typedef struct Segment {
        uint64_t first_seq;   /* from the file name */
        uint64_t last_seq;    /* seq of the last record written; may overestimate after a discard */
        uint64_t size;        /* bytes of whole, valid records */
        uint64_t synced_size; /* of those, made durable by the last successful sync */
        uint64_t count;       /* records in the file */
        uint64_t unacked;     /* of those, not acknowledged yet */
        int wfd;              /* open for writing while appending or until the next sync */
        bool dirty;           /* written since the last successful spool_sync() */
        bool created;         /* the file was created since the last successful spool_sync() */
        bool cut;             /* a failed sync's records must still be cut off the file */
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

        bool ready;           /* recovered: only then may spool_free() sync, flush and delete */
        bool dir_dirty;       /* a segment file was created since the directory was last synced */
        bool acks_dirty;      /* acks since the head file was last written */
        bool cleanup_pending; /* a failed sync's records are not yet cut off the files */
        StateDirReserve reserve;
        int dir_error;        /* a directory fsync() that failed while dir_dirty */

        SpoolLoss *losses; /* what recovery skipped, at most SPOOL_LOSSES_MAX */
        size_t n_losses;
        size_t n_losses_found;

        Segment *read_segment; /* spool_read() keeps one descriptor open */
        int read_fd;
};

int (*spool_fdatasync_hook)(int fd) = fdatasync;
int (*spool_fsync_hook)(int fd) = fsync;

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

/* fsync() of the directory: created segments' entries and unlinks become durable. */
static int spool_sync_dir(Spool *s) {
        if (spool_fsync_hook(s->dir_fd) < 0) {
                int r = -errno;

                /* The kernel may have dropped a new segment's entry and will not say so again:
                 * the records in it are lost even if a later fsync() succeeds. */
                if (s->dir_dirty)
                        s->dir_error = r;
                return r;
        }
        s->dir_dirty = false;
        return 0;
}

/* Writes and syncs HEAD_TEMP; on failure it is gone. -ENOSPC for a full file system. */
static int head_write_temp(Spool *s, const uint8_t *buf, size_t size) {
        _cleanup_close_ int fd = -EBADF;
        int r;

        fd = openat(s->dir_fd, HEAD_TEMP, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW,
                    0600);
        if (fd < 0)
                return state_dir_space_errno(-errno);
        r = write_full(fd, buf, size);
        if (r >= 0 && spool_fsync_hook(fd) < 0)
                r = -errno;
        if (r < 0) {
                (void) unlinkat(s->dir_fd, HEAD_TEMP, 0);
                return state_dir_space_errno(r);
        }
        return 0;
}

/* Writes the head file atomically. Also makes every directory change so far durable (created
 * and unlinked segments), since it ends with an fsync() of the directory. */
static int spool_write_head(Spool *s) {
        _cleanup_free_ uint8_t *buf = NULL;
        size_t n = 0, size, j = 28;
        uint64_t low;
        int r;

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

        r = head_write_temp(s, buf, size);
        /* What the reserve is for: this write precedes deletions, which give the space back.
         * Appends wait until the reserve is whole again. */
        if (r == -ENOSPC && state_dir_reserve_release(&s->reserve))
                r = head_write_temp(s, buf, size);
        if (r < 0)
                return r;
        if (renameat(s->dir_fd, HEAD_TEMP, s->dir_fd, HEAD_FILE) < 0) {
                r = -errno;
                (void) unlinkat(s->dir_fd, HEAD_TEMP, 0);
                return r;
        }
        r = spool_sync_dir(s);
        if (r < 0)
                return r;

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

static int spool_cleanup(Spool *s);
static void spool_retire_delivered(Spool *s);
static void segment_finish(Spool *s);

static bool segment_removable(const Spool *s, const Segment *seg) {
        return seg != s->active && seg->unacked == 0 && !seg->dirty && !seg->cut;
}

/* Whether the newest segment file is on disk for good, so that its name tells the next start
 * that every seq of the older segments was handed out. Syncs the directory if needed. */
static bool newest_segment_durable(Spool *s) {
        const Segment *newest = s->segments[s->n_segments - 1];

        if (!newest->created)
                return true;
        if (s->dir_error < 0)
                return false; /* an earlier failed fsync() may have dropped its entry */
        return !s->dir_dirty || spool_sync_dir(s) >= 0;
}

/* Whether deleting removable segment i needs the head file to cover its seqs first: the
 * newest segment file does unless next_seq is persisted; an older one only while the newest
 * segment file cannot stand for its seqs (*durable caches newest_segment_durable()). */
static bool segment_needs_head(Spool *s, size_t i, int *durable) {
        const Segment *seg = s->segments[i];

        if (i + 1 == s->n_segments)
                return s->persisted_next_seq < s->next_seq;
        if (seg->count == 0 || seg->last_seq < s->persisted_next_seq)
                return false;
        if (*durable < 0)
                *durable = newest_segment_durable(s);
        return !*durable;
}

/* Deletes the segments whose records are all acknowledged, freeing space first: the segments
 * that need no head file go without any write, then, only if one is left that needs it, the
 * head file is written and the rest go. */
static int spool_gc(Spool *s) {
        bool freed = false;
        int durable = -1, r = 0;

        /* Short of space: the delivered records of the segment being appended to are not kept
         * until it is full. */
        if (!s->reserve.present && s->active && s->active->unacked == 0 && s->active->count > 0)
                segment_finish(s);

        for (unsigned pass = 0; pass < 2 && r >= 0; pass++) {
                bool need_head = false;

                for (size_t i = 0; i < s->n_segments;) {
                        if (!segment_removable(s, s->segments[i]) ||
                            (pass == 0 && segment_needs_head(s, i, &durable))) {
                                need_head = need_head || segment_removable(s, s->segments[i]);
                                i++;
                                continue;
                        }
                        r = segment_remove(s, i);
                        if (r < 0)
                                break;
                        freed = true;
                }
                if (r >= 0 && pass == 0 && need_head)
                        r = spool_write_head(s);
                else if (pass == 0)
                        break;
        }

        /* Best effort: appends try again, and fail while it is missing. */
        if (freed)
                (void) state_dir_reserve_fill(&s->reserve);
        return r;
}

/* Checks for a whole, valid record at offset whose seq lies in [min_seq, seq_limit): 1 with
 * its payload in *payload, 0 when there is none.
 *
 * A whole record with a seq outside the range (a misdirected write, say) is damage, but
 * whether it is outside depends on the segments around it: seq_limit is the next segment's
 * first seq, and that segment goes once it is delivered. Taken at a later start, such a record
 * would raise min_seq past the durable records after it and drop them. So the first recovery
 * that skips it also clears its magic through wfd (when it is open), and every later one skips
 * it for good. */
static int record_check(int fd, int wfd, uint64_t file_size, uint64_t offset, uint64_t min_seq,
                        uint64_t seq_limit, uint8_t **payload, size_t *payload_allocated,
                        uint32_t *ret_len, uint64_t *ret_seq) {
        static const uint8_t cleared[4] = {};
        uint8_t header[RECORD_HEADER_SIZE];
        uint32_t len;
        uint64_t seq;
        int r;

        if (offset > file_size || file_size - offset < RECORD_HEADER_SIZE)
                return 0;
        r = pread_full(fd, header, sizeof(header), offset);
        if (r < 0)
                return r;
        len = get_le32(header + 4);
        seq = get_le64(header + 12);
        if (get_le32(header) != RECORD_MAGIC || len > SPOOL_RECORD_MAX ||
            file_size - offset - RECORD_HEADER_SIZE < len || seq == UINT64_MAX)
                return 0;

        r = grow((void **) payload, payload_allocated, MAX(len, 1U), 1);
        if (r < 0)
                return r;
        r = pread_full(fd, *payload, len, offset + RECORD_HEADER_SIZE);
        if (r < 0)
                return r;
        if (get_le32(header + 8) != record_crc(header, *payload, len))
                return 0;
        if (seq < min_seq || seq >= seq_limit) {
                /* Best effort, like cutting a torn tail: if it fails, the next start tries
                 * again with what it finds. */
                if (wfd >= 0)
                        (void) pwrite(wfd, cleared, sizeof(cleared), (off_t) offset);
                return 0;
        }

        *ret_len = len;
        *ret_seq = seq;
        return 1;
}

/* The offset of the next valid record after a damaged one at offset, and its seq; file_size
 * when there is none. */
static int record_resync(int fd, int wfd, uint64_t file_size, uint64_t offset, uint64_t min_seq,
                         uint64_t seq_limit, uint8_t **payload, size_t *payload_allocated,
                         uint64_t *ret_offset, uint64_t *ret_seq) {
        uint8_t buf[16384];
        uint64_t pos = offset + 1;
        int r;

        while (pos < file_size && file_size - pos >= RECORD_HEADER_SIZE) {
                size_t n = (size_t) MIN(file_size - pos, (uint64_t) sizeof(buf));

                r = pread_full(fd, buf, n, pos);
                if (r < 0)
                        return r;
                for (size_t i = 0; i + 4 <= n; i++) {
                        uint32_t len;
                        uint64_t seq;

                        if (get_le32(buf + i) != RECORD_MAGIC)
                                continue;
                        r = record_check(fd, wfd, file_size, pos + i, min_seq, seq_limit, payload,
                                         payload_allocated, &len, &seq);
                        if (r < 0)
                                return r;
                        if (r > 0) {
                                *ret_offset = pos + i;
                                *ret_seq = seq;
                                return 0;
                        }
                }
                /* The last three bytes again: a magic may straddle the two reads. */
                pos += n - 3;
        }
        *ret_offset = file_size;
        *ret_seq = 0;
        return 0;
}

static void spool_add_loss(Spool *s, const SpoolLoss *loss) {
        s->n_losses_found++;
        if (s->n_losses >= SPOOL_LOSSES_MAX)
                return;
        if (!s->losses) {
                s->losses = calloc(SPOOL_LOSSES_MAX, sizeof(SpoolLoss));
                if (!s->losses)
                        return; /* the report is lost, not the records */
        }
        s->losses[s->n_losses++] = *loss;
}

/* Reads one segment into the index. Bytes that hold no whole, valid record are skipped up to
 * the next valid one and reported; damage at the end is cut off the file. seq_limit is the
 * first seq of the next segment (UINT64_MAX for the newest); *last_seq is raised to the
 * highest seq the segment may have held. */
static int segment_load(Spool *s, Segment *seg, const HeadState *h, uint64_t seq_limit,
                        uint64_t *last_seq) {
        _cleanup_close_ int fd = -EBADF, wfd = -EBADF;
        _cleanup_free_ uint8_t *payload = NULL;
        size_t payload_allocated = 0;
        uint64_t offset = 0, file_size;
        bool damaged = false;
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
        /* For what recovery settles in the file (record_check(), the cut below); without it
         * (a read-only file system) the next start settles the same again. */
        wfd = openat(s->dir_fd, name, O_WRONLY | O_CLOEXEC | O_NOFOLLOW);

        while (offset < file_size) {
                uint64_t seq, min_seq = MAX(*last_seq + 1, seg->first_seq), next;
                uint32_t len;
                SpoolLoss loss;
                Entry *e;

                r = record_check(fd, wfd, file_size, offset, min_seq, seq_limit, &payload,
                                 &payload_allocated, &len, &seq);
                if (r < 0)
                        return r;
                if (r == 0) {
                        r = record_resync(fd, wfd, file_size, offset, min_seq, seq_limit, &payload,
                                          &payload_allocated, &next, &seq);
                        if (r < 0)
                                return r;

                        loss = (SpoolLoss) {
                                .segment = seg->first_seq,
                                .offset = offset,
                                .bytes = next - offset,
                                .first_seq = min_seq,
                                .tail = next == file_size,
                        };
                        if (!loss.tail)
                                loss.last_seq = seq - 1;
                        else if (seq_limit != UINT64_MAX)
                                loss.last_seq = seq_limit - 1;
                        else {
                                /* Whatever records the tail held started at least a header
                                 * apart: never hand out their seqs again. */
                                uint64_t n = (loss.bytes + RECORD_HEADER_SIZE - 1) /
                                             RECORD_HEADER_SIZE;

                                *last_seq = MAX(*last_seq, min_seq + n - 1);
                        }
                        if (loss.last_seq != 0 && loss.last_seq < loss.first_seq)
                                loss.first_seq = loss.last_seq = 0;
                        spool_add_loss(s, &loss);
                        damaged = true;

                        offset = next;
                        continue;
                }

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
                *last_seq = MAX(*last_seq, seq);
                seg->size = offset + RECORD_HEADER_SIZE + len;
                offset = seg->size;
        }

        seg->synced_size = seg->size;
        s->used_bytes += seg->size;

        if (damaged && wfd >= 0) {
                /* The torn tail of a crash (or damage): cut off so that nothing ever reads
                 * it. Best effort: the segment is never appended to again, and a cut that
                 * fails is made at the same place at the next start; the sync still covers
                 * the magics cleared above. */
                int k = seg->size < file_size ? ftruncate(wfd, (off_t) seg->size) : 0;

                (void) k;
                (void) spool_fsync_hook(wfd);
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
                r = segment_load(s, seg, h, i + 1 < n ? firsts[i + 1] : UINT64_MAX, &last_seq);
                if (r < 0)
                        return r;
        }

        /* A segment file's name is the seq of its first record, handed out even when the
         * record never made it into the file. */
        s->next_seq = MAX(MAX(h->next_seq, last_seq + 1), (uint64_t) 1);
        if (n > 0)
                s->next_seq = MAX(s->next_seq, firsts[n - 1]);
        s->persisted_next_seq = h->next_seq;
        s->synced_seq = s->next_seq - 1;
        entries_pop_acked(s);
        return 0;
}

int spool_open(const char *dir, uint64_t max_bytes, Spool **ret) {
        _cleanup_(head_state_done) HeadState h = {};
        Spool *s;
        int r;

        if (!dir || !ret || max_bytes <= RECORD_HEADER_SIZE)
                return -EINVAL;

        s = calloc(1, sizeof(Spool));
        if (!s)
                return -ENOMEM;
        s->read_fd = -EBADF;
        s->max_bytes = max_bytes;
        s->segment_target = MIN(MAX(max_bytes / 16, (uint64_t) SEGMENT_SIZE_MIN),
                                (uint64_t) SEGMENT_SIZE_MAX);

        s->dir_fd = state_dir_open(dir);
        if (s->dir_fd < 0) {
                r = s->dir_fd;
                goto fail;
        }
        s->reserve.dir_fd = s->dir_fd;

        r = head_load(s, &h);
        if (r < 0)
                goto fail;
        r = spool_recover(s, &h);
        if (r < 0)
                goto fail;
        /* Missing after a release, or on a full disk: appends wait for it. */
        (void) state_dir_reserve_fill(&s->reserve);

        /* Rewrite the head: it records next_seq and drops acks of records that are gone. On a
         * full file system without a reserve it cannot be written; spool_gc() then deletes only
         * what needs no head file, and a later flush writes it. */
        r = spool_write_head(s);
        if (r < 0 && r != -ENOSPC)
                goto fail;
        r = spool_gc(s);
        if (r < 0 && r != -ENOSPC)
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
        free(s->losses);
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
        seg->created = true;
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

/* Room is short: when the segment being appended to holds only delivered records, it stops
 * taking appends and goes, rather than waiting until it is full. */
static void spool_retire_delivered(Spool *s) {
        if (!s->active || s->active->unacked > 0 || s->active->count == 0)
                return;
        segment_finish(s);
        (void) spool_gc(s);
}


int spool_append(Spool *s, const void *data, size_t len, uint64_t *ret_seq) {
        uint8_t header[RECORD_HEADER_SIZE];
        struct iovec iov[2];
        uint64_t size;
        bool was_dirty;
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
        r = spool_cleanup(s);
        if (r < 0)
                return r;
        size = RECORD_HEADER_SIZE + len;

        if (s->used_bytes + size > s->max_bytes)
                spool_retire_delivered(s);
        if (s->used_bytes + size > s->max_bytes)
                return -EDQUOT;
        /* The room that recording acknowledgements needs is not for new records. */
        r = state_dir_reserve_fill(&s->reserve);
        if (r == -ENOSPC) {
                spool_retire_delivered(s);
                r = state_dir_reserve_fill(&s->reserve);
        }
        if (r < 0)
                return r;

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
                        return state_dir_space_errno(r);
        }
        seg = s->active;

        r = grow((void **) &s->entries, &s->n_entries_allocated, s->n_entries + 1, sizeof(Entry));
        if (r < 0)
                return r;

        record_header(header, s->next_seq, data, (uint32_t) len);
        iov[0] = (struct iovec) { .iov_base = header, .iov_len = sizeof(header) };
        iov[1] = (struct iovec) { .iov_base = (void *) data, .iov_len = len };
        was_dirty = seg->dirty;
        seg->dirty = true;
        r = pwritev_full(seg->wfd, iov, len > 0 ? 2 : 1, seg->size);
        if (r < 0) {
                /* Leave no partial record behind for the next append to follow. Recovery cuts
                 * it off too, should this not last, so nothing new needs a sync. */
                (void) ftruncate(seg->wfd, (off_t) seg->size);
                seg->dirty = was_dirty;
                r = state_dir_space_errno(r);
                if (r == -ENOSPC)
                        spool_retire_delivered(s);
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

/* After a failed sync the unsynced records cannot be trusted: forget them (their seqs stay
 * used) and leave spool_cleanup() to cut them off the files. What comes next goes to a new
 * segment. */
static void spool_discard_unsynced(Spool *s) {
        while (s->n_entries > s->start && s->entries[s->n_entries - 1].seq > s->synced_seq) {
                Entry *e = &s->entries[--s->n_entries];

                e->segment->count--;
                e->segment->unacked--;
                s->pending--;
        }
        if (s->start == s->n_entries)
                s->start = s->n_entries = 0;

        for (size_t i = 0; i < s->n_segments; i++) {
                Segment *seg = s->segments[i];

                if (!seg->dirty && !seg->created && seg->size == seg->synced_size)
                        continue;
                s->used_bytes -= seg->size - seg->synced_size;
                seg->size = seg->synced_size;
                seg->dirty = false;
                seg->cut = true;
        }
        s->active = NULL;
        s->cleanup_pending = true;
        /* Counted against this batch; what the cleanup's own fsync() says is its business. */
        s->dir_error = 0;
}

/* Cuts the records of a failed sync off the files, durably: their callers were told they
 * failed, so no restart may bring them back. Each segment written since the last good sync
 * goes back to its synced length (fsynced); the head file records next_seq so the discarded
 * seqs stay used; then a segment created since, empty by now, is deleted. Idempotent; until
 * it succeeds the spool takes no appends. */
static int spool_cleanup(Spool *s) {
        int r;

        if (!s->cleanup_pending)
                return 0;

        for (size_t i = 0; i < s->n_segments; i++) {
                Segment *seg = s->segments[i];

                if (!seg->cut)
                        continue;
                if (seg->wfd < 0) {
                        char name[32];

                        segment_name(seg->first_seq, name);
                        seg->wfd = openat(s->dir_fd, name, O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
                        if (seg->wfd < 0) {
                                r = -errno;
                                seg->wfd = -EBADF;
                                if (r != -ENOENT)
                                        return r;
                                seg->cut = false; /* nothing left to cut */
                                continue;
                        }
                }
                if (ftruncate(seg->wfd, (off_t) seg->synced_size) < 0 ||
                    spool_fsync_hook(seg->wfd) < 0)
                        return -errno;
                seg->wfd = safe_close(seg->wfd);
                seg->cut = false;
        }

        /* next_seq first: the created segments may be what tells the next start that older
         * segments' seqs were handed out (see spool_gc()). Their files are empty by now, so
         * their deletion need not be durable. */
        r = spool_write_head(s);
        if (r < 0)
                return r;

        for (size_t i = 0; i < s->n_segments;) {
                Segment *seg = s->segments[i];

                if (!seg->created || seg->count > 0) {
                        i++;
                        continue;
                }
                r = segment_remove(s, i);
                if (r < 0)
                        return r;
        }

        /* The segments whose entries a failed directory fsync() may have lost are gone. */
        s->dir_error = 0;
        s->cleanup_pending = false;
        return 0;
}

int spool_sync(Spool *s) {
        int r;

        if (!s)
                return -EINVAL;
        r = spool_cleanup(s);
        if (r < 0)
                return r;

        for (size_t i = 0; i < s->n_segments && r >= 0; i++) {
                Segment *seg = s->segments[i];

                if (seg->dirty && seg->wfd >= 0 && spool_fdatasync_hook(seg->wfd) < 0)
                        r = -errno;
        }
        if (r >= 0 && s->dir_error < 0)
                r = s->dir_error;
        if (r >= 0 && s->dir_dirty) {
                if (spool_fsync_hook(s->dir_fd) < 0)
                        r = -errno;
                else
                        s->dir_dirty = false;
        }
        if (r < 0) {
                spool_discard_unsynced(s);
                (void) spool_cleanup(s);
                return r;
        }

        for (size_t i = 0; i < s->n_segments; i++) {
                Segment *seg = s->segments[i];

                seg->dirty = false;
                seg->created = false;
                seg->synced_size = seg->size;
                if (seg != s->active)
                        seg->wfd = safe_close(seg->wfd);
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
        if (r == -ENODATA)
                return -EBADMSG; /* the file was cut short under the record */
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
        if (segment_removable(s, seg) || (seg == s->active && !s->reserve.present))
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

int spool_recovery_losses(const Spool *s, const SpoolLoss **ret, size_t *ret_n) {
        if (!s || !ret || !ret_n)
                return -EINVAL;
        *ret = s->losses;
        *ret_n = s->n_losses;
        return (int) MIN(s->n_losses_found, (size_t) INT_MAX);
}

uint64_t spool_pending_count(const Spool *s) {
        return s ? s->pending : 0;
}

uint64_t spool_used_bytes(const Spool *s) {
        return s ? s->used_bytes : 0;
}

int spool_space(const Spool *s, StateDirSpace *ret) {
        if (!s || !ret)
                return -EINVAL;
        return state_dir_space(s->dir_fd, ret);
}
