#!/usr/bin/perl
# The api socket under hostile or sloppy clients: size limits, stalls,
# connection caps, smuggling attempts, malformed bodies; and the HTTP/1.1
# features real clients use (keep-alive, pipelining, chunked bodies).
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
$cfg->{agent} = { max_request_body => '1K', header_timeout => '1s' };
my $broker = start_broker(config => $cfg, keys => \%keys);

my @ANTH = ('anthropic-version' => '2023-06-01');
my $chat = { model => 'gpt-mini', messages => [{ role => 'user', content => 'hi' }] };

# One request on a fresh connection; returns the response and whether the
# broker closed the connection afterwards.
sub raw_once($bytes, %o) {
        my $c = raw_connect($broker);
        $c->send($bytes);
        my $res = $c->read_response(timeout => $o{timeout} // 10);
        diag("no response: $c->{why}") unless $res;
        my $closed = $res ? $c->wait_closed($o{close_timeout} // 5) : 0;
        $c->close;
        return ($res, $closed);
}

sub no_upstream_call($before, $name = 'provider not called') {
        is($mock->count, $before, $name);
}

# ------------------------------------------------------------ header size
subtest 'request headers over 64 KiB: 431, connection closed' => sub {
        my $before = $mock->count;
        my ($res, $closed) = raw_once(http_request('POST', '/v1/chat/completions', json => $chat,
                                                   headers => ['X-Big' => 'a' x 70000]));
        check_openai_error($res // {}, 431, 'request_too_large', 'one 70 KB header');
        ok($closed, 'connection closed after 431');

        ($res, $closed) = raw_once(http_request('POST', '/v1/chat/completions', json => $chat,
                                                headers => [map { ("X-H$_" => 'b' x 80) } 1 .. 900]));
        check_openai_error($res // {}, 431, 'request_too_large', '900 headers of 80 bytes');
        ok($closed, 'connection closed');

        ($res) = raw_once(http_request('POST', '/v1/messages', json => $chat,
                                       headers => [@ANTH, 'X-Big' => 'a' x 70000]));
        check_anthropic_error($res // {}, 431, 'request_too_large', 'Anthropic shape on /v1/messages');
        no_upstream_call($before);

        ($res) = raw_once(http_request('GET', '/v1/keybroker/whoami', headers => ['X-Big' => 'c' x 50000]));
        is($res && $res->{status}, 200, '50 KB of headers is within the limit');
};

# ------------------------------------------------------------ body size
subtest 'body over max_request_body (1K): 413' => sub {
        my $before = $mock->count;
        my $big = { %$chat, messages => [{ role => 'user', content => 'x' x 2000 }] };
        my $res = req($broker, path => '/v1/chat/completions', json => $big);
        check_openai_error($res, 413, 'request_too_large', 'Content-Length body of 2 KB');

        $res = req($broker, path => '/v1/chat/completions', json => $big, chunked => 1);
        check_openai_error($res, 413, 'request_too_large', 'chunked body of 2 KB');

        my ($r2) = raw_once(http_request('POST', '/v1/chat/completions', body => json_encode($big),
                                         chunked => 1, chunk_size => 100, headers => ['Content-Type' => 'application/json']));
        check_openai_error($r2 // {}, 413, 'request_too_large', 'chunked in 100-byte chunks (raw)');

        $res = req($broker, path => '/v1/messages', json => { %$big, max_tokens => 5 }, headers => \@ANTH);
        check_anthropic_error($res, 413, 'request_too_large', 'Anthropic shape');

        # Refused on the declared length, without waiting for the body (which
        # would end in a 408 after header_timeout instead).
        my $c = raw_connect($broker);
        $c->send("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 . "Content-Length: 1000000\r\n\r\n{\"model\":");
        my $r3 = $c->read_response(timeout => 10);
        check_openai_error($r3 // {}, 413, 'request_too_large', 'Content-Length: 1000000 refused up front');
        ok($c->wait_closed(5), 'connection closed');
        $c->close;
        no_upstream_call($before);

        my $fits = { model => 'gpt-mini', messages => [{ role => 'user', content => 'y' x 900 }] };
        cmp_ok(length(json_encode($fits)), '<=', 1024, 'control body is within 1K');
        $res = req($broker, path => '/v1/chat/completions', json => $fits);
        is($res->{status}, 200, 'a body within the limit passes') or diag(KB::show_res($res));
};

# ------------------------------------------------------------ stalls
subtest 'stalled client: 408 after header_timeout (1s), connection closed' => sub {
        my $before = $mock->count;
        my $c = raw_connect($broker);
        my $t0 = time;
        $c->send("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n");
        my $res = $c->read_response(timeout => 10);
        my $dt = time - $t0;
        check_openai_error($res // {}, 408, 'request_timeout', 'half the headers, then silence');
        cmp_ok($dt, '>=', 0.8, sprintf('not before the timeout (%.2f s)', $dt));
        cmp_ok($dt, '<', 5, 'well within 5 s');
        ok($c->wait_closed(5), 'connection closed');
        $c->close;

        # Trickling a byte at a time must not extend the deadline.
        $c = raw_connect($broker);
        $t0 = time;
        my $bytes = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: " . ('z' x 200);
        for my $ch (split //, $bytes) {
                last unless $c->send($ch);
                last if $c->fill(time + 0.2) || $c->{eof};
        }
        $res = $c->read_response(timeout => 10);
        $dt = time - $t0;
        is($res && $res->{status}, 408, 'slowloris (1 byte / 200 ms): 408');
        cmp_ok($dt, '<', 5, sprintf('within 5 s (%.2f s)', $dt));
        $c->close;

        # A body that stops arriving.
        $c = raw_connect($broker);
        $t0 = time;
        $c->send("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 . "Content-Length: 100\r\n\r\n{\"model\":\"gpt-");
        $res = $c->read_response(timeout => 10);
        $dt = time - $t0;
        check_openai_error($res // {}, 408, 'request_timeout', 'body stalls after 14 of 100 bytes');
        cmp_ok($dt, '<', 5, sprintf('within 5 s (%.2f s)', $dt));
        ok($c->wait_closed(5), 'connection closed');
        $c->close;
        no_upstream_call($before);
};

# ------------------------------------------------------------ smuggling and framing
subtest 'Content-Length with Transfer-Encoding: 400 and close, nothing smuggled' => sub {
        my $before = $mock->count;
        my $smuggled = "GET /v1/keybroker/whoami HTTP/1.1\r\nHost: x\r\n\r\n";
        my $body = "0\r\n\r\n$smuggled";
        my $c = raw_connect($broker);
        $c->send("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 . "Content-Length: " . length($body) . "\r\nTransfer-Encoding: chunked\r\n\r\n$body");
        my $res = $c->read_response(timeout => 10);
        check_openai_error($res // {}, 400, 'invalid_request', 'CL + TE');
        ok($c->wait_closed(5), 'connection closed');
        unlike($c->pending_text, qr{HTTP/1\.1 200}, 'no second (smuggled) response');
        $c->close;

        my ($r2, $closed) = raw_once("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                                     . "Content-Length: 6\r\n\r\n{\"a\":1}");
        is($r2 && $r2->{status}, 400, 'two different Content-Length: 400');
        ok($closed, 'connection closed');

        ($r2, $closed) = raw_once("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                                  . "zz\r\nhello\r\n0\r\n\r\n");
        is($r2 && $r2->{status}, 400, 'bad chunk size: 400');
        ok($closed, 'connection closed');

        ($r2, $closed) = raw_once("GARBAGE\r\n\r\n");
        is($r2 && $r2->{status}, 400, 'not HTTP at all: 400');
        ok($closed, 'connection closed');
        no_upstream_call($before);
};

# ------------------------------------------------------------ bad bodies
subtest 'malformed or incomplete JSON bodies: 400 invalid_request' => sub {
        my $before = $mock->count;
        my %cases = (
                'bad JSON' => '{"model": "gpt-mini", "messages": [',
                'empty body' => '',
                'array body' => '[{"model":"gpt-mini"}]',
                'string body' => '"gpt-mini"',
                'missing model' => '{"messages":[{"role":"user","content":"hi"}]}',
                'model is a number' => '{"model":42,"messages":[]}',
                'model is null' => '{"model":null}',
                'trailing garbage' => '{"model":"gpt-mini"} {"x":1}',
        );
        for my $name (sort keys %cases) {
                my $res = req($broker, method => 'POST', path => '/v1/chat/completions', body => $cases{$name},
                              headers => ['Content-Type' => 'application/json']);
                check_openai_error($res, 400, 'invalid_request', "$name (chat)");
        }
        my $res = req($broker, method => 'POST', path => '/v1/chat/completions', body => $cases{'bad JSON'},
                      headers => ['Content-Type' => 'application/json']);
        check_fields(journal_request($res->{headers}{'x-keybroker-request-id'}), {
                KEYBROKER_OUTCOME => 'invalid_request', KEYBROKER_STATUS => '400', KEYBROKER_ENDPOINT => 'chat',
                KEYBROKER_PEER_UID => '0', PRIORITY => '4',
        }, 'journal');
        $res = req($broker, method => 'POST', path => '/v1/messages', body => $cases{'bad JSON'}, headers => \@ANTH);
        check_anthropic_error($res, 400, 'invalid_request', 'bad JSON (messages)');
        $res = req($broker, method => 'POST', path => '/v1/embeddings', body => $cases{'missing model'});
        check_openai_error($res, 400, 'invalid_request', 'missing model (embeddings)');
        no_upstream_call($before);
};

subtest 'unknown paths and wrong methods' => sub {
        my $before = $mock->count;
        my $res = req($broker, path => '/v1/nope', json => $chat);
        check_openai_error($res, 404, 'not_found', 'POST /v1/nope');
        $res = req($broker, path => '/');
        check_openai_error($res, 404, 'not_found', 'GET /');
        $res = req($broker, path => '/v1/messages/bogus', json => $chat, headers => \@ANTH);
        check_anthropic_error($res, 404, 'not_found', 'POST /v1/messages/bogus (Anthropic family by path)');
        $res = req($broker, path => '/v1/../v1/keybroker/whoami');
        isnt($res->{status}, 200, 'dot segments are not normalised into a known path');
        $res = req($broker, method => 'GET', path => '/v1/chat/completions');
        check_openai_error($res, 405, 'invalid_request', 'GET /v1/chat/completions');
        $res = req($broker, method => 'DELETE', path => '/v1/messages', headers => \@ANTH);
        check_anthropic_error($res, 405, 'invalid_request', 'DELETE /v1/messages');
        $res = req($broker, method => 'POST', path => '/v1/models', json => {});
        is($res->{status}, 405, 'POST /v1/models: 405');
        no_upstream_call($before);
};

# ------------------------------------------------------------ HTTP/1.1 features
subtest 'pipelined requests: answered in order' => sub {
        my $c = raw_connect($broker);
        # The first one is slower at the provider: order must still hold.
        $c->send(http_request('POST', '/v1/chat/completions', json => $chat, headers => ['x-mock-delay-ms' => 300])
                 . http_request('POST', '/v1/chat/completions', json => { %$chat, model => 'gpt-big' })
                 . http_request('GET', '/v1/keybroker/whoami'));
        my @res = map { $c->read_response(timeout => 15) } 1 .. 3;
        is(scalar(grep { defined } @res), 3, 'three responses') or diag($c->{why});
        is($res[0] && $res[0]{json}{model}, 'gpt-4o-mini-2024-07-18', 'first: gpt-mini');
        is($res[1] && $res[1]{json}{model}, 'gpt-4o-2024-08-06', 'second: gpt-big');
        is($res[2] && $res[2]{json}{uid}, 0, 'third: whoami');
        my @n = map { $_ && $mock->entry_for($_) ? $mock->entry_for($_)->{n} : undef } @res[0, 1];
        ok(defined $n[0] && defined $n[1] && $n[0] < $n[1], 'provider saw them in order')
                or diag('mock sequence numbers: ' . join(', ', map { $_ // 'none' } @n));
        $c->close;
};

subtest 'keep-alive: several requests on one connection' => sub {
        my $c = raw_connect($broker);
        for my $i (1 .. 3) {
                ok($c->send(http_request('POST', '/v1/chat/completions', json => $chat)), "request $i sent");
                my $res = $c->read_response(timeout => 10);
                is($res && $res->{status}, 200, "request $i: 200") or diag($c->{why});
                unlike($res->{headers}{connection} // '', qr/close/i, "request $i: connection not closed") if $res;
        }
        $c->close;
};

subtest 'HTTP/1.0 without keep-alive: answered, then closed' => sub {
        my $c = raw_connect($broker);
        $c->send("GET /v1/keybroker/whoami HTTP/1.0\r\n\r\n");
        my $res = $c->read_response(timeout => 10);
        is($res && $res->{status}, 200, 'status 200');
        is($res && $res->{json}{uid}, 0, 'whoami body');
        ok($c->wait_closed(5), 'connection closed');
        $c->close;
};

subtest 'chunked request body accepted' => sub {
        my $body = { %$chat, messages => [{ role => 'user', content => 'chunk me please' }] };
        my ($res) = raw_once(http_request('POST', '/v1/chat/completions', json => $body, chunked => 1, chunk_size => 7),
                             close_timeout => 0.1);
        is($res && $res->{status}, 200, 'raw chunked body: 200') or return;
        my $e = $mock->entry_for($res) or return;
        my $b = KB::Mock::body_json($e);
        is($b->{model}, 'gpt-4o-mini-2024-07-18', 'model rewritten');
        is_deeply($b->{messages}, $body->{messages}, 'messages intact after de-chunking');
        ok(!exists $e->{headers}{'transfer-encoding'} || $e->{headers}{'transfer-encoding'} !~ /chunked.*chunked/,
           'no doubled transfer-encoding');
        my $r2 = req($broker, path => '/v1/chat/completions', json => $body, chunked => 1);
        is($r2->{status}, 200, 'curl chunked upload: 200');
};

# ------------------------------------------------------------ connection caps
subtest 'max_connections = 4: the 5th gets 503 and close, no spinning, recovers' => sub {
        my $cfg2 = standard_config(mock => $mock);
        $cfg2->{agent} = { max_connections => 4 };
        my $b2 = start_broker(config => $cfg2, keys => \%keys);
        sleep 0.3;      # let the readiness probe's connection be reaped
        my @held;
        for my $i (1 .. 4) {
                my $c = raw_connect($b2);
                $c->send(http_request('GET', '/v1/keybroker/whoami'));
                my $res = $c->read_response(timeout => 10);
                is($res && $res->{status}, 200, "connection $i: served") or diag($c->{why});
                push @held, $c;
        }
        my $c5 = raw_connect($b2);
        $c5->send(http_request('GET', '/v1/keybroker/whoami'));
        my $res = $c5->read_response(timeout => 10);
        check_openai_error($res // {}, 503, 'too_many_connections', '5th connection');
        ok($c5->wait_closed(5), '5th connection closed');
        $c5->close;

        # A 6th waits (in the backlog or refused) while we watch the CPU.
        my $c6 = raw_connect($b2);
        my $t0 = proc_cpu_ticks($b2->pid);
        sleep 1;
        my $used = proc_cpu_ticks($b2->pid) - $t0;
        cmp_ok($used, '<', 30, "broker not spinning at the cap ($used ticks in 1 s)");
        $c6->send(http_request('GET', '/v1/keybroker/whoami'));
        my $r6 = $c6->read_response(timeout => 10);
        is($r6 && $r6->{status}, 503, '6th connection: 503 too');
        $c6->close;

        ok($b2->alive, 'broker still running');
        $_->close for @held;
        my $ok = wait_until(5, sub { (req($b2, path => '/v1/keybroker/whoami')->{status} // 0) == 200 });
        ok($ok, 'after closing the 4, new connections are served');
        $res = req($b2, path => '/v1/chat/completions', json => $chat);
        is($res->{status}, 200, 'and proxied calls work');
        is($b2->stop, 0, 'broker exits 0') or diag($b2->log);
};

subtest 'max_connections_per_uid = 2: one uid cannot starve the others' => sub {
        my $cfg3 = standard_config(mock => $mock);
        $cfg3->{agent} = { max_connections_per_uid => 2 };
        my $b3 = start_broker(config => $cfg3, keys => \%keys);
        sleep 0.3;
        my @held;
        for my $i (1 .. 2) {
                my $c = raw_connect($b3);       # uid 0
                $c->send(http_request('GET', '/v1/keybroker/whoami'));
                my $res = $c->read_response(timeout => 10);
                is($res && $res->{status}, 200, "uid 0 connection $i: served");
                push @held, $c;
        }
        my $res = req($b3, path => '/v1/keybroker/whoami');
        is($res->{status}, 503, "uid 0's third connection: 503") or diag(KB::show_res($res));
        $res = req($b3, path => '/v1/keybroker/whoami', uid => 1001);
        is($res->{status}, 200, 'uid 1001 is still served');
        $_->close for @held;
        ok(wait_until(5, sub { (req($b3, path => '/v1/keybroker/whoami')->{status} // 0) == 200 }),
           'uid 0 served again once its connections closed');
        is($b3->stop, 0, 'broker exits 0') or diag($b3->log);
};

ok($broker->alive, 'broker survived everything above');
is($broker->stop, 0, 'broker exits 0 on SIGTERM') or diag($broker->log);
done_testing;
