#!/usr/bin/perl
# The mock provider itself (tests/mock): every other integration test trusts
# its shapes, scripts and log, so check them first. Self-contained: talks to
# kb-mock directly with curl, no broker involved.
use strict;
use warnings;
use Test::More;
use JSON::PP;
use File::Temp qw(tempdir);
use IO::Socket::INET;
use POSIX qw(WNOHANG);
use Time::HiRes qw(time sleep);
use FindBin;
use MIME::Base64 ();

my $root = "$FindBin::Bin/../..";
my $mock = $ENV{KB_MOCK} // "$root/" . ($ENV{BUILD} // 'build') . "/kb-mock";
plan skip_all => "curl not installed" unless grep { -x "$_/curl" } split(/:/, $ENV{PATH});
BAIL_OUT("$mock not built (make build/kb-mock)") unless -x $mock;

my $dir = tempdir(CLEANUP => 1);
my $KEY = 'sk-mock-good';

# Whatever happens, no mock outlives the test (it would hold prove's pipes).
my %mocks;
END {
        kill 'KILL', keys %mocks;
        waitpid($_, 0) for keys %mocks;
}

sub start_mock {
        my (@args) = @_;
        my $port_file = "$dir/port." . scalar(@args) . ".$$." . int(rand(1e9));
        my $pid = fork // die "fork: $!";
        if (!$pid) {
                open(STDOUT, '>', '/dev/null');
                exec($mock, '--port', '0', '--port-file', $port_file, @args) or die "exec: $!";
        }
        $mocks{$pid} = 1;
        for (1 .. 100) {
                last if -s $port_file;
                sleep 0.05;
        }
        open(my $fh, '<', $port_file) or BAIL_OUT("kb-mock did not write its port file");
        my $port = <$fh>;
        chomp $port;
        BAIL_OUT("bad port '$port'") unless $port =~ /^\d+$/ && $port > 0;
        return ($pid, $port);
}

my $log = "$dir/mock.log";
my ($pid, $port) = start_mock('--log', $log, '--require-key', $KEY, '--require-key', 'sk-other');
my $base = "http://127.0.0.1:$port";
# A body that is not JSON fails the check that reads it, not the whole script.
package LaxJSON {
        sub new { bless { j => JSON::PP->new }, shift }
        sub decode {
                my ($self, $text) = @_;
                my $v = eval { $self->{j}->decode($text) };
                Test::More::diag("not JSON: " . substr($text // '', 0, 200)) if $@;
                return $v // {};
        }
}
my $json = LaxJSON->new;

# curl(path, body => ..., headers => [...], key => 0|KEY, method => ..., max_time => s)
# returns { rc, status, headers => {lc name => value}, body }.
my $seq = 0;
sub curl {
        my ($path, %o) = @_;
        $seq++;
        my ($hf, $bf) = ("$dir/h$seq", "$dir/b$seq");
        my @a = ('curl', '-s', '-N', '-D', $hf, '-o', $bf, '-w', '%{http_code}');
        push @a, '-X', $o{method} if $o{method};
        push @a, '-m', $o{max_time} // 20;
        if (defined $o{body}) {
                open(my $f, '>', "$dir/req$seq") or die;
                print $f $o{body};
                close $f;
                push @a, '-H', 'content-type: application/json', '--data-binary', "\@$dir/req$seq";
        }
        my $key = exists $o{key} ? $o{key} : $KEY;
        push @a, '-H', "authorization: Bearer $key" if $key;
        push @a, map { ('-H', $_) } @{ $o{headers} // [] };
        push @a, "$base$path";
        open(my $p, '-|', @a) or die "curl: $!";
        my $code = do { local $/; <$p> } // '';
        close $p;
        my $rc = $? >> 8;
        my %h;
        if (open(my $f, '<', $hf)) {
                while (<$f>) {
                        s/\r?\n$//;
                        $h{lc $1} = $2 if /^([^:\s]+):\s*(.*)$/;
                }
        }
        my $body = '';
        if (open(my $f, '<', $bf)) { local $/; $body = <$f> // ''; }
        return { rc => $rc, status => $code + 0, headers => \%h, body => $body };
}

sub sse_events {
        my ($body) = @_;
        my @ev;
        for my $block (split /\n\n/, $body) {
                my %e;
                for (split /\n/, $block) {
                        $e{event} = $1 if /^event: (.*)$/;
                        $e{data} = $1 if /^data: (.*)$/;
                }
                next unless defined $e{data};
                $e{json} = $e{data} eq '[DONE]' ? undef : $json->decode($e{data});
                push @ev, \%e;
        }
        return @ev;
}

sub log_lines {
        open(my $f, '<', $log) or return ();
        return map { $json->decode($_) } <$f>;
}

# --- OpenAI chat, JSON ---------------------------------------------------
my $t;
my $r = curl('/v1/chat/completions', body => '{"model":"gpt-x","messages":[]}');
is($r->{status}, 200, 'chat: 200');
is($r->{headers}{'content-type'}, 'application/json', 'chat: content-type');
like($r->{headers}{'x-mock-n'}, qr/^\d+$/, 'chat: x-mock-n');
is($r->{headers}{'x-request-id'}, "req_mock$r->{headers}{'x-mock-n'}", 'chat: x-request-id');
is($r->{headers}{'x-ratelimit-remaining-tokens'}, '999000', 'chat: ratelimit headers');
my $j = $json->decode($r->{body});
is($j->{object}, 'chat.completion', 'chat: object');
is($j->{model}, 'gpt-x', 'chat: model echoed');
is($j->{choices}[0]{message}{content}, join('', map { "tok$_ " } 0 .. 6), 'chat: text');
is_deeply($j->{usage}, { prompt_tokens => 11, completion_tokens => 7, total_tokens => 18,
                         prompt_tokens_details => { cached_tokens => 0 },
                         completion_tokens_details => { reasoning_tokens => 0 } }, 'chat: default usage');

$r = curl('/v1/chat/completions', body => '{"model":"m"}',
          headers => ['x-mock-input-tokens: 100', 'x-mock-output-tokens: 3', 'x-mock-cached-tokens: 40',
                      'x-mock-reasoning-tokens: 2']);
$j = $json->decode($r->{body});
is_deeply($j->{usage}, { prompt_tokens => 100, completion_tokens => 3, total_tokens => 103,
                         prompt_tokens_details => { cached_tokens => 40 },
                         completion_tokens_details => { reasoning_tokens => 2 } }, 'chat: scripted usage');

# --- OpenAI chat, SSE ----------------------------------------------------
$r = curl('/v1/chat/completions', body => '{"model":"m","stream":true,"stream_options":{"include_usage":true}}',
          headers => ['x-mock-output-tokens: 3']);
is($r->{rc}, 0, 'chat sse: stream terminated properly');
is($r->{headers}{'content-type'}, 'text/event-stream', 'chat sse: content-type');
is($r->{headers}{'transfer-encoding'}, 'chunked', 'chat sse: chunked');
my @ev = sse_events($r->{body});
is(scalar @ev, 1 + 3 + 1 + 1 + 1, 'chat sse: role + 3 deltas + stop + usage + DONE');
is($ev[0]{json}{choices}[0]{delta}{role}, 'assistant', 'chat sse: first chunk has the role');
is($ev[2]{json}{choices}[0]{delta}{content}, 'tok1 ', 'chat sse: delta text');
is($ev[4]{json}{choices}[0]{finish_reason}, 'stop', 'chat sse: finish chunk');
ok((grep { exists $_->{usage} && !defined $_->{usage} } map { $_->{json} } @ev[0 .. 4]) == 5,
   'chat sse: usage:null in normal chunks when include_usage');
is_deeply($ev[5]{json}{choices}, [], 'chat sse: usage chunk has no choices');
is($ev[5]{json}{usage}{completion_tokens}, 3, 'chat sse: usage chunk');
is($ev[6]{data}, '[DONE]', 'chat sse: ends with [DONE]');
like($r->{body}, qr/\A(data: [^\n]+\n\n)+\z/, 'chat sse: every event is "data: ...\n\n"');

$r = curl('/v1/chat/completions', body => '{"model":"m","stream":true}');
@ev = sse_events($r->{body});
is(scalar @ev, 1 + 7 + 1 + 1, 'chat sse without include_usage: no usage chunk');
ok(!(grep { defined $_->{json} && exists $_->{json}{usage} } @ev), 'chat sse: no usage key at all');
is($ev[-1]{data}, '[DONE]', 'chat sse: [DONE]');

# --- Responses API -------------------------------------------------------
$r = curl('/v1/responses', body => '{"model":"r1"}', headers => ['x-mock-cached-tokens: 5']);
$j = $json->decode($r->{body});
my $n_resp = $r->{headers}{'x-mock-n'};
is_deeply([@$j{qw(id object created_at model status)}], ["resp_mock$n_resp", 'response', 1700000000, 'r1', 'completed'],
          'responses: id, object, created_at, model, status');
is_deeply($j->{output}, [{ id => "msg_mock$n_resp", type => 'message', status => 'completed', role => 'assistant',
                           content => [{ type => 'output_text', text => join('', map { "tok$_ " } 0 .. 6),
                                         annotations => [] }] }], 'responses: the message item');
is_deeply($j->{usage}, { input_tokens => 11, input_tokens_details => { cached_tokens => 5 }, output_tokens => 7,
                         output_tokens_details => { reasoning_tokens => 0 }, total_tokens => 18 }, 'responses: usage');
my $resp_json = $j;

$r = curl('/v1/responses', body => '{"model":"r1","stream":true}', headers => ['x-mock-output-tokens: 2']);
is($r->{rc}, 0, 'responses sse: terminated');
is($r->{headers}{'content-type'}, 'text/event-stream', 'responses sse: content-type');
like($r->{body}, qr/\A(event: [a-z_.]+\ndata: [^\n]+\n\n)+\z/, 'responses sse: every event is "event: NAME\ndata: ...\n\n"');
@ev = sse_events($r->{body});
my @resp_names = (qw(response.created response.in_progress response.output_item.added response.content_part.added),
                  ('response.output_text.delta') x 2,
                  qw(response.output_text.done response.content_part.done response.output_item.done response.completed));
is_deeply([map { $_->{event} } @ev], \@resp_names, 'responses sse: event sequence');
is_deeply([map { $_->{json}{type} } @ev], \@resp_names, 'responses sse: each data "type" is its event name');
is_deeply([map { $_->{json}{sequence_number} } @ev], [0 .. $#ev], 'responses sse: sequence_number 0, 1, 2, ...');
{
        my $n = $r->{headers}{'x-mock-n'};
        my ($mid, $full) = ("msg_mock$n", 'tok0 tok1 ');
        my $part = sub { { type => 'output_text', text => $_[0], annotations => [] } };
        my $in_progress = { id => "resp_mock$n", object => 'response', created_at => 1700000000, model => 'r1',
                            status => 'in_progress', output => [], usage => undef };
        my $strip = sub { my %h = %{ $_[0] // {} }; delete @h{qw(type sequence_number)}; \%h };
        my $at = { item_id => $mid, output_index => 0, content_index => 0 };
        my @want = (
                { response => $in_progress },
                { response => $in_progress },
                { output_index => 0, item => { id => $mid, type => 'message', status => 'in_progress',
                                               role => 'assistant', content => [] } },
                { %$at, part => $part->('') },
                { %$at, delta => 'tok0 ' },
                { %$at, delta => 'tok1 ' },
                { %$at, text => $full },
                { %$at, part => $part->($full) },
                { output_index => 0, item => { id => $mid, type => 'message', status => 'completed',
                                               role => 'assistant', content => [$part->($full)] } },
        );
        for my $i (0 .. $#want) {
                is_deeply($strip->($ev[$i]{json}), $want[$i], "responses sse: $resp_names[$i] (#$i) shape");
        }
        my $done = $ev[-1]{json}{response};
        is_deeply([@$done{qw(id status created_at)}], ["resp_mock$n", 'completed', 1700000000],
                  'responses sse: completed response');
        is_deeply($done->{output}, [$want[8]{item}], 'responses sse: completed output = the done item');
        is_deeply($done->{usage}, { input_tokens => 11, input_tokens_details => { cached_tokens => 0 }, output_tokens => 2,
                                    output_tokens_details => { reasoning_tokens => 0 }, total_tokens => 13 },
                  'responses sse: completed carries usage');
        is_deeply([sort keys %$done], [sort keys %$resp_json], 'responses sse: completed response has the JSON answer\'s fields');
}
$r = curl('/v1/responses', body => '{"stream":true}', headers => ['x-mock-output-tokens: 0']);
@ev = sse_events($r->{body});
is(scalar @ev, 8, 'responses sse, 0 tokens: no delta, the 8 other events');
is($ev[-1]{json}{response}{output}[0]{content}[0]{text}, '', 'responses sse, 0 tokens: empty text');

# The transport scripts on the Responses stream.
$r = curl('/v1/responses', body => '{"stream":true}', headers => ['x-mock-cut-after: 5']);
is($r->{rc}, 18, 'responses sse cut-after: unterminated');
@ev = sse_events($r->{body});
is_deeply([map { $_->{event} } @ev], [@resp_names[0 .. 4]], 'responses sse cut-after 5: exactly the first 5 events');
$r = curl('/v1/responses', body => '{"stream":true}', headers => ['x-mock-long-line-bytes: 100000',
                                                                 'x-mock-output-tokens: 1']);
@ev = sse_events($r->{body});
is(length((split /\n/, $r->{body})[0]), 100000, 'responses sse long-line: the first line is 100000 bytes');
is_deeply([map { $_->{event} // '' } @ev[1 .. $#ev]], [@resp_names[0 .. 4], @resp_names[6 .. 9]],
          'responses sse long-line: then the usual events');
$r = curl('/v1/responses', body => '{"stream":true}', headers => ['x-mock-bad-usage: string']);
@ev = sse_events($r->{body});
is($ev[-1]{json}{response}{usage}{output_tokens}, '7', 'responses sse bad-usage: a string in response.completed');
ok(!ref($ev[-1]{json}{response}{usage}{output_tokens}) && $r->{body} =~ /"output_tokens":"7"/,
   'responses sse bad-usage: really a JSON string');
is($ev[0]{json}{response}{usage}, undef, 'responses sse bad-usage: usage:null left alone');
$t = time;
$r = curl('/v1/responses', body => '{"stream":true}', headers => ['x-mock-event-delay-ms: 40',
                                                                 'x-mock-output-tokens: 1']);
ok(time - $t >= 0.31 && $r->{rc} == 0, 'responses sse event-delay: 9 events, 8 gaps');

# --- Embeddings, models ---------------------------------------------------
$r = curl('/v1/embeddings', body => '{"model":"e1","input":"x"}');
$j = $json->decode($r->{body});
is_deeply([$j->{object}, $j->{model}, $j->{usage}], ['list', 'e1', { prompt_tokens => 11, total_tokens => 11 }],
          'embeddings: shape');
is_deeply($j->{data}[0]{embedding}, [0.1, 0.2, 0.3], 'embeddings: floats by default');
$r = curl('/v1/embeddings', body => '{"model":"e1","input":"x","encoding_format":"base64"}');
$j = $json->decode($r->{body});
is($j->{data}[0]{embedding}, 'zczMPc3MTD6amZk+', 'embeddings: encoding_format base64 (as the OpenAI SDK asks)');
is_deeply([map { sprintf('%.6f', $_) } unpack('f<3', MIME::Base64::decode_base64($j->{data}[0]{embedding}))],
          ['0.100000', '0.200000', '0.300000'], 'embeddings: base64 of little-endian float32 0.1, 0.2, 0.3');
$r = curl('/v1/models');
$j = $json->decode($r->{body});
is($j->{object}, 'list', 'models: OpenAI list');
ok(@{ $j->{data} } >= 1 && $j->{data}[0]{object} eq 'model', 'models: entries');
$r = curl('/v1/models', headers => ['anthropic-version: 2023-06-01']);
$j = $json->decode($r->{body});
ok(exists $j->{has_more} && $j->{data}[0]{type} eq 'model', 'models: Anthropic shape with anthropic-version');

# --- Anthropic messages ---------------------------------------------------
$r = curl('/v1/messages', key => undef, body => '{"model":"claude-x","max_tokens":5}',
          headers => ["x-api-key: $KEY", 'anthropic-version: 2023-06-01', 'x-mock-cached-tokens: 3',
                      'x-mock-cache-write-tokens: 4']);
is($r->{status}, 200, 'messages: 200 with x-api-key');
is($r->{headers}{'request-id'}, "req_mock$r->{headers}{'x-mock-n'}", 'messages: request-id');
is($r->{headers}{'anthropic-ratelimit-requests-remaining'}, '999', 'messages: ratelimit header');
$j = $json->decode($r->{body});
is_deeply([$j->{type}, $j->{model}, $j->{stop_reason}], ['message', 'claude-x', 'end_turn'], 'messages: shape');
is_deeply($j->{usage}, { input_tokens => 11, output_tokens => 7, cache_creation_input_tokens => 4,
                         cache_read_input_tokens => 3 }, 'messages: usage');
$r = curl('/v1/messages', body => '{"model":"c","stream":true}', headers => ['x-mock-output-tokens: 2']);
@ev = sse_events($r->{body});
is_deeply([map { $_->{event} } @ev],
          [qw(message_start content_block_start ping content_block_delta content_block_delta
              content_block_stop message_delta message_stop)], 'messages sse: event sequence');
is($ev[0]{json}{message}{usage}{input_tokens}, 11, 'messages sse: message_start usage');
is($ev[6]{json}{usage}{output_tokens}, 2, 'messages sse: message_delta usage');
is($r->{rc}, 0, 'messages sse: terminated');
$r = curl('/v1/messages/count_tokens', body => '{"model":"c"}', headers => ['x-mock-input-tokens: 42']);
is($r->{body}, '{"input_tokens":42}', 'count_tokens');

# --- Tool calls -----------------------------------------------------------
my $WEATHER = '{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}}';
my $chat_usage = { prompt_tokens => 11, completion_tokens => 7, total_tokens => 18,
                   prompt_tokens_details => { cached_tokens => 0 },
                   completion_tokens_details => { reasoning_tokens => 0 } };
$r = curl('/v1/chat/completions', body => qq({"model":"m","tools":[$WEATHER],"messages":[{"role":"user","content":"hi"}]}));
$j = $json->decode($r->{body});
my $n_tool = $r->{headers}{'x-mock-n'};
is_deeply($j->{choices}, [{ index => 0, finish_reason => 'tool_calls',
                            message => { role => 'assistant', content => undef,
                                         tool_calls => [{ id => "call_mock$n_tool", type => 'function',
                                                          function => { name => 'get_weather',
                                                                        arguments => '{"location":"Paris"}' } }] } }],
          'chat tools: the assistant calls tools[0] with the default arguments');
is_deeply($j->{usage}, $chat_usage, 'chat tools: usual usage');
$r = curl('/v1/chat/completions', body => qq({"tools":[$WEATHER],"messages":[{"role":"user","content":"hi"}]}),
          headers => [qq(x-mock-tool-arguments: {"city": "Z\x{c3}\x{bc}rich", "days": 3})]);
is($json->decode($r->{body})->{choices}[0]{message}{tool_calls}[0]{function}{arguments}, qq({"city": "Z\x{c3}\x{bc}rich", "days": 3}),
   'chat tools: x-mock-tool-arguments verbatim');
for my $bad ('[1,2]', '{"a":', 'Paris') {
        $r = curl('/v1/chat/completions', body => qq({"tools":[$WEATHER],"messages":[]}),
                  headers => ["x-mock-tool-arguments: $bad"]);
        is($json->decode($r->{body})->{choices}[0]{message}{tool_calls}[0]{function}{arguments}, '{"location":"Paris"}',
           "chat tools: x-mock-tool-arguments '$bad' (not a JSON object) ignored");
}
$r = curl('/v1/chat/completions', body => '{"tools":[{"type":"function"}],"messages":[]}');
is($json->decode($r->{body})->{choices}[0]{message}{tool_calls}[0]{function}{name}, 'tool', 'chat tools: no name: "tool"');
$r = curl('/v1/chat/completions', body => '{"tools":[],"messages":[{"role":"user","content":"hi"}]}');
is($json->decode($r->{body})->{choices}[0]{message}{content}, join('', map { "tok$_ " } 0 .. 6), 'chat tools: empty tools: text');
$r = curl('/v1/chat/completions', body => qq({"tools":[$WEATHER],"messages":[{"role":"user","content":"hi"},
          {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{}"}}]},
          {"role":"tool","tool_call_id":"call_1","content":"sunny, 21C"}]}));
$j = $json->decode($r->{body});
is_deeply($j->{choices}[0], { index => 0, finish_reason => 'stop',
                              message => { role => 'assistant', content => 'tool result: sunny, 21C' } },
          'chat tools: a tool message last: the assistant answers with its content');
is_deeply($j->{usage}, $chat_usage, 'chat tools: usage after the tool result');

$r = curl('/v1/chat/completions', body => qq({"stream":true,"stream_options":{"include_usage":true},"tools":[$WEATHER],"messages":[]}),
          headers => ['x-mock-tool-arguments: {"q":"abcdef"}']);
is($r->{rc}, 0, 'chat tools sse: terminated');
@ev = sse_events($r->{body});
$n_tool = $r->{headers}{'x-mock-n'};
is(scalar @ev, 7, 'chat tools sse: role, call, 2 fragments, finish, usage, [DONE]');
is($ev[0]{json}{choices}[0]{delta}{role}, 'assistant', 'chat tools sse: role chunk');
is_deeply($ev[1]{json}{choices}[0]{delta}, { tool_calls => [{ index => 0, id => "call_mock$n_tool", type => 'function',
                                                               function => { name => 'get_weather', arguments => '' } }] },
          'chat tools sse: the call chunk');
my @frags = map { $_->{json}{choices}[0]{delta}{tool_calls}[0]{function}{arguments} } @ev[2, 3];
is(join('', @frags), '{"q":"abcdef"}', 'chat tools sse: the fragments make the arguments');
ok(length $frags[0] && length $frags[1], 'chat tools sse: two non-empty fragments');
is_deeply([sort keys %{ $ev[2]{json}{choices}[0]{delta}{tool_calls}[0] }], ['function', 'index'],
          'chat tools sse: fragments carry only index and function');
is_deeply([$ev[4]{json}{choices}[0]{finish_reason}, $ev[4]{json}{choices}[0]{delta}], ['tool_calls', {}],
          'chat tools sse: finish_reason tool_calls');
is_deeply($ev[5]{json}{usage}, $chat_usage, 'chat tools sse: usage chunk');
is($ev[6]{data}, '[DONE]', 'chat tools sse: [DONE]');
$r = curl('/v1/chat/completions', body => '{"stream":true,"messages":[{"role":"tool","tool_call_id":"c","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]}');
@ev = sse_events($r->{body});
is(join('', map { $_->{json}{choices}[0]{delta}{content} // '' } grep { $_->{json} } @ev), 'tool result: ab',
   'chat tools sse: the tool result echoed (content parts joined)');
is($ev[-2]{json}{choices}[0]{finish_reason}, 'stop', 'chat tools sse: tool result ends with stop');

my $ATOOL = '{"name":"get_weather","input_schema":{"type":"object"}}';
$r = curl('/v1/messages', body => qq({"model":"c","max_tokens":9,"tools":[$ATOOL],"messages":[{"role":"user","content":"hi"}]}),
          headers => ['x-mock-tool-arguments: {"city":"Oslo"}']);
$j = $json->decode($r->{body});
$n_tool = $r->{headers}{'x-mock-n'};
is_deeply([$j->{content}, $j->{stop_reason}],
          [[{ type => 'tool_use', id => "toolu_mock$n_tool", name => 'get_weather', input => { city => 'Oslo' } }], 'tool_use'],
          'messages tools: a tool_use block with the arguments as an object');
is($j->{usage}{output_tokens}, 7, 'messages tools: usual usage');
$r = curl('/v1/messages', body => qq({"tools":[$ATOOL],"messages":[]}));
is_deeply($json->decode($r->{body})->{content}[0]{input}, { location => 'Paris' }, 'messages tools: default input');
for my $c (['"sunny"', 'a string'], ['[{"type":"text","text":"sun"},{"type":"text","text":"ny"}]', 'text blocks joined']) {
        $r = curl('/v1/messages', body => qq({"tools":[$ATOOL],"messages":[{"role":"user","content":"hi"},
                  {"role":"assistant","content":[{"type":"tool_use","id":"toolu_1","name":"get_weather","input":{}}]},
                  {"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1","content":$c->[0]}]}]}));
        $j = $json->decode($r->{body});
        is_deeply([$j->{content}, $j->{stop_reason}], [[{ type => 'text', text => 'tool result: sunny' }], 'end_turn'],
                  "messages tools: a tool_result last ($c->[1]): the assistant answers with it");
}
$r = curl('/v1/messages', body => qq({"stream":true,"tools":[$ATOOL],"messages":[]}));
is($r->{rc}, 0, 'messages tools sse: terminated');
@ev = sse_events($r->{body});
$n_tool = $r->{headers}{'x-mock-n'};
is_deeply([map { $_->{event} } @ev],
          [qw(message_start content_block_start content_block_delta content_block_delta content_block_stop
              message_delta message_stop)], 'messages tools sse: event sequence');
is_deeply($ev[1]{json}, { type => 'content_block_start', index => 0,
                          content_block => { type => 'tool_use', id => "toolu_mock$n_tool", name => 'get_weather', input => {} } },
          'messages tools sse: content_block_start with an empty input');
is_deeply([map { $_->{json}{delta}{type} } @ev[2, 3]], ['input_json_delta', 'input_json_delta'],
          'messages tools sse: input_json_delta');
is(join('', map { $_->{json}{delta}{partial_json} } @ev[2, 3]), '{"location":"Paris"}', 'messages tools sse: the fragments make the input');
is_deeply([$ev[5]{json}{delta}{stop_reason}, $ev[5]{json}{usage}{output_tokens}], ['tool_use', 7],
          'messages tools sse: message_delta tool_use with usage');
$r = curl('/v1/messages', body => qq({"stream":true,"messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"t","content":"42"}]}]}));
@ev = sse_events($r->{body});
is(join('', map { $_->{json}{delta}{text} // '' } grep { ($_->{event} // '') eq 'content_block_delta' } @ev), 'tool result: 42',
   'messages tools sse: the tool result echoed');
is($ev[-2]{json}{delta}{stop_reason}, 'end_turn', 'messages tools sse: tool result ends with end_turn');

# --- Errors ---------------------------------------------------------------
$r = curl('/v1/nope', body => '{}');
is($r->{status}, 404, 'unknown path: 404');
ok($json->decode($r->{body})->{error}{message}, 'unknown path: OpenAI shape');
$r = curl('/v1/chat/completions', body => '{not json');
is($r->{status}, 400, 'invalid JSON: 400');
$r = curl('/v1/messages', body => '{not json');
is($json->decode($r->{body})->{type}, 'error', 'invalid JSON: Anthropic shape on /v1/messages');

my %otype = (401 => 'invalid_request_error', 404 => 'invalid_request_error', 429 => 'rate_limit_error',
             500 => 'server_error', 503 => 'server_error', 529 => 'server_error');
my %atype = (401 => 'authentication_error', 404 => 'not_found_error', 429 => 'rate_limit_error',
             500 => 'api_error', 529 => 'overloaded_error');
for my $s (sort keys %otype) {
        $r = curl('/v1/chat/completions', body => '{"model":"gx"}', headers => ["x-mock-status: $s"]);
        is($r->{status}, $s, "x-mock-status $s: OpenAI status");
        is($json->decode($r->{body})->{error}{type}, $otype{$s}, "x-mock-status $s: OpenAI type");
}
for my $s (sort keys %atype) {
        $r = curl('/v1/messages', body => '{"model":"cx"}', headers => ["x-mock-status: $s"]);
        is($r->{status}, $s, "x-mock-status $s: Anthropic status");
        $j = $json->decode($r->{body});
        is("$j->{type}/$j->{error}{type}", "error/$atype{$s}", "x-mock-status $s: Anthropic type");
}
$r = curl('/v1/chat/completions', body => '{"model":"gx"}', headers => ['x-mock-status: 404']);
is($json->decode($r->{body})->{error}{code}, 'model_not_found', '404: model_not_found');
like($json->decode($r->{body})->{error}{message}, qr/`gx`/, '404: names the model');
$r = curl('/v1/chat/completions', body => '{}', headers => ['x-mock-status: 429']);
is($r->{headers}{'retry-after'}, '1', '429: retry-after defaults to 1');
is($json->decode($r->{body})->{error}{code}, 'rate_limit_exceeded', '429: code');
$r = curl('/v1/messages', body => '{}', headers => ['x-mock-status: 429', 'x-mock-retry-after: 9']);
is($r->{headers}{'retry-after'}, '9', '429: x-mock-retry-after');

# --- Authentication -------------------------------------------------------
$r = curl('/v1/chat/completions', key => undef, body => '{}');
is($r->{status}, 401, 'no key: 401');
is($json->decode($r->{body})->{error}{code}, 'invalid_api_key', 'no key: OpenAI shape');
$r = curl('/v1/chat/completions', key => 'sk-wrong', body => '{}');
is($r->{status}, 401, 'wrong key: 401');
$r = curl('/v1/messages', key => undef, body => '{}', headers => ['x-api-key: sk-wrong']);
is($json->decode($r->{body})->{error}{type}, 'authentication_error', 'wrong x-api-key: Anthropic shape');
$r = curl('/v1/chat/completions', key => 'sk-other', body => '{}');
is($r->{status}, 200, 'second --require-key accepted');

# --- Transport scripts ----------------------------------------------------
$r = curl('/v1/chat/completions', body => '{"stream":true}', headers => ['x-mock-cut-after: 2']);
is($r->{rc}, 18, 'cut-after (sse): curl sees an unterminated body (18)');
@ev = sse_events($r->{body});
is(scalar @ev, 2, 'cut-after (sse): exactly 2 events');
unlike($r->{body}, qr/\[DONE\]/, 'cut-after (sse): no [DONE]');
$r = curl('/v1/messages', body => '{"stream":true}', headers => ['x-mock-cut-after: 100']);
is($r->{rc}, 18, 'cut-after beyond the end: still unterminated');
$r = curl('/v1/chat/completions', body => '{}', headers => ['x-mock-cut-after: 25']);
is($r->{rc}, 18, 'cut-after (json): curl sees a short body (18)');
is(length $r->{body}, 25, 'cut-after (json): exactly 25 bytes');

$t = time;
$r = curl('/v1/chat/completions', body => '{}', headers => ['x-mock-delay-ms: 300']);
ok(time - $t >= 0.29 && $r->{status} == 200, 'delay-ms delays the response');
$t = time;
$r = curl('/v1/chat/completions', body => '{"stream":true}', headers => ['x-mock-event-delay-ms: 50',
                                                                        'x-mock-output-tokens: 4']);
ok(time - $t >= 0.29 && $r->{rc} == 0, 'event-delay-ms spaces the SSE events (7 events, 6 gaps)');
$t = time;
$r = curl('/v1/chat/completions', body => '{}', headers => ['x-mock-event-delay-ms: 200']);
ok(time - $t >= 0.19 && $json->decode($r->{body})->{usage}, 'event-delay-ms splits a JSON body');

$t = time;
$r = curl('/v1/chat/completions', body => '{}', headers => ['x-mock-hang: 1'], max_time => 1);
is($r->{rc}, 28, 'hang: no answer until the client gives up (28)');

$r = curl('/v1/chat/completions', body => '{}', headers => ['x-mock-body-bytes: 200000']);
is(length $r->{body}, 200000, 'body-bytes pads the body');
ok($json->decode($r->{body})->{usage}, 'body-bytes: still valid JSON');

# --- Log --------------------------------------------------------------------
$r = curl('/v1/chat/completions?x=1', body => '{"model":"logged","note":"é"}',
          headers => ['X-Test-Header: One', 'x-test-header: two']);
my $n = $r->{headers}{'x-mock-n'};
my ($line) = grep { $_->{n} == $n } log_lines();
ok($line, 'log: line for the request');
is($line->{method}, 'POST', 'log: method');
is($line->{path}, '/v1/chat/completions', 'log: path');
is($line->{query}, 'x=1', 'log: query string kept apart');
is($line->{headers}{'x-test-header'}, 'One, two', 'log: lowercased names, repeats joined');
is($line->{headers}{authorization}, "Bearer $KEY", 'log: the key the provider received');
is($line->{body}, '{"model":"logged","note":"é"}', 'log: raw body');
my @all = log_lines();
is_deeply([map { $_->{n} } @all], [1 .. scalar @all], 'log: one line per request, in sequence');

# --- Pipelining and keep-alive -------------------------------------------
{
        my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port", Timeout => 5) or die;
        my $req = '';
        for my $m (qw(p1 p2 p3)) {
                my $b = qq({"model":"$m"});
                $req .= "POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer $KEY\r\n"
                        . "x-mock-delay-ms: " . ($m eq 'p1' ? 100 : 0) . "\r\n"
                        . "Content-Length: " . length($b) . "\r\n" . ($m eq 'p3' ? "Connection: close\r\n" : '')
                        . "\r\n$b";
        }
        print $s $req;
        my $all = do { local $/; <$s> } // '';
        my @models = $all =~ /"model":"(p\d)"/g;
        is_deeply(\@models, [qw(p1 p2 p3)], 'pipelining: three answers, in order');
}

# --- SIGTERM --------------------------------------------------------------
kill 'TERM', $pid;
my $waited = 0;
while (waitpid($pid, WNOHANG) == 0 && $waited++ < 100) { sleep 0.05 }
is($? >> 8, 0, 'SIGTERM: exit 0');
delete $mocks{$pid};

# Without --require-key no check at all.
my ($pid2, $port2) = start_mock();
$base = "http://127.0.0.1:$port2";
$r = curl('/v1/chat/completions', key => undef, body => '{}');
is($r->{status}, 200, 'no --require-key: anything goes');
kill 'TERM', $pid2;
waitpid($pid2, 0);
delete $mocks{$pid2};

done_testing();
