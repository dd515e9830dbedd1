# SPDX-License-Identifier: MIT
#
# KB — shared helpers for keybroker's integration tests (tests/integration/*.t).
#
# Every .t starts its own kb-mock and keybrokerd in fresh temp dirs, talks to
# the broker like a real app (curl --unix-socket, possibly under another uid
# via setpriv, possibly inside a systemd unit's cgroup), and asserts on what a
# user would see: status, headers, body, journal records (journalctl -o json)
# and what the provider received (the mock's request log).
#
# Only Debian's perl core: Test::More, JSON::PP, IO::Socket::UNIX, Time::HiRes.
#
# Environment knobs:
#   KB_BUILD=DIR        where keybrokerd and kb-mock live (default: build/)
#   KEYBROKERD=PATH, KB_MOCK=PATH  override one binary
#   KB_KEEP_TMP=1       keep temp dirs (config, logs, mock log) for post-mortems
#   KB_VERBOSE=1        diag every curl command line
#   KB_VALGRIND=1       run keybrokerd under valgrind memcheck (make check-valgrind):
#                       errors or leaks exit 99; the report goes to
#                       $KB_VALGRIND_DIR/keybrokerd.PID.log (default: the broker's dir)
package KB;

use v5.36;
use Carp qw(croak);
use Cwd qw(abs_path);
use Errno qw(EAGAIN EINTR EPIPE ECONNRESET EWOULDBLOCK);
use File::Basename qw(dirname);
use File::Path qw(make_path);
use File::Temp ();
use IO::Select;
use IO::Socket::INET;
use IO::Socket::UNIX;
use JSON::PP ();
use POSIX qw(WNOHANG _exit);
use Socket qw(SOCK_STREAM SOCK_DGRAM);
use Test::More ();
use Time::HiRes qw(time sleep);

use Exporter 'import';
our @EXPORT = qw(
        ensure_journald journal_sync journal_records journal_wait journal_request
        start_mock start_broker standard_config fixture_secret tmpdir start_redis stop_redis
        start_fleet redis_cli redis_hgetall redis_keys
        req sse_events raw_connect http_request
        check_fields check_openai_error check_anthropic_error check_common_headers
        unit_cgroup_skip_reason make_unit
        run_cmd wait_until free_port proc_rss_kb proc_cpu_ticks tcp_established
        slurp spew json_decode json_encode
        @REQUEST_FIELDS $MID_REQUEST $MID_LIFECYCLE $MID_CONFIG
);

$SIG{PIPE} = 'IGNORE';

our $ROOT = abs_path(dirname(__FILE__) . '/../../..');
our $BUILD = do {
        my $b = $ENV{KB_BUILD} // $ENV{BUILD} // 'build';
        $b =~ m{^/} ? $b : "$ROOT/$b";
};
our $KEYBROKERD = $ENV{KEYBROKERD} // "$BUILD/keybrokerd";
our $KB_MOCK = $ENV{KB_MOCK} // "$BUILD/kb-mock";
our $KB_BENCH = $ENV{KB_BENCH} // "$BUILD/kb-bench";

our $MID_REQUEST = '65ab453e95ed4c0e99aea91870cea75c';
our $MID_LIFECYCLE = 'e43fe4197ddd4b8a9f47d92e5be5ccce';
our $MID_CONFIG = '52fd69280afb4330966571bb5772f62f';

# Every per-request record carries all of these (possibly empty): DESIGN.md "Journal".
our @REQUEST_FIELDS = map { "KEYBROKER_$_" } qw(
        REQUEST_ID TEAM PEER_UID PEER_GID PEER_PID PEER_UNIT PEER_EXE ENDPOINT
        MODEL UPSTREAM_MODEL ROUTE FAMILY KEY STREAM STATUS UPSTREAM_STATUS
        OUTCOME INPUT_TOKENS OUTPUT_TOKENS CACHED_TOKENS CACHE_WRITE_TOKENS
        REASONING_TOKENS COST_MICROUSD LATENCY_MS TTFB_MS UPSTREAM_REQUEST_ID
        ATTEMPTS FALLBACK_FROM
);

my $JSON = JSON::PP->new->utf8->canonical;
my $PARENT = $$;
my %CHILDREN;           # pid => description, for END cleanup
my @UNIT_DIRS;          # cgroup dirs to remove at END

sub json_decode($bytes) { my $r = eval { $JSON->decode($bytes) }; return $r }
sub json_encode($data) { return $JSON->encode($data) }

sub slurp($path) {
        open(my $fh, '<:raw', $path) or return undef;
        local $/;
        my $s = <$fh>;
        return $s // '';
}

sub spew($path, $data, $mode = 0644) {
        open(my $fh, '>:raw', $path) or croak "write $path: $!";
        print $fh $data;
        close($fh) or croak "close $path: $!";
        chmod $mode, $path;
}

sub diag_lines($title, $text, $max = 60) {
        my @l = split /\n/, $text // '';
        @l = ('... (' . (@l - $max) . ' lines cut)', @l[-$max .. -1]) if @l > $max;
        Test::More::diag("$title:\n" . join("\n", map { "    $_" } @l));
}

sub wait_until($timeout, $cb, $interval = 0.05) {
        my $end = time + $timeout;
        while (1) {
                my $r = $cb->();
                return $r if $r;
                return undef if time > $end;
                sleep $interval;
        }
}

sub random_hex($n) {
        open(my $fh, '<:raw', '/dev/urandom') or croak "urandom: $!";
        read($fh, my $b, $n) == $n or croak "urandom short read";
        return unpack('H*', $b);
}

# A per-test secret that is obviously fake and unique enough to grep for.
sub fixture_secret($tag = '') {
        return 'sk-test-FIXTURE-' . ($tag ne '' ? "$tag-" : '') . random_hex(12);
}

# A fresh dir under /tmp that other uids may traverse (sockets live there).
sub tmpdir($tag = 'kb') {
        my $d = File::Temp::tempdir("kb-$tag-XXXXXX", DIR => '/tmp', CLEANUP => !$ENV{KB_KEEP_TMP});
        chmod 0755, $d or croak "chmod $d: $!";
        Test::More::note("temp dir $d") if $ENV{KB_KEEP_TMP};
        return $d;
}

sub free_port() {
        my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0, Proto => 'tcp', Listen => 1)
                or croak "bind: $!";
        my $p = $s->sockport;
        close $s;
        return $p;
}

# ---------------------------------------------------------------- processes

# Fork+exec with stdout/stderr to a file; registered for cleanup at END.
sub spawn(%o) {
        my @cmd = @{$o{cmd}};
        my $pid = fork // croak "fork: $!";
        if (!$pid) {
                open(STDIN, '<', '/dev/null');
                open(STDOUT, '>>', $o{output}) or _exit(126);
                open(STDERR, '>&', \*STDOUT) or _exit(126);
                exec { $cmd[0] } @cmd
                        or print STDERR "exec $cmd[0]: $!\n";
                _exit(127);
        }
        $CHILDREN{$pid} = $o{name} // $cmd[0];
        return $pid;
}

# Returns the wait status, or undef if the process did not exit in time.
sub wait_pid($pid, $timeout) {
        my $end = time + $timeout;
        while (1) {
                my $r = waitpid($pid, WNOHANG);
                if ($r == $pid) {
                        delete $CHILDREN{$pid};
                        return $?;
                }
                return -1 if $r < 0;    # not our child / already reaped
                return undef if time > $end;
                sleep 0.02;
        }
}

sub stop_pid($pid, $sig = 'TERM', $timeout = 10) {
        kill $sig, $pid;
        my $st = wait_pid($pid, $timeout);
        return $st if defined $st;
        kill 'KILL', $pid;
        wait_pid($pid, 5);
        return undef;
}

sub status_text($st) {
        return 'did not exit in time (killed)' unless defined $st;
        return 'not a child' if $st == -1;
        return 'killed by signal ' . ($st & 127) . (($st & 128) ? ' (core dumped)' : '') if $st & 127;
        return 'exit ' . ($st >> 8);
}

# A world-traversable scratch dir that is removed as soon as we are done
# with it (never kept, even with KB_KEEP_TMP: journal polling makes many).
sub scratch_dir() {
        my $d = File::Temp::tempdir('kb-scratch-XXXXXX', DIR => '/tmp', CLEANUP => 1);
        chmod 0755, $d or croak "chmod $d: $!";
        return $d;
}

# Run a command to completion: {exit, signal, stdout, stderr}.
sub run_cmd($cmd, %o) {
        my $d = scratch_dir();
        my $pid = fork // croak "fork: $!";
        if (!$pid) {
                if (defined $o{stdin}) {
                        spew("$d/in", $o{stdin});
                        open(STDIN, '<', "$d/in");
                } else {
                        open(STDIN, '<', '/dev/null');
                }
                open(STDOUT, '>', "$d/out") or _exit(126);
                open(STDERR, '>', "$d/err") or _exit(126);
                exec { $cmd->[0] } @$cmd
                        or print STDERR "exec $cmd->[0]: $!\n";
                _exit(127);
        }
        $CHILDREN{$pid} = $cmd->[0];
        my $st = wait_pid($pid, $o{timeout} // 30);
        $st = stop_pid($pid, 'KILL') unless defined $st;
        my $res = {
                exit => defined $st && !($st & 127) ? $st >> 8 : undef,
                signal => defined $st ? $st & 127 : undef,
                status => $st,
                stdout => slurp("$d/out") // '',
                stderr => slurp("$d/err") // '',
        };
        File::Path::remove_tree($d);
        return $res;
}

END {
        if ($$ == $PARENT) {
                local $?;
                for my $pid (keys %CHILDREN) {
                        kill 'TERM', $pid;
                }
                for my $pid (keys %CHILDREN) {
                        stop_pid($pid, 'TERM', 5);
                }
                rmdir $_ for reverse @UNIT_DIRS;
        }
}

sub proc_rss_kb($pid) {
        my $s = slurp("/proc/$pid/status") // return undef;
        return $s =~ /^VmRSS:\s+(\d+)\s+kB/m ? $1 : undef;
}

# The peak RSS (VmHWM) since the last reset_hwm (or the start).
sub proc_hwm_kb($pid) {
        my $s = slurp("/proc/$pid/status") // return undef;
        return $s =~ /^VmHWM:\s+(\d+)\s+kB/m ? $1 : undef;
}

sub reset_hwm($pid) {
        open(my $fh, '>', "/proc/$pid/clear_refs") or return;
        print $fh "5\n";
        close $fh;
}

# utime+stime of a process, in clock ticks (USER_HZ, 100/s on Linux).
# Whether pid runs under ASan (its quarantine keeps up to 256 MiB of freed
# buffers out of reuse) or valgrind (its shadow memory): RSS then measures
# the tool, not what the process holds.
sub under_memory_tool($pid) {
        return (slurp("/proc/$pid/maps") // '') =~ /libasan|vgpreload/ ? 1 : 0;
}

sub proc_cpu_ticks($pid) {
        my $s = slurp("/proc/$pid/stat") // return undef;
        $s =~ s/^.*\)\s+//s;    # comm may hold spaces
        my @f = split ' ', $s;  # field 3 (state) is now index 0
        return $f[11] + $f[12];
}

# TCP connections in ESTABLISHED state with either end on 127.0.0.1:$port.
sub tcp_established($port) {
        my $n = 0;
        for my $f ('/proc/net/tcp', '/proc/net/tcp6') {
                my $t = slurp($f) // next;
                for my $l (split /\n/, $t) {
                        my @c = split ' ', $l;
                        next unless @c > 3 && $c[1] =~ /:([0-9A-F]{4})$/;
                        my $lp = hex $1;
                        my ($rp) = $c[2] =~ /:([0-9A-F]{4})$/;
                        $n++ if $c[3] eq '01' && ($lp == $port || hex($rp) == $port);
                }
        }
        return $n;
}

# ---------------------------------------------------------------- journald

my $JOURNAL_SOCKET = '/run/systemd/journal/socket';

sub journald_alive() {
        return 0 unless -S $JOURNAL_SOCKET;
        # A socket file left by a journald that died refuses connections.
        my $s = IO::Socket::UNIX->new(Type => SOCK_DGRAM, Peer => $JOURNAL_SOCKET);
        return $s ? 1 : 0;
}

sub ensure_journald() {
        return 1 if journald_alive();
        unlink glob('/run/systemd/journal/{socket,stdout,dev-log,io.systemd.journal}');
        make_path('/run/systemd/journal');
        my $jd = -x '/lib/systemd/systemd-journald' ? '/lib/systemd/systemd-journald'
                                                     : '/usr/lib/systemd/systemd-journald';
        my $pid = fork // croak "fork: $!";
        if (!$pid) {
                # Its own session: it must outlive this test and later ones reuse it.
                POSIX::setsid();
                open(STDIN, '<', '/dev/null');
                open(STDOUT, '>>', '/tmp/kb-journald.log');
                open(STDERR, '>&', \*STDOUT);
                # Double fork so it is reparented and never becomes our zombie.
                my $p2 = fork;
                _exit(0) if $p2;
                exec { $jd } $jd or print STDERR "exec $jd: $!\n";
                _exit(127);
        }
        waitpid($pid, 0);
        wait_until(10, sub { -S $JOURNAL_SOCKET })
                or croak "systemd-journald did not create $JOURNAL_SOCKET (see /tmp/kb-journald.log)";
        return 1;
}

# Ask journald to write out everything it received so far.
sub journal_sync() {
        system('journalctl --sync >/dev/null 2>&1');
}

# Normalise journalctl's JSON: binary values come as byte arrays, repeated
# fields as arrays of values.
sub norm_value($v) {
        return $v unless ref $v eq 'ARRAY';
        return pack('C*', @$v) if !grep { ref $_ || !/^\d+$/ } @$v;
        return [map { norm_value($_) } @$v];
}

sub journal_records($match, %o) {
        my @cmd = ('journalctl', '-o', 'json', '--no-pager', '-q', '--all');
        push @cmd, '--since', '@' . int($o{since}) if $o{since};
        push @cmd, map { "$_=$match->{$_}" } sort keys %$match;
        my $r = run_cmd(\@cmd);
        Test::More::diag("journalctl failed: $r->{stderr}") if $r->{exit} && $r->{stderr} !~ /No entries/;
        my @recs;
        for my $l (split /\n/, $r->{stdout}) {
                next unless $l =~ /^\{/;
                my $j = json_decode($l) // next;
                $j->{$_} = norm_value($j->{$_}) for keys %$j;
                push @recs, $j;
        }
        return @recs;
}

# Poll (up to $timeout s, default 10) until at least $o{count} (default 1)
# records match; returns what was found (maybe fewer) in journal order.
sub journal_wait($match, $timeout = 10, %o) {
        my $want = $o{count} // 1;
        my @r;
        my $end = time + $timeout;
        while (1) {
                journal_sync();
                @r = journal_records($match, %o);
                return @r if @r >= $want || time > $end;
                sleep 0.2;
        }
}

# The per-request record for a response's x-keybroker-request-id (or undef,
# with a diag saying why).
my $journal_misses = 0;
sub journal_request($rid, $timeout = undef) {
        if (!defined $rid || $rid eq '') {
                Test::More::diag('no x-keybroker-request-id to look the journal record up by');
                return undef;
        }
        # After a miss, wait less: a broken journal path should fail the
        # suite, not make it take many minutes.
        $timeout //= $journal_misses ? 3 : 10;
        my @r = journal_wait({ MESSAGE_ID => $MID_REQUEST, KEYBROKER_REQUEST_ID => $rid }, $timeout);
        if (!@r) {
                $journal_misses++;
                Test::More::diag("no journal record with MESSAGE_ID=$MID_REQUEST KEYBROKER_REQUEST_ID=$rid within ${timeout}s");
        }
        Test::More::diag(scalar(@r) . " journal records for request $rid, expected exactly one") if @r > 1;
        return $r[-1];
}

# check_fields($record, {FIELD => 'exact' | qr/re/ | sub {...} | undef (must be absent or empty)}, $name)
sub check_fields($rec, $want, $name) {
        Test::More::subtest($name => sub {
                if (!$rec) {
                        Test::More::fail('record present');
                        return;
                }
                for my $f (sort keys %$want) {
                        my $w = $want->{$f};
                        my $v = $rec->{$f};
                        if (!defined $w) {
                                Test::More::ok(!defined $v || $v eq '', "$f empty or absent")
                                        or Test::More::diag("$f = '$v'");
                        } elsif (!defined $v) {
                                Test::More::fail("$f present");
                        } elsif (ref $w eq 'Regexp') {
                                Test::More::like($v, $w, $f);
                        } elsif (ref $w eq 'CODE') {
                                Test::More::ok($w->($v), $f) or Test::More::diag("$f = '$v'");
                        } else {
                                Test::More::is($v, $w, $f);
                        }
                }
        });
}

# ---------------------------------------------------------------- the mock

package KB::Mock {
        use v5.36;

        sub port($s) { $s->{port} }
        sub pid($s) { $s->{pid} }
        sub base_url($s) { "http://127.0.0.1:$s->{port}/v1" }
        sub log_path($s) { $s->{log} }
        sub output($s) { KB::slurp($s->{out}) // '' }

        # Every request the mock received so far, decoded.
        sub log_entries($s) {
                my $t = KB::slurp($s->{log}) // return ();
                my @e;
                my $i = 0;
                for my $l (split /\n/, $t) {
                        $i++;
                        my $j = KB::json_decode($l);
                        if (!$j) {
                                Test::More::diag("kb-mock log line $i is not JSON: $l");
                                next;
                        }
                        push @e, $j;
                }
                return @e;
        }

        sub count($s) { scalar(my @e = $s->log_entries) }

        # The entry with sequence number n (as in the x-mock-n response header).
        sub entry($s, $n) {
                return undef unless defined $n;
                my @e = grep { defined $_->{n} && $_->{n} == $n } $s->log_entries;
                Test::More::diag("kb-mock log has no entry n=$n") unless @e;
                return $e[0];
        }

        # The entry that produced a response relayed by the broker: by
        # x-mock-n, else by the request id the mock put in x-request-id /
        # request-id ("req_mock<n>").
        sub entry_for($s, $res) {
                my $h = $res->{headers} // {};
                my $n = $h->{'x-mock-n'};
                ($n) = ($h->{'x-request-id'} // $h->{'request-id'} // '') =~ /^req_mock(\d+)$/ unless defined $n;
                if (!defined $n) {
                        Test::More::diag('response names no kb-mock request (no x-mock-n, x-request-id or request-id)');
                        return undef;
                }
                return $s->entry($n);
        }

        sub last_entry($s) { my @e = $s->log_entries; return $e[-1] }

        sub stop($s) {
                return $s->{status} if exists $s->{status};
                $s->{status} = KB::stop_pid($s->{pid}, 'TERM', 10);
                return $s->{status};
        }

        sub DESTROY($s) {
                local $?;
                $s->stop if $$ == $s->{owner} && !exists $s->{status};
        }
}

# The request body the mock received, decoded (undef when not JSON).
sub KB::Mock::body_json($entry) {
        return undef unless $entry && defined $entry->{body};
        my $b = $entry->{body};
        utf8::encode($b) if utf8::is_utf8($b);
        return json_decode($b);
}

sub start_mock(%o) {
        croak "kb-mock not built: $KB_MOCK (run make build/kb-mock)" unless -x $KB_MOCK;
        my $dir = $o{dir} // tmpdir('mock');
        my $s = bless {
                dir => $dir, port_file => "$dir/port", log => "$dir/requests.jsonl",
                out => "$dir/mock.out", owner => $$,
        }, 'KB::Mock';
        my @cmd = ($KB_MOCK, '--port', $o{port} // 0, '--port-file', $s->{port_file}, '--log', $s->{log},
                   map { ('--require-key', $_) } @{$o{require_key} // []});
        push @cmd, '--models', join(',', @{$o{models}}) if $o{models};
        push @cmd, '--replay-dir', $o{replay_dir} if $o{replay_dir};
        push @cmd, @{$o{args}} if $o{args};     # any other kb-mock options
        $s->{pid} = spawn(cmd => \@cmd, output => $s->{out}, name => 'kb-mock');
        my $ok = wait_until(10, sub {
                my $p = slurp($s->{port_file});
                return 1 if defined $p && $p =~ /^(\d+)\n/ && ($s->{port} = $1);
                if (defined(my $st = wait_pid($s->{pid}, 0))) {
                        $s->{status} = $st;
                        croak "kb-mock exited during start-up (" . status_text($st) . "): " . $s->output;
                }
                return 0;
        });
        croak "kb-mock wrote no port file within 10 s; output: " . $s->output unless $ok;
        return $s;
}

# ---------------------------------------------------------------- the broker

package KB::Broker {
        use v5.36;

        sub socket($s) { $s->{socket} }
        sub pid($s) { $s->{pid} }
        sub dir($s) { $s->{dir} }
        sub conf($s) { $s->{conf} }
        sub started_at($s) { $s->{started_at} }
        sub log($s) { KB::slurp($s->{logfile}) // '' }
        sub alive($s) { !exists $s->{status} && !defined KB::wait_pid($s->{pid}, 0) }

        # Records this broker process wrote (by _PID, since its start).
        sub journal($s, $match = {}) {
                return KB::journal_records({ _PID => $s->{pid}, %$match }, since => $s->{started_at} - 2);
        }

        sub journal_wait($s, $match = {}, $timeout = 10, %o) {
                return KB::journal_wait({ _PID => $s->{pid}, %$match }, $timeout,
                                        since => $s->{started_at} - 2, %o);
        }

        # SIGTERM (or $sig), wait; returns the wait status (undef: had to SIGKILL).
        sub stop($s, $sig = 'TERM', $timeout = 20) {
                return $s->{status} if exists $s->{status};
                my $st = KB::stop_pid($s->{pid}, $sig, $timeout);
                $s->{status} = $st;
                $s->{exit_code} = defined $st && !($st & 127) ? $st >> 8 : undef;
                return $st;
        }

        sub exit_code($s) { $s->{exit_code} }

        # Start keybrokerd again, same command, config and dir (state_dir
        # included), after it ended (stop, or stop('KILL') for a crash);
        # output is appended to the same log. Dies like start_broker when it
        # does not come up within $timeout s.
        sub respawn($s, $timeout = 10) {
                Carp::croak('respawn of a broker that is still running') unless exists $s->{status};
                delete @$s{qw(status exit_code)};
                $s->{started_at} = Time::HiRes::time();
                $s->{pid} = KB::spawn(cmd => $s->{cmd}, output => $s->{logfile}, name => 'keybrokerd');
                my $up = KB::wait_until($timeout, sub {
                        if (defined(my $st = KB::wait_pid($s->{pid}, 0))) {
                                $s->{status} = $st;
                                return -1;
                        }
                        my $c = -S $s->{socket} && IO::Socket::UNIX->new(Type => Socket::SOCK_STREAM(),
                                                                         Peer => $s->{socket});
                        return $c ? 1 : 0;
                });
                if (!$up || $up < 0) {
                        KB::diag_lines('keybrokerd output', $s->log);
                        Carp::croak('keybrokerd ' . ($up ? 'exited during restart (' . KB::status_text($s->{status}) . ')'
                                                         : "did not accept on $s->{socket} within $timeout s"));
                }
                return $s;
        }

        sub DESTROY($s) {
                local $?;
                $s->stop if $$ == $s->{owner} && !exists $s->{status};
        }
}

sub section_order($name) {
        return (0, $name) if $name eq 'agent';
        return (1, $name) if $name =~ /^team:/;
        return (2, $name) if $name =~ /^route:/;
        return (3, $name);
}

# INI text from { section => { key => value | [values...] } }.
sub render_config($cfg) {
        my $t = '';
        my @secs = sort {
                my @a = section_order($a);
                my @b = section_order($b);
                $a[0] <=> $b[0] || $a[1] cmp $b[1];
        } keys %$cfg;
        for my $sec (@secs) {
                $t .= "[$sec]\n";
                # A test broker's records are marked, so keybrokerctl usage
                # on the machine leaves them out of real usage.
                my %keys = %{$cfg->{$sec}};
                $keys{test_traffic} //= 'yes' if $sec eq 'agent';
                for my $k (sort keys %keys) {
                        my $v = $keys{$k};
                        $t .= "$k = $_\n" for ref $v eq 'ARRAY' ? @$v : ($v);
                }
                $t .= "\n";
        }
        return $t;
}

# The config most tests start from (tests edit the hash before start_broker):
#   team ops    = uid 0, every model, rpm 600 / tpm 100000
#   team search = uid 1001 + gid 2001, models gpt-mini claude-haiku
#   route oai   = openai family, bearer key "oai-key"     -> the mock
#   route anth  = anthropic family, x-api-key "anth-key"  -> the mock
#   models gpt-mini, gpt-big, emb (oai), claude-haiku (anth)
sub standard_config(%o) {
        my $mock = $o{mock} or croak 'standard_config needs mock';
        my $base = ref $mock ? $mock->base_url : $mock;
        return {
                agent => {},
                'team:ops' => { users => '0', models => '*', requests_per_minute => 600,
                                tokens_per_minute => 100000, owner => 'ops@example.com' },
                'team:search' => { users => '1001', groups => '2001', models => 'gpt-mini claude-haiku' },
                'route:oai' => { family => 'openai', base_url => $base, key => 'oai-key', auth => 'bearer',
                                 timeout => '30s', connect_timeout => '5s',
                                 price => 'gpt-4o-mini-2024-07-18 input=1 output=2' },
                'route:anth' => { family => 'anthropic', base_url => $base, key => 'anth-key',
                                  auth => 'x-api-key', timeout => '30s', connect_timeout => '5s' },
                'model:gpt-mini' => { target => 'oai gpt-4o-mini-2024-07-18' },
                'model:gpt-big' => { target => 'oai gpt-4o-2024-08-06' },
                'model:emb' => { target => 'oai text-embedding-3-small' },
                'model:claude-haiku' => { target => 'anth claude-3-5-haiku-20241022' },
        };
}

# start_broker(config => HASH|TEXT, keys => {name => secret}, args => [...])
#
# A hash config gets [agent] defaults (listen, admin, credentials_dir,
# state_dir in the broker's temp dir) unless it sets them. In a text config
# "@DIR@" is replaced by the broker's temp dir; it must set listen itself.
# Dies with the broker's output when it does not come up within 10 s.
sub start_broker(%o) {
        croak "keybrokerd not built: $KEYBROKERD (run make build/keybrokerd)" unless -x $KEYBROKERD;
        ensure_journald();
        my $dir = tmpdir('broker');
        my $s = bless { dir => $dir, logfile => "$dir/keybrokerd.log", conf => "$dir/keybroker.conf",
                        owner => $$ }, 'KB::Broker';
        make_path("$dir/creds", "$dir/state");
        chmod 0700, "$dir/creds", "$dir/state";
        my $keys = $o{keys} // {};
        spew("$dir/creds/$_", "$keys->{$_}\n", 0600) for keys %$keys;

        my $cfg = $o{config} // croak 'start_broker needs config';
        my $text;
        if (ref $cfg) {
                my %agent = (
                        listen => "$dir/api.sock", listen_mode => '0666', admin => "$dir/admin.sock",
                        credentials_dir => "$dir/creds", state_dir => "$dir/state",
                        keystore => "$dir/state/keys.sealed",
                        %{$cfg->{agent} // {}},
                );
                $text = render_config({ %$cfg, agent => \%agent });
                $s->{socket} = $agent{listen};
        } else {
                $text = $cfg =~ s/\@DIR\@/$dir/gr;
                ($s->{socket}) = $text =~ /^\s*listen\s*=\s*(\S+)/m
                        or croak 'text config without listen =';
        }
        spew($s->{conf}, $text);
        $s->{config_text} = $text;
        # Socket activation: a wrapper (systemd-socket-activate) owns the socket.
        $s->{socket} = $o{socket} =~ s/\@DIR\@/$dir/gr if $o{socket};
        my @wrap = map { s/\@DIR\@/$dir/gr } @{$o{wrap} // []};

        $s->{started_at} = time;
        my @vg = $ENV{KB_VALGRIND} ? ('valgrind', '--error-exitcode=99', '--leak-check=full',
                                      '--errors-for-leak-kinds=definite', '--track-fds=no',
                                      '--log-file=' . ($ENV{KB_VALGRIND_DIR} // $dir) . '/keybrokerd.%p.log') : ();
        $s->{cmd} = [@wrap, @vg, $KEYBROKERD, '--config', $s->{conf}, @{$o{args} // []}];
        $s->{pid} = spawn(cmd => $s->{cmd}, output => $s->{logfile}, name => 'keybrokerd');
        my $up = wait_until(@vg ? 60 : 10, sub {
                if (defined(my $st = wait_pid($s->{pid}, 0))) {
                        $s->{status} = $st;
                        return -1;
                }
                return 0 unless -S $s->{socket};
                # The api socket takes connections (the kernel's backlog) as
                # soon as it is bound, before the admin socket exists: "up"
                # is the daemon saying it listens on both (slow under valgrind).
                # A socket-activation wrapper starts it on the first connection.
                return 0 unless @wrap || $s->log =~ /listening on /;
                my $c = IO::Socket::UNIX->new(Type => SOCK_STREAM, Peer => $s->{socket});
                return $c ? 1 : 0;
        });
        if (!$up || $up < 0) {
                my $why = $up ? 'exited during start-up (' . status_text($s->{status}) . ')'
                              : "did not accept on $s->{socket} within 10 s";
                diag_lines('config', $text);
                diag_lines('keybrokerd output', $s->log);
                croak "keybrokerd $why";
        }
        return $s;
}

# A broker with a sealed keystore in its state dir and a random master key
# among its credentials (keys: the credential files besides it).
sub start_keystore_broker($cfg, $keys) {
        my %agent = (
                listen => '@DIR@/api.sock', listen_mode => '0666', admin => '@DIR@/admin.sock',
                credentials_dir => '@DIR@/creds', state_dir => '@DIR@/state',
                keystore => '@DIR@/state/keys.sealed', master_key => '@DIR@/creds/keybroker.master',
        );
        return start_broker(config => render_config({ %$cfg, agent => \%agent }),
                            keys => { %$keys, 'keybroker.master' => random_hex(32) });
}

# ---------------------------------------------------------------- clients

# Unix-socket path from a broker object or a path.
sub sock_of($t) { ref $t ? $t->socket : $t }

# req($broker, method => 'POST', path => '/v1/…', headers => [Name => value, …] | {…},
#     json => $data | body => $bytes, chunked => 1, uid => N, gid => N,
#     groups => [gids], unit => $unit_or_name, timeout => s, curl => [extra args])
#
# Runs curl against the broker's socket (as another uid via setpriv, inside a
# unit's cgroup when asked). Returns {status, headers => {lcname => "v1, v2"},
# header_list => [[name, value]…], body, json, exit (curl's), stderr, pid
# (curl's, i.e. the peer pid the broker sees), cmd}.
sub req($target, %o) {
        my $sock = sock_of($target);
        my $d = scratch_dir();
        my @h = ref $o{headers} eq 'HASH' ? %{$o{headers}} : @{$o{headers} // []};
        my $body = $o{body};
        if (exists $o{json}) {
                $body = json_encode($o{json});
                unshift @h, 'Content-Type' => 'application/json';
        }
        my $method = $o{method} // (defined $body ? 'POST' : 'GET');
        my @curl = ('curl', '-q', '-s', '-S', '-i', '--http1.1', '--path-as-is', '--unix-socket', $sock,
                    '--max-time', $o{timeout} // 30, '-X', $method, '-H', 'Expect:');
        push @curl, '--no-buffer' if $o{stream};
        if (defined $body) {
                spew("$d/body", $body);
                push @curl, '--data-binary', "\@$d/body";
                push @h, 'Transfer-Encoding' => 'chunked' if $o{chunked};
        }
        while (my ($n, $v) = splice(@h, 0, 2)) {
                push @curl, '-H', defined $v && $v ne '' ? "$n: $v" : "$n;";
        }
        push @curl, @{$o{curl} // []};
        push @curl, 'http://localhost' . ($o{path} // '/');

        my @cmd = @curl;
        if (defined $o{uid}) {
                my $gid = $o{gid} // $o{uid};
                my @g = $o{groups} && @{$o{groups}} ? ('--groups=' . join(',', @{$o{groups}}))
                                                     : ('--clear-groups');
                @cmd = ('setpriv', "--reuid=$o{uid}", "--regid=$gid", @g, '--', @curl);
        }
        my @procs = $o{unit} ? (ref $o{unit} ? $o{unit}->procs_files : make_unit($o{unit})->procs_files) : ();
        Test::More::note('+ ' . join(' ', map { /[\s'"]/ ? "'$_'" : $_ } @cmd)) if $ENV{KB_VERBOSE};

        pipe(my $r, my $w) or croak "pipe: $!";
        my $pid = fork // croak "fork: $!";
        if (!$pid) {
                close $r;
                open(STDIN, '<', '/dev/null');
                open(STDOUT, '>&', $w) or _exit(126);
                open(STDERR, '>', "$d/stderr") or _exit(126);
                # Join the unit's cgroup ourselves: the pid stays the same
                # through exec, so the broker sees curl inside the unit.
                for my $f (@procs) {
                        open(my $fh, '>', $f) or do { print STDERR "open $f: $!\n"; _exit(125) };
                        print $fh "$$\n";
                        close($fh) or do { print STDERR "join $f: $!\n"; _exit(125) };
                }
                exec { $cmd[0] } @cmd
                        or print STDERR "exec $cmd[0]: $!\n";
                _exit(127);
        }
        $CHILDREN{$pid} = 'curl';
        close $w;
        binmode $r;
        my $out = do { local $/; <$r> } // '';
        close $r;
        waitpid($pid, 0);
        my $st = $?;
        delete $CHILDREN{$pid};

        my $res = parse_curl_output($out);
        $res->{exit} = $st & 127 ? 128 + ($st & 127) : $st >> 8;
        $res->{stderr} = slurp("$d/stderr") // '';
        File::Path::remove_tree($d);
        $res->{pid} = $pid;
        $res->{cmd} = \@cmd;
        if ($res->{exit} && $res->{exit} >= 125) {
                Test::More::diag("client failed to run (exit $res->{exit}): $res->{stderr}");
        }
        return $res;
}

sub parse_head($head) {
        my @lines = split /\r\n/, $head;
        my $sl = shift @lines // '';
        my ($proto, $status, $reason) = $sl =~ m{^(HTTP/\d(?:\.\d)?)\s+(\d{3})\s*(.*)$};
        my (%h, @list);
        for my $l (@lines) {
                my ($n, $v) = $l =~ /^([^:]+):\s*(.*?)\s*$/ or next;
                push @list, [$n, $v];
                my $k = lc $n;
                $h{$k} = exists $h{$k} ? "$h{$k}, $v" : $v;
        }
        return { proto => $proto, status => $status, reason => $reason, headers => \%h, header_list => \@list };
}

sub parse_curl_output($out) {
        my $res = { status => undef, headers => {}, header_list => [], body => '', raw => $out };
        while ($out =~ /^HTTP\//) {
                my $i = index($out, "\r\n\r\n");
                last if $i < 0;
                my $p = parse_head(substr($out, 0, $i));
                $out = substr($out, $i + 4);
                next if defined $p->{status} && $p->{status} =~ /^1/;
                %$res = (%$res, %$p);
                last;
        }
        $res->{body} = $out if defined $res->{status};
        $res->{json} = json_decode($res->{body}) if defined $res->{status} && $res->{body} =~ /^\s*[\{\[]/;
        return $res;
}

# Server-sent events of a body: [{event, data, json}…] (json undef for [DONE]).
sub sse_events($body) {
        my @ev;
        (my $b = $body) =~ s/\r\n/\n/g;
        for my $blk (split /\n\n+/, $b) {
                next if $blk =~ /^\s*$/;
                my ($event, @data);
                for my $l (split /\n/, $blk) {
                        if ($l =~ /^event:\s?(.*)$/) { $event = $1 }
                        elsif ($l =~ /^data:\s?(.*)$/) { push @data, $1 }
                }
                next unless defined $event || @data;
                my $data = join("\n", @data);
                push @ev, { event => $event, data => $data, json => json_decode($data) };
        }
        return @ev;
}

# Bytes of one HTTP/1.1 request: http_request('POST', '/v1/…', headers => [...],
# body => $bytes | json => $data, chunked => 1, chunk_size => N, no_length => 1).
sub http_request($method, $path, %o) {
        my @h = @{$o{headers} // []};
        my $body = $o{body};
        if (exists $o{json}) {
                $body = json_encode($o{json});
                push @h, 'Content-Type' => 'application/json';
        }
        my $t = "$method $path HTTP/1.1\r\nHost: localhost\r\n";
        while (my ($n, $v) = splice(@h, 0, 2)) { $t .= "$n: $v\r\n" }
        if (defined $body) {
                if ($o{chunked}) {
                        $t .= "Transfer-Encoding: chunked\r\n\r\n";
                        my $cs = $o{chunk_size} || 7;
                        for (my $i = 0; $i < length $body; $i += $cs) {
                                my $c = substr($body, $i, $cs);
                                $t .= sprintf("%x\r\n%s\r\n", length $c, $c);
                        }
                        return $t . "0\r\n\r\n";
                }
                $t .= 'Content-Length: ' . length($body) . "\r\n" unless $o{no_length};
                return "$t\r\n$body";
        }
        return "$t\r\n";
}

sub raw_connect($target) { KB::Raw->connect(sock_of($target)) }

# A real redis-server of the test's own: its own dir, loopback port (or
# unix => 1 for a socket), no persistence unless asked. start_redis(port =>
# N) reuses a port (a restart); password => P sets requirepass; args => [...]
# adds redis-server options.
# Returns {pid, port, socket, dir, url, password}; stop_redis($r) ends it.
sub start_redis(%o) {
        my $bin = '/usr/bin/redis-server';
        croak "redis-server is not installed (make deps installs it)" unless -x $bin;
        my $dir = $o{dir} // tmpdir('redis');
        my $port = $o{port} // free_port();
        my @cmd = ($bin, '--port', $port, '--bind', '127.0.0.1', '--dir', $dir, '--save', '', '--appendonly', 'no',
                   '--daemonize', 'no', '--logfile', "$dir/redis.log");
        push @cmd, '--unixsocket', "$dir/redis.sock", '--unixsocketperm', '700' if $o{unix};
        push @cmd, '--requirepass', $o{password} if defined $o{password};
        push @cmd, @{$o{args} // []};
        my $r = { dir => $dir, port => $port, url => "redis://127.0.0.1:$port",
                  socket => $o{unix} ? "$dir/redis.sock" : undef, password => $o{password} };
        $r->{pid} = spawn(cmd => \@cmd, output => "$dir/redis.out", name => 'redis-server');
        wait_until(10, sub { IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port") })
                or croak 'redis-server did not start: ' . (slurp("$dir/redis.log") // '');
        return $r;
}

sub stop_redis($r, $sig = 'TERM') {
        return stop_pid($r->{pid}, $sig, 10);
}

# redis_cli($redis, @args): one redis-cli command against a start_redis()
# server (its port, or its socket when it has no port; its password if
# any), --raw output. Returns run_cmd's {exit, stdout, stderr, ...} plus
# lines => [the reply, one element per line].
sub redis_cli($r, @args) {
        my @conn = $r->{port} ? ('-h', '127.0.0.1', '-p', $r->{port}) : ('-s', $r->{socket});
        push @conn, '-a', $r->{password}, '--no-auth-warning' if defined $r->{password};
        my $res = run_cmd(['redis-cli', @conn, '--raw', @args], timeout => 10);
        $res->{lines} = [split /\n/, $res->{stdout}];
        return $res;
}

# A hash of the store as {field => value} ({} when the key does not exist).
sub redis_hgetall($r, $key) {
        my @l = @{redis_cli($r, 'HGETALL', $key)->{lines}};
        my %h;
        while (my ($f, $v) = splice(@l, 0, 2)) { $h{$f} = $v }
        return \%h;
}

# The keys matching a pattern, sorted (in scalar context: how many).
sub redis_keys($r, $pattern) {
        my @k = sort grep { $_ ne '' } @{redis_cli($r, 'KEYS', $pattern)->{lines}};
        return @k;
}

# start_fleet(n => N, config => HASH, keys => {...}, args => [...]): N
# keybrokerds from one config hash, each with its own temp dir (socket,
# admin socket, credentials, state_dir: start_broker's per-broker
# defaults), everything else shared (the mock, the quota store). Returns the
# brokers, in start order. Dies like start_broker when one does not come up.
sub start_fleet(%o) {
        my $n = $o{n} // 3;
        my $cfg = $o{config} // croak 'start_fleet needs config';
        croak 'start_fleet needs a config hash (each broker gets its own listen/admin/state_dir)' unless ref $cfg eq 'HASH';
        for my $k (qw(listen admin state_dir credentials_dir keystore)) {
                croak "start_fleet: [agent] $k would be shared by every broker" if exists(($cfg->{agent} // {})->{$k});
        }
        my @b;
        for my $i (1 .. $n) {
                push @b, start_broker(config => $cfg, keys => $o{keys} // {}, args => $o{args} // []);
        }
        return @b;
}

# curl_load($broker, requests => N, parallel => P, json => $body): N POSTs to
# /v1/chat/completions (or path => P) through curl's own parallel keep-alive
# transfers, in the background; headers => [Name => value, ...] adds request
# headers. Returns {pid, dir}; curl_load_wait($load) waits for it and
# returns the lines "STATUS X-MOCK-N", one per request.
sub curl_load($target, %o) {
        my $d = tmpdir('load');
        my $path = $o{path} // '/v1/chat/completions';
        my @h = @{$o{headers} // []};
        my @hargs;
        while (my ($n, $v) = splice(@h, 0, 2)) { push @hargs, '-H', "$n: $v" }
        spew("$d/body", json_encode($o{json}));
        spew("$d/urls", join('', map { qq{url = "http://localhost$path"\noutput = "/dev/null"\n} }
                                         1 .. $o{requests}));
        my $pid = fork // croak "fork: $!";
        if (!$pid) {
                open(STDOUT, '>', "$d/out") or _exit(126);
                open(STDERR, '>', "$d/err") or _exit(126);
                exec('curl', '-q', '-s', '-S', '--http1.1', '-Z', '--parallel-max', $o{parallel},
                     '--unix-socket', sock_of($target), '-X', 'POST', '-H', 'Content-Type: application/json',
                     '-H', 'Expect:', @hargs, '--data-binary', "\@$d/body", '--max-time', 60,
                     '-w', '%{http_code} %header{x-mock-n}\n', '-K', "$d/urls") or _exit(127);
        }
        $CHILDREN{$pid} = 'curl load';
        return { pid => $pid, dir => $d };
}

sub curl_load_wait($load) {
        waitpid($load->{pid}, 0);
        my $st = $?;
        delete $CHILDREN{$load->{pid}};
        Test::More::is($st, 0, 'the curl load finished cleanly') or Test::More::diag(slurp("$load->{dir}/err"));
        return split /\n/, slurp("$load->{dir}/out") // '';
}

# A raw client on the api socket for what curl can't do: pipelining, smuggling
# attempts, stalls, holding connections open, reading at our own pace with
# arrival timestamps.
package KB::Raw {
        use v5.36;
        use Errno qw(EAGAIN EINTR EPIPE ECONNRESET EWOULDBLOCK);
        use IO::Select;
        use Socket qw(SOCK_STREAM);
        use Time::HiRes qw(time);

        sub connect($class, $path) {
                my $s = IO::Socket::UNIX->new(Type => SOCK_STREAM, Peer => $path)
                        or Carp::croak("connect $path: $!");
                $s->blocking(0);
                return bless { sock => $s, buf => '', pos => 0, eof => 0, err => undef }, $class;
        }

        # Write all of $data (within $timeout); false when the peer closed or
        # reset (error kept in {err}).
        sub send($self, $data, $timeout = 10) {
                my $off = 0;
                my $end = time + $timeout;
                my $sel = IO::Select->new($self->{sock});
                while ($off < length $data) {
                        my $n = syswrite($self->{sock}, $data, length($data) - $off, $off);
                        if (defined $n) {
                                $off += $n;
                                next;
                        }
                        if ($! == EAGAIN || $! == EWOULDBLOCK || $! == EINTR) {
                                return 0 if time > $end;
                                $sel->can_write(0.1);
                                next;
                        }
                        $self->{err} = "$!";
                        return 0;
                }
                return 1;
        }

        # Read what is available, waiting until $deadline: 1 data, 0 EOF, undef timeout.
        sub fill($self, $deadline) {
                return 0 if $self->{eof};
                my $sel = IO::Select->new($self->{sock});
                while (1) {
                        my $left = $deadline - time;
                        return undef if $left <= 0;
                        next unless $sel->can_read($left > 0.5 ? 0.5 : $left);
                        my $n = sysread($self->{sock}, my $chunk, 262144);
                        if (!defined $n) {
                                next if $! == EAGAIN || $! == EWOULDBLOCK || $! == EINTR;
                                $self->{err} = "$!";
                                $self->{eof} = 1;
                                return 0;
                        }
                        if ($n == 0) {
                                $self->{eof} = 1;
                                return 0;
                        }
                        $self->{read_at} = time;
                        $self->{buf} .= $chunk;
                        return 1;
                }
        }

        sub avail($self) { length($self->{buf}) - $self->{pos} }

        sub take($self, $n) {
                my $s = substr($self->{buf}, $self->{pos}, $n);
                $self->{pos} += $n;
                if ($self->{pos} > 1 << 20) {
                        substr($self->{buf}, 0, $self->{pos}, '');
                        $self->{pos} = 0;
                }
                return $s;
        }

        sub find($self, $needle) {
                my $i = index($self->{buf}, $needle, $self->{pos});
                return $i < 0 ? -1 : $i - $self->{pos};
        }

        # One response: {status, headers, header_list, body, chunks => [[time,
        # bytes]…], framing, complete (body fully framed), t_head, t_end,
        # closed}; undef when no status line arrived before the timeout
        # ({why} says what happened). Options: timeout (s, default 10),
        # method (HEAD: no body), until => sub($body_so_far) { stop when true }
        # (the response is then returned with complete = 0, stopped = 1).
        sub read_response($self, %o) {
                my $res = $self->read_head(%o) or return undef;
                return $self->read_body($res, %o);
        }

        sub read_head($self, %o) {
                my $deadline = time + ($o{timeout} // 10);
                my $i;
                while (($i = $self->find("\r\n\r\n")) < 0) {
                        my $r = $self->fill($deadline);
                        if (!$r) {
                                $self->{why} = defined $r ? 'connection closed before a response'
                                                          : 'timed out waiting for a response';
                                $self->{why} .= " ($self->{err})" if $self->{err};
                                $self->{why} .= '; got: ' . substr($self->{buf}, $self->{pos}, 200)
                                        if $self->avail;
                                return undef;
                        }
                }
                my $res = KB::parse_head($self->take($i));
                $self->take(4);
                $res->{t_head} = $self->{read_at} // time;
                $res->{chunks} = [];
                $res->{body} = '';
                my $h = $res->{headers};
                if (($o{method} // '') eq 'HEAD' || ($res->{status} // '') =~ /^(1|204|304)/) {
                        $res->{framing} = 'none';
                } elsif (($h->{'transfer-encoding'} // '') =~ /chunked/i) {
                        $res->{framing} = 'chunked';
                } elsif (defined $h->{'content-length'}) {
                        $res->{framing} = 'length';
                        $res->{left} = $h->{'content-length'};
                } else {
                        $res->{framing} = 'close';
                }
                return $res;
        }

        # Reads (more of) the body of a response from read_head or an earlier
        # read_body that stopped.
        sub read_body($self, $res, %o) {
                my $deadline = time + ($o{timeout} // 10);
                $res->{stopped} = 0;
                my $add = sub ($data) {
                        $res->{body} .= $data;
                        push @{$res->{chunks}}, [$self->{read_at} // time, $data];
                        return $o{until} && $o{until}->($res->{body});
                };
                my $more = sub {
                        my $r = $self->fill($deadline);
                        $res->{closed} = 1 if defined $r && !$r;
                        $res->{timed_out} = 1 unless defined $r;
                        return $r;
                };
                my $f = $res->{framing};
                if ($f eq 'none') {
                        $res->{complete} = 1;
                } elsif ($f eq 'chunked') {
                        CHUNK: while (1) {
                                my $j;
                                while (($j = $self->find("\r\n")) < 0) { last CHUNK unless $more->() }
                                my $line = substr($self->{buf}, $self->{pos}, $j);
                                my ($size) = $line =~ /^([0-9a-fA-F]+)/;
                                if (!defined $size) {
                                        $res->{bad_chunk} = $line;
                                        last;
                                }
                                $size = hex $size;
                                if ($size == 0) {
                                        # the last chunk, trailers, then the final CRLF
                                        my $k;
                                        while (($k = $self->find("\r\n\r\n")) < 0) { last CHUNK unless $more->() }
                                        $self->take($k + 4);
                                        $res->{complete} = 1;
                                        last;
                                }
                                while ($self->avail < $j + 2 + $size + 2) { last CHUNK unless $more->() }
                                $self->take($j + 2);
                                my $data = $self->take($size);
                                if ($self->take(2) ne "\r\n") {
                                        $res->{bad_chunk} = 'missing CRLF after chunk data';
                                        last;
                                }
                                if ($add->($data)) {
                                        $res->{stopped} = 1;
                                        last;
                                }
                        }
                } elsif ($f eq 'length') {
                        while ($res->{left} > 0) {
                                if (!$self->avail) { last unless $more->() }
                                my $n = $self->avail < $res->{left} ? $self->avail : $res->{left};
                                $res->{left} -= $n;
                                if ($add->($self->take($n))) {
                                        $res->{stopped} = 1;
                                        last;
                                }
                        }
                        $res->{complete} = $res->{left} == 0 ? 1 : 0;
                } else {
                        while (1) {
                                if ($self->avail && $add->($self->take($self->avail))) {
                                        $res->{stopped} = 1;
                                        last;
                                }
                                last unless $more->();
                        }
                        $res->{complete} = $res->{closed} ? 1 : 0;
                }
                $res->{complete} //= 0;
                $res->{t_end} = $self->{read_at} // time;
                $res->{json} = KB::json_decode($res->{body}) if $res->{complete} && $res->{body} =~ /^\s*[\{\[]/;
                return $res;
        }

        # Until EOF or reset; true if the peer closed within $timeout (what
        # arrived meanwhile is kept in {buf}).
        sub wait_closed($self, $timeout = 10) {
                my $deadline = time + $timeout;
                while (1) {
                        my $r = $self->fill($deadline);
                        return 1 if defined $r && !$r;
                        return 0 unless defined $r;
                }
        }

        sub pending_text($self) { substr($self->{buf}, $self->{pos}) }

        sub close($self) {
                close($self->{sock}) if $self->{sock};
                delete $self->{sock};
        }
}

# ---------------------------------------------------------------- error shapes

my %ANTHROPIC_TYPE = (
        400 => 'invalid_request_error', 403 => 'permission_error', 404 => 'not_found_error',
        405 => 'invalid_request_error', 408 => 'timeout_error', 413 => 'request_too_large',
        431 => 'request_too_large', 429 => 'rate_limit_error', 502 => 'api_error',
        503 => 'api_error', 504 => 'api_error',
);

sub show_res($res) {
        return 'no response' unless $res;
        my $b = $res->{body} // '';
        $b = substr($b, 0, 600) . '…' if length $b > 600;
        return "status " . ($res->{status} // 'none') . ", body: $b"
                . (defined $res->{exit} && $res->{exit} ? ", curl exit $res->{exit}: $res->{stderr}" : '');
}

# Every answer carries a request id (32 hex); team/route when known.
sub check_common_headers($res, %o) {
        my $h = $res->{headers} // {};
        Test::More::like($h->{'x-keybroker-request-id'} // '', qr/^[0-9a-f]{32}$/, 'x-keybroker-request-id is 32 hex');
        Test::More::is($h->{'x-keybroker-team'}, $o{team}, "x-keybroker-team is $o{team}") if exists $o{team};
        Test::More::is($h->{'x-keybroker-route'}, $o{route}, "x-keybroker-route is $o{route}") if exists $o{route};
}

# An error of the agent's own making, OpenAI shape:
# {"error":{"message","type","code"}}.
# $code undef: the provider's own way of saying an unknown id ("code": null).
sub check_openai_error($res, $status, $code, $name = "$status " . ($code // 'null') . " (OpenAI shape)") {
        return Test::More::subtest($name => sub {
                Test::More::is($res->{status}, $status, "status $status") or Test::More::diag(show_res($res));
                Test::More::like($res->{headers}{'content-type'} // '', qr{^application/json}, 'content-type json');
                my $j = $res->{json};
                Test::More::ok(ref $j eq 'HASH' && ref $j->{error} eq 'HASH', 'body is {"error":{…}}')
                        or return Test::More::diag(show_res($res));
                Test::More::is($j->{error}{code}, $code, 'error.code ' . ($code // 'null'));
                Test::More::like($j->{error}{message} // '', qr/\S/, 'error.message non-empty');
                Test::More::like($j->{error}{type} // '', qr/^\w+$/, 'error.type is a word');
                check_common_headers($res);
        });
}

# Anthropic shape: {"type":"error","error":{"type":T,"message":"CODE: …"}}.
sub check_anthropic_error($res, $status, $code, $name = "$status $code (Anthropic shape)") {
        return Test::More::subtest($name => sub {
                Test::More::is($res->{status}, $status, "status $status") or Test::More::diag(show_res($res));
                Test::More::like($res->{headers}{'content-type'} // '', qr{^application/json}, 'content-type json');
                my $j = $res->{json};
                Test::More::ok(ref $j eq 'HASH' && ($j->{type} // '') eq 'error' && ref $j->{error} eq 'HASH',
                               'body is {"type":"error","error":{…}}')
                        or return Test::More::diag(show_res($res));
                Test::More::is($j->{error}{type}, $ANTHROPIC_TYPE{$status}, "error.type for $status")
                        if $ANTHROPIC_TYPE{$status};
                Test::More::like($j->{error}{message} // '', qr/^\Q$code\E: \S/, "error.message starts with '$code: '");
                check_common_headers($res);
        });
}

# ---------------------------------------------------------------- units (cgroups)

sub cgroup_roots() {
        return ('/sys/fs/cgroup') if -e '/sys/fs/cgroup/cgroup.controllers';     # pure v2
        return grep { -e "$_/cgroup.procs" } ('/sys/fs/cgroup/unified', '/sys/fs/cgroup/systemd');
}

package KB::Unit {
        use v5.36;
        sub name($s) { $s->{name} }
        sub procs_files($s) { map { "$_/cgroup.procs" } @{$s->{dirs}} }
}

# A cgroup named like a systemd service (system.slice/NAME) in every
# hierarchy libsystemd might read (hybrid: the v2 "unified" one; legacy:
# name=systemd). Removed at END.
sub make_unit($name) {
        my @dirs;
        for my $root (cgroup_roots()) {
                my $d = "$root/system.slice/$name";
                make_path($d) unless -d $d;
                -d $d or croak "mkdir $d: $!";
                push @dirs, $d;
                push @UNIT_DIRS, $d;
        }
        croak 'no writable cgroup hierarchy' unless @dirs;
        return bless { name => $name, dirs => \@dirs }, 'KB::Unit';
}

# '' when a process can be put into a unit's cgroup here, else why not.
my $unit_skip;
sub unit_cgroup_skip_reason() {
        return $unit_skip if defined $unit_skip;
        $unit_skip = eval {
                return "not root" if $> != 0;
                my @roots = cgroup_roots();
                return 'no cgroup hierarchy with cgroup.procs under /sys/fs/cgroup' unless @roots;
                my $p1 = slurp('/proc/1/cgroup') // '';
                for my $l (split /\n/, $p1) {
                        my ($ctl, $path) = (split /:/, $l, 3)[1, 2];
                        next unless $ctl eq '' || $ctl eq 'name=systemd';
                        return "PID 1 is in cgroup $path, not the root: unit paths would be relative to it"
                                unless $path eq '/' || $path eq '/init.scope';
                }
                my $u = make_unit('kbtest-probe-' . random_hex(3) . '.service');
                my $r = run_cmd(['/bin/sh', '-c', join('; ', map { "echo \$\$ > $_ || exit 3" } $u->procs_files)
                                                    . '; exec cat /proc/self/cgroup']);
                return "cannot move a process into $u->{dirs}[0]: $r->{stderr}" if $r->{exit};
                my $want = "/system.slice/$u->{name}";
                my @lines = grep { /^\d+:(name=systemd)?:\Q$want\E$/ } split /\n/, $r->{stdout};
                return "process did not land in $want: $r->{stdout}" unless @lines;
                rmdir $_ for @{$u->{dirs}};
                return '';
        } // "cgroup probe failed: $@";
        return $unit_skip;
}

1;
