/* SPDX-License-Identifier: MIT */
#include <stdint.h>

#include "topic.h"
#include "util.h"

/* Topic levels in the patterns: a literal, or one of these placeholders standing for a whole
 * level. */
#define P_THING "{thing}"
#define P_TEMPLATE "{template}"
#define P_JOB "{job}"       /* a job id */
#define P_JOB_NEXT "{job$}" /* a job id or $next */

#define CLAIM "$aws/certificates/create/json"
#define CSR "$aws/certificates/create-from-csr/json"
#define REGISTER "$aws/provisioning-templates/" P_TEMPLATE "/provision/json"
#define JOBS "$aws/things/" P_THING "/jobs"

typedef struct TopicPattern {
        const char *pattern;
        const char *name;
        bool incoming;
} TopicPattern;

static const TopicPattern topic_patterns[_TOPIC_KIND_MAX] = {
        [TOPIC_CREATE] = { CLAIM, "create", false },
        [TOPIC_CSR] = { CSR, "csr", false },
        [TOPIC_REGISTER] = { REGISTER, "register", false },
        [TOPIC_FHIR_INGEST] = { "$aws/rules/FHIRIngest", "fhir-ingest", false },
        [TOPIC_UPLOAD_LINK_REQUEST] = { "$aws/rules/CreateFileUploadLink", "upload-link-request",
                                        false },
        [TOPIC_JOBS_GET] = { JOBS "/get", "jobs-get", false },
        [TOPIC_JOB_GET] = { JOBS "/" P_JOB_NEXT "/get", "job-get", false },
        [TOPIC_START_NEXT] = { JOBS "/start-next", "start-next", false },
        [TOPIC_JOB_UPDATE] = { JOBS "/" P_JOB "/update", "job-update", false },

        [TOPIC_CREATE_ACCEPTED] = { CLAIM "/accepted", "create-accepted", true },
        [TOPIC_CREATE_REJECTED] = { CLAIM "/rejected", "create-rejected", true },
        [TOPIC_CSR_ACCEPTED] = { CSR "/accepted", "csr-accepted", true },
        [TOPIC_CSR_REJECTED] = { CSR "/rejected", "csr-rejected", true },
        [TOPIC_REGISTER_ACCEPTED] = { REGISTER "/accepted", "register-accepted", true },
        [TOPIC_REGISTER_REJECTED] = { REGISTER "/rejected", "register-rejected", true },
        [TOPIC_FHIR_ACCEPTED] = { P_THING "/FHIRIngest/accepted", "fhir-accepted", true },
        [TOPIC_FHIR_REJECTED] = { P_THING "/FHIRIngest/rejected", "fhir-rejected", true },
        [TOPIC_UPLOAD_LINK] = { P_THING, "upload-link", true },
        [TOPIC_UPLOAD_LINK_ACCEPTED] = { P_THING "/CreateFileUploadLink/accepted",
                                         "upload-link-accepted", true },
        [TOPIC_UPLOAD_LINK_REJECTED] = { P_THING "/CreateFileUploadLink/rejected",
                                         "upload-link-rejected", true },
        [TOPIC_JOBS_NOTIFY_NEXT] = { JOBS "/notify-next", "jobs-notify-next", true },
        [TOPIC_JOBS_GET_ACCEPTED] = { JOBS "/get/accepted", "jobs-get-accepted", true },
        [TOPIC_JOBS_GET_REJECTED] = { JOBS "/get/rejected", "jobs-get-rejected", true },
        [TOPIC_JOB_GET_ACCEPTED] = { JOBS "/" P_JOB_NEXT "/get/accepted", "job-get-accepted",
                                     true },
        [TOPIC_JOB_GET_REJECTED] = { JOBS "/" P_JOB_NEXT "/get/rejected", "job-get-rejected",
                                     true },
        [TOPIC_START_NEXT_ACCEPTED] = { JOBS "/start-next/accepted", "start-next-accepted", true },
        [TOPIC_START_NEXT_REJECTED] = { JOBS "/start-next/rejected", "start-next-rejected", true },
        [TOPIC_JOB_UPDATE_ACCEPTED] = { JOBS "/" P_JOB "/update/accepted", "job-update-accepted",
                                        true },
        [TOPIC_JOB_UPDATE_REJECTED] = { JOBS "/" P_JOB "/update/rejected", "job-update-rejected",
                                        true },
};

bool topic_name_component_valid(const char *s) {
        size_t len;

        if (isempty(s))
                return false;
        len = strnlen(s, TOPIC_COMPONENT_MAX + 1);
        if (len > TOPIC_COMPONENT_MAX || !utf8_is_valid(s, len))
                return false;
        for (const char *p = s; *p; p++)
                /* Wildcards and the level separator would change what the topic means;
                 * control characters have no business in a name. */
                if (strchr("/+#", *p) || (unsigned char) *p < 0x20 || *p == 0x7f)
                        return false;
        return true;
}

static bool job_id_valid_n(const char *s, size_t len) {
        if (len == 0 || len > TOPIC_JOB_ID_MAX)
                return false;
        for (size_t i = 0; i < len; i++) {
                char c = s[i];

                if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                      c == '_' || c == '-'))
                        return false;
        }
        return true;
}

bool topic_job_id_valid(const char *s) {
        return s && job_id_valid_n(s, strnlen(s, TOPIC_JOB_ID_MAX + 1));
}

static size_t level_len(const char *s) {
        return strcspn(s, "/");
}

static bool level_is(const char *level, size_t len, const char *placeholder) {
        return strlen(placeholder) == len && memcmp(level, placeholder, len) == 0;
}

static int topic_build_internal(TopicKind kind, const char *thing, const char *template_name,
                                const char *job_id, bool filter, char **ret) {
        /* Longest pattern, a 128-byte thing name and a 64-byte job id fit with room to spare. */
        char buf[512];
        size_t n = 0;
        const char *p;

        if (kind < 0 || kind >= _TOPIC_KIND_MAX || !ret)
                return -EINVAL;

        p = topic_patterns[kind].pattern;
        for (;;) {
                size_t len = level_len(p);
                const char *value = NULL;

                if (level_is(p, len, P_THING)) {
                        if (!topic_name_component_valid(thing))
                                return -EINVAL;
                        value = thing;
                } else if (level_is(p, len, P_TEMPLATE)) {
                        if (!topic_name_component_valid(template_name))
                                return -EINVAL;
                        value = template_name;
                } else if (level_is(p, len, P_JOB) || level_is(p, len, P_JOB_NEXT)) {
                        if (filter)
                                value = "+";
                        else if (topic_job_id_valid(job_id) ||
                                 (level_is(p, len, P_JOB_NEXT) &&
                                  streq_ptr(job_id, TOPIC_JOB_NEXT)))
                                value = job_id;
                        else
                                return -EINVAL;
                }

                if (value) {
                        size_t vlen = strlen(value);

                        if (n + vlen + 2 > sizeof(buf))
                                return -EINVAL;
                        memcpy(buf + n, value, vlen);
                        n += vlen;
                } else {
                        if (n + len + 2 > sizeof(buf))
                                return -EINVAL;
                        memcpy(buf + n, p, len);
                        n += len;
                }

                p += len;
                if (*p == 0)
                        break;
                buf[n++] = '/';
                p++;
        }
        buf[n] = 0;

        *ret = strdup(buf);
        return *ret ? 0 : -ENOMEM;
}

int topic_build(TopicKind kind, const char *thing, const char *template_name, const char *job_id,
                char **ret) {
        return topic_build_internal(kind, thing, template_name, job_id, false, ret);
}

int topic_build_filter(TopicKind kind, const char *thing, const char *template_name, char **ret) {
        return topic_build_internal(kind, thing, template_name, NULL, true, ret);
}

static bool level_equals(const char *level, size_t len, const char *s) {
        return s && strlen(s) == len && memcmp(level, s, len) == 0;
}

/* Matches topic against pattern level by level; on success the job id level, if any, is
 * returned as a pointer into topic and a length. */
static bool topic_match(const char *pattern, const char *topic, const char *thing,
                        const char *template_name, const char **ret_job, size_t *ret_job_len) {
        const char *p = pattern, *t = topic, *job = NULL;
        size_t job_len = 0;

        for (;;) {
                size_t plen = level_len(p), tlen = level_len(t);

                if (level_is(p, plen, P_THING)) {
                        if (!level_equals(t, tlen, thing))
                                return false;
                } else if (level_is(p, plen, P_TEMPLATE)) {
                        if (!level_equals(t, tlen, template_name))
                                return false;
                } else if (level_is(p, plen, P_JOB) || level_is(p, plen, P_JOB_NEXT)) {
                        bool next = level_is(p, plen, P_JOB_NEXT) &&
                                    level_equals(t, tlen, TOPIC_JOB_NEXT);

                        if (!job_id_valid_n(t, tlen) && !next)
                                return false;
                        job = t;
                        job_len = tlen;
                } else if (plen != tlen || memcmp(p, t, plen) != 0)
                        return false;

                p += plen;
                t += tlen;
                if (*p == 0 || *t == 0) {
                        if (*p != *t)
                                return false; /* one has more levels than the other */
                        break;
                }
                p++;
                t++;
        }

        *ret_job = job;
        *ret_job_len = job_len;
        return true;
}

int topic_classify(const char *topic, const char *thing, const char *template_name,
                   TopicKind *ret_kind, char **ret_job_id) {
        if (!topic)
                return -EINVAL;

        for (TopicKind k = 0; k < _TOPIC_KIND_MAX; k++) {
                const char *job;
                size_t job_len;
                char *copy = NULL;

                if (!topic_patterns[k].incoming ||
                    !topic_match(topic_patterns[k].pattern, topic, thing, template_name, &job,
                                 &job_len))
                        continue;

                if (ret_job_id && job) {
                        copy = strndup(job, job_len);
                        if (!copy)
                                return -ENOMEM;
                }
                if (ret_job_id)
                        *ret_job_id = copy;
                if (ret_kind)
                        *ret_kind = k;
                return (int) k;
        }
        return -ENOENT;
}

const char *topic_kind_to_string(TopicKind kind) {
        if (kind < 0 || kind >= _TOPIC_KIND_MAX)
                return NULL;
        return topic_patterns[kind].name;
}

bool topic_kind_is_incoming(TopicKind kind) {
        return kind >= 0 && kind < _TOPIC_KIND_MAX && topic_patterns[kind].incoming;
}
