#!/usr/bin/perl
# Socket activation: the api socket handed over by the service manager as
# the fd named "api" (here by systemd-socket-activate, as systemd would);
# [agent] listen is then ignored and never created.
use v5.36;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use KB;

my $activate = -x '/usr/bin/systemd-socket-activate' ? '/usr/bin/systemd-socket-activate'
                                                     : '/lib/systemd/systemd-socket-activate';
plan skip_all => 'systemd-socket-activate not installed' unless -x $activate;

ensure_journald();
my %keys = ('oai-key' => fixture_secret('oai'), 'anth-key' => fixture_secret('anth'));
my $mock = start_mock(require_key => [values %keys]);
my $cfg = standard_config(mock => $mock);
$cfg->{agent} = { listen => '@DIR@/not-used.sock' };
my $broker = start_broker(config => $cfg, keys => \%keys,
                          wrap => [$activate, '-l', '@DIR@/activated.sock', '--fdname=api'],
                          socket => '@DIR@/activated.sock');

my $res = req($broker, path => '/v1/chat/completions',
              json => { model => 'gpt-mini', messages => [{ role => 'user', content => 'hi' }] });
is($res->{status}, 200, 'a call through the activated socket is served') or diag(KB::show_res($res));
is($res->{json}{usage}{completion_tokens}, 7, 'the provider answered');
ok(!-e "$broker->{dir}/not-used.sock", '[agent] listen is not created when the fd "api" was passed');
like($broker->log, qr/socket-activated fd "api"/, 'the broker says it serves the activated fd');

my $w = req($broker, path => '/v1/keybroker/whoami');
is($w->{json}{team}, 'ops', 'identity works on the activated socket (team ops for root)');

is(KB::status_text($broker->stop), 'exit 0', 'SIGTERM: clean exit');
ok(-S "$broker->{dir}/activated.sock", 'the activated socket is not ours to remove: still there after exit');
done_testing;
