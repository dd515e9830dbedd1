# keybroker — build, test, run.  See README.md.
PREFIX ?= /usr/local
DESTDIR ?=
CC ?= cc
BUILD ?= build

PKGS := libsystemd libcurl jansson libsodium inih
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
LLHTTP_DIR ?= /usr/share/llhttp
LLHTTP_INC ?= /usr/share/include/llhttp

WARN := -Wall -Wextra -Werror -Wno-unused-parameter -Wshadow -Wmissing-prototypes -Wformat=2
CFLAGS ?= -O2 -g
SAN ?=
KB_CFLAGS := -std=gnu11 $(WARN) -D_GNU_SOURCE -Iinclude -Iagent -I$(LLHTTP_INC) $(PKG_CFLAGS) $(SAN) -fno-strict-aliasing
KB_LDFLAGS := $(SAN) $(LDFLAGS)
LIBS := $(PKG_LIBS) -lpthread

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

.PHONY: all deps test unit integration run bench clean check-asan install uninstall

all: $(DAEMON) $(CTL) $(MOCK)

# Debian packages for build, tests and the demo. Quick no-op when present.
DEB_PKGS := build-essential pkg-config libsystemd-dev libcurl4-openssl-dev node-llhttp \
	libjansson-dev libsodium-dev libinih-dev libcmocka-dev systemd curl util-linux \
	perl libjson-pp-perl socat openssl systemd-journal-remote
deps:
	@missing=""; for p in $(DEB_PKGS); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "make deps: installing$$missing"; \
		if [ "$$(id -u)" != 0 ]; then echo "make deps: run as root to apt-get install$$missing" >&2; exit 1; fi; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(BUILD)/llhttp/%.o: $(LLHTTP_DIR)/%.c
	@mkdir -p $(dir $@)
	$(CC) -std=gnu11 $(CFLAGS) $(SAN) -fPIC -w -I$(LLHTTP_INC) -c $< -o $@

$(BUILD)/%.o: %.c $(wildcard agent/*.h include/keybroker/*.h client/*.h tests/mock/*.h tests/bench/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(KB_CFLAGS) $(CFLAGS) -c $< -o $@

$(LIBAGENT): $(AGENT_OBJS) $(LLHTTP_OBJS)
	@rm -f $@
	ar rcs $@ $^

$(DAEMON): $(BUILD)/agent/main.o $(LIBAGENT)
	$(CC) $(KB_LDFLAGS) -o $@ $^ $(LIBS)

CTL_SRCS := $(wildcard client/*.c)
$(CTL): $(patsubst %.c,$(BUILD)/%.o,$(CTL_SRCS)) $(LIBAGENT)
	$(CC) $(KB_LDFLAGS) -o $@ $^ $(LIBS)

MOCK_SRCS := $(wildcard tests/mock/*.c)
$(MOCK): $(patsubst %.c,$(BUILD)/%.o,$(MOCK_SRCS)) $(LIBAGENT)
	$(CC) $(KB_LDFLAGS) -o $@ $^ $(LIBS)

BENCH_SRCS := $(wildcard tests/bench/*.c)
$(BENCH): $(patsubst %.c,$(BUILD)/%.o,$(BENCH_SRCS)) $(LIBAGENT)
	$(CC) $(KB_LDFLAGS) -o $@ $^ $(LIBS)

$(BUILD)/tests/%: tests/unit/%.c $(LIBAGENT)
	@mkdir -p $(dir $@)
	$(CC) $(KB_CFLAGS) $(CFLAGS) -o $@ $< $(LIBAGENT) $(LIBS) -lcmocka

# keybrokerctl usage's logic lives in client/, not in libkbagent.a.
USAGE_REPORT_SRCS := client/usage-report.c client/usage-time.c
$(BUILD)/tests/test_usage_report: tests/unit/test_usage_report.c $(USAGE_REPORT_SRCS) client/usage-report.h $(LIBAGENT)
	@mkdir -p $(dir $@)
	$(CC) $(KB_CFLAGS) -Iclient $(CFLAGS) -o $@ $< $(USAGE_REPORT_SRCS) $(LIBAGENT) $(LIBS) -lcmocka

unit: $(UNIT_BINS)
	@rc=0; for t in $(UNIT_BINS); do echo "# $$t"; $$t || rc=1; done; exit $$rc

integration: all
	prove -v tests/integration/

test: deps
	$(MAKE) all $(UNIT_BINS)
	$(MAKE) unit
	$(MAKE) integration

run: deps all
	tests/demo/run.sh

bench: deps all $(BENCH)
	tests/bench/run.sh

check-asan: deps
	$(MAKE) BUILD=build-asan CFLAGS="-O1 -g -fno-omit-frame-pointer" \
		SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined" test

clean:
	rm -rf build build-asan run
