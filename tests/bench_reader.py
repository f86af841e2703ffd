#!/usr/bin/env python3
"""Tap to unlock through a PN532 on a UART (part of `make bench`).

lockerd runs with the libnfc backend against the PN532 emulator (tests/pn532),
paced at 115200 baud (86.8 us per byte, as a real PN532 on a Pi's UART), for a
UID-only card (auth = uid-insecure) and for a DESFire card with AES authentication
(auth = desfire; the card is issued by `lockerctl card issue` first).

For every tap (all times CLOCK_MONOTONIC, taken by the emulator and by lockerd, not
by this script):
  latency   from the moment the emulator put the card into the field (its own clock)
            until lockerd set the lock line (the simulated GPIO's log);
  floor     the bytes that crossed the UART in between, both directions, times 86.8
            us (the emulator counts them). The emulated card answers at once: no RF
            or card processing time is modelled, so the floor is the UART alone. A tap
            whose line was still busy when the lock was set is counted and reported
            (its floor would include bytes the unlock did not wait for);
  emulator  how much later than the line schedule the emulator handed over the ends
            of its replies (it shares the CPUs with lockerd; a real PN532 does not);
  software  latency - floor - emulator: what lockerd (libnfc, libfreefare, the reader
            process, the event loop, the store and its one fsync) adds. The raw
            latency - floor is printed too.
After each measured tap the disk's own fdatasync is timed in the state directory
(a 16 KiB append, about one tap's WAL frames), so that the share of the one fsync
that every grant needs before the coil is energised can be read beside the figures.
Then lockerd's CPU use is measured while it waits for a card (30 s).

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

        self.log_pos = 0

    def next_lock_set(self, timeout=5.0):
        """Monotonic ns of the next 'L1 1 set' in the simulated GPIO's log. The time
        comes from lockerd, so this can look every few ms without taking CPU time
        from lockerd and the emulator (2 cores: a busy wait here shows up as latency
        there)."""
        deadline = time.monotonic() + timeout
        while True:
            with open(self.log) as f:
                f.seek(self.log_pos)
                while True:
                    line = f.readline()
                    if not line.endswith("\n"):
                        break
                    self.log_pos += len(line.encode())  # ASCII
                    if line.split()[2:5] == ["L1", "1", "set"]:
                        return int(line.split()[1])
            if time.monotonic() > deadline:
                sys.exit("the lock was not set; see " + self.err.name)
            time.sleep(0.003)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)
        self.err.close()


def wait_polling(emu, timeout=10.0):
    """Waits until lockerd polls for a card again: a "poll" event after the last card
    left the field (or after start). Sleeps on the emulator's output."""
    deadline = time.monotonic() + timeout
    with emu._cond:
        while True:
            lines = emu.lines
            last_poll = max((i for i, l in enumerate(lines) if l.startswith("poll ")),
                            default=-1)
            last_gone = max((i for i, l in enumerate(lines)
                             if l.startswith("removed") or l.startswith("ok card")
                             or l.startswith("ok reinsert")), default=-1)
            if last_poll > last_gone:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                sys.exit("lockerd does not poll for a card: %r" % lines[-5:])
            emu._cond.wait(left)


def wire(emu):
    """The emulator's UART counters: bytes both ways, its own lateness (ns), when
    the card entered (ns), when the line went quiet (ns, -1: busy)."""
    emu.cmd("status")
    line = emu.wait("status ")
    v = dict(re.findall(r"(\w+)=(-?\d+)", line))
    return (int(v["rx"]) + int(v["tx"]), int(v["late_us"]) * 1000, int(v["entered_ns"]),
            int(v["idle_ns"]))


def cpu_ticks():
    """(busy, steal, total) jiffies of all CPUs from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v) - idle, v[7] if len(v) > 7 else 0, sum(v)


def disk_fsync(d):
    """One 16 KiB append and fdatasync in d (about one tap's WAL frames); ms."""
    path = os.path.join(d, "state", "bench-fsync")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, b"\0" * 16384)
        t = time.monotonic_ns()
        os.fdatasync(fd)
        return (time.monotonic_ns() - t) / 1e6
    finally:
        os.close(fd)


def run(label, auth, insert):
    with tempfile.TemporaryDirectory(prefix="lockerd-bench-reader-") as d, Pn532Emu(
            binary=EMU) as emu:
        emu.cmd("baud on")
        st = Station(d, emu.connstring, auth)
        try:  # lockerd must not outlive the bench, whatever ends it
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

            latencies, floors, lates, fsyncs = [], [], [], []
            busy = 0
            with open(st.log, "rb") as f:
                st.log_pos = len(f.read())  # what came before is no tap
            ticks0 = cpu_ticks()
            for i in range(TAPS):
                wait_polling(emu)  # lockerd is waiting for the next card
                for _ in range(100):  # the chip's ACK of the poll may still be on its way
                    b0, late0, _, idle0 = wire(emu)
                    if idle0 >= 0:
                        break
                    time.sleep(0.002)
                else:
                    sys.exit("the line stays busy while lockerd waits for a card")
                emu.cmd(insert)
                t1 = st.next_lock_set()
                b1, late1, t0, idle1 = wire(emu)
                if idle1 < 0 or idle1 > t1:
                    busy += 1  # bytes after the unlock are in this tap's floor
                latencies.append((t1 - t0) / 1e6)
                floors.append((b1 - b0) * BYTE_US / 1e3)
                lates.append((late1 - late0) / 1e6)
                fsyncs.append(disk_fsync(d))
                emu.cmd("remove")
                st.ctl("sim", "door", "1", "open")
                st.ctl("sim", "key", "1", "take" if i % 2 == 0 else "put")
                st.ctl("sim", "door", "1", "close")

            ticks1 = cpu_ticks()
            total = ticks1[2] - ticks0[2]
            with open(st.err.name) as f:
                retries = f.read().count("reading again")
            over = [lat - fl for lat, fl in zip(latencies, floors)]
            soft = [o - e for o, e in zip(over, lates)]
            def p(values):
                return f"p50 {pct(values, 50):5.2f} ms p99 {pct(values, 99):6.2f} ms"

            pad = " " * 27
            busy_cpu = 100 * (ticks1[0] - ticks0[0]) / max(total, 1)
            steal = 100 * (ticks1[1] - ticks0[1]) / max(total, 1)
            print(f"{label:<24} taps {TAPS:4d}  latency p50 {pct(latencies, 50):6.1f} ms "
                  f"p99 {pct(latencies, 99):6.1f} ms | UART floor p50 {pct(floors, 50):5.1f} ms "
                  f"(min {min(floors):.1f} max {max(floors):.1f})")
            print(f"{pad}over the floor {p(over)} | of which emulator late {p(lates)}")
            print(f"{pad}software (lockerd) {p(soft)} max {max(soft):6.2f} ms"
                  f" | disk fdatasync beside it {p(fsyncs)}"
                  + (f" | {busy} taps with traffic after the unlock" if busy else ""))
            print(f"{pad}card reads retried (lockerd's log): {retries} | machine busy "
                  f"{busy_cpu:.0f} % of {os.cpu_count()} CPUs (this bench, lockerd and the "
                  f"emulator included; steal {steal:.1f} %)")

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
        finally:
            st.stop()


def main():
    print("tap to unlock through libnfc's pn532_uart driver, emulated PN532 at 115200 baud",
          flush=True)
    run("UID-only (uid-insecure)", "uid-insecure", "card uid 04A1B2C3")
    run("DESFire AES", "desfire", "reinsert")


if __name__ == "__main__":
    main()
