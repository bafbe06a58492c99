/* SPDX-License-Identifier: MIT */

/* The JSON codecs: exact encodings, round trips, and every kind of bad input we can think of
 * (wrong types, missing fields, garbage, embedded NULs, invalid UTF-8, oversize). */

#include <math.h>
#include <stdint.h>

#include "message.h"
#include "tests.h"
#include "util.h"

#define S(s) (s), strlen(s)
#define CODING "\"coding\": [{\"code\": \"c\", \"system\": \"s\"}]"

/* A pointer no decoder may write on failure. */
static char sentinel_target;
#define SENTINEL ((char *) &sentinel_target)

static void test_observation_encode(void) {
        Observation o = {
                .value = 72.5,
                .unit = (char *) "beats/min",
                .code = (char *) "8867-4",
                .system = (char *) "http://loinc.org",
                .display = (char *) "Heart rate",
                .patient_id = (char *) "4b5f-9c1e",
        };
        _cleanup_free_ char *json = NULL, *json2 = NULL, *json3 = NULL;
        char *untouched = SENTINEL;
        const char *field = NULL;

        CHECK_INT(observation_validate(&o, &field), 0);
        CHECK_INT(message_encode_observation(&o, &json), 0);
        CHECK_STR(json, "{\"value\":72.5,\"unit\":\"beats/min\",\"coding\":[{\"code\":\"8867-4\","
                        "\"system\":\"http://loinc.org\",\"display\":\"Heart rate\"}],"
                        "\"patientId\":\"4b5f-9c1e\"}");

        /* No patient: the key is left out; a NULL display is an empty one. */
        o.patient_id = (char *) "";
        o.display = NULL;
        o.value = 0.1;
        CHECK_INT(message_encode_observation(&o, &json2), 0);
        CHECK_STR(json2, "{\"value\":0.1,\"unit\":\"beats/min\",\"coding\":[{\"code\":\"8867-4\","
                         "\"system\":\"http://loinc.org\",\"display\":\"\"}]}");
        o.patient_id = NULL;
        o.value = -0.0;
        {
                _cleanup_free_ char *z = NULL;

                CHECK_INT(message_encode_observation(&o, &z), 0);
                CHECK(z && strncmp(z, "{\"value\":0,", 11) == 0);
        }
        {
                /* Whole numbers read as integers, as the samples send them. */
                static const struct {
                        double v;
                        const char *prefix;
                } cases[] = { { 70, "{\"value\":70," }, { 100, "{\"value\":100," },
                              { -1e6, "{\"value\":-1000000," }, { 1e20, "{\"value\":1e+20," } };
                for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                        _cleanup_free_ char *z = NULL;
                        o.value = cases[i].v;
                        CHECK_INT(message_encode_observation(&o, &z), 0);
                        CHECK(z && strncmp(z, cases[i].prefix, strlen(cases[i].prefix)) == 0);
                }
        }
        o.value = -3;
        o.unit = (char *) "\xc2\xb0"
                          "C \"quoted\"";
        CHECK_INT(message_encode_observation(&o, &json3), 0);
        CHECK_STR(json3, "{\"value\":-3,\"unit\":\"\xc2\xb0"
                         "C \\\"quoted\\\"\",\"coding\":[{\"code\":\"8867-4\","
                         "\"system\":\"http://loinc.org\",\"display\":\"\"}]}");

        /* Invalid observations name the field and encode to nothing. */
        o.value = NAN;
        CHECK_INT(observation_validate(&o, &field), -EINVAL);
        CHECK_STR(field, "value");
        CHECK_INT(message_encode_observation(&o, &untouched), -EINVAL);
        CHECK(untouched == SENTINEL);
        o.value = INFINITY;
        CHECK_INT(observation_validate(&o, &field), -EINVAL);
        CHECK_STR(field, "value");
        o.value = -INFINITY;
        CHECK_INT(message_encode_observation(&o, &untouched), -EINVAL);
        o.value = 1;

        o.code = (char *) "";
        CHECK_INT(observation_validate(&o, &field), -EINVAL);
        CHECK_STR(field, "code");
        o.code = NULL;
        CHECK_INT(observation_validate(&o, &field), -EINVAL);
        CHECK_STR(field, "code");
        o.code = (char *) "x";
        o.system = NULL;
        CHECK_INT(observation_validate(&o, &field), -EINVAL);
        CHECK_STR(field, "system");
        o.system = (char *) "s";
        o.display = (char *) "bad \xff utf8";
        CHECK_INT(observation_validate(&o, &field), -EINVAL);
        CHECK_STR(field, "display");
        o.display = (char *) "overlong \xc0\xaf";
        CHECK_INT(observation_validate(&o, &field), -EINVAL);
        CHECK_STR(field, "display");
        o.display = NULL;
        {
                char big[OBSERVATION_FIELD_MAX + 2];

                memset(big, 'u', sizeof(big) - 1);
                big[sizeof(big) - 1] = 0;
                o.unit = big;
                CHECK_INT(observation_validate(&o, &field), -EINVAL);
                CHECK_STR(field, "unit");
                big[OBSERVATION_FIELD_MAX] = 0; /* exactly the limit */
                CHECK_INT(observation_validate(&o, &field), 0);
                o.unit = NULL;
                o.patient_id = big;
                big[OBSERVATION_FIELD_MAX] = 'p';
                CHECK_INT(observation_validate(&o, &field), -EINVAL);
                CHECK_STR(field, "patientId");
                o.patient_id = NULL;
        }
        CHECK_INT(observation_validate(&o, NULL), 0);
}

static void test_observation_round_trip(void) {
        static const double values[] = { 72.5, 0.1, -0.0, 1e300, -2.2250738585072014e-308,
                                         98.6, 123456789012345678.0, 1.0 / 3 };

        for (size_t i = 0; i < ELEMENTSOF(values); i++) {
                Observation o = {
                        .value = values[i],
                        .unit = (char *) "mm[Hg]",
                        .code = (char *) "8480-6",
                        .system = (char *) "http://loinc.org",
                        .display = (char *) "Systolic \xe2\x9c\x93",
                        .patient_id = i % 2 ? (char *) "patient-\xf0\x9f\x98\x80" : NULL,
                };
                _cleanup_(observation_done) Observation d = {};
                _cleanup_free_ char *json = NULL;

                CHECK_INT(message_encode_observation(&o, &json), 0);
                CHECK_INT(message_decode_observation(json, strlen(json), &d), 0);
                CHECK(d.value == o.value);
                CHECK_STR(d.unit, o.unit);
                CHECK_STR(d.code, o.code);
                CHECK_STR(d.system, o.system);
                CHECK_STR(d.display, o.display);
                if (o.patient_id)
                        CHECK_STR(d.patient_id, o.patient_id);
                else
                        CHECK(d.patient_id == NULL);
        }

        /* Integers are numbers too; whitespace and unknown keys are fine; no display. */
        {
                _cleanup_(observation_done) Observation d = {};
                const char *j = " {\"extra\": [1,2], \"value\": 5, \"unit\": \"kg\", \"coding\": "
                                "[{\"code\": \"29463-7\", \"system\": \"http://loinc.org\"}]}\n";

                CHECK_INT(message_decode_observation(S(j), &d), 0);
                CHECK(d.value == 5);
                CHECK_STR(d.unit, "kg");
                CHECK(d.display == NULL);
                CHECK(d.patient_id == NULL);
        }
}

static void test_observation_decode_bad(void) {
        static const char *const bad[] = {
                "",
                "not json",
                "[]",
                "42",
                "null",
                "{}",
                "{\"value\": \"5\", \"unit\": \"kg\", " CODING "}",
                "{\"value\": true, \"unit\": \"kg\", " CODING "}",
                "{\"value\": null, \"unit\": \"kg\", " CODING "}",
                "{\"unit\": \"kg\", " CODING "}",
                "{\"value\": 1, " CODING "}",
                "{\"value\": 1, \"unit\": 7, " CODING "}",
                "{\"value\": 1, \"unit\": \"kg\", \"coding\": []}",
                "{\"value\": 1, \"unit\": \"kg\", \"coding\": {\"code\": \"c\", \"system\": \"s\"}}",
                "{\"value\": 1, \"unit\": \"kg\", \"coding\": [\"c\"]}",
                "{\"value\": 1, \"unit\": \"kg\", \"coding\": [{\"code\": \"c\", \"system\": \"s\"}, "
                "{\"code\": \"d\", \"system\": \"s\"}]}",
                "{\"value\": 1, \"unit\": \"kg\", \"coding\": [{\"system\": \"s\"}]}",
                "{\"value\": 1, \"unit\": \"kg\", \"coding\": [{\"code\": \"\", \"system\": \"s\"}]}",
                "{\"value\": 1, \"unit\": \"kg\", \"coding\": [{\"code\": 5, \"system\": \"s\"}]}",
                "{\"value\": 1, \"unit\": \"kg\", \"coding\": [{\"code\": \"c\"}]}",
                "{\"value\": 1, \"unit\": \"kg\", \"coding\": [{\"code\": \"c\", \"system\": \"s\", "
                "\"display\": []}]}",
                "{\"value\": 1, \"unit\": \"kg\", " CODING ", "
                "\"patientId\": 12}",
                /* Trailing garbage, truncation, lenient syntax. */
                "{\"value\": 1, \"unit\": \"kg\", " CODING "} x",
                "{\"value\": 1, \"unit\": \"kg\", " CODING "}{}",
                "{\"value\": 1, \"unit\": \"kg\", \"coding\": [{\"code\": \"c\", \"system\": \"s\"",
                "{\"value\": 1, \"unit\": \"kg\", \"coding\": [{\"code\": \"c\", \"system\": \"s\",}]}",
                "{'value': 1, 'unit': 'kg', 'coding': [{'code': 'c', 'system': 's'}]}",
                "{\"value\": NaN, \"unit\": \"kg\", " CODING "}",
                "{\"value\": Infinity, \"unit\": \"kg\", " CODING "}",
                "{\"value\": 1e999, \"unit\": \"kg\", " CODING "}",
                /* An escaped NUL inside a string, invalid UTF-8, a lone surrogate. */
                "{\"value\": 1, \"unit\": \"k\\u0000g\", " CODING "}",
                "{\"value\": 1, \"unit\": \"k\xffg\", " CODING "}",
        };
        Observation untouched = { .unit = SENTINEL };
        char nul[] = "{\"value\": 1, \"unit\": \"kg\", \"coding\": [{\"code\": \"c\", \"system\": \"s\"}]}";
        char *big;
        int r;

        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                r = message_decode_observation(S(bad[i]), &untouched);
                if (r != -EBADMSG)
                        fprintf(stderr, "bad input %zu accepted or wrong error: %d\n", i, r);
                CHECK_INT(r, -EBADMSG);
                CHECK(untouched.unit == SENTINEL && untouched.code == NULL);
        }

        /* json-c turns a lone surrogate escape into U+FFFD: valid UTF-8 comes out. */
        {
                _cleanup_(observation_done) Observation d = {};
                const char *j = "{\"value\": 1, \"unit\": \"\\ud800\", \"coding\": "
                                "[{\"code\": \"c\", \"system\": \"s\"}]}";

                CHECK_INT(message_decode_observation(S(j), &d), 0);
                CHECK_STR(d.unit, "\xef\xbf\xbd");
        }

        /* Only the first `size` bytes count; a NUL inside them is refused. */
        CHECK_INT(message_decode_observation(nul, strlen(nul) - 1, &untouched), -EBADMSG);
        nul[20] = 0;
        CHECK_INT(message_decode_observation(nul, sizeof(nul) - 1, &untouched), -EBADMSG);

        /* Deep nesting: refused, no stack overflow. */
        big = malloc(MESSAGE_SIZE_MAX + 2);
        CHECK(big);
        if (!big)
                return;
        memset(big, '[', 100000);
        CHECK_INT(message_decode_observation(big, 100000, &untouched), -EBADMSG);

        /* Over the size limit, even if valid JSON. */
        memset(big, ' ', MESSAGE_SIZE_MAX + 1);
        memcpy(big, nul, 2);
        big[0] = '{';
        big[MESSAGE_SIZE_MAX] = '}';
        CHECK_INT(message_decode_observation(big, MESSAGE_SIZE_MAX + 1, &untouched), -E2BIG);
        CHECK(untouched.unit == SENTINEL);
        free(big);
}

static void test_claim(void) {
        const char *pem = "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n";
        _cleanup_free_ char *json = NULL, *empty = NULL;
        char *untouched = SENTINEL;

        CHECK_INT(message_encode_create(&empty), 0);
        CHECK_STR(empty, "{}");
        CHECK_INT(message_encode_create_from_csr(pem, &json), 0);
        CHECK_STR(json, "{\"certificateSigningRequest\":\"-----BEGIN CERTIFICATE REQUEST-----\\n"
                        "MIIB\\n-----END CERTIFICATE REQUEST-----\\n\"}");
        CHECK_INT(message_encode_create_from_csr("", &untouched), -EINVAL);
        CHECK_INT(message_encode_create_from_csr(NULL, &untouched), -EINVAL);
        CHECK_INT(message_encode_create_from_csr("\xfe", &untouched), -EINVAL);
        CHECK(untouched == SENTINEL);

        {
                _cleanup_(create_certificate_response_done) CreateCertificateResponse c = {};
                const char *j = "{\"certificateId\":\"abc123\",\"certificatePem\":\"-----BEGIN "
                                "CERTIFICATE-----\\nMIIC\\n-----END CERTIFICATE-----\\n\","
                                "\"privateKey\":\"-----BEGIN RSA PRIVATE KEY-----\\nMIIE\\n\","
                                "\"certificateOwnershipToken\":\"tok/en+==\"}";

                CHECK_INT(message_decode_create_certificate(S(j), &c), 0);
                CHECK_STR(c.certificate_id, "abc123");
                CHECK_STR(c.certificate_pem,
                          "-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n");
                CHECK_STR(c.private_key, "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n");
                CHECK_STR(c.ownership_token, "tok/en+==");
        }
        {
                _cleanup_(create_certificate_response_done) CreateCertificateResponse c = {};
                const char *j = "{\"certificateId\":\"abc\",\"certificatePem\":\"PEM\","
                                "\"certificateOwnershipToken\":\"t\"}";

                CHECK_INT(message_decode_create_certificate(S(j), &c), 0);
                CHECK(c.private_key == NULL);
                CHECK_STR(c.ownership_token, "t");
        }
        {
                static const char *const bad[] = {
                        "{\"certificatePem\":\"PEM\",\"certificateOwnershipToken\":\"t\"}",
                        "{\"certificateId\":\"abc\",\"certificateOwnershipToken\":\"t\"}",
                        "{\"certificateId\":\"abc\",\"certificatePem\":\"PEM\"}",
                        "{\"certificateId\":1,\"certificatePem\":\"PEM\",\"certificateOwnershipToken\":\"t\"}",
                        "{\"certificateId\":\"abc\",\"certificatePem\":\"PEM\",\"privateKey\":\"\","
                        "\"certificateOwnershipToken\":\"t\"}",
                        "{\"certificateId\":\"abc\",\"certificatePem\":\"PEM\",\"privateKey\":{},"
                        "\"certificateOwnershipToken\":\"t\"}",
                        "{\"certificateId\":\"\",\"certificatePem\":\"PEM\",\"certificateOwnershipToken\":\"t\"}",
                        "\"certificateId\"",
                };
                CreateCertificateResponse c = { .certificate_id = SENTINEL };

                for (size_t i = 0; i < ELEMENTSOF(bad); i++)
                        CHECK_INT(message_decode_create_certificate(S(bad[i]), &c), -EBADMSG);
                CHECK(c.certificate_id == SENTINEL && c.certificate_pem == NULL);
        }
}

static void test_error(void) {
        {
                _cleanup_(platform_error_done) PlatformError e = {};
                const char *j = "{\"statusCode\":400,\"errorCode\":\"InvalidCertificateOwnershipToken\","
                                "\"errorMessage\":\"Certificate ownership token cannot be found.\"}";

                CHECK_INT(message_decode_error(S(j), &e), 0);
                CHECK_INT(e.status_code, 400);
                CHECK_STR(e.error_code, "InvalidCertificateOwnershipToken");
                CHECK_STR(e.error_message, "Certificate ownership token cannot be found.");
        }
        {
                _cleanup_(platform_error_done) PlatformError e = {};
                const char *j = "{\"code\":\"InvalidStateTransition\",\"message\":\"Cannot update "
                                "a canceled job\",\"clientToken\":\"ct-1\",\"timestamp\":1700000000,"
                                "\"executionState\":{\"status\":\"CANCELED\",\"statusDetails\":{},"
                                "\"versionNumber\":3}}";

                CHECK_INT(message_decode_error(S(j), &e), 0);
                CHECK_INT(e.status_code, 0);
                CHECK_STR(e.error_code, "InvalidStateTransition");
                CHECK_STR(e.error_message, "Cannot update a canceled job");
        }
        {
                _cleanup_(platform_error_done) PlatformError e = {};

                CHECK_INT(message_decode_error(S("{\"code\":\"Throttled\"}"), &e), 0);
                CHECK_STR(e.error_code, "Throttled");
                CHECK(e.error_message == NULL);
        }
        {
                static const char *const bad[] = {
                        "{}",
                        "{\"message\":\"no code\"}",
                        "{\"errorCode\":\"\"}",
                        "{\"errorCode\":42}",
                        "{\"code\":[\"x\"]}",
                        "{\"statusCode\":\"400\",\"errorCode\":\"X\"}",
                        "{\"statusCode\":-1,\"errorCode\":\"X\"}",
                        "{\"errorCode\":\"X\",\"errorMessage\":7}",
                        "<html>502 Bad Gateway</html>",
                };
                PlatformError e = { .error_code = SENTINEL };

                for (size_t i = 0; i < ELEMENTSOF(bad); i++)
                        CHECK_INT(message_decode_error(S(bad[i]), &e), -EBADMSG);
                CHECK(e.error_code == SENTINEL && e.status_code == 0);
        }
}

static void test_register(void) {
        static const char *const names[] = { "SerialNumber", "Manufacturer", "Name", "Model" };
        static const char *const values[] = { "SN-0042", "Acme", "", "GW \"2\"" };
        static const char *const dup[] = { "SerialNumber", "SerialNumber" };
        _cleanup_free_ char *json = NULL;
        char *untouched = SENTINEL;

        CHECK_INT(message_encode_register("DefaultProvisioningTemplate", names, values, 4, "tok",
                                          &json),
                  0);
        CHECK_STR(json, "{\"parameters\":{\"SerialNumber\":\"SN-0042\",\"Manufacturer\":\"Acme\","
                        "\"Name\":\"\",\"Model\":\"GW \\\"2\\\"\"},\"templateName\":"
                        "\"DefaultProvisioningTemplate\",\"certificateOwnershipToken\":\"tok\"}");
        CHECK_INT(message_encode_register("T", dup, values, 2, "tok", &untouched), -EINVAL);
        CHECK_INT(message_encode_register("a/b", names, values, 4, "tok", &untouched), -EINVAL);
        CHECK_INT(message_encode_register("", names, values, 4, "tok", &untouched), -EINVAL);
        CHECK_INT(message_encode_register("T", names, values, 4, "", &untouched), -EINVAL);
        CHECK_INT(message_encode_register("T", names, values, 4, NULL, &untouched), -EINVAL);
        CHECK(untouched == SENTINEL);
        {
                _cleanup_free_ char *j = NULL;

                CHECK_INT(message_encode_register("T", NULL, NULL, 0, "tok", &j), 0);
                CHECK_STR(j, "{\"parameters\":{},\"templateName\":\"T\","
                             "\"certificateOwnershipToken\":\"tok\"}");
        }

        {
                _cleanup_free_ char *thing = NULL;
                const char *j = "{\"deviceConfiguration\":{\"a\":\"b\"},"
                                "\"thingName\":\"lifeomic:0b7a2c1e-3f4d-4e5f-8a9b-0c1d2e3f4a5b\"}";

                CHECK_INT(message_decode_register_accepted(S(j), &thing), 0);
                CHECK_STR(thing, "lifeomic:0b7a2c1e-3f4d-4e5f-8a9b-0c1d2e3f4a5b");
        }
        {
                static const char *const bad[] = {
                        "{}",
                        "{\"thingName\":\"\"}",
                        "{\"thingName\":\"a/b\"}",
                        "{\"thingName\":\"a+b\"}",
                        "{\"thingName\":\"#\"}",
                        "{\"thingName\":\"line\\nbreak\"}",
                        "{\"thingName\":17}",
                        "{\"thingName\":null}",
                        ("{\"thingName\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
                         "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}"),
                };

                for (size_t i = 0; i < ELEMENTSOF(bad); i++)
                        CHECK_INT(message_decode_register_accepted(S(bad[i]), &untouched), -EBADMSG);
                CHECK(untouched == SENTINEL);
        }
}

static void test_upload(void) {
        _cleanup_free_ char *json = NULL, *url = NULL;
        char *untouched = SENTINEL;

        CHECK_INT(message_encode_upload_link_request("ecg-2024.pdf", "application/pdf", &json), 0);
        CHECK_STR(json, "{\"fileName\":\"ecg-2024.pdf\",\"contentType\":\"application/pdf\"}");
        CHECK_INT(message_encode_upload_link_request("../etc/passwd", "text/plain", &untouched),
                  -EINVAL);
        CHECK_INT(message_encode_upload_link_request("a.txt", "text/plain\r\nX-Evil: 1", &untouched),
                  -EINVAL);
        CHECK_INT(message_encode_upload_link_request("", "text/plain", &untouched), -EINVAL);
        CHECK_INT(message_encode_upload_link_request("a.txt", "", &untouched), -EINVAL);
        CHECK_INT(message_encode_upload_link_request("tab\t.txt", "text/plain", &untouched), -EINVAL);
        CHECK(untouched == SENTINEL);

        CHECK_INT(message_decode_upload_link(
                          S("{\"uploadUrl\":\"https://bucket.s3.amazonaws.com/k?X-Amz-Signature=ab%2F\"}"),
                          &url),
                  0);
        CHECK_STR(url, "https://bucket.s3.amazonaws.com/k?X-Amz-Signature=ab%2F");
        {
                static const char *const bad[] = {
                        "{}",
                        "{\"uploadUrl\":\"\"}",
                        "{\"uploadUrl\":\"ftp://host/x\"}",
                        "{\"uploadUrl\":\"file:///etc/shadow\"}",
                        "{\"uploadUrl\":\"https://host/a b\"}",
                        "{\"uploadUrl\":\"https://host/a\\r\\nHost: evil\"}",
                        "{\"uploadUrl\":[\"https://host/\"]}",
                        "{\"message\":\"Internal server error\"}",
                };

                for (size_t i = 0; i < ELEMENTSOF(bad); i++)
                        CHECK_INT(message_decode_upload_link(S(bad[i]), &untouched), -EBADMSG);
                CHECK(untouched == SENTINEL);
        }
}

static void test_job_update(void) {
        static const char *const keys[] = { "percentProgress", "step:name_x-1" };
        static const char *const values[] = { "50", "downloading" };
        _cleanup_free_ char *a = NULL, *b = NULL, *c = NULL;
        char *untouched = SENTINEL;
        const char *k[11], *v[11];
        char accents[2 * 1025 + 1];

        for (JobStatus s = 0; s < _JOB_STATUS_MAX; s++)
                CHECK_INT(job_status_from_string(job_status_to_string(s)), s);
        CHECK_INT(job_status_from_string("in_progress"), _JOB_STATUS_INVALID);
        CHECK_INT(job_status_from_string(NULL), _JOB_STATUS_INVALID);
        CHECK(job_status_to_string(_JOB_STATUS_MAX) == NULL);
        CHECK_STR(job_status_to_string(JOB_STATUS_IN_PROGRESS), "IN_PROGRESS");

        CHECK_INT(message_encode_job_update(JOB_STATUS_IN_PROGRESS, keys, values, 1, 3, &a), 0);
        CHECK_STR(a, "{\"status\":\"IN_PROGRESS\",\"statusDetails\":{\"percentProgress\":\"50\"},"
                     "\"expectedVersion\":3}");
        CHECK_INT(message_encode_job_update(JOB_STATUS_SUCCEEDED, NULL, NULL, 0, -1, &b), 0);
        CHECK_STR(b, "{\"status\":\"SUCCEEDED\"}");
        CHECK_INT(message_encode_job_update(JOB_STATUS_FAILED, keys, values, 2, 0, &c), 0);
        CHECK_STR(c, "{\"status\":\"FAILED\",\"statusDetails\":{\"percentProgress\":\"50\","
                     "\"step:name_x-1\":\"downloading\"},\"expectedVersion\":0}");

        CHECK_INT(message_encode_job_update(JOB_STATUS_QUEUED, NULL, NULL, 0, -1, &untouched),
                  -EINVAL);
        CHECK_INT(message_encode_job_update(JOB_STATUS_CANCELED, NULL, NULL, 0, -1, &untouched),
                  -EINVAL);
        CHECK_INT(message_encode_job_update(_JOB_STATUS_INVALID, NULL, NULL, 0, -1, &untouched),
                  -EINVAL);
        for (size_t i = 0; i < 11; i++) {
                k[i] = (const char *[]) { "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k" }[i];
                v[i] = "x";
        }
        CHECK_INT(message_encode_job_update(JOB_STATUS_FAILED, k, v, 11, -1, &untouched), -E2BIG);
        {
                _cleanup_free_ char *ten = NULL;

                CHECK_INT(message_encode_job_update(JOB_STATUS_FAILED, k, v, 10, -1, &ten), 0);
        }
        k[0] = "bad key";
        CHECK_INT(message_encode_job_update(JOB_STATUS_FAILED, k, v, 1, -1, &untouched), -EINVAL);
        k[0] = "a";
        k[1] = "a";
        CHECK_INT(message_encode_job_update(JOB_STATUS_FAILED, k, v, 2, -1, &untouched), -EINVAL);
        v[0] = "";
        CHECK_INT(message_encode_job_update(JOB_STATUS_FAILED, k, v, 1, -1, &untouched), -EINVAL);
        v[0] = "installer said:\nboom";
        CHECK_INT(message_encode_job_update(JOB_STATUS_FAILED, k, v, 1, -1, &untouched), -EINVAL);

        /* 1024 characters are allowed even when they take 2048 bytes; 1025 are not. */
        for (size_t i = 0; i < 1025; i++)
                memcpy(accents + 2 * i, "\xc3\xa9", 2);
        accents[2 * 1025] = 0;
        v[0] = accents;
        CHECK_INT(message_encode_job_update(JOB_STATUS_FAILED, k, v, 1, -1, &untouched), -EINVAL);
        CHECK(untouched == SENTINEL);
        accents[2 * 1024] = 0;
        {
                _cleanup_free_ char *ok = NULL;

                CHECK_INT(message_encode_job_update(JOB_STATUS_FAILED, k, v, 1, -1, &ok), 0);
        }
}

static void test_job_list(void) {
        const char *j = "{\"inProgressJobs\":[{\"jobId\":\"fw-update-7\",\"queuedAt\":1700000000,"
                        "\"lastUpdatedAt\":1700000100,\"startedAt\":1700000050,\"executionNumber\":1,"
                        "\"versionNumber\":4}],\"queuedJobs\":[{\"jobId\":\"job_8\",\"queuedAt\":1,"
                        "\"executionNumber\":2,\"versionNumber\":1},{\"jobId\":\"job-9\"}],"
                        "\"timestamp\":1700000200,\"clientToken\":\"x\"}";
        _cleanup_(job_list_done) JobList l = {}, e = {};

        CHECK_INT(message_decode_job_list(S(j), &l), 0);
        CHECK_INT(l.n_in_progress, 1);
        CHECK_STR(l.in_progress[0].job_id, "fw-update-7");
        CHECK_INT(l.in_progress[0].execution_number, 1);
        CHECK_INT(l.in_progress[0].version_number, 4);
        CHECK_INT(l.n_queued, 2);
        CHECK_STR(l.queued[0].job_id, "job_8");
        CHECK_INT(l.queued[0].execution_number, 2);
        CHECK_STR(l.queued[1].job_id, "job-9");
        CHECK_INT(l.queued[1].execution_number, -1);
        CHECK_INT(l.queued[1].version_number, -1);

        CHECK_INT(message_decode_job_list(S("{\"timestamp\":1}"), &e), 0);
        CHECK_INT(e.n_in_progress + e.n_queued, 0);
        CHECK(e.in_progress == NULL && e.queued == NULL);
        job_list_done(&e);
        CHECK_INT(message_decode_job_list(S("{\"inProgressJobs\":[],\"queuedJobs\":null}"), &e), 0);
        CHECK_INT(e.n_in_progress + e.n_queued, 0);

        {
                static const char *const bad[] = {
                        "{\"inProgressJobs\":{}}",
                        "{\"inProgressJobs\":[1]}",
                        "{\"queuedJobs\":[{}]}",
                        "{\"queuedJobs\":[{\"jobId\":\"ok\"},{\"jobId\":\"a/b\"}]}",
                        "{\"queuedJobs\":[{\"jobId\":\"$next\"}]}",
                        "{\"queuedJobs\":[{\"jobId\":\"ok\",\"versionNumber\":\"1\"}]}",
                        "{\"queuedJobs\":[{\"jobId\":\"ok\",\"versionNumber\":-1}]}",
                        "{\"queuedJobs\":[{\"jobId\":\"ok\",\"versionNumber\":1.5}]}",
                        ("{\"queuedJobs\":[{\"jobId\":\"x12345678901234567890123456789012345678901234"
                         "56789012345678901234\"}]}"),
                };
                JobList u = { .n_queued = 12345 };

                for (size_t i = 0; i < ELEMENTSOF(bad); i++)
                        CHECK_INT(message_decode_job_list(S(bad[i]), &u), -EBADMSG);
                CHECK(u.n_queued == 12345 && u.queued == NULL);
        }
}

static void test_job_execution(void) {
        const char *j = "{\"timestamp\":1700000300,\"execution\":{\"jobId\":\"fw-update-7\","
                        "\"status\":\"QUEUED\",\"statusDetails\":{\"step\":\"rebooting\",\"n\":3},"
                        "\"queuedAt\":1700000000,\"lastUpdatedAt\":1700000100,\"versionNumber\":2,"
                        "\"executionNumber\":1,\"jobDocument\":{\"operation\":\"firmware_update\","
                        "\"deploymentId\":\"dep-1\",\"firmwareId\":\"fw-2.1.0\",\"firmwareUrl\":"
                        "\"https://fw.example/fw-2.1.0.raucb?sig=x\"}}}";
        _cleanup_(job_execution_done) JobExecution e = {};
        JobExecution untouched = { .job_id = SENTINEL };

        CHECK_INT(message_decode_job_execution(S(j), &e), 1);
        CHECK_STR(e.job_id, "fw-update-7");
        CHECK_INT(e.status, JOB_STATUS_QUEUED);
        CHECK_INT(e.version_number, 2);
        CHECK_INT(e.execution_number, 1);
        CHECK_STR(e.document.operation, "firmware_update");
        CHECK_STR(e.document.deployment_id, "dep-1");
        CHECK_STR(e.document.firmware_id, "fw-2.1.0");
        CHECK_STR(e.document.firmware_url, "https://fw.example/fw-2.1.0.raucb?sig=x");
        /* Non-string detail values are not part of the API and are skipped. */
        CHECK(e.status_details != NULL);
        if (e.status_details) {
                CHECK_STR(e.status_details[0], "step");
                CHECK_STR(e.status_details[1], "rebooting");
                CHECK(e.status_details[2] == NULL);
        }
        job_execution_done(&e);

        /* No pending job. */
        e.job_id = SENTINEL;
        CHECK_INT(message_decode_job_execution(S("{\"timestamp\":1700000300}"), &e), 0);
        CHECK(e.job_id == NULL && e.status_details == NULL);
        CHECK_INT(message_decode_job_execution(S("{\"execution\":null,\"clientToken\":\"c\"}"), &e), 0);
        CHECK(e.job_id == NULL);

        /* A job we cannot run still decodes, so it can be REJECTED by id. */
        CHECK_INT(message_decode_job_execution(
                          S("{\"execution\":{\"jobId\":\"j1\",\"status\":\"IN_PROGRESS\","
                            "\"jobDocument\":{\"operation\":\"reboot\",\"firmwareUrl\":42}}}"),
                          &e),
                  1);
        CHECK_STR(e.job_id, "j1");
        CHECK_INT(e.status, JOB_STATUS_IN_PROGRESS);
        CHECK_STR(e.document.operation, "reboot");
        CHECK(e.document.firmware_url == NULL && e.document.firmware_id == NULL);
        CHECK_INT(e.version_number, -1);
        job_execution_done(&e);
        CHECK_INT(message_decode_job_execution(
                          S("{\"execution\":{\"jobId\":\"j2\",\"status\":\"QUEUED\",\"jobDocument\":\"x\"}}"),
                          &e),
                  1);
        CHECK(e.document.operation == NULL);

        {
                static const char *const bad[] = {
                        "{\"execution\":[]}",
                        "{\"execution\":\"j1\"}",
                        "{\"execution\":{\"status\":\"QUEUED\"}}",
                        "{\"execution\":{\"jobId\":\"j1\"}}",
                        "{\"execution\":{\"jobId\":\"j1\",\"status\":\"DONE\"}}",
                        "{\"execution\":{\"jobId\":\"j1\",\"status\":5}}",
                        "{\"execution\":{\"jobId\":\"../j1\",\"status\":\"QUEUED\"}}",
                        "{\"execution\":{\"jobId\":\"j1\",\"status\":\"QUEUED\",\"versionNumber\":\"2\"}}",
                        "{\"execution\":{\"jobId\":\"j1\",\"status\":\"QUEUED\",\"statusDetails\":[]}}",
                        "[{\"execution\":{}}]",
                };

                for (size_t i = 0; i < ELEMENTSOF(bad); i++)
                        CHECK_INT(message_decode_job_execution(S(bad[i]), &untouched), -EBADMSG);
                CHECK(untouched.job_id == SENTINEL);
        }
}

/* Numbers no integer type holds, or that are no integers, in every integer field: each is refused
 * as it is, never converted first (undefined for 1e300) or clamped (json-c turns an integer
 * literal past int64 into INT64_MAX). */
static const char *const bad_integers[] = {
        "1e300", "-1e300", "1.5", "9.3e18", "-9.3e18", "9300000000000000000",
        "-9300000000000000000", "99999999999999999999999", "18446744073709551615",
        "9007199254740992", "0.5", "4.000001", "-1",
};

static void test_integer_ranges(void) {
        for (size_t i = 0; i < ELEMENTSOF(bad_integers); i++) {
                const char *n = bad_integers[i];
                _cleanup_free_ char *err = NULL, *list1 = NULL, *list2 = NULL, *exec1 = NULL,
                                    *exec2 = NULL;
                PlatformError e = { .error_code = SENTINEL };
                JobList l = { .n_queued = 12345 };
                JobExecution x = { .job_id = SENTINEL };

                err = strdup_printf("{\"statusCode\":%s,\"errorCode\":\"X\"}", n);
                list1 = strdup_printf("{\"queuedJobs\":[{\"jobId\":\"j\",\"executionNumber\":%s}]}", n);
                list2 = strdup_printf("{\"inProgressJobs\":[{\"jobId\":\"j\",\"versionNumber\":%s}]}", n);
                exec1 = strdup_printf("{\"execution\":{\"jobId\":\"j\",\"status\":\"QUEUED\","
                                      "\"versionNumber\":%s}}", n);
                exec2 = strdup_printf("{\"execution\":{\"jobId\":\"j\",\"status\":\"QUEUED\","
                                      "\"executionNumber\":%s}}", n);

                CHECK_INT(message_decode_error(S(err), &e), -EBADMSG);
                CHECK_INT(message_decode_job_list(S(list1), &l), -EBADMSG);
                CHECK_INT(message_decode_job_list(S(list2), &l), -EBADMSG);
                CHECK_INT(message_decode_job_execution(S(exec1), &x), -EBADMSG);
                CHECK_INT(message_decode_job_execution(S(exec2), &x), -EBADMSG);
                CHECK(e.error_code == SENTINEL && l.n_queued == 12345 && x.job_id == SENTINEL);
        }

        {
                /* A whole number is one however it is written; the largest exact one passes. */
                _cleanup_(platform_error_done) PlatformError e = {};
                _cleanup_(job_execution_done) JobExecution x = {};

                CHECK_INT(message_decode_error(S("{\"statusCode\":4.0e2,\"errorCode\":\"X\"}"), &e), 0);
                CHECK_INT(e.status_code, 400);
                CHECK_INT(message_decode_error(S("{\"statusCode\":1000,\"errorCode\":\"X\"}"), &e),
                          -EBADMSG);
                CHECK_INT(message_decode_job_execution(
                                  S("{\"execution\":{\"jobId\":\"j\",\"status\":\"QUEUED\","
                                    "\"versionNumber\":9007199254740991,\"executionNumber\":2.0}}"),
                                  &x),
                          1);
                CHECK_INT(x.version_number, INT64_C(9007199254740991));
                CHECK_INT(x.execution_number, 2);
        }
}

/* Values far outside any integer type encode without converting them to one. */
static void test_observation_huge(void) {
        static const struct {
                double v;
                const char *text;
        } cases[] = {
                { 1e300, "1e+300" }, { -1e300, "-1e+300" }, { 1.5, "1.5" },
                { 9.3e18, "9.3e+18" }, { -9.3e18, "-9.3e+18" }, { 1e15, "1e+15" },
                { 999999999999999, "999999999999999" },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                Observation o = { .value = cases[i].v, .code = (char *) "c", .system = (char *) "s" };
                _cleanup_(observation_done) Observation back = {};
                _cleanup_free_ char *json = NULL, *want = NULL;

                want = strdup_printf("{\"value\":%s,\"unit\":\"\",", cases[i].text);
                CHECK_INT(message_encode_observation(&o, &json), 0);
                CHECK(json && strncmp(json, want, strlen(want)) == 0);
                CHECK_INT(message_decode_observation(S(json), &back), 0);
                CHECK(back.value == cases[i].v);
        }
}

static void test_escape_control(void) {
        static const struct {
                const char *in, *out;
        } cases[] = {
                { "", "" },
                { "plain text", "plain text" },
                { "a\nb\tc\rd", "a\\nb\\tc\\rd" },
                { "\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m" },
                { "back\\slash", "back\\\\slash" },
                { "\x01\x1f\x7f", "\\x01\\x1f\\x7f" },
                { "\xc2\xb0" "C caf\xc3\xa9", "\xc2\xb0" "C caf\xc3\xa9" },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                _cleanup_free_ char *e = escape_control(cases[i].in);

                CHECK_STR(e, cases[i].out);
        }
        CHECK(escape_control(NULL) == NULL);
}

/* Text from the platform that ends up in logs, LastError and lodevctl output comes out with its
 * control characters escaped: no forged log lines, no terminal escape sequences. */
static void test_error_text_escaped(void) {
        {
                _cleanup_(platform_error_done) PlatformError e = {};
                const char *j = "{\"statusCode\":400,\"errorCode\":\"Bad\\nCode\","
                                "\"errorMessage\":\"line1\\nlodevd: Provisioned as evil\\u001b[2J\\\\\"}";

                CHECK_INT(message_decode_error(S(j), &e), 0);
                CHECK_STR(e.error_code, "Bad\\nCode");
                CHECK_STR(e.error_message, "line1\\nlodevd: Provisioned as evil\\x1b[2J\\\\");
        }
        {
                _cleanup_(platform_error_done) PlatformError e = {};
                const char *j = "{\"code\":\"InvalidRequest\\t\",\"message\":\"\\u007f\\r\"}";

                CHECK_INT(message_decode_error(S(j), &e), 0);
                CHECK_STR(e.error_code, "InvalidRequest\\t");
                CHECK_STR(e.error_message, "\\x7f\\r");
        }
        {
                _cleanup_(create_certificate_response_done) CreateCertificateResponse c = {};
                const char *j = "{\"certificateId\":\"abc\\n123\",\"certificatePem\":\"PEM\\n\","
                                "\"certificateOwnershipToken\":\"t\"}";

                CHECK_INT(message_decode_create_certificate(S(j), &c), 0);
                CHECK_STR(c.certificate_id, "abc\\n123");
                CHECK_STR(c.certificate_pem, "PEM\n"); /* data, not text: kept as it is */
        }
        {
                _cleanup_(job_execution_done) JobExecution x = {};
                const char *j = "{\"execution\":{\"jobId\":\"j\",\"status\":\"QUEUED\","
                                "\"jobDocument\":{\"operation\":\"reboot\\u001b]0;x\\u0007\"}}}";

                CHECK_INT(message_decode_job_execution(S(j), &x), 1);
                CHECK_STR(x.document.operation, "reboot\\x1b]0;x\\x07");
        }
}

int main(void) {
        test_observation_encode();
        test_observation_round_trip();
        test_observation_decode_bad();
        test_claim();
        test_error();
        test_register();
        test_upload();
        test_job_update();
        test_job_list();
        test_job_execution();
        test_integer_ranges();
        test_observation_huge();
        test_escape_control();
        test_error_text_escaped();
        return TESTS_DONE();
}
