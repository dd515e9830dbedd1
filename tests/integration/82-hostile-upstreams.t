#!/usr/bin/perl
# The broker against hostile or broken providers: a connection reset before
# and during an answer, an upstream that accepts and never answers, an SSE
# line of tens of MiB, malformed usage objects, an endless stream. Each ends
# in a bounded error (or a relayed answer) and one journal record, with the
# broker's memory bounded and the broker still serving.
#
# A provider with a TLS certificate nobody trusts is refused unless ca_file
# trusts it: tests/integration/65-tls.t (a local TLS mock with its own CA).
# A connection refused and TLS to a plain-HTTP port: 60-upstream-errors.t.
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
# Every failure here is scripted: no breaker may open between them. The
# endless streams deliver far more than a minute's worth of tokens (rate
# windows are settled, not cut, mid-stream): the team's window is wide.
$cfg->{'team:ops'}{tokens_per_minute} = 1_000_000_000;
$cfg->{"route:$_"}{breaker_failures} = 0, $cfg->{"route:$_"}{breaker_error_ratio} = 0 for qw(oai anth);
$cfg->{'route:short'} = { family => 'openai', base_url => $mock->base_url, key => 'oai-key', timeout => '2s',
                          breaker_failures => 0, breaker_error_ratio => 0, retry_on => 'none' };
$cfg->{'route:shortanth'} = { family => 'anthropic', base_url => $mock->base_url, key => 'anth-key',
                              auth => 'x-api-key', timeout => '2s', breaker_failures => 0,
                              breaker_error_ratio => 0, retry_on => 'none' };
$cfg->{'model:short'} = { target => 'short gpt-x' };
$cfg->{'model:shortclaude'} = { target => 'shortanth claude-x' };
my $broker = start_broker(config => $cfg, keys => \%keys);

my @ANTH = ('anthropic-version' => '2023-06-01');
my $msgs = [{ role => 'user', content => 'x' }];
sub chat_body(%o) { { model => 'gpt-mini', messages => $msgs, %o } }
sub claude_body(%o) { { model => 'claude-haiku', max_tokens => 5, messages => $msgs, %o } }
sub record($res) { journal_request($res->{headers}{'x-keybroker-request-id'} // '') }

sub serving($name) {
        my $res = req($broker, path => '/v1/chat/completions', json => chat_body());
        is($res->{status}, 200, "$name: broker still serves") or diag(KB::show_res($res));
}

# Peak RSS since the broker started (VmHWM), kB.
sub hwm_kb($pid) {
        my $s = KB::slurp("/proc/$pid/status") // return 0;
        return $s =~ /^VmHWM:\s+(\d+)\s+kB/m ? $1 : 0;
}

# Peak memory grew by less than $max_kb. Not under AddressSanitizer (make
# check-asan: its quarantine keeps up to 256 MiB of freed buffers out of
# reuse) nor valgrind (make check-valgrind: its own shadow memory): there
# RSS measures the tool, not what the broker holds.
sub mem_ok($pid, $grew_kb, $max_kb, $name) {
        SKIP: {
                skip("$name: RSS not meaningful under ASan or valgrind ($grew_kb kB)", 1)
                        if KB::under_memory_tool($pid);
                cmp_ok($grew_kb, '<', $max_kb, $name);
        }
}

# ------------------------------------------------------------ connection reset
subtest 'reset before any response byte: 502 upstream_unavailable, journaled' => sub {
        my $res = req($broker, path => '/v1/chat/completions', json => chat_body(), headers => ['x-mock-reset' => 1]);
        check_openai_error($res, 502, 'upstream_unavailable', 'chat');
        check_fields(record($res), { KEYBROKER_STATUS => '502', KEYBROKER_OUTCOME => 'upstream_error',
                                     KEYBROKER_ROUTE => 'oai', PRIORITY => '4' }, 'journal');
        $res = req($broker, path => '/v1/messages', json => claude_body(), headers => [@ANTH, 'x-mock-reset' => 1]);
        check_anthropic_error($res, 502, 'upstream_unavailable', 'messages (Anthropic shape)');
        check_fields(record($res), { KEYBROKER_STATUS => '502', KEYBROKER_OUTCOME => 'upstream_error' }, 'journal');
};

subtest 'reset in the middle of a JSON body: 502 or a truncated body, never a clean end' => sub {
        my $c = raw_connect($broker);
        $c->send(http_request('POST', '/v1/chat/completions', json => chat_body(),
                              headers => ['x-mock-reset' => 1, 'x-mock-cut-after' => 30]));
        my $res = $c->read_response(timeout => 10);
        ok($res, 'an answer') or return diag($c->{why});
        if ($res->{status} == 200) {
                ok(!$res->{complete}, 'the body is cut short, not framed as complete');
        } else {
                is($res->{status}, 502, '502 upstream_unavailable');
        }
        check_fields(record($res), { KEYBROKER_OUTCOME => qr/^(upstream_error|stream_interrupted)$/ }, 'journal');
        $c->close;
};

subtest 'reset mid-stream: the events that arrived, then an error event; stream_interrupted' => sub {
        for my $case (['chat', '/v1/chat/completions', chat_body(stream => JSON::PP::true), []],
                      ['messages', '/v1/messages', claude_body(stream => JSON::PP::true), [@ANTH]]) {
                my ($name, $path, $body, $h) = @$case;
                my $c = raw_connect($broker);
                $c->send(http_request('POST', $path, json => $body,
                                      headers => [@$h, 'x-mock-reset' => 1, 'x-mock-cut-after' => 3,
                                                  'x-mock-output-tokens' => 10]));
                my $res = $c->read_response(timeout => 10);
                ok($res, "$name: an answer") or next;
                is($res->{status}, 200, "$name: 200 (the stream had begun)");
                ok($res->{complete} && !$res->{bad_chunk}, "$name: chunked framing intact, terminated");
                my @ev = sse_events($res->{body});
                my $last = $ev[-1] // {};
                my $err = $last->{json} // {};
                ok(ref $err->{error} eq 'HASH', "$name: the last event is an error") or diag($res->{body});
                ok(!grep({ ($_->{data} // '') eq '[DONE]' || ($_->{event} // '') eq 'message_stop' } @ev),
                   "$name: no clean end event");
                check_fields(record($res), { KEYBROKER_OUTCOME => 'stream_interrupted', KEYBROKER_STREAM => '1',
                                             KEYBROKER_STATUS => '200', PRIORITY => '4' }, "$name: journal");
                $c->close;
        }
        serving('after resets');
};

# ------------------------------------------------------------ never answers
subtest 'an upstream that accepts and never answers: 504 at the route timeout (2 s)' => sub {
        for my $case (['chat', '/v1/chat/completions', { model => 'short', messages => $msgs }, [],
                       \&check_openai_error],
                      ['messages stream', '/v1/messages',
                       { model => 'shortclaude', max_tokens => 5, stream => JSON::PP::true, messages => $msgs }, [@ANTH],
                       \&check_anthropic_error]) {
                my ($name, $path, $body, $h, $check) = @$case;
                my $t0 = time;
                my $res = req($broker, path => $path, json => $body, headers => [@$h, 'x-mock-hang' => 1]);
                my $dt = time - $t0;
                $check->($res, 504, 'upstream_timeout', $name);
                cmp_ok($dt, '>=', 1.8, sprintf("$name: not before the timeout (%.2f s)", $dt));
                cmp_ok($dt, '<', 5, "$name: at the timeout, not later");
                check_fields(record($res), { KEYBROKER_STATUS => '504', KEYBROKER_OUTCOME => 'upstream_timeout' },
                             "$name: journal");
        }
};

# ------------------------------------------------------------ over-long SSE line
# The usage tap parses events up to 16 MiB (a responses.completed event
# carries the whole answer) and skips longer ones: whatever the line's
# length, the broker holds at most about twice that while it grows.
subtest 'a 64 MiB SSE line: relayed with bounded memory, usage still counted' => sub {
        my $N = 64 << 20;
        for my $case (['app asked for usage', chat_body(stream => JSON::PP::true,
                                                        stream_options => { include_usage => JSON::PP::true })],
                      ['usage chunk hidden from the app', chat_body(stream => JSON::PP::true)]) {
                my ($name, $body) = @$case;
                my $hwm0 = hwm_kb($broker->pid);
                my $c = raw_connect($broker);
                $c->send(http_request('POST', '/v1/chat/completions', json => $body,
                                      headers => ['x-mock-long-line-bytes' => $N, 'x-mock-output-tokens' => 3,
                                                  'x-mock-input-tokens' => 21]));
                my $res = $c->read_response(timeout => 60);
                ok($res && $res->{complete}, "$name: the whole stream arrived, terminated") or next;
                my $long = 0;
                for my $line (split /\n/, $res->{body}) {
                        $long = length $line if length $line > $long;
                }
                is($long, $N, "$name: the $N-byte line relayed whole");
                like($res->{body}, qr/data: \[DONE\]\s*$/, "$name: the stream went on to [DONE]");
                my $grew = hwm_kb($broker->pid) - $hwm0;
                note("$name: peak RSS grew by $grew kB for a " . ($N >> 20) . ' MiB line');
                mem_ok($broker->pid, $grew, 48 * 1024, "$name: peak memory grew < 48 MiB (the line is 64 MiB)");
                check_fields(record($res), { KEYBROKER_OUTCOME => 'ok', KEYBROKER_INPUT_TOKENS => '21',
                                             KEYBROKER_OUTPUT_TOKENS => '3' }, "$name: journal counts the usage");
                $c->close;
        }
        serving('after long lines');
};

# ------------------------------------------------------------ malformed usage
subtest 'malformed usage objects: counted as 0, answer relayed, no crash' => sub {
        for my $kind (qw(negative float string null huge exp object)) {
                my $res = req($broker, path => '/v1/chat/completions', json => chat_body(),
                              headers => ['x-mock-bad-usage' => $kind]);
                is($res->{status}, 200, "chat JSON, $kind usage: 200");
                like($res->{body}, qr/"usage"/, "chat JSON, $kind usage: the provider's body relayed");
                check_fields(record($res), { KEYBROKER_OUTCOME => 'ok', KEYBROKER_INPUT_TOKENS => '0',
                                             KEYBROKER_OUTPUT_TOKENS => '0', KEYBROKER_CACHED_TOKENS => '0',
                                             KEYBROKER_COST_MICROUSD => '0' }, "chat JSON, $kind: journal 0 tokens");

                my $body = claude_body(stream => JSON::PP::true);
                $res = req($broker, path => '/v1/messages', json => $body,
                           headers => [@ANTH, 'x-mock-bad-usage' => $kind, 'x-mock-output-tokens' => 4], stream => 1);
                is($res->{status}, 200, "messages stream, $kind usage: 200");
                my @ev = sse_events($res->{body});
                is(($ev[-1] // {})->{event}, 'message_stop', "messages stream, $kind: relayed to the end");
                # Unusable numbers count 0. A number jansson cannot hold
                # (huge, exp) spoils the whole event: then, as for any stream
                # whose usage never came, the broker's own estimate of the
                # prompt (bytes / 4) stands, and the deltas it relayed.
                my $est = int(length(json_encode($body)) / 4) + 1;
                check_fields(record($res), {
                        KEYBROKER_OUTCOME => 'ok',
                        KEYBROKER_INPUT_TOKENS => $kind =~ /^(huge|exp)$/ ? sub ($v) { defined $v && $v =~ /^\d+$/ && $v <= $est }
                                                                        : '0',
                        KEYBROKER_OUTPUT_TOKENS => sub ($v) { defined $v && $v =~ /^\d+$/ && $v <= 4 },
                }, "messages stream, $kind: journal");
        }
        serving('after malformed usage');
};

# ------------------------------------------------------------ endless stream
subtest 'an endless stream: the app can abort it, memory stays bounded' => sub {
        my $m2 = start_mock(require_key => [values %keys]);
        my $b2 = start_broker(config => standard_config(mock => $m2), keys => \%keys);
        my $hwm0 = hwm_kb($b2->pid);
        my $c = raw_connect($b2);
        $c->send(http_request('POST', '/v1/chat/completions', json => chat_body(stream => JSON::PP::true),
                              headers => ['x-mock-output-tokens' => 10_000_000]));
        my $res = $c->read_head(timeout => 10);
        ok($res, 'stream started') or return diag($c->{why});
        my $t0 = time;
        $res = $c->read_body($res, timeout => 30, until => sub ($b) { length($b) > (32 << 20) || time - $t0 > 4 });
        ok($res->{stopped}, sprintf('read %.1f MiB in %.1f s', length($res->{body}) / 1048576, time - $t0));
        my $grew = hwm_kb($b2->pid) - $hwm0;
        note("peak RSS grew by $grew kB while relaying");
        mem_ok($b2->pid, $grew, 16 * 1024, 'peak memory grew < 16 MiB');
        $c->close;
        ok(wait_until(5, sub { tcp_established($m2->port) == 0 }), 'upstream transfer aborted when the app left');
        check_fields(record($res), { KEYBROKER_OUTCOME => 'client_abort', KEYBROKER_STREAM => '1',
                                     KEYBROKER_OUTPUT_TOKENS => qr/^[1-9]\d*$/ }, 'journal: client_abort, tokens so far');
        is($b2->stop, 0, 'broker exits 0') or diag($b2->log);
};

subtest 'an endless stream: the route timeout (2 s) ends it with an error event and a record' => sub {
        my $hwm0 = hwm_kb($broker->pid);
        my $t0 = time;
        my $c = raw_connect($broker);
        $c->send(http_request('POST', '/v1/chat/completions', json => { model => 'short', messages => $msgs,
                                                                        stream => JSON::PP::true },
                              headers => ['x-mock-output-tokens' => 10_000_000]));
        my $res = $c->read_head(timeout => 10);
        ok($res, 'stream started') or return diag($c->{why});
        # Read, but throw the bytes away as they come: only the end matters.
        my $tail = '';
        my $bytes = 0;
        $res = $c->read_body($res, timeout => 30, until => sub ($b) {
                $bytes += length $b;
                $tail = substr($b, -4096);
                $res->{body} = '';
                @{$res->{chunks}} = ();
                return 0;
        });
        my $dt = time - $t0;
        ok($res->{complete}, sprintf('stream ended after %.2f s and %.1f MiB', $dt, $bytes / 1048576));
        cmp_ok($dt, '>=', 1.8, 'not before the route timeout');
        cmp_ok($dt, '<', 8, 'at the route timeout, not when the stream would end');
        my @ev = sse_events($tail =~ s/^.*?\n\n//sr);
        my $err = ($ev[-1] // {})->{json} // {};
        ok(ref $err->{error} eq 'HASH', 'ends with an error event') or diag(substr($tail, -300));
        my $grew = hwm_kb($broker->pid) - $hwm0;
        mem_ok($broker->pid, $grew, 16 * 1024, "peak memory grew < 16 MiB ($grew kB)");
        check_fields(record($res), {
                KEYBROKER_OUTCOME => qr/^(upstream_timeout|stream_interrupted)$/, KEYBROKER_STREAM => '1',
                KEYBROKER_OUTPUT_TOKENS => qr/^[1-9]\d*$/, PRIORITY => '4',
        }, 'journal: the cut stream, with the tokens it delivered');
        $c->close;
        serving('after an endless stream');
};

is($broker->stop, 0, 'broker exits 0 on SIGTERM') or diag($broker->log);
done_testing;
