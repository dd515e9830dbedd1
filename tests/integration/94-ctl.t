#!/usr/bin/perl
# keybrokerctl, the ops CLI, against a real keybrokerd: usage errors exit 2,
# --help everywhere, an unreachable socket exits 1 and says where; status,
# team list and route list tables and their --json; the key life cycle
# (set from a pipe, rotate, rollback, delete one version, refuse deleting
# the active one, delete all) with secrets read from stdin only and never
# printed; a secret typed on the command line is refused and not sent;
# reload and a rejected reload with FILE:LINE; a non-admin uid gets the 403
# message; the no-echo tty prompt.
use v5.36;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use KB;

my $CTL = $ENV{KEYBROKERCTL} // "$KB::BUILD/keybrokerctl";
plan skip_all => "keybrokerctl not built: $CTL" unless -x $CTL;

my @outputs;    # every stdout/stderr keybrokerctl produced, to grep for secrets

sub ctl($args, %o) {
        my @pre = $o{uid} ? ('setpriv', "--reuid=$o{uid}", "--regid=$o{uid}", '--clear-groups', '--') : ();
        my $r = run_cmd([@pre, $CTL, @$args], %o);
        push @outputs, $r->{stdout}, $r->{stderr};
        note('keybrokerctl ' . join(' ', @$args) . " -> exit " . ($r->{exit} // 'signal') . "\n$r->{stdout}$r->{stderr}")
                if $ENV{KB_VERBOSE};
        return $r;
}

sub ctl_ok($args, $name, %o) {
        my $r = ctl($args, %o);
        is($r->{exit}, 0, $name) or diag("stdout: $r->{stdout}\nstderr: $r->{stderr}");
        return $r;
}

# ------------------------------------------------------------ without a daemon

subtest 'usage errors exit 2' => sub {
        for my $c ([[], 'no command'], [['frobnicate'], 'unknown command'], [['--frob'], 'unknown option'],
                   [['key'], 'key without a subcommand'], [['key', 'frob'], 'unknown key subcommand'],
                   [['key', 'set'], 'key set without NAME'], [['key', 'rotate'], 'key rotate without NAME'],
                   [['key', 'rollback'], 'key rollback without NAME'], [['key', 'delete'], 'key delete without NAME'],
                   [['key', 'delete', 'x', '--version', 'abc'], '--version abc'],
                   [['key', 'delete', 'x', '--version', '0'], '--version 0'],
                   [['key', 'delete', 'x', '--version', '-1'], '--version -1'],
                   [['key', 'delete', 'x', '--version'], '--version without a value'],
                   [['key', 'list', 'extra'], 'key list with an extra argument'],
                   [['team'], 'team without a subcommand'], [['route', 'frob'], 'unknown route subcommand'],
                   [['status', '--frob'], 'unknown command option'], [['--admin-socket'], '--admin-socket without PATH']) {
                my ($args, $name) = @$c;
                my $r = ctl($args, stdin => "should-not-be-read\n");
                is($r->{exit}, 2, "$name: exit 2");
                like($r->{stderr}, qr/^keybrokerctl/, "$name: says why on stderr");
        }
};

subtest '--help exits 0 for the tool and every command' => sub {
        for my $c (['--help'], ['-h'], ['help'], ['status', '--help'], ['key', '--help'], ['key', 'list', '--help'],
                   ['key', 'set', '--help'], ['key', 'rotate', '-h'], ['key', 'rollback', '--help'],
                   ['key', 'delete', '--help'], ['team', '--help'], ['team', 'list', '--help'],
                   ['route', '--help'], ['route', 'list', '--help'], ['reload', '--help'], ['whoami', '--help']) {
                my $r = ctl($c);
                is($r->{exit}, 0, "@$c: exit 0");
                like($r->{stdout}, qr/^Usage: keybrokerctl/, "@$c: usage on stdout");
        }
        my $r = ctl(['--help']);
        like($r->{stdout}, qr/\Q$_\E/, "top-level help names '$_'")
                for ('status', 'key list', 'key set NAME', 'key rotate NAME', 'key rollback NAME',
                     'key delete NAME [--version N]', 'team list', 'route list', 'reload', 'whoami',
                     '--admin-socket PATH', '--json', '/run/keybroker/admin.sock');
        $r = ctl(['--version']);
        is($r->{exit}, 0, '--version exits 0');
        like($r->{stdout}, qr/^keybrokerctl \d+\.\d+\.\d+$/m, '--version prints the version');
};

subtest 'an unreachable socket exits 1 and says where' => sub {
        my $d = tmpdir('ctl');
        for my $args (['--admin-socket', "$d/nope.sock", 'status'], ['key', 'list', '--admin-socket', "$d/nope.sock"],
                      ['--admin-socket=' . "$d/nope.sock", '--json', 'route', 'list']) {
                my $r = ctl($args);
                is($r->{exit}, 1, "@$args: exit 1");
                like($r->{stderr}, qr/^keybrokerctl: cannot reach keybrokerd at \Q$d\E\/nope\.sock: \S/,
                     "@$args: message names the socket and the reason");
                is($r->{stdout}, '', "@$args: nothing on stdout");
        }
};

# ------------------------------------------------------------ with a daemon

ensure_journald();
my %creds = ('oai-key' => fixture_secret('oai'), 'keybroker.master' => KB::random_hex(32));
my $mock = start_mock();
my $cfg = standard_config(mock => $mock);
# A text config: master_key must point into the broker's own temp dir (@DIR@).
$cfg->{agent} = {
        listen => '@DIR@/api.sock', listen_mode => '0666', admin => '@DIR@/admin.sock',
        credentials_dir => '@DIR@/creds', state_dir => '@DIR@/state', keystore => '@DIR@/state/keys.sealed',
        master_key => '@DIR@/creds/keybroker.master',
};
my $broker = start_broker(config => KB::render_config($cfg), keys => \%creds);
my $dir = $broker->dir;
my $admin = "$dir/admin.sock";
if (!ok(wait_until(5, sub { -S $admin }), 'the admin socket exists')) {
        diag("keybrokerd made no admin socket at $admin; log:\n" . $broker->log);
        done_testing();
        exit;
}
my @A = ('--admin-socket', $admin);

subtest 'status' => sub {
        my $r = ctl_ok([@A, 'status'], 'status exits 0');
        like($r->{stdout}, qr/^version:\s+\d+\.\d+\.\d+$/m, 'version line');
        like($r->{stdout}, qr/^pid:\s+${\ $broker->pid}$/m, 'pid line is the broker');
        like($r->{stdout}, qr/^config:\s+\Q${\ $broker->conf}\E$/m, 'config line');
        like($r->{stdout}, qr/^uptime:\s+\d/m, 'uptime line');
        like($r->{stdout}, qr/^dumpable:\s+no$/m, 'not dumpable');
        like($r->{stdout}, qr/^core limit:\s+0$/m, 'no core dumps');

        $r = ctl_ok(['status', '--json', @A], 'status --json (options after the command) exits 0');
        my $j = json_decode($r->{stdout});
        ok($j, '--json output parses') or diag($r->{stdout});
        is($j->{pid}, $broker->pid, 'json pid');
        is($j->{config}, $broker->conf, 'json config');
        ok(defined $j->{dumpable} && !$j->{dumpable}, 'json dumpable false');
        is($j->{core_limit}, 0, 'json core_limit 0');
        like($r->{stdout}, qr/^\{\n  "/, '--json is indented');
};

subtest 'team list' => sub {
        my $r = ctl_ok([@A, 'team', 'list'], 'team list exits 0');
        my @l = split /\n/, $r->{stdout};
        like($l[0], qr/^NAME\s+MEMBERS\s+MODELS\s+LIMITS\s+OWNER$/, 'header row');
        my ($ops) = grep { /^ops\s/ } @l;
        my ($search) = grep { /^search\s/ } @l;
        like($ops // '', qr/^ops\s+uid:0\s+\*\s+rpm=600 tpm=100000\b.*\sops\@example\.com$/, 'ops row');
        like($search // '', qr/^search\s+uid:1001 gid:2001\s+\S*gpt-mini\S*\s+.*\s-$/, 'search row');
        like($search // '', qr/claude-haiku/, 'search row names both models');
        # Aligned: every column starts where its header does.
        my $col = index($l[0], 'MODELS');
        is(index($ops // '', '*'), $col, 'MODELS column aligned');

        $r = ctl_ok([@A, '--json', 'team', 'list'], 'team list --json exits 0');
        my $j = json_decode($r->{stdout});
        my %t = map { $_->{name} => $_ } @{$j->{teams} // []};
        is_deeply([sort keys %t], ['ops', 'search'], 'json teams');
        is_deeply($t{search}{users}, [1001], 'json search users');
        is_deeply($t{search}{groups}, [2001], 'json search groups');
        is($t{ops}{limits}{requests_per_minute}, 600, 'json ops rpm');
        is($t{ops}{owner}, 'ops@example.com', 'json ops owner');
};

subtest 'route list' => sub {
        my $base = $mock->base_url;
        my $r = ctl_ok([@A, 'route', 'list'], 'route list exits 0');
        my @l = split /\n/, $r->{stdout};
        like($l[0], qr/^NAME\s+FAMILY\s+BASE URL\s+KEY\s+AUTH\s+CIRCUIT\s+ERRORS\s+P50\s+TARGETS$/, 'header row');
        my ($oai) = grep { /^oai\s/ } @l;
        my ($anth) = grep { /^anth\s/ } @l;
        like($oai // '', qr/^oai\s+openai\s+\Q$base\E\s+oai-key\@\d+\s+bearer\s+.*gpt-mini->gpt-4o-mini-2024-07-18/,
             'oai row: credentials key present');
        like($anth // '', qr/^anth\s+anthropic\s+\Q$base\E\s+anth-key \(missing\)\s+x-api-key\s+closed\s+\S+\s+\S+\s+claude-haiku->claude-3-5-haiku-20241022/,
             'anth row: key missing');

        $r = ctl_ok([@A, 'route', 'list', '--json'], 'route list --json exits 0');
        my $j = json_decode($r->{stdout});
        my %rt = map { $_->{name} => $_ } @{$j->{routes} // []};
        is_deeply([sort keys %rt], ['anth', 'oai'], 'json routes');
        is($rt{anth}{key}, 'anth-key', 'json anth key');
        ok(!defined $rt{anth}{key_version}, 'json anth key_version null (missing)');
        is($rt{oai}{family}, 'openai', 'json oai family');
        is($rt{oai}{base_url}, $base, 'json oai base_url');
        ok((grep { $_->{model} eq 'gpt-mini' && $_->{upstream_model} eq 'gpt-4o-mini-2024-07-18' } @{$rt{oai}{targets} // []}),
           'json oai targets');
};

my %secret = map { $_ => fixture_secret("ctl$_") } 1 .. 5;

sub key_row($name) {
        my $r = ctl([@A, 'key', 'list']);
        my ($row) = grep { /^\Q$name\E\s/ } split /\n/, $r->{stdout};
        return $row;
}

sub key_json($name) {
        my $r = ctl([@A, '--json', 'key', 'list']);
        my $j = json_decode($r->{stdout}) // return undef;
        my ($k) = grep { $_->{name} eq $name } @{$j->{keys} // []};
        return $k;
}

my ($fp1, $fp2);
subtest 'key set from a pipe, then key list' => sub {
        my $r = ctl_ok([@A, 'key', 'set', 'ctl-key'], 'key set exits 0', stdin => "$secret{1}\n");
        like($r->{stdout}, qr/^ctl-key: version 1 active \(fingerprint ([0-9a-f]{16})\)$/, 'confirmation line');
        ($fp1) = $r->{stdout} =~ /fingerprint ([0-9a-f]{16})/;

        $r = ctl_ok([@A, 'key', 'list'], 'key list exits 0');
        like($r->{stdout}, qr/^NAME\s+ACTIVE\s+VERSIONS\s+FINGERPRINT\s+CREATED\s+LAST USED\s+USES$/m, 'header row');
        like(key_row('ctl-key') // '', qr/^ctl-key\s+1\s+1\s+\Q${\ ($fp1 \/\/ 'x')}\E\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\b.*\s\d+$/,
             'row: active 1, versions 1, fingerprint, created, uses');

        my $k = key_json('ctl-key');
        ok($k, 'key list --json has ctl-key');
        is($k->{active_version}, 1, 'json active_version 1');
        is_deeply([map { $_->{version} } @{$k->{versions} // []}], [1], 'json versions [1]');
        is($k->{versions}[0]{fingerprint}, $fp1, 'json fingerprint matches the confirmation');

        $r = ctl([@A, 'key', 'set', 'ctl-key'], stdin => "$secret{2}\n");
        is($r->{exit}, 1, 'key set on an existing name exits 1 (If-None-Match: *)');
        like($r->{stderr}, qr/^keybrokerctl: \S/, '... with the daemon\'s message');

        $r = ctl([@A, 'key', 'set', 'ctl-empty'], stdin => "\n");
        is($r->{exit}, 1, 'an empty secret exits 1');
        like($r->{stderr}, qr/empty/, '... saying it is empty');
        $r = ctl([@A, 'key', 'set', 'ctl-long'], stdin => ('x' x 4097) . "\n");
        is($r->{exit}, 1, 'a secret over 4096 bytes exits 1');
        like($r->{stderr}, qr/secret longer than 4096 bytes/, '... saying so');
        ok(!key_json('ctl-empty') && !key_json('ctl-long'), 'neither was stored');
};

subtest 'key rotate, rollback, delete' => sub {
        my $r = ctl_ok([@A, 'key', 'rotate', 'ctl-key'], 'key rotate exits 0', stdin => $secret{2});
        like($r->{stdout}, qr/^ctl-key: version 2 active \(fingerprint ([0-9a-f]{16})\)$/, 'rotated to version 2');
        ($fp2) = $r->{stdout} =~ /fingerprint ([0-9a-f]{16})/;
        isnt($fp2, $fp1, 'a new fingerprint');
        like(key_row('ctl-key') // '', qr/^ctl-key\s+2\s+1,2\s+\Q${\ ($fp2 \/\/ 'x')}\E\s/, 'list: active 2, versions 1,2');

        $r = ctl([@A, 'key', 'rotate', 'ctl-nope'], stdin => "$secret{3}\n");
        is($r->{exit}, 1, 'rotating a name without a key exits 1 (If-Match: *)');
        ok(!key_json('ctl-nope'), '... and creates nothing');

        $r = ctl_ok([@A, 'key', 'rollback', 'ctl-key'], 'key rollback exits 0');
        like($r->{stdout}, qr/^ctl-key: version 1 active \(fingerprint \Q${\ ($fp1 \/\/ 'x')}\E\)$/, 'back to version 1');
        like(key_row('ctl-key') // '', qr/^ctl-key\s+1\s+1,2\s+\Q${\ ($fp1 \/\/ 'x')}\E\s/, 'list: active 1, versions 1,2');

        $r = ctl([@A, 'key', 'rollback', 'ctl-key']);
        is($r->{exit}, 1, 'rollback with no older version exits 1');

        $r = ctl_ok([@A, 'key', 'delete', 'ctl-key', '--version', '2'], 'delete --version 2 exits 0');
        like($r->{stdout}, qr/^ctl-key: deleted version 2$/, 'confirmation line');
        like(key_row('ctl-key') // '', qr/^ctl-key\s+1\s+1\s/, 'list: versions 1');

        $r = ctl([@A, 'key', 'delete', 'ctl-key', '--version', '1']);
        is($r->{exit}, 1, 'deleting the active version exits 1');
        like($r->{stderr}, qr/^keybrokerctl: .*active/, '... with the daemon\'s message');
        like(key_row('ctl-key') // '', qr/^ctl-key\s+1\s+1\s/, '... and the version stays');

        $r = ctl([@A, 'key', 'delete', 'ctl-nope']);
        is($r->{exit}, 1, 'deleting an unknown key exits 1');
};

subtest 'a secret on the command line is refused and not sent' => sub {
        my $r = ctl([@A, 'key', 'rotate', 'ctl-key', $secret{3}], stdin => "$secret{4}\n");
        is($r->{exit}, 2, 'key rotate NAME SECRET: exit 2');
        like($r->{stderr}, qr/stdin/, 'says secrets come from stdin');
        $r = ctl([@A, 'key', 'set', 'ctl-argv', "--secret=$secret{3}"], stdin => "$secret{4}\n");
        is($r->{exit}, 2, 'key set NAME --secret=SECRET: exit 2');
        like(key_row('ctl-key') // '', qr/^ctl-key\s+1\s+1\s/, 'ctl-key unchanged (nothing was sent)');
        ok(!key_json('ctl-argv'), 'ctl-argv not created');
};

subtest 'a key set for a route makes the route usable; delete-all refused while in use' => sub {
        ctl_ok([@A, 'key', 'set', 'anth-key'], 'key set anth-key exits 0', stdin => "$secret{5}\n");
        my $r = ctl_ok([@A, 'route', 'list'], 'route list exits 0');
        like($r->{stdout}, qr/^anth\s+anthropic\s+\S+\s+anth-key\@1\s+x-api-key\s/m, 'anth row: anth-key@1');
        $r = ctl([@A, 'key', 'delete', 'anth-key']);
        is($r->{exit}, 1, 'deleting a key a route uses exits 1');
        like($r->{stderr}, qr/^keybrokerctl: .*anth/, '... naming the route');

        $r = ctl_ok([@A, 'key', 'delete', 'ctl-key'], 'delete every version of an unused key exits 0');
        like($r->{stdout}, qr/^ctl-key: deleted version/, 'confirmation line');
        ok(!key_row('ctl-key'), 'ctl-key is gone');
};

subtest 'reload' => sub {
        my $r = ctl_ok([@A, 'reload'], 'reload exits 0');
        like($r->{stdout}, qr/reloaded/, 'says reloaded');

        my $conf = $broker->conf;
        my $good = slurp($conf);
        my $bad = $good =~ s/\n*\z/\n/r . "no_such_setting = 1\n";
        my $line = () = $bad =~ /\n/g;
        spew($conf, $bad);
        $r = ctl([@A, 'reload']);
        is($r->{exit}, 1, 'reload of a bad config exits 1');
        like($r->{stderr}, qr/^keybrokerctl: \Q$conf\E:$line\b/, '... printing the FILE:LINE reason');
        spew($conf, $good);
        ctl_ok([@A, 'status'], 'the daemon still answers');
        ctl_ok([@A, 'reload'], 'reload of the good config exits 0 again');
};

subtest 'a non-admin uid gets the 403 message' => sub {
        # The socket's mode keeps other uids out already; open it so the
        # peer-credential check (the real gate) is what answers.
        chmod 0666, $admin;
        for my $args (['status'], ['key', 'list'], ['reload']) {
                my $r = ctl([@A, @$args], uid => 1001);
                is($r->{exit}, 1, "uid 1001 @$args: exit 1");
                like($r->{stderr}, qr/^keybrokerctl: uid 1001 is not allowed on the admin socket$/m, '... with the 403 message');
        }
        my $r = ctl([@A, 'key', 'set', 'ctl-intruder'], uid => 1001, stdin => "$secret{4}\n");
        is($r->{exit}, 1, 'uid 1001 key set: exit 1');
        ok(!key_json('ctl-intruder'), '... nothing stored');
};

subtest 'whoami on the app socket' => sub {
        my $r = ctl_ok(['whoami', '--socket', $broker->socket], 'whoami exits 0');
        like($r->{stdout}, qr/^uid\s+0$/m, 'uid 0');
        like($r->{stdout}, qr/^team\s+ops$/m, 'team ops');
        $r = ctl_ok(['whoami', '--json', '--socket', $broker->socket], 'whoami --json exits 0');
        my $j = json_decode($r->{stdout});
        is($j && $j->{uid}, 0, 'json uid 0');
        $r = ctl(['whoami', '--socket', "$dir/nope.sock"]);
        is($r->{exit}, 1, 'whoami on a missing socket exits 1');
        like($r->{stderr}, qr/^keybrokerctl: cannot reach the broker at \Q$dir\E\/nope\.sock: \S/, '... saying where');
};

SKIP: {
        my ($script) = grep { -x "$_/script" } split(/:/, $ENV{PATH});
        skip('script(1) not installed: cannot give keybrokerctl a terminal', 1) unless $script;
        subtest 'tty prompt with echo off' => sub {
                my $d = tmpdir('ctl-tty');
                my $s = fixture_secret('tty');
                $secret{tty} = $s;
                spew("$d/secret", "$s\n", 0600);
                # The delay lets keybrokerctl turn echo off before the line
                # arrives (TCSAFLUSH drops typeahead, as for any password prompt).
                my $cmd = "(sleep 2; cat '$d/secret'; sleep 1) | script -qec '$CTL --admin-socket $admin key set ctl-tty' /dev/null";
                my $r = run_cmd(['sh', '-c', $cmd], timeout => 30);
                push @outputs, $r->{stdout}, $r->{stderr};
                is($r->{exit}, 0, 'key set at a prompt exits 0') or diag("$r->{stdout}\n$r->{stderr}");
                like($r->{stdout}, qr/Secret for ctl-tty: /, 'prompted on the terminal');
                like($r->{stdout}, qr/ctl-tty: version 1 active \(fingerprint [0-9a-f]{16}\)/, 'confirmation line');
                ok(index($r->{stdout} . $r->{stderr}, $s) < 0, 'the secret was not echoed');
                my $k = key_json('ctl-tty');
                is($k && $k->{active_version}, 1, 'stored at version 1');
                ctl([@A, 'key', 'delete', 'ctl-tty']);
        };
}

subtest 'no secret in any keybrokerctl output or in the journal' => sub {
        my @s = (values(%creds), values(%secret));
        my $all = join("\n", @outputs);
        cmp_ok(length $all, '>', 1000, 'there is output to check');
        for my $i (0 .. $#s) {
                ok(index($all, $s[$i]) < 0, "secret $i not in keybrokerctl output");
        }
        journal_sync();
        my $j = join("\n", map { json_encode($_) } $broker->journal);
        for my $i (0 .. $#s) {
                ok(index($j, $s[$i]) < 0, "secret $i not in the broker's journal records");
        }
        my @kr = $broker->journal({ MESSAGE_ID => '06f9068c76c44d218e62b7f8f75da06d' });
        cmp_ok(scalar(@kr), '>=', 5, 'key changes were journaled');
        ok((grep { ($_->{KEYBROKER_KEY_ACTION} // '') eq 'rotated' && ($_->{KEYBROKER_KEY_NAME} // '') eq 'ctl-key' } @kr),
           'the rotation of ctl-key is among them');
};

is($broker->stop, 0, 'broker exits 0') or diag($broker->log);
done_testing();
