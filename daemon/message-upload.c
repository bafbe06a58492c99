/* SPDX-License-Identifier: MIT */
/* File upload: $aws/rules/CreateFileUploadLink and the answer on <thing>. */
#include <strings.h>

#include "json-util.h"
#include "message.h"

/* Presigned URLs run to a few kilobytes. */
#define URL_MAX (16U * 1024U)
#define FILE_NAME_MAX 1024U
#define CONTENT_TYPE_MAX 256U

int message_encode_upload_link_request(const char *file_name, const char *content_type,
                                       char **ret) {
        _cleanup_json_ json_object *root = NULL;
        int r;

        if (!ret || isempty(file_name) || !json_string_valid(file_name, FILE_NAME_MAX) ||
            !json_string_printable(file_name) || strchr(file_name, '/') || isempty(content_type) ||
            strlen(content_type) > CONTENT_TYPE_MAX)
                return -EINVAL;
        for (const char *p = content_type; *p; p++)
                if ((unsigned char) *p < 0x20 || (unsigned char) *p >= 0x7f)
                        return -EINVAL;

        root = json_object_new_object();
        if (!root)
                return -ENOMEM;
        r = json_add_string(root, "fileName", file_name);
        if (r < 0)
                return r;
        r = json_add_string(root, "contentType", content_type);
        if (r < 0)
                return r;
        return json_finish(root, ret);
}

int message_decode_upload_link(const void *data, size_t size, char **ret_url) {
        _cleanup_json_ json_object *root = NULL;
        _cleanup_free_ char *url = NULL;
        int r;

        if (!ret_url)
                return -EINVAL;
        r = json_payload_parse(data, size, &root);
        if (r < 0)
                return r;
        r = json_member_required_string(root, "uploadUrl", URL_MAX, &url);
        if (r < 0)
                return r;
        if (strncasecmp(url, "https://", 8) != 0 && strncasecmp(url, "http://", 7) != 0)
                return -EBADMSG;
        for (const char *p = url; *p; p++)
                if ((unsigned char) *p <= 0x20 || *p == 0x7f)
                        return -EBADMSG;

        *ret_url = TAKE_PTR(url);
        return 0;
}

