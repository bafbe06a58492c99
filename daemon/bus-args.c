/* SPDX-License-Identifier: MIT */
#include "bus-args.h"
#include "util.h"

const BusOption bus_options_submit_observation[] = {
        { "patientId", "s", "a string" },
};
const size_t bus_options_submit_observation_n = ELEMENTSOF(bus_options_submit_observation);

const BusOption bus_options_provision[] = {
        { "force", "b", "a boolean" },
};
const size_t bus_options_provision_n = ELEMENTSOF(bus_options_provision);

static int invalid(char **ret_message, char *message) {
        if (!message)
                return -ENOMEM;
        *ret_message = message;
        return -EINVAL;
}

int bus_args_check_option(const BusOption *options, size_t n_options, const char *key,
                          const char *signature, size_t *ret_index, char **ret_message) {
        _cleanup_free_ char *shown = NULL;

        for (size_t i = 0; i < n_options; i++) {
                if (!streq(options[i].key, key))
                        continue;
                if (!streq_ptr(options[i].signature, signature))
                        return invalid(ret_message, strdup_printf("options: '%s' must be %s",
                                                                  key, options[i].type_name));
                if (ret_index)
                        *ret_index = i;
                return 0;
        }
        /* The key is the caller's text and goes into a message that may be logged. */
        shown = escape_control(key);
        if (!shown)
                return -ENOMEM;
        return invalid(ret_message, strdup_printf("options: unknown key '%s'", shown));
}

int bus_args_check_codings(unsigned n_codings, char **ret_message) {
        if (n_codings == 1)
                return 0;
        return invalid(ret_message,
                       strdup_printf("coding: exactly one (system, code, display) entry is "
                                     "required, got %u",
                                     n_codings));
}

int bus_args_check_observation(const Observation *o, char **ret_message) {
        const char *field = NULL;

        if (observation_validate(o, &field) >= 0)
                return 0;
        return invalid(ret_message,
                       strdup_printf("%s: %s", field ?: "observation",
                                     streq_ptr(field, "value")
                                             ? "must be a finite number"
                                             : "must be valid UTF-8 of at most 4096 bytes"
                                               " (code and system non-empty)"));
}
