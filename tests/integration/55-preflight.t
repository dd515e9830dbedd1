#!/usr/bin/perl
# Preflight: `keybrokerctl route check NAME [--model M]` (POST
# /routes/NAME/check) against live routes to the mock: the shape of the
# ten-point run. A good route passes all ten checks (exit 0), its evidence
# file is saved 0600 under state_dir/evidence without the secret, and the
# journal has one record per check plus a summary. A wrong key fails the
# model check's credentials, a model the provider does not list fails it
# too, a route to a closed port fails every call yet answers cleanly and
# quickly; an unknown route is a 404 / exit 1; --json prints the evidence
# document. Each point passing and failing: 56-preflight-points.t.
#
# Where the seven checks of the first version went: credentials and
# model_listed are parts of "model"; non_streaming is "endpoint"'s chat
# (messages) part; streaming and usage are "usage"; bogus_model is a part
# of "failures"; latency is evidence of each call (calls[].latency_ms) and
# the run's "latency" summary.
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
my @CHECKS = qw(model endpoint features usage pricing status failures fallback owner rollback);

my $oai_secret = fixture_secret('pf-oai');
my $anth_secret = fixture_secret('pf-anth');
my $wrong_secret = fixture_secret('pf-wrong');

# A floor on every answer's latency, so the failures check's 1 ms timeout
# fires on loopback as it does against a real provider.
my $mock = start_mock(args => ['--min-latency-ms', 20], require_key => [$oai_secret, $anth_secret],
                           models => ['gpt-4o-mini-2024-07-18', 'gpt-4o-2024-08-06', 'claude-3-5-haiku-20241022',
                                      'text-embedding-3-small']);
my $closed_port = free_port();
my $status_url = 'http://127.0.0.1:' . $mock->port . '/api/v2/status.json';

my $cfg = standard_config(mock => $mock);
# What the playbook asks of a good route: owners, a status page, prices.
$cfg->{'team:search'}{owner} = 'search@example.com';
$cfg->{'route:oai'}{$_->[0]} = $_->[1] for ['owner', 'platform@example.com'], ['key_owner', 'keys@example.com'],
        ['status_url', $status_url];
$cfg->{'route:oai'}{price} = ['gpt-4o-mini-2024-07-18 input=1 output=2', 'gpt-4o-2024-08-06 input=2.5 output=10',
                              'text-embedding-3-small input=0.02'];
$cfg->{'route:anth'}{$_->[0]} = $_->[1] for ['owner', 'platform@example.com'], ['key_owner', 'keys@example.com'],
        ['status_url', $status_url];
$cfg->{'route:anth'}{price} = 'claude-3-5-haiku-20241022 input=0.8 output=4';
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
                my ($check, $mark, $rest) = $l =~ /^(\w+)\s+(\Q$OK\E|\Q$FAIL\E|skipped)\s+(.*)$/ or next;
                $rows{$check} = [$mark, $rest];
        }
        return \%rows;
}

sub part($check, $name) {
        my ($p) = grep { $_->{name} eq $name } @{$check->{parts} // []};
        return $p // {};
}

sub no_secret_in($text, $name) {
        for my $s ($oai_secret, $anth_secret, $wrong_secret) {
                unlike($text, qr/\Q$s\E/, "$name: no secret in it");
        }
}

subtest 'a good OpenAI route passes every check' => sub {
        my $t0 = time;
        my $seen = $mock->count;
        my $r = ctl('route', 'check', 'oai');
        is($r->{exit}, 0, 'exit 0') or diag("stdout: $r->{stdout}\nstderr: $r->{stderr}");
        like($r->{stdout}, qr/^CHECK\s+RESULT\s+DETAIL\s+LATENCY/m, 'a table with CHECK RESULT DETAIL LATENCY');
        my $rows = table_rows($r->{stdout});
        is_deeply([sort keys %$rows], [sort @CHECKS], 'one row per check');
        for my $c (@CHECKS) {
                is($rows->{$c}[0], $OK, "$c $OK") or diag("$c: $rows->{$c}[1]");
                like($rows->{$c}[1], qr/\d+ ms$/, "$c: latency in ms");
        }
        like($rows->{model}[1], qr/credentials: HTTP 200 with oai-key\@\d+/, 'model: the key label, name@version');
        like($rows->{model}[1], qr/listed: gpt-4o-2024-08-06 listed \(4 models\)/,
             'model: the default model, the first chat model a target names, is listed');
        like($rows->{endpoint}[1], qr/chat: HTTP 200, well-formed, model gpt-4o-2024-08-06/, 'endpoint: chat');
        like($rows->{endpoint}[1], qr/responses: HTTP 200, well-formed/, 'endpoint: responses');
        like($rows->{endpoint}[1], qr/embeddings: HTTP 200, well-formed, model text-embedding-3-small/,
             'endpoint: embeddings, with the route\'s embedding model');
        like($rows->{usage}[1], qr/non-streaming 11 in \/ 7 out \/ 0 cached, total 18; streaming 11 in \/ 7 out \/ 0 cached/,
             'usage figures, both ways');
        like($rows->{failures}[1], qr/bogus_model: HTTP 404 model_not_found/, 'failures: bogus model 404 model_not_found');
        like($rows->{failures}[1], qr/wrong_key: HTTP 401 invalid_api_key/, 'failures: a made-up key 401');
        like($rows->{failures}[1], qr/timeout: no answer within 1 ms .*504 upstream_timeout/, 'failures: timeout 504');
        like($rows->{features}[1], qr/no features declared/, 'features: none declared');
        like($r->{stdout}, qr/^rollback: keybrokerctl model split gpt-big oai=1$/m, 'the rollback line is printed');
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
        is($ev->{model_reported}, 'gpt-4o-2024-08-06', 'evidence: the model as reported');
        like($ev->{key}, qr/^oai-key\@\d+$/, 'evidence: key name@version');
        ok($ev->{ok}, 'evidence: ok');
        is_deeply($ev->{checked}, \@CHECKS, 'evidence: every check run');
        is_deeply($ev->{skipped}, [], 'evidence: none skipped');
        like($ev->{$_}, qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/, "evidence: $_ ISO time") for qw(started finished);
        is_deeply([map { $_->{name} } @{$ev->{checks}}], \@CHECKS, 'evidence: the checks in order');
        for my $c (@{$ev->{checks}}) {
                ok(JSON::PP::is_bool($c->{ok}) && $c->{ok}, "evidence: $c->{name} ok");
                is($c->{result}, 'passed', "evidence: $c->{name} passed");
                ok(length $c->{detail}, "evidence: $c->{name} detail");
                like($c->{latency_ms}, qr/^\d+$/, "evidence: $c->{name} latency_ms");
        }
        my %c = map { $_->{name} => $_ } @{$ev->{checks}};
        like($c{model}{checked_at}, qr/^\d{4}-\d\d-\d\dT/, 'model: the date checked');
        is(part($c{model}, 'credentials')->{ok}, JSON::PP::true, 'model part credentials');
        is(part($c{model}, 'listed')->{ok}, JSON::PP::true, 'model part listed');
        like(part($c{failures}, $_)->{latency_ms}, qr/^\d+$/, "failures part $_: its latency") for qw(wrong_key bogus_model timeout);
        is($c{status}{indicator}, 'none', 'status: indicator none');
        is($c{status}{description}, 'All Systems Operational', 'status: description');
        like($c{pricing}{total_microusd}, qr/^\d+$/, 'pricing: total micro-USD');
        ok($c{pricing}{total_microusd} > 0, 'pricing: the probes cost something');
        is_deeply([sort @{$c{rollback}{commands}}],
                  ['keybrokerctl model split emb oai=1', 'keybrokerctl model split gpt-big oai=1',
                   'keybrokerctl model split gpt-mini oai=1'], 'rollback: the commands in the evidence');
        is_deeply([map { "$_->{call} $_->{method} " . ($_->{status} // 'none') } @{$ev->{calls}}],
                  ['models GET 200', 'chat POST 200', 'chat stream POST 200', 'responses POST 200',
                   'embeddings POST 200', 'wrong key POST 401', 'bogus model POST 404', 'timeout POST none',
                   'rollback oai/gpt-4o-mini-2024-07-18 POST 200', 'status GET 200'],
                  'evidence: the calls made and their statuses');
        like($_->{latency_ms}, qr/^\d+$/, "call $_->{call}: latency_ms") for @{$ev->{calls}};
        is($ev->{calls}[2]{content_type}, 'text/event-stream', 'evidence: the stream call content type');
        like($ev->{latency}{p50_ms}, qr/^\d+$/, 'evidence: p50 of the calls');
        ok(time - $t0 < 30, 'answered promptly');

        # What the provider saw: the route's key on every call but the made-up one.
        my @mine = ($mock->log_entries)[$seen .. $mock->count - 1];
        my @api = grep { $_->{path} =~ m{^/v1/} } @mine;
        for my $e (@api) {
                my $auth = $e->{headers}{authorization} // '';
                next if $auth =~ /^Bearer sk-keybroker-preflight-invalid-[0-9a-f]{32}$/;
                is($auth, "Bearer $oai_secret", "$e->{method} $e->{path}: the route's key");
        }
        is(scalar(grep { ($_->{headers}{authorization} // '') =~ /preflight-invalid/ } @api), 1,
           'one call with a made-up key');
        my ($status) = grep { $_->{path} eq '/api/v2/status.json' } @mine;
        ok($status && !exists $status->{headers}{authorization}, 'the status page gets no key');
        my @chat = map { KB::Mock::body_json($_) } grep { $_->{path} eq '/v1/chat/completions' } @api;
        my ($plain) = grep { !$_->{stream} && $_->{model} eq 'gpt-4o-2024-08-06' } @chat;
        is($plain->{max_tokens}, 5, 'plain call: max_tokens 5');
        my ($stream) = grep { $_->{stream} } @chat;
        ok($stream && $stream->{stream_options}{include_usage}, 'stream call asks for usage');
        ok((grep { $_->{model} =~ /^keybroker-preflight-no-such-model-[0-9a-f]+$/ } @chat), 'bogus call: a made-up model');

        # One journal record per check, then a summary.
        my @rec = $b->journal_wait({ MESSAGE_ID => $MID_PREFLIGHT, KEYBROKER_ROUTE => 'oai' }, 10, count => 11);
        is(scalar @rec, 11, '11 preflight records (10 checks + summary)') or return;
        is_deeply([map { $_->{KEYBROKER_CHECK} } @rec], [@CHECKS, 'summary'], 'records in check order');
        for my $rec (@rec) {
                is($rec->{KEYBROKER_CHECK_OK}, '1', "record $rec->{KEYBROKER_CHECK}: ok 1");
                is($rec->{KEYBROKER_CHECK_RESULT}, 'passed', "record $rec->{KEYBROKER_CHECK}: passed");
                like($rec->{KEYBROKER_LATENCY_MS}, qr/^\d+$/, "record $rec->{KEYBROKER_CHECK}: latency");
                ok(length $rec->{KEYBROKER_CHECK_DETAIL}, "record $rec->{KEYBROKER_CHECK}: detail");
                is($rec->{KEYBROKER_MODEL}, 'gpt-4o-2024-08-06', "record $rec->{KEYBROKER_CHECK}: model");
        }
        is($rec[-1]{KEYBROKER_EVIDENCE}, $path, 'summary names the evidence file');
        like($rec[-1]{MESSAGE}, qr/passed: 10 of 10 checks passed, 0 skipped/, 'summary MESSAGE says passed');
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
        is(scalar @{$j->{checks}}, 10, '10 checks');
        ok(!grep({ !$_->{ok} } @{$j->{checks}}), 'all ok')
                or diag(join "\n", map { "$_->{name}: $_->{detail}" } @{$j->{checks}});
        my %c = map { $_->{name} => $_ } @{$j->{checks}};
        like(part($c{endpoint}, 'messages')->{detail}, qr/HTTP 200, well-formed/, 'endpoint: messages');
        is(scalar @{$c{endpoint}{parts}}, 1, 'endpoint: messages only');
        like($c{usage}{detail}, qr/non-streaming 11 in \/ 7 out \/ 0 cached; streaming 11 in \/ 7 out \/ 0 cached/,
             'usage: Anthropic figures');
        like(part($c{failures}, 'bogus_model')->{detail}, qr/HTTP 404 not_found_error/, 'bogus model: 404 not_found_error');
        like(part($c{failures}, 'wrong_key')->{detail}, qr/HTTP 401 authentication_error/, 'wrong key: 401');
        ok($j->{evidence_path} && -f $j->{evidence_path}, 'evidence_path names a file');
        my ($e) = grep { $_->{path} eq '/v1/messages' && ($_->{headers}{'x-api-key'} // '') eq $anth_secret }
                reverse $mock->log_entries;
        ok($e, 'x-api-key sent');
        is($e->{headers}{'anthropic-version'}, '2023-06-01', 'anthropic-version sent');
        no_secret_in($r->{stdout}, '--json output');
};

subtest '--model picks the model; one the provider does not list fails' => sub {
        my $r = ctl('route', 'check', 'oai', '--model', 'gpt-4o-mini-2024-07-18');
        is($r->{exit}, 0, 'a listed --model: exit 0') or diag($r->{stdout});
        like($r->{stdout}, qr/model gpt-4o-mini-2024-07-18 reported as gpt-4o-mini-2024-07-18,/, 'the model checked is named');
        like($r->{stdout}, qr/gpt-4o-mini-2024-07-18 listed/, 'and listed');

        $r = ctl('route', 'check', 'unlisted', '--only', 'model,endpoint');
        is($r->{exit}, 1, 'a model not listed: exit 1');
        my $rows = table_rows($r->{stdout});
        is($rows->{model}[0], $FAIL, "model $FAIL");
        like($rows->{model}[1], qr/listed: gpt-5-preview-not-here is not among the 4 models listed/,
             'says which model is missing');
        unlike($rows->{model}[1], qr/credentials:/, 'credentials still pass (only failing parts are named)');
        is($rows->{endpoint}[0], $FAIL, "the call to it $FAIL too");
        like($r->{stdout}, qr/preflight FAILED/, 'says FAILED');
        like($r->{stdout}, qr/^evidence: \S+/m, 'evidence saved for a failure too');

        $r = ctl('--json', 'route', 'check', 'oai', '--model', 'no-such-thing');
        is($r->{exit}, 1, '--json with a failing check: exit 1');
        my $j = json_decode($r->{stdout});
        ok($j && JSON::PP::is_bool($j->{ok}) && !$j->{ok}, '--json: ok false');
};

subtest 'a wrong key fails the model check' => sub {
        my $r = ctl('route', 'check', 'badkey');
        is($r->{exit}, 1, 'exit 1');
        my $rows = table_rows($r->{stdout});
        is($rows->{model}[0], $FAIL, "model $FAIL");
        like($rows->{model}[1], qr/credentials: HTTP 401: refused: Incorrect API key provided/, 'says the key was refused');
        is($rows->{$_}[0], $FAIL, "$_ $FAIL") for qw(endpoint usage rollback);
        no_secret_in($r->{stdout} . $r->{stderr}, 'output');
        my @rec = $b->journal_wait({ MESSAGE_ID => $MID_PREFLIGHT, KEYBROKER_ROUTE => 'badkey',
                                     KEYBROKER_CHECK => 'model' });
        is($rec[0]{KEYBROKER_CHECK_OK}, '0', 'journal: model ok 0');
        is($rec[0]{KEYBROKER_CHECK_RESULT}, 'failed', 'journal: model failed');
        is($rec[0]{PRIORITY}, '4', 'journal: a failed check is a warning');
        my @sum = $b->journal_wait({ MESSAGE_ID => $MID_PREFLIGHT, KEYBROKER_ROUTE => 'badkey',
                                     KEYBROKER_CHECK => 'summary' });
        is($sum[0]{KEYBROKER_CHECK_OK}, '0', 'journal: summary ok 0');
};

subtest 'a route to a closed port fails every call, cleanly and quickly' => sub {
        my $t0 = time;
        my $r = ctl('--json', 'route', 'check', 'closed');
        my $took = time - $t0;
        is($r->{exit}, 1, 'exit 1');
        my $j = json_decode($r->{stdout});
        ok($j, 'still a JSON answer') or return diag($r->{stdout} . $r->{stderr});
        is(scalar @{$j->{checks}}, 10, 'every check reported');
        my %c = map { $_->{name} => $_ } @{$j->{checks}};
        ok(!$c{$_}{ok}, "$_ fails") for qw(model endpoint usage failures rollback status owner);
        like(part($c{model}, 'credentials')->{detail}, qr/no answer/, 'model: credentials: no answer');
        ok(!grep({ defined $_->{status} } @{$j->{calls}}), 'no call was answered');
        is($j->{latency}{answered_calls}, 0, 'latency: no call answered');
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
        like(part($c{model}, 'credentials')->{detail}, qr/^no answer within \d+ ms/, 'model: no answer within the timeout');
        like(part($c{endpoint}, 'chat')->{detail}, qr/^no answer within \d+ ms/, 'endpoint: no answer within the timeout');
        like(part($c{failures}, 'bogus_model')->{detail}, qr/^no answer within \d+ ms/, 'failures: bogus model too');
        ok(!$c{$_}{ok}, "$_ fails") for qw(model endpoint usage failures rollback);
        my @cut = grep { $_->{call} ne 'timeout' } @{$j->{calls}};
        ok(@cut >= 6, scalar(@cut) . ' calls cut at the route timeout');
        ok(!grep({ $_->{latency_ms} < 900 || $_->{latency_ms} > 5000 } @cut), 'each after about 1 s')
                or diag(join ' ', map { "$_->{call}=$_->{latency_ms}" } @cut);
        ok($took < 30, sprintf('the run stays bounded (%.1f s)', $took));

        # The operator gives up: the daemon still finishes, saves and journals.
        my @before = glob("$evdir/slow-*.json");
        $r = run_cmd([$CTL, '--admin-socket', $admin, 'route', 'check', 'slow'], timeout => 1);
        ok(!defined $r->{exit} || $r->{exit} != 0, 'keybrokerctl killed while the check runs');
        my @sum = $b->journal_wait({ MESSAGE_ID => $MID_PREFLIGHT, KEYBROKER_ROUTE => 'slow',
                                     KEYBROKER_CHECK => 'summary' }, 30, count => 2);
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
        is($res->{status}, 400, 'a body that is not an object: 400');
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
        like($r->{stdout}, qr/^\s+$_\s/m, "--help lists $_") for @CHECKS;
        like($r->{stdout}, qr/--only CHECK/, '--help names --only');
        like($r->{stdout}, qr/--skip CHECK/, '--help names --skip');
        $r = ctl('--help');
        like($r->{stdout}, qr/route check NAME \[--model M\]/, 'top-level help names route check');
};

ok($b->alive, 'the broker is still up');
done_testing;
