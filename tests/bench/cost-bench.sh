# Cost per call: the system calls and heap allocations keybrokerd makes per
# request (issue "cost per call"), JSON and 20-event SSE, one connection.
# Sourced by tests/bench/run.sh after the quota store section (not run on its
# own): it uses run.sh's temp dir, config and helpers and store-bench.sh's
# sb_start.
#
# - System calls: strace -c -f attached to the running broker (every thread:
#   the loop and the journal writer) while N requests go through; the total
#   over N. strace slows each call but does not change how many it makes.
# - Allocations: keybrokerd under valgrind (memcheck counts every malloc,
#   calloc and realloc: "total heap usage: A allocs") for 50 + N requests
#   and for 50; the difference over N. The start-up's and the first calls'
#   own allocations (curl's and the connection cache's) cancel out.
#
# Env: BENCH_COST=0 skips it; BENCH_COST_N (default 1000) requests per figure.

CB_N=${BENCH_COST_N:-1000}
case $CB_N in "" | *[!0-9]* | 0) CB_N=1000 ;; esac

cb_say() { tee -a "$TMP/results.md"; }

# The functions below start and stop keybrokerd (BROKER_PID): they run in
# this shell, never in $( ), and leave their figure in CB_RESULT.

# cb_syscalls KIND: system calls per request of KIND (json|sse).
cb_syscalls() {
        CB_RESULT=
        local kind=$1 out=$TMP/strace-$1.txt spid total
        sb_start "$TMP/keybroker.conf" || return 1
        run_load "cost-warm-$kind" broker "$kind" 1 -200 >/dev/null 2>&1
        strace -c -f -q -p "$BROKER_PID" -o "$out" 2>/dev/null &
        spid=$!
        sleep 1
        run_load "cost-strace-$kind" broker "$kind" 1 "-$CB_N" >/dev/null 2>&1
        sleep 0.5
        kill -INT "$spid" 2>/dev/null
        wait "$spid" 2>/dev/null
        run_valid "cost-strace-$kind" || return 1
        # the summary's last line: % time, seconds, usecs/call, calls, [errors,] total
        total=$(awk '$NF == "total" { print $4 }' "$out")
        [ -n "$total" ] || return 1
        CB_RESULT=$(awk -v t="$total" -v n="$CB_N" 'BEGIN { printf "%.1f", t / n }')
}

# cb_stop: SIGTERM and wait up to a minute for the heap summary (valgrind's
# exit is slow).
cb_stop() {
        stop_pid "$BROKER_PID" 600
        BROKER_PID=
}

# cb_allocs N KIND: memcheck's count of allocations for a run of N requests.
cb_allocs() {
        local n=$1 kind=$2 log=$TMP/valgrind-$2-$1.log
        CB_RESULT=
        stop_pid "$BROKER_PID"
        BROKER_PID=
        valgrind --tool=memcheck --leak-check=no --log-file="$log" "$KEYBROKERD" --config "$TMP/keybroker.conf" \
                >>"$TMP/keybrokerd.log" 2>&1 &
        BROKER_PID=$!
        for _ in $(seq 300); do
                [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 --unix-socket "$API_SOCK" \
                        http://localhost/v1/models)" = 200 ] && break
                sleep 0.1
        done
        [ "$n" -gt 0 ] && { run_load "cost-vg-$kind-$n" broker "$kind" 1 "-$n" >/dev/null 2>&1 || return 1; }
        cb_stop
        CB_RESULT=$(sed -n 's/.*total heap usage: \([0-9,]*\) allocs.*/\1/p' "$log" | tr -d ,)
}

cb_main() {
        local kind sys allocs a0 an
        printf '\n## cost per call (one connection, %s requests each)\n\n' "$CB_N" | cb_say
        if [ "${BENCH_COST:-1}" = 0 ]; then
                echo "skipped (BENCH_COST=0)" | cb_say
                return 0
        fi
        echo "| request | system calls / request | allocations / request |" | cb_say
        echo "| --- | ---: | ---: |" | cb_say
        for kind in json sse; do
                sys=–
                if command -v strace >/dev/null 2>&1; then
                        cb_syscalls "$kind" && sys=$CB_RESULT || sys="(failed)"
                fi
                allocs=–
                if command -v valgrind >/dev/null 2>&1; then
                        cb_allocs 50 "$kind"
                        a0=$CB_RESULT
                        cb_allocs $((CB_N + 50)) "$kind"
                        an=$CB_RESULT
                        if [ -n "$a0" ] && [ -n "$an" ]; then
                                allocs=$(awk -v a="$an" -v b="$a0" -v n="$CB_N" 'BEGIN { printf "%.1f", (a - b) / n }')
                        else
                                allocs="(failed)"
                        fi
                fi
                echo "| ${kind^^} | $sys | $allocs |" | cb_say
                printf -v "CB_SYS_$kind" '%s' "$sys"
                printf -v "CB_ALLOCS_$kind" '%s' "$allocs"
        done
        printf '\nTargets (JSON): at most 9 system calls and 60 allocations per request.\n' | cb_say
        sb_start "$TMP/keybroker.conf" >/dev/null 2>&1 || true
}

cb_main
