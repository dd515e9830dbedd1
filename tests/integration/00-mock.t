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
is($j->{object}, 'response', 'responses: object');
is($j->{status}, 'completed', 'responses: status');
is($j->{output}[0]{content}[0]{type}, 'output_text', 'responses: output_text');
is_deeply($j->{usage}, { input_tokens => 11, input_tokens_details => { cached_tokens => 5 }, output_tokens => 7,
                         output_tokens_details => { reasoning_tokens => 0 }, total_tokens => 18 }, 'responses: usage');
$r = curl('/v1/responses', body => '{"model":"r1","stream":true}', headers => ['x-mock-output-tokens: 2']);
@ev = sse_events($r->{body});
is_deeply([map { $_->{event} } @ev],
          [qw(response.created response.output_text.delta response.output_text.delta response.completed)],
          'responses sse: event sequence');
is($ev[0]{json}{response}{status}, 'in_progress', 'responses sse: created is in_progress');
is($ev[-1]{json}{response}{usage}{output_tokens}, 2, 'responses sse: completed carries usage');

# --- Embeddings, models ---------------------------------------------------
$r = curl('/v1/embeddings', body => '{"model":"e1","input":"x"}');
$j = $json->decode($r->{body});
is_deeply([$j->{object}, $j->{model}, $j->{usage}], ['list', 'e1', { prompt_tokens => 11, total_tokens => 11 }],
          'embeddings: shape');
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

my $t = time;
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
