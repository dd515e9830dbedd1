#!/usr/bin/perl
# Canary stop condition: a target with rollback_on_error_ratio whose error
# ratio over min_requests attempts goes above it is set to weight 0 by
# itself, journaled (canary_rolled_back), kept in state_dir, and gets no
# more traffic; the app never noticed (the stable target took the calls).
use v5.36;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use KB;

my $MID_ROUTE = 'da52a66de9f14751b27d771e64ef1e05';

ensure_journald();
my %keys = ('k' => fixture_secret('can'));
my $mock = start_mock();
my $cfg = standard_config(mock => $mock);
delete $cfg->{'team:ops'}{$_} for qw(requests_per_minute tokens_per_minute);
$cfg->{'route:stable'} = { family => 'openai', base_url => $mock->base_url, key => 'k' };
# The canary's provider fails every call; its breaker is off so that only
# the canary condition acts.
$cfg->{'route:canary'} = { family => 'openai', base_url => $mock->base_url, key => 'k',
                           header => ['x-mock-status: 500', 'x-canary: 1'],
                           breaker_failures => 0, breaker_error_ratio => 0 };
$cfg->{'model:m'} = { target => ['stable up-stable weight=70',
                                 'canary up-canary weight=30 rollback_on_error_ratio=0.5 min_requests=8'] };
my $broker = start_broker(config => $cfg, keys => \%keys);
my $admin = $broker->dir . '/admin.sock';

my $conn = raw_connect($broker);
sub chat() {
        $conn->send(KB::http_request('POST', '/v1/chat/completions',
                                     json => { model => 'm', messages => [{ role => 'user', content => 'x' }] }));
        return $conn->read_response;
}
sub canary_calls() { scalar grep { $_->{headers}{'x-canary'} } $mock->log_entries }
sub canary_target() {
        my $res = req($admin, path => '/routes');
        my ($r) = grep { $_->{name} eq 'canary' } @{$res->{json}{routes} // []};
        return ($r->{targets} // [])->[0] // {};
}

subtest 'the canary gets traffic until its errors cross the stop condition' => sub {
        my ($n, $bad) = (0, 0);
        while (canary_calls() < 8 && $n < 400) {
                my $res = chat() or last;
                $n++;
                $bad++ if ($res->{status} // 0) != 200;
        }
        is($bad, 0, "every one of $n requests got 200 (the stable target took the canary's failures)");
        is(canary_calls(), 8, 'the canary was tried exactly min_requests (8) times');
        my @r = $broker->journal_wait({ MESSAGE_ID => $MID_ROUTE, KEYBROKER_EVENT => 'canary_rolled_back' });
        check_fields($r[0], {
                KEYBROKER_ROUTE => 'canary', KEYBROKER_MODEL => 'm', KEYBROKER_WEIGHTS => 'stable=70,canary=0',
                KEYBROKER_ERROR_RATIO => '1.000', KEYBROKER_REQUESTS => '8', PRIORITY => '4',
                MESSAGE => qr/canary.*rolled back/,
        }, 'journal: canary_rolled_back');
        my $t = canary_target();
        is($t->{effective_weight}, 0, 'GET /routes: effective weight 0');
        is($t->{weight}, 30, '... config weight 30');
        ok($t->{overridden}, '... overridden');
};

subtest 'no more traffic to the canary' => sub {
        my $n0 = canary_calls();
        my %routes;
        for (1 .. 60) {
                my $res = chat();
                $routes{$res->{headers}{'x-keybroker-route'} // 'none'}++;
        }
        is_deeply(\%routes, { stable => 60 }, 'all 60 requests to stable');
        is(canary_calls(), $n0, 'the canary got no call');
};

subtest 'the rollback is kept in state_dir' => sub {
        my $j = json_decode(slurp($broker->dir . '/state/splits.json') // '');
        is_deeply($j, { version => 1, splits => [{ model => 'm', route => 'canary', upstream_model => 'up-canary',
                                                   weight => 0 }] }, 'splits.json') or diag(explain($j));
};

$conn->close;
ok($broker->alive, 'broker still running');
is($broker->stop, 0, 'broker exits 0') or diag($broker->log);
done_testing;
