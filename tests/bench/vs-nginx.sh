# keybrokerd side by side with nginx as a key-injecting reverse proxy.
# Sourced by tests/bench/run.sh after its own tables (not run on its own): it
# uses run.sh's temp dir, kb-mock (started with --require-key), keybrokerd
# config and helpers (log, die, stop_pid, run_load, jget, run_valid,
# body_json, body_sse, fmt_int). See tests/bench/README.md.
#
# Env: BENCH_NGINX=0 skips it, BENCH_ROUNDS=N (default 3) alternated rounds
# per scenario, NGINX=PATH the nginx binary.

NGINX_SOCK=$TMP/nginx.sock
VSN_ROUNDS=${BENCH_ROUNDS:-3}
case $VSN_ROUNDS in "" | *[!0-9]* | 0) VSN_ROUNDS=3 ;; esac
VSN_SCENARIOS=(json-1 json-16 sse-16)
CLK_TCK=$(getconf CLK_TCK)

vsn_say() { tee -a "$TMP/results.md"; }

vsn_skip() {
        log "nginx comparison skipped: $*"
        printf '\n## keybrokerd vs nginx\n\nskipped: %s\n' "$*" | vsn_say
}

# proc_ticks PID...: utime + stime of those processes, all threads included,
# in clock ticks. The comm field may hold spaces: cut up to its ')'.
proc_ticks() {
        local pid t sum=0
        for pid in "$@"; do
                t=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{ print $12 + $13 }')
                sum=$((sum + ${t:-0}))
        done
        echo "$sum"
}

# proc_mem FIELD PID...: sum of one /proc field in KiB (VmRSS from status,
# Pss from smaps_rollup).
proc_mem() {
        local field=$1 pid v sum=0 file
        shift
        for pid in "$@"; do
                file=/proc/$pid/status
                [ "$field" = Pss ] && file=/proc/$pid/smaps_rollup
                v=$(awk -v f="$field:" '$1 == f { print $2; exit }' "$file" 2>/dev/null)
                sum=$((sum + ${v:-0}))
        done
        echo "$sum"
}

nginx_pids() { echo "$NGINX_PID" $(pgrep -P "$NGINX_PID"); }

# journald may be restarted under us (a test suite on the same host); look
# it up for every run.
journald_pid() { pgrep -o -x systemd-journal; }

# Waits until journald has used no CPU for 0.3 s (at most 5 s): it parses
# the last records after the load ended, and that belongs to the run.
journald_settle() {
        local prev now jd
        jd=$(journald_pid)
        [ -n "$jd" ] || return 0
        prev=$(proc_ticks "$jd")
        for _ in $(seq 17); do
                sleep 0.3
                now=$(proc_ticks "$jd")
                [ "$now" = "$prev" ] && return 0
                prev=$now
        done
}

# vsn_run NAME TARGET(nginx|broker) KIND CONNS: one load run plus the
# server's and journald's CPU over it and the server's memory after it.
vsn_run() {
        local name=$1 target=$2 kind=$3 conns=$4 pids s0 s1 j0 j1 jd0 jd1 jt=null
        if [ "$target" = nginx ]; then
                pids=$(nginx_pids)
        else
                pids=$BROKER_PID
        fi
        journald_settle
        jd0=$(journald_pid)
        j0=$(proc_ticks $jd0)
        s0=$(proc_ticks $pids)
        run_load "$name" "$target" "$kind" "$conns" "$DURATION" || log "run $name failed (exit $?)"
        s1=$(proc_ticks $pids)
        journald_settle
        jd1=$(journald_pid)
        j1=$(proc_ticks $jd1)
        # A journald that restarted during the run has no figure for it.
        if [ -n "$jd0" ] && [ "$jd0" = "$jd1" ]; then
                jt=$((j1 - j0))
        else
                log "journald restarted during $name (pid ${jd0:-none} → ${jd1:-none}): no journald figure"
        fi
        printf '{"server_ticks":%d,"journald_ticks":%s,"rss_kib":%d,"pss_kib":%d,"procs":%d}\n' \
                $((s1 - s0)) "$jt" "$(proc_mem VmRSS $pids)" "$(proc_mem Pss $pids)" \
                "$(wc -w <<<"$pids")" >"$TMP/$name.extra.json"
}

# vsn_value NAME KEY: one figure of a valid run ("" otherwise); cpu_us and
# journald_us are per successful request.
vsn_value() {
        local name=$1 key=$2 ok
        run_valid "$name" || return 0
        ok=$(jget "$name" ok)
        case $key in
        cpu_us) awk -v t="$(jget "$name.extra" server_ticks)" -v n="$ok" -v hz="$CLK_TCK" \
                        'BEGIN { printf "%.1f", t * 1e6 / hz / n }' ;;
        journald_us) awk -v t="$(jget "$name.extra" journald_ticks)" -v n="$ok" -v hz="$CLK_TCK" \
                        'BEGIN { if (t != "") printf "%.1f", t * 1e6 / hz / n }' ;;
        rss_kib | pss_kib) jget "$name.extra" "$key" ;;
        *) jget "$name" "$key" ;;
        esac
}

median() {
        sort -g | awk 'NF { v[++n] = $1 }
                END { if (n == 0) print ""; else if (n % 2) print v[(n + 1) / 2];
                      else print (v[n / 2] + v[n / 2 + 1]) / 2 }'
}

# vsn_median SCENARIO TARGET KEY: the median over the rounds' valid runs.
vsn_median() {
        local r
        for r in $(seq "$VSN_ROUNDS"); do
                vsn_value "vsn-$2-$1-$r" "$3"
                echo
        done | median
}

# ratio A B: A/B to two decimals, "–" when either is missing.
ratio() {
        awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b == 0) print "–"; else printf "%.2f", a / b }'
}

# cell N K: "nginx / keybrokerd (ratio keybrokerd/nginx)".
cell() {
        local n=${1:-–} k=${2:-–}
        echo "$n / $k ($(ratio "$2" "$1"))"
}

scenario_title() {
        case $1 in
        json-1) echo "JSON chat, 1 conn" ;;
        json-16) echo "JSON chat, 16 conns" ;;
        sse-16) echo "SSE chat ($SSE_EVENTS events), 16 conns" ;;
        esac
}

# curl through nginx; prints the status.
nginx_curl() {
        curl -s -o "$TMP/nginx-check.out" -w '%{http_code}' --max-time 10 --unix-socket "$NGINX_SOCK" "$@"
}

start_nginx() {
        local user=nobody
        id www-data >/dev/null 2>&1 && user=www-data
        mkdir -p "$TMP/nginx-tmp"
        sed -e "s|@TMP@|$TMP|g" -e "s|@USER@|$user|g" -e "s|@MOCK_PORT@|$MOCK_PORT|g" \
            -e "s|@KEY@|$KEY_SECRET|g" "$HERE/nginx.conf.in" >"$TMP/nginx.conf"
        "$NGINX" -t -q -p "$TMP" -c "$TMP/nginx.conf" -e "$TMP/nginx-error.log" >"$TMP/nginx-t.log" 2>&1 ||
                die "nginx -t rejected $TMP/nginx.conf: $(cat "$TMP/nginx-t.log")"
        "$NGINX" -p "$TMP" -c "$TMP/nginx.conf" -e "$TMP/nginx-error.log" >"$TMP/nginx.out" 2>&1 &
        NGINX_PID=$!
        for _ in $(seq 100); do
                kill -0 "$NGINX_PID" 2>/dev/null || die "nginx exited: $(tail -n 5 "$TMP/nginx-error.log" "$TMP/nginx.out")"
                [ -S "$NGINX_SOCK" ] && [ "$(nginx_curl http://localhost/v1/models)" = 200 ] && return 0
                sleep 0.1
        done
        die "nginx did not answer GET /v1/models on $NGINX_SOCK"
}

# The mock runs with --require-key: it must refuse a request without the
# key, and take the same request through nginx, which adds the key (and
# replaces whatever Authorization the client sent, as keybrokerd does).
check_nginx_key() {
        local code body
        body=$(body_json mock-model)
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 -H 'content-type: application/json' \
                -d "$body" "$DIRECT_URL")
        [ "$code" = 401 ] || die "kb-mock answered $code to a request without a key; it should require $KEY_SECRET"
        code=$(nginx_curl -H 'content-type: application/json' -d "$body" "$BROKER_URL")
        [ "$code" = 200 ] || die "nginx answered $code, not 200: it does not inject the key ($(head -c 300 "$TMP/nginx-check.out"))"
        code=$(nginx_curl -H 'content-type: application/json' -H 'Authorization: Bearer sk-test-fixture-wrong' \
                -d "$body" "$BROKER_URL")
        [ "$code" = 200 ] || die "nginx answered $code with a client key: it does not replace Authorization"
        [ "$(wc -l <"$TMP/access.log")" -ge 3 ] || die "nginx wrote no access log lines to $TMP/access.log"
        log "nginx: injects the key (kb-mock --require-key: 401 direct without it, 200 through nginx)"
}

# One stream with 300 ms between events: the lines must arrive spread out
# over time (proxy_buffering off), not all at the end.
check_nginx_sse() {
        local out=$TMP/nginx-sse-check.txt bursts
        curl -sN --max-time 20 --unix-socket "$NGINX_SOCK" -H 'content-type: application/json' \
                -H 'x-mock-event-delay-ms: 300' -H 'x-mock-output-tokens: 3' \
                -d "$(body_sse mock-model)" "$BROKER_URL" |
                perl -MTime::HiRes=time -e '$t0 = time; while (<STDIN>) { printf "%.3f %s", time - $t0, $_ if /^data:/ }' >"$out"
        bursts=$(awk 'NR > 1 && $1 - prev >= 0.15 { n++ } { prev = $1 } END { print n + 0 }' "$out")
        sed 's/^/  /; s/^\(.\{100\}\).*/\1…/' "$out" >&2
        tail -n 1 "$out" | grep -q 'data: \[DONE\]' || die "the SSE stream through nginx did not end with data: [DONE]"
        [ "$bursts" -ge 4 ] || die "SSE through nginx arrived in $((bursts + 1)) bursts, not event by event (see above)"
        log "nginx: SSE arrives event by event ($((bursts + 1)) bursts ≥ 150 ms apart)"
}

vsn_report() {
        local s n k nv kv rounds_n rounds_k r jk jn ck cn
        echo
        echo "## keybrokerd vs nginx (key-injecting reverse proxy, same kb-mock)"
        echo
        echo "$(date -u +%Y-%m-%dT%H:%MZ), $("$NGINX" -v 2>&1 | sed 's/.*version: //') with" \
             "$(($(wc -w <<<"$(nginx_pids)") - 1)) workers, $(nproc) CPUs shared by kb-bench, kb-mock," \
             "the server and journald; per scenario $VSN_ROUNDS round(s) of ${DURATION} s each, alternating" \
             "nginx, keybrokerd; medians over the rounds. Cells are nginx / keybrokerd (keybrokerd/nginx)."
        echo "CPU = utime+stime of the server's processes over the load window (nginx: master + workers;" \
             "keybrokerd: its process, all threads) per successful request; RSS = sum of VmRSS after the run."
        echo
        echo "| scenario | nginx req/s | keybrokerd req/s | ratio | p50 µs | p99 µs | CPU µs/req | RSS KiB |"
        echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        for s in "${VSN_SCENARIOS[@]}"; do
                n=$(vsn_median "$s" nginx rps)
                k=$(vsn_median "$s" broker rps)
                echo "| $(scenario_title "$s") | $(fmt_int "$n") | $(fmt_int "$k") | $(ratio "$k" "$n") |" \
                     "$(cell "$(vsn_median "$s" nginx p50_us)" "$(vsn_median "$s" broker p50_us)") |" \
                     "$(cell "$(vsn_median "$s" nginx p99_us)" "$(vsn_median "$s" broker p99_us)") |" \
                     "$(cell "$(vsn_median "$s" nginx cpu_us)" "$(vsn_median "$s" broker cpu_us)") |" \
                     "$(cell "$(vsn_median "$s" nginx rss_kib)" "$(vsn_median "$s" broker rss_kib)") |"
        done
        echo
        for s in "${VSN_SCENARIOS[@]}"; do
                rounds_n= rounds_k=
                for r in $(seq "$VSN_ROUNDS"); do
                        nv=$(vsn_value "vsn-nginx-$s-$r" rps)
                        kv=$(vsn_value "vsn-broker-$s-$r" rps)
                        rounds_n="$rounds_n $(fmt_int "$nv")"
                        rounds_k="$rounds_k $(fmt_int "$kv")"
                done
                echo "$(scenario_title "$s"): keybrokerd/nginx req/s = $(ratio "$(vsn_median "$s" broker rps)" \
                        "$(vsn_median "$s" nginx rps)") (rounds: nginx$rounds_n; keybrokerd$rounds_k)"
                echo
        done
        echo "PSS (shared pages split between processes, so nginx's master and workers do not count" \
             "libc three times), KiB nginx / keybrokerd:"
        for s in "${VSN_SCENARIOS[@]}"; do
                echo "$(scenario_title "$s") $(cell "$(vsn_median "$s" nginx pss_kib)" "$(vsn_median "$s" broker pss_kib)");"
        done | paste -sd ' ' -
        echo
        echo "### journald, not in the ratios above"
        echo
        echo "keybrokerd sends one journal record per request, which systemd-journald parses and stores;" \
             "nginx writes its access log line itself (its CPU above includes that). journald's CPU per" \
             "request (utime+stime from the run's start until journald is idle again):"
        echo
        echo "| scenario | journald µs/req, keybrokerd runs | journald µs/req, nginx runs | keybrokerd + journald µs/req | nginx µs/req |"
        echo "| --- | ---: | ---: | ---: | ---: |"
        for s in "${VSN_SCENARIOS[@]}"; do
                jk=$(vsn_median "$s" broker journald_us)
                jn=$(vsn_median "$s" nginx journald_us)
                ck=$(vsn_median "$s" broker cpu_us)
                cn=$(vsn_median "$s" nginx cpu_us)
                echo "| $(scenario_title "$s") | ${jk:-–} | ${jn:-–} |" \
                     "$(awk -v a="$ck" -v b="$jk" 'BEGIN { if (a == "" || b == "") print "–"; else printf "%.1f", a + b }') |" \
                     "${cn:-–} |"
        done
        echo
        echo "Runs during which journald was restarted (by something else on the host) have no journald" \
             "figure; \"–\" means none of a scenario's runs has one."
}

# --- main ------------------------------------------------------------------

vs_nginx() {
        local s r target conns kind
        if [ "${BENCH_NGINX:-1}" = 0 ]; then
                vsn_skip "BENCH_NGINX=0"
                return 0
        fi
        NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
        if [ ! -x "$NGINX" ]; then
                vsn_skip "nginx not installed"
                return 0
        fi
        [ -n "$(journald_pid)" ] || log "warning: no systemd-journald process: journald CPU is not measured"

        log "nginx comparison: $VSN_ROUNDS rounds × ${#VSN_SCENARIOS[@]} scenarios × 2 servers × ${DURATION}s"
        start_nginx
        check_nginx_key
        check_nginx_sse
        # keybrokerd exactly as run.sh first started it (journal on), fresh,
        # so neither server carries memory from earlier runs into the RSS.
        restart_broker
        run_load vsn-warm-nginx nginx json 4 -500 || die "kb-bench could not load nginx"
        run_valid vsn-warm-nginx || die "nginx answers with errors (first status $(jget vsn-warm-nginx first_bad_status))"
        run_load vsn-warm-nginx-sse nginx sse 4 -100 || die "kb-bench could not stream through nginx"
        run_valid vsn-warm-nginx-sse || die "SSE through nginx fails (first status $(jget vsn-warm-nginx-sse first_bad_status))"
        run_load vsn-warm-broker broker json 4 -500 || die "kb-bench could not load the broker"

        for s in "${VSN_SCENARIOS[@]}"; do
                IFS=- read -r kind conns <<<"$s"
                for r in $(seq "$VSN_ROUNDS"); do
                        for target in nginx broker; do
                                log "run vsn-$target-$s round $r"
                                vsn_run "vsn-$target-$s-$r" "$target" "$kind" "$conns"
                        done
                done
        done
        kill -0 "$NGINX_PID" 2>/dev/null || log "warning: nginx died during the bench"
        kill -0 "$BROKER_PID" 2>/dev/null || log "warning: keybrokerd died during the bench"
        vsn_report | vsn_say
}

vs_nginx
