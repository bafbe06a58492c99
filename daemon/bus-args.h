/* SPDX-License-Identifier: MIT */
#pragma once

/* The checks of com.lifeomic.Device1's arguments that need no sd-bus: bus.c reads a call and
 * hands what it read to these, so that unit tests and the fuzzer reach every check a local
 * caller can hit. Each returns 0, or -EINVAL with *ret_message set to the message of the
 * InvalidArgument error (allocated, names the argument), or -ENOMEM. */

#include <stddef.h>

#include "message.h"

/* A key a method's a{sv} options may hold, and the D-Bus signature of its value. */
typedef struct BusOption {
        const char *key;
        const char *signature; /* "s", "b", ... */
        const char *type_name; /* "a string", "a boolean": for the message */
} BusOption;

extern const BusOption bus_options_submit_observation[]; /* patientId */
extern const size_t bus_options_submit_observation_n;
extern const BusOption bus_options_provision[]; /* force */
extern const size_t bus_options_provision_n;
/* UploadFile takes no option yet: every key is unknown. */

/* One entry of an a{sv}: key and the signature of the variant's contents. On success
 * *ret_index (may be NULL) is the option's index in options. */
int bus_args_check_option(const BusOption *options, size_t n_options, const char *key,
                          const char *signature, size_t *ret_index, char **ret_message);

/* SubmitObservation's coding: exactly one (system, code, display). */
int bus_args_check_codings(unsigned n_codings, char **ret_message);

/* SubmitObservation's values (observation_validate()), the message naming the field. */
int bus_args_check_observation(const Observation *o, char **ret_message);
