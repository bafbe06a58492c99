/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <dirent.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <limits.h>
#include <stdarg.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>

#include "fileio.h"
#include "json-util.h"
#include "transfer-store.h"
#include "util.h"

DEFINE_TRIVIAL_CLEANUP_FUNC(json_tokener *, json_tokener_free);

/* Metadata holds two short strings and a few numbers; anything larger is not ours. */
#define METADATA_SIZE_MAX (16U * 1024U)
/* The pread()/pwrite() fallback copies through a buffer of at most this size. */
#define COPY_BUFFER_SIZE (128U * 1024U)

struct TransferStore {
        char *dir;
        int dir_fd;
        uint64_t max_bytes;
        uint64_t committed_bytes; /* committed transfers, overhead included */
        uint64_t reserved_bytes;  /* copies in progress, overhead included */
        uint64_t next_seq;

        Transfer **transfers; /* sorted by seq; pointers stay valid while the array moves */
        size_t n_transfers, n_allocated;

        TransferStoreIssue *issues;
        size_t n_issues;

        TransferCopy *copies; /* in progress, so that freeing the store can detach them */
};

struct TransferCopy {
        TransferStore *store; /* NULL once committed or detached */
        TransferCopy *prev, *next;

        char id[TRANSFER_ID_LEN + 1];
        char *file_name;
        char *content_type;
        int src_fd;
        int dst_fd;
        uint64_t size;
        uint64_t done;
        bool use_copy_file_range;
        bool committed;
        int error; /* sticky: a failed copy can only be freed */
        const char *reason;
        uint8_t *buffer;
};

static const char *const transfer_state_table[_TRANSFER_STATE_MAX] = {
        [TRANSFER_QUEUED] = "queued",
        [TRANSFER_UPLOADING] = "uploading",
};

DEFINE_STRING_TABLE_LOOKUP(transfer_state, TransferState);

static uint64_t transfer_charge(uint64_t size) {
        return size + TRANSFER_OVERHEAD_BYTES;
}

static int set_reason(const char **ret_reason, const char *reason, int r) {
        if (ret_reason)
                *ret_reason = reason;
        return r;
}

int transfer_file_name_check(const char *name, const char **ret_reason) {
        size_t len;

        if (isempty(name))
                return set_reason(ret_reason, "file name is empty", -EINVAL);
        len = strlen(name);
        if (len > TRANSFER_FILE_NAME_MAX)
                return set_reason(ret_reason, "file name is longer than 255 bytes", -EINVAL);
        if (!utf8_is_valid(name, len))
                return set_reason(ret_reason, "file name is not valid UTF-8", -EINVAL);
        if (strchr(name, '/'))
                return set_reason(ret_reason, "file name contains '/'", -EINVAL);
        for (const uint8_t *p = (const uint8_t *) name; *p; p++)
                /* C0 controls, DEL, and C1 controls (U+0080..U+009F, encoded C2 80..C2 9F). */
                if (*p < 0x20 || *p == 0x7f || (p[0] == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f))
                        return set_reason(ret_reason, "file name contains a control character",
                                          -EINVAL);
        if (streq(name, ".") || streq(name, ".."))
                return set_reason(ret_reason, "file name is \".\" or \"..\"", -EINVAL);
        return set_reason(ret_reason, NULL, 0);
}

/* RFC 9110 tchar. */
static bool is_token_char(char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
               strchr("!#$%&'*+-.^_`|~", c);
}

static const char *skip_token(const char *p) {
        while (*p && is_token_char(*p))
                p++;
        return p;
}

int transfer_content_type_check(const char *type, const char **ret_reason) {
        const char *p, *q;

        if (isempty(type))
                return set_reason(ret_reason, "content type is empty", -EINVAL);
        if (strlen(type) > TRANSFER_CONTENT_TYPE_MAX)
                return set_reason(ret_reason, "content type is longer than 255 bytes", -EINVAL);
        for (p = type; *p; p++)
                if (*p < 0x20 || *p > 0x7e)
                        return set_reason(ret_reason, "content type is not printable ASCII",
                                          -EINVAL);

        p = skip_token(type);
        if (p == type || *p != '/')
                return set_reason(ret_reason, "content type is not of the form type/subtype",
                                  -EINVAL);
        q = skip_token(p + 1);
        if (q == p + 1)
                return set_reason(ret_reason, "content type is not of the form type/subtype",
                                  -EINVAL);
        /* Parameters ("; charset=utf-8") are passed through as they are. */
        while (*q == ' ')
                q++;
        if (*q != '\0' && *q != ';')
                return set_reason(ret_reason, "content type is not of the form type/subtype",
                                  -EINVAL);
        return set_reason(ret_reason, NULL, 0);
}

bool transfer_id_is_valid(const char *id) {
        if (!id || strlen(id) != TRANSFER_ID_LEN)
                return false;
        for (size_t i = 0; i < TRANSFER_ID_LEN; i++) {
                if (i == 8 || i == 13 || i == 18 || i == 23) {
                        if (id[i] != '-')
                                return false;
                } else if (!((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'f')))
                        return false;
        }
        return true;
}

/* "<id>.data" or "<id>.json" into buf. */
static void file_name_of(const char *id, const char *suffix, char buf[static 64]) {
        snprintf(buf, 64, "%s.%s", id, suffix);
}

static int unlink_in(int dir_fd, const char *name) {
        if (unlinkat(dir_fd, name, 0) < 0 && errno != ENOENT)
                return -errno;
        return 0;
}

static Transfer *transfer_free(Transfer *t) {
        if (!t)
                return NULL;
        free(t->file_name);
        free(t->content_type);
        free(t);
        return NULL;
}
DEFINE_TRIVIAL_CLEANUP_FUNC(Transfer *, transfer_free);

static int metadata_encode(const Transfer *t, char **ret) {
        _cleanup_json_ json_object *o = json_object_new_object();
        const char *text;
        char *copy;

        if (!o)
                return -ENOMEM;
        if (json_add(o, "id", json_object_new_string(t->id)) < 0 ||
            json_add(o, "seq", json_object_new_int64((int64_t) t->seq)) < 0 ||
            json_add(o, "fileName", json_object_new_string(t->file_name)) < 0 ||
            json_add(o, "contentType", json_object_new_string(t->content_type)) < 0 ||
            json_add(o, "size", json_object_new_int64((int64_t) t->size)) < 0 ||
            json_add(o, "created", json_object_new_int64((int64_t) t->created_usec)) < 0 ||
            json_add(o, "attempts", json_object_new_int64(t->attempts)) < 0)
                return -ENOMEM;

        text = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN |
                                                         JSON_C_TO_STRING_NOSLASHESCAPE);
        if (!text)
                return -ENOMEM;
        copy = strdup(text);
        if (!copy)
                return -ENOMEM;
        *ret = copy;
        return 0;
}

/* A required member in 0..max (json-util's integer rules). */
static int json_get_u64(json_object *o, const char *key, uint64_t max, uint64_t *ret) {
        int64_t n;
        int r;

        r = json_member_integer(o, key, 0, (int64_t) MIN(max, (uint64_t) JSON_INTEGER_MAX), -1,
                                &n);
        if (r < 0 || n < 0)
                return -EBADMSG;
        *ret = (uint64_t) n;
        return 0;
}

/* A string member, borrowed; NULL when missing or not a valid string. */
static const char *json_get_string(json_object *o, const char *key) {
        const char *s = NULL;

        return json_member_string_borrow(o, key, SIZE_MAX, &s) < 0 ? NULL : s;
}

/* Parses and validates metadata; -EBADMSG with a static *ret_reason when it is not ours. */
static int metadata_decode(const char *text, size_t len, Transfer **ret, const char **ret_reason) {
        _cleanup_(json_tokener_freep) json_tokener *tok = json_tokener_new();
        _cleanup_json_ json_object *o = NULL;
        _cleanup_(transfer_freep) Transfer *t = NULL;
        const char *id, *name, *type;
        uint64_t attempts;

        if (!tok)
                return -ENOMEM;
        if (len > INT_MAX)
                return set_reason(ret_reason, "metadata is too large", -EBADMSG);
        o = json_tokener_parse_ex(tok, text, (int) len);
        if (!o || json_tokener_get_error(tok) != json_tokener_success ||
            json_tokener_get_parse_end(tok) != len || !json_object_is_type(o, json_type_object))
                return set_reason(ret_reason, "metadata is not a JSON object", -EBADMSG);

        t = calloc(1, sizeof(Transfer));
        if (!t)
                return -ENOMEM;
        id = json_get_string(o, "id");
        if (!transfer_id_is_valid(id))
                return set_reason(ret_reason, "metadata has no valid id", -EBADMSG);
        memcpy(t->id, id, sizeof(t->id));
        name = json_get_string(o, "fileName");
        if (!name || transfer_file_name_check(name, NULL) < 0)
                return set_reason(ret_reason, "metadata has no valid fileName", -EBADMSG);
        type = json_get_string(o, "contentType");
        if (!type || transfer_content_type_check(type, NULL) < 0)
                return set_reason(ret_reason, "metadata has no valid contentType", -EBADMSG);
        if (json_get_u64(o, "seq", INT64_MAX, &t->seq) < 0 || t->seq == 0)
                return set_reason(ret_reason, "metadata has no valid seq", -EBADMSG);
        if (json_get_u64(o, "size", TRANSFER_SIZE_MAX, &t->size) < 0)
                return set_reason(ret_reason, "metadata has no valid size", -EBADMSG);
        if (json_get_u64(o, "created", INT64_MAX, &t->created_usec) < 0)
                return set_reason(ret_reason, "metadata has no valid created time", -EBADMSG);
        if (json_get_u64(o, "attempts", UINT_MAX, &attempts) < 0)
                return set_reason(ret_reason, "metadata has no valid attempts", -EBADMSG);
        t->attempts = (unsigned) attempts;
        t->file_name = strdup(name);
        t->content_type = strdup(type);
        if (!t->file_name || !t->content_type)
                return -ENOMEM;
        t->state = TRANSFER_QUEUED;
        *ret = TAKE_PTR(t);
        return 0;
}

static int transfer_write_metadata(TransferStore *s, const Transfer *t) {
        _cleanup_free_ char *text = NULL, *path = NULL;
        int r;

        r = metadata_encode(t, &text);
        if (r < 0)
                return r;
        path = strdup_printf("%s/%s.json", s->dir, t->id);
        if (!path)
                return -ENOMEM;
        /* Temp file, fsync, rename, fsync of the directory: the rename is the commit. */
        return write_file_atomic(path, text, strlen(text), 0600);
}

static int store_reserve_slot(TransferStore *s) {
        Transfer **a;
        size_t n;

        if (s->n_transfers < s->n_allocated)
                return 0;
        n = MAX(s->n_allocated * 2, (size_t) 16);
        a = reallocarray(s->transfers, n, sizeof(Transfer *));
        if (!a)
                return -ENOMEM;
        s->transfers = a;
        s->n_allocated = n;
        return 0;
}

static ssize_t store_index_of(const TransferStore *s, const char *id) {
        if (!transfer_id_is_valid(id))
                return -ENOENT;
        for (size_t i = 0; i < s->n_transfers; i++)
                if (streq(s->transfers[i]->id, id))
                        return (ssize_t) i;
        return -ENOENT;
}

static int store_add_issue(TransferStore *s, const char *file, bool lost, const char *fmt, ...)
        _printf_(4, 5);

static int store_add_issue(TransferStore *s, const char *file, bool lost, const char *fmt, ...) {
        TransferStoreIssue *a;
        va_list ap;
        char *message = NULL;
        char *copy;
        int k;

        va_start(ap, fmt);
        k = vasprintf(&message, fmt, ap);
        va_end(ap);
        if (k < 0)
                return -ENOMEM;
        copy = strdup(file);
        a = reallocarray(s->issues, s->n_issues + 1, sizeof(TransferStoreIssue));
        if (!copy || !a) {
                free(message);
                free(copy);
                if (a)
                        s->issues = a;
                return -ENOMEM;
        }
        s->issues = a;
        s->issues[s->n_issues++] = (TransferStoreIssue){
                .file = copy,
                .message = message,
                .lost = lost,
        };
        return 0;
}

/* Splits "<id>.<suffix>" and returns suffix, or NULL when name is not of that form. */
static const char *entry_suffix(const char *name, char id[static TRANSFER_ID_LEN + 1]) {
        if (strlen(name) <= TRANSFER_ID_LEN + 1 || name[TRANSFER_ID_LEN] != '.')
                return NULL;
        memcpy(id, name, TRANSFER_ID_LEN);
        id[TRANSFER_ID_LEN] = '\0';
        if (!transfer_id_is_valid(id))
                return NULL;
        return name + TRANSFER_ID_LEN + 1;
}

/* Loads <id>.json and checks it against <id>.data. A transfer that does not hold together
 * is deleted: it cannot be uploaded as what the caller asked for. */
static int store_load_one(TransferStore *s, const char *id) {
        _cleanup_(transfer_freep) Transfer *t = NULL;
        _cleanup_free_ char *path = NULL, *text = NULL;
        char json_name[64], data_name[64];
        const char *reason = NULL;
        struct stat st;
        size_t len;
        int r;

        file_name_of(id, "json", json_name);
        file_name_of(id, "data", data_name);
        path = strdup_printf("%s/%s", s->dir, json_name);
        if (!path)
                return -ENOMEM;

        r = read_file(path, METADATA_SIZE_MAX, &text, &len);
        if (r == -ENOMEM)
                return r;
        if (r < 0)
                reason = "metadata cannot be read";
        else {
                r = metadata_decode(text, len, &t, &reason);
                if (r == -ENOMEM)
                        return r;
                if (r >= 0 && !streq(t->id, id))
                        reason = "metadata names another id";
        }
        if (!reason) {
                if (fstatat(s->dir_fd, data_name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
                        if (errno != ENOENT)
                                return -errno;
                        reason = "data file is missing";
                } else if (!S_ISREG(st.st_mode))
                        reason = "data file is not a regular file";
                else if ((uint64_t) st.st_size != t->size)
                        reason = "data file size differs from the metadata";
        }

        if (reason) {
                r = unlink_in(s->dir_fd, json_name);
                if (r < 0)
                        return r;
                r = unlink_in(s->dir_fd, data_name);
                if (r < 0)
                        return r;
                return store_add_issue(s, json_name, true, "%s, transfer %s deleted", reason, id);
        }

        r = store_reserve_slot(s);
        if (r < 0)
                return r;
        s->committed_bytes += transfer_charge(t->size);
        s->next_seq = MAX(s->next_seq, t->seq + 1);
        s->transfers[s->n_transfers++] = TAKE_PTR(t);
        return 0;
}

static int transfer_compare(const void *a, const void *b) {
        const Transfer *x = *(Transfer *const *) a, *y = *(Transfer *const *) b;

        if (x->seq != y->seq)
                return x->seq < y->seq ? -1 : 1;
        return strcmp(x->id, y->id);
}

static void strv_freep(char ***p) {
        if (!*p)
                return;
        for (char **i = *p; *i; i++)
                free(*i);
        free(*p);
}

/* Names in the directory, NULL-terminated. */
static int store_list_names(TransferStore *s, char ***ret) {
        _cleanup_(strv_freep) char **names = NULL;
        _cleanup_(closedirp) DIR *d = NULL;
        size_t n = 0;
        struct dirent *de;
        int fd;

        fd = openat(s->dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        d = fdopendir(fd);
        if (!d) {
                safe_close(fd);
                return -errno;
        }
        names = calloc(1, sizeof(char *));
        if (!names)
                return -ENOMEM;
        for (;;) {
                char **a;

                errno = 0;
                de = readdir(d);
                if (!de) {
                        if (errno != 0)
                                return -errno;
                        break;
                }
                if (streq(de->d_name, ".") || streq(de->d_name, ".."))
                        continue;
                a = reallocarray(names, n + 2, sizeof(char *));
                if (!a)
                        return -ENOMEM;
                names = a;
                names[n] = strdup(de->d_name);
                names[n + 1] = NULL;
                if (!names[n])
                        return -ENOMEM;
                n++;
        }
        *ret = TAKE_PTR(names);
        return 0;
}

/* 1 for a regular file (symbolic links are not followed), 0 for anything else. */
static int is_regular_at(int dir_fd, const char *name) {
        struct stat st;

        if (fstatat(dir_fd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
                return errno == ENOENT ? 0 : -errno;
        return S_ISREG(st.st_mode);
}

static int store_recover(TransferStore *s) {
        _cleanup_(strv_freep) char **names = NULL;
        char id[TRANSFER_ID_LEN + 1];
        int r;

        r = store_list_names(s, &names);
        if (r < 0)
                return r;

        /* Committed transfers first, so that the data files left over are known to be
         * copies that never finished. */
        for (char **n = names; *n; n++) {
                const char *suffix = entry_suffix(*n, id);

                if (!suffix || !streq(suffix, "json"))
                        continue;
                r = is_regular_at(s->dir_fd, *n);
                if (r < 0)
                        return r;
                if (r == 0)
                        continue; /* reported below */
                r = store_load_one(s, id);
                if (r < 0)
                        return r;
        }

        for (char **n = names; *n; n++) {
                const char *suffix = entry_suffix(*n, id);

                r = is_regular_at(s->dir_fd, *n);
                if (r < 0)
                        return r;
                if (r == 0) {
                        /* Gone (deleted with its broken metadata), or something we never
                         * create: a directory, a symbolic link. Never follow or remove it. */
                        if (faccessat(s->dir_fd, *n, F_OK, AT_SYMLINK_NOFOLLOW) < 0)
                                continue;
                        r = store_add_issue(s, *n, false, "not a regular file, left alone");
                } else if (suffix && streq(suffix, "json"))
                        continue;
                else if (suffix && streq(suffix, "data")) {
                        if (store_index_of(s, id) >= 0)
                                continue;
                        r = unlink_in(s->dir_fd, *n);
                        if (r < 0)
                                return r;
                        r = store_add_issue(s, *n, false, "copy never committed, deleted");
                } else if (suffix && strncmp(suffix, "json.tmp.", 9) == 0) {
                        /* write_file_atomic() interrupted before its rename. */
                        r = unlink_in(s->dir_fd, *n);
                        if (r < 0)
                                return r;
                        r = store_add_issue(s, *n, false, "temporary file, deleted");
                } else
                        r = store_add_issue(s, *n, false, "unknown file, left alone");
                if (r < 0)
                        return r;
        }

        if (s->n_transfers > 1)
                qsort(s->transfers, s->n_transfers, sizeof(Transfer *), transfer_compare);

        /* Make the deletions durable before anything new is written next to them. */
        if (fsync(s->dir_fd) < 0)
                return -errno;
        return 0;
}

int transfer_store_open(const char *dir, uint64_t max_bytes, TransferStore **ret) {
        _cleanup_close_ int parent_fd = -EBADF;
        TransferStore *s;
        int r;

        if (isempty(dir) || !ret)
                return -EINVAL;

        r = mkdir_private(dir);
        if (r < 0)
                return r;

        s = calloc(1, sizeof(TransferStore));
        if (!s)
                return -ENOMEM;
        s->dir_fd = -EBADF;
        s->max_bytes = max_bytes;
        s->next_seq = 1;
        s->dir = strdup(dir);
        if (!s->dir) {
                r = -ENOMEM;
                goto fail;
        }

        s->dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (s->dir_fd < 0) {
                r = -errno;
                goto fail;
        }
        if (flock(s->dir_fd, LOCK_EX | LOCK_NB) < 0) {
                r = errno == EWOULDBLOCK ? -EBUSY : -errno;
                goto fail;
        }

        /* The directory may have just been created: its entry must be durable before any
         * transfer inside it is promised. */
        parent_fd = openat(s->dir_fd, "..", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (parent_fd < 0 || fsync(parent_fd) < 0) {
                r = -errno;
                goto fail;
        }

        r = store_recover(s);
        if (r < 0)
                goto fail;

        *ret = s;
        return 0;

fail:
        transfer_store_free(s);
        return r;
}

static void copy_unlink(TransferCopy *c) {
        TransferStore *s = c->store;

        if (c->prev)
                c->prev->next = c->next;
        else
                s->copies = c->next;
        if (c->next)
                c->next->prev = c->prev;
        c->prev = c->next = NULL;
        s->reserved_bytes -= transfer_charge(c->size);
        c->store = NULL;
}

/* Removes what an uncommitted copy left in the directory. No fsync: a file that comes back
 * after a crash is deleted at the next open. */
static void copy_discard(TransferCopy *c) {
        char name[64];

        c->src_fd = safe_close(c->src_fd);
        c->dst_fd = safe_close(c->dst_fd);
        file_name_of(c->id, "json", name);
        (void) unlink_in(c->store->dir_fd, name);
        file_name_of(c->id, "data", name);
        (void) unlink_in(c->store->dir_fd, name);
        copy_unlink(c);
}

TransferStore *transfer_store_free(TransferStore *s) {
        if (!s)
                return NULL;

        while (s->copies) {
                TransferCopy *c = s->copies;

                copy_discard(c);
                c->error = -ESTALE;
        }
        for (size_t i = 0; i < s->n_transfers; i++)
                transfer_free(s->transfers[i]);
        free(s->transfers);
        for (size_t i = 0; i < s->n_issues; i++) {
                free(s->issues[i].file);
                free(s->issues[i].message);
        }
        free(s->issues);
        safe_close(s->dir_fd);
        free(s->dir);
        free(s);
        return NULL;
}

size_t transfer_store_issues(const TransferStore *s, const TransferStoreIssue **ret) {
        *ret = s->issues;
        return s->n_issues;
}

size_t transfer_store_count(const TransferStore *s) {
        return s->n_transfers;
}

uint64_t transfer_store_used_bytes(const TransferStore *s) {
        return s->committed_bytes + s->reserved_bytes;
}

uint64_t transfer_store_max_bytes(const TransferStore *s) {
        return s->max_bytes;
}

const Transfer *transfer_store_nth(const TransferStore *s, size_t i) {
        return i < s->n_transfers ? s->transfers[i] : NULL;
}

const Transfer *transfer_store_find(const TransferStore *s, const char *id) {
        ssize_t i = store_index_of(s, id);

        return i < 0 ? NULL : s->transfers[i];
}

int transfer_store_remove(TransferStore *s, const char *id) {
        ssize_t i = store_index_of(s, id);
        Transfer *t;
        char name[64];
        int r;

        if (i < 0)
                return -ENOENT;
        t = s->transfers[i];

        /* The metadata goes first: without it the transfer no longer exists, and a data file
         * left by a crash here is deleted at the next open. */
        file_name_of(t->id, "json", name);
        r = unlink_in(s->dir_fd, name);
        if (r < 0)
                return r;
        file_name_of(t->id, "data", name);
        (void) unlink_in(s->dir_fd, name);
        /* If this fails the transfer may come back after a power loss and is uploaded once
         * more, which is no worse than at-least-once. */
        (void) fsync(s->dir_fd);

        s->committed_bytes -= transfer_charge(t->size);
        transfer_free(t);
        memmove(s->transfers + i, s->transfers + i + 1,
                (s->n_transfers - (size_t) i - 1) * sizeof(Transfer *));
        s->n_transfers--;
        return 0;
}

int transfer_store_mark_uploading(TransferStore *s, const char *id) {
        ssize_t i = store_index_of(s, id);
        Transfer *t;
        int r;

        if (i < 0)
                return -ENOENT;
        t = s->transfers[i];
        if (t->attempts == UINT_MAX)
                return -EOVERFLOW;
        t->attempts++;
        r = transfer_write_metadata(s, t);
        if (r < 0) {
                t->attempts--;
                return r;
        }
        t->state = TRANSFER_UPLOADING;
        return 0;
}

int transfer_store_mark_queued(TransferStore *s, const char *id) {
        ssize_t i = store_index_of(s, id);

        if (i < 0)
                return -ENOENT;
        s->transfers[i]->state = TRANSFER_QUEUED;
        return 0;
}

int transfer_open_data(TransferStore *s, const char *id) {
        ssize_t i = store_index_of(s, id);
        _cleanup_close_ int fd = -EBADF;
        char name[64];
        struct stat st;

        if (i < 0)
                return -ENOENT;
        file_name_of(id, "data", name);
        fd = openat(s->dir_fd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY);
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode) || (uint64_t) st.st_size != s->transfers[i]->size)
                return -EBADMSG;
        return TAKE_FD(fd);
}

static const char *file_type_reason(mode_t mode) {
        switch (mode & S_IFMT) {
        case S_IFDIR:
                return "not a regular file (directory)";
        case S_IFIFO:
                return "not a regular file (FIFO)";
        case S_IFSOCK:
                return "not a regular file (socket)";
        case S_IFCHR:
                return "not a regular file (character device)";
        case S_IFBLK:
                return "not a regular file (block device)";
        case S_IFLNK:
                return "not a regular file (symbolic link)";
        default:
                return "not a regular file";
        }
}

int transfer_copy_begin(TransferStore *s, int src_fd, const char *file_name,
                        const char *content_type, TransferCopy **ret, const char **ret_reason) {

        _cleanup_close_ int src = -EBADF, dst = -EBADF;
        _cleanup_free_ char *name_copy = NULL, *type_copy = NULL;
        TransferCopy *c;
        char id[TRANSFER_ID_LEN + 1], name[64];
        struct stat st;
        uint64_t size;
        int flags, r;

        assert(s);
        assert(ret);

        r = transfer_file_name_check(file_name, ret_reason);
        if (r < 0)
                return r;
        r = transfer_content_type_check(content_type, ret_reason);
        if (r < 0)
                return r;

        flags = fcntl(src_fd, F_GETFL);
        if (flags < 0)
                return set_reason(ret_reason, "not an open file descriptor", -errno);
        /* fstat() works on O_PATH descriptors, reading does not. */
        if (flags & O_PATH)
                return set_reason(ret_reason,
                                  "file descriptor was opened with O_PATH, not for reading",
                                  -EBADF);
        if (fstat(src_fd, &st) < 0)
                return set_reason(ret_reason, NULL, -errno);
        if (!S_ISREG(st.st_mode))
                return set_reason(ret_reason, file_type_reason(st.st_mode), -EINVAL);
        if ((flags & O_ACCMODE) == O_WRONLY)
                return set_reason(ret_reason, "file descriptor is not open for reading", -EBADF);

        size = (uint64_t) st.st_size;
        if (size > TRANSFER_SIZE_MAX)
                return set_reason(ret_reason,
                                  "file is larger than 5 GiB, the most one upload can carry",
                                  -EFBIG);
        if (transfer_charge(size) > s->max_bytes)
                return set_reason(ret_reason,
                                  "file is larger than the transfer queue (transfers.max_bytes)",
                                  -EFBIG);
        if (transfer_charge(size) > s->max_bytes - MIN(transfer_store_used_bytes(s), s->max_bytes))
                return set_reason(ret_reason,
                                  "the transfer queue is full, try again after uploads finish",
                                  -ENOSPC);

        name_copy = strdup(file_name);
        type_copy = strdup(content_type);
        if (!name_copy || !type_copy)
                return set_reason(ret_reason, NULL, -ENOMEM);

        /* Our own descriptor: the caller may close theirs as soon as this returns. */
        src = fcntl(src_fd, F_DUPFD_CLOEXEC, 3);
        if (src < 0)
                return set_reason(ret_reason, NULL, -errno);

        /* A clash of random UUIDs is next to impossible; O_EXCL makes sure anyway. */
        for (unsigned attempt = 0;; attempt++) {
                r = uuid_random(id);
                if (r < 0)
                        return set_reason(ret_reason, NULL, r);
                file_name_of(id, "data", name);
                dst = openat(s->dir_fd, name,
                             O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY, 0600);
                if (dst >= 0)
                        break;
                if (errno != EEXIST || attempt >= 3)
                        return set_reason(ret_reason, NULL, -errno);
        }

        /* Claim the disk space now, so that a full disk is a clear error at once rather than
         * a failure half-way. Not every file system can (UBIFS, JFFS2): copy regardless. */
        if (size > 0 && fallocate(dst, 0, 0, (off_t) size) < 0 && errno != EOPNOTSUPP &&
            errno != ENOSYS && errno != EINVAL) {
                r = -errno;
                (void) unlinkat(s->dir_fd, name, 0);
                return set_reason(ret_reason,
                                  r == -ENOSPC ? "not enough free disk space for the file" : NULL,
                                  r);
        }

        c = calloc(1, sizeof(TransferCopy));
        if (!c) {
                (void) unlinkat(s->dir_fd, name, 0);
                return set_reason(ret_reason, NULL, -ENOMEM);
        }
        *c = (TransferCopy){
                .store = s,
                .next = s->copies,
                .file_name = TAKE_PTR(name_copy),
                .content_type = TAKE_PTR(type_copy),
                .src_fd = TAKE_FD(src),
                .dst_fd = TAKE_FD(dst),
                .size = size,
                .use_copy_file_range = true,
        };
        memcpy(c->id, id, sizeof(c->id));
        if (s->copies)
                s->copies->prev = c;
        s->copies = c;
        s->reserved_bytes += transfer_charge(size);

        *ret = c;
        return set_reason(ret_reason, NULL, 0);
}

static int copy_fail(TransferCopy *c, int r, const char *reason) {
        c->error = r;
        c->reason = reason;
        return r;
}

/* One pread()/pwrite() round of at most len bytes; returns the bytes copied. */
static ssize_t copy_through_buffer(TransferCopy *c, size_t len) {
        ssize_t n;
        int r;

        if (!c->buffer) {
                c->buffer = malloc(COPY_BUFFER_SIZE);
                if (!c->buffer)
                        return -ENOMEM;
        }
        len = MIN(len, (size_t) COPY_BUFFER_SIZE);
        do
                n = pread(c->src_fd, c->buffer, len, (off_t) c->done);
        while (n < 0 && errno == EINTR);
        if (n < 0)
                return -errno;
        if (n == 0)
                return 0;
        r = pwrite_full(c->dst_fd, c->buffer, (size_t) n, c->done);
        if (r < 0)
                return r;
        return n;
}

int transfer_copy_step(TransferCopy *c, uint64_t max_chunk) {
        uint64_t left, start;

        assert(c);
        assert(max_chunk > 0);

        if (c->error < 0)
                return c->error;
        if (c->committed || !c->store)
                return -ESTALE;

        start = c->done;
        left = MIN(max_chunk, c->size - c->done);
        while (left > 0) {
                /* Well below SSIZE_MAX, and what the kernel does in one call anyway. */
                size_t want = (size_t) MIN(left, (uint64_t) 1 << 30);
                ssize_t n;

                if (c->use_copy_file_range) {
                        /* Explicit offsets: the file offset is shared with the caller. */
                        off64_t in = (off64_t) c->done, out = (off64_t) c->done;

                        n = copy_file_range(c->src_fd, &in, c->dst_fd, &out, want, 0);
                        if (n < 0 && errno == EINTR)
                                continue;
                        if (n < 0 && (errno == EXDEV || errno == EINVAL || errno == ENOSYS ||
                                      errno == EOPNOTSUPP)) {
                                c->use_copy_file_range = false;
                                continue;
                        }
                        if (n < 0)
                                return copy_fail(c, -errno, NULL);
                        if (n == 0) {
                                /* Some file systems answer 0 rather than an error; let
                                 * pread() tell a real end of file. */
                                c->use_copy_file_range = false;
                                continue;
                        }
                } else {
                        n = copy_through_buffer(c, want);
                        if (n < 0)
                                return copy_fail(c, (int) n, NULL);
                        if (n == 0)
                                return copy_fail(c, -ENODATA,
                                                 "the file shrank while it was being copied");
                }
                c->done += (uint64_t) n;
                left -= (uint64_t) n;
        }
        /* Start writing back what this step copied: the fsync at commit then has little
         * left to wait for, and the caller's loop does not stall on a large file. */
        if (c->done > start)
                (void) sync_file_range(c->dst_fd, (off64_t) start, (off64_t) (c->done - start),
                                       SYNC_FILE_RANGE_WRITE);
        return c->done < c->size ? 1 : 0;
}

int transfer_copy_commit(TransferCopy *c, const Transfer **ret) {
        _cleanup_(transfer_freep) Transfer *t = NULL;
        TransferStore *s;
        struct timespec ts;
        int r;

        assert(c);

        if (c->error < 0)
                return c->error;
        if (c->committed || !c->store)
                return -ESTALE;
        if (c->done < c->size)
                return -EBUSY;
        s = c->store;

        if (fsync(c->dst_fd) < 0)
                return copy_fail(c, -errno, "the copy could not be written to disk");

        t = calloc(1, sizeof(Transfer));
        if (!t)
                return -ENOMEM;
        memcpy(t->id, c->id, sizeof(t->id));
        t->seq = s->next_seq;
        t->file_name = strdup(c->file_name);
        t->content_type = strdup(c->content_type);
        if (!t->file_name || !t->content_type)
                return -ENOMEM;
        t->size = c->size;
        clock_gettime(CLOCK_REALTIME, &ts);
        t->created_usec = (uint64_t) ts.tv_sec * 1000000U + (uint64_t) ts.tv_nsec / 1000U;
        t->state = TRANSFER_QUEUED;

        /* Room in the array first: nothing may fail after the metadata is on disk. */
        r = store_reserve_slot(s);
        if (r < 0)
                return r;
        r = transfer_write_metadata(s, t);
        if (r < 0)
                return copy_fail(c, r, "the transfer record could not be written to disk");

        c->src_fd = safe_close(c->src_fd);
        c->dst_fd = safe_close(c->dst_fd);
        copy_unlink(c);
        c->committed = true;
        s->next_seq++;
        s->committed_bytes += transfer_charge(t->size);
        s->transfers[s->n_transfers++] = t;
        if (ret)
                *ret = t;
        TAKE_PTR(t);
        return 0;
}

TransferCopy *transfer_copy_free(TransferCopy *c) {
        if (!c)
                return NULL;
        if (c->store)
                copy_discard(c);
        safe_close(c->src_fd);
        safe_close(c->dst_fd);
        free(c->file_name);
        free(c->content_type);
        free(c->buffer);
        free(c);
        return NULL;
}

const char *transfer_copy_error_reason(const TransferCopy *c) {
        return c->reason;
}

const char *transfer_copy_id(const TransferCopy *c) {
        return c->id;
}

uint64_t transfer_copy_size(const TransferCopy *c) {
        return c->size;
}

uint64_t transfer_copy_done(const TransferCopy *c) {
        return c->done;
}
