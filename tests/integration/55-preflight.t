#!/usr/bin/perl
# Preflight: `keybrokerctl route check NAME [--model M]` (POST
# /routes/NAME/check) against live routes to the mock. A good route passes
# all seven checks (exit 0), its evidence file is saved 0600 under
# state_dir/evidence without the secret, and the journal has one record per
# check plus a summary. A wrong key fails the credentials check, a model the
# provider does not list fails "model listed", a route to a closed port
# fails everything yet answers cleanly and quickly; an unknown route is a
# 404 / exit 1; --json prints the evidence document.
use v5.36;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time);
use KB;

my $CTL = $ENV{KEYBROKERCTL} // "$KB::BUILD/keybrokerctl";
plan skip_all => "keybrokerctl not built: $CTL" unless -x $CTL;

my $MID_PREFLIGHT = 'ed744d6e5d9d4128b630050956cdab33';
my $OK = "\xe2\x9c\x93";        # ✓ as UTF-8 bytes
my $FAIL = "\xe2\x9c\x97";      # ✗
my @CHECKS = qw(credentials model_listed non_streaming streaming usage bogus_model latency);

my $oai_secret = fixture_secret('pf-oai');
my $anth_secret = fixture_secret('pf-anth');
my $wrong_secret = fixture_secret('pf-wrong');

my $mock = start_mock(require_key => [$oai_secret, $anth_secret],
                      models => ['gpt-4o-mini-2024-07-18', 'gpt-4o-2024-08-06', 'claude-3-5-haiku-20241022',
                                 'text-embedding-3-small']);
my $closed_port = free_port();

my $cfg = standard_config(mock => $mock);
# The default model is the first a target names in file order (sections
# are rendered sorted: [model:gpt-big] first); [model:emb] would come
# before it and is no chat model.
delete $cfg->{'model:emb'};
$cfg->{'route:badkey'} = { family => 'openai', base_url => $mock->base_url, key => 'wrong-key', auth => 'bearer',
                           timeout => '30s' };
$cfg->{'route:closed'} = { family => 'openai', base_url => "http://127.0.0.1:$closed_port/v1", key => 'oai-key',
                           timeout => '30s', connect_timeout => '5s' };
$cfg->{'route:unlisted'} = { family => 'openai', base_url => $mock->base_url, key => 'oai-key', timeout => '30s' };
$cfg->{'route:slow'} = { family => 'openai', base_url => $mock->base_url, key => 'oai-key', timeout => '1s',
                        header => 'x-mock-hang: 1' };
$cfg->{'model:slow-model'} = { target => 'slow gpt-4o-mini-2024-07-18' };
$cfg->{'route:lonely'} = { family => 'openai', base_url => $mock->base_url, key => 'oai-key' };
$cfg->{'model:badkey-model'} = { target => 'badkey gpt-4o-mini-2024-07-18' };
$cfg->{'model:closed-model'} = { target => 'closed gpt-4o-mini-2024-07-18' };
$cfg->{'model:unlisted-model'} = { target => 'unlisted gpt-5-preview-not-here' };

my $b = start_broker(config => $cfg,
                     keys => { 'oai-key' => $oai_secret, 'anth-key' => $anth_secret, 'wrong-key' => $wrong_secret });
my $admin = $b->dir . '/admin.sock';
my $evdir = $b->dir . '/state/evidence';

sub ctl(@args) {
        my $r = run_cmd([$CTL, '--admin-socket', $admin, @args], timeout => 70);
        note("keybrokerctl @args -> exit " . ($r->{exit} // 'signal') . "\n$r->{stdout}$r->{stderr}")
                if $ENV{KB_VERBOSE};
        return $r;
}

# CHECK -> [mark, rest of the line] from the table.
sub table_rows($out) {
        my %rows;
        for my $l (split /\n/, $out) {
                my ($check, $mark, $rest) = $l =~ /^(\w+)\s+(\Q$OK\E|\Q$FAIL\E)\s+(.*)$/ or next;
                $rows{$check} = [$mark, $rest];
        }
        return \%rows;
}

sub no_secret_in($text, $name) {
        for my $s ($oai_secret, $anth_secret, $wrong_secret) {
                unlike($text, qr/\Q$s\E/, "$name: no secret in it");
        }
}

subtest 'a good OpenAI route passes every check' => sub {
        my $t0 = time;
        my $r = ctl('route', 'check', 'oai');
        is($r->{exit}, 0, 'exit 0') or diag("stdout: $r->{stdout}\nstderr: $r->{stderr}");
        like($r->{stdout}, qr/^CHECK\s+RESULT\s+DETAIL\s+LATENCY/m, 'a table with CHECK RESULT DETAIL LATENCY');
        my $rows = table_rows($r->{stdout});
        is_deeply([sort keys %$rows], [sort @CHECKS], 'one row per check');
        for my $c (@CHECKS) {
                is($rows->{$c}[0], $OK, "$c $OK") or diag("$c: $rows->{$c}[1]");
                like($rows->{$c}[1], qr/\d+ ms$/, "$c: latency in ms");
        }
        like($rows->{credentials}[1], qr/HTTP 200 with oai-key\@\d+/, 'credentials: the key label, name@version');
        like($rows->{model_listed}[1], qr/gpt-4o-2024-08-06 listed \(4 models\)/,
             'model listed: the default model, the first a target names');
        like($rows->{streaming}[1], qr/text\/event-stream, 7 deltas, \[DONE\] seen/, 'streaming: [DONE] seen');
        like($rows->{usage}[1], qr/11 in \/ 7 out, total 18; streaming 11 in \/ 7 out/, 'usage figures');
        like($rows->{bogus_model}[1], qr/HTTP 404 model_not_found/, 'bogus model: 404 model_not_found');
        like($rows->{latency}[1], qr/p50 \d+ ms, max \d+ ms over 4 calls \(route timeout 30 s\)/, 'latency figures');
        my ($path) = $r->{stdout} =~ /^evidence: (\S+)$/m;
        ok($path, 'the evidence path is printed');
        like($path // '', qr{^\Q$evdir\E/oai-\d{8}T\d{6}Z(-\d+)?\.json$}, 'evidence under state_dir/evidence');
        ok(-f $path, 'the evidence file exists');
        is((stat $path)[2] & 07777, 0600, 'evidence file mode 0600');
        is((stat $evdir)[2] & 07777, 0700, 'evidence dir mode 0700');
        my $text = slurp($path) // '';
        no_secret_in($text, 'evidence file');
        no_secret_in($r->{stdout} . $r->{stderr}, 'ctl output');
        my $ev = json_decode($text);
        ok($ev, 'the evidence is JSON') or return;
        is($ev->{route}, 'oai', 'evidence: route');
        is($ev->{base_url}, $mock->base_url, 'evidence: base_url');
        is($ev->{family}, 'openai', 'evidence: family');
        is($ev->{model}, 'gpt-4o-2024-08-06', 'evidence: model');
        like($ev->{key}, qr/^oai-key\@\d+$/, 'evidence: key name@version');
        ok($ev->{ok}, 'evidence: ok');
        like($ev->{$_}, qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/, "evidence: $_ ISO time") for qw(started finished);
        is_deeply([map { $_->{name} } @{$ev->{checks}}], \@CHECKS, 'evidence: the checks in order');
        for my $c (@{$ev->{checks}}) {
                ok(JSON::PP::is_bool($c->{ok}) && $c->{ok}, "evidence: $c->{name} ok");
                ok(length $c->{detail}, "evidence: $c->{name} detail");
                like($c->{latency_ms}, qr/^\d+$/, "evidence: $c->{name} latency_ms");
        }
        is_deeply([map { "$_->{call} $_->{method} $_->{status}" } @{$ev->{calls}}],
                  ['models GET 200', 'non_streaming POST 200', 'streaming POST 200', 'bogus_model POST 404'],
                  'evidence: the calls made and their statuses');
        is($ev->{calls}[2]{content_type}, 'text/event-stream', 'evidence: the stream call content type');
        ok(time - $t0 < 30, 'answered promptly');

        # What the provider saw: the route's key on every call, the bogus model.
        my @e = grep { ($_->{path} // '') =~ m{^/v1/(models|chat/completions)$} } $mock->log_entries;
        my @mine = @e[-4 .. -1];
        is_deeply([map { "$_->{method} $_->{path}" } @mine],
                  ['GET /v1/models', 'POST /v1/chat/completions', 'POST /v1/chat/completions',
                   'POST /v1/chat/completions'], 'the calls: models, plain, stream, bogus');
        is($_->{headers}{authorization}, "Bearer $oai_secret", "$_->{method} $_->{path}: the route's key") for @mine;
        my $plain = KB::Mock::body_json($mine[1]);
        is($plain->{max_tokens}, 5, 'plain call: max_tokens 5');
        ok(!$plain->{stream}, 'plain call: not streamed');
        my $stream = KB::Mock::body_json($mine[2]);
        ok($stream->{stream} && $stream->{stream_options}{include_usage}, 'stream call asks for usage');
        like(KB::Mock::body_json($mine[3])->{model}, qr/^keybroker-preflight-no-such-model-[0-9a-f]+$/,
             'bogus call: a made-up model');

        # One journal record per check, then a summary.
        my @rec = $b->journal_wait({ MESSAGE_ID => $MID_PREFLIGHT, KEYBROKER_ROUTE => 'oai' }, 10, count => 8);
        is(scalar @rec, 8, '8 preflight records (7 checks + summary)') or return;
        is_deeply([map { $_->{KEYBROKER_CHECK} } @rec], [@CHECKS, 'summary'], 'records in check order');
        for my $rec (@rec) {
                is($rec->{KEYBROKER_CHECK_OK}, '1', "record $rec->{KEYBROKER_CHECK}: ok 1");
                like($rec->{KEYBROKER_LATENCY_MS}, qr/^\d+$/, "record $rec->{KEYBROKER_CHECK}: latency");
                ok(length $rec->{KEYBROKER_CHECK_DETAIL}, "record $rec->{KEYBROKER_CHECK}: detail");
                is($rec->{KEYBROKER_MODEL}, 'gpt-4o-2024-08-06', "record $rec->{KEYBROKER_CHECK}: model");
        }
        is($rec[-1]{KEYBROKER_EVIDENCE}, $path, 'summary names the evidence file');
        like($rec[-1]{MESSAGE}, qr/passed/, 'summary MESSAGE says passed');
        no_secret_in(join("\n", map { join "\n", values %$_ } @rec), 'journal records');
};

subtest 'an Anthropic route passes, and --json prints the evidence' => sub {
        my $r = ctl('--json', 'route', 'check', 'anth');
        is($r->{exit}, 0, 'exit 0') or diag("stdout: $r->{stdout}\nstderr: $r->{stderr}");
        my $j = json_decode($r->{stdout});
        ok($j, '--json prints JSON') or return;
        ok($j->{ok}, 'ok true');
        is($j->{family}, 'anthropic', 'family anthropic');
        is($j->{model}, 'claude-3-5-haiku-20241022', 'the default model');
        like($j->{key}, qr/^anth-key\@\d+$/, 'key label');
        is(scalar @{$j->{checks}}, 7, '7 checks');
        ok(!grep({ !$_->{ok} } @{$j->{checks}}), 'all ok')
                or diag(join "\n", map { "$_->{name}: $_->{detail}" } @{$j->{checks}});
        my %c = map { $_->{name} => $_ } @{$j->{checks}};
        like($c{streaming}{detail}, qr/message_stop seen/, 'streaming: message_stop seen');
        like($c{bogus_model}{detail}, qr/HTTP 404 not_found_error/, 'bogus model: 404 not_found_error');
        ok($j->{evidence_path} && -f $j->{evidence_path}, 'evidence_path names a file');
        my $e = $mock->last_entry;
        is($e->{headers}{'x-api-key'}, $anth_secret, 'x-api-key sent');
        is($e->{headers}{'anthropic-version'}, '2023-06-01', 'anthropic-version sent');
        no_secret_in($r->{stdout}, '--json output');
};

subtest '--model picks the model; one the provider does not list fails' => sub {
        my $r = ctl('route', 'check', 'oai', '--model', 'gpt-4o-mini-2024-07-18');
        is($r->{exit}, 0, 'a listed --model: exit 0') or diag($r->{stdout});
        like($r->{stdout}, qr/model gpt-4o-mini-2024-07-18,/, 'the model checked is named');
        like($r->{stdout}, qr/gpt-4o-mini-2024-07-18 listed/, 'and listed');

        $r = ctl('route', 'check', 'unlisted');
        is($r->{exit}, 1, 'a model not listed: exit 1');
        my $rows = table_rows($r->{stdout});
        is($rows->{credentials}[0], $OK, 'credentials still pass');
        is($rows->{model_listed}[0], $FAIL, "model listed $FAIL");
        like($rows->{model_listed}[1], qr/gpt-5-preview-not-here is not among the 4 models listed/,
             'says which model is missing');
        is($rows->{non_streaming}[0], $FAIL, "the call to it $FAIL too");
        like($r->{stdout}, qr/preflight FAILED/, 'says FAILED');
        like($r->{stdout}, qr/^evidence: \S+/m, 'evidence saved for a failure too');

        $r = ctl('--json', 'route', 'check', 'oai', '--model', 'no-such-thing');
        is($r->{exit}, 1, '--json with a failing check: exit 1');
        my $j = json_decode($r->{stdout});
        ok($j && JSON::PP::is_bool($j->{ok}) && !$j->{ok}, '--json: ok false');
};

subtest 'a wrong key fails the credentials check' => sub {
        my $r = ctl('route', 'check', 'badkey');
        is($r->{exit}, 1, 'exit 1');
        my $rows = table_rows($r->{stdout});
        is($rows->{credentials}[0], $FAIL, "credentials $FAIL");
        like($rows->{credentials}[1], qr/HTTP 401: refused: Incorrect API key provided/, 'says the key was refused');
        is($rows->{$_}[0], $FAIL, "$_ $FAIL") for qw(model_listed non_streaming streaming usage);
        no_secret_in($r->{stdout} . $r->{stderr}, 'output');
        my @rec = $b->journal_wait({ MESSAGE_ID => $MID_PREFLIGHT, KEYBROKER_ROUTE => 'badkey',
                                     KEYBROKER_CHECK => 'credentials' });
        is($rec[0]{KEYBROKER_CHECK_OK}, '0', 'journal: credentials ok 0');
        is($rec[0]{PRIORITY}, '4', 'journal: a failed check is a warning');
        my @sum = $b->journal_wait({ MESSAGE_ID => $MID_PREFLIGHT, KEYBROKER_ROUTE => 'badkey',
                                     KEYBROKER_CHECK => 'summary' });
        is($sum[0]{KEYBROKER_CHECK_OK}, '0', 'journal: summary ok 0');
};

subtest 'a route to a closed port fails everything, cleanly and quickly' => sub {
        my $t0 = time;
        my $r = ctl('--json', 'route', 'check', 'closed');
        my $took = time - $t0;
        is($r->{exit}, 1, 'exit 1');
        my $j = json_decode($r->{stdout});
        ok($j, 'still a JSON answer') or return diag($r->{stdout} . $r->{stderr});
        is(scalar @{$j->{checks}}, 7, 'every check reported');
        for my $c (@{$j->{checks}}) {
                ok(!$c->{ok}, "$c->{name} fails");
        }
        like($j->{checks}[0]{detail}, qr/no answer/, 'credentials: no answer');
        like($j->{checks}[6]{detail}, qr/no call was answered/, 'latency: no call answered');
        ok($took < 20, sprintf('answered within the bound (%.1f s)', $took));
        ok(-f $j->{evidence_path}, 'evidence saved');
};

subtest "a route that never answers: each call cut at the route's timeout" => sub {
        my $t0 = time;
        my $r = ctl('--json', 'route', 'check', 'slow');
        my $took = time - $t0;
        is($r->{exit}, 1, 'exit 1');
        my $j = json_decode($r->{stdout}) or return diag($r->{stdout} . $r->{stderr});
        my %c = map { $_->{name} => $_ } @{$j->{checks}};
        like($c{$_}{detail}, qr/^no answer within \d+ ms/, "$_: no answer within the timeout")
                for qw(credentials model_listed non_streaming streaming bogus_model);
        ok(!$c{$_}{ok}, "$_ fails") for @CHECKS;
        ok($took >= 3.5 && $took < 15, sprintf('four calls of about 1 s each (%.1f s)', $took));

        # The operator gives up: the daemon still finishes, saves and journals.
        my @before = glob("$evdir/slow-*.json");
        $r = run_cmd([$CTL, '--admin-socket', $admin, 'route', 'check', 'slow'], timeout => 1);
        ok(!defined $r->{exit} || $r->{exit} != 0, 'keybrokerctl killed while the check runs');
        my @sum = $b->journal_wait({ MESSAGE_ID => $MID_PREFLIGHT, KEYBROKER_ROUTE => 'slow',
                                     KEYBROKER_CHECK => 'summary' }, 20, count => 2);
        is(scalar @sum, 2, 'the abandoned run still journals its summary');
        ok(wait_until(5, sub { my @now = glob("$evdir/slow-*.json"); @now > @before }), 'and saves its evidence');
        ok($b->alive, 'the broker is fine');
        my $s = ctl('status');
        is($s->{exit}, 0, 'and answers on the admin socket');
};

subtest 'unknown route, route without a model, bad requests' => sub {
        my $r = ctl('route', 'check', 'nope');
        is($r->{exit}, 1, 'unknown route: exit 1');
        like($r->{stderr}, qr/^keybrokerctl: no route 'nope'/, 'the daemon says so');
        is($r->{stdout}, '', 'nothing on stdout');

        $r = ctl('route', 'check', 'lonely');
        is($r->{exit}, 1, 'a route no model targets: exit 1');
        like($r->{stderr}, qr/--model/, 'asks for --model');

        my $res = req($admin, method => 'POST', path => '/routes/nope/check');
        is($res->{status}, 404, 'POST /routes/nope/check: 404');
        is($res->{json}{error}{code}, 'not_found', 'code not_found');
        $res = req($admin, method => 'GET', path => '/routes/oai/check');
        is($res->{status}, 405, 'GET /routes/oai/check: 405');
        $res = req($admin, method => 'POST', path => '/routes/oai/check', body => '[1]');
        is($res->{status}, 400, 'a body that is not {"model":…}: 400');
        $res = req($admin, method => 'POST', path => '/routes/oai/check', json => { model => 'x', extra => 1 });
        is($res->{status}, 400, 'an unknown member: 400');
        $res = req($admin, method => 'POST', path => '/routes/oai/other');
        is($res->{status}, 404, 'POST /routes/oai/other: 404');

        for my $args (['route', 'check'], ['route', 'check', 'a', 'b'], ['route', 'check', 'oai', '--model'],
                      ['route', 'check', 'oai', '--frob']) {
                $r = ctl(@$args);
                is($r->{exit}, 2, "@$args: usage error, exit 2");
        }
        $r = ctl('route', 'check', '--help');
        is($r->{exit}, 0, 'route check --help: exit 0');
        like($r->{stdout}, qr/^Usage: keybrokerctl .*route check NAME \[--model M\]/, 'usage on stdout');
        $r = ctl('--help');
        like($r->{stdout}, qr/route check NAME \[--model M\]/, 'top-level help names route check');
};

ok($b->alive, 'the broker is still up');
done_testing;
