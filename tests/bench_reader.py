#!/usr/bin/env python3
"""Tap to unlock through a PN532 on a UART (part of `make bench`).

lockerd runs with the libnfc backend against the PN532 emulator (tests/pn532),
paced at 115200 baud (86.8 us per byte, as a real PN532 on a Pi's UART), for a
UID-only card (auth = uid-insecure) and for a DESFire card with AES authentication
(auth = desfire; the card is issued by `lockerctl card issue` first).

For every tap: latency = CLOCK_MONOTONIC from telling the emulator that a card
entered the field until lockerd set the lock line (the simulated GPIO's log); the
physical floor = the bytes that crossed the UART in between times 86.8 us (the
emulator counts them). Software overhead = latency - floor. Then lockerd's CPU use
is measured while it waits for a card (30 s).

usage: LOCKERD=build/lockerd LOCKERCTL=build/lockerctl PN532_EMU=build/pn532/pn532_emu \\
       tests/bench_reader.py [TAPS]
"""
import os
import re
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "pn532"))
from pn532emu import Pn532Emu  # noqa: E402

LOCKERD = os.path.abspath(os.environ.get("LOCKERD", "build/lockerd"))
LOCKERCTL = os.path.abspath(os.environ.get("LOCKERCTL", "build/lockerctl"))
EMU = os.path.abspath(os.environ.get("PN532_EMU", "build/pn532/pn532_emu"))
TAPS = int(sys.argv[1]) if len(sys.argv) > 1 else 100
IDLE_S = float(os.environ.get("BENCH_IDLE_S", "30"))
BYTE_US = 86.806
UID7 = "04A1B2C3D4E5F6"


def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * p / 100))]


class Station:
    def __init__(self, d, connstring, auth):
        self.d = d
        self.sock = os.path.join(d, "run", "control.sock")
        self.log = os.path.join(d, "state", "sim-gpio.log")
        conf = os.path.join(d, "lockerd.conf")
        with open(conf, "w") as f:
            f.write(f"[station]\nid = bench\nstate_dir = {d}/state\nruntime_dir = {d}/run\n"
                    f"[reader]\nbackend = libnfc\nconnstring = {connstring}\nauth = {auth}\n"
                    "[gpio]\nbackend = sim\n"
                    "[compartment.1]\nlock = L1\ndoor = D1\nkey = K1\n")
        self.err = open(os.path.join(d, "lockerd.log"), "w")
        self.proc = subprocess.Popen([LOCKERD, "-c", conf], stderr=self.err)
        deadline = time.monotonic() + 10
        while self.ctl("status", check=False).returncode != 0:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                sys.exit("lockerd did not start; see " + self.err.name)
            time.sleep(0.02)

    def ctl(self, *args, check=True):
        return subprocess.run([LOCKERCTL, "-s", self.sock, *args], check=check,
                              capture_output=True, text=True)

    def lock_sets(self):
        """Monotonic ns of every 'L1 1 set' in the simulated GPIO's log."""
        with open(self.log) as f:
            return [int(line.split()[1]) for line in f
                    if line.split()[2:5] == ["L1", "1", "set"]]

    def wait_lock_set(self, count, timeout=5.0):
        deadline = time.monotonic() + timeout
        while True:
            sets = self.lock_sets()
            if len(sets) > count:
                return sets[count]
            if time.monotonic() > deadline:
                sys.exit("the lock was not set; see " + self.err.name)
            time.sleep(0.0005)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)
        self.err.close()


def wait_polling(emu, timeout=10.0):
    """Waits until lockerd polls for a card again: a "poll" event after the last card
    left the field (or after start)."""
    deadline = time.monotonic() + timeout
    while True:
        with emu._cond:
            lines = list(emu.lines)
        last_poll = max((i for i, l in enumerate(lines) if l.startswith("poll ")), default=-1)
        last_gone = max((i for i, l in enumerate(lines)
                         if l.startswith("removed") or l.startswith("ok card")
                         or l.startswith("ok reinsert")), default=-1)
        if last_poll > last_gone:
            return
        if time.monotonic() > deadline:
            sys.exit("lockerd does not poll for a card: %r" % lines[-5:])
        time.sleep(0.001)


def bytes_on_wire(emu):
    emu.cmd("status")
    line = emu.wait("status ")
    m = re.search(r"rx=(\d+) tx=(\d+)", line)
    return int(m.group(1)) + int(m.group(2))


def run(label, auth, insert):
    with tempfile.TemporaryDirectory(prefix="lockerd-bench-reader-") as d, Pn532Emu(
            binary=EMU) as emu:
        emu.cmd("baud on")
        st = Station(d, emu.connstring, auth)
        wait_polling(emu)
        st.ctl("club", "add", "c1", "Club")
        member = st.ctl("member", "add", "--club", "c1", "--name", "Bench").stdout.strip()
        now = time.time()
        fmt = lambda t: time.strftime("%Y-%m-%dT%H:%M%z", time.localtime(t))
        st.ctl("booking", "add", "--club", "c1", "--compartment", "1",
               "--from", fmt(now - 600), "--to", fmt(now + 7200))
        if auth == "desfire":
            issue = subprocess.Popen([LOCKERCTL, "-s", st.sock, "card", "issue", member],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            # The card must come after lockerd took the request: wait for its log line.
            deadline = time.monotonic() + 10
            while "waiting for a card" not in open(st.err.name).read():
                if time.monotonic() > deadline:
                    sys.exit("card issue did not start")
                time.sleep(0.01)
            emu.cmd("card desfire " + UID7)
            out, err = issue.communicate(timeout=30)
            if issue.returncode != 0:
                sys.exit("card issue failed: " + err)
            emu.cmd("remove")
        else:
            st.ctl("card", "add", member, "--uid", "04A1B2C3", "--card", "uid")

        latencies, floors = [], []
        for i in range(TAPS):
            wait_polling(emu)  # lockerd is waiting for the next card
            b0 = bytes_on_wire(emu)
            count = len(st.lock_sets())
            t0 = time.monotonic_ns()
            emu.cmd(insert)
            t1 = st.wait_lock_set(count)
            b1 = bytes_on_wire(emu)
            latencies.append((t1 - t0) / 1e6)
            floors.append((b1 - b0) * BYTE_US / 1e3)
            emu.cmd("remove")
            st.ctl("sim", "door", "1", "open")
            st.ctl("sim", "key", "1", "take" if i % 2 == 0 else "put")
            st.ctl("sim", "door", "1", "close")

        over = [lat - fl for lat, fl in zip(latencies, floors)]
        print(f"{label:<24} taps {TAPS:4d}  latency p50 {pct(latencies, 50):6.1f} ms "
              f"p99 {pct(latencies, 99):6.1f} ms | UART floor p50 {pct(floors, 50):5.1f} ms | "
              f"software over the floor p50 {pct(over, 50):5.1f} ms p99 {pct(over, 99):5.1f} ms")

        if label.startswith("DESFire"):
            wait_polling(emu)
            pid = st.proc.pid

            def cpu():
                # lockerd and its reader process (which owns libnfc).
                total = 0
                for entry in os.listdir("/proc"):
                    if not entry.isdigit():
                        continue
                    try:
                        with open(f"/proc/{entry}/stat") as f:
                            parts = f.read().rsplit(")", 1)[1].split()
                    except OSError:
                        continue
                    if int(entry) == pid or int(parts[1]) == pid:
                        total += int(parts[11]) + int(parts[12])
                return total / os.sysconf("SC_CLK_TCK")

            c0, w0 = cpu(), time.monotonic()
            time.sleep(IDLE_S)  # the measurement: lockerd waits for a card
            c1, w1 = cpu(), time.monotonic()
            print(f"waiting for a card (lockerd and its reader process): "
                  f"{100 * (c1 - c0) / (w1 - w0):.3f} % of a core "
                  f"over {w1 - w0:.0f} s")
        st.stop()


def main():
    print("tap to unlock through libnfc's pn532_uart driver, emulated PN532 at 115200 baud")
    run("UID-only (uid-insecure)", "uid-insecure", "card uid 04A1B2C3")
    run("DESFire AES", "desfire", "reinsert")


if __name__ == "__main__":
    main()
