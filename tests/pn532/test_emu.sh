#!/bin/bash
# tests/pn532/test_emu.sh - the PN532 emulator against Debian's libnfc:
#   1. nfc-list (libnfc-bin) lists an emulated UID-only card and an emulated DESFire
#      EV1, and finds nothing on the type B / FeliCa / Jewel / barcode probes;
#   2. test_desfire: libnfc + libfreefare scenarios (poll, DESFire AES auth,
#      enciphered read, real UID, issuing, faults);
#   3. test_framing.py: HSU framing byte by byte; pn532emu.py: the Python driver.
# Run from the repository root after `make -f tests/pn532/pn532.mk`.
# PN532_EMU, PN532_TEST: binaries (default build/pn532/...). Waits are for emulator
# events, each with a timeout; nothing sleeps.
set -u

EMU=${PN532_EMU:-build/pn532/pn532_emu}
TEST=${PN532_TEST:-build/pn532/test_desfire}
TIMEOUT=10
fail=0

for b in "$EMU" "$TEST"; do
    [ -x "$b" ] || { echo "missing $b (make -f tests/pn532/pn532.mk)"; exit 2; }
done
command -v nfc-list >/dev/null || { echo "nfc-list missing (apt install libnfc-bin)"; exit 2; }

tmp=$(mktemp -d)
link=$tmp/pn532
trap 'rm -rf "$tmp"' EXIT

coproc EMUPROC { exec "$EMU" --link "$link"; }
emu_in=${EMUPROC[1]}
emu_out=${EMUPROC[0]}

# wait_for PREFIX: reads event lines until one starts with PREFIX (TIMEOUT seconds).
wait_for() {
    local line deadline=$((SECONDS + TIMEOUT))
    while [ $SECONDS -lt $deadline ]; do
        if IFS= read -r -t 1 line <&"$emu_out"; then
            case $line in
            "$1"*) return 0 ;;
            error*) echo "emulator: $line" ;;
            esac
        fi
    done
    echo "FAIL: no '$1' from the emulator within ${TIMEOUT}s"
    return 1
}

emu() {
    echo "$*" >&"$emu_in"
    wait_for "ok ${1}"
}

check() { # check NAME OUTPUT PATTERN...
    local name=$1 out=$2 p
    shift 2
    for p in "$@"; do
        if ! grep -qF -- "$p" <<<"$out"; then
            echo "FAIL: $name: no '$p' in:"
            sed 's/^/    /' <<<"$out"
            fail=1
            return
        fi
    done
    echo "PASS: $name"
}

nfclist() {
    LIBNFC_AUTO_SCAN=false LIBNFC_DEVICE="pn532_uart:$link" timeout 60 nfc-list "$@" 2>&1
}

wait_for "ready " || exit 1

emu card uid 0A0B0C0D || exit 1
out=$(nfclist -v)
check "nfc-list: MIFARE Classic UID card" "$out" \
    "1 ISO14443A passive target(s) found" \
    "ATQA (SENS_RES): 00  04" \
    "UID (NFCID1): 0a  0b  0c  0d" \
    "SAK (SEL_RES): 08" \
    "0 Felica (212 kbps) passive target(s) found" \
    "0 Felica (424 kbps) passive target(s) found" \
    "0 ISO14443B passive target(s) found" \
    "0 ISO14443B' passive target(s) found" \
    "0 ISO14443B-2 ST SRx passive target(s) found" \
    "0 ISO14443B-2 ASK CTx passive target(s) found" \
    "0 ISO14443B iClass passive target(s) found" \
    "0 ISO14443A-3 Jewel passive target(s) found" \
    "0 ISO14443A-2 NFC Barcode passive target(s) found"

emu card uid 04112233445566 || exit 1
out=$(nfclist -t 1)
check "nfc-list: Ultralight 7-byte UID card" "$out" \
    "ATQA (SENS_RES): 00  44" "UID (NFCID1): 04  11  22  33  44  55  66" "SAK (SEL_RES): 00"

emu card desfire 04A1B2C3D4E5F6 || exit 1
out=$(nfclist)
check "nfc-list: DESFire EV1" "$out" \
    "1 ISO14443A passive target(s) found" \
    "ATQA (SENS_RES): 03  44" \
    "UID (NFCID1): 04  a1  b2  c3  d4  e5  f6" \
    "SAK (SEL_RES): 20" \
    "ATS: 75  77  81  02  80"

emu remove || exit 1
out=$(nfclist -v -t 1)
if grep -q "passive target(s) found:" <<<"$out"; then
    echo "FAIL: nfc-list: found a card in an empty field"
    fail=1
else
    check "nfc-list: empty field" "$out" "0 ISO14443A passive target(s) found"
fi

echo quit >&"$emu_in"
wait "$EMUPROC_PID" 2>/dev/null

echo "== test_desfire"
PN532_EMU=$EMU "$TEST" || fail=1

echo "== test_framing.py, pn532emu.py"
PN532_EMU=$EMU python3 tests/pn532/test_framing.py || fail=1
PN532_EMU=$EMU python3 tests/pn532/pn532emu.py || fail=1

if [ $fail -ne 0 ]; then
    echo "test_emu.sh: FAILED"
    exit 1
fi
echo "test_emu.sh: all passed"
