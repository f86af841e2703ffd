"""The city API reference server (tests/cityapi/server.py) for scenario tests.

CityServer runs the server on free ports with the test certificates of
tests/cityapi/mkcerts.sh, waits for its ready line (never a sleep), and wraps the admin
API. city_station_extra() is the [sync] section a Station needs to talk to it.

Python 3 standard library only.
"""

import hashlib
import hmac
import json
import os
import shutil
import signal
import subprocess
import tempfile
import urllib.error
import urllib.request

from harness import REPO, wait_until

SERVER = os.path.join(REPO, "tests", "cityapi", "server.py")
MKCERTS = os.path.join(REPO, "tests", "cityapi", "mkcerts.sh")
STATION_ID = "st-scenario"


class CityServer:
    def __init__(self, station=STATION_ID):
        self.dir = tempfile.mkdtemp(prefix="lockerd-city-")
        self.certs = os.path.join(self.dir, "certs")
        self.db = os.path.join(self.dir, "city.db")
        self.station = station
        self.proc = None
        self.port = 0  # reused on restart, so that the station's url stays valid
        self.admin_port = 0
        subprocess.run([MKCERTS, self.certs, station], check=True,
                       stdout=subprocess.DEVNULL)

    def start(self):
        assert self.proc is None
        self.log = open(os.path.join(self.dir, "server-stderr.log"), "ab")
        self.proc = subprocess.Popen(
            ["python3", SERVER, "--db", self.db, "--certs", self.certs, "--port",
             str(self.port), "--admin-port", str(self.admin_port), "--station", self.station],
            stdout=subprocess.PIPE, stderr=self.log, stdin=subprocess.DEVNULL)
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError("city server did not start:\n" + self.stderr_text())
        ready = json.loads(line)
        self.port, self.admin_port = ready["port"], ready["adminPort"]
        self.base_url = ready["baseUrl"]
        self.admin_url = ready["adminUrl"]
        return self

    def stop(self):
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.log.close()
        self.proc = None

    def cleanup(self):
        self.stop()
        if not os.environ.get("LOCKERD_KEEP_TMP"):
            shutil.rmtree(self.dir, ignore_errors=True)

    def stderr_text(self):
        try:
            with open(os.path.join(self.dir, "server-stderr.log"), errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    # ------------------------------------------------------------ admin API

    def admin(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.admin_url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                raw = r.read()
        except urllib.error.HTTPError as e:
            raise AssertionError("admin %s %s: %s %s" % (method, path, e.code, e.read()))
        return json.loads(raw) if raw else None

    def set_config(self, heartbeat=300, name="Sporthalle Reutershagen"):
        return self.admin("PUT", "/admin/stations/%s/config" % self.station, {
            "name": name,
            "pollIntervals": {"reservations": 60, "credentials": 300, "config": 3600,
                              "heartbeat": heartbeat},
            "compartments": [{"number": n, "hall": "halle-%d" % n, "label": "Halle %d" % n}
                             for n in (1, 2, 3, 4)]})

    def reservation(self, rid, club, start, end, compartments=(1,), status="confirmed",
                    club_name=None):
        return self.admin("POST", "/admin/reservations", {
            "identifier": rid, "startDate": utc(start), "endDate": utc(end),
            "organizer": {"identifier": club, "name": club_name or ("Club " + club)},
            "compartments": list(compartments), "reservationStatus": status})

    def credential(self, cid, uid_hmac, member, clubs, name="A. Trainer", card_type="desfire",
                   status="active", valid_from=None, valid_until=None):
        return self.admin("POST", "/admin/credentials", {
            "identifier": cid, "uidHmac": uid_hmac, "cardType": card_type,
            "member": {"identifier": member, "name": name}, "clubs": list(clubs),
            "validFrom": utc(valid_from) if valid_from else None,
            "validUntil": utc(valid_until) if valid_until else None, "status": status})

    def events(self):
        return self.admin("GET", "/admin/events")

    def fault(self, kind, **kw):
        kw["kind"] = kind
        return self.admin("POST", "/admin/faults", kw)["id"]

    def clear_faults(self):
        self.admin("DELETE", "/admin/faults")

    def requests(self):
        return self.admin("GET", "/admin/requests")


def utc(dt):
    return dt.astimezone(tz_utc()).strftime("%Y-%m-%dT%H:%M:%SZ")


def tz_utc():
    import datetime
    return datetime.timezone.utc


def uid_hmac(station, uid_hex):
    """What the city holds for a card: HMAC-SHA256(site key, UID), hex."""
    with open(os.path.join(station.state_dir, "site.key"), "rb") as f:
        key = f.read()
    return hmac.new(key, bytes.fromhex(uid_hex), hashlib.sha256).hexdigest()


def city_station_extra(city, client="client"):
    """The [api] section for a Station talking to city with certs/<client>.pem."""
    return "\n".join([
        "[api]",
        "url = %s" % city.base_url,
        "ca = %s" % os.path.join(city.certs, "server-ca.pem"),
        "cert = %s" % os.path.join(city.certs, client + ".pem"),
        "key = %s" % os.path.join(city.certs, client + ".key"),
    ])


def wait_delivered(st, city, timeout=30):
    """Until the station's outbox is empty; returns the server's events document."""
    wait_until(lambda: st.j("sync", "status")["outboxDepth"] == 0, timeout=timeout,
               what="outbox empty")
    return city.events()
