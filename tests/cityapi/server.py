#!/usr/bin/env python3
"""Reference server of the city booking API (the contract in docs/api.md,
docs/openapi.yaml and the project's sync contract), for the station's tests.

Python 3.11 standard library only. Run:

    tests/cityapi/server.py --db FILE --certs DIR --port P --admin-port A --station ID
                            [--host 127.0.0.1] [--tombstone-retention-days 7] [--verbose]

--certs DIR holds the files of tests/cityapi/mkcerts.sh (it is run for DIR and ID when
DIR/server.pem is missing). Port 0 picks a free port. When both ports listen, the server
prints ONE line of JSON to stdout and flushes it:

    {"ready": true, "port": 40123, "adminPort": 40124, "pid": 4711, "station": "st-12",
     "baseUrl": "https://127.0.0.1:40123/keystation/v1", "adminUrl": "http://127.0.0.1:40124"}

Wait for that line instead of sleeping. SIGTERM or SIGINT: stops accepting, closes the
database, exits 0. State (feeds, station configs, events, heartbeats, usage summaries,
enrollment tokens)
lives in the SQLite file and survives a restart; faults, the TLS identity and the request
log do not.

API port (HTTPS, base path /keystation/v1): exactly the routes of ROUTES below. TLS >= 1.2;
the server presents certs/server.pem (or certs/mitm.pem after PUT /admin/tls) and
requests a client certificate signed by certs/client-ca.pem. A presented certificate
that does not verify (expired, unknown CA) fails the handshake. Without a certificate
only POST /provisioning/enroll works; every other route answers 401 problem+json. A
certificate whose CN is not the {id} of the path -> 403; an {id} without a station
config -> 404. POST and PUT need `Content-Type: application/json` (else 415) and a
Content-Length (else 411); JSON must be UTF-8, without NaN/Infinity or duplicate keys.

ADMIN API (plain HTTP on 127.0.0.1:ADMIN_PORT, JSON in and out; errors are
{"error": "..."} with 400/404). "stationId" defaults to --station everywhere.

  GET    /admin/health                 -> {"ok": true, "port", "adminPort", "station", "tls"}
  POST   /admin/reset                  -> {}: empties feeds, watermarks, stations (the
                                       --station one gets its default config back), events,
                                       heartbeats, usage, tokens, faults, request log; TLS identity
                                       back to normal. `modified` keeps increasing.

  Feeds (FEED is "reservations" or "credentials"; DATA is the item's `data` object as
  the contract defines it, validated unless "unchecked": true, which lets a test feed
  invalid records to the station):
  POST   /admin/FEED                   body DATA plus optional "stationId", "unchecked";
                                       or {"items": [DATA, ...], "stationId"?, "unchecked"?}
                                       -> 200 {"modified": MS, "ids": [...]}. Creates or
                                       replaces ("updated" items). All items of one call
                                       share one `modified` (use it to test the (modified,
                                       id) tie-break); every call gets a larger one.
  PATCH  /admin/FEED/{id}              body: fields of DATA to replace (shallow merge),
                                       optional "stationId" (the feed it is in), "moveTo"
                                       (another station: tombstone here, "updated" there),
                                       "unchecked" -> {"modified"}. 404 if absent/deleted.
  POST   /admin/reservations/{id}/cancel   {"stationId"?} -> reservationStatus "cancelled"
  POST   /admin/credentials/{id}/revoke    {"stationId"?} -> status "revoked"
  DELETE /admin/FEED/{id}[?stationId=] -> tombstone ("deleted" item) {"modified"}
  GET    /admin/feeds/FEED[?stationId=] -> {"items": [every row, RPDE order, with
                                       tombstones], "watermark": [MS, ID] | null}
  POST   /admin/purge-tombstones       {"before": MS} | {"olderThanMs": N} | {} (= all)
                                       -> {"purged": n}. Deletes tombstones with modified <
                                       before (now - N); a cursor (afterTimestamp, afterId)
                                       lower than the highest purged (modified, id) of its
                                       feed then gets 410. The server also purges tombstones
                                       older than --tombstone-retention-days by itself.

  Stations:
  GET    /admin/stations/{id}/config   -> {"config": {...}, "etag": "\"...\""} or 404
  PUT    /admin/stations/{id}/config   body: the config object (stored as given, no range
                                       checks, "stationId" set to {id}) -> {"etag"}. The
                                       ETag is a digest of the content: the same content
                                       gives the same ETag. Creates the station if new.
  GET    /admin/heartbeat[?stationId=] -> {"heartbeat": BODY, "receivedAt": MS, "count": n}
                                       (the last PUT /status and how many came) or 404.
  GET    /admin/usage[?stationId=]     -> {"days": [{"date", "document": BODY, "receivedAt":
                                       MS, "count": n}, ...]}: the daily summaries (PUT
                                       /usage/{date}) in date order, each the last one PUT
                                       and how often that date was PUT.

  Events:
  GET    /admin/events[?stationId=]    -> {"events": [BODY + "stationId", "receivedAt",
                                       in order of arrival, created ones only],
                                       "counts": {EVENT_ID: {"created": 0|1, "duplicate": n,
                                       "rejected": n, "mismatch": n}},
                                       "duplicateAttempts": total, "rejected": [{"eventId",
                                       "problem", "event"}]}. "mismatch" counts duplicates
                                       whose body differed from the stored one.

  Enrollment:
  POST   /admin/enroll-tokens          {"stationId"?, "token"?} -> {"token", "stationId"}
  GET    /admin/enroll-tokens          -> {"tokens": [{"token", "stationId", "used"}]}

  Faults (API port only; matched in creation order against each request):
  POST   /admin/faults                 {"kind": K, "path"?: REGEX, "method"?: M,
                                        "count"?: N (default 1, -1 = until deleted),
                                        "body"?: REGEX, ...}
                                       -> {"id": n}. "path" is searched (re.search) in the
                                       request path without the query, "body" in the
                                       request body (e.g. one eventId: every batch that
                                       carries that event gets the fault).
         K = "drop"               close the connection without processing or answering
             "drop_after_commit"  process (e.g. store the events), then close without an
                                  answer
             "status"             answer "status" (default 503) problem+json without
                                  processing; "retryAfter": seconds (int) or any string
                                  (an HTTP date) -> Retry-After header
             "delay"              sleep "ms" then go on; delays add up and combine with
                                  one other fault
             "truncate"           Content-Length says more than is sent, then close;
                                  processed first unless "process": false
             "malformed"          200 with a body that is not JSON (correct
                                  Content-Length); processed first unless "process": false
             "foreign_next"       feed pages get a `next` under "base" (default
                                  https://evil.example/keystation/v1) instead of the
                                  server's own URL
  GET    /admin/faults                 -> {"faults": [{"id", "kind", "remaining", "hits", ...}]}
  DELETE /admin/faults                 -> remove all;  DELETE /admin/faults/{id}
  PUT    /admin/tls                    {"identity": "normal" | "mitm"} -> new connections get
                                       server.pem or mitm.pem (signed by wrong-ca)

  Observation:
  GET    /admin/requests               -> {"requests": [{"t": MS, "method", "path" (with
                                       query), "status" (null when dropped), "cn",
                                       "fault", "ifNoneMatch"}],
                                       "handshakeFailures": [{"t", "error"}]}
  DELETE /admin/requests               -> clears both lists
"""

import argparse
import faulthandler
import datetime
import hashlib
import http.server
import json
import os
import re
import secrets
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

BASE = "/keystation/v1"
LICENSE = "https://creativecommons.org/licenses/by/4.0/"
FEEDS = {"reservations": "HallReservation", "credentials": "Credential"}

# Every route of the API port: (method, path under BASE) -> handler method name.
# docs/openapi.yaml must list exactly these (tests/cityapi/check_openapi.py).
ROUTES = {
    ("POST", "/provisioning/enroll"): "h_enroll",
    ("GET", "/stations/{id}"): "h_station",
    ("GET", "/stations/{id}/reservations"): "h_feed",
    ("GET", "/stations/{id}/credentials"): "h_feed",
    ("POST", "/stations/{id}/events"): "h_events",
    ("PUT", "/stations/{id}/status"): "h_status",
    ("PUT", "/stations/{id}/usage/{date}"): "h_usage",
}

FAULT_KINDS = ("drop", "drop_after_commit", "status", "delay", "truncate", "malformed",
               "foreign_next")
MAX_BODY = 1 << 20


def now_ms():
    return time.time_ns() // 1_000_000


def rfc3339(ms):
    dt = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (ms % 1000)


def canon(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# ----------------------------------------------------------------------- validation

class Invalid(Exception):
    pass


ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,63}")
HEX64_RE = re.compile(r"[0-9a-f]{64}")
UUID7_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
TIME_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?Z")
CTRL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Keys that would carry a person or a card in an event's detail (privacy: never sent).
FORBIDDEN_DETAIL_KEYS = {"member", "memberid", "membername", "name", "uid", "carduid",
                         "uidhex"}


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def parse_time(v, field):
    """RFC 3339 UTC with Z -> ms since the epoch."""
    m = TIME_RE.fullmatch(v) if isinstance(v, str) else None
    if not m:
        raise Invalid(f"{field}: not an RFC 3339 UTC time with Z")
    try:
        dt = datetime.datetime(*(int(g) for g in m.groups()[:6]), tzinfo=datetime.timezone.utc)
    except ValueError:
        raise Invalid(f"{field}: not a valid date/time") from None
    frac = m.group(7)
    ms = int(frac[1:4].ljust(3, "0")) if frac else 0
    return int(dt.timestamp()) * 1000 + ms


def check_id(v, field):
    if not isinstance(v, str) or not ID_RE.fullmatch(v):
        raise Invalid(f"{field}: not 1..63 characters of [A-Za-z0-9._:-]")


def check_name(v, field):
    if not isinstance(v, str) or len(v.encode()) > 127 or CTRL_RE.search(v):
        raise Invalid(f"{field}: not a string of 0..127 bytes without control characters")


def check_keys(obj, field, required, optional=()):
    if not isinstance(obj, dict):
        raise Invalid(f"{field or 'body'}: not an object")
    prefix = field + "." if field else ""
    for k in required:
        if k not in obj:
            raise Invalid(f"{prefix}{k}: missing")
    for k in obj:
        if k not in required and k not in optional:
            raise Invalid(f"{prefix}{k}: unknown field")


def validate_reservation(d):
    check_keys(d, "", ("identifier", "startDate", "endDate", "organizer", "compartments",
                       "reservationStatus"))
    check_id(d["identifier"], "identifier")
    start = parse_time(d["startDate"], "startDate")
    end = parse_time(d["endDate"], "endDate")
    if end <= start:
        raise Invalid("endDate: not after startDate")
    check_keys(d["organizer"], "organizer", ("identifier", "name"))
    check_id(d["organizer"]["identifier"], "organizer.identifier")
    check_name(d["organizer"]["name"], "organizer.name")
    c = d["compartments"]
    if (not isinstance(c, list) or not 1 <= len(c) <= 32
            or not all(is_int(n) and 1 <= n <= 32 for n in c)):
        raise Invalid("compartments: not 1..32 compartment numbers 1..32")
    if d["reservationStatus"] not in ("confirmed", "cancelled"):
        raise Invalid("reservationStatus: not confirmed or cancelled")


def validate_credential(d):
    check_keys(d, "", ("identifier", "uidHmac", "cardType", "member", "clubs", "validFrom",
                       "validUntil", "status"))
    check_id(d["identifier"], "identifier")
    if not isinstance(d["uidHmac"], str) or not HEX64_RE.fullmatch(d["uidHmac"]):
        raise Invalid("uidHmac: not 64 lowercase hex digits")
    if d["cardType"] not in ("desfire", "uid"):
        raise Invalid("cardType: not desfire or uid")
    check_keys(d["member"], "member", ("identifier", "name"))
    check_id(d["member"]["identifier"], "member.identifier")
    check_name(d["member"]["name"], "member.name")
    clubs = d["clubs"]
    if not isinstance(clubs, list) or len(clubs) > 16:
        raise Invalid("clubs: not a list of 0..16 club ids")
    for i, c in enumerate(clubs):
        check_id(c, f"clubs[{i}]")
    times = {}
    for k in ("validFrom", "validUntil"):
        if d[k] is not None:
            times[k] = parse_time(d[k], k)
    if len(times) == 2 and times["validUntil"] <= times["validFrom"]:
        raise Invalid("validUntil: not after validFrom")
    if d["status"] not in ("active", "revoked"):
        raise Invalid("status: not active or revoked")


VALIDATORS = {"reservations": validate_reservation, "credentials": validate_credential}

EVENT_REQUIRED = ("eventId", "seq", "type", "occurredAt", "clock", "bootId", "monoMs", "hash",
                  "prevHash")
EVENT_OPTIONAL = ("compartment", "reservationId", "credentialId", "clubId", "reason",
                  "operator", "detail", "subjectDigest")


def forbidden_keys(obj, path):
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k.lower() in FORBIDDEN_DETAIL_KEYS:
                yield f"{path}.{k}"
            yield from forbidden_keys(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from forbidden_keys(v, f"{path}[{i}]")


def validate_event(ev):
    if not isinstance(ev.get("eventId"), str) or not UUID7_RE.fullmatch(ev["eventId"]):
        raise Invalid("eventId: not a UUIDv7 in lowercase 8-4-4-4-12 form")
    check_keys(ev, "", EVENT_REQUIRED, EVENT_OPTIONAL)
    if not is_int(ev["seq"]) or ev["seq"] < 1:
        raise Invalid("seq: not an integer >= 1")
    t = ev["type"]
    if not isinstance(t, str) or not 1 <= len(t) <= 63 or CTRL_RE.search(t):
        raise Invalid("type: not a non-empty string of at most 63 characters")
    parse_time(ev["occurredAt"], "occurredAt")
    check_keys(ev["clock"], "clock", ("synced",))
    if not isinstance(ev["clock"]["synced"], bool):
        raise Invalid("clock.synced: not a boolean")
    b = ev["bootId"]
    if not isinstance(b, str) or not 1 <= len(b) <= 128 or CTRL_RE.search(b):
        raise Invalid("bootId: not a non-empty string of at most 128 characters")
    if not is_int(ev["monoMs"]) or ev["monoMs"] < 0:
        raise Invalid("monoMs: not an integer >= 0")
    for k in ("hash", "prevHash", "subjectDigest"):
        if k in ev and (not isinstance(ev[k], str) or not HEX64_RE.fullmatch(ev[k])):
            raise Invalid(f"{k}: not 64 lowercase hex digits")
    if "compartment" in ev and (not is_int(ev["compartment"]) or not 1 <= ev["compartment"] <= 32):
        raise Invalid("compartment: not an integer 1..32")
    for k in ("reservationId", "credentialId", "clubId", "reason"):
        if k in ev:
            check_id(ev[k], k)
    if "operator" in ev:
        o = ev["operator"]
        if not isinstance(o, str) or not 1 <= len(o) <= 63 or CTRL_RE.search(o):
            raise Invalid("operator: not a non-empty string of at most 63 characters")
    if "detail" in ev:
        if not isinstance(ev["detail"], dict):
            raise Invalid("detail: not an object")
        bad = list(forbidden_keys(ev["detail"], "detail"))
        if bad:
            raise Invalid(f"{bad[0]}: personal data (member, name, UID) must not be sent")


def validate_status(body, station):
    check_keys(body, "", ("stationId", "version", "bootId", "sentAt", "clock", "outboxDepth",
                          "deadLetters", "compartments"))
    if body["stationId"] != station:
        raise Invalid("stationId: not the station of the path")
    for k in ("version", "bootId"):
        if not isinstance(body[k], str) or not 1 <= len(body[k]) <= 128:
            raise Invalid(f"{k}: not a non-empty string")
    parse_time(body["sentAt"], "sentAt")
    check_keys(body["clock"], "clock", ("synced",))
    if not isinstance(body["clock"]["synced"], bool):
        raise Invalid("clock.synced: not a boolean")
    for k in ("outboxDepth", "deadLetters"):
        if not is_int(body[k]) or body[k] < 0:
            raise Invalid(f"{k}: not an integer >= 0")
    if not isinstance(body["compartments"], list):
        raise Invalid("compartments: not a list")
    for i, c in enumerate(body["compartments"]):
        f = f"compartments[{i}]"
        check_keys(c, f, ("number", "state", "door", "key", "outOfService"))
        if not is_int(c["number"]) or not 1 <= c["number"] <= 32:
            raise Invalid(f"{f}.number: not an integer 1..32")
        for k in ("state", "door", "key"):
            if not isinstance(c[k], str) or not 1 <= len(c[k]) <= 63:
                raise Invalid(f"{f}.{k}: not a non-empty string")
        if not isinstance(c["outOfService"], bool):
            raise Invalid(f"{f}.outOfService: not a boolean")


DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
# What an observation of a daily summary may carry (docs/opendata.md): no member, name,
# card or credential, which the whitelist keeps out.
USAGE_PARAMETERS = {"reservationId", "compartment", "club", "pickupDelaySeconds",
                    "keyOutSeconds", "returnedLate"}


def check_date(v, field):
    if not isinstance(v, str) or not DATE_RE.fullmatch(v):
        raise Invalid(f"{field}: not a date YYYY-MM-DD")
    try:
        datetime.date.fromisoformat(v)
    except ValueError:
        raise Invalid(f"{field}: not an existing date") from None


def validate_usage(body, station, date):
    check_keys(body, "", ("date", "timezone", "sensorthings"))
    check_date(body["date"], "date")
    if body["date"] != date:
        raise Invalid("date: not the date of the path")
    tz = body["timezone"]
    if not isinstance(tz, str) or not 1 <= len(tz) <= 64 or CTRL_RE.search(tz):
        raise Invalid("timezone: not a time zone name")
    check_keys(body["sensorthings"], "sensorthings", ("Things",))
    things = body["sensorthings"]["Things"]
    if not isinstance(things, list) or len(things) > 64:
        raise Invalid("sensorthings.Things: not a list of 0..64 Things")
    for i, t in enumerate(things):
        f = f"sensorthings.Things[{i}]"
        check_keys(t, f, ("name", "description", "properties", "Datastreams"))
        check_keys(t["properties"], f + ".properties", ("stationId", "hall"))
        if t["properties"]["stationId"] != station:
            raise Invalid(f"{f}.properties.stationId: not the station of the path")
        if not isinstance(t["Datastreams"], list):
            raise Invalid(f"{f}.Datastreams: not a list")
        for j, ds in enumerate(t["Datastreams"]):
            fd = f"{f}.Datastreams[{j}]"
            if not isinstance(ds, dict) or not isinstance(ds.get("Observations"), list):
                raise Invalid(f"{fd}: not a Datastream with Observations")
            for k, o in enumerate(ds["Observations"]):
                fo = f"{fd}.Observations[{k}]"
                check_keys(o, fo, ("phenomenonTime", "resultTime", "result"), ("parameters",))
                par = o.get("parameters", {})
                if not isinstance(par, dict):
                    raise Invalid(f"{fo}.parameters: not an object")
                for key in par:
                    if key not in USAGE_PARAMETERS:
                        raise Invalid(f"{fo}.parameters.{key}: unknown field (no personal"
                                      " data in usage summaries)")


def _no_dupes(pairs):
    d = {}
    for k, v in pairs:
        if k in d:
            raise ValueError(f"duplicate key {k!r}")
        d[k] = v
    return d


def _no_constant(name):
    raise ValueError(f"{name} is not JSON")


def strict_json(raw):
    return json.loads(raw.decode("utf-8"), object_pairs_hook=_no_dupes,
                      parse_constant=_no_constant)


# --------------------------------------------------------------------------- store

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value);
CREATE TABLE IF NOT EXISTS items (
  station TEXT NOT NULL, feed TEXT NOT NULL, id TEXT NOT NULL,
  modified INTEGER NOT NULL, state TEXT NOT NULL, data TEXT,
  PRIMARY KEY (station, feed, id));
CREATE INDEX IF NOT EXISTS items_rpde ON items (station, feed, modified, id);
-- The retention purge runs on every feed request: it must not scan the table.
CREATE INDEX IF NOT EXISTS items_tombstones ON items (modified) WHERE state = 'deleted';
CREATE TABLE IF NOT EXISTS watermarks (
  station TEXT NOT NULL, feed TEXT NOT NULL, modified INTEGER NOT NULL, id TEXT NOT NULL,
  PRIMARY KEY (station, feed));
CREATE TABLE IF NOT EXISTS stations (id TEXT PRIMARY KEY, config TEXT NOT NULL, etag TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
  n INTEGER PRIMARY KEY, event_id TEXT NOT NULL UNIQUE, station TEXT NOT NULL,
  body TEXT NOT NULL, received_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS event_counts (
  event_id TEXT PRIMARY KEY, created INTEGER NOT NULL DEFAULT 0,
  duplicate INTEGER NOT NULL DEFAULT 0, rejected INTEGER NOT NULL DEFAULT 0,
  mismatch INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS rejected (
  n INTEGER PRIMARY KEY, station TEXT NOT NULL, event_id TEXT NOT NULL, body TEXT NOT NULL,
  problem TEXT NOT NULL, received_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS heartbeats (
  station TEXT PRIMARY KEY, body TEXT NOT NULL, received_ms INTEGER NOT NULL,
  count INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS usage (
  station TEXT NOT NULL, date TEXT NOT NULL, body TEXT NOT NULL, received_ms INTEGER NOT NULL,
  count INTEGER NOT NULL, PRIMARY KEY (station, date));
CREATE TABLE IF NOT EXISTS tokens (
  token TEXT PRIMARY KEY, station TEXT NOT NULL, created_ms INTEGER NOT NULL, used_ms INTEGER);
"""

RPDE_FIRST = ("SELECT id, modified, state, data FROM items WHERE station = :st AND feed = :feed"
              " ORDER BY modified, id LIMIT :limit")
RPDE_AFTER = ("SELECT id, modified, state, data FROM items WHERE station = :st AND feed = :feed"
              " AND ((modified = :ts AND id > :id) OR (modified > :ts))"
              " ORDER BY modified, id LIMIT :limit")


def default_config(station):
    return {"stationId": station, "name": f"Station {station}",
            "pollIntervals": {"reservations": 60, "credentials": 300, "config": 3600,
                              "heartbeat": 300},
            "compartments": [{"number": n, "hall": f"h-{n}", "label": f"Halle {n}"}
                             for n in (1, 2, 3, 4)]}


class Store:
    """All state, in one SQLite connection guarded by one lock: every write is one
    transaction and gets its `modified` inside the lock, so feed readers never see a
    smaller `modified` committed after a larger one."""

    def __init__(self, path):
        self.lock = threading.RLock()
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        row = self.db.execute("SELECT value FROM meta WHERE key = 'last_modified'").fetchone()
        self.last_modified = row[0] if row else 0

    def close(self):
        with self.lock:
            self.db.close()

    class _Tx:
        def __init__(self, store):
            self.s = store

        def __enter__(self):
            self.s.lock.acquire()
            self.s.db.execute("BEGIN IMMEDIATE")
            return self.s.db

        def __exit__(self, et, ev, tb):
            try:
                self.s.db.execute("COMMIT" if et is None else "ROLLBACK")
            finally:
                self.s.lock.release()

    def tx(self):
        return Store._Tx(self)

    def _next_modified(self, db):
        """Strictly increasing over all writes, also across restarts."""
        m = max(self.last_modified + 1, now_ms())
        db.execute("INSERT INTO meta (key, value) VALUES ('last_modified', ?)"
                   " ON CONFLICT (key) DO UPDATE SET value = excluded.value", (m,))
        self.last_modified = m
        return m

    def reset(self):
        """Empties every table but keeps the `modified` counter (still increasing)."""
        with self.tx() as db:
            for t in ("items", "watermarks", "stations", "events", "event_counts", "rejected",
                      "heartbeats", "usage", "tokens"):
                db.execute(f"DELETE FROM {t}")

    # feeds
    def upsert(self, station, feed, datas):
        with self.tx() as db:
            m = self._next_modified(db)
            for d in datas:
                db.execute("INSERT INTO items (station, feed, id, modified, state, data)"
                           " VALUES (?, ?, ?, ?, 'updated', ?) ON CONFLICT (station, feed, id)"
                           " DO UPDATE SET modified = excluded.modified, state = 'updated',"
                           " data = excluded.data",
                           (station, feed, d["identifier"], m, canon(d)))
            return m

    def get_data(self, station, feed, item_id):
        with self.lock:
            row = self.db.execute("SELECT data FROM items WHERE station = ? AND feed = ? AND id = ?"
                                  " AND state = 'updated'", (station, feed, item_id)).fetchone()
        return json.loads(row[0]) if row else None

    def tombstone(self, station, feed, item_id):
        with self.tx() as db:
            row = db.execute("SELECT state FROM items WHERE station = ? AND feed = ? AND id = ?",
                             (station, feed, item_id)).fetchone()
            if row is None or row[0] == "deleted":
                return None
            m = self._next_modified(db)
            db.execute("UPDATE items SET modified = ?, state = 'deleted', data = NULL"
                       " WHERE station = ? AND feed = ? AND id = ?", (m, station, feed, item_id))
            return m

    def move(self, station, feed, item_id, data, to_station):
        with self.tx() as db:
            m = self._next_modified(db)
            db.execute("UPDATE items SET modified = ?, state = 'deleted', data = NULL"
                       " WHERE station = ? AND feed = ? AND id = ?", (m, station, feed, item_id))
            db.execute("INSERT INTO items (station, feed, id, modified, state, data)"
                       " VALUES (?, ?, ?, ?, 'updated', ?) ON CONFLICT (station, feed, id)"
                       " DO UPDATE SET modified = excluded.modified, state = 'updated',"
                       " data = excluded.data", (to_station, feed, item_id, m, canon(data)))
            return m

    def purge(self, before):
        """Delete tombstones with modified < before; remember per feed the highest
        purged (modified, id). Returns how many went."""
        with self.tx() as db:
            rows = db.execute("SELECT station, feed, modified, id FROM items"
                              " WHERE state = 'deleted' AND modified < ?", (before,)).fetchall()
            high = {}
            for st, feed, m, i in rows:
                if (st, feed) not in high or (m, i) > high[(st, feed)]:
                    high[(st, feed)] = (m, i)
            for (st, feed), (m, i) in high.items():
                old = db.execute("SELECT modified, id FROM watermarks WHERE station = ? AND feed = ?",
                                 (st, feed)).fetchone()
                if old is None or (m, i) > tuple(old):
                    db.execute("INSERT OR REPLACE INTO watermarks VALUES (?, ?, ?, ?)",
                               (st, feed, m, i))
            db.execute("DELETE FROM items WHERE state = 'deleted' AND modified < ?", (before,))
            return len(rows)

    def watermark(self, station, feed):
        with self.lock:
            row = self.db.execute("SELECT modified, id FROM watermarks WHERE station = ? AND feed = ?",
                                  (station, feed)).fetchone()
        return tuple(row) if row else None

    def page(self, station, feed, after, limit):
        with self.lock:
            if after is None:
                rows = self.db.execute(RPDE_FIRST, {"st": station, "feed": feed, "limit": limit})
            else:
                rows = self.db.execute(RPDE_AFTER, {"st": station, "feed": feed, "ts": after[0],
                                                    "id": after[1], "limit": limit})
            return rows.fetchall()

    def all_items(self, station, feed):
        with self.lock:
            return self.db.execute("SELECT id, modified, state, data FROM items WHERE station = ?"
                                   " AND feed = ? ORDER BY modified, id", (station, feed)).fetchall()

    # stations
    def set_config(self, station, config):
        config = dict(config)
        config["stationId"] = station
        body = canon(config)
        etag = '"' + hashlib.sha256(body.encode()).hexdigest()[:20] + '"'
        with self.tx() as db:
            db.execute("INSERT OR REPLACE INTO stations VALUES (?, ?, ?)", (station, body, etag))
        return etag

    def get_config(self, station):
        with self.lock:
            row = self.db.execute("SELECT config, etag FROM stations WHERE id = ?",
                                  (station,)).fetchone()
        return (json.loads(row[0]), row[1]) if row else (None, None)

    # events
    def add_events(self, station, batch):
        """batch: list of (event, problem or None) -> list of status strings. One
        transaction for the whole batch."""
        out = []
        t = now_ms()
        with self.tx() as db:
            for ev, problem in batch:
                eid = ev["eventId"]
                db.execute("INSERT OR IGNORE INTO event_counts (event_id) VALUES (?)", (eid,))
                if problem is not None:
                    db.execute("UPDATE event_counts SET rejected = rejected + 1 WHERE event_id = ?",
                               (eid,))
                    db.execute("INSERT INTO rejected (station, event_id, body, problem, received_ms)"
                               " VALUES (?, ?, ?, ?, ?)",
                               (station, eid, canon(ev), canon(problem), t))
                    out.append("rejected")
                    continue
                row = db.execute("SELECT body FROM events WHERE event_id = ?", (eid,)).fetchone()
                if row is not None:
                    db.execute("UPDATE event_counts SET duplicate = duplicate + 1,"
                               " mismatch = mismatch + ? WHERE event_id = ?",
                               (int(row[0] != canon(ev)), eid))
                    out.append("duplicate")
                    continue
                db.execute("INSERT INTO events (event_id, station, body, received_ms)"
                           " VALUES (?, ?, ?, ?)", (eid, station, canon(ev), t))
                db.execute("UPDATE event_counts SET created = 1 WHERE event_id = ?", (eid,))
                out.append("created")
        return out

    def events_report(self, station):
        with self.lock:
            evs = []
            ids = set()
            for st, body, rx in self.db.execute("SELECT station, body, received_ms FROM events"
                                                " WHERE station = ? ORDER BY n", (station,)):
                ev = json.loads(body)
                ids.add(ev["eventId"])
                ev["stationId"] = st
                ev["receivedAt"] = rx
                evs.append(ev)
            rej = []
            for eid, body, problem in self.db.execute(
                    "SELECT event_id, body, problem FROM rejected WHERE station = ? ORDER BY n",
                    (station,)):
                ids.add(eid)
                rej.append({"eventId": eid, "problem": json.loads(problem),
                            "event": json.loads(body)})
            counts = {}
            for eid, c, d, r, mm in self.db.execute("SELECT event_id, created, duplicate, rejected,"
                                                    " mismatch FROM event_counts"):
                if eid in ids:
                    counts[eid] = {"created": c, "duplicate": d, "rejected": r, "mismatch": mm}
        return {"events": evs, "counts": counts,
                "duplicateAttempts": sum(c["duplicate"] for c in counts.values()),
                "rejected": rej}

    # heartbeats
    def set_heartbeat(self, station, body):
        with self.tx() as db:
            db.execute("INSERT INTO heartbeats VALUES (?, ?, ?, 1) ON CONFLICT (station) DO UPDATE"
                       " SET body = excluded.body, received_ms = excluded.received_ms,"
                       " count = count + 1", (station, canon(body), now_ms()))

    def get_heartbeat(self, station):
        with self.lock:
            row = self.db.execute("SELECT body, received_ms, count FROM heartbeats WHERE station = ?",
                                  (station,)).fetchone()
        return {"heartbeat": json.loads(row[0]), "receivedAt": row[1], "count": row[2]} if row else None

    # daily usage summaries
    def set_usage(self, station, date, body):
        with self.tx() as db:
            db.execute("INSERT INTO usage VALUES (?, ?, ?, ?, 1) ON CONFLICT (station, date) DO"
                       " UPDATE SET body = excluded.body, received_ms = excluded.received_ms,"
                       " count = count + 1", (station, date, canon(body), now_ms()))

    def usage(self, station):
        with self.lock:
            rows = self.db.execute("SELECT date, body, received_ms, count FROM usage"
                                   " WHERE station = ? ORDER BY date", (station,)).fetchall()
        return [{"date": d, "document": json.loads(b), "receivedAt": r, "count": c}
                for d, b, r, c in rows]

    # tokens
    def add_token(self, token, station):
        with self.tx() as db:
            db.execute("INSERT INTO tokens VALUES (?, ?, ?, NULL)", (token, station, now_ms()))

    def token_station(self, token):
        """The station of an unused token, or None."""
        with self.lock:
            row = self.db.execute("SELECT station FROM tokens WHERE token = ? AND used_ms IS NULL",
                                  (token,)).fetchone()
        return row[0] if row else None

    def use_token(self, token):
        """Marks the token used; False if it was used meanwhile."""
        with self.tx() as db:
            cur = db.execute("UPDATE tokens SET used_ms = ? WHERE token = ? AND used_ms IS NULL",
                             (now_ms(), token))
            return cur.rowcount == 1

    def tokens(self):
        with self.lock:
            return [{"token": t, "stationId": s, "used": u is not None}
                    for t, s, u in self.db.execute("SELECT token, station, used_ms FROM tokens")]


# ----------------------------------------------------------------------------- app

class App:
    """State outside SQLite: TLS contexts, faults, request log."""

    def __init__(self, args):
        self.args = args
        self.station = args.station
        self.certs = os.path.abspath(args.certs)
        self.store = Store(args.db)
        self.retention_ms = int(args.tombstone_retention_days * 86400 * 1000)
        self.lock = threading.Lock()
        self.faults = []
        self.fault_seq = 0
        self.requests = []
        self.handshake_failures = []
        self.contexts = {"normal": self._context("server"), "mitm": self._context("mitm")}
        self.identity = "normal"
        self.port = self.admin_port = None
        if self.store.get_config(self.station)[0] is None:
            self.store.set_config(self.station, default_config(self.station))

    def reset(self):
        self.store.reset()
        self.store.set_config(self.station, default_config(self.station))
        with self.lock:
            self.faults = []
            self.requests = []
            self.handshake_failures = []
            self.identity = "normal"

    def _context(self, name):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(os.path.join(self.certs, name + ".pem"),
                            os.path.join(self.certs, name + ".key"))
        ctx.load_verify_locations(os.path.join(self.certs, "client-ca.pem"))
        # Requested, not required: enroll works without one; every other route 401s.
        ctx.verify_mode = ssl.CERT_OPTIONAL
        return ctx

    def tls_context(self):
        with self.lock:
            return self.contexts[self.identity]

    def log(self, entry):
        with self.lock:
            self.requests.append(entry)
            del self.requests[:-10000]

    def note_handshake_failure(self, err):
        with self.lock:
            self.handshake_failures.append({"t": now_ms(), "error": str(err)})
            del self.handshake_failures[:-1000]

    def add_fault(self, spec):
        kind = spec.get("kind")
        if kind not in FAULT_KINDS:
            raise ValueError(f"kind: one of {', '.join(FAULT_KINDS)}")
        count = spec.get("count", 1)
        if not is_int(count) or not (count >= 1 or count == -1):
            raise ValueError("count: an integer >= 1, or -1 for until deleted")
        for k in ("path", "body"):
            if k in spec:
                if not isinstance(spec[k], str):
                    raise ValueError(f"{k}: a regular expression (string)")
                re.compile(spec[k])
        if kind == "status":
            st = spec.get("status", 503)
            if not is_int(st) or not 400 <= st <= 599:
                raise ValueError("status: an integer 400..599")
            ra = spec.get("retryAfter")
            if ra is not None and not (is_int(ra) and ra >= 0 or isinstance(ra, str)):
                raise ValueError("retryAfter: seconds (integer) or a string")
        if kind == "delay" and (not is_int(spec.get("ms")) or spec["ms"] < 0):
            raise ValueError("ms: an integer >= 0")
        with self.lock:
            self.fault_seq += 1
            f = dict(spec)
            f.pop("count", None)
            f.update(id=self.fault_seq, remaining=count, hits=0)
            self.faults.append(f)
            return f["id"]

    def take_faults(self, method, path, raw):
        """The delay faults and the first other fault that match, each consumed once."""
        delays, other = [], None
        text = raw.decode("utf-8", "replace") if raw else ""
        with self.lock:
            for f in self.faults:
                if f["remaining"] == 0:
                    continue
                if "method" in f and f["method"].upper() != method:
                    continue
                if "path" in f and not re.search(f["path"], path):
                    continue
                if "body" in f and not re.search(f["body"], text):
                    continue
                if f["kind"] != "delay" and other is not None:
                    continue
                f["hits"] += 1
                if f["remaining"] > 0:
                    f["remaining"] -= 1
                if f["kind"] == "delay":
                    delays.append(dict(f))
                else:
                    other = dict(f)
            self.faults = [f for f in self.faults if f["remaining"] != 0]
        return delays, other


def problem(status, detail, title=None, **extra):
    p = {"type": "about:blank",
         "title": title or http.server.BaseHTTPRequestHandler.responses.get(
             status, ("Error",))[0],
         "status": status, "detail": detail}
    p.update(extra)
    return p


class Reply:
    def __init__(self, status, body=None, headers=None, ctype="application/json", raw=None):
        """body is serialised here; raw is JSON text already serialised."""
        self.status = status
        self.headers = dict(headers or {})
        if raw is not None:
            self.body = raw.encode()
            self.headers.setdefault("Content-Type", ctype)
        elif body is None:
            self.body = b""
        else:
            self.body = json.dumps(body, ensure_ascii=False).encode()
            self.headers.setdefault("Content-Type", ctype)

    @staticmethod
    def problem(status, detail, headers=None, **extra):
        return Reply(status, problem(status, detail, **extra), headers,
                     "application/problem+json")


class HttpError(Exception):
    def __init__(self, reply):
        self.reply = reply


def _template_re(t):
    return re.compile("".join("(?P<%s>[^/]+)" % p[1:-1] if p.startswith("{") else re.escape(p)
                              for p in re.split(r"(\{[a-z]+\})", t)))


ROUTE_RES = [(m, t, _template_re(t), h) for (m, t), h in ROUTES.items()]


class ApiHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "lockerd-cityapi-ref/1"
    def version_string(self):
        return self.server_version

    def log_message(self, fmt, *args):
        if self.server.app.args.verbose:
            sys.stderr.write("api: %s\n" % (fmt % args))

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = \
        lambda self: self.dispatch()

    @property
    def app(self):
        return self.server.app

    def client_cn(self):
        try:
            cert = self.connection.getpeercert()
        except (ValueError, AttributeError):
            return None
        if not cert:
            return None
        for rdn in cert.get("subject", ()):
            for k, v in rdn:
                if k == "commonName":
                    return v
        return None

    def read_body(self):
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise HttpError(Reply.problem(411, "send a Content-Length, not a transfer coding"))
        cl = self.headers.get("Content-Length")
        if cl is None:
            return None
        if not re.fullmatch(r"\d{1,9}", cl.strip()):
            self.close_connection = True
            raise HttpError(Reply.problem(400, "bad Content-Length"))
        n = int(cl)
        if n > MAX_BODY:
            self.close_connection = True
            raise HttpError(Reply.problem(413, f"body larger than {MAX_BODY} bytes"))
        return self.rfile.read(n)

    def json_body(self, raw):
        if raw is None:
            raise HttpError(Reply.problem(411, "a body with Content-Length is required"))
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise HttpError(Reply.problem(415, "Content-Type must be application/json"))
        try:
            return strict_json(raw)
        except (UnicodeDecodeError, ValueError) as e:
            raise HttpError(Reply.problem(400, f"body is not JSON: {e}")) from None

    def dispatch(self):
        method = self.command
        target = self.path
        path, _, query = target.partition("?")
        cn = self.client_cn()
        entry = {"t": now_ms(), "method": method, "path": target, "status": None, "cn": cn,
                 "fault": None, "ifNoneMatch": self.headers.get("If-None-Match")}
        try:
            raw = self.read_body()
        except HttpError as e:
            self.send(e.reply, entry)
            return
        delays, fault = self.app.take_faults(method, path, raw)
        for d in delays:
            time.sleep(d["ms"] / 1000)
        if delays:
            entry["fault"] = "delay"
        self.fault = fault
        if fault:
            entry["fault"] = fault["kind"]
        kind = fault["kind"] if fault else None
        if kind == "drop":
            self.drop(entry)
            return
        if kind == "status":
            headers = {}
            if fault.get("retryAfter") is not None:
                headers["Retry-After"] = str(fault["retryAfter"])
            self.send(Reply.problem(fault.get("status", 503), "injected fault", headers), entry)
            return
        if kind in ("truncate", "malformed") and fault.get("process", True) is False:
            reply = Reply(200, {"injected": kind})
        else:
            try:
                reply = self.route(method, path, query, raw, cn)
            except HttpError as e:
                reply = e.reply
            except Exception as e:  # a bug here must show as 500, not a hung client
                sys.stderr.write(f"server.py: internal error: {e!r}\n")
                reply = Reply.problem(500, "internal error")
        if kind == "drop_after_commit":
            self.drop(entry)
        elif kind == "truncate":
            entry["status"] = reply.status
            self.log_request(reply.status)
            self.app.log(entry)
            body = reply.body
            declared = len(body) if body else 64
            self.send_response(reply.status)
            for k, v in reply.headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(declared))
            self.end_headers()
            self.wfile.write(body[:len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
        elif kind == "malformed":
            body = reply.body[:len(reply.body) // 2] if len(reply.body) > 8 else b""
            if not body:
                body = b'{"malformed": '
            self.send(Reply(200), entry, body=body, ctype="application/json")
        else:
            self.send(reply, entry)

    def drop(self, entry):
        entry["status"] = None
        self.app.log(entry)
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def send(self, reply, entry, body=None, ctype=None):
        entry["status"] = reply.status
        self.app.log(entry)
        body = reply.body if body is None else body
        self.send_response(reply.status)
        headers = dict(reply.headers)
        if ctype:
            headers["Content-Type"] = ctype
        for k, v in headers.items():
            self.send_header(k, v)
        if reply.status not in (204, 304):
            self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if reply.status not in (204, 304) and self.command != "HEAD":
            self.wfile.write(body)

    def route(self, method, path, query, raw, cn):
        if not path.startswith(BASE + "/"):
            raise HttpError(Reply.problem(404, "no such resource"))
        sub = path[len(BASE):]
        allowed = []
        for m, _t, rx, handler in ROUTE_RES:
            match = rx.fullmatch(sub)
            if not match:
                continue
            if m != method:
                allowed.append(m)
                continue
            params = {k: urllib.parse.unquote(v) for k, v in match.groupdict().items()}
            if handler != "h_enroll":
                self.authorize(params["id"], cn)
            return getattr(self, handler)(params, sub, query, raw)
        if allowed:
            raise HttpError(Reply.problem(405, f"use {', '.join(allowed)}",
                                          {"Allow": ", ".join(allowed)}))
        raise HttpError(Reply.problem(404, "no such resource"))

    def authorize(self, station, cn):
        if cn is None:
            raise HttpError(Reply.problem(401, "a client certificate is required"))
        if cn != station:
            raise HttpError(Reply.problem(
                403, f"the client certificate (CN {cn}) is not for station {station}"))
        if self.app.store.get_config(station)[0] is None:
            raise HttpError(Reply.problem(404, f"no station {station}"))

    # GET /stations/{id}
    def h_station(self, params, sub, query, raw):
        config, etag = self.app.store.get_config(params["id"])
        inm = self.headers.get("If-None-Match")
        if inm is not None:
            tags = [t.strip() for t in inm.split(",")]
            if "*" in tags or any(t.removeprefix("W/") == etag for t in tags):
                return Reply(304, headers={"ETag": etag})
        return Reply(200, config, {"ETag": etag, "Cache-Control": "no-cache"})

    # GET /stations/{id}/reservations|credentials
    def h_feed(self, params, sub, query, raw):
        station = params["id"]
        feed = sub.rsplit("/", 1)[1]
        try:
            q = urllib.parse.parse_qs(query, keep_blank_values=True, strict_parsing=bool(query),
                                      max_num_fields=10)
        except ValueError:
            raise HttpError(Reply.problem(400, "malformed query")) from None
        for k, v in q.items():
            if len(v) != 1:
                raise HttpError(Reply.problem(400, f"{k} given more than once"))
        q = {k: v[0] for k, v in q.items()}
        unknown = set(q) - {"afterTimestamp", "afterId", "limit"}
        if unknown:
            raise HttpError(Reply.problem(400, f"unknown query parameter {sorted(unknown)[0]}"))
        if ("afterTimestamp" in q) != ("afterId" in q):
            raise HttpError(Reply.problem(400, "afterTimestamp and afterId go together"))
        after = None
        if "afterTimestamp" in q:
            if not re.fullmatch(r"\d{1,16}", q["afterTimestamp"]):
                raise HttpError(Reply.problem(400, "afterTimestamp: not an integer (ms)"))
            if not ID_RE.fullmatch(q["afterId"]):
                raise HttpError(Reply.problem(400, "afterId: not an identifier"))
            after = (int(q["afterTimestamp"]), q["afterId"])
        limit = 100
        if "limit" in q:
            if not re.fullmatch(r"\d{1,3}", q["limit"]) or not 1 <= int(q["limit"]) <= 500:
                raise HttpError(Reply.problem(400, "limit: an integer 1..500"))
            limit = int(q["limit"])
        store = self.app.store
        store.purge(now_ms() - self.app.retention_ms)
        wm = store.watermark(station, feed)
        if after is not None and wm is not None and after < wm:
            raise HttpError(Reply.problem(
                410, "the cursor is older than the tombstone retention: resync from the start"))
        rows = store.page(station, feed, after, limit)
        host = self.headers.get("Host") or f"127.0.0.1:{self.app.port}"
        own_base = f"https://{host}{BASE}"
        # Each item's data is stored as canonical JSON text and spliced in as it is:
        # parsing and serialising it again per request would only cost time.
        kind = json.dumps(FEEDS[feed])
        items = []
        for item_id, modified, state, data in rows:
            it = '{"state":"%s","kind":%s,"id":%s,"modified":%d' % (
                state, kind, json.dumps(item_id, ensure_ascii=False), modified)
            items.append(it + (',"data":' + data + "}" if state == "updated" else "}"))
        if rows:
            qs = [("afterTimestamp", str(rows[-1][1])), ("afterId", rows[-1][0])]
            if "limit" in q:
                qs.append(("limit", str(limit)))
            nxt = (f"{own_base}/stations/{urllib.parse.quote(station, safe='')}"
                   f"/{feed}?{urllib.parse.urlencode(qs, quote_via=urllib.parse.quote)}")
        else:
            nxt = self.path if self.path.startswith("https://") else f"https://{host}{self.path}"
        if self.fault and self.fault["kind"] == "foreign_next":
            base = self.fault.get("base", "https://evil.example/keystation/v1")
            if nxt.startswith(own_base):
                nxt = base + nxt[len(own_base):]
        return Reply(200, raw='{"next":%s,"items":[%s],"license":%s}' % (
            json.dumps(nxt), ",".join(items), json.dumps(LICENSE)))

    # POST /stations/{id}/events
    def h_events(self, params, sub, query, raw):
        body = self.json_body(raw)
        if not isinstance(body, dict) or not isinstance(body.get("events"), list):
            raise HttpError(Reply.problem(422, 'body: not {"events": [...]}'))
        evs = body["events"]
        if not 1 <= len(evs) <= 100:
            raise HttpError(Reply.problem(422, "events: 1..100 events per batch"))
        batch = []
        for i, ev in enumerate(evs):
            if not isinstance(ev, dict) or not isinstance(ev.get("eventId"), str):
                raise HttpError(Reply.problem(
                    422, f"events[{i}]: not an object with a string eventId"))
            try:
                validate_event(ev)
                batch.append((ev, None))
            except Invalid as e:
                batch.append((ev, problem(422, str(e))))
        statuses = self.app.store.add_events(params["id"], batch)
        results = []
        for (ev, prob), st in zip(batch, statuses):
            r = {"eventId": ev["eventId"], "status": st}
            if prob is not None:
                r["problem"] = prob
            results.append(r)
        return Reply(200, {"results": results, "serverTime": rfc3339(now_ms())})

    # PUT /stations/{id}/status
    def h_status(self, params, sub, query, raw):
        body = self.json_body(raw)
        try:
            validate_status(body, params["id"])
        except Invalid as e:
            raise HttpError(Reply.problem(422, str(e))) from None
        self.app.store.set_heartbeat(params["id"], body)
        return Reply(204)

    # PUT /stations/{id}/usage/{date}
    def h_usage(self, params, sub, query, raw):
        try:
            check_date(params["date"], "date (path)")
        except Invalid as e:
            raise HttpError(Reply.problem(400, str(e))) from None
        body = self.json_body(raw)
        try:
            validate_usage(body, params["id"], params["date"])
        except Invalid as e:
            raise HttpError(Reply.problem(422, str(e))) from None
        self.app.store.set_usage(params["id"], params["date"], body)
        return Reply(204)

    # POST /provisioning/enroll
    def h_enroll(self, params, sub, query, raw):
        unauthorized = Reply.problem(401, "an unused enrollment token is required",
                                     {"WWW-Authenticate": 'Bearer realm="enroll"'})
        m = re.fullmatch(r"Bearer ([A-Za-z0-9._~+/=-]{1,256})",
                         self.headers.get("Authorization") or "")
        if not m:
            raise HttpError(unauthorized)
        token = m.group(1)
        store = self.app.store
        station = store.token_station(token)
        if station is None:
            raise HttpError(unauthorized)
        body = self.json_body(raw)
        try:
            check_keys(body, "", ("stationId", "csr"))
            check_id(body["stationId"], "stationId")
            if not isinstance(body["csr"], str) or len(body["csr"]) > 16384:
                raise Invalid("csr: not a PEM string")
        except Invalid as e:
            raise HttpError(Reply.problem(422, str(e))) from None
        if body["stationId"] != station:
            raise HttpError(Reply.problem(403, "the token is not for this station"))
        cert = sign_csr(self.app.certs, body["csr"], station)
        if not store.use_token(token):
            raise HttpError(unauthorized)
        with open(os.path.join(self.app.certs, "server-ca.pem")) as f:
            ca = f.read()
        return Reply(201, {"stationId": station, "certificate": cert, "caChain": ca})


def sign_csr(certs, csr, station):
    """Verifies the CSR (self-signature, CN == station) and signs it with the client CA
    for 365 days. Raises HttpError(422) for a bad CSR."""
    bad = lambda d: HttpError(Reply.problem(422, "csr: " + d))  # noqa: E731
    if "-----BEGIN CERTIFICATE REQUEST-----" not in csr:
        raise bad("not a PEM certificate request")
    with tempfile.TemporaryDirectory(prefix="cityapi-csr.") as tmp:
        path = os.path.join(tmp, "req.csr")
        with open(path, "w") as f:
            f.write(csr)
        r = subprocess.run(["openssl", "req", "-in", path, "-noout", "-verify", "-subject",
                            "-nameopt", "RFC2253"], capture_output=True, text=True, timeout=20)
        if r.returncode != 0 or "verify OK" not in r.stderr + r.stdout or "failure" in r.stderr:
            raise bad("does not parse or its self-signature does not verify")
        cns = re.findall(r"(?:^|,|=)CN=((?:[^,\\]|\\.)*)", r.stdout.strip().removeprefix("subject="))
        if cns != [station]:
            raise bad(f"the subject's CN must be exactly the station id {station}")
        ext = os.path.join(tmp, "ext.cnf")
        with open(ext, "w") as f:
            f.write("[client]\nbasicConstraints = critical, CA:FALSE\n"
                    "keyUsage = critical, digitalSignature\nextendedKeyUsage = clientAuth\n")
        out = os.path.join(tmp, "cert.pem")
        r = subprocess.run(["openssl", "x509", "-req", "-in", path,
                            "-CA", os.path.join(certs, "client-ca.pem"),
                            "-CAkey", os.path.join(certs, "client-ca.key"),
                            "-set_serial", "0x" + secrets.token_hex(15), "-days", "365",
                            "-sha256", "-extfile", ext, "-extensions", "client", "-out", out],
                           capture_output=True, text=True, timeout=20)
        if r.returncode != 0:
            raise bad("cannot be signed: " + r.stderr.strip()[:200])
        with open(out) as f:
            return f.read()


class ApiServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, addr, app):
        self.app = app
        super().__init__(addr, ApiHandler)

    def process_request_thread(self, request, client_address):
        tls = None
        try:
            request.settimeout(10)
            # headers and body go out in separate writes: without this, Nagle plus the
            # client's delayed ACK add 40 ms to every response
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                tls = self.app.tls_context().wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as e:
                self.app.note_handshake_failure(e)
                return
            tls.settimeout(30)
            self.finish_request(tls, client_address)
        except Exception:  # noqa: BLE001 - one connection's trouble must not stop the server
            if self.app.args.verbose:
                self.handle_error(request, client_address)
        finally:
            for s in (tls, request):
                if s is not None:
                    try:
                        s.close()
                    except OSError:
                        pass


# --------------------------------------------------------------------------- admin

class AdminError(Exception):
    def __init__(self, status, msg):
        super().__init__(msg)
        self.status = status


class AdminHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "lockerd-cityapi-admin/1"
    def version_string(self):
        return self.server_version

    def log_message(self, fmt, *args):
        if self.server.app.args.verbose:
            sys.stderr.write("admin: %s\n" % (fmt % args))

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = lambda self: self.dispatch()

    def dispatch(self):
        app = self.server.app
        path, _, query = self.path.partition("?")
        q = {k: v[0] for k, v in urllib.parse.parse_qs(query).items()}
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        try:
            body = json.loads(raw) if raw.strip() else {}
            status, out = self.route(app, self.command, path, q, body)
        except json.JSONDecodeError as e:
            status, out = 400, {"error": f"body is not JSON: {e}"}
        except AdminError as e:
            status, out = e.status, {"error": str(e)}
        except Invalid as e:
            status, out = 400, {"error": str(e)}
        except (ValueError, KeyError, TypeError, re.error) as e:
            status, out = 400, {"error": f"{type(e).__name__}: {e}"}
        data = json.dumps(out, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def route(self, app, method, path, q, body):
        store = app.store
        station = (body.get("stationId") if isinstance(body, dict) else None) \
            or q.get("stationId") or app.station
        parts = path.strip("/").split("/")
        if parts[0] != "admin":
            raise AdminError(404, "no such admin resource")
        p = parts[1:]
        if p == ["health"] and method == "GET":
            return 200, {"ok": True, "port": app.port, "adminPort": app.admin_port,
                         "station": app.station, "tls": app.identity}
        if p == ["reset"] and method == "POST":
            app.reset()
            return 200, {}
        if p and p[0] in FEEDS:
            return self.feed(app, method, p, body, station)
        if len(p) == 2 and p[0] == "feeds" and p[1] in FEEDS and method == "GET":
            rows = store.all_items(station, p[1])
            return 200, {"items": [{"state": s, "id": i, "modified": m,
                                    **({"data": json.loads(d)} if d else {})}
                                   for i, m, s, d in rows],
                         "watermark": store.watermark(station, p[1])}
        if p == ["purge-tombstones"] and method == "POST":
            if "before" in body:
                before = int(body["before"])
            elif "olderThanMs" in body:
                before = now_ms() - int(body["olderThanMs"])
            else:
                before = 1 << 62
            return 200, {"purged": store.purge(before)}
        if len(p) == 3 and p[0] == "stations" and p[2] == "config":
            check_id(p[1], "station id")
            if method == "GET":
                config, etag = store.get_config(p[1])
                if config is None:
                    raise AdminError(404, f"no station {p[1]}")
                return 200, {"config": config, "etag": etag}
            if method == "PUT":
                if not isinstance(body, dict):
                    raise AdminError(400, "the config must be an object")
                return 200, {"etag": store.set_config(p[1], body)}
        if p == ["heartbeat"] and method == "GET":
            hb = store.get_heartbeat(station)
            if hb is None:
                raise AdminError(404, f"no heartbeat from {station}")
            return 200, hb
        if p == ["events"] and method == "GET":
            return 200, store.events_report(station)
        if p == ["usage"] and method == "GET":
            return 200, {"days": store.usage(station)}
        if p == ["enroll-tokens"]:
            if method == "POST":
                check_id(station, "stationId")
                token = body.get("token") or secrets.token_urlsafe(24)
                store.add_token(token, station)
                return 200, {"token": token, "stationId": station}
            if method == "GET":
                return 200, {"tokens": store.tokens()}
        if p == ["faults"]:
            if method == "POST":
                return 200, {"id": app.add_fault(body)}
            if method == "GET":
                with app.lock:
                    return 200, {"faults": [dict(f) for f in app.faults]}
            if method == "DELETE":
                with app.lock:
                    app.faults = []
                return 200, {}
        if len(p) == 2 and p[0] == "faults" and method == "DELETE":
            with app.lock:
                app.faults = [f for f in app.faults if str(f["id"]) != p[1]]
            return 200, {}
        if p == ["tls"] and method == "PUT":
            ident = body.get("identity")
            if ident not in app.contexts:
                raise AdminError(400, "identity: normal or mitm")
            with app.lock:
                app.identity = ident
            return 200, {"identity": ident}
        if p == ["requests"]:
            with app.lock:
                if method == "GET":
                    return 200, {"requests": list(app.requests),
                                 "handshakeFailures": list(app.handshake_failures)}
                if method == "DELETE":
                    app.requests = []
                    app.handshake_failures = []
                    return 200, {}
        raise AdminError(404, f"no admin route {method} {self.path}")

    def feed(self, app, method, p, body, station):
        feed = p[0]
        store = app.store
        check = VALIDATORS[feed]
        control = ("stationId", "unchecked", "moveTo")
        unchecked = bool(body.get("unchecked")) if isinstance(body, dict) else False

        def clean(d):
            if not isinstance(d, dict):
                raise AdminError(400, "an item's data must be an object")
            d = {k: v for k, v in d.items() if k not in control}
            if not unchecked:
                check(d)
            elif not isinstance(d.get("identifier"), str) or not d["identifier"]:
                raise AdminError(400, "identifier: required even when unchecked")
            return d

        if len(p) == 1 and method == "POST":
            datas = [clean(d) for d in body["items"]] if "items" in body else [clean(body)]
            if not datas:
                raise AdminError(400, "items: empty")
            return 200, {"modified": store.upsert(station, feed, datas),
                         "ids": [d["identifier"] for d in datas]}
        if len(p) < 2:
            raise AdminError(404, "no such admin route")
        item_id = urllib.parse.unquote(p[1])
        if len(p) == 2 and method == "DELETE":
            m = store.tombstone(station, feed, item_id)
            if m is None:
                raise AdminError(404, f"no {feed} item {item_id} in {station}")
            return 200, {"modified": m}
        old = store.get_data(station, feed, item_id)
        if old is None:
            raise AdminError(404, f"no {feed} item {item_id} in {station}")
        if len(p) == 2 and method == "PATCH":
            new = dict(old)
            new.update({k: v for k, v in body.items() if k not in control})
            new["identifier"] = item_id
            new = clean(new)
            to = body.get("moveTo")
            if to and to != station:
                check_id(to, "moveTo")
                return 200, {"modified": store.move(station, feed, item_id, new, to)}
            return 200, {"modified": store.upsert(station, feed, [new])}
        action = {"reservations": ("cancel", "reservationStatus", "cancelled"),
                  "credentials": ("revoke", "status", "revoked")}[feed]
        if len(p) == 3 and p[2] == action[0] and method == "POST":
            new = dict(old)
            new[action[1]] = action[2]
            return 200, {"modified": store.upsert(station, feed, [new])}
        raise AdminError(404, "no such admin route")


class AdminServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, addr, app):
        self.app = app
        super().__init__(addr, AdminHandler)

    def get_request(self):
        sock, addr = super().get_request()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, addr


# ---------------------------------------------------------------------------- main

def main(argv=None):
    ap = argparse.ArgumentParser(description="city API reference server for lockerd's tests")
    ap.add_argument("--db", required=True, help="SQLite file (created if missing)")
    ap.add_argument("--certs", required=True, help="directory of mkcerts.sh's files")
    ap.add_argument("--port", type=int, default=0, help="HTTPS port (0: any free one)")
    ap.add_argument("--admin-port", type=int, default=0, help="admin HTTP port (0: any)")
    ap.add_argument("--station", required=True, help="the station id (CN of client.pem)")
    ap.add_argument("--host", default="127.0.0.1", help="HTTPS listen address")
    ap.add_argument("--tombstone-retention-days", type=float, default=7.0)
    ap.add_argument("--verbose", action="store_true", help="log requests to stderr")
    args = ap.parse_args(argv)
    faulthandler.register(signal.SIGUSR1)  # kill -USR1 PID: stack of every thread
    if not ID_RE.fullmatch(args.station):
        ap.error("--station: 1..63 characters of [A-Za-z0-9._:-]")

    if not os.path.exists(os.path.join(args.certs, "server.pem")):
        mk = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mkcerts.sh")
        subprocess.run([mk, args.certs, args.station], check=True)

    app = App(args)
    api = ApiServer((args.host, args.port), app)
    admin = AdminServer(("127.0.0.1", args.admin_port), app)
    app.port = api.server_address[1]
    app.admin_port = admin.server_address[1]

    # SIGTERM/SIGINT are blocked in every thread and taken by sigwait() in this one:
    # no Python-level handler that could run while a lock is held.
    signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05},
                                daemon=True) for s in (api, admin)]
    for t in threads:
        t.start()
    host = args.host if ":" not in args.host else f"[{args.host}]"
    print(json.dumps({"ready": True, "port": app.port, "adminPort": app.admin_port,
                      "pid": os.getpid(), "station": args.station,
                      "baseUrl": f"https://{host}:{app.port}{BASE}",
                      "adminUrl": f"http://127.0.0.1:{app.admin_port}"}), flush=True)
    signal.sigwait(signals)
    stoppers = [threading.Thread(target=s.shutdown) for s in (api, admin)]
    for t in stoppers:
        t.start()
    for t in stoppers:
        t.join()
    for s in (api, admin):
        s.server_close()
    app.store.close()  # waits for a transaction in progress
    return 0


if __name__ == "__main__":
    sys.exit(main())
