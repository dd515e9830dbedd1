#!/usr/bin/perl
# Start and stop: the journal says when the agent started and when it is
# stopping; SIGTERM and SIGINT end it with exit 0; the socket is gone or
# refuses afterwards.
use v5.36;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use KB;

ensure_journald();
my %keys = ('oai-key' => fixture_secret('oai'), 'anth-key' => fixture_secret('anth'));
my $mock = start_mock(require_key => [values %keys]);

for my $sig (qw(TERM INT)) {
        subtest "SIG$sig" => sub {
                my $broker = start_broker(config => standard_config(mock => $mock), keys => \%keys);
                my @started = $broker->journal_wait({ MESSAGE_ID => $KB::MID_LIFECYCLE, KEYBROKER_EVENT => 'started' });
                is(scalar(@started), 1, 'one "started" record from this process');
                check_fields($started[0], {
                        SYSLOG_IDENTIFIER => 'keybrokerd', PRIORITY => qr/^[0-7]$/, MESSAGE => qr/\S/,
                }, 'started record');

                my $res = req($broker, path => '/v1/chat/completions',
                              json => { model => 'gpt-mini', messages => [{ role => 'user', content => 'x' }] });
                is($res->{status}, 200, 'serves a call');

                my $st = $broker->stop($sig);
                is($st, 0, "exit 0 on SIG$sig") or diag(KB::status_text($st) . "\n" . $broker->log);
                my @stopping = $broker->journal_wait({ MESSAGE_ID => $KB::MID_LIFECYCLE, KEYBROKER_EVENT => 'stopping' });
                is(scalar(@stopping), 1, 'one "stopping" record');
                ok(!@stopping || !@started
                   || $stopping[0]{__REALTIME_TIMESTAMP} >= $started[0]{__REALTIME_TIMESTAMP},
                   'stopping after started');
                my $c = eval { raw_connect($broker) };
                ok(!$c, 'nobody listens on the socket any more');
        };
}

subtest 'SIGTERM while a stream is in flight: exits 0 within drain_timeout' => sub {
        my $cfg = standard_config(mock => $mock);
        $cfg->{agent} = { drain_timeout => '3s' };
        my $broker = start_broker(config => $cfg, keys => \%keys);
        my $c = raw_connect($broker);
        $c->send(http_request('POST', '/v1/chat/completions',
                              json => { model => 'gpt-mini', stream => JSON::PP::true, messages => [{ role => 'user', content => 'x' }] },
                              headers => ['x-mock-event-delay-ms' => 500, 'x-mock-output-tokens' => 60]));
        my $res = $c->read_head(timeout => 10);
        ok($res && $res->{status} == 200, 'stream started');
        my $t0 = Time::HiRes::time();
        my $st = $broker->stop('TERM', 15);
        my $dt = Time::HiRes::time() - $t0;
        is($st, 0, 'exit 0') or diag(KB::status_text($st) . "\n" . $broker->log);
        cmp_ok($dt, '<', 10, sprintf('gone within drain_timeout plus slack (%.1f s; the stream needed 30 s)', $dt));
        $c->close;
        my @stopping = $broker->journal_wait({ MESSAGE_ID => $KB::MID_LIFECYCLE, KEYBROKER_EVENT => 'stopping' });
        is(scalar(@stopping), 1, '"stopping" record');
        my @req = $broker->journal_wait({ MESSAGE_ID => $KB::MID_REQUEST,
                                          KEYBROKER_REQUEST_ID => $res->{headers}{'x-keybroker-request-id'} // 'none' });
        is(scalar(@req), 1, 'the cut stream still got its journal record');
};

done_testing;
