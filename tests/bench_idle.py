#!/usr/bin/env python3
"""Idle cost and memory of lockerd (part of `make bench`).

Starts a simulated station, runs 200 pickup/return cycles through lockerctl so
that every code path has touched its memory, then measures over 30 s of idleness:
CPU time (utime + stime from /proc/PID/stat), wakeups per second (voluntary and
involuntary context switches from /proc/PID/status) and peak RSS (VmHWM).

usage: LOCKERD=build/lockerd LOCKERCTL=build/lockerctl tests/bench_idle.py [SECONDS]
"""
import os
import subprocess
import sys
import tempfile
import time

LOCKERD = os.environ.get("LOCKERD", "build/lockerd")
LOCKERCTL = os.environ.get("LOCKERCTL", "build/lockerctl")
SECONDS = float(sys.argv[1]) if len(sys.argv) > 1 else 30.0
UID = "04A1B2C3D4E5F6"


def status(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            fields[k] = v.strip()
    return fields


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(parts[11]) + int(parts[12])) / ticks  # utime, stime


def switches(pid):
    s = status(pid)
    return int(s["voluntary_ctxt_switches"]) + int(s["nonvoluntary_ctxt_switches"])


def main():
    with tempfile.TemporaryDirectory(prefix="lockerd-idle-") as d:
        conf = os.path.join(d, "lockerd.conf")
        with open(conf, "w") as f:
            f.write(f"""[station]
id = bench
state_dir = {d}/state
runtime_dir = {d}/run
[reader]
backend = sim
[gpio]
backend = sim
""")
            for n in range(1, 5):
                f.write(f"[compartment.{n}]\nlock = L{n}\ndoor = D{n}\nkey = K{n}\n")
        sock = f"{d}/run/control.sock"
        log = open(os.path.join(d, "lockerd.log"), "w")
        proc = subprocess.Popen([LOCKERD, "-c", conf], stderr=log)

        def ctl(*args):
            subprocess.run([LOCKERCTL, "-s", sock, *args], check=True,
                           stdout=subprocess.DEVNULL)

        deadline = time.monotonic() + 10
        while subprocess.run([LOCKERCTL, "-s", sock, "status"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL).returncode != 0:
            if time.monotonic() > deadline or proc.poll() is not None:
                sys.exit("lockerd did not start")
            time.sleep(0.05)
        member = subprocess.run([LOCKERCTL, "-s", sock, "club", "add", "c1", "Club"],
                                check=True, capture_output=True)
        member = subprocess.run([LOCKERCTL, "-s", sock, "member", "add", "--club", "c1",
                                 "--name", "Bench"], check=True, capture_output=True,
                                text=True).stdout.strip()
        ctl("card", "add", member, "--uid", UID)
        now = time.time()
        fmt = lambda t: time.strftime("%Y-%m-%dT%H:%M%z", time.localtime(t))
        ctl("booking", "add", "--club", "c1", "--compartment", "1",
            "--from", fmt(now - 600), "--to", fmt(now + 7200))
        for _ in range(100):
            for put in ("take", "put"):
                ctl("sim", "tap", UID)
                ctl("sim", "door", "1", "open")
                ctl("sim", "key", "1", put)
                ctl("sim", "door", "1", "close")

        pid = proc.pid
        c0, w0, t0 = cpu_seconds(pid), switches(pid), time.monotonic()
        time.sleep(SECONDS)  # the measurement itself: lockerd must stay asleep
        c1, w1, t1 = cpu_seconds(pid), switches(pid), time.monotonic()
        hwm = status(pid)["VmHWM"]
        rss = status(pid)["VmRSS"]
        proc.terminate()
        proc.wait(10)
        secs = t1 - t0
        print(f"idle over {secs:.0f} s: CPU {1000 * (c1 - c0):.0f} ms, "
              f"wakeups {(w1 - w0) / secs:.2f}/s; RSS now {rss}, peak {hwm} "
              f"(after 200 cycles)")


if __name__ == "__main__":
    main()
