#!/usr/bin/perl
# Who is calling: team by uid, by (supplementary or primary) group, by
# systemd unit; X-Keybroker-Team picks among one's own teams and can never
# add one; model allowlists; and the journal records for refused calls.
use v5.36;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use KB;

ensure_journald();
my %keys = ('oai-key' => fixture_secret('oai'), 'anth-key' => fixture_secret('anth'));
my $mock = start_mock(require_key => [values %keys]);
my $unit_name = 'kbtest-search-api-' . substr(fixture_secret(), -6) . '.service';
my $cfg = standard_config(mock => $mock);
# standard: ops = uid 0; search = uid 1001 + gid 2001 (gpt-mini claude-haiku)
$cfg->{'team:alpha'} = { users => '1004', models => 'gpt-mini' };
$cfg->{'team:beta'} = { groups => ['2004', '2005'], models => 'gpt-big' };
$cfg->{'team:byunit'} = { units => $unit_name, models => 'emb' };
my $broker = start_broker(config => $cfg, keys => \%keys);

my $chat = { model => 'gpt-mini', messages => [{ role => 'user', content => 'who am i' }] };
my $msg = { model => 'claude-haiku', max_tokens => 5, messages => [{ role => 'user', content => 'who am i' }] };
my @ANTH = ('anthropic-version' => '2023-06-01');

sub whoami(%o) {
        my $r = req($broker, path => '/v1/keybroker/whoami', %o);
        is($r->{status}, 200, 'whoami 200') or diag(KB::show_res($r));
        return $r->{json} // {};
}

subtest 'team by uid' => sub {
        my $w = whoami(uid => 1001, gid => 1001);
        is($w->{uid}, 1001, 'uid 1001');
        is($w->{gid}, 1001, 'gid 1001');
        is($w->{team}, 'search', 'team search');
        is_deeply($w->{teams}, ['search'], 'teams [search]');
        my $res = req($broker, uid => 1001, path => '/v1/chat/completions', json => $chat);
        is($res->{status}, 200, 'chat as uid 1001: 200') or diag(KB::show_res($res));
        check_common_headers($res, team => 'search', route => 'oai');
        check_fields(journal_request($res->{headers}{'x-keybroker-request-id'}), {
                KEYBROKER_TEAM => 'search', KEYBROKER_PEER_UID => '1001', KEYBROKER_PEER_GID => '1001',
                KEYBROKER_PEER_PID => "$res->{pid}", KEYBROKER_OUTCOME => 'ok',
        }, 'journal');
};

subtest 'team by supplementary group' => sub {
        my $w = whoami(uid => 1003, gid => 1003, groups => [2001, 3000]);
        is($w->{team}, 'search', 'uid 1003 in group 2001: team search');
        my %g = map { $_ => 1 } @{$w->{groups} // []};
        ok($g{2001} && $g{3000}, 'supplementary groups reported') or diag(explain($w->{groups}));
        my $res = req($broker, uid => 1003, groups => [2001], path => '/v1/chat/completions', json => $chat);
        is($res->{status}, 200, 'chat: 200') or diag(KB::show_res($res));
        check_common_headers($res, team => 'search');
};

subtest 'team by primary group' => sub {
        my $w = whoami(uid => 1006, gid => 2005);
        is($w->{team}, 'beta', 'gid 2005: team beta');
        my $res = req($broker, uid => 1006, gid => 2005, path => '/v1/chat/completions',
                      json => { %$chat, model => 'gpt-big' });
        is($res->{status}, 200, 'chat gpt-big: 200') or diag(KB::show_res($res));
        check_common_headers($res, team => 'beta', route => 'oai');
};

subtest 'X-Keybroker-Team chooses among own teams, never adds one' => sub {
        # uid 1004 is alpha by uid and beta by group 2004
        my $w = whoami(uid => 1004, groups => [2004]);
        is_deeply([sort @{$w->{teams} // []}], [qw(alpha beta)], 'member of alpha and beta');
        ok(($w->{team} // '') =~ /^(alpha|beta)$/, 'a default team among them') or diag("team: " . ($w->{team} // 'null'));

        my $w2 = whoami(uid => 1004, groups => [2004], headers => ['X-Keybroker-Team' => 'beta']);
        is($w2->{team}, 'beta', 'whoami honours X-Keybroker-Team');

        my $res = req($broker, uid => 1004, groups => [2004], path => '/v1/chat/completions',
                      json => { %$chat, model => 'gpt-big' }, headers => ['X-Keybroker-Team' => 'beta']);
        is($res->{status}, 200, 'beta may call gpt-big') or diag(KB::show_res($res));
        check_common_headers($res, team => 'beta');

        $res = req($broker, uid => 1004, groups => [2004], path => '/v1/chat/completions',
                   json => $chat, headers => ['X-Keybroker-Team' => 'alpha']);
        is($res->{status}, 200, 'alpha may call gpt-mini') or diag(KB::show_res($res));
        check_common_headers($res, team => 'alpha');

        my $before = $mock->count;
        $res = req($broker, uid => 1004, groups => [2004], path => '/v1/chat/completions',
                   json => $chat, headers => ['X-Keybroker-Team' => 'ops']);
        check_openai_error($res, 403, 'unknown_team', 'naming a team one is not in: 403 unknown_team');
        is($mock->count, $before, 'provider not called');
        check_fields(journal_request($res->{headers}{'x-keybroker-request-id'}), {
                KEYBROKER_OUTCOME => 'forbidden', KEYBROKER_STATUS => '403', KEYBROKER_PEER_UID => '1004',
                KEYBROKER_UPSTREAM_STATUS => qr/^0?$/, PRIORITY => '4',
        }, 'journal');

        $res = req($broker, uid => 1004, groups => [2004], path => '/v1/chat/completions',
                   json => $chat, headers => ['X-Keybroker-Team' => 'no-such-team']);
        check_openai_error($res, 403, 'unknown_team', 'naming a team that does not exist: 403 unknown_team');
};

subtest 'no team: 403 unknown_team in each family\'s shape' => sub {
        my $w = whoami(uid => 1009);
        ok(exists $w->{team} && !defined $w->{team}, 'whoami: team null');
        is_deeply($w->{teams}, [], 'whoami: teams []');

        my $before = $mock->count;
        my $res = req($broker, uid => 1009, path => '/v1/chat/completions', json => $chat);
        check_openai_error($res, 403, 'unknown_team', 'chat: OpenAI shape');
        like($res->{json}{error}{message} // '', qr/1009/, 'message names the uid');
        ok(!exists $res->{headers}{'x-keybroker-team'}, 'no x-keybroker-team header');
        check_fields(journal_request($res->{headers}{'x-keybroker-request-id'}), {
                KEYBROKER_OUTCOME => 'forbidden', KEYBROKER_STATUS => '403', KEYBROKER_PEER_UID => '1009',
                KEYBROKER_PEER_GID => '1009', KEYBROKER_TEAM => undef, KEYBROKER_ENDPOINT => 'chat',
                # the body may not have been read yet: the model as asked, or nothing
                KEYBROKER_MODEL => qr/^(gpt-mini)?$/,
        }, 'journal');

        $res = req($broker, uid => 1009, path => '/v1/messages', json => $msg, headers => \@ANTH);
        check_anthropic_error($res, 403, 'unknown_team', 'messages: Anthropic shape');

        $res = req($broker, uid => 1009, path => '/v1/models');
        ok(($res->{status} // 0) == 403 && ($res->{json}{error}{code} // '') eq 'unknown_team'
           || ($res->{status} // 0) == 200 && !@{$res->{json}{data} // [1]},
           '/v1/models without a team: 403 unknown_team or an empty list') or diag(KB::show_res($res));
        is($mock->count, $before, 'provider never called');
};

subtest 'model allowlist' => sub {
        my $before = $mock->count;
        my $res = req($broker, uid => 1001, path => '/v1/chat/completions', json => { %$chat, model => 'gpt-big' });
        check_openai_error($res, 403, 'model_not_allowed', 'search may not use gpt-big');
        like($res->{json}{error}{message} // '', qr/gpt-big/, 'message names the model');
        check_fields(journal_request($res->{headers}{'x-keybroker-request-id'}), {
                KEYBROKER_OUTCOME => 'forbidden', KEYBROKER_STATUS => '403', KEYBROKER_TEAM => 'search',
                KEYBROKER_MODEL => 'gpt-big', KEYBROKER_PEER_UID => '1001',
        }, 'journal');

        $res = req($broker, uid => 1001, path => '/v1/messages', json => { %$msg, model => 'emb' }, headers => \@ANTH);
        check_anthropic_error($res, 403, 'model_not_allowed', 'Anthropic shape on /v1/messages');

        $res = req($broker, uid => 1001, path => '/v1/chat/completions', json => { %$chat, model => 'gpt-5-imaginary' });
        check_openai_error($res, 404, 'model_not_found', 'unknown model: 404 model_not_found');
        like($res->{json}{error}{message} // '', qr/gpt-5-imaginary/, 'message names the model');
        check_fields(journal_request($res->{headers}{'x-keybroker-request-id'}), {
                KEYBROKER_OUTCOME => 'model_not_found', KEYBROKER_STATUS => '404', KEYBROKER_TEAM => 'search',
                KEYBROKER_MODEL => 'gpt-5-imaginary', KEYBROKER_PEER_UID => '1001', KEYBROKER_ROUTE => undef,
        }, 'journal');

        $res = req($broker, path => '/v1/messages', json => { %$msg, model => 'claude-9' }, headers => \@ANTH);
        check_anthropic_error($res, 404, 'model_not_found', 'unknown model on /v1/messages (ops, models = *)');

        # An upstream model name is not a model: no silent pass-through.
        $res = req($broker, path => '/v1/chat/completions', json => { %$chat, model => 'gpt-4o-mini-2024-07-18' });
        check_openai_error($res, 404, 'model_not_found', 'upstream model name is not accepted');
        is($mock->count, $before, 'provider never called');
};

SKIP: {
        my $why = unit_cgroup_skip_reason();
        skip("cannot place a client in a unit's cgroup here: $why", 1) if $why;
        subtest 'team by systemd unit' => sub {
                my $unit = make_unit($unit_name);
                my $w = whoami(uid => 1010, unit => $unit);
                is($w->{unit}, $unit_name, 'whoami: unit from the cgroup');
                is($w->{team}, 'byunit', 'team by unit');
                my $res = req($broker, uid => 1010, unit => $unit, path => '/v1/embeddings',
                              json => { model => 'emb', input => 'x' });
                is($res->{status}, 200, 'embeddings from inside the unit: 200') or diag(KB::show_res($res));
                check_common_headers($res, team => 'byunit');
                check_fields(journal_request($res->{headers}{'x-keybroker-request-id'}), {
                        KEYBROKER_PEER_UNIT => $unit_name, KEYBROKER_TEAM => 'byunit', KEYBROKER_PEER_UID => '1010',
                }, 'journal');

                my $other = make_unit('kbtest-other-' . substr(fixture_secret(), -6) . '.service');
                $w = whoami(uid => 1010, unit => $other);
                is($w->{unit}, $other->name, 'another unit is seen as such');
                ok(!defined $w->{team}, 'and has no team');
                $res = req($broker, uid => 1010, unit => $other, path => '/v1/embeddings',
                           json => { model => 'emb', input => 'x' });
                check_openai_error($res, 403, 'unknown_team', 'other unit: 403 unknown_team');
        };
}

SKIP: {
        # Only meaningful where this test itself runs in the root cgroup (a
        # container); on a systemd host it runs inside some unit or scope.
        my ($cg) = (KB::slurp('/proc/self/cgroup') // '') =~ /^0::(\S+)$/m;
        skip("this test runs in cgroup $cg, not the root", 1) unless ($cg // '') eq '/';
        subtest 'a process outside any unit has unit null' => sub {
                my $w = whoami(uid => 1001);
                ok(!defined $w->{unit}, 'unit null') or diag("unit: $w->{unit}");
        };
}

is($broker->stop, 0, 'broker exits 0 on SIGTERM') or diag($broker->log);
done_testing;
