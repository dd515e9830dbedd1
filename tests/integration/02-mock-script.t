#!/usr/bin/perl
# kb-mock's failure onsets (tests/mock/script.c): PUT /mock/scripts/NAME
# sets one, requests with x-mock-script: NAME count toward it and, past its
# "after" count, get its status in the family's error shape, a growing
# delay, or usage without numbers; GET shows the counter, DELETE removes
# it; requests without the header, or naming another script, are untouched;
# bad scripts are refused. Talks to the mock directly.
use v5.36;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time);
use KB;

plan skip_all => 'curl not installed' unless grep { -x "$_/curl" } split(/:/, $ENV{PATH});

my $mock = start_mock();
my $base = 'http://127.0.0.1:' . $mock->port;

# {status, json, body, secs} of one request to the mock.
sub call($method, $path, %o) {
        my @cmd = ('curl', '-q', '-s', '-S', '-X', $method, '-o', '-', '-w', '\n%{http_code} %{time_total}',
                   '--max-time', 30);
        push @cmd, '-H', "$_: $o{headers}{$_}" for sort keys %{$o{headers} // {}};
        push @cmd, '-H', 'content-type: application/json', '--data-binary', $o{body} if defined $o{body};
        my $r = run_cmd([@cmd, "$base$path"]);
        my ($body, $code, $secs) = $r->{stdout} =~ /^(.*)\n(\d{3}) ([\d.]+)$/s or return { status => 0, body => $r->{stderr} };
        return { status => $code, body => $body, json => json_decode($body), secs => $secs };
}

sub chat(%h) {
        return call('POST', '/v1/chat/completions', headers => \%h,
                    body => json_encode({ model => 'gpt-x', messages => [{ role => 'user', content => 'hi' }] }));
}

subtest 'status after N requests, in the family shape' => sub {
        my $r = call('PUT', '/mock/scripts/fail', body => '{"after":2,"status":503}');
        is($r->{status}, 200, 'PUT 200') or diag($r->{body});
        is_deeply([@{$r->{json}}{qw(name after status seen)}], ['fail', 2, 503, 0], 'answers the script');
        my @st = map { chat('x-mock-script' => 'fail')->{status} } 1 .. 4;
        is_deeply(\@st, [200, 200, 503, 503], 'the first 2 pass, then 503');
        my $e = chat('x-mock-script' => 'fail');
        is($e->{json}{error}{type}, 'server_error', 'OpenAI error shape');
        $e = call('POST', '/v1/messages', headers => { 'x-mock-script' => 'fail', 'anthropic-version' => '2023-06-01' },
                  body => json_encode({ model => 'claude-x', max_tokens => 5, messages => [{ role => 'user', content => 'hi' }] }));
        is($e->{status}, 503, 'anthropic path: 503');
        is($e->{json}{type}, 'error', 'Anthropic error shape');
        is(chat()->{status}, 200, 'a request without the header is untouched');
        is(chat('x-mock-script' => 'other')->{status}, 200, 'a request naming an unknown script is untouched');
        $r = call('GET', '/mock/scripts/fail');
        is($r->{json}{seen}, 6, 'GET: 6 requests seen');
        $r = call('PUT', '/mock/scripts/fail', body => '{"after":1,"status":429}');
        is(chat('x-mock-script' => 'fail')->{status}, 200, 'PUT again restarts the count');
        my $l = chat('x-mock-script' => 'fail');
        is($l->{status}, 429, '... then the new status');
        is($l->{json}{error}{code}, 'rate_limit_exceeded', '429 shape');
        $r = call('DELETE', '/mock/scripts/fail');
        is($r->{status}, 200, 'DELETE 200');
        ok($r->{json}{deleted}, '... deleted');
        is(chat('x-mock-script' => 'fail')->{status}, 200, 'after DELETE: untouched');
        is(call('DELETE', '/mock/scripts/fail')->{status}, 404, 'DELETE again: 404');
        is(call('GET', '/mock/scripts/fail')->{status}, 404, 'GET of none: 404');
};

subtest 'growing delay' => sub {
        my $r = call('PUT', '/mock/scripts/slow', body => '{"after":1,"delay_ms":100,"delay_step_ms":200}');
        is($r->{status}, 200, 'PUT 200');
        # The onset is a lower bound on time (nothing here asserts speed).
        my @secs = map { chat('x-mock-script' => 'slow')->{secs} } 1 .. 3;
        ok($secs[1] >= 0.3, "2nd: at least 100 + 200 ms ($secs[1] s)");
        ok($secs[2] >= 0.5, "3rd: at least 100 + 400 ms ($secs[2] s)");
        call('DELETE', '/mock/scripts/slow');
};

subtest 'usage without numbers' => sub {
        call('PUT', '/mock/scripts/nousage', body => '{"no_usage":true}');
        my $r = chat('x-mock-script' => 'nousage');
        is($r->{status}, 200, 'answered 200');
        ok(exists $r->{json}{usage} && !defined $r->{json}{usage}{prompt_tokens}, 'usage.prompt_tokens is null')
                or diag($r->{body});
        ok(defined $r->{json}{choices}[0]{message}{content}, 'the answer itself is there');
        call('DELETE', '/mock/scripts/nousage');
        ok(chat('x-mock-script' => 'nousage')->{json}{usage}{prompt_tokens}, 'deleted: usage again');
};

subtest 'concurrent requests count exactly' => sub {
        call('PUT', '/mock/scripts/many', body => '{"after":10,"status":500}');
        my @pids;
        for my $i (1 .. 4) {
                my $pid = fork // die;
                if (!$pid) {
                        chat('x-mock-script' => 'many') for 1 .. 5;
                        POSIX::_exit(0);
                }
                push @pids, $pid;
        }
        waitpid($_, 0) for @pids;
        is(call('GET', '/mock/scripts/many')->{json}{seen}, 20, '20 requests from 4 clients: seen 20');
        my $failed = grep { $_->{headers}{'x-mock-script'} } $mock->log_entries;
        ok($failed >= 20, 'the log has them');
};

subtest 'bad scripts' => sub {
        for my $b ('{"after":-1}', '{"status":200}', '{"status":600}', '{"delay_ms":600001}', '{"no_usage":1}',
                   '{"frob":1}', '[1]', 'nope') {
                my $r = call('PUT', '/mock/scripts/bad', body => $b);
                is($r->{status}, 400, "PUT $b: 400");
                like($r->{json}{error}{message} // '', qr/\w/, '... with a message');
        }
        is(call('PUT', '/mock/scripts/b%20ad', body => '{}')->{status}, 400, 'a bad name: 400');
        is(call('PUT', '/mock/scripts/' . ('x' x 65), body => '{}')->{status}, 400, 'a name too long: 400');
        is(call('POST', '/mock/scripts/x', body => '{}')->{status}, 405, 'POST: 405');
        my @ok = grep { call('PUT', "/mock/scripts/s$_", body => '{}')->{status} == 200 } 1 .. 70;
        is(scalar(@ok), 64 - 1, 'at most 64 scripts (one is still set)');
        is(call('PUT', '/mock/scripts/s1', body => '{}')->{status}, 200, 'an existing one can be set again');
};

is($mock->stop, 0, 'mock exits 0');
done_testing;
