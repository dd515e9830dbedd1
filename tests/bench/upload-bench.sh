# Uploads through keybrokerd: a 200 MB multipart file to POST /v1/files,
# streamed through the broker to kb-mock, against the same upload sent to
# kb-mock directly. Sourced by tests/bench/run.sh after its own tables (it
# uses run.sh's temp dir, kb-mock, keybrokerd and helpers: log, stop_pid).
# Reported: seconds per upload and MB/s (median of BENCH_ROUNDS rounds),
# keybrokerd's CPU per upload, and how far its peak RSS (VmHWM, reset before
# each upload) rose above its RSS before: the target is < 2 MiB.
#
# Env: BENCH_UPLOAD=0 skips it; BENCH_UPLOAD_MB (default 200).

UB_ROUNDS=${BENCH_ROUNDS:-3}
case $UB_ROUNDS in "" | *[!0-9]* | 0) UB_ROUNDS=3 ;; esac
UB_MB=${BENCH_UPLOAD_MB:-200}
case $UB_MB in "" | *[!0-9]* | 0) UB_MB=200 ;; esac

ub_say() { tee -a "$TMP/results.md"; }
ub_median() { sort -n | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)] }'; }
ub_kib() { awk -v k="$2" '$1 == k":" { print $2 }' "/proc/$1/status" 2>/dev/null; }
ub_ticks() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{ print $12 + $13 }'; }

ub_main() {
        local file=$TMP/upload.bin round t direct=() broker=() grew=() cpu=() rss0 t0 t1 c0 c1 code
        local hz
        hz=$(getconf CLK_TCK)
        if [ "${BENCH_UPLOAD:-1}" = 0 ]; then
                printf '\n## uploads: a %s MB file through keybrokerd\n\nskipped (BENCH_UPLOAD=0)\n' "$UB_MB" | ub_say
                return 0
        fi
        head -c "$((UB_MB * 1000 * 1000))" /dev/urandom >"$file"
        for round in $(seq "$UB_ROUNDS"); do
                t0=$(date +%s.%N)
                code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Expect:' -H "Authorization: Bearer $KEY_SECRET" \
                        -F purpose=user_data -F "file=@$file" "http://127.0.0.1:$MOCK_PORT/v1/files")
                t1=$(date +%s.%N)
                [ "$code" = 200 ] && direct+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')")

                rss0=$(ub_kib "$BROKER_PID" VmRSS)
                echo 5 >"/proc/$BROKER_PID/clear_refs" 2>/dev/null
                c0=$(ub_ticks "$BROKER_PID")
                t0=$(date +%s.%N)
                code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Expect:' --unix-socket "$API_SOCK" \
                        -F purpose=user_data -F "file=@$file" http://localhost/v1/files)
                t1=$(date +%s.%N)
                c1=$(ub_ticks "$BROKER_PID")
                if [ "$code" = 200 ]; then
                        broker+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')")
                        grew+=("$(( $(ub_kib "$BROKER_PID" VmHWM) - rss0 ))")
                        cpu+=("$(awk -v a="$c0" -v b="$c1" -v hz="$hz" 'BEGIN { print (b - a) / hz }')")
                else
                        log "upload bench: the broker answered $code"
                fi
        done
        rm -f "$file"
        {
                printf '\n## uploads: a %s MB file through keybrokerd\n\n' "$UB_MB"
                echo "| path | s per upload | MB/s | keybrokerd CPU s | keybrokerd peak RSS above its RSS before |"
                echo "| --- | ---: | ---: | ---: | ---: |"
                t=$(printf '%s\n' "${direct[@]}" | ub_median)
                [ -n "$t" ] && printf '| direct to kb-mock | %.2f | %.0f | | |\n' "$t" "$(awk -v m="$UB_MB" -v t="$t" 'BEGIN { print m / t }')"
                t=$(printf '%s\n' "${broker[@]}" | ub_median)
                [ -n "$t" ] && printf '| through keybrokerd | %.2f | %.0f | %.2f | %s KiB (target < 2048) |\n' "$t" \
                        "$(awk -v m="$UB_MB" -v t="$t" 'BEGIN { print m / t }')" "$(printf '%s\n' "${cpu[@]}" | ub_median)" \
                        "$(printf '%s\n' "${grew[@]}" | ub_median)"
        } | ub_say
}
ub_main
