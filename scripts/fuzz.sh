#!/bin/bash
# A long fuzzing run: every target (or the ones named) for SECONDS each, one after the
# other, in the clang build build-fuzz (made if missing). What the fuzzers find that covers
# new code is kept in build-fuzz/fuzz-corpus/TARGET and taken up by the next run; a finding
# is saved in build-fuzz/fuzz-findings/TARGET and printed. Ends with one line per target:
# executions, coverage (edges), corpus size, findings.
#
#     scripts/fuzz.sh [SECONDS] [TARGET...]        # default 600 s each, every target
set -uo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-600}"
shift || true
if [ ! -f build-fuzz/build.ninja ]; then
        CC=clang meson setup build-fuzz --prefix=/usr -Dwerror=true -Dfuzz=true \
                -Db_sanitize=address,undefined -Db_lundef=false || exit 1
fi
ninja -C build-fuzz || exit 1

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
        for t in build-fuzz/tests/fuzz/fuzz-*; do
                [ -f "$t" ] && [ -x "$t" ] && targets+=("$(basename "$t" | sed 's/^fuzz-//')")
        done
fi

summary=()
failed=0
for t in "${targets[@]}"; do
        keep="build-fuzz/fuzz-corpus/$t"
        work="build-fuzz/fuzz-findings/$t"
        mkdir -p "$keep" "$(dirname "$work")"
        # The run's new inputs land in WORK/corpus; the kept corpus is read as a seed
        # corpus and gets them afterwards.
        LODEV_FUZZ_SECONDS="$seconds" tests/fuzz/run-fuzz.sh "build-fuzz/tests/fuzz/fuzz-$t" \
                "tests/fuzz/corpus/$t" "$work" "$keep" >"$work.out" 2>&1 || failed=1
        cp -n "$work"/corpus/* "$keep"/ 2>/dev/null || true
        tail -n 1 "$work.out"
        summary+=("$(tail -n 1 "$work.out")")
done
echo "---"
printf '%s\n' "${summary[@]}"
exit "$failed"
