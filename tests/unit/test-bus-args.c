/* SPDX-License-Identifier: MIT */

/* The argument checks of the D-Bus methods, with the messages a caller sees. */

#include <math.h>

#include "bus-args.h"
#include "tests.h"
#include "util.h"

/* r must be -EINVAL and *message want; frees it for the next check. */
static void check_refused(int r, char **message, const char *want) {
        CHECK_INT(r, -EINVAL);
        CHECK_STR(*message, want);
        *message = (free(*message), NULL);
}

static void test_options(void) {
        char *m = NULL;
        size_t i = SIZE_MAX;

        CHECK_INT(bus_args_check_option(bus_options_submit_observation,
                                        bus_options_submit_observation_n, "patientId", "s", &i,
                                        &m),
                  0);
        CHECK_INT(i, 0);
        CHECK(!m);
        CHECK_INT(bus_args_check_option(bus_options_provision, bus_options_provision_n, "force",
                                        "b", NULL, &m),
                  0);
        check_refused(bus_args_check_option(bus_options_submit_observation,
                                            bus_options_submit_observation_n, "patientId", "u",
                                            NULL, &m),
                      &m, "options: 'patientId' must be a string");
        check_refused(bus_args_check_option(bus_options_provision, bus_options_provision_n,
                                            "force", "s", NULL, &m),
                      &m, "options: 'force' must be a boolean");
        check_refused(bus_args_check_option(bus_options_submit_observation,
                                            bus_options_submit_observation_n, "colour", "s", NULL,
                                            &m),
                      &m, "options: unknown key 'colour'");
        /* UploadFile has none; a key with a control character comes back escaped. */
        check_refused(bus_args_check_option(NULL, 0, "x\n\x1b[2J", "s", NULL, &m), &m,
                      "options: unknown key 'x\\n\\x1b[2J'");
}

static void test_observation(void) {
        Observation o = { .value = 72.5, .unit = (char *) "/min", .code = (char *) "8867-4",
                          .system = (char *) "http://loinc.org", .display = (char *) "" };
        char *m = NULL;

        CHECK_INT(bus_args_check_codings(1, &m), 0);
        check_refused(bus_args_check_codings(2, &m), &m,
                      "coding: exactly one (system, code, display) entry is required, got 2");
        CHECK_INT(bus_args_check_observation(&o, &m), 0);
        o.value = NAN;
        check_refused(bus_args_check_observation(&o, &m), &m, "value: must be a finite number");
        o.value = 1;
        o.code = (char *) "";
        check_refused(bus_args_check_observation(&o, &m), &m,
                      "code: must be valid UTF-8 of at most 4096 bytes (code and system "
                      "non-empty)");
}

int main(void) {
        test_options();
        test_observation();
        return TESTS_DONE();
}
