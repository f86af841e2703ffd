# tests/pn532/pn532.mk - the PN532 emulator and its tests. Include it from the
# top-level Makefile, or run it from the repository root:
#
#   make -f tests/pn532/pn532.mk            build build/pn532/{pn532_emu,test_desfire}
#   make -f tests/pn532/pn532.mk pn532-check  build, then tests/pn532/test_emu.sh
#   make -C tests/pn532 [check]               the same from tests/pn532
#
# Needs libnfc-dev, libfreefare-dev, libssl-dev; the test also runs nfc-list
# (libnfc-bin). Scenario tests start $(PN532_BUILD)/pn532_emu themselves.

BUILD        ?= build
CC           ?= cc
PKG_CONFIG   ?= pkg-config
CFLAGS       ?= -O2 -g
PN532_BUILD  ?= $(BUILD)/pn532
PN532_CFLAGS := -std=c11 -D_GNU_SOURCE -I. -Wall -Wextra -Werror -Wshadow \
                -Wstrict-prototypes -Wmissing-prototypes -Wvla $(CFLAGS)

PN532_EMU_SRCS  := tests/pn532/pn532_emu.c tests/pn532/pn532_chip.c tests/pn532/card.c \
                   tests/pn532/desfire.c tests/pn532/dfcrypto.c
PN532_TEST_SRCS := tests/pn532/test_desfire.c tests/pn532/emu_client.c
PN532_HDRS      := $(wildcard tests/pn532/*.h)

.PHONY: pn532-bins pn532-check
pn532-bins: $(PN532_BUILD)/pn532_emu $(PN532_BUILD)/test_desfire

$(PN532_BUILD)/pn532_emu: $(PN532_EMU_SRCS) $(PN532_HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(PN532_CFLAGS) $(LDFLAGS) -o $@ $(PN532_EMU_SRCS) \
	    $(shell $(PKG_CONFIG) --libs libcrypto) -lutil

$(PN532_BUILD)/test_desfire: $(PN532_TEST_SRCS) $(PN532_HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(PN532_CFLAGS) $(LDFLAGS) -o $@ $(PN532_TEST_SRCS) \
	    $(shell $(PKG_CONFIG) --libs libfreefare libnfc libcrypto) -lpthread

pn532-check: pn532-bins
	PN532_EMU=$(PN532_BUILD)/pn532_emu PN532_TEST=$(PN532_BUILD)/test_desfire \
	    tests/pn532/test_emu.sh
