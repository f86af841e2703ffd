"""Open data (issue 7, point 2): `lockerctl report --sensorthings FILE --ngsi-ld FILE`
writes the period's slots as SensorThings and NGSI-LD, without personal data, and
with the club only when [opendata] publish_club allows it."""

import datetime
import json
import os

from harness import StationTestCase

UID = "04A1B2C3D4E5F6"


class OpenDataTest(StationTestCase):
    def history(self, st):
        b = st.setup_booking(club="club-a", compartment=2, uid=UID, name="Zelda Quartermain")
        st.pickup(UID, 2)
        st.advance("30m")
        st.give_back(UID, 2)
        return b

    def export(self, st):
        st_path = os.path.join(st.dir, "things.json")
        ld_path = os.path.join(st.dir, "entities.jsonld")
        day = st.now().date()
        r = st.ctl("report", "--from", str(day - datetime.timedelta(days=1)), "--to", str(day),
                   "--sensorthings", st_path, "--ngsi-ld", ld_path, json_out=False)
        self.assertEqual(r.rc, 0, r)
        with open(st_path) as f:
            st_text = f.read()
        with open(ld_path) as f:
            ld_text = f.read()
        return json.loads(st_text), json.loads(ld_text), st_text + ld_text

    def test_documents_carry_the_facts_and_nothing_personal(self):
        st = self.make_station()
        b = self.history(st)
        things, entities, text = self.export(st)
        hall = [t for t in things["Things"] if t["properties"]["hall"] == "halle-2"][0]
        slots, removals, sessions = (d["Observations"] for d in hall["Datastreams"])
        self.assertEqual([o["result"] for o in slots], ["collected"])
        self.assertEqual(slots[0]["parameters"]["reservationId"], b["booking"])
        self.assertEqual([o["result"] for o in removals], ["removed"])
        self.assertEqual(len(sessions), 1)
        self.assertEqual(sessions[0]["result"], 30 * 60)
        slot = [e for e in entities if e["type"] == "HallSlotUsage"][0]
        self.assertEqual(slot["usageStatus"]["value"], "collected")
        self.assertEqual(slot["keyPickups"]["value"], 1)
        self.assertEqual(slot["refKeyStation"]["object"], "urn:ngsi-ld:KeyStation:st-scenario")
        for secret in (b["member"], b["card"], "Zelda", UID, UID.lower(), "club-a"):
            self.assertNotIn(secret, text)

    def test_publish_club(self):
        st = self.make_station(start=False, extra="[opendata]\npublish_club = yes")
        st.start()
        self.history(st)
        things, entities, text = self.export(st)
        slot = [e for e in entities if e["type"] == "HallSlotUsage"][0]
        self.assertEqual(slot["club"]["value"], "club-a")
        self.assertNotIn("Zelda", text)
