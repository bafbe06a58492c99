/* SPDX-License-Identifier: MIT */
#pragma once

/* Small helpers shared by every module: cleanup attributes that make ownership
 * visible, and a few string helpers. No sd-*, mosquitto or curl types here. */

#include <dirent.h>
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define _cleanup_(f) __attribute__((cleanup(f)))
#define _unused_ __attribute__((unused))
#define _printf_(a, b) __attribute__((format(printf, a, b)))
#define _sentinel_ __attribute__((sentinel))
#define _fallthrough_ __attribute__((__fallthrough__))

#define ELEMENTSOF(x) (sizeof(x) / sizeof((x)[0]))
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

/* Hand the pointer over to the caller and leave NULL behind, so the cleanup
 * attribute on the local variable no longer frees it. */
#define TAKE_PTR(p)                                                                                \
        ({                                                                                         \
                typeof(p) _p_ = (p);                                                               \
                (p) = NULL;                                                                        \
                _p_;                                                                               \
        })
#define TAKE_FD(fd)                                                                                \
        ({                                                                                         \
                int _fd_ = (fd);                                                                   \
                (fd) = -EBADF;                                                                     \
                _fd_;                                                                              \
        })

static inline void freep(void *p) {
        free(*(void **) p);
}
#define _cleanup_free_ _cleanup_(freep)

/* free(p), returning NULL for "p = mfree(p)". */
static inline void *mfree(void *p) {
        free(p);
        return NULL;
}

static inline int safe_close(int fd) {
        if (fd >= 0) {
                int saved = errno;
                (void) close(fd);
                errno = saved;
        }
        return -EBADF;
}
static inline void closep(int *fd) {
        *fd = safe_close(*fd);
}
#define _cleanup_close_ _cleanup_(closep)

static inline void fclosep(FILE **f) {
        if (*f)
                (void) fclose(*f);
}
#define _cleanup_fclose_ _cleanup_(fclosep)

/* Defines name##p(type **) calling func(*p) when *p is set, for _cleanup_(). */
#define DEFINE_TRIVIAL_CLEANUP_FUNC(type, func)                                                    \
        static inline void func##p(type *p) {                                                      \
                if (*p)                                                                            \
                        func(*p);                                                                  \
        }

DEFINE_TRIVIAL_CLEANUP_FUNC(DIR *, closedir);

static inline bool streq(const char *a, const char *b) {
        return strcmp(a, b) == 0;
}
static inline bool streq_ptr(const char *a, const char *b) {
        if (!a || !b)
                return a == b;
        return streq(a, b);
}
static inline bool isempty(const char *s) {
        return !s || !*s;
}
static inline const char *strempty(const char *s) {
        return s ?: "";
}

/* Replaces *dst with a copy of src (NULL allowed). -ENOMEM on failure, *dst untouched. */
int free_and_strdup(char **dst, const char *src);

/* Formats into a newly allocated string, NULL on allocation failure. */
char *strdup_printf(const char *fmt, ...) _printf_(1, 2);

/* Strips leading and trailing white space in place and returns s. */
char *strstrip(char *s);

/* True when the buffer is valid UTF-8 without NUL bytes. */
bool utf8_is_valid(const char *s, size_t len);

/* Exchanges two owned string pointers. */
#define SWAP_STR(a, b)                                                                             \
        do {                                                                                       \
                char *_t_ = (a);                                                                   \
                (a) = (b);                                                                         \
                (b) = _t_;                                                                         \
        } while (0)

/* A random (version 4) UUID in its 36-character text form. */
int uuid_random(char ret[static 37]);

/* 64 random bits for jitter; never fails (falls back to the clock). */
uint64_t random_u64(void);

/* True when x equals one of the values listed; each is evaluated once. */
#define IN_SET(x, ...)                                                                             \
        ({                                                                                         \
                const typeof(x) _x_ = (x), _set_[] = { __VA_ARGS__ };                              \
                bool _found_ = false;                                                              \
                for (size_t _i_ = 0; _i_ < ELEMENTSOF(_set_); _i_++)                               \
                        if (_set_[_i_] == _x_) {                                                   \
                                _found_ = true;                                                    \
                                break;                                                             \
                        }                                                                          \
                _found_;                                                                           \
        })

/* An enum's names, kept in a table "static const char *const name##_table[_X_MAX]" indexed by
 * the enum, turned into name##_to_string() (NULL for a value out of range) and
 * name##_from_string() (the enum's _X_INVALID, -EINVAL, for NULL or an unknown name). The table
 * is the one place a name is written. */
#define DEFINE_STRING_TABLE_LOOKUP_TO_STRING(name, type)                                           \
        const char *name##_to_string(type i) {                                                     \
                if ((int) i < 0 || (size_t) i >= ELEMENTSOF(name##_table))                         \
                        return NULL;                                                               \
                return name##_table[i];                                                            \
        }
#define DEFINE_STRING_TABLE_LOOKUP_FROM_STRING(name, type)                                         \
        type name##_from_string(const char *s) {                                                   \
                if (!s)                                                                            \
                        return (type) -EINVAL;                                                     \
                for (size_t i = 0; i < ELEMENTSOF(name##_table); i++)                              \
                        if (name##_table[i] && streq(name##_table[i], s))                          \
                                return (type) i;                                                   \
                return (type) -EINVAL;                                                             \
        }
#define DEFINE_STRING_TABLE_LOOKUP(name, type)                                                     \
        DEFINE_STRING_TABLE_LOOKUP_TO_STRING(name, type)                                           \
        DEFINE_STRING_TABLE_LOOKUP_FROM_STRING(name, type)

/* The rest of s after prefix, or NULL when s does not start with it. */
static inline const char *startswith(const char *s, const char *prefix) {
        size_t n = strlen(prefix);

        return strncmp(s, prefix, n) == 0 ? s + n : NULL;
}

/* A copy of s that is safe to put in a log line, a D-Bus property or a terminal: every byte
 * below 0x20 and 0x7f becomes a C escape ("\n", "\t", "\r", or "\x1b" and the like) and a
 * backslash becomes "\\"; everything else, UTF-8 included, is copied as it is. NULL for NULL
 * or on allocation failure. */
char *escape_control(const char *s);
