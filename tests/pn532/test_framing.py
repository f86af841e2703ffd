"""PN532 HSU framing details libnfc rarely exercises, checked byte by byte on the pty:
sleep until 55, ACK + reply, extended frames, NACK (resend), bad LCS/DCS/TFI dropped,
error frame for unknown commands, host ACK aborting a waiting InAutoPoll.

Run from the repository root: python3 tests/pn532/test_framing.py
"""

import os
import select
import sys
import termios
import time
import tty
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pn532emu import Pn532Emu  # noqa: E402

ACK = bytes([0x00, 0x00, 0xFF, 0x00, 0xFF, 0x00])
ERROR_FRAME = bytes([0x00, 0x00, 0xFF, 0x01, 0xFF, 0x7F, 0x81, 0x00])
WAKEUP = bytes([0x55, 0x55] + [0x00] * 14)


def frame(payload, extended=False):
    data = bytes([0xD4]) + bytes(payload)
    dcs = (-sum(data)) & 0xFF
    if extended:
        n = len(data)
        head = bytes([0x00, 0x00, 0xFF, 0xFF, 0xFF, n >> 8, n & 0xFF, (-(n >> 8) - n) & 0xFF])
    else:
        head = bytes([0x00, 0x00, 0xFF, len(data), (-len(data)) & 0xFF])
    return head + data + bytes([dcs, 0x00])


def reply(payload):
    data = bytes([0xD5]) + bytes(payload)
    return (bytes([0x00, 0x00, 0xFF, len(data), (-len(data)) & 0xFF]) + data
            + bytes([(-sum(data)) & 0xFF, 0x00]))


class Framing(unittest.TestCase):
    def setUp(self):
        self.emu = Pn532Emu()
        self.fd = os.open(self.emu.link, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(self.fd)
        termios.tcflush(self.fd, termios.TCIOFLUSH)

    def tearDown(self):
        os.close(self.fd)
        self.emu.stop()

    def send(self, data):
        os.write(self.fd, data)

    def read(self, n, timeout=2.0):
        out = b""
        deadline = time.monotonic() + timeout
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                break
            out += os.read(self.fd, n - len(out))
        return out

    def silent(self, timeout=0.2):
        """Nothing arrives within timeout (the emulator answered all it will)."""
        return not select.select([self.fd], [], [], timeout)[0]

    def transact(self, payload, expect, extended=False):
        self.send(frame(payload, extended))
        self.assertEqual(self.read(6), ACK)
        self.assertEqual(self.read(len(reply(expect))), reply(expect))

    def wake(self):
        self.send(WAKEUP)
        self.transact([0x14, 0x01], [0x15])

    def test_asleep_until_wakeup(self):
        # a frame without the 55 wake-up is lost while the chip sleeps
        self.send(frame([0x02]))
        self.emu.cmd("status")
        self.assertTrue(self.silent())
        self.wake()
        # The event comes on the emulator's stdout, which a thread reads: wait for it
        # rather than look at once (the reply on the pty can be read first).
        self.emu.wait("wakeup")
        self.transact([0x02], [0x03, 0x32, 0x01, 0x06, 0x07])

    def test_diagnose_echo_and_extended_frame(self):
        self.wake()
        self.transact([0x00, 0x00] + list(b"libnfc"), [0x01, 0x00] + list(b"libnfc"))
        self.transact([0x00, 0x00] + list(b"ext"), [0x01, 0x00] + list(b"ext"), extended=True)

    def test_nack_resends_last_reply(self):
        self.wake()
        self.transact([0x02], [0x03, 0x32, 0x01, 0x06, 0x07])
        self.send(bytes([0x00, 0x00, 0xFF, 0xFF, 0x00, 0x00]))
        self.assertEqual(self.read(len(reply([0x03, 0x32, 0x01, 0x06, 0x07]))),
                         reply([0x03, 0x32, 0x01, 0x06, 0x07]))

    def test_bad_frames_are_dropped(self):
        self.wake()
        bad_dcs = bytearray(frame([0x02]))
        bad_dcs[-2] ^= 0xFF
        self.send(bytes(bad_dcs))
        self.emu.wait("bad-frame dcs")
        bad_lcs = bytearray(frame([0x02]))
        bad_lcs[4] ^= 0x01
        self.send(bytes(bad_lcs))
        self.emu.wait("bad-frame lcs")
        bad_tfi = bytearray(frame([0x02]))
        bad_tfi[5] = 0xD5
        bad_tfi[-2] = (-(sum(bad_tfi[5:-2]))) & 0xFF
        self.send(bytes(bad_tfi))
        self.emu.wait("bad-frame tfi")
        self.assertTrue(self.silent())
        self.transact([0x02], [0x03, 0x32, 0x01, 0x06, 0x07])

    def test_unknown_command_gets_error_frame(self):
        self.wake()
        self.send(frame([0x8C, 0x00]))
        self.assertEqual(self.read(6), ACK)
        self.assertEqual(self.read(8), ERROR_FRAME)
        self.emu.wait("unsupported 8C")

    def test_host_ack_aborts_autopoll(self):
        self.wake()
        self.send(frame([0x60, 0xFF, 0x01, 0x20, 0x10]))
        self.assertEqual(self.read(6), ACK)
        self.emu.wait("poll FF012010")
        self.send(ACK)
        self.emu.wait("abort 60 host-ack")
        self.emu.cmd("card uid 0A0B0C0D")
        self.assertTrue(self.silent())  # the aborted poll does not answer
        self.transact([0x60, 0xFF, 0x01, 0x20, 0x10],
                      [0x61, 0x01, 0x10, 0x09, 0x01, 0x00, 0x04, 0x08, 0x04,
                       0x0A, 0x0B, 0x0C, 0x0D])

    def test_type_b_probe_finds_nothing(self):
        self.wake()
        self.emu.cmd("card desfire 04A1B2C3D4E5F6")
        self.transact([0x12, 0x14], [0x13])  # SetParameters: auto ATR_RES, auto RATS
        self.transact([0x32, 0x05, 0x00, 0x01, 0x02], [0x33])  # finite retries
        self.transact([0x4A, 0x01, 0x03, 0x00], [0x4B, 0x00])  # ISO 14443-B
        self.transact([0x4A, 0x01, 0x01, 0x00, 0xFF, 0xFF, 0x01, 0x00], [0x4B, 0x00])  # FeliCa
        self.transact([0x4A, 0x01, 0x04], [0x4B, 0x00])  # Jewel
        self.transact([0x4A, 0x01, 0x00],
                      [0x4B, 0x01, 0x01, 0x03, 0x44, 0x20, 0x07,
                       0x04, 0xA1, 0xB2, 0xC3, 0xD4, 0xE5, 0xF6,
                       0x06, 0x75, 0x77, 0x81, 0x02, 0x80])
        # type B framing in TxMode/RxMode: raw frames go nowhere
        self.transact([0x08, 0x63, 0x02, 0x83, 0x63, 0x03, 0x83], [0x09])
        self.transact([0x42, 0xB2], [0x43, 0x01])
        self.transact([0x08, 0x63, 0x02, 0x80, 0x63, 0x03, 0x80], [0x09])
        self.transact([0x42, 0xB2], [0x43, 0x00, 0xA2])

    def test_baud_pacing_is_never_early(self):
        # At 115200 baud a byte reaches the host when its stop bit is through: the
        # n-th byte of the answer no earlier than (host frame + n) x 86.8 us after the
        # host started sending (a machine under load may make it late, never early),
        # and the counters and line state in "status" add up.
        byte_s = 10 / 115200
        self.wake()
        self.emu.cmd("baud on")
        self.emu.cmd("status")
        self.assertIn("late_us=", self.emu.wait("status "))
        echo = list(range(200))
        cmd = frame([0x00, 0x00] + echo)
        want = ACK + reply([0x01, 0x00] + echo)
        start = time.monotonic()
        self.send(cmd)
        got = b""
        times = []
        while len(got) < len(want):
            chunk = self.read(len(want) - len(got))
            self.assertTrue(chunk, "the reply stopped")
            got += chunk
            times.append((len(got), time.monotonic() - start))
        self.assertEqual(got, want)
        for n, t in times:
            # n bytes of the reply after the whole host frame: never sooner
            self.assertGreaterEqual(t, (len(cmd) + n) * byte_s - 1e-5, (n, t))
        self.emu.cmd("status")
        line = self.emu.wait("status ")
        fields = dict(kv.split("=") for kv in line.split() if "=" in kv)
        self.assertNotEqual(fields["idle_ns"], "-1")  # all sent: the line is quiet
        self.assertEqual(int(fields["rx"]), len(WAKEUP) + len(frame([0x14, 0x01])) + len(cmd))


if __name__ == "__main__":
    unittest.main(verbosity=2)
