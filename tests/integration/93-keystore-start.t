#!/usr/bin/perl
# The sealed keystore at start: a store written through the admin API is
# read back after a restart, and a tampered, truncated or wrong-master-key
# store is refused with a message that says which it is, names the file and
# what to do; the daemon exits 1 and never starts serving (never half-keyed).
use v5.36;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use KB;

ensure_journald();
my $mdir = tmpdir('master');
my $master = "$mdir/keybroker.master";
my $master_hex = KB::random_hex(32);
spew($master, "$master_hex\n", 0600);

my $oai = fixture_secret('sealed-oai');
my $anth = fixture_secret('anth');
my $spare = fixture_secret('spare');
my $mock = start_mock(require_key => [$oai, $anth]);
my $cfg = standard_config(mock => $mock);
$cfg->{agent} = { master_key => $master };
# oai-key exists only in the sealed store, set below; anth-key is a file.
my $broker = start_broker(config => $cfg, keys => { 'anth-key' => $anth });
my $dir = $broker->dir;
my $admin = "$dir/admin.sock";
my $api = $broker->socket;
my $store = "$dir/state/keys.sealed";
my $conf_text = $broker->{config_text};
my $chat = { model => 'gpt-mini', messages => [{ role => 'user', content => 'hi' }] };

# ------------------------------------------------------------ a good store

for ([$oai, 'oai-key'], [$spare, 'spare']) {
        my ($secret, $name) = @$_;
        my $res = req($admin, method => 'PUT', path => "/keys/$name", body => $secret);
        is($res->{status}, 200, "PUT /keys/$name over the admin socket stores the key")
                or diag(KB::show_res($res));
}
ok(-f $store, 'the keystore file exists after the first key was set') or BAIL_OUT('no keystore to test with');
is((stat $store)[2] & 07777, 0600, 'the keystore is mode 0600');
my $sealed = slurp($store);
for ($oai, $spare) {
        ok(index($sealed, $_) < 0, 'no secret in clear in the keystore file');
}
ok(index($sealed, $master_hex) < 0, 'nor the master key');
like($sealed, qr/"format":\s*"keybroker-keystore-1"/, 'the file says its format');
my @dirents = glob("$dir/state/keys.sealed.tmp-*");
is(scalar(@dirents), 0, 'no temp file left next to the store');

my $res = req($broker, path => '/v1/chat/completions', json => $chat);
is($res->{status}, 200, 'a call goes out with the sealed key') or diag(KB::show_res($res));
is($broker->stop, 0, 'broker exits 0 on SIGTERM') or diag($broker->log);

# Restart on the same config: the key now comes from the file alone.
sub clear_sockets() { unlink grep { -S $_ } ($api, $admin) }
clear_sockets();
my $b2 = start_broker(config => $conf_text);
$res = req($b2, path => '/v1/chat/completions', json => $chat);
is($res->{status}, 200, 'after a restart the sealed key is read from the store') or diag(KB::show_res($res));
is($b2->stop, 0, 'restarted broker exits 0') or diag($b2->log);

# ------------------------------------------------------------ refusals

my $good = slurp($store);
my $conf = "$dir/keybroker.conf";
spew($conf, $conf_text);

# Start keybrokerd on the store as it is now; it must refuse, say why and
# where, and never listen.
sub refused($what, $re) {
        clear_sockets();
        my $r = run_cmd([$KB::KEYBROKERD, '--config', $conf], timeout => 15);
        is($r->{exit}, 1, "$what: keybrokerd exits 1") or diag("stderr: $r->{stderr}");
        like($r->{stderr}, $re, "$what: the message says which it is");
        like($r->{stderr}, qr/\Q$store\E/, "$what: the message names the file");
        like($r->{stderr}, qr/restore|sealed with|provide|aside/,
             "$what: the message says what to do");
        ok(!-e $api && !-e $admin, "$what: no socket was created (never served)");
        unlike($r->{stderr} . $r->{stdout}, qr/\Q$oai\E|\Q$spare\E/, "$what: no secret in the output");
}

# One hex digit of a sealed record flipped.
{
        my $t = $good;
        $t =~ s/("sealed":\s*"[0-9a-f]{6})([0-9a-f])/$1 . ($2 eq '0' ? '1' : '0')/e or die 'no sealed record';
        spew($store, $t, 0600);
        refused('a flipped byte in a sealed record', qr/tampered/);
}
# The file MAC changed.
{
        my $t = $good;
        $t =~ s/("mac":\s*"[0-9a-f]{3})([0-9a-f])/$1 . ($2 eq 'a' ? 'b' : 'a')/e or die 'no mac';
        spew($store, $t, 0600);
        refused('a flipped byte in the MAC', qr/tampered/);
}
# The active flag moved.
{
        my $t = $good =~ s/"active":\s*true/"active": false/r;
        spew($store, $t, 0600);
        refused('no active version any more', qr/tampered/);
}
# Cut short, at a few places; and empty.
for my $frac (0.5, 0.9) {
        spew($store, substr($good, 0, int(length($good) * $frac)), 0600);
        refused("truncated to $frac of its size", qr/truncated/);
}
spew($store, '', 0600);
refused('an empty store file', qr/truncated|empty/);
# Another master key.
spew($store, $good, 0600);
spew($master, KB::random_hex(32) . "\n", 0600);
refused('another master key', qr/master key does not match/);
# No master key at all.
unlink $master;
refused('a missing master key', qr/master key/);

# Everything put back: it starts and serves again, so the refusals above
# were about the file and nothing else.
spew($master, "$master_hex\n", 0600);
spew($store, $good, 0600);
clear_sockets();
my $b3 = start_broker(config => $conf_text);
$res = req($b3, path => '/v1/chat/completions', json => $chat);
is($res->{status}, 200, 'the restored store works again') or diag(KB::show_res($res));
is($b3->stop, 0, 'broker exits 0') or diag($b3->log);

done_testing();
