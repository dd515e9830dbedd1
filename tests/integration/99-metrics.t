#!/usr/bin/perl
# GET /metrics on the admin socket: Prometheus text format 0.0.4 that a
# strict parser accepts (every sample under a # TYPE, label values quoted
# and escaped, no duplicate series), counters that agree with the journal's
# records after traffic from two teams, cumulative histogram buckets whose
# +Inf bucket and _count equal the requests forwarded, quota gauges per team
# and limit, circuit state per route, key age of a sealed key, and the
# journal writer's counters.
use v5.36;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use KB;

ensure_journald();
my %keys = ('oai-key' => fixture_secret('oai'), 'anth-key' => fixture_secret('anth'));
my $mock = start_mock(require_key => [values %keys]);

# A model name with the characters a label value must survive ({ } = , ').
my $ODD = "odd'model{x}=y,z";
my $cfg = standard_config(mock => $mock);
$cfg->{'team:ops'}{budget_usd_per_day} = '50';
$cfg->{'route:anth'}{price} = 'claude-3-5-haiku-20241022 input=1 output=2';
$cfg->{"model:$ODD"} = { target => 'oai gpt-4o-mini-2024-07-18' };
my %agent = (
        listen => '@DIR@/api.sock', listen_mode => '0666', admin => '@DIR@/admin.sock',
        credentials_dir => '@DIR@/creds', state_dir => '@DIR@/state',
        keystore => '@DIR@/state/keys.sealed', master_key => '@DIR@/creds/keybroker.master',
);
my $broker = start_broker(config => KB::render_config({ %$cfg, agent => \%agent }),
                          keys => { %keys, 'keybroker.master' => KB::random_hex(32) });
my $admin_sock = $broker->dir . '/admin.sock';
my %config_models = map { /^model:(.*)$/ ? ($1 => 1) : () } keys %$cfg;

# ------------------------------------------------------------ a tiny parser

# Parses the exposition text; returns { samples => [[name, {labels}, value]],
# types => {family => type}, help => {family => text} } or dies saying why.
sub parse_prometheus($text) {
        my (%types, %help, @samples, %seen);
        die "does not end with a newline\n" unless $text =~ /\n\z/;
        my $ln = 0;
        for my $l (split /\n/, $text) {
                $ln++;
                next if $l eq '';
                if ($l =~ /^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)$/) {
                        my ($kind, $name, $rest) = ($1, $2, $3);
                        if ($kind eq 'TYPE') {
                                die "line $ln: bad type '$rest'\n" unless $rest =~ /^(counter|gauge|histogram|summary|untyped)$/;
                                die "line $ln: second TYPE for $name\n" if $types{$name};
                                die "line $ln: TYPE for $name after its samples\n" if grep { family_of($_->[0], \%types) eq $name } @samples;
                                $types{$name} = $rest;
                        } else {
                                die "line $ln: HELP with a raw backslash sequence\n" if $rest =~ /\\[^\\n]/;
                                $help{$name} = $rest;
                        }
                        next;
                }
                die "line $ln: comment of unknown kind: $l\n" if $l =~ /^#/;
                $l =~ /^([a-zA-Z_:][a-zA-Z0-9_:]*)(.*)$/ or die "line $ln: no metric name: $l\n";
                my ($name, $rest) = ($1, $2);
                my %labels;
                if ($rest =~ s/^\{//) {
                        while ($rest !~ s/^\}//) {
                                $rest =~ s/^([a-zA-Z_][a-zA-Z0-9_]*)="// or die "line $ln: bad label at '$rest'\n";
                                my $k = $1;
                                my $v = '';
                                while (1) {
                                        if ($rest =~ s/^([^"\\\n]+)//) { $v .= $1 }
                                        elsif ($rest =~ s/^\\(["\\n])//) { $v .= $1 eq 'n' ? "\n" : $1 }
                                        elsif ($rest =~ s/^"//) { last }
                                        else { die "line $ln: bad label value at '$rest'\n" }
                                }
                                die "line $ln: label $k twice\n" if exists $labels{$k};
                                $labels{$k} = $v;
                                $rest =~ s/^,(?=[a-zA-Z_])//;
                        }
                }
                $rest =~ /^ ([-+]?(?:\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|Inf|NaN))$/ or die "line $ln: bad value in: $l\n";
                my $v = $1;
                my $fam = family_of($name, \%types);
                die "line $ln: sample $name without a # TYPE\n" unless $types{$fam};
                my $key = $name . '{' . join(',', map { "$_=$labels{$_}" } sort keys %labels) . '}';
                die "line $ln: duplicate series $key\n" if $seen{$key}++;
                push @samples, [$name, \%labels, $v];
        }
        return { samples => \@samples, types => \%types, help => \%help };
}

sub family_of($name, $types) {
        return $name if $types->{$name};
        if ($name =~ /^(.*)_(bucket|sum|count)$/ && ($types->{$1} // '') eq 'histogram') {
                return $1;
        }
        return $name;
}

# Samples of one name whose labels include %want.
sub pick($m, $name, %want) {
        return grep {
                my $s = $_;
                $s->[0] eq $name && !grep { ($s->[1]{$_} // "\0") ne $want{$_} } keys %want
        } @{$m->{samples}};
}

# The value of the one sample of name with labels %want (undef: none).
sub val($m, $name, %want) {
        my @s = pick($m, $name, %want);
        Test::More::diag(scalar(@s) . " samples $name" . "{" . join(',', map { "$_=$want{$_}" } sort keys %want) . '}')
                if @s != 1;
        return @s ? $s[0][2] : undef;
}

sub get_metrics() {
        my $res = req($admin_sock, path => '/metrics');
        is($res->{status}, 200, 'GET /metrics: 200') or diag(KB::show_res($res));
        like($res->{headers}{'content-type'} // '', qr{^text/plain; version=0\.0\.4\b}, 'content-type text/plain; version=0.0.4');
        my $m = eval { parse_prometheus($res->{body}) };
        ok($m, 'parses as Prometheus text') or diag("$@" . substr($res->{body}, 0, 3000));
        return $m // { samples => [], types => {} };
}

# ------------------------------------------------------------ traffic

my @rids;
sub chat(%o) {
        my $r = req($broker, path => '/v1/chat/completions', %o,
                    json => { model => $o{model} // 'gpt-mini', messages => [{ role => 'user', content => 'hi' }],
                              %{$o{extra} // {}} });
        push @rids, $r->{headers}{'x-keybroker-request-id'} if $r->{headers}{'x-keybroker-request-id'};
        return $r;
}

subtest 'traffic from two teams' => sub {
        is(chat()->{status}, 200, 'ops gpt-mini') for 1 .. 3;
        is(chat(extra => { stream => JSON::PP::true() })->{status}, 200, 'ops gpt-mini stream');
        is(chat(model => $ODD)->{status}, 200, 'ops odd model');
        is(chat(model => 'no-such-model')->{status}, 404, 'ops unknown model');
        is(chat(headers => ['x-mock-status' => 500])->{status}, 500, 'ops upstream 500');
        is(chat(uid => 1001, gid => 1001)->{status}, 200, 'search gpt-mini') for 1 .. 2;
        is(chat(uid => 1001, gid => 1001, model => 'gpt-big')->{status}, 403, 'search not allowed gpt-big');
        is(chat(uid => 4242, gid => 4242)->{status}, 403, 'no team');
        my $r = req($broker, path => '/v1/messages', json => { model => 'claude-haiku', max_tokens => 10,
                                                             messages => [{ role => 'user', content => 'hi' }] });
        push @rids, $r->{headers}{'x-keybroker-request-id'};
        is($r->{status}, 200, 'ops claude-haiku');
        # A sealed key, for key age.
        my $put = req($admin_sock, method => 'PUT', path => '/keys/extra-key', body => fixture_secret('extra'));
        ok($put->{status} == 200 || $put->{status} == 201, 'PUT /keys/extra-key') or diag(KB::show_res($put));
};

my @recs = $broker->journal_wait({ MESSAGE_ID => $MID_REQUEST }, 10, count => scalar @rids);
is(scalar @recs, scalar @rids, 'one journal record per request');

my $m = get_metrics();

subtest 'requests, tokens and cost match the journal' => sub {
        my (%req, %tok, %cost, %lat);
        for my $j (@recs) {
                my $model = $config_models{$j->{KEYBROKER_MODEL} // ''} ? $j->{KEYBROKER_MODEL} : '';
                my @k = ($j->{KEYBROKER_TEAM} // '', $model, $j->{KEYBROKER_ROUTE} // '');
                $req{join("\0", @k, $j->{KEYBROKER_OUTCOME})}++;
                for my $kind (qw(input output cached cache_write reasoning)) {
                        $tok{join("\0", @k, $kind)} += $j->{'KEYBROKER_' . uc($kind) . '_TOKENS'} // 0;
                }
                $cost{join("\0", @k)} += $j->{KEYBROKER_COST_MICROUSD} // 0;
                $lat{$j->{KEYBROKER_ROUTE}}++ if ($j->{KEYBROKER_ATTEMPTS} // 0) > 0 && ($j->{KEYBROKER_ROUTE} // '') ne '';
        }
        ok(scalar(keys %req) >= 6, 'several label sets') or diag(join("\n", keys %req));
        my $total = 0;
        for my $s (pick($m, 'keybroker_requests_total')) {
                my $l = $s->[1];
                my $k = join("\0", @$l{qw(team model route outcome)});
                is($s->[2], $req{$k} // 0, "requests_total{@$l{qw(team model route outcome)}}");
                $total += $s->[2];
                delete $req{$k};
        }
        is($total, scalar @recs, 'requests_total sums to the records');
        is(scalar(keys %req), 0, 'every journal label set is exported') or diag(join("\n", keys %req));
        for my $s (pick($m, 'keybroker_tokens_total')) {
                my $l = $s->[1];
                is($s->[2], $tok{join("\0", @$l{qw(team model route kind)})} // 0, "tokens_total{@$l{qw(team model route kind)}}");
        }
        ok(scalar(pick($m, 'keybroker_tokens_total', team => 'ops', model => 'gpt-mini', route => 'oai', kind => 'input')),
           'tokens of ops gpt-mini exported');
        cmp_ok(val($m, 'keybroker_tokens_total', team => 'ops', model => 'gpt-mini', route => 'oai', kind => 'output'),
               '>', 0, 'output tokens counted');
        for my $s (pick($m, 'keybroker_cost_microusd_total')) {
                my $l = $s->[1];
                is($s->[2], $cost{join("\0", @$l{qw(team model route)})} // 0, "cost_microusd_total{@$l{qw(team model route)}}");
        }
        ok(scalar(pick($m, 'keybroker_requests_total', model => $ODD, outcome => 'ok')), 'odd model name round-trips as a label');
        is(val($m, 'keybroker_requests_total', team => 'ops', model => '', outcome => 'model_not_found'), 1,
           'unknown model counted as model=""');
        my $noteam = 0;
        $noteam += $_->[2] for pick($m, 'keybroker_requests_total', team => '', outcome => 'forbidden');
        is($noteam, 1, 'request without a team counted as team=""');

        # Histograms.
        for my $h (qw(keybroker_upstream_latency_seconds keybroker_upstream_ttfb_seconds)) {
                is($m->{types}{$h}, 'histogram', "$h is a histogram");
                for my $route (sort keys %lat) {
                        my @b = sort { ($a->[1]{le} eq '+Inf' ? 9e99 : $a->[1]{le}) <=> ($b->[1]{le} eq '+Inf' ? 9e99 : $b->[1]{le}) }
                                pick($m, "${h}_bucket", route => $route);
                        ok(@b >= 2, "$h $route has buckets") or next;
                        my $mono = 1;
                        for my $i (1 .. $#b) { $mono = 0 if $b[$i][2] < $b[$i - 1][2] }
                        ok($mono, "$h $route buckets are cumulative");
                        is($b[-1][1]{le}, '+Inf', "$h $route ends with +Inf");
                        my ($count) = pick($m, "${h}_count", route => $route);
                        my ($sum) = pick($m, "${h}_sum", route => $route);
                        is($b[-1][2], $count->[2], "$h $route +Inf bucket = _count");
                        ok(defined $sum && $sum->[2] >= 0, "$h $route has _sum");
                        if ($h =~ /latency/) {
                                is($count->[2], $lat{$route}, "latency _count{$route} = forwarded requests in the journal");
                        } else {
                                ok($count->[2] <= $lat{$route} && $count->[2] > 0, "ttfb _count{$route} within forwarded requests");
                        }
                }
        }
};

subtest 'gauges' => sub {
        is(val($m, 'keybroker_requests_in_flight'), 0, 'nothing in flight');
        my ($rpm) = pick($m, 'keybroker_quota_limit', team => 'ops', limit => 'requests_per_minute');
        is($rpm->[2], 600, 'ops requests_per_minute limit');
        my ($rem) = pick($m, 'keybroker_quota_remaining', team => 'ops', limit => 'requests_per_minute');
        ok($rem && $rem->[2] < 600 && $rem->[2] >= 600 - 20, 'ops requests_per_minute remaining counts the traffic')
                or diag($rem ? $rem->[2] : 'missing');
        my ($bud) = pick($m, 'keybroker_quota_limit', team => 'ops', limit => 'budget_usd_per_day');
        is($bud->[2] + 0, 50, 'budget limit in USD');
        my ($budr) = pick($m, 'keybroker_quota_remaining', team => 'ops', limit => 'budget_usd_per_day');
        ok($budr && $budr->[2] <= 50 && $budr->[2] > 49, 'budget remaining in USD');
        is(scalar(pick($m, 'keybroker_quota_remaining', team => 'search')), 0, 'a team without limits has no quota gauges');
        for my $route (qw(oai anth)) {
                is(val($m, 'keybroker_circuit_state', route => $route), 0, "circuit of $route closed (0)");
        }
        my ($age) = pick($m, 'keybroker_key_age_seconds', key => 'extra-key');
        ok($age && $age->[2] >= 0 && $age->[2] < 120, 'key age of the sealed key') or diag($age ? $age->[2] : 'missing');
        is(scalar(pick($m, 'keybroker_key_age_seconds', key => 'oai-key')), 0, 'credential files have no age');
        my ($w) = pick($m, 'keybroker_journal_records_written_total');
        cmp_ok($w->[2], '>=', scalar @recs, 'journal records written');
        is(val($m, 'keybroker_journal_records_dropped_total'), 0, 'no journal record dropped');
        ok(scalar(pick($m, 'keybroker_journal_records_spooled_total')), 'spooled counter exported');
        is(val($m, 'keybroker_journal_spool_records'), 0, 'spool empty');
        is($m->{types}{keybroker_requests_total}, 'counter', 'requests_total is a counter');
};

subtest 'counters only grow and stay bounded' => sub {
        chat() for 1 .. 2;
        my $m2 = get_metrics();
        my ($a) = pick($m, 'keybroker_requests_total', team => 'ops', model => 'gpt-mini', route => 'oai', outcome => 'ok');
        my ($b) = pick($m2, 'keybroker_requests_total', team => 'ops', model => 'gpt-mini', route => 'oai', outcome => 'ok');
        is($b->[2], $a->[2] + 2, 'ok counter +2');
        # Requests for models that do not exist add no label set.
        my $n = scalar @{$m2->{samples}};
        chat(model => "nope-$_") for 1 .. 5;
        my $m3 = get_metrics();
        is(scalar @{$m3->{samples}}, $n, 'unknown model names do not add series');
};

subtest 'admin rules apply' => sub {
        my $r = req($admin_sock, method => 'POST', path => '/metrics');
        is($r->{status}, 405, 'POST /metrics: 405');
        $r = req($admin_sock, method => 'GET', path => '/metrics?x=1');
        is($r->{status}, 400, 'GET /metrics?x=1: 400');
};

subtest '[agent] journal = no: no request records, metrics still count' => sub {
        my $c2 = standard_config(mock => $mock);
        $c2->{agent} = { journal => 'no' };
        my $b2 = start_broker(config => $c2, keys => \%keys);
        my $r = req($b2, path => '/v1/chat/completions',
                    json => { model => 'gpt-mini', messages => [{ role => 'user', content => 'hi' }] });
        is($r->{status}, 200, 'request answered');
        my @life = $b2->journal_wait({ MESSAGE_ID => $KB::MID_LIFECYCLE }, 10);
        ok(@life >= 1, 'lifecycle records still written');
        is(scalar($b2->journal({ MESSAGE_ID => $MID_REQUEST })), 0, 'no request record');
        my $page = req($b2->dir . '/admin.sock', path => '/metrics')->{body} // '';
        like($page, qr/^keybroker_requests_total\{team="ops",model="gpt-mini",route="oai",outcome="ok"\} 1$/m,
             'the request is counted');
        $b2->stop;

        my $c3 = standard_config(mock => $mock);
        $c3->{agent} = { journal => 'maybe' };
        my $dir = KB::tmpdir('badcfg');
        KB::spew("$dir/k.conf", KB::render_config({ %$c3, agent => { %{$c3->{agent}}, state_dir => $dir } }));
        my $chk = run_cmd([$KB::KEYBROKERD, '--config', "$dir/k.conf", '--check-config']);
        is($chk->{exit}, 1, 'journal = maybe is rejected');
        like($chk->{stdout} . $chk->{stderr}, qr/k\.conf:\d+: .*journal/, 'with FILE:LINE naming the key');
};

done_testing();
