/* SPDX-License-Identifier: MIT */
/* Observations as JSON: whatever decodes is valid, encodes, and decodes again to the same
 * observation; FHIRIngest's answers (.../rejected) decode as errors. */
#include <math.h>
#include <string.h>

#include "fuzz.h"
#include "message.h"
#include "util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        Observation o = {}, again = {};
        PlatformError e = {};
        char *text = NULL;
        int r;

        if (message_decode_error(data, size, &e) >= 0)
                platform_error_done(&e);
        if (message_decode_observation(data, size, &o) < 0)
                return 0;

        FUZZ_CHECK(observation_validate(&o, NULL) == 0);
        r = message_encode_observation(&o, &text);
        FUZZ_CHECK(r == 0 || r == -E2BIG);
        if (r == 0) {
                FUZZ_CHECK(message_decode_observation(text, strlen(text), &again) == 0);
                FUZZ_CHECK(memcmp(&again.value, &o.value, sizeof(double)) == 0 ||
                           again.value == o.value);
                FUZZ_CHECK(streq(again.code, o.code) && streq(again.system, o.system));
                FUZZ_CHECK(streq(strempty(again.unit), strempty(o.unit)));
                FUZZ_CHECK(streq(strempty(again.display), strempty(o.display)));
                FUZZ_CHECK(streq(strempty(again.patient_id), strempty(o.patient_id)));
                observation_done(&again);
                free(text);
        }
        observation_done(&o);
        return 0;
}
