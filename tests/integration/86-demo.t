#!/usr/bin/env perl
# The demo (`make run`, tests/demo/run.sh) passes its own checks: every
# command its banner prints works as pasted — the curl call, the journalctl
# line (which shows that very call), keybrokerctl status / team list /
# route check on each demo route / whoami / usage through the environment
# variables it exports, and the catalog preview.
#
# KB_DEMO_MAKE=1 starts it through `make run` instead (.ci/run does so with
# Debian 12's own Node 18 first on PATH: make run needs no Node at all).
use v5.36;
use FindBin;
use lib "$FindBin::Bin/lib";
use KB;
use Test::More;
use Time::HiRes qw(time sleep);

ensure_journald();
my $dir = tmpdir('demo');
my @cmd = $ENV{KB_DEMO_MAKE} ? ('make', '-s', '-C', $KB::ROOT, 'run') : ("$KB::ROOT/tests/demo/run.sh");
my $out = "$dir/demo.out";
my $t0 = time;
my $pid = do {
        local $ENV{KB_DEMO_DIR} = "$dir/run";
        local $ENV{KB_DEMO_TEST_TRAFFIC} = 1;
        # its own process group: the demo's mock and broker stop with it
        KB::spawn(cmd => ['setsid', @cmd], output => $out, name => 'demo');
};
my $up = wait_until($ENV{KB_DEMO_MAKE} ? 120 : 20, sub { (slurp($out) // '') =~ /listening on / });
ok($up, 'the demo broker listens') or diag(slurp($out));
note(sprintf('banner to listening: %.1f s', time - $t0));
my $banner = slurp($out) // '';

# The commands: indented lines between "Try" and "Ctrl-C", with their
# backslash continuations joined.
my ($body) = $banner =~ /^Try, from another terminal:\n(.*?)^Ctrl-C/ms;
my @cmds;
my $cur = '';
for my $l (split /\n/, $body // '') {
        next unless $l =~ /^  \S/ || length $cur;
        $cur .= ($cur ? "\n" : '') . $l;
        next if $l =~ /\\$/;
        push @cmds, $cur =~ s/^\s+//r;
        $cur = '';
}
my ($export) = grep { /^export / } @cmds;
ok($export, 'the banner exports the socket variables') or diag($banner);
like($export // '', qr/KEYBROKER_ADMIN_SOCKET=\S+admin\.sock/, '... KEYBROKER_ADMIN_SOCKET');
like($export // '', qr/KEYBROKER_SOCKET=\S+api\.sock/, '... KEYBROKER_SOCKET');

sub run_pasted($c) {
        my $r = run_cmd(['sh', '-c', join("\n", grep { defined } $export, $c)], timeout => 60);
        is($r->{exit}, 0, "as pasted: $c") or diag("$r->{stdout}\n$r->{stderr}");
        return $r->{stdout};
}

my %want = (
        qr/^curl / => qr/"object":"chat\.completion"/,
        qr/^journalctl -o verbose/ => qr/(?=(?s:.*)KEYBROKER_ENDPOINT=chat\n)(?=(?s:.*)KEYBROKER_TEAM=demo\n)/,
        qr/keybrokerctl status$/ => qr/^version:/m,
        qr/keybrokerctl team list$/ => qr/^demo\s/m,
        qr/keybrokerctl route check / => qr/^all checks passed$/m,
        qr/keybrokerctl whoami$/ => qr/^team\s+demo$/m,
        qr/keybrokerctl usage / => qr/^TEAM\s+REQUESTS/m,
        qr/--dump-catalog / => qr/^Subject: keybroker request/m,
);
my %seen;
my $rid;
for my $c (grep { !/^export / } @cmds) {
        my ($pat) = grep { $c =~ $_ } keys %want;
        ok($pat, "a command this test knows: $c") or next;
        $seen{$pat}++;
        my $o = run_pasted($c);
        like($o, $want{$pat}, "... and it shows what it should") or diag($o);
        ($rid) = $o =~ /"id":"(chatcmpl-[^"]+)"/ if $c =~ /^curl /;
        # The journalctl line must show the chat call just made: its record.
        journal_sync() if $c =~ /^curl /;
}
is(scalar(keys %seen), scalar(keys %want), 'the banner offers every kind of command');
is($seen{ (grep { "$_" =~ /route check/ } keys %want)[0] }, 2, 'route check on both demo routes');

kill 'TERM', -$pid;
ok(defined KB::wait_pid($pid, 20), 'the demo stops on SIGTERM');
done_testing;
