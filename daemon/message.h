/* SPDX-License-Identifier: MIT */
#pragma once

/* JSON payloads of the platform protocol (SPEC section 2), to and from C structs.
 *
 * Decoders take the payload as bytes and a length, as MQTT delivers it (no NUL terminator
 * needed; an embedded NUL is an error). They are strict about what they use and ignore keys
 * they do not know: -E2BIG for a payload over MESSAGE_SIZE_MAX, -EBADMSG for anything that is
 * not the expected shape (not JSON, trailing garbage, wrong types, a required field missing,
 * invalid UTF-8), -ENOMEM. Every string is copied into the result, which the caller releases
 * with the matching _done(); on failure the result is untouched.
 *
 * An integer field is a JSON number with an integral value (2, 2.0 or 2e0) within the field's
 * range, never more than +-(2^53 - 1); anything else, 1e300 or 1.5 say, is -EBADMSG. Free
 * text that ends up in logs, LastError or lodevctl output (error codes and messages, the
 * certificate id, a job's operation) comes with its control characters escaped
 * (escape_control()), so a platform answer cannot forge a log line or drive a terminal.
 *
 * Encoders return a newly allocated compact JSON text in *ret: -EINVAL for an argument that
 * would make an invalid or rejected message, -E2BIG if the text would exceed
 * MESSAGE_SIZE_MAX, -ENOMEM.
 *
 * One file per area implements them: message-observation.c, message-provision.c (claim and
 * register), message-upload.c and message-job.c; message.c has the error answer that every
 * area shares, and json-util.c the JSON plumbing they all use. */

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* AWS IoT Core's limit for one message. */
#define MESSAGE_SIZE_MAX (128U * 1024U)
/* Each string of an observation. Codes, systems and units are short; a display text or a
 * patient id longer than this is a mistake, and the bound keeps the whole observation far
 * below MESSAGE_SIZE_MAX. */
#define OBSERVATION_FIELD_MAX 4096U
/* AWS IoT Jobs statusDetails: at most 10 entries, keys [a-zA-Z0-9:_-]{1,128}, values 1 to
 * 1024 characters. */
#define JOB_STATUS_DETAILS_MAX 10U
#define JOB_STATUS_DETAIL_KEY_MAX 128U
#define JOB_STATUS_DETAIL_VALUE_MAX 1024U

/* --- Observations: $aws/rules/FHIRIngest --- */

typedef struct Observation {
        double value;
        char *unit;       /* NULL is encoded as "" */
        char *code;
        char *system;
        char *display;    /* NULL is encoded as "" */
        char *patient_id; /* NULL or "": "patientId" is left out */
} Observation;

void observation_done(Observation *o);

/* 0 if o can be sent: finite value, non-empty code and system, every string valid UTF-8 and
 * at most OBSERVATION_FIELD_MAX bytes. Otherwise -EINVAL, and *ret_field (may be NULL) names
 * the offending JSON field ("value", "unit", "code", "system", "display", "patientId"). */
int observation_validate(const Observation *o, const char **ret_field);

/* {"value":N,"unit":"..","coding":[{"code":"..","system":"..","display":".."}],"patientId":".."} */
int message_encode_observation(const Observation *o, char **ret);
/* The reverse; exactly one coding. The result passes observation_validate(). */
int message_decode_observation(const void *data, size_t size, Observation *ret);

/* --- Claim: $aws/certificates/create[-from-csr]/json --- */

/* {} */
int message_encode_create(char **ret);
/* {"certificateSigningRequest":"<PEM>"} */
int message_encode_create_from_csr(const char *csr_pem, char **ret);

typedef struct CreateCertificateResponse {
        char *certificate_id; /* escaped: it is only logged */
        char *certificate_pem;
        char *private_key; /* NULL in CSR mode */
        char *ownership_token;
} CreateCertificateResponse;

void create_certificate_response_done(CreateCertificateResponse *r);
/* .../accepted: certificateId, certificatePem, certificateOwnershipToken required, privateKey
 * optional. */
int message_decode_create_certificate(const void *data, size_t size,
                                      CreateCertificateResponse *ret);

/* --- Every .../rejected topic --- */

typedef struct PlatformError {
        int status_code;     /* HTTP-like statusCode; 0 when absent (AWS jobs send none) */
        char *error_code;    /* errorCode (provisioning) or code (jobs), escaped */
        char *error_message; /* errorMessage or message, escaped; NULL when absent */
} PlatformError;

void platform_error_done(PlatformError *e);
/* Both shapes: {"statusCode","errorCode","errorMessage"} of provisioning and
 * {"code","message",...} of AWS IoT Jobs. A code is required. */
int message_decode_error(const void *data, size_t size, PlatformError *ret);

/* --- Register: $aws/provisioning-templates/<template>/provision/json --- */

/* {"parameters":{name:value,...},"templateName":"..","certificateOwnershipToken":".."}.
 * Parameter names must be non-empty and distinct; values may be empty. */
int message_encode_register(const char *template_name, const char *const *param_names,
                            const char *const *param_values, size_t n,
                            const char *ownership_token, char **ret);
/* .../accepted: the thingName, which must be usable as a topic level
 * (topic_name_component_valid()). */
int message_decode_register_accepted(const void *data, size_t size, char **ret_thing_name);

/* --- File upload: $aws/rules/CreateFileUploadLink and the answer on <thing> --- */

/* {"fileName":"..","contentType":".."}. The file name has no '/' and no control characters;
 * the content type is printable ASCII (it becomes an HTTP header). */
int message_encode_upload_link_request(const char *file_name, const char *content_type,
                                       char **ret);
/* {"uploadUrl":"http(s)://..."}: no spaces or control characters. */
int message_decode_upload_link(const void *data, size_t size, char **ret_url);

/* --- Firmware jobs: $aws/things/<thing>/jobs/... --- */

typedef enum JobStatus {
        JOB_STATUS_QUEUED,
        JOB_STATUS_IN_PROGRESS,
        JOB_STATUS_SUCCEEDED,
        JOB_STATUS_FAILED,
        JOB_STATUS_TIMED_OUT,
        JOB_STATUS_REJECTED,
        JOB_STATUS_REMOVED,
        JOB_STATUS_CANCELED,
        _JOB_STATUS_MAX,
        _JOB_STATUS_INVALID = -EINVAL,
} JobStatus;

/* "IN_PROGRESS", ...; NULL for an invalid status. */
const char *job_status_to_string(JobStatus s);
/* _JOB_STATUS_INVALID for an unknown string or NULL. */
JobStatus job_status_from_string(const char *s);

/* <jobId>/update: {"status":"..","statusDetails":{k:v,...},"expectedVersion":N}.
 * status is one a device may set: IN_PROGRESS, SUCCEEDED, FAILED or REJECTED. The details
 * follow the AWS rules above (n == 0 leaves statusDetails out); expected_version < 0 leaves
 * expectedVersion out. */
/* A statusDetails key by the AWS rules above. */
bool job_status_detail_key_valid(const char *s);

int message_encode_job_update(JobStatus status, const char *const *detail_keys,
                              const char *const *detail_values, size_t n,
                              int64_t expected_version, char **ret);

typedef struct JobSummary {
        char *job_id;
        int64_t execution_number; /* -1 when absent */
        int64_t version_number;   /* -1 when absent */
} JobSummary;

typedef struct JobList {
        JobSummary *in_progress;
        size_t n_in_progress;
        JobSummary *queued;
        size_t n_queued;
} JobList;

void job_list_done(JobList *l);
/* get/accepted: {"inProgressJobs":[...],"queuedJobs":[...]}; a missing list is empty. */
int message_decode_job_list(const void *data, size_t size, JobList *ret);

/* A firmware URL (presigned) runs to a few kilobytes. */
#define JOB_URL_MAX (16U * 1024U)
/* firmwareId and deploymentId end up in the installer's environment. */
#define JOB_ID_FIELD_MAX 256U

/* The job document as the LifeOmic platform writes it. Decoded leniently: a string field that
 * is missing or not a string is NULL, and a sha256 or size of the wrong type is flagged rather
 * than dropped, so that the job logic can still REJECT a job it cannot run (it needs the job
 * id for that) instead of failing to decode it, and never runs unchecked a job whose
 * integrity check cannot be done. size follows the integer rules above. */
typedef struct JobDocument {
        char *operation; /* "firmware_update" is the one lodevd runs; escaped */
        char *deployment_id;
        char *firmware_id;
        char *firmware_url;
        char *sha256;        /* as given; NULL when absent */
        int64_t size;        /* -1 when absent */
        bool sha256_invalid; /* present but not a string */
        bool size_invalid;   /* present but not an integer in 0..2^53-1 */
} JobDocument;

typedef struct JobExecution {
        char *job_id;
        JobStatus status;
        int64_t version_number;   /* -1 when absent */
        int64_t execution_number; /* -1 when absent */
        char **status_details;    /* key, value, key, value, ..., NULL; NULL when none */
        JobDocument document;
} JobExecution;

void job_execution_done(JobExecution *e);
/* {"execution":{...}} of <jobId>/get/accepted, $next/get/accepted, start-next/accepted and
 * notify-next. Returns 1 with *ret filled when there is an execution, 0 with *ret zeroed
 * (document.size -1) when "execution" is absent or null (no pending job). */
int message_decode_job_execution(const void *data, size_t size, JobExecution *ret);

/* Whether lodevd will run this job. 0 when it will; -EBADMSG with *ret_reason (a sentence
 * for the REJECTED report) when it will not: an operation other than "firmware_update", a
 * missing or malformed firmwareId, deploymentId (job_id_field_valid()) or firmwareUrl
 * (https:// only, http:// only with allow_http; no other scheme, no white space or control
 * characters, at most JOB_URL_MAX bytes), a sha256 that is not 64 hex digits, a size of the
 * wrong type. -EINVAL when job_id itself is not a valid job id (no report can be addressed).
 * -ENOMEM. */
int job_document_check(const char *job_id, const JobDocument *doc, bool allow_http,
                       char **ret_reason);
/* firmwareId and deploymentId: 1 to JOB_ID_FIELD_MAX bytes of UTF-8 without control
 * characters (they go into the installer's environment and the logs). */
bool job_id_field_valid(const char *s);
/* 64 hexadecimal digits, either case. */
bool job_sha256_valid(const char *s);
