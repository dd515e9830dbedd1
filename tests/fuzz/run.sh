#!/usr/bin/env bash
# Run the libFuzzer targets (see README.md).
#   run.sh --replay BUILD TARGET...            every seed and regression file once
#   run.sh --seconds N [--jobs J] BUILD TARGET...   fuzz each target N seconds, J at a time
# A crash, leak, timeout or sanitizer report fails the run; its input is
# kept in BUILD/artifacts/TARGET/ and the log's tail is printed. At the end
# a table: executions, coverage (edges) and features per target.
set -euo pipefail
cd "$(dirname "$0")/../.."

mode=fuzz seconds=300 jobs=2
while [ $# -gt 0 ]; do
        case "$1" in
        --replay) mode=replay; shift ;;
        --seconds) seconds="$2"; shift 2 ;;
        --jobs) jobs="$2"; shift 2 ;;
        *) break ;;
        esac
done
build="$1"; shift
targets=("$@")
export seeds=tests/fuzz/corpus regress=tests/fuzz/regressions
# Leaks are checked per input; the harness's broker lives across inputs.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:allocator_may_return_null=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

if [ "$mode" = replay ]; then
        rc=0
        for t in "${targets[@]}"; do
                mapfile -t files < <(find "$seeds/$t" "$regress/$t" -type f ! -name README 2>/dev/null | sort)
                [ ${#files[@]} -gt 0 ] || continue
                log="$build/logs/$t.replay.log"
                mkdir -p "$build/logs"
                if "$build/fuzzers/$t" -rss_limit_mb=4096 -timeout=60 "${files[@]}" >"$log" 2>&1; then
                        echo "fuzz replay: $t: ${#files[@]} inputs ok"
                else
                        echo "fuzz replay: $t FAILED (log $log):"
                        tail -n 40 "$log"
                        rc=1
                fi
        done
        exit $rc
fi

run_one() {
        local t="$1" build="$2" seconds="$3"
        local work="$build/corpus/$t" art="$build/artifacts/$t/" log="$build/logs/$t.log"
        local dict=() max_len=16384
        mkdir -p "$work" "$art" "$build/logs"
        local dirs=("$work" "$seeds/$t")
        [ -f "tests/fuzz/$t.dict" ] && dict=(-dict="tests/fuzz/$t.dict")
        [ -d "$regress/$t" ] && dirs+=("$regress/$t")
        # New inputs go to the work corpus (build/), never into the repo's seeds.
        "$build/fuzzers/$t" -max_total_time="$seconds" -print_final_stats=1 -rss_limit_mb=4096 -timeout=60 \
                -max_len=$max_len -artifact_prefix="$art" "${dict[@]}" \
                "${dirs[@]}" >"$log" 2>&1
}
export -f run_one

start=$(date +%s)
rc=0
# A failing target shows in its log (read below), not in xargs' status.
printf '%s\n' "${targets[@]}" | xargs -P "$jobs" -I{} bash -c 'run_one "$1" "$2" "$3"' _ {} "$build" "$seconds" || true
printf '\n%-14s %12s %10s %8s %8s %10s  %s\n' target executions exec/s cov ft corpus result
for t in "${targets[@]}"; do
        log="$build/logs/$t.log"
        execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
        rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
        line=$(grep -E '^#[0-9]+.*cov: ' "$log" | tail -1 || true)
        cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$line")
        ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$line")
        corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9a-zA-Z]*\).*/\1/p' <<<"$line")
        if grep -qE '^==[0-9]+==ERROR|^SUMMARY: |runtime error:|ALARM: working on the last Unit|fuzz harness: stall|Test unit written to' "$log" || [ -z "$execs" ]; then
                result=FAILED
                rc=1
        else
                result=ok
        fi
        printf '%-14s %12s %10s %8s %8s %10s  %s\n' "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$result"
done
echo "fuzz: ${seconds}s per target, $jobs at a time, $(( $(date +%s) - start ))s in all"
if [ $rc -ne 0 ]; then
        for t in "${targets[@]}"; do
                log="$build/logs/$t.log"
                if grep -qE '^==[0-9]+==ERROR|^SUMMARY: |runtime error:|ALARM|fuzz harness: stall|Test unit written to' "$log" ||
                        ! grep -q '^stat::number_of_executed_units' "$log"; then
                        echo "---- $t (log $log, artifacts $build/artifacts/$t/):"
                        tail -n 60 "$log"
                fi
        done
fi
exit $rc
