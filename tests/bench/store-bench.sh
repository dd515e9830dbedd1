# The quota store's cost: keybrokerd with a team that has limits, counted on
# this host only ("local") against the same team counted in a Redis quota
# store ("redis": one admission round trip, the settle sent after the
# answer). Sourced by tests/bench/run.sh after its own tables (not run on its
# own): it uses run.sh's temp dir, kb-mock, keybrokerd config and helpers
# (log, stop_pid, run_load, jget, run_valid, fmt_int). Reported per mode and
# connection count: req/s, p50, p99 and keybrokerd CPU per request (median
# of alternated rounds), the store's own round trip as keybrokerd measured
# it, and the target: added p50 ≤ one round trip + 50 µs.
#
# Env: BENCH_STORE=0 skips it; BENCH_ROUNDS=N (default 3) rounds per mode.

SB_ROUNDS=${BENCH_ROUNDS:-3}
case $SB_ROUNDS in "" | *[!0-9]* | 0) SB_ROUNDS=3 ;; esac
SB_HZ=$(getconf CLK_TCK)

sb_say() { tee -a "$TMP/results.md"; }

sb_ticks() {
        sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{ print $12 + $13 }'
}

# sb_start CONF: a fresh keybrokerd on CONF, answering (BROKER_PID).
sb_start() {
        stop_pid "$BROKER_PID"
        BROKER_PID=
        "$KEYBROKERD" --config "$1" >>"$TMP/keybrokerd.log" 2>&1 &
        BROKER_PID=$!
        for _ in $(seq 100); do
                kill -0 "$BROKER_PID" 2>/dev/null || return 1
                [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 --unix-socket "$API_SOCK" \
                        http://localhost/v1/models)" = 200 ] && return 0
                sleep 0.1
        done
        return 1
}

sb_median() { sort -n | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)] }'; }

sb_main() {
        local redis=/usr/bin/redis-server sock=$TMP/redis.sock rpid mode conns round name t0 t1 ok
        if [ "${BENCH_STORE:-1}" = 0 ]; then
                printf '\n## quota store: local counters vs Redis\n\nskipped (BENCH_STORE=0)\n' | sb_say
                return 0
        fi
        if [ ! -x "$redis" ]; then
                printf '\n## quota store: local counters vs Redis\n\nskipped: redis-server is not installed (make deps)\n' | sb_say
                return 0
        fi
        "$redis" --port 0 --unixsocket "$sock" --unixsocketperm 700 --save '' --appendonly no \
                --dir "$TMP" --daemonize no --logfile "$TMP/redis.log" &
        rpid=$!
        for _ in $(seq 50); do
                [ -S "$sock" ] && break
                sleep 0.1
        done
        # Limits far above what the bench sends: every call is admitted, and
        # every call is counted (a team without limits never asks the store).
        sed -e '/^\[team:bench\]/a requests_per_minute = 1000000000\ntokens_per_minute = 1000000000000\nbudget_usd_per_month = 1000000' \
                -e '/^\[route:mock\]/a price = mock-model input=1 output=2' \
                "$TMP/keybroker.conf" >"$TMP/keybroker-store-local.conf"
        sed "/^\\[agent\\]/a quota_store = unix:$sock" "$TMP/keybroker-store-local.conf" >"$TMP/keybroker-store-redis.conf"

        declare -A SB
        for round in $(seq "$SB_ROUNDS"); do
                for mode in local redis; do
                        if ! sb_start "$TMP/keybroker-store-$mode.conf"; then
                                log "store bench: keybrokerd ($mode) did not start"
                                continue
                        fi
                        if [ "$mode" = redis ]; then
                                # connected and the epoch learned: admissions go to the store
                                for _ in $(seq 50); do
                                        curl -s --unix-socket "$TMP/admin.sock" http://localhost/status |
                                                grep -q '"epoch"' && break
                                        sleep 0.1
                                done
                        fi
                        run_load "warm-store-$mode-$round" broker json 4 -500 >/dev/null 2>&1
                        for conns in 1 16; do
                                name=store-$mode-$conns-$round
                                log "run $name"
                                t0=$(sb_ticks "$BROKER_PID")
                                run_load "$name" broker json "$conns" "$DURATION" || log "run $name failed"
                                t1=$(sb_ticks "$BROKER_PID")
                                run_valid "$name" || continue
                                ok=$(jget "$name" ok)
                                SB[$mode-$conns-rps]+="$(jget "$name" rps) "
                                SB[$mode-$conns-p50]+="$(jget "$name" p50_us) "
                                SB[$mode-$conns-p99]+="$(jget "$name" p99_us) "
                                SB[$mode-$conns-cpu]+="$(awk -v t=$((t1 - t0)) -v n="$ok" -v hz="$SB_HZ" \
                                        'BEGIN { printf "%.1f", t * 1e6 / hz / n }') "
                                # the round trip of the 1-connection run's last replies
                                [ "$mode" = redis ] && [ "$conns" = 1 ] &&
                                        SB[rtt]+="$(curl -s --unix-socket "$TMP/admin.sock" http://localhost/status |
                                                perl -MJSON::PP -e 'local $/; my $j = decode_json(<STDIN>);
                                                        printf "%.0f", 1000 * ($j->{quota_store}{rtt_p50_ms} // 0)') "
                        done
                done
        done
        stop_pid "$BROKER_PID"
        BROKER_PID=
        kill "$rpid" 2>/dev/null
        wait "$rpid" 2>/dev/null

        med() { tr ' ' '\n' <<<"${SB[$1]}" | grep . | sb_median; }
        local rtt
        rtt=$(med rtt)
        {
                echo
                echo "## quota store: local counters vs Redis"
                echo
                echo "A team with limits (never reached), JSON through the broker; Redis on a Unix socket on the"
                echo "same host. Median of $SB_ROUNDS alternated rounds of ${DURATION} s. The store's round trip"
                echo "as keybrokerd measured it at 1 connection (p50 of its last replies): ${rtt:-–} µs."
                echo
                echo "| counted | conns | req/s | p50 µs | p99 µs | keybrokerd CPU µs/req |"
                echo "| --- | ---: | ---: | ---: | ---: | ---: |"
                for conns in 1 16; do
                        for mode in local redis; do
                                echo "| $mode | $conns | $(fmt_int "$(med "$mode-$conns-rps")") | $(med "$mode-$conns-p50") |" \
                                     "$(med "$mode-$conns-p99") | $(med "$mode-$conns-cpu") |"
                        done
                done
                local l r add ok
                l=$(med local-1-p50)
                r=$(med redis-1-p50)
                if [ -n "$l" ] && [ -n "$r" ] && [ -n "$rtt" ]; then
                        add=$((r - l))
                        ok=miss
                        [ "$add" -le $((rtt + 50)) ] && ok=pass
                        echo
                        echo "Added p50 at 1 connection: $add µs; target ≤ one round trip + 50 µs = $((rtt + 50)) µs: $ok."
                fi
        } | sb_say
}

sb_main
