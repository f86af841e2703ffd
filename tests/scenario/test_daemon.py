"""Scenario tests of the daemon itself: config check, signals, privacy of card UIDs, the
hash-chained event log and pruning."""

import datetime
import os
import signal
import sqlite3
import subprocess
import unittest

from harness import (LINES, LOCK_LINES, LOCKERCTL, LOCKERD, REPO, StationTestCase,
                     find_uid, sanitizer_env, wait_until)

UID_A = "04A1B2C3"


def run_lockerd(*args, timeout=30):
    p = subprocess.run([LOCKERD] + list(args), stdin=subprocess.DEVNULL, capture_output=True,
                       env=sanitizer_env(), timeout=timeout)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


def line_of(text, needle):
    """1-based number of the first line of text that starts with needle."""
    for i, line in enumerate(text.splitlines(), 1):
        if line.startswith(needle):
            return i
    raise AssertionError("%r not in config" % needle)


class ConfigCheckTest(StationTestCase):
    def test_check_good_config_and_round_trip(self):
        st = self.make_station(start=False)
        rc, out, err = run_lockerd("-n", "-c", st.conf)
        self.assertEqual(rc, 0, err)
        self.assertNotIn("runtime error:", err)
        for needle in ("[station]", "id = st-scenario", "sim_clock = yes", "[compartment.4]",
                       "lock = GPIO20", "door_open_alarm = 2m", "max_energize = 5s",
                       "state_dir = " + st.state_dir):
            self.assertIn(needle, out)
        self.assertFalse(os.path.exists(st.state_dir), "-n must not create the state directory")
        normalised = os.path.join(st.dir, "normalised.conf")
        with open(normalised, "w") as f:
            f.write(out)
        rc, out2, err = run_lockerd("-n", "-c", normalised)
        self.assertEqual(rc, 0, "the normalised config must itself pass -n: %s" % err)
        self.assertEqual(out2, out, "normalising must be idempotent")

    def test_shipped_sample_passes(self):
        sample = os.path.join(REPO, "docs", "lockerd.conf.sample")
        if not os.path.exists(sample):
            self.skipTest("no docs/lockerd.conf.sample")
        rc, out, err = run_lockerd("-n", "-c", sample)
        self.assertEqual(rc, 0, err)
        self.assertIn("[compartment.4]", out)

    def check_bad(self, st, text, needle_line, message_re=None):
        path = os.path.join(st.dir, "bad.conf")
        with open(path, "w") as f:
            f.write(text)
        for mode in (["-n"], []):
            rc, out, err = run_lockerd(*(mode + ["-c", path]), timeout=15)
            self.assertEqual(rc, 1, "lockerd %s must exit 1 on a bad config\n%s" % (mode, err))
            self.assertIn("%s:%d:" % (path, needle_line), err)
            if message_re:
                self.assertRegex(err, message_re)
            self.assertNotIn("runtime error:", err)
            self.assertNotIn("ERROR: AddressSanitizer", err)
        self.assertFalse(os.path.exists(st.sock))

    def test_unknown_key(self):
        st = self.make_station(start=False)
        text = st.config_text().replace("[reader]\n", "[reader]\ncolour = blue\n")
        self.check_bad(st, text, line_of(text, "colour = blue"), "colour")

    def test_bad_duration(self):
        st = self.make_station(start=False, policy={"door_open_alarm": "2 weeks"})
        text = st.config_text()
        self.check_bad(st, text, line_of(text, "door_open_alarm ="), "door_open_alarm")

    def test_bad_duration_max_energize(self):
        st = self.make_station(start=False, gpio={"max_energize": "1h"})
        text = st.config_text()
        self.check_bad(st, text, line_of(text, "max_energize ="), "max_energize")

    def test_missing_lock_line(self):
        st = self.make_station(start=False)
        text = st.config_text().replace("lock = GPIO19\n", "")
        self.check_bad(st, text, line_of(text, "[compartment.3]"), "lock")

    def test_duplicate_line(self):
        st = self.make_station(start=False)
        text = st.config_text().replace("lock = GPIO20\n", "lock = GPIO17\n")
        second = [i for i, l in enumerate(text.splitlines(), 1) if l == "lock = GPIO17"][-1]
        self.check_bad(st, text, second, "GPIO17")

    def test_unknown_section(self):
        st = self.make_station(start=False)
        text = st.config_text() + "\n[bogus]\n"
        self.check_bad(st, text, line_of(text, "[bogus]"), "bogus")


class LifecycleTest(StationTestCase):
    def test_fresh_station_starts_clean(self):
        st = self.make_station()
        events = st.events()
        self.assertTrue(events, "a fresh station must log station.started")
        self.assertEqual(events[0]["type"], "station.started",
                         "the first event of a fresh station must be station.started, got %s"
                         % [(e["seq"], e["type"], e.get("compartment"), e.get("reason"))
                            for e in events])
        self.assertEqual([e for e in events if e["type"] == "sensor.fault"], [])
        for c in st.status()["compartments"]:
            self.assertEqual((c["state"], c["door"], c["key"], c["lock"]),
                             ("locked_full", "closed", "in", "off"))
        rows = st.db_query("SELECT number FROM compartments WHERE number NOT BETWEEN 1 AND 4")
        self.assertEqual(rows, [], "no compartment rows for compartments that do not exist")
        self.assertEqual(st.status()["alarms"], [])

    def test_sigterm_drives_locks_off_and_closes_db_cleanly(self):
        st = self.make_station()
        b = st.setup_booking(compartment=2, uid=UID_A)
        st.pickup(UID_A, 2)
        st.j("open", 1, "--reason", "service before shutdown")
        self.assertEqual(st.door(1, "open")["state"], "open_service")
        # Compartment 2 unlocking (coil on) when SIGTERM arrives.
        self.assertEqual(st.tap(UID_A)["outcome"], "return")
        self.assertEqual(st.lock_value(2), 1)
        st.stop()

        last = st.last_output_values()
        for n, line in LOCK_LINES.items():
            self.assertEqual(last.get(line), 0, "lock %d (%s) must be 0 after SIGTERM" % (n, line))
        log = st.sim_log()
        ons = [i for i, e in enumerate(log) if e[2] == LOCK_LINES[2] and e[3] == 1]
        offs = [i for i, e in enumerate(log) if e[2] == LOCK_LINES[2] and e[3] == 0]
        self.assertTrue(ons and offs and offs[-1] > ons[-1])

        wal = st.db_path + "-wal"
        if os.path.exists(wal):
            self.assertEqual(os.path.getsize(wal), 0, "the WAL must be checkpointed at exit")
        con = st.db()
        try:
            self.assertEqual(con.execute("PRAGMA integrity_check").fetchall(), [("ok",)])
        finally:
            con.close()

        # A clean stop is not reported as unclean; the interrupted return is
        # resolved from the sensors (door closed, key still out).
        st.start()
        self.assertEqual(st.events_of("station.uncleanShutdown"), [])
        c2 = st.comp(2)
        self.assertEqual((c2["state"], c2["key"], c2["lock"]), ("locked_empty", "out", "off"))
        self.assertEqual(c2["holder"]["member"], b["member"], "holder must survive a restart")
        inc = st.events_of("return.incomplete", compartment=2)
        self.assertEqual(len(inc), 1, inc)
        self.assertTrue(inc[0]["detail"].get("recoveredAtStart"), inc[0])
        # Compartment 1 was left open in a service open: still open.
        self.assertEqual(st.comp(1)["door"], "open")

    def test_sigterm_while_unlocking(self):
        st = self.make_station()
        st.setup_booking(compartment=3, uid=UID_A)
        self.assertEqual(st.tap(UID_A)["outcome"], "pickup")
        self.assertEqual(st.lock_value(3), 1)
        st.stop()
        self.assertEqual(st.last_output_values()[LOCK_LINES[3]], 0)
        st.start()
        c = st.comp(3)
        self.assertEqual((c["state"], c["key"], c["lock"]), ("locked_full", "in", "off"))
        ab = st.events_of("pickup.aborted", compartment=3)
        self.assertEqual(len(ab), 1, ab)
        st.pickup(UID_A, 3)

    def test_restart_keeps_holder_and_overdue_timer(self):
        st = self.make_station()
        b = st.setup_booking(compartment=4, uid=UID_A, length=datetime.timedelta(hours=1))
        st.pickup(UID_A, 4)
        st.restart()  # the sim clock starts again at the real time
        c = st.comp(4)
        self.assertEqual((c["state"], c["holder"]["member"], c["holder"]["booking"]),
                         ("locked_empty", b["member"], b["booking"]))
        seq0 = st.last_seq()
        due = b["end"] + datetime.timedelta(minutes=15)
        st.advance("%ds" % (int((due - st.now()).total_seconds()) + 60))
        st.wait_event("key.overdue", since=seq0, compartment=4)
        st.give_back(UID_A, 4)

    def test_door_open_at_start_is_forced(self):
        st = self.make_station()
        st.stop()
        # The door is opened while lockerd is down (nobody authorised it).
        state = st.sim_inputs_file()
        state[LINES[2][1]] = 1
        with open(st.sim_state_path, "w") as f:
            f.writelines("%s %d\n" % kv for kv in state.items())
        st.start()
        e = st.wait_event("door.forced", compartment=2)
        self.assertEqual(e["reason"], "open-at-start")
        self.assertEqual(st.comp(2)["state"], "forced_open")
        self.assertEqual(st.door(2, "close")["state"], "locked_full")

    def test_sigint_is_a_clean_stop(self):
        st = self.make_station()
        st.signal(signal.SIGINT)
        self.assertEqual(st.wait_exit(), 0)
        st.check_sanitizers()
        st.start()
        self.assertEqual(st.events_of("station.uncleanShutdown"), [])

    def test_sigkill_is_reported_as_unclean(self):
        st = self.make_station()
        st.kill()
        st.start()
        self.assertEqual(len(st.events_of("station.uncleanShutdown")), 1)
        st.stop()
        st.start()
        self.assertEqual(len(st.events_of("station.uncleanShutdown")), 1)

    def test_second_instance_refused(self):
        st = self.make_station()
        rc, out, err = run_lockerd("-c", st.conf, timeout=15)
        self.assertNotEqual(rc, 0)
        self.assertIn("another lockerd", err)
        self.assertEqual(st.ctl("status").rc, 0)

    def test_sighup_reload_keeps_state_and_applies_timing(self):
        st = self.make_station()
        b = st.setup_booking(compartment=1, uid=UID_A)
        st.pickup(UID_A, 1)
        st.policy_opts["door_open_alarm"] = "10m"
        st.write_config()
        st.signal(signal.SIGHUP)
        wait_until(lambda: "configuration reloaded" in st.stderr_text(all_runs=False),
                   what="'configuration reloaded' in lockerd's log")
        c = st.comp(1)
        self.assertEqual(c["state"], "locked_empty")
        self.assertEqual(c["holder"]["member"], b["member"], "state must survive SIGHUP")

        seq0 = st.last_seq()
        self.assertEqual(st.tap(UID_A)["outcome"], "return")
        st.door(1, "open")
        st.advance("3m")  # past the old 2m, before the new 10m
        st.status()
        st.status()
        self.assertEqual(st.events_of("door.heldOpen", since=seq0), [],
                         "the old door_open_alarm (2m) must no longer apply")
        st.advance("8m")
        e = st.wait_event("door.heldOpen", since=seq0, compartment=1)
        self.assertEqual(e["detail"]["afterMs"], 600000)
        st.key(1, "put")
        st.door(1, "close")
        st.wait_event("key.returned", since=seq0, compartment=1)
        st.stop()

    def test_sighup_with_hardware_change_keeps_running_lines(self):
        st = self.make_station()
        st.setup_booking(compartment=1, uid=UID_A)
        with open(st.conf) as f:
            text = f.read()
        with open(st.conf, "w") as f:
            f.write(text.replace("lock = GPIO17\n", "lock = GPIO18\n"))
        st.signal(signal.SIGHUP)
        wait_until(lambda: "restart lockerd" in st.stderr_text(all_runs=False),
                   what="the reload to refuse the hardware change")
        self.assertEqual(st.tap(UID_A)["outcome"], "pickup")
        self.assertEqual(st.outputs()[LOCK_LINES[1]]["value"], 1)
        self.assertNotIn("GPIO18", st.outputs())
        st.stop()

    def test_sighup_with_bad_config_keeps_running(self):
        st = self.make_station()
        with open(st.conf, "a") as f:
            f.write("\n[policy]\nno_such_key = 1\n")
        st.signal(signal.SIGHUP)
        wait_until(lambda: "reload failed" in st.stderr_text(all_runs=False),
                   what="'reload failed' in lockerd's log")
        self.assertIn("no_such_key", st.stderr_text(all_runs=False))
        self.assertEqual(st.ctl("status").rc, 0)
        st.stop()


class PrivacyTest(StationTestCase):
    UID = "04DEADBEEF1234"
    UID_UNKNOWN = "04C0FFEE5678AB"
    UID_ENROLLED = "04FACADE987654"

    def scan(self, st, paths, label):
        leaks = []
        for p in paths:
            if not os.path.exists(p):
                continue
            with open(p, "rb") as f:
                data = f.read()
            for uid in (self.UID, self.UID_UNKNOWN, self.UID_ENROLLED):
                for form in find_uid(data, uid):
                    leaks.append("%s contains %r" % (os.path.relpath(p, st.dir), form))
        self.assertEqual(leaks, [], "card UID leaked (%s)" % label)

    def files(self, st):
        out = [st.db_path, st.db_path + "-wal", st.db_path + "-shm", st.sim_log_path,
               st.sim_state_path] + st.stderr_logs
        for root, _, names in os.walk(st.state_dir):
            out += [os.path.join(root, n) for n in names]
        return sorted(set(out))

    def test_uid_never_stored_or_logged(self):
        st = self.make_station(station={"log_level": "debug"})
        st.add_club("club-p")
        m = st.add_member("club-p", "Private")
        st.add_card(m, "04:de:ad:be:ef:12:34")  # colons and lower case reach the same card
        start, end = st.booking_window()
        st.add_booking("club-p", 1, start, end)
        st.pickup(self.UID, 1)
        self.assertEqual(st.tap(self.UID, card="uid")["reason"], "insecure-card")
        st.give_back(self.UID, 1)
        self.assertEqual(st.tap(self.UID_UNKNOWN)["reason"], "unknown-card")
        r = st.ctl("card", "add", m, "--uid", self.UID, check=False)  # duplicate
        self.assertEqual(r.data["error"]["code"], "conflict")
        self.assertNotIn("DEADBEEF", r.stderr.upper())

        # A card registered by tapping it (card enroll) is just as private.
        st.add_club("club-q")  # no booking
        m2 = st.add_member("club-q", "Enrolled")
        enrol = subprocess.Popen([LOCKERCTL, "-s", st.sock, "--json", "card", "enroll", m2,
                                  "--timeout", "20"], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, env=sanitizer_env())
        try:
            wait_until(lambda: st.tap(self.UID_ENROLLED).get("outcome") == "enrolment",
                       what="the enrolment to take the tap")
            out, err = enrol.communicate(timeout=20)
        finally:
            if enrol.poll() is None:
                enrol.kill()
                enrol.communicate()
        self.assertEqual(enrol.returncode, 0, err)
        for text in (out, err):
            self.assertNotIn(b"FACADE", text.upper())
        self.assertEqual(st.tap(self.UID_ENROLLED)["reason"], "no-booking")
        self.scan(st, self.files(st), "while running")
        st.stop()
        self.scan(st, self.files(st), "after stop")


class EventLogTest(StationTestCase):
    def test_tampered_event_is_detected(self):
        st = self.make_station()
        st.setup_booking(compartment=1, uid=UID_A)
        st.pickup(UID_A, 1)
        granted = st.events_of("access.granted")[0]
        seq = granted["seq"]
        self.assertTrue(st.j("events", "--verify")["intact"])
        st.stop()

        con = sqlite3.connect(st.db_path)
        try:
            (trigger_sql,) = con.execute(
                "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND "
                "name = 'events_append_only'").fetchone() or (None,)
            with con:
                if trigger_sql:
                    con.execute("DROP TRIGGER events_append_only")
                cur = con.execute("UPDATE events SET detail = ? WHERE seq = ?",
                                  ('{"purpose":"service"}', seq))
                self.assertEqual(cur.rowcount, 1)
                if trigger_sql:
                    con.execute(trigger_sql)
        finally:
            con.close()

        st.start()
        r = st.ctl("events", "--verify", check=False)
        self.assertEqual(r.rc, 4, r)
        self.assertIs(r.data["intact"], False)
        self.assertEqual(r.data["firstBadSeq"], seq)
        t = st.ctl("events", "--verify", json_out=False, check=False)
        self.assertEqual(t.rc, 4, t)
        self.assertRegex(t.stdout, r"\bseq %d\b" % seq)

    def test_deleted_event_is_detected(self):
        st = self.make_station()
        st.setup_booking(compartment=1, uid=UID_A)
        st.pickup(UID_A, 1)
        seq = st.events_of("access.granted")[0]["seq"]
        st.stop()
        con = sqlite3.connect(st.db_path)
        try:
            with con:
                con.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
                con.execute("DELETE FROM events WHERE seq = ?", (seq,))
        finally:
            con.close()
        st.start()
        r = st.ctl("events", "--verify", check=False)
        self.assertEqual(r.rc, 4, r)
        self.assertIn(r.data["firstBadSeq"], (seq, seq + 1))

    def test_prune_after_retention(self):
        st = self.make_station(station={"retention": "1d"})
        b = st.setup_booking(compartment=1, uid=UID_A)
        st.pickup(UID_A, 1)
        st.give_back(UID_A, 1)
        old_last = st.last_seq()
        st.advance("2d")
        # The daily housekeeping may prune on its own as soon as the clock jumps;
        # `lockerctl prune` then finds nothing left. Either way the old events go.
        r = st.j("prune")
        self.assertGreaterEqual(r["pruned"], 0)
        events = st.events()
        remaining_old = [(e["seq"], e["type"]) for e in events if e["seq"] <= old_last]
        self.assertEqual(remaining_old, [], "events older than the retention must be pruned")
        pruned = [e for e in events if e["type"] == "log.pruned"]
        self.assertTrue(pruned, [(e["seq"], e["type"]) for e in events])
        self.assertEqual(sum(e["detail"]["count"] for e in pruned), old_last,
                         "log.pruned must count what was removed: %s" % pruned)
        self.assertEqual(max(e["detail"]["upToSeq"] for e in pruned), old_last)
        self.assertEqual(st.db_query("SELECT count(*) FROM events WHERE seq <= ?",
                                     (old_last,))[0][0], 0)
        v = st.ctl("events", "--verify")
        self.assertTrue(v.data["intact"], v)
        # New events still chain on, and the checkpoint survives a restart.
        st.tap("04FFEE01")
        st.restart()
        v = st.ctl("events", "--verify")
        self.assertTrue(v.data["intact"], v)
        self.assertIsNotNone(b)


if __name__ == "__main__":
    unittest.main()
