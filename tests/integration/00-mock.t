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
use Digest::SHA qw(sha256_hex);

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

# curl(path, body => ..., ctype => ..., form => [-F args], headers => [...], key => 0|KEY,
#      method => ..., max_time => s, slurp => 0)
# returns { rc, status, headers => {lc name => value}, body, body_file }.
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
                push @a, '-H', 'content-type: ' . ($o{ctype} // 'application/json'), '--data-binary', "\@$dir/req$seq";
        }
        push @a, map { ('-F', $_) } @{ $o{form} // [] };
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
        if (($o{slurp} // 1) && open(my $f, '<', $bf)) { local $/; $body = <$f> // ''; }
        return { rc => $rc, status => $code + 0, headers => \%h, body => $body, body_file => $bf };
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

# --- Legacy completions ---------------------------------------------------
sub log_line { my ($n) = @_; (grep { $_->{n} == $n } log_lines())[0] // {} }
sub toks { join(' ', map { "tok$_" } 0 .. $_[0] - 1) }
my $now = time;
$r = curl('/v1/completions', body => '{"model":"davinci-002","prompt":"x"}', headers => ['x-mock-output-tokens: 3']);
$j = $json->decode($r->{body});
my $n_cmpl = $r->{headers}{'x-mock-n'};
is_deeply([@$j{qw(id object model)}], ["cmpl-mock$n_cmpl", 'text_completion', 'davinci-002'], 'completions: id, object, model');
ok(abs($j->{created} - $now) < 60, 'completions: created is the real time');
is_deeply($j->{choices}, [{ text => 'tok0 tok1 tok2 ', index => 0, logprobs => undef, finish_reason => 'stop' }],
          'completions: the choice');
is_deeply($j->{usage}, { prompt_tokens => 11, completion_tokens => 3, total_tokens => 14 }, 'completions: usage');
$r = curl('/v1/completions', body => '{"model":"d","stream":true,"stream_options":{"include_usage":true}}',
          headers => ['x-mock-output-tokens: 2', 'x-mock-input-tokens: 4']);
@ev = sse_events($r->{body});
is($r->{rc}, 0, 'completions sse: terminated');
is($r->{headers}{'content-type'}, 'text/event-stream', 'completions sse: content-type');
is(scalar @ev, 2 + 1 + 1 + 1, 'completions sse: 2 text chunks, stop, usage, [DONE]');
is_deeply($ev[1]{json}{choices}, [{ text => 'tok1 ', index => 0, logprobs => undef, finish_reason => undef }],
          'completions sse: a text chunk');
is_deeply([$ev[0]{json}{object}, $ev[0]{json}{id}], ['text_completion', "cmpl-mock$r->{headers}{'x-mock-n'}"],
          'completions sse: object and id');
ok(!exists $ev[0]{json}{usage}, 'completions sse: no usage key in text chunks');
is_deeply($ev[2]{json}{choices}, [{ text => '', index => 0, logprobs => undef, finish_reason => 'stop' }],
          'completions sse: the stop chunk');
is_deeply([$ev[3]{json}{choices}, $ev[3]{json}{usage}], [[], { prompt_tokens => 4, completion_tokens => 2, total_tokens => 6 }],
          'completions sse: the usage chunk');
is($ev[4]{data}, '[DONE]', 'completions sse: [DONE]');
$r = curl('/v1/completions', body => '{"stream":true}', headers => ['x-mock-cut-after: 2']);
is_deeply([$r->{rc}, scalar(sse_events($r->{body}))], [18, 2], 'completions sse: x-mock-cut-after');

# --- Moderations ----------------------------------------------------------
$r = curl('/v1/moderations', body => '{"input":"hello"}');
$j = $json->decode($r->{body});
is_deeply([$j->{id}, $j->{model}, scalar @{ $j->{results} }],
          ["modr-mock$r->{headers}{'x-mock-n'}", 'omni-moderation-latest', 1], 'moderations: id, default model, one result');
is($j->{results}[0]{flagged}, JSON::PP::false, 'moderations: not flagged');
ok(!(grep { $j->{results}[0]{categories}{$_} } qw(harassment hate self-harm sexual violence))
   && 5 == grep { exists $j->{results}[0]{categories}{$_} } qw(harassment hate self-harm sexual violence),
   'moderations: categories all false');
is_deeply([map { $j->{results}[0]{category_scores}{$_} } qw(harassment hate self-harm sexual violence)], [(0.0001) x 5],
          'moderations: scores 0.0001');
ok(!exists $j->{usage}, 'moderations: no usage');
$r = curl('/v1/moderations', body => '{"model":"text-moderation-latest","input":["a","b","c"]}');
$j = $json->decode($r->{body});
is_deeply([$j->{model}, scalar @{ $j->{results} }], ['text-moderation-latest', 3], 'moderations: one result per input');
$r = curl('/v1/moderations', body => '{}');
is_deeply([$r->{status}, $json->decode($r->{body})->{error}{param}], [400, 'input'], 'moderations: no input: 400');

# --- Images -----------------------------------------------------------------
my $PNG = "\x89PNG\r\n\x1a\n";
$r = curl('/v1/images/generations', body => '{"model":"gpt-image-1","prompt":"a cat","n":2}',
          headers => ['x-mock-input-tokens: 20', 'x-mock-output-tokens: 30']);
$j = $json->decode($r->{body});
is(scalar @{ $j->{data} }, 2, 'images: n images');
is(substr(MIME::Base64::decode_base64($j->{data}[1]{b64_json}), 0, 8), $PNG, 'images: b64_json is a PNG');
ok(abs($j->{created} - $now) < 60, 'images: created');
is_deeply($j->{usage}, { total_tokens => 50, input_tokens => 20, output_tokens => 30,
                         input_tokens_details => { text_tokens => 20, image_tokens => 0 } }, 'images: gpt-image-1 usage');
$r = curl('/v1/images/generations', body => '{"model":"dall-e-3","prompt":"a dog","response_format":"url"}');
$j = $json->decode($r->{body});
my $n_img = $r->{headers}{'x-mock-n'};
is_deeply($j->{data}, [{ url => "https://mock.invalid/img/$n_img-0.png", revised_prompt => 'a dog' }], 'images: dall-e url');
ok(!exists $j->{usage}, 'images: dall-e has no usage');
$r = curl('/v1/images/generations', body => '{"model":"dall-e-2","prompt":"a dog","response_format":"b64_json"}');
$j = $json->decode($r->{body});
ok($j->{data}[0]{b64_json} && !exists $j->{usage}, 'images: dall-e b64_json, no usage');
$r = curl('/v1/images/generations', body => '{"prompt":"x","n":11}');
is_deeply([$r->{status}, $json->decode($r->{body})->{error}{param}], [400, 'n'], 'images: n > 10: 400');
$r = curl('/v1/images/generations', body => '{"n":1}');
is($r->{status}, 400, 'images: no prompt: 400');
my $imgfile = "$dir/in.png";
{ open(my $f, '>', $imgfile) or die; binmode $f; print $f $PNG, "pixels" x 100; close $f }
$r = curl('/v1/images/edits', form => ['model=gpt-image-1', 'prompt=add a hat', 'n=3', "image[]=\@$imgfile",
                                       "image[]=\@$imgfile;type=image/png", "mask=\@$imgfile"]);
$j = $json->decode($r->{body});
is_deeply([$r->{status}, scalar @{ $j->{data} }, $j->{usage}{input_tokens}], [200, 3, 11], 'images edits: multipart, n, usage');
{
        my $l = log_line($r->{headers}{'x-mock-n'});
        my @img = grep { $_->{name} eq 'image[]' } @{ $l->{parts} // [] };
        is(scalar @img, 2, 'images edits: log: both image[] parts');
        is_deeply([@{ $img[1] }{qw(filename content_type bytes sha256)}], ['in.png', 'image/png', 608, sha256_hex($PNG . "pixels" x 100)],
                  'images edits: log: filename, content_type, bytes, sha256');
        my ($p) = grep { $_->{name} eq 'prompt' } @{ $l->{parts} // [] };
        is_deeply($p, { name => 'prompt', bytes => 9, sha256 => sha256_hex('add a hat'), value => 'add a hat' },
                  'images edits: log: a text field with its value');
        ok(!exists $img[0]{value}, 'images edits: log: no value for a file part');
}
$r = curl('/v1/images/edits', form => ['prompt=x']);
is_deeply([$r->{status}, $json->decode($r->{body})->{error}{param}], [400, 'image'], 'images edits: no image: 400');

# --- Audio: speech ------------------------------------------------------------
sub pattern { my ($n) = @_; join('', map { chr(($_ * 31 + 7) & 0xff) } 0 .. $n - 1) }
$r = curl('/v1/audio/speech', body => '{"model":"tts-1","input":"hello","voice":"alloy"}');
is_deeply([$r->{status}, $r->{headers}{'content-type'}, $r->{headers}{'transfer-encoding'}], [200, 'audio/mpeg', 'chunked'],
          'speech: 200 audio/mpeg, chunked');
is(length $r->{body}, 4 + 500, 'speech: 4 + strlen(input) * 100 bytes');
is($r->{body}, 'MOCK' . pattern(500), 'speech: "MOCK" then the deterministic bytes');
for my $c (['wav', 'audio/wav'], ['pcm', 'audio/pcm'], ['opus', 'audio/ogg'], ['aac', 'audio/aac'], ['flac', 'audio/flac']) {
        $r = curl('/v1/audio/speech', body => qq({"input":"a","response_format":"$c->[0]"}));
        is($r->{headers}{'content-type'}, $c->[1], "speech: $c->[0] is $c->[1]");
}
$r = curl('/v1/audio/speech', body => '{"input":"a"}', headers => ['x-mock-body-bytes: 100000']);
is(length $r->{body}, 100000, 'speech: x-mock-body-bytes sets the length');
$t = time;
$r = curl('/v1/audio/speech', body => '{"input":"ab"}', headers => ['x-mock-event-delay-ms: 100']);
ok(time - $t >= 0.29 && length $r->{body} == 204, 'speech: in at least 4 chunks, x-mock-event-delay-ms between them');
$r = curl('/v1/audio/speech', body => '{"input":"ab"}', headers => ['x-mock-cut-after: 2']);
is_deeply([$r->{rc}, length $r->{body}], [18, 102], 'speech: x-mock-cut-after 2 chunks');
$r = curl('/v1/audio/speech', body => '{"voice":"alloy"}');
is_deeply([$r->{status}, $json->decode($r->{body})->{error}{param}], [400, 'input'], 'speech: no input: 400');

# --- Audio: transcriptions and translations ----------------------------------
my $wav = "$dir/a.wav";
{ open(my $f, '>', $wav) or die; print $f 'w' x 40000; close $f }   # 2.5 s at 16000 bytes/s
my @T3 = (headers => ['x-mock-output-tokens: 3']);
$r = curl('/v1/audio/transcriptions', form => ["file=\@$wav", 'model=gpt-4o-transcribe'], @T3);
is_deeply($json->decode($r->{body}), { text => toks(3), usage => { type => 'tokens', input_tokens => 11,
          input_token_details => { text_tokens => 0, audio_tokens => 11 }, output_tokens => 3, total_tokens => 14 } },
          'transcriptions: json, token usage');
{
        my ($p) = grep { $_->{name} eq 'file' } @{ log_line($r->{headers}{'x-mock-n'})->{parts} // [] };
        is_deeply([@$p{qw(filename bytes sha256)}], ['a.wav', 40000, sha256_hex('w' x 40000)], 'transcriptions: log: the file part');
}
$r = curl('/v1/audio/transcriptions', form => ["file=\@$wav", 'model=whisper-1'], @T3);
is_deeply($json->decode($r->{body}), { text => toks(3), usage => { type => 'duration', seconds => 3 } },
          'transcriptions: whisper-1 json, duration usage (ceil of 2.5 s)');
$r = curl('/v1/audio/transcriptions', form => ["file=\@$wav", 'model=whisper-1', 'response_format=verbose_json'], @T3);
$j = $json->decode($r->{body});
is_deeply([@$j{qw(task language duration text)}, $j->{usage}], ['transcribe', 'english', 2.5, toks(3), { type => 'duration', seconds => 3 }],
          'transcriptions: verbose_json');
is_deeply([@{ $j->{segments}[0] }{qw(id start end text tokens)}], [0, 0, 2.5, toks(3), [1, 2]], 'transcriptions: verbose_json segment');
$r = curl('/v1/audio/transcriptions', form => ["file=\@$wav", 'model=gpt-4o-mini-transcribe', 'response_format=text'], @T3);
is_deeply([$r->{headers}{'content-type'}, $r->{body}], ['text/plain; charset=utf-8', toks(3) . "\n"], 'transcriptions: text');
$r = curl('/v1/audio/transcriptions', form => ["file=\@$wav", 'model=whisper-1', 'response_format=srt'], @T3);
is($r->{body}, "1\n00:00:00,000 --> 00:00:02,500\n" . toks(3) . "\n\n", 'transcriptions: srt');
$r = curl('/v1/audio/transcriptions', form => ["file=\@$wav", 'model=whisper-1', 'response_format=vtt'],
          headers => ['x-mock-output-tokens: 1', 'x-mock-audio-seconds: 3725.25']);
is($r->{body}, "WEBVTT\n\n00:00:00.000 --> 01:02:05.300\ntok0\n\n", 'transcriptions: vtt, x-mock-audio-seconds');
$r = curl('/v1/audio/transcriptions', form => ["file=\@$wav", 'model=gpt-4o-transcribe', 'stream=true'], @T3);
is($r->{headers}{'content-type'}, 'text/event-stream', 'transcriptions stream: SSE');
like($r->{body}, qr/\A(data: [^\n]+\n\n)+\z/, 'transcriptions stream: data lines only');
@ev = sse_events($r->{body});
is_deeply([map { $_->{json}{delta} } @ev[0 .. 2]], ['tok0 ', 'tok1 ', 'tok2 '], 'transcriptions stream: transcript.text.delta x O');
is_deeply($ev[3]{json}, { type => 'transcript.text.done', text => toks(3), usage => { type => 'tokens', input_tokens => 11,
          input_token_details => { text_tokens => 0, audio_tokens => 11 }, output_tokens => 3, total_tokens => 14 } },
          'transcriptions stream: transcript.text.done with usage, no [DONE]');
is(scalar @ev, 4, 'transcriptions stream: 4 events');
$r = curl('/v1/audio/translations', form => ["file=\@$wav", 'model=whisper-1', 'response_format=verbose_json'],
          headers => ['x-mock-audio-seconds: 7']);
$j = $json->decode($r->{body});
is_deeply([$j->{task}, $j->{duration}, $j->{usage}{seconds}], ['translate', 7, 7], 'translations: verbose_json');
$r = curl('/v1/audio/transcriptions', form => ['model=whisper-1']);
is_deeply([$r->{status}, $json->decode($r->{body})->{error}{param}], [400, 'file'], 'transcriptions: no file: 400');
$r = curl('/v1/audio/transcriptions', form => ["file=\@$wav"]);
is_deeply([$r->{status}, $json->decode($r->{body})->{error}{param}], [400, 'model'], 'transcriptions: no model: 400');
$r = curl('/v1/audio/transcriptions', form => ["file=\@$wav", 'model=whisper-1', 'stream=true']);
is($r->{status}, 400, 'transcriptions: whisper-1 does not stream: 400');

# --- Multipart: malformed bodies -----------------------------------------------
for my $c (['multipart/form-data', "--XX\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nb\r\n--XX--\r\n", qr/no boundary/],
           ['multipart/form-data; boundary=XX', "--XX\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nb\r\n", qr/missing closing delimiter/],
           ['multipart/form-data; boundary="XX"', "--XX\r\n\r\nb\r\n--XX--\r\n", qr/part 1 has no headers/],
           ['multipart/form-data; boundary=XX', "nothing here", qr/does not occur/]) {
        $r = curl('/v1/files', body => $c->[1], ctype => $c->[0]);
        is($r->{status}, 400, "malformed multipart ($c->[0]): 400");
        like($json->decode($r->{body})->{error}{message}, $c->[2], "malformed multipart: the message says why ($c->[2])");
}
$r = curl('/v1/files', body => "--XX\r\n\r\nb\r\n--XX--\r\n", ctype => 'multipart/form-data; boundary=XX',
          headers => ['anthropic-version: 2023-06-01']);
is_deeply([$r->{status}, $json->decode($r->{body})->{type}], [400, 'error'], 'malformed multipart: Anthropic shape on Anthropic files');
$r = curl('/v1/files', body => '{"purpose":"batch"}');
is($r->{status}, 400, 'files: a JSON body: 400');
my $big_json = '{"model":"m","input":"' . ('x' x (1 << 21)) . '"}';
$r = curl('/v1/embeddings', body => $big_json);
{
        my $l = log_line($r->{headers}{'x-mock-n'});
        is_deeply([$r->{status}, exists $l->{body}, $l->{body_bytes}], [200, '', length $big_json],
                  'log: a body over 1 MiB is counted, not logged');
}

# --- OpenAI files -------------------------------------------------------------
my $jsonl = "$dir/in.jsonl";
{
        open(my $f, '>', $jsonl) or die;
        print $f qq({"custom_id":"req-a","method":"POST","url":"/v1/chat/completions","body":{"model":"gpt-4o","messages":[]}}\n\n);
        print $f qq({"custom_id":"req-b","method":"POST","url":"/v1/chat/completions","body":{"model":"gpt-4o-mini","messages":[]}}\n);
        close $f;
}
my $jsonl_bytes = -s $jsonl;
$r = curl('/v1/files', form => ['purpose=batch', "file=\@$jsonl"]);
$j = $json->decode($r->{body});
my $fid = $j->{id};
is($fid, "file-mock$r->{headers}{'x-mock-n'}", 'files: id file-mock<n>');
is_deeply([@$j{qw(object bytes filename purpose status expires_at status_details)}],
          ['file', $jsonl_bytes, 'in.jsonl', 'batch', 'processed', undef, undef], 'files: the file object');
ok(abs($j->{created_at} - $now) < 60, 'files: created_at');
$r = curl('/v1/files', form => ['purpose=assistants', "file=\@$wav"]);
my $fid2 = $json->decode($r->{body})->{id};
$r = curl('/v1/files');
$j = $json->decode($r->{body});
is_deeply([$j->{object}, $j->{data}[0]{id}, $j->{data}[1]{id}, $j->{first_id}, $j->{has_more}], ['list', $fid2, $fid, $fid2, JSON::PP::false],
          'files: list, newest first');
$r = curl('/v1/files?purpose=batch');
is_deeply([map { $_->{id} } @{ $json->decode($r->{body})->{data} }], [$fid], 'files: ?purpose=');
$r = curl('/v1/files?limit=1');
$j = $json->decode($r->{body});
is_deeply([scalar @{ $j->{data} }, $j->{has_more}], [1, JSON::PP::true], 'files: ?limit= and has_more');
$r = curl("/v1/files?limit=1&after=$fid2");
is($json->decode($r->{body})->{data}[0]{id}, $fid, 'files: ?after=');
$r = curl("/v1/files/$fid");
is($json->decode($r->{body})->{id}, $fid, 'files: retrieve');
$r = curl("/v1/files/$fid/content");
is_deeply([$r->{status}, $r->{headers}{'content-type'}, $r->{body}], [200, 'application/octet-stream', do { local (@ARGV, $/) = $jsonl; <> }],
          'files: content, byte for byte');
$r = curl("/v1/files/$fid2", method => 'DELETE');
is_deeply($json->decode($r->{body}), { id => $fid2, object => 'file', deleted => JSON::PP::true }, 'files: delete');
$r = curl("/v1/files/$fid2");
is_deeply([$r->{status}, $json->decode($r->{body})],
          [404, { error => { message => "No such File object: $fid2", type => 'invalid_request_error', param => 'id', code => undef } }],
          'files: unknown id: 404 in OpenAI\'s shape');
$r = curl("/v1/files/$fid2/content");
is($r->{status}, 404, 'files: content of an unknown id: 404');
$r = curl('/v1/files', form => ["file=\@$wav"]);
is_deeply([$r->{status}, $json->decode($r->{body})->{error}{param}], [400, 'purpose'], 'files: no purpose: 400');
$r = curl('/v1/files', form => ['purpose=nope', "file=\@$wav"]);
is($r->{status}, 400, 'files: unknown purpose: 400');
$r = curl('/v1/files', method => 'PUT');
is_deeply([$r->{status}, $json->decode($r->{body})->{error}{message}], [404, 'Invalid URL (PUT /v1/files)'],
          'wrong method on a known path: 404 Invalid URL');

# --- OpenAI batches -----------------------------------------------------------------
$r = curl('/v1/batches', body => qq({"input_file_id":"$fid","endpoint":"/v1/chat/completions","completion_window":"24h","metadata":{"team":"a"}}),
          headers => ['x-mock-input-tokens: 5', 'x-mock-output-tokens: 2']);
$j = $json->decode($r->{body});
my $bid = $j->{id};
is($bid, "batch_mock$r->{headers}{'x-mock-n'}", 'batches: id batch_mock<n>');
is_deeply([@$j{qw(object endpoint errors input_file_id completion_window status output_file_id error_file_id in_progress_at
                  completed_at cancelled_at model)}, $j->{request_counts}, $j->{metadata}],
          ['batch', '/v1/chat/completions', undef, $fid, '24h', 'validating', undef, undef, undef, undef, undef, 'gpt-4o',
           { total => 2, completed => 0, failed => 0 }, { team => 'a' }], 'batches: the created batch');
is($j->{expires_at} - $j->{created_at}, 86400, 'batches: expires_at 24 h after created_at');
my @steps = map { $json->decode(curl("/v1/batches/$bid")->{body}) } 1 .. 3;
is_deeply([map { $_->{status} } @steps], [qw(in_progress finalizing completed)], 'batches: each retrieve one step');
ok($steps[0]{in_progress_at} && $steps[1]{finalizing_at} && $steps[2]{completed_at}, 'batches: the timestamps');
$j = $steps[2];
like($j->{output_file_id}, qr/^file-mockout\d+$/, 'batches: output_file_id');
is_deeply($j->{request_counts}, { total => 2, completed => 2, failed => 0 }, 'batches: request_counts');
is_deeply($j->{usage}, { input_tokens => 10, output_tokens => 4, total_tokens => 14, input_tokens_details => { cached_tokens => 0 },
                         output_tokens_details => { reasoning_tokens => 0 } }, 'batches: usage = the scripted usage x N');
is($json->decode(curl("/v1/batches/$bid")->{body})->{status}, 'completed', 'batches: completed stays');
$r = curl("/v1/files/$j->{output_file_id}");
is_deeply([@{ $json->decode($r->{body}) }{qw(purpose status)}], ['batch_output', 'processed'], 'batches: the output file object');
$r = curl("/v1/files/$j->{output_file_id}/content");
{
        my @lines = map { $json->decode($_) } split /\n/, $r->{body};
        is_deeply([map { $_->{custom_id} } @lines], ['req-a', 'req-b'], 'batches: one output line per input line');
        is_deeply([@{ $lines[1] }{qw(error)}, $lines[1]{response}{status_code}, $lines[1]{response}{body}{object},
                   $lines[1]{response}{body}{model}, $lines[1]{response}{body}{usage}{prompt_tokens},
                   $lines[1]{response}{body}{usage}{completion_tokens}],
                  [undef, 200, 'chat.completion', 'gpt-4o-mini', 5, 2], 'batches: an output line');
        like($lines[0]{id}, qr/^batch_req_/, 'batches: line ids batch_req_...');
}
$r = curl("/v1/batches/$bid/cancel", method => 'POST');
is($r->{status}, 400, 'batches: cancelling a completed batch: 400');
$r = curl('/v1/batches', body => qq({"input_file_id":"$fid","endpoint":"/v1/chat/completions","completion_window":"24h"}));
my $bid2 = $json->decode($r->{body})->{id};
$r = curl("/v1/batches/$bid2/cancel", method => 'POST');
$j = $json->decode($r->{body});
is_deeply([$j->{status}, !!$j->{cancelling_at}], ['cancelling', 1], 'batches: cancel: cancelling');
$j = $json->decode(curl("/v1/batches/$bid2")->{body});
is_deeply([$j->{status}, !!$j->{cancelled_at}], ['cancelled', 1], 'batches: then cancelled');
$r = curl('/v1/batches', body => qq({"input_file_id":"$fid","endpoint":"/v1/chat/completions","completion_window":"24h"}));
my $bid3 = $json->decode($r->{body})->{id};
$j = $json->decode(curl("/v1/batches/$bid3", headers => ['x-mock-batch-status: failed'])->{body});
is_deeply([$j->{status}, !!$j->{failed_at}, $j->{errors}{object}], ['failed', 1, 'list'], 'batches: x-mock-batch-status forces a status');
$j = $json->decode(curl("/v1/batches/$bid3", headers => ['x-mock-batch-status: completed'])->{body});
ok($j->{status} eq 'completed' && $j->{output_file_id}, 'batches: x-mock-batch-status completed');
$r = curl('/v1/batches?limit=2');
$j = $json->decode($r->{body});
is_deeply([$j->{object}, map({ $_->{id} } @{ $j->{data} }), $j->{has_more}], ['list', $bid3, $bid2, JSON::PP::true],
          'batches: list, newest first, limit');
$r = curl('/v1/batches/batch_nope');
is_deeply([$r->{status}, $json->decode($r->{body})->{error}{message}], [404, "No batch found with id 'batch_nope'."],
          'batches: unknown id: 404');
$r = curl('/v1/batches', body => '{"input_file_id":"file-nope","endpoint":"/v1/chat/completions","completion_window":"24h"}');
is_deeply([$r->{status}, $json->decode($r->{body})->{error}{param}], [400, 'input_file_id'], 'batches: unknown input file: 400');

# --- Videos ---------------------------------------------------------------------
$r = curl('/v1/videos', body => '{"prompt":"a cat on a skateboard","seconds":"8"}');
$j = $json->decode($r->{body});
my $vid = $j->{id};
is($vid, "video_mock$r->{headers}{'x-mock-n'}", 'videos: id video_mock<n>');
is_deeply([@$j{qw(object model status progress completed_at expires_at size seconds quality remixed_from_video_id error)}],
          ['video', 'sora-2', 'queued', 0, undef, undef, '720x1280', '8', 'standard', undef, undef], 'videos: the queued video');
$r = curl("/v1/videos/$vid/content");
is($r->{status}, 400, 'videos: content before completion: 400');
$j = $json->decode(curl("/v1/videos/$vid")->{body});
is_deeply([@$j{qw(status progress)}], ['in_progress', 50], 'videos: retrieve 1: in_progress');
$j = $json->decode(curl("/v1/videos/$vid")->{body});
ok($j->{status} eq 'completed' && $j->{progress} == 100 && $j->{completed_at}, 'videos: retrieve 2: completed');
$r = curl("/v1/videos/$vid/content");
is_deeply([$r->{status}, $r->{headers}{'content-type'}, length $r->{body}, substr($r->{body}, 4, 4)], [200, 'video/mp4', 65536, 'ftyp'],
          'videos: content: 64 KiB of video/mp4');
$r = curl('/v1/videos', form => ['prompt=a dog', 'model=sora-2-pro', 'seconds=12', 'size=1280x720']);
$j = $json->decode($r->{body});
is_deeply([@$j{qw(model seconds size)}], ['sora-2-pro', '12', '1280x720'], 'videos: multipart create');
$r = curl('/v1/videos');
$j = $json->decode($r->{body});
is_deeply([$j->{object}, scalar @{ $j->{data} }, $j->{last_id}, $j->{has_more}], ['list', 2, $vid, JSON::PP::false], 'videos: list');
$r = curl("/v1/videos/$vid", method => 'DELETE');
is_deeply($json->decode($r->{body}), { id => $vid, object => 'video.deleted', deleted => JSON::PP::true }, 'videos: delete');
$r = curl("/v1/videos/$vid");
is($r->{status}, 404, 'videos: unknown id: 404');
$r = curl('/v1/videos', body => '{"prompt":"x","seconds":"5"}');
is_deeply([$r->{status}, $json->decode($r->{body})->{error}{param}], [400, 'seconds'], 'videos: seconds not 4, 8, 12: 400');
$r = curl('/v1/videos', body => '{"seconds":"4"}');
is($r->{status}, 400, 'videos: no prompt: 400');

# --- Stored responses -----------------------------------------------------------
$r = curl('/v1/responses', body => '{"model":"r2","input":"what is up"}');
my $stored = $json->decode($r->{body});
my $rid = $stored->{id};
my $n_rid = $r->{headers}{'x-mock-n'};
$r = curl("/v1/responses/$rid");
is_deeply($json->decode($r->{body}), $stored, 'responses: GET /v1/responses/{id} is the answer');
$r = curl("/v1/responses/$rid/input_items");
is_deeply($json->decode($r->{body}), { object => 'list', data => [{ id => "msg_in$n_rid", type => 'message', role => 'user',
          content => [{ type => 'input_text', text => 'what is up' }] }], first_id => "msg_in$n_rid", last_id => "msg_in$n_rid",
          has_more => JSON::PP::false }, 'responses: input_items');
$r = curl('/v1/responses', body => '{"model":"r2","stream":true,"input":[{"role":"user","content":"a"}]}');
@ev = sse_events($r->{body});
my $done = $ev[-1]{json}{response};
$r = curl("/v1/responses/$done->{id}");
is_deeply($json->decode($r->{body}), $done, 'responses: a stream\'s response.completed is stored');
$j = $json->decode(curl("/v1/responses/$done->{id}/input_items")->{body});
is_deeply([$j->{data}[0]{role}, $j->{data}[0]{content}], ['user', [{ type => 'input_text', text => 'a' }]],
          'responses: input_items of an array input');
$r = curl("/v1/responses/$rid/cancel", method => 'POST');
is($json->decode($r->{body})->{status}, 'cancelled', 'responses: cancel');
$r = curl("/v1/responses/$rid", method => 'DELETE');
is_deeply($json->decode($r->{body}), { id => $rid, object => 'response', deleted => JSON::PP::true }, 'responses: delete');
$r = curl("/v1/responses/$rid");
is_deeply([$r->{status}, $json->decode($r->{body})], [404, { error => { message => "Response with id '$rid' not found.",
          type => 'invalid_request_error', param => undef, code => undef } }], 'responses: unknown id: 404');
$r = curl('/v1/responses', body => '{"store":false}');
is(curl('/v1/responses/' . $json->decode($r->{body})->{id})->{status}, 404, 'responses: "store": false is not stored');

# --- Anthropic message batches -----------------------------------------------------
my @AV = ('anthropic-version: 2023-06-01');
$r = curl('/v1/messages/batches', headers => [@AV, 'x-mock-input-tokens: 3', 'x-mock-output-tokens: 2'],
          body => '{"requests":[{"custom_id":"one","params":{"model":"claude-a","max_tokens":9,"messages":[]}},'
                . '{"custom_id":"two","params":{"model":"claude-b","max_tokens":9,"messages":[]}}]}');
$j = $json->decode($r->{body});
my $mb = $j->{id};
is($mb, "msgbatch_mock$r->{headers}{'x-mock-n'}", 'message batches: id msgbatch_mock<n>');
is($r->{headers}{'request-id'}, "req_mock$r->{headers}{'x-mock-n'}", 'message batches: Anthropic headers');
is_deeply([@$j{qw(type processing_status ended_at archived_at cancel_initiated_at results_url)}, $j->{request_counts}],
          ['message_batch', 'in_progress', undef, undef, undef, undef,
           { processing => 2, succeeded => 0, errored => 0, canceled => 0, expired => 0 }], 'message batches: the created batch');
like($j->{created_at}, qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/, 'message batches: created_at ISO 8601');
$r = curl("/v1/messages/batches/$mb/results");
is_deeply([$r->{status}, $json->decode($r->{body})->{type}], [400, 'error'], 'message batches: no results before it ends: 400');
$r = curl("/v1/messages/batches/$mb", method => 'DELETE');
is($r->{status}, 400, 'message batches: no delete before it ends: 400');
$j = $json->decode(curl("/v1/messages/batches/$mb")->{body});
is($j->{processing_status}, 'in_progress', 'message batches: retrieve 1: in_progress');
$j = $json->decode(curl("/v1/messages/batches/$mb")->{body});
is_deeply([$j->{processing_status}, $j->{request_counts}, $j->{results_url}],
          ['ended', { processing => 0, succeeded => 2, errored => 0, canceled => 0, expired => 0 },
           "http://127.0.0.1:$port/v1/messages/batches/$mb/results"], 'message batches: retrieve 2: ended');
like($j->{ended_at}, qr/^\d{4}-\d\d-\d\dT/, 'message batches: ended_at');
$r = curl("/v1/messages/batches/$mb/results");
is($r->{headers}{'content-type'}, 'application/binary', 'message batches: results content-type');
{
        my @lines = map { $json->decode($_) } split /\n/, $r->{body};
        is_deeply([map { "$_->{custom_id}/$_->{result}{type}/$_->{result}{message}{model}" } @lines],
                  ['one/succeeded/claude-a', 'two/succeeded/claude-b'], 'message batches: one result per request');
        is_deeply([@{ $lines[0]{result}{message} }{qw(type role stop_reason)}, $lines[0]{result}{message}{usage}{input_tokens},
                   $lines[0]{result}{message}{usage}{output_tokens}, $lines[0]{result}{message}{content}[0]{text}],
                  ['message', 'assistant', 'end_turn', 3, 2, 'tok0 tok1 '], 'message batches: a message with the scripted usage');
}
$r = curl('/v1/messages/batches', body => '{"requests":[{"custom_id":"c","params":{"model":"m","max_tokens":1,"messages":[]}}]}');
my $mb2 = $json->decode($r->{body})->{id};
$j = $json->decode(curl("/v1/messages/batches/$mb2/cancel", method => 'POST')->{body});
is_deeply([$j->{processing_status}, !!$j->{cancel_initiated_at}], ['canceling', 1], 'message batches: cancel: canceling');
$j = $json->decode(curl("/v1/messages/batches/$mb2")->{body});
is_deeply([$j->{processing_status}, $j->{request_counts}{canceled}], ['ended', 1], 'message batches: then ended, canceled');
$r = curl("/v1/messages/batches/$mb2/results");
is_deeply($json->decode($r->{body}), { custom_id => 'c', result => { type => 'canceled' } }, 'message batches: canceled result');
$j = $json->decode(curl('/v1/messages/batches?limit=1')->{body});
is_deeply([map({ $_->{id} } @{ $j->{data} }), $j->{has_more}, $j->{first_id}], [$mb2, JSON::PP::true, $mb2],
          'message batches: list, newest first');
$j = $json->decode(curl("/v1/messages/batches?after_id=$mb2")->{body});
is($j->{data}[0]{id}, $mb, 'message batches: list after_id');
$r = curl("/v1/messages/batches/$mb", method => 'DELETE');
is_deeply($json->decode($r->{body}), { id => $mb, type => 'message_batch_deleted' }, 'message batches: delete');
$r = curl("/v1/messages/batches/$mb");
is_deeply([$r->{status}, $json->decode($r->{body})->{type}, $json->decode($r->{body})->{error}{type}], [404, 'error', 'not_found_error'],
          'message batches: unknown id: 404 in Anthropic\'s shape');
$r = curl('/v1/messages/batches', body => '{"requests":[]}');
is_deeply([$r->{status}, $json->decode($r->{body})->{error}{type}], [400, 'invalid_request_error'], 'message batches: no requests: 400');

# --- Anthropic files --------------------------------------------------------------
$r = curl('/v1/files', headers => [@AV], form => ["file=\@$imgfile;type=image/png"]);
$j = $json->decode($r->{body});
my $afid = $j->{id};
is($afid, "file_mock$r->{headers}{'x-mock-n'}", 'anthropic files: id file_mock<n>');
is_deeply([@$j{qw(type filename mime_type size_bytes downloadable)}], ['file', 'in.png', 'image/png', 608, JSON::PP::false],
          'anthropic files: the file object');
like($j->{created_at}, qr/^\d{4}-\d\d-\d\dT/, 'anthropic files: created_at');
$j = $json->decode(curl('/v1/files', headers => [@AV])->{body});
is_deeply([map({ $_->{id} } @{ $j->{data} }), $j->{has_more}], [$afid, JSON::PP::false], 'anthropic files: list (Anthropic files only)');
is($json->decode(curl("/v1/files/$afid", headers => [@AV])->{body})->{id}, $afid, 'anthropic files: retrieve');
$r = curl("/v1/files/$afid/content", headers => [@AV]);
is_deeply([$r->{headers}{'content-type'}, $r->{body}], ['image/png', $PNG . "pixels" x 100], 'anthropic files: content');
is(curl("/v1/files/$afid")->{status}, 404, 'anthropic files: not an OpenAI file');
$r = curl("/v1/files/$afid", headers => [@AV], method => 'DELETE');
is_deeply($json->decode($r->{body}), { id => $afid, type => 'file_deleted' }, 'anthropic files: delete');
$r = curl("/v1/files/$afid", headers => [@AV]);
is_deeply([$r->{status}, $json->decode($r->{body})->{error}{type}], [404, 'not_found_error'], 'anthropic files: unknown id: 404');

# --- Every line counts its body --------------------------------------------------
ok(!(grep { !defined $_->{body_bytes} } log_lines()), 'log: body_bytes on every line');

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

# --- A 100 MB upload: spilled to a file, never held in memory; --models -------
{
        my $blog = "$dir/big.log";
        my ($bpid, $bport) = start_mock('--log', $blog, '--models', 'whisper-1,gpt-image-1');
        $base = "http://127.0.0.1:$bport";
        my $big = "$dir/big.bin";
        system("head -c 100000000 /dev/urandom > '$big'") == 0 or die "head: $?";
        my ($want) = split ' ', `sha256sum '$big'`;
        my $hwm = sub {
                open(my $f, '<', "/proc/$bpid/status") or return 0;
                my ($kb) = map { /^VmHWM:\s+(\d+)/ ? $1 : () } <$f>;
                return $kb // 0;
        };
        my $blines = sub { open(my $f, '<', $blog) or return (); map { $json->decode($_) } <$f> };
        my $before = $hwm->();
        for my $how (['content-length', []], ['chunked', ['transfer-encoding: chunked']]) {
                $r = curl('/v1/files', key => undef, form => ['purpose=user_data', "file=\@$big"], headers => $how->[1],
                          max_time => 120);
                $j = $json->decode($r->{body});
                is_deeply([$r->{status}, $j->{bytes}, $j->{filename}], [200, 100000000, 'big.bin'],
                          "100 MB upload ($how->[0]): accepted, bytes");
                my ($l) = grep { $_->{n} == $r->{headers}{'x-mock-n'} } $blines->();
                my ($fp) = grep { $_->{name} eq 'file' } @{ $l->{parts} // [] };
                is_deeply([$fp->{bytes}, $fp->{sha256}, exists $l->{body}], [100000000, $want, ''],
                          "100 MB upload ($how->[0]): logged part's bytes and sha256 are the file's; no body");
                ok($l->{body_bytes} > 100000000, "100 MB upload ($how->[0]): body_bytes");
        }
        my $grown = $hwm->() - $before;
        ok($before > 0 && $grown < 64 * 1024, "100 MB uploads: the mock's peak RSS grew by less than 64 MiB ($grown KiB)");
        # more than 16 MiB: only its size is kept, the content is the deterministic bytes
        $r = curl("/v1/files/$j->{id}/content", key => undef, slurp => 0, max_time => 120);
        is(-s $r->{body_file}, 100000000, '100 MB upload: content of the same length');
        open(my $f, '<', $r->{body_file}) or die;
        read($f, my $head, 64);
        close $f;
        is($head, pattern(64), '100 MB upload: content is the deterministic bytes');
        unlink $big, $r->{body_file};

        $r = curl('/v1/audio/transcriptions', key => undef, form => ["file=\@$wav", 'model=gpt-4o-transcribe']);
        is_deeply([$r->{status}, $json->decode($r->{body})->{error}{code}], [404, 'model_not_found'],
                  '--models: a multipart model not served: 404 model_not_found');
        $r = curl('/v1/audio/transcriptions', key => undef, form => ["file=\@$wav", 'model=whisper-1']);
        is($r->{status}, 200, '--models: a served multipart model: 200');
        $r = curl('/v1/images/generations', key => undef, body => '{"model":"dall-e-3","prompt":"x"}');
        is($r->{status}, 404, '--models: a JSON model not served: 404');
        $r = curl('/v1/messages/batches', key => undef, body => '{"requests":[{"custom_id":"a","params":{"model":"whisper-1"}},'
                  . '{"custom_id":"b","params":{"model":"claude-x"}}]}');
        my $mbx = $json->decode($r->{body})->{id};
        curl("/v1/messages/batches/$mbx", key => undef) for 1 .. 2;
        $r = curl("/v1/messages/batches/$mbx/results", key => undef);
        is_deeply([map { $_->{result}{type} } map { $json->decode($_) } split /\n/, $r->{body}], ['succeeded', 'errored'],
                  '--models: a message batch request for a model not served errors');
        kill 'TERM', $bpid;
        waitpid($bpid, 0);
        delete $mocks{$bpid};
}

done_testing();
