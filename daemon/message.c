/* SPDX-License-Identifier: MIT */
#include <json-c/json.h>
#include <math.h>
#include <stdint.h>
#include <strings.h>

#include "message.h"
#include "topic.h"
#include "util.h"

DEFINE_TRIVIAL_CLEANUP_FUNC(json_object *, json_object_put);
DEFINE_TRIVIAL_CLEANUP_FUNC(json_tokener *, json_tokener_free);
#define _cleanup_json_ _cleanup_(json_object_putp)

/* Presigned URLs run to a few kilobytes; a certificate PEM to about two. */
#define URL_MAX (16U * 1024U)
#define FILE_NAME_MAX 1024U
#define CONTENT_TYPE_MAX 256U

static const char *const job_status_table[_JOB_STATUS_MAX] = {
        [JOB_STATUS_QUEUED] = "QUEUED",       [JOB_STATUS_IN_PROGRESS] = "IN_PROGRESS",
        [JOB_STATUS_SUCCEEDED] = "SUCCEEDED", [JOB_STATUS_FAILED] = "FAILED",
        [JOB_STATUS_TIMED_OUT] = "TIMED_OUT", [JOB_STATUS_REJECTED] = "REJECTED",
        [JOB_STATUS_REMOVED] = "REMOVED",     [JOB_STATUS_CANCELED] = "CANCELED",
};

const char *job_status_to_string(JobStatus s) {
        if (s < 0 || s >= _JOB_STATUS_MAX)
                return NULL;
        return job_status_table[s];
}

JobStatus job_status_from_string(const char *s) {
        if (!s)
                return _JOB_STATUS_INVALID;
        for (JobStatus i = 0; i < _JOB_STATUS_MAX; i++)
                if (streq(job_status_table[i], s))
                        return i;
        return _JOB_STATUS_INVALID;
}

static bool string_valid(const char *s, size_t max) {
        size_t len;

        if (!s)
                return false;
        len = strnlen(s, max + 1);
        return len <= max && utf8_is_valid(s, len);
}

/* No C0 control character or DEL: the string ends up in a header, a URL or a log line. */
static bool string_printable(const char *s) {
        for (; *s; s++)
                if ((unsigned char) *s < 0x20 || *s == 0x7f)
                        return false;
        return true;
}

/* --- Decoding --- */

static int json_parse(const void *data, size_t size, json_object **ret) {
        _cleanup_(json_tokener_freep) json_tokener *tok = NULL;
        json_object *obj;
        size_t end;

        if (!data && size > 0)
                return -EINVAL;
        if (size > MESSAGE_SIZE_MAX)
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
                if (!strchr(" \t\r\n", *p)) {
                        json_object_put(obj);
                        return -EBADMSG;
                }
        if (!json_object_is_type(obj, json_type_object)) {
                json_object_put(obj);
                return -EBADMSG;
        }
        *ret = obj;
        return 0;
}

/* A string member: -EBADMSG when it has another type, is too long or is not clean UTF-8;
 * missing or null gives 0 and NULL (the caller decides whether that is allowed). */
static int json_get_string(json_object *obj, const char *key, size_t max, char **ret) {
        json_object *v;
        const char *s;
        int len;
        char *copy;

        if (!json_object_object_get_ex(obj, key, &v) || !v) {
                *ret = NULL;
                return 0;
        }
        if (!json_object_is_type(v, json_type_string))
                return -EBADMSG;
        s = json_object_get_string(v);
        len = json_object_get_string_len(v);
        if (!s || len < 0 || (size_t) len > max || !utf8_is_valid(s, (size_t) len))
                return -EBADMSG; /* utf8_is_valid() also refuses an escaped \u0000 */
        copy = strndup(s, (size_t) len);
        if (!copy)
                return -ENOMEM;
        *ret = copy;
        return 0;
}

static int json_get_required_string(json_object *obj, const char *key, size_t max, char **ret) {
        char *s = NULL;
        int r;

        r = json_get_string(obj, key, max, &s);
        if (r < 0)
                return r;
        if (isempty(s)) {
                free(s);
                return -EBADMSG;
        }
        *ret = s;
        return 0;
}

/* A non-negative integer member; missing or null gives -1. */
static int json_get_counter(json_object *obj, const char *key, int64_t *ret) {
        json_object *v;
        int64_t i;

        if (!json_object_object_get_ex(obj, key, &v) || !v) {
                *ret = -1;
                return 0;
        }
        if (!json_object_is_type(v, json_type_int))
                return -EBADMSG;
        i = json_object_get_int64(v);
        if (i < 0)
                return -EBADMSG;
        *ret = i;
        return 0;
}

/* --- Encoding --- */

static int json_add(json_object *obj, const char *key, json_object *v) {
        if (!v)
                return -ENOMEM;
        if (json_object_object_add(obj, key, v) < 0) {
                json_object_put(v);
                return -ENOMEM;
        }
        return 0;
}

static int json_add_string(json_object *obj, const char *key, const char *s) {
        return json_add(obj, key, json_object_new_string(s));
}

static int json_finish(json_object *obj, char **ret) {
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
static json_object *json_new_number(double d) {
        char buf[64];

        if (d == 0)
                d = 0;

        /* Whole numbers as integers: "70", not "7e+01", which %g prefers. */
        if (d == (double) (long long) d && fabs(d) < 1e15)
                snprintf(buf, sizeof(buf), "%lld", (long long) d);
        else
                for (int prec = 1; prec <= 17; prec++) {
                        snprintf(buf, sizeof(buf), "%.*g", prec, d);
                        if (strtod(buf, NULL) == d)
                                break;
                }
        return json_object_new_double_s(d, buf);
}

/* --- Observation --- */

void observation_done(Observation *o) {
        if (!o)
                return;
        free(o->unit);
        free(o->code);
        free(o->system);
        free(o->display);
        free(o->patient_id);
        *o = (Observation) {};
}

int observation_validate(const Observation *o, const char **ret_field) {
        const char *field = NULL;

        if (!o)
                return -EINVAL;
        if (!isfinite(o->value))
                field = "value";
        else if (o->unit && !string_valid(o->unit, OBSERVATION_FIELD_MAX))
                field = "unit";
        else if (isempty(o->code) || !string_valid(o->code, OBSERVATION_FIELD_MAX))
                field = "code";
        else if (isempty(o->system) || !string_valid(o->system, OBSERVATION_FIELD_MAX))
                field = "system";
        else if (o->display && !string_valid(o->display, OBSERVATION_FIELD_MAX))
                field = "display";
        else if (o->patient_id && !string_valid(o->patient_id, OBSERVATION_FIELD_MAX))
                field = "patientId";

        if (field) {
                if (ret_field)
                        *ret_field = field;
                return -EINVAL;
        }
        return 0;
}

int message_encode_observation(const Observation *o, char **ret) {
        _cleanup_json_ json_object *root = NULL;
        json_object *coding, *array;
        int r;

        if (!ret)
                return -EINVAL;
        r = observation_validate(o, NULL);
        if (r < 0)
                return r;

        root = json_object_new_object();
        if (!root)
                return -ENOMEM;
        r = json_add(root, "value", json_new_number(o->value));
        if (r < 0)
                return r;
        r = json_add_string(root, "unit", strempty(o->unit));
        if (r < 0)
                return r;

        r = json_add(root, "coding", array = json_object_new_array());
        if (r < 0)
                return r;
        coding = json_object_new_object();
        if (!coding)
                return -ENOMEM;
        if (json_object_array_add(array, coding) < 0) {
                json_object_put(coding);
                return -ENOMEM;
        }
        r = json_add_string(coding, "code", o->code);
        if (r < 0)
                return r;
        r = json_add_string(coding, "system", o->system);
        if (r < 0)
                return r;
        r = json_add_string(coding, "display", strempty(o->display));
        if (r < 0)
                return r;

        if (!isempty(o->patient_id)) {
                r = json_add_string(root, "patientId", o->patient_id);
                if (r < 0)
                        return r;
        }
        return json_finish(root, ret);
}

int message_decode_observation(const void *data, size_t size, Observation *ret) {
        _cleanup_json_ json_object *root = NULL;
        _cleanup_(observation_done) Observation o = {};
        json_object *v, *coding, *c;
        int r;

        if (!ret)
                return -EINVAL;
        r = json_parse(data, size, &root);
        if (r < 0)
                return r;

        if (!json_object_object_get_ex(root, "value", &v) ||
            !(json_object_is_type(v, json_type_double) || json_object_is_type(v, json_type_int)))
                return -EBADMSG;
        o.value = json_object_get_double(v);

        if (!json_object_object_get_ex(root, "unit", &v) ||
            !json_object_is_type(v, json_type_string))
                return -EBADMSG;
        r = json_get_string(root, "unit", OBSERVATION_FIELD_MAX, &o.unit);
        if (r < 0)
                return r;

        if (!json_object_object_get_ex(root, "coding", &coding) ||
            !json_object_is_type(coding, json_type_array) ||
            json_object_array_length(coding) != 1) /* one coding is all the struct can hold */
                return -EBADMSG;
        c = json_object_array_get_idx(coding, 0);
        if (!json_object_is_type(c, json_type_object))
                return -EBADMSG;
        r = json_get_required_string(c, "code", OBSERVATION_FIELD_MAX, &o.code);
        if (r < 0)
                return r;
        r = json_get_required_string(c, "system", OBSERVATION_FIELD_MAX, &o.system);
        if (r < 0)
                return r;
        r = json_get_string(c, "display", OBSERVATION_FIELD_MAX, &o.display);
        if (r < 0)
                return r;
        r = json_get_string(root, "patientId", OBSERVATION_FIELD_MAX, &o.patient_id);
        if (r < 0)
                return r;

        if (observation_validate(&o, NULL) < 0)
                return -EBADMSG;

        *ret = o;
        o = (Observation) {};
        return 0;
}

/* --- Claim --- */

int message_encode_create(char **ret) {
        char *s;

        if (!ret)
                return -EINVAL;
        s = strdup("{}");
        if (!s)
                return -ENOMEM;
        *ret = s;
        return 0;
}

int message_encode_create_from_csr(const char *csr_pem, char **ret) {
        _cleanup_json_ json_object *root = NULL;
        int r;

        if (!ret || isempty(csr_pem) || !string_valid(csr_pem, MESSAGE_SIZE_MAX))
                return -EINVAL;

        root = json_object_new_object();
        if (!root)
                return -ENOMEM;
        r = json_add_string(root, "certificateSigningRequest", csr_pem);
        if (r < 0)
                return r;
        return json_finish(root, ret);
}

void create_certificate_response_done(CreateCertificateResponse *c) {
        if (!c)
                return;
        free(c->certificate_id);
        free(c->certificate_pem);
        free(c->private_key);
        free(c->ownership_token);
        *c = (CreateCertificateResponse) {};
}

int message_decode_create_certificate(const void *data, size_t size,
                                      CreateCertificateResponse *ret) {
        _cleanup_json_ json_object *root = NULL;
        _cleanup_(create_certificate_response_done) CreateCertificateResponse c = {};
        int r;

        if (!ret)
                return -EINVAL;
        r = json_parse(data, size, &root);
        if (r < 0)
                return r;

        r = json_get_required_string(root, "certificateId", MESSAGE_SIZE_MAX, &c.certificate_id);
        if (r < 0)
                return r;
        r = json_get_required_string(root, "certificatePem", MESSAGE_SIZE_MAX,
                                     &c.certificate_pem);
        if (r < 0)
                return r;
        r = json_get_string(root, "privateKey", MESSAGE_SIZE_MAX, &c.private_key);
        if (r < 0)
                return r;
        if (c.private_key && !*c.private_key)
                return -EBADMSG;
        r = json_get_required_string(root, "certificateOwnershipToken", MESSAGE_SIZE_MAX,
                                     &c.ownership_token);
        if (r < 0)
                return r;

        *ret = c;
        c = (CreateCertificateResponse) {};
        return 0;
}

/* --- Errors --- */

void platform_error_done(PlatformError *e) {
        if (!e)
                return;
        free(e->error_code);
        free(e->error_message);
        *e = (PlatformError) {};
}

int message_decode_error(const void *data, size_t size, PlatformError *ret) {
        _cleanup_json_ json_object *root = NULL;
        _cleanup_(platform_error_done) PlatformError e = {};
        json_object *v;
        int r;

        if (!ret)
                return -EINVAL;
        r = json_parse(data, size, &root);
        if (r < 0)
                return r;

        if (json_object_object_get_ex(root, "statusCode", &v) && v) {
                int64_t i;

                if (!json_object_is_type(v, json_type_int))
                        return -EBADMSG;
                i = json_object_get_int64(v);
                if (i < 0 || i > 999)
                        return -EBADMSG;
                e.status_code = (int) i;
        }

        /* Provisioning says errorCode/errorMessage, AWS IoT Jobs code/message. */
        r = json_get_string(root, "errorCode", 1024, &e.error_code);
        if (r < 0)
                return r;
        if (!e.error_code) {
                r = json_get_string(root, "code", 1024, &e.error_code);
                if (r < 0)
                        return r;
        }
        if (isempty(e.error_code))
                return -EBADMSG;

        r = json_get_string(root, "errorMessage", MESSAGE_SIZE_MAX, &e.error_message);
        if (r < 0)
                return r;
        if (!e.error_message) {
                r = json_get_string(root, "message", MESSAGE_SIZE_MAX, &e.error_message);
                if (r < 0)
                        return r;
        }

        *ret = e;
        e = (PlatformError) {};
        return 0;
}

/* --- Register --- */

int message_encode_register(const char *template_name, const char *const *param_names,
                            const char *const *param_values, size_t n,
                            const char *ownership_token, char **ret) {
        _cleanup_json_ json_object *root = NULL;
        json_object *params;
        int r;

        if (!ret || !topic_name_component_valid(template_name) || isempty(ownership_token) ||
            !string_valid(ownership_token, MESSAGE_SIZE_MAX) ||
            (n > 0 && (!param_names || !param_values)))
                return -EINVAL;
        for (size_t i = 0; i < n; i++) {
                if (isempty(param_names[i]) || !string_valid(param_names[i], 1024) ||
                    !string_valid(param_values[i], MESSAGE_SIZE_MAX))
                        return -EINVAL;
                for (size_t j = 0; j < i; j++)
                        if (streq(param_names[i], param_names[j]))
                                return -EINVAL;
        }

        root = json_object_new_object();
        if (!root)
                return -ENOMEM;
        r = json_add(root, "parameters", params = json_object_new_object());
        if (r < 0)
                return r;
        for (size_t i = 0; i < n; i++) {
                r = json_add_string(params, param_names[i], param_values[i]);
                if (r < 0)
                        return r;
        }
        r = json_add_string(root, "templateName", template_name);
        if (r < 0)
                return r;
        r = json_add_string(root, "certificateOwnershipToken", ownership_token);
        if (r < 0)
                return r;
        return json_finish(root, ret);
}

int message_decode_register_accepted(const void *data, size_t size, char **ret_thing_name) {
        _cleanup_json_ json_object *root = NULL;
        _cleanup_free_ char *thing = NULL;
        int r;

        if (!ret_thing_name)
                return -EINVAL;
        r = json_parse(data, size, &root);
        if (r < 0)
                return r;
        r = json_get_required_string(root, "thingName", TOPIC_COMPONENT_MAX, &thing);
        if (r < 0)
                return r;
        /* It becomes part of every topic and of file contents: no wildcards, no '/'. */
        if (!topic_name_component_valid(thing))
                return -EBADMSG;

        *ret_thing_name = TAKE_PTR(thing);
        return 0;
}

/* --- File upload --- */

int message_encode_upload_link_request(const char *file_name, const char *content_type,
                                       char **ret) {
        _cleanup_json_ json_object *root = NULL;
        int r;

        if (!ret || isempty(file_name) || !string_valid(file_name, FILE_NAME_MAX) ||
            !string_printable(file_name) || strchr(file_name, '/') || isempty(content_type) ||
            strlen(content_type) > CONTENT_TYPE_MAX)
                return -EINVAL;
        for (const char *p = content_type; *p; p++)
                if ((unsigned char) *p < 0x20 || (unsigned char) *p >= 0x7f)
                        return -EINVAL;

        root = json_object_new_object();
        if (!root)
                return -ENOMEM;
        r = json_add_string(root, "fileName", file_name);
        if (r < 0)
                return r;
        r = json_add_string(root, "contentType", content_type);
        if (r < 0)
                return r;
        return json_finish(root, ret);
}

int message_decode_upload_link(const void *data, size_t size, char **ret_url) {
        _cleanup_json_ json_object *root = NULL;
        _cleanup_free_ char *url = NULL;
        int r;

        if (!ret_url)
                return -EINVAL;
        r = json_parse(data, size, &root);
        if (r < 0)
                return r;
        r = json_get_required_string(root, "uploadUrl", URL_MAX, &url);
        if (r < 0)
                return r;
        if (strncasecmp(url, "https://", 8) != 0 && strncasecmp(url, "http://", 7) != 0)
                return -EBADMSG;
        for (const char *p = url; *p; p++)
                if ((unsigned char) *p <= 0x20 || *p == 0x7f)
                        return -EBADMSG;

        *ret_url = TAKE_PTR(url);
        return 0;
}

/* --- Jobs --- */

static bool status_detail_key_valid(const char *s) {
        size_t len = strnlen(s, JOB_STATUS_DETAIL_KEY_MAX + 1);

        if (len == 0 || len > JOB_STATUS_DETAIL_KEY_MAX)
                return false;
        for (size_t i = 0; i < len; i++)
                if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
                      (s[i] >= '0' && s[i] <= '9') || strchr(":_-", s[i])))
                        return false;
        return true;
}

/* 1 to 1024 characters (code points, as AWS counts), none of them a control character. */
static bool status_detail_value_valid(const char *s) {
        size_t len = strnlen(s, 4 * JOB_STATUS_DETAIL_VALUE_MAX + 1), chars = 0;

        if (len == 0 || len > 4 * JOB_STATUS_DETAIL_VALUE_MAX || !utf8_is_valid(s, len) ||
            !string_printable(s))
                return false;
        for (size_t i = 0; i < len; i++)
                if (((unsigned char) s[i] & 0xc0) != 0x80)
                        chars++;
        return chars <= JOB_STATUS_DETAIL_VALUE_MAX;
}

int message_encode_job_update(JobStatus status, const char *const *detail_keys,
                              const char *const *detail_values, size_t n,
                              int64_t expected_version, char **ret) {
        _cleanup_json_ json_object *root = NULL;
        int r;

        /* The statuses a device may set; the others belong to the service. */
        if (!ret || !(status == JOB_STATUS_IN_PROGRESS || status == JOB_STATUS_SUCCEEDED ||
                      status == JOB_STATUS_FAILED || status == JOB_STATUS_REJECTED))
                return -EINVAL;
        if (n > JOB_STATUS_DETAILS_MAX)
                return -E2BIG;
        if (n > 0 && (!detail_keys || !detail_values))
                return -EINVAL;
        for (size_t i = 0; i < n; i++) {
                if (!detail_keys[i] || !detail_values[i] ||
                    !status_detail_key_valid(detail_keys[i]) ||
                    !status_detail_value_valid(detail_values[i]))
                        return -EINVAL;
                for (size_t j = 0; j < i; j++)
                        if (streq(detail_keys[i], detail_keys[j]))
                                return -EINVAL;
        }

        root = json_object_new_object();
        if (!root)
                return -ENOMEM;
        r = json_add_string(root, "status", job_status_to_string(status));
        if (r < 0)
                return r;
        if (n > 0) {
                json_object *details;

                r = json_add(root, "statusDetails", details = json_object_new_object());
                if (r < 0)
                        return r;
                for (size_t i = 0; i < n; i++) {
                        r = json_add_string(details, detail_keys[i], detail_values[i]);
                        if (r < 0)
                                return r;
                }
        }
        if (expected_version >= 0) {
                r = json_add(root, "expectedVersion", json_object_new_int64(expected_version));
                if (r < 0)
                        return r;
        }
        return json_finish(root, ret);
}

static void job_summaries_free(JobSummary *s, size_t n) {
        for (size_t i = 0; i < n; i++)
                free(s[i].job_id);
        free(s);
}

void job_list_done(JobList *l) {
        if (!l)
                return;
        job_summaries_free(l->in_progress, l->n_in_progress);
        job_summaries_free(l->queued, l->n_queued);
        *l = (JobList) {};
}

static int job_id_get(json_object *obj, char **ret) {
        char *id = NULL;
        int r;

        r = json_get_required_string(obj, "jobId", TOPIC_JOB_ID_MAX, &id);
        if (r < 0)
                return r;
        if (!topic_job_id_valid(id)) {
                free(id);
                return -EBADMSG;
        }
        *ret = id;
        return 0;
}

static int job_summaries_decode(json_object *root, const char *key, JobSummary **ret,
                                size_t *ret_n) {
        JobSummary *list = NULL;
        json_object *array;
        size_t n;
        int r;

        if (!json_object_object_get_ex(root, key, &array) || !array) {
                *ret = NULL;
                *ret_n = 0;
                return 0;
        }
        if (!json_object_is_type(array, json_type_array))
                return -EBADMSG;

        n = json_object_array_length(array);
        if (n > 0) {
                list = calloc(n, sizeof(JobSummary));
                if (!list)
                        return -ENOMEM;
        }
        for (size_t i = 0; i < n; i++) {
                json_object *j = json_object_array_get_idx(array, i);

                r = -EBADMSG;
                if (!json_object_is_type(j, json_type_object) ||
                    (r = job_id_get(j, &list[i].job_id)) < 0 ||
                    (r = json_get_counter(j, "executionNumber", &list[i].execution_number)) < 0 ||
                    (r = json_get_counter(j, "versionNumber", &list[i].version_number)) < 0) {
                        job_summaries_free(list, n);
                        return r;
                }
        }
        *ret = list;
        *ret_n = n;
        return 0;
}

int message_decode_job_list(const void *data, size_t size, JobList *ret) {
        _cleanup_json_ json_object *root = NULL;
        _cleanup_(job_list_done) JobList l = {};
        int r;

        if (!ret)
                return -EINVAL;
        r = json_parse(data, size, &root);
        if (r < 0)
                return r;
        r = job_summaries_decode(root, "inProgressJobs", &l.in_progress, &l.n_in_progress);
        if (r < 0)
                return r;
        r = job_summaries_decode(root, "queuedJobs", &l.queued, &l.n_queued);
        if (r < 0)
                return r;

        *ret = l;
        l = (JobList) {};
        return 0;
}

void job_execution_done(JobExecution *e) {
        if (!e)
                return;
        free(e->job_id);
        for (char **p = e->status_details; p && *p; p++)
                free(*p);
        free(e->status_details);
        free(e->document.operation);
        free(e->document.deployment_id);
        free(e->document.firmware_id);
        free(e->document.firmware_url);
        *e = (JobExecution) {};
}

/* Lenient: a member that is not a string stays NULL (see JobDocument). */
static int document_get(json_object *doc, const char *key, char **ret) {
        int r = json_get_string(doc, key, MESSAGE_SIZE_MAX, ret);

        if (r == -EBADMSG) {
                *ret = NULL;
                return 0;
        }
        return r;
}

static int status_details_decode(json_object *exec, char ***ret) {
        json_object *details;
        char **strv;
        size_t n = 0;

        if (!json_object_object_get_ex(exec, "statusDetails", &details) || !details) {
                *ret = NULL;
                return 0;
        }
        if (!json_object_is_type(details, json_type_object))
                return -EBADMSG;

        strv = calloc(2 * (size_t) json_object_object_length(details) + 1, sizeof(char *));
        if (!strv)
                return -ENOMEM;
        json_object_object_foreach(details, key, value) {
                const char *s;
                int len;

                if (!json_object_is_type(value, json_type_string))
                        continue; /* only strings are valid; ignore what the API never sends */
                s = json_object_get_string(value);
                len = json_object_get_string_len(value);
                if (!utf8_is_valid(key, strlen(key)) || !utf8_is_valid(s, (size_t) len))
                        continue;
                strv[n] = strdup(key);
                strv[n + 1] = strndup(s, (size_t) len);
                if (!strv[n] || !strv[n + 1]) {
                        free(strv[n]);
                        free(strv[n + 1]);
                        strv[n] = strv[n + 1] = NULL;
                        for (char **p = strv; *p; p++)
                                free(*p);
                        free(strv);
                        return -ENOMEM;
                }
                n += 2;
        }
        *ret = strv;
        return 0;
}

int message_decode_job_execution(const void *data, size_t size, JobExecution *ret) {
        _cleanup_json_ json_object *root = NULL;
        _cleanup_(job_execution_done) JobExecution e = {};
        _cleanup_free_ char *status = NULL;
        json_object *exec, *doc;
        int r;

        if (!ret)
                return -EINVAL;
        r = json_parse(data, size, &root);
        if (r < 0)
                return r;

        if (!json_object_object_get_ex(root, "execution", &exec) || !exec) {
                *ret = (JobExecution) {};
                return 0;
        }
        if (!json_object_is_type(exec, json_type_object))
                return -EBADMSG;

        r = job_id_get(exec, &e.job_id);
        if (r < 0)
                return r;
        r = json_get_required_string(exec, "status", 64, &status);
        if (r < 0)
                return r;
        e.status = job_status_from_string(status);
        if (e.status < 0)
                return -EBADMSG;
        r = json_get_counter(exec, "versionNumber", &e.version_number);
        if (r < 0)
                return r;
        r = json_get_counter(exec, "executionNumber", &e.execution_number);
        if (r < 0)
                return r;
        r = status_details_decode(exec, &e.status_details);
        if (r < 0)
                return r;

        if (json_object_object_get_ex(exec, "jobDocument", &doc) &&
            json_object_is_type(doc, json_type_object)) {
                r = document_get(doc, "operation", &e.document.operation);
                if (r < 0)
                        return r;
                r = document_get(doc, "deploymentId", &e.document.deployment_id);
                if (r < 0)
                        return r;
                r = document_get(doc, "firmwareId", &e.document.firmware_id);
                if (r < 0)
                        return r;
                r = document_get(doc, "firmwareUrl", &e.document.firmware_url);
                if (r < 0)
                        return r;
        }

        *ret = e;
        e = (JobExecution) {};
        return 1;
}
