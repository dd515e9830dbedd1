#!/usr/bin/perl
# Reload: POST /reload and SIGHUP apply a changed config without dropping a
# stream in flight (which keeps the config it started with); a bad config is
# rejected with its FILE:LINE reason, journaled with the config MESSAGE_ID,
# and the running config keeps serving.
use v5.36;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use KB;

ensure_journald();
my %keys = ('oai-key' => fixture_secret('oai'), 'anth-key' => fixture_secret('anth'));
my $mock = start_mock(require_key => [values %keys]);

my $cfg = standard_config(mock => $mock);
my %agent = (
        listen => '@DIR@/api.sock', listen_mode => '0666', admin => '@DIR@/admin.sock',
        credentials_dir => '@DIR@/creds', state_dir => '@DIR@/state',
        keystore => '@DIR@/state/keys.sealed', master_key => '@DIR@/creds/keybroker.master',
);
sub config_text($c) { KB::render_config({ %$c, agent => { %agent, %{$c->{agent} // {}} } }) }

my $broker = start_broker(config => config_text($cfg), keys => { %keys, 'keybroker.master' => KB::random_hex(32) });
my $admin_sock = $broker->dir . '/admin.sock';

sub write_config($c, $extra = '') {
        my $dir = $broker->dir;
        spew($broker->conf, (config_text($c) =~ s/\@DIR\@/$dir/gr) . $extra);
}

sub admin($method, $path, %o) { req($admin_sock, method => $method, path => $path, %o) }

sub models() {
        my $res = req($broker, path => '/v1/models');
        return () unless $res->{status} == 200 && $res->{json};
        return map { $_->{id} } @{$res->{json}{data} // []};
}

sub has_model($m) { scalar grep { $_ eq $m } models() }

sub start_stream($model) {
        my $c = raw_connect($broker);
        $c->send(http_request('POST', '/v1/chat/completions',
                              json => { model => $model, stream => JSON::PP::true,
                                        messages => [{ role => 'user', content => 'across a reload' }] },
                              headers => ['x-mock-event-delay-ms' => 100, 'x-mock-output-tokens' => 20]));
        my $head = $c->read_head(timeout => 10);
        ok($head && $head->{status} == 200, "stream on $model started") or diag($c->{why});
        return ($c, $head);
}

sub finish_stream($c, $head, $name) {
        my $res = $head ? $c->read_body($head, timeout => 30) : undef;
        ok($res && $res->{complete}, "$name: the stream completed");
        my @ev = $res ? sse_events($res->{body}) : ();
        is(scalar(grep { $_->{json} && defined $_->{json}{choices}[0]{delta}{content} } @ev), 21,
           "$name: every delta arrived");
        is($ev[-1]{data}, '[DONE]', "$name: ended with [DONE]") if @ev;
        my $rec = $head ? journal_request($head->{headers}{'x-keybroker-request-id'}) : undef;
        is($rec->{KEYBROKER_OUTCOME}, 'ok', "$name: journaled ok") if $rec;
}

subtest 'POST /reload applies a change; a stream in flight keeps its config' => sub {
        ok(has_model('gpt-big'), 'gpt-big served at first');
        my ($c, $head) = start_stream('gpt-big');

        # The new config drops gpt-big and adds gpt-new.
        delete $cfg->{'model:gpt-big'};
        $cfg->{'model:gpt-new'} = { target => 'oai gpt-4o-mini-2024-07-18' };
        write_config($cfg);
        my $res = admin('POST', '/reload');
        is($res->{status}, 200, 'POST /reload') or diag(KB::show_res($res));
        is_deeply($res->{json}, { reloaded => JSON::PP::true, config => $broker->conf }, 'answer');

        ok(has_model('gpt-new'), '/v1/models shows gpt-new');
        ok(!has_model('gpt-big'), 'and no longer gpt-big');
        my $r = req($broker, path => '/v1/chat/completions',
                    json => { model => 'gpt-new', messages => [{ role => 'user', content => 'new' }] });
        is($r->{status}, 200, 'gpt-new answers') or diag(KB::show_res($r));
        finish_stream($c, $head, 'gpt-big stream begun before the reload');

        my @rec = $broker->journal_wait({ MESSAGE_ID => $MID_CONFIG, KEYBROKER_EVENT => 'reloaded' });
        ok(@rec >= 1, 'journal: config reloaded');
        is($rec[0]{KEYBROKER_CONFIG_PATH}, $broker->conf, 'with the path') if @rec;
};

subtest 'SIGHUP applies a change without dropping a stream' => sub {
        my ($c, $head) = start_stream('gpt-new');
        $cfg->{'model:gpt-hup'} = { target => 'oai gpt-4o-mini-2024-07-18' };
        write_config($cfg);
        kill 'HUP', $broker->pid;
        ok(wait_until(10, sub { has_model('gpt-hup') }), '/v1/models shows gpt-hup after SIGHUP');
        finish_stream($c, $head, 'stream across SIGHUP');
        ok($broker->alive, 'still running');
        my @rec = $broker->journal_wait({ MESSAGE_ID => $MID_CONFIG, KEYBROKER_EVENT => 'reloaded' }, 10, count => 2);
        is(scalar @rec, 2, 'two reloaded records');
};

subtest 'a bad config is rejected with FILE:LINE and the old one keeps serving' => sub {
        my ($c, $head) = start_stream('gpt-hup');
        my $good = $cfg;
        my $bad = { %$cfg, 'model:gpt-bad' => { target => 'oai gpt-4o-mini-2024-07-18' },
                    agent => { bogus_key => 1 } };
        write_config($bad);
        my @lines = split /\n/, slurp($broker->conf);
        my ($line) = grep { $lines[$_ - 1] =~ /^bogus_key\b/ } 1 .. @lines;
        my $conf = $broker->conf;

        my $res = admin('POST', '/reload');
        is($res->{status}, 400, 'POST /reload: 400') or diag(KB::show_res($res));
        is($res->{json}{error}{code}, 'reload_rejected', 'reload_rejected');
        like($res->{json}{error}{message} // '', qr/^\Q$conf\E:$line: /, "message starts FILE:LINE: (line $line)");
        like($res->{json}{error}{message} // '', qr/bogus_key/, 'and names the key');

        my @rec = $broker->journal_wait({ MESSAGE_ID => $MID_CONFIG, KEYBROKER_EVENT => 'rejected' });
        check_fields($rec[0], {
                KEYBROKER_ERROR => qr/^\Q$conf\E:$line: .*bogus_key/, KEYBROKER_CONFIG_PATH => $conf,
                PRIORITY => '3', MESSAGE => qr/\S/,
        }, 'journal: config rejected with FILE:LINE');

        ok(has_model('gpt-hup'), 'the running config still serves gpt-hup');
        ok(!has_model('gpt-bad'), 'nothing of the bad config applied');
        my $r = req($broker, path => '/v1/chat/completions',
                    json => { model => 'gpt-hup', messages => [{ role => 'user', content => 'still' }] });
        is($r->{status}, 200, 'calls still work') or diag(KB::show_res($r));

        kill 'HUP', $broker->pid;
        @rec = $broker->journal_wait({ MESSAGE_ID => $MID_CONFIG, KEYBROKER_EVENT => 'rejected' }, 10, count => 2);
        is(scalar @rec, 2, 'SIGHUP with the bad config: rejected too');
        ok($broker->alive, 'still running');
        ok(has_model('gpt-hup') && !has_model('gpt-bad'), 'the running config stays');
        finish_stream($c, $head, 'stream across the rejected reloads');

        write_config($good);
        $res = admin('POST', '/reload');
        is($res->{status}, 200, 'a fixed config reloads again') or diag(KB::show_res($res));
};

done_testing();
