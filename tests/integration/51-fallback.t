#!/usr/bin/perl
# Fallback: a request moves to the next candidate on connect failure, on a
# timeout before the first byte, and on the statuses of the route's
# retry_on (429 500 502 503 504 529 by default), honouring Retry-After up
# to retry_after_max, at most max_attempts in all, never after a byte
# reached the app. The record says how many attempts and where from.
#
# The mock has no per-route behaviour: a route fails because its static
# `header = x-mock-status: S` line scripts the mock, or because its
# base_url is a closed port.
use v5.36;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use KB;

ensure_journald();
my %keys = (map { ("k-$_" => fixture_secret($_)) } qw(good bad dead));
my $mock = start_mock();
my $closed = free_port();
my $base = $mock->base_url;

my $cfg = standard_config(mock => $mock);
delete $cfg->{'team:ops'}{$_} for qw(requests_per_minute tokens_per_minute);
# Breakers would open after a few scripted failures and change what this
# file is about; 52-breaker.t covers them.
my %nobreak = (breaker_failures => 0, breaker_error_ratio => 0);
sub route($name, %o) {
        $cfg->{"route:$name"} = { family => 'openai', base_url => $base, key => 'k-bad', timeout => '10s',
                                  connect_timeout => '3s', %nobreak, %o };
}
route('good', key => 'k-good');
route('dead', base_url => "http://127.0.0.1:$closed/v1", key => 'k-dead');
route('dead2', base_url => "http://127.0.0.1:$closed/v1", key => 'k-dead');
route("s$_", header => "x-mock-status: $_") for qw(400 429 500 502 503 504 529);
route('hang', header => 'x-mock-hang: 1', timeout => '1s');
route('ra2', header => ['x-mock-status: 429', 'x-mock-retry-after: 2']);
route('ra30', header => ['x-mock-status: 503', 'x-mock-retry-after: 30']);
route('noretry', header => 'x-mock-status: 503', retry_on => 'connect timeout');
route('only500', header => 'x-mock-status: 503', retry_on => '500');
route('cut', header => 'x-mock-cut-after: 2');
route('anth', family => 'anthropic', header => 'x-mock-status: 503');

sub model($name, $target, @fallbacks) {
        $cfg->{"model:$name"} = { target => "$target up-$target", (@fallbacks ? (fallback => [map { "$_ up-$_" } @fallbacks]) : ()) };
}
model('m-dead', 'dead', 'good');
model("m-$_", "s$_", 'good') for qw(400 429 500 502 503 504 529);
model('m-hang', 'hang', 'good');
model('m-ra2', 'ra2', 'good');
model('m-ra30', 'ra30', 'good');
$cfg->{'model:m-ra30'}{retry_after_max} = '1s';
model('m-noretry', 'noretry', 'good');
model('m-only500', 'only500', 'good');
model('m-cut', 'cut', 'good');
model('m-max', 's503', 's502', 's500', 'good');
model('m-max1', 's503', 'good');
$cfg->{'model:m-max1'}{max_attempts} = 1;
model('m-alldead', 'dead', 'dead2');
model('m-fam', 'anth', 'good');
model('m-famonly', 'anth');

my $broker = start_broker(config => $cfg, keys => \%keys);

sub chat($model, %o) {
        req($broker, path => '/v1/chat/completions', stream => $o{stream},
            json => { model => $model, messages => [{ role => 'user', content => 'x' }],
                      ($o{stream} ? (stream => JSON::PP::true) : ()) });
}

# Requests the mock got since $n0 (by log position).
sub mock_since($n0) { my @e = $mock->log_entries; return @e[$n0 .. $#e] }

sub record($res) { journal_request($res->{headers}{'x-keybroker-request-id'}) }

subtest 'connection refused: falls over to the next candidate' => sub {
        my $n0 = $mock->count;
        my $res = chat('m-dead');
        is($res->{status}, 200, '200 from the fallback') or diag(KB::show_res($res));
        is($res->{headers}{'x-keybroker-route'}, 'good', 'x-keybroker-route is the answering route');
        my @got = mock_since($n0);
        is(scalar @got, 1, 'the provider got one call');
        is(KB::Mock::body_json($got[0])->{model}, 'up-good', "the fallback's own upstream model");
        like($got[0]{headers}{authorization} // '', qr/^Bearer \Q$keys{'k-good'}\E$/, "the fallback route's key");
        check_fields(record($res), {
                KEYBROKER_ATTEMPTS => '2', KEYBROKER_FALLBACK_FROM => 'dead', KEYBROKER_ROUTE => 'good',
                KEYBROKER_KEY => 'k-good@0', KEYBROKER_OUTCOME => 'ok', KEYBROKER_STATUS => '200',
        }, 'journal: 2 attempts, from dead, key of the answering attempt');
};

for my $st (qw(429 500 502 503 504 529)) {
        subtest "upstream $st: falls over" => sub {
                my $n0 = $mock->count;
                my $res = chat("m-$st");
                is($res->{status}, 200, '200 from the fallback') or diag(KB::show_res($res));
                my @got = mock_since($n0);
                is(scalar @got, 2, 'two calls: the failing route, then the fallback');
                is($got[0]{headers}{'x-mock-status'}, $st, "first to s$st");
                is(KB::Mock::body_json($got[0])->{model}, "up-s$st", '... with its upstream model');
                ok(!exists $got[1]{headers}{'x-mock-status'}, 'then to good');
                check_fields(record($res), {
                        KEYBROKER_ATTEMPTS => '2', KEYBROKER_FALLBACK_FROM => "s$st", KEYBROKER_ROUTE => 'good',
                        KEYBROKER_STATUS => '200', KEYBROKER_UPSTREAM_STATUS => '200',
                }, 'journal');
        };
}

subtest 'a status not in retry_on (400) is relayed, not retried' => sub {
        my $n0 = $mock->count;
        my $res = chat('m-400');
        is($res->{status}, 400, "the provider's 400 reaches the app");
        is(scalar(my @g = mock_since($n0)), 1, 'one call only');
        check_fields(record($res), {
                KEYBROKER_ATTEMPTS => '1', KEYBROKER_FALLBACK_FROM => undef, KEYBROKER_ROUTE => 's400',
        }, 'journal');
};

subtest 'retry_on set per route' => sub {
        my $n0 = $mock->count;
        my $res = chat('m-noretry');
        is($res->{status}, 503, 'retry_on = connect timeout: a 503 is relayed');
        is(scalar(my @g = mock_since($n0)), 1, 'one call');
        $res = chat('m-only500');
        is($res->{status}, 503, 'retry_on = 500: a 503 is relayed');
        check_fields(record($res), { KEYBROKER_ATTEMPTS => '1' }, 'journal: 1 attempt');
};

subtest 'timeout before the first byte (hanging provider): falls over' => sub {
        my $t0 = time;
        my $res = chat('m-hang');
        my $dt = time - $t0;
        is($res->{status}, 200, '200 from the fallback') or diag(KB::show_res($res));
        cmp_ok($dt, '>=', 0.9, sprintf('after the 1 s timeout (%.2f s)', $dt));
        cmp_ok($dt, '<', 8, 'not much later');
        check_fields(record($res), {
                KEYBROKER_ATTEMPTS => '2', KEYBROKER_FALLBACK_FROM => 'hang', KEYBROKER_ROUTE => 'good',
        }, 'journal');
};

subtest 'Retry-After honoured before the next attempt' => sub {
        my $t0 = time;
        my $res = chat('m-ra2');
        my $dt = time - $t0;
        is($res->{status}, 200, '200 from the fallback') or diag(KB::show_res($res));
        cmp_ok($dt, '>=', 1.95, sprintf('waited the 2 s the 429 asked for (%.2f s)', $dt));
        cmp_ok($dt, '<', 6, 'and not much more');
        check_fields(record($res), { KEYBROKER_ATTEMPTS => '2', KEYBROKER_FALLBACK_FROM => 'ra2' }, 'journal');

        $t0 = time;
        $res = chat('m-ra30');
        $dt = time - $t0;
        is($res->{status}, 200, '200 from the fallback');
        cmp_ok($dt, '>=', 0.95, sprintf('Retry-After: 30 capped at retry_after_max = 1s (%.2f s)', $dt));
        cmp_ok($dt, '<', 5, 'not 30 s');
};

subtest 'the app leaves while the broker waits out a Retry-After' => sub {
        my $n0 = $mock->count;
        my $res = req($broker, path => '/v1/chat/completions', timeout => 0.7,
                      json => { model => 'm-ra2', messages => [{ role => 'user', content => 'x' }] });
        ok(!defined $res->{status}, 'the client gave up before any answer');
        my @r = $broker->journal_wait({ MESSAGE_ID => $KB::MID_REQUEST, KEYBROKER_MODEL => 'm-ra2',
                                        KEYBROKER_OUTCOME => 'client_abort' });
        check_fields($r[-1], { KEYBROKER_ATTEMPTS => '1', KEYBROKER_FALLBACK_FROM => 'ra2' }, 'journal: client_abort');
        sleep 2.5;
        is(scalar(my @g = mock_since($n0)), 1, 'the next attempt never started');
        ok($broker->alive, 'broker fine');
};

subtest 'no fallback once a byte reached the app (stream cut mid-way)' => sub {
        my $n0 = $mock->count;
        my $res = chat('m-cut', stream => 1);
        is($res->{status}, 200, 'the stream had begun: 200');
        my @ev = sse_events($res->{body});
        ok((grep { ($_->{json}{error}{code} // '') eq 'stream_interrupted' } @ev), 'the app is told of the interruption')
                or diag($res->{body});
        is(scalar(my @g = mock_since($n0)), 1, 'no second call');
        check_fields(record($res), {
                KEYBROKER_ATTEMPTS => '1', KEYBROKER_OUTCOME => 'stream_interrupted', KEYBROKER_ROUTE => 'cut',
                KEYBROKER_FALLBACK_FROM => undef,
        }, 'journal');
};

subtest 'max_attempts: the last attempt\'s answer is what the app gets' => sub {
        my $n0 = $mock->count;
        my $res = chat('m-max');
        is($res->{status}, 500, 'third attempt (s500) answered 500: relayed');
        is($res->{headers}{'x-keybroker-route'}, 's500', 'x-keybroker-route s500');
        my @got = mock_since($n0);
        is_deeply([map { $_->{headers}{'x-mock-status'} // 'none' } @got], [503, 502, 500],
                  'three calls, never the fourth candidate');
        check_fields(record($res), {
                KEYBROKER_ATTEMPTS => '3', KEYBROKER_FALLBACK_FROM => 's503,s502', KEYBROKER_STATUS => '500',
                KEYBROKER_OUTCOME => 'upstream_error',
        }, 'journal');

        $n0 = $mock->count;
        $res = chat('m-max1');
        is($res->{status}, 503, 'max_attempts = 1: no fallback');
        is(scalar(my @g = mock_since($n0)), 1, 'one call');
};

subtest 'every candidate fails to connect: the last failure' => sub {
        my $res = chat('m-alldead');
        check_openai_error($res, 502, 'upstream_unavailable');
        check_fields(record($res), {
                KEYBROKER_ATTEMPTS => '2', KEYBROKER_FALLBACK_FROM => 'dead', KEYBROKER_ROUTE => 'dead2',
                KEYBROKER_OUTCOME => 'upstream_error',
        }, 'journal');
};

subtest 'candidates of another family are skipped' => sub {
        my $n0 = $mock->count;
        my $res = chat('m-fam');
        is($res->{status}, 200, 'the anthropic target is skipped for a chat call');
        is($res->{headers}{'x-keybroker-route'}, 'good', 'served by the openai fallback');
        is(scalar(my @g = mock_since($n0)), 1, 'one call');
        check_fields(record($res), { KEYBROKER_ATTEMPTS => '1', KEYBROKER_FALLBACK_FROM => undef }, 'journal');

        $res = chat('m-famonly');
        check_openai_error($res, 400, 'invalid_request', 'a model without a route of the family: 400');
        like($res->{json}{error}{message} // '', qr/openai/, 'saying which API');
};

ok($broker->alive, 'broker still running');
is($broker->stop, 0, 'broker exits 0') or diag($broker->log);
done_testing;
