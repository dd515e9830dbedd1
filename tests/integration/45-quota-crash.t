#!/usr/bin/perl
# Quota counters survive a crash: under sustained load (JSON and SSE, both
# families) the broker is killed with SIGKILL, restarted on the same
# state_dir, and each team's counters (GET /teams) equal the sum of the
# usage its journal records of this broker instance carry — snapshot plus
# replay of the records after it, nothing lost, nothing twice. Also: a clean
# restart keeps the counters; a corrupt snapshot is moved aside, the broker
# still starts and rebuilds the counters from the journal.
use v5.36;
use FindBin;
use lib "$FindBin::Bin/lib";
use POSIX qw(strftime);
use Test::More;
use Time::HiRes qw(time sleep);
use KB;

ensure_journald();
my %keys = ('oai-key' => fixture_secret('oai'), 'anth-key' => fixture_secret('anth'));
my $mock = start_mock(require_key => [values %keys]);
my $cfg = standard_config(mock => $mock);
$cfg->{'route:oai'}{price} = 'gpt-4o-mini-2024-07-18 input=0.15 output=0.6 cached_input=0.075';
$cfg->{'route:anth'}{price} = 'claude-3-5-haiku-20241022 input=0.8 output=4 cached_input=0.08 cache_write=1';
# Limits far above what the load can reach: counted, never denied.
my %big = (requests_per_minute => 1000000, tokens_per_minute => 1000000000, tokens_per_day => 1000000000,
           budget_usd_per_day => 100000, budget_usd_per_month => 1000000);
$cfg->{'team:ops'} = { users => '0', models => '*', %big };
$cfg->{'team:idle'} = { users => '4242', models => '*', %big };
my $broker = start_broker(config => $cfg, keys => \%keys);
my $dir = $broker->dir;
my $state = "$dir/state";
my $snapshot = "$state/quota.json";
my $admin = "$dir/admin.sock";
my ($instance) = (slurp("$state/instance") // '') =~ /^([0-9a-f]{32})$/m;
ok($instance, 'the broker keeps an instance id in state_dir') or BAIL_OUT('no instance id');

my $MID_REQUEST = $KB::MID_REQUEST;

# ------------------------------------------------------------ helpers

# Each team's usage as the journal tells it: records of this instance,
# today (UTC) for the day windows, this month for the month ones.
sub journal_usage() {
        journal_sync();
        my @recs = journal_records({ MESSAGE_ID => $MID_REQUEST, KEYBROKER_INSTANCE => $instance });
        my $today = strftime('%Y-%m-%d', gmtime);
        my $month = strftime('%Y-%m', gmtime);
        my (%u, %seen);
        for my $r (@recs) {
                my $team = $r->{KEYBROKER_TEAM} // '';
                my $seq = $r->{KEYBROKER_SEQ} // 0;
                next if $team eq '' || !$seq;   # never admitted to the quota
                $seen{$seq}++;
                my $t = $r->{KEYBROKER_INPUT_TOKENS} + $r->{KEYBROKER_OUTPUT_TOKENS};
                $t += $r->{KEYBROKER_CACHED_TOKENS} + $r->{KEYBROKER_CACHE_WRITE_TOKENS}
                        if $r->{KEYBROKER_FAMILY} eq 'anthropic';
                my $cost = $r->{KEYBROKER_COST_MICROUSD};
                $cost = 0 if $cost < 0;
                my $when = $r->{__REALTIME_TIMESTAMP} / 1e6;
                my $x = $u{$team} //= { day_tokens => 0, day_cost => 0, month_tokens => 0, month_cost => 0,
                                        requests => 0, edge => 0, max_seq => 0 };
                if (strftime('%Y-%m-%d', gmtime $when) eq $today) {
                        $x->{day_tokens} += $t;
                        $x->{day_cost} += $cost;
                }
                if (strftime('%Y-%m', gmtime $when) eq $month) {
                        $x->{month_tokens} += $t;
                        $x->{month_cost} += $cost;
                }
                # The minute window: clear of its edge, or unknown.
                my $age = time - $when;
                $x->{requests}++ if $age < 58;
                $x->{edge}++ if $age >= 58 && $age < 62;
                $x->{calls}++;
                $x->{max_seq} = $seq if $seq > $x->{max_seq};
        }
        my @dups = grep { $seen{$_} > 1 } keys %seen;
        return (\%u, scalar(@recs), \@dups);
}

sub teams_usage() {
        my $res = req($admin, method => 'GET', path => '/teams');
        my $j = $res->{status} == 200 ? $res->{json} : undef;
        if (!$j) {
                diag("GET /teams: $res->{status} $res->{body}");
                return {};
        }
        my %u;
        for my $t (@{$j->{teams} // []}) {
                my $w = $t->{usage} // {};
                $u{$t->{name}} = {
                        day_tokens => $w->{tokens_per_day}{used},
                        day_cost => $w->{budget_usd_per_day}{used_microusd},
                        month_cost => $w->{budget_usd_per_month}{used_microusd},
                        month_tokens => $t->{month_tokens},
                        requests => $w->{requests_per_minute}{used},
                        in_flight => $t->{in_flight},
                };
        }
        return \%u;
}

sub counters_match_journal($name) {
        subtest $name => sub {
                my ($j, $n, $dups) = journal_usage();
                my $c = teams_usage();
                ok(!@$dups, 'no settle sequence number journaled twice') or diag("duplicates: @$dups");
                ok($j->{ops} && $j->{ops}{calls} > 0, "the journal has ops's calls ($n records)");
                for my $team ('ops', 'idle') {
                        my $want = $j->{$team} // { day_tokens => 0, day_cost => 0, month_tokens => 0,
                                                    month_cost => 0, requests => 0 };
                        my $got = $c->{$team} // {};
                        is($got->{day_tokens}, $want->{day_tokens}, "$team: tokens today = journaled tokens");
                        is($got->{day_cost}, $want->{day_cost}, "$team: cost today (µUSD) = journaled cost");
                        is($got->{month_tokens}, $want->{month_tokens}, "$team: tokens this month");
                        is($got->{month_cost}, $want->{month_cost}, "$team: cost this month (µUSD)");
                        SKIP: {
                                skip "$team: calls at the edge of the minute window", 1 if $want->{edge};
                                is($got->{requests}, $want->{requests}, "$team: requests in the minute window");
                        }
                        is($got->{in_flight}, 0, "$team: nothing in flight");
                }
        };
}

sub snapshot_seq() {
        my $s = json_decode(slurp($snapshot) // '') // {};
        my ($seq) = ($s->{cursor} // '') =~ /(?:^| )seq=(\d+)/;
        return $seq;
}

# The line the broker prints once it has recovered its counters.
sub recovery_line($b, $after) {
        my ($line) = grep { /quota counters recovered/ } split /\n/, substr($b->log, $after);
        return $line // '';
}

# Worker shell loops, each a kind of call, until $stop exists.
my $stop = "$dir/stop-load";
sub start_load() {
        unlink $stop;
        my $sock = $broker->socket;
        my %bodies = (
                'chat.json' => { model => 'gpt-mini', messages => [{ role => 'user', content => 'hello' }] },
                'chat-sse.json' => { model => 'gpt-mini', stream => JSON::PP::true(),
                                     messages => [{ role => 'user', content => 'hello' }] },
                'msg.json' => { model => 'claude-haiku', max_tokens => 64,
                                messages => [{ role => 'user', content => 'hello' }] },
                'msg-sse.json' => { model => 'claude-haiku', max_tokens => 64, stream => JSON::PP::true(),
                                    messages => [{ role => 'user', content => 'hello' }] },
        );
        spew("$dir/$_", json_encode($bodies{$_})) for keys %bodies;
        my @kinds = (
                ['chat.json', '/v1/chat/completions', ''],
                ['chat.json', '/v1/chat/completions', "-H 'x-mock-cached-tokens: 3'"],
                ['chat-sse.json', '/v1/chat/completions', "-H 'x-mock-event-delay-ms: 10' -H 'x-mock-output-tokens: 30'"],
                ['msg.json', '/v1/messages', "-H 'x-mock-cached-tokens: 5' -H 'x-mock-cache-write-tokens: 2'"],
                ['msg-sse.json', '/v1/messages', "-H 'x-mock-event-delay-ms: 10' -H 'x-mock-output-tokens: 25'"],
                ['msg-sse.json', '/v1/messages', "-H 'x-mock-event-delay-ms: 3' -H 'x-mock-cache-write-tokens: 9'"],
        );
        my @pids;
        for my $k (@kinds) {
                my ($body, $path, $extra) = @$k;
                my $script = <<"SH";
i=0
while [ ! -e '$stop' ]; do
        i=\$((i + 1))
        curl -s -o /dev/null --max-time 20 --unix-socket '$sock' -H 'content-type: application/json' \\
                -H 'anthropic-version: 2023-06-01' -H "x-mock-input-tokens: \$((i % 97 + 3))" $extra \\
                --data-binary '\@$dir/$body' 'http://localhost$path' || sleep 0.05
done
SH
                push @pids, KB::spawn(cmd => ['/bin/sh', '-c', $script], output => "$dir/load.out", name => 'load');
        }
        return @pids;
}

sub stop_load(@pids) {
        spew($stop, '');
        KB::wait_pid($_, 30) // KB::stop_pid($_, 'KILL') for @pids;
}

# ------------------------------------------------------------ kill -9 under load

subtest 'kill -9 under load, restart: counters = journaled usage' => sub {
        my @load = start_load();
        # Past the first snapshot (5 s), so both the snapshot and the replay
        # of what came after it carry usage.
        ok(wait_until(15, sub { (snapshot_seq() // 0) > 0 }), 'a snapshot with settled calls was written')
                or diag($broker->log);
        sleep 2.5;
        my $s_seq = snapshot_seq();
        ok($broker->alive, 'the broker is serving under load');
        $broker->stop('KILL');
        is($broker->{status} & 127, 9, 'killed by SIGKILL');
        stop_load(@load);

        my $mark = length $broker->log;
        $broker->respawn;
        my $line = recovery_line($broker, $mark);
        like($line, qr/snapshot \(seq \Q$s_seq\E\)/, 'recovered from the last snapshot') or diag($broker->log);
        my ($replayed) = $line =~ /then (\d+) journal record\(s\) replayed/;
        my ($j) = journal_usage();
        my @own = journal_records({ MESSAGE_ID => $MID_REQUEST, KEYBROKER_INSTANCE => $instance });
        my $newer = grep { $_ > $s_seq } map { $_->{KEYBROKER_SEQ} // 0 } @own;
        ok($newer > 0, "calls settled after the snapshot were journaled ($newer)");
        is($replayed, $newer, 'exactly the records after the snapshot were replayed');
        # Replay starts where the journal was when the snapshot was taken,
        # not ten minutes before it: it reads the newer records, not all.
        like($line, qr/read since the snapshot's journal position/, "replay started at the snapshot's journal position");
        my ($read) = $line =~ /of (\d+) read/;
        ok(defined $read && $read < @own, "... and read only what came after it ($read of " . scalar(@own) . ')');
        counters_match_journal('after kill -9');

        # The sequence goes on: no number is reused by the new process.
        my $res = req($broker, path => '/v1/chat/completions', json => { model => 'gpt-mini', messages => [] });
        is($res->{status}, 200, 'serving after the restart');
        my $rec = journal_request($res->{headers}{'x-keybroker-request-id'});
        is($rec && $rec->{KEYBROKER_SEQ}, $j->{ops}{max_seq} + 1, 'settle sequence continues after the largest journaled');
        counters_match_journal('after one more call');
};

# ------------------------------------------------------------ clean restart

subtest 'SIGTERM and restart keeps the counters' => sub {
        my @load = start_load();
        sleep 1.5;
        stop_load(@load);
        my $before = teams_usage();
        $broker->stop;
        is($broker->exit_code, 0, 'clean exit');
        my $s_seq = snapshot_seq();
        my $mark = length $broker->log;
        $broker->respawn;
        my $after = teams_usage();
        for my $k (qw(day_tokens day_cost month_tokens month_cost requests)) {
                is($after->{ops}{$k}, $before->{ops}{$k}, "ops $k kept");
        }
        my ($j) = journal_usage();
        is($s_seq, $j->{ops}{max_seq}, 'the final snapshot covers every settled call');
        like(recovery_line($broker, $mark), qr/then 0 journal record\(s\) replayed/, 'nothing left to replay');
        counters_match_journal('after a clean restart');
};

# ------------------------------------------------------------ corrupt snapshot

subtest 'a corrupt snapshot: moved aside, counters rebuilt from the journal' => sub {
        my $res = req($broker, path => '/v1/messages', headers => ['anthropic-version' => '2023-06-01'],
                      json => { model => 'claude-haiku', max_tokens => 5, messages => [] });
        is($res->{status}, 200, 'one more call');
        my $before = teams_usage();
        $broker->stop('KILL');
        spew($snapshot, '{"version": 1, "teams": {"ops": {"day": "garbage"');
        my $mark = length $broker->log;
        $broker->respawn;
        my $log = substr($broker->log, $mark);
        like($log, qr/<4>quota snapshot \S+ is corrupt/, 'a loud warning') or diag($log);
        ok(-e "$snapshot.corrupt", 'the corrupt file is kept aside for a post-mortem');
        like(recovery_line($broker, $mark), qr/no snapshot \(seq 0\)/, 'rebuilt from the start of the month');
        my $after = teams_usage();
        for my $k (qw(day_tokens day_cost month_tokens month_cost requests)) {
                is($after->{ops}{$k}, $before->{ops}{$k}, "ops $k as before the crash");
        }
        counters_match_journal('after a corrupt snapshot');
        # Snapshots go on: the next one is valid again.
        ok(wait_until(10, sub { defined snapshot_seq() }), 'a fresh snapshot replaces it');
};

$broker->stop;
is($broker->exit_code, 0, 'broker exits 0');
done_testing;
