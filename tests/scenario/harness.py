"""Scenario test harness: runs a real lockerd on simulated hardware.

Each Station lives in its own temporary directory (config, state_dir, runtime_dir,
stderr logs) and is driven through lockerctl exactly as a technician would. Time is
moved with `lockerctl sim clock advance`, never by sleeping; waits are for observable
things (the control socket answering, an event appearing, a process exiting), always
with a timeout.

Environment:
  LOCKERD, LOCKERCTL   binaries to test (default build/lockerd, build/lockerctl)
  LOCKERD_KEEP_TMP=1   keep the temporary directories for inspection

Python 3 standard library only.
"""

import datetime
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import unittest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LOCKERD = os.path.abspath(os.environ.get("LOCKERD", os.path.join(REPO, "build", "lockerd")))
LOCKERCTL = os.path.abspath(os.environ.get("LOCKERCTL", os.path.join(REPO, "build", "lockerctl")))

START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
WAIT_TIMEOUT = 10.0
POLL_INTERVAL = 0.02

# What a sanitizer (ASan, UBSan, LSan) prints when it finds something.
SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer")

# The simulated cabinet: compartment number -> (lock, door, key) line names.
LINES = {
    1: ("GPIO17", "GPIO27", "GPIO22"),
    2: ("GPIO5", "GPIO6", "GPIO13"),
    3: ("GPIO19", "GPIO26", "GPIO21"),
    4: ("GPIO20", "GPIO16", "GPIO12"),
}
TAMPER_LINE = "GPIO4"
LOCK_LINES = {n: v[0] for n, v in LINES.items()}


def sanitizer_env():
    env = dict(os.environ)
    env["ASAN_OPTIONS"] = "detect_leaks=1:abort_on_error=0"
    env["UBSAN_OPTIONS"] = env.get("UBSAN_OPTIONS", "print_stacktrace=1")
    env.pop("LOCKERD_SOCKET", None)
    return env


def parse_time(text):
    """ISO 8601 with offset or Z -> aware datetime."""
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    return datetime.datetime.fromisoformat(text)


def iso_minutes(dt):
    """Aware datetime -> '2026-11-28T18:00+01:00' (what `booking add` takes)."""
    return dt.isoformat(timespec="minutes")


def ms_of(dt):
    return int(dt.timestamp() * 1000)


def wait_until(predicate, timeout=WAIT_TIMEOUT, what="condition", interval=POLL_INTERVAL):
    """Polls predicate() until it returns something truthy; returns that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.1f s waiting for %s" % (timeout, what))
        time.sleep(interval)


def uid_variants(uid_hex):
    """Every form a leaked UID could take: (lower-case texts to look for in lower-cased
    data, so any case matches; raw byte strings to look for in the data as is)."""
    h = uid_hex.replace(":", "").lower()
    pairs = [h[i:i + 2] for i in range(0, len(h), 2)]
    texts = sorted({sep.join(pairs).encode() for sep in ("", ":", " ", "-")})
    raw = bytes.fromhex(h)
    return texts, [raw, raw[::-1]]


def find_uid(data, uid_hex):
    """The forms of uid_hex found in data (bytes)."""
    texts, raws = uid_variants(uid_hex)
    low = data.lower()
    return [t for t in texts if t in low] + [r for r in raws if r in data]


def pair_activations(events, sim_log, lock_line, compartment,
                     authorising=("access.granted", "service.open")):
    """Log before act: greedy in-order pairing of every coil activation ("set" to 1 of
    lock_line in the sim output log) with an authorising event of the compartment
    committed before it. A compartment unlocks at most once per event and only from a
    locked state, so the event for an activation also comes after the previous
    activation; older unpaired events are left over from a crash between commit and
    coil. Each event pairs with at most one activation.
    Returns (problems, n_activations, n_events, n_unpaired_events)."""
    acts = [wall for wall, _, line, value, why in sim_log
            if line == lock_line and value == 1 and why == "set"]
    grants = sorted((e["seq"], ms_of(parse_time(e["occurredAt"])))
                    for e in events
                    if e["type"] in authorising and e.get("compartment") == compartment)
    problems = []
    j = 0
    prev = None
    for i, wall in enumerate(acts):
        while j < len(grants) and prev is not None and grants[j][1] < prev:
            j += 1
        if j >= len(grants) or grants[j][1] > wall:
            problems.append("compartment %d: activation #%d at %d ms has no authorising event "
                            "between the previous activation (%s) and it; next event: %s"
                            % (compartment, i + 1, wall, prev,
                               grants[j] if j < len(grants) else None))
            continue
        j += 1
        prev = wall
    paired = len(acts) - len(problems)
    return problems, len(acts), len(grants), len(grants) - paired


class CtlResult:
    def __init__(self, args, rc, stdout, stderr):
        self.args = args
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr
        self.data = None
        self.json_error = None
        if stdout.strip():
            try:
                self.data = json.loads(stdout)
            except ValueError as e:
                self.json_error = str(e)

    def __repr__(self):
        return "lockerctl %s -> rc %d\nstdout: %s\nstderr: %s" % (
            " ".join(self.args), self.rc, self.stdout.strip()[:2000], self.stderr.strip()[:2000])

    def __getitem__(self, key):
        return self.data[key]

    def get(self, key, default=None):
        return self.data.get(key, default) if isinstance(self.data, dict) else default


class Station:
    """One simulated station: temp dir, config, lockerd process and lockerctl."""

    def __init__(self, name="station", compartments=4, tamper=True, auth="desfire",
                 station=None, policy=None, gpio=None, reader=None, extra=""):
        self.dir = tempfile.mkdtemp(prefix="lockerd-%s-" % name)
        self.state_dir = os.path.join(self.dir, "state")
        self.run_dir = os.path.join(self.dir, "run")
        self.sock = os.path.join(self.run_dir, "control.sock")
        self.conf = os.path.join(self.dir, "lockerd.conf")
        self.db_path = os.path.join(self.state_dir, "lockerd.db")
        self.sim_log_path = os.path.join(self.state_dir, "sim-gpio.log")
        self.sim_state_path = os.path.join(self.state_dir, "sim-gpio.state")
        self.compartments = compartments
        self.tamper = tamper
        self.auth = auth
        self.station_opts = dict(station or {})
        self.policy_opts = dict(policy or {})
        self.gpio_opts = dict(gpio or {})
        self.reader_opts = dict(reader or {})  # e.g. backend = libnfc, connstring = ...
        self.extra = extra
        self.proc = None
        # A command to run lockerd under (valgrind) and the binary to run.
        self.wrapper = []
        self.lockerd = LOCKERD
        self.starts = 0
        self.stderr_logs = []
        self.env = sanitizer_env()
        self.write_config()

    # ------------------------------------------------------------ config

    def config_text(self):
        st = {
            "id": "st-scenario",
            "name": "Scenario test station",
            "state_dir": self.state_dir,
            "runtime_dir": self.run_dir,
            "sim_clock": "yes",
        }
        st.update(self.station_opts)
        gpio = {"backend": "sim", "max_energize": "5s"}
        if self.tamper:
            gpio["tamper"] = TAMPER_LINE + ", active-low, pull-up"
        gpio.update(self.gpio_opts)
        out = ["# written by tests/scenario/harness.py", "[station]"]
        out += ["%s = %s" % kv for kv in st.items()]
        reader = {"backend": "sim", "auth": self.auth}
        reader.update(self.reader_opts)
        out += ["", "[reader]"] + ["%s = %s" % kv for kv in reader.items()]
        out += ["", "[gpio]"] + ["%s = %s" % kv for kv in gpio.items()]
        if self.policy_opts:
            out += ["", "[policy]"] + ["%s = %s" % kv for kv in self.policy_opts.items()]
        for n in range(1, self.compartments + 1):
            lock, door, key = LINES[n]
            out += ["", "[compartment.%d]" % n,
                    "lock = %s" % lock,
                    "door = %s, active-low, pull-up" % door,
                    "key = %s, active-low, pull-up" % key,
                    "key_label = Halle %d" % n,
                    "hall = halle-%d" % n]
        if self.extra:
            out += ["", self.extra]
        return "\n".join(out) + "\n"

    def write_config(self):
        with open(self.conf, "w") as f:
            f.write(self.config_text())

    # ------------------------------------------------------------ process

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout=START_TIMEOUT):
        assert not self.running, "lockerd is already running"
        self.starts += 1
        log = os.path.join(self.dir, "lockerd-stderr-%03d.log" % self.starts)
        self.stderr_logs.append(log)
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(self.wrapper + [self.lockerd, "-c", self.conf],
                                         stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err, env=self.env,
                                         cwd=self.dir)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError("lockerd exited with %s during start\n%s"
                                     % (self.proc.returncode, self.stderr_tail()))
            r = self.ctl("status", check=False)
            if r.rc == 0:
                return r.data
            if time.monotonic() > deadline:
                raise AssertionError("lockerd did not answer `status` within %.0f s\n%s\n%s"
                                     % (timeout, r, self.stderr_tail()))
            time.sleep(POLL_INTERVAL)

    def signal(self, signo):
        assert self.running, "lockerd is not running"
        self.proc.send_signal(signo)

    def wait_exit(self, timeout=STOP_TIMEOUT):
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError("lockerd did not exit within %.0f s\n%s"
                                 % (timeout, self.stderr_tail()))

    def stop(self, expect_rc=0):
        """SIGTERM, wait, check the exit status and the sanitizers."""
        self.signal(signal.SIGTERM)
        rc = self.wait_exit()
        self.check_sanitizers()
        if expect_rc is not None and rc != expect_rc:
            raise AssertionError("lockerd exited with %s after SIGTERM (expected %s)\n%s"
                                 % (rc, expect_rc, self.stderr_tail()))
        return rc

    def kill(self):
        """SIGKILL (a crash or power cut) and reap."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        self.proc.kill()
        return self.proc.wait(timeout=STOP_TIMEOUT)

    def restart(self):
        if self.running:
            self.stop()
        return self.start()

    # ------------------------------------------------------------ diagnostics

    def stderr_text(self, all_runs=True):
        logs = self.stderr_logs if all_runs else self.stderr_logs[-1:]
        parts = []
        for p in logs:
            try:
                with open(p, "rb") as f:
                    parts.append(f.read().decode("utf-8", "replace"))
            except OSError:
                pass
        return "".join(parts)

    def stderr_tail(self, lines=40):
        text = self.stderr_text(all_runs=False).splitlines()
        return "---- tail of lockerd stderr (%s, run %d) ----\n%s\n----" % (
            self.dir, self.starts, "\n".join(text[-lines:]))

    def sanitizer_findings(self, last_only=False):
        found = []
        for p in (self.stderr_logs[-1:] if last_only else self.stderr_logs):
            try:
                with open(p, "rb") as f:
                    text = f.read().decode("utf-8", "replace")
            except OSError:
                continue
            for marker in SANITIZER_MARKERS:
                i = text.find(marker)
                if i >= 0:
                    found.append("%s: %s" % (os.path.basename(p), text[max(0, i - 200):i + 3000]))
        return found

    def check_sanitizers(self, last_only=False):
        found = self.sanitizer_findings(last_only)
        if found:
            raise AssertionError("sanitizer findings in lockerd stderr:\n" + "\n".join(found))

    def cleanup(self):
        self.kill()
        if os.environ.get("LOCKERD_KEEP_TMP"):
            sys.stderr.write("keeping %s\n" % self.dir)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    # ------------------------------------------------------------ lockerctl

    def ctl_raw(self, *args, json_out=True, socket=None, timeout=30, input=None):
        """input: text for lockerctl's standard input (else /dev/null)."""
        argv = [LOCKERCTL, "-s", socket or self.sock]
        if json_out:
            argv.append("--json")
        argv += [str(a) for a in args]
        stdin = {"input": input.encode()} if input is not None else {"stdin": subprocess.DEVNULL}
        p = subprocess.run(argv, capture_output=True, env=self.env, timeout=timeout, **stdin)
        return CtlResult([str(a) for a in args], p.returncode,
                         p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace"))

    def ctl(self, *args, check=True, **kw):
        """Runs `lockerctl --json ARGS`; returns a CtlResult (.rc, .data, .stdout, .stderr).
        With check=True a non-zero exit or non-JSON output fails the test."""
        r = self.ctl_raw(*args, **kw)
        bad_json = kw.get("json_out", True) and r.json_error is not None
        if check and (r.rc != 0 or bad_json):
            raise AssertionError("%r\n%s" % (r, self.stderr_tail()))
        return r

    def j(self, *args):
        """`lockerctl --json ARGS` that must succeed; returns the parsed JSON."""
        return self.ctl(*args).data

    # ------------------------------------------------------------ status and time

    def status(self):
        return self.j("status")

    def comp(self, n, status=None):
        status = status or self.status()
        for c in status["compartments"]:
            if c["number"] == n:
                return c
        raise AssertionError("no compartment %d in status" % n)

    def now(self):
        """The station's clock (the sim clock may have been advanced)."""
        return parse_time(self.status()["station"]["time"])

    def advance(self, duration):
        return self.j("sim", "clock", "advance", duration)

    # ------------------------------------------------------------ events

    def events(self, since=None):
        args = ["events"]
        if since is not None:
            args += ["--since", str(since)]
        data = self.j(*args)
        assert isinstance(data, list), "events --json did not give an array: %r" % (data,)
        return data

    def last_seq(self):
        ev = self.events()
        return ev[-1]["seq"] if ev else 0

    def events_of(self, type_, since=None, compartment=None):
        return [e for e in self.events(since) if e["type"] == type_ and
                (compartment is None or e.get("compartment") == compartment)]

    def wait_event(self, type_, since=0, compartment=None, timeout=WAIT_TIMEOUT, pred=None):
        """Waits until an event of type_ with seq > since appears; returns it."""
        def find():
            for e in self.events(since):
                if e["type"] == type_ and (compartment is None or
                                           e.get("compartment") == compartment):
                    if pred is None or pred(e):
                        return e
            return None
        try:
            return wait_until(find, timeout, "event %s" % type_)
        except AssertionError as e:
            raise AssertionError("%s\nevents since %s: %s\n%s" % (
                e, since, [(x["seq"], x["type"], x.get("reason")) for x in self.events(since)],
                self.stderr_tail()))

    # ------------------------------------------------------------ simulated hardware

    def sim_log(self):
        """STATE_DIR/sim-gpio.log as (wall_ms, mono_ns, line, value, why) tuples."""
        out = []
        try:
            with open(self.sim_log_path) as f:
                for raw in f:
                    parts = raw.split()
                    if len(parts) != 5:
                        raise AssertionError("malformed sim-gpio.log line: %r" % raw)
                    out.append((int(parts[0]), int(parts[1]), parts[2], int(parts[3]), parts[4]))
        except FileNotFoundError:
            pass
        return out

    def last_output_values(self):
        last = {}
        for _, _, line, value, _ in self.sim_log():
            last[line] = value
        return last

    def sim_inputs_file(self):
        """The simulated input levels as the sim hardware keeps them (sim-gpio.state)."""
        out = {}
        with open(self.sim_state_path) as f:
            for raw in f:
                parts = raw.split()
                if len(parts) == 2:
                    out[parts[0]] = int(parts[1])
        return out

    def outputs(self):
        return {l["line"]: l for l in self.j("sim", "outputs")["lines"]}

    def lock_value(self, n):
        return self.outputs()[LOCK_LINES[n]]["value"]

    def door(self, n, state):
        return self.j("sim", "door", n, state)

    def key(self, n, action):
        return self.j("sim", "key", n, action)

    def tap(self, uid, card=None):
        args = ["sim", "tap", uid]
        if card:
            args += ["--card", card]
        return self.j(*args)

    # ------------------------------------------------------------ database

    def db(self):
        """Read-only connection to the station's database."""
        return sqlite3.connect("file:%s?mode=ro" % self.db_path, uri=True, timeout=10)

    def db_query(self, sql, params=()):
        con = self.db()
        try:
            return con.execute(sql, params).fetchall()
        finally:
            con.close()

    # ------------------------------------------------------------ test data

    def add_club(self, club_id, name=None):
        return self.j("club", "add", club_id, name or ("Club " + club_id))["id"]

    def add_member(self, clubs, name="Trainer"):
        if isinstance(clubs, str):
            clubs = [clubs]
        args = ["member", "add", "--name", name]
        for c in clubs:
            args += ["--club", c]
        return self.j(*args)["id"]

    def add_card(self, member, uid, card=None):
        args = ["card", "add", member, "--uid", uid]
        if card:
            args += ["--card", card]
        return self.j(*args)["id"]

    def add_booking(self, club, compartment, start, end):
        return self.j("booking", "add", "--club", club, "--compartment", compartment,
                      "--from", iso_minutes(start), "--to", iso_minutes(end))["id"]

    def booking_window(self, start_in=datetime.timedelta(0), length=datetime.timedelta(hours=2)):
        """(start, end) relative to the station's clock; start is floored to the minute,
        so a booking starting "now" has already begun."""
        now = self.now().replace(second=0, microsecond=0)
        start = now + start_in
        return start, start + length

    def setup_booking(self, club="club-a", compartment=1, uid="04A1B2C3", start_in=None,
                      length=None, new_club=True, name="Trainer"):
        """Club (optional), member, card and a booking covering the station's now."""
        if new_club:
            self.add_club(club)
        member = self.add_member(club, name)
        card = self.add_card(member, uid)
        start, end = self.booking_window(start_in or datetime.timedelta(0),
                                         length or datetime.timedelta(hours=2))
        booking = self.add_booking(club, compartment, start, end)
        return {"club": club, "member": member, "card": card, "uid": uid,
                "booking": booking, "compartment": compartment, "start": start, "end": end}

    def booking(self, booking_id):
        for b in self.j("booking", "list", "--all")["bookings"]:
            if b["id"] == booking_id:
                return b
        raise AssertionError("no booking %s" % booking_id)

    # ------------------------------------------------------------ whole flows

    def pickup(self, uid, n):
        r = self.tap(uid)
        assert r.get("outcome") == "pickup" and r.get("compartment") == n, r
        assert self.door(n, "open")["state"] == "open_pickup"
        self.key(n, "take")
        assert self.door(n, "close")["state"] == "locked_empty"
        return r

    def give_back(self, uid, n):
        r = self.tap(uid)
        assert r.get("outcome") == "return" and r.get("compartment") == n, r
        assert self.door(n, "open")["state"] == "open_return"
        self.key(n, "put")
        assert self.door(n, "close")["state"] == "locked_full"
        return r


class StationTestCase(unittest.TestCase):
    """Creates stations that are always killed and removed, and checked for sanitizer
    findings; prints the daemon's stderr tail when a test fails."""

    def make_station(self, start=True, **kw):
        st = Station(name=self.id().split(".")[-1][:40], **kw)
        self.addCleanup(self._finish_station, st)
        if start:
            st.start()
        return st

    def _finish_station(self, st):
        try:
            st.kill()
            if self._failed_so_far():
                sys.stderr.write("\n%s\n" % st.stderr_tail(60))
            st.check_sanitizers()
        finally:
            st.cleanup()

    def _failed_so_far(self):
        """True if this test (or one of its subtests) has failed already. Cleanups run
        in their own unittest "part", so the result lists are what tells."""
        result = getattr(getattr(self, "_outcome", None), "result", None)
        for failed, _ in getattr(result, "failures", []) + getattr(result, "errors", []):
            if failed is self or getattr(failed, "test_case", None) is self:
                return True
        return False

    def assertEventOrder(self, events, types):
        """types appear in this order (not necessarily adjacent)."""
        seen = [e["type"] for e in events]
        pos = 0
        for t in types:
            try:
                pos = seen.index(t, pos) + 1
            except ValueError:
                self.fail("event %s (in order %s) not found in %s" % (t, types, seen))
