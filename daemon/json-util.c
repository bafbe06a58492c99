/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <math.h>

#include "json-util.h"
#include "message.h"

DEFINE_TRIVIAL_CLEANUP_FUNC(json_tokener *, json_tokener_free);

bool json_string_valid(const char *s, size_t max) {
        size_t len;

        if (!s)
                return false;
        len = strnlen(s, max + 1);
        return len <= max && utf8_is_valid(s, len);
}

bool json_string_printable(const char *s) {
        for (; *s; s++)
                if ((unsigned char) *s < 0x20 || *s == 0x7f)
                        return false;
        return true;
}

int json_payload_parse(const void *data, size_t size, json_object **ret) {
        return json_object_parse(data, size, MESSAGE_SIZE_MAX, ret);
}

int json_object_parse(const void *data, size_t size, size_t max, json_object **ret) {
        _cleanup_(json_tokener_freep) json_tokener *tok = NULL;
        _cleanup_json_ json_object *obj = NULL;
        size_t end;

        if (!data && size > 0)
                return -EINVAL;
        if (size > max)
                return -E2BIG;
        /* json-c stops at a NUL; a payload with one inside is not the text it claims to be. */
        if (size == 0 || memchr(data, 0, size))
                return -EBADMSG;

        tok = json_tokener_new();
        if (!tok)
                return -ENOMEM;
        json_tokener_set_flags(tok, JSON_TOKENER_STRICT
#ifdef JSON_TOKENER_VALIDATE_UTF8
                                            | JSON_TOKENER_VALIDATE_UTF8
#endif
        );
        obj = json_tokener_parse_ex(tok, data, (int) size);
        if (!obj)
                return -EBADMSG; /* also json_tokener_continue: the text ended early */
        end = json_tokener_get_parse_end(tok);
        for (const char *p = (const char *) data + end; end < size; p++, end++)
                if (!strchr(" \t\r\n", *p))
                        return -EBADMSG;
        if (!json_object_is_type(obj, json_type_object))
                return -EBADMSG;
        *ret = TAKE_PTR(obj);
        return 0;
}

/* Borrows the member, or NULL when it is missing or null. */
static json_object *member(json_object *obj, const char *key) {
        json_object *v;

        return json_object_object_get_ex(obj, key, &v) ? v : NULL;
}

int json_member_string_borrow(json_object *obj, const char *key, size_t max, const char **ret) {
        json_object *v = member(obj, key);
        const char *s;
        int len;

        if (!v) {
                *ret = NULL;
                return 0;
        }
        if (!json_object_is_type(v, json_type_string))
                return -EBADMSG;
        s = json_object_get_string(v);
        len = json_object_get_string_len(v);
        if (!s || len < 0 || (size_t) len > max || !utf8_is_valid(s, (size_t) len))
                return -EBADMSG; /* utf8_is_valid() also refuses an escaped \u0000 */
        *ret = s;
        return 0;
}

int json_member_string(json_object *obj, const char *key, size_t max, char **ret) {
        const char *s;
        char *copy;
        int r;

        r = json_member_string_borrow(obj, key, max, &s);
        if (r < 0)
                return r;
        if (!s) {
                *ret = NULL;
                return 0;
        }
        copy = strdup(s);
        if (!copy)
                return -ENOMEM;
        *ret = copy;
        return 0;
}

int json_member_required_string(json_object *obj, const char *key, size_t max, char **ret) {
        char *s = NULL;
        int r;

        r = json_member_string(obj, key, max, &s);
        if (r < 0)
                return r;
        if (isempty(s)) {
                free(s);
                return -EBADMSG;
        }
        *ret = s;
        return 0;
}

int json_member_text(json_object *obj, const char *key, size_t max, char **ret) {
        _cleanup_free_ char *s = NULL;
        char *escaped;
        int r;

        r = json_member_string(obj, key, max, &s);
        if (r < 0)
                return r;
        if (!s) {
                *ret = NULL;
                return 0;
        }
        escaped = escape_control(s);
        if (!escaped)
                return -ENOMEM;
        *ret = escaped;
        return 0;
}

int json_member_integer(json_object *obj, const char *key, int64_t min, int64_t max, int64_t def,
                        int64_t *ret) {
        json_object *v = member(obj, key);
        int64_t i;

        assert(min >= -JSON_INTEGER_MAX && max <= JSON_INTEGER_MAX && min <= max);

        if (!v) {
                *ret = def;
                return 0;
        }
        if (json_object_is_type(v, json_type_int)) {
                /* json-c clamps a literal past the int64 range to INT64_MIN or INT64_MAX,
                 * which the bounds above keep out. */
                i = json_object_get_int64(v);
                if (i < min || i > max)
                        return -EBADMSG;
        } else if (json_object_is_type(v, json_type_double)) {
                double d = json_object_get_double(v);

                /* Range first: converting a double outside the target type is undefined. The
                 * bounds are exact as doubles. NaN fails both comparisons. */
                if (!(d >= (double) min && d <= (double) max) || d != trunc(d))
                        return -EBADMSG;
                i = (int64_t) d;
        } else
                return -EBADMSG;
        *ret = i;
        return 0;
}

static int member_of_type(json_object *obj, const char *key, json_type type, json_object **ret) {
        json_object *v = member(obj, key);

        if (v && !json_object_is_type(v, type))
                return -EBADMSG;
        *ret = v;
        return 0;
}

int json_member_object(json_object *obj, const char *key, json_object **ret) {
        return member_of_type(obj, key, json_type_object, ret);
}

int json_member_array(json_object *obj, const char *key, json_object **ret) {
        return member_of_type(obj, key, json_type_array, ret);
}

int json_add(json_object *obj, const char *key, json_object *v) {
        if (!v)
                return -ENOMEM;
        if (json_object_object_add(obj, key, v) < 0) {
                json_object_put(v);
                return -ENOMEM;
        }
        return 0;
}

int json_add_string(json_object *obj, const char *key, const char *s) {
        return json_add(obj, key, json_object_new_string(s));
}

int json_add_int64(json_object *obj, const char *key, int64_t i) {
        return json_add(obj, key, json_object_new_int64(i));
}

int json_finish(json_object *obj, char **ret) {
        const char *s;
        char *copy;

        s = json_object_to_json_string_ext(obj, JSON_C_TO_STRING_PLAIN |
                                                        JSON_C_TO_STRING_NOSLASHESCAPE);
        if (!s)
                return -ENOMEM;
        if (strlen(s) > MESSAGE_SIZE_MAX)
                return -E2BIG;
        copy = strdup(s);
        if (!copy)
                return -ENOMEM;
        *ret = copy;
        return 0;
}

/* The shortest text that reads back as the same double: "72.5", not "72.500000000000000".
 * Minus zero becomes 0: "-0" would read back as the integer 0 anyway. Relies on the "C"
 * LC_NUMERIC locale, which lodevd never changes. */
json_object *json_new_number(double d) {
        char buf[64];

        if (d == 0)
                d = 0;

        /* Whole numbers as integers: "70", not "7e+01", which %g prefers. The range comes
         * first: converting 1e300 to an integer type is undefined. */
        if (fabs(d) < 1e15 && d == trunc(d))
                snprintf(buf, sizeof(buf), "%lld", (long long) d);
        else
                for (int prec = 1; prec <= 17; prec++) {
                        snprintf(buf, sizeof(buf), "%.*g", prec, d);
                        if (strtod(buf, NULL) == d)
                                break;
                }
        return json_object_new_double_s(d, buf);
}
