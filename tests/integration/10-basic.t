#!/usr/bin/perl
# Plain JSON calls through the broker, one per endpoint: status and body from
# the provider, model rewritten, the route's key injected and the app's own
# credentials dropped, provider headers passed, hop-by-hop dropped, the
# broker's headers added, and one journal record per call with every field.
use v5.36;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use KB;

ensure_journald();
my $oai_key = fixture_secret('oai');
my $anth_key = fixture_secret('anth');
my $gw_key = fixture_secret('gw');
my $mock = start_mock(require_key => [$oai_key, $anth_key]);
# A second provider that checks no key: routes with auth = header:NAME talk to it.
my $open_mock = start_mock();

my $cfg = standard_config(mock => $mock);
$cfg->{'route:gw'} = { family => 'openai', base_url => $open_mock->base_url, key => 'gw-key',
                       auth => 'header:X-Gateway-Key', header => 'OpenAI-Organization: org-fixture' };
$cfg->{'model:gw-mini'} = { target => 'gw openai/gpt-4o-mini' };
my $broker = start_broker(config => $cfg,
                          keys => { 'oai-key' => $oai_key, 'anth-key' => $anth_key, 'gw-key' => $gw_key });

my $UP_CHAT = 'gpt-4o-mini-2024-07-18';
my $UP_CLAUDE = 'claude-3-5-haiku-20241022';

# Numbers the journal must carry: non-negative integers.
my $uint = qr/^\d+$/;

sub mock_entry($res, $m = $mock) {
        my $e = $m->entry_for($res);
        ok($e, 'found what the provider received in its log');
        return $e;
}

# ------------------------------------------------------------ chat completions
subtest 'chat completion: body, headers, what the provider received' => sub {
        my $req_body = { model => 'gpt-mini', messages => [{ role => 'user', content => 'hi there' }],
                         temperature => 0.25, user => 'u-42' };
        my $res = req($broker, path => '/v1/chat/completions', json => $req_body, headers => [
                Authorization => 'Bearer app-own-token-should-vanish',
                'x-api-key' => 'app-own-xkey-should-vanish',
                'api-key' => 'app-own-apikey-should-vanish',
                'Proxy-Authorization' => 'Basic YXBwOnNlY3JldA==',
                Cookie => 'session=app-cookie',
                'anthropic-version' => '2023-06-01',
                'anthropic-beta' => 'tools-2024-04-04',
                'OpenAI-Beta' => 'assistants=v2',
                'Idempotency-Key' => 'idem-7f3c',
                'OpenAI-Organization' => 'org-app',
                'Keep-Alive' => 'timeout=5',
                'Proxy-Connection' => 'keep-alive',
                TE => 'trailers',
                'X-Keybroker-Team' => 'ops',
                'X-Custom-Thing' => 'passes-through',
        ]);
        is($res->{status}, 200, 'status 200') or diag(KB::show_res($res));
        is($res->{exit}, 0, 'curl exit 0');
        like($res->{headers}{'content-type'} // '', qr{^application/json}, 'content-type json');
        my $j = $res->{json};
        is(ref $j, 'HASH', 'JSON body') or return;
        is($j->{object}, 'chat.completion', 'object chat.completion');
        is($j->{model}, $UP_CHAT, 'model in the body is what the provider answered (upstream model)');
        like($j->{id} // '', qr/^chatcmpl-mock\d+$/, 'id from the provider');
        is($j->{usage}{prompt_tokens}, 11, 'usage passed through unchanged');

        check_common_headers($res, team => 'ops', route => 'oai');
        my $e = mock_entry($res) or return;
        my $n = $e->{n};
        ok(!exists $res->{headers}{'x-mock-n'}, 'provider headers outside the relay list (x-mock-n) are not relayed');
        is($res->{headers}{'x-request-id'}, "req_mock$n", 'x-request-id relayed');
        is($res->{headers}{'openai-processing-ms'}, '1', 'openai-processing-ms relayed');
        is($res->{headers}{'x-upstream-ratelimit-limit-requests'}, '10000', "provider's x-ratelimit-* relayed as x-upstream-ratelimit-*");
        is($res->{headers}{'x-upstream-ratelimit-remaining-tokens'}, '999000', 'x-upstream-ratelimit-remaining-tokens');
        is($res->{headers}{'x-ratelimit-limit-requests'}, '600', "x-ratelimit-limit-requests is the team's rpm, not the provider's");
        # This call is counted from its admission: at most 599 of 600 remain.
        my $rem = $res->{headers}{'x-ratelimit-remaining-requests'} // '';
        ok($rem =~ /^\d+$/ && $rem <= 599, 'x-ratelimit-remaining-requests counts this call') or diag("got '$rem'");
        like($res->{headers}{'x-ratelimit-reset-requests'} // '', qr/^(\d+ms|\d+s|\d+m\d+s)$/,
             'x-ratelimit-reset-requests in OpenAI duration form');
        is($res->{headers}{'x-ratelimit-limit-tokens'}, '100000', "x-ratelimit-limit-tokens is the team's tpm");
        # The reservation for this call (estimate) is held while it runs.
        my $remt = $res->{headers}{'x-ratelimit-remaining-tokens'} // '';
        ok($remt =~ /^\d+$/ && $remt < 100000, 'x-ratelimit-remaining-tokens less what this call reserved')
                or diag("got '$remt'");
        like($res->{headers}{'x-ratelimit-reset-tokens'} // '', qr/^(\d+ms|\d+s|\d+m\d+s)$/,
             'x-ratelimit-reset-tokens in OpenAI duration form');

        is($e->{method}, 'POST', 'provider got POST');
        is($e->{path}, '/v1/chat/completions', 'provider got /v1/chat/completions');
        my $h = $e->{headers};
        is($h->{authorization}, "Bearer $oai_key", "route's key injected as Authorization: Bearer");
        ok(!exists $h->{'x-api-key'}, "app's x-api-key dropped") or diag("x-api-key: $h->{'x-api-key'}");
        ok(!exists $h->{'api-key'}, "app's api-key dropped");
        ok(!exists $h->{'proxy-authorization'}, 'Proxy-Authorization dropped');
        ok(!exists $h->{cookie}, 'Cookie dropped');
        ok(!exists $h->{'keep-alive'}, 'Keep-Alive (hop-by-hop) dropped');
        ok(!exists $h->{'proxy-connection'}, 'Proxy-Connection dropped');
        ok(!exists $h->{te}, 'TE dropped');
        ok(!exists $h->{'x-keybroker-team'}, 'X-Keybroker-Team not forwarded');
        is($h->{'anthropic-version'}, '2023-06-01', 'anthropic-version passed');
        is($h->{'anthropic-beta'}, 'tools-2024-04-04', 'anthropic-beta passed');
        is($h->{'openai-beta'}, 'assistants=v2', 'OpenAI-Beta passed');
        is($h->{'idempotency-key'}, 'idem-7f3c', 'Idempotency-Key passed');
        is($h->{'openai-organization'}, 'org-app', 'OpenAI-Organization passed (route sets none)');
        is($h->{'x-custom-thing'}, 'passes-through', 'unknown header passed');
        is($h->{'content-length'}, length($e->{body}), 'Content-Length recomputed for the rewritten body')
                if exists $h->{'content-length'};
        unlike(join("\n", map { "$_: $h->{$_}" } sort keys %$h), qr/should-vanish|app-cookie/,
               "no app credential reached the provider in any header");

        my $b = KB::Mock::body_json($e);
        is(ref $b, 'HASH', 'provider got a JSON body') or return;
        is($b->{model}, $UP_CHAT, 'model rewritten to the upstream model');
        is_deeply($b->{messages}, $req_body->{messages}, 'messages unchanged');
        is($b->{temperature}, 0.25, 'other fields unchanged (temperature)');
        is($b->{user}, 'u-42', 'other fields unchanged (user)');
        ok(!exists $b->{stream_options}, 'no stream_options added to a non-stream call');

        my $rec = journal_request($res->{headers}{'x-keybroker-request-id'});
        ok($rec, 'journal record for the request') or return;
        my @missing = grep { !exists $rec->{$_} } @KB::REQUEST_FIELDS;
        is_deeply(\@missing, [], 'every DESIGN field present in the record');
        check_fields($rec, {
                SYSLOG_IDENTIFIER => 'keybrokerd',
                PRIORITY => '6',
                MESSAGE => qr/\bops\b.*\b200\b/,
                KEYBROKER_REQUEST_ID => $res->{headers}{'x-keybroker-request-id'},
                KEYBROKER_TEAM => 'ops',
                KEYBROKER_PEER_UID => '0',
                KEYBROKER_PEER_GID => '0',
                KEYBROKER_PEER_PID => "$res->{pid}",
                KEYBROKER_PEER_EXE => qr{/curl$},
                KEYBROKER_ENDPOINT => 'chat',
                KEYBROKER_MODEL => 'gpt-mini',
                KEYBROKER_UPSTREAM_MODEL => $UP_CHAT,
                KEYBROKER_ROUTE => 'oai',
                KEYBROKER_FAMILY => 'openai',
                KEYBROKER_KEY => qr/^oai-key\@\d+$/,
                KEYBROKER_STREAM => '0',
                KEYBROKER_STATUS => '200',
                KEYBROKER_UPSTREAM_STATUS => '200',
                KEYBROKER_OUTCOME => 'ok',
                KEYBROKER_INPUT_TOKENS => '11',
                KEYBROKER_OUTPUT_TOKENS => '7',
                KEYBROKER_CACHED_TOKENS => '0',
                KEYBROKER_CACHE_WRITE_TOKENS => '0',
                KEYBROKER_REASONING_TOKENS => '0',
                # price input=1 output=2 USD per 1M tokens: 11*1 + 7*2 micro-USD
                KEYBROKER_COST_MICROUSD => sub ($v) { $v eq '' || $v eq '25' },
                KEYBROKER_LATENCY_MS => $uint,
                KEYBROKER_TTFB_MS => $uint,
                KEYBROKER_UPSTREAM_REQUEST_ID => "req_mock$n",
                KEYBROKER_ATTEMPTS => '1',
                KEYBROKER_FALLBACK_FROM => undef,
        }, 'journal fields');
        ok(($rec->{KEYBROKER_TTFB_MS} // 0) <= ($rec->{KEYBROKER_LATENCY_MS} // 0), 'TTFB <= latency');
        unlike(join("\n", map { "$_=" . (ref $rec->{$_} ? '' : $rec->{$_}) } keys %$rec), qr/\Q$oai_key\E/,
               'the secret is not in the record');
};

subtest 'chat completion: scripted token counts reach the journal' => sub {
        my $res = req($broker, path => '/v1/chat/completions',
                      json => { model => 'gpt-mini', messages => [{ role => 'user', content => 'count' }] },
                      headers => ['x-mock-input-tokens' => 1234, 'x-mock-output-tokens' => 56,
                                  'x-mock-cached-tokens' => 100, 'x-mock-reasoning-tokens' => 9]);
        is($res->{status}, 200, 'status 200') or diag(KB::show_res($res));
        is($res->{json}{usage}{prompt_tokens}, 1234, 'provider usage relayed');
        check_fields(journal_request($res->{headers}{'x-keybroker-request-id'}), {
                KEYBROKER_INPUT_TOKENS => '1234',
                KEYBROKER_OUTPUT_TOKENS => '56',
                KEYBROKER_CACHED_TOKENS => '100',
                KEYBROKER_REASONING_TOKENS => '9',
                KEYBROKER_OUTCOME => 'ok',
        }, 'journal token fields');
};

subtest 'x-request-id from the provider differs per call, request ids unique' => sub {
        my @rid;
        for (1 .. 3) {
                my $res = req($broker, path => '/v1/chat/completions',
                              json => { model => 'gpt-mini', messages => [{ role => 'user', content => 'x' }] });
                is($res->{status}, 200, "call $_: 200");
                push @rid, $res->{headers}{'x-keybroker-request-id'} // '';
        }
        my %u = map { $_ => 1 } @rid;
        is(scalar(keys %u), 3, 'three distinct x-keybroker-request-id');
};

# ------------------------------------------------------------ responses
subtest 'responses' => sub {
        my $res = req($broker, path => '/v1/responses',
                      json => { model => 'gpt-mini', input => 'write a haiku' },
                      headers => ['x-mock-input-tokens' => 20, 'x-mock-output-tokens' => 3,
                                  'x-mock-cached-tokens' => 4, 'x-mock-reasoning-tokens' => 2]);
        is($res->{status}, 200, 'status 200') or diag(KB::show_res($res));
        is($res->{json}{object}, 'response', 'object response');
        is($res->{json}{model}, $UP_CHAT, 'model from the provider');
        check_common_headers($res, team => 'ops', route => 'oai');
        my $e = mock_entry($res) or return;
        is($e->{path}, '/v1/responses', 'provider got /v1/responses');
        is(KB::Mock::body_json($e)->{model}, $UP_CHAT, 'model rewritten');
        is(KB::Mock::body_json($e)->{input}, 'write a haiku', 'input unchanged');
        is($e->{headers}{authorization}, "Bearer $oai_key", 'key injected');
        check_fields(journal_request($res->{headers}{'x-keybroker-request-id'}), {
                KEYBROKER_ENDPOINT => 'responses', KEYBROKER_MODEL => 'gpt-mini',
                KEYBROKER_UPSTREAM_MODEL => $UP_CHAT, KEYBROKER_FAMILY => 'openai',
                KEYBROKER_STATUS => '200', KEYBROKER_OUTCOME => 'ok', KEYBROKER_STREAM => '0',
                KEYBROKER_INPUT_TOKENS => '20', KEYBROKER_OUTPUT_TOKENS => '3',
                KEYBROKER_CACHED_TOKENS => '4', KEYBROKER_REASONING_TOKENS => '2',
        }, 'journal');
};

# ------------------------------------------------------------ embeddings
subtest 'embeddings' => sub {
        my $res = req($broker, path => '/v1/embeddings',
                      json => { model => 'emb', input => ['a', 'b'] }, headers => ['x-mock-input-tokens' => 5]);
        is($res->{status}, 200, 'status 200') or diag(KB::show_res($res));
        is($res->{json}{object}, 'list', 'object list');
        is_deeply($res->{json}{data}[0]{embedding}, [0.1, 0.2, 0.3], 'embedding from the provider');
        my $e = mock_entry($res) or return;
        is($e->{path}, '/v1/embeddings', 'provider got /v1/embeddings');
        is(KB::Mock::body_json($e)->{model}, 'text-embedding-3-small', 'model rewritten');
        is_deeply(KB::Mock::body_json($e)->{input}, ['a', 'b'], 'input unchanged');
        check_fields(journal_request($res->{headers}{'x-keybroker-request-id'}), {
                KEYBROKER_ENDPOINT => 'embeddings', KEYBROKER_MODEL => 'emb',
                KEYBROKER_UPSTREAM_MODEL => 'text-embedding-3-small', KEYBROKER_ROUTE => 'oai',
                KEYBROKER_INPUT_TOKENS => '5', KEYBROKER_OUTPUT_TOKENS => qr/^0?$/,
                KEYBROKER_OUTCOME => 'ok', KEYBROKER_STATUS => '200',
        }, 'journal');
};

# ------------------------------------------------------------ anthropic messages
subtest 'messages (anthropic route, x-api-key auth)' => sub {
        my $res = req($broker, path => '/v1/messages',
                      json => { model => 'claude-haiku', max_tokens => 64,
                                messages => [{ role => 'user', content => 'hello' }] },
                      headers => ['anthropic-version' => '2023-06-01', 'anthropic-beta' => 'prompt-caching-2024-07-31',
                                  'x-api-key' => 'app-own-xkey-should-vanish',
                                  Authorization => 'Bearer app-own-token-should-vanish',
                                  'x-mock-cached-tokens' => 3, 'x-mock-cache-write-tokens' => 5]);
        is($res->{status}, 200, 'status 200') or diag(KB::show_res($res));
        is($res->{json}{type}, 'message', 'type message');
        is($res->{json}{model}, $UP_CLAUDE, 'model from the provider');
        check_common_headers($res, team => 'ops', route => 'anth');
        my $e = mock_entry($res) or return;
        my $n = $e->{n};
        is($res->{headers}{'request-id'}, "req_mock$n", 'request-id relayed');
        is($res->{headers}{'anthropic-ratelimit-requests-limit'}, '1000', 'anthropic-ratelimit-* relayed');
        is($e->{path}, '/v1/messages', 'provider got /v1/messages');
        is($e->{headers}{'x-api-key'}, $anth_key, "route's key injected as x-api-key");
        ok(!exists $e->{headers}{authorization}, "app's Authorization dropped, none injected")
                or diag("authorization: $e->{headers}{authorization}");
        is($e->{headers}{'anthropic-version'}, '2023-06-01', 'anthropic-version passed');
        is($e->{headers}{'anthropic-beta'}, 'prompt-caching-2024-07-31', 'anthropic-beta passed');
        my $b = KB::Mock::body_json($e);
        is($b->{model}, $UP_CLAUDE, 'model rewritten');
        is($b->{max_tokens}, 64, 'max_tokens unchanged');
        check_fields(journal_request($res->{headers}{'x-keybroker-request-id'}), {
                KEYBROKER_ENDPOINT => 'messages', KEYBROKER_MODEL => 'claude-haiku',
                KEYBROKER_UPSTREAM_MODEL => $UP_CLAUDE, KEYBROKER_ROUTE => 'anth',
                KEYBROKER_FAMILY => 'anthropic', KEYBROKER_KEY => qr/^anth-key\@\d+$/,
                KEYBROKER_INPUT_TOKENS => '11', KEYBROKER_OUTPUT_TOKENS => '7',
                KEYBROKER_CACHED_TOKENS => '3', KEYBROKER_CACHE_WRITE_TOKENS => '5',
                KEYBROKER_UPSTREAM_REQUEST_ID => "req_mock$n",
                KEYBROKER_STATUS => '200', KEYBROKER_UPSTREAM_STATUS => '200', KEYBROKER_OUTCOME => 'ok',
                KEYBROKER_ATTEMPTS => '1',
        }, 'journal');
};

subtest 'messages/count_tokens' => sub {
        my $res = req($broker, path => '/v1/messages/count_tokens',
                      json => { model => 'claude-haiku', messages => [{ role => 'user', content => 'hello' }] },
                      headers => ['anthropic-version' => '2023-06-01', 'x-mock-input-tokens' => 42]);
        is($res->{status}, 200, 'status 200') or diag(KB::show_res($res));
        is_deeply($res->{json}, { input_tokens => 42 }, 'body from the provider');
        my $e = mock_entry($res) or return;
        is($e->{path}, '/v1/messages/count_tokens', 'provider got /v1/messages/count_tokens');
        is($e->{headers}{'x-api-key'}, $anth_key, 'key injected');
        is(KB::Mock::body_json($e)->{model}, $UP_CLAUDE, 'model rewritten');
        check_fields(journal_request($res->{headers}{'x-keybroker-request-id'}), {
                KEYBROKER_ENDPOINT => 'count_tokens', KEYBROKER_FAMILY => 'anthropic',
                KEYBROKER_MODEL => 'claude-haiku', KEYBROKER_STATUS => '200', KEYBROKER_OUTCOME => 'ok',
        }, 'journal');
};

# ------------------------------------------------------------ header:NAME auth, static headers
subtest 'auth = header:NAME and static route headers' => sub {
        my $res = req($broker, path => '/v1/chat/completions',
                      json => { model => 'gw-mini', messages => [{ role => 'user', content => 'hi' }] },
                      headers => [Authorization => 'Bearer app-own-token-should-vanish',
                                  'OpenAI-Organization' => 'org-app']);
        is($res->{status}, 200, 'status 200') or diag(KB::show_res($res));
        check_common_headers($res, team => 'ops', route => 'gw');
        my $e = mock_entry($res, $open_mock) or return;
        is($e->{headers}{'x-gateway-key'}, $gw_key, 'key injected in X-Gateway-Key');
        ok(!exists $e->{headers}{authorization}, 'no Authorization at all')
                or diag("authorization: $e->{headers}{authorization}");
        is($e->{headers}{'openai-organization'}, 'org-fixture', "route's static header replaces the app's");
        is(KB::Mock::body_json($e)->{model}, 'openai/gpt-4o-mini', 'model rewritten');
        check_fields(journal_request($res->{headers}{'x-keybroker-request-id'}), {
                KEYBROKER_ROUTE => 'gw', KEYBROKER_KEY => qr/^gw-key\@\d+$/, KEYBROKER_OUTCOME => 'ok',
        }, 'journal');
};

# ------------------------------------------------------------ family mismatch
subtest 'a model whose route speaks the other family is refused, provider not called' => sub {
        my $before = $mock->count;
        my $res = req($broker, path => '/v1/messages',
                      json => { model => 'gpt-mini', max_tokens => 5, messages => [{ role => 'user', content => 'x' }] },
                      headers => ['anthropic-version' => '2023-06-01']);
        like($res->{status} // '', qr/^4\d\d$/, 'a 4xx') or diag(KB::show_res($res));
        is($res->{json}{type}, 'error', 'Anthropic error shape');
        is($mock->count, $before, 'provider received nothing');
};

# ------------------------------------------------------------ models, whoami
subtest 'GET /v1/models lists exactly the caller team\'s models' => sub {
        my $res = req($broker, path => '/v1/models');
        is($res->{status}, 200, 'status 200') or diag(KB::show_res($res));
        is($res->{json}{object}, 'list', 'object list');
        is_deeply([map { $_->{id} } @{$res->{json}{data} // []}],
                  [qw(claude-haiku emb gpt-big gpt-mini gw-mini)], 'ops (models = *) sees every model, sorted');
        is_deeply($res->{json}{data}[0], { id => 'claude-haiku', object => 'model', created => 0, owned_by => 'keybroker' },
                  'entry shape');
        check_common_headers($res, team => 'ops');

        my $before = $mock->count;
        my $r2 = req($broker, path => '/v1/models', uid => 1001);
        is($r2->{status}, 200, 'uid 1001: status 200') or diag(KB::show_res($r2));
        is_deeply([map { $_->{id} } @{$r2->{json}{data} // []}], [qw(claude-haiku gpt-mini)],
                  'search sees only its two models');
        check_common_headers($r2, team => 'search');
        is($mock->count, $before, 'provider not asked for models');
        check_fields(journal_request($r2->{headers}{'x-keybroker-request-id'}), {
                KEYBROKER_ENDPOINT => 'models', KEYBROKER_TEAM => 'search', KEYBROKER_PEER_UID => '1001',
                KEYBROKER_STATUS => '200', KEYBROKER_OUTCOME => 'ok',
        }, 'journal');
};

subtest 'GET /v1/models with anthropic-version: Anthropic\'s list shape' => sub {
        my $res = req($broker, path => '/v1/models', uid => 1001, headers => ['anthropic-version' => '2023-06-01']);
        is($res->{status}, 200, 'status 200') or diag(KB::show_res($res));
        is_deeply($res->{json}, {
                data => [map { { type => 'model', id => $_, display_name => $_, created_at => '1970-01-01T00:00:00Z' } }
                         qw(claude-haiku gpt-mini)],
                has_more => JSON::PP::false, first_id => 'claude-haiku', last_id => 'gpt-mini',
        }, 'Anthropic page: items, has_more false, first/last ids') or diag(KB::show_res($res));

        my $bad = req($broker, path => '/v1/models', uid => 1009, headers => ['anthropic-version' => '2023-06-01']);
        check_anthropic_error($bad, 403, 'unknown_team', 'no team: the error is in Anthropic\'s shape too');
};

subtest 'whoami' => sub {
        my $res = req($broker, path => '/v1/keybroker/whoami');
        is($res->{status}, 200, 'status 200') or diag(KB::show_res($res));
        my $j = $res->{json} // {};
        is($j->{uid}, 0, 'uid 0');
        is($j->{gid}, 0, 'gid 0');
        is($j->{pid}, $res->{pid}, 'pid is the client (curl) pid');
        is($j->{team}, 'ops', 'team ops');
        is_deeply($j->{teams}, ['ops'], 'teams [ops]');
        like($j->{exe} // '', qr{/curl$}, 'exe is curl');
        is(ref $j->{groups}, 'ARRAY', 'groups is an array');
        ok(exists $j->{unit}, 'unit key present (null outside a unit)');
        check_common_headers($res, team => 'ops');
};

is($broker->stop, 0, 'broker exits 0 on SIGTERM') or diag($broker->log);
done_testing;
