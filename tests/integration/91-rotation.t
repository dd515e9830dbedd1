#!/usr/bin/perl
# Keys changed live through the admin socket: a route whose key is missing
# answers 503 until the key is set (no restart); rotations under sustained
# load fail no request, requests sent after a rotation carry the new key and a
# stream begun before it finishes with the old one; rollback brings the
# previous version back; delete refuses the active version. Every change is
# journaled; the store file is 0600 and holds no secret in clear.
use v5.36;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use POSIX ();
use KB;

my $MID_KEY = '06f9068c76c44d218e62b7f8f75da06d';
my $LOAD_REQUESTS = 6000;
my $LOAD_PARALLEL = 16;

ensure_journald();
my %creds = ('anth-key' => fixture_secret('anth'));
my @v = map { fixture_secret("rot-v$_") } 1 .. 4;      # versions 1..3, and one set by keybrokerctl
my $mock = start_mock(require_key => [values %creds, @v]);

my $cfg = standard_config(mock => $mock);
$cfg->{'route:oai'}{key} = 'rot-key';
# Thousands of calls in a minute: this test is about keys, not quotas.
delete $cfg->{'team:ops'}{$_} for qw(requests_per_minute tokens_per_minute);
my $broker = KB::start_keystore_broker($cfg, \%creds);
my $admin_sock = $broker->dir . '/admin.sock';
my $store = $broker->dir . '/state/keys.sealed';

sub admin($method, $path, %o) { req($admin_sock, method => $method, path => $path, %o) }

sub chat(%o) {
        return req($broker, path => '/v1/chat/completions', %o,
                   json => { model => 'gpt-mini', messages => [{ role => 'user', content => 'rotate' }] });
}

# Requests the mock logged so far, cheaply (the load is running meanwhile).
sub mock_count() { my $t = slurp($mock->log_path) // ''; return $t =~ tr/\n//; }

sub auth_of($entry) { $entry ? $entry->{headers}{authorization} // '' : '' }

my %fp;         # version => fingerprint, from the admin answers

# ------------------------------------------------------------ missing, then set
subtest 'a missing key: 503 naming it, then PUT makes the route work without a restart' => sub {
        my $res = chat();
        check_openai_error($res, 503, 'upstream_unavailable');
        like($res->{json}{error}{message} // '', qr/rot-key/, 'the message names the key');
        is($mock->count, 0, 'nothing reached the provider');

        $res = admin('PUT', '/keys/rot-key', body => "$v[0]\n");
        is($res->{status}, 200, 'PUT /keys/rot-key') or diag(KB::show_res($res));
        is_deeply([@{$res->{json} // {}}{qw(name version action)}], ['rot-key', 1, 'set'], 'set version 1');
        $fp{1} = $res->{json}{fingerprint};

        $res = chat();
        is($res->{status}, 200, 'the route works now') or diag(KB::show_res($res));
        is(auth_of($mock->entry_for($res)), "Bearer $v[0]", 'the provider got version 1');
        my $rec = journal_request($res->{headers}{'x-keybroker-request-id'});
        is($rec->{KEYBROKER_KEY}, 'rot-key@1', 'journal KEYBROKER_KEY rot-key@1') if $rec;
};

# ------------------------------------------------------------ rotation under load
subtest 'two rotations under sustained load: no failed request, a stream keeps its key' => sub {
        # A slow stream first: it must finish with version 1.
        my $stream = raw_connect($broker);
        $stream->send(http_request('POST', '/v1/chat/completions',
                                   json => { model => 'gpt-mini', stream => JSON::PP::true,
                                             messages => [{ role => 'user', content => 'slow' }] },
                                   headers => ['x-mock-event-delay-ms' => 150, 'x-mock-output-tokens' => 30]));
        my $head = $stream->read_head(timeout => 10);
        ok($head && $head->{status} == 200, 'stream started') or diag($stream->{why});
        my $stream_entry = $head ? $mock->entry_for($head) : undef;
        my $stream_n = $stream_entry ? $stream_entry->{n} : undef;

        # The load: curl with $LOAD_PARALLEL parallel keep-alive transfers.
        my $before = $mock->count;
        my $load = KB::curl_load($broker, requests => $LOAD_REQUESTS, parallel => $LOAD_PARALLEL,
                                 json => { model => 'gpt-mini', messages => [{ role => 'user', content => 'load' }] });

        my %mark;       # rotation => [mock log count when asked, when answered]
        for my $rot (2, 3) {
                my $at = $before + ($rot == 2 ? 500 : 1500);
                ok(wait_until(60, sub { mock_count() >= $at }, 0.01), "load reached $at requests before rotation to v$rot");
                my $asked = mock_count();
                my $res = admin('PUT', '/keys/rot-key', body => $v[$rot - 1], headers => ['If-Match' => '*']);
                my $answered = mock_count();
                is($res->{status}, 200, "rotate to v$rot") or diag(KB::show_res($res));
                is_deeply([@{$res->{json} // {}}{qw(version action)}], [$rot, 'rotated'], "version $rot, rotated");
                $fp{$rot} = $res->{json}{fingerprint};
                $mark{$rot} = [$asked, $answered];
        }
        my @lines = KB::curl_load_wait($load);
        is(scalar @lines, $LOAD_REQUESTS, "$LOAD_REQUESTS answers");
        my @failed = grep { !/^200 / } @lines;
        is(scalar @failed, 0, 'every request got 200') or diag(join("\n", @failed[0 .. ($#failed < 9 ? $#failed : 9)]));

        # What the provider saw, in arrival order: requests sent before a
        # rotation was asked carry the old key; after it was answered, only
        # those already in flight (at most $LOAD_PARALLEL) may.
        my @log = $mock->log_entries;
        my @load = grep { !defined $stream_n || $_->{n} != $stream_n } @log[$before .. $#log];
        my $key_of = sub ($e) { my $a = auth_of($e); for my $i (0 .. 3) { return $i + 1 if $a eq "Bearer $v[$i]" } 0 };
        is(scalar(grep { !$key_of->($_) } @load), 0, 'every load request carried a known key');
        my %per;
        $per{$key_of->($_)}++ for @load;
        note(join(', ', map { "v$_: " . ($per{$_} // 0) } 1 .. 3) . " requests");
        for my $rot (2, 3) {
                my ($asked, $answered) = @{$mark{$rot}};
                my @pre = @load[0 .. $asked - $before - 1];
                is(scalar(grep { $key_of->($_) >= $rot } @pre), 0, "nothing before the rotation to v$rot used v$rot");
                my @post = @load[$answered - $before + $LOAD_PARALLEL .. $#load];
                my $old = grep { $key_of->($_) < $rot } @post;
                is($old, 0, "after the rotation to v$rot (and what was in flight), no older key");
                cmp_ok(scalar(grep { $key_of->($_) == $rot || $rot == 2 && $key_of->($_) == 3 } @post), '>', 50,
                       "many requests after the rotation to v$rot");
        }
        is(auth_of($load[-1]), "Bearer $v[2]", 'the last request used v3');

        my $res = $head ? $stream->read_body($head, timeout => 30) : undef;
        ok($res && $res->{complete}, 'the stream begun before the rotations completed');
        my @ev = $res ? sse_events($res->{body}) : ();
        is($ev[-1]{data}, '[DONE]', 'and ended with [DONE]') if @ev;
        is(auth_of($stream_entry), "Bearer $v[0]", 'the stream was sent with v1');
        my $rec = $head ? journal_request($head->{headers}{'x-keybroker-request-id'}) : undef;
        check_fields($rec, { KEYBROKER_KEY => 'rot-key@1', KEYBROKER_OUTCOME => 'ok', KEYBROKER_STREAM => '1' },
                     'the stream\'s journal record names version 1');
};

# ------------------------------------------------------------ rollback, delete
subtest 'rollback makes the previous version active again' => sub {
        my $res = admin('POST', '/keys/rot-key/rollback');
        is($res->{status}, 200, 'rollback') or diag(KB::show_res($res));
        is_deeply([@{$res->{json} // {}}{qw(name version action fingerprint)}], ['rot-key', 2, 'rolled_back', $fp{2}],
                  'version 2 active again, same fingerprint');
        $res = chat();
        is($res->{status}, 200, 'a call after the rollback') or diag(KB::show_res($res));
        is(auth_of($mock->entry_for($res)), "Bearer $v[1]", 'the provider got v2');
        my $rec = journal_request($res->{headers}{'x-keybroker-request-id'});
        is($rec->{KEYBROKER_KEY}, 'rot-key@2', 'journal KEYBROKER_KEY rot-key@2') if $rec;

        my $j = admin('GET', '/keys')->{json};
        my ($k) = grep { $_->{name} eq 'rot-key' } @{$j->{keys} // []};
        is($k->{active_version}, 2, 'GET /keys: active_version 2');
        is_deeply([map { $_->{version} } @{$k->{versions}}], [1, 2, 3], 'versions kept');
        is_deeply([map { $_->{active} ? 1 : 0 } @{$k->{versions}}], [0, 1, 0], 'only v2 active');
        is($k->{versions}[$_ - 1]{fingerprint}, $fp{$_}, "v$_ fingerprint") for 1 .. 3;
        cmp_ok($k->{versions}[2]{uses}, '>', 50, 'v3 counted its uses');
};

subtest 'delete' => sub {
        my $res = admin('DELETE', '/keys/rot-key?version=2');
        is($res->{status}, 409, 'the active version: 409') or diag(KB::show_res($res));
        is($res->{json}{error}{code}, 'conflict', 'conflict');
        $res = admin('DELETE', '/keys/rot-key');
        is($res->{status}, 409, 'the whole key, used by a route: 409') or diag(KB::show_res($res));
        like($res->{json}{error}{message} // '', qr/route 'oai'/, 'names the route');

        $res = admin('DELETE', '/keys/rot-key?version=1');
        is($res->{status}, 200, 'an old version: 200') or diag(KB::show_res($res));
        is_deeply($res->{json}, { name => 'rot-key', deleted => [1], action => 'deleted' }, 'answer');
        my ($k) = grep { $_->{name} eq 'rot-key' } @{admin('GET', '/keys')->{json}{keys} // []};
        is_deeply([map { $_->{version} } @{$k->{versions} // []}], [2, 3], 'v1 is gone from GET /keys');
        $res = admin('DELETE', '/keys/rot-key?version=1');
        is($res->{status}, 404, 'deleting it again: 404') or diag(KB::show_res($res));
        is(chat()->{status}, 200, 'the route still works');
};

subtest 'every change journaled' => sub {
        my @rec = $broker->journal_wait({ MESSAGE_ID => $MID_KEY, KEYBROKER_KEY_NAME => 'rot-key' }, 10, count => 5);
        my @got = map { [$_->{KEYBROKER_KEY_ACTION}, $_->{KEYBROKER_KEY_VERSION}, $_->{KEYBROKER_KEY_FINGERPRINT},
                         $_->{KEYBROKER_ADMIN_UID}] } @rec;
        is_deeply(\@got, [
                ['set', 1, $fp{1}, 0], ['rotated', 2, $fp{2}, 0], ['rotated', 3, $fp{3}, 0],
                ['rolled_back', 2, $fp{2}, 0], ['deleted', 1, $fp{1}, 0],
        ], 'set, rotated ×2, rolled_back, deleted: version, fingerprint, admin uid') or diag(explain(\@got));
        like($rec[1]{MESSAGE} // '', qr/^key rot-key rotated to version 2 \(fingerprint [0-9a-f]{16}\) by uid 0$/,
             'MESSAGE');
        is($rec[0]{PRIORITY}, '5', 'PRIORITY 5') if @rec;
};

subtest 'store file: 0600, no secret in clear; nor in the journal' => sub {
        my @st = stat($store);
        ok(@st, 'store exists');
        is(sprintf('%04o', $st[2] & 07777), '0600', 'mode 0600');
        my $data = slurp($store) // '';
        for my $i (0 .. 2) {
                unlike($data, qr/\Q$v[$i]\E/, "v" . ($i + 1) . " not in clear");
        }
        journal_sync();
        my $all = run_cmd(['journalctl', '-o', 'export', '--all', '--no-pager', '_PID=' . $broker->pid]);
        for my $i (0 .. 2) {
                unlike($all->{stdout}, qr/\Q$v[$i]\E/, 'v' . ($i + 1) . ' in no journal record');
        }
};

subtest 'keybrokerctl key rotate (secret on stdin)' => sub {
        my $ctl = "$KB::BUILD/keybrokerctl";
        plan skip_all => 'keybrokerctl not built' unless -x $ctl;
        my $r = run_cmd([$ctl, '--admin-socket', $admin_sock, '--json', 'key', 'rotate', 'rot-key'], stdin => "$v[3]\n");
        is($r->{exit}, 0, 'exit 0') or diag("stdout: $r->{stdout}\nstderr: $r->{stderr}");
        my $j = json_decode($r->{stdout}) // {};
        is_deeply([@{$j}{qw(version action)}], [4, 'rotated'], 'version 4, rotated');
        unlike($r->{stdout} . $r->{stderr}, qr/\Q$v[3]\E/, 'the secret is not printed');
        my $res = chat();
        is(auth_of($mock->entry_for($res)), "Bearer $v[3]", 'the provider got v4');
};

done_testing();
