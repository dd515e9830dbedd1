#!/usr/bin/perl
# An object's later calls go where it was made: through the route that made
# it (after default_route moved to another route by a reload) and with the
# key version that made it (after the key was rotated: the rotated-out
# version is still used for it), while new objects use the new ones.
use v5.36;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use KB;

ensure_journald();
my @v = map { fixture_secret("obj-v$_") } 1 .. 2;
my $other = fixture_secret('other');
my $mock = start_mock(require_key => [@v]);
my $mock2 = start_mock(require_key => [$other]);

my $cfg = standard_config(mock => $mock);
$cfg->{'route:oai'}{key} = 'obj-key';
$cfg->{'route:oai2'} = { family => 'openai', base_url => $mock2->base_url, key => 'other-key', auth => 'bearer' };
$cfg->{'team:ops'}{default_route} = 'oai';
my $broker = KB::start_keystore_broker($cfg, { 'other-key' => $other });
my $admin_sock = $broker->dir . '/admin.sock';
sub admin($method, $path, %o) { req($admin_sock, method => $method, path => $path, %o) }

my $res = admin('PUT', '/keys/obj-key', body => "$v[0]\n");
is($res->{status}, 200, 'key version 1 set') or diag(KB::show_res($res));

my $f = KB::tmpdir('obj') . '/a.txt';
KB::spew($f, "hello\n");
$res = req($broker, method => 'POST', path => '/v1/files', curl => ['-F', 'purpose=user_data', '-F', "file=\@$f"]);
is($res->{status}, 200, 'a file made with version 1') or diag(KB::show_res($res));
my $file = $res->{json}{id};

$res = admin('PUT', '/keys/obj-key', body => "$v[1]\n", headers => ['If-Match' => '*']);
is($res->{json}{version}, 2, 'rotated to version 2');

$res = req($broker, path => "/v1/files/$file/content");
is($res->{status}, 200, 'the file is read after the rotation');
is($mock->entry_for($res)->{headers}{authorization}, "Bearer $v[0]", 'with the version that made it');
is(journal_request($res->{headers}{'x-keybroker-request-id'})->{KEYBROKER_KEY}, 'obj-key@1', 'journaled as obj-key@1');

$res = req($broker, method => 'POST', path => '/v1/files', curl => ['-F', 'purpose=user_data', '-F', "file=\@$f"]);
is($mock->entry_for($res)->{headers}{authorization}, "Bearer $v[1]", 'a new file is made with version 2');

# default_route moves to another route: new objects go there, old ones stay.
my $conf = KB::slurp($broker->conf);
$conf =~ s/^default_route = oai$/default_route = oai2/m or die 'no default_route line';
KB::spew($broker->conf, $conf);
$res = admin('POST', '/reload');
is($res->{status}, 200, 'reloaded with default_route = oai2') or diag(KB::show_res($res));

my $n2 = $mock2->count;
$res = req($broker, path => "/v1/files/$file");
is($res->{status}, 200, 'the old file is still read');
is($mock->entry_for($res)->{path}, "/v1/files/$file", 'through the route that made it');
is($mock2->count, $n2, 'not the new default route');
$res = req($broker, method => 'POST', path => '/v1/files', curl => ['-F', 'purpose=user_data', '-F', "file=\@$f"]);
is($res->{status}, 200, 'a new file');
is($mock2->count, $n2 + 1, 'is made through the new default route');

done_testing;
