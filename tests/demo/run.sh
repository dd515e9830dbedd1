#!/usr/bin/env bash
# make run: a working broker on ./run/api.sock, offline, on the bundled demo
# config whose routes point at the mock provider (no real keys needed).
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
run="$top/run"
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
"$top/build/kb-mock" --port 0 --port-file "$run/mock.port" \
        --require-key demo-openai-key-not-a-secret --require-key demo-anthropic-key-not-a-secret \
        >"$run/mock.log" 2>&1 &
mock=$!
trap 'kill $mock 2>/dev/null || true' EXIT
for _ in $(seq 50); do [ -s "$run/mock.port" ] && break; sleep 0.1; done
port=$(cat "$run/mock.port")

sed -e "s|@RUN@|$run|g" -e "s|@PORT@|$port|g" -e "s|@UID@|$(id -u)|g" \
        "$top/etc/demo.conf.in" >"$run/keybroker.conf"

cat <<MSG

keybrokerd demo: the routes point at the mock provider on 127.0.0.1:$port.
Try, from another terminal:

  curl --unix-socket $run/api.sock http://localhost/v1/chat/completions \\
       -H 'content-type: application/json' \\
       -d '{"model":"chat-default","messages":[{"role":"user","content":"hi"}]}'

  curl --unix-socket $run/api.sock http://localhost/v1/keybroker/whoami
  journalctl -o verbose SYSLOG_IDENTIFIER=keybrokerd -n 1

Ctrl-C stops it.

MSG
"$top/build/keybrokerd" --config "$run/keybroker.conf"
