#!/bin/bash
# Runs one libFuzzer target for a bounded time:
#     run-fuzz.sh TARGET SEED_CORPUS WORK_DIR [MORE_CORPUS_DIRS_OR_FLAGS...]
# LODEV_FUZZ_SECONDS (default 8) bounds the run. New inputs go to WORK_DIR/corpus, never into
# the seed corpus in the source tree; a finding is saved in WORK_DIR and printed, and fails
# the run. The last line sums it up: executions, coverage (edges), corpus, findings.
set -uo pipefail

target="$1"
seeds="$2"
work="$3"
shift 3
seconds="${LODEV_FUZZ_SECONDS:-8}"

rm -rf "$work"
mkdir -p "$work/corpus"
log="$work/fuzz.log"
# The stores' targets write files: on /dev/shm when it is there, removed whatever happens.
LODEV_FUZZ_TMPDIR=$(mktemp -d "$([ -w /dev/shm ] && echo /dev/shm || echo "${TMPDIR:-/tmp}")/lodev-fuzz.XXXXXX")
export LODEV_FUZZ_TMPDIR
trap 'rm -rf "$LODEV_FUZZ_TMPDIR"' EXIT

# Leaks are findings too (but for a known one in libconfig, lsan.supp); a slow input (10 s)
# or a large allocation is one as well.
ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}" \
LSAN_OPTIONS="suppressions=$(dirname "$0")/lsan.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}" \
UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}" \
        "$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$work/" "$work/corpus" "$seeds" "$@" >"$log" 2>&1
rc=$?

runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
corpus=$(grep -o 'corp: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
findings=$(find "$work" -maxdepth 1 -type f \( -name 'crash-*' -o -name 'leak-*' -o \
        -name 'timeout-*' -o -name 'oom-*' \) | wc -l)

if [ "$rc" -ne 0 ] || [ "$findings" -ne 0 ]; then
        tail -n 60 "$log"
        for f in "$work"/crash-* "$work"/leak-* "$work"/timeout-* "$work"/oom-*; do
                [ -f "$f" ] || continue
                echo "finding: $f"
                od -A d -c "$f" | head -20
        done
fi
echo "$(basename "$target"): ${runs:-0} executions in ${seconds} s, coverage ${cov:-0} edges," \
        "corpus ${corpus:-0}, findings $findings"
[ "$rc" -eq 0 ] && [ "$findings" -eq 0 ]
