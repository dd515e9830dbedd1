# The bench's figures of one run in one table: per scenario, keybrokerd and
# nginx side by side (vs-nginx.sh), what journald spends on keybrokerd's
# records, system calls and allocations per request (cost-bench.sh), memory
# per connection and per stream (run.sh), start-up after a crash with a
# heavy journal (startup-bench.sh). Sourced last by tests/bench/run.sh; a
# part that was skipped shows "–".

sum_say() { tee -a "$TMP/results.md"; }

# sum_pair K N: "K / N" with "–" for a missing side.
sum_pair() { echo "$(fmt_int "$1") / $(fmt_int "$2")"; }

sum_main() {
        local s cells row kind jus ceiling
        local -a scen=(json-1 json-16 sse-16)
        {
                echo
                echo "## cost per call, one table"
                echo
                echo "Cells with two figures are keybrokerd / nginx (medians of the vs-nginx rounds, same run)."
                echo "System calls and allocations are per request of the scenario's kind, counted at one connection."
                echo
                echo "| | JSON, 1 conn | JSON, 16 conns | SSE ($SSE_EVENTS events), 16 conns |"
                echo "| --- | ---: | ---: | ---: |"
                for row in "req/s:rps" "p50 µs:p50_us" "p99 µs:p99_us" "CPU µs per request:cpu_us"; do
                        cells=
                        for s in "${scen[@]}"; do
                                if [ "${BENCH_NGINX:-1}" = 0 ] || ! declare -F vsn_median >/dev/null; then
                                        cells="$cells | –"
                                else
                                        cells="$cells | $(sum_pair "$(vsn_median "$s" broker "${row#*:}")" \
                                                "$(vsn_median "$s" nginx "${row#*:}")")"
                                fi
                        done
                        echo "| ${row%%:*}$cells |"
                done
                cells=
                for s in "${scen[@]}"; do
                        jus=
                        declare -F vsn_median >/dev/null && [ "${BENCH_NGINX:-1}" != 0 ] &&
                                jus=$(vsn_median "$s" broker journald_us)
                        cells="$cells | ${jus:-–}"
                done
                echo "| journald CPU µs per keybrokerd record$cells |"
                for row in "system calls per request:CB_SYS" "allocations per request:CB_ALLOCS"; do
                        cells=
                        for s in "${scen[@]}"; do
                                kind=${s%-*}
                                local var=${row#*:}_$kind
                                cells="$cells | ${!var:-–}"
                        done
                        echo "| ${row%%:*} (keybrokerd)$cells |"
                done
                echo
                echo "| memory and start-up (keybrokerd) | measured |"
                echo "| --- | ---: |"
                echo "| RSS per idle keep-alive connection ($IDLE_N held) | $(sum_per "$RSS_IDLE" "$RSS_BASE_IDLE" "$IDLE_N") KiB |"
                echo "| RSS per open SSE stream ($STREAM_N held) | $(sum_per "$RSS_STREAM" "$RSS_BASE_STREAM" "$STREAM_N") KiB |"
                echo "| RSS with 10,000 open SSE streams | ${SCALE_10K_MIB:-–} MiB |"
                echo "| RSS 4 s after $STREAM_N streams ended, vs before | ${after_pct:-–} % |"
                echo "| start-up after \`kill -9\` with $(fmt_int "${SU_SENT:-}") calls in the journal | ${SU_MS:-–} ms |"
                jus=
                declare -F vsn_median >/dev/null && [ "${BENCH_NGINX:-1}" != 0 ] && jus=$(vsn_median json-16 broker journald_us)
                ceiling=$(awk -v j="$jus" 'BEGIN { if (j == "" || j <= 0) print "–"; else printf "%.0f", 1e6 / j }')
                echo "| journald's ceiling: records/s one core takes at its CPU per record (JSON, 16 conns) | $ceiling |"
        } | sum_say
}

# sum_per RSS BASE N: KiB per held connection, "–" when not measured.
sum_per() {
        awk -v r="$1" -v b="$2" -v n="$3" 'BEGIN { if (n == "" || n <= 0 || r == "" || r <= 0) print "–"; else printf "%.1f", (r - b) / n }'
}

sum_main
