#!/usr/bin/perl
# The keys never leak: after a run of calls (successes, streams, provider
# errors, refusals, aborts), no fixture secret appears in the journal, the
# daemon's own output, its state dir, or anything sent back to apps. The only
# place a secret may appear is the provider's side of the wire.
use v5.36;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use KB;

ensure_journald();
my %keys = ('oai-key' => fixture_secret('oai'), 'anth-key' => fixture_secret('anth'),
            'dead-key' => fixture_secret('dead'));
my $mock = start_mock(require_key => [@keys{qw(oai-key anth-key)}]);
my $cfg = standard_config(mock => $mock);
$cfg->{'route:dead'} = { family => 'openai', base_url => 'http://127.0.0.1:' . free_port() . '/v1',
                         key => 'dead-key', connect_timeout => '2s' };
$cfg->{'model:dead'} = { target => 'dead gpt-x' };
my $broker = start_broker(config => $cfg, keys => \%keys);

my @ANTH = ('anthropic-version' => '2023-06-01');
my $chat = { model => 'gpt-mini', messages => [{ role => 'user', content => 'x' }] };
my $msg = { model => 'claude-haiku', max_tokens => 5, messages => [{ role => 'user', content => 'x' }] };
my @responses;

sub call(%o) {
        my $r = req($broker, %o);
        push @responses, $r;
        return $r;
}

# A representative mix.
call(path => '/v1/chat/completions', json => $chat);
call(path => '/v1/chat/completions', json => { %$chat, stream => JSON::PP::true }, stream => 1);
call(path => '/v1/responses', json => { model => 'gpt-mini', input => 'x' });
call(path => '/v1/embeddings', json => { model => 'emb', input => 'x' });
call(path => '/v1/messages', json => $msg, headers => \@ANTH);
call(path => '/v1/messages', json => { %$msg, stream => JSON::PP::true }, headers => \@ANTH, stream => 1);
call(path => '/v1/messages/count_tokens', json => $msg, headers => \@ANTH);
call(path => '/v1/chat/completions', json => $chat, headers => ['x-mock-status' => 401]);
call(path => '/v1/messages', json => $msg, headers => [@ANTH, 'x-mock-status' => 401]);
call(path => '/v1/chat/completions', json => $chat, headers => ['x-mock-status' => 500]);
call(path => '/v1/chat/completions', json => { %$chat, stream => JSON::PP::true }, stream => 1,
     headers => ['x-mock-cut-after' => 2]);
call(path => '/v1/chat/completions', json => { %$chat, model => 'dead' });
call(path => '/v1/chat/completions', json => { %$chat, model => 'nope' });
call(path => '/v1/chat/completions', json => $chat, uid => 1009);
call(path => '/v1/chat/completions', json => { %$chat, model => 'gpt-big' }, uid => 1001);
call(method => 'POST', path => '/v1/chat/completions', body => '{not json');
call(path => '/v1/models');
call(path => '/v1/keybroker/whoami');
call(path => '/v1/chat/completions', json => $chat, headers => ['x-mock-hang' => 1], timeout => 1);

# An app that disconnects mid-stream.
{
        my $c = raw_connect($broker);
        $c->send(http_request('POST', '/v1/chat/completions', json => { %$chat, stream => JSON::PP::true },
                              headers => ['x-mock-event-delay-ms' => 200, 'x-mock-output-tokens' => 20]));
        my $r = $c->read_head(timeout => 10);
        $c->read_body($r, timeout => 5, until => sub ($b) { $b =~ /tok0/ }) if $r;
        push @responses, $r if $r;
        $c->close;
}

my @ok = grep { ($_->{status} // 0) == 200 } @responses;
cmp_ok(scalar(@ok), '>=', 8, 'the successful calls succeeded (the run exercised the happy path)');
my $rid = $responses[0]{headers}{'x-keybroker-request-id'};
ok(journal_request($rid), 'records reached the journal');

# Only now stop the daemon so that everything it will ever log is logged.
is($broker->stop, 0, 'broker exits 0 on SIGTERM') or diag($broker->log);
journal_sync();

my @secrets = values %keys;
sub leaks($text) {
        return grep { index($text, $_) >= 0 } @secrets;
}

# The provider did get the keys (otherwise this test proves nothing).
my $mocklog = KB::slurp($mock->log_path) // '';
ok(index($mocklog, $keys{'oai-key'}) >= 0 && index($mocklog, $keys{'anth-key'}) >= 0,
   'the provider received the injected keys');

my @where = (
        ['responses to apps (headers and bodies)', join("\n", map { $_->{raw} // ($_->{body} // '') . json_encode($_->{headers}) } @responses)],
        ["the daemon's stdout/stderr", $broker->log],
);
for my $m ({ _PID => $broker->pid }, { SYSLOG_IDENTIFIER => 'keybrokerd' }) {
        my ($k) = keys %$m;
        # export format keeps binary fields verbatim, where JSON would turn them into byte arrays
        my $r = run_cmd(['journalctl', '-o', 'export', '--no-pager', '--all', '--since', '@' . int($broker->started_at - 2),
                         "$k=$m->{$k}"]);
        cmp_ok(length($r->{stdout}), '>', 0, "journal has records for $k=$m->{$k}");
        push @where, ["the journal ($k=$m->{$k})", $r->{stdout}];
}
my $state = '';
if (opendir(my $dh, $broker->dir . '/state')) {
        for my $f (grep { -f $broker->dir . "/state/$_" } readdir $dh) {
                $state .= KB::slurp($broker->dir . "/state/$f") // '';
        }
}
push @where, ['files in state_dir', $state];

for my $w (@where) {
        my @l = leaks($w->[1]);
        is(scalar(@l), 0, "no secret in $w->[0]") or diag('found: ' . join(', ', map { substr($_, 0, 20) . '…' } @l));
}

# The secrets are long random strings; even a prefix should not show up.
my @prefixes = map { substr($_, 0, 24) } @secrets;
my $all = join("\n", map { $_->[1] } @where);
is(scalar(grep { index($all, $_) >= 0 } @prefixes), 0, 'not even a 24-character prefix of a secret');

done_testing;
