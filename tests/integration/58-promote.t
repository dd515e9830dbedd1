#!/usr/bin/perl
# Staged promotion (keybrokerctl model promote/status, agent/promote*.c):
# a candidate that starts failing, slows down or stops reporting usage is
# rolled back to the split from before at once (journaled with why, and
# the mock sees no candidate request after it); a healthy one reaches 100
# step by step (step_reached in order, the weights of each step in GET
# /routes); status shows the step, gates and hold; abort puts the split
# back; a restart resumes at the same step with the saved split from
# before; a reload keeps it, and a reload that removes the candidate
# aborts it; every bad input is refused with a message.
use v5.36;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use KB;

my $MID_PROMOTE = '5ec076b4fc194e50a600372c4a6b303b';
my $CTL = $ENV{KEYBROKERCTL} // "$KB::BUILD/keybrokerctl";
plan skip_all => "keybrokerctl not built: $CTL" unless -x $CTL;

ensure_journald();
my %keys = ('k' => fixture_secret('promote'));
my $mock = start_mock();
my $cfg = standard_config(mock => $mock);
delete $cfg->{'team:ops'}{$_} for qw(requests_per_minute tokens_per_minute);
my %route = (family => 'openai', base_url => $mock->base_url, key => 'k');
$cfg->{'route:one'} = {%route};
$cfg->{'route:three'} = {%route};
# Each candidate carries its own mock script: only it goes bad.
for my $s (qw(fail slow nousage good abort restart reload gone)) {
        $cfg->{"route:c-$s"} = { %route, header => "x-mock-script: $s" };
        $cfg->{"model:m-$s"} = { target => ['one up-one weight=100', "c-$s up-$s weight=0"] };
}
$cfg->{'model:m-fam'} = { target => ['one up-one weight=100', 'anth claude-x weight=0'] };
$cfg->{'model:m-none'} = { target => ['c-good up-good weight=0', 'one up-one weight=0'],
                           fallback => 'three up-three' };

my $broker = start_broker(config => $cfg, keys => \%keys);
sub admin() { $broker->dir . '/admin.sock' }
sub ctl(@args) { run_cmd([$CTL, '--admin-socket', admin(), @args]) }
sub status($m) { req(admin(), path => "/models/$m/status")->{json} // {} }
sub mock_script($name, $json) {
        my $r = run_cmd(['curl', '-s', '-X', 'PUT', '--data-binary', $json, 'http://127.0.0.1:' . $mock->port . "/mock/scripts/$name"]);
        is($r->{exit}, 0, "mock script $name set") or diag($r->{stderr});
}
sub promotions($m, $event = undef) {
        my @r = $broker->journal_wait({ MESSAGE_ID => $MID_PROMOTE, KEYBROKER_MODEL => $m,
                                        defined $event ? (KEYBROKER_EVENT => $event) : () }, 10);
        return @r;
}
sub weights($m) {
        my $res = req(admin(), path => '/routes');
        my %w;
        for my $r (@{$res->{json}{routes} // []}) {
                $w{$r->{name}} = $_->{effective_weight} for grep { $_->{model} eq $m && $_->{role} eq 'target' } @{$r->{targets}};
        }
        return \%w;
}

# n requests of model m on one keep-alive connection; route counts.
sub drive($m, $n, %o) {
        my $conn = raw_connect($broker);
        my %c;
        for (1 .. $n) {
                $conn->send(KB::http_request('POST', '/v1/chat/completions',
                                             json => { model => $m, messages => [{ role => 'user', content => 'x' }] }));
                my $res = $conn->read_response or do { $c{error}++; last };
                $c{$res->{headers}{'x-keybroker-route'} // 'none'}++;
                $c{status}{$res->{status}}++;
                last if $o{until} && $o{until}->();
        }
        $conn->close;
        return \%c;
}
sub candidate_requests($script) { scalar grep { ($_->{headers}{'x-mock-script'} // '') eq $script } $mock->log_entries }

subtest 'a candidate that starts failing is rolled back at once' => sub {
        mock_script('fail', '{"after":3,"status":503}');
        my $r = ctl('model', 'promote', 'm-fail', 'c-fail', '--steps', '50,100', '--hold', '1h', '--min-requests', '5',
                    '--max-error-ratio', '0.2');
        is($r->{exit}, 0, 'promote exits 0') or diag($r->{stderr});
        like($r->{stdout}, qr/step 1 of 2 \(50%\)/, 'prints the step');
        is_deeply(weights('m-fail'), { one => 50, 'c-fail' => 50 }, 'GET /routes: 50/50');
        drive('m-fail', 60);
        my $st = status('m-fail');
        is($st->{promotion}{state}, 'rolled_back', 'status: rolled back');
        is_deeply($st->{weights}, { one => 100, 'c-fail' => 0 }, 'the split from before is back');
        is_deeply(weights('m-fail'), { one => 100, 'c-fail' => 0 }, 'GET /routes too');
        is(candidate_requests('fail'), 5, 'the mock saw 5 candidate requests: none after the 5th (3 ok, 2 failed)');
        my ($gate) = promotions('m-fail', 'gate');
        check_fields($gate, { KEYBROKER_GATE => 'error_ratio', KEYBROKER_GATE_RESULT => 'fail', KEYBROKER_REQUESTS => '5',
                              KEYBROKER_ERROR_RATIO => '0.400', KEYBROKER_STEP => '1', KEYBROKER_PERCENT => '50',
                              PRIORITY => '4' }, 'journal: the gate failed');
        my ($rb) = promotions('m-fail', 'rolled_back');
        check_fields($rb, { KEYBROKER_ROUTE => 'c-fail', KEYBROKER_REASON => qr/error ratio 0\.400 above 0\.200/,
                            KEYBROKER_WEIGHTS_BEFORE => 'one=50,c-fail=50', KEYBROKER_WEIGHTS_AFTER => 'one=100,c-fail=0',
                            KEYBROKER_STEPS => '50,100', KEYBROKER_BASELINE => 'no baseline' },
                     'journal: rolled_back with the reason and the split');
        my $c = drive('m-fail', 20);
        is($c->{one}, 20, 'later requests all go to the old route');
        is(candidate_requests('fail'), 5, '... and none reached the candidate');
};

subtest 'latency past --max-p95-ms: rolled back' => sub {
        mock_script('slow', '{"after":2,"delay_ms":400,"delay_step_ms":50}');
        my $r = ctl('model', 'promote', 'm-slow', 'c-slow', '--steps', '50,100', '--hold', '1h', '--min-requests', '4',
                    '--max-p95-ms', '300');
        is($r->{exit}, 0, 'promote exits 0') or diag($r->{stderr});
        drive('m-slow', 40, until => sub { candidate_requests('slow') >= 4 });
        # the p95 is taken once a second (the evaluation interval), not per request
        ok(wait_until(3, sub { status('m-slow')->{promotion}{state} eq 'rolled_back' }, 0.1),
           'rolled back within one evaluation interval');
        my $st = status('m-slow');
        is($st->{promotion}{state}, 'rolled_back', 'rolled back');
        is_deeply($st->{weights}, { one => 100, 'c-slow' => 0 }, 'split back');
        my ($rb) = promotions('m-slow', 'rolled_back');
        check_fields($rb, { KEYBROKER_REASON => qr/p95 latency \d+ ms above 300 ms/,
                            KEYBROKER_P95_MS => sub { $_[0] > 300 } }, 'journal: why');
};

subtest 'usage missing with --require-usage: rolled back at the first' => sub {
        mock_script('nousage', '{"after":2,"no_usage":true}');
        my $r = ctl('model', 'promote', 'm-nousage', 'c-nousage', '--steps', '50,100', '--hold', '1h',
                    '--require-usage');
        is($r->{exit}, 0, 'promote exits 0') or diag($r->{stderr});
        drive('m-nousage', 40);
        is(candidate_requests('nousage'), 3, 'the candidate got 3 requests: the 3rd had no usage');
        my $st = status('m-nousage');
        is($st->{promotion}{state}, 'rolled_back', 'rolled back (without waiting for --min-requests)');
        my ($gate) = promotions('m-nousage', 'gate');
        check_fields($gate, { KEYBROKER_GATE => 'usage', KEYBROKER_MISSING_USAGE => '1' }, 'journal: the usage gate');
};

subtest 'a healthy candidate reaches 100' => sub {
        my $r = ctl('model', 'promote', 'm-good', 'c-good', '--steps', '25,50,100', '--hold', '1s',
                    '--min-requests', '3', '--max-p95-ms', '8000');
        is($r->{exit}, 0, 'promote exits 0') or diag($r->{stderr});
        my %seen;
        my $ok = wait_until(60, sub {
                drive('m-good', 8);
                my $st = status('m-good');
                my $p = $st->{promotion};
                $seen{$p->{percent}} //= { %{weights('m-good')} } if $p->{state} eq 'running';
                return $p->{state} ne 'running';
        }, 0.1);
        ok($ok, 'the promotion ended');
        my $st = status('m-good');
        is($st->{promotion}{state}, 'completed', 'completed');
        is_deeply($st->{weights}, { one => 0, 'c-good' => 100 }, 'the split stays 100% candidate');
        is_deeply($seen{25}, { one => 75, 'c-good' => 25 }, 'at 25%: one=75 c-good=25') if $seen{25};
        is_deeply($seen{50}, { one => 50, 'c-good' => 50 }, 'at 50%: 50/50') if $seen{50};
        my @steps = promotions('m-good', 'step_reached');
        is_deeply([map { $_->{KEYBROKER_PERCENT} } @steps], [25, 50, 100], 'step_reached 25, 50, 100 in order');
        is_deeply([map { $_->{KEYBROKER_WEIGHTS_AFTER} } @steps],
                  ['one=75,c-good=25', 'one=50,c-good=50', 'one=0,c-good=100'], '... with the weights of each step');
        my @gates = promotions('m-good', 'gate');
        is(scalar(@gates), 3, 'three gate records');
        ok(!(grep { $_->{KEYBROKER_GATE_RESULT} ne 'pass' } @gates), 'all passed');
        my ($done) = promotions('m-good', 'completed');
        check_fields($done, { KEYBROKER_WEIGHTS_BEFORE => 'one=100,c-good=0', KEYBROKER_WEIGHTS_AFTER => 'one=0,c-good=100',
                              KEYBROKER_STEP => '3', KEYBROKER_PERCENT => '100' }, 'journal: completed');
        my ($start) = promotions('m-good', 'started');
        check_fields($start, { KEYBROKER_ADMIN_UID => '0', KEYBROKER_WEIGHTS_AFTER => 'one=75,c-good=25' },
                     'journal: started by uid 0');
        my $saved = json_decode(slurp($broker->dir . '/state/splits.json') // '');
        ok((grep { $_->{model} eq 'm-good' && $_->{route} eq 'c-good' && $_->{weight} == 100 } @{$saved->{splits}}),
           'splits.json has the candidate at 100');
        $r = ctl('model', 'status', 'm-good');
        like($r->{stdout}, qr/none running; the last one \(route c-good.*completed/, 'status: the last one completed');
};

subtest 'status during a step' => sub {
        my $r = ctl('model', 'promote', 'm-abort', 'c-abort', '--steps', '10,100', '--hold', '1h', '--min-requests', '50');
        is($r->{exit}, 0, 'promote exits 0') or diag($r->{stderr});
        drive('m-abort', 30);
        $r = ctl('model', 'status', 'm-abort');
        is($r->{exit}, 0, 'status exits 0');
        like($r->{stdout}, qr/^split:\s+one=90 c-abort=10$/m, 'the current split');
        like($r->{stdout}, qr/route c-abort \(up-abort\), running, step 1 of 2 \(10%\), steps 10,100/, 'the step');
        like($r->{stdout}, qr/^hold:\s+3600\.000 s, 3\d{3} s left$/m, 'the hold and time left');
        like($r->{stdout}, qr/^requests:\s+\d+ this step \(at least 50\)$/m, 'requests this step');
        like($r->{stdout}, qr/^error_ratio\s+0\s+0\.02\s+pending$/m, 'gate error_ratio pending');
        like($r->{stdout}, qr/^usage\s+0\s+-\s+off$/m, 'gate usage off');
        like($r->{stdout}, qr/^hold\s+\d+\.\d s\s+3600\.0 s\s+pending$/m, 'gate hold pending, in seconds');
        like($r->{stdout}, qr/^baseline:\s+no baseline$/m, 'no baseline');
        $r = ctl('--json', 'model', 'status', 'm-abort');
        my $j = json_decode($r->{stdout});
        is($j->{promotion}{step}, 1, '--json: step');
        is($j->{promotion}{percent}, 10, '--json: percent');
        is_deeply([map { $_->{name} } @{$j->{promotion}{gates}}],
                  [qw(error_ratio p95_ms model_not_found usage requests hold)], '--json: the gates');
        ok($j->{promotion}{requests} > 0, '--json: requests this step');
        is_deeply($j->{promotion}{before}, { one => 100, 'c-abort' => 0 }, '--json: the split from before');
        $r = ctl('model', 'status', 'm-nothing') ;
        is($r->{exit}, 1, 'status of an unknown model: exit 1');
        $r = ctl('model', 'status', 'm-reload');
        like($r->{stdout}, qr/^promotion:\s+none$/m, 'a model never promoted: none');
        like($r->{stdout}, qr/^split:\s+one=100 c-reload=0$/m, '... and its split');
};

subtest 'abort' => sub {
        my $r = ctl('model', 'promote', 'm-abort', '--abort');
        is($r->{exit}, 0, 'abort exits 0') or diag($r->{stderr});
        like($r->{stdout}, qr/aborted; split back to one=100 c-abort=0/, 'says so');
        is_deeply(weights('m-abort'), { one => 100, 'c-abort' => 0 }, 'GET /routes: back');
        my ($a) = promotions('m-abort', 'aborted');
        check_fields($a, { KEYBROKER_ADMIN_UID => '0', KEYBROKER_WEIGHTS_AFTER => 'one=100,c-abort=0',
                           KEYBROKER_REASON => 'aborted by an admin' }, 'journal: aborted by uid 0');
        $r = ctl('model', 'promote', 'm-abort', '--abort');
        is($r->{exit}, 1, 'abort with none running: exit 1');
        like($r->{stderr}, qr/no promotion of model 'm-abort' is running/, '... saying so');
        is(req(admin(), method => 'DELETE', path => '/models/m-abort/promote')->{status}, 404, 'DELETE: 404');
};

subtest 'a restart resumes at the same step with the saved split' => sub {
        my $r = ctl('model', 'promote', 'm-restart', 'c-restart', '--steps', '20,60,100', '--hold', '1h');
        is($r->{exit}, 0, 'promote exits 0') or diag($r->{stderr});
        is($broker->stop, 0, 'broker stops');
        my $saved = json_decode(slurp($broker->dir . '/state/promotions.json') // '');
        my ($e) = grep { $_->{model} eq 'm-restart' } @{$saved->{promotions}};
        is($e->{state}, 'running', 'promotions.json: running');
        is_deeply($e->{before}, [{ name => 'one', weight => 100 }, { name => 'c-restart', weight => 0 }],
                  'promotions.json: the split from before');
        is(sprintf('%o', (stat($broker->dir . '/state/promotions.json'))[2] & 07777), '600', 'mode 0600');
        $broker->respawn;
        my $st = status('m-restart');
        is($st->{promotion}{state}, 'running', 'running after the restart');
        is($st->{promotion}{step}, 1, 'at the same step');
        is_deeply($st->{weights}, { one => 80, 'c-restart' => 20 }, 'with its split (20%)');
        my @rs = $broker->journal_wait({ MESSAGE_ID => $MID_PROMOTE, KEYBROKER_MODEL => 'm-restart',
                                          KEYBROKER_EVENT => 'step_reached', KEYBROKER_REASON => 'resumed after a restart' });
        ok(@rs, 'journal: step_reached, resumed after a restart');
        $r = ctl('model', 'promote', 'm-restart', '--abort');
        is($r->{exit}, 0, 'abort');
        is_deeply(status('m-restart')->{weights}, { one => 100, 'c-restart' => 0 }, 'the saved split from before is back');
};

subtest 'a reload keeps it; a reload that removes the candidate aborts it' => sub {
        my $r = ctl('model', 'promote', 'm-reload', 'c-reload', '--steps', '50,100', '--hold', '1h');
        is($r->{exit}, 0, 'promote exits 0') or diag($r->{stderr});
        $r = ctl('model', 'promote', 'm-gone', 'c-gone', '--steps', '50,100', '--hold', '1h');
        is($r->{exit}, 0, 'a second model promoted') or diag($r->{stderr});
        is(ctl('reload')->{exit}, 0, 'reload');
        is(status('m-reload')->{promotion}{state}, 'running', 'still running after a reload');
        is_deeply(status('m-reload')->{weights}, { one => 50, 'c-reload' => 50 }, 'same split');
        my $text = slurp($broker->conf);
        $text =~ s/^target = c-gone up-gone weight=0\n//m or fail('config edited');
        spew($broker->conf, $text);
        is(ctl('reload')->{exit}, 0, 'reload without the candidate');
        my $st = status('m-gone');
        is($st->{promotion}{state}, 'aborted', 'aborted');
        is_deeply($st->{weights}, { one => 100 }, 'the old route has its weight back');
        my ($a) = promotions('m-gone', 'aborted');
        check_fields($a, { KEYBROKER_REASON => qr/no longer a target of model 'm-gone'/, KEYBROKER_ADMIN_UID => undef },
                     'journal: aborted, and why');
        is(status('m-reload')->{promotion}{state}, 'running', 'the other one goes on');
        ctl('model', 'promote', 'm-reload', '--abort');
};

subtest 'bad input' => sub {
        my @base = ('model', 'promote', 'm-abort', 'c-abort', '--hold', '10s');
        my @cases = (
                [[@base, '--steps', '5,1,100'], 1, qr/strictly increasing/],
                [[@base, '--steps', '0,100'], 1, qr/from 1 to 100/],
                [[@base, '--steps', '50,150'], 1, qr/from 1 to 100/],
                [[@base, '--steps', '5,50'], 1, qr/last step must be 100/],
                [[@base, '--steps', ''], 2, qr/--steps/],
                [[@base, '--steps', '5,,100'], 2, qr/--steps/],
                [['model', 'promote', 'm-abort', 'c-abort', '--steps', '5,100'], 2, qr/missing --hold/],
                [['model', 'promote', 'm-abort', 'c-abort', '--steps', '5,100', '--hold', '0'], 1, qr/longer than 0/],
                [['model', 'promote', 'm-abort', 'c-abort', '--steps', '5,100', '--hold', 'soon'], 2, qr/invalid --hold/],
                [[@base, '--steps', '5,100', '--max-error-ratio', '1.5'], 1, qr/from 0 to 1/],
                [[@base, '--steps', '5,100', '--max-error-ratio', '-0.1'], 1, qr/from 0 to 1/],
                [[@base, '--steps', '5,100', '--max-error-ratio', 'x'], 2, qr/max-error-ratio/],
                [['model', 'promote', 'm-abort', 'nosuch', '--steps', '100', '--hold', '1s'], 1, qr/no route 'nosuch'/],
                [['model', 'promote', 'm-abort', 'three', '--steps', '100', '--hold', '1s'], 1,
                 qr/not a target of model 'm-abort': add `target = three UPSTREAM_MODEL weight=0`/],
                [['model', 'promote', 'm-fam', 'anth', '--steps', '100', '--hold', '1s'], 1, qr/speaks anthropic/],
                [['model', 'promote', 'm-none', 'c-good', '--steps', '100', '--hold', '1s'], 1, qr/no other target/],
                [['model', 'promote', 'nosuch', 'one', '--steps', '100', '--hold', '1s'], 1, qr/no model 'nosuch'/],
                [['model', 'promote', 'm-abort', '--steps', '100', '--hold', '1s'], 2, qr/missing ROUTE/],
                [['model', 'promote', 'm-abort', 'c-abort', '--hold', '1s', '--abort'], 2, qr/--abort takes only/],
                [['model', 'promote'], 2, qr/missing NAME/],
                [['model', 'promote', 'nosuch', '--abort'], 1, qr/no model 'nosuch'/],
        );
        for my $c (@cases) {
                my ($args, $exit, $re) = @$c;
                my $r = ctl(@$args);
                is($r->{exit}, $exit, "@$args: exit $exit");
                like($r->{stderr}, $re, '... saying why') or diag($r->{stderr});
        }
        is_deeply(weights('m-abort'), { one => 100, 'c-abort' => 0 }, 'nothing changed');

        my $r = ctl('model', 'promote', 'm-abort', 'c-abort', '--steps', '10,100', '--hold', '1h');
        is($r->{exit}, 0, 'a promotion');
        $r = ctl('model', 'promote', 'm-abort', 'c-abort', '--steps', '10,100', '--hold', '1h');
        is($r->{exit}, 1, 'a second one on the same model: exit 1');
        like($r->{stderr}, qr/already being promoted/, '... saying so');
        my $res = req(admin(), method => 'POST', path => '/models/m-abort/promote',
                      body => '{"route":"c-abort","steps":[10,100],"hold_ms":1000}');
        is($res->{status}, 409, 'POST: 409');
        ctl('model', 'promote', 'm-abort', '--abort');
        for my $b ('nope', '[]', '{"route":"c-abort","steps":[100]}', '{"route":"c-abort","steps":[],"hold_ms":5}',
                   '{"route":"c-abort","steps":[100],"hold_ms":5,"frob":1}', '{"steps":[100],"hold_ms":5}',
                   '{"route":"c-abort","steps":[100],"hold_ms":5,"min_requests":0}',
                   '{"route":"c-abort","steps":[100],"hold_ms":5,"require_usage":"yes"}') {
                $res = req(admin(), method => 'POST', path => '/models/m-abort/promote', body => $b);
                is($res->{status}, 400, "POST $b: 400");
                like($res->{json}{error}{message} // '', qr/\w/, '... with a message');
        }
        is(req(admin(), method => 'POST', path => '/models/nosuch/promote', body => '{}')->{status}, 404,
           'POST for an unknown model: 404');
        is(req(admin(), path => '/models/nosuch/status')->{status}, 404, 'GET status of an unknown model: 404');
        is(req(admin(), method => 'PUT', path => '/models/m-abort/status')->{status}, 405, 'PUT status: 405');
        $r = ctl('model', 'promote', '--help');
        is($r->{exit}, 0, 'promote --help exits 0');
        like($r->{stdout}, qr/^Usage: keybrokerctl .*model promote NAME ROUTE/, 'usage text');
        $r = ctl('model', 'status', '--help');
        like($r->{stdout}, qr/^Usage: keybrokerctl .*model status NAME/, 'status --help');
};

ok($broker->alive, 'broker still running');
is($broker->stop, 0, 'broker exits 0') or diag($broker->log);
done_testing;
