#!/usr/bin/perl
# The admin socket: who may talk to it (admin_users / admin_groups by peer
# credentials, root when both are empty; everyone else 403 with a JSON
# reason on every path), its mode, and the shapes of GET /status, /teams,
# /routes, /keys, the error answers, and PUT's validation of names and
# secrets. No secret ever shows up in an answer or in the journal.
use v5.36;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use KB;

my $MID_KEY = '06f9068c76c44d218e62b7f8f75da06d';
my $ISO = qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/;

ensure_journald();
my %keys = ('oai-key' => fixture_secret('oai'), 'anth-key' => fixture_secret('anth'));
my $mock = start_mock(require_key => [values %keys]);

# A broker with a sealed keystore and its master key in the credentials dir
# (paths in the broker's own temp dir, hence a text config with @DIR@).
sub keyed_broker(%o) {
        my $cfg = $o{config} // standard_config(mock => $mock);
        my %agent = (
                listen => '@DIR@/api.sock', listen_mode => '0666', admin => '@DIR@/admin.sock',
                credentials_dir => '@DIR@/creds', state_dir => '@DIR@/state',
                keystore => '@DIR@/state/keys.sealed', master_key => '@DIR@/creds/keybroker.master',
                %{$cfg->{agent} // {}},
        );
        my $text = KB::render_config({ %$cfg, agent => \%agent });
        return start_broker(config => $text, keys => { %keys, 'keybroker.master' => KB::random_hex(32) });
}

sub admin_sock($b) { $b->dir . '/admin.sock' }

sub admin($b, $method, $path, %o) {
        return req(admin_sock($b), method => $method, path => $path, %o);
}

sub admin_error($res, $status, $code, $name = "$status $code") {
        return subtest $name => sub {
                is($res->{status}, $status, "status $status") or diag(KB::show_res($res));
                like($res->{headers}{'content-type'} // '', qr{^application/json}, 'content-type json');
                my $j = $res->{json};
                ok(ref $j eq 'HASH' && ref $j->{error} eq 'HASH', 'body is {"error":{…}}')
                        or return diag(KB::show_res($res));
                is($j->{error}{code}, $code, "error.code $code");
                like($j->{error}{message} // '', qr/\S/, 'error.message non-empty');
        };
}

sub ok_json($res, $name) {
        is($res->{status}, 200, "$name: 200") or diag(KB::show_res($res));
        like($res->{headers}{'content-type'} // '', qr{^application/json}, "$name: content-type json");
        return $res->{json} // {};
}

my $cfg = standard_config(mock => $mock);
$cfg->{'team:ops'}{budget_usd_per_day} = '50';
$cfg->{'team:ops'}{max_concurrent} = 4;
$cfg->{'team:search'}{units} = 'search.service';
$cfg->{'route:oai-b'} = { family => 'openai', base_url => $mock->base_url, key => 'oai-key',
                          auth => 'header:X-Custom-Key', timeout => '1500ms', connect_timeout => '2s' };
$cfg->{'model:gpt-mini'} = { target => 'oai gpt-4o-mini-2024-07-18 weight=90',
                             fallback => 'oai-b gpt-4o-mini-2024-07-18' };
my $broker = keyed_broker(config => $cfg);
my $sock = admin_sock($broker);

subtest 'socket exists with mode 0660' => sub {
        ok(-S $sock, "$sock is a socket");
        my @st = stat($sock);
        is(sprintf('%04o', $st[2] & 07777), '0660', 'mode 0660');
};

# ------------------------------------------------------------ read-only endpoints
subtest 'GET /status' => sub {
        my $r = req($broker, path => '/v1/chat/completions',
                    json => { model => 'gpt-mini', messages => [{ role => 'user', content => 'hi' }] });
        is($r->{status}, 200, 'one app request served first') or diag(KB::show_res($r));
        my $j = ok_json(admin($broker, 'GET', '/status'), 'status');
        is($j->{version}, '0.1.0', 'version');
        is($j->{pid}, $broker->pid, 'pid is the broker');
        like($j->{started} // '', $ISO, 'started is ISO 8601 UTC');
        like($j->{uptime_s} // '', qr/^\d+$/, 'uptime_s');
        is($j->{config}, $broker->conf, 'config path');
        cmp_ok($j->{requests_served} // 0, '>=', 1, 'requests_served counts the app call');
        is($j->{in_flight}, 0, 'nothing in flight');
        like($j->{connections} // '', qr/^\d+$/, 'connections');
        ok(ref $j->{journal} eq 'HASH' && defined $j->{journal}{written} && defined $j->{journal}{dropped},
           'journal written/dropped');
        ok(JSON::PP::is_bool($j->{dumpable}) && !$j->{dumpable}, 'dumpable false');
        is($j->{core_limit}, 0, 'core_limit 0');
};

subtest 'GET /teams' => sub {
        my $j = ok_json(admin($broker, 'GET', '/teams'), 'teams');
        my %t = map { $_->{name} => $_ } @{$j->{teams} // []};
        is_deeply([sort keys %t], ['ops', 'search'], 'both teams');
        my $ops = $t{ops};
        is_deeply($ops->{users}, [0], 'ops users');
        is_deeply($ops->{groups}, [], 'ops groups');
        is_deeply($ops->{units}, [], 'ops units');
        is_deeply($ops->{models}, ['*'], 'ops models *');
        is($ops->{owner}, 'ops@example.com', 'owner');
        is_deeply($ops->{limits}, {
                requests_per_minute => 600, tokens_per_minute => 100000, tokens_per_day => undef,
                budget_usd_per_day => '50.000000', budget_usd_per_month => undef, max_concurrent => 4,
        }, 'ops limits (unset ones null)');
        my $s = $t{search};
        is_deeply($s->{users}, [1001], 'search users');
        is_deeply($s->{groups}, [2001], 'search groups');
        is_deeply($s->{units}, ['search.service'], 'search units');
        is_deeply([sort @{$s->{models}}], ['claude-haiku', 'gpt-mini'], 'search models');
        is($s->{owner}, undef, 'owner null');
        is($s->{limits}{requests_per_minute}, undef, 'no rpm: null');
};

subtest 'GET /routes' => sub {
        my $j = ok_json(admin($broker, 'GET', '/routes'), 'routes');
        my %r = map { $_->{name} => $_ } @{$j->{routes} // []};
        is_deeply([sort keys %r], ['anth', 'oai', 'oai-b'], 'all routes');
        my $oai = $r{oai};
        is($oai->{family}, 'openai', 'family');
        is($oai->{base_url}, $mock->base_url, 'base_url');
        is($oai->{key}, 'oai-key', 'key');
        is($oai->{key_version}, 0, 'key_version 0: a credentials file');
        is($oai->{auth}, 'bearer', 'auth bearer');
        is($oai->{timeout_s}, 30, 'timeout_s');
        is($oai->{connect_timeout_s}, 5, 'connect_timeout_s');
        my @t = sort { $a->{model} cmp $b->{model} } @{$oai->{targets} // []};
        is_deeply(\@t, [
                { model => 'emb', upstream_model => 'text-embedding-3-small', weight => 1, role => 'target',
                  effective_weight => 1, overridden => JSON::PP::false },
                { model => 'gpt-big', upstream_model => 'gpt-4o-2024-08-06', weight => 1, role => 'target',
                  effective_weight => 1, overridden => JSON::PP::false },
                { model => 'gpt-mini', upstream_model => 'gpt-4o-mini-2024-07-18', weight => 90, role => 'target',
                  effective_weight => 90, overridden => JSON::PP::false },
        ], 'oai targets');
        is($r{anth}{auth}, 'x-api-key', 'anth auth x-api-key');
        is($r{anth}{family}, 'anthropic', 'anth family');
        is($r{'oai-b'}{auth}, 'header:X-Custom-Key', 'header auth');
        is($r{'oai-b'}{timeout_s}, 1.5, 'sub-second timeout kept');
        is($oai->{circuit}, 'closed', 'circuit closed');
        is($oai->{consecutive_failures}, 0, 'no consecutive failures');
        ok(exists $oai->{error_ratio} && exists $oai->{p50_latency_ms}, 'error_ratio and p50_latency_ms present');
        is_deeply($r{'oai-b'}{targets}, [
                { model => 'gpt-mini', upstream_model => 'gpt-4o-mini-2024-07-18', weight => 1, role => 'fallback' },
        ], 'fallback role');
};

subtest 'GET /keys: credential keys, never a secret' => sub {
        my $res = admin($broker, 'GET', '/keys');
        my $j = ok_json($res, 'keys');
        my @k = @{$j->{keys} // []};
        is_deeply([map { $_->{name} } @k], ['anth-key', 'oai-key'], 'sorted by name');
        for my $k (@k) {
                is($k->{source}, 'credentials', "$k->{name}: source credentials");
                is($k->{active_version}, 0, "$k->{name}: active_version 0");
                is(scalar @{$k->{versions}}, 1, "$k->{name}: one version");
                my $v = $k->{versions}[0];
                like($v->{fingerprint} // '', qr/^[0-9a-f]{16}$/, "$k->{name}: fingerprint 16 hex");
                ok($v->{active}, "$k->{name}: active");
                is($v->{created}, undef, "$k->{name}: created unknown");
        }
        my ($oai) = grep { $_->{name} eq 'oai-key' } @k;
        cmp_ok($oai->{versions}[0]{uses}, '>=', 1, 'oai-key used by the earlier call');
        like($oai->{versions}[0]{last_used} // '', $ISO, 'last_used ISO 8601');
        for my $s (values %keys) {
                unlike($res->{body}, qr/\Q$s\E/, 'no secret in GET /keys');
        }
};

# ------------------------------------------------------------ errors
subtest 'unknown paths and wrong methods' => sub {
        admin_error(admin($broker, 'GET', '/nope'), 404, 'not_found', 'GET /nope');
        admin_error(admin($broker, 'GET', '/status/'), 404, 'not_found', 'GET /status/');
        admin_error(admin($broker, 'POST', '/keys/oai-key/other'), 404, 'not_found', 'POST /keys/NAME/other');
        admin_error(admin($broker, 'POST', '/status'), 405, 'method_not_allowed', 'POST /status');
        admin_error(admin($broker, 'DELETE', '/keys'), 405, 'method_not_allowed', 'DELETE /keys');
        admin_error(admin($broker, 'GET', '/reload'), 405, 'method_not_allowed', 'GET /reload');
        admin_error(admin($broker, 'GET', '/keys/oai-key'), 405, 'method_not_allowed', 'GET /keys/NAME');
        admin_error(admin($broker, 'GET', '/keys/oai-key/rollback'), 405, 'method_not_allowed', 'GET rollback');
        admin_error(admin($broker, 'POST', '/keys/nosuch/rollback'), 404, 'not_found', 'rollback of an unknown key');
        admin_error(admin($broker, 'DELETE', '/keys/nosuch'), 404, 'not_found', 'delete of an unknown key');
        admin_error(admin($broker, 'PUT', '/keys/nosuch', body => 'sk-x', headers => ['If-Match' => '*']),
                    404, 'not_found', 'rotate of an unknown key');
};

subtest 'bad key names and versions: 400' => sub {
        my $long = 'k' x 129;
        for my $p ('/keys/a..b', '/keys/..', '/keys/a%2Fb', '/keys/%2e%2e', '/keys/a:b', "/keys/$long",
                   '/keys/%61') {
                admin_error(admin($broker, 'PUT', $p, body => 'sk-valid'), 400, 'invalid_request', "PUT $p");
        }
        admin_error(admin($broker, 'POST', '/keys/a..b/rollback'), 400, 'invalid_request', 'rollback a..b');
        for my $q ('version=0', 'version=', 'version=-1', 'version=abc', 'version=1x', 'v=1', 'version=99999999999') {
                admin_error(admin($broker, 'DELETE', "/keys/oai-key?$q"), 400, 'invalid_request', "DELETE ?$q");
        }
        my $ok = admin($broker, 'PUT', '/keys/' . ('k' x 128), body => 'sk-128-name');
        is($ok->{status}, 200, 'a 128-character name is fine') or diag(KB::show_res($ok));
};

subtest 'bad secrets: 400, nothing stored' => sub {
        my %bad = (
                'empty' => '', 'only a newline' => "\n", 'control character' => "sk-a\x01b",
                'inner newline' => "sk-a\nX-Evil: 1", 'tab' => "sk\tx", 'DEL' => "sk\x7f",
                'two newlines' => "sk-x\n\n", 'NUL' => "sk\0x", '4097 bytes' => 'a' x 4097,
        );
        for my $what (sort keys %bad) {
                admin_error(admin($broker, 'PUT', '/keys/badsecret', body => $bad{$what}), 400, 'invalid_request',
                            "secret: $what");
        }
        my $res = admin($broker, 'PUT', '/keys/badsecret', body => 'a' x (70 * 1024));
        is($res->{status}, 413, 'a body over 64 KiB: 413') or diag(KB::show_res($res));
        my $j = ok_json(admin($broker, 'GET', '/keys'), 'keys');
        ok(!grep({ $_->{name} eq 'badsecret' } @{$j->{keys} // []}), 'no key was created');
        admin_error(admin($broker, 'PUT', '/keys/x', body => 'sk-x', headers => ['If-Match' => '"abc"']), 400,
                    'invalid_request', 'If-Match other than *');
        admin_error(admin($broker, 'PUT', '/keys/x', body => 'sk-x',
                          headers => ['If-Match' => '*', 'If-None-Match' => '*']), 400, 'invalid_request',
                    'both If-Match and If-None-Match');
};

subtest 'PUT /keys/NAME: stored sealed, never echoed or journaled' => sub {
        my $secret = fixture_secret('admin-set');
        my $res = admin($broker, 'PUT', '/keys/new-key', body => "$secret\n", headers => ['If-None-Match' => '*']);
        my $j = ok_json($res, 'set');
        is($j->{name}, 'new-key', 'name');
        is($j->{version}, 1, 'version 1');
        is($j->{action}, 'set', 'action set');
        like($j->{fingerprint} // '', qr/^[0-9a-f]{16}$/, 'fingerprint');
        unlike($res->{body}, qr/\Q$secret\E/, 'not in the answer');

        admin_error(admin($broker, 'PUT', '/keys/new-key', body => 'sk-other', headers => ['If-None-Match' => '*']),
                    409, 'conflict', 'create-only on an existing key');

        my $list = admin($broker, 'GET', '/keys');
        my ($k) = grep { $_->{name} eq 'new-key' } @{$list->{json}{keys} // []};
        is($k->{source}, 'keystore', 'source keystore');
        is($k->{active_version}, 1, 'active_version 1');
        like($k->{versions}[0]{created} // '', $ISO, 'created ISO 8601');
        is($k->{versions}[0]{fingerprint}, $j->{fingerprint}, 'same fingerprint');
        unlike($list->{body}, qr/\Q$secret\E/, 'not in GET /keys');

        my @rec = $broker->journal_wait({ MESSAGE_ID => $MID_KEY, KEYBROKER_KEY_NAME => 'new-key' });
        check_fields($rec[0], {
                KEYBROKER_KEY_ACTION => 'set', KEYBROKER_KEY_VERSION => '1',
                KEYBROKER_KEY_FINGERPRINT => $j->{fingerprint}, KEYBROKER_ADMIN_UID => '0', PRIORITY => '5',
                MESSAGE => qr/^key new-key set to version 1 \(fingerprint [0-9a-f]{16}\) by uid 0$/,
        }, 'key-change record');

        my $store = slurp($broker->dir . '/state/keys.sealed') // '';
        ok(length $store, 'store file written');
        unlike($store, qr/\Q$secret\E/, 'secret not in clear in the store');

        journal_sync();
        my $all = run_cmd(['journalctl', '-o', 'export', '--all', '--no-pager', '_PID=' . $broker->pid]);
        ok(length $all->{stdout}, 'the broker has journal records');
        unlike($all->{stdout}, qr/\Q$secret\E/, 'secret in no journal record');
        for my $s (values %keys) {
                unlike($all->{stdout}, qr/\Q$s\E/, 'credential secret in no journal record');
        }
        unlike($broker->log, qr/\Q$secret\E/, 'nor in the daemon output');
};

# ------------------------------------------------------------ peers
subtest 'uid 1001: cannot connect through mode 0660; with the mode widened, 403 everywhere' => sub {
        my $res = admin($broker, 'GET', '/status', uid => 1001);
        ok(!$res->{status}, 'no answer: the socket mode keeps uid 1001 out') or diag(KB::show_res($res));

        # The mode is only the first fence; widen it to reach the real gate.
        chmod 0666, $sock or die "chmod: $!";
        my @calls = (
                ['GET', '/status'], ['GET', '/keys'], ['GET', '/teams'], ['GET', '/routes'],
                ['GET', '/nope'], ['POST', '/reload'], ['POST', '/keys/new-key/rollback'],
                ['DELETE', '/keys/new-key'], ['PUT', '/keys/stolen', body => 'sk-evil'],
                ['PUT', '/keys/a..b', body => 'sk-evil'],
        );
        for my $c (@calls) {
                my ($m, $p, %o) = @$c;
                my $r = admin($broker, $m, $p, uid => 1001, %o);
                admin_error($r, 403, 'forbidden', "$m $p as uid 1001");
                is($r->{json}{error}{message}, 'uid 1001 is not allowed on the admin socket', 'message names the uid');
        }
        my $j = ok_json(admin($broker, 'GET', '/keys'), 'keys as root');
        ok(!grep({ $_->{name} eq 'stolen' } @{$j->{keys} // []}), 'uid 1001 stored nothing');
        ok(grep({ $_->{name} eq 'new-key' } @{$j->{keys} // []}), 'nor deleted anything');
        chmod 0660, $sock;
};

subtest 'admin_users and admin_groups' => sub {
        my $c = standard_config(mock => $mock);
        $c->{agent} = { admin_users => '1005', admin_groups => '3000' };
        my $b = keyed_broker(config => $c);
        my $s = admin_sock($b);
        my @st = stat($s);
        is(sprintf('%04o', $st[2] & 07777), '0660', 'mode 0660');
        is($st[5], 3000, 'socket group is the first admin group');

        my $r = admin($b, 'GET', '/status', uid => 1002, gid => 1002, groups => [3000]);
        is($r->{status}, 200, 'supplementary group 3000: allowed') or diag(KB::show_res($r));
        is($r->{json}{pid}, $b->pid, 'and answered') if $r->{json};
        $r = admin($b, 'GET', '/status', uid => 1002, gid => 3000);
        is($r->{status}, 200, 'primary group 3000: allowed') or diag(KB::show_res($r));

        chmod 0666, $s;
        $r = admin($b, 'GET', '/status', uid => 1005);
        is($r->{status}, 200, 'uid 1005 in admin_users: allowed') or diag(KB::show_res($r));
        admin_error(admin($b, 'GET', '/status', uid => 1002), 403, 'forbidden', 'uid 1002 without the group: 403');
        admin_error(admin($b, 'GET', '/status'), 403, 'forbidden', 'root is not implied once lists are set');

        my $secret = fixture_secret('grp');
        $r = admin($b, 'PUT', '/keys/grp-key', body => $secret, uid => 1002, groups => [3000]);
        is($r->{status}, 200, 'a group admin sets a key') or diag(KB::show_res($r));
        my @rec = $b->journal_wait({ MESSAGE_ID => $MID_KEY, KEYBROKER_KEY_NAME => 'grp-key' });
        is($rec[0]{KEYBROKER_ADMIN_UID}, '1002', 'journaled with the admin uid 1002') if @rec;
        ok(@rec, 'key-change record');
};

done_testing();
