/* SPDX-License-Identifier: MIT */
#pragma once

/* What every message-*.c codec needs from json-c, with the errors of message.h: a payload that
 * is not the expected shape is -EBADMSG, one over MESSAGE_SIZE_MAX -E2BIG, allocation failure
 * -ENOMEM. Getters leave *ret untouched on failure. */

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

DEFINE_TRIVIAL_CLEANUP_FUNC(json_object *, json_object_put);
#define _cleanup_json_ _cleanup_(json_object_putp)

/* The integers JSON carries exactly everywhere (RFC 7493, I-JSON): +-(2^53 - 1). */
#define JSON_INTEGER_MAX ((INT64_C(1) << 53) - 1)

/* True when s is non-NULL valid UTF-8 of at most max bytes. */
bool json_string_valid(const char *s, size_t max);
/* True when s has no C0 control character and no DEL. */
bool json_string_printable(const char *s);

/* --- Decoding --- */

/* Parses a payload of size bytes (no NUL needed; an embedded NUL is -EBADMSG) that must be
 * one JSON object, with nothing but white space after it. */
int json_payload_parse(const void *data, size_t size, json_object **ret);
/* The same with another bound than MESSAGE_SIZE_MAX (a file of lodevd's own, say). */
int json_object_parse(const void *data, size_t size, size_t max, json_object **ret);

/* A string member of at most max bytes of valid UTF-8 (an escaped \u0000 is invalid). Missing
 * or null gives 0 and NULL: the caller decides whether that is allowed. Another type is
 * -EBADMSG. */
int json_member_string(json_object *obj, const char *key, size_t max, char **ret);
/* The same, borrowed from obj (valid while obj is); missing or null gives 0 and NULL. */
int json_member_string_borrow(json_object *obj, const char *key, size_t max, const char **ret);
/* The same, but missing, null or "" is -EBADMSG. */
int json_member_required_string(json_object *obj, const char *key, size_t max, char **ret);
/* Free text from the platform that may end up in a log line, LastError or lodevctl output:
 * like json_member_string(), with control characters escaped (escape_control()). max
 * applies to the text as received. */
int json_member_text(json_object *obj, const char *key, size_t max, char **ret);

/* An integer member within [min, max], which must lie within +-JSON_INTEGER_MAX. A number
 * written with a fraction or an exponent is accepted when its value is integral ("2.0",
 * "1e3"); one that is not, or is out of range, or another type is -EBADMSG. The range is
 * checked on the number as parsed, before any conversion, so 1e300 is simply out of range.
 * Missing or null gives 0 and def. */
int json_member_integer(json_object *obj, const char *key, int64_t min, int64_t max, int64_t def,
                        int64_t *ret);

/* An object or array member, borrowed from obj. Missing or null gives 0 and NULL; another
 * type is -EBADMSG. */
int json_member_object(json_object *obj, const char *key, json_object **ret);
int json_member_array(json_object *obj, const char *key, json_object **ret);

/* --- Encoding --- */

/* Adds v (consumed, also on failure) under key; a NULL v is taken for a failed allocation. */
int json_add(json_object *obj, const char *key, json_object *v);
int json_add_string(json_object *obj, const char *key, const char *s);
int json_add_int64(json_object *obj, const char *key, int64_t i);
/* A number that reads back as the same double, in its shortest text. */
json_object *json_new_number(double d);
/* The compact text of obj, newly allocated; -E2BIG past MESSAGE_SIZE_MAX. */
int json_finish(json_object *obj, char **ret);
