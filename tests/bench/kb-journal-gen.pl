#!/usr/bin/perl
# kb-journal-gen.pl N [DAYS] — N synthetic keybrokerd per-request records in
# the journal export format (https://systemd.io/JOURNAL_EXPORT_FORMATS/) on
# stdout, for systemd-journal-remote to write into a private journal file
# (tests/bench/usage-bench.sh). Each record carries every field keybrokerd
# writes (agent/journal.c) plus the trusted fields journald adds, with
# realistic spreads of teams, models, routes, keys, outcomes and latencies,
# evenly over the last DAYS days (default 7). Deterministic (fixed seed).
# On stderr at the end: "records N cost_microusd SUM", for a check.
use v5.36;
use Time::HiRes qw(time);

my $n = shift // 1_000_000;
my $days = shift // 7;
die "usage: $0 N [DAYS]\n" unless $n =~ /^\d+$/ && $days =~ /^\d+$/ && $days > 0;

srand(20261125);
my @teams = map { "team$_" } 1 .. 12;
my @models = (['gpt-mini', 'oai', 'gpt-4o-mini-2024-07-18', 'openai', 'chat'],
              ['gpt-big', 'oai', 'gpt-4o-2024-08-06', 'openai', 'chat'],
              ['emb', 'oai', 'text-embedding-3-small', 'openai', 'embeddings'],
              ['claude-haiku', 'anth', 'claude-3-5-haiku-20241022', 'anthropic', 'messages'],
              ['claude-sonnet', 'anth', 'claude-3-5-sonnet-20241022', 'anthropic', 'messages']);
my @outcomes = (('ok') x 90, qw(quota_rejected upstream_error upstream_error upstream_timeout model_not_found
                               stream_interrupted client_abort forbidden invalid_request upstream_error));
my $boot = '3c1d2e4f5a6b7c8d9e0f1a2b3c4d5e6f';
my $machine = '0123456789abcdef0123456789abcdef';
my $instance = 'b1e55ed0b1e55ed0b1e55ed0b1e55ed0';
my $now = int(time * 1e6);
my $start = $now - $days * 86400 * 1_000_000;
my $step = int(($now - $start) / ($n || 1)) || 1;
my $cost_sum = 0;

binmode(STDOUT);
my $buf = '';
for my $i (1 .. $n) {
        my $t = $start + $i * $step;
        my $team = $teams[int(rand(@teams) * rand())];  # skewed: a few teams do most
        my $m = $models[int(rand(@models))];
        my ($model, $route, $umodel, $family, $endpoint) = @$m;
        my $outcome = $outcomes[int(rand(@outcomes))];
        my $ok = $outcome eq 'ok';
        my $up = $ok ? 200 : $outcome eq 'upstream_error' ? (429, 500, 502, 503, 404)[int(rand(5))]
               : $outcome eq 'quota_rejected' || $outcome eq 'forbidden' || $outcome eq 'model_not_found' ? 0 : 200;
        my $status = $ok ? 200 : $outcome eq 'quota_rejected' ? 429 : $outcome eq 'upstream_timeout' ? 504
                   : $outcome eq 'forbidden' ? 403 : $outcome eq 'model_not_found' ? 404
                   : $outcome eq 'invalid_request' ? 400 : $up || 200;
        my $billed = $ok || $outcome eq 'stream_interrupted' || $outcome eq 'client_abort';
        my $in = $billed ? int(rand(4000)) + 10 : 0;
        my $out = $billed && $endpoint ne 'embeddings' ? int(rand(800)) : 0;
        my $cached = $billed && rand() < 0.3 ? int($in * rand()) : 0;
        my $cost = $billed ? $in * 2 + $out * 8 : 0;
        $cost_sum += $cost;
        # Log-normal-ish latencies: mostly 100 ms..3 s, a tail to 60 s.
        my $lat = $status == 429 && !$up ? int(rand(3)) : int(exp(4.5 + 2.2 * rand() + (rand() < 0.02 ? 3 : 0)));
        my $ttfb = int($lat * rand());
        my $stream = $endpoint eq 'chat' && rand() < 0.4 ? 1 : 0;
        my $uid = 1000 + int(rand(20));
        my $pid = 2000 + int(rand(30000));
        my $unit = "app$uid.service";
        my $rid = sprintf('%08x%08x%08x%08x', $i, $t & 0xffffffff, $pid, $uid);
        my $key = $route eq 'oai' ? 'oai-key@3' : 'anth-key@1';
        my $usd = sprintf('%d.%06d', int($cost / 1e6), $cost % 1_000_000);
        my $msg = "$team $model via $route: $status" . ($ok ? '' : " $outcome") . ", $in in / $out out tokens, \$$usd, $lat ms";
        $buf .= "__CURSOR=s=0;i=$i\n__REALTIME_TIMESTAMP=$t\n__MONOTONIC_TIMESTAMP=" . ($t - $start + 1000000) . "\n"
              . "_BOOT_ID=$boot\n_MACHINE_ID=$machine\n_HOSTNAME=bench-host\n_TRANSPORT=journal\n"
              . "_UID=996\n_GID=996\n_CAP_EFFECTIVE=0\n_COMM=keybrokerd\n_EXE=/usr/bin/keybrokerd\n"
              . "_CMDLINE=/usr/bin/keybrokerd\n_PID=812\n_SYSTEMD_CGROUP=/system.slice/keybrokerd.service\n"
              . "_SYSTEMD_UNIT=keybrokerd.service\n_SYSTEMD_SLICE=system.slice\n_SYSTEMD_INVOCATION_ID=$instance\n"
              . "_SOURCE_REALTIME_TIMESTAMP=" . ($t - 3) . "\n"
              . "SYSLOG_IDENTIFIER=keybrokerd\nMESSAGE_ID=65ab453e95ed4c0e99aea91870cea75c\nMESSAGE=$msg\n"
              . "PRIORITY=" . ($ok ? 6 : 4) . "\nKEYBROKER_REQUEST_ID=$rid\nKEYBROKER_TEAM=$team\n"
              . "KEYBROKER_PEER_UID=$uid\nKEYBROKER_PEER_GID=$uid\nKEYBROKER_PEER_PID=$pid\n"
              . "KEYBROKER_PEER_UNIT=$unit\nKEYBROKER_PEER_EXE=/usr/bin/python3.11\nKEYBROKER_ENDPOINT=$endpoint\n"
              . "KEYBROKER_MODEL=$model\nKEYBROKER_UPSTREAM_MODEL=" . ($billed ? $umodel : '') . "\n"
              . "KEYBROKER_ROUTE=$route\nKEYBROKER_FAMILY=$family\nKEYBROKER_KEY=$key\nKEYBROKER_STREAM=$stream\n"
              . "KEYBROKER_STATUS=$status\nKEYBROKER_UPSTREAM_STATUS=$up\nKEYBROKER_OUTCOME=$outcome\n"
              . "KEYBROKER_INPUT_TOKENS=$in\nKEYBROKER_OUTPUT_TOKENS=$out\nKEYBROKER_CACHED_TOKENS=$cached\n"
              . "KEYBROKER_CACHE_WRITE_TOKENS=0\nKEYBROKER_REASONING_TOKENS=0\nKEYBROKER_COST_MICROUSD=$cost\n"
              . "KEYBROKER_LATENCY_MS=$lat\nKEYBROKER_TTFB_MS=$ttfb\n"
              . "KEYBROKER_UPSTREAM_REQUEST_ID=" . ($up ? "req_$rid" : '') . "\nKEYBROKER_ATTEMPTS=" . ($up ? 1 : 0) . "\n"
              . "KEYBROKER_FALLBACK_FROM=\nKEYBROKER_INSTANCE=$instance\nKEYBROKER_SEQ=$i\n\n";
        if (length($buf) > 1 << 20) {
                print $buf or die "write: $!\n";
                $buf = '';
        }
}
print $buf or die "write: $!\n";
close(STDOUT) or die "write: $!\n";
print STDERR "records $n cost_microusd $cost_sum\n";
