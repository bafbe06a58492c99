#!/bin/bash
# Sets up a fresh Debian 12 machine and runs every test: unit, integration,
# platform emulator, system tests and the fault matrix in a normal build (warnings are
# errors), then the units and integration tests again in an AddressSanitizer+UBSan
# build, and a bounded run of every fuzz target in a clang build with libFuzzer.
# Prints the fault matrix's and the fuzzers' figures, then "N passed, M failed".
set -uo pipefail
cd "$(dirname "$0")/.."

# The tests run lodevctl, liblodev and the installer hooks as other users (nobody, lodevd):
# they must reach the tree. A clone in a private directory (mktemp -d, /root) is copied to one
# they can reach, and tested there.
if ! setpriv --reuid=nobody --regid=nogroup --clear-groups test -r "$PWD/scripts/test.sh" \
        2>/dev/null; then
        if [ -n "${LODEV_TEST_COPY:-}" ]; then
                echo "$PWD cannot be reached by the user nobody"
                echo "0 passed, 1 failed"
                exit 1
        fi
        # The copy's root takes the mode of the tree's: made reachable after.
        copy=$(mktemp -d /var/tmp/lodevd-test.XXXXXX) &&
                tar -C "$PWD" --exclude='./build*' -cf - . | tar -C "$copy" -xf - &&
                chmod 755 "$copy" ||
                { echo "cannot copy $PWD to a directory the test users can reach"
                  echo "0 passed, 1 failed"; exit 1; }
        echo "$PWD cannot be reached by the users the tests run as: testing a copy in $copy"
        LODEV_TEST_COPY=1 exec bash "$copy/scripts/test.sh"
fi

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

# Lines a suite printed for the record (the fault matrix's counts, the fuzzers' runs).
figures() {
        grep -h "$2" "$1/meson-logs/testlog.txt" 2>/dev/null | awk '!seen[$0]++'
}

MESON_TEST_ARGS=()
run_build build
figures build '^faults: '

# The sanitizer build runs the C code under test (units and the daemon in the
# integration tests); the emulator's own tests and the system test (the packages on
# a booted Debian, tests/system) add nothing there.
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
MESON_TEST_ARGS=(--suite unit --suite integration)
run_build build-asan -Db_sanitize=address,undefined -Db_lundef=false -Dman-pages=disabled \
        -Dsystem-tests=false

# libFuzzer needs clang; each target runs LODEV_FUZZ_SECONDS (8) from its seed corpus.
MESON_TEST_ARGS=(--suite fuzz)
CC=clang run_build build-fuzz -Dfuzz=true -Db_sanitize=address,undefined -Db_lundef=false
figures build-fuzz 'executions in'

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
