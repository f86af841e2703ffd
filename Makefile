# lockerd - key-locker station for municipal sports halls.
#
# The source lists below are the architecture: one file per subsystem.
#   make            build lockerd and lockerctl into build/
#   make check      build with AddressSanitizer + UBSan into build-san/ and run every test
#   make check-vm   the gpiod backend against gpio-sim in a qemu VM (libgpiod 1.x and 2.x)
#   make demo       run a simulated station with demo data (see README)
#   make bench      benchmarks (figures in docs/performance.md)
#   make install    DESTDIR=... PREFIX=/usr
#   WERROR=1        adds -Werror (CI)

VERSION    := 0.1.0
PREFIX     ?= /usr/local
BINDIR     ?= $(PREFIX)/bin
SBINDIR    ?= $(PREFIX)/sbin
MANDIR     ?= $(PREFIX)/share/man
SYSCONFDIR ?= /etc
BUILD      ?= build
# systemd's directories as its pkg-config file gives them for PREFIX, else under PREFIX.
systemd_dir = $(or $(shell $(PKG_CONFIG) --define-variable=prefix=$(PREFIX) --variable=$(1) systemd 2>/dev/null),$(PREFIX)/lib/$(2))
SYSTEMDUNITDIR ?= $(call systemd_dir,systemdsystemunitdir,systemd/system)
SYSUSERSDIR    ?= $(call systemd_dir,sysusersdir,sysusers.d)
TMPFILESDIR    ?= $(call systemd_dir,tmpfilesdir,tmpfiles.d)

CC         ?= cc
PKG_CONFIG ?= pkg-config
PKGS       := inih sqlite3 jansson libcrypto libsystemd libgpiod libnfc libfreefare libcurl \
              libmicrohttpd

CFLAGS     ?= -O2 -g
WARNFLAGS  := -std=c11 -Wall -Wextra -Wshadow -Wformat=2 -Wstrict-prototypes \
              -Wmissing-prototypes -Wswitch-enum -Wno-switch-default -Wvla
ifeq ($(WERROR),1)
WARNFLAGS  += -Werror
endif
ifeq ($(SANITIZE),1)
CFLAGS     := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined \
              -fno-sanitize-recover=undefined
LDFLAGS    += -fsanitize=address,undefined
endif
UIDIR      ?= $(PREFIX)/share/lockerd/ui
ALL_CPPFLAGS := -D_GNU_SOURCE -DLOCKERD_VERSION='"$(VERSION)"' -DLOCKERD_UI_DIR='"$(UIDIR)"' -I. \
              $(shell $(PKG_CONFIG) --cflags $(PKGS)) $(CPPFLAGS)
# libgpiod 2.x has a new API; hal/gpio_gpiod.c is written for both.
ifeq ($(shell $(PKG_CONFIG) --atleast-version=2 libgpiod && echo v2),v2)
ALL_CPPFLAGS += -DHAVE_LIBGPIOD_V2
endif
ALL_CFLAGS := $(WARNFLAGS) $(CFLAGS)
LIBS       := $(shell $(PKG_CONFIG) --libs $(PKGS)) -pthread

# ---- sources: the architecture ----
COMMON_SRCS := daemon/log.c        \
               daemon/timeutil.c

DAEMON_SRCS := daemon/loop.c       \
               daemon/clock.c      \
               daemon/config.c     \
               daemon/store.c      \
               daemon/policy.c     \
               daemon/station.c    \
               daemon/feedback.c   \
               daemon/selftest.c   \
               daemon/report.c     \
               daemon/opendata.c   \
               daemon/control.c    \
               daemon/sync.c       \
               daemon/syncmsg.c    \
               daemon/syncworker.c \
               daemon/ui.c

HAL_SRCS    := hal/hal.c           \
               hal/gpio_sim.c      \
               hal/gpio_gpiod.c    \
               hal/reader_sim.c    \
               hal/reader_libnfc.c \
               hal/reader_proc.c   \
               hal/card_desfire.c

LOCKERD_SRCS   := daemon/main.c $(DAEMON_SRCS) $(HAL_SRCS) $(COMMON_SRCS)
LOCKERCTL_SRCS := provisioning/lockerctl.c provisioning/provision.c $(COMMON_SRCS)
# The manager console: its own unprivileged process, speaking only the control socket.
CONSOLE_SRCS   := daemon/console.c daemon/console_auth.c daemon/log.c
CONSOLE_LIBS   := $(shell $(PKG_CONFIG) --libs jansson libcrypto libmicrohttpd) -pthread
CONSOLEDIR     ?= $(PREFIX)/share/lockerd/console

UNIT_TESTS  := test_config test_store test_policy test_station test_loop test_card test_report \
               test_syncmsg test_syncworker test_selftest test_feedback test_pin
BENCH_SRCS  := tests/bench_tap.c tests/bench_report.c tests/bench_sync_fill.c

obj = $(patsubst %.c,$(BUILD)/%.o,$(1))
CORE_OBJS := $(call obj,$(DAEMON_SRCS) $(HAL_SRCS) $(COMMON_SRCS))

.PHONY: all check check-vm check-deb cityapi-check unit scenario demo bench install clean format lint \
        ui-check console-check
all: $(BUILD)/lockerd $(BUILD)/lockerctl $(BUILD)/lockerd-console

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CPPFLAGS) $(ALL_CFLAGS) -MMD -MP -c -o $@ $<

$(BUILD)/lockerd: $(call obj,$(LOCKERD_SRCS))
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

$(BUILD)/lockerctl: $(call obj,$(LOCKERCTL_SRCS))
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

$(BUILD)/lockerd-console: $(call obj,$(CONSOLE_SRCS))
	$(CC) $(LDFLAGS) -o $@ $^ $(CONSOLE_LIBS)

$(BUILD)/tests/%: $(BUILD)/tests/unit/%.o $(CORE_OBJS)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS) $(shell $(PKG_CONFIG) --libs cmocka)

$(BUILD)/bench_tap: $(call obj,tests/bench_tap.c) $(CORE_OBJS)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

$(BUILD)/bench_report: $(call obj,tests/bench_report.c) $(CORE_OBJS)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

$(BUILD)/bench_sync_fill: $(call obj,tests/bench_sync_fill.c) $(CORE_OBJS)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

unit-bins: $(addprefix $(BUILD)/tests/,$(UNIT_TESTS))

# make check: everything under ASan + UBSan.
check:
	$(MAKE) BUILD=build-san SANITIZE=1 all unit-bins pn532-bins
	$(MAKE) all # the plain build, for the valgrind test
	$(MAKE) BUILD=build-san unit pn532-check cityapi-check scenario
	tests/test_docs.sh build-san
	tests/test_systemd.sh build
	tests/test_ansible.sh build
	$(MAKE) BUILD=build-san ui-check
	$(MAKE) BUILD=build-san console-check

# make check-vm: the gpiod backend against the kernel's gpio-sim in a qemu VM, built
# once with libgpiod 1.x and once with 2.x (tests/vm/run-vm-test.sh lists the packages).
check-vm:
	tests/vm/run-vm-test.sh

# make check-deb: the Debian package built, linted, installed into a bookworm chroot
# and purged, and booted under systemd in a VM (tests/test_deb.sh; root, the mirror).
check-deb:
	tests/test_deb.sh

# The kiosk screen in Debian's Chromium (playwright-core and axe-core from
# tests/ui/node_modules, which `npm ci` in tests/ui installs; quickstart does both).
# Skipped with a message when node, the modules or the browser are missing.
CHROMIUM ?= /usr/bin/chromium
ui-check: $(BUILD)/lockerd $(BUILD)/lockerctl
	@if ! command -v node >/dev/null 2>&1; then \
	    echo "ui-check: SKIPPED: node is not installed (apt-get install nodejs npm)"; \
	elif [ ! -x "$(CHROMIUM)" ]; then \
	    echo "ui-check: SKIPPED: no browser at $(CHROMIUM) (apt-get install chromium)"; \
	elif [ ! -d tests/ui/node_modules/playwright-core ] || [ ! -d tests/ui/node_modules/axe-core ]; then \
	    echo "ui-check: SKIPPED: run 'npm ci' in tests/ui (provisioning/quickstart does)"; \
	else \
	    LOCKERD=$(BUILD)/lockerd LOCKERCTL=$(BUILD)/lockerctl CHROMIUM=$(CHROMIUM) \
	        node tests/ui/test_ui.js; \
	fi

# The manager console in Debian's Chromium over HTTPS (tests/console/; the same
# node modules as ui-check), skipped with a message like ui-check.
console-check: $(BUILD)/lockerd $(BUILD)/lockerctl $(BUILD)/lockerd-console
	@if ! command -v node >/dev/null 2>&1; then \
	    echo "console-check: SKIPPED: node is not installed (apt-get install nodejs npm)"; \
	elif [ ! -x "$(CHROMIUM)" ]; then \
	    echo "console-check: SKIPPED: no browser at $(CHROMIUM) (apt-get install chromium)"; \
	elif [ ! -d tests/ui/node_modules/playwright-core ] || [ ! -d tests/ui/node_modules/axe-core ]; then \
	    echo "console-check: SKIPPED: run 'npm ci' in tests/ui (provisioning/quickstart does)"; \
	else \
	    LOCKERD=$(BUILD)/lockerd LOCKERCTL=$(BUILD)/lockerctl CONSOLE=$(BUILD)/lockerd-console \
	        CHROMIUM=$(CHROMIUM) node tests/console/test_console.js; \
	fi

# The city API reference server's own tests, and docs/openapi.yaml against it. The
# check uses Debian's python3, which sees the python3-yaml and python3-jsonschema
# packages quickstart installs (a python3 earlier in PATH may not).
DEBIAN_PYTHON ?= $(or $(wildcard /usr/bin/python3),python3)
cityapi-check:
	python3 -m unittest discover -s tests/cityapi -p 'test_*.py'
	$(DEBIAN_PYTHON) tests/cityapi/check_openapi.py

unit:
	@set -e; for t in $(UNIT_TESTS); do echo "== unit: $$t"; $(BUILD)/tests/$$t; done

scenario:
	LOCKERD=$(BUILD)/lockerd LOCKERCTL=$(BUILD)/lockerctl LOCKERD_PLAIN=build/lockerd python3 -m unittest discover -s tests/scenario -p 'test_*.py' -v

demo: all
	provisioning/demo $(BUILD)

bench: $(BUILD)/lockerd $(BUILD)/lockerctl $(BUILD)/bench_tap $(BUILD)/bench_report \
       $(BUILD)/bench_sync_fill pn532-bins
	$(BUILD)/bench_tap
	$(BUILD)/bench_report
	LOCKERD=$(BUILD)/lockerd LOCKERCTL=$(BUILD)/lockerctl BENCH_REPORT=$(BUILD)/bench_report \
	    python3 tests/bench_report.py
	LOCKERD=$(BUILD)/lockerd LOCKERCTL=$(BUILD)/lockerctl python3 tests/bench_idle.py
	LOCKERD=$(BUILD)/lockerd LOCKERCTL=$(BUILD)/lockerctl PN532_EMU=$(PN532_BUILD)/pn532_emu \
	    python3 tests/bench_reader.py
	LOCKERD=$(BUILD)/lockerd LOCKERCTL=$(BUILD)/lockerctl BENCH_SYNC_FILL=$(BUILD)/bench_sync_fill \
	    python3 tests/bench_sync.py $(BENCH_SYNC_ARGS)
	LOCKERD=$(BUILD)/lockerd LOCKERCTL=$(BUILD)/lockerctl node tests/bench_ui.js 200

install: all
	install -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(BINDIR) $(DESTDIR)$(SYSCONFDIR)/lockerd \
	    $(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(MANDIR)/man8
	install -m 0755 $(BUILD)/lockerd $(DESTDIR)$(SBINDIR)/lockerd
	install -m 0755 $(BUILD)/lockerctl $(DESTDIR)$(BINDIR)/lockerctl
	install -m 0755 $(BUILD)/lockerd-console $(DESTDIR)$(SBINDIR)/lockerd-console
	# A configured station keeps its config; the sample is always installed beside it.
	install -m 0644 docs/lockerd.conf.sample $(DESTDIR)$(SYSCONFDIR)/lockerd/lockerd.conf.sample
	test -e $(DESTDIR)$(SYSCONFDIR)/lockerd/lockerd.conf || \
	    install -m 0640 docs/lockerd.conf.sample $(DESTDIR)$(SYSCONFDIR)/lockerd/lockerd.conf
	install -m 0644 docs/man/lockerd.8 docs/man/lockerctl.8 docs/man/lockerd-console.8 \
	    $(DESTDIR)$(MANDIR)/man8/
	install -m 0644 docs/man/lockerd.conf.5 $(DESTDIR)$(MANDIR)/man5/
	# The kiosk screen's files ([ui] dir) and its Chromium service (docs/kiosk.md).
	install -d $(DESTDIR)$(UIDIR)/i18n
	install -m 0644 ui/index.html ui/offline.html ui/kiosk.css ui/kiosk.js ui/offline.js \
	    $(DESTDIR)$(UIDIR)/
	install -m 0644 ui/i18n/de.json ui/i18n/en.json $(DESTDIR)$(UIDIR)/i18n/
	install -d $(DESTDIR)$(SYSTEMDUNITDIR) $(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(TMPFILESDIR)
	sed -e 's|/usr/sbin/|$(SBINDIR)/|g' -e 's|/etc/lockerd/|$(SYSCONFDIR)/lockerd/|g' \
	    systemd/lockerd.service >$(DESTDIR)$(SYSTEMDUNITDIR)/lockerd.service
	install -m 0644 systemd/lockerd.sysusers $(DESTDIR)$(SYSUSERSDIR)/lockerd.conf
	sed -e 's|/usr/share/lockerd/ui/|$(UIDIR)/|g' \
	    systemd/lockerd-kiosk.service >$(DESTDIR)$(SYSTEMDUNITDIR)/lockerd-kiosk.service
	install -m 0644 systemd/lockerd-kiosk.sysusers $(DESTDIR)$(SYSUSERSDIR)/lockerd-kiosk.conf
	# The manager console (docs/console.md).
	install -d $(DESTDIR)$(CONSOLEDIR)/i18n
	install -m 0644 ui/console/*.html ui/console/*.css ui/console/*.js ui/console/*.json \
	    $(DESTDIR)$(CONSOLEDIR)/
	install -m 0644 ui/console/i18n/*.json $(DESTDIR)$(CONSOLEDIR)/i18n/
	sed -e 's|/usr/sbin/|$(SBINDIR)/|g' -e 's|/etc/lockerd/|$(SYSCONFDIR)/lockerd/|g' \
	    -e 's|/usr/share/lockerd/console|$(CONSOLEDIR)|g' \
	    systemd/lockerd-console.service >$(DESTDIR)$(SYSTEMDUNITDIR)/lockerd-console.service
	install -m 0644 systemd/lockerd-console.sysusers $(DESTDIR)$(SYSUSERSDIR)/lockerd-console.conf
	sed -e 's|/etc/lockerd/|$(SYSCONFDIR)/lockerd/|g' \
	    systemd/lockerd.tmpfiles >$(DESTDIR)$(TMPFILESDIR)/lockerd.conf

format:
	clang-format -i daemon/*.[ch] hal/*.[ch] provisioning/*.c tests/unit/*.[ch] tests/*.c tests/fuzz/*.c

# jansson.h is included first so that cppcheck knows json_*_foreach: without it, it
# stops at the first one in a file ("unknownMacro") and checks nothing there.
lint:
	cppcheck --quiet --enable=warning,performance,portability --inline-suppr \
	    --error-exitcode=1 -D_GNU_SOURCE -I. --include=/usr/include/jansson.h daemon hal provisioning

include tests/fuzz/fuzz.mk
include tests/pn532/pn532.mk

clean:
	rm -rf build build-san build-fuzz

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
