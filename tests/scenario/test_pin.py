"""Card + PIN and condition notes, end to end on a simulated station.

PINs are set with `lockerd -P MEMBER` (stdin) and entered through the kiosk
server's POST /api/pin with the nonce from the status, as the screen does. The
coil must never be energised before the right PIN: every activation in the sim
output log is paired with an access.granted committed before it (log before act),
and nothing is activated while a PIN is awaited, refused, locked out or timed out.
"""
import http.client
import json
import os
import socket
import subprocess
import unittest

from harness import LOCKERD, LOCK_LINES, REPO, StationTestCase, pair_activations


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class PinTest(StationTestCase):

    def setUp(self):
        self.port = free_port()
        extra = "[ui]\nenabled = yes\nlisten = 127.0.0.1:%d\ndir = %s\n" % (
            self.port, os.path.join(REPO, "ui"))
        self.st = self.make_station(policy={"pin_required": "yes", "pin_timeout": "10s"},
                                    extra=extra)
        self.b = self.st.setup_booking(compartment=2, uid="04A1B2C3D4E5C1")
        self.set_pin(self.b["member"], "2468")

    def set_pin(self, member, pin, expect=0):
        r = subprocess.run([LOCKERD, "-c", self.st.conf, "-P", member], input=pin + "\n",
                           capture_output=True, text=True, env=self.st.env, timeout=60)
        self.assertEqual(r.returncode, expect, r.stderr)
        return r

    # ------------------------------------------------------------ HTTP

    def request(self, method, path, body=None, headers=None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        h = {"Host": "127.0.0.1:%d" % self.port}
        if body is not None:
            h.update({"Content-Type": "application/json",
                      "Origin": "http://127.0.0.1:%d" % self.port})
        h.update(headers or {})
        c.request(method, path, body=json.dumps(body) if isinstance(body, dict) else body,
                  headers=h)
        r = c.getresponse()
        data = r.read().decode()
        c.close()
        try:
            return r.status, json.loads(data)
        except ValueError:
            return r.status, data

    def status(self):
        return self.request("GET", "/api/status")[1]

    def pin(self, pin, nonce=None):
        nonce = nonce or self.status()["pin"]["nonce"]
        return self.request("POST", "/api/pin", {"nonce": nonce, "pin": pin})

    def lock_activations(self, n=2):
        return [v for _, _, line, v, why in self.st.sim_log()
                if line == LOCK_LINES[n] and v == 1 and why == "set"]

    def assertLogBeforeAct(self):
        problems, acts, _, _ = pair_activations(self.st.events(), self.st.sim_log(),
                                                LOCK_LINES[2], 2)
        self.assertEqual(problems, [])
        return acts

    # ------------------------------------------------------------ tests

    def test_right_pin_unlocks_after_wrong_ones(self):
        st = self.st
        seq0 = st.last_seq()
        r = st.tap(self.b["uid"])
        self.assertEqual(r.get("outcome"), "pickup", r)
        self.assertIn("PIN", r.get("unlockError", ""), r)
        req = st.wait_event("access.pinRequested", since=seq0)
        self.assertEqual(req["compartment"], 2)
        self.assertEqual(req["detail"]["attemptsLeft"], 3)
        self.assertEqual(self.lock_activations(), [], "no coil before the PIN")
        self.assertEqual(st.comp(2)["state"], "locked_full")
        pin = self.status()["pin"]
        self.assertEqual((pin["compartment"], pin["attemptsLeft"]), (2, 3))
        self.assertEqual(len(pin["nonce"]), 32)

        self.assertEqual(self.pin("1111"), (200, {"result": "wrong", "attemptsLeft": 2}))
        self.assertEqual(self.pin("2222"), (200, {"result": "wrong", "attemptsLeft": 1}))
        self.assertEqual(self.lock_activations(), [])
        denied = st.events_of("access.denied", since=seq0)
        self.assertEqual([(e["reason"], e["detail"]["attemptsLeft"]) for e in denied],
                         [("pin-wrong", 2), ("pin-wrong", 1)])
        self.assertEqual(self.pin("2468"), (200, {"result": "ok"}))
        granted = st.wait_event("access.granted", since=seq0)
        self.assertTrue(granted["detail"].get("pin"))
        self.assertEqual(st.comp(2)["state"], "unlocking")
        self.assertEqual(self.assertLogBeforeAct(), 1)
        self.assertIsNone(self.status()["pin"])
        # The nonce was for that tap only.
        self.assertEqual(self.pin("2468", nonce=pin["nonce"])[0], 409)
        st.door(2, "open")
        st.key(2, "take")
        st.door(2, "close")
        # The right PIN reset the count: a wrong one now leaves 2.
        st.tap(self.b["uid"])  # a return needs no PIN
        self.assertEqual(st.comp(2)["state"], "unlocking")
        self.assertIsNone(self.status()["pin"])

    def test_decided_again_when_the_pin_is_right(self):
        """The card is revoked while the pad waits: the right PIN opens nothing."""
        st = self.st
        seq0 = st.last_seq()
        st.tap(self.b["uid"])
        st.wait_event("access.pinRequested", since=seq0)
        st.j("card", "revoke", self.b["card"])
        self.assertEqual(self.pin("2468"), (200, {"result": "refused"}))
        self.assertEqual(self.lock_activations(), [], "no coil for a revoked card")
        self.assertEqual(st.events_of("access.granted", since=seq0), [])
        denied = st.events_of("access.denied", since=seq0)
        self.assertEqual(denied[-1]["reason"], "revoked")
        self.assertEqual(st.comp(2)["state"], "locked_full")

    def test_lockout_with_backoff(self):
        st = self.st
        seq0 = st.last_seq()
        st.tap(self.b["uid"])
        self.pin("0000")
        self.pin("0000")
        code, res = self.pin("0000")
        self.assertEqual((code, res), (200, {"result": "lockedOut", "lockoutMs": 60000}))
        locked = [e for e in st.events_of("access.denied", since=seq0)
                  if e["reason"] == "pin-locked-out"]
        self.assertEqual(len(locked), 1)
        self.assertEqual(locked[0]["detail"]["lockoutMs"], 60000)
        self.assertIsNone(self.status()["pin"], "a lockout ends the tap")
        # Locked out: even the right PIN cannot be tried; the tap is refused.
        r = st.tap(self.b["uid"])
        self.assertEqual(r.get("reason"), "pin-locked-out", r)
        st.advance("61s")
        r = st.tap(self.b["uid"])
        self.assertIn("PIN", r.get("unlockError", ""), r)
        for _ in range(2):
            self.pin("0000")
        # The second lockout is twice as long.
        self.assertEqual(self.pin("0000"), (200, {"result": "lockedOut", "lockoutMs": 120000}))
        st.advance("61s")
        self.assertEqual(st.tap(self.b["uid"]).get("reason"), "pin-locked-out")
        st.advance("60s")
        st.tap(self.b["uid"])
        self.assertEqual(self.pin("2468"), (200, {"result": "ok"}))
        self.assertEqual(self.assertLogBeforeAct(), 1)

    def test_timeout_cancel_and_new_tap(self):
        st = self.st
        seq0 = st.last_seq()
        st.tap(self.b["uid"])
        st.advance("11s")
        ev = st.wait_event("access.pinCancelled", since=seq0)
        self.assertEqual(ev["reason"], "timeout")
        self.assertIsNone(self.status()["pin"])
        st.tap(self.b["uid"])
        nonce = self.status()["pin"]["nonce"]
        self.assertEqual(self.request("POST", "/api/pin", {"nonce": nonce, "cancel": True}),
                         (200, {"result": "cancelled"}))
        st.tap(self.b["uid"])
        st.tap("04DEADBEEF0009")  # someone else: the awaited PIN ends
        reasons = [e["reason"] for e in st.events_of("access.pinCancelled", since=seq0)]
        self.assertEqual(reasons, ["timeout", "cancelled", "new-tap"])
        self.assertEqual(self.lock_activations(), [], "nothing was ever unlocked")
        self.assertEqual(st.comp(2)["state"], "locked_full")

    def test_no_pin_set_is_refused(self):
        st = self.st
        other = st.setup_booking(club="club-n", compartment=3, uid="04A1B2C3D4E5C2")
        self.assertEqual(st.tap(other["uid"]).get("reason"), "pin-not-set")
        self.set_pin(other["member"], "12", expect=1)
        self.set_pin(other["member"], "12ab", expect=1)
        self.set_pin("no-such-member", "1234", expect=1)
        self.set_pin(other["member"], "9753")
        st.tap(other["uid"])
        self.assertEqual(self.pin("9753"), (200, {"result": "ok"}))
        self.set_pin(other["member"], "")  # removed
        st.door(3, "open")
        st.key(3, "take")
        st.door(3, "close")
        # the PIN hash is salted and slow, never the PIN itself
        with st.db() as db:
            rows = db.execute("SELECT hash FROM member_pins").fetchall()
        self.assertEqual(len(rows), 1)
        self.assertTrue(rows[0][0].startswith("pbkdf2-sha256$50000$"))
        self.assertNotIn("2468", rows[0][0])

    def test_set_with_lockerctl(self):
        """lockerctl member pin: the PIN from stdin, checked and hashed by lockerd,
        the change recorded with its operator and never with the PIN."""
        st = self.st
        other = st.setup_booking(club="club-n", compartment=3, uid="04A1B2C3D4E5C3")
        m = other["member"]
        seq0 = st.last_seq()
        r = st.ctl("member", "pin", m, input="8642\n")
        self.assertEqual(r.data, {"id": m, "pin": "set"})
        ev = st.wait_event("member.pinSet", since=seq0)
        self.assertEqual(ev.get("member"), m)
        self.assertTrue(ev.get("operator"))
        st.tap(other["uid"])
        self.assertEqual(self.pin("8642"), (200, {"result": "ok"}))
        st.door(3, "open")
        st.key(3, "take")
        st.door(3, "close")
        st.tap(other["uid"])  # the key back: no PIN for a return
        st.door(3, "open")
        st.key(3, "put")
        st.door(3, "close")
        # Refused without a change: not 4 to 8 digits, no PIN at all, an unknown member.
        for pin, code in (("12\n", "bad_request"), ("12ab\n", "bad_request"),
                          ("123456789\n", "bad_request")):
            r = st.ctl("member", "pin", m, input=pin, check=False)
            self.assertNotEqual(r.rc, 0)
            self.assertEqual(r.data["error"]["code"], code, r)
        self.assertNotEqual(st.ctl("member", "pin", m, input="", check=False).rc, 0)
        r = st.ctl("member", "pin", "no-such-member", input="1234\n", check=False)
        self.assertEqual(r.data["error"]["code"], "not_found", r)
        self.assertEqual(st.ctl("member", "pin", m, "--remove").data, {"id": m, "pin": "removed"})
        st.wait_event("member.pinRemoved", since=seq0)
        # Removing a PIN there is not changes nothing and records nothing.
        self.assertEqual(st.ctl("member", "pin", m, "--remove").data, {"id": m, "pin": "none"})
        self.assertEqual(len(st.events_of("member.pinRemoved", since=seq0)), 1)
        self.assertEqual(st.tap(other["uid"]).get("reason"), "pin-not-set")
        # The PIN is in no event and in no log line.
        for e in st.events():
            self.assertNotIn("8642", json.dumps(e))
        self.assertNotIn("8642", st.stderr_text())

    def test_input_must_come_from_the_page(self):
        st = self.st
        st.tap(self.b["uid"])
        nonce = self.status()["pin"]["nonce"]
        body = {"nonce": nonce, "pin": "2468"}
        self.assertEqual(self.request("POST", "/api/pin", body,
                                      {"Origin": "http://evil.example"})[0], 403)
        self.assertEqual(self.request("POST", "/api/pin", json.dumps(body),
                                      {"Content-Type": "text/plain",
                                       "Origin": "http://127.0.0.1:%d" % self.port})[0], 415)
        self.assertEqual(self.request("POST", "/api/pin", body, {"Host": "evil.example"})[0], 421)
        self.assertEqual(self.pin("2468", nonce="0" * 32)[0], 409)
        self.assertEqual(self.request("POST", "/api/pin", "{not json")[0], 400)
        self.assertEqual(self.lock_activations(), [])
        self.assertEqual(self.pin("2468", nonce=nonce), (200, {"result": "ok"}))

    def test_condition_notes_after_a_return(self):
        st = self.st
        st.tap(self.b["uid"])
        self.pin("2468")
        st.door(2, "open")
        st.key(2, "take")
        st.door(2, "close")
        self.assertIsNone(self.status()["note"], "no notes after a pickup")
        st.tap(self.b["uid"])
        st.door(2, "open")
        st.key(2, "put")
        seq0 = st.last_seq()
        st.door(2, "close")
        note = self.status()["note"]
        self.assertEqual(note["compartment"], 2)
        post = lambda b: self.request("POST", "/api/note", dict(b, nonce=note["nonce"]))
        self.assertEqual(post({"code": "floor-wet"}), (200, {"result": "recorded"}))
        self.assertEqual(post({"code": "floor-wet"})[0], 409, "each code once")
        self.assertEqual(post({"code": "broken-window"})[0], 400)
        self.assertEqual(post({"code": "other"})[0], 400, "other needs a text")
        self.assertEqual(post({"code": "other", "text": "x" * 201})[0], 400)
        self.assertEqual(post({"code": "other", "text": "Netz\x07 im Tor\n gerissen"}),
                         (200, {"result": "recorded"}))
        self.assertEqual(self.request("POST", "/api/note", {"nonce": "1" * 32,
                                                            "code": "lights-broken"})[0], 409)
        notes = st.events_of("hall.conditionNote", since=seq0)
        self.assertEqual([(e["reason"], e["compartment"]) for e in notes],
                         [("floor-wet", 2), ("other", 2)])
        self.assertEqual(notes[0]["detail"], {"code": "floor-wet", "hall": "halle-2"})
        self.assertEqual(notes[1]["detail"]["text"], "Netz im Tor gerissen")
        for e in notes:
            self.assertIsNone(e.get("memberId") or e.get("member"), e)
        st.advance("121s")
        self.assertIsNone(self.status()["note"], "the window closes")
        self.assertEqual(post({"code": "lights-broken"})[0], 409)


if __name__ == "__main__":
    unittest.main()
