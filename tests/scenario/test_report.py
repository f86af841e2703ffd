"""Scenario test: `lockerctl report` over a generated history of six months.

The history is lived through by a real lockerd on simulated hardware: bookings are
added, trainers tap, take and return keys, keys come back late and go overdue, some
bookings are no-shows, one is cancelled and one moved (cancelled and booked again
at another time), and the spring change to summer time falls in the middle. Time
moves with the simulated clock, first to the first Monday of the next January and
then week by week; nothing sleeps.

The expected figures are computed here from the plan of the history, independently
of lockerd's report code: counts exactly, durations to the second (each action
happens a few milliseconds after its planned time, because real time passes too).

The bulk of the history goes through the control socket directly (one connection,
the same JSON requests lockerctl sends), which takes seconds instead of the minutes
that a lockerctl process per step would; the report is asked for with lockerctl.
"""

import csv
import datetime
import io
import json
import random
import socket
import time
import unittest
import xml.etree.ElementTree as ET
import zoneinfo

from harness import StationTestCase, WAIT_TIMEOUT, wait_until

TZ = zoneinfo.ZoneInfo("Europe/Berlin")
WEEKS = 26  # six months
GRACE_MIN = 15  # [policy] return_grace default
TOLERANCE_MS = 2000  # per timed action: the real time a step takes


class Control:
    """One connection to lockerd's control socket: a JSON line out, a JSON line back."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.rfile = self.sock.makefile("rb")

    def close(self):
        self.rfile.close()
        self.sock.close()

    def call(self, cmd, **args):
        self.sock.sendall(json.dumps({"cmd": cmd, "args": args}).encode() + b"\n")
        reply = json.loads(self.rfile.readline())
        if not reply.get("ok"):
            raise AssertionError("%s %r failed: %r" % (cmd, args, reply))
        return reply["result"]


class Booking:
    def __init__(self, club, compartment, start, minutes):
        self.club = club
        self.compartment = compartment
        self.start = start  # aware datetime, Europe/Berlin
        self.end = start + datetime.timedelta(minutes=minutes)
        self.id = None
        self.cancelled = False
        self.pickup = None  # minutes after the start (negative: before), None: no-show
        self.back = None  # minutes after the end
        self.refused_tap = False  # a tap after the pickup window (refused)

    @property
    def start_ms(self):
        return int(self.start.timestamp() * 1000)

    @property
    def end_ms(self):
        return int(self.end.timestamp() * 1000)

    @property
    def hall(self):
        return "halle-%d" % self.compartment

    @property
    def week(self):
        local = self.start.astimezone(TZ)
        y, w, _ = local.isocalendar()
        return "%d-W%02d" % (y, w)


def first_monday_of_next_january(now):
    day = datetime.date(now.year + 1, 1, 1)
    while day.weekday() != 0:
        day += datetime.timedelta(days=1)
    return day


def local(day, hh, mm):
    """Local wall time in Europe/Berlin on day (a time that exists)."""
    return datetime.datetime(day.year, day.month, day.day, hh, mm, tzinfo=TZ)


def plan_history(monday0):
    """The bookings of WEEKS weeks and what happens to each, from a fixed seed."""
    rnd = random.Random(20270104)
    # club, compartment, weekday (0 = Monday), hh, mm, minutes
    weekly = [
        ("club-a", 1, 0, 18, 0, 120),
        ("club-b", 2, 1, 17, 0, 90),
        ("club-c", 1, 2, 19, 0, 120),
        ("club-a", 2, 3, 18, 0, 90),
        ("club-b", 1, 6, 22, 30, 75),  # Sunday late: the last slot of the week
    ]
    bookings = []
    dst_week = None
    for w in range(WEEKS):
        monday = monday0 + datetime.timedelta(weeks=w)
        for club, comp, wd, hh, mm, minutes in weekly:
            bookings.append(Booking(club, comp, local(monday + datetime.timedelta(days=wd), hh, mm),
                                    minutes))
        sunday = monday + datetime.timedelta(days=6)
        if local(sunday, 1, 0).utcoffset() != local(sunday, 4, 0).utcoffset():
            dst_week = w
    assert dst_week is not None and dst_week + 1 < WEEKS, "no change to summer time in the plan"
    # Monday 00:15: in UTC still Sunday, so a week cut in UTC would miss it. Right
    # after the change to summer time, and in a few other weeks.
    for w in sorted({dst_week + 1, 3, 11, 20}):
        monday = monday0 + datetime.timedelta(weeks=w)
        bookings.append(Booking("club-c", 2, local(monday, 0, 15), 45))

    for b in bookings:
        if rnd.random() < 0.2:
            continue  # no-show
        b.pickup = rnd.choice([-10, -2, 0, 3, 7, 12, 25])
        b.back = rnd.choice([-30, -5, 0, 10, 25, 40])
    # A cancelled booking and a moved one (cancelled, then booked again on Friday).
    cancelled = bookings[5 * 2 + 1]
    cancelled.cancelled = True
    cancelled.pickup = cancelled.back = None
    moved = bookings[5 * 5 + 2]
    moved.cancelled = True
    moved.pickup = moved.back = None
    again = Booking(moved.club, moved.compartment,
                    moved.start + datetime.timedelta(days=2), 120)
    again.pickup, again.back = 4, -10
    bookings.append(again)
    # A no-show whose trainer comes too late: refused, still a no-show.
    late = next(b for b in bookings[8:] if b.pickup is None and not b.cancelled)
    late.refused_tap = True
    # At least one late return in the week of the change.
    in_dst = [b for b in bookings if b.week == bookings[5 * dst_week].week and b.pickup is not None]
    in_dst[0].back = 40
    bookings.sort(key=lambda b: b.start)
    return bookings, dst_week


def expected_metrics(bks):
    active = [b for b in bks if not b.cancelled]
    taken = [b for b in active if b.pickup is not None]
    delays = sorted(max(0, b.pickup) * 60000 for b in taken)
    median = worst = None
    if delays:
        mid = len(delays) // 2
        median = delays[mid] if len(delays) % 2 else (delays[mid - 1] + delays[mid]) // 2
        worst = delays[-1]
    late = [b for b in taken if b.back > GRACE_MIN]
    return {
        "booked": len(active),
        "collected": len(taken),
        "noShows": len(active) - len(taken),
        "pending": 0,
        "cancelled": len(bks) - len(active),
        "lateReturns": len(late),
        "overdue": len(late),
        "medianDelayMs": median,
        "worstDelayMs": worst,
        "bookedMs": sum(b.end_ms - b.start_ms for b in active),
        "keyOutMs": sum((b.end_ms + b.back * 60000) - (b.start_ms + b.pickup * 60000)
                        for b in taken),
        "_timed": len(taken),
    }


class ReportHistoryTest(StationTestCase):

    def assertMetrics(self, got, want, what):
        for key, value in want.items():
            if key.startswith("_"):
                continue
            if key in ("medianDelayMs", "worstDelayMs") and value is not None:
                self.assertAlmostEqual(got[key], value, delta=TOLERANCE_MS, msg="%s %s" % (what, key))
            elif key == "keyOutMs":
                self.assertAlmostEqual(got[key], value, delta=TOLERANCE_MS * max(1, want["_timed"]),
                                       msg="%s %s" % (what, key))
            else:
                self.assertEqual(got[key], value, "%s %s" % (what, key))

    def live_through(self, st, ctl, bookings, members):
        """Plays the plan on the station, in time order."""
        offset = [0]

        def now_ms():
            # lockerd's clock is the system clock plus the simulated offset.
            return time.time_ns() // 1000000 + offset[0]

        def advance_to(ms):
            d = ms - now_ms()
            self.assertGreater(d, 0, "the plan went back in time")
            ctl.call("sim.clock", advance="%dms" % d)
            offset[0] += d

        status = ctl.call("status")
        station_now = datetime.datetime.fromisoformat(status["station"]["time"])
        self.assertLess(abs(station_now.timestamp() * 1000 - now_ms()), 2000)

        actions = []  # (time ms, order, what, booking)
        for b in bookings:
            if b.refused_tap:
                actions.append((b.start_ms + 45 * 60000, 0, "refused", b))
            if b.pickup is None:
                continue
            t_pick = b.start_ms + b.pickup * 60000
            t_back = b.end_ms + b.back * 60000
            actions.append((t_pick, 1, "pickup", b))
            if b.back > GRACE_MIN:
                actions.append((b.end_ms + (GRACE_MIN + 1) * 60000, 2, "overdue", b))
            actions.append((t_back, 3, "return", b))
        actions.sort(key=lambda a: (a[0], a[1]))

        def last_seq():
            # Asking for the events after a seq far ahead returns only lastSeq.
            return ctl.call("events", since=2**31)["lastSeq"]

        for when, _, what, b in actions:
            advance_to(when)
            uid = members[b.club]
            n = b.compartment
            if what == "refused":
                r = ctl.call("sim.tap", uid=uid)
                self.assertEqual(r["outcome"], "refused", r)
            elif what == "pickup":
                r = ctl.call("sim.tap", uid=uid)
                self.assertEqual((r["outcome"], r.get("compartment")), ("pickup", n), r)
                ctl.call("sim.door", compartment=n, state="open")
                ctl.call("sim.key", compartment=n, action="take")
                self.assertEqual(ctl.call("sim.door", compartment=n, state="close")["state"],
                                 "locked_empty")
                b.pick_seq = last_seq()
            elif what == "overdue":
                # The overdue timer fires in lockerd's loop after the clock moved:
                # wait for it before the key comes back.
                def overdue(b=b):
                    evs = ctl.call("events", since=b.pick_seq)["events"]
                    return any(e["type"] == "key.overdue" and e.get("booking") == b.id
                               for e in evs)
                wait_until(overdue, WAIT_TIMEOUT, "key.overdue of %s" % b.id)
            else:
                r = ctl.call("sim.tap", uid=uid)
                self.assertEqual((r["outcome"], r.get("compartment")), ("return", n), r)
                ctl.call("sim.door", compartment=n, state="open")
                ctl.call("sim.key", compartment=n, action="put")
                self.assertEqual(ctl.call("sim.door", compartment=n, state="close")["state"],
                                 "locked_full")
        # A day after the last slot every pickup window is over.
        advance_to(bookings[-1].end_ms + 86400000)

    def test_six_months(self):
        st = self.make_station(start=False, compartments=2,
                               station={"retention": "1000d"})
        st.start()
        started = time.monotonic()
        monday0 = first_monday_of_next_january(st.now())
        bookings, dst_week = plan_history(monday0)

        clubs = {"club-a": "SV Warnemünde", "club-b": "TSV Rostock, Abt. Volleyball",
                 "club-c": "HSG \"Uni\" & Freunde"}
        members = {}
        for i, (club, name) in enumerate(sorted(clubs.items())):
            st.add_club(club, name)
            m = st.add_member(club, "Trainer %d" % i)
            uid = "04A1B2C3D4E5%02X" % i
            st.add_card(m, uid)
            members[club] = uid

        ctl = Control(st.sock)
        self.addCleanup(ctl.close)
        for b in bookings:
            b.id = ctl.call("booking.add", club=b.club, compartment=b.compartment,
                            **{"from": b.start.isoformat(timespec="minutes"),
                               "to": b.end.isoformat(timespec="minutes")})["id"]
            if b.cancelled:
                ctl.call("booking.cancel", id=b.id)
        self.live_through(st, ctl, bookings, members)
        generated = time.monotonic() - started

        first_day = monday0.isoformat()
        last_day = (monday0 + datetime.timedelta(weeks=WEEKS, days=-1)).isoformat()
        in_period = [b for b in bookings if b.start.date() <= monday0 +
                     datetime.timedelta(weeks=WEEKS, days=-1)]
        self.assertGreaterEqual(len(in_period), WEEKS * 5)
        r = st.j("report", "--from", first_day, "--to", last_day)

        # The period: from Monday 00:00 to the end of the last Sunday, local time.
        self.assertEqual(datetime.datetime.fromisoformat(r["from"]),
                         local(monday0, 0, 0))
        self.assertEqual(datetime.datetime.fromisoformat(r["to"]),
                         local(monday0 + datetime.timedelta(weeks=WEEKS), 0, 0))

        self.assertMetrics(r["total"], expected_metrics(in_period), "total")
        for club in clubs:
            got = [g for g in r["byClub"] if g["club"] == club]
            self.assertEqual(len(got), 1, club)
            self.assertEqual(got[0]["clubName"], clubs[club])
            self.assertMetrics(got[0], expected_metrics([b for b in in_period if b.club == club]),
                               club)
        for hall in ("halle-1", "halle-2"):
            got = [g for g in r["byHall"] if g["hall"] == hall]
            self.assertMetrics(got[0], expected_metrics([b for b in in_period if b.hall == hall]),
                               hall)
        keys = sorted({(b.compartment, b.club) for b in in_period})
        self.assertEqual([(g["compartment"], g["club"]) for g in r["rows"]], keys)
        for g in r["rows"]:
            want = [b for b in in_period if (b.compartment, b.club) == (g["compartment"], g["club"])]
            self.assertEqual(g["hall"], "halle-%d" % g["compartment"])
            self.assertMetrics(g, expected_metrics(want), "row %s" % g)

        # Weeks: 26 Mondays at local midnight, each booking in the week of its local
        # start, the one after the change to summer time included.
        self.assertEqual(len(r["weeks"]), WEEKS)
        for i, w in enumerate(r["weeks"]):
            monday = monday0 + datetime.timedelta(weeks=i)
            self.assertEqual(datetime.datetime.fromisoformat(w["start"]), local(monday, 0, 0))
            for g in w["clubs"]:
                want = expected_metrics([b for b in in_period
                                         if b.week == w["week"] and b.club == g["club"]])
                self.assertEqual((g["booked"], g["collected"], g["cancelled"]),
                                 (want["booked"], want["collected"], want["cancelled"]),
                                 "%s %s" % (w["week"], g["club"]))
        after = r["weeks"][dst_week + 1]
        self.assertEqual(datetime.datetime.fromisoformat(after["start"]).utcoffset(),
                         datetime.timedelta(hours=2))
        self.assertEqual(datetime.datetime.fromisoformat(r["weeks"][dst_week]["start"]).utcoffset(),
                         datetime.timedelta(hours=1))

        # The same figures as CSV and as a table; the chart is well-formed SVG.
        c = st.ctl_raw("report", "--from", first_day, "--to", last_day, "--csv", json_out=False)
        self.assertEqual(c.rc, 0, c)
        rows = list(csv.DictReader(io.StringIO(c.stdout)))
        total = [x for x in rows if x["level"] == "total"][0]
        self.assertEqual(int(total["booked"]), r["total"]["booked"])
        self.assertEqual(int(total["no_shows"]), r["total"]["noShows"])
        named = [x for x in rows if x["level"] == "club" and x["club"] == "club-c"][0]
        self.assertEqual(named["club_name"], clubs["club-c"])
        self.assertEqual(len([x for x in rows if x["level"] == "week-club"]),
                         sum(len(w["clubs"]) for w in r["weeks"]))
        t = st.ctl_raw("report", "--from", first_day, "--to", last_day, json_out=False)
        self.assertEqual(t.rc, 0, t)
        self.assertIn("by club", t.stdout)
        self.assertIn(clubs["club-a"], t.stdout)
        svg = st.dir + "/report.svg"
        s = st.ctl_raw("report", "--from", first_day, "--to", last_day, "--svg", svg,
                       json_out=False)
        self.assertEqual(s.rc, 0, s)
        root = ET.parse(svg).getroot()
        self.assertEqual(root.tag, "{http://www.w3.org/2000/svg}svg")
        texts = "".join(root.itertext())
        for name in clubs.values():
            self.assertIn(name, texts)
        bars = root.findall(".//{http://www.w3.org/2000/svg}rect")
        self.assertGreaterEqual(len(bars), 2 * WEEKS * len(clubs))

        # The default period is the last four weeks before now: the history ended a
        # day after its last slot, so the last three or four weeks are in it.
        d = st.j("report")
        self.assertGreater(d["total"]["booked"], 0)
        self.assertLess(d["total"]["booked"], r["total"]["booked"])
        self.assertTrue(st.j("events", "--verify")["intact"])
        st.stop()
        print("\n  %d bookings, %d events over %d weeks generated in %.1f s"
              % (len(bookings), st.db_query("SELECT count(*) FROM events")[0][0], WEEKS,
                 generated))

    def test_bad_periods(self):
        st = self.make_station()
        cases = [
            (["report", "--from", "2026-02-30"], 1, "not a date"),
            (["report", "--from", "2026-03-10", "--to", "2026-03-01"], 1, "empty"),
            (["report", "--from", "2020-01-01", "--to", "2026-01-01"], 1, "at most"),
            (["report", "--to", "tomorrow"], 1, "not a date"),
            (["report", "--csv", "--json"], 2, "exclude"),
            (["report", "--from"], 2, "missing its value"),
            (["report", "--week"], 2, "unknown option"),
            (["report", "--svg", "/nonexistent-dir/x.svg"], 1, "cannot write"),
        ]
        for args, rc, text in cases:
            r = st.ctl_raw(*args, json_out=False)
            self.assertEqual(r.rc, rc, r)
            self.assertIn(text, r.stderr, r)


if __name__ == "__main__":
    unittest.main()
