"""City API sync against the reference server (tests/cityapi/server.py) over real mutual
TLS: feeds in, events out exactly once, offline operation, faults, refused TLS peers and
the worker's sandbox (issue 4).

Each test ends by comparing the station's data with the server's: the reservations
and credentials the station holds are the server's, and the server holds every event
of the station exactly once.
"""

import datetime
import json
import os
import re
import subprocess
import time
import unittest
import zoneinfo

from harness import LOCKERD, StationTestCase, wait_until
from city import CityServer, city_station_extra, uid_hmac, wait_delivered

H = datetime.timedelta(hours=1)
UID = "04A1B2C3D4E5F6"
UID2 = "04FFEEDDCCBBAA"


class SyncTestCase(StationTestCase):
    def setUp(self):
        self.city = CityServer().start()
        self.addCleanup(self.city.cleanup)
        self.city.set_config()

    def station(self, client="client", policy=None, start=True, **kw):
        return self.make_station(extra=city_station_extra(self.city, client), policy=policy,
                                 start=start, **kw)

    def sync(self, st, ok=True):
        r = st.ctl("sync", "now", "--timeout", "30", check=False)
        if ok:
            self.assertEqual(r.rc, 0, "sync now failed: %s\n%s" % (r, st.stderr_tail()))
        else:
            self.assertNotEqual(r.rc, 0, "sync now should have failed: %s" % r)
        return r

    def city_booking_rows(self, st):
        return {row[0]: row[1:] for row in st.db_query(
            "SELECT id, club_id, compartment, start_ms, end_ms, status FROM bookings"
            " WHERE source = 'city'")}

    def assert_same_data(self, st):
        """The station holds exactly the server's live reservations and credentials."""
        items = self.city.admin("GET", "/admin/feeds/reservations")["items"]
        want = {}
        for it in items:
            if it["state"] != "updated":
                continue
            d = it["data"]
            comps = d["compartments"]
            for c in comps:
                bid = d["identifier"] if len(comps) == 1 else "%s@%d" % (d["identifier"], c)
                want[bid] = "cancelled" if d["reservationStatus"] == "cancelled" else "active"
        have = {bid: row[4] for bid, row in self.city_booking_rows(st).items()
                if row[4] == "active"}
        self.assertEqual(have, {k: v for k, v in want.items() if v == "active"})
        creds = self.city.admin("GET", "/admin/feeds/credentials")["items"]
        want_c = {it["data"]["identifier"]: it["data"]["status"] for it in creds
                  if it["state"] == "updated"}
        have_c = dict(st.db_query("SELECT id, status FROM credentials WHERE source = 'city'"))
        self.assertEqual(have_c, want_c)

    def assert_events_exactly_once(self, st, dead_letters=False):
        """Every event of the station is on the server once; none twice, none extra.
        Unless the test makes some, no event was refused."""
        got = wait_delivered(st, self.city)
        if not dead_letters:
            self.assertEqual(got["rejected"], [])
            self.assertEqual(st.db_query("SELECT count(*) FROM dead_letters")[0][0], 0)
        ids = [e["eventId"] for e in got["events"]]
        self.assertEqual(len(ids), len(set(ids)), "an event was stored twice")
        local = [r[0] for r in st.db_query("SELECT event_id FROM events ORDER BY seq")]
        dead = {r[0] for r in st.db_query("SELECT event_id FROM dead_letters")}
        self.assertEqual(sorted(ids), sorted(set(local) - dead))
        for eid, c in got["counts"].items():
            self.assertEqual(c["mismatch"], 0, "event %s re-sent with other content" % eid)
        return got

    def setup_city_booking(self, st, uid=UID, club="club-42", comp=2, cred="cred-77",
                           member="m-5", start_in=-H / 4, length=2 * H, rid="r-881"):
        now = st.now()
        self.city.reservation(rid, club, now + start_in, now + start_in + length, [comp],
                              club_name="SV Warnemünde")
        self.city.credential(cred, uid_hmac(st, uid), member, [club])


class TestSyncBasics(SyncTestCase):
    def test_feeds_pickup_and_upload(self):
        st = self.station()
        self.setup_city_booking(st)
        r = self.sync(st)
        self.assertTrue(r["cycle"]["ok"])
        text = st.ctl("sync", "now", json_out=False).stdout
        self.assertIn("sync complete", text)
        self.assertEqual(self.city_booking_rows(st)["r-881"][0], "club-42")
        st.pickup(UID, 2)
        st.give_back(UID, 2)
        got = self.assert_events_exactly_once(st)
        out = [e for e in got["events"] if e["type"] == "key.checkedOut"]
        self.assertEqual(len(out), 1)
        e = out[0]
        self.assertEqual(e["reservationId"], "r-881")
        self.assertEqual(e["credentialId"], "cred-77")
        self.assertEqual(e["compartment"], 2)
        self.assertIn("synced", e["clock"])
        self.assertTrue(e["bootId"])
        self.assertIsInstance(e["monoMs"], int)
        # Privacy: no member id, no name, no UID leave the station.
        blob = json.dumps(got["events"])
        for secret in ("m-5", "A. Trainer", UID, UID.lower()):
            self.assertNotIn(secret, blob)
        # The heartbeat arrived with the outbox depth and the clock state.
        hb = self.city.admin("GET", "/admin/heartbeat")["heartbeat"]
        self.assertEqual(hb["stationId"], "st-scenario")
        self.assertIn("outboxDepth", hb)
        self.assertIn("synced", hb["clock"])
        self.assert_same_data(st)

    def test_status_shows_cursor_and_success(self):
        st = self.station()
        self.setup_city_booking(st)
        self.sync(st)
        s = st.j("sync", "status")
        self.assertEqual(s["mode"], "city")
        self.assertTrue(s["worker"]["running"])
        self.assertTrue(s["cursor"]["reservations"].startswith(self.city.base_url + "/"))
        self.assertIsNotNone(s["lastSuccess"])
        self.assertIsNotNone(s["confirmed"]["credentials"])
        self.assertIsNone(s["lastError"])
        text = st.ctl("sync", "status", json_out=False).stdout
        self.assertIn("reservations cursor: https://", text)

    def test_cancel_move_delete_and_several_compartments(self):
        st = self.station()
        self.setup_city_booking(st)
        now = st.now()
        self.city.reservation("r-2", "club-42", now + 3 * H, now + 4 * H, [1, 3])
        self.sync(st)
        rows = self.city_booking_rows(st)
        self.assertIn("r-2@1", rows)
        self.assertIn("r-2@3", rows)
        # Moved to other times and one compartment; the old rows go.
        self.city.admin("PATCH", "/admin/reservations/r-2",
                        {"compartments": [4], "startDate": self._utc(now + 5 * H),
                         "endDate": self._utc(now + 6 * H)})
        self.city.admin("POST", "/admin/reservations/r-881/cancel", {})
        self.city.admin("DELETE", "/admin/credentials/cred-77")
        self.sync(st)
        rows = self.city_booking_rows(st)
        self.assertEqual(rows["r-2"][1], 4)
        self.assertEqual(rows["r-2@1"][4], "cancelled")
        self.assertEqual(rows["r-881"][4], "cancelled")
        self.assertEqual(st.tap(UID)["reason"], "unknown-card")
        self.assert_same_data(st)
        self.assert_events_exactly_once(st)

    def test_credential_clubs_decide(self):
        """A city credential opens only for the clubs it names."""
        st = self.station()
        now = st.now()
        self.city.reservation("r-1", "club-other", now - H / 4, now + H, [1])
        self.city.credential("cred-1", uid_hmac(st, UID), "m-1", ["club-42"])
        self.sync(st)
        self.assertEqual(st.tap(UID)["reason"], "no-booking")
        self.city.admin("PATCH", "/admin/credentials/cred-1", {"clubs": ["club-other"]})
        self.sync(st)
        self.assertEqual(st.tap(UID)["outcome"], "pickup")

    def test_invalid_record_changes_nothing(self):
        """Network data the worker cannot validate is not applied, and never opens."""
        st = self.station()
        self.setup_city_booking(st)
        self.sync(st)
        before = self.city_booking_rows(st)
        now = st.now()
        self.city.admin("POST", "/admin/reservations", {
            "identifier": "r-bad", "startDate": self._utc(now), "endDate": self._utc(now - H),
            "organizer": {"identifier": "club-42", "name": "x"}, "compartments": [1],
            "reservationStatus": "confirmed", "unchecked": True})
        self.sync(st, ok=False)
        self.assertEqual(self.city_booking_rows(st), before)
        s = st.j("sync", "status")
        self.assertEqual(s["lastError"]["op"], "reservations")
        self.assertTrue(all(o["state"] != "open_pickup" for o in st.status()["compartments"]))

    @staticmethod
    def _utc(dt):
        return dt.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class TestOffline(SyncTestCase):
    def test_three_days_offline_then_exactly_once(self):
        st = self.station(policy={"offline_max_age": "96h"})
        now = st.now()
        # A booking each day for the next four days, and one right now.
        for d in range(0, 4):
            self.city.reservation("r-day%d" % d, "club-42", now + d * 24 * H - H / 4,
                                  now + d * 24 * H + 2 * H, [2])
        self.city.credential("cred-77", uid_hmac(st, UID), "m-5", ["club-42"])
        self.sync(st)
        st.pickup(UID, 2)
        st.give_back(UID, 2)
        self.city.stop()
        # Three simulated days without the server: cached bookings serve, unknown
        # cards are refused, every event waits in the outbox.
        for day in range(1, 4):
            st.advance("24h")
            st.pickup(UID, 2)
            st.give_back(UID, 2)
            self.assertEqual(st.tap(UID2)["reason"], "unknown-card")
            self.sync(st, ok=False)
        depth = st.j("sync", "status")["outboxDepth"]
        self.assertGreater(depth, 10)
        # Past offline_max_age the cached data is no longer trusted.
        st.advance("25h")
        self.assertEqual(st.tap(UID)["reason"], "offline-data-too-old")
        self.city.start()
        self.sync(st)
        self.assert_events_exactly_once(st)
        self.assert_same_data(st)


class TestFaults(SyncTestCase):
    def prepared(self):
        st = self.station()
        self.setup_city_booking(st)
        self.sync(st)
        st.pickup(UID, 2)
        return st

    def test_drop_after_commit_is_not_doubled(self):
        st = self.prepared()
        self.city.fault("drop_after_commit", path="/events$")
        st.give_back(UID, 2)
        self.sync(st, ok=True)  # the retry gets "duplicate" for what the server has
        got = self.assert_events_exactly_once(st)
        self.assertGreater(got["duplicateAttempts"], 0)
        self.assert_same_data(st)

    def test_retry_after_is_honoured(self):
        st = self.prepared()
        self.city.admin("DELETE", "/admin/requests")
        self.city.fault("status", path="/events$", status=503, retryAfter=2)
        st.give_back(UID, 2)

        def posts():
            return [r for r in self.city.requests()["requests"]
                    if r["method"] == "POST" and r["path"].endswith("/events")]
        two = wait_until(lambda: len(posts()) >= 2 and posts(), timeout=30,
                         what="the retried upload")
        self.assertEqual(two[0]["status"], 503)
        self.assertGreaterEqual(two[1]["t"] - two[0]["t"], 2000)
        self.assert_events_exactly_once(st)

    def test_429_and_5xx_then_recovery(self):
        st = self.prepared()
        self.city.fault("status", path="/reservations", status=429, retryAfter=1)
        self.city.fault("status", path="/credentials", status=500)
        self.sync(st, ok=False)
        self.assertIn(st.j("sync", "status")["lastError"]["http"], (429, 500))
        self.sync(st)
        self.assert_same_data(st)
        self.assert_events_exactly_once(st)

    def test_truncated_malformed_and_slow_bodies(self):
        st = self.prepared()
        now = st.now()
        self.city.reservation("r-new", "club-42", now + 2 * H, now + 3 * H, [1])
        # Until deleted: the worker also polls on its own, and a one-shot fault could
        # be used up by such a poll instead of by the cycle under test.
        for kind in ("truncate", "malformed"):
            with self.subTest(kind=kind):
                self.city.fault(kind, path="/reservations", count=-1)
                self.sync(st, ok=False)
                self.assertNotIn("r-new", self.city_booking_rows(st))
                self.city.clear_faults()
        self.city.fault("delay", path="/reservations", ms=1500)
        self.sync(st)
        self.assertIn("r-new", self.city_booking_rows(st))
        st.give_back(UID, 2)
        self.city.fault("drop", path="/events$")
        self.city.fault("truncate", path="/events$")
        self.city.fault("malformed", path="/events$")
        self.assert_events_exactly_once(st)
        self.assert_same_data(st)

    def refused_as_a_whole(self, status):
        """The server refuses, as a whole, every batch that carries one event: the
        station splits its batches until that event goes alone; it alone becomes a
        dead letter, every other event arrives once."""
        st = self.prepared()
        hold = self.city.fault("status", path="/events$", status=503, count=-1)
        st.give_back(UID, 2)
        queued = [r[0] for r in st.db_query(
            "SELECT event_id FROM outbox JOIN events USING (seq) ORDER BY seq")]
        self.assertGreater(len(queued), 2, "the test needs a batch of several events")
        bad = queued[len(queued) // 2]
        self.city.fault("status", path="/events$", status=status, body=bad, count=-1)
        self.city.admin("DELETE", "/admin/faults/%d" % hold)
        st.ctl("sync", "now", "--timeout", "30", check=False)  # ends the 503 back-off
        wait_until(lambda: st.j("sync", "status")["outboxDepth"] == 0, timeout=30,
                   what="outbox empty")
        self.assertEqual(st.db_query("SELECT event_id, http FROM dead_letters"),
                         [(bad, status)])
        self.assertEqual(st.j("sync", "status")["deadLetters"], 1)
        got = self.assert_events_exactly_once(st, dead_letters=True)
        self.assertNotIn(bad, [e["eventId"] for e in got["events"]])
        self.assertIn("refused a batch of", st.stderr_text(all_runs=False))

    def test_batch_refused_as_a_whole_loses_only_its_bad_event(self):
        self.refused_as_a_whole(422)

    def test_batch_too_large_loses_only_the_event_too_large(self):
        self.refused_as_a_whole(413)

    def test_413_keeps_batches_below_what_the_server_refused(self):
        """A server that takes at most 2 events at once answers 413 to more: the
        station splits, and does not grow its batches past the refused size again
        (else every other request would be refused for ever)."""
        st = self.prepared()
        hold = self.city.fault("status", path="/events$", status=503, count=-1)
        st.give_back(UID, 2)
        st.pickup(UID, 2)
        st.give_back(UID, 2)
        queued = st.db_query("SELECT count(*) FROM outbox")[0][0]
        self.assertGreaterEqual(queued, 8, "the test needs a batch of eight events or more")
        self.city.fault("status", path="/events$", status=413, body='(?s)("eventId".*){3}',
                        count=-1)
        self.city.admin("DELETE", "/admin/faults/%d" % hold)
        self.city.admin("DELETE", "/admin/requests")
        st.ctl("sync", "now", "--timeout", "30", check=False)  # ends the 503 back-off
        wait_until(lambda: st.j("sync", "status")["outboxDepth"] == 0, timeout=30,
                   what="outbox empty")
        statuses = [r["status"] for r in self.city.requests()["requests"]
                    if r["method"] == "POST" and r["path"].endswith("/events")]
        # Halved until accepted; after the first accepted batch never 413 again
        # (growing back to 4 would be refused while 3 or more events wait).
        first_ok = statuses.index(200)
        self.assertGreater(first_ok, 0, statuses)
        self.assertEqual(set(statuses[:first_ok]), {413}, statuses)
        self.assertEqual(set(statuses[first_ok:]), {200}, statuses)
        self.assertEqual(st.db_query("SELECT count(*) FROM dead_letters")[0][0], 0)
        self.assert_events_exactly_once(st)

    def test_forbidden_halts_until_sync_now(self):
        st = self.prepared()
        self.city.fault("status", path="/events$", status=403)
        st.give_back(UID, 2)
        wait_until(lambda: st.j("sync", "status")["halted"], timeout=30, what="halt")
        self.assertGreater(st.j("sync", "status")["outboxDepth"], 0)
        self.sync(st)
        self.assert_events_exactly_once(st)

    def test_gone_cursor_resyncs_and_sweeps(self):
        st = self.station()
        self.setup_city_booking(st)
        now = st.now()
        self.city.reservation("r-old", "club-42", now + 5 * H, now + 6 * H, [3])
        self.sync(st)
        self.assertEqual(self.city_booking_rows(st)["r-old"][4], "active")
        # Deleted while the station was away, and the tombstone purged: only a full
        # resync can tell.
        self.city.admin("DELETE", "/admin/reservations/r-old")
        self.city.reservation("r-later", "club-42", now + 7 * H, now + 8 * H, [3])
        self.city.admin("POST", "/admin/purge-tombstones", {})
        self.sync(st)
        rows = self.city_booking_rows(st)
        self.assertEqual(rows["r-old"][4], "cancelled")
        self.assertEqual(rows["r-later"][4], "active")
        self.assertIn(410, [r["status"] for r in self.city.requests()["requests"]])
        self.assert_same_data(st)

    def test_foreign_next_is_refused(self):
        st = self.station()
        self.setup_city_booking(st)
        self.city.fault("foreign_next", path="/reservations", count=-1)
        self.sync(st, ok=False)
        cursor = st.j("sync", "status")["cursor"]["reservations"]
        # Still the server's own (or none yet), never the foreign one.
        self.assertTrue(cursor is None or cursor.startswith(self.city.base_url + "/"), cursor)
        self.assertIn("next", st.j("sync", "status")["lastError"]["message"].lower())


class TestTls(SyncTestCase):
    def test_wrong_server_ca_is_refused(self):
        # Before the station's first connection: a connection verified earlier may be
        # kept alive by the worker, and the server only changes identity for new ones.
        self.city.admin("PUT", "/admin/tls", {"identity": "mitm"})
        st = self.station()
        self.setup_city_booking(st)
        r = self.sync(st, ok=False)
        err = st.j("sync", "status")["lastError"]
        self.assertRegex(err["message"], re.compile("certificate|SSL", re.I))
        self.assertEqual(self.city_booking_rows(st), {})
        self.assertIn("certificate", r.stdout.lower() + json.dumps(err).lower())

    def test_expired_client_certificate_is_refused(self):
        st = self.station(client="client-expired")
        self.setup_city_booking(st)
        self.sync(st, ok=False)
        self.assertEqual(self.city_booking_rows(st), {})
        self.assertTrue(self.city.requests()["handshakeFailures"])
        self.assertIsNotNone(st.j("sync", "status")["lastError"])

    def test_client_certificate_of_unknown_ca_is_refused(self):
        st = self.station(client="client-unknown")
        self.setup_city_booking(st)
        self.sync(st, ok=False)
        self.assertEqual(self.city_booking_rows(st), {})


    def test_key_readable_by_others_is_refused(self):
        os.chmod(os.path.join(self.city.certs, "client.key"), 0o644)
        st = self.station()
        self.setup_city_booking(st)
        self.sync(st, ok=False)
        err = st.j("sync", "status")["lastError"]
        self.assertIn("chmod 600", err["message"])
        self.assertEqual(self.city.requests()["requests"], [])
        os.chmod(os.path.join(self.city.certs, "client.key"), 0o600)
        self.sync(st)
        self.assertIn("r-881", self.city_booking_rows(st))


class TestWorker(SyncTestCase):
    def test_worker_is_sandboxed(self):
        st = self.station()
        self.sync(st)
        pid = st.j("sync", "status")["worker"]["pid"]
        with open("/proc/%d/status" % pid) as f:
            status = f.read()
        self.assertRegex(status, r"NoNewPrivs:\s+1")
        if os.geteuid() == 0:
            self.assertNotRegex(status, r"Uid:\s+0\s")
        # The worker holds none of lockerd's files open.
        fds = os.listdir("/proc/%d/fd" % pid)
        for fd in fds:
            target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
            self.assertNotIn("lockerd.db", target)
            self.assertNotIn("gpio", target)
        # The same sandbox, probed: no database, no GPIO, no reader.
        probe = subprocess.run([LOCKERD, "--sandbox-probe", st.db_path, st.sim_state_path,
                                "/dev/gpiochip0", "/dev/ttyS0"],
                               capture_output=True, text=True, timeout=30)
        self.assertEqual(probe.returncode, 0, probe.stderr)
        for line in probe.stdout.splitlines():
            self.assertNotIn("rw=ok", line)
            self.assertNotIn("ro=ok", line, "the sandbox can read " + line)
        # Nor the control socket (seccomp: no new Unix sockets, whatever the uid), nor
        # lockerd itself (signals only to itself).
        probe = subprocess.run([LOCKERD, "--sandbox-probe", "unix:" + st.sock,
                                "signal:%d" % st.proc.pid],
                               capture_output=True, text=True, timeout=30)
        self.assertEqual(probe.returncode, 0, probe.stderr)
        self.assertIn("unix:%s connect=EPERM" % st.sock, probe.stdout)
        with open(LOCKERD, "rb") as f:
            sanitized = b"AddressSanitizer" in f.read()
        if not sanitized:  # LeakSanitizer needs signals and ptrace (syncworker.c)
            self.assertRegex(probe.stdout, r"signal:\d+ kill=EPERM")

    def test_killed_worker_is_restarted(self):
        st = self.station()
        self.setup_city_booking(st)
        self.sync(st)
        pid = st.j("sync", "status")["worker"]["pid"]
        os.kill(pid, 9)
        wait_until(lambda: st.j("sync", "status")["worker"]["pid"] not in (0, pid),
                   timeout=30, what="a new worker")
        self.assertGreaterEqual(st.j("sync", "status")["worker"]["restarts"], 1)
        st.pickup(UID, 2)
        self.assert_events_exactly_once(st)

    def test_malformed_worker_message_kills_it(self):
        fake = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fake_sync_worker.py")
        st = self.station(start=False)
        st.env["LOCKERD_SYNC_WORKER"] = fake
        st.start()
        wait_until(lambda: "malformed message" in st.stderr_text(), timeout=30,
                   what="the malformed message to be noticed")
        wait_until(lambda: st.j("sync", "status")["worker"]["restarts"] >= 2, timeout=30,
                   what="restarts with back-off")
        self.assertIn("restarting the worker in 2000 ms", st.stderr_text())
        self.assertTrue(st.running)


if __name__ == "__main__":
    unittest.main()


BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")  # the station's default [station] timezone


class TestUsagePush(SyncTestCase):
    """[opendata] push = yes: each past local day's open-data summary goes to
    PUT /stations/{id}/usage/{date} once, after the day, retried on errors (issue 7)."""

    def station(self, **kw):
        return self.make_station(extra=city_station_extra(self.city) + "\n\n[opendata]\npush = yes",
                                 **kw)

    def advance_to(self, st, day, hour=0, minute=5):
        """Moves the station's clock to local `day` at hour:minute (never backwards)."""
        now = st.now().astimezone(BERLIN)
        target = datetime.datetime.combine(day, datetime.time(hour, minute), BERLIN)
        secs = int((target - now).total_seconds()) + 1
        self.assertGreater(secs, 0, "the clock would go back")
        st.advance("%ds" % secs)

    def days(self):
        return {d["date"]: d for d in self.city.admin("GET", "/admin/usage")["days"]}

    def usage_puts(self, date=None):
        return [r for r in self.city.requests()["requests"] if r["method"] == "PUT"
                and "/usage/" in r["path"] and (date is None or r["path"].endswith(date))]

    def used_day(self, st):
        """A city booking on the next local day at 10:00, picked up and returned 30 min
        later; -> that date."""
        first = st.now().astimezone(BERLIN).date()
        day = first + datetime.timedelta(days=1)
        self.advance_to(st, day, 10, 0)
        self.setup_city_booking(st)
        self.sync(st)
        st.pickup(UID, 2)
        st.advance("30m")
        st.give_back(UID, 2)
        return first, day

    def test_day_pushed_once_with_facts_and_nothing_personal(self):
        st = self.station()
        first, day = self.used_day(st)
        self.advance_to(st, day + datetime.timedelta(days=1))
        self.sync(st)
        got = wait_until(lambda: self.days().get(str(day)), timeout=30, what="the day's summary")
        self.assertEqual(got["count"], 1)
        doc = got["document"]
        self.assertEqual((doc["date"], doc["timezone"]), (str(day), "Europe/Berlin"))
        hall = [t for t in doc["sensorthings"]["Things"]
                if t["properties"]["hall"] == "halle-2"][0]
        self.assertEqual(hall["properties"]["stationId"], "st-scenario")
        slots, removals, sessions = (d["Observations"] for d in hall["Datastreams"])
        self.assertEqual([o["result"] for o in slots], ["collected"])
        self.assertEqual(slots[0]["parameters"]["reservationId"], "r-881")
        self.assertEqual(slots[0]["parameters"]["keyOutSeconds"], 30 * 60)
        self.assertEqual([o["result"] for o in removals], ["removed"])
        self.assertEqual([o["result"] for o in sessions], [30 * 60])
        text = json.dumps(doc)
        for secret in ("m-5", "A. Trainer", "cred-77", UID, UID.lower(), "club-42",
                       uid_hmac(st, UID)):
            self.assertNotIn(secret, text)
        # First enable: from the day before the first start on, not years of history.
        self.assertEqual(min(self.days()), str(first - datetime.timedelta(days=1)))
        self.assertEqual(st.j("sync", "status")["usage"]["pushedThrough"], str(day))

        # A restart does not send the day again; the next day follows once it is over
        # (the restart has put the simulated clock back: move it on past that day).
        st.restart()
        self.advance_to(st, day + datetime.timedelta(days=2))
        self.sync(st)
        nxt = str(day + datetime.timedelta(days=1))
        wait_until(lambda: nxt in self.days(), timeout=30, what="the next day's summary")
        self.assertEqual(self.days()[str(day)]["count"], 1)
        self.assertEqual(len(self.usage_puts(str(day))), 1)
        self.assertEqual(st.j("sync", "status")["usage"]["pushedThrough"], nxt)

    def test_503_is_retried(self):
        st = self.station()
        _, day = self.used_day(st)
        self.sync(st)  # the days before: delivered
        wait_until(lambda: st.j("sync", "status")["usage"]["pushedThrough"]
                   == str(day - datetime.timedelta(days=1)), timeout=30, what="older days")
        self.city.fault("status", path="/usage/%s$" % day, status=503, count=2)
        self.advance_to(st, day + datetime.timedelta(days=1))
        self.sync(st)
        got = wait_until(lambda: self.days().get(str(day)), timeout=30, what="the retried day")
        self.assertEqual(got["count"], 1)
        self.assertEqual([r["status"] for r in self.usage_puts(str(day))], [503, 503, 204])
        s = wait_until(lambda: (lambda s: s["usage"]["pushedThrough"] == str(day) and s)(
            st.j("sync", "status")), timeout=10, what="status")
        self.assertIsNone(s["usage"]["inFlight"])
        self.assertIsNotNone(s["operations"]["usage"]["lastError"])
        self.assertEqual(s["operations"]["usage"]["http"], 503)

    def test_off_by_default(self):
        st = self.make_station(extra=city_station_extra(self.city))
        self.sync(st)
        st.advance("25h")
        self.sync(st)
        self.assertFalse(st.j("sync", "status")["usage"]["push"])
        self.assertEqual(self.usage_puts(), [])
