#!/usr/bin/perl
# TLS to the provider: verification is always on. A provider whose
# certificate chains to no trusted CA is refused (502); the same provider is
# accepted once the route's ca_file trusts its CA. The TLS endpoint is socat
# terminating TLS in front of the mock, with a CA made here.
use v5.36;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use KB;

plan skip_all => 'socat or openssl not installed' unless -x '/usr/bin/socat' && -x '/usr/bin/openssl';

ensure_journald();
my %keys = ('oai-key' => fixture_secret('oai'), 'anth-key' => fixture_secret('anth'));
my $mock = start_mock(require_key => [values %keys]);
my $pki = KB::tmpdir('pki');

sub ossl(@args) {
        my $r = KB::run_cmd(['openssl', @args]);
        $r->{exit} == 0 or BAIL_OUT("openssl @args failed: $r->{out}");
}
ossl(qw(req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=keybroker-test-CA),
     -keyout => "$pki/ca.key", -out => "$pki/ca.pem");
ossl(qw(req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1), -keyout => "$pki/srv.key", -out => "$pki/srv.csr");
KB::spew("$pki/ext", "subjectAltName=IP:127.0.0.1\n");
ossl(qw(x509 -req -days 2 -CAcreateserial), -in => "$pki/srv.csr", -CA => "$pki/ca.pem",
     -CAkey => "$pki/ca.key", -extfile => "$pki/ext", -out => "$pki/srv.pem");

my $port = KB::free_port();
my $socat = KB::spawn(cmd => ['socat', "OPENSSL-LISTEN:$port,bind=127.0.0.1,reuseaddr,fork,"
                                      . "cert=$pki/srv.pem,key=$pki/srv.key,verify=0",
                              'TCP:127.0.0.1:' . $mock->port],
                      output => "$pki/socat.log", name => 'socat');
KB::wait_until(10, sub { IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port") ? 1 : 0 })
        or BAIL_OUT('socat did not listen');
END { local $?; KB::stop_pid($socat) if $socat }

my $cfg = standard_config(mock => $mock);
my $tls = "https://127.0.0.1:$port/v1";
$cfg->{'route:tls-untrusted'} = { family => 'openai', base_url => $tls, key => 'oai-key' };
$cfg->{'route:tls-trusted'} = { family => 'openai', base_url => $tls, key => 'oai-key', ca_file => "$pki/ca.pem" };
$cfg->{'model:m-untrusted'} = { target => 'tls-untrusted up-model' };
$cfg->{'model:m-trusted'} = { target => 'tls-trusted up-model' };
my $broker = start_broker(config => $cfg, keys => \%keys);

sub chat($model) {
        return req($broker, path => '/v1/chat/completions',
                   json => { model => $model, messages => [{ role => 'user', content => 'tls?' }] });
}

my $before = $mock->count;
my $res = chat('m-untrusted');
check_openai_error($res, 502, 'upstream_unavailable', 'untrusted certificate: 502 upstream_unavailable');
like($res->{json}{error}{message} // '', qr/certificate|SSL/i, 'the message says why (certificate)');
is($mock->count, $before, 'nothing reached the provider through an untrusted TLS channel');
my $rec = journal_request($res->{headers}{'x-keybroker-request-id'});
check_fields($rec, { KEYBROKER_OUTCOME => 'upstream_error', KEYBROKER_STATUS => '502',
                     KEYBROKER_ROUTE => 'tls-untrusted' }, 'journal: upstream_error');

$res = chat('m-trusted');
is($res->{status}, 200, 'ca_file trusts the CA: 200 over TLS') or diag(KB::show_res($res));
is($res->{json}{model}, 'up-model', 'the provider answered through TLS');
my $e = $mock->entry($mock->count);
is($e->{headers}{authorization}, "Bearer $keys{'oai-key'}", 'the key went over the verified channel');

done_testing;
