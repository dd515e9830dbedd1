#!/usr/bin/perl
# Streaming (SSE) through the broker: every family's events relayed in order
# and incrementally, usage accounted (and the injected include_usage chunk
# hidden), upstream cuts and client aborts turned into the right journal
# outcome, and a slow reader pausing the upstream instead of growing memory.
use v5.36;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use KB;

ensure_journald();
my %keys = ('oai-key' => fixture_secret('oai'), 'anth-key' => fixture_secret('anth'));
my $mock = start_mock(require_key => [values %keys]);
my $cfg = standard_config(mock => $mock);
# The slow-reader stream below is 100,000 tokens long: more than team ops's
# tokens_per_minute, which would cut it (42-quota-stream.t tests that).
delete $cfg->{'team:ops'}{tokens_per_minute};
my $broker = start_broker(config => $cfg, keys => \%keys);

my $UP_CHAT = 'gpt-4o-mini-2024-07-18';
my $UP_CLAUDE = 'claude-3-5-haiku-20241022';
my @ANTH = ('anthropic-version' => '2023-06-01');

sub chat_body(%extra) {
        return { model => 'gpt-mini', stream => JSON::PP::true, messages => [{ role => 'user', content => 'stream it' }], %extra };
}

sub stream_ok($res, $name) {
        is($res->{status}, 200, "$name: status 200") or diag(KB::show_res($res));
        is($res->{exit}, 0, "$name: curl saw a complete, well-terminated body") or diag($res->{stderr})
                if exists $res->{exit};
        like($res->{headers}{'content-type'} // '', qr{^text/event-stream}, "$name: content-type text/event-stream");
        is($res->{headers}{'transfer-encoding'}, 'chunked', "$name: chunked to the app");
        ok(!exists $res->{headers}{'content-length'}, "$name: no content-length");
}

sub chat_text(@ev) {
        return join '', map { $_->{json}{choices}[0]{delta}{content} // '' } grep { $_->{json} } @ev;
}

# ------------------------------------------------------------ chat
subtest 'chat stream, app did not ask for usage: usage chunk hidden, journal still counts' => sub {
        my $res = req($broker, path => '/v1/chat/completions', json => chat_body(), stream => 1,
                      headers => ['x-mock-input-tokens' => 13, 'x-mock-output-tokens' => 4]);
        stream_ok($res, 'chat');
        check_common_headers($res, team => 'ops', route => 'oai');
        my @ev = sse_events($res->{body});
        is($ev[-1]{data}, '[DONE]', 'ends with data: [DONE]');
        is($ev[0]{json}{choices}[0]{delta}{role}, 'assistant', 'first chunk carries the role');
        is(chat_text(@ev), 'tok0 tok1 tok2 tok3 ', 'all content deltas, in order');
        is(scalar(grep { $_->{json} && ($_->{json}{choices}[0]{finish_reason} // '') eq 'stop' } @ev), 1,
           'one finish_reason stop chunk');
        my @usage = grep { $_->{json} && (defined $_->{json}{usage} || !@{$_->{json}{choices} // [1]}) } @ev;
        is(scalar(@usage), 0, 'no usage chunk reaches the app') or diag(explain(\@usage));
        is(scalar(@ev), 1 + 4 + 1 + 1, 'role + 4 deltas + finish + [DONE], nothing else');

        my $e = $mock->entry_for($res) or return;
        my $b = KB::Mock::body_json($e);
        ok($b->{stream_options} && $b->{stream_options}{include_usage}, 'provider was asked for include_usage')
                or diag($e->{body});
        is($b->{model}, $UP_CHAT, 'model rewritten');
        check_fields(journal_request($res->{headers}{'x-keybroker-request-id'}), {
                KEYBROKER_STREAM => '1', KEYBROKER_ENDPOINT => 'chat', KEYBROKER_STATUS => '200',
                KEYBROKER_UPSTREAM_STATUS => '200', KEYBROKER_OUTCOME => 'ok',
                KEYBROKER_INPUT_TOKENS => '13', KEYBROKER_OUTPUT_TOKENS => '4',
                KEYBROKER_UPSTREAM_MODEL => $UP_CHAT, KEYBROKER_TTFB_MS => qr/^\d+$/, PRIORITY => '6',
        }, 'journal');
};

subtest 'chat stream, app asked for usage: it gets the usage chunk' => sub {
        my $res = req($broker, path => '/v1/chat/completions', stream => 1,
                      json => chat_body(stream_options => { include_usage => JSON::PP::true }));
        stream_ok($res, 'chat+usage');
        my @ev = sse_events($res->{body});
        is($ev[-1]{data}, '[DONE]', 'ends with [DONE]');
        my @usage = grep { $_->{json} && ref $_->{json}{usage} eq 'HASH' } @ev;
        is(scalar(@usage), 1, 'exactly one usage chunk');
        is($usage[0]{json}{usage}{prompt_tokens}, 11, 'usage.prompt_tokens 11') if @usage;
        is($usage[0]{json}{usage}{completion_tokens}, 7, 'usage.completion_tokens 7') if @usage;
        is($ev[-2]{json}{usage}{total_tokens}, 18, 'usage chunk right before [DONE]');
        my $e = $mock->entry_for($res);
        is_deeply(KB::Mock::body_json($e)->{stream_options}, { include_usage => JSON::PP::true },
                  "app's stream_options passed unchanged") if $e;
        check_fields(journal_request($res->{headers}{'x-keybroker-request-id'}), {
                KEYBROKER_STREAM => '1', KEYBROKER_OUTCOME => 'ok',
                KEYBROKER_INPUT_TOKENS => '11', KEYBROKER_OUTPUT_TOKENS => '7',
        }, 'journal');
};

# ------------------------------------------------------------ responses
subtest 'responses stream' => sub {
        my $res = req($broker, path => '/v1/responses', stream => 1,
                      json => { model => 'gpt-mini', input => 'x', stream => JSON::PP::true },
                      headers => ['x-mock-output-tokens' => 3, 'x-mock-reasoning-tokens' => 1]);
        stream_ok($res, 'responses');
        my @ev = sse_events($res->{body});
        is_deeply([map { $_->{event} // '' } @ev],
                  [qw(response.created response.in_progress response.output_item.added response.content_part.added),
                   ('response.output_text.delta') x 3,
                   qw(response.output_text.done response.content_part.done response.output_item.done response.completed)],
                  'event sequence');
        is(join('', map { $_->{json}{delta} // '' } @ev[4 .. 6]), 'tok0 tok1 tok2 ', 'deltas in order');
        is($ev[-1]{json}{response}{usage}{output_tokens}, 3, 'completed carries usage');
        check_fields(journal_request($res->{headers}{'x-keybroker-request-id'}), {
                KEYBROKER_STREAM => '1', KEYBROKER_ENDPOINT => 'responses', KEYBROKER_OUTCOME => 'ok',
                KEYBROKER_INPUT_TOKENS => '11', KEYBROKER_OUTPUT_TOKENS => '3', KEYBROKER_REASONING_TOKENS => '1',
        }, 'journal');
};

# ------------------------------------------------------------ messages
subtest 'messages stream' => sub {
        my $res = req($broker, path => '/v1/messages', stream => 1,
                      json => { model => 'claude-haiku', max_tokens => 50, stream => JSON::PP::true,
                                messages => [{ role => 'user', content => 'x' }] },
                      headers => [@ANTH, 'x-mock-output-tokens' => 2, 'x-mock-cached-tokens' => 6,
                                  'x-mock-cache-write-tokens' => 8]);
        stream_ok($res, 'messages');
        check_common_headers($res, team => 'ops', route => 'anth');
        my @ev = sse_events($res->{body});
        is_deeply([map { $_->{event} // '' } @ev],
                  [qw(message_start content_block_start ping content_block_delta content_block_delta
                      content_block_stop message_delta message_stop)], 'event sequence');
        is($ev[0]{json}{message}{model}, $UP_CLAUDE, 'message_start names the upstream model');
        is(join('', map { $_->{json}{delta}{text} // '' } grep { ($_->{event} // '') eq 'content_block_delta' } @ev),
           'tok0 tok1 ', 'text deltas in order');
        my $e = $mock->entry_for($res);
        ok($e && !exists KB::Mock::body_json($e)->{stream_options}, 'nothing OpenAI-specific added for anthropic');
        check_fields(journal_request($res->{headers}{'x-keybroker-request-id'}), {
                KEYBROKER_STREAM => '1', KEYBROKER_ENDPOINT => 'messages', KEYBROKER_FAMILY => 'anthropic',
                KEYBROKER_OUTCOME => 'ok', KEYBROKER_STATUS => '200',
                KEYBROKER_INPUT_TOKENS => '11', KEYBROKER_OUTPUT_TOKENS => '2',
                KEYBROKER_CACHED_TOKENS => '6', KEYBROKER_CACHE_WRITE_TOKENS => '8',
        }, 'journal');
};

# ------------------------------------------------------------ incremental delivery
subtest 'events reach the app as they arrive, not at the end' => sub {
        my $c = raw_connect($broker);
        my $t0 = time;
        $c->send(http_request('POST', '/v1/chat/completions', json => chat_body(),
                              headers => ['x-mock-event-delay-ms' => 200, 'x-mock-output-tokens' => 5]));
        my $res = $c->read_response(timeout => 20);
        ok($res, 'got a response') or return diag($c->{why});
        is($res->{status}, 200, 'status 200');
        ok($res->{complete}, 'chunked body terminated');
        my ($first) = grep { $_->[1] =~ /data:/ } @{$res->{chunks}};
        ok($first, 'a chunk with an event') or return;
        my $total = $res->{t_end} - $t0;
        my $ttfe = $first->[0] - $t0;
        note(sprintf('first event after %.3f s, last byte after %.3f s', $ttfe, $total));
        # The mock spaces 9 events 200 ms apart (~1.6 s); a buffering broker
        # would deliver everything at the end.
        cmp_ok($ttfe, '<', 0.8, 'first event within 0.8 s');
        cmp_ok($total - $ttfe, '>', 0.8, 'last byte at least 0.8 s after the first event');
        cmp_ok(scalar(@{$res->{chunks}}), '>=', 5, 'body came in several chunks');
        my @ev = sse_events($res->{body});
        is($ev[-1]{data}, '[DONE]', 'ends with [DONE]');
        is(chat_text(@ev), 'tok0 tok1 tok2 tok3 tok4 ', 'all deltas');
        $c->close;
};

# ------------------------------------------------------------ upstream cut
subtest 'upstream cut mid-stream (chat): events so far, then an error event, body terminated' => sub {
        my $c = raw_connect($broker);
        $c->send(http_request('POST', '/v1/chat/completions', json => chat_body(),
                              headers => ['x-mock-cut-after' => 3, 'x-mock-output-tokens' => 6]));
        my $res = $c->read_response(timeout => 20);
        ok($res, 'got a response') or return diag($c->{why});
        is($res->{status}, 200, 'status 200 (headers were already sent)');
        ok($res->{complete}, 'chunked body ends with the terminating chunk') or diag(explain($res));
        ok(!$res->{bad_chunk}, 'chunk framing intact');
        my @ev = sse_events($res->{body});
        is(scalar(@ev), 4, '3 relayed events + 1 error event') or diag($res->{body});
        is($ev[0]{json}{choices}[0]{delta}{role}, 'assistant', 'event 1: role');
        is(chat_text(@ev[0 .. 2]), 'tok0 tok1 ', 'events 2-3: the deltas that arrived');
        my $err = $ev[-1]{json};
        is(ref $err && ref $err->{error}, 'HASH', 'last event is {"error":{…}}') or diag($ev[-1]{data});
        is($err->{error}{code}, 'stream_interrupted', 'error.code stream_interrupted');
        like($err->{error}{message} // '', qr/\S/, 'error.message set');
        ok(!grep({ $_->{data} eq '[DONE]' } @ev), 'no [DONE]');
        check_fields(journal_request($res->{headers}{'x-keybroker-request-id'}), {
                KEYBROKER_OUTCOME => 'stream_interrupted', KEYBROKER_STREAM => '1',
                KEYBROKER_STATUS => '200', KEYBROKER_UPSTREAM_STATUS => '200', PRIORITY => '4',
        }, 'journal');
        $c->close;
};

subtest 'upstream cut mid-stream (messages): Anthropic error event' => sub {
        my $c = raw_connect($broker);
        $c->send(http_request('POST', '/v1/messages', headers => [@ANTH, 'x-mock-cut-after' => 3],
                              json => { model => 'claude-haiku', max_tokens => 9, stream => JSON::PP::true,
                                        messages => [{ role => 'user', content => 'x' }] }));
        my $res = $c->read_response(timeout => 20);
        ok($res, 'got a response') or return diag($c->{why});
        is($res->{status}, 200, 'status 200');
        ok($res->{complete}, 'chunked body terminated');
        my @ev = sse_events($res->{body});
        is_deeply([map { $_->{event} // '' } @ev], [qw(message_start content_block_start ping error)],
                  '3 relayed events, then event: error') or diag($res->{body});
        my $err = $ev[-1]{json} // {};
        is($err->{type}, 'error', 'type error');
        is($err->{error}{type}, 'api_error', 'error.type api_error');
        like($err->{error}{message} // '', qr/^stream_interrupted/, 'message starts with stream_interrupted');
        check_fields(journal_request($res->{headers}{'x-keybroker-request-id'}), {
                KEYBROKER_OUTCOME => 'stream_interrupted', KEYBROKER_STREAM => '1', KEYBROKER_FAMILY => 'anthropic',
                # message_start already told the input tokens
                KEYBROKER_INPUT_TOKENS => qr/^(11)?$/,
        }, 'journal');
        $c->close;
};

# ------------------------------------------------------------ client abort
subtest 'app disconnects mid-stream: upstream transfer aborted, journal client_abort' => sub {
        # A provider of its own, so its TCP connections are this stream's only.
        my $m2 = start_mock(require_key => [values %keys]);
        my $b2 = start_broker(config => standard_config(mock => $m2), keys => \%keys);
        my $c = raw_connect($b2);
        $c->send(http_request('POST', '/v1/chat/completions', json => chat_body(),
                              headers => ['x-mock-event-delay-ms' => 300, 'x-mock-output-tokens' => 40]));
        my $res = $c->read_head(timeout => 10);
        ok($res, 'response started') or return diag($c->{why});
        $res = $c->read_body($res, timeout => 10, until => sub ($b) { $b =~ /tok0/ });
        ok($res->{stopped}, 'first delta received');
        cmp_ok(tcp_established($m2->port), '>=', 1, 'broker->provider connection open while streaming');
        $c->close;
        my $gone = wait_until(5, sub { tcp_established($m2->port) == 0 });
        ok($gone, 'broker closed the provider connection within 5 s (the stream had ~12 s to go)')
                or diag('ESTABLISHED connections on mock port: ' . tcp_established($m2->port));
        check_fields(journal_request($res->{headers}{'x-keybroker-request-id'}), {
                KEYBROKER_OUTCOME => 'client_abort', KEYBROKER_STREAM => '1', PRIORITY => '4',
        }, 'journal');
        my $w = req($b2, path => '/v1/keybroker/whoami');
        is($w->{status}, 200, 'broker still serves');
        is($b2->stop, 0, 'broker exits 0') or diag($b2->log);
};

# ------------------------------------------------------------ backpressure
subtest 'slow reader: broker pauses the upstream instead of buffering' => sub {
        my $N = 100_000;        # ~15 MB of SSE
        # warm up, then take the baseline
        req($broker, path => '/v1/chat/completions', json => chat_body(), stream => 1);
        my $rss0 = proc_rss_kb($broker->pid);
        my $c = raw_connect($broker);
        $c->send(http_request('POST', '/v1/chat/completions', json => chat_body(),
                              headers => ['x-mock-output-tokens' => $N]));
        my $res = $c->read_head(timeout => 10);
        ok($res, 'response started') or return diag($c->{why});
        my $max = $rss0;
        my $t_end = time + 2;
        my $cpu_mid;
        while (time < $t_end) {
                my $r = proc_rss_kb($broker->pid) // 0;
                $max = $r if $r > $max;
                $cpu_mid //= proc_cpu_ticks($broker->pid) if $t_end - time < 1;
                sleep 0.1;
        }
        my $cpu_used = proc_cpu_ticks($broker->pid) - ($cpu_mid // 0);
        note("RSS before ${rss0} kB, max while not reading ${max} kB; CPU in the last second $cpu_used ticks");
        cmp_ok($max - $rss0, '<', 8 * 1024, 'RSS grew less than 8 MiB while the app did not read');
        cmp_ok($cpu_used, '<', 50, 'broker idle (not spinning) while paused');
        $res = $c->read_body($res, timeout => 60);
        ok($res->{complete}, 'whole stream read, body terminated');
        my $body = $res->{body};
        my $n_deltas = () = $body =~ /"content":"tok\d+ "/g;
        is($n_deltas, $N, "all $N deltas arrived");
        like($body, qr/tok99999 /, 'last delta present');
        like($body, qr/data: \[DONE\]\s*$/, 'ends with [DONE]');
        check_fields(journal_request($res->{headers}{'x-keybroker-request-id'}), {
                KEYBROKER_OUTCOME => 'ok', KEYBROKER_OUTPUT_TOKENS => "$N",
        }, 'journal');
        $c->close;
};

is($broker->stop, 0, 'broker exits 0 on SIGTERM') or diag($broker->log);
done_testing;
