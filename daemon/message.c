/* SPDX-License-Identifier: MIT */
/* What every area of the protocol shares: the answer on a .../rejected topic. The codecs of
 * each area live in message-<area>.c, their JSON plumbing in json-util.c. */
#include "json-util.h"
#include "message.h"

void platform_error_done(PlatformError *e) {
        if (!e)
                return;
        free(e->error_code);
        free(e->error_message);
        *e = (PlatformError) {};
}

int message_decode_error(const void *data, size_t size, PlatformError *ret) {
        _cleanup_json_ json_object *root = NULL;
        _cleanup_(platform_error_done) PlatformError e = {};
        int64_t status = 0;
        int r;

        if (!ret)
                return -EINVAL;
        r = json_payload_parse(data, size, &root);
        if (r < 0)
                return r;

        r = json_member_integer(root, "statusCode", 0, 999, 0, &status);
        if (r < 0)
                return r;
        e.status_code = (int) status;

        /* Provisioning says errorCode/errorMessage, AWS IoT Jobs code/message. Both end up in
         * the log and in LastError: text, escaped. */
        r = json_member_text(root, "errorCode", 1024, &e.error_code);
        if (r < 0)
                return r;
        if (!e.error_code) {
                r = json_member_text(root, "code", 1024, &e.error_code);
                if (r < 0)
                        return r;
        }
        if (isempty(e.error_code))
                return -EBADMSG;

        r = json_member_text(root, "errorMessage", MESSAGE_SIZE_MAX, &e.error_message);
        if (r < 0)
                return r;
        if (!e.error_message) {
                r = json_member_text(root, "message", MESSAGE_SIZE_MAX, &e.error_message);
                if (r < 0)
                        return r;
        }

        *ret = e;
        e = (PlatformError) {};
        return 0;
}

