/* SPDX-License-Identifier: MIT */

/* Every libmosquitto error code reads as a reason in lodevd's log, whatever the linked
 * library's own table lacks. */

#include <errno.h>
#include <mosquitto.h>
#include <string.h>

#include "mqtt.h"
#include "tests.h"

static void test_every_code_named(void) {
        /* MOSQ_ERR_SUCCESS to MOSQ_ERR_ALREADY_EXISTS, the codes of the header built against. */
        for (int rc = MOSQ_ERR_SUCCESS; rc <= MOSQ_ERR_ALREADY_EXISTS; rc++) {
                const char *text;

                errno = EPIPE;
                text = mqtt_strerror(rc);
                CHECK(text && text[0]);
                if (!text || strstr(text, "Unknown error"))
                        fprintf(stderr, "code %d: %s\n", rc, text ? text : "(null)");
                CHECK(text && !strstr(text, "Unknown error"));
        }
}

static void test_keepalive(void) {
        CHECK(strstr(mqtt_strerror(MOSQ_ERR_KEEPALIVE), "keepalive") != NULL);
}

static void test_errno(void) {
        errno = ECONNRESET;
        CHECK_STR(mqtt_strerror(MOSQ_ERR_ERRNO), strerror(ECONNRESET));
        /* An errno of 0 is no reason: not "Success". */
        errno = 0;
        CHECK(strcmp(mqtt_strerror(MOSQ_ERR_ERRNO), strerror(0)) != 0);
}

int main(void) {
        test_every_code_named();
        test_keepalive();
        test_errno();
        return TESTS_DONE();
}
