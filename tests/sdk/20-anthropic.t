#!/usr/bin/perl
# The official `@anthropic-ai/sdk` (tests/sdk/anthropic.mjs), unchanged,
# through keybrokerd's Unix socket: messages.create, the raw event stream,
# the messages.stream() helper (text events, finalMessage()), a tool_use ->
# tool_result round trip, models.list(). Each case checks what the SDK
# returned, the call's journal record and what the provider received (the
# route's key as x-api-key, never the SDK's dummy one).
use v5.36;
use FindBin;
use lib "$FindBin::Bin/../integration/lib", "$FindBin::Bin/lib";
use Test::More;
use KB;
use SDK;

my ($mock, $broker, $keys) = sdk_setup();
my %keys = %$keys;

my $UP = 'claude-3-5-haiku-20241022';
my $TEXT7 = join('', map { "tok$_ " } 0 .. 6);

sub run($case, %o) { return sdk_run($broker, 'anthropic', $case, %o) }

sub record($j, $call, %want) {
        return check_call_record($call, {
                KEYBROKER_TEAM => 'ops', KEYBROKER_PEER_PID => "$j->{pid}", KEYBROKER_PEER_UID => 0,
                KEYBROKER_PEER_EXE => qr{/node(js)?$}, KEYBROKER_ENDPOINT => 'messages',
                KEYBROKER_MODEL => 'claude-haiku', KEYBROKER_UPSTREAM_MODEL => $UP, KEYBROKER_ROUTE => 'anth',
                KEYBROKER_FAMILY => 'anthropic', KEYBROKER_KEY => qr/^anth-key\@\d+$/, KEYBROKER_STATUS => 200,
                KEYBROKER_UPSTREAM_STATUS => 200, KEYBROKER_OUTCOME => 'ok', KEYBROKER_STREAM => 0,
                KEYBROKER_INPUT_TOKENS => 11, KEYBROKER_OUTPUT_TOKENS => 7, %want,
        }, 'journal: messages call');
}

sub provider($call, %o) {
        return check_provider($mock, $call, family => 'anthropic', key => $keys{'anth-key'}, path => '/v1/messages',
                              upstream_model => $UP, %o);
}

sub one_call($j) {
        is(scalar @{$j->{calls} // []}, 1, 'the SDK made exactly one HTTP call') or diag(explain($j->{calls}));
        return $j->{calls}[0];
}

subtest 'messages.create' => sub {
        my $j = run('messages', headers => { 'x-mock-cached-tokens' => 4, 'x-mock-cache-write-tokens' => 2 });
        sdk_ok($j, 'the SDK call succeeded') or return;
        my $r = $j->{result};
        is($r->{type}, 'message', 'type message');
        is($r->{role}, 'assistant', 'role');
        is($r->{model}, $UP, 'model as the provider answered');
        is($r->{text}, $TEXT7, 'text');
        is($r->{stop_reason}, 'end_turn', 'stop_reason');
        is_deeply([@{$r->{usage}}{qw(input_tokens output_tokens cache_read_input_tokens cache_creation_input_tokens)}],
                  [11, 7, 4, 2], 'usage');
        my $c = one_call($j);
        is($c->{status}, 200, 'HTTP 200');
        is($c->{headers}{'x-keybroker-route'}, 'anth', 'x-keybroker-route anth');
        record($j, $c, KEYBROKER_CACHED_TOKENS => 4, KEYBROKER_CACHE_WRITE_TOKENS => 2);
        provider($c, more => sub ($e, $b) {
                is($b->{max_tokens}, 64, 'max_tokens passed');
                like($e->{headers}{'user-agent'} // '', qr{^Anthropic/JS 1\.13\.0}, "the SDK's User-Agent passed");
        });
};

subtest 'messages.create({stream: true}): raw events' => sub {
        my $j = run('messages_stream_raw', headers => { 'x-mock-output-tokens' => 3, 'x-mock-input-tokens' => 17 });
        sdk_ok($j, 'the stream was consumed') or return;
        my $r = $j->{result};
        is_deeply($r->{types}, [qw(message_start content_block_start), ('content_block_delta') x 3,
                                qw(content_block_stop message_delta message_stop)], 'events in order (the SDK drops ping)');
        is($r->{text}, 'tok0 tok1 tok2 ', 'text from the deltas');
        is_deeply($r->{usage}, { input_tokens => 17, output_tokens => 3 }, 'usage from message_start/message_delta');
        my $c = one_call($j);
        like($c->{headers}{'content-type'} // '', qr{^text/event-stream}, 'SSE');
        record($j, $c, KEYBROKER_STREAM => 1, KEYBROKER_INPUT_TOKENS => 17, KEYBROKER_OUTPUT_TOKENS => 3);
        provider($c, more => sub ($e, $b) { is($b->{stream}, JSON::PP::true, 'stream: true passed') });
};

subtest 'messages.stream() helper: text events, finalMessage()' => sub {
        my $j = run('messages_stream');
        sdk_ok($j, 'finalMessage resolved') or return;
        my $r = $j->{result};
        is_deeply($r->{texts}, [map { "tok$_ " } 0 .. 6], "one 'text' event per delta");
        is($r->{final}{text}, $TEXT7, 'final message text');
        is($r->{final}{stop_reason}, 'end_turn', 'stop_reason');
        is($r->{final}{usage}{output_tokens}, 7, 'usage.output_tokens from message_delta');
        like($r->{request_id} // '', qr/^req_mock\d+$/, "stream.request_id is the provider's request-id");
        my $c = one_call($j);
        record($j, $c, KEYBROKER_STREAM => 1);
        provider($c);
};

subtest 'tool round trip: tool_use -> tool_result -> text' => sub {
        my $j = run('tools');
        sdk_ok($j, 'both calls succeeded') or return;
        my $r = $j->{result};
        is($r->{first}{stop_reason}, 'tool_use', 'first answer: stop_reason tool_use');
        my ($use) = grep { $_->{type} eq 'tool_use' } @{$r->{first}{content}};
        ok($use, 'a tool_use block') or return;
        like($use->{id} // '', qr/^toolu_mock\d+$/, 'tool_use id');
        is($use->{name}, 'get_weather', 'the tool the app offered');
        is_deeply($use->{input}, { location => 'Paris' }, 'input');
        is($r->{second}{text}, 'tool result: sunny in Paris', 'final text uses the tool result');
        is($r->{second}{stop_reason}, 'end_turn', 'final stop_reason');
        is(scalar @{$j->{calls}}, 2, 'two HTTP calls');
        record($j, $_) for @{$j->{calls}};
        provider($j->{calls}[0], more => sub ($e, $b) {
                is($b->{tools}[0]{name}, 'get_weather', 'tools passed');
        });
        provider($j->{calls}[1], more => sub ($e, $b) {
                my @m = @{$b->{messages} // []};
                is(scalar @m, 3, 'user, assistant tool_use, user tool_result');
                is($m[2]{content}[0]{type}, 'tool_result', 'tool_result block');
                is($m[2]{content}[0]{tool_use_id}, $use->{id}, 'tool_use_id passed');
        });
};

subtest 'models.list()' => sub {
        my $j = run('models');
        sdk_ok($j, 'listed') or return;
        my $r = $j->{result};
        my @want = qw(claude-haiku emb gpt-big gpt-mini);
        is_deeply([map { $_->{id} } @{$r->{models}}], \@want, "the broker's models for team ops");
        is_deeply([map { $_->{type} } @{$r->{models}}], [('model') x 4], 'type model');
        ok(!grep({ !defined $_->{display_name} || !defined $_->{created_at} } @{$r->{models}}),
           'display_name and created_at on every model');
        is($r->{has_more}, JSON::PP::false, 'has_more false');
        is($r->{first_id}, $want[0], 'first_id');
        is($r->{last_id}, $want[-1], 'last_id');
        is(scalar @{$j->{calls}}, 2, 'two lists, one page each (the SDK did not page on)');
        my $c = $j->{calls}[0];
        like($c->{path}, qr{^/v1/models(\?|$)}, 'GET /v1/models');
        like($c->{request_headers}{'anthropic-version'} // '', qr/^\d{4}-/, 'the SDK sent anthropic-version');
        check_call_record($c, { KEYBROKER_ENDPOINT => 'models', KEYBROKER_STATUS => 200, KEYBROKER_OUTCOME => 'ok',
                                KEYBROKER_TEAM => 'ops', KEYBROKER_FAMILY => 'anthropic',
                                KEYBROKER_PEER_PID => "$j->{pid}" }, 'journal: models');
};

done_testing;
