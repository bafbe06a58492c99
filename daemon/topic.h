/* SPDX-License-Identifier: MIT */
#pragma once

/* MQTT topics of the LifeOmic Platform protocol (SPEC section 2): builders for every topic
 * lodevd publishes or subscribes to, and a classifier for the topics of incoming messages.
 * One table describes each topic once, so builder and classifier cannot disagree. */

#include <errno.h>
#include <stdbool.h>

/* AWS IoT: thing names up to 128 bytes, job ids [a-zA-Z0-9_-] up to 64. */
#define TOPIC_COMPONENT_MAX 128U
#define TOPIC_JOB_ID_MAX 64U
/* Not a job id but the AWS alias for "the next pending job"; valid in the .../get topics. */
#define TOPIC_JOB_NEXT "$next"

typedef enum TopicKind {
        /* Published by lodevd. */
        TOPIC_CREATE,              /* $aws/certificates/create/json */
        TOPIC_CSR,                 /* $aws/certificates/create-from-csr/json */
        TOPIC_REGISTER,            /* $aws/provisioning-templates/<template>/provision/json */
        TOPIC_FHIR_INGEST,         /* $aws/rules/FHIRIngest */
        TOPIC_UPLOAD_LINK_REQUEST, /* $aws/rules/CreateFileUploadLink */
        TOPIC_JOBS_GET,            /* $aws/things/<thing>/jobs/get */
        TOPIC_JOB_GET,             /* $aws/things/<thing>/jobs/<jobId|$next>/get */
        TOPIC_START_NEXT,          /* $aws/things/<thing>/jobs/start-next */
        TOPIC_JOB_UPDATE,          /* $aws/things/<thing>/jobs/<jobId>/update */

        /* Received by lodevd; topic_classify() returns only these. */
        TOPIC_CREATE_ACCEPTED,
        TOPIC_CREATE_REJECTED,
        TOPIC_CSR_ACCEPTED,
        TOPIC_CSR_REJECTED,
        TOPIC_REGISTER_ACCEPTED,
        TOPIC_REGISTER_REJECTED,
        TOPIC_FHIR_ACCEPTED,          /* <thing>/FHIRIngest/accepted */
        TOPIC_FHIR_REJECTED,          /* <thing>/FHIRIngest/rejected */
        TOPIC_UPLOAD_LINK,            /* <thing>: the answer with the uploadUrl */
        TOPIC_UPLOAD_LINK_ACCEPTED,   /* <thing>/CreateFileUploadLink/accepted */
        TOPIC_UPLOAD_LINK_REJECTED,   /* <thing>/CreateFileUploadLink/rejected */
        TOPIC_JOBS_NOTIFY_NEXT,       /* $aws/things/<thing>/jobs/notify-next */
        TOPIC_JOBS_GET_ACCEPTED,
        TOPIC_JOBS_GET_REJECTED,
        TOPIC_JOB_GET_ACCEPTED,       /* with a job id, or $next */
        TOPIC_JOB_GET_REJECTED,
        TOPIC_START_NEXT_ACCEPTED,
        TOPIC_START_NEXT_REJECTED,
        TOPIC_JOB_UPDATE_ACCEPTED,    /* with a job id */
        TOPIC_JOB_UPDATE_REJECTED,

        _TOPIC_KIND_MAX,
        _TOPIC_KIND_INVALID = -EINVAL,
} TopicKind;

/* A name that may stand as one topic level: non-empty, at most TOPIC_COMPONENT_MAX bytes,
 * valid UTF-8, no '/', '+', '#' (nor NUL, nor other control characters). Thing names such as
 * "ACCOUNT:UUID" pass. Used for thing and template names. */
bool topic_name_component_valid(const char *s);

/* AWS job ids: [a-zA-Z0-9_-]{1,64}. "$next" is not a job id. */
bool topic_job_id_valid(const char *s);

/* Builds the topic of the given kind into a newly allocated string. Arguments a kind does not
 * use are ignored and may be NULL; the ones it uses are checked: -EINVAL for an invalid thing
 * name, template name or job id ("$next" is accepted for TOPIC_JOB_GET*). -ENOMEM. */
int topic_build(TopicKind kind, const char *thing, const char *template_name, const char *job_id,
                char **ret);

/* Like topic_build(), with the job id level replaced by the '+' wildcard, for subscribing to
 * the answers of every job at once. */
int topic_build_filter(TopicKind kind, const char *thing, const char *template_name, char **ret);

/* Which of the received kinds topic is, given the current thing name and template name
 * (either may be NULL when not known yet: topics that contain it then do not match). For the
 * TOPIC_JOB_* kinds *ret_job_id gets a copy of the job id ("$next" possible for
 * TOPIC_JOB_GET_*), for the others NULL; ret_job_id may be NULL. Returns the kind,
 * -ENOENT for any other topic (including the ones lodevd publishes), -ENOMEM. */
int topic_classify(const char *topic, const char *thing, const char *template_name,
                   TopicKind *ret_kind, char **ret_job_id);

/* "create-accepted", ... for logs; NULL for an invalid kind. */
const char *topic_kind_to_string(TopicKind kind);

/* True for the kinds topic_classify() can return. */
bool topic_kind_is_incoming(TopicKind kind);
