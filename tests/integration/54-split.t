#!/usr/bin/perl
# Weights: over 1,000 requests a 90/10 split lands within a 4-sigma band;
# `keybrokerctl model split` changes live traffic, is journaled
# (split_changed), persists in state_dir across a restart, and setting the
# config's weight again removes the override.
use v5.36;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use KB;

my $MID_ROUTE = 'da52a66de9f14751b27d771e64ef1e05';
my $CTL = $ENV{KEYBROKERCTL} // "$KB::BUILD/keybrokerctl";
plan skip_all => "keybrokerctl not built: $CTL" unless -x $CTL;

ensure_journald();
my %keys = ('k' => fixture_secret('split'));
my $mock = start_mock();
my $state = tmpdir('state');
my $cfg = standard_config(mock => $mock);
delete $cfg->{'team:ops'}{$_} for qw(requests_per_minute tokens_per_minute);
$cfg->{agent} = { state_dir => $state, keystore => "$state/keys.sealed" };
$cfg->{'route:one'} = { family => 'openai', base_url => $mock->base_url, key => 'k' };
$cfg->{'route:two'} = { family => 'openai', base_url => $mock->base_url, key => 'k' };
$cfg->{'model:m'} = { target => ['one up-one weight=90', 'two up-two weight=10'] };

my $broker = start_broker(config => $cfg, keys => \%keys);
sub admin() { $broker->dir . '/admin.sock' }
sub ctl(@args) { run_cmd([$CTL, '--admin-socket', admin(), @args]) }

# Route counts of n requests on one keep-alive connection.
sub spread($n) {
        my $conn = raw_connect($broker);
        my %c;
        for (1 .. $n) {
                $conn->send(KB::http_request('POST', '/v1/chat/completions',
                                             json => { model => 'm', messages => [{ role => 'user', content => 'x' }] }));
                my $res = $conn->read_response or do { $c{error}++; last };
                $c{($res->{status} // 0) == 200 ? $res->{headers}{'x-keybroker-route'} // 'none' : 'error'}++;
        }
        $conn->close;
        $c{$_} //= 0 for qw(one two);
        return \%c;
}

# |observed - n p| within 4 standard deviations of a binomial.
sub within($got, $n, $p, $name) {
        my $mean = $n * $p;
        my $sigma = sqrt($n * $p * (1 - $p));
        ok(abs($got - $mean) <= 4 * $sigma, sprintf('%s: %d of %d (expected %.0f ± %.1f)', $name, $got, $n, $mean, 4 * $sigma));
}

sub target($name) {
        my $res = req(admin(), path => '/routes');
        my ($r) = grep { $_->{name} eq $name } @{$res->{json}{routes} // []};
        return ($r->{targets} // [])->[0] // {};
}

subtest 'config weights 90/10 over 1,000 requests' => sub {
        my $c = spread(1000);
        is($c->{error} // 0, 0, 'no errors');
        within($c->{two}, 1000, 0.1, 'route two');
        is($c->{one} + $c->{two}, 1000, 'all to one or two');
};

subtest 'model split 50/50 changes live traffic' => sub {
        my $r = ctl('model', 'split', 'm', 'one=50', 'two=50');
        is($r->{exit}, 0, 'model split exits 0') or diag($r->{stderr});
        is($r->{stdout}, "m: one=50 two=50\n", 'prints the new weights');
        my @rec = $broker->journal_wait({ MESSAGE_ID => $MID_ROUTE, KEYBROKER_EVENT => 'split_changed' });
        check_fields($rec[0], {
                KEYBROKER_MODEL => 'm', KEYBROKER_WEIGHTS => 'one=50,two=50', KEYBROKER_ADMIN_UID => '0',
                PRIORITY => '5', KEYBROKER_ROUTE => undef,
        }, 'journal: split_changed');
        my $c = spread(400);
        within($c->{two}, 400, 0.5, 'route two');
        is(target('two')->{effective_weight}, 50, 'GET /routes: two at 50');
        ok(target('two')->{overridden}, '... overridden');
        $r = ctl('route', 'list');
        like($r->{stdout}, qr/^two\s.*m->up-two w50 \(config 10\)/m, 'route list shows the override') or diag($r->{stdout});
};

subtest 'two=0: all traffic to one' => sub {
        my $r = ctl('--json', 'model', 'split', 'm', 'two=0', 'one=90');
        is($r->{exit}, 0, 'exits 0');
        my $j = json_decode($r->{stdout});
        is_deeply($j->{weights}, { one => 90, two => 0 }, '--json: the weights');
        ok($j->{persisted}, '--json: persisted');
        my $c = spread(100);
        is_deeply([$c->{one}, $c->{two}], [100, 0], '100 to one, none to two');
        my $saved = json_decode(slurp("$state/splits.json") // '');
        is_deeply($saved->{splits}, [{ model => 'm', route => 'two', upstream_model => 'up-two', weight => 0 }],
                  'splits.json: only the override (one=90 is the config weight)');
};

subtest 'the split survives a restart' => sub {
        is($broker->stop, 0, 'broker stops');
        $broker = start_broker(config => $cfg, keys => \%keys);
        is(target('two')->{effective_weight}, 0, 'GET /routes: two still at 0');
        my $c = spread(100);
        is_deeply([$c->{one}, $c->{two}], [100, 0], 'still no traffic to two');
};

subtest 'setting the config weight again removes the override' => sub {
        my $r = ctl('model', 'split', 'm', 'two=10');
        is($r->{exit}, 0, 'exits 0');
        ok(!target('two')->{overridden}, 'not overridden any more');
        is(target('two')->{effective_weight}, 10, 'weight 10');
        my $saved = json_decode(slurp("$state/splits.json") // '');
        is_deeply($saved->{splits}, [], 'splits.json has no override');
        my $c = spread(300);
        within($c->{two}, 300, 0.1, 'route two back at 10 %');
};

subtest 'bad splits' => sub {
        my $r = ctl('model', 'split', 'nosuch', 'one=1');
        is($r->{exit}, 1, 'unknown model: exit 1');
        like($r->{stderr}, qr/nosuch/, '... naming it');
        $r = ctl('model', 'split', 'm', 'three=1');
        is($r->{exit}, 1, 'a route that is not a target: exit 1');
        like($r->{stderr}, qr/not a target/, '... saying so');
        $r = ctl('model', 'split', 'm', 'one=0', 'two=0');
        is($r->{exit}, 1, 'all weights 0: exit 1');
        like($r->{stderr}, qr/non-zero/, '... saying why');
        for my $args (['m'], ['m', 'one'], ['m', 'one=x'], ['m', 'one=1000001'], ['m', 'one=1', 'one=2'], []) {
                $r = ctl('model', 'split', @$args);
                is($r->{exit}, 2, "model split @$args: usage error (exit 2)");
        }
        $r = ctl('model', 'frob');
        is($r->{exit}, 2, 'unknown model command: exit 2');
        $r = ctl('model', 'split', '--help');
        is($r->{exit}, 0, 'model split --help exits 0');
        like($r->{stdout}, qr/^Usage: keybrokerctl .*model split NAME ROUTE=WEIGHT/, 'usage text');
        is(target('two')->{effective_weight}, 10, 'nothing changed');
        my $res = req(admin(), method => 'PUT', path => '/models/m/split', body => '{"weights":{"one":"x"}}');
        is($res->{status}, 400, 'PUT with a non-integer weight: 400');
        $res = req(admin(), method => 'PUT', path => '/models/m/split', body => 'nope');
        is($res->{status}, 400, 'PUT with a body that is not JSON: 400');
        $res = req(admin(), method => 'POST', path => '/models/m/split', body => '{"weights":{"one":1}}');
        is($res->{status}, 405, 'POST: 405');
        $res = req(admin(), method => 'PUT', path => '/models/m/weights', body => '{"weights":{"one":1}}');
        is($res->{status}, 404, 'another endpoint under /models: 404');
};

ok($broker->alive, 'broker still running');
is($broker->stop, 0, 'broker exits 0') or diag($broker->log);
done_testing;
