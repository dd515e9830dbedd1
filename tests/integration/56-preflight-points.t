#!/usr/bin/perl
# Preflight, point by point: each of the ten checks of `keybrokerctl route
# check` passing and failing against the mock (an alias reported as its
# snapshot, an endpoint the provider refuses, features that work or not,
# usage that is not reported, a missing price and the line to add, every
# kind of status page, a provider that takes any key and any model,
# fallbacks with a good and a wrong key, missing owners, the rollback line
# after a live split), --only/--skip with good and bad names, and the admin
# body's bad members. The run's shape and a fully passing route:
# 55-preflight.t.
use v5.36;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use KB;

my $CTL = $ENV{KEYBROKERCTL} // "$KB::BUILD/keybrokerctl";
plan skip_all => "keybrokerctl not built: $CTL" unless -x $CTL;

my $MID_PREFLIGHT = 'ed744d6e5d9d4128b630050956cdab33';
my $OK = "\xe2\x9c\x93";
my $FAIL = "\xe2\x9c\x97";
my @CHECKS = qw(model endpoint features usage pricing status failures fallback owner rollback);
my $ALL = 'features tools structured_output vision reasoning streaming';

my $good = fixture_secret('pp-good');
my $bad = fixture_secret('pp-bad');
my @models = qw(gpt-4o-2024-08-06 gpt-4o-mini-2024-07-18 thinker blind claude-3-5-haiku-20241022);
my $m = start_mock(args => ['--min-latency-ms', 20, '--alias', 'gpt-4o=gpt-4o-2024-08-06', '--no-vision', 'blind',
                         '--reasoning', 'thinker'], require_key => [$good], models => \@models);
# A provider that takes any key and any model; its status page says minor.
my $lax = start_mock(args => ['--min-latency-ms', 20, '--status-indicator', 'minor']);
my $major = start_mock(args => ['--status-indicator', 'major']);
my $closed = free_port();
my $base = $m->base_url;
my $status = sub ($mock, $page = 'status.json') { 'http://127.0.0.1:' . $mock->port . "/api/v2/$page" };

sub route(%o) { return { family => 'openai', base_url => $base, key => 'k', timeout => '30s', %o } }

my $cfg = {
        'team:ops' => { users => '0', models => '*', owner => 'ops@example.com' },
        'team:t-owned' => { users => '4242', models => 'owned-m', owner => 'owned-team@example.com' },
        'team:t-unowned' => { users => '4243', models => 'unowned-m' },
        'route:alias' => route(),
        'route:endp' => route(),
        'route:feat' => route(features => 'tools structured_output vision reasoning streaming'),
        'route:feat-anth' => route(family => 'anthropic', auth => 'x-api-key'),
        'route:blind' => route(),
        'route:broken' => route(header => 'x-mock-schema-break: 1', features => 'structured_output tools'),
        'route:plain' => route(features => 'reasoning'),
        'route:badusage' => route(header => 'x-mock-bad-usage: null'),
        'route:priced' => route(price => 'gpt-4o-mini-2024-07-18 input=2.5 output=10'),
        'route:st-none' => route(status_url => $status->($m)),
        'route:st-absent' => route(),
        'route:st-minor' => route(status_url => $status->($lax)),
        'route:st-minor-ok' => route(status_url => $status->($lax), status_ok => 'minor'),
        'route:st-major' => route(status_url => $status->($major), status_ok => 'minor'),
        'route:st-notsp' => route(status_url => $status->($m, 'not-statuspage.json')),
        'route:st-down' => route(status_url => "http://127.0.0.1:$closed/api/v2/status.json"),
        'route:lax' => route(base_url => $lax->base_url),
        'route:fbmain' => route(),
        'route:fbgood' => route(family => 'anthropic', auth => 'x-api-key'),
        'route:fbbad' => route(key => 'bad'),
        'route:fb2main' => route(),
        'route:owned' => route(owner => 'platform@example.com', key_owner => 'keys@example.com'),
        'route:unowned' => route(),
        'route:r1' => route(),
        'route:r2' => route(),
        'route:r3' => route(key => 'bad'),
        'model:alias-m' => { target => 'alias gpt-4o' },
        'model:endp-chat' => { target => 'endp gpt-4o-mini-2024-07-18' },
        'model:endp-emb' => { target => 'endp text-embedding-nope' },
        'model:feat-m' => { target => 'feat thinker' },
        'model:feat-anth-m' => { target => 'feat-anth thinker', features => $ALL =~ s/^features //r },
        'model:blind-m' => { target => 'blind blind', features => 'vision' },
        'model:broken-m' => { target => 'broken gpt-4o-mini-2024-07-18' },
        'model:plain-m' => { target => 'plain gpt-4o-mini-2024-07-18' },
        'model:badusage-m' => { target => 'badusage gpt-4o-mini-2024-07-18' },
        'model:priced-m' => { target => 'priced gpt-4o-mini-2024-07-18' },
        'model:lax-m' => { target => 'lax gpt-4o-mini-2024-07-18' },
        'model:fb-m' => { target => 'fbmain gpt-4o-mini-2024-07-18',
                          fallback => ['fbgood claude-3-5-haiku-20241022', 'fbbad gpt-4o-mini-2024-07-18'] },
        'model:fb2-m' => { target => 'fb2main gpt-4o-mini-2024-07-18', fallback => 'fbgood claude-3-5-haiku-20241022' },
        'model:owned-m' => { target => 'owned gpt-4o-mini-2024-07-18' },
        'model:unowned-m' => { target => 'unowned gpt-4o-mini-2024-07-18' },
        'model:roll' => { target => ['r1 gpt-4o-mini-2024-07-18', 'r2 gpt-4o-2024-08-06',
                                     'r3 gpt-4o-mini-2024-07-18 weight=0'] },
};
my $b = start_broker(config => $cfg, keys => { k => $good, bad => $bad });
my $admin = $b->dir . '/admin.sock';

sub ctl(@args) {
        my $r = run_cmd([$CTL, '--admin-socket', $admin, @args], timeout => 70);
        note("keybrokerctl @args -> exit " . ($r->{exit} // 'signal') . "\n$r->{stdout}$r->{stderr}")
                if $ENV{KB_VERBOSE};
        return $r;
}

# The evidence of one run (--json), by check name.
sub check(@args) {
        my $r = ctl('--json', 'route', 'check', @args);
        my $j = json_decode($r->{stdout}) // {};
        diag("no JSON: $r->{stdout}$r->{stderr}") unless $j->{checks};
        return ($r->{exit}, { map { $_->{name} => $_ } @{$j->{checks} // []} }, $j);
}

sub part($check, $name) {
        my ($p) = grep { $_->{name} eq $name } @{$check->{parts} // []};
        return $p // {};
}

sub no_secret_in($text, $name) {
        unlike($text, qr/\Q$_\E/, "$name: no secret in it") for $good, $bad;
}

subtest 'model: an alias is reported as its dated snapshot' => sub {
        my ($exit, $c, $j) = check('alias', '--only', 'model');
        is($exit, 0, 'exit 0');
        is($c->{model}{result}, 'passed', 'model passed') or diag($c->{model}{detail});
        is($c->{model}{asked}, 'gpt-4o', 'asked: gpt-4o');
        is($c->{model}{reported}, 'gpt-4o-2024-08-06', 'reported: the snapshot');
        like($c->{model}{checked_at}, qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/, 'the date checked');
        like($c->{model}{detail}, qr/^gpt-4o reported as gpt-4o-2024-08-06, checked \d{4}-/, 'said in the detail');
        is($j->{model_reported}, 'gpt-4o-2024-08-06', 'and at the top of the evidence');

        ($exit, $c) = check('alias', '--only', 'model', '--model', 'gpt-9-nope');
        is($exit, 1, 'a model the provider does not have: exit 1');
        is($c->{model}{result}, 'failed', 'model failed');
        is(part($c->{model}, 'listed')->{ok}, JSON::PP::false, 'not listed');
        like(part($c->{model}, 'answer')->{detail}, qr/^HTTP 404/, 'its call 404');
};

subtest 'endpoint: every endpoint family; an embedding model the provider refuses' => sub {
        my ($exit, $c) = check('endp', '--only', 'endpoint');
        is($exit, 1, 'exit 1');
        is($c->{endpoint}{result}, 'failed', 'endpoint failed');
        is_deeply([map { $_->{name} } @{$c->{endpoint}{parts}}], [qw(chat responses embeddings)],
                  'chat, responses and embeddings exercised');
        is(part($c->{endpoint}, 'chat')->{ok}, JSON::PP::true, 'chat ok');
        is(part($c->{endpoint}, 'responses')->{ok}, JSON::PP::true, 'responses ok');
        like(part($c->{endpoint}, 'embeddings')->{detail}, qr/^HTTP 404: The model `text-embedding-nope` does not exist/,
             'embeddings: the provider refused the model');
        like(part($c->{endpoint}, $_)->{latency_ms}, qr/^\d+$/, "$_: latency") for qw(chat responses embeddings);
        my ($e) = grep { $_->{path} eq '/v1/embeddings' } reverse $m->log_entries;
        is(KB::Mock::body_json($e)->{model}, 'text-embedding-nope', 'embeddings called with the route\'s embedding model');

        ($exit, $c) = check('feat-anth', '--only', 'endpoint');
        is($exit, 0, 'an Anthropic route: exit 0');
        is_deeply([map { $_->{name} } @{$c->{endpoint}{parts}}], ['messages'], 'messages only');
};

subtest 'features: all five pass on a capable model, both families' => sub {
        for my $route (qw(feat feat-anth)) {
                my ($exit, $c) = check($route, '--only', 'features');
                is($exit, 0, "$route: exit 0") or diag($c->{features}{detail});
                is_deeply($c->{features}{declared}, [qw(tools structured_output vision reasoning streaming)],
                          "$route: the features declared (route or model)");
                is(part($c->{features}, $_)->{ok}, JSON::PP::true, "$route: $_ ok")
                        for qw(tools structured_output vision reasoning streaming);
                like(part($c->{features}, 'tools')->{detail}, qr/get_weather\(\{"location":"x"\}\)/,
                     "$route: a tool call with JSON arguments");
                like(part($c->{features}, 'structured_output')->{detail}, qr/validates against its schema/,
                     "$route: the structured answer validates");
                like(part($c->{features}, 'reasoning')->{detail}, qr/3 reasoning tokens reported/,
                     "$route: reasoning tokens");
                like(part($c->{features}, 'streaming')->{detail}, qr/seen$/, "$route: the terminal event");
        }
        my @e = grep { $_->{path} eq '/v1/chat/completions' } $m->log_entries;
        my ($vision) = grep { ($_->{body} // '') =~ /image_url/ } @e;
        like(KB::Mock::body_json($vision)->{messages}[0]{content}[1]{image_url}{url}, qr{^data:image/png;base64,},
             'vision: a tiny PNG as a data URL');
        my ($schema) = grep { ($_->{body} // '') =~ /json_schema/ } @e;
        is(KB::Mock::body_json($schema)->{response_format}{type}, 'json_schema', 'structured: response_format json_schema');
        my @a = grep { $_->{path} eq '/v1/messages' } $m->log_entries;
        my ($forced) = grep { ($_->{body} // '') =~ /keybroker_preflight/ } @a;
        is(KB::Mock::body_json($forced)->{tool_choice}{name}, 'keybroker_preflight', 'Anthropic: a forced tool');
        my ($think) = grep { ($_->{body} // '') =~ /"thinking"/ } @a;
        is(KB::Mock::body_json($think)->{thinking}{type}, 'enabled', 'Anthropic: thinking enabled');
};

subtest 'features: failing ones, and none declared' => sub {
        my ($exit, $c) = check('blind', '--only', 'features');
        is($exit, 1, 'no vision: exit 1');
        like($c->{features}{detail}, qr/vision: the image was refused: HTTP 400: The model `blind` does not support image input/,
             'vision refused, in the provider\'s words');
        ($exit, $c) = check('broken', '--only', 'features');
        is($exit, 1, 'a broken schema: exit 1');
        like(part($c->{features}, 'structured_output')->{detail},
             qr/does not match its schema: \$\.city: expected string, got integer/, 'structured: the violation named');
        is(part($c->{features}, 'tools')->{ok}, JSON::PP::true, 'tools still pass (arguments are JSON)');
        ($exit, $c) = check('plain', '--only', 'features');
        is($exit, 1, 'no reasoning tokens: exit 1');
        like(part($c->{features}, 'reasoning')->{detail}, qr/no reasoning tokens reported/, 'reasoning: none reported');
        ($exit, $c) = check('alias', '--only', 'features');
        is($exit, 0, 'nothing declared: exit 0');
        is($c->{features}{detail}, 'no features declared', 'says so');
};

subtest 'usage: not reported' => sub {
        my ($exit, $c) = check('badusage', '--only', 'usage');
        is($exit, 1, 'exit 1');
        like($c->{usage}{detail}, qr/non-streaming: input tokens 0; streaming: input tokens 0/, 'says what is missing');
        is($c->{usage}{non_streaming}{input_tokens}, 0, 'evidence: the figures seen');
};

subtest 'pricing: the cost of the probes; a missing price and the line to add' => sub {
        my ($exit, $c) = check('priced', '--only', 'pricing');
        is($exit, 0, 'priced: exit 0') or diag($c->{pricing}{detail});
        # chat, chat stream, responses: 11 in / 7 out each at 2.5 / 10 USD per 1M = 97.5 -> 98 micro-USD
        like($c->{pricing}{detail}, qr/^the 3 probe calls cost 294 micro-USD \(\$0\.000294\)/, 'the sum');
        is($c->{pricing}{total_microusd}, 294, 'evidence: micro-USD');
        is($c->{pricing}{total_usd}, '0.000294', 'evidence: USD');
        is_deeply([map { $_->{cost_microusd} } @{$c->{pricing}{costs}}], [98, 98, 98], 'evidence: each call');
        like(part($c->{pricing}, 'chat gpt-4o-mini-2024-07-18')->{detail}, qr/input 2\.5, output 10 USD per 1M tokens/,
             'the price used');

        ($exit, $c) = check('endp', '--only', 'pricing');
        is($exit, 1, 'no price: exit 1');
        like($c->{pricing}{detail},
             qr/no price for gpt-4o-mini-2024-07-18: add to \[route:endp\]: price = gpt-4o-mini-2024-07-18 input=USD output=USD/,
             'the line to add');
        like($c->{pricing}{detail}, qr/add to \[route:endp\]: price = text-embedding-nope input=USD \(/,
             'embeddings bill input tokens only');
};

subtest 'status: every kind of status page' => sub {
        my @cases = (
                ['st-none', 0, qr/^indicator none \(All Systems Operational\)$/],
                ['st-absent', 1, qr/^no status_url: add to \[route:st-absent\]: status_url = https:\/\/status\.openai\.com\/api\/v2\/status\.json/],
                ['st-minor', 1, qr/^indicator minor \(Minor Service Outage\): only none passes unless status_ok = minor/],
                ['st-minor-ok', 0, qr/^indicator minor \(Minor Service Outage\): passes with status_ok = minor/],
                ['st-major', 1, qr/^indicator major \(Partial System Outage\): the provider reports an incident/],
                ['st-notsp', 1, qr/^HTTP 200 but not Statuspage JSON \(no status\.indicator\)/],
                ['st-down', 1, qr/^http:\/\/127\.0\.0\.1:$closed\/api\/v2\/status\.json: no answer/],
        );
        for my $case (@cases) {
                my ($route, $want, $re) = @$case;
                my ($exit, $c) = check($route, '--only', 'status', '--model', 'gpt-4o-mini-2024-07-18');
                is($exit, $want, "$route: exit $want");
                like($c->{status}{detail}, $re, "$route: detail") or diag($c->{status}{detail});
        }
        my ($exit, $c) = check('st-minor-ok', '--only', 'status', '--model', 'x');
        is($c->{status}{indicator}, 'minor', 'evidence: indicator');
        is($c->{status}{description}, 'Minor Service Outage', 'evidence: description');
        is($c->{status}{status_ok}, 'minor', 'evidence: status_ok');
        my ($e) = grep { $_->{path} eq '/api/v2/status.json' } reverse $lax->log_entries;
        ok($e && !exists $e->{headers}{authorization} && !exists $e->{headers}{'x-api-key'}, 'no key sent to the status page');
};

subtest 'failures: a provider that takes any key and any model' => sub {
        my ($exit, $c) = check('lax', '--only', 'failures');
        is($exit, 1, 'exit 1');
        like(part($c->{failures}, 'wrong_key')->{detail}, qr/^HTTP 200: a made-up key was accepted/, 'wrong key accepted');
        like(part($c->{failures}, 'bogus_model')->{detail}, qr/^HTTP 200: a model that does not exist was accepted/,
             'bogus model accepted');
        is(part($c->{failures}, 'timeout')->{ok}, JSON::PP::true, 'the timeout still fires');
        my ($e) = grep { ($_->{headers}{authorization} // '') =~ /preflight-invalid/ } $lax->log_entries;
        ok($e, 'the made-up key was sent');
        unlike($e->{headers}{authorization}, qr/\Q$good\E/, 'never a real one');
};

subtest 'fallback: each target with its own key' => sub {
        my ($exit, $c) = check('fb2main', '--only', 'fallback');
        is($exit, 0, 'a good fallback: exit 0') or diag($c->{fallback}{detail});
        like($c->{fallback}{detail}, qr{fbgood key: HTTP 200 with k\@\d+; fbgood/claude-3-5-haiku-20241022: HTTP 200},
             'its key and its call');
        ($exit, $c) = check('fbmain', '--only', 'fallback');
        is($exit, 1, 'a fallback with a wrong key: exit 1');
        like($c->{fallback}{detail}, qr/^fbbad key: HTTP 401: refused/, 'the wrong key named');
        like($c->{fallback}{detail}, qr{fbbad/gpt-4o-mini-2024-07-18: HTTP 401}, 'and its call refused');
        is(part($c->{fallback}, 'fbgood key')->{ok}, JSON::PP::true, 'the good one still passes');
        ($exit, $c) = check('alias', '--only', 'fallback');
        like($c->{fallback}{detail}, qr/^no fallback targets/, 'none: passes, says so');
        is($exit, 0, 'exit 0');
};

subtest 'owner: present, and missing with the lines to add' => sub {
        my $n = $m->count;
        my ($exit, $c) = check('owned', '--only', 'owner');
        is($exit, 0, 'owned: exit 0') or diag($c->{owner}{detail});
        like($c->{owner}{detail}, qr/route platform\@example\.com, key keys\@example\.com, team ops ops\@example\.com, team t-owned owned-team\@example\.com/,
             'who answers');
        ($exit, $c) = check('unowned', '--only', 'owner');
        is($exit, 1, 'unowned: exit 1');
        is($c->{owner}{detail}, 'add to [route:unowned]: owner = TEXT; add to [route:unowned]: key_owner = TEXT '
                                . '(who answers for key k); add to [team:t-unowned]: owner = TEXT', 'exactly what to add where');
        is($m->count, $n, 'owner alone calls nobody');
};

subtest 'rollback: the split serving now, live overrides included' => sub {
        my $r = ctl('model', 'split', 'roll', 'r1=70', 'r2=30');
        is($r->{exit}, 0, 'model split roll r1=70 r2=30') or diag($r->{stderr});
        $r = ctl('route', 'check', 'r1', '--only', 'rollback');
        is($r->{exit}, 0, 'exit 0') or diag($r->{stdout});
        like($r->{stdout}, qr/^rollback: keybrokerctl model split roll r1=70 r2=30 r3=0$/m, 'the line with the current weights');
        like($r->{stdout}, qr{serving r1/gpt-4o-mini-2024-07-18: HTTP 200.*serving r2/gpt-4o-2024-08-06: HTTP 200}, 'both serving routes answer');
        unlike($r->{stdout}, qr{serving r3/}, 'a target without weight is not called');
        my ($exit, $c) = check('r1', '--only', 'rollback');
        is_deeply($c->{rollback}{commands}, ['keybrokerctl model split roll r1=70 r2=30 r3=0'], 'evidence: the command');
        is_deeply($c->{rollback}{splits}[0]{weights}, { 'r1/gpt-4o-mini-2024-07-18' => 70, 'r2/gpt-4o-2024-08-06' => 30,
                                                         'r3/gpt-4o-mini-2024-07-18' => 0 }, 'evidence: the weights');

        $r = ctl('model', 'split', 'roll', 'r3=10');
        is($r->{exit}, 0, 'r3 now takes traffic');
        ($exit, $c) = check('r1', '--only', 'rollback');
        is($exit, 1, 'a serving route that fails: exit 1');
        like($c->{rollback}{detail}, qr{serving r3/gpt-4o-mini-2024-07-18: HTTP 401}, 'names it');
        is_deeply($c->{rollback}{commands}, ['keybrokerctl model split roll r1=70 r2=30 r3=10'], 'the line to go back to now');
};

subtest '--only and --skip' => sub {
        my $r = ctl('route', 'check', 'alias', '--skip', 'status,owner', '--skip', 'pricing');
        my %rows;
        for my $l (split /\n/, $r->{stdout}) {
                my ($check, $mark) = $l =~ /^(\w+)\s+(\Q$OK\E|\Q$FAIL\E|skipped)\s/ or next;
                $rows{$check} = $mark;
        }
        is($rows{$_}, 'skipped', "$_ shown as skipped") for qw(status owner pricing);
        is($rows{$_}, $OK, "$_ run") for qw(model endpoint features usage failures fallback rollback);
        is($r->{exit}, 0, 'the checks run passed: exit 0') or diag($r->{stdout});
        like($r->{stdout}, qr/^all checks run passed \(3 skipped\)$/m, 'says how many were skipped');
        my ($path) = $r->{stdout} =~ /^evidence: (\S+)$/m;
        my $ev = json_decode(slurp($path) // '') // {};
        is_deeply($ev->{skipped}, [qw(pricing status owner)], 'evidence: the skipped checks');
        my %c = map { $_->{name} => $_ } @{$ev->{checks} // []};
        is($c{status}{result}, 'skipped', 'evidence: status skipped');
        ok(!defined $c{status}{ok}, 'evidence: a skipped check has no ok');
        my @rec = $b->journal_wait({ MESSAGE_ID => $MID_PREFLIGHT, KEYBROKER_ROUTE => 'alias', KEYBROKER_CHECK => 'owner',
                                     KEYBROKER_CHECK_RESULT => 'skipped' });
        ok(@rec, 'journal: the skipped check has its record');
        ok(@rec && !exists $rec[0]{KEYBROKER_CHECK_OK}, 'journal: no CHECK_OK for it');
        is($rec[0]{PRIORITY}, '6', 'journal: not a warning');
        my @sum = $b->journal_wait({ MESSAGE_ID => $MID_PREFLIGHT, KEYBROKER_ROUTE => 'alias', KEYBROKER_CHECK => 'summary' },
                                   10, count => 1);
        like(join("\n", map { $_->{MESSAGE} } @sum), qr/7 of 7 checks passed, 3 skipped/, 'summary counts them');

        my ($exit, $cc, $j) = check('alias', '--only', 'model', '--only', 'usage');
        is_deeply($j->{checked}, [qw(model usage)], '--only twice: both');
        is(scalar(grep { $_->{result} eq 'skipped' } values %$cc), 8, 'the other eight skipped');
        ok(!grep({ $_->{call} =~ /^(responses|wrong key|bogus model|timeout)$/ } @{$j->{calls}}),
           'no call made for a skipped check');

        for my $args (['--only', 'nope'], ['--skip', 'model,nope'], ['--only', ''], ['--only', 'model,'],
                      ['--only', 'model', '--skip', 'usage'], ['--skip', join(',', @CHECKS)], ['--only']) {
                $r = ctl('route', 'check', 'alias', @$args);
                is($r->{exit}, 2, "@$args: usage error, exit 2");
        }
        $r = ctl('route', 'check', 'alias', '--only', 'nope');
        like($r->{stderr}, qr/'nope' is not a check; the checks are model, endpoint, features, usage, pricing, status, failures, fallback, owner, rollback/,
             'names the valid checks');
        $r = ctl('route', 'check', 'alias', '--only', 'model', '--skip', 'usage');
        like($r->{stderr}, qr/--only or --skip, not both/, 'both: says so');
};

subtest 'the admin body: bad members are 400' => sub {
        for my $body ('{"only":"model"}', '{"only":["nope"]}', '{"only":[]}', '{"only":[1]}', '{"skip":{}}',
                      '{"only":["model"],"skip":["usage"]}', '{"model":""}', '{"model":1}', '{"extra":true}',
                      '{"skip":["model","endpoint","features","usage","pricing","status","failures","fallback","owner","rollback"]}',
                      '{"only":["model"],"only":["usage"]}', '[]', '"x"') {
                my $res = req($admin, method => 'POST', path => '/routes/alias/check', body => $body,
                              headers => ['Content-Type' => 'application/json']);
                is($res->{status}, 400, "$body: 400");
                is($res->{json}{error}{code}, 'invalid_request', "$body: invalid_request");
        }
        my $res = req($admin, method => 'POST', path => '/routes/alias/check',
                      json => { model => undef, only => ['owner'], skip => undef });
        is($res->{status}, 200, 'null members are absent: 200');
        is_deeply($res->{json}{checked}, ['owner'], 'only owner run');
};

no_secret_in(join('', map { slurp($_) // '' } glob($b->dir . '/state/evidence/*.json')), 'every evidence file');
ok($b->alive, 'the broker is still up');
done_testing;
