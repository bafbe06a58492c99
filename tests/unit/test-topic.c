/* SPDX-License-Identifier: MIT */

/* Every topic builder against the literal topics of SPEC section 2, the classifier on each
 * of them (thing names with colons included), and hostile topics. */

#include "tests.h"
#include "topic.h"
#include "util.h"

#define THING "lifeomic:0b7a2c1e-3f4d-4e5f-8a9b-0c1d2e3f4a5b"
#define TEMPLATE "DefaultProvisioningTemplate"

typedef struct Case {
        TopicKind kind;
        const char *job_id;
        const char *topic;
} Case;

static const Case cases[] = {
        { TOPIC_CREATE, NULL, "$aws/certificates/create/json" },
        { TOPIC_CSR, NULL, "$aws/certificates/create-from-csr/json" },
        { TOPIC_REGISTER, NULL, "$aws/provisioning-templates/" TEMPLATE "/provision/json" },
        { TOPIC_FHIR_INGEST, NULL, "$aws/rules/FHIRIngest" },
        { TOPIC_UPLOAD_LINK_REQUEST, NULL, "$aws/rules/CreateFileUploadLink" },
        { TOPIC_JOBS_GET, NULL, "$aws/things/" THING "/jobs/get" },
        { TOPIC_JOB_GET, "fw-7", "$aws/things/" THING "/jobs/fw-7/get" },
        { TOPIC_JOB_GET, "$next", "$aws/things/" THING "/jobs/$next/get" },
        { TOPIC_START_NEXT, NULL, "$aws/things/" THING "/jobs/start-next" },
        { TOPIC_JOB_UPDATE, "fw-7", "$aws/things/" THING "/jobs/fw-7/update" },

        { TOPIC_CREATE_ACCEPTED, NULL, "$aws/certificates/create/json/accepted" },
        { TOPIC_CREATE_REJECTED, NULL, "$aws/certificates/create/json/rejected" },
        { TOPIC_CSR_ACCEPTED, NULL, "$aws/certificates/create-from-csr/json/accepted" },
        { TOPIC_CSR_REJECTED, NULL, "$aws/certificates/create-from-csr/json/rejected" },
        { TOPIC_REGISTER_ACCEPTED, NULL,
          "$aws/provisioning-templates/" TEMPLATE "/provision/json/accepted" },
        { TOPIC_REGISTER_REJECTED, NULL,
          "$aws/provisioning-templates/" TEMPLATE "/provision/json/rejected" },
        { TOPIC_FHIR_ACCEPTED, NULL, THING "/FHIRIngest/accepted" },
        { TOPIC_FHIR_REJECTED, NULL, THING "/FHIRIngest/rejected" },
        { TOPIC_UPLOAD_LINK, NULL, THING },
        { TOPIC_UPLOAD_LINK_ACCEPTED, NULL, THING "/CreateFileUploadLink/accepted" },
        { TOPIC_UPLOAD_LINK_REJECTED, NULL, THING "/CreateFileUploadLink/rejected" },
        { TOPIC_JOBS_NOTIFY_NEXT, NULL, "$aws/things/" THING "/jobs/notify-next" },
        { TOPIC_JOBS_GET_ACCEPTED, NULL, "$aws/things/" THING "/jobs/get/accepted" },
        { TOPIC_JOBS_GET_REJECTED, NULL, "$aws/things/" THING "/jobs/get/rejected" },
        { TOPIC_JOB_GET_ACCEPTED, "fw_update-2024",
          "$aws/things/" THING "/jobs/fw_update-2024/get/accepted" },
        { TOPIC_JOB_GET_ACCEPTED, "$next", "$aws/things/" THING "/jobs/$next/get/accepted" },
        { TOPIC_JOB_GET_REJECTED, "J", "$aws/things/" THING "/jobs/J/get/rejected" },
        { TOPIC_START_NEXT_ACCEPTED, NULL, "$aws/things/" THING "/jobs/start-next/accepted" },
        { TOPIC_START_NEXT_REJECTED, NULL, "$aws/things/" THING "/jobs/start-next/rejected" },
        { TOPIC_JOB_UPDATE_ACCEPTED, "fw-7", "$aws/things/" THING "/jobs/fw-7/update/accepted" },
        { TOPIC_JOB_UPDATE_REJECTED, "fw-7", "$aws/things/" THING "/jobs/fw-7/update/rejected" },
};

static void test_validation(void) {
        char s[TOPIC_COMPONENT_MAX + 2];

        CHECK(topic_name_component_valid(THING));
        CHECK(topic_name_component_valid("a"));
        CHECK(topic_name_component_valid("caf\xc3\xa9"));
        CHECK(!topic_name_component_valid(NULL));
        CHECK(!topic_name_component_valid(""));
        CHECK(!topic_name_component_valid("a/b"));
        CHECK(!topic_name_component_valid("a+"));
        CHECK(!topic_name_component_valid("#"));
        CHECK(!topic_name_component_valid("tab\there"));
        CHECK(!topic_name_component_valid("bad\xff"));
        CHECK(!topic_name_component_valid("\xc0\xaf")); /* overlong '/' */
        memset(s, 'x', sizeof(s) - 1);
        s[sizeof(s) - 1] = 0;
        CHECK(!topic_name_component_valid(s));
        s[TOPIC_COMPONENT_MAX] = 0;
        CHECK(topic_name_component_valid(s));

        CHECK(topic_job_id_valid("fw-update_7"));
        CHECK(topic_job_id_valid("A"));
        CHECK(!topic_job_id_valid(NULL));
        CHECK(!topic_job_id_valid(""));
        CHECK(!topic_job_id_valid("$next"));
        CHECK(!topic_job_id_valid("a:b"));
        CHECK(!topic_job_id_valid("a/b"));
        CHECK(!topic_job_id_valid("a.b"));
        CHECK(!topic_job_id_valid("+"));
        memset(s, 'j', 65);
        s[65] = 0;
        CHECK(!topic_job_id_valid(s));
        s[64] = 0;
        CHECK(topic_job_id_valid(s));
}

static void test_build(void) {
        char *untouched = (char *) "x";
        unsigned seen[_TOPIC_KIND_MAX] = {};

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                _cleanup_free_ char *t = NULL;

                CHECK_INT(topic_build(cases[i].kind, THING, TEMPLATE, cases[i].job_id, &t), 0);
                CHECK_STR(t, cases[i].topic);
                seen[cases[i].kind]++;
        }
        /* The table above covers every kind. */
        for (TopicKind k = 0; k < _TOPIC_KIND_MAX; k++) {
                CHECK(seen[k] > 0);
                CHECK(topic_kind_to_string(k) != NULL);
        }
        CHECK(topic_kind_to_string(_TOPIC_KIND_MAX) == NULL);
        CHECK(topic_kind_to_string(_TOPIC_KIND_INVALID) == NULL);

        /* Kinds ignore arguments they do not use. */
        {
                _cleanup_free_ char *t = NULL;

                CHECK_INT(topic_build(TOPIC_CREATE, NULL, NULL, NULL, &t), 0);
                CHECK_STR(t, "$aws/certificates/create/json");
        }

        /* Invalid arguments. */
        CHECK_INT(topic_build(TOPIC_FHIR_ACCEPTED, NULL, NULL, NULL, &untouched), -EINVAL);
        CHECK_INT(topic_build(TOPIC_FHIR_ACCEPTED, "a/b", NULL, NULL, &untouched), -EINVAL);
        CHECK_INT(topic_build(TOPIC_UPLOAD_LINK, "#", NULL, NULL, &untouched), -EINVAL);
        CHECK_INT(topic_build(TOPIC_REGISTER, THING, "tmpl+", NULL, &untouched), -EINVAL);
        CHECK_INT(topic_build(TOPIC_REGISTER, THING, NULL, NULL, &untouched), -EINVAL);
        CHECK_INT(topic_build(TOPIC_JOB_UPDATE, THING, NULL, "$next", &untouched), -EINVAL);
        CHECK_INT(topic_build(TOPIC_JOB_UPDATE, THING, NULL, "../x", &untouched), -EINVAL);
        CHECK_INT(topic_build(TOPIC_JOB_UPDATE, THING, NULL, NULL, &untouched), -EINVAL);
        CHECK_INT(topic_build(TOPIC_JOB_GET, THING, NULL, "+", &untouched), -EINVAL);
        CHECK_INT(topic_build(_TOPIC_KIND_MAX, THING, NULL, NULL, &untouched), -EINVAL);
        CHECK_INT(topic_build(_TOPIC_KIND_INVALID, THING, NULL, NULL, &untouched), -EINVAL);
        CHECK_STR(untouched, "x");

        {
                _cleanup_free_ char *a = NULL, *b = NULL, *c = NULL;

                CHECK_INT(topic_build_filter(TOPIC_JOB_UPDATE_ACCEPTED, THING, NULL, &a), 0);
                CHECK_STR(a, "$aws/things/" THING "/jobs/+/update/accepted");
                CHECK_INT(topic_build_filter(TOPIC_JOB_GET_REJECTED, THING, NULL, &b), 0);
                CHECK_STR(b, "$aws/things/" THING "/jobs/+/get/rejected");
                CHECK_INT(topic_build_filter(TOPIC_JOBS_NOTIFY_NEXT, THING, NULL, &c), 0);
                CHECK_STR(c, "$aws/things/" THING "/jobs/notify-next");
        }
}

static void test_classify(void) {
        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                _cleanup_free_ char *job = NULL;
                TopicKind kind = _TOPIC_KIND_INVALID;
                int r;

                r = topic_classify(cases[i].topic, THING, TEMPLATE, &kind, &job);
                if (!topic_kind_is_incoming(cases[i].kind)) {
                        /* What we publish is not something we receive. */
                        CHECK_INT(r, -ENOENT);
                        CHECK_INT(kind, _TOPIC_KIND_INVALID);
                        continue;
                }
                CHECK_INT(r, cases[i].kind);
                CHECK_INT(kind, cases[i].kind);
                if (cases[i].job_id)
                        CHECK_STR(job, cases[i].job_id);
                else
                        CHECK(job == NULL);
        }

        /* Without a thing or template name, topics that need one do not match. */
        CHECK_INT(topic_classify(THING "/FHIRIngest/accepted", NULL, TEMPLATE, NULL, NULL), -ENOENT);
        CHECK_INT(topic_classify("$aws/provisioning-templates/" TEMPLATE "/provision/json/accepted",
                                 THING, NULL, NULL, NULL),
                  -ENOENT);
        CHECK_INT(topic_classify("$aws/certificates/create/json/accepted", NULL, NULL, NULL, NULL),
                  TOPIC_CREATE_ACCEPTED);

        /* Hostile or foreign topics. */
        {
                static const char *const hostile[] = {
                        "",
                        "/",
                        "#",
                        "+",
                        "$aws",
                        "$aws/",
                        "$aws/certificates/create/json/accepted/",
                        "$aws/certificates/create/json/accepted/extra",
                        "/$aws/certificates/create/json/accepted",
                        "$aws/certificates/create/json//accepted",
                        "$aws/certificates/create/json/Accepted",
                        "$aws/certificates/create/json/accepte",
                        "$aws/certificates/create/json/acceptedX",
                        "$aws/provisioning-templates/OtherTemplate/provision/json/accepted",
                        "$aws/provisioning-templates/+/provision/json/accepted",
                        "lifeomic:other/FHIRIngest/accepted",
                        "lifeomic:0b7a2c1e-3f4d-4e5f-8a9b-0c1d2e3f4a5/FHIRIngest/accepted",
                        THING "x",
                        THING "/",
                        THING "/FHIRIngest",
                        THING "/FHIRIngest/accepted/x",
                        "+/FHIRIngest/accepted",
                        "$aws/things/" THING "/jobs/../get/accepted",
                        "$aws/things/" THING "/jobs/+/get/accepted",
                        "$aws/things/" THING "/jobs/#",
                        "$aws/things/" THING "/jobs//get/accepted",
                        "$aws/things/" THING "/jobs/a:b/get/accepted",
                        "$aws/things/" THING "/jobs/$next/update/accepted",
                        "$aws/things/" THING "/jobs/$nextX/get/accepted",
                        ("$aws/things/" THING "/jobs/x1234567890123456789012345678901234567890"
                         "1234567890123456789012345/get/accepted"),
                        "$aws/things/other/jobs/notify-next",
                        "$aws/things/" THING "/jobs/notify-next/accepted",
                        "$aws/things/" THING "/shadow/update/accepted",
                        "$aws/rules/FHIRIngest",
                };

                for (size_t i = 0; i < ELEMENTSOF(hostile); i++) {
                        char *job = (char *) "x";
                        TopicKind kind = _TOPIC_KIND_MAX;
                        int r = topic_classify(hostile[i], THING, TEMPLATE, &kind, &job);

                        if (r != -ENOENT)
                                fprintf(stderr, "hostile topic %zu classified as %d\n", i, r);
                        CHECK_INT(r, -ENOENT);
                        CHECK_INT(kind, _TOPIC_KIND_MAX);
                        CHECK_STR(job, "x");
                }
        }

        /* A thing named like a keyword does not confuse the bare <thing> topic. */
        CHECK_INT(topic_classify("jobs", "jobs", NULL, NULL, NULL), TOPIC_UPLOAD_LINK);
        CHECK_INT(topic_classify("jobs", THING, NULL, NULL, NULL), -ENOENT);
        CHECK_INT(topic_classify(NULL, THING, NULL, NULL, NULL), -EINVAL);
}

int main(void) {
        test_validation();
        test_build();
        test_classify();
        return TESTS_DONE();
}
