#!/usr/bin/env python3
"""`lockerctl report` through lockerd over a year of a busy hall (part of `make bench`).

build/bench_report -k builds the database (20,000 bookings, about 40,000 events,
see tests/bench_report.c); this starts lockerd on it with simulated hardware and its
clock moved to a day after the year, and measures end to end, lockerctl process
included: the year's report as JSON and as the table, the default four-week report,
and lockerd's peak resident set (VmHWM) before and after, against the 10 MB budget.

usage: LOCKERD=build/lockerd LOCKERCTL=build/lockerctl BENCH_REPORT=build/bench_report \
       tests/bench_report.py [RUNS]
"""
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

LOCKERD = os.environ.get("LOCKERD", "build/lockerd")
LOCKERCTL = os.environ.get("LOCKERCTL", "build/lockerctl")
BENCH_REPORT = os.environ.get("BENCH_REPORT", "build/bench_report")
RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 5


def vm(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024  # MB
    return 0.0


def main():
    with tempfile.TemporaryDirectory(prefix="lockerd-report-") as d:
        subprocess.run([BENCH_REPORT, "-k", "-r", "1", "-d", d], check=True,
                       stdout=subprocess.DEVNULL)
        os.makedirs(f"{d}/state")
        shutil.move(f"{d}/bench-report.db", f"{d}/state/lockerd.db")
        con = sqlite3.connect(f"{d}/state/lockerd.db")
        first, last = con.execute("SELECT min(start_ms), max(end_ms) FROM bookings").fetchone()
        nbook, = con.execute("SELECT count(*) FROM bookings").fetchone()
        nev, = con.execute("SELECT count(*) FROM events").fetchone()
        con.close()

        conf = os.path.join(d, "lockerd.conf")
        with open(conf, "w") as f:
            f.write(f"""[station]
id = bench
name = Sporthalle Benchmark
state_dir = {d}/state
runtime_dir = {d}/run
sim_clock = yes
[reader]
backend = sim
[gpio]
backend = sim
""")
            for n in range(1, 7):
                f.write(f"[compartment.{n}]\nlock = L{n}\ndoor = D{n}\nkey = K{n}\n"
                        f"hall = halle-{(n + 1) // 2}\n")
        sock = f"{d}/run/control.sock"
        env = dict(os.environ, LOCKERD_SOCKET=sock)
        log = open(os.path.join(d, "lockerd.log"), "w")
        proc = subprocess.Popen([LOCKERD, "-c", conf], stderr=log, stdout=subprocess.DEVNULL)
        try:
            for _ in range(500):
                if subprocess.run([LOCKERCTL, "status"], env=env, capture_output=True).returncode == 0:
                    break
                time.sleep(0.02)
            ahead = last + 86400000 - int(time.time() * 1000)
            subprocess.run([LOCKERCTL, "sim", "clock", "advance", f"{ahead}ms"], env=env,
                           check=True, capture_output=True)
            day = lambda ms: time.strftime("%Y-%m-%d", time.localtime(ms / 1000))
            period = ["--from", day(first), "--to", day(last)]
            rss0 = vm(proc.pid, "VmRSS")
            hwm0 = vm(proc.pid, "VmHWM")

            def timed(args):
                t = []
                out = None
                for _ in range(RUNS):
                    t0 = time.monotonic()
                    p = subprocess.run([LOCKERCTL] + args, env=env, capture_output=True, check=True)
                    t.append((time.monotonic() - t0) * 1000)
                    out = p.stdout
                return statistics.median(t), max(t), out

            j_med, j_max, out = timed(["--json", "report"] + period)
            booked = json.loads(out)["total"]["booked"]
            t_med, t_max, _ = timed(["report"] + period)
            d_med, d_max, _ = timed(["report"])
            hwm1 = vm(proc.pid, "VmHWM")
            rss1 = vm(proc.pid, "VmRSS")
            print(f"report through lockerd and lockerctl: {nbook} bookings, {nev} events "
                  f"(year: {booked} booked, {len(out)} bytes of JSON)")
            print(f"  year, --json       median {j_med:7.1f} ms  max {j_max:7.1f} ms")
            print(f"  year, table        median {t_med:7.1f} ms  max {t_max:7.1f} ms")
            print(f"  last 4 weeks       median {d_med:7.1f} ms  max {d_max:7.1f} ms")
            print(f"  lockerd VmHWM      {hwm0:.1f} MB before, {hwm1:.1f} MB after "
                  f"(VmRSS {rss0:.1f} -> {rss1:.1f} MB)")
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            log.close()


if __name__ == "__main__":
    main()
