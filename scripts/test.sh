#!/bin/bash
# Sets up a fresh Debian 12 machine and runs every test: unit, integration,
# platform emulator and system tests in a normal build (warnings are errors), then
# units and integration again in an AddressSanitizer+UBSan build. Prints
# "N passed, M failed" at the end.
set -uo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh || { echo "0 passed, 1 failed"; exit 1; }

passed=0
failed=0

# Counts the results meson recorded in a build directory's testlog.json.
count() {
        local log="$1/meson-logs/testlog.json"
        [ -f "$log" ] || return
        read -r p f < <(/usr/bin/python3 - "$log" <<'PY'
import json, sys
p = f = 0
for line in open(sys.argv[1]):
    r = json.loads(line)["result"]
    if r in ("OK", "EXPECTEDFAIL"):
        p += 1
    elif r != "SKIP":
        f += 1
print(p, f)
PY
)
        passed=$((passed + p))
        failed=$((failed + f))
}

run_build() {
        local dir="$1"
        shift
        rm -rf "$dir"
        if ! meson setup "$dir" --prefix=/usr -Dwerror=true "$@" >"$dir.setup.log" 2>&1; then
                cat "$dir.setup.log"
                failed=$((failed + 1))
                return
        fi
        if ! ninja -C "$dir"; then
                failed=$((failed + 1))
                return
        fi
        meson test -C "$dir" --print-errorlogs "${MESON_TEST_ARGS[@]}"
        count "$dir"
}

MESON_TEST_ARGS=()
run_build build

# The sanitizer build runs the C code under test (units and the daemon in the
# integration tests); the emulator's own tests and the system test (the packages on
# a booted Debian, tests/system) add nothing there.
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
MESON_TEST_ARGS=(--suite unit --suite integration)
run_build build-asan -Db_sanitize=address,undefined -Db_lundef=false -Dman-pages=disabled \
        -Dsystem-tests=false

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
