#!/usr/bin/perl
# Circuit breaker per route: consecutive failures open it; while open the
# route is skipped at once (the provider never sees a call); after the
# cooldown one probe goes through (half-open): a failed probe opens it
# again, a good one closes it. Every change is a route-state journal
# record; GET /routes and `keybrokerctl route list` show the state, which
# survives a reload.
use v5.36;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use KB;

my $MID_ROUTE = 'da52a66de9f14751b27d771e64ef1e05';
my $CTL = $ENV{KEYBROKERCTL} // "$KB::BUILD/keybrokerctl";

ensure_journald();
my %keys = ('k' => fixture_secret('brk'));
my $good = start_mock();
my $flaky = start_mock();       # a second provider, so its log shows exactly its calls

my $cfg = standard_config(mock => $good);
delete $cfg->{'team:ops'}{$_} for qw(requests_per_minute tokens_per_minute);
$cfg->{'route:good'} = { family => 'openai', base_url => $good->base_url, key => 'k' };
$cfg->{'route:flaky'} = { family => 'openai', base_url => $flaky->base_url, key => 'k',
                          header => 'x-mock-status: 503', breaker_failures => 3, breaker_error_ratio => 0,
                          breaker_cooldown => '3s' };
$cfg->{'model:m'} = { target => 'flaky up-flaky', fallback => 'good up-good' };
my $broker = start_broker(config => $cfg, keys => \%keys);
my $admin = $broker->dir . '/admin.sock';

sub chat() {
        req($broker, path => '/v1/chat/completions',
            json => { model => 'm', messages => [{ role => 'user', content => 'x' }] });
}
sub record($res) { journal_request($res->{headers}{'x-keybroker-request-id'}) }
sub route_state() {
        my $res = req($admin, path => '/routes');
        my ($r) = grep { $_->{name} eq 'flaky' } @{$res->{json}{routes} // []};
        return $r // {};
}
sub events() {
        return map { $_->{KEYBROKER_EVENT} } $broker->journal({ MESSAGE_ID => $MID_ROUTE, KEYBROKER_ROUTE => 'flaky' });
}

subtest 'failures below the threshold: each request falls over, circuit closed' => sub {
        for my $i (1 .. 2) {
                my $res = chat();
                is($res->{status}, 200, "request $i: 200 via the fallback");
                check_fields(record($res), { KEYBROKER_ATTEMPTS => '2', KEYBROKER_FALLBACK_FROM => 'flaky' },
                             "request $i: journal");
        }
        is($flaky->count, 2, 'flaky was called twice');
        is(route_state()->{circuit}, 'closed', 'circuit closed');
        is(route_state()->{consecutive_failures}, 2, '2 consecutive failures');
};

subtest 'the third consecutive failure opens the circuit (journaled)' => sub {
        my $res = chat();
        is($res->{status}, 200, '200 via the fallback');
        my @r = $broker->journal_wait({ MESSAGE_ID => $MID_ROUTE, KEYBROKER_EVENT => 'circuit_opened' });
        check_fields($r[0], {
                KEYBROKER_ROUTE => 'flaky', KEYBROKER_CONSECUTIVE_FAILURES => '3', PRIORITY => '4',
                MESSAGE => qr/flaky.*circuit opened/, KEYBROKER_REASON => qr/3 consecutive failures/,
        }, 'route-state record');
        is(route_state()->{circuit}, 'open', 'GET /routes: open');
};

subtest 'while open: the route is skipped at once, the provider sees nothing' => sub {
        my $n0 = $flaky->count;
        for my $i (1 .. 5) {
                my $t0 = time;
                my $res = chat();
                my $dt = time - $t0;
                is($res->{status}, 200, "request $i: 200");
                cmp_ok($dt, '<', 1, sprintf('request %d: fast (%.3f s)', $i, $dt));
                check_fields(record($res), {
                        KEYBROKER_ATTEMPTS => '1', KEYBROKER_FALLBACK_FROM => undef, KEYBROKER_ROUTE => 'good',
                }, "request $i: one attempt, straight to the fallback");
        }
        is($flaky->count, $n0, 'flaky got no call');
        my $r = run_cmd([$CTL, '--admin-socket', $admin, 'route', 'list']);
        is($r->{exit}, 0, 'route list exits 0');
        like($r->{stdout}, qr/^flaky\s+openai\s+\S+\s+k\@0\s+bearer\s+open\s+1\.00\s+\d+ms\s+m->up-flaky/m,
             'route list: flaky open, error ratio 1.00, p50') or diag($r->{stdout});
};

subtest 'after the cooldown: one probe; it fails, the circuit opens again' => sub {
        sleep 3.1;
        is(route_state()->{circuit}, 'half_open', 'GET /routes: half_open after the cooldown');
        my $n0 = $flaky->count;
        my $res = chat();
        is($res->{status}, 200, '200 via the fallback');
        is($flaky->count, $n0 + 1, 'the probe reached flaky');
        check_fields(record($res), { KEYBROKER_ATTEMPTS => '2', KEYBROKER_FALLBACK_FROM => 'flaky' }, 'journal');
        my @r = $broker->journal_wait({ MESSAGE_ID => $MID_ROUTE, KEYBROKER_ROUTE => 'flaky' }, 10, count => 3);
        is_deeply([map { $_->{KEYBROKER_EVENT} } @r], [qw(circuit_opened circuit_half_open circuit_opened)],
                  'journal: opened, half_open, opened');
        like($r[-1]{KEYBROKER_REASON} // '', qr/probe failed/, 'the reason says the probe failed');
        is(route_state()->{circuit}, 'open', 'open again');
        $res = chat();
        is($flaky->count, $n0 + 1, 'and skipped again');
};

subtest 'the circuit state survives a reload' => sub {
        my $conf = $broker->conf;
        my $text = slurp($conf);
        ok($text =~ s/^header = x-mock-status: 503\n//m, 'the provider recovers (config without the scripted 503)');
        spew($conf, $text);
        my $res = req($admin, method => 'POST', path => '/reload');
        is($res->{status}, 200, 'POST /reload') or diag(KB::show_res($res));
        is(route_state()->{circuit}, 'open', 'still open after the reload');
};

subtest 'after the cooldown a good probe closes it' => sub {
        sleep 3.1;
        my $n0 = $flaky->count;
        my $res = chat();
        is($res->{status}, 200, 'status 200');
        is($res->{headers}{'x-keybroker-route'}, 'flaky', 'answered by the probe on flaky');
        is($flaky->count, $n0 + 1, 'one call to flaky');
        check_fields(record($res), { KEYBROKER_ATTEMPTS => '1', KEYBROKER_ROUTE => 'flaky' }, 'journal');
        my @r = $broker->journal_wait({ MESSAGE_ID => $MID_ROUTE, KEYBROKER_ROUTE => 'flaky' }, 10, count => 5);
        is_deeply([map { $_->{KEYBROKER_EVENT} } @r],
                  [qw(circuit_opened circuit_half_open circuit_opened circuit_half_open circuit_closed)],
                  'journal: ... half_open, closed');
        is($r[-1]{PRIORITY}, '6', 'closed is informational');
        my $st = route_state();
        is($st->{circuit}, 'closed', 'GET /routes: closed');
        is($st->{consecutive_failures}, 0, 'counters reset');
        for (1 .. 3) {
                $res = chat();
                is($res->{headers}{'x-keybroker-route'}, 'flaky', 'traffic goes to flaky again');
        }
};

ok($broker->alive, 'broker still running');
is($broker->stop, 0, 'broker exits 0') or diag($broker->log);
done_testing;
