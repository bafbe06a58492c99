/* SPDX-License-Identifier: MIT */
#include <ctype.h>
#include <stdarg.h>
#include <stdint.h>
#include <sys/resource.h>

#include "util.h"

int free_and_strdup(char **dst, const char *src) {
        char *copy = NULL;

        if (src) {
                copy = strdup(src);
                if (!copy)
                        return -ENOMEM;
        }
        free(*dst);
        *dst = copy;
        return 0;
}

char *strdup_printf(const char *fmt, ...) {
        va_list ap;
        char *s = NULL;
        int r;

        va_start(ap, fmt);
        r = vasprintf(&s, fmt, ap);
        va_end(ap);
        return r < 0 ? NULL : s;
}

char *strstrip(char *s) {
        char *end;

        while (isspace((unsigned char) *s))
                memmove(s, s + 1, strlen(s));
        end = s + strlen(s);
        while (end > s && isspace((unsigned char) end[-1]))
                *--end = '\0';
        return s;
}

bool utf8_is_valid(const char *s, size_t len) {
        const uint8_t *p = (const uint8_t *) s, *e = p + len;

        while (p < e) {
                uint32_t cp;
                size_t n;

                if (*p == 0)
                        return false;
                if (*p < 0x80) {
                        p++;
                        continue;
                }
                if ((*p & 0xe0) == 0xc0) {
                        n = 1;
                        cp = *p & 0x1f;
                } else if ((*p & 0xf0) == 0xe0) {
                        n = 2;
                        cp = *p & 0x0f;
                } else if ((*p & 0xf8) == 0xf0) {
                        n = 3;
                        cp = *p & 0x07;
                } else
                        return false;
                if ((size_t) (e - p) <= n)
                        return false;
                for (size_t i = 1; i <= n; i++) {
                        if ((p[i] & 0xc0) != 0x80)
                                return false;
                        cp = (cp << 6) | (p[i] & 0x3f);
                }
                /* Reject overlong forms, surrogates and values past U+10FFFF. */
                if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) ||
                    (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff)
                        return false;
                p += n + 1;
        }
        return true;
}

#include <sys/random.h>
#include <time.h>

uint64_t random_u64(void) {
        uint64_t v;
        struct timespec ts;

        if (getrandom(&v, sizeof(v), GRND_NONBLOCK) == (ssize_t) sizeof(v))
                return v;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_nsec * UINT64_C(0x9e3779b97f4a7c15) ^ (uint64_t) getpid();
}

int uuid_random(char ret[static 37]) {
        uint8_t b[16];

        if (getrandom(b, sizeof(b), 0) != (ssize_t) sizeof(b))
                return -errno;
        b[6] = (b[6] & 0x0f) | 0x40; /* version 4 */
        b[8] = (b[8] & 0x3f) | 0x80; /* RFC 4122 variant */
        snprintf(ret, 37,
                 "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
                 b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
                 b[14], b[15]);
        return 0;
}

char *escape_control(const char *s) {
        char *buf, *q;

        if (!s)
                return NULL;
        /* At most four bytes out for one in: "\x1b". */
        buf = malloc(strlen(s) * 4 + 1);
        if (!buf)
                return NULL;
        q = buf;
        for (const unsigned char *p = (const unsigned char *) s; *p; p++)
                switch (*p) {
                case '\\':
                        *q++ = '\\';
                        *q++ = '\\';
                        break;
                case '\n':
                        *q++ = '\\';
                        *q++ = 'n';
                        break;
                case '\t':
                        *q++ = '\\';
                        *q++ = 't';
                        break;
                case '\r':
                        *q++ = '\\';
                        *q++ = 'r';
                        break;
                default:
                        if (*p < 0x20 || *p == 0x7f) {
                                static const char hex[] = "0123456789abcdef";

                                *q++ = '\\';
                                *q++ = 'x';
                                *q++ = hex[*p >> 4];
                                *q++ = hex[*p & 0xf];
                        } else
                                *q++ = (char) *p;
                }
        *q = '\0';
        return buf;
}

static struct rlimit saved_nofile = { .rlim_cur = RLIM_INFINITY };

int rlimit_nofile_raise(void) {
        struct rlimit rl;

        if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
                return -errno;
        saved_nofile = rl;
        if (rl.rlim_cur >= rl.rlim_max)
                return 0;
        rl.rlim_cur = rl.rlim_max;
        return setrlimit(RLIMIT_NOFILE, &rl) < 0 ? -errno : 0;
}

void rlimit_nofile_restore(void) {
        if (saved_nofile.rlim_cur != RLIM_INFINITY)
                (void) setrlimit(RLIMIT_NOFILE, &saved_nofile);
}
