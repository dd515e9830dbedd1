#!/usr/bin/env perl
# Fleet-wide quotas: several keybrokerds (own sockets and state dirs, one
# config) share a real redis-server, and a team's limits hold across all of
# them. Admission is one Lua script per call that reserves atomically, so a
# burst spread over three brokers forwards exactly what the limit allows
# (requests_per_minute, tokens_per_day, budget_usd_per_day, max_concurrent);
# settle corrects to the real usage, and the store's day, month and minute
# counters equal what the brokers journaled, also after a store that stalled
# mid-settle, a network that held its replies, or a store that lost its data
# (restarted empty). The max_concurrent slots and reserved tokens of a broker
# killed with calls in flight free when its lease expires (3 s). Without the
# store (unreachable, killed, refusing scripts) a broker admits against its
# own counters with each limit scaled by offline_share (default 1 / the
# brokers last seen), or refuses with 503 when quota_store_offline = deny;
# quota_scope = host keeps a team's limits per host. A delaying TCP proxy
# written here (this kernel has no netem) stands for a slow network.
use v5.36;
use FindBin;
use lib "$FindBin::Bin/lib";
use IO::Select;
use IO::Socket::INET;
use List::Util qw(sum0 min max);
use POSIX qw(floor);
use Socket qw(IPPROTO_TCP TCP_NODELAY);
use Test::More;
use Time::HiRes qw(time sleep);
use KB;

my $MID_STORE = 'cfe4b02a7d4b41c5a0bb51ebad71f6d3';
my $T_START = time;

ensure_journald();
my %keys = ('oai-key' => fixture_secret('oai'), 'anth-key' => fixture_secret('anth'));
my $mock = start_mock(require_key => [values %keys]);
# Debug commands for DEBUG SLEEP (a stalled store); no persistence: a
# restart is an empty store.
my $redis = start_redis(args => ['--enable-debug-command', 'yes']);

my @ANTH = ('anthropic-version' => '2023-06-01');
my %CHAT = (model => 'gpt-mini', messages => [{ role => 'user', content => 'hi' }], max_tokens => 10);
my %MSG = (model => 'claude-haiku', messages => [{ role => 'user', content => 'hi' }], max_tokens => 10);

# ------------------------------------------------------------ helpers

# One config for a fleet: the standard routes (both priced: a call costs
# input + 2 × output µUSD), the given teams (uid 0, every model, chosen by
# X-Keybroker-Team), a quota store under its own prefix.
sub fleet_config(%o) {
        my $cfg = standard_config(mock => $mock);
        delete $cfg->{'team:ops'};
        $cfg->{'route:anth'}{price} = 'claude-3-5-haiku-20241022 input=1 output=2 cached_input=0.5 cache_write=1.25';
        $cfg->{agent} = { quota_store => $o{store} // $redis->{url}, %{$o{agent} // {}} };
        $cfg->{agent}{quota_store_prefix} = $o{prefix} if defined $o{prefix};
        for my $t (keys %{$o{teams}}) {
                $cfg->{"team:$t"} = { users => '0', models => '*', %{$o{teams}{$t}} };
        }
        return $cfg;
}

# A subtest whose setup may die (a broker that does not start, a config key
# not known yet): the death fails this subtest and the file goes on.
sub case($name, $code) {
        my $t0 = time;
        subtest $name => sub {
                my $ok = eval { $code->(); 1 };
                fail("died: $@") unless $ok;
                note(sprintf('%.1f s', time - $t0));
        };
}

sub status($b) { req($b->dir . '/admin.sock', path => '/status')->{json} // {} }
sub store_state($b) { (status($b)->{quota_store} // {})->{state} // '' }

sub wait_state($timeout, $state, @b) {
        return wait_until($timeout, sub { !grep { store_state($_) ne $state } @b }, 0.1);
}

sub est_input($body) { my $n = length(json_encode($body)); return int(($n + 3) / 4) }

# Quota tokens of a request record, as kb_usage_quota_tokens(): input +
# output, and for Anthropic cache reads and writes too.
sub tokens_of($rec) {
        my $t = ($rec->{KEYBROKER_INPUT_TOKENS} || 0) + ($rec->{KEYBROKER_OUTPUT_TOKENS} || 0);
        $t += ($rec->{KEYBROKER_CACHED_TOKENS} || 0) + ($rec->{KEYBROKER_CACHE_WRITE_TOKENS} || 0)
                if ($rec->{KEYBROKER_FAMILY} // '') eq 'anthropic';
        return $t;
}

# The request records of a team over brokers (dead ones included), once
# there are at least $want of them (10 s at most).
sub team_records($team, $brokers, $want) {
        my @recs;
        wait_until(10, sub {
                journal_sync();
                @recs = map { $_->journal({ MESSAGE_ID => $KB::MID_REQUEST, KEYBROKER_TEAM => $team }) } @$brokers;
                return @recs >= $want;
        }, 0.2);
        diag(scalar(@recs) . " request records of team $team, expected $want") if @recs != $want;
        return @recs;
}

sub journal_sums($team, $brokers, $want) {
        my @recs = team_records($team, $brokers, $want);
        return { n => scalar(@recs), tokens => sum0(map { tokens_of($_) } @recs),
                 cost => sum0(map { $_->{KEYBROKER_COST_MICROUSD} || 0 } @recs),
                 ok => scalar(grep { ($_->{KEYBROKER_OUTCOME} // '') eq 'ok' } @recs),
                 rejected => scalar(grep { ($_->{KEYBROKER_OUTCOME} // '') eq 'quota_rejected' } @recs) };
}

# tk and co summed over a team's day (kind 'd') or month ('m') hashes.
sub store_sums($r, $prefix, $team, $kind = 'd') {
        my ($tk, $co) = (0, 0);
        for my $k (redis_keys($r, "${prefix}t:$team:$kind:*")) {
                my $h = redis_hgetall($r, $k);
                $tk += $h->{tk} // 0;
                $co += $h->{co} // 0;
        }
        return ($tk, $co);
}

sub day_key($prefix, $team) { "${prefix}t:$team:d:" . floor(time / 86400) }
sub month_key($prefix, $team) {
        my @t = gmtime(time);
        return "${prefix}t:$team:m:" . (($t[5] + 1900) * 12 + $t[4]);
}

# Requests admitted per the store's t:TEAM:rq hash, or with $what 'tk'
# tokens settled per t:TEAM:tk: the sum of its buckets (the fields named by
# a time K; the hash's own fields, such as gc, aside).
sub store_requests($r, $prefix, $team, $what = 'rq') {
        my $h = redis_hgetall($r, "${prefix}t:$team:$what");
        return sum0(map { $h->{$_} } grep { /^\d+$/ } keys %$h);
}

# The store's day and month counters equal the journaled sums: polled (the
# settle is asynchronous), then asserted. minute => 1: the tokens of the
# t:TEAM:tk window too (a team with tokens_per_minute, all of its traffic
# within the last minute).
sub check_store_equals_journal($r, $prefix, $team, $brokers, $want, $name, %o) {
        my $j = journal_sums($team, $brokers, $want);
        note("$name: journaled $j->{n} records, $j->{ok} ok, $j->{tokens} tokens, $j->{cost} µUSD");
        my $same = wait_until(8, sub {
                my ($tk, $co) = store_sums($r, $prefix, $team);
                return $tk == $j->{tokens} && $co == $j->{cost}
                        && (!$o{minute} || store_requests($r, $prefix, $team, 'tk') == $j->{tokens});
        }, 0.1);
        $j->{store_matched} = $same ? 1 : 0;
        my ($tk, $co) = store_sums($r, $prefix, $team);
        is($tk, $j->{tokens}, "$name: store d:DAY tk = Σ journaled tokens ($j->{tokens})");
        is($co, $j->{cost}, "$name: store d:DAY co = Σ journaled KEYBROKER_COST_MICROUSD ($j->{cost})");
        my ($mtk, $mco) = store_sums($r, $prefix, $team, 'm');
        is($mtk, $j->{tokens}, "$name: store m:MONTH tk = the same");
        is($mco, $j->{cost}, "$name: store m:MONTH co = the same");
        is(store_requests($r, $prefix, $team, 'tk'), $j->{tokens}, "$name: store t:$team:tk (tokens this minute) = the same")
                if $o{minute};
        if ($j->{tokens}) {
                ok(scalar(redis_keys($r, day_key($prefix, $team))), "$name: today's key " . day_key($prefix, $team) . ' exists');
                ok(scalar(redis_keys($r, month_key($prefix, $team))), "$name: this month's key " . month_key($prefix, $team) . ' exists');
        }
        return $j;
}

# Raw connections, all requests sent before any answer is read: $per on
# each broker, so the fleet sees them in flight together.
sub burst($brokers, $per, $body, @headers) {
        my $path = $body->{model} =~ /^claude/ ? '/v1/messages' : '/v1/chat/completions';
        my $bytes = http_request('POST', $path, json => $body, headers => [@headers]);
        my @c = map { my $b = $_; map { raw_connect($b) } 1 .. $per } @$brokers;
        $_->send($bytes) for @c;
        return \@c;
}

sub collect($conns, $timeout = 30) {
        my @res;
        for my $c (@$conns) {
                my $r = $c->read_response(timeout => $timeout);
                diag("no response: $c->{why}") unless $r;
                push @res, $r // {};
                $c->close;
        }
        return @res;
}

sub statuses(@res) {
        my %n;
        $n{$_->{status} // 'none'}++ for @res;
        return join(', ', map { "$n{$_} × $_" } sort keys %n);
}

sub chat($b, $team, %o) {
        return req($b, path => '/v1/chat/completions', json => { %CHAT, %{$o{json} // {}} },
                   headers => ['X-Keybroker-Team' => $team, @{$o{headers} // []}]);
}

# A 429 quota_exceeded in OpenAI's shape naming the team and limit.
sub check_429($res, $team, $limit, %o) {
        my $rate = $limit =~ /per_minute|max_concurrent/;
        subtest "429 $limit (team $team)" => sub {
                check_openai_error($res, 429, 'quota_exceeded');
                is($res->{json}{error}{type}, $rate ? 'rate_limit_error' : 'insufficient_quota', 'error.type');
                my $msg = $res->{json}{error}{message} // '';
                like($msg, qr/\bteam '\Q$team\E'/, 'message names the team');
                like($msg, qr/\b\Q$limit\E\b/, 'message names the limit');
                like($msg, qr/(?<![\w.\$])\Q$o{used}\E used of \Q$o{max}\E(?![\w.])/, "message says $o{used} used of $o{max}")
                        if defined $o{used};
                my $ra = $res->{headers}{'retry-after'};
                like($ra // '', qr/^\d+$/, 'retry-after is whole seconds');
                my ($lo, $hi) = @{$o{retry}};
                ok(defined $ra && $ra >= $lo && $ra <= $hi, "retry-after $lo..$hi") or diag('retry-after: ' . ($ra // 'absent'));
                is($res->{headers}{'x-keybroker-team'}, $team, 'x-keybroker-team');
        };
}

sub next_midnight() { (floor(time / 86400) + 1) * 86400 }

# ------------------------------------------------------------ a delaying TCP proxy

# Listens on a loopback port and relays each connection to 127.0.0.1:$to.
# Bytes from the client go on at once; each chunk read from the server is
# held for the delay (ms, read from $delay_file, changeable while it runs)
# before it goes to the client, in order, without holding up anything else.
my @PROXIES;
sub start_delay_proxy($to, $delay_file) {
        my $l = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0, Listen => 128, ReuseAddr => 1)
                or die "proxy listen: $!";
        my $port = $l->sockport;
        my $pid = fork // die "fork: $!";
        if (!$pid) {
                eval { proxy_loop($l, $to, $delay_file) };
                print STDERR "delay proxy: $@" if $@;
                POSIX::_exit(0);
        }
        close $l;
        push @PROXIES, $pid;
        return { pid => $pid, port => $port };
}

sub stop_delay_proxy($p) {
        kill 'TERM', $p->{pid};
        waitpid($p->{pid}, 0);
        @PROXIES = grep { $_ != $p->{pid} } @PROXIES;
}

END { kill 'TERM', @PROXIES if @PROXIES; waitpid($_, 0) for @PROXIES }

sub proxy_loop($l, $to, $delay_file) {
        $SIG{TERM} = sub { POSIX::_exit(0) };
        $SIG{PIPE} = 'IGNORE';
        my $sel = IO::Select->new($l);
        my %conn;       # fileno => the pair it belongs to
        my ($delay, $read_at) = (0, 0);
        my $write_all = sub ($fh, $data) {
                my $off = 0;
                while ($off < length $data) {
                        my $n = syswrite($fh, $data, length($data) - $off, $off);
                        return 0 unless defined $n;
                        $off += $n;
                }
                return 1;
        };
        my $drop = sub ($p) {
                for my $fh ($p->{c}, $p->{u}) {
                        next unless $fh;
                        delete $conn{fileno($fh)};
                        $sel->remove($fh);
                        close $fh;
                }
                $p->{c} = $p->{u} = undef;
        };
        while (1) {
                my $now = time;
                if ($now - $read_at > 0.02) {
                        my $d = KB::slurp($delay_file);
                        $delay = defined $d && $d =~ /^(\d+)/ ? $1 / 1000 : 0;
                        $read_at = $now;
                }
                # Hand over what is due; the earliest still held sets the wait.
                my $next;
                my %seen;
                for my $p (grep { !$seen{$_}++ } values %conn) {
                        while (@{$p->{q}} && $p->{q}[0][0] <= $now) {
                                my $chunk = shift @{$p->{q}};
                                $write_all->($p->{c}, $chunk->[1]) or last;
                        }
                        if (!@{$p->{q}} && $p->{u_eof}) {
                                $drop->($p);
                                next;
                        }
                        $next = min($next // $p->{q}[0][0], $p->{q}[0][0]) if @{$p->{q}};
                }
                my $wait = defined $next ? max(0, $next - time) : 0.02;
                $wait = 0.02 if $wait > 0.02;
                for my $fh ($sel->can_read($wait)) {
                        if ($fh == $l) {
                                my $c = $l->accept or next;
                                my $u = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$to", Proto => 'tcp');
                                if (!$u) {
                                        close $c;
                                        next;
                                }
                                setsockopt($_, IPPROTO_TCP, TCP_NODELAY, 1) for $c, $u;
                                my $p = { c => $c, u => $u, q => [], u_eof => 0 };
                                $conn{fileno($c)} = $conn{fileno($u)} = $p;
                                $sel->add($c, $u);
                                next;
                        }
                        my $fd = fileno($fh);
                        next unless defined $fd;
                        my $p = $conn{$fd} or next;
                        my $n = sysread($fh, my $buf, 65536);
                        if ($p->{c} && $fh == $p->{c}) {
                                if (!$n) {
                                        $drop->($p);
                                        next;
                                }
                                $write_all->($p->{u}, $buf) or $drop->($p);
                        } else {
                                if (!$n) {
                                        $sel->remove($fh);
                                        $p->{u_eof} = 1;
                                        next;
                                }
                                push @{$p->{q}}, [time + $delay, $buf];
                        }
                }
        }
}

# ------------------------------------------------------------ 1. requests_per_minute

case 'requests_per_minute 20 over three brokers: a 60-way burst forwards exactly 20' => sub {
        my $prefix = 'kbt87rpm:';
        my @b = start_fleet(n => 3, config => fleet_config(prefix => $prefix,
                                                           teams => { rpm => { requests_per_minute => 20,
                                                                                      tokens_per_minute => 1000000 } }),
                            keys => \%keys);
        ok(wait_state(5, 'connected', @b), 'the three brokers are connected to the store')
                or diag(explain([map { status($_)->{quota_store} } @b]));
        my $before = $mock->count;
        my @res = collect(burst(\@b, 20, { %CHAT, max_tokens => 5 }, 'X-Keybroker-Team' => 'rpm'));
        my @ok = grep { ($_->{status} // 0) == 200 } @res;
        my @no = grep { ($_->{status} // 0) == 429 } @res;
        is(scalar @ok, 20, 'exactly 20 answered 200') or diag(statuses(@res));
        is(scalar @no, 40, 'exactly 40 answered 429');
        is(scalar(@res) - @ok - @no, 0, 'nothing else');
        is($mock->count - $before, 20, 'the provider got exactly 20');
        check_429($no[-1], 'rpm', 'requests_per_minute', used => 20, max => 20, retry => [1, 61]) if @no;
        if (@no) {
                is($no[-1]{headers}{'x-ratelimit-limit-requests'}, 20, 'x-ratelimit-limit-requests 20 on a 429');
                is($no[-1]{headers}{'x-ratelimit-remaining-requests'}, 0, 'x-ratelimit-remaining-requests 0 on a 429');
                my $without = grep { ($_->{headers}{'retry-after'} // '') !~ /^\d+$/ } @no;
                is($without, 0, 'every 429 has retry-after');
                my $other = grep { ($_->{json}{error}{code} // '') ne 'quota_exceeded' } @no;
                is($other, 0, 'every 429 is quota_exceeded');
        }
        if (@ok) {
                is($ok[0]{headers}{'x-ratelimit-limit-requests'}, 20, 'x-ratelimit-limit-requests 20 on a 200');
                cmp_ok($ok[0]{headers}{'x-ratelimit-remaining-requests'} // 99, '<', 20, '... remaining counts the fleet');
        }
        my $j = journal_sums('rpm', \@b, 60);
        is($j->{ok}, 20, 'journal: 20 ok over the three brokers');
        is($j->{rejected}, 40, 'journal: 40 quota_rejected');
        is(store_requests($redis, $prefix, 'rpm'), 20, "store: t:rpm:rq counts 20 admitted");
        check_store_equals_journal($redis, $prefix, 'rpm', \@b, 60, 'the burst', minute => 1);
        ok($_->alive, 'broker ' . $_->pid . ' alive') for @b;
};

# ------------------------------------------------------------ 2. tokens_per_day, budget_usd_per_day

# Rounds of bursts over the fleet until a round admits nothing: the first
# one (calls held 400 ms at the mock, so nothing settles while they are
# admitted) admits exactly floor(limit / estimate); before each later round
# the store has settled what was journaled. The journaled sum never passes
# the limit, and the last refusal was right (what is left is less than one
# estimate).
sub day_limit_rounds($prefix, $team, $limit, $est, $used_of, $limit_name, $brokers) {
        my ($n_sent, $n_ok, $rounds) = (0, 0, 0);
        my $before = $mock->count;
        my $last_429;
        for my $round (1 .. 12) {
                $rounds = $round;
                my $first = $round == 1;
                my @res = collect(burst($brokers, $first ? 10 : 3, \%CHAT, 'X-Keybroker-Team' => $team,
                                        $first ? ('x-mock-delay-ms' => 400) : ()));
                $n_sent += @res;
                my @ok = grep { ($_->{status} // 0) == 200 } @res;
                my @no = grep { ($_->{status} // 0) == 429 } @res;
                $last_429 = $no[-1] if @no;
                $n_ok += @ok;
                is(scalar(@ok) + scalar(@no), scalar(@res), "round $round: only 200 and 429 (" . statuses(@res) . ')');
                is(scalar(@ok), floor($limit / $est), "round 1: exactly floor($limit / $est) admitted") if $first;
                my $j = check_store_equals_journal($redis, $prefix, $team, $brokers, $n_sent, "round $round");
                cmp_ok($used_of->($j), '<=', $limit, "round $round: Σ journaled $limit_name within the limit");
                if (!$j->{store_matched}) {
                        fail("round $round: the store did not settle to the journal within 8 s; later rounds would mean nothing");
                        last;
                }
                if (!@ok) {
                        cmp_ok($limit - $used_of->($j), '<', $est,
                               'all refused: what is left (' . ($limit - $used_of->($j)) . ") is less than one estimate ($est)");
                        last;
                }
        }
        is($mock->count - $before, $n_ok, "the provider got the $n_ok admitted, nothing else");
        cmp_ok($rounds, '<', 12, "the limit was reached ($rounds rounds, $n_ok admitted)");
        return $last_429;
}

case 'tokens_per_day and budget_usd_per_day over three brokers: never past the limit; store = journal' => sub {
        my $prefix = 'kbt87day:';
        my @b = start_fleet(n => 3, config => fleet_config(prefix => $prefix, teams => {
                tpd => { tokens_per_day => 300 },
                usd => { budget_usd_per_day => '0.0005' },
        }), keys => \%keys);
        ok(wait_state(5, 'connected', @b), 'connected');
        my $est = est_input(\%CHAT) + $CHAT{max_tokens};
        my $est_usd = est_input(\%CHAT) + 2 * $CHAT{max_tokens};
        note("estimates: $est tokens, $est_usd µUSD a call; the mock answers 11 in + 7 out = 18 tokens, 25 µUSD");

        subtest 'tokens_per_day 300' => sub {
                my $r = day_limit_rounds($prefix, 'tpd', 300, $est, sub ($j) { $j->{tokens} }, 'tokens', \@b);
                my $wait = next_midnight() - time;
                check_429($r, 'tpd', 'tokens_per_day', max => 300, retry => [$wait - 5, $wait + 5]) if $r;
        };
        subtest 'budget_usd_per_day 0.0005' => sub {
                my $r = day_limit_rounds($prefix, 'usd', 500, $est_usd, sub ($j) { $j->{cost} }, 'µUSD', \@b);
                my $wait = next_midnight() - time;
                check_429($r, 'usd', 'budget_usd_per_day', max => '$0.000500', retry => [$wait - 5, $wait + 5]) if $r;
        };
        ok($_->alive, 'broker ' . $_->pid . ' alive') for @b;
};

# ------------------------------------------------------------ 3. max_concurrent and a killed broker

case 'max_concurrent 2 fleet-wide; a broker killed with calls in flight frees its slot and reservation with its lease' => sub {
        my $prefix = 'kbt87conc:';
        # tres: one call's estimate (30) fits in 50 tokens a day, two do not.
        my @b = start_fleet(n => 3, config => fleet_config(prefix => $prefix, teams => { conc => { max_concurrent => 2 },
                                                                                         tres => { tokens_per_day => 50 } }),
                            keys => \%keys);
        ok(wait_state(5, 'connected', @b), 'connected');
        my $held = sub ($b, $ms, $team = 'conc') { burst([$b], 1, \%CHAT, 'X-Keybroker-Team' => $team, 'x-mock-delay-ms' => $ms) };
        my $before = $mock->count;
        my $c1 = $held->($b[0], 7000);
        my $c2 = $held->($b[1], 7000);
        my $ct = $held->($b[0], 7000, 'tres');
        ok(wait_until(3, sub { $mock->count - $before >= 3 }),
           'held at the provider: conc calls on brokers 1 and 2, a tres call on broker 1');
        my $tres_calls = 0;     # journaled ones: the held call dies with broker 1
        my $tr = chat($b[1], 'tres');
        $tres_calls++;
        check_429($tr, 'tres', 'tokens_per_day', max => 50,
                  retry => [next_midnight() - time - 5, next_midnight() - time + 5]);

        my $n = $mock->count;
        my $res = chat($b[2], 'conc');
        check_429($res, 'conc', 'max_concurrent', used => 2, max => 2, retry => [1, 2]);
        is($mock->count, $n, 'the third, on broker 3, was not forwarded');
        my $rec = journal_request($res->{headers}{'x-keybroker-request-id'});
        check_fields($rec, { KEYBROKER_STATUS => 429, KEYBROKER_OUTCOME => 'quota_rejected' }, 'journaled as rejected');

        my $t0 = time;
        $b[0]->stop('KILL');
        note('broker 1 killed (SIGKILL) with its call in flight');
        my ($ok, $tries) = (undef, 0);
        wait_until(8, sub {
                $tries++;
                my $r = chat($b[2], 'conc');
                $ok = $r if ($r->{status} // 0) == 200;
                return $ok || ($r->{status} // 0) != 429;
        }, 0.2);
        my $took = time - $t0;
        ok($ok, sprintf('broker 3 admits again %.2f s after the kill (%d tries)', $took, $tries));
        cmp_ok($took, '<', 4.5, 'within the lease (3 s) and a renewal');
        my $tok;
        wait_until(8 - (time - $t0), sub {
                my $r = chat($b[1], 'tres');
                $tres_calls++;
                $tok = $r if ($r->{status} // 0) == 200;
                return $tok || ($r->{status} // 0) != 429;
        }, 0.2);
        my $took_t = time - $t0;
        ok($tok, sprintf('the dead broker\'s reserved tokens are released: tres admits on broker 2 %.2f s after the kill',
                         $took_t));
        cmp_ok($took_t, '<', 4.5, '... within the lease and a renewal');

        # Exactly one slot came back: broker 2's call still holds the other.
        $n = $mock->count;
        my $c3 = $held->($b[2], 2000);
        ok(wait_until(3, sub { $mock->count > $n }), 'broker 3 holds a call in the freed slot');
        $res = chat($b[1], 'conc');
        is($res->{status}, 429, 'a further call on broker 2 is refused: 2 in flight again (broker 2\'s and broker 3\'s)')
                or diag(KB::show_res($res));
        my ($r2) = collect($c2);
        is($r2->{status}, 200, 'broker 2\'s held call completes') or diag(KB::show_res($r2));
        my ($r3) = collect($c3);
        is($r3->{status}, 200, 'broker 3\'s held call completes') or diag(KB::show_res($r3));
        $_->close for @$c1, @$ct;
        is(chat($b[1], 'conc')->{status}, 200, 'with nothing in flight, calls pass again');
        check_store_equals_journal($redis, $prefix, 'tres', \@b, $tres_calls,
                                   'tres: the dead broker\'s call counts nothing; the one admitted after');
        is((journal_sums('tres', \@b, $tres_calls))->{tokens}, 18, '... 18 tokens in all');
        ok($b[$_]->alive, 'broker ' . ($_ + 1) . ' alive') for 1, 2;
};

# ------------------------------------------------------------ 4. a store stalled mid-settle

case 'the store stalls (DEBUG SLEEP 0.3) while calls settle: offline, back, counters = journal' => sub {
        my $prefix = 'kbt87stall:';
        my @b = start_fleet(n => 2, config => fleet_config(prefix => $prefix, teams => {
                stall => { requests_per_minute => 10000, tokens_per_minute => 100000000, tokens_per_day => 100000000,
                           budget_usd_per_day => 100 },
        }), keys => \%keys);
        ok(wait_state(5, 'connected', @b), 'connected');
        # Warm-up calls settled before the stall.
        is(chat($_, 'stall')->{status}, 200, 'a call before the stall') for @b;
        my $t0 = time;
        my $before = $mock->count;
        my @c = (@{burst(\@b, 4, \%CHAT, 'X-Keybroker-Team' => 'stall', 'x-mock-delay-ms' => 250)},
                 @{burst(\@b, 4, \%MSG, 'X-Keybroker-Team' => 'stall', @ANTH, 'x-mock-delay-ms' => 250,
                         'x-mock-cached-tokens' => 30, 'x-mock-cache-write-tokens' => 8)});
        ok(wait_until(3, sub { $mock->count - $before >= 16 }), '16 calls admitted and held at the provider');
        my $sleeper = KB::spawn(cmd => ['redis-cli', '-p', $redis->{port}, 'DEBUG', 'SLEEP', '0.3'],
                                output => tmpdir('stall') . '/out', name => 'redis-cli DEBUG SLEEP');
        my @res = collect(\@c);
        is(scalar(grep { ($_->{status} // 0) == 200 } @res), 16, 'all 16 answered 200 (settled into the stall)')
                or diag(statuses(@res));
        KB::wait_pid($sleeper, 5);
        # Both brokers had settles (and heartbeats) in the stall.
        for my $i (0 .. $#b) {
                my @off = $b[$i]->journal_wait({ MESSAGE_ID => $MID_STORE, KEYBROKER_EVENT => 'offline' }, 3);
                ok(scalar(@off), 'broker ' . ($i + 1) . ': the stall took the store offline: '
                                 . ($off[0]{KEYBROKER_REASON} // 'no record'));
                my @back = $b[$i]->journal_wait({ MESSAGE_ID => $MID_STORE, KEYBROKER_EVENT => 'back' }, 5);
                ok(scalar(@back), 'broker ' . ($i + 1) . ': back after the stall');
        }
        ok(wait_state(5, 'connected', @b), 'both connected again');
        check_store_equals_journal($redis, $prefix, 'stall', \@b, 18, 'after the stall (no double count, nothing lost)',
                                   minute => 1);
        note(sprintf('%.2f s from the burst to equal counters', time - $t0));
        # And admission works normally afterwards.
        is(chat($_, 'stall')->{status}, 200, 'a call after the stall') for @b;
        check_store_equals_journal($redis, $prefix, 'stall', \@b, 20, 'and after two more', minute => 1);
};

# ------------------------------------------------------------ 5. Redis killed under load, restarted empty

case 'Redis killed under load and restarted empty: no 5xx, counters re-pushed = the journal' => sub {
        my $r = start_redis();
        my $prefix = 'kbt87loss:';
        my @b = start_fleet(n => 3, config => fleet_config(store => $r->{url}, prefix => $prefix, teams => {
                loss => { requests_per_minute => 100000, tokens_per_minute => 100000000, tokens_per_day => 100000000,
                          budget_usd_per_day => 100 },
        }), keys => \%keys);
        ok(wait_state(5, 'connected', @b), 'connected');
        ok(wait_until(5, sub { !grep { (status($_)->{quota_store}{brokers} // 0) != 3 } @b }, 0.2), '3 brokers seen');
        my @loads = map { KB::curl_load($_, requests => 100, parallel => 4, json => \%CHAT,
                                        headers => ['X-Keybroker-Team' => 'loss', 'x-mock-delay-ms' => 80]) } @b;
        sleep 0.6;
        my ($day_before) = store_sums($r, $prefix, 'loss');
        cmp_ok($day_before, '>', 0, "the store counted $day_before tokens before the loss");
        stop_redis($r, 'KILL');
        my $t_kill = time;
        note('redis-server killed (SIGKILL)');
        ok(wait_state(3, 'offline', @b), 'every broker is offline');
        sleep 0.5;
        $r = start_redis(port => $r->{port});
        note(sprintf('redis-server restarted empty after %.2f s', time - $t_kill));
        my @lines = map { KB::curl_load_wait($_) } @loads;
        is(scalar(@lines), 300, '300 calls made');
        my @bad = grep { !/^200 / } @lines;
        is(scalar(@bad), 0, 'all 200: no 5xx, nothing refused, during the outage')
                or diag(join("\n", (@bad)[0 .. min(9, $#bad)]));
        for my $i (0 .. $#b) {
                my @back = $b[$i]->journal_wait({ MESSAGE_ID => $MID_STORE, KEYBROKER_EVENT => 'back' }, 8);
                ok(scalar(@back), 'broker ' . ($i + 1) . ': journaled back');
        }
        ok(wait_state(5, 'connected', @b), 'every broker connected again');
        my @others = map { $_->journal({ MESSAGE_ID => $MID_STORE }) } @b;
        note('store events: ' . join(', ', map { ($_->{KEYBROKER_EVENT} // '?') . ($_->{KEYBROKER_REASON} ? " ($_->{KEYBROKER_REASON})" : '') } @others));
        # design.md: cfe4b02a… also records "epoch change and re-push (with
        # counts)": one after the restart (a store new at start has one too).
        for my $i (0 .. $#b) {
                my @ep = grep { (($_->{KEYBROKER_EVENT} // '') . ' ' . ($_->{MESSAGE} // '')) =~ /epoch/i
                                && ($_->{__REALTIME_TIMESTAMP} // 0) / 1e6 > $t_kill }
                         $b[$i]->journal({ MESSAGE_ID => $MID_STORE });
                ok(scalar(@ep), 'broker ' . ($i + 1) . ': journaled the epoch change and its re-push')
                        and note('  ' . ($ep[-1]{MESSAGE} // ''));
        }
        ok(redis_cli($r, 'EXISTS', "${prefix}epoch")->{stdout} =~ /^1/, 'a new epoch in the store');
        check_store_equals_journal($r, $prefix, 'loss', \@b, 300, 'after the loss');
        ok(wait_until(5, sub { !grep { (status($_)->{quota_store}{brokers} // 0) != 3 } @b }, 0.2),
           'the three leases are back');
        ok($_->alive, 'broker ' . $_->pid . ' alive') for @b;
        stop_redis($r);
};

# ------------------------------------------------------------ 6. a slow network

case 'a slow network (a proxy delaying Redis\'s replies): calls pass, other connections are not held up' => sub {
        my $dir = tmpdir('proxy');
        my $delay_file = "$dir/delay_ms";
        spew($delay_file, "5\n");
        my $proxy = start_delay_proxy($redis->{port}, $delay_file);
        my $prefix = 'kbt87slow:';
        my %teams = (slow => { requests_per_minute => 10000, tokens_per_day => 100000000 });
        my ($slow) = start_fleet(n => 1, config => fleet_config(store => "redis://127.0.0.1:$proxy->{port}", prefix => $prefix,
                                                                agent => { quota_store_timeout => '2s' }, teams => \%teams),
                                 keys => \%keys);
        my ($fast) = start_fleet(n => 1, config => fleet_config(prefix => $prefix, agent => { quota_store_timeout => '2s' },
                                                                teams => \%teams), keys => \%keys);
        ok(wait_state(5, 'connected', $slow, $fast), 'both connected (one through the proxy)');
        my $rtt = status($slow)->{quota_store}{rtt_p50_ms} // 0;
        note("round trip through the proxy: p50 $rtt ms");

        my $bytes = http_request('POST', '/v1/chat/completions', json => \%CHAT, headers => ['X-Keybroker-Team' => 'slow']);
        my $timed = sub ($b, $n) {
                my $c = raw_connect($b);
                my (@lat, @st);
                for (1 .. $n) {
                        my $t = time;
                        $c->send($bytes);
                        my $res = $c->read_response(timeout => 10);
                        push @lat, time - $t;
                        push @st, $res ? $res->{status} : 'none';
                }
                $c->close;
                return (\@lat, \@st);
        };
        my $median = sub (@v) { my @s = sort { $a <=> $b } @v; return $s[$#s / 2] };
        my ($lf, $sf) = $timed->($fast, 20);
        my ($ls, $ss) = $timed->($slow, 20);
        is(scalar(grep { $_ ne '200' } @$sf, @$ss), 0, '40 calls, all 200');
        cmp_ok(max(@$ls), '<', 1, sprintf('each call through the slow store under 1 s (max %.0f ms)', 1000 * max(@$ls)));
        note(sprintf('median latency: %.1f ms direct, %.1f ms through the 5 ms proxy: +%.1f ms (one round trip is ≥ 5 ms)',
                     1000 * $median->(@$lf), 1000 * $median->(@$ls), 1000 * ($median->(@$ls) - $median->(@$lf))));

        # Replies now take 300 ms: a call waits for its admission, a GET
        # /v1/models on another connection does not.
        spew($delay_file, "300\n");
        sleep 0.1;
        my $chat = raw_connect($slow);
        my $models = raw_connect($slow);
        my $t0 = time;
        $chat->send($bytes);
        sleep 0.02;
        $models->send(http_request('GET', '/v1/models', headers => ['X-Keybroker-Team' => 'slow']));
        my $mr = $models->read_response(timeout => 5);
        my $t_models = time - $t0;
        my $cr = $chat->read_response(timeout => 5);
        my $t_chat = time - $t0;
        is($mr && $mr->{status}, 200, 'GET /v1/models 200');
        is($cr && $cr->{status}, 200, 'the call 200');
        cmp_ok($t_chat, '>=', 0.29, sprintf('the call waited for its admission (%.0f ms)', 1000 * $t_chat));
        cmp_ok($t_models, '<', 0.25, sprintf('GET /v1/models on another connection was served meanwhile (%.0f ms)',
                                              1000 * $t_models));
        ok($mr && $cr && $mr->{t_head} < $cr->{t_head}, '... before the call\'s answer');
        $_->close for $chat, $models;
        spew($delay_file, "0\n");
        ok($slow->alive && $fast->alive, 'both alive');
        is($slow->stop, 0, 'exits 0');
        stop_delay_proxy($proxy);
};

case 'a stalling network (replies held 1.5 s): served locally meanwhile, then the counters = the journal' => sub {
        my $dir = tmpdir('stallproxy');
        my $delay_file = "$dir/delay_ms";
        spew($delay_file, "0\n");
        my $proxy = start_delay_proxy($redis->{port}, $delay_file);
        my $prefix = 'kbt87part:';
        my %teams = (part => { requests_per_minute => 10000, tokens_per_minute => 100000000, tokens_per_day => 100000000,
                               budget_usd_per_day => 100 });
        my ($cut) = start_fleet(n => 1, config => fleet_config(store => "redis://127.0.0.1:$proxy->{port}", prefix => $prefix,
                                                               teams => \%teams), keys => \%keys);
        my ($ok) = start_fleet(n => 1, config => fleet_config(prefix => $prefix, teams => \%teams), keys => \%keys);
        ok(wait_state(5, 'connected', $cut, $ok), 'both connected (one through the proxy)');
        my @st = map { chat($_, 'part')->{status} } $cut, $ok, $cut, $ok;
        spew($delay_file, "1500\n");
        sleep 0.05;
        my $t0 = time;
        my @lat;
        for (1 .. 5) {
                my $t = time;
                push @st, chat($cut, 'part')->{status};
                push @lat, time - $t;
                push @st, chat($ok, 'part')->{status};
        }
        is_deeply(\@st, [(200) x 14], '14 calls, all 200, before and during the stall');
        cmp_ok(max(@lat), '<', 1, sprintf('calls on the cut-off broker are not held by the stall (max %.0f ms)', 1000 * max(@lat)));
        ok(wait_state(3, 'offline', $cut), 'the cut-off broker is offline');
        is(store_state($ok), 'connected', 'the other one is not');
        spew($delay_file, "0\n");
        ok(wait_state(6, 'connected', $cut), 'back once replies flow');
        check_store_equals_journal($redis, $prefix, 'part', [$cut, $ok], 14,
                                   'after the stall: late replies and re-pushes count once', minute => 1);
        is($cut->stop, 0, 'exits 0');
        stop_delay_proxy($proxy);
};

# ------------------------------------------------------------ 7. quota_scope = host

case 'quota_scope = host: each broker admits the full limit; a fleet team shares it' => sub {
        my $prefix = 'kbt87host:';
        my @b = start_fleet(n => 2, config => fleet_config(prefix => $prefix, teams => {
                perhost => { requests_per_minute => 5, quota_scope => 'host' },
                shared => { requests_per_minute => 5, quota_scope => 'fleet' },
        }), keys => \%keys);
        ok(wait_state(5, 'connected', @b), 'connected');
        for my $i (0, 1) {
                my @st = map { chat($b[$i], 'perhost')->{status} } 1 .. 6;
                is_deeply(\@st, [(200) x 5, 429], 'host scope, broker ' . ($i + 1) . ': 5 admitted, the 6th refused');
        }
        my @st = map { chat($b[$_ % 2], 'shared')->{status} } 0 .. 5;
        is_deeply(\@st, [(200) x 5, 429], 'fleet scope: 5 admitted over both brokers, the 6th refused');
        is(store_requests($redis, $prefix, 'shared'), 5, 'the store counts the fleet team');
};

# ------------------------------------------------------------ 8. offline: offline_share and deny

case 'store unreachable from the start: offline_share scales the limits; quota_store_offline = deny refuses' => sub {
        my $nowhere = 'redis://127.0.0.1:' . free_port();
        my %teams = (half => { requests_per_minute => 10 });
        my ($b1) = start_fleet(n => 1, config => fleet_config(store => $nowhere, agent => { offline_share => '0.5' },
                                                              teams => \%teams), keys => \%keys);
        my ($b2) = start_fleet(n => 1, config => fleet_config(store => $nowhere, agent => { offline_share => '50%' },
                                                              teams => \%teams), keys => \%keys);
        ok(wait_state(5, 'offline', $b1, $b2), 'both offline');
        my $before = $mock->count;
        my @res = collect(burst([$b1], 10, \%CHAT, 'X-Keybroker-Team' => 'half'));
        is(scalar(grep { ($_->{status} // 0) == 200 } @res), 5, 'offline_share = 0.5, rpm 10: exactly 5 of a 10-way burst admitted')
                or diag(statuses(@res));
        is(scalar(grep { ($_->{status} // 0) == 429 } @res), 5, '... 5 refused');
        my ($no) = grep { ($_->{status} // 0) == 429 } @res;
        check_429($no, 'half', 'requests_per_minute', retry => [1, 61]) if $no;
        is($mock->count - $before, 5, 'the provider got 5');
        is_deeply([map { chat($b2, 'half')->{status} } 1 .. 6], [(200) x 5, 429], 'offline_share = 50%: the same, one by one');
        ok($b1->alive && $b2->alive, 'no crash');

        my $deny_port = free_port();
        my ($deny) = start_fleet(n => 1, config => fleet_config(store => "redis://127.0.0.1:$deny_port",
                                                                prefix => 'kbt87deny:',
                                                                agent => { quota_store_offline => 'deny' },
                                                                teams => \%teams), keys => \%keys);
        ok(wait_state(5, 'offline', $deny), 'offline');
        $before = $mock->count;
        my $res = chat($deny, 'half');
        subtest 'quota_store_offline = deny: 503, OpenAI shape, saying why' => sub {
                is($res->{status}, 503, 'status 503') or diag(KB::show_res($res));
                like($res->{headers}{'content-type'} // '', qr{^application/json}, 'content-type json');
                my $e = ref $res->{json} eq 'HASH' ? $res->{json}{error} : undef;
                ok(ref $e eq 'HASH', 'body is {"error":{…}}') or return;
                like($e->{code} // '', qr/^\w+$/, "error.code: " . ($e->{code} // 'none'));
                like($e->{type} // '', qr/^\w+$/, 'error.type is a word');
                like($e->{message} // '', qr/quota store/i, "error.message names the quota store: " . ($e->{message} // ''));
                check_common_headers($res, team => 'half');
        };
        my $ares = req($deny, path => '/v1/messages', json => \%MSG, headers => ['X-Keybroker-Team' => 'half', @ANTH]);
        subtest '... and in Anthropic shape on /v1/messages' => sub {
                is($ares->{status}, 503, 'status 503') or diag(KB::show_res($ares));
                ok(($ares->{json}{type} // '') eq 'error' && ref $ares->{json}{error} eq 'HASH', '{"type":"error","error":{…}}');
                is($ares->{json}{error}{type}, 'api_error', 'error.type api_error');
        };
        is($mock->count, $before, 'nothing forwarded');
        my $rec = journal_request($res->{headers}{'x-keybroker-request-id'});
        check_fields($rec, { KEYBROKER_STATUS => 503, KEYBROKER_TEAM => 'half', KEYBROKER_UPSTREAM_STATUS => sub { !$_[0] } },
                     'journaled: 503, no upstream call');
        my $r = start_redis(port => $deny_port);
        ok(wait_state(5, 'connected', $deny), 'the store appears: connected');
        is(chat($deny, 'half')->{status}, 200, 'calls pass once the store answers');
        is($deny->stop, 0, 'exits 0');
        stop_redis($r);
};

case 'the default offline_share is 1 / the brokers last seen' => sub {
        my $r = start_redis();
        my @b = start_fleet(n => 2, config => fleet_config(store => $r->{url}, prefix => 'kbt87share:',
                                                           teams => { share => { requests_per_minute => 10 } }),
                            keys => \%keys);
        ok(wait_until(5, sub { !grep { (status($_)->{quota_store}{brokers} // 0) != 2 } @b }, 0.1), 'each sees 2 brokers');
        stop_redis($r, 'KILL');
        ok(wait_state(3, 'offline', @b), 'both offline');
        for my $i (0, 1) {
                is_deeply([map { chat($b[$i], 'share')->{status} } 1 .. 7], [(200) x 5, 429, 429],
                          'broker ' . ($i + 1) . ': rpm 10 × 1/2 = 5 admitted offline');
        }
};

# ------------------------------------------------------------ 9. a Redis that refuses scripts

case 'a Redis with EVAL/EVALSHA/SCRIPT renamed away: offline with the reason, limits scaled, no crash' => sub {
        my $r = start_redis(args => [map { ('--rename-command', $_, '') }
                                     qw(EVAL EVALSHA EVAL_RO EVALSHA_RO SCRIPT FCALL FCALL_RO FUNCTION)]);
        like(redis_cli($r, 'EVAL', 'return 1', '0')->{stdout}, qr/unknown command/i, 'this Redis refuses EVAL');
        my ($b) = start_fleet(n => 1, config => fleet_config(store => $r->{url}, prefix => 'kbt87noscript:',
                                                             agent => { offline_share => '0.5' },
                                                             teams => { noscript => { requests_per_minute => 6 } }),
                              keys => \%keys);
        my $before = $mock->count;
        my @st = (chat($b, 'noscript')->{status});
        ok(wait_state(5, 'offline', $b), 'offline') or diag(explain(status($b)->{quota_store}));
        my @rec = $b->journal_wait({ MESSAGE_ID => $MID_STORE, KEYBROKER_EVENT => 'offline' }, 5);
        ok(scalar(@rec), 'journaled offline');
        like($rec[0]{KEYBROKER_REASON} // '', qr/\S/, 'with the reason: ' . ($rec[0]{KEYBROKER_REASON} // '')) if @rec;
        like(status($b)->{quota_store}{reason} // '', qr/\S/, '/status says why too');
        push @st, map { chat($b, 'noscript')->{status} } 1 .. 5;
        is_deeply(\@st, [(200) x 3, (429) x 3], 'served offline against rpm 6 × 0.5 = 3: never unlimited');
        is($mock->count - $before, 3, 'the provider got 3');
        sleep 1.2;
        ok($b->alive, 'no crash (still running after retries)');
        journal_sync();
        my @ev = map { $_->{KEYBROKER_EVENT} // '?' } $b->journal({ MESSAGE_ID => $MID_STORE });
        note("store events: @ev");
        is(scalar(grep { /^(connected|back)$/ } @ev), 0, 'never journaled connected (or back) to a store that refuses scripts');
        isnt(store_state($b), 'connected', '/status never says connected either');
        is($b->stop, 0, 'exits 0');
        stop_redis($r);
};

note(sprintf('whole file: %.1f s', time - $T_START));
done_testing;
