"""Scenario tests through the real reader stack: lockerd with [reader] backend = libnfc
runs libnfc's own pn532_uart driver (and libfreefare for DESFire) against the PN532
emulator on a pseudo-terminal (tests/pn532/pn532_emu.c); doors and keys stay on the
simulated GPIO and are moved with `lockerctl sim`.

Every test ends with a normal tap that must work, a clean SIGTERM shutdown (the
harness then checks lockerd's stderr for sanitizer findings, leaks included) and,
after faults, `lockerctl events --verify`.

Waits are for observable things only: emulator event lines (pn532emu.wait), lockerd's
events (lockerctl) and lines in lockerd's log, each with a timeout.

DESFire cards with this station's keys are built here: lockerd creates
STATE_DIR/desfire.keys at start, and the per-card keys are derived from it with
AN10922 (AES-128 blocks from `openssl enc`; the standard library has no AES), so a
card made here is exactly what `lockerctl card issue` at another station of the same
site would write.

Environment: LOCKERD, LOCKERCTL (harness.py); PN532_EMU, the emulator binary (default
pn532/pn532_emu next to LOCKERD, as `make check` builds it).
"""

import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
import unittest

from harness import (LOCK_LINES, LOCKERCTL, LOCKERD, StationTestCase, sanitizer_env,
                     wait_until)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "pn532"))
from pn532emu import Pn532Emu  # noqa: E402

PN532_EMU = os.path.abspath(os.environ.get(
    "PN532_EMU", os.path.join(os.path.dirname(LOCKERD), "pn532", "pn532_emu")))

AID = 0xF5A0C1
UID4 = "04A1B2C3"        # MIFARE Classic 1K in the emulator
UID7 = "04A1B2C3D4E5F6"  # DESFire EV1 (NXP manufacturer code 04)
UID7_B = "04B1B2C3D4E5F6"

# How long lockerd may take to notice and get over a fault: its poll cycle (6 s) and
# slack (3 s), one kick (1 s), a reopen, and ASan.
RECOVER_TIMEOUT = 20.0


# ------------------------------------------------------------------ AN10922 in Python

def aes_ecb(key, data):
    """AES-128-ECB without padding, through the openssl command line tool."""
    return subprocess.run(["openssl", "enc", "-aes-128-ecb", "-nopad", "-nosalt",
                           "-K", key.hex()], input=data, capture_output=True,
                          check=True).stdout


def _double(block):
    """Doubling in GF(2^128), as CMAC derives its subkeys."""
    n = int.from_bytes(block, "big") << 1
    if n >> 128:
        n ^= 0x87
    return (n & ((1 << 128) - 1)).to_bytes(16, "big")


def _xor(a, b):
    return bytes(x ^ y for x, y in zip(a, b))


def an10922_aes128(master, m):
    """AN10922 AES-128 diversification: a CMAC-like MAC over 0x01 || m, always padded
    to 32 bytes (80 00 ..), last block XORed with K2 if padded, else K1."""
    assert 1 <= len(m) <= 31
    k1 = _double(aes_ecb(master, bytes(16)))
    k2 = _double(k1)
    d = b"\x01" + m
    if len(d) < 32:
        d += b"\x80" + bytes(31 - len(d))
        last = _xor(d[16:], k2)
    else:
        last = _xor(d[16:], k1)
    return aes_ecb(master, _xor(aes_ecb(master, d[:16]), last))


def read_key_file(path):
    """STATE_DIR/desfire.keys: "name = 32 hex digits" lines, '#' comments."""
    keys = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                name, value = (x.strip() for x in line.split("=", 1))
                keys[name] = bytes.fromhex(value)
    return keys


def credential_file(aid=AID, issued=1767225600):
    """The 32-byte credential file (format in hal/card_desfire.c)."""
    return (b"LKD1" + b"\x01" + aid.to_bytes(3, "little") + struct.pack(">Q", issued) +
            bytes(15) + b"K")


def desfire_card(uid, app_master_key, read_key, aid=AID):
    """The emulator command for a DESFire card personalised as lockerd issues one."""
    return ("card desfire %s app=%06X settings=09 key=aes:%s key=aes:%s file=1:enc:1000:%s"
            % (uid, aid, app_master_key.hex(), read_key.hex(), credential_file(aid).hex()))


# ------------------------------------------------------------------ the tests

class ReaderTestCase(StationTestCase):
    """A station on the emulated PN532; see the module comment."""

    def reader_station(self, auth="desfire", log_level=None, start=True):
        emu = Pn532Emu(binary=PN532_EMU)
        self.addCleanup(emu.stop)  # runs after the station's cleanup (LIFO)
        station = {"log_level": log_level} if log_level else None
        st = self.make_station(start=False, auth=auth, station=station,
                               reader={"backend": "libnfc", "connstring": emu.connstring,
                                       "aid": "%06X" % AID})
        if start:
            st.start()
            self.wait_polling(emu)
        return st, emu

    # ---- waiting

    def wait_polling(self, emu, timeout=RECOVER_TIMEOUT):
        """Waits for lockerd to start a poll for a card ("poll HEX"; "poll none" is the
        end of one). Looks only at lines after the previous wait's match."""
        deadline = time.monotonic() + timeout
        while True:
            line = emu.wait("poll ", timeout=max(0.1, deadline - time.monotonic()))
            if line != "poll none":
                return line

    def wait_log(self, st, pattern, count=1, timeout=RECOVER_TIMEOUT):
        """Waits until lockerd's log has count lines matching the regular expression;
        returns the matches."""
        rx = re.compile(pattern)

        def found():
            m = [x for x in (rx.search(line) for line in st.stderr_text().splitlines()) if x]
            return m if len(m) >= count else None
        try:
            return wait_until(found, timeout, "%d log line(s) /%s/" % (count, pattern))
        except AssertionError as e:
            raise AssertionError("%s\n%s" % (e, st.stderr_tail()))

    # ---- cards

    def card_keys(self, st, uid):
        """(application master key, read key) of a card with this UID at this site."""
        keys = read_key_file(os.path.join(st.state_dir, "desfire.keys"))
        m = bytes.fromhex(uid) + AID.to_bytes(3, "little") + b"lockerd"
        return an10922_aes128(keys["app_master"], m), an10922_aes128(keys["read_master"], m)

    def issued_card(self, st, uid):
        return desfire_card(uid, *self.card_keys(st, uid))

    def present(self, st, emu, card, expect="access.granted"):
        """A card enters the field (card: an emulator command, or "reinsert"); waits for
        lockerd's event about it, then takes the card away and waits until lockerd
        polls again. Returns the event."""
        seq = st.last_seq()
        emu.cmd(card)
        e = st.wait_event(expect, since=seq, timeout=RECOVER_TIMEOUT)
        self.take_away(emu)
        return e

    def take_away(self, emu):
        emu.skip()
        emu.cmd("remove")
        self.wait_polling(emu)

    def pickup(self, st, emu, card, n):
        e = self.present(st, emu, card)
        self.assertEqual((e["compartment"], e["detail"]["purpose"]), (n, "pickup"), e)
        self.assertEqual(st.door(n, "open")["state"], "open_pickup")
        st.key(n, "take")
        self.assertEqual(st.door(n, "close")["state"], "locked_empty")
        return e

    def give_back(self, st, emu, card, n):
        e = self.present(st, emu, card)
        self.assertEqual((e["compartment"], e["detail"]["purpose"]), (n, "return"), e)
        self.assertEqual(st.door(n, "open")["state"], "open_return")
        st.key(n, "put")
        self.assertEqual(st.door(n, "close")["state"], "locked_full")
        return e

    def access_events(self, st, since):
        return [(e["type"], e.get("reason")) for e in st.events(since)
                if e["type"].startswith("access.")]

    def finish(self, st):
        """The event log verifies and lockerd stops cleanly (sanitizers checked)."""
        self.assertTrue(st.j("events", "--verify")["intact"])
        st.stop()

    def wait_for_card_cmd(self, st, verb, member):
        """Starts `lockerctl card issue|enroll MEMBER` and waits until lockerd waits
        for the card (its log says so)."""
        before = len(re.findall("waiting for a card", st.stderr_text()))
        proc = subprocess.Popen([LOCKERCTL, "-s", st.sock, "--json", "card", verb, member,
                                 "--timeout", "30"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=sanitizer_env())
        self.addCleanup(self.reap, proc)
        self.wait_log(st, r"%s for member %s: waiting for a card"
                      % ("card issue" if verb == "issue" else "enrolment", member), before + 1)
        return proc

    @staticmethod
    def reap(proc):
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        for f in (proc.stdout, proc.stderr):
            if f:
                f.close()

    def card_cmd_result(self, proc):
        out, err = proc.communicate(timeout=30)
        return proc.returncode, json.loads(out), err.decode()


class CryptoSelfTest(unittest.TestCase):
    """The test's own AN10922 against the published vectors (docs/cards.md), so that a
    failing DESFire test points at lockerd, not at this file."""

    def test_an10922_vectors(self):
        self.assertEqual(an10922_aes128(bytes.fromhex("00112233445566778899AABBCCDDEEFF"),
                                        bytes.fromhex("04782E21801D803042F54E585020416275")),
                         bytes.fromhex("A8DD63A3B89D54B37CA802473FDA9175"))
        self.assertEqual(an10922_aes128(bytes.fromhex("F3F9377698707B688EAF84ABE39E3791"),
                                        bytes.fromhex("04DEADBEEFFEED")),
                         bytes.fromhex("0BB408BAFF98B6EE9F2E1585777F6A51"))
        self.assertEqual(an10922_aes128(bytes.fromhex("2B7E151628AED2A6ABF7158809CF4F3C"),
                                        bytes.fromhex("04112233445566") +
                                        AID.to_bytes(3, "little") + b"lockerd"),
                         bytes.fromhex("11C73DFF849DF3BFE057E0EE0E0B72A1"))


class TapTest(ReaderTestCase):
    def test_uid_card_pickup_and_return(self):
        st, emu = self.reader_station(auth="uid-insecure")
        b = st.setup_booking(compartment=1, uid=UID4)
        seq0 = st.last_seq()
        g = self.pickup(st, emu, "card uid " + UID4, 1)
        self.assertEqual((g["member"], g["booking"]), (b["member"], b["booking"]))
        self.assertTrue(emu.saw("selected %s uid" % UID4))
        self.give_back(st, emu, "reinsert", 1)
        self.assertEventOrder(st.events(seq0), ["access.granted", "key.checkedOut",
                                                "access.granted", "key.returned"])
        self.assertEqual(st.outputs()[LOCK_LINES[1]]["activations"], 2)
        # A card nobody registered is refused, and nothing unlocks.
        e = self.present(st, emu, "card uid 04FFEE01", expect="access.denied")
        self.assertEqual(e["reason"], "unknown-card")
        self.assertEqual(st.outputs()[LOCK_LINES[1]]["activations"], 2)
        self.finish(st)

    def test_desfire_card_pickup_and_return(self):
        st, emu = self.reader_station()
        b = st.setup_booking(compartment=2, uid=UID7)
        card = self.issued_card(st, UID7)
        seq0 = st.last_seq()
        g = self.pickup(st, emu, card, 2)
        self.assertEqual((g["member"], g["booking"]), (b["member"], b["booking"]))
        # What the card proved, in this order (the emulator's lines from the start): the
        # read key (1) in an EV1 AES authentication, then its UID and the credential
        # file, both enciphered.
        emu.cursor = 0
        for line in ("selected %s desfire iso-dep" % UID7, "desfire 5A SelectApplication 00",
                     "auth ok 1 aes ev1", "desfire 51 GetCardUID 00",
                     "desfire read file 1 enc"):
            emu.wait(line)
        self.give_back(st, emu, "reinsert", 2)
        self.assertEventOrder(st.events(seq0), ["access.granted", "key.checkedOut",
                                                "access.granted", "key.returned"])
        self.finish(st)

    def test_cloned_card_refused(self):
        st, emu = self.reader_station()
        st.setup_booking(compartment=1, uid=UID7)
        seq0 = st.last_seq()
        # The member's UID on a DESFire card with the site's layout but other keys.
        clone = desfire_card(UID7, os.urandom(16), os.urandom(16))
        e = self.present(st, emu, clone, expect="access.denied")
        self.assertEqual(e["reason"], "card-auth-failed")
        self.assertEqual(e["detail"]["card"], "desfire")
        self.assertTrue(emu.saw("auth fail 1"))
        # The member's UID on a DESFire card without the application.
        e = self.present(st, emu, "card desfire " + UID7, expect="access.denied")
        self.assertEqual(e["reason"], "card-auth-failed")
        # The member's UID on a UID-only card (Ultralight): not even DESFire.
        e = self.present(st, emu, "card uid " + UID7, expect="access.denied")
        self.assertEqual(e["reason"], "insecure-card")
        self.assertEqual(self.access_events(st, seq0), [("access.denied", "card-auth-failed")] * 2
                         + [("access.denied", "insecure-card")])
        self.assertEqual(st.outputs()[LOCK_LINES[1]]["activations"], 0)
        # The member's real card still works.
        self.pickup(st, emu, self.issued_card(st, UID7), 1)
        self.finish(st)


class CardIssueTest(ReaderTestCase):
    def test_issue_factory_fresh_card_then_pickup(self):
        st, emu = self.reader_station()
        st.add_club("club-i")
        m = st.add_member("club-i", "Issued")
        start, end = st.booking_window()
        st.add_booking("club-i", 3, start, end)

        proc = self.wait_for_card_cmd(st, "issue", m)
        emu.skip()
        emu.cmd("card desfire " + UID7)  # factory fresh: no application, PICC key 00..00
        rc, card, err = self.card_cmd_result(proc)
        self.assertEqual(rc, 0, err)
        self.assertEqual((card["member"], card["card"]), (m, "desfire"))
        self.assertEqual([e["credential"] for e in st.events_of("card.added")], [card["id"]])
        # What lockerd wrote: the application, the read key, the credential file, and
        # last the application master key; then it read the card back as a tap would.
        for line in ("auth ok 0 des", "desfire created app %06X" % AID, "auth ok 0 aes",
                     "desfire changed key 1 aes", "desfire created file 1",
                     "desfire wrote file 1 enc", "desfire changed key 0 aes",
                     "auth ok 1 aes ev1", "desfire read file 1 enc"):
            emu.wait(line)
        self.take_away(emu)
        self.assertEqual(st.events_of("access.granted"), [], "issuing is not a tap")

        # The same card, tapped: the pickup works.
        self.pickup(st, emu, "reinsert", 3)

        # Issuing it again is refused: it already carries the application.
        proc = self.wait_for_card_cmd(st, "issue", m)
        emu.cmd("reinsert")
        rc, reply, err = self.card_cmd_result(proc)
        self.assertEqual(rc, 1)
        self.assertEqual(reply["error"]["code"], "conflict")
        self.take_away(emu)
        self.finish(st)

    def test_issue_repairs_a_half_issued_card(self):
        """An issue that stopped before its last step leaves the application with its
        default master key: issuing again deletes it and starts over. One whose
        master key is not the default is someone's and stays refused."""
        st, emu = self.reader_station()
        st.add_club("club-h")
        m = st.add_member("club-h", "Half")
        zero = "00" * 16
        _, kread = self.card_keys(st, UID7)
        proc = self.wait_for_card_cmd(st, "issue", m)
        emu.skip()
        # As left when the card was pulled after the credential file was written.
        emu.cmd("card desfire %s app=%06X settings=09 key=aes:%s key=aes:%s "
                "file=1:enc:1000:%s" % (UID7, AID, zero, kread.hex(), "00" * 16))
        rc, card, err = self.card_cmd_result(proc)
        self.assertEqual(rc, 0, err)
        self.assertEqual(card["member"], m)
        for line in ("auth ok 0 aes", "auth ok 0 des", "desfire deleted app %06X" % AID,
                     "desfire created app %06X" % AID, "desfire changed key 0 aes"):
            emu.wait(line)
        self.take_away(emu)
        self.assertIn("half-issued", st.stderr_text())

        # Another site's card (a master key that is not the default) stays refused.
        proc = self.wait_for_card_cmd(st, "issue", m)
        emu.cmd("card desfire %s app=%06X settings=09 key=aes:%s key=aes:%s" %
                (UID7_B, AID, "11" * 16, "22" * 16))
        rc, reply, err = self.card_cmd_result(proc)
        self.assertEqual(rc, 1)
        self.assertEqual(reply["error"]["code"], "conflict")
        self.take_away(emu)
        self.finish(st)

    def test_enroll_issued_card(self):
        st, emu = self.reader_station()
        st.add_club("club-e")
        m = st.add_member("club-e", "Enrolled")
        start, end = st.booking_window()
        st.add_booking("club-e", 4, start, end)

        # A factory-fresh card is not this site's: enrolment refuses it.
        proc = self.wait_for_card_cmd(st, "enroll", m)
        emu.cmd("card desfire " + UID7_B)
        rc, reply, err = self.card_cmd_result(proc)
        self.assertEqual(rc, 1)
        self.assertEqual(reply["error"]["code"], "card_error")
        self.assertIn("not issued for this site", err)
        self.take_away(emu)

        # A card issued for this site (elsewhere, with the site's keys) is enrolled.
        proc = self.wait_for_card_cmd(st, "enroll", m)
        emu.cmd(self.issued_card(st, UID7))
        rc, card, err = self.card_cmd_result(proc)
        self.assertEqual(rc, 0, err)
        self.assertEqual((card["member"], card["card"]), (m, "desfire"))
        self.take_away(emu)
        self.assertEqual(st.events_of("access.granted"), [])
        self.pickup(st, emu, "reinsert", 4)
        self.finish(st)


class FaultTest(ReaderTestCase):
    """Faults on the card and on the wire. After each: nothing crashed, nothing was
    recorded that did not happen, a normal tap works, the event log verifies."""

    def test_card_pulled_during_authentication(self):
        st, emu = self.reader_station()
        st.setup_booking(compartment=1, uid=UID7)
        self.pickup(st, emu, self.issued_card(st, UID7), 1)
        seq0 = st.last_seq()
        emu.cmd("pull-during-auth")  # armed on the card just taken away
        emu.skip()
        emu.cmd("reinsert")
        emu.wait("desfire AA AuthenticateAES AF")
        emu.wait("removed pull-during-auth")
        self.wait_polling(emu)  # lockerd is over it
        self.wait_log(st, "card left or stopped answering during the transaction")
        self.assertEqual(self.access_events(st, seq0), [], "a pulled card is no tap")
        self.assertEqual(st.lock_value(1), 0)
        self.give_back(st, emu, "reinsert", 1)
        self.assertEqual(self.access_events(st, seq0), [("access.granted", None)])
        self.finish(st)

    def test_reader_unplugged_and_plugged_back(self):
        st, emu = self.reader_station(auth="uid-insecure", log_level="debug")
        st.setup_booking(compartment=1, uid=UID4)
        self.pickup(st, emu, "card uid " + UID4, 1)
        seq0 = st.last_seq()

        emu.cmd("unplug")
        self.wait_log(st, r"reader: lost pn532_uart:\S+; reopening")
        # Back-off: the waits between attempts to reopen double.
        waits = self.wait_log(st, r"reader: next try to open \S+ in (\d+) ms", count=2)
        self.assertEqual([int(m.group(1)) for m in waits], [500, 1000])
        # The station keeps answering without its reader.
        self.assertEqual(st.status()["station"]["reader"], "libnfc")

        emu.cmd("plug")
        emu.wait("ready ")
        self.wait_polling(emu)
        self.wait_log(st, r"reader: pn532_uart:\S+ is back")
        self.assertEqual(st.stderr_text().count("card reader fault"), 1, "one outage, one report")
        self.assertEqual(self.access_events(st, seq0), [])
        self.give_back(st, emu, "reinsert", 1)

        # The lock follows the reader to its new device node: a second lockerd on the
        # same reader is refused.
        other = self.make_station(start=False, auth="uid-insecure",
                                  reader={"backend": "libnfc", "connstring": emu.connstring})
        with self.assertRaises(AssertionError):
            other.start()
        self.assertIn("is in use by another process", other.stderr_text())
        self.pickup(st, emu, "reinsert", 1)
        self.finish(st)

    def test_garbage_on_the_line(self):
        st, emu = self.reader_station()
        st.setup_booking(compartment=1, uid=UID7)
        card = self.issued_card(st, UID7)
        seq0 = st.last_seq()
        # Noise while lockerd waits for a card: the driver sees a broken frame, lockerd
        # reopens the reader.
        emu.skip()
        emu.cmd("garbage 64")
        self.wait_log(st, r"reader: lost pn532_uart:\S+; reopening")
        emu.wait("open")
        self.wait_polling(emu)
        # Noise right behind a reply while a card is being read (replies are slowed
        # down so that the noise can be sent before the next one).
        emu.cmd("slow 100")
        emu.skip()
        emu.cmd(card)
        emu.wait("desfire AA")
        emu.cmd("garbage 64")
        emu.cmd("slow 0")
        # The driver may eat the noise or fail on it; either way no event is invented
        # and the card, still in the field, is read (again) in the end.
        st.wait_event("access.granted", since=seq0, timeout=RECOVER_TIMEOUT)
        self.take_away(emu)
        self.assertEqual(self.access_events(st, seq0), [("access.granted", None)])
        st.door(1, "open")
        st.key(1, "take")
        st.door(1, "close")
        self.give_back(st, emu, "reinsert", 1)
        self.finish(st)

    def _one_grant_despite(self, st, emu, card, fault_event=None):
        """The card stays in the field through a fault; lockerd recovers and grants
        exactly once."""
        seq0 = st.last_seq()
        emu.skip()
        emu.cmd(card)
        if fault_event:
            emu.wait(fault_event)
        e = st.wait_event("access.granted", since=seq0, timeout=RECOVER_TIMEOUT)
        self.assertEqual(e["detail"]["purpose"], "pickup")
        self.take_away(emu)
        self.assertEqual(self.access_events(st, seq0), [("access.granted", None)])
        st.door(1, "open")
        st.key(1, "take")
        self.assertEqual(st.door(1, "close")["state"], "locked_empty")

    def test_truncated_poll_reply(self):
        # The reply announcing the card stops halfway: libnfc waits for the rest with
        # no timeout and no abort reaches it. lockerd's watchdog notices the missed
        # poll cycle and makes the chip answer; the card is then found again.
        st, emu = self.reader_station()
        st.setup_booking(compartment=1, uid=UID7)
        emu.cmd("truncate")
        self._one_grant_despite(st, emu, self.issued_card(st, UID7), "fault truncate")
        self.wait_log(st, "still waits for the rest of a frame")
        self.give_back(st, emu, "reinsert", 1)
        self.finish(st)

    def test_truncated_reply_during_authentication(self):
        st, emu = self.reader_station()
        st.setup_booking(compartment=1, uid=UID7)
        card = self.issued_card(st, UID7)
        # Slow replies leave time to arm the fault for the frame after 0xAA's.
        emu.cmd("slow 100")
        seq0 = st.last_seq()
        emu.skip()
        emu.cmd(card)
        emu.wait("desfire AA AuthenticateAES AF")
        emu.cmd("truncate")
        emu.cmd("slow 0")
        emu.wait("fault truncate")
        st.wait_event("access.granted", since=seq0, timeout=RECOVER_TIMEOUT)
        self.take_away(emu)
        self.assertEqual(self.access_events(st, seq0), [("access.granted", None)])
        self.wait_log(st, "card transaction took longer than")
        st.door(1, "open")
        st.key(1, "take")
        st.door(1, "close")
        self.give_back(st, emu, "reinsert", 1)
        self.finish(st)

    def test_corrupt_and_error_frames(self):
        st, emu = self.reader_station()
        st.setup_booking(compartment=1, uid=UID7)
        card = self.issued_card(st, UID7)
        # A wrong data checksum on the poll reply announcing the card.
        emu.cmd("corrupt")
        self._one_grant_despite(st, emu, card, "fault corrupt")
        self.wait_log(st, "Data checksum mismatch")
        self.give_back(st, emu, "reinsert", 1)
        # The chip's error frame instead of that reply.
        emu.cmd("error-frame")
        self._one_grant_despite(st, emu, "reinsert")
        self.wait_log(st, "Application level error detected")
        self.assertEqual(len(self.wait_log(st, r"reader: lost pn532_uart:\S+; reopening")), 2)
        self.give_back(st, emu, "reinsert", 1)
        self.finish(st)

    def test_corrupt_reply_during_authentication(self):
        # A reply garbled on the line in the middle of the authentication, the card
        # held still: lockerd reads the card again at once (the holder would otherwise
        # wait until lifting it) and grants once.
        st, emu = self.reader_station()
        st.setup_booking(compartment=1, uid=UID7)
        card = self.issued_card(st, UID7)
        emu.cmd("slow 100")  # time to arm the fault for the frame after 0xAA's
        seq0 = st.last_seq()
        emu.skip()
        emu.cmd(card)
        emu.wait("desfire AA AuthenticateAES AF")
        emu.cmd("corrupt")
        emu.cmd("slow 0")
        emu.wait("fault corrupt")
        st.wait_event("access.granted", since=seq0, timeout=RECOVER_TIMEOUT)
        self.wait_log(st, "card read broke off with the card still there; reading again")
        self.assertEqual(emu.seen("removed"), False, "the card never left the field")
        self.take_away(emu)
        self.assertEqual(self.access_events(st, seq0), [("access.granted", None)])
        st.door(1, "open")
        st.key(1, "take")
        st.door(1, "close")
        self.give_back(st, emu, "reinsert", 1)
        self.finish(st)

    def test_stop_while_stuck_on_a_truncated_frame(self):
        # SIGTERM while libnfc waits for the rest of a frame: lockerd still stops (its
        # close path makes the chip answer), and the next lockerd reads the card.
        st, emu = self.reader_station()
        st.setup_booking(compartment=1, uid=UID7)
        card = self.issued_card(st, UID7)
        seq0 = st.last_seq()
        emu.cmd("truncate")
        emu.skip()
        emu.cmd(card)
        emu.wait("fault truncate")
        st.stop()
        self.assertNotIn("exiting without it", st.stderr_text(), "the thread was not freed")
        st.start()
        st.wait_event("access.granted", since=seq0, timeout=RECOVER_TIMEOUT)
        self.take_away(emu)
        # One grant, by the second lockerd.
        self.assertEqual(self.access_events(st, seq0), [("access.granted", None)])
        self.assertEventOrder(st.events(seq0), ["station.started", "access.granted"])
        self.finish(st)

    def test_slow_reader(self):
        st, emu = self.reader_station()
        st.setup_booking(compartment=1, uid=UID7)
        card = self.issued_card(st, UID7)
        # 115200 baud and 100 ms per reply: slow, but within libnfc's timeouts and the
        # watchdog's 2 s for a card read.
        emu.cmd("baud on")
        emu.cmd("slow 100")
        self.pickup(st, emu, card, 1)
        # 400 ms per reply: slower than libnfc waits for some replies (300 ms). The
        # reads fail; nothing is recorded.
        emu.cmd("slow 400")
        seq0 = st.last_seq()
        n = st.stderr_text().count("card left or stopped answering during the transaction")
        emu.skip()
        emu.cmd("reinsert")
        self.wait_log(st, "card left or stopped answering during the transaction", n + 1)
        emu.skip()
        emu.cmd("remove")
        self.wait_polling(emu)
        self.assertEqual(self.access_events(st, seq0), [])
        # Back to speed (still paced at 115200 baud): the return works.
        emu.cmd("slow 0")
        self.give_back(st, emu, "reinsert", 1)
        self.finish(st)

    def test_mute_reader(self):
        # The chip stops answering while lockerd waits for a card: the missed end of
        # its poll cycle is a reader fault; lockerd reopens once the chip is back.
        st, emu = self.reader_station(auth="uid-insecure", log_level="debug")
        st.setup_booking(compartment=1, uid=UID4)
        emu.cmd("mute on")
        self.wait_log(st, r"reader: pn532_uart:\S+ stopped answering while polling")
        self.wait_log(st, r"reader: lost pn532_uart:\S+; reopening")
        self.wait_log(st, r"reader: next try to open \S+ in 500 ms")
        emu.cmd("mute off")
        self.wait_log(st, r"reader: pn532_uart:\S+ is back")
        self.wait_polling(emu)
        self.assertEqual(st.stderr_text().count("card reader fault"), 1, "one outage, one report")
        self.pickup(st, emu, "card uid " + UID4, 1)
        self.finish(st)

    def test_status_byte_with_bit7_set(self):
        # libnfc 1.8.0 calls abort() (pn53x.c:235) when the status byte of an
        # InDataExchange reply has 0x80 set, which a garbled UART can produce. The
        # reader runs in a supervised child process: the child dies, lockerd reports a
        # reader fault, starts a new child, and the card (still in the field) is read.
        st, emu = self.reader_station()
        st.setup_booking(compartment=1, uid=UID7)
        card = self.issued_card(st, UID7)
        seq0 = st.last_seq()
        emu.cmd("next-status 80")
        emu.skip()
        emu.cmd(card)
        emu.wait("fault status 80")

        def outcome():
            if not st.running:
                return "died"
            r = st.ctl("events", "--since", seq0, check=False)
            if r.rc == 0 and any(e["type"] == "access.granted" for e in r.data):
                return "granted"
            return None
        self.assertEqual(wait_until(outcome, RECOVER_TIMEOUT, "a grant after the reader's restart"),
                         "granted", st.stderr_tail())
        self.assertIn("reader process died", st.stderr_text())
        self.take_away(emu)
        self.assertEqual(self.access_events(st, seq0), [("access.granted", None)])
        self.finish(st)

if __name__ == "__main__":
    unittest.main()
