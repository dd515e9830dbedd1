#!/usr/bin/env perl
# Fleet usage: two brokers on two "hosts" (their own UTS namespaces, so
# gethostname() differs), their records shipped by the real
# systemd-journal-upload to the real systemd-journal-remote on loopback, and
# `keybrokerctl usage --directory` over what was collected: --by host and
# the totals equal what each broker journaled. A record is placed by its own
# time (KEYBROKER_REALTIME_USEC), not by when a journal received it.
use v5.36;
use FindBin;
use lib "$FindBin::Bin/lib";
use KB;
use Test::More;
use Time::HiRes qw(time sleep);

my $REMOTE = '/lib/systemd/systemd-journal-remote';
my $UPLOAD = '/lib/systemd/systemd-journal-upload';
plan skip_all => "systemd-journal-remote is not installed (make deps installs it)" unless -x $REMOTE && -x $UPLOAD;

my $CTL = "$KB::BUILD/keybrokerctl";
ensure_journald();
my %keys = ('oai-key' => fixture_secret('oai'), 'anth-key' => fixture_secret('anth'));
my $mock = start_mock();
my $dir = tmpdir('fleet');
mkdir "$dir/remote" or die;

sub usage_json(@args) {
        my $r = run_cmd([$CTL, 'usage', '--json', @args]);
        is($r->{exit}, 0, "usage @args: exit 0") or diag($r->{stderr});
        return json_decode($r->{stdout}) // {};
}

sub groups_by($j, @keys) {
        return { map { my $g = $_; (join(',', map { $g->{$_} } @keys) => $g) } @{$j->{groups} // []} };
}

subtest 'collected with journal-upload -> journal-remote, reported --by host' => sub {
        my $port = free_port();
        my $remote = KB::spawn(cmd => [$REMOTE, "--listen-http=127.0.0.1:$port", '--split-mode=none',
                                       "--output=$dir/remote/fleet.journal"],
                               output => "$dir/remote.log", name => 'journal-remote');
        ok(wait_until(10, sub { IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port") }),
           'systemd-journal-remote listens on loopback') or diag(slurp("$dir/remote.log"));

        journal_sync();
        my ($cursor) = run_cmd(['journalctl', '-n', '0', '--show-cursor', '-q'])->{stdout} =~ /^-- cursor: (\S+)/m;
        ok($cursor, 'the journal cursor before the brokers start');

        my $team = 'fleet-' . KB::random_hex(4);
        my %sent = ('kb-host-a' => 3, 'kb-host-b' => 2);
        my (%journaled, %tokens);
        for my $host (sort keys %sent) {
                my $cfg = standard_config(mock => $mock);
                $cfg->{"team:$team"} = { users => '0', models => '*' };
                delete $cfg->{'team:ops'};
                my $b = start_broker(config => $cfg, keys => \%keys,
                                     wrap => ['unshare', '--uts', '--', 'sh', '-c', 'hostname "$0" && exec "$@"', $host]);
                for my $i (1 .. $sent{$host}) {
                        my $res = req($b, path => '/v1/chat/completions', headers => ['x-mock-input-tokens' => 10 * $i],
                                      json => { model => 'gpt-mini', messages => [] });
                        is($res->{status}, 200, "$host: call $i");
                }
                my @recs = $b->journal_wait({ MESSAGE_ID => $KB::MID_REQUEST, KEYBROKER_TEAM => $team }, 10,
                                            count => $sent{$host});
                is(scalar(@recs), $sent{$host}, "$host: $sent{$host} records in this host's journal");
                is(scalar(grep { ($_->{KEYBROKER_HOST} // '') eq $host } @recs), $sent{$host},
                   "... each with KEYBROKER_HOST=$host");
                is(scalar(grep { ($_->{KEYBROKER_REALTIME_USEC} // '') =~ /^\d{16}$/ } @recs), $sent{$host},
                   '... and KEYBROKER_REALTIME_USEC');
                $journaled{$host} = scalar(@recs);
                $tokens{$host} += $_->{KEYBROKER_INPUT_TOKENS} for @recs;
                is($b->stop, 0, "$host: broker exits 0");
        }
        journal_sync();

        my $up = run_cmd([$UPLOAD, "--url=http://127.0.0.1:$port", "--after-cursor=$cursor", '--follow=no',
                          "--save-state=$dir/upload.state"], timeout => 60);
        is($up->{exit}, 0, 'systemd-journal-upload ships the records') or diag($up->{stderr});

        my $j;
        ok(wait_until(10, sub {
                $j = usage_json('--directory', "$dir/remote", '--by', 'host', '--team', $team, '--include-tests');
                ($j->{total}{requests} // 0) == 5;
        }), 'usage --directory over the collected journal sees all 5 calls')
                or diag(explain($j));
        my $g = groups_by($j, 'host');
        is_deeply([sort keys %$g], [sort keys %sent], 'one group per host');
        for my $host (sort keys %sent) {
                is($g->{$host}{requests}, $journaled{$host}, "$host: requests = its journaled records");
                is($g->{$host}{input_tokens}, $tokens{$host}, "$host: input tokens = its journaled ones");
        }
        is($j->{total}{input_tokens}, $tokens{'kb-host-a'} + $tokens{'kb-host-b'}, 'the total is the sum of the hosts');

        my $j2 = usage_json('--directory', "$dir/remote", '--by', 'host,team', '--team', $team, '--include-tests');
        is(scalar(@{$j2->{groups} // []}), 2, '--by host,team');
        my $none = usage_json('--directory', "$dir/remote", '--by', 'host', '--team', $team);
        is($none->{total}{requests}, 0, 'test brokers\' records are left out without --include-tests');

        kill 'TERM', $remote;
        ok(defined KB::wait_pid($remote, 10), 'journal-remote stops');
};

subtest 'a record is placed by its own time, not by when it was received' => sub {
        # Journal export format through journal-remote: received on
        # 2025-11-24, finished on 2025-11-23 (a record that waited in a spool).
        my $file = "$dir/late/late.journal";
        mkdir "$dir/late" or die;
        my $entry = join('', map { "$_\n" } '__REALTIME_TIMESTAMP=1764000000000000', '__MONOTONIC_TIMESTAMP=123',
                         '_BOOT_ID=5e642efc6c204a878c6971b3810af403', 'MESSAGE_ID=' . $KB::MID_REQUEST,
                         'SYSLOG_IDENTIFIER=keybrokerd', 'MESSAGE=late', 'KEYBROKER_TEAM=late',
                         'KEYBROKER_REALTIME_USEC=1763900000000000', 'KEYBROKER_HOST=kb-host-c',
                         'KEYBROKER_INPUT_TOKENS=5') . "\n";
        my $r = run_cmd([$REMOTE, '--split-mode=none', "--output=$file", '-'], stdin => $entry);
        is($r->{exit}, 0, 'journal-remote writes the entry') or diag($r->{stderr});
        my $j = usage_json('--directory', "$dir/late", '--by', 'host,day');
        is_deeply([map { "$_->{host} $_->{day}" } @{$j->{groups} // []}], ['kb-host-c 2025-11-23'],
                  '--by day: the day it finished, not the day it was received');
        is(usage_json('--directory', "$dir/late", '--since', '2025-11-23', '--until', '2025-11-23 23:59:59')
                   ->{total}{requests}, 1, '--since/--until select it by its own time');
        is(usage_json('--directory', "$dir/late", '--since', '2025-11-24')->{total}{requests}, 0,
           '... and leave it out of the day it was received');
};

done_testing;
