#!/usr/bin/env perl
# The quota store connection: keybrokerd reaches a real redis-server (TCP,
# AUTH with the password from its file, a database number; or a Unix
# socket), holds a lease there and counts the brokers that do; a store that
# goes away is journaled offline within about a second and back when it
# returns; a wrong password or an unreachable store is offline with the
# reason, never a crash, and calls keep being served meanwhile. Bad settings
# are --check-config errors with FILE:LINE.
#
# What is not built yet (issue 15): admission against the store. Limits are
# still counted per host.
use v5.36;
use FindBin;
use lib "$FindBin::Bin/lib";
use KB;
use Test::More;
use Time::HiRes qw(time sleep);

my $MID_STORE = 'cfe4b02a7d4b41c5a0bb51ebad71f6d3';
my $CTL = "$KB::BUILD/keybrokerctl";
ensure_journald();
my %keys = ('oai-key' => fixture_secret('oai'), 'anth-key' => fixture_secret('anth'));
my $mock = start_mock();

sub broker_with(%agent) {
        my $cfg = standard_config(mock => $mock);
        $cfg->{agent} = \%agent;
        return start_broker(config => $cfg, keys => \%keys);
}

sub status($b) { req($b->dir . '/admin.sock', path => '/status')->{json} // {} }

sub store_records($b, $event) {
        return $b->journal({ MESSAGE_ID => $MID_STORE, KEYBROKER_EVENT => $event });
}

subtest 'TCP with AUTH and a database: connected, a lease, brokers counted' => sub {
        my $pwfile = tmpdir('pw') . '/redis.pw';
        my $pw = KB::random_hex(16);
        spew($pwfile, "$pw\n", 0600);
        my $redis = start_redis(password => $pw);
        my %agent = (quota_store => "$redis->{url}/3", quota_store_password => $pwfile,
                     quota_store_prefix => 'kbt85:');
        my $b1 = broker_with(%agent);
        ok(wait_until(5, sub { (status($b1)->{quota_store}{state} // '') eq 'connected' }), 'broker 1 connected')
                or diag(explain(status($b1)), $b1->log);
        my @rec = $b1->journal_wait({ MESSAGE_ID => $MID_STORE, KEYBROKER_EVENT => 'connected' }, 5);
        is(scalar(@rec), 1, 'journaled: connected');
        is($rec[0]{KEYBROKER_STORE}, "$redis->{url}/3", '... naming the store') if @rec;

        my $r = run_cmd(['redis-cli', '-p', $redis->{port}, '-a', $pw, '--no-auth-warning', '-n', 3, 'KEYS', 'kbt85:*']);
        like($r->{stdout}, qr/^kbt85:lease:[0-9a-f]{32}\.[0-9a-f]{16}\.1$/m, "a lease under the prefix (instance.run.connection), in database 3");
        like($r->{stdout}, qr/^kbt85:brokers$/m, 'and the brokers set');

        my $b2 = broker_with(%agent);
        ok(wait_until(5, sub { (status($b2)->{quota_store}{brokers} // 0) == 2 }), 'a second broker: 2 brokers seen');
        ok(wait_until(5, sub { (status($b1)->{quota_store}{brokers} // 0) == 2 }), '... by the first one too');
        my $st = status($b1)->{quota_store};
        cmp_ok($st->{rtt_p50_ms}, '>', 0, "round trips measured (p50 $st->{rtt_p50_ms} ms)");
        my $ctl = run_cmd([$CTL, '--admin-socket', $b1->dir . '/admin.sock', 'status']);
        like($ctl->{stdout}, qr/^quota store:\s+connected to \Q$redis->{url}\E\/3 since .*, 2 broker\(s\), rtt p50/m,
             'keybrokerctl status shows it');
        my $m = req($b1->dir . '/admin.sock', path => '/metrics')->{body} // '';
        like($m, qr/^keybroker_quota_store_up 1$/m, '/metrics: up');
        like($m, qr/^keybroker_quota_store_brokers 2$/m, '/metrics: 2 brokers');
        unlike($b1->log . $b2->log, qr/\Q$pw\E/, 'the password is in no log');
        unlike(join(' ', @{$b1->{cmd}}), qr/\Q$pw\E/, '... nor on the command line');

        # b2 goes: its lease expires within three heartbeats
        is($b2->stop, 0, 'broker 2 exits 0');
        ok(wait_until(6, sub { (status($b1)->{quota_store}{brokers} // 0) == 1 }), 'its lease expired: 1 broker seen');

        # the store goes away, and comes back
        my $t0 = time;
        stop_redis($redis, 'KILL');
        ok(wait_until(5, sub { (status($b1)->{quota_store}{state} // '') eq 'offline' }), 'offline when Redis dies');
        note(sprintf('noticed within %.2f s', time - $t0));
        @rec = $b1->journal_wait({ MESSAGE_ID => $MID_STORE, KEYBROKER_EVENT => 'offline' }, 5);
        is(scalar(@rec), 1, 'journaled once: offline');
        like($rec[0]{KEYBROKER_REASON} // '', qr/\S/, '... with the reason') if @rec;
        is($rec[0]{PRIORITY}, 4, '... at warning priority') if @rec;
        my $res = req($b1, path => '/v1/chat/completions', json => { model => 'gpt-mini', messages => [] });
        is($res->{status}, 200, 'calls are served while the store is away');
        sleep 2.5;
        is(scalar(store_records($b1, 'offline')), 1, 'retries do not journal the same outage again');

        $redis = start_redis(password => $pw, port => $redis->{port});
        ok(wait_until(5, sub { (status($b1)->{quota_store}{state} // '') eq 'connected' }), 'connected again')
                or diag($b1->log);
        @rec = $b1->journal_wait({ MESSAGE_ID => $MID_STORE, KEYBROKER_EVENT => 'back' }, 5);
        is(scalar(@rec), 1, 'journaled: back');
        cmp_ok(status($b1)->{quota_store}{offline_s}, '>=', 1, 'offline time counted');
        is($b1->stop, 0, 'broker 1 exits 0') or diag($b1->log);
        stop_redis($redis);
};

subtest 'a store that stalls past quota_store_timeout: offline at once, back when it answers' => sub {
        my $redis = start_redis(args => ['--enable-debug-command', 'yes']);
        my $b = broker_with(quota_store => $redis->{url}, quota_store_timeout => '50ms');
        ok(wait_until(5, sub { (status($b)->{quota_store}{state} // '') eq 'connected' }), 'connected');
        my $stall = KB::spawn(cmd => ['redis-cli', '-p', $redis->{port}, 'DEBUG', 'SLEEP', '2'],
                              output => tmpdir('stall') . '/out', name => 'redis-cli');
        ok(wait_until(3, sub { (status($b)->{quota_store}{state} // '') eq 'offline' }), 'offline while it sleeps');
        like(status($b)->{quota_store}{reason} // '', qr/no reply within 50 ms/, 'the reason: the timeout');
        my $t0 = time;
        my $res = req($b, path => '/v1/chat/completions', json => { model => 'gpt-mini', messages => [] });
        is($res->{status}, 200, 'calls are served meanwhile');
        cmp_ok(time - $t0, '<', 1, 'and not held up by the stalled store');
        ok(wait_until(6, sub { (status($b)->{quota_store}{state} // '') eq 'connected' }), 'back once it answers');
        cmp_ok(status($b)->{quota_store}{timeouts}, '>=', 1, 'the timeout is counted');
        KB::wait_pid($stall, 5);
        is($b->stop, 0, 'broker exits 0');
        stop_redis($redis);
};

subtest 'a Unix socket' => sub {
        my $redis = start_redis(unix => 1);
        my $b = broker_with(quota_store => "unix:$redis->{socket}?db=1");
        ok(wait_until(5, sub { (status($b)->{quota_store}{state} // '') eq 'connected' }), 'connected over the socket')
                or diag(explain(status($b)), $b->log);
        is($b->stop, 0, 'broker exits 0');
        stop_redis($redis);
};

subtest 'TLS: through stunnel on a local socket, to a Redis that speaks only TLS' => sub {
        my $stunnel = (grep { -x } '/usr/bin/stunnel4', '/usr/bin/stunnel')[0];
        plan skip_all => 'stunnel4 is not installed (make deps installs it)' unless $stunnel;
        my $dir = tmpdir('tls');
        my $r = run_cmd(['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', "$dir/key.pem",
                         '-out', "$dir/cert.pem", '-days', '2', '-subj', '/CN=127.0.0.1',
                         '-addext', 'subjectAltName=IP:127.0.0.1']);
        is($r->{exit}, 0, 'a certificate for the store') or diag($r->{stderr});
        my $port = free_port();
        my $redis = KB::spawn(cmd => ['/usr/bin/redis-server', '--port', '0', '--tls-port', $port,
                                      '--tls-cert-file', "$dir/cert.pem", '--tls-key-file', "$dir/key.pem",
                                      '--tls-ca-cert-file', "$dir/cert.pem", '--tls-auth-clients', 'no',
                                      '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', $dir],
                              output => "$dir/redis.log", name => 'redis-server (TLS)');
        ok(wait_until(10, sub { IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port") }), 'Redis listens for TLS only');
        # The README's stunnel client section, as written.
        spew("$dir/stunnel.conf", join('', map { "$_\n" } 'foreground = yes', 'pid =', '[keybroker-redis]',
                                       'client = yes', "accept = $dir/redis-tls.sock", "connect = 127.0.0.1:$port",
                                       "CAfile = $dir/cert.pem", 'verifyChain = yes', 'checkIP = 127.0.0.1'));
        my $st = KB::spawn(cmd => [$stunnel, "$dir/stunnel.conf"], output => "$dir/stunnel.log", name => 'stunnel');
        ok(wait_until(10, sub { -S "$dir/redis-tls.sock" }), 'stunnel listens on its socket') or diag(slurp("$dir/stunnel.log"));
        my $b = broker_with(quota_store => "unix:$dir/redis-tls.sock");
        ok(wait_until(5, sub { (status($b)->{quota_store}{state} // '') eq 'connected' }), 'connected through TLS')
                or diag(explain(status($b)), $b->log, slurp("$dir/stunnel.log"));
        like(slurp("$dir/stunnel.log") // '', qr/Certificate accepted/, 'stunnel verified the store\'s certificate');
        is($b->stop, 0, 'broker exits 0');
        KB::stop_pid($st);
        KB::stop_pid($redis);
};

subtest 'a wrong password, an unreachable store: offline with the reason, calls still served' => sub {
        my $redis = start_redis(password => 'right-' . KB::random_hex(4));
        my $pwfile = tmpdir('pw') . '/wrong.pw';
        spew($pwfile, "wrong\n", 0600);
        my $b = broker_with(quota_store => $redis->{url}, quota_store_password => $pwfile);
        ok(wait_until(5, sub { (status($b)->{quota_store}{state} // '') eq 'offline' }), 'offline');
        like(status($b)->{quota_store}{reason} // '', qr/WRONGPASS|invalid password/i, 'the reason is the AUTH error');
        is(req($b, path => '/v1/chat/completions', json => { model => 'gpt-mini', messages => [] })->{status}, 200,
           'calls are served');
        ok($b->alive, 'no crash');
        is($b->stop, 0, 'broker exits 0');
        stop_redis($redis);

        my $port = free_port();
        $b = broker_with(quota_store => "redis://127.0.0.1:$port");
        ok(wait_until(5, sub { (status($b)->{quota_store}{state} // '') eq 'offline' }), 'nothing listening: offline');
        like(status($b)->{quota_store}{reason} // '', qr/connect/i, '... cannot connect');
        is($b->stop, 0, 'broker exits 0');
};

subtest 'a key of ours with an unexpected type: offline with the reason, back once it is fixed' => sub {
        my $redis = start_redis();
        my $cli = sub (@a) { run_cmd(['redis-cli', '-p', $redis->{port}, @a]) };
        $cli->('SET', 'kbt85w:brokers', 'not a sorted set');
        my $b = broker_with(quota_store => $redis->{url}, quota_store_prefix => 'kbt85w:');
        ok(wait_until(5, sub { (status($b)->{quota_store}{state} // '') eq 'offline' }), 'offline');
        like(status($b)->{quota_store}{reason} // '', qr/WRONGTYPE/, 'the reason is the store\'s WRONGTYPE');
        my @rec = $b->journal_wait({ MESSAGE_ID => $MID_STORE, KEYBROKER_EVENT => 'offline' }, 5);
        like($rec[0]{KEYBROKER_REASON} // '', qr/WRONGTYPE/, 'journaled with it') if @rec;
        is(req($b, path => '/v1/chat/completions', json => { model => 'gpt-mini', messages => [] })->{status}, 200,
           'calls are served');
        $cli->('DEL', 'kbt85w:brokers');
        ok(wait_until(5, sub { (status($b)->{quota_store}{state} // '') eq 'connected' }), 'connected once the key is gone');
        ok($b->alive, 'never a crash');
        is($b->stop, 0, 'broker exits 0');
        stop_redis($redis);
};

subtest 'bad settings are --check-config errors with FILE:LINE' => sub {
        my $dir = tmpdir('badstore');
        for my $case (['quota_store = rediss://10.0.0.1:6379', qr/quota_store.*stunnel/],
                      ['quota_store = redis://redis.example:6379', qr/IP address/],
                      ['quota_store = redis://127.0.0.1', qr/port is required/],
                      ['quota_store = redis://127.0.0.1:99999', qr/PORT/],
                      ['quota_store = redis://127.0.0.1:6379/x', qr/DB/],
                      ['quota_store = unix:relative', qr/absolute/],
                      ['quota_store = unix:/run/r.sock?pw=1', qr/db=N/],
                      ['quota_store_password = /nonexistent/pw', qr/cannot read/],
                      ['quota_store_password = secret-in-config', qr/absolute path/],
                      ['quota_store_timeout = 0', qr/duration/],
                      ['quota_store_bogus = 1', qr/unknown/],
                      ['quota_store_offline = allow', qr/not local or deny/],
                      ['offline_share = 0', qr/share above 0 up to 1/],
                      ['offline_share = 1.5', qr/share above 0 up to 1/],
                      ['offline_share = 150%', qr/share above 0 up to 1/],
                      ['offline_share = half', qr/share above 0 up to 1/],
                      ["[team:t]\nquota_scope = global", qr/not fleet or host/, 'team:t']) {
                my ($line, $why, $section) = @$case;
                $section //= 'agent';
                $line =~ s/^\[team:t\]\n//;
                spew("$dir/k.conf", "[$section]\n$line\n");
                my $r = run_cmd([$KB::KEYBROKERD, '--config', "$dir/k.conf", '--check-config']);
                is($r->{exit}, 1, "$line: exit 1");
                like($r->{stderr}, qr/^\Q$dir\E\/k\.conf:2: .*$why/m, '... FILE:LINE and why') or diag($r->{stderr});
                unlike($r->{stderr}, qr/secret-in-config/, '... never echoing a would-be secret')
                        if $line =~ /secret-in-config/;
        }
};

done_testing;
