/* SPDX-License-Identifier: MIT */
/* liblodev's conventions that need no daemon: every destructor takes NULL and
 * returns NULL of its own type, so that x = lodev_x_free(x) works, and frees what the
 * library allocates in the structures it returns (LeakSanitizer in the sanitizer
 * build); the error texts. The calls themselves are in tests/integration/test_liblodev.py. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "lodev.h"
#include "tests.h"

/* x = lodev_x_free(x) compiles only when the destructor returns x's own type. */
#define RETURNS_OWN_TYPE(call, type) __builtin_types_compatible_p(__typeof__(call), type)
_Static_assert(RETURNS_OWN_TYPE(lodev_close(NULL), lodev *), "lodev_close");
_Static_assert(RETURNS_OWN_TYPE(lodev_slot_free(NULL), lodev_slot *), "lodev_slot_free");
_Static_assert(RETURNS_OWN_TYPE(lodev_status_free(NULL), lodev_status *), "lodev_status_free");
_Static_assert(RETURNS_OWN_TYPE(lodev_transfers_free(NULL, 0), lodev_transfer *),
               "lodev_transfers_free");
_Static_assert(RETURNS_OWN_TYPE(lodev_inhibitors_free(NULL, 0), lodev_inhibitor *),
               "lodev_inhibitors_free");

static void test_null(void) {
        CHECK(lodev_close(NULL) == NULL);
        CHECK(lodev_slot_free(NULL) == NULL);
        CHECK(lodev_status_free(NULL) == NULL);
        CHECK(lodev_transfers_free(NULL, 0) == NULL);
        CHECK(lodev_transfers_free(NULL, 3) == NULL);
        CHECK(lodev_inhibitors_free(NULL, 0) == NULL);
        CHECK(lodev_inhibitors_free(NULL, 3) == NULL);
}

/* What the library hands out, built the way it builds it: every string on the heap. */
static void test_owned(void) {
        lodev_status *s = calloc(1, sizeof(*s));
        lodev_transfer *t = calloc(2, sizeof(*t));
        lodev_inhibitor *a = calloc(1, sizeof(*a));

        CHECK(s && t && a);
        if (!s || !t || !a)
                return;
        *s = (lodev_status) { .state = strdup("online"), .thing_name = strdup("a:b"),
                              .endpoint = strdup("h:8883"), .last_error = strdup(""),
                              .job_id = strdup("j"), .job_status = strdup("downloading"),
                              .job_percent = 42 };
        for (int i = 0; i < 2; i++)
                t[i] = (lodev_transfer) { .id = strdup("id"), .file_name = strdup("f"),
                                          .state = strdup("queued") };
        *a = (lodev_inhibitor) { .who = strdup("w"), .why = strdup("y"), .owner = strdup(":1.1") };

        s = lodev_status_free(s);
        t = lodev_transfers_free(t, 2);
        a = lodev_inhibitors_free(a, 1);
        CHECK(s == NULL);
        CHECK(t == NULL);
        CHECK(a == NULL);
}

static void test_arguments(void) {
        lodev_status *s = NULL;
        uint64_t t;

        /* No handle: -EINVAL, nothing touched. */
        CHECK_INT(lodev_open(NULL), -EINVAL);
        CHECK_INT(lodev_get_status(NULL, &s), -EINVAL);
        CHECK(s == NULL);
        CHECK_INT(lodev_get_timeout(NULL, &t), -EINVAL);
        CHECK_INT(lodev_dispatch(NULL), -EINVAL);
        CHECK_INT(lodev_pending_calls(NULL), 0);
        CHECK(lodev_last_error(NULL) == NULL);
        CHECK_INT(lodev_wait_online_async(NULL, NULL, NULL, NULL), -EINVAL);
        CHECK_INT(lodev_add_event_callback(NULL, NULL, NULL, NULL), -EINVAL);
}

static void test_strerror(void) {
        CHECK_STR(lodev_strerror(-EDQUOT), "the queue is full");
        CHECK_STR(lodev_strerror(EDQUOT), "the queue is full");
        CHECK_STR(lodev_strerror(-ENOSPC), "no space left on the device's file system");
        CHECK_STR(lodev_strerror(-EUSERS), "too many calls waiting for lodevd at once");
        CHECK_STR(lodev_strerror(-EHOSTUNREACH),
                  "lodevd is not running or not reachable on the system bus");
        CHECK_STR(lodev_strerror(-ENOENT), strerror(ENOENT));
}

int main(void) {
        test_null();
        test_owned();
        test_arguments();
        test_strerror();
        return TESTS_DONE();
}
