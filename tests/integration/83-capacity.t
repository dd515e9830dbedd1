#!/usr/bin/env perl
# Concurrency and capacity, through the real daemon and the mock:
# - concurrent streams never queue behind each other: on a cold broker, and
#   again after the provider restarted (its idle connections dead), every
#   stream's first event arrives before any stream ends;
# - every refused connection gets a complete 503 in its family's shape
#   (max_connections, max_connections_per_uid), also under a flood of 2,000
#   against a cap of 100, with bounded memory, while the admitted are served;
# - running out of file descriptors is named as the broker's own fault
#   (503 broker_overloaded, journaled so, the route's breaker untouched);
#   the soft RLIMIT_NOFILE is raised to the hard one at start;
# - /metrics and keybrokerctl status show connections, refusals by reason,
#   upstream connections and calls pending inside curl.
use v5.36;
use FindBin;
use lib "$FindBin::Bin/lib";
use KB;
use Test::More;
use Time::HiRes qw(time sleep);

my %keys = ('oai-key' => fixture_secret('oai'), 'anth-key' => fixture_secret('anth'));
my $mock = start_mock();

# No team limits here: what is measured is the connection path, not quotas.
sub config_for($mock, %agent) {
        my $cfg = standard_config(mock => $mock);
        $cfg->{'team:ops'} = { users => '0', models => '*' };
        $cfg->{agent} = \%agent;
        return $cfg;
}

my $STREAM = '{"model":"gpt-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}';

# kb-bench burst: N connections at once, each one request read to its end.
# Returns the summary line's figures and the per-connection records.
sub burst($broker, %o) {
        my $dump = KB::scratch_dir() . '/burst.jsonl';
        my @cmd = ($KB::KB_BENCH, 'burst', '--unix-socket', $broker->socket, '--connections', $o{n},
                   '--setup-timeout', $o{timeout} // 60, '--dump', $dump);
        push @cmd, '--body', $o{body} // $STREAM unless $o{get};
        push @cmd, '--path', $o{path} if $o{path};
        push @cmd, map { ('--header', $_) } @{$o{headers} // []};
        my $r = run_cmd(\@cmd, timeout => ($o{timeout} // 60) + 30);
        my ($line) = $r->{stdout} =~ /^(BURST .*)$/m;
        diag("kb-bench burst: exit $r->{exit}: $r->{stdout} $r->{stderr}") unless $line;
        my %f = ($line // '') =~ /(\S+)=(\S+)/g;
        my @conns = map { json_decode($_) } grep { length } split /\n/, slurp($dump) // '';
        note($line // 'no BURST line');
        return (\%f, \@conns);
}

sub metric($broker, $name, $labels = '') {
        my $res = req($broker->dir . '/admin.sock', path => '/metrics');
        my ($v) = ($res->{body} // '') =~ /^\Q$name\E(?:\{\Q$labels\E\})? (\S+)$/m;
        return $v;
}

sub status_json($broker) {
        return req($broker->dir . '/admin.sock', path => '/status')->{json} // {};
}

# Slow streams: 40 events 50 ms apart, about 2 s each.
my @SLOW = ('x-mock-event-delay-ms: 50', 'x-mock-output-tokens: 40');

sub check_streams_flow($broker, $what) {
        my ($f, $conns) = burst($broker, n => 50, headers => \@SLOW);
        is($f->{'2xx'}, 50, "$what: 50 concurrent streams answered 200");
        is($f->{no_status} . '/' . $f->{incomplete}, '0/0', "$what: none without a status line, none cut short");
        is($f->{all_first_before_any_end}, 1,
           "$what: every stream's first event came before any stream ended "
           . "(first events by $f->{first_max_ms} ms, first end at $f->{end_min_ms} ms)");
        is(metric($broker, 'keybroker_upstream_calls_pending'), 0, "$what: no call left pending inside curl");
}

# ------------------------------------------------------------ no queueing behind streams
subtest 'cold broker: 50 concurrent streams flow at once; again after the provider restarted' => sub {
        my $b = start_broker(config => config_for($mock), keys => \%keys);
        check_streams_flow($b, 'cold broker');
        my $open = metric($b, 'keybroker_upstream_connections');
        cmp_ok($open, '>=', 2, "upstream connections opened in parallel, kept for reuse ($open)");

        # The provider goes away and comes back on the same port: every
        # connection the broker keeps is dead now.
        my $port = $mock->{port};
        $mock->stop;
        $mock = start_mock(port => $port);
        check_streams_flow($b, 'after the provider restarted');

        my @ok = $b->journal({ MESSAGE_ID => $KB::MID_REQUEST, KEYBROKER_OUTCOME => 'ok' });
        is(scalar(@ok), 100, 'each of the 100 streams journaled ok');
        is($b->stop, 0, 'broker exits 0') or diag($b->log);
};

# Thousands of streams held at once, each with its provider socket: the loop
# must keep serving them and keep accepting. (With one loop source per
# socket, sd-event's one-source-per-pass made each pass cost O(streams):
# past ~3,000 the loop spent a core in epoll_wait and accepted a batch of
# connections every few seconds.)
subtest '4,000 streams held at once: every first event before any stream ends' => sub {
        my $b = start_broker(config => config_for($mock, max_connections => 5000, max_connections_per_uid => 5000),
                             keys => \%keys);
        plan skip_all => 'thousands of streams under valgrind' if (slurp('/proc/' . $b->pid . '/maps') // '') =~ /vgpreload/;
        my ($f) = burst($b, n => 4000, timeout => 90,
                        headers => ['x-mock-event-delay-ms: 1000', 'x-mock-output-tokens: 15']);
        is($f->{'2xx'}, 4000, '4,000 concurrent streams answered 200');
        is($f->{no_status} . '/' . $f->{incomplete}, '0/0', 'none without a status line, none cut short');
        is($f->{all_first_before_any_end}, 1,
           "every first event came before any stream ended (first events by $f->{first_max_ms} ms, "
           . "first end at $f->{end_min_ms} ms)");
        is($b->stop, 0, 'broker exits 0') or diag($b->log);
};

# ------------------------------------------------------------ refusals
subtest 'flood: 2,000 connections against max_connections = 100, every one answered' => sub {
        my $b = start_broker(config => config_for($mock, max_connections => 100, max_connections_per_uid => 5000),
                             keys => \%keys);
        my $rss0 = proc_rss_kb($b->pid);
        # Each admitted stream lasts 3 s, longer than the flood takes to arrive.
        my ($f, $conns) = burst($b, n => 2000, headers => ['x-mock-event-delay-ms: 100', 'x-mock-output-tokens: 30'],
                                timeout => 90);
        my $rss1 = proc_rss_kb($b->pid);
        is($f->{open_failed} . '/' . $f->{no_status}, '0/0', 'all 2,000 connected and every one got a status line');
        is($f->{'2xx'} + $f->{'5xx'}, 2000, '... each a 200 or a 503');
        cmp_ok($f->{'2xx'}, '>=', 100, "the admitted streams were served ($f->{'2xx'})");
        my @ok = grep { $_->{status} == 200 } @$conns;
        is(scalar(grep { $_->{end_ms} > 0 && $_->{body} =~ /^data: / } @ok), scalar(@ok),
           '... each to its end');
        my @refused = grep { $_->{status} == 503 } @$conns;
        my @shaped = grep {
                my $j = json_decode($_->{body});
                $j && ($j->{error}{code} // '') eq 'too_many_connections'
                   && ($j->{error}{message} // '') =~ /max_connections = 100\b/
        } @refused;
        is(scalar(@shaped), scalar(@refused),
           '... every 503 is too_many_connections in the OpenAI shape, naming max_connections = 100')
                or diag(explain([ map { $_->{body} } @refused[0 .. 2] ]));
        SKIP: {
                skip("RSS not meaningful under ASan or valgrind ($rss0 -> $rss1 KiB)", 1)
                        if KB::under_memory_tool($b->pid);
                cmp_ok($rss1 - $rss0, '<', 16 * 1024, "RSS bounded under the flood ($rss0 -> $rss1 KiB)");
        }
        is(metric($b, 'keybroker_connections_refused_total', 'reason="max_connections"'), scalar(@refused),
           '/metrics counts each refusal under reason max_connections');
        ok(wait_until(10, sub { (metric($b, 'keybroker_connections_refusing') // -1) == 0 }),
           'no refusal left lingering');
        my $res = req($b, path => '/v1/chat/completions', json => { model => 'gpt-mini', messages => [] });
        is($res->{status}, 200, 'the broker serves on after the flood');
        ok($b->alive, 'broker alive');
        is($b->stop, 0, 'broker exits 0') or diag($b->log);
};

subtest 'max_connections_per_uid: the 503 names the cap, in the shape of the path asked for' => sub {
        my $b = start_broker(config => config_for($mock, max_connections_per_uid => 2), keys => \%keys);
        my @held;
        for (1 .. 2) {
                my $c = raw_connect($b);
                $c->send(http_request('GET', '/v1/keybroker/whoami'));
                my $res = $c->read_response(timeout => 10);
                is($res && $res->{status}, 200, 'uid 0 connection served');
                push @held, $c;
        }
        my $res = req($b, path => '/v1/chat/completions', json => { model => 'gpt-mini', messages => [] });
        check_openai_error($res, 503, 'too_many_connections', 'third connection of uid 0: 503 (OpenAI shape)');
        like($res->{json}{error}{message} // '', qr/uid 0: max_connections_per_uid = 2 reached/,
             '... naming the uid, the cap and its value');
        $res = req($b, path => '/v1/messages', headers => ['anthropic-version' => '2023-06-01'],
                   json => { model => 'claude-haiku', max_tokens => 5, messages => [] });
        check_anthropic_error($res, 503, 'too_many_connections', 'on /v1/messages: 503 in the Anthropic shape');
        like($res->{json}{error}{message} // '', qr/max_connections_per_uid = 2/, '... naming the cap');

        # A refused client that has not sent its request yet is still answered.
        my $c = raw_connect($b);
        my $late = $c->read_response(timeout => 5);
        is($late && $late->{status}, 503, 'a refused connection that sends nothing still gets its 503');
        ok($c->wait_closed(5), '... and is closed');

        is(metric($b, 'keybroker_connections_refused_total', 'reason="max_connections_per_uid"'), 3,
           '/metrics counts 3 refusals under max_connections_per_uid');
        $res = req($b, path => '/v1/keybroker/whoami', uid => 1001);
        is($res->{status}, 200, 'another uid is served meanwhile');
        $_->close for @held;
        is($b->stop, 0, 'broker exits 0') or diag($b->log);
};

# ------------------------------------------------------------ out of file descriptors
subtest 'out of file descriptors: 503 broker_overloaded, the route not blamed' => sub {
        my $b = start_broker(config => config_for($mock), keys => \%keys,
                             wrap => ['prlimit', '--nofile=48:48', '--']);
        like($b->log, qr/file descriptor limit 48\b.*below/, 'start-up log names the limit and says it is short');

        # About 20 fds are the daemon's own and each stream takes two: eight
        # 4-second streams leave a handful, which a burst of 40 overruns.
        my $dump = KB::scratch_dir() . '/held.jsonl';
        my $held = KB::spawn(cmd => [$KB::KB_BENCH, 'burst', '--unix-socket', $b->socket, '--connections', 8,
                                     '--body', $STREAM, '--header', 'x-mock-event-delay-ms: 100',
                                     '--header', 'x-mock-output-tokens: 40', '--setup-timeout', 30,
                                     '--dump', $dump],
                             output => KB::scratch_dir() . '/held.out', name => 'kb-bench');
        ok(wait_until(10, sub { (metric($b, 'keybroker_upstream_connections') // 0) >= 8 }),
           'eight streams held, each on its own upstream connection');
        my ($f, $conns) = burst($b, n => 40, headers => \@SLOW);
        is($f->{no_status}, 0, 'every one of 40 more concurrent streams got a status line');
        my @bad = grep { $_->{status} != 200 } @$conns;
        cmp_ok(scalar(@bad), '>', 0, scalar(@bad) . ' of them were turned away');
        my @overloaded = grep {
                my $j = json_decode($_->{body});
                $_->{status} == 503 && $j && ($j->{error}{code} // '') eq 'broker_overloaded'
                        && ($j->{error}{message} // '') =~ /out of file descriptors/
        } @bad;
        is(scalar(@overloaded), scalar(@bad), '... each with 503 broker_overloaded, "out of file descriptors"')
                or diag(explain([ map { "$_->{status} $_->{body}" } @bad[0 .. 2] ]));
        ok(defined KB::wait_pid($held, 30), 'the held streams ended');
        my @first = map { json_decode($_) } grep { length } split /\n/, slurp($dump) // '';
        is(scalar(grep { $_->{status} == 200 && $_->{end_ms} > 0 && $_->{body} =~ /^data: / } @first), 8,
           '... each served to its end meanwhile');

        my @rec = $b->journal({ MESSAGE_ID => $KB::MID_REQUEST, KEYBROKER_OUTCOME => 'broker_overloaded' });
        cmp_ok(scalar(@rec), '>', 0,
               scalar(@rec) . ' calls that could not open an upstream socket are journaled as broker_overloaded');
        is($rec[0]{KEYBROKER_STATUS}, 503, '... with status 503') if @rec;
        is($rec[0]{PRIORITY}, 4, '... at warning priority') if @rec;
        my $st = status_json($b);
        cmp_ok($st->{refused}{out_of_fds} // 0, '>', 0,
               "connections accepted only to be told so are counted ($st->{refused}{out_of_fds})");
        is($st->{fds}{limit}, 48, '/status shows the fd limit');
        like($b->log, qr/out of file descriptors.*: connections are answered 503 broker_overloaded/,
             'the shortage is logged (no request record exists for a connection refused at accept)');
        is(metric($b, 'keybroker_circuit_state', 'route="oai"'), 0, "the route's circuit stayed closed");

        my $res = req($b, path => '/v1/chat/completions', json => { model => 'gpt-mini', messages => [] });
        is($res->{status}, 200, 'once fds are free again, calls go through');
        is($b->stop, 0, 'broker exits 0') or diag($b->log);
};

subtest 'the soft RLIMIT_NOFILE is raised to the hard limit at start' => sub {
        my $b = start_broker(config => config_for($mock), keys => \%keys,
                             wrap => ['prlimit', '--nofile=256:4096', '--']);
        ok(wait_until(5, sub { $b->log =~ /file descriptor limit 4096 \(soft limit was 256\)/ }),
           'logged: file descriptor limit 4096 (soft limit was 256)') or diag($b->log);
        is(status_json($b)->{fds}{limit}, 4096, '/status: fds.limit 4096');
        is(metric($b, 'keybroker_max_fds'), 4096, '/metrics: keybroker_max_fds 4096');
        is($b->stop, 0, 'broker exits 0') or diag($b->log);
};

# ------------------------------------------------------------ visible
subtest 'keybrokerctl status and /metrics show capacity' => sub {
        my $b = start_broker(config => config_for($mock, max_connections => 3), keys => \%keys);
        my @held = map { my $c = raw_connect($b); $c->send(http_request('GET', '/v1/keybroker/whoami'));
                         $c->read_response(timeout => 10); $c } 1 .. 3;
        my $res = req($b, path => '/v1/models');
        is($res->{status}, 503, 'fourth connection refused');
        my $r = run_cmd([$KB::BUILD . '/keybrokerctl', '--admin-socket', $b->dir . '/admin.sock', 'status']);
        like($r->{stdout}, qr/^connections:\s+3$/m, 'status: connections 3');
        like($r->{stdout}, qr/^refused:\s+max_connections 1, max_connections_per_uid 0, out_of_fds 0, identity 0$/m,
             'status: refusals by reason');
        like($r->{stdout}, qr/^upstream:\s+calls 0, connections \d+, connecting 0, pending 0$/m,
             'status: upstream calls, connections, connecting, pending');
        like($r->{stdout}, qr/^file descriptors:\s+open \d+, limit \d+$/m, 'status: file descriptors');
        my $m = req($b->dir . '/admin.sock', path => '/metrics')->{body} // '';
        for my $fam (qw(keybroker_connections keybroker_connections_refusing keybroker_connections_refused_total
                        keybroker_upstream_connections keybroker_upstream_calls_connecting
                        keybroker_upstream_calls_pending keybroker_open_fds keybroker_max_fds)) {
                like($m, qr/^# TYPE $fam (gauge|counter)$/m, "/metrics has $fam");
        }
        $_->close for @held;
        is($b->stop, 0, 'broker exits 0') or diag($b->log);
};

done_testing;
