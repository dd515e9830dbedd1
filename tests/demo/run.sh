#!/usr/bin/env bash
# make run: a working broker on ./run/api.sock, offline, on the bundled demo
# config whose routes point at the mock provider (no real keys needed).
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
run="${KB_DEMO_DIR:-$top/run}"     # KB_DEMO_DIR: tests/integration/86-demo.t's own
mkdir -p "$run/credentials" "$run/state"
chmod 0755 "$run"
# Demo keys: obviously fake; the mock accepts exactly these.
printf 'demo-openai-key-not-a-secret\n' >"$run/credentials/demo-openai"
printf 'demo-anthropic-key-not-a-secret\n' >"$run/credentials/demo-anthropic"
chmod 0600 "$run/credentials"/*

if [ ! -S /run/systemd/journal/socket ]; then
        echo "make run: starting systemd-journald (none was running)"
        mkdir -p /run/systemd/journal
        /lib/systemd/systemd-journald >/dev/null 2>&1 &
        for _ in $(seq 50); do [ -S /run/systemd/journal/socket ] && break; sleep 0.1; done
fi

rm -f "$run/mock.port"
# The mock lists (and serves) exactly the demo's upstream models, so
# `keybrokerctl route check` finds them listed and a bogus one refused; it
# takes 20 ms per answer, as a real provider takes at least that, so the
# check's 1 ms timeout probe times out.
"$top/build/kb-mock" --port 0 --port-file "$run/mock.port" --min-latency-ms 20 \
        --require-key demo-openai-key-not-a-secret --require-key demo-anthropic-key-not-a-secret \
        --models mock-gpt,mock-claude,mock-embed \
        >"$run/mock.log" 2>&1 &
mock=$!
trap 'kill $mock 2>/dev/null || true' EXIT
for _ in $(seq 50); do [ -s "$run/mock.port" ] && break; sleep 0.1; done
port=$(cat "$run/mock.port")

sed -e "s|@RUN@|$run|g" -e "s|@PORT@|$port|g" -e "s|@UID@|$(id -u)|g" \
        "$top/etc/demo.conf.in" >"$run/keybroker.conf"
# make run STORE=redis: a redis-server of the demo's own, on a Unix socket in
# run/redis, as the quota store (keybrokerctl status shows it).
if [ "${KB_DEMO_STORE:-}" = redis ]; then
        command -v redis-server >/dev/null || { echo "make run: STORE=redis needs redis-server (apt-get install redis-server)" >&2; exit 1; }
        mkdir -p "$run/redis"
        redis-server --port 0 --unixsocket "$run/redis/redis.sock" --unixsocketperm 700 --dir "$run/redis" \
                --save '' --appendonly no --daemonize no --logfile "$run/redis/redis.log" &
        redis=$!
        trap 'kill $mock $redis 2>/dev/null || true' EXIT
        sed -i "/^\[agent\]/a quota_store = unix:$run/redis/redis.sock" "$run/keybroker.conf"
        for _ in $(seq 50); do [ -S "$run/redis/redis.sock" ] && break; sleep 0.1; done
fi
# 86-demo.t's runs are tests: keybrokerctl usage leaves them out.
if [ -n "${KB_DEMO_TEST_TRAFFIC:-}" ]; then
        sed -i '/^\[agent\]/a test_traffic = yes' "$run/keybroker.conf"
fi

# journalctl -x explains records from the system's catalog, which only
# `make install-catalog` (or make install) adds to; a private copy here
# previews any entry without touching the system.
catroot="$run/catalog-root"
mkdir -p "$catroot/usr/lib/systemd/catalog"
cp "$top/systemd/keybroker.catalog" "$catroot/usr/lib/systemd/catalog/"
journalctl --root="$catroot" --update-catalog 2>/dev/null || true

ctl="$top/build/keybrokerctl"
cat <<MSG

keybrokerd demo: the routes point at the mock provider on 127.0.0.1:$port.
Try, from another terminal:

  curl --unix-socket $run/api.sock http://localhost/v1/chat/completions \\
       -H 'content-type: application/json' \\
       -d '{"model":"chat-default","messages":[{"role":"user","content":"hi"}]}'
  journalctl -o verbose MESSAGE_ID=65ab453e95ed4c0e99aea91870cea75c KEYBROKER_ENDPOINT=chat -n 1

  export KEYBROKER_ADMIN_SOCKET=$run/admin.sock KEYBROKER_SOCKET=$run/api.sock
  $ctl status
  $ctl team list
  $ctl route check mock-openai
  $ctl route check mock-anthropic
  $ctl whoami
  $ctl usage --since today

What a record means (journalctl -x needs 'make install-catalog' first):

  journalctl --root=$catroot --dump-catalog 65ab453e95ed4c0e99aea91870cea75c

Ctrl-C stops it.

MSG
"$top/build/keybrokerd" --config "$run/keybroker.conf"
