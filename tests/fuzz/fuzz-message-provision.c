/* SPDX-License-Identifier: MIT */
/* Provisioning answers from the platform: $aws/certificates/create[-from-csr]/json/accepted,
 * .../provision/json/accepted and every .../rejected. */
#include <string.h>

#include "fuzz.h"
#include "json-util.h"
#include "message.h"
#include "topic.h"

/* Escaped text (certificate id, error code and message) never carries a control character. */
static void check_escaped(const char *s) {
        if (s)
                FUZZ_CHECK(json_string_printable(s));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        CreateCertificateResponse c = {};
        PlatformError e = {};
        char *thing = NULL;

        if (message_decode_create_certificate(data, size, &c) >= 0) {
                FUZZ_CHECK(!isempty(c.certificate_id) && !isempty(c.certificate_pem) &&
                           !isempty(c.ownership_token));
                check_escaped(c.certificate_id);
                create_certificate_response_done(&c);
        }
        if (message_decode_register_accepted(data, size, &thing) >= 0) {
                /* It becomes a topic level and the client id. */
                FUZZ_CHECK(topic_name_component_valid(thing));
                free(thing);
        }
        if (message_decode_error(data, size, &e) >= 0) {
                FUZZ_CHECK(!isempty(e.error_code));
                FUZZ_CHECK(e.status_code >= 0 && e.status_code <= 999);
                check_escaped(e.error_code);
                check_escaped(e.error_message);
                platform_error_done(&e);
        }
        return 0;
}
