# Start-up after a heavy journal: how long keybrokerd takes to answer again
# after a crash, whatever the traffic before it. Sourced by tests/bench/run.sh
# (not run on its own): it uses run.sh's temp dir, kb-mock, config and
# helpers (log, stop_pid, run_load, fmt_int).
#
# A team with limits (so every call is counted and snapshotted), JSON calls
# at 16 connections until BENCH_STARTUP_N requests went through (and into the
# journal), then kill -9 while the load still runs, and a restart timed from
# exec until GET /v1/models answers. Recovery reads the quota snapshot and
# replays the journal from the snapshot's own journal position; the same
# crash is then restarted from a copy of that snapshot without its position,
# which replays from ten minutes before it, as keybrokerd did before.
#
# Env: BENCH_STARTUP=0 skips it; BENCH_STARTUP_N=N (default 1,000,000;
# 200,000 with BENCH_QUICK=1).

SU_N=${BENCH_STARTUP_N:-1000000}
[ "${BENCH_QUICK:-0}" = 1 ] && SU_N=${BENCH_STARTUP_N:-200000}
SU_CONF=$TMP/keybroker-startup.conf
SU_LOG=$TMP/keybrokerd-startup.log
SU_MS=
SU_NOCURSOR_MS=
SU_RECOVERED=
SU_NOCURSOR_RECOVERED=
SU_SENT=

su_say() { tee -a "$TMP/results.md"; }

# su_start: keybrokerd on SU_CONF; SU_T = ms from exec until it answers.
su_start() {
        local t0
        stop_pid "$BROKER_PID"
        BROKER_PID=
        SU_T=
        t0=$(date +%s%N)
        "$KEYBROKERD" --config "$SU_CONF" >>"$SU_LOG" 2>&1 &
        BROKER_PID=$!
        for _ in $(seq 3000); do
                kill -0 "$BROKER_PID" 2>/dev/null || return 1
                if [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 --unix-socket "$API_SOCK" \
                        http://localhost/v1/models)" = 200 ]; then
                        SU_T=$((($(date +%s%N) - t0) / 1000000))
                        return 0
                fi
                sleep 0.01
        done
        return 1
}

su_requests() {
        curl -s --max-time 5 --unix-socket "$TMP/admin.sock" http://localhost/metrics |
                awk '/^keybroker_requests_total[{ ]/ { n += $NF } END { printf "%d\n", n }'
}

# The last "quota counters recovered" line of the log, shortened.
su_recovered() {
        grep 'quota counters recovered' "$SU_LOG" | tail -n 1 | sed 's/^<[0-9]>//; s/^quota counters recovered: //'
}

su_main() {
        local load_pid n
        printf '\n## start-up after a crash with a heavy journal\n\n' | su_say
        if [ "${BENCH_STARTUP:-1}" = 0 ]; then
                echo "skipped (BENCH_STARTUP=0)" | su_say
                return 0
        fi
        sed -e '/^\[team:bench\]/a requests_per_minute = 1000000000\ntokens_per_minute = 1000000000000\nbudget_usd_per_month = 1000000' \
                -e '/^\[route:mock\]/a price = mock-model input=1 output=2' \
                "$TMP/keybroker.conf" >"$SU_CONF"
        rm -f "$TMP/state/quota.json"
        if ! su_start; then
                echo "keybrokerd did not start (see $SU_LOG)" | su_say
                return 0
        fi
        log "start-up: $SU_N JSON calls at 16 connections into the journal, then kill -9"
        "$KB_BENCH" --connections 16 --json --timeout 30 --url "$BROKER_URL" --unix-socket "$API_SOCK" \
                --body "$(body_json bench)" --requests $((SU_N * 2)) >"$TMP/startup-load.json" 2>"$TMP/startup-load.err" &
        load_pid=$!
        n=0
        for _ in $(seq $((SU_N / 500 + 600))); do
                sleep 1
                n=$(su_requests)
                [ "${n:-0}" -ge "$SU_N" ] && break
                kill -0 "$load_pid" 2>/dev/null || break
        done
        kill -KILL "$BROKER_PID" 2>/dev/null
        wait "$BROKER_PID" 2>/dev/null
        BROKER_PID=
        stop_pid "$load_pid"
        SU_SENT=$n
        cp "$TMP/state/quota.json" "$TMP/quota-crash.json" 2>/dev/null
        sleep 1

        su_start && SU_MS=$SU_T
        SU_RECOVERED=$(su_recovered)
        log "start-up: answered after ${SU_MS:-?} ms: $SU_RECOVERED"

        # The same crash, without the snapshot's journal position.
        kill -KILL "$BROKER_PID" 2>/dev/null
        wait "$BROKER_PID" 2>/dev/null
        BROKER_PID=
        if [ -s "$TMP/quota-crash.json" ]; then
                sed 's/ journal=[^"]*//' "$TMP/quota-crash.json" >"$TMP/state/quota.json"
                su_start && SU_NOCURSOR_MS=$SU_T
                SU_NOCURSOR_RECOVERED=$(su_recovered)
                log "start-up without the journal position: ${SU_NOCURSOR_MS:-?} ms: $SU_NOCURSOR_RECOVERED"
        fi
        stop_pid "$BROKER_PID"
        BROKER_PID=

        {
                echo "$(fmt_int "$SU_SENT") calls counted by a team with limits (16 connections, JSON), then"
                echo "\`kill -9\` with the load running; time from exec until \`GET /v1/models\` answers."
                echo
                echo "| recovery | start-up ms | what it read |"
                echo "| --- | ---: | --- |"
                echo "| from the snapshot's journal position | ${SU_MS:-–} | ${SU_RECOVERED:-–} |"
                echo "| same crash, snapshot without a position (as before) | ${SU_NOCURSOR_MS:-–} | ${SU_NOCURSOR_RECOVERED:-–} |"
                echo
                echo "Target: at most 1,000 ms whatever the traffic before it."
        } | su_say
        restart_broker
}

su_main
