/* SPDX-License-Identifier: MIT */
/* Observations: $aws/rules/FHIRIngest. */
#include <math.h>

#include "json-util.h"
#include "message.h"

void observation_done(Observation *o) {
        if (!o)
                return;
        free(o->unit);
        free(o->code);
        free(o->system);
        free(o->display);
        free(o->patient_id);
        *o = (Observation) {};
}

int observation_validate(const Observation *o, const char **ret_field) {
        const char *field = NULL;

        if (!o)
                return -EINVAL;
        if (!isfinite(o->value))
                field = "value";
        else if (o->unit && !json_string_valid(o->unit, OBSERVATION_FIELD_MAX))
                field = "unit";
        else if (isempty(o->code) || !json_string_valid(o->code, OBSERVATION_FIELD_MAX))
                field = "code";
        else if (isempty(o->system) || !json_string_valid(o->system, OBSERVATION_FIELD_MAX))
                field = "system";
        else if (o->display && !json_string_valid(o->display, OBSERVATION_FIELD_MAX))
                field = "display";
        else if (o->patient_id && !json_string_valid(o->patient_id, OBSERVATION_FIELD_MAX))
                field = "patientId";

        if (field) {
                if (ret_field)
                        *ret_field = field;
                return -EINVAL;
        }
        return 0;
}

int message_encode_observation(const Observation *o, char **ret) {
        _cleanup_json_ json_object *root = NULL;
        json_object *coding, *array;
        int r;

        if (!ret)
                return -EINVAL;
        r = observation_validate(o, NULL);
        if (r < 0)
                return r;

        root = json_object_new_object();
        if (!root)
                return -ENOMEM;
        r = json_add(root, "value", json_new_number(o->value));
        if (r < 0)
                return r;
        r = json_add_string(root, "unit", strempty(o->unit));
        if (r < 0)
                return r;

        r = json_add(root, "coding", array = json_object_new_array());
        if (r < 0)
                return r;
        coding = json_object_new_object();
        if (!coding)
                return -ENOMEM;
        if (json_object_array_add(array, coding) < 0) {
                json_object_put(coding);
                return -ENOMEM;
        }
        r = json_add_string(coding, "code", o->code);
        if (r < 0)
                return r;
        r = json_add_string(coding, "system", o->system);
        if (r < 0)
                return r;
        r = json_add_string(coding, "display", strempty(o->display));
        if (r < 0)
                return r;

        if (!isempty(o->patient_id)) {
                r = json_add_string(root, "patientId", o->patient_id);
                if (r < 0)
                        return r;
        }
        return json_finish(root, ret);
}

int message_decode_observation(const void *data, size_t size, Observation *ret) {
        _cleanup_json_ json_object *root = NULL;
        _cleanup_(observation_done) Observation o = {};
        json_object *v, *coding, *c;
        int r;

        if (!ret)
                return -EINVAL;
        r = json_payload_parse(data, size, &root);
        if (r < 0)
                return r;

        if (!json_object_object_get_ex(root, "value", &v) ||
            !(json_object_is_type(v, json_type_double) || json_object_is_type(v, json_type_int)))
                return -EBADMSG;
        o.value = json_object_get_double(v);

        if (!json_object_object_get_ex(root, "unit", &v) ||
            !json_object_is_type(v, json_type_string))
                return -EBADMSG;
        r = json_member_string(root, "unit", OBSERVATION_FIELD_MAX, &o.unit);
        if (r < 0)
                return r;

        r = json_member_array(root, "coding", &coding);
        if (r < 0)
                return r;
        if (!coding || json_object_array_length(coding) != 1) /* all the struct can hold */
                return -EBADMSG;
        c = json_object_array_get_idx(coding, 0);
        if (!json_object_is_type(c, json_type_object))
                return -EBADMSG;
        r = json_member_required_string(c, "code", OBSERVATION_FIELD_MAX, &o.code);
        if (r < 0)
                return r;
        r = json_member_required_string(c, "system", OBSERVATION_FIELD_MAX, &o.system);
        if (r < 0)
                return r;
        r = json_member_string(c, "display", OBSERVATION_FIELD_MAX, &o.display);
        if (r < 0)
                return r;
        r = json_member_string(root, "patientId", OBSERVATION_FIELD_MAX, &o.patient_id);
        if (r < 0)
                return r;

        if (observation_validate(&o, NULL) < 0)
                return -EBADMSG;

        *ret = o;
        o = (Observation) {};
        return 0;
}

