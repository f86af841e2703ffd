"""Scenario tests of `lockerctl selftest` (the station checks itself).

On the simulated station nothing pops a door open, so every pulsed lock ends as a
"confirm" check that --yes turns into a pass. Log before act is checked against the
simulated GPIO's own output log (STATE_DIR/sim-gpio.log). The door-pops-open case
talks to the control socket directly, so that the door opens well inside the 1 s
pulse. The reader checks run lockerd's libnfc backend against the PN532 emulator
(tests/pn532), as test_reader.py does.

Waits are for observable things (events, log lines, emulator lines), each with a
timeout; nothing sleeps to guess.
"""

import json
import os
import re
import socket
import sys
import time
import unittest

from harness import LOCK_LINES, StationTestCase, pair_activations, wait_until

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "pn532"))
from pn532emu import Pn532Emu  # noqa: E402
from test_reader import PN532_EMU, RECOVER_TIMEOUT  # noqa: E402

STATUSES = {"pass", "warn", "skip", "fail", "confirm", "unconfirmed"}
NAMES = {"reader", "compartment", "database", "eventlog", "clock", "disk", "api"}


class Control:
    """One connection to lockerd's control socket (one JSON object per line)."""

    def __init__(self, path, timeout=60):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""

    def send(self, cmd, **args):
        self.sock.sendall(json.dumps({"cmd": cmd, "args": args}).encode() + b"\n")

    def line(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError("lockerd closed the control connection")
            self.buf += chunk
        raw, self.buf = self.buf.split(b"\n", 1)
        return json.loads(raw)

    def call(self, cmd, **args):
        self.send(cmd, **args)
        reply = self.line()
        if not reply.get("ok"):
            raise AssertionError("%s: %r" % (cmd, reply))
        return reply["result"]

    def close(self):
        self.sock.close()


class SelftestTestCase(StationTestCase):

    def selftest(self, st, *args, expect_rc=0):
        r = st.ctl_raw("selftest", *args, timeout=120)
        self.assertEqual(r.rc, expect_rc, "%r\n%s" % (r, st.stderr_tail()))
        self.assertIsNotNone(r.data, r)
        return r.data

    def check_shape(self, data):
        self.assertEqual(set(data), {"ok", "checks"})
        self.assertIsInstance(data["ok"], bool)
        for c in data["checks"]:
            self.assertIn(c["name"], NAMES, c)
            self.assertIn(c["status"], STATUSES, c)
            self.assertIsInstance(c["detail"], str)
            if c["name"] == "compartment":
                self.assertIsInstance(c["compartment"], int)
                self.assertIn(c["door"], ("open", "closed"))
                self.assertIn(c["key"], ("in", "out"))
        names = [c["name"] for c in data["checks"]]
        for n in NAMES:
            self.assertIn(n, names)

    @staticmethod
    def by_name(data, name, compartment=None):
        for c in data["checks"]:
            if c["name"] == name and c.get("compartment") == compartment:
                return c
        raise AssertionError("no check %s %s in %r" % (name, compartment, data))

    def pulses(self, st, line):
        """(on, off) wall-ms pairs of a lock line's activations in the sim log."""
        out, on = [], None
        for wall, _, l, value, why in st.sim_log():
            if l != line or why != "set":
                continue
            if value == 1:
                on = wall
            elif on is not None:
                out.append((on, wall))
                on = None
        self.assertIsNone(on, "lock %s left energised" % line)
        return out

    # ------------------------------------------------------------ simulated station

    def test_all_checks_pass_with_yes(self):
        st = self.make_station()
        seq0 = st.last_seq()
        data = self.selftest(st, "--yes")
        self.check_shape(data)
        self.assertTrue(data["ok"], data)
        self.assertEqual(self.by_name(data, "reader")["status"], "pass")
        self.assertEqual(self.by_name(data, "reader")["detail"], "sim reader")
        for n in range(1, 5):
            c = self.by_name(data, "compartment", n)
            self.assertEqual((c["status"], c["door"], c["key"], c["state"]),
                             ("pass", "closed", "in", "locked_full"), c)
            self.assertIn("confirmed with --yes", c["detail"])
        for name in ("database", "eventlog"):
            self.assertEqual(self.by_name(data, name)["status"], "pass")
        self.assertIn(self.by_name(data, "clock")["status"], ("pass", "warn"))
        self.assertIn(self.by_name(data, "disk")["status"], ("pass", "warn"))
        self.assertEqual(self.by_name(data, "api")["status"], "skip")

        # Each lock pulsed exactly once, released, within max_energize, and each
        # pulse authorised by its service.selftest event committed before it.
        events = st.events()
        for n, line in LOCK_LINES.items():
            p = self.pulses(st, line)
            self.assertEqual(len(p), 1, (n, p))
            self.assertLessEqual(p[0][1] - p[0][0], 5000)
            problems, acts, _, unpaired = pair_activations(
                events, st.sim_log(), line, n, authorising=("service.selftest",))
            self.assertEqual((problems, acts, unpaired), ([], 1, 0))
            self.assertEqual(st.comp(n)["lock"], "off")
            self.assertEqual(st.comp(n)["state"], "locked_full")
        new = [e for e in events if e["seq"] > seq0]
        self.assertEqual([(e["type"], e.get("compartment")) for e in new],
                         [("service.selftest", n) for n in range(1, 5)] +
                         [("station.selftest", None)])
        for e in new:
            self.assertTrue(e.get("operator"), e)
        summary = new[-1]["detail"]
        self.assertTrue(summary["ok"])
        self.assertEqual((summary["fail"], summary["confirm"]), (0, 4))
        self.assertEqual(new[0]["detail"]["purpose"], "selftest")
        self.assertTrue(st.j("events", "--verify")["intact"])

        # The human-readable table.
        r = st.ctl_raw("selftest", "--yes", "--no-locks", json_out=False)
        self.assertEqual(r.rc, 0, r)
        self.assertRegex(r.stdout, r"(?m)^reader +pass +sim reader$")
        self.assertRegex(r.stdout, r"(?m)^compartment 3 +skip +lock not pulsed")
        self.assertIn("selftest: ok", r.stdout)
        st.stop()

    def test_json_shape_no_locks_and_unconfirmed(self):
        st = self.make_station()
        data = self.selftest(st, "--no-locks")
        self.check_shape(data)
        self.assertTrue(data["ok"])
        for n in range(1, 5):
            c = self.by_name(data, "compartment", n)
            self.assertEqual(c["status"], "skip", c)
            self.assertIn("--no-locks", c["detail"])
        self.assertEqual(self.pulses(st, LOCK_LINES[1]), [])
        self.assertEqual(st.events_of("service.selftest"), [])

        # Without --yes and without a terminal nobody can confirm a click.
        data = self.selftest(st, expect_rc=1)
        self.check_shape(data)
        self.assertFalse(data["ok"])
        self.assertEqual({self.by_name(data, "compartment", n)["status"] for n in range(1, 5)},
                         {"unconfirmed"})
        st.stop()

    def test_compartment_mid_pickup_is_skipped_and_undisturbed(self):
        st = self.make_station()
        st.setup_booking(compartment=2, uid="04A1B2C3")
        self.assertEqual(st.tap("04A1B2C3")["outcome"], "pickup")
        self.assertEqual(st.door(2, "open")["state"], "open_pickup")
        seq0 = st.last_seq()
        data = self.selftest(st, "--yes")
        self.assertTrue(data["ok"], data)
        c = self.by_name(data, "compartment", 2)
        self.assertEqual((c["status"], c["door"], c["key"]), ("skip", "open", "in"), c)
        self.assertIn("open_pickup", c["detail"])
        self.assertEqual(st.events_of("service.selftest", since=seq0, compartment=2), [])
        self.assertEqual(len(st.events_of("service.selftest", since=seq0)), 3)
        self.assertEqual(len(self.pulses(st, LOCK_LINES[2])), 1, "only the grant's unlock")
        # The pickup goes on as if nothing happened.
        self.assertEqual(st.comp(2)["state"], "open_pickup")
        st.key(2, "take")
        self.assertEqual(st.door(2, "close")["state"], "locked_empty")
        st.wait_event("key.checkedOut", since=seq0, compartment=2)
        st.stop()

    def test_faulty_and_disabled_compartments_fail(self):
        st = self.make_station()
        st.key(2, "take")  # a key vanishing behind a closed door: sensor fault
        self.assertEqual(st.comp(2)["state"], "sensor_fault")
        st.j("disable", "3", "--reason", "lock broken")
        seq0 = st.last_seq()
        data = self.selftest(st, "--yes", expect_rc=1)
        self.check_shape(data)
        self.assertFalse(data["ok"])
        c2 = self.by_name(data, "compartment", 2)
        self.assertEqual((c2["status"], c2["state"], c2["key"]), ("fail", "sensor_fault", "out"))
        self.assertIn("sensor fault (sensor:key-vanished-door-closed)", c2["detail"])
        c3 = self.by_name(data, "compartment", 3)
        self.assertEqual((c3["status"], c3["state"]), ("fail", "out_of_service"))
        self.assertIn("out of service (manual)", c3["detail"])
        self.assertEqual(self.by_name(data, "compartment", 1)["status"], "pass")
        self.assertEqual(sorted(e["compartment"] for e in
                                st.events_of("service.selftest", since=seq0)), [1, 4])
        summary = st.wait_event("station.selftest", since=seq0)["detail"]
        self.assertFalse(summary["ok"])
        self.assertEqual(summary["fail"], 2)
        # The table says so too.
        r = st.ctl_raw("selftest", "--no-locks", json_out=False)
        self.assertEqual(r.rc, 1, r)
        self.assertIn("selftest: FAILED (2 checks)", r.stdout)
        st.stop()

    def test_door_that_pops_open_passes_and_is_closed_again(self):
        st = self.make_station()
        seq0 = st.last_seq()
        follow = Control(st.sock)
        self.addCleanup(follow.close)
        follow.call("events", follow=True, since=seq0)
        runner = Control(st.sock)
        self.addCleanup(runner.close)
        runner.send("selftest")
        # As soon as compartment 1's pulse is committed, its spring pops the door.
        while True:
            ev = follow.line()["event"]
            if ev["type"] == "service.selftest" and ev["compartment"] == 1:
                break
        door = Control(st.sock)
        self.addCleanup(door.close)
        self.assertEqual(door.call("sim.door", compartment=1, state="open")["state"],
                         "open_service")
        reply = runner.line()
        self.assertTrue(reply["ok"], reply)
        c1 = self.by_name(reply["result"], "compartment", 1)
        self.assertEqual((c1["status"], c1["door"], c1["state"]), ("pass", "open", "open_service"))
        self.assertIn("the door opened", c1["detail"])
        self.assertEqual(self.by_name(reply["result"], "compartment", 2)["status"], "confirm")
        self.assertEqual(st.comp(1)["lock"], "off")
        # The technician closes it: the compartment is locked with its key again.
        self.assertEqual(st.door(1, "close")["state"], "locked_full")
        self.assertEqual(st.events_of("door.forced", since=seq0), [])
        self.assertEqual(st.events_of("sensor.fault", since=seq0), [])
        st.stop()

    def test_one_selftest_at_a_time_and_an_abandoned_run(self):
        st = self.make_station()
        runner = Control(st.sock)
        self.addCleanup(runner.close)
        runner.send("selftest")
        st.wait_event("service.selftest")
        r = st.ctl_raw("selftest", "--yes")
        self.assertEqual(r.rc, 1, r)
        self.assertIn("(busy)", r.stderr)
        self.assertTrue(runner.line()["ok"])
        # A caller that goes away mid-run: the run ends, the locks stay safe.
        seq = st.last_seq()
        gone = Control(st.sock)
        gone.send("selftest")
        st.wait_event("service.selftest", since=seq)
        gone.close()
        wait_until(lambda: "abandoned by its caller" in st.stderr_text(), what="abandon")
        wait_until(lambda: all(st.comp(n)["lock"] == "off" for n in range(1, 5)), what="locks off")
        self.assertEqual(st.events_of("station.selftest", since=seq), [])
        st.stop()


class ReaderSelftestTestCase(StationTestCase):
    """The libnfc reader against the PN532 emulator."""

    def wait_log(self, st, pattern, count=1, timeout=RECOVER_TIMEOUT):
        rx = re.compile(pattern)

        def found():
            m = [x for x in (rx.search(line) for line in st.stderr_text().splitlines()) if x]
            return m if len(m) >= count else None
        return wait_until(found, timeout, "log line /%s/" % pattern)

    def reader_check(self, st, expect_rc):
        r = st.ctl_raw("selftest", "--no-locks", timeout=120)
        self.assertEqual(r.rc, expect_rc, "%r\n%s" % (r, st.stderr_tail()))
        return [c for c in r.data["checks"] if c["name"] == "reader"][0]

    def test_libnfc_reader_firmware_and_back_off(self):
        emu = Pn532Emu(binary=PN532_EMU)
        self.addCleanup(emu.stop)
        st = self.make_station(start=False, auth="uid-insecure", station={"log_level": "debug"},
                               reader={"backend": "libnfc", "connstring": emu.connstring})
        st.start()
        emu.wait("poll ", timeout=RECOVER_TIMEOUT)
        # GetFirmwareVersion answers 32 01 06 07: a PN532, firmware 1.6.
        c = wait_until(lambda: (lambda c: c if c["status"] == "pass" else None)(
            self.reader_check(st, 0)), RECOVER_TIMEOUT, "reader check to pass")
        self.assertIn("PN532 v1.6", c["detail"])
        self.assertIn(emu.connstring, c["detail"])

        emu.cmd("unplug")
        self.wait_log(st, r"reader: lost pn532_uart:\S+; reopening")
        c = wait_until(lambda: (lambda c: c if c["status"] == "fail" else None)(
            self.reader_check(st, 1)), RECOVER_TIMEOUT, "reader check to fail")
        self.assertIn("reopening with back-off", c["detail"])

        emu.cmd("plug")
        emu.wait("ready ")
        self.wait_log(st, r"reader: pn532_uart:\S+ is back")
        c = wait_until(lambda: (lambda c: c if c["status"] == "pass" else None)(
            self.reader_check(st, 0)), RECOVER_TIMEOUT, "reader check to pass again")
        self.assertIn("PN532 v1.6", c["detail"])
        self.assertTrue(st.j("events", "--verify")["intact"])
        st.stop()


if __name__ == "__main__":
    unittest.main()
