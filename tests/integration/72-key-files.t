#!/usr/bin/env perl
# Keys picked up where secret managers write them: a key file in
# credentials_dir replaced on disk (written to a temp file and renamed into
# place, as Vault Agent and config management do) is taken without a reload
# under sustained load: no request fails, the provider sees only the old key
# before and only the new one after (bar what was in flight), and a key
# record says "replaced". The same for the sealed keystore file replaced
# under the broker (a copy restored by config management). A broken file
# leaves the keys in use alone.
use v5.36;
use FindBin;
use lib "$FindBin::Bin/lib";
use KB;
use Test::More;
use Time::HiRes qw(time sleep);

my $MID_KEY = '06f9068c76c44d218e62b7f8f75da06d';
my $LOAD_REQUESTS = 3000;
my $LOAD_PARALLEL = 8;

ensure_journald();
my ($old, $new, $third) = map { fixture_secret("file-$_") } qw(a b c);
my $anth = fixture_secret('anth');
my $mock = start_mock(require_key => [$old, $new, $third, $anth]);

my $cfg = standard_config(mock => $mock);
delete $cfg->{'team:ops'}{$_} for qw(requests_per_minute tokens_per_minute);
my $broker = KB::start_keystore_broker($cfg, { 'oai-key' => $old, 'anth-key' => $anth });
my $creds = $broker->dir . '/creds';
my $store = $broker->dir . '/state/keys.sealed';

sub mock_count() { my $t = slurp($mock->log_path) // ''; return $t =~ tr/\n//; }
sub auth_of($e) { $e ? $e->{headers}{authorization} // '' : '' }

# Replace a file the way secret managers do: write a temp file, rename it.
sub replace_file($path, $data) {
        spew("$path.tmp-$$", $data, 0600);
        rename("$path.tmp-$$", $path) or die "rename: $!";
}

sub key_records($name, $action) {
        return $broker->journal({ MESSAGE_ID => $MID_KEY, KEYBROKER_KEY_NAME => $name, KEYBROKER_KEY_ACTION => $action });
}

sub chat() {
        return req($broker, path => '/v1/chat/completions', json => { model => 'gpt-mini', messages => [] });
}

subtest 'a key file in credentials_dir replaced under load: taken without a reload, nothing fails' => sub {
        is(chat()->{status}, 200, 'a call with the key as it was');
        is(auth_of($mock->last_entry), "Bearer $old", '... sent with the old key');

        my $before = $mock->count;
        my $load = KB::curl_load($broker, requests => $LOAD_REQUESTS, parallel => $LOAD_PARALLEL,
                                 json => { model => 'gpt-mini', messages => [{ role => 'user', content => 'load' }] });
        ok(wait_until(60, sub { mock_count() >= $before + 500 }, 0.01), 'the load is running');
        my $asked = mock_count();
        replace_file("$creds/oai-key", "$new\n");
        my @rec;
        ok(wait_until(10, sub { @rec = key_records('oai-key', 'replaced'); @rec > 0 }, 0.01),
           'the broker journals the key as replaced') or diag($broker->log);
        my $taken = mock_count();
        my @lines = KB::curl_load_wait($load);
        is(scalar @lines, $LOAD_REQUESTS, "$LOAD_REQUESTS answers");
        my @failed = grep { !/^200 / } @lines;
        is(scalar @failed, 0, 'every request got 200') or diag(join("\n", @failed[0 .. ($#failed < 9 ? $#failed : 9)]));

        my @log = $mock->log_entries;
        my @load = @log[$before .. $#log];
        is(scalar(grep { my $a = auth_of($_); $a ne "Bearer $old" && $a ne "Bearer $new" } @load), 0,
           'every load request carried the old or the new key');
        my @pre = @load[0 .. $asked - $before - 1];
        is(scalar(grep { auth_of($_) eq "Bearer $new" } @pre), 0, 'nothing before the file was replaced used the new key');
        my @post = @load[$taken - $before + $LOAD_PARALLEL .. $#load];
        is(scalar(grep { auth_of($_) eq "Bearer $old" } @post), 0,
           'after it was taken (and what was in flight then), only the new key');
        cmp_ok(scalar(@post), '>', 100, scalar(@post) . ' requests after the switch');

        check_fields($rec[0], { KEYBROKER_KEY_VERSION => 0, KEYBROKER_ADMIN_UID => 0,
                                KEYBROKER_KEY_FINGERPRINT => qr/^[0-9a-f]{16}$/ },
                     'the record: version 0 (a credential file), the file owner, a fingerprint');
        is(scalar(@rec), 1, 'one record for one replacement');
        unlike($broker->log, qr/\Q$new\E|\Q$old\E/, 'no secret in the log');
        like($broker->log, qr/key oai-key replaced on disk/, 'logged');
};

subtest 'a broken key file leaves the key in use alone' => sub {
        replace_file("$creds/oai-key", "bad\x01key\n");
        ok(wait_until(5, sub { $broker->log =~ /key files changed but cannot be read, keeping the keys in use/ }),
           'the broker says it keeps the keys in use') or diag($broker->log);
        my $res = chat();
        is($res->{status}, 200, 'calls still work');
        is(auth_of($mock->last_entry), "Bearer $new", '... with the last good key');
        replace_file("$creds/oai-key", "$new\n");
};

subtest 'the sealed keystore replaced on disk: its active version is taken' => sub {
        my $admin = $broker->dir . '/admin.sock';
        my $res = req($admin, method => 'PUT', path => '/keys/oai-key', body => "$third\n", headers => ['If-Match' => '*']);
        is($res->{status}, 200, 'a sealed version set through the admin API') or diag(KB::show_res($res));
        is(chat()->{status}, 200, 'a call');
        is(auth_of($mock->last_entry), "Bearer $third", '... with the sealed key');
        my $copy = slurp($store);
        sleep 0.3;
        is(scalar(key_records('oai-key', 'replaced')), 1, 'our own keystore write is no "replacement"');

        $res = req($admin, method => 'PUT', path => '/keys/oai-key', body => "$old\n", headers => ['If-Match' => '*']);
        is($res->{status}, 200, 'rotated to another secret') or diag(KB::show_res($res));
        is(chat()->{status}, 200, 'a call');
        is(auth_of($mock->last_entry), "Bearer $old", '... with it');

        # Config management puts the earlier copy back.
        replace_file($store, $copy);
        ok(wait_until(10, sub { key_records('oai-key', 'replaced') == 2 }), 'the restored store is journaled as replaced')
                or diag($broker->log);
        my ($rec) = grep { $_->{KEYBROKER_KEY_VERSION} ne '0' } key_records('oai-key', 'replaced');
        check_fields($rec // {}, { KEYBROKER_KEY_VERSION => 1 }, 'version 1, the active one of the restored file');
        is(chat()->{status}, 200, 'a call');
        is(auth_of($mock->last_entry), "Bearer $third", '... with the restored store\'s key, without a reload');
};

is($broker->stop, 0, 'broker exits 0') or diag($broker->log);
done_testing;
