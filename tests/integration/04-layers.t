#!/usr/bin/perl
# One-way calls: README's Layout lists agent/'s files by layer, top to
# bottom, and the daemon's objects must agree: every function a file calls
# is defined in its own layer or a lower one, a cycle of calls stays inside
# one concern split in files (http-*.c, admin-*.c, key*.c), and each header
# names its layer on its first line. The calls are read from the objects (nm), so an
# upward call added anywhere fails here. The module graph is printed for
# the record.
use v5.36;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use KB;

my $root = $KB::ROOT;
my $readme = slurp("$root/README.md") // die "README.md: $!";
my ($layout) = $readme =~ /^## Layout\n(.*?)^## /ms;
ok($layout, 'README has a Layout section') or BAIL_OUT('no Layout section');

# | `agent/` N name | `file.c` (...), ... |
my (%layer, %layer_name, $n_layers);
for my $row ($layout =~ /^\| `agent\/` \d+ [^|]+\|[^\n]*$/mg) {
        my ($n, $name, $files) = $row =~ /^\| `agent\/` (\d+) ([^|]+?) \| (.*) \|$/ or next;
        $layer_name{$n} = $name;
        $n_layers = $n if !$n_layers || $n > $n_layers;
        for my $f ($files =~ /`([\w-]+\.[ch])`/g) {
                ok(!exists $layer{$f}, "$f is in one layer") or diag("$f: layers $layer{$f} and $n");
                $layer{$f} = $n;
        }
}
cmp_ok($n_layers // 0, '>=', 5, 'the Layout lists agent/ by layer');

my @tracked = split /\n/, `git -C $root ls-files agent 2>/dev/null`;
plan skip_all => 'not a git checkout' unless @tracked;
my @c = grep { m{^agent/[^/]+\.c$} } @tracked;
my @missing = grep { !exists $layer{s{.*/}{}r} } @c;
is_deeply(\@missing, [], 'every agent/*.c has a layer') or diag("no layer: @missing");

sub family($f) { return $f =~ /^key/ ? 'key' : ($f =~ s/[-.].*//r) }

# Files stay readable: none of the daemon's or keybrokerctl's over 800 lines
# (split along a seam, not by count).
my @long = grep { (my $t = slurp("$root/$_") // '') =~ tr/\n// > 800 } grep { m{^(agent|client)/} }
        split /\n/, `git -C $root ls-files agent client`;
is_deeply(\@long, [], 'no file in agent/ or client/ is over 800 lines') or diag("over 800 lines: @long");

# The calls, from the objects: symbols each one needs that another defines.
my $objdir = "$KB::BUILD/agent";
my (%def, %need);
for my $c (@c) {
        my $base = $c =~ s{.*/}{}r =~ s/\.c$//r;
        my $o = "$objdir/$base.o";
        ok(-f $o, "$o is built") or next;
        for (split /\n/, `nm $o`) {
                if (/^\s+U (\S+)$/) { $need{$base}{$1} = 1 }
                elsif (/^[0-9a-f]+ [TDBR] (\S+)$/) { $def{$1} = $base }
        }
}
my %edge;       # file -> file -> [symbols]
for my $f (keys %need) {
        for my $s (keys %{$need{$f}}) {
                my $g = $def{$s} // next;
                push @{$edge{$f}{$g}}, $s if $g ne $f;
        }
}

my @up;
for my $f (sort keys %edge) {
        for my $g (sort keys %{$edge{$f}}) {
                next if $layer{"$g.c"} >= $layer{"$f.c"};
                push @up, sprintf('%s.c (layer %d) calls %s.c (layer %d): %s', $f, $layer{"$f.c"}, $g, $layer{"$g.c"},
                                  join(', ', sort @{$edge{$f}{$g}}));
        }
}
is_deeply(\@up, [], 'no file calls a file of a layer above its own') or diag(join("\n", @up));

# Strongly connected files (Tarjan): a cycle must stay in one family.
my (%index, %low, %on, @stack, @sccs);
my $i = 0;
my $visit;
$visit = sub ($v) {
        $index{$v} = $low{$v} = $i++;
        push @stack, $v;
        $on{$v} = 1;
        for my $w (keys %{$edge{$v} // {}}) {
                if (!exists $index{$w}) {
                        $visit->($w);
                        $low{$v} = $low{$w} if $low{$w} < $low{$v};
                } elsif ($on{$w}) {
                        $low{$v} = $index{$w} if $index{$w} < $low{$v};
                }
        }
        if ($low{$v} == $index{$v}) {
                my @scc;
                while (1) {
                        my $w = pop @stack;
                        delete $on{$w};
                        push @scc, $w;
                        last if $w eq $v;
                }
                push @sccs, [sort @scc] if @scc > 1;
        }
};
$visit->($_) for grep { !exists $index{$_} } sort map { s{.*/}{}r =~ s/\.c$//r } @c;
my @crossing = grep { my %f = map { family($_) => 1 } @$_; keys %f > 1 } @sccs;
is_deeply(\@crossing, [], 'calls cycle only inside one concern split in files')
        or diag(join("\n", map { "cycle: @$_" } @crossing));

# Each header's first comment names its layer as the Layout does.
my %family_layer;
for my $f (keys %layer) {
        my $fam = family($f);
        $family_layer{$fam} = $layer{$f} if $f =~ /\.c$/ && (!exists $family_layer{$fam} || $f eq "$fam.c");
}
for my $h (grep { m{^agent/[^/]+\.h$} } @tracked) {
        my $base = $h =~ s{.*/}{}r;
        my $want = $layer{$base =~ s/\.h$/.c/r} // $layer{$base} // $family_layer{family($base)};
        my $text = slurp("$root/$h") // '';
        # the comment after the licence line
        my ($head) = $text =~ m{\A/\*[^\n]*\*/\n#pragma once\n(/\*[^\n]*\*/)};
        my ($n, $name) = ($head // '') =~ /^\/\* Layer (\d+) of \d+, ([^:;.]+)/;
        ok(defined $n && defined $want && $n == $want && $name eq $layer_name{$want},
           "$base names its layer first: $want, " . ($layer_name{$want} // '?'))
                or diag("$base says: " . ($n // 'no "Layer N of M, name"') . ($name ? ", $name" : ''));
        # ... and which layers its code calls, as the objects say
        my @srcs = grep { family($_) eq family($base) } map { s{.*/}{}r =~ s/\.c$//r } @c;
        @srcs = ($base =~ s/\.h$//r) if grep { $_ eq ($base =~ s/\.h$//r) } @srcs;
        @srcs = ('fleet-quota') if $base eq 'fleet-scripts.h';
        my %called;
        for my $f (@srcs) {
                $called{$layer{"$_.c"}} = 1 for grep { $layer{"$_.c"} != ($want // 0) } keys %{$edge{$f} // {}};
        }
        my ($says) = ($head // '') =~ /: (calls [^.]*)\./;
        my $expect = calls_phrase($want // 0, sort { $a <=> $b } keys %called);
        is($says, $expect, "$base says which layers it calls");
}

sub calls_phrase($n, @layers) {
        return 'calls every layer below it' if $n == 1;
        return $n < $n_layers ? 'calls no other layer' : 'calls only libraries' unless @layers;
        my @parts;
        for (my $i = 0; $i < @layers;) {
                my $j = $i;
                $j++ while $j + 1 < @layers && $layers[$j + 1] == $layers[$j] + 1;
                push @parts, $i == $j ? $layers[$i] : $j == $i + 1 ? "$layers[$i], $layers[$j]" : "$layers[$i]-$layers[$j]";
                $i = $j + 1;
        }
        return (@layers == 1 ? 'calls layer ' : 'calls layers ') . join(', ', @parts);
}

# The graph, file by file, for the record (prove -v shows it).
note('calls, by layer, top first:');
for my $f (sort { $layer{"$a.c"} <=> $layer{"$b.c"} || $a cmp $b } map { s{.*/}{}r =~ s/\.c$//r } @c) {
        note(sprintf('  %2d %-18s -> %s', $layer{"$f.c"}, $f, join(' ', sort keys %{$edge{$f} // {}})));
}

done_testing();
