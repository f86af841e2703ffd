"""Tests of the city API reference server (tests/cityapi/server.py) itself: RPDE,
tombstones and 410, ETag/304, event uniqueness and per-event rejection, heartbeats,
mutual TLS (missing, expired, unknown-CA client certs, CN mismatch, a MITM server
cert), every fault kind, enrollment, and that docs/openapi.yaml lists exactly the
server's routes.

    python3 -m unittest discover -s tests/cityapi -p 'test_*.py'

Standard library only (the schema test also wants python3-yaml and python3-jsonschema
and is skipped without them). One server serves most tests and is reset through its
admin API before each; tests that restart it or need other arguments get their own.
Every start waits for the server's ready line; nothing sleeps to guess.
"""

import http.client
import json
import os
import secrets
import select
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import check_openapi  # noqa: E402
import server as refserver  # noqa: E402

STATION = "st-12"
BASE = "/keystation/v1"
CERTS = None
TMP = None
SHARED = None  # one server for the tests that do not restart it; reset before each test


def setUpModule():
    global CERTS, TMP, SHARED
    TMP = tempfile.mkdtemp(prefix="cityapi-test.")
    CERTS = os.path.join(TMP, "certs")
    subprocess.run([os.path.join(HERE, "mkcerts.sh"), CERTS, STATION], check=True)
    SHARED = Server(os.path.join(TMP, "shared.db"))


def tearDownModule():
    try:
        if SHARED is not None:
            rc = SHARED.stop()
            if rc != 0:
                raise AssertionError(f"shared server.py exited {rc} on SIGTERM")
    finally:
        shutil.rmtree(TMP, ignore_errors=True)


def uuid7():
    ms = time.time_ns() // 1_000_000
    b = bytearray(ms.to_bytes(6, "big") + secrets.token_bytes(10))
    b[6] = 0x70 | (b[6] & 0x0F)
    b[8] = 0x80 | (b[8] & 0x3F)
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def event(seq=1, **kw):
    ev = {"eventId": uuid7(), "seq": seq, "type": "key.checkedOut",
          "occurredAt": "2026-11-28T17:02:11.123Z", "clock": {"synced": True},
          "bootId": "8c5f0e1e-boot", "monoMs": 123456, "compartment": 2,
          "reservationId": "r-881", "credentialId": "cred-77", "clubId": "club-42",
          "detail": {"door": "closed"}, "hash": secrets.token_hex(32), "prevHash": "0" * 64}
    ev.update(kw)
    return ev


def reservation(rid, **kw):
    d = {"identifier": rid, "startDate": "2026-11-28T17:00:00Z",
         "endDate": "2026-11-28T19:00:00Z",
         "organizer": {"identifier": "club-42", "name": "SV Warnemünde"},
         "compartments": [2], "reservationStatus": "confirmed"}
    d.update(kw)
    return d


def credential(cid, **kw):
    d = {"identifier": cid, "uidHmac": "ab" * 32, "cardType": "desfire",
         "member": {"identifier": "m-5", "name": "A. Trainer"}, "clubs": ["club-42"],
         "validFrom": "2026-01-01T00:00:00Z", "validUntil": None, "status": "active"}
    d.update(kw)
    return d


def heartbeat(**kw):
    d = {"stationId": STATION, "version": "0.1.0", "bootId": "b-1",
         "sentAt": "2026-11-28T17:00:00Z", "clock": {"synced": True}, "outboxDepth": 3,
         "deadLetters": 0,
         "compartments": [{"number": 1, "state": "idle", "door": "closed", "key": "present",
                           "outOfService": False}]}
    d.update(kw)
    return d


def usage(date="2026-11-28", parameters=None, station=STATION, **kw):
    """A daily usage summary as lockerd sends it (docs/api.md, docs/opendata.md)."""
    obs = {"phenomenonTime": "2026-11-28T17:00:00.000Z/2026-11-28T19:00:00.000Z",
           "resultTime": "2026-11-29T00:02:00.000Z", "result": "collected",
           "parameters": parameters if parameters is not None else
           {"reservationId": "r-1", "compartment": 1, "pickupDelaySeconds": 60,
            "keyOutSeconds": 3600}}
    d = {"date": date, "timezone": "Europe/Berlin", "sensorthings": {"Things": [{
        "name": "h-1 (Station)", "description": "A sports hall",
        "properties": {"stationId": station, "hall": "h-1"},
        "Datastreams": [{"name": f"{station} h-1: booked slots", "Observations": [obs]}]}]}}
    d.update(kw)
    return d


class Server:
    """One server.py process on fresh ports."""

    def __init__(self, db, *extra):
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "server.py"), "--db", db, "--certs", CERTS,
             "--port", "0", "--admin-port", "0", "--station", STATION, *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 15
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            r, _, _ = select.select([self.proc.stdout], [], [], max(left, 0))
            if not r:
                self.proc.kill()
                raise RuntimeError("server.py printed no ready line")
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                raise RuntimeError("server.py exited: " + self.proc.stderr.read().decode())
            line += chunk
        self.ready = json.loads(line)
        self.port = self.ready["port"]
        self.admin_port = self.ready["adminPort"]

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGUSR1)  # faulthandler: thread stacks to stderr
            time.sleep(0.5)
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("server.py did not stop on SIGTERM:\n"
                                 + self.proc.stderr.read().decode(errors="replace")) from None
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.proc.stdout.close()
            self.proc.stderr.close()
        return rc


def own_server(test):
    """Decorator: this test restarts its server, so it gets one of its own."""
    test.own_server = True
    return test


class ServerTest(unittest.TestCase):
    extra_args = ()
    own_server = False  # True: a server of its own (restarts, other arguments)

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="cityapi-srv.", dir=TMP)
        self.db = os.path.join(self.dir, "city.db")
        method = getattr(self, self._testMethodName)
        if self.own_server or self.extra_args or getattr(method, "own_server", False):
            self.srv = Server(self.db, *self.extra_args)
        else:
            self.srv = SHARED
            self.admin("POST", "/admin/reset", {})

    def tearDown(self):
        if self.srv is not SHARED:
            rc = self.srv.stop()
            self.assertEqual(rc, 0, "server.py must exit 0 on SIGTERM")

    def restart(self):
        self.assertIsNot(self.srv, SHARED, "set own_server = True to restart")
        self.assertEqual(self.srv.stop(), 0)
        self.srv = Server(self.db, *self.extra_args)

    # clients
    def context(self, cert="client", ca="server-ca"):
        ctx = ssl.create_default_context(cafile=os.path.join(CERTS, ca + ".pem"))
        if cert:
            ctx.load_cert_chain(os.path.join(CERTS, cert + ".pem"),
                                os.path.join(CERTS, cert + ".key"))
        return ctx

    def conn(self, cert="client", ca="server-ca", host="127.0.0.1", ctx=None):
        return http.client.HTTPSConnection(host, self.srv.port, timeout=10,
                                           context=ctx or self.context(cert, ca))

    def api(self, method, path, body=None, headers=None, cert="client", raw=None, conn=None,
            ctx=None):
        """-> (status, headers, parsed JSON body or None, raw body)"""
        c = conn or self.conn(cert, ctx=ctx)
        h = dict(headers or {})
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        c.request(method, path if path.startswith("/") else BASE + "/" + path, data, h)
        r = c.getresponse()
        payload = r.read()
        if conn is None:
            c.close()
        parsed = None
        if payload and r.getheader("Content-Type", "").split(";")[0] in (
                "application/json", "application/problem+json"):
            parsed = json.loads(payload)
        return r.status, r, parsed, payload

    def admin(self, method, path, body=None, expect=200):
        c = http.client.HTTPConnection("127.0.0.1", self.srv.admin_port, timeout=10)
        data = json.dumps(body).encode() if body is not None else None
        c.request(method, path, data, {"Content-Type": "application/json"} if data else {})
        r = c.getresponse()
        out = json.loads(r.read())
        c.close()
        if expect is not None:
            self.assertEqual(r.status, expect, out)
        return out

    def fault(self, **spec):
        return self.admin("POST", "/admin/faults", spec)["id"]

    def assertProblem(self, status, resp, want):
        st, r, body, _ = resp
        self.assertEqual(st, want, body)
        self.assertEqual(r.getheader("Content-Type"), "application/problem+json")
        self.assertEqual(body["status"], want)
        for k in ("type", "title", "detail"):
            self.assertIn(k, body)

    def post_events(self, events, **kw):
        return self.api("POST", f"stations/{STATION}/events", {"events": events}, **kw)

    def walk(self, feed, limit=None, start=None):
        """Follows `next` to the last page; -> (items, urls requested, last next)."""
        url = start or f"{BASE}/stations/{STATION}/{feed}" + (f"?limit={limit}" if limit else "")
        items, urls = [], []
        conn = self.conn()  # one keep-alive connection for the walk
        self.addCleanup(conn.close)
        for _ in range(1000):
            st, _, body, _ = self.api("GET", url, conn=conn)
            self.assertEqual(st, 200, body)
            urls.append(url)
            self.assertEqual(body["license"], refserver.LICENSE)
            full = f"https://127.0.0.1:{self.srv.port}{url}"
            if not body["items"]:
                self.assertEqual(body["next"], full, "last page: next must be the request URL")
                return items, urls, body["next"]
            last = body["items"][-1]
            q = urllib.parse.parse_qs(urllib.parse.urlsplit(body["next"]).query)
            self.assertEqual(q["afterTimestamp"], [str(last["modified"])])
            self.assertEqual(q["afterId"], [last["id"]])
            if limit:
                self.assertEqual(q["limit"], [str(limit)])
                self.assertLessEqual(len(body["items"]), limit)
            items.extend(body["items"])
            nxt = urllib.parse.urlsplit(body["next"])
            self.assertEqual((nxt.scheme, nxt.netloc), ("https", f"127.0.0.1:{self.srv.port}"))
            url = nxt.path + "?" + nxt.query
        self.fail("feed does not end")


class RpdeTest(ServerTest):
    def test_paging_with_ties_visits_every_item_once_in_order(self):
        # five items share one modified (one admin call), then three single writes
        tied = self.admin("POST", "/admin/reservations",
                          {"items": [reservation(r) for r in ("r-c", "r-a", "r-e", "r-b", "r-d")]})
        later = [self.admin("POST", "/admin/reservations", reservation(r))["modified"]
                 for r in ("r-0", "r-z", "r-m")]
        self.assertEqual(tied["ids"], ["r-c", "r-a", "r-e", "r-b", "r-d"])
        self.assertLess(tied["modified"], later[0])
        self.assertEqual(sorted(set(later)), later, "modified strictly increasing")
        want = ["r-a", "r-b", "r-c", "r-d", "r-e", "r-0", "r-z", "r-m"]
        for limit in (None, 1, 2, 3, 5, 500):
            with self.subTest(limit=limit):
                items, urls, _ = self.walk("reservations", limit)
                self.assertEqual([i["id"] for i in items], want)
                self.assertEqual([i["modified"] for i in items],
                                 [tied["modified"]] * 5 + later)
                for it in items:
                    self.assertEqual((it["state"], it["kind"]), ("updated", "HallReservation"))
                    self.assertEqual(it["data"]["identifier"], it["id"])
                if limit == 2:
                    # the page boundaries fall inside the tie: (m, r-b) then (m, r-d)
                    self.assertIn(f"afterTimestamp={tied['modified']}&afterId=r-b&limit=2",
                                  urls[1])

    def test_cursor_inside_a_tie_uses_greater_than_on_id(self):
        m = self.admin("POST", "/admin/reservations",
                       {"items": [reservation(r) for r in ("r-1", "r-2", "r-3")]})["modified"]
        st, _, body, _ = self.api(
            "GET", f"stations/{STATION}/reservations?afterTimestamp={m}&afterId=r-2")
        self.assertEqual(st, 200)
        self.assertEqual([i["id"] for i in body["items"]], ["r-3"])
        st, _, body, _ = self.api(
            "GET", f"stations/{STATION}/reservations?afterTimestamp={m - 1}&afterId=zzz")
        self.assertEqual([i["id"] for i in body["items"]], ["r-1", "r-2", "r-3"])

    def test_last_page_next_is_the_request_url_and_new_items_appear_there(self):
        self.admin("POST", "/admin/reservations", reservation("r-1"))
        items, _, last = self.walk("reservations", 100)
        self.assertEqual(len(items), 1)
        path = urllib.parse.urlsplit(last)
        url = path.path + "?" + path.query
        st, _, body, _ = self.api("GET", url)
        self.assertEqual((st, body["items"], body["next"]), (200, [], last))
        self.admin("POST", "/admin/reservations", reservation("r-2"))
        st, _, body, _ = self.api("GET", url)
        self.assertEqual([i["id"] for i in body["items"]], ["r-2"])

    def test_update_moves_the_item_behind_the_cursor(self):
        self.admin("POST", "/admin/reservations", {"items": [reservation("r-1"),
                                                             reservation("r-2")]})
        _, _, last = self.walk("reservations")
        m = self.admin("PATCH", "/admin/reservations/r-1",
                       {"startDate": "2026-11-28T18:00:00Z", "compartments": [3]})["modified"]
        items, _, _ = self.walk("reservations", start=urllib.parse.urlsplit(last).path + "?"
                                + urllib.parse.urlsplit(last).query)
        self.assertEqual([(i["id"], i["modified"]) for i in items], [("r-1", m)])
        self.assertEqual(items[0]["data"]["startDate"], "2026-11-28T18:00:00Z")
        self.assertEqual(items[0]["data"]["compartments"], [3])
        all_items, _, _ = self.walk("reservations")
        self.assertEqual([i["id"] for i in all_items], ["r-2", "r-1"])

    def test_cancel_delete_and_move_to_another_station(self):
        self.admin("POST", "/admin/reservations", {"items": [reservation(r) for r in
                                                             ("r-1", "r-2", "r-3")]})
        self.admin("POST", "/admin/reservations/r-1/cancel")
        self.admin("DELETE", "/admin/reservations/r-2")
        self.admin("PATCH", "/admin/reservations/r-3", {"moveTo": "st-99"})
        self.admin("DELETE", "/admin/reservations/r-2", expect=404)
        items, _, _ = self.walk("reservations")
        by_id = {i["id"]: i for i in items}
        self.assertEqual([i["id"] for i in items], ["r-1", "r-2", "r-3"])
        self.assertEqual(by_id["r-1"]["data"]["reservationStatus"], "cancelled")
        for rid in ("r-2", "r-3"):
            self.assertEqual(by_id[rid]["state"], "deleted")
            self.assertEqual(by_id[rid]["kind"], "HallReservation")
            self.assertNotIn("data", by_id[rid])
        other = self.admin("GET", "/admin/feeds/reservations?stationId=st-99")["items"]
        self.assertEqual([(i["id"], i["state"]) for i in other], [("r-3", "updated")])
        # a deleted id that comes back is an "updated" item again
        self.admin("POST", "/admin/reservations", reservation("r-2"))
        items, _, _ = self.walk("reservations")
        self.assertEqual([(i["id"], i["state"]) for i in items][-1], ("r-2", "updated"))

    def test_credentials_feed(self):
        self.admin("POST", "/admin/credentials", credential("cred-77"))
        self.admin("POST", "/admin/credentials/cred-77/revoke")
        self.admin("POST", "/admin/credentials", credential("cred-78", cardType="uid"))
        self.admin("DELETE", "/admin/credentials/cred-78")
        items, _, _ = self.walk("credentials", 1)
        self.assertEqual([(i["id"], i["state"], i["kind"]) for i in items],
                         [("cred-77", "updated", "Credential"), ("cred-78", "deleted", "Credential")])
        self.assertEqual(items[0]["data"]["status"], "revoked")
        self.assertNotIn("uid", items[0]["data"])

    def test_admin_validates_data_unless_unchecked(self):
        bad = reservation("r-1", endDate="2026-11-28T16:00:00Z")
        self.assertIn("endDate", self.admin("POST", "/admin/reservations", bad, expect=400)["error"])
        self.admin("POST", "/admin/reservations", dict(bad, unchecked=True))
        items, _, _ = self.walk("reservations")
        self.assertEqual(items[0]["data"]["endDate"], "2026-11-28T16:00:00Z")
        self.admin("POST", "/admin/credentials", credential("c-1", uidHmac="04A1B2"), expect=400)

    def test_cursor_older_than_purged_tombstone_gets_410(self):
        self.admin("POST", "/admin/reservations", reservation("r-1"))
        self.admin("POST", "/admin/reservations", reservation("r-2"))
        self.admin("DELETE", "/admin/reservations/r-2")
        items, _, _ = self.walk("reservations")
        first, tomb = items
        old_cursor = (f"stations/{STATION}/reservations?afterTimestamp={first['modified']}"
                      f"&afterId={first['id']}")
        new_cursor = (f"stations/{STATION}/reservations?afterTimestamp={tomb['modified']}"
                      f"&afterId={tomb['id']}")
        # retention not reached: nothing purged, the old cursor still works
        self.assertEqual(self.admin("POST", "/admin/purge-tombstones",
                                    {"olderThanMs": 3600_000})["purged"], 0)
        self.assertEqual(self.api("GET", old_cursor)[0], 200)
        self.assertEqual(self.admin("POST", "/admin/purge-tombstones", {})["purged"], 1)
        self.assertProblem(410, self.api("GET", old_cursor), 410)
        # a cursor at or past the purged tombstone missed nothing; no cursor is a resync
        self.assertEqual(self.api("GET", new_cursor)[0], 200)
        st, _, body, _ = self.api("GET", f"stations/{STATION}/reservations")
        self.assertEqual((st, [i["id"] for i in body["items"]]), (200, ["r-1"]))
        # the watermark is per feed: credentials are not affected
        st, _, _, _ = self.api("GET", f"stations/{STATION}/credentials?afterTimestamp=1&afterId=a")
        self.assertEqual(st, 200)

    def test_bad_queries(self):
        for q in ("afterTimestamp=5", "afterId=r-1", "afterTimestamp=x&afterId=r-1",
                  "limit=0", "limit=501", "limit=ten", "limit=1&limit=2",
                  "afterTimestamp=5&afterId=bad%20id", "since=5", "limit"):
            with self.subTest(q=q):
                self.assertProblem(400, self.api("GET", f"stations/{STATION}/reservations?{q}"),
                                   400)
        self.assertEqual(self.api("GET", f"stations/{STATION}/reservations?limit=500")[0], 200)

    @own_server
    def test_modified_strictly_increasing_across_restart(self):
        ms = [self.admin("POST", "/admin/reservations", reservation(f"r-{i}"))["modified"]
              for i in range(20)]
        self.restart()
        ms.append(self.admin("POST", "/admin/reservations", reservation("r-x"))["modified"])
        ms.append(self.admin("DELETE", "/admin/reservations/r-x")["modified"])
        self.assertTrue(all(a < b for a, b in zip(ms, ms[1:])), ms)
        items, _, _ = self.walk("reservations")
        self.assertEqual(len(items), 21, "state survives a restart")


class AutoRetentionTest(ServerTest):
    # retention of zero days: the server purges every tombstone by itself at the next
    # feed request (the automatic purge path, without the admin call)
    extra_args = ("--tombstone-retention-days", "0")

    def test_automatic_purge(self):
        self.admin("POST", "/admin/reservations", {"items": [reservation("r-1"),
                                                             reservation("r-2")]})
        m = self.admin("DELETE", "/admin/reservations/r-2")["modified"]
        first = self.admin("GET", "/admin/feeds/reservations")["items"][0]
        while self.admin("GET", "/admin/health") and time.time_ns() // 1_000_000 <= m:
            pass  # tombstone must be in the past (modified can run ahead of the clock)
        self.assertProblem(410, self.api(
            "GET", f"stations/{STATION}/reservations?afterTimestamp={first['modified']}"
            f"&afterId=r-1"), 410)


class ConfigTest(ServerTest):
    def test_etag_and_304(self):
        st, r, body, _ = self.api("GET", f"stations/{STATION}")
        config = body
        self.assertEqual(st, 200)
        etag = r.getheader("ETag")
        self.assertRegex(etag, r'^"[^"]+"$')
        self.assertEqual(body["stationId"], STATION)
        self.assertEqual(set(body["pollIntervals"]),
                         {"reservations", "credentials", "config", "heartbeat"})
        st, r, body, raw = self.api("GET", f"stations/{STATION}", headers={"If-None-Match": etag})
        self.assertEqual((st, raw, r.getheader("ETag")), (304, b"", etag))
        st, *_ = self.api("GET", f"stations/{STATION}", headers={"If-None-Match": "W/" + etag})
        self.assertEqual(st, 304)
        st, *_ = self.api("GET", f"stations/{STATION}", headers={"If-None-Match": '"other"'})
        self.assertEqual(st, 200)
        cfg = dict(config, name="Sporthalle Reutershagen",
                   pollIntervals={"reservations": 5, "credentials": 5, "config": 5,
                                  "heartbeat": 5})
        new = self.admin("PUT", f"/admin/stations/{STATION}/config", cfg)["etag"]
        self.assertNotEqual(new, etag)
        self.assertEqual(self.admin("PUT", f"/admin/stations/{STATION}/config", cfg)["etag"], new,
                         "same content, same ETag")
        st, r, body, _ = self.api("GET", f"stations/{STATION}", headers={"If-None-Match": etag})
        self.assertEqual((st, r.getheader("ETag"), body["name"]),
                         (200, new, "Sporthalle Reutershagen"))

    def test_unknown_station_404_and_routing_errors(self):
        self.assertProblem(404, self.api("GET", "/nope"), 404)
        self.assertProblem(404, self.api("GET", f"stations/{STATION}/nope"), 404)
        resp = self.api("DELETE", f"stations/{STATION}/events")
        self.assertProblem(405, resp, 405)
        self.assertEqual(resp[1].getheader("Allow"), "POST")


class EventsTest(ServerTest):
    def counts(self):
        return self.admin("GET", "/admin/events")

    @own_server
    def test_created_then_duplicate_forever(self):
        evs = [event(i) for i in range(1, 4)]
        st, _, body, _ = self.post_events(evs)
        self.assertEqual(st, 200)
        self.assertEqual([(r["eventId"], r["status"]) for r in body["results"]],
                         [(e["eventId"], "created") for e in evs])
        self.assertRegex(body["serverTime"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
        ev4 = event(4)
        st, _, body, _ = self.post_events(evs + [ev4])
        self.assertEqual([r["status"] for r in body["results"]],
                         ["duplicate"] * 3 + ["created"])
        self.restart()
        changed = dict(evs[0], type="key.returned")
        st, _, body, _ = self.post_events([changed])
        self.assertEqual(body["results"][0]["status"], "duplicate")
        rep = self.counts()
        self.assertEqual([e["eventId"] for e in rep["events"]],
                         [e["eventId"] for e in evs + [ev4]])
        self.assertEqual(rep["events"][0]["type"], "key.checkedOut", "first body kept")
        self.assertEqual(rep["counts"][evs[0]["eventId"]],
                         {"created": 1, "duplicate": 2, "rejected": 0, "mismatch": 1})
        self.assertEqual(rep["duplicateAttempts"], 4)

    def test_duplicate_inside_one_batch(self):
        ev = event()
        st, _, body, _ = self.post_events([ev, ev])
        self.assertEqual([r["status"] for r in body["results"]], ["created", "duplicate"])

    def test_each_invalid_event_is_rejected_alone(self):
        upper = event()
        upper["eventId"] = upper["eventId"].upper()
        v4 = event()
        v4["eventId"] = v4["eventId"][:14] + "4" + v4["eventId"][15:]
        nocl = event()
        del nocl["clock"]["synced"]
        bad = {
            "eventId": v4, "eventId upper": upper, "type": event(type=""),
            "occurredAt": event(occurredAt="2026-11-28T17:02:11+01:00"),
            "occurredAt date": event(occurredAt="2026-13-28T17:02:11Z"),
            "seq": event(seq=0), "seq string": event(seq="5"), "monoMs": event(monoMs=-1),
            "clock.synced": nocl, "bootId": event(bootId=""), "hash": event(hash="ab" * 31),
            "prevHash": event(prevHash="AB" * 32), "compartment": event(compartment=33),
            "reservationId": event(reservationId="r 1"), "memberId": event(memberId="m-5"),
            "detail.uid": event(detail={"card": {"uid": "04A1B2"}}),
            "detail.name": event(detail={"name": "Anna"}), "operator": event(operator=""),
            "clubId": event(clubId=None),
        }
        good = [event(1), event(2)]
        batch = [good[0]] + list(bad.values()) + [good[1]]
        st, _, body, _ = self.post_events(batch)
        self.assertEqual(st, 200, body)
        res = body["results"]
        self.assertEqual([r["eventId"] for r in res], [e["eventId"] for e in batch])
        self.assertEqual(res[0]["status"], "created")
        self.assertEqual(res[-1]["status"], "created")
        for (name, _), r in zip(bad.items(), res[1:-1]):
            with self.subTest(field=name):
                self.assertEqual(r["status"], "rejected")
                self.assertEqual(r["problem"]["status"], 422)
                self.assertIn(name.split()[0].split(".")[-1], r["problem"]["detail"])
        rep = self.counts()
        self.assertEqual([e["eventId"] for e in rep["events"]], [g["eventId"] for g in good])
        self.assertEqual(len(rep["rejected"]), len(bad))
        # a rejected id is not taken: sent valid later it is created
        fixed = event()
        fixed["eventId"] = bad["seq"]["eventId"]
        st, _, body, _ = self.post_events([fixed])
        self.assertEqual(body["results"][0]["status"], "created")

    def test_optional_fields_may_be_absent(self):
        ev = event()
        for k in ("compartment", "reservationId", "credentialId", "clubId", "detail"):
            del ev[k]
        st, _, body, _ = self.post_events([ev, event(reason="no-booking", operator="tech1",
                                                      type="access.denied")])
        self.assertEqual([r["status"] for r in body["results"]], ["created", "created"])

    def test_malformed_batches(self):
        path = f"stations/{STATION}/events"
        self.assertProblem(400, self.api("POST", path, raw=b'{"events": [',
                                         headers={"Content-Type": "application/json"}), 400)
        self.assertProblem(400, self.api("POST", path, raw=b'{"events": [], "events": []}',
                                         headers={"Content-Type": "application/json"}), 400)
        self.assertProblem(415, self.api("POST", path, raw=b'{"events": []}',
                                         headers={"Content-Type": "text/plain"}), 415)
        self.assertProblem(422, self.post_events([]), 422)
        self.assertProblem(422, self.post_events([event(i) for i in range(1, 102)]), 422)
        self.assertProblem(422, self.post_events([event(), "x"]), 422)
        self.assertProblem(422, self.api("POST", path, {"event": [event()]}), 422)
        self.assertEqual(self.post_events([event(i) for i in range(1, 101)])[0], 200)
        self.assertEqual(len(self.counts()["events"]), 100)


class HeartbeatTest(ServerTest):
    def test_heartbeat_stored(self):
        self.admin("GET", "/admin/heartbeat", expect=404)
        st, r, _, raw = self.api("PUT", f"stations/{STATION}/status", heartbeat(outboxDepth=3))
        self.assertEqual((st, raw), (204, b""))
        self.api("PUT", f"stations/{STATION}/status", heartbeat(outboxDepth=0))
        hb = self.admin("GET", "/admin/heartbeat")
        self.assertEqual((hb["count"], hb["heartbeat"]["outboxDepth"]), (2, 0))
        self.assertEqual(hb["heartbeat"], heartbeat(outboxDepth=0))
        self.assertProblem(422, self.api("PUT", f"stations/{STATION}/status",
                                         heartbeat(stationId="st-13")), 422)
        self.assertProblem(422, self.api("PUT", f"stations/{STATION}/status",
                                         heartbeat(clock={})), 422)


class UsageTest(ServerTest):
    def test_put_replaces_and_counts(self):
        self.assertEqual(self.admin("GET", "/admin/usage"), {"days": []})
        path = f"stations/{STATION}/usage/2026-11-28"
        st, _, _, raw = self.api("PUT", path, usage())
        self.assertEqual((st, raw), (204, b""))
        self.assertEqual(self.api("PUT", f"stations/{STATION}/usage/2026-11-27",
                                  usage("2026-11-27"))[0], 204)
        second = usage(parameters={"reservationId": "r-1", "compartment": 1, "club": "c-1"})
        self.assertEqual(self.api("PUT", path, second)[0], 204)
        days = self.admin("GET", "/admin/usage")["days"]
        self.assertEqual([(d["date"], d["count"]) for d in days],
                         [("2026-11-27", 1), ("2026-11-28", 2)])
        self.assertEqual(days[1]["document"], second)
        self.assertEqual(self.admin("GET", "/admin/usage?stationId=st-13"), {"days": []})

    def test_refused(self):
        base = f"stations/{STATION}/usage/"
        self.assertProblem(400, self.api("PUT", base + "2026-02-30", usage("2026-02-30")), 400)
        self.assertProblem(400, self.api("PUT", base + "28.11.2026", usage()), 400)
        self.assertProblem(422, self.api("PUT", base + "2026-11-29", usage()), 422)
        self.assertProblem(422, self.api("PUT", base + "2026-11-28", usage(extra=1)), 422)
        self.assertProblem(422, self.api("PUT", base + "2026-11-28", usage(station="st-13")),
                           422)
        for personal in ({"memberId": "m-5"}, {"credentialId": "cred-1"}, {"name": "A"}):
            self.assertProblem(422, self.api("PUT", base + "2026-11-28", usage(
                parameters={"reservationId": "r-1", **personal})), 422)
        self.assertProblem(415, self.api("PUT", base + "2026-11-28", raw=b"{}",
                                         headers={"Content-Type": "text/plain"}), 415)
        self.assertProblem(403, self.api("PUT", "stations/st-13/usage/2026-11-28", usage()), 403)
        self.assertProblem(405, self.api("GET", base + "2026-11-28"), 405)
        self.assertEqual(self.admin("GET", "/admin/usage"), {"days": []})


class TlsTest(ServerTest):
    ROUTES = [("GET", f"stations/{STATION}", None), ("GET", f"stations/{STATION}/reservations", None),
              ("GET", f"stations/{STATION}/credentials", None),
              ("POST", f"stations/{STATION}/events", {"events": [event()]}),
              ("PUT", f"stations/{STATION}/status", heartbeat())]

    def test_no_client_cert_401(self):
        for method, path, body in self.ROUTES:
            with self.subTest(path=path):
                self.assertProblem(401, self.api(method, path, body, cert=None), 401)
        self.assertEqual(self.admin("GET", "/admin/events")["events"], [])

    def handshake_fails(self, cert):
        c = self.conn(cert)
        with self.assertRaises((ssl.SSLError, ConnectionResetError, BrokenPipeError,
                                http.client.RemoteDisconnected)):
            # TLS 1.3: the client may finish its side before the server's alert arrives,
            # so the failure shows on the first request at the latest
            c.request("GET", f"{BASE}/stations/{STATION}")
            c.getresponse().read()
        c.close()

    def wait_handshake_failure(self, text):
        """The server notes a failed handshake right after sending its alert, so the
        client may see the failure first: wait (bounded) until the note is there. Notes
        of an earlier test's connections may come in late too, hence the match on text."""
        deadline = time.monotonic() + 5
        while True:
            log = self.admin("GET", "/admin/requests")
            if any(text in f["error"] for f in log["handshakeFailures"]):
                return log
            if time.monotonic() > deadline:
                self.fail(f"no handshake failure '{text}' in {log['handshakeFailures']}")

    def test_expired_client_cert_fails_the_handshake(self):
        self.handshake_fails("client-expired")
        log = self.wait_handshake_failure("certificate has expired")
        self.assertEqual(log["requests"], [])

    def test_unknown_ca_client_cert_fails_the_handshake(self):
        self.handshake_fails("client-unknown")
        log = self.wait_handshake_failure("unable to get local issuer certificate")
        self.assertEqual(log["requests"], [])

    def test_cn_mismatch_403(self):
        self.admin("PUT", "/admin/stations/st-13/config", {"name": "other"})
        for method, path, body in self.ROUTES:
            path = path.replace(STATION, "st-13")
            with self.subTest(path=path):
                self.assertProblem(403, self.api(method, path, body), 403)

    def test_hostname_and_ip_both_verify(self):
        for host in ("localhost", "127.0.0.1"):
            c = self.conn(host=host)
            c.request("GET", f"{BASE}/stations/{STATION}")
            self.assertEqual(c.getresponse().status, 200)
            c.close()

    def test_tls_1_1_refused(self):
        ctx = self.context()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
            ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        with self.assertRaises((ssl.SSLError, ConnectionResetError)):
            self.api("GET", f"stations/{STATION}", ctx=ctx)

    def test_mitm_identity_is_refused_by_a_verifying_client(self):
        self.admin("PUT", "/admin/tls", {"identity": "mitm"})
        with self.assertRaises(ssl.SSLCertVerificationError):
            self.api("GET", f"stations/{STATION}")
        # the server really presents the MITM cert: a client trusting wrong-ca gets in
        ctx = self.context(ca="wrong-ca")
        self.assertEqual(self.api("GET", f"stations/{STATION}", ctx=ctx)[0], 200)
        self.admin("PUT", "/admin/tls", {"identity": "normal"})
        self.assertEqual(self.api("GET", f"stations/{STATION}")[0], 200)


class FaultTest(ServerTest):
    def stored(self):
        return [e["eventId"] for e in self.admin("GET", "/admin/events")["events"]]

    def test_drop_after_commit_then_duplicate(self):
        self.fault(kind="drop_after_commit", path="/events$")
        evs = [event(1), event(2)]
        with self.assertRaises(http.client.RemoteDisconnected):
            self.post_events(evs)
        self.assertEqual(self.stored(), [e["eventId"] for e in evs], "committed before the drop")
        st, _, body, _ = self.post_events(evs)  # the retry: the fault was one-shot
        self.assertEqual([r["status"] for r in body["results"]], ["duplicate", "duplicate"])
        self.assertEqual(self.stored(), [e["eventId"] for e in evs])
        log = self.admin("GET", "/admin/requests")["requests"]
        self.assertEqual([(r["status"], r["fault"]) for r in log],
                         [(None, "drop_after_commit"), (200, None)])

    def test_drop_before_processing(self):
        self.fault(kind="drop")
        with self.assertRaises(http.client.RemoteDisconnected):
            self.post_events([event()])
        self.assertEqual(self.stored(), [])

    def test_status_with_retry_after(self):
        self.fault(kind="status", status=503, retryAfter=7, path="/events$")
        self.fault(kind="status", status=429, retryAfter="Sat, 28 Nov 2026 18:00:00 GMT")
        resp = self.post_events([event()])
        self.assertProblem(503, resp, 503)
        self.assertEqual(resp[1].getheader("Retry-After"), "7")
        resp = self.api("GET", f"stations/{STATION}")
        self.assertProblem(429, resp, 429)
        self.assertEqual(resp[1].getheader("Retry-After"), "Sat, 28 Nov 2026 18:00:00 GMT")
        self.assertEqual(self.stored(), [], "not processed")
        self.assertEqual(self.api("GET", f"stations/{STATION}")[0], 200)
        self.assertEqual(self.admin("GET", "/admin/faults")["faults"], [])

    def test_count_path_and_method_filters(self):
        fid = self.fault(kind="status", status=500, path="/reservations$", method="GET", count=2)
        self.assertEqual(self.api("GET", f"stations/{STATION}")[0], 200)
        self.assertEqual(self.api("GET", f"stations/{STATION}/credentials")[0], 200)
        self.assertEqual(self.api("GET", f"stations/{STATION}/reservations")[0], 500)
        self.assertEqual(self.admin("GET", "/admin/faults")["faults"][0]["remaining"], 1)
        self.assertEqual(self.api("GET", f"stations/{STATION}/reservations")[0], 500)
        self.assertEqual(self.api("GET", f"stations/{STATION}/reservations")[0], 200)
        fid = self.fault(kind="status", status=502, count=-1, method="PUT")
        for _ in range(3):
            self.assertEqual(self.api("PUT", f"stations/{STATION}/status", heartbeat())[0], 502)
        self.assertEqual(self.api("GET", f"stations/{STATION}")[0], 200)
        self.admin("DELETE", f"/admin/faults/{fid}")
        self.assertEqual(self.api("PUT", f"stations/{STATION}/status", heartbeat())[0], 204)
        self.admin("POST", "/admin/faults", {"kind": "nonsense"}, expect=400)

    def test_body_filter(self):
        """A fault with "body" hits only the requests whose body matches: every batch
        that carries one event, none without it."""
        bad = event(3)
        self.fault(kind="status", status=422, path="/events$", body=bad["eventId"], count=-1)
        self.assertProblem(422, self.post_events([event(1), bad]), 422)
        self.assertProblem(422, self.post_events([bad]), 422)
        self.assertEqual(self.stored(), [])
        self.assertEqual(self.post_events([event(1), event(2)])[0], 200)
        self.assertEqual(self.api("GET", f"stations/{STATION}")[0], 200, "no body, no match")
        self.assertEqual(self.admin("GET", "/admin/faults")["faults"][0]["hits"], 2)
        self.admin("POST", "/admin/faults", {"kind": "status", "body": "("}, expect=400)
        self.admin("POST", "/admin/faults", {"kind": "status", "body": 5}, expect=400)

    def test_delay(self):
        self.fault(kind="delay", ms=300, path="/stations/[^/]+$")
        self.fault(kind="status", status=503, path="/stations/[^/]+$")
        t = time.monotonic()
        st, *_ = self.api("GET", f"stations/{STATION}")
        self.assertGreaterEqual(time.monotonic() - t, 0.3)
        self.assertEqual(st, 503, "a delay combines with another fault")
        t = time.monotonic()
        self.assertEqual(self.api("GET", f"stations/{STATION}")[0], 200)
        self.assertLess(time.monotonic() - t, 0.3)

    def test_truncated_body(self):
        self.fault(kind="truncate", path="/events$")
        ev = event()
        c = self.conn()
        c.request("POST", f"{BASE}/stations/{STATION}/events",
                  json.dumps({"events": [ev]}).encode(), {"Content-Type": "application/json"})
        r = c.getresponse()
        self.assertEqual(r.status, 200)
        with self.assertRaises(http.client.IncompleteRead):
            r.read()
        c.close()
        self.assertEqual(self.stored(), [ev["eventId"]], "processed before truncating")
        self.fault(kind="truncate", process=False)
        c = self.conn()
        c.request("PUT", f"{BASE}/stations/{STATION}/status", json.dumps(heartbeat()).encode(),
                  {"Content-Type": "application/json"})
        with self.assertRaises(http.client.IncompleteRead):
            c.getresponse().read()
        c.close()
        self.admin("GET", "/admin/heartbeat", expect=404)

    def test_malformed_body(self):
        self.admin("POST", "/admin/reservations", reservation("r-1"))
        self.fault(kind="malformed", path="/reservations$")
        st, r, raw = self._raw("GET", f"stations/{STATION}/reservations")
        self.assertEqual(st, 200)
        self.assertEqual(r.getheader("Content-Type"), "application/json")
        self.assertEqual(int(r.getheader("Content-Length")), len(raw))
        with self.assertRaises(ValueError):
            json.loads(raw)
        self.fault(kind="malformed", process=False, path="/events$")
        st, _, raw = self._raw("POST", f"stations/{STATION}/events", {"events": [event()]})
        with self.assertRaises(ValueError):
            json.loads(raw)
        self.assertEqual(self.stored(), [])

    def _raw(self, method, path, body=None):
        c = self.conn()
        c.request(method, f"{BASE}/{path}", json.dumps(body).encode() if body else None,
                  {"Content-Type": "application/json"} if body else {})
        r = c.getresponse()
        raw = r.read()
        c.close()
        return r.status, r, raw

    def test_foreign_next(self):
        self.admin("POST", "/admin/reservations", reservation("r-1"))
        self.fault(kind="foreign_next", base="https://127.0.0.1:1/elsewhere")
        st, _, body, _ = self.api("GET", f"stations/{STATION}/reservations")
        self.assertTrue(body["next"].startswith(
            f"https://127.0.0.1:1/elsewhere/stations/{STATION}/reservations?"), body["next"])
        st, _, body, _ = self.api("GET", f"stations/{STATION}/reservations")
        self.assertTrue(body["next"].startswith(f"https://127.0.0.1:{self.srv.port}{BASE}/"))

    def test_keep_alive_survives_faults_that_answer(self):
        c = self.conn()
        self.fault(kind="status", status=503, retryAfter=1)
        self.assertEqual(self.api("GET", f"stations/{STATION}", conn=c)[0], 503)
        self.assertEqual(self.api("POST", f"stations/{STATION}/events", {"events": [event()]},
                                  conn=c)[0], 200)
        self.assertEqual(self.api("GET", f"stations/{STATION}", conn=c)[0], 200)
        c.close()


class EnrollTest(ServerTest):
    def csr(self, cn):
        key = os.path.join(self.dir, cn + ".key")
        out = subprocess.run(
            ["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", key, "-subj", f"/CN={cn}"],
            check=True, capture_output=True, text=True)
        return key, out.stdout

    def enroll(self, token, body, cert=None):
        h = {"Authorization": f"Bearer {token}"} if token else {}
        return self.api("POST", "provisioning/enroll", body, headers=h, cert=cert)

    def test_enroll_one_time_token(self):
        token = self.admin("POST", "/admin/enroll-tokens", {"stationId": "st-99"})["token"]
        key, csr = self.csr("st-99")
        _, bad_csr = self.csr("st-98")
        self.assertProblem(401, self.enroll(None, {"stationId": "st-99", "csr": csr}), 401)
        resp = self.enroll("unknown-token", {"stationId": "st-99", "csr": csr})
        self.assertProblem(401, resp, 401)
        self.assertEqual(resp[1].getheader("WWW-Authenticate"), 'Bearer realm="enroll"')
        self.assertProblem(403, self.enroll(token, {"stationId": "st-98", "csr": bad_csr}), 403)
        self.assertProblem(422, self.enroll(token, {"stationId": "st-99", "csr": bad_csr}), 422)
        self.assertProblem(422, self.enroll(token, {"stationId": "st-99", "csr": "garbage"}), 422)
        # failed attempts do not use the token up
        st, _, body, _ = self.enroll(token, {"stationId": "st-99", "csr": csr})
        self.assertEqual(st, 201, body)
        self.assertEqual(body["stationId"], "st-99")
        with open(os.path.join(CERTS, "server-ca.pem")) as f:
            self.assertEqual(body["caChain"], f.read())
        crt = os.path.join(self.dir, "st-99.pem")
        with open(crt, "w") as f:
            f.write(body["certificate"])
        v = subprocess.run(["openssl", "verify", "-CAfile", os.path.join(CERTS, "client-ca.pem"),
                            "-purpose", "sslclient", crt], capture_output=True, text=True)
        self.assertEqual(v.returncode, 0, v.stdout + v.stderr)
        self.assertProblem(401, self.enroll(token, {"stationId": "st-99", "csr": csr}), 401)
        self.assertEqual(self.admin("GET", "/admin/enroll-tokens")["tokens"],
                         [{"token": token, "stationId": "st-99", "used": True}])
        # the new certificate is accepted for its own station (404: no config yet) ...
        ctx = ssl.create_default_context(cafile=os.path.join(CERTS, "server-ca.pem"))
        ctx.load_cert_chain(crt, key)
        self.assertProblem(404, self.api("GET", "stations/st-99", ctx=ctx), 404)
        self.admin("PUT", "/admin/stations/st-99/config", {"name": "Halle 99"})
        st, _, body, _ = self.api("GET", "stations/st-99", ctx=ctx)
        self.assertEqual((st, body["stationId"]), (200, "st-99"))
        # ... and for no other
        self.assertProblem(403, self.api("GET", f"stations/{STATION}", ctx=ctx), 403)


def _schema_tools():
    try:
        import jsonschema  # noqa: F401
        import yaml  # noqa: F401
        return True
    except ImportError:
        return False


@unittest.skipUnless(_schema_tools(), "python3-yaml and python3-jsonschema needed")
class ShapesTest(ServerTest):
    """What the server sends and accepts matches the schemas of docs/openapi.yaml."""

    def assertShape(self, name, instance):
        errors = check_openapi.schema_validator(check_openapi.load_spec(), name)(instance)
        self.assertEqual(errors, [], f"{name}: {json.dumps(instance)[:300]}")

    def test_shapes(self):
        self.admin("POST", "/admin/reservations", reservation("r-1"))
        self.admin("POST", "/admin/credentials", credential("cred-1"))
        self.admin("POST", "/admin/credentials", credential("cred-2", validFrom=None))
        self.admin("DELETE", "/admin/reservations/r-1")
        self.assertShape("StationConfig", self.api("GET", f"stations/{STATION}")[2])
        for feed, name in (("reservations", "ReservationPage"),
                           ("credentials", "CredentialPage")):
            page = self.api("GET", f"stations/{STATION}/{feed}")[2]
            self.assertTrue(page["items"])
            self.assertShape(name, page)
        evs = [event(1), event(seq=0)]
        for ev in evs[:1]:
            self.assertShape("Event", ev)
        self.assertShape("Heartbeat", heartbeat())
        self.assertShape("UsageSummary", usage())
        self.assertShape("EventResults", self.post_events(evs)[2])
        self.assertShape("Problem", self.api("GET", f"stations/{STATION}?x", cert=None)[2])
        # and the schema is not too lax: what the server rejects, it rejects too
        self.assertNotEqual(check_openapi.schema_validator(
            check_openapi.load_spec(), "Event")(evs[1]), [])


class RoutesTest(unittest.TestCase):
    def test_openapi_paths_are_the_server_routes(self):
        spec = check_openapi.load_spec()
        self.assertEqual(check_openapi.spec_routes(spec), check_openapi.server_routes())

    def test_openapi_is_valid(self):
        errors = check_openapi.check(verbose=False)
        self.assertEqual(errors, [])


if __name__ == "__main__":
    unittest.main()
