/* SPDX-License-Identifier: MIT */
/* The arguments local callers give com.lifeomic.Device1 (SPEC §4), through the checks bus.c
 * makes (bus-args.c, transfer-store.c): whatever a check lets in, lodevd can carry to the
 * platform, and every refusal says what was wrong without echoing control characters.
 *
 * The input is the arguments' strings, NUL-separated (D-Bus strings hold no NUL): the number
 * of codings (a digit), system, code, display, value (as strtod() reads it), unit, patientId,
 * an option's key, its value's signature, a file name, a content type, a transfer id. Missing
 * trailing fields are empty. */
#include <math.h>
#include <string.h>

#include "bus-args.h"
#include "fuzz.h"
#include "json-util.h"
#include "message.h"
#include "mime.h"
#include "transfer-store.h"
#include "util.h"

enum {
        F_CODINGS,
        F_SYSTEM,
        F_CODE,
        F_DISPLAY,
        F_VALUE,
        F_UNIT,
        F_PATIENT,
        F_OPTION_KEY,
        F_OPTION_SIGNATURE,
        F_FILE_NAME,
        F_CONTENT_TYPE,
        F_TRANSFER_ID,
        _F_MAX,
};

static void check_message(int r, char *message) {
        FUZZ_CHECK(r == 0 || r == -EINVAL);
        if (r == 0) {
                FUZZ_CHECK(!message);
                return;
        }
        FUZZ_CHECK(message && message[0]);
        for (const char *p = message; *p; p++)
                FUZZ_CHECK((unsigned char) *p >= 0x20 && *p != 0x7f);
        free(message);
}

static void check_observation(const char *const *f) {
        Observation o = {
                .system = (char *) f[F_SYSTEM],
                .code = (char *) f[F_CODE],
                .display = (char *) f[F_DISPLAY],
                .value = strtod(f[F_VALUE], NULL),
                .unit = (char *) f[F_UNIT],
                .patient_id = f[F_PATIENT][0] ? (char *) f[F_PATIENT] : NULL,
        }, back = {};
        char *message = NULL, *text = NULL;
        unsigned n = (unsigned) (f[F_CODINGS][0] - '0');
        int r;

        r = bus_args_check_codings(n, &message);
        FUZZ_CHECK((r == 0) == (n == 1));
        check_message(r, message);
        message = NULL;

        r = bus_args_check_observation(&o, &message);
        check_message(r, message);
        if (r < 0)
                return;
        /* Taken: it goes out as this JSON (or is refused as too large, never stored broken). */
        r = message_encode_observation(&o, &text);
        FUZZ_CHECK(r == 0 || r == -E2BIG);
        if (r < 0)
                return;
        FUZZ_CHECK(message_decode_observation(text, strlen(text), &back) == 0);
        FUZZ_CHECK(back.value == o.value && streq(back.code, o.code) &&
                   streq(back.system, o.system) && streq(strempty(back.unit), o.unit) &&
                   streq(strempty(back.display), o.display) &&
                   streq(strempty(back.patient_id), f[F_PATIENT]));
        observation_done(&back);
        free(text);
}

static void check_option(const char *const *f) {
        static const struct {
                const BusOption *options;
                const size_t *n;
        } tables[] = {
                { bus_options_submit_observation, &bus_options_submit_observation_n },
                { bus_options_provision, &bus_options_provision_n },
                { NULL, NULL }, /* UploadFile */
        };

        for (size_t t = 0; t < ELEMENTSOF(tables); t++) {
                size_t n = tables[t].n ? *tables[t].n : 0, index = SIZE_MAX;
                char *message = NULL;
                int r;

                r = bus_args_check_option(tables[t].options, n, f[F_OPTION_KEY],
                                          f[F_OPTION_SIGNATURE], &index, &message);
                check_message(r, message);
                if (r == 0) {
                        FUZZ_CHECK(index < n);
                        FUZZ_CHECK(streq(tables[t].options[index].key, f[F_OPTION_KEY]));
                        FUZZ_CHECK(streq(tables[t].options[index].signature,
                                         f[F_OPTION_SIGNATURE]));
                }
        }
}

static void check_upload(const char *const *f) {
        const char *type = f[F_CONTENT_TYPE][0] ? f[F_CONTENT_TYPE] : MIME_TYPE_DEFAULT;
        const char *reason = NULL;
        char *request = NULL;

        if (transfer_file_name_check(f[F_FILE_NAME], &reason) < 0) {
                FUZZ_CHECK(reason);
                return;
        }
        if (transfer_content_type_check(type, &reason) < 0) {
                FUZZ_CHECK(reason);
                return;
        }
        /* Spooled: it must be able to ask for its upload link, or it would wait forever. */
        FUZZ_CHECK(message_encode_upload_link_request(f[F_FILE_NAME], type, &request) == 0);
        free(request);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        char *copy = fuzz_strndup(data, size);
        const char *f[_F_MAX];
        size_t at = 0;

        for (size_t i = 0; i < _F_MAX; i++) {
                f[i] = at <= size ? copy + at : "";
                at += strlen(f[i]) + 1;
        }

        check_observation(f);
        check_option(f);
        check_upload(f);
        if (transfer_id_is_valid(f[F_TRANSFER_ID]))
                FUZZ_CHECK(strlen(f[F_TRANSFER_ID]) == TRANSFER_ID_LEN);
        free(copy);
        return 0;
}
