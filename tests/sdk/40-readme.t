#!/usr/bin/perl
# README's "Calling it from apps" snippets, run as pasted: each fenced block
# that follows a `<!-- readme-test: NAME -->` marker is taken from README.md
# itself, with only the socket path (/run/keybroker/api.sock) and the bridge
# port replaced, and with `your-tool ...` replaced by a tool that only takes
# a base URL (the official openai SDK configured by OPENAI_BASE_URL and
# OPENAI_API_KEY alone). Each run is checked like an app would see it (its
# output) and like an operator would (the journal record, what the provider
# received: the route's key, never the snippet's "unused").
use v5.36;
use FindBin;
use lib "$FindBin::Bin/../integration/lib", "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use KB;
use SDK;


my $README = KB::slurp("$KB::ROOT/README.md") // BAIL_OUT('README.md unreadable');
my %snippet;
while ($README =~ /<!-- readme-test: ([\w-]+) -->\n```\w*\n(.*?)^```/msg) {
        $snippet{$1} = $2;
}
for my $name (qw(curl node python-sdk python-httpx bridge)) {
        ok(defined $snippet{$name}, "README has the '$name' snippet") or BAIL_OUT("README lost the '$name' snippet");
}

my ($mock, $broker, $keys) = sdk_setup(config => sub ($cfg) {
        # The demo config's model names, which README uses.
        $cfg->{'model:chat-default'} = { target => 'oai gpt-4o-mini-2024-07-18' };
        $cfg->{'model:claude'} = { target => 'anth claude-3-5-haiku-20241022' };
        $cfg->{'team:search'}{models} .= ' chat-default';
});
my %keys = %$keys;
my $SOCK = $broker->socket;
my $TEXT7 = join('', map { "tok$_ " } 0 .. 6);
my $dir = tmpdir('readme');
symlink("$SDK_DIR/node_modules", "$dir/node_modules") or die "symlink: $!";

sub adapt($code, %o) {
        $code =~ s{/run/keybroker/api\.sock}{$SOCK}g;
        $code =~ s{\b8089\b}{$o{port}}g if $o{port};
        return $code;
}

# Run a snippet; returns run_cmd's result and the provider/journal evidence
# of the calls it made.
sub run_snippet($name, $cmd, %o) {
        my $before = $mock->count;
        my $t = time;
        my $r = run_cmd($cmd, timeout => 60, %o);
        is($r->{exit}, 0, "$name: exits 0") or diag("stdout: $r->{stdout}\nstderr: $r->{stderr}");
        my @e = ($mock->log_entries)[$before .. $mock->count - 1];
        return ($r, \@e, $t);
}

sub provider_ok($name, $entries, @want) {
        is(scalar @$entries, scalar @want, "$name: the provider got " . scalar(@want) . ' call(s)');
        for my $i (0 .. $#want) {
                my ($family, $up) = @{$want[$i]};
                my $e = $entries->[$i] // {};
                my $h = $e->{headers} // {};
                if ($family eq 'anthropic') {
                        is($h->{'x-api-key'}, $keys{'anth-key'}, "$name: route's key as x-api-key");
                } else {
                        is($h->{authorization}, "Bearer $keys{'oai-key'}", "$name: route's key as Bearer");
                }
                unlike(join("\n", values %$h) . ($e->{body} // ''), qr/\bunused\b/,
                       "$name: the snippet's api key never reached the provider");
                is((KB::Mock::body_json($e) // {})->{model}, $up, "$name: model rewritten to $up");
        }
}

sub journal_ok($name, $t, $want) {
        journal_sync();
        my @recs = grep { ($_->{KEYBROKER_MODEL} // '') eq $want->{KEYBROKER_MODEL} }
                journal_records({ MESSAGE_ID => $MID_REQUEST }, since => $t - 1);
        ok(@recs >= 1, "$name: a journal record for $want->{KEYBROKER_MODEL}") or return;
        check_fields($recs[-1], { KEYBROKER_OUTCOME => 'ok', KEYBROKER_STATUS => 200, %$want },
                     "$name: journal record");
}

subtest 'curl' => sub {
        my ($r, $e, $t) = run_snippet('curl', ['sh', '-c', adapt($snippet{curl})]);
        my $j = json_decode($r->{stdout}) // {};
        is($j->{choices}[0]{message}{content}, $TEXT7, 'the answer');
        provider_ok('curl', $e, ['openai', 'gpt-4o-mini-2024-07-18']);
        journal_ok('curl', $t, { KEYBROKER_MODEL => 'chat-default', KEYBROKER_TEAM => 'ops',
                                 KEYBROKER_PEER_EXE => qr{/curl$} });
};

subtest 'Node: openai + @anthropic-ai/sdk over undici' => sub {
        spew("$dir/snippet.mjs", adapt($snippet{node}));
        my ($r, $e, $t) = run_snippet('node', [$SDK::NODE, "$dir/snippet.mjs"]);
        is($r->{stdout}, "$TEXT7\n$TEXT7\n", 'both answers printed');
        provider_ok('node', $e, ['openai', 'gpt-4o-mini-2024-07-18'], ['anthropic', 'claude-3-5-haiku-20241022']);
        journal_ok('node', $t, { KEYBROKER_MODEL => 'chat-default', KEYBROKER_PEER_EXE => qr{/node(js)?$} });
        journal_ok('node', $t, { KEYBROKER_MODEL => 'claude', KEYBROKER_FAMILY => 'anthropic' });
};

# The interpreter README names for these snippets: Debian's, which has
# python3-httpx (make deps); not whatever python3 is first on PATH.
my $PY = '/usr/bin/python3';

subtest 'Python: httpx over the Unix socket (Debian python3-httpx)' => sub {
        my $have = run_cmd([$PY, '-c', 'import httpx']);
        plan skip_all => "python3-httpx missing (make deps installs it)" if $have->{exit};
        spew("$dir/httpx_snippet.py", adapt($snippet{'python-httpx'}));
        my ($r, $e, $t) = run_snippet('python-httpx', [$PY, "$dir/httpx_snippet.py"]);
        is($r->{stdout}, "$TEXT7\n", 'the answer printed');
        provider_ok('python-httpx', $e, ['openai', 'gpt-4o-mini-2024-07-18']);
        journal_ok('python-httpx', $t, { KEYBROKER_MODEL => 'chat-default', KEYBROKER_PEER_EXE => qr{python3} });
};

subtest 'Python: the openai and anthropic packages' => sub {
        my $have = run_cmd([$PY, '-c', 'import httpx, openai, anthropic']);
        plan skip_all => 'the openai/anthropic Python packages are not installed (PyPI is out of reach here)'
                if $have->{exit};
        spew("$dir/sdk_snippet.py", adapt($snippet{'python-sdk'}));
        my ($r, $e, $t) = run_snippet('python-sdk', [$PY, "$dir/sdk_snippet.py"]);
        is($r->{stdout}, "$TEXT7\n$TEXT7\n", 'both answers printed');
        provider_ok('python-sdk', $e, ['openai', 'gpt-4o-mini-2024-07-18'],
                    ['anthropic', 'claude-3-5-haiku-20241022']);
};

# A tool that only takes a base URL: the official openai SDK with nothing
# but OPENAI_BASE_URL and OPENAI_API_KEY (its own fetch, plain TCP).
my $TOOL = <<'JS';
import OpenAI from 'openai';
const c = await new OpenAI().chat.completions.create({ model: 'chat-default', messages: [{ role: 'user', content: 'hi' }] });
console.log(c.choices[0].message.content);
JS
spew("$dir/tool.mjs", $TOOL);

sub bridge_run($uid) {
        my $port = free_port();
        my $code = adapt($snippet{bridge}, port => $port);
        $code =~ s{your-tool \.\.\.}{node $dir/tool.mjs};
        # The bridge must be gone when the snippet ends: stop what it started.
        # (The tool may dial before socat listens; the SDK retries that.)
        $code =~ s{&\n}{&\nBRIDGE=\$!; trap 'kill \$BRIDGE 2>/dev/null' EXIT\n};
        spew("$dir/bridge.sh", $code, 0755);
        chmod 0755, $dir;
        my @cmd = ('sh', "$dir/bridge.sh");
        @cmd = ('setpriv', "--reuid=$uid", "--regid=$uid", '--clear-groups', '--', @cmd) if $uid;
        return run_snippet("bridge (uid $uid)", \@cmd);
}

subtest 'a tool that only takes a base URL, through the socat bridge' => sub {
        plan skip_all => 'socat missing (make deps installs it)' if run_cmd(['sh', '-c', 'command -v socat'])->{exit};
        for my $uid (0, 1001) {
                my ($r, $e, $t) = bridge_run($uid);
                is($r->{stdout}, "$TEXT7\n", "uid $uid: the tool printed the answer");
                provider_ok("bridge uid $uid", $e, ['openai', 'gpt-4o-mini-2024-07-18']);
                # The broker sees the bridge's user, which is why README says
                # to run it as the tool's own user.
                journal_ok("bridge uid $uid", $t, { KEYBROKER_MODEL => 'chat-default', KEYBROKER_PEER_UID => $uid,
                                                    KEYBROKER_TEAM => $uid ? 'search' : 'ops',
                                                    KEYBROKER_PEER_EXE => qr{/socat$} });
        }
};

done_testing;
