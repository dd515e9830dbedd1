#!/usr/bin/perl
# keybrokerctl model baseline: the figures of the route serving a model,
# read from the journal, equal what this test computes from the request
# records of the calls it made (requests, errors by outcome, 429s, error
# ratio, p50/p95 latency, tokens and cost per request); keybrokerd keeps
# them (GET /models/NAME/status, state_dir/promotions.json) and saves them
# as evidence (0600); a promotion's status and gate records compare with
# them; a running promotion's candidate is left out; bad input is refused.
use v5.36;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time);
use KB;

my $MID_PROMOTE = '5ec076b4fc194e50a600372c4a6b303b';
my $CTL = $ENV{KEYBROKERCTL} // "$KB::BUILD/keybrokerctl";
plan skip_all => "keybrokerctl not built: $CTL" unless -x $CTL;

ensure_journald();
# Model names of this run only: the journal is the host's, and other
# test runs may use it at the same time.
my $M = 'mb-' . KB::random_hex(4);
my $EMPTY = "$M-empty";
my %keys = ('k' => fixture_secret('baseline'));
my $mock = start_mock();
my $cfg = standard_config(mock => $mock);
delete $cfg->{'team:ops'}{$_} for qw(requests_per_minute tokens_per_minute);
$cfg->{'route:one'} = { family => 'openai', base_url => $mock->base_url, key => 'k',
                        price => 'up-one input=1 output=2' };
$cfg->{'route:cand'} = { family => 'openai', base_url => $mock->base_url, key => 'k' };
$cfg->{"model:$M"} = { target => ['one up-one weight=100', 'cand up-cand weight=0'] };
$cfg->{"model:$EMPTY"} = { target => ['one up-one weight=100'] };

my $broker = start_broker(config => $cfg, keys => \%keys);
sub admin() { $broker->dir . '/admin.sock' }
sub ctl(@args) { run_cmd([$CTL, '--admin-socket', admin(), @args]) }
my $since = '@' . int($broker->started_at - 1);

sub call($model, %h) {
        return req($broker, json => { model => $model, messages => [{ role => 'user', content => 'x' }] },
                   path => '/v1/chat/completions', headers => [%h]);
}

sub nearest_rank($p, @v) {
        my @s = sort { $a <=> $b } @v;
        my $rank = int((@s * $p + 99) / 100);
        return $s[$rank - 1];
}

# The calls: tokens, errors, a 429 and slow ones, all on route one.
my @ids;
for my $i (1 .. 16) {
        my %h = ('x-mock-input-tokens' => 10 + $i, 'x-mock-output-tokens' => $i % 5 + 1);
        $h{'x-mock-status'} = 500 if $i == 3 || $i == 9;
        $h{'x-mock-status'} = 429 if $i == 12;
        $h{'x-mock-delay-ms'} = 30 * $i if $i % 4 == 0;
        my $res = call($M, %h);
        push @ids, $res->{headers}{'x-keybroker-request-id'};
}

subtest 'the figures are those of the records' => sub {
        my @recs = map { journal_request($_) } @ids;
        is(scalar(grep { defined } @recs), 16, '16 request records');
        my %count = (ok => 0);
        my (@lat, $in, $out, $cost);
        for my $r (@recs) {
                $count{$r->{KEYBROKER_OUTCOME}}++;
                push @lat, $r->{KEYBROKER_LATENCY_MS};
                next unless $r->{KEYBROKER_OUTCOME} eq 'ok';
                $in += $r->{KEYBROKER_INPUT_TOKENS};
                $out += $r->{KEYBROKER_OUTPUT_TOKENS};
                $cost += $r->{KEYBROKER_COST_MICROUSD};
        }
        is($count{upstream_error}, 3, 'the test made 3 upstream errors');
        my $r = ctl('--json', 'model', 'baseline', $M, '--since', $since, '--include-tests');
        is($r->{exit}, 0, 'model baseline exits 0') or diag($r->{stderr});
        my $b = json_decode($r->{stdout}) // {};
        is_deeply($b->{routes}, ['one'], 'routes: the one serving now');
        is($b->{requests}, 16, 'requests');
        is_deeply($b->{errors}, { upstream_error => 3 }, 'errors by outcome');
        is($b->{upstream_429}, 1, 'upstream 429s');
        ok(abs($b->{error_ratio} - 3 / 16) < 1e-9, "error ratio 3/16 ($b->{error_ratio})");
        is($b->{p50_ms}, nearest_rank(50, @lat), 'p50 latency');
        is($b->{p95_ms}, nearest_rank(95, @lat), 'p95 latency');
        ok(abs($b->{input_tokens_per_request} - $in / 13) < 1e-9, 'input tokens per ok request');
        ok(abs($b->{output_tokens_per_request} - $out / 13) < 1e-9, 'output tokens per ok request');
        ok(abs($b->{cost_microusd_per_request} - $cost / 13) < 1e-9, 'cost per ok request');
        ok($b->{evidence} && -f $b->{evidence}, "evidence saved: $b->{evidence}");
        like($b->{evidence} // '', qr{/state/evidence/baseline-\Q$M\E-\d{8}T\d{6}Z(?:-\d+)?\.json$}, 'named baseline-MODEL-TIMESTAMP');
        is(sprintf('%o', (stat($b->{evidence}))[2] & 07777), '600', 'evidence mode 0600');
        my $ev = json_decode(slurp($b->{evidence}) // '');
        is($ev->{model}, $M, 'evidence: the model');
        is($ev->{baseline}{requests}, 16, 'evidence: the figures');
        is($ev->{admin_uid}, 0, 'evidence: who');

        $r = ctl('model', 'baseline', $M, '--since', $since, '--include-tests');
        is($r->{exit}, 0, 'text output exits 0');
        like($r->{stdout}, qr/^  requests:\s+16$/m, 'prints requests');
        like($r->{stdout}, qr/^  error ratio:\s+0\.188$/m, 'prints the error ratio');
        like($r->{stdout}, qr/^evidence: \S+baseline-/m, 'prints the evidence path');

        my $st = req(admin(), path => "/models/$M/status")->{json};
        is($st->{baseline}{requests}, 16, 'GET status: the baseline');
        is($st->{comparison}, undef, 'no comparison without a promotion');
        my $saved = json_decode(slurp($broker->dir . '/state/promotions.json') // '');
        ok((grep { $_->{model} eq $M && $_->{baseline}{requests} == 16 } @{$saved->{baselines}}),
           'kept in promotions.json');
        like(ctl('model', 'status', $EMPTY)->{stdout}, qr/^baseline:\s+no baseline$/m, 'another model: no baseline');
};

subtest 'a promotion is compared with it' => sub {
        my $r = ctl('model', 'promote', $M, 'cand', '--steps', '50,100', '--hold', '1h', '--min-requests', '1000');
        is($r->{exit}, 0, 'promote') or diag($r->{stderr});
        # The candidate of a running promotion is not a baseline route.
        $r = ctl('--json', 'model', 'baseline', $M, '--since', $since, '--include-tests');
        is_deeply(json_decode($r->{stdout})->{routes}, ['one'], 'baseline during a promotion: the candidate left out');
        call($M, 'x-mock-input-tokens' => 50) for 1 .. 12;
        $r = ctl('model', 'status', $M);
        like($r->{stdout}, qr/^baseline:\s+error ratio 0\.000 \(baseline 0\.188, lower\); p95 \d+ ms \(baseline \d+ ms, [-+]\d+%\); input tokens\/request 50\.0 \(baseline [\d.]+\)/m,
             'status compares the step with the baseline') or diag($r->{stdout});
        my $j = req(admin(), path => "/models/$M/status")->{json};
        like($j->{comparison}, qr/baseline/, 'GET status: comparison');
        $r = ctl('model', 'promote', $M, '--abort');
        is($r->{exit}, 0, 'abort');
        my @a = $broker->journal_wait({ MESSAGE_ID => $MID_PROMOTE, KEYBROKER_MODEL => $M, KEYBROKER_EVENT => 'aborted' });
        check_fields($a[0], { KEYBROKER_BASELINE_ERROR_RATIO => '0.188', KEYBROKER_BASELINE => qr/^error ratio /,
                              KEYBROKER_BASELINE_INPUT_TOKENS_PER_REQUEST => qr/^\d+\.\d$/ },
                     'the record compares with the baseline');

        $r = ctl('model', 'promote', $M, 'cand', '--steps', '100', '--hold', '1s', '--min-requests', '2');
        is($r->{exit}, 0, 'a short promotion');
        wait_until(20, sub { call($M); (req(admin(), path => "/models/$M/status")->{json}{promotion}{state} // '') ne 'running' });
        my @g = $broker->journal_wait({ MESSAGE_ID => $MID_PROMOTE, KEYBROKER_MODEL => $M, KEYBROKER_EVENT => 'gate' });
        check_fields($g[-1], { KEYBROKER_GATE_RESULT => 'pass', KEYBROKER_BASELINE_ERROR_RATIO => '0.188',
                               KEYBROKER_BASELINE_P95_MS => qr/^\d+$/, KEYBROKER_BASELINE => qr/baseline 0\.188/ },
                     'the gate record compares with the baseline');
};

subtest 'bad input' => sub {
        my $r = ctl('model', 'baseline', $EMPTY, '--since', $since, '--include-tests');
        is($r->{exit}, 1, 'no records: exit 1');
        like($r->{stderr}, qr/no request records of model \Q$EMPTY\E/, '... saying so');
        $r = ctl('model', 'baseline', $M, '--since', 'not-a-time');
        is($r->{exit}, 2, 'bad --since: exit 2');
        like($r->{stderr}, qr/invalid time for --since/, '... saying so');
        $r = ctl('model', 'baseline', $M, '--since', '-1h', '--until', '-2h');
        is($r->{exit}, 2, '--since after --until: exit 2');
        $r = ctl('model', 'baseline', 'nosuch', '--include-tests');
        is($r->{exit}, 1, 'unknown model: exit 1');
        like($r->{stderr}, qr/no model 'nosuch'/, '... saying so');
        is(ctl('model', 'baseline')->{exit}, 2, 'no NAME: exit 2');
        is(ctl('model', 'baseline', $M, 'extra')->{exit}, 2, 'an extra argument: exit 2');
        my $good = { routes => ['one'], requests => 3, errors => {}, upstream_429 => 0, error_ratio => 0,
                     p50_ms => 1, p95_ms => 2, input_tokens_per_request => 1, output_tokens_per_request => 1,
                     cost_microusd_per_request => 0 };
        my $res = req(admin(), method => 'PUT', path => "/models/$M/baseline", json => $good);
        is($res->{status}, 200, 'PUT a good body: 200') or diag($res->{body});
        for my $bad ({ requests => 0 }, { error_ratio => 1.5 }, { routes => [] }, { p95_ms => -1 },
                     { errors => [] }, { frob => 1 }, { input_tokens_per_request => 'x' }) {
                my $b = { %$good, %$bad };
                $res = req(admin(), method => 'PUT', path => "/models/$M/baseline", json => $b);
                is($res->{status}, 400, 'PUT ' . json_encode($bad) . ': 400');
                like($res->{json}{error}{message} // '', qr/\w/, '... with a message');
        }
        is(req(admin(), method => 'PUT', path => "/models/$M/baseline", body => 'nope')->{status}, 400, 'not JSON: 400');
        is(req(admin(), method => 'PUT', path => '/models/nosuch/baseline', json => $good)->{status}, 404,
           'unknown model: 404');
        like(ctl('model', 'baseline', '--help')->{stdout}, qr/^Usage: keybrokerctl .*model baseline NAME/, '--help');
};

ok($broker->alive, 'broker still running');
is($broker->stop, 0, 'broker exits 0') or diag($broker->log);
done_testing;
