/* SPDX-License-Identifier: MIT */
/* The answer to CreateFileUploadLink on <thing> (and .../rejected): the URL becomes the
 * target of an HTTP PUT. */
#include <string.h>
#include <strings.h>

#include "fuzz.h"
#include "message.h"
#include "util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        PlatformError e = {};
        char *url = NULL;

        if (message_decode_upload_link(data, size, &url) >= 0) {
                FUZZ_CHECK(strncasecmp(url, "https://", 8) == 0 ||
                           strncasecmp(url, "http://", 7) == 0);
                for (const char *p = url; *p; p++)
                        FUZZ_CHECK((unsigned char) *p > 0x20 && *p != 0x7f);
                free(url);
        }
        if (message_decode_error(data, size, &e) >= 0)
                platform_error_done(&e);
        return 0;
}
