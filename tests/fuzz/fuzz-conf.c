/* SPDX-License-Identifier: MIT */
/* lodevd.conf: libconfig text into the typed Config. Whatever loads has every value within
 * the bounds lodevd.conf(5) gives; whatever does not names the file and line. */
#include <string.h>

#include "conf.h"
#include "fuzz.h"
#include "message.h"
#include "topic.h"
#include "util.h"

/* The parameters given literally make a RegisterThing request the encoder takes (a
 * "file:" value is read at provisioning time and checked then). */
static void check_parameters(const Config *c) {
        const char *names[64], *values[64];
        char *text = NULL;
        size_t n = 0;

        for (size_t i = 0; i < c->n_parameters && n < 64; i++) {
                FUZZ_CHECK(c->parameters[i].name && c->parameters[i].value);
                if (startswith(c->parameters[i].value, "file:"))
                        continue;
                names[n] = c->parameters[i].name;
                values[n++] = c->parameters[i].value;
        }
        FUZZ_CHECK(message_encode_register(c->template_name, names, values, n, "token", &text) ==
                   0);
        free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        Config c = {};
        char *error = NULL, *path;
        FILE *f;
        int r;

        /* libconfig reads the files an @include names, relative to the working directory: a
         * configuration is trusted to do that, an input of the fuzzer is not. */
        if (memmem(data, size, "@include", 8) || memmem(data, size, "@INCLUDE", 8))
                return 0;
        path = strdup(fuzz_path("lodevd.conf"));
        FUZZ_CHECK(path);
        f = fopen(path, "we");
        FUZZ_CHECK(f);
        FUZZ_CHECK(fwrite(data, 1, size, f) == size || size == 0);
        FUZZ_CHECK(fclose(f) == 0);

        r = config_load(path, &c, &error);
        if (r < 0) {
                FUZZ_CHECK(r == -EINVAL);
                FUZZ_CHECK(error && strstr(error, "lodevd.conf"));
        } else {
                FUZZ_CHECK(!error);
                FUZZ_CHECK(c.endpoint && c.ca_file && c.state_dir && c.installer &&
                           c.reboot_command && c.template_name && c.claim_cert && c.claim_key);
                FUZZ_CHECK(c.port >= 1 && c.port <= 65535);
                FUZZ_CHECK(provision_method_to_string(c.method));
                FUZZ_CHECK(c.keepalive >= 30 && c.keepalive <= 1200);
                FUZZ_CHECK(c.spool_max_bytes >= 65536 && c.transfers_max_bytes >= 65536);
                FUZZ_CHECK(c.state_dir[0] == '/');
                /* The template is a level of the RegisterThing topic. */
                FUZZ_CHECK(topic_name_component_valid(c.template_name));
                check_parameters(&c);
                config_done(&c);
        }
        free(error);
        free(path);
        return 0;
}
