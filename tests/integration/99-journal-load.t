#!/usr/bin/perl
# Under sustained load the journal holds exactly one record per request:
# 20,000 requests from 8 keep-alive clients → 20,000 request records, one
# per x-keybroker-request-id, none dropped (the writer spills to the spool
# rather than drop when journald falls behind). KB_LOAD_REQUESTS=N changes
# the count.
use v5.36;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Socket::UNIX;
use POSIX qw(_exit);
use Socket qw(SOCK_STREAM);
use Time::HiRes qw(time);
use KB;

my $TOTAL = $ENV{KB_LOAD_REQUESTS} // 20000;
my $WORKERS = 8;

ensure_journald();
my %keys = ('oai-key' => fixture_secret('oai'), 'anth-key' => fixture_secret('anth'));
my $mock = start_mock(require_key => [values %keys]);
my $cfg = standard_config(mock => $mock);
$cfg->{'team:ops'}{requests_per_minute} = 0;
$cfg->{'team:ops'}{tokens_per_minute} = 0;
my $broker = start_broker(config => $cfg, keys => \%keys);

# One keep-alive connection, blocking I/O: send a request, read the whole
# response (content-length or chunked), return (status, request id).
sub roundtrip($sock, $req) {
        my $buf = '';
        print {$sock} $req or return;
        while ($buf !~ /\r\n\r\n/) {
                sysread($sock, $buf, 65536, length $buf) or return;
        }
        my ($head, $rest) = split /\r\n\r\n/, $buf, 2;
        my ($status) = $head =~ m{^HTTP/1\.\d (\d+)};
        my ($rid) = $head =~ /^x-keybroker-request-id:\s*(\S+)/mi;
        if ($head =~ /^content-length:\s*(\d+)/mi) {
                my $len = $1;
                while (length $rest < $len) {
                        sysread($sock, $rest, 65536, length $rest) or return;
                }
        } elsif ($head =~ /^transfer-encoding:\s*chunked/mi) {
                while ($rest !~ /(?:^|\r\n)0\r\n\r\n\z/) {
                        sysread($sock, $rest, 65536, length $rest) or return;
                }
        }
        return ($status, $rid);
}

my $dir = KB::tmpdir('load');
my $body = '{"model":"gpt-mini","messages":[{"role":"user","content":"load"}]}';
my $req = "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        . 'Content-Length: ' . length($body) . "\r\n\r\n$body";

my $t0 = time;
my @pids;
for my $w (0 .. $WORKERS - 1) {
        my $n = int($TOTAL / $WORKERS) + ($w < $TOTAL % $WORKERS ? 1 : 0);
        my $pid = fork // die "fork: $!";
        if (!$pid) {
                open(my $out, '>', "$dir/ids.$w") or _exit(2);
                my $sock = IO::Socket::UNIX->new(Type => SOCK_STREAM, Peer => $broker->socket) or _exit(3);
                $sock->autoflush(1);
                for (1 .. $n) {
                        my ($st, $rid) = roundtrip($sock, $req);
                        if (!defined $st) { # the broker closed the keep-alive connection: reconnect
                                $sock = IO::Socket::UNIX->new(Type => SOCK_STREAM, Peer => $broker->socket) or _exit(3);
                                $sock->autoflush(1);
                                ($st, $rid) = roundtrip($sock, $req);
                        }
                        print $out ($st // 'none'), ' ', ($rid // '-'), "\n";
                }
                close($out) or _exit(4);
                _exit(0);
        }
        push @pids, $pid;
}
my $bad_workers = 0;
for my $pid (@pids) {
        waitpid($pid, 0);
        $bad_workers++ if $?;
}
my $elapsed = time - $t0;
is($bad_workers, 0, "$WORKERS client processes finished");

my (%ids, %status);
for my $w (0 .. $WORKERS - 1) {
        for my $l (split /\n/, KB::slurp("$dir/ids.$w") // '') {
                my ($st, $rid) = split / /, $l;
                $status{$st}++;
                $ids{$rid}++ if $rid ne '-';
        }
}
is($status{200} // 0, $TOTAL, "$TOTAL requests answered 200") or diag(explain(\%status));
is(scalar(keys %ids), $TOTAL, 'each with its own request id');
note(sprintf('%d requests in %.1f s (%.0f req/s)', $TOTAL, $elapsed, $TOTAL / ($elapsed || 1)));

# Wait for the writer (and journald) to catch up, then count records by id.
my %n;
my $found = 0;
wait_until(60, sub {
        journal_sync();
        # _PID alone is not this broker: over a long journal PIDs come round
        # again (as Broker->journal does, only since its start).
        my $r = run_cmd(['journalctl', '-q', '--no-pager', '--all', '-o', 'cat',
                         '--since', '@' . int($broker->started_at - 2),
                         '--output-fields=KEYBROKER_REQUEST_ID', "_PID=" . $broker->pid,
                         "MESSAGE_ID=$MID_REQUEST"], timeout => 60);
        %n = ();
        $n{$_}++ for grep { /^[0-9a-f]{32}$/ } split /\n/, $r->{stdout};
        $found = grep { $n{$_} } keys %ids;
        return $found == $TOTAL;
}, 1);
is($found, $TOTAL, "a journal record for each of the $TOTAL requests");
is(scalar(grep { $n{$_} > 1 } keys %n), 0, 'no request has two records');
is(scalar(grep { !$ids{$_} } keys %n), 0, 'no record for a request nobody made');

my $m = req($broker->dir . '/admin.sock', path => '/metrics')->{body} // '';
like($m, qr/^keybroker_journal_records_dropped_total 0$/m, 'the writer dropped nothing');
my ($spooled) = $m =~ /^keybroker_journal_records_spooled_total (\d+)$/m;
note("records that went through the spool: " . ($spooled // '?'));
like($m, qr/^keybroker_requests_total\{team="ops",model="gpt-mini",route="oai",outcome="ok"\} $TOTAL$/m,
     'metrics count every request');

done_testing();
