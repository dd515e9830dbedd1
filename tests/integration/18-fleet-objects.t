#!/usr/bin/perl
# The object table across a fleet: two brokers share a real redis-server as
# their quota store. A file made through one is its team's on the other
# too (same route, same key version), still no other team's; deleted on
# one, gone on both; a batch billed by one is not billed again by the other.
use v5.36;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use KB;

ensure_journald();
my %keys = ('oai-key' => fixture_secret('oai'), 'anth-key' => fixture_secret('anth'));
my $mock = start_mock(require_key => [values %keys]);
my $redis = start_redis();
my $cfg = standard_config(mock => $mock);
# memcheck is slower than a store round trip's default bound
$cfg->{agent} = { quota_store => $redis->{url}, quota_store_timeout => $ENV{KB_VALGRIND} ? '1s' : '50ms' };
$cfg->{'route:oai'}{price} = 'gpt-4o-mini-2024-07-18 input=1 output=2';
my ($a, $b) = start_fleet(n => 2, config => $cfg, keys => \%keys);
# The files of a batch: an upload of its team is made through A, the batch
# through B (which learns of the file from the store).
my $tmp = tmpdir('fleet-objects');
my @SEARCH = (uid => 1001, gid => 2001);

# Both connected to the store before anything is made.
for my $br ($a, $b) {
        ok($br->journal_wait({ MESSAGE_ID => 'cfe4b02a7d4b41c5a0bb51ebad71f6d3', KEYBROKER_EVENT => 'connected' }, 10),
           'a broker connected to the store');
}

my $jsonl = "$tmp/in.jsonl";
KB::spew($jsonl, KB::json_encode({ custom_id => 'a', method => 'POST', url => '/v1/chat/completions',
                                   body => { model => 'gpt-4o-mini-2024-07-18', messages => [] } }) . "\n");

my $res = req($a, method => 'POST', path => '/v1/files', curl => ['-F', 'purpose=batch', '-F', "file=\@$jsonl"]);
is($res->{status}, 200, 'ops uploads a file through broker A') or diag(KB::show_res($res));
my $file = $res->{json}{id};
ok(KB::wait_until(5, sub { (KB::redis_hgetall($redis, 'keybroker:objects') // {})->{$file} }),
   'the store has it');

$res = req($b, path => '/v1/batches',
           json => { input_file_id => $file, endpoint => '/v1/chat/completions', completion_window => '24h' });
is($res->{status}, 200, 'a batch from it, made on B, which had never seen the file') or diag(KB::show_res($res));
my $batch = $res->{json}{id};
$res = req($b, path => "/v1/files/$file");
is($res->{status}, 200, 'broker B serves it to ops');
is($mock->entry_for($res)->{headers}{authorization}, "Bearer $keys{'oai-key'}", 'through the route and key that made it');
$res = req($b, path => "/v1/files/$file", @SEARCH);
is($res->{status}, 404, 'and to no other team');

my $billed = 0;
for my $br ($b, $a, $b, $a) {
        $res = req($br, path => "/v1/batches/$batch");
        is($res->{status}, 200, 'retrieved');
        my $rec = journal_request($res->{headers}{'x-keybroker-request-id'});
        $billed++ if ($rec->{KEYBROKER_BATCH} // '') eq '1';
        sleep 0.2;
}
is($billed, 1, 'billed once across the two brokers');

$res = req($a, method => 'DELETE', path => "/v1/files/$file");
is($res->{status}, 200, 'deleted through A');
ok(KB::wait_until(5, sub { !exists((KB::redis_hgetall($redis, 'keybroker:objects') // {})->{$file}) }),
   'gone from the store');

done_testing;
