#!/usr/bin/perl
# Shadow comparison ([model:*] shadow = ROUTE UPSTREAM_MODEL sample=R
# budget_usd_per_day=USD): a sample of live requests is sent again to a
# candidate route after the app has its answer; the app's answer is exactly
# what it would be without a shadow and never waits for it; each pair is
# journaled; the shadow is never charged to the team's quota, only to its
# own daily cap, which survives a restart; keybrokerctl model compare sums
# the pairs; bad shadow settings are refused by --check-config.
use v5.36;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use KB;

my $MID_SHADOW = '478e1a1c28a541779bf26af7cfdf2f90';
my $CTL = $ENV{KEYBROKERCTL} // "$KB::BUILD/keybrokerctl";
plan skip_all => "keybrokerctl not built: $CTL" unless -x $CTL;

ensure_journald();
my $T0 = time;
# Fresh model names per run: the journal outlives the test.
my $P = 'sh' . substr(KB::random_hex(4), 0, 8);
my ($M, $C, $SLOW, $BAD, $BUDGET, $HALF, $BUSY, $STAGED) = map { "$P-$_" } qw(m c slow bad budget half busy staged);

my %keys = ('oai-key' => fixture_secret('oai'), 'anth-key' => fixture_secret('anth'),
            'shadow-key' => fixture_secret('shadow'));
my $mock_a = start_mock();      # the primary of the broker with shadows
my $mock_b = start_mock();      # the primary of the broker without
my $mock_s = start_mock();      # every shadow route

sub shadow_route($name, $family, @headers) {
        return { family => $family, base_url => $mock_s->base_url, key => 'shadow-key',
                 auth => $family eq 'anthropic' ? 'x-api-key' : 'bearer', timeout => '30s',
                 header => ["x-shadow-route: $name", @headers] };
}

sub config($mock, $with_shadow) {
        my $cfg = standard_config(mock => $mock);
        # the sampling test alone makes 200 calls: no minute windows on ops
        delete $cfg->{'team:ops'}{$_} for qw(requests_per_minute tokens_per_minute);
        $cfg->{"model:$M"} = { target => 'oai gpt-4o-mini-2024-07-18' };
        $cfg->{"model:$C"} = { target => 'anth claude-3-5-haiku-20241022' };
        return $cfg unless $with_shadow;
        $cfg->{'team:quota'} = { users => '0', models => $M, requests_per_minute => 3 };
        $cfg->{'route:shadow'} = { %{shadow_route('shadow', 'openai', 'x-mock-output-tokens: 9')},
                                   price => 'cand-model input=1 output=2' };
        $cfg->{'route:ashadow'} = shadow_route('ashadow', 'anthropic');
        $cfg->{'route:slowshadow'} = shadow_route('slow', 'openai', 'x-mock-delay-ms: 3000');
        $cfg->{'route:badshadow'} = shadow_route('bad', 'openai', 'x-mock-status: 500');
        $cfg->{'route:bshadow'} = { %{shadow_route('budget', 'openai')}, price => 'budget-cand input=1 output=2' };
        $cfg->{'route:hshadow'} = shadow_route('half', 'openai');
        $cfg->{'route:busyshadow'} = shadow_route('busy', 'openai', 'x-mock-delay-ms: 20000');
        $cfg->{"model:$M"}{shadow} = 'shadow cand-model sample=1 budget_usd_per_day=100';
        $cfg->{"model:$C"}{shadow} = 'ashadow cand-claude sample=1 budget_usd_per_day=100';
        $cfg->{"model:$SLOW"} = { target => 'oai gpt-4o-mini-2024-07-18',
                                  shadow => 'slowshadow slow-cand sample=1 budget_usd_per_day=100' };
        $cfg->{"model:$BAD"} = { target => 'oai gpt-4o-mini-2024-07-18',
                                 shadow => 'badshadow bad-cand sample=1 budget_usd_per_day=100' };
        # 11 in / 7 out at 1 and 2 USD per 1M: 25 micro-USD a call; the cap
        # of 40 is reached by the second
        $cfg->{"model:$BUDGET"} = { target => 'oai gpt-4o-mini-2024-07-18',
                                    shadow => 'bshadow budget-cand sample=1 budget_usd_per_day=0.00004' };
        $cfg->{"model:$HALF"} = { target => 'oai gpt-4o-mini-2024-07-18',
                                  shadow => 'hshadow half-cand sample=0.5 budget_usd_per_day=100' };
        $cfg->{"model:$BUSY"} = { target => 'oai gpt-4o-mini-2024-07-18',
                                  shadow => 'busyshadow busy-cand sample=1 budget_usd_per_day=100' };
        # the staged candidate of a promotion: a target of weight 0 and the shadow
        $cfg->{'route:stagedshadow'} = shadow_route('staged', 'openai');
        $cfg->{"model:$STAGED"} = { target => ['oai gpt-4o-mini-2024-07-18', 'stagedshadow staged-cand weight=0'],
                                    shadow => 'stagedshadow staged-cand sample=1 budget_usd_per_day=100' };
        return $cfg;
}

my $broker = start_broker(config => config($mock_a, 1), keys => \%keys);
my $plain = start_broker(config => config($mock_b, 0), keys => \%keys);

sub shadow_calls($route) { grep { ($_->{headers}{'x-shadow-route'} // '') eq $route } $mock_s->log_entries }
sub pairs($model, %match) {
        return KB::journal_records({ MESSAGE_ID => $MID_SHADOW, KEYBROKER_MODEL => $model,
                                     KEYBROKER_EVENT => 'pair', %match }, since => $T0 - 2);
}
sub pair_for($rid, $timeout = 15) {
        my @r = journal_wait({ MESSAGE_ID => $MID_SHADOW, KEYBROKER_REQUEST_ID => $rid }, $timeout,
                             since => $T0 - 2);
        diag("no shadow pair record for request $rid") unless @r;
        return $r[-1];
}
sub rid($res) { $res->{headers}{'x-keybroker-request-id'} }

my @CASES = (
        [ 'chat JSON', '/v1/chat/completions', { model => $M, messages => [{ role => 'user', content => 'hi' }] } ],
        [ 'chat stream', '/v1/chat/completions',
          { model => $M, stream => JSON::PP::true, messages => [{ role => 'user', content => 'hi' }] } ],
        [ 'responses stream', '/v1/responses', { model => $M, stream => JSON::PP::true, input => 'hi' } ],
        [ 'messages JSON', '/v1/messages',
          { model => $C, max_tokens => 50, messages => [{ role => 'user', content => 'hi' }] } ],
        [ 'messages stream', '/v1/messages',
          { model => $C, max_tokens => 50, stream => JSON::PP::true, messages => [{ role => 'user', content => 'hi' }] } ],
);
my %rid;

subtest 'the app gets exactly the answer it would get without a shadow' => sub {
        for my $c (@CASES) {
                my ($name, $path, $body) = @$c;
                my @h = $path eq '/v1/messages' ? (headers => ['anthropic-version' => '2023-06-01']) : ();
                my $with = req($broker, path => $path, json => $body, @h);
                my $without = req($plain, path => $path, json => $body, @h);
                is($with->{status}, 200, "$name: 200") or diag(KB::show_res($with));
                is($with->{status}, $without->{status}, "$name: same status");
                is($with->{headers}{'content-type'}, $without->{headers}{'content-type'}, "$name: same content-type");
                ok($with->{body} eq $without->{body}, "$name: the same body, byte for byte")
                        or diag("with: $with->{body}\nwithout: $without->{body}");
                $rid{$name} = rid($with);
        }
};

subtest 'each was sent again to the shadow route, with its model and key, streamed when the request was' => sub {
        my %pair = map { $_ => pair_for($rid{$_}) } keys %rid;
        my @oai = shadow_calls('shadow');
        my @anth = shadow_calls('ashadow');
        is(scalar(@oai), 3, 'three OpenAI shadow calls') or diag(explain([map { $_->{path} } @oai]));
        is(scalar(@anth), 2, 'two Anthropic shadow calls');
        for my $e (@oai) {
                is($e->{headers}{authorization}, "Bearer $keys{'shadow-key'}", "$e->{path}: the shadow route's key");
                is(KB::Mock::body_json($e)->{model}, 'cand-model', "$e->{path}: the shadow's upstream model");
        }
        for my $e (@anth) {
                is($e->{headers}{'x-api-key'}, $keys{'shadow-key'}, 'messages: the shadow route\'s key');
                is($e->{headers}{'anthropic-version'}, '2023-06-01', 'messages: the app\'s anthropic-version');
                is(KB::Mock::body_json($e)->{model}, 'cand-claude', 'messages: the shadow\'s upstream model');
        }
        my ($chat_stream) = grep { $_->{path} eq '/v1/chat/completions' && KB::Mock::body_json($_)->{stream} } @oai;
        ok($chat_stream, 'the chat stream was shadowed as a stream ("stream": true)');
        ok(KB::Mock::body_json($chat_stream)->{stream_options}{include_usage},
           '... asking for its usage (stream_options.include_usage)');
        is(scalar(grep { KB::Mock::body_json($_)->{stream} } @oai, @anth), 3, 'three shadow calls streamed');
        for my $name (sort keys %pair) {
                check_fields($pair{$name}, { KEYBROKER_SHAPE_MATCH => '1', KEYBROKER_SHADOW_STATUS => '200',
                                             KEYBROKER_STREAM => $name =~ /stream/ ? '1' : '0' }, "pair: $name");
        }
        is($mock_a->count, 5, 'the primary provider got each request once');
};

subtest 'the pair record' => sub {
        my $p = pair_for($rid{'chat JSON'});
        check_fields($p, {
                KEYBROKER_EVENT => 'pair', KEYBROKER_REQUEST_ID => $rid{'chat JSON'},
                KEYBROKER_TEAM => 'ops', KEYBROKER_MODEL => $M, KEYBROKER_ENDPOINT => 'chat', KEYBROKER_STREAM => '0',
                KEYBROKER_ROUTE => 'oai', KEYBROKER_UPSTREAM_MODEL => 'gpt-4o-mini-2024-07-18',
                KEYBROKER_STATUS => '200', KEYBROKER_STATUS_CLASS => '2xx', KEYBROKER_SHADOW_ROUTE => 'shadow',
                KEYBROKER_SHADOW_UPSTREAM_MODEL => 'cand-model', KEYBROKER_SHADOW_KEY => 'shadow-key@0',
                KEYBROKER_SHADOW_STATUS => '200', KEYBROKER_SHADOW_ERROR => 'none', KEYBROKER_SHAPE_MATCH => '1',
                KEYBROKER_SHAPE_DIFF => undef, KEYBROKER_INPUT_TOKENS => '11', KEYBROKER_OUTPUT_TOKENS => '7',
                KEYBROKER_SHADOW_INPUT_TOKENS => '11', KEYBROKER_SHADOW_OUTPUT_TOKENS => '9',
                KEYBROKER_OUTPUT_RATIO => '1.286', KEYBROKER_LATENCY_MS => qr/^\d+$/,
                KEYBROKER_SHADOW_LATENCY_MS => qr/^\d+$/, KEYBROKER_COST_MICROUSD => '25',
                KEYBROKER_SHADOW_COST_MICROUSD => '29', KEYBROKER_SHADOW_PRICED => '1',
                KEYBROKER_HOST => qr/\S/, KEYBROKER_REALTIME_USEC => qr/^\d{16}$/, KEYBROKER_TEST => '1',
                PRIORITY => '6', SYSLOG_IDENTIFIER => 'keybrokerd',
                MESSAGE => qr/^shadow of \Q$M\E via shadow\/cand-model: same shape, 200 vs 200, 7 vs 9 out tokens/,
        }, 'fields');
        my $a = pair_for($rid{'messages JSON'});
        check_fields($a, { KEYBROKER_ENDPOINT => 'messages', KEYBROKER_SHADOW_PRICED => '0',
                           KEYBROKER_SHADOW_COST_MICROUSD => '0', MESSAGE => qr/unpriced/ },
                     'an unpriced shadow model counts 0, and says so');
        my @all = KB::journal_records({ MESSAGE_ID => $MID_SHADOW }, since => $T0 - 2);
        my $text = join("\n", map { join("\n", map { "$_=" . (ref $_ ? '' : $_) } %$_) } @all);
        unlike($text, qr/\Q$_\E/, 'no secret in any shadow record') for values %keys;
        unlike($text, qr/tok0 tok1/, 'no answer text in any shadow record');
};

subtest 'a slow shadow does not delay the app' => sub {
        my $res = req($broker, path => '/v1/chat/completions',
                      json => { model => $SLOW, messages => [{ role => 'user', content => 'hi' }] });
        is($res->{status}, 200, 'the app has its answer');
        journal_sync();
        my @before = KB::journal_records({ MESSAGE_ID => $MID_SHADOW, KEYBROKER_REQUEST_ID => rid($res) });
        is(scalar(@before), 0, '... before the shadow\'s pair record exists');
        ok(journal_request(rid($res)), '... and its own request record is there');
        my $p = pair_for(rid($res));
        check_fields($p, { KEYBROKER_SHADOW_STATUS => '200', KEYBROKER_SHAPE_MATCH => '1' }, 'then the pair came');
};

subtest 'a failing shadow: a pair that does not match, with its error class' => sub {
        my $res = req($broker, path => '/v1/chat/completions',
                      json => { model => $BAD, messages => [{ role => 'user', content => 'hi' }] });
        is($res->{status}, 200, 'the app got its 200');
        check_fields(pair_for(rid($res)), {
                KEYBROKER_STATUS => '200', KEYBROKER_SHADOW_STATUS => '500', KEYBROKER_SHADOW_ERROR => '5xx',
                KEYBROKER_SHAPE_MATCH => '0', KEYBROKER_SHAPE_DIFF => qr/^status 2xx vs 5xx; members only in primary: .*choices/,
                PRIORITY => '6', MESSAGE => qr/differs \(status 2xx vs 5xx/,
        }, 'pair');
};

subtest 'shadow calls are never charged to the team' => sub {
        my @st;
        my @rids;
        for (1 .. 4) {
                my $res = req($broker, path => '/v1/chat/completions', headers => ['X-Keybroker-Team' => 'quota'],
                              json => { model => $M, messages => [{ role => 'user', content => 'hi' }] });
                push @st, $res->{status};
                push @rids, rid($res);
                pair_for(rid($res)) if $res->{status} == 200;    # its shadow ran before the next call
        }
        is_deeply(\@st, [200, 200, 200, 429], 'requests_per_minute = 3: three calls pass, the fourth is refused');
        my @recs = KB::journal_records({ MESSAGE_ID => $KB::MID_REQUEST, KEYBROKER_TEAM => 'quota' }, since => $T0 - 2);
        is(scalar(@recs), 4, 'one request record per app call, none for a shadow');
        is(scalar(grep { ($_->{KEYBROKER_ROUTE} // '') =~ /shadow/ } @recs), 0, 'no request record names a shadow route');
};

subtest 'the shadow\'s own daily cap' => sub {
        my $n0 = scalar(shadow_calls('budget'));
        for (1 .. 2) {
                my $res = req($broker, path => '/v1/chat/completions',
                              json => { model => $BUDGET, messages => [{ role => 'user', content => 'hi' }] });
                check_fields(pair_for(rid($res)), { KEYBROKER_SHADOW_COST_MICROUSD => '25' }, "shadow $_ costs 25");
        }
        my @b = journal_wait({ MESSAGE_ID => $MID_SHADOW, KEYBROKER_MODEL => $BUDGET,
                               KEYBROKER_EVENT => 'budget_reached' }, 10, since => $T0 - 2);
        check_fields($b[0], { KEYBROKER_SHADOW_SPENT_MICROUSD => '50', KEYBROKER_SHADOW_BUDGET_MICROUSD => '40',
                              KEYBROKER_SHADOW_ROUTE => 'bshadow', PRIORITY => '5',
                              MESSAGE => qr/reached its budget_usd_per_day: \$0\.000050 of \$0\.000040/ },
                     'budget_reached journaled');
        for (1 .. 3) {
                my $res = req($broker, path => '/v1/chat/completions',
                              json => { model => $BUDGET, messages => [{ role => 'user', content => 'hi' }] });
                is($res->{status}, 200, 'the app is served as before');
        }
        sleep 0.5;
        is(scalar(shadow_calls('budget')) - $n0, 2, 'no more shadow calls reached the provider');
        my $state = json_decode(slurp($broker->dir . '/state/shadow.json') // '');
        is($state->{models}{$BUDGET}{spent_microusd}, 50, 'state_dir/shadow.json holds the day\'s spend');
        ok($state->{models}{$BUDGET}{budget_reached}, '... and that the cap was reached');
};

subtest 'sample = 0.5 mirrors about half the requests' => sub {
        my $conn = raw_connect($broker);
        my $ok = 0;
        for (1 .. 200) {
                $conn->send(KB::http_request('POST', '/v1/chat/completions',
                                             json => { model => $HALF, messages => [{ role => 'user', content => 'x' }] }));
                my $res = $conn->read_response;
                $ok++ if $res && $res->{status} == 200;
        }
        $conn->close;
        is($ok, 200, 'all 200 answered');
        # every shadow call that reached the provider ends in a pair record
        my $settled = wait_until(15, sub {
                my $n = scalar(shadow_calls('half'));
                return $n > 0 && scalar(pairs($HALF)) == $n;
        }, 0.3);
        my $n = scalar(shadow_calls('half'));
        ok($settled, "every one of the $n shadow calls has its pair record");
        ok($n > 40 && $n < 160, "about half were mirrored: $n of 200");
};

sub ctl(@args) { run_cmd([$CTL, @args]) }

subtest 'keybrokerctl model compare' => sub {
        my @p = pairs($M);
        my %sum;
        for my $r (@p) {
                $sum{$_} += $r->{"KEYBROKER_$_"} for qw(SHAPE_MATCH OUTPUT_TOKENS SHADOW_OUTPUT_TOKENS COST_MICROUSD
                                                        SHADOW_COST_MICROUSD INPUT_TOKENS SHADOW_INPUT_TOKENS);
        }
        my $since = '@' . int($T0 - 2);
        my $r = ctl('model', 'compare', $M, '--since', $since, '--include-tests', '--json');
        is($r->{exit}, 0, '--json exits 0') or diag($r->{stderr});
        my $j = json_decode($r->{stdout});
        is($j->{pairs}, scalar(@p), "pairs: $j->{pairs} as the records");
        is($j->{shape_match}, $sum{SHAPE_MATCH}, 'shape_match as the records');
        is($j->{agreement_pct}, 100, 'agreement 100%');
        is($j->{primary}{output_tokens}, $sum{OUTPUT_TOKENS}, 'primary output tokens');
        is($j->{shadow}{output_tokens}, $sum{SHADOW_OUTPUT_TOKENS}, 'shadow output tokens');
        is($j->{primary}{input_tokens}, $sum{INPUT_TOKENS}, 'primary input tokens');
        is($j->{primary}{cost_microusd}, $sum{COST_MICROUSD}, 'primary cost');
        is($j->{shadow}{cost_microusd}, $sum{SHADOW_COST_MICROUSD}, 'shadow cost');
        is($j->{output_token_ratio}, 0 + sprintf('%.3f', $sum{SHADOW_OUTPUT_TOKENS} / $sum{OUTPUT_TOKENS}),
           'output-token ratio (shadow / primary)');
        like($j->{primary}{latency_ms}{p50}, qr/^\d+$/, 'primary p50 latency');
        like($j->{shadow}{latency_ms}{p95}, qr/^\d+$/, 'shadow p95 latency');
        is_deeply($j->{shadows}, ['shadow/cand-model'], 'the shadow route and model');
        is($j->{budget_reached}, 0, 'no budget reached');
        is_deeply($j->{shadow}{errors}, { '4xx' => 0, '5xx' => 0, transport => 0, other => 0 }, 'no shadow errors');

        $r = ctl('model', 'compare', $BAD, '--since', $since, '--include-tests', '--json');
        $j = json_decode($r->{stdout});
        is($j->{shadow}{errors}{'5xx'}, 1, 'a failing shadow: one 5xx on the shadow side');
        is($j->{primary}{errors}{'5xx'}, 0, '... none on the primary side');
        is($j->{agreement_pct}, 0, '... agreement 0%');

        $r = ctl('model', 'compare', $BUDGET, '--since', $since, '--include-tests', '--json');
        $j = json_decode($r->{stdout});
        is($j->{budget_reached}, 1, 'budget_reached counted');
        is($j->{pairs}, 2, '... after 2 pairs');

        $r = ctl('model', 'compare', $M, '--since', $since, '--include-tests');
        is($r->{exit}, 0, 'the table exits 0');
        like($r->{stdout}, qr/^model \Q$M\E: ${\ scalar(@p)} shadow pair\(s\) with shadow\/cand-model$/m, 'pairs');
        like($r->{stdout}, qr/agreement: 100\.0%/, 'agreement');
        like($r->{stdout}, qr/latency p50 ms\s+\d+\s+\d+/, 'p50 per side');
        like($r->{stdout}, qr/output-token ratio: 1\.286/, 'output-token ratio');

        $r = ctl('model', 'compare', $M, '--since', $since);
        like($r->{stdout}, qr/no shadow pairs/, 'test brokers\' records are left out without --include-tests');
};

subtest 'keybrokerctl model compare: no pairs, bad input' => sub {
        my $r = ctl('model', 'compare', "$P-nosuch", '--include-tests');
        is($r->{exit}, 0, 'an unknown model: exit 0');
        like($r->{stdout}, qr/^model \Q$P\E-nosuch: no shadow pairs/, '... saying there are no pairs');
        $r = ctl('model', 'compare', "$P-nosuch", '--include-tests', '--json');
        is(json_decode($r->{stdout})->{pairs}, 0, '... --json: pairs 0');
        for my $bad (['--since', 'yesterdayish'], ['--until', '2026-13-45'], []) {
                $r = ctl('model', 'compare', (@$bad ? ($M, @$bad) : ()));
                is($r->{exit}, 2, "bad input (@$bad): exit 2");
                like($r->{stderr}, qr/^keybrokerctl model compare: /, '... and says why');
        }
        $r = ctl('model', 'compare', $M, '--since', 'today', '--until', '-2d');
        is($r->{exit}, 2, '--since after --until: exit 2');
        $r = ctl('model', 'compare', '--help');
        is($r->{exit}, 0, '--help');
        like($r->{stdout}, qr/--since.*--until.*--json/s, '--help names the options');
        $r = ctl('model', 'compare', $M, '--directory', "/nonexistent-$P");
        is($r->{exit}, 1, 'a missing --directory: exit 1');
};

subtest 'a reload leaves a running shadow alone' => sub {
        my $res = req($broker, path => '/v1/chat/completions',
                      json => { model => $SLOW, messages => [{ role => 'user', content => 'hi' }] });
        is($res->{status}, 200, 'answered');
        wait_until(5, sub { grep { KB::Mock::body_json($_)->{model} eq 'slow-cand' } $mock_s->log_entries });
        (my $text = $broker->{config_text}) =~ s/^shadow = slowshadow .*\n//m;
        spew($broker->conf, $text);
        my $r = ctl('--admin-socket', $broker->dir . '/admin.sock', 'reload');
        is($r->{exit}, 0, 'reloaded without the shadow') or diag($r->{stderr});
        check_fields(pair_for(rid($res)), { KEYBROKER_SHADOW_STATUS => '200' }, 'the shadow in flight still ended in its pair');
        my $res2 = req($broker, path => '/v1/chat/completions',
                       json => { model => $SLOW, messages => [{ role => 'user', content => 'hi' }] });
        sleep 0.5;
        journal_sync();
        is(scalar(KB::journal_records({ MESSAGE_ID => $MID_SHADOW, KEYBROKER_REQUEST_ID => rid($res2) })), 0,
           'a request after the reload has no shadow');
        spew($broker->conf, $broker->{config_text});
        is(ctl('--admin-socket', $broker->dir . '/admin.sock', 'reload')->{exit}, 0, 'the shadow back');
};

subtest 'a staged candidate (a target of weight 0) is shadowed until traffic moves to it' => sub {
        my $body = { model => $STAGED, messages => [{ role => 'user', content => 'hi' }] };
        my $res = req($broker, path => '/v1/chat/completions', json => $body);
        is($res->{status}, 200, 'served by the route with the weight');
        my $pair = pair_for(rid($res));
        check_fields($pair, { KEYBROKER_ROUTE => 'oai', KEYBROKER_SHADOW_ROUTE => 'stagedshadow' }, 'mirrored');
        my @before = shadow_calls('staged');
        is(scalar(@before), 1, 'one call to the candidate: the shadow');

        my $admin = $broker->dir . '/admin.sock';
        my $r = ctl('--admin-socket', $admin, 'model', 'split', $STAGED, 'stagedshadow=1', 'oai=0');
        is($r->{exit}, 0, 'traffic moved to the candidate') or diag($r->{stderr});
        $res = req($broker, path => '/v1/chat/completions', json => $body);
        is($res->{status}, 200, 'served by the candidate');
        my $rec = journal_request(rid($res));
        is($rec->{KEYBROKER_ROUTE}, 'stagedshadow', '... as its record says');
        sleep 1;        # a shadow would have been journaled by now
        is(scalar(shadow_calls('staged')), 2, 'the candidate got that call once: no shadow of itself');
        is(scalar(KB::journal_records({ MESSAGE_ID => $MID_SHADOW, KEYBROKER_REQUEST_ID => rid($res) },
                                      since => $T0 - 2)), 0, 'no pair for it');
        is(ctl('--admin-socket', $admin, 'model', 'split', $STAGED, 'stagedshadow=0', 'oai=1')->{exit}, 0,
           'split set back');
};

subtest 'stopping cancels shadows in flight and keeps the day\'s spend' => sub {
        my $res = req($broker, path => '/v1/chat/completions',
                      json => { model => $SLOW, messages => [{ role => 'user', content => 'hi' }] });
        is($res->{status}, 200, 'answered; its shadow is slow');
        is($broker->stop, 0, 'the broker stops and exits 0 with a shadow in flight');
        sleep 3.5;
        journal_sync();
        is(scalar(KB::journal_records({ MESSAGE_ID => $MID_SHADOW, KEYBROKER_REQUEST_ID => rid($res) })), 0,
           'the cancelled shadow has no pair record');
        $broker->respawn;
        my $n0 = scalar(shadow_calls('budget'));
        $res = req($broker, path => '/v1/chat/completions',
                   json => { model => $BUDGET, messages => [{ role => 'user', content => 'hi' }] });
        is($res->{status}, 200, 'after the restart the app is served');
        sleep 0.5;
        is(scalar(shadow_calls('budget')), $n0, 'but its spent shadow stays off');
        my @b = KB::journal_records({ MESSAGE_ID => $MID_SHADOW, KEYBROKER_MODEL => $BUDGET,
                                      KEYBROKER_EVENT => 'budget_reached' }, since => $T0 - 2);
        is(scalar(@b), 1, 'budget_reached was journaled once');
        $res = req($broker, path => '/v1/chat/completions',
                   json => { model => $M, messages => [{ role => 'user', content => 'hi' }] });
        ok(pair_for(rid($res)), 'another model still has its shadow');
};

subtest 'at most 16 shadow calls in flight' => sub {
        my $conn = raw_connect($broker);
        my $ok = 0;
        for (1 .. 20) {
                $conn->send(KB::http_request('POST', '/v1/chat/completions',
                                             json => { model => $BUSY, messages => [{ role => 'user', content => 'x' }] }));
                my $res = $conn->read_response;
                $ok++ if $res && $res->{status} == 200;
        }
        $conn->close;
        is($ok, 20, 'every app call answered while their shadows hang');
        my @r = $broker->journal_wait({ MESSAGE_ID => $MID_SHADOW, KEYBROKER_MODEL => $BUSY,
                                        KEYBROKER_EVENT => 'skipped_busy' });
        check_fields($r[0], { KEYBROKER_SHADOW_SKIPPED => '1', KEYBROKER_SHADOW_ROUTE => 'busyshadow', PRIORITY => '4',
                              MESSAGE => qr/sampled request\(s\) not mirrored: 16 shadow calls already in flight/ },
                     'skipped_busy journaled (once a minute at most)');
        ok(wait_until(10, sub { scalar(shadow_calls('busy')) == 16 }), '16 shadow calls reached the provider');
        sleep 0.5;
        is(scalar(shadow_calls('busy')), 16, '... and no more');
        my $j = json_decode(ctl('model', 'compare', $BUSY, '--since', '@' . int($T0 - 2), '--include-tests',
                                '--json')->{stdout});
        is($j->{skipped_busy}, 1, 'model compare counts it');
        is($j->{pairs}, 0, '... with no pair yet');
};

subtest 'bad shadow settings are refused by --check-config' => sub {
        my $D = tmpdir('shcfg');
        mkdir "$D/creds";
        spew("$D/creds/$_", "$keys{$_}\n", 0600) for keys %keys;
        my $base = <<"EOF";
[agent]
listen = $D/api.sock
admin = $D/admin.sock
credentials_dir = $D/creds
state_dir = $D/state

[team:t]
users = 0
models = *

[route:oai]
family = openai
base_url = http://127.0.0.1:9/v1
key = oai-key

[route:cand]
family = openai
base_url = http://127.0.0.1:9/v1
key = shadow-key

[route:anth]
family = anthropic
base_url = http://127.0.0.1:9/v1
key = anth-key

[model:m]
target = oai gpt-4o-mini
fallback = cand gpt-x
EOF
        my $n = 0;
        my @cases = (
                [ 'shadow = cand cand-model sample=1 budget_usd_per_day=1', qr/shadow: route 'cand' is already a fallback of the model/ ],
                [ 'shadow = oai cand-model sample=1 budget_usd_per_day=1', qr/shadow: route 'oai' is already a target with a weight of the model/ ],
                [ 'shadow = anth claude sample=1 budget_usd_per_day=1', qr/shadow: route 'anth' speaks the anthropic API/ ],
                [ 'shadow = nope x sample=1 budget_usd_per_day=1', qr/shadow: unknown route 'nope'/ ],
                [ 'shadow = anth x sample=0 budget_usd_per_day=1', qr/'sample=0' is not sample=R with R above 0, at most 1/ ],
                [ 'shadow = anth x sample=1.5 budget_usd_per_day=1', qr/'sample=1.5' is not sample=R/ ],
                [ 'shadow = anth x sample=half budget_usd_per_day=1', qr/'sample=half' is not sample=R/ ],
                [ 'shadow = anth x sample=1 budget_usd_per_day=0', qr/'budget_usd_per_day=0' is not budget_usd_per_day=USD with USD above 0/ ],
                [ 'shadow = anth x sample=1 budget_usd_per_day=-3', qr/'budget_usd_per_day=-3' is not budget_usd_per_day=USD/ ],
                [ 'shadow = anth x sample=1', qr/expected 'ROUTE UPSTREAM_MODEL sample=R budget_usd_per_day=USD'/ ],
                [ 'shadow = anth x sample=1 sample=1', qr/'sample=1' is not sample=R or budget_usd_per_day=USD \(each once\)/ ],
        );
        for my $c (@cases) {
                my ($line, $want) = @$c;
                my $f = "$D/c" . ++$n . '.conf';
                spew($f, "$base$line\n");
                my $r = run_cmd([$KB::KEYBROKERD, '--check-config', '--config', $f], timeout => 10);
                is($r->{exit}, 1, "'$line': exit 1");
                like($r->{stderr}, qr/^\Q$f\E:\d+: .*$want/m, '... FILE:LINE: and why') or diag($r->{stderr});
        }
        my $f = "$D/good.conf";
        (my $good = $base) =~ s/^fallback = .*\n//m;
        spew($f, "${good}shadow = cand cand-model sample=0.25 budget_usd_per_day=2.5\n");
        my $r = run_cmd([$KB::KEYBROKERD, '--check-config', '--config', $f], timeout => 10);
        is($r->{exit}, 0, 'a good shadow passes') or diag($r->{stderr});
        $f = "$D/staged.conf";
        spew($f, "${good}target = cand cand-model weight=0\nshadow = cand cand-model sample=0.25 budget_usd_per_day=2.5\n");
        $r = run_cmd([$KB::KEYBROKERD, '--check-config', '--config', $f], timeout => 10);
        is($r->{exit}, 0, 'a shadow on a target of weight 0 (a staged candidate) passes') or diag($r->{stderr});
};

ok($broker->alive, 'broker still running');
is($broker->stop, 0, 'broker exits 0 with 16 shadows in flight') or diag($broker->log);
is($plain->stop, 0, 'the plain broker exits 0') or diag($plain->log);
done_testing;
