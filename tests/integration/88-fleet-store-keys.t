#!/usr/bin/perl
# The fleet quota store over time, seen in Redis itself: minute buckets that
# fall out of the window leave the team's running total (so a full window
# frees up), and a broker that settled calls while the store was away and
# then restarted sends them from its journal once the store is back (the
# store's counters equal the journaled usage).
use v5.36;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use KB;

ensure_journald();
my %keys = ('oai-key' => fixture_secret('oai'), 'anth-key' => fixture_secret('anth'));
my $mock = start_mock(require_key => [values %keys]);
my $chat = { model => 'gpt-mini', max_tokens => 20, messages => [{ role => 'user', content => 'hi' }] };
# Under valgrind a broker can take longer than the default 50 ms to read a
# reply; no case here is about the timeout itself.
my $TIMEOUT = $ENV{KB_VALGRIND} ? '1s' : '50ms';

sub cli($redis, @args) {
        my $r = run_cmd(['redis-cli', '-p', $redis->{port}, '--raw', @args]);
        chomp(my $out = $r->{stdout} // '');
        return $out;
}

sub status($b) { json_decode(req($b->dir . '/admin.sock', path => '/status')->{body} // '') // {} }

sub connected($b) {
        return wait_until(10, sub { my $s = status($b)->{quota_store} // {}; ($s->{state} // '') eq 'connected' && $s->{epoch} });
}

sub journaled_tokens($b, $team) {
        journal_sync();
        my ($tok, $cost, $n) = (0, 0, 0);
        for my $rec (journal_records({ MESSAGE_ID => $MID_REQUEST, KEYBROKER_TEAM => $team,
                                       KEYBROKER_INSTANCE => $b->{instance} }, since => $b->{t0})) {
                next unless ($rec->{KEYBROKER_SEQ} // 0) > 0;
                $tok += ($rec->{KEYBROKER_INPUT_TOKENS} || 0) + ($rec->{KEYBROKER_OUTPUT_TOKENS} || 0);
                my $c = $rec->{KEYBROKER_COST_MICROUSD} // 0;
                $cost += $c > 0 ? $c : 0;
                $n++;
        }
        return ($tok, $cost, $n);
}

subtest 'buckets out of the minute window leave the running total' => sub {
        my $redis = start_redis();
        my $cfg = standard_config(mock => $mock);
        $cfg->{agent} = { quota_store => $redis->{url}, quota_store_timeout => $TIMEOUT };
        $cfg->{'team:ops'}{requests_per_minute} = 5;
        my $b = start_broker(config => $cfg, keys => \%keys);
        ok(connected($b), 'connected');
        # 1000 requests 90 s ago, as another broker would have left them:
        # counted in the total, but out of the window by now.
        my $k = int(time) - 90;
        cli($redis, 'HSET', 'keybroker:t:ops:rq', $k, 1000, 'gc', $k, 'sum', 1000);
        my $res = req($b, path => '/v1/chat/completions', json => $chat);
        is($res->{status}, 200, 'admitted: the old buckets no longer count') or diag($res->{body});
        is(cli($redis, 'HGET', 'keybroker:t:ops:rq', 'sum'), 1, 'the total is this request alone');
        is(cli($redis, 'HEXISTS', 'keybroker:t:ops:rq', $k), 0, 'the old bucket is gone');
        cmp_ok(cli($redis, 'HGET', 'keybroker:t:ops:rq', 'gc'), '>', $k, 'gc moved up to the window');
        is($res->{headers}{'x-ratelimit-remaining-requests'}, 4, 'x-ratelimit-remaining-requests: the fleet says 4');
        # The store forgets its scripts (SCRIPT FLUSH): the next call is sent
        # again as EVAL with the script and still counted in the store.
        cli($redis, 'SCRIPT', 'FLUSH');
        $res = req($b, path => '/v1/chat/completions', json => $chat);
        is($res->{status}, 200, 'after SCRIPT FLUSH: admitted');
        is($res->{headers}{'x-ratelimit-remaining-requests'}, 3, '... by the store (the fleet says 3 left)');
        is(status($b)->{quota_store}{state}, 'connected', '... which stays connected');
        my @st = map { req($b, path => '/v1/chat/completions', json => $chat)->{status} } 1 .. 4;
        is_deeply(\@st, [200, 200, 200, 429], 'then the window fills at 5');
        $b->stop;
        stop_redis($redis);
};

subtest 'settled while the store was away, then restarted: sent from the journal' => sub {
        my $redis = start_redis();
        my $cfg = standard_config(mock => $mock);
        $cfg->{agent} = { quota_store => $redis->{url}, quota_store_timeout => $TIMEOUT };
        $cfg->{'team:ops'}{tokens_per_day} = 1_000_000;
        my $b = start_broker(config => $cfg, keys => \%keys);
        $b->{t0} = time - 1;
        ok(connected($b), 'connected');
        $b->{instance} = KB::slurp($b->dir . '/state/instance') =~ s/\s+//gr;
        my $day = int(time / 86400);
        is(req($b, path => '/v1/chat/completions', json => $chat)->{status}, 200, "call $_ with the store") for 1 .. 3;
        ok(wait_until(5, sub { (status($b)->{quota_store}{settles_queued} // 1) == 0 }), 'settled in the store');

        # The store stops answering; calls go on against this host's counters.
        cli($redis, 'CLIENT', 'PAUSE', 6000, 'ALL');
        my $paused = time;
        ok(wait_until(5, sub { (status($b)->{quota_store}{state} // '') eq 'offline' }), 'offline');
        is(req($b, path => '/v1/chat/completions', json => $chat)->{status}, 200, "call $_ while it is away")
                for 1 .. 4;
        cmp_ok(status($b)->{quota_store}{settles_queued}, '>=', 4, 'their settles wait');
        is($b->stop, 0, 'the broker stops with them still waiting');
        sleep(6.5 - (time - $paused)) if time - $paused < 6.5;

        $b->respawn;
        ok(connected($b), 'restarted and connected again');
        my @rs = $b->journal_wait({ MESSAGE_ID => 'cfe4b02a7d4b41c5a0bb51ebad71f6d3', KEYBROKER_EVENT => 'resent' }, 5);
        is($rs[0]{KEYBROKER_PUSHED}, 4, 'journaled: the 4 settles the store missed, sent again from the journal')
                or diag($b->log);
        my ($tok, $cost, $n) = journaled_tokens($b, 'ops');
        is($n, 7, '7 calls journaled');
        ok(wait_until(5, sub { cli($redis, 'HGET', "keybroker:t:ops:d:$day", 'tk') == $tok }),
           "the store's tokens today = the journaled tokens ($tok)")
                or diag('store: ' . cli($redis, 'HGET', "keybroker:t:ops:d:$day", 'tk'));
        is(cli($redis, 'HGET', "keybroker:t:ops:d:$day", 'co'), $cost, "the store's cost today = the journaled cost ($cost)");
        # once more: a second restart sends nothing twice
        is($b->stop, 0, 'stops');
        $b->respawn;
        ok(connected($b), 'restarted again');
        sleep 1;
        is(cli($redis, 'HGET', "keybroker:t:ops:d:$day", 'tk'), $tok, 'nothing counted twice');
        $b->stop;
        stop_redis($redis);
};

subtest 'a stream is cut where the fleet has no more room, across two brokers' => sub {
        my $redis = start_redis();
        my %stream = (model => 'gpt-mini', messages => [{ role => 'user', content => 'hi' }], max_tokens => 1,
                      stream => JSON::PP::true);
        my $est = int((length(json_encode(\%stream)) + 3) / 4);
        my $fit = 20;
        my $cfg = standard_config(mock => $mock);
        $cfg->{agent} = { quota_store => $redis->{url}, quota_store_timeout => $TIMEOUT };
        # b1 spends 10 tokens of the day first: the stream on b2 has room for
        # exactly $fit output tokens after its own input estimate.
        $cfg->{'team:ops'}{tokens_per_day} = $est + $fit + 10;
        my @b = map { start_broker(config => $cfg, keys => \%keys) } 1 .. 2;
        ok(connected($_), 'connected') for @b;
        my $small = { model => 'gpt-mini', max_tokens => 1, messages => [] };
        my $res = req($b[0], path => '/v1/chat/completions', json => $small,
                      headers => ['x-mock-input-tokens' => 9, 'x-mock-output-tokens' => 1]);
        is($res->{status}, 200, 'b1: a call of 10 tokens') or diag($res->{body});
        my $day = int(time / 86400);
        ok(wait_until(5, sub { (cli($redis, 'HGET', "keybroker:t:ops:d:$day", 'tk') || 0) == 10 }), 'settled in the store');

        $res = req($b[1], path => '/v1/chat/completions', json => \%stream,
                   headers => ['x-mock-output-tokens' => 50, 'x-mock-event-delay-ms' => 20]);
        is($res->{status}, 200, 'b2: the stream began');
        my @ev = sse_events($res->{body});
        my @d;
        for my $e (@ev) {
                my $j = $e->{json} // next;
                push @d, map { $_->{delta}{content} // () } grep { ($_->{delta}{content} // '') ne '' } @{$j->{choices} // []};
        }
        is(scalar @d, $fit, "the app got exactly the $fit deltas the fleet had room for");
        my ($err) = grep { ($_->{json}{error}{code} // '') eq 'quota_exceeded' } @ev;
        ok($err, '... then a quota_exceeded error event');
        is($err->{json}{error}{type}, 'insufficient_quota', '... of type insufficient_quota') if $err;
        my $rid = $res->{headers}{'x-keybroker-request-id'};
        my $rec = journal_request($rid);
        is($rec->{KEYBROKER_OUTCOME}, 'quota_rejected', 'journaled as quota_rejected');
        is($rec->{KEYBROKER_OUTPUT_TOKENS}, $fit, "with the $fit output tokens delivered");
        ok(wait_until(5, sub { (cli($redis, 'HGET', "keybroker:t:ops:d:$day", 'tk') || 0) == 10 + $est + $fit }),
           'the store counts the day at exactly its limit') or diag(cli($redis, 'HGET', "keybroker:t:ops:d:$day", 'tk'));
        $_->stop for @b;
        stop_redis($redis);
};

subtest "a team's key of the wrong type: offline with the reason, calls served on this host's share" => sub {
        my $redis = start_redis();
        my $cfg = standard_config(mock => $mock);
        # a generous timeout: the only way offline here is the key (valgrind is slow)
        $cfg->{agent} = { quota_store => $redis->{url}, offline_share => '50%', quota_store_timeout => '2s' };
        $cfg->{'team:ops'}{requests_per_minute} = 4;
        my $b = start_broker(config => $cfg, keys => \%keys);
        ok(connected($b), 'connected');
        cli($redis, 'SET', 'keybroker:t:ops:rq', 'not a hash');
        my @st = map { req($b, path => '/v1/chat/completions', json => $chat)->{status} } 1 .. 4;
        is_deeply(\@st, [200, 200, 429, 429], "served on this host's half of the limit (2 of 4), never unlimited")
                or diag($b->log);
        my $s = status($b)->{quota_store} // {};
        is($s->{state}, 'offline', 'the store is offline');
        like($s->{reason} // '', qr/WRONGTYPE/, '... saying WRONGTYPE');
        ok(wait_until(5, sub {
                grep { ($_->{KEYBROKER_REASON} // '') =~ /WRONGTYPE/ }
                        $b->journal({ MESSAGE_ID => 'cfe4b02a7d4b41c5a0bb51ebad71f6d3', KEYBROKER_EVENT => 'offline' });
        }), 'journaled offline with the reason');
        ok($b->alive, 'no crash');
        cli($redis, 'DEL', 'keybroker:t:ops:rq');
        ok(connected($b), 'back once the key is fixed');
        $b->stop;
        stop_redis($redis);
};

subtest "team list: a fleet team's usage is the fleet's, with this host's part" => sub {
        my $redis = start_redis();
        my $cfg = standard_config(mock => $mock);
        $cfg->{agent} = { quota_store => $redis->{url}, quota_store_timeout => $TIMEOUT };
        $cfg->{'team:ops'}{requests_per_minute} = 100;
        $cfg->{'team:local'} = { users => '0', models => '*', quota_scope => 'host', requests_per_minute => 50 };
        my @b = map { start_broker(config => $cfg, keys => \%keys) } 1 .. 2;
        ok(connected($_), 'connected') for @b;
        my @ops = (headers => ['X-Keybroker-Team' => 'ops']);
        is(req($b[0], path => '/v1/chat/completions', json => $chat, @ops)->{status}, 200, "b1: call $_") for 1 .. 2;
        is(req($b[1], path => '/v1/chat/completions', json => $chat, @ops)->{status}, 200, "b2: call $_") for 1 .. 3;
        my $team;
        ok(wait_until(5, sub {
                my $j = req($b[0]->dir . '/admin.sock', path => '/teams')->{json} // {};
                ($team) = grep { $_->{name} eq 'ops' } @{$j->{teams} // []};
                ($team->{usage}{requests_per_minute}{used} // 0) == 5;
        }), 'GET /teams on b1: the fleet made 5 requests this minute') or diag(explain($team));
        is($team->{usage_scope}, 'fleet', '... usage_scope fleet');
        is($team->{quota_scope}, 'fleet', '... quota_scope fleet');
        is($team->{host_usage}{requests_per_minute}{used}, 2, '... of which this host made 2 (host_usage)');
        is($team->{usage}{requests_per_minute}{remaining}, 95, '... 95 left fleet-wide');
        my $j = req($b[0]->dir . '/admin.sock', path => '/teams')->{json} // {};
        my ($loc) = grep { $_->{name} eq 'local' } @{$j->{teams} // []};
        is($loc->{usage_scope}, 'host', 'a quota_scope = host team: usage_scope host');
        ok(!exists $loc->{host_usage}, '... and no host_usage');
        my $r = run_cmd([$KB::BUILD . '/keybrokerctl', '--admin-socket', $b[0]->dir . '/admin.sock', 'team', 'list']);
        my ($row) = grep { /^ops\s+fleet\s/ } split /\n/, $r->{stdout};
        like($row // '', qr/^ops\s+fleet\s+5\/100\s.*\s2 rpm, \d+ tok today, \$[\d.]+ month$/,
             'keybrokerctl team list: COUNTED fleet, RPM 5/100, THIS HOST 2 rpm') or diag($r->{stdout});
        $_->stop for @b;
        stop_redis($redis);
};

done_testing;
