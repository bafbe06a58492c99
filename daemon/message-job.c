/* SPDX-License-Identifier: MIT */
/* Firmware jobs: the AWS IoT Jobs MQTT API under $aws/things/<thing>/jobs/. */
#include <strings.h>

#include "json-util.h"
#include "message.h"
#include "topic.h"

static const char *const job_status_table[_JOB_STATUS_MAX] = {
        [JOB_STATUS_QUEUED] = "QUEUED",       [JOB_STATUS_IN_PROGRESS] = "IN_PROGRESS",
        [JOB_STATUS_SUCCEEDED] = "SUCCEEDED", [JOB_STATUS_FAILED] = "FAILED",
        [JOB_STATUS_TIMED_OUT] = "TIMED_OUT", [JOB_STATUS_REJECTED] = "REJECTED",
        [JOB_STATUS_REMOVED] = "REMOVED",     [JOB_STATUS_CANCELED] = "CANCELED",
};

DEFINE_STRING_TABLE_LOOKUP(job_status, JobStatus);

bool job_status_detail_key_valid(const char *s) {
        size_t len;

        if (!s)
                return false;
        len = strnlen(s, JOB_STATUS_DETAIL_KEY_MAX + 1);
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
            !json_string_printable(s))
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
                    !job_status_detail_key_valid(detail_keys[i]) ||
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
                r = json_add_int64(root, "expectedVersion", expected_version);
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

        r = json_member_required_string(obj, "jobId", TOPIC_JOB_ID_MAX, &id);
        if (r < 0)
                return r;
        if (!topic_job_id_valid(id)) {
                free(id);
                return -EBADMSG;
        }
        *ret = id;
        return 0;
}

/* executionNumber, versionNumber: missing or null is -1. */
static int counter_get(json_object *obj, const char *key, int64_t *ret) {
        return json_member_integer(obj, key, 0, JSON_INTEGER_MAX, -1, ret);
}

static int job_summaries_decode(json_object *root, const char *key, JobSummary **ret,
                                size_t *ret_n) {
        JobSummary *list = NULL;
        json_object *array;
        size_t n;
        int r;

        r = json_member_array(root, key, &array);
        if (r < 0)
                return r;
        if (!array) {
                *ret = NULL;
                *ret_n = 0;
                return 0;
        }

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
                    (r = counter_get(j, "executionNumber", &list[i].execution_number)) < 0 ||
                    (r = counter_get(j, "versionNumber", &list[i].version_number)) < 0) {
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
        r = json_payload_parse(data, size, &root);
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
        free(e->document.sha256);
        *e = (JobExecution) { .document.size = -1 };
}

/* Lenient: a member that is not a string stays NULL (see JobDocument). The operation is free
 * text that a rejection logs, so it comes escaped; the ids and the URL are data. */
static int document_get(json_object *doc, const char *key, bool text, char **ret) {
        int r = text ? json_member_text(doc, key, MESSAGE_SIZE_MAX, ret)
                     : json_member_string(doc, key, MESSAGE_SIZE_MAX, ret);

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

        int r;

        r = json_member_object(exec, "statusDetails", &details);
        if (r < 0)
                return r;
        if (!details) {
                *ret = NULL;
                return 0;
        }

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
        _cleanup_(job_execution_done) JobExecution e = { .document.size = -1 };
        _cleanup_free_ char *status = NULL;
        json_object *exec, *doc;
        int r;

        if (!ret)
                return -EINVAL;
        r = json_payload_parse(data, size, &root);
        if (r < 0)
                return r;

        r = json_member_object(root, "execution", &exec);
        if (r < 0)
                return r;
        if (!exec) {
                *ret = (JobExecution) { .document.size = -1 };
                return 0;
        }

        r = job_id_get(exec, &e.job_id);
        if (r < 0)
                return r;
        r = json_member_required_string(exec, "status", 64, &status);
        if (r < 0)
                return r;
        e.status = job_status_from_string(status);
        if (e.status < 0)
                return -EBADMSG;
        r = counter_get(exec, "versionNumber", &e.version_number);
        if (r < 0)
                return r;
        r = counter_get(exec, "executionNumber", &e.execution_number);
        if (r < 0)
                return r;
        r = status_details_decode(exec, &e.status_details);
        if (r < 0)
                return r;

        if (json_object_object_get_ex(exec, "jobDocument", &doc) &&
            json_object_is_type(doc, json_type_object)) {
                r = document_get(doc, "operation", true, &e.document.operation);
                if (r < 0)
                        return r;
                r = document_get(doc, "deploymentId", false, &e.document.deployment_id);
                if (r < 0)
                        return r;
                r = document_get(doc, "firmwareId", false, &e.document.firmware_id);
                if (r < 0)
                        return r;
                r = document_get(doc, "firmwareUrl", false, &e.document.firmware_url);
                if (r < 0)
                        return r;
                /* The integrity members: the wrong type is remembered, not dropped. */
                r = json_member_string(doc, "sha256", MESSAGE_SIZE_MAX, &e.document.sha256);
                if (r == -EBADMSG)
                        e.document.sha256_invalid = true;
                else if (r < 0)
                        return r;
                r = json_member_integer(doc, "size", 0, JSON_INTEGER_MAX, -1, &e.document.size);
                if (r == -EBADMSG) {
                        e.document.size = -1;
                        e.document.size_invalid = true;
                } else if (r < 0)
                        return r;
        }

        *ret = e;
        e = (JobExecution) { .document.size = -1 };
        return 1;
}

/* --- Whether a document can be run --- */

bool job_id_field_valid(const char *s) {
        size_t len;

        if (isempty(s))
                return false;
        len = strnlen(s, JOB_ID_FIELD_MAX + 1);
        if (len > JOB_ID_FIELD_MAX || !utf8_is_valid(s, len))
                return false;
        for (size_t i = 0; i < len; i++)
                if ((unsigned char) s[i] < 0x20 || s[i] == 0x7f)
                        return false;
        return true;
}

bool job_sha256_valid(const char *s) {
        if (!s || strnlen(s, 65) != 64)
                return false;
        for (size_t i = 0; i < 64; i++)
                if (!strchr("0123456789abcdefABCDEF", s[i]))
                        return false;
        return true;
}

/* NULL when url is acceptable, else the reason. */
static const char *url_problem(const char *url, bool allow_http) {
        size_t len, skip;
        const char *host;

        if (isempty(url))
                return "firmwareUrl is missing or not a string";
        len = strnlen(url, JOB_URL_MAX + 1);
        if (len > JOB_URL_MAX)
                return "firmwareUrl is too long";
        /* A URL is printable ASCII; anything else is a forged or broken document. */
        for (size_t i = 0; i < len; i++)
                if ((unsigned char) url[i] <= 0x20 || (unsigned char) url[i] >= 0x7f)
                        return "firmwareUrl contains white space, control or non-ASCII "
                               "characters";
        if (strncasecmp(url, "https://", 8) == 0)
                skip = 8;
        else if (strncasecmp(url, "http://", 7) == 0) {
                if (!allow_http)
                        return "firmwareUrl uses http://; lodevd downloads firmware over "
                               "https:// only";
                skip = 7;
        } else
                return "firmwareUrl is not an https:// URL";
        host = url + skip;
        if (*host == '\0' || strchr("/?#@:", *host))
                return "firmwareUrl has no host";
        return NULL;
}

int job_document_check(const char *job_id, const JobDocument *doc, bool allow_http,
                       char **ret_reason) {
        _cleanup_free_ char *reason = NULL;
        const char *problem = NULL;

        if (!ret_reason)
                return -EINVAL;
        if (!topic_job_id_valid(job_id))
                return -EINVAL;
        if (!doc || isempty(doc->operation))
                problem = "the job document has no operation";
        else if (!streq(doc->operation, "firmware_update")) {
                /* Name the operation, cut short: the document is the platform's, not ours. */
                reason = strdup_printf("operation \"%.64s\" is not supported; lodevd runs "
                                       "firmware_update jobs only",
                                       doc->operation);
                if (!reason)
                        return -ENOMEM;
        } else if (!doc->firmware_id)
                problem = "firmwareId is missing or not a string";
        else if (!job_id_field_valid(doc->firmware_id))
                problem = "firmwareId is empty, too long or contains control characters";
        else if (!doc->deployment_id)
                problem = "deploymentId is missing or not a string";
        else if (!job_id_field_valid(doc->deployment_id))
                problem = "deploymentId is empty, too long or contains control characters";
        else if ((problem = url_problem(doc->firmware_url, allow_http)))
                ;
        else if (doc->sha256_invalid)
                problem = "sha256 is not a string";
        else if (doc->sha256 && !job_sha256_valid(doc->sha256))
                problem = "sha256 is not 64 hexadecimal digits";
        else if (doc->size_invalid)
                problem = "size is not a non-negative integer";

        if (!problem && !reason) {
                *ret_reason = NULL;
                return 0;
        }
        if (!reason) {
                reason = strdup(problem);
                if (!reason)
                        return -ENOMEM;
        }
        *ret_reason = TAKE_PTR(reason);
        return -EBADMSG;
}

