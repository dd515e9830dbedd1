#!/usr/bin/perl
# keybrokerctl usage: traffic of two teams (fresh random names, so other
# tests' records in the same journal don't matter) with successes, a stream,
# provider 429/404/500, a timeout, the broker's own model_not_found and
# quota rejections; then the report's numbers (--by team, --by model,route,
# --by day, --team) must equal the journal records' fields summed here in
# Perl, independently. Plus --csv's header, time syntax errors (exit 2),
# --until before the traffic, and --directory on an empty directory.
use v5.36;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use POSIX qw(strftime);
use KB;

my $CTL = $ENV{KEYBROKERCTL} // "$KB::BUILD/keybrokerctl";
plan skip_all => "keybrokerctl not built: $CTL" unless -x $CTL;

ensure_journald();
my %keys = ('oai-key' => fixture_secret('oai'), 'anth-key' => fixture_secret('anth'));
my $mock = start_mock();
my $tag = KB::random_hex(4);
my ($TA, $TB) = ("u95a-$tag", "u95b-$tag");

my $cfg = standard_config(mock => $mock);
delete $cfg->{'team:ops'};
delete $cfg->{'team:search'};
$cfg->{"team:$TA"} = { users => '0', models => '*' };
$cfg->{"team:$TB"} = { users => '0', models => '*', requests_per_minute => 4 };
$cfg->{'route:slow'} = { family => 'openai', base_url => $mock->base_url, key => 'oai-key', timeout => '1s',
                         price => 'gpt-slow input=3 output=5' };
$cfg->{'model:slow'} = { target => 'slow gpt-slow' };
# This broker stands for real traffic; the one in "test traffic" below does
# not (test brokers mark their records by default).
$cfg->{agent} = { test_traffic => 'no' };
my $broker = start_broker(config => $cfg, keys => \%keys);

sub chat($team, %o) {
        req($broker, path => '/v1/chat/completions',
            json => { model => $o{model} // 'gpt-mini', messages => [{ role => 'user', content => 'x' }],
                      ($o{stream} ? (stream => JSON::PP::true, stream_options => { include_usage => JSON::PP::true })
                                  : ()) },
            headers => ['X-Keybroker-Team' => $team, @{$o{headers} // []}], stream => $o{stream});
}

# ------------------------------------------------------------ traffic
my %sent = ($TA => 0, $TB => 0);
my @plan = (
        [$TA, headers => ['x-mock-input-tokens' => 1000, 'x-mock-output-tokens' => 300, 'x-mock-cached-tokens' => 200]],
        [$TA, headers => ['x-mock-input-tokens' => 7, 'x-mock-output-tokens' => 3]],
        [$TA, model => 'gpt-big'],
        [$TA, stream => 1, headers => ['x-mock-output-tokens' => 5]],
        [$TA, stream => 1, headers => ['x-mock-output-tokens' => 20, 'x-mock-cut-after' => 3]],
        [$TA, headers => ['x-mock-status' => 429]],
        [$TA, headers => ['x-mock-status' => 500]],
        [$TA, headers => ['x-mock-status' => 404]],
        [$TA, model => 'no-such-model'],
        [$TA, model => 'slow', headers => ['x-mock-delay-ms' => 2500]],
        [$TA, model => 'slow', headers => ['x-mock-input-tokens' => 11, 'x-mock-output-tokens' => 13]],
        # TB: requests_per_minute 4, so the last two are rejected.
        ([$TB, headers => ['x-mock-input-tokens' => 50]]) x 3,
        [$TB, headers => ['x-mock-status' => 503]],
        ([$TB]) x 2,
);
my %statuses;
for my $p (@plan) {
        my ($team, %o) = @$p;
        my $res = chat($team, %o);
        $sent{$team}++;
        $statuses{$res->{status} // 'none'}++;
}
note('statuses: ' . join(', ', map { "$_ x$statuses{$_}" } sort keys %statuses));
ok($statuses{429} && $statuses{500} && $statuses{404} && $statuses{504}, 'errors of every kind were provoked')
        or diag(explain(\%statuses));

my %recs;
for my $t ($TA, $TB) {
        my @r = $broker->journal_wait({ MESSAGE_ID => $MID_REQUEST, KEYBROKER_TEAM => $t }, 15, count => $sent{$t});
        is(scalar(@r), $sent{$t}, "$t: one journal record per request");
        $recs{$t} = \@r;
}
my @all = map { @{$recs{$_}} } $TA, $TB;

# ------------------------------------------------------------ independent sums
sub pct($vals, $p) {
        my @s = sort { $a <=> $b } @$vals;
        return undef unless @s;
        my $rank = int((@s * $p + 99) / 100);
        $rank = 1 if $rank < 1;
        return $s[$rank - 1];
}

sub day_of($rec) { strftime('%Y-%m-%d', gmtime(int($rec->{__REALTIME_TIMESTAMP} / 1_000_000))) }

my %BYFIELD = (team => 'KEYBROKER_TEAM', model => 'KEYBROKER_MODEL', route => 'KEYBROKER_ROUTE',
               key => 'KEYBROKER_KEY', unit => 'KEYBROKER_PEER_UNIT');

sub sums($records, @by) {
        my %g;
        for my $r (@$records) {
                my @k = map { $_ eq 'day' ? day_of($r) : $r->{$BYFIELD{$_}} // '' } @by;
                my $s = $g{join("\x1f", @k)} //= { keys => \@k, requests => 0, input_tokens => 0, output_tokens => 0,
                                                   cached_tokens => 0, cost_microusd => 0, lat => [],
                                                   errors => { map { $_ => 0 } qw(quota_rejected upstream_429 timeouts
                                                               model_not_found upstream_5xx stream_interrupted
                                                               client_abort) } };
                my $up = $r->{KEYBROKER_UPSTREAM_STATUS} || 0;
                my $oc = $r->{KEYBROKER_OUTCOME} // '';
                $s->{requests}++;
                $s->{$_} += $r->{'KEYBROKER_' . uc($_)} || 0 for qw(input_tokens output_tokens cached_tokens);
                $s->{cost_microusd} += $r->{KEYBROKER_COST_MICROUSD} || 0;
                push @{$s->{lat}}, $r->{KEYBROKER_LATENCY_MS} if ($r->{KEYBROKER_LATENCY_MS} // '') =~ /^\d+$/;
                my $e = $s->{errors};
                $e->{quota_rejected}++ if $oc eq 'quota_rejected';
                $e->{upstream_429}++ if $up == 429;
                $e->{timeouts}++ if $oc eq 'upstream_timeout';
                $e->{model_not_found}++ if $oc eq 'model_not_found' || $up == 404;
                $e->{upstream_5xx}++ if $up >= 500 && $up <= 599;
                $e->{stream_interrupted}++ if $oc eq 'stream_interrupted';
                $e->{client_abort}++ if $oc eq 'client_abort';
        }
        for my $s (values %g) {
                $s->{latency_p50_ms} = pct($s->{lat}, 50);
                $s->{latency_p95_ms} = pct($s->{lat}, 95);
        }
        return \%g;
}

sub ctl(@args) { run_cmd([$CTL, @args]) }

sub close_enough($got, $want) {
        return !defined $got if !defined $want;
        return 0 unless defined $got;
        return $got == $want if $want < 128;
        return abs($got - $want) <= 0.01 * $want;
}

sub compare_group($got, $want, $name) {
        subtest $name => sub {
                return fail('group present in the report') unless $got;
                is($got->{$_}, $want->{$_}, $_) for qw(requests input_tokens output_tokens cached_tokens cost_microusd);
                is(sprintf('%.6f', $got->{cost_usd}), sprintf('%d.%06d', int($want->{cost_microusd} / 1e6),
                                                             $want->{cost_microusd} % 1_000_000), 'cost_usd');
                is_deeply($got->{errors}, $want->{errors}, 'errors by class');
                ok(close_enough($got->{$_}, $want->{$_}), "$_ within 1%")
                        or diag("got " . ($got->{$_} // 'null') . ", exact " . ($want->{$_} // 'null'))
                        for qw(latency_p50_ms latency_p95_ms);
        };
}

sub report_json(@args) {
        my $r = ctl('usage', '--json', @args);
        is($r->{exit}, 0, "usage @args --json: exit 0") or diag($r->{stderr});
        my $j = json_decode($r->{stdout});
        ok(ref $j eq 'HASH' && ref $j->{groups} eq 'ARRAY' && ref $j->{total} eq 'HASH', 'a JSON report')
                or diag($r->{stdout});
        return ($j // {}, $r->{stdout});
}

sub group_index($j, @by) {
        return { map { my $g = $_; (join("\x1f", map { $g->{$_} } @by) => $g) } @{$j->{groups} // []} };
}

# ------------------------------------------------------------ --by team
subtest '--by team equals the journal summed independently' => sub {
        my ($j, $raw) = report_json('--since', '-5min', '--by', 'team');
        is_deeply($j->{by}, ['team'], 'by');
        my $idx = group_index($j, 'team');
        my $want = sums(\@all, 'team');
        compare_group($idx->{$_}, $want->{$_}, "team $_") for $TA, $TB;
        ok($want->{$TA}{errors}{$_}, "$TA has $_") for qw(upstream_429 upstream_5xx model_not_found timeouts);
        ok($want->{$TB}{errors}{quota_rejected}, "$TB has quota_rejected");
        ok($want->{$TA}{cost_microusd} > 0, "$TA spent something");
        like($raw, qr/"team":"\Q$TA\E","requests":\d+,"input_tokens":\d+,"output_tokens":\d+,"cached_tokens":\d+,"cost_usd":-?\d+\.\d{6},/,
             'cost_usd printed with exactly 6 decimals');
        my $tot = $j->{total};
        cmp_ok($tot->{requests}, '>=', scalar(@all), 'TOTAL counts at least our requests');
        my $sum = 0;
        $sum += $_->{requests} for @{$j->{groups}};
        is($tot->{requests}, $sum, 'TOTAL is the sum of the groups');
};

subtest '--team with --by model,route' => sub {
        my ($j) = report_json('--since', '-5min', '--team', $TA, '--by', 'model,route');
        is_deeply($j->{by}, ['model', 'route'], 'by');
        my $want = sums($recs{$TA}, 'model', 'route');
        my $idx = group_index($j, 'model', 'route');
        is_deeply([sort keys %$idx], [sort keys %$want], 'the same groups');
        compare_group($idx->{$_}, $want->{$_}, 'model,route ' . s/\x1f/,/r) for sort keys %$want;
        my $all = sums($recs{$TA}, 'team')->{$TA};
        compare_group({ %{$j->{total}} }, $all, 'TOTAL is the team\'s');
};

subtest '--by repeated: day, key, unit' => sub {
        my ($j) = report_json('--since', '-5min', '--team', $TB, '--by', 'day', '--by', 'key,unit');
        is_deeply($j->{by}, ['day', 'key', 'unit'], 'by, in order');
        my $want = sums($recs{$TB}, 'day', 'key', 'unit');
        my $idx = group_index($j, 'day', 'key', 'unit');
        is_deeply([sort keys %$idx], [sort keys %$want], 'the same groups');
        compare_group($idx->{$_}, $want->{$_}, 'group ' . s/\x1f/,/gr) for sort keys %$want;
};

subtest 'table and CSV' => sub {
        my $r = ctl('usage', '--since', '-5min', '--team', $TA);
        is($r->{exit}, 0, 'table: exit 0') or diag($r->{stderr});
        my @l = split /\n/, $r->{stdout};
        like($l[0], qr/^TEAM\s+REQUESTS\s+INPUT\s+OUTPUT\s+CACHED\s+COST_USD\s+QUOTA\s+429\s+TIMEOUT\s+NOTFOUND\s+5XX\s+CUT\s+ABORT\s+P50_MS\s+P95_MS$/,
             'header');
        my $want = sums($recs{$TA}, 'team')->{$TA};
        like($l[1], qr/^\Q$TA\E\s+$want->{requests}\s+$want->{input_tokens}\s+$want->{output_tokens}\s/, 'the team row');
        like($l[-1], qr/^TOTAL\s+$want->{requests}\s/, 'a TOTAL row');
        is(scalar(@l), 3, 'header, one group, TOTAL');

        $r = ctl('usage', '--since', '-5min', '--team', $TA, '--csv', '--by', 'team,model');
        is($r->{exit}, 0, 'csv: exit 0') or diag($r->{stderr});
        @l = split /\n/, $r->{stdout};
        is($l[0], 'team,model,requests,input_tokens,output_tokens,cached_tokens,cost_usd,quota_rejected,upstream_429,'
                . 'timeouts,model_not_found,upstream_5xx,stream_interrupted,client_abort,latency_p50_ms,latency_p95_ms,'
                . 'images,audio_seconds,video_seconds,characters,batches',
           'CSV header');
        my $models = sums($recs{$TA}, 'team', 'model');
        is(scalar(@l) - 1, scalar(keys %$models), 'one row per group, no total row');
        my ($row) = grep { /^\Q$TA\E,gpt-mini,/ } @l;
        my $w = $models->{"$TA\x1fgpt-mini"};
        like($row // '', qr/^\Q$TA\E,gpt-mini,$w->{requests},$w->{input_tokens},$w->{output_tokens},$w->{cached_tokens},/,
             'a CSV row');
};

subtest 'time range' => sub {
        my ($j) = report_json('--team', $TA, '--until', '-1h');
        is_deeply($j->{groups}, [], '--until before the traffic: no groups');
        is($j->{total}{requests}, 0, 'and a zero total');
        ($j) = report_json('--team', $TA, '--since', '+1h');
        is_deeply($j->{groups}, [], '--since in the future: no groups');
        my $today = strftime('%Y-%m-%d', localtime);
        ($j) = report_json('--team', $TA, '--since', 'yesterday', '--until', 'now');
        is($j->{total}{requests}, scalar(@{$recs{$TA}}), 'yesterday..now holds it all');
        ($j) = report_json('--team', $TA, '--since', '@' . int($broker->started_at - 1));
        is($j->{total}{requests}, scalar(@{$recs{$TA}}), '--since @EPOCH');
};

subtest 'test traffic is left out unless --include-tests' => sub {
        my $TC = "u95c-$tag";
        my $tcfg = standard_config(mock => $mock);
        $tcfg->{"team:$TC"} = { users => '0', models => '*' };
        delete $tcfg->{'team:ops'};
        my $tb = start_broker(config => $tcfg, keys => \%keys);
        for (1 .. 3) {
                my $res = req($tb, path => '/v1/chat/completions', headers => ['X-Keybroker-Team' => $TC],
                              json => { model => 'gpt-mini', messages => [] });
                is($res->{status}, 200, 'a call through a test broker');
        }
        my @t = KB::journal_wait({ _PID => $tb->pid, MESSAGE_ID => $MID_REQUEST, KEYBROKER_TEAM => $TC }, 10,
                                 count => 3, since => $tb->started_at - 2);
        is(scalar(grep { ($_->{KEYBROKER_TEST} // '') eq '1' } @t), 3, "its records carry KEYBROKER_TEST=1");
        is(scalar(grep { exists $_->{KEYBROKER_TEST} } @all), 0, 'the real broker\'s records carry no KEYBROKER_TEST');
        my ($j) = report_json('--since', '-5min', '--team', $TC);
        is($j->{total}{requests}, 0, 'usage leaves test records out by default');
        ($j) = report_json('--since', '-5min', '--team', $TC, '--include-tests');
        is($j->{total}{requests}, 3, '... and counts them with --include-tests');
        ($j) = report_json('--since', '-5min', '--team', $TA, '--include-tests');
        is($j->{total}{requests}, scalar(@{$recs{$TA}}), 'real records are counted either way');
        is($tb->stop, 0, 'test broker exits 0');
};

subtest 'usage errors exit 2, a missing directory 1' => sub {
        for my $args (['--since', 'bogus'], ['--since', '2026-13-01'], ['--until', 'yesterdayish'],
                      ['--since', 'now', '--until', '-1h'], ['--by', 'colour'], ['--by', ''], ['--csv', '--json'],
                      ['--team', ''], ['--frob'], ['extra'], ['--since']) {
                my $r = ctl('usage', @$args);
                is($r->{exit}, 2, "usage @$args: exit 2");
                like($r->{stderr}, qr/^keybrokerctl usage: /, 'says why');
                is($r->{stdout}, '', 'prints no report');
        }
        my $r = ctl('usage', '--help');
        is($r->{exit}, 0, '--help: exit 0');
        like($r->{stdout}, qr/^Usage: keybrokerctl usage/, '--help on stdout');
        like(ctl('--help')->{stdout}, qr/usage \[--since T\]/, 'listed in keybrokerctl --help');
        $r = ctl('usage', '--directory', tmpdir('nojournal') . '/absent');
        is($r->{exit}, 1, 'a missing --directory: exit 1');
        like($r->{stderr}, qr/cannot open journal directory/, 'says so');
};

subtest '--directory on an empty directory' => sub {
        my $d = tmpdir('emptyjournal');
        my ($j) = report_json('--directory', $d, '--by', 'team,model');
        is_deeply($j->{groups}, [], 'no groups');
        is($j->{total}{requests}, 0, 'zero requests');
        ok(!defined $j->{total}{latency_p50_ms}, 'no percentile');
        my $r = ctl('usage', '-D', $d);
        is($r->{exit}, 0, 'table: exit 0');
        like($r->{stdout}, qr/\ATEAM .*\nTOTAL\s+0\s/s, 'just the header and a zero TOTAL');
};

done_testing;
