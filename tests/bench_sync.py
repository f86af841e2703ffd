#!/usr/bin/env python3
"""City API sync throughput and memory (part of `make bench`; issue 4, point 9).

Runs a real lockerd (simulated hardware) against the reference server
(tests/cityapi/server.py) over mutual TLS, as the scenario tests do, and prints
figures; it asserts correctness (every reservation arrived, every event once) but
never timings.

1. Initial sync of N reservations (default 10,000 and 100,000: memory must follow
   the page size, not the feed size). The reservations (and 20 credentials) are
   bulk-loaded through the server's admin API before lockerd starts; then lockerd
   is started with -d and `lockerctl sync now --timeout 600` is run (again while it
   times out, up to --max-wait). Figures: wall time from starting lockerd until
   `sync now` returns, the server's span from the first to the last feed request
   and their number (GET /admin/requests), CPU seconds of lockerd, its sync worker
   and the server, and the peak RSS (VmHWM) of lockerd and of the worker, read
   while both still run, after the sync. lockerd's stderr is read through a pipe
   and each "sync: applied 100 reservations" line (one per committed page)
   timestamped: the time from commit to commit, early and late in the feed, shows
   whether a page costs the same at the end as at the start. Then a plain Python
   client pages through the same feed on one keep-alive mTLS connection with
   limit=100 and limit=500: the reference server's own share.
2. Upload of N queued events (default 10,000): tests/bench_sync_fill.c appends them
   through store_event_add() to the database of a stopped station; lockerd is
   started, `sync now` issued, and `lockerctl --json sync status` polled until
   outboxDepth is 0. The server must then hold every event of the station's log
   exactly once (the N plus the station's own), with no duplicate attempts.

usage: LOCKERD=build/lockerd LOCKERCTL=build/lockerctl BENCH_SYNC_FILL=build/bench_sync_fill \\
           python3 tests/bench_sync.py [--reservations 10000,100000] [--events 10000] [--runs 1]
           [--skip-feed] [--skip-upload]

Python 3 standard library only.
"""

import argparse
import datetime
import http.client
import json
import os
import re
import signal
import ssl
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "scenario"))

from harness import LOCKERCTL, LOCKERD, REPO, Station, wait_until  # noqa: E402
from city import CityServer, city_station_extra  # noqa: E402

FILL = os.path.abspath(os.environ.get("BENCH_SYNC_FILL", os.path.join(REPO, "build",
                                                                        "bench_sync_fill")))
CHUNK = 5000
APPLIED_RE = re.compile(r"sync: applied (\d+) (reservations|credentials)")


def proc_status(pid):
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def kib(pid, field):
    return int(proc_status(pid)[field].split()[0])


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def mb(k):
    return "%.1f MB" % (k / 1024)


def pct(values, p):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


class Lockerd:
    """lockerd -d on a Station's config, stderr read line by line and timestamped."""

    def __init__(self, st):
        self.st = st
        self.lines = []  # (monotonic s, text)
        self.t_start = time.monotonic()
        self.proc = subprocess.Popen([LOCKERD, "-d", "-c", st.conf], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     env=st.env, cwd=st.dir)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        deadline = time.monotonic() + 10
        while st.ctl("status", check=False).rc != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("lockerd did not start:\n" + self.text()[-3000:])
            time.sleep(0.01)
        self.t_up = time.monotonic()

    def _read(self):
        for raw in self.proc.stderr:
            # wall clock, to line up with the server's request log
            self.lines.append((time.time(), raw.decode("utf-8", "replace").rstrip("\n")))

    def text(self):
        return "\n".join(t for _, t in self.lines)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(5)


def ctl(st, *args, timeout=700):
    p = subprocess.run([LOCKERCTL, "-s", st.sock, "--json"] + [str(a) for a in args],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=timeout)
    return p.returncode, (json.loads(p.stdout) if p.stdout.strip() else None), p.stderr


def sync_status(st):
    rc, data, err = ctl(st, "sync", "status", timeout=30)
    if rc != 0:
        raise SystemExit("sync status failed: %s" % err)
    return data


def utc(ms):
    return datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.timezone.utc) \
        .strftime("%Y-%m-%dT%H:%M:%SZ")


def reservations(n):
    """n reservations: 30 clubs, 4 compartments, 90-minute slots every 2 h from
    tomorrow on, without overlaps per compartment."""
    base = (int(time.time()) // 86400 + 1) * 86400 * 1000
    out = []
    for i in range(n):
        start = base + (i // 4) * 2 * 3600 * 1000
        club = i % 30
        out.append({"identifier": "r-%07d" % i, "startDate": utc(start),
                    "endDate": utc(start + 90 * 60 * 1000),
                    "organizer": {"identifier": "club-%02d" % club,
                                  "name": "Sportverein %02d e. V." % club},
                    "compartments": [1 + i % 4], "reservationStatus": "confirmed"})
    return out


def credentials(n):
    return [{"identifier": "cred-%03d" % i, "uidHmac": "%064x" % (0xC0FFEE + i),
             "cardType": "desfire", "member": {"identifier": "m-%03d" % i,
                                               "name": "Trainer %d" % i},
             "clubs": ["club-%02d" % (i % 30)], "validFrom": None, "validUntil": None,
             "status": "active"} for i in range(n)]


def bulk_load(city, feed, items):
    t0 = time.monotonic()
    for i in range(0, len(items), CHUNK):
        city.admin("POST", "/admin/" + feed, {"items": items[i:i + CHUNK]})
    return time.monotonic() - t0


def feed_requests(city, feed):
    return [r for r in city.requests()["requests"]
            if r["method"] == "GET" and r["path"].split("?")[0].endswith("/" + feed)]


def commit_times(lines):
    """Wall-clock times at which lockerd committed a page of reservations (its
    "sync: applied N reservations" line)."""
    out = []
    for t, text in lines:
        m = APPLIED_RE.search(text)
        if m and m.group(2) == "reservations":
            out.append(t)
    return out


def plain_client(city, limit):
    """Pages through the reservations feed as fast as Python can: one keep-alive mTLS
    connection, json.loads of each page, nothing else. Returns (s, pages, items,
    server CPU s)."""
    ctx = ssl.create_default_context(cafile=os.path.join(city.certs, "server-ca.pem"))
    ctx.load_cert_chain(os.path.join(city.certs, "client.pem"),
                        os.path.join(city.certs, "client.key"))
    u = urllib.parse.urlsplit(city.base_url)
    conn = http.client.HTTPSConnection(u.hostname, u.port, context=ctx, timeout=60)
    path = "%s/stations/%s/reservations?limit=%d" % (u.path, city.station, limit)
    pages = items = 0
    cpu0 = cpu_seconds(city.proc.pid)
    t0 = time.monotonic()
    while True:
        conn.request("GET", path)
        r = conn.getresponse()
        body = json.loads(r.read())
        if r.status != 200:
            raise SystemExit("plain client: HTTP %d %s" % (r.status, body))
        pages += 1
        items += len(body["items"])
        if not body["items"]:
            break
        n = urllib.parse.urlsplit(body["next"])
        path = n.path + "?" + n.query
    dt = time.monotonic() - t0
    conn.close()
    return dt, pages, items, cpu_seconds(city.proc.pid) - cpu0


# ------------------------------------------------------------------ 1. feed


def bench_feed(n, run, plain=True, max_wait=3600):
    city = CityServer(station="st-bench")
    try:
        city.start()
        city.set_config()
        items = reservations(n)
        t_load = bulk_load(city, "reservations", items)
        bulk_load(city, "credentials", credentials(20))
        del items
        st = Station(name="bench-sync", station={"id": "st-bench"},
                     extra=city_station_extra(city))
        try:
            return _bench_feed(city, st, n, run, t_load, plain, max_wait)
        finally:
            st.cleanup()
    finally:
        city.cleanup()


def _bench_feed(city, st, n, run, t_load, plain, max_wait):
    city.admin("DELETE", "/admin/requests")
    srv_cpu0 = cpu_seconds(city.proc.pid)
    d = Lockerd(st)
    try:
        t_now = time.monotonic()
        while True:
            rc, res, err = ctl(st, "sync", "now", "--timeout", "600")
            t_done = time.monotonic()
            if rc == 0:
                break
            # Not finished in 600 s: ask again (a new cycle) until max_wait.
            if "did not finish" not in err or t_done - t_now > max_wait:
                raise SystemExit("sync now failed (rc %d): %s %s\n%s" % (
                    rc, res, err, d.text()[-3000:]))
            print("  (sync now: not finished after %.0f s, waiting on)" % (t_done - t_now))
            sys.stdout.flush()
        srv_cpu = cpu_seconds(city.proc.pid) - srv_cpu0
        s = sync_status(st)
        wpid = s["worker"]["pid"]
        mem = {"lockerd": (kib(d.proc.pid, "VmHWM"), kib(d.proc.pid, "VmRSS")),
               "worker": (kib(wpid, "VmHWM"), kib(wpid, "VmRSS"))}
        cpu = {"lockerd": cpu_seconds(d.proc.pid), "worker": cpu_seconds(wpid)}
        restarts = s["worker"]["restarts"]
    finally:
        d.stop()
    got = st.db_query("SELECT count(*) FROM bookings WHERE source = 'city'"
                      " AND status = 'active'")[0][0]
    if got != n:
        raise SystemExit("the station holds %d city bookings, not %d" % (got, n))
    reqs = feed_requests(city, "reservations")
    creds = feed_requests(city, "credentials")
    span = (reqs[-1]["t"] - reqs[0]["t"]) / 1000 if reqs else float("nan")
    applied = commit_times(d.lines)
    # Time between two pages committed by lockerd. The worker fetches ahead (the
    # next page as soon as the last one is in the socket), so while the server span
    # is short, this is lockerd's own apply time per page.
    step_ms = [(b - a) * 1000 for a, b in zip(applied, applied[1:])]
    tenth = max(1, len(step_ms) // 10)
    last_req = reqs[-1]["t"] / 1000 if reqs else float("nan")
    behind = applied[-1] - last_req if applied else float("nan")
    wall = t_done - d.t_start
    print("feed %7d reservations, run %d:" % (n, run))
    print("  bulk load into the server (admin API, %d per call)  %6.2f s" % (CHUNK, t_load))
    print("  lockerd start -> `sync now` returned               %6.2f s  (start %.2f s,"
          " sync now %.2f s)" % (wall, d.t_up - d.t_start, t_done - t_now))
    print("  server: first -> last reservations request          %6.2f s  (%d requests,"
          " %d credentials requests)" % (span, len(reqs), len(creds)))
    print("  pages of reservations applied                       %6d  (%.0f reservations/s)"
          % (len(applied), n / wall))
    if step_ms:
        print("  commit to commit per page, first 10 %% of pages: p50 %7.1f ms, max %7.1f ms"
              % (statistics.median(step_ms[:tenth]), max(step_ms[:tenth])))
        print("  commit to commit per page, last 10 %% of pages:  p50 %7.1f ms, max %7.1f ms"
              % (statistics.median(step_ms[-tenth:]), max(step_ms[-tenth:])))
        print("  last page committed %.2f s after the server's last feed request" % behind)
    print("  CPU: server %.2f s, lockerd %.2f s, worker %.2f s (in %.2f s)"
          % (srv_cpu, cpu["lockerd"], cpu["worker"], wall))
    print("  peak RSS (VmHWM): lockerd %s, worker %s;  RSS now: lockerd %s, worker %s%s"
          % (mb(mem["lockerd"][0]), mb(mem["worker"][0]), mb(mem["lockerd"][1]),
             mb(mem["worker"][1]), "" if not restarts else "  (worker restarts: %d)" % restarts))
    out = {"n": n, "wall": wall, "span": span, "requests": len(reqs), "mem": mem, "cpu": cpu,
           "srv_cpu": srv_cpu, "step_ms": step_ms}
    if plain:
        for limit in (100, 500):
            dt, pages, items, scpu = plain_client(city, limit)
            print("  plain Python client, limit=%d: %d pages, %d items in %6.2f s"
                  " (server CPU %.2f s, %.1f ms per page)"
                  % (limit, pages, items, dt, scpu, dt * 1000 / pages))
            out["plain%d" % limit] = dt
    sys.stdout.flush()
    return out


# ------------------------------------------------------------------ 2. upload


def bench_upload(n, run):
    city = CityServer(station="st-bench")
    st = None
    try:
        city.start()
        city.set_config()
        # A first start without the city API creates the database, the site key and
        # the station's own first events; then the outbox is filled while lockerd is
        # stopped, and the [sync] section added.
        st = Station(name="bench-upload", station={"id": "st-bench"})
        st.start()
        st.stop()
        fill = subprocess.run([FILL, st.db_path, str(n)], capture_output=True, text=True)
        if fill.returncode != 0:
            raise SystemExit("bench_sync_fill: %s" % fill.stderr)
        depth0 = int(fill.stdout.strip())
        st.extra = city_station_extra(city)
        st.write_config()
        return _bench_upload(city, st, n, run, depth0)
    finally:
        if st is not None:
            st.cleanup()
        city.cleanup()


def _bench_upload(city, st, n, run, depth0):
    city.admin("DELETE", "/admin/requests")
    srv_cpu0 = cpu_seconds(city.proc.pid)
    d = Lockerd(st)
    try:
        now = subprocess.Popen([LOCKERCTL, "-s", st.sock, "--json", "sync", "now",
                                "--timeout", "600"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        wait_until(lambda: sync_status(st)["outboxDepth"] == 0, timeout=600,
                   what="the outbox to empty", interval=0.05)
        t_done = time.monotonic()
        srv_cpu = cpu_seconds(city.proc.pid) - srv_cpu0
        s = sync_status(st)
        wpid = s["worker"]["pid"]
        mem = {"lockerd": kib(d.proc.pid, "VmHWM"), "worker": kib(wpid, "VmHWM")}
        cpu = {"lockerd": cpu_seconds(d.proc.pid), "worker": cpu_seconds(wpid)}
        now.wait(600)
    finally:
        d.stop()
    local = [r[0] for r in st.db_query("SELECT event_id FROM events")]
    dead = st.db_query("SELECT count(*) FROM dead_letters")[0][0]
    got = city.events()
    ids = [e["eventId"] for e in got["events"]]
    if dead or got["rejected"]:
        raise SystemExit("%d dead letters, %d rejected" % (dead, len(got["rejected"])))
    if len(ids) != len(set(ids)):
        raise SystemExit("the server stored an event twice")
    if sorted(ids) != sorted(local):
        raise SystemExit("the server holds %d events, the station %d" % (len(ids), len(local)))
    own = len(local) - n
    posts = [r for r in city.requests()["requests"]
             if r["method"] == "POST" and r["path"].endswith("/events")]
    span = (posts[-1]["t"] - posts[0]["t"]) / 1000 if posts else float("nan")
    wall = t_done - d.t_start
    print("upload %6d queued events, run %d:" % (n, run))
    print("  outbox before start                                 %6d" % depth0)
    print("  lockerd start -> outbox empty                       %6.2f s  (%.0f events/s)"
          % (wall, len(local) / wall))
    print("  server: first -> last POST /events                  %6.2f s  (%d requests)"
          % (span, len(posts)))
    print("  server holds %d events = %d + %d of the station's own, each once"
          " (duplicate attempts: %d)" % (len(ids), n, own, got["duplicateAttempts"]))
    print("  CPU: server %.2f s, lockerd %.2f s, worker %.2f s"
          % (srv_cpu, cpu["lockerd"], cpu["worker"]))
    print("  peak RSS (VmHWM): lockerd %s, worker %s" % (mb(mem["lockerd"]), mb(mem["worker"])))
    sys.stdout.flush()
    return {"n": n, "wall": wall, "span": span, "posts": len(posts), "mem": mem}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reservations", default="10000,100000",
                    help="comma-separated feed sizes (default 10000,100000)")
    ap.add_argument("--events", type=int, default=10000)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--skip-feed", action="store_true")
    ap.add_argument("--skip-upload", action="store_true")
    ap.add_argument("--no-plain", action="store_true", help="skip the plain Python client")
    ap.add_argument("--max-wait", type=float, default=3600,
                    help="give up on a feed sync after this many seconds (default 3600)")
    args = ap.parse_args()
    for run in range(1, args.runs + 1):
        if not args.skip_feed:
            for n in (int(x) for x in args.reservations.split(",") if x):
                bench_feed(n, run, plain=not args.no_plain, max_wait=args.max_wait)
        if not args.skip_upload:
            bench_upload(args.events, run)


if __name__ == "__main__":
    main()
