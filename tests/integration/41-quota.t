#!/usr/bin/perl
# Per-team quotas on the request path (JSON answers; streams are
# 42-quota-stream.t): every limit kind refuses with 429 quota_exceeded in the
# family's error shape (rate_limit_error for the minute windows and
# max_concurrent, insufficient_quota for tokens_per_day and the USD budgets),
# a message naming team, limit, used/limit and reset, a sane retry-after, and
# x-ratelimit-* on every answer; a 60-way burst at a limit that fits 20
# forwards exactly 20; over-estimates released at settle admit more; the
# models allowlist and unpriced models; one quota journal record per limit
# per window; GET /teams usage and `keybrokerctl team list` agree with the
# journal.
use v5.36;
use FindBin;
use lib "$FindBin::Bin/lib";
use POSIX qw(floor strftime);
use Test::More;
use Time::HiRes qw(time sleep);
use Time::Local ();
use KB;

my $MID_QUOTA = 'd3d1e6b438f94b958707dfc486f2e5f9';
my $CTL = $ENV{KEYBROKERCTL} // "$KB::BUILD/keybrokerctl";

ensure_journald();
my %keys = ('oai-key' => fixture_secret('oai'), 'anth-key' => fixture_secret('anth'));
my $mock = start_mock(require_key => [values %keys]);
my $cfg = standard_config(mock => $mock);
# Prices of 1 and 2 USD per 1M tokens: a call costs input + 2 × output µUSD.
$cfg->{'route:anth'}{price} = 'claude-3-5-haiku-20241022 input=1 output=2 cached_input=0.5 cache_write=1.25';
$cfg->{'route:oai'}{price} = [$cfg->{'route:oai'}{price}, 'text-embedding-3-small input=1'];
$cfg->{'model:claude-sonnet'} = { target => 'anth claude-3-5-sonnet-20241022' };
# gpt-4o-2024-08-06 has no price on oai; gpt-4o-mini-2024-07-18 has one.
$cfg->{'model:unpriced-first'} = { target => 'oai gpt-4o-2024-08-06', fallback => 'oai gpt-4o-mini-2024-07-18' };
$cfg->{'model:unpriced-fallback'} = { target => 'oai gpt-4o-mini-2024-07-18', fallback => 'oai gpt-4o-2024-08-06' };
my %teams = (
        rpm => { requests_per_minute => 20, tokens_per_minute => 1000000 },
        rpmanth => { requests_per_minute => 2, tokens_per_minute => 1000000 },
        conc => { max_concurrent => 20 },
        tpm => { tokens_per_minute => 1500, requests_per_minute => 100 },
        tpd => { tokens_per_day => 100 },
        tpdanth => { tokens_per_day => 100 },
        usdday => { budget_usd_per_day => '0.0001' },
        usdmonth => { budget_usd_per_month => '0.0001' },
        narrow => { models => 'gpt-mini claude-sonnet', requests_per_minute => 50, tokens_per_minute => 90000 },
        budget => { budget_usd_per_day => 1 },
        zero => { budget_usd_per_day => 1, unpriced => 'zero' },
        denyall => { unpriced => 'deny' },
        acct => { requests_per_minute => 1000, tokens_per_minute => 10000000, tokens_per_day => 10000000,
                  budget_usd_per_day => 100, budget_usd_per_month => 1000, max_concurrent => 8 },
);
$cfg->{"team:$_"} = { users => '0', models => '*', %{$teams{$_}} } for keys %teams;
my $broker = start_broker(config => $cfg, keys => \%keys);
my $admin = $broker->dir . '/admin.sock';

my @ANTH = ('anthropic-version' => '2023-06-01');
my %CHAT = (model => 'gpt-mini', messages => [{ role => 'user', content => 'hi' }]);
my %MSG = (model => 'claude-haiku', messages => [{ role => 'user', content => 'hi' }]);

# ------------------------------------------------------------ helpers

sub est_input($body) { my $n = length(json_encode($body)); return int(($n + 3) / 4) }

sub call($team, %o) {
        my $anth = ($o{path} // '') =~ m{^/v1/messages};
        return req($broker, path => $o{path} // '/v1/chat/completions', json => $o{json},
                   headers => ['X-Keybroker-Team' => $team, ($anth ? @ANTH : ()), @{$o{headers} // []}]);
}

sub chat($team, %o) {
        my $extra = delete $o{json} // {};
        return call($team, json => { %CHAT, max_tokens => 10, %$extra }, %o);
}

sub msg($team, %o) {
        my $extra = delete $o{json} // {};
        return call($team, path => '/v1/messages', json => { %MSG, max_tokens => 10, %$extra }, %o);
}

sub teams() {
        my $res = req($admin, path => '/teams');
        is($res->{status}, 200, 'GET /teams 200') or diag(KB::show_res($res));
        return { map { $_->{name} => $_ } @{$res->{json}{teams} // []} };
}

sub usage($team) { teams()->{$team} }

sub iso($t) { strftime('%Y-%m-%dT%H:%M:%SZ', gmtime($t)) }
sub next_midnight() { (floor(time / 86400) + 1) * 86400 }
sub next_month() {
        my @t = gmtime(time);
        my ($y, $m) = ($t[5] + 1900, $t[4] + 1);
        ($y, $m) = $m == 12 ? ($y + 1, 1) : ($y, $m + 1);
        return Time::Local::timegm(0, 0, 0, 1, $m - 1, $y);
}

# Many requests at once on raw connections: all are sent before any answer
# is read, so the broker sees them in flight together.
sub burst($n, $path, $body, @headers) {
        my @c = map { raw_connect($broker) } 1 .. $n;
        my $bytes = http_request('POST', $path, json => $body, headers => [@headers]);
        $_->send($bytes) for @c;
        return \@c;
}

sub collect($conns) {
        my @res;
        for my $c (@$conns) {
                my $r = $c->read_response(timeout => 30);
                diag("no response: $c->{why}") unless $r;
                push @res, $r // {};
                $c->close;
        }
        return @res;
}

# Quota records this broker wrote for a team (after letting journald catch up).
sub quota_records($team, $want = 1) {
        my @r = $broker->journal_wait({ MESSAGE_ID => $MID_QUOTA, KEYBROKER_TEAM => $team }, 10, count => $want);
        sleep 0.5;
        journal_sync();
        return $broker->journal({ MESSAGE_ID => $MID_QUOTA, KEYBROKER_TEAM => $team });
}

# The x-ratelimit-* headers of a team with rpm and tpm limits.
sub check_ratelimit_headers($res, $rpm, $tpm, $name) {
        subtest "x-ratelimit-* headers: $name" => sub {
                my $h = $res->{headers} // {};
                is($h->{'x-ratelimit-limit-requests'}, $rpm, "limit-requests $rpm");
                is($h->{'x-ratelimit-limit-tokens'}, $tpm, "limit-tokens $tpm");
                like($h->{'x-ratelimit-remaining-requests'} // '', qr/^\d+$/, 'remaining-requests');
                like($h->{'x-ratelimit-remaining-tokens'} // '', qr/^\d+$/, 'remaining-tokens');
                cmp_ok($h->{'x-ratelimit-remaining-requests'} // 1e18, '<=', $rpm, 'remaining-requests <= limit');
                like($h->{"x-ratelimit-reset-$_"} // '', qr/^(\d+ms|\d+s|\d+m\d+s)$/, "reset-$_ in OpenAI's format")
                        for qw(requests tokens);
        };
}

# A 429 quota_exceeded of the agent's own making, checked to the letter.
#   family, team, limit, used, max (as printed: "$0.000075" for budgets),
#   reset => ISO | 'unknown', retry => [min, max]
sub check_quota_error($res, %o) {
        my $rate = $o{limit} =~ /per_minute|max_concurrent/;
        subtest "429 $o{limit} ($o{family}, team $o{team})" => sub {
                my $msg;
                if ($o{family} eq 'openai') {
                        check_openai_error($res, 429, 'quota_exceeded');
                        is($res->{json}{error}{type}, $rate ? 'rate_limit_error' : 'insufficient_quota', 'error.type');
                        $msg = $res->{json}{error}{message} // '';
                } else {
                        check_anthropic_error($res, 429, 'quota_exceeded');
                        is($res->{json}{error}{type}, 'rate_limit_error', 'error.type rate_limit_error');
                        ($msg = $res->{json}{error}{message} // '') =~ s/^quota_exceeded: //;
                }
                like($msg, qr/\bteam '\Q$o{team}\E'/, 'message names the team');
                like($msg, qr/\b\Q$o{limit}\E\b/, 'message names the limit');
                if (defined $o{used}) {
                        like($msg, qr/(?<![\w.\$])\Q$o{used}\E used of \Q$o{max}\E(?![\w.])/, "message says $o{used} used of $o{max}");
                } else {
                        like($msg, qr/\S+ used of \Q$o{max}\E\b/, "message says … used of $o{max}");
                }
                like($msg, qr/resets at \Q$o{reset}\E/, "message says it resets at $o{reset}") if $o{reset};
                like($msg, qr/resets at (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ|unknown)/, 'message names a reset time');
                my $ra = $res->{headers}{'retry-after'};
                like($ra // '', qr/^\d+$/, 'retry-after is whole seconds');
                my ($lo, $hi) = @{$o{retry}};
                ok(defined $ra && $ra >= $lo && $ra <= $hi, "retry-after $lo..$hi") or diag('retry-after: ' . ($ra // 'absent'));
                is($res->{headers}{'x-keybroker-team'}, $o{team}, 'x-keybroker-team');
                # The SDKs would otherwise sleep retry-after (until midnight)
                # before failing; minute windows and concurrency free up soon.
                is($res->{headers}{'x-should-retry'}, $rate ? 'true' : 'false',
                   'x-should-retry ' . ($rate ? 'true' : 'false'));
        };
}

# The per-request record of a refused call.
sub check_rejected_record($res, $team) {
        my $rec = journal_request($res->{headers}{'x-keybroker-request-id'});
        check_fields($rec, { KEYBROKER_TEAM => $team, KEYBROKER_STATUS => 429, KEYBROKER_OUTCOME => 'quota_rejected',
                             KEYBROKER_OUTPUT_TOKENS => sub { !$_[0] } }, "request record of the 429 ($team)");
}

sub tokens_of($rec) {
        my $t = ($rec->{KEYBROKER_INPUT_TOKENS} || 0) + ($rec->{KEYBROKER_OUTPUT_TOKENS} || 0);
        $t += ($rec->{KEYBROKER_CACHED_TOKENS} || 0) + ($rec->{KEYBROKER_CACHE_WRITE_TOKENS} || 0)
                if ($rec->{KEYBROKER_FAMILY} // '') eq 'anthropic';
        return $t;
}

# ------------------------------------------------------------ requests_per_minute

subtest 'requests_per_minute: a 60-way burst at a limit of 20 forwards exactly 20' => sub {
        my $before = $mock->count;
        my $conns = burst(60, '/v1/chat/completions', { %CHAT, max_tokens => 5 }, 'X-Keybroker-Team' => 'rpm');
        my @res = collect($conns);
        my @ok = grep { ($_->{status} // 0) == 200 } @res;
        my @no = grep { ($_->{status} // 0) == 429 } @res;
        is(scalar @ok, 20, 'exactly 20 answered 200');
        is(scalar @no, 40, 'exactly 40 answered 429');
        is($mock->count - $before, 20, 'the provider got exactly 20 requests');
        is(scalar(grep { !$_->{status} || ($_->{status} != 200 && $_->{status} != 429) } @res), 0, 'nothing else');
        check_quota_error($no[-1], family => 'openai', team => 'rpm', limit => 'requests_per_minute',
                          used => 20, max => 20, retry => [1, 61]);
        is($no[-1]{json}{error}{type}, 'rate_limit_error', 'a rate window: rate_limit_error');
        check_ratelimit_headers($ok[0], 20, 1000000, 'on a 200');
        check_ratelimit_headers($no[-1], 20, 1000000, 'on a 429');
        is($no[-1]{headers}{'x-ratelimit-remaining-requests'}, 0, 'remaining-requests 0 on the 429');
        check_rejected_record($no[0], 'rpm');

        my $u = usage('rpm')->{usage}{requests_per_minute};
        is($u->{used}, 20, 'GET /teams: 20 used');
        is($u->{limit}, 20, 'limit 20');
        is($u->{remaining}, 0, 'remaining 0');
        like($u->{reset} // '', qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/, 'reset is an ISO time');

        my @q = quota_records('rpm');
        is(scalar @q, 1, '40 refusals, one quota record');
        check_fields($q[0], { KEYBROKER_LIMIT => 'requests_per_minute', KEYBROKER_USED => 20,
                              KEYBROKER_LIMIT_VALUE => 20, KEYBROKER_RESET_USEC => qr/^\d{16}$/, PRIORITY => 4,
                              MESSAGE => qr/\brpm\b.*requests_per_minute/ }, 'quota record fields');
};

subtest 'requests_per_minute, Anthropic shape' => sub {
        is(msg('rpmanth')->{status}, 200, 'first');
        is(msg('rpmanth')->{status}, 200, 'second');
        my $before = $mock->count;
        my $res = msg('rpmanth');
        check_quota_error($res, family => 'anthropic', team => 'rpmanth', limit => 'requests_per_minute', used => 2,
                          max => 2, retry => [1, 61]);
        check_ratelimit_headers($res, 2, 1000000, 'on an Anthropic 429');
        my $res2 = msg('rpmanth');
        is($res2->{status}, 429, 'still refused');
        is($mock->count, $before, 'provider not called');
        is(scalar(my @q = quota_records('rpmanth')), 1, 'two refusals, one quota record');
};

# ------------------------------------------------------------ max_concurrent

subtest 'max_concurrent 20: 60 slow requests at once, exactly 20 forwarded' => sub {
        my $before = $mock->count;
        my $t0 = time;
        my $conns = burst(60, '/v1/messages', { %MSG, max_tokens => 5 }, 'X-Keybroker-Team' => 'conc', @ANTH,
                          'x-mock-delay-ms' => 2500);
        # While the 20 are in flight.
        ok(wait_until(2, sub { usage('conc')->{in_flight} == 20 }), '20 admitted');
        my $t = usage('conc');
        is($t->{in_flight}, 20, 'GET /teams: 20 in flight');
        is($t->{usage}{max_concurrent}{used}, 20, 'max_concurrent used 20');
        is($t->{usage}{max_concurrent}{remaining}, 0, 'remaining 0');
        is($t->{usage}{max_concurrent}{reset}, undef, 'no reset time for concurrency');
        cmp_ok($t->{usage}{tokens_per_day}{reserved}, '>', 0, 'their estimates are reserved');
        is($t->{usage}{tokens_per_day}{used}, 0, 'nothing settled yet');
        if (-x $CTL) {
                my $r = run_cmd([$CTL, '--admin-socket', $admin, 'team', 'list']);
                my ($row) = grep { /^conc\s/ && !/uid:/ } split /\n/, $r->{stdout};
                like($row // '', qr/^conc\s+host\s+\d+\s+0 \(\+\d+\)\s+0 \(\+\d+\)\s.*\s20\/20\s/,
                     'team list: estimates held "(+N)", 20/20 in flight') or diag($r->{stdout});
        }

        my @res = collect($conns);
        my @ok = grep { ($_->{status} // 0) == 200 } @res;
        my @no = grep { ($_->{status} // 0) == 429 } @res;
        is(scalar @ok, 20, 'exactly 20 answered 200');
        is(scalar @no, 40, 'exactly 40 answered 429');
        is($mock->count - $before, 20, 'the provider got exactly 20');
        cmp_ok(time - $t0, '>=', 2.4, 'the 200s waited for the slow provider');
        check_quota_error($no[0], family => 'anthropic', team => 'conc', limit => 'max_concurrent', used => 20,
                          max => 20, retry => [1, 2]);

        $t = usage('conc');
        is($t->{in_flight}, 0, 'none in flight afterwards');
        is($t->{usage}{tokens_per_day}{reserved}, 0, 'no reservation left');
        is($t->{usage}{tokens_per_day}{used}, 20 * 18, 'settled: 20 × (11 in + 7 out)');
        is(msg('conc')->{status}, 200, 'a slot is free again');
        is(scalar(my @q = quota_records('conc')), 1, 'one quota record for the burst');
};

# ------------------------------------------------------------ tokens_per_minute

subtest 'tokens_per_minute: an over-estimate blocks only until it settles' => sub {
        my $body = { %CHAT, max_tokens => 1000 };
        my $est = est_input($body) + 1000;
        cmp_ok(2 * $est, '>', 1500, "two estimates ($est each) do not fit in 1500");
        my $slow = raw_connect($broker);
        $slow->send(http_request('POST', '/v1/chat/completions', json => $body,
                                 headers => ['X-Keybroker-Team' => 'tpm', 'x-mock-delay-ms' => 1500]));
        ok(wait_until(5, sub { usage('tpm')->{in_flight} == 1 }), 'the first is in flight');
        my $t = usage('tpm');
        is($t->{usage}{tokens_per_minute}{reserved}, $est, "it holds its estimate ($est)");
        is($t->{usage}{tokens_per_minute}{remaining}, 1500 - $est, 'remaining = limit - reserved');

        my $res = call('tpm', json => $body);
        check_quota_error($res, family => 'openai', team => 'tpm', limit => 'tokens_per_minute', used => $est,
                          max => 1500, retry => [1, 61]);
        check_ratelimit_headers($res, 100, 1500, 'tpm 429');

        my $first = $slow->read_response(timeout => 10);
        $slow->close;
        is($first && $first->{status}, 200, 'the first answers 200');
        ok(wait_until(5, sub { usage('tpm')->{in_flight} == 0 }), 'and settles');
        is(usage('tpm')->{usage}{tokens_per_minute}{used}, 18, 'settled to its real 18 tokens');

        my @ok = map { call('tpm', json => $body) } 1 .. 3;
        is_deeply([map { $_->{status} } @ok], [200, 200, 200], 'released estimates admit three more, one by one');
        is(usage('tpm')->{usage}{tokens_per_minute}{used}, 4 * 18, 'GET /teams: 4 × 18 tokens this minute');
        is(scalar(my @q = quota_records('tpm')), 1, 'one quota record');
};

# ------------------------------------------------------------ tokens_per_day

sub day_limit_case($team, $family, $send) {
        my $body = $family eq 'openai' ? { %CHAT, max_tokens => 10 } : { %MSG, max_tokens => 10 };
        my $est = est_input($body) + 10;
        my ($used, $n) = (0, 0);
        while ($used + $est <= 100) { $used += 18; $n++ }
        my $before = $mock->count;
        my @ok = map { $send->($team) } 1 .. $n;
        is_deeply([map { $_->{status} } @ok], [(200) x $n], "$n calls fit (estimate $est, 18 real tokens each)");
        my $res = $send->($team);
        my $wait = next_midnight() - time;
        check_quota_error($res, family => $family, team => $team, limit => 'tokens_per_day', used => $used,
                          max => 100, reset => iso(next_midnight()), retry => [$wait - 5, $wait + 5]);
        is($res->{json}{error}{type}, 'insufficient_quota', 'a quota: insufficient_quota') if $family eq 'openai';
        check_rejected_record($res, $team);
        is($send->($team)->{status}, 429, 'a second refusal');
        is($mock->count - $before, $n, "the provider got $n");
        my @q = quota_records($team);
        is(scalar @q, 1, 'two refusals, one quota record');
        check_fields($q[0], { KEYBROKER_LIMIT => 'tokens_per_day', KEYBROKER_USED => $used, KEYBROKER_LIMIT_VALUE => 100,
                              KEYBROKER_RESET_USEC => next_midnight() * 1000000 }, 'quota record fields');
        my $u = usage($team)->{usage}{tokens_per_day};
        is_deeply($u, { limit => 100, used => $used, reserved => 0, remaining => 100 - $used,
                        reset => iso(next_midnight()) }, 'GET /teams tokens_per_day');
}

subtest 'tokens_per_day (OpenAI)' => sub { day_limit_case('tpd', 'openai', sub ($t) { chat($t) }) };
subtest 'tokens_per_day (Anthropic)' => sub { day_limit_case('tpdanth', 'anthropic', sub ($t) { msg($t) }) };

# ------------------------------------------------------------ USD budgets

sub budget_case($team, $limit, $reset) {
        my $body = { %CHAT, max_tokens => 10 };
        my $est = est_input($body) + 2 * 10;      # µUSD: input × 1 + output × 2
        my ($used, $n) = (0, 0);
        while ($used + $est <= 100) { $used += 11 + 2 * 7; $n++ }
        my @ok = map { chat($team) } 1 .. $n;
        is_deeply([map { $_->{status} } @ok], [(200) x $n], "$n calls fit (estimate $est µUSD, 25 real)");
        my $rec = journal_request($ok[0]{headers}{'x-keybroker-request-id'});
        is($rec && $rec->{KEYBROKER_COST_MICROUSD}, 25, 'journaled cost 25 µUSD');
        my $res = chat($team);
        my $wait = $reset - time;
        check_quota_error($res, family => 'openai', team => $team, limit => $limit,
                          used => sprintf('$0.%06d', $used), max => '$0.000100', reset => iso($reset),
                          retry => [$wait - 5, $wait + 5]);
        is($res->{json}{error}{type}, 'insufficient_quota', 'a budget: insufficient_quota');
        is(chat($team)->{status}, 429, 'a second refusal');
        my @q = quota_records($team);
        is(scalar @q, 1, 'one quota record');
        check_fields($q[0], { KEYBROKER_LIMIT => $limit, KEYBROKER_USED => $used, KEYBROKER_LIMIT_VALUE => 100 },
                     'quota record (µUSD)');
        my $u = usage($team)->{usage}{$limit};
        is_deeply($u, { limit => '0.000100', used => sprintf('0.%06d', $used), reserved => '0.000000',
                        remaining => sprintf('0.%06d', 100 - $used), reset => iso($reset), limit_microusd => 100,
                        used_microusd => $used, reserved_microusd => 0, remaining_microusd => 100 - $used },
                  "GET /teams $limit: USD strings and µUSD integers");
}

subtest 'budget_usd_per_day' => sub { budget_case('usdday', 'budget_usd_per_day', next_midnight()) };
subtest 'budget_usd_per_month' => sub { budget_case('usdmonth', 'budget_usd_per_month', next_month()) };

# ------------------------------------------------------------ models and prices

subtest 'a request bigger than the whole limit: told it never fits, not to retry' => sub {
        # tpm allows 1500 tokens a minute; ~8000 bytes of prompt alone is ~2000.
        my $before = $mock->count;
        my $res = chat('tpm', json => { messages => [{ role => 'user', content => 'x' x 8000 }] });
        check_openai_error($res, 429, 'quota_exceeded');
        like($res->{json}{error}{message} // '', qr/team 'tpm': this request alone \(\d+, estimated\) is more than its whole tokens_per_minute limit of 1500/,
             'message says the request alone exceeds the limit') or diag(KB::show_res($res));
        is($res->{headers}{'x-should-retry'}, 'false', 'x-should-retry: false (waiting cannot help)');
        like($res->{headers}{'retry-after'} // '', qr/^\d+$/, 'retry-after still present');
        is($mock->count, $before, 'provider not called');
        check_rejected_record($res, 'tpm');
};

subtest 'models allowlist: 403 model_not_allowed, both shapes' => sub {
        my $before = $mock->count;
        my $res = call('narrow', json => { %CHAT, model => 'gpt-big' });
        check_openai_error($res, 403, 'model_not_allowed');
        like($res->{json}{error}{message} // '', qr/gpt-big/, 'message names the model');
        check_ratelimit_headers($res, 50, 90000, 'on a 403');
        $res = call('narrow', path => '/v1/messages', json => { %MSG, max_tokens => 5 });
        check_anthropic_error($res, 403, 'model_not_allowed');
        is($mock->count, $before, 'provider not called');
        is(call('narrow', json => { %CHAT, max_tokens => 5 })->{status}, 200, 'an allowed model passes');
        is(call('narrow', path => '/v1/messages', json => { %MSG, model => 'claude-sonnet', max_tokens => 5 })->{status},
           200, 'an allowed Anthropic model passes');
};

subtest 'unpriced model and a USD budget: 403 with the reason; unpriced = zero allows it' => sub {
        my $before = $mock->count;
        my $res = call('budget', json => { %CHAT, model => 'gpt-big', max_tokens => 5 });
        check_openai_error($res, 403, 'model_not_allowed', 'OpenAI: 403');
        like($res->{json}{error}{message} // '', qr/no price/, 'message: no price');
        like($res->{json}{error}{message} // '', qr/unpriced/, 'message: points at unpriced');
        like($res->{json}{error}{message} // '', qr/'budget'/, 'message names the team');
        my $rec = journal_request($res->{headers}{'x-keybroker-request-id'});
        check_fields($rec, { KEYBROKER_STATUS => 403, KEYBROKER_OUTCOME => 'forbidden' }, 'journaled as forbidden');
        $res = call('budget', path => '/v1/messages', json => { %MSG, model => 'claude-sonnet', max_tokens => 5 });
        check_anthropic_error($res, 403, 'model_not_allowed', 'Anthropic: 403');
        like($res->{json}{error}{message} // '', qr/no price/, 'message: no price');
        $res = call('denyall', json => { %CHAT, model => 'gpt-big', max_tokens => 5 });
        check_openai_error($res, 403, 'model_not_allowed', 'unpriced = deny without a budget: 403 too');
        is($mock->count, $before, 'provider not called');
        is(call('budget', json => { %CHAT, max_tokens => 5 })->{status}, 200, 'a priced model passes');

        $res = call('zero', json => { %CHAT, model => 'gpt-big', max_tokens => 5 });
        is($res->{status}, 200, 'unpriced = zero: allowed') or diag(KB::show_res($res));
        $rec = journal_request($res->{headers}{'x-keybroker-request-id'});
        check_fields($rec, { KEYBROKER_OUTCOME => 'ok', KEYBROKER_COST_MICROUSD => sub { !$_[0] } }, 'costs nothing');
        my $u = usage('zero')->{usage};
        is($u->{budget_usd_per_day}{used_microusd}, 0, 'budget untouched');
        is($u->{tokens_per_day}{used}, 18, 'tokens still counted');
        is(call('denyall', json => { %CHAT, max_tokens => 5 })->{status}, 200, 'unpriced = deny: priced models pass');
};

subtest 'unpriced = deny holds for every candidate of a model, fallbacks included' => sub {
        my $before = $mock->count;
        my $res = call('budget', json => { %CHAT, model => 'unpriced-first', max_tokens => 5 });
        is($res->{status}, 200, 'an unpriced first target is passed over for a priced fallback')
                or diag(KB::show_res($res));
        my $rec = journal_request($res->{headers}{'x-keybroker-request-id'});
        check_fields($rec, { KEYBROKER_UPSTREAM_MODEL => 'gpt-4o-mini-2024-07-18', KEYBROKER_ATTEMPTS => 1,
                             KEYBROKER_OUTCOME => 'ok', KEYBROKER_COST_MICROUSD => sub { $_[0] > 0 } },
                     'journal: the priced model answered, one attempt, with a cost');
        is($mock->count - $before, 1, 'the provider saw one call');
        is(($mock->last_entry // {})->{body} =~ /gpt-4o-mini/ ? 1 : 0, 1, '... for the priced model');

        $before = $mock->count;
        $res = call('budget', json => { %CHAT, model => 'unpriced-fallback', max_tokens => 5 },
                    headers => ['x-mock-status' => 500]);
        # The unpriced fallback is not a candidate at all, so the provider's
        # answer passes through as for a model without a fallback.
        is($res->{status}, 500, 'the priced target fails; the unpriced fallback is not tried: its 500 passes')
                or diag(KB::show_res($res));
        $rec = journal_request($res->{headers}{'x-keybroker-request-id'});
        check_fields($rec, { KEYBROKER_ATTEMPTS => 1, KEYBROKER_UPSTREAM_STATUS => 500 },
                     'journal: one attempt, the priced one');
        is($mock->count - $before, 1, 'the provider saw only that one call');

        $res = call('zero', json => { %CHAT, model => 'unpriced-fallback', max_tokens => 5 },
                    headers => ['x-mock-status' => 500]);
        $rec = journal_request($res->{headers}{'x-keybroker-request-id'});
        check_fields($rec, { KEYBROKER_ATTEMPTS => 2 }, 'unpriced = zero: the fallback is tried');
};

# ------------------------------------------------------------ counters = journal

subtest 'GET /teams counters equal the journal (both families, JSON and SSE)' => sub {
        my @res = (
                chat('acct'),
                chat('acct', headers => ['x-mock-input-tokens' => 123, 'x-mock-output-tokens' => 45,
                                         'x-mock-cached-tokens' => 20]),
                chat('acct', json => { stream => \1 }, headers => ['x-mock-output-tokens' => 9]),
                msg('acct', headers => ['x-mock-cached-tokens' => 30, 'x-mock-cache-write-tokens' => 8]),
                msg('acct', json => { stream => \1 }, headers => ['x-mock-cached-tokens' => 4,
                                                                   'x-mock-cache-write-tokens' => 2,
                                                                   'x-mock-output-tokens' => 12]),
                call('acct', path => '/v1/embeddings', json => { model => 'emb', input => 'x' }),
        );
        is_deeply([map { $_->{status} } @res], [(200) x @res], "all 200") or diag(join "\n", map { KB::show_res($_) } @res);
        my @recs = map { journal_request($_->{headers}{'x-keybroker-request-id'}) } @res;
        my ($tokens, $cost) = (0, 0);
        for (@recs) { $tokens += tokens_of($_ // {}); $cost += ($_ // {})->{KEYBROKER_COST_MICROUSD} || 0 }
        cmp_ok($tokens, '>', 6 * 18, "journaled tokens: $tokens");
        my $t = usage('acct');
        my $u = $t->{usage};
        is($u->{tokens_per_day}{used}, $tokens, 'tokens today = Σ journaled (Anthropic with cache reads and writes)');
        is($u->{tokens_per_minute}{used}, $tokens, 'tokens this minute = the same');
        is($t->{month_tokens}, $tokens, 'month_tokens = the same');
        is($u->{budget_usd_per_day}{used_microusd}, $cost, "USD today = Σ KEYBROKER_COST_MICROUSD ($cost)");
        is($u->{budget_usd_per_month}{used_microusd}, $cost, 'USD this month = the same');
        is($u->{requests_per_minute}{used}, scalar @res, 'requests this minute');
        is($u->{max_concurrent}{used}, 0, 'none in flight');
        is($u->{tokens_per_day}{reserved}, 0, 'nothing reserved');
        check_ratelimit_headers($_, 1000, 10000000, 'acct ' . ($_->{headers}{'x-keybroker-route'} // '?')) for @res[0, 3];
};

# ------------------------------------------------------------ keybrokerctl

subtest 'keybrokerctl team list: usage columns; --json passes GET /teams' => sub {
        plan skip_all => "keybrokerctl not built: $CTL" unless -x $CTL;
        my $r = run_cmd([$CTL, '--admin-socket', $admin, 'team', 'list']);
        is($r->{exit}, 0, 'exit 0') or diag($r->{stderr});
        my @l = split /\n/, $r->{stdout};
        like($l[0], qr/^NAME\s+MEMBERS\s+MODELS\s+LIMITS\s+OWNER$/, 'the limits table first');
        my ($hdr) = grep { /^TEAM\s/ } @l;
        like($hdr // '', qr/^TEAM\s+COUNTED\s+RPM\s+TPM\s+TOKENS TODAY\s+USD TODAY\s+USD MONTH\s+IN FLIGHT\s+MINUTE RESET\s+THIS HOST$/,
             'usage table header');
        my @rows = grep { /^\w+\s/ } @l;
        my ($rpm) = grep { /^rpm\s+host\s+20\/20\s/ } @rows;
        ok($rpm, 'rpm row: 20/20 requests') or diag($r->{stdout});
        my ($tpd) = grep { /^tpd\s/ && !/uid:/ } @rows;
        like($tpd // '', qr/^tpd\s+host\s+\d+\s+\d+\s+\d+\/100\s/, 'tpd row: tokens today used/100');
        my ($usd) = grep { /^usdday\s/ && !/uid:/ } @rows;
        like($usd // '', qr/^usdday\s+host\s+\d+\s+\d+\s+\d+\s+0\.0000\d+\/0\.0001\s/, 'usdday row: USD today used/limit');
        my ($conc) = grep { /^conc\s/ && !/uid:/ } @rows;
        like($conc // '', qr/\s0\/20\s/, 'conc row: in flight 0/20');
        like($r->{stdout}, qr/^Day windows reset at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \S+, month windows at \d{4}-\d\d-\d\d /m,
             'day and month reset times');

        $r = run_cmd([$CTL, '--admin-socket', $admin, '--json', 'team', 'list']);
        is($r->{exit}, 0, '--json exit 0');
        my $j = json_decode($r->{stdout});
        my %t = map { $_->{name} => $_ } @{$j->{teams} // []};
        is($t{rpm}{usage}{requests_per_minute}{used}, 20, 'json: rpm used 20');
        is($t{usdday}{usage}{budget_usd_per_day}{limit_microusd}, 100, 'json: µUSD limit');
        ok(exists $t{acct}{in_flight} && exists $t{acct}{month_tokens}, 'json: in_flight and month_tokens');
};

subtest 'the broker is still healthy' => sub {
        ok($broker->alive, 'keybrokerd alive');
        is(req($broker, path => '/v1/keybroker/whoami')->{status}, 200, 'whoami 200');
};

done_testing;
