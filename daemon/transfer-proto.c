/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "transfer-proto.h"
#include "util.h"

static const char *const transfer_method_table[_TRANSFER_METHOD_MAX] = {
        [TRANSFER_GET] = "GET",
        [TRANSFER_PUT] = "PUT",
        [TRANSFER_HASH] = "HASH",
};

static const char *const transfer_report_type_table[_TRANSFER_REPORT_TYPE_MAX] = {
        [TRANSFER_REPORT_ANSWER] = "answer",
        [TRANSFER_REPORT_PROGRESS] = "progress",
        [TRANSFER_REPORT_SYNCED] = "synced",
        [TRANSFER_REPORT_BODY] = "body",
        [TRANSFER_REPORT_SHA256] = "sha256",
        [TRANSFER_REPORT_DONE] = "done",
};

DEFINE_STRING_TABLE_LOOKUP(transfer_method, TransferMethod);
DEFINE_STRING_TABLE_LOOKUP_FROM_STRING(transfer_report_type, TransferReportType);

static bool must_escape(unsigned char c) {
        return c < 0x21 || c > 0x7e || c == '%';
}

char *transfer_escape(const char *s, size_t len) {
        static const char hex[] = "0123456789ABCDEF";
        char *ret, *p;

        ret = p = malloc(len * 3 + 1);
        if (!ret)
                return NULL;
        for (size_t i = 0; i < len; i++) {
                unsigned char c = (unsigned char) s[i];

                if (must_escape(c)) {
                        *p++ = '%';
                        *p++ = hex[c >> 4];
                        *p++ = hex[c & 15];
                } else
                        *p++ = (char) c;
        }
        *p = '\0';
        return ret;
}

static int unhex(char c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        return -1;
}

int transfer_unescape(const char *s, char **ret) {
        _cleanup_free_ char *out = malloc(strlen(s) + 1);
        char *p = out;

        if (!out)
                return -ENOMEM;
        while (*s) {
                unsigned char c = (unsigned char) *s;
                int hi, lo;

                if (c != '%') {
                        if (must_escape(c))
                                return -EBADMSG;
                        *p++ = *s++;
                        continue;
                }
                hi = unhex(s[1]);
                lo = hi < 0 ? -1 : unhex(s[2]);
                if (lo < 0 || (hi == 0 && lo == 0))
                        return -EBADMSG;
                *p++ = (char) (hi << 4 | lo);
                s += 3;
        }
        *p = '\0';
        *ret = TAKE_PTR(out);
        return 0;
}

/* Unsigned decimal, nothing else: no sign, no space, no leading zero but "0" itself. */
static int parse_u64(const char *s, uint64_t *ret) {
        uint64_t v = 0;

        if (!*s || (s[0] == '0' && s[1]))
                return -EBADMSG;
        for (; *s; s++) {
                if (*s < '0' || *s > '9' || v > (UINT64_MAX - (uint64_t) (*s - '0')) / 10)
                        return -EBADMSG;
                v = v * 10 + (uint64_t) (*s - '0');
        }
        *ret = v;
        return 0;
}

static int parse_bool(const char *s, bool *ret) {
        if (streq(s, "0") || streq(s, "1")) {
                *ret = s[0] == '1';
                return 0;
        }
        return -EBADMSG;
}

/* Splits line into at most max fields at single spaces, in place. The number of fields, or
 * -EBADMSG for an empty field (two spaces, a space at either end) or too many. */
static int split(char *line, char **fields, size_t max) {
        size_t n = 0;
        char *p = line;

        for (;;) {
                char *sp = strchr(p, ' ');

                if (n == max)
                        return -EBADMSG;
                fields[n++] = p;
                if (!sp)
                        break;
                *sp = '\0';
                p = sp + 1;
        }
        for (size_t i = 0; i < n; i++)
                if (!*fields[i])
                        return -EBADMSG;
        return (int) n;
}

/* --- The request --- */

void transfer_request_done(TransferRequest *q) {
        if (!q)
                return;
        free(q->url);
        free(q->content_type);
        free(q->ca_file);
        free(q->proxy);
        *q = TRANSFER_REQUEST_NULL;
}

int transfer_request_check(const TransferRequest *q) {
        if (q->method < 0 || q->method >= _TRANSFER_METHOD_MAX)
                return -EINVAL;
        if (q->method == TRANSFER_HASH)
                return q->url || q->content_type || q->size > 0 || q->offset > INT64_MAX
                               ? -EINVAL
                               : 0;
        if (isempty(q->url))
                return -EINVAL;
        if (q->method == TRANSFER_PUT && (isempty(q->content_type) || q->offset > 0 ||
                                          q->sha256 || q->size > INT64_MAX))
                return -EINVAL;
        if (q->method == TRANSFER_GET && (q->content_type || q->size > 0 ||
                                          q->offset > INT64_MAX || q->max_size > INT64_MAX ||
                                          (q->max_size > 0 && q->offset > q->max_size)))
                return -EINVAL;
        if (q->max_rate > INT64_MAX || q->connect_timeout_sec > 3600 ||
            q->low_speed_time_sec > 3600 || q->low_speed_limit > INT32_MAX)
                return -EINVAL;
        return 0;
}

typedef struct Buf {
        char *s;
        size_t len, size;
        int error;
} Buf;

/* "key value\n", or "key\n" when value is NULL. */
static void buf_add(Buf *b, const char *key, const char *value) {
        size_t k = strlen(key), v = value ? strlen(value) : 0, need = k + (value ? 1 : 0) + v + 1;
        char *n;

        if (b->error < 0)
                return;
        if (need > TRANSFER_LINE_MAX) {
                b->error = -E2BIG;
                return;
        }
        if (b->len + need + 1 > b->size) {
                size_t size = MAX(b->size * 2, b->len + need + 1);

                n = realloc(b->s, size);
                if (!n) {
                        b->error = -ENOMEM;
                        return;
                }
                b->s = n;
                b->size = size;
        }
        memcpy(b->s + b->len, key, k);
        if (value) {
                b->s[b->len + k] = ' ';
                memcpy(b->s + b->len + k + 1, value, v);
        }
        b->len += need;
        b->s[b->len - 1] = '\n';
        b->s[b->len] = '\0';
}

static void buf_add_text(Buf *b, const char *key, const char *value) {
        _cleanup_free_ char *e = NULL;

        if (!value)
                return;
        e = transfer_escape(value, strlen(value));
        if (!e) {
                b->error = -ENOMEM;
                return;
        }
        buf_add(b, key, e);
}

static void buf_add_u64(Buf *b, const char *key, uint64_t value) {
        char s[32];

        snprintf(s, sizeof(s), "%" PRIu64, value);
        buf_add(b, key, s);
}

int transfer_request_format(const TransferRequest *q, char **ret) {
        Buf b = {};
        int r;

        r = transfer_request_check(q);
        if (r < 0)
                return r;
        buf_add(&b, "method", transfer_method_to_string(q->method));
        if (q->method == TRANSFER_HASH) {
                buf_add_u64(&b, "offset", q->offset);
                buf_add(&b, "end", NULL);
                goto done;
        }
        buf_add_text(&b, "url", q->url);
        if (q->method == TRANSFER_PUT) {
                buf_add_text(&b, "content-type", q->content_type);
                buf_add_u64(&b, "size", q->size);
        } else {
                buf_add_u64(&b, "offset", q->offset);
                buf_add_u64(&b, "max-size", q->max_size);
                buf_add(&b, "sha256", q->sha256 ? "1" : "0");
                buf_add_u64(&b, "sync-bytes", q->sync_bytes);
                buf_add_u64(&b, "sync-ms", q->sync_ms);
        }
        buf_add_text(&b, "ca-file", isempty(q->ca_file) ? NULL : q->ca_file);
        buf_add_text(&b, "proxy", isempty(q->proxy) ? NULL : q->proxy);
        buf_add(&b, "allow-http", q->allow_http ? "1" : "0");
        buf_add_u64(&b, "max-rate", q->max_rate);
        buf_add_u64(&b, "connect-timeout", q->connect_timeout_sec);
        buf_add_u64(&b, "low-speed-time", q->low_speed_time_sec);
        buf_add_u64(&b, "low-speed-limit", q->low_speed_limit);
        buf_add(&b, "end", NULL);
done:
        if (b.error < 0) {
                free(b.s);
                return b.error;
        }
        *ret = b.s;
        return 0;
}

int transfer_request_parse_line(TransferRequest *q, const char *line) {
        _cleanup_free_ char *copy = strdup(line);
        char *f[2];
        char **text = NULL;
        uint64_t *number = NULL;
        bool *flag = NULL;
        int n;

        if (!copy)
                return -ENOMEM;
        n = split(copy, f, ELEMENTSOF(f));
        if (n < 0)
                return n;
        if (n == 1)
                return streq(f[0], "end") ? 1 : -EBADMSG;

        if (streq(f[0], "method")) {
                TransferMethod m = transfer_method_from_string(f[1]);
                if (m < 0)
                        return -EBADMSG;
                q->method = m;
                return 0;
        }
        if (streq(f[0], "url"))
                text = &q->url;
        else if (streq(f[0], "content-type"))
                text = &q->content_type;
        else if (streq(f[0], "ca-file"))
                text = &q->ca_file;
        else if (streq(f[0], "proxy"))
                text = &q->proxy;
        else if (streq(f[0], "size"))
                number = &q->size;
        else if (streq(f[0], "offset"))
                number = &q->offset;
        else if (streq(f[0], "max-size"))
                number = &q->max_size;
        else if (streq(f[0], "sync-bytes"))
                number = &q->sync_bytes;
        else if (streq(f[0], "sync-ms"))
                number = &q->sync_ms;
        else if (streq(f[0], "max-rate"))
                number = &q->max_rate;
        else if (streq(f[0], "connect-timeout"))
                number = &q->connect_timeout_sec;
        else if (streq(f[0], "low-speed-time"))
                number = &q->low_speed_time_sec;
        else if (streq(f[0], "low-speed-limit"))
                number = &q->low_speed_limit;
        else if (streq(f[0], "sha256"))
                flag = &q->sha256;
        else if (streq(f[0], "allow-http"))
                flag = &q->allow_http;
        else
                return -EBADMSG;

        if (number)
                return parse_u64(f[1], number);
        if (flag)
                return parse_bool(f[1], flag);
        {
                char *v = NULL;
                int r = transfer_unescape(f[1], &v);
                if (r < 0)
                        return r;
                free(*text);
                *text = v;
        }
        return 0;
}

/* --- Reports --- */

void transfer_report_done(TransferReport *r) {
        if (!r)
                return;
        free(r->text);
        *r = TRANSFER_REPORT_NULL;
}

static bool is_sha256_hex(const char *s) {
        size_t n = 0;

        for (; *s; s++, n++)
                if (!((*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'f')))
                        return false;
        return n == 64;
}

int transfer_report_format(const TransferReport *r, char buf[static TRANSFER_LINE_MAX]) {
        _cleanup_free_ char *e = NULL;
        const char *name;
        int n;

        if (r->type < 0 || r->type >= _TRANSFER_REPORT_TYPE_MAX)
                return -EINVAL;
        name = transfer_report_type_table[r->type];
        switch (r->type) {
        case TRANSFER_REPORT_ANSWER:
                if (r->status < 100 || r->status > 599)
                        return -EINVAL;
                n = snprintf(buf, TRANSFER_LINE_MAX, "%s %ld %" PRIu64 " %" PRIu64 "\n", name,
                             r->status, r->a, r->b);
                break;
        case TRANSFER_REPORT_PROGRESS:
                n = snprintf(buf, TRANSFER_LINE_MAX, "%s %" PRIu64 " %" PRIu64 "\n", name, r->a,
                             r->b);
                break;
        case TRANSFER_REPORT_SYNCED:
                n = snprintf(buf, TRANSFER_LINE_MAX, "%s %" PRIu64 "\n", name, r->a);
                break;
        case TRANSFER_REPORT_BODY:
                if (isempty(r->text))
                        return -EINVAL;
                e = transfer_escape(r->text, MIN(strlen(r->text), (size_t) TRANSFER_BODY_MAX));
                if (!e)
                        return -ENOMEM;
                n = snprintf(buf, TRANSFER_LINE_MAX, "%s %s\n", name, e);
                break;
        case TRANSFER_REPORT_SHA256:
                if (!r->text || !is_sha256_hex(r->text))
                        return -EINVAL;
                n = snprintf(buf, TRANSFER_LINE_MAX, "%s %s\n", name, r->text);
                break;
        case TRANSFER_REPORT_DONE:
                if (r->error > 0)
                        return -EINVAL;
                if (!isempty(r->text)) {
                        /* A third of the line is plenty for an explanation. */
                        e = transfer_escape(r->text, MIN(strlen(r->text), (size_t) 1024));
                        if (!e)
                                return -ENOMEM;
                }
                n = snprintf(buf, TRANSFER_LINE_MAX, "%s %d %" PRIu64 "%s%s\n", name, -r->error,
                             r->b, e ? " " : "", strempty(e));
                break;
        default:
                return -EINVAL;
        }
        assert(n > 0 && n < TRANSFER_LINE_MAX);
        return n;
}

int transfer_report_parse(const char *line, TransferReport *ret) {
        _cleanup_free_ char *copy = strdup(line);
        _cleanup_free_ char *text = NULL;
        TransferReport r = TRANSFER_REPORT_NULL;
        uint64_t v[3] = {};
        char *f[4];
        int n, k = 0;

        if (!copy)
                return -ENOMEM;
        n = split(copy, f, ELEMENTSOF(f));
        if (n < 0)
                return n;
        r.type = transfer_report_type_from_string(f[0]);
        switch (r.type) {
        case TRANSFER_REPORT_ANSWER:
                if (n != 4)
                        return -EBADMSG;
                for (int i = 0; i < 3 && k >= 0; i++)
                        k = parse_u64(f[i + 1], &v[i]);
                if (k < 0 || v[0] < 100 || v[0] > 599)
                        return -EBADMSG;
                r.status = (long) v[0];
                r.a = v[1];
                r.b = v[2];
                break;
        case TRANSFER_REPORT_PROGRESS:
                if (n != 3 || parse_u64(f[1], &r.a) < 0 || parse_u64(f[2], &r.b) < 0)
                        return -EBADMSG;
                break;
        case TRANSFER_REPORT_SYNCED:
                if (n != 2 || parse_u64(f[1], &r.a) < 0)
                        return -EBADMSG;
                break;
        case TRANSFER_REPORT_BODY:
                if (n != 2)
                        return -EBADMSG;
                k = transfer_unescape(f[1], &text);
                if (k < 0)
                        return k;
                break;
        case TRANSFER_REPORT_SHA256:
                if (n != 2 || !is_sha256_hex(f[1]))
                        return -EBADMSG;
                text = strdup(f[1]);
                if (!text)
                        return -ENOMEM;
                break;
        case TRANSFER_REPORT_DONE:
                if (n < 3 || parse_u64(f[1], &v[0]) < 0 || v[0] > 4095 ||
                    parse_u64(f[2], &r.b) < 0)
                        return -EBADMSG;
                r.error = -(int) v[0];
                if (n == 4) {
                        k = transfer_unescape(f[3], &text);
                        if (k < 0)
                                return k;
                }
                break;
        default:
                return -EBADMSG;
        }
        r.text = TAKE_PTR(text);
        *ret = r;
        return 0;
}

static int reader_line(TransferReader *rd, const char *line, TransferReportHandler handler,
                       void *userdata) {
        _cleanup_(transfer_report_done) TransferReport r = TRANSFER_REPORT_NULL;
        int k;

        if (rd->done)
                return -EBADMSG; /* nothing may follow "done" */
        k = transfer_report_parse(line, &r);
        if (k < 0)
                return k;
        switch (r.type) {
        case TRANSFER_REPORT_ANSWER:
                if (rd->answered)
                        return -EBADMSG;
                rd->answered = true;
                break;
        case TRANSFER_REPORT_SYNCED:
                if (r.a < rd->synced)
                        return -EBADMSG;
                rd->synced = r.a;
                break;
        case TRANSFER_REPORT_DONE:
                rd->done = true;
                break;
        default:
                break;
        }
        return handler(&r, userdata);
}

int transfer_reader_feed(TransferReader *rd, const void *data, size_t len,
                         TransferReportHandler handler, void *userdata) {
        const char *p = data;

        while (len > 0) {
                const char *nl = memchr(p, '\n', len);
                size_t n = nl ? (size_t) (nl - p) : len;
                int k;

                if (memchr(p, '\0', n))
                        return -EBADMSG;
                if (rd->len + n + (nl ? 1 : 0) > TRANSFER_LINE_MAX)
                        return -EMSGSIZE;
                memcpy(rd->buf + rd->len, p, n);
                rd->len += n;
                if (!nl)
                        return 0;
                rd->buf[rd->len] = '\0';
                rd->len = 0;
                k = reader_line(rd, rd->buf, handler, userdata);
                if (k < 0)
                        return k;
                p = nl + 1;
                len -= n + 1;
        }
        return 0;
}

int transfer_reader_end(const TransferReader *rd) {
        if (rd->len > 0)
                return -EBADMSG;
        return rd->done ? 0 : -EPIPE;
}
