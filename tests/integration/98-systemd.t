#!/usr/bin/perl
# keybrokerd as systemd runs it, with the real protocols and a stand-in for
# the service manager:
# - socket activation: both sockets passed by systemd-socket-activate, by
#   name ("api", "admin"), each served, neither [agent] path created;
# - the notify protocol through our own NOTIFY_SOCKET (a datagram socket,
#   as PID 1 has): READY=1 once serving, STATUS= with requests in flight and
#   req/s, WATCHDOG=1 at half of WATCHDOG_USEC (only when WATCHDOG_PID is
#   the daemon), RELOADING=1/READY=1 around SIGHUP, STOPPING=1 on SIGTERM;
# - the drain: a stream in flight at SIGTERM still completes when it fits in
#   drain_timeout ("stopping" says 1 in flight, "stopped" 0 cut), and is cut
#   when it does not ("stopped" says 1 cut; its record: stream_interrupted).
use v5.36;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Socket::UNIX;
use Socket qw(SOCK_DGRAM);
use Time::HiRes qw(time sleep);
use KB;

ensure_journald();
my %keys = ('oai-key' => fixture_secret('oai'), 'anth-key' => fixture_secret('anth'));
my $mock = start_mock(require_key => [values %keys]);

# ---------------------------------------------------------------- notify receiver

# What the service manager would receive. A child process reads the socket
# at once, like PID 1 does: a datagram socket holds only
# net.unix.max_dgram_qlen (often 10) unread messages, and a full one would
# block the daemon's sd_notify().
package Notify {
        use v5.36;
        use Time::HiRes qw(time sleep);
        use POSIX ();

        sub new($class, $dir) {
                my $path = "$dir/notify.sock";
                my $log = "$dir/notify.log";
                my $s = IO::Socket::UNIX->new(Type => Socket::SOCK_DGRAM, Local => $path)
                        or die "notify socket $path: $!";
                open(my $out, '>', $log) or die "$log: $!";
                my $pid = fork // die "fork: $!";
                if (!$pid) {
                        $out->autoflush(1);
                        while (defined $s->recv(my $d, 65536, 0)) {
                                my $t = time;
                                print $out "$t\t$_\n" for grep { length } split /\n/, $d;
                        }
                        POSIX::_exit(0);
                }
                close $out;
                close $s;
                return bless { path => $path, log => $log, pid => $pid, owner => $$ }, $class;
        }

        # Every assignment received so far: [time, "NAME=value"], in order.
        sub poll($self) {
                my $t = KB::slurp($self->{log}) // '';
                return [map { [split /\t/, $_, 2] } grep { /\t/ } split /\n/, $t];
        }

        # Index of the first message matching $re at or after index $from,
        # waiting up to $timeout s; undef if none came.
        sub wait_for($self, $re, $timeout = 10, $from = 0) {
                my $end = time + $timeout;
                while (1) {
                        my $m = $self->poll;
                        for my $i ($from .. $#$m) {
                                return $i if $m->[$i][1] =~ $re;
                        }
                        return undef if time > $end;
                        sleep 0.05;
                }
        }

        sub all($self, $re) { grep { $_->[1] =~ $re } @{$self->poll} }
        sub text($self) { join("\n", map { $_->[1] } @{$self->poll}) }

        sub DESTROY($self) {
                return unless $self->{owner} == $$ && $self->{pid};
                kill 'KILL', $self->{pid};
                waitpid($self->{pid}, 0);
        }
}

sub stream_req($broker, %o) {
        my $c = raw_connect($broker);
        $c->send(http_request('POST', '/v1/chat/completions',
                              json => { model => 'gpt-mini', stream => JSON::PP::true,
                                        messages => [{ role => 'user', content => 'x' }] },
                              headers => ['x-mock-event-delay-ms' => $o{delay_ms},
                                          'x-mock-output-tokens' => $o{tokens}]));
        my $res = $c->read_head(timeout => 10);
        return ($c, $res);
}

# Starts a broker with NOTIFY_SOCKET (and a watchdog) in its environment.
# watchdog_pid: 'self' exports the daemon's own pid (as PID 1 does), a
# number exports that one.
sub start_notified(%o) {
        my $n = Notify->new(tmpdir('notify'));
        local $ENV{NOTIFY_SOCKET} = $n->{path};
        local $ENV{WATCHDOG_USEC} = $o{watchdog_usec} if $o{watchdog_usec};
        my $pid = $o{watchdog_pid} // 'self';
        my $wrap = $pid eq 'self' ? 'WATCHDOG_PID=$$; export WATCHDOG_PID; exec "$@"'
                                  : "WATCHDOG_PID=$pid; export WATCHDOG_PID; exec \"\$@\"";
        my $cfg = standard_config(mock => $mock);
        $cfg->{agent} = $o{agent} // {};
        my $b = start_broker(config => $cfg, keys => \%keys, wrap => ['/bin/sh', '-c', $wrap, 'sh']);
        return ($b, $n);
}

# ---------------------------------------------------------------- activation

subtest 'socket activation: the fds "api" and "admin" by name' => sub {
        my $activate = (grep { -x } qw(/usr/bin/systemd-socket-activate /lib/systemd/systemd-socket-activate))[0];
        plan skip_all => 'systemd-socket-activate not installed' unless $activate;
        my $elsewhere = tmpdir('unused');
        my $cfg = standard_config(mock => $mock);
        $cfg->{agent} = { listen => "$elsewhere/api.sock", admin => "$elsewhere/admin.sock" };
        my $broker = start_broker(config => $cfg, keys => \%keys,
                                  wrap => [$activate, '-l', '@DIR@/act-api.sock', '-l', '@DIR@/act-admin.sock',
                                           '--fdname=api:admin'],
                                  socket => '@DIR@/act-api.sock');
        my $admin_sock = "$broker->{dir}/act-admin.sock";

        my $res = req($broker, path => '/v1/chat/completions',
                      json => { model => 'gpt-mini', messages => [{ role => 'user', content => 'hi' }] });
        is($res->{status}, 200, 'the api fd serves apps') or diag(KB::show_res($res));
        is($res->{json}{usage}{completion_tokens}, 7, 'the provider answered');

        my $st = req($admin_sock, path => '/status');
        is($st->{status}, 200, 'the admin fd serves the admin API') or diag(KB::show_res($st));
        is($st->{json}{version}, '0.1.0', 'GET /status answered by this keybrokerd') or diag($st->{body});
        my $wrong = req($admin_sock, path => '/v1/chat/completions',
                        json => { model => 'gpt-mini', messages => [{ role => 'user', content => 'x' }] });
        isnt($wrong->{status}, 200, 'the admin fd is not the api fd');

        ok(!-e "$elsewhere/api.sock", '[agent] listen is not created');
        ok(!-e "$elsewhere/admin.sock", '[agent] admin is not created');
        like($broker->log, qr/socket-activated fd "api", admin on the socket-activated fd "admin"/,
             'the broker says it serves both activated fds');

        is(KB::status_text($broker->stop), 'exit 0', 'SIGTERM: clean exit');
        ok(-S "$broker->{dir}/act-api.sock" && -S $admin_sock, 'activated sockets are not ours to remove');
};

# ---------------------------------------------------------------- notify

subtest 'notify: READY, STATUS, WATCHDOG, RELOADING, STOPPING in order; drain completes a stream' => sub {
        my ($broker, $n) = start_notified(watchdog_usec => 600_000, agent => { drain_timeout => '15s' });

        my $ready = $n->wait_for(qr/^READY=1$/);
        ok(defined $ready, 'READY=1') or diag($broker->log);
        is($ready, 0, 'READY=1 is the first message: nothing before serving')
                or diag($n->text);
        my $status = $n->wait_for(qr/^STATUS=/, 5);
        ok(defined $status && $status > ($ready // -1), 'STATUS= after READY=1');
        like($n->poll->[$status // 0][1], qr/^STATUS=Serving: 0 request\(s\) in flight, [\d.]+ req\/s, 0 served/,
             'STATUS says serving, nothing in flight');
        my @started = $broker->journal_wait({ MESSAGE_ID => $MID_LIFECYCLE, KEYBROKER_EVENT => 'started' });
        is(scalar(@started), 1, '"started" journaled');

        # Watchdog: WATCHDOG_USEC=0.6 s, so a ping every 0.3 s.
        my $t0 = time;
        sleep 1.6;
        my @wd = grep { $_->[0] >= $t0 && $_->[0] <= $t0 + 1.6 } $n->all(qr/^WATCHDOG=1$/);
        cmp_ok(scalar(@wd), '>=', 3, scalar(@wd) . ' WATCHDOG=1 pings in 1.6 s');
        cmp_ok(scalar(@wd), '<=', 8, 'not a flood');
        my @gaps = map { $wd[$_][0] - $wd[$_ - 1][0] } 1 .. $#wd;
        ok(!grep({ $_ > 0.55 } @gaps), 'no gap near the 0.6 s deadline: ' . join(' ', map { sprintf '%.2f', $_ } @gaps));

        # A few quick calls, then a slow stream: STATUS follows.
        for (1 .. 3) {
                my $r = req($broker, path => '/v1/chat/completions',
                            json => { model => 'gpt-mini', messages => [{ role => 'user', content => 'x' }] });
                is($r->{status}, 200, "call $_");
        }
        my $mark = scalar @{$n->poll};
        my ($c, $head) = stream_req($broker, delay_ms => 150, tokens => 20); # about 3 s
        ok($head && $head->{status} == 200, 'a slow stream started');
        my $busy = $n->wait_for(qr/^STATUS=Serving: 1 request\(s\) in flight, [\d.]+ req\/s, 3 served/, 3, $mark);
        ok(defined $busy, 'STATUS shows the request in flight and the 3 served') or diag($n->text);
        my @rate = map { /([\d.]+) req\/s/ ? $1 : () } map { $_->[1] } $n->all(qr/^STATUS=Serving/);
        ok((grep { $_ > 0 } @rate), 'and a non-zero req/s: ' . join(' ', @rate));

        # SIGHUP: a reload is announced and ends with READY=1 again.
        $mark = scalar @{$n->poll};
        kill 'HUP', $broker->pid;
        my $reloading = $n->wait_for(qr/^RELOADING=1$/, 5, $mark);
        ok(defined $reloading, 'RELOADING=1 on SIGHUP');
        ok(defined $n->wait_for(qr/^READY=1$/, 5, ($reloading // $mark) + 1), 'then READY=1');

        # SIGTERM with the stream in flight: it still completes.
        $mark = scalar @{$n->poll};
        kill 'TERM', $broker->pid;
        my $stopping = $n->wait_for(qr/^STOPPING=1$/, 5, $mark);
        ok(defined $stopping, 'STOPPING=1 on SIGTERM');
        ok(defined $n->wait_for(qr/^STATUS=Stopping: 1 request\(s\) in flight/, 3, $mark),
           'STATUS says what is being drained');
        ok(!eval { raw_connect($broker) }, 'new connections are refused while draining');
        my $res = $c->read_body($head, timeout => 15);
        ok($res->{complete}, 'the stream in flight completed');
        like($res->{body}, qr/data: \[DONE\]/, 'to its last event');
        my $st = $broker->stop('TERM', 15);
        is(KB::status_text($st), 'exit 0', 'then keybrokerd exits 0') or diag($broker->log);

        my @order = map { $n->wait_for($_, 0) } qr/^READY=1$/, qr/^STATUS=/, qr/^WATCHDOG=1$/, qr/^STOPPING=1$/;
        ok(!grep({ !defined } @order) && $order[0] < $order[1] && $order[1] < $order[2] && $order[2] < $order[3],
           'READY=1, STATUS=, WATCHDOG=1, STOPPING=1 in this order') or diag($n->text);
        ok(!grep({ $_->[1] eq 'READY=1' } @{$n->poll}[($stopping // 0) + 1 .. $#{$n->poll}]),
           'no READY=1 after STOPPING=1 (WATCHDOG=1 goes on while draining)');
        my @stopping = $broker->journal_wait({ MESSAGE_ID => $MID_LIFECYCLE, KEYBROKER_EVENT => 'stopping' });
        is($stopping[0]{KEYBROKER_IN_FLIGHT}, 1, '"stopping" journaled with 1 in flight');
        my @stopped = $broker->journal_wait({ MESSAGE_ID => $MID_LIFECYCLE, KEYBROKER_EVENT => 'stopped' });
        is(scalar(@stopped), 1, '"stopped" journaled');
        is($stopped[0]{KEYBROKER_IN_FLIGHT}, 0, 'none cut');
        my @req = $broker->journal_wait({ MESSAGE_ID => $MID_REQUEST,
                                          KEYBROKER_REQUEST_ID => $head->{headers}{'x-keybroker-request-id'} // 'none' });
        is($req[0]{KEYBROKER_OUTCOME}, 'ok', 'the drained stream was journaled ok');
};

subtest 'notify: no watchdog pings when WATCHDOG_PID is another process' => sub {
        my ($broker, $n) = start_notified(watchdog_usec => 300_000, watchdog_pid => 1);
        ok(defined $n->wait_for(qr/^READY=1$/), 'READY=1');
        sleep 1;
        is(scalar($n->all(qr/^WATCHDOG=/)), 0, 'no WATCHDOG=1 in 1 s (the watchdog is not ours)');
        is(KB::status_text($broker->stop), 'exit 0', 'exit 0');
};

subtest 'notify: a broker that cannot start says why' => sub {
        my $n = Notify->new(tmpdir('notify'));
        my $d = tmpdir('bad');
        spew("$d/bad.conf", "[agent]\nno_such_key = 1\n");
        local $ENV{NOTIFY_SOCKET} = $n->{path};
        my $r = run_cmd([$KB::KEYBROKERD, '--config', "$d/bad.conf"]);
        is($r->{exit}, 1, 'exit 1');
        ok(defined $n->wait_for(qr/^STATUS=Failed to start: .*no_such_key/, 2), 'STATUS= names the problem')
                or diag($n->text);
        ok(defined $n->wait_for(qr/^ERRNO=\d+$/, 1), 'ERRNO= set');
        ok(!defined $n->wait_for(qr/^READY=1$/, 0), 'never READY=1');
};

# ---------------------------------------------------------------- drain timeout

subtest 'drain_timeout passes: the stream is cut, journaled, counted' => sub {
        my ($broker, $n) = start_notified(agent => { drain_timeout => '1s' });
        ok(defined $n->wait_for(qr/^READY=1$/), 'READY=1');
        my ($c, $head) = stream_req($broker, delay_ms => 500, tokens => 60); # 30 s
        ok($head && $head->{status} == 200, 'a 30 s stream started');
        my $rid = $head->{headers}{'x-keybroker-request-id'} // 'none';
        my $first = $c->read_body($head, timeout => 5, until => sub { $_[0] =~ /data: \{/ });
        ok($first->{stopped}, 'its first event arrived');

        my $t0 = time;
        my $st = $broker->stop('TERM', 15);
        my $dt = time - $t0;
        is(KB::status_text($st), 'exit 0', 'exit 0') or diag($broker->log);
        cmp_ok($dt, '<', 5, sprintf('gone %.1f s after SIGTERM (drain_timeout 1 s)', $dt));
        ok(defined $n->wait_for(qr/^STOPPING=1$/, 0), 'STOPPING=1 was sent');

        my $res = $c->read_body($first, timeout => 5);
        ok(!$res->{timed_out}, 'the app is not left hanging');
        like($res->{body}, qr/error/i, 'the app is told the stream was cut');

        my @stopping = $broker->journal_wait({ MESSAGE_ID => $MID_LIFECYCLE, KEYBROKER_EVENT => 'stopping' });
        is($stopping[0]{KEYBROKER_IN_FLIGHT}, 1, '"stopping": 1 in flight');
        my @stopped = $broker->journal_wait({ MESSAGE_ID => $MID_LIFECYCLE, KEYBROKER_EVENT => 'stopped' });
        is(scalar(@stopped), 1, 'one "stopped" record');
        is($stopped[0]{KEYBROKER_IN_FLIGHT}, 1, '"stopped": 1 cut');
        like($stopped[0]{MESSAGE}, qr/cut/, 'its message says requests were cut');
        my @req = $broker->journal_wait({ MESSAGE_ID => $MID_REQUEST, KEYBROKER_REQUEST_ID => $rid });
        is(scalar(@req), 1, 'the cut request has its record');
        is($req[0]{KEYBROKER_OUTCOME}, 'stream_interrupted', 'outcome stream_interrupted');
        like($broker->log, qr/cutting 1 request\(s\) still in flight/, 'and the log says so');
};

subtest 'a second SIGTERM stops at once, still journaling the cut' => sub {
        my ($broker, $n) = start_notified(agent => { drain_timeout => '30s' });
        my ($c, $head) = stream_req($broker, delay_ms => 500, tokens => 60);
        ok($head && $head->{status} == 200, 'a 30 s stream started');
        my $rid = $head->{headers}{'x-keybroker-request-id'} // 'none';
        kill 'TERM', $broker->pid;
        ok(defined $n->wait_for(qr/^STOPPING=1$/, 5), 'STOPPING=1');
        my $t0 = time;
        my $st = $broker->stop('TERM', 10);
        is(KB::status_text($st), 'exit 0', 'exit 0');
        cmp_ok(time - $t0, '<', 5, 'without waiting for drain_timeout');
        my @stopped = $broker->journal_wait({ MESSAGE_ID => $MID_LIFECYCLE, KEYBROKER_EVENT => 'stopped' });
        is($stopped[0]{KEYBROKER_IN_FLIGHT}, 1, '"stopped": 1 cut');
        my @req = $broker->journal_wait({ MESSAGE_ID => $MID_REQUEST, KEYBROKER_REQUEST_ID => $rid });
        is($req[0]{KEYBROKER_OUTCOME}, 'stream_interrupted', 'its record: stream_interrupted');
};

done_testing;
