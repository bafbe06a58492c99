/* SPDX-License-Identifier: MIT */
#include <assert.h>

#include "fileio.h"
#include "mime.h"
#include "util.h"

typedef struct MimeEntry {
        const char *extension; /* lowercase, points into text */
        const char *type;      /* points into text */
        size_t line;           /* so that the first line wins among duplicates */
} MimeEntry;

struct MimeTable {
        char *text; /* the file, cut into NUL-terminated words in place */
        MimeEntry *entries;
        size_t n_entries;
};

static char ascii_tolower(char c) {
        return c >= 'A' && c <= 'Z' ? (char) (c - 'A' + 'a') : c;
}

/* Case-insensitive in ASCII only: the result must not depend on the locale. */
static int ascii_strcasecmp(const char *a, const char *b) {
        for (;; a++, b++) {
                char x = ascii_tolower(*a), y = ascii_tolower(*b);

                if (x != y || x == '\0')
                        return (unsigned char) x - (unsigned char) y;
        }
}

static bool is_blank(char c) {
        return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

/* type/subtype, both non-empty, printable ASCII without spaces. */
static bool type_is_valid(const char *type) {
        const char *slash = strchr(type, '/');

        if (!slash || slash == type || slash[1] == '\0' || strchr(slash + 1, '/'))
                return false;
        for (const char *p = type; *p; p++)
                if (*p <= 0x20 || *p >= 0x7f)
                        return false;
        return true;
}

static int entry_compare(const void *a, const void *b) {
        const MimeEntry *x = a, *y = b;
        int k = strcmp(x->extension, y->extension);

        if (k != 0)
                return k;
        return x->line < y->line ? -1 : x->line > y->line;
}

static int table_add(MimeTable *t, size_t *allocated, const char *ext, const char *type,
                     size_t line) {
        if (t->n_entries >= *allocated) {
                size_t n = MAX(*allocated * 2, (size_t) 256);
                MimeEntry *a = reallocarray(t->entries, n, sizeof(MimeEntry));

                if (!a)
                        return -ENOMEM;
                t->entries = a;
                *allocated = n;
        }
        t->entries[t->n_entries++] = (MimeEntry) {
                .extension = ext,
                .type = type,
                .line = line,
        };
        return 0;
}

/* The next word of a NUL-terminated line, terminated in place; NULL at the end of the line
 * or at a word that starts a comment. */
static char *next_word(char **p) {
        char *word;

        while (is_blank(**p))
                (*p)++;
        if (**p == '\0' || **p == '#')
                return NULL;
        word = *p;
        while (**p && !is_blank(**p))
                (*p)++;
        if (**p)
                *(*p)++ = '\0';
        return word;
}

/* Cuts text into words in place and indexes the "type ext ext ..." lines. */
static int table_parse(MimeTable *t) {
        size_t allocated = 0, line = 0, n = 0;
        char *p = t->text;

        while (*p) {
                char *end = strchrnul(p, '\n');
                char *next = *end ? end + 1 : end;
                const char *type;
                char *word;

                *end = '\0';
                line++;
                type = next_word(&p);
                if (type && type_is_valid(type))
                        while ((word = next_word(&p))) {
                                for (char *c = word; *c; c++)
                                        *c = ascii_tolower(*c);
                                if (table_add(t, &allocated, word, type, line) < 0)
                                        return -ENOMEM;
                        }
                p = next;
        }

        if (t->n_entries > 1)
                qsort(t->entries, t->n_entries, sizeof(MimeEntry), entry_compare);
        /* Keep the first line's entry of each extension. */
        for (size_t i = 0; i < t->n_entries; i++)
                if (n == 0 || !streq(t->entries[n - 1].extension, t->entries[i].extension))
                        t->entries[n++] = t->entries[i];
        t->n_entries = n;
        return 0;
}

int mime_table_load(const char *path, MimeTable **ret) {
        MimeTable *t;
        int r;

        assert(path);
        assert(ret);

        t = calloc(1, sizeof(MimeTable));
        if (!t)
                return -ENOMEM;
        r = read_file(path, MIME_TYPES_SIZE_MAX, &t->text, NULL);
        if (r >= 0)
                r = table_parse(t);
        if (r < 0) {
                mime_table_free(t);
                return r;
        }
        *ret = t;
        return 0;
}

MimeTable *mime_table_free(MimeTable *t) {
        if (!t)
                return NULL;
        free(t->entries);
        free(t->text);
        free(t);
        return NULL;
}

size_t mime_table_size(const MimeTable *t) {
        return t ? t->n_entries : 0;
}

/* The last extension of the name's last component, NULL when there is none. */
static const char *extension_of(const char *file_name) {
        const char *base, *dot;

        base = strrchr(file_name, '/');
        base = base ? base + 1 : file_name;
        dot = strrchr(base, '.');
        /* ".profile" has no extension, "name." an empty one. */
        if (!dot || dot == base || dot[1] == '\0')
                return NULL;
        return dot + 1;
}

static const char *table_find(const MimeTable *t, const char *ext) {
        size_t lo = 0, hi = t->n_entries;

        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                int k = ascii_strcasecmp(ext, t->entries[mid].extension);

                if (k == 0)
                        return t->entries[mid].type;
                if (k < 0)
                        hi = mid;
                else
                        lo = mid + 1;
        }
        return NULL;
}

static const char *table_find_name(const MimeTable *t, const char *file_name) {
        const char *ext;

        if (!t || !file_name)
                return NULL;
        ext = extension_of(file_name);
        return ext ? table_find(t, ext) : NULL;
}

const char *mime_table_lookup(const MimeTable *t, const char *file_name) {
        return table_find_name(t, file_name) ?: MIME_TYPE_DEFAULT;
}

int mime_type_from_name(const char *mime_types_path, const char *file_name, char **ret) {
        MimeTable *t = NULL;
        const char *type;
        char *copy;
        int r;

        assert(ret);

        r = mime_table_load(mime_types_path, &t);
        if (r == -ENOMEM)
                return r;
        type = table_find_name(t, file_name);
        copy = strdup(type ?: MIME_TYPE_DEFAULT);
        if (!copy) {
                mime_table_free(t);
                return -ENOMEM;
        }
        if (r >= 0)
                r = type ? 1 : 0;
        mime_table_free(t);
        *ret = copy;
        return r;
}
