#!/usr/bin/perl
# When the provider fails: its own errors pass through unchanged (status,
# body, retry-after); failures to reach it become the agent's own
# upstream_unavailable / upstream_timeout errors; every case has its journal
# outcome.
use v5.36;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time);
use KB;

ensure_journald();
my %keys = ('oai-key' => fixture_secret('oai'), 'anth-key' => fixture_secret('anth'));
my $mock = start_mock(require_key => [values %keys]);
my $closed_port = free_port();
my $mport = $mock->port;

my $cfg = standard_config(mock => $mock);
# Scripted errors in a row would open the routes' circuit breakers (and
# later calls would fail fast): this file is about relaying each error.
$cfg->{"route:$_"}{breaker_failures} = 0, $cfg->{"route:$_"}{breaker_error_ratio} = 0 for qw(oai anth);
$cfg->{'route:dead'} = { family => 'openai', base_url => "http://127.0.0.1:$closed_port/v1", key => 'oai-key',
                         connect_timeout => '3s' };
$cfg->{'route:slow'} = { family => 'openai', base_url => $mock->base_url, key => 'oai-key', timeout => '1s' };
$cfg->{'route:slowanth'} = { family => 'anthropic', base_url => $mock->base_url, key => 'anth-key',
                             auth => 'x-api-key', timeout => '1s' };
$cfg->{'route:tls'} = { family => 'openai', base_url => "https://127.0.0.1:$mport/v1", key => 'oai-key',
                        connect_timeout => '3s', timeout => '5s' };
$cfg->{'route:nokey'} = { family => 'openai', base_url => $mock->base_url, key => 'absent-key' };
$cfg->{'model:dead'} = { target => 'dead gpt-x' };
$cfg->{'model:slow'} = { target => 'slow gpt-x' };
$cfg->{'model:slowclaude'} = { target => 'slowanth claude-x' };
$cfg->{'model:tls'} = { target => 'tls gpt-x' };
$cfg->{'model:nokey'} = { target => 'nokey gpt-x' };
# The daemon loads keys per route as needed: a route whose key is missing
# only fails its own calls (503), it does not keep the daemon from starting.
my $broker = start_broker(config => $cfg, keys => \%keys);

my @ANTH = ('anthropic-version' => '2023-06-01');
sub chat(%o) { req($broker, path => '/v1/chat/completions',
                   json => { model => $o{model} // 'gpt-mini', messages => [{ role => 'user', content => 'x' }],
                             ($o{stream} ? (stream => JSON::PP::true) : ()) },
                   headers => $o{headers} // [], stream => $o{stream}) }
sub messages(%o) { req($broker, path => '/v1/messages',
                       json => { model => $o{model} // 'claude-haiku', max_tokens => 5,
                                 messages => [{ role => 'user', content => 'x' }] },
                       headers => [@ANTH, @{$o{headers} // []}]) }

# ------------------------------------------------------------ provider errors relayed
my %openai_code = (401 => 'invalid_api_key', 404 => 'model_not_found', 429 => 'rate_limit_exceeded');
my %anth_type = (401 => 'authentication_error', 404 => 'not_found_error', 429 => 'rate_limit_error',
                 500 => 'api_error', 529 => 'overloaded_error');

for my $st (401, 404, 429, 500, 503, 529) {
        subtest "provider $st (OpenAI family) relayed unchanged" => sub {
                my $res = chat(headers => ['x-mock-status' => $st, 'x-mock-retry-after' => 7]);
                is($res->{status}, $st, "status $st") or diag(KB::show_res($res));
                my $e = $mock->entry_for($res);
                ok($e, 'the provider was called (found in its log)');
                my $j = $res->{json};
                is(ref $j && ref $j->{error}, 'HASH', "provider's error body") or return diag($res->{body});
                is($j->{error}{code}, $openai_code{$st}, "error.code $openai_code{$st}") if $openai_code{$st};
                like($j->{error}{message}, qr/gpt-4o-mini-2024-07-18/, 'the provider\'s message (names the upstream model)')
                        if $st == 404;
                is($res->{headers}{'retry-after'}, '7', 'retry-after relayed') if $st == 429;
                check_common_headers($res, team => 'ops', route => 'oai');
                check_fields(journal_request($res->{headers}{'x-keybroker-request-id'}), {
                        KEYBROKER_STATUS => "$st", KEYBROKER_UPSTREAM_STATUS => "$st",
                        KEYBROKER_OUTCOME => 'upstream_error', KEYBROKER_ROUTE => 'oai', PRIORITY => '4',
                        KEYBROKER_UPSTREAM_REQUEST_ID => 'req_mock' . ($e ? $e->{n} : '?'),
                }, 'journal');
        };
}

for my $st (401, 429, 529) {
        subtest "provider $st (Anthropic family) relayed unchanged" => sub {
                my $res = messages(headers => ['x-mock-status' => $st]);
                is($res->{status}, $st, "status $st") or diag(KB::show_res($res));
                is($res->{json}{type}, 'error', 'Anthropic error body');
                is($res->{json}{error}{type}, $anth_type{$st}, "error.type $anth_type{$st}");
                is($res->{headers}{'retry-after'}, '1', 'retry-after relayed (mock default 1)') if $st == 429;
                check_fields(journal_request($res->{headers}{'x-keybroker-request-id'}), {
                        KEYBROKER_STATUS => "$st", KEYBROKER_UPSTREAM_STATUS => "$st",
                        KEYBROKER_OUTCOME => 'upstream_error', KEYBROKER_FAMILY => 'anthropic',
                }, 'journal');
        };
}

subtest 'provider error on a streaming request: relayed as JSON' => sub {
        my $res = chat(stream => 1, headers => ['x-mock-status' => 429]);
        is($res->{status}, 429, 'status 429') or diag(KB::show_res($res));
        is($res->{json}{error}{code}, 'rate_limit_exceeded', "provider's error body");
        check_fields(journal_request($res->{headers}{'x-keybroker-request-id'}), {
                KEYBROKER_STATUS => '429', KEYBROKER_OUTCOME => 'upstream_error', KEYBROKER_STREAM => '1',
        }, 'journal');
};

# ------------------------------------------------------------ failures to reach the provider
subtest 'connection refused: 502 upstream_unavailable' => sub {
        my $res = chat(model => 'dead');
        check_openai_error($res, 502, 'upstream_unavailable', 'chat to a closed port');
        is($res->{headers}{'x-keybroker-route'}, 'dead', 'x-keybroker-route dead');
        check_fields(journal_request($res->{headers}{'x-keybroker-request-id'}), {
                KEYBROKER_STATUS => '502', KEYBROKER_UPSTREAM_STATUS => qr/^0?$/,
                KEYBROKER_OUTCOME => 'upstream_error', KEYBROKER_ROUTE => 'dead', PRIORITY => '4',
        }, 'journal');
};

subtest 'route timeout (1s) with a provider that never answers: 504 upstream_timeout' => sub {
        my $t0 = time;
        my $res = chat(model => 'slow', headers => ['x-mock-hang' => 1]);
        my $dt = time - $t0;
        check_openai_error($res, 504, 'upstream_timeout', 'chat');
        cmp_ok($dt, '>=', 0.9, sprintf('after the timeout (%.2f s)', $dt));
        cmp_ok($dt, '<', 6, 'well before curl would give up');
        check_fields(journal_request($res->{headers}{'x-keybroker-request-id'}), {
                KEYBROKER_STATUS => '504', KEYBROKER_OUTCOME => 'upstream_timeout', KEYBROKER_ROUTE => 'slow',
        }, 'journal');

        $res = req($broker, path => '/v1/messages', headers => [@ANTH, 'x-mock-hang' => 1],
                   json => { model => 'slowclaude', max_tokens => 5, messages => [{ role => 'user', content => 'x' }] });
        check_anthropic_error($res, 504, 'upstream_timeout', 'messages: Anthropic shape');

        $res = chat(model => 'slow', headers => ['x-mock-delay-ms' => 200]);
        is($res->{status}, 200, 'a provider slower than usual but within the timeout is fine');
};

subtest 'route whose key file is missing: 503 upstream_unavailable naming the key' => sub {
        my $before = $mock->count;
        my $res = chat(model => 'nokey');
        check_openai_error($res, 503, 'upstream_unavailable', 'chat');
        like($res->{json}{error}{message} // '', qr/absent-key/, 'message names the key');
        is($mock->count, $before, 'provider not called without a key');
        check_fields(journal_request($res->{headers}{'x-keybroker-request-id'}), {
                KEYBROKER_STATUS => '503', KEYBROKER_ROUTE => 'nokey', KEYBROKER_KEY => qr/^(absent-key(\@\d*)?)?$/,
        }, 'journal');
};

subtest 'https to a plain-HTTP port: TLS fails cleanly with 502' => sub {
        my $res = chat(model => 'tls');
        check_openai_error($res, 502, 'upstream_unavailable', 'chat');
        check_fields(journal_request($res->{headers}{'x-keybroker-request-id'}), {
                KEYBROKER_STATUS => '502', KEYBROKER_ROUTE => 'tls', KEYBROKER_OUTCOME => 'upstream_error',
        }, 'journal');
};

subtest 'provider cuts a JSON body short' => sub {
        my $res = chat(headers => ['x-mock-cut-after' => 20]);
        # Either the agent noticed before answering (502), or it had
        # started relaying and must not end the body as if complete.
        if (($res->{status} // 0) == 502) {
                is($res->{json}{error}{code}, 'upstream_unavailable', '502 upstream_unavailable');
        } else {
                isnt($res->{exit}, 0, 'client sees an incomplete body (curl error)') or diag(KB::show_res($res));
        }
        my $rec = journal_request($res->{headers}{'x-keybroker-request-id'});
        ok($rec && ($rec->{KEYBROKER_OUTCOME} // '') ne 'ok', 'journal outcome is not ok')
                or diag('outcome: ' . ($rec->{KEYBROKER_OUTCOME} // 'none'));
};

subtest 'still healthy after all of that' => sub {
        my $res = chat();
        is($res->{status}, 200, 'a normal call succeeds');
        ok($broker->alive, 'broker running');
};

is($broker->stop, 0, 'broker exits 0 on SIGTERM') or diag($broker->log);
done_testing;
