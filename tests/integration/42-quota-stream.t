#!/usr/bin/perl
# The hard stop: a stream whose output would cross the team's tokens_per_day
# or USD budget is cut at the limit with an error event in the family's SSE
# shape; the app gets exactly the deltas that fit, the journal says
# quota_rejected with those output tokens, and the provider's connection is
# closed early. JSON answers are never cut but settle to real usage; an
# interrupted stream and a client abort count what was delivered; the team's
# counters (GET /teams) always equal the sum of its journaled usage.
use v5.36;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use KB;

my $MID_QUOTA = 'd3d1e6b438f94b958707dfc486f2e5f9';

ensure_journald();
my %keys = ('oai-key' => fixture_secret('oai'), 'anth-key' => fixture_secret('anth'));
my $mock = start_mock(require_key => [values %keys]);
# Streams go to a mock of their own, so its TCP connections tell whether the
# broker hung up on it.
my $smock = start_mock(require_key => [values %keys]);
my @ANTH = ('anthropic-version' => '2023-06-01');

my %OAI_STREAM = (model => 'gpt-cut', messages => [{ role => 'user', content => 'hi' }], max_tokens => 1,
                  stream => JSON::PP::true);
my %ANTH_STREAM = (model => 'claude-cut', messages => [{ role => 'user', content => 'hi' }], max_tokens => 1,
                   stream => JSON::PP::true);

sub est_input($body) { my $n = length(json_encode($body)); return int(($n + 3) / 4) }

my $EST_OAI = est_input(\%OAI_STREAM);
my $EST_ANTH = est_input(\%ANTH_STREAM);
my $FIT = 20;   # output tokens (deltas) each hard-stop team has room for

my $cfg = standard_config(mock => $mock);
$cfg->{'route:cut'} = { family => 'openai', base_url => $smock->base_url, key => 'oai-key', auth => 'bearer',
                        price => 'gpt-4o-mini-2024-07-18 input=1 output=2' };
$cfg->{'route:cutanth'} = { family => 'anthropic', base_url => $smock->base_url, key => 'anth-key',
                            auth => 'x-api-key', price => 'claude-3-5-haiku-20241022 input=1 output=2' };
$cfg->{'model:gpt-cut'} = { target => 'cut gpt-4o-mini-2024-07-18' };
$cfg->{'model:claude-cut'} = { target => 'cutanth claude-3-5-haiku-20241022' };
# Prices: 1 µUSD per input token, 2 per output token. OpenAI streams report
# usage only at the end, so a cut one is charged the input estimate; the
# Anthropic mock reports 11 input tokens in message_start.
my %teams = (
        tpd => { tokens_per_day => $EST_OAI + $FIT },
        tpm => { tokens_per_minute => $EST_OAI + $FIT },
        tpdanth => { tokens_per_day => 11 + $FIT },
        usd => { budget_usd_per_day => sprintf('0.%06d', $EST_OAI + 2 * $FIT) },
        usdanth => { budget_usd_per_month => sprintf('0.%06d', 11 + 2 * $FIT) },
        json => { tokens_per_day => 100 },
        partial => { tokens_per_day => 1000000, budget_usd_per_day => 10 },
        abort => { tokens_per_day => 1000000 },
);
$cfg->{"team:$_"} = { users => '0', models => '*', %{$teams{$_}} } for keys %teams;
my $broker = start_broker(config => $cfg, keys => \%keys);
my $admin = $broker->dir . '/admin.sock';

# ------------------------------------------------------------ helpers

sub usage($team) {
        my $res = req($admin, path => '/teams');
        my ($t) = grep { $_->{name} eq $team } @{$res->{json}{teams} // []};
        return $t // {};
}

sub call($team, $body, @headers) {
        my $anth = ($body->{model} // '') =~ /^claude/;
        return req($broker, path => $anth ? '/v1/messages' : '/v1/chat/completions', json => $body,
                   headers => ['X-Keybroker-Team' => $team, ($anth ? @ANTH : ()), @headers]);
}

# The generated text of a stream, delta by delta.
sub deltas(@ev) {
        my @d;
        for my $e (@ev) {
                my $j = $e->{json} // next;
                if (($j->{type} // '') eq 'content_block_delta') {
                        push @d, $j->{delta}{text};
                } elsif (ref $j->{choices} eq 'ARRAY') {
                        push @d, map { $_->{delta}{content} // () } grep { ($_->{delta}{content} // '') ne '' } @{$j->{choices}};
                }
        }
        return @d;
}

sub tokens_of($rec) {
        my $t = ($rec->{KEYBROKER_INPUT_TOKENS} || 0) + ($rec->{KEYBROKER_OUTPUT_TOKENS} || 0);
        $t += ($rec->{KEYBROKER_CACHED_TOKENS} || 0) + ($rec->{KEYBROKER_CACHE_WRITE_TOKENS} || 0)
                if ($rec->{KEYBROKER_FAMILY} // '') eq 'anthropic';
        return $t;
}

# GET /teams against the team's journaled calls.
sub counters_match_journal($team, @recs) {
        my ($tokens, $cost) = (0, 0);
        for (@recs) { $tokens += tokens_of($_ // {}); $cost += ($_ // {})->{KEYBROKER_COST_MICROUSD} || 0 }
        my $t = usage($team);
        is($t->{usage}{tokens_per_day}{used}, $tokens, "GET /teams: $team tokens today = Σ journaled ($tokens)");
        is($t->{usage}{budget_usd_per_day}{used_microusd}, $cost, "GET /teams: $team USD today = Σ journaled cost ($cost)");
        is($t->{usage}{tokens_per_day}{reserved}, 0, 'nothing left reserved');
        is($t->{in_flight}, 0, 'nothing in flight');
}

sub quota_records($team) {
        $broker->journal_wait({ MESSAGE_ID => $MID_QUOTA, KEYBROKER_TEAM => $team }, 10);
        sleep 0.3;
        journal_sync();
        return $broker->journal({ MESSAGE_ID => $MID_QUOTA, KEYBROKER_TEAM => $team });
}

sub upstream_idle($timeout) { wait_until($timeout, sub { tcp_established($smock->port) == 0 }, 0.02) }

# One hard-stop case: $limit is what the team has; $fit the deltas that fit.
sub hard_stop($team, $family, $limit, %o) {
        my $body = $family eq 'openai' ? \%OAI_STREAM : \%ANTH_STREAM;
        my $before = $smock->count;
        ok(upstream_idle(5), 'no connection to the stream mock before');
        my $t0 = time;
        my $res = call($team, $body, 'x-mock-output-tokens' => 50, 'x-mock-event-delay-ms' => 50);
        my $dt = time - $t0;
        ok(upstream_idle(0.5), 'the provider connection is closed right after the cut');
        is($res->{status}, 200, 'the stream began: 200') or diag(KB::show_res($res));
        is($res->{exit}, 0, 'and ended cleanly for the app (curl exit 0)') or diag($res->{stderr});
        like($res->{headers}{'content-type'} // '', qr{^text/event-stream}, 'SSE');
        cmp_ok($dt, '<', 2.2, sprintf('cut early (%.2f s; the whole stream takes ~2.7 s)', $dt));
        is($smock->count - $before, 1, 'one upstream call');

        my @ev = sse_events($res->{body});
        my @d = deltas(@ev);
        is(scalar @d, $FIT, "the app got exactly the $FIT deltas that fit");
        is_deeply(\@d, [map { "tok$_ " } 0 .. $FIT - 1], 'in order, none skipped');
        my $last = $ev[-1] // {};
        if ($family eq 'openai') {
                ok(!defined $last->{event}, 'OpenAI: a plain data: event');
                is($last->{json}{error}{code}, 'quota_exceeded', 'data: {"error":{…,"code":"quota_exceeded"}}');
                my $type = $o{type} // 'insufficient_quota';
                is($last->{json}{error}{type}, $type, "type $type");
                like($last->{json}{error}{message} // '', qr/'\Q$team\E'/, 'message names the team');
                ok(!grep({ $_->{data} eq '[DONE]' } @ev), 'no [DONE]');
                ok(!grep({ ($_->{json}{choices}[0]{finish_reason} // '') eq 'stop' } @ev), 'no finish_reason');
        } else {
                is($last->{event}, 'error', 'Anthropic: event: error');
                is($last->{json}{type}, 'error', 'data type error');
                is($last->{json}{error}{type}, 'rate_limit_error', 'error.type rate_limit_error');
                like($last->{json}{error}{message} // '', qr/^quota_exceeded: .*'\Q$team\E'/, 'message "quota_exceeded: …team…"');
                ok(!grep({ ($_->{event} // '') eq 'message_stop' } @ev), 'no message_stop');
        }
        is(scalar(grep { ($_->{json}{error} // '') ne '' || ($_->{event} // '') eq 'error' } @ev), 1, 'one error event');

        my $rec = journal_request($res->{headers}{'x-keybroker-request-id'});
        check_fields($rec, { KEYBROKER_OUTCOME => 'quota_rejected', KEYBROKER_STATUS => 200, KEYBROKER_STREAM => 1,
                             KEYBROKER_OUTPUT_TOKENS => $FIT, KEYBROKER_INPUT_TOKENS => $o{input},
                             ($o{cost} ? (KEYBROKER_COST_MICROUSD => $o{cost}) : ()) },
                     'journal: quota_rejected with the output delivered');
        my @q = quota_records($team);
        is(scalar @q, 1, 'one quota record');
        check_fields($q[0], { KEYBROKER_LIMIT => $limit }, "quota record for $limit");

        my $u = usage($team)->{usage}{$limit};
        my $rem = $limit =~ /budget/ ? $u->{remaining_microusd} : $u->{remaining};
        is($rem, 0, "GET /teams: $limit used up exactly, not beyond");
        is($u->{reserved} =~ /^0(\.0+)?$/ ? 1 : 0, 1, 'nothing reserved');
        my $again = call($team, $body);
        is($again->{status}, 429, 'the next call is refused up front');
        is($smock->count - $before, 1, 'and never reaches the provider');
        return $rec;
}

# ------------------------------------------------------------ hard stop

subtest "tokens_per_day, OpenAI stream: cut after exactly $FIT deltas" => sub {
        my $rec = hard_stop('tpd', 'openai', 'tokens_per_day', input => $EST_OAI);
        my $u = usage('tpd')->{usage}{tokens_per_day};
        is($u->{used}, $EST_OAI + $FIT, 'tokens today = input estimate + delivered output');
        is($u->{used}, tokens_of($rec // {}), '= the journaled usage');
};

subtest "tokens_per_minute, OpenAI stream: cut after exactly $FIT deltas, as tokens_per_day is" => sub {
        my $rec = hard_stop('tpm', 'openai', 'tokens_per_minute', input => $EST_OAI, type => 'rate_limit_error');
};

subtest "tokens_per_day, Anthropic stream: cut after exactly $FIT deltas" => sub {
        cmp_ok($EST_ANTH + 1, '<=', 11 + $FIT, 'the estimate fits, so the call is admitted');
        my $rec = hard_stop('tpdanth', 'anthropic', 'tokens_per_day', input => 11);
        is(usage('tpdanth')->{usage}{tokens_per_day}{used}, tokens_of($rec // {}), 'tokens today = the journaled usage');
};

subtest "budget_usd_per_day, OpenAI stream: cut at the budget" => sub {
        my $rec = hard_stop('usd', 'openai', 'budget_usd_per_day', input => $EST_OAI, cost => $EST_OAI + 2 * $FIT);
        is(usage('usd')->{usage}{budget_usd_per_day}{used_microusd}, $rec && $rec->{KEYBROKER_COST_MICROUSD},
           'USD today = the journaled cost');
};

subtest "budget_usd_per_month, Anthropic stream: cut at the budget" => sub {
        cmp_ok($EST_ANTH + 2, '<=', 11 + 2 * $FIT, 'the estimate fits');
        my $rec = hard_stop('usdanth', 'anthropic', 'budget_usd_per_month', input => 11, cost => 11 + 2 * $FIT);
        is(usage('usdanth')->{usage}{budget_usd_per_month}{used_microusd}, $rec && $rec->{KEYBROKER_COST_MICROUSD},
           'USD this month = the journaled cost');
};

# ------------------------------------------------------------ JSON is never cut

subtest 'JSON answers are never cut, and settle to real usage' => sub {
        my $res = call('json', { model => 'gpt-mini', messages => [{ role => 'user', content => 'hi' }], max_tokens => 5 },
                       'x-mock-output-tokens' => 200, 'x-mock-event-delay-ms' => 100);
        is($res->{status}, 200, '200 although the output crosses tokens_per_day (100)');
        is($res->{exit}, 0, 'complete body');
        my $text = $res->{json}{choices}[0]{message}{content} // '';
        is(scalar(my @w = split / /, $text), 200, 'all 200 tokens delivered');
        my $rec = journal_request($res->{headers}{'x-keybroker-request-id'});
        check_fields($rec, { KEYBROKER_OUTCOME => 'ok', KEYBROKER_OUTPUT_TOKENS => 200, KEYBROKER_INPUT_TOKENS => 11 },
                     'journal: ok, real usage');
        my $u = usage('json')->{usage}{tokens_per_day};
        is($u->{used}, 211, 'settled to the real 211 tokens (over the limit: it was spent)');
        is($u->{remaining}, 0, 'remaining 0');
        my $again = call('json', { model => 'gpt-mini', messages => [{ role => 'user', content => 'hi' }], max_tokens => 5 });
        is($again->{status}, 429, 'the next call is refused');
        is($again->{json}{error}{type}, 'insufficient_quota', 'insufficient_quota');
        like($again->{json}{error}{message} // '', qr/211 used of 100/, 'message: 211 used of 100');
};

# ------------------------------------------------------------ partial streams

subtest 'an interrupted stream counts its partial output' => sub {
        my @recs;
        my $res = call('partial', \%OAI_STREAM, 'x-mock-output-tokens' => 20, 'x-mock-cut-after' => 6);
        is($res->{status}, 200, 'OpenAI: stream began');
        my @ev = sse_events($res->{body});
        my @d = deltas(@ev);
        is(scalar @d, 5, 'the app got 5 deltas (the role chunk, then 5, then the cut)');
        is($ev[-1]{json}{error}{code}, 'stream_interrupted', 'then a stream_interrupted error event');
        my $rec = journal_request($res->{headers}{'x-keybroker-request-id'});
        check_fields($rec, { KEYBROKER_OUTCOME => 'stream_interrupted', KEYBROKER_OUTPUT_TOKENS => 5,
                             KEYBROKER_INPUT_TOKENS => $EST_OAI, KEYBROKER_COST_MICROUSD => $EST_OAI + 10 },
                     'journal: the partial output and the input estimate');
        push @recs, $rec;

        $res = call('partial', \%ANTH_STREAM, 'x-mock-output-tokens' => 20, 'x-mock-cut-after' => 6,
                    'x-mock-cached-tokens' => 5, 'x-mock-cache-write-tokens' => 2);
        is($res->{status}, 200, 'Anthropic: stream began');
        @ev = sse_events($res->{body});
        @d = deltas(@ev);
        is(scalar @d, 3, 'the app got 3 deltas (message_start, content_block_start, ping, 3 deltas)');
        is($ev[-1]{event}, 'error', 'then event: error');
        $rec = journal_request($res->{headers}{'x-keybroker-request-id'});
        check_fields($rec, { KEYBROKER_OUTCOME => 'stream_interrupted', KEYBROKER_OUTPUT_TOKENS => 3,
                             KEYBROKER_INPUT_TOKENS => 11, KEYBROKER_CACHED_TOKENS => 5,
                             KEYBROKER_CACHE_WRITE_TOKENS => 2 }, 'journal: the partial usage');
        push @recs, $rec;
        counters_match_journal('partial', @recs);
};

subtest 'a client abort counts what was delivered' => sub {
        ok(upstream_idle(5), 'no connection to the stream mock before');
        my $c = raw_connect($broker);
        $c->send(http_request('POST', '/v1/chat/completions', json => \%OAI_STREAM,
                              headers => ['X-Keybroker-Team' => 'abort', 'x-mock-output-tokens' => 50,
                                          'x-mock-event-delay-ms' => 100]));
        my $head = $c->read_head(timeout => 10);
        ok($head, 'response head') or return diag($c->{why});
        my $res = $c->read_body($head, timeout => 10, until => sub ($b) { $b =~ /tok4 / });
        ok($res->{stopped}, 'read until the 5th delta');
        my $seen = scalar(deltas(sse_events($res->{body})));
        $c->close;
        ok(upstream_idle(2), 'the broker hung up on the provider too');

        my $rec = journal_request($head->{headers}{'x-keybroker-request-id'});
        check_fields($rec, { KEYBROKER_OUTCOME => 'client_abort', KEYBROKER_STREAM => 1,
                             KEYBROKER_OUTPUT_TOKENS => sub { $_[0] >= $seen && $_[0] <= $seen + 3 },
                             KEYBROKER_INPUT_TOKENS => $EST_OAI },
                     "journal: client_abort with the output relayed (the app read $seen)");
        counters_match_journal('abort', $rec);
};

subtest 'the broker is still healthy' => sub {
        ok($broker->alive, 'keybrokerd alive');
        is(call('abort', { model => 'gpt-mini', messages => [{ role => 'user', content => 'hi' }], max_tokens => 5 })->{status},
           200, 'a call still works');
};

done_testing;
