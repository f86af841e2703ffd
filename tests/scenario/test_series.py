"""Weekly series (booking.add with repeat, as the manager console sends it): expanded
in the station's time zone, so 18:00 stays 18:00 across the end of daylight saving
time, exception dates are left out, and one conflict refuses the whole series."""

import datetime
import zoneinfo

from harness import StationTestCase, parse_time
from test_report import Control

BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")


class SeriesTest(StationTestCase):
    def test_weekly_series_across_dst_with_an_exception(self):
        st = self.make_station()
        st.add_club("club-s")
        ctl = Control(st.sock)
        self.addCleanup(ctl.close)
        # Tuesdays 18:00-20:00 from 20 October 2026; summer time ends on 25 October.
        r = ctl.call("booking.add", club="club-s", compartment=1,
                     **{"from": "2026-10-20T18:00+02:00", "to": "2026-10-20T20:00+02:00",
                        "repeat": {"until": "2026-11-10", "except": ["2026-11-03"]}})
        self.assertEqual(len(r["ids"]), 3, r)
        self.assertEqual(r.get("skipped"), ["2026-11-03"])
        starts = sorted(parse_time(b["start"]) if isinstance(b["start"], str) else
                        datetime.datetime.fromtimestamp(b["start"] / 1000, BERLIN)
                        for b in st.j("booking", "list", "--all")["bookings"]
                        if b["id"] in r["ids"])
        local = [(s.astimezone(BERLIN).date().isoformat(), s.astimezone(BERLIN).strftime("%H:%M"))
                 for s in starts]
        self.assertEqual(local, [("2026-10-20", "18:00"), ("2026-10-27", "18:00"),
                                 ("2026-11-10", "18:00")])
        # The UTC offsets differ across the change: 16:00Z before, 17:00Z after.
        self.assertEqual([s.astimezone(datetime.timezone.utc).hour for s in starts], [16, 17, 17])

        # One occurrence in the way refuses the whole series, naming it.
        with self.assertRaises(AssertionError) as cm:
            ctl.call("booking.add", club="club-s", compartment=1,
                     **{"from": "2026-10-13T19:00+02:00", "to": "2026-10-13T21:00+02:00",
                        "repeat": {"until": "2026-10-27"}})
        self.assertIn(r["ids"][0], str(cm.exception))
        self.assertEqual(len([b for b in st.j("booking", "list", "--all")["bookings"]]), 3)
