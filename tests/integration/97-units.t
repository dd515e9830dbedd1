#!/usr/bin/perl
# The systemd side of an installation, checked without touching this host:
# `make install DESTDIR=stage` lays out binaries, man pages, units,
# sysusers.d, tmpfiles.d, the catalog and the example config where systemd's
# pkg-config file says; the staged units pass `systemd-analyze verify` (their
# ExecStart= pointed into the stage, since /usr/local/sbin/keybrokerd does not
# exist here, and MANPATH at the staged man pages so Documentation= resolves);
# the service's `systemd-analyze security --offline=yes` exposure is at most
# 2.0; systemd-sysusers and systemd-tmpfiles apply the staged files to the
# stage (--root); the example config passes --check-config; `make uninstall
# DESTDIR=stage` removes exactly what was installed.
use v5.36;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use File::Find;
use KB;

my $ANALYZE = (grep { -x } map { "$_/systemd-analyze" } split(/:/, $ENV{PATH}))[0];
plan skip_all => 'systemd-analyze not installed' unless $ANALYZE;

my $ROOT = $KB::ROOT;
my @UNITS = qw(keybrokerd.service keybrokerd.socket keybrokerd-admin.socket);

sub pc_var($var, $default) {
        my $r = run_cmd(['pkg-config', "--variable=$var", 'systemd']);
        my $v = $r->{stdout} =~ s/\s+\z//r;
        return ($r->{exit} // 1) == 0 && $v ne '' ? $v : $default;
}
my $UNITDIR = pc_var('systemdsystemunitdir', '/usr/lib/systemd/system');
my $SYSUSERSDIR = pc_var('sysusersdir', '/usr/lib/sysusers.d');
my $TMPFILESDIR = pc_var('tmpfilesdir', '/usr/lib/tmpfiles.d');
my $CATALOGDIR = pc_var('catalogdir', '/usr/lib/systemd/catalog');

# The built binaries are installed as they are (-o: never rebuilt here).
sub make_target($target, @vars) {
        return run_cmd(['make', '-s', '-C', $ROOT, $target, "BUILD=$KB::BUILD",
                        '-o', "$KB::BUILD/keybrokerd", '-o', "$KB::BUILD/keybrokerctl", @vars], timeout => 120);
}

sub files_under($dir) {
        my @f;
        find({ no_chdir => 1, wanted => sub { push @f, substr($_, length $dir) if -f $_ || -l $_ } }, $dir);
        return sort @f;
}

sub unit_settings($path) {
        my %s;
        for (split /\n/, slurp($path) // '') {
                next if /^\s*[#;]/ || !/^(\w+)=(.*)$/;
                push @{$s{$1}}, $2;
        }
        return \%s;
}

my %EXPECT = (
        '/usr/local/sbin/keybrokerd' => 0755,
        '/usr/local/bin/keybrokerctl' => 0755,
        '/usr/local/share/man/man8/keybrokerd.8' => 0644,
        '/usr/local/share/man/man1/keybrokerctl.1' => 0644,
        '/usr/local/share/man/man5/keybroker.conf.5' => 0644,
        (map { ("$UNITDIR/$_" => 0644) } @UNITS),
        "$SYSUSERSDIR/keybroker.conf" => 0644,
        "$TMPFILESDIR/keybroker.conf" => 0644,
        "$CATALOGDIR/keybroker.catalog" => 0644,
        '/etc/keybroker/keybroker.conf.example' => 0644,
);

my $stage = tmpdir('stage');

subtest 'make install DESTDIR= lays out every file' => sub {
        my $r = make_target('install', "DESTDIR=$stage");
        is($r->{exit}, 0, 'make install exits 0') or diag("$r->{stdout}$r->{stderr}");
        is_deeply([files_under($stage)], [sort keys %EXPECT], 'exactly the expected files, nothing else');
        for my $f (sort keys %EXPECT) {
                my @st = stat("$stage$f");
                is(@st ? sprintf('%04o', $st[2] & 07777) : 'missing', sprintf('%04o', $EXPECT{$f}), "$f mode");
        }
        is(slurp("$stage/usr/local/sbin/keybrokerd"), slurp("$KB::BUILD/keybrokerd"), 'the built keybrokerd');
        is(slurp("$stage$CATALOGDIR/keybroker.catalog"), slurp("$ROOT/systemd/keybroker.catalog"), 'the catalog');
        my $svc = unit_settings("$stage$UNITDIR/keybrokerd.service");
        like($svc->{ExecStart}[0] // '', qr{^/usr/local/sbin/keybrokerd }, 'ExecStart= names where keybrokerd went');
};

subtest 'PREFIX moves the binaries and the unit follows' => sub {
        my $st = tmpdir('stage-usr');
        my $r = make_target('install', "DESTDIR=$st", 'PREFIX=/usr');
        is($r->{exit}, 0, 'make install PREFIX=/usr exits 0') or diag("$r->{stdout}$r->{stderr}");
        ok(-x "$st/usr/sbin/keybrokerd" && -x "$st/usr/bin/keybrokerctl", 'binaries under /usr');
        ok(-f "$st/usr/share/man/man8/keybrokerd.8", 'man pages under /usr/share/man');
        my $svc = unit_settings("$st$UNITDIR/keybrokerd.service");
        like($svc->{ExecStart}[0] // '', qr{^/usr/sbin/keybrokerd }, 'ExecStart=/usr/sbin/keybrokerd');
        $r = make_target('uninstall', "DESTDIR=$st", 'PREFIX=/usr');
        is_deeply([files_under($st)], [], 'uninstall with the same PREFIX leaves no file');
};

subtest 'the units say what the service needs' => sub {
        my $svc = unit_settings("$ROOT/systemd/keybrokerd.service");
        my %want = (
                Type => 'notify', NotifyAccess => 'main', User => 'keybroker', StateDirectory => 'keybroker',
                ConfigurationDirectory => 'keybroker', SupplementaryGroups => 'systemd-journal',
                LogRateLimitIntervalSec => '0', ProtectProc => 'default', CapabilityBoundingSet => '',
                AmbientCapabilities => '', NoNewPrivileges => 'yes', ProtectSystem => 'strict', UMask => '0077',
                LimitCORE => '0', RestrictAddressFamilies => 'AF_UNIX AF_INET AF_INET6',
                MemoryDenyWriteExecute => 'yes', SystemCallArchitectures => 'native', PrivateDevices => 'yes',
                KeyringMode => 'private', RemoveIPC => 'yes', DevicePolicy => 'closed',
        );
        is($svc->{$_}[0], $want{$_}, "$_=$want{$_}") for sort keys %want;
        like($svc->{WatchdogSec}[0] // '', qr/^\d+s$/, 'WatchdogSec= set');
        like($svc->{ExecReload}[0] // '', qr/kill -HUP \$MAINPID/, 'ExecReload= sends SIGHUP');
        is_deeply($svc->{LoadCredentialEncrypted}, ['keybroker.master:/etc/keybroker/keybroker.master.cred'],
                  'the master key comes as an encrypted credential');
        is_deeply($svc->{SystemCallFilter}, ['@system-service', '~@privileged @resources'], 'syscall filter');
        ok(!exists $svc->{RuntimeDirectory}, 'no RuntimeDirectory= (it would chown the sockets)');

        my $api = unit_settings("$ROOT/systemd/keybrokerd.socket");
        is_deeply([@{$api}{qw(ListenStream FileDescriptorName SocketMode Service)}],
                  [['/run/keybroker/api.sock'], ['api'], ['0666'], ['keybrokerd.service']], 'keybrokerd.socket: api');
        my $adm = unit_settings("$ROOT/systemd/keybrokerd-admin.socket");
        is_deeply([@{$adm}{qw(ListenStream FileDescriptorName SocketMode SocketGroup Service)}],
                  [['/run/keybroker/admin.sock'], ['admin'], ['0660'], ['keybroker-admin'], ['keybrokerd.service']],
                  'keybrokerd-admin.socket: admin');
};

subtest 'systemd-analyze verify: clean' => sub {
        my $dir = "$stage/verify";
        mkdir $dir;
        for my $u (@UNITS) {
                my $text = slurp("$stage$UNITDIR/$u") // '';
                spew("$dir/$u", $text =~ s{=/usr/local/sbin/}{=$stage/usr/local/sbin/}gr);
        }
        local $ENV{MANPATH} = "$stage/usr/local/share/man";
        local $ENV{SYSTEMD_LOG_LEVEL} = 'notice';
        my $r = run_cmd([$ANALYZE, 'verify', map { "$dir/$_" } @UNITS], timeout => 60);
        is($r->{exit}, 0, 'exit 0');
        is("$r->{stdout}$r->{stderr}", '', 'nothing to complain about');

        # The check can fail: a unit whose binary is missing does not verify.
        spew("$dir/keybrokerd.service",
             (slurp("$dir/keybrokerd.service") // '') =~ s{=\Q$stage\E/usr/local/sbin/}{=$stage/nowhere/}gr);
        $r = run_cmd([$ANALYZE, 'verify', map { "$dir/$_" } @UNITS], timeout => 60);
        isnt($r->{exit}, 0, 'a broken ExecStart= is caught');
};

subtest 'systemd-analyze security --offline=yes: exposure <= 2.0' => sub {
        my $r = run_cmd([$ANALYZE, 'security', '--offline=yes', '--no-pager', "$ROOT/systemd/keybrokerd.service"],
                        timeout => 60);
        my ($level) = $r->{stdout} =~ /Overall exposure level for keybrokerd\.service:\s*([\d.]+)/;
        ok(defined $level, 'an overall exposure level') or diag("$r->{stdout}$r->{stderr}");
        cmp_ok($level // 10, '<=', 2.0, 'exposure ' . ($level // '?') . ' <= 2.0');
        my $t = run_cmd([$ANALYZE, 'security', '--offline=yes', '--threshold=20', '--no-pager',
                         "$ROOT/systemd/keybrokerd.service"], timeout => 60);
        is($t->{exit}, 0, '--threshold=20 passes too');
};

subtest 'sysusers.d and tmpfiles.d apply to the staged root' => sub {
        my $sys = (grep { -x } map { "$_/systemd-sysusers" } split(/:/, $ENV{PATH}))[0];
        my $tmp = (grep { -x } map { "$_/systemd-tmpfiles" } split(/:/, $ENV{PATH}))[0];
        plan skip_all => 'systemd-sysusers or systemd-tmpfiles missing' unless $sys && $tmp;
        my $r = run_cmd([$sys, "--root=$stage", 'keybroker.conf']);
        is($r->{exit}, 0, 'systemd-sysusers --root') or diag($r->{stderr});
        my ($uid, $gid) = (slurp("$stage/etc/passwd") // '') =~ /^keybroker:x:(\d+):(\d+):[^:]*:\/var\/lib\/keybroker:/m;
        ok(defined $uid, 'user keybroker, home /var/lib/keybroker');
        my ($admin) = (slurp("$stage/etc/group") // '') =~ /^keybroker-admin:x:(\d+):/m;
        ok(defined $admin, 'group keybroker-admin');

        $r = run_cmd([$tmp, "--root=$stage", '--create', 'keybroker.conf']);
        is($r->{exit}, 0, 'systemd-tmpfiles --root --create') or diag($r->{stderr});
        my %dirs = ('/etc/keybroker' => [0750, 0, $gid], '/var/lib/keybroker' => [0700, $uid, $gid],
                    '/run/keybroker' => [0755, 0, 0]);
        for my $d (sort keys %dirs) {
                my @st = stat("$stage$d");
                is_deeply(@st ? [$st[2] & 07777, $st[4], $st[5]] : [], $dirs{$d},
                          sprintf('%s %04o %s:%s', $d, $dirs{$d}[0], $dirs{$d}[1] // '?', $dirs{$d}[2] // '?'));
        }
};

subtest 'the example config is valid' => sub {
        my $d = tmpdir('example');
        mkdir "$d/creds";
        spew("$d/creds/$_", fixture_secret($_) . "\n", 0600) for qw(openai-prod anthropic-prod);
        spew("$d/creds/keybroker.master", 'k' x 32, 0600);
        # keybroker-admin exists only once sysusers.d ran on the host.
        my $text = (slurp("$stage/etc/keybroker/keybroker.conf.example") // '')
                =~ s/keybroker-admin/root/gr =~ s{/var/lib/keybroker}{$d}gr;
        spew("$d/keybroker.conf", $text);
        local $ENV{CREDENTIALS_DIRECTORY} = "$d/creds";
        my $r = run_cmd([$KB::KEYBROKERD, '--check-config', '--config', "$d/keybroker.conf"]);
        is($r->{exit}, 0, 'keybrokerd --check-config accepts it') or diag("$r->{stdout}$r->{stderr}");
};

subtest 'make uninstall DESTDIR= removes exactly what install put' => sub {
        spew("$stage/etc/keybroker/keybroker.conf", "# the admin's own\n");
        my $r = make_target('uninstall', "DESTDIR=$stage");
        is($r->{exit}, 0, 'make uninstall exits 0') or diag("$r->{stdout}$r->{stderr}");
        ok(!-e "$stage$_", "$_ removed") for sort keys %EXPECT;
        ok(-f "$stage/etc/keybroker/keybroker.conf", "the admin's keybroker.conf stays");
        ok(-f "$stage/etc/passwd", 'files install did not put stay');
};

done_testing;
