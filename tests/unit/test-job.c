/* SPDX-License-Identifier: MIT */
#include "job.h"
#include "tests.h"

int main(void) {
        return TESTS_DONE();
}
