"""Scenario tests: a member's pickup and return, alarms and refusals, driven through
lockerctl against a lockerd on simulated hardware."""

import datetime
import json
import os
import pwd
import queue
import stat
import subprocess
import threading
import unittest

from harness import (LOCK_LINES, LOCKERCTL, StationTestCase, parse_time, sanitizer_env,
                     wait_until)

UID_A = "04A1B2C3"
UID_B = "04B1B2C3"
UID_C = "04C1B2C3"
UID_STRANGER = "04FFEE01"  # never registered


def reap(proc):
    """Kills (if needed) and reaps a lockerctl started with Popen, closing its pipes."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)
    for f in (proc.stdout, proc.stderr):
        if f:
            f.close()


class PickupReturnTest(StationTestCase):
    def test_pickup_then_return(self):
        st = self.make_station()
        b = st.setup_booking(compartment=1, uid=UID_A)
        seq0 = st.last_seq()

        r = st.tap(UID_A)
        self.assertEqual(r["outcome"], "pickup")
        self.assertEqual(r["compartment"], 1)
        self.assertEqual(r["member"], b["member"])
        self.assertNotIn("unlockError", r)
        self.assertEqual(st.lock_value(1), 1, "lock 1 must be energised after a granted tap")
        c = st.comp(1)
        self.assertEqual(c["state"], "unlocking")
        self.assertEqual(c["lock"], "energised")
        for n in (2, 3, 4):
            self.assertEqual(st.lock_value(n), 0)

        self.assertEqual(st.door(1, "open")["state"], "open_pickup")
        self.assertEqual(st.lock_value(1), 0, "the coil must be off once the door is open")
        self.assertEqual(st.key(1, "take")["state"], "open_pickup")
        self.assertEqual(st.door(1, "close")["state"], "locked_empty")

        ev = st.events(seq0)
        self.assertEventOrder(ev, ["access.granted", "key.checkedOut"])
        granted = [e for e in ev if e["type"] == "access.granted"][0]
        out = [e for e in ev if e["type"] == "key.checkedOut"][0]
        for e in (granted, out):
            self.assertEqual(e["compartment"], 1)
            self.assertEqual(e["member"], b["member"])
            self.assertEqual(e["club"], b["club"])
            self.assertEqual(e["booking"], b["booking"])
            self.assertEqual(e["credential"], b["card"])
        self.assertEqual(granted["detail"]["purpose"], "pickup")

        booking = st.booking(b["booking"])
        self.assertTrue(booking.get("collected"), "booking must be marked collected: %r" % booking)

        c = st.comp(1)
        self.assertEqual((c["state"], c["door"], c["key"], c["lock"]),
                         ("locked_empty", "closed", "out", "off"))
        self.assertEqual(c["holder"]["member"], b["member"])
        self.assertEqual(c["holder"]["club"], b["club"])
        self.assertEqual(c["holder"]["booking"], b["booking"])

        # Return.
        seq1 = st.last_seq()
        r = st.tap(UID_A)
        self.assertEqual((r["outcome"], r["compartment"]), ("return", 1))
        self.assertEqual(st.lock_value(1), 1)
        self.assertEqual(st.door(1, "open")["state"], "open_return")
        self.assertEqual(st.lock_value(1), 0)
        st.key(1, "put")
        self.assertEqual(st.door(1, "close")["state"], "locked_full")
        ev = st.events(seq1)
        self.assertEventOrder(ev, ["access.granted", "key.returned"])
        ret = [e for e in ev if e["type"] == "key.returned"][0]
        self.assertEqual(ret["compartment"], 1)
        self.assertEqual(ret["member"], b["member"])
        c = st.comp(1)
        self.assertEqual((c["state"], c["key"], c["lock"]), ("locked_full", "in", "off"))
        self.assertNotIn("holder", c)
        self.assertEqual(st.status()["alarms"], [])
        self.assertEqual(st.outputs()[LOCK_LINES[1]]["activations"], 2)

    def test_co_trainer_of_same_club_returns_key(self):
        st = self.make_station()
        b = st.setup_booking(compartment=2, uid=UID_A)
        m2 = st.add_member(b["club"], "Co-Trainer")
        st.add_card(m2, UID_B)
        st.pickup(UID_A, 2)
        r = st.tap(UID_B)
        self.assertEqual((r["outcome"], r["compartment"]), ("return", 2))
        st.door(2, "open")
        st.key(2, "put")
        st.door(2, "close")
        ret = st.events_of("key.returned", compartment=2)
        self.assertEqual(len(ret), 1)
        self.assertEqual(ret[0]["member"], m2)

    def test_member_of_two_clubs_picks_up_for_either(self):
        st = self.make_station()
        st.add_club("club-a")
        st.add_club("club-b")
        m = st.add_member("club-a", "Two Clubs")
        st.j("member", "join", m, "--club", "club-b")
        st.add_card(m, UID_A)
        start, end = st.booking_window()
        bid = st.add_booking("club-b", 3, start, end)

        r = st.pickup(UID_A, 3)
        self.assertEqual(r["member"], m)
        out = st.events_of("key.checkedOut", compartment=3)[-1]
        self.assertEqual((out["club"], out["booking"]), ("club-b", bid))
        st.give_back(UID_A, 3)

        st.j("booking", "cancel", bid)
        bid_a = st.add_booking("club-a", 4, start, end)
        st.pickup(UID_A, 4)
        out = st.events_of("key.checkedOut", compartment=4)[-1]
        self.assertEqual((out["club"], out["booking"]), ("club-a", bid_a))
        st.give_back(UID_A, 4)


class AbortTest(StationTestCase):
    def test_door_never_opened(self):
        st = self.make_station()
        b = st.setup_booking(compartment=1, uid=UID_A)
        seq0 = st.last_seq()
        self.assertEqual(st.tap(UID_A)["outcome"], "pickup")
        self.assertEqual(st.lock_value(1), 1)
        st.advance("6s")  # past max_energize = 5s
        e = st.wait_event("pickup.aborted", since=seq0, compartment=1)
        self.assertEqual(e["reason"], "door-not-opened")
        self.assertEqual(e["member"], b["member"])
        self.assertEqual(st.lock_value(1), 0)
        c = st.comp(1)
        self.assertEqual((c["state"], c["key"], c["lock"]), ("locked_full", "in", "off"))
        self.assertNotIn("holder", c)
        self.assertEqual(st.last_output_values()[LOCK_LINES[1]], 0)

    def test_return_door_never_opened(self):
        st = self.make_station()
        b = st.setup_booking(compartment=2, uid=UID_A)
        st.pickup(UID_A, 2)
        seq0 = st.last_seq()
        self.assertEqual(st.tap(UID_A)["outcome"], "return")
        st.advance("6s")
        e = st.wait_event("return.incomplete", since=seq0, compartment=2)
        self.assertEqual(e["reason"], "door-not-opened")
        self.assertEqual(st.lock_value(2), 0)
        c = st.comp(2)
        self.assertEqual((c["state"], c["holder"]["member"]), ("locked_empty", b["member"]))

    def test_second_tap_while_unlocking(self):
        st = self.make_station()
        st.setup_booking(compartment=1, uid=UID_A)
        self.assertEqual(st.tap(UID_A)["outcome"], "pickup")
        seq0 = st.last_seq()
        r = st.tap(UID_A)
        self.assertEqual((r["outcome"], r["reason"]), ("refused", "compartment-busy"))
        self.assertEqual(st.outputs()[LOCK_LINES[1]]["activations"], 1)
        self.assertEqual(st.events_of("access.granted", since=seq0), [])
        st.door(1, "open")
        st.key(1, "take")
        self.assertEqual(st.door(1, "close")["state"], "locked_empty")

    def test_door_closed_with_key_inside_then_pickup_again(self):
        st = self.make_station()
        b = st.setup_booking(compartment=1, uid=UID_A)
        seq0 = st.last_seq()
        self.assertEqual(st.tap(UID_A)["outcome"], "pickup")
        st.door(1, "open")
        self.assertEqual(st.door(1, "close")["state"], "locked_full")
        e = st.wait_event("pickup.aborted", since=seq0, compartment=1)
        self.assertEqual(e["reason"], "key-not-taken")
        self.assertEqual(st.events_of("key.checkedOut", since=seq0), [])
        self.assertFalse(st.booking(b["booking"]).get("collected"))
        self.assertEqual(st.lock_value(1), 0)
        # The booking was not consumed: a second pickup works.
        st.pickup(UID_A, 1)
        self.assertEqual(len(st.events_of("key.checkedOut", since=seq0)), 1)

    def test_return_without_key(self):
        st = self.make_station()
        b = st.setup_booking(compartment=2, uid=UID_A)
        st.pickup(UID_A, 2)
        seq0 = st.last_seq()
        self.assertEqual(st.tap(UID_A)["outcome"], "return")
        st.door(2, "open")
        self.assertEqual(st.door(2, "close")["state"], "locked_empty")
        e = st.wait_event("return.incomplete", since=seq0, compartment=2)
        self.assertEqual(e["reason"], "key-not-detected")
        c = st.comp(2)
        self.assertEqual(c["holder"]["member"], b["member"], "the holder must stay recorded")
        # ... and the key can still be returned properly.
        st.give_back(UID_A, 2)


class AlarmTest(StationTestCase):
    def test_door_forced(self):
        st = self.make_station()
        seq0 = st.last_seq()
        self.assertEqual(st.door(3, "open")["state"], "forced_open")
        e = st.wait_event("door.forced", since=seq0, compartment=3)
        self.assertTrue(e["detail"]["keyPresent"])
        alarms = st.status()["alarms"]
        self.assertIn({"type": "door.forced", "compartment": 3}, alarms)
        self.assertEqual(st.lock_value(3), 0)
        self.assertEqual(st.door(3, "close")["state"], "locked_full")
        self.assertEqual(st.status()["alarms"], [])

    def test_door_held_open(self):
        st = self.make_station()
        st.setup_booking(compartment=1, uid=UID_A)
        seq0 = st.last_seq()
        self.assertEqual(st.tap(UID_A)["outcome"], "pickup")
        st.door(1, "open")
        st.advance("3m")  # door_open_alarm defaults to 2m
        e = st.wait_event("door.heldOpen", since=seq0, compartment=1)
        self.assertEqual(e["detail"]["afterMs"], 120000)
        self.assertEqual(e["detail"]["purpose"], "pickup")
        self.assertEqual(st.comp(1)["state"], "held_open")
        self.assertIn({"type": "door.heldOpen", "compartment": 1}, st.status()["alarms"])
        # The pickup still completes when the door is finally closed.
        st.key(1, "take")
        self.assertEqual(st.door(1, "close")["state"], "locked_empty")
        st.wait_event("key.checkedOut", since=seq0, compartment=1)
        self.assertEqual(st.status()["alarms"], [])

    def test_key_overdue(self):
        st = self.make_station()
        b = st.setup_booking(compartment=1, uid=UID_A, length=datetime.timedelta(hours=1))
        st.pickup(UID_A, 1)
        seq0 = st.last_seq()
        now = st.now()
        due = b["end"] + datetime.timedelta(minutes=15)  # return_grace default
        # Not yet overdue just before the grace ends ...
        ahead = int((due - now).total_seconds()) - 60
        st.advance("%ds" % ahead)
        st.status()
        st.status()
        self.assertEqual(st.events_of("key.overdue", since=seq0), [],
                         "key.overdue must not be raised before end + return_grace")
        # ... but after it.
        st.advance("2m")
        e = st.wait_event("key.overdue", since=seq0, compartment=1)
        self.assertEqual(e["member"], b["member"])
        self.assertEqual(e["booking"], b["booking"])
        self.assertIn({"type": "key.overdue", "compartment": 1}, st.status()["alarms"])
        self.assertLessEqual(due, parse_time(e["occurredAt"]))
        # Returning it late is still allowed, and clears the alarm.
        st.give_back(UID_A, 1)
        self.assertEqual(st.status()["alarms"], [])
        self.assertEqual(len(st.events_of("key.overdue")), 1)

    def test_key_sensor_change_with_door_closed(self):
        st = self.make_station()
        b = st.setup_booking(compartment=2, uid=UID_A)
        seq0 = st.last_seq()
        self.assertEqual(st.key(2, "take")["state"], "sensor_fault")
        e = st.wait_event("sensor.fault", since=seq0, compartment=2)
        self.assertEqual(e["reason"], "key-vanished-door-closed")
        c = st.comp(2)
        self.assertEqual(c["state"], "sensor_fault")
        self.assertTrue(c.get("outOfServiceReason", "").startswith("sensor:"), c)
        self.assertIn({"type": "sensor.fault", "compartment": 2}, st.status()["alarms"])

        r = st.tap(UID_A)
        self.assertEqual((r["outcome"], r["reason"], r.get("compartment")),
                         ("refused", "out-of-service", 2))
        self.assertEqual(st.lock_value(2), 0)
        denied = st.events_of("access.denied", since=seq0)
        self.assertEqual(denied[-1]["reason"], "out-of-service")

        # Still out of service after the key is back, until a technician clears it.
        self.assertEqual(st.key(2, "put")["state"], "sensor_fault")
        self.assertEqual(st.tap(UID_A)["reason"], "out-of-service")
        st.j("clear", 2, "--reason", "key sensor cable reseated")
        cleared = st.events_of("service.cleared", since=seq0)
        self.assertEqual(len(cleared), 1)
        self.assertEqual(cleared[0]["reason"], "key sensor cable reseated")
        self.assertEqual(st.comp(2)["state"], "locked_full")
        self.assertEqual(st.status()["alarms"], [])
        st.pickup(UID_A, 2)
        self.assertEqual(st.events_of("key.checkedOut")[-1]["booking"], b["booking"])

    def test_cleared_fault_with_key_missing_is_stable_across_restart(self):
        # A technician clears a key-sensor fault while the key is (really) gone. Whatever
        # the station decides, a restart must come back to the same decision.
        st = self.make_station()
        st.key(3, "take")
        self.assertEqual(st.comp(3)["state"], "sensor_fault")
        st.j("clear", 3, "--reason", "key is at the locksmith")
        before = st.comp(3)
        st.restart()
        after = st.comp(3)
        self.assertEqual((after["state"], after.get("holder")),
                         (before["state"], before.get("holder")),
                         "compartment 3 changed over a clean restart: %s -> %s"
                         % (before, after))

    def test_clear_needs_a_fault(self):
        st = self.make_station()
        r = st.ctl("clear", 1, "--reason", "nothing to clear", check=False)
        self.assertEqual(r.rc, 1, r)
        self.assertEqual(r.data["error"]["code"], "wrong_state")

    def test_disable_and_clear(self):
        st = self.make_station()
        st.setup_booking(compartment=4, uid=UID_A)
        st.j("disable", 4, "--reason", "lock replaced")
        self.assertEqual(st.comp(4)["state"], "out_of_service")
        self.assertEqual(st.tap(UID_A)["reason"], "out-of-service")
        st.j("clear", 4, "--reason", "lock works again")
        st.pickup(UID_A, 4)

    def test_tamper(self):
        st = self.make_station()
        seq0 = st.last_seq()
        st.j("sim", "tamper", "open")
        e = st.wait_event("station.tamper", since=seq0)
        self.assertNotIn("compartment", e)
        self.assertIn({"type": "station.tamper"}, st.status()["alarms"])
        st.j("sim", "tamper", "close")
        self.assertEqual(st.status()["alarms"], [])
        for n in LOCK_LINES:
            self.assertEqual(st.lock_value(n), 0)

    def test_service_open(self):
        st = self.make_station()
        seq0 = st.last_seq()
        r = st.j("open", 3, "--reason", "replace key tag")
        self.assertEqual(r["compartment"], 3)
        self.assertEqual(st.lock_value(3), 1)
        e = st.wait_event("service.open", since=seq0, compartment=3)
        self.assertEqual(e["reason"], "replace key tag")
        self.assertTrue(e.get("operator"), "service.open must name the operator: %r" % e)
        self.assertEqual(e["operator"], pwd.getpwuid(os.geteuid()).pw_name)
        self.assertEqual(st.door(3, "open")["state"], "open_service")
        self.assertEqual(st.lock_value(3), 0)
        self.assertEqual(st.door(3, "close")["state"], "locked_full")
        # No key moved: a service open without a key change records no checkout.
        self.assertEqual(st.events_of("key.checkedOut", since=seq0), [])
        # A second open on a busy compartment is refused.
        st.j("open", 3, "--reason", "again")
        r = st.ctl("open", 3, "--reason", "third", check=False)
        self.assertEqual(r.rc, 1, r)
        self.assertEqual(r.data["error"]["code"], "busy")


class RefusalTest(StationTestCase):
    def assertRefused(self, st, uid, reason, compartment=None, card=None, seq0=None):
        seq0 = st.last_seq() if seq0 is None else seq0
        r = st.tap(uid, card=card)
        self.assertEqual(r["outcome"], "refused", r)
        self.assertEqual(r["reason"], reason, r)
        if compartment is not None:
            self.assertEqual(r.get("compartment"), compartment, r)
        for n in LOCK_LINES:
            self.assertEqual(st.lock_value(n), 0, "a refusal must not energise any lock")
        denied = st.events_of("access.denied", since=seq0)
        self.assertEqual(len(denied), 1, denied)
        self.assertEqual(denied[0]["reason"], reason)
        return r, denied[0]

    def test_unknown_card(self):
        st = self.make_station()
        r, e = self.assertRefused(st, UID_STRANGER, "unknown-card")
        self.assertNotIn("member", e)

    def test_revoked(self):
        st = self.make_station()
        b = st.setup_booking(compartment=1, uid=UID_A)
        st.j("card", "revoke", b["card"])
        r, e = self.assertRefused(st, UID_A, "revoked")
        self.assertEqual(e["member"], b["member"])

    def test_revoked_card_can_still_return_its_key(self):
        st = self.make_station()
        b = st.setup_booking(compartment=3, uid=UID_A)
        st.pickup(UID_A, 3)
        st.j("card", "revoke", b["card"])
        st.give_back(UID_A, 3)
        self.assertRefused(st, UID_A, "revoked")

    def test_no_booking(self):
        st = self.make_station()
        st.add_club("club-x")
        m = st.add_member("club-x")
        st.add_card(m, UID_A)
        self.assertRefused(st, UID_A, "no-booking")

    def test_outside_pickup_window(self):
        st = self.make_station()
        b = st.setup_booking(compartment=2, uid=UID_A, start_in=datetime.timedelta(hours=3))
        r, e = self.assertRefused(st, UID_A, "outside-pickup-window", compartment=2)
        self.assertIn("nextBooking", r)
        self.assertEqual(parse_time(r["nextBooking"]), b["start"])
        # Within the pickup window (15 min before the start) the same card works.
        st.advance("170m")
        st.pickup(UID_A, 2)

    def test_too_late_after_start(self):
        st = self.make_station()
        st.setup_booking(compartment=2, uid=UID_A)
        st.advance("40m")  # late_tolerance defaults to 30m
        self.assertRefused(st, UID_A, "outside-pickup-window", compartment=2)

    def test_key_already_out(self):
        # Club A has compartment 2 now; club B has it right after. A picks the key up
        # and keeps it; in B's pickup window the key is still out.
        st = self.make_station()
        st.add_club("club-a")
        st.add_club("club-b")
        ma = st.add_member("club-a", "A")
        mb = st.add_member("club-b", "B")
        st.add_card(ma, UID_A)
        st.add_card(mb, UID_B)
        start, _ = st.booking_window()
        mid = start + datetime.timedelta(minutes=30)
        st.add_booking("club-a", 2, start, mid)
        st.add_booking("club-b", 2, mid, mid + datetime.timedelta(hours=1))
        st.pickup(UID_A, 2)
        st.advance("20m")  # now within 15 minutes of B's start
        r, e = self.assertRefused(st, UID_B, "key-already-out", compartment=2)
        self.assertEqual(e["member"], mb)
        # A brings it back; now B can take it.
        st.give_back(UID_A, 2)
        st.pickup(UID_B, 2)

    def test_key_already_out_after_service_removal(self):
        st = self.make_station()
        st.setup_booking(compartment=1, uid=UID_A)
        st.j("open", 1, "--reason", "key to locksmith")
        st.door(1, "open")
        st.key(1, "take")
        st.door(1, "close")
        self.assertEqual(st.comp(1)["state"], "locked_empty")
        self.assertRefused(st, UID_A, "key-already-out", compartment=1)

    def test_insecure_card(self):
        st = self.make_station()
        st.setup_booking(compartment=1, uid=UID_A)
        self.assertRefused(st, UID_A, "insecure-card", card="uid")
        # The same card read as DESFire is fine.
        self.assertEqual(st.tap(UID_A)["outcome"], "pickup")

    def test_uid_insecure_is_loud(self):
        st = self.make_station(auth="uid-insecure")
        st.setup_booking(compartment=1, uid=UID_A)
        # Warned in the log at every start, in status and in the event log.
        self.assertIn("uid-insecure: cards are identified by their UID alone", st.stderr_text())
        status = st.status()
        self.assertEqual(status["station"]["auth"], "uid-insecure")
        self.assertIn("cloned", status["station"]["warning"])
        started = st.events_of("station.started")[-1]
        self.assertEqual(started["detail"]["auth"], "uid-insecure")
        self.assertIn("warning", started["detail"])
        # A UID-only card is accepted, as the operator chose.
        self.assertEqual(st.tap(UID_A, card="uid")["outcome"], "pickup")

    def test_cloned_card(self):
        st = self.make_station()
        st.setup_booking(compartment=1, uid=UID_A)
        # A DESFire card with a member's UID but without the site's key.
        self.assertRefused(st, UID_A, "card-auth-failed", card="clone")
        self.assertEqual(st.lock_value(1), 0)
        self.assertEqual(st.tap(UID_A)["outcome"], "pickup")

    def test_enrolled_card_works(self):
        st = self.make_station()
        st.add_club("club-e")
        m = st.add_member("club-e", "Enrolled")
        start, end = st.booking_window()
        st.add_booking("club-e", 4, start, end)
        enrol = subprocess.Popen([LOCKERCTL, "-s", st.sock, "--json", "card", "enroll", m,
                                  "--timeout", "20"], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, env=sanitizer_env())
        self.addCleanup(reap, enrol)
        # The tap goes to the enrolment as soon as the daemon has registered it.
        wait_until(lambda: st.tap(UID_C).get("outcome") == "enrolment", what="enrolment")
        out, err = enrol.communicate(timeout=20)
        self.assertEqual(enrol.returncode, 0, err)
        card = json.loads(out)
        self.assertEqual(card["member"], m)
        self.assertEqual(card["card"], "desfire")
        st.pickup(UID_C, 4)


    def _wait_for_card(self, st, verb, member, uid, card=None):
        proc = subprocess.Popen([LOCKERCTL, "-s", st.sock, "--json", "card", verb, member,
                                 "--timeout", "20"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=sanitizer_env())
        self.addCleanup(reap, proc)
        # The tap goes to the waiting command as soon as the daemon has registered it.
        wait_until(lambda: st.tap(uid, card=card).get("outcome") == "enrolment", what=verb)
        out, err = proc.communicate(timeout=20)
        return proc.returncode, json.loads(out), err.decode()

    def test_issued_card_works(self):
        st = self.make_station()
        st.add_club("club-i")
        m = st.add_member("club-i", "Issued")
        start, end = st.booking_window()
        st.add_booking("club-i", 3, start, end)
        rc, card, err = self._wait_for_card(st, "issue", m, UID_C)
        self.assertEqual(rc, 0, err)
        self.assertEqual((card["member"], card["card"]), (m, "desfire"))
        self.assertEqual([e["credential"] for e in st.events_of("card.added")], [card["id"]])
        st.pickup(UID_C, 3)

    def test_issue_refuses_uid_card(self):
        st = self.make_station()
        st.add_club("club-i")
        m = st.add_member("club-i", "Issued")
        rc, reply, err = self._wait_for_card(st, "issue", m, UID_C, card="uid")
        self.assertEqual(rc, 1)
        self.assertEqual(reply["error"]["code"], "card_error")
        self.assertIn("DESFire", err)

    def test_enroll_refuses_foreign_card(self):
        st = self.make_station()
        st.add_club("club-i")
        m = st.add_member("club-i", "Someone")
        # A DESFire card that does not know this site's key cannot be enrolled.
        rc, reply, err = self._wait_for_card(st, "enroll", m, UID_C, card="clone")
        self.assertEqual(rc, 1)
        self.assertEqual(reply["error"]["code"], "card_error")
        self.assertEqual(st.events_of("card.added"), [])


class CliTest(StationTestCase):
    def test_bad_uid(self):
        st = self.make_station()
        for bad in ("XYZ", "04A1B2", "04A1B2C3D", "04A1B2C3D4E5F6A7B8C9D0E1"):
            r = st.ctl("sim", "tap", bad, check=False)
            self.assertEqual(r.rc, 1, r)
            self.assertIn("uid", r.stderr)
            self.assertEqual(r.data["ok"], False)
            self.assertEqual(r.data["error"]["code"], "bad_request")
        st.add_club("c")
        m = st.add_member("c")
        r = st.ctl("card", "add", m, "--uid", "not-hex", check=False)
        self.assertEqual(r.rc, 1, r)
        self.assertIn("uid", r.stderr)

    def test_usage_errors_exit_2(self):
        st = self.make_station()
        for args in (["frobnicate"], ["booking", "frob"], ["status", "extra"],
                     ["events", "--bogus"], ["open", "1"], ["sim", "door", "1", "ajar"],
                     ["booking", "add", "--club", "x"]):
            r = st.ctl(*args, check=False)
            self.assertEqual(r.rc, 2, r)
            self.assertTrue(r.stderr.strip(), r)

    def test_daemon_not_running_exit_3(self):
        st = self.make_station(start=False)
        r = st.ctl("status", check=False)
        self.assertEqual(r.rc, 3, r)
        self.assertIn("cannot reach", r.stderr)
        r = st.ctl("status", check=False, socket=os.path.join(st.dir, "nope.sock"))
        self.assertEqual(r.rc, 3, r)
        st.start()
        st.stop()
        r = st.ctl("status", check=False)
        self.assertEqual(r.rc, 3, r)

    def test_events_verify_intact(self):
        st = self.make_station()
        st.setup_booking(uid=UID_A)
        st.pickup(UID_A, 1)
        r = st.ctl("events", "--verify")
        self.assertTrue(r.data["intact"], r)
        self.assertEqual(r.data["lastSeq"], st.last_seq())
        t = st.ctl("events", "--verify", json_out=False)
        self.assertIn("intact", t.stdout)

    def test_overlapping_booking_conflict(self):
        st = self.make_station()
        b = st.setup_booking(compartment=1, uid=UID_A)
        st.add_club("club-z")
        r = st.ctl("booking", "add", "--club", "club-z", "--compartment", 1,
                   "--from", (b["start"] + datetime.timedelta(minutes=30)).isoformat(
                       timespec="minutes"),
                   "--to", (b["end"] + datetime.timedelta(hours=1)).isoformat(timespec="minutes"),
                   check=False)
        self.assertEqual(r.rc, 1, r)
        self.assertEqual(r.data["error"]["code"], "conflict")
        self.assertIn("overlap", r.stderr)
        # Back to back is fine; another compartment is fine.
        st.add_booking("club-z", 1, b["end"], b["end"] + datetime.timedelta(hours=1))
        st.add_booking("club-z", 2, b["start"], b["end"])

    def test_bad_times_and_unknown_things(self):
        st = self.make_station()
        st.add_club("c")
        cases = [
            (["booking", "add", "--club", "c", "--compartment", "1", "--from", "yesterday",
              "--to", "2030-01-01T10:00+01:00"], "bad_request"),
            (["booking", "add", "--club", "c", "--compartment", "1",
              "--from", "2030-01-01T10:00+01:00", "--to", "2030-01-01T09:00+01:00"],
             "bad_request"),
            (["booking", "add", "--club", "nope", "--compartment", "1",
              "--from", "2030-01-01T10:00+01:00", "--to", "2030-01-01T11:00+01:00"],
             "not_found"),
            (["booking", "add", "--club", "c", "--compartment", "9",
              "--from", "2030-01-01T10:00+01:00", "--to", "2030-01-01T11:00+01:00"],
             "no_such_compartment"),
            (["club", "add", "c", "Duplicate"], "conflict"),
            (["card", "revoke", "c-00000000"], "not_found"),
            (["booking", "cancel", "b-00000000"], "not_found"),
            (["member", "join", "m-00000000", "--club", "c"], "not_found"),
            (["open", "7", "--reason", "x"], "no_such_compartment"),
            (["sim", "door", "9", "open"], "no_such_compartment"),
            (["sync", "now"], "not_configured"),
        ]
        for args, code in cases:
            with self.subTest(args=args):
                r = st.ctl(*args, check=False)
                self.assertEqual(r.rc, 1, r)
                self.assertIsNone(r.json_error, r)
                self.assertEqual(r.data["error"]["code"], code, r)

    def test_json_on_every_command(self):
        st = self.make_station()
        club = st.add_club("club-j")
        m = st.add_member(club)
        m2 = st.add_member(club, "Second")
        card = st.add_card(m, UID_A)
        card2 = st.add_card(m2, UID_B)
        start, end = st.booking_window()
        bid = st.add_booking(club, 1, start, end)
        commands = [
            ["status"],
            ["events"],
            ["events", "--since", "2"],
            ["events", "--verify"],
            ["booking", "list"],
            ["booking", "list", "--all"],
            ["booking", "add", "--club", club, "--compartment", "2",
             "--from", start.isoformat(timespec="minutes"),
             "--to", end.isoformat(timespec="minutes")],
            ["club", "add", "club-k", "Club K"],
            ["member", "add", "--club", club, "--name", "Third"],
            ["member", "join", m, "--club", "club-k"],
            ["card", "add", m2, "--uid", "04112233", "--card", "uid"],
            ["card", "revoke", card2],
            ["sim", "tap", UID_A],
            ["sim", "remove"],
            ["sim", "outputs"],
            ["sim", "door", "1", "open"],
            ["sim", "key", "1", "take"],
            ["sim", "door", "1", "close"],
            ["sim", "tamper", "open"],
            ["sim", "tamper", "close"],
            ["sim", "clock", "advance", "1s"],
            ["open", "3", "--reason", "json test"],
            ["disable", "4", "--reason", "json test"],
            ["clear", "4", "--reason", "json test"],
            ["prune"],
            ["sync", "status"],
            ["booking", "cancel", bid],
        ]
        for args in commands:
            with self.subTest(args=args):
                r = st.ctl(*args, check=False)
                self.assertEqual(r.rc, 0, r)
                self.assertIsNone(r.json_error, r)
                self.assertIsNotNone(r.data, r)
        # Failures give JSON too.
        r = st.ctl("sync", "now", check=False)
        self.assertEqual(r.rc, 1)
        self.assertIsNone(r.json_error, r)
        self.assertIs(r.data["ok"], False)
        self.assertIsNotNone(card)

    def test_help_lists_the_contract(self):
        st = self.make_station(start=False)
        r = st.ctl("--help", json_out=False, check=False)
        self.assertEqual(r.rc, 0)
        for cmd in ("status", "events", "booking add", "booking list", "booking cancel",
                    "club add", "member add", "card add", "card enroll", "card revoke", "open",
                    "sim tap", "sim remove", "sim door", "sim key", "sim outputs", "sync now",
                    "sync status"):
            self.assertIn(cmd, r.stdout)

    def test_control_socket_mode(self):
        st = self.make_station()
        mode = os.stat(st.sock).st_mode
        self.assertTrue(stat.S_ISSOCK(mode))
        self.assertEqual(stat.S_IMODE(mode), 0o660)

    def test_events_follow(self):
        st = self.make_station()
        p = subprocess.Popen([LOCKERCTL, "-s", st.sock, "--json", "events", "--follow"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=sanitizer_env())
        self.addCleanup(reap, p)
        lines = queue.Queue()

        def reader():
            for raw in p.stdout:
                lines.put(raw)
            lines.put(None)
        threading.Thread(target=reader, daemon=True).start()

        last = st.last_seq()
        seen = []
        tampered = False
        while True:
            try:
                raw = lines.get(timeout=10)
            except queue.Empty:
                self.fail("events --follow printed nothing for 10 s; seen %s" % seen)
            if raw is None:
                self.fail("events --follow ended early; seen %s" % seen)
            e = json.loads(raw)
            seen.append((e["seq"], e["type"]))
            if e["seq"] >= last and not tampered:
                st.j("sim", "tamper", "open")
                tampered = True
            if e["type"] == "station.tamper":
                break
        self.assertEqual([s for s, _ in seen], sorted(set(s for s, _ in seen)),
                         "follow must print each event once, in order")
        st.stop()
        self.assertEqual(p.wait(timeout=10), 3)

if __name__ == "__main__":
    unittest.main()
