/* SPDX-License-Identifier: MIT */
/* Provisioning by claim: create[-from-csr] and the template's provision call. */
#include "json-util.h"
#include "message.h"
#include "topic.h"

/* --- Claim --- */

int message_encode_create(char **ret) {
        char *s;

        if (!ret)
                return -EINVAL;
        s = strdup("{}");
        if (!s)
                return -ENOMEM;
        *ret = s;
        return 0;
}

int message_encode_create_from_csr(const char *csr_pem, char **ret) {
        _cleanup_json_ json_object *root = NULL;
        int r;

        if (!ret || isempty(csr_pem) || !json_string_valid(csr_pem, MESSAGE_SIZE_MAX))
                return -EINVAL;

        root = json_object_new_object();
        if (!root)
                return -ENOMEM;
        r = json_add_string(root, "certificateSigningRequest", csr_pem);
        if (r < 0)
                return r;
        return json_finish(root, ret);
}

void create_certificate_response_done(CreateCertificateResponse *c) {
        if (!c)
                return;
        free(c->certificate_id);
        free(c->certificate_pem);
        free(c->private_key);
        free(c->ownership_token);
        *c = (CreateCertificateResponse) {};
}

int message_decode_create_certificate(const void *data, size_t size,
                                      CreateCertificateResponse *ret) {
        _cleanup_json_ json_object *root = NULL;
        _cleanup_(create_certificate_response_done) CreateCertificateResponse c = {};
        int r;

        if (!ret)
                return -EINVAL;
        r = json_payload_parse(data, size, &root);
        if (r < 0)
                return r;

        /* Only ever logged: text, escaped. */
        r = json_member_text(root, "certificateId", MESSAGE_SIZE_MAX, &c.certificate_id);
        if (r < 0)
                return r;
        if (isempty(c.certificate_id))
                return -EBADMSG;
        r = json_member_required_string(root, "certificatePem", MESSAGE_SIZE_MAX,
                                     &c.certificate_pem);
        if (r < 0)
                return r;
        r = json_member_string(root, "privateKey", MESSAGE_SIZE_MAX, &c.private_key);
        if (r < 0)
                return r;
        if (c.private_key && !*c.private_key)
                return -EBADMSG;
        r = json_member_required_string(root, "certificateOwnershipToken", MESSAGE_SIZE_MAX,
                                     &c.ownership_token);
        if (r < 0)
                return r;

        *ret = c;
        c = (CreateCertificateResponse) {};
        return 0;
}

/* --- Register --- */

int message_encode_register(const char *template_name, const char *const *param_names,
                            const char *const *param_values, size_t n,
                            const char *ownership_token, char **ret) {
        _cleanup_json_ json_object *root = NULL;
        json_object *params;
        int r;

        if (!ret || !topic_name_component_valid(template_name) || isempty(ownership_token) ||
            !json_string_valid(ownership_token, MESSAGE_SIZE_MAX) ||
            (n > 0 && (!param_names || !param_values)))
                return -EINVAL;
        for (size_t i = 0; i < n; i++) {
                if (isempty(param_names[i]) || !json_string_valid(param_names[i], 1024) ||
                    !json_string_valid(param_values[i], MESSAGE_SIZE_MAX))
                        return -EINVAL;
                for (size_t j = 0; j < i; j++)
                        if (streq(param_names[i], param_names[j]))
                                return -EINVAL;
        }

        root = json_object_new_object();
        if (!root)
                return -ENOMEM;
        r = json_add(root, "parameters", params = json_object_new_object());
        if (r < 0)
                return r;
        for (size_t i = 0; i < n; i++) {
                r = json_add_string(params, param_names[i], param_values[i]);
                if (r < 0)
                        return r;
        }
        r = json_add_string(root, "templateName", template_name);
        if (r < 0)
                return r;
        r = json_add_string(root, "certificateOwnershipToken", ownership_token);
        if (r < 0)
                return r;
        return json_finish(root, ret);
}

int message_decode_register_accepted(const void *data, size_t size, char **ret_thing_name) {
        _cleanup_json_ json_object *root = NULL;
        _cleanup_free_ char *thing = NULL;
        int r;

        if (!ret_thing_name)
                return -EINVAL;
        r = json_payload_parse(data, size, &root);
        if (r < 0)
                return r;
        r = json_member_required_string(root, "thingName", TOPIC_COMPONENT_MAX, &thing);
        if (r < 0)
                return r;
        /* It becomes part of every topic and of file contents: no wildcards, no '/'. */
        if (!topic_name_component_valid(thing))
                return -EBADMSG;

        *ret_thing_name = TAKE_PTR(thing);
        return 0;
}

