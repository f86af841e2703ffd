# tests/fuzz/fuzz.mk - libFuzzer targets; included from the top-level Makefile.
#
#   make fuzz                  build every target, run each for FUZZ_TIME seconds
#   make fuzz FUZZ_TIME=600    longer runs
#
# Needs clang with the libFuzzer runtime (Debian: clang-14 + libclang-rt-14-dev).
# Each target tests/fuzz/fuzz_NAME.c runs on its seed corpus tests/fuzz/corpus_NAME/
# (read only); inputs it discovers go to $(FUZZ_BUILD)/corpus_NAME/, crashes to
# $(FUZZ_BUILD)/crash-*. A crash fails the run.

FUZZ_CC      ?= clang
FUZZ_TIME    ?= 30
FUZZ_BUILD   ?= build-fuzz
PKG_CONFIG   ?= pkg-config
FUZZ_CFLAGS  := -std=c11 -D_GNU_SOURCE -I. -g -O1 -fno-omit-frame-pointer \
                -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
FUZZ_TARGETS := fuzz_card fuzz_sync_feed fuzz_sync_response fuzz_sync_msg

# fuzz_card includes hal/card_desfire.c to reach its static parsers.
FUZZ_card_DEPS := hal/card_desfire.c hal/card.h hal/hal.h daemon/log.c
FUZZ_card_LIBS := daemon/log.c $(shell $(PKG_CONFIG) --cflags --libs libfreefare libnfc libcrypto)

# The sync worker's parsers are public (daemon/syncworker.h); the worker's other
# objects come along because they share its file.
FUZZ_SYNC_SRCS := daemon/syncworker.c daemon/syncmsg.c daemon/loop.c daemon/clock.c daemon/log.c
FUZZ_SYNC_LIBS := $(FUZZ_SYNC_SRCS) $(shell $(PKG_CONFIG) --cflags --libs libcurl jansson)
FUZZ_sync_feed_LIBS     := $(FUZZ_SYNC_LIBS)
FUZZ_sync_response_LIBS := $(FUZZ_SYNC_LIBS)
FUZZ_sync_msg_LIBS      := daemon/syncmsg.c daemon/log.c

$(FUZZ_BUILD)/fuzz_%: tests/fuzz/fuzz_%.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ $< $(FUZZ_$*_LIBS)

# Extra dependencies by target name (a pattern rule's prerequisites cannot name them).
$(FUZZ_BUILD)/fuzz_card: $(FUZZ_card_DEPS)
$(FUZZ_BUILD)/fuzz_sync_feed $(FUZZ_BUILD)/fuzz_sync_response: $(FUZZ_SYNC_SRCS) \
    daemon/syncworker.h daemon/syncmsg.h
$(FUZZ_BUILD)/fuzz_sync_msg: daemon/syncmsg.c daemon/syncmsg.h

.PHONY: fuzz fuzz-bins
fuzz-bins: $(addprefix $(FUZZ_BUILD)/,$(FUZZ_TARGETS))

fuzz: fuzz-bins
	@set -e; for t in $(FUZZ_TARGETS); do \
	    name=$${t#fuzz_}; \
	    mkdir -p $(FUZZ_BUILD)/corpus_$$name; \
	    echo "== fuzz: $$t ($(FUZZ_TIME) s)"; \
	    $(FUZZ_BUILD)/$$t -max_total_time=$(FUZZ_TIME) -print_final_stats=1 \
	        -artifact_prefix=$(FUZZ_BUILD)/ \
	        $(FUZZ_BUILD)/corpus_$$name tests/fuzz/corpus_$$name; \
	done
