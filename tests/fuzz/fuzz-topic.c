/* SPDX-License-Identifier: MIT */
/* Topics of incoming messages, as the broker hands them over. Whatever the classifier
 * recognises is exactly the topic the builder makes for that kind and job id. */
#include <string.h>

#include "fuzz.h"
#include "topic.h"
#include "util.h"

#define THING "lodevtest:9f0e1c1e-5d5c-4a8e-9a43-0d0e7b5d2a11"
#define TEMPLATE "DefaultProvisioningTemplate"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        char *topic = fuzz_strndup(data, size), *job_id = NULL, *built = NULL;
        TopicKind kind;
        int r;

        r = topic_classify(topic, THING, TEMPLATE, &kind, &job_id);
        FUZZ_CHECK(r >= 0 || r == -ENOENT);
        if (r >= 0) {
                FUZZ_CHECK(topic_kind_is_incoming(kind));
                FUZZ_CHECK(topic_kind_to_string(kind));
                FUZZ_CHECK(topic_build(kind, THING, TEMPLATE, job_id, &built) == 0);
                FUZZ_CHECK(streq(built, topic));
                if (job_id)
                        FUZZ_CHECK(topic_job_id_valid(job_id) || streq(job_id, TOPIC_JOB_NEXT));
        }
        free(built);
        free(job_id);
        /* Before provisioning nothing of the thing's own matches. */
        job_id = NULL;
        r = topic_classify(topic, NULL, NULL, &kind, &job_id);
        FUZZ_CHECK(r >= 0 || r == -ENOENT);
        free(job_id);
        free(topic);
        return 0;
}
