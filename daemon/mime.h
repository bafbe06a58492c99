/* SPDX-License-Identifier: MIT */
#pragma once

/* Content types from file names, through the system's mime.types (Debian's media-types
 * package installs /etc/mime.types), so lodevd agrees with the rest of the system and
 * carries no table of its own.
 *
 * The format: one media type per line followed by zero or more extensions, separated by
 * spaces or tabs; '#' starts a comment. Extensions match case-insensitively (ASCII); when
 * the file lists an extension twice, the first line wins. Lines whose type is not of the
 * form type/subtype are skipped.
 *
 * A missing or unreadable file is not fatal: every name then maps to
 * application/octet-stream, which S3 accepts for anything. The error is returned
 * separately so that the caller can log it once. */

#include <stddef.h>

#define MIME_TYPES_PATH "/etc/mime.types"
#define MIME_TYPE_DEFAULT "application/octet-stream"
/* Larger than any real mime.types (Debian's is about 75 KiB). */
#define MIME_TYPES_SIZE_MAX (4U * 1024U * 1024U)

typedef struct MimeTable MimeTable;

/* Reads and indexes path. The daemon loads it once and again on SIGHUP, keeping the old
 * table when the new one fails to load. -ENOENT, -EACCES, ... when it cannot be read,
 * -EFBIG when larger than MIME_TYPES_SIZE_MAX. */
int mime_table_load(const char *path, MimeTable **ret);

/* NULL-safe; returns NULL. */
MimeTable *mime_table_free(MimeTable *t);

/* Number of extensions known. */
size_t mime_table_size(const MimeTable *t);

/* The type for the last extension of file_name (the text after its last '.', if that is
 * neither the first nor the last character of the name's last path component), or
 * MIME_TYPE_DEFAULT when there is none or it is unknown. t may be NULL (nothing is known).
 * Never NULL; valid as long as the table. */
const char *mime_table_lookup(const MimeTable *t, const char *file_name);

/* One-shot: loads mime_types_path, looks file_name up, and returns a copy in *ret.
 * Returns 1 when the table knew the extension, 0 when *ret is MIME_TYPE_DEFAULT because
 * there was no or an unknown extension, and a negative errno when the table could not be
 * read; in that last case *ret is MIME_TYPE_DEFAULT nevertheless (unless -ENOMEM), so the
 * caller can log the error and go on. */
int mime_type_from_name(const char *mime_types_path, const char *file_name, char **ret);
