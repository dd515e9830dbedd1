#!/usr/bin/perl
# The official `openai` SDK (tests/sdk/openai.mjs), unchanged, through
# keybrokerd's Unix socket: chat (plain, streamed by hand, the stream helper,
# include_usage), Responses (plain, raw stream events, the stream helper),
# embeddings, a tool-call round trip (plain and streamed), model listing.
# Each case checks what the SDK returned, the call's journal record and what
# the provider received (the route's key, never the SDK's dummy one).
use v5.36;
use FindBin;
use lib "$FindBin::Bin/../integration/lib", "$FindBin::Bin/lib";
use Test::More;
use KB;
use SDK;

my ($mock, $broker, $keys) = sdk_setup();
my %keys = %$keys;

my $UP = 'gpt-4o-mini-2024-07-18';
my $TEXT7 = join('', map { "tok$_ " } 0 .. 6);         # the mock's text for 7 output tokens

sub run($case, %o) { return sdk_run($broker, 'openai', $case, %o) }

# The journal record of an OpenAI call of team ops made by this node process.
sub record($j, $call, $endpoint, %want) {
        return check_call_record($call, {
                KEYBROKER_TEAM => 'ops', KEYBROKER_PEER_PID => "$j->{pid}", KEYBROKER_PEER_UID => 0,
                KEYBROKER_PEER_EXE => qr{/node(js)?$}, KEYBROKER_ENDPOINT => $endpoint,
                KEYBROKER_MODEL => 'gpt-mini', KEYBROKER_UPSTREAM_MODEL => $UP, KEYBROKER_ROUTE => 'oai',
                KEYBROKER_FAMILY => 'openai', KEYBROKER_KEY => qr/^oai-key\@\d+$/, KEYBROKER_STATUS => 200,
                KEYBROKER_UPSTREAM_STATUS => 200, KEYBROKER_OUTCOME => 'ok', KEYBROKER_STREAM => 0,
                KEYBROKER_INPUT_TOKENS => 11, KEYBROKER_OUTPUT_TOKENS => 7, %want,
        }, "journal: $endpoint call");
}

sub provider($call, $path, %o) {
        return check_provider($mock, $call, family => 'openai', key => $keys{'oai-key'}, path => $path,
                              upstream_model => $UP, %o);
}

sub one_call($j) {
        is(scalar @{$j->{calls} // []}, 1, 'the SDK made exactly one HTTP call') or diag(explain($j->{calls}));
        return $j->{calls}[0];
}

subtest 'chat.completions.create' => sub {
        my $j = run('chat');
        sdk_ok($j, 'the SDK call succeeded') or return;
        my $r = $j->{result};
        is($r->{object}, 'chat.completion', 'object');
        is($r->{model}, $UP, 'model as the provider answered');
        is($r->{content}, $TEXT7, 'assistant text');
        is($r->{finish_reason}, 'stop', 'finish_reason');
        is_deeply($r->{usage} && [@{$r->{usage}}{qw(prompt_tokens completion_tokens total_tokens)}], [11, 7, 18],
                  'usage');
        my $c = one_call($j);
        is($c->{status}, 200, 'HTTP 200');
        is($c->{headers}{'x-keybroker-team'}, 'ops', 'x-keybroker-team ops');
        is($c->{headers}{'x-keybroker-route'}, 'oai', 'x-keybroker-route oai');
        record($j, $c, 'chat');
        provider($c, '/v1/chat/completions', more => sub ($e, $b) {
                is_deeply($b->{messages}, [{ role => 'user', content => 'Say hi' }], 'messages unchanged');
                like($e->{headers}{'user-agent'} // '', qr{^OpenAI/JS 6\.49\.0}, "the SDK's User-Agent passed");
        });
};

subtest 'chat stream: for await over stream: true' => sub {
        my $j = run('chat_stream', headers => { 'x-mock-output-tokens' => 5, 'x-mock-input-tokens' => 23 });
        sdk_ok($j, 'the stream was consumed') or return;
        my $r = $j->{result};
        is($r->{text}, join('', map { "tok$_ " } 0 .. 4), 'text assembled from the deltas');
        is($r->{role}, 'assistant', 'first delta carries the role');
        is($r->{finish_reason}, 'stop', 'finish_reason stop');
        is($r->{chunks}, 7, 'role chunk + 5 deltas + finish chunk: no extra chunk');
        is_deeply($r->{usage_chunks}, [], 'no usage chunk (the broker hides the one it asked for)');
        my $c = one_call($j);
        like($c->{headers}{'content-type'} // '', qr{^text/event-stream}, 'SSE');
        record($j, $c, 'chat', KEYBROKER_STREAM => 1, KEYBROKER_INPUT_TOKENS => 23, KEYBROKER_OUTPUT_TOKENS => 5);
        provider($c, '/v1/chat/completions', more => sub ($e, $b) {
                is($b->{stream}, JSON::PP::true, 'stream: true passed');
                is_deeply($b->{stream_options}, { include_usage => JSON::PP::true },
                          'the broker asked the provider for usage');
        });
};

subtest 'chat stream: chat.completions.stream() helper, finalChatCompletion()' => sub {
        my $j = run('chat_stream_helper');
        sdk_ok($j, 'finalChatCompletion resolved') or return;
        my $r = $j->{result};
        is_deeply($r->{deltas}, [map { "tok$_ " } 0 .. 6], "'content' events, one per delta");
        is($r->{final}{content}, $TEXT7, 'final completion text');
        is($r->{final}{finish_reason}, 'stop', 'final finish_reason');
        is($r->{final}{role}, 'assistant', 'final role');
        my $c = one_call($j);
        record($j, $c, 'chat', KEYBROKER_STREAM => 1);
        provider($c, '/v1/chat/completions');
};

subtest 'chat stream with stream_options.include_usage' => sub {
        my $j = run('chat_stream_usage', headers => { 'x-mock-input-tokens' => 31, 'x-mock-output-tokens' => 4 });
        sdk_ok($j, 'the stream was consumed') or return;
        my $r = $j->{result};
        is($r->{text}, join('', map { "tok$_ " } 0 .. 3), 'text');
        my $u = $r->{usage_chunk};
        ok($u, 'the SDK saw the usage chunk') or return;
        is_deeply($u->{choices}, [], 'usage chunk has no choices');
        is_deeply([@{$u->{usage}}{qw(prompt_tokens completion_tokens total_tokens)}], [31, 4, 35], 'usage numbers');
        is($r->{chunks_after_usage}, 0, 'it is the last chunk');
        is($u->{index}, $r->{chunks}, '... and counted once');
        my $c = one_call($j);
        record($j, $c, 'chat', KEYBROKER_STREAM => 1, KEYBROKER_INPUT_TOKENS => 31, KEYBROKER_OUTPUT_TOKENS => 4);
        provider($c, '/v1/chat/completions', more => sub ($e, $b) {
                is_deeply($b->{stream_options}, { include_usage => JSON::PP::true }, "the app's stream_options passed");
        });
};

subtest 'responses.create (JSON)' => sub {
        my $j = run('responses');
        sdk_ok($j, 'the SDK call succeeded') or return;
        is($j->{result}{output_text}, $TEXT7, 'output_text');
        is($j->{result}{status}, 'completed', 'status completed');
        is($j->{result}{usage}{input_tokens}, 11, 'usage.input_tokens');
        my $c = one_call($j);
        record($j, $c, 'responses');
        provider($c, '/v1/responses');
};

subtest 'responses.create({stream: true}): raw events' => sub {
        my $j = run('responses_stream', headers => { 'x-mock-output-tokens' => 3 });
        sdk_ok($j, 'the stream was consumed') or return;
        my $r = $j->{result};
        my @t = @{$r->{types} // []};
        is($t[0], 'response.created', 'first event response.created');
        is($t[-1], 'response.completed', 'last event response.completed');
        is(scalar(grep { $_ eq 'response.output_text.delta' } @t), 3, 'three output_text.delta events');
        # The event sequence OpenAI sends, each kind once but the deltas.
        my @seen;
        for (@t) { push @seen, $_ unless @seen && $seen[-1] eq $_ }
        is_deeply(\@seen, [qw(response.created response.in_progress response.output_item.added
                                response.content_part.added response.output_text.delta response.output_text.done
                                response.content_part.done response.output_item.done response.completed)],
                  "OpenAI's event sequence, in order") or diag(explain(\@t));
        is($r->{text}, 'tok0 tok1 tok2 ', 'text from the deltas');
        is($r->{completed}{status}, 'completed', 'completed response');
        is($r->{completed}{usage}{output_tokens}, 3, 'usage in response.completed');
        my $c = one_call($j);
        record($j, $c, 'responses', KEYBROKER_STREAM => 1, KEYBROKER_OUTPUT_TOKENS => 3);
        provider($c, '/v1/responses');
};

subtest 'responses.stream() helper, finalResponse()' => sub {
        my $j = run('responses_stream_helper');
        sdk_ok($j, 'finalResponse resolved') or return;
        my $r = $j->{result};
        is_deeply($r->{deltas}, [map { "tok$_ " } 0 .. 6], 'output_text.delta events');
        is($r->{output_text}, $TEXT7, 'finalResponse().output_text');
        is($r->{status}, 'completed', 'status');
        is($r->{usage}{output_tokens}, 7, 'usage');
        my $c = one_call($j);
        record($j, $c, 'responses', KEYBROKER_STREAM => 1) if $c;
        provider($c, '/v1/responses') if $c;
};

subtest 'embeddings.create' => sub {
        my $j = run('embeddings', headers => { 'x-mock-input-tokens' => 3 });
        sdk_ok($j, 'the SDK call succeeded') or return;
        my $v = $j->{result}{embedding} // [];
        ok(@$v == 3 && abs($v->[0] - 0.1) < 1e-6 && abs($v->[1] - 0.2) < 1e-6 && abs($v->[2] - 0.3) < 1e-6,
           'the vector, decoded by the SDK from base64') or diag(explain($v));
        is($j->{result}{model}, 'text-embedding-3-small', 'model as the provider answered');
        is($j->{result}{usage}{prompt_tokens}, 3, 'usage');
        my $c = one_call($j);
        record($j, $c, 'embeddings', KEYBROKER_MODEL => 'emb', KEYBROKER_UPSTREAM_MODEL => 'text-embedding-3-small',
               KEYBROKER_INPUT_TOKENS => 3, KEYBROKER_OUTPUT_TOKENS => qr/^0?$/);
        provider($c, '/v1/embeddings', upstream_model => 'text-embedding-3-small', more => sub ($e, $b) {
                is($b->{input}, 'hello', 'input passed');
                is($b->{encoding_format}, 'base64', 'encoding_format (the SDK\'s default) passed');
        });
};

subtest 'tool call round trip: tools -> tool_calls -> tool message -> text' => sub {
        my $j = run('tools');
        sdk_ok($j, 'both calls succeeded') or return;
        my $r = $j->{result};
        is($r->{first}{finish_reason}, 'tool_calls', 'first answer: finish_reason tool_calls');
        my $tc = $r->{first}{tool_calls}[0] // {};
        like($tc->{id} // '', qr/^call_mock\d+$/, 'tool call id');
        is($tc->{type}, 'function', 'type function');
        is($tc->{function}{name}, 'get_weather', 'the tool the app offered');
        is_deeply($r->{args}, { location => 'Paris' }, 'arguments parsed by the app');
        is($r->{second}{content}, 'tool result: sunny in Paris', 'final text uses the tool result');
        is($r->{second}{finish_reason}, 'stop', 'final finish_reason stop');
        is(scalar @{$j->{calls}}, 2, 'two HTTP calls');
        record($j, $_, 'chat') for @{$j->{calls}};
        provider($j->{calls}[0], '/v1/chat/completions', more => sub ($e, $b) {
                is($b->{tools}[0]{function}{name}, 'get_weather', 'tools passed');
        });
        provider($j->{calls}[1], '/v1/chat/completions', more => sub ($e, $b) {
                my @m = @{$b->{messages} // []};
                is(scalar @m, 3, 'user, assistant tool_calls, tool');
                is($m[1]{tool_calls}[0]{id}, $tc->{id}, 'assistant message carries the tool call');
                is($m[2]{role}, 'tool', 'tool message');
                is($m[2]{tool_call_id}, $tc->{id}, 'tool_call_id passed');
        });
};

subtest 'tool call streamed: the stream helper assembles tool_calls' => sub {
        my $j = run('tools_stream');
        sdk_ok($j, 'finalChatCompletion resolved') or return;
        my $r = $j->{result};
        is($r->{final}{finish_reason}, 'tool_calls', 'finish_reason tool_calls');
        my $tc = $r->{final}{tool_calls}[0] // {};
        like($tc->{id} // '', qr/^call_mock\d+$/, 'tool call id');
        is($tc->{function}{name}, 'get_weather', 'name');
        is_deeply(KB::json_decode($tc->{function}{arguments} // ''), { location => 'Paris' }, 'arguments assembled');
        is(scalar @{$r->{done}}, 1, "one 'tool_calls.function.arguments.done' event");
        my $c = one_call($j);
        record($j, $c, 'chat', KEYBROKER_STREAM => 1, KEYBROKER_OUTPUT_TOKENS => qr/^\d+$/) if $c;
};

subtest 'models.list()' => sub {
        my $j = run('models');
        sdk_ok($j, 'listed') or return;
        is_deeply([map { $_->{id} } @{$j->{result}{models}}], [qw(claude-haiku emb gpt-big gpt-mini)],
                  "the broker's models for team ops (not the provider's)");
        is_deeply([map { $_->{object} } @{$j->{result}{models}}], [('model') x 4], 'object model');
        my $c = one_call($j);
        is($c->{path}, '/v1/models', 'GET /v1/models');
        check_call_record($c, { KEYBROKER_ENDPOINT => 'models', KEYBROKER_STATUS => 200, KEYBROKER_OUTCOME => 'ok',
                                KEYBROKER_TEAM => 'ops', KEYBROKER_PEER_PID => "$j->{pid}" }, 'journal: models');
};

done_testing;
