#!/bin/bash
# `keybrokerctl usage` over 1,000,000 per-request records (called at the end
# of tests/bench/run.sh; runs alone too). The records are synthetic but
# complete (tests/bench/kb-journal-gen.pl: every field keybrokerd writes plus
# journald's trusted ones), written by systemd-journal-remote into a private
# journal directory, so neither the system journal nor journald's rate
# limits are involved. Then times `keybrokerctl usage --directory DIR` (page
# cache warm: the files were just written) and checks its TOTAL against the
# generator's. Target: under 10 s. Prints a markdown table; exits 0 whatever
# the figure, 1 only when it could not run.
#
# Env: USAGE_BENCH_RECORDS=N (default 1000000; 100000 with BENCH_QUICK=1),
#      BENCH_KEEP=1 (keep the journal directory), BUILD=DIR.
set -u
set -o pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BUILD=${BUILD:-$ROOT/build}
case $BUILD in /*) ;; *) BUILD=$ROOT/$BUILD ;; esac
CTL=$BUILD/keybrokerctl
N=${USAGE_BENCH_RECORDS:-1000000}
[ "${BENCH_QUICK:-0}" = 1 ] && N=${USAGE_BENCH_RECORDS:-100000}
TARGET_S=10

log() { echo "usage-bench: $*" >&2; }

[ -x "$CTL" ] || { log "cannot run: $CTL is missing (make all)"; exit 1; }
JR=
for p in /lib/systemd/systemd-journal-remote /usr/lib/systemd/systemd-journal-remote; do
        [ -x "$p" ] && JR=$p && break
done
if [ -z "$JR" ]; then
        log "skipped: systemd-journal-remote is not installed (make deps installs it)"
        exit 0
fi

# Under /var/tmp: about 1.3 KiB of journal per record, too much for a small /tmp tmpfs.
TMP=$(mktemp -d /var/tmp/kb-usage-bench.XXXXXX) || { log "mktemp failed"; exit 1; }
cleanup() {
        if [ "${BENCH_KEEP:-0}" = 1 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
mkdir -p "$TMP/journal"

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

log "generating $N records into $TMP/journal (systemd-journal-remote; takes a while)"
t0=$(now)
if ! perl "$HERE/kb-journal-gen.pl" "$N" 7 2>"$TMP/gen.err" |
        "$JR" --split-mode=none --output="$TMP/journal/bench.journal" - >"$TMP/remote.log" 2>&1; then
        log "cannot run: generating the journal failed"
        tail -n 5 "$TMP/gen.err" "$TMP/remote.log" >&2
        exit 1
fi
t1=$(now)
read -r _ gen_n _ gen_cost <"$TMP/gen.err"
size=$(du -sh "$TMP/journal" | cut -f1)
log "generated in $(secs "$t0" "$t1") s, $size in $(ls "$TMP/journal" | wc -l) files"

run() { # NAME ARGS...: time one report; sets ELAPSED, checks the TOTAL
        local name=$1 t_start t_end
        shift
        t_start=$(now)
        "$CTL" usage --directory "$TMP/journal" "$@" --json >"$TMP/$name.json" 2>"$TMP/$name.err"
        local rc=$?
        t_end=$(now)
        ELAPSED=$(secs "$t_start" "$t_end")
        CHECK=$(perl -MJSON::PP -e '
                local $/; my $j = eval { decode_json(<STDIN>) } or do { print "unreadable output"; exit };
                my $t = $j->{total};
                print $t->{requests} == $ARGV[0] && $t->{cost_microusd} == $ARGV[1] ? "ok"
                    : "TOTAL $t->{requests} requests, $t->{cost_microusd} µUSD; expected $ARGV[0], $ARGV[1]";
                print ", ", scalar(@{$j->{groups}}), " groups";' "$gen_n" "$gen_cost" <"$TMP/$name.json")
        [ "$rc" = 0 ] || CHECK="exit $rc: $(head -c 200 "$TMP/$name.err")"
}

ROWS=()
for spec in "team:--by team" "day,team,model:--by day,team,model" "key,unit:--by key,unit"; do
        name=${spec%%:*}
        # shellcheck disable=SC2086 # the options are meant to split
        run "${name//,/-}" ${spec#*:}
        ok="✗"
        awk -v e="$ELAPSED" -v t="$TARGET_S" 'BEGIN { exit !(e < t) }' && [[ $CHECK == ok* ]] && ok="✓"
        ROWS+=("| keybrokerctl usage --by $name, $N records | < $TARGET_S s | $ELAPSED s ($CHECK) | $ok |")
done

echo
echo "## keybrokerctl usage"
echo
echo "$N synthetic per-request records over 7 days in a private journal directory ($size), page cache warm, $(nproc) CPUs."
echo
echo "| metric | target | measured | result |"
echo "| --- | --- | --- | --- |"
printf '%s\n' "${ROWS[@]}"
exit 0
