"""Scenario tests: the members' rights, `lockerctl member export` and `member erase`.

After an erasure nothing of the member may be left: not in an export, not in the
event log (whose hash chain must still verify), and not anywhere in the database
files, free pages and write-ahead log included.
"""

import glob
import os

from harness import StationTestCase, find_uid

NAME = "Zelda Quartermain"
UID = "04C0FFEE123456"


class PrivacyTest(StationTestCase):

    def db_files_data(self, st):
        data = b""
        for p in sorted(glob.glob(st.db_path + "*")):
            with open(p, "rb") as f:
                data += f.read()
        return data

    def test_export_and_erase(self):
        st = self.make_station()
        b = st.setup_booking(name=NAME, uid=UID)
        other = st.add_member(b["club"], "Other Trainer")
        st.add_card(other, "04AABBCCDDEEFF")
        second = st.add_card(b["member"], "04112233", card="uid")
        st.j("card", "revoke", second)
        st.advance("5m")
        st.pickup(UID, 1)
        self.assertEqual(st.tap("04DEADBEEF0000")["outcome"], "refused")

        # Export: everything held about the member, as JSON even without --json.
        x = st.ctl_raw("member", "export", b["member"], json_out=False)
        self.assertEqual(x.rc, 0, x)
        self.assertIsNotNone(x.data, x)
        self.assertEqual(x.data["member"], {"id": b["member"], "name": NAME, "role": "member"})
        self.assertEqual([c["id"] for c in x.data["clubs"]], [b["club"]])
        cards = {c["id"]: c for c in x.data["credentials"]}
        self.assertEqual(set(cards), {b["card"], second})
        self.assertEqual(cards[second]["status"], "revoked")
        self.assertEqual(len(cards[b["card"]]["uidHmac"]), 64)
        self.assertEqual(x.data["compartments"], [{"number": 1, "holdsKey": True,
                                                   "unlocking": False}])
        types = [e["type"] for e in x.data["events"]]
        for t in ("member.created", "card.added", "card.revoked", "access.granted",
                  "key.checkedOut"):
            self.assertIn(t, types)
        self.assertTrue(all(e.get("member") == b["member"] or
                            e.get("credential") in cards for e in x.data["events"]))
        self.assertEqual(st.events_of("member.exported")[-1]["member"], b["member"])

        # Refused while the member holds a key, without a reason, for nobody.
        r = st.ctl("member", "erase", b["member"], "--reason", "request 2027-01", check=False)
        self.assertEqual(r.rc, 1, r)
        self.assertIn("conflict", r.stderr)
        r = st.ctl("member", "erase", b["member"], check=False)
        self.assertEqual(r.rc, 2, r)
        self.assertIn("--reason", r.stderr)
        r = st.ctl("member", "erase", "m-00000000", "--reason", "x", check=False)
        self.assertEqual(r.rc, 1, r)
        self.assertIn("not_found", r.stderr)
        r = st.ctl("member", "export", "m-00000000", check=False)
        self.assertEqual(r.rc, 1, r)

        st.give_back(UID, 1)
        before = st.j("report", "--from", b["start"].date().isoformat())["total"]
        er = st.j("member", "erase", b["member"], "--reason", "request 2027-01")
        self.assertEqual(er["id"], b["member"])
        self.assertEqual(er["cards"], 2)
        self.assertEqual(er["clubs"], 1)
        # created, 2 x card.added, card.revoked, granted, checkedOut, exported,
        # granted, returned
        self.assertEqual(er["events"], 9)

        # Nothing is left to export or to tap with.
        r = st.ctl("member", "export", b["member"], check=False)
        self.assertEqual(r.rc, 1, r)
        self.assertIn("not_found", r.stderr)
        self.assertEqual(st.tap(UID).get("reason"), "unknown-card")

        # The log verifies, names the member nowhere, and says what was done.
        v = st.j("events", "--verify")
        self.assertTrue(v["intact"], v)
        self.assertEqual(v["erased"], er["events"])
        text = st.ctl_raw("events", "--verify", json_out=False).stdout
        self.assertIn("with erased member ids", text)
        events = st.events()
        for e in events:
            self.assertNotEqual(e.get("member"), b["member"])
            self.assertNotIn(e.get("credential"), (b["card"], second))
        erased = st.events_of("member.erased")[-1]
        self.assertEqual(erased["reason"], "request 2027-01")
        self.assertEqual(erased["operator"], "root")
        self.assertNotIn("member", erased)
        self.assertEqual(erased["detail"], {"events": er["events"], "cards": 2, "clubs": 1})
        self.assertTrue(any(e.get("member") == "erased" for e in events))
        self.assertTrue(any(e.get("member") == other for e in events))

        # The hall's figures do not change.
        after = st.j("report", "--from", b["start"].date().isoformat())["total"]
        self.assertEqual(after["collected"], before["collected"])
        self.assertEqual(after["keyOutMs"], before["keyOutMs"])

        # Not in the database files: name, ids, the card's HMAC.
        hmac = bytes.fromhex(cards[b["card"]]["uidHmac"])
        for data in (self.db_files_data(st),):
            for needle in (NAME.encode(), b["member"].encode(), b["card"].encode(),
                           second.encode(), hmac):
                self.assertNotIn(needle, data, needle)
            self.assertIn(b"Other Trainer", data)
            self.assertEqual(find_uid(data, UID), [])

        # Still intact after a restart, and the checkpoint leaves no WAL behind.
        st.restart()
        self.assertTrue(st.j("events", "--verify")["intact"])
        st.stop()
        for needle in (NAME.encode(), b["member"].encode(), hmac):
            self.assertNotIn(needle, self.db_files_data(st))
        self.assertFalse(os.path.exists(st.db_path + "-wal") and
                         NAME.encode() in open(st.db_path + "-wal", "rb").read())
