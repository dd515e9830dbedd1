#!/usr/bin/perl
# No record lost when journald is away: the test kills the journald the
# suite shares, sends traffic, brings journald back (ensure_journald) and
# finds every request record exactly once, in request order, marked
# KEYBROKER_SPOOLED=1 with its original time. Then the same across a broker
# restart: records spooled by a broker that stopped while journald was away
# are sent by the next start, before its own.
#
# journald is down for a few seconds at most, and restarted however the test
# ends (END block): other tests use it too.
use v5.36;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use KB;

if ((KB::slurp('/proc/1/comm') // '') =~ /^systemd$/) {
        plan skip_all => 'journald belongs to a running systemd here; not killing it';
}

ensure_journald();
END { eval { KB::ensure_journald() } }

my %keys = ('oai-key' => fixture_secret('oai'), 'anth-key' => fixture_secret('anth'));
my $mock = start_mock(require_key => [values %keys]);
my $broker = start_broker(config => standard_config(mock => $mock), keys => \%keys);
my $t0 = time;

sub journald_pids() {
        my $r = run_cmd(['pgrep', '-x', 'systemd-journal']);
        return grep { /^\d+$/ } split /\s+/, $r->{stdout};
}

sub kill_journald() {
        my @p = journald_pids();
        ok(@p, 'a journald runs') or return 0;
        kill 'KILL', @p;
        ok(wait_until(5, sub { !KB::journald_alive() }), 'journald is gone');
        return 1;
}

sub chat($i) {
        my %extra = $i % 3 == 0 ? (stream => JSON::PP::true()) : ();
        my $r = req($broker, path => '/v1/chat/completions',
                    json => { model => 'gpt-mini', messages => [{ role => 'user', content => "hi $i" }], %extra });
        is($r->{status}, 200, "request $i answered") or diag(KB::show_res($r));
        return $r->{headers}{'x-keybroker-request-id'};
}

sub metric($name) {
        my $r = req($broker->dir . '/admin.sock', path => '/metrics');
        return $r->{body} =~ /^\Q$name\E (\d+)$/m ? $1 : undef;
}

# Wait (up to $timeout s) until every id in @$rids has a record; returns
# the records of those ids in journal order.
sub records_of($rids, $timeout = 20) {
        my %want = map { $_ => 1 } @$rids;
        my @mine;
        wait_until($timeout, sub {
                journal_sync();
                @mine = grep { $want{$_->{KEYBROKER_REQUEST_ID} // ''} }
                        journal_records({ MESSAGE_ID => $MID_REQUEST }, since => $t0 - 2);
                my %seen = map { $_->{KEYBROKER_REQUEST_ID} => 1 } @mine;
                return keys(%seen) == keys(%want);
        }, 0.3);
        return @mine;
}

sub check_once_in_order($rids, $recs, $name) {
        subtest $name => sub {
                my %n;
                $n{$_->{KEYBROKER_REQUEST_ID}}++ for @$recs;
                is(scalar(grep { ($n{$_} // 0) == 1 } @$rids), scalar @$rids, 'every request has exactly one record');
                is(scalar(grep { ($n{$_} // 0) > 1 } @$rids), 0, 'no request has two');
                is_deeply([map { $_->{KEYBROKER_REQUEST_ID} } @$recs], $rids, 'records in request order');
        };
}

# ------------------------------------------------------------ journald away, then back

my @before = map { chat($_) } 1 .. 3;
check_once_in_order(\@before, [records_of(\@before)], 'records while journald runs');

my @away;
subtest 'journald killed: requests still answered, records spooled' => sub {
        kill_journald() or return;
        my $t = time;
        push @away, chat($_) for 1 .. 30;
        ok(time - $t < 20, 'requests were not held up');
        ok(wait_until(5, sub { (metric('keybroker_journal_spool_records') // 0) >= 30 }), 'spool holds the records')
                or diag('spool_records ' . (metric('keybroker_journal_spool_records') // 'undef'));
        cmp_ok(metric('keybroker_journal_records_spooled_total') // 0, '>=', 30, 'spooled_total counts them');
        is(metric('keybroker_journal_records_dropped_total'), 0, 'none dropped');
        my @segs = glob($broker->dir . '/state/journal-spool/*.seg');
        ok(@segs >= 1, 'spool files in state_dir/journal-spool');
};

ensure_journald();
ok(KB::journald_alive(), 'journald is back');
my @recs = records_of(\@away);
check_once_in_order(\@away, \@recs, 'every spooled record re-sent once, in order');
subtest 'spooled records say so' => sub {
        is(scalar(grep { ($_->{KEYBROKER_SPOOLED} // '') eq '1' } @recs), scalar @away, 'KEYBROKER_SPOOLED=1');
        my $ok = grep {
                my $us = $_->{KEYBROKER_REALTIME_USEC} // 0;
                $us >= ($t0 - 5) * 1e6 && $us <= (time + 5) * 1e6 && $us <= $_->{__REALTIME_TIMESTAMP}
        } @recs;
        is($ok, scalar @away, 'KEYBROKER_REALTIME_USEC is the time the record was made');
        ok(wait_until(5, sub { (metric('keybroker_journal_spool_records') // -1) == 0 }), 'spool empty again');
        is(scalar(my @s = glob($broker->dir . '/state/journal-spool/*.seg')), 0, 'no spool files left');
};

my @after = map { chat($_) } 1 .. 3;
check_once_in_order(\@after, [records_of(\@after)], 'new records flow directly again');
is(scalar(grep { ($_->{KEYBROKER_SPOOLED} // '') eq '1' } records_of(\@after)), 0, 'not spooled');

# ------------------------------------------------------------ across a broker restart

my (@old, @new);
subtest 'broker stops while journald is away' => sub {
        kill_journald() or return;
        push @old, chat($_) for 1 .. 10;
        my $t = time;
        my $st = $broker->stop;
        is($st, 0, 'broker exits 0');
        ok(time - $t < 10, 'and does not hang on the missing journald');
        ok(scalar(my @s = glob($broker->dir . '/state/journal-spool/*.seg')) >= 1, 'records left in the spool');
};
ensure_journald();
$broker->respawn;
push @new, chat($_) for 11 .. 15;
my @all = records_of([@old, @new]);
check_once_in_order([@old, @new], \@all, 'spooled records of the last run first, then the new ones');

done_testing();
