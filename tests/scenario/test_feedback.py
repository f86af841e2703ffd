"""LED and buzzer feedback (daemon/feedback.c) on the simulated GPIO.

Each situation is driven through lockerctl and its pattern read back from the sim
output log (STATE_DIR/sim-gpio.log), whose monotonic column is the station's clock
(simulated offset included): the patterns' timers run on it, and the test moves it
with `lockerctl sim clock advance` instead of sleeping. What is checked per
situation is what a person hears and sees: each beep's length and the LED colour
while it sounds, a tick for "reading" before the decision, the compartment's blinks
after a grant, and the steady light afterwards.
"""
import datetime
import unittest

from harness import StationTestCase

RED, GREEN, BLUE, BUZZER = "GPIO23", "GPIO24", "GPIO25", "GPIO18"
FEEDBACK = "[feedback]\nled_red = %s\nled_green = %s\nled_blue = %s\nbuzzer = %s\n" % (
    RED, GREEN, BLUE, BUZZER)
COLOURS = {(1, 0, 0): "red", (0, 1, 0): "green", (0, 0, 1): "blue", (1, 1, 0): "yellow",
           (0, 1, 1): "cyan", (1, 1, 1): "white", (0, 0, 0): "off"}
# How much later than its nominal length a beep may end: timers fire on the next
# loop pass after the clock passed them, and the clock moves in ADVANCE_MS steps.
ADVANCE_MS = 40
SLACK_MS = 150


class Pattern:
    def __init__(self, changes, start_state):
        self.beeps = []    # (colour, ms)
        self.changes = changes
        state = dict(start_state)
        on_at = None
        on_colour = None
        for t, line, value in changes:
            state[line] = value
            if line == BUZZER and value == 1:
                on_at, on_colour = t, colour_of(state)
            elif line == BUZZER and value == 0 and on_at is not None:
                self.beeps.append((on_colour, t - on_at))
                on_at = None
        self.final = colour_of(state), state.get(BUZZER, 0)
        self.buzzer_left_on = on_at is not None

    def green_offs_after(self, t0):
        return sum(1 for t, line, value in self.changes if t > t0 and line == GREEN and value == 0)


def colour_of(state):
    return COLOURS[(state.get(RED, 0), state.get(GREEN, 0), state.get(BLUE, 0))]


class FeedbackTest(StationTestCase):

    def setUp(self):
        self.st = self.make_station(extra=FEEDBACK)

    def mark(self):
        log = self.st.sim_log()
        state = {}
        for _, _, line, value, _ in log:
            state[line] = value
        return len(log), state

    def play(self, mark, total_ms):
        """Moves the station's clock until a pattern of total_ms must have ended;
        returns what the feedback lines did since mark."""
        n0, state = mark
        moved = 0
        while moved < total_ms + 300:
            self.st.advance("%dms" % ADVANCE_MS)
            moved += ADVANCE_MS
        changes = [(mono / 1e6, line, value) for _, mono, line, value, why in self.st.sim_log()[n0:]
                   if line in (RED, GREEN, BLUE, BUZZER) and why == "set"]
        p = Pattern(changes, state)
        self.assertFalse(p.buzzer_left_on, "the buzzer was left on: %s" % changes)
        return p

    def assertBeeps(self, p, want, what):
        got = p.beeps
        self.assertEqual([c for c, _ in got], [c for c, _ in want],
                         "%s: colours of the beeps: %s" % (what, got))
        for (c, ms), (_, nominal) in zip(got, want):
            self.assertGreaterEqual(ms, nominal - 2, "%s: %s beep too short: %s" % (what, c, got))
            self.assertLessEqual(ms, nominal + SLACK_MS, "%s: %s beep too long: %s" % (what, c, got))

    def assertReadingThen(self, p, want, what):
        """A tick for "reading" (cut short by the decision), then the outcome's beeps."""
        self.assertGreaterEqual(len(p.beeps), 1, "%s: no beep at all" % what)
        colour, ms = p.beeps[0]
        self.assertEqual(colour, "blue", "%s: the reading tick is blue: %s" % (what, p.beeps))
        self.assertLessEqual(ms, 40 + SLACK_MS, what)
        self.assertBeeps(type("P", (), {"beeps": p.beeps[1:]}), want, what)

    def test_steady_ready_at_start(self):
        last = self.st.last_output_values()
        self.assertEqual((last[RED], last[GREEN], last[BLUE], last[BUZZER]), (0, 1, 0, 0))
        # Requested as outputs, inactive, before anything was driven.
        inits = {line: value for _, _, line, value, why in self.st.sim_log() if why == "init"}
        for line in (RED, GREEN, BLUE, BUZZER):
            self.assertEqual(inits.get(line), 0, line)
        lines = {l["line"]: l for l in self.st.j("sim", "outputs")["lines"]}
        self.assertEqual(lines[BUZZER]["direction"], "output")

    def test_refusals_by_class(self):
        st = self.st
        # the card: unknown
        p = self.play(self.mark(), 1700)
        m = self.mark()
        st.tap("04DEADBEEF0001")
        p = self.play(m, 1700)
        self.assertReadingThen(p, [("red", 100)] * 3, "unknown card")
        self.assertEqual(p.final, ("green", 0))
        # the booking: a member whose club has none now
        st.add_club("club-x")
        member = st.add_member("club-x")
        st.add_card(member, "04A1B2C3D4E5F0")
        m = self.mark()
        r = st.tap("04A1B2C3D4E5F0")
        self.assertEqual(r.get("reason"), "no-booking", r)
        self.assertReadingThen(self.play(m, 2000), [("red", 300)] * 2, "no booking")
        # the key: a co-trainer taps while the compartment is unlocking
        b = st.setup_booking(club="club-k", compartment=2, uid="04A1B2C3D4E5F1")
        other = st.add_member("club-k", "Co-trainer")
        st.add_card(other, "04A1B2C3D4E5F2")
        st.tap(b["uid"])
        m = self.mark()
        r = st.tap("04A1B2C3D4E5F2")
        self.assertEqual(r.get("reason"), "compartment-busy", r)
        self.assertReadingThen(self.play(m, 1900), [("yellow", 800)], "busy")
        # the station: the booked compartment is out of service
        st.setup_booking(club="club-s", compartment=3, uid="04A1B2C3D4E5F3")
        st.j("disable", 3, "--reason", "test")
        m = self.mark()
        r = st.tap("04A1B2C3D4E5F3")
        self.assertEqual(r.get("reason"), "out-of-service", r)
        self.assertReadingThen(self.play(m, 2100),
                               [("red", 100), ("red", 100), ("red", 600)], "out of service")

    def test_granted_blinks_compartment_then_return_accepted(self):
        st = self.st
        b = st.setup_booking(compartment=3, uid="04A1B2C3D4E5A1")
        m = self.mark()
        r = st.tap(b["uid"])
        self.assertEqual(r.get("outcome"), "pickup", r)
        p = self.play(m, 800 + 3 * 400)
        self.assertReadingThen(p, [("green", 400)], "granted")
        beep_end = [t for t, line, v in p.changes if line == BUZZER and v == 0][-1]
        self.assertEqual(p.green_offs_after(beep_end), 3, "three blinks for compartment 3: %s"
                         % p.changes)
        self.assertEqual(p.final, ("green", 0))
        st.door(3, "open")
        st.key(3, "take")
        st.door(3, "close")
        st.tap(b["uid"])
        st.door(3, "open")
        st.key(3, "put")
        m = self.mark()
        st.door(3, "close")
        p = self.play(m, 1500)
        self.assertBeeps(p, [("cyan", 300), ("cyan", 100)], "return accepted")
        self.assertEqual(p.final, ("green", 0))

    def test_alarm(self):
        m = self.mark()
        self.st.door(4, "open")
        p = self.play(m, 6000)
        self.assertEqual(len(p.beeps), 20, p.beeps)
        self.assertEqual({c for c, _ in p.beeps}, {"red"})
        for _, ms in p.beeps:
            self.assertTrue(148 <= ms <= 150 + SLACK_MS, p.beeps)
        self.assertIn((1, 1, 1), self.rgb_states(p), "red and white alternate")
        self.st.door(4, "close")

    def rgb_states(self, p):
        state = {RED: 0, GREEN: 0, BLUE: 0}
        out = []
        for _, line, value in p.changes:
            if line in state:
                state[line] = value
                out.append((state[RED], state[GREEN], state[BLUE]))
        return out

    def test_out_of_service_and_back(self):
        st = self.st
        for n in (1, 2, 3):
            st.j("disable", n, "--reason", "test")
        m = self.mark()
        st.j("disable", 4, "--reason", "test")
        p = self.play(m, 2000)
        self.assertBeeps(p, [("red", 1500)], "out of service")
        self.assertEqual(p.final, ("red", 0), "steady red while out of service")
        m = self.mark()
        st.j("clear", 4, "--reason", "back")
        p = self.play(m, 600)
        self.assertEqual(p.beeps, [], "ready is silent")
        self.assertEqual(p.final, ("green", 0))


class SingleLedTest(StationTestCase):

    def test_single_led_and_no_lines(self):
        st = self.make_station(extra="[feedback]\nled = GPIO23\n")
        last = st.last_output_values()
        self.assertEqual(last["GPIO23"], 1, "a single LED is on when ready")
        m = len(st.sim_log())
        st.tap("04DEADBEEF0002")
        for _ in range(50):
            st.advance("40ms")
        vals = [v for _, _, line, v, why in st.sim_log()[m:] if line == "GPIO23"]
        self.assertEqual(vals[-1], 1)
        self.assertIn(0, vals, "the red-off-red refusal blinks the single LED")
        st.stop()
        self.assertEqual(st.last_output_values()["GPIO23"], 0, "LED off at exit")


if __name__ == "__main__":
    unittest.main()
